//! Alerts against real listeners: an HTTP server on loopback (webhook, Slack format, a
//! PagerDuty-style template), a command channel, throttling and `resolved`, a channel that is down
//! and comes back, queued alerts surviving a restart, SLA misses and refused reloads raised by the
//! daemon, and `cranium alerts` / `cranium alerts test`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use cranium::alerts::deliver;
use cranium::check::check;
use cranium::config::interp::Env;
use cranium::daemon::clock::ManualClock;
use cranium::daemon::{Daemon, DaemonOptions};
use cranium::engine::logs::LogFormat;
use cranium::engine::{Engine, RunOptions};
use cranium::schedule::{parse_time, Interval, Tz};
use cranium::store::{AlertState, Store};
use tokio_util::sync::CancellationToken;

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";

/// What the listener received: (path, authorization header, body).
type Seen = Arc<Mutex<Vec<(String, String, serde_json::Value)>>>;

#[derive(Clone)]
struct Listener {
    seen: Seen,
    /// Answer 503 while true.
    down: Arc<Mutex<bool>>,
}

async fn receive(
    State(l): State<Listener>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    if *l.down.lock().expect("lock") {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let mut auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    // A header that only an injection could have added.
    if headers.contains_key("x-injected") {
        auth.push_str(" [x-injected]");
    }
    let v = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    l.seen
        .lock()
        .expect("lock")
        .push((uri.path().to_string(), auth, v));
    StatusCode::OK
}

/// A webhook receiver on a free loopback port.
async fn listener() -> (u16, Listener) {
    let l = Listener {
        seen: Arc::default(),
        down: Arc::new(Mutex::new(false)),
    };
    let app = axum::Router::new()
        .route("/{*path}", post(receive))
        .with_state(l.clone());
    let sock = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = sock.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let _ = axum::serve(sock, app).await;
    });
    (port, l)
}

fn seen(l: &Listener, path: &str) -> Vec<serde_json::Value> {
    l.seen
        .lock()
        .expect("lock")
        .iter()
        .filter(|(p, _, _)| p == path)
        .map(|(_, _, b)| b.clone())
        .collect()
}

fn suffix() -> String {
    format!("{}_{}", std::process::id(), rand::random::<u32>())
}

/// A project with three webhook channels on `port` and a command channel, and `jobs`.
fn project(dir: &Path, port: u16, extra: &str, jobs: &[(&str, &str)]) {
    let cmd_out = dir.join("command_alerts.jsonl");
    std::fs::write(
        dir.join("alert.sh"),
        format!(
            "#!/bin/sh\n{{ cat; echo; }} >> {out}\necho \"$CRANIUM_ALERT_EVENT $CRANIUM_ALERT_JOB $CRANIUM_ALERT_STEP\" >> {out}.env\n",
            out = cmd_out.display()
        ),
    )
    .expect("alert.sh");
    std::process::Command::new("chmod")
        .args(["+x", &dir.join("alert.sh").display().to_string()])
        .status()
        .expect("chmod");
    std::fs::write(
        dir.join("cranium.yaml"),
        format!(
            r#"name: alerting
state: sqlite://.cranium/state.db
daemon:
  listen: "off"
connections:
  pg:
    kind: postgres
    url: {PG}
alerts:
  hook:
    kind: webhook
    url: http://127.0.0.1:{port}/hook
    headers:
      Authorization: "Bearer ${{HOOK_TOKEN:-s3cr3t-token}}"
    repeat_interval: 5s
  slack:
    kind: webhook
    url: http://127.0.0.1:{port}/slack
    format: slack
    events: [step_failed, resolved, reload_refused, sla_missed]
  pager:
    kind: webhook
    url: http://127.0.0.1:{port}/pager
    template: '{{"routing_key": "abc", "event_action": "trigger", "dedup_key": "{{{{ alert.job }}}}-{{{{ alert.step }}}}", "payload": {{"summary": {{{{ alert.summary | tojson }}}}, "severity": "error", "source": "cranium"}}}}'
    events: [step_failed]
  script:
    kind: command
    command: [./alert.sh]
{extra}"#
        ),
    )
    .expect("cranium.yaml");
    std::fs::create_dir_all(dir.join("jobs")).expect("jobs");
    for (name, text) in jobs {
        std::fs::write(dir.join("jobs").join(format!("{name}.yaml")), text).expect("job");
    }
}

fn day(d: &str) -> Interval {
    let s = parse_time(d, Tz::UTC).expect("date");
    Interval {
        start: s,
        end: s + chrono::Duration::days(1),
    }
}

async fn engine(dir: &Path) -> Engine {
    let c = check(dir, &Env::default()).expect("project loads");
    assert!(
        !c.diagnostics.has_errors(),
        "{}",
        c.diagnostics.render(&c.project.redactor)
    );
    let store = Store::open("sqlite://.cranium/state.db", dir)
        .await
        .expect("store");
    let mut e = Engine::new(c.project.clone(), c.graph.clone(), store.clone());
    e.notifier = Some(cranium::alerts::Notifier::new(c.project.clone(), store));
    e
}

async fn pg(sql: &str) {
    let (client, conn) = tokio_postgres::connect(PG, tokio_postgres::NoTls)
        .await
        .expect("connect pg");
    tokio::spawn(conn);
    client.batch_execute(sql).await.expect("sql");
}

fn job_reading(table: &str) -> String {
    format!(
        "job: load\nschedule: \"@daily\"\nstart: 2026-03-01\nalerts: [hook, slack, pager, script]\nsteps:\n  - id: count\n    kind: sql\n    connection: pg\n    query: SELECT count(*) FROM public.{table}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_reaches_every_channel_once_then_resolves() {
    let (port, l) = listener().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let table = format!("alert_src_{}", suffix());
    project(dir.path(), port, "", &[("load", &job_reading(&table))]);
    let eng = engine(dir.path()).await;
    let opts = RunOptions::default();

    // The table does not exist: the step fails (not retried), the run fails.
    let r = eng
        .run_interval("load", day("2026-03-01"), &opts, CancellationToken::new())
        .await
        .expect("run");
    assert!(!r.succeeded());
    deliver::drain(&eng.project, &eng.store, Duration::from_secs(20)).await;
    let hook = seen(&l, "/hook");
    let events: Vec<&str> = hook
        .iter()
        .map(|b| b["event"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(events, vec!["step_failed", "run_failed"], "{hook:#?}");
    let failed = &hook[0];
    assert_eq!(failed["job"], "load");
    assert_eq!(failed["step"], "count");
    assert_eq!(failed["project"], "alerting");
    assert_eq!(failed["attempt"], 1);
    assert_eq!(failed["suppressed"], 0);
    assert!(
        failed["summary"]
            .as_str()
            .unwrap_or("")
            .contains("load.count failed"),
        "{failed}"
    );
    assert!(
        failed["details"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("does not exist"),
        "{failed}"
    );
    assert!(
        failed["link"]
            .as_str()
            .unwrap_or("")
            .contains("attempt-1.log"),
        "{failed}"
    );
    // The header's secret went to the server and nowhere else.
    let auth: Vec<String> = l
        .seen
        .lock()
        .expect("lock")
        .iter()
        .filter(|(p, _, _)| p == "/hook")
        .map(|(_, a, _)| a.clone())
        .collect();
    assert_eq!(auth[0], "Bearer s3cr3t-token");
    // Slack: blocks; only the events it takes.
    let slack = seen(&l, "/slack");
    assert_eq!(
        slack.len(),
        1,
        "{slack:#?}\n{:#?}",
        eng.store.alerts(None, 0).await.expect("alerts")
    );
    assert_eq!(slack[0]["blocks"][0]["type"], "header");
    assert!(slack[0]["text"]
        .as_str()
        .unwrap_or("")
        .contains("load.count failed"));
    // The template: a PagerDuty Events v2 body.
    let pager = seen(&l, "/pager");
    assert_eq!(
        pager.len(),
        1,
        "{:#?}",
        eng.store
            .alerts(None, 0)
            .await
            .expect("alerts")
            .iter()
            .filter(|a| a.channel == "pager")
            .collect::<Vec<_>>()
    );
    assert_eq!(pager[0]["dedup_key"], "load-count");
    assert_eq!(pager[0]["payload"]["severity"], "error");
    // The command got the JSON on stdin and the variables.
    let env = std::fs::read_to_string(dir.path().join("command_alerts.jsonl.env")).expect("env");
    assert!(env.contains("step_failed load count"), "{env}");
    let lines = std::fs::read_to_string(dir.path().join("command_alerts.jsonl")).expect("stdin");
    assert!(
        lines
            .lines()
            .any(|l| l.contains("\"event\":\"step_failed\"")),
        "{lines}"
    );

    // The next failure within repeat_interval (5s) is held back on `hook`...
    let r = eng
        .run_interval("load", day("2026-03-02"), &opts, CancellationToken::new())
        .await
        .expect("run");
    assert!(!r.succeeded());
    deliver::drain(&eng.project, &eng.store, Duration::from_secs(20)).await;
    assert_eq!(seen(&l, "/hook").len(), 2, "throttled");
    let held = eng.store.alerts(Some("load"), 0).await.expect("alerts");
    assert!(held
        .iter()
        .any(|a| a.channel == "hook" && a.state == AlertState::Suppressed));
    // ... and the one after it says how many were.
    tokio::time::sleep(Duration::from_millis(5200)).await;
    let r = eng
        .run_interval("load", day("2026-03-03"), &opts, CancellationToken::new())
        .await
        .expect("run");
    assert!(!r.succeeded());
    deliver::drain(&eng.project, &eng.store, Duration::from_secs(20)).await;
    let hook = seen(&l, "/hook");
    let last_failed = hook
        .iter()
        .rev()
        .find(|b| b["event"] == "step_failed")
        .expect("step_failed");
    assert_eq!(last_failed["suppressed"], 1, "{hook:#?}");

    // The table appears: the step succeeds, `resolved` goes to the channels that were told, and
    // the job's recovery is announced.
    pg(&format!("CREATE TABLE public.{table} (id int)")).await;
    let r = eng
        .run_interval("load", day("2026-03-04"), &opts, CancellationToken::new())
        .await
        .expect("run");
    assert!(r.succeeded());
    deliver::drain(&eng.project, &eng.store, Duration::from_secs(20)).await;
    let hook = seen(&l, "/hook");
    assert!(
        hook.iter()
            .any(|b| b["event"] == "resolved" && b["step"] == "count"),
        "{hook:#?}"
    );
    assert!(
        hook.iter().any(|b| b["event"] == "run_recovered"),
        "{hook:#?}"
    );
    assert!(seen(&l, "/slack")
        .iter()
        .any(|b| b["text"].as_str().unwrap_or("").contains("succeeded again")));
    // `resolved` only once: a second success says nothing more.
    let before = seen(&l, "/hook").len();
    let r = eng
        .run_interval("load", day("2026-03-05"), &opts, CancellationToken::new())
        .await
        .expect("run");
    assert!(r.succeeded());
    deliver::drain(&eng.project, &eng.store, Duration::from_secs(20)).await;
    assert_eq!(seen(&l, "/hook").len(), before);
    // Every send was recorded; none shows the token.
    let all = eng.store.alerts(None, 0).await.expect("alerts");
    assert!(all
        .iter()
        .all(|a| !format!("{a:?}").contains("s3cr3t-token")));
    pg(&format!("DROP TABLE public.{table}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_that_is_down_gets_its_alerts_late_and_a_restart_loses_none() {
    let (port, l) = listener().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let table = format!("alert_none_{}", suffix());
    project(dir.path(), port, "", &[("load", &job_reading(&table))]);
    *l.down.lock().expect("lock") = true;
    {
        let eng = engine(dir.path()).await;
        let r = eng
            .run_interval(
                "load",
                day("2026-03-01"),
                &RunOptions::default(),
                CancellationToken::new(),
            )
            .await
            .expect("run");
        assert!(!r.succeeded());
        deliver::drain(&eng.project, &eng.store, Duration::from_secs(10)).await;
        let queued = eng.store.alerts(None, 0).await.expect("alerts");
        let hook: Vec<_> = queued.iter().filter(|a| a.channel == "hook").collect();
        assert!(
            hook.iter()
                .all(|a| a.state == AlertState::Queued && a.tries == 1),
            "{hook:#?}"
        );
        assert!(
            hook[0].last_error.as_deref().unwrap_or("").contains("503"),
            "{hook:#?}"
        );
        assert!(!hook[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("s3cr3t"));
    }
    // The process is gone; the channel comes back; a new process (the daemon) sends the queue
    // once the backoff (5 s after the first try) has passed.
    *l.down.lock().expect("lock") = false;
    assert!(seen(&l, "/hook").is_empty());
    let eng = engine(dir.path()).await;
    let until = std::time::Instant::now() + Duration::from_secs(15);
    while seen(&l, "/hook").len() < 2 && std::time::Instant::now() < until {
        deliver::deliver_due(&eng.project, &eng.store)
            .await
            .expect("deliver");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let hook = seen(&l, "/hook");
    assert_eq!(hook.len(), 2, "every queued alert arrives: {hook:#?}");
    let sent = eng.store.alerts(None, 0).await.expect("alerts");
    assert!(sent
        .iter()
        .filter(|a| a.channel == "hook")
        .all(|a| a.state == AlertState::Sent && a.tries == 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_raises_sla_misses_once_and_refused_reloads() {
    let (port, l) = listener().await;
    let dir = tempfile::tempdir().expect("tempdir");
    project(
        dir.path(),
        port,
        "",
        &[(
            "h",
            "job: h\nschedule: \"@hourly\"\nstart: 2026-03-01\nsla: 10m\nalerts: [slack]\nsteps:\n  - id: a\n    kind: noop\n",
        )],
    );
    // The daemon was down: at 10:45 the 09:00-10:00 interval (due by 10:10) has not succeeded.
    let clock = Arc::new(ManualClock::new(
        parse_time("2026-03-01T10:45:00Z", Tz::UTC).expect("t"),
    ));
    let mut d = Daemon::start(DaemonOptions {
        root: dir.path().to_path_buf(),
        env: Env::default(),
        clock: clock.clone(),
        log_format: LogFormat::Text,
        serve_health: false,
        listen: None,
        id: None,
    })
    .await
    .expect("daemon");
    d.settle().await;
    d.check_slas().await.expect("sla");
    let store = d.store().clone();
    let project = check(dir.path(), &Env::default()).expect("check").project;
    deliver::drain(&project, &store, Duration::from_secs(10)).await;
    let slack = seen(&l, "/slack");
    let sla: Vec<_> = slack
        .iter()
        .filter(|b| {
            b["text"]
                .as_str()
                .unwrap_or("")
                .contains("has not succeeded")
        })
        .collect();
    assert_eq!(sla.len(), 1, "{slack:#?}");
    assert!(
        sla[0]["text"]
            .as_str()
            .unwrap_or("")
            .contains("2026-03-01 09:00"),
        "{sla:?}"
    );
    // Once per interval.
    d.check_slas().await.expect("sla");
    deliver::drain(&project, &store, Duration::from_secs(10)).await;
    assert_eq!(seen(&l, "/slack").len(), slack.len());

    // A broken edit: refused, and said.
    std::fs::write(
        dir.path().join("jobs/h.yaml"),
        "job: h\nschedule: \"@hourly\"\nstart: 2026-03-01\nsteps:\n  - id: a\n    kind: noop\n    colour: red\n",
    )
    .expect("write");
    assert!(!d.maybe_reload().await);
    deliver::drain(&project, &store, Duration::from_secs(10)).await;
    let refused: Vec<_> = seen(&l, "/slack")
        .into_iter()
        .filter(|b| b["text"].as_str().unwrap_or("").contains("reload refused"))
        .collect();
    assert_eq!(refused.len(), 1);
    assert!(
        refused[0]["text"]
            .as_str()
            .unwrap_or("")
            .contains("jobs/h.yaml:7:5"),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cranium_alerts_lists_them_and_alerts_test_sends_one() {
    let (port, l) = listener().await;
    let dir = tempfile::tempdir().expect("tempdir");
    project(dir.path(), port, "", &[]);
    let bin = env!("CARGO_BIN_EXE_cranium");
    let out = std::process::Command::new(bin)
        .args([
            "--project",
            &dir.path().display().to_string(),
            "alerts",
            "test",
            "hook",
        ])
        .output()
        .expect("alerts test");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("sent a test alert to 'hook'"));
    let hook = seen(&l, "/hook");
    assert_eq!(hook.len(), 1);
    assert_eq!(hook[0]["event"], "test");
    let out = std::process::Command::new(bin)
        .args(["--project", &dir.path().display().to_string(), "alerts"])
        .output()
        .expect("alerts");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("hook") && listing.contains("sent") && listing.contains("test"),
        "{listing}"
    );
    // A channel that does not answer: exit 1, the error named, the secret not.
    *l.down.lock().expect("lock") = true;
    let out = std::process::Command::new(bin)
        .args([
            "--project",
            &dir.path().display().to_string(),
            "alerts",
            "test",
            "hook",
        ])
        .output()
        .expect("alerts test");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("503"), "{err}");
    assert!(!err.contains("s3cr3t"), "{err}");
    let out = std::process::Command::new(bin)
        .args([
            "--project",
            &dir.path().display().to_string(),
            "alerts",
            "test",
            "hok",
        ])
        .output()
        .expect("alerts test");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did you mean 'hook'"));
}

/// A real SMTP server (Python's aiosmtpd, printing what it receives) gets the alert as an
/// e-mail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_channel_sends_through_a_real_smtp_server() {
    let (port, _l) = listener().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp_port = {
        let s = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        s.local_addr().expect("addr").port()
    };
    let log = dir.path().join("smtp.log");
    let mut smtp = std::process::Command::new("python3")
        .args([
            "-m",
            "aiosmtpd",
            "-n",
            "-c",
            "aiosmtpd.handlers.Debugging",
            "-l",
            &format!("127.0.0.1:{smtp_port}"),
        ])
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("aiosmtpd must be installed (pip install aiosmtpd; scripts/test.sh installs it)");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    assert!(
        smtp.try_wait().expect("aiosmtpd").is_none(),
        "aiosmtpd exited at once"
    );
    let _guard = Kill(smtp);
    // Wait until it listens.
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", smtp_port)).is_err() {
        assert!(std::time::Instant::now() < until, "aiosmtpd did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    project(
        dir.path(),
        port,
        &format!(
            "  mail:\n    kind: email\n    smtp_host: 127.0.0.1\n    smtp_port: {smtp_port}\n    tls: none\n    from: \"cranium <etl@example.com>\"\n    to: [oncall@example.com, data@example.com]\n"
        ),
        &[],
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cranium"))
        .args([
            "--project",
            &dir.path().display().to_string(),
            "alerts",
            "test",
            "mail",
        ])
        .output()
        .expect("alerts test");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let mut text = String::new();
    while std::time::Instant::now() < until {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("oncall@example.com") && text.contains("test alert") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        text.contains("Subject: [cranium alerting] test: test alert"),
        "{text}"
    );
    assert!(
        text.contains("oncall@example.com") && text.contains("data@example.com"),
        "{text}"
    );
    assert!(text.contains("etl@example.com"), "{text}");
}

/// A TCP forwarder to the local PostgreSQL that a test can stop and start again (on the same
/// port), to make a server "go away" without touching the real one.
struct Proxy {
    port: u16,
    accept: Mutex<Option<tokio::task::JoinHandle<()>>>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(port: u16) -> Proxy {
        let sock = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind proxy");
        let port = sock.local_addr().expect("addr").port();
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let c2 = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = sock.accept().await {
                let h = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect("127.0.0.1:5432").await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                c2.lock().expect("lock").push(h.abort_handle());
            }
        });
        Proxy {
            port,
            accept: Mutex::new(Some(accept)),
            conns,
        }
    }

    /// Closes the listening socket (waiting until it is closed) and every forwarded connection.
    async fn stop(&self) {
        let accept = self.accept.lock().expect("lock").take();
        if let Some(a) = accept {
            a.abort();
            let _ = a.await;
        }
        for c in self.conns.lock().expect("lock").drain(..) {
            c.abort();
        }
        // Let the aborted connections close.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_and_connection_outages_are_said_and_so_is_their_end() {
    let (port, l) = listener().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store_proxy = Proxy::start(0).await;
    let conn_proxy = Proxy::start(0).await;
    project(dir.path(), port, "", &[]);
    // The store and a connection, each through its own proxy.
    let yaml = std::fs::read_to_string(dir.path().join("cranium.yaml")).expect("yaml");
    let yaml = yaml
        .replace(
            "state: sqlite://.cranium/state.db",
            &format!(
                "state: postgres://postgres@127.0.0.1:{}/test?schema=cranium_outage_{}",
                store_proxy.port,
                suffix()
            ),
        )
        .replace(
            &format!("    url: {PG}\n"),
            &format!(
                "    url: postgres://postgres@127.0.0.1:{}/test\n    connect_timeout: 2s\n",
                conn_proxy.port
            ),
        );
    std::fs::write(dir.path().join("cranium.yaml"), yaml).expect("yaml");
    let clock = Arc::new(ManualClock::new(
        parse_time("2026-03-01T10:05:00Z", Tz::UTC).expect("t"),
    ));
    let mut d = Daemon::start(DaemonOptions {
        root: dir.path().to_path_buf(),
        env: Env::default(),
        clock,
        log_format: LogFormat::Text,
        serve_health: false,
        listen: None,
        id: None,
    })
    .await
    .expect("daemon");
    let project = check(dir.path(), &Env::default()).expect("check").project;
    let store = d.store().clone();
    d.probe_connections().await;
    d.housekeeping().await;
    assert!(d.shared.get().store_ok);

    // The connection goes away, and comes back.
    conn_proxy.stop().await;
    d.probe_connections().await;
    deliver::drain(&project, &store, Duration::from_secs(10)).await;
    let hook = seen(&l, "/hook");
    let down: Vec<_> = hook
        .iter()
        .filter(|b| b["event"] == "connection_unreachable")
        .collect();
    assert_eq!(down.len(), 1, "{hook:#?}");
    assert_eq!(down[0]["details"]["connection"], "pg");
    d.probe_connections().await; // still down: said once
    let conn_proxy = Proxy::start(conn_proxy.port).await;
    d.probe_connections().await;
    deliver::drain(&project, &store, Duration::from_secs(10)).await;
    let hook = seen(&l, "/hook");
    assert_eq!(
        hook.iter()
            .filter(|b| b["event"] == "connection_unreachable")
            .count(),
        1
    );
    assert!(
        hook.iter()
            .any(|b| b["event"] == "resolved"
                && b["details"]["resolves"] == "connection_unreachable"),
        "{hook:#?}"
    );

    // The store goes away: said at once, without the queue; and when it is back.
    store_proxy.stop().await;
    d.housekeeping().await;
    assert!(!d.shared.get().store_ok);
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !seen(&l, "/hook")
        .iter()
        .any(|b| b["event"] == "store_unreachable")
    {
        assert!(
            std::time::Instant::now() < until,
            "no store_unreachable: {:#?}",
            seen(&l, "/hook")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    d.housekeeping().await; // still down: said once
    let _store_proxy = Proxy::start(store_proxy.port).await;
    d.housekeeping().await;
    assert!(d.shared.get().store_ok, "{:?}", d.shared.get().store_error);
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !seen(&l, "/hook")
        .iter()
        .any(|b| b["event"] == "resolved" && b["details"]["resolves"] == "store_unreachable")
    {
        assert!(
            std::time::Instant::now() < until,
            "no resolved: {:#?}",
            seen(&l, "/hook")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        seen(&l, "/hook")
            .iter()
            .filter(|b| b["event"] == "store_unreachable")
            .count(),
        1
    );
    drop(conn_proxy);
}

/// Hostile text in what an alert carries (a failed step's error with shell metacharacters and a
/// CRLF header line) changes nothing: the command channel gets it as data (no shell runs it), the
/// webhook as an escaped JSON string (no header is added); and a header value with a CRLF from the
/// environment is refused before any request is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_alert_text_changes_nothing_that_runs_or_is_sent() {
    let (port, l) = listener().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pwned = dir.path().join("pwned");
    let hostile = format!(
        "$(touch {p}) `touch {p}2`; touch {p}3 | touch {p}4 && touch {p}5\r\nX-Injected: yes",
        p = pwned.display()
    );
    let lua_error = hostile.replace('\\', "\\\\").replace('"', "\\\"");
    project(
        dir.path(),
        port,
        "",
        &[(
            "evil",
            &format!(
                "job: evil\nschedule: \"@daily\"\nstart: 2026-03-01\nalerts: [hook, script]\nsteps:\n  - id: boom\n    kind: lua\n    retries: 0\n    code: 'error(\"{}\", 0)'\n",
                lua_error.replace('\r', "\\r").replace('\n', "\\n").replace('\'', "''")
            ),
        )],
    );
    let eng = engine(dir.path()).await;
    let r = eng
        .run_interval(
            "evil",
            day("2026-03-01"),
            &RunOptions::default(),
            CancellationToken::new(),
        )
        .await
        .expect("run");
    assert!(!r.succeeded());
    deliver::drain(&eng.project, &eng.store, Duration::from_secs(20)).await;
    for suffix in ["", "2", "3", "4", "5"] {
        let f = format!("{}{suffix}", pwned.display());
        assert!(
            !Path::new(&f).exists(),
            "{f} exists: a shell ran the alert's text"
        );
    }
    // The command got the text verbatim, as data.
    let got =
        std::fs::read_to_string(dir.path().join("command_alerts.jsonl")).expect("command ran");
    assert!(got.contains("touch"), "{got}");
    let first: serde_json::Value =
        serde_json::from_str(got.lines().next().expect("a line")).expect("json on stdin");
    assert!(
        first["details"]["error"]
            .as_str()
            .unwrap_or("")
            .contains(&hostile),
        "{first}"
    );
    // The webhook: the text in the JSON body, no header added.
    let hook = seen(&l, "/hook");
    assert!(!hook.is_empty());
    assert!(hook[0]["details"]["error"]
        .as_str()
        .unwrap_or("")
        .contains(&hostile));
    let auths: Vec<String> = l
        .seen
        .lock()
        .expect("lock")
        .iter()
        .map(|(_, a, _)| a.clone())
        .collect();
    assert!(auths.iter().all(|a| !a.contains("x-injected")), "{auths:?}");

    // A header value with a CRLF (from the environment) is refused, and nothing is sent.
    let dir2 = tempfile::tempdir().expect("tempdir");
    project(
        dir2.path(),
        port,
        "",
        &[("evil", &job_reading(&format!("missing_{}", suffix())))],
    );
    let c = check(
        dir2.path(),
        &Env::from_pairs([("HOOK_TOKEN", "t\r\nX-Injected: yes")]),
    )
    .expect("loads");
    let store = Store::open("sqlite://.cranium/state.db", dir2.path())
        .await
        .expect("store");
    let mut e2 = Engine::new(c.project.clone(), c.graph.clone(), store.clone());
    e2.notifier = Some(cranium::alerts::Notifier::new(c.project.clone(), store));
    let before = l.seen.lock().expect("lock").len();
    let r = e2
        .run_interval(
            "load",
            day("2026-03-01"),
            &RunOptions::default(),
            CancellationToken::new(),
        )
        .await
        .expect("run");
    assert!(!r.succeeded());
    deliver::drain(&e2.project, &e2.store, Duration::from_secs(20)).await;
    let hook_after: Vec<String> = l.seen.lock().expect("lock")[before..]
        .iter()
        .filter(|(p, _, _)| p == "/hook")
        .map(|(_, a, _)| a.clone())
        .collect();
    assert!(
        hook_after.is_empty(),
        "no request with the bad header was sent: {hook_after:?}"
    );
    let alerts = e2.store.alerts(None, 0).await.expect("alerts");
    let hook_alert = alerts
        .iter()
        .find(|a| a.channel == "hook")
        .expect("a hook alert");
    assert!(
        hook_alert
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("bad request"),
        "{hook_alert:?}"
    );
}
