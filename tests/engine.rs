//! The run engine against the real PostgreSQL and MariaDB, with both metadata-store backends.
//!
//! Each test builds a small project in a temp folder (tables named with a unique suffix), checks it,
//! and runs it through [`Engine`]. The same scenarios run with the SQLite store and with the PostgreSQL
//! store (in a fresh schema).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cranium::check::check;
use cranium::config::interp::Env;
use cranium::engine::{Engine, Rerun, RunOptions};
use cranium::schedule::{parse_time, Interval, Tz};
use cranium::store::{StepState, Store, Trigger};
use tokio_util::sync::CancellationToken;

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";
const MY: &str = "mysql://root@127.0.0.1:3306/test";

fn suffix() -> String {
    format!("{}_{}", std::process::id(), rand::random::<u32>())
}

fn project(dir: &Path, jobs: &[(&str, &str)]) {
    std::fs::write(
        dir.join("cranium.yaml"),
        format!("connections:\n  pg:\n    kind: postgres\n    url: {PG}\n  my:\n    kind: mysql\n    url: {MY}\n"),
    )
    .expect("cranium.yaml");
    std::fs::create_dir_all(dir.join("jobs")).expect("jobs");
    for (name, text) in jobs {
        std::fs::write(dir.join("jobs").join(format!("{name}.yaml")), text).expect("job");
    }
}

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

async fn engine(dir: &Path, backend: Backend) -> Engine {
    let c = check(dir, &Env::default()).expect("project loads");
    assert!(
        !c.diagnostics.has_errors(),
        "{}",
        c.diagnostics.render(&c.project.redactor)
    );
    let url = match backend {
        Backend::Sqlite => "sqlite://.cranium/state.db".to_string(),
        Backend::Postgres => format!("{PG}?schema=cranium_test_{}", suffix()),
    };
    let store = Store::open(&url, dir).await.expect("store");
    Engine::new(c.project.clone(), c.graph.clone(), store)
}

fn day(d: &str) -> Interval {
    let s = parse_time(d, Tz::UTC).expect("date");
    Interval {
        start: s,
        end: s + chrono::Duration::days(1),
    }
}

async fn pg() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(PG, tokio_postgres::NoTls)
        .await
        .expect("connect pg");
    tokio::spawn(conn);
    client
}

async fn count(table: &str) -> i64 {
    pg().await
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .expect("count")
        .get(0)
}

fn state_of(r: &cranium::engine::RunReport, step: &str) -> StepState {
    r.steps
        .iter()
        .find(|s| s.step == step)
        .map(|s| s.state)
        .unwrap_or_else(|| panic!("no step {step} in {r:?}"))
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite_store {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Backend::Sqlite).await } )*
        }
        mod postgres_store {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Backend::Postgres).await } )*
        }
    };
}

both_backends!(
    failure_rolls_back_and_blocks_only_downstream,
    retries_succeed_on_the_third_attempt,
    outputs_flow_to_downstream_templates,
    rerun_failed_reruns_only_what_failed,
);

/// A failing statement rolls back the whole step; its downstream is upstream_failed; an independent
/// branch still runs; the run fails.
async fn failure_rolls_back_and_blocks_only_downstream(backend: Backend) {
    let dir = tempfile::tempdir().expect("tmp");
    let t = format!("eng_rb_{}", suffix());
    project(
        dir.path(),
        &[(
            "j",
            &format!(
                r#"job: j
schedule: "@daily"
start: 2026-01-01
steps:
  - id: setup
    kind: sql
    connection: pg
    query: CREATE TABLE {t} (id int PRIMARY KEY)
  - id: load
    kind: sql
    after: [setup]
    connection: pg
    query: |
      INSERT INTO {t} VALUES (1);
      INSERT INTO {t} VALUES (2);
      SELECT 1 / 0;
  - id: rollup
    kind: sql
    after: [load]
    connection: pg
    query: SELECT count(*) FROM {t}
  - id: independent
    kind: noop
  - id: after_independent
    kind: noop
    after: [independent]
"#
            ),
        )],
    );
    let e = engine(dir.path(), backend).await;
    let r = e
        .run_interval(
            "j",
            day("2026-03-01"),
            &RunOptions::default(),
            CancellationToken::new(),
        )
        .await
        .expect("run");
    assert!(!r.succeeded());
    assert_eq!(state_of(&r, "setup"), StepState::Success);
    assert_eq!(state_of(&r, "load"), StepState::Failed);
    assert_eq!(state_of(&r, "rollup"), StepState::UpstreamFailed);
    assert_eq!(state_of(&r, "independent"), StepState::Success);
    assert_eq!(state_of(&r, "after_independent"), StepState::Success);
    let err = r
        .steps
        .iter()
        .find(|s| s.step == "load")
        .and_then(|s| s.error.clone())
        .unwrap_or_default();
    assert!(
        err.contains("statement 3 of 3")
            && err.contains("22012")
            && err.contains("division by zero"),
        "{err}"
    );
    assert!(err.contains("rolled back"), "{err}");
    // Nothing of the failed step was applied.
    assert_eq!(count(&t).await, 0);
    // The store agrees.
    let rec = e
        .store
        .step_state("j", "rollup", day("2026-03-01").start)
        .await
        .expect("store")
        .expect("record");
    assert_eq!(rec.state, StepState::UpstreamFailed);
    pg().await
        .batch_execute(&format!("DROP TABLE {t}"))
        .await
        .expect("drop");
}

/// `retries: 3` with a step that fails twice and then succeeds: the third attempt is what counts.
async fn retries_succeed_on_the_third_attempt(backend: Backend) {
    let dir = tempfile::tempdir().expect("tmp");
    let t = format!("eng_retry_{}", suffix());
    pg().await
        .batch_execute(&format!("CREATE TABLE {t} (n int)"))
        .await
        .expect("create");
    project(
        dir.path(),
        &[(
            "j",
            &format!(
                r#"job: j
schedule: "@daily"
start: 2026-01-01
steps:
  - id: flaky
    kind: sql
    connection: pg
    transaction: false
    retries: 3
    retry_delay: 10ms
    query: |
      INSERT INTO {t} VALUES (1);
      -- PostgreSQL folds `1 / 0` at plan time, so the divisor must come from the data.
      SELECT 1 / (CASE WHEN (SELECT count(*) FROM {t}) < 3 THEN 0 ELSE 1 END);
  - id: next
    kind: noop
    after: [flaky]
"#
            ),
        )],
    );
    let e = engine(dir.path(), backend).await;
    let iv = day("2026-03-01");
    let r = e
        .run_interval("j", iv, &RunOptions::default(), CancellationToken::new())
        .await
        .expect("run");
    assert!(r.succeeded(), "{r:?}");
    let flaky = r.steps.iter().find(|s| s.step == "flaky").expect("flaky");
    let attempts = e
        .store
        .attempts("j", iv.start, Some("flaky"))
        .await
        .expect("attempts");
    assert_eq!(flaky.attempts, 3, "{attempts:#?}");
    let states: Vec<StepState> = attempts.iter().map(|a| a.state).collect();
    assert_eq!(
        states,
        vec![
            StepState::UpForRetry,
            StepState::UpForRetry,
            StepState::Success
        ]
    );
    assert!(
        attempts[0]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("division by zero"),
        "{attempts:#?}"
    );
    assert_eq!(state_of(&r, "next"), StepState::Success);
    pg().await
        .batch_execute(&format!("DROP TABLE {t}"))
        .await
        .expect("drop");
}

/// A Lua step's outputs are what a downstream SQL template reads.
async fn outputs_flow_to_downstream_templates(backend: Backend) {
    let dir = tempfile::tempdir().expect("tmp");
    let t = format!("eng_out_{}", suffix());
    project(
        dir.path(),
        &[(
            "j",
            &format!(
                r#"job: j
schedule: "@daily"
start: 2026-01-01
params:
  label: "it's"
steps:
  - id: measure
    kind: lua
    code: |
      local rows = cranium.query("pg", "SELECT $1::int + 1 AS n", 41)
      ctx.outputs.n = rows[1].n
      ctx.outputs.day = ctx.interval.ds
  - id: record
    kind: sql
    after: [measure]
    connection: pg
    query: |
      CREATE TABLE {t} AS
      SELECT {{{{ steps.measure.outputs.n }}}} AS n,
             {{{{ steps.measure.outputs.day | sql_literal }}}}::date AS day,
             {{{{ params.label | sql_literal }}}} AS label
"#
            ),
        )],
    );
    let e = engine(dir.path(), backend).await;
    let r = e
        .run_interval(
            "j",
            day("2026-03-01"),
            &RunOptions::default(),
            CancellationToken::new(),
        )
        .await
        .expect("run");
    assert!(r.succeeded(), "{r:?}");
    let row = pg()
        .await
        .query_one(&format!("SELECT n, day::text, label FROM {t}"), &[])
        .await
        .expect("row");
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(row.get::<_, String>(1), "2026-03-01");
    assert_eq!(row.get::<_, String>(2), "it's");
    pg().await
        .batch_execute(&format!("DROP TABLE {t}"))
        .await
        .expect("drop");
}

/// A backfill skips what succeeded; failed intervals wait for `--rerun failed`, which reruns only the
/// failed steps.
async fn rerun_failed_reruns_only_what_failed(backend: Backend) {
    let dir = tempfile::tempdir().expect("tmp");
    let flag = format!("eng_flag_{}", suffix());
    let out = format!("eng_outt_{}", suffix());
    let db = pg().await;
    db.batch_execute(&format!(
        "CREATE TABLE {flag} (ok boolean); CREATE TABLE {out} (day date, step text)"
    ))
    .await
    .expect("create");
    project(
        dir.path(),
        &[(
            "j",
            &format!(
                r#"job: j
schedule: "@daily"
start: 2026-01-01
steps:
  - id: first
    kind: sql
    connection: pg
    query: INSERT INTO {out} VALUES ({{{{ ds | sql_literal }}}}, 'first')
  - id: second
    kind: sql
    after: [first]
    connection: pg
    query: |
      INSERT INTO {out} VALUES ({{{{ ds | sql_literal }}}}, 'second');
      SELECT 1 / (SELECT count(*) FROM {flag})::int;
"#
            ),
        )],
    );
    let e = engine(dir.path(), backend).await;
    let from = parse_time("2026-03-01", Tz::UTC).expect("t");
    let to = parse_time("2026-03-04", Tz::UTC).expect("t");
    let opts = RunOptions {
        trigger: Trigger::Backfill,
        ..RunOptions::default()
    };
    let plan = e.plan_backfill("j", from, to, &opts).await.expect("plan");
    assert_eq!(plan.run.len(), 3);
    let reports = e
        .backfill("j", &plan, &opts, 2, CancellationToken::new(), &|_| {})
        .await
        .expect("backfill");
    assert!(reports.iter().all(|r| !r.succeeded()));
    assert_eq!(count(&out).await, 3, "`second` rolled back each time");

    // Default: failed intervals are left alone.
    let plan = e.plan_backfill("j", from, to, &opts).await.expect("plan");
    assert!(plan.run.is_empty());
    assert_eq!(plan.failed_skipped.len(), 3);

    // Fix the cause and rerun the failed ones: `first` is not run again.
    db.batch_execute(&format!("INSERT INTO {flag} VALUES (true)"))
        .await
        .expect("fix");
    let opts_failed = RunOptions {
        rerun: Rerun::Failed,
        ..opts.clone()
    };
    let plan = e
        .plan_backfill("j", from, to, &opts_failed)
        .await
        .expect("plan");
    assert_eq!(plan.run.len(), 3);
    assert!(
        plan.run
            .iter()
            .all(|(_, steps)| steps == &vec!["second".to_string()]),
        "{:?}",
        plan.run
    );
    let reports = e
        .backfill(
            "j",
            &plan,
            &opts_failed,
            2,
            CancellationToken::new(),
            &|_| {},
        )
        .await
        .expect("backfill");
    assert!(reports.iter().all(|r| r.succeeded()), "{reports:?}");
    let firsts: i64 = db
        .query_one(
            &format!("SELECT count(*) FROM {out} WHERE step = 'first'"),
            &[],
        )
        .await
        .expect("q")
        .get(0);
    let seconds: i64 = db
        .query_one(
            &format!("SELECT count(*) FROM {out} WHERE step = 'second'"),
            &[],
        )
        .await
        .expect("q")
        .get(0);
    assert_eq!((firsts, seconds), (3, 3));

    // Everything is complete now: nothing to do.
    let plan = e.plan_backfill("j", from, to, &opts).await.expect("plan");
    assert!(plan.run.is_empty() && plan.complete.len() == 3);
    db.batch_execute(&format!("DROP TABLE {flag}; DROP TABLE {out}"))
        .await
        .expect("drop");
}

/// A step's timeout cancels the query on the server, within a second of the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_cancel_postgres_and_mysql_queries() {
    let dir = tempfile::tempdir().expect("tmp");
    let marker = format!("cranium_timeout_{}", suffix());
    project(
        dir.path(),
        &[(
            "j",
            &format!(
                r#"job: j
schedule: "@daily"
start: 2026-01-01
steps:
  - id: pg_sleep
    kind: sql
    connection: pg
    timeout: 2s
    query: SELECT pg_sleep(60), '{marker}'
  - id: my_sleep
    kind: sql
    connection: my
    timeout: 2s
    query: SELECT SLEEP(60), '{marker}'
"#
            ),
        )],
    );
    let e = engine(dir.path(), Backend::Sqlite).await;
    let started = Instant::now();
    let r = e
        .run_interval(
            "j",
            day("2026-03-01"),
            &RunOptions::default(),
            CancellationToken::new(),
        )
        .await
        .expect("run");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    for step in ["pg_sleep", "my_sleep"] {
        let s = r.steps.iter().find(|s| s.step == step).expect("step");
        assert_eq!(s.state, StepState::Failed, "{s:?}");
        assert!(
            s.error.as_deref().unwrap_or("").contains("timed out"),
            "{s:?}"
        );
        assert!(s.duration < Duration::from_secs(3), "{s:?}");
    }
    // Neither server still runs the query.
    let n: i64 = pg()
        .await
        .query_one(&format!("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%{marker}%' AND query NOT LIKE '%pg_stat_activity%'"), &[])
        .await
        .expect("activity")
        .get(0);
    assert_eq!(n, 0, "the PostgreSQL query still runs");
    let mut my = mysql_async::Conn::new(mysql_async::Opts::from_url(MY).expect("url"))
        .await
        .expect("mysql");
    use mysql_async::prelude::Queryable;
    let running: Vec<String> = my
        .query(format!("SELECT info FROM information_schema.processlist WHERE info LIKE '%{marker}%' AND info NOT LIKE '%processlist%'"))
        .await
        .expect("processlist");
    assert!(
        running.is_empty(),
        "the MySQL query still runs: {running:?}"
    );
    let _ = my.disconnect().await;
}

/// Selecting steps: globs, --downstream, and an unselected upstream that has not succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_selection() {
    let dir = tempfile::tempdir().expect("tmp");
    project(
        dir.path(),
        &[(
            "j",
            r#"job: j
schedule: "@daily"
start: 2026-01-01
steps:
  - id: extract
    kind: noop
  - id: rollup_a
    kind: noop
    after: [extract]
  - id: rollup_b
    kind: noop
    after: [extract]
  - id: publish
    kind: noop
    after: [rollup_a, rollup_b]
"#,
        )],
    );
    let e = engine(dir.path(), Backend::Sqlite).await;
    let iv = day("2026-03-01");
    // extract never ran: a rollup alone is blocked...
    let opts = RunOptions {
        steps: vec!["rollup_*".into()],
        ..RunOptions::default()
    };
    let r = e
        .run_interval("j", iv, &opts, CancellationToken::new())
        .await
        .expect("run");
    assert_eq!(state_of(&r, "rollup_a"), StepState::UpstreamFailed);
    assert!(r.steps.iter().all(|s| s.step != "publish"));
    // ...unless upstream is ignored.
    let opts_ignore = RunOptions {
        ignore_upstream: true,
        ..opts.clone()
    };
    let r = e
        .run_interval("j", iv, &opts_ignore, CancellationToken::new())
        .await
        .expect("run");
    assert!(r.succeeded());
    // extract with --downstream runs everything; the rollups already succeeded and are skipped.
    let opts = RunOptions {
        steps: vec!["extract".into()],
        downstream: true,
        ..RunOptions::default()
    };
    let r = e
        .run_interval("j", iv, &opts, CancellationToken::new())
        .await
        .expect("run");
    assert!(r.succeeded());
    assert_eq!(r.steps.len(), 4);
    assert!(r
        .steps
        .iter()
        .find(|s| s.step == "rollup_a")
        .is_some_and(|s| s.already_done));
    assert!(r
        .steps
        .iter()
        .find(|s| s.step == "publish")
        .is_some_and(|s| !s.already_done && s.state == StepState::Success));
    // A glob that matches nothing is an error that lists the steps.
    let opts = RunOptions {
        steps: vec!["nope*".into()],
        ..RunOptions::default()
    };
    let err = e
        .run_interval("j", iv, &opts, CancellationToken::new())
        .await
        .expect_err("empty");
    assert!(
        err.to_string()
            .contains("extract, rollup_a, rollup_b, publish"),
        "{err}"
    );
}

/// A cross-job dependency waits for every upstream interval of the same logical period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_job_dependencies_map_intervals() {
    let dir = tempfile::tempdir().expect("tmp");
    project(
        dir.path(),
        &[
            ("hourly", "job: hourly\nschedule: \"@hourly\"\nstart: 2026-01-01\nsteps:\n  - id: land\n    kind: noop\n"),
            ("daily", "job: daily\nschedule: \"@daily\"\nstart: 2026-01-01\nsteps:\n  - id: rollup\n    kind: noop\n    after: [hourly.land]\n"),
        ],
    );
    let e = engine(dir.path(), Backend::Sqlite).await;
    let iv = day("2026-03-01");
    let r = e
        .run_interval(
            "daily",
            iv,
            &RunOptions::default(),
            CancellationToken::new(),
        )
        .await
        .expect("run");
    assert_eq!(state_of(&r, "rollup"), StepState::UpstreamFailed);
    let why = r.steps[0].error.clone().unwrap_or_default();
    assert!(
        why.contains("hourly.land") && why.contains("2026-03-01 00:00"),
        "{why}"
    );
    // Run 23 of the 24 hours: still blocked, on the missing hour.
    let opts = RunOptions {
        trigger: Trigger::Backfill,
        ..RunOptions::default()
    };
    let plan = e
        .plan_backfill(
            "hourly",
            iv.start,
            iv.end - chrono::Duration::hours(1),
            &opts,
        )
        .await
        .expect("plan");
    assert_eq!(plan.run.len(), 23);
    e.backfill("hourly", &plan, &opts, 4, CancellationToken::new(), &|_| {})
        .await
        .expect("backfill");
    let r = e
        .run_interval(
            "daily",
            iv,
            &RunOptions::default(),
            CancellationToken::new(),
        )
        .await
        .expect("run");
    assert!(
        r.steps[0]
            .error
            .clone()
            .unwrap_or_default()
            .contains("23:00"),
        "{r:?}"
    );
    // The last hour arrives while the daily run waits for it.
    let e2 = e.clone();
    let waiter = tokio::spawn(async move {
        let opts = RunOptions {
            upstream_wait: Duration::from_secs(20),
            ..RunOptions::default()
        };
        e2.run_interval("daily", iv, &opts, CancellationToken::new())
            .await
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let last = Interval {
        start: iv.end - chrono::Duration::hours(1),
        end: iv.end,
    };
    let r = e
        .run_interval(
            "hourly",
            last,
            &RunOptions::default(),
            CancellationToken::new(),
        )
        .await
        .expect("run");
    assert!(r.succeeded());
    let r = waiter.await.expect("join").expect("run");
    assert!(r.succeeded(), "{r:?}");
}

/// Cancelling a run stops its running steps and leaves the rest pending for a resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_running_steps() {
    let dir = tempfile::tempdir().expect("tmp");
    project(
        dir.path(),
        &[(
            "j",
            "job: j\nschedule: \"@daily\"\nstart: 2026-01-01\nsteps:\n  - id: slow\n    kind: sql\n    connection: pg\n    query: SELECT pg_sleep(30)\n  - id: later\n    kind: noop\n    after: [slow]\n",
        )],
    );
    let e = engine(dir.path(), Backend::Sqlite).await;
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        c2.cancel();
    });
    let started = Instant::now();
    let r = e
        .run_interval("j", day("2026-03-01"), &RunOptions::default(), cancel)
        .await
        .expect("run");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(!r.succeeded());
    // The interrupted step and its downstream stay pending, so a resumed run picks them up.
    assert_eq!(state_of(&r, "slow"), StepState::Pending);
    assert!(
        r.steps.iter().all(|s| s.step != "later"),
        "later stays pending: {r:?}"
    );
    let slow = e
        .store
        .step_state("j", "slow", day("2026-03-01").start)
        .await
        .expect("store")
        .expect("record");
    assert_eq!(slow.state, StepState::Pending);
    let rec = e
        .store
        .step_state("j", "later", day("2026-03-01").start)
        .await
        .expect("store")
        .expect("record");
    assert_eq!(rec.state, StepState::Pending);
    let _ = Arc::clone(&e.project);
}

/// `sql` steps borrow pooled connections: 8 steps at once on a connection with
/// `max_connections: 2` use at most 2 server sessions, across runs too, and what one step sets in
/// its session (search_path) does not leak into the next step that gets the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_steps_share_pooled_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = format!("pool_{}", suffix());
    std::fs::write(
        dir.path().join("cranium.yaml"),
        format!("connections:\n  pg:\n    kind: postgres\n    url: {PG}\n    max_connections: 2\n"),
    )
    .expect("cranium.yaml");
    std::fs::create_dir_all(dir.path().join("jobs")).expect("jobs");
    let mut steps = String::new();
    for i in 0..8 {
        steps.push_str(&format!(
            "  - id: s{i}\n    kind: sql\n    connection: pg\n    query: \"INSERT INTO public.{t} VALUES (pg_backend_pid(), {i}, current_setting('search_path')); SET search_path TO nowhere_{i}; SELECT pg_sleep(0.2)\"\n    transaction: false\n"
        ));
    }
    std::fs::write(
        dir.path().join("jobs/p.yaml"),
        format!("job: p\nschedule: \"@daily\"\nstart: 2026-03-01\nsteps:\n{steps}"),
    )
    .expect("job");
    pg().await
        .batch_execute(&format!(
            "CREATE TABLE public.{t} (pid int, step int, search_path text)"
        ))
        .await
        .expect("create");
    let eng = engine(dir.path(), Backend::Sqlite).await;
    for d in ["2026-03-01", "2026-03-02"] {
        let r = eng
            .run_interval(
                "p",
                day(d),
                &RunOptions::default(),
                CancellationToken::new(),
            )
            .await
            .expect("run");
        assert!(r.succeeded(), "{:?}", r.steps);
    }
    let client = pg().await;
    let pids: i64 = client
        .query_one(&format!("SELECT count(DISTINCT pid) FROM public.{t}"), &[])
        .await
        .expect("pids")
        .get(0);
    let rows: i64 = client
        .query_one(&format!("SELECT count(*) FROM public.{t}"), &[])
        .await
        .expect("rows")
        .get(0);
    assert_eq!(rows, 16);
    assert!(pids <= 2, "16 steps used {pids} server sessions");
    // No step saw another's SET: the session was reset before the next borrower.
    let leaked: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM public.{t} WHERE search_path LIKE '%nowhere%'"),
            &[],
        )
        .await
        .expect("leaks")
        .get(0);
    assert_eq!(leaked, 0);
    client
        .batch_execute(&format!("DROP TABLE public.{t}"))
        .await
        .expect("drop");
}
