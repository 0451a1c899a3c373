//! Loading a project: `cranium.yaml` and every job file, turned into a checked [`Project`].
//!
//! Raw, then validated, then built: each file is parsed into the plain serde types of [`crate::config`]
//! (with `${VAR}` resolved), then checked (schedules, time zones, references, templates, SQL), and only a
//! value that passed becomes part of the [`Project`]. Every finding goes into one [`Diagnostics`] list, so
//! one run reports all of them. Job files are independent until the DAG is built, so they load in
//! parallel. Nothing here opens a connection.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use indexmap::IndexMap;
use rayon::prelude::*;
use serde_yaml::Value;

use crate::config::interp::{self, Env};
use crate::config::project::{
    CommandAlert, DatabaseConnection, EmailAlert, KafkaConnection, S3Connection, WebhookAlert,
};
use crate::config::{
    AlertChannel, Connection, ConnectionKind, JobFile, ProjectConfig, ProjectDefaults, StepCommon,
};
use crate::diag::{did_you_mean, Diagnostic, Diagnostics, Pos};
use crate::schedule::{self, Calendar, Interval, Schedule, ScheduleError, Tz};
use crate::secret::Redactor;
use crate::steps::{self, CheckCx, StepConfig, StepLineage};
use crate::template::{Renderer, TemplateVars};
use crate::yaml::{self, SourceFile, YamlPath};

/// The project file's name.
pub const PROJECT_FILE: &str = "cranium.yaml";

/// A checked project.
#[derive(Debug)]
pub struct Project {
    pub root: PathBuf,
    pub name: String,
    /// Metadata store URL.
    pub state_url: String,
    pub infer_dependencies: bool,
    pub connections: IndexMap<String, Connection>,
    pub alerts: IndexMap<String, AlertChannel>,
    pub defaults: ProjectDefaults,
    /// How the daemon runs (checked).
    pub daemon: DaemonSettings,
    /// Named pools and their slots.
    pub pools: IndexMap<String, u32>,
    /// Jobs, by name.
    pub jobs: Vec<Job>,
    pub redactor: Redactor,
}

/// A checked job.
#[derive(Debug)]
pub struct Job {
    pub name: String,
    /// The job file, with its text and positions.
    pub source: Arc<SourceFile>,
    pub description: Option<String>,
    pub owner: Option<String>,
    pub timezone: Tz,
    pub calendar: Calendar,
    pub catchup: bool,
    pub max_active_runs: u32,
    /// Higher runs first when steps wait for slots.
    pub priority: i32,
    pub params: serde_json::Value,
    pub alerts: Vec<String>,
    pub sla: Option<Duration>,
    pub tags: Vec<String>,
    pub steps: Vec<StepSpec>,
    /// False when the schedule, time zone or start is invalid (reported); the job is kept for the other
    /// checks but must not run.
    pub runnable: bool,
}

/// The `daemon:` section, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonSettings {
    /// Where `/livez`, `/readyz` and `/health` are served; `None`: nowhere.
    pub listen: Option<std::net::SocketAddr>,
    pub max_running_steps: usize,
    pub shutdown_grace: Duration,
    /// How long a step lease lasts without renewal.
    pub lease_ttl: Duration,
    /// The dashboard's address, for links in alerts.
    pub public_url: Option<String>,
    /// The token of the dashboard's actions; `None`: the dashboard is read-only.
    pub auth_token: Option<AuthToken>,
}

/// The dashboard's token: never printed (`Debug` shows its length only).
#[derive(Clone, PartialEq, Eq)]
pub struct AuthToken(pub String);

impl std::fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuthToken(<{} characters>)", self.0.len())
    }
}

impl Default for DaemonSettings {
    fn default() -> Self {
        DaemonSettings {
            listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 8181))),
            max_running_steps: 16,
            shutdown_grace: Duration::from_secs(60),
            lease_ttl: Duration::from_secs(30),
            public_url: None,
            auth_token: None,
        }
    }
}

/// How a step retries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub retries: u32,
    pub delay: Duration,
    pub backoff: f64,
}

/// A dependency as written in `after:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dep {
    /// `step`, or `job` when no step of that name exists (resolved against the project by the DAG).
    Name(String),
    /// `job.step`.
    JobStep(String, String),
}

/// A checked step.
#[derive(Debug, Clone)]
pub struct StepSpec {
    pub id: String,
    pub description: Option<String>,
    pub after: Vec<Dep>,
    pub retry: RetryPolicy,
    pub timeout: Option<Duration>,
    /// The pool whose slots the step takes: `pool:`, else the pool named like its connection.
    pub pool: Option<String>,
    pub config: StepConfig,
    /// Tables read and written (SQL lineage, load targets).
    pub lineage: StepLineage,
    /// Where the step is in its job file.
    pub path: YamlPath,
}

impl Job {
    pub fn step(&self, id: &str) -> Option<&StepSpec> {
        self.steps.iter().find(|s| s.id == id)
    }

    /// The interval used to render templates when checking: the job's first.
    pub fn sample_interval(&self) -> Interval {
        sample_interval(&self.calendar)
    }
}

impl Project {
    pub fn job(&self, name: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.name == name)
    }
}

fn sample_interval(cal: &Calendar) -> Interval {
    let s = cal
        .schedule
        .next_after(cal.start - chrono::Duration::seconds(1))
        .unwrap_or(cal.start);
    let e = cal
        .schedule
        .next_after(s)
        .unwrap_or(s + chrono::Duration::days(1));
    Interval { start: s, end: e }
}

/// Errors that stop loading before any file is read.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error("no {PROJECT_FILE} found in {0} or any parent folder; run cranium inside a project or pass --project DIR")]
    NotFound(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The nearest folder at or above `start` that holds `cranium.yaml`.
pub fn find_root(start: &Path) -> Result<PathBuf, ProjectError> {
    let abs = start.canonicalize().map_err(|e| ProjectError::Io {
        path: start.to_path_buf(),
        source: e,
    })?;
    let mut dir = Some(abs.as_path());
    while let Some(d) = dir {
        if d.join(PROJECT_FILE).is_file() {
            return Ok(d.to_path_buf());
        }
        dir = d.parent();
    }
    Err(ProjectError::NotFound(abs))
}

/// Load and check the project at `root`. Returns the project (with whatever could be built) and every
/// finding. The project is `None` only when `cranium.yaml` itself could not be read.
pub fn load(root: &Path, env: &Env) -> Result<(Project, Diagnostics), ProjectError> {
    let mut diags = Diagnostics::new();
    let mut redactor = Redactor::default();
    let cfg_path = root.join(PROJECT_FILE);
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| ProjectError::Io {
        path: cfg_path.clone(),
        source: e,
    })?;
    let cfg_file = SourceFile::new(PROJECT_FILE, text.clone());
    diags.add_source(PROJECT_FILE, text);
    let mut out = Vec::new();
    let raw =
        load_yaml::<ProjectConfig>(&cfg_file, env, &mut redactor, &mut out).unwrap_or_default();

    let connections = build_connections(&raw, &cfg_file, &mut redactor, &mut out);
    let alerts = build_alerts(&raw, &cfg_file, &mut out);
    for channel in alerts.values() {
        for secret in channel.secrets() {
            redactor.add(secret);
        }
    }
    let state_url = raw
        .state
        .clone()
        .unwrap_or_else(|| "sqlite://.cranium/state.db".to_string());
    if !(state_url.starts_with("sqlite://")
        || state_url.starts_with("postgres://")
        || state_url.starts_with("postgresql://"))
    {
        out.push(cfg_file.error_at_value(
            &YamlPath::root().key("state"),
            "bad-state-url",
            format!(
                "state '{}' must be sqlite://PATH or postgres://...",
                crate::secret::mask_url_passwords(&state_url)
            ),
        ));
    }
    let default_tz = match raw.defaults.timezone.as_deref() {
        Some(name) => match schedule::parse_timezone(name) {
            Ok(tz) => tz,
            Err(e) => {
                out.push(cfg_file.error_at_value(
                    &YamlPath::root().key("defaults").key("timezone"),
                    "timezone",
                    e.to_string(),
                ));
                Tz::UTC
            }
        },
        None => Tz::UTC,
    };
    if let Some(names) = &raw.defaults.alerts {
        check_alert_names(
            names,
            &alerts,
            &cfg_file,
            &YamlPath::root().key("defaults").key("alerts"),
            &mut out,
        );
    }
    let daemon = build_daemon(&raw, &cfg_file, &mut out);
    for (name, slots) in &raw.pools {
        if *slots == 0 || !valid_name(name) {
            out.push(cfg_file.error_at_value(
                &YamlPath::root().key("pools").key(name),
                "out-of-range",
                format!(
                    "pool '{name}' needs a name of letters, digits, '_' and '-' and at least 1 slot"
                ),
            ));
        }
    }
    diags.extend(out);

    let mut project = Project {
        root: root.to_path_buf(),
        name: raw.name.clone().unwrap_or_else(|| {
            root.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "cranium".to_string())
        }),
        state_url,
        infer_dependencies: raw.infer_dependencies,
        connections,
        alerts,
        defaults: raw.defaults.clone(),
        daemon,
        pools: raw.pools.clone(),
        jobs: Vec::new(),
        redactor: Redactor::default(),
    };

    let job_files = list_job_files(root).map_err(|e| ProjectError::Io {
        path: root.join("jobs"),
        source: e,
    })?;
    let renderer = Renderer::new();
    let results: Vec<JobLoad> = job_files
        .par_iter()
        .map(|rel| load_job(root, rel, env, &project, default_tz, &renderer))
        .collect();

    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for r in results {
        diags.extend(r.diags);
        for s in r.secrets {
            redactor.add(s);
        }
        if let Some(job) = r.job {
            if let Some(first) = seen.get(&job.name) {
                diags.push(
                    job.source
                        .error_at_value(
                            &YamlPath::root().key("job"),
                            "duplicate-job",
                            format!(
                                "job '{}' is already defined in {}",
                                job.name,
                                first.display()
                            ),
                        )
                        .help("job names must be unique across the project"),
                );
                continue;
            }
            seen.insert(job.name.clone(), job.source.rel.clone());
            project.jobs.push(job);
        }
    }
    project.jobs.sort_by(|a, b| a.name.cmp(&b.name));
    project.redactor = redactor;
    Ok((project, diags))
}

/// The `daemon:` section, checked: an address to listen on, a step limit of at least 1.
fn build_daemon(
    raw: &ProjectConfig,
    file: &SourceFile,
    out: &mut Vec<Diagnostic>,
) -> DaemonSettings {
    let mut d = DaemonSettings::default();
    let path = YamlPath::root().key("daemon");
    match raw.daemon.listen.as_deref() {
        None => {}
        Some("off") => d.listen = None,
        Some(addr) => match addr.parse::<std::net::SocketAddr>() {
            Ok(a) => d.listen = Some(a),
            Err(_) => out.push(
                file.error_at_value(
                    &path.key("listen"),
                    "invalid-value",
                    format!("listen '{addr}' is not an address"),
                )
                .help("write HOST:PORT with an IP address, e.g. 127.0.0.1:8181, or `off`"),
            ),
        },
    }
    if let Some(n) = raw.daemon.max_running_steps {
        if n == 0 {
            out.push(file.error_at_value(
                &path.key("max_running_steps"),
                "out-of-range",
                "max_running_steps must be at least 1",
            ));
        }
        d.max_running_steps = n.max(1) as usize;
    }
    if let Some(g) = raw.daemon.shutdown_grace {
        d.shutdown_grace = g.0;
    }
    if let Some(t) = raw.daemon.lease_ttl {
        if t.0 < Duration::from_secs(2) {
            out.push(
                file.error_at_value(
                    &path.key("lease_ttl"),
                    "out-of-range",
                    format!(
                        "lease_ttl {t} is too short",
                        t = humantime::format_duration(t.0)
                    ),
                )
                .help("write at least 2s; leases are renewed every third of it"),
            );
        } else {
            d.lease_ttl = t.0;
        }
    }
    if let Some(u) = &raw.daemon.public_url {
        if u.starts_with("http://") || u.starts_with("https://") {
            d.public_url = Some(u.trim_end_matches('/').to_string());
        } else {
            out.push(file.error_at_value(
                &path.key("public_url"),
                "invalid-value",
                format!("public_url '{u}' must start with http:// or https://"),
            ));
        }
    }
    if let Some(t) = &raw.daemon.auth_token {
        if t.chars().count() < 16 {
            out.push(
                file.error_at_value(
                    &path.key("auth_token"),
                    "invalid-value",
                    "auth_token is too short: anyone could guess it",
                )
                .help("use at least 16 random characters, e.g. `openssl rand -hex 24`, from the environment: auth_token: ${CRANIUM_AUTH_TOKEN}"),
            );
        } else {
            d.auth_token = Some(AuthToken(t.clone()));
        }
    }
    d
}

/// `jobs/*.yaml` and `jobs/**/*.yml`, sorted, relative to the root.
fn list_job_files(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let dir = root.join("jobs");
    if !dir.is_dir() {
        return Ok(out);
    }
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let p = entry?.path();
            if p.is_dir() {
                stack.push(p);
            } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                if let Ok(rel) = p.strip_prefix(root) {
                    out.push(rel.to_path_buf());
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Parse a YAML file, resolve `${VAR}`, and deserialise it, reporting every problem.
fn load_yaml<T: serde::de::DeserializeOwned>(
    file: &SourceFile,
    env: &Env,
    redactor: &mut Redactor,
    out: &mut Vec<Diagnostic>,
) -> Option<T> {
    let mut value = match file.parse() {
        Ok(v) => v,
        Err(d) => {
            out.push(*d);
            return None;
        }
    };
    if matches!(value, Value::Null) {
        out.push(
            Diagnostic::error("empty-file", "the file is empty")
                .in_file(&file.rel)
                .at(Some(Pos::new(1, 1, 1))),
        );
        return None;
    }
    let mut failed = false;
    yaml::for_each_string(
        &mut value,
        &YamlPath::root(),
        &mut |path, s| match interp::interpolate(s, env, redactor) {
            Ok(v) => *s = v,
            Err(errors) => {
                failed = true;
                for e in errors {
                    let pos = file.string_content_start(path).map(|(l, c)| {
                        let before = &s[..e.offset.min(s.len())];
                        let line_off = before.matches('\n').count();
                        let col_off = before
                            .rsplit('\n')
                            .next()
                            .map(|x| x.chars().count())
                            .unwrap_or(0);
                        let end = s[e.offset.min(s.len())..]
                            .find('}')
                            .map(|i| i + 1)
                            .unwrap_or(2);
                        if line_off == 0 {
                            Pos::new(l, c + col_off, end)
                        } else {
                            Pos::new(l + line_off, col_off + 1, end)
                        }
                    });
                    out.push(
                        Diagnostic::error("env-var", e.message)
                            .in_file(&file.rel)
                            .at(pos)
                            .help(e.help),
                    );
                }
            }
        },
    );
    let t = yaml::deserialize::<T>(value, file, &YamlPath::root(), &[], out);
    if failed {
        // Keep going with what parsed: the rest of the file can still be checked.
        return t;
    }
    t
}

fn kind_of(v: &Value) -> Option<&str> {
    v.as_mapping()?.get("kind")?.as_str()
}

fn build_connections(
    raw: &ProjectConfig,
    file: &SourceFile,
    redactor: &mut Redactor,
    out: &mut Vec<Diagnostic>,
) -> IndexMap<String, Connection> {
    let mut conns = IndexMap::new();
    for (name, value) in &raw.connections {
        let path = YamlPath::root().key("connections").key(name.as_str());
        let Some(kind_name) = kind_of(value) else {
            out.push(file.error_at_key(
                &path,
                "missing-field",
                format!(
                    "connection '{name}' needs a `kind` ({})",
                    ConnectionKind::ALL.join(", ")
                ),
            ));
            continue;
        };
        let Some(kind) = ConnectionKind::parse(kind_name) else {
            out.push(
                file.error_at_value(
                    &path.key("kind"),
                    "unknown-kind",
                    format!(
                        "connection '{name}': unknown kind '{kind_name}'{}",
                        did_you_mean(kind_name, ConnectionKind::ALL)
                    ),
                )
                .help(format!(
                    "connection kinds: {}",
                    ConnectionKind::ALL.join(", ")
                )),
            );
            continue;
        };
        let mut body = value.clone();
        if let Some(m) = body.as_mapping_mut() {
            m.remove("kind");
        }
        let conn = match kind {
            ConnectionKind::Postgres | ConnectionKind::Redshift | ConnectionKind::Mysql => {
                yaml::deserialize::<DatabaseConnection>(body, file, &path, &["kind"], out).and_then(
                    |d| {
                        check_database_url(name, kind, &d, file, &path, out)
                            .then_some(Connection::Database(kind, d))
                    },
                )
            }
            ConnectionKind::Kafka => {
                yaml::deserialize::<KafkaConnection>(body, file, &path, &["kind"], out)
                    .map(Connection::Kafka)
            }
            ConnectionKind::S3 => {
                yaml::deserialize::<S3Connection>(body, file, &path, &["kind"], out)
                    .map(Connection::S3)
            }
        };
        if let Some(c) = conn {
            for s in c.secrets() {
                redactor.add(s);
            }
            conns.insert(name.clone(), c);
        }
    }
    conns
}

fn check_database_url(
    name: &str,
    kind: ConnectionKind,
    d: &DatabaseConnection,
    file: &SourceFile,
    path: &YamlPath,
    out: &mut Vec<Diagnostic>,
) -> bool {
    match &d.url {
        Some(url) => {
            let schemes: &[&str] = match kind {
                ConnectionKind::Mysql => &["mysql://"],
                _ => &["postgres://", "postgresql://"],
            };
            if !schemes.iter().any(|s| url.starts_with(s)) {
                out.push(file.error_at_value(
                    &path.key("url"),
                    "bad-url",
                    format!(
                        "connection '{name}' ({}): url must start with {}",
                        kind.name(),
                        schemes.join(" or ")
                    ),
                ));
                return false;
            }
            true
        }
        None if d.host.is_some() => true,
        None => {
            out.push(file.error_at_key(
                path,
                "missing-field",
                format!("connection '{name}' needs `url` or `host`"),
            ));
            false
        }
    }
}

fn build_alerts(
    raw: &ProjectConfig,
    file: &SourceFile,
    out: &mut Vec<Diagnostic>,
) -> IndexMap<String, AlertChannel> {
    let mut alerts = IndexMap::new();
    for (name, value) in &raw.alerts {
        let path = YamlPath::root().key("alerts").key(name.as_str());
        let mut body = value.clone();
        if let Some(m) = body.as_mapping_mut() {
            m.remove("kind");
        }
        let ch = match kind_of(value) {
            Some("webhook") => yaml::deserialize::<WebhookAlert>(body, file, &path, &["kind"], out)
                .map(AlertChannel::Webhook),
            Some("command") => yaml::deserialize::<CommandAlert>(body, file, &path, &["kind"], out)
                .map(AlertChannel::Command),
            Some("email") => yaml::deserialize::<EmailAlert>(body, file, &path, &["kind"], out)
                .map(AlertChannel::Email),
            Some(other) => {
                out.push(file.error_at_value(
                    &path.key("kind"),
                    "unknown-kind",
                    format!(
                        "alert channel '{name}': unknown kind '{other}'{}",
                        did_you_mean(other, ["webhook", "command", "email"])
                    ),
                ));
                None
            }
            None => {
                out.push(file.error_at_key(
                    &path,
                    "missing-field",
                    format!("alert channel '{name}' needs a `kind` (webhook, command or email)"),
                ));
                None
            }
        };
        if let Some(c) = ch {
            check_alert_channel(name, &c, file, &path, out);
            alerts.insert(name.clone(), c);
        }
    }
    alerts
}

/// An alert channel's event names are known and its body template compiles.
fn check_alert_channel(
    name: &str,
    c: &AlertChannel,
    file: &SourceFile,
    path: &YamlPath,
    out: &mut Vec<Diagnostic>,
) {
    use crate::config::project::ALERT_EVENTS;
    for (i, e) in c.events().unwrap_or_default().iter().enumerate() {
        if !ALERT_EVENTS.contains(&e.as_str()) {
            out.push(
                file.error_at_value(
                    &path.key("events").index(i),
                    "unknown-event",
                    format!(
                        "alert channel '{name}': unknown event '{e}'{}",
                        did_you_mean(e, ALERT_EVENTS.iter().copied())
                    ),
                )
                .help(format!("events are: {}", ALERT_EVENTS.join(", "))),
            );
        }
    }
    if let AlertChannel::Email(e) = c {
        for (i, addr) in std::iter::once(&e.from).chain(&e.to).enumerate() {
            if addr.parse::<lettre::message::Mailbox>().is_err() {
                let field = if i == 0 {
                    path.key("from")
                } else {
                    path.key("to").index(i - 1)
                };
                out.push(file.error_at_value(
                    &field,
                    "invalid-value",
                    format!("alert channel '{name}': '{addr}' is not an e-mail address"),
                ));
            }
        }
        if e.to.is_empty() {
            out.push(file.error_at_value(
                &path.key("to"),
                "invalid-value",
                format!("alert channel '{name}': `to` needs at least one address"),
            ));
        }
    }
    if let AlertChannel::Webhook(w) = c {
        if let Some(t) = &w.template {
            let env = minijinja::Environment::new();
            if let Err(e) = env.template_from_str(t) {
                out.push(file.error_at_value(
                    &path.key("template"),
                    "template",
                    format!("alert channel '{name}': the template does not compile: {e}"),
                ));
            }
        }
        if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
            out.push(file.error_at_value(
                &path.key("url"),
                "invalid-value",
                format!("alert channel '{name}': url must start with http:// or https://"),
            ));
        }
    }
}

fn check_alert_names(
    names: &[String],
    alerts: &IndexMap<String, AlertChannel>,
    file: &SourceFile,
    path: &YamlPath,
    out: &mut Vec<Diagnostic>,
) {
    for (i, n) in names.iter().enumerate() {
        if !alerts.contains_key(n) {
            out.push(
                file.error_at_value(
                    &path.index(i),
                    "unknown-alert",
                    format!(
                        "unknown alert channel '{n}'{}",
                        did_you_mean(n, alerts.keys().map(|s| s.as_str()))
                    ),
                )
                .help("define alert channels under `alerts:` in cranium.yaml"),
            );
        }
    }
}

struct JobLoad {
    job: Option<Job>,
    diags: Vec<Diagnostic>,
    secrets: Vec<String>,
}

/// Names of jobs and steps: letters, digits, `_` and `-` (a `.` would be read as `job.step`).
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn load_job(
    root: &Path,
    rel: &Path,
    env: &Env,
    project: &Project,
    default_tz: Tz,
    renderer: &Renderer,
) -> JobLoad {
    let mut out = Vec::new();
    let mut redactor = Redactor::default();
    let text = match std::fs::read_to_string(root.join(rel)) {
        Ok(t) => t,
        Err(e) => {
            return JobLoad {
                job: None,
                diags: vec![
                    Diagnostic::error("io", format!("cannot read the job file: {e}")).in_file(rel),
                ],
                secrets: Vec::new(),
            }
        }
    };
    let file = Arc::new(SourceFile::new(rel, text));
    let job = load_yaml::<JobFile>(&file, env, &mut redactor, &mut out)
        .and_then(|raw| build_job(raw, &file, project, default_tz, renderer, &mut out));
    JobLoad {
        job,
        diags: out,
        secrets: redactor.secrets().to_vec(),
    }
}

fn report_schedule_error(
    e: &ScheduleError,
    file: &SourceFile,
    path: &YamlPath,
    out: &mut Vec<Diagnostic>,
) {
    let pos = match e {
        ScheduleError::Cron {
            span: Some(span),
            expr,
            ..
        } => file.string_content_start(path).map(|(l, c)| {
            let start = expr[..span.start.min(expr.len())].chars().count();
            let len = expr[span.start.min(expr.len())..span.end.min(expr.len())]
                .chars()
                .count();
            Pos::new(l, c + start, len)
        }),
        _ => file.value_pos(path),
    };
    let help = match e {
        ScheduleError::Cron { .. } => Some(
            "cron is `minute hour day-of-month month day-of-week` (day-of-week 0-7, 0 and 7 = Sunday), 6 fields with seconds first, or @hourly/@daily/@weekly/@monthly/@yearly",
        ),
        ScheduleError::TimeZone { .. } => Some("use an IANA time zone name such as UTC, Europe/Berlin or America/New_York"),
        ScheduleError::Time { .. } => Some("write times as 2026-01-01, 2026-01-01T06:00 (in the job's time zone) or RFC 3339"),
    };
    let mut d = Diagnostic::error("schedule", e.to_string())
        .in_file(&file.rel)
        .at(pos);
    if let Some(h) = help {
        d = d.help(h);
    }
    out.push(d);
}

fn build_job(
    raw: JobFile,
    file: &Arc<SourceFile>,
    project: &Project,
    default_tz: Tz,
    renderer: &Renderer,
    out: &mut Vec<Diagnostic>,
) -> Option<Job> {
    let root = YamlPath::root();
    if !valid_name(&raw.job) {
        out.push(file.error_at_value(
            &root.key("job"),
            "bad-name",
            format!(
                "job name '{}' may only use letters, digits, '_' and '-'",
                raw.job
            ),
        ));
    }
    let tz = match raw.timezone.as_deref() {
        Some(name) => match schedule::parse_timezone(name) {
            Ok(tz) => Some(tz),
            Err(e) => {
                report_schedule_error(&e, file, &root.key("timezone"), out);
                None
            }
        },
        None => Some(default_tz),
    };
    let tz_or_utc = tz.unwrap_or(Tz::UTC);
    let sched = match Schedule::parse(&raw.schedule, tz_or_utc) {
        Ok(s) => {
            for note in s.notes() {
                let mut d = file.error_at_value(&root.key("schedule"), "cron-step", note.clone());
                d.severity = crate::diag::Severity::Warning;
                out.push(d);
            }
            Some(s)
        }
        Err(e) => {
            report_schedule_error(&e, file, &root.key("schedule"), out);
            None
        }
    };
    let parse_time = |field: &str, s: &str, out: &mut Vec<Diagnostic>| -> Option<DateTime<Utc>> {
        match schedule::parse_time(s, tz_or_utc) {
            Ok(t) => Some(t),
            Err(e) => {
                report_schedule_error(&e, file, &root.key(field), out);
                None
            }
        }
    };
    let start = parse_time("start", &raw.start, out);
    let end = raw.end.as_deref().and_then(|e| parse_time("end", e, out));
    if let (Some(s), Some(e)) = (start, end) {
        if e <= s {
            out.push(file.error_at_value(
                &root.key("end"),
                "bad-range",
                format!(
                    "end ({}) must be after start ({})",
                    raw.end.as_deref().unwrap_or_default(),
                    raw.start
                ),
            ));
        }
    }
    if let (Some(s), Some(sched)) = (start, sched.as_ref()) {
        start_warnings(s, sched, end, file, &root.key("start"), out);
    }
    let mar = raw
        .max_active_runs
        .or(project.defaults.max_active_runs)
        .unwrap_or(1);
    if mar == 0 {
        out.push(file.error_at_value(
            &root.key("max_active_runs"),
            "out-of-range",
            "max_active_runs must be at least 1",
        ));
    }
    let alerts = raw
        .alerts
        .clone()
        .or_else(|| project.defaults.alerts.clone())
        .unwrap_or_default();
    if let Some(names) = &raw.alerts {
        check_alert_names(names, &project.alerts, file, &root.key("alerts"), out);
    }
    let job_backoff = raw.defaults.retry_backoff;
    if let Some(b) = job_backoff {
        if !(1.0..=10.0).contains(&b) {
            out.push(file.error_at_value(
                &root.key("defaults").key("retry_backoff"),
                "out-of-range",
                format!("retry_backoff must be between 1.0 and 10.0, got {b}"),
            ));
        }
    }

    let params = serde_json::Value::Object(raw.params.clone().into_iter().collect());
    // With a bad schedule or start the job cannot run, and that is already reported; keep checking its
    // steps against a stand-in daily calendar so every other finding in the file shows up too.
    let valid_calendar = sched.is_some() && start.is_some() && tz.is_some();
    let calendar = match (sched, start) {
        (Some(schedule), Some(start)) => Some(Calendar {
            schedule,
            start,
            end,
        }),
        (sched, start) => {
            let schedule = sched.or_else(|| Schedule::parse("@daily", tz_or_utc).ok());
            let start =
                start.unwrap_or(DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::days(20_454));
            schedule.map(|schedule| Calendar {
                schedule,
                start,
                end,
            })
        }
    };

    // Steps: split the common fields from the kind's, deserialise both, then check each.
    let mut specs: Vec<(StepSpec, usize)> = Vec::new();
    let mut ids: HashMap<String, usize> = HashMap::new();
    if raw.steps.is_empty() {
        out.push(file.error_at_key(
            &root.key("steps"),
            "no-steps",
            format!("job '{}' has no steps", raw.job),
        ));
    }
    for (i, value) in raw.steps.iter().enumerate() {
        let path = root.key("steps").index(i);
        let Some(map) = value.as_mapping() else {
            out.push(file.error_at_value(
                &path,
                "invalid-value",
                "a step must be a mapping with `id` and `kind`",
            ));
            continue;
        };
        let mut common = serde_yaml::Mapping::new();
        let mut own = serde_yaml::Mapping::new();
        for (k, v) in map {
            let is_common = k.as_str().is_some_and(|k| StepCommon::FIELDS.contains(&k));
            if is_common {
                common.insert(k.clone(), v.clone());
            } else {
                own.insert(k.clone(), v.clone());
            }
        }
        let Some(c) =
            yaml::deserialize::<StepCommon>(Value::Mapping(common), file, &path, &[], out)
        else {
            continue;
        };
        if !valid_name(&c.id) {
            out.push(file.error_at_value(
                &path.key("id"),
                "bad-name",
                format!(
                    "step id '{}' may only use letters, digits, '_' and '-'",
                    c.id
                ),
            ));
        }
        if let Some(first) = ids.get(&c.id) {
            let first_line = file
                .value_pos(&root.key("steps").index(*first).key("id"))
                .map(|p| p.line)
                .unwrap_or(0);
            out.push(file.error_at_value(
                &path.key("id"),
                "duplicate-step",
                format!(
                    "duplicate step id '{}' in job '{}' (first defined on line {first_line})",
                    c.id, raw.job
                ),
            ));
            continue;
        }
        ids.insert(c.id.clone(), i);
        let Some(config) = steps::parse_kind(&c.kind, Value::Mapping(own), file, &path, out) else {
            continue;
        };
        if let Some(b) = c.retry_backoff {
            if !(1.0..=10.0).contains(&b) {
                out.push(file.error_at_value(
                    &path.key("retry_backoff"),
                    "out-of-range",
                    format!("retry_backoff must be between 1.0 and 10.0, got {b}"),
                ));
            }
        }
        let after = c
            .after
            .iter()
            .map(|a| match a.split_once('.') {
                Some((j, s)) => Dep::JobStep(j.to_string(), s.to_string()),
                None => Dep::Name(a.clone()),
            })
            .collect();
        let d = &raw.defaults;
        let pd = &project.defaults;
        let retry = RetryPolicy {
            retries: c.retries.or(d.retries).or(pd.retries).unwrap_or(0),
            delay: c
                .retry_delay
                .or(d.retry_delay)
                .or(pd.retry_delay)
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(30)),
            backoff: c
                .retry_backoff
                .or(d.retry_backoff)
                .or(pd.retry_backoff)
                .unwrap_or(2.0),
        };
        let timeout = c.timeout.or(d.timeout).or(pd.timeout).map(|d| d.0);
        if let Some(pool) = &c.pool {
            if !project.pools.contains_key(pool) {
                out.push(
                    file.error_at_value(
                        &path.key("pool"),
                        "unknown-pool",
                        format!(
                            "unknown pool '{pool}'{}",
                            did_you_mean(pool, project.pools.keys().map(|s| s.as_str()))
                        ),
                    )
                    .help(
                        "declare it under `pools:` in cranium.yaml, e.g. `pools: { warehouse: 4 }`",
                    ),
                );
            }
        }
        specs.push((
            StepSpec {
                id: c.id,
                description: c.description,
                after,
                retry,
                timeout,
                pool: c.pool,
                config,
                lineage: StepLineage::default(),
                path,
            },
            i,
        ));
    }

    // Kind-specific checks with templates rendered for the job's first interval.
    let sibling_steps: Vec<String> = specs.iter().map(|(s, _)| s.id.clone()).collect();
    if let Some(cal) = &calendar {
        let sample = sample_interval(cal);
        for (spec, _) in specs.iter_mut() {
            let vars = TemplateVars {
                interval_start: sample.start,
                interval_end: sample.end,
                timezone: tz_or_utc,
                run_id: format!("check__{}", sample.start.format("%Y%m%dT%H%M%SZ")),
                job: raw.job.clone(),
                step: spec.id.clone(),
                params: params.clone(),
                steps: upstream_outputs_placeholder(&spec.after),
            };
            let mut cx = CheckCx {
                root: &project.root,
                connections: &project.connections,
                file,
                path: spec.path.clone(),
                job: &raw.job,
                step: format!("{}.{}", raw.job, spec.id),
                sibling_steps: sibling_steps.clone(),
                vars,
                renderer,
                diags: Vec::new(),
                lineage: StepLineage::default(),
            };
            spec.config.as_step().check(&mut cx);
            out.append(&mut cx.diags);
            spec.lineage = cx.lineage;
            if spec.pool.is_none() {
                // Steps of one connection share its pool, when one is named like it.
                spec.pool = spec
                    .config
                    .connections()
                    .into_iter()
                    .find(|c| project.pools.contains_key(*c))
                    .map(str::to_string);
            }
        }
    }

    let calendar = calendar?;
    let tz = tz.unwrap_or(Tz::UTC);
    Some(Job {
        runnable: valid_calendar,
        name: raw.job,
        source: file.clone(),
        description: raw.description,
        owner: raw.owner.or_else(|| project.defaults.owner.clone()),
        timezone: tz,
        calendar,
        catchup: raw.catchup.or(project.defaults.catchup).unwrap_or(false),
        max_active_runs: mar.max(1),
        priority: raw.priority.unwrap_or(0),
        params,
        alerts,
        sla: raw.sla.map(|d| d.0),
        tags: raw.tags,
        steps: specs.into_iter().map(|(s, _)| s).collect(),
    })
}

/// At check time upstream outputs do not exist yet: give each upstream step an `outputs` object that
/// answers any name, so `{{ steps.extract.outputs.rows }}` renders.
fn upstream_outputs_placeholder(after: &[Dep]) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for d in after {
        let name = match d {
            Dep::Name(n) => n.clone(),
            Dep::JobStep(_, s) => s.clone(),
        };
        m.insert(name, serde_json::json!({ "outputs": {} }));
    }
    serde_json::Value::Object(m)
}

/// A start whose intervals surprise: before 1970 (intervals are computed from 1970-01-01 on, the
/// first the schedule can compute), or so far ahead that the job will not run for years, or past
/// the last year the schedule computes (2100): it never runs.
fn start_warnings(
    start: DateTime<Utc>,
    sched: &Schedule,
    end: Option<DateTime<Utc>>,
    file: &crate::yaml::SourceFile,
    at: &crate::yaml::YamlPath,
    out: &mut Vec<Diagnostic>,
) {
    let mut warn = |code: &'static str, msg: String| {
        let mut d = file.error_at_value(at, code, msg);
        d.severity = crate::diag::Severity::Warning;
        out.push(d);
    };
    let first = sched.first_at_or_after(start);
    let Some(first) = first.filter(|f| end.is_none_or(|e| *f < e)) else {
        warn(
            "never-runs",
            format!(
                "the job has no interval from its start ({}) on: schedules are computed up to the year 2100, so it never runs",
                start.format("%Y-%m-%d")
            ),
        );
        return;
    };
    if start < DateTime::<Utc>::UNIX_EPOCH {
        warn(
            "start-before-1970",
            format!(
                "start {} is before 1970: the job's intervals begin at {}, the first one the schedule computes",
                start.format("%Y-%m-%d"),
                first.to_rfc3339()
            ),
        );
    }
    let years = (first - Utc::now()).num_days() / 365;
    if years >= 1 {
        warn(
            "start-far-ahead",
            format!(
                "the job will not run for {years} year{}: its first interval starts {}",
                if years == 1 { "" } else { "s" },
                first.format("%Y-%m-%d")
            ),
        );
    }
}
