//! `sql`: run a templated SQL script against a database connection.
//!
//! The script comes from a file under `sql/` or an inline `query`. It is rendered per run (see
//! [`crate::template`]), split into statements and run in one transaction unless `transaction: false`.

use serde::Deserialize;

use super::{CheckCx, Step, TextOrigin};
use crate::config::ConnectionKind;

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
