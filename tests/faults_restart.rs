//! The warehouse PostgreSQL restarted for real (`pg_ctlcluster … restart`) while a step works on
//! it: during a `sql` step's transaction and during an `s3_to_redshift` COPY. The attempt fails as
//! retryable, the retry (after the server is back) succeeds, and the target holds every row once.
//!
//! A restart ends every session on the server, so these are `#[ignore]`d in the default test run
//! (other tests would lose their connections); `scripts/faults.sh` runs them alone.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use cranium::engine::Engine;
use cranium::store::StepState;
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

/// Restarts the machine's PostgreSQL cluster and waits until it answers again.
async fn restart_postgres() {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("/etc/postgresql")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .expect("a cluster version");
    let status = tokio::process::Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "restart"])
        .status()
        .await
        .expect("pg_ctlcluster");
    assert!(status.success(), "pg_ctlcluster restart: {status}");
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if tokio_postgres::connect(
            "postgres://postgres@127.0.0.1:5432/test",
            tokio_postgres::NoTls,
        )
        .await
        .is_ok()
        {
            return;
        }
        assert!(Instant::now() < until, "PostgreSQL did not come back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until a session runs a statement matching the LIKE `pattern`, then restarts the server.
async fn restart_during(pattern: String) -> bool {
    if pg_session_running(&pattern, Duration::from_secs(30))
        .await
        .is_none()
    {
        return false;
    }
    restart_postgres().await;
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts the machine's PostgreSQL: run by scripts/faults.sh"]
async fn the_warehouse_restarted_during_a_sql_step() {
    let t = unique("restart_sql");
    pg().await
        .batch_execute(&format!("CREATE TABLE public.{t} (n int)"))
        .await
        .expect("create");
    let marker = format!("restart marker {t}");
    let dir = tempfile::tempdir().expect("tmp");
    let e = job(
        dir.path(),
        &format!(
            "  - id: fill\n    kind: sql\n    connection: warehouse\n    retries: 3\n    retry_delay: 3s\n    query: |\n      INSERT INTO public.{t} SELECT g FROM generate_series(1, 5000) g;\n      SELECT pg_sleep(2), '{marker}';\n"
        ),
    )
    .await;
    let restarter = tokio::spawn(restart_during(format!("%{marker}%")));
    let r = run_job(&e, "j", day("2026-03-01")).await;
    assert!(
        restarter.await.expect("restarter"),
        "the server was restarted mid-step"
    );
    let s = r.steps.iter().find(|s| s.step == "fill").expect("fill");
    assert_eq!(s.state, StepState::Success, "{r:?}");
    assert!(
        s.attempts >= 2,
        "the first attempt died with the server: {r:?}"
    );
    assert_eq!(
        pg_count(&format!("SELECT count(*) FROM public.{t}")).await,
        5000,
        "every row once"
    );
    pg().await
        .batch_execute(&format!("DROP TABLE public.{t}"))
        .await
        .expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts the machine's PostgreSQL: run by scripts/faults.sh"]
async fn the_warehouse_restarted_during_an_s3_to_redshift_copy() {
    let t = unique("restart_copy");
    pg().await
        .batch_execute(&format!("CREATE TABLE public.{t} (id int, v text)"))
        .await
        .expect("create");
    // Enough rows that the COPY takes a few seconds.
    let n = 3_000_000u32;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for i in 0..n {
        writeln!(
            enc,
            r#"{{"id": {i}, "v": "row {i} of the load, padded a little"}}"#
        )
        .expect("gz");
    }
    let body = bytes::Bytes::from(enc.finish().expect("gz"));
    let (s3c, bucket) = s3();
    let prefix = unique("cranium-tests/restart-copy");
    s3c.put(
        &bucket,
        &format!("{prefix}/a.jsonl.gz"),
        body,
        "application/gzip",
    )
    .await
    .expect("put");
    let dir = tempfile::tempdir().expect("tmp");
    let e = job(
        dir.path(),
        &format!(
            "  - id: load\n    kind: s3_to_redshift\n    connection: warehouse\n    s3: lake\n    source:\n      prefix: {prefix}/\n    target: public.{t}\n    retries: 3\n    retry_delay: 3s\n"
        ),
    )
    .await;
    // The target is quoted in the statement: COPY "public"."restart_copy_…" (…) FROM STDIN.
    let restarter = tokio::spawn(restart_during(format!("COPY %{t}%FROM STDIN%")));
    let r = run_job(&e, "j", day("2026-03-01")).await;
    assert!(
        restarter.await.expect("restarter"),
        "the server was restarted mid-COPY"
    );
    let s = r.steps.iter().find(|s| s.step == "load").expect("load");
    assert_eq!(s.state, StepState::Success, "{r:?}");
    assert!(
        s.attempts >= 2,
        "the first attempt died with the server: {r:?}"
    );
    assert_eq!(
        pg_count(&format!("SELECT count(*) FROM public.{t}")).await,
        i64::from(n),
        "every row once"
    );
    assert_eq!(
        pg_count(&format!("SELECT count(DISTINCT id) FROM public.{t}")).await,
        i64::from(n)
    );
    pg().await
        .batch_execute(&format!("DROP TABLE public.{t}"))
        .await
        .expect("drop");
    s3c.delete_prefix(&bucket, &format!("{prefix}/"))
        .await
        .expect("clean");
}

/// Restarts the machine's MariaDB (a clean shutdown, then the server started again) and waits until
/// it answers.
async fn restart_mariadb() {
    let status = tokio::process::Command::new("mariadb-admin")
        .args(["--protocol=tcp", "-h", "127.0.0.1", "-uroot", "shutdown"])
        .status()
        .await
        .expect("mariadb-admin");
    assert!(status.success(), "mariadb-admin shutdown: {status}");
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let started = tokio::process::Command::new("start-stop-daemon")
            .args([
                "--start",
                "--oknodo",
                "--background",
                "--exec",
                "/usr/sbin/mariadbd",
            ])
            .status()
            .await
            .expect("start-stop-daemon");
        assert!(started.success(), "start-stop-daemon: {started}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let pool = mysql_async::Pool::new("mysql://root@127.0.0.1:3306/test");
        let up = pool.get_conn().await.is_ok();
        let _ = pool.disconnect().await;
        if up {
            return;
        }
        assert!(Instant::now() < until, "MariaDB did not come back");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts the machine's MariaDB: run by scripts/faults.sh"]
async fn production_mysql_restarted_during_an_export() {
    use mysql_async::prelude::Queryable;
    let table = seed_export_table("restart_export", 600_000).await;
    let (s3c, bucket) = s3();
    let (hit, calm) = (
        unique("cranium-tests/restart-export"),
        unique("cranium-tests/restart-export-calm"),
    );
    let export = |prefix: &str, retries: u32| {
        format!(
            "  - id: dump\n    kind: mysql_to_s3\n    connection: production\n    table: {table}\n    s3: lake\n    prefix: {prefix}\n    retries: {retries}\n    retry_delay: 3s\n    chunk_size: 20000\n"
        )
    };
    let dir = tempfile::tempdir().expect("tmp");
    let e = job(dir.path(), &export(&hit, 3)).await;
    let table2 = table.clone();
    let restarter = tokio::spawn(async move {
        if mysql_session_reading(&table2, Duration::from_secs(30))
            .await
            .is_none()
        {
            return false;
        }
        restart_mariadb().await;
        true
    });
    let r = run_job(&e, "j", day("2026-03-01")).await;
    assert!(
        restarter.await.expect("restarter"),
        "the server was restarted mid-export"
    );
    let s = r.steps.iter().find(|s| s.step == "dump").expect("dump");
    assert_eq!(s.state, StepState::Success, "{r:?}");
    assert!(
        s.attempts >= 2,
        "the first attempt died with the server: {r:?}"
    );
    let dir2 = tempfile::tempdir().expect("tmp");
    let undisturbed = job(dir2.path(), &export(&calm, 0)).await;
    let r = run_job(&undisturbed, "j", day("2026-03-01")).await;
    assert_eq!(r.steps[0].state, StepState::Success, "{r:?}");
    let (retried, calm_objects) = (exported_objects(&hit).await, exported_objects(&calm).await);
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].1.len(), 600_000);
    assert!(
        retried == calm_objects,
        "the retry wrote what an undisturbed export writes"
    );
    mysql()
        .await
        .query_drop(format!("DROP TABLE {table}"))
        .await
        .expect("drop");
    for p in [hit, calm] {
        s3c.delete_prefix(&bucket, &format!("{p}/"))
            .await
            .expect("clean");
    }
}
