//! `mysql_to_s3`: export a MySQL table or query to S3 (full snapshot or incremental), in key order.
//!
//! Exports stream in primary-key order with keyset pagination, from one consistent snapshot for a full
//! export, and write the same manifest format as `kafka_to_s3`. The config is complete here; the export
//! itself comes with the loads issue.

use serde::Deserialize;

use super::{CheckCx, Step, TextOrigin};
use crate::config::{ConnectionKind, OneOrMany};

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

impl Step for MysqlToS3Step {
    fn kind(&self) -> &'static str {
        "mysql_to_s3"
    }

    fn run<'a>(
        &'a self,
        _cx: &'a super::RunCx,
    ) -> futures::future::BoxFuture<'a, Result<super::StepOutput, super::StepError>> {
        super::not_runnable_yet("mysql_to_s3", "the MySQL export")
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
