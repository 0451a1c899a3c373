//! Faults of the servers around a step, for real, in the default test run (they are quick):
//!
//! * the warehouse's backend of a running `sql` step is terminated (`pg_terminate_backend`, what a
//!   restart does to its sessions): the attempt fails as retryable, the retry succeeds, and the
//!   target holds every row once;
//! * production MySQL's export connection is killed (`KILL`) during a `mysql_to_s3` export: no
//!   manifest says the half-done export is complete, and the retry writes the same objects as an
//!   undisturbed export.
//!
//! `scripts/faults.sh` runs these and prints one line per fault.

mod support;

use std::time::{Duration, Instant};

use cranium::engine::{Engine, RunReport};
use cranium::store::StepState;
use mysql_async::prelude::Queryable;
use support::*;

async fn job(dir: &std::path::Path, steps: &str) -> Engine {
    project(
        dir,
        &[(
            "j",
            &format!("job: j\nschedule: \"@daily\"\nstart: 2026-01-01\nsteps:\n{steps}"),
        )],
    );
    engine(dir).await
}

fn step<'a>(r: &'a RunReport, id: &str) -> &'a cranium::engine::StepReport {
    r.steps
        .iter()
        .find(|s| s.step == id)
        .unwrap_or_else(|| panic!("no step {id} in {r:?}"))
}

/// How long a killer looks for the session it is to end.
const LOOK_FOR: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sql_step_whose_warehouse_session_dies_is_retried_and_applied_once() {
    let t = unique("fault_sql");
    let db = pg().await;
    db.batch_execute(&format!("CREATE TABLE public.{t} (n int)"))
        .await
        .expect("create");
    let marker = format!("fault marker {t}");
    let dir = tempfile::tempdir().expect("tmp");
    let e = job(
        dir.path(),
        &format!(
            "  - id: fill\n    kind: sql\n    connection: warehouse\n    retries: 1\n    retry_delay: 1s\n    query: |\n      INSERT INTO public.{t} SELECT g FROM generate_series(1, 1000) g;\n      SELECT pg_sleep(1.5), '{marker}';\n"
        ),
    )
    .await;
    let marker2 = marker.clone();
    let killer = tokio::spawn(async move {
        let finder = pg().await;
        let until = Instant::now() + LOOK_FOR;
        while Instant::now() < until {
            let found = finder
                .query_opt(
                    "SELECT pid FROM pg_stat_activity WHERE query LIKE '%' || $1 || '%' \
                     AND pid <> pg_backend_pid() AND state = 'active' LIMIT 1",
                    &[&marker2],
                )
                .await
                .ok()
                .flatten()
                .map(|r| r.get::<_, i32>(0));
            if let Some(pid) = found {
                finder
                    .execute("SELECT pg_terminate_backend($1)", &[&pid])
                    .await
                    .expect("terminate");
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    });
    let r = run_job(&e, "j", day("2026-03-01")).await;
    assert!(
        killer.await.expect("killer"),
        "the step's session was found and terminated"
    );
    let s = step(&r, "fill");
    assert_eq!(s.state, StepState::Success, "{r:?}");
    assert_eq!(
        s.attempts, 2,
        "the first attempt died with its session: {r:?}"
    );
    let attempts = e
        .store
        .attempts("j", day("2026-03-01").start, Some("fill"))
        .await
        .expect("attempts");
    let first = attempts.first().expect("an attempt");
    assert_eq!(first.state, StepState::UpForRetry, "{attempts:?}");
    let err = first.error.clone().unwrap_or_default();
    assert!(
        err.contains("terminating connection due to administrator command"),
        "the first attempt says what happened: {err}"
    );
    assert_eq!(
        pg_count(&format!("SELECT count(*) FROM public.{t}")).await,
        1000,
        "every row once: the dead session's transaction was rolled back"
    );
    db.batch_execute(&format!("DROP TABLE public.{t}"))
        .await
        .expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mysql_export_whose_connection_is_killed_leaves_no_manifest_and_the_retry_matches() {
    let table = unique("fault_export");
    let mut my = mysql().await;
    my.query_drop(format!(
        "CREATE TABLE {table} (id INT PRIMARY KEY, v VARCHAR(64)) CHARACTER SET utf8mb4"
    ))
    .await
    .expect("create");
    my.query_drop(format!(
        "INSERT INTO {table} SELECT seq, CONCAT('row ', seq, ' of the export, padded to be a real row')
         FROM seq_1_to_600000"
    ))
    .await
    .expect("fill");
    let (s3c, bucket) = s3();
    let killed_prefix = unique("cranium-tests/fault-export-killed");
    let calm_prefix = unique("cranium-tests/fault-export-calm");
    let export = |prefix: &str| {
        format!(
            "  - id: dump\n    kind: mysql_to_s3\n    connection: production\n    table: {table}\n    s3: lake\n    prefix: {prefix}\n    retries: 0\n    chunk_size: 20000\n"
        )
    };
    let dir = tempfile::tempdir().expect("tmp");
    let e = job(dir.path(), &export(&killed_prefix)).await;
    // An earlier complete export under the prefix: its manifest must not survive a half-done one.
    let r = run_job(&e, "j", day("2026-03-01")).await;
    assert_eq!(step(&r, "dump").state, StepState::Success, "{r:?}");
    let table2 = table.clone();
    let killer = tokio::spawn(async move {
        let mut finder = mysql().await;
        let until = Instant::now() + LOOK_FOR;
        let sql = format!(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT%FROM%{table2}%' \
             AND ID <> CONNECTION_ID() LIMIT 1"
        );
        while Instant::now() < until {
            if let Ok(Some(id)) = finder.query_first::<i64, _>(sql.as_str()).await {
                finder.query_drop(format!("KILL {id}")).await.expect("kill");
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    });
    let r = run_job(&e, "j", day("2026-03-01")).await;
    assert!(
        killer.await.expect("killer"),
        "the export's connection was found and killed"
    );
    let s = step(&r, "dump");
    assert_eq!(s.state, StepState::Failed, "{r:?}");
    let attempts = e
        .store
        .attempts("j", day("2026-03-01").start, Some("dump"))
        .await
        .expect("attempts");
    let err = attempts
        .last()
        .and_then(|a| a.error.clone())
        .unwrap_or_default();
    assert!(
        err.contains("the connection to MySQL was lost during the statement")
            || err.contains("[1927]"),
        "the error says the connection was lost: {err}"
    );
    assert_eq!(
        attempts.last().map(|a| a.state),
        Some(StepState::Failed),
        "retries: 0"
    );
    let keys: Vec<String> = s3c
        .list(&bucket, &format!("{killed_prefix}/"))
        .await
        .expect("list")
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert!(
        !keys.iter().any(|k| k.ends_with("_manifest.json")),
        "no manifest says the half-done export is complete: {keys:?}"
    );

    // The retry (the job again) and an undisturbed export write the same objects.
    let r = run_job(&e, "j", day("2026-03-01")).await;
    assert_eq!(step(&r, "dump").state, StepState::Success, "{r:?}");
    let dir2 = tempfile::tempdir().expect("tmp");
    let calm = job(dir2.path(), &export(&calm_prefix)).await;
    let r = run_job(&calm, "j", day("2026-03-01")).await;
    assert_eq!(step(&r, "dump").state, StepState::Success, "{r:?}");
    let objects = |prefix: String| {
        let s3c = s3c.clone();
        let bucket = bucket.clone();
        async move {
            read_objects(&s3c, &bucket, &format!("{prefix}/"))
                .await
                .into_iter()
                .filter(|(k, _)| !k.ends_with("_manifest.json"))
                .map(|(k, lines)| (k[prefix.len()..].to_string(), lines))
                .collect::<Vec<_>>()
        }
    };
    let (retried, undisturbed) = (
        objects(killed_prefix.clone()).await,
        objects(calm_prefix.clone()).await,
    );
    assert_eq!(retried.len(), 1, "600,000 rows fit one object");
    assert_eq!(retried[0].1.len(), 600_000);
    assert_eq!(
        retried
            .iter()
            .map(|(k, l)| (k.clone(), l.len()))
            .collect::<Vec<_>>(),
        undisturbed
            .iter()
            .map(|(k, l)| (k.clone(), l.len()))
            .collect::<Vec<_>>()
    );
    assert!(retried == undisturbed, "the same objects, line for line");
    my.query_drop(format!("DROP TABLE {table}"))
        .await
        .expect("drop");
    for p in [killed_prefix, calm_prefix] {
        s3c.delete_prefix(&bucket, &format!("{p}/"))
            .await
            .expect("clean");
    }
}
