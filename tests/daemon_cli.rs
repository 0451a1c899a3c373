//! `cranium daemon` as a real process, with the real PostgreSQL (127.0.0.1:5432, user postgres,
//! database test) and the default SQLite store: a seconds-level schedule over 30 s, SIGKILL in the
//! middle of a step, SIGTERM within and beyond the grace, hot reload (good and broken files), the
//! single-daemon lock, a submitted backfill cancelled half way, and a foreground `run` racing the
//! daemon for one interval. The health endpoints are read with a raw HTTP/1.1 GET.
//!
//! Every test is bounded: each wait has a deadline, and the daemon child is killed (SIGKILL) by
//! [`DaemonProc`]'s `Drop` on every exit path, a panic included.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use cranium::schedule::{parse_time, Tz};
use cranium::store::{
    AttemptRecord, RequestState, RunFilter, RunRecord, RunState, StepState, Store, INTERRUPTED,
};

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";
const STATE: &str = "sqlite://.cranium/state.db";
const BIN: &str = env!("CARGO_BIN_EXE_cranium");

fn suffix() -> String {
    format!("{}_{}", std::process::id(), rand::random::<u32>())
}

/// A port nothing listens on now (bound, read, released).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A project folder: `cranium.yaml` with the SQLite store, the `warehouse` connection and
/// `daemon.listen` on a free port (plus `daemon_extra` lines under `daemon:`), and job files.
struct Project {
    dir: tempfile::TempDir,
    port: u16,
}

impl Project {
    fn new(daemon_extra: &str, jobs: &[(&str, &str)]) -> Project {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        std::fs::write(
            dir.path().join("cranium.yaml"),
            format!(
                "name: t\nstate: {STATE}\nconnections:\n  warehouse:\n    kind: postgres\n    url: {PG}\n\
                 daemon:\n  listen: 127.0.0.1:{port}\n{daemon_extra}"
            ),
        )
        .expect("cranium.yaml");
        std::fs::create_dir_all(dir.path().join("jobs")).expect("jobs/");
        let p = Project { dir, port };
        for (name, text) in jobs {
            p.write_job(name, text);
        }
        p
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write_job(&self, name: &str, text: &str) {
        std::fs::write(self.path().join("jobs").join(format!("{name}.yaml")), text)
            .expect("job file");
    }

    async fn store(&self) -> Store {
        Store::open(STATE, self.path())
            .await
            .expect("open the store")
    }
}

/// Sends a signal with `kill(1)`.
fn kill(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A `cranium daemon` child. Dropping it SIGKILLs it if it still runs, and reaps it.
struct DaemonProc {
    child: Child,
    pid: u32,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl DaemonProc {
    /// Starts `cranium daemon` in the project; its stdout and stderr go to `<name>.log` in the
    /// project root (a `.log` file is not a project file: it triggers no reload).
    fn start(p: &Project, name: &str) -> DaemonProc {
        let log = p.path().join(format!("{name}.log"));
        let file = File::create(&log).expect("log file");
        let child = Command::new(BIN)
            .arg("daemon")
            .current_dir(p.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().expect("clone log file")))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("spawn cranium daemon");
        let pid = child.id();
        DaemonProc {
            child,
            pid,
            log,
            exited: None,
        }
    }

    /// Whether the child still runs (not reaped: its pid is still ours to signal).
    fn running(&mut self) -> bool {
        if self.exited.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(s)) => {
                self.exited = Some(s);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    fn signal(&mut self, sig: &str) {
        if self.running() {
            kill(self.pid, sig);
        }
    }

    /// Waits for the child to exit; panics (with its log) after `within`.
    async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if !self.running() {
                if let Some(s) = self.exited {
                    return s;
                }
                panic!("cannot wait for the daemon:\n{}", self.log());
            }
            if Instant::now() > deadline {
                panic!("the daemon did not exit within {within:?}:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The end of its log (for failure messages).
    fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(80);
        format!(
            "--- daemon pid {} log (last {} lines) ---\n{}",
            self.pid,
            lines.len() - from,
            lines[from..].join("\n")
        )
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        if self.running() {
            kill(self.pid, "KILL");
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Runs a cranium command to its end (killed after 90 s: a stuck command fails the test).
fn cranium_blocking(dir: &Path, args: &[&str]) -> Output {
    let child = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cranium");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let out = child.wait_with_output();
        let _ = tx.send(());
        out
    });
    let timed_out = rx.recv_timeout(Duration::from_secs(90)).is_err();
    if timed_out {
        // Not reaped yet (the waiter has not returned): the pid is still the child's.
        kill(pid, "KILL");
    }
    let out = waiter
        .join()
        .expect("waiter thread")
        .expect("cranium output");
    assert!(
        !timed_out,
        "cranium {args:?} did not finish within 90 s:\n{}",
        text(&out)
    );
    out
}

async fn cranium(dir: &Path, args: &[&str]) -> Output {
    let dir = dir.to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cranium_blocking(&dir, &args)
    })
    .await
    .expect("cranium thread")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A raw HTTP/1.1 GET on 127.0.0.1: the status code and the body.
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let resp = String::from_utf8_lossy(&buf).into_owned();
    let bad =
        |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{m}: {resp}"));
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().replace(' ', "") == "transfer-encoding:chunked");
    let body = if chunked {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).map_err(|_| bad("bad chunk"))?;
            if n == 0 || tail.len() < n {
                break;
            }
            out.push_str(&tail[..n]);
            rest = tail[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_string()
    };
    Ok((code, body))
}

async fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || http_get(port, &path))
        .await
        .expect("http thread")
}

/// Polls `f` every 100 ms until it gives `Some`, for at most `within`.
async fn wait_for<T, F, Fut>(within: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `/readyz` answers 200.
async fn wait_ready(d: &DaemonProc, port: u16) {
    wait_for(Duration::from_secs(20), || async {
        get(port, "/readyz").await.ok().filter(|(c, _)| *c == 200)
    })
    .await
    .unwrap_or_else(|| panic!("/readyz never answered 200:\n{}", d.log()));
}

/// Every run of `job`, oldest first.
async fn runs_of(store: &Store, job: &str) -> Vec<RunRecord> {
    let mut r = store
        .runs(&RunFilter {
            job: Some(job.to_string()),
            state: None,
            limit: 0,
        })
        .await
        .expect("runs");
    r.reverse();
    r
}

async fn attempts_of(
    store: &Store,
    job: &str,
    start: DateTime<Utc>,
    step: &str,
) -> Vec<AttemptRecord> {
    store
        .attempts(job, start, Some(step))
        .await
        .expect("attempts")
}

async fn step_state(
    store: &Store,
    job: &str,
    step: &str,
    start: DateTime<Utc>,
) -> Option<StepState> {
    store
        .step_state(job, step, start)
        .await
        .expect("step state")
        .map(|r| r.state)
}

/// The first run of `job` once it exists and `step` is running in it.
async fn wait_step_running(store: &Store, d: &DaemonProc, job: &str, step: &str) -> RunRecord {
    wait_for(Duration::from_secs(30), || async {
        let run = runs_of(store, job).await.into_iter().next()?;
        (step_state(store, job, step, run.interval.start).await == Some(StepState::Running))
            .then_some(run)
    })
    .await
    .unwrap_or_else(|| panic!("{job}.{step} never ran:\n{}", d.log()))
}

async fn pg() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(PG, tokio_postgres::NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(conn);
    client
}

fn day(d: &str) -> DateTime<Utc> {
    parse_time(d, Tz::UTC).expect("date")
}

/// A six-field cron job every two seconds, catching up from a few seconds ago: over 30 s of a
/// real daemon every interval runs exactly once (PostgreSQL and the store agree), the health
/// endpoints answer, and `cranium status` says up, then down after the clean stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seconds_schedule_runs_every_interval_exactly_once() {
    let t = format!("dcli_sec_{}", suffix());
    let db = pg().await;
    db.batch_execute(&format!(
        "CREATE TABLE {t} (interval_start timestamptz NOT NULL)"
    ))
    .await
    .expect("create table");
    // A tick of the schedule (even second) a few seconds ago: catchup runs those first.
    let start = DateTime::from_timestamp((Utc::now().timestamp() - 6) & !1, 0).expect("start");
    let job = format!(
        r#"job: secs
schedule: "*/2 * * * * *"
catchup: true
start: "{}"
steps:
  - id: insert
    kind: sql
    connection: warehouse
    query: INSERT INTO {t} (interval_start) VALUES ({{{{ interval_start | sql_literal }}}})
"#,
        start.to_rfc3339_opts(SecondsFormat::Secs, true)
    );
    let p = Project::new("", &[("secs", &job)]);
    let began = Instant::now();
    let mut d = DaemonProc::start(&p, "daemon");
    wait_ready(&d, p.port).await;

    let (code, body) = get(p.port, "/livez").await.expect("GET /livez");
    assert_eq!(code, 200, "/livez: {body}");
    let (code, body) = get(p.port, "/readyz").await.expect("GET /readyz");
    assert_eq!(code, 200, "/readyz: {body}");
    let (code, body) = get(p.port, "/health").await.expect("GET /health");
    assert_eq!(code, 200, "/health: {body}");
    let health: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/health is not JSON ({e}): {body}"));
    assert!(health["running_steps"].is_array(), "{health}");
    assert!(
        health["project_hash"]
            .as_str()
            .is_some_and(|h| !h.is_empty()),
        "{health}"
    );
    assert_eq!(health["jobs"], 1, "{health}");

    // `cranium status` sees the daemon's heartbeat.
    let up = wait_for(Duration::from_secs(10), || async {
        let out = cranium(p.path(), &["status"]).await;
        let s = stdout(&out);
        (out.status.success() && s.contains(": up, leader,")).then_some(s)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "`cranium status` never said `daemon ID: up, leader`:\n{}",
            d.log()
        )
    });
    assert!(up.contains(&format!("pid {}", d.pid)), "{up}");
    assert!(up.contains("secs"), "{up}");

    let run_for = Duration::from_secs(30);
    tokio::time::sleep(run_for.saturating_sub(began.elapsed()) / 2).await;
    // `/metrics` mid-run: the Prometheus text format as promtool checks it, and a few values.
    let (code, metrics) = get(p.port, "/metrics").await.expect("GET /metrics");
    assert_eq!(code, 200, "/metrics: {metrics}");
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect(
            "promtool must be installed (Debian's prometheus package; scripts/test.sh installs it)",
        );
    {
        use std::io::Write;
        promtool
            .stdin
            .take()
            .expect("stdin")
            .write_all(metrics.as_bytes())
            .expect("write to promtool");
    }
    let checked = promtool.wait_with_output().expect("promtool");
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{metrics}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    // Every series names its daemon (`daemon="ID"`, first); the lookups below leave it out.
    let without_daemon = |l: &str| -> String {
        let Some(at) = l.find("daemon=\"") else {
            return l.to_string();
        };
        let end = l[at + 8..]
            .find('"')
            .map(|e| at + 8 + e + 1)
            .unwrap_or(l.len());
        let rest = l[end..].strip_prefix(',').unwrap_or(&l[end..]);
        format!("{}{rest}", &l[..at]).replace("{}", "")
    };
    let value = |series: &str| -> Option<f64> {
        metrics
            .lines()
            .map(without_daemon)
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next().map(str::to_string))
            .and_then(|v| v.parse().ok())
    };
    assert!(
        metrics.contains("cranium_build_info{daemon=\""),
        "every series names its daemon:\n{metrics}"
    );
    assert_eq!(value("cranium_daemon_leader"), Some(1.0), "{metrics}");
    let succeeded = value("cranium_runs_total{job=\"secs\",state=\"success\"}")
        .unwrap_or_else(|| panic!("no run counter:\n{metrics}"));
    assert!(succeeded >= 3.0, "{succeeded} runs by mid-run:\n{metrics}");
    assert_eq!(
        value("cranium_step_attempts_total{job=\"secs\",step=\"insert\",state=\"success\"}"),
        Some(succeeded),
        "one attempt per run:\n{metrics}"
    );
    assert!(
        value("cranium_scheduler_delay_seconds_count{job=\"secs\"}")
            .is_some_and(|n| n >= succeeded),
        "{metrics}"
    );
    assert_eq!(
        value("cranium_scheduler_max_running_steps"),
        Some(16.0),
        "{metrics}"
    );
    assert_eq!(
        value(&format!(
            "cranium_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        Some(1.0),
        "{metrics}"
    );
    tokio::time::sleep(run_for.saturating_sub(began.elapsed())).await;
    d.signal("TERM");
    let status = d.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{}", d.log());

    let out = cranium(p.path(), &["status"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("daemon: DOWN"), "{}", text(&out));

    // PostgreSQL: every interval from the first to the last, once each, 2 s apart.
    let rows: Vec<DateTime<Utc>> = db
        .query(&format!("SELECT interval_start FROM {t} ORDER BY 1"), &[])
        .await
        .expect("select")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        rows.len() >= 12,
        "only {} intervals ran: {rows:?}\n{}",
        rows.len(),
        d.log()
    );
    assert_eq!(
        rows[0], start,
        "catchup starts at the job's start: {rows:?}"
    );
    for w in rows.windows(2) {
        assert_eq!(
            w[1] - w[0],
            chrono::Duration::seconds(2),
            "a gap or a doubled interval: {rows:?}"
        );
    }
    // The store: one run per interval, all succeeded, the same intervals.
    let store = p.store().await;
    let runs = runs_of(&store, "secs").await;
    let bad: Vec<_> = runs
        .iter()
        .filter(|r| r.state != RunState::Success)
        .collect();
    assert!(bad.is_empty(), "runs that did not succeed: {bad:?}");
    let starts: Vec<DateTime<Utc>> = runs.iter().map(|r| r.interval.start).collect();
    assert_eq!(
        starts, rows,
        "the store's runs differ from the rows in PostgreSQL"
    );
    for r in &runs {
        assert_eq!(
            r.interval.end - r.interval.start,
            chrono::Duration::seconds(2)
        );
    }
    db.batch_execute(&format!("DROP TABLE {t}"))
        .await
        .expect("drop");
}

/// SIGKILL while the middle step of a three-step run sleeps: the next daemon re-queues the same
/// run, marks the killed attempt interrupted, runs the middle step again and the last one once;
/// the first step, which had succeeded, does not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_step_resumes_it_and_loses_or_doubles_nothing() {
    let t = format!("dcli_kill_{}", suffix());
    let db = pg().await;
    db.batch_execute(&format!("CREATE TABLE {t} (step text NOT NULL)"))
        .await
        .expect("create table");
    let job = format!(
        r#"job: k
schedule: "@daily"
catchup: false
start: 2026-11-01
steps:
  - id: a
    kind: sql
    connection: warehouse
    query: INSERT INTO {t} (step) VALUES ('a')
  - id: b
    kind: noop
    after: [a]
    sleep: 5s
  - id: c
    kind: sql
    after: [b]
    connection: warehouse
    query: INSERT INTO {t} (step) VALUES ('c')
"#
    );
    let p = Project::new("", &[("k", &job)]);
    let store = p.store().await;
    let mut d = DaemonProc::start(&p, "daemon1");
    let run = wait_step_running(&store, &d, "k", "b").await;
    d.signal("KILL");
    let status = d.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), None, "SIGKILL leaves no exit code");
    assert_eq!(
        step_state(&store, "k", "b", run.interval.start).await,
        Some(StepState::Running),
        "the killed daemon could not record anything"
    );
    drop(d);

    let d2 = DaemonProc::start(&p, "daemon2");
    let done = wait_for(Duration::from_secs(40), || async {
        store
            .run(run.id)
            .await
            .expect("run")
            .filter(|r| r.state == RunState::Success)
    })
    .await
    .unwrap_or_else(|| panic!("the resumed run did not succeed:\n{}", d2.log()));
    assert_eq!(done.id, run.id);

    let count = |step: &'static str| {
        let db = &db;
        let t = &t;
        async move {
            db.query_one(
                &format!("SELECT count(*) FROM {t} WHERE step = $1"),
                &[&step],
            )
            .await
            .expect("count")
            .get::<_, i64>(0)
        }
    };
    assert_eq!(count("a").await, 1, "step a ran again after the restart");
    assert_eq!(count("c").await, 1, "step c did not run exactly once");
    let b = attempts_of(&store, "k", run.interval.start, "b").await;
    assert_eq!(b.len(), 2, "{b:#?}");
    assert_eq!(b[0].state, StepState::Failed, "{b:#?}");
    assert_eq!(b[0].error.as_deref(), Some(INTERRUPTED), "{b:#?}");
    assert_eq!(b[1].state, StepState::Success, "{b:#?}");
    assert_eq!(
        attempts_of(&store, "k", run.interval.start, "a")
            .await
            .len(),
        1
    );
    assert_eq!(
        attempts_of(&store, "k", run.interval.start, "c")
            .await
            .len(),
        1
    );
    let runs = runs_of(&store, "k").await;
    let same: Vec<_> = runs
        .iter()
        .filter(|r| r.interval.start == run.interval.start)
        .collect();
    assert_eq!(same.len(), 1, "{runs:#?}");
    assert_eq!(same[0].id, run.id);
    assert_eq!(same[0].state, RunState::Success);
    db.batch_execute(&format!("DROP TABLE {t}"))
        .await
        .expect("drop");
}

/// `shutdown_grace: 3s`: a step that ends within the grace finishes and the daemon exits 0 with
/// it recorded as a success; one that does not is cancelled after the grace (exit 0 within about
/// 3 to 10 s), its record pending, its attempt not a success, its run queued; the next daemon
/// resumes that run (a second attempt starts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_waits_for_a_step_within_the_grace_and_cancels_one_beyond() {
    let job = |sleep: &str| {
        format!(
            "job: g\nschedule: \"@daily\"\ncatchup: false\nstart: 2026-11-01\nsteps:\n  - id: s\n    kind: noop\n    sleep: {sleep}\n"
        )
    };
    let grace = "  shutdown_grace: 3s\n";

    // (a) Within the grace.
    let p = Project::new(grace, &[("g", &job("1s"))]);
    let store = p.store().await;
    let mut d = DaemonProc::start(&p, "daemon");
    let run = wait_step_running(&store, &d, "g", "s").await;
    let term = Instant::now();
    d.signal("TERM");
    let status = d.wait_exit(Duration::from_secs(15)).await;
    let took = term.elapsed();
    assert_eq!(status.code(), Some(0), "{}", d.log());
    assert!(
        took < Duration::from_secs(5),
        "it waited {took:?} for a 1 s step (the grace is 3 s)"
    );
    assert_eq!(
        step_state(&store, "g", "s", run.interval.start).await,
        Some(StepState::Success),
        "{}",
        d.log()
    );
    let a = attempts_of(&store, "g", run.interval.start, "s").await;
    assert_eq!(a.len(), 1, "{a:#?}");
    assert_eq!(a[0].state, StepState::Success);
    let r = store.run(run.id).await.expect("run").expect("the run");
    assert_eq!(r.state, RunState::Success, "{r:?}");
    drop(d);

    // (b) Beyond the grace.
    let p = Project::new(grace, &[("g", &job("30s"))]);
    let store = p.store().await;
    let mut d = DaemonProc::start(&p, "daemon1");
    let run = wait_step_running(&store, &d, "g", "s").await;
    let term = Instant::now();
    d.signal("TERM");
    let status = d.wait_exit(Duration::from_secs(20)).await;
    let took = term.elapsed();
    assert_eq!(status.code(), Some(0), "{}", d.log());
    assert!(
        took >= Duration::from_millis(2500) && took <= Duration::from_secs(10),
        "the daemon stopped after {took:?}, not after the 3 s grace:\n{}",
        d.log()
    );
    assert_eq!(
        step_state(&store, "g", "s", run.interval.start).await,
        Some(StepState::Pending),
        "{}",
        d.log()
    );
    let a = attempts_of(&store, "g", run.interval.start, "s").await;
    assert_eq!(a.len(), 1, "{a:#?}");
    assert_ne!(a[0].state, StepState::Success, "{a:#?}");
    assert_ne!(a[0].state, StepState::Running, "{a:#?}");
    let r = store.run(run.id).await.expect("run").expect("the run");
    assert_eq!(r.state, RunState::Queued, "{r:?}\n{}", d.log());
    assert!(
        store.leases().await.expect("leases").is_empty(),
        "a clean stop releases its leases"
    );
    drop(d);

    // The next daemon resumes the same run: a second attempt of the step starts.
    let mut d2 = DaemonProc::start(&p, "daemon2");
    wait_for(Duration::from_secs(20), || async {
        let a = attempts_of(&store, "g", run.interval.start, "s").await;
        (a.len() == 2 && a[1].state == StepState::Running && a[1].run_id == run.id).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("the queued run was not resumed:\n{}", d2.log()));
    let r = store.run(run.id).await.expect("run").expect("the run");
    assert_eq!(r.state, RunState::Running, "{r:?}");
    assert_eq!(
        runs_of(&store, "g")
            .await
            .iter()
            .filter(|r| r.interval.start == run.interval.start)
            .count(),
        1,
        "no second run for the interval"
    );
    d2.signal("KILL");
    d2.wait_exit(Duration::from_secs(10)).await;
}

/// A new job file is picked up at once (its first run within 2.5 s of the write); a broken file
/// is refused with `file:line:col` in `/health`'s `reload_errors` while the loaded version keeps
/// scheduling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_changes_the_project_and_a_broken_file_is_refused() {
    let first = "job: first\nschedule: \"@daily\"\ncatchup: false\nstart: 2026-11-01\nsteps:\n  - id: a\n    kind: noop\n";
    let p = Project::new("", &[("first", first)]);
    let store = p.store().await;
    let d = DaemonProc::start(&p, "daemon");
    wait_ready(&d, p.port).await;
    let health = |port: u16| async move {
        let (code, body) = get(port, "/health").await.ok()?;
        (code == 200).then(|| serde_json::from_str::<serde_json::Value>(&body).expect("JSON"))
    };
    let h0 = health(p.port).await.expect("/health");
    assert_eq!(h0["jobs"], 1, "{h0}");

    let written = Utc::now();
    p.write_job(
        "every",
        "job: every\nschedule: \"* * * * * *\"\ncatchup: false\nstart: \"2026-11-01T00:00:00Z\"\nsteps:\n  - id: a\n    kind: noop\n",
    );
    let run = wait_for(Duration::from_secs(15), || async {
        runs_of(&store, "every").await.into_iter().next()
    })
    .await
    .unwrap_or_else(|| panic!("the new job never ran:\n{}", d.log()));
    let lag = run.created_at - written;
    assert!(
        lag <= chrono::Duration::milliseconds(2500),
        "the first run of the new job was created {lag} after the write:\n{}",
        d.log()
    );
    let h1 = wait_for(Duration::from_secs(5), || async {
        health(p.port).await.filter(|h| h["jobs"] == 2)
    })
    .await
    .unwrap_or_else(|| panic!("/health does not show the reload:\n{}", d.log()));
    assert_ne!(h1["project_hash"], h0["project_hash"], "{h1}");

    // A broken file: refused, named with line and column; the loaded version goes on.
    p.write_job(
        "broken",
        "job: broken\nschedule: \"@daily\"\nstart: 2026-01-01\nsteps:\n  - id: a\n    kind: noop\n    sleeep: 1s\n",
    );
    let errors = wait_for(Duration::from_secs(5), || async {
        let h = health(p.port).await?;
        let errs = h["reload_errors"].as_array()?.clone();
        (!errs.is_empty()).then_some((h, errs))
    })
    .await
    .unwrap_or_else(|| panic!("the broken file was not reported:\n{}", d.log()));
    let (h2, errs) = errors;
    assert!(
        errs.iter().any(|e| e.as_str().is_some_and(|e| e
            .starts_with("error: jobs/broken.yaml:7:5: ")
            && e.contains("sleeep"))),
        "{errs:?}"
    );
    assert_eq!(
        h2["jobs"], 2,
        "the refused version must not be loaded: {h2}"
    );
    assert_eq!(h2["project_hash"], h1["project_hash"], "{h2}");
    let before = runs_of(&store, "every").await.len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = runs_of(&store, "every").await;
    assert!(
        after.len() >= before + 2,
        "the good job stopped after the refused reload ({before} -> {} runs):\n{}",
        after.len(),
        d.log()
    );
    assert!(runs_of(&store, "broken").await.is_empty());
}

/// The SQLite store takes one daemon: a second one exits 1 naming the first one's pid and the
/// store, and the first one goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_sqlite_store_is_refused() {
    let job = "job: one\nschedule: \"@daily\"\ncatchup: false\nstart: 2026-11-01\nsteps:\n  - id: a\n    kind: noop\n";
    let p = Project::new("", &[("one", job)]);
    let mut d = DaemonProc::start(&p, "daemon");
    wait_ready(&d, p.port).await;
    let out = cranium(p.path(), &["daemon"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "another cranium daemon (pid {}) is running on the store sqlite://",
        d.pid
    );
    assert!(err.contains(&want), "{err}");
    let dir_name = p
        .path()
        .file_name()
        .expect("dir name")
        .to_string_lossy()
        .into_owned();
    assert!(
        err.contains(&format!("{dir_name}/.cranium/state.db")),
        "the message does not name the store: {err}"
    );
    assert!(d.running(), "the first daemon stopped:\n{}", d.log());
    let (code, _) = get(p.port, "/readyz").await.expect("GET /readyz");
    assert_eq!(code, 200);
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(20)).await.code(), Some(0));
}

/// `backfill --submit` stores the backfill for the daemon (the shell that submitted it is gone);
/// the daemon runs it one interval at a time; `requests --cancel` half way stops it: no new
/// runs, far fewer than the 20 intervals, and `cranium requests` lists it as cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_backfill_survives_its_shell_and_is_cancelled_half_way() {
    let job = "job: bf\nschedule: \"@daily\"\nstart: 2026-01-01\nsteps:\n  - id: s\n    kind: noop\n    sleep: 1s\n";
    let p = Project::new("", &[("bf", job)]);
    let out = cranium(p.path(), &["pause", "bf"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let store = p.store().await;
    let d = DaemonProc::start(&p, "daemon");
    wait_ready(&d, p.port).await;

    let out = cranium(
        p.path(),
        &[
            "backfill",
            "bf",
            "--from",
            "2026-01-01",
            "--to",
            "2026-01-21",
            "--submit",
            "--max-active-runs",
            "1",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let s = stdout(&out);
    let id: i64 = s
        .strip_prefix("request ")
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request id in: {s}"));
    assert!(s.contains("20 interval(s)"), "{s}");

    // The daemon works through it, one run at a time.
    wait_for(Duration::from_secs(40), || async {
        let runs = runs_of(&store, "bf").await;
        assert!(
            runs.iter().filter(|r| r.state == RunState::Running).count() <= 1,
            "more than one run at once: {runs:#?}"
        );
        (runs.iter().filter(|r| r.state == RunState::Success).count() >= 3).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("the backfill did not get 3 runs done:\n{}", d.log()));
    assert!(runs_of(&store, "bf")
        .await
        .iter()
        .all(|r| r.trigger == cranium::store::Trigger::Backfill));

    let out = cranium(p.path(), &["requests", "--cancel", &id.to_string()]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    wait_for(Duration::from_secs(5), || async {
        let r = store.request(id).await.expect("request")?;
        (r.state == RequestState::Cancelled).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("request {id} is not cancelled:\n{}", d.log()));
    // Within a few seconds the daemon has stopped the run in progress and starts no more.
    let settled = wait_for(Duration::from_secs(5), || async {
        let runs = runs_of(&store, "bf").await;
        runs.iter()
            .all(|r| matches!(r.state, RunState::Success | RunState::Failed))
            .then_some(runs.len())
    })
    .await
    .unwrap_or_else(|| panic!("a run of the cancelled backfill goes on:\n{}", d.log()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let runs = runs_of(&store, "bf").await;
    assert_eq!(runs.len(), settled, "new runs after the cancel: {runs:#?}");
    assert!(
        runs.len() <= 6,
        "{} runs: the cancel came too late",
        runs.len()
    );

    let out = cranium(p.path(), &["requests"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let listing = stdout(&out);
    assert!(
        listing
            .lines()
            .any(|l| l.split_whitespace().next() == Some(&id.to_string())
                && l.contains("backfill")
                && l.contains("cancelled")),
        "{listing}"
    );
    // Following an ended request prints its state once and exits 1 (it did not succeed).
    let out = cranium(p.path(), &["requests", "--follow", &id.to_string()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stdout(&out).contains(&format!("request {id} (backfill "))
            && stdout(&out).contains("cancelled"),
        "{}",
        text(&out)
    );
}

/// `cranium trigger` (the daemon) and `cranium run` (the foreground) for the same interval at
/// the same moment: the step lease lets exactly one of them run the step; both end well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreground_run_and_the_daemon_race_for_one_interval() {
    let t = format!("dcli_race_{}", suffix());
    let db = pg().await;
    db.batch_execute(&format!(
        "CREATE TABLE {t} (interval_start timestamptz NOT NULL)"
    ))
    .await
    .expect("create table");
    let job = format!(
        r#"job: race
schedule: "@daily"
start: 2026-01-01
steps:
  - id: load
    kind: sql
    connection: warehouse
    query: |
      SELECT pg_sleep(2);
      INSERT INTO {t} (interval_start) VALUES ({{{{ interval_start | sql_literal }}}});
"#
    );
    let p = Project::new("", &[("race", &job)]);
    let out = cranium(p.path(), &["pause", "race"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let store = p.store().await;
    let d = DaemonProc::start(&p, "daemon");
    wait_ready(&d, p.port).await;

    let dir = p.path().to_path_buf();
    let foreground = tokio::task::spawn_blocking(move || {
        cranium_blocking(&dir, &["run", "race", "--at", "2026-03-01"])
    });
    let trigger = cranium(p.path(), &["trigger", "race", "--at", "2026-03-01"]).await;
    assert_eq!(trigger.status.code(), Some(0), "{}", text(&trigger));
    let s = stdout(&trigger);
    let id: i64 = s
        .strip_prefix("request ")
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request id in: {s}"));
    let fg = foreground.await.expect("foreground thread");
    assert_eq!(fg.status.code(), Some(0), "{}", text(&fg));
    let req = wait_for(Duration::from_secs(30), || async {
        store
            .request(id)
            .await
            .expect("request")
            .filter(|r| r.state.is_final())
    })
    .await
    .unwrap_or_else(|| panic!("the triggered request did not end:\n{}", d.log()));
    assert_eq!(req.state, RequestState::Done, "{req:?}\n{}", d.log());

    let start = day("2026-03-01");
    let n: i64 = db
        .query_one(
            &format!("SELECT count(*) FROM {t} WHERE interval_start = $1"),
            &[&start],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 1, "the interval's step ran {n} times");
    let total: i64 = db
        .query_one(&format!("SELECT count(*) FROM {t}"), &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(total, 1);
    let a = attempts_of(&store, "race", start, "load").await;
    assert_eq!(a.len(), 1, "{a:#?}");
    assert_eq!(a[0].state, StepState::Success, "{a:#?}");
    assert_eq!(
        step_state(&store, "race", "load", start).await,
        Some(StepState::Success)
    );
    // Both runs for the interval (the daemon's and the foreground's) ended as successes.
    let runs = runs_of(&store, "race").await;
    assert!(!runs.is_empty() && runs.len() <= 2, "{runs:#?}");
    assert!(
        runs.iter().all(|r| r.state == RunState::Success),
        "{runs:#?}"
    );
    db.batch_execute(&format!("DROP TABLE {t}"))
        .await
        .expect("drop");
}

/// A PostgreSQL cluster of this test's own (`crstore`, port 5433, trust), created once with
/// Debian's `pg_createcluster`: a metadata store that can be stopped without stopping the
/// warehouse on 5432.
fn store_cluster(action: &str) {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("/etc/postgresql")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .max()
        .expect("a PostgreSQL version");
    if !Path::new(&format!("/etc/postgresql/{version}/crstore")).exists() {
        let out = Command::new("pg_createcluster")
            .args([&version, "crstore", "-p", "5433", "--", "-A", "trust"])
            .output()
            .expect("pg_createcluster");
        assert!(out.status.success(), "pg_createcluster: {}", text(&out));
    }
    let status = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "crstore", "status"])
        .output()
        .expect("pg_ctlcluster status");
    let running = status.status.success();
    if (action == "start") == running {
        return;
    }
    let mut args = vec!["--skip-systemctl-redirect", &version, "crstore", action];
    if action == "stop" {
        args.extend(["-m", "fast"]);
    }
    let out = Command::new("pg_ctlcluster")
        .args(&args)
        .output()
        .expect("pg_ctlcluster");
    assert!(
        out.status.success(),
        "pg_ctlcluster {action}: {}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stops a PostgreSQL cluster for 30 s: run by scripts/faults.sh"]
async fn the_metadata_store_stopped_for_30s_under_a_running_daemon() {
    store_cluster("start");
    let sfx = suffix();
    let state = format!("postgres://postgres@127.0.0.1:5433/postgres?schema=outage_{sfx}");
    let t = format!("dcli_outage_{sfx}");
    let db = pg().await;
    db.batch_execute(&format!("CREATE TABLE {t} (step text NOT NULL)"))
        .await
        .expect("create table");
    let job = format!(
        r#"job: o
schedule: "@daily"
catchup: false
start: 2026-11-01
steps:
  - id: a
    kind: sql
    connection: warehouse
    retries: 0
    query: |
      INSERT INTO {t} (step) VALUES ('a');
      SELECT pg_sleep(12);
  - id: b
    kind: sql
    after: [a]
    connection: warehouse
    query: INSERT INTO {t} (step) VALUES ('b')
"#
    );
    let p = Project::new("", &[("o", &job)]);
    let yaml = std::fs::read_to_string(p.path().join("cranium.yaml"))
        .expect("cranium.yaml")
        .replace(&format!("state: {STATE}"), &format!("state: {state}"));
    std::fs::write(
        p.path().join("cranium.yaml"),
        format!(
            "{yaml}alerts:\n  sink:\n    kind: command\n    command: [sh, -c, \"cat >> alerts.jsonl; echo >> alerts.jsonl\"]\n"
        ),
    )
    .expect("cranium.yaml");
    let store = Store::open(&state, p.path()).await.expect("the store");
    let d = DaemonProc::start(&p, "daemon");
    wait_ready(&d, p.port).await;
    let run = wait_step_running(&store, &d, "o", "a").await;

    store_cluster("stop");
    let stopped = Instant::now();
    // The daemon notices: not ready (with the reason), an alert, and its loop still ticks.
    let (code, body) = wait_for(Duration::from_secs(20), || async {
        get(p.port, "/readyz").await.ok().filter(|(c, _)| *c == 503)
    })
    .await
    .unwrap_or_else(|| panic!("/readyz stayed 200 with the store down:\n{}", d.log()));
    assert_eq!(code, 503);
    assert!(body.contains("not ready"), "{body}");
    let alerts = p.path().join("alerts.jsonl");
    wait_for(Duration::from_secs(20), || async {
        std::fs::read_to_string(&alerts)
            .ok()
            .filter(|a| a.contains("store_unreachable"))
    })
    .await
    .unwrap_or_else(|| panic!("no store_unreachable alert:\n{}", d.log()));
    assert_eq!(get(p.port, "/livez").await.expect("livez").0, 200);
    // The step it had goes on: it commits its work in the warehouse while the store is away.
    wait_for(Duration::from_secs(25), || async {
        let n: i64 = db
            .query_one(&format!("SELECT count(*) FROM {t} WHERE step = 'a'"), &[])
            .await
            .ok()?
            .get(0);
        (n == 1).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("step a did not commit during the outage:\n{}", d.log()));
    assert!(
        stopped.elapsed() < Duration::from_secs(30),
        "still within the outage"
    );

    tokio::time::sleep(Duration::from_secs(30).saturating_sub(stopped.elapsed())).await;
    store_cluster("start");

    // The step ran on meanwhile; once the store is back its records are written, and the run goes on.
    let store = Store::open(&state, p.path())
        .await
        .expect("the store again");
    let done = wait_for(Duration::from_secs(90), || async {
        store
            .run(run.id)
            .await
            .ok()
            .flatten()
            .filter(|r| r.state == RunState::Success)
    })
    .await
    .unwrap_or_else(|| panic!("the run did not succeed after the outage:\n{}", d.log()));
    assert!(done.ended_at.is_some());
    let a = attempts_of(&store, "o", run.interval.start, "a").await;
    assert_eq!(a.len(), 1, "one attempt, not retried: {a:?}\n{}", d.log());
    assert_eq!(a[0].state, StepState::Success, "{a:?}");
    assert!(
        a[0].ended_at.is_some() && a[0].duration_ms.unwrap_or(0) >= 12_000,
        "{a:?}"
    );
    assert!(
        d.log().contains("recorded the end of an attempt after"),
        "its end was recorded by retrying: {}",
        d.log()
    );
    let b = attempts_of(&store, "o", run.interval.start, "b").await;
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(b[0].state, StepState::Success);
    for step in ["a", "b"] {
        assert_eq!(
            step_state(&store, "o", step, run.interval.start).await,
            Some(StepState::Success)
        );
    }
    let rows: Vec<String> = db
        .query(&format!("SELECT step FROM {t} ORDER BY step"), &[])
        .await
        .expect("rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rows, ["a", "b"], "each step's work once");
    wait_for(Duration::from_secs(20), || async {
        get(p.port, "/readyz").await.ok().filter(|(c, _)| *c == 200)
    })
    .await
    .unwrap_or_else(|| panic!("/readyz did not recover:\n{}", d.log()));
    let sent = std::fs::read_to_string(&alerts).unwrap_or_default();
    assert!(sent.contains("reachable again"), "{sent}");
    drop(d);
    db.batch_execute(&format!("DROP TABLE {t}"))
        .await
        .expect("drop");
}
