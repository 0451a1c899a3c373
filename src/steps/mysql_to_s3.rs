//! `mysql_to_s3`: export a MySQL table or query to S3 (full snapshot or incremental), in key order.
//!
//! Exports stream in key order with keyset pagination (`WHERE key > last ORDER BY key LIMIT n`, never
//! OFFSET), from one consistent snapshot for a full export (`START TRANSACTION WITH CONSISTENT
//! SNAPSHOT`), never holding more than one object's rows: rows go through the compressor into a
//! temporary file, and each finished object is uploaded. Objects are named from the export and a part
//! number (`users.00000.jsonl.gz`), so a rerun overwrites its own objects; parts left over from a larger
//! earlier export under the same prefix are deleted. A manifest in the format of `kafka_to_s3` lists
//! the objects (`{prefix}/_manifest.json`); the earlier one is deleted before the first part is
//! written and the new one written after the last, so a half-done export never looks complete.
//!
//! Values follow the JSON mapping of the MySQL connector (`src/db/mysql.rs`): DECIMAL as exact strings,
//! DATETIME as `YYYY-MM-DDTHH:MM:SS[.ffffff]`, TIMESTAMP the same in UTC with `Z`, DATE, TIME
//! (`[-]HH:MM:SS[.ffffff]`, hours past 24 kept), BIT as an unsigned integer, TINYINT(1) as a boolean,
//! JSON as JSON, ENUM and SET as strings, binary strings and BLOBs as base64, zero dates as null, NULL as
//! null (never an empty string), 4-byte UTF-8 as is.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde::Deserialize;

use super::{CheckCx, ErrorClass, RunCx, Step, StepError, StepOutput, TextOrigin};
use crate::config::{ConnectionKind, OneOrMany};
use crate::db::mysql::{MyClient, RowBatch};
use crate::db::DbKind;
use crate::lake::Format;
use crate::lake::{ObjectEntry, ObjectWriter};
use crate::s3::S3Client;
use crate::steps::kafka_to_s3::Manifest;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ExportMode {
    /// The whole table, from one consistent snapshot (default).
    #[default]
    Full,
    /// Rows whose `incremental_column` lies in the run's interval.
    Incremental,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ExportFormat {
    #[serde(rename = "jsonl.gz")]
    JsonlGz,
    #[serde(rename = "csv.gz")]
    CsvGz,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlToS3Step {
    /// A `mysql` connection.
    pub connection: String,
    /// Table to export (`db.table` or `table`).
    #[serde(default)]
    pub table: Option<String>,
    /// A SELECT to export, instead of `table` (templated).
    #[serde(default)]
    pub query: Option<String>,
    /// `full` (default) or `incremental`.
    #[serde(default)]
    pub mode: ExportMode,
    /// For `incremental`: the `updated_at`-style column compared with the interval.
    #[serde(default)]
    pub incremental_column: Option<String>,
    /// Key columns for ordering and keyset pagination (default: the table's primary key).
    #[serde(default)]
    pub key: Option<OneOrMany<String>>,
    /// Rows per page (default 50,000).
    #[serde(default)]
    pub chunk_size: Option<u64>,
    /// An `s3` connection.
    pub s3: String,
    #[serde(default)]
    pub bucket: Option<String>,
    /// Key prefix template, e.g. `mysql/users/{{ ds | date('%Y/%m/%d') }}/`.
    pub prefix: String,
    /// `jsonl.gz` (default) or `csv.gz`.
    #[serde(default = "jsonl_gz")]
    pub format: ExportFormat,
}

fn jsonl_gz() -> ExportFormat {
    ExportFormat::JsonlGz
}

/// Rows per object (an object is also cut at [`MAX_OBJECT_BYTES`] of uncompressed lines).
const MAX_OBJECT_ROWS: u64 = 1_000_000;
const MAX_OBJECT_BYTES: u64 = 128 * 1024 * 1024;
const DEFAULT_CHUNK: u64 = 50_000;

fn db_error(e: crate::db::DbError) -> StepError {
    StepError::from_db(e)
}

/// `name` as a MySQL identifier (`db.table` quoted part by part).
fn quote(name: &str) -> String {
    name.split('.')
        .map(|p| format!("`{}`", p.replace('`', "``")))
        .collect::<Vec<_>>()
        .join(".")
}

/// A time as MySQL compares it with DATETIME/TIMESTAMP columns (the session is UTC).
fn mysql_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

/// One CSV field: NULL as nothing, strings (and JSON) quoted, numbers and booleans bare.
fn csv_field(v: &serde_json::Value, out: &mut Vec<u8>) {
    match v {
        serde_json::Value::Null => {}
        serde_json::Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        serde_json::Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        serde_json::Value::String(s) => {
            out.push(b'"');
            out.extend_from_slice(s.replace('"', "\"\"").as_bytes());
            out.push(b'"');
        }
        other => {
            out.push(b'"');
            out.extend_from_slice(other.to_string().replace('"', "\"\"").as_bytes());
            out.push(b'"');
        }
    }
}

/// What the pager sends the encoder: rows, or the end of the export (without it, the open object is
/// discarded: a failed export uploads no partial last part).
enum Batch {
    Rows(RowBatch),
    End,
}

impl From<RowBatch> for Batch {
    fn from(b: RowBatch) -> Batch {
        Batch::Rows(b)
    }
}

/// The encoder thread: turns rows into lines, compresses them into temporary files, and hands each
/// finished object (with its part number) to the uploader.
struct Encoder {
    format: ExportFormat,
    tmp: std::path::PathBuf,
    json_columns: Vec<String>,
    open: Option<ObjectWriter>,
    header: bool,
    part: usize,
    rows: u64,
}

impl Encoder {
    fn run(
        mut self,
        mut rx: tokio::sync::mpsc::Receiver<Batch>,
        done: tokio::sync::mpsc::Sender<(usize, ObjectWriter)>,
    ) -> Result<u64, String> {
        let mut line = Vec::with_capacity(256);
        let json_columns = std::mem::take(&mut self.json_columns);
        while let Some(batch) = rx.blocking_recv() {
            let batch = match batch {
                Batch::Rows(b) => b,
                Batch::End => {
                    if let Some(w) = self.open.take() {
                        self.hand_over(w, &done)?;
                    }
                    return Ok(self.rows);
                }
            };
            match self.format {
                ExportFormat::JsonlGz => {
                    batch.json_lines(&json_columns, |l| self.add(&batch, l, &done))?
                }
                ExportFormat::CsvGz => batch.values(|values| {
                    line.clear();
                    for (i, v) in values.iter().enumerate() {
                        if i > 0 {
                            line.push(b',');
                        }
                        csv_field(v, &mut line);
                    }
                    self.add(&batch, &line, &done)
                })?,
            }
        }
        Ok(self.rows) // the pager stopped without `End`: the open object is dropped
    }

    /// Add one line; hands the object over when this line completed it.
    fn add(
        &mut self,
        batch: &RowBatch,
        line: &[u8],
        done: &tokio::sync::mpsc::Sender<(usize, ObjectWriter)>,
    ) -> Result<(), String> {
        if self.open.is_none() {
            let mut w = ObjectWriter::new_threaded(&self.tmp, Format::JsonlGz, 6)
                .map_err(|e| format!("creating a temporary file: {e}"))?;
            if self.format == ExportFormat::CsvGz {
                let mut header = Vec::new();
                for (i, k) in batch.column_names().into_iter().enumerate() {
                    if i > 0 {
                        header.push(b',');
                    }
                    csv_field(&serde_json::Value::String(k), &mut header);
                }
                w.write_line(&header, -1, None)
                    .map_err(|e| format!("writing: {e}"))?;
                self.header = true;
            }
            self.open = Some(w);
        }
        let index = self.rows as i64;
        self.rows += 1;
        let Some(w) = self.open.as_mut() else {
            return Err("no open object".to_string());
        };
        w.write_line(line, index, None)
            .map_err(|e| format!("writing: {e}"))?;
        let rows = w.records - u64::from(self.header);
        if rows >= MAX_OBJECT_ROWS || w.bytes >= MAX_OBJECT_BYTES {
            if let Some(w) = self.open.take() {
                self.hand_over(w, done)?;
            }
        }
        Ok(())
    }

    fn hand_over(
        &mut self,
        w: ObjectWriter,
        done: &tokio::sync::mpsc::Sender<(usize, ObjectWriter)>,
    ) -> Result<(), String> {
        let part = self.part;
        self.part += 1;
        done.blocking_send((part, w))
            .map_err(|_| "the upload stopped".to_string())
    }
}

fn extension(format: ExportFormat) -> &'static str {
    match format {
        ExportFormat::JsonlGz => "jsonl.gz",
        ExportFormat::CsvGz => "csv.gz",
    }
}

/// Upload one finished object as part `part`; its manifest entry.
async fn upload(
    s3: &S3Client,
    bucket: &str,
    key: String,
    name: &str,
    header: bool,
    w: ObjectWriter,
) -> Result<ObjectEntry, StepError> {
    let header = u64::from(header);
    let (records, bytes) = (w.records - header, w.bytes);
    let first = w.first_offset + header as i64;
    let last = w.last_offset;
    let (file, stored) = w
        .finish()
        .map_err(|e| StepError::external(format!("finishing {key}: {e}")))?;
    let etag = s3
        .put_file(bucket, &key, &file, "application/gzip")
        .await
        .map_err(StepError::from_s3)?;
    Ok(ObjectEntry {
        etag: (!etag.is_empty()).then_some(etag),
        key,
        records,
        bytes,
        stored_bytes: stored,
        topic: name.to_string(),
        partition: 0,
        first_offset: first,
        last_offset: last,
        min_time: None,
        max_time: None,
    })
}

impl MysqlToS3Step {
    async fn export(&self, cx: &RunCx) -> Result<StepOutput, StepError> {
        let (kind, url, _, timeout) =
            super::runtime::database_target(&cx.project, &self.connection)?;
        if kind != DbKind::MySql {
            return Err(StepError::config(format!(
                "connection '{}' is not a mysql connection",
                self.connection
            )));
        }
        let (s3, bucket) = cx.s3(&self.s3, self.bucket.as_deref())?;
        let s3 = Arc::new(s3);
        let prefix = cx.render_key_prefix("prefix", &self.prefix)?;
        let mut db = MyClient::connect(&url, timeout).await.map_err(|e| {
            StepError::external(
                cx.project
                    .redactor
                    .redact(&format!("connection '{}': {e}", self.connection)),
            )
        })?;
        let (deadline, cancel) = (cx.deadline, &cx.cancel);

        // What to read, and the key to page by.
        let (source, name) = match (&self.table, &self.query) {
            (Some(t), _) => (quote(t), t.rsplit('.').next().unwrap_or(t).to_string()),
            (None, Some(q)) => {
                let q = cx.render("query", q, Some(crate::sql::Dialect::MySql))?;
                (
                    format!("({}) AS cranium_export", q.trim().trim_end_matches(';')),
                    cx.spec().id.clone(),
                )
            }
            (None, None) => return Err(StepError::config("give `table` or `query`")),
        };
        let keys: Vec<String> = match (&self.key, &self.table) {
            (Some(k), _) => k.iter().cloned().collect(),
            (None, Some(t)) => {
                let (schema, table) = crate::db::mysql::schema_and_table(t);
                let rows = db
                    .query(
                        "SELECT COLUMN_NAME AS c FROM information_schema.KEY_COLUMN_USAGE \
                         WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? \
                         AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY ORDINAL_POSITION",
                        &[schema, table.into()],
                        deadline,
                        cancel,
                    )
                    .await
                    .map_err(db_error)?;
                rows.iter()
                    .filter_map(|r| r.get("c").and_then(|c| c.as_str()).map(str::to_string))
                    .collect()
            }
            (None, None) => Vec::new(),
        };
        if keys.is_empty() {
            return Err(StepError::config(format!(
                "{}: no primary key to page by; give `key:` (columns that identify a row)",
                self.table.as_deref().unwrap_or("the query")
            )));
        }
        // JSON columns (MariaDB stores them as LONGTEXT with a json_valid check) export as JSON.
        let json_columns: Vec<String> = match &self.table {
            Some(t) => db
                .json_columns(t, deadline, cancel)
                .await
                .map_err(db_error)?,
            None => Vec::new(),
        };
        let mut filter = Vec::new();
        let mut filter_params = Vec::new();
        if self.mode == ExportMode::Incremental {
            let Some(col) = &self.incremental_column else {
                return Err(StepError::config(
                    "mode 'incremental' needs `incremental_column`",
                ));
            };
            filter.push(format!("{0} >= ? AND {0} < ?", quote(col)));
            filter_params.push(mysql_time(cx.interval.start).into());
            filter_params.push(mysql_time(cx.interval.end).into());
        }
        let order = keys.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ");
        let chunk = self.chunk_size.unwrap_or(DEFAULT_CHUNK).max(1);

        // One consistent snapshot for every page.
        db.statement(
            "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            deadline,
            cancel,
        )
        .await
        .map_err(db_error)?;
        db.statement(
            "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
            deadline,
            cancel,
        )
        .await
        .map_err(db_error)?;

        let tmp = tempfile::tempdir().map_err(|e| {
            StepError::external(format!("cannot create a temporary directory: {e}"))
        })?;
        // Three stages at once: the pager reads pages of rows (this task), the encoder thread turns
        // them into compressed lines, the uploader sends each finished object.
        // The earlier export's manifest goes first: while this one rewrites the parts, nothing
        // under the prefix says it is complete (the new manifest is written last).
        let manifest_key = format!("{prefix}/_manifest.json");
        s3.delete(&bucket, &manifest_key)
            .await
            .map_err(StepError::from_s3)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Batch>(8);
        let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<(usize, ObjectWriter)>(2);
        let encoder = Encoder {
            format: self.format,
            tmp: tmp.path().to_path_buf(),
            json_columns,
            open: None,
            header: false,
            part: 0,
            rows: 0,
        };
        let encoding = tokio::task::spawn_blocking(move || encoder.run(rx, done_tx));
        let ext = extension(self.format);
        let csv = self.format == ExportFormat::CsvGz;
        let uploader = async {
            let mut written = Vec::new();
            while let Some((part, w)) = done_rx.recv().await {
                let key = format!("{prefix}/{name}.{part:05}.{ext}");
                written.push(upload(&s3, &bucket, key, &name, csv, w).await?);
            }
            Ok::<_, StepError>(written)
        };
        let db = &mut db;
        let pager = async move {
            let mut last: Option<Vec<serde_json::Value>> = None;
            loop {
                let mut conds = filter.clone();
                let mut params = filter_params.clone();
                if let Some(last) = &last {
                    let cols = keys.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ");
                    let marks = vec!["?"; keys.len()].join(", ");
                    conds.push(format!("({cols}) > ({marks})"));
                    params.extend(last.iter().cloned());
                }
                let sql = format!(
                    "SELECT * FROM {source}{} ORDER BY {order} LIMIT {chunk}",
                    if conds.is_empty() {
                        String::new()
                    } else {
                        format!(" WHERE {}", conds.join(" AND "))
                    }
                );
                let (n, page_last) = db
                    .stream_batches(&sql, &params, &keys, 1024, &tx, deadline, cancel)
                    .await
                    .map_err(db_error)?;
                if n < chunk {
                    break;
                }
                last = page_last;
            }
            db.statement("COMMIT", deadline, cancel)
                .await
                .map_err(db_error)?;
            tx.send(Batch::End)
                .await
                .map_err(|_| StepError::external("the encoder stopped"))?;
            Ok::<_, StepError>(())
        };
        let (paged, uploaded) = tokio::join!(pager, uploader);
        let encoded = encoding
            .await
            .map_err(|e| StepError::new(ErrorClass::Internal, format!("encoder: {e}")))?;
        // The first cause: a failed upload or encoder stops the pager, not the other way round.
        let written = uploaded?;
        let rows = encoded.map_err(StepError::external)?;
        paged?;
        let mut written = written;
        written.sort_by(|a, b| a.key.cmp(&b.key));

        // Parts of an earlier, larger export under this prefix would be read as part of this one.
        let stem = format!("{prefix}/{name}.");
        let keep: std::collections::HashSet<String> =
            written.iter().map(|o| o.key.clone()).collect();
        for o in s3.list(&bucket, &stem).await.map_err(StepError::from_s3)? {
            let rest = &o.key[stem.len()..];
            let is_part = rest.len() > 6
                && rest[..5].bytes().all(|b| b.is_ascii_digit())
                && &rest[5..6] == ".";
            if is_part && !keep.contains(&o.key) {
                s3.delete(&bucket, &o.key)
                    .await
                    .map_err(StepError::from_s3)?;
            }
        }

        let m = Manifest {
            batch_id: format!("{}.{}", name, cx.interval.start.format("%Y%m%dT%H%M%SZ")),
            topic: name.clone(),
            group: String::new(),
            interval_start: cx.interval.start.to_rfc3339(),
            interval_end: cx.interval.end.to_rfc3339(),
            format: ext.to_string(),
            offsets: Default::default(),
            records: rows,
            dead_letter_records: 0,
            bytes: written.iter().map(|o| o.bytes).sum(),
            stored_bytes: written.iter().map(|o| o.stored_bytes).sum(),
            min_time: None,
            max_time: None,
            objects: written.clone(),
            dead_letters: Vec::new(),
        };
        let body = serde_json::to_vec_pretty(&m)
            .map_err(|e| StepError::new(ErrorClass::Internal, e.to_string()))?;
        s3.put(&bucket, &manifest_key, body.into(), "application/json")
            .await
            .map_err(StepError::from_s3)?;
        cx.log.info(&format!(
            "exported {} rows of {} in {} objects ({} bytes stored); manifest s3://{bucket}/{manifest_key}",
            m.records,
            self.table.as_deref().unwrap_or("the query"),
            m.objects.len(),
            m.stored_bytes
        ));
        let mut out = StepOutput {
            rows_affected: Some(m.records as i64),
            bytes: Some(m.stored_bytes as i64),
            ..StepOutput::default()
        };
        out.outputs.insert("rows".into(), m.records.into());
        out.outputs.insert("objects".into(), m.objects.len().into());
        out.outputs.insert(
            "manifest".into(),
            format!("s3://{bucket}/{manifest_key}").into(),
        );
        out.outputs.insert(
            "manifests".into(),
            serde_json::to_value(vec![&m])
                .map_err(|e| StepError::new(ErrorClass::Internal, e.to_string()))?,
        );
        Ok(out)
    }
}

impl Step for MysqlToS3Step {
    fn kind(&self) -> &'static str {
        "mysql_to_s3"
    }

    fn run<'a>(&'a self, cx: &'a RunCx) -> BoxFuture<'a, Result<StepOutput, StepError>> {
        Box::pin(self.export(cx))
    }

    fn check(&self, cx: &mut CheckCx<'_>) {
        let f = cx.field("connection");
        cx.connection(&f, &self.connection, &[ConnectionKind::Mysql]);
        let f = cx.field("s3");
        let s3 = cx.connection(&f, &self.s3, &[ConnectionKind::S3]);
        super::kafka_to_s3::bucket_of(cx, self.bucket.as_deref(), s3);
        cx.key_prefix_field("prefix", &self.prefix);
        if let Some((_, which)) = cx.one_of(("table", &self.table), ("query", &self.query)) {
            if which == "a" {
                let t = self.table.clone().unwrap_or_default();
                cx.reads(&self.connection, &t);
            } else {
                let q = self.query.clone().unwrap_or_default();
                let origin = TextOrigin::Field(cx.field("query"));
                cx.check_sql(&origin, &q, crate::sql::Dialect::MySql, &self.connection);
            }
        }
        if self.mode == ExportMode::Incremental && self.incremental_column.is_none() {
            let f = cx.field("mode");
            cx.error_help(
                &f,
                "missing-field",
                format!("step '{}': mode 'incremental' needs `incremental_column`", cx.step),
                "name the column that records when a row changed, e.g. `incremental_column: updated_at`",
            );
        }
        if self.query.is_some() && self.key.is_none() {
            let f = cx.field("query");
            cx.error(
                &f,
                "missing-field",
                format!(
                    "step '{}': a query export needs `key` (the columns to page by)",
                    cx.step
                ),
            );
        }
        if self.chunk_size == Some(0) {
            let f = cx.field("chunk_size");
            cx.error(
                &f,
                "out-of-range",
                format!("step '{}': chunk_size must be above 0", cx.step),
            );
        }
    }
}
