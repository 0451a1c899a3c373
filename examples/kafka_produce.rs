//! Produce JSON events to a topic, for the demo and the benchmark.
//!
//! ```text
//! cargo run --release --example kafka_produce -- --topic T [--brokers 127.0.0.1:9092]
//!     [--create N]                       create the topic with N partitions first (if missing)
//!     [--if-empty]                       produce nothing when the topic already holds records
//!     [--delete]                         delete the topic and exit
//!     (--synthetic COUNT [--start 2026-03-01T00:00:00Z] [--hours 1]
//!      | --jsonl FILE [--time-field time])
//! ```
//! `--synthetic` writes COUNT app events of about 300 bytes (an `id` and a `time`, spread evenly over
//! `--hours` from `--start`, in id order; partition = id mod partitions). `--jsonl` sends each line of
//! FILE as is, with the Kafka timestamp taken from the line's time field when it has one (else the
//! line before's) and the
//! partition chosen by hashing the line's `user_id` (or its number). Prints one JSON summary line.

use std::io::BufRead;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn fail(msg: String) -> ! {
    eprintln!("kafka_produce: {msg}");
    std::process::exit(2)
}

fn send(p: &BaseProducer, topic: &str, part: i32, ts: i64, payload: &[u8]) {
    let mut rec = BaseRecord::<(), [u8]>::to(topic)
        .partition(part)
        .timestamp(ts)
        .payload(payload);
    loop {
        match p.send(rec) {
            Ok(()) => break,
            Err((e, r)) => {
                if e.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::QueueFull) {
                    fail(format!("producing to {topic}: {e}"));
                }
                rec = r;
                p.poll(Duration::from_millis(10));
            }
        }
    }
}

fn synthetic(i: u64, ts: i64) -> Vec<u8> {
    let time = chrono::DateTime::from_timestamp_millis(ts)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default();
    let kinds = [
        "applet_run",
        "applet_enabled",
        "page_view",
        "login",
        "search",
    ];
    let channels = ["ios", "android", "web", "alexa"];
    serde_json::to_vec(&serde_json::json!({
        "id": i,
        "time": time,
        "type": kinds[(i % 5) as usize],
        "user_id": (i.wrapping_mul(7919)) % 250_000,
        "channel": channels[(i % 4) as usize],
        "applet_id": format!("a{:08}", i % 1_000_003),
        "properties": {"recipe_id": i % 5000, "session": format!("s-{:016x}", i.wrapping_mul(0x9e3779b97f4a7c15)),
                       "user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) IFTTT/4.51"},
    }))
    .unwrap_or_default()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let brokers = arg(&args, "--brokers").unwrap_or_else(|| "127.0.0.1:9092".into());
    let Some(topic) = arg(&args, "--topic") else {
        fail("--topic is required".into())
    };
    if args.iter().any(|a| a == "--delete") {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap_or_else(|e| fail(format!("admin client: {e}")));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        match admin.delete_topics(&[topic.as_str()], &opts).await {
            Ok(res) => {
                for r in res {
                    if let Err((t, e)) = r {
                        fail(format!("deleting topic {t}: {e}"));
                    }
                }
            }
            Err(e) => fail(format!("deleting topic {topic}: {e}")),
        }
        println!("{}", serde_json::json!({"topic": topic, "deleted": true}));
        return;
    }
    if let Some(n) = arg(&args, "--create") {
        let n: i32 = n
            .parse()
            .unwrap_or_else(|_| fail(format!("--create {n}: not a number")));
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap_or_else(|e| fail(format!("admin client: {e}")));
        let t = NewTopic::new(&topic, n, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        match admin.create_topics([&t], &opts).await {
            Ok(res) => {
                for r in res {
                    if let Err((t, e)) = r {
                        if e != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                            fail(format!("creating topic {t}: {e}"));
                        }
                    }
                }
            }
            Err(e) => fail(format!("creating topic {topic}: {e}")),
        }
    }
    let partitions = {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap_or_else(|e| fail(format!("client: {e}")));
        let md = c
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .unwrap_or_else(|e| fail(format!("metadata of {topic}: {e}")));
        let n = md
            .topics()
            .first()
            .map(|t| t.partitions().len())
            .unwrap_or(0) as i32;
        if n == 0 {
            fail(format!("topic {topic} does not exist (use --create N)"));
        }
        n
    };
    if args.iter().any(|a| a == "--if-empty") {
        let conn = cranium::config::project::KafkaConnection {
            brokers: brokers.clone(),
            options: Default::default(),
        };
        let parts: Vec<i32> = (0..partitions).collect();
        let ends = cranium::kafka::end_offsets(&conn, "cranium-produce-check", &topic, &parts)
            .unwrap_or_else(|e| fail(format!("reading the end of {topic}: {e}")));
        let held: i64 = ends.values().sum();
        if held > 0 {
            println!(
                "{}",
                serde_json::json!({"topic": topic, "records": 0, "bytes": 0, "seconds": 0.0,
                                   "skipped": format!("{topic} already holds {held} records")})
            );
            return;
        }
    }
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("log_level", "3")
        .create()
        .unwrap_or_else(|e| fail(format!("producer: {e}")));
    let started = Instant::now();
    let (mut records, mut bytes) = (0u64, 0u64);
    if let Some(n) = arg(&args, "--synthetic") {
        let n: u64 = n
            .parse()
            .unwrap_or_else(|_| fail(format!("--synthetic {n}: not a number")));
        let start = arg(&args, "--start").unwrap_or_else(|| "2026-03-01T00:00:00Z".into());
        let start = chrono::DateTime::parse_from_rfc3339(&start)
            .unwrap_or_else(|e| fail(format!("--start {start}: {e}")))
            .timestamp_millis();
        let hours: i64 = arg(&args, "--hours")
            .and_then(|h| h.parse().ok())
            .unwrap_or(1);
        for i in 0..n {
            let ts = start + (i as i64) * hours * 3_600_000 / n.max(1) as i64;
            let payload = synthetic(i, ts);
            send(&p, &topic, (i % partitions as u64) as i32, ts, &payload);
            records += 1;
            bytes += payload.len() as u64;
            p.poll(Duration::ZERO);
        }
    } else if let Some(file) = arg(&args, "--jsonl") {
        let field = arg(&args, "--time-field").unwrap_or_else(|| "time".into());
        let f = std::fs::File::open(&file).unwrap_or_else(|e| fail(format!("{file}: {e}")));
        // A line without a readable time (a malformed record) gets the time of the line before it.
        let mut last_ts = chrono::Utc::now().timestamp_millis();
        for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line = line.unwrap_or_else(|e| fail(format!("{file}:{}: {e}", n + 1)));
            let v: Option<serde_json::Value> = serde_json::from_str(&line).ok();
            let ts = v
                .as_ref()
                .and_then(|v| v.get(&field))
                .and_then(|t| t.as_str())
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.timestamp_millis())
                .unwrap_or(last_ts);
            last_ts = ts;
            let key = v
                .as_ref()
                .and_then(|v| v.get("user_id"))
                .and_then(|u| u.as_u64())
                .unwrap_or(n as u64);
            send(
                &p,
                &topic,
                (key % partitions as u64) as i32,
                ts,
                line.as_bytes(),
            );
            records += 1;
            bytes += line.len() as u64;
            p.poll(Duration::ZERO);
        }
    } else {
        fail("give --synthetic COUNT or --jsonl FILE".into());
    }
    if let Err(e) = p.flush(Duration::from_secs(120)) {
        fail(format!("flushing to {topic}: {e}"));
    }
    println!(
        "{}",
        serde_json::json!({"topic": topic, "records": records, "bytes": bytes,
                           "seconds": started.elapsed().as_secs_f64()})
    );
}
