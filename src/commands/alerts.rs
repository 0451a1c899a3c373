//! `cranium alerts`: what was sent and what failed; `cranium alerts test CHANNEL`.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use super::run::{load_runnable, runtime_and_store, RunsFormat};
use super::{table, EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::alerts::{deliver, Notifier};
use crate::store::AlertState;

/// `cranium alerts [--job J] [--limit N] [--format table|json]`.
pub fn list(
    project: Option<&Path>,
    job: Option<&str>,
    limit: usize,
    format: RunsFormat,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let c = match load_runnable(project, err) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (rt, store) = match runtime_and_store(&c, err) {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    let alerts = match rt.block_on(store.alerts(job, limit)) {
        Ok(a) => a,
        Err(e) => {
            let _ = writeln!(err, "error: metadata store: {e}");
            return EXIT_FAILED;
        }
    };
    match format {
        RunsFormat::Json => {
            let v: Vec<serde_json::Value> = alerts
                .iter()
                .map(|a| {
                    serde_json::json!({
                        "id": a.id,
                        "channel": a.channel,
                        "event": a.event,
                        "job": a.job,
                        "step": a.step,
                        "interval_start": a.interval_start.map(|t| t.to_rfc3339()),
                        "run_id": a.run_id,
                        "summary": a.summary,
                        "state": a.state.as_str(),
                        "tries": a.tries,
                        "next_try_at": a.next_try_at.to_rfc3339(),
                        "last_error": a.last_error,
                        "created_at": a.created_at.to_rfc3339(),
                        "sent_at": a.sent_at.map(|t| t.to_rfc3339()),
                        "payload": a.payload,
                    })
                })
                .collect();
            let _ = writeln!(out, "{}", serde_json::Value::Array(v));
        }
        RunsFormat::Table => {
            let mut rows = vec![[
                "ID".to_string(),
                "RAISED (UTC)".to_string(),
                "CHANNEL".to_string(),
                "EVENT".to_string(),
                "JOB".to_string(),
                "STATE".to_string(),
                "TRIES".to_string(),
                "SUMMARY / LAST ERROR".to_string(),
            ]];
            for a in &alerts {
                let text = match (a.state, &a.last_error) {
                    (AlertState::Failed | AlertState::Queued, Some(e)) => {
                        format!("{} (last error: {e})", a.summary)
                    }
                    _ => a.summary.clone(),
                };
                rows.push([
                    a.id.to_string(),
                    a.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    a.channel.clone(),
                    a.event.clone(),
                    [a.job.as_deref(), a.step.as_deref()]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join("."),
                    a.state.as_str().to_string(),
                    a.tries.to_string(),
                    text.chars().take(160).collect(),
                ]);
            }
            let _ = write!(out, "{}", table(&rows));
        }
    }
    EXIT_OK
}

/// `cranium alerts test CHANNEL`: queues a test alert and sends it now.
pub fn test(
    project: Option<&Path>,
    channel: &str,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let c = match load_runnable(project, err) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if !c.project.alerts.contains_key(channel) {
        let _ = writeln!(
            err,
            "error: unknown alert channel '{channel}'{}",
            crate::diag::did_you_mean(channel, c.project.alerts.keys().map(|s| s.as_str()))
        );
        return EXIT_USAGE;
    }
    let (rt, store) = match runtime_and_store(&c, err) {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    rt.block_on(async {
        let n = Notifier::new(c.project.clone(), store.clone());
        let id = match n.test(channel).await {
            Ok(id) => id,
            Err(e) => {
                let _ = writeln!(err, "error: metadata store: {e}");
                return EXIT_FAILED;
            }
        };
        deliver::drain(&c.project, &store, Duration::from_secs(60)).await;
        let sent = store
            .alerts(None, 200)
            .await
            .ok()
            .and_then(|v| v.into_iter().find(|a| a.id == id));
        match sent {
            Some(a) if a.state == AlertState::Sent => {
                let _ = writeln!(out, "sent a test alert to '{channel}' (alert {id})");
                EXIT_OK
            }
            Some(a) => {
                let _ = writeln!(
                    err,
                    "error: the test alert to '{channel}' was not sent: {} (alert {id}, {}; it is retried with backoff, see `cranium alerts`)",
                    a.last_error.unwrap_or_else(|| "not tried yet".into()),
                    a.state
                );
                EXIT_FAILED
            }
            None => {
                let _ = writeln!(err, "error: the test alert {id} is not in the store");
                EXIT_FAILED
            }
        }
    })
}
