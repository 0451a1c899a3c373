//! The benchmark's baseline: the least a consumer can do to copy a topic into gzip, on one core.
//!
//! It reads every partition of `--topic` from the beginning to the end (assigned explicitly, the same
//! librdkafka settings as cranium's consumer, partition-EOF as the end), and writes each record's value
//! as a line into one gzip file at `--level` (default 6, cranium's default for `jsonl.gz`) with the same
//! compressor (flate2), on the consumer's own thread. No parsing, no routing, no upload. Prints one
//! JSON line: records, bytes (uncompressed), compressed bytes, seconds.

use std::io::Write;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn fail(msg: String) -> ! {
    eprintln!("kafka_baseline: {msg}");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let brokers = arg(&args, "--brokers").unwrap_or_else(|| "127.0.0.1:9092".into());
    let topic = arg(&args, "--topic").unwrap_or_else(|| fail("--topic is required".into()));
    let out = arg(&args, "--out").unwrap_or_else(|| fail("--out is required".into()));
    let level: u32 = arg(&args, "--level")
        .and_then(|l| l.parse().ok())
        .unwrap_or(6);
    let started = Instant::now();
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "cranium-bench-baseline")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "10")
        .set("fetch.queue.backoff.ms", "5")
        .set("queued.min.messages", "200000")
        .set("queued.max.messages.kbytes", "262144")
        .set("log_level", "3")
        .create()
        .unwrap_or_else(|e| fail(format!("consumer: {e}")));
    let md = c
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .unwrap_or_else(|e| fail(format!("metadata: {e}")));
    let parts: Vec<i32> = md
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if parts.is_empty() {
        fail(format!("topic {topic} has no partitions"));
    }
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(&topic, *p, Offset::Beginning)
            .unwrap_or_else(|e| fail(format!("assign: {e}")));
    }
    c.assign(&tpl)
        .unwrap_or_else(|e| fail(format!("assign: {e}")));
    let file = std::fs::File::create(&out).unwrap_or_else(|e| fail(format!("{out}: {e}")));
    let mut gz = flate2::write::GzEncoder::new(
        std::io::BufWriter::with_capacity(256 * 1024, file),
        flate2::Compression::new(level),
    );
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut open = parts.len();
    while open > 0 {
        match c.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => {
                let v = m.payload().unwrap_or_default();
                gz.write_all(v)
                    .unwrap_or_else(|e| fail(format!("write: {e}")));
                gz.write_all(b"\n")
                    .unwrap_or_else(|e| fail(format!("write: {e}")));
                records += 1;
                bytes += v.len() as u64 + 1;
            }
            Some(Err(KafkaError::PartitionEOF(_))) => open -= 1,
            Some(Err(e)) => fail(format!("consume: {e}")),
        }
    }
    let buf = gz.finish().unwrap_or_else(|e| fail(format!("gzip: {e}")));
    let file = buf
        .into_inner()
        .unwrap_or_else(|e| fail(format!("flush: {e}")));
    file.sync_all()
        .unwrap_or_else(|e| fail(format!("sync: {e}")));
    let compressed = file.metadata().map(|m| m.len()).unwrap_or(0);
    println!(
        "{}",
        serde_json::json!({"records": records, "bytes": bytes, "compressed_bytes": compressed,
                           "seconds": started.elapsed().as_secs_f64()})
    );
}
