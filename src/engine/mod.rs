//! The run engine: runs the steps of one job for one logical interval, and backfills ranges.
//!
//! A run selects steps (all, or `--steps` globs, with `--downstream`), skips those whose record for the
//! interval already says success, and runs the rest concurrently as their dependencies finish, up to the
//! parallelism limit. A failed step marks everything downstream `upstream_failed` while independent
//! branches go on. Every state change goes through [`state::transition`] and is persisted before the
//! engine moves on, so an interrupted run can be resumed: the store's per-step interval record is the
//! source of truth for what is done.

pub mod deps;
pub mod leases;
pub mod logs;
pub mod retry;
pub mod run;
pub mod state;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use globset::{Glob, GlobSet, GlobSetBuilder};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::dag::ProjectGraph;
use crate::project::{Job, Project};
use crate::schedule::Interval;
use crate::steps::{ErrorClass, RunCx, StepError, StepOutput};
use crate::store::{AttemptResult, Claim, RunState, StepState, Store, StoreError, Trigger};
use crate::template::{Renderer, TemplateVars};
use logs::{AttemptLog, LogFormat};
pub use run::{ActiveRun, Prepared, StepDone, StepTask};

/// Errors that stop a run or backfill from starting or continuing (step failures are not errors: they
/// are recorded and reported).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("unknown job '{0}'")]
    UnknownJob(String),
    #[error(
        "job '{0}' cannot run: its schedule, time zone or start is invalid (run `cranium check`)"
    )]
    NotRunnable(String),
    #[error("--steps '{pattern}': {message}")]
    BadSelection { pattern: String, message: String },
    #[error("--steps {patterns}: matches no step of job '{job}' (steps: {steps})")]
    EmptySelection {
        job: String,
        patterns: String,
        steps: String,
    },
    #[error("metadata store: {0}")]
    Store(#[from] StoreError),
    #[error("illegal state change for step '{step}': {source}")]
    State {
        step: String,
        source: state::IllegalTransition,
    },
}

/// Which already-finished steps and intervals to run again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rerun {
    /// Only what never ran or was cleared (default).
    #[default]
    None,
    /// Also intervals with failed steps (their succeeded steps are still skipped).
    Failed,
    /// Everything selected, including steps that succeeded.
    All,
}

/// Options of one run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Glob patterns over step ids; empty = every step.
    pub steps: Vec<String>,
    /// Also select everything downstream (within the job) of the selected steps.
    pub downstream: bool,
    /// Steps running at once.
    pub parallelism: usize,
    pub trigger: Trigger,
    pub rerun: Rerun,
    /// How long to wait for cross-job upstream intervals to succeed before giving up on a step.
    pub upstream_wait: Duration,
    /// Treat steps that are not selected, and cross-job dependencies, as satisfied (for development:
    /// rerun one step without its upstream).
    pub ignore_upstream: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            steps: Vec::new(),
            downstream: false,
            parallelism: 8,
            trigger: Trigger::Manual,
            rerun: Rerun::None,
            upstream_wait: Duration::ZERO,
            ignore_upstream: false,
        }
    }
}

/// What happened to one step in a run.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    pub step: String,
    pub state: StepState,
    pub attempts: u32,
    pub duration: Duration,
    pub rows_affected: Option<i64>,
    /// Bytes the step wrote, when it says.
    pub bytes: Option<i64>,
    pub error: Option<String>,
    /// True when the step was not run because it had already succeeded for this interval.
    pub already_done: bool,
}

impl StepReport {
    /// A selected step that had already succeeded for the interval.
    pub fn already_done(step: &str) -> StepReport {
        StepReport {
            step: step.to_string(),
            state: StepState::Success,
            attempts: 0,
            duration: Duration::ZERO,
            rows_affected: None,
            bytes: None,
            error: None,
            already_done: true,
        }
    }
}

/// What happened in one run.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub run_id: i64,
    pub job: String,
    pub interval: Interval,
    pub state: RunState,
    pub steps: Vec<StepReport>,
    pub duration: Duration,
}

impl RunReport {
    pub fn succeeded(&self) -> bool {
        self.state == RunState::Success
    }
}

/// The engine: a checked project, its graph, and the metadata store.
#[derive(Clone)]
pub struct Engine {
    pub project: Arc<Project>,
    pub graph: Arc<ProjectGraph>,
    pub store: Store,
    pub renderer: Arc<Renderer>,
    pub log_format: LogFormat,
    /// How often a running run records that it is alive.
    pub heartbeat_every: Duration,
    /// Who this process is in the store's step leases (`cli:PID:…` or `daemon:…`).
    pub owner: String,
    /// How long a step lease lasts without renewal ([`Engine::keep_leases`] renews it).
    pub lease_ttl: Duration,
    /// Where failures are raised as alerts (None: `--no-alerts`).
    pub notifier: Option<crate::alerts::Notifier>,
    /// The leases this process holds (shared by the versions of a reloaded project).
    pub leases: leases::LeaseBook,
    /// How long a step's records are retried while the metadata store is unreachable (the work is
    /// done or under way; only its record waits), before the attempt is given up as failed.
    pub store_patience: Duration,
    /// The process is stopping for good (a daemon past its grace): store writes stop waiting for
    /// an unreachable store.
    pub stop: CancellationToken,
}

/// [`Engine::store_patience`] unless set: a store restart or a failover fits well within it.
pub const STORE_PATIENCE: Duration = Duration::from_secs(600);

/// Step outputs, as templates read them.
type Outputs = serde_json::Map<String, serde_json::Value>;
/// A step's upstream: indexes of steps in its job, and (job, step) pairs in other jobs.
type Upstream = (Vec<usize>, Vec<(String, String)>);

impl Engine {
    pub fn new(project: Arc<Project>, graph: Arc<ProjectGraph>, store: Store) -> Engine {
        Engine {
            project,
            graph,
            store,
            renderer: Arc::new(Renderer::new()),
            log_format: LogFormat::Text,
            heartbeat_every: Duration::from_secs(5),
            owner: format!("cli:{}:{}", std::process::id(), rand::random::<u32>()),
            lease_ttl: Duration::from_secs(30),
            notifier: None,
            leases: leases::LeaseBook::default(),
            store_patience: STORE_PATIENCE,
            stop: CancellationToken::new(),
        }
    }

    /// Runs one store write of a step's progress, again and again with backoff (250 ms doubling
    /// to 10 s) while the store is unreachable, for up to [`Engine::store_patience`]: a store that
    /// restarts under a running step delays its record, it does not lose it. Other errors (a
    /// fenced write, a bad value) are returned at once.
    async fn durably<T, F, Fut>(&self, op: &str, mut write: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let started = Instant::now();
        let mut wait = Duration::from_millis(250);
        let mut failures = 0u32;
        loop {
            match write().await {
                Err(e)
                    if e.is_unreachable()
                        && started.elapsed() < self.store_patience
                        && !self.stop.is_cancelled() =>
                {
                    if failures == 0 {
                        tracing::warn!(
                            "recording {op}: the metadata store is unreachable ({e}); retrying with \
                             backoff for up to {}",
                            humantime::format_duration(self.store_patience)
                        );
                    }
                    failures += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.stop.cancelled() => {}
                    }
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
                Ok(v) => {
                    if failures > 0 {
                        tracing::info!(
                            "recorded {op} after {failures} failed tries over {:.1}s: the metadata \
                             store is reachable again",
                            started.elapsed().as_secs_f64()
                        );
                    }
                    return Ok(v);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Renews this process's step leases every third of their time to live until the returned
    /// token is cancelled (or dropped with [`tokio_util::sync::DropGuard`]). A process that dies
    /// stops renewing: its leases expire and another runner may take the steps over.
    pub fn keep_leases(&self) -> CancellationToken {
        let stop = CancellationToken::new();
        let (store, owner, ttl, guard, book) = (
            self.store.clone(),
            self.owner.clone(),
            self.lease_ttl,
            stop.clone(),
            self.leases.clone(),
        );
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = guard.cancelled() => break,
                    _ = tokio::time::sleep(ttl / 3) => {
                        let answered = match tokio::time::timeout(ttl / 3, store.renew_leases(&owner, ttl)).await {
                            Ok(Ok(keys)) => {
                                book.renewed(&keys);
                                true
                            }
                            Ok(Err(e)) => {
                                tracing::warn!("renewing step leases: {e}");
                                !e.is_unreachable()
                            }
                            Err(_) => {
                                tracing::warn!(
                                    "renewing step leases: the metadata store did not answer within {:?}",
                                    ttl / 3
                                );
                                false
                            }
                        };
                        book.set_answered(answered);
                        // Not renewed for half their time to live (one and a half, alone on a
                        // store that does not answer; see `LeaseBook::held`): another runner may
                        // take them over soon, so their attempts stop now.
                        for (job, step, start) in book.cancel_overdue(ttl / 2) {
                            tracing::error!(
                                job, step, interval_start = %start,
                                "cannot renew the step's lease for {:?}: cancelling its attempt (it runs again later)",
                                ttl / 2
                            );
                        }
                    }
                }
            }
        });
        stop
    }

    fn job_index(&self, job: &str) -> Result<usize, EngineError> {
        let i = self
            .project
            .jobs
            .iter()
            .position(|j| j.name == job)
            .ok_or_else(|| EngineError::UnknownJob(job.to_string()))?;
        if !self.project.jobs[i].runnable {
            return Err(EngineError::NotRunnable(job.to_string()));
        }
        Ok(i)
    }

    /// Which steps of the job the options select (by index).
    pub fn select(&self, job: &Job, opts: &RunOptions) -> Result<Vec<bool>, EngineError> {
        if opts.steps.is_empty() {
            return Ok(vec![true; job.steps.len()]);
        }
        let set = glob_set(&opts.steps)?;
        let mut selected: Vec<bool> = job.steps.iter().map(|s| set.is_match(&s.id)).collect();
        // Every pattern must match something: a typo in one of several must not pass silently.
        let unmatched: Vec<String> = opts
            .steps
            .iter()
            .filter(|p| {
                glob_set(std::slice::from_ref(*p))
                    .is_ok_and(|g| !job.steps.iter().any(|s| g.is_match(&s.id)))
            })
            .cloned()
            .collect();
        if !unmatched.is_empty() {
            return Err(EngineError::EmptySelection {
                job: job.name.clone(),
                patterns: unmatched.join(", "),
                steps: job
                    .steps
                    .iter()
                    .map(|s| s.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        if opts.downstream {
            // Everything reachable within the job from a selected step.
            let mut stack: Vec<usize> = (0..job.steps.len()).filter(|i| selected[*i]).collect();
            while let Some(i) = stack.pop() {
                let Some(n) = self.graph.node(&job.name, &job.steps[i].id) else {
                    continue;
                };
                for m in self.graph.graph.neighbors_directed(n, Direction::Outgoing) {
                    let id = &self.graph.graph[m];
                    if id.job != job.name {
                        continue;
                    }
                    if let Some(j) = job.steps.iter().position(|s| s.id == id.step) {
                        if !selected[j] {
                            selected[j] = true;
                            stack.push(j);
                        }
                    }
                }
            }
        }
        Ok(selected)
    }

    /// Upstream steps of step `i` within its job (indexes), and cross-job upstream (job, step) pairs.
    fn upstream_of(&self, job: &Job, i: usize) -> (Vec<usize>, Vec<(String, String)>) {
        let mut within = Vec::new();
        let mut cross = Vec::new();
        if let Some(n) = self.graph.node(&job.name, &job.steps[i].id) {
            for e in self.graph.graph.edges_directed(n, Direction::Incoming) {
                let u = &self.graph.graph[e.source()];
                if u.job == job.name {
                    if let Some(j) = job.steps.iter().position(|s| s.id == u.step) {
                        within.push(j);
                    }
                } else {
                    cross.push((u.job.clone(), u.step.clone()));
                }
            }
        }
        within.sort_unstable();
        cross.sort();
        (within, cross)
    }

    /// Whether every upstream interval of a cross-job dependency has succeeded.
    async fn cross_job_ready(
        &self,
        dep_job: &str,
        dep_step: &str,
        interval: Interval,
    ) -> Result<Option<String>, EngineError> {
        let Some(up) = self.project.job(dep_job) else {
            return Ok(Some(format!("unknown job '{dep_job}'")));
        };
        for ui in deps::upstream_intervals(&up.calendar, interval) {
            let rec = self.store.step_state(dep_job, dep_step, ui.start).await?;
            if rec.as_ref().map(|r| r.state) != Some(StepState::Success) {
                return Ok(Some(format!(
                    "upstream {dep_job}.{dep_step} has not succeeded for its interval starting {} (state: {})",
                    ui.start_local(up.timezone).format("%Y-%m-%d %H:%M %Z"),
                    rec.map(|r| r.state.as_str().to_string()).unwrap_or_else(|| "never ran".into())
                )));
            }
        }
        Ok(None)
    }

    /// Run the selected steps of `job` for one interval, in the foreground: up to
    /// `opts.parallelism` steps at once, waiting for steps that another runner holds.
    pub async fn run_interval(
        &self,
        job_name: &str,
        interval: Interval,
        opts: &RunOptions,
        cancel: CancellationToken,
    ) -> Result<RunReport, EngineError> {
        let mut run = match self.prepare(job_name, interval, opts, None).await? {
            Prepared::Nothing(report) => return Ok(report),
            Prepared::Run(run) => *run,
            // Only an adopted run can be taken over.
            Prepared::TakenOver { run_id } => {
                return Err(EngineError::Store(crate::store::StoreError::NotFound {
                    what: "run",
                    id: run_id,
                }))
            }
        };
        let mut tasks: JoinSet<StepDone> = JoinSet::new();
        let parallelism = opts.parallelism.max(1);
        let mut last_recheck = Instant::now();
        loop {
            let recheck = last_recheck.elapsed() >= Duration::from_millis(500);
            if recheck {
                last_recheck = Instant::now();
            }
            let ready = run.ready(self, &cancel, recheck).await?;
            let mut progressed = false;
            for i in ready {
                if tasks.len() >= parallelism {
                    break;
                }
                match self.claim(&mut run, i).await? {
                    Claim::Acquired { .. } => {
                        let task = run.start(self, i);
                        let engine = self.clone();
                        let cancel = cancel.clone();
                        tasks.spawn(async move { engine.execute(task, cancel).await });
                    }
                    Claim::Done { .. } => progressed = true,
                    // Held by another runner, or its pool full across the store: asked again.
                    Claim::Held { .. } | Claim::Full { .. } => {}
                }
            }
            if progressed {
                continue;
            }
            if tasks.is_empty() {
                if run.pending() == 0 || run.is_lost() || cancel.is_cancelled() {
                    break;
                }
                // Waiting for another job's interval, or for a step that another runner holds.
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                continue;
            }
            match tasks.join_next().await {
                Some(Ok(done)) => run.record(done),
                Some(Err(e)) => {
                    // A panic inside a step is a bug; the step's record stays running and the run fails.
                    tracing::error!(job = job_name, "a step task failed: {e}");
                    return Err(EngineError::Store(StoreError::Corrupt(format!(
                        "step task failed: {e}"
                    ))));
                }
                None => {}
            }
        }
        let mut run = run;
        run.finish(self, false).await
    }

    /// Persist a checked state change.
    #[allow(clippy::too_many_arguments)]
    async fn persist(
        &self,
        run_id: i64,
        job: &str,
        step: &str,
        interval: Interval,
        from: StepState,
        to: StepState,
        attempt: u32,
        outputs: Option<&serde_json::Value>,
        fence: Option<i64>,
    ) -> Result<(), EngineError> {
        state::transition(from, to).map_err(|source| EngineError::State {
            step: step.to_string(),
            source,
        })?;
        self.durably("a step's state", || async {
            match fence {
                Some(token) => {
                    self.store
                        .set_step_state_fenced(
                            run_id, job, step, interval, to, attempt, outputs, token,
                        )
                        .await
                }
                None => {
                    self.store
                        .set_step_state(run_id, job, step, interval, to, attempt, outputs)
                        .await
                }
            }
        })
        .await?;
        Ok(())
    }

    /// Records the end of an attempt, fenced by the lease's token when the attempt has one.
    async fn finish_attempt(
        &self,
        fence: Option<i64>,
        attempt_id: i64,
        result: &AttemptResult,
    ) -> Result<(), crate::store::StoreError> {
        self.durably("the end of an attempt", || async {
            match fence {
                Some(token) => {
                    self.store
                        .finish_attempt_fenced(attempt_id, result, token)
                        .await
                }
                None => self.store.finish_attempt(attempt_id, result).await,
            }
        })
        .await
    }

    /// Run one step with its retries. Store errors end the step as failed (and are logged).
    #[allow(clippy::too_many_arguments)]
    async fn run_step(
        &self,
        ji: usize,
        si: usize,
        job_name: &str,
        interval: Interval,
        run_id: i64,
        steps_vars: serde_json::Map<String, serde_json::Value>,
        cancel: CancellationToken,
        fence: Option<i64>,
    ) -> (
        StepReport,
        Option<serde_json::Map<String, serde_json::Value>>,
        bool,
    ) {
        let started = Instant::now();
        let job = &self.project.jobs[ji];
        let spec = &job.steps[si];
        let mut report = StepReport {
            step: spec.id.clone(),
            state: StepState::Failed,
            attempts: 0,
            duration: Duration::ZERO,
            rows_affected: None,
            bytes: None,
            error: None,
            already_done: false,
        };
        match self
            .attempts(
                ji,
                si,
                job_name,
                interval,
                run_id,
                steps_vars,
                cancel,
                &mut report,
                fence,
            )
            .await
        {
            Ok(outs) => {
                report.duration = started.elapsed();
                (report, outs, false)
            }
            Err(e) => {
                let lost = matches!(e, EngineError::Store(StoreError::Fenced { .. }));
                if lost {
                    tracing::error!(job = job_name, step = spec.id, run_id, "{e}");
                }
                report.state = StepState::Failed;
                report.error = Some(if lost {
                    e.to_string()
                } else {
                    format!("metadata store: {e}")
                });
                report.duration = started.elapsed();
                (report, None, lost)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn attempts(
        &self,
        ji: usize,
        si: usize,
        job_name: &str,
        interval: Interval,
        run_id: i64,
        steps_vars: serde_json::Map<String, serde_json::Value>,
        cancel: CancellationToken,
        report: &mut StepReport,
        fence: Option<i64>,
    ) -> Result<Option<serde_json::Map<String, serde_json::Value>>, EngineError> {
        let job = &self.project.jobs[ji];
        let spec = &job.steps[si];
        let mut from = StepState::Pending;
        let max_attempts = spec.retry.retries.saturating_add(1);
        for attempt in 1..=max_attempts {
            report.attempts = attempt;
            self.persist(
                run_id,
                job_name,
                &spec.id,
                interval,
                from,
                StepState::Running,
                attempt,
                None,
                fence,
            )
            .await?;
            let log = AttemptLog::create(
                &self.project.root,
                job_name,
                &spec.id,
                interval.start,
                attempt,
                run_id,
                self.log_format,
                self.project.redactor.clone(),
            );
            let log_path = log
                .path()
                .strip_prefix(&self.project.root)
                .unwrap_or(log.path())
                .display()
                .to_string();
            let attempt_id = self
                .durably("the start of an attempt", || async {
                    match fence {
                        Some(token) => {
                            self.store
                                .begin_attempt_fenced(
                                    run_id, job_name, &spec.id, interval, attempt, &log_path, token,
                                )
                                .await
                        }
                        None => {
                            self.store
                                .begin_attempt(
                                    run_id, job_name, &spec.id, interval, attempt, &log_path,
                                )
                                .await
                        }
                    }
                })
                .await?;
            log.info(&format!(
                "attempt {attempt} of {max_attempts}: {} step, interval {} .. {}",
                spec.config.as_step().kind(),
                interval.start_local(job.timezone).to_rfc3339(),
                interval.end_local(job.timezone).to_rfc3339()
            ));
            let deadline = spec.timeout.map(|t| Instant::now() + t);
            let cx = RunCx {
                project: self.project.clone(),
                job_index: ji,
                step_index: si,
                interval,
                run_id,
                attempt,
                vars: TemplateVars {
                    interval_start: interval.start,
                    interval_end: interval.end,
                    timezone: job.timezone,
                    run_id: format!(
                        "{job_name}__{}__{run_id}",
                        interval.start.format("%Y%m%dT%H%M%SZ")
                    ),
                    job: job_name.to_string(),
                    step: spec.id.clone(),
                    params: job.params.clone(),
                    steps: serde_json::Value::Object(steps_vars.clone()),
                },
                renderer: self.renderer.clone(),
                deadline,
                cancel: cancel.child_token(),
                log: log.clone(),
                notifier: self.notifier.clone(),
                lease_held: fence.map(|_| {
                    let (book, margin) = (self.leases.clone(), self.lease_ttl / 2);
                    let key = (job_name.to_string(), spec.id.clone(), interval.start);
                    Arc::new(move || book.held(&key, margin)) as Arc<dyn Fn() -> bool + Send + Sync>
                }),
            };
            let result = match exclusive_group(job, spec) {
                Some(group) => self.run_alone(&group, &cx, spec.timeout).await,
                None => run_with_deadline(&cx, spec.timeout).await,
            };
            match result {
                Ok(out) => {
                    let outputs = serde_json::Value::Object(out.outputs.clone());
                    self.finish_attempt(
                        fence,
                        attempt_id,
                        &AttemptResult {
                            state: Some(StepState::Success),
                            error: None,
                            rows_affected: out.rows_affected,
                            bytes: out.bytes,
                            outputs: outputs.clone(),
                        },
                    )
                    .await?;
                    if !out.consumer_lag.is_empty() {
                        let now = chrono::Utc::now();
                        let rows: Vec<crate::store::ConsumerLag> = out
                            .consumer_lag
                            .iter()
                            .map(|l| crate::store::ConsumerLag {
                                job: job_name.to_string(),
                                step: spec.id.clone(),
                                topic: l.topic.clone(),
                                partition: l.partition,
                                committed_offset: l.committed_offset,
                                end_offset: l.end_offset,
                                lag: (l.end_offset - l.committed_offset).max(0),
                                run_id: Some(run_id),
                                recorded_at: now,
                            })
                            .collect();
                        self.durably("consumer lag", || self.store.record_consumer_lag(&rows))
                            .await?;
                    }
                    self.persist(
                        run_id,
                        job_name,
                        &spec.id,
                        interval,
                        StepState::Running,
                        StepState::Success,
                        attempt,
                        Some(&outputs),
                        fence,
                    )
                    .await?;
                    log.info(&format!(
                        "succeeded{}",
                        out.rows_affected
                            .map(|r| format!(": {r} row(s)"))
                            .unwrap_or_default()
                    ));
                    report.state = StepState::Success;
                    report.rows_affected = out.rows_affected;
                    report.bytes = out.bytes;
                    report.error = None;
                    self.alert_step_succeeded(
                        job, &spec.id, interval, run_id, attempt, &out, &log_path,
                    )
                    .await;
                    return Ok(Some(out.outputs));
                }
                Err(e) => {
                    let message = self.project.redactor.redact(&e.message);
                    // A lease no longer trusted (not renewed in time) interrupts the attempt like
                    // a cancellation: another runner may be taking it over.
                    let lease_lost = fence.is_some()
                        && !self.leases.held(
                            &(job_name.to_string(), spec.id.clone(), interval.start),
                            self.lease_ttl / 2,
                        );
                    let retry = e.retryable()
                        && attempt < max_attempts
                        && !cancel.is_cancelled()
                        && !lease_lost;
                    // An attempt stopped by a cancellation is not a failure of the step: its record goes
                    // back to pending so that the next run (a resumed backfill) runs it again.
                    let interrupted = cancel.is_cancelled() || lease_lost;
                    let to = if retry {
                        StepState::UpForRetry
                    } else if interrupted {
                        StepState::Pending
                    } else {
                        StepState::Failed
                    };
                    log.error(&format!("failed: {message}"));
                    self.finish_attempt(
                        fence,
                        attempt_id,
                        &AttemptResult {
                            state: Some(to),
                            error: Some(message.clone()),
                            rows_affected: None,
                            bytes: None,
                            outputs: serde_json::Value::Object(Default::default()),
                        },
                    )
                    .await?;
                    self.persist(
                        run_id,
                        job_name,
                        &spec.id,
                        interval,
                        StepState::Running,
                        to,
                        attempt,
                        None,
                        fence,
                    )
                    .await?;
                    report.error = Some(message.clone());
                    if interrupted {
                        report.state = StepState::Pending;
                        return Ok(None);
                    }
                    if !retry {
                        if !e.retryable()
                            && attempt < max_attempts
                            && e.class != ErrorClass::Cancelled
                        {
                            log.info("not retried: a retry cannot fix this error");
                        }
                        report.state = StepState::Failed;
                        if let Some(n) = &self.notifier {
                            let alert = crate::alerts::Alert::new(
                                &self.project,
                                "step_failed",
                                format!(
                                    "{job_name}.{} failed after {attempt} attempt(s): {}",
                                    spec.id,
                                    first_line(&message)
                                ),
                            )
                            .job(job_name)
                            .step(&spec.id)
                            .interval(interval)
                            .run(run_id, Some(attempt))
                            .details(serde_json::json!({
                                "error": message,
                                "class": format!("{:?}", e.class),
                                "log": log_path,
                            }))
                            .link(Some(log_path.clone()));
                            n.raise(alert).await;
                        }
                        return Ok(None);
                    }
                    let wait = retry::delay(spec.retry.delay, spec.retry.backoff, attempt);
                    log.info(&format!("retrying in {:.1}s", wait.as_secs_f64()));
                    tokio::select! {
                        _ = cancel.cancelled() => {
                            self.persist(run_id, job_name, &spec.id, interval, StepState::UpForRetry, StepState::Pending, attempt, None, fence).await?;
                            report.state = StepState::Pending;
                            return Ok(None);
                        }
                        _ = tokio::time::sleep(wait) => {}
                    }
                    from = StepState::UpForRetry;
                }
            }
        }
        report.state = StepState::Failed;
        Ok(None)
    }

    /// After a step succeeded: its open `step_failed` condition resolves, and dead letters (a
    /// `kafka_to_s3` output) raise their own alert.
    #[allow(clippy::too_many_arguments)]
    async fn alert_step_succeeded(
        &self,
        job: &Job,
        step: &str,
        interval: Interval,
        run_id: i64,
        attempt: u32,
        out: &StepOutput,
        log_path: &str,
    ) {
        let Some(n) = &self.notifier else { return };
        if job.alerts.is_empty() {
            return;
        }
        let outputs = &out.outputs;
        let max_lag = match job.step(step).map(|s| &s.config) {
            Some(crate::steps::StepConfig::KafkaToS3(k)) => k.max_lag,
            _ => None,
        };
        if let Some(max) = max_lag {
            let lag: i64 = out
                .consumer_lag
                .iter()
                .map(|l| (l.end_offset - l.committed_offset).max(0))
                .sum();
            if lag as u64 > max {
                let partitions: Vec<serde_json::Value> = out
                    .consumer_lag
                    .iter()
                    .map(|l| {
                        serde_json::json!({
                            "topic": l.topic, "partition": l.partition,
                            "committed_offset": l.committed_offset, "end_offset": l.end_offset,
                            "lag": (l.end_offset - l.committed_offset).max(0),
                        })
                    })
                    .collect();
                let alert = crate::alerts::Alert::new(
                    &self.project,
                    "kafka_lag",
                    format!(
                        "{}.{step} is {lag} record(s) behind its topics after the run (max_lag {max})",
                        job.name
                    ),
                )
                .job(&job.name)
                .step(step)
                .interval(interval)
                .run(run_id, Some(attempt))
                .details(serde_json::json!({ "lag": lag, "max_lag": max, "partitions": partitions }))
                .link(Some(log_path.to_string()));
                n.raise(alert).await;
            } else {
                n.resolve(
                    &job.name,
                    Some(step),
                    "kafka_lag",
                    &format!(
                        "{}.{step} caught up: {lag} record(s) behind (max_lag {max})",
                        job.name
                    ),
                )
                .await;
            }
        }
        n.resolve(
            &job.name,
            Some(step),
            "step_failed",
            &format!("{}.{step} succeeded again", job.name),
        )
        .await;
        if let Some(dead) = outputs
            .get("dead_letters")
            .and_then(|v| v.as_u64())
            .filter(|d| *d > 0)
        {
            let alert = crate::alerts::Alert::new(
                &self.project,
                "dead_letters",
                format!("{}.{step} wrote {dead} dead letter(s)", job.name),
            )
            .job(&job.name)
            .step(step)
            .interval(interval)
            .run(run_id, Some(attempt))
            .details(serde_json::json!({ "dead_letters": dead, "outputs": outputs }))
            .link(Some(log_path.to_string()));
            n.raise(alert).await;
        }
    }

    /// After a run ended: `run_failed`, or `run_recovered` when the job's previous run failed.
    pub(crate) async fn alert_run_ended(
        &self,
        job: &str,
        interval: Interval,
        run_id: i64,
        state: RunState,
    ) {
        let Some(n) = &self.notifier else { return };
        if self.project.job(job).is_none_or(|j| j.alerts.is_empty()) {
            return;
        }
        match state {
            RunState::Failed => {
                let alert = crate::alerts::Alert::new(
                    &self.project,
                    "run_failed",
                    format!("run {run_id} of {job} failed (`cranium runs {job}`)"),
                )
                .job(job)
                .interval(interval)
                .run(run_id, None);
                n.raise(alert).await;
            }
            RunState::Success => {
                let recent = self
                    .store
                    .runs(&crate::store::RunFilter {
                        job: Some(job.to_string()),
                        state: None,
                        limit: 5,
                    })
                    .await
                    .unwrap_or_default();
                // The latest run that ended before this one.
                let previous = recent
                    .iter()
                    .filter(|r| r.id != run_id && r.ended_at.is_some())
                    .max_by_key(|r| r.ended_at);
                if previous.is_some_and(|r| r.state == RunState::Failed) {
                    let alert = crate::alerts::Alert::new(
                        &self.project,
                        "run_recovered",
                        format!("{job} succeeded again (run {run_id})"),
                    )
                    .job(job)
                    .interval(interval)
                    .run(run_id, None);
                    n.raise(alert).await;
                    n.resolve(job, None, "run_failed", &format!("{job} succeeded again"))
                        .await;
                }
            }
            _ => {}
        }
    }

    /// Decide which intervals of a backfill to run.
    pub async fn plan_backfill(
        &self,
        job_name: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        opts: &RunOptions,
    ) -> Result<BackfillPlan, EngineError> {
        let ji = self.job_index(job_name)?;
        let job = &self.project.jobs[ji];
        let selected = self.select(job, opts)?;
        let intervals = job.calendar.intervals(from, to);
        let mut by_interval: HashMap<DateTime<Utc>, HashMap<String, StepState>> = HashMap::new();
        if let (Some(first), Some(last)) = (intervals.first(), intervals.last()) {
            for r in self
                .store
                .step_states(job_name, first.start, last.end)
                .await?
            {
                by_interval
                    .entry(r.interval.start)
                    .or_default()
                    .insert(r.step, r.state);
            }
        }
        let mut plan = BackfillPlan::default();
        for iv in intervals {
            let states = by_interval.get(&iv.start);
            let steps: Vec<(String, Option<StepState>)> = job
                .steps
                .iter()
                .enumerate()
                .filter(|(i, _)| selected[*i])
                .map(|(_, s)| (s.id.clone(), states.and_then(|m| m.get(&s.id).copied())))
                .collect();
            let complete = steps.iter().all(|(_, s)| *s == Some(StepState::Success));
            let failed = steps
                .iter()
                .any(|(_, s)| matches!(s, Some(StepState::Failed | StepState::UpstreamFailed)));
            let run = match opts.rerun {
                Rerun::All => true,
                Rerun::Failed => !complete,
                Rerun::None => !complete && !failed,
            };
            if run {
                let to_run: Vec<String> = steps
                    .iter()
                    .filter(|(_, s)| opts.rerun == Rerun::All || *s != Some(StepState::Success))
                    .map(|(id, _)| id.clone())
                    .collect();
                plan.run.push((iv, to_run));
            } else if complete {
                plan.complete.push(iv);
            } else {
                plan.failed_skipped.push(iv);
            }
        }
        Ok(plan)
    }

    /// Run the planned intervals, oldest first, up to `max_active` at once. `on_done` sees each report.
    pub async fn backfill(
        &self,
        job_name: &str,
        plan: &BackfillPlan,
        opts: &RunOptions,
        max_active: usize,
        cancel: CancellationToken,
        on_done: &(dyn Fn(&RunReport) + Sync),
    ) -> Result<Vec<RunReport>, EngineError> {
        let mut reports = Vec::new();
        let intervals: Vec<Interval> = plan.run.iter().map(|(iv, _)| *iv).collect();
        let mut stream = futures::stream::iter(intervals)
            .map(|iv| {
                let cancel = cancel.clone();
                async move {
                    if cancel.is_cancelled() {
                        return None;
                    }
                    Some(self.run_interval(job_name, iv, opts, cancel).await)
                }
            })
            .buffered(max_active.max(1));
        while let Some(r) = stream.next().await {
            match r {
                Some(Ok(rep)) => {
                    on_done(&rep);
                    reports.push(rep);
                }
                Some(Err(e)) => return Err(e),
                None => {}
            }
        }
        Ok(reports)
    }
}

/// A backfill's intervals: what will run (with the steps), and what is skipped.
#[derive(Debug, Default, Clone)]
pub struct BackfillPlan {
    pub run: Vec<(Interval, Vec<String>)>,
    pub complete: Vec<Interval>,
    /// Intervals with failed steps that `--rerun failed` would run.
    pub failed_skipped: Vec<Interval>,
}

/// The first line of a message, for one-line summaries.
fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// Run the step's attempt; if it does not return within its timeout (plus a grace period for the
/// server-side cancel), give up on it.
/// The pseudo-job under which consumer-group leases live in `step_leases` (no job can be named
/// so: job names are identifiers).
pub const GROUP_LEASE_JOB: &str = "~consumer_group";

/// The Kafka consumer group a step reads with, which no two of its runs may read at once (they
/// would read the same committed offsets): `kafka_to_s3` steps.
fn exclusive_group(job: &Job, spec: &crate::project::StepSpec) -> Option<String> {
    match &spec.config {
        crate::steps::StepConfig::KafkaToS3(k) => Some(k.group_name(&job.name, &spec.id)),
        _ => None,
    }
}

/// The in-process lock of a consumer group (two runs of one daemon or one `backfill`).
fn group_lock(group: &str) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: std::sync::OnceLock<
        std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    > = std::sync::OnceLock::new();
    let locks = LOCKS.get_or_init(Default::default);
    let mut map = locks
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    map.entry(group.to_string()).or_default().clone()
}

impl Engine {
    /// Runs a step that reads consumer group `group` while no other run reads it: first within
    /// this process, then across every runner on the store (a lease on the group, renewed with
    /// the step's own, released when the step ends). While another daemon reads the group the
    /// attempt waits, saying so in its log.
    async fn run_alone(
        &self,
        group: &str,
        cx: &RunCx,
        timeout: Option<Duration>,
    ) -> Result<StepOutput, StepError> {
        let cancelled = || StepError::new(ErrorClass::Cancelled, "cancelled");
        let store_error = |e: StoreError| {
            StepError::external(format!("metadata store: consumer group {group}: {e}"))
        };
        let lock = group_lock(group);
        let _local = tokio::select! {
            g = lock.lock() => g,
            _ = cx.cancel.cancelled() => return Err(cancelled()),
        };
        let epoch = DateTime::<Utc>::UNIX_EPOCH;
        let mut said = false;
        loop {
            let claim = self
                .store
                .claim_step(
                    GROUP_LEASE_JOB,
                    group,
                    epoch,
                    &self.owner,
                    cx.run_id,
                    self.lease_ttl,
                    false,
                    None,
                )
                .await
                .map_err(store_error)?;
            match claim {
                Claim::Acquired { .. } => break,
                Claim::Held { owner, expires_at } => {
                    if !said {
                        said = true;
                        cx.log.info(&format!(
                            "waiting: consumer group {group} is being read by {owner} (lease until {expires_at}); runs of one group never overlap"
                        ));
                    }
                }
                Claim::Done { .. } | Claim::Full { .. } => {}
            }
            if cx.deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(StepError::new(
                    ErrorClass::Timeout,
                    format!("timed out waiting for consumer group {group}, read by another runner"),
                ));
            }
            tokio::select! {
                _ = cx.cancel.cancelled() => return Err(cancelled()),
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        let result = run_with_deadline(cx, timeout).await;
        if let Err(e) = self
            .store
            .release_step(GROUP_LEASE_JOB, group, epoch, &self.owner)
            .await
        {
            // It expires within the lease time anyway.
            tracing::warn!(group, "releasing the consumer group's lease: {e}");
        }
        result
    }
}

async fn run_with_deadline(cx: &RunCx, timeout: Option<Duration>) -> Result<StepOutput, StepError> {
    let fut = guard_panics(cx.spec().config.as_step().run(cx));
    match timeout {
        None => fut.await,
        Some(t) => match tokio::time::timeout(t + Duration::from_secs(5), fut).await {
            Ok(r) => r,
            Err(_) => {
                cx.cancel.cancel();
                Err(StepError::new(
                    ErrorClass::Timeout,
                    format!("timed out after {}", humantime::format_duration(t)),
                ))
            }
        },
    }
}

/// Runs a step's future, turning a panic inside it into a failed attempt that carries the panic's
/// message: a panic is a bug, but one attempt's, so the attempt is recorded as failed, its
/// downstream is marked, and the run (and the daemon) go on.
async fn guard_panics<F>(fut: F) -> Result<StepOutput, StepError>
where
    F: std::future::Future<Output = Result<StepOutput, StepError>>,
{
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(fut).catch_unwind().await {
        Ok(r) => r,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_string());
            Err(StepError::new(
                ErrorClass::Internal,
                format!(
                    "the step panicked: {what} (a bug in cranium: please report it with this \
                     attempt's log; the attempt is recorded as failed and nothing else stopped)"
                ),
            ))
        }
    }
}

fn glob_set(patterns: &[String]) -> Result<GlobSet, EngineError> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let g = Glob::new(p).map_err(|e| EngineError::BadSelection {
            pattern: p.clone(),
            message: e.to_string(),
        })?;
        b.add(g);
    }
    b.build().map_err(|e| EngineError::BadSelection {
        pattern: patterns.join(","),
        message: e.to_string(),
    })
}

/// Steps that a selection names (for messages).
pub fn selected_ids(job: &Job, selected: &[bool]) -> HashSet<String> {
    job.steps
        .iter()
        .zip(selected)
        .filter(|(_, s)| **s)
        .map(|(st, _)| st.id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_step_is_a_failed_attempt_with_the_message() {
        let out = guard_panics(async {
            let v: Vec<u8> = Vec::new();
            if v.is_empty() {
                panic!("index {} out of range", 3);
            }
            Ok(StepOutput::default())
        })
        .await;
        let e = out.expect_err("the panic is an error");
        assert_eq!(e.class, ErrorClass::Internal);
        assert!(
            e.message
                .starts_with("the step panicked: index 3 out of range"),
            "{e}"
        );
        let ok = guard_panics(async { Ok(StepOutput::default()) }).await;
        assert!(ok.is_ok());
        let e = guard_panics(async { panic!("static message") })
            .await
            .expect_err("panic");
        assert!(e.message.contains("static message"), "{e}");
    }
}
