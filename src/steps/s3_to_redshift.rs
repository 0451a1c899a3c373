//! `s3_to_redshift`: load S3 objects (JSON lines or CSV) into a warehouse table, exactly once.
//!
//! Two dialects behind one config: `redshift` (a COPY from an S3 manifest) and `postgres` (objects streamed
//! into `COPY … FROM STDIN`). Load modes `append`, `replace_interval` and `merge`; a load-tracking table
//! written in the load's transaction makes reruns skip what is already loaded. The config is complete
//! here; loading comes with the loads issue.

use indexmap::IndexMap;
use serde::Deserialize;

use super::{CheckCx, Step};
use crate::config::{ConnectionKind, OneOrMany};

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

impl Step for S3ToRedshiftStep {
    fn kind(&self) -> &'static str {
        "s3_to_redshift"
    }

    fn run<'a>(
        &'a self,
        _cx: &'a super::RunCx,
    ) -> futures::future::BoxFuture<'a, Result<super::StepOutput, super::StepError>> {
        super::not_runnable_yet("s3_to_redshift", "the warehouse load")
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
