//! `validate`: compare a production MySQL table with its warehouse copy and alarm on differences.
//!
//! Counts first, then checksums of key ranges computed inside each database, bisecting the ranges that
//! differ down to rows. The config is complete here; the comparison comes with the validation issue.

use serde::Deserialize;

use super::{CheckCx, Step, TextOrigin};
use crate::config::{ConnectionKind, OneOrMany};

/// One side of a comparison.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Side {
    pub connection: String,
    #[serde(default)]
    pub table: Option<String>,
    /// A SELECT instead of `table` (templated).
    #[serde(default)]
    pub query: Option<String>,
    /// A filter template (SQL expression), e.g. `updated_at < {{ interval_end | sql_literal }}`.
    #[serde(default, rename = "where")]
    pub where_: Option<String>,
}

/// Allowed differences: a number of rows (`3`) or a fraction written with `%` (`"0.1%"`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Tolerance {
    Rows(u64),
    Text(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnMismatch {
    #[default]
    Fail,
    Warn,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateStep {
    /// The production side (a `mysql` connection).
    pub source: Side,
    /// The warehouse side (a `redshift` or `postgres` connection).
    pub target: Side,
    /// Key columns (one or more).
    pub key: OneOrMany<String>,
    /// Columns to compare (default: every column both sides have).
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Columns to leave out of the comparison.
    #[serde(default)]
    pub exclude_columns: Vec<String>,
    /// Differing rows allowed before the step fails or warns (default 0).
    #[serde(default)]
    pub tolerance: Option<Tolerance>,
    /// Relative tolerance for FLOAT/DOUBLE columns (default 0: exact).
    #[serde(default)]
    pub float_tolerance: Option<f64>,
    /// `fail` (default) or `warn`.
    #[serde(default)]
    pub on_mismatch: OnMismatch,
    /// Where to write the full JSON report: an S3 URL `s3://bucket/prefix/` (with `report_s3`) or a local
    /// path (templated).
    #[serde(default)]
    pub report: Option<String>,
    /// S3 connection for an `s3://` report.
    #[serde(default)]
    pub report_s3: Option<String>,
    /// Segments compared at once (connections per side; default 4).
    #[serde(default)]
    pub parallelism: Option<u32>,
}

impl Tolerance {
    /// (max rows, max ratio).
    pub fn parse(&self) -> Result<(Option<u64>, Option<f64>), String> {
        match self {
            Tolerance::Rows(n) => Ok((Some(*n), None)),
            Tolerance::Text(t) => {
                let num = t.trim().strip_suffix('%').ok_or_else(|| {
                    format!(
                        "tolerance '{t}' must be a number of rows or a percentage like \"0.1%\""
                    )
                })?;
                let pct: f64 = num
                    .trim()
                    .parse()
                    .map_err(|_| format!("tolerance '{t}' is not a percentage"))?;
                if !(0.0..=100.0).contains(&pct) {
                    return Err(format!("tolerance '{t}' must be between 0% and 100%"));
                }
                Ok((None, Some(pct / 100.0)))
            }
        }
    }
}

impl ValidateStep {
    fn check_side(&self, cx: &mut CheckCx<'_>, name: &str, side: &Side, kinds: &[ConnectionKind]) {
        let base = cx.field(name);
        let conn = cx.connection(&base.key("connection"), &side.connection, kinds);
        let dialect = conn.and_then(|c| c.kind().dialect());
        match (&side.table, &side.query) {
            (Some(t), None) => cx.reads(&side.connection, t),
            (None, Some(q)) => {
                if let Some(d) = dialect {
                    cx.check_sql(
                        &TextOrigin::Field(base.key("query")),
                        q,
                        d,
                        &side.connection,
                    );
                }
            }
            (Some(_), Some(_)) => cx.error(
                &base.key("query"),
                "conflicting-fields",
                format!(
                    "step '{}': {name}: give either 'table' or 'query', not both",
                    cx.step
                ),
            ),
            (None, None) => cx.error(
                &base,
                "missing-field",
                format!("step '{}': {name} needs 'table' or 'query'", cx.step),
            ),
        }
        if let Some(w) = &side.where_ {
            cx.template_field(&base.key("where"), w);
        }
    }
}

impl Step for ValidateStep {
    fn kind(&self) -> &'static str {
        "validate"
    }

    fn run<'a>(
        &'a self,
        _cx: &'a super::RunCx,
    ) -> futures::future::BoxFuture<'a, Result<super::StepOutput, super::StepError>> {
        super::not_runnable_yet("validate", "the table comparison")
    }

    fn check(&self, cx: &mut CheckCx<'_>) {
        self.check_side(
            cx,
            "source",
            &self.source,
            &[ConnectionKind::Mysql, ConnectionKind::Postgres],
        );
        self.check_side(
            cx,
            "target",
            &self.target,
            &[
                ConnectionKind::Redshift,
                ConnectionKind::Postgres,
                ConnectionKind::Mysql,
            ],
        );
        if self.key.0.is_empty() {
            let f = cx.field("key");
            cx.error(
                &f,
                "empty",
                format!("step '{}': key needs at least one column", cx.step),
            );
        }
        if let Some(t) = &self.tolerance {
            if let Err(e) = t.parse() {
                let f = cx.field("tolerance");
                cx.error(&f, "bad-value", format!("step '{}': {e}", cx.step));
            }
        }
        if let Some(ft) = self.float_tolerance {
            cx.in_range("float_tolerance", ft, 0.0, 1.0);
        }
        if let Some(r) = &self.report {
            let f = cx.field("report");
            cx.template_field(&f, r);
            if r.starts_with("s3://") {
                match &self.report_s3 {
                    Some(c) => {
                        let f = cx.field("report_s3");
                        cx.connection(&f, c, &[ConnectionKind::S3]);
                    }
                    None => cx.error(
                        &f,
                        "missing-field",
                        format!(
                            "step '{}': an s3:// report needs `report_s3` (an s3 connection)",
                            cx.step
                        ),
                    ),
                }
            }
        }
        if self.parallelism == Some(0) {
            let f = cx.field("parallelism");
            cx.error(
                &f,
                "out-of-range",
                format!("step '{}': parallelism must be above 0", cx.step),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_forms() {
        assert_eq!(Tolerance::Rows(3).parse(), Ok((Some(3), None)));
        assert_eq!(
            Tolerance::Text("0.5%".into()).parse(),
            Ok((None, Some(0.005)))
        );
        assert!(Tolerance::Text("lots".into()).parse().is_err());
    }
}
