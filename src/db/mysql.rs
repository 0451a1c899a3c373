//! The MySQL/MariaDB connector, over one mysql_async `Conn` (no pool).
//!
//! cranium reads production MySQL (extractions, verification) and may run SQL steps on it. A single
//! connection is enough per step, and knowing its connection id is what makes cancellation real:
//! on a deadline or a cancellation, a second connection opened from the same options sends
//! `KILL QUERY <id>`, and the interrupted call waits for the killed statement to return before
//! rolling back. Sessions run with `time_zone '+00:00'` and `utf8mb4`, so `TIMESTAMP` values read
//! and written here are UTC.
//!
//! Script statements use the text protocol (`COM_QUERY`, which runs any statement); parameterised
//! queries use the binary protocol (server-side prepared statements), so parameters are data and
//! result values come typed (see [`super::DbClient::query`] for the JSON mapping).

use std::future::Future;

use mysql_async::consts::ColumnType;
use mysql_async::prelude::Queryable;
use mysql_async::{Column, Conn, Opts, Params, Row, Value};
use serde_json::{Map, Value as J};
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use super::{
    already_interrupted, base64, connect_error, float_json, interrupted, unusable, DbError,
    Interrupt, StatementOutcome, CLEANUP_TIMEOUT, INTERRUPT_BUDGET,
};

/// The character set number of binary strings (`BINARY`, `VARBINARY`, `BLOB`).
const BINARY_CHARSET: u16 = 63;

/// One MySQL/MariaDB connection.
pub struct MyClient {
    /// `None` once the client was given up (the connection is closed then).
    conn: Option<Conn>,
    /// The options the connection was opened with, for the `KILL QUERY` connection.
    opts: Opts,
    /// The server's id of this connection.
    id: u32,
    /// The URL with its password masked, for errors.
    target: String,
    /// Why the client was given up, if it was.
    broken: Option<String>,
}

/// The end of an operation run under a deadline and a cancellation token.
enum Guarded<T> {
    Done(Result<T, mysql_async::Error>),
    Interrupted {
        why: Interrupt,
        /// Whether `KILL QUERY` was sent and the statement then returned.
        stopped: bool,
        /// Until when the cleanup may run.
        budget_end: Instant,
    },
}

impl MyClient {
    /// Connect within `timeout` (see [`super::DbClient::connect`]).
    pub async fn connect(url: &str, timeout: std::time::Duration) -> Result<MyClient, DbError> {
        if !url.starts_with("mysql://") {
            return Err(connect_error(url, "expected a mysql:// URL"));
        }
        let opts =
            Opts::from_url(url).map_err(|e| connect_error(url, format!("invalid URL: {e}")))?;
        let until = Instant::now() + timeout;
        let timed_out = || connect_error(url, format!("timed out after {timeout:?}"));
        let mut conn = match timeout_at(until, Conn::new(opts.clone())).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(e)) => return Err(connect_error(url, e.to_string())),
            Ok(Ok(conn)) => conn,
        };
        let setup = conn.query_drop("SET NAMES utf8mb4, time_zone = '+00:00'");
        match timeout_at(until, setup).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(e)) => return Err(connect_error(url, e.to_string())),
            Ok(Ok(())) => {}
        }
        let id = conn.id();
        Ok(MyClient {
            conn: Some(conn),
            opts,
            id,
            target: super::redact_url(url),
            broken: None,
        })
    }

    /// The server's id of this connection (as in `SHOW PROCESSLIST`).
    pub fn connection_id(&self) -> u32 {
        self.id
    }

    /// Whether the connection can take another call (not given up, not closed).
    pub fn is_usable(&self) -> bool {
        self.broken.is_none() && self.conn.is_some()
    }

    /// Puts a pooled connection back to a fresh session (`COM_RESET_CONNECTION`, then the
    /// session settings of a new connection: utf8mb4, UTC): what one step set does not leak into
    /// the next. A failure gives the connection up.
    pub async fn reset_session(&mut self) -> Result<(), DbError> {
        let target = self.target.clone();
        let conn = self.conn()?;
        let reset = async {
            conn.reset().await?;
            conn.query_drop("SET NAMES utf8mb4, time_zone = '+00:00'")
                .await
        };
        match tokio::time::timeout(super::CLEANUP_TIMEOUT, reset).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.give_up("resetting the session failed");
                Err(unusable(&target, &format!("resetting the session: {e}")))
            }
            Err(_) => {
                self.give_up("resetting the session timed out");
                Err(unusable(&target, "resetting the session timed out"))
            }
        }
    }

    fn give_up(&mut self, reason: &str) {
        tracing::warn!(reason, "giving up a mysql connection");
        self.broken = Some(reason.to_string());
        // Dropping the connection closes it (mysql_async disconnects in the background).
        self.conn = None;
    }

    /// Run `fut` until it ends, the deadline passes or the token fires; on an interrupt, kill the
    /// query from a second connection and wait (within [`INTERRUPT_BUDGET`]) for it to return.
    async fn guard<T>(
        opts: &Opts,
        id: u32,
        fut: impl Future<Output = Result<T, mysql_async::Error>>,
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
        let killed = kill_query(opts, id, budget_end).await;
        let stopped = killed && timeout_at(budget_end, &mut fut).await.is_ok();
        Guarded::Interrupted {
            why,
            stopped,
            budget_end,
        }
    }

    /// After an interrupt: roll back (when in a transaction) or give the connection up.
    /// A guarded call outside a transaction: its value, its statement error (a lost connection is
    /// given up), or (after the cleanup) the interrupt.
    async fn finish<T>(
        &mut self,
        outcome: Guarded<T>,
        started: Instant,
        deadline: Option<Instant>,
    ) -> Result<T, DbError> {
        match outcome {
            Guarded::Done(Ok(v)) => Ok(v),
            Guarded::Done(Err(e)) => {
                if matches!(e, mysql_async::Error::Io(_)) {
                    self.give_up("the connection was lost during a statement");
                }
                Err(statement_error(0, e))
            }
            Guarded::Interrupted {
                why,
                stopped,
                budget_end,
            } => {
                self.after_interrupt(stopped, budget_end, false).await;
                Err(why.error(started, deadline))
            }
        }
    }

    async fn after_interrupt(&mut self, stopped: bool, budget_end: Instant, in_transaction: bool) {
        if !stopped {
            self.give_up("a query cancelled by a deadline or cancellation did not stop in time");
        } else if in_transaction {
            self.rollback(budget_end).await;
        }
    }

    async fn rollback(&mut self, until: Instant) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        match timeout_at(until, conn.query_drop("ROLLBACK")).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.give_up(&format!("ROLLBACK failed: {e}")),
            Err(_) => self.give_up("ROLLBACK did not finish in time"),
        }
    }

    fn conn(&mut self) -> Result<&mut Conn, DbError> {
        match (&self.broken, self.conn.as_mut()) {
            (None, Some(conn)) => Ok(conn),
            (Some(reason), _) => Err(unusable(&self.target, reason)),
            (None, None) => Err(unusable(&self.target, "closed")),
        }
    }

    /// One statement through the text protocol; rolls back on failure when `in_transaction`.
    async fn text(
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
        self.conn()?;
        let Some(conn) = self.conn.as_mut() else {
            return Err(unusable(&self.target, "closed"));
        };
        let fut = run_text(conn, text);
        match Self::guard(&self.opts, self.id, fut, deadline, cancel).await {
            Guarded::Done(Ok(n)) => Ok(n),
            Guarded::Done(Err(e)) => {
                let lost = matches!(e, mysql_async::Error::Io(_));
                let err = statement_error(index, e);
                if lost {
                    self.give_up("the connection was lost during a statement");
                } else if in_transaction {
                    self.rollback(Instant::now() + CLEANUP_TIMEOUT).await;
                }
                Err(err)
            }
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

    /// One statement through the text protocol (`START TRANSACTION ...`, `COMMIT`), under the
    /// deadline and the token; returns the rows affected (or returned).
    pub async fn statement(
        &mut self,
        text: &str,
        deadline: Option<Instant>,
        cancel: &CancellationToken,
    ) -> Result<u64, DbError> {
        self.text(0, text, false, Instant::now(), deadline, cancel)
            .await
    }

    /// Run a prepared `sql` and send its rows on `tx` in batches of `batch` rows, never holding the
    /// result set; the receiver (typically a thread that encodes and compresses) works while the next
    /// rows arrive. Returns the number of rows sent and the values of `keys` in the last row (for
    /// keyset pagination). A closed receiver stops the reading with `DbError::Other`.
    #[allow(clippy::too_many_arguments)]
    pub async fn stream_batches<T: From<RowBatch> + Send>(
        &mut self,
        sql: &str,
        params: &[J],
        keys: &[String],
        batch: usize,
        tx: &tokio::sync::mpsc::Sender<T>,
        deadline: Option<Instant>,
        cancel: &CancellationToken,
    ) -> Result<(u64, Option<Vec<J>>), DbError> {
        self.conn()?;
        let started = Instant::now();
        if let Some(why) = already_interrupted(deadline, cancel) {
            return Err(why.error(started, deadline));
        }
        let params = bind_params(params);
        let Some(conn) = self.conn.as_mut() else {
            return Err(unusable(&self.target, "closed"));
        };
        let batch = batch.max(1);
        let fut = async move {
            let mut result = conn.exec_iter(sql, params).await?;
            let (mut n, mut last, mut closed) = (0u64, None, false);
            let mut rows = Vec::with_capacity(batch);
            while let Some(row) = result.next().await? {
                rows.push(row);
                if rows.len() == batch {
                    let full = RowBatch {
                        rows: std::mem::replace(&mut rows, Vec::with_capacity(batch)),
                    };
                    n += full.rows.len() as u64;
                    last = full.last_values(keys);
                    if tx.send(full.into()).await.is_err() {
                        closed = true;
                        break;
                    }
                }
            }
            if !closed && !rows.is_empty() {
                let rest = RowBatch { rows };
                n += rest.rows.len() as u64;
                last = rest.last_values(keys);
                closed = tx.send(rest.into()).await.is_err();
            }
            result.drop_result().await?;
            Ok((n, last, closed))
        };
        let outcome = Self::guard(&self.opts, self.id, fut, deadline, cancel).await;
        match self.finish(outcome, started, deadline).await? {
            (_, _, true) => Err(DbError::Other(
                "the receiver of the rows stopped".to_string(),
            )),
            (n, last, false) => Ok((n, last)),
        }
    }

    /// The columns of table `name` (`db.table`, or `table` in the connection's database) that hold JSON:
    /// type JSON, or (MariaDB, which stores JSON as LONGTEXT) checked with `json_valid`.
    pub async fn json_columns(
        &mut self,
        name: &str,
        deadline: Option<Instant>,
        cancel: &CancellationToken,
    ) -> Result<Vec<String>, DbError> {
        let (schema, table) = schema_and_table(name);
        let rows = self
            .query(
                "SELECT COLUMN_NAME AS c FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? \
                 AND (DATA_TYPE = 'json' OR COLUMN_NAME IN (\
                   SELECT SUBSTRING_INDEX(SUBSTRING_INDEX(CHECK_CLAUSE, '`', 2), '`', -1) \
                   FROM information_schema.CHECK_CONSTRAINTS \
                   WHERE CONSTRAINT_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? \
                   AND CHECK_CLAUSE LIKE 'json_valid(%'))",
                &[schema.clone(), table.into(), schema, table.into()],
                deadline,
                cancel,
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| r.get("c").and_then(|c| c.as_str()).map(str::to_string))
            .collect())
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
        self.conn()?;
        let started = Instant::now();
        if transaction {
            self.text(0, "START TRANSACTION", false, started, deadline, cancel)
                .await?;
        }
        let mut outcomes = Vec::with_capacity(statements.len());
        for (index, text) in statements.iter().enumerate() {
            let rows_affected = self
                .text(index, text, transaction, started, deadline, cancel)
                .await?;
            outcomes.push(StatementOutcome { rows_affected });
        }
        if transaction && !commit_ok() {
            self.text(
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
            self.text(statements.len(), "COMMIT", true, started, deadline, cancel)
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
        match self
            .prepared(Op::Query, sql, params, deadline, cancel)
            .await?
        {
            OpResult::Rows(rows) => Ok(rows.into_iter().map(row_to_json).collect()),
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
            .prepared(Op::Execute, sql, params, deadline, cancel)
            .await?
        {
            OpResult::Rows(rows) => Ok(rows.len() as u64),
            OpResult::Count(n) => Ok(n),
        }
    }

    /// Run a prepared statement with parameters under the deadline and the token.
    async fn prepared(
        &mut self,
        op: Op,
        sql: &str,
        params: &[J],
        deadline: Option<Instant>,
        cancel: &CancellationToken,
    ) -> Result<OpResult, DbError> {
        self.conn()?;
        let started = Instant::now();
        if let Some(why) = already_interrupted(deadline, cancel) {
            return Err(why.error(started, deadline));
        }
        let params = bind_params(params);
        let Some(conn) = self.conn.as_mut() else {
            return Err(unusable(&self.target, "closed"));
        };
        let fut = async move {
            match op {
                Op::Query => {
                    let mut result = conn.exec_iter(sql, params).await?;
                    let rows: Vec<Row> = result.collect().await?;
                    result.drop_result().await?;
                    Ok(OpResult::Rows(rows))
                }
                Op::Execute => {
                    conn.exec_drop(sql, params).await?;
                    Ok(OpResult::Count(conn.affected_rows()))
                }
            }
        };
        let outcome = Self::guard(&self.opts, self.id, fut, deadline, cancel).await;
        self.finish(outcome, started, deadline).await
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

/// One statement through the text protocol: rows returned for a result set, else rows affected.
async fn run_text(conn: &mut Conn, text: &str) -> Result<u64, mysql_async::Error> {
    let mut result = conn.query_iter(text).await?;
    let has_rows = !result.columns_ref().is_empty();
    let mut rows = 0u64;
    result.for_each(|_| rows += 1).await?;
    let affected = result.affected_rows();
    result.drop_result().await?;
    Ok(if has_rows { rows } else { affected })
}

/// `KILL QUERY <id>` from a new connection opened with `opts`; whether it was sent.
async fn kill_query(opts: &Opts, id: u32, until: Instant) -> bool {
    let mut killer = match timeout_at(until, Conn::new(opts.clone())).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not open a connection to kill a query");
            return false;
        }
        Err(_) => return false,
    };
    let killed = timeout_at(until, killer.query_drop(format!("KILL QUERY {id}"))).await;
    tokio::spawn(async move {
        let _ = tokio::time::timeout(CLEANUP_TIMEOUT, killer.disconnect()).await;
    });
    match killed {
        Ok(Ok(())) => true,
        // 1094 unknown thread id: the connection is gone, nothing runs any more.
        Ok(Err(mysql_async::Error::Server(e))) if e.code == 1094 => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "KILL QUERY failed");
            false
        }
        Err(_) => false,
    }
}

/// Parameters as MySQL values: booleans as 0/1, arrays and objects as their JSON text.
fn bind_params(params: &[J]) -> Params {
    if params.is_empty() {
        return Params::Empty;
    }
    Params::Positional(
        params
            .iter()
            .map(|p| match p {
                J::Null => Value::NULL,
                J::Bool(b) => Value::Int(i64::from(*b)),
                J::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                    (Some(i), _, _) => Value::Int(i),
                    (None, Some(u), _) => Value::UInt(u),
                    (None, None, Some(f)) => Value::Double(f),
                    (None, None, None) => Value::Bytes(n.to_string().into_bytes()),
                },
                J::String(s) => Value::Bytes(s.clone().into_bytes()),
                other => Value::Bytes(other.to_string().into_bytes()),
            })
            .collect(),
    )
}

/// A failed statement: the server's error number and message; `code: None` for a lost
/// connection.
fn statement_error(index: usize, e: mysql_async::Error) -> DbError {
    match e {
        mysql_async::Error::Server(se) => DbError::Statement {
            statement: index,
            code: Some(se.code.to_string()),
            message: se.message,
        },
        mysql_async::Error::Io(io) => DbError::Statement {
            statement: index,
            code: None,
            message: format!(
                "the connection to MySQL was lost during the statement ({io}): the server \
                 closed it (restarted, or the connection was killed); a retry reconnects"
            ),
        },
        other => DbError::Other(format!("statement {index}: {other}")),
    }
}

/// A row as a JSON object.
fn row_to_json(row: Row) -> Map<String, J> {
    let columns = row.columns();
    let values = row.unwrap_raw();
    let mut map = Map::new();
    for (column, value) in columns.iter().zip(values) {
        let value = value.unwrap_or(Value::NULL);
        map.insert(column.name_str().into_owned(), value_to_json(column, value));
    }
    map
}

/// `db.table` → (`db`, `table`); `table` → (null: the connection's database, `table`), as the
/// parameters of an `information_schema` query (`COALESCE(?, DATABASE())`).
pub fn schema_and_table(name: &str) -> (J, &str) {
    match name.split_once('.') {
        Some((s, t)) => (J::from(s), t),
        None => (J::Null, name),
    }
}

/// Rows as they came off the wire, for callers that encode them without building JSON objects.
pub struct RowBatch {
    rows: Vec<Row>,
}

impl RowBatch {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The column names of the result.
    pub fn column_names(&self) -> Vec<String> {
        self.rows
            .first()
            .map(|r| {
                r.columns_ref()
                    .iter()
                    .map(|c| c.name_str().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Row `i` as a JSON object (the mapping of [`super::DbClient::query`]).
    pub fn row_json(&self, i: usize) -> Option<Map<String, J>> {
        self.rows.get(i).map(|r| row_to_json(r.clone()))
    }

    /// The values of `names` in the last row.
    fn last_values(&self, names: &[String]) -> Option<Vec<J>> {
        let row = self.rows.last()?;
        let columns = row.columns_ref();
        Some(
            names
                .iter()
                .map(
                    |n| match columns.iter().position(|c| c.name_str() == n.as_str()) {
                        Some(i) => value_to_json(
                            &columns[i],
                            row.as_ref(i).cloned().unwrap_or(Value::NULL),
                        ),
                        None => J::Null,
                    },
                )
                .collect(),
        )
    }

    /// Each row as one JSON line (no newline), the mapping of [`super::DbClient::query`], written
    /// without an intermediate object; `json_columns` hold JSON text and are written as JSON.
    pub fn json_lines<E>(
        &self,
        json_columns: &[String],
        mut each: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let Some(first) = self.rows.first() else {
            return Ok(());
        };
        // `{"name":` and `,"name":` per column, escaped once.
        let columns = first.columns_ref();
        let heads: Vec<Vec<u8>> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut h = if i == 0 { b"{".to_vec() } else { b",".to_vec() };
                h.extend_from_slice(J::String(c.name_str().into_owned()).to_string().as_bytes());
                h.push(b':');
                h
            })
            .collect();
        let is_json: Vec<bool> = columns
            .iter()
            .map(|c| json_columns.iter().any(|j| c.name_str() == j.as_str()))
            .collect();
        let mut line = Vec::with_capacity(256);
        for row in &self.rows {
            line.clear();
            for (i, column) in columns.iter().enumerate() {
                line.extend_from_slice(&heads[i]);
                let value = row.as_ref(i).unwrap_or(&Value::NULL);
                write_json_value(column, value, is_json[i], &mut line);
            }
            if columns.is_empty() {
                line.push(b'{');
            }
            line.push(b'}');
            each(&line)?;
        }
        Ok(())
    }

    /// Each row's values in the JSON mapping, in column order.
    pub fn values<E>(&self, mut each: impl FnMut(Vec<J>) -> Result<(), E>) -> Result<(), E> {
        for row in &self.rows {
            let columns = row.columns_ref();
            let values = (0..columns.len())
                .map(|i| value_to_json(&columns[i], row.as_ref(i).cloned().unwrap_or(Value::NULL)))
                .collect();
            each(values)?;
        }
        Ok(())
    }
}

/// One value in the JSON mapping, written straight into `out`: the common types (integers, text,
/// DATETIME) without an intermediate value, the rest through [`value_to_json`].
fn write_json_value(column: &Column, value: &Value, is_json: bool, out: &mut Vec<u8>) {
    use std::io::Write;
    use ColumnType as T;
    let ty = column.column_type();
    let is_bool = ty == T::MYSQL_TYPE_TINY && column.column_length() == 1;
    let plain_text = matches!(
        ty,
        T::MYSQL_TYPE_VARCHAR | T::MYSQL_TYPE_VAR_STRING | T::MYSQL_TYPE_STRING
    ) && column.character_set() != BINARY_CHARSET;
    match value {
        Value::NULL => out.extend_from_slice(b"null"),
        Value::Int(i) if !is_bool => {
            let _ = write!(out, "{i}");
        }
        Value::UInt(u) if !is_bool => {
            let _ = write!(out, "{u}");
        }
        Value::Bytes(b) if plain_text && !is_json => match std::str::from_utf8(b) {
            Ok(s) => {
                let _ = serde_json::to_writer(&mut *out, s);
            }
            Err(_) => {
                let _ = serde_json::to_writer(&mut *out, &value_to_json(column, value.clone()));
            }
        },
        Value::Date(y, mo, d, h, mi, s, us)
            if *y != 0
                && *mo != 0
                && *d != 0
                && matches!(ty, T::MYSQL_TYPE_DATETIME | T::MYSQL_TYPE_DATETIME2) =>
        {
            let _ = write!(out, "\"{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}");
            if *us > 0 {
                let _ = write!(out, ".{us:06}");
            }
            out.push(b'"');
        }
        Value::Bytes(b) if is_json => match serde_json::from_slice::<J>(b) {
            Ok(v) => {
                let _ = serde_json::to_writer(&mut *out, &v);
            }
            Err(_) => {
                let _ = serde_json::to_writer(&mut *out, &value_to_json(column, value.clone()));
            }
        },
        other => {
            let _ = serde_json::to_writer(&mut *out, &value_to_json(column, other.clone()));
        }
    }
}

fn value_to_json(column: &Column, value: Value) -> J {
    use ColumnType as T;
    let ty = column.column_type();
    let is_bool = ty == T::MYSQL_TYPE_TINY && column.column_length() == 1;
    match value {
        Value::NULL => J::Null,
        Value::Int(i) if is_bool && (i == 0 || i == 1) => J::Bool(i == 1),
        Value::UInt(u) if is_bool && u <= 1 => J::Bool(u == 1),
        Value::Int(i) => J::from(i),
        Value::UInt(u) => J::from(u),
        // Through the shortest decimal text, so FLOAT 0.1 reads 0.1, not 0.10000000149.
        Value::Float(f) => float_json(f.to_string().parse::<f64>().unwrap_or(f64::from(f))),
        Value::Double(d) => float_json(d),
        // MySQL's zero dates (`0000-00-00`, and dates with a zero month or day) are no instant: null.
        Value::Date(y, mo, d, ..) if y == 0 || mo == 0 || d == 0 => J::Null,
        Value::Date(y, mo, d, h, mi, s, us) => {
            let date = format!("{y:04}-{mo:02}-{d:02}");
            let frac = if us > 0 {
                format!(".{us:06}")
            } else {
                String::new()
            };
            match ty {
                T::MYSQL_TYPE_DATE | T::MYSQL_TYPE_NEWDATE => J::String(date),
                T::MYSQL_TYPE_TIMESTAMP | T::MYSQL_TYPE_TIMESTAMP2 => {
                    J::String(format!("{date}T{h:02}:{mi:02}:{s:02}{frac}Z"))
                }
                _ => J::String(format!("{date}T{h:02}:{mi:02}:{s:02}{frac}")),
            }
        }
        Value::Time(negative, days, h, mi, s, us) => {
            let hours = u64::from(days) * 24 + u64::from(h);
            let sign = if negative { "-" } else { "" };
            let frac = if us > 0 {
                format!(".{us:06}")
            } else {
                String::new()
            };
            J::String(format!("{sign}{hours:02}:{mi:02}:{s:02}{frac}"))
        }
        Value::Bytes(bytes) => match ty {
            T::MYSQL_TYPE_JSON => match serde_json::from_slice(&bytes) {
                Ok(v) => v,
                Err(_) => J::String(String::from_utf8_lossy(&bytes).into_owned()),
            },
            T::MYSQL_TYPE_DECIMAL | T::MYSQL_TYPE_NEWDECIMAL => {
                J::String(String::from_utf8_lossy(&bytes).into_owned())
            }
            T::MYSQL_TYPE_BIT if bytes.len() <= 8 => {
                J::from(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
            }
            _ if column.character_set() == BINARY_CHARSET => J::String(base64(&bytes)),
            _ => match String::from_utf8(bytes) {
                Ok(s) => J::String(s),
                Err(e) => J::String(base64(e.as_bytes())),
            },
        },
    }
}
