//! The S3 layer: one small client for the object store that sits between Kafka and the warehouse.
//!
//! The Kafka extraction writes each topic's hourly batches to S3 under date folders, and the warehouse
//! loads read them back (Redshift `COPY` reads S3 directly; checks and the PostgreSQL stand-in read them
//! through here). Those steps need only a handful of operations, and need them to behave the same way
//! against AWS and against S3-compatible servers (garage in the tests): put (large files as multipart,
//! aborted on failure so nothing partial stays), get (whole or streamed), head, list under a prefix (all
//! pages, sorted), delete and delete a prefix.
//!
//! Every call is a plain future (drop it to cancel), runs under the SDK's timeouts (connect 10 s,
//! operation 60 s) and retries (standard mode, 3 attempts), and fails with an [`S3Error`] that names the
//! operation, bucket and key, is classified (not found, access denied, timeout, other) so the engine can
//! decide whether a retry helps, and never carries the secret access key.

use std::fmt;
use std::io::SeekFrom;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier,
};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, ReadBuf};

use crate::config::project::S3Connection;

/// Files at least this large are uploaded as multipart by [`S3Client::put_file`].
pub const MULTIPART_THRESHOLD: u64 = 16 * 1024 * 1024;
/// Part size of multipart uploads (grown when a file would need more than 10,000 parts).
pub const PART_SIZE: u64 = 8 * 1024 * 1024;
/// Parts of one multipart upload in flight at once (so at most this many parts are held in memory).
pub const PART_CONCURRENCY: usize = 4;
/// Time allowed to open a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for one operation, retries included.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(60);

const MAX_PARTS: u64 = 10_000;
const DELETE_BATCH: usize = 1_000;
const DEFAULT_REGION: &str = "us-east-1";

/// An S3 failure, naming the operation, bucket and key.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("S3 {op} s3://{bucket}/{key}: not found ({message})")]
    NotFound {
        op: &'static str,
        bucket: String,
        key: String,
        message: String,
    },
    #[error("S3 {op} s3://{bucket}/{key}: access denied ({message})")]
    AccessDenied {
        op: &'static str,
        bucket: String,
        key: String,
        message: String,
    },
    #[error("S3 {op} s3://{bucket}/{key}: timed out ({message})")]
    Timeout {
        op: &'static str,
        bucket: String,
        key: String,
        message: String,
    },
    #[error("S3 {op} s3://{bucket}/{key}: {message}")]
    Other {
        op: &'static str,
        bucket: String,
        key: String,
        message: String,
        /// Whether trying again may succeed (network errors, 5xx, throttling).
        retryable: bool,
    },
}

impl S3Error {
    fn other(op: &'static str, bucket: &str, key: &str, message: impl Into<String>) -> S3Error {
        S3Error::Other {
            op,
            bucket: bucket.to_string(),
            key: key.to_string(),
            message: message.into(),
            retryable: false,
        }
    }

    /// The operation that failed (`put`, `get`, `head`, `list`, `delete`, `upload_part`, ...).
    pub fn operation(&self) -> &'static str {
        match self {
            S3Error::NotFound { op, .. }
            | S3Error::AccessDenied { op, .. }
            | S3Error::Timeout { op, .. }
            | S3Error::Other { op, .. } => op,
        }
    }

    pub fn bucket(&self) -> &str {
        match self {
            S3Error::NotFound { bucket, .. }
            | S3Error::AccessDenied { bucket, .. }
            | S3Error::Timeout { bucket, .. }
            | S3Error::Other { bucket, .. } => bucket,
        }
    }

    /// The key (or prefix, for `list` and `delete_prefix`).
    pub fn key(&self) -> &str {
        match self {
            S3Error::NotFound { key, .. }
            | S3Error::AccessDenied { key, .. }
            | S3Error::Timeout { key, .. }
            | S3Error::Other { key, .. } => key,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, S3Error::NotFound { .. })
    }

    /// Whether a later attempt may succeed: timeouts, network failures, 5xx and throttling. Not found and
    /// access denied are not (the SDK has already retried transient failures by the time this is seen).
    pub fn is_retryable(&self) -> bool {
        match self {
            S3Error::Timeout { .. } => true,
            S3Error::Other { retryable, .. } => *retryable,
            S3Error::NotFound { .. } | S3Error::AccessDenied { .. } => false,
        }
    }
}

/// What S3 says about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// Without the surrounding quotes; a multipart upload's ends in `-N` (its part count).
    pub etag: String,
    pub last_modified: Option<chrono::DateTime<chrono::Utc>>,
}

/// A client for one S3 connection. Cheap to clone (the SDK client is shared).
#[derive(Clone)]
pub struct S3Client {
    client: aws_sdk_s3::Client,
    default_bucket: Option<String>,
    /// The secret access key, only to mask it should a server or the SDK ever echo it.
    secret: Option<String>,
}

impl fmt::Debug for S3Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Client")
            .field("default_bucket", &self.default_bucket)
            .finish_non_exhaustive()
    }
}

impl S3Client {
    /// A client for a configured connection: its endpoint (AWS when absent), region (default
    /// `us-east-1`), path-style addressing, and static credentials. Without credentials in the
    /// connection, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN` are read from the
    /// environment. Does no I/O.
    pub fn new(conn: &S3Connection) -> Result<S3Client, S3Error> {
        let bucket = conn.bucket.as_deref().unwrap_or("");
        let fail = |m: String| S3Error::other("configure", bucket, "", m);
        let region = conn
            .region
            .clone()
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| DEFAULT_REGION.to_string());
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let (key_id, secret, token) = match (&conn.access_key_id, &conn.secret_access_key) {
            (Some(id), Some(secret)) => (id.clone(), secret.clone(), conn.session_token.clone()),
            (None, None) => match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
                (Some(id), Some(secret)) => (id, secret, env("AWS_SESSION_TOKEN")),
                _ => return Err(fail(
                    "no credentials: set access_key_id and secret_access_key on the connection, \
                         or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment"
                        .to_string(),
                )),
            },
            (Some(_), None) => {
                return Err(fail(
                    "access_key_id is set but secret_access_key is not".to_string(),
                ))
            }
            (None, Some(_)) => {
                return Err(fail(
                    "secret_access_key is set but access_key_id is not".to_string(),
                ))
            }
        };
        // rustls with ring: no aws-lc (a C build of several minutes) for one loopback or AWS client.
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut builder = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .http_client(http)
            .region(Region::new(region))
            .credentials_provider(Credentials::new(
                key_id,
                secret.clone(),
                token,
                None,
                "cranium",
            ))
            .force_path_style(conn.path_style)
            .retry_config(RetryConfig::standard().with_max_attempts(3))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_timeout(OPERATION_TIMEOUT)
                    .build(),
            );
        if let Some(endpoint) = conn.endpoint.as_deref().filter(|e| !e.is_empty()) {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(fail(format!(
                    "endpoint {endpoint:?} must start with http:// or https://"
                )));
            }
            builder = builder.endpoint_url(endpoint.trim_end_matches('/'));
        }
        Ok(S3Client {
            client: aws_sdk_s3::Client::from_conf(builder.build()),
            default_bucket: conn.bucket.clone().filter(|b| !b.is_empty()),
            secret: Some(secret).filter(|s| !s.is_empty()),
        })
    }

    /// Wrap an SDK client built elsewhere (its configuration is used as is).
    pub fn from_sdk(client: aws_sdk_s3::Client, default_bucket: Option<String>) -> S3Client {
        S3Client {
            client,
            default_bucket,
            secret: None,
        }
    }

    /// The underlying SDK client, for operations this layer does not wrap.
    pub fn sdk(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// The connection's default bucket, for steps that do not name one.
    pub fn default_bucket(&self) -> Option<&str> {
        self.default_bucket.as_deref()
    }

    /// Upload `body` as one object; returns its ETag.
    pub async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<String, S3Error> {
        let out = self
            .client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| self.error("put", bucket, key, e))?;
        Ok(unquote(out.e_tag()))
    }

    /// Upload a local file: a single PUT below [`MULTIPART_THRESHOLD`], else a multipart upload in
    /// parts of [`PART_SIZE`], [`PART_CONCURRENCY`] at a time. If anything fails, or the future is
    /// dropped, the multipart upload is aborted, so no object and no pending upload stays behind.
    pub async fn put_file(
        &self,
        bucket: &str,
        key: &str,
        path: &Path,
        content_type: &str,
    ) -> Result<String, S3Error> {
        let io_err = |what: &str, e: std::io::Error| {
            S3Error::other(
                "put_file",
                bucket,
                key,
                format!("{what} {}: {e}", path.display()),
            )
        };
        let len = tokio::fs::metadata(path)
            .await
            .map_err(|e| io_err("reading", e))?
            .len();
        if len < MULTIPART_THRESHOLD {
            let body = tokio::fs::read(path)
                .await
                .map_err(|e| io_err("reading", e))?;
            return self.put(bucket, key, Bytes::from(body), content_type).await;
        }

        // An earlier attempt whose server went away mid-upload could not abort its upload: such
        // leftovers of this key are aborted now, so their parts do not linger (and bill) forever.
        for (_, stale) in self
            .open_uploads(bucket, key)
            .await?
            .into_iter()
            .filter(|(k, _)| k == key)
        {
            tracing::info!(
                bucket,
                key,
                upload_id = stale,
                "aborting a multipart upload an earlier attempt left open"
            );
            self.client
                .abort_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&stale)
                .send()
                .await
                .map_err(|e| self.error("abort_multipart_upload", bucket, key, e))?;
        }
        let created = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .send()
            .await
            .map_err(|e| self.error("create_multipart_upload", bucket, key, e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| {
                S3Error::other(
                    "create_multipart_upload",
                    bucket,
                    key,
                    "the server returned no upload id",
                )
            })?
            .to_string();
        let mut guard = AbortGuard {
            client: self.client.clone(),
            bucket: bucket.to_string(),
            key: key.to_string(),
            upload_id: Some(upload_id.clone()),
        };

        match self.upload_parts(bucket, key, path, len, &upload_id).await {
            Ok(etag) => {
                guard.upload_id = None;
                Ok(etag)
            }
            Err(e) => {
                // Best effort: the error that matters is the one that made the upload fail. The guard
                // stays armed until the abort is answered, in case this future is dropped meanwhile.
                let _ = self
                    .client
                    .abort_multipart_upload()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .send()
                    .await;
                guard.upload_id = None;
                Err(e)
            }
        }
    }

    async fn upload_parts(
        &self,
        bucket: &str,
        key: &str,
        path: &Path,
        len: u64,
        upload_id: &str,
    ) -> Result<String, S3Error> {
        let part_size = PART_SIZE.max(len.div_ceil(MAX_PARTS));
        let count = len.div_ceil(part_size);
        let mut parts: Vec<CompletedPart> = futures::stream::iter(0..count)
            .map(|i| {
                let offset = i * part_size;
                let size = part_size.min(len - offset);
                self.upload_part(bucket, key, path, upload_id, i + 1, offset, size)
            })
            .buffer_unordered(PART_CONCURRENCY)
            .try_collect()
            .await?;
        parts.sort_by_key(|p| p.part_number());
        let out = self
            .client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.error("complete_multipart_upload", bucket, key, e))?;
        Ok(unquote(out.e_tag()))
    }

    #[allow(clippy::too_many_arguments)]
    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        path: &Path,
        upload_id: &str,
        number: u64,
        offset: u64,
        size: u64,
    ) -> Result<CompletedPart, S3Error> {
        let io_err = |e: std::io::Error| {
            S3Error::other(
                "upload_part",
                bucket,
                key,
                format!("reading part {number} of {}: {e}", path.display()),
            )
        };
        let mut file = tokio::fs::File::open(path).await.map_err(io_err)?;
        file.seek(SeekFrom::Start(offset)).await.map_err(io_err)?;
        let mut buf = vec![0u8; size as usize];
        file.read_exact(&mut buf).await.map_err(io_err)?;
        let number = i32::try_from(number).unwrap_or(i32::MAX);
        let out = self
            .client
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .body(ByteStream::from(buf))
            .send()
            .await
            .map_err(|e| self.error("upload_part", bucket, key, e))?;
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(out.e_tag().map(str::to_string))
            .set_checksum_crc32(out.checksum_crc32().map(str::to_string))
            .build())
    }

    /// The multipart uploads begun and neither completed nor aborted under `prefix`, as (key,
    /// upload id), every page.
    pub async fn open_uploads(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<(String, String)>, S3Error> {
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| self.error("list_multipart_uploads", bucket, prefix, e))?;
            for u in page.uploads() {
                if let (Some(k), Some(id)) = (u.key(), u.upload_id()) {
                    out.push((k.to_string(), id.to_string()));
                }
            }
            if !page.is_truncated().unwrap_or(false) {
                return Ok(out);
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && id_marker.is_none() {
                return Ok(out);
            }
        }
    }

    /// The whole object in memory.
    pub async fn get(&self, bucket: &str, key: &str) -> Result<Bytes, S3Error> {
        let out = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.error("get", bucket, key, e))?;
        let body = out.body.collect().await.map_err(|e| S3Error::Other {
            op: "get",
            bucket: bucket.to_string(),
            key: key.to_string(),
            message: self.redact(format!("reading the body: {}", DisplayErrorContext(&e))),
            retryable: true,
        })?;
        Ok(body.into_bytes())
    }

    /// The object's body as a stream, for objects too large to hold in memory. Errors while reading
    /// name the bucket and key; a stalled download fails (the SDK's stalled-stream protection).
    pub async fn get_stream(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<impl AsyncRead + Send + Unpin, S3Error> {
        let out = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.error("get", bucket, key, e))?;
        Ok(ContextRead {
            inner: Box::pin(out.body.into_async_read()),
            context: format!("S3 get s3://{bucket}/{key}"),
        })
    }

    /// The object's size, ETag and modification time; `None` when there is no such key.
    pub async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>, S3Error> {
        match self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(ObjectInfo {
                key: key.to_string(),
                size: size_of(out.content_length()),
                etag: unquote(out.e_tag()),
                last_modified: out.last_modified().and_then(to_chrono),
            })),
            Err(e) => match self.error("head", bucket, key, e) {
                S3Error::NotFound { .. } => {
                    // A 404 on HEAD has no body: tell a missing key from a missing bucket.
                    match self.client.head_bucket().bucket(bucket).send().await {
                        Err(e) => Err(self.error("head", bucket, key, e)),
                        Ok(_) => Ok(None),
                    }
                }
                other => Err(other),
            },
        }
    }

    /// Every object under `prefix` (all pages), sorted by key.
    pub async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectInfo>, S3Error> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        let mut objects = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error("list", bucket, prefix, e))?;
            for o in page.contents() {
                objects.push(ObjectInfo {
                    key: o.key().unwrap_or_default().to_string(),
                    size: size_of(o.size()),
                    etag: unquote(o.e_tag()),
                    last_modified: o.last_modified().and_then(to_chrono),
                });
            }
        }
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    /// Delete one object; deleting a key that does not exist is not an error.
    pub async fn delete(&self, bucket: &str, key: &str) -> Result<(), S3Error> {
        match self
            .client
            .delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().and_then(|s| s.code()) == Some("NoSuchKey") => Ok(()),
            Err(e) => Err(self.error("delete", bucket, key, e)),
        }
    }

    /// Delete every object under `prefix`, 1,000 per request; returns how many were deleted. An empty
    /// prefix (the whole bucket) is refused.
    pub async fn delete_prefix(&self, bucket: &str, prefix: &str) -> Result<u64, S3Error> {
        if prefix.is_empty() {
            return Err(S3Error::other(
                "delete_prefix",
                bucket,
                prefix,
                "refusing to delete with an empty prefix (the whole bucket)",
            ));
        }
        let objects = self.list(bucket, prefix).await.map_err(|e| match e {
            S3Error::NotFound { message, .. } => S3Error::NotFound {
                op: "delete_prefix",
                bucket: bucket.to_string(),
                key: prefix.to_string(),
                message,
            },
            other => other,
        })?;
        let mut deleted = 0u64;
        for chunk in objects.chunks(DELETE_BATCH) {
            let ids = chunk
                .iter()
                .map(|o| ObjectIdentifier::builder().key(&o.key).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| S3Error::other("delete_prefix", bucket, prefix, e.to_string()))?;
            let delete = Delete::builder()
                .set_objects(Some(ids))
                .quiet(true)
                .build()
                .map_err(|e| S3Error::other("delete_prefix", bucket, prefix, e.to_string()))?;
            let out = self
                .client
                .delete_objects()
                .bucket(bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| self.error("delete_prefix", bucket, prefix, e))?;
            if let Some(err) = out.errors().first() {
                return Err(S3Error::Other {
                    op: "delete_prefix",
                    bucket: bucket.to_string(),
                    key: err.key().unwrap_or(prefix).to_string(),
                    message: self.redact(format!(
                        "{} of {} objects not deleted; first: {}: {}",
                        out.errors().len(),
                        chunk.len(),
                        err.code().unwrap_or("error"),
                        err.message().unwrap_or("")
                    )),
                    retryable: true,
                });
            }
            deleted += chunk.len() as u64;
        }
        Ok(deleted)
    }

    fn redact(&self, message: String) -> String {
        match &self.secret {
            Some(s) if message.contains(s.as_str()) => message.replace(s.as_str(), "***"),
            _ => message,
        }
    }

    /// Classify an SDK error.
    fn error<E>(
        &self,
        op: &'static str,
        bucket: &str,
        key: &str,
        err: SdkError<E, HttpResponse>,
    ) -> S3Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let (bucket, key) = (bucket.to_string(), key.to_string());
        let (kind, message) = match &err {
            SdkError::TimeoutError(_) => (Kind::Timeout, "no answer in time".to_string()),
            SdkError::DispatchFailure(d) if d.is_timeout() => {
                (Kind::Timeout, DisplayErrorContext(&err).to_string())
            }
            SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
                (Kind::Retryable, DisplayErrorContext(&err).to_string())
            }
            SdkError::ServiceError(s) => {
                let status = s.raw().status().as_u16();
                let code = s.err().code();
                let text = match (code, s.err().message()) {
                    (Some(c), Some(m)) => format!("{c}: {m}; HTTP {status}"),
                    (Some(c), None) => format!("{c}; HTTP {status}"),
                    (None, Some(m)) => format!("{m}; HTTP {status}"),
                    (None, None) => format!("HTTP {status}"),
                };
                let kind = match (code.unwrap_or(""), status) {
                    ("NoSuchKey" | "NoSuchBucket" | "NotFound" | "NoSuchUpload", _) | (_, 404) => {
                        Kind::NotFound
                    }
                    (
                        "AccessDenied"
                        | "InvalidAccessKeyId"
                        | "SignatureDoesNotMatch"
                        | "InvalidToken"
                        | "ExpiredToken"
                        | "Forbidden",
                        _,
                    )
                    | (_, 401 | 403) => Kind::AccessDenied,
                    ("RequestTimeout", _) | (_, 408) => Kind::Timeout,
                    ("SlowDown" | "Throttling" | "ServiceUnavailable" | "InternalError", _)
                    | (_, 429 | 500..=599) => Kind::Retryable,
                    _ => Kind::Permanent,
                };
                (kind, text)
            }
            _ => (Kind::Permanent, DisplayErrorContext(&err).to_string()),
        };
        let message = self.redact(message);
        match kind {
            Kind::NotFound => S3Error::NotFound {
                op,
                bucket,
                key,
                message,
            },
            Kind::AccessDenied => S3Error::AccessDenied {
                op,
                bucket,
                key,
                message,
            },
            Kind::Timeout => S3Error::Timeout {
                op,
                bucket,
                key,
                message,
            },
            Kind::Retryable | Kind::Permanent => S3Error::Other {
                op,
                bucket,
                key,
                message,
                retryable: kind == Kind::Retryable,
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    NotFound,
    AccessDenied,
    Timeout,
    Retryable,
    Permanent,
}

/// Aborts a multipart upload whose `put_file` future was dropped before it finished.
struct AbortGuard {
    client: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    upload_id: Option<String>,
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        let Some(upload_id) = self.upload_id.take() else {
            return;
        };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let req = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&self.key)
                .upload_id(upload_id);
            handle.spawn(async move {
                let _ = req.send().await;
            });
        }
    }
}

/// Adds the bucket and key to read errors of a streamed body.
struct ContextRead<R> {
    inner: Pin<Box<R>>,
    context: String,
}

impl<R: AsyncRead> AsyncRead for ContextRead<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.inner.as_mut().poll_read(cx, buf) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", self.context),
            ))),
            other => other,
        }
    }
}

fn unquote(etag: Option<&str>) -> String {
    etag.unwrap_or_default().trim_matches('"').to_string()
}

fn size_of(len: Option<i64>) -> u64 {
    len.and_then(|n| u64::try_from(n).ok()).unwrap_or(0)
}

fn to_chrono(t: &aws_sdk_s3::primitives::DateTime) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_lose_their_quotes() {
        assert_eq!(unquote(Some("\"abc-3\"")), "abc-3");
        assert_eq!(unquote(Some("abc")), "abc");
        assert_eq!(unquote(None), "");
    }

    #[test]
    fn half_credentials_are_refused() {
        let conn = S3Connection {
            access_key_id: Some("AKID".into()),
            ..Default::default()
        };
        let e = S3Client::new(&conn).unwrap_err();
        assert!(
            e.to_string().contains("secret_access_key is set")
                || e.to_string().contains("secret_access_key is not")
        );
        let conn = S3Connection {
            endpoint: Some("localhost:3900".into()),
            access_key_id: Some("AKID".into()),
            secret_access_key: Some("s3cr3t-value".into()),
            ..Default::default()
        };
        let e = S3Client::new(&conn).unwrap_err();
        assert!(e.to_string().contains("http://"), "{e}");
        assert!(!e.to_string().contains("s3cr3t-value"));
    }

    #[test]
    fn retryable_classification() {
        let e = S3Error::other("get", "b", "k", "x");
        assert!(!e.is_retryable());
        assert_eq!((e.operation(), e.bucket(), e.key()), ("get", "b", "k"));
        let e = S3Error::Timeout {
            op: "get",
            bucket: "b".into(),
            key: "k".into(),
            message: "slow".into(),
        };
        assert!(e.is_retryable());
        assert_eq!(e.to_string(), "S3 get s3://b/k: timed out (slow)");
    }
}
