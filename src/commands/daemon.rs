//! The commands around the daemon: `daemon`, `status`, `pause`, `unpause`, `trigger`,
//! `requests`, and `backfill --submit`.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::run::{
    backfill_range, job_of, load_runnable, parse_time, runtime, runtime_and_store, BackfillArgs,
};
use super::{resolve_root, table, EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::config::interp::Env;
use crate::daemon::{self, Daemon, DaemonOptions, BACKFILL_PRIORITY};
use crate::engine::logs::LogFormat;
use crate::engine::Rerun;
use crate::store::{RequestKind, RequestRecord, RequestState, RunFilter};

/// A daemon whose heartbeat row is older than this is reported as down.
const DOWN_AFTER: chrono::Duration = chrono::Duration::seconds(15);

/// `cranium daemon`: runs until SIGTERM or SIGINT (a second one cancels running steps at once).
pub fn daemon(
    project: Option<&Path>,
    log_format: LogFormat,
    listen: Option<std::net::SocketAddr>,
    id: Option<String>,
    err: &mut dyn Write,
) -> i32 {
    let root = match resolve_root(project) {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_USAGE;
        }
    };
    let Some(rt) = runtime(err) else {
        return EXIT_FAILED;
    };
    rt.block_on(async {
        let opts = DaemonOptions {
            root,
            env: Env::from_process(),
            clock: Arc::new(daemon::clock::SystemClock),
            log_format,
            serve_health: true,
            listen,
            id,
        };
        let d = match Daemon::start(opts).await {
            Ok(d) => d,
            Err(e) => {
                let _ = writeln!(err, "error: {e}");
                return EXIT_FAILED;
            }
        };
        // The dashboard, beside /health on the daemon's address.
        let web = crate::web::Web::new(d.store().clone(), d.engine_watch());
        let d = d.with_routes(web.router());
        let (stop, force) = (CancellationToken::new(), CancellationToken::new());
        stop_on_signals(stop.clone(), force.clone());
        match d.run(stop, force).await {
            Ok(()) => EXIT_OK,
            Err(e) => {
                let _ = writeln!(err, "error: {e}");
                EXIT_FAILED
            }
        }
    })
}

/// Where `cranium ui` serves by default (the daemon's own address is 8181).
pub const UI_LISTEN: ([u8; 4], u16) = ([127, 0, 0, 1], 8282);

/// `cranium ui [--listen ADDR]`: the dashboard over the store, without a daemon, until
/// SIGTERM/SIGINT.
pub fn ui(
    project: Option<&Path>,
    listen: Option<std::net::SocketAddr>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let c = match load_runnable(project, err) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (rt, store) = match runtime_and_store(&c, err) {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    let addr = listen.unwrap_or_else(|| std::net::SocketAddr::from(UI_LISTEN));
    rt.block_on(async {
        let engine = crate::engine::Engine::new(c.project.clone(), c.graph.clone(), store.clone());
        let (_tx, rx) = tokio::sync::watch::channel(engine);
        let web = crate::web::Web::new(store, rx);
        let (stop, force) = (CancellationToken::new(), CancellationToken::new());
        let server = match crate::web::serve(addr, web, stop.clone()).await {
            Ok(s) => s,
            Err(e) => {
                let _ = writeln!(err, "error: cannot serve the dashboard on {addr}: {e} (is another process using it? pass --listen)");
                return EXIT_FAILED;
            }
        };
        let _ = writeln!(
            out,
            "dashboard: http://{addr}/ ({}); Ctrl-C stops it",
            if c.project.daemon.auth_token.is_some() {
                "actions need daemon.auth_token"
            } else {
                "read-only: set daemon.auth_token to allow actions"
            }
        );
        let _ = out.flush();
        stop_on_signals(stop.clone(), force);
        stop.cancelled().await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), server).await;
        EXIT_OK
    })
}

/// The first SIGTERM/SIGINT cancels `stop`; the second cancels `force`.
fn stop_on_signals(stop: CancellationToken, force: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!("cannot listen for SIGTERM: {e}");
                    None
                }
            };
        for token in [stop, force] {
            #[cfg(unix)]
            let t = async {
                match term.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let t = std::future::pending::<()>();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = t => {}
            }
            token.cancel();
        }
    });
}

/// `cranium pause JOB` / `cranium unpause JOB`.
pub fn pause(
    project: Option<&Path>,
    job: &str,
    paused: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let c = match load_runnable(project, err) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(code) = job_of(&c, job, err) {
        return code;
    }
    let (rt, store) = match runtime_and_store(&c, err) {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    match rt.block_on(store.set_paused(job, paused)) {
        Ok(changed) => {
            let word = if paused { "paused" } else { "unpaused" };
            if changed {
                let _ = writeln!(
                    out,
                    "{word} {job}{}",
                    if paused {
                        ": the daemon creates no runs for it until `cranium unpause`"
                    } else {
                        ": the daemon schedules it again (catchup decides what it missed)"
                    }
                );
            } else {
                let _ = writeln!(out, "{job} was already {word}");
            }
            EXIT_OK
        }
        Err(e) => {
            let _ = writeln!(err, "error: metadata store: {e}");
            EXIT_FAILED
        }
    }
}

/// `cranium trigger JOB [--at T]`: asks the daemon to run one interval now (the latest ended one
/// by default).
pub fn trigger(
    project: Option<&Path>,
    job: &str,
    at: Option<&str>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let c = match load_runnable(project, err) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let j = match job_of(&c, job, err) {
        Ok(j) => j,
        Err(code) => return code,
    };
    let iv = match at {
        Some(at) => {
            let t = match parse_time(at, j, "--at", err) {
                Ok(t) => t,
                Err(code) => return code,
            };
            match j.calendar.interval_at(t) {
                Some(iv) => iv,
                None => {
                    let _ = writeln!(err, "error: --at {at} is outside job '{job}'");
                    return EXIT_USAGE;
                }
            }
        }
        None => match j
            .calendar
            .schedule
            .prev_at_or_before(Utc::now())
            .and_then(|t| j.calendar.interval_at(t - chrono::Duration::seconds(1)))
        {
            Some(iv) => iv,
            None => {
                let _ = writeln!(
                    err,
                    "error: job '{job}' has no complete interval yet; give --at"
                );
                return EXIT_USAGE;
            }
        },
    };
    let (rt, store) = match runtime_and_store(&c, err) {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    let spec = serde_json::json!({
        "start": iv.start.to_rfc3339(),
        "end": iv.end.to_rfc3339(),
    });
    match rt.block_on(store.submit_request(RequestKind::Trigger, job, &spec, j.priority)) {
        Ok(id) => {
            let _ = writeln!(
                out,
                "request {id}: run {job} for {} .. {} (the daemon starts it within a second; `cranium requests --follow {id}`)",
                iv.start_local(j.timezone).format("%Y-%m-%d %H:%M"),
                iv.end_local(j.timezone).format("%Y-%m-%d %H:%M %Z"),
            );
            EXIT_OK
        }
        Err(e) => {
            let _ = writeln!(err, "error: metadata store: {e}");
            EXIT_FAILED
        }
    }
}

/// `cranium backfill ... --submit`: stores the backfill for the daemon.
pub fn submit_backfill(
    project: Option<&Path>,
    args: &BackfillArgs,
    priority: Option<i32>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let c = match load_runnable(project, err) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (j, from, to) = match backfill_range(&c, args, err) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let intervals = j.calendar.intervals(from, to).len();
    let (rt, store) = match runtime_and_store(&c, err) {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    // Check the selection now: a typo must not wait for the daemon to find it.
    let opts = crate::engine::RunOptions {
        steps: args.selection.steps.clone(),
        downstream: args.selection.downstream,
        ..Default::default()
    };
    let engine = crate::engine::Engine::new(c.project.clone(), c.graph.clone(), store.clone());
    if let Err(e) = engine.select(j, &opts) {
        let _ = writeln!(err, "error: {e}");
        return EXIT_USAGE;
    }
    let spec = serde_json::json!({
        "from": from.to_rfc3339(),
        "to": to.to_rfc3339(),
        "steps": args.selection.steps,
        "downstream": args.selection.downstream,
        "rerun": match args.rerun { Rerun::None => "none", Rerun::Failed => "failed", Rerun::All => "all" },
        "max_active_runs": args.max_active_runs,
    });
    let priority = priority.unwrap_or(BACKFILL_PRIORITY);
    match rt.block_on(store.submit_request(RequestKind::Backfill, &args.job, &spec, priority)) {
        Ok(id) => {
            let _ = writeln!(
                out,
                "request {id}: backfill {} over {intervals} interval(s) in [{}, {}), priority {priority}; the daemon runs it (`cranium requests --follow {id}`, `cranium requests --cancel {id}`)",
                args.job, args.from, args.to
            );
            EXIT_OK
        }
        Err(e) => {
            let _ = writeln!(err, "error: metadata store: {e}");
            EXIT_FAILED
        }
    }
}

fn fmt_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

fn request_row(r: &RequestRecord) -> [String; 7] {
    let what = match r.kind {
        RequestKind::Trigger => r
            .spec
            .get("start")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string(),
        RequestKind::Backfill => format!(
            "{} .. {}",
            r.spec.get("from").and_then(|v| v.as_str()).unwrap_or(""),
            r.spec.get("to").and_then(|v| v.as_str()).unwrap_or("")
        ),
    };
    [
        r.id.to_string(),
        r.kind.as_str().to_string(),
        r.job.clone(),
        what,
        r.state.as_str().to_string(),
        fmt_time(r.updated_at),
        r.message.clone().unwrap_or_default(),
    ]
}

/// `cranium requests [--follow ID] [--cancel ID]`.
pub fn requests(
    project: Option<&Path>,
    follow: Option<i64>,
    cancel: Option<i64>,
    limit: usize,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let c = match load_runnable(project, err) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (rt, store) = match runtime_and_store(&c, err) {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    rt.block_on(async {
        if let Some(id) = cancel {
            return match store.cancel_request(id).await {
                Ok(true) => {
                    let _ = writeln!(
                        out,
                        "request {id} cancelled: the daemon stops its running intervals within a second and starts no more"
                    );
                    EXIT_OK
                }
                Ok(false) => {
                    let state = store.request(id).await.ok().flatten().map(|r| r.state);
                    let _ = match state {
                        Some(s) => writeln!(err, "error: request {id} has already ended ({s})"),
                        None => writeln!(err, "error: no request {id} (see `cranium requests`)"),
                    };
                    EXIT_USAGE
                }
                Err(e) => {
                    let _ = writeln!(err, "error: metadata store: {e}");
                    EXIT_FAILED
                }
            };
        }
        if let Some(id) = follow {
            let mut last = String::new();
            loop {
                let r = match store.request(id).await {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        let _ = writeln!(err, "error: no request {id} (see `cranium requests`)");
                        return EXIT_USAGE;
                    }
                    Err(e) => {
                        let _ = writeln!(err, "error: metadata store: {e}");
                        return EXIT_FAILED;
                    }
                };
                let line = format!(
                    "request {id} ({} {}): {}{}",
                    r.kind,
                    r.job,
                    r.state,
                    r.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
                );
                if line != last {
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                    last = line;
                }
                if r.state.is_final() {
                    return if r.state == RequestState::Done {
                        EXIT_OK
                    } else {
                        EXIT_FAILED
                    };
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        match store.requests(false, limit).await {
            Ok(rs) => {
                let mut rows = vec![[
                    "ID".to_string(),
                    "KIND".to_string(),
                    "JOB".to_string(),
                    "INTERVALS".to_string(),
                    "STATE".to_string(),
                    "UPDATED".to_string(),
                    "PROGRESS".to_string(),
                ]];
                rows.extend(rs.iter().map(request_row));
                let _ = write!(out, "{}", table(&rows));
                EXIT_OK
            }
            Err(e) => {
                let _ = writeln!(err, "error: metadata store: {e}");
                EXIT_FAILED
            }
        }
    })
}

/// `cranium status`: the daemon, every job with its last run, next due time and state, running
/// steps.
pub fn status(project: Option<&Path>, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let c = match load_runnable(project, err) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (rt, store) = match runtime_and_store(&c, err) {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    rt.block_on(async {
        let now = Utc::now();
        let result: Result<(), crate::store::StoreError> = async {
            let daemons = store.daemons().await?;
            let live: Vec<_> = daemons
                .iter()
                .filter(|d| d.stopped_at.is_none() && now - d.heartbeat_at <= DOWN_AFTER)
                .collect();
            if live.is_empty() {
                let last = daemons.first().map(|d| match d.stopped_at {
                    Some(t) => format!(" (last one stopped at {} UTC)", fmt_time(t)),
                    None => format!(
                        " (last heartbeat {} UTC: it died or hangs)",
                        fmt_time(d.heartbeat_at)
                    ),
                });
                let _ = writeln!(
                    out,
                    "daemon: DOWN{}: nothing is scheduled until `cranium daemon` runs",
                    last.unwrap_or_default()
                );
            }
            for d in &live {
                let role = d
                    .status
                    .get("role")
                    .and_then(|v| v.as_str())
                    .unwrap_or("leader");
                let _ = writeln!(
                    out,
                    "daemon {}: up, {role}, pid {} on {}, version {}, since {} UTC, heartbeat {}s ago, project {}{}",
                    d.id,
                    d.pid,
                    d.host,
                    d.version,
                    fmt_time(d.started_at),
                    (now - d.heartbeat_at).num_seconds(),
                    d.status.get("project_hash").and_then(|v| v.as_str()).unwrap_or("?"),
                    d.status
                        .get("listen")
                        .and_then(|v| v.as_str())
                        .map(|l| format!(", health http://{l}/health"))
                        .unwrap_or_default()
                );
                let running: Vec<String> = d
                    .status
                    .get("running")
                    .and_then(|v| v.as_array())
                    .map(|a| {
                        a.iter()
                            .map(|r| {
                                format!(
                                    "{}.{} ({})",
                                    r.get("job").and_then(|v| v.as_str()).unwrap_or("?"),
                                    r.get("step").and_then(|v| v.as_str()).unwrap_or("?"),
                                    r.get("interval_start").and_then(|v| v.as_str()).unwrap_or("?"),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                if !running.is_empty() {
                    let _ = writeln!(out, "  running {}: {}", running.len(), running.join(", "));
                }
                if let Some(errs) = d.status.get("reload_errors").and_then(|v| v.as_array()) {
                    if !errs.is_empty() {
                        let _ = writeln!(out, "  reload refused ({} error(s)); the previous version runs:", errs.len());
                        for e in errs {
                            let _ = writeln!(out, "    {}", e.as_str().unwrap_or(""));
                        }
                    }
                }
            }
            let paused: std::collections::HashMap<String, DateTime<Utc>> =
                store.paused_jobs().await?.into_iter().collect();
            let leases = store.leases().await?;
            let mut rows = vec![[
                "JOB".to_string(),
                "STATE".to_string(),
                "LAST RUN".to_string(),
                "LAST INTERVAL".to_string(),
                "NEXT DUE".to_string(),
                "RUNNING".to_string(),
            ]];
            for j in &c.project.jobs {
                let last = store
                    .runs(&RunFilter {
                        job: Some(j.name.clone()),
                        state: None,
                        limit: 1,
                    })
                    .await?;
                let last = last.first();
                let running = leases
                    .iter()
                    .filter(|l| l.job == j.name && l.expires_at > now)
                    .count();
                let next = j.calendar.next_due(now).map(|iv| {
                    iv.end_local(j.timezone).format("%Y-%m-%d %H:%M:%S %Z").to_string()
                });
                rows.push([
                    j.name.clone(),
                    if paused.contains_key(&j.name) {
                        "paused".to_string()
                    } else {
                        "active".to_string()
                    },
                    last.map(|r| format!("{} ({})", r.state, r.id)).unwrap_or_else(|| "-".into()),
                    last.map(|r| {
                        r.interval
                            .start_local(j.timezone)
                            .format("%Y-%m-%d %H:%M:%S")
                            .to_string()
                    })
                    .unwrap_or_else(|| "-".into()),
                    if paused.contains_key(&j.name) {
                        "-".to_string()
                    } else {
                        next.unwrap_or_else(|| "ended".into())
                    },
                    running.to_string(),
                ]);
            }
            let _ = write!(out, "{}", table(&rows));
            let live_leases: Vec<_> = leases.iter().filter(|l| l.expires_at > now).collect();
            if live_leases.is_empty() {
                let _ = writeln!(out, "no steps running");
            } else {
                let _ = writeln!(out, "running steps:");
                for l in live_leases {
                    let _ = writeln!(
                        out,
                        "  {}.{} interval {} (run {}) for {}s, by {}",
                        l.job,
                        l.step,
                        fmt_time(l.interval_start),
                        l.run_id.map(|r| r.to_string()).unwrap_or_default(),
                        (now - l.acquired_at).num_seconds(),
                        l.owner
                    );
                }
            }
            let open = store.requests(true, 0).await?;
            if !open.is_empty() {
                let _ = writeln!(out, "open requests: {}", open.len());
                for r in &open {
                    let _ = writeln!(out, "  {}", request_row(r).join("  "));
                }
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => EXIT_OK,
            Err(e) => {
                let _ = writeln!(err, "error: metadata store: {e}");
                EXIT_FAILED
            }
        }
    })
}
