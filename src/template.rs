//! Templates: the SQL, Lua and string fields of job files, rendered per run.
//!
//! SQL scripts, Lua chunks and some string fields (S3 keys and prefixes, `where` clauses) are
//! [minijinja](https://docs.rs/minijinja) templates, rendered once per run with the run's interval.
//! This module owns the environment (filters, settings) and the variables; it does no I/O.
//!
//! Rules:
//! - **Strict undefined**: using an undefined variable or attribute (`{{ nope }}`,
//!   `{{ params.missing }}`, `{% if nope %}`) is an error; use `is defined` or `| default(…)` for
//!   optional values. Errors carry the 1-based line and column in the template source and a message
//!   without the position (e.g. ``undefined value: `nope` is undefined``).
//! - **Line structure is kept**: the trailing newline is kept and `trim_blocks`/`lstrip_blocks` are
//!   off, so a `{% if %}` line renders as an empty line and the rendered SQL's line numbers match the
//!   source wherever no loop expands (see [`crate::sql::map_to_source`]). No auto-escaping.
//! - **Variables**: `interval_start`, `interval_end` (RFC 3339 in the job's time zone, e.g.
//!   `2026-03-08T00:00:00-05:00`), `ds` (`YYYY-MM-DD` of `interval_start` in the job's time zone),
//!   `ds_nodash` (`YYYYMMDD`), `hour` (`00`..`23`), `run_id`, `job`, `step`, `params` (the job file's
//!   free map) and `steps` (`steps.<id>.outputs.<name>`: outputs of upstream steps).
//! - **Filters**:
//!   - `date(fmt)`: formats an RFC 3339 timestamp (keeping its offset) or a `YYYY-MM-DD` date (as
//!     midnight) with a chrono strftime format: `{{ interval_start | date('%Y/%m/%d/%H') }}`.
//!   - `sql_literal`: the value as a SQL literal for the dialect of the step being rendered (the
//!     `dialect` argument of [`Renderer::render`]; PostgreSQL rules when there is none). Strings are
//!     quoted and escaped (below), numbers are written as they are, booleans as `TRUE`/`FALSE`,
//!     none as `NULL`, and a list as `(a, b, c)` of literals (for `IN`; an empty list is an error).
//!     Quoting rules per dialect:
//!     - PostgreSQL (`standard_conforming_strings` on): `'…'` with `'` doubled; backslashes are
//!       ordinary characters. A NUL character is an error (PostgreSQL text cannot hold it).
//!     - Redshift: `'…'` with `'` doubled and `\` doubled (Redshift treats `\` as an escape in
//!       literals). A NUL character is an error.
//!     - MySQL (default `sql_mode`, i.e. without `NO_BACKSLASH_ESCAPES`): `'…'` with `\` → `\\`,
//!       `'` → `''`, NUL → `\0`, newline → `\n`, carriage return → `\r`, 0x1a → `\Z`.
//!   - `sql_identifier`: the value as a quoted identifier: `"x"` with `"` doubled for
//!     PostgreSQL/Redshift, `` `x` `` with `` ` `` doubled for MySQL. A list of strings gives a
//!     qualified name (`['s', 't']` → `"s"."t"`); a single string is always one identifier.
//! - [`unquoted_param_outputs`] lints SQL templates for `{{ params.… }}` pasted in without
//!   `sql_literal`/`sql_identifier`.

use std::fmt::Write as _;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{StringInput, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State, UndefinedBehavior, Value};

use crate::sql::{self, Dialect};

/// Name of the hidden context variable holding the dialect of the step being rendered.
const DIALECT_VAR: &str = "__cranium_sql_dialect";

/// What a template can see, for one run of one step.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateVars {
    pub interval_start: DateTime<Utc>,
    pub interval_end: DateTime<Utc>,
    /// The job's time zone: offsets of `interval_*` and the date of `ds`/`hour`.
    pub timezone: chrono_tz::Tz,
    pub run_id: String,
    pub job: String,
    pub step: String,
    /// The job file's `params` map.
    pub params: serde_json::Value,
    /// Outputs of upstream steps: `{ step_id: { outputs: { name: value } } }`.
    pub steps: serde_json::Value,
}

/// A template that does not compile or render.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct TemplateError {
    /// What is wrong, without file or position (e.g. ``undefined value: `nope` is undefined``).
    pub message: String,
    /// 1-based line in the template source, when known.
    pub line: Option<usize>,
    /// 1-based column (in characters) in the template source, when known.
    pub col: Option<usize>,
}

/// Renders templates; build it once and share it (it is `Send + Sync`).
pub struct Renderer {
    env: Environment<'static>,
}

impl Default for Renderer {
    fn default() -> Renderer {
        Renderer::new()
    }
}

impl Renderer {
    pub fn new() -> Renderer {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_debug(true);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        match SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .trim_blocks(false)
            .lstrip_blocks(false)
            .build()
        {
            Ok(syntax) => env.set_syntax(syntax),
            // The default delimiters always build; keep the defaults if that ever changes.
            Err(_) => debug_assert!(false, "default syntax config must build"),
        }
        env.add_filter("date", date_filter);
        env.add_filter("sql_literal", sql_literal_filter);
        env.add_filter("sql_identifier", sql_identifier_filter);
        Renderer { env }
    }

    /// Render `source` (whose name is used in messages, e.g. "sql/rollup.sql"). `dialect` selects
    /// sql_literal rules.
    pub fn render(
        &self,
        name: &str,
        source: &str,
        vars: &TemplateVars,
        dialect: Option<Dialect>,
    ) -> Result<String, TemplateError> {
        let ctx = context(vars, dialect);
        self.env
            .render_named_str(name, source, ctx)
            .map_err(|e| convert_error(&e, source))
    }

    /// Syntax-only check (compile, no render).
    pub fn check_syntax(&self, name: &str, source: &str) -> Result<(), TemplateError> {
        self.env
            .template_from_named_str(name, source)
            .map(|_| ())
            .map_err(|e| convert_error(&e, source))
    }
}

fn timestamp(t: &DateTime<Utc>, tz: chrono_tz::Tz) -> String {
    t.with_timezone(&tz)
        .to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

fn context(vars: &TemplateVars, dialect: Option<Dialect>) -> Value {
    let start = vars.interval_start.with_timezone(&vars.timezone);
    let mut pairs: Vec<(&str, Value)> = vec![
        (
            "interval_start",
            Value::from(timestamp(&vars.interval_start, vars.timezone)),
        ),
        (
            "interval_end",
            Value::from(timestamp(&vars.interval_end, vars.timezone)),
        ),
        ("ds", Value::from(start.format("%Y-%m-%d").to_string())),
        ("ds_nodash", Value::from(start.format("%Y%m%d").to_string())),
        ("hour", Value::from(start.format("%H").to_string())),
        ("run_id", Value::from(vars.run_id.as_str())),
        ("job", Value::from(vars.job.as_str())),
        ("step", Value::from(vars.step.as_str())),
        ("params", json_to_value(&vars.params)),
        ("steps", json_to_value(&vars.steps)),
    ];
    if let Some(d) = dialect {
        pairs.push((DIALECT_VAR, Value::from(d.name())));
    }
    Value::from_pairs(pairs)
}

/// serde_json → minijinja (minijinja's `serde` feature is off in this build).
pub fn json_to_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(items) => items.iter().map(json_to_value).collect(),
        serde_json::Value::Object(map) => {
            Value::from_pairs(map.iter().map(|(k, v)| (k.as_str(), json_to_value(v))))
        }
    }
}

/// 1-based line and character column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (line, text[line_start..offset].chars().count() + 1)
}

fn convert_error(err: &Error, source: &str) -> TemplateError {
    let message = match err.detail() {
        Some(detail) => format!("{}: {detail}", err.kind()),
        None => err.kind().to_string(),
    };
    let (line, col) = match err.range() {
        Some(r) if r.start <= source.len() => {
            let (l, c) = line_col(source, r.start);
            (Some(l), Some(c))
        }
        _ => (err.line(), None),
    };
    TemplateError { message, line, col }
}

// ---------------------------------------------------------------------------------------------
// Filters

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg.into())
}

/// An undefined input is an error; going through minijinja's own check lets the engine name the
/// undefined expression in the message (``undefined value: `params.x` is undefined``).
fn reject_undefined(state: &State, value: &Value, filter: &str) -> Result<(), Error> {
    if value.is_undefined() {
        StringInput::new(state, value)?;
        return Err(Error::new(
            ErrorKind::UndefinedError,
            format!("{filter}: the value is undefined"),
        ));
    }
    Ok(())
}

/// `value | date(fmt)`: format an RFC 3339 timestamp or a `YYYY-MM-DD` date with strftime `fmt`.
fn date_filter(state: &State, value: Value, fmt: &str) -> Result<String, Error> {
    reject_undefined(state, &value, "date")?;
    let Some(text) = value.as_str() else {
        return Err(invalid(format!(
            "date: expected a timestamp string (RFC 3339) or a YYYY-MM-DD date, got {}",
            value.kind()
        )));
    };
    let text = text.trim();
    let mut out = String::new();
    let written = if let Ok(ts) = DateTime::parse_from_rfc3339(text) {
        write!(out, "{}", ts.format(fmt))
    } else if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        write!(out, "{}", d.and_time(chrono::NaiveTime::MIN).format(fmt))
    } else {
        return Err(invalid(format!(
            "date: '{text}' is neither an RFC 3339 timestamp (2026-03-08T00:00:00-05:00) nor a date (2026-03-08)"
        )));
    };
    written.map_err(|_| {
        invalid(format!(
            "date: cannot format '{text}' with '{fmt}' (unknown specifier, or a time-zone field for a plain date)"
        ))
    })?;
    Ok(out)
}

fn dialect_of(state: &State) -> Dialect {
    state
        .lookup(DIALECT_VAR)
        .and_then(|v| v.as_str().and_then(|s| Dialect::from_str(s).ok()))
        .unwrap_or(Dialect::Postgres)
}

fn literal(dialect: Dialect, value: &Value, nested: bool) -> Result<String, Error> {
    match value.kind() {
        ValueKind::Undefined => Err(Error::new(
            ErrorKind::UndefinedError,
            "sql_literal: a value is undefined",
        )),
        ValueKind::None => Ok("NULL".to_string()),
        ValueKind::Bool => Ok(if value.is_true() { "TRUE" } else { "FALSE" }.to_string()),
        ValueKind::Number => {
            if value.is_integer() {
                Ok(value.to_string())
            } else {
                let f = f64::try_from(value.clone())
                    .map_err(|_| invalid(format!("sql_literal: unsupported number {value}")))?;
                if f.is_finite() {
                    Ok(format!("{f}"))
                } else {
                    Err(invalid(format!("sql_literal: {f} has no SQL literal")))
                }
            }
        }
        ValueKind::String => {
            let s = value.as_str().unwrap_or_default();
            sql::quote_literal(dialect, s).map_err(|e| invalid(format!("sql_literal: {e}")))
        }
        ValueKind::Seq | ValueKind::Iterable if !nested => {
            let items = value
                .try_iter()
                .map_err(|e| invalid(format!("sql_literal: {e}")))?
                .map(|v| literal(dialect, &v, true))
                .collect::<Result<Vec<_>, _>>()?;
            if items.is_empty() {
                return Err(invalid(
                    "sql_literal: an empty list has no SQL form (`IN ()` is invalid); handle it in the template",
                ));
            }
            Ok(format!("({})", items.join(", ")))
        }
        kind => Err(invalid(format!(
            "sql_literal: cannot write a {kind} as a SQL literal{}",
            if nested { " inside a list" } else { "" }
        ))),
    }
}

/// `value | sql_literal`: see the module docs.
fn sql_literal_filter(state: &State, value: Value) -> Result<String, Error> {
    reject_undefined(state, &value, "sql_literal")?;
    literal(dialect_of(state), &value, false)
}

/// `value | sql_identifier`: see the module docs.
fn sql_identifier_filter(state: &State, value: Value) -> Result<String, Error> {
    reject_undefined(state, &value, "sql_identifier")?;
    let dialect = dialect_of(state);
    let one = |v: &Value| -> Result<String, Error> {
        match v.as_str() {
            Some(s) => sql::quote_identifier(dialect, s)
                .map_err(|e| invalid(format!("sql_identifier: {e}"))),
            None if v.is_undefined() => Err(Error::new(
                ErrorKind::UndefinedError,
                "sql_identifier: the value is undefined",
            )),
            None => Err(invalid(format!(
                "sql_identifier: expected a string (or a list of strings), got {}",
                v.kind()
            ))),
        }
    };
    match value.kind() {
        ValueKind::Seq | ValueKind::Iterable => {
            let parts = value
                .try_iter()
                .map_err(|e| invalid(format!("sql_identifier: {e}")))?
                .map(|v| one(&v))
                .collect::<Result<Vec<_>, _>>()?;
            if parts.is_empty() {
                return Err(invalid("sql_identifier: an empty list is not a name"));
            }
            Ok(parts.join("."))
        }
        _ => one(&value),
    }
}

// ---------------------------------------------------------------------------------------------
// Lint

/// Does `expr` (the inside of `{{ … }}`) mention `params` as a variable, and does it pass through
/// `sql_literal`/`sql_identifier`? Text inside string literals is ignored.
fn scan_expression(expr: &str) -> (bool, bool) {
    let chars: Vec<char> = expr.chars().collect();
    let mut mentions = false;
    let mut quoted = false;
    let mut i = 0;
    let mut prev_sig: Option<char> = None; // previous non-space char outside strings
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' || c == '"' {
            // skip the string literal
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            prev_sig = Some(c);
            continue;
        }
        if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            match word.as_str() {
                "params" if prev_sig != Some('.') => mentions = true,
                "sql_literal" | "sql_identifier" if prev_sig == Some('|') => quoted = true,
                _ => {}
            }
            prev_sig = chars.get(i - 1).copied();
            continue;
        }
        if !c.is_whitespace() {
            prev_sig = Some(c);
        }
        i += 1;
    }
    (mentions, quoted)
}

/// (line, col, expression) of every `{{ params.… }}` expression that does not pass through
/// `sql_literal`/`sql_identifier`: a lint for SQL templates. `col` is where the expression (the
/// text inside `{{ }}`, trimmed) starts, so `expression.len()` characters from it underline it.
/// Comments (`{# #}`) and `{% raw %}` blocks are skipped.
pub fn unquoted_param_outputs(source: &str) -> Vec<(usize, usize, String)> {
    const MARKS: [char; 2] = ['-', '+'];
    /// The tag opened at `at` (2-byte opener): (inner text range, end of the tag). An unclosed
    /// tag runs to the end of the source.
    fn tag(source: &str, at: usize, close: &str) -> (std::ops::Range<usize>, usize) {
        let inner_start = at + 2;
        match source[inner_start..].find(close) {
            Some(k) => (inner_start..inner_start + k, inner_start + k + close.len()),
            None => (inner_start..source.len(), source.len()),
        }
    }
    fn block_name(inner: &str) -> &str {
        inner.trim_matches(|c: char| MARKS.contains(&c) || c.is_whitespace())
    }
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(rel) = source[i..].find('{') {
        let at = i + rel;
        let rest = &source[at..];
        if rest.starts_with("{#") {
            i = tag(source, at, "#}").1;
        } else if rest.starts_with("{%") {
            let (inner, end) = tag(source, at, "%}");
            i = end;
            if block_name(&source[inner]) == "raw" {
                // Skip to after `{% endraw %}`.
                loop {
                    let Some(k) = source[i..].find("{%") else {
                        i = source.len();
                        break;
                    };
                    let (inner, end) = tag(source, i + k, "%}");
                    i = end;
                    if block_name(&source[inner]) == "endraw" {
                        break;
                    }
                }
            }
        } else if rest.starts_with("{{") {
            if !source[at + 2..].contains("}}") {
                break;
            }
            let (inner, end) = tag(source, at, "}}");
            i = end;
            let raw = &source[inner.clone()];
            let opened = raw.trim_start_matches(MARKS).trim_start();
            let expr = opened.trim_end_matches(MARKS).trim();
            let (mentions, quoted) = scan_expression(expr);
            if mentions && !quoted {
                let (line, col) = line_col(source, inner.start + (raw.len() - opened.len()));
                out.push((line, col, expr.to_string()));
            }
        } else {
            i = at + 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;
    use sqlparser::ast::{BinaryOperator, Expr, SetExpr, Statement, Value as SqlValue};

    fn vars() -> TemplateVars {
        TemplateVars {
            // 05:00 UTC is midnight in New York (EST, -05:00) on the day DST starts.
            interval_start: Utc.with_ymd_and_hms(2026, 3, 8, 5, 0, 0).unwrap(),
            interval_end: Utc.with_ymd_and_hms(2026, 3, 9, 4, 0, 0).unwrap(),
            timezone: chrono_tz::America::New_York,
            run_id: "run-42".into(),
            job: "daily_rollup".into(),
            step: "rollup".into(),
            params: json!({
                "name": "O'Brien",
                "n": 3,
                "big": 18446744073709551615u64,
                "ratio": 0.25,
                "on": true,
                "off": false,
                "nothing": null,
                "ids": [1, 2, 3],
                "mixed": ["a'b", 7, null, true],
                "empty": [],
                "nested": {"a": {"b": "deep"}},
                "schema": "analytics",
            }),
            steps: json!({"extract": {"outputs": {"rows": 120, "key": "s3://b/k"}}}),
        }
    }

    fn render(src: &str) -> Result<String, TemplateError> {
        Renderer::new().render("t.sql", src, &vars(), None)
    }

    fn render_in(d: Dialect, src: &str) -> Result<String, TemplateError> {
        Renderer::new().render("t.sql", src, &vars(), Some(d))
    }

    fn render_with_params(
        d: Option<Dialect>,
        src: &str,
        params: serde_json::Value,
    ) -> Result<String, TemplateError> {
        let mut v = vars();
        v.params = params;
        Renderer::new().render("t.sql", src, &v, d)
    }

    #[test]
    fn renderer_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Renderer>();
        assert_send_sync::<TemplateError>();
    }

    #[test]
    fn every_variable() {
        let out = render(
            "{{ interval_start }}|{{ interval_end }}|{{ ds }}|{{ ds_nodash }}|{{ hour }}|{{ run_id }}|{{ job }}|{{ step }}|{{ params.name }}|{{ params.nested.a.b }}|{{ steps.extract.outputs.rows }}|{{ steps['extract'].outputs.key }}",
        )
        .unwrap();
        assert_eq!(
            out,
            "2026-03-08T00:00:00-05:00|2026-03-09T00:00:00-04:00|2026-03-08|20260308|00|run-42|daily_rollup|rollup|O'Brien|deep|120|s3://b/k"
        );
        // ds and hour follow the job's time zone, not UTC.
        let mut v = vars();
        v.interval_start = Utc.with_ymd_and_hms(2026, 3, 8, 3, 30, 0).unwrap();
        let out = Renderer::new()
            .render("t", "{{ ds }} {{ hour }} {{ interval_start }}", &v, None)
            .unwrap();
        assert_eq!(out, "2026-03-07 22 2026-03-07T22:30:00-05:00");
        // UTC jobs get +00:00.
        v.timezone = chrono_tz::UTC;
        let out = Renderer::new()
            .render("t", "{{ interval_start }} {{ hour }}", &v, None)
            .unwrap();
        assert_eq!(out, "2026-03-08T03:30:00+00:00 03");
    }

    #[test]
    fn params_loop_and_conditionals() {
        let out = render("{% for i in params.ids %}{{ i }}{% if not loop.last %},{% endif %}{% endfor %}{% if params.on %} on{% endif %}").unwrap();
        assert_eq!(out, "1,2,3 on");
        assert_eq!(render("{{ params.missing | default('d') }}").unwrap(), "d");
        assert_eq!(
            render("{% if params.missing is defined %}y{% else %}n{% endif %}").unwrap(),
            "n"
        );
    }

    #[test]
    fn keeps_lines_and_trailing_newline() {
        let src = "SELECT a,\n{% if params.on %}\n  b,\n{% endif %}\n  c\nFROM t\n";
        assert_eq!(render(src).unwrap(), "SELECT a,\n\n  b,\n\n  c\nFROM t\n");
        assert_eq!(render(src).unwrap().lines().count(), src.lines().count());
    }

    #[test]
    fn date_filter_on_timestamps_and_dates() {
        assert_eq!(
            render("{{ interval_start | date('%Y/%m/%d/%H') }}").unwrap(),
            "2026/03/08/00"
        );
        assert_eq!(
            render("{{ interval_end | date('%Y-%m-%d %H:%M %z') }}").unwrap(),
            "2026-03-09 00:00 -0400"
        );
        assert_eq!(
            render("{{ '2026-03-08T12:34:56Z' | date('%H%M%S') }}").unwrap(),
            "123456"
        );
        assert_eq!(render("{{ ds | date('%d.%m.%Y') }}").unwrap(), "08.03.2026");
        assert_eq!(
            render("{{ '2024-02-29' | date('year=%Y/month=%m/day=%d/hour=%H') }}").unwrap(),
            "year=2024/month=02/day=29/hour=00"
        );
        // Bad inputs are clear errors.
        let e = render("{{ 'yesterday' | date('%Y') }}").unwrap_err();
        assert!(
            e.message
                .contains("'yesterday' is neither an RFC 3339 timestamp"),
            "{}",
            e.message
        );
        assert_eq!((e.line, e.col), (Some(1), Some(18)));
        let e = render("{{ '2026-02-30' | date('%Y') }}").unwrap_err();
        assert!(e.message.contains("neither"), "{}", e.message);
        let e = render("{{ params.n | date('%Y') }}").unwrap_err();
        assert!(
            e.message.contains("expected a timestamp string"),
            "{}",
            e.message
        );
        let e = render("{{ ds | date('%z') }}").unwrap_err();
        assert!(e.message.contains("cannot format"), "{}", e.message);
        let e = render("\n{{ nope | date('%Y') }}").unwrap_err();
        assert!(e.message.contains("`nope` is undefined"), "{}", e.message);
        assert_eq!(e.line, Some(2));
    }

    #[test]
    fn strict_undefined_reports_line_col_and_name() {
        let e = render("SELECT 1\nFROM t\nWHERE a = {{ nope }}\n").unwrap_err();
        assert_eq!(e.message, "undefined value: `nope` is undefined");
        assert_eq!((e.line, e.col), (Some(3), Some(14)));
        let e = render("SELECT 1\n  -- {{ params.missing }}\n").unwrap_err();
        assert_eq!(e.message, "undefined value: `params.missing` is undefined");
        assert_eq!((e.line, e.col), (Some(2), Some(9)));
        let e = render("x\n\n{% if nope %}y{% endif %}").unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("`nope`"), "{}", e.message);
        let e = render("{{ params.nested.a.c }}").unwrap_err();
        assert!(
            e.message.contains("`params.nested.a.c` is undefined"),
            "{}",
            e.message
        );
        let e = render("a\n{{ params.missing | sql_literal }}").unwrap_err();
        assert_eq!(e.message, "undefined value: `params.missing` is undefined");
        assert_eq!(e.line, Some(2));
        // Display is the message.
        assert_eq!(e.to_string(), e.message);
    }

    #[test]
    fn syntax_errors_have_positions() {
        let r = Renderer::new();
        let e = r
            .check_syntax("t.sql", "SELECT 1\nFROM {{ x | upper( }}")
            .unwrap_err();
        assert!(e.message.starts_with("syntax error"), "{}", e.message);
        assert_eq!(e.line, Some(2));
        assert!(e.col.is_some());
        assert!(r
            .check_syntax("t.sql", "{% for x in y %}{{ x }}{% endfor %}")
            .is_ok());
        let e = r.check_syntax("t.sql", "a\nb\n{% if x %}").unwrap_err();
        assert!(e.message.starts_with("syntax error"), "{}", e.message);
        // render reports them too
        let e = render("{{ }}").unwrap_err();
        assert!(e.message.starts_with("syntax error"), "{}", e.message);
    }

    #[test]
    fn sql_literal_per_dialect() {
        let cases: &[(&str, [&str; 3])] = &[
            (
                "{{ params.name | sql_literal }}",
                ["'O''Brien'", "'O''Brien'", "'O''Brien'"],
            ),
            (
                "{{ 'a\\\\b' | sql_literal }}",
                ["'a\\b'", "'a\\\\b'", "'a\\\\b'"],
            ),
            ("{{ params.n | sql_literal }}", ["3", "3", "3"]),
            (
                "{{ params.big | sql_literal }}",
                [
                    "18446744073709551615",
                    "18446744073709551615",
                    "18446744073709551615",
                ],
            ),
            ("{{ params.ratio | sql_literal }}", ["0.25", "0.25", "0.25"]),
            ("{{ -7 | sql_literal }}", ["-7", "-7", "-7"]),
            (
                "{{ params.on | sql_literal }} {{ params.off | sql_literal }}",
                ["TRUE FALSE", "TRUE FALSE", "TRUE FALSE"],
            ),
            (
                "{{ params.nothing | sql_literal }} {{ none | sql_literal }}",
                ["NULL NULL", "NULL NULL", "NULL NULL"],
            ),
            (
                "{{ params.ids | sql_literal }}",
                ["(1, 2, 3)", "(1, 2, 3)", "(1, 2, 3)"],
            ),
            (
                "{{ params.mixed | sql_literal }}",
                [
                    "('a''b', 7, NULL, TRUE)",
                    "('a''b', 7, NULL, TRUE)",
                    "('a''b', 7, NULL, TRUE)",
                ],
            ),
        ];
        for (src, want) in cases {
            for (d, w) in [Dialect::Postgres, Dialect::Redshift, Dialect::MySql]
                .into_iter()
                .zip(want)
            {
                assert_eq!(render_in(d, src).unwrap(), *w, "{d:?} {src}");
            }
        }
        // No dialect: PostgreSQL rules.
        assert_eq!(
            render("{{ \"a\\\\b'c\" | sql_literal }}").unwrap(),
            "'a\\b''c'"
        );
        // MySQL control characters.
        let p = json!({"s": "a\u{0}b\nc\rd\u{1a}e"});
        assert_eq!(
            render_with_params(
                Some(Dialect::MySql),
                "{{ params.s | sql_literal }}",
                p.clone()
            )
            .unwrap(),
            "'a\\0b\\nc\\rd\\Ze'"
        );
        // NUL is rejected for PostgreSQL and Redshift.
        for d in [None, Some(Dialect::Postgres), Some(Dialect::Redshift)] {
            let e =
                render_with_params(d, "x = {{ params.s | sql_literal }}", p.clone()).unwrap_err();
            assert!(e.message.contains("NUL"), "{d:?}: {}", e.message);
            // Points at the filter.
            assert_eq!((e.line, e.col), (Some(1), Some(19)));
        }
        // Things that have no literal form.
        for src in [
            "{{ params.nested | sql_literal }}",
            "{{ params.empty | sql_literal }}",
            "{{ [[1]] | sql_literal }}",
        ] {
            assert!(render_in(Dialect::Postgres, src).is_err(), "{src}");
        }
    }

    #[test]
    fn sql_identifier_per_dialect() {
        let p = json!({"t": "My \"Table\"", "m": "we`ird", "parts": ["Analytics", "events"]});
        let pg = render_with_params(
            Some(Dialect::Postgres),
            "{{ params.t | sql_identifier }}",
            p.clone(),
        )
        .unwrap();
        assert_eq!(pg, "\"My \"\"Table\"\"\"");
        let rs = render_with_params(
            Some(Dialect::Redshift),
            "{{ params.parts | sql_identifier }}",
            p.clone(),
        )
        .unwrap();
        assert_eq!(rs, "\"Analytics\".\"events\"");
        let my = render_with_params(
            Some(Dialect::MySql),
            "{{ params.m | sql_identifier }}.{{ params.parts | sql_identifier }}",
            p.clone(),
        )
        .unwrap();
        assert_eq!(my, "`we``ird`.`Analytics`.`events`");
        assert_eq!(
            render_with_params(None, "{{ 'x' | sql_identifier }}", p.clone()).unwrap(),
            "\"x\""
        );
        assert!(render_with_params(None, "{{ '' | sql_identifier }}", p.clone()).is_err());
        assert!(render_with_params(None, "{{ 3 | sql_identifier }}", p).is_err());
    }

    /// The right-hand side of `WHERE name = <literal>` in the only statement of `sql`.
    fn where_string(d: Dialect, sql: &str) -> String {
        let stmts = crate::sql::parse(d, sql).unwrap_or_else(|e| panic!("{d:?}: {sql}: {e:?}"));
        assert_eq!(stmts.len(), 1, "{d:?}: {sql}");
        let Statement::Query(q) = &stmts[0] else {
            panic!("not a query: {sql}")
        };
        let SetExpr::Select(sel) = q.body.as_ref() else {
            panic!("not a select: {sql}")
        };
        let Some(Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        }) = &sel.selection
        else {
            panic!("WHERE is not a comparison: {sql}")
        };
        assert!(
            matches!(left.as_ref(), Expr::Identifier(id) if id.value == "name"),
            "{sql}"
        );
        match right.as_ref() {
            Expr::Value(v) => match &v.value {
                SqlValue::SingleQuotedString(s) => s.clone(),
                other => panic!("not a string literal: {other:?} in {sql}"),
            },
            other => panic!("not a literal: {other:?} in {sql}"),
        }
    }

    #[test]
    fn sql_literal_stops_injection() {
        let src = "SELECT * FROM t WHERE name = {{ params.name | sql_literal }}";
        let evil = [
            "'; DROP TABLE x; --",
            "\\'; DROP TABLE x; --",
            "\\\\'; DROP TABLE x; --",
            "x' OR '1'='1",
            "a\\",
            "\\",
            "''; DELETE FROM t; /*",
        ];
        for d in [Dialect::Postgres, Dialect::Redshift, Dialect::MySql] {
            for value in evil {
                let sql = render_with_params(Some(d), src, json!({ "name": value })).unwrap();
                assert_eq!(where_string(d, &sql), value, "{d:?}: {sql}");
                let (stmts, lineage) = crate::sql::analyze(d, &sql).unwrap();
                assert_eq!(stmts.len(), 1);
                assert!(lineage.writes.is_empty(), "{d:?}: {sql}");
            }
        }
    }

    #[test]
    fn lint_finds_unquoted_params() {
        let src = "SELECT * FROM {{ params.schema }}.events\n\
                   WHERE a = {{ params.a | sql_literal }}\n\
                     AND b = {{params.b|sql_literal}} AND c IN {{ params.ids | sql_literal }}\n\
                     AND d = '{{ params.d }}' {# {{ params.in_comment }} #}\n\
                     AND e = {{- params['e'] -}}\n\
                     AND f = {{ ds }} AND g = {{ steps.x.outputs.params }}\n\
                   {% raw %}{{ params.raw }}{% endraw %}\n\
                   FROM {{ params.tbl | sql_identifier }} LIMIT {{ params.n | int }} {{ 'params' }}";
        let got = unquoted_param_outputs(src);
        assert_eq!(
            got,
            vec![
                (1, 18, "params.schema".to_string()),
                (4, 13, "params.d".to_string()),
                (5, 13, "params['e']".to_string()),
                (8, 49, "params.n | int".to_string()),
            ]
        );
        // The positions point at the expression.
        for (line, col, expr) in &got {
            let l = src.lines().nth(line - 1).unwrap();
            let at: String = l.chars().skip(col - 1).take(expr.chars().count()).collect();
            assert_eq!(&at, expr);
        }
        assert!(unquoted_param_outputs("no tags { here }").is_empty());
        assert!(unquoted_param_outputs("unclosed {{ params.x").is_empty());
    }

    #[test]
    fn renders_many_templates_in_parallel_quickly() {
        let r = Renderer::new();
        let v = vars();
        let src = "SELECT * FROM t WHERE ds = {{ ds | sql_literal }} AND name = {{ params.name | sql_literal }}\n";
        let started = std::time::Instant::now();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for i in 0..2_500 {
                        let name = format!("sql/t{i}.sql");
                        let out = r.render(&name, src, &v, Some(Dialect::Redshift)).unwrap();
                        assert!(out.ends_with("'O''Brien'\n"));
                    }
                });
            }
        });
        // Generous bound for unoptimised test builds on a shared machine.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn lint_never_panics_on_odd_input() {
        for src in [
            "{%☃",
            "{{☃",
            "{#☃",
            "{{ params.é }}",
            "{% raw %}{{ params.x }}",
            "{{- params.x -}}",
            "{{ 'params' }}{{",
            "}}{{params}}",
        ] {
            let _ = unquoted_param_outputs(src);
        }
        assert_eq!(
            unquoted_param_outputs("{{params}}"),
            vec![(1, 3, "params".to_string())]
        );
        assert_eq!(
            unquoted_param_outputs("é {{- params.x -}}"),
            vec![(1, 7, "params.x".to_string())]
        );
    }
}
