//! `kafka_to_s3`: copy a topic's records into hourly S3 folders, exactly once.
//!
//! A run for an interval reads every partition from the group's committed offset up to the end bound
//! captured when the run starts, routes each record by its time into `{prefix}/YYYY/MM/DD/HH/`, writes
//! objects with deterministic names (topic, partition, offsets) and commits offsets only once every object
//! is durable.
//!
//! Exactly once, whatever crashes in between, rests on three rules:
//! 1. A batch is planned before anything is written: per partition, the committed offset it starts
//!    from and the end bound captured now, with every setting that shapes the objects. The plan is
//!    stored in S3 (`_cranium/kafka_to_s3/<group>/<topic>.json`) before the first object.
//! 2. Objects are cut only by record count, bytes, an hour change (or the batch's end): never by the
//!    clock. Given the plan, the objects and their keys are a function of the records, so a retry of an
//!    uncommitted batch (same plan, reloaded) rewrites the same keys with the same bytes. An attempt that
//!    stops early uploads nothing it has not finished: open objects are discarded.
//! 3. Offsets are committed only after every object and the batch's manifest are uploaded. A run whose
//!    group has not committed the stored plan's end finishes that plan first.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use futures::future::BoxFuture;
use rdkafka::message::Message;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{ErrorClass, RunCx, StepError, StepOutput};
use crate::config::Connection;
use crate::kafka::{self, KafkaClientError};
use crate::lake::{self, ObjectEntry, ObjectWriter};
use crate::s3::S3Client;

use super::{CheckCx, Step};
use crate::config::{ByteSize, ConnectionKind, HumanDuration, OneOrMany};

/// The object formats are the lake's ([`crate::lake::Format`]); re-exported for the step's config.
pub use crate::lake::Format;

/// Where a run stops reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Until {
    /// The high watermark captured at the start of the run (default).
    #[default]
    HighWatermark,
    /// The first offset whose timestamp is at or after the interval end.
    IntervalEnd,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaToS3Step {
    /// A `kafka` connection.
    pub connection: String,
    /// Topic name, or a list of topics.
    pub topic: OneOrMany<String>,
    /// Consumer group whose committed offsets mark progress (default `cranium.<job>.<step>`).
    #[serde(default)]
    pub group: Option<String>,
    /// An `s3` connection.
    pub s3: String,
    /// Bucket (default: the s3 connection's `bucket`).
    #[serde(default)]
    pub bucket: Option<String>,
    /// Key prefix template; objects go under `{prefix}/YYYY/MM/DD/HH/`.
    pub prefix: String,
    /// How a record's hour is chosen: `record_time` (the Kafka timestamp, default), `ingest_time`, or
    /// `field:<json path>` (e.g. `field:$.time`).
    #[serde(default = "record_time")]
    pub partition_by: String,
    /// `jsonl.gz` (default), `jsonl.zst` or `jsonl`.
    #[serde(default = "gz")]
    pub format: Format,
    /// Compression level (gzip 1-9, default 6; zstd 1-19, default 3).
    #[serde(default)]
    pub compression_level: Option<u32>,
    /// Cut an object at this many uncompressed bytes (default 128MiB).
    #[serde(default)]
    pub max_object_bytes: Option<ByteSize>,
    /// Cut an object at this many records (default 1,000,000).
    #[serde(default)]
    pub max_object_records: Option<u64>,
    /// Key prefix template for records that are not valid UTF-8/JSON (default `{prefix}/_dead_letter`).
    #[serde(default)]
    pub dead_letter: Option<String>,
    /// Fail when more than this fraction of the records are dead letters (default 0.01).
    #[serde(default)]
    pub max_dead_letter_ratio: Option<f64>,
    /// Stop waiting for records after this long without any (default 10s).
    #[serde(default)]
    pub idle_timeout: Option<HumanDuration>,
    /// `high_watermark` (default) or `interval_end`.
    #[serde(default)]
    pub until: Until,
    /// A Lua file with a `transform(record)` function applied to every record.
    #[serde(default)]
    pub transform: Option<String>,
    /// Raise a `kafka_lag` alert when, after a run, the group is more than this many records
    /// behind the end of its partitions (all topics together).
    #[serde(default)]
    pub max_lag: Option<u64>,
}

fn record_time() -> String {
    "record_time".to_string()
}

fn gz() -> Format {
    Format::JsonlGz
}

/// `partition_by`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionBy {
    RecordTime,
    IngestTime,
    /// A JSON path into the record, as `$.a.b` segments.
    Field(Vec<String>),
}

impl PartitionBy {
    pub fn parse(s: &str) -> Result<PartitionBy, String> {
        match s {
            "record_time" => Ok(PartitionBy::RecordTime),
            "ingest_time" => Ok(PartitionBy::IngestTime),
            other => {
                let Some(path) = other.strip_prefix("field:") else {
                    return Err(format!(
                        "partition_by '{other}' must be record_time, ingest_time or field:<json path> (e.g. field:$.time)"
                    ));
                };
                let segs = parse_json_path(path)?;
                Ok(PartitionBy::Field(segs))
            }
        }
    }
}

/// `$.a.b` or `a.b` → ["a", "b"].
pub fn parse_json_path(path: &str) -> Result<Vec<String>, String> {
    let p = path.trim();
    let p = p
        .strip_prefix("$.")
        .or_else(|| p.strip_prefix('$'))
        .unwrap_or(p);
    let segs: Vec<String> = p.split('.').map(|s| s.to_string()).collect();
    if segs
        .iter()
        .any(|s| s.is_empty() || s.chars().any(|c| c.is_whitespace() || c == '[' || c == ']'))
    {
        return Err(format!(
            "invalid JSON path '{path}'; write it like $.time or $.user.id"
        ));
    }
    Ok(segs)
}

impl Step for KafkaToS3Step {
    fn kind(&self) -> &'static str {
        "kafka_to_s3"
    }

    fn run<'a>(&'a self, cx: &'a RunCx) -> BoxFuture<'a, Result<StepOutput, StepError>> {
        Box::pin(self.extract(cx))
    }

    fn check(&self, cx: &mut CheckCx<'_>) {
        let f = cx.field("connection");
        cx.connection(&f, &self.connection, &[ConnectionKind::Kafka]);
        let f = cx.field("s3");
        let s3 = cx.connection(&f, &self.s3, &[ConnectionKind::S3]);
        if self.topic.0.is_empty() {
            let f = cx.field("topic");
            cx.error(
                &f,
                "empty",
                format!("step '{}': topic needs at least one name", cx.step),
            );
        }
        for (i, t) in self.topic.iter().enumerate() {
            let valid = !t.is_empty()
                && t.len() <= 249
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if !valid {
                let f = if self.topic.0.len() == 1 {
                    cx.field("topic")
                } else {
                    cx.field("topic").index(i)
                };
                cx.error(&f, "bad-topic", format!("step '{}': '{t}' is not a valid Kafka topic name (letters, digits, '.', '_', '-')", cx.step));
            }
        }
        bucket_of(cx, self.bucket.as_deref(), s3);
        cx.key_prefix_field("prefix", &self.prefix);
        if let Some(dl) = &self.dead_letter {
            cx.key_prefix_field("dead_letter", dl);
        }
        if let Err(e) = PartitionBy::parse(&self.partition_by) {
            let f = cx.field("partition_by");
            cx.error(&f, "bad-value", format!("step '{}': {e}", cx.step));
        }
        if let Some(r) = self.max_dead_letter_ratio {
            cx.in_range("max_dead_letter_ratio", r, 0.0, 1.0);
        }
        if let Some(level) = self.compression_level {
            let (lo, hi) = match self.format {
                Format::JsonlGz => (1.0, 9.0),
                Format::JsonlZst => (1.0, 19.0),
                Format::Jsonl => (0.0, 0.0),
            };
            cx.in_range("compression_level", level as f64, lo, hi);
        }
        if self.max_object_records == Some(0) {
            let f = cx.field("max_object_records");
            cx.error(
                &f,
                "out-of-range",
                format!("step '{}': max_object_records must be above 0", cx.step),
            );
        }
        if let Some(t) = &self.transform {
            let f = cx.field("transform");
            if let Some((p, code)) = cx.read_file(&f, t) {
                cx.check_lua(&super::TextOrigin::File(p), &code);
            }
        }
    }
}

/// The bucket a step writes to: its own `bucket`, else its s3 connection's default; an error if neither.
pub fn bucket_of(
    cx: &mut CheckCx<'_>,
    bucket: Option<&str>,
    s3: Option<&crate::config::Connection>,
) -> Option<String> {
    if let Some(b) = bucket {
        let f = cx.field("bucket");
        return cx.template_field(&f, b);
    }
    match s3 {
        Some(crate::config::Connection::S3(c)) => {
            match &c.bucket {
                Some(b) => Some(b.clone()),
                None => {
                    let f = cx.field("s3");
                    cx.error_help(
                    &f,
                    "missing-field",
                    format!("step '{}': no bucket: give `bucket:` on the step or on the s3 connection", cx.step),
                    "add `bucket: NAME` to the step",
                );
                    None
                }
            }
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------------
// Running

/// Objects of one partition open at once (one per hour folder); past this the oldest is cut.
const MAX_OPEN_OBJECTS: usize = 16;
/// Records handed from the consumer to a partition's worker at a time.
const FEED_BATCH: usize = 1024;
/// Batches queued for all workers together (so at most this many × FEED_BATCH records in memory).
const FEED_QUEUE_TOTAL: usize = 256;
/// Finished objects waiting for an upload slot (each is a file on local disk).
const UPLOAD_QUEUE: usize = 8;
/// Uploads in flight at once.
const UPLOAD_CONCURRENCY: usize = 4;
const DEFAULT_MAX_OBJECT_BYTES: u64 = 128 * 1024 * 1024;
const DEFAULT_MAX_OBJECT_RECORDS: u64 = 1_000_000;
const DEFAULT_MAX_DEAD_LETTER_RATIO: f64 = 0.01;
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// One partition's share of a batch: from the offset the group had committed (None: nothing yet,
/// read from the earliest record) up to `end`, exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetRange {
    pub start: Option<i64>,
    pub end: i64,
}

/// A batch, fixed before the first object is written (see the module documentation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchPlan {
    pub batch_id: String,
    pub topic: String,
    pub group: String,
    pub interval_start: DateTime<Utc>,
    pub interval_end: DateTime<Utc>,
    pub bucket: String,
    pub prefix: String,
    pub dead_letter: String,
    pub format: Format,
    pub level: u32,
    pub max_object_records: u64,
    pub max_object_bytes: u64,
    pub partition_by: String,
    pub timezone: String,
    pub until: Until,
    /// The transform script's path and a hash of its code.
    pub transform: Option<(String, String)>,
    pub ranges: BTreeMap<i32, OffsetRange>,
}

impl BatchPlan {
    /// `_cranium/kafka_to_s3/<group>/<topic>.json`: one per group and topic, whatever the interval.
    pub fn journal_key(group: &str, topic: &str) -> String {
        format!("_cranium/kafka_to_s3/{group}/{topic}.json")
    }

    /// `{prefix}/_manifests/YYYY/MM/DD/HH/{topic}.{batch_id}.json`, the folder of the interval start.
    pub fn manifest_key(&self) -> String {
        let tz: Tz = self.timezone.parse().unwrap_or(chrono_tz::UTC);
        let base = format!("{}/_manifests", self.prefix.trim_end_matches('/'));
        format!(
            "{}/{}.{}.json",
            lake::hour_folder(&base, self.interval_start, tz),
            self.topic,
            self.batch_id
        )
    }

    fn compute_id(&mut self) {
        // FNV-1a over everything that shapes the objects: stable across builds and platforms.
        let mut h: u64 = 0xcbf29ce484222325;
        let mut this = self.clone();
        this.batch_id = String::new();
        let text = serde_json::to_string(&this).unwrap_or_default();
        for b in text.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        self.batch_id = format!("b{h:016x}");
    }
}

/// What a batch wrote: stored as the manifest object and in the step's outputs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub batch_id: String,
    pub topic: String,
    pub group: String,
    pub interval_start: String,
    pub interval_end: String,
    pub format: String,
    /// Per partition: the offsets read, `[start, end)` (start: the first offset read).
    pub offsets: BTreeMap<i32, (i64, i64)>,
    pub records: u64,
    pub dead_letter_records: u64,
    pub bytes: u64,
    pub stored_bytes: u64,
    pub min_time: Option<String>,
    pub max_time: Option<String>,
    pub objects: Vec<ObjectEntry>,
    pub dead_letters: Vec<ObjectEntry>,
}

/// A record handed to a partition's worker.
#[doc(hidden)]
pub struct Rec {
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub payload: Option<Vec<u8>>,
}

#[doc(hidden)]
pub enum Feed {
    Records(Vec<Rec>),
    /// The partition's batch is complete: flush every open object.
    End,
}

/// A finished object on its way to S3.
#[doc(hidden)]
pub struct Upload {
    file: tempfile::TempPath,
    entry: ObjectEntry,
    content_type: &'static str,
    dead_letter: bool,
}

/// A partition worker's account.
#[derive(Default)]
#[doc(hidden)]
pub struct PartitionStats {
    records: u64,
    dead: u64,
    first_offset: Option<i64>,
}

fn kafka_error(e: KafkaClientError) -> StepError {
    let class = if e.is_config() {
        ErrorClass::Config
    } else {
        ErrorClass::External
    };
    StepError::new(class, e.to_string())
}

fn internal(what: &str, e: impl std::fmt::Display) -> StepError {
    StepError::new(ErrorClass::Internal, format!("{what}: {e}"))
}

/// Run blocking Kafka work on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StepError> + Send + 'static,
) -> Result<T, StepError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| internal("kafka worker", e))?
}

impl KafkaToS3Step {
    fn group_for(&self, cx: &RunCx) -> String {
        self.group_name(&cx.job().name, &cx.spec().id)
    }

    /// The consumer group of this step of `job`: `group`, or `cranium.<job>.<step>`.
    pub fn group_name(&self, job: &str, step: &str) -> String {
        self.group
            .clone()
            .unwrap_or_else(|| format!("cranium.{job}.{step}"))
    }

    /// How far the step's group is behind each partition of its topics now, asking the broker
    /// (blocking: call it on a blocking thread). Between runs this shows a lag that grows while
    /// extraction is stuck. The end is read to partition-EOF, as after a run (a high watermark
    /// alone is short of it on tansu 0.6.0).
    pub fn measure_lag(
        &self,
        project: &crate::project::Project,
        job: &str,
        step: &str,
    ) -> Result<Vec<super::PartitionLag>, String> {
        let Some(Connection::Kafka(kconn)) = project.connections.get(&self.connection) else {
            return Err(format!(
                "connection '{}' is not a kafka connection",
                self.connection
            ));
        };
        let group = self.group_name(job, step);
        let c = kafka::consumer(kconn, &group).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for topic in self.topic.iter() {
            let parts = kafka::partitions(&c, &kconn.brokers, topic).map_err(|e| e.to_string())?;
            let committed = kafka::committed(&c, topic, &parts).map_err(|e| e.to_string())?;
            let marks = kafka::watermarks(&c, topic, &parts).map_err(|e| e.to_string())?;
            // Read to the end of each partition: a broker's high watermark can be short of it.
            let ends =
                kafka::end_offsets(kconn, &group, topic, &parts).map_err(|e| e.to_string())?;
            for p in parts {
                let (low, high) = marks.get(&p).copied().unwrap_or((0, 0));
                let end = ends.get(&p).copied().unwrap_or(high).max(high);
                let done = committed.get(&p).copied().flatten().unwrap_or(low);
                out.push(super::PartitionLag {
                    topic: topic.clone(),
                    partition: p,
                    committed_offset: done,
                    end_offset: end.max(done),
                });
            }
        }
        Ok(out)
    }

    async fn extract(&self, cx: &RunCx) -> Result<StepOutput, StepError> {
        // Two intervals of one group at once would read the same committed offsets: the engine
        // runs this step only while no other run reads the group, in this process or any other
        // on the store (`Engine::run_alone`).
        let group = self.group_for(cx);
        let project = &cx.project;
        let Some(Connection::Kafka(kconn)) = project.connections.get(&self.connection) else {
            return Err(StepError::config(format!(
                "connection '{}' is not a kafka connection",
                self.connection
            )));
        };
        let (s3, bucket) = cx.s3(&self.s3, self.bucket.as_deref())?;
        let s3 = Arc::new(s3);
        let prefix = cx.render_key_prefix("prefix", &self.prefix)?;
        let dead_letter = match &self.dead_letter {
            Some(d) => cx.render_key_prefix("dead_letter", d)?,
            None => format!("{prefix}/_dead_letter"),
        };
        PartitionBy::parse(&self.partition_by).map_err(StepError::config)?;
        let transform = match &self.transform {
            Some(t) => Some((t.clone(), cx.read_file(t)?)),
            None => None,
        };
        let tmp = tempfile::tempdir().map_err(|e| {
            StepError::external(format!("cannot create a temporary directory: {e}"))
        })?;

        let mut manifests = Vec::new();
        let mut lag: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
        let mut positions = Vec::new();
        for topic in self.topic.iter() {
            let consumer = {
                let (kconn, group, topic) = (kconn.clone(), group.clone(), topic.clone());
                blocking(move || {
                    let c = kafka::consumer(&kconn, &group).map_err(kafka_error)?;
                    let parts =
                        kafka::partitions(&c, &kconn.brokers, &topic).map_err(kafka_error)?;
                    let committed = kafka::committed(&c, &topic, &parts).map_err(kafka_error)?;
                    let marks = kafka::watermarks(&c, &topic, &parts).map_err(kafka_error)?;
                    let lows: BTreeMap<i32, i64> =
                        marks.iter().map(|(p, (lo, _))| (*p, *lo)).collect();
                    Ok((c, parts, committed, lows))
                })
                .await?
            };
            let (c, parts, committed, lows) = consumer;
            let mut t = TopicRun {
                s3: &s3,
                tmp: tmp.path(),
                transform: &transform,
                lows,
                consumer: Some(c),
                committed,
                manifests: Vec::new(),
            };

            // 1. An uncommitted batch from an earlier attempt is finished first, exactly as planned.
            let journal_key = BatchPlan::journal_key(&group, topic);
            let stored = match s3.get(&bucket, &journal_key).await {
                Ok(b) => match serde_json::from_slice::<BatchPlan>(&b) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        return Err(StepError::config(format!(
                            "the batch plan s3://{bucket}/{journal_key} is not readable ({e}); if no run is in progress, delete it and run again"
                        )))
                    }
                },
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(StepError::from_s3(e)),
            };
            if let Some(mut plan) = stored {
                let mut pending = false;
                let mut stale = false;
                for (p, r) in plan.ranges.iter_mut() {
                    let now = t.committed.get(p).copied().flatten();
                    if now == Some(r.end) {
                        r.start = Some(r.end); // committed already
                    } else if now == r.start {
                        pending = true;
                    } else {
                        stale = true;
                    }
                }
                // Partitions whose share is committed have nothing left to read.
                plan.ranges.retain(|_, r| r.start != Some(r.end));
                if pending && !stale {
                    cx.log.info(&format!(
                        "topic {topic}: finishing the uncommitted batch {} planned for {} (offsets {})",
                        plan.batch_id,
                        plan.interval_start.to_rfc3339(),
                        describe_ranges(&plan.ranges)
                    ));
                    self.run_batch(cx, &mut t, &plan).await?;
                } else if stale {
                    cx.log.warn(&format!(
                        "topic {topic}: the stored batch plan {} does not match the group's committed offsets (another consumer in group '{group}'?); ignoring it",
                        plan.batch_id
                    ));
                }
            }

            // 2. This run's batch: from the committed offsets to the end of each partition as of now.
            let ends = {
                let (kconn, group, topic, parts) =
                    (kconn.clone(), group.clone(), topic.clone(), parts.clone());
                blocking(move || {
                    kafka::end_offsets(&kconn, &group, &topic, &parts).map_err(kafka_error)
                })
                .await?
            };
            let mut ranges = BTreeMap::new();
            for p in &parts {
                let start = t.committed.get(p).copied().flatten();
                let end = ends.get(p).copied().unwrap_or(0);
                if start.is_none_or(|s| s < end) {
                    ranges.insert(*p, OffsetRange { start, end });
                }
            }
            let mut plan = BatchPlan {
                batch_id: String::new(),
                topic: topic.clone(),
                group: group.clone(),
                interval_start: cx.interval.start,
                interval_end: cx.interval.end,
                bucket: bucket.clone(),
                prefix: prefix.clone(),
                dead_letter: dead_letter.clone(),
                format: self.format,
                level: self
                    .compression_level
                    .unwrap_or_else(|| self.format.default_level()),
                max_object_records: self
                    .max_object_records
                    .unwrap_or(DEFAULT_MAX_OBJECT_RECORDS),
                max_object_bytes: self
                    .max_object_bytes
                    .map(|b| b.0)
                    .unwrap_or(DEFAULT_MAX_OBJECT_BYTES),
                partition_by: self.partition_by.clone(),
                timezone: cx.job().timezone.name().to_string(),
                until: self.until,
                transform: transform
                    .as_ref()
                    .map(|(path, code)| (path.clone(), code_hash(code))),
                ranges,
            };
            plan.compute_id();
            cx.log.info(&format!(
                "topic {topic}: batch {} reads offsets {}",
                plan.batch_id,
                describe_ranges(&plan.ranges)
            ));
            if !plan.ranges.is_empty() {
                let body = serde_json::to_vec_pretty(&plan).map_err(|e| internal("plan", e))?;
                s3.put(&bucket, &journal_key, body.into(), "application/json")
                    .await
                    .map_err(StepError::from_s3)?;
            }
            self.run_batch(cx, &mut t, &plan).await?;

            // 3. Lag: how far the committed offsets are behind the end of each partition now.
            let (topic2, parts2) = (topic.clone(), parts.clone());
            let c = t
                .consumer
                .take()
                .ok_or_else(|| internal("kafka consumer", "already taken"))?;
            let marks =
                blocking(move || kafka::watermarks(&c, &topic2, &parts2).map_err(kafka_error))
                    .await?;
            manifests.append(&mut t.manifests);
            let mut tl = BTreeMap::new();
            for p in &parts {
                let hi = marks.get(p).map(|w| w.1).unwrap_or(0);
                let end = ends.get(p).copied().unwrap_or(0).max(hi);
                let low = marks.get(p).map(|w| w.0).unwrap_or(0);
                let done = t.committed.get(p).copied().flatten().unwrap_or(low);
                tl.insert(*p, (end - done).max(0));
                positions.push(super::PartitionLag {
                    topic: topic.clone(),
                    partition: *p,
                    committed_offset: done,
                    end_offset: end,
                });
            }
            lag.insert(topic.clone(), tl);
        }
        let mut out = output(manifests, lag)?;
        out.consumer_lag = positions;
        Ok(out)
    }

    /// Read one planned batch, upload its objects and manifest, commit its offsets; record the
    /// manifest and the committed offsets in `t`.
    async fn run_batch(
        &self,
        cx: &RunCx,
        t: &mut TopicRun<'_>,
        plan: &BatchPlan,
    ) -> Result<(), StepError> {
        let (s3, lows, transform, tmp) = (t.s3, &t.lows, t.transform, t.tmp);
        let plan = Arc::new(plan.clone());
        let consumer = t
            .consumer
            .take()
            .ok_or_else(|| internal("kafka consumer", "already taken"))?;
        if plan.transform.is_some() && transform.is_none() {
            return Err(StepError::config(
                "the stored batch plan uses a transform that the step no longer has; restore it until the batch is committed",
            ));
        }
        let code = transform.as_ref().map(|(_, c)| c.clone());
        let (up_tx, up_rx) = tokio::sync::mpsc::channel::<Upload>(UPLOAD_QUEUE);
        let uploader = tokio::spawn(upload_all(
            s3.clone(),
            plan.bucket.clone(),
            up_rx,
            cx.cancel.clone(),
        ));

        // One worker thread per partition: parse, route, compress, cut.
        let mut feeds = HashMap::new();
        let mut workers = Vec::new();
        // Each worker's queue holds up to FEED_QUEUE_TOTAL / partitions batches (4 to 64): enough that
        // the consumer is rarely held up by one busy partition, bounded whatever the partition count.
        let depth = (FEED_QUEUE_TOTAL / plan.ranges.len().max(1)).clamp(4, 64);
        for p in plan.ranges.keys() {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Feed>(depth);
            feeds.insert(*p, tx);
            let (plan, up_tx, tmp, code, p) = (
                plan.clone(),
                up_tx.clone(),
                tmp.to_path_buf(),
                code.clone(),
                *p,
            );
            workers.push(tokio::task::spawn_blocking(move || {
                Worker::new(&plan, p, &tmp, code.as_deref(), up_tx)?.run(rx)
            }));
        }
        drop(up_tx);

        let deadline = cx.deadline.map(|d| d.into_std());
        let idle = self
            .idle_timeout
            .map(|d| d.0)
            .unwrap_or(DEFAULT_IDLE_TIMEOUT);
        let cancel = cx.cancel.clone();
        let plan2 = plan.clone();
        let lows = lows.clone();
        let consumed = tokio::task::spawn_blocking(move || {
            let r = consume(&consumer, &plan2, &lows, feeds, &cancel, deadline, idle);
            (consumer, r)
        })
        .await
        .map_err(|e| internal("kafka consumer", e))?;
        let (consumer, read) = consumed;

        let mut stats = BTreeMap::new();
        let mut worker_err = None;
        for (p, w) in plan.ranges.keys().zip(workers) {
            match w.await.map_err(|e| internal("partition worker", e))? {
                Ok(s) => {
                    stats.insert(*p, s);
                }
                Err(e) => {
                    worker_err.get_or_insert(e);
                }
            }
        }
        let uploaded = uploader.await.map_err(|e| internal("uploader", e))?;
        // The first cause, not its echoes: a failed upload stops the workers, a failed worker stops
        // the consumer, and each of those reports being stopped.
        let echo = |e: &StepError| e.class == ErrorClass::Cancelled;
        match (&uploaded, &worker_err) {
            (Err(e), _) if !echo(e) => return Err(e.clone()),
            (_, Some(e)) if !echo(e) => return Err(e.clone()),
            _ => {}
        }
        let next = read?;
        if let Some(e) = worker_err {
            return Err(e);
        }
        let (objects, dead_letters) = uploaded?;

        let mut m = Manifest {
            batch_id: plan.batch_id.clone(),
            topic: plan.topic.clone(),
            group: plan.group.clone(),
            interval_start: plan.interval_start.to_rfc3339(),
            interval_end: plan.interval_end.to_rfc3339(),
            format: plan.format.extension().to_string(),
            ..Manifest::default()
        };
        for (p, s) in &stats {
            m.records += s.records;
            m.dead_letter_records += s.dead;
            if let (Some(first), Some(end)) = (s.first_offset, next.get(p)) {
                m.offsets.insert(*p, (first, *end));
            }
        }
        for o in &objects {
            m.bytes += o.bytes;
            m.stored_bytes += o.stored_bytes;
            if o.min_time.is_some() && (m.min_time.is_none() || o.min_time < m.min_time) {
                m.min_time = o.min_time.clone();
            }
            if o.max_time > m.max_time {
                m.max_time = o.max_time.clone();
            }
        }
        m.objects = objects;
        m.dead_letters = dead_letters;

        let ratio_limit = self
            .max_dead_letter_ratio
            .unwrap_or(DEFAULT_MAX_DEAD_LETTER_RATIO);
        let total = m.records + m.dead_letter_records;
        if total > 0 && (m.dead_letter_records as f64 / total as f64) > ratio_limit {
            return Err(StepError::new(
                ErrorClass::Data,
                format!(
                    "topic {}: {} of {} records ({:.2}%) are not valid JSON lines and went to s3://{}/{}/; that is over max_dead_letter_ratio {}. Offsets are not committed: fix the producer or raise the ratio, then run again",
                    plan.topic,
                    m.dead_letter_records,
                    total,
                    100.0 * m.dead_letter_records as f64 / total as f64,
                    plan.bucket,
                    plan.dead_letter,
                    ratio_limit
                ),
            ));
        }
        let body = serde_json::to_vec_pretty(&m).map_err(|e| internal("manifest", e))?;
        s3.put(
            &plan.bucket,
            &plan.manifest_key(),
            body.into(),
            "application/json",
        )
        .await
        .map_err(StepError::from_s3)?;
        if cx.cancel.is_cancelled() {
            return Err(StepError::new(ErrorClass::Cancelled, "cancelled"));
        }
        let topic = plan.topic.clone();
        let to_commit = next.clone();
        let consumer = blocking(move || {
            kafka::commit(&consumer, &topic, &to_commit).map_err(kafka_error)?;
            Ok(consumer)
        })
        .await?;
        // The batch is done: no plan left means no batch in flight. (Should this delete fail or never
        // happen, the next run sees the plan's end committed and ignores it.)
        if let Err(e) = s3
            .delete(
                &plan.bucket,
                &BatchPlan::journal_key(&plan.group, &plan.topic),
            )
            .await
        {
            cx.log
                .warn(&format!("could not delete the finished batch plan: {e}"));
        }
        cx.log.info(&format!(
            "topic {}: batch {} committed: {} records in {} objects ({} bytes stored), {} dead letters; manifest s3://{}/{}",
            plan.topic,
            plan.batch_id,
            m.records,
            m.objects.len(),
            m.stored_bytes,
            m.dead_letter_records,
            plan.bucket,
            plan.manifest_key()
        ));
        t.consumer = Some(consumer);
        for (p, o) in &next {
            t.committed.insert(*p, Some(*o));
        }
        t.manifests.push(m);
        Ok(())
    }
}

/// One topic's share of a run: what its batches share, and what they leave behind.
struct TopicRun<'a> {
    s3: &'a Arc<S3Client>,
    tmp: &'a Path,
    transform: &'a Option<(String, String)>,
    lows: BTreeMap<i32, i64>,
    consumer: Option<kafka::KafkaConsumer>,
    /// The group's committed offsets, updated as batches commit.
    committed: BTreeMap<i32, Option<i64>>,
    manifests: Vec<Manifest>,
}

fn code_hash(code: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in code.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

fn describe_ranges(r: &BTreeMap<i32, OffsetRange>) -> String {
    if r.is_empty() {
        return "none (nothing new)".to_string();
    }
    r.iter()
        .map(|(p, r)| match r.start {
            Some(s) => format!("p{p}:[{s},{})", r.end),
            None => format!("p{p}:[earliest,{})", r.end),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn output(
    manifests: Vec<Manifest>,
    lag: BTreeMap<String, BTreeMap<i32, i64>>,
) -> Result<StepOutput, StepError> {
    let records: u64 = manifests.iter().map(|m| m.records).sum();
    let stored: u64 = manifests.iter().map(|m| m.stored_bytes).sum();
    let mut out = StepOutput {
        rows_affected: Some(records as i64),
        bytes: Some(stored as i64),
        ..StepOutput::default()
    };
    let o = &mut out.outputs;
    o.insert("records".into(), records.into());
    o.insert(
        "objects".into(),
        manifests
            .iter()
            .map(|m| m.objects.len())
            .sum::<usize>()
            .into(),
    );
    o.insert(
        "dead_letters".into(),
        manifests
            .iter()
            .map(|m| m.dead_letter_records)
            .sum::<u64>()
            .into(),
    );
    o.insert("stored_bytes".into(), stored.into());
    o.insert(
        "manifests".into(),
        serde_json::to_value(&manifests).map_err(|e| internal("manifest", e))?,
    );
    o.insert(
        "lag".into(),
        serde_json::to_value(&lag).map_err(|e| internal("lag", e))?,
    );
    o.insert(
        "lag_total".into(),
        lag.values().flat_map(|m| m.values()).sum::<i64>().into(),
    );
    Ok(out)
}

/// The consumer: read every planned partition from its start to its end, feeding the workers.
/// Returns the offset to commit per partition. On any error, cancellation or deadline the feeds are
/// dropped without `End`, so the workers upload nothing they had not finished.
fn consume(
    c: &kafka::KafkaConsumer,
    plan: &BatchPlan,
    lows: &BTreeMap<i32, i64>,
    feeds: HashMap<i32, SyncSender<Feed>>,
    cancel: &CancellationToken,
    deadline: Option<std::time::Instant>,
    idle_timeout: Duration,
) -> Result<BTreeMap<i32, i64>, StepError> {
    let topic = &plan.topic;
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    if plan.ranges.is_empty() {
        return Ok(next);
    }
    let starts: BTreeMap<i32, Option<i64>> =
        plan.ranges.iter().map(|(p, r)| (*p, r.start)).collect();
    let mut reader = kafka::RangeReader::new(c, topic, &starts, lows).map_err(kafka_error)?;
    let until_ms = match plan.until {
        Until::IntervalEnd => Some(plan.interval_end.timestamp_millis()),
        Until::HighWatermark => None,
    };
    let mut bufs: HashMap<i32, Vec<Rec>> = HashMap::new();
    let mut open: BTreeMap<i32, i64> = plan.ranges.iter().map(|(p, r)| (*p, r.end)).collect();
    let mut last_progress = std::time::Instant::now();
    let send = |p: i32, f: Feed| -> Result<(), StepError> {
        match feeds.get(&p) {
            Some(tx) => tx.send(f).map_err(|_| {
                StepError::new(
                    ErrorClass::Internal,
                    format!("topic {topic}: the worker of partition {p} stopped"),
                )
            }),
            None => Ok(()),
        }
    };
    while !open.is_empty() {
        if cancel.is_cancelled() {
            return Err(StepError::new(ErrorClass::Cancelled, "cancelled"));
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return Err(StepError::new(
                ErrorClass::Timeout,
                format!("topic {topic}: the step's timeout ran out while reading"),
            ));
        }
        // (partition, the offset to commit)
        let mut finished = None;
        match reader
            .poll(Duration::from_millis(100))
            .map_err(kafka_error)?
        {
            None => {
                if last_progress.elapsed() > idle_timeout {
                    let at = open
                        .iter()
                        .map(|(p, e)| {
                            let n = reader
                                .next_offset(*p)
                                .map(|n| n.to_string())
                                .unwrap_or_else(|| "the earliest".into());
                            format!("p{p} at {n} of {e}")
                        })
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(StepError::external(format!(
                        "topic {topic}: no records for {}s before the end of the batch ({at}); is the broker up? (idle_timeout)",
                        idle_timeout.as_secs()
                    )));
                }
            }
            Some(kafka::Event::Record(m)) => {
                last_progress = std::time::Instant::now();
                let (p, o) = (m.partition(), m.offset());
                let Some(&end) = open.get(&p) else { continue };
                let ts = m.timestamp().to_millis();
                if o >= end {
                    finished = Some((p, end));
                } else if until_ms.is_some_and(|u| ts.is_some_and(|t| t >= u)) {
                    finished = Some((p, o));
                } else {
                    let buf = bufs.entry(p).or_default();
                    buf.push(Rec {
                        offset: o,
                        timestamp_ms: ts,
                        payload: m.payload().map(|b| b.to_vec()),
                    });
                    if o + 1 >= end {
                        finished = Some((p, end));
                    } else if buf.len() >= FEED_BATCH {
                        let b = std::mem::take(buf);
                        send(p, Feed::Records(b))?;
                    }
                }
            }
            Some(kafka::Event::Eof(p)) => {
                last_progress = std::time::Instant::now();
                // The end was captured from records that exist: a partition is done at its end, not
                // before (an early end-of-partition would make this attempt's last objects differ from
                // a retry's).
                if let Some(&end) = open.get(&p) {
                    if reader.next_offset(p).is_some_and(|n| n >= end) {
                        finished = Some((p, end));
                    }
                }
            }
        }
        if let Some((p, at)) = finished {
            open.remove(&p);
            reader.pause(p);
            next.insert(p, at);
            if let Some(b) = bufs.remove(&p) {
                if !b.is_empty() {
                    send(p, Feed::Records(b))?;
                }
            }
        }
    }
    // A partition with nothing to read keeps its committed offset.
    next.retain(|p, at| {
        plan.ranges
            .get(p)
            .is_some_and(|r| r.start.is_none_or(|s| *at > s))
    });
    for p in plan.ranges.keys() {
        send(*p, Feed::End)?;
    }
    Ok(next)
}

/// One partition's worker: validates, routes by time, writes and cuts objects. Public (hidden) for
/// the fuzz target `fuzz/fuzz_targets/kafka_route.rs`.
#[doc(hidden)]
pub struct Worker {
    plan: Arc<BatchPlan>,
    partition: i32,
    tz: Tz,
    by: PartitionBy,
    tmp: std::path::PathBuf,
    transformer: Option<crate::lua_runtime::Transformer>,
    open: BTreeMap<String, ObjectWriter>,
    dead: Option<ObjectWriter>,
    up: tokio::sync::mpsc::Sender<Upload>,
    stats: PartitionStats,
    fallback_time: DateTime<Utc>,
}

impl Worker {
    pub fn new(
        plan: &Arc<BatchPlan>,
        partition: i32,
        tmp: &Path,
        code: Option<&str>,
        up: tokio::sync::mpsc::Sender<Upload>,
    ) -> Result<Worker, StepError> {
        let tz: Tz = plan
            .timezone
            .parse()
            .map_err(|_| StepError::config(format!("unknown time zone '{}'", plan.timezone)))?;
        let by = PartitionBy::parse(&plan.partition_by).map_err(StepError::config)?;
        let transformer = match (code, &plan.transform) {
            (Some(code), Some((path, _))) => Some(
                crate::lua_runtime::Transformer::new(code, path, Default::default())
                    .map_err(|e| StepError::config(format!("transform {path}: {e}")))?,
            ),
            _ => None,
        };
        Ok(Worker {
            plan: plan.clone(),
            partition,
            tz,
            by,
            tmp: tmp.to_path_buf(),
            transformer,
            open: BTreeMap::new(),
            dead: None,
            up,
            stats: PartitionStats::default(),
            fallback_time: plan.interval_start,
        })
    }

    pub fn run(mut self, rx: Receiver<Feed>) -> Result<PartitionStats, StepError> {
        while let Ok(feed) = rx.recv() {
            match feed {
                Feed::Records(recs) => {
                    for r in recs {
                        self.record(r)?;
                    }
                }
                Feed::End => {
                    let folders: Vec<String> = self.open.keys().cloned().collect();
                    for f in folders {
                        self.cut(&f)?;
                    }
                    self.cut_dead()?;
                    return Ok(self.stats);
                }
            }
        }
        // The consumer stopped early: discard what is open (the temporary files go with it).
        Err(StepError::new(
            ErrorClass::Cancelled,
            format!("partition {} stopped before its end", self.partition),
        ))
    }

    fn io(&self, what: &str, e: std::io::Error) -> StepError {
        StepError::external(format!(
            "topic {} partition {}: {what}: {e}",
            self.plan.topic, self.partition
        ))
    }

    fn record(&mut self, r: Rec) -> Result<(), StepError> {
        self.stats.first_offset.get_or_insert(r.offset);
        let payload = match r.payload.as_deref() {
            Some(p) => p,
            None => return self.dead_letter(&r, "the record has no value (a tombstone)"),
        };
        let text = match std::str::from_utf8(payload) {
            Ok(t) => t,
            Err(e) => {
                return self.dead_letter(
                    &r,
                    &format!("not valid UTF-8 (at byte {})", e.valid_up_to()),
                )
            }
        };
        let multiline = text.contains(['\n', '\r']);
        let need_value =
            multiline || self.transformer.is_some() || matches!(self.by, PartitionBy::Field(_));
        let (time, lines): (DateTime<Utc>, Vec<std::borrow::Cow<'_, [u8]>>) = if need_value {
            let value: serde_json::Value = match serde_json::from_str(text) {
                Ok(v) => v,
                Err(e) => return self.dead_letter(&r, &format!("not valid JSON: {e}")),
            };
            let time = match &self.by {
                PartitionBy::Field(path) => {
                    let mut v = &value;
                    for seg in path {
                        v = v.get(seg).unwrap_or(&serde_json::Value::Null);
                    }
                    match lake::parse_record_time(v) {
                        Ok(t) => t,
                        Err(e) => {
                            let reason = format!("field $.{}: {e}", path.join("."));
                            return self.dead_letter(&r, &reason);
                        }
                    }
                }
                PartitionBy::RecordTime => match self.record_time(&r) {
                    Some(t) => t,
                    None => return self.dead_letter(&r, "the record has no timestamp"),
                },
                PartitionBy::IngestTime => self.fallback_time,
            };
            let values = match self.transformer.as_mut() {
                Some(t) => match t.transform(value) {
                    Ok(v) => v,
                    Err(e) => return self.dead_letter(&r, &format!("transform: {e}")),
                },
                None if multiline => vec![value],
                None => {
                    self.write(&r, time, &[std::borrow::Cow::Borrowed(payload)])?;
                    return Ok(());
                }
            };
            let mut lines = Vec::with_capacity(values.len());
            for v in values {
                lines.push(std::borrow::Cow::Owned(
                    serde_json::to_vec(&v).map_err(|e| internal("json", e))?,
                ));
            }
            (time, lines)
        } else {
            if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
                return self.dead_letter(&r, &format!("not valid JSON: {e}"));
            }
            let time = match self.by {
                PartitionBy::IngestTime => self.fallback_time,
                _ => match self.record_time(&r) {
                    Some(t) => t,
                    None => return self.dead_letter(&r, "the record has no timestamp"),
                },
            };
            (time, vec![std::borrow::Cow::Borrowed(payload)])
        };
        self.write(&r, time, &lines)
    }

    fn record_time(&self, r: &Rec) -> Option<DateTime<Utc>> {
        r.timestamp_ms
            .filter(|t| *t >= 0)
            .and_then(DateTime::from_timestamp_millis)
    }

    fn write(
        &mut self,
        r: &Rec,
        time: DateTime<Utc>,
        lines: &[std::borrow::Cow<'_, [u8]>],
    ) -> Result<(), StepError> {
        self.stats.records += 1;
        if lines.is_empty() {
            return Ok(()); // the transform dropped it
        }
        let folder = lake::hour_folder(&self.plan.prefix, time, self.tz);
        if !self.open.contains_key(&folder) {
            if self.open.len() >= MAX_OPEN_OBJECTS {
                // Cut the object that has waited longest (by its last offset: deterministic).
                let oldest = self
                    .open
                    .iter()
                    .min_by_key(|(_, w)| w.last_offset)
                    .map(|(f, _)| f.clone());
                if let Some(f) = oldest {
                    self.cut(&f)?;
                }
            }
            let w = ObjectWriter::new(&self.tmp, self.plan.format, self.plan.level)
                .map_err(|e| self.io("creating a temporary file", e))?;
            self.open.insert(folder.clone(), w);
        }
        let Some(w) = self.open.get_mut(&folder) else {
            return Err(internal("writer", "missing"));
        };
        for l in lines {
            if let Err(e) = w.write_line(l, r.offset, Some(time)) {
                return Err(self.io("writing", e));
            }
        }
        if w.records >= self.plan.max_object_records || w.bytes >= self.plan.max_object_bytes {
            self.cut(&folder)?;
        }
        Ok(())
    }

    fn dead_letter(&mut self, r: &Rec, reason: &str) -> Result<(), StepError> {
        self.stats.dead += 1;
        let payload = r.payload.as_deref().unwrap_or_default();
        let mut entry = serde_json::json!({
            "topic": self.plan.topic,
            "partition": self.partition,
            "offset": r.offset,
            "timestamp": r.timestamp_ms.and_then(DateTime::from_timestamp_millis).map(|t| t.to_rfc3339()),
            "reason": reason,
        });
        match std::str::from_utf8(payload) {
            Ok(s) => entry["payload"] = s.into(),
            Err(_) => {
                let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
                entry["payload_hex"] = hex.into();
            }
        }
        let line = serde_json::to_vec(&entry).map_err(|e| internal("json", e))?;
        if self.dead.is_none() {
            let w = ObjectWriter::new(&self.tmp, Format::Jsonl, 0)
                .map_err(|e| self.io("creating a temporary file", e))?;
            self.dead = Some(w);
        }
        let Some(w) = self.dead.as_mut() else {
            return Err(internal("dead letters", "missing"));
        };
        if let Err(e) = w.write_line(&line, r.offset, None) {
            return Err(self.io("writing a dead letter", e));
        }
        if w.records >= self.plan.max_object_records {
            self.cut_dead()?;
        }
        Ok(())
    }

    fn cut(&mut self, folder: &str) -> Result<(), StepError> {
        let Some(w) = self.open.remove(folder) else {
            return Ok(());
        };
        let name = lake::object_name(
            &self.plan.topic,
            self.partition,
            w.first_offset,
            w.last_offset,
            self.plan.format.extension(),
        );
        self.ship(
            w,
            format!("{folder}/{name}"),
            self.plan.format.content_type(),
            false,
        )
    }

    fn cut_dead(&mut self) -> Result<(), StepError> {
        let Some(w) = self.dead.take() else {
            return Ok(());
        };
        let tz = self.tz;
        let folder = lake::hour_folder(&self.plan.dead_letter, self.plan.interval_start, tz);
        let name = lake::object_name(
            &self.plan.topic,
            self.partition,
            w.first_offset,
            w.last_offset,
            Format::Jsonl.extension(),
        );
        self.ship(
            w,
            format!("{folder}/{name}"),
            Format::Jsonl.content_type(),
            true,
        )
    }

    fn ship(
        &mut self,
        w: ObjectWriter,
        key: String,
        content_type: &'static str,
        dead_letter: bool,
    ) -> Result<(), StepError> {
        let entry = ObjectEntry {
            key,
            records: w.records,
            bytes: w.bytes,
            stored_bytes: 0,
            topic: self.plan.topic.clone(),
            partition: self.partition,
            first_offset: w.first_offset,
            last_offset: w.last_offset,
            min_time: w.min_time.map(|t| t.to_rfc3339()),
            max_time: w.max_time.map(|t| t.to_rfc3339()),
            etag: None,
        };
        let (file, len) = w.finish().map_err(|e| self.io("finishing an object", e))?;
        let entry = ObjectEntry {
            stored_bytes: len,
            ..entry
        };
        self.up
            .blocking_send(Upload {
                file,
                entry,
                content_type,
                dead_letter,
            })
            .map_err(|_| {
                StepError::new(
                    ErrorClass::Cancelled,
                    "the uploader stopped before the batch ended",
                )
            })
    }
}

/// Upload finished objects as they come, a few at a time; returns the data objects and the dead-letter
/// objects, each sorted by key. The first failure stops the uploads (and drops the queue).
async fn upload_all(
    s3: Arc<S3Client>,
    bucket: String,
    mut rx: tokio::sync::mpsc::Receiver<Upload>,
    cancel: CancellationToken,
) -> Result<(Vec<ObjectEntry>, Vec<ObjectEntry>), StepError> {
    let slots = Arc::new(tokio::sync::Semaphore::new(UPLOAD_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    let mut done = Vec::new();
    loop {
        let u = tokio::select! {
            u = rx.recv() => u,
            _ = cancel.cancelled() => return Err(StepError::new(ErrorClass::Cancelled, "cancelled")),
            Some(r) = tasks.join_next(), if !tasks.is_empty() => {
                done.push(r.map_err(|e| internal("upload", e))??);
                continue;
            }
        };
        let Some(u) = u else { break };
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| internal("upload slots", e))?;
        let (s3, bucket) = (s3.clone(), bucket.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let etag = s3
                .put_file(&bucket, &u.entry.key, &u.file, u.content_type)
                .await
                .map_err(StepError::from_s3)?;
            drop(u.file);
            let entry = ObjectEntry {
                etag: (!etag.is_empty()).then_some(etag),
                ..u.entry
            };
            Ok::<(ObjectEntry, bool), StepError>((entry, u.dead_letter))
        });
    }
    while let Some(r) = tasks.join_next().await {
        done.push(r.map_err(|e| internal("upload", e))??);
    }
    let (dead, objects): (Vec<_>, Vec<_>) = done.into_iter().partition(|(_, dead)| *dead);
    let mut objects: Vec<ObjectEntry> = objects.into_iter().map(|(e, _)| e).collect();
    let mut dead: Vec<ObjectEntry> = dead.into_iter().map(|(e, _)| e).collect();
    objects.sort_by(|a, b| a.key.cmp(&b.key));
    dead.sort_by(|a, b| a.key.cmp(&b.key));
    Ok((objects, dead))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> BatchPlan {
        let t = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_default()
        };
        BatchPlan {
            batch_id: String::new(),
            topic: "app_events".into(),
            group: "cranium.events_hourly.extract".into(),
            interval_start: t("2026-03-01T11:00:00Z"),
            interval_end: t("2026-03-01T12:00:00Z"),
            bucket: "lake".into(),
            prefix: "events/app_events".into(),
            dead_letter: "dead/app_events".into(),
            format: Format::JsonlGz,
            level: 6,
            max_object_records: 1000,
            max_object_bytes: 1 << 20,
            partition_by: "record_time".into(),
            timezone: "Europe/Paris".into(),
            until: Until::HighWatermark,
            transform: None,
            ranges: [(
                0,
                OffsetRange {
                    start: None,
                    end: 10,
                },
            )]
            .into_iter()
            .collect(),
        }
    }

    #[test]
    fn batch_ids_follow_everything_that_shapes_the_objects() {
        let mut a = plan();
        a.compute_id();
        let mut b = plan();
        b.compute_id();
        assert_eq!(a.batch_id, b.batch_id);
        assert!(a.batch_id.starts_with('b') && a.batch_id.len() == 17);
        let mut c = plan();
        c.max_object_records = 999;
        c.compute_id();
        assert_ne!(a.batch_id, c.batch_id);
        let mut d = plan();
        d.ranges.insert(
            1,
            OffsetRange {
                start: Some(3),
                end: 4,
            },
        );
        d.compute_id();
        assert_ne!(a.batch_id, d.batch_id);
        // The plan survives its JSON form (it is stored in S3 and read back by the next attempt).
        let back: BatchPlan = serde_json::from_str(&serde_json::to_string(&a).unwrap_or_default())
            .unwrap_or_else(|_| plan());
        assert_eq!(back, a);
    }

    #[test]
    fn journal_and_manifest_keys() {
        let mut p = plan();
        p.compute_id();
        assert_eq!(
            BatchPlan::journal_key(&p.group, &p.topic),
            "_cranium/kafka_to_s3/cranium.events_hourly.extract/app_events.json"
        );
        // The manifest sits in the folder of the interval start, in the job's time zone.
        assert_eq!(
            p.manifest_key(),
            format!(
                "events/app_events/_manifests/2026/03/01/12/app_events.{}.json",
                p.batch_id
            )
        );
    }

    #[test]
    fn partition_by_forms() {
        assert_eq!(
            PartitionBy::parse("record_time"),
            Ok(PartitionBy::RecordTime)
        );
        assert_eq!(
            PartitionBy::parse("field:$.meta.time"),
            Ok(PartitionBy::Field(vec!["meta".into(), "time".into()]))
        );
        assert!(PartitionBy::parse("field:$..x").is_err());
        assert!(PartitionBy::parse("wall_clock").is_err());
    }
}
