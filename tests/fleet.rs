//! Several `cranium daemon` processes on one PostgreSQL metadata store, with real faults: one
//! frozen with SIGSTOP past its leases' time to live and resumed, one SIGKILLed in the middle of
//! its steps. Every step's effect is a row in a PostgreSQL table, so "exactly once" is counted
//! where it matters, not only in the store.
//!
//! The faults are aimed at the moment a daemon's steps are inside their transaction (each step
//! sleeps 0.4 s on the server before its INSERT, and the fault comes while every lease the
//! victim holds is younger than 0.2 s): that is the case the store's fencing tokens and the
//! pre-commit lease check exist for. (A fault between a step's COMMIT and the store recording it
//! is the one case no orchestrator can fence from outside the target; steps are written to be
//! idempotent per interval for it, see the README.)

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DurationRound, SecondsFormat, TimeDelta, Utc};

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";
const BIN: &str = env!("CARGO_BIN_EXE_cranium");
const INTERVALS: i64 = 60;
const STEPS: [&str; 3] = ["s1", "s2", "s3"];

async fn pg() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(PG, tokio_postgres::NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(conn);
    client
}

fn kill(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A daemon child; SIGKILLed (after a SIGCONT) and reaped on drop.
struct Daemon {
    child: Child,
    id: String,
    log: PathBuf,
}

impl Daemon {
    fn start(root: &Path, id: &str) -> Daemon {
        let log = root.join(format!("{id}.log"));
        let file = File::create(&log).expect("log file");
        let child = Command::new(BIN)
            .args(["daemon", "--id", id])
            .current_dir(root)
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().expect("clone log")))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("spawn cranium daemon");
        Daemon {
            child,
            id: id.to_string(),
            log,
        }
    }

    fn signal(&self, sig: &str) {
        kill(self.child.id(), sig);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_exit(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{} did not exit within {within:?}:\n{}",
            self.id,
            self.log()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            kill(self.child.id(), "CONT");
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Waits until every lease `owner` holds is younger than 200 ms (and it holds one): its steps
/// are then all inside their 0.4 s server-side sleep, before their COMMIT.
async fn wait_mid_step(db: &tokio_postgres::Client, schema: &str, owner: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let sql = format!(
        "SELECT count(*), count(*) FILTER (WHERE now() - acquired_at > interval '200 ms') \
         FROM {schema}.step_leases WHERE owner = $1"
    );
    while Instant::now() < deadline {
        // Until the first daemon created the store's schema, there is nothing to read.
        if let Ok(row) = db.query_one(&sql, &[&owner]).await {
            let (all, old): (i64, i64) = (row.get(0), row.get(1));
            if all > 0 && old == 0 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{owner} never held only young leases");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_survive_a_freeze_and_a_kill_and_run_every_step_once() {
    let tag = format!("{}_{}", std::process::id(), rand::random::<u32>());
    let (schema, table) = (format!("fleet_{tag}"), format!("fleet_effects_{tag}"));
    let db = pg().await;
    db.batch_execute(&format!(
        "CREATE TABLE {table} (interval_start timestamptz NOT NULL, step text NOT NULL)"
    ))
    .await
    .expect("create table");

    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::write(
        root.join("cranium.yaml"),
        format!(
            "name: fleet\nstate: {PG}?schema={schema}\nconnections:\n  warehouse:\n    kind: postgres\n    url: {PG}\n\
             daemon:\n  listen: off\n  max_running_steps: 4\n  lease_ttl: 3s\n  shutdown_grace: 10s\n"
        ),
    )
    .expect("cranium.yaml");
    // A fixed set of past minutes, caught up oldest first.
    let end = Utc::now()
        .duration_trunc(TimeDelta::minutes(1))
        .expect("minute");
    let start = end - TimeDelta::minutes(INTERVALS);
    let mut job = format!(
        "job: chaos\nschedule: \"* * * * *\"\ncatchup: true\nmax_active_runs: 4\nstart: \"{}\"\nend: \"{}\"\nsteps:\n",
        start.to_rfc3339_opts(SecondsFormat::Secs, true),
        end.to_rfc3339_opts(SecondsFormat::Secs, true),
    );
    for (i, s) in STEPS.iter().enumerate() {
        let after = if i == 0 {
            String::new()
        } else {
            format!("    after: [{}]\n", STEPS[i - 1])
        };
        job.push_str(&format!(
            "  - id: {s}\n    kind: sql\n    connection: warehouse\n{after}    query: |\n      SELECT pg_sleep(0.4);\n      INSERT INTO {table} (interval_start, step) VALUES ({{{{ interval_start | sql_literal }}}}, '{s}');\n"
        ));
    }
    std::fs::create_dir_all(root.join("jobs")).expect("jobs/");
    std::fs::write(root.join("jobs/chaos.yaml"), job).expect("job file");

    let mut d1 = Daemon::start(root, "d1");
    let mut d2 = Daemon::start(root, "d2");
    let d3 = Daemon::start(root, "d3");

    // Kill d3 in the middle of its steps.
    wait_mid_step(&db, &schema, "daemon:d3").await;
    d3.signal("KILL");

    // Freeze d2 in the middle of its steps, past the 3 s lease and the 6 s run heartbeat.
    wait_mid_step(&db, &schema, "daemon:d2").await;
    d2.signal("STOP");
    tokio::time::sleep(Duration::from_secs(10)).await;
    d2.signal("CONT");

    // Every step of every interval succeeds.
    let expected = INTERVALS * STEPS.len() as i64;
    let deadline = Instant::now() + Duration::from_secs(150);
    let done_sql = format!(
        "SELECT count(*) FROM {schema}.step_intervals WHERE job = 'chaos' AND state = 'success'"
    );
    loop {
        let done: i64 = db.query_one(&done_sql, &[]).await.expect("count").get(0);
        if done == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{done}/{expected} steps succeeded in time\n--- d1 ---\n{}\n--- d2 ---\n{}",
            d1.log(),
            d2.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    d1.signal("TERM");
    d2.signal("TERM");
    d1.wait_exit(Duration::from_secs(30)).await;
    d2.wait_exit(Duration::from_secs(30)).await;

    // Counted in the warehouse: each step of each interval applied exactly once.
    let rows = db
        .query(
            &format!(
                "SELECT interval_start, step, count(*) FROM {table} GROUP BY 1, 2 ORDER BY 1, 2"
            ),
            &[],
        )
        .await
        .expect("effects");
    let twice: Vec<String> = rows
        .iter()
        .filter(|r| r.get::<_, i64>(2) != 1)
        .map(|r| {
            format!(
                "{} {} x{}",
                r.get::<_, chrono::DateTime<Utc>>(0),
                r.get::<_, String>(1),
                r.get::<_, i64>(2)
            )
        })
        .collect();
    if !twice.is_empty() {
        for d in [&d1, &d2, &d3] {
            let _ = std::fs::copy(
                &d.log,
                std::env::temp_dir().join(format!("fleet-{}.log", d.id)),
            );
        }
    }
    assert!(twice.is_empty(), "applied more than once: {twice:?}");
    assert_eq!(rows.len() as i64, expected, "every step of every interval");

    // No attempt is left running; no run is left unfinished.
    let running: i64 = db
        .query_one(
            &format!("SELECT count(*) FROM {schema}.step_attempts WHERE state = 'running'"),
            &[],
        )
        .await
        .expect("attempts")
        .get(0);
    assert_eq!(running, 0, "attempts left running");
    let open: i64 = db
        .query_one(
            &format!("SELECT count(*) FROM {schema}.runs WHERE state IN ('queued', 'running')"),
            &[],
        )
        .await
        .expect("runs")
        .get(0);
    assert_eq!(open, 0, "runs left open");

    // Each daemon ran a share; the frozen one's late writes were refused and it said so.
    let (l1, l2, l3) = (d1.log(), d2.log(), d3.log());
    for (id, log) in [("d1", &l1), ("d2", &l2)] {
        assert!(log.contains("step succeeded"), "{id} ran no step:\n{log}");
    }
    // d3 was killed in the middle of its steps: what it started, the others finished.
    assert!(l3.contains("step started"), "d3 started no step:\n{l3}");
    for line in l2
        .lines()
        .filter(|l| l.contains("refused a late write") || l.contains("not committed"))
    {
        eprintln!("d2: {line}");
    }
    assert!(
        l2.contains("refused a late write") || l2.contains("not committed"),
        "the frozen daemon's late writes were not refused:\n{l2}"
    );
    assert!(
        l1.contains("took over a queued run") || l2.contains("took over a queued run"),
        "nobody took the dead daemon's runs over:\n{l1}\n{l2}"
    );
    let _ = db
        .batch_execute(&format!("DROP TABLE {table}; DROP SCHEMA {schema} CASCADE"))
        .await;
}
