//! Keeping secrets out of everything cranium prints.
//!
//! Connection URLs carry passwords and S3 connections carry keys. They stay as written (`${VAR}`) in the
//! files, and once resolved they are only handed to drivers. Anything shown to a person (diagnostics, logs,
//! `--verbose`, errors from drivers that echo a URL) goes through a [`Redactor`], which masks every known
//! secret value and any `user:password@` in a URL as `***`.

use std::sync::OnceLock;

use regex::Regex;

/// Masks known secret values and URL passwords.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// Register a secret value. Very short values (under 3 characters) are not registered: masking them
    /// would mangle ordinary text, and the URL rule still hides them inside URLs.
    pub fn add(&mut self, secret: impl Into<String>) {
        let s = secret.into();
        if s.chars().count() >= 3 && !self.secrets.contains(&s) {
            self.secrets.push(s);
            // Longest first, so a secret that contains another is masked whole.
            self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    /// The registered secret values.
    pub fn secrets(&self) -> &[String] {
        &self.secrets
    }

    pub fn redact(&self, text: &str) -> String {
        let mut out = mask_url_passwords(text);
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }
}

fn url_password() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        // scheme://user:password@host — the password is anything up to the last '@' before the host.
        Regex::new(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)([^\s/]*)@")
            .unwrap_or_else(|_| unreachable!())
    })
}

/// `postgres://app:hunter2@db/x` → `postgres://app:***@db/x`.
pub fn mask_url_passwords(text: &str) -> String {
    url_password().replace_all(text, "${1}***@").into_owned()
}

/// The password part of a URL, if any, so that it can be registered with a [`Redactor`].
pub fn url_password_of(url: &str) -> Option<String> {
    url_password()
        .captures(url)
        .and_then(|c| c.get(2))
        .map(|m| m.as_str().to_string())
        .filter(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_url_passwords() {
        assert_eq!(
            mask_url_passwords("postgres://app:hunter2@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(
            mask_url_passwords("mysql://root@127.0.0.1/test"),
            "mysql://root@127.0.0.1/test"
        );
        assert_eq!(
            mask_url_passwords("x postgres://a:p@ss@h/db y"),
            "x postgres://a:***@h/db y"
        );
        assert_eq!(
            url_password_of("postgres://app:hunter2@db/x").as_deref(),
            Some("hunter2")
        );
    }

    #[test]
    fn masks_registered_secrets() {
        let mut r = Redactor::default();
        r.add("AKIAXYZSECRET");
        r.add("ab");
        assert_eq!(
            r.redact("key AKIAXYZSECRET here, ab stays"),
            "key *** here, ab stays"
        );
    }
}
