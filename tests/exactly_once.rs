//! Exactly once under SIGKILL: 1,000,000 JSON events (~300 bytes, an id and a time) over 4 partitions;
//! `cranium backfill` of a `kafka_to_s3` step is killed at random points at least 20 times and started
//! again each time until it completes; then every object is read back and every id must be present
//! exactly once (count, and a checksum of the ids).

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rand::RngExt;
use support::*;

const EVENTS: u64 = 1_000_000;
const PARTITIONS: i32 = 4;
const HOURS: i64 = 4;
const MIN_KILLS: usize = 20;

fn cranium(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cranium"));
    c.args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The event with id `i`: ~300 bytes; its time spreads the events evenly over `HOURS` hours from
/// 2026-03-01T00:00Z, in id order within each partition.
fn event(i: u64) -> (i32, i64, Vec<u8>) {
    let start = 1_772_323_200_000i64; // 2026-03-01T00:00:00Z
    let ts = start + (i as i64) * HOURS * 3_600_000 / EVENTS as i64;
    let time = chrono::DateTime::from_timestamp_millis(ts)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default();
    let kind = ["click", "view", "applet_run", "login"][(i % 4) as usize];
    let channel = ["ios", "android", "web"][(i % 3) as usize];
    let body = serde_json::json!({
        "id": i,
        "time": time,
        "type": kind,
        "user_id": (i * 7919) % 100_000,
        "channel": channel,
        "properties": {"recipe_id": i % 5000, "session": format!("s-{:016x}", i.wrapping_mul(0x9e3779b97f4a7c15)),
                       "note": "padding padding padding padding padding padding padding padding padding pad",
                       "referrer": "https://ifttt.com/explore/smart-home-applets?utm_source=app"},
    });
    let bytes = serde_json::to_vec(&body).expect("json");
    ((i % PARTITIONS as u64) as i32, ts, bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_extraction_writes_every_record_exactly_once() {
    let topic = unique("exactly_once");
    create_topic(&topic, PARTITIONS).await;
    let started = Instant::now();
    let p = producer();
    let mut bytes = 0u64;
    produce(
        &p,
        &topic,
        (0..EVENTS).map(|i| {
            let e = event(i);
            bytes += e.2.len() as u64;
            e
        }),
    );
    let produced_in = started.elapsed();
    eprintln!(
        "produced {EVENTS} events ({:.1} MB) in {:.1}s",
        bytes as f64 / 1e6,
        produced_in.as_secs_f64()
    );

    let dir = tempfile::tempdir().expect("tmp");
    let prefix = unique("cranium-tests/exactly-once");
    project(
        dir.path(),
        &[(
            "extract",
            &format!(
                "job: extract\nschedule: \"@hourly\"\nstart: 2026-01-01\nmax_active_runs: 1\nsteps:\n  - id: copy\n    kind: kafka_to_s3\n    connection: events\n    topic: {topic}\n    s3: lake\n    prefix: {prefix}\n    until: interval_end\n    max_object_records: 40000\n    retries: 0\n"
            ),
        )],
    );
    let args = [
        "backfill",
        "extract",
        "--from",
        "2026-03-01T00:00",
        "--to",
        "2026-03-01T04:00",
        "--max-active-runs",
        "1",
        "--recover-after",
        "0s",
    ];

    // Kill it at random points, at least MIN_KILLS times, then let it finish.
    let mut rng = rand::rng();
    let mut kills = 0;
    let mut runs = 0;
    let extraction = Instant::now();
    loop {
        runs += 1;
        let mut child = cranium(dir.path(), &args).spawn().expect("spawn cranium");
        let kill_at = if kills < MIN_KILLS {
            Some(Duration::from_millis(rng.random_range(150..2500)))
        } else {
            None
        };
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break Some(s);
            }
            if kill_at.is_some_and(|k| t0.elapsed() >= k) {
                child.kill().expect("SIGKILL");
                let _ = child.wait();
                kills += 1;
                break None;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(600),
                "cranium backfill did not finish within 10 minutes"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        if let Some(s) = status {
            let out = child.wait_with_output().expect("output");
            assert!(s.success(), "run {runs} failed:\n{}", text(&out));
            if kills >= MIN_KILLS {
                break;
            }
            // It finished before it could be killed often enough: a finished backfill has nothing
            // left, so the remaining kills would prove nothing. Stop here and report.
            break;
        }
    }
    let extraction_time = extraction.elapsed();

    // The store's view: attempts per hour (a killed attempt is recorded as interrupted, then retried).
    let store = cranium::store::Store::open("sqlite://.cranium/state.db", dir.path())
        .await
        .expect("store");
    let mut attempts = Vec::new();
    for h in 0..HOURS {
        let start = chrono::DateTime::from_timestamp(1_772_323_200 + h * 3600, 0).expect("time");
        let a = store
            .attempts("extract", start, Some("copy"))
            .await
            .expect("attempts");
        attempts.push(a.len());
    }
    eprintln!("attempts per hour: {attempts:?}");

    // Read everything back.
    let (s3, bucket) = s3();
    let objects = read_objects(&s3, &bucket, &format!("{prefix}/2026/")).await;
    let mut seen = vec![false; EVENTS as usize];
    let (mut count, mut dupes, mut sum, mut xor) = (0u64, 0u64, 0u64, 0u64);
    for (key, lines) in &objects {
        for l in lines {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            let id = v["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{key}: no id in {l}"));
            count += 1;
            if std::mem::replace(&mut seen[id as usize], true) {
                dupes += 1;
            }
            sum = sum.wrapping_add(id);
            xor ^= id.wrapping_mul(0x9e3779b97f4a7c15);
        }
    }
    let want_sum = EVENTS * (EVENTS - 1) / 2;
    let want_xor = (0..EVENTS).fold(0u64, |x, id| x ^ id.wrapping_mul(0x9e3779b97f4a7c15));
    let missing = seen.iter().filter(|s| !**s).count();
    eprintln!(
        "exactly-once: {runs} runs, {kills} SIGKILLs, {} objects, {count} records, {dupes} duplicates, {missing} missing, sum {sum} (want {want_sum}), extraction {:.1}s",
        objects.len(),
        extraction_time.as_secs_f64()
    );
    assert!(
        kills >= MIN_KILLS,
        "only {kills} kills: the extraction finished too early"
    );
    assert_eq!((count, dupes, missing), (EVENTS, 0, 0));
    assert_eq!((sum, xor), (want_sum, want_xor));
    s3.delete_prefix(&bucket, &format!("{prefix}/"))
        .await
        .expect("clean");
}
