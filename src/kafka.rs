//! The Kafka layer: what the extraction needs from a broker, over librdkafka (the `rdkafka` crate's
//! bundled build).
//!
//! Extraction is a bounded batch, not a stream: a run looks up a topic's partitions, reads the group's
//! committed offsets, captures where each partition ends *now*, reads up to there with partitions
//! assigned explicitly (no group join, so no rebalance mid-run), and commits offsets once everything it
//! read is durable. Every call here is blocking with a timeout (callers run them on the blocking pool).
//!
//! The end bound is found by reading, not only by asking: tansu 0.6.0 answers ListOffsets(latest) with
//! the base offset of the partition's last record batch instead of the offset after its last record, so
//! [`end_offsets`] starts at the broker's answer and reads on to partition-EOF (whose position comes from
//! fetch responses, which are right). Against a broker that answers correctly this reads nothing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::config::project::KafkaConnection;

/// Time allowed for one broker request (metadata, offsets, commit).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A Kafka failure, naming the topic (and partition when there is one).
#[derive(Debug, thiserror::Error)]
pub enum KafkaClientError {
    #[error("kafka: topic '{topic}' does not exist on {brokers}; create it, or fix `topic:` in the step")]
    UnknownTopic { topic: String, brokers: String },
    #[error("kafka: {what} for topic '{topic}': {source}")]
    Broker {
        what: &'static str,
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("kafka: {0}")]
    Other(String),
}

impl KafkaClientError {
    fn broker(what: &'static str, topic: &str, source: KafkaError) -> KafkaClientError {
        KafkaClientError::Broker {
            what,
            topic: topic.to_string(),
            source,
        }
    }

    /// Whether the failure is the step's configuration (a retry cannot fix it).
    pub fn is_config(&self) -> bool {
        matches!(self, KafkaClientError::UnknownTopic { .. })
    }
}

/// What librdkafka reports outside a call: to tracing, without the end-of-partition events that a
/// bounded reader expects (librdkafka reports some of them as errors too).
pub struct Context;

impl ClientContext for Context {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        );
        if !eof {
            tracing::warn!(target: "cranium::kafka", "librdkafka: {error}: {reason}");
        }
    }
}

impl ConsumerContext for Context {}

/// The consumer cranium uses.
pub type KafkaConsumer = BaseConsumer<Context>;

/// librdkafka settings for a bounded batch consumer of `group`.
///
/// Auto-commit and the offset store are off (offsets are committed only when the data is durable);
/// partition-EOF events are on (they end a partition's batch); `fetch.wait.max.ms` and
/// `fetch.queue.backoff.ms` are lowered from librdkafka's defaults, which leave a consumer idle for up
/// to a second each time it reaches the end of a partition. The connection's `options` come last and
/// win.
pub fn consumer_config(conn: &KafkaConnection, group: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &conn.brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .set("fetch.queue.backoff.ms", "5")
        .set("fetch.min.bytes", "1")
        .set("queued.min.messages", "200000")
        .set("queued.max.messages.kbytes", "262144")
        .set("socket.timeout.ms", "10000")
        .set("session.timeout.ms", "10000")
        .set("log_level", "3");
    for (k, v) in &conn.options {
        c.set(k, v);
    }
    c
}

/// A consumer for one topic.
pub fn consumer(conn: &KafkaConnection, group: &str) -> Result<KafkaConsumer, KafkaClientError> {
    consumer_config(conn, group)
        .create_with_context::<Context, KafkaConsumer>(Context)
        .map_err(|e| KafkaClientError::Other(format!("cannot create a consumer: {e}")))
}

/// The partition ids of `topic`, sorted.
pub fn partitions(
    c: &KafkaConsumer,
    brokers: &str,
    topic: &str,
) -> Result<Vec<i32>, KafkaClientError> {
    let md = c
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .map_err(|e| KafkaClientError::broker("metadata", topic, e))?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Err(KafkaClientError::UnknownTopic {
            topic: topic.to_string(),
            brokers: brokers.to_string(),
        });
    };
    let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    if t.error().is_some() || ids.is_empty() {
        return Err(KafkaClientError::UnknownTopic {
            topic: topic.to_string(),
            brokers: brokers.to_string(),
        });
    }
    ids.sort_unstable();
    Ok(ids)
}

/// The group's committed offset per partition (None: nothing committed yet).
pub fn committed(
    c: &KafkaConsumer,
    topic: &str,
    partitions: &[i32],
) -> Result<BTreeMap<i32, Option<i64>>, KafkaClientError> {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, *p);
    }
    let got = c
        .committed_offsets(tpl, REQUEST_TIMEOUT)
        .map_err(|e| KafkaClientError::broker("reading committed offsets", topic, e))?;
    let mut out = BTreeMap::new();
    for e in got.elements_for_topic(topic) {
        let off = match e.offset() {
            Offset::Offset(n) if n >= 0 => Some(n),
            _ => None,
        };
        out.insert(e.partition(), off);
    }
    for p in partitions {
        out.entry(*p).or_insert(None);
    }
    Ok(out)
}

/// The low watermark and the broker's answer for the high one, per partition.
pub fn watermarks(
    c: &KafkaConsumer,
    topic: &str,
    partitions: &[i32],
) -> Result<BTreeMap<i32, (i64, i64)>, KafkaClientError> {
    let mut out = BTreeMap::new();
    for p in partitions {
        let w = c
            .fetch_watermarks(topic, *p, REQUEST_TIMEOUT)
            .map_err(|e| KafkaClientError::broker("reading watermarks", topic, e))?;
        out.insert(*p, w);
    }
    Ok(out)
}

/// Records a first fetch may skip on a broker that cannot start mid-batch (see [`RangeReader`]).
const FIRST_WINDOW: i64 = 2048;
/// How long an unpositioned partition may stay silent before the reader starts further back.
const STALL: Duration = Duration::from_millis(1500);

/// What [`RangeReader::poll`] returns.
pub enum Event<'c> {
    /// The next record of a partition: at or after its start, in offset order, each offset once.
    Record(rdkafka::message::BorrowedMessage<'c>),
    /// The partition has no record after the last one returned (its end, as of now).
    Eof(i32),
}

struct Cursor {
    /// The first offset to return (None: from the earliest record).
    want: Option<i64>,
    low: i64,
    /// Where the fetch was asked to start.
    requested: i64,
    window: i64,
    since: Instant,
    positioned: bool,
    /// The offset after the last one returned.
    next: Option<i64>,
}

/// Reads partitions of one topic from given offsets, returning every record at or after each start
/// exactly once, in offset order, on any Kafka-protocol broker.
///
/// tansu 0.6.0 cannot start a fetch in the middle of a record batch: asked for offset X inside a
/// batch, it answers from the next batch's base offset (the rest of X's batch is skipped) or, in the
/// last batch, not at all. Committed offsets are often inside a batch. So a reader asks for an offset
/// some records before X, drops what comes before X, and when the first record it gets is already past
/// X (or nothing comes), asks again from further back. Against a broker that starts mid-batch (Kafka)
/// this re-reads at most a few thousand records per partition and run. It also drops any record it has
/// already returned, should the broker send one twice.
pub struct RangeReader<'c> {
    c: &'c KafkaConsumer,
    topic: String,
    cursors: BTreeMap<i32, Cursor>,
}

impl<'c> RangeReader<'c> {
    /// Assign `starts` (partition → first offset, None for the earliest); `lows` are the partitions'
    /// low watermarks.
    pub fn new(
        c: &'c KafkaConsumer,
        topic: &str,
        starts: &BTreeMap<i32, Option<i64>>,
        lows: &BTreeMap<i32, i64>,
    ) -> Result<RangeReader<'c>, KafkaClientError> {
        let mut tpl = TopicPartitionList::new();
        let mut cursors = BTreeMap::new();
        for (p, want) in starts {
            let low = lows.get(p).copied().unwrap_or(0).max(0);
            let want = want.map(|w| w.max(low));
            let requested = match want {
                Some(w) => (w - FIRST_WINDOW).max(low),
                None => low,
            };
            let offset = if want.is_some() {
                Offset::Offset(requested)
            } else {
                Offset::Beginning
            };
            tpl.add_partition_offset(topic, *p, offset)
                .map_err(|e| KafkaClientError::broker("assigning", topic, e))?;
            cursors.insert(
                *p,
                Cursor {
                    want,
                    low,
                    requested,
                    window: FIRST_WINDOW,
                    since: Instant::now(),
                    positioned: want.is_none(),
                    next: want,
                },
            );
        }
        c.assign(&tpl)
            .map_err(|e| KafkaClientError::broker("assigning", topic, e))?;
        // A consumer reused from an earlier range keeps partitions paused across assignments.
        c.resume(&tpl)
            .map_err(|e| KafkaClientError::broker("resuming", topic, e))?;
        Ok(RangeReader {
            c,
            topic: topic.to_string(),
            cursors,
        })
    }

    /// The offset after the last record returned for `p` (its start when none was).
    pub fn next_offset(&self, p: i32) -> Option<i64> {
        self.cursors.get(&p).and_then(|c| c.next)
    }

    /// Stop fetching `p`.
    pub fn pause(&mut self, p: i32) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, p);
        let _ = self.c.pause(&tpl);
        self.cursors.remove(&p);
    }

    fn rewind(&mut self, p: i32) -> Result<bool, KafkaClientError> {
        let Some(cur) = self.cursors.get_mut(&p) else {
            return Ok(false);
        };
        let Some(want) = cur.want else {
            return Ok(false);
        };
        if cur.requested <= cur.low {
            return Ok(false);
        }
        cur.window = cur.window.saturating_mul(8);
        cur.requested = (want - cur.window).max(cur.low);
        cur.since = Instant::now();
        self.c
            .seek(
                &self.topic,
                p,
                Offset::Offset(cur.requested),
                REQUEST_TIMEOUT,
            )
            .map_err(|e| KafkaClientError::broker("seeking", &self.topic, e))?;
        Ok(true)
    }

    /// The next event, or None when nothing arrived within `timeout`.
    pub fn poll(&mut self, timeout: Duration) -> Result<Option<Event<'c>>, KafkaClientError> {
        let stalled: Vec<i32> = self
            .cursors
            .iter()
            .filter(|(_, c)| !c.positioned && c.since.elapsed() > STALL)
            .map(|(p, _)| *p)
            .collect();
        for p in stalled {
            if !self.rewind(p)? {
                if let Some(c) = self.cursors.get_mut(&p) {
                    c.since = Instant::now();
                }
            }
        }
        let c = self.c;
        match c.poll(timeout) {
            None => Ok(None),
            Some(Ok(m)) => {
                let (p, o) = (m.partition(), m.offset());
                let Some(cur) = self.cursors.get_mut(&p) else {
                    return Ok(None); // paused, or not ours
                };
                if !cur.positioned {
                    if cur.want.is_some_and(|w| o > w) && cur.requested > cur.low {
                        // The broker skipped past the start: ask from further back.
                        self.rewind(p)?;
                        return Ok(None);
                    }
                    cur.positioned = true;
                }
                if cur.next.is_some_and(|n| o < n) {
                    return Ok(None);
                }
                cur.next = Some(o + 1);
                Ok(Some(Event::Record(m)))
            }
            Some(Err(KafkaError::PartitionEOF(p))) => match self.cursors.get(&p) {
                Some(_) => Ok(Some(Event::Eof(p))),
                None => Ok(None),
            },
            Some(Err(e)) => Err(KafkaClientError::broker("reading", &self.topic, e)),
        }
    }
}

/// The offset after the last record of each partition, as of now: the broker's high watermark, then
/// read on from there to partition-EOF. tansu 0.6.0 answers ListOffsets(latest) with the base offset
/// of the partition's last record batch, not the end; against Kafka this reads a few records.
pub fn end_offsets(
    conn: &KafkaConnection,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<BTreeMap<i32, i64>, KafkaClientError> {
    let probe = consumer(conn, group)?;
    let marks = watermarks(&probe, topic, partitions)?;
    let starts: BTreeMap<i32, Option<i64>> =
        marks.iter().map(|(p, (_, hi))| (*p, Some(*hi))).collect();
    let lows: BTreeMap<i32, i64> = marks.iter().map(|(p, (lo, _))| (*p, *lo)).collect();
    let mut end: BTreeMap<i32, i64> = marks.iter().map(|(p, (_, hi))| (*p, *hi)).collect();
    let mut reader = RangeReader::new(&probe, topic, &starts, &lows)?;
    let mut pending: Vec<i32> = partitions.to_vec();
    let deadline = Instant::now() + REQUEST_TIMEOUT * 3;
    while !pending.is_empty() {
        if Instant::now() >= deadline {
            return Err(KafkaClientError::Other(format!(
                "topic '{topic}': partitions {pending:?} did not reach their end within {}s while looking for the end offsets",
                (REQUEST_TIMEOUT * 3).as_secs()
            )));
        }
        match reader.poll(Duration::from_millis(100))? {
            None => {}
            Some(Event::Record(m)) => {
                let e = end.entry(m.partition()).or_insert(0);
                *e = (*e).max(m.offset() + 1);
            }
            Some(Event::Eof(p)) => {
                pending.retain(|x| *x != p);
                reader.pause(p);
            }
        }
    }
    Ok(end)
}

/// Commit `offsets` (the next offset to read, per partition) for the consumer's group, synchronously.
pub fn commit(
    c: &KafkaConsumer,
    topic: &str,
    offsets: &BTreeMap<i32, i64>,
) -> Result<(), KafkaClientError> {
    if offsets.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for (p, o) in offsets {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*o))
            .map_err(|e| KafkaClientError::broker("committing offsets", topic, e))?;
    }
    c.commit(&tpl, CommitMode::Sync)
        .map_err(|e| KafkaClientError::broker("committing offsets", topic, e))
}
