//! One run in progress, as pieces that every executor puts together: [`Engine::prepare`] decides
//! what the run must do and records it, [`ActiveRun::ready`] says which steps may start now,
//! [`Engine::claim`] takes a step's lease, [`Engine::execute`] runs it with its retries and
//! releases the lease, [`ActiveRun::record`] takes the result, and [`ActiveRun::finish`] records
//! the run's end.
//!
//! The foreground `run`/`backfill` ([`Engine::run_interval`]) drive one run with a local
//! parallelism limit; the daemon drives many at once and decides which ready step gets a slot
//! (priority, due time, pools). Both take the same leases, so they never run the same step of the
//! same interval at once.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Engine, EngineError, Outputs, Rerun, RunOptions, RunReport, StepReport, Upstream};
use crate::schedule::Interval;
use crate::store::{Claim, RunState, StepState};

/// The state of one step inside a run.
#[derive(Debug, Clone)]
enum Slot {
    /// Not selected: satisfied only if its record says success.
    External {
        ok: bool,
    },
    /// Selected but already succeeded for this interval.
    Done,
    Pending,
    Running,
    Finished(StepState),
}

/// A run being executed: its steps' states, their outputs so far, and its heartbeat.
#[derive(Debug)]
pub struct ActiveRun {
    pub run_id: i64,
    pub job: String,
    pub job_index: usize,
    pub interval: Interval,
    pub opts: RunOptions,
    slots: Vec<Slot>,
    outputs: HashMap<usize, Outputs>,
    reports: BTreeMap<usize, StepReport>,
    upstream: Vec<Upstream>,
    /// When each step first found a cross-job upstream unmet.
    cross_waiting: HashMap<usize, (Instant, String)>,
    started: Instant,
    heartbeat: CancellationToken,
    /// The fencing token of each step's lease, from its claim.
    tokens: HashMap<usize, i64>,
    /// A step's writes were refused: another runner took its lease over, and with it the run.
    lost: bool,
}

/// What [`Engine::prepare`] found.
#[derive(Debug)]
pub enum Prepared {
    /// Every selected step already succeeded: nothing was recorded.
    Nothing(RunReport),
    /// A run to execute (recorded as running).
    Run(Box<ActiveRun>),
    /// The queued run this daemon took was taken over by another daemon before it started (this
    /// one stalled past the run's heartbeat): nothing was recorded; it is the other's now.
    TakenOver { run_id: i64 },
}

/// A step that may start: what [`Engine::execute`] needs.
#[derive(Debug, Clone)]
pub struct StepTask {
    pub run_id: i64,
    pub job: String,
    pub job_index: usize,
    pub step_index: usize,
    pub step: String,
    pub interval: Interval,
    /// The outputs of its upstream steps in the job, as templates read them.
    pub steps_vars: Outputs,
    /// The fencing token of the step's lease: every write about the attempt names it.
    pub fence: Option<i64>,
}

/// What [`Engine::execute`] returns.
#[derive(Debug)]
pub struct StepDone {
    pub run_id: i64,
    pub step_index: usize,
    pub report: StepReport,
    pub outputs: Option<Outputs>,
    /// The store refused the attempt's writes: its lease went to another runner.
    pub lost: bool,
}

impl Engine {
    /// Decides what a run of `job` for `interval` must do, and records it: a new run (or the
    /// queued run `adopt` (id, and the daemon that took it), made earlier by the daemon) set
    /// running, with every step to run pending. `Nothing` when every selected step already
    /// succeeded (and `adopt` is None; an adopted run is then finished as a success);
    /// `TakenOver` when the adopted run is no longer this daemon's.
    pub async fn prepare(
        &self,
        job_name: &str,
        interval: Interval,
        opts: &RunOptions,
        adopt: Option<(i64, &str)>,
    ) -> Result<Prepared, EngineError> {
        let started = Instant::now();
        let ji = self.job_index(job_name)?;
        let job = &self.project.jobs[ji];
        let selected = self.select(job, opts)?;
        let records: HashMap<String, crate::store::StepIntervalRecord> = self
            .store
            .step_states(job_name, interval.start, interval.end)
            .await?
            .into_iter()
            .filter(|r| r.interval.start == interval.start)
            .map(|r| (r.step.clone(), r))
            .collect();

        let n = job.steps.len();
        let mut slots: Vec<Slot> = Vec::with_capacity(n);
        let mut outputs: HashMap<usize, Outputs> = HashMap::new();
        let mut reports: BTreeMap<usize, StepReport> = BTreeMap::new();
        for (i, s) in job.steps.iter().enumerate() {
            let rec = records.get(&s.id);
            let succeeded = rec.is_some_and(|r| r.state == StepState::Success);
            if succeeded {
                if let Some(serde_json::Value::Object(m)) = rec.map(|r| r.outputs.clone()) {
                    outputs.insert(i, m);
                }
            }
            let slot = if !selected[i] {
                Slot::External {
                    ok: succeeded || opts.ignore_upstream,
                }
            } else if succeeded
                && (opts.rerun != Rerun::All
                    || adopt.is_some_and(|(id, _)| rec.and_then(|r| r.run_id) == Some(id)))
            {
                // (A run taken over keeps what it finished before, even when it reruns all.)
                reports.insert(i, StepReport::already_done(&s.id));
                Slot::Done
            } else {
                Slot::Pending
            };
            slots.push(slot);
        }

        let nothing = !slots.iter().any(|s| matches!(s, Slot::Pending));
        if nothing && adopt.is_none() {
            return Ok(Prepared::Nothing(RunReport {
                run_id: 0,
                job: job_name.to_string(),
                interval,
                state: RunState::Success,
                steps: reports.into_values().collect(),
                duration: started.elapsed(),
            }));
        }
        let run_id = match adopt {
            Some((id, _)) => id,
            None => {
                self.store
                    .create_run(job_name, interval, opts.trigger)
                    .await?
            }
        };
        let pending: Vec<&str> = slots
            .iter()
            .zip(&job.steps)
            .filter(|(slot, _)| matches!(slot, Slot::Pending))
            .map(|(_, s)| s.id.as_str())
            .collect();
        let owner = adopt.map(|(_, owner)| owner);
        if !self
            .store
            .start_run(run_id, owner, job_name, interval, &pending)
            .await?
        {
            return Ok(Prepared::TakenOver { run_id });
        }
        let heartbeat = CancellationToken::new();
        {
            let store = self.store.clone();
            let every = self.heartbeat_every;
            let stop = heartbeat.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(every) => {
                            let _ = store.heartbeat(run_id).await;
                        }
                    }
                }
            });
        }
        let upstream = (0..n).map(|i| self.upstream_of(job, i)).collect();
        Ok(Prepared::Run(Box::new(ActiveRun {
            run_id,
            job: job_name.to_string(),
            job_index: ji,
            interval,
            opts: opts.clone(),
            slots,
            outputs,
            reports,
            upstream,
            cross_waiting: HashMap::new(),
            started,
            heartbeat,
            tokens: HashMap::new(),
            lost: false,
        })))
    }

    /// Takes the lease on a ready step for this process. `Done`: another runner finished it
    /// meanwhile (the run takes its outputs); `Held`: another runner has it now (ask again later).
    pub async fn claim(&self, run: &mut ActiveRun, i: usize) -> Result<Claim, EngineError> {
        let spec = &self.project.jobs[run.job_index].steps[i];
        let step = &spec.id;
        // A pool's size holds across every runner on the store (all the daemons of a fleet).
        let pool = spec
            .pool
            .as_deref()
            .and_then(|p| self.project.pools.get(p).map(|n| (p, *n)));
        let claim = self
            .store
            .claim_step(
                &run.job,
                step,
                run.interval.start,
                &self.owner,
                run.run_id,
                self.lease_ttl,
                run.opts.rerun != Rerun::All,
                pool,
            )
            .await?;
        if let Claim::Acquired { token } = &claim {
            run.tokens.insert(i, *token);
        }
        if let Claim::Done { outputs } = &claim {
            // Finished by someone else: this run's record of the step says success again.
            self.store
                .set_step_state(
                    run.run_id,
                    &run.job,
                    step,
                    run.interval,
                    StepState::Success,
                    0,
                    None,
                )
                .await?;
            if let serde_json::Value::Object(m) = outputs {
                run.outputs.insert(i, m.clone());
            }
            run.slots[i] = Slot::Done;
            run.reports.insert(i, StepReport::already_done(step));
        }
        Ok(claim)
    }

    /// Runs a claimed step with its retries, then releases its lease.
    pub async fn execute(&self, task: StepTask, cancel: CancellationToken) -> StepDone {
        let key = (task.job.clone(), task.step.clone(), task.interval.start);
        let cancel = cancel.child_token();
        self.leases.hold(key.clone(), cancel.clone());
        let (report, outputs, lost) = self
            .run_step(
                task.job_index,
                task.step_index,
                &task.job,
                task.interval,
                task.run_id,
                task.steps_vars,
                cancel,
                task.fence,
            )
            .await;
        self.leases.release(&key);
        if let Err(e) = self
            .store
            .release_step(&task.job, &task.step, task.interval.start, &self.owner)
            .await
        {
            // The lease expires by itself; say why it lingers.
            tracing::warn!(
                job = task.job,
                step = task.step,
                "releasing a step lease: {e}"
            );
        }
        StepDone {
            run_id: task.run_id,
            step_index: task.step_index,
            report,
            outputs,
            lost,
        }
    }
}

impl ActiveRun {
    /// Settles every pending step whose fate is known (an upstream failed: `upstream_failed`)
    /// and returns the steps that may start now, in step order. `recheck` asks the store again
    /// about cross-job upstream intervals (else only steps never checked are asked about).
    pub async fn ready(
        &mut self,
        engine: &Engine,
        cancel: &CancellationToken,
        recheck: bool,
    ) -> Result<Vec<usize>, EngineError> {
        if self.lost {
            // Another runner has the run now: nothing more is started or recorded here (an
            // `upstream_failed` written now could overwrite what that runner finished).
            return Ok(Vec::new());
        }
        let job = &engine.project.jobs[self.job_index];
        let n = self.slots.len();
        let mut ready = Vec::new();
        let mut progressed = true;
        while progressed {
            progressed = false;
            ready.clear();
            for i in 0..n {
                if !matches!(self.slots[i], Slot::Pending) {
                    continue;
                }
                let (within, cross) = &self.upstream[i];
                let mut blocked_by: Option<String> = None;
                let mut waiting = false;
                for &u in within {
                    match &self.slots[u] {
                        Slot::Done | Slot::Finished(StepState::Success) => {}
                        Slot::External { ok: true } => {}
                        Slot::External { ok: false } => {
                            blocked_by = Some(format!(
                                "upstream step '{}' has not succeeded for this interval and is not selected (add it to --steps)",
                                job.steps[u].id
                            ));
                        }
                        Slot::Finished(_) => {
                            blocked_by = Some(format!(
                                "upstream step '{}' did not succeed",
                                job.steps[u].id
                            ));
                        }
                        Slot::Pending | Slot::Running => waiting = true,
                    }
                }
                if cancel.is_cancelled() {
                    // Leave it pending: a resumed run picks it up.
                    continue;
                }
                if blocked_by.is_none()
                    && !waiting
                    && !cross.is_empty()
                    && !self.opts.ignore_upstream
                {
                    let ask = recheck || !self.cross_waiting.contains_key(&i);
                    let unmet = if ask {
                        let mut unmet = None;
                        for (dj, ds) in cross {
                            if let Some(why) = engine.cross_job_ready(dj, ds, self.interval).await?
                            {
                                unmet = Some(why);
                                break;
                            }
                        }
                        unmet
                    } else {
                        self.cross_waiting.get(&i).map(|(_, why)| why.clone())
                    };
                    match unmet {
                        Some(why) => {
                            let first = self
                                .cross_waiting
                                .entry(i)
                                .or_insert_with(|| (Instant::now(), why.clone()));
                            first.1 = why.clone();
                            if first.0.elapsed() >= self.opts.upstream_wait {
                                blocked_by = Some(why);
                            } else {
                                waiting = true;
                            }
                        }
                        None => {
                            self.cross_waiting.remove(&i);
                        }
                    }
                }
                if let Some(why) = blocked_by {
                    let s = &job.steps[i];
                    engine
                        .persist(
                            self.run_id,
                            &self.job,
                            &s.id,
                            self.interval,
                            StepState::Pending,
                            StepState::UpstreamFailed,
                            0,
                            None,
                            None,
                        )
                        .await?;
                    self.slots[i] = Slot::Finished(StepState::UpstreamFailed);
                    self.reports.insert(
                        i,
                        StepReport {
                            step: s.id.clone(),
                            state: StepState::UpstreamFailed,
                            attempts: 0,
                            duration: Duration::ZERO,
                            rows_affected: None,
                            bytes: None,
                            error: Some(why),
                            already_done: false,
                        },
                    );
                    progressed = true;
                    continue;
                }
                if !waiting {
                    ready.push(i);
                }
            }
        }
        Ok(ready)
    }

    /// Why a pending step waits for another job, if it does (for status pages).
    pub fn waiting_for(&self) -> Vec<String> {
        self.cross_waiting
            .values()
            .map(|(_, w)| w.clone())
            .collect()
    }

    /// Marks step `i` running and returns what executing it needs.
    pub fn start(&mut self, engine: &Engine, i: usize) -> StepTask {
        let job = &engine.project.jobs[self.job_index];
        self.slots[i] = Slot::Running;
        let mut steps_vars = serde_json::Map::new();
        for &u in &self.upstream[i].0 {
            let outs = self.outputs.get(&u).cloned().unwrap_or_default();
            steps_vars.insert(
                job.steps[u].id.clone(),
                serde_json::json!({ "outputs": outs }),
            );
        }
        StepTask {
            run_id: self.run_id,
            job: self.job.clone(),
            job_index: self.job_index,
            step_index: i,
            step: job.steps[i].id.clone(),
            interval: self.interval,
            steps_vars,
            fence: self.tokens.get(&i).copied(),
        }
    }

    /// Takes a finished step's result. A step that came back pending (cancelled) is pending
    /// again, for a resumed run.
    pub fn record(&mut self, done: StepDone) {
        let i = done.step_index;
        self.tokens.remove(&i);
        self.lost |= done.lost;
        self.slots[i] = if done.report.state == StepState::Pending {
            Slot::Pending
        } else {
            Slot::Finished(done.report.state)
        };
        if let Some(o) = done.outputs {
            self.outputs.insert(i, o);
        }
        self.reports.insert(i, done.report);
    }

    /// Steps still to run (pending).
    pub fn pending(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s, Slot::Pending))
            .count()
    }

    /// Steps running now.
    pub fn running(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s, Slot::Running))
            .count()
    }

    /// Whether another runner took a step's lease over (and the run with it): the run is given up
    /// without writing anything more.
    pub fn is_lost(&self) -> bool {
        self.lost
    }

    /// Nothing pending and nothing running (or, for a lost run, nothing running: what is
    /// pending is another runner's to do).
    pub fn is_complete(&self) -> bool {
        let open =
            |s: &Slot| matches!(s, Slot::Running) || (!self.lost && matches!(s, Slot::Pending));
        !self.slots.iter().any(open)
    }

    /// Records the end of the run: success when every step succeeded; failed when any did not;
    /// `requeue` (a daemon stopping with steps left): queued again, for the next daemon.
    /// On an error nothing is taken: the caller may call it again (a store that was unreachable).
    pub async fn finish(
        &mut self,
        engine: &Engine,
        requeue: bool,
    ) -> Result<RunReport, EngineError> {
        let all_ok = self.slots.iter().all(|s| match s {
            Slot::External { .. } | Slot::Done => true,
            Slot::Finished(s) => *s == StepState::Success,
            Slot::Pending | Slot::Running => false,
        });
        let unfinished = !self.is_complete();
        let state = if all_ok && !self.lost {
            RunState::Success
        } else if requeue && unfinished && !self.lost {
            RunState::Queued
        } else {
            RunState::Failed
        };
        self.heartbeat.cancel();
        if self.lost {
            // The run's steps went to another runner (which resumes this run): this one writes
            // nothing more about it.
            tracing::warn!(
                job = self.job,
                run_id = self.run_id,
                "gave the run up: another runner took its step leases over"
            );
        } else {
            engine.store.set_run_state(self.run_id, state).await?;
            engine
                .alert_run_ended(&self.job, self.interval, self.run_id, state)
                .await;
        }
        Ok(RunReport {
            run_id: self.run_id,
            job: std::mem::take(&mut self.job),
            interval: self.interval,
            state,
            steps: std::mem::take(&mut self.reports).into_values().collect(),
            duration: self.started.elapsed(),
        })
    }
}

impl Drop for ActiveRun {
    fn drop(&mut self) {
        self.heartbeat.cancel();
    }
}
