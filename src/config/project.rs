//! `cranium.yaml`: the project's connections, metadata store, alert channels and job defaults.
//!
//! These are the raw, as-written types (plain serde, unknown fields denied). Strings may use `${VAR}` and
//! `${VAR:-default}`, resolved from the environment by [`crate::config::interp`] before these are built.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::types::HumanDuration;

/// The whole `cranium.yaml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// A name for the project, shown by `list` and in alerts.
    #[serde(default)]
    pub name: Option<String>,
    /// Metadata store URL: `sqlite://PATH` (relative to the project root) or `postgres://...`.
    /// Default `sqlite://.cranium/state.db`.
    #[serde(default)]
    pub state: Option<String>,
    /// Add the dependencies that SQL lineage finds instead of warning about them (like SQLMesh).
    #[serde(default)]
    pub infer_dependencies: bool,
    /// Named connections, each with a `kind`.
    #[serde(default)]
    pub connections: IndexMap<String, serde_yaml::Value>,
    /// Named alert channels, each with a `kind`.
    #[serde(default)]
    pub alerts: IndexMap<String, serde_yaml::Value>,
    /// Defaults for every job.
    #[serde(default)]
    pub defaults: ProjectDefaults,
    /// How `cranium daemon` runs: its health address, its step limit, its stop grace.
    #[serde(default)]
    pub daemon: DaemonConfig,
    /// Named pools of step slots (`warehouse: 4`), joined by steps with `pool: NAME`. A step
    /// without `pool:` joins the pool named like its connection, when there is one.
    #[serde(default)]
    pub pools: IndexMap<String, u32>,
}

/// The `daemon:` section of `cranium.yaml`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Address of `/livez`, `/readyz` and `/health` (default `127.0.0.1:8181`; loopback unless you
    /// say otherwise). `off` serves nothing.
    #[serde(default)]
    pub listen: Option<String>,
    /// Steps running at once across every job (default 16).
    #[serde(default)]
    pub max_running_steps: Option<u32>,
    /// On SIGTERM, how long running steps may take to finish before they are cancelled
    /// (default 60s).
    #[serde(default)]
    pub shutdown_grace: Option<HumanDuration>,
    /// How long a step's lease lasts without renewal (default 30s, at least 2s): a daemon that
    /// dies or freezes loses its steps to the other daemons after this, and its runs after
    /// twice this.
    #[serde(default)]
    pub lease_ttl: Option<HumanDuration>,
    /// Where people reach the dashboard (e.g. `https://etl.example.com`): alerts then link to the
    /// run's page instead of the log file.
    #[serde(default)]
    pub public_url: Option<String>,
    /// The token the dashboard's actions need (write `${CRANIUM_AUTH_TOKEN}`, never the value
    /// itself): without it the dashboard is read-only.
    #[serde(default)]
    pub auth_token: Option<String>,
}

/// Defaults applied to every job unless the job says otherwise.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectDefaults {
    /// IANA time zone for schedules (default UTC).
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub owner: Option<String>,
    /// Alert channels for every job.
    #[serde(default)]
    pub alerts: Option<Vec<String>>,
    #[serde(default)]
    pub catchup: Option<bool>,
    #[serde(default)]
    pub max_active_runs: Option<u32>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default)]
    pub retry_delay: Option<HumanDuration>,
    #[serde(default)]
    pub retry_backoff: Option<f64>,
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
}

/// The kinds of connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionKind {
    Postgres,
    Redshift,
    Mysql,
    Kafka,
    S3,
}

impl ConnectionKind {
    pub const ALL: [&'static str; 5] = ["postgres", "redshift", "mysql", "kafka", "s3"];

    pub fn name(self) -> &'static str {
        match self {
            ConnectionKind::Postgres => "postgres",
            ConnectionKind::Redshift => "redshift",
            ConnectionKind::Mysql => "mysql",
            ConnectionKind::Kafka => "kafka",
            ConnectionKind::S3 => "s3",
        }
    }

    pub fn parse(s: &str) -> Option<ConnectionKind> {
        Some(match s {
            "postgres" => ConnectionKind::Postgres,
            "redshift" => ConnectionKind::Redshift,
            "mysql" => ConnectionKind::Mysql,
            "kafka" => ConnectionKind::Kafka,
            "s3" => ConnectionKind::S3,
            _ => return None,
        })
    }

    /// The SQL dialect spoken over this connection, if it is a database.
    pub fn dialect(self) -> Option<crate::sql::Dialect> {
        match self {
            ConnectionKind::Postgres => Some(crate::sql::Dialect::Postgres),
            ConnectionKind::Redshift => Some(crate::sql::Dialect::Redshift),
            ConnectionKind::Mysql => Some(crate::sql::Dialect::MySql),
            _ => None,
        }
    }
}

/// A database connection (`postgres`, `redshift`, `mysql`): a URL, or its parts.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConnection {
    /// `postgres://user:pass@host:port/db` or `mysql://user:pass@host:port/db`.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub database: Option<String>,
    /// Timeout for opening a connection (default 10s).
    #[serde(default)]
    pub connect_timeout: Option<HumanDuration>,
    /// Connections the process keeps to this database at most, shared by its `sql` and `lua`
    /// steps (default 10); a step waits for one when all are lent.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Redshift only: the IAM role that COPY and UNLOAD use.
    #[serde(default)]
    pub iam_role: Option<String>,
}

/// A Kafka connection.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConnection {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// Extra librdkafka settings.
    #[serde(default)]
    pub options: IndexMap<String, String>,
}

/// An S3 (or S3-compatible) connection.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Connection {
    /// Endpoint URL for S3-compatible servers; AWS when absent.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most S3-compatible servers.
    #[serde(default)]
    pub path_style: bool,
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<String>,
    #[serde(default)]
    pub session_token: Option<String>,
    /// Default bucket for steps that do not name one.
    #[serde(default)]
    pub bucket: Option<String>,
}

/// A connection as configured.
#[derive(Debug, Clone)]
pub enum Connection {
    Database(ConnectionKind, DatabaseConnection),
    Kafka(KafkaConnection),
    S3(S3Connection),
}

impl Connection {
    pub fn kind(&self) -> ConnectionKind {
        match self {
            Connection::Database(k, _) => *k,
            Connection::Kafka(_) => ConnectionKind::Kafka,
            Connection::S3(_) => ConnectionKind::S3,
        }
    }

    /// Secret values to mask in output.
    pub fn secrets(&self) -> Vec<String> {
        match self {
            Connection::Database(_, d) => {
                let mut v: Vec<String> = d.password.iter().cloned().collect();
                if let Some(p) = d.url.as_deref().and_then(crate::secret::url_password_of) {
                    v.push(p);
                }
                v
            }
            Connection::Kafka(k) => k
                .options
                .iter()
                .filter(|(name, _)| name.contains("password") || name.contains("secret"))
                .map(|(_, v)| v.clone())
                .collect(),
            Connection::S3(s) => s
                .secret_access_key
                .iter()
                .chain(s.session_token.iter())
                .cloned()
                .collect(),
        }
    }
}

/// The kinds of alert channel.
#[derive(Debug, Clone)]
pub enum AlertChannel {
    /// POST a JSON summary to a URL.
    Webhook(WebhookAlert),
    /// Run a command with the JSON summary on standard input.
    Command(CommandAlert),
    /// E-mail through an SMTP server.
    Email(EmailAlert),
}

/// Every event an alert channel can take (`events:`).
pub const ALERT_EVENTS: &[&str] = &[
    "step_failed",
    "run_failed",
    "run_recovered",
    "sla_missed",
    "validate_mismatch",
    "dead_letters",
    "kafka_lag",
    "reload_refused",
    "store_unreachable",
    "connection_unreachable",
    "resolved",
    "test",
];

/// How a webhook's body is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// cranium's own JSON (the alert object).
    #[default]
    Json,
    /// A Slack incoming-webhook message with blocks.
    Slack,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookAlert {
    pub url: String,
    /// Sent with every request (secrets are masked wherever they are shown).
    #[serde(default)]
    pub headers: IndexMap<String, String>,
    /// `json` (default) or `slack`.
    #[serde(default)]
    pub format: WebhookFormat,
    /// A minijinja template of the body instead (it sees `alert`), e.g. a PagerDuty Events v2
    /// request with `"dedup_key": "{{ alert.job }}-{{ alert.step }}"`.
    #[serde(default)]
    pub template: Option<String>,
    /// How long one request may take (default 10s).
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// The events this channel takes (default: all).
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// At most one alert per (job, step, event) in this time (default 1h).
    #[serde(default)]
    pub repeat_interval: Option<HumanDuration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandAlert {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// How long the command may take (default 30s).
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// The events this channel takes (default: all).
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// At most one alert per (job, step, event) in this time (default 1h).
    #[serde(default)]
    pub repeat_interval: Option<HumanDuration>,
}

/// How an e-mail channel talks to its SMTP server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (required), port 587 by default.
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS), port 465 by default.
    Tls,
    /// No encryption (a local relay), port 25 by default.
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailAlert {
    /// The SMTP server.
    pub smtp_host: String,
    #[serde(default)]
    pub smtp_port: Option<u16>,
    /// `starttls` (default), `tls` or `none`.
    #[serde(default)]
    pub tls: SmtpTls,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// The sender, e.g. `cranium <etl@example.com>`.
    pub from: String,
    /// The recipients.
    pub to: Vec<String>,
    /// How long one send may take (default 30s).
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// The events this channel takes (default: all).
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// At most one alert per (job, step, event) in this time (default 1h).
    #[serde(default)]
    pub repeat_interval: Option<HumanDuration>,
}

impl AlertChannel {
    /// The events the channel takes; None: all.
    pub fn events(&self) -> Option<&[String]> {
        match self {
            AlertChannel::Webhook(w) => w.events.as_deref(),
            AlertChannel::Command(c) => c.events.as_deref(),
            AlertChannel::Email(e) => e.events.as_deref(),
        }
    }

    /// Whether the channel takes `event`.
    pub fn takes(&self, event: &str) -> bool {
        self.events().is_none_or(|e| e.iter().any(|x| x == event))
    }

    /// At most one alert per (job, step, event) in this time.
    pub fn repeat_interval(&self) -> std::time::Duration {
        let d = match self {
            AlertChannel::Webhook(w) => w.repeat_interval,
            AlertChannel::Command(c) => c.repeat_interval,
            AlertChannel::Email(e) => e.repeat_interval,
        };
        d.map_or(std::time::Duration::from_secs(3600), |d| d.0)
    }

    /// Secret values to mask in output (header values).
    pub fn secrets(&self) -> Vec<String> {
        match self {
            AlertChannel::Webhook(w) => w.headers.values().cloned().collect(),
            AlertChannel::Command(_) => Vec::new(),
            AlertChannel::Email(e) => e.password.iter().cloned().collect(),
        }
    }
}
