//! What a step sees while it runs ([`RunCx`]), what it returns ([`StepOutput`]) and how it fails
//! ([`StepError`], classified so the engine retries only what a retry can fix).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::project::DatabaseConnection;
use crate::config::{Connection, ConnectionKind};
use crate::db::pool::Pooled;
use crate::db::{DbClient, DbError, DbKind};
use crate::engine::logs::AttemptLog;
use crate::project::{Job, Project, StepSpec};
use crate::schedule::Interval;
use crate::sql::Dialect;
use crate::template::{Renderer, TemplateVars};

/// Why a step failed, for the retry decision and for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The step's own definition is wrong (template, SQL syntax, sandbox violation, unsupported kind):
    /// a retry cannot fix it, so none is made.
    Config,
    /// The server rejected a statement or the data (constraint, division by zero, bad value).
    Data,
    /// A check ran and found the data wrong (a `validate` mismatch): another attempt would find the
    /// same, so none is made.
    Mismatch,
    /// Something outside failed: connection refused, network, deadlock, serialization failure.
    External,
    /// The attempt ran past its `timeout` and was cancelled.
    Timeout,
    /// The run was cancelled (Ctrl-C, shutdown).
    Cancelled,
    /// A bug in cranium.
    Internal,
}

/// A failed attempt.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    pub class: ErrorClass,
    pub message: String,
}

impl StepError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> StepError {
        StepError {
            class,
            message: message.into(),
        }
    }

    pub fn config(message: impl Into<String>) -> StepError {
        StepError::new(ErrorClass::Config, message)
    }

    pub fn external(message: impl Into<String>) -> StepError {
        StepError::new(ErrorClass::External, message)
    }

    /// Whether another attempt may succeed.
    pub fn retryable(&self) -> bool {
        !matches!(
            self.class,
            ErrorClass::Config | ErrorClass::Cancelled | ErrorClass::Mismatch
        )
    }

    /// An S3 error: retried unless the server said no for good (access denied, no such bucket).
    pub fn from_s3(e: crate::s3::S3Error) -> StepError {
        let class = if e.is_retryable() {
            ErrorClass::External
        } else {
            ErrorClass::Config
        };
        StepError::new(class, e.to_string())
    }

    /// A database error, with the statement it came from when known.
    pub fn from_db(e: DbError) -> StepError {
        let class = match &e {
            DbError::Connect { .. } => ErrorClass::External,
            DbError::Statement { code, .. } => {
                // SQLSTATE class 42: syntax error or access rule violation (a missing table, a typo).
                if code.as_deref().is_some_and(|c| c.starts_with("42")) {
                    ErrorClass::Config
                } else if e.is_retryable() {
                    ErrorClass::External
                } else {
                    ErrorClass::Data
                }
            }
            DbError::Timeout { .. } => ErrorClass::Timeout,
            DbError::Cancelled | DbError::NotCommitted => ErrorClass::Cancelled,
            DbError::Other(_) => ErrorClass::External,
        };
        StepError::new(class, e.to_string())
    }
}

/// What a successful attempt reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepOutput {
    pub rows_affected: Option<i64>,
    pub bytes: Option<i64>,
    /// Small values that downstream templates read as `steps.<id>.outputs.<name>`.
    pub outputs: serde_json::Map<String, serde_json::Value>,
    /// For steps that read Kafka: where the group stands on each partition after the run.
    pub consumer_lag: Vec<PartitionLag>,
}

/// A consumer group's position on one topic partition after a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    /// The next offset the group will read.
    pub committed_offset: i64,
    /// The offset after the partition's last record when measured.
    pub end_offset: i64,
}

/// Everything a running step needs.
pub struct RunCx {
    pub project: Arc<Project>,
    pub job_index: usize,
    pub step_index: usize,
    pub interval: Interval,
    pub run_id: i64,
    pub attempt: u32,
    pub vars: TemplateVars,
    pub renderer: Arc<Renderer>,
    /// When the attempt's `timeout` runs out.
    pub deadline: Option<Instant>,
    pub cancel: CancellationToken,
    pub log: AttemptLog,
    /// Where the step raises alerts of its own (a validation mismatch); None: `--no-alerts`, or
    /// an engine without a queue (the step then sends them itself).
    pub notifier: Option<crate::alerts::Notifier>,
    /// Whether this runner still holds the step's lease (renewed in time); asked right before a
    /// step commits, so that a runner paused past its lease rolls back. None: always.
    pub lease_held: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
}

impl RunCx {
    /// See [`RunCx::lease_held`].
    pub fn holds_lease(&self) -> bool {
        self.lease_held.as_ref().is_none_or(|f| f())
    }

    pub fn job(&self) -> &Job {
        &self.project.jobs[self.job_index]
    }

    pub fn spec(&self) -> &StepSpec {
        &self.job().steps[self.step_index]
    }

    /// `job.step`, as messages name the step.
    pub fn name(&self) -> String {
        format!("{}.{}", self.job().name, self.spec().id)
    }

    /// Read a file named in the job file (relative to the project root).
    pub fn read_file(&self, rel: &str) -> Result<String, StepError> {
        std::fs::read_to_string(self.project.root.join(rel))
            .map_err(|e| StepError::config(format!("cannot read {rel}: {e}")))
    }

    /// Render a template for this run.
    pub fn render(
        &self,
        name: &str,
        source: &str,
        dialect: Option<Dialect>,
    ) -> Result<String, StepError> {
        self.renderer
            .render(name, source, &self.vars, dialect)
            .map_err(|e| {
                let at = e.line.map(|l| format!(":{l}")).unwrap_or_default();
                StepError::config(format!("template error in {name}{at}: {}", e.message))
            })
    }

    /// Renders the S3 key prefix template of field `name`, trims its slashes and checks it
    /// ([`crate::lake::check_key_prefix`]): a value from a parameter or an upstream output cannot
    /// move the step's objects outside its folder or to the top of the bucket.
    pub fn render_key_prefix(&self, name: &str, source: &str) -> Result<String, StepError> {
        key_prefix(name, &self.render(name, source, None)?)
    }

    /// Open the database connection `name` (a connection of the step's own, for steps that keep
    /// it for a long export or load).
    pub async fn connect(&self, name: &str) -> Result<(DbClient, Dialect), StepError> {
        connect(&self.project, name).await
    }

    /// Borrow a connection to `name` from the process's pool for this attempt (waiting, within
    /// the attempt's deadline, when all of its `max_connections` are lent).
    pub async fn pooled(&self, name: &str) -> Result<(Pooled, Dialect), StepError> {
        pooled(&self.project, name, self.deadline, &self.cancel).await
    }

    /// A client for the s3 connection `name` and the bucket to use: `bucket` (a template) when given,
    /// else the connection's.
    pub fn s3(
        &self,
        name: &str,
        bucket: Option<&str>,
    ) -> Result<(crate::s3::S3Client, String), StepError> {
        let Some(Connection::S3(conn)) = self.project.connections.get(name) else {
            return Err(StepError::config(format!(
                "connection '{name}' is not an s3 connection"
            )));
        };
        let client = crate::s3::S3Client::new(conn).map_err(StepError::from_s3)?;
        let bucket = match bucket {
            Some(b) => self.render("bucket", b, None)?,
            None => conn.bucket.clone().ok_or_else(|| {
                StepError::config("no bucket: give `bucket:` on the step or on the s3 connection")
            })?,
        };
        Ok((client, bucket))
    }
}

/// The URL and kind of a database connection.
pub fn database_target(
    project: &Project,
    name: &str,
) -> Result<(DbKind, String, Dialect, Duration), StepError> {
    let Some(conn) = project.connections.get(name) else {
        return Err(StepError::config(format!("unknown connection '{name}'")));
    };
    let Connection::Database(kind, d) = conn else {
        return Err(StepError::config(format!(
            "connection '{name}' is not a database"
        )));
    };
    let (db_kind, dialect) = match kind {
        ConnectionKind::Postgres => (DbKind::Postgres, Dialect::Postgres),
        ConnectionKind::Redshift => (DbKind::Redshift, Dialect::Redshift),
        ConnectionKind::Mysql => (DbKind::MySql, Dialect::MySql),
        _ => {
            return Err(StepError::config(format!(
                "connection '{name}' is not a database"
            )))
        }
    };
    let timeout = d
        .connect_timeout
        .map(|t| t.0)
        .unwrap_or(Duration::from_secs(10));
    Ok((db_kind, database_url(*kind, d), dialect, timeout))
}

/// A connection's URL: `url` as written, or one built from its parts.
pub fn database_url(kind: ConnectionKind, d: &DatabaseConnection) -> String {
    if let Some(u) = &d.url {
        return u.clone();
    }
    let scheme = if kind == ConnectionKind::Mysql {
        "mysql"
    } else {
        "postgres"
    };
    let port = d.port.unwrap_or(match kind {
        ConnectionKind::Mysql => 3306,
        ConnectionKind::Redshift => 5439,
        _ => 5432,
    });
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    let auth = match (&d.user, &d.password) {
        (Some(u), Some(p)) => format!("{}:{}@", enc(u), enc(p)),
        (Some(u), None) => format!("{}@", enc(u)),
        _ => String::new(),
    };
    format!(
        "{scheme}://{auth}{}:{port}/{}",
        d.host.as_deref().unwrap_or("127.0.0.1"),
        d.database.as_deref().unwrap_or("")
    )
}

/// Borrow a pooled connection by name.
pub async fn pooled(
    project: &Project,
    name: &str,
    deadline: Option<Instant>,
    cancel: &CancellationToken,
) -> Result<(Pooled, Dialect), StepError> {
    let (kind, url, dialect, timeout) = database_target(project, name)?;
    let max = match project.connections.get(name) {
        Some(Connection::Database(_, d)) => d.max_connections,
        _ => None,
    }
    .map_or(crate::db::pool::DEFAULT_MAX_CONNECTIONS, |n| n as usize);
    let client = crate::db::pool::checkout(kind, &url, timeout, max, deadline, cancel)
        .await
        .map_err(|e| {
            StepError::external(
                project
                    .redactor
                    .redact(&format!("connection '{name}': {e}")),
            )
        })?;
    Ok((client, dialect))
}

/// Open a database connection by name.
pub async fn connect(project: &Project, name: &str) -> Result<(DbClient, Dialect), StepError> {
    let (kind, url, dialect, timeout) = database_target(project, name)?;
    let client = DbClient::connect(kind, &url, timeout).await.map_err(|e| {
        StepError::external(
            project
                .redactor
                .redact(&format!("connection '{name}': {e}")),
        )
    })?;
    Ok((client, dialect))
}

/// Database access for Lua scripts: one pooled connection per name, borrowed on first use.
pub struct ProjectDb {
    pub project: Arc<Project>,
    /// Connections the script may use; None = every database connection.
    pub allowed: Option<Vec<String>>,
    pub deadline: Option<Instant>,
    pub cancel: CancellationToken,
    clients: tokio::sync::Mutex<HashMap<String, Pooled>>,
}

impl ProjectDb {
    pub fn new(
        project: Arc<Project>,
        allowed: Option<Vec<String>>,
        deadline: Option<Instant>,
        cancel: CancellationToken,
    ) -> ProjectDb {
        ProjectDb {
            project,
            allowed,
            deadline,
            cancel,
            clients: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The open connection `name` (opened on first use), under the lock.
    async fn client(
        &self,
        name: &str,
    ) -> Result<tokio::sync::MutexGuard<'_, HashMap<String, Pooled>>, String> {
        if let Some(allowed) = &self.allowed {
            if !allowed.iter().any(|a| a == name) {
                return Err(format!(
                    "connection '{name}' is not in this step's `connections`"
                ));
            }
        }
        let mut clients = self.clients.lock().await;
        if !clients.contains_key(name) {
            let (c, _) = pooled(&self.project, name, self.deadline, &self.cancel)
                .await
                .map_err(|e| e.message)?;
            clients.insert(name.to_string(), c);
        }
        Ok(clients)
    }

    fn db_error(&self, e: DbError) -> String {
        self.project.redactor.redact(&e.to_string())
    }
}

impl crate::lua_runtime::LuaDb for ProjectDb {
    fn query<'a>(
        &'a self,
        connection: &'a str,
        sql: &'a str,
        params: Vec<serde_json::Value>,
    ) -> BoxFuture<'a, Result<Vec<serde_json::Map<String, serde_json::Value>>, String>> {
        Box::pin(async move {
            let mut clients = self.client(connection).await?;
            let c = clients
                .get_mut(connection)
                .ok_or_else(|| format!("connection '{connection}' is not open"))?;
            c.query(sql, &params, self.deadline, &self.cancel)
                .await
                .map_err(|e| self.db_error(e))
        })
    }

    fn execute<'a>(
        &'a self,
        connection: &'a str,
        sql: &'a str,
        params: Vec<serde_json::Value>,
    ) -> BoxFuture<'a, Result<u64, String>> {
        Box::pin(async move {
            let mut clients = self.client(connection).await?;
            let c = clients
                .get_mut(connection)
                .ok_or_else(|| format!("connection '{connection}' is not open"))?;
            c.execute(sql, &params, self.deadline, &self.cancel)
                .await
                .map_err(|e| self.db_error(e))
        })
    }
}

/// A rendered S3 key prefix of field `name`, its slashes trimmed, checked with
/// [`crate::lake::check_key_prefix`].
pub fn key_prefix(name: &str, rendered: &str) -> Result<String, StepError> {
    let prefix = rendered.trim_matches('/').to_string();
    crate::lake::check_key_prefix(&prefix).map_err(|why| {
        StepError::config(format!(
            "{name} rendered to {prefix:?}, which is not a safe S3 key prefix: {why}"
        ))
    })?;
    Ok(prefix)
}
