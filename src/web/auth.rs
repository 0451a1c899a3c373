//! Who may act: every action is a POST that needs the project's `daemon.auth_token`, given as
//! `Authorization: Bearer TOKEN` (scripts) or through the login form, which sets an HttpOnly,
//! SameSite=Strict session cookie. The token is compared in constant time. Cross-origin POSTs
//! are refused (`Sec-Fetch-Site`, then `Origin` against `Host`), so another site cannot make a
//! logged-in browser act. Without a token the dashboard is read-only.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Form, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use subtle::ConstantTimeEq;

use super::pages::PageCx;
use super::{Web, WebError};

/// The session cookie's name.
pub const COOKIE: &str = "cranium_session";
/// How long a login lasts.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// Logged-in browsers: session id → (name, expiry). In memory: a restart logs everyone out.
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<String, (String, Instant)>>);

impl Sessions {
    fn create(&self, who: &str) -> String {
        let id: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let mut m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        m.retain(|_, (_, exp)| *exp > now);
        m.insert(id.clone(), (who.to_string(), now + SESSION_TTL));
        id
    }

    fn who(&self, id: &str) -> Option<String> {
        let m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.get(id)
            .filter(|(_, exp)| *exp > Instant::now())
            .map(|(who, _)| who.clone())
    }

    fn remove(&self, id: &str) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id);
    }
}

/// Whether `given` is the token, in time that does not depend on where they differ.
pub fn token_matches(given: &str, token: &str) -> bool {
    given.len() == token.len() && bool::from(given.as_bytes().ct_eq(token.as_bytes()))
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Refuses a request another site made the browser send.
pub fn same_origin(headers: &HeaderMap) -> Result<(), WebError> {
    let refuse = |why: String| {
        Err(WebError::new(
            StatusCode::FORBIDDEN,
            format!("cross-origin action refused ({why}): act from the dashboard's own pages"),
        ))
    };
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return refuse(format!("Sec-Fetch-Site: {site}"));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let bare = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or("");
        if host.is_empty() || bare != host {
            return refuse(format!(
                "Origin {origin} is not this dashboard's host {host}"
            ));
        }
    }
    Ok(())
}

impl Web {
    /// The dashboard's token, when actions are allowed.
    fn token(&self) -> Option<String> {
        self.engine()
            .project
            .daemon
            .auth_token
            .as_ref()
            .map(|t| t.0.clone())
    }

    /// Whether actions are possible at all (a token is configured).
    pub(super) fn writable(&self) -> bool {
        self.token().is_some()
    }

    /// The logged-in name of this request's browser, if any.
    pub(super) fn viewer(&self, headers: &HeaderMap) -> Option<String> {
        self.token()?;
        cookie(headers, COOKIE).and_then(|id| self.inner.sessions.who(id))
    }

    /// Who is acting, or why they may not: read-only dashboard, cross-origin, or no token.
    pub(super) fn authorize(&self, headers: &HeaderMap) -> Result<String, WebError> {
        let Some(token) = self.token() else {
            return Err(WebError::new(
                StatusCode::FORBIDDEN,
                "this dashboard is read-only: set daemon.auth_token in cranium.yaml (from the \
                 environment, e.g. auth_token: ${CRANIUM_AUTH_TOKEN}) to allow actions",
            ));
        };
        same_origin(headers)?;
        if let Some(given) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            return if token_matches(given.trim(), &token) {
                Ok("token".to_string())
            } else {
                Err(WebError::new(
                    StatusCode::UNAUTHORIZED,
                    "the bearer token is not daemon.auth_token",
                ))
            };
        }
        match cookie(headers, COOKIE).and_then(|id| self.inner.sessions.who(id)) {
            Some(who) => Ok(who),
            None => Err(WebError::new(
                StatusCode::UNAUTHORIZED,
                "log in first (/login) or send Authorization: Bearer with daemon.auth_token",
            )),
        }
    }
}

/// Where to go after logging in: a path on this dashboard only.
fn local_path(next: Option<&String>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.clone(),
        _ => "/".to_string(),
    }
}

pub async fn login_form(cx: PageCx) -> Result<Response, WebError> {
    let q = &cx.q;
    let ctx = minijinja::context! {
        next => local_path(q.get("next")),
    };
    cx.render("login.html", "login", "Log in".into(), ctx)
}

pub async fn login(
    State(web): State<Web>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Result<Response, WebError> {
    same_origin(&headers)?;
    let Some(token) = web.token() else {
        return Err(WebError::new(
            StatusCode::FORBIDDEN,
            "this dashboard is read-only: there is nothing to log in to (no daemon.auth_token)",
        ));
    };
    let next = local_path(f.get("next"));
    let given = f.get("token").map(String::as_str).unwrap_or("");
    if !token_matches(given, &token) {
        let to = format!("/login?error=wrong+token&next={}", url_encode(&next));
        return Ok(Redirect::to(&to).into_response());
    }
    let who = f
        .get("name")
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
        .unwrap_or("dashboard");
    let who: String = who.chars().filter(|c| !c.is_control()).take(64).collect();
    let id = web.inner.sessions.create(&who);
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to(&next)).into_response())
}

pub async fn logout(State(web): State<Web>, headers: HeaderMap) -> Result<Response, WebError> {
    same_origin(&headers)?;
    if let Some(id) = cookie(&headers, COOKIE) {
        web.inner.sessions.remove(id);
    }
    let clear = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    Ok(([(header::SET_COOKIE, clear)], Redirect::to("/")).into_response())
}

/// Percent-encodes a query value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(token_matches("s3cret-token-0123", "s3cret-token-0123"));
        assert!(!token_matches("s3cret-token-0124", "s3cret-token-0123"));
        assert!(!token_matches("s3cret", "s3cret-token-0123"));
        assert!(!token_matches("", "s3cret-token-0123"));
    }

    #[test]
    fn cross_origin_posts_are_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:8181".parse().unwrap());
        assert!(same_origin(&h).is_ok());
        h.insert(header::ORIGIN, "http://127.0.0.1:8181".parse().unwrap());
        assert!(same_origin(&h).is_ok());
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(same_origin(&h).is_err());
        h.remove(header::ORIGIN);
        h.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(same_origin(&h).is_err());
        h.insert("sec-fetch-site", "same-origin".parse().unwrap());
        assert!(same_origin(&h).is_ok());
    }

    #[test]
    fn login_redirects_stay_on_the_dashboard() {
        assert_eq!(local_path(Some(&"/jobs/a".to_string())), "/jobs/a");
        assert_eq!(local_path(Some(&"//evil.example".to_string())), "/");
        assert_eq!(local_path(Some(&"https://evil.example".to_string())), "/");
        assert_eq!(local_path(None), "/");
    }
}
