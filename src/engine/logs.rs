//! Per-attempt logs: every attempt of every step writes its own file, and the same lines go to
//! `tracing` with the run, job, step and attempt as fields.
//!
//! Files live under `.cranium/logs/<job>/<interval start>/<step>/run-<run>-attempt-<n>.log`, as text or, with
//! `--log-format json`, one JSON object per line. Every line passes through the project's redactor, so
//! no secret reaches a log.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use crate::secret::Redactor;

/// Text or JSON lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Log levels a step can write at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        }
    }
}

/// The folder for one interval's logs of one job.
pub fn interval_dir(root: &Path, job: &str, interval_start: DateTime<Utc>) -> PathBuf {
    root.join(".cranium/logs")
        .join(job)
        .join(interval_start.format("%Y%m%dT%H%M%SZ").to_string())
}

/// The log of one attempt.
#[derive(Clone)]
pub struct AttemptLog {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    file: Mutex<Option<std::fs::File>>,
    format: LogFormat,
    redactor: Redactor,
    run_id: i64,
    job: String,
    step: String,
    attempt: u32,
}

impl AttemptLog {
    /// Create (or truncate) the attempt's file. A file that cannot be created degrades to tracing only.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        root: &Path,
        job: &str,
        step: &str,
        interval_start: DateTime<Utc>,
        attempt: u32,
        run_id: i64,
        format: LogFormat,
        redactor: Redactor,
    ) -> AttemptLog {
        let dir = interval_dir(root, job, interval_start).join(step);
        // One file per run and attempt: a rerun of the interval keeps the earlier runs' logs.
        let path = dir.join(format!("run-{run_id}-attempt-{attempt}.log"));
        let file = std::fs::create_dir_all(&dir)
            .and_then(|_| std::fs::File::create(&path))
            .ok();
        AttemptLog {
            inner: Arc::new(Inner {
                path,
                file: Mutex::new(file),
                format,
                redactor,
                run_id,
                job: job.to_string(),
                step: step.to_string(),
                attempt,
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn log(&self, level: Level, message: &str) {
        let i = &self.inner;
        let message = i.redactor.redact(message);
        let now = Utc::now();
        let line = match i.format {
            LogFormat::Text => format!(
                "{} {:5} {}\n",
                now.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                level.as_str(),
                message
            ),
            LogFormat::Json => format!(
                "{}\n",
                serde_json::json!({
                    "time": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    "level": level.as_str(),
                    "run_id": i.run_id,
                    "job": i.job,
                    "step": i.step,
                    "attempt": i.attempt,
                    "message": message,
                })
            ),
        };
        if let Ok(mut f) = i.file.lock() {
            if let Some(f) = f.as_mut() {
                let _ = f.write_all(line.as_bytes());
            }
        }
        match level {
            Level::Debug => {
                tracing::debug!(run_id = i.run_id, job = %i.job, step = %i.step, attempt = i.attempt, "{message}")
            }
            Level::Info => {
                tracing::info!(run_id = i.run_id, job = %i.job, step = %i.step, attempt = i.attempt, "{message}")
            }
            Level::Warn => {
                tracing::warn!(run_id = i.run_id, job = %i.job, step = %i.step, attempt = i.attempt, "{message}")
            }
            Level::Error => {
                tracing::error!(run_id = i.run_id, job = %i.job, step = %i.step, attempt = i.attempt, "{message}")
            }
        }
    }

    pub fn info(&self, message: &str) {
        self.log(Level::Info, message)
    }

    pub fn warn(&self, message: &str) {
        self.log(Level::Warn, message)
    }

    pub fn error(&self, message: &str) {
        self.log(Level::Error, message)
    }
}
