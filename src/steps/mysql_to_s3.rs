//! `mysql_to_s3`: export a MySQL table or query to S3 (full snapshot or incremental), in key order.
//!
//! Exports stream in key order with keyset pagination (`WHERE key > last ORDER BY key LIMIT n`, never
//! OFFSET), from one consistent snapshot for a full export (`START TRANSACTION WITH CONSISTENT
//! SNAPSHOT`), never holding more than one object's rows: rows go through the compressor into a
//! temporary file, and each finished object is uploaded. Objects are named from the export and a part
//! number (`users.00000.jsonl.gz`), so a rerun overwrites its own objects; parts left over from a larger
//! earlier export under the same prefix are deleted. A manifest in the format of `kafka_to_s3` lists
//! the objects (`{prefix}/_manifest.json`).
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
use crate::db::mysql::MyClient;
use crate::db::DbKind;
use crate::lake::{ObjectEntry, ObjectWriter};
use crate::s3::S3Client;
use crate::steps::kafka_to_s3::{Format, Manifest};

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

/// The objects of one export, written one after the other.
struct Parts<'a> {
    s3: &'a S3Client,
    bucket: &'a str,
    prefix: &'a str,
    name: &'a str,
    format: ExportFormat,
    tmp: &'a std::path::Path,
    open: Option<ObjectWriter>,
    header: Option<Vec<u8>>,
    written: Vec<ObjectEntry>,
    rows: u64,
}

impl Parts<'_> {
    fn extension(&self) -> &'static str {
        match self.format {
            ExportFormat::JsonlGz => "jsonl.gz",
            ExportFormat::CsvGz => "csv.gz",
        }
    }

    fn key(&self, part: usize) -> String {
        format!(
            "{}/{}.{part:05}.{}",
            self.prefix,
            self.name,
            self.extension()
        )
    }

    /// Add one row (its JSON object); the finished object, when this row completed one.
    fn add(
        &mut self,
        row: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Option<ObjectWriter>, String> {
        if self.open.is_none() {
            let mut w = ObjectWriter::new(self.tmp, Format::JsonlGz, 6)
                .map_err(|e| format!("creating a temporary file: {e}"))?;
            if self.format == ExportFormat::CsvGz {
                let mut header = Vec::new();
                for (i, k) in row.keys().enumerate() {
                    if i > 0 {
                        header.push(b',');
                    }
                    csv_field(&serde_json::Value::String(k.clone()), &mut header);
                }
                w.write_line(&header, -1, None)
                    .map_err(|e| format!("writing: {e}"))?;
                self.header = Some(header);
            }
            self.open = Some(w);
        }
        let line = match self.format {
            ExportFormat::JsonlGz => serde_json::to_vec(row).map_err(|e| e.to_string())?,
            ExportFormat::CsvGz => {
                let mut l = Vec::new();
                for (i, v) in row.values().enumerate() {
                    if i > 0 {
                        l.push(b',');
                    }
                    csv_field(v, &mut l);
                }
                l
            }
        };
        let index = self.rows as i64;
        self.rows += 1;
        let Some(w) = self.open.as_mut() else {
            return Err("no open object".to_string());
        };
        w.write_line(&line, index, None)
            .map_err(|e| format!("writing: {e}"))?;
        let rows = w.records - u64::from(self.header.is_some());
        if rows >= MAX_OBJECT_ROWS || w.bytes >= MAX_OBJECT_BYTES {
            return Ok(self.open.take());
        }
        Ok(None)
    }

    async fn upload(&mut self, w: ObjectWriter) -> Result<(), StepError> {
        let key = self.key(self.written.len());
        let header = u64::from(self.header.is_some());
        let (records, bytes) = (w.records - header, w.bytes);
        let first = if header == 1 {
            w.first_offset + 1
        } else {
            w.first_offset
        };
        let last = w.last_offset;
        let (file, stored) = w
            .finish()
            .map_err(|e| StepError::external(format!("finishing {key}: {e}")))?;
        let content_type = match self.format {
            ExportFormat::JsonlGz => "application/gzip",
            ExportFormat::CsvGz => "application/gzip",
        };
        self.s3
            .put_file(self.bucket, &key, &file, content_type)
            .await
            .map_err(StepError::from_s3)?;
        self.written.push(ObjectEntry {
            key,
            records,
            bytes,
            stored_bytes: stored,
            topic: self.name.to_string(),
            partition: 0,
            first_offset: first,
            last_offset: last,
            min_time: None,
            max_time: None,
        });
        Ok(())
    }
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
        let prefix = cx
            .render("prefix", &self.prefix, None)?
            .trim_matches('/')
            .to_string();
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
                let (schema, table) = match t.split_once('.') {
                    Some((s, t)) => (serde_json::Value::from(s), t),
                    None => (serde_json::Value::Null, t.as_str()),
                };
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
            Some(t) => {
                let (schema, table) = match t.split_once('.') {
                    Some((s, t)) => (serde_json::Value::from(s), t),
                    None => (serde_json::Value::Null, t.as_str()),
                };
                let rows = db
                    .query(
                        "SELECT COLUMN_NAME AS c FROM information_schema.COLUMNS \
                         WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? \
                         AND (DATA_TYPE = 'json' OR COLUMN_NAME IN (\
                           SELECT SUBSTRING_INDEX(SUBSTRING_INDEX(CHECK_CLAUSE, '`', 2), '`', -1) \
                           FROM information_schema.CHECK_CONSTRAINTS \
                           WHERE CONSTRAINT_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? \
                           AND CHECK_CLAUSE LIKE 'json_valid(%'))",
                        &[schema.clone(), table.into(), schema, table.into()],
                        deadline,
                        cancel,
                    )
                    .await
                    .map_err(db_error)?;
                rows.iter()
                    .filter_map(|r| r.get("c").and_then(|c| c.as_str()).map(str::to_string))
                    .collect()
            }
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
        let mut parts = Parts {
            s3: &s3,
            bucket: &bucket,
            prefix: &prefix,
            name: &name,
            format: self.format,
            tmp: tmp.path(),
            open: None,
            header: None,
            written: Vec::new(),
            rows: 0,
        };
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
            let mut finished: Vec<ObjectWriter> = Vec::new();
            let mut page_last = None;
            let n = db
                .stream_rows(&sql, &params, deadline, cancel, |mut row| {
                    for c in &json_columns {
                        if let Some(v) = row.get_mut(c) {
                            if let Some(parsed) =
                                v.as_str().and_then(|s| serde_json::from_str(s).ok())
                            {
                                *v = parsed;
                            }
                        }
                    }
                    let key: Vec<serde_json::Value> = keys
                        .iter()
                        .map(|k| row.get(k).cloned().unwrap_or(serde_json::Value::Null))
                        .collect();
                    if let Some(done) = parts.add(&row)? {
                        finished.push(done);
                    }
                    page_last = Some(key);
                    Ok(())
                })
                .await
                .map_err(db_error)?;
            for w in finished {
                parts.upload(w).await?;
            }
            if n < chunk {
                break;
            }
            last = page_last;
        }
        db.statement("COMMIT", deadline, cancel)
            .await
            .map_err(db_error)?;
        if let Some(w) = parts.open.take() {
            parts.upload(w).await?;
        }

        // Parts of an earlier, larger export under this prefix would be read as part of this one.
        let stem = format!("{prefix}/{name}.");
        let keep: std::collections::HashSet<String> =
            parts.written.iter().map(|o| o.key.clone()).collect();
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
            format: parts.extension().to_string(),
            offsets: Default::default(),
            records: parts.rows,
            dead_letter_records: 0,
            bytes: parts.written.iter().map(|o| o.bytes).sum(),
            stored_bytes: parts.written.iter().map(|o| o.stored_bytes).sum(),
            min_time: None,
            max_time: None,
            objects: parts.written.clone(),
            dead_letters: Vec::new(),
        };
        let manifest_key = format!("{prefix}/_manifest.json");
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
        let f = cx.field("prefix");
        cx.template_field(&f, &self.prefix);
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
