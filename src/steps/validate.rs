//! `validate`: compare a production MySQL table with its warehouse copy and alarm on differences.
//!
//! The comparison is [`crate::diff`]: counts, then checksums of key segments (computed inside MySQL,
//! streamed and hashed for PostgreSQL), bisecting the segments that differ down to rows. A mismatch
//! beyond `tolerance` fails the step (or warns, with `on_mismatch: warn`) with a summary; the full
//! report (every differing key and both values) goes to `report` and into the step's outputs.

use serde::Deserialize;

use super::{CheckCx, ErrorClass, RunCx, Step, StepError, StepOutput, TextOrigin};
use crate::config::{ConnectionKind, OneOrMany};
use crate::db::DbKind;
use crate::diff::{DiffError, DiffSpec};

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
    /// One side as the comparison takes it: URL, table and rendered filter.
    fn side(
        &self,
        cx: &RunCx,
        name: &str,
        side: &Side,
        want: &[DbKind],
    ) -> Result<(crate::diff::Side, std::time::Duration), StepError> {
        let (kind, url, dialect, timeout) =
            super::runtime::database_target(&cx.project, &side.connection)?;
        if !want.contains(&kind) {
            return Err(StepError::config(format!(
                "{name}: connection '{}' is a {} connection; validate compares a mysql source with a postgres or redshift target",
                side.connection,
                kind.name(),
            )));
        }
        let (table, query) = match (&side.table, &side.query) {
            (Some(t), _) => (t.clone(), None),
            (None, Some(q)) => (
                format!("the {name} query"),
                Some(cx.render(&format!("{name}.query"), q, Some(dialect))?),
            ),
            (None, None) => {
                return Err(StepError::config(format!(
                    "{name}: give `table` or `query`"
                )))
            }
        };
        let filter = match &side.where_ {
            Some(w) => Some(cx.render(&format!("{name}.where"), w, Some(dialect))?),
            None => None,
        };
        Ok((
            crate::diff::Side {
                url,
                table,
                query,
                filter,
            },
            timeout,
        ))
    }

    async fn validate(&self, cx: &RunCx) -> Result<StepOutput, StepError> {
        let (source, timeout) = self.side(cx, "source", &self.source, &[DbKind::MySql])?;
        let (target, _) = self.side(
            cx,
            "target",
            &self.target,
            &[DbKind::Postgres, DbKind::Redshift],
        )?;
        let target_kind = super::runtime::database_target(&cx.project, &self.target.connection)?.0;
        let (max_rows, max_ratio) = match &self.tolerance {
            Some(t) => t.parse().map_err(StepError::config)?,
            None => (Some(0), None),
        };
        let spec = DiffSpec {
            source,
            target,
            target_kind,
            key: self.key.iter().cloned().collect(),
            columns: self.columns.clone(),
            exclude: self.exclude_columns.clone(),
            float_tolerance: self.float_tolerance.unwrap_or(0.0),
            threads: self.parallelism.unwrap_or(4) as usize,
            connect_timeout: timeout,
            segment_rows: None,
        };
        let report = crate::diff::diff(&spec, cx.deadline, &cx.cancel)
            .await
            .map_err(|e| match e {
                DiffError::Config(m) => StepError::config(m),
                DiffError::Db { .. } => {
                    StepError::external(cx.project.redactor.redact(&e.to_string()))
                }
            })?;
        let body = serde_json::to_vec_pretty(&report)
            .map_err(|e| StepError::new(ErrorClass::Internal, e.to_string()))?;
        let mut out = StepOutput {
            rows_affected: Some(report.source_rows as i64),
            bytes: Some((report.source_bytes + report.target_bytes) as i64),
            ..StepOutput::default()
        };
        if let Some(r) = &self.report {
            let at = cx.render("report", r, None)?;
            check_report_path(r, &at).map_err(StepError::config)?;
            let written = match at.strip_prefix("s3://") {
                Some(rest) => {
                    let (bucket, key) = rest.split_once('/').ok_or_else(|| {
                        StepError::config(format!("report {at}: expected s3://bucket/key"))
                    })?;
                    let conn = self.report_s3.as_deref().ok_or_else(|| {
                        StepError::config("an s3:// report needs `report_s3` (an s3 connection)")
                    })?;
                    let (s3, bucket) = cx.s3(conn, Some(bucket))?;
                    s3.put(&bucket, key, body.clone().into(), "application/json")
                        .await
                        .map_err(StepError::from_s3)?;
                    at.clone()
                }
                None => {
                    let path = cx.project.root.join(&at);
                    write_report(&path, &body).map_err(|e| {
                        StepError::external(format!("writing the report {}: {e}", path.display()))
                    })?;
                    path.display().to_string()
                }
            };
            out.outputs.insert("report".into(), written.into());
        }
        for (k, v) in [
            ("source_rows", report.source_rows),
            ("target_rows", report.target_rows),
            ("differences", report.differences),
            ("missing_in_target", report.missing_in_target.len() as u64),
            ("only_in_target", report.only_in_target.len() as u64),
            ("differing", report.differing.len() as u64),
            (
                "duplicate_keys_in_target",
                report.duplicate_keys_in_target.len() as u64,
            ),
            ("source_bytes", report.source_bytes),
            ("target_bytes", report.target_bytes),
        ] {
            out.outputs.insert(k.into(), v.into());
        }
        out.outputs.insert("equal".into(), report.equal.into());
        let allowed_rows = match (max_rows, max_ratio) {
            (Some(n), _) => n,
            (None, Some(r)) => {
                (r * report.source_rows.max(report.target_rows) as f64).floor() as u64
            }
            (None, None) => 0,
        };
        let within = report.differences <= allowed_rows;
        let what = format!(
            "{} vs {}: {}",
            self.source.table.as_deref().unwrap_or("source"),
            self.target.table.as_deref().unwrap_or("target"),
            report.summary()
        );
        if !report.equal && !within && !cx.job().alerts.is_empty() {
            // The job's alert channels get the summary (and where the full report is).
            let alert = serde_json::json!({
                "kind": "validate_mismatch",
                "job": cx.job().name,
                "step": cx.spec().id,
                "interval_start": cx.interval.start.to_rfc3339(),
                "interval_end": cx.interval.end.to_rfc3339(),
                "on_mismatch": if self.on_mismatch == OnMismatch::Warn { "warn" } else { "fail" },
                "summary": what,
                "differences": report.differences,
                "report": out.outputs.get("report").cloned().unwrap_or_default(),
            });
            match &cx.notifier {
                // Through the queue: throttled, retried, recorded, like every other alert.
                Some(n) => {
                    let a =
                        crate::alerts::Alert::new(&cx.project, "validate_mismatch", what.clone())
                            .job(&cx.job().name)
                            .step(&cx.spec().id)
                            .interval(cx.interval)
                            .run(cx.run_id, Some(cx.attempt))
                            .details(alert)
                            .link(Some(cx.log.path().display().to_string()));
                    n.raise(a).await;
                }
                None => {
                    for failure in crate::alerts::send(&cx.project, &cx.job().alerts, &alert).await
                    {
                        cx.log.warn(&failure);
                    }
                }
            }
        }
        if report.equal {
            cx.log.info(&format!(
                "equal: {} rows on both sides ({:.1} s, {} + {} bytes read)",
                report.source_rows, report.seconds, report.source_bytes, report.target_bytes
            ));
        } else if within {
            cx.log.warn(&format!(
                "within the tolerance of {allowed_rows} rows: {what}"
            ));
        } else if self.on_mismatch == OnMismatch::Warn {
            cx.log
                .warn(&format!("mismatch (on_mismatch: warn): {what}"));
        } else {
            cx.log.error(&format!("mismatch: {what}"));
            return Err(StepError::new(
                ErrorClass::Mismatch,
                format!(
                    "mismatch beyond the tolerance of {allowed_rows} rows: {what}{}",
                    out.outputs
                        .get("report")
                        .and_then(|r| r.as_str())
                        .map(|r| format!("\nfull report: {r}"))
                        .unwrap_or_default()
                ),
            ));
        }
        Ok(out)
    }

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
        cx: &'a super::RunCx,
    ) -> futures::future::BoxFuture<'a, Result<super::StepOutput, super::StepError>> {
        Box::pin(self.validate(cx))
    }

    fn check(&self, cx: &mut CheckCx<'_>) {
        // A MySQL source against a PostgreSQL or Redshift target.
        self.check_side(cx, "source", &self.source, &[ConnectionKind::Mysql]);
        self.check_side(
            cx,
            "target",
            &self.target,
            &[ConnectionKind::Postgres, ConnectionKind::Redshift],
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

/// Write the report next to nothing half-written: a temporary file renamed into place.
/// A rendered report path (`at`, from the template `source`) may not climb out of where its
/// template points: no `..` segment, and no absolute path unless the template itself is one (a
/// value such as a param cannot turn `reports/{{ params.name }}.json` into `/etc/...`). The same
/// holds for the key of an `s3://` report.
fn check_report_path(source: &str, at: &str) -> Result<(), String> {
    let (path, absolute_ok) = match at.strip_prefix("s3://") {
        Some(rest) => (rest.split_once('/').map_or("", |(_, k)| k), false),
        None => (at, source.starts_with('/')),
    };
    let climbs = path.split(['/', '\\']).any(|seg| seg == "..");
    let absolute = path.starts_with('/') || path.starts_with('\\');
    if climbs || (absolute && !absolute_ok) || path.contains('\0') {
        return Err(format!(
            "report path '{at}' leaves the place its template names ('..', an absolute path or \
             a NUL from a template value): nothing was written; keep values that name files to \
             letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

fn write_report(path: &std::path::Path, body: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::fs::write(tmp.path(), body)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_paths_stay_where_their_template_points() {
        let ok = |src: &str, at: &str| check_report_path(src, at).is_ok();
        assert!(ok("reports/{{ ds }}.json", "reports/2026-03-01.json"));
        assert!(ok(
            "/var/reports/{{ ds }}.json",
            "/var/reports/2026-03-01.json"
        ));
        assert!(ok(
            "s3://b/reports/{{ ds }}.json",
            "s3://b/reports/2026-03-01.json"
        ));
        assert!(
            ok("reports/{{ p }}.json", "reports/a..b.json"),
            "dots inside a name are fine"
        );
        for (src, at) in [
            ("reports/{{ p }}.json", "reports/../../../etc/cron.d/x.json"),
            ("reports/{{ p }}.json", "reports/..\\..\\x.json"),
            ("{{ p }}", "/etc/passwd"),
            ("/var/reports/{{ p }}.json", "/var/reports/../../etc/x.json"),
            ("s3://b/reports/{{ p }}.json", "s3://b/reports/../../x.json"),
            ("reports/{{ p }}.json", "reports/a\0b.json"),
        ] {
            let e = check_report_path(src, at).expect_err(at);
            assert!(e.contains("nothing was written"), "{e}");
        }
    }

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
