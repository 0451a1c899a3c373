//! The daemon's scheduling, driven by a manual clock: a week of schedules, outages, catchup,
//! `max_active_runs`, pools, priority, pauses, edited schedules, cross-job waits, reloads and
//! requests, in milliseconds of real time (steps are `noop`; the store is a real SQLite file).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use cranium::config::interp::Env;
use cranium::daemon::clock::{Clock, ManualClock};
use cranium::daemon::{Daemon, DaemonOptions};
use cranium::engine::logs::LogFormat;
use cranium::schedule::{parse_time, Tz};
use cranium::store::{RequestKind, RunFilter, RunState, Store, Trigger};

fn t(s: &str) -> DateTime<Utc> {
    parse_time(s, Tz::UTC).expect("time")
}

/// A project folder: `cranium.yaml` (SQLite store, no health server, the given extra settings)
/// and job files.
fn project(dir: &Path, extra: &str, jobs: &[(&str, &str)]) {
    std::fs::write(
        dir.join("cranium.yaml"),
        format!("name: t\nstate: sqlite://.cranium/state.db\ndaemon:\n  listen: \"off\"\n{extra}"),
    )
    .expect("cranium.yaml");
    std::fs::create_dir_all(dir.join("jobs")).expect("jobs/");
    for (name, text) in jobs {
        std::fs::write(dir.join("jobs").join(format!("{name}.yaml")), text).expect("job file");
    }
}

fn job(name: &str, schedule: &str, tz: &str, start: &str, extra: &str, steps: &str) -> String {
    format!(
        "job: {name}\nschedule: \"{schedule}\"\ntimezone: {tz}\nstart: \"{start}\"\n{extra}steps:\n{steps}"
    )
}

const ONE_STEP: &str = "  - id: a\n    kind: noop\n";

/// A project with one hourly job `h` (one noop step) from 2026-03-01.
fn hourly_project(catchup: bool, max_active_runs: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = format!("catchup: {catchup}\nmax_active_runs: {max_active_runs}\n");
    project(
        dir.path(),
        "",
        &[(
            "h",
            &job("h", "@hourly", "UTC", "2026-03-01", &extra, ONE_STEP),
        )],
    );
    dir
}

async fn start(dir: &Path, clock: &Arc<ManualClock>) -> Daemon {
    Daemon::start(DaemonOptions {
        root: dir.to_path_buf(),
        env: Env::from_pairs::<_, &str, &str>([]),
        clock: clock.clone(),
        log_format: LogFormat::Text,
        serve_health: false,
        listen: None,
        id: None,
    })
    .await
    .unwrap_or_else(|e| panic!("daemon start: {e}"))
}

/// Every run of `job`, oldest first.
async fn runs_of(store: &Store, job: &str) -> Vec<cranium::store::RunRecord> {
    let mut r = store
        .runs(&RunFilter {
            job: Some(job.to_string()),
            state: None,
            limit: 0,
        })
        .await
        .expect("runs");
    r.reverse();
    r
}

/// Asserts that the runs of `job` are exactly the job's intervals starting in [from, to), once
/// each, all succeeded.
async fn assert_exactly(store: &Store, root: &Path, job: &str, from: &str, to: &str, tz: Tz) {
    let runs = runs_of(store, job).await;
    let starts: Vec<DateTime<Utc>> = runs.iter().map(|r| r.interval.start).collect();
    let unique: HashSet<_> = starts.iter().collect();
    assert_eq!(unique.len(), starts.len(), "{job}: an interval ran twice");
    assert!(
        runs.iter().all(|r| r.state == RunState::Success),
        "{job}: not every run succeeded"
    );
    let checked =
        cranium::check::check(root, &Env::from_pairs::<_, &str, &str>([])).expect("check");
    let j = checked.project.job(job).expect("job");
    let expected: Vec<DateTime<Utc>> = j
        .calendar
        .intervals(
            parse_time(from, tz).expect("from"),
            parse_time(to, tz).expect("to"),
        )
        .into_iter()
        .map(|i| i.start)
        .collect();
    assert_eq!(starts, expected, "{job}: runs differ from the calendar");
    // Contiguous: no interval skipped or doubled.
    for w in runs.windows(2) {
        assert_eq!(w[0].interval.end, w[1].interval.start, "{job}: a gap");
    }
}

/// Moves the clock in steps of `step` up to `until`, letting the daemon catch up at each.
async fn drive(d: &mut Daemon, clock: &ManualClock, until: DateTime<Utc>, step: Duration) {
    while clock.now() < until {
        clock.advance(step);
        d.settle().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_week_across_dst_runs_every_interval_once() {
    // Spring forward (a 167-hour week) and fall back (169 hours) in both zones.
    for (tz_name, from, to, hours) in [
        ("America/New_York", "2026-03-05", "2026-03-12", 167),
        ("Europe/Berlin", "2026-03-26", "2026-04-02", 167),
        ("America/New_York", "2026-10-29", "2026-11-05", 169),
        ("Europe/Berlin", "2026-10-22", "2026-10-29", 169),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let tz = cranium::schedule::parse_timezone(tz_name).expect("tz");
        project(
            dir.path(),
            "",
            &[
                (
                    "hourly",
                    &job(
                        "hourly",
                        "@hourly",
                        tz_name,
                        from,
                        "catchup: true\n",
                        ONE_STEP,
                    ),
                ),
                (
                    "daily",
                    &job(
                        "daily",
                        "30 2 * * *",
                        tz_name,
                        from,
                        "catchup: true\n",
                        ONE_STEP,
                    ),
                ),
            ],
        );
        let begin = parse_time(from, tz).expect("from");
        let end = parse_time(to, tz).expect("to");
        let clock = Arc::new(ManualClock::new(begin));
        let mut d = start(dir.path(), &clock).await;
        let store = d.store().clone();
        let wall = std::time::Instant::now();
        drive(&mut d, &clock, end, Duration::minutes(20)).await;
        assert_exactly(&store, dir.path(), "hourly", from, to, tz).await;
        // The daily job at 02:30 local: on the spring-forward day 02:30 does not exist, on the
        // fall-back day it occurs twice, and either way the day runs once (the rules in
        // src/schedule.rs).
        let daily = runs_of(&store, "daily").await;
        // Seven days from midnight: the 02:30 intervals of six of them have ended by the end.
        assert_eq!(daily.len(), 6, "{tz_name}: {daily:?}");
        assert!(daily.iter().all(|r| r.state == RunState::Success));
        let n = runs_of(&store, "hourly").await.len();
        assert_eq!(n, hours, "{tz_name} from {from}: the week's hours");
        assert!(
            wall.elapsed() < std::time::Duration::from_secs(60),
            "a week took {:?}",
            wall.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_with_catchup_runs_every_missed_interval_and_without_runs_the_latest() {
    for catchup in [true, false] {
        let dir = hourly_project(catchup, 3);
        let clock = Arc::new(ManualClock::new(t("2026-03-01T00:00:00Z")));
        {
            let mut d = start(dir.path(), &clock).await;
            drive(
                &mut d,
                &clock,
                t("2026-03-01T06:05:00Z"),
                Duration::minutes(30),
            )
            .await;
        }
        // Down for ten hours.
        clock.set(t("2026-03-01T16:05:00Z"));
        let mut d = start(dir.path(), &clock).await;
        d.settle().await;
        let store = d.store().clone();
        let runs = runs_of(&store, "h").await;
        let starts: Vec<String> = runs
            .iter()
            .map(|r| r.interval.start.format("%H").to_string())
            .collect();
        let skipped = store
            .skipped_intervals(Some("h"), 0)
            .await
            .expect("skipped");
        if catchup {
            let want: Vec<String> = (0..16).map(|h| format!("{h:02}")).collect();
            assert_eq!(starts, want);
            assert!(skipped.is_empty());
        } else {
            let mut want: Vec<String> = (0..6).map(|h| format!("{h:02}")).collect();
            want.push("15".into());
            assert_eq!(starts, want);
            let mut s: Vec<String> = skipped
                .iter()
                .map(|x| x.interval.start.format("%H").to_string())
                .collect();
            s.sort();
            assert_eq!(s, (6..15).map(|h| format!("{h:02}")).collect::<Vec<_>>());
            assert!(
                skipped[0].reason.contains("catchup: false"),
                "{}",
                skipped[0].reason
            );
        }
        assert!(runs.iter().all(|r| r.state == RunState::Success));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_active_runs_bounds_the_runs_of_a_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let slow = "  - id: a\n    kind: noop\n    sleep: 300ms\n";
    project(
        dir.path(),
        "",
        &[(
            "h",
            &job(
                "h",
                "@hourly",
                "UTC",
                "2026-03-01",
                "catchup: true\nmax_active_runs: 2\n",
                slow,
            ),
        )],
    );
    let clock = Arc::new(ManualClock::new(t("2026-03-01T10:00:00Z")));
    let mut d = start(dir.path(), &clock).await;
    d.tick().await;
    assert_eq!(d.active_runs(), 2);
    assert_eq!(d.running_steps(), 2);
    d.tick().await;
    assert_eq!(
        d.active_runs(),
        2,
        "a second tick adds no run past the limit"
    );
    d.settle().await;
    let runs = runs_of(d.store(), "h").await;
    assert_eq!(runs.len(), 10);
    assert!(runs.iter().all(|r| r.state == RunState::Success));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_in_one_pool_does_not_hold_back_another_and_priority_ranks_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut big = String::new();
    for i in 0..1000 {
        big.push_str(&format!(
            "  - id: s{i}\n    kind: noop\n    sleep: 30s\n    pool: warehouse\n"
        ));
    }
    let small = "  - id: x\n    kind: noop\n    sleep: 30s\n    pool: kafka\n";
    let loose = "  - id: y\n    kind: noop\n    sleep: 30s\n";
    project(
        dir.path(),
        "  max_running_steps: 6\npools:\n  warehouse: 4\n  kafka: 2\n",
        &[
            ("big", &job("big", "@hourly", "UTC", "2026-03-01", "", &big)),
            (
                "small",
                &job("small", "@hourly", "UTC", "2026-03-01", "", small),
            ),
            (
                "urgent",
                &job(
                    "urgent",
                    "@hourly",
                    "UTC",
                    "2026-03-01",
                    "priority: 10\n",
                    loose,
                ),
            ),
            (
                "later",
                &job(
                    "later",
                    "@hourly",
                    "UTC",
                    "2026-03-01",
                    "priority: -5\n",
                    loose,
                ),
            ),
        ],
    );
    let clock = Arc::new(ManualClock::new(t("2026-03-01T10:00:00Z")));
    let mut d = start(dir.path(), &clock).await;
    d.tick().await;
    let st = d.shared.get();
    let by_job: BTreeMap<String, usize> =
        st.running_steps.iter().fold(BTreeMap::new(), |mut m, r| {
            *m.entry(r.job.clone()).or_default() += 1;
            m
        });
    // 6 slots: urgent first (priority 10); then big's 1,000 warehouse steps rank before small's
    // kafka step (same priority and due time, an older run), but only 4 fit their pool, so
    // small's step starts at once; `later` (priority -5) waits for a slot.
    assert_eq!(by_job.get("urgent"), Some(&1), "{by_job:?}");
    assert_eq!(by_job.get("small"), Some(&1), "{by_job:?}");
    assert_eq!(by_job.get("big"), Some(&4), "{by_job:?}");
    assert_eq!(by_job.get("later"), None, "{by_job:?}");
    assert_eq!(st.running_steps.len(), 6);
    let pools: BTreeMap<String, (usize, usize)> = st
        .pools
        .iter()
        .map(|p| (p.name.clone(), (p.slots, p.used)))
        .collect();
    assert_eq!(pools["warehouse"], (4, 4));
    assert_eq!(pools["kafka"], (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_job_creates_nothing_and_catchup_decides_on_unpause() {
    for catchup in [false, true] {
        let dir = hourly_project(catchup, 10);
        let clock = Arc::new(ManualClock::new(t("2026-03-01T01:30:00Z")));
        let mut d = start(dir.path(), &clock).await;
        d.settle().await;
        let store = d.store().clone();
        assert_eq!(runs_of(&store, "h").await.len(), 1);
        store.set_paused("h", true).await.expect("pause");
        drive(
            &mut d,
            &clock,
            t("2026-03-01T05:30:00Z"),
            Duration::minutes(30),
        )
        .await;
        assert_eq!(runs_of(&store, "h").await.len(), 1, "paused: no runs");
        assert!(store
            .skipped_intervals(Some("h"), 0)
            .await
            .expect("s")
            .is_empty());
        store.set_paused("h", false).await.expect("unpause");
        d.settle().await;
        let runs = runs_of(&store, "h").await;
        let skipped = store.skipped_intervals(Some("h"), 0).await.expect("s");
        if catchup {
            assert_eq!(runs.len(), 5);
            assert!(skipped.is_empty());
        } else {
            assert_eq!(runs.len(), 2);
            assert_eq!(runs[1].interval.start, t("2026-03-01T04:00:00Z"));
            assert_eq!(skipped.len(), 3);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_edited_after_its_interval_ran_never_fires_it_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |schedule: &str| {
        project(
            dir.path(),
            "",
            &[(
                "h",
                &job(
                    "h",
                    schedule,
                    "UTC",
                    "2026-03-01",
                    "catchup: true\nmax_active_runs: 50\n",
                    ONE_STEP,
                ),
            )],
        )
    };
    write("@hourly");
    let clock = Arc::new(ManualClock::new(t("2026-03-01T11:05:00Z")));
    let mut d = start(dir.path(), &clock).await;
    d.settle().await;
    let store = d.store().clone();
    assert_eq!(runs_of(&store, "h").await.len(), 11); // 00:00 .. 10:00
                                                      // Every two hours now: the 10:00-12:00 interval starts where a run already started.
    write("0 */2 * * *");
    // A different size and time, whatever the file system's time resolution.
    std::fs::write(dir.path().join("jobs/pad.yaml.txt"), "x").ok();
    assert!(d.maybe_reload().await, "the edit is picked up");
    clock.set(t("2026-03-01T12:05:00Z"));
    d.settle().await;
    let runs = runs_of(&store, "h").await;
    assert_eq!(runs.len(), 11, "10:00 must not run again: {runs:?}");
    clock.set(t("2026-03-01T14:05:00Z"));
    d.settle().await;
    let runs = runs_of(&store, "h").await;
    assert_eq!(runs.len(), 12);
    assert_eq!(runs[11].interval.start, t("2026-03-01T12:00:00Z"));
    // Back to daily: today's interval (00:00) started before what already ran.
    write("@daily");
    assert!(d.maybe_reload().await);
    clock.set(t("2026-03-02T00:05:00Z"));
    d.settle().await;
    assert_eq!(runs_of(&store, "h").await.len(), 12);
    clock.set(t("2026-03-03T00:05:00Z"));
    d.settle().await;
    let runs = runs_of(&store, "h").await;
    assert_eq!(runs.len(), 13);
    assert_eq!(runs[12].interval.start, t("2026-03-02T00:00:00Z"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downstream_job_starts_as_soon_as_its_upstream_succeeds() {
    let dir = tempfile::tempdir().expect("tempdir");
    project(
        dir.path(),
        "",
        &[
            (
                "up",
                &job(
                    "up",
                    "@hourly",
                    "UTC",
                    "2026-03-01",
                    "",
                    "  - id: load\n    kind: noop\n    sleep: 200ms\n",
                ),
            ),
            (
                "down",
                &job(
                    "down",
                    "@hourly",
                    "UTC",
                    "2026-03-01",
                    "",
                    "  - id: rollup\n    kind: noop\n    after: [up.load]\n",
                ),
            ),
        ],
    );
    let clock = Arc::new(ManualClock::new(t("2026-03-01T10:00:30Z")));
    let mut d = start(dir.path(), &clock).await;
    let wall = std::time::Instant::now();
    d.settle().await;
    let store = d.store().clone();
    let down = runs_of(&store, "down").await;
    assert_eq!(down.len(), 1);
    assert_eq!(down[0].state, RunState::Success);
    let up_end = store
        .attempts("up", t("2026-03-01T09:00:00Z"), Some("load"))
        .await
        .expect("attempts")[0]
        .ended_at
        .expect("ended");
    let down_start = store
        .attempts("down", t("2026-03-01T09:00:00Z"), Some("rollup"))
        .await
        .expect("attempts")[0]
        .started_at;
    let gap = (down_start - up_end).num_milliseconds();
    assert!(
        (0..1000).contains(&gap),
        "the downstream started {gap} ms after the upstream ended"
    );
    assert!(wall.elapsed() < std::time::Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_breaks_a_file_is_refused_and_the_old_version_runs_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    project(
        dir.path(),
        "",
        &[("h", &job("h", "@hourly", "UTC", "2026-03-01", "", ONE_STEP))],
    );
    let clock = Arc::new(ManualClock::new(t("2026-03-01T10:05:00Z")));
    let mut d = start(dir.path(), &clock).await;
    d.settle().await;
    std::fs::write(
        dir.path().join("jobs/h.yaml"),
        "job: h\nschedule: \"@hourly\"\nstart: \"2026-03-01\"\nsteps:\n  - id: a\n    kind: noop\n    colour: red\n",
    )
    .expect("write");
    assert!(!d.maybe_reload().await, "a broken project is refused");
    let errors = d.shared.get().reload_errors;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("error: jobs/h.yaml:7:5: "),
        "{}",
        errors[0]
    );
    clock.set(t("2026-03-01T11:05:00Z"));
    d.settle().await;
    assert_eq!(
        runs_of(d.store(), "h").await.len(),
        2,
        "the old version runs on"
    );
    std::fs::write(
        dir.path().join("jobs/h.yaml"),
        job(
            "h",
            "@hourly",
            "UTC",
            "2026-03-01",
            "",
            "  - id: a\n    kind: noop\n  - id: b\n    kind: noop\n    after: [a]\n",
        ),
    )
    .expect("write");
    assert!(d.maybe_reload().await);
    assert!(d.shared.get().reload_errors.is_empty());
    clock.set(t("2026-03-01T12:05:00Z"));
    d.settle().await;
    let b = d
        .store()
        .step_state("h", "b", t("2026-03-01T11:00:00Z"))
        .await
        .expect("state");
    assert_eq!(b.map(|r| r.state), Some(cranium::store::StepState::Success));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_and_submitted_backfills_run_and_a_backfill_can_be_cancelled() {
    let dir = tempfile::tempdir().expect("tempdir");
    project(
        dir.path(),
        "",
        &[
            ("h", &job("h", "@hourly", "UTC", "2026-03-01", "", ONE_STEP)),
            (
                "slow",
                &job(
                    "slow",
                    "@daily",
                    "UTC",
                    "2026-01-01",
                    "",
                    "  - id: a\n    kind: noop\n    sleep: 150ms\n",
                ),
            ),
        ],
    );
    let clock = Arc::new(ManualClock::new(t("2026-03-01T10:05:00Z")));
    let mut d = start(dir.path(), &clock).await;
    let store = d.store().clone();
    store.set_paused("h", true).await.expect("pause");
    store.set_paused("slow", true).await.expect("pause");
    let trig = store
        .submit_request(
            RequestKind::Trigger,
            "h",
            &serde_json::json!({"start": "2026-03-01T03:00:00Z", "end": "2026-03-01T04:00:00Z"}),
            0,
        )
        .await
        .expect("trigger");
    let bf = store
        .submit_request(
            RequestKind::Backfill,
            "h",
            &serde_json::json!({"from": "2026-03-01T00:00:00Z", "to": "2026-03-01T06:00:00Z", "max_active_runs": 2}),
            -1000,
        )
        .await
        .expect("backfill");
    d.housekeeping().await;
    d.settle().await;
    let r = store.request(trig).await.expect("r").expect("r");
    assert_eq!(r.state, cranium::store::RequestState::Done, "{r:?}");
    let r = store.request(bf).await.expect("r").expect("r");
    assert_eq!(r.state, cranium::store::RequestState::Done, "{r:?}");
    let runs = runs_of(&store, "h").await;
    assert_eq!(runs[0].trigger, Trigger::Manual);
    assert!(runs[1..].iter().all(|r| r.trigger == Trigger::Backfill));
    // The trigger ran 03:00 and the backfill every hour of the range: each step ran once (the
    // backfill's run of 03:00, planned while the trigger ran, found it done).
    for h in 0..6 {
        let at = t(&format!("2026-03-01T{h:02}:00:00Z"));
        let attempts = store.attempts("h", at, Some("a")).await.expect("attempts");
        assert_eq!(attempts.len(), 1, "hour {h}: {attempts:?}");
        assert!(runs
            .iter()
            .any(|r| r.interval.start == at && r.state == RunState::Success));
    }

    // A long backfill, cancelled after its first runs.
    let bf = store
        .submit_request(
            RequestKind::Backfill,
            "slow",
            &serde_json::json!({"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z", "max_active_runs": 1}),
            -1000,
        )
        .await
        .expect("backfill");
    d.housekeeping().await;
    d.tick().await;
    assert_eq!(d.active_runs(), 1);
    assert!(store.cancel_request(bf).await.expect("cancel"));
    d.housekeeping().await;
    d.settle().await;
    assert_eq!(d.active_runs(), 0);
    let runs = store.request_runs(bf).await.expect("runs");
    assert!(runs.len() <= 2, "cancelled half way: {} runs", runs.len());
    let r = store.request(bf).await.expect("r").expect("r");
    assert_eq!(r.state, cranium::store::RequestState::Cancelled);
    assert!(!store.cancel_request(bf).await.expect("cancel again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_one_sqlite_store_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    project(
        dir.path(),
        "",
        &[("h", &job("h", "@hourly", "UTC", "2026-03-01", "", ONE_STEP))],
    );
    let clock = Arc::new(ManualClock::new(t("2026-03-01T10:05:00Z")));
    let _d = start(dir.path(), &clock).await;
    let err = Daemon::start(DaemonOptions {
        root: dir.path().to_path_buf(),
        env: Env::from_pairs::<_, &str, &str>([]),
        clock: clock.clone(),
        log_format: LogFormat::Text,
        serve_health: false,
        listen: None,
        id: None,
    })
    .await
    .err()
    .expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "{msg}"
    );
    assert!(msg.contains(".cranium/state.db"), "{msg}");
}

/// Whatever ends an attempt (success, failure, timeout, cancellation, its job deleted by a
/// reload), its slot and its lease come back: nothing can leave a pool or a schedule blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_and_leases_come_back_whatever_ends_the_attempt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pg = "postgres://postgres@127.0.0.1:5432/test";
    let steps = "  - id: ok\n    kind: noop\n    pool: p\n\
                 \x20 - id: broken_sql\n    kind: sql\n    connection: pg\n    query: SELECT * FROM no_such_table_anywhere\n    pool: p\n\
                 \x20 - id: too_slow\n    kind: noop\n    sleep: 10s\n    timeout: 200ms\n    pool: p\n";
    project(
        dir.path(),
        &format!("  max_running_steps: 3\npools:\n  p: 3\nconnections:\n  pg:\n    kind: postgres\n    url: {pg}\n"),
        &[
            ("ends", &job("ends", "@hourly", "UTC", "2026-03-01", "", steps)),
            (
                "doomed",
                &job(
                    "doomed",
                    "@hourly",
                    "UTC",
                    "2026-03-01",
                    "",
                    "  - id: slow\n    kind: noop\n    sleep: 500ms\n",
                ),
            ),
        ],
    );
    let clock = Arc::new(ManualClock::new(t("2026-03-01T10:05:00Z")));
    let mut d = start(dir.path(), &clock).await;
    let store = d.store().clone();
    d.tick().await;
    assert_eq!(
        d.running_steps(),
        3,
        "the pool and the global limit are full"
    );
    // The doomed job's file goes away while its step runs (it waits for a slot first).
    std::fs::remove_file(dir.path().join("jobs/doomed.yaml")).expect("rm");
    assert!(d.maybe_reload().await);
    d.settle().await;
    assert_eq!(d.running_steps(), 0);
    assert_eq!(d.active_runs(), 0);
    let st = d.shared.get();
    assert_eq!(
        st.pools.iter().map(|p| p.used).sum::<usize>(),
        0,
        "{:?}",
        st.pools
    );
    assert!(
        store.leases().await.expect("leases").is_empty(),
        "a lease was left behind"
    );
    let state = |step: &'static str| {
        let store = store.clone();
        async move {
            store
                .step_state("ends", step, t("2026-03-01T09:00:00Z"))
                .await
                .expect("state")
                .map(|r| r.state)
        }
    };
    use cranium::store::StepState::*;
    assert_eq!(state("ok").await, Some(Success));
    assert_eq!(state("broken_sql").await, Some(Failed));
    assert_eq!(state("too_slow").await, Some(Failed));
    let attempts = store
        .attempts("ends", t("2026-03-01T09:00:00Z"), Some("too_slow"))
        .await
        .expect("attempts");
    assert!(
        attempts[0]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("timed out"),
        "{attempts:?}"
    );
    // The deleted job's run finished with the version it started with.
    let doomed = runs_of(&store, "doomed").await;
    assert_eq!(doomed.len(), 1);
    assert_eq!(doomed[0].state, RunState::Success);
    // Cancellation: a long step of a triggered run, its request cancelled.
    std::fs::write(
        dir.path().join("jobs/doomed.yaml"),
        job(
            "doomed",
            "@hourly",
            "UTC",
            "2026-03-01",
            "",
            "  - id: slow\n    kind: noop\n    sleep: 30s\n",
        ),
    )
    .expect("write");
    assert!(d.maybe_reload().await);
    store.set_paused("doomed", true).await.expect("pause");
    let id = store
        .submit_request(
            RequestKind::Trigger,
            "doomed",
            &serde_json::json!({"start": "2026-03-01T05:00:00Z", "end": "2026-03-01T06:00:00Z"}),
            0,
        )
        .await
        .expect("trigger");
    d.housekeeping().await;
    d.tick().await;
    assert_eq!(d.running_steps(), 1);
    assert_eq!(store.leases().await.expect("leases").len(), 1);
    store.cancel_request(id).await.expect("cancel");
    let wall = std::time::Instant::now();
    d.settle().await;
    assert!(
        wall.elapsed() < std::time::Duration::from_secs(5),
        "the cancel took {:?}",
        wall.elapsed()
    );
    assert_eq!(d.running_steps(), 0);
    assert!(store.leases().await.expect("leases").is_empty());
    assert_eq!(
        store
            .step_state("doomed", "slow", t("2026-03-01T05:00:00Z"))
            .await
            .expect("state")
            .map(|r| r.state),
        Some(Pending),
        "a cancelled attempt goes back to pending"
    );
}

/// A step without `pool:` joins the pool named like its connection; a submitted backfill (rank
/// -1000) waits behind a scheduled run for the last slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_pools_by_default_and_backfills_rank_below_the_schedule() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pg = "postgres://postgres@127.0.0.1:5432/test";
    project(
        dir.path(),
        &format!("  max_running_steps: 1\npools:\n  pg: 3\nconnections:\n  pg:\n    kind: postgres\n    url: {pg}\n"),
        &[
            (
                "load",
                &job(
                    "load",
                    "@hourly",
                    "UTC",
                    "2026-03-01",
                    "",
                    "  - id: q\n    kind: sql\n    connection: pg\n    query: SELECT pg_sleep(0.3)\n",
                ),
            ),
            (
                "old",
                &job(
                    "old",
                    "@daily",
                    "UTC",
                    "2026-01-01",
                    "",
                    "  - id: a\n    kind: noop\n    sleep: 300ms\n",
                ),
            ),
        ],
    );
    let checked =
        cranium::check::check(dir.path(), &Env::from_pairs::<_, &str, &str>([])).expect("check");
    let step = &checked.project.job("load").expect("job").steps[0];
    assert_eq!(step.pool.as_deref(), Some("pg"), "the connection's pool");
    let clock = Arc::new(ManualClock::new(t("2026-03-01T10:05:00Z")));
    let mut d = start(dir.path(), &clock).await;
    let store = d.store().clone();
    store.set_paused("old", true).await.expect("pause");
    // The backfill's intervals are older (due earlier) but rank below the scheduled run.
    store
        .submit_request(
            RequestKind::Backfill,
            "old",
            &serde_json::json!({"from": "2026-01-01T00:00:00Z", "to": "2026-01-03T00:00:00Z"}),
            cranium::daemon::BACKFILL_PRIORITY,
        )
        .await
        .expect("backfill");
    d.housekeeping().await;
    d.tick().await;
    let running = d.shared.get().running_steps;
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].job, "load", "{running:?}");
    assert_eq!(running[0].pool.as_deref(), Some("pg"));
    d.settle().await;
    assert_eq!(runs_of(&store, "old").await.len(), 2);
    assert!(runs_of(&store, "old")
        .await
        .iter()
        .all(|r| r.state == RunState::Success));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lua_script_that_exhausts_its_limits_fails_its_attempt_and_the_daemon_runs_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spin = "  - id: spin\n    kind: lua\n    instruction_limit: 100000\n    retries: 0\n    code: |\n      cranium.log(\"info\", \"spinning\")\n      while true do end\n";
    let hog = "  - id: hog\n    kind: lua\n    memory_limit: 8MB\n    retries: 0\n    code: |\n      local t = {}\n      for i = 1, 10000000 do t[i] = string.rep(\"x\", 100) .. i end\n";
    project(
        dir.path(),
        "",
        &[
            (
                "spin",
                &job(
                    "spin",
                    "@hourly",
                    "UTC",
                    "2026-03-01",
                    "catchup: true\n",
                    spin,
                ),
            ),
            (
                "hog",
                &job(
                    "hog",
                    "@hourly",
                    "UTC",
                    "2026-03-01",
                    "catchup: true\n",
                    hog,
                ),
            ),
            (
                "fine",
                &job(
                    "fine",
                    "@hourly",
                    "UTC",
                    "2026-03-01",
                    "catchup: true\n",
                    ONE_STEP,
                ),
            ),
        ],
    );
    let clock = Arc::new(ManualClock::new(t("2026-03-01T00:00:00Z")));
    let mut d = start(dir.path(), &clock).await;
    let store = d.store().clone();
    drive(
        &mut d,
        &clock,
        t("2026-03-01T03:00:00Z"),
        Duration::minutes(30),
    )
    .await;
    for (job, step, limit) in [
        ("spin", "spin", "instruction limit of 100000"),
        ("hog", "hog", "memory limit"),
    ] {
        let runs = runs_of(&store, job).await;
        assert_eq!(runs.len(), 3, "{job}: every interval ran: {runs:?}");
        assert!(runs.iter().all(|r| r.state == RunState::Failed), "{runs:?}");
        let attempts = store
            .attempts(job, t("2026-03-01T00:00:00Z"), Some(step))
            .await
            .expect("attempts");
        let err = attempts
            .last()
            .and_then(|a| a.error.clone())
            .unwrap_or_default();
        assert!(
            err.contains(limit),
            "{job}: the attempt says which limit: {err}"
        );
    }
    // The daemon ran on: the other job's intervals all succeeded, and it still ticks.
    let fine = runs_of(&store, "fine").await;
    assert_eq!(fine.len(), 3);
    assert!(
        fine.iter().all(|r| r.state == RunState::Success),
        "{fine:?}"
    );
    drive(
        &mut d,
        &clock,
        t("2026-03-01T04:00:00Z"),
        Duration::minutes(30),
    )
    .await;
    assert_eq!(
        runs_of(&store, "fine").await.len(),
        4,
        "the daemon lives on"
    );
}
