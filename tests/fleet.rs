//! Several `cranium daemon` processes on one PostgreSQL metadata store, with real faults: one
//! SIGKILLed in the middle of its steps, the leader's lock session ended on the server, the
//! leader SIGTERMed and started again, and one frozen with SIGSTOP past its leases' time to live
//! and resumed. Every step's effect is a row in a PostgreSQL table, so "exactly once" is counted
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
const INTERVALS: i64 = 200;
/// s1, then s2, s3 and s4 side by side, then s5.
const STEPS: [(&str, &str); 5] = [
    ("s1", ""),
    ("s2", "s1"),
    ("s3", "s1"),
    ("s4", "s1"),
    ("s5", "s2, s3, s4"),
];

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
        Daemon::start_logging(root, id, id)
    }

    fn start_logging(root: &Path, id: &str, log_name: &str) -> Daemon {
        let log = root.join(format!("{log_name}.log"));
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

/// The daemon holding the schema's leader lock now (from its session's `application_name`).
async fn leader(db: &tokio_postgres::Client, schema: &str) -> Option<(String, i32)> {
    let row = db
        .query_opt(
            "SELECT a.application_name, a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 1668443757::oid \
             AND l.objid = hashtext('cranium.leader:' || $1)::oid AND l.objsubid = 2",
            &[&schema],
        )
        .await
        .ok()??;
    let name: String = row.get(0);
    Some((
        name.strip_prefix("cranium leader ")?.to_string(),
        row.get(1),
    ))
}

/// Waits for a leader other than `not` (within `within`), and says how long it took.
async fn new_leader(
    db: &tokio_postgres::Client,
    schema: &str,
    not: Option<&str>,
    within: Duration,
) -> (String, Duration) {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if let Some((id, _)) = leader(db, schema).await {
            if Some(id.as_str()) != not {
                return (id, t0.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no new leader (other than {not:?}) within {within:?}");
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
async fn three_daemons_survive_kill_term_freeze_and_a_lost_leader_and_run_every_step_once() {
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
             daemon:\n  listen: off\n  max_running_steps: 6\n  lease_ttl: 3s\n  shutdown_grace: 10s\n"
        ),
    )
    .expect("cranium.yaml");
    // A fixed set of past minutes, caught up oldest first.
    let end = Utc::now()
        .duration_trunc(TimeDelta::minutes(1))
        .expect("minute");
    let start = end - TimeDelta::minutes(INTERVALS);
    let mut job = format!(
        "job: chaos\nschedule: \"* * * * *\"\ncatchup: true\nmax_active_runs: 12\nstart: \"{}\"\nend: \"{}\"\nsteps:\n",
        start.to_rfc3339_opts(SecondsFormat::Secs, true),
        end.to_rfc3339_opts(SecondsFormat::Secs, true),
    );
    for (s, after) in STEPS {
        let after = if after.is_empty() {
            String::new()
        } else {
            format!("    after: [{after}]\n")
        };
        job.push_str(&format!(
            "  - id: {s}\n    kind: sql\n    connection: warehouse\n{after}    query: |\n      SELECT pg_sleep(0.4);\n      INSERT INTO {table} (interval_start, step) VALUES ({{{{ interval_start | sql_literal }}}}, '{s}');\n"
        ));
    }
    std::fs::create_dir_all(root.join("jobs")).expect("jobs/");
    std::fs::write(root.join("jobs/chaos.yaml"), job).expect("job file");

    // Ids unique to this test: the leader's session is found by its name on the server.
    let ids: Vec<String> = (1..=3).map(|n| format!("d{n}-{tag}")).collect();
    let mut daemons: Vec<Daemon> = ids.iter().map(|id| Daemon::start(root, id)).collect();
    let mut logs: Vec<PathBuf> = Vec::new();

    // `cranium status` shows every live daemon with its role: one leader.
    let t0 = Instant::now();
    loop {
        let out = Command::new(BIN)
            .arg("status")
            .current_dir(root)
            .output()
            .expect("cranium status");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let up: Vec<&str> = text.lines().filter(|l| l.contains(": up, ")).collect();
        let leaders = up.iter().filter(|l| l.contains(": up, leader,")).count();
        if up.len() == 3
            && leaders == 1
            && ids
                .iter()
                .all(|id| text.contains(&format!("daemon {id}: up")))
        {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "`cranium status` does not show 3 daemons, one leader:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // 1. SIGKILL d3 in the middle of its steps.
    wait_mid_step(&db, &schema, &format!("daemon:{}", ids[2])).await;
    daemons[2].signal("KILL");
    daemons[2].wait_exit(Duration::from_secs(10)).await;

    // 2. End the leader's lock session on the server: another daemon (or the same one, on a new
    //    session) leads within 10 s.
    let (first, _) = new_leader(&db, &schema, Some(&ids[2]), Duration::from_secs(20)).await;
    let (_, pid) = leader(&db, &schema).await.expect("a leader");
    db.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("pg_terminate_backend");
    let t0 = Instant::now();
    loop {
        if let Some((_, p)) = leader(&db, &schema).await {
            if p != pid {
                break;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no leader within 10 s of ending {first}'s lock session"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "leader session of {first} ended: a leader again after {:?}",
        t0.elapsed()
    );

    // 3. SIGTERM the leader (it releases the lock: another leads within about a second), then
    //    start it again.
    let (lead, _) = new_leader(&db, &schema, None, Duration::from_secs(10)).await;
    let li = ids.iter().position(|i| *i == lead).expect("a known leader");
    daemons[li].signal("TERM");
    let (next, took) = new_leader(&db, &schema, Some(&lead), Duration::from_secs(10)).await;
    eprintln!("{lead} SIGTERMed: {next} leads after {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "after a SIGTERM the next leader took {took:?}"
    );
    daemons[li].wait_exit(Duration::from_secs(30)).await;
    logs.push(daemons[li].log.clone());
    daemons[li] = Daemon::start_logging(root, &lead, &format!("{lead}-again"));

    // 4. Freeze the other survivor (the leader now) in the middle of its steps, past its 3 s
    //    leases and the 6 s run heartbeat; the restarted daemon deposes it and carries on.
    let fi = 1 - li;
    wait_mid_step(&db, &schema, &format!("daemon:{}", ids[fi])).await;
    daemons[fi].signal("STOP");
    tokio::time::sleep(Duration::from_secs(10)).await;
    daemons[fi].signal("CONT");

    // Every step of every interval succeeds.
    let expected = INTERVALS * STEPS.len() as i64;
    let deadline = Instant::now() + Duration::from_secs(240);
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
            "{done}/{expected} steps succeeded in time\n--- {} ---\n{}\n--- {} ---\n{}",
            ids[li],
            daemons[li].log(),
            ids[fi],
            daemons[fi].log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for d in &daemons[..2] {
        d.signal("TERM");
    }
    for d in &mut daemons[..2] {
        d.wait_exit(Duration::from_secs(30)).await;
    }
    logs.extend(daemons.iter().map(|d| d.log.clone()));

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
        for l in &logs {
            if let Some(name) = l.file_name() {
                let _ = std::fs::copy(l, std::env::temp_dir().join(name));
            }
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

    // The run history names the daemon that executed each run.
    let runs = Command::new(BIN)
        .args(["runs", "chaos", "--limit", "0", "--format", "json"])
        .current_dir(root)
        .output()
        .expect("cranium runs");
    let runs: serde_json::Value =
        serde_json::from_slice(&runs.stdout).expect("cranium runs --format json");
    let by: std::collections::BTreeSet<String> = runs
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(|r| r["daemon"].as_str().map(str::to_string))
        .collect();
    assert!(
        ids[..2].iter().all(|id| by.contains(id)),
        "runs by daemon: {by:?}"
    );

    // Each daemon ran a share; the frozen one's late writes were refused and it said so; the
    // one that was deposed while frozen noticed when it woke.
    let read = |p: &PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    let all: Vec<(String, String)> = logs
        .iter()
        .map(|p| (p.display().to_string(), read(p)))
        .collect();
    for id in &ids[..2] {
        assert!(
            all.iter()
                .any(|(p, l)| p.contains(id.as_str()) && l.contains("step succeeded")),
            "{id} ran no step"
        );
    }
    let l3 = daemons[2].log();
    assert!(l3.contains("step started"), "d3 started no step:\n{l3}");
    let frozen = daemons[fi].log();
    for line in frozen
        .lines()
        .filter(|l| l.contains("refused a late write") || l.contains("not committed"))
    {
        eprintln!("{}: {line}", ids[fi]);
    }
    assert!(
        frozen.contains("refused a late write") || frozen.contains("not committed"),
        "the frozen daemon's late writes were not refused:\n{frozen}"
    );
    assert!(
        all.iter()
            .any(|(_, l)| l.contains("took over a queued run")),
        "nobody took the dead daemon's runs over"
    );
    assert!(
        all.iter().any(|(_, l)| l.contains("no longer the leader")),
        "no daemon noticed it lost the leader lock"
    );
    let per_daemon: Vec<(String, i64)> = db
        .query(
            &format!(
                "SELECT coalesce(status->>'role', '?'), count(*) FROM {schema}.daemons GROUP BY 1"
            ),
            &[],
        )
        .await
        .expect("daemons")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    eprintln!("daemons by last role: {per_daemon:?}");
    let _ = db
        .batch_execute(&format!("DROP TABLE {table}; DROP SCHEMA {schema} CASCADE"))
        .await;
}
