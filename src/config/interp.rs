//! `${VAR}` and `${VAR:-default}` in configuration strings, resolved from the environment.
//!
//! Interpolation runs on the parsed YAML before it is deserialised, so it applies to every string of
//! `cranium.yaml` and of job files. `$${` writes a literal `${`. An unset variable without a default is an
//! error naming the variable and its place. Values of variables whose name looks secret (PASSWORD, SECRET,
//! TOKEN, KEY) are registered with the redactor, so they are never printed.

use std::collections::HashMap;

use crate::secret::Redactor;

/// Where variables come from: the process environment, or a fixed map in tests.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    pub fn from_process() -> Env {
        Env {
            vars: std::env::vars().collect(),
        }
    }

    pub fn from_pairs<I: IntoIterator<Item = (K, V)>, K: Into<String>, V: Into<String>>(
        pairs: I,
    ) -> Env {
        Env {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(|s| s.as_str())
    }
}

/// A problem in one string: the message and the byte offset of the `${` in the string.
#[derive(Debug, Clone, PartialEq)]
pub struct InterpError {
    pub message: String,
    pub help: String,
    pub offset: usize,
}

/// Resolve every `${…}` in `s`. Returns the new string, or every error found in it.
pub fn interpolate(
    s: &str,
    env: &Env,
    redactor: &mut Redactor,
) -> Result<String, Vec<InterpError>> {
    if !s.contains('$') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut errors = Vec::new();
    let mut rest = s;
    let mut offset = 0;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(r) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = r;
            offset += i + 3;
            continue;
        }
        if !after.starts_with("${") {
            out.push('$');
            rest = &after[1..];
            offset += i + 1;
            continue;
        }
        let Some(close) = after.find('}') else {
            errors.push(InterpError {
                message: "unclosed '${' in string".to_string(),
                help: "write ${NAME} or ${NAME:-default}; write $${ for a literal ${".to_string(),
                offset: offset + i,
            });
            out.push_str(after);
            rest = "";
            break;
        };
        let inner = &after[2..close];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            errors.push(InterpError {
                message: format!("invalid variable name '{name}' in '${{{inner}}}'"),
                help: "variable names are letters, digits and '_'".to_string(),
                offset: offset + i,
            });
        } else {
            match (env.get(name), default) {
                (Some(v), _) => {
                    if looks_secret(name) {
                        redactor.add(v);
                    }
                    out.push_str(v);
                }
                (None, Some(d)) => out.push_str(d),
                (None, None) => errors.push(InterpError {
                    message: format!("environment variable '{name}' is not set"),
                    help: format!("export {name}=..., or give a default: ${{{name}:-value}}"),
                    offset: offset + i,
                }),
            }
        }
        rest = &after[close + 1..];
        offset += i + close + 1;
    }
    out.push_str(rest);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn looks_secret(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    ["PASSWORD", "PASSWD", "SECRET", "TOKEN", "KEY", "CREDENTIAL"]
        .iter()
        .any(|w| n.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_defaults_and_escapes() {
        let env = Env::from_pairs([("HOST", "db1"), ("PG_PASSWORD", "hunter2")]);
        let mut r = Redactor::default();
        assert_eq!(
            interpolate(
                "postgres://u:${PG_PASSWORD}@${HOST}:${PORT:-5432}/x",
                &env,
                &mut r
            )
            .as_deref(),
            Ok("postgres://u:hunter2@db1:5432/x")
        );
        assert_eq!(r.redact("hunter2"), "***");
        assert_eq!(
            interpolate("cost $5 $${HOST}", &env, &mut r).as_deref(),
            Ok("cost $5 ${HOST}")
        );
    }

    #[test]
    fn unset_variable_is_an_error_with_offset() {
        let env = Env::default();
        let mut r = Redactor::default();
        let e = interpolate("x ${NOPE} ${ALSO_NOPE}", &env, &mut r).expect_err("unset");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].message, "environment variable 'NOPE' is not set");
        assert_eq!(e[0].offset, 2);
        assert_eq!(e[1].offset, 10);
        let e = interpolate("${OPEN", &env, &mut r).expect_err("unclosed");
        assert!(e[0].message.contains("unclosed"));
    }
}
