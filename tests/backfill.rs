//! `cranium backfill` as a process: killed with SIGKILL in the middle and started again, it resumes,
//! and no interval runs twice. Against the real PostgreSQL, with the default SQLite store.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cranium::schedule::{parse_time, Tz};
use cranium::store::{StepState, Store};

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";

fn cranium(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cranium"));
    c.args(args).current_dir(dir);
    c
}

/// Run to completion, but never hang the test suite: a stuck command is killed after two minutes.
fn run(mut c: Command) -> Output {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cranium");
    let started = Instant::now();
    loop {
        match child.try_wait().expect("wait") {
            Some(_) => return child.wait_with_output().expect("output"),
            None if started.elapsed() > Duration::from_secs(120) => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                panic!("cranium did not finish within 2 minutes:\n{}", text(&out));
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn pg() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(PG, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_killed_and_resumed_runs_every_interval_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let sfx = format!("{}_{}", std::process::id(), rand::random::<u32>());
    let (a, b) = (format!("bf_a_{sfx}"), format!("bf_b_{sfx}"));
    let db = pg().await;
    db.batch_execute(&format!(
        "CREATE TABLE {a} (day date NOT NULL); CREATE TABLE {b} (day date NOT NULL)"
    ))
    .await
    .expect("tables");
    std::fs::write(
        dir.path().join("cranium.yaml"),
        format!("connections:\n  pg:\n    kind: postgres\n    url: {PG}\n"),
    )
    .expect("cranium.yaml");
    std::fs::create_dir(dir.path().join("jobs")).expect("jobs");
    std::fs::write(
        dir.path().join("jobs/bf.yaml"),
        format!(
            r#"job: bf
schedule: "@daily"
start: 2026-01-01
steps:
  - id: extract
    kind: sql
    connection: pg
    query: |
      INSERT INTO {a} (day) VALUES ({{{{ ds | sql_literal }}}});
      SELECT pg_sleep(0.08);
  - id: rollup
    kind: sql
    after: [extract]
    connection: pg
    query: |
      INSERT INTO {b} (day) VALUES ({{{{ ds | sql_literal }}}});
      SELECT pg_sleep(0.08);
"#
        ),
    )
    .expect("job");
    let range = [
        "backfill",
        "bf",
        "--from",
        "2026-01-01",
        "--to",
        "2026-02-01",
        "--max-active-runs",
        "1",
    ];

    // Dry run: all 31 intervals would run, and nothing runs.
    let out = run(cranium(dir.path(), &[&range[..], &["--dry-run"]].concat()));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("31 interval(s) to run"),
        "{}",
        text(&out)
    );
    assert_eq!(
        db.query_one(&format!("SELECT count(*) FROM {a}"), &[])
            .await
            .expect("q")
            .get::<_, i64>(0),
        0
    );

    // Start, and kill it hard in the middle of an interval.
    let mut child = cranium(dir.path(), &range)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let started = Instant::now();
    loop {
        let n: i64 = db
            .query_one(&format!("SELECT count(*) FROM {a}"), &[])
            .await
            .expect("q")
            .get(0);
        if n >= 8 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "backfill made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let done: i64 = db
        .query_one(&format!("SELECT count(*) FROM {b}"), &[])
        .await
        .expect("q")
        .get(0);
    assert!(
        done > 0 && done < 31,
        "killed too late or too early: {done} intervals done"
    );

    // Start the same backfill again: it takes over the interrupted run and finishes the rest.
    let out = run(cranium(
        dir.path(),
        &[&range[..], &["--recover-after", "0s"]].concat(),
    ));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("recovered 1 interrupted run"),
        "{}",
        text(&out)
    );

    // Every interval ran exactly once (a killed interval's transaction never committed).
    for t in [&a, &b] {
        let dupes: i64 = db
            .query_one(
                &format!(
                    "SELECT count(*) FROM (SELECT day FROM {t} GROUP BY day HAVING count(*) > 1) d"
                ),
                &[],
            )
            .await
            .expect("q")
            .get(0);
        let total: i64 = db
            .query_one(&format!("SELECT count(DISTINCT day) FROM {t}"), &[])
            .await
            .expect("q")
            .get(0);
        assert_eq!((dupes, total), (0, 31), "table {t}");
    }

    // The store agrees: one successful attempt per step and interval.
    let store = Store::open("sqlite://.cranium/state.db", dir.path())
        .await
        .expect("store");
    let from = parse_time("2026-01-01", Tz::UTC).expect("t");
    let to = parse_time("2026-02-01", Tz::UTC).expect("t");
    let records = store.step_states("bf", from, to).await.expect("states");
    assert_eq!(records.len(), 62);
    assert!(records.iter().all(|r| r.state == StepState::Success));
    let mut interrupted = 0;
    for r in records.iter().filter(|r| r.step == "extract") {
        let attempts = store
            .attempts("bf", r.interval.start, None)
            .await
            .expect("attempts");
        let ok = attempts
            .iter()
            .filter(|x| x.state == StepState::Success)
            .count();
        assert_eq!(ok, 2, "{attempts:?}");
        interrupted += attempts
            .iter()
            .filter(|x| {
                x.error
                    .as_deref()
                    .is_some_and(|e| e.contains("interrupted"))
            })
            .count();
    }
    assert!(interrupted <= 1, "{interrupted} interrupted attempts");

    // A second identical backfill does nothing, and says so.
    let out = run(cranium(dir.path(), &range));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("nothing to do: 31 interval(s)"),
        "{}",
        text(&out)
    );

    // History: runs lists them, logs has the attempts.
    let out = run(cranium(
        dir.path(),
        &["runs", "bf", "--format", "json", "--limit", "100"],
    ));
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let runs = runs.as_array().expect("array");
    assert!(runs.len() >= 32, "{}", runs.len());
    assert!(
        runs.iter().any(|r| r["state"] == "failed"),
        "the killed run is recorded as failed"
    );
    let out = run(cranium(dir.path(), &["logs", "bf", "2026-01-05", "rollup"]));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("statement 1") && text(&out).contains("succeeded"),
        "{}",
        text(&out)
    );

    // clear marks an interval for rerun; the next backfill runs just that one.
    let out = run(cranium(
        dir.path(),
        &[
            "clear",
            "bf",
            "--from",
            "2026-01-10",
            "--to",
            "2026-01-11",
            "--steps",
            "rollup",
        ],
    ));
    assert!(
        out.status.success() && text(&out).contains("cleared 1 step record"),
        "{}",
        text(&out)
    );
    let out = run(cranium(dir.path(), &range));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("1 interval(s) succeeded"),
        "{}",
        text(&out)
    );
    let n: i64 = db
        .query_one(
            &format!("SELECT count(*) FROM {b} WHERE day = '2026-01-10'"),
            &[],
        )
        .await
        .expect("q")
        .get(0);
    assert_eq!(n, 2, "the cleared step ran again (and only it)");
    let n: i64 = db
        .query_one(
            &format!("SELECT count(*) FROM {a} WHERE day = '2026-01-10'"),
            &[],
        )
        .await
        .expect("q")
        .get(0);
    assert_eq!(n, 1);

    db.batch_execute(&format!("DROP TABLE {a}; DROP TABLE {b}"))
        .await
        .expect("drop");
}
