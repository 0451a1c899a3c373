//! Helpers shared by the tests that use the broker and the S3 server of `scripts/services.sh up`.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cranium::config::project::S3Connection;
use cranium::lake;
use cranium::lake::Format;
use cranium::s3::S3Client;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

pub const MY: &str = "mysql://root@127.0.0.1:3306/test";
pub const PG: &str = "postgres://postgres@127.0.0.1:5432/test";

pub const S3_SECRET: &str = "b892c0665f0ada8a4755dae98baa3b133590e11dae3bcc1f9d769d67f16c3835";

pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

pub fn brokers() -> String {
    env_or("KAFKA_BROKERS", "127.0.0.1:9092")
}

pub fn s3_conn() -> S3Connection {
    S3Connection {
        endpoint: Some(env_or("S3_ENDPOINT", "http://127.0.0.1:3900")),
        region: Some(env_or("S3_REGION", "garage")),
        path_style: true,
        access_key_id: Some(env_or("S3_ACCESS_KEY_ID", "GK31c2f218a2e44f485b94239e")),
        secret_access_key: Some(env_or("S3_SECRET_ACCESS_KEY", S3_SECRET)),
        session_token: None,
        bucket: Some(env_or("S3_BUCKET", "cranium-lake")),
    }
}

pub fn s3() -> (S3Client, String) {
    let c = s3_conn();
    let bucket = c.bucket.clone().expect("bucket");
    (S3Client::new(&c).expect("s3 client"), bucket)
}

/// A name no other test (or earlier run) uses.
pub fn unique(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!("{name}_{}_{}", std::process::id(), nanos % 1_000_000_000)
}

/// `cranium.yaml` with the services' connections (`events`: Kafka, `lake`: S3) and the databases
/// (`production`: MariaDB, `warehouse`: PostgreSQL), and a SQLite store; `jobs` as (file name, text).
pub fn project(dir: &Path, jobs: &[(&str, &str)]) {
    let c = s3_conn();
    std::fs::write(
        dir.join("cranium.yaml"),
        format!(
            "connections:\n  production:\n    kind: mysql\n    url: {MY}\n  warehouse:\n    kind: postgres\n    url: {PG}\n  events:\n    kind: kafka\n    brokers: {}\n  lake:\n    kind: s3\n    endpoint: {}\n    region: {}\n    path_style: true\n    access_key_id: {}\n    secret_access_key: {}\n    bucket: {}\n",
            brokers(),
            c.endpoint.unwrap_or_default(),
            c.region.unwrap_or_default(),
            c.access_key_id.unwrap_or_default(),
            c.secret_access_key.unwrap_or_default(),
            c.bucket.unwrap_or_default(),
        ),
    )
    .expect("cranium.yaml");
    std::fs::create_dir_all(dir.join("jobs")).expect("jobs");
    for (name, text) in jobs {
        std::fs::write(dir.join("jobs").join(format!("{name}.yaml")), text).expect("job");
    }
}

pub async fn create_topic(topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin client");
    let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let res = admin
        .create_topics(
            [&t],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topics");
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
}

/// Delete a topic the test created (best effort: the broker keeps topics in memory).
pub async fn delete_topic(topic: &str) {
    let admin: AdminClient<DefaultClientContext> = match ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
    {
        Ok(a) => a,
        Err(_) => return,
    };
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let _ = admin.delete_topics(&[topic], &opts).await;
}

/// A producer; `linger` batches records (several record batches per partition come from flushes).
pub fn producer() -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("compression.type", "none")
        .set("acks", "all")
        .set("log_level", "3")
        .create()
        .expect("producer")
}

/// Produce (partition, timestamp ms, payload) records and wait until every one is acknowledged.
pub fn produce(
    p: &BaseProducer,
    topic: &str,
    records: impl IntoIterator<Item = (i32, i64, Vec<u8>)>,
) {
    for (part, ts, payload) in records {
        let mut rec = BaseRecord::<(), [u8]>::to(topic)
            .partition(part)
            .timestamp(ts)
            .payload(&payload[..]);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((e, r)) => {
                    assert!(
                        matches!(
                            e.rdkafka_error_code(),
                            Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                        ),
                        "produce: {e}"
                    );
                    rec = r;
                    p.poll(Duration::from_millis(20));
                }
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(60)).expect("flush");
}

/// Every object under `prefix`, decoded into its lines: (key, lines).
pub async fn read_objects(s3: &S3Client, bucket: &str, prefix: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for o in s3.list(bucket, prefix).await.expect("list") {
        let data = s3.get(bucket, &o.key).await.expect("get");
        // csv.gz objects are gzip too.
        let format = Format::of_key(&o.key)
            .or_else(|| o.key.ends_with(".csv.gz").then_some(Format::JsonlGz));
        let lines = match format {
            Some(f) => {
                let raw = lake::decode(f, &data).expect("decode");
                String::from_utf8(raw)
                    .expect("utf-8")
                    .lines()
                    .map(|l| l.to_string())
                    .collect()
            }
            None => vec![String::from_utf8_lossy(&data).to_string()],
        };
        out.push((o.key, lines));
    }
    out
}

/// The project in `dir`, checked (no errors allowed), with its SQLite store.
pub async fn engine(dir: &Path) -> cranium::engine::Engine {
    let c = cranium::check::check(dir, &cranium::config::interp::Env::default())
        .expect("project loads");
    assert!(
        !c.diagnostics.has_errors(),
        "{}",
        c.diagnostics.render(&c.project.redactor)
    );
    let store = cranium::store::Store::open("sqlite://.cranium/state.db", dir)
        .await
        .expect("store");
    cranium::engine::Engine::new(c.project.clone(), c.graph.clone(), store)
}

/// The interval `[start, start + hours)`, `start` in RFC 3339.
pub fn interval(start: &str, hours: i64) -> cranium::schedule::Interval {
    let start = chrono::DateTime::parse_from_rfc3339(start)
        .expect("time")
        .with_timezone(&chrono::Utc);
    cranium::schedule::Interval {
        start,
        end: start + chrono::Duration::hours(hours),
    }
}

/// The day `YYYY-MM-DD` (UTC) as an interval.
pub fn day(d: &str) -> cranium::schedule::Interval {
    interval(&format!("{d}T00:00:00Z"), 24)
}

/// Run `job` for `iv`, rerunning what already succeeded.
pub async fn run_job(
    e: &cranium::engine::Engine,
    job: &str,
    iv: cranium::schedule::Interval,
) -> cranium::engine::RunReport {
    let opts = cranium::engine::RunOptions {
        rerun: cranium::engine::Rerun::All,
        ..Default::default()
    };
    e.run_interval(job, iv, &opts, tokio_util::sync::CancellationToken::new())
        .await
        .expect("run")
}

pub async fn pg() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(PG, tokio_postgres::NoTls)
        .await
        .expect("connect pg");
    tokio::spawn(conn);
    client
}

/// A MariaDB connection with the session the tests assume (utf8mb4, UTC, no SQL mode).
pub async fn mysql() -> mysql_async::Conn {
    use mysql_async::prelude::Queryable;
    let mut c = mysql_async::Conn::new(mysql_async::Opts::from_url(MY).expect("url"))
        .await
        .expect("connect to MariaDB");
    c.query_drop("SET NAMES utf8mb4, time_zone = '+00:00', sql_mode = ''")
        .await
        .expect("session");
    c
}

/// The count a query of one `bigint` returns (e.g. `SELECT count(*) FROM t`).
pub async fn pg_count(sql: &str) -> i64 {
    pg().await
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// How many objects `cranium_loaded_objects` records as loaded into `target`.
pub async fn loaded_objects(target: &str) -> i64 {
    pg_count(&format!(
        "SELECT count(*) FROM cranium_loaded_objects WHERE target = '{}'",
        target.replace('\'', "''")
    ))
    .await
}

/// A MariaDB table `{name} (id, v)` of `rows` rows, for exports that take a while; its name.
pub async fn seed_export_table(name: &str, rows: u32) -> String {
    use mysql_async::prelude::Queryable;
    let table = unique(name);
    let mut my = mysql().await;
    my.query_drop(format!(
        "CREATE TABLE {table} (id INT PRIMARY KEY, v VARCHAR(64)) CHARACTER SET utf8mb4"
    ))
    .await
    .expect("create");
    my.query_drop(format!(
        "INSERT INTO {table} SELECT seq, CONCAT('row ', seq, ' of the export, padded to be a real row')
         FROM seq_1_to_{rows}"
    ))
    .await
    .expect("fill");
    table
}

/// The PostgreSQL session running a statement that matches the LIKE `pattern`, looked for every
/// 20 ms for up to `within`: its pid.
pub async fn pg_session_running(pattern: &str, within: Duration) -> Option<i32> {
    let finder = pg().await;
    let until = std::time::Instant::now() + within;
    while std::time::Instant::now() < until {
        let found = finder
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE query LIKE $1 \
                 AND pid <> pg_backend_pid() AND state = 'active' LIMIT 1",
                &[&pattern],
            )
            .await
            .ok()
            .flatten()
            .map(|r| r.get::<_, i32>(0));
        if found.is_some() {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// The MariaDB connection reading `table` (a `SELECT … FROM … table`), looked for every 20 ms for
/// up to `within`: its id.
pub async fn mysql_session_reading(table: &str, within: Duration) -> Option<i64> {
    use mysql_async::prelude::Queryable;
    let mut finder = mysql().await;
    let sql = format!(
        "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT%FROM%{table}%' \
         AND ID <> CONNECTION_ID() LIMIT 1"
    );
    let until = std::time::Instant::now() + within;
    while std::time::Instant::now() < until {
        if let Ok(Some(id)) = finder.query_first::<i64, _>(sql.as_str()).await {
            return Some(id);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// An export's objects under `prefix` (without its manifest), keyed by their name under it,
/// with their lines: what two exports of the same table must agree on.
pub async fn exported_objects(prefix: &str) -> Vec<(String, Vec<String>)> {
    let (s3c, bucket) = s3();
    read_objects(&s3c, &bucket, &format!("{prefix}/"))
        .await
        .into_iter()
        .filter(|(k, _)| !k.ends_with("_manifest.json"))
        .map(|(k, lines)| (k[prefix.len()..].to_string(), lines))
        .collect()
}

/// A TCP relay in front of a real server that runs `fault` (once) when a request containing
/// `pattern` passes through it, before forwarding that request: it times a fault to a protocol
/// moment ("while the manifest is being written") that polling from outside could only guess.
/// Everything else is relayed unchanged; the server answers every request itself.
pub struct Tap {
    pub addr: std::net::SocketAddr,
    pub fired: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Tap {
    pub async fn start(
        upstream: &str,
        pattern: &str,
        fault: impl Fn() + Send + Sync + 'static,
    ) -> Tap {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the tap");
        let addr = listener.local_addr().expect("tap address");
        let fired = Arc::new(AtomicBool::new(false));
        let (upstream, pattern) = (upstream.to_string(), pattern.as_bytes().to_vec());
        let fault = Arc::new(fault);
        let f2 = fired.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, pattern, fault, fired) =
                    (upstream.clone(), pattern.clone(), fault.clone(), f2.clone());
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return; // the server is down: the client sees its connection closed
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if !fired.load(Ordering::SeqCst)
                                && buf[..n].windows(pattern.len()).any(|w| w == pattern)
                                && !fired.swap(true, Ordering::SeqCst)
                            {
                                let fault = fault.clone();
                                tokio::task::spawn_blocking(move || fault())
                                    .await
                                    .expect("the fault");
                            }
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = sw.shutdown().await;
                    };
                    let down = async move {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Tap { addr, fired }
    }

    pub fn fired(&self) -> bool {
        self.fired.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Runs `scripts/services.sh` with `args` (e.g. `stop s3`, `up`) and asserts it succeeded.
pub fn services(args: &[&str]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("bash")
        .arg(root.join("scripts/services.sh"))
        .args(args)
        .output()
        .expect("scripts/services.sh");
    assert!(
        out.status.success(),
        "services.sh {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The offsets the consumer group `group` has committed on `topic`'s `partitions` (None: none).
pub fn committed_offsets(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Vec<Option<i64>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("log_level", "3")
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c
        .committed_offsets(tpl, Duration::from_secs(20))
        .expect("committed offsets");
    (0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(rdkafka::Offset::Offset(o)) => Some(o),
            _ => None,
        })
        .collect()
}
