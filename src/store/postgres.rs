//! The PostgreSQL metadata store (`state: postgres://...[?schema=NAME]`).
//!
//! # Why this file exists
//!
//! When several cranium daemons share the work they need one shared memory of what has run;
//! this is the PostgreSQL implementation of [`super::Store`] for that case, with the same
//! schema and semantics as the SQLite store.
//!
//! * **Schema.** Everything lives in one PostgreSQL schema (URL parameter `?schema=NAME`,
//!   default `cranium`), created if missing; every connection sets `search_path` to it, so the
//!   SQL is the same as for SQLite and tests can use a throwaway schema each.
//! * **Connections.** A small pool (at most [`MAX_CONNECTIONS`]) of `tokio-postgres` clients,
//!   each with its own cache of prepared statements; a connection that failed or timed out is
//!   dropped, not reused, and a new one is made on demand (so a server restart heals).
//! * **Concurrency.** Every write is one statement (`recover_stale` is one statement with
//!   data-modifying CTEs), so several daemons never see half an update, and row locks make
//!   `recover_stale` mark each dead run once. The one exception, a throttled `enqueue_alert`,
//!   is a short transaction holding its throttle row's lock (see `postgres/alerts.rs`).
//!   Migrations run under a transaction-level advisory lock per schema, so daemons starting
//!   together apply them once.
//! * **Time.** Timestamps come from the server's clock (`now()`), so heartbeats written by one
//!   daemon and judged stale by another are compared on one clock.
//! * **Timeouts.** Every operation (including getting a connection) has a 30 s timeout and every
//!   error names the operation and carries the server's message, detail and hint.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls, Row, Statement};

use super::{
    clamp_bound, pending_migrations, redact_url, stale_duration, AttemptRecord, AttemptResult,
    ConsumerLag, Interval, RunFilter, RunRecord, RunState, StepIntervalRecord, StepState,
    StoreError, Trigger, INTERRUPTED, POSTGRES_MIGRATIONS,
};

/// The timeout of every operation.
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// The most connections one store opens.
pub const MAX_CONNECTIONS: usize = 4;
/// The schema used when the URL has no `?schema=`.
pub const DEFAULT_SCHEMA: &str = "cranium";

/// The PostgreSQL store. Cheap to clone: clones share the pool.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    /// The URL with the password redacted, for messages.
    display: String,
    schema: String,
    idle: Mutex<Vec<PgConn>>,
    permits: Semaphore,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &self.inner.display)
            .field("schema", &self.inner.schema)
            .finish()
    }
}

/// One connection and its prepared statements.
struct PgConn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

/// A connection borrowed from the pool. It goes back to the pool on drop unless a call on it was
/// interrupted (`ok` false: the operation timed out mid-flight) or the connection closed.
struct Lease<'a> {
    conn: Option<PgConn>,
    inner: &'a Inner,
    ok: bool,
    _permit: SemaphorePermit<'a>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.ok && !conn.client.is_closed() {
                self.inner
                    .idle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(conn);
            }
        }
    }
}

impl Lease<'_> {
    fn conn(&mut self) -> &mut PgConn {
        self.conn
            .as_mut()
            .expect("a lease holds its connection until dropped")
    }

    /// The prepared statement for `sql`, preparing it on first use on this connection.
    async fn prepare(
        &mut self,
        op: &'static str,
        sql: &'static str,
    ) -> Result<Statement, StoreError> {
        if let Some(st) = self.conn().statements.get(sql) {
            return Ok(st.clone());
        }
        self.ok = false;
        let st = self.conn().client.prepare(sql).await;
        self.ok = true;
        let st = st.map_err(err(op))?;
        self.conn().statements.insert(sql, st.clone());
        Ok(st)
    }

    async fn query(
        &mut self,
        op: &'static str,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let st = self.prepare(op, sql).await?;
        self.ok = false;
        let rows = self.conn().client.query(&st, params).await;
        self.ok = true;
        rows.map_err(err(op))
    }

    /// Runs `sql` with the simple query protocol, unprepared: `BEGIN`, `COMMIT`, `ROLLBACK`.
    async fn simple(&mut self, op: &'static str, sql: &'static str) -> Result<(), StoreError> {
        self.ok = false;
        let r = self.conn().client.batch_execute(sql).await;
        self.ok = true;
        r.map_err(err(op))
    }

    async fn execute(
        &mut self,
        op: &'static str,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let st = self.prepare(op, sql).await?;
        self.ok = false;
        let n = self.conn().client.execute(&st, params).await;
        self.ok = true;
        n.map_err(err(op))
    }
}

fn err(op: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |source| StoreError::Postgres { op, source }
}

/// The useful text of a tokio-postgres error: its `Display` says only "db error" for server
/// errors, so add the server's severity, code, message, detail and hint, or the cause.
pub fn describe_error(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(detail) = db.detail() {
            s.push_str(&format!(" (detail: {detail})"));
        }
        if let Some(hint) = db.hint() {
            s.push_str(&format!(" (hint: {hint})"));
        }
        return s;
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// `"name"`: a quoted identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Splits `?schema=NAME` off the URL (tokio-postgres rejects unknown parameters).
fn split_schema(url: &str) -> Result<(String, String), StoreError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), DEFAULT_SCHEMA.to_string()));
    };
    let mut schema = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("schema", value)) => schema = Some(value.to_string()),
            _ => rest.push(pair),
        }
    }
    let schema = schema.unwrap_or_else(|| DEFAULT_SCHEMA.to_string());
    let valid = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && schema
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(StoreError::BadUrl(format!(
            "'{}': schema '{schema}' must be 1-63 letters, digits and _, not starting with a digit",
            redact_url(url)
        )));
    }
    let base = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((base, schema))
}

async fn with_timeout<T>(
    op: &'static str,
    fut: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(TIMEOUT, fut)
        .await
        .map_err(|_| StoreError::Timeout(op))?
}

/// Connects and sets `search_path` (the schema may not exist yet; that is fine for SET).
async fn connect(config: &Config, schema: &str, op: &'static str) -> Result<Client, StoreError> {
    let (client, connection) = config.connect(NoTls).await.map_err(err(op))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %describe_error(&e), "postgres store: connection closed");
        }
    });
    client
        .batch_execute(&format!("SET search_path TO {}", quote_ident(schema)))
        .await
        .map_err(err(op))?;
    Ok(client)
}

fn parse_attempt(n: i64) -> Result<u32, StoreError> {
    u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("attempt number {n}")))
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    idx: usize,
    op: &'static str,
) -> Result<T, StoreError> {
    row.try_get(idx).map_err(err(op))
}

const RUN_COLUMNS: &str = "id, job, interval_start, interval_end, state, \"trigger\", created_at, \
                           started_at, ended_at, owner";

fn run_from_row(row: &Row, op: &'static str) -> Result<RunRecord, StoreError> {
    Ok(RunRecord {
        id: get(row, 0, op)?,
        job: get(row, 1, op)?,
        interval: Interval {
            start: get(row, 2, op)?,
            end: get(row, 3, op)?,
        },
        state: get::<&str>(row, 4, op)?.parse()?,
        trigger: get::<&str>(row, 5, op)?.parse()?,
        created_at: get(row, 6, op)?,
        started_at: get(row, 7, op)?,
        ended_at: get(row, 8, op)?,
        owner: get(row, 9, op)?,
    })
}

const STEP_COLUMNS: &str =
    "job, step, interval_start, interval_end, state, run_id, attempt, outputs, updated_at";

fn step_from_row(row: &Row, op: &'static str) -> Result<StepIntervalRecord, StoreError> {
    Ok(StepIntervalRecord {
        job: get(row, 0, op)?,
        step: get(row, 1, op)?,
        interval: Interval {
            start: get(row, 2, op)?,
            end: get(row, 3, op)?,
        },
        state: get::<&str>(row, 4, op)?.parse()?,
        run_id: get(row, 5, op)?,
        attempt: parse_attempt(get(row, 6, op)?)?,
        outputs: get(row, 7, op)?,
        updated_at: get(row, 8, op)?,
    })
}

const ATTEMPT_COLUMNS: &str = "id, run_id, job, step, interval_start, interval_end, attempt, \
                               state, started_at, ended_at, duration_ms, error, rows_affected, \
                               bytes, log_path, outputs";

fn attempt_from_row(row: &Row, op: &'static str) -> Result<AttemptRecord, StoreError> {
    Ok(AttemptRecord {
        id: get(row, 0, op)?,
        run_id: get(row, 1, op)?,
        job: get(row, 2, op)?,
        step: get(row, 3, op)?,
        interval: Interval {
            start: get(row, 4, op)?,
            end: get(row, 5, op)?,
        },
        attempt: parse_attempt(get(row, 6, op)?)?,
        state: get::<&str>(row, 7, op)?.parse()?,
        started_at: get(row, 8, op)?,
        ended_at: get(row, 9, op)?,
        duration_ms: get(row, 10, op)?,
        error: get(row, 11, op)?,
        rows_affected: get(row, 12, op)?,
        bytes: get(row, 13, op)?,
        log_path: get(row, 14, op)?,
        outputs: get(row, 15, op)?,
    })
}

/// `SELECT {columns} FROM ...` statements, built once (prepared statements are keyed by the
/// `&'static str`).
macro_rules! select {
    ($columns:ident, $rest:literal) => {{
        static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        SQL.get_or_init(|| format!("SELECT {} {}", $columns, $rest))
            .as_str()
    }};
}

// After `select!`, which they use.
mod alerts;
mod audit;
mod daemon;
pub mod leader;

impl PgStore {
    /// Connects to `postgres://...[?schema=NAME]`, creates the schema if missing and migrates.
    pub async fn open(url: &str) -> Result<PgStore, StoreError> {
        let (base, schema) = split_schema(url)?;
        let display = redact_url(url);
        let mut config: Config = base
            .parse()
            .map_err(|e| StoreError::BadUrl(format!("'{display}': {e}")))?;
        if config.get_application_name().is_none() {
            config.application_name("cranium");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(TIMEOUT);
        }
        let store = PgStore {
            inner: Arc::new(Inner {
                config,
                display,
                schema,
                idle: Mutex::new(Vec::new()),
                permits: Semaphore::new(MAX_CONNECTIONS),
            }),
        };
        with_timeout("open (migrate)", store.migrate()).await?;
        Ok(store)
    }

    /// The schema holding the tables.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// Creates the schema and applies pending migrations in one transaction, under an advisory
    /// lock so concurrent openers wait for the first.
    async fn migrate(&self) -> Result<(), StoreError> {
        const OP: &str = "open (migrate)";
        let inner = &self.inner;
        let mut client = connect(&inner.config, &inner.schema, OP).await?;
        let store = format!("{} (schema {})", inner.display, inner.schema);
        let tx = client.transaction().await.map_err(err(OP))?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))",
            &[&format!("cranium_schema_migrations:{}", inner.schema)],
        )
        .await
        .map_err(err(OP))?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.cranium_schema_migrations (
                 version    bigint      PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );",
            schema = quote_ident(&inner.schema)
        ))
        .await
        .map_err(err(OP))?;
        let current: i64 = tx
            .query_one(
                "SELECT coalesce(max(version), 0)::bigint FROM cranium_schema_migrations",
                &[],
            )
            .await
            .map_err(err(OP))?
            .try_get(0)
            .map_err(err(OP))?;
        let pending = pending_migrations(POSTGRES_MIGRATIONS, current, &store)?;
        for m in pending {
            tx.batch_execute(m.sql).await.map_err(|e| {
                StoreError::Migration(format!(
                    "{store}: applying {}: {}",
                    m.name,
                    describe_error(&e)
                ))
            })?;
            tx.execute(
                "INSERT INTO cranium_schema_migrations (version, applied_at) VALUES ($1, now())",
                &[&m.version],
            )
            .await
            .map_err(|e| {
                StoreError::Migration(format!(
                    "{store}: recording {}: {}",
                    m.name,
                    describe_error(&e)
                ))
            })?;
            tracing::info!(store = %store, migration = m.name, "applied store migration");
        }
        tx.commit().await.map_err(err(OP))?;
        // Keep the connection for the pool.
        inner
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(PgConn {
                client,
                statements: HashMap::new(),
            });
        Ok(())
    }

    /// A connection from the pool, or a new one.
    async fn lease(&self, op: &'static str) -> Result<Lease<'_>, StoreError> {
        let inner = &*self.inner;
        let permit = inner
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Timeout(op))?;
        let idle = {
            let mut idle = inner.idle.lock().unwrap_or_else(PoisonError::into_inner);
            let mut found = None;
            while let Some(conn) = idle.pop() {
                if !conn.client.is_closed() {
                    found = Some(conn);
                    break;
                }
            }
            found
        };
        let conn = match idle {
            Some(conn) => conn,
            None => PgConn {
                client: connect(&inner.config, &inner.schema, op).await?,
                statements: HashMap::new(),
            },
        };
        Ok(Lease {
            conn: Some(conn),
            inner,
            ok: true,
            _permit: permit,
        })
    }

    pub async fn create_run(
        &self,
        job: &str,
        interval: Interval,
        trigger: Trigger,
    ) -> Result<i64, StoreError> {
        const OP: &str = "create_run";
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let rows = c
                .query(
                    OP,
                    "INSERT INTO runs (job, interval_start, interval_end, state, \"trigger\") \
                     VALUES ($1, $2, $3, 'queued', $4) RETURNING id",
                    &[&job, &interval.start, &interval.end, &trigger.as_str()],
                )
                .await?;
            first(&rows, OP)?.try_get(0).map_err(err(OP))
        })
        .await
    }

    pub async fn set_run_state(&self, run_id: i64, state: RunState) -> Result<(), StoreError> {
        const OP: &str = "set_run_state";
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let n = c
                .execute(
                    OP,
                    "UPDATE runs SET state = $2::text, \
                     started_at = CASE WHEN $2::text = 'running' THEN now() ELSE started_at END, \
                     heartbeat_at = CASE WHEN $2::text = 'running' THEN now() \
                                         ELSE heartbeat_at END, \
                     ended_at = CASE WHEN $2::text IN ('success', 'failed') THEN now() \
                                     WHEN $2::text = 'running' THEN NULL ELSE ended_at END \
                     WHERE id = $1",
                    &[&run_id, &state.as_str()],
                )
                .await?;
            if n == 0 {
                return Err(StoreError::NotFound {
                    what: "run",
                    id: run_id,
                });
            }
            Ok(())
        })
        .await
    }

    pub async fn start_run(
        &self,
        run_id: i64,
        owner: Option<&str>,
        job: &str,
        interval: Interval,
        pending: &[&str],
    ) -> Result<bool, StoreError> {
        const OP: &str = "start_run";
        let pending: Vec<&str> = pending.to_vec();
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            // One statement: the pending records are written only if the run's row was (its row
            // lock orders this against a daemon re-queueing the run).
            let rows = c
                .query(
                    OP,
                    "WITH r AS ( \
                         UPDATE runs SET state = 'running', started_at = now(), \
                         heartbeat_at = now(), ended_at = NULL \
                         WHERE id = $1 AND ($2::text IS NULL OR (owner = $2 AND state = 'running')) \
                         RETURNING id \
                     ), p AS ( \
                         INSERT INTO step_intervals (job, step, interval_start, interval_end, \
                         state, run_id, attempt, outputs, updated_at) \
                         SELECT $3, s, $4, $5, 'pending', $1, 0, 'null'::jsonb, now() \
                         FROM unnest($6::text[]) AS s WHERE EXISTS (SELECT 1 FROM r) \
                         ON CONFLICT (job, interval_start, step) DO UPDATE SET \
                         interval_end = EXCLUDED.interval_end, state = EXCLUDED.state, \
                         run_id = EXCLUDED.run_id, attempt = EXCLUDED.attempt, \
                         updated_at = EXCLUDED.updated_at \
                         RETURNING 1 \
                     ) \
                     SELECT (SELECT count(*) FROM r), (SELECT count(*) FROM p)",
                    &[
                        &run_id,
                        &owner,
                        &job,
                        &interval.start,
                        &interval.end,
                        &pending,
                    ],
                )
                .await?;
            let started: i64 = get(first(&rows, OP)?, 0, OP)?;
            match (started, owner) {
                (0, None) => Err(StoreError::NotFound {
                    what: "run",
                    id: run_id,
                }),
                (n, _) => Ok(n == 1),
            }
        })
        .await
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn set_step_state(
        &self,
        run_id: i64,
        job: &str,
        step: &str,
        interval: Interval,
        state: StepState,
        attempt: u32,
        outputs: Option<&serde_json::Value>,
        fence: Option<i64>,
    ) -> Result<(), StoreError> {
        const OP: &str = "set_step_state";
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            // With a fence, the write happens only while the lease has that token; FOR SHARE
            // waits for a claim changing hands in flight and then judges its outcome.
            let n = c
                .execute(
                    OP,
                    "INSERT INTO step_intervals (job, step, interval_start, interval_end, state, \
                 run_id, attempt, outputs, updated_at) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, coalesce($8::jsonb, 'null'::jsonb), now() \
                 WHERE $9::bigint IS NULL OR EXISTS (SELECT 1 FROM step_leases \
                     WHERE job = $1 AND interval_start = $3 AND step = $2 AND token = $9 \
                     FOR SHARE) \
                 ON CONFLICT (job, interval_start, step) DO UPDATE SET \
                 interval_end = EXCLUDED.interval_end, state = EXCLUDED.state, \
                 run_id = EXCLUDED.run_id, attempt = EXCLUDED.attempt, \
                 outputs = CASE WHEN $8::jsonb IS NULL THEN step_intervals.outputs \
                                ELSE EXCLUDED.outputs END, \
                 updated_at = EXCLUDED.updated_at",
                    &[
                        &job,
                        &step,
                        &interval.start,
                        &interval.end,
                        &state.as_str(),
                        &run_id,
                        &i64::from(attempt),
                        &outputs,
                        &fence,
                    ],
                )
                .await?;
            match fence {
                Some(token) if n == 0 => Err(StoreError::Fenced {
                    op: OP,
                    job: job.to_string(),
                    step: step.to_string(),
                    interval_start: interval.start,
                    token,
                }),
                _ => Ok(()),
            }
        })
        .await
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn begin_attempt(
        &self,
        run_id: i64,
        job: &str,
        step: &str,
        interval: Interval,
        attempt: u32,
        log_path: &str,
        fence: Option<i64>,
    ) -> Result<i64, StoreError> {
        const OP: &str = "begin_attempt";
        let log_path = (!log_path.is_empty()).then_some(log_path);
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let rows = c
                .query(
                    OP,
                    "INSERT INTO step_attempts (run_id, job, step, interval_start, interval_end, \
                     attempt, state, started_at, log_path) \
                     SELECT $1, $2, $3, $4, $5, $6, 'running', now(), $7 \
                     WHERE $8::bigint IS NULL OR EXISTS (SELECT 1 FROM step_leases \
                         WHERE job = $2 AND interval_start = $4 AND step = $3 AND token = $8 \
                         FOR SHARE) \
                     RETURNING id",
                    &[
                        &run_id,
                        &job,
                        &step,
                        &interval.start,
                        &interval.end,
                        &i64::from(attempt),
                        &log_path,
                        &fence,
                    ],
                )
                .await?;
            if let (Some(token), true) = (fence, rows.is_empty()) {
                return Err(StoreError::Fenced {
                    op: OP,
                    job: job.to_string(),
                    step: step.to_string(),
                    interval_start: interval.start,
                    token,
                });
            }
            first(&rows, OP)?.try_get(0).map_err(err(OP))
        })
        .await
    }

    pub async fn finish_attempt(
        &self,
        attempt_id: i64,
        result: &AttemptResult,
        fence: Option<i64>,
    ) -> Result<(), StoreError> {
        const OP: &str = "finish_attempt";
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let rows = c
                .query(
                    OP,
                    // A success also sets the step's record, in the same statement: a process
                    // killed right after never leaves a succeeded attempt under a record that
                    // will run the step again.
                    "WITH a AS (UPDATE step_attempts a SET state = $2, ended_at = now(), \
                     duration_ms = greatest(0, floor(extract(epoch FROM now() - started_at) \
                                                     * 1000))::bigint, \
                     error = $3, rows_affected = $4, bytes = $5, outputs = $6 WHERE id = $1 \
                     AND ($7::bigint IS NULL OR EXISTS (SELECT 1 FROM step_leases l \
                         WHERE l.job = a.job AND l.interval_start = a.interval_start \
                         AND l.step = a.step AND l.token = $7 FOR SHARE)) \
                     RETURNING a.job, a.step, a.interval_start, a.run_id, a.attempt), \
                     s AS (UPDATE step_intervals i SET state = 'success', run_id = a.run_id, \
                     attempt = a.attempt, outputs = $6, updated_at = now() FROM a \
                     WHERE $2 = 'success' AND i.job = a.job AND i.step = a.step \
                     AND i.interval_start = a.interval_start) \
                     SELECT count(*) FROM a",
                    &[
                        &attempt_id,
                        &result.final_state().as_str(),
                        &result.error,
                        &result.rows_affected,
                        &result.bytes,
                        &result.outputs,
                        &fence,
                    ],
                )
                .await?;
            let n: i64 = get(first(&rows, OP)?, 0, OP)?;
            if let (Some(token), 0) = (fence, n) {
                let rows = c
                    .query(
                        OP,
                        "SELECT job, step, interval_start FROM step_attempts WHERE id = $1",
                        &[&attempt_id],
                    )
                    .await?;
                if let Some(r) = rows.first() {
                    return Err(StoreError::Fenced {
                        op: OP,
                        job: get(r, 0, OP)?,
                        step: get(r, 1, OP)?,
                        interval_start: get(r, 2, OP)?,
                        token,
                    });
                }
            }
            if n == 0 {
                return Err(StoreError::NotFound {
                    what: "attempt",
                    id: attempt_id,
                });
            }
            Ok(())
        })
        .await
    }

    pub async fn step_states(
        &self,
        job: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<StepIntervalRecord>, StoreError> {
        const OP: &str = "step_states";
        let (from, to) = (clamp_bound(from), clamp_bound(to));
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let sql = select!(
                STEP_COLUMNS,
                "FROM step_intervals WHERE job = $1 AND interval_start >= $2 \
                 AND interval_start < $3 ORDER BY interval_start, step"
            );
            let rows = c.query(OP, sql, &[&job, &from, &to]).await?;
            rows.iter().map(|r| step_from_row(r, OP)).collect()
        })
        .await
    }

    pub async fn step_state(
        &self,
        job: &str,
        step: &str,
        interval_start: DateTime<Utc>,
    ) -> Result<Option<StepIntervalRecord>, StoreError> {
        const OP: &str = "step_state";
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let sql = select!(
                STEP_COLUMNS,
                "FROM step_intervals WHERE job = $1 AND interval_start = $2 AND step = $3"
            );
            let rows = c.query(OP, sql, &[&job, &interval_start, &step]).await?;
            rows.first().map(|r| step_from_row(r, OP)).transpose()
        })
        .await
    }

    pub async fn runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>, StoreError> {
        const OP: &str = "runs";
        let limit = i64::try_from(filter.limit).ok().filter(|&l| l > 0);
        let state = filter.state.map(RunState::as_str);
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            // One statement per filter shape, so each can use its index.
            let rows = match (&filter.job, state) {
                (None, None) => {
                    let sql = select!(RUN_COLUMNS, "FROM runs ORDER BY id DESC LIMIT $1");
                    c.query(OP, sql, &[&limit]).await?
                }
                (Some(job), None) => {
                    let sql = select!(
                        RUN_COLUMNS,
                        "FROM runs WHERE job = $2 ORDER BY id DESC LIMIT $1"
                    );
                    c.query(OP, sql, &[&limit, job]).await?
                }
                (None, Some(state)) => {
                    let sql = select!(
                        RUN_COLUMNS,
                        "FROM runs WHERE state = $2 ORDER BY id DESC LIMIT $1"
                    );
                    c.query(OP, sql, &[&limit, &state]).await?
                }
                (Some(job), Some(state)) => {
                    let sql = select!(
                        RUN_COLUMNS,
                        "FROM runs WHERE job = $2 AND state = $3 ORDER BY id DESC LIMIT $1"
                    );
                    c.query(OP, sql, &[&limit, job, &state]).await?
                }
            };
            rows.iter().map(|r| run_from_row(r, OP)).collect()
        })
        .await
    }

    pub async fn run(&self, run_id: i64) -> Result<Option<RunRecord>, StoreError> {
        const OP: &str = "run";
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let sql = select!(RUN_COLUMNS, "FROM runs WHERE id = $1");
            let rows = c.query(OP, sql, &[&run_id]).await?;
            rows.first().map(|r| run_from_row(r, OP)).transpose()
        })
        .await
    }

    pub async fn attempts(
        &self,
        job: &str,
        interval_start: DateTime<Utc>,
        step: Option<&str>,
    ) -> Result<Vec<AttemptRecord>, StoreError> {
        const OP: &str = "attempts";
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let rows = match step {
                Some(step) => {
                    let sql = select!(
                        ATTEMPT_COLUMNS,
                        "FROM step_attempts WHERE job = $1 AND interval_start = $2 \
                         AND step = $3 ORDER BY id"
                    );
                    c.query(OP, sql, &[&job, &interval_start, &step]).await?
                }
                None => {
                    let sql = select!(
                        ATTEMPT_COLUMNS,
                        "FROM step_attempts WHERE job = $1 AND interval_start = $2 ORDER BY id"
                    );
                    c.query(OP, sql, &[&job, &interval_start]).await?
                }
            };
            rows.iter().map(|r| attempt_from_row(r, OP)).collect()
        })
        .await
    }

    pub async fn clear(
        &self,
        job: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        steps: &[String],
    ) -> Result<u64, StoreError> {
        const OP: &str = "clear";
        let (from, to) = (clamp_bound(from), clamp_bound(to));
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            if steps.is_empty() {
                c.execute(
                    OP,
                    "UPDATE step_intervals SET state = 'pending', updated_at = now() \
                     WHERE job = $1 AND interval_start >= $2 AND interval_start < $3 \
                     AND state <> 'pending'",
                    &[&job, &from, &to],
                )
                .await
            } else {
                c.execute(
                    OP,
                    "UPDATE step_intervals SET state = 'pending', updated_at = now() \
                     WHERE job = $1 AND interval_start >= $2 AND interval_start < $3 \
                     AND state <> 'pending' AND step = ANY($4)",
                    &[&job, &from, &to, &steps],
                )
                .await
            }
        })
        .await
    }

    pub async fn record_consumer_lag(&self, rows: &[ConsumerLag]) -> Result<(), StoreError> {
        const OP: &str = "record_consumer_lag";
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            for r in rows {
                // The latest value and a sample of the history, in one statement.
                c.execute(
                    OP,
                    "WITH latest AS (INSERT INTO consumer_lag (job, step, topic, \"partition\", \
                     committed_offset, end_offset, lag, run_id, recorded_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                     ON CONFLICT (job, step, topic, \"partition\") DO UPDATE SET \
                     committed_offset = EXCLUDED.committed_offset, end_offset = EXCLUDED.end_offset, \
                     lag = EXCLUDED.lag, run_id = EXCLUDED.run_id, recorded_at = EXCLUDED.recorded_at) \
                     INSERT INTO consumer_lag_history (job, step, topic, \"partition\", lag, recorded_at) \
                     VALUES ($1, $2, $3, $4, $7, $9)",
                    &[
                        &r.job,
                        &r.step,
                        &r.topic,
                        &r.partition,
                        &r.committed_offset,
                        &r.end_offset,
                        &r.lag,
                        &r.run_id,
                        &r.recorded_at,
                    ],
                )
                .await?;
            }
            c.execute(
                OP,
                "DELETE FROM consumer_lag_history WHERE recorded_at < now() - make_interval(days => $1)",
                &[&(super::LAG_HISTORY_DAYS as i32)],
            )
            .await?;
            Ok(())
        })
        .await
    }

    pub async fn consumer_lag(&self, job: Option<&str>) -> Result<Vec<ConsumerLag>, StoreError> {
        const OP: &str = "consumer_lag";
        let job = job.map(str::to_string);
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let rows = c
                .query(
                    OP,
                    "SELECT job, step, topic, \"partition\", committed_offset, end_offset, lag, run_id, \
                     recorded_at FROM consumer_lag WHERE $1::text IS NULL OR job = $1 \
                     ORDER BY job, step, topic, \"partition\"",
                    &[&job],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(ConsumerLag {
                        job: r.try_get(0).map_err(err(OP))?,
                        step: r.try_get(1).map_err(err(OP))?,
                        topic: r.try_get(2).map_err(err(OP))?,
                        partition: r.try_get(3).map_err(err(OP))?,
                        committed_offset: r.try_get(4).map_err(err(OP))?,
                        end_offset: r.try_get(5).map_err(err(OP))?,
                        lag: r.try_get(6).map_err(err(OP))?,
                        run_id: r.try_get(7).map_err(err(OP))?,
                        recorded_at: r.try_get(8).map_err(err(OP))?,
                    })
                })
                .collect()
        })
        .await
    }

    pub async fn heartbeat(&self, run_id: i64) -> Result<(), StoreError> {
        const OP: &str = "heartbeat";
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let n = c
                .execute(
                    OP,
                    "UPDATE runs SET heartbeat_at = now() WHERE id = $1",
                    &[&run_id],
                )
                .await?;
            if n == 0 {
                return Err(StoreError::NotFound {
                    what: "run",
                    id: run_id,
                });
            }
            Ok(())
        })
        .await
    }

    pub async fn recover_stale(&self, stale_after: Duration) -> Result<u64, StoreError> {
        const OP: &str = "recover_stale";
        let micros = stale_duration(stale_after)
            .num_microseconds()
            .unwrap_or(i64::MAX);
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let rows = c
                .query(
                    OP,
                    "WITH stale AS ( \
                         UPDATE runs SET state = 'failed', ended_at = now() \
                         WHERE state = 'running' AND executor = 'cli' \
                         AND coalesce(heartbeat_at, started_at, created_at) \
                             <= now() - $1::bigint * interval '1 microsecond' \
                         RETURNING id \
                     ), steps AS ( \
                         UPDATE step_intervals SET state = 'pending', updated_at = now() \
                         WHERE run_id IN (SELECT id FROM stale) \
                         AND state IN ('running', 'up_for_retry') \
                         RETURNING 1 \
                     ), attempts AS ( \
                         UPDATE step_attempts SET state = 'failed', ended_at = now(), \
                         duration_ms = greatest(0, floor(extract(epoch FROM now() - started_at) \
                                                         * 1000))::bigint, \
                         error = coalesce(error, $2) \
                         WHERE run_id IN (SELECT id FROM stale) AND state = 'running' \
                         RETURNING 1 \
                     ) \
                     SELECT id FROM stale",
                    &[&micros, &INTERRUPTED],
                )
                .await?;
            for row in &rows {
                let run_id: i64 = row.try_get(0).map_err(err(OP))?;
                tracing::warn!(run_id, "marked a run interrupted: no heartbeat");
            }
            Ok(rows.len() as u64)
        })
        .await
    }
}

fn first<'a>(rows: &'a [Row], op: &'static str) -> Result<&'a Row, StoreError> {
    rows.first()
        .ok_or_else(|| StoreError::Corrupt(format!("{op}: the statement returned no row")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_parameter() {
        let (base, schema) = split_schema("postgres://u@h/db?schema=abc").unwrap();
        assert_eq!(
            (base.as_str(), schema.as_str()),
            ("postgres://u@h/db", "abc")
        );
        let (base, schema) = split_schema("postgres://u@h/db?sslmode=disable&schema=x_1").unwrap();
        assert_eq!(
            (base.as_str(), schema.as_str()),
            ("postgres://u@h/db?sslmode=disable", "x_1")
        );
        let (_, schema) = split_schema("postgres://u@h/db").unwrap();
        assert_eq!(schema, DEFAULT_SCHEMA);
        assert!(split_schema("postgres://u@h/db?schema=a;drop").is_err());
        assert!(split_schema("postgres://u@h/db?schema=1a").is_err());
    }
}
