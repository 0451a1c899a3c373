//! `kafka_to_s3`: copy a topic's records into hourly S3 folders, exactly once.
//!
//! A run for an interval reads every partition from the group's committed offset up to the end bound
//! captured when the run starts, routes each record by its time into `{prefix}/YYYY/MM/DD/HH/`, writes
//! objects with deterministic names (topic, partition, offsets) and commits offsets only once every object
//! is durable. The config is complete here; the engine that runs it comes with the extraction issue.

use serde::Deserialize;

use super::{CheckCx, Step};
use crate::config::{ByteSize, ConnectionKind, HumanDuration, OneOrMany};

/// Object format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Format {
    #[serde(rename = "jsonl.gz")]
    JsonlGz,
    #[serde(rename = "jsonl.zst")]
    JsonlZst,
    #[serde(rename = "jsonl")]
    Jsonl,
}

/// Where a run stops reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
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

    fn run<'a>(
        &'a self,
        _cx: &'a super::RunCx,
    ) -> futures::future::BoxFuture<'a, Result<super::StepOutput, super::StepError>> {
        super::not_runnable_yet("kafka_to_s3", "the Kafka extraction")
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
        let f = cx.field("prefix");
        cx.template_field(&f, &self.prefix);
        if let Some(dl) = &self.dead_letter {
            let f = cx.field("dead_letter");
            cx.template_field(&f, dl);
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

#[cfg(test)]
mod tests {
    use super::*;

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
