//! A job file (`jobs/*.yaml`) as written: the job's schedule and settings, and its steps.
//!
//! Each step is a mapping with the fields every step has ([`StepCommon`]: `id`, `kind`, `after`, retry and
//! timeout overrides) next to the fields of its kind (`crate::steps`). The two are split apart before
//! deserialising, so both halves can deny unknown fields and a typo in either gets a "did you mean".

use indexmap::IndexMap;
use serde::Deserialize;

use super::types::HumanDuration;

/// The whole job file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    /// The job's name, unique across the project.
    pub job: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub owner: Option<String>,
    /// Cron (5 fields, or 6 with seconds first) or `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`.
    pub schedule: String,
    /// IANA time zone the schedule and templates use (default: project default, else UTC).
    #[serde(default)]
    pub timezone: Option<String>,
    /// First logical interval start (`2026-01-01`, or a time); a naive time is in the job's time zone.
    pub start: String,
    /// No interval starting at or after this time is run.
    #[serde(default)]
    pub end: Option<String>,
    /// Whether the daemon runs the intervals missed while it was down (default false: only the latest).
    #[serde(default)]
    pub catchup: Option<bool>,
    /// How many intervals of this job may run at once (default 1).
    #[serde(default)]
    pub max_active_runs: Option<u32>,
    /// Rank of this job's steps when steps wait for slots: higher first (default 0; submitted
    /// backfills rank at -1000 unless `--priority` says otherwise).
    #[serde(default)]
    pub priority: Option<i32>,
    /// Free values that templates read as `params.NAME`.
    #[serde(default)]
    pub params: IndexMap<String, serde_json::Value>,
    /// Alert channels (names from `cranium.yaml`).
    #[serde(default)]
    pub alerts: Option<Vec<String>>,
    /// Alert when an interval has not succeeded this long after the interval's end.
    #[serde(default)]
    pub sla: Option<HumanDuration>,
    /// Defaults for this job's steps.
    #[serde(default)]
    pub defaults: StepDefaults,
    #[serde(default)]
    pub tags: Vec<String>,
    /// The steps, each a mapping with `id` and `kind`.
    #[serde(default)]
    pub steps: Vec<serde_yaml::Value>,
}

/// Retry and timeout settings, at job level (`defaults:`) and per step.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDefaults {
    /// How many times to retry a failed attempt (default 0).
    #[serde(default)]
    pub retries: Option<u32>,
    /// Wait before the first retry (default 30s).
    #[serde(default)]
    pub retry_delay: Option<HumanDuration>,
    /// Multiply the delay by this after each retry (default 2.0); jitter is added and the delay capped.
    #[serde(default)]
    pub retry_backoff: Option<f64>,
    /// Cancel an attempt that runs longer than this.
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
}

/// The fields every step has, whatever its kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepCommon {
    /// Unique within the job.
    pub id: String,
    /// One of the step kinds.
    pub kind: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Steps this one waits for: `step` (same job), `job.step` or `job` (another job, same logical interval).
    #[serde(default)]
    pub after: Vec<String>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default)]
    pub retry_delay: Option<HumanDuration>,
    #[serde(default)]
    pub retry_backoff: Option<f64>,
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// The pool (from `pools:` in `cranium.yaml`) whose slots this step takes while it runs.
    #[serde(default)]
    pub pool: Option<String>,
}

impl StepCommon {
    /// The keys of [`StepCommon`], split from the kind's own fields before deserialising.
    pub const FIELDS: [&'static str; 9] = [
        "id",
        "kind",
        "description",
        "after",
        "retries",
        "retry_delay",
        "retry_backoff",
        "timeout",
        "pool",
    ];
}
