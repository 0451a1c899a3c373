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
    let (a, b, execs) = (
        format!("bf_a_{sfx}"),
        format!("bf_b_{sfx}"),
        format!("bf_x_{sfx}"),
    );
    let db = pg().await;
    db.batch_execute(&format!(
        "CREATE TABLE {a} (day date NOT NULL); CREATE TABLE {b} (day date NOT NULL); \
         CREATE TABLE {execs} (day date NOT NULL, step text NOT NULL)"
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
      DELETE FROM {a} WHERE day = {{{{ ds | sql_literal }}}};
      INSERT INTO {a} (day) VALUES ({{{{ ds | sql_literal }}}});
      INSERT INTO {execs} VALUES ({{{{ ds | sql_literal }}}}, 'extract');
      SELECT pg_sleep(0.08);
  - id: rollup
    kind: sql
    after: [extract]
    connection: pg
    query: |
      DELETE FROM {b} WHERE day = {{{{ ds | sql_literal }}}};
      INSERT INTO {b} (day) VALUES ({{{{ ds | sql_literal }}}});
      INSERT INTO {execs} VALUES ({{{{ ds | sql_literal }}}}, 'rollup');
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

    // Every interval's data is there exactly once.
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
    // No interval that had finished before the kill ran again. Only the step that was in flight when the
    // process died may have executed twice: if the kill fell between its COMMIT and the store recording
    // it, the resumed backfill cannot know and runs it again (at least once, as for any scheduler
    // without two-phase commit; steps are written to be idempotent, as these are).
    let twice: Vec<(String, String)> = db
        .query(
            &format!("SELECT day::text, step FROM {execs} GROUP BY day, step HAVING count(*) > 1"),
            &[],
        )
        .await
        .expect("q")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(twice.len() <= 1, "steps that ran twice: {twice:?}");
    let executions: i64 = db
        .query_one(&format!("SELECT count(*) FROM {execs}"), &[])
        .await
        .expect("q")
        .get(0);
    assert!(
        (62..=63).contains(&executions),
        "{executions} step executions for 62 step-intervals"
    );

    // The store agrees: every step of every interval succeeded exactly once; the run that was killed
    // is recorded as failed, its in-flight attempt as interrupted.
    let store = Store::open("sqlite://.cranium/state.db", dir.path())
        .await
        .expect("store");
    let from = parse_time("2026-01-01", Tz::UTC).expect("t");
    let to = parse_time("2026-02-01", Tz::UTC).expect("t");
    let records = store.step_states("bf", from, to).await.expect("states");
    assert_eq!(records.len(), 62);
    assert!(records.iter().all(|r| r.state == StepState::Success));
    let mut interrupted = 0;
    for r in &records {
        let attempts = store
            .attempts("bf", r.interval.start, Some(&r.step))
            .await
            .expect("attempts");
        let ok = attempts
            .iter()
            .filter(|x| x.state == StepState::Success)
            .count();
        assert_eq!(ok, 1, "{attempts:?}");
        interrupted += attempts
            .iter()
            .filter(|x| {
                x.error
                    .as_deref()
                    .is_some_and(|e| e.contains("interrupted"))
            })
            .count();
        assert!(attempts.len() <= 2, "{attempts:?}");
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
    let count_execs = |step: &str| {
        format!("SELECT count(*) FROM {execs} WHERE day = '2026-01-10' AND step = '{step}'")
    };
    let rollup_before: i64 = db
        .query_one(&count_execs("rollup"), &[])
        .await
        .expect("q")
        .get(0);
    let extract_before: i64 = db
        .query_one(&count_execs("extract"), &[])
        .await
        .expect("q")
        .get(0);
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
    let execs_of = |step: &'static str| {
        let q =
            format!("SELECT count(*) FROM {execs} WHERE day = '2026-01-10' AND step = '{step}'");
        let db = &db;
        async move { db.query_one(&q, &[]).await.expect("q").get::<_, i64>(0) }
    };
    assert_eq!(
        execs_of("rollup").await,
        rollup_before + 1,
        "the cleared step ran again"
    );
    assert_eq!(execs_of("extract").await, extract_before, "and only it");

    db.batch_execute(&format!(
        "DROP TABLE {a}; DROP TABLE {b}; DROP TABLE {execs}"
    ))
    .await
    .expect("drop");
}

/// `--log-format json` writes every attempt's log as JSON lines with the run, job, step and attempt;
/// secrets in a connection URL never reach a log or the output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_their_fields_and_no_secret() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("cranium.yaml"),
        "connections:\n  pg:\n    kind: postgres\n    url: ${CRANIUM_TEST_PG:-postgres://postgres@127.0.0.1:5432/test}\n  bad:\n    kind: postgres\n    url: postgres://etl:s3cr3t-pw@127.0.0.1:1/none\n",
    )
    .expect("cranium.yaml");
    std::fs::create_dir(dir.path().join("jobs")).expect("jobs");
    std::fs::write(
        dir.path().join("jobs/j.yaml"),
        "job: j\nschedule: \"@daily\"\nstart: 2026-01-01\nsteps:\n  - id: ok\n    kind: sql\n    connection: pg\n    query: SELECT 1\n  - id: unreachable\n    kind: sql\n    connection: bad\n    query: SELECT 1\n",
    )
    .expect("job");
    let out = run(cranium(
        dir.path(),
        &["--log-format", "json", "run", "j", "--at", "2026-03-01"],
    ));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(!text(&out).contains("s3cr3t-pw"), "{}", text(&out));
    assert!(text(&out).contains("etl:***@"), "{}", text(&out));
    let logs = dir.path().join(".cranium/logs/j/20260301T000000Z");
    for step in ["ok", "unreachable"] {
        let file = std::fs::read_dir(logs.join(step))
            .expect("log dir")
            .next()
            .expect("a log")
            .expect("entry")
            .path();
        let body = std::fs::read_to_string(&file).expect("read log");
        assert!(!body.contains("s3cr3t-pw"), "{body}");
        for line in body.lines() {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            assert_eq!(v["job"], "j");
            assert_eq!(v["step"], step);
            assert_eq!(v["attempt"], 1);
            assert!(
                v["run_id"].as_i64().is_some() && v["time"].is_string() && v["level"].is_string(),
                "{v}"
            );
        }
    }
    // `logs --follow` ends by itself once no attempt is running.
    let out = run(cranium(
        dir.path(),
        &["logs", "j", "2026-03-01", "--follow"],
    ));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("== ok run 1 attempt 1 (success)"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("== unreachable run 1 attempt 1 (failed)"),
        "{}",
        text(&out)
    );
}
