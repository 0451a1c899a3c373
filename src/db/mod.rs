//! Database connectors: run SQL scripts and parameterised queries against PostgreSQL, Redshift and
//! MySQL/MariaDB.
//!
//! The engine runs `sql` steps (scripts split by [`crate::sql::split_statements`]) and needs, from a
//! database, exactly four things: statements run in order, optionally all-or-nothing; an error that
//! names the failing statement, the server's code and its message; a deadline and a cancellation
//! token that stop the query *on the server* (not only the client future); and small parameterised
//! queries whose rows come back as JSON. [`DbClient`] provides them over one connection, with
//! [`postgres`] (tokio-postgres, also used for Redshift) and [`mysql`] (mysql_async) behind it.
//!
//! Rules shared by both drivers:
//! - **Every network wait is bounded**: connecting by the connect timeout; statements by the
//!   caller's deadline; cleanup after a failure (ROLLBACK) by [`CLEANUP_TIMEOUT`]; cleanup after a
//!   deadline or cancellation (server-side cancel, waiting for the query to stop, ROLLBACK) by
//!   [`INTERRUPT_BUDGET`], so `Timeout`/`Cancelled` return within about a second of the deadline.
//! - **A connection whose state is unknown is not reused**: when the cleanup above does not finish
//!   (the server did not stop the query, or ROLLBACK failed), or the connection closed, the client
//!   is marked unusable, its connection closed, and every later call returns [`DbError::Connect`]
//!   (retryable) asking to reconnect, instead of running statements inside a half-finished
//!   transaction.
//! - **Secrets never print**: connection errors show the URL through [`redact_url`] and have the
//!   password removed from the driver's message.
//! - **Results as JSON**: see [`DbClient::query`] for the type mapping.

pub mod mysql;
pub mod pg_binary;
pub mod pool;
pub mod postgres;

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::sql::StatementSource;

/// How long the cleanup after a statement failure (ROLLBACK) may take before the connection is
/// given up.
pub const CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the cleanup after a deadline or a cancellation (server-side cancel, waiting for the
/// query to stop, ROLLBACK) may take before the call returns anyway (and the client is marked
/// unusable).
pub const INTERRUPT_BUDGET: Duration = Duration::from_millis(900);

/// The kind of database a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Postgres,
    Redshift,
    MySql,
}

impl DbKind {
    /// Short lower-case name, as written in `cranium.yaml`.
    pub fn name(&self) -> &'static str {
        match self {
            DbKind::Postgres => "postgres",
            DbKind::Redshift => "redshift",
            DbKind::MySql => "mysql",
        }
    }
}

/// What went wrong talking to a database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Could not connect, or the connection is no longer usable (closed, or given up after a
    /// cleanup that did not finish). `target` is the URL with its password masked
    /// ([`redact_url`]); the message never contains the password.
    #[error("could not connect to {target}: {message}")]
    Connect { target: String, message: String },
    /// A statement failed: `statement` is its 0-based index in the script (for `query`/`execute`:
    /// 0; for the implicit `COMMIT` of a transactional script: the number of statements), `code`
    /// the SQLSTATE (PostgreSQL/Redshift) or MySQL error number, `message` the server's text
    /// verbatim. `code: None` means the connection failed during the statement (no server error).
    #[error("statement {statement} failed{}: {message}", fmt_code(.code))]
    Statement {
        statement: usize,
        code: Option<String>,
        message: String,
    },
    /// The deadline passed; the server-side query was cancelled and the transaction rolled back.
    /// `after` is the time from the start of the call to the deadline.
    #[error("timed out after {after:?}")]
    Timeout { after: Duration },
    /// The cancellation token fired; the server-side query was cancelled and the transaction
    /// rolled back.
    #[error("cancelled")]
    Cancelled,
    /// The script ran but was not committed: right before its `COMMIT` the caller said no
    /// (a step whose lease was not renewed in time); the transaction was rolled back.
    #[error(
        "not committed: the step's lease was not renewed in time (this process was paused or cut \
         off from the metadata store), so another runner may run it; the transaction was rolled \
         back and nothing was applied"
    )]
    NotCommitted,
    /// Anything else: a value that cannot be converted, a driver-side failure.
    #[error("{0}")]
    Other(String),
}

fn fmt_code(code: &Option<String>) -> String {
    match code {
        Some(c) => format!(" [{c}]"),
        None => String::new(),
    }
}

/// PostgreSQL/Redshift SQLSTATEs after which a retry may succeed.
const RETRYABLE_SQLSTATES: &[&str] = &[
    "40001", // serialization_failure
    "40P01", // deadlock_detected
    "55P03", // lock_not_available (lock_timeout)
    "53300", // too_many_connections
    "57P01", // admin_shutdown
    "57P02", // crash_shutdown
    "57P03", // cannot_connect_now
];

/// MySQL/MariaDB error numbers after which a retry may succeed.
const RETRYABLE_MYSQL_CODES: &[&str] = &[
    "1213", // ER_LOCK_DEADLOCK
    "1205", // ER_LOCK_WAIT_TIMEOUT
    "1040", // ER_CON_COUNT_ERROR (too many connections)
    "1203", // ER_TOO_MANY_USER_CONNECTIONS
    "1053", // ER_SERVER_SHUTDOWN
    "1927", // ER_CONNECTION_KILLED (MariaDB)
    "2002", // CR_CONNECTION_ERROR
    "2003", // CR_CONN_HOST_ERROR
    "2006", // CR_SERVER_GONE_ERROR
    "2013", // CR_SERVER_LOST
];

impl DbError {
    /// Whether a retry may help: connection errors (including a connection lost during a
    /// statement), serialization failures (40001), deadlocks (40P01, MySQL 1213), lock timeouts
    /// (55P03, MySQL 1205), too many connections (53300, MySQL 1040/1203), server shutdowns.
    /// User errors (syntax, missing table, constraint violations), timeouts, cancellations and
    /// conversion errors are not retryable here (the engine decides about timeouts itself).
    pub fn is_retryable(&self) -> bool {
        match self {
            DbError::Connect { .. } => true,
            DbError::Statement { code: None, .. } => true,
            DbError::Statement {
                code: Some(code), ..
            } => is_retryable_code(code),
            DbError::Timeout { .. }
            | DbError::Cancelled
            | DbError::NotCommitted
            | DbError::Other(_) => false,
        }
    }
}

/// Whether a SQLSTATE or MySQL error number names a transient condition (see
/// [`DbError::is_retryable`]). SQLSTATE class 08 (connection exception) is transient too.
pub fn is_retryable_code(code: &str) -> bool {
    code.starts_with("08")
        || RETRYABLE_SQLSTATES.contains(&code)
        || RETRYABLE_MYSQL_CODES.contains(&code)
}

/// What one statement of a script did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatementOutcome {
    /// Rows inserted, updated or deleted (for a `SELECT`: rows returned; for DDL: 0).
    pub rows_affected: u64,
}

/// One connection to a database.
pub enum DbClient {
    Postgres(postgres::PgClient),
    MySql(mysql::MyClient),
}

impl std::fmt::Debug for DbClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbClient::Postgres(c) => f.debug_tuple("Postgres").field(&c.kind()).finish(),
            DbClient::MySql(c) => f.debug_tuple("MySql").field(&c.connection_id()).finish(),
        }
    }
}

impl DbClient {
    /// Connect within `timeout`. URLs: `postgres://…` / `postgresql://…` for Postgres and
    /// Redshift, `mysql://…` for MySQL. MySQL sessions are set to `time_zone '+00:00'` and
    /// `utf8mb4`.
    pub async fn connect(kind: DbKind, url: &str, timeout: Duration) -> Result<DbClient, DbError> {
        match kind {
            DbKind::Postgres | DbKind::Redshift => postgres::PgClient::connect(kind, url, timeout)
                .await
                .map(DbClient::Postgres),
            DbKind::MySql => mysql::MyClient::connect(url, timeout)
                .await
                .map(DbClient::MySql),
        }
    }

    /// Whether the connection can take another call (not given up, not closed).
    pub fn is_usable(&self) -> bool {
        match self {
            DbClient::Postgres(c) => c.is_usable(),
            DbClient::MySql(c) => c.is_usable(),
        }
    }

    /// Back to a fresh session, for the next user of a pooled connection.
    pub async fn reset_session(&mut self) -> Result<(), DbError> {
        match self {
            DbClient::Postgres(c) => c.reset_session().await,
            DbClient::MySql(c) => c.reset_session().await,
        }
    }

    /// The kind of database this client talks to.
    pub fn kind(&self) -> DbKind {
        match self {
            DbClient::Postgres(c) => c.kind(),
            DbClient::MySql(_) => DbKind::MySql,
        }
    }

    /// Run the statements in order (their `text`), inside one transaction when `transaction`
    /// (BEGIN … COMMIT; ROLLBACK on any failure, so nothing is half-applied), returning rows
    /// affected per statement. PostgreSQL/Redshift statements go through the simple query
    /// protocol; MySQL ones through the text protocol. Stops at the first failure with
    /// [`DbError::Statement`]. When `deadline` passes or `cancel` fires, the running query is
    /// cancelled on the server, the transaction rolled back, and `Timeout`/`Cancelled` returned.
    ///
    /// On MySQL, DDL (`CREATE`, `ALTER`, `DROP`, `TRUNCATE`, …) commits implicitly, so only DML is
    /// covered by the transaction there.
    pub async fn run_script(
        &mut self,
        statements: &[StatementSource],
        transaction: bool,
        deadline: Option<Instant>,
        cancel: &CancellationToken,
    ) -> Result<Vec<StatementOutcome>, DbError> {
        let texts: Vec<&str> = statements.iter().map(|s| s.text.as_str()).collect();
        self.run_texts(&texts, transaction, deadline, cancel).await
    }

    /// [`DbClient::run_script`], asking `commit_ok` right before the `COMMIT` of a
    /// transactional script: when it says no, the transaction is rolled back and nothing is
    /// applied ([`DbError::NotCommitted`]).
    pub async fn run_script_guarded(
        &mut self,
        statements: &[StatementSource],
        transaction: bool,
        deadline: Option<Instant>,
        cancel: &CancellationToken,
        commit_ok: &(dyn Fn() -> bool + Sync),
    ) -> Result<Vec<StatementOutcome>, DbError> {
        let texts: Vec<&str> = statements.iter().map(|s| s.text.as_str()).collect();
        match self {
            DbClient::Postgres(c) => {
                c.run_script(&texts, transaction, deadline, cancel, commit_ok)
                    .await
            }
            DbClient::MySql(c) => {
                c.run_script(&texts, transaction, deadline, cancel, commit_ok)
                    .await
            }
        }
    }

    /// [`DbClient::run_script`] over plain statement texts.
    pub async fn run_texts(
        &mut self,
        statements: &[&str],
        transaction: bool,
        deadline: Option<Instant>,
        cancel: &CancellationToken,
    ) -> Result<Vec<StatementOutcome>, DbError> {
        match self {
            DbClient::Postgres(c) => {
                c.run_script(statements, transaction, deadline, cancel, &|| true)
                    .await
            }
            DbClient::MySql(c) => {
                c.run_script(statements, transaction, deadline, cancel, &|| true)
                    .await
            }
        }
    }

    /// A query with bound parameters (`$1`.. for Postgres/Redshift, `?` for MySQL), rows as JSON
    /// objects (column name → value; a repeated column name keeps the last value).
    ///
    /// Parameters: `null`, booleans, integers (PostgreSQL `int8`), other numbers (`float8`) and
    /// strings (`text`; cast in the SQL, e.g. `$1::timestamptz`); arrays and objects are bound as
    /// their JSON text. On PostgreSQL a `null` is bound as `text` too.
    ///
    /// Values: integers as numbers; floats as numbers (NaN and infinities as the strings `NaN`,
    /// `Infinity`, `-Infinity`); numeric/decimal as strings (exact); booleans (MySQL `TINYINT(1)`
    /// holding 0 or 1 too); text, enums, `time` as strings; `timestamptz` and MySQL `TIMESTAMP` as
    /// RFC 3339 in UTC (`2026-01-02T03:04:05Z`, with fractional seconds when non-zero); PostgreSQL
    /// `timestamp` and MySQL `DATETIME` (no time zone) as `YYYY-MM-DDTHH:MM:SS[.ffffff]` without an
    /// offset; dates as `YYYY-MM-DD`; `json`/`jsonb`/MySQL `JSON` as JSON (MariaDB's `JSON` is a
    /// `LONGTEXT` alias the protocol does not mark, so it arrives as a string); `bytea` and binary
    /// strings/blobs as base64; `uuid` as text; one-dimensional PostgreSQL arrays as JSON arrays.
    /// Other types (e.g. `interval`) give [`DbError::Other`] asking for a cast to text.
    pub async fn query(
        &mut self,
        sql: &str,
        params: &[serde_json::Value],
        deadline: Option<Instant>,
        cancel: &CancellationToken,
    ) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, DbError> {
        match self {
            DbClient::Postgres(c) => c.query(sql, params, deadline, cancel).await,
            DbClient::MySql(c) => c.query(sql, params, deadline, cancel).await,
        }
    }

    /// A statement with bound parameters (as in [`DbClient::query`]), returning rows affected.
    pub async fn execute(
        &mut self,
        sql: &str,
        params: &[serde_json::Value],
        deadline: Option<Instant>,
        cancel: &CancellationToken,
    ) -> Result<u64, DbError> {
        match self {
            DbClient::Postgres(c) => c.execute(sql, params, deadline, cancel).await,
            DbClient::MySql(c) => c.execute(sql, params, deadline, cancel).await,
        }
    }
}

/// Mask the password in a URL for messages: `postgres://u:secret@h/db` → `postgres://u:***@h/db`;
/// a `password=` query parameter is masked too. Strings that are not URLs are returned unchanged.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest_start = scheme_end + 3;
    let rest = &url[rest_start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..rest_start]);
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..colon]);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let tail = &rest[authority_end..];
    match tail.find('?') {
        Some(q) => {
            out.push_str(&tail[..=q]);
            let (query, fragment) = match tail[q + 1..].find('#') {
                Some(h) => (&tail[q + 1..q + 1 + h], &tail[q + 1 + h..]),
                None => (&tail[q + 1..], ""),
            };
            let parts: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_string(),
                })
                .collect();
            out.push_str(&parts.join("&"));
            out.push_str(fragment);
        }
        None => out.push_str(tail),
    }
    out
}

/// The password of a URL (userinfo or `password=` parameter), raw and percent-decoded, to scrub
/// it from driver messages.
pub(crate) fn url_secrets(url: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        if let Some(at) = authority.rfind('@') {
            if let Some((_, pw)) = authority[..at].split_once(':') {
                secrets.push(pw.to_string());
            }
        }
        if let Some(q) = rest[authority_end..].find('?') {
            let query = &rest[authority_end + q + 1..];
            let query = query.split('#').next().unwrap_or("");
            for kv in query.split('&') {
                if let Some((k, v)) = kv.split_once('=') {
                    if k.eq_ignore_ascii_case("password") {
                        secrets.push(v.to_string());
                    }
                }
            }
        }
    }
    let decoded: Vec<String> = secrets.iter().map(|s| percent_decode(s)).collect();
    secrets.extend(decoded);
    secrets.retain(|s| !s.is_empty());
    secrets.sort();
    secrets.dedup();
    // Longest first, so a secret containing another is replaced whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A connect error for `url`: the URL redacted, the password scrubbed from `message`.
pub(crate) fn connect_error(url: &str, message: impl Into<String>) -> DbError {
    let mut message = message.into();
    for secret in url_secrets(url) {
        message = message.replace(&secret, "***");
    }
    DbError::Connect {
        target: redact_url(url),
        message,
    }
}

/// Why a running operation was interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interrupt {
    Timeout,
    Cancelled,
}

impl Interrupt {
    /// The error to return; `started` is when the call began.
    pub(crate) fn error(self, started: Instant, deadline: Option<Instant>) -> DbError {
        match self {
            Interrupt::Cancelled => DbError::Cancelled,
            Interrupt::Timeout => DbError::Timeout {
                after: deadline
                    .map(|d| d.saturating_duration_since(started))
                    .unwrap_or_default(),
            },
        }
    }
}

/// Whether the deadline has passed or the token fired already (checked before sending anything).
pub(crate) fn already_interrupted(
    deadline: Option<Instant>,
    cancel: &CancellationToken,
) -> Option<Interrupt> {
    if cancel.is_cancelled() {
        Some(Interrupt::Cancelled)
    } else if deadline.is_some_and(|d| Instant::now() >= d) {
        Some(Interrupt::Timeout)
    } else {
        None
    }
}

/// Resolves when the deadline passes or the token fires.
pub(crate) async fn interrupted(
    deadline: Option<Instant>,
    cancel: &CancellationToken,
) -> Interrupt {
    let sleep = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Interrupt::Cancelled,
        _ = sleep => Interrupt::Timeout,
    }
}

/// The error for calls on a client that was given up or whose connection closed: a `Connect`
/// error (retryable: a new connection is what helps).
pub(crate) fn unusable(target: &str, reason: &str) -> DbError {
    DbError::Connect {
        target: target.to_string(),
        message: format!("the connection is no longer usable ({reason}); reconnect"),
    }
}

/// Standard base64 (RFC 4648, with padding).
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let idx = |shift: u32| char::from(ALPHABET[((n >> shift) & 63) as usize]);
        out.push(idx(18));
        out.push(idx(12));
        out.push(if chunk.len() > 1 { idx(6) } else { '=' });
        out.push(if chunk.len() > 2 { idx(0) } else { '=' });
    }
    out
}

/// A float as JSON: a number, or the string `NaN`/`Infinity`/`-Infinity` (JSON has no such
/// numbers).
pub(crate) fn float_json(f: f64) -> serde_json::Value {
    match serde_json::Number::from_f64(f) {
        Some(n) => serde_json::Value::Number(n),
        None if f.is_nan() => serde_json::Value::String("NaN".into()),
        None if f > 0.0 => serde_json::Value::String("Infinity".into()),
        None => serde_json::Value::String("-Infinity".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("mysql://u@h/db"), "mysql://u@h/db");
        assert_eq!(
            redact_url("postgres://h/db?user=u&password=pw&sslmode=disable"),
            "postgres://h/db?user=u&password=***&sslmode=disable"
        );
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(
            redact_url("postgres://u:p@ss@h/db"),
            "postgres://u:***@h/db"
        );
    }

    #[test]
    fn secrets_are_decoded() {
        assert_eq!(
            url_secrets("postgres://u:p%40ss@h/db"),
            vec!["p%40ss".to_string(), "p@ss".to_string()]
        );
    }

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xde, 0xad, 0xbe, 0xef]), "3q2+7w==");
    }
}
