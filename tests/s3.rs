//! The S3 layer against a real S3-compatible server (garage, started by `scripts/services.sh up`).
//!
//! The endpoint and credentials come from S3_ENDPOINT, S3_REGION, S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY
//! and S3_BUCKET, defaulting to the loopback garage of `scripts/services.sh`. Every test works under a key
//! prefix of its own and deletes what it created.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::error::BoxError;
use bytes::Bytes;
use cranium::config::project::S3Connection;
use cranium::s3::{S3Client, S3Error};
use futures::{StreamExt, TryStreamExt};
use tokio::io::AsyncReadExt;

mod support;
use support::{s3 as client, s3_conn as conn};

/// A key prefix no other test (or earlier run) uses.
fn prefix(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("cranium-tests/{test}-{}-{nanos}/", std::process::id())
}

/// Deterministic pseudo-random bytes (xorshift), so binary content covers every byte value.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// FNV-1a, as a checksum of what went up and what came back.
fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_head_round_trip_with_binary_data() {
    let (s3, bucket) = client();
    let p = prefix("round-trip");
    let key = format!("{p}blob.bin");
    let mut body: Vec<u8> = (0..=255u8).collect();
    body.extend(noise(100_000, 7));
    let etag = s3
        .put(
            &bucket,
            &key,
            Bytes::from(body.clone()),
            "application/octet-stream",
        )
        .await
        .unwrap();
    assert!(!etag.is_empty() && !etag.contains('"'), "{etag:?}");

    assert_eq!(s3.get(&bucket, &key).await.unwrap().as_ref(), &body[..]);

    let mut streamed = Vec::new();
    s3.get_stream(&bucket, &key)
        .await
        .unwrap()
        .read_to_end(&mut streamed)
        .await
        .unwrap();
    assert_eq!(streamed, body);

    let info = s3.head(&bucket, &key).await.unwrap().expect("present");
    assert_eq!(info.key, key);
    assert_eq!(info.size, body.len() as u64);
    assert_eq!(info.etag, etag);
    let modified = info.last_modified.expect("last_modified");
    assert!((chrono::Utc::now() - modified).num_minutes().abs() < 10);

    // An empty object is an object too.
    let empty = format!("{p}empty");
    s3.put(&bucket, &empty, Bytes::new(), "text/plain")
        .await
        .unwrap();
    assert!(s3.get(&bucket, &empty).await.unwrap().is_empty());
    assert_eq!(s3.head(&bucket, &empty).await.unwrap().unwrap().size, 0);

    assert_eq!(s3.delete_prefix(&bucket, &p).await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_returns_the_new_etag_and_content() {
    let (s3, bucket) = client();
    let p = prefix("overwrite");
    let key = format!("{p}doc.json");
    let first = s3
        .put(
            &bucket,
            &key,
            Bytes::from_static(b"{\"v\":1}"),
            "application/json",
        )
        .await
        .unwrap();
    let second = s3
        .put(
            &bucket,
            &key,
            Bytes::from_static(b"{\"v\":2,\"more\":true}"),
            "application/json",
        )
        .await
        .unwrap();
    assert_ne!(first, second);
    assert_eq!(
        s3.get(&bucket, &key).await.unwrap().as_ref(),
        b"{\"v\":2,\"more\":true}"
    );
    let info = s3.head(&bucket, &key).await.unwrap().unwrap();
    assert_eq!((info.etag.as_str(), info.size), (second.as_str(), 19));
    s3.delete(&bucket, &key).await.unwrap();
    assert!(s3.head(&bucket, &key).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_reads_every_page_sorted_with_etags_and_sizes() {
    let (s3, bucket) = client();
    let p = prefix("list");
    const N: usize = 1_100;
    // Keys in an order that is not the sorted one, with sizes that differ.
    let mut expected: Vec<(String, u64, String)> = futures::stream::iter((0..N).rev())
        .map(|i| {
            let (s3, bucket, p) = (s3.clone(), bucket.clone(), p.clone());
            async move {
                let key = format!("{p}part-{:05}.json", (i * 7919) % N);
                let body = format!("{{\"i\":{i}}}{}", " ".repeat(i % 13));
                let etag = s3
                    .put(&bucket, &key, Bytes::from(body.clone()), "application/json")
                    .await?;
                Ok::<_, S3Error>((key, body.len() as u64, etag))
            }
        })
        .buffer_unordered(32)
        .try_collect()
        .await
        .unwrap();
    expected.sort();

    let listed = s3.list(&bucket, &p).await.unwrap();
    assert_eq!(listed.len(), N);
    let got: Vec<(String, u64, String)> = listed
        .iter()
        .map(|o| (o.key.clone(), o.size, o.etag.clone()))
        .collect();
    assert_eq!(got, expected);
    assert!(listed.iter().all(|o| o.last_modified.is_some()));

    // A narrower prefix lists only its own.
    assert_eq!(
        s3.list(&bucket, &format!("{p}part-0000"))
            .await
            .unwrap()
            .len(),
        10
    );

    assert_eq!(s3.delete_prefix(&bucket, &p).await.unwrap(), N as u64);
    assert!(s3.list(&bucket, &p).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusual_keys_list_back_exactly() {
    let (s3, bucket) = client();
    let p = prefix("keys");
    let names = [
        "with space.json",
        "dt=2026-03-01/hour=14/part 0.json",
        "ünïcödé/日本語/😀.json",
        "a+b+c.json",
        "percent%20and&amp;?.json",
    ];
    let mut keys: Vec<String> = names.iter().map(|n| format!("{p}{n}")).collect();
    for (i, key) in keys.iter().enumerate() {
        s3.put(
            &bucket,
            key,
            Bytes::from(vec![i as u8; i + 1]),
            "text/plain",
        )
        .await
        .unwrap();
    }
    keys.sort();
    let listed: Vec<String> = s3
        .list(&bucket, &p)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(listed, keys);
    for key in &keys {
        assert!(s3.head(&bucket, key).await.unwrap().is_some(), "{key}");
        assert!(!s3.get(&bucket, key).await.unwrap().is_empty(), "{key}");
    }
    // A prefix with `=` and a space selects exactly its object.
    let hour = s3
        .list(&bucket, &format!("{p}dt=2026-03-01/hour=14/"))
        .await
        .unwrap();
    assert_eq!(hour.len(), 1);
    assert_eq!(hour[0].key, format!("{p}dt=2026-03-01/hour=14/part 0.json"));
    assert_eq!(
        s3.delete_prefix(&bucket, &p).await.unwrap(),
        names.len() as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_file_uploads_large_files_as_multipart() {
    let (s3, bucket) = client();
    let p = prefix("multipart");
    let dir = tempfile::tempdir().unwrap();

    let big = dir.path().join("big.bin");
    let data = noise(40 * 1024 * 1024 + 12_345, 42);
    std::fs::write(&big, &data).unwrap();
    let key = format!("{p}big.bin");
    let started = std::time::Instant::now();
    let etag = s3
        .put_file(&bucket, &key, &big, "application/octet-stream")
        .await
        .unwrap();
    eprintln!("40 MiB put_file took {:?}", started.elapsed());
    // 8 MiB parts: 6 of them (the last one small).
    assert!(
        etag.ends_with("-6"),
        "multipart ETag expected, got {etag:?}"
    );

    let info = s3.head(&bucket, &key).await.unwrap().unwrap();
    assert_eq!(
        (info.size, info.etag.as_str()),
        (data.len() as u64, etag.as_str())
    );

    let mut back = Vec::with_capacity(data.len());
    s3.get_stream(&bucket, &key)
        .await
        .unwrap()
        .read_to_end(&mut back)
        .await
        .unwrap();
    assert_eq!(back.len(), data.len());
    assert_eq!(checksum(&back), checksum(&data));
    assert!(back == data);

    // Below the threshold: one PUT, a plain ETag.
    let small = dir.path().join("small.csv");
    std::fs::write(&small, b"a,b\n1,2\n").unwrap();
    let small_key = format!("{p}small.csv");
    let etag = s3
        .put_file(&bucket, &small_key, &small, "text/csv")
        .await
        .unwrap();
    assert!(!etag.contains('-'), "{etag:?}");
    assert_eq!(
        s3.get(&bucket, &small_key).await.unwrap().as_ref(),
        b"a,b\n1,2\n"
    );

    // A file that is not there fails naming it, and uploads nothing.
    let e = s3
        .put_file(
            &bucket,
            &format!("{p}none"),
            &dir.path().join("none"),
            "text/plain",
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("none"), "{e}");

    assert_eq!(s3.delete_prefix(&bucket, &p).await.unwrap(), 2);
}

/// Fails the upload of one part, as a network failure mid-way would.
#[derive(Debug)]
struct FailPart(&'static str);

impl Intercept for FailPart {
    fn name(&self) -> &'static str {
        "FailPart"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if context.request().uri().contains(self.0) {
            return Err("injected failure".into());
        }
        Ok(())
    }
}

/// Notes that a part upload is being sent.
#[derive(Debug)]
struct SeePart(Arc<AtomicBool>);

impl Intercept for SeePart {
    fn name(&self) -> &'static str {
        "SeePart"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if context.request().uri().contains("partNumber=") {
            self.0.store(true, Ordering::SeqCst);
        }
        Ok(())
    }
}

async fn pending_uploads(s3: &S3Client, bucket: &str, key: &str) -> usize {
    s3.sdk()
        .list_multipart_uploads()
        .bucket(bucket)
        .prefix(key)
        .send()
        .await
        .unwrap()
        .uploads()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_multipart_upload_leaves_nothing_behind() {
    let (s3, bucket) = client();
    let p = prefix("multipart-fail");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.bin");
    std::fs::write(&path, noise(24 * 1024 * 1024, 9)).unwrap();

    // The third of three parts fails.
    let config = s3
        .sdk()
        .config()
        .to_builder()
        .interceptor(FailPart("partNumber=3"))
        .build();
    let failing = S3Client::from_sdk(aws_sdk_s3::Client::from_conf(config), None);
    let key = format!("{p}big.bin");
    let e = failing
        .put_file(&bucket, &key, &path, "application/octet-stream")
        .await
        .unwrap_err();
    assert_eq!(e.operation(), "upload_part", "{e}");
    assert_eq!((e.bucket(), e.key()), (bucket.as_str(), key.as_str()));
    assert!(s3.head(&bucket, &key).await.unwrap().is_none());
    assert_eq!(pending_uploads(&s3, &bucket, &key).await, 0);

    // Dropping the future mid-upload aborts it too.
    // Once a part is on its way, put_file holds the upload id (before that, a drop can leave an
    // upload the client never heard of: the bucket's lifecycle rule is the backstop for that).
    let sending = Arc::new(AtomicBool::new(false));
    let config = s3
        .sdk()
        .config()
        .to_builder()
        .interceptor(SeePart(sending.clone()))
        .build();
    let watched = S3Client::from_sdk(aws_sdk_s3::Client::from_conf(config), None);
    let upload = watched.put_file(&bucket, &key, &path, "application/octet-stream");
    let mut upload = Box::pin(upload);
    while !sending.load(Ordering::SeqCst) {
        tokio::select! {
            r = &mut upload => panic!("the upload finished before it could be cancelled: {r:?}"),
            _ = tokio::time::sleep(std::time::Duration::from_millis(1)) => {}
        }
    }
    assert_eq!(pending_uploads(&s3, &bucket, &key).await, 1);
    drop(upload);
    let mut pending = usize::MAX;
    for _ in 0..50 {
        pending = pending_uploads(&s3, &bucket, &key).await;
        if pending == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(pending, 0, "a dropped put_file left a pending upload");
    assert!(s3.head(&bucket, &key).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_keys_and_buckets() {
    let (s3, bucket) = client();
    let p = prefix("missing");
    let key = format!("{p}nothing here.json");
    assert!(s3.head(&bucket, &key).await.unwrap().is_none());

    let e = s3.get(&bucket, &key).await.unwrap_err();
    assert!(matches!(e, S3Error::NotFound { .. }), "{e:?}");
    assert!(e.is_not_found() && !e.is_retryable());
    let text = e.to_string();
    assert!(text.contains(&bucket) && text.contains(&key), "{text}");
    assert!(s3.get_stream(&bucket, &key).await.is_err());

    // Deleting what is not there is fine.
    s3.delete(&bucket, &key).await.unwrap();
    assert_eq!(s3.delete_prefix(&bucket, &p).await.unwrap(), 0);
    assert!(s3.list(&bucket, &p).await.unwrap().is_empty());

    // A missing bucket is an error, not an absent key.
    let nobucket = "cranium-no-such-bucket";
    let e = s3.head(nobucket, "k").await.unwrap_err();
    assert!(e.is_not_found() && e.to_string().contains(nobucket), "{e}");
    let e = s3
        .put(nobucket, "k", Bytes::from_static(b"x"), "text/plain")
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert!(s3.list(nobucket, "p/").await.unwrap_err().is_not_found());

    // An empty prefix would be the whole bucket.
    assert!(s3.delete_prefix(&bucket, "").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_access_denied_without_the_secret() {
    let secret = "cranium-wrong-secret-0123456789abcdef";
    let good = conn();
    let bucket = good.bucket.clone().unwrap();
    for conn in [
        // A known key with the wrong secret, and a key that does not exist.
        S3Connection {
            secret_access_key: Some(secret.to_string()),
            ..good.clone()
        },
        S3Connection {
            access_key_id: Some("GK000000000000000000000000".to_string()),
            secret_access_key: Some(secret.to_string()),
            ..good.clone()
        },
    ] {
        let s3 = S3Client::new(&conn).unwrap();
        assert!(!format!("{s3:?}").contains(secret));
        let errors = [
            s3.get(&bucket, "cranium-tests/denied").await.unwrap_err(),
            s3.head(&bucket, "cranium-tests/denied").await.unwrap_err(),
            s3.put(
                &bucket,
                "cranium-tests/denied",
                Bytes::from_static(b"x"),
                "text/plain",
            )
            .await
            .unwrap_err(),
            s3.list(&bucket, "cranium-tests/").await.unwrap_err(),
        ];
        for e in errors {
            assert!(matches!(e, S3Error::AccessDenied { .. }), "{e:?}");
            assert!(!e.is_retryable());
            let (text, debug) = (e.to_string(), format!("{e:?}"));
            assert!(text.contains(&bucket), "{text}");
            assert!(!text.contains(secret) && !debug.contains(secret), "{debug}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_prefix_deletes_only_under_the_prefix() {
    let (s3, bucket) = client();
    let p = prefix("delete");
    for i in 0..5 {
        s3.put(
            &bucket,
            &format!("{p}dt=2026-03-01/{i}.json"),
            Bytes::from_static(b"{}"),
            "application/json",
        )
        .await
        .unwrap();
    }
    let sibling = format!("{p}dt=2026-03-010/keep.json");
    s3.put(
        &bucket,
        &sibling,
        Bytes::from_static(b"{}"),
        "application/json",
    )
    .await
    .unwrap();
    assert_eq!(
        s3.delete_prefix(&bucket, &format!("{p}dt=2026-03-01/"))
            .await
            .unwrap(),
        5
    );
    let left: Vec<String> = s3
        .list(&bucket, &p)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(left, vec![sibling.clone()]);
    assert_eq!(s3.delete_prefix(&bucket, &p).await.unwrap(), 1);
    assert!(s3.list(&bucket, &p).await.unwrap().is_empty());
}
