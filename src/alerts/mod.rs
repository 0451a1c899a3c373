//! Alerts: every failure reaches a person once.
//!
//! The engine and the daemon *raise* alerts ([`Notifier::raise`]); raising only writes them to the
//! store's queue, one row per channel that takes the event, so a slow or dead channel never
//! blocks a step or the scheduler, and a restart loses nothing. The queue applies each channel's
//! throttle (one alert per job, step and event per `repeat_interval`; the next one says how many
//! were held back) and remembers which conditions are open, so that the step's next success sends
//! a `resolved` notice. A [`deliver`] loop sends what is due, records every try, and retries a
//! failed send with backoff for two days.
//!
//! Channels ([`channels`]): `webhook` (cranium's JSON, a Slack message, or a minijinja template of
//! the body), `command` (the alert as JSON on standard input and as `CRANIUM_ALERT_*` variables).

pub mod channels;
pub mod deliver;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::project::Project;
use crate::schedule::Interval;
use crate::store::{Enqueued, NewAlert, Store};

pub use channels::{send, ALERT_TIMEOUT};

/// One alert, as every channel receives it (cranium's JSON).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Alert {
    pub event: String,
    pub project: String,
    pub job: Option<String>,
    pub step: Option<String>,
    pub interval_start: Option<DateTime<Utc>>,
    pub interval_end: Option<DateTime<Utc>>,
    pub run_id: Option<i64>,
    pub attempt: Option<u32>,
    /// One line for people.
    pub summary: String,
    /// Whatever else the event knows (the error, counts, the reload's errors).
    pub details: serde_json::Value,
    /// Where to look: the attempt's log file, or its dashboard page when `daemon.public_url` is
    /// set.
    pub link: Option<String>,
    pub at: DateTime<Utc>,
}

impl Alert {
    /// An alert of `event` with its summary; the rest is filled in with the builder methods.
    pub fn new(project: &Project, event: &str, summary: impl Into<String>) -> Alert {
        Alert {
            event: event.to_string(),
            project: project.name.clone(),
            job: None,
            step: None,
            interval_start: None,
            interval_end: None,
            run_id: None,
            attempt: None,
            summary: summary.into(),
            details: serde_json::Value::Object(Default::default()),
            link: None,
            at: Utc::now(),
        }
    }

    pub fn job(mut self, job: &str) -> Alert {
        self.job = Some(job.to_string());
        self
    }

    pub fn step(mut self, step: &str) -> Alert {
        self.step = Some(step.to_string());
        self
    }

    pub fn interval(mut self, iv: Interval) -> Alert {
        self.interval_start = Some(iv.start);
        self.interval_end = Some(iv.end);
        self
    }

    pub fn run(mut self, run_id: i64, attempt: Option<u32>) -> Alert {
        self.run_id = Some(run_id);
        self.attempt = attempt;
        self
    }

    pub fn details(mut self, details: serde_json::Value) -> Alert {
        self.details = details;
        self
    }

    pub fn link(mut self, link: Option<String>) -> Alert {
        self.link = link;
        self
    }

    /// What the throttle counts by (and, for connection alerts, the connection).
    fn throttle_key(&self) -> String {
        let mut key = format!(
            "{}|{}|{}",
            self.job.as_deref().unwrap_or(""),
            self.step.as_deref().unwrap_or(""),
            self.event
        );
        if let Some(c) = self.details.get("connection").and_then(|c| c.as_str()) {
            key.push('|');
            key.push_str(c);
        }
        key
    }
}

/// Called for every alert queued (`false`) or held back by a throttle (`true`): channel, event.
pub type OnQueued = Arc<dyn Fn(&str, &str, bool) + Send + Sync>;

/// Raises alerts into the store's queue for the channels that take them.
#[derive(Clone)]
pub struct Notifier {
    pub project: Arc<Project>,
    pub store: Store,
    /// Counts what was queued and suppressed (the daemon's metrics).
    pub on_queued: Option<OnQueued>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("project", &self.project.name)
            .finish()
    }
}

impl Notifier {
    pub fn new(project: Arc<Project>, store: Store) -> Notifier {
        Notifier {
            project,
            store,
            on_queued: None,
        }
    }

    fn counted(&self, channel: &str, event: &str, suppressed: bool) {
        if let Some(f) = &self.on_queued {
            f(channel, event, suppressed);
        }
    }

    /// The channels of `job` (its `alerts:`), or of the project (`defaults.alerts`, else every
    /// channel) for events without a job.
    fn channels_for(&self, job: Option<&str>) -> Vec<String> {
        let p = &self.project;
        match job.and_then(|j| p.job(j)) {
            Some(j) => j.alerts.clone(),
            None => p
                .defaults
                .alerts
                .clone()
                .unwrap_or_else(|| p.alerts.keys().cloned().collect()),
        }
    }

    /// Queues `alert` for every channel of its job that takes its event. A failure to queue is
    /// logged (an alert never changes a step's outcome).
    pub async fn raise(&self, mut alert: Alert) {
        // With a dashboard, the link is the run's page (the log path stays in the details).
        if let (Some(url), Some(job), Some(run)) =
            (&self.project.daemon.public_url, &alert.job, alert.run_id)
        {
            alert.link = Some(format!("{url}/jobs/{job}/runs/{run}"));
        }
        let payload = match serde_json::to_value(&alert) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!("an alert cannot be written as JSON: {e}");
                return;
            }
        };
        let key = alert.throttle_key();
        for name in self.channels_for(alert.job.as_deref()) {
            let Some(channel) = self.project.alerts.get(&name) else {
                continue;
            };
            if !channel.takes(&alert.event) {
                continue;
            }
            let new = NewAlert {
                channel: name.clone(),
                event: alert.event.clone(),
                job: alert.job.clone(),
                step: alert.step.clone(),
                interval_start: alert.interval_start,
                run_id: alert.run_id,
                summary: self.project.redactor.redact(&alert.summary),
                payload: payload.clone(),
                throttle_key: (alert.event != "resolved" && alert.event != "test")
                    .then(|| key.clone()),
                repeat_interval: channel.repeat_interval(),
            };
            match self.store.enqueue_alert(&new).await {
                Ok(Enqueued::Queued { id, .. }) => {
                    self.counted(&name, &alert.event, false);
                    tracing::info!(channel = name, event = alert.event, id, "alert queued")
                }
                Ok(Enqueued::Suppressed { .. }) => {
                    self.counted(&name, &alert.event, true);
                    tracing::info!(
                        channel = name,
                        event = alert.event,
                        "alert suppressed by the channel's repeat_interval"
                    )
                }
                Err(e) => tracing::error!(channel = name, "queueing an alert: {e}"),
            }
        }
    }

    /// The condition `event` of `job` (and `step`) cleared: channels that were told of it get a
    /// `resolved` notice.
    pub async fn resolve(&self, job: &str, step: Option<&str>, event: &str, summary: &str) {
        let key = format!("{job}|{}|{event}", step.unwrap_or(""));
        for name in self.channels_for(Some(job)) {
            match self.store.close_alert_condition(&name, &key).await {
                Ok(true) => {
                    let mut a = Alert::new(&self.project, "resolved", summary).job(job);
                    if let Some(s) = step {
                        a = a.step(s);
                    }
                    a.details = serde_json::json!({ "resolves": event });
                    // Only to the channel that was told.
                    self.raise_to(&name, a).await;
                }
                Ok(false) => {}
                Err(e) => tracing::error!(channel = name, "closing an alert condition: {e}"),
            }
        }
    }

    async fn raise_to(&self, channel: &str, alert: Alert) {
        let Ok(payload) = serde_json::to_value(&alert) else {
            return;
        };
        let repeat_interval = self
            .project
            .alerts
            .get(channel)
            .map(|c| c.repeat_interval())
            .unwrap_or_default();
        let new = NewAlert {
            channel: channel.to_string(),
            event: alert.event.clone(),
            job: alert.job.clone(),
            step: alert.step.clone(),
            interval_start: alert.interval_start,
            run_id: alert.run_id,
            summary: self.project.redactor.redact(&alert.summary),
            payload,
            throttle_key: None,
            repeat_interval,
        };
        if let Err(e) = self.store.enqueue_alert(&new).await {
            tracing::error!(channel, "queueing an alert: {e}");
        }
    }

    /// Queues a test alert for `channel` (for `cranium alerts test`).
    pub async fn test(&self, channel: &str) -> Result<i64, crate::store::StoreError> {
        let alert = Alert::new(
            &self.project,
            "test",
            format!(
                "test alert from cranium ({}) to '{channel}'",
                self.project.name
            ),
        );
        let payload = serde_json::to_value(&alert).unwrap_or_default();
        let new = NewAlert {
            channel: channel.to_string(),
            event: "test".into(),
            job: None,
            step: None,
            interval_start: None,
            run_id: None,
            summary: alert.summary.clone(),
            payload,
            throttle_key: None,
            repeat_interval: std::time::Duration::ZERO,
        };
        match self.store.enqueue_alert(&new).await? {
            Enqueued::Queued { id, .. } | Enqueued::Suppressed { id } => Ok(id),
        }
    }
}
