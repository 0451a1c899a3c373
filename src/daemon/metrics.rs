//! The daemon's Prometheus metrics, served at `/metrics` in the Prometheus text format.
//!
//! Names are `cranium_<area>_<name>_<unit>`, counters end in `_total`, times are in seconds, and
//! labels are bounded (job, step, state, pool, topic, partition, result; never a run id). Each
//! daemon has a recorder of its own (the `metrics` crate's Prometheus exporter, not installed as
//! the global recorder), so several daemons in one test process never mix their figures.

use std::sync::Arc;

use metrics::{Key, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::store::{ConsumerLag, RunState, StepState};

/// Histogram buckets for durations (seconds): 5 ms to an hour.
const SECONDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

const META: Metadata<'static> = Metadata::new("cranium", Level::INFO, Some("cranium::daemon"));

/// The daemon's metrics: cheap to clone (shared inside).
#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn labels(pairs: &[(&'static str, &str)]) -> Vec<Label> {
    pairs
        .iter()
        .map(|(k, v)| Label::new(*k, v.to_string()))
        .collect()
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::build(PrometheusBuilder::new())
    }

    /// The metrics of daemon `id`: every series carries `daemon="ID"`, so the series of several
    /// daemons on one store stay apart when one Prometheus scrapes them all.
    pub fn for_daemon(id: &str) -> Metrics {
        Metrics::build(PrometheusBuilder::new().add_global_label("daemon", id))
    }

    fn build(builder: PrometheusBuilder) -> Metrics {
        // Buckets are valid (non-empty): the error cannot happen; fall back to summaries if it did.
        let builder = match builder.set_buckets(SECONDS) {
            Ok(b) => b,
            Err(_) => PrometheusBuilder::new(),
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let m = Metrics {
            recorder: Arc::new(recorder),
            handle,
        };
        m.describe();
        m.gauge(
            "cranium_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1.0,
        );
        m
    }

    fn describe(&self) {
        let r = &self.recorder;
        let c = |name: &'static str, unit: Option<Unit>, help: &'static str| {
            r.describe_counter(name.into(), unit, help.into())
        };
        c(
            "cranium_runs_total",
            None,
            "Runs that ended, by job and state.",
        );
        c(
            "cranium_step_attempts_total",
            None,
            "Step attempts that ended, by job, step and state (failed attempts that were retried count as up_for_retry).",
        );
        c(
            "cranium_step_retries_total",
            None,
            "Retries of steps, by job and step.",
        );
        c(
            "cranium_step_rows_total",
            None,
            "Rows moved or affected by succeeded steps (records extracted, rows exported and loaded), by job and step.",
        );
        c(
            "cranium_step_bytes_total",
            Some(Unit::Bytes),
            "Bytes written by succeeded steps, by job and step.",
        );
        c(
            "cranium_kafka_dead_letters_total",
            None,
            "Records that kafka_to_s3 steps wrote as dead letters, by job and step.",
        );
        c(
            "cranium_validate_differences_total",
            None,
            "Differences that validate steps found, by job and step.",
        );
        c(
            "cranium_reloads_total",
            None,
            "Project reloads, by result (success, refused).",
        );
        c(
            "cranium_alerts_total",
            None,
            "Alerts by channel, event and outcome (queued, suppressed by the throttle, sent, failed tries).",
        );
        c(
            "cranium_scheduler_skipped_intervals_total",
            None,
            "Intervals passed over (catchup: false), by job.",
        );
        let h = |name: &'static str, help: &'static str| {
            r.describe_histogram(name.into(), Some(Unit::Seconds), help.into())
        };
        h(
            "cranium_step_duration_seconds",
            "How long steps took (all attempts), by job and step.",
        );
        h(
            "cranium_scheduler_delay_seconds",
            "From a scheduled interval's end to the start of its first step, by job.",
        );
        h(
            "cranium_scheduler_loop_duration_seconds",
            "How long one pass of the scheduling loop took.",
        );
        let g = |name: &'static str, help: &'static str| {
            r.describe_gauge(name.into(), None, help.into())
        };
        g("cranium_build_info", "The running version (always 1).");
        g(
            "cranium_daemon_leader",
            "1 while this daemon is the leader (makes the scheduling decisions), else 0.",
        );
        g("cranium_pool_slots", "Slots of each pool.");
        g("cranium_pool_used_slots", "Slots of each pool in use.");
        g("cranium_scheduler_running_steps", "Steps running now.");
        g(
            "cranium_scheduler_max_running_steps",
            "The daemon's limit on steps running at once.",
        );
        g(
            "cranium_scheduler_queued_steps",
            "Steps ready to start but waiting for a slot.",
        );
        g("cranium_scheduler_active_runs", "Runs in progress.");
        g(
            "cranium_kafka_consumer_lag_records",
            "How far each kafka_to_s3 step's consumer group is behind a partition, as last recorded.",
        );
    }

    fn counter(&self, name: &'static str, l: &[(&'static str, &str)], by: u64) {
        let key = Key::from_parts(name, labels(l));
        self.recorder.register_counter(&key, &META).increment(by);
    }

    fn gauge(&self, name: &'static str, l: &[(&'static str, &str)], value: f64) {
        let key = Key::from_parts(name, labels(l));
        self.recorder.register_gauge(&key, &META).set(value);
    }

    fn histogram(&self, name: &'static str, l: &[(&'static str, &str)], value: f64) {
        let key = Key::from_parts(name, labels(l));
        self.recorder.register_histogram(&key, &META).record(value);
    }

    /// A run ended.
    pub fn run_ended(&self, job: &str, state: RunState) {
        self.counter(
            "cranium_runs_total",
            &[("job", job), ("state", state.as_str())],
            1,
        );
    }

    /// A step ended after `attempts` attempts, in `state`, having taken `seconds`.
    pub fn step_ended(&self, job: &str, step: &str, state: StepState, attempts: u32, seconds: f64) {
        let retried = attempts.saturating_sub(1);
        if retried > 0 {
            self.counter(
                "cranium_step_attempts_total",
                &[("job", job), ("step", step), ("state", "up_for_retry")],
                u64::from(retried),
            );
            self.counter(
                "cranium_step_retries_total",
                &[("job", job), ("step", step)],
                u64::from(retried),
            );
        }
        if attempts > 0 {
            self.counter(
                "cranium_step_attempts_total",
                &[("job", job), ("step", step), ("state", state.as_str())],
                1,
            );
            self.histogram(
                "cranium_step_duration_seconds",
                &[("job", job), ("step", step)],
                seconds,
            );
        }
    }

    /// What a succeeded step moved, from its report and outputs.
    pub fn step_moved(
        &self,
        job: &str,
        step: &str,
        rows: Option<i64>,
        bytes: Option<i64>,
        outputs: Option<&serde_json::Map<String, serde_json::Value>>,
    ) {
        let l = [("job", job), ("step", step)];
        if let Some(r) = rows.filter(|r| *r > 0) {
            self.counter("cranium_step_rows_total", &l, r as u64);
        }
        if let Some(b) = bytes.filter(|b| *b > 0) {
            self.counter("cranium_step_bytes_total", &l, b as u64);
        }
        let get = |k: &str| outputs.and_then(|o| o.get(k)).and_then(|v| v.as_u64());
        if let Some(n) = get("dead_letters") {
            self.counter("cranium_kafka_dead_letters_total", &l, n);
        }
        if let Some(n) = get("differences") {
            self.counter("cranium_validate_differences_total", &l, n);
        }
    }

    /// The delay of a scheduled interval's first step.
    pub fn schedule_delay(&self, job: &str, seconds: f64) {
        self.histogram("cranium_scheduler_delay_seconds", &[("job", job)], seconds);
    }

    /// An alert queued, suppressed, sent, or a failed try (`outcome`).
    pub fn alert(&self, channel: &str, event: &str, outcome: &str) {
        self.counter(
            "cranium_alerts_total",
            &[("channel", channel), ("event", event), ("outcome", outcome)],
            1,
        );
    }

    pub fn skipped(&self, job: &str, n: u64) {
        self.counter(
            "cranium_scheduler_skipped_intervals_total",
            &[("job", job)],
            n,
        );
    }

    pub fn reload(&self, success: bool) {
        let result = if success { "success" } else { "refused" };
        self.counter("cranium_reloads_total", &[("result", result)], 1);
    }

    pub fn loop_pass(&self, seconds: f64) {
        self.histogram("cranium_scheduler_loop_duration_seconds", &[], seconds);
    }

    /// Whether this daemon leads now.
    pub fn leader(&self, leading: bool) {
        self.gauge(
            "cranium_daemon_leader",
            &[],
            if leading { 1.0 } else { 0.0 },
        );
    }

    /// The scheduler's state now.
    pub fn scheduler(
        &self,
        running: usize,
        max_running: usize,
        queued: usize,
        active_runs: usize,
        pools: &[(String, usize, usize)],
    ) {
        self.gauge("cranium_scheduler_running_steps", &[], running as f64);
        self.gauge(
            "cranium_scheduler_max_running_steps",
            &[],
            max_running as f64,
        );
        self.gauge("cranium_scheduler_queued_steps", &[], queued as f64);
        self.gauge("cranium_scheduler_active_runs", &[], active_runs as f64);
        for (name, slots, used) in pools {
            self.gauge("cranium_pool_slots", &[("pool", name)], *slots as f64);
            self.gauge("cranium_pool_used_slots", &[("pool", name)], *used as f64);
        }
    }

    /// The consumer lag recorded in the store, per (job, step, topic, partition).
    pub fn consumer_lag(&self, lags: &[ConsumerLag]) {
        for l in lags {
            let partition = l.partition.to_string();
            self.gauge(
                "cranium_kafka_consumer_lag_records",
                &[
                    ("job", &l.job),
                    ("step", &l.step),
                    ("topic", &l.topic),
                    ("partition", &partition),
                ],
                l.lag as f64,
            );
        }
    }

    /// Keeps histograms' memory bounded (call every few seconds).
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Every metric, in the Prometheus text format.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histograms_by_name() {
        let m = Metrics::new();
        m.run_ended("events_hourly", RunState::Success);
        m.run_ended("events_hourly", RunState::Success);
        m.step_ended("events_hourly", "extract", StepState::Success, 3, 1.5);
        m.schedule_delay("events_hourly", 0.02);
        m.scheduler(1, 16, 4, 1, &[("warehouse".to_string(), 4, 1)]);
        let text = m.render();
        assert!(text.contains("# TYPE cranium_runs_total counter"), "{text}");
        assert!(
            text.contains("cranium_runs_total{job=\"events_hourly\",state=\"success\"} 2"),
            "{text}"
        );
        assert!(
            text.contains(
                "cranium_step_attempts_total{job=\"events_hourly\",step=\"extract\",state=\"up_for_retry\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("cranium_step_retries_total{job=\"events_hourly\",step=\"extract\"} 2")
        );
        assert!(
            text.contains("# TYPE cranium_scheduler_delay_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("cranium_pool_used_slots{pool=\"warehouse\"} 1"),
            "{text}"
        );
        assert!(text.contains("cranium_build_info{version=\""), "{text}");
    }
}
