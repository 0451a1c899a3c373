//! Kafka record routing in `kafka_to_s3`: a partition's worker takes records (value bytes, broker
//! timestamp), validates them, picks each one's hour folder from its record time, its ingest time
//! or a field of its value (any offset, any time zone), writes and cuts the objects, and sends the
//! rest to dead letters.
//!
//! Input: byte 0 picks `partition_by` and the format, byte 1 the time zone and the object size
//! limit; then records, each a flag byte (timestamp present, value present), an 8-byte
//! little-endian timestamp in milliseconds when present, a 2-byte length and the value.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use cranium::lake::Format;
use cranium::steps::kafka_to_s3::{BatchPlan, Feed, OffsetRange, Rec, Until, Worker};
use libfuzzer_sys::fuzz_target;

fn tmp() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, p) = DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::Builder::new()
                .prefix("cranium-fuzz-")
                .tempdir_in(shm)
        } else {
            tempfile::Builder::new().prefix("cranium-fuzz-").tempdir()
        }
        .expect("a temporary folder");
        let p = dir.path().to_path_buf();
        (dir, p)
    });
    p
}

fn records(mut data: &[u8]) -> Vec<Rec> {
    let mut out = Vec::new();
    let mut offset = 0i64;
    while let Some((&flags, rest)) = data.split_first() {
        data = rest;
        let mut timestamp_ms = None;
        if flags & 1 != 0 {
            let mut b = [0u8; 8];
            let n = data.len().min(8);
            b[..n].copy_from_slice(&data[..n]);
            data = &data[n..];
            let t = i64::from_le_bytes(b);
            // Mostly times near the interval, sometimes anything at all.
            timestamp_ms = Some(if flags & 4 != 0 {
                t
            } else {
                1_772_362_800_000 + t % 10_000_000_000
            });
        }
        let payload = if flags & 2 != 0 {
            let mut l = [0u8; 2];
            let n = data.len().min(2);
            l[..n].copy_from_slice(&data[..n]);
            data = &data[n..];
            let len = usize::from(u16::from_le_bytes(l)).min(data.len());
            let (v, rest) = data.split_at(len);
            data = rest;
            Some(v.to_vec())
        } else {
            None
        };
        out.push(Rec {
            offset,
            timestamp_ms,
            payload,
        });
        offset += 1;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (sel, tz, rest) = (data[0], data[1], &data[2..]);
    let partition_by = match sel & 7 {
        0 | 1 => "record_time",
        2 => "ingest_time",
        3 | 4 => "field:$.time",
        5 => "field:$.meta.ts",
        6 => "field:time",
        _ => "field:$.a.b.c",
    };
    let format = match (sel >> 3) & 3 {
        0 | 1 => Format::Jsonl,
        2 => Format::JsonlGz,
        _ => Format::JsonlZst,
    };
    let timezone = match tz & 7 {
        0 | 1 => "UTC",
        2 => "Europe/Paris",
        3 => "America/New_York",
        4 => "Asia/Kathmandu",
        5 => "Australia/Lord_Howe",
        6 => "Pacific/Chatham",
        _ => "America/St_Johns",
    };
    let t = |s: i64| DateTime::<Utc>::from_timestamp(s, 0).unwrap_or_default();
    let plan = Arc::new(BatchPlan {
        batch_id: "fuzz".into(),
        topic: "app_events".into(),
        group: "cranium.fuzz.extract".into(),
        interval_start: t(1_772_362_800),
        interval_end: t(1_772_366_400),
        bucket: "lake".into(),
        prefix: "events/app_events".into(),
        dead_letter: "dead/app_events".into(),
        format,
        level: 1,
        max_object_records: u64::from(tz >> 3) + 1,
        max_object_bytes: if tz & 0x80 != 0 { 256 } else { 1 << 20 },
        partition_by: partition_by.into(),
        timezone: timezone.into(),
        until: Until::HighWatermark,
        transform: None,
        ranges: [(
            0,
            OffsetRange {
                start: None,
                end: 1 << 20,
            },
        )]
        .into_iter()
        .collect(),
    });
    let recs = records(rest);
    // Every object is kept in the queue (dropped, with its temporary file, at the end).
    let (up, mut uploads) = tokio::sync::mpsc::channel(recs.len() * 2 + 32);
    let worker = match Worker::new(&plan, 0, tmp(), None, up) {
        Ok(w) => w,
        Err(e) => panic!("a valid plan makes a worker: {e}"),
    };
    let (feed, rx) = std::sync::mpsc::channel();
    let _ = feed.send(Feed::Records(recs));
    let _ = feed.send(Feed::End);
    drop(feed);
    if let Err(e) = worker.run(rx) {
        let _ = e.to_string();
    }
    while uploads.try_recv().is_ok() {}
});
