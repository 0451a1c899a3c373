//! `kafka_to_s3` against the real broker (tansu) and S3 server (garage) of `scripts/services.sh up`.
//!
//! Each test creates its own topic and writes under its own prefix, runs the step through the engine
//! for an hourly interval, and reads every object back.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cranium::engine::Engine;
use cranium::schedule::Interval;
use cranium::store::StepState;
use support::*;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

/// The hour starting at `s`.
fn hour1(s: &str) -> Interval {
    interval(s, 1)
}

fn job(topic: &str, prefix: &str, extra: &str) -> String {
    format!(
        "job: extract\nschedule: \"@hourly\"\nstart: 2026-01-01\nsteps:\n  - id: copy\n    kind: kafka_to_s3\n    connection: events\n    topic: {topic}\n    s3: lake\n    prefix: {prefix}\n    dead_letter: {prefix}/_dead\n{extra}"
    )
}

/// A project in `dir` whose `extract` job copies `topic` under `prefix`, and its engine.
async fn setup(dir: &Path, topic: &str, prefix: &str, extra: &str) -> Engine {
    project(dir, &[("extract", &job(topic, prefix, extra))]);
    engine(dir).await
}

/// Run the `extract` job for `iv`; the step's state and outputs.
async fn run(
    e: &Engine,
    iv: Interval,
) -> (
    StepState,
    serde_json::Map<String, serde_json::Value>,
    String,
) {
    let r = run_job(e, "extract", iv).await;
    let s = r.steps.iter().find(|s| s.step == "copy").expect("step");
    let rec = e
        .store
        .step_state("extract", "copy", iv.start)
        .await
        .expect("store")
        .expect("record");
    let outputs = match rec.outputs {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    (s.state, outputs, format!("{r:?}"))
}

fn event(id: u64, time: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"id": id, "time": time, "type": "click"})).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_records_into_hours_by_their_time() {
    let topic = unique("route");
    create_topic(&topic, 2).await;
    let p = producer();
    // Around the 11:00 boundary, and a late record for 09:xx that arrives after 11:xx ones.
    let recs = vec![
        (
            0,
            t("2026-03-01T10:59:59.999Z").timestamp_millis(),
            event(1, "2026-03-01T10:59:59.999Z"),
        ),
        (
            0,
            t("2026-03-01T11:00:00Z").timestamp_millis(),
            event(2, "2026-03-01T11:00:00Z"),
        ),
        (
            1,
            t("2026-03-01T11:30:00Z").timestamp_millis(),
            event(3, "2026-03-01T11:30:00Z"),
        ),
        (
            0,
            t("2026-03-01T11:59:59Z").timestamp_millis(),
            event(4, "2026-03-01T09:15:00Z"),
        ),
        (
            1,
            t("2026-03-01T11:45:00Z").timestamp_millis(),
            event(5, "2026-03-01 12:00:00"),
        ),
    ];
    produce(&p, &topic, recs);

    let dir = tempfile::tempdir().expect("tmp");
    let prefix = unique("cranium-tests/route");
    let e = setup(
        dir.path(),
        &topic,
        &prefix,
        "    partition_by: field:$.time\n    format: jsonl.zst\n",
    )
    .await;
    let (state, out, report) = run(&e, hour1("2026-03-01T11:00:00Z")).await;
    assert_eq!(state, StepState::Success, "{report}");
    assert_eq!(out["records"], 5);

    let (s3, bucket) = s3();
    let objects = read_objects(&s3, &bucket, &format!("{prefix}/2026/")).await;
    let mut by_folder: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (key, lines) in &objects {
        assert!(key.ends_with(".jsonl.zst"), "{key}");
        let folder = key[..key.rfind('/').expect("slash")].to_string();
        for l in lines {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            by_folder
                .entry(folder.clone())
                .or_default()
                .push(v["id"].as_u64().expect("id"));
        }
    }
    for ids in by_folder.values_mut() {
        ids.sort();
    }
    let want: BTreeMap<String, Vec<u64>> = [
        ("2026/03/01/09", vec![4]),
        ("2026/03/01/10", vec![1]),
        ("2026/03/01/11", vec![2, 3]),
        ("2026/03/01/12", vec![5]),
    ]
    .into_iter()
    .map(|(f, ids)| (format!("{prefix}/{f}"), ids))
    .collect();
    assert_eq!(by_folder, want);
    // Names come from topic, partition and offsets.
    assert!(
        objects.iter().any(|(k, _)| k.ends_with(&format!(
            "/2026/03/01/11/{topic}.p0.o000000000001-000000000001.jsonl.zst"
        ))),
        "{:?}",
        objects.iter().map(|o| &o.0).collect::<Vec<_>>()
    );

    // The manifest lists every object, and the store has the same.
    let manifests = out["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 1);
    let m = &manifests[0];
    assert_eq!(m["objects"].as_array().expect("objects").len(), 5);
    assert_eq!(m["min_time"], "2026-03-01T09:15:00+00:00");
    assert_eq!(m["offsets"]["0"], serde_json::json!([0, 3]));
    assert_eq!(m["offsets"]["1"], serde_json::json!([0, 2]));
    let mkeys = s3
        .list(&bucket, &format!("{prefix}/_manifests/2026/03/01/11/"))
        .await
        .expect("list");
    assert_eq!(mkeys.len(), 1);
    let stored: serde_json::Value =
        serde_json::from_slice(&s3.get(&bucket, &mkeys[0].key).await.expect("get")).expect("json");
    assert_eq!(&stored, m);
    assert_eq!(out["lag_total"], 0);

    // The next hour finds nothing new: no object is added.
    let (state, out, report) = run(&e, hour1("2026-03-01T12:00:00Z")).await;
    assert_eq!(state, StepState::Success, "{report}");
    assert_eq!(out["records"], 0);
    assert_eq!(
        s3.list(&bucket, &format!("{prefix}/2026/"))
            .await
            .expect("list")
            .len(),
        5
    );
    s3.delete_prefix(&bucket, &format!("{prefix}/"))
        .await
        .expect("clean");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuts_objects_by_count_and_bytes_and_reads_the_last_batch() {
    let topic = unique("rotate");
    create_topic(&topic, 1).await;
    let p = producer();
    // Three flushes: three record batches; tansu's ListOffsets answers with the last one's base.
    for chunk in 0..3u64 {
        let recs = (chunk * 100..chunk * 100 + 100)
            .map(|i| {
                (
                    0,
                    t("2026-03-01T11:10:00Z").timestamp_millis(),
                    event(i, "x"),
                )
            })
            .collect::<Vec<_>>();
        produce(&p, &topic, recs);
    }
    let dir = tempfile::tempdir().expect("tmp");
    let prefix = unique("cranium-tests/rotate");
    let e = setup(dir.path(), &topic, &prefix, "    max_object_records: 120\n").await;
    let (state, out, report) = run(&e, hour1("2026-03-01T11:00:00Z")).await;
    assert_eq!(state, StepState::Success, "{report}");
    assert_eq!(out["records"], 300, "the last record batch was left behind");
    let (s3, bucket) = s3();
    let keys: Vec<String> = s3
        .list(&bucket, &format!("{prefix}/2026/03/01/11/"))
        .await
        .expect("list")
        .into_iter()
        .map(|o| o.key.rsplit('/').next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        keys,
        [
            format!("{topic}.p0.o000000000000-000000000119.jsonl.gz"),
            format!("{topic}.p0.o000000000120-000000000239.jsonl.gz"),
            format!("{topic}.p0.o000000000240-000000000299.jsonl.gz"),
        ]
    );

    // By bytes: each record is ~45 bytes; 1KiB objects hold about 23.
    let topic2 = unique("rotate_bytes");
    create_topic(&topic2, 1).await;
    produce(
        &p,
        &topic2,
        (0..100u64).map(|i| {
            (
                0,
                t("2026-03-01T11:10:00Z").timestamp_millis(),
                event(i, "x"),
            )
        }),
    );
    let prefix2 = unique("cranium-tests/rotate-bytes");
    let e = setup(
        dir.path(),
        &topic2,
        &prefix2,
        "    max_object_bytes: 1KiB\n    format: jsonl\n",
    )
    .await;
    let (state, out, report) = run(&e, hour1("2026-03-01T11:00:00Z")).await;
    assert_eq!(state, StepState::Success, "{report}");
    assert_eq!(out["records"], 100);
    let objects = read_objects(&s3, &bucket, &format!("{prefix2}/2026/")).await;
    assert!(objects.len() >= 4, "{}", objects.len());
    let total: usize = objects.iter().map(|o| o.1.len()).sum();
    assert_eq!(total, 100);
    for (k, lines) in &objects {
        let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
        assert!(bytes < 1024 + 64, "{k}: {bytes} bytes");
    }
    s3.delete_prefix(&bucket, &format!("{prefix}/"))
        .await
        .expect("clean");
    s3.delete_prefix(&bucket, &format!("{prefix2}/"))
        .await
        .expect("clean");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_fail_over_the_ratio_and_a_retry_rewrites_the_same_objects() {
    let topic = unique("dead");
    create_topic(&topic, 1).await;
    let p = producer();
    let ts = t("2026-03-01T11:10:00Z").timestamp_millis();
    let mut recs: Vec<(i32, i64, Vec<u8>)> = (0..20u64)
        .map(|i| (0, ts, event(i, "2026-03-01T11:10:00Z")))
        .collect();
    recs[3].2 = b"{\"id\": 3, \"time\": ".to_vec(); // truncated JSON
    recs[7].2 = vec![0xff, 0xfe, b'{', b'}']; // not UTF-8
    recs[11].2 = br#"{"id": 11}"#.to_vec(); // no time field
    recs[15].2 = b"{\"id\": 15,\n \"time\": \"2026-03-01T11:10:00Z\"}".to_vec(); // valid, two lines
    produce(&p, &topic, recs);

    let dir = tempfile::tempdir().expect("tmp");
    let prefix = unique("cranium-tests/dead");
    let strict = job(
        &topic,
        &prefix,
        "    partition_by: field:$.time\n    max_dead_letter_ratio: 0.1\n    retries: 0\n",
    );
    project(dir.path(), &[("extract", &strict)]);
    let e = engine(dir.path()).await;
    let iv = hour1("2026-03-01T11:00:00Z");
    let (state, _, report) = run(&e, iv).await;
    assert_eq!(state, StepState::Failed, "{report}");
    let attempts = e
        .store
        .attempts("extract", iv.start, Some("copy"))
        .await
        .expect("attempts");
    let err = attempts
        .last()
        .and_then(|a| a.error.clone())
        .unwrap_or_default();
    assert!(
        err.contains("3 of 20 records") && err.contains("max_dead_letter_ratio 0.1"),
        "{err}"
    );

    // The dead letters name topic, partition, offset and reason.
    let (s3, bucket) = s3();
    let dead = read_objects(&s3, &bucket, &format!("{prefix}/_dead/")).await;
    assert_eq!(dead.len(), 1);
    let entries: Vec<serde_json::Value> = dead[0]
        .1
        .iter()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let reasons: Vec<(i64, String)> = entries
        .iter()
        .map(|v| {
            (
                v["offset"].as_i64().unwrap_or(-1),
                v["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert_eq!(reasons[0].0, 3);
    assert!(reasons[0].1.starts_with("not valid JSON"), "{reasons:?}");
    assert_eq!(reasons[1].0, 7);
    assert!(reasons[1].1.contains("not valid UTF-8"), "{reasons:?}");
    assert_eq!(entries[1]["payload_hex"], "fffe7b7d");
    assert_eq!(reasons[2].0, 11);
    assert!(reasons[2].1.contains("field $.time"), "{reasons:?}");
    assert_eq!(entries[0]["topic"], topic.as_str());

    // Objects of the failed batch are there, offsets are not committed.
    let before = s3
        .list(&bucket, &format!("{prefix}/2026/"))
        .await
        .expect("list");
    assert_eq!(before.len(), 1);

    // More records arrive; the ratio is raised. The retry first finishes the stored batch with the same
    // keys and bytes, then reads the new records as a batch of its own.
    produce(
        &p,
        &topic,
        (20..30u64).map(|i| (0, ts, event(i, "2026-03-01T11:20:00Z"))),
    );
    let lenient = strict.replace("max_dead_letter_ratio: 0.1", "max_dead_letter_ratio: 0.5");
    project(dir.path(), &[("extract", &lenient)]);
    let e = engine(dir.path()).await;
    let (state, out, report) = run(&e, iv).await;
    assert_eq!(state, StepState::Success, "{report}");
    assert_eq!(out["records"], 27);
    assert_eq!(out["dead_letters"], 3);
    assert_eq!(out["manifests"].as_array().map(|m| m.len()), Some(2));
    let after = s3
        .list(&bucket, &format!("{prefix}/2026/"))
        .await
        .expect("list");
    assert_eq!(after.len(), 2);
    assert_eq!(after[0].key, before[0].key);
    assert_eq!(
        after[0].etag, before[0].etag,
        "rewritten with the same bytes"
    );
    let mut ids: Vec<u64> = read_objects(&s3, &bucket, &format!("{prefix}/2026/"))
        .await
        .iter()
        .flat_map(|o| o.1.clone())
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(&l).expect("json")["id"]
                .as_u64()
                .expect("id")
        })
        .collect();
    ids.sort();
    let want: Vec<u64> = (0..30).filter(|i| ![3, 7, 11].contains(i)).collect();
    assert_eq!(ids, want, "every valid record exactly once");
    s3.delete_prefix(&bucket, &format!("{prefix}/"))
        .await
        .expect("clean");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn until_interval_end_stops_at_the_first_later_record() {
    let topic = unique("until");
    create_topic(&topic, 1).await;
    let p = producer();
    let recs = [
        ("2026-03-01T11:05:00Z", 1),
        ("2026-03-01T11:59:00Z", 2),
        ("2026-03-01T12:00:00Z", 3),
        ("2026-03-01T12:10:00Z", 4),
    ]
    .map(|(time, id)| (0, t(time).timestamp_millis(), event(id, time)));
    produce(&p, &topic, recs);
    let dir = tempfile::tempdir().expect("tmp");
    let prefix = unique("cranium-tests/until");
    let e = setup(dir.path(), &topic, &prefix, "    until: interval_end\n").await;
    let (state, out, report) = run(&e, hour1("2026-03-01T11:00:00Z")).await;
    assert_eq!(state, StepState::Success, "{report}");
    assert_eq!(out["records"], 2);
    assert_eq!(out["lag_total"], 2);
    // The lag is in the metadata store, per partition.
    let lag = e.store.consumer_lag(Some("extract")).await.expect("lag");
    let got: Vec<(String, i32, i64, i64, i64)> = lag
        .iter()
        .map(|l| {
            (
                l.step.clone(),
                l.partition,
                l.committed_offset,
                l.end_offset,
                l.lag,
            )
        })
        .collect();
    assert_eq!(got, [("copy".to_string(), 0, 2, 4, 2)]);
    // And `cranium lag` shows it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cranium"))
        .args(["lag", "extract", "--format", "json"])
        .current_dir(dir.path())
        .output()
        .expect("cranium lag");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(rows[0]["topic"], topic.as_str());
    assert_eq!(rows[0]["lag"], 2);
    let (state, out, report) = run(&e, hour1("2026-03-01T12:00:00Z")).await;
    assert_eq!(state, StepState::Success, "{report}");
    assert_eq!(out["records"], 2);
    let (s3, bucket) = s3();
    let objects = read_objects(&s3, &bucket, &format!("{prefix}/2026/")).await;
    let folders: Vec<&str> = objects
        .iter()
        .map(|o| &o.0[prefix.len() + 1..prefix.len() + 14])
        .collect();
    assert_eq!(folders, ["2026/03/01/11", "2026/03/01/12"]);
    s3.delete_prefix(&bucket, &format!("{prefix}/"))
        .await
        .expect("clean");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_or_bucket_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let prefix = unique("cranium-tests/missing");
    let topic = unique("no_such_topic");
    let e = setup(dir.path(), &topic, &prefix, "").await;
    let iv = hour1("2026-03-01T11:00:00Z");
    let (state, _, report) = run(&e, iv).await;
    assert_eq!(state, StepState::Failed, "{report}");
    assert!(
        report.contains(&format!("topic '{topic}' does not exist on"))
            && report.contains("create it, or fix `topic:` in the step"),
        "{report}"
    );
    // A configuration error is not retried.
    let attempts = e
        .store
        .attempts("extract", iv.start, Some("copy"))
        .await
        .expect("attempts");
    assert_eq!(attempts.len(), 1);

    let topic = unique("bucket");
    create_topic(&topic, 1).await;
    produce(&producer(), &topic, [(0, 1_772_366_400_000, event(1, "x"))]);
    let e = setup(
        dir.path(),
        &topic,
        &prefix,
        "    bucket: no-such-bucket-here\n    retries: 0\n",
    )
    .await;
    let (state, _, report) = run(&e, iv).await;
    assert_eq!(state, StepState::Failed, "{report}");
    assert!(report.contains("s3://no-such-bucket-here/"), "{report}");
}

/// A committed offset in the middle of a large record batch: the next run must start exactly there
/// (tansu answers a fetch from inside a batch with the next batch, so the reader has to step back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_from_the_middle_of_a_large_record_batch() {
    let topic = unique("mid_batch");
    create_topic(&topic, 1).await;
    // One linger window for all 10,000 records: a few large batches.
    let p: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "1000")
        .set("batch.num.messages", "100000")
        .set("batch.size", "10000000")
        .set("log_level", "3")
        .create()
        .expect("producer");
    let eleven = t("2026-03-01T11:00:00Z").timestamp_millis();
    produce(
        &p,
        &topic,
        (0..10_000u64).map(|i| {
            // 0..4999 in the 11:00 hour, the rest in the 12:00 hour.
            let ts = eleven + (i as i64) * 720;
            (0, ts, event(i, "x"))
        }),
    );
    let dir = tempfile::tempdir().expect("tmp");
    let prefix = unique("cranium-tests/mid-batch");
    let e = setup(dir.path(), &topic, &prefix, "    until: interval_end\n").await;
    let (state, out, report) = run(&e, hour1("2026-03-01T11:00:00Z")).await;
    assert_eq!(state, StepState::Success, "{report}");
    assert_eq!(out["records"], 5000);
    let (state, out, report) = run(&e, hour1("2026-03-01T12:00:00Z")).await;
    assert_eq!(state, StepState::Success, "{report}");
    assert_eq!(out["records"], 5000);
    let (s3, bucket) = s3();
    let mut ids: Vec<u64> = read_objects(&s3, &bucket, &format!("{prefix}/2026/"))
        .await
        .iter()
        .flat_map(|o| o.1.clone())
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(&l).expect("json")["id"]
                .as_u64()
                .expect("id")
        })
        .collect();
    ids.sort();
    assert_eq!(ids, (0..10_000).collect::<Vec<u64>>());
    s3.delete_prefix(&bucket, &format!("{prefix}/"))
        .await
        .expect("clean");
}

/// `max_lag`: a run that leaves the group further behind raises `kafka_lag` (with the partitions),
/// and the run that catches up resolves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lag_over_max_lag_raises_an_alert_and_catching_up_resolves_it() {
    let topic = unique("lagalert");
    create_topic(&topic, 1).await;
    let p = producer();
    let recs = [
        ("2026-03-01T11:05:00Z", 1),
        ("2026-03-01T11:59:00Z", 2),
        ("2026-03-01T12:00:00Z", 3),
        ("2026-03-01T12:10:00Z", 4),
    ]
    .map(|(time, id)| (0, t(time).timestamp_millis(), event(id, time)));
    produce(&p, &topic, recs);
    let dir = tempfile::tempdir().expect("tmp");
    let prefix = unique("cranium-tests/lagalert");
    project(
        dir.path(),
        &[(
            "extract",
            &job(&topic, &prefix, "    until: interval_end\n    max_lag: 1\n"),
        )],
    );
    let sink = add_alert_sink(dir.path());
    let e = alerting_engine(dir.path()).await;

    let (state, _, report) = run(&e, hour1("2026-03-01T11:00:00Z")).await;
    assert_eq!(state, StepState::Success, "{report}");
    cranium::alerts::deliver::drain(&e.project, &e.store, Duration::from_secs(20)).await;
    let got = sink_alerts(&sink);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0]["event"], "kafka_lag");
    assert_eq!(got[0]["details"]["lag"], 2);
    assert_eq!(got[0]["details"]["max_lag"], 1);
    assert_eq!(got[0]["details"]["partitions"][0]["topic"], topic.as_str());
    assert!(got[0]["summary"]
        .as_str()
        .unwrap_or("")
        .contains("2 record(s) behind"));

    let (state, _, report) = run(&e, hour1("2026-03-01T12:00:00Z")).await;
    assert_eq!(state, StepState::Success, "{report}");
    cranium::alerts::deliver::drain(&e.project, &e.store, Duration::from_secs(20)).await;
    let got = sink_alerts(&sink);
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_eq!(got[1]["event"], "resolved");
    assert_eq!(got[1]["details"]["resolves"], "kafka_lag");
    let (s3, bucket) = s3();
    s3.delete_prefix(&bucket, &format!("{prefix}/"))
        .await
        .expect("clean");
}

/// The daemon measures each `kafka_to_s3` step's lag on the broker between runs: it grows while
/// records arrive and nothing extracts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_shows_the_lag_growing_between_runs() {
    let topic = unique("laggrow");
    create_topic(&topic, 2).await;
    let p = producer();
    let batch = |from: u64, n: u64| {
        (from..from + n).map(|i| {
            let time = "2026-03-01T11:30:00Z";
            ((i % 2) as i32, t(time).timestamp_millis(), event(i, time))
        })
    };
    produce(&p, &topic, batch(0, 10));
    let dir = tempfile::tempdir().expect("tmp");
    let prefix = unique("cranium-tests/laggrow");
    project(dir.path(), &[("extract", &job(&topic, &prefix, ""))]);
    let clock = Arc::new(cranium::daemon::clock::ManualClock::new(t(
        "2026-03-01T10:30:00Z",
    )));
    let d = cranium::daemon::Daemon::start(cranium::daemon::DaemonOptions {
        root: dir.path().to_path_buf(),
        env: cranium::config::interp::Env::default(),
        clock,
        log_format: cranium::engine::logs::LogFormat::Text,
        serve_health: false,
        listen: None,
        id: None,
    })
    .await
    .expect("daemon");
    let lag_of = |text: &str| -> f64 {
        text.lines()
            .filter(|l| {
                l.starts_with("cranium_kafka_consumer_lag_records{")
                    && l.contains(&format!("topic=\"{topic}\""))
            })
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    };
    d.refresh_lag().await;
    let first = lag_of(&d.metrics.render());
    // Nothing committed yet: everything on the broker is lag.
    assert_eq!(first, 10.0, "{}", d.metrics.render());
    produce(&p, &topic, batch(10, 20));
    d.refresh_lag().await;
    let second = lag_of(&d.metrics.render());
    assert_eq!(second, 30.0, "{}", d.metrics.render());
}

/// Adds a command alert channel to the project in `dir` (every job's default) that appends each
/// alert's JSON to the returned file.
fn add_alert_sink(dir: &Path) -> std::path::PathBuf {
    let sink = dir.join("alerts.jsonl");
    std::fs::write(
        dir.join("alert.sh"),
        format!("#!/bin/sh\n{{ cat; echo; }} >> {}\n", sink.display()),
    )
    .expect("alert.sh");
    std::process::Command::new("chmod")
        .args(["+x", &dir.join("alert.sh").display().to_string()])
        .status()
        .expect("chmod");
    let mut yaml = std::fs::read_to_string(dir.join("cranium.yaml")).expect("yaml");
    yaml.push_str(
        "alerts:\n  script:\n    kind: command\n    command: [./alert.sh]\ndefaults:\n  alerts: [script]\n",
    );
    std::fs::write(dir.join("cranium.yaml"), yaml).expect("yaml");
    sink
}

/// The engine of the project in `dir`, raising alerts.
async fn alerting_engine(dir: &Path) -> Engine {
    let mut e = engine(dir).await;
    e.notifier = Some(cranium::alerts::Notifier::new(
        e.project.clone(),
        e.store.clone(),
    ));
    e
}

/// What the alert sink received, oldest first.
fn sink_alerts(sink: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(sink)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("alert json"))
        .collect()
}

/// A run that writes dead letters (within its ratio) raises `dead_letters` with the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_within_the_ratio_raise_an_alert() {
    let topic = unique("deadalert");
    create_topic(&topic, 1).await;
    let p = producer();
    let ts = t("2026-03-01T11:10:00Z").timestamp_millis();
    let mut recs: Vec<(i32, i64, Vec<u8>)> = (0..10u64)
        .map(|i| (0, ts, event(i, "2026-03-01T11:10:00Z")))
        .collect();
    recs[4].2 = b"{\"id\": 4, \"time\": ".to_vec(); // truncated JSON
    produce(&p, &topic, recs);
    let dir = tempfile::tempdir().expect("tmp");
    let prefix = unique("cranium-tests/deadalert");
    project(
        dir.path(),
        &[(
            "extract",
            &job(&topic, &prefix, "    max_dead_letter_ratio: 0.5\n"),
        )],
    );
    let sink = add_alert_sink(dir.path());
    let e = alerting_engine(dir.path()).await;
    let (state, out, report) = run(&e, hour1("2026-03-01T11:00:00Z")).await;
    assert_eq!(state, StepState::Success, "{report}");
    assert_eq!(out["dead_letters"], 1);
    cranium::alerts::deliver::drain(&e.project, &e.store, Duration::from_secs(20)).await;
    let got = sink_alerts(&sink);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0]["event"], "dead_letters");
    assert_eq!(got[0]["details"]["dead_letters"], 1);
    assert!(
        got[0]["summary"]
            .as_str()
            .unwrap_or("")
            .contains("1 dead letter"),
        "{got:#?}"
    );
    let (s3, bucket) = s3();
    s3.delete_prefix(&bucket, &format!("{prefix}/"))
        .await
        .expect("clean");
}

/// Runs of one consumer group never overlap across runners on one store: while another runner
/// (another daemon) holds the group's lease, the step waits, says so in its log, and reads only
/// once the lease is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_read_by_another_runner_waits_for_it() {
    let topic = unique("group");
    create_topic(&topic, 1).await;
    let p = producer();
    produce(
        &p,
        &topic,
        vec![(
            0,
            t("2026-03-02T10:30:00Z").timestamp_millis(),
            event(1, "2026-03-02T10:30:00Z"),
        )],
    );
    let dir = tempfile::tempdir().expect("tmp");
    let prefix = unique("cranium-tests/group");
    let e = setup(dir.path(), &topic, &prefix, "    group: shared-group\n").await;
    let iv = hour1("2026-03-02T10:00:00Z");
    let epoch = DateTime::<Utc>::UNIX_EPOCH;
    let other = e
        .store
        .create_run("elsewhere", iv, cranium::store::Trigger::Manual)
        .await
        .expect("run");
    let held = e
        .store
        .claim_step(
            cranium::engine::GROUP_LEASE_JOB,
            "shared-group",
            epoch,
            "daemon:elsewhere",
            other,
            Duration::from_secs(60),
            false,
            None,
        )
        .await
        .expect("claim the group");
    assert!(held.is_acquired(), "{held:?}");

    let task = {
        let e = e.clone();
        tokio::spawn(async move { run(&e, iv).await })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !task.is_finished(),
        "the step read the group while another runner held it"
    );
    let objects = read_objects(&s3().0, &s3().1, &format!("{prefix}/")).await;
    assert!(
        objects.is_empty(),
        "nothing written while waiting: {objects:?}"
    );
    e.store
        .release_step(
            cranium::engine::GROUP_LEASE_JOB,
            "shared-group",
            epoch,
            "daemon:elsewhere",
        )
        .await
        .expect("release");
    let (state, out, report) = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the step ends once the group is free")
        .expect("task");
    assert_eq!(state, StepState::Success, "{report}");
    assert_eq!(out["records"], 1);
    let attempts = e
        .store
        .attempts("extract", iv.start, Some("copy"))
        .await
        .expect("attempts");
    let log_path = attempts[0].log_path.clone().expect("a log");
    let log = std::fs::read_to_string(dir.path().join(log_path)).expect("log");
    assert!(
        log.contains("waiting: consumer group shared-group is being read by daemon:elsewhere"),
        "{log}"
    );
    // Released with the step: nobody holds the group now.
    let leases = e.store.leases().await.expect("leases");
    assert!(
        leases
            .iter()
            .all(|l| l.job != cranium::engine::GROUP_LEASE_JOB),
        "{leases:?}"
    );
}
