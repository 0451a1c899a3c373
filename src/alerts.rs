//! Sending an alert to a job's alert channels.
//!
//! A `command` channel runs its program (relative paths from the project root, in the project root)
//! with the alert as one JSON object on standard input, within [`ALERT_TIMEOUT`]. `webhook` channels
//! are defined and checked but not sent yet: alert delivery for every kind of failure (and its
//! webhooks) comes with the alerts work; today the `validate` step sends its mismatches.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::config::project::AlertChannel;
use crate::project::Project;

/// How long one channel may take.
pub const ALERT_TIMEOUT: Duration = Duration::from_secs(30);

/// Send `alert` to each of `channels`; returns one message per channel that failed (the caller logs
/// them: a failed alert never changes a step's outcome).
pub async fn send(
    project: &Project,
    channels: &[String],
    alert: &serde_json::Value,
) -> Vec<String> {
    let mut failures = Vec::new();
    for name in channels {
        let result = match project.alerts.get(name) {
            None => Err("no such alert channel".to_string()),
            Some(AlertChannel::Command(c)) => run_command(project, &c.command, alert).await,
            Some(AlertChannel::Webhook(_)) => {
                Err("webhook channels are not sent yet (use a command channel)".to_string())
            }
        };
        if let Err(e) = result {
            failures.push(format!("alert channel '{name}': {e}"));
        }
    }
    failures
}

async fn run_command(
    project: &Project,
    command: &[String],
    alert: &serde_json::Value,
) -> Result<(), String> {
    let Some((program, args)) = command.split_first() else {
        return Err("the command is empty".into());
    };
    let program = if program.contains('/') && !program.starts_with('/') {
        project.root.join(program).display().to_string()
    } else {
        program.clone()
    };
    let mut child = tokio::process::Command::new(&program)
        .args(args)
        .current_dir(&project.root)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let body = serde_json::to_vec(alert).map_err(|e| e.to_string())?;
    let run = async {
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(&body)
                .await
                .map_err(|e| format!("writing to {program}: {e}"))?;
        }
        child
            .wait()
            .await
            .map_err(|e| format!("waiting for {program}: {e}"))
    };
    match tokio::time::timeout(ALERT_TIMEOUT, run).await {
        Err(_) => Err(format!("{program} did not finish within {ALERT_TIMEOUT:?}")),
        Ok(Err(e)) => Err(e),
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("{program} exited with {status}")),
    }
}
