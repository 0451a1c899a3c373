//! The closed set of step kinds.
//!
//! Each kind lives in its own file with the same shape: a plain serde config struct (unknown fields
//! denied, every field documented) and an implementation of [`Step`]. [`KINDS`] is the one explicit list
//! of kinds; adding a kind means adding a file and a line there. `check` validates a step's references
//! (connections, files), renders its templates with a sample interval, parses its SQL and reports the
//! tables it reads and writes (lineage). Running steps is added by the engine on the same trait.

use std::fmt;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;

use crate::config::{Connection, ConnectionKind};
use crate::diag::{did_you_mean, Diagnostic, Pos};
use crate::sql::{self, Dialect};
use crate::template::{Renderer, TemplateVars};
use crate::yaml::{SourceFile, YamlPath};

pub mod kafka_to_s3;
pub mod lua;
pub mod mysql_to_s3;
pub mod noop;
pub mod runtime;
pub mod s3_to_redshift;
pub mod sql_step;
pub mod validate;

pub use runtime::{ErrorClass, PartitionLag, RunCx, StepError, StepOutput};

/// What every step kind implements.
pub trait Step: fmt::Debug + Send + Sync {
    /// The kind's name as written in job files.
    fn kind(&self) -> &'static str;
    /// Validate references, templates and SQL, and record lineage. Pure apart from reading project files.
    fn check(&self, cx: &mut CheckCx<'_>);
    /// Run one attempt for one interval. Honours `cx.deadline` and `cx.cancel`.
    fn run<'a>(
        &'a self,
        cx: &'a RunCx,
    ) -> futures::future::BoxFuture<'a, Result<StepOutput, StepError>>;
}

/// The error of a kind whose execution arrives with a later release.
pub fn not_runnable_yet<'a>(
    kind: &'static str,
    what: &'static str,
) -> futures::future::BoxFuture<'a, Result<StepOutput, StepError>> {
    Box::pin(async move {
        Err(StepError::config(format!(
            "{kind} steps are checked but cannot run yet in this version of cranium ({what}); run the job with --steps to select the steps that can"
        )))
    })
}

/// A step's kind-specific configuration.
#[derive(Debug, Clone)]
pub enum StepConfig {
    Sql(sql_step::SqlStep),
    Lua(lua::LuaStep),
    KafkaToS3(kafka_to_s3::KafkaToS3Step),
    MysqlToS3(mysql_to_s3::MysqlToS3Step),
    S3ToRedshift(s3_to_redshift::S3ToRedshiftStep),
    Validate(validate::ValidateStep),
    Noop(noop::NoopStep),
}

impl StepConfig {
    /// The connections the step works on, the one it writes to first (a load's warehouse, an
    /// export's database, an extraction's broker): the daemon's default pool is the first of them
    /// that names a pool.
    pub fn connections(&self) -> Vec<&str> {
        match self {
            StepConfig::Sql(s) => vec![s.connection.as_str()],
            StepConfig::Lua(s) => s.connections.iter().flatten().map(String::as_str).collect(),
            StepConfig::KafkaToS3(s) => vec![s.connection.as_str(), s.s3.as_str()],
            StepConfig::MysqlToS3(s) => vec![s.connection.as_str(), s.s3.as_str()],
            StepConfig::S3ToRedshift(s) => vec![s.connection.as_str(), s.s3.as_str()],
            StepConfig::Validate(s) => {
                vec![s.target.connection.as_str(), s.source.connection.as_str()]
            }
            StepConfig::Noop(_) => Vec::new(),
        }
    }

    pub fn as_step(&self) -> &dyn Step {
        match self {
            StepConfig::Sql(s) => s,
            StepConfig::Lua(s) => s,
            StepConfig::KafkaToS3(s) => s,
            StepConfig::MysqlToS3(s) => s,
            StepConfig::S3ToRedshift(s) => s,
            StepConfig::Validate(s) => s,
            StepConfig::Noop(s) => s,
        }
    }
}

type Parse =
    fn(serde_yaml::Value, &SourceFile, &YamlPath, &mut Vec<Diagnostic>) -> Option<StepConfig>;

fn parse_as<T: serde::de::DeserializeOwned>(
    v: serde_yaml::Value,
    f: &SourceFile,
    p: &YamlPath,
    out: &mut Vec<Diagnostic>,
    wrap: fn(T) -> StepConfig,
) -> Option<StepConfig> {
    crate::yaml::deserialize::<T>(v, f, p, &crate::config::StepCommon::FIELDS, out).map(wrap)
}

/// Every step kind: its name and how to read its config.
pub const KINDS: &[(&str, Parse)] = &[
    ("sql", |v, f, p, o| parse_as(v, f, p, o, StepConfig::Sql)),
    ("lua", |v, f, p, o| parse_as(v, f, p, o, StepConfig::Lua)),
    ("kafka_to_s3", |v, f, p, o| {
        parse_as(v, f, p, o, StepConfig::KafkaToS3)
    }),
    ("mysql_to_s3", |v, f, p, o| {
        parse_as(v, f, p, o, StepConfig::MysqlToS3)
    }),
    ("s3_to_redshift", |v, f, p, o| {
        parse_as(v, f, p, o, StepConfig::S3ToRedshift)
    }),
    ("validate", |v, f, p, o| {
        parse_as(v, f, p, o, StepConfig::Validate)
    }),
    ("noop", |v, f, p, o| parse_as(v, f, p, o, StepConfig::Noop)),
];

/// Read the kind-specific part of a step.
pub fn parse_kind(
    kind: &str,
    value: serde_yaml::Value,
    file: &SourceFile,
    path: &YamlPath,
    out: &mut Vec<Diagnostic>,
) -> Option<StepConfig> {
    match KINDS.iter().find(|(k, _)| *k == kind) {
        Some((_, parse)) => parse(value, file, path, out),
        None => {
            out.push(
                file.error_at_value(
                    &path.key("kind"),
                    "unknown-kind",
                    format!(
                        "unknown step kind '{kind}'{}",
                        did_you_mean(kind, KINDS.iter().map(|(k, _)| *k))
                    ),
                )
                .help(format!(
                    "step kinds: {}",
                    KINDS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
                )),
            );
            None
        }
    }
}

/// A table that a step reads or writes, on a named connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableRef {
    pub connection: String,
    pub table: String,
}

/// What a step reads and writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepLineage {
    pub reads: Vec<TableRef>,
    pub writes: Vec<TableRef>,
}

/// Where a template's text came from, to map errors back to the file the user edits.
#[derive(Debug, Clone)]
pub enum TextOrigin {
    /// A whole file (SQL, Lua), relative to the project root.
    File(PathBuf),
    /// A string value inside the job file at this YAML path.
    Field(YamlPath),
}

/// Everything a step's `check` needs, and where its findings go.
pub struct CheckCx<'a> {
    pub root: &'a Path,
    pub connections: &'a IndexMap<String, Connection>,
    pub file: &'a SourceFile,
    /// The step's path in the job file (`steps[3]`).
    pub path: YamlPath,
    pub job: &'a str,
    /// `job.step`, as messages name the step.
    pub step: String,
    /// Ids of the steps in the same job (for references like `from_steps`).
    pub sibling_steps: Vec<String>,
    pub vars: TemplateVars,
    pub renderer: &'a Renderer,
    pub diags: Vec<Diagnostic>,
    /// Files read while checking (SQL, Lua), so diagnostics can show their lines.
    pub lineage: StepLineage,
}

impl<'a> CheckCx<'a> {
    /// A field of this step.
    pub fn field(&self, name: &str) -> YamlPath {
        self.path.key(name)
    }

    pub fn error(&mut self, field: &YamlPath, code: &'static str, msg: impl Into<String>) {
        let d = self.file.error_at_value(field, code, msg);
        self.diags.push(d);
    }

    pub fn error_help(
        &mut self,
        field: &YamlPath,
        code: &'static str,
        msg: impl Into<String>,
        help: impl Into<String>,
    ) {
        let d = self.file.error_at_value(field, code, msg).help(help);
        self.diags.push(d);
    }

    pub fn warning(&mut self, field: &YamlPath, code: &'static str, msg: impl Into<String>) {
        let mut d = self.file.error_at_value(field, code, msg);
        d.severity = crate::diag::Severity::Warning;
        self.diags.push(d);
    }

    /// Look up connection `name` (written at `field`) and check that it is one of `allowed`.
    pub fn connection(
        &mut self,
        field: &YamlPath,
        name: &str,
        allowed: &[ConnectionKind],
    ) -> Option<&'a Connection> {
        let Some(conn) = self.connections.get(name) else {
            let names: Vec<&str> = self.connections.keys().map(|s| s.as_str()).collect();
            let msg = format!(
                "step '{}': unknown connection '{name}'{}",
                self.step,
                did_you_mean(name, names.iter().copied())
            );
            let help = if names.is_empty() {
                "define connections under `connections:` in cranium.yaml".to_string()
            } else {
                format!("connections in cranium.yaml: {}", names.join(", "))
            };
            self.error_help(field, "unknown-connection", msg, help);
            return None;
        };
        if !allowed.contains(&conn.kind()) {
            let kinds: Vec<&str> = allowed.iter().map(|k| k.name()).collect();
            self.error(
                field,
                "connection-kind",
                format!(
                    "step '{}': connection '{name}' is of kind {}, but this field needs {}",
                    self.step,
                    conn.kind().name(),
                    kinds.join(" or ")
                ),
            );
            return None;
        }
        Some(conn)
    }

    /// Exactly one of two alternative fields (`file` / `query`).
    pub fn one_of<'v, T>(
        &mut self,
        a: (&str, &'v Option<T>),
        b: (&str, &'v Option<T>),
    ) -> Option<(&'v T, &'static str)> {
        match (a.1, b.1) {
            (Some(x), None) => Some((x, "a")),
            (None, Some(y)) => Some((y, "b")),
            (Some(_), Some(_)) => {
                let f = self.field(b.0);
                self.error(
                    &f,
                    "conflicting-fields",
                    format!(
                        "step '{}': give either '{}' or '{}', not both",
                        self.step, a.0, b.0
                    ),
                );
                None
            }
            (None, None) => {
                let p = self.path.key("id");
                let d = self.file.error_at_key(
                    &p,
                    "missing-field",
                    format!("step '{}': needs '{}' or '{}'", self.step, a.0, b.0),
                );
                self.diags.push(d);
                None
            }
        }
    }

    /// Read a project file named at `field` (relative to the root).
    pub fn read_file(&mut self, field: &YamlPath, rel: &str) -> Option<(PathBuf, String)> {
        let rel_path = PathBuf::from(rel);
        if rel_path.is_absolute()
            || rel_path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            self.error(field, "bad-path", format!("step '{}': path '{rel}' must be relative to the project root and stay inside it", self.step));
            return None;
        }
        match std::fs::read_to_string(self.root.join(&rel_path)) {
            Ok(text) => Some((rel_path, text)),
            Err(e) => {
                let hint = if e.kind() == std::io::ErrorKind::NotFound {
                    "file not found"
                } else {
                    "cannot read it"
                };
                self.error_help(
                    field,
                    "missing-file",
                    format!("step '{}': {hint}: {rel} ({e})", self.step),
                    "paths in job files are relative to the project root (the folder with cranium.yaml)",
                );
                None
            }
        }
    }

    /// Where line/col of text from `origin` is in the files the user edits.
    pub fn locate(
        &self,
        origin: &TextOrigin,
        line: usize,
        col: usize,
        len: usize,
    ) -> (PathBuf, Option<Pos>) {
        match origin {
            TextOrigin::File(p) => (p.clone(), Some(Pos::new(line, col, len))),
            TextOrigin::Field(path) => {
                let pos = self
                    .file
                    .string_position(path, line, col)
                    .map(|(l, c)| Pos::new(l, c, len));
                (self.file.rel.clone(), pos)
            }
        }
    }

    /// Render a template; on error report it at its place and return None.
    pub fn render(
        &mut self,
        origin: &TextOrigin,
        source: &str,
        dialect: Option<Dialect>,
    ) -> Option<String> {
        let name = match origin {
            TextOrigin::File(p) => p.display().to_string(),
            TextOrigin::Field(p) => format!("{}:{}", self.file.rel.display(), p),
        };
        let vars = self.vars_for(source);
        match self.renderer.render(&name, source, &vars, dialect) {
            Ok(s) => Some(s),
            Err(e) => {
                // For "`params.x` is undefined" point at the expression itself, also when it sits
                // inside a filter call (minijinja reports the filter's position then).
                let mut col = e.col.unwrap_or(1);
                let mut len = 1;
                if let (Some(line), Some(name)) = (e.line, undefined_name(&e.message)) {
                    if let Some(text) = source.lines().nth(line - 1) {
                        if let Some(b) = text.find(name) {
                            col = text[..b].chars().count() + 1;
                            len = name.chars().count();
                        }
                    }
                }
                let (file, pos) = self.locate(origin, e.line.unwrap_or(1), col, len);
                let pos = if e.line.is_none() { None } else { pos };
                self.diags.push(
                    Diagnostic::error(
                        "template",
                        format!("step '{}': template error: {}", self.step, e.message),
                    )
                    .in_file(file)
                    .at(pos),
                );
                None
            }
        }
    }

    /// Template variables for checking `source`: upstream outputs do not exist yet, so every
    /// `steps.<id>.outputs.<name>` the source mentions gets a placeholder; one naming a step that is not
    /// upstream is reported.
    fn vars_for(&mut self, source: &str) -> TemplateVars {
        static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
        let re = RE.get_or_init(|| {
            regex::Regex::new(r"steps\.([A-Za-z0-9_-]+)\.outputs\.([A-Za-z0-9_]+)")
                .unwrap_or_else(|_| unreachable!())
        });
        if !source.contains("steps.") {
            return self.vars.clone();
        }
        let mut vars = self.vars.clone();
        for c in re.captures_iter(source) {
            let (step, name) = (&c[1], &c[2]);
            if !vars.steps.as_object().is_some_and(|m| m.contains_key(step)) {
                let f = self.path.key("after");
                self.error_help(
                    &f,
                    "unknown-output",
                    format!("step '{}': template reads steps.{step}.outputs.{name}, but '{step}' is not in `after`", self.step),
                    format!("add '{step}' to `after` so its outputs exist when this step runs"),
                );
                continue;
            }
            if let Some(outputs) = vars
                .steps
                .get_mut(step)
                .and_then(|s| s.get_mut("outputs"))
                .and_then(|o| o.as_object_mut())
            {
                outputs.insert(name.to_string(), serde_json::Value::from(0));
            }
        }
        vars
    }

    /// Render a templated string field (S3 prefix, where clause) to check it.
    pub fn template_field(&mut self, field: &YamlPath, text: &str) -> Option<String> {
        self.render(&TextOrigin::Field(field.clone()), text, None)
    }

    /// A key prefix template: rendered as [`CheckCx::template_field`] does, and its rendering with
    /// the project's params (and sample values for the rest) checked by
    /// [`crate::lake::check_key_prefix`], so that `prefix: ../x` or a param that renders to nothing
    /// is refused before anything runs (the step checks the real rendering again).
    pub fn key_prefix_field(&mut self, name: &str, text: &str) {
        let f = self.field(name);
        if let Some(rendered) = self.template_field(&f, text) {
            let prefix = rendered.trim_matches('/');
            if let Err(why) = crate::lake::check_key_prefix(prefix) {
                let step = self.step.clone();
                self.error_help(
                    &f,
                    "unsafe-prefix",
                    format!("step '{step}': {name} renders to {prefix:?}, which is not a safe S3 key prefix: {why}"),
                    "write the prefix as plain folder names, e.g. events/{{ ds | date('%Y/%m/%d') }}",
                );
            }
        }
    }

    /// Render and parse a SQL template, record its lineage on `connection`, report errors at their place.
    pub fn check_sql(
        &mut self,
        origin: &TextOrigin,
        source: &str,
        dialect: Dialect,
        connection: &str,
    ) -> Option<Vec<sql::StatementSource>> {
        for (line, col, expr) in crate::template::unquoted_param_outputs(source) {
            let (file, pos) = self.locate(origin, line, col, expr.len());
            let mut d = Diagnostic::warning(
                "unquoted-param",
                format!("step '{}': `{expr}` is pasted into SQL unquoted", self.step),
            )
            .in_file(file)
            .at(pos)
            .help("pass values through `| sql_literal` (or `| sql_identifier` for names) so they cannot change the statement");
            d.severity = crate::diag::Severity::Warning;
            self.diags.push(d);
        }
        let rendered = self.render(origin, source, Some(dialect))?;
        match sql::analyze(dialect, &rendered) {
            Ok((stmts, lineage)) => {
                for t in lineage.reads {
                    self.lineage.reads.push(TableRef {
                        connection: connection.to_string(),
                        table: t,
                    });
                }
                for t in lineage.writes {
                    self.lineage.writes.push(TableRef {
                        connection: connection.to_string(),
                        table: t,
                    });
                }
                Some(stmts)
            }
            Err(e) => {
                let (line, col) = sql::map_to_source(source, &rendered, e.line, e.col);
                let (file, pos) = self.locate(origin, line, col, 1);
                self.diags.push(
                    Diagnostic::error(
                        "sql-syntax",
                        format!(
                            "step '{}': SQL syntax error ({}): {}",
                            self.step,
                            dialect.name(),
                            e.message
                        ),
                    )
                    .in_file(file)
                    .at(pos),
                );
                None
            }
        }
    }

    /// Record that this step reads `table` on `connection` (for non-SQL kinds).
    pub fn reads(&mut self, connection: &str, table: &str) {
        self.lineage.reads.push(TableRef {
            connection: connection.to_string(),
            table: normalize_table(table),
        });
    }

    /// Record that this step writes `table` on `connection`.
    pub fn writes(&mut self, connection: &str, table: &str) {
        self.lineage.writes.push(TableRef {
            connection: connection.to_string(),
            table: normalize_table(table),
        });
    }

    /// Check a Lua chunk's syntax (it is compiled, not run).
    pub fn check_lua(&mut self, origin: &TextOrigin, code: &str) {
        if let Err((line, msg)) = lua::syntax_check(code) {
            let (file, pos) = self.locate(origin, line, 1, 1);
            self.diags.push(
                Diagnostic::error(
                    "lua-syntax",
                    format!("step '{}': Lua syntax error: {msg}", self.step),
                )
                .in_file(file)
                .at(pos),
            );
        }
    }

    /// Check that `value` lies in [lo, hi].
    pub fn in_range(&mut self, name: &str, value: f64, lo: f64, hi: f64) {
        if !(lo..=hi).contains(&value) {
            let f = self.field(name);
            self.error(
                &f,
                "out-of-range",
                format!(
                    "step '{}': {name} must be between {lo} and {hi}, got {value}",
                    self.step
                ),
            );
        }
    }
}

/// `x` from a message like "undefined value: `x` is undefined".
fn undefined_name(message: &str) -> Option<&str> {
    let i = message.find(" is undefined")?;
    let head = message[..i].strip_suffix('`')?;
    let start = head.rfind('`')?;
    Some(&head[start + 1..])
}

/// Table names as lineage compares them: unquoted parts lower-cased, quotes removed.
pub fn normalize_table(name: &str) -> String {
    name.split('.')
        .map(|p| {
            let t = p.trim();
            if (t.starts_with('"') && t.ends_with('"') || t.starts_with('`') && t.ends_with('`'))
                && t.len() >= 2
            {
                t[1..t.len() - 1].to_string()
            } else {
                t.to_lowercase()
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}
