//! `s3_to_redshift`: load S3 objects (JSON lines or CSV) into a warehouse table, exactly once.
//!
//! Two dialects behind one config: `redshift` (a COPY from an S3 manifest) and `postgres` (objects streamed
//! into `COPY … FROM STDIN`). Load modes `append`, `replace_interval` and `merge`; a load-tracking table
//! written in the load's transaction makes reruns skip what is already loaded.
//!
//! The `postgres` dialect runs here: one transaction per load; for each object not yet loaded into the
//! target (by key and ETag, in `cranium_loaded_objects`), the object is read from S3, its JSON lines
//! are turned into COPY text rows by the `columns` map and streamed into `COPY … FROM STDIN`, and its
//! tracking row is written; `replace_interval` first deletes the interval's rows, `merge` copies into
//! a staging table, keeps the latest row per key and replaces the matching target rows. A failure rolls
//! everything back. The `redshift` dialect writes a COPY manifest and a JSONPaths file of the new
//! objects to S3 and runs the statements of `crate::redshift` in one transaction; on a failed COPY it
//! reads `SYS_LOAD_ERROR_DETAIL` into the error.

use std::collections::{HashMap, HashSet};

use futures::future::BoxFuture;
use indexmap::IndexMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Deserialize;

use super::{CheckCx, ErrorClass, RunCx, Step, StepError, StepOutput};
use crate::config::{ConnectionKind, OneOrMany};
use crate::db::pg_binary::{self, BinType};
use crate::db::postgres::PgClient;
use crate::db::DbKind;
use crate::lake::Format;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadDialect {
    Redshift,
    Postgres,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LoadMode {
    /// Insert every new object's rows (default).
    #[default]
    Append,
    /// Delete the interval's rows (by `time_column`), then insert.
    ReplaceInterval,
    /// Upsert on `key` through a staging table, keeping the latest row per key by `order_by`.
    Merge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum LoadFormat {
    #[serde(rename = "jsonl.gz")]
    JsonlGz,
    #[serde(rename = "jsonl.zst")]
    JsonlZst,
    #[serde(rename = "jsonl")]
    Jsonl,
    #[serde(rename = "csv.gz")]
    CsvGz,
}

/// A column's source: a JSON path (`$.user.id`), or a path with a cast.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ColumnSource {
    Path(String),
    Spec(ColumnSpec),
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// JSON path into the record.
    pub path: String,
    /// SQL type to cast to (e.g. `timestamptz`, `int`), or `epochsecs` / `epochmillisecs` for times.
    #[serde(default)]
    pub cast: Option<String>,
}

/// Where the objects come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadSource {
    /// Load the objects listed in the manifests written by these steps (same job) for this interval.
    #[serde(default)]
    pub manifests_from: Option<OneOrMany<String>>,
    /// Or: load every object under this prefix template (late files are picked up by the next run).
    #[serde(default)]
    pub prefix: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3ToRedshiftStep {
    /// A `redshift` or `postgres` connection.
    pub connection: String,
    /// `redshift` or `postgres` (default: from the connection's kind).
    #[serde(default)]
    pub dialect: Option<LoadDialect>,
    /// An `s3` connection.
    pub s3: String,
    #[serde(default)]
    pub bucket: Option<String>,
    pub source: LoadSource,
    /// Target table (`schema.table`).
    pub target: String,
    /// `append` (default), `replace_interval` or `merge`.
    #[serde(default)]
    pub mode: LoadMode,
    /// For `replace_interval`: the column whose value places a row in an interval.
    #[serde(default)]
    pub time_column: Option<String>,
    /// For `merge`: the key columns.
    #[serde(default)]
    pub key: Option<OneOrMany<String>>,
    /// For `merge`: keep the row with the greatest value of this column per key within a batch.
    #[serde(default)]
    pub order_by: Option<String>,
    /// Column → JSON path (or `{path, cast}`); default: JSON keys matched to column names.
    #[serde(default)]
    pub columns: IndexMap<String, ColumnSource>,
    /// Object format (default `jsonl.gz`).
    #[serde(default = "jsonl_gz")]
    pub format: LoadFormat,
    /// Lines that fail to convert that are skipped and counted instead of failing the load (default 0).
    #[serde(default)]
    pub max_errors: u64,
    /// Run ANALYZE after the load (default true).
    #[serde(default = "yes")]
    pub analyze: bool,
    /// Redshift: IAM role for COPY (default: the connection's `iam_role`).
    #[serde(default)]
    pub iam_role: Option<String>,
    /// Redshift: TIMEFORMAT (`auto`, `epochsecs`, `epochmillisecs`, or a format string).
    #[serde(default)]
    pub timeformat: Option<String>,
}

fn jsonl_gz() -> LoadFormat {
    LoadFormat::JsonlGz
}

fn yes() -> bool {
    true
}

/// `"name"` per dot-separated part.
fn quote_ident(name: &str) -> String {
    name.split('.')
        .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// `$.a.b` → the value at that path (None when missing).
fn at_path<'v>(v: &'v serde_json::Value, path: &[String]) -> Option<&'v serde_json::Value> {
    let mut cur = v;
    for seg in path {
        cur = cur.get(seg)?;
    }
    Some(cur)
}

/// One value in COPY's text format: `\N` for null, escapes for backslash, tab, newline and CR.
fn copy_text(v: &serde_json::Value, cast: Option<&str>, out: &mut Vec<u8>) -> Result<(), String> {
    let text: std::borrow::Cow<'_, str> = match (v, cast) {
        (serde_json::Value::Null, _) => {
            out.extend_from_slice(b"\\N");
            return Ok(());
        }
        (serde_json::Value::Number(n), Some(c @ ("epochsecs" | "epochmillisecs"))) => {
            let x = n.as_f64().ok_or_else(|| format!("{n} is not a number"))?;
            let ms = if c == "epochsecs" { x * 1000.0 } else { x };
            let t = chrono::DateTime::from_timestamp_millis(ms as i64)
                .ok_or_else(|| format!("{n} is out of range for {c}"))?;
            t.to_rfc3339().into()
        }
        (serde_json::Value::String(s), _) if s.contains('\0') => return Err(
            "a string holds a NUL character (\\u0000), which a warehouse text column cannot store"
                .into(),
        ),
        (serde_json::Value::String(s), _) => s.as_str().into(),
        (serde_json::Value::Bool(b), _) => if *b { "true" } else { "false" }.into(),
        (serde_json::Value::Number(n), _) => n.to_string().into(),
        (other, _) => other.to_string().into(),
    };
    crate::db::postgres::copy_escape(Some(&text), out);
    Ok(())
}

/// A JSON line's top-level fields, their values left as text until a column asks for one (no tree
/// of the whole record is built).
struct Fields<'a>(Vec<(std::borrow::Cow<'a, str>, &'a serde_json::value::RawValue)>);

impl Fields<'_> {
    /// The value at `path` (its first segment a top-level key), or None when missing.
    fn value(&self, path: &[String]) -> Result<Option<serde_json::Value>, String> {
        let Some((first, rest)) = path.split_first() else {
            return Ok(None);
        };
        let Some((_, raw)) = self.0.iter().rev().find(|(k, _)| k == first) else {
            return Ok(None);
        };
        let v: serde_json::Value =
            serde_json::from_str(raw.get()).map_err(|e| format!("not valid JSON: {e}"))?;
        Ok(if rest.is_empty() {
            Some(v)
        } else {
            at_path(&v, rest).cloned()
        })
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Key<'a>(std::borrow::Cow<'a, str>);
        impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = Key<'de>;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("a key")
                    }
                    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                        Ok(Key(std::borrow::Cow::Borrowed(s)))
                    }
                    fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                        Ok(Key(std::borrow::Cow::Owned(s.to_string())))
                    }
                }
                d.deserialize_str(V)
            }
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut m: M,
            ) -> Result<Fields<'de>, M::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(8));
                while let Some((k, v)) =
                    m.next_entry::<Key<'de>, &'de serde_json::value::RawValue>()?
                {
                    out.push((k.0, v));
                }
                Ok(Fields(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A target column and where its value comes from.
struct Mapped {
    column: String,
    path: Vec<String>,
    cast: Option<String>,
    /// The column's type, when binary COPY can write it.
    bin: Option<BinType>,
}

fn pg_error(e: crate::db::DbError) -> StepError {
    StepError::from_db(e)
}

impl S3ToRedshiftStep {
    async fn load(&self, cx: &RunCx) -> Result<StepOutput, StepError> {
        let (kind, url, _, timeout) =
            super::runtime::database_target(&cx.project, &self.connection)?;
        let dialect = self.dialect.unwrap_or(if kind == DbKind::Redshift {
            LoadDialect::Redshift
        } else {
            LoadDialect::Postgres
        });
        // csv.gz objects (as `mysql_to_s3` writes them: a header, NULL as an empty unquoted field)
        // are gzip like jsonl.gz; their rows go to the server as they are.
        let csv = self.format == LoadFormat::CsvGz;
        let format = match self.format {
            LoadFormat::JsonlGz | LoadFormat::CsvGz => Format::JsonlGz,
            LoadFormat::JsonlZst => Format::JsonlZst,
            LoadFormat::Jsonl => Format::Jsonl,
        };
        if csv && !self.columns.is_empty() {
            return Err(StepError::config(
                "`columns` maps JSON paths; a csv.gz load takes the columns its objects' headers name",
            ));
        }
        if csv && self.max_errors > 0 {
            return Err(StepError::config(
                "a csv.gz load cannot skip bad lines (PostgreSQL's COPY stops at the first); set max_errors: 0 or load jsonl.gz",
            ));
        }
        let (s3, bucket) = cx.s3(&self.s3, self.bucket.as_deref())?;
        let (deadline, cancel) = (cx.deadline, &cx.cancel);

        // The objects: from the manifests of upstream steps of this run, or under a prefix.
        let mut objects = Objects::default();
        if let Some(steps) = &self.source.manifests_from {
            for id in steps.iter() {
                let manifests = cx
                    .vars
                    .steps
                    .get(id)
                    .and_then(|s| s.get("outputs"))
                    .and_then(|o| o.get("manifests"))
                    .and_then(|m| m.as_array())
                    .ok_or_else(|| {
                        StepError::config(format!(
                            "step '{id}' has no manifests in its outputs for this interval (is it a kafka_to_s3 or mysql_to_s3 step this one runs after?)"
                        ))
                    })?;
                for m in manifests {
                    for o in m
                        .get("objects")
                        .and_then(|o| o.as_array())
                        .into_iter()
                        .flatten()
                    {
                        if let Some(k) = o.get("key").and_then(|k| k.as_str()) {
                            objects.keys.push(k.to_string());
                            if let Some(tag) = o.get("etag").and_then(|t| t.as_str()) {
                                objects
                                    .manifest_etags
                                    .insert(k.to_string(), (tag.to_string(), id.clone()));
                            }
                        }
                    }
                }
            }
        }
        if let Some(prefix) = &self.source.prefix {
            let prefix = cx.render("prefix", prefix, None)?;
            // (Checked without its slashes, listed as written: `events/` lists a folder.)
            super::runtime::key_prefix("prefix", &prefix)?;
            for o in s3
                .list(&bucket, &prefix)
                .await
                .map_err(StepError::from_s3)?
            {
                let hidden = o.key[prefix.len()..]
                    .split('/')
                    .any(|seg| seg.starts_with('_'));
                let wanted = if csv {
                    o.key.ends_with(".csv.gz")
                } else {
                    Format::of_key(&o.key) == Some(format)
                };
                if !hidden && wanted {
                    objects.keys.push(o.key);
                }
            }
        }
        objects.keys.sort();
        objects.keys.dedup();

        let mut db = PgClient::connect(kind, &url, timeout).await.map_err(|e| {
            StepError::external(
                cx.project
                    .redactor
                    .redact(&format!("connection '{}': {e}", self.connection)),
            )
        })?;
        if dialect == LoadDialect::Redshift {
            if csv {
                return Err(StepError::config(
                    "the redshift dialect loads JSON lines; export jsonl.gz for a Redshift target",
                ));
            }
            return self
                .load_redshift(cx, &s3, &bucket, format, &objects, &mut db)
                .await;
        }

        // The target and its columns.
        let (schema, table) = crate::db::postgres::schema_and_table(&self.target);
        let cols = db
            .columns(&self.target, deadline, cancel)
            .await
            .map_err(pg_error)?;
        let existing: Vec<String> = cols.iter().map(|(c, _)| c.clone()).collect();
        let bin_type = |c: &str| {
            cols.iter()
                .find(|(name, _)| name == c)
                .and_then(|(_, t)| BinType::of(t))
        };
        if existing.is_empty() {
            return Err(StepError::config(format!(
                "target table {} does not exist on connection '{}'; create it first",
                self.target, self.connection
            )));
        }
        let mut mapped = Vec::new();
        if self.columns.is_empty() {
            for c in &existing {
                mapped.push(Mapped {
                    column: c.clone(),
                    path: vec![c.clone()],
                    cast: None,
                    bin: bin_type(c),
                });
            }
        } else {
            for (c, src) in &self.columns {
                if !existing.contains(c) {
                    return Err(StepError::config(format!(
                        "column '{c}' of `columns` is not a column of {} (it has {})",
                        self.target,
                        existing.join(", ")
                    )));
                }
                let (path, cast) = match src {
                    ColumnSource::Path(p) => (p.clone(), None),
                    ColumnSource::Spec(s) => (s.path.clone(), s.cast.clone()),
                };
                let path = super::kafka_to_s3::parse_json_path(&path).map_err(StepError::config)?;
                let bin = match cast.as_deref() {
                    None | Some("epochsecs" | "epochmillisecs") => bin_type(c),
                    Some(_) => None,
                };
                mapped.push(Mapped {
                    column: c.clone(),
                    path,
                    cast,
                    bin,
                });
            }
        }
        // Binary COPY when every column's type allows it: the server parses nothing.
        let binary = !csv && mapped.iter().all(|m| m.bin.is_some());
        let mapped = std::sync::Arc::new(mapped);
        let col_list = mapped
            .iter()
            .map(|m| quote_ident(&m.column))
            .collect::<Vec<_>>()
            .join(", ");
        let target = quote_ident(&format!("{schema}.{table}"));

        // What is already loaded.
        db.statement(
            "CREATE TABLE IF NOT EXISTS cranium_loaded_objects (\
               target text NOT NULL, object_key text NOT NULL, etag text NOT NULL, \
               rows bigint NOT NULL, load_id text NOT NULL, loaded_at timestamptz NOT NULL DEFAULT now(), \
               PRIMARY KEY (target, object_key, etag))",
            false,
            deadline,
            cancel,
        )
        .await
        .or_else(|e| match &e {
            // Two loads creating it at once: one wins, the other sees a duplicate; both may go on.
            crate::db::DbError::Statement { code: Some(c), .. } if c == "23505" || c == "42P07" => {
                Ok(0)
            }
            _ => Err(pg_error(e)),
        })?;
        let done: HashSet<(String, String)> = db
            .query(
                "SELECT object_key, etag FROM cranium_loaded_objects WHERE target = $1",
                &[self.target.clone().into()],
                deadline,
                cancel,
            )
            .await
            .map_err(pg_error)?
            .iter()
            .filter_map(|r| {
                Some((
                    r.get("object_key")?.as_str()?.to_string(),
                    r.get("etag")?.as_str()?.to_string(),
                ))
            })
            .collect();

        let load_id = format!("{}.{}", cx.name(), cx.run_id);
        // Times without an offset are UTC in both COPY formats, whatever the server's zone.
        db.statement("SET TimeZone = 'UTC'", false, deadline, cancel)
            .await
            .map_err(pg_error)?;
        db.statement("BEGIN", false, deadline, cancel)
            .await
            .map_err(pg_error)?;
        let dest = match self.mode {
            LoadMode::Merge => {
                db.statement(
                    &format!("CREATE TEMP TABLE cranium_stage (LIKE {target} INCLUDING DEFAULTS) ON COMMIT DROP"),
                    true,
                    deadline,
                    cancel,
                )
                .await
                .map_err(pg_error)?;
                "cranium_stage".to_string()
            }
            LoadMode::ReplaceInterval => {
                let Some(col) = &self.time_column else {
                    return Err(StepError::config(
                        "mode 'replace_interval' needs `time_column`",
                    ));
                };
                db.statement(
                    &format!(
                        "DELETE FROM {target} WHERE {c} >= '{}' AND {c} < '{}'",
                        cx.interval.start.to_rfc3339(),
                        cx.interval.end.to_rfc3339(),
                        c = quote_ident(col)
                    ),
                    true,
                    deadline,
                    cancel,
                )
                .await
                .map_err(pg_error)?;
                target.clone()
            }
            LoadMode::Append => target.clone(),
        };
        let (mut rows, mut loaded, mut skipped) = (0u64, 0u64, 0u64);
        // Which objects to load (their ETags, a few HEADs at a time).
        let reload = self.mode == LoadMode::ReplaceInterval;
        let (todo, n_skipped) = objects_to_load(&s3, &bucket, &objects, &done, reload).await?;
        skipped += n_skipped;
        // A feeder task downloads each object and starts its decoder (a blocking thread that turns
        // lines into COPY rows) while the previous object's COPY runs, so the server never waits
        // for a download or for the first rows of the next object.
        let bad_lines = Arc::new(AtomicU64::new(0));
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<Prepared>(1);
        let feeder = AbortOnDrop(tokio::spawn(feed(
            s3.clone(),
            bucket.clone(),
            todo,
            format,
            csv,
            binary,
            mapped.clone(),
            self.max_errors,
            bad_lines.clone(),
            ready_tx,
        )));
        while let Some(Prepared {
            key,
            etag,
            rx,
            header,
            decoder,
        }) = ready_rx.recv().await
        {
            let key = &key;
            let (rx, builder) = match (rx, decoder) {
                (Ok(rx), Some(d)) => (rx, d),
                (Err(e), _) => return Err(StepError::from_s3(e)),
                (Ok(_), None) => {
                    return Err(StepError::new(ErrorClass::Internal, "decoder missing"))
                }
            };
            let statement = match &header {
                None if binary => {
                    format!("COPY {dest} ({col_list}) FROM STDIN WITH (FORMAT binary)")
                }
                None => format!("COPY {dest} ({col_list}) FROM STDIN"),
                Some(names) => {
                    if let Some(c) = names.iter().find(|c| !existing.contains(c)) {
                        return Err(StepError::new(
                            ErrorClass::Data,
                            format!(
                                "s3://{bucket}/{key}: column '{c}' of its header is not a column of {} (it has {})",
                                self.target,
                                existing.join(", ")
                            ),
                        ));
                    }
                    let list = names.iter().map(|c| quote_ident(c)).collect::<Vec<_>>();
                    format!(
                        "COPY {dest} ({}) FROM STDIN WITH (FORMAT csv, HEADER true)",
                        list.join(", ")
                    )
                }
            };
            let copied = db.copy_in(&statement, rx, deadline, cancel).await;
            let built = builder
                .await
                .map_err(|e| StepError::new(ErrorClass::Internal, format!("decoder: {e}")))?;
            let n = match (built, copied) {
                (Err(e), copied) => {
                    if copied.is_ok() {
                        let _ = db.statement("ROLLBACK", false, deadline, cancel).await;
                    }
                    return Err(StepError::new(
                        ErrorClass::Data,
                        format!(
                            "s3://{bucket}/{key}{e} (max_errors is {}; the load was rolled back)",
                            self.max_errors
                        ),
                    ));
                }
                (Ok(_), Err(e)) => {
                    return Err(StepError::new(
                        ErrorClass::Data,
                        format!("s3://{bucket}/{key}: {e} (the load was rolled back)"),
                    ))
                }
                (Ok(_), Ok(n)) => n,
            };
            db.execute(
                "INSERT INTO cranium_loaded_objects (target, object_key, etag, rows, load_id, loaded_at) \
                 VALUES ($1, $2, $3, $4, $5, now()) ON CONFLICT (target, object_key, etag) \
                 DO UPDATE SET rows = EXCLUDED.rows, load_id = EXCLUDED.load_id, loaded_at = now()",
                &[
                    self.target.clone().into(),
                    key.clone().into(),
                    etag.clone().into(),
                    (n as i64).into(),
                    load_id.clone().into(),
                ],
                deadline,
                cancel,
            )
            .await
            .map_err(pg_error)?;
            rows += n;
            loaded += 1;
        }
        drop(feeder);
        let bad = bad_lines.load(Ordering::Relaxed);
        if self.mode == LoadMode::Merge {
            let Some(keys) = &self.key else {
                return Err(StepError::config("mode 'merge' needs `key`"));
            };
            let keys: Vec<String> = keys.iter().map(|k| quote_ident(k)).collect();
            let order = match &self.order_by {
                Some(o) => format!(", {} DESC NULLS LAST", quote_ident(o)),
                None => String::new(),
            };
            let latest = format!(
                "SELECT DISTINCT ON ({k}) * FROM cranium_stage ORDER BY {k}{order}",
                k = keys.join(", ")
            );
            let matches = keys
                .iter()
                .map(|k| format!("t.{k} = s.{k}"))
                .collect::<Vec<_>>()
                .join(" AND ");
            db.statement(
                &format!("DELETE FROM {target} t USING ({latest}) s WHERE {matches}"),
                true,
                deadline,
                cancel,
            )
            .await
            .map_err(pg_error)?;
            db.statement(
                &format!("INSERT INTO {target} {latest}"),
                true,
                deadline,
                cancel,
            )
            .await
            .map_err(pg_error)?;
        }
        db.statement("COMMIT", true, deadline, cancel)
            .await
            .map_err(pg_error)?;
        if self.analyze && loaded > 0 {
            db.statement(&format!("ANALYZE {target}"), false, deadline, cancel)
                .await
                .map_err(pg_error)?;
        }
        cx.log.info(&format!(
            "loaded {rows} rows from {loaded} objects into {} ({skipped} objects already loaded, {bad} bad lines skipped)",
            self.target
        ));
        let mut out = StepOutput {
            rows_affected: Some(rows as i64),
            ..StepOutput::default()
        };
        out.outputs.insert("rows".into(), rows.into());
        out.outputs.insert("objects_loaded".into(), loaded.into());
        out.outputs.insert("objects_skipped".into(), skipped.into());
        out.outputs.insert("bad_lines".into(), bad.into());
        Ok(out)
    }
}

impl S3ToRedshiftStep {
    /// The Redshift dialect: a COPY of the new objects from a manifest written to S3, in one
    /// transaction with the mode's statements and the tracking rows (see `crate::redshift`).
    async fn load_redshift(
        &self,
        cx: &RunCx,
        s3: &crate::s3::S3Client,
        bucket: &str,
        format: Format,
        objects: &Objects,
        db: &mut PgClient,
    ) -> Result<StepOutput, StepError> {
        use crate::redshift;
        let (deadline, cancel) = (cx.deadline, &cx.cancel);
        let iam_role = self.iam_role.as_deref().ok_or_else(|| {
            StepError::config("the redshift dialect needs `iam_role` (the role COPY reads S3 with)")
        })?;
        if self.columns.is_empty() {
            return Err(StepError::config(
                "the redshift dialect needs `columns:` (column → JSON path): JSON 'auto' matches keys case-sensitively, so cranium names every path",
            ));
        }
        let mut columns = Vec::new();
        let mut paths = Vec::new();
        for (c, src) in &self.columns {
            let path = match src {
                ColumnSource::Path(p) => p.clone(),
                ColumnSource::Spec(s) => s.path.clone(),
            };
            columns.push(c.clone());
            paths.push(super::kafka_to_s3::parse_json_path(&path).map_err(StepError::config)?);
        }
        db.statement(redshift::TRACKING_DDL, false, deadline, cancel)
            .await
            .map_err(pg_error)?;
        let done: HashSet<(String, String)> = db
            .simple_rows(
                &format!(
                    "SELECT object_key, etag FROM cranium_loaded_objects WHERE target = {}",
                    redshift::literal(&self.target)
                ),
                deadline,
                cancel,
            )
            .await
            .map_err(pg_error)?
            .into_iter()
            .filter_map(|r| Some((r.first()?.clone()?, r.get(1)?.clone()?)))
            .collect();
        let reload = self.mode == LoadMode::ReplaceInterval;
        let (todo, skipped) = objects_to_load(s3, bucket, objects, &done, reload).await?;
        let entries: Vec<(String, u64)> =
            todo.iter().map(|(k, _, size)| (k.clone(), *size)).collect();
        let tracked: Vec<(String, String)> =
            todo.into_iter().map(|(k, etag, _)| (k, etag)).collect();
        if entries.is_empty() && self.mode != LoadMode::ReplaceInterval {
            cx.log.info(&format!(
                "nothing new to load into {} ({skipped} objects already loaded)",
                self.target
            ));
            let mut out = StepOutput {
                rows_affected: Some(0),
                ..StepOutput::default()
            };
            out.outputs.insert("objects_skipped".into(), skipped.into());
            return Ok(out);
        }
        let load_id = format!("{}.{}", cx.name(), cx.run_id);
        let base = format!("_cranium/loads/{}/{load_id}", self.target);
        let (manifest_key, jsonpaths_key) =
            (format!("{base}.manifest"), format!("{base}.jsonpaths"));
        s3.put(
            bucket,
            &manifest_key,
            redshift::manifest(bucket, &entries).into(),
            "application/json",
        )
        .await
        .map_err(StepError::from_s3)?;
        s3.put(
            bucket,
            &jsonpaths_key,
            redshift::jsonpaths(&paths).into(),
            "application/json",
        )
        .await
        .map_err(StepError::from_s3)?;
        let (manifest_url, jsonpaths_url) = (
            format!("s3://{bucket}/{manifest_key}"),
            format!("s3://{bucket}/{jsonpaths_key}"),
        );
        let copy = redshift::Copy {
            table: &self.target,
            columns: &columns,
            manifest_url: &manifest_url,
            jsonpaths_url: &jsonpaths_url,
            iam_role,
            compression: match format {
                Format::JsonlGz => redshift::Compression::Gzip,
                Format::JsonlZst => redshift::Compression::Zstd,
                Format::Jsonl => redshift::Compression::None,
            },
            timeformat: self.timeformat.as_deref().unwrap_or("auto"),
            max_errors: self.max_errors,
        };
        let keys: Vec<String> = self.key.iter().flat_map(|k| k.iter().cloned()).collect();
        let mode = match self.mode {
            LoadMode::Append => redshift::LoadMode::Append,
            LoadMode::ReplaceInterval => redshift::LoadMode::ReplaceInterval {
                column: self.time_column.as_deref().ok_or_else(|| {
                    StepError::config("mode 'replace_interval' needs `time_column`")
                })?,
                start: cx.interval.start.to_rfc3339(),
                end: cx.interval.end.to_rfc3339(),
            },
            LoadMode::Merge => redshift::LoadMode::Merge {
                keys: &keys,
                order_by: self.order_by.as_deref(),
            },
        };
        let statements = redshift::load_statements(&copy, &self.target, &mode, &tracked, &load_id);
        for (i, st) in statements.iter().enumerate() {
            let in_tx = i > 0;
            if let Err(e) = db.statement(st, in_tx, deadline, cancel).await {
                let mut message = format!("{e} (the load was rolled back)");
                if st.starts_with("COPY") {
                    // What Redshift recorded about the failed COPY.
                    if let Ok(rows) = db
                        .simple_rows(redshift::load_errors_sql(), deadline, cancel)
                        .await
                    {
                        for r in rows {
                            let f = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
                            message.push_str(&format!(
                                "; {} line {} column {} ({}): {} [{}]",
                                f(0),
                                f(1),
                                f(2),
                                f(3),
                                f(4).trim(),
                                f(5).trim()
                            ));
                        }
                    }
                }
                return Err(StepError::new(ErrorClass::Data, message));
            }
        }
        if self.analyze {
            db.statement(
                &format!("ANALYZE {}", redshift::ident(&self.target)),
                false,
                deadline,
                cancel,
            )
            .await
            .map_err(pg_error)?;
        }
        cx.log.info(&format!(
            "loaded {} objects into {} with COPY from {manifest_url} ({skipped} objects already loaded)",
            entries.len(),
            self.target
        ));
        let mut out = StepOutput::default();
        out.outputs
            .insert("objects_loaded".into(), entries.len().into());
        out.outputs.insert("objects_skipped".into(), skipped.into());
        out.outputs.insert("manifest".into(), manifest_url.into());
        Ok(out)
    }
}

/// An object downloaded, with its decoder started: COPY rows arrive on `rx`.
struct Prepared {
    key: String,
    etag: String,
    rx: Result<tokio::sync::mpsc::Receiver<bytes::Bytes>, crate::s3::S3Error>,
    /// A csv object's header (its column names).
    header: Option<Vec<String>>,
    decoder: Option<tokio::task::JoinHandle<Result<u64, String>>>,
}

/// Aborts the task when the load stops early.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Download the objects one after the other and start each one's decoder; hand them over in order.
#[allow(clippy::too_many_arguments)]
async fn feed(
    s3: crate::s3::S3Client,
    bucket: String,
    todo: Vec<(String, String, u64)>,
    format: Format,
    csv: bool,
    binary: bool,
    mapped: Arc<Vec<Mapped>>,
    max_errors: u64,
    bad: Arc<AtomicU64>,
    ready: tokio::sync::mpsc::Sender<Prepared>,
) {
    for (key, etag, _) in todo {
        let prepared = match s3.get(&bucket, &key).await {
            Err(e) => Prepared {
                key,
                etag,
                rx: Err(e),
                header: None,
                decoder: None,
            },
            Ok(data) => {
                let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
                let (mapped, bad) = (mapped.clone(), bad.clone());
                let header = if csv {
                    Some(csv_header(format, &data))
                } else {
                    None
                };
                let decoder = tokio::task::spawn_blocking(move || {
                    if csv {
                        copy_raw(format, &data, &tx)
                    } else {
                        copy_rows(format, binary, &data, &mapped, max_errors, &bad, &tx)
                    }
                });
                Prepared {
                    key,
                    etag,
                    rx: Ok(rx),
                    header,
                    decoder: Some(decoder),
                }
            }
        };
        let failed = prepared.rx.is_err();
        if ready.send(prepared).await.is_err() || failed {
            return;
        }
    }
}

/// The column names in a csv object's header line (quoted or bare, comma-separated).
fn csv_header(format: Format, data: &[u8]) -> Vec<String> {
    use std::io::BufRead;
    let mut line = Vec::new();
    if let Ok(mut r) = crate::lake::reader(format, data) {
        let _ = r.read_until(b'\n', &mut line);
    }
    let text = String::from_utf8_lossy(&line);
    let (mut names, mut cur, mut quoted, mut chars) = (
        Vec::new(),
        String::new(),
        false,
        text.trim_end_matches(['\r', '\n']).chars().peekable(),
    );
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => names.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    names.push(cur);
    names
}

/// The longest JSON line a load reads (Redshift's rows are at most 4 MB).
const MAX_LINE: usize = 16 << 20;

/// What a failed read of an object's bytes means, for the person reading the error.
fn unreadable(format: Format, e: &std::io::Error) -> String {
    match format {
        Format::Jsonl => format!("cannot read the object: {e}"),
        _ => format!(
            "cannot decompress the object ({e}): it is truncated or corrupt; write it again \
             (rerun the step that wrote it) or remove it"
        ),
    }
}

/// Send an object's decompressed bytes as they are (a csv object: the server parses it).
fn copy_raw(
    format: Format,
    data: &[u8],
    tx: &tokio::sync::mpsc::Sender<bytes::Bytes>,
) -> Result<u64, String> {
    use std::io::Read;
    const CHUNK: usize = 1 << 20;
    let mut reader =
        crate::lake::reader(format, data).map_err(|e| format!(": {}", unreadable(format, &e)))?;
    let mut rows = 0u64;
    loop {
        let mut buf = vec![0u8; CHUNK];
        let n = reader
            .read(&mut buf)
            .map_err(|e| format!(": {}", unreadable(format, &e)))?;
        if n == 0 {
            return Ok(rows);
        }
        buf.truncate(n);
        rows += buf.iter().filter(|b| **b == b'\n').count() as u64;
        if tx.blocking_send(bytes::Bytes::from(buf)).is_err() {
            return Ok(rows);
        }
    }
}

/// Turn an object's JSON lines into COPY text rows, sent on `tx` in chunks of about 1 MiB, reading
/// the object as it decompresses. Bad lines are counted in `bad` (over all objects of the load); past
/// `allowed` the error (` line N: reason`). Returns the rows sent.
fn copy_rows(
    format: Format,
    binary: bool,
    data: &[u8],
    mapped: &[Mapped],
    allowed: u64,
    bad: &AtomicU64,
    tx: &tokio::sync::mpsc::Sender<bytes::Bytes>,
) -> Result<u64, String> {
    use std::io::{BufRead, Read};
    const CHUNK: usize = 1 << 20;
    let mut reader =
        crate::lake::reader(format, data).map_err(|e| format!(": {}", unreadable(format, &e)))?;
    let mut buf = Vec::with_capacity(CHUNK + 4096);
    if binary {
        buf.extend_from_slice(pg_binary::HEADER);
    }
    let mut line = Vec::with_capacity(1024);
    let (mut n, mut rows) = (0u64, 0u64);
    loop {
        line.clear();
        // At most MAX_LINE bytes of one line are read: a huge line is an error, not a huge buffer.
        let read = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| format!(" line {}: {}", n + 1, unreadable(format, &e)))?;
        if read == 0 {
            break;
        }
        n += 1;
        if line.len() > MAX_LINE {
            return Err(format!(
                " line {n}: the line is longer than {} MiB (a warehouse row is at most 4 MB): \
                 split the record, or drop it upstream",
                MAX_LINE >> 20
            ));
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if text.is_empty() {
            continue;
        }
        let start = buf.len();
        let row = serde_json::from_slice::<Fields<'_>>(text)
            .map_err(|e| format!("not valid JSON: {e}"))
            .and_then(|fields| {
                if binary {
                    pg_binary::row_start(mapped.len() as u16, &mut buf);
                }
                for (i, m) in mapped.iter().enumerate() {
                    let owned = fields.value(&m.path)?;
                    let val = owned.as_ref().unwrap_or(&serde_json::Value::Null);
                    match m.bin {
                        Some(ty) if binary => {
                            pg_binary::write_value(ty, val, m.cast.as_deref(), &mut buf)
                        }
                        _ => {
                            if i > 0 {
                                buf.push(b'\t');
                            }
                            copy_text(val, m.cast.as_deref(), &mut buf)
                        }
                    }
                    .map_err(|e| format!("column {}: {e}", m.column))?;
                }
                if !binary {
                    buf.push(b'\n');
                }
                Ok(())
            });
        match row {
            Ok(()) => rows += 1,
            Err(e) => {
                buf.truncate(start);
                if bad.fetch_add(1, Ordering::Relaxed) + 1 > allowed {
                    return Err(format!(" line {n}: {e}"));
                }
            }
        }
        if buf.len() >= CHUNK {
            let chunk = bytes::Bytes::from(std::mem::replace(
                &mut buf,
                Vec::with_capacity(CHUNK + 4096),
            ));
            if tx.blocking_send(chunk).is_err() {
                return Ok(rows); // the COPY stopped; its error is the one to report
            }
        }
    }
    if binary {
        buf.extend_from_slice(pg_binary::TRAILER);
    }
    if !buf.is_empty() {
        let _ = tx.blocking_send(bytes::Bytes::from(buf));
    }
    Ok(rows)
}

/// [`copy_rows`] as a load runs it, for the fuzz target `fuzz/fuzz_targets/jsonl.rs`: `columns` are
/// (column, JSON path as written in a job file, cast, binary type); returns the rows and the COPY
/// stream a load would send (text, or binary when `binary`), or the load's error.
#[doc(hidden)]
pub fn copy_rows_for_fuzzing(
    format: Format,
    binary: bool,
    data: &[u8],
    columns: &[(&str, &str, Option<&str>, Option<BinType>)],
    allowed: u64,
) -> Result<(u64, Vec<u8>), String> {
    let mut mapped = Vec::new();
    for (column, path, cast, bin) in columns {
        mapped.push(Mapped {
            column: column.to_string(),
            path: super::kafka_to_s3::parse_json_path(path)?,
            cast: cast.map(str::to_string),
            bin: *bin,
        });
    }
    // Every chunk is kept: the fuzzer's inputs are far below the channel's capacity in chunks.
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let bad = AtomicU64::new(0);
    let rows = copy_rows(format, binary, data, &mapped, allowed, &bad, &tx)?;
    drop(tx);
    let mut out = Vec::new();
    while let Ok(chunk) = rx.try_recv() {
        out.extend_from_slice(&chunk);
    }
    Ok((rows, out))
}

/// The objects a load considers, sorted, and the ETag each manifest recorded for its objects
/// (with the step that wrote it).
#[derive(Debug, Default)]
struct Objects {
    keys: Vec<String>,
    manifest_etags: HashMap<String, (String, String)>,
}

/// The objects still to load, with their ETags and sizes (HEADs 8 at a time), and how many were
/// skipped as already loaded (never for `replace_interval`, which reloads its interval). An object
/// whose ETag is not the one its manifest recorded is an error: it changed after the
/// step that wrote it finished.
async fn objects_to_load(
    s3: &crate::s3::S3Client,
    bucket: &str,
    objects: &Objects,
    done: &HashSet<(String, String)>,
    reload: bool,
) -> Result<(Vec<(String, String, u64)>, u64), StepError> {
    use futures::StreamExt;
    let heads: Vec<_> = futures::stream::iter(objects.keys.iter().cloned())
        .map(|key| async move {
            let h = s3.head(bucket, &key).await;
            (key, h)
        })
        .buffered(8)
        .collect()
        .await;
    let (mut todo, mut skipped) = (Vec::new(), 0u64);
    for (key, head) in heads {
        let Some(info) = head.map_err(StepError::from_s3)? else {
            return Err(StepError::new(
                ErrorClass::Data,
                format!("s3://{bucket}/{key} is listed in a manifest but does not exist"),
            ));
        };
        if let Some((tag, step)) = objects.manifest_etags.get(&key) {
            if !info.etag.is_empty() && *tag != info.etag {
                return Err(StepError::new(
                    ErrorClass::Data,
                    format!(
                        "s3://{bucket}/{key} changed after its manifest was written (ETag {tag} \
                         in the manifest of step '{step}', {} now): nothing was loaded; rerun \
                         '{step}' for this interval so that its manifest lists the object as it \
                         is (cranium clear --steps {step} --downstream), or restore the object",
                        info.etag
                    ),
                ));
            }
        }
        if !reload && done.contains(&(key.clone(), info.etag.clone())) {
            skipped += 1;
            continue;
        }
        todo.push((key, info.etag, info.size));
    }
    Ok((todo, skipped))
}

impl Step for S3ToRedshiftStep {
    fn kind(&self) -> &'static str {
        "s3_to_redshift"
    }

    fn run<'a>(&'a self, cx: &'a RunCx) -> BoxFuture<'a, Result<StepOutput, StepError>> {
        Box::pin(self.load(cx))
    }

    fn check(&self, cx: &mut CheckCx<'_>) {
        let f = cx.field("connection");
        let conn = cx.connection(
            &f,
            &self.connection,
            &[ConnectionKind::Redshift, ConnectionKind::Postgres],
        );
        let f = cx.field("s3");
        let s3 = cx.connection(&f, &self.s3, &[ConnectionKind::S3]);
        super::kafka_to_s3::bucket_of(cx, self.bucket.as_deref(), s3);
        cx.writes(&self.connection, &self.target);

        let src = cx.field("source");
        match (&self.source.manifests_from, &self.source.prefix) {
            (Some(steps), None) => {
                for (i, s) in steps.iter().enumerate() {
                    if !cx.sibling_steps.iter().any(|x| x == s) {
                        let f = if steps.0.len() == 1 {
                            src.key("manifests_from")
                        } else {
                            src.key("manifests_from").index(i)
                        };
                        let sib: Vec<&str> = cx.sibling_steps.iter().map(|s| s.as_str()).collect();
                        cx.error(
                            &f,
                            "unknown-step",
                            format!(
                                "step '{}': manifests_from names unknown step '{s}'{}",
                                cx.step,
                                crate::diag::did_you_mean(s, sib)
                            ),
                        );
                    }
                }
            }
            (None, Some(p)) => {
                cx.template_field(&src.key("prefix"), p);
            }
            (Some(_), Some(_)) => cx.error(
                &src,
                "conflicting-fields",
                format!(
                    "step '{}': source takes either 'manifests_from' or 'prefix', not both",
                    cx.step
                ),
            ),
            (None, None) => cx.error(
                &src,
                "missing-field",
                format!(
                    "step '{}': source needs 'manifests_from' or 'prefix'",
                    cx.step
                ),
            ),
        }

        match self.mode {
            LoadMode::ReplaceInterval if self.time_column.is_none() => {
                let f = cx.field("mode");
                cx.error_help(&f, "missing-field", format!("step '{}': mode 'replace_interval' needs `time_column`", cx.step), "name the column that places a row in an interval, e.g. `time_column: event_time`");
            }
            LoadMode::Merge if self.key.as_ref().is_none_or(|k| k.0.is_empty()) => {
                let f = cx.field("mode");
                cx.error(
                    &f,
                    "missing-field",
                    format!(
                        "step '{}': mode 'merge' needs `key` (the columns rows are matched on)",
                        cx.step
                    ),
                );
            }
            _ => {}
        }

        for (col, source) in &self.columns {
            let path = match source {
                ColumnSource::Path(p) => p,
                ColumnSource::Spec(s) => &s.path,
            };
            if let Err(e) = super::kafka_to_s3::parse_json_path(path) {
                let f = cx.field("columns").key(col.as_str());
                cx.error(
                    &f,
                    "bad-value",
                    format!("step '{}': column '{col}': {e}", cx.step),
                );
            }
        }
        let dialect = self.dialect.or(match conn.map(|c| c.kind()) {
            Some(ConnectionKind::Redshift) => Some(LoadDialect::Redshift),
            Some(ConnectionKind::Postgres) => Some(LoadDialect::Postgres),
            _ => None,
        });
        if dialect == Some(LoadDialect::Redshift) {
            let role = self.iam_role.clone().or_else(|| match conn {
                Some(crate::config::Connection::Database(_, d)) => d.iam_role.clone(),
                _ => None,
            });
            if role.is_none() {
                let f = cx.field("connection");
                cx.error_help(
                    &f,
                    "missing-field",
                    format!("step '{}': a Redshift COPY needs an IAM role", cx.step),
                    "set `iam_role` on the step or on the redshift connection",
                );
            }
            if self.format == LoadFormat::Jsonl && self.columns.is_empty() {
                // JSON 'auto' is case-sensitive against lower-case columns; the loader generates a JSONPaths
                // file when columns are mapped, so say so once.
                let f = cx.field("columns");
                cx.warning(&f, "redshift-json-auto", format!("step '{}': without `columns`, Redshift matches JSON keys to columns with JSON 'auto ignorecase'", cx.step));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gz(text: &str) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(text.as_bytes()).expect("gz");
        e.finish().expect("gz")
    }

    #[test]
    fn fields_read_top_level_keys_escaped_keys_nested_paths_and_the_last_duplicate() {
        let line = br#"{"id":1,"us\u0065r":{"name":"Zo\u00eb"},"id":2,"n":null}"#;
        let f: Fields<'_> = serde_json::from_slice(line).expect("fields");
        let get = |p: &[&str]| {
            let path: Vec<String> = p.iter().map(|s| s.to_string()).collect();
            f.value(&path).expect("value")
        };
        assert_eq!(get(&["id"]), Some(serde_json::json!(2)));
        assert_eq!(get(&["user", "name"]), Some(serde_json::json!("Zoë")));
        assert_eq!(get(&["n"]), Some(serde_json::Value::Null));
        assert_eq!(get(&["missing"]), None);
        assert!(serde_json::from_slice::<Fields<'_>>(b"[1,2]").is_err());
        assert!(serde_json::from_slice::<Fields<'_>>(b"{\"a\":").is_err());
    }

    #[test]
    fn a_csv_header_names_its_columns_quoted_or_bare() {
        let data = gz("\"id\",\"a \"\"b\"\"\",c,\"d,e\"\r\n1,2,3,4\n");
        assert_eq!(
            csv_header(Format::JsonlGz, &data),
            vec!["id", "a \"b\"", "c", "d,e"]
        );
    }

    #[test]
    fn copy_text_escapes_and_casts() {
        let mut out = Vec::new();
        copy_text(&serde_json::json!("a\tb\\c\nd"), None, &mut out).expect("text");
        assert_eq!(out, b"a\\tb\\\\c\\nd");
        out.clear();
        copy_text(&serde_json::Value::Null, None, &mut out).expect("null");
        assert_eq!(out, b"\\N");
        out.clear();
        copy_text(
            &serde_json::json!(1_700_000_000),
            Some("epochsecs"),
            &mut out,
        )
        .expect("secs");
        assert_eq!(out, b"2023-11-14T22:13:20+00:00");
    }

    #[test]
    fn bad_lines_count_across_objects_and_stop_past_the_allowance() {
        let mapped = vec![Mapped {
            column: "id".into(),
            path: vec!["id".into()],
            cast: None,
            bin: None,
        }];
        let data = gz("{\"id\":1}\nnot json\n{\"id\":2}\n");
        let bad = AtomicU64::new(0);
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        assert_eq!(
            copy_rows(Format::JsonlGz, false, &data, &mapped, 1, &bad, &tx),
            Ok(2)
        );
        assert_eq!(rx.try_recv().ok().as_deref(), Some(&b"1\n2\n"[..]));
        // A second object with one more bad line: over the allowance of 1 for the whole load.
        let err = copy_rows(Format::JsonlGz, false, &data, &mapped, 1, &bad, &tx).unwrap_err();
        assert!(err.starts_with(" line 2: not valid JSON"), "{err}");
    }
}
