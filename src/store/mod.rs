//! The metadata store: run history per (job, logical interval).
//!
//! # Why this module exists
//!
//! The engine must remember, across processes and restarts, what it has run: which intervals of
//! which steps succeeded (so a backfill only runs what is missing and "rerun failed" finds the
//! failures), every attempt with its error, timings, counts and log file (so an operator can see
//! why), and which runs a process was in the middle of when it died (so they are not left
//! "running" forever). This module is that memory, behind one API with two real backends:
//!
//! * **SQLite** ([`sqlite::SqliteStore`], `sqlite://PATH`): the embedded default, one file in the
//!   project (`.cranium/state.db`), WAL mode.
//! * **PostgreSQL** ([`postgres::PgStore`], `postgres://...?schema=NAME`): when several daemons
//!   share the work.
//!
//! Both share one logical schema (see `migrations/`), one set of semantics and one test suite
//! (`tests/store.rs`).
//!
//! # The data model
//!
//! * `runs`: one row per run of a job for one interval (`create_run`), with its state, trigger,
//!   creation/start/end times and the heartbeat that `recover_stale` reads. History.
//! * `step_attempts`: one row per attempt of a step (`begin_attempt`/`finish_attempt`). History:
//!   retries and reruns add rows, nothing deletes them.
//! * `step_intervals`: the latest state of each (job, step, interval), upserted by
//!   `set_step_state`. This is the source of truth: "what is missing" is "which intervals have no
//!   `success` record", "rerun failed" is "which have a `failed` one", and `clear` sets records
//!   back to `pending`.
//!
//! Migrations are versioned `.sql` files under `migrations/{sqlite,postgres}/NNNN_name.sql`,
//! embedded in the binary and applied on open; applied versions are recorded in
//! `cranium_schema_migrations(version, applied_at)`. Opening a store written by a newer binary
//! (a version this binary does not know) is refused rather than risking a misread.
//!
//! Times are UTC: RFC 3339 text with microseconds in SQLite, `timestamptz` in PostgreSQL; both
//! keep microsecond precision, so a record reads back equal on either backend.

pub mod postgres;
pub mod sqlite;

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use chrono::{DateTime, Utc};

pub use crate::schedule::Interval;

/// The error text `recover_stale` writes into interrupted attempts.
pub const INTERRUPTED: &str = "interrupted: the process running it stopped";

// ---------------------------------------------------------------------------------------------
// States
// ---------------------------------------------------------------------------------------------

/// A stored name that is not one of an enum's values (`FromStr` for the state enums).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} '{value}' (expected one of: {expected})")]
pub struct UnknownValue {
    pub what: &'static str,
    pub value: String,
    pub expected: &'static str,
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal, { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The snake_case name stored in the database and shown to users.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownValue {
                        what: $what,
                        value: s.to_string(),
                        expected: concat!($($text, " "),+),
                    }),
                }
            }
        }
    };
}

string_enum!(
    /// The state of one step for one interval (and of one attempt).
    StepState, "step state", {
        /// Not run yet, or cleared to run again.
        Pending => "pending",
        Running => "running",
        Success => "success",
        Failed => "failed",
        /// Failed, and will be retried.
        UpForRetry => "up_for_retry",
        /// Not run because a step it depends on failed.
        UpstreamFailed => "upstream_failed",
        Skipped => "skipped",
    }
);

impl StepState {
    /// Success, Failed, UpstreamFailed and Skipped: nothing more will happen to it in this run.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StepState::Success | StepState::Failed | StepState::UpstreamFailed | StepState::Skipped
        )
    }
}

string_enum!(
    /// The state of a run (one job, one interval).
    RunState, "run state", {
        Queued => "queued",
        Running => "running",
        Success => "success",
        Failed => "failed",
    }
);

string_enum!(
    /// Why a run was created.
    Trigger, "trigger", {
        Schedule => "schedule",
        Manual => "manual",
        Backfill => "backfill",
    }
);

string_enum!(
    /// What a request from the command line asks the daemon to do.
    RequestKind, "request kind", {
        /// `cranium trigger JOB [--at T]`: one interval, now.
        Trigger => "trigger",
        /// `cranium backfill ... --submit`: a range of intervals.
        Backfill => "backfill",
    }
);

string_enum!(
    /// Where a request is.
    RequestState, "request state", {
        Pending => "pending",
        Running => "running",
        Done => "done",
        Failed => "failed",
        Cancelled => "cancelled",
    }
);

impl RequestState {
    /// Done, Failed or Cancelled.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RequestState::Done | RequestState::Failed | RequestState::Cancelled
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Everything that can go wrong in the store. Database errors name the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite store: {op}: {}", sqlite::describe_error(.source))]
    Sqlite {
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("postgres store: {op}: {}", postgres::describe_error(.source))]
    Postgres {
        op: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    /// A migration could not be applied, or the store's schema is newer than this binary.
    #[error("store migration: {0}")]
    Migration(String),
    /// The `state:` URL is not `sqlite://PATH` or `postgres://...`, or has a bad parameter.
    #[error("bad store url {0}")]
    BadUrl(String),
    /// A stored value that cannot be read back (unknown state name, bad time, bad JSON).
    #[error("corrupt value in the store: {0}")]
    Corrupt(String),
    /// A PostgreSQL operation did not finish within the timeout (30 s).
    #[error("postgres store: {0}: timed out after 30s")]
    Timeout(&'static str),
    /// A check that must be quick (the leader lock's session) got no answer in time.
    #[error("postgres store: {0}: no answer within {secs}s", secs = .1.as_secs())]
    NoAnswer(&'static str, std::time::Duration),
    /// An operation on a run or attempt id that does not exist.
    #[error("{what} {id} does not exist in the store")]
    NotFound { what: &'static str, id: i64 },
    /// A write about an attempt whose lease has since gone to another runner (or was taken back
    /// from a daemon judged dead): refused, so that a runner that lost its lease changes nothing.
    #[error(
        "refused a late write ({op}) for {job}.{step}, interval starting {interval_start}: this \
         runner's lease (fencing token {token}) was taken over by another runner, which runs the \
         step now; this attempt's result is discarded"
    )]
    Fenced {
        op: &'static str,
        job: String,
        step: String,
        interval_start: DateTime<Utc>,
        token: i64,
    },
    /// Creating the SQLite file's folder failed.
    #[error("sqlite store: cannot create folder {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The blocking task running a SQLite operation panicked or was cancelled.
    #[error("sqlite store: {op}: the database thread failed: {message}")]
    Thread { op: &'static str, message: String },
}

impl StoreError {
    /// The store could not be reached (refused or lost connection, no answer in time, a server
    /// shutting down or starting up), as opposed to a refusal or a bad value: the same write may
    /// succeed once the store is back, so a runner holding a finished step's result retries it.
    pub fn is_unreachable(&self) -> bool {
        match self {
            StoreError::Timeout(_) | StoreError::NoAnswer(..) => true,
            StoreError::Postgres { source, .. } => match source.code() {
                // No SQLSTATE: the connection itself failed (refused, reset, closed).
                None => true,
                // 08: connection exception; 57P01..57P03: admin shutdown, crash shutdown,
                // cannot connect now (starting up or shutting down).
                Some(code) => {
                    let c = code.code();
                    c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03")
                }
            },
            StoreError::Sqlite { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            _ => false,
        }
    }
}

impl From<UnknownValue> for StoreError {
    fn from(e: UnknownValue) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------------------

/// One run of a job for one interval.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub id: i64,
    pub job: String,
    pub interval: Interval,
    pub state: RunState,
    pub trigger: Trigger,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// The daemon executing it (or that last did), for a daemon run taken from the queue.
    pub owner: Option<String>,
}

/// One attempt of one step (history).
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    pub id: i64,
    pub run_id: i64,
    pub job: String,
    pub step: String,
    pub interval: Interval,
    pub attempt: u32,
    pub state: StepState,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub error: Option<String>,
    pub rows_affected: Option<i64>,
    pub bytes: Option<i64>,
    pub log_path: Option<String>,
    pub outputs: serde_json::Value,
}

/// The latest state of one step for one interval (the source of truth).
#[derive(Debug, Clone, PartialEq)]
pub struct StepIntervalRecord {
    pub job: String,
    pub step: String,
    pub interval: Interval,
    pub state: StepState,
    pub run_id: Option<i64>,
    pub attempt: u32,
    pub outputs: serde_json::Value,
    pub updated_at: DateTime<Utc>,
}

/// What `finish_attempt` records.
#[derive(Debug, Clone, Default)]
pub struct AttemptResult {
    /// The attempt's final state: Success, Failed or UpForRetry. `None`: Failed when `error` is
    /// set, else Success.
    pub state: Option<StepState>,
    pub error: Option<String>,
    pub rows_affected: Option<i64>,
    pub bytes: Option<i64>,
    pub outputs: serde_json::Value,
}

impl AttemptResult {
    /// The state to store: `state`, or Failed/Success from `error`.
    pub fn final_state(&self) -> StepState {
        self.state.unwrap_or(if self.error.is_some() {
            StepState::Failed
        } else {
            StepState::Success
        })
    }
}

/// How far a step's consumer group is behind one topic partition, after its latest successful run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConsumerLag {
    pub job: String,
    pub step: String,
    pub topic: String,
    pub partition: i32,
    /// The next offset the group will read.
    pub committed_offset: i64,
    /// The offset after the partition's last record when the lag was measured.
    pub end_offset: i64,
    pub lag: i64,
    pub run_id: Option<i64>,
    pub recorded_at: DateTime<Utc>,
}

/// What the scheduler decided for one interval of a job.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Create a run (executed by the daemon) with this rank.
    Run { priority: i32 },
    /// Pass the interval over (`catchup: false`), with the reason shown by `cranium runs`.
    Skipped { reason: String },
}

/// An interval the scheduler passed over.
#[derive(Debug, Clone, PartialEq)]
pub struct SkippedInterval {
    pub job: String,
    pub interval: Interval,
    pub reason: String,
    pub created_at: DateTime<Utc>,
}

/// A run that a daemon executes, with the request that made it (if any) and its rank.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonRun {
    pub run: RunRecord,
    pub request_id: Option<i64>,
    pub priority: i32,
}

/// The answer to a claim on a step of an interval.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The caller holds the lease now: it may run an attempt. `token` is the lease's fencing
    /// token (it grows with every change of holder); the attempt's writes name it, and the store
    /// refuses them once another runner took the lease over.
    Acquired { token: i64 },
    /// The step already succeeded for this interval (by another runner): its outputs.
    Done { outputs: serde_json::Value },
    /// Another runner holds an unexpired lease.
    Held {
        owner: String,
        expires_at: DateTime<Utc>,
    },
    /// The step's pool has every slot taken, across every runner on the store: ask again when
    /// one is free.
    Full { pool: String },
}

impl Claim {
    /// Whether the caller holds the lease now.
    pub fn is_acquired(&self) -> bool {
        matches!(self, Claim::Acquired { .. })
    }
}

/// A lease on a step of an interval: who runs it, until when (renewed while it runs).
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseRecord {
    pub job: String,
    pub step: String,
    pub interval_start: DateTime<Utc>,
    pub owner: String,
    pub run_id: Option<i64>,
    pub acquired_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A request from the command line to the daemon.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRecord {
    pub id: i64,
    pub kind: RequestKind,
    pub job: String,
    /// What to run: `at`, or `from`/`to` with `steps`, `rerun`, `max_active_runs` (JSON).
    pub spec: serde_json::Value,
    pub priority: i32,
    pub state: RequestState,
    pub message: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A daemon's heartbeat row.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonRecord {
    pub id: String,
    pub pid: i64,
    pub host: String,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    pub stopped_at: Option<DateTime<Utc>>,
    /// What the daemon last said of itself (project hash, running steps, ...).
    pub status: serde_json::Value,
}

string_enum!(
    /// Where an alert is, for one channel.
    AlertState, "alert state", {
        /// Waiting to be sent (again, after a failed try).
        Queued => "queued",
        Sent => "sent",
        /// Given up after its last try.
        Failed => "failed",
        /// Held back by the channel's throttle (`repeat_interval`); counted in the next one sent.
        Suppressed => "suppressed",
    }
);

/// An alert to queue for one channel.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAlert {
    pub channel: String,
    pub event: String,
    pub job: Option<String>,
    pub step: Option<String>,
    pub interval_start: Option<DateTime<Utc>>,
    pub run_id: Option<i64>,
    pub summary: String,
    /// The whole alert, as channels receive it.
    pub payload: serde_json::Value,
    /// What the throttle counts by (job, step and event); None: never throttled.
    pub throttle_key: Option<String>,
    /// At most one alert per key and channel in this time.
    pub repeat_interval: std::time::Duration,
}

/// What `enqueue_alert` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Queued (its id); `suppressed` alerts of its key were held back since the last one.
    Queued { id: i64, suppressed: i64 },
    /// Held back by the throttle (recorded as suppressed).
    Suppressed { id: i64 },
}

/// One alert for one channel.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRecord {
    pub id: i64,
    pub channel: String,
    pub event: String,
    pub job: Option<String>,
    pub step: Option<String>,
    pub interval_start: Option<DateTime<Utc>>,
    pub run_id: Option<i64>,
    pub summary: String,
    pub payload: serde_json::Value,
    pub state: AlertState,
    pub tries: u32,
    pub next_try_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

/// How long consumer lag samples are kept.
pub const LAG_HISTORY_DAYS: i64 = 30;

/// A step's consumer lag (over all its topic partitions) when it was recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct LagSample {
    pub job: String,
    pub step: String,
    pub recorded_at: DateTime<Utc>,
    pub lag: i64,
}

/// An action taken in the dashboard, to record.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAction {
    /// The form's one-time value: a second submit of the same form is not recorded again.
    pub nonce: String,
    pub who: String,
    /// `pause`, `unpause`, `trigger`, `clear`, `backfill`, `cancel`.
    pub action: String,
    pub job: Option<String>,
    pub detail: serde_json::Value,
}

/// An action taken in the dashboard.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionRecord {
    pub id: i64,
    pub who: String,
    pub action: String,
    pub job: Option<String>,
    pub detail: serde_json::Value,
    pub outcome: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Which runs `runs` returns.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub job: Option<String>,
    pub state: Option<RunState>,
    /// At most this many (the newest); 0 = no limit.
    pub limit: usize,
}

// ---------------------------------------------------------------------------------------------
// Migrations
// ---------------------------------------------------------------------------------------------

/// One embedded migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

/// SQLite migrations, in version order.
pub const SQLITE_MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_init.sql",
        sql: include_str!("migrations/sqlite/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "0002_consumer_lag.sql",
        sql: include_str!("migrations/sqlite/0002_consumer_lag.sql"),
    },
    Migration {
        version: 3,
        name: "0003_daemon.sql",
        sql: include_str!("migrations/sqlite/0003_daemon.sql"),
    },
    Migration {
        version: 4,
        name: "0004_alerts.sql",
        sql: include_str!("migrations/sqlite/0004_alerts.sql"),
    },
    Migration {
        version: 5,
        name: "0005_request_claims.sql",
        sql: include_str!("migrations/sqlite/0005_request_claims.sql"),
    },
    Migration {
        version: 6,
        name: "0006_fencing.sql",
        sql: include_str!("migrations/sqlite/0006_fencing.sql"),
    },
    Migration {
        version: 7,
        name: "0007_fleet.sql",
        sql: include_str!("migrations/sqlite/0007_fleet.sql"),
    },
    Migration {
        version: 8,
        name: "0008_actions.sql",
        sql: include_str!("migrations/sqlite/0008_actions.sql"),
    },
];

/// PostgreSQL migrations, in version order.
pub const POSTGRES_MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_init.sql",
        sql: include_str!("migrations/postgres/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "0002_consumer_lag.sql",
        sql: include_str!("migrations/postgres/0002_consumer_lag.sql"),
    },
    Migration {
        version: 3,
        name: "0003_daemon.sql",
        sql: include_str!("migrations/postgres/0003_daemon.sql"),
    },
    Migration {
        version: 4,
        name: "0004_alerts.sql",
        sql: include_str!("migrations/postgres/0004_alerts.sql"),
    },
    Migration {
        version: 5,
        name: "0005_request_claims.sql",
        sql: include_str!("migrations/postgres/0005_request_claims.sql"),
    },
    Migration {
        version: 6,
        name: "0006_fencing.sql",
        sql: include_str!("migrations/postgres/0006_fencing.sql"),
    },
    Migration {
        version: 7,
        name: "0007_fleet.sql",
        sql: include_str!("migrations/postgres/0007_fleet.sql"),
    },
    Migration {
        version: 8,
        name: "0008_actions.sql",
        sql: include_str!("migrations/postgres/0008_actions.sql"),
    },
];

/// The migrations after `current`, or an error when the store is newer than this binary.
fn pending_migrations(
    migrations: &'static [Migration],
    current: i64,
    store: &str,
) -> Result<&'static [Migration], StoreError> {
    let latest = migrations.last().map_or(0, |m| m.version);
    if current > latest {
        return Err(StoreError::Migration(format!(
            "the store {store} has schema version {current}, newer than this cranium binary \
             knows (up to {latest}); it was written by a newer cranium: upgrade cranium to use it"
        )));
    }
    let first = migrations.partition_point(|m| m.version <= current);
    Ok(&migrations[first..])
}

// ---------------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------------

/// A metadata store: SQLite or PostgreSQL. Cheap to clone (shared connections inside).
#[derive(Clone)]
pub enum Store {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Store::Sqlite(s) => fmt::Debug::fmt(s, f),
            Store::Postgres(s) => fmt::Debug::fmt(s, f),
        }
    }
}

macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match $self {
            Store::Sqlite(s) => s.$method($($arg),*).await,
            Store::Postgres(s) => s.$method($($arg),*).await,
        }
    };
}

impl Store {
    /// Opens `sqlite://PATH` (relative to `root` unless absolute; parent folders are created) or
    /// `postgres://...[?schema=NAME]` (`postgresql://` too; schema default `cranium`, created if
    /// missing), and applies pending migrations.
    pub async fn open(url: &str, root: &Path) -> Result<Store, StoreError> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(StoreError::BadUrl(format!(
                    "'{url}': expected sqlite://PATH, e.g. sqlite://.cranium/state.db"
                )));
            }
            let path = Path::new(path);
            let path = if path.is_absolute() {
                path.to_path_buf()
            } else {
                root.join(path)
            };
            Ok(Store::Sqlite(sqlite::SqliteStore::open(&path).await?))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Store::Postgres(postgres::PgStore::open(url).await?))
        } else {
            Err(StoreError::BadUrl(format!(
                "'{}': expected sqlite://PATH or postgres://USER@HOST/DB[?schema=NAME]",
                redact_url(url)
            )))
        }
    }

    /// "sqlite" or "postgres".
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Creates a run in state Queued; returns its id.
    pub async fn create_run(
        &self,
        job: &str,
        interval: Interval,
        trigger: Trigger,
    ) -> Result<i64, StoreError> {
        dispatch!(self.create_run(job, interval, trigger))
    }

    /// Running sets started_at and the heartbeat (and clears ended_at, for a run started
    /// again); Success/Failed set ended_at. Errors with `NotFound` for an unknown run.
    pub async fn set_run_state(&self, run_id: i64, state: RunState) -> Result<(), StoreError> {
        dispatch!(self.set_run_state(run_id, state))
    }

    /// Starts executing run `run_id` in one transaction: the run becomes running and each of
    /// `pending` gets its interval record set pending (attempt 0, outputs kept). With `owner`
    /// (a daemon run taken from the queue) this happens only while the run is still running
    /// under that owner: false, and nothing written, when another daemon took it over
    /// meanwhile (this one was stalled past the run's heartbeat), so a late start can never
    /// reset what the other daemon recorded.
    pub async fn start_run(
        &self,
        run_id: i64,
        owner: Option<&str>,
        job: &str,
        interval: Interval,
        pending: &[&str],
    ) -> Result<bool, StoreError> {
        dispatch!(self.start_run(run_id, owner, job, interval, pending))
    }

    /// Upserts the step's record for this interval (state, run, attempt; outputs replaced when
    /// `Some`, kept otherwise; JSON null for a new record without outputs).
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
    ) -> Result<(), StoreError> {
        dispatch!(self.set_step_state(run_id, job, step, interval, state, attempt, outputs, None))
    }

    /// [`Store::set_step_state`] for the holder of the step's lease: refused with
    /// [`StoreError::Fenced`] unless the lease still has the fencing token `token`.
    #[allow(clippy::too_many_arguments)]
    pub async fn set_step_state_fenced(
        &self,
        run_id: i64,
        job: &str,
        step: &str,
        interval: Interval,
        state: StepState,
        attempt: u32,
        outputs: Option<&serde_json::Value>,
        token: i64,
    ) -> Result<(), StoreError> {
        dispatch!(self.set_step_state(
            run_id,
            job,
            step,
            interval,
            state,
            attempt,
            outputs,
            Some(token)
        ))
    }

    /// Records the start of an attempt (state Running); returns its id.
    pub async fn begin_attempt(
        &self,
        run_id: i64,
        job: &str,
        step: &str,
        interval: Interval,
        attempt: u32,
        log_path: &str,
    ) -> Result<i64, StoreError> {
        dispatch!(self.begin_attempt(run_id, job, step, interval, attempt, log_path, None))
    }

    /// [`Store::begin_attempt`] for the holder of the step's lease (see
    /// [`Store::set_step_state_fenced`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn begin_attempt_fenced(
        &self,
        run_id: i64,
        job: &str,
        step: &str,
        interval: Interval,
        attempt: u32,
        log_path: &str,
        token: i64,
    ) -> Result<i64, StoreError> {
        dispatch!(self.begin_attempt(run_id, job, step, interval, attempt, log_path, Some(token)))
    }

    /// Records the end of an attempt: final state, ended_at, duration_ms, error, counts, outputs.
    pub async fn finish_attempt(
        &self,
        attempt_id: i64,
        result: &AttemptResult,
    ) -> Result<(), StoreError> {
        dispatch!(self.finish_attempt(attempt_id, result, None))
    }

    /// [`Store::finish_attempt`] for the holder of the step's lease (see
    /// [`Store::set_step_state_fenced`]).
    pub async fn finish_attempt_fenced(
        &self,
        attempt_id: i64,
        result: &AttemptResult,
        token: i64,
    ) -> Result<(), StoreError> {
        dispatch!(self.finish_attempt(attempt_id, result, Some(token)))
    }

    /// Records of steps of `job` whose interval start is in `[from, to)`, ordered by interval
    /// start then step.
    pub async fn step_states(
        &self,
        job: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<StepIntervalRecord>, StoreError> {
        dispatch!(self.step_states(job, from, to))
    }

    /// The record of one step for the interval starting at `interval_start`.
    pub async fn step_state(
        &self,
        job: &str,
        step: &str,
        interval_start: DateTime<Utc>,
    ) -> Result<Option<StepIntervalRecord>, StoreError> {
        dispatch!(self.step_state(job, step, interval_start))
    }

    /// Runs matching the filter, newest first.
    pub async fn runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>, StoreError> {
        dispatch!(self.runs(filter))
    }

    /// One run.
    pub async fn run(&self, run_id: i64) -> Result<Option<RunRecord>, StoreError> {
        dispatch!(self.run(run_id))
    }

    /// Attempts for one interval of a job (optionally one step), oldest first.
    pub async fn attempts(
        &self,
        job: &str,
        interval_start: DateTime<Utc>,
        step: Option<&str>,
    ) -> Result<Vec<AttemptRecord>, StoreError> {
        dispatch!(self.attempts(job, interval_start, step))
    }

    /// Marks the given steps (all steps of the job when empty) of intervals starting in
    /// `[from, to)` as Pending, so they run again. History is kept. Returns how many records
    /// changed (records already Pending are not counted).
    pub async fn clear(
        &self,
        job: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        steps: &[String],
    ) -> Result<u64, StoreError> {
        dispatch!(self.clear(job, from, to, steps))
    }

    /// Records that the process running `run_id` is alive.
    /// Replaces the recorded lag of each (job, step, topic, partition) in `rows`.
    pub async fn record_consumer_lag(&self, rows: &[ConsumerLag]) -> Result<(), StoreError> {
        dispatch!(self.record_consumer_lag(rows))
    }

    /// The latest lag of every partition read by `job` (every job when None), by job, step, topic,
    /// partition.
    pub async fn consumer_lag(&self, job: Option<&str>) -> Result<Vec<ConsumerLag>, StoreError> {
        dispatch!(self.consumer_lag(job))
    }

    pub async fn heartbeat(&self, run_id: i64) -> Result<(), StoreError> {
        dispatch!(self.heartbeat(run_id))
    }

    /// Runs left Running with no heartbeat for `stale_after` (the process died): marks them
    /// Failed and their Running attempts Failed with the error [`INTERRUPTED`], and puts their
    /// Running (and UpForRetry) step records back to Pending: an interruption is not a failure of
    /// the step, so the next run or backfill runs it again. Returns how many runs.
    pub async fn recover_stale(&self, stale_after: std::time::Duration) -> Result<u64, StoreError> {
        dispatch!(self.recover_stale(stale_after))
    }
}

// The daemon's part of the store: scheduling decisions, leases, pauses, requests, heartbeats.
impl Store {
    /// Records the scheduler's decision for `interval` of `job`, once: the (job, interval) key is
    /// unique, so a second decision (after a restart, a kill between deciding and inserting, or a
    /// changed schedule) is a no-op. With `Decision::Run` a daemon run (trigger `schedule`, state
    /// queued) is created in the same transaction and its id returned; `None` when the interval
    /// was decided before or is skipped.
    pub async fn schedule_interval(
        &self,
        job: &str,
        interval: Interval,
        decision: &Decision,
    ) -> Result<Option<i64>, StoreError> {
        dispatch!(self.schedule_interval(job, interval, decision))
    }

    /// The start of the latest interval the scheduler decided, per job.
    pub async fn last_scheduled(
        &self,
    ) -> Result<std::collections::HashMap<String, DateTime<Utc>>, StoreError> {
        dispatch!(self.last_scheduled())
    }

    /// Intervals passed over, newest first (`job` None: every job; `limit` 0: all).
    pub async fn skipped_intervals(
        &self,
        job: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SkippedInterval>, StoreError> {
        dispatch!(self.skipped_intervals(job, limit))
    }

    /// Creates a run that a daemon executes (state queued), outside the schedule: a trigger or a
    /// submitted backfill's interval.
    pub async fn create_daemon_run(
        &self,
        job: &str,
        interval: Interval,
        trigger: Trigger,
        request_id: Option<i64>,
        priority: i32,
    ) -> Result<i64, StoreError> {
        dispatch!(self.create_daemon_run(job, interval, trigger, request_id, priority))
    }

    /// Takes a queued daemon run for execution (it becomes running, with a fresh heartbeat);
    /// false when it is not queued any more (another daemon took it first). Two daemons that
    /// both see a queued run never both execute it. `owner` (the daemon's id) is recorded on
    /// the run.
    pub async fn take_queued_run(&self, run_id: i64, owner: &str) -> Result<bool, StoreError> {
        dispatch!(self.take_queued_run(run_id, owner))
    }

    /// Daemon runs waiting to be executed (queued), oldest first.
    pub async fn queued_daemon_runs(&self) -> Result<Vec<DaemonRun>, StoreError> {
        dispatch!(self.queued_daemon_runs())
    }

    /// Daemon runs queued or running per job, backfills aside (what `max_active_runs` counts
    /// across every daemon of the store).
    pub async fn open_daemon_runs(
        &self,
    ) -> Result<std::collections::HashMap<String, usize>, StoreError> {
        dispatch!(self.open_daemon_runs())
    }

    /// Daemon runs left running with no heartbeat for `stale_after` (their daemon died): back to
    /// queued so that a daemon resumes them, their running attempts failed with [`INTERRUPTED`],
    /// their running step records pending, their leases released. Returns the run ids.
    pub async fn requeue_stale(
        &self,
        stale_after: std::time::Duration,
    ) -> Result<Vec<i64>, StoreError> {
        dispatch!(self.requeue_stale(stale_after))
    }

    /// Claims `step` of the interval starting at `interval_start` for `owner` until now + `ttl`.
    /// `Done` when its record says success and `skip_done` (or this run recorded it: a run
    /// taken over from a daemon that stopped does not redo what it finished); `Held` while another owner's lease
    /// has not expired. Taking a lease marks the step's attempts still recorded as running (their
    /// runner is gone: its lease expired) failed with [`INTERRUPTED`]. A claim by the owner of a
    /// lease that has not expired renews it (new expiry and run, `acquired_at` kept) and
    /// interrupts nothing. `pool` (name, size): the step's pool, whose size counts every
    /// runner's unexpired leases on the store; `Full` when they fill it.
    #[allow(clippy::too_many_arguments)]
    pub async fn claim_step(
        &self,
        job: &str,
        step: &str,
        interval_start: DateTime<Utc>,
        owner: &str,
        run_id: i64,
        ttl: std::time::Duration,
        skip_done: bool,
        pool: Option<(&str, u32)>,
    ) -> Result<Claim, StoreError> {
        dispatch!(self.claim_step(
            job,
            step,
            interval_start,
            owner,
            run_id,
            ttl,
            skip_done,
            pool
        ))
    }

    /// Extends every unexpired lease of `owner` to now + `ttl`; returns the (job, step, interval
    /// start) of each. An expired lease is not revived: another runner may be taking it over, so
    /// its holder must stop (see [`crate::engine::leases::LeaseBook`]).
    pub async fn renew_leases(
        &self,
        owner: &str,
        ttl: std::time::Duration,
    ) -> Result<Vec<(String, String, DateTime<Utc>)>, StoreError> {
        dispatch!(self.renew_leases(owner, ttl))
    }

    /// Releases `owner`'s lease on one step of an interval.
    pub async fn release_step(
        &self,
        job: &str,
        step: &str,
        interval_start: DateTime<Utc>,
        owner: &str,
    ) -> Result<(), StoreError> {
        dispatch!(self.release_step(job, step, interval_start, owner))
    }

    /// Releases every lease of `owner`; returns how many.
    pub async fn release_leases(&self, owner: &str) -> Result<u64, StoreError> {
        dispatch!(self.release_leases(owner))
    }

    /// Every lease (expired ones too), by job, interval and step.
    pub async fn leases(&self) -> Result<Vec<LeaseRecord>, StoreError> {
        dispatch!(self.leases())
    }

    /// Pauses or unpauses a job; true when that changed something.
    pub async fn set_paused(&self, job: &str, paused: bool) -> Result<bool, StoreError> {
        dispatch!(self.set_paused(job, paused))
    }

    /// Paused jobs, with when they were paused.
    pub async fn paused_jobs(&self) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        dispatch!(self.paused_jobs())
    }

    /// Stores a request for the daemon (state pending); returns its id.
    pub async fn submit_request(
        &self,
        kind: RequestKind,
        job: &str,
        spec: &serde_json::Value,
        priority: i32,
    ) -> Result<i64, StoreError> {
        dispatch!(self.submit_request(kind, job, spec, priority))
    }

    /// Requests, newest first (`open_only`: pending and running, oldest first; `limit` 0: all).
    pub async fn requests(
        &self,
        open_only: bool,
        limit: usize,
    ) -> Result<Vec<RequestRecord>, StoreError> {
        dispatch!(self.requests(open_only, limit))
    }

    /// Claims for `owner` until now + `ttl` every open request that no live daemon holds (or that
    /// `owner` holds: the claim is renewed); returns the requests `owner` holds, oldest first.
    /// Two daemons never both hold one.
    pub async fn claim_requests(
        &self,
        owner: &str,
        ttl: std::time::Duration,
    ) -> Result<Vec<RequestRecord>, StoreError> {
        dispatch!(self.claim_requests(owner, ttl))
    }

    /// Gives up `owner`'s claims (a clean stop), so another daemon takes them over at once.
    pub async fn release_requests(&self, owner: &str) -> Result<u64, StoreError> {
        dispatch!(self.release_requests(owner))
    }

    /// One request.
    pub async fn request(&self, id: i64) -> Result<Option<RequestRecord>, StoreError> {
        dispatch!(self.request(id))
    }

    /// Sets a request's state and message. A cancelled request stays cancelled.
    pub async fn set_request_state(
        &self,
        id: i64,
        state: RequestState,
        message: Option<&str>,
    ) -> Result<(), StoreError> {
        dispatch!(self.set_request_state(id, state, message))
    }

    /// Cancels a pending or running request; false when it had already ended (or does not exist).
    pub async fn cancel_request(&self, id: i64) -> Result<bool, StoreError> {
        dispatch!(self.cancel_request(id))
    }

    /// The runs a request made, oldest first.
    pub async fn request_runs(&self, id: i64) -> Result<Vec<RunRecord>, StoreError> {
        dispatch!(self.request_runs(id))
    }

    /// Upserts a daemon's heartbeat row (`started_at` is kept from the first beat; `stopped_at`
    /// cleared).
    pub async fn daemon_beat(
        &self,
        id: &str,
        pid: i64,
        host: &str,
        version: &str,
        status: &serde_json::Value,
    ) -> Result<(), StoreError> {
        dispatch!(self.daemon_beat(id, pid, host, version, status))
    }

    /// Records that a daemon stopped cleanly.
    pub async fn daemon_stopped(&self, id: &str) -> Result<(), StoreError> {
        dispatch!(self.daemon_stopped(id))
    }

    /// Every daemon's row, latest heartbeat first.
    pub async fn daemons(&self) -> Result<Vec<DaemonRecord>, StoreError> {
        dispatch!(self.daemons())
    }
}

// The alert queue.
impl Store {
    /// Queues `alert` for its channel, or records it as suppressed when an alert with the same
    /// throttle key went out on that channel less than `repeat_interval` ago. A queued alert's
    /// `payload.suppressed` says how many were held back since the last one; the key's condition
    /// is marked open (see [`Store::close_alert_condition`]).
    pub async fn enqueue_alert(&self, alert: &NewAlert) -> Result<Enqueued, StoreError> {
        dispatch!(self.enqueue_alert(alert))
    }

    /// Queued alerts whose time to be sent has come, oldest first.
    pub async fn due_alerts(&self, limit: usize) -> Result<Vec<AlertRecord>, StoreError> {
        dispatch!(self.due_alerts(limit))
    }

    /// Records one try to send an alert: sent; or failed with `error`, queued again at
    /// `retry_at` (or failed for good when None).
    pub async fn alert_tried(
        &self,
        id: i64,
        error: Option<&str>,
        retry_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        dispatch!(self.alert_tried(id, error, retry_at))
    }

    /// Alerts, newest first (`job` None: all; `limit` 0: all).
    pub async fn alerts(
        &self,
        job: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AlertRecord>, StoreError> {
        dispatch!(self.alerts(job, limit))
    }

    /// Marks the condition of `key` on `channel` closed; true when it was open (then the
    /// caller sends a `resolved` notice).
    pub async fn close_alert_condition(
        &self,
        channel: &str,
        key: &str,
    ) -> Result<bool, StoreError> {
        dispatch!(self.close_alert_condition(channel, key))
    }

    /// Records that the SLA of `job`'s interval was missed; true only the first time.
    pub async fn claim_sla_alert(
        &self,
        job: &str,
        interval_start: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        dispatch!(self.claim_sla_alert(job, interval_start))
    }

    /// Records an action taken in the dashboard, keyed by its form's nonce: `None` when that
    /// nonce was used before (a double submit), so the caller does nothing the second time.
    pub async fn record_action(&self, action: &NewAction) -> Result<Option<i64>, StoreError> {
        dispatch!(self.record_action(action))
    }

    /// How the recorded action went (`done: ...` or `failed: ...`).
    pub async fn set_action_outcome(&self, id: i64, outcome: &str) -> Result<(), StoreError> {
        dispatch!(self.set_action_outcome(id, outcome))
    }

    /// The recorded actions, newest first (0 = all).
    pub async fn actions(&self, limit: usize) -> Result<Vec<ActionRecord>, StoreError> {
        dispatch!(self.actions(limit))
    }

    /// Each `kafka_to_s3` step's total lag at every recording since `since` (its partitions
    /// summed per second), oldest first; samples are kept [`LAG_HISTORY_DAYS`] days.
    pub async fn lag_history(&self, since: DateTime<Utc>) -> Result<Vec<LagSample>, StoreError> {
        dispatch!(self.lag_history(since))
    }

    /// Step records of every job changed after `since`, oldest change first, at most `limit`.
    pub async fn changed_steps(
        &self,
        since: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<StepIntervalRecord>, StoreError> {
        dispatch!(self.changed_steps(since, limit))
    }
}

/// Range bounds clamped to the years 0000-9999 that both backends store and order correctly
/// (so `DateTime::<Utc>::MIN_UTC..MAX_UTC` means "everything").
fn clamp_bound(t: DateTime<Utc>) -> DateTime<Utc> {
    let min = DateTime::<Utc>::from_timestamp(-62_167_219_200, 0); // 0000-01-01T00:00:00Z
    let max = DateTime::<Utc>::from_timestamp(253_402_300_799, 999_999_000); // 9999-12-31T23:59:59.999999Z
    match (min, max) {
        (Some(min), Some(max)) => t.clamp(min, max),
        _ => t,
    }
}

/// `stale_after` as a chrono duration, capped at 100 years (longer means "never stale").
fn stale_duration(stale_after: std::time::Duration) -> chrono::TimeDelta {
    const CAP: std::time::Duration = std::time::Duration::from_secs(100 * 366 * 24 * 3600);
    chrono::TimeDelta::from_std(stale_after.min(CAP)).unwrap_or(chrono::TimeDelta::MAX)
}

/// `url` with any password replaced by `***`, for error messages.
pub(crate) fn redact_url(url: &str) -> String {
    // scheme://user:password@host...
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        if let Some(at) = authority.rfind('@') {
            let userinfo = &authority[..at];
            if let Some(colon) = userinfo.find(':') {
                return format!(
                    "{}://{}:***{}",
                    &url[..scheme_end],
                    &userinfo[..colon],
                    &rest[at..]
                );
            }
        }
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip() {
        for s in StepState::ALL {
            assert_eq!(s.as_str().parse::<StepState>(), Ok(*s));
            assert_eq!(s.to_string(), s.as_str());
        }
        for s in RunState::ALL {
            assert_eq!(s.as_str().parse::<RunState>(), Ok(*s));
        }
        for s in Trigger::ALL {
            assert_eq!(s.as_str().parse::<Trigger>(), Ok(*s));
        }
        assert_eq!(StepState::UpForRetry.as_str(), "up_for_retry");
        assert_eq!(StepState::UpstreamFailed.as_str(), "upstream_failed");
        assert!("nope".parse::<RunState>().is_err());
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://etl:hunter2@db:5432/x?schema=a"),
            "postgres://etl:***@db:5432/x?schema=a"
        );
        assert_eq!(redact_url("postgres://db/x"), "postgres://db/x");
    }

    #[test]
    fn newer_store_is_refused() {
        assert!(pending_migrations(SQLITE_MIGRATIONS, 9999, "x").is_err());
        assert_eq!(
            pending_migrations(SQLITE_MIGRATIONS, 0, "x").unwrap().len(),
            8
        );
        assert_eq!(
            pending_migrations(SQLITE_MIGRATIONS, 1, "x").unwrap()[0].version,
            2
        );
        assert!(pending_migrations(SQLITE_MIGRATIONS, 8, "x")
            .unwrap()
            .is_empty());
        // Both backends are at the same version.
        assert_eq!(SQLITE_MIGRATIONS.len(), POSTGRES_MIGRATIONS.len());
    }
}
