//! The commands that run things and read run history: `run`, `backfill`, `runs`, `logs`, `clear`.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::{load, table, EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::check::Checked;
use crate::engine::logs::LogFormat;
use crate::engine::{BackfillPlan, Engine, Rerun, RunOptions, RunReport};
use crate::project::Job;
use crate::schedule::{self, Interval};
use crate::store::{RunFilter, RunState, Store, Trigger};

/// Options shared by `run` and `backfill`.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub steps: Vec<String>,
    pub downstream: bool,
    pub parallelism: Option<usize>,
    /// Wait this long for cross-job upstream intervals.
    pub upstream_wait: Option<Duration>,
    /// A run whose process stopped is taken over once its heartbeat is this old.
    pub recover_after: Option<Duration>,
    /// Treat unselected upstream steps and cross-job dependencies as satisfied.
    pub ignore_upstream: bool,
    /// Raise no alerts.
    pub no_alerts: bool,
}

/// What `run` runs: an explicit interval, the one containing a time, or the latest complete one.
#[derive(Debug, Clone, Default)]
pub struct RunArgs {
    pub job: String,
    pub at: Option<String>,
    pub interval: Option<String>,
    pub selection: Selection,
}

/// `backfill`'s arguments.
#[derive(Debug, Clone, Default)]
pub struct BackfillArgs {
    pub job: String,
    pub from: String,
    pub to: String,
    pub selection: Selection,
    pub rerun: Rerun,
    pub max_active_runs: Option<usize>,
    pub dry_run: bool,
}

pub(crate) fn runtime(err: &mut dyn Write) -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            let _ = writeln!(err, "error: cannot start the async runtime: {e}");
            None
        }
    }
}

/// Load the project, refusing to run one with errors.
pub(crate) fn load_runnable(project: Option<&Path>, err: &mut dyn Write) -> Result<Checked, i32> {
    let c = load(project, err)?;
    if c.diagnostics.has_errors() {
        let _ = write!(err, "{}", c.diagnostics.render(&c.project.redactor));
        let _ = writeln!(
            err,
            "error: the project has errors; fix them (see `cranium check`) before running"
        );
        return Err(EXIT_FAILED);
    }
    Ok(c)
}

/// A command's async runtime and metadata store (what failed is printed; the exit code returned).
pub(crate) fn runtime_and_store(
    c: &Checked,
    err: &mut dyn Write,
) -> Result<(tokio::runtime::Runtime, Store), i32> {
    let Some(rt) = runtime(err) else {
        return Err(EXIT_FAILED);
    };
    let store = rt.block_on(open_store(c, err))?;
    Ok((rt, store))
}

async fn open_store(c: &Checked, err: &mut dyn Write) -> Result<Store, i32> {
    match Store::open(&c.project.state_url, &c.project.root).await {
        Ok(s) => Ok(s),
        Err(e) => {
            let _ = writeln!(
                err,
                "error: {}",
                c.project
                    .redactor
                    .redact(&format!("cannot open the metadata store: {e}"))
            );
            Err(EXIT_FAILED)
        }
    }
}

/// Cancel `token` on Ctrl-C or SIGTERM; a second Ctrl-C exits at once.
fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        eprintln!("cancelling: waiting for running steps to stop (Ctrl-C again to exit now)");
        token.cancel();
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(130);
        }
    });
}

pub(crate) fn job_of<'a>(c: &'a Checked, name: &str, err: &mut dyn Write) -> Result<&'a Job, i32> {
    c.project.job(name).ok_or_else(|| {
        let _ = writeln!(err, "error: {}", super::unknown_job(c, name));
        EXIT_USAGE
    })
}

pub(crate) fn parse_time(
    s: &str,
    job: &Job,
    flag: &str,
    err: &mut dyn Write,
) -> Result<DateTime<Utc>, i32> {
    schedule::parse_time(s, job.timezone).map_err(|e| {
        let _ = writeln!(err, "error: {flag}: {e}");
        EXIT_USAGE
    })
}

fn fmt_interval(iv: &Interval, job: &Job) -> String {
    use chrono::Timelike;
    // Seconds only for a schedule with seconds (else two different intervals print alike).
    let (a, b) = if iv.start.second() == 0 && iv.end.second() == 0 {
        ("%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M %Z")
    } else {
        ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S %Z")
    };
    format!(
        "{} .. {}",
        iv.start_local(job.timezone).format(a),
        iv.end_local(job.timezone).format(b)
    )
}

fn fmt_duration(d: Duration) -> String {
    if d.as_secs() >= 60 {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}

fn run_options(sel: &Selection, trigger: Trigger, rerun: Rerun) -> RunOptions {
    RunOptions {
        steps: sel.steps.clone(),
        downstream: sel.downstream,
        parallelism: sel.parallelism.unwrap_or(8),
        trigger,
        rerun,
        upstream_wait: sel.upstream_wait.unwrap_or(Duration::ZERO),
        ignore_upstream: sel.ignore_upstream,
    }
}

fn engine(c: &Checked, store: Store, log_format: LogFormat, alerts: bool) -> Engine {
    let mut e = Engine::new(c.project.clone(), c.graph.clone(), store.clone());
    e.log_format = log_format;
    if alerts {
        e.notifier = Some(crate::alerts::Notifier::new(c.project.clone(), store));
    }
    e
}

/// Sends the alerts the command raised before it exits (what does not go out within the time
/// stays queued for the daemon or the next command).
async fn send_alerts(eng: &Engine) {
    if eng.notifier.is_some() {
        crate::alerts::deliver::drain(&eng.project, &eng.store, ALERT_DRAIN).await;
    }
}

/// How long a foreground command waits for its alerts to go out.
const ALERT_DRAIN: Duration = Duration::from_secs(30);

/// Print one run's steps as a table.
fn print_report(r: &RunReport, job: &Job, out: &mut dyn Write) {
    let mut rows = vec![[
        "STEP".to_string(),
        "STATE".to_string(),
        "ATTEMPTS".to_string(),
        "DURATION".to_string(),
        "ROWS".to_string(),
        "ERROR".to_string(),
    ]];
    for s in &r.steps {
        rows.push([
            s.step.clone(),
            if s.already_done {
                "success (earlier run)".to_string()
            } else {
                s.state.as_str().to_string()
            },
            s.attempts.to_string(),
            fmt_duration(s.duration),
            s.rows_affected.map(|r| r.to_string()).unwrap_or_default(),
            s.error.as_deref().map(first_line).unwrap_or_default(),
        ]);
    }
    let _ = write!(out, "{}", table(&rows));
    if r.run_id == 0 {
        let _ = writeln!(
            out,
            "nothing to run for {} {}: every selected step already succeeded (`cranium clear` marks it for a rerun)",
            r.job,
            fmt_interval(&r.interval, job)
        );
        return;
    }
    let _ = writeln!(
        out,
        "run {} of {} for {}: {} in {}",
        r.run_id,
        r.job,
        fmt_interval(&r.interval, job),
        r.state.as_str(),
        fmt_duration(r.duration)
    );
    for s in r
        .steps
        .iter()
        .filter(|s| s.error.is_some() && s.error.as_deref().is_some_and(|e| e.contains('\n')))
    {
        let _ = writeln!(
            out,
            "\n{}: {}",
            s.step,
            s.error.as_deref().unwrap_or_default()
        );
    }
}

fn first_line(s: &str) -> String {
    let l = s.lines().next().unwrap_or("");
    if l.chars().count() > 120 {
        format!("{}…", l.chars().take(119).collect::<String>())
    } else {
        l.to_string()
    }
}

/// `cranium run JOB`.
pub fn run(
    project: Option<&Path>,
    args: &RunArgs,
    log_format: LogFormat,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let c = match load_runnable(project, err) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let job = match job_of(&c, &args.job, err) {
        Ok(j) => j,
        Err(code) => return code,
    };
    let interval = match (&args.at, &args.interval) {
        (Some(_), Some(_)) => {
            let _ = writeln!(err, "error: give --at or --interval, not both");
            return EXIT_USAGE;
        }
        (Some(at), None) => {
            let t = match parse_time(at, job, "--at", err) {
                Ok(t) => t,
                Err(code) => return code,
            };
            match job.calendar.interval_at(t) {
                Some(iv) => iv,
                None => {
                    let _ = writeln!(
                        err,
                        "error: --at {at} is outside job '{}' (its intervals start at {})",
                        job.name, job.calendar.start
                    );
                    return EXIT_USAGE;
                }
            }
        }
        (None, Some(spec)) => {
            let Some((a, b)) = spec.split_once('/') else {
                let _ = writeln!(
                    err,
                    "error: --interval takes START/END, e.g. 2026-03-01/2026-03-02"
                );
                return EXIT_USAGE;
            };
            let (s, e) = match (
                parse_time(a, job, "--interval", err),
                parse_time(b, job, "--interval", err),
            ) {
                (Ok(s), Ok(e)) => (s, e),
                (Err(code), _) | (_, Err(code)) => return code,
            };
            if e <= s {
                let _ = writeln!(err, "error: --interval end must be after its start");
                return EXIT_USAGE;
            }
            Interval { start: s, end: e }
        }
        (None, None) => {
            // The latest interval that has ended.
            let now = Utc::now();
            match job
                .calendar
                .schedule
                .prev_at_or_before(now)
                .and_then(|t| job.calendar.interval_at(t - chrono::Duration::seconds(1)))
            {
                Some(iv) => iv,
                None => {
                    let _ = writeln!(
                        err,
                        "error: job '{}' has no complete interval yet; give --at or --interval",
                        job.name
                    );
                    return EXIT_USAGE;
                }
            }
        }
    };
    let (rt, store) = match runtime_and_store(&c, err) {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    rt.block_on(async {
        if let Err(e) = store
            .recover_stale(
                args.selection
                    .recover_after
                    .unwrap_or(Duration::from_secs(30)),
            )
            .await
        {
            let _ = writeln!(err, "error: metadata store: {e}");
            return EXIT_FAILED;
        }
        let eng = engine(&c, store, log_format, !args.selection.no_alerts);
        let _leases = eng.keep_leases().drop_guard();
        let cancel = CancellationToken::new();
        cancel_on_signals(cancel.clone());
        let opts = run_options(&args.selection, Trigger::Manual, Rerun::None);
        let result = eng.run_interval(&args.job, interval, &opts, cancel).await;
        send_alerts(&eng).await;
        match result {
            Ok(r) => {
                print_report(&r, job, out);
                if r.succeeded() {
                    EXIT_OK
                } else {
                    EXIT_FAILED
                }
            }
            Err(e) => {
                let _ = writeln!(err, "error: {}", c.project.redactor.redact(&e.to_string()));
                EXIT_FAILED
            }
        }
    })
}

fn print_plan(plan: &BackfillPlan, job: &Job, out: &mut dyn Write) {
    for (iv, steps) in &plan.run {
        let _ = writeln!(
            out,
            "would run {}: {}",
            fmt_interval(iv, job),
            steps.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "{} interval(s) to run, {} already complete, {} with failed steps left alone (use --rerun failed)",
        plan.run.len(),
        plan.complete.len(),
        plan.failed_skipped.len()
    );
}

/// A backfill's job and its range `[--from, --to)`, checked (shared by the foreground backfill
/// and `--submit`).
pub(crate) fn backfill_range<'a>(
    c: &'a Checked,
    args: &BackfillArgs,
    err: &mut dyn Write,
) -> Result<(&'a Job, DateTime<Utc>, DateTime<Utc>), i32> {
    let job = job_of(c, &args.job, err)?;
    let (from, to) = match (
        parse_time(&args.from, job, "--from", err),
        parse_time(&args.to, job, "--to", err),
    ) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(code), _) | (_, Err(code)) => return Err(code),
    };
    if to <= from {
        let _ = writeln!(err, "error: --to must be after --from");
        return Err(EXIT_USAGE);
    }
    Ok((job, from, to))
}

/// `cranium backfill JOB --from T --to T`.
pub fn backfill(
    project: Option<&Path>,
    args: &BackfillArgs,
    log_format: LogFormat,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let c = match load_runnable(project, err) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (job, from, to) = match backfill_range(&c, args, err) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let (rt, store) = match runtime_and_store(&c, err) {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    rt.block_on(async {
        if !args.dry_run {
            match store
                .recover_stale(
                    args.selection
                        .recover_after
                        .unwrap_or(Duration::from_secs(30)),
                )
                .await
            {
                Ok(0) => {}
                Ok(n) => {
                    let _ = writeln!(
                        err,
                        "recovered {n} interrupted run(s); their unfinished steps run again"
                    );
                }
                Err(e) => {
                    let _ = writeln!(err, "error: metadata store: {e}");
                    return EXIT_FAILED;
                }
            }
        }
        let eng = engine(&c, store, log_format, !args.selection.no_alerts);
        let opts = run_options(&args.selection, Trigger::Backfill, args.rerun);
        let plan = match eng.plan_backfill(&args.job, from, to, &opts).await {
            Ok(p) => p,
            Err(e) => {
                let _ = writeln!(err, "error: {e}");
                return EXIT_FAILED;
            }
        };
        if args.dry_run {
            print_plan(&plan, job, out);
            return EXIT_OK;
        }
        if plan.run.is_empty() {
            let _ = writeln!(
                out,
                "nothing to do: {} interval(s) of {} in range are already complete{}",
                plan.complete.len(),
                job.name,
                if plan.failed_skipped.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; {} have failed steps (use --rerun failed)",
                        plan.failed_skipped.len()
                    )
                }
            );
            return EXIT_OK;
        }
        let _leases = eng.keep_leases().drop_guard();
        let cancel = CancellationToken::new();
        cancel_on_signals(cancel.clone());
        let tty = std::io::stderr().is_terminal();
        let bar = if tty {
            let b = indicatif::ProgressBar::new(plan.run.len() as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {pos}/{len} intervals, {elapsed} elapsed, eta {eta}",
            ) {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_message(job.name.clone());
            b
        } else {
            indicatif::ProgressBar::hidden()
        };
        let _ = writeln!(
            err,
            "backfilling {}: {} interval(s), {} already complete",
            job.name,
            plan.run.len(),
            plan.complete.len()
        );
        let max_active = args.max_active_runs.unwrap_or(job.max_active_runs as usize);
        let on_done = |r: &RunReport| {
            bar.inc(1);
            if !tty {
                eprintln!(
                    "{} {}: {} ({} steps, {})",
                    r.job,
                    fmt_interval(&r.interval, job),
                    r.state.as_str(),
                    r.steps.len(),
                    fmt_duration(r.duration)
                );
            }
        };
        let reports = match eng
            .backfill(
                &args.job,
                &plan,
                &opts,
                max_active,
                cancel.clone(),
                &on_done,
            )
            .await
        {
            Ok(r) => {
                send_alerts(&eng).await;
                r
            }
            Err(e) => {
                send_alerts(&eng).await;
                bar.abandon();
                let _ = writeln!(err, "error: {}", c.project.redactor.redact(&e.to_string()));
                return EXIT_FAILED;
            }
        };
        bar.finish_and_clear();
        let mut rows = vec![[
            "INTERVAL".to_string(),
            "STATE".to_string(),
            "RUN".to_string(),
            "OK".to_string(),
            "FAILED".to_string(),
            "DURATION".to_string(),
        ]];
        for r in &reports {
            let ok = r
                .steps
                .iter()
                .filter(|s| s.state == crate::store::StepState::Success)
                .count();
            rows.push([
                fmt_interval(&r.interval, job),
                r.state.as_str().to_string(),
                r.run_id.to_string(),
                ok.to_string(),
                (r.steps.len() - ok).to_string(),
                fmt_duration(r.duration),
            ]);
        }
        let _ = write!(out, "{}", table(&rows));
        let failed = reports.iter().filter(|r| !r.succeeded()).count();
        let not_run = plan.run.len() - reports.len();
        let _ = writeln!(
            out,
            "{} interval(s) succeeded, {failed} failed{}",
            reports.len() - failed,
            if not_run > 0 {
                format!(
                    ", {not_run} not started (cancelled; run the same backfill again to resume)"
                )
            } else {
                String::new()
            }
        );
        for r in reports.iter().filter(|r| !r.succeeded()) {
            for s in r.steps.iter().filter(|s| s.error.is_some()) {
                let _ = writeln!(
                    out,
                    "  {} {}: {}",
                    fmt_interval(&r.interval, job),
                    s.step,
                    first_line(s.error.as_deref().unwrap_or_default())
                );
            }
        }
        if failed == 0 && not_run == 0 {
            EXIT_OK
        } else {
            EXIT_FAILED
        }
    })
}

/// Output format of `runs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunsFormat {
    Table,
    Json,
}

/// `cranium runs [JOB]`.
pub fn runs(
    project: Option<&Path>,
    job: Option<&str>,
    state: Option<RunState>,
    limit: usize,
    format: RunsFormat,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let c = match load(project, err) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (rt, store) = match runtime_and_store(&c, err) {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    rt.block_on(async {
        let filter = RunFilter {
            job: job.map(|s| s.to_string()),
            state,
            limit,
        };
        let runs = match store.runs(&filter).await {
            Ok(r) => r,
            Err(e) => {
                let _ = writeln!(err, "error: metadata store: {e}");
                return EXIT_FAILED;
            }
        };
        // Intervals the daemon passed over (catchup: false), shown with the runs.
        let skipped = if state.is_none() {
            match store.skipped_intervals(job, limit).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = writeln!(err, "error: metadata store: {e}");
                    return EXIT_FAILED;
                }
            }
        } else {
            Vec::new()
        };
        // One newest-first list within --limit: keep the runs and the passed-over intervals
        // created after the cut.
        let (runs, skipped) = newest_within(runs, skipped, limit);
        match format {
            RunsFormat::Json => {
                let skipped_json = skipped.iter().map(|s| {
                    serde_json::json!({
                        "run_id": null,
                        "job": s.job,
                        "interval_start": s.interval.start.to_rfc3339(),
                        "interval_end": s.interval.end.to_rfc3339(),
                        "state": "skipped",
                        "trigger": "schedule",
                        "reason": s.reason,
                        "created_at": s.created_at.to_rfc3339(),
                    })
                });
                let v: Vec<serde_json::Value> = runs
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "run_id": r.id,
                            "job": r.job,
                            "interval_start": r.interval.start.to_rfc3339(),
                            "interval_end": r.interval.end.to_rfc3339(),
                            "state": r.state.as_str(),
                            "trigger": r.trigger.as_str(),
                            "created_at": r.created_at.to_rfc3339(),
                            "started_at": r.started_at.map(|t| t.to_rfc3339()),
                            "ended_at": r.ended_at.map(|t| t.to_rfc3339()),
                            "daemon": r.owner,
                        })
                    })
                    .chain(skipped_json)
                    .collect();
                let _ = writeln!(out, "{}", serde_json::Value::Array(v));
            }
            RunsFormat::Table => {
                let mut rows = vec![[
                    "RUN".to_string(),
                    "JOB".to_string(),
                    "INTERVAL".to_string(),
                    "STATE".to_string(),
                    "TRIGGER".to_string(),
                    "STARTED (UTC)".to_string(),
                    "DURATION".to_string(),
                    "DAEMON".to_string(),
                ]];
                for r in &runs {
                    let iv = match c.project.job(&r.job) {
                        Some(j) => fmt_interval(&r.interval, j),
                        None => format!("{} .. {}", r.interval.start, r.interval.end),
                    };
                    let dur = match (r.started_at, r.ended_at) {
                        (Some(s), Some(e)) => fmt_duration((e - s).to_std().unwrap_or_default()),
                        _ => String::new(),
                    };
                    rows.push([
                        r.id.to_string(),
                        r.job.clone(),
                        iv,
                        r.state.as_str().to_string(),
                        r.trigger.as_str().to_string(),
                        r.started_at
                            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                            .unwrap_or_default(),
                        dur,
                        r.owner.clone().unwrap_or_default(),
                    ]);
                }
                for s in &skipped {
                    let iv = match c.project.job(&s.job) {
                        Some(j) => fmt_interval(&s.interval, j),
                        None => format!("{} .. {}", s.interval.start, s.interval.end),
                    };
                    rows.push([
                        "-".to_string(),
                        s.job.clone(),
                        iv,
                        "skipped".to_string(),
                        "schedule".to_string(),
                        String::new(),
                        s.reason.clone(),
                        String::new(),
                    ]);
                }
                let _ = write!(out, "{}", table(&rows));
            }
        }
        EXIT_OK
    })
}

/// The newest `limit` of runs and passed-over intervals together (by creation time; 0: all).
fn newest_within(
    mut runs: Vec<crate::store::RunRecord>,
    mut skipped: Vec<crate::store::SkippedInterval>,
    limit: usize,
) -> (
    Vec<crate::store::RunRecord>,
    Vec<crate::store::SkippedInterval>,
) {
    if limit == 0 || runs.len() + skipped.len() <= limit {
        return (runs, skipped);
    }
    let mut times: Vec<DateTime<Utc>> = runs
        .iter()
        .map(|r| r.created_at)
        .chain(skipped.iter().map(|s| s.created_at))
        .collect();
    times.sort_unstable_by(|a, b| b.cmp(a));
    let cut = times[limit - 1];
    runs.retain(|r| r.created_at >= cut);
    skipped.retain(|s| s.created_at >= cut);
    // Ties at the cut: drop the oldest passed-over ones first.
    while runs.len() + skipped.len() > limit && !skipped.is_empty() {
        skipped.pop();
    }
    runs.truncate(limit - skipped.len());
    (runs, skipped)
}

/// `cranium lag [JOB]`: how far each Kafka-reading step's group is behind each partition, as recorded
/// after its latest successful run.
pub fn lag(
    project: Option<&Path>,
    job: Option<&str>,
    format: RunsFormat,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let c = match load(project, err) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (rt, store) = match runtime_and_store(&c, err) {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    rt.block_on(async {
        let rows = match store.consumer_lag(job).await {
            Ok(r) => r,
            Err(e) => {
                let _ = writeln!(err, "error: metadata store: {e}");
                return EXIT_FAILED;
            }
        };
        match format {
            RunsFormat::Json => match serde_json::to_string(&rows) {
                Ok(j) => {
                    let _ = writeln!(out, "{j}");
                }
                Err(e) => {
                    let _ = writeln!(err, "error: {e}");
                    return EXIT_FAILED;
                }
            },
            RunsFormat::Table => {
                let mut t = vec![[
                    "JOB".to_string(),
                    "STEP".to_string(),
                    "TOPIC".to_string(),
                    "PARTITION".to_string(),
                    "COMMITTED".to_string(),
                    "END".to_string(),
                    "LAG".to_string(),
                    "RECORDED (UTC)".to_string(),
                ]];
                for r in &rows {
                    t.push([
                        r.job.clone(),
                        r.step.clone(),
                        r.topic.clone(),
                        r.partition.to_string(),
                        r.committed_offset.to_string(),
                        r.end_offset.to_string(),
                        r.lag.to_string(),
                        r.recorded_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    ]);
                }
                if rows.is_empty() {
                    let _ = writeln!(out, "no consumer lag recorded yet (it is recorded after each successful run of a kafka_to_s3 step)");
                } else {
                    let _ = write!(out, "{}", table(&t));
                }
            }
        }
        EXIT_OK
    })
}

/// `cranium logs JOB INTERVAL [STEP] [--follow]`.
pub fn logs(
    project: Option<&Path>,
    job: &str,
    at: &str,
    step: Option<&str>,
    follow: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let c = match load(project, err) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let j = match job_of(&c, job, err) {
        Ok(j) => j,
        Err(code) => return code,
    };
    if let Some(s) = step {
        if j.step(s).is_none() {
            let ids: Vec<&str> = j.steps.iter().map(|s| s.id.as_str()).collect();
            let _ = writeln!(
                err,
                "error: job '{job}' has no step '{s}'{}",
                crate::diag::did_you_mean(s, ids)
            );
            return EXIT_USAGE;
        }
    }
    let t = match parse_time(at, j, "INTERVAL", err) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let Some(interval) = j.calendar.schedule.interval_containing(t) else {
        let _ = writeln!(err, "error: no interval of '{job}' contains {at}");
        return EXIT_USAGE;
    };
    let (rt, store) = match runtime_and_store(&c, err) {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    rt.block_on(async {
        let mut printed: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
        loop {
            let attempts = match store.attempts(job, interval.start, step).await {
                Ok(a) => a,
                Err(e) => {
                    let _ = writeln!(err, "error: metadata store: {e}");
                    return EXIT_FAILED;
                }
            };
            if attempts.is_empty() && !follow {
                let _ = writeln!(
                    err,
                    "no attempts recorded for {job} {}{}",
                    fmt_interval(&interval, j),
                    step.map(|s| format!(" step {s}")).unwrap_or_default()
                );
                return EXIT_FAILED;
            }
            for a in &attempts {
                let Some(path) = &a.log_path else { continue };
                let full = c.project.root.join(path);
                let seen = printed.get(path).copied();
                let text = std::fs::read(&full).unwrap_or_default();
                if seen.is_none() {
                    let _ = writeln!(
                        out,
                        "== {} run {} attempt {} ({}) {}",
                        a.step,
                        a.run_id,
                        a.attempt,
                        a.state.as_str(),
                        path
                    );
                }
                let from = seen.unwrap_or(0) as usize;
                if text.len() > from {
                    let _ = out.write_all(&text[from..]);
                }
                printed.insert(path.clone(), text.len() as u64);
            }
            let running = attempts.iter().any(|a| a.ended_at.is_none());
            if !follow || (!running && !attempts.is_empty()) {
                break;
            }
            let _ = out.flush();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        EXIT_OK
    })
}

/// `cranium clear JOB --from T --to T`.
#[allow(clippy::too_many_arguments)]
pub fn clear(
    project: Option<&Path>,
    job: &str,
    from: &str,
    to: &str,
    steps: &[String],
    downstream: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let c = match load(project, err) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let j = match job_of(&c, job, err) {
        Ok(j) => j,
        Err(code) => return code,
    };
    let (f, t) = match (
        parse_time(from, j, "--from", err),
        parse_time(to, j, "--to", err),
    ) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    let (rt, store) = match runtime_and_store(&c, err) {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    rt.block_on(async {
        let eng = engine(&c, store.clone(), LogFormat::Text, false);
        let opts = RunOptions { steps: steps.to_vec(), downstream, ..RunOptions::default() };
        let selected = match eng.select(j, &opts) {
            Ok(s) => s,
            Err(e) => {
                let _ = writeln!(err, "error: {e}");
                return EXIT_USAGE;
            }
        };
        let ids: Vec<String> = if steps.is_empty() && !downstream {
            Vec::new()
        } else {
            j.steps.iter().zip(&selected).filter(|(_, s)| **s).map(|(s, _)| s.id.clone()).collect()
        };
        match store.clear(job, f, t, &ids).await {
            Ok(n) => {
                let _ = writeln!(out, "cleared {n} step record(s) of {job} for intervals starting in [{from}, {to}); they run again on the next run or backfill (history is kept)");
                EXIT_OK
            }
            Err(e) => {
                let _ = writeln!(err, "error: metadata store: {e}");
                EXIT_FAILED
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RunRecord, SkippedInterval};

    fn at(min: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + min * 60, 0).unwrap_or_default()
    }

    fn iv(min: i64) -> Interval {
        Interval {
            start: at(min),
            end: at(min + 1),
        }
    }

    #[test]
    fn runs_and_skipped_intervals_share_the_limit() {
        let run = |id: i64, min: i64| RunRecord {
            id,
            job: "j".into(),
            interval: iv(min),
            state: RunState::Success,
            trigger: Trigger::Schedule,
            created_at: at(min),
            started_at: None,
            ended_at: None,
            owner: None,
        };
        let skip = |min: i64| SkippedInterval {
            job: "j".into(),
            interval: iv(min),
            reason: "r".into(),
            created_at: at(min),
        };
        // Newest first, as the store returns them.
        let runs = vec![run(3, 9), run(2, 5), run(1, 1)];
        let skipped = vec![skip(8), skip(7), skip(2)];
        let (r, s) = newest_within(runs.clone(), skipped.clone(), 4);
        assert_eq!(r.iter().map(|r| r.id).collect::<Vec<_>>(), vec![3, 2]);
        assert_eq!(s.len(), 2);
        let (r, s) = newest_within(runs, skipped, 0);
        assert_eq!((r.len(), s.len()), (3, 3));
    }
}
