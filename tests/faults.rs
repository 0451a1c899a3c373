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

use std::time::Duration;

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
    let pattern = format!("%{marker}%");
    let killer = tokio::spawn(async move {
        let Some(pid) = pg_session_running(&pattern, LOOK_FOR).await else {
            return false;
        };
        pg().await
            .execute("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .expect("terminate");
        true
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
    let table = seed_export_table("fault_export", 600_000).await;
    let mut my = mysql().await;
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
        let Some(id) = mysql_session_reading(&table2, LOOK_FOR).await else {
            return false;
        };
        mysql()
            .await
            .query_drop(format!("KILL {id}"))
            .await
            .expect("kill");
        true
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
    let (retried, undisturbed) = (
        exported_objects(&killed_prefix).await,
        exported_objects(&calm_prefix).await,
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

/// Hostile values from an upstream step's outputs (what a script computes from data it read):
/// quoted with `sql_literal` they reach the warehouse as data, bound in the Lua API they are data,
/// and in an S3 key prefix they cannot leave the step's folder or reach the top of the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_in_templated_fields_change_nothing_that_runs() {
    let t = unique("hostile");
    pg().await
        .batch_execute(&format!("CREATE TABLE public.{t} (v text)"))
        .await
        .expect("create");
    let evil = format!("x'); DROP TABLE public.{t}; --");
    let (s3c, bucket) = s3();
    let base = unique("cranium-tests/hostile");
    // A sentinel object beside the step's folder: nothing may delete or overwrite it.
    let sentinel = format!("{base}/other/users.00000.jsonl.gz");
    s3c.put(
        &bucket,
        &sentinel,
        bytes::Bytes::from_static(b"keep"),
        "application/gzip",
    )
    .await
    .expect("sentinel");
    let table = seed_export_table("hostile_src", 10).await;
    let dir = tempfile::tempdir().expect("tmp");
    let lua = format!(
        "  - id: up\n    kind: lua\n    code: |\n      ctx.outputs.evil = {evil:?}\n      ctx.outputs.up = \"../other\"\n      ctx.outputs.empty = \"/\"\n"
    );
    let e = job(
        dir.path(),
        &format!(
            "{lua}  - id: insert\n    kind: sql\n    after: [up]\n    connection: warehouse\n    query: INSERT INTO public.{t} (v) VALUES ({{{{ steps.up.outputs.evil | sql_literal }}}})\n  - id: bound\n    kind: lua\n    after: [up]\n    code: |\n      cranium.execute(\"warehouse\", \"INSERT INTO public.{t} (v) VALUES ($1)\", ctx.steps.up.outputs.evil)\n  - id: traverse\n    kind: mysql_to_s3\n    after: [up]\n    retries: 0\n    connection: production\n    table: {table}\n    s3: lake\n    prefix: \"{base}/mine/{{{{ steps.up.outputs.up }}}}\"\n  - id: top\n    kind: mysql_to_s3\n    after: [up]\n    retries: 0\n    connection: production\n    table: {table}\n    s3: lake\n    prefix: \"{{{{ steps.up.outputs.empty }}}}\"\n"
        ),
    )
    .await;
    let r = run_job(&e, "j", day("2026-03-01")).await;
    assert_eq!(step(&r, "insert").state, StepState::Success, "{r:?}");
    assert_eq!(step(&r, "bound").state, StepState::Success, "{r:?}");
    let rows: Vec<Option<String>> = pg()
        .await
        .query(&format!("SELECT v FROM public.{t}"), &[])
        .await
        .expect("the table is still there")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        rows,
        [Some(evil.clone()), Some(evil.clone())],
        "stored as data, twice"
    );

    let traverse = step(&r, "traverse");
    assert_eq!(traverse.state, StepState::Failed);
    assert_eq!(
        traverse.error.as_deref(),
        Some(format!("prefix rendered to \"{base}/mine/../other\", which is not a safe S3 key prefix: it has a '..' folder, which could resolve outside the prefix; a key prefix takes plain folder names").as_str())
    );
    let top = step(&r, "top");
    assert_eq!(top.state, StepState::Failed);
    assert!(
        top.error
            .as_deref()
            .unwrap_or("")
            .contains("it is empty: objects would go to the top of the bucket"),
        "{top:?}"
    );
    let left: Vec<String> = s3c
        .list(&bucket, &format!("{base}/"))
        .await
        .expect("list")
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(
        left,
        std::slice::from_ref(&sentinel),
        "nothing written, nothing deleted"
    );
    s3c.delete(&bucket, &sentinel).await.expect("clean");
    pg().await
        .batch_execute(&format!("DROP TABLE public.{t}"))
        .await
        .expect("drop");
    mysql()
        .await
        .query_drop(format!("DROP TABLE {table}"))
        .await
        .expect("drop");
}
