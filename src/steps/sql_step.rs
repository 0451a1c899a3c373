//! `sql`: run a templated SQL script against a database connection.
//!
//! The script comes from a file under `sql/` or an inline `query`. It is rendered per run (see
//! [`crate::template`]), split into statements and run in one transaction unless `transaction: false`.

use serde::Deserialize;

use futures::future::BoxFuture;

use super::runtime::database_target;
use super::{CheckCx, ErrorClass, RunCx, Step, StepError, StepOutput, TextOrigin};
use crate::config::ConnectionKind;
use crate::db::DbError;
use crate::sql;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlStep {
    /// A `postgres`, `redshift` or `mysql` connection.
    pub connection: String,
    /// SQL file, relative to the project root (e.g. `sql/rollup_dau.sql`).
    #[serde(default)]
    pub file: Option<String>,
    /// Inline SQL, instead of `file`.
    #[serde(default)]
    pub query: Option<String>,
    /// Run all statements in one transaction (default true). Set false for statements that cannot run
    /// inside one (Redshift VACUUM, PostgreSQL CREATE INDEX CONCURRENTLY).
    #[serde(default = "yes")]
    pub transaction: bool,
}

fn yes() -> bool {
    true
}

impl SqlStep {
    /// Render, split and run the script; one transaction unless `transaction: false`.
    async fn execute(&self, cx: &RunCx) -> Result<StepOutput, StepError> {
        let (name, source) = match (&self.file, &self.query) {
            (Some(f), _) => (f.clone(), cx.read_file(f)?),
            (None, Some(q)) => (
                format!(
                    "{} (step {} query)",
                    cx.job().source.rel.display(),
                    cx.spec().id
                ),
                q.clone(),
            ),
            (None, None) => {
                return Err(StepError::config("the step has neither `file` nor `query`"))
            }
        };
        let (_, _, dialect, _) = database_target(&cx.project, &self.connection)?;
        let rendered = cx.render(&name, &source, Some(dialect))?;
        let statements = sql::split_statements(dialect, &rendered).map_err(|e| {
            let (line, col) = sql::map_to_source(&source, &rendered, e.line, e.col);
            StepError::config(format!("{name}:{line}:{col}: {}", e.message))
        })?;
        if statements.is_empty() {
            cx.log.warn("the SQL has no statements");
            return Ok(StepOutput::default());
        }
        let (mut client, _) = cx.pooled(&self.connection).await?;
        cx.log.info(&format!(
            "running {} statement(s) from {name} on '{}'{}",
            statements.len(),
            self.connection,
            if self.transaction {
                " in one transaction"
            } else {
                ""
            }
        ));
        match client
            .run_script_guarded(
                &statements,
                self.transaction,
                cx.deadline,
                &cx.cancel,
                &|| cx.holds_lease(),
            )
            .await
        {
            Ok(outcomes) => {
                let mut per_statement = Vec::with_capacity(outcomes.len());
                for (i, (s, o)) in statements.iter().zip(&outcomes).enumerate() {
                    let (line, _) = sql::map_to_source(&source, &rendered, s.line, s.col);
                    cx.log.info(&format!(
                        "statement {} ({name}:{line}): {} row(s)",
                        i + 1,
                        o.rows_affected
                    ));
                    per_statement.push(o.rows_affected as i64);
                }
                // The step's row count is its last statement's (the INSERT of a DELETE + INSERT pair), so
                // an idempotent rerun reports the same number; every statement's count is in the outputs.
                let last = per_statement.last().copied().unwrap_or(0);
                let mut out = StepOutput {
                    rows_affected: Some(last),
                    ..StepOutput::default()
                };
                out.outputs.insert("rows_affected".into(), last.into());
                out.outputs
                    .insert("rows_per_statement".into(), per_statement.into());
                Ok(out)
            }
            Err(DbError::Statement {
                statement,
                code,
                message,
            }) => {
                let s = statements.get(statement);
                let line = s
                    .map(|s| sql::map_to_source(&source, &rendered, s.line, s.col).0)
                    .unwrap_or(1);
                let text = s
                    .map(|s| s.text.trim().lines().next().unwrap_or("").to_string())
                    .unwrap_or_default();
                let class = match &code {
                    Some(c) if c.starts_with("42") => ErrorClass::Config,
                    _ => ErrorClass::Data,
                };
                let code = code.map(|c| format!("[{c}] ")).unwrap_or_default();
                let undone = if self.transaction {
                    "; the transaction was rolled back, nothing was applied"
                } else {
                    ""
                };
                Err(StepError::new(
                    class,
                    format!(
                        "statement {} of {} ({name}:{line}) failed: {code}{message}{undone}\n    {text}",
                        statement + 1,
                        statements.len()
                    ),
                ))
            }
            Err(e) => Err(StepError::from_db(e)),
        }
    }

    /// Where the SQL text comes from.
    pub fn origin(&self, cx: &CheckCx<'_>) -> TextOrigin {
        match &self.file {
            Some(f) => TextOrigin::File(f.into()),
            None => TextOrigin::Field(cx.field("query")),
        }
    }
}

impl Step for SqlStep {
    fn kind(&self) -> &'static str {
        "sql"
    }

    fn run<'a>(&'a self, cx: &'a RunCx) -> BoxFuture<'a, Result<StepOutput, StepError>> {
        Box::pin(self.execute(cx))
    }

    fn check(&self, cx: &mut CheckCx<'_>) {
        let conn_field = cx.field("connection");
        let conn = cx.connection(
            &conn_field,
            &self.connection,
            &[
                ConnectionKind::Postgres,
                ConnectionKind::Redshift,
                ConnectionKind::Mysql,
            ],
        );
        let Some((_, which)) = cx.one_of(("file", &self.file), ("query", &self.query)) else {
            return;
        };
        let (origin, text) = if which == "a" {
            let f = self.file.clone().unwrap_or_default();
            let field = cx.field("file");
            match cx.read_file(&field, &f) {
                Some((path, text)) => (TextOrigin::File(path), text),
                None => return,
            }
        } else {
            (
                TextOrigin::Field(cx.field("query")),
                self.query.clone().unwrap_or_default(),
            )
        };
        let Some(dialect) = conn.and_then(|c| c.kind().dialect()) else {
            return;
        };
        let Some(stmts) = cx.check_sql(&origin, &text, dialect, &self.connection) else {
            return;
        };
        if stmts.is_empty() {
            let f = cx.field(if which == "a" { "file" } else { "query" });
            cx.error(
                &f,
                "empty-sql",
                format!("step '{}': the SQL has no statements", cx.step),
            );
        }
        if self.transaction {
            for s in &stmts {
                let head = s.text.trim_start().to_ascii_uppercase();
                if head.starts_with("VACUUM") || head.contains("CONCURRENTLY") {
                    let (file, pos) = cx.locate(&origin, s.line, s.col, 6);
                    cx.diags.push(
                        crate::diag::Diagnostic::error(
                            "no-transaction",
                            format!(
                                "step '{}': this statement cannot run inside a transaction",
                                cx.step
                            ),
                        )
                        .in_file(file)
                        .at(pos)
                        .help("set `transaction: false` on the step"),
                    );
                }
            }
        }
    }
}
