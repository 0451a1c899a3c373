//! `cranium daemon`: the process production runs. It schedules every job, catches up after an
//! outage, shares step slots fairly, executes requests from the command line, reloads the project
//! when its files change, and stops cleanly.
//!
//! # How it fits
//!
//! The daemon sits on top of the engine and the store and uses them like the foreground commands
//! do: [`Engine::prepare`] records a run, [`ActiveRun::ready`] says which steps may start,
//! [`Engine::claim`] takes a step's lease, [`Engine::execute`] runs it. What the daemon adds is
//! deciding *when* (a timer on the earliest due time across all jobs, [`plan`]) and *which* step
//! gets a slot when several wait ([`slots`]: priority, then the oldest due time, per pool).
//!
//! # What makes it trustworthy
//!
//! * One run per (job, interval) from the schedule: the store's `scheduled_intervals` key, not a
//!   check here. The scheduler's watermark (the latest decided interval per job) is read from the
//!   store at start, so a restart knows exactly what it missed.
//! * Every step attempt holds a lease with an expiry, renewed while it runs and released however
//!   the attempt ends; a daemon that dies stops renewing, and its runs are re-queued
//!   ([`Store::requeue_stale`]) and resumed by the next start.
//! * Slots live in memory and are given back when a step task ends, whatever ended it.
//! * The loop sleeps until the next due time, a step ending, a request, a file change or the
//!   housekeeping tick (1 s): an idle daemon does almost nothing.

pub mod clock;
pub mod health;
pub mod leader;
pub mod lock;
pub mod metrics;
pub mod plan;
pub mod reload;
pub mod slots;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::check::{self, Checked};
use crate::config::interp::Env;
use crate::engine::logs::LogFormat;
use crate::engine::{ActiveRun, Engine, EngineError, Prepared, Rerun, RunOptions, StepDone};
use crate::project::ProjectError;
use crate::schedule::Interval;
use crate::store::{
    Claim, Decision, RequestKind, RequestRecord, RequestState, RunState, StepState, Store,
    StoreError, Trigger,
};
use clock::Clock;
use health::{PoolUsage, RunningStep, Shared};
use reload::Fingerprint;
use slots::{Candidate, Slots};

/// The rank of a submitted backfill's steps unless `--priority` says otherwise: below every
/// scheduled run (whose jobs rank at 0 by default), so a backfill cannot starve the hourly
/// extraction.
pub const BACKFILL_PRIORITY: i32 = -1000;

/// How often the daemon looks at requests, pauses and its own health.
pub const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// How often it writes its heartbeat row.
pub const BEAT_EVERY: Duration = Duration::from_secs(5);
/// How often queued alerts are sent.
pub const ALERT_EVERY: Duration = Duration::from_secs(1);
/// How often the database connections are probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(60);
/// How often SLAs are checked.
pub const SLA_EVERY: Duration = Duration::from_secs(15);
/// How often it reads the consumer lag recorded in the store into the metrics.
pub const LAG_EVERY: Duration = Duration::from_secs(15);
/// How often a daemon on a shared store looks for queued runs to take (at most).
pub const TAKE_EVERY: Duration = Duration::from_millis(200);
/// How often it rescans the project's files (the fallback for lost file events).
pub const RESCAN_EVERY: Duration = Duration::from_secs(10);

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Project(#[from] ProjectError),
    #[error(
        "the project has errors; fix them (see `cranium check`) before starting the daemon:\n{0}"
    )]
    Check(String),
    #[error("cannot open the metadata store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Lock(#[from] lock::LockError),
    #[error("cannot listen on {addr} (daemon.listen in cranium.yaml): {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Engine(#[from] EngineError),
}

/// How to start a daemon.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub root: PathBuf,
    pub env: Env,
    pub clock: Arc<dyn Clock>,
    pub log_format: LogFormat,
    /// Serve `/livez`, `/readyz`, `/health` on the project's `daemon.listen`.
    pub serve_health: bool,
    /// `--listen`: serve health and metrics here instead of `daemon.listen`.
    pub listen: Option<std::net::SocketAddr>,
    /// `--id`: the daemon's id instead of `HOST:PID:RANDOM`.
    pub id: Option<String>,
}

/// A run the daemon is executing.
struct Active {
    run: ActiveRun,
    /// The project version the run started with (a reload does not change a running run).
    engine: Engine,
    priority: i32,
    request: Option<i64>,
    trigger: Trigger,
    cancel: CancellationToken,
    /// Whether a step of the run has started (the schedule delay is measured at the first).
    started_any: bool,
}

/// Why a daemon run exists, and how it runs.
struct Origin {
    trigger: Trigger,
    request: Option<i64>,
    priority: i32,
    opts: RunOptions,
}

impl Origin {
    fn new(trigger: Trigger, request: Option<&RequestRecord>, priority: i32) -> Origin {
        Origin {
            trigger,
            request: request.map(|r| r.id),
            priority,
            opts: daemon_opts(trigger, request),
        }
    }
}

/// A step task in flight.
#[derive(Debug, Clone)]
struct Running {
    pool: Option<String>,
    step: RunningStep,
}

/// A submitted backfill being worked through.
#[derive(Debug)]
struct Backfill {
    job: String,
    queue: VecDeque<Interval>,
    opts: RunOptions,
    max_active: usize,
    priority: i32,
    total: usize,
    succeeded: usize,
    failed: usize,
}

/// The daemon.
pub struct Daemon {
    root: PathBuf,
    env: Env,
    clock: Arc<dyn Clock>,
    store: Store,
    /// The loaded project version: new runs use it.
    engine: Engine,
    fingerprint: Fingerprint,
    id: String,
    active: BTreeMap<i64, Active>,
    tasks: JoinSet<StepDone>,
    /// Which (run, step) each task runs, to give its slot back even if it panicked.
    task_keys: HashMap<tokio::task::Id, (i64, usize)>,
    running: HashMap<(i64, usize), Running>,
    slots: Slots,
    /// The start of the latest interval decided, per job (from the store at start).
    watermarks: HashMap<String, DateTime<Utc>>,
    /// Cached next due time per job; recomputed when its watermark moves or the project reloads.
    next_due: HashMap<String, Option<DateTime<Utc>>>,
    paused: HashSet<String>,
    backfills: HashMap<i64, Backfill>,
    /// Cancels every step: the forced end of a stop.
    cancel: CancellationToken,
    stopping: bool,
    /// After a failed scheduling pass: not before this time again.
    retry_at: Option<DateTime<Utc>>,
    /// Bumped when a step succeeds: cross-job waits are asked about again.
    successes: u64,
    checked_successes: u64,
    last_recheck: std::time::Instant,
    last_beat: Option<std::time::Instant>,
    pub shared: Shared,
    pub metrics: metrics::Metrics,
    /// Ready steps that waited for a slot in the last dispatch.
    queued: usize,
    last_lag: Option<std::time::Instant>,
    last_sla: Option<std::time::Instant>,
    last_probe: Option<std::time::Instant>,
    /// Since when the store has not answered.
    store_down: Option<std::time::Instant>,
    /// Database connections that did not answer the last probe, since when.
    connections_down: Arc<std::sync::Mutex<HashMap<String, std::time::Instant>>>,
    probing: Option<tokio::task::JoinHandle<()>>,
    /// The loaded project, for the alert deliverer.
    project_tx: tokio::sync::watch::Sender<Arc<crate::project::Project>>,
    /// The engine of the loaded project, for what is served beside `/health` (the dashboard).
    engine_tx: tokio::sync::watch::Sender<Engine>,
    /// More routes to serve on the health address ([`Daemon::with_routes`]).
    routes: Option<axum::Router>,
    serve_health: bool,
    listen: Option<std::net::SocketAddr>,
    _lock: Option<lock::StoreLock>,
    /// Whether this daemon makes the scheduling decisions ([`leader`]).
    leadership: leader::Leadership,
    /// The leadership term the watermarks were read in.
    term_seen: u64,
    /// Stops the elector (which releases the leader lock); cancelled on drop too.
    elector_stop: CancellationToken,
    elector: Option<tokio::task::JoinHandle<()>>,
    _elector_guard: tokio_util::sync::DropGuard,
    /// When queued runs were last looked for (several daemons: often, to spread the work).
    last_take: Option<std::time::Instant>,
    /// Live daemons on the store, this one included (from the heartbeat rows).
    fleet_size: usize,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// The `check` errors of a project, one line each (`error: jobs/a.yaml:3:5: ...`).
fn error_lines(c: &Checked) -> Vec<String> {
    c.diagnostics
        .items()
        .iter()
        .filter(|d| d.severity == crate::diag::Severity::Error)
        .map(|d| c.project.redactor.redact(&d.short()))
        .collect()
}

async fn load_project(root: &Path, env: &Env) -> Result<Checked, DaemonError> {
    let (root, env) = (root.to_path_buf(), env.clone());
    tokio::task::spawn_blocking(move || check::check(&root, &env))
        .await
        .map_err(|e| DaemonError::Check(format!("the check thread failed: {e}")))?
        .map_err(DaemonError::Project)
}

/// Run options for the daemon's runs: every step (or a backfill's selection), no local
/// parallelism limit (the daemon's slots decide), and cross-job waits without a deadline.
fn daemon_opts(trigger: Trigger, request: Option<&RequestRecord>) -> RunOptions {
    let spec = request.map(|r| &r.spec);
    let steps = spec
        .and_then(|s| s.get("steps"))
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let rerun = match spec.and_then(|s| s.get("rerun")).and_then(|v| v.as_str()) {
        Some("failed") => Rerun::Failed,
        Some("all") => Rerun::All,
        _ => Rerun::None,
    };
    RunOptions {
        steps,
        downstream: spec
            .and_then(|s| s.get("downstream"))
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
        parallelism: usize::MAX,
        trigger,
        rerun,
        upstream_wait: Duration::MAX,
        ignore_upstream: false,
    }
}

fn spec_time(spec: &serde_json::Value, key: &str) -> Option<DateTime<Utc>> {
    spec.get(key)
        .and_then(|v| v.as_str())
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Every `kafka_to_s3` step's lag per partition, into `cranium_kafka_consumer_lag_records`: asked
/// of the broker (so it grows while extraction is stuck, between runs), never below what the
/// step recorded after its last run; the recorded value when the broker does not answer.
pub async fn refresh_lag(
    project: &Arc<crate::project::Project>,
    store: &Store,
    metrics: &metrics::Metrics,
) {
    let recorded = match store.consumer_lag(None).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("reading the recorded consumer lag: {e}");
            Vec::new()
        }
    };
    for j in &project.jobs {
        for s in &j.steps {
            let crate::steps::StepConfig::KafkaToS3(k) = &s.config else {
                continue;
            };
            let (p, job, step, k) = (project.clone(), j.name.clone(), s.id.clone(), k.clone());
            let measured = tokio::time::timeout(
                Duration::from_secs(30),
                tokio::task::spawn_blocking(move || k.measure_lag(&p, &job, &step)),
            )
            .await;
            let mine = |r: &&crate::store::ConsumerLag| r.job == j.name && r.step == s.id;
            let rows: Vec<crate::store::ConsumerLag> = match measured {
                Ok(Ok(Ok(lags))) => lags
                    .into_iter()
                    .map(|l| {
                        let before = recorded
                            .iter()
                            .filter(mine)
                            .find(|r| r.topic == l.topic && r.partition == l.partition);
                        let end = l.end_offset.max(before.map_or(0, |b| b.end_offset));
                        crate::store::ConsumerLag {
                            job: j.name.clone(),
                            step: s.id.clone(),
                            topic: l.topic,
                            partition: l.partition,
                            committed_offset: l.committed_offset,
                            end_offset: end,
                            lag: (end - l.committed_offset).max(0),
                            run_id: None,
                            recorded_at: Utc::now(),
                        }
                    })
                    .collect(),
                other => {
                    let why = match other {
                        Ok(Ok(Err(e))) => e,
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => "the broker did not answer within 30s".to_string(),
                        Ok(Ok(Ok(_))) => String::new(),
                    };
                    tracing::warn!(
                        job = j.name,
                        step = s.id,
                        "measuring the consumer lag: {why}"
                    );
                    recorded.iter().filter(mine).cloned().collect()
                }
            };
            metrics.consumer_lag(&rows);
        }
    }
}

/// Tries to connect to every database connection of the project (within its connect timeout,
/// all at once); one that stops answering raises `connection_unreachable`, and `resolved` when it
/// answers again.
async fn probe_round(
    project: Arc<crate::project::Project>,
    n: crate::alerts::Notifier,
    down: Arc<std::sync::Mutex<HashMap<String, std::time::Instant>>>,
) {
    let probes = project.connections.keys().filter_map(|name| {
        let (kind, url, _, timeout) =
            crate::steps::runtime::database_target(&project, name).ok()?;
        let name = name.clone();
        Some(async move {
            let r = crate::db::DbClient::connect(kind, &url, timeout)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
            (name, r)
        })
    });
    let results = futures::future::join_all(probes).await;
    for (name, result) in results {
        let was_down = down
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(&name);
        match result {
            Err(e) if !was_down => {
                down.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(name.clone(), std::time::Instant::now());
                let e = project.redactor.redact(&e);
                let a = crate::alerts::Alert::new(
                    &project,
                    "connection_unreachable",
                    format!("connection '{name}' does not answer: {e}"),
                )
                .details(serde_json::json!({ "connection": name, "error": e }));
                n.raise(a).await;
            }
            Ok(()) if was_down => {
                down.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&name);
                let a = crate::alerts::Alert::new(
                    &project,
                    "resolved",
                    format!("connection '{name}' answers again"),
                )
                .details(serde_json::json!({
                    "resolves": "connection_unreachable",
                    "connection": name,
                }));
                n.raise(a).await;
            }
            _ => {}
        }
    }
}

/// The daemon's notifier: alerts queued and suppressed count in its metrics.
fn notifier(
    project: Arc<crate::project::Project>,
    store: Store,
    metrics: &metrics::Metrics,
) -> crate::alerts::Notifier {
    let mut n = crate::alerts::Notifier::new(project, store);
    let m = metrics.clone();
    n.on_queued = Some(Arc::new(move |channel, event, suppressed| {
        m.alert(
            channel,
            event,
            if suppressed { "suppressed" } else { "queued" },
        )
    }));
    n
}

impl Daemon {
    /// Loads and checks the project (refusing one with errors), opens the store (taking the
    /// single-daemon lock of a SQLite store), re-queues the runs of a daemon that died, and
    /// adopts every queued run.
    pub async fn start(opts: DaemonOptions) -> Result<Daemon, DaemonError> {
        let checked = load_project(&opts.root, &opts.env).await?;
        if checked.diagnostics.has_errors() {
            return Err(DaemonError::Check(error_lines(&checked).join("\n")));
        }
        let project = checked.project.clone();
        let store = Store::open(&project.state_url, &project.root).await?;
        let lock = match &store {
            Store::Sqlite(s) => Some(lock::lock_sqlite_store(s.path())?),
            Store::Postgres(_) => None,
        };
        let id = opts.id.clone().unwrap_or_else(|| {
            format!(
                "{}:{}:{:08x}",
                hostname(),
                std::process::id(),
                rand::random::<u32>()
            )
        });
        let mut engine = Engine::new(project.clone(), checked.graph.clone(), store.clone());
        engine.log_format = opts.log_format;
        engine.owner = format!("daemon:{id}");
        engine.lease_ttl = project.daemon.lease_ttl;
        // A run whose heartbeat is older than two lease times is taken over by another daemon:
        // it beats well within that.
        engine.heartbeat_every = engine.heartbeat_every.min(engine.lease_ttl / 3);
        // Cancelled when the running steps are (a stop's grace is over): a record that waits for
        // an unreachable store is given up then; the next start recovers its step.
        let cancel = CancellationToken::new();
        engine.stop = cancel.clone();
        let engine_tx = tokio::sync::watch::Sender::new(engine.clone());
        let metrics = metrics::Metrics::for_daemon(&id);
        engine.notifier = Some(notifier(project.clone(), store.clone(), &metrics));
        // With the SQLite lock held no other daemon can be running: its runs are re-queued now.
        // On PostgreSQL, only those whose heartbeat is older than two lease times.
        let stale_after = if lock.is_some() {
            Duration::ZERO
        } else {
            engine.lease_ttl * 2
        };
        let requeued = store.requeue_stale(stale_after).await?;
        if !requeued.is_empty() {
            tracing::warn!(
                runs = ?requeued,
                "re-queued {} run(s) of a daemon that stopped; their unfinished steps run again",
                requeued.len()
            );
        }
        let settings = project.daemon.clone();
        let elector_stop = CancellationToken::new();
        let (leadership, elector) =
            leader::elect(&store, &id, engine.lease_ttl, elector_stop.clone()).await;
        let fingerprint = {
            let root = opts.root.clone();
            tokio::task::spawn_blocking(move || Fingerprint::of(&root))
                .await
                .unwrap_or_default()
        };
        let shared = Shared::default();
        let store_display = crate::store::redact_url(&project.state_url);
        shared.update(|s| {
            s.version = env!("CARGO_PKG_VERSION");
            s.daemon_id = id.clone();
            s.pid = std::process::id();
            s.store = store_display;
            s.project = project.root.display().to_string();
            s.project_hash = fingerprint.hash();
            s.loaded_at = Some(Utc::now());
            s.jobs = project.jobs.len();
            s.store_ok = true;
            s.max_running_steps = settings.max_running_steps;
        });
        let mut d = Daemon {
            root: opts.root.clone(),
            env: opts.env.clone(),
            clock: opts.clock.clone(),
            store: store.clone(),
            slots: Slots::new(
                settings.max_running_steps,
                project.pools.iter().map(|(n, s)| (n.clone(), *s as usize)),
            ),
            engine,
            fingerprint,
            id,
            active: BTreeMap::new(),
            tasks: JoinSet::new(),
            task_keys: HashMap::new(),
            running: HashMap::new(),
            watermarks: store.last_scheduled().await?,
            next_due: HashMap::new(),
            paused: store
                .paused_jobs()
                .await?
                .into_iter()
                .map(|(j, _)| j)
                .collect(),
            backfills: HashMap::new(),
            cancel,
            stopping: false,
            retry_at: None,
            successes: 0,
            checked_successes: 0,
            last_recheck: std::time::Instant::now(),
            last_beat: None,
            shared,
            metrics,
            queued: 0,
            last_lag: None,
            last_sla: None,
            last_probe: None,
            store_down: None,
            connections_down: Arc::default(),
            probing: None,
            project_tx: tokio::sync::watch::Sender::new(project.clone()),
            engine_tx,
            routes: None,
            serve_health: opts.serve_health,
            listen: opts.listen,
            _lock: lock,
            term_seen: leadership.terms(),
            leadership,
            _elector_guard: elector_stop.clone().drop_guard(),
            elector_stop,
            elector,
            last_take: None,
            fleet_size: 1,
        };
        // Alone on its store it takes every queued run; beside others, only what its slots hold
        // (the rest is their share).
        let room = if d.is_fleet() {
            d.slots.max_running
        } else {
            usize::MAX
        };
        d.take_over_queued(room).await?;
        Ok(d)
    }

    /// Takes up to `limit` queued daemon runs (re-queued from a daemon that died or stopped)
    /// and executes them; each is taken by one daemon only ([`Store::take_queued_run`]).
    async fn take_over_queued(&mut self, limit: usize) -> Result<(), StoreError> {
        let mut taken = 0;
        let queued = self.store.queued_daemon_runs().await?;
        // Several daemons: each takes its share of what waits, so the work spreads (whoever
        // looks first would otherwise take it all).
        let limit = if self.is_fleet() {
            limit.min(queued.len().div_ceil(self.fleet_size.max(1)))
        } else {
            limit
        };
        for q in queued {
            if taken >= limit {
                break;
            }
            let request = match q.request_id {
                Some(id) => self.store.request(id).await?,
                None => None,
            };
            if request.as_ref().is_some_and(|r| r.state.is_final()) {
                // Its request was cancelled (or ended) while no daemon ran it: the run ends too.
                if self.store.take_queued_run(q.run.id, &self.id).await? {
                    self.store.set_run_state(q.run.id, RunState::Failed).await?;
                }
                continue;
            }
            if !self.engine.project.jobs.iter().any(|j| j.name == q.run.job) {
                continue;
            }
            let origin = Origin::new(q.run.trigger, request.as_ref(), q.priority);
            if self
                .adopt(q.run.id, &q.run.job, q.run.interval, origin)
                .await
            {
                taken += 1;
                if q.run.started_at.is_some() {
                    tracing::info!(
                        run_id = q.run.id,
                        job = q.run.job,
                        "took over a queued run (its daemon stopped or died)"
                    );
                }
            }
        }
        Ok(())
    }

    /// Whether other daemons may share the store (PostgreSQL): then runs are created by the
    /// leader only and taken from the queue by whoever has room.
    fn is_fleet(&self) -> bool {
        matches!(self.store, Store::Postgres(_))
    }

    /// Whether this daemon makes the scheduling decisions now.
    pub fn is_leader(&self) -> bool {
        self.leadership.is_leader()
    }

    /// On becoming the leader, reads what the previous leader decided (the watermarks), so
    /// nothing is scheduled twice or missed.
    async fn new_term(&mut self) -> Result<(), StoreError> {
        let term = self.leadership.terms();
        if term == self.term_seen {
            return Ok(());
        }
        self.watermarks = self.store.last_scheduled().await?;
        self.next_due.clear();
        self.term_seen = term;
        tracing::info!("leading: read the latest scheduling decisions of every job");
        Ok(())
    }

    /// This daemon's id (in the store's `daemons` table and its leases).
    /// The engine of the loaded project, updated on every reload.
    pub fn engine_watch(&self) -> tokio::sync::watch::Receiver<Engine> {
        self.engine_tx.subscribe()
    }

    /// Serves `routes` too on the health address (the commands layer adds the dashboard).
    pub fn with_routes(mut self, routes: axum::Router) -> Daemon {
        self.routes = Some(routes);
        self
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs being executed now.
    pub fn active_runs(&self) -> usize {
        self.active.len()
    }

    /// Steps running now.
    pub fn running_steps(&self) -> usize {
        self.running.len()
    }

    /// Starts executing a recorded (queued) run, once it is taken from the queue (another
    /// daemon on the same store may take it first: then false).
    async fn adopt(&mut self, run_id: i64, job: &str, interval: Interval, origin: Origin) -> bool {
        match self.store.take_queued_run(run_id, &self.id).await {
            Ok(true) => {}
            Ok(false) => return false,
            Err(e) => {
                tracing::error!(job, run_id, "cannot take the queued run: {e}");
                return false;
            }
        }
        let engine = self.engine.clone();
        match engine
            .prepare(
                job,
                interval,
                &origin.opts,
                Some((run_id, self.id.as_str())),
            )
            .await
        {
            Ok(Prepared::Run(run)) => {
                tracing::info!(
                    job,
                    run_id,
                    interval_start = %interval.start,
                    trigger = origin.trigger.as_str(),
                    "run started"
                );
                self.active.insert(
                    run_id,
                    Active {
                        run: *run,
                        engine,
                        priority: origin.priority,
                        request: origin.request,
                        trigger: origin.trigger,
                        cancel: self.cancel.child_token(),
                        started_any: false,
                    },
                );
                true
            }
            Ok(Prepared::Nothing(_)) => true,
            Ok(Prepared::TakenOver { run_id }) => {
                tracing::warn!(
                    job,
                    run_id,
                    "another daemon took this run over while this one was stalled: it is theirs"
                );
                false
            }
            Err(e) => {
                tracing::error!(job, run_id, "cannot start the run: {e}");
                let _ = self.store.set_run_state(run_id, RunState::Failed).await;
                true
            }
        }
    }

    /// Scheduled and triggered runs of `job` in progress (submitted backfills have their own
    /// limit).
    fn active_of(&self, job: &str) -> usize {
        self.active
            .values()
            .filter(|a| a.run.job == job && a.trigger != Trigger::Backfill)
            .count()
    }

    fn job_next_due(&mut self, job: usize, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let j = &self.engine.project.jobs[job];
        if let Some(cached) = self.next_due.get(&j.name) {
            return *cached;
        }
        let nd = plan::next_due(
            &j.calendar,
            j.catchup,
            now,
            self.watermarks.get(&j.name).copied(),
        );
        self.next_due.insert(j.name.clone(), nd);
        nd
    }

    /// The earliest time a job needs the scheduler (jobs at their `max_active_runs` wait for a
    /// run to end instead).
    pub fn next_wake(&mut self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if let Some(t) = self.retry_at.filter(|t| *t > now) {
            return Some(t);
        }
        if !self.leadership.is_leader() {
            // Another daemon schedules; this one wakes for its steps and its housekeeping.
            return None;
        }
        let fleet = self.is_fleet();
        let mut best: Option<DateTime<Utc>> = None;
        for i in 0..self.engine.project.jobs.len() {
            let j = &self.engine.project.jobs[i];
            if !j.runnable || self.paused.contains(&j.name) {
                continue;
            }
            // (On a shared store the limit counts every daemon's runs: schedule() looks again
            // a second later.)
            if !fleet && self.active_of(&j.name) >= j.max_active_runs as usize {
                continue;
            }
            if let Some(t) = self.job_next_due(i, now) {
                best = Some(best.map_or(t, |b| b.min(t)));
            }
        }
        best
    }

    /// Creates the runs that are due (and records the intervals passed over).
    async fn schedule(&mut self, now: DateTime<Utc>) -> Result<(), StoreError> {
        let fleet = self.is_fleet();
        // On a store several daemons share, `max_active_runs` counts the runs of all of them.
        let open = if fleet {
            self.store.open_daemon_runs().await?
        } else {
            HashMap::new()
        };
        for i in 0..self.engine.project.jobs.len() {
            let (name, runnable, max_active, catchup, priority) = {
                let j = &self.engine.project.jobs[i];
                (
                    j.name.clone(),
                    j.runnable,
                    j.max_active_runs as usize,
                    j.catchup,
                    j.priority,
                )
            };
            if !runnable || self.paused.contains(&name) {
                continue;
            }
            if self.job_next_due(i, now).is_none_or(|t| t > now) {
                continue;
            }
            let active = if fleet {
                open.get(&name).copied().unwrap_or(0)
            } else {
                self.active_of(&name)
            };
            let capacity = max_active.saturating_sub(active);
            if capacity == 0 {
                if fleet {
                    // Another daemon's run ends without telling this one: look again shortly.
                    self.next_due.insert(
                        name.clone(),
                        Some(now + chrono::Duration::milliseconds(200)),
                    );
                }
                continue;
            }
            let due = {
                let j = &self.engine.project.jobs[i];
                plan::due(
                    &j.calendar,
                    catchup,
                    now,
                    self.watermarks.get(&name).copied(),
                    capacity,
                )
            };
            if let Some(latest) = due.run.last() {
                for iv in &due.skip {
                    let reason = format!(
                        "catchup: false: passed over for the latest interval, starting {}",
                        latest.start.to_rfc3339()
                    );
                    self.store
                        .schedule_interval(&name, *iv, &Decision::Skipped { reason })
                        .await?;
                }
                if !due.skip.is_empty() || due.skipped_unrecorded > 0 {
                    tracing::info!(
                        job = name,
                        skipped = due.skip.len() + due.skipped_unrecorded,
                        "catchup: false: passed over missed intervals, running only the latest"
                    );
                    self.metrics
                        .skipped(&name, (due.skip.len() + due.skipped_unrecorded) as u64);
                }
            }
            for iv in due.run {
                let created = self
                    .store
                    .schedule_interval(&name, iv, &Decision::Run { priority })
                    .await?;
                self.watermarks.insert(name.clone(), iv.start);
                self.next_due.remove(&name);
                if created.is_some() && fleet {
                    self.last_take = None;
                }
                if let Some(run_id) = created {
                    // On a shared store the run stays queued for whichever daemon has room
                    // (this one included: take_over_queued).
                    if !fleet {
                        let origin = Origin::new(Trigger::Schedule, None, priority);
                        self.adopt(run_id, &name, iv, origin).await;
                    }
                }
            }
            // Nothing due after all (e.g. past the job's end): look again only when it changes.
            self.next_due.remove(&name);
        }
        Ok(())
    }

    /// Gives free slots to ready steps, fairly, and finishes the runs that are complete.
    async fn dispatch(&mut self) -> Result<(), EngineError> {
        loop {
            let recheck = self.successes != self.checked_successes
                || self.last_recheck.elapsed() >= HOUSEKEEPING;
            if recheck {
                self.checked_successes = self.successes;
                self.last_recheck = std::time::Instant::now();
            }
            let mut candidates = Vec::new();
            if !self.stopping {
                for (run_id, a) in self.active.iter_mut() {
                    if a.cancel.is_cancelled() || a.run.is_lost() {
                        continue;
                    }
                    let ready = a.run.ready(&a.engine, &a.cancel, recheck).await?;
                    let job = &a.engine.project.jobs[a.run.job_index];
                    for i in ready {
                        candidates.push(Candidate {
                            run_id: *run_id,
                            step_index: i,
                            priority: a.priority,
                            due: a.run.interval.end,
                            pool: job.steps[i].pool.clone(),
                        });
                    }
                }
            }
            let ready_count = candidates.len();
            let chosen = slots::choose(candidates, &mut self.slots);
            self.queued = ready_count - chosen.len();
            let mut progressed = false;
            for c in chosen {
                let Some(a) = self.active.get_mut(&c.run_id) else {
                    self.slots.give_back(c.pool.as_deref());
                    continue;
                };
                let claim = a.engine.claim(&mut a.run, c.step_index).await;
                match claim {
                    Ok(Claim::Acquired { .. }) => {
                        if !a.started_any {
                            a.started_any = true;
                            if a.trigger == Trigger::Schedule {
                                let late = self.clock.now() - a.run.interval.end;
                                self.metrics.schedule_delay(
                                    &a.run.job,
                                    late.to_std().unwrap_or_default().as_secs_f64(),
                                );
                            }
                        }
                        let task = a.run.start(&a.engine, c.step_index);
                        let step = RunningStep {
                            job: task.job.clone(),
                            step: task.step.clone(),
                            interval_start: task.interval.start,
                            run_id: task.run_id,
                            started_at: Utc::now(),
                            pool: c.pool.clone(),
                        };
                        tracing::info!(
                            job = step.job,
                            step = step.step,
                            run_id = step.run_id,
                            interval_start = %step.interval_start,
                            "step started"
                        );
                        self.running.insert(
                            (c.run_id, c.step_index),
                            Running {
                                pool: c.pool.clone(),
                                step,
                            },
                        );
                        let (engine, cancel) = (a.engine.clone(), a.cancel.clone());
                        let handle = self
                            .tasks
                            .spawn(async move { engine.execute(task, cancel).await });
                        self.task_keys.insert(handle.id(), (c.run_id, c.step_index));
                    }
                    Ok(Claim::Done { .. }) => {
                        self.slots.give_back(c.pool.as_deref());
                        progressed = true;
                    }
                    Ok(Claim::Full { pool }) => {
                        // Other daemons fill the pool: asked again on the next tick.
                        self.slots.give_back(c.pool.as_deref());
                        tracing::debug!(run_id = c.run_id, pool, "pool full across the fleet");
                    }
                    Ok(Claim::Held { owner, .. }) => {
                        // Another runner has it (a foreground `run`): asked again on the next tick.
                        self.slots.give_back(c.pool.as_deref());
                        tracing::debug!(run_id = c.run_id, owner, "step held by another runner");
                    }
                    Err(e) => {
                        self.slots.give_back(c.pool.as_deref());
                        return Err(e);
                    }
                }
            }
            progressed |= self.finish_complete().await?;
            if !progressed {
                return Ok(());
            }
        }
    }

    /// Records the end of every run with nothing left to do; true when one ended.
    async fn finish_complete(&mut self) -> Result<bool, EngineError> {
        let done: Vec<i64> = self
            .active
            .iter()
            .filter(|(_, a)| {
                a.run.is_complete()
                    || ((a.cancel.is_cancelled() || a.run.is_lost()) && a.run.running() == 0)
            })
            .map(|(id, _)| *id)
            .collect();
        let mut ended = false;
        for id in &done {
            let Some(mut a) = self.active.remove(id) else {
                continue;
            };
            let job = a.run.job.clone();
            let lost = a.run.is_lost();
            let report = match a.run.finish(&a.engine, false).await {
                Ok(r) => r,
                Err(EngineError::Store(e)) if e.is_unreachable() => {
                    // Kept, and recorded on a later pass once the store answers again.
                    tracing::warn!(
                        job,
                        run_id = id,
                        "recording the end of the run: {e} (trying again on the next pass)"
                    );
                    self.active.insert(*id, a);
                    continue;
                }
                Err(e) => return Err(e),
            };
            ended = true;
            if lost {
                // Another daemon took it over: it records the run's end and its request's.
                continue;
            }
            tracing::info!(
                job,
                run_id = id,
                state = report.state.as_str(),
                seconds = report.duration.as_secs_f64(),
                "run ended"
            );
            self.metrics.run_ended(&job, report.state);
            self.next_due.remove(&job);
            // Room for another queued run now, not at the next look.
            self.last_take = None;
            if let Some(rid) = a.request {
                self.request_run_ended(rid, a.trigger, report.state).await;
            }
        }
        Ok(ended)
    }

    async fn request_run_ended(&mut self, rid: i64, trigger: Trigger, state: RunState) {
        if trigger == Trigger::Backfill {
            if let Some(b) = self.backfills.get_mut(&rid) {
                if state == RunState::Success {
                    b.succeeded += 1;
                } else {
                    b.failed += 1;
                }
            }
            return;
        }
        let (st, msg) = if state == RunState::Success {
            (RequestState::Done, "the run succeeded")
        } else {
            (RequestState::Failed, "the run failed (see `cranium runs`)")
        };
        if let Err(e) = self.store.set_request_state(rid, st, Some(msg)).await {
            tracing::warn!(request = rid, "recording the request's end: {e}");
        }
    }

    /// Takes a finished step task back: its slot, its result.
    fn on_joined(&mut self, joined: Result<(tokio::task::Id, StepDone), tokio::task::JoinError>) {
        let (id, done) = match joined {
            Ok(pair) => pair,
            Err(e) => {
                // A step task that panicked: a bug. Its slot still comes back and its run goes on
                // (the step counts as failed); the lease expires by itself.
                tracing::error!("a step task failed: {e}");
                let Some((run_id, i)) = self.task_keys.remove(&e.id()) else {
                    return;
                };
                let step = self
                    .running
                    .get(&(run_id, i))
                    .map(|r| r.step.step.clone())
                    .unwrap_or_default();
                let mut report = crate::engine::StepReport::already_done(&step);
                report.already_done = false;
                report.state = StepState::Failed;
                report.error = Some(format!("the step task failed: {e}"));
                (
                    e.id(),
                    StepDone {
                        run_id,
                        step_index: i,
                        report,
                        outputs: None,
                        lost: false,
                    },
                )
            }
        };
        self.task_keys.remove(&id);
        let key = (done.run_id, done.step_index);
        if let Some(r) = self.running.remove(&key) {
            self.slots.give_back(r.pool.as_deref());
            if done.report.state == StepState::Success {
                tracing::info!(
                    job = r.step.job,
                    step = r.step.step,
                    run_id = done.run_id,
                    "step succeeded"
                );
            } else {
                tracing::warn!(
                    job = r.step.job,
                    step = r.step.step,
                    run_id = done.run_id,
                    state = done.report.state.as_str(),
                    error = done.report.error.as_deref().unwrap_or(""),
                    "step ended"
                );
            }
        }
        if done.report.state == StepState::Success {
            self.successes += 1;
        }
        if let Some(a) = self.active.get_mut(&done.run_id) {
            let (job, r) = (&a.run.job, &done.report);
            // A cancelled attempt (back to pending) is not an ending of the step.
            if r.state != StepState::Pending {
                self.metrics.step_ended(
                    job,
                    &r.step,
                    r.state,
                    r.attempts,
                    r.duration.as_secs_f64(),
                );
            }
            if r.state == StepState::Success {
                self.metrics.step_moved(
                    job,
                    &r.step,
                    r.rows_affected,
                    r.bytes,
                    done.outputs.as_ref(),
                );
            }
            a.run.record(done);
        }
    }

    /// Requests from the command line: new triggers and backfills, cancellations, progress.
    async fn requests(&mut self) -> Result<(), StoreError> {
        // Every open request (to see cancellations), and the ones this daemon holds: another
        // daemon on the same store never starts a request this one claimed.
        let open_ids: HashSet<i64> = self
            .store
            .requests(true, 0)
            .await?
            .iter()
            .map(|r| r.id)
            .collect();
        let open = self
            .store
            .claim_requests(&self.engine.owner, self.engine.lease_ttl)
            .await?;
        // Cancelled (or ended elsewhere) requests: stop their runs.
        let gone: Vec<i64> = self
            .active
            .values()
            .filter_map(|a| a.request)
            .chain(self.backfills.keys().copied())
            .filter(|id| !open_ids.contains(id))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        for rid in gone {
            self.backfills.remove(&rid);
            for a in self.active.values().filter(|a| a.request == Some(rid)) {
                tracing::info!(
                    request = rid,
                    run_id = a.run.run_id,
                    "request cancelled: stopping its run"
                );
                a.cancel.cancel();
            }
        }
        for r in open {
            if !self
                .engine
                .project
                .jobs
                .iter()
                .any(|j| j.name == r.job && j.runnable)
            {
                self.store
                    .set_request_state(
                        r.id,
                        RequestState::Failed,
                        Some(&format!("unknown or unrunnable job '{}'", r.job)),
                    )
                    .await?;
                continue;
            }
            match (r.kind, r.state) {
                (RequestKind::Trigger, RequestState::Pending) => {
                    let (Some(start), Some(end)) =
                        (spec_time(&r.spec, "start"), spec_time(&r.spec, "end"))
                    else {
                        self.store
                            .set_request_state(
                                r.id,
                                RequestState::Failed,
                                Some("the request has no interval"),
                            )
                            .await?;
                        continue;
                    };
                    let iv = Interval { start, end };
                    let run_id = self
                        .store
                        .create_daemon_run(&r.job, iv, Trigger::Manual, Some(r.id), r.priority)
                        .await?;
                    self.store
                        .set_request_state(
                            r.id,
                            RequestState::Running,
                            Some(&format!("run {run_id}")),
                        )
                        .await?;
                    let origin = Origin::new(Trigger::Manual, Some(&r), r.priority);
                    self.adopt(run_id, &r.job, iv, origin).await;
                }
                (RequestKind::Trigger, _) => {
                    // Running: its run is active, or ended while no daemon ran.
                    if !self.active.values().any(|a| a.request == Some(r.id)) {
                        let runs = self.store.request_runs(r.id).await?;
                        let ended = runs.last().map(|x| x.state);
                        match ended {
                            Some(RunState::Success) => {
                                self.request_run_ended(r.id, Trigger::Manual, RunState::Success)
                                    .await
                            }
                            Some(RunState::Failed) | None => {
                                self.request_run_ended(r.id, Trigger::Manual, RunState::Failed)
                                    .await
                            }
                            _ => {}
                        }
                    }
                }
                (RequestKind::Backfill, _) if !self.backfills.contains_key(&r.id) => {
                    self.start_backfill(&r).await?;
                }
                (RequestKind::Backfill, _) => {}
            }
        }
        self.feed_backfills().await
    }

    async fn start_backfill(&mut self, r: &RequestRecord) -> Result<(), StoreError> {
        let (Some(from), Some(to)) = (spec_time(&r.spec, "from"), spec_time(&r.spec, "to")) else {
            return self
                .store
                .set_request_state(r.id, RequestState::Failed, Some("the request has no range"))
                .await;
        };
        let opts = daemon_opts(Trigger::Backfill, Some(r));
        let plan = match self.engine.plan_backfill(&r.job, from, to, &opts).await {
            Ok(p) => p,
            Err(e) => {
                return self
                    .store
                    .set_request_state(r.id, RequestState::Failed, Some(&e.to_string()))
                    .await;
            }
        };
        // After a restart: intervals this request already has a run for are not run again.
        let had: Vec<_> = self.store.request_runs(r.id).await?;
        let had_starts: HashSet<DateTime<Utc>> = had.iter().map(|x| x.interval.start).collect();
        let queue: VecDeque<Interval> = plan
            .run
            .iter()
            .map(|(iv, _)| *iv)
            .filter(|iv| !had_starts.contains(&iv.start))
            .collect();
        let job_max = self
            .engine
            .project
            .job(&r.job)
            .map_or(1, |j| j.max_active_runs as usize);
        let max_active = r
            .spec
            .get("max_active_runs")
            .and_then(|v| v.as_u64())
            .map_or(job_max, |n| n.max(1) as usize);
        let ended = |s: RunState| matches!(s, RunState::Success | RunState::Failed);
        let b = Backfill {
            job: r.job.clone(),
            total: queue.len() + had.len(),
            succeeded: had.iter().filter(|x| x.state == RunState::Success).count(),
            failed: had
                .iter()
                .filter(|x| ended(x.state) && x.state != RunState::Success)
                .count(),
            queue,
            opts,
            max_active,
            priority: r.priority,
        };
        tracing::info!(
            request = r.id,
            job = r.job,
            intervals = b.total,
            "backfill request started"
        );
        self.store
            .set_request_state(
                r.id,
                RequestState::Running,
                Some(&format!("0/{} intervals done", b.total)),
            )
            .await?;
        self.backfills.insert(r.id, b);
        Ok(())
    }

    /// Starts the next intervals of each submitted backfill, within its `max_active_runs`, and
    /// ends the requests that have nothing left.
    async fn feed_backfills(&mut self) -> Result<(), StoreError> {
        if self.stopping {
            return Ok(());
        }
        let ids: Vec<i64> = self.backfills.keys().copied().collect();
        for rid in ids {
            let running = self
                .active
                .values()
                .filter(|a| a.request == Some(rid))
                .count();
            let mut start = Vec::new();
            if let Some(b) = self.backfills.get_mut(&rid) {
                while running + start.len() < b.max_active {
                    let Some(iv) = b.queue.pop_front() else { break };
                    start.push(iv);
                }
            }
            for iv in start {
                let Some(b) = self.backfills.get(&rid) else {
                    break;
                };
                let (job, priority, opts) = (b.job.clone(), b.priority, b.opts.clone());
                let run_id = self
                    .store
                    .create_daemon_run(&job, iv, Trigger::Backfill, Some(rid), priority)
                    .await?;
                let origin = Origin {
                    trigger: Trigger::Backfill,
                    request: Some(rid),
                    priority,
                    opts,
                };
                self.adopt(run_id, &job, iv, origin).await;
            }
            let running = self
                .active
                .values()
                .filter(|a| a.request == Some(rid))
                .count();
            let Some(b) = self.backfills.get(&rid) else {
                continue;
            };
            let done = b.succeeded + b.failed;
            let msg = format!(
                "{done}/{} intervals done ({} succeeded, {} failed), {running} running",
                b.total, b.succeeded, b.failed
            );
            if b.queue.is_empty() && running == 0 {
                let state = if b.failed == 0 {
                    RequestState::Done
                } else {
                    RequestState::Failed
                };
                self.store.set_request_state(rid, state, Some(&msg)).await?;
                tracing::info!(request = rid, "backfill request ended: {msg}");
                self.backfills.remove(&rid);
            } else {
                self.store
                    .set_request_state(rid, RequestState::Running, Some(&msg))
                    .await?;
            }
        }
        Ok(())
    }

    /// Pauses, requests, the heartbeat row and `/health`, once a second.
    pub async fn housekeeping(&mut self) {
        let result: Result<(), StoreError> = async {
            let paused: HashSet<String> = self
                .store
                .paused_jobs()
                .await?
                .into_iter()
                .map(|(j, _)| j)
                .collect();
            if paused != self.paused {
                for j in paused.symmetric_difference(&self.paused) {
                    tracing::info!(job = j, paused = paused.contains(j), "pause changed");
                    self.next_due.remove(j);
                }
                self.paused = paused;
            }
            self.requests().await?;
            if matches!(self.store, Store::Postgres(_)) && !self.stopping {
                // Several daemons may share this store: the runs of one that died (no heartbeat
                // for two lease times) or stopped are taken over here.
                let _ = self.store.requeue_stale(self.engine.lease_ttl * 2).await?;
            }
            let leader = self.leadership.is_leader();
            if leader
                && self.last_probe.is_none_or(|t| t.elapsed() >= PROBE_EVERY)
                && self.probing.as_ref().is_none_or(|p| p.is_finished())
            {
                self.last_probe = Some(std::time::Instant::now());
                if let Some(n) = self.engine.notifier.clone() {
                    self.probing = Some(tokio::spawn(probe_round(
                        self.engine.project.clone(),
                        n,
                        self.connections_down.clone(),
                    )));
                }
            }
            if leader && self.last_sla.is_none_or(|t| t.elapsed() >= SLA_EVERY) {
                self.last_sla = Some(std::time::Instant::now());
                self.check_slas().await?;
            }
            if self.last_lag.is_none_or(|t| t.elapsed() >= LAG_EVERY) {
                self.last_lag = Some(std::time::Instant::now());
                self.metrics.upkeep();
            }
            if self.last_beat.is_none_or(|t| t.elapsed() >= BEAT_EVERY) {
                self.last_beat = Some(std::time::Instant::now());
                let st = self.shared.get();
                let running: Vec<serde_json::Value> = self
                    .running
                    .values()
                    .map(|r| {
                        serde_json::json!({
                            "job": r.step.job,
                            "step": r.step.step,
                            "interval_start": r.step.interval_start,
                            "started_at": r.step.started_at,
                        })
                    })
                    .collect();
                let status = serde_json::json!({
                    "role": self.leadership.role(),
                    "running": running,
                    "project_hash": st.project_hash,
                    "jobs": st.jobs,
                    "active_runs": self.active.len(),
                    "running_steps": self.running.len(),
                    "listen": self.listen.or(self.engine.project.daemon.listen).map(|a| a.to_string()),
                    "reload_errors": st.reload_errors,
                });
                if self.is_fleet() {
                    let fresh = Utc::now() - chrono::Duration::seconds(3 * BEAT_EVERY.as_secs() as i64);
                    self.fleet_size = self
                        .store
                        .daemons()
                        .await?
                        .iter()
                        .filter(|d| d.stopped_at.is_none() && d.heartbeat_at >= fresh)
                        .count()
                        .max(1);
                }
                // Alone on the store, an outage of it cancels no attempt (nobody can take one
                // over meanwhile); with others, an attempt whose lease is not renewed stops.
                self.engine.leases.set_alone(self.fleet_size <= 1);
                self.store
                    .daemon_beat(
                        &self.id,
                        i64::from(std::process::id()),
                        &hostname(),
                        env!("CARGO_PKG_VERSION"),
                        &status,
                    )
                    .await?;
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                self.shared.update(|s| {
                    s.store_ok = true;
                    s.store_error = None;
                });
                if let Some(since) = self.store_down.take() {
                    let down =
                        humantime::format_duration(Duration::from_secs(since.elapsed().as_secs()));
                    let a = crate::alerts::Alert::new(
                        &self.engine.project,
                        "resolved",
                        format!("the metadata store is reachable again (after {down})"),
                    )
                    .details(serde_json::json!({ "resolves": "store_unreachable" }));
                    self.send_now(a);
                }
            }
            Err(e) => {
                tracing::error!("metadata store: {e}");
                self.shared.update(|s| {
                    s.store_ok = false;
                    s.store_error = Some(e.to_string());
                });
                if self.store_down.is_none() {
                    self.store_down = Some(std::time::Instant::now());
                    // The queue is in the store: this one goes out directly.
                    let a = crate::alerts::Alert::new(
                        &self.engine.project,
                        "store_unreachable",
                        format!(
                            "the daemon cannot reach its metadata store {}: nothing is scheduled until it is back",
                            crate::store::redact_url(&self.engine.project.state_url)
                        ),
                    )
                    .details(serde_json::json!({ "error": e.to_string() }));
                    self.send_now(a);
                }
            }
        }
    }

    /// Sends an alert to the project's channels that take it, at once and in the background,
    /// without the queue (for when the store itself is what failed).
    fn send_now(&self, alert: crate::alerts::Alert) {
        let project = self.engine.project.clone();
        let event = alert.event.clone();
        let channels: Vec<String> = project
            .defaults
            .alerts
            .clone()
            .unwrap_or_else(|| project.alerts.keys().cloned().collect())
            .into_iter()
            .filter(|c| project.alerts.get(c).is_some_and(|ch| ch.takes(&event)))
            .collect();
        let Ok(payload) = serde_json::to_value(&alert) else {
            return;
        };
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            for name in channels {
                let Some(ch) = project.alerts.get(&name) else {
                    continue;
                };
                match crate::alerts::channels::send_one(&project, ch, &payload).await {
                    Ok(()) => metrics.alert(&name, &event, "sent"),
                    Err(e) => {
                        metrics.alert(&name, &event, "failed");
                        tracing::error!(channel = name, "sending a {event} alert: {e}");
                    }
                }
            }
        });
    }

    /// Probes every database connection once and waits for the answers (housekeeping starts the
    /// same probe in the background every [`PROBE_EVERY`], so a dead server never holds up the
    /// loop).
    pub async fn probe_connections(&mut self) {
        if let Some(n) = self.engine.notifier.clone() {
            probe_round(
                self.engine.project.clone(),
                n,
                self.connections_down.clone(),
            )
            .await;
        }
    }

    /// Schedules what is due at the clock's time and gives out slots.
    pub async fn tick(&mut self) {
        let pass = std::time::Instant::now();
        let now = self.clock.now();
        let backing_off = self.retry_at.is_some_and(|t| now < t);
        if !self.stopping && !backing_off && self.leadership.is_leader() {
            self.retry_at = None;
            if let Err(e) = self.new_term().await {
                tracing::error!("becoming the leader: metadata store: {e} (trying again in 1s)");
                self.retry_at = Some(now + chrono::Duration::seconds(1));
            } else if let Err(e) = self.schedule(now).await {
                // Not again at once: a store that is down must not turn the loop into a spin.
                tracing::error!("scheduling: metadata store: {e} (trying again in 1s)");
                self.retry_at = Some(now + chrono::Duration::seconds(1));
            }
        }
        if let Err(e) = self.dispatch().await {
            tracing::error!("dispatching steps: {e}");
        }
        if !self.stopping {
            // (After dispatching, which finishes the runs that are complete and so makes room.)
            if self.is_fleet() && self.last_take.is_none_or(|t| t.elapsed() >= TAKE_EVERY) {
                self.last_take = Some(std::time::Instant::now());
                let room = self.slots.max_running.saturating_sub(self.active.len());
                if room == 0 {
                    // Full: the next look is when a run ends.
                } else if let Err(e) = self.take_over_queued(room).await {
                    tracing::error!("taking queued runs: metadata store: {e}");
                }
            }
            if let Err(e) = self.feed_backfills().await {
                tracing::error!("backfill requests: metadata store: {e}");
            }
            if let Err(e) = self.dispatch().await {
                tracing::error!("dispatching steps: {e}");
            }
        }
        self.publish();
        self.metrics.loop_pass(pass.elapsed().as_secs_f64());
    }

    /// Writes what the daemon is doing into `/health`.
    fn publish(&self) {
        let running: Vec<RunningStep> = self.running.values().map(|r| r.step.clone()).collect();
        let pools = self
            .slots
            .pool_usage()
            .into_iter()
            .map(|(name, slots, used)| PoolUsage { name, slots, used })
            .collect();
        let mut paused: Vec<String> = self.paused.iter().cloned().collect();
        paused.sort();
        let (active, stopping) = (self.active.len(), self.stopping);
        let role = self.leadership.role();
        self.metrics.leader(self.leadership.is_leader());
        self.metrics.scheduler(
            self.running.len(),
            self.slots.max_running,
            self.queued,
            active,
            &self.slots.pool_usage(),
        );
        self.shared.update(|s| {
            s.last_tick = Some(Utc::now());
            s.running_steps = running;
            s.active_runs = active;
            s.pools = pools;
            s.paused = paused;
            s.stopping = stopping;
            s.role = role;
        });
    }

    /// Ticks and waits for step tasks until nothing runs and nothing more can start (for tests
    /// driven by a [`clock::ManualClock`]; cross-job waits on another process are not waited for).
    pub async fn settle(&mut self) {
        self.housekeeping().await;
        loop {
            self.tick().await;
            if self.tasks.is_empty() {
                self.housekeeping().await;
                self.tick().await;
                if self.tasks.is_empty() {
                    return;
                }
            }
            if let Some(j) = self.tasks.join_next_with_id().await {
                self.on_joined(j);
            }
        }
    }

    /// Reloads the project if its files changed: a version that passes `check` replaces the
    /// loaded one for new runs; one that fails is refused, logged and kept for `/health`.
    pub async fn maybe_reload(&mut self) -> bool {
        let root = self.root.clone();
        let fp = tokio::task::spawn_blocking(move || Fingerprint::of(&root))
            .await
            .unwrap_or_default();
        if fp == self.fingerprint {
            return false;
        }
        self.fingerprint = fp.clone();
        let refused = |errors: Vec<String>, shared: &Shared| {
            for e in &errors {
                tracing::error!("reload refused: {e}");
            }
            tracing::error!(
                "reload refused: the project has {} error(s); the previous version keeps running",
                errors.len()
            );
            shared.update(|s| {
                s.reload_errors = errors;
                s.reload_refused_at = Some(Utc::now());
            });
        };
        let checked = match load_project(&self.root, &self.env).await {
            Ok(c) => c,
            Err(e) => {
                let errors = vec![format!("error: {e}")];
                refused(errors.clone(), &self.shared);
                self.metrics.reload(false);
                self.alert_reload_refused(errors).await;
                return false;
            }
        };
        if checked.diagnostics.has_errors() {
            let errors = error_lines(&checked);
            refused(errors.clone(), &self.shared);
            self.metrics.reload(false);
            self.alert_reload_refused(errors).await;
            return false;
        }
        let project = checked.project.clone();
        let mut engine = Engine::new(project.clone(), checked.graph.clone(), self.store.clone());
        engine.log_format = self.engine.log_format;
        engine.owner = self.engine.owner.clone();
        engine.lease_ttl = self.engine.lease_ttl;
        engine.heartbeat_every = self.engine.heartbeat_every;
        engine.leases = self.engine.leases.clone();
        engine.stop = self.engine.stop.clone();
        engine.notifier = Some(crate::alerts::Notifier::new(
            project.clone(),
            self.store.clone(),
        ));
        self.engine = engine;
        let _ = self.engine_tx.send(self.engine.clone());
        // The alert deliverer sends on the new version's channels.
        let _ = self.project_tx.send(project.clone());
        self.slots.resize(
            project.daemon.max_running_steps,
            project.pools.iter().map(|(n, s)| (n.clone(), *s as usize)),
        );
        self.next_due.clear();
        self.metrics.reload(true);
        let hash = fp.hash();
        tracing::info!(jobs = project.jobs.len(), hash, "reloaded the project");
        self.shared.update(|s| {
            s.project_hash = hash;
            s.loaded_at = Some(Utc::now());
            s.jobs = project.jobs.len();
            s.reload_errors.clear();
            s.reload_refused_at = None;
            s.max_running_steps = project.daemon.max_running_steps;
        });
        true
    }

    async fn alert_reload_refused(&self, errors: Vec<String>) {
        if let Some(n) = &self.engine.notifier {
            let summary = format!(
                "reload refused: the project has {} error(s); the previous version keeps running ({})",
                errors.len(),
                errors.first().map(String::as_str).unwrap_or("")
            );
            let alert = crate::alerts::Alert::new(&self.engine.project, "reload_refused", summary)
                .details(serde_json::json!({ "errors": errors }));
            n.raise(alert).await;
        }
    }

    /// Raises `sla_missed` for every interval that ended more than its job's `sla` ago (within
    /// the last day of such deadlines) without every step succeeding, once per interval: checked
    /// on the daemon's clock, so a run never created, stuck waiting, or missed while the daemon was
    /// down counts too.
    pub async fn check_slas(&mut self) -> Result<(), StoreError> {
        let Some(n) = self.engine.notifier.clone() else {
            return Ok(());
        };
        let now = self.clock.now();
        let project = self.engine.project.clone();
        for j in project
            .jobs
            .iter()
            .filter(|j| j.runnable && !j.alerts.is_empty())
        {
            let Some(sla) = j.sla.and_then(|d| chrono::TimeDelta::from_std(d).ok()) else {
                continue;
            };
            if self.paused.contains(&j.name) {
                continue;
            }
            // Intervals whose deadline (end + sla) passed in the last day.
            let latest_end = now - sla;
            let earliest_end = latest_end - chrono::TimeDelta::days(1);
            let intervals: Vec<Interval> = j
                .calendar
                .intervals(earliest_end - chrono::TimeDelta::days(32), latest_end)
                .into_iter()
                .filter(|iv| iv.end > earliest_end && iv.end <= latest_end)
                .collect();
            let (Some(first), Some(last)) = (intervals.first(), intervals.last()) else {
                continue;
            };
            let records = self
                .store
                .step_states(&j.name, first.start, last.end)
                .await?;
            let watermark = self.watermarks.get(&j.name).copied();
            // Without a decision yet and without catchup, the scheduler runs only the latest
            // ended interval: the earlier ones are not missed, they are not wanted.
            let latest = plan::due(&j.calendar, false, now, None, 1)
                .run
                .first()
                .copied();
            for iv in &intervals {
                let ran = records.iter().any(|r| r.interval.start == iv.start);
                let wanted = match watermark {
                    // Decided: it ran (its records tell), or it was passed over.
                    Some(w) if iv.start <= w => ran,
                    // Not decided yet: the scheduler will run it.
                    Some(_) => true,
                    None => ran || j.catchup || latest.is_some_and(|l| l.start == iv.start),
                };
                if !wanted {
                    continue;
                }
                let ok = j.steps.iter().all(|s| {
                    records.iter().any(|r| {
                        r.interval.start == iv.start
                            && r.step == s.id
                            && r.state == StepState::Success
                    })
                });
                if ok || !self.store.claim_sla_alert(&j.name, iv.start).await? {
                    continue;
                }
                let late = now - iv.end;
                let alert = crate::alerts::Alert::new(
                    &project,
                    "sla_missed",
                    format!(
                        "{} has not succeeded for {} .. {} ({} after its end; sla {})",
                        j.name,
                        iv.start_local(j.timezone).format("%Y-%m-%d %H:%M"),
                        iv.end_local(j.timezone).format("%Y-%m-%d %H:%M %Z"),
                        humantime::format_duration(late.to_std().unwrap_or_default()),
                        humantime::format_duration(sla.to_std().unwrap_or_default()),
                    ),
                )
                .job(&j.name)
                .interval(*iv)
                .details(serde_json::json!({
                    "sla_seconds": sla.num_seconds(),
                    "late_seconds": late.num_seconds(),
                }));
                n.raise(alert).await;
            }
        }
        Ok(())
    }

    /// Measures every `kafka_to_s3` step's consumer lag on the broker now, into the metrics
    /// (see [`refresh_lag`]).
    pub async fn refresh_lag(&self) {
        refresh_lag(&self.engine.project, &self.store, &self.metrics).await;
    }

    /// The daemon's loop, until `stop` is cancelled (the first SIGTERM/SIGINT); then a clean stop
    /// ([`Daemon::shutdown`]), cut short by `force` (the second signal).
    pub async fn run(
        mut self,
        stop: CancellationToken,
        force: CancellationToken,
    ) -> Result<(), DaemonError> {
        let serve_stop = CancellationToken::new();
        let listen = self
            .listen
            .or(self.engine.project.daemon.listen)
            .filter(|_| self.serve_health);
        let server = match listen {
            Some(addr) => Some(
                health::serve(
                    addr,
                    self.shared.clone(),
                    self.metrics.clone(),
                    self.routes.take(),
                    serve_stop.clone(),
                )
                .await
                .map_err(|source| DaemonError::Listen { addr, source })?,
            ),
            None => None,
        };
        let _keeper = self.engine.keep_leases().drop_guard();
        {
            // The leader lock goes at the first signal, not after the grace period: another
            // daemon schedules while this one winds down.
            let (stop, elector_stop) = (stop.clone(), self.elector_stop.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => elector_stop.cancel(),
                    _ = elector_stop.cancelled() => {}
                }
            });
        }
        let alerts_stop = CancellationToken::new();
        let lag_task = {
            let rx = self.project_tx.subscribe();
            let (store, metrics, stop, leadership) = (
                self.store.clone(),
                self.metrics.clone(),
                alerts_stop.clone(),
                self.leadership.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let project = rx.borrow().clone();
                    // One measurement for the fleet: the leader's.
                    if leadership.is_leader() {
                        refresh_lag(&project, &store, &metrics).await;
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(LAG_EVERY) => {}
                    }
                }
            })
        };
        let deliverer = {
            let rx = self.project_tx.subscribe();
            let store = self.store.clone();
            let stop = alerts_stop.clone();
            let m = self.metrics.clone();
            let leadership = self.leadership.clone();
            tokio::spawn(crate::alerts::deliver::run(
                move || rx.borrow().clone(),
                store,
                ALERT_EVERY,
                stop,
                // Only the leader sends, so an alert never goes out twice.
                move || leadership.is_leader(),
                move |a, sent| m.alert(&a.channel, &a.event, if sent { "sent" } else { "failed" }),
            ))
        };
        let mut watcher = reload::watch(&self.root);
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rescan = tokio::time::interval(RESCAN_EVERY);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(
            daemon = self.id,
            jobs = self.engine.project.jobs.len(),
            store = crate::store::redact_url(&self.engine.project.state_url),
            listen = ?self.engine.project.daemon.listen,
            "daemon started"
        );
        self.housekeeping().await;
        self.tick().await;
        loop {
            let now = self.clock.now();
            let sleep_for = self
                .next_wake(now)
                .map(|w| (w - now).to_std().unwrap_or(Duration::ZERO))
                .unwrap_or(Duration::from_secs(3600));
            let changes = async {
                match watcher.as_mut() {
                    Some((_, rx)) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(j) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => self.on_joined(j),
                _ = tokio::time::sleep(sleep_for) => {}
                _ = housekeeping.tick() => self.housekeeping().await,
                Some(()) = changes => {
                    // Let an editor finish writing (several events for one save).
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    self.maybe_reload().await;
                }
                _ = rescan.tick() => { self.maybe_reload().await; }
            }
            self.tick().await;
        }
        // Another daemon leads from now on (within a second), while this one winds down.
        self.elector_stop.cancel();
        if let Some(e) = self.elector.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), e).await;
        }
        self.shutdown(force).await;
        alerts_stop.cancel();
        let _ = deliverer.await;
        lag_task.abort();
        // What the stop itself raised goes out too, briefly, unless another daemon is there to
        // send it (it would go out twice).
        if !self.is_fleet() || self.fleet_size <= 1 {
            crate::alerts::deliver::drain(
                &self.engine.project,
                &self.store,
                Duration::from_secs(5),
            )
            .await;
        }
        serve_stop.cancel();
        if let Some(s) = server {
            let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
        }
        Ok(())
    }

    /// A clean stop: claim nothing new; give running steps the grace to finish, saying what is
    /// still running every few seconds; then (or at once on `force`) cancel them: their attempts
    /// go back to pending and their runs to queued, for the next start. Leases are released.
    pub async fn shutdown(&mut self, force: CancellationToken) {
        self.stopping = true;
        self.publish();
        let grace = self.engine.project.daemon.shutdown_grace;
        tracing::info!(
            running = self.tasks.len(),
            grace_seconds = grace.as_secs_f64(),
            "stopping: claiming nothing new, waiting for running steps"
        );
        let deadline = tokio::time::Instant::now() + grace;
        let mut say = tokio::time::interval(Duration::from_secs(5));
        say.tick().await;
        let mut cancelled = false;
        while !self.tasks.is_empty() {
            tokio::select! {
                Some(j) = self.tasks.join_next_with_id() => self.on_joined(j),
                _ = tokio::time::sleep_until(deadline), if !cancelled => {
                    tracing::warn!(running = self.tasks.len(), "grace period over: cancelling the running steps");
                    self.cancel.cancel();
                    cancelled = true;
                }
                _ = force.cancelled(), if !cancelled => {
                    tracing::warn!(running = self.tasks.len(), "second signal: cancelling the running steps now");
                    self.cancel.cancel();
                    cancelled = true;
                }
                _ = say.tick() => {
                    let names: Vec<String> = self
                        .running
                        .values()
                        .map(|r| format!("{}.{} ({}s)", r.step.job, r.step.step,
                            (Utc::now() - r.step.started_at).num_seconds()))
                        .collect();
                    tracing::info!("still running: {}", names.join(", "));
                }
            }
        }
        let ids: Vec<i64> = self.active.keys().copied().collect();
        for id in ids {
            if let Some(mut a) = self.active.remove(&id) {
                let requeue = a.request.is_none_or(|r| {
                    self.backfills.contains_key(&r) || a.trigger == Trigger::Manual
                });
                match a.run.finish(&a.engine, requeue).await {
                    Ok(r) => tracing::info!(
                        run_id = id,
                        state = r.state.as_str(),
                        "run left for the next start"
                    ),
                    Err(e) => tracing::error!(run_id = id, "recording the run: {e}"),
                }
            }
        }
        if let Err(e) = self.store.release_leases(&self.engine.owner).await {
            tracing::warn!("releasing leases: {e}");
        }
        if let Err(e) = self.store.release_requests(&self.engine.owner).await {
            tracing::warn!("releasing requests: {e}");
        }
        if let Err(e) = self.store.daemon_stopped(&self.id).await {
            tracing::warn!("recording the stop: {e}");
        }
        tracing::info!("daemon stopped");
    }
}
