//! The metadata store's test suite, run against both real backends.
//!
//! Why it exists: the engine relies on the SQLite and PostgreSQL stores behaving identically
//! (the same records, orders, range boundaries and recovery rules), so every check here is one
//! async fn run twice, as `sqlite::NAME` against a file in a temp folder and as `postgres::NAME`
//! against the PostgreSQL server (`CRANIUM_TEST_POSTGRES`, default
//! `postgres://postgres@127.0.0.1:5432/test`) in a fresh random schema that is dropped afterwards.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, TimeDelta, TimeZone, Utc};
use cranium::schedule::Interval;
use cranium::store::{
    AlertRecord, AlertState, AttemptResult, Claim, ConsumerLag, Decision, Enqueued, NewAction,
    NewAlert, RequestKind, RequestState, RunFilter, RunState, StepState, Store, StoreError,
    Trigger, INTERRUPTED,
};
use serde_json::json;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

fn pg_base_url() -> String {
    std::env::var("CRANIUM_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// A store under test plus what is needed to reopen it and reach it directly.
struct Harness {
    store: Store,
    url: String,
    root: PathBuf,
    _dir: tempfile::TempDir,
    pg_schema: Option<String>,
}

impl Harness {
    async fn sqlite() -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = "sqlite://.cranium/state.db".to_string();
        let store = Store::open(&url, dir.path()).await.expect("open sqlite");
        assert_eq!(store.backend(), "sqlite");
        Harness {
            store,
            url,
            root: dir.path().to_path_buf(),
            _dir: dir,
            pg_schema: None,
        }
    }

    async fn postgres() -> Harness {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = Utc::now().timestamp_subsec_nanos();
        let schema = format!(
            "cranium_test_{}_{}_{}",
            std::process::id(),
            nanos,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("{}?schema={schema}", pg_base_url());
        let store = Store::open(&url, dir.path()).await.expect("open postgres");
        assert_eq!(store.backend(), "postgres");
        Harness {
            store,
            url,
            root: dir.path().to_path_buf(),
            _dir: dir,
            pg_schema: Some(schema),
        }
    }

    async fn reopen(&self) -> Result<Store, StoreError> {
        Store::open(&self.url, &self.root).await
    }

    fn sqlite_path(&self) -> PathBuf {
        self.root.join(".cranium/state.db")
    }

    /// Runs SQL on the store's database directly, around the store.
    async fn raw_exec(&self, sql: &str) {
        match &self.pg_schema {
            None => {
                let conn = rusqlite::Connection::open(self.sqlite_path()).expect("raw open");
                conn.busy_timeout(Duration::from_secs(10)).expect("busy");
                conn.execute_batch(sql).expect("raw exec");
            }
            Some(schema) => {
                let client = pg_client().await;
                client
                    .batch_execute(&format!("SET search_path TO {schema}; {sql}"))
                    .await
                    .expect("raw exec");
            }
        }
    }

    /// The first column of each row of `sql`, as text.
    async fn raw_strings(&self, sql: &str) -> Vec<String> {
        match &self.pg_schema {
            None => {
                let conn = rusqlite::Connection::open(self.sqlite_path()).expect("raw open");
                let mut stmt = conn.prepare(sql).expect("prepare");
                let rows = stmt
                    .query_map([], |row| row.get::<_, String>(0))
                    .expect("query");
                rows.collect::<Result<_, _>>().expect("rows")
            }
            Some(schema) => {
                let client = pg_client().await;
                client
                    .batch_execute(&format!("SET search_path TO {schema}"))
                    .await
                    .expect("search_path");
                let rows = client.query(sql, &[]).await.expect("query");
                rows.iter().map(|r| r.get::<_, String>(0)).collect()
            }
        }
    }
}

async fn pg_client() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&pg_base_url(), tokio_postgres::NoTls)
        .await
        .expect("connect to the test PostgreSQL");
    tokio::spawn(conn);
    client
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Drop the test schema even when the test panicked: on a thread with its own runtime,
        // since this may run inside the test's runtime.
        if let Some(schema) = self.pg_schema.take() {
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    let client = pg_client().await;
                    client
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                        .await
                        .expect("drop test schema");
                });
            })
            .join();
        }
    }
}

/// Generates `sqlite::NAME` and `postgres::NAME` tests for each suite function.
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let h = super::Harness::sqlite().await;
                    super::$name(&h).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let h = super::Harness::postgres().await;
                    super::$name(&h).await;
                }
            )*
        }
    };
}

suite!(
    migrations_are_idempotent,
    consumer_lag_keeps_the_latest_per_partition,
    newer_store_is_refused,
    run_lifecycle,
    step_state_upserts_keep_the_latest,
    attempts_history_is_kept_across_retries_and_reruns,
    step_states_range_is_half_open,
    clear_marks_pending_and_keeps_history,
    recover_stale_fails_dead_runs,
    runs_filter_limit_and_order,
    outputs_json_round_trip,
    concurrent_writers_lose_nothing,
    write_timing,
    schedule_interval_decides_once,
    last_scheduled_is_the_latest_interval_per_job,
    daemon_runs_are_queued_in_order,
    requeue_stale_requeues_dead_daemon_runs_only,
    claim_step_leases,
    leases_renew_and_release,
    an_expired_lease_nobody_took_is_renewed_after_an_outage,
    pausing_jobs,
    requests_lifecycle,
    requests_are_claimed_by_one_daemon,
    daemon_heartbeats,
    concurrent_claims_acquire_once,
    pools_are_shared_by_every_runner,
    late_writes_of_a_lost_lease_are_refused,
    a_run_taken_over_cannot_be_started_late,
    dashboard_actions_are_recorded_once_per_nonce,
    consumer_lag_is_kept_over_time,
    changed_steps_are_read_since_a_moment,
    a_succeeded_attempt_and_its_step_record_are_written_together,
    concurrent_decisions_create_one_run,
    alerts_are_throttled_per_channel_and_key,
    due_alerts_and_tries,
    alerts_are_listed_newest_first,
    alert_conditions_close_once,
    sla_alerts_are_claimed_once,
    concurrent_enqueues_queue_once,
);

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 7, 0, 0, 0).unwrap()
}

fn hour(k: i64) -> Interval {
    Interval {
        start: t0() + TimeDelta::hours(k),
        end: t0() + TimeDelta::hours(k + 1),
    }
}

/// Now, truncated to the microseconds both stores keep.
fn now_micros() -> DateTime<Utc> {
    Utc::now()
        .duration_trunc(TimeDelta::microseconds(1))
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The suite
// ---------------------------------------------------------------------------------------------

async fn migrations_are_idempotent(h: &Harness) {
    let sql = "SELECT version || ' ' || applied_at FROM cranium_schema_migrations ORDER BY version";
    let before = h.raw_strings(sql).await;
    assert_eq!(before.len(), 8, "eight migrations recorded: {before:?}");
    for (i, m) in before.iter().enumerate() {
        assert!(m.starts_with(&format!("{} ", i + 1)), "{before:?}");
    }

    let id = h
        .store
        .create_run("job", hour(0), Trigger::Manual)
        .await
        .unwrap();
    // Opening again (twice) applies nothing and sees the same data.
    for _ in 0..2 {
        let again = h.reopen().await.expect("reopen");
        assert_eq!(h.raw_strings(sql).await, before);
        assert_eq!(again.run(id).await.unwrap().unwrap().job, "job");
    }
}

async fn consumer_lag_keeps_the_latest_per_partition(h: &Harness) {
    let run = h
        .store
        .create_run("events_hourly", hour(0), Trigger::Manual)
        .await
        .unwrap();
    let row = |job: &str, p: i32, committed: i64, end: i64| ConsumerLag {
        job: job.to_string(),
        step: "extract".to_string(),
        topic: "app_events".to_string(),
        partition: p,
        committed_offset: committed,
        end_offset: end,
        lag: end - committed,
        run_id: Some(run),
        recorded_at: now_micros(),
    };
    assert!(h.store.consumer_lag(None).await.unwrap().is_empty());
    h.store
        .record_consumer_lag(&[
            row("events_hourly", 0, 10, 15),
            row("events_hourly", 1, 7, 7),
        ])
        .await
        .unwrap();
    h.store
        .record_consumer_lag(&[row("other", 0, 1, 2)])
        .await
        .unwrap();
    // A later run replaces a partition's row.
    let later = row("events_hourly", 0, 15, 40);
    h.store
        .record_consumer_lag(std::slice::from_ref(&later))
        .await
        .unwrap();
    let got = h.store.consumer_lag(Some("events_hourly")).await.unwrap();
    let summary: Vec<(i32, i64, i64, i64)> = got
        .iter()
        .map(|r| (r.partition, r.committed_offset, r.end_offset, r.lag))
        .collect();
    assert_eq!(summary, [(0, 15, 40, 25), (1, 7, 7, 0)]);
    assert_eq!(got[0], later, "every field round-trips");
    assert_eq!(h.store.consumer_lag(None).await.unwrap().len(), 3);
}

async fn newer_store_is_refused(h: &Harness) {
    h.raw_exec(
        "INSERT INTO cranium_schema_migrations (version, applied_at) \
         VALUES (9999, '2030-01-01T00:00:00.000000Z')",
    )
    .await;
    let err = h.reopen().await.expect_err("a newer store must be refused");
    assert!(matches!(err, StoreError::Migration(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("9999") && msg.contains("newer") && msg.contains("upgrade cranium"),
        "{msg}"
    );
}

async fn run_lifecycle(h: &Harness) {
    let s = &h.store;
    let before = now_micros();
    let id = s
        .create_run("events_daily", hour(3), Trigger::Schedule)
        .await
        .unwrap();
    let r = s.run(id).await.unwrap().expect("created run");
    assert_eq!(r.id, id);
    assert_eq!(r.job, "events_daily");
    assert_eq!(r.interval, hour(3));
    assert_eq!(r.state, RunState::Queued);
    assert_eq!(r.trigger, Trigger::Schedule);
    assert!(
        r.created_at >= before && r.created_at <= Utc::now(),
        "{r:?}"
    );
    assert_eq!((r.started_at, r.ended_at), (None, None));

    s.set_run_state(id, RunState::Running).await.unwrap();
    let r = s.run(id).await.unwrap().unwrap();
    assert_eq!(r.state, RunState::Running);
    let started = r.started_at.expect("Running sets started_at");
    assert!(started >= r.created_at);
    assert_eq!(r.ended_at, None);

    s.heartbeat(id).await.unwrap();
    s.set_run_state(id, RunState::Success).await.unwrap();
    let r = s.run(id).await.unwrap().unwrap();
    assert_eq!(r.state, RunState::Success);
    assert_eq!(r.started_at, Some(started), "ending keeps started_at");
    assert!(r.ended_at.expect("Success sets ended_at") >= started);

    let failed = s
        .create_run("events_daily", hour(4), Trigger::Backfill)
        .await
        .unwrap();
    s.set_run_state(failed, RunState::Failed).await.unwrap();
    let r = s.run(failed).await.unwrap().unwrap();
    assert_eq!((r.state, r.trigger), (RunState::Failed, Trigger::Backfill));
    assert!(r.ended_at.is_some());

    assert_eq!(s.run(987_654).await.unwrap(), None);
    let err = s
        .set_run_state(987_654, RunState::Running)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NotFound {
                what: "run",
                id: 987_654
            }
        ),
        "{err:?}"
    );
    assert!(s.heartbeat(987_654).await.is_err());
}

async fn step_state_upserts_keep_the_latest(h: &Harness) {
    let s = &h.store;
    let run1 = s.create_run("j", hour(0), Trigger::Manual).await.unwrap();
    let run2 = s.create_run("j", hour(0), Trigger::Manual).await.unwrap();
    assert_eq!(
        s.step_state("j", "load", hour(0).start).await.unwrap(),
        None
    );

    s.set_step_state(run1, "j", "load", hour(0), StepState::Pending, 0, None)
        .await
        .unwrap();
    let r = s
        .step_state("j", "load", hour(0).start)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (r.job.as_str(), r.step.as_str(), r.interval, r.state),
        ("j", "load", hour(0), StepState::Pending)
    );
    assert_eq!((r.run_id, r.attempt), (Some(run1), 0));
    assert_eq!(r.outputs, serde_json::Value::Null);
    let first_update = r.updated_at;

    s.set_step_state(run1, "j", "load", hour(0), StepState::Running, 1, None)
        .await
        .unwrap();
    s.set_step_state(
        run1,
        "j",
        "load",
        hour(0),
        StepState::Success,
        1,
        Some(&json!({"rows": 3})),
    )
    .await
    .unwrap();
    let r = s
        .step_state("j", "load", hour(0).start)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((r.state, r.attempt), (StepState::Success, 1));
    assert_eq!(r.outputs, json!({"rows": 3}));
    assert!(r.updated_at >= first_update);

    // A rerun by another run: outputs kept when None, replaced when Some.
    s.set_step_state(run2, "j", "load", hour(0), StepState::Running, 2, None)
        .await
        .unwrap();
    let r = s
        .step_state("j", "load", hour(0).start)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (r.state, r.run_id, r.attempt),
        (StepState::Running, Some(run2), 2)
    );
    assert_eq!(r.outputs, json!({"rows": 3}));
    s.set_step_state(
        run2,
        "j",
        "load",
        hour(0),
        StepState::Failed,
        2,
        Some(&json!(null)),
    )
    .await
    .unwrap();
    let r = s
        .step_state("j", "load", hour(0).start)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.state, StepState::Failed);
    assert_eq!(r.outputs, serde_json::Value::Null);

    // Exactly one record for the key; other steps and jobs are separate.
    s.set_step_state(run2, "j", "other", hour(0), StepState::Skipped, 0, None)
        .await
        .unwrap();
    s.set_step_state(
        run2,
        "k",
        "load",
        hour(0),
        StepState::UpstreamFailed,
        0,
        None,
    )
    .await
    .unwrap();
    let all = s
        .step_states("j", DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC)
        .await
        .unwrap();
    let states: Vec<_> = all.iter().map(|r| (r.step.as_str(), r.state)).collect();
    assert_eq!(
        states,
        [("load", StepState::Failed), ("other", StepState::Skipped)]
    );
    let k = s
        .step_state("k", "load", hour(0).start)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(k.state, StepState::UpstreamFailed);
    assert!(k.state.is_terminal() && !StepState::UpForRetry.is_terminal());
}

async fn attempts_history_is_kept_across_retries_and_reruns(h: &Harness) {
    let s = &h.store;
    let iv = hour(5);
    let run1 = s.create_run("j", iv, Trigger::Schedule).await.unwrap();

    let before = now_micros();
    let a1 = s
        .begin_attempt(run1, "j", "load", iv, 1, "logs/j/load/1.log")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    s.finish_attempt(
        a1,
        &AttemptResult {
            state: Some(StepState::UpForRetry),
            error: Some("connection reset".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let a2 = s
        .begin_attempt(run1, "j", "load", iv, 2, "logs/j/load/2.log")
        .await
        .unwrap();
    s.finish_attempt(
        a2,
        &AttemptResult {
            state: Some(StepState::Success),
            rows_affected: Some(1234),
            bytes: Some(5_000_000_000),
            outputs: json!({"manifest": "s3://b/k"}),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let other = s
        .begin_attempt(run1, "j", "transform", iv, 1, "")
        .await
        .unwrap();
    // A rerun of the interval: a new run, attempt numbers start again.
    let run2 = s.create_run("j", iv, Trigger::Manual).await.unwrap();
    let a3 = s
        .begin_attempt(run2, "j", "load", iv, 1, "logs/j/load/3.log")
        .await
        .unwrap();
    s.finish_attempt(a3, &AttemptResult::default())
        .await
        .unwrap();
    let a4 = s
        .begin_attempt(run2, "j", "load", iv, 2, "logs/j/load/4.log")
        .await
        .unwrap();
    s.finish_attempt(
        a4,
        &AttemptResult {
            error: Some("boom".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    let load = s.attempts("j", iv.start, Some("load")).await.unwrap();
    let ids: Vec<i64> = load.iter().map(|a| a.id).collect();
    assert_eq!(ids, [a1, a2, a3, a4], "oldest first, nothing lost");
    let summary: Vec<_> = load
        .iter()
        .map(|a| (a.run_id, a.attempt, a.state))
        .collect();
    assert_eq!(
        summary,
        [
            (run1, 1, StepState::UpForRetry),
            (run1, 2, StepState::Success),
            (run2, 1, StepState::Success),
            (run2, 2, StepState::Failed),
        ]
    );
    let first = &load[0];
    assert_eq!(
        (first.job.as_str(), first.step.as_str(), first.interval),
        ("j", "load", iv)
    );
    assert_eq!(first.error.as_deref(), Some("connection reset"));
    assert_eq!(first.log_path.as_deref(), Some("logs/j/load/1.log"));
    assert!(first.started_at >= before);
    let ended = first.ended_at.expect("finished attempts have ended_at");
    assert!(ended >= first.started_at);
    let ms = first.duration_ms.expect("duration_ms");
    assert!((25..10_000).contains(&ms), "duration {ms} ms");
    assert_eq!(first.outputs, serde_json::Value::Null);
    assert_eq!(
        (load[1].rows_affected, load[1].bytes),
        (Some(1234), Some(5_000_000_000))
    );
    assert_eq!(load[1].outputs, json!({"manifest": "s3://b/k"}));
    assert_eq!(load[1].error, None);
    assert_eq!(load[3].error.as_deref(), Some("boom"));

    let all = s.attempts("j", iv.start, None).await.unwrap();
    assert_eq!(all.len(), 5);
    let t = all.iter().find(|a| a.id == other).unwrap();
    assert_eq!(
        (t.state, t.ended_at, t.duration_ms, t.log_path.as_deref()),
        (StepState::Running, None, None, None)
    );
    assert!(s
        .attempts("j", hour(6).start, None)
        .await
        .unwrap()
        .is_empty());
    let err = s
        .finish_attempt(424_242, &AttemptResult::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NotFound {
                what: "attempt",
                ..
            }
        ),
        "{err:?}"
    );
    // An attempt of a run that does not exist is refused (foreign key).
    assert!(s
        .begin_attempt(424_242, "j", "load", iv, 1, "")
        .await
        .is_err());
}

async fn step_states_range_is_half_open(h: &Harness) {
    let s = &h.store;
    let run = s.create_run("j", hour(0), Trigger::Backfill).await.unwrap();
    for k in (0..5).rev() {
        for step in ["b", "a"] {
            s.set_step_state(run, "j", step, hour(k), StepState::Success, 1, None)
                .await
                .unwrap();
        }
    }
    s.set_step_state(run, "other", "a", hour(1), StepState::Success, 1, None)
        .await
        .unwrap();

    let got = s
        .step_states("j", hour(1).start, hour(3).start)
        .await
        .unwrap();
    let keys: Vec<_> = got
        .iter()
        .map(|r| (r.interval.start, r.step.as_str()))
        .collect();
    assert_eq!(
        keys,
        [
            (hour(1).start, "a"),
            (hour(1).start, "b"),
            (hour(2).start, "a"),
            (hour(2).start, "b"),
        ],
        "[from, to): from included, to excluded, ordered by start then step"
    );
    assert!(got.iter().all(|r| r.job == "j"));
    // One microsecond either side.
    let us = TimeDelta::microseconds(1);
    assert_eq!(
        s.step_states("j", hour(1).start + us, hour(3).start + us)
            .await
            .unwrap()
            .len(),
        4
    );
    assert_eq!(
        s.step_states("j", hour(1).start - us, hour(3).start - us)
            .await
            .unwrap()
            .len(),
        4
    );
    assert!(s
        .step_states("j", hour(2).start, hour(2).start)
        .await
        .unwrap()
        .is_empty());
    assert!(s
        .step_states("j", hour(3).start, hour(1).start)
        .await
        .unwrap()
        .is_empty());
    let everything = s
        .step_states("j", DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC)
        .await
        .unwrap();
    assert_eq!(everything.len(), 10);
    assert_eq!(everything[0].interval, hour(0));
    assert_eq!(everything[9].interval, hour(4));
    assert!(s
        .step_states("nope", t0(), t0() + TimeDelta::days(1))
        .await
        .unwrap()
        .is_empty());
}

async fn clear_marks_pending_and_keeps_history(h: &Harness) {
    let s = &h.store;
    let run = s.create_run("j", hour(0), Trigger::Backfill).await.unwrap();
    for k in 0..5 {
        for (step, state) in [
            ("a", StepState::Success),
            ("b", StepState::Failed),
            ("c", StepState::Success),
        ] {
            let id = s
                .begin_attempt(run, "j", step, hour(k), 1, "")
                .await
                .unwrap();
            s.finish_attempt(
                id,
                &AttemptResult {
                    state: Some(state),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            s.set_step_state(run, "j", step, hour(k), state, 1, Some(&json!({"k": k})))
                .await
                .unwrap();
        }
    }
    s.set_step_state(run, "other", "a", hour(1), StepState::Success, 1, None)
        .await
        .unwrap();

    let n = s
        .clear("j", hour(1).start, hour(3).start, &[])
        .await
        .unwrap();
    assert_eq!(n, 6, "all steps of intervals 1 and 2");
    let states: Vec<_> = s
        .step_states("j", t0(), hour(5).start)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.interval.start, r.step, r.state))
        .collect();
    for (start, step, state) in &states {
        let cleared = *start >= hour(1).start && *start < hour(3).start;
        assert_eq!(
            *state == StepState::Pending,
            cleared,
            "{start} {step} {state}"
        );
    }
    // Attempts stay.
    for k in 0..5 {
        assert_eq!(s.attempts("j", hour(k).start, None).await.unwrap().len(), 3);
    }
    // Clearing again changes nothing; a step list limits it; other jobs are untouched.
    assert_eq!(
        s.clear("j", hour(1).start, hour(3).start, &[])
            .await
            .unwrap(),
        0
    );
    let n = s
        .clear(
            "j",
            DateTime::<Utc>::MIN_UTC,
            DateTime::<Utc>::MAX_UTC,
            &["b".to_string(), "zzz".to_string()],
        )
        .await
        .unwrap();
    assert_eq!(n, 3, "b of intervals 0, 3 and 4");
    let r = s
        .step_state("j", "b", hour(4).start)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.state, StepState::Pending);
    assert_eq!(r.outputs, json!({"k": 4}), "clear keeps the last outputs");
    let r = s
        .step_state("j", "a", hour(4).start)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.state, StepState::Success);
    let r = s
        .step_state("other", "a", hour(1).start)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.state, StepState::Success);
}

async fn recover_stale_fails_dead_runs(h: &Harness) {
    let s = &h.store;
    let iv = hour(0);
    let dead = s.create_run("j", iv, Trigger::Schedule).await.unwrap();
    let alive = s.create_run("j", hour(1), Trigger::Schedule).await.unwrap();
    let done = s.create_run("j", hour(2), Trigger::Schedule).await.unwrap();
    let queued = s.create_run("j", hour(3), Trigger::Schedule).await.unwrap();
    for id in [dead, alive, done] {
        s.set_run_state(id, RunState::Running).await.unwrap();
    }
    s.set_run_state(done, RunState::Success).await.unwrap();

    // The dead run: one step running, one finished, one waiting for a retry.
    s.set_step_state(dead, "j", "a", iv, StepState::Running, 1, None)
        .await
        .unwrap();
    let running_attempt = s.begin_attempt(dead, "j", "a", iv, 1, "").await.unwrap();
    s.set_step_state(dead, "j", "b", iv, StepState::Success, 1, None)
        .await
        .unwrap();
    let finished_attempt = s.begin_attempt(dead, "j", "b", iv, 1, "").await.unwrap();
    s.finish_attempt(finished_attempt, &AttemptResult::default())
        .await
        .unwrap();
    s.set_step_state(dead, "j", "c", iv, StepState::UpForRetry, 1, None)
        .await
        .unwrap();
    s.set_step_state(alive, "j", "a", hour(1), StepState::Running, 1, None)
        .await
        .unwrap();
    let alive_attempt = s
        .begin_attempt(alive, "j", "a", hour(1), 1, "")
        .await
        .unwrap();

    assert_eq!(s.recover_stale(Duration::from_secs(3600)).await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.heartbeat(alive).await.unwrap();
    assert_eq!(
        s.recover_stale(Duration::from_millis(750)).await.unwrap(),
        1
    );

    let r = s.run(dead).await.unwrap().unwrap();
    assert_eq!(r.state, RunState::Failed);
    assert!(r.ended_at.is_some());
    let states: Vec<_> = s
        .step_states("j", iv.start, iv.end)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.step, r.state))
        .collect();
    assert_eq!(
        states,
        [
            ("a".to_string(), StepState::Pending),
            ("b".to_string(), StepState::Success),
            ("c".to_string(), StepState::Pending),
        ]
    );
    let attempts = s.attempts("j", iv.start, None).await.unwrap();
    let a = attempts.iter().find(|a| a.id == running_attempt).unwrap();
    assert_eq!(a.state, StepState::Failed);
    assert_eq!(a.error.as_deref(), Some(INTERRUPTED));
    assert_eq!(INTERRUPTED, "interrupted: the process running it stopped");
    assert!(a.ended_at.is_some() && a.duration_ms.unwrap_or(-1) >= 1000);
    let b = attempts.iter().find(|a| a.id == finished_attempt).unwrap();
    assert_eq!((b.state, b.error.as_deref()), (StepState::Success, None));

    assert_eq!(
        s.run(alive).await.unwrap().unwrap().state,
        RunState::Running
    );
    let alive_attempts = s.attempts("j", hour(1).start, None).await.unwrap();
    assert_eq!(alive_attempts[0].id, alive_attempt);
    assert_eq!(alive_attempts[0].state, StepState::Running);
    assert_eq!(s.run(done).await.unwrap().unwrap().state, RunState::Success);
    assert_eq!(
        s.run(queued).await.unwrap().unwrap().state,
        RunState::Queued
    );
    // Already recovered: nothing more.
    assert_eq!(
        s.recover_stale(Duration::from_millis(750)).await.unwrap(),
        0
    );
    // With no grace at all, every Running run is stale.
    assert_eq!(s.recover_stale(Duration::ZERO).await.unwrap(), 1);
    assert_eq!(s.run(alive).await.unwrap().unwrap().state, RunState::Failed);
    // A huge grace never overflows.
    assert_eq!(s.recover_stale(Duration::MAX).await.unwrap(), 0);
}

async fn runs_filter_limit_and_order(h: &Harness) {
    let s = &h.store;
    let mut ids = Vec::new();
    for (job, k, state) in [
        ("x", 0, RunState::Success),
        ("y", 0, RunState::Failed),
        ("x", 1, RunState::Failed),
        ("x", 2, RunState::Running),
        ("y", 1, RunState::Success),
    ] {
        let id = s.create_run(job, hour(k), Trigger::Schedule).await.unwrap();
        s.set_run_state(id, state).await.unwrap();
        ids.push(id);
    }
    let list = |f: RunFilter| async move {
        s.runs(&f)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        list(RunFilter::default()).await,
        [ids[4], ids[3], ids[2], ids[1], ids[0]],
        "newest first"
    );
    assert_eq!(
        list(RunFilter {
            job: Some("x".into()),
            ..Default::default()
        })
        .await,
        [ids[3], ids[2], ids[0]]
    );
    assert_eq!(
        list(RunFilter {
            state: Some(RunState::Failed),
            ..Default::default()
        })
        .await,
        [ids[2], ids[1]]
    );
    assert_eq!(
        list(RunFilter {
            job: Some("y".into()),
            state: Some(RunState::Success),
            limit: 0,
        })
        .await,
        [ids[4]]
    );
    assert_eq!(
        list(RunFilter {
            limit: 2,
            ..Default::default()
        })
        .await,
        [ids[4], ids[3]]
    );
    assert_eq!(
        list(RunFilter {
            job: Some("x".into()),
            limit: 1,
            ..Default::default()
        })
        .await,
        [ids[3]]
    );
    assert!(list(RunFilter {
        job: Some("none".into()),
        ..Default::default()
    })
    .await
    .is_empty());
    let full = s
        .runs(&RunFilter {
            job: Some("x".into()),
            state: Some(RunState::Running),
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(full.len(), 1);
    assert_eq!(full[0].interval, hour(2));
    assert_eq!(full[0], s.run(ids[3]).await.unwrap().unwrap());
}

async fn outputs_json_round_trip(h: &Harness) {
    let s = &h.store;
    let run = s.create_run("j", hour(0), Trigger::Manual).await.unwrap();
    let values = [
        json!({
            "name": "café ☕ 日本語 🚀 שלום",
            "nested": {
                "list": [1, -2, 2.5, 1e-7, true, false, null, "x", [], {}],
                "deep": {"quote": "\"q\" \\ back\nnew\tline", "emoji_key_🔑": "v"},
            },
            "big": 9_007_199_254_740_993_u64,
            "neg": -9_223_372_036_854_775_808_i64,
            "empty": "",
        }),
        json!([1, "two", {"three": 3}]),
        json!("just a string ✓"),
        json!(42),
        serde_json::Value::Null,
    ];
    for (k, v) in values.iter().enumerate() {
        let step = format!("s{k}");
        s.set_step_state(run, "j", &step, hour(0), StepState::Success, 1, Some(v))
            .await
            .unwrap();
        let r = s
            .step_state("j", &step, hour(0).start)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&r.outputs, v);
        let a = s
            .begin_attempt(run, "j", &step, hour(0), 1, "")
            .await
            .unwrap();
        s.finish_attempt(
            a,
            &AttemptResult {
                outputs: v.clone(),
                error: Some("ünïcödé error ✗".into()),
                state: Some(StepState::Failed),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let got = s.attempts("j", hour(0).start, Some(&step)).await.unwrap();
        assert_eq!(&got[0].outputs, v);
        assert_eq!(got[0].error.as_deref(), Some("ünïcödé error ✗"));
    }
    // Unicode in keys too: job and step names.
    s.set_step_state(
        run,
        "jöb ✓",
        "stép 🚀",
        hour(0),
        StepState::Success,
        0,
        None,
    )
    .await
    .unwrap();
    assert!(s
        .step_state("jöb ✓", "stép 🚀", hour(0).start)
        .await
        .unwrap()
        .is_some());
}

async fn concurrent_writers_lose_nothing(h: &Harness) {
    const TASKS: usize = 8;
    const STEPS: usize = 25;
    // Half the writers go through a second, independent store on the same database (for SQLite:
    // another connection to the file, so writers wait on each other's locks).
    let second = h.reopen().await.expect("second store");
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let s = if t % 2 == 0 {
            h.store.clone()
        } else {
            second.clone()
        };
        handles.push(tokio::spawn(async move {
            let run = s
                .create_run("conc", hour(t as i64), Trigger::Backfill)
                .await?;
            s.set_run_state(run, RunState::Running).await?;
            for i in 0..STEPS {
                let step = format!("t{t}_s{i:02}");
                let iv = hour(0);
                s.set_step_state(run, "conc", &step, iv, StepState::Running, 1, None)
                    .await?;
                let a = s.begin_attempt(run, "conc", &step, iv, 1, "").await?;
                s.finish_attempt(
                    a,
                    &AttemptResult {
                        outputs: json!({"t": t, "i": i}),
                        ..Default::default()
                    },
                )
                .await?;
                s.set_step_state(
                    run,
                    "conc",
                    &step,
                    iv,
                    StepState::Success,
                    1,
                    Some(&json!({"t": t, "i": i})),
                )
                .await?;
                // Everyone also fights over one shared record.
                s.set_step_state(
                    run,
                    "conc",
                    "shared",
                    iv,
                    StepState::Success,
                    i as u32,
                    Some(&json!({"t": t})),
                )
                .await?;
                s.heartbeat(run).await?;
            }
            s.set_run_state(run, RunState::Success).await?;
            Ok::<i64, StoreError>(run)
        }));
    }
    let mut runs = Vec::new();
    for handle in handles {
        runs.push(handle.await.expect("task").expect("writes succeed"));
    }
    let mut distinct = runs.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), TASKS, "distinct run ids");

    let records = h
        .store
        .step_states("conc", hour(0).start, hour(0).end)
        .await
        .unwrap();
    assert_eq!(records.len(), TASKS * STEPS + 1);
    for r in &records {
        assert_eq!(r.state, StepState::Success, "{r:?}");
        if r.step != "shared" {
            let (t, i) = r.step[1..].split_once("_s").unwrap();
            let (t, i): (usize, usize) = (t.parse().unwrap(), i.parse().unwrap());
            assert_eq!(r.outputs, json!({"t": t, "i": i}));
            assert_eq!(r.run_id, Some(runs[t]));
        }
    }
    let attempts = h.store.attempts("conc", hour(0).start, None).await.unwrap();
    assert_eq!(attempts.len(), TASKS * STEPS);
    assert!(attempts.iter().all(|a| a.state == StepState::Success));
    let finished = h
        .store
        .runs(&RunFilter {
            job: Some("conc".into()),
            state: Some(RunState::Success),
            limit: 0,
        })
        .await
        .unwrap();
    assert_eq!(finished.len(), TASKS);
}

/// The engine's write pattern for 1,000 no-op steps: 4 writes each.
async fn write_timing(h: &Harness) {
    let s = &h.store;
    let run = s
        .create_run("bench", hour(0), Trigger::Manual)
        .await
        .unwrap();
    s.set_run_state(run, RunState::Running).await.unwrap();
    let started = Instant::now();
    for i in 0..1000 {
        let step = format!("step_{i:04}");
        s.set_step_state(run, "bench", &step, hour(0), StepState::Running, 1, None)
            .await
            .unwrap();
        let a = s
            .begin_attempt(run, "bench", &step, hour(0), 1, "logs/x.log")
            .await
            .unwrap();
        s.finish_attempt(a, &AttemptResult::default())
            .await
            .unwrap();
        s.set_step_state(
            run,
            "bench",
            &step,
            hour(0),
            StepState::Success,
            1,
            Some(&json!({})),
        )
        .await
        .unwrap();
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{}: 4,000 writes (1,000 steps) in {:.0} ms: {:.3} ms per step, {:.0} us per write",
        s.backend(),
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_secs_f64() * 1e3 / 1000.0,
        elapsed.as_secs_f64() * 1e6 / 4000.0,
    );
    let budget = match s.backend() {
        "sqlite" => Duration::from_secs(8),
        _ => Duration::from_secs(60),
    };
    assert!(elapsed < budget, "{elapsed:?} for 4,000 writes");
    assert_eq!(
        s.step_states("bench", hour(0).start, hour(0).end)
            .await
            .unwrap()
            .len(),
        1000
    );
}

// ---------------------------------------------------------------------------------------------
// The daemon's part
// ---------------------------------------------------------------------------------------------

const MINUTE: Duration = Duration::from_secs(60);

/// Every run of `job`, oldest first.
async fn runs_of(s: &Store, job: &str) -> Vec<cranium::store::RunRecord> {
    let mut runs = s
        .runs(&RunFilter {
            job: Some(job.to_string()),
            ..Default::default()
        })
        .await
        .unwrap();
    runs.reverse();
    runs
}

async fn schedule_interval_decides_once(h: &Harness) {
    let s = &h.store;
    let run = Decision::Run { priority: 5 };
    let skip = Decision::Skipped {
        reason: "catchup: false".to_string(),
    };
    let before = now_micros() - TimeDelta::seconds(60);

    let id = s
        .schedule_interval("j", hour(0), &run)
        .await
        .unwrap()
        .expect("a Run decision creates a run");
    let r = s.run(id).await.unwrap().unwrap();
    assert_eq!(
        (r.job.as_str(), r.interval, r.state, r.trigger),
        ("j", hour(0), RunState::Queued, Trigger::Schedule)
    );
    let queued = s.queued_daemon_runs().await.unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(
        (queued[0].run.id, queued[0].request_id, queued[0].priority),
        (id, None, 5)
    );
    // The decision row points at its run.
    assert_eq!(
        h.raw_strings(
            "SELECT CAST(run_id AS TEXT) FROM scheduled_intervals WHERE decision = 'run'"
        )
        .await,
        [id.to_string()]
    );

    // A second decision for the interval, whatever it is, is a no-op.
    assert_eq!(s.schedule_interval("j", hour(0), &run).await.unwrap(), None);
    assert_eq!(
        s.schedule_interval("j", hour(0), &skip).await.unwrap(),
        None
    );
    assert_eq!(runs_of(s, "j").await.len(), 1, "no second run");
    assert!(s.skipped_intervals(None, 0).await.unwrap().is_empty());

    // A skipped interval makes no run and is listed with its reason, once.
    assert_eq!(
        s.schedule_interval("j", hour(1), &skip).await.unwrap(),
        None
    );
    assert_eq!(s.schedule_interval("j", hour(1), &run).await.unwrap(), None);
    assert_eq!(
        runs_of(s, "j").await.len(),
        1,
        "a skipped interval makes no run"
    );
    let skipped = s.skipped_intervals(Some("j"), 0).await.unwrap();
    assert_eq!(skipped.len(), 1);
    assert_eq!(
        (
            skipped[0].job.as_str(),
            skipped[0].interval,
            skipped[0].reason.as_str()
        ),
        ("j", hour(1), "catchup: false")
    );
    assert!(skipped[0].created_at >= before, "{:?}", skipped[0]);

    // Newest first, per job, with a limit.
    let other = Decision::Skipped {
        reason: "paused".to_string(),
    };
    s.schedule_interval("j", hour(3), &skip).await.unwrap();
    s.schedule_interval("k", hour(2), &other).await.unwrap();
    let all: Vec<_> = s
        .skipped_intervals(None, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|x| (x.job, x.interval, x.reason))
        .collect();
    assert_eq!(
        all,
        [
            ("j".to_string(), hour(3), "catchup: false".to_string()),
            ("k".to_string(), hour(2), "paused".to_string()),
            ("j".to_string(), hour(1), "catchup: false".to_string()),
        ]
    );
    let first = s.skipped_intervals(Some("j"), 1).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].interval, hour(3));
    assert_eq!(s.skipped_intervals(Some("k"), 0).await.unwrap().len(), 1);
    assert!(s
        .skipped_intervals(Some("none"), 0)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(s.queued_daemon_runs().await.unwrap().len(), 1);
}

async fn last_scheduled_is_the_latest_interval_per_job(h: &Harness) {
    let s = &h.store;
    assert!(s.last_scheduled().await.unwrap().is_empty());
    let run = Decision::Run { priority: 0 };
    let skip = Decision::Skipped {
        reason: "catchup: false".to_string(),
    };
    s.schedule_interval("a", hour(0), &run).await.unwrap();
    s.schedule_interval("a", hour(3), &skip).await.unwrap();
    s.schedule_interval("a", hour(1), &run).await.unwrap();
    s.schedule_interval("b", hour(2), &run).await.unwrap();
    let last = s.last_scheduled().await.unwrap();
    assert_eq!(last.len(), 2, "{last:?}");
    assert_eq!(last["a"], hour(3).start, "skipped decisions count");
    assert_eq!(last["b"], hour(2).start);
    // Runs made outside the schedule are not decisions.
    s.create_daemon_run("a", hour(9), Trigger::Manual, None, 0)
        .await
        .unwrap();
    s.create_run("c", hour(9), Trigger::Manual).await.unwrap();
    assert_eq!(s.last_scheduled().await.unwrap(), last);
}

async fn daemon_runs_are_queued_in_order(h: &Harness) {
    let s = &h.store;
    let request = s
        .submit_request(RequestKind::Backfill, "j", &json!({}), 7)
        .await
        .unwrap();
    let a = s
        .create_daemon_run("j", hour(0), Trigger::Backfill, Some(request), 7)
        .await
        .unwrap();
    let cli = s.create_run("j", hour(1), Trigger::Manual).await.unwrap();
    let b = s
        .create_daemon_run("k", hour(2), Trigger::Manual, None, -3)
        .await
        .unwrap();
    let started = s
        .create_daemon_run("j", hour(3), Trigger::Manual, None, 0)
        .await
        .unwrap();
    s.set_run_state(started, RunState::Running).await.unwrap();
    let c = s
        .create_daemon_run("j", hour(4), Trigger::Schedule, None, 1)
        .await
        .unwrap();

    let queued = s.queued_daemon_runs().await.unwrap();
    let got: Vec<_> = queued
        .iter()
        .map(|d| {
            (
                d.run.id,
                d.run.job.as_str(),
                d.run.interval,
                d.run.trigger,
                d.request_id,
                d.priority,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (a, "j", hour(0), Trigger::Backfill, Some(request), 7),
            (b, "k", hour(2), Trigger::Manual, None, -3),
            (c, "j", hour(4), Trigger::Schedule, None, 1),
        ],
        "queued daemon runs, oldest first; not {cli} (cli) nor {started} (running)"
    );
    assert_eq!(queued[0].run, s.run(a).await.unwrap().unwrap());
    assert_eq!(queued[0].run.state, RunState::Queued);
    assert!(queued[0].run.started_at.is_none());
    // A daemon run is an ordinary run for the rest of the store.
    assert_eq!(runs_of(s, "j").await.len(), 4);
}

async fn requeue_stale_requeues_dead_daemon_runs_only(h: &Harness) {
    let s = &h.store;
    let iv = hour(0);
    let dead = s
        .create_daemon_run("j", iv, Trigger::Schedule, None, 0)
        .await
        .unwrap();
    let alive = s
        .create_daemon_run("j", hour(1), Trigger::Schedule, None, 0)
        .await
        .unwrap();
    let cli = s.create_run("j", hour(2), Trigger::Manual).await.unwrap();
    let waiting = s
        .create_daemon_run("j", hour(3), Trigger::Schedule, None, 0)
        .await
        .unwrap();
    for id in [dead, alive, cli] {
        s.set_run_state(id, RunState::Running).await.unwrap();
    }

    // The dead run: one step running (with its lease), one finished, one waiting for a retry.
    assert!(s
        .claim_step("j", "a", iv.start, "d1", dead, MINUTE, true, None)
        .await
        .unwrap()
        .is_acquired());
    s.set_step_state(dead, "j", "a", iv, StepState::Running, 1, None)
        .await
        .unwrap();
    let running_attempt = s.begin_attempt(dead, "j", "a", iv, 1, "").await.unwrap();
    s.set_step_state(dead, "j", "b", iv, StepState::Success, 1, None)
        .await
        .unwrap();
    let finished_attempt = s.begin_attempt(dead, "j", "b", iv, 1, "").await.unwrap();
    s.finish_attempt(finished_attempt, &AttemptResult::default())
        .await
        .unwrap();
    s.set_step_state(dead, "j", "c", iv, StepState::UpForRetry, 1, None)
        .await
        .unwrap();
    // The live daemon run and the foreground run each have a running step and a lease.
    for (run, k, owner) in [(alive, 1, "d2"), (cli, 2, "cli:1")] {
        assert!(s
            .claim_step("j", "a", hour(k).start, owner, run, MINUTE, true, None)
            .await
            .unwrap()
            .is_acquired());
        s.set_step_state(run, "j", "a", hour(k), StepState::Running, 1, None)
            .await
            .unwrap();
        s.begin_attempt(run, "j", "a", hour(k), 1, "")
            .await
            .unwrap();
    }

    assert!(s
        .requeue_stale(Duration::from_secs(3600))
        .await
        .unwrap()
        .is_empty());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.heartbeat(alive).await.unwrap();
    assert_eq!(
        s.requeue_stale(Duration::from_millis(750)).await.unwrap(),
        [dead]
    );

    let r = s.run(dead).await.unwrap().unwrap();
    assert_eq!(r.state, RunState::Queued);
    let states: Vec<_> = s
        .step_states("j", iv.start, iv.end)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.step, r.state))
        .collect();
    assert_eq!(
        states,
        [
            ("a".to_string(), StepState::Pending),
            ("b".to_string(), StepState::Success),
            ("c".to_string(), StepState::Pending),
        ]
    );
    let attempts = s.attempts("j", iv.start, None).await.unwrap();
    let a = attempts.iter().find(|a| a.id == running_attempt).unwrap();
    assert_eq!(a.state, StepState::Failed);
    assert_eq!(a.error.as_deref(), Some(INTERRUPTED));
    assert!(
        a.ended_at.is_some() && a.duration_ms.unwrap_or(-1) >= 1000,
        "{a:?}"
    );
    let b = attempts.iter().find(|a| a.id == finished_attempt).unwrap();
    assert_eq!((b.state, b.error.as_deref()), (StepState::Success, None));
    // Its lease is released; the others' are not.
    let owners: Vec<_> = s
        .leases()
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.owner, l.run_id))
        .collect();
    assert_eq!(
        owners,
        [
            ("d2".to_string(), Some(alive)),
            ("cli:1".to_string(), Some(cli))
        ]
    );
    // The daemon run that beats, the foreground run (stale, but not the daemon's to requeue) and
    // the queued one are untouched.
    assert_eq!(
        s.run(alive).await.unwrap().unwrap().state,
        RunState::Running
    );
    assert_eq!(s.run(cli).await.unwrap().unwrap().state, RunState::Running);
    assert_eq!(
        s.run(waiting).await.unwrap().unwrap().state,
        RunState::Queued
    );
    for k in [1, 2] {
        let attempts = s.attempts("j", hour(k).start, None).await.unwrap();
        assert_eq!(attempts[0].state, StepState::Running, "{attempts:?}");
    }
    assert!(s
        .requeue_stale(Duration::from_millis(750))
        .await
        .unwrap()
        .is_empty());

    // recover_stale is for foreground runs only: it fails the cli run, never a daemon run.
    assert_eq!(s.recover_stale(Duration::ZERO).await.unwrap(), 1);
    assert_eq!(s.run(cli).await.unwrap().unwrap().state, RunState::Failed);
    assert_eq!(
        s.run(alive).await.unwrap().unwrap().state,
        RunState::Running
    );
    assert_eq!(s.run(dead).await.unwrap().unwrap().state, RunState::Queued);
    // With no grace at all, every running daemon run is stale; a huge grace never overflows.
    assert_eq!(s.requeue_stale(Duration::ZERO).await.unwrap(), [alive]);
    assert!(s.requeue_stale(Duration::MAX).await.unwrap().is_empty());
    let queued: Vec<_> = s
        .queued_daemon_runs()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.run.id)
        .collect();
    assert_eq!(queued, [dead, alive, waiting]);
}

async fn claim_step_leases(h: &Harness) {
    let s = &h.store;
    let iv = hour(0);
    let run = s
        .create_daemon_run("j", iv, Trigger::Schedule, None, 0)
        .await
        .unwrap();
    let other_run = s
        .create_daemon_run("j", iv, Trigger::Manual, None, 0)
        .await
        .unwrap();
    let before = now_micros() - TimeDelta::seconds(60);

    assert!(s
        .claim_step("j", "a", iv.start, "A", run, MINUTE, true, None)
        .await
        .unwrap()
        .is_acquired());
    let leases = s.leases().await.unwrap();
    assert_eq!(leases.len(), 1);
    let lease = leases[0].clone();
    assert_eq!(
        (
            lease.job.as_str(),
            lease.step.as_str(),
            lease.interval_start
        ),
        ("j", "a", iv.start)
    );
    assert_eq!((lease.owner.as_str(), lease.run_id), ("A", Some(run)));
    assert!(lease.acquired_at >= before);
    let ttl = lease.expires_at - lease.acquired_at;
    assert!(
        ttl >= TimeDelta::seconds(59) && ttl <= TimeDelta::seconds(61),
        "{lease:?}"
    );

    // Another owner is told who holds it, until when.
    assert_eq!(
        s.claim_step("j", "a", iv.start, "B", other_run, MINUTE, true, None)
            .await
            .unwrap(),
        Claim::Held {
            owner: "A".to_string(),
            expires_at: lease.expires_at
        }
    );
    // The holder claims again: a renewal, which interrupts nothing (its attempt is its own).
    s.set_step_state(run, "j", "a", iv, StepState::Running, 1, None)
        .await
        .unwrap();
    let own_attempt = s.begin_attempt(run, "j", "a", iv, 1, "").await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(s
        .claim_step("j", "a", iv.start, "A", run, MINUTE, true, None)
        .await
        .unwrap()
        .is_acquired());
    let renewed = s.leases().await.unwrap()[0].clone();
    assert_eq!(renewed.owner, "A");
    assert_eq!(
        renewed.acquired_at, lease.acquired_at,
        "a renewal keeps acquired_at"
    );
    assert!(renewed.expires_at > lease.expires_at, "{renewed:?}");
    let attempts = s.attempts("j", iv.start, Some("a")).await.unwrap();
    assert_eq!(attempts[0].id, own_attempt);
    assert_eq!(attempts[0].state, StepState::Running);

    // Once the step succeeded, a claim that skips done steps gets its outputs (whoever holds
    // the lease); one that does not is held.
    s.finish_attempt(own_attempt, &AttemptResult::default())
        .await
        .unwrap();
    s.set_step_state(
        run,
        "j",
        "a",
        iv,
        StepState::Success,
        1,
        Some(&json!({"rows": 3})),
    )
    .await
    .unwrap();
    assert_eq!(
        s.claim_step("j", "a", iv.start, "B", other_run, MINUTE, true, None)
            .await
            .unwrap(),
        Claim::Done {
            outputs: json!({"rows": 3})
        }
    );
    assert!(matches!(
        s.claim_step("j", "a", iv.start, "B", other_run, MINUTE, false, None)
            .await
            .unwrap(),
        Claim::Held { owner, .. } if owner == "A"
    ));
    s.release_step("j", "a", iv.start, "A").await.unwrap();
    assert_eq!(
        s.claim_step("j", "a", iv.start, "B", other_run, MINUTE, true, None)
            .await
            .unwrap(),
        Claim::Done {
            outputs: json!({"rows": 3})
        }
    );
    assert!(s.leases().await.unwrap().is_empty(), "Done takes no lease");
    assert!(
        s.claim_step("j", "a", iv.start, "B", other_run, MINUTE, false, None)
            .await
            .unwrap()
            .is_acquired(),
        "a rerun of a done step"
    );
    s.release_step("j", "a", iv.start, "B").await.unwrap();

    // An expired lease is taken over, and the attempt its holder left running is interrupted.
    assert!(s
        .claim_step(
            "j",
            "b",
            iv.start,
            "A",
            run,
            Duration::from_millis(5),
            true,
            None
        )
        .await
        .unwrap()
        .is_acquired());
    s.set_step_state(run, "j", "b", iv, StepState::Running, 1, None)
        .await
        .unwrap();
    let left = s.begin_attempt(run, "j", "b", iv, 1, "").await.unwrap();
    // Another interval's running attempt of the step is not this claim's business.
    let elsewhere = s
        .begin_attempt(run, "j", "b", hour(1), 1, "")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(s
        .claim_step("j", "b", iv.start, "B", other_run, MINUTE, true, None)
        .await
        .unwrap()
        .is_acquired());
    let attempts = s.attempts("j", iv.start, Some("b")).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].id, left);
    assert_eq!(attempts[0].state, StepState::Failed);
    assert_eq!(attempts[0].error.as_deref(), Some(INTERRUPTED));
    assert!(attempts[0].ended_at.is_some());
    assert!(
        attempts[0].duration_ms.unwrap_or(-1) >= 0,
        "{:?}",
        attempts[0]
    );
    let other = s.attempts("j", hour(1).start, Some("b")).await.unwrap();
    assert_eq!(
        (other[0].id, other[0].state),
        (elsewhere, StepState::Running)
    );
    let leases = s.leases().await.unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!(
        (leases[0].owner.as_str(), leases[0].run_id),
        ("B", Some(other_run))
    );
    // The first holder is now told it lost it.
    assert!(matches!(
        s.claim_step("j", "b", iv.start, "A", run, MINUTE, true, None)
            .await
            .unwrap(),
        Claim::Held { owner, expires_at } if owner == "B" && expires_at == leases[0].expires_at
    ));
    // Leases are per (job, interval, step).
    for (job, step, start) in [
        ("j", "b", hour(1).start),
        ("j", "c", iv.start),
        ("k", "b", iv.start),
    ] {
        assert!(
            s.claim_step(job, step, start, "A", run, MINUTE, true, None)
                .await
                .unwrap()
                .is_acquired(),
            "{job} {step} {start}"
        );
    }
    let keys: Vec<_> = s
        .leases()
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.job, l.interval_start, l.step, l.owner))
        .collect();
    assert_eq!(
        keys,
        [
            ("j".to_string(), iv.start, "b".to_string(), "B".to_string()),
            ("j".to_string(), iv.start, "c".to_string(), "A".to_string()),
            (
                "j".to_string(),
                hour(1).start,
                "b".to_string(),
                "A".to_string()
            ),
            ("k".to_string(), iv.start, "b".to_string(), "A".to_string()),
        ]
    );
}

async fn leases_renew_and_release(h: &Harness) {
    let s = &h.store;
    let run = s
        .create_daemon_run("j", hour(0), Trigger::Schedule, None, 0)
        .await
        .unwrap();
    let short = Duration::from_secs(1);
    for (step, owner) in [("s1", "A"), ("s2", "A"), ("s3", "B")] {
        assert!(s
            .claim_step("j", step, hour(0).start, owner, run, short, true, None)
            .await
            .unwrap()
            .is_acquired());
    }
    let before = s.leases().await.unwrap();
    assert_eq!(
        s.renew_leases("A", Duration::from_secs(3600))
            .await
            .unwrap()
            .len(),
        2
    );
    assert!(s.renew_leases("nobody", MINUTE).await.unwrap().is_empty());
    let after = s.leases().await.unwrap();
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(
            (&a.step, &a.owner, a.acquired_at),
            (&b.step, &b.owner, b.acquired_at)
        );
        if a.owner == "A" {
            assert!(
                a.expires_at - a.acquired_at >= TimeDelta::seconds(3000),
                "{a:?}"
            );
        } else {
            assert_eq!(a.expires_at, b.expires_at, "B's lease is not renewed");
        }
    }
    // Renewed past the first ttl: still held.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(matches!(
        s.claim_step("j", "s1", hour(0).start, "B", run, MINUTE, true, None)
            .await
            .unwrap(),
        Claim::Held { owner, .. } if owner == "A"
    ));
    // Only the owner releases a lease.
    s.release_step("j", "s1", hour(0).start, "B").await.unwrap();
    assert_eq!(s.leases().await.unwrap().len(), 3);
    s.release_step("j", "s1", hour(0).start, "A").await.unwrap();
    assert!(s
        .claim_step("j", "s1", hour(0).start, "B", run, MINUTE, true, None)
        .await
        .unwrap()
        .is_acquired());
    assert_eq!(s.release_leases("A").await.unwrap(), 1);
    assert_eq!(s.release_leases("A").await.unwrap(), 0);
    let left: Vec<_> = s
        .leases()
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.step, l.owner))
        .collect();
    assert_eq!(
        left,
        [
            ("s1".to_string(), "B".to_string()),
            ("s3".to_string(), "B".to_string())
        ],
        "expired leases are listed too"
    );
    assert_eq!(s.release_leases("B").await.unwrap(), 2);
    assert!(s.leases().await.unwrap().is_empty());
}

/// A store that was away longer than a lease's time to live: the runner's first renewal after it
/// keeps the leases that nobody took over meanwhile, and not the one another runner took.
async fn an_expired_lease_nobody_took_is_renewed_after_an_outage(h: &Harness) {
    let s = &h.store;
    let run = s
        .create_daemon_run("j", hour(0), Trigger::Schedule, None, 0)
        .await
        .unwrap();
    let short = Duration::from_millis(300);
    for step in ["kept", "taken"] {
        assert!(s
            .claim_step("j", step, hour(0).start, "A", run, short, true, None)
            .await
            .unwrap()
            .is_acquired());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(s
        .claim_step("j", "taken", hour(0).start, "B", run, MINUTE, true, None)
        .await
        .unwrap()
        .is_acquired());
    let renewed = s.renew_leases("A", MINUTE).await.unwrap();
    assert_eq!(
        renewed,
        [("j".to_string(), "kept".to_string(), hour(0).start)]
    );
    assert!(matches!(
        s.claim_step("j", "kept", hour(0).start, "B", run, MINUTE, true, None)
            .await
            .unwrap(),
        Claim::Held { owner, .. } if owner == "A"
    ));
}

async fn pausing_jobs(h: &Harness) {
    let s = &h.store;
    assert!(s.paused_jobs().await.unwrap().is_empty());
    let before = now_micros() - TimeDelta::seconds(60);
    assert!(s.set_paused("b", true).await.unwrap());
    assert!(!s.set_paused("b", true).await.unwrap(), "already paused");
    assert!(s.set_paused("a", true).await.unwrap());
    let paused = s.paused_jobs().await.unwrap();
    let names: Vec<_> = paused.iter().map(|(j, _)| j.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert!(paused.iter().all(|(_, at)| *at >= before), "{paused:?}");
    let b_at = paused[1].1;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!s.set_paused("b", true).await.unwrap());
    assert_eq!(
        s.paused_jobs().await.unwrap()[1].1,
        b_at,
        "pausing again keeps when"
    );
    assert!(s.set_paused("a", false).await.unwrap());
    assert!(!s.set_paused("a", false).await.unwrap(), "not paused");
    assert!(!s.set_paused("never", false).await.unwrap());
    assert_eq!(s.paused_jobs().await.unwrap(), [("b".to_string(), b_at)]);
}

async fn requests_lifecycle(h: &Harness) {
    let s = &h.store;
    assert!(s.requests(false, 0).await.unwrap().is_empty());
    let before = now_micros() - TimeDelta::seconds(60);
    let spec1 = json!({"at": "2026-03-07T00:00:00Z"});
    let spec2 = json!({"from": "2026-03-01", "to": "2026-03-07", "steps": ["a", "b"],
                       "rerun": "failed", "max_active_runs": 2, "nested": {"x": [1, null]}});
    let r1 = s
        .submit_request(RequestKind::Trigger, "j", &spec1, 0)
        .await
        .unwrap();
    let r2 = s
        .submit_request(RequestKind::Backfill, "k", &spec2, 5)
        .await
        .unwrap();
    let r3 = s
        .submit_request(RequestKind::Trigger, "j", &json!({}), -1)
        .await
        .unwrap();
    assert!(r1 < r2 && r2 < r3);

    let one = s.request(r2).await.unwrap().unwrap();
    assert_eq!(one.id, r2);
    assert_eq!(one.kind, RequestKind::Backfill);
    assert_eq!(one.job, "k");
    assert_eq!(one.spec, spec2);
    assert_eq!(one.priority, 5);
    assert_eq!(one.state, RequestState::Pending);
    assert_eq!(one.message, None);
    assert!(one.created_at >= before);
    assert_eq!(one.updated_at, one.created_at);
    assert!(s.request(r3 + 100).await.unwrap().is_none());

    let ids =
        |v: Vec<cranium::store::RequestRecord>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.requests(false, 0).await.unwrap()),
        [r3, r2, r1],
        "newest first"
    );
    assert_eq!(ids(s.requests(false, 2).await.unwrap()), [r3, r2]);
    assert_eq!(
        ids(s.requests(true, 0).await.unwrap()),
        [r1, r2, r3],
        "open: oldest first"
    );
    assert_eq!(ids(s.requests(true, 1).await.unwrap()), [r1]);

    // The daemon takes r1 up and finishes it.
    tokio::time::sleep(Duration::from_millis(10)).await;
    s.set_request_state(r1, RequestState::Running, None)
        .await
        .unwrap();
    let running = s.request(r1).await.unwrap().unwrap();
    assert_eq!(
        (running.state, running.message.as_deref()),
        (RequestState::Running, None)
    );
    assert!(running.updated_at > running.created_at);
    assert_eq!(ids(s.requests(true, 0).await.unwrap()), [r1, r2, r3]);
    s.set_request_state(r1, RequestState::Done, Some("1 run succeeded"))
        .await
        .unwrap();
    let done = s.request(r1).await.unwrap().unwrap();
    assert_eq!(
        (done.state, done.message.as_deref()),
        (RequestState::Done, Some("1 run succeeded"))
    );
    assert!(done.state.is_final());
    assert_eq!(ids(s.requests(true, 0).await.unwrap()), [r2, r3]);
    assert!(!s.cancel_request(r1).await.unwrap(), "already done");
    assert_eq!(
        s.request(r1).await.unwrap().unwrap().state,
        RequestState::Done
    );

    // A cancelled request stays cancelled, whatever the daemon says afterwards.
    s.set_request_state(r2, RequestState::Running, Some("2 runs"))
        .await
        .unwrap();
    assert!(s.cancel_request(r2).await.unwrap());
    let cancelled = s.request(r2).await.unwrap().unwrap();
    assert_eq!(cancelled.state, RequestState::Cancelled);
    assert!(cancelled.message.is_some());
    s.set_request_state(r2, RequestState::Done, Some("finished"))
        .await
        .unwrap();
    assert_eq!(s.request(r2).await.unwrap().unwrap(), cancelled);
    assert!(!s.cancel_request(r2).await.unwrap(), "already cancelled");
    assert!(
        !s.cancel_request(r3 + 100).await.unwrap(),
        "no such request"
    );
    assert!(s.cancel_request(r3).await.unwrap(), "a pending one");
    assert!(s.requests(true, 0).await.unwrap().is_empty());
    assert_eq!(s.requests(false, 0).await.unwrap().len(), 3);

    // The runs a request made, oldest first.
    let a = s
        .create_daemon_run("k", hour(0), Trigger::Backfill, Some(r2), 5)
        .await
        .unwrap();
    s.create_daemon_run("k", hour(5), Trigger::Backfill, Some(r3), 5)
        .await
        .unwrap();
    s.create_run("k", hour(6), Trigger::Backfill).await.unwrap();
    let b = s
        .create_daemon_run("k", hour(1), Trigger::Backfill, Some(r2), 5)
        .await
        .unwrap();
    let runs = s.request_runs(r2).await.unwrap();
    assert_eq!(runs.iter().map(|r| r.id).collect::<Vec<_>>(), [a, b]);
    assert_eq!(runs[0], s.run(a).await.unwrap().unwrap());
    assert!(s.request_runs(r1).await.unwrap().is_empty());
}

async fn daemon_heartbeats(h: &Harness) {
    let s = &h.store;
    assert!(s.daemons().await.unwrap().is_empty());
    let before = now_micros() - TimeDelta::seconds(60);
    s.daemon_beat("d1", 4242, "host-a", "0.1.0", &json!({"running": []}))
        .await
        .unwrap();
    let first = s.daemons().await.unwrap();
    assert_eq!(first.len(), 1);
    let d = &first[0];
    assert_eq!(
        (d.id.as_str(), d.pid, d.host.as_str(), d.version.as_str()),
        ("d1", 4242, "host-a", "0.1.0")
    );
    assert!(d.started_at >= before);
    assert_eq!(d.heartbeat_at, d.started_at);
    assert_eq!(d.stopped_at, None);
    assert_eq!(d.status, json!({"running": []}));

    tokio::time::sleep(Duration::from_millis(20)).await;
    let status = json!({"project": "abc123", "running": [{"job": "j", "step": "a"}]});
    s.daemon_beat("d1", 4243, "host-b", "0.2.0", &status)
        .await
        .unwrap();
    let second = s.daemons().await.unwrap();
    assert_eq!(second.len(), 1);
    let d2 = &second[0];
    assert_eq!(d2.started_at, d.started_at, "started_at is kept");
    assert!(d2.heartbeat_at > d.heartbeat_at, "{d2:?}");
    assert_eq!(
        (d2.pid, d2.host.as_str(), d2.version.as_str()),
        (4243, "host-b", "0.2.0")
    );
    assert_eq!(d2.status, status);

    tokio::time::sleep(Duration::from_millis(20)).await;
    s.daemon_beat("d2", 1, "host-c", "0.2.0", &json!({}))
        .await
        .unwrap();
    s.daemon_stopped("d1").await.unwrap();
    s.daemon_stopped("nobody").await.unwrap();
    let all = s.daemons().await.unwrap();
    let ids: Vec<_> = all.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["d2", "d1"], "latest heartbeat first");
    let stopped = all[1].stopped_at.expect("stopped_at is set");
    assert!(stopped >= d2.heartbeat_at);
    assert_eq!(
        all[1].heartbeat_at, d2.heartbeat_at,
        "stopping is not a beat"
    );
    assert_eq!(all[0].stopped_at, None);

    // Beating again clears stopped_at.
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.daemon_beat("d1", 4243, "host-b", "0.2.0", &status)
        .await
        .unwrap();
    let all = s.daemons().await.unwrap();
    assert_eq!(all[0].id, "d1");
    assert_eq!(all[0].stopped_at, None);
    assert_eq!(all[0].started_at, d.started_at);
}

/// A pool's size counts the unexpired leases of every runner on the store: with 3 slots, three
/// steps are claimed, the fourth is told the pool is full, a renewal is not, a released slot or
/// an expired lease frees one; and racing claimers on 8 steps never get more than 3 (repeated).
async fn pools_are_shared_by_every_runner(h: &Harness) {
    let second = h.reopen().await.expect("second store");
    let run = h
        .store
        .create_daemon_run("j", hour(0), Trigger::Schedule, None, 0)
        .await
        .unwrap();
    let at = hour(0).start;
    let pool = Some(("db", 3));
    for (i, owner) in ["A", "B", "A"].iter().enumerate() {
        let c = h
            .store
            .claim_step("j", &format!("p{i}"), at, owner, run, MINUTE, true, pool)
            .await
            .unwrap();
        assert!(c.is_acquired(), "{owner} p{i}: {c:?}");
    }
    let full = second
        .claim_step("j", "p3", at, "C", run, MINUTE, true, pool)
        .await
        .unwrap();
    assert_eq!(full, Claim::Full { pool: "db".into() });
    // Another pool, or none, is not limited by this one.
    let other = second
        .claim_step("j", "q0", at, "C", run, MINUTE, true, Some(("api", 1)))
        .await
        .unwrap();
    assert!(other.is_acquired(), "{other:?}");
    // The holder renewing its own claim is not refused.
    let renewal = h
        .store
        .claim_step("j", "p0", at, "A", run, MINUTE, true, pool)
        .await
        .unwrap();
    assert!(renewal.is_acquired(), "{renewal:?}");
    h.store.release_step("j", "p1", at, "B").await.unwrap();
    let freed = second
        .claim_step("j", "p3", at, "C", run, MINUTE, true, pool)
        .await
        .unwrap();
    assert!(freed.is_acquired(), "a released slot is free: {freed:?}");
    // An expired lease holds no slot.
    h.store
        .claim_step(
            "j",
            "p0",
            at,
            "A",
            run,
            Duration::from_millis(1),
            true,
            pool,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let after_expiry = second
        .claim_step("j", "p4", at, "C", run, MINUTE, true, pool)
        .await
        .unwrap();
    assert!(after_expiry.is_acquired(), "{after_expiry:?}");

    const TASKS: usize = 8;
    for round in 0..30 {
        let claims = race(&h.store, &second, TASKS, |s, t| async move {
            s.claim_step(
                "j",
                &format!("r{round}-{t}"),
                at,
                &format!("owner-{t}"),
                run,
                MINUTE,
                true,
                Some(("race", 3)),
            )
            .await
        })
        .await;
        let mut acquired = 0;
        for c in claims {
            match c.expect("claim") {
                Claim::Acquired { .. } => acquired += 1,
                Claim::Full { .. } => {}
                other => panic!("round {round}: {other:?}"),
            }
        }
        assert_eq!(acquired, 3, "round {round}: exactly the pool's size");
        for t in 0..TASKS {
            h.store
                .release_step("j", &format!("r{round}-{t}"), at, &format!("owner-{t}"))
                .await
                .unwrap();
        }
    }
}

async fn concurrent_claims_acquire_once(h: &Harness) {
    const TASKS: usize = 8;
    let second = h.reopen().await.expect("second store");
    let run = h
        .store
        .create_daemon_run("j", hour(0), Trigger::Schedule, None, 0)
        .await
        .unwrap();
    // Many rounds: a race lost once in a hundred would show.
    for round in 0..100 {
        let step = format!("s{round}");
        let claims: Vec<(String, Claim)> = race(&h.store, &second, TASKS, |s, t| {
            let step = step.clone();
            async move {
                let owner = format!("owner-{t}");
                let claim = s
                    .claim_step("j", &step, hour(0).start, &owner, run, MINUTE, true, None)
                    .await?;
                Ok::<_, StoreError>((owner, claim))
            }
        })
        .await
        .into_iter()
        .map(|c| c.expect("claim"))
        .collect();
        let winners: Vec<_> = claims
            .iter()
            .filter(|(_, c)| c.is_acquired())
            .map(|(o, _)| o.clone())
            .collect();
        assert_eq!(winners.len(), 1, "exactly one acquires: {claims:?}");
        let lease = lease_on(&h.store, &step).await;
        assert_eq!(lease.owner, winners[0]);
        for (owner, claim) in &claims {
            if *owner != winners[0] {
                assert_eq!(
                    *claim,
                    Claim::Held {
                        owner: winners[0].clone(),
                        expires_at: lease.expires_at
                    }
                );
            }
        }
    }
    assert_eq!(h.store.leases().await.unwrap().len(), 100);
}

/// The one lease on `step` of hour(0) of job j.
/// Runs `f(store, t)` for `tasks` tasks at once (released together by a barrier), alternating
/// between two stores on the same database; their results in task order.
async fn race<T, F, Fut>(a: &Store, b: &Store, tasks: usize, f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(Store, usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(tasks));
    let mut handles = Vec::new();
    for t in 0..tasks {
        let s = if t % 2 == 0 { a.clone() } else { b.clone() };
        let (barrier, fut) = (barrier.clone(), f(s, t));
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            fut.await
        }));
    }
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.expect("task"));
    }
    out
}

async fn lease_on(s: &Store, step: &str) -> cranium::store::LeaseRecord {
    let leases: Vec<_> = s
        .leases()
        .await
        .unwrap()
        .into_iter()
        .filter(|l| l.step == step)
        .collect();
    assert_eq!(leases.len(), 1, "{leases:?}");
    leases.into_iter().next().unwrap()
}

async fn concurrent_decisions_create_one_run(h: &Harness) {
    const TASKS: usize = 8;
    let second = h.reopen().await.expect("second store");
    let decisions = race(&h.store, &second, TASKS, |s, t| async move {
        let decision = if t % 3 == 0 {
            Decision::Skipped {
                reason: format!("task {t}"),
            }
        } else {
            Decision::Run { priority: t as i32 }
        };
        s.schedule_interval("j", hour(0), &decision).await
    })
    .await;
    let mut created = Vec::new();
    for d in decisions {
        if let Some(id) = d.expect("decide") {
            created.push(id);
        }
    }
    let runs = runs_of(&h.store, "j").await;
    let skipped = h.store.skipped_intervals(None, 0).await.unwrap();
    // One decision won: a run, or a skip.
    assert_eq!(created.len() + skipped.len(), 1, "{created:?} {skipped:?}");
    assert_eq!(runs.iter().map(|r| r.id).collect::<Vec<_>>(), created);
    assert_eq!(h.store.last_scheduled().await.unwrap()["j"], hour(0).start);
}

// ---------------------------------------------------------------------------------------------
// The alert queue
// ---------------------------------------------------------------------------------------------

const KEY: &str = "j|s|step_failed";

/// A failure alert of j.s for `channel`, throttled by `key` (None: never).
fn new_alert(channel: &str, key: Option<&str>, repeat_interval: Duration) -> NewAlert {
    NewAlert {
        channel: channel.to_string(),
        event: "step_failed".to_string(),
        job: Some("j".to_string()),
        step: Some("s".to_string()),
        interval_start: Some(hour(0).start),
        run_id: Some(42),
        summary: "j.s failed".to_string(),
        payload: json!({"event": "step_failed", "job": "j", "step": "s"}),
        throttle_key: key.map(str::to_string),
        repeat_interval,
    }
}

async fn enqueue(s: &Store, channel: &str, key: Option<&str>, repeat: Duration) -> Enqueued {
    s.enqueue_alert(&new_alert(channel, key, repeat))
        .await
        .unwrap()
}

fn queued_id(e: Enqueued) -> i64 {
    match e {
        Enqueued::Queued { id, .. } => id,
        Enqueued::Suppressed { id } => panic!("alert {id} was suppressed, expected queued"),
    }
}

/// The alert `id`, from the full list.
async fn alert_by_id(s: &Store, id: i64) -> AlertRecord {
    let all = s.alerts(None, 0).await.unwrap();
    all.into_iter()
        .find(|a| a.id == id)
        .unwrap_or_else(|| panic!("no alert {id}"))
}

/// `SELECT CAST(count(*) AS TEXT) FROM {rest}`, as a number.
async fn raw_count(h: &Harness, rest: &str) -> i64 {
    let got = h
        .raw_strings(&format!("SELECT CAST(count(*) AS TEXT) FROM {rest}"))
        .await;
    got[0].parse().unwrap()
}

async fn alerts_are_throttled_per_channel_and_key(h: &Harness) {
    const REPEAT: Duration = Duration::from_millis(250);
    let s = &h.store;
    // Without a key: always queued, with nothing suppressed.
    let mut unthrottled = Vec::new();
    for _ in 0..3 {
        match enqueue(s, "ops", None, Duration::from_secs(3600)).await {
            Enqueued::Queued { id, suppressed: 0 } => unthrottled.push(id),
            other => panic!("{other:?}"),
        }
    }
    for id in &unthrottled {
        let a = alert_by_id(s, *id).await;
        assert_eq!(a.state, AlertState::Queued);
        assert_eq!(a.payload["suppressed"], json!(0), "{:?}", a.payload);
    }

    // With a key: the first goes out, the next two within the interval are held back.
    let started = Instant::now();
    let first = enqueue(s, "ops", Some(KEY), REPEAT).await;
    assert!(
        matches!(first, Enqueued::Queued { suppressed: 0, .. }),
        "{first:?}"
    );
    let mut held = Vec::new();
    for _ in 0..2 {
        match enqueue(s, "ops", Some(KEY), REPEAT).await {
            Enqueued::Suppressed { id } => held.push(id),
            other => panic!("{other:?}"),
        }
    }
    // Other channels and other keys have their own throttles.
    let other_channel = enqueue(s, "pager", Some(KEY), REPEAT).await;
    assert!(
        matches!(other_channel, Enqueued::Queued { suppressed: 0, .. }),
        "{other_channel:?}"
    );
    let other_key = enqueue(s, "ops", Some("j|t|step_failed"), REPEAT).await;
    assert!(
        matches!(other_key, Enqueued::Queued { suppressed: 0, .. }),
        "{other_key:?}"
    );
    assert!(
        started.elapsed() < REPEAT,
        "the enqueues took longer than the repeat interval: {:?}",
        started.elapsed()
    );
    for id in &held {
        let a = alert_by_id(s, *id).await;
        assert_eq!(a.state, AlertState::Suppressed);
        assert_eq!(a.tries, 0);
        assert_eq!(a.sent_at, None);
    }
    assert_eq!(
        alert_by_id(s, queued_id(first)).await.payload["suppressed"],
        json!(0)
    );

    // After the interval the next one goes out, counting the two held back.
    tokio::time::sleep(REPEAT + Duration::from_millis(100)).await;
    let next = enqueue(s, "ops", Some(KEY), REPEAT).await;
    assert!(
        matches!(next, Enqueued::Queued { suppressed: 2, .. }),
        "{next:?}"
    );
    let a = alert_by_id(s, queued_id(next)).await;
    assert_eq!(a.state, AlertState::Queued);
    assert_eq!(a.payload["suppressed"], json!(2), "{:?}", a.payload);
    assert_eq!(a.payload["event"], json!("step_failed"));
    // ... and starts a new interval, with the count back at zero.
    let again = enqueue(s, "ops", Some(KEY), REPEAT).await;
    assert!(matches!(again, Enqueued::Suppressed { .. }), "{again:?}");
    tokio::time::sleep(REPEAT + Duration::from_millis(100)).await;
    let later = enqueue(s, "ops", Some(KEY), REPEAT).await;
    assert!(
        matches!(later, Enqueued::Queued { suppressed: 1, .. }),
        "{later:?}"
    );
    // The other throttles saw none of it.
    let pager = enqueue(s, "pager", Some(KEY), REPEAT).await;
    assert!(
        matches!(pager, Enqueued::Queued { suppressed: 0, .. }),
        "{pager:?}"
    );

    // A zero interval never throttles.
    for _ in 0..2 {
        let e = enqueue(s, "ops", Some("zero"), Duration::ZERO).await;
        assert!(matches!(e, Enqueued::Queued { suppressed: 0, .. }), "{e:?}");
    }
}

async fn due_alerts_and_tries(h: &Harness) {
    const HOUR: Duration = Duration::from_secs(3600);
    let s = &h.store;
    assert!(s.due_alerts(0).await.unwrap().is_empty());
    let ok = queued_id(enqueue(s, "ops", None, HOUR).await);
    let retried = queued_id(enqueue(s, "ops", None, HOUR).await);
    let failed = queued_id(enqueue(s, "ops", None, HOUR).await);
    let keyed = queued_id(enqueue(s, "ops", Some(KEY), HOUR).await);
    let Enqueued::Suppressed { id: suppressed } = enqueue(s, "ops", Some(KEY), HOUR).await else {
        panic!("the second keyed alert must be suppressed");
    };
    let due_ids = |due: Vec<AlertRecord>| due.iter().map(|a| a.id).collect::<Vec<_>>();
    // Queued ones only, oldest first; the limit takes the oldest.
    assert_eq!(
        due_ids(s.due_alerts(0).await.unwrap()),
        [ok, retried, failed, keyed]
    );
    assert_eq!(due_ids(s.due_alerts(2).await.unwrap()), [ok, retried]);
    let before = alert_by_id(s, ok).await;
    assert_eq!(before.tries, 0);
    assert_eq!(before.next_try_at, before.created_at);
    assert_eq!(before.sent_at, None);

    // Sent.
    let t = now_micros();
    s.alert_tried(ok, None, None).await.unwrap();
    let a = alert_by_id(s, ok).await;
    assert_eq!(a.state, AlertState::Sent);
    assert_eq!(a.tries, 1);
    assert_eq!(a.last_error, None);
    let sent_at = a.sent_at.expect("sent_at");
    assert!(
        sent_at >= t - TimeDelta::seconds(5) && sent_at <= now_micros() + TimeDelta::seconds(5),
        "{sent_at}"
    );

    // Failed, retried later: queued but not due until then.
    let retry_at = now_micros() + TimeDelta::milliseconds(400);
    s.alert_tried(retried, Some("HTTP 500"), Some(retry_at))
        .await
        .unwrap();
    let a = alert_by_id(s, retried).await;
    assert_eq!(a.state, AlertState::Queued);
    assert_eq!(a.tries, 1);
    assert_eq!(a.last_error.as_deref(), Some("HTTP 500"));
    assert_eq!(a.next_try_at, retry_at);
    assert_eq!(a.sent_at, None);

    // Failed for good.
    s.alert_tried(failed, Some("no route"), None).await.unwrap();
    let a = alert_by_id(s, failed).await;
    assert_eq!(a.state, AlertState::Failed);
    assert_eq!(a.tries, 1);
    assert_eq!(a.last_error.as_deref(), Some("no route"));

    // Not sent, failed, suppressed, nor retried before its time.
    assert_eq!(due_ids(s.due_alerts(0).await.unwrap()), [keyed]);
    assert_eq!(
        alert_by_id(s, suppressed).await.state,
        AlertState::Suppressed
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Its time came: due again, ordered by when it is due.
    assert_eq!(due_ids(s.due_alerts(0).await.unwrap()), [keyed, retried]);
    s.alert_tried(
        retried,
        Some("HTTP 503"),
        Some(now_micros() + TimeDelta::hours(1)),
    )
    .await
    .unwrap();
    s.alert_tried(retried, None, None).await.unwrap();
    let a = alert_by_id(s, retried).await;
    assert_eq!(a.state, AlertState::Sent);
    assert_eq!(a.tries, 3);
    assert!(a.sent_at.is_some());

    // Every try is recorded, with its outcome.
    assert_eq!(raw_count(h, "alert_sends").await, 5);
    assert_eq!(
        raw_count(h, &format!("alert_sends WHERE alert_id = {retried}")).await,
        3
    );
    assert_eq!(
        raw_count(
            h,
            &format!("alert_sends WHERE alert_id = {ok} AND ok AND error IS NULL")
        )
        .await,
        1
    );
    assert_eq!(
        h.raw_strings(&format!(
            "SELECT error FROM alert_sends WHERE alert_id = {retried} AND NOT ok ORDER BY id"
        ))
        .await,
        ["HTTP 500", "HTTP 503"]
    );
    assert_eq!(
        h.raw_strings(&format!(
            "SELECT channel FROM alert_sends WHERE alert_id = {failed}"
        ))
        .await,
        ["ops"]
    );

    // An unknown alert.
    let err = s.alert_tried(999_999, None, None).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NotFound {
                what: "alert",
                id: 999_999
            }
        ),
        "{err:?}"
    );
    assert_eq!(raw_count(h, "alert_sends").await, 5);
}

async fn alerts_are_listed_newest_first(h: &Harness) {
    const HOUR: Duration = Duration::from_secs(3600);
    let s = &h.store;
    assert!(s.alerts(None, 0).await.unwrap().is_empty());
    let t = now_micros();
    let first = queued_id(enqueue(s, "ops", None, HOUR).await);
    let mut other = new_alert("ops", None, HOUR);
    other.job = Some("other".to_string());
    let second = queued_id(s.enqueue_alert(&other).await.unwrap());
    let mut no_job = new_alert("pager", None, HOUR);
    no_job.job = None;
    no_job.step = None;
    no_job.interval_start = None;
    no_job.run_id = None;
    let third = queued_id(s.enqueue_alert(&no_job).await.unwrap());
    let fourth = queued_id(enqueue(s, "ops", None, HOUR).await);

    let ids = |v: Vec<AlertRecord>| v.iter().map(|a| a.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.alerts(None, 0).await.unwrap()),
        [fourth, third, second, first]
    );
    assert_eq!(ids(s.alerts(None, 2).await.unwrap()), [fourth, third]);
    assert_eq!(ids(s.alerts(Some("j"), 0).await.unwrap()), [fourth, first]);
    assert_eq!(ids(s.alerts(Some("j"), 1).await.unwrap()), [fourth]);
    assert_eq!(ids(s.alerts(Some("other"), 0).await.unwrap()), [second]);
    assert!(s.alerts(Some("nope"), 0).await.unwrap().is_empty());

    // Every field round-trips.
    let a = alert_by_id(s, first).await;
    assert!(
        a.created_at >= t - TimeDelta::seconds(5)
            && a.created_at <= now_micros() + TimeDelta::seconds(5),
        "{}",
        a.created_at
    );
    assert_eq!(
        a,
        AlertRecord {
            id: first,
            channel: "ops".to_string(),
            event: "step_failed".to_string(),
            job: Some("j".to_string()),
            step: Some("s".to_string()),
            interval_start: Some(hour(0).start),
            run_id: Some(42),
            summary: "j.s failed".to_string(),
            payload: json!({"event": "step_failed", "job": "j", "step": "s", "suppressed": 0}),
            state: AlertState::Queued,
            tries: 0,
            next_try_at: a.created_at,
            last_error: None,
            created_at: a.created_at,
            sent_at: None,
        }
    );
    let a = alert_by_id(s, third).await;
    assert_eq!(
        (
            a.channel.as_str(),
            a.job,
            a.step,
            a.interval_start,
            a.run_id
        ),
        ("pager", None, None, None, None)
    );
}

async fn alert_conditions_close_once(h: &Harness) {
    const REPEAT: Duration = Duration::from_millis(250);
    let s = &h.store;
    // Nothing was ever raised.
    assert!(!s.close_alert_condition("ops", KEY).await.unwrap());
    // An alert opens its key's condition on its channel; closing it is true once.
    queued_id(enqueue(s, "ops", Some(KEY), REPEAT).await);
    assert!(!s.close_alert_condition("pager", KEY).await.unwrap());
    assert!(!s
        .close_alert_condition("ops", "j|t|step_failed")
        .await
        .unwrap());
    assert!(s.close_alert_condition("ops", KEY).await.unwrap());
    assert!(!s.close_alert_condition("ops", KEY).await.unwrap());
    // A held-back alert opens it again, and is still counted in the next one sent.
    let held = enqueue(s, "ops", Some(KEY), REPEAT).await;
    assert!(matches!(held, Enqueued::Suppressed { .. }), "{held:?}");
    assert!(s.close_alert_condition("ops", KEY).await.unwrap());
    assert!(!s.close_alert_condition("ops", KEY).await.unwrap());
    tokio::time::sleep(REPEAT + Duration::from_millis(100)).await;
    let next = enqueue(s, "ops", Some(KEY), REPEAT).await;
    assert!(
        matches!(next, Enqueued::Queued { suppressed: 1, .. }),
        "{next:?}"
    );
    assert!(s.close_alert_condition("ops", KEY).await.unwrap());
    // Alerts without a key have no condition.
    queued_id(enqueue(s, "ops", None, REPEAT).await);
    assert!(!s.close_alert_condition("ops", KEY).await.unwrap());
}

async fn sla_alerts_are_claimed_once(h: &Harness) {
    let s = &h.store;
    assert!(s.claim_sla_alert("j", hour(0).start).await.unwrap());
    assert!(!s.claim_sla_alert("j", hour(0).start).await.unwrap());
    assert!(s.claim_sla_alert("j", hour(1).start).await.unwrap());
    assert!(s.claim_sla_alert("k", hour(0).start).await.unwrap());
    assert!(!s.claim_sla_alert("j", hour(1).start).await.unwrap());
    assert!(!s.claim_sla_alert("k", hour(0).start).await.unwrap());
    assert_eq!(raw_count(h, "sla_alerts").await, 3);
}

async fn concurrent_enqueues_queue_once(h: &Harness) {
    const TASKS: usize = 8;
    let second = h.reopen().await.expect("second store");
    // Rounds 0 and 1 race to create the throttle row; in round 2 it exists, its last alert went
    // out long ago and 5 were held back since.
    h.raw_exec(
        "INSERT INTO alert_throttle (channel, key, last_sent_at, suppressed) \
         VALUES ('ops', 'j|s2|step_failed', '2000-01-01T00:00:00.000000Z', 5)",
    )
    .await;
    for round in 0..3 {
        let key = format!("j|s{round}|step_failed");
        let earlier = if round == 2 { 5 } else { 0 };
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(TASKS));
        let mut handles = Vec::new();
        for t in 0..TASKS {
            let s = if t % 2 == 0 {
                h.store.clone()
            } else {
                second.clone()
            };
            let (barrier, key) = (barrier.clone(), key.clone());
            handles.push(tokio::spawn(async move {
                let alert = new_alert("ops", Some(&key), Duration::from_secs(3600));
                barrier.wait().await;
                s.enqueue_alert(&alert).await
            }));
        }
        let mut results = Vec::new();
        for handle in handles {
            results.push(handle.await.expect("task").expect("enqueue"));
        }
        let queued: Vec<_> = results
            .iter()
            .filter(|e| matches!(e, Enqueued::Queued { .. }))
            .collect();
        assert_eq!(queued.len(), 1, "exactly one is queued: {results:?}");
        assert_eq!(
            *queued[0],
            Enqueued::Queued {
                id: queued_id(*queued[0]),
                suppressed: earlier
            },
            "{results:?}"
        );
        // The other seven were all counted.
        assert_eq!(
            h.raw_strings(&format!(
                "SELECT CAST(suppressed AS TEXT) FROM alert_throttle WHERE key = '{key}'"
            ))
            .await,
            ["7"]
        );
    }
    let all = h.store.alerts(None, 0).await.unwrap();
    let count = |state| all.iter().filter(|a| a.state == state).count();
    assert_eq!(
        (count(AlertState::Queued), count(AlertState::Suppressed)),
        (3, 21)
    );
    assert_eq!(h.store.due_alerts(0).await.unwrap().len(), 3);
}

// ---------------------------------------------------------------------------------------------
// Opening
// ---------------------------------------------------------------------------------------------

#[test]
fn the_store_is_shareable() {
    fn shared<T: Send + Sync + Clone + 'static>() {}
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    shared::<Store>();
    error::<StoreError>();
}

#[tokio::test]
async fn bad_urls_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for url in [
        "mysql://u:secret@db/x",
        "sqlite://",
        "state.db",
        "postgres://u@127.0.0.1/test?schema=bad-name",
    ] {
        let err = Store::open(url, dir.path()).await.unwrap_err();
        assert!(matches!(err, StoreError::BadUrl(_)), "{url}: {err:?}");
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}

#[tokio::test]
async fn sqlite_paths_are_relative_to_the_root_and_folders_are_created() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open("sqlite://a/b/state.db", dir.path())
        .await
        .unwrap();
    assert!(dir.path().join("a/b/state.db").is_file());
    drop(store);
    let abs: &Path = &dir.path().join("abs/state.db");
    let url = format!("sqlite://{}", abs.display());
    let store = Store::open(&url, Path::new("/nonexistent-root"))
        .await
        .unwrap();
    assert!(abs.is_file());
    // WAL mode and the schema are in place.
    store
        .create_run("j", hour(0), Trigger::Manual)
        .await
        .unwrap();
    let conn = rusqlite::Connection::open(abs).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn postgres_default_schema_parameter_is_applied() {
    // A named schema is created when missing and holds the tables.
    let h = Harness::postgres().await;
    let schema = h.pg_schema.clone().unwrap();
    let client = pg_client().await;
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1",
            &[&schema],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        n, 16,
        "runs, step_attempts, step_intervals, consumer_lag, migrations, scheduled_intervals, \
         step_leases, paused_jobs, requests, daemons, alerts, alert_sends, alert_throttle, \
         sla_alerts, actions, consumer_lag_history"
    );
}

/// Two daemons never both hold a request: a claim holds it until it expires or is released, the
/// holder's claims renew, and racing claims split the requests without overlap.
async fn requests_are_claimed_by_one_daemon(h: &Harness) {
    use std::collections::HashSet;
    use std::time::Duration;
    let s = &h.store;
    let spec = serde_json::json!({"start": "2026-03-01T00:00:00Z", "end": "2026-03-02T00:00:00Z"});
    let a = s
        .submit_request(RequestKind::Trigger, "j", &spec, 0)
        .await
        .expect("submit");
    let b = s
        .submit_request(RequestKind::Backfill, "j", &spec, 0)
        .await
        .expect("submit");
    let ids =
        |v: Vec<cranium::store::RequestRecord>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let ttl = Duration::from_millis(400);
    assert_eq!(
        ids(s.claim_requests("d1", ttl).await.expect("claim")),
        vec![a, b]
    );
    assert!(
        s.claim_requests("d2", ttl).await.expect("claim").is_empty(),
        "held by d1"
    );
    assert_eq!(
        ids(s.claim_requests("d1", ttl).await.expect("renew")),
        vec![a, b]
    );
    // An ended request is nobody's.
    assert!(s.cancel_request(a).await.expect("cancel"));
    assert_eq!(
        ids(s.claim_requests("d1", ttl).await.expect("claim")),
        vec![b]
    );
    // d1 stops renewing: d2 takes over after the expiry.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        ids(s.claim_requests("d2", ttl).await.expect("claim")),
        vec![b]
    );
    assert!(s.claim_requests("d1", ttl).await.expect("claim").is_empty());
    // A clean stop releases at once.
    assert_eq!(s.release_requests("d2").await.expect("release"), 1);
    assert_eq!(
        ids(s.claim_requests("d1", ttl).await.expect("claim")),
        vec![b]
    );
    s.release_requests("d1").await.expect("release");

    // Racing daemons split new requests without overlap.
    let mut new = Vec::new();
    for _ in 0..6 {
        new.push(
            s.submit_request(RequestKind::Trigger, "k", &spec, 0)
                .await
                .expect("submit"),
        );
    }
    let mut tasks = Vec::new();
    for d in 0..4 {
        let store = s.clone();
        tasks.push(tokio::spawn(async move {
            let got = store
                .claim_requests(&format!("racer{d}"), Duration::from_secs(60))
                .await
                .expect("claim");
            got.into_iter().map(|r| r.id).collect::<Vec<_>>()
        }));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        for id in t.await.expect("task") {
            assert!(seen.insert(id), "request {id} claimed twice");
        }
    }
    for id in new {
        assert!(
            seen.contains(&id) || id == b,
            "request {id} claimed by nobody"
        );
    }
}

/// Fencing: an attempt's writes name its lease's token; once another runner took the lease over
/// (a new token), the first runner's writes are refused and change nothing.
async fn late_writes_of_a_lost_lease_are_refused(h: &Harness) {
    let s = &h.store;
    let iv = hour(0);
    let run = s
        .create_daemon_run("j", iv, Trigger::Schedule, None, 0)
        .await
        .unwrap();
    let short = Duration::from_millis(50);
    let Claim::Acquired { token: first } = s
        .claim_step("j", "a", iv.start, "A", run, short, true, None)
        .await
        .unwrap()
    else {
        panic!("A acquires");
    };
    // A renewal keeps the token.
    let Claim::Acquired { token: renewed } = s
        .claim_step("j", "a", iv.start, "A", run, short, true, None)
        .await
        .unwrap()
    else {
        panic!("A renews");
    };
    assert_eq!(renewed, first, "a renewal keeps the token");
    s.set_step_state_fenced(run, "j", "a", iv, StepState::Running, 1, None, first)
        .await
        .expect("the holder writes");
    let attempt = s
        .begin_attempt_fenced(run, "j", "a", iv, 1, "", first)
        .await
        .expect("the holder begins an attempt");

    // A is frozen past its lease; B takes it over with a newer token.
    tokio::time::sleep(Duration::from_millis(80)).await;
    let Claim::Acquired { token: second } = s
        .claim_step("j", "a", iv.start, "B", run, MINUTE, true, None)
        .await
        .unwrap()
    else {
        panic!("B takes the expired lease over");
    };
    assert!(second > first, "tokens grow: {first} then {second}");
    s.set_step_state_fenced(run, "j", "a", iv, StepState::Running, 2, None, second)
        .await
        .expect("the new holder writes");

    // A wakes up and tries to record its success: every write is refused.
    let ok = AttemptResult {
        state: Some(StepState::Success),
        error: None,
        rows_affected: Some(1),
        bytes: None,
        outputs: json!({"late": true}),
    };
    let refused = |e: StoreError| match e {
        StoreError::Fenced {
            job, step, token, ..
        } => {
            assert_eq!((job.as_str(), step.as_str(), token), ("j", "a", first));
            let msg = StoreError::Fenced {
                op: "x",
                job,
                step,
                interval_start: iv.start,
                token,
            }
            .to_string();
            assert!(msg.contains("was taken over by another runner"), "{msg}");
        }
        other => panic!("expected a refused write, got {other}"),
    };
    refused(
        s.finish_attempt_fenced(attempt, &ok, first)
            .await
            .expect_err("a late finish is refused"),
    );
    refused(
        s.set_step_state_fenced(
            run,
            "j",
            "a",
            iv,
            StepState::Success,
            1,
            Some(&json!({"late": true})),
            first,
        )
        .await
        .expect_err("a late state is refused"),
    );
    refused(
        s.begin_attempt_fenced(run, "j", "a", iv, 2, "", first)
            .await
            .expect_err("a late attempt is refused"),
    );
    // Nothing of A's late writes is in the store.
    let rec = s.step_state("j", "a", iv.start).await.unwrap().unwrap();
    assert_eq!((rec.state, rec.attempt), (StepState::Running, 2));
    assert_eq!(rec.outputs, serde_json::Value::Null);
    let attempts = s.attempts("j", iv.start, Some("a")).await.unwrap();
    assert_eq!(attempts.len(), 1, "no attempt was added: {attempts:?}");
    assert_ne!(
        attempts[0].state,
        StepState::Success,
        "the late success was not recorded"
    );
    // Once released, the old token is refused too (no lease at all).
    s.release_step("j", "a", iv.start, "B").await.unwrap();
    refused(
        s.set_step_state_fenced(run, "j", "a", iv, StepState::Failed, 1, None, first)
            .await
            .expect_err("no lease: refused"),
    );
}

/// A daemon that took a queued run and stalled before starting it (its run went back to the
/// queue and another daemon finished it) cannot start it late: nothing it would reset is reset.
async fn a_run_taken_over_cannot_be_started_late(h: &Harness) {
    let s = &h.store;
    let iv = hour(0);
    let run = s
        .create_daemon_run("j", iv, Trigger::Schedule, None, 0)
        .await
        .unwrap();
    assert!(s.take_queued_run(run, "d1").await.unwrap());
    // d1 stalls; its run is re-queued and d2 takes it, starts it and finishes both steps.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(s.requeue_stale(Duration::ZERO).await.unwrap(), [run]);
    assert!(s.take_queued_run(run, "d2").await.unwrap());
    assert!(s
        .start_run(run, Some("d2"), "j", iv, &["a", "b"])
        .await
        .unwrap());
    for step in ["a", "b"] {
        assert_eq!(
            s.step_state("j", step, iv.start)
                .await
                .unwrap()
                .unwrap()
                .state,
            StepState::Pending
        );
        s.set_step_state(
            run,
            "j",
            step,
            iv,
            StepState::Success,
            1,
            Some(&json!({"n": 1})),
        )
        .await
        .unwrap();
    }

    // d1 wakes up and starts "its" run: refused, and both records still say success.
    assert!(!s
        .start_run(run, Some("d1"), "j", iv, &["a", "b"])
        .await
        .unwrap());
    for step in ["a", "b"] {
        let rec = s.step_state("j", step, iv.start).await.unwrap().unwrap();
        assert_eq!(
            (rec.state, rec.outputs),
            (StepState::Success, json!({"n": 1}))
        );
    }
    let r = s.run(run).await.unwrap().unwrap();
    assert_eq!(
        (r.state, r.owner.as_deref()),
        (RunState::Running, Some("d2"))
    );

    // A step this run finished is done for it even when it reruns everything (skip_done
    // false); another run rerunning everything takes it.
    assert!(matches!(
        s.claim_step("j", "a", iv.start, "d2", run, MINUTE, false, None)
            .await
            .unwrap(),
        Claim::Done { .. }
    ));
    let other = s.create_run("j", iv, Trigger::Manual).await.unwrap();
    assert!(s
        .claim_step("j", "b", iv.start, "cli", other, MINUTE, false, None)
        .await
        .unwrap()
        .is_acquired());

    // A foreground run (no owner) always starts; an unknown run is an error.
    assert!(s.start_run(other, None, "j", iv, &["b"]).await.unwrap());
    assert!(matches!(
        s.start_run(999_999, None, "j", iv, &[]).await,
        Err(StoreError::NotFound { what: "run", .. })
    ));
}

async fn dashboard_actions_are_recorded_once_per_nonce(h: &Harness) {
    let s = &h.store;
    let action = NewAction {
        nonce: "n-1".into(),
        who: "ana".into(),
        action: "pause".into(),
        job: Some("j".into()),
        detail: serde_json::json!({"why": "<b>test</b>"}),
    };
    let id = s.record_action(&action).await.unwrap().expect("recorded");
    assert_eq!(
        s.record_action(&action).await.unwrap(),
        None,
        "a second submit"
    );
    let other = NewAction {
        nonce: "n-2".into(),
        action: "trigger".into(),
        job: None,
        ..action.clone()
    };
    let id2 = s
        .record_action(&other)
        .await
        .unwrap()
        .expect("another form");
    assert!(id2 > id);
    s.set_action_outcome(id, "done: paused j").await.unwrap();
    let all = s.actions(0).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].id, id2, "newest first");
    assert_eq!(
        (
            all[1].who.as_str(),
            all[1].action.as_str(),
            all[1].job.as_deref()
        ),
        ("ana", "pause", Some("j"))
    );
    assert_eq!(all[1].detail, serde_json::json!({"why": "<b>test</b>"}));
    assert_eq!(all[1].outcome.as_deref(), Some("done: paused j"));
    assert_eq!(all[0].outcome, None);
    assert_eq!(s.actions(1).await.unwrap().len(), 1);
}

async fn changed_steps_are_read_since_a_moment(h: &Harness) {
    let s = &h.store;
    let run = s.create_run("j", hour(0), Trigger::Manual).await.unwrap();
    s.set_step_state(run, "j", "a", hour(0), StepState::Running, 1, None)
        .await
        .unwrap();
    let mid = Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.set_step_state(run, "j", "b", hour(1), StepState::Success, 1, None)
        .await
        .unwrap();
    let all = s
        .changed_steps(mid - chrono::Duration::hours(1), 100)
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|r| r.step.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let since = s.changed_steps(mid, 100).await.unwrap();
    assert_eq!(since.len(), 1);
    assert_eq!(
        (since[0].step.as_str(), since[0].state),
        ("b", StepState::Success)
    );
    assert_eq!(
        s.changed_steps(mid - chrono::Duration::hours(1), 1)
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn consumer_lag_is_kept_over_time(h: &Harness) {
    let at = |secs: i64| {
        DateTime::from_timestamp(Utc::now().timestamp() - 3600 + secs, 0).expect("time")
    };
    let row = |p: i32, lag: i64, secs: i64| ConsumerLag {
        job: "events_hourly".into(),
        step: "extract".into(),
        topic: "app_events".into(),
        partition: p,
        committed_offset: 0,
        end_offset: lag,
        lag,
        run_id: None,
        recorded_at: at(secs),
    };
    h.store
        .record_consumer_lag(&[row(0, 10, 0), row(1, 5, 0)])
        .await
        .unwrap();
    h.store
        .record_consumer_lag(&[row(0, 2, 60), row(1, 0, 60)])
        .await
        .unwrap();
    let hist = h.store.lag_history(at(-10)).await.unwrap();
    let got: Vec<(i64, i64)> = hist
        .iter()
        .map(|s| (s.recorded_at.timestamp() - at(0).timestamp(), s.lag))
        .collect();
    assert_eq!(got, [(0, 15), (60, 2)], "partitions summed, oldest first");
    assert!(hist
        .iter()
        .all(|s| s.job == "events_hourly" && s.step == "extract"));
    assert_eq!(h.store.lag_history(at(30)).await.unwrap().len(), 1);
    // The latest value per partition is still one row each.
    assert_eq!(h.store.consumer_lag(None).await.unwrap().len(), 2);
}

async fn a_succeeded_attempt_and_its_step_record_are_written_together(h: &Harness) {
    let s = &h.store;
    let run = s.create_run("j", hour(0), Trigger::Manual).await.unwrap();
    s.set_step_state(run, "j", "a", hour(0), StepState::Running, 1, None)
        .await
        .unwrap();
    let id = s
        .begin_attempt(run, "j", "a", hour(0), 1, "a.log")
        .await
        .unwrap();
    s.finish_attempt(
        id,
        &AttemptResult {
            state: Some(StepState::Success),
            outputs: serde_json::json!({"n": 7}),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // With no further write: the record already says success, with the attempt's outputs.
    let rec = s
        .step_state("j", "a", hour(0).start)
        .await
        .unwrap()
        .expect("record");
    assert_eq!(rec.state, StepState::Success);
    assert_eq!(rec.outputs, serde_json::json!({"n": 7}));
    assert_eq!((rec.run_id, rec.attempt), (Some(run), 1));
    // A failed attempt leaves the record to the engine's own write.
    let b = s
        .begin_attempt(run, "j", "b", hour(0), 1, "b.log")
        .await
        .unwrap();
    s.set_step_state(run, "j", "b", hour(0), StepState::Running, 1, None)
        .await
        .unwrap();
    s.finish_attempt(
        b,
        &AttemptResult {
            error: Some("boom".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let rec = s
        .step_state("j", "b", hour(0).start)
        .await
        .unwrap()
        .expect("record");
    assert_eq!(rec.state, StepState::Running);
}

/// The SQLite store's file system full (a 2 MB tmpfs, filled): the write fails with a message
/// that says so and what to do, nothing half-written is left, and once there is room again the
/// store is intact and takes writes. Needs root (it mounts a tmpfs); skipped without.
#[tokio::test]
async fn a_full_disk_under_the_sqlite_store_is_a_clear_error_and_corrupts_nothing() {
    if !nix_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).expect("mount point");
    let mount = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&mnt)
        .status()
        .expect("mount");
    assert!(mount.success(), "mount -t tmpfs: {mount}");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());

    let url = format!("sqlite://{}/state.db", mnt.display());
    let s = Store::open(&url, dir.path())
        .await
        .expect("open on the tmpfs");
    let run = s
        .create_run("j", hour(0), Trigger::Manual)
        .await
        .expect("run");
    let a = s
        .begin_attempt(run, "j", "s", hour(0), 1, "logs/j/s/1.log")
        .await
        .expect("attempt");
    // Fill the file system but for a few KB.
    let filler = mnt.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).expect("filler");
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.flush();
    }
    let big = json!({ "blob": "x".repeat(1024 * 1024) });
    let result = AttemptResult {
        state: Some(StepState::Success),
        error: None,
        rows_affected: Some(1),
        bytes: None,
        outputs: big.clone(),
    };
    let e = s
        .finish_attempt(a, &result)
        .await
        .expect_err("no room for a 1 MB output");
    let msg = e.to_string();
    assert!(
        msg.starts_with("sqlite store: finish_attempt: database or disk is full: the file system that holds the store is full; free space there and run again"),
        "{msg}"
    );
    assert!(!e.is_unreachable(), "retrying does not make room");

    // Room again: the failed write left nothing, the store is whole and takes the write.
    std::fs::remove_file(&filler).expect("remove filler");
    let before = s
        .attempts("j", hour(0).start, Some("s"))
        .await
        .expect("attempts");
    assert_eq!(before.len(), 1);
    assert_eq!(
        before[0].state,
        StepState::Running,
        "the failed write changed nothing"
    );
    s.finish_attempt(a, &result).await.expect("room again");
    let after = s
        .attempts("j", hour(0).start, Some("s"))
        .await
        .expect("attempts");
    assert_eq!(after[0].state, StepState::Success);
    assert_eq!(after[0].outputs, big);
    drop(s);
    let conn = rusqlite::Connection::open(mnt.join("state.db")).expect("open");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(check, "ok");
}

fn nix_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
