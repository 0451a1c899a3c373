//! The PostgreSQL and Redshift connector, over tokio-postgres.
//!
//! Redshift speaks the PostgreSQL wire protocol but lacks parts of it, which shapes this module:
//! script statements go through the *simple* query protocol (Redshift needs it for `COPY`,
//! `UNLOAD` and some DDL, and it runs any statement text as written), and parameterised queries use
//! `query_typed`/`execute_typed` with explicit parameter types (TEXT, INT8, FLOAT8, BOOL), so
//! tokio-postgres never looks parameter types up in `pg_type` (Redshift's catalog answers those
//! lookups differently). Result values are decoded from the binary format by [`Cell`], which
//! accepts every type and maps it to JSON (see [`super::DbClient::query`]).
//!
//! Deadlines and cancellation send a real cancel request (`CancelToken::cancel_query`, a separate
//! connection to the server) and then wait for the query to end with `57014 query_canceled`, so the
//! server is not left running it.

use std::error::Error as StdError;
use std::fmt::Write as _;
use std::future::Future;

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat, Utc};
use futures::StreamExt;
use serde_json::{Map, Value as J};
use tokio::time::{timeout_at, Instant};
use tokio_postgres::types::{FromSql, Kind, ToSql, Type};
use tokio_postgres::{CancelToken, Client, NoTls, Row, SimpleQueryMessage};
use tokio_util::sync::CancellationToken;

use super::{
    already_interrupted, base64, connect_error, float_json, interrupted, unusable, DbError, DbKind,
    Interrupt, StatementOutcome, CLEANUP_TIMEOUT, INTERRUPT_BUDGET,
};

type BoxError = Box<dyn StdError + Sync + Send>;

/// One PostgreSQL or Redshift connection.
pub struct PgClient {
    kind: DbKind,
    /// The URL with its password masked, for errors.
    target: String,
    client: Client,
    /// Boxed: it holds the whole socket configuration, and `DbClient` variants stay small.
    cancel_token: Box<CancelToken>,
    /// The task driving the connection; aborted (closing the socket) when the client is given up.
    task: tokio::task::JoinHandle<()>,
    /// Why the client was given up, if it was.
    broken: Option<String>,
}

/// The end of an operation run under a deadline and a cancellation token.
enum Guarded<T> {
    Done(Result<T, tokio_postgres::Error>),
    Interrupted {
        why: Interrupt,
        /// Whether the cancel request reached the server and the query then ended.
        stopped: bool,
        /// Until when the cleanup may run.
        budget_end: Instant,
    },
}

impl PgClient {
    /// Connect within `timeout` (see [`super::DbClient::connect`]).
    pub async fn connect(
        kind: DbKind,
        url: &str,
        timeout: std::time::Duration,
    ) -> Result<PgClient, DbError> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(connect_error(
                url,
                "expected a postgres:// or postgresql:// URL",
            ));
        }
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| connect_error(url, format!("invalid URL: {e}")))?;
        config.connect_timeout(timeout);
        config.application_name("cranium");
        // TLS: local servers are reached without TLS. For a real Redshift cluster pass a
        // `MakeTlsConnect` (tokio-postgres-rustls or postgres-native-tls) here and to
        // `cancel_query` below, chosen by the URL's `sslmode`.
        let connected = tokio::time::timeout(timeout, config.connect(NoTls)).await;
        let (client, connection) = match connected {
            Err(_) => {
                return Err(connect_error(url, format!("timed out after {timeout:?}")));
            }
            Ok(Err(e)) => return Err(connect_error(url, error_text(&e))),
            Ok(Ok(pair)) => pair,
        };
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "postgres connection ended with an error");
            }
        });
        let cancel_token = Box::new(client.cancel_token());
        Ok(PgClient {
            kind,
            target: super::redact_url(url),
            client,
            cancel_token,
            task,
            broken: None,
        })
    }

    /// Postgres or Redshift.
    pub fn kind(&self) -> DbKind {
        self.kind
    }

    fn usable(&self) -> Result<(), DbError> {
        match &self.broken {
            Some(reason) => Err(unusable(&self.target, reason)),
            None if self.client.is_closed() => Err(unusable(&self.target, "connection closed")),
            None => Ok(()),
        }
    }

    /// Whether the connection can take another call (not given up, not closed).
    pub fn is_usable(&self) -> bool {
        self.usable().is_ok()
    }

    /// Puts a pooled connection back to a fresh session (`DISCARD ALL`; `RESET ALL` on Redshift,
    /// which has no DISCARD): what one step set (search_path, time zone, temporary tables,
    /// prepared statements) does not leak into the next. A failure gives the connection up.
    pub async fn reset_session(&mut self) -> Result<(), DbError> {
        self.usable()?;
        let sql = match self.kind {
            DbKind::Redshift => "RESET ALL",
            _ => "DISCARD ALL",
        };
        match tokio::time::timeout(super::CLEANUP_TIMEOUT, self.client.batch_execute(sql)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.give_up("resetting the session failed");
                Err(unusable(
                    &self.target,
                    &format!("{sql} failed: {}", error_text(&e)),
                ))
            }
            Err(_) => {
                self.give_up("resetting the session timed out");
                Err(unusable(&self.target, "resetting the session timed out"))
            }
        }
    }

    fn give_up(&mut self, reason: &str) {
        tracing::warn!(reason, "giving up a postgres connection");
        self.broken = Some(reason.to_string());
        self.task.abort();
    }

    /// Run `fut` until it ends, the deadline passes or the token fires; on an interrupt, cancel the
    /// query on the server and wait (within [`INTERRUPT_BUDGET`]) for it to end.
    async fn guard<T>(
        cancel_token: &CancelToken,
        fut: impl Future<Output = Result<T, tokio_postgres::Error>>,
        deadline: Option<Instant>,
        cancel: &CancellationToken,
    ) -> Guarded<T> {
        let mut fut = std::pin::pin!(fut);
        let why = tokio::select! {
            biased;
            r = &mut fut => return Guarded::Done(r),
            why = interrupted(deadline, cancel) => why,
        };
        let budget_end = Instant::now() + INTERRUPT_BUDGET;
        let sent = matches!(
            timeout_at(budget_end, cancel_token.cancel_query(NoTls)).await,
            Ok(Ok(()))
        );
        let stopped = sent && timeout_at(budget_end, &mut fut).await.is_ok();
        Guarded::Interrupted {
            why,
            stopped,
            budget_end,
        }
    }

    /// The start of a call: the connection is usable and neither the deadline nor the token has
    /// already stopped it. Returns when the call started.
    fn ready(
        &self,
        deadline: Option<Instant>,
        cancel: &CancellationToken,
    ) -> Result<Instant, DbError> {
        self.usable()?;
        let started = Instant::now();
        match already_interrupted(deadline, cancel) {
            Some(why) => Err(why.error(started, deadline)),
            None => Ok(started),
        }
    }

    /// A guarded call's result: its value, its statement error, or (after the cleanup) the interrupt.
    async fn finish<T>(
        &mut self,
        outcome: Guarded<T>,
        started: Instant,
        deadline: Option<Instant>,
        in_transaction: bool,
    ) -> Result<T, DbError> {
        match outcome {
            Guarded::Done(Ok(v)) => Ok(v),
            Guarded::Done(Err(e)) => Err(statement_error(0, &e)),
            Guarded::Interrupted {
                why,
                stopped,
                budget_end,
            } => {
                self.after_interrupt(stopped, budget_end, in_transaction)
                    .await;
                Err(why.error(started, deadline))
            }
        }
    }

    /// After an interrupt: roll back (when in a transaction) or give the connection up.
    async fn after_interrupt(&mut self, stopped: bool, budget_end: Instant, in_transaction: bool) {
        if !stopped {
            self.give_up("a query cancelled by a deadline or cancellation did not stop in time");
        } else if in_transaction {
            self.rollback(budget_end).await;
        }
    }

    async fn rollback(&mut self, until: Instant) {
        match timeout_at(until, self.client.simple_query("ROLLBACK")).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => self.give_up(&format!("ROLLBACK failed: {}", error_text(&e))),
            Err(_) => self.give_up("ROLLBACK did not finish in time"),
        }
    }

    /// One statement through the simple query protocol; rolls back on failure when
    /// `in_transaction`.
    async fn simple(
        &mut self,
        index: usize,
        text: &str,
        in_transaction: bool,
        started: Instant,
        deadline: Option<Instant>,
        cancel: &CancellationToken,
    ) -> Result<u64, DbError> {
        if let Some(why) = already_interrupted(deadline, cancel) {
            if in_transaction {
                self.rollback(Instant::now() + INTERRUPT_BUDGET).await;
            }
            return Err(why.error(started, deadline));
        }
        let client = &self.client;
        let fut = async move {
            let stream = client.simple_query_raw(text).await?;
            let mut stream = std::pin::pin!(stream);
            let mut affected = 0u64;
            while let Some(message) = stream.next().await {
                if let SimpleQueryMessage::CommandComplete(n) = message? {
                    affected = affected.saturating_add(n);
                }
            }
            Ok(affected)
        };
        match Self::guard(&self.cancel_token, fut, deadline, cancel).await {
            Guarded::Done(Ok(n)) => Ok(n),
            Guarded::Done(Err(e)) => {
                let err = statement_error(index, &e);
                if self.client.is_closed() {
                    self.give_up("the connection closed during a statement");
                } else if in_transaction {
                    self.rollback(Instant::now() + CLEANUP_TIMEOUT).await;
                }
                Err(err)
            }
            interrupted @ Guarded::Interrupted { .. } => {
                self.finish(interrupted, started, deadline, in_transaction)
                    .await
            }
        }
    }

    /// One statement through the simple query protocol (`BEGIN`, DDL, `COMMIT`); when
    /// `in_transaction`, a failure rolls the transaction back. Returns the rows affected.
    pub async fn statement(
        &mut self,
        text: &str,
        in_transaction: bool,
        deadline: Option<Instant>,
        cancel: &CancellationToken,
    ) -> Result<u64, DbError> {
        self.usable()?;
        self.simple(0, text, in_transaction, Instant::now(), deadline, cancel)
            .await
    }

    /// The rows of one query through the simple query protocol, as text (what Redshift answers without
    /// type lookups).
    pub async fn simple_rows(
        &mut self,
        sql: &str,
        deadline: Option<Instant>,
        cancel: &CancellationToken,
    ) -> Result<Vec<Vec<Option<String>>>, DbError> {
        let started = self.ready(deadline, cancel)?;
        let client = &self.client;
        let fut = async move {
            let mut rows = Vec::new();
            for m in client.simple_query(sql).await? {
                if let SimpleQueryMessage::Row(r) = m {
                    rows.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
                }
            }
            Ok(rows)
        };
        let outcome = Self::guard(&self.cancel_token, fut, deadline, cancel).await;
        self.finish(outcome, started, deadline, false).await
    }

    /// `COPY … FROM STDIN` (`sql`) fed with what arrives on `data` until it closes, inside an open
    /// transaction: a failure rolls the transaction back. Returns the rows copied.
    pub async fn copy_in(
        &mut self,
        sql: &str,
        mut data: tokio::sync::mpsc::Receiver<bytes::Bytes>,
        deadline: Option<Instant>,
        cancel: &CancellationToken,
    ) -> Result<u64, DbError> {
        use futures::SinkExt;
        self.usable()?;
        let started = Instant::now();
        if let Some(why) = already_interrupted(deadline, cancel) {
            self.rollback(Instant::now() + INTERRUPT_BUDGET).await;
            return Err(why.error(started, deadline));
        }
        let client = &self.client;
        let fut = async move {
            let sink = client.copy_in::<_, bytes::Bytes>(sql).await?;
            let mut sink = std::pin::pin!(sink);
            while let Some(chunk) = data.recv().await {
                sink.send(chunk).await?;
            }
            sink.as_mut().finish().await
        };
        match Self::guard(&self.cancel_token, fut, deadline, cancel).await {
            Guarded::Done(Ok(n)) => Ok(n),
            Guarded::Done(Err(e)) => {
                let err = statement_error(0, &e);
                if self.client.is_closed() {
                    self.give_up("the connection closed during a COPY");
                } else {
                    self.rollback(Instant::now() + CLEANUP_TIMEOUT).await;
                }
                Err(err)
            }
            interrupted @ Guarded::Interrupted { .. } => {
                self.finish(interrupted, started, deadline, true).await
            }
        }
    }

    /// `COPY (…) TO STDOUT` (`sql`): each line of the output (without its newline) handed to `each`
    /// as it arrives, never holding the result. Returns the bytes received.
    pub async fn copy_out<F>(
        &mut self,
        sql: &str,
        deadline: Option<Instant>,
        cancel: &CancellationToken,
        mut each: F,
    ) -> Result<u64, DbError>
    where
        F: FnMut(&[u8]) + Send,
    {
        use futures::StreamExt;
        let started = self.ready(deadline, cancel)?;
        let client = &self.client;
        let fut = async move {
            let stream = client.copy_out(sql).await?;
            let mut stream = std::pin::pin!(stream);
            let (mut bytes, mut partial) = (0u64, Vec::new());
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                bytes += chunk.len() as u64;
                // The server sends one row per message; a row split over messages is joined here.
                let mut rest: &[u8] = &chunk;
                while let Some(end) = rest.iter().position(|b| *b == b'\n') {
                    if partial.is_empty() {
                        each(&rest[..end]);
                    } else {
                        partial.extend_from_slice(&rest[..end]);
                        each(&partial);
                        partial.clear();
                    }
                    rest = &rest[end + 1..];
                }
                partial.extend_from_slice(rest);
            }
            if !partial.is_empty() {
                each(&partial);
            }
            Ok(bytes)
        };
        match Self::guard(&self.cancel_token, fut, deadline, cancel).await {
            Guarded::Done(Ok(n)) => Ok(n),
            Guarded::Done(Err(e)) => {
                if self.client.is_closed() {
                    self.give_up("the connection closed during a COPY");
                }
                Err(statement_error(0, &e))
            }
            interrupted @ Guarded::Interrupted { .. } => {
                self.finish(interrupted, started, deadline, false).await
            }
        }
    }

    /// The columns of table `name` (`schema.table`, or `table` in `public`): names and data types, in
    /// order; empty when there is no such table.
    pub async fn columns(
        &mut self,
        name: &str,
        deadline: Option<Instant>,
        cancel: &CancellationToken,
    ) -> Result<Vec<(String, String)>, DbError> {
        let (schema, table) = schema_and_table(name);
        let rows = self
            .query(
                "SELECT column_name::text AS c, data_type::text AS t FROM information_schema.columns \
                 WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
                &[schema.into(), table.into()],
                deadline,
                cancel,
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let c = r.get("c")?.as_str()?.to_string();
                let t = r.get("t")?.as_str()?.to_string();
                Some((c, t))
            })
            .collect())
    }

    /// The rows of `sql` through a cursor (`DECLARE … CURSOR FOR`, `FETCH FORWARD n`) over the simple
    /// query protocol, `batch` rows at a time, each row's text values handed to `each`: how Redshift,
    /// which has no `COPY … TO STDOUT`, streams a result. Needs an open transaction. Returns the bytes
    /// of the values received.
    pub async fn cursor_rows<F>(
        &mut self,
        sql: &str,
        batch: usize,
        deadline: Option<Instant>,
        cancel: &CancellationToken,
        mut each: F,
    ) -> Result<u64, DbError>
    where
        F: FnMut(&[Option<&str>]) + Send,
    {
        let started = self.ready(deadline, cancel)?;
        let client = &self.client;
        let fut = async move {
            client
                .simple_query(&format!("DECLARE cranium_rows CURSOR FOR {sql}"))
                .await?;
            let mut bytes = 0u64;
            loop {
                let messages = client
                    .simple_query(&format!("FETCH FORWARD {batch} FROM cranium_rows"))
                    .await?;
                let mut n = 0;
                for m in &messages {
                    if let SimpleQueryMessage::Row(r) = m {
                        n += 1;
                        let fields: Vec<Option<&str>> = (0..r.len()).map(|i| r.get(i)).collect();
                        bytes += fields
                            .iter()
                            .flatten()
                            .map(|f| f.len() as u64 + 1)
                            .sum::<u64>();
                        each(&fields);
                    }
                }
                if n < batch {
                    break;
                }
            }
            client.simple_query("CLOSE cranium_rows").await?;
            Ok(bytes)
        };
        let outcome = Self::guard(&self.cancel_token, fut, deadline, cancel).await;
        self.finish(outcome, started, deadline, true).await
    }

    /// See [`super::DbClient::run_script`].
    pub async fn run_script(
        &mut self,
        statements: &[&str],
        transaction: bool,
        deadline: Option<Instant>,
        cancel: &CancellationToken,
        commit_ok: &(dyn Fn() -> bool + Sync),
    ) -> Result<Vec<StatementOutcome>, DbError> {
        self.usable()?;
        let started = Instant::now();
        if transaction {
            self.simple(0, "BEGIN", false, started, deadline, cancel)
                .await?;
        }
        let mut outcomes = Vec::with_capacity(statements.len());
        for (index, text) in statements.iter().enumerate() {
            let rows_affected = self
                .simple(index, text, transaction, started, deadline, cancel)
                .await?;
            outcomes.push(StatementOutcome { rows_affected });
        }
        if transaction && !commit_ok() {
            self.simple(
                statements.len(),
                "ROLLBACK",
                true,
                started,
                deadline,
                cancel,
            )
            .await?;
            return Err(DbError::NotCommitted);
        }
        if transaction {
            self.simple(statements.len(), "COMMIT", true, started, deadline, cancel)
                .await?;
        }
        Ok(outcomes)
    }

    /// See [`super::DbClient::query`].
    pub async fn query(
        &mut self,
        sql: &str,
        params: &[J],
        deadline: Option<Instant>,
        cancel: &CancellationToken,
    ) -> Result<Vec<Map<String, J>>, DbError> {
        match self.typed(Op::Query, sql, params, deadline, cancel).await? {
            OpResult::Rows(rows) => rows.iter().map(row_to_json).collect(),
            OpResult::Count(_) => Ok(Vec::new()),
        }
    }

    /// See [`super::DbClient::execute`].
    pub async fn execute(
        &mut self,
        sql: &str,
        params: &[J],
        deadline: Option<Instant>,
        cancel: &CancellationToken,
    ) -> Result<u64, DbError> {
        match self
            .typed(Op::Execute, sql, params, deadline, cancel)
            .await?
        {
            OpResult::Rows(rows) => Ok(rows.len() as u64),
            OpResult::Count(n) => Ok(n),
        }
    }

    /// Run a parameterised query or statement under the deadline and the token.
    async fn typed(
        &mut self,
        op: Op,
        sql: &str,
        params: &[J],
        deadline: Option<Instant>,
        cancel: &CancellationToken,
    ) -> Result<OpResult, DbError> {
        let started = self.ready(deadline, cancel)?;
        let owned = bind_params(params);
        let refs: Vec<(&(dyn ToSql + Sync), Type)> = owned
            .iter()
            .map(|(v, t)| (v.as_ref() as &(dyn ToSql + Sync), t.clone()))
            .collect();
        let client = &self.client;
        let fut = async {
            match op {
                Op::Query => client.query_typed(sql, &refs).await.map(OpResult::Rows),
                Op::Execute => client.execute_typed(sql, &refs).await.map(OpResult::Count),
            }
        };
        let outcome = Self::guard(&self.cancel_token, fut, deadline, cancel).await;
        self.finish(outcome, started, deadline, false).await
    }
}

#[derive(Clone, Copy)]
enum Op {
    Query,
    Execute,
}

enum OpResult {
    Rows(Vec<Row>),
    Count(u64),
}

/// Owned parameters with their declared types: strings and nulls as TEXT, integers as INT8,
/// other numbers as FLOAT8, booleans as BOOL, arrays and objects as their JSON text.
fn bind_params(params: &[J]) -> Vec<(Box<dyn ToSql + Sync + Send>, Type)> {
    params
        .iter()
        .map(|p| -> (Box<dyn ToSql + Sync + Send>, Type) {
            match p {
                J::Null => (Box::new(None::<String>), Type::TEXT),
                J::Bool(b) => (Box::new(*b), Type::BOOL),
                J::Number(n) => match (n.as_i64(), n.as_f64()) {
                    (Some(i), _) => (Box::new(i), Type::INT8),
                    // Beyond i64 (u64) or not an integer.
                    (None, _) if n.is_u64() => (Box::new(n.to_string()), Type::TEXT),
                    (None, Some(f)) => (Box::new(f), Type::FLOAT8),
                    (None, None) => (Box::new(n.to_string()), Type::TEXT),
                },
                J::String(s) => (Box::new(s.clone()), Type::TEXT),
                other => (Box::new(other.to_string()), Type::TEXT),
            }
        })
        .collect()
}

/// The text of a tokio-postgres error (kind and cause).
fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

/// A failed statement: the server's SQLSTATE and message; `code: None` for a lost connection.
fn statement_error(index: usize, e: &tokio_postgres::Error) -> DbError {
    if let Some(db) = e.as_db_error() {
        return DbError::Statement {
            statement: index,
            code: Some(db.code().code().to_string()),
            message: db.message().to_string(),
        };
    }
    let io = StdError::source(e).is_some_and(|s| s.is::<std::io::Error>());
    if e.is_closed() || io {
        DbError::Statement {
            statement: index,
            code: None,
            message: e.to_string(),
        }
    } else {
        DbError::Other(format!("statement {index}: {e}"))
    }
}

/// A row as a JSON object.
fn row_to_json(row: &Row) -> Result<Map<String, J>, DbError> {
    let mut map = Map::new();
    for (i, column) in row.columns().iter().enumerate() {
        let cell: Cell = row.try_get(i).map_err(|e| {
            let cause = StdError::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_else(|| e.to_string());
            DbError::Other(format!(
                "column `{}` (type {}): {cause}",
                column.name(),
                column.type_()
            ))
        })?;
        map.insert(column.name().to_string(), cell.0);
    }
    Ok(map)
}

/// One value decoded from the binary format into JSON; accepts every type (and fails at decoding
/// for the ones it does not convert).
struct Cell(J);

impl<'a> FromSql<'a> for Cell {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        decode(ty, raw).map(Cell)
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Cell(J::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

fn decode(ty: &Type, raw: &[u8]) -> Result<J, BoxError> {
    Ok(match *ty {
        Type::BOOL => J::Bool(bool::from_sql(ty, raw)?),
        Type::INT2 => J::from(i16::from_sql(ty, raw)?),
        Type::INT4 => J::from(i32::from_sql(ty, raw)?),
        Type::INT8 => J::from(i64::from_sql(ty, raw)?),
        Type::OID => J::from(u32::from_sql(ty, raw)?),
        Type::CHAR => J::String(char::from(i8::from_sql(ty, raw)?.to_ne_bytes()[0]).to_string()),
        // Through the shortest decimal text, so 0.1::float4 reads 0.1, not 0.10000000149.
        Type::FLOAT4 => {
            let f = f32::from_sql(ty, raw)?;
            float_json(f.to_string().parse::<f64>().unwrap_or(f64::from(f)))
        }
        Type::FLOAT8 => float_json(f64::from_sql(ty, raw)?),
        Type::NUMERIC => J::String(numeric_text(raw)?),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
            J::String(String::from_sql(ty, raw)?)
        }
        Type::TIMESTAMPTZ => J::String(
            DateTime::<Utc>::from_sql(ty, raw)?.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        ),
        Type::TIMESTAMP => J::String(
            NaiveDateTime::from_sql(ty, raw)?
                .format("%Y-%m-%dT%H:%M:%S%.f")
                .to_string(),
        ),
        Type::DATE => J::String(NaiveDate::from_sql(ty, raw)?.format("%Y-%m-%d").to_string()),
        Type::TIME => J::String(
            NaiveTime::from_sql(ty, raw)?
                .format("%H:%M:%S%.f")
                .to_string(),
        ),
        Type::JSON | Type::JSONB => J::from_sql(ty, raw)?,
        Type::BYTEA => J::String(base64(raw)),
        Type::UUID => J::String(uuid_text(raw)?),
        _ => match ty.kind() {
            Kind::Enum(_) => J::String(std::str::from_utf8(raw)?.to_string()),
            Kind::Domain(inner) => decode(inner, raw)?,
            Kind::Array(_) => {
                let items: Vec<Option<Cell>> = FromSql::from_sql(ty, raw)?;
                J::Array(
                    items
                        .into_iter()
                        .map(|c| c.map_or(J::Null, |c| c.0))
                        .collect(),
                )
            }
            _ if matches!(ty.name(), "citext" | "ltree" | "lquery") => {
                J::String(String::from_sql(ty, raw)?)
            }
            _ => {
                return Err(format!(
                    "type `{}` is not converted to JSON; cast it to text in the query (`::text`)",
                    ty.name()
                )
                .into())
            }
        },
    })
}

/// The exact decimal text of a binary `numeric` (base-10000 digits, weight, sign, display scale).
fn numeric_text(raw: &[u8]) -> Result<String, BoxError> {
    let word = |i: usize| -> Result<u16, BoxError> {
        match raw.get(2 * i..2 * i + 2) {
            Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
            None => Err("truncated numeric value".into()),
        }
    };
    let ndigits = usize::from(word(0)?);
    let weight = i64::from(word(1)? as i16);
    let sign = word(2)?;
    let dscale = usize::from(word(3)?);
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        0x0000 | 0x4000 => {}
        _ => return Err(format!("invalid numeric sign {sign:#x}").into()),
    }
    if raw.len() != 8 + 2 * ndigits {
        return Err("invalid numeric length".into());
    }
    let digits: Vec<u16> = (0..ndigits)
        .map(|i| word(4 + i))
        .collect::<Result<_, _>>()?;
    let digit = |i: i64| -> u16 {
        usize::try_from(i)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for i in 0..=weight {
            if i == 0 {
                let _ = write!(out, "{}", digit(i));
            } else {
                let _ = write!(out, "{:04}", digit(i));
            }
        }
    }
    if dscale > 0 {
        let mut frac = String::new();
        let mut i = weight + 1;
        while frac.len() < dscale {
            let _ = write!(frac, "{:04}", digit(i));
            i += 1;
        }
        frac.truncate(dscale);
        out.push('.');
        out.push_str(&frac);
    }
    Ok(out)
}

fn uuid_text(raw: &[u8]) -> Result<String, BoxError> {
    if raw.len() != 16 {
        return Err("invalid uuid length".into());
    }
    let mut out = String::with_capacity(36);
    for (i, b) in raw.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        let _ = write!(out, "{b:02x}");
    }
    Ok(out)
}

/// `schema.table` → (`schema`, `table`); `table` → (`public`, `table`).
pub fn schema_and_table(name: &str) -> (&str, &str) {
    name.split_once('.').unwrap_or(("public", name))
}

/// A text value written as one field of PostgreSQL's COPY text format (`None`: `\N`).
pub fn copy_escape(value: Option<&str>, out: &mut Vec<u8>) {
    let Some(v) = value else {
        out.extend_from_slice(b"\\N");
        return;
    };
    for b in v.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(ndigits: u16, weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [ndigits, weight as u16, sign, dscale] {
            v.extend_from_slice(&w.to_be_bytes());
        }
        for d in digits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[test]
    fn numeric_text_is_exact() {
        assert_eq!(numeric_text(&numeric(0, 0, 0, 0, &[])).unwrap(), "0");
        assert_eq!(numeric_text(&numeric(0, 0, 0, 2, &[])).unwrap(), "0.00");
        // 12345.678 = [1, 2345, 6780], weight 1
        assert_eq!(
            numeric_text(&numeric(3, 1, 0, 3, &[1, 2345, 6780])).unwrap(),
            "12345.678"
        );
        // -0.0001 = [1], weight -1
        assert_eq!(
            numeric_text(&numeric(1, -1, 0x4000, 4, &[1])).unwrap(),
            "-0.0001"
        );
        // 1e-10 = [100], weight -3 (0.0000 0000 0100)
        assert_eq!(
            numeric_text(&numeric(1, -3, 0, 10, &[100])).unwrap(),
            "0.0000000001"
        );
        // 10000 = [1], weight 1
        assert_eq!(numeric_text(&numeric(1, 1, 0, 0, &[1])).unwrap(), "10000");
        assert_eq!(numeric_text(&numeric(0, 0, 0xC000, 0, &[])).unwrap(), "NaN");
        assert!(numeric_text(&[0, 1]).is_err());
        assert!(numeric_text(&numeric(2, 0, 0, 0, &[1])).is_err());
    }

    #[test]
    fn uuid_is_formatted() {
        let raw: Vec<u8> = (0u8..16).collect();
        assert_eq!(
            uuid_text(&raw).unwrap(),
            "00010203-0405-0607-0809-0a0b0c0d0e0f"
        );
    }
}
