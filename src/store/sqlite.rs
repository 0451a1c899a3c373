//! The SQLite metadata store: the embedded default (`state: sqlite://.cranium/state.db`).
//!
//! # Why this file exists
//!
//! Most projects run one cranium process against one file, and the engine persists every state
//! change (about four writes per step), so the store must be cheap and need no server. This is
//! the SQLite implementation of [`super::Store`]: one `rusqlite` connection (bundled SQLite) in
//! WAL mode with `synchronous=NORMAL` (a commit is a WAL append, no fsync; durable across
//! process crashes, at worst the last commits are lost on power loss), behind a mutex and used
//! from `tokio::task::spawn_blocking`, so async callers never block the runtime. Statements go
//! through rusqlite's prepared-statement cache and each write is its own short transaction.
//!
//! Other processes (a CLI next to a daemon) may open the same file: writers wait for each other
//! through `busy_timeout`, and multi-statement writes take the write lock up front
//! (`BEGIN IMMEDIATE`) so they never fail on a lock upgrade.
//!
//! Times are stored as fixed-width RFC 3339 UTC text with microseconds
//! (`2026-03-08T02:30:00.000000Z`), so text order is time order for the years 0000-9999.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use super::{
    clamp_bound, pending_migrations, stale_duration, AttemptRecord, AttemptResult, ConsumerLag,
    Interval, RunFilter, RunRecord, RunState, StepIntervalRecord, StepState, StoreError, Trigger,
    INTERRUPTED, SQLITE_MIGRATIONS,
};

mod alerts;
mod audit;
mod daemon;

/// How long a write waits for another process holding the write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The SQLite store. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

/// The error, and what to do about the ones an operator can fix.
pub fn describe_error(e: &rusqlite::Error) -> String {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => format!(
            "{e}: the file system that holds the store is full; free space there and run again \
             (the write was rolled back: the store is as it was before it)"
        ),
        Some(rusqlite::ErrorCode::ReadOnly) => {
            format!("{e}: the store file or its folder is not writable by this user")
        }
        _ => e.to_string(),
    }
}

fn err(op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { op, source }
}

/// A time as stored: RFC 3339, UTC, microseconds.
fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_ts(s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("time '{s}': {e}")))
}

fn parse_opt_ts(s: Option<String>) -> Result<Option<DateTime<Utc>>, StoreError> {
    s.as_deref().map(parse_ts).transpose()
}

fn parse_json(s: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("outputs JSON: {e}")))
}

fn to_json(v: &serde_json::Value) -> String {
    // Serializing a `Value` cannot fail (its map keys are strings).
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_string())
}

fn parse_attempt(n: i64) -> Result<u32, StoreError> {
    u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("attempt number {n}")))
}

/// "now", truncated to what is stored.
fn now() -> DateTime<Utc> {
    Utc::now()
}

const RUN_COLUMNS: &str = "id, job, interval_start, interval_end, state, \"trigger\", created_at, \
                           started_at, ended_at, owner";

fn run_from_row(row: &Row<'_>, op: &'static str) -> Result<RunRecord, StoreError> {
    let e = err(op);
    let start: String = row.get(2).map_err(&e)?;
    let end: String = row.get(3).map_err(&e)?;
    let state: String = row.get(4).map_err(&e)?;
    let trigger: String = row.get(5).map_err(&e)?;
    let created: String = row.get(6).map_err(&e)?;
    Ok(RunRecord {
        id: row.get(0).map_err(&e)?,
        job: row.get(1).map_err(&e)?,
        interval: Interval {
            start: parse_ts(&start)?,
            end: parse_ts(&end)?,
        },
        state: state.parse()?,
        trigger: trigger.parse()?,
        created_at: parse_ts(&created)?,
        started_at: parse_opt_ts(row.get(7).map_err(&e)?)?,
        ended_at: parse_opt_ts(row.get(8).map_err(&e)?)?,
        owner: row.get(9).map_err(&e)?,
    })
}

const STEP_COLUMNS: &str =
    "job, step, interval_start, interval_end, state, run_id, attempt, outputs, updated_at";

fn step_from_row(row: &Row<'_>, op: &'static str) -> Result<StepIntervalRecord, StoreError> {
    let e = err(op);
    let start: String = row.get(2).map_err(&e)?;
    let end: String = row.get(3).map_err(&e)?;
    let state: String = row.get(4).map_err(&e)?;
    let outputs: String = row.get(7).map_err(&e)?;
    let updated: String = row.get(8).map_err(&e)?;
    Ok(StepIntervalRecord {
        job: row.get(0).map_err(&e)?,
        step: row.get(1).map_err(&e)?,
        interval: Interval {
            start: parse_ts(&start)?,
            end: parse_ts(&end)?,
        },
        state: state.parse()?,
        run_id: row.get(5).map_err(&e)?,
        attempt: parse_attempt(row.get(6).map_err(&e)?)?,
        outputs: parse_json(&outputs)?,
        updated_at: parse_ts(&updated)?,
    })
}

const ATTEMPT_COLUMNS: &str = "id, run_id, job, step, interval_start, interval_end, attempt, \
                               state, started_at, ended_at, duration_ms, error, rows_affected, \
                               bytes, log_path, outputs";

fn attempt_from_row(row: &Row<'_>, op: &'static str) -> Result<AttemptRecord, StoreError> {
    let e = err(op);
    let start: String = row.get(4).map_err(&e)?;
    let end: String = row.get(5).map_err(&e)?;
    let state: String = row.get(7).map_err(&e)?;
    let started: String = row.get(8).map_err(&e)?;
    let outputs: String = row.get(15).map_err(&e)?;
    Ok(AttemptRecord {
        id: row.get(0).map_err(&e)?,
        run_id: row.get(1).map_err(&e)?,
        job: row.get(2).map_err(&e)?,
        step: row.get(3).map_err(&e)?,
        interval: Interval {
            start: parse_ts(&start)?,
            end: parse_ts(&end)?,
        },
        attempt: parse_attempt(row.get(6).map_err(&e)?)?,
        state: state.parse()?,
        started_at: parse_ts(&started)?,
        ended_at: parse_opt_ts(row.get(9).map_err(&e)?)?,
        duration_ms: row.get(10).map_err(&e)?,
        error: row.get(11).map_err(&e)?,
        rows_affected: row.get(12).map_err(&e)?,
        bytes: row.get(13).map_err(&e)?,
        log_path: row.get(14).map_err(&e)?,
        outputs: parse_json(&outputs)?,
    })
}

/// Opens the connection, sets it up and migrates (blocking).
fn open_blocking(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(err("opening the database file"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(err("setting busy_timeout"))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(err("enabling WAL mode"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), mode, "sqlite store: WAL mode not available");
    }
    conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
        .map_err(err("setting pragmas"))?;
    conn.set_prepared_statement_cache_capacity(64);
    migrate(&conn, path)?;
    Ok(conn)
}

/// Applies pending migrations in one `BEGIN IMMEDIATE` transaction (so two processes opening
/// the same new file do not both apply them).
fn migrate(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS cranium_schema_migrations (
             version    INTEGER PRIMARY KEY,
             applied_at TEXT    NOT NULL
         )",
    )
    .map_err(err("creating cranium_schema_migrations"))?;
    let current: i64 = conn
        .query_row(
            "SELECT coalesce(max(version), 0) FROM cranium_schema_migrations",
            [],
            |row| row.get(0),
        )
        .map_err(err("reading the schema version"))?;
    let store = format!("sqlite://{}", path.display());
    if pending_migrations(SQLITE_MIGRATIONS, current, &store)?.is_empty() {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(err("locking the database to migrate"))?;
    let result = (|| {
        let current: i64 = conn
            .query_row(
                "SELECT coalesce(max(version), 0) FROM cranium_schema_migrations",
                [],
                |row| row.get(0),
            )
            .map_err(err("reading the schema version"))?;
        for m in pending_migrations(SQLITE_MIGRATIONS, current, &store)? {
            conn.execute_batch(m.sql)
                .map_err(|e| StoreError::Migration(format!("{store}: applying {}: {e}", m.name)))?;
            conn.execute(
                "INSERT INTO cranium_schema_migrations (version, applied_at) VALUES (?1, ?2)",
                params![m.version, ts(now())],
            )
            .map_err(|e| StoreError::Migration(format!("{store}: recording {}: {e}", m.name)))?;
            tracing::info!(store = %store, migration = m.name, "applied store migration");
        }
        Ok(())
    })();
    match result {
        Ok(()) => conn
            .execute_batch("COMMIT")
            .map_err(err("committing migrations")),
        Err(e) => {
            // The original error matters more than a failed rollback.
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Whether the lease on (job, step, interval) still has the fencing token `token`.
fn lease_has_token(
    conn: &rusqlite::Connection,
    job: &str,
    step: &str,
    interval_start: &str,
    token: i64,
    op: &'static str,
) -> Result<bool, StoreError> {
    conn.prepare_cached(
        "SELECT 1 FROM step_leases WHERE job = ?1 AND interval_start = ?2 AND step = ?3 \
         AND token = ?4",
    )
    .map_err(err(op))?
    .query_row(params![job, interval_start, step, token], |_| Ok(()))
    .optional()
    .map(|r| r.is_some())
    .map_err(err(op))
}

/// [`StoreError::Fenced`] unless `fence` is None or the lease on (job, step, interval) still has
/// that token.
fn check_fence(
    conn: &rusqlite::Connection,
    job: &str,
    step: &str,
    interval_start: DateTime<Utc>,
    fence: Option<i64>,
    op: &'static str,
) -> Result<(), StoreError> {
    match fence {
        Some(token) if !lease_has_token(conn, job, step, &ts(interval_start), token, op)? => {
            Err(StoreError::Fenced {
                op,
                job: job.to_string(),
                step: step.to_string(),
                interval_start,
                token,
            })
        }
        _ => Ok(()),
    }
}

impl SqliteStore {
    /// Opens (creating it and its folder if missing) the database file at `path` and migrates.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|source| StoreError::Io {
                    path: parent.display().to_string(),
                    source,
                })?;
        }
        let path = path.to_path_buf();
        let p = path.clone();
        let conn = tokio::task::spawn_blocking(move || open_blocking(&p))
            .await
            .map_err(|e| StoreError::Thread {
                op: "open",
                message: e.to_string(),
            })??;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                conn: Mutex::new(conn),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn call<T, F>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock leaves no transaction open (rusqlite rolls back
            // on drop), so the connection is still usable.
            let mut conn = inner.conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Thread {
            op,
            message: e.to_string(),
        })?
    }

    pub async fn create_run(
        &self,
        job: &str,
        interval: Interval,
        trigger: Trigger,
    ) -> Result<i64, StoreError> {
        const OP: &str = "create_run";
        let job = job.to_string();
        self.call(OP, move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "INSERT INTO runs (job, interval_start, interval_end, state, \"trigger\", \
                     created_at) VALUES (?1, ?2, ?3, 'queued', ?4, ?5)",
                )
                .map_err(err(OP))?;
            stmt.insert(params![
                job,
                ts(interval.start),
                ts(interval.end),
                trigger.as_str(),
                ts(now())
            ])
            .map_err(err(OP))
        })
        .await
    }

    pub async fn set_run_state(&self, run_id: i64, state: RunState) -> Result<(), StoreError> {
        const OP: &str = "set_run_state";
        self.call(OP, move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "UPDATE runs SET state = ?2, \
                     started_at = CASE WHEN ?2 = 'running' THEN ?3 ELSE started_at END, \
                     heartbeat_at = CASE WHEN ?2 = 'running' THEN ?3 ELSE heartbeat_at END, \
                     ended_at = CASE WHEN ?2 IN ('success', 'failed') THEN ?3 \
                                     WHEN ?2 = 'running' THEN NULL ELSE ended_at END \
                     WHERE id = ?1",
                )
                .map_err(err(OP))?;
            let n = stmt
                .execute(params![run_id, state.as_str(), ts(now())])
                .map_err(err(OP))?;
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
        let owner = owner.map(str::to_string);
        let job = job.to_string();
        let pending: Vec<String> = pending.iter().map(|s| s.to_string()).collect();
        self.call(OP, move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err(OP))?;
            let now = ts(now());
            let n = tx
                .prepare_cached(
                    "UPDATE runs SET state = 'running', started_at = ?3, heartbeat_at = ?3, \
                     ended_at = NULL \
                     WHERE id = ?1 AND (?2 IS NULL OR (owner = ?2 AND state = 'running'))",
                )
                .map_err(err(OP))?
                .execute(params![run_id, owner, now])
                .map_err(err(OP))?;
            if n == 0 {
                return match owner {
                    Some(_) => Ok(false),
                    None => Err(StoreError::NotFound {
                        what: "run",
                        id: run_id,
                    }),
                };
            }
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT INTO step_intervals (job, step, interval_start, interval_end, \
                         state, run_id, attempt, outputs, updated_at) \
                         VALUES (?1, ?2, ?3, ?4, 'pending', ?5, 0, 'null', ?6) \
                         ON CONFLICT (job, interval_start, step) DO UPDATE SET \
                         interval_end = excluded.interval_end, state = excluded.state, \
                         run_id = excluded.run_id, attempt = excluded.attempt, \
                         updated_at = excluded.updated_at",
                    )
                    .map_err(err(OP))?;
                for step in &pending {
                    stmt.execute(params![
                        job,
                        step,
                        ts(interval.start),
                        ts(interval.end),
                        run_id,
                        now
                    ])
                    .map_err(err(OP))?;
                }
            }
            tx.commit().map_err(err(OP))?;
            Ok(true)
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
        let (job, step) = (job.to_string(), step.to_string());
        let outputs = outputs.map(to_json);
        self.call(OP, move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err(OP))?;
            check_fence(&tx, &job, &step, interval.start, fence, OP)?;
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO step_intervals (job, step, interval_start, interval_end, state, \
                     run_id, attempt, outputs, updated_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, coalesce(?8, 'null'), ?9) \
                     ON CONFLICT (job, interval_start, step) DO UPDATE SET \
                     interval_end = excluded.interval_end, state = excluded.state, \
                     run_id = excluded.run_id, attempt = excluded.attempt, \
                     outputs = CASE WHEN ?8 IS NULL THEN step_intervals.outputs \
                                    ELSE excluded.outputs END, \
                     updated_at = excluded.updated_at",
                )
                .map_err(err(OP))?;
            stmt.execute(params![
                job,
                step,
                ts(interval.start),
                ts(interval.end),
                state.as_str(),
                run_id,
                i64::from(attempt),
                outputs,
                ts(now())
            ])
            .map_err(err(OP))?;
            drop(stmt);
            tx.commit().map_err(err(OP))
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
        let (job, step) = (job.to_string(), step.to_string());
        let log_path = (!log_path.is_empty()).then(|| log_path.to_string());
        self.call(OP, move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err(OP))?;
            check_fence(&tx, &job, &step, interval.start, fence, OP)?;
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO step_attempts (run_id, job, step, interval_start, interval_end, \
                     attempt, state, started_at, log_path) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'running', ?7, ?8)",
                )
                .map_err(err(OP))?;
            let id = stmt
                .insert(params![
                    run_id,
                    job,
                    step,
                    ts(interval.start),
                    ts(interval.end),
                    i64::from(attempt),
                    ts(now()),
                    log_path
                ])
                .map_err(err(OP))?;
            drop(stmt);
            tx.commit().map_err(err(OP))?;
            Ok(id)
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
        let state = result.final_state();
        let error = result.error.clone();
        let (rows, bytes) = (result.rows_affected, result.bytes);
        let outputs = to_json(&result.outputs);
        self.call(OP, move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err(OP))?;
            let found: Option<(String, String, String, String)> = tx
                .prepare_cached(
                    "SELECT started_at, job, step, interval_start FROM step_attempts \
                     WHERE id = ?1",
                )
                .map_err(err(OP))?
                .query_row([attempt_id], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                })
                .optional()
                .map_err(err(OP))?;
            let Some((started, job, step, start)) = found else {
                return Err(StoreError::NotFound {
                    what: "attempt",
                    id: attempt_id,
                });
            };
            if let Some(token) = fence {
                if !lease_has_token(&tx, &job, &step, &start, token, OP)? {
                    return Err(StoreError::Fenced {
                        op: OP,
                        job,
                        step,
                        interval_start: parse_ts(&start)?,
                        token,
                    });
                }
            }
            let started = parse_ts(&started)?;
            let ended = now();
            let duration_ms = (ended - started).num_milliseconds().max(0);
            tx.prepare_cached(
                "UPDATE step_attempts SET state = ?2, ended_at = ?3, duration_ms = ?4, \
                 error = ?5, rows_affected = ?6, bytes = ?7, outputs = ?8 WHERE id = ?1",
            )
            .map_err(err(OP))?
            .execute(params![
                attempt_id,
                state.as_str(),
                ts(ended),
                duration_ms,
                error,
                rows,
                bytes,
                outputs
            ])
            .map_err(err(OP))?;
            if state == StepState::Success {
                // The step's record says success in the same transaction: a process killed
                // right after this never leaves a succeeded attempt under a record that will run
                // the step again.
                tx.prepare_cached(
                    "UPDATE step_intervals SET state = 'success', \
                     run_id = (SELECT run_id FROM step_attempts WHERE id = ?1), \
                     attempt = (SELECT attempt FROM step_attempts WHERE id = ?1), \
                     outputs = ?2, updated_at = ?3 \
                     WHERE job = ?4 AND step = ?5 AND interval_start = ?6",
                )
                .map_err(err(OP))?
                .execute(params![attempt_id, outputs, ts(ended), job, step, start])
                .map_err(err(OP))?;
            }
            tx.commit().map_err(err(OP))
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
        let job = job.to_string();
        let (from, to) = (ts(clamp_bound(from)), ts(clamp_bound(to)));
        self.call(OP, move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {STEP_COLUMNS} FROM step_intervals \
                     WHERE job = ?1 AND interval_start >= ?2 AND interval_start < ?3 \
                     ORDER BY interval_start, step"
                ))
                .map_err(err(OP))?;
            let mut rows = stmt.query(params![job, from, to]).map_err(err(OP))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(err(OP))? {
                out.push(step_from_row(row, OP)?);
            }
            Ok(out)
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
        let (job, step) = (job.to_string(), step.to_string());
        let start = ts(interval_start);
        self.call(OP, move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {STEP_COLUMNS} FROM step_intervals \
                     WHERE job = ?1 AND interval_start = ?2 AND step = ?3"
                ))
                .map_err(err(OP))?;
            let mut rows = stmt.query(params![job, start, step]).map_err(err(OP))?;
            match rows.next().map_err(err(OP))? {
                Some(row) => Ok(Some(step_from_row(row, OP)?)),
                None => Ok(None),
            }
        })
        .await
    }

    pub async fn runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>, StoreError> {
        const OP: &str = "runs";
        let job = filter.job.clone();
        let state = filter.state.map(RunState::as_str);
        let limit = i64::try_from(filter.limit)
            .ok()
            .filter(|&l| l > 0)
            .unwrap_or(-1);
        self.call(OP, move |conn| {
            // One statement per filter shape, so each can use its index.
            let mut sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE 1 = 1");
            if job.is_some() {
                sql.push_str(" AND job = ?2");
            }
            if state.is_some() {
                sql.push_str(" AND state = ?3");
            }
            sql.push_str(" ORDER BY id DESC LIMIT ?1");
            let mut stmt = conn.prepare_cached(&sql).map_err(err(OP))?;
            let mut idx = vec![(1usize, rusqlite::types::Value::from(limit))];
            if let Some(job) = job {
                idx.push((2, job.into()));
            }
            if let Some(state) = state {
                idx.push((3, state.to_string().into()));
            }
            for (i, v) in idx {
                stmt.raw_bind_parameter(i, v).map_err(err(OP))?;
            }
            let mut rows = stmt.raw_query();
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(err(OP))? {
                out.push(run_from_row(row, OP)?);
            }
            Ok(out)
        })
        .await
    }

    pub async fn run(&self, run_id: i64) -> Result<Option<RunRecord>, StoreError> {
        const OP: &str = "run";
        self.call(OP, move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"))
                .map_err(err(OP))?;
            let mut rows = stmt.query([run_id]).map_err(err(OP))?;
            match rows.next().map_err(err(OP))? {
                Some(row) => Ok(Some(run_from_row(row, OP)?)),
                None => Ok(None),
            }
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
        let job = job.to_string();
        let step = step.map(str::to_string);
        let start = ts(interval_start);
        self.call(OP, move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {ATTEMPT_COLUMNS} FROM step_attempts \
                     WHERE job = ?1 AND interval_start = ?2 AND (?3 IS NULL OR step = ?3) \
                     ORDER BY id"
                ))
                .map_err(err(OP))?;
            let mut rows = stmt.query(params![job, start, step]).map_err(err(OP))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(err(OP))? {
                out.push(attempt_from_row(row, OP)?);
            }
            Ok(out)
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
        let job = job.to_string();
        let (from, to) = (ts(clamp_bound(from)), ts(clamp_bound(to)));
        let steps = (!steps.is_empty()).then(|| to_json(&serde_json::json!(steps)));
        self.call(OP, move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "UPDATE step_intervals SET state = 'pending', updated_at = ?5 \
                     WHERE job = ?1 AND interval_start >= ?2 AND interval_start < ?3 \
                     AND state <> 'pending' \
                     AND (?4 IS NULL OR step IN (SELECT value FROM json_each(?4)))",
                )
                .map_err(err(OP))?;
            let n = stmt
                .execute(params![job, from, to, steps, ts(now())])
                .map_err(err(OP))?;
            Ok(n as u64)
        })
        .await
    }

    pub async fn record_consumer_lag(&self, rows: &[ConsumerLag]) -> Result<(), StoreError> {
        const OP: &str = "record_consumer_lag";
        let rows = rows.to_vec();
        self.call(OP, move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err(OP))?;
            {
                let mut st = tx
                    .prepare_cached(
                        "INSERT INTO consumer_lag (job, step, topic, \"partition\", committed_offset, \
                         end_offset, lag, run_id, recorded_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
                         ON CONFLICT (job, step, topic, \"partition\") DO UPDATE SET \
                         committed_offset = excluded.committed_offset, end_offset = excluded.end_offset, \
                         lag = excluded.lag, run_id = excluded.run_id, recorded_at = excluded.recorded_at",
                    )
                    .map_err(err(OP))?;
                for r in &rows {
                    st.execute(params![
                        r.job,
                        r.step,
                        r.topic,
                        r.partition,
                        r.committed_offset,
                        r.end_offset,
                        r.lag,
                        r.run_id,
                        ts(r.recorded_at)
                    ])
                    .map_err(err(OP))?;
                }
                let mut hist = tx
                    .prepare_cached(
                        "INSERT INTO consumer_lag_history (job, step, topic, \"partition\", lag, \
                         recorded_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )
                    .map_err(err(OP))?;
                for r in &rows {
                    hist.execute(params![r.job, r.step, r.topic, r.partition, r.lag, ts(r.recorded_at)])
                        .map_err(err(OP))?;
                }
                tx.prepare_cached("DELETE FROM consumer_lag_history WHERE recorded_at < ?1")
                    .map_err(err(OP))?
                    .execute([ts(now() - chrono::TimeDelta::days(super::LAG_HISTORY_DAYS))])
                    .map_err(err(OP))?;
            }
            tx.commit().map_err(err(OP))
        })
        .await
    }

    pub async fn consumer_lag(&self, job: Option<&str>) -> Result<Vec<ConsumerLag>, StoreError> {
        const OP: &str = "consumer_lag";
        let job = job.map(str::to_string);
        self.call(OP, move |conn| {
            let mut st = conn
                .prepare_cached(
                    "SELECT job, step, topic, \"partition\", committed_offset, end_offset, lag, run_id, \
                     recorded_at FROM consumer_lag WHERE ?1 IS NULL OR job = ?1 \
                     ORDER BY job, step, topic, \"partition\"",
                )
                .map_err(err(OP))?;
            let mut rows = st.query(params![job]).map_err(err(OP))?;
            let mut out = Vec::new();
            let e = err(OP);
            while let Some(r) = rows.next().map_err(&e)? {
                let at: String = r.get(8).map_err(&e)?;
                out.push(ConsumerLag {
                    job: r.get(0).map_err(&e)?,
                    step: r.get(1).map_err(&e)?,
                    topic: r.get(2).map_err(&e)?,
                    partition: r.get(3).map_err(&e)?,
                    committed_offset: r.get(4).map_err(&e)?,
                    end_offset: r.get(5).map_err(&e)?,
                    lag: r.get(6).map_err(&e)?,
                    run_id: r.get(7).map_err(&e)?,
                    recorded_at: parse_ts(&at)?,
                });
            }
            Ok(out)
        })
        .await
    }

    pub async fn heartbeat(&self, run_id: i64) -> Result<(), StoreError> {
        const OP: &str = "heartbeat";
        self.call(OP, move |conn| {
            let n = conn
                .prepare_cached("UPDATE runs SET heartbeat_at = ?2 WHERE id = ?1")
                .map_err(err(OP))?
                .execute(params![run_id, ts(now())])
                .map_err(err(OP))?;
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
        let stale_after = stale_duration(stale_after);
        self.call(OP, move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err(OP))?;
            let now = now();
            let Some(cutoff) = now.checked_sub_signed(stale_after) else {
                return Ok(0);
            };
            let stale: Vec<i64> = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT id FROM runs WHERE state = 'running' AND executor = 'cli' \
                         AND coalesce(heartbeat_at, started_at, created_at) <= ?1",
                    )
                    .map_err(err(OP))?;
                let ids = stmt
                    .query_map([ts(cutoff)], |row| row.get(0))
                    .map_err(err(OP))?
                    .collect::<Result<_, _>>()
                    .map_err(err(OP))?;
                ids
            };
            let now_s = ts(now);
            for &run_id in &stale {
                tx.prepare_cached("UPDATE runs SET state = 'failed', ended_at = ?2 WHERE id = ?1")
                    .map_err(err(OP))?
                    .execute(params![run_id, now_s])
                    .map_err(err(OP))?;
                tx.prepare_cached(
                    "UPDATE step_intervals SET state = 'pending', updated_at = ?2 \
                     WHERE run_id = ?1 AND state IN ('running', 'up_for_retry')",
                )
                .map_err(err(OP))?
                .execute(params![run_id, now_s])
                .map_err(err(OP))?;
                let attempts: Vec<(i64, String)> = {
                    let mut stmt = tx
                        .prepare_cached(
                            "SELECT id, started_at FROM step_attempts \
                             WHERE run_id = ?1 AND state = 'running'",
                        )
                        .map_err(err(OP))?;
                    let rows = stmt
                        .query_map([run_id], |row| Ok((row.get(0)?, row.get(1)?)))
                        .map_err(err(OP))?
                        .collect::<Result<_, _>>()
                        .map_err(err(OP))?;
                    rows
                };
                for (attempt_id, started) in attempts {
                    let duration_ms = parse_ts(&started)
                        .map(|s| (now - s).num_milliseconds().max(0))
                        .ok();
                    tx.prepare_cached(
                        "UPDATE step_attempts SET state = 'failed', ended_at = ?2, \
                         duration_ms = ?3, error = coalesce(error, ?4) WHERE id = ?1",
                    )
                    .map_err(err(OP))?
                    .execute(params![attempt_id, now_s, duration_ms, INTERRUPTED])
                    .map_err(err(OP))?;
                }
                tracing::warn!(run_id, "marked a run interrupted: no heartbeat");
            }
            tx.commit().map_err(err(OP))?;
            Ok(stale.len() as u64)
        })
        .await
    }
}
