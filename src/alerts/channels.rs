//! Sending one alert on one channel.
//!
//! * `webhook`: an HTTP POST (HTTPS with the system's roots) of cranium's JSON, a Slack
//!   incoming-webhook message (`format: slack`), or a minijinja `template` of the body that sees
//!   `alert`; with the channel's headers; within its `timeout` (default 10s). Any 2xx is success.
//! * `command`: the program (relative paths from the project root, run in it) gets the alert as one
//!   JSON object on standard input and as `CRANIUM_ALERT_EVENT`, `_JOB`, `_STEP`, `_SUMMARY`,
//!   `_RUN_ID`, `_LINK` variables; exit 0 is success; within its `timeout` (default 30s).

use std::process::Stdio;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use tokio::io::AsyncWriteExt;

use crate::config::project::{AlertChannel, EmailAlert, SmtpTls, WebhookAlert, WebhookFormat};
use crate::project::Project;

/// How long a command channel may take unless it says.
pub const ALERT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a webhook request may take unless it says.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `alert` to each of `channels` at once (no queue); returns one message per channel that
/// failed. The `validate` step uses it for its mismatches.
pub async fn send(
    project: &Project,
    channels: &[String],
    alert: &serde_json::Value,
) -> Vec<String> {
    let mut failures = Vec::new();
    for name in channels {
        let result = match project.alerts.get(name) {
            None => Err("no such alert channel".to_string()),
            Some(c) => send_one(project, c, alert).await,
        };
        if let Err(e) = result {
            failures.push(format!("alert channel '{name}': {e}"));
        }
    }
    failures
}

/// Sends `alert` on `channel`.
pub async fn send_one(
    project: &Project,
    channel: &AlertChannel,
    alert: &serde_json::Value,
) -> Result<(), String> {
    let result = match channel {
        AlertChannel::Command(c) => {
            let timeout = c.timeout.map_or(ALERT_TIMEOUT, |t| t.0);
            run_command(project, &c.command, alert, timeout).await
        }
        AlertChannel::Webhook(w) => post(w, alert).await,
        AlertChannel::Email(e) => email(e, alert).await,
    };
    result.map_err(|e| project.redactor.redact(&e))
}

/// The webhook's body and content type.
pub fn webhook_body(w: &WebhookAlert, alert: &serde_json::Value) -> Result<String, String> {
    if let Some(t) = &w.template {
        let env = minijinja::Environment::new();
        let tmpl = env
            .template_from_str(t)
            .map_err(|e| format!("the template does not compile: {e}"))?;
        return tmpl
            .render(minijinja::context! { alert => crate::template::json_to_value(alert) })
            .map_err(|e| format!("rendering the template: {e}"));
    }
    let body = match w.format {
        WebhookFormat::Json => alert.clone(),
        WebhookFormat::Slack => slack_message(alert),
    };
    serde_json::to_string(&body).map_err(|e| e.to_string())
}

/// A Slack incoming-webhook message: the summary as text, a header, the fields, the link.
pub fn slack_message(alert: &serde_json::Value) -> serde_json::Value {
    let s = |k: &str| alert.get(k).and_then(|v| v.as_str()).unwrap_or("");
    let event = s("event");
    let emoji = match event {
        "resolved" | "run_recovered" | "test" => ":white_check_mark:",
        _ => ":rotating_light:",
    };
    let mut fields = Vec::new();
    for (label, key) in [
        ("Job", "job"),
        ("Step", "step"),
        ("Interval", "interval_start"),
        ("Event", "event"),
    ] {
        if !s(key).is_empty() {
            fields.push(
                serde_json::json!({ "type": "mrkdwn", "text": format!("*{label}*\n{}", s(key)) }),
            );
        }
    }
    if let Some(run) = alert.get("run_id").and_then(|v| v.as_i64()) {
        fields.push(serde_json::json!({ "type": "mrkdwn", "text": format!("*Run*\n{run}") }));
    }
    let mut blocks = vec![
        serde_json::json!({
            "type": "header",
            "text": { "type": "plain_text", "text": format!("cranium: {event} in {}", s("project")) }
        }),
        serde_json::json!({
            "type": "section",
            "text": { "type": "mrkdwn", "text": format!("{emoji} {}", s("summary")) }
        }),
    ];
    if !fields.is_empty() {
        blocks.push(serde_json::json!({ "type": "section", "fields": fields }));
    }
    if !s("link").is_empty() {
        blocks.push(serde_json::json!({
            "type": "context",
            "elements": [{ "type": "mrkdwn", "text": format!("log: {}", s("link")) }]
        }));
    }
    serde_json::json!({ "text": format!("{emoji} {}", s("summary")), "blocks": blocks })
}

async fn post(w: &WebhookAlert, alert: &serde_json::Value) -> Result<(), String> {
    let body = webhook_body(w, alert)?;
    let timeout = w.timeout.map_or(WEBHOOK_TIMEOUT, |t| t.0);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| format!("no TLS roots: {e}"))?
        .https_or_http()
        .enable_http1()
        .build();
    let client: hyper_util::client::legacy::Client<_, Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https);
    let mut req = hyper::Request::post(&w.url).header("content-type", "application/json");
    for (k, v) in &w.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(|e| format!("bad request for {}: {e}", crate::db::redact_url(&w.url)))?;
    let call = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("POST {}: {e}", crate::db::redact_url(&w.url)))?;
        let status = resp.status();
        let text = resp
            .into_body()
            .collect()
            .await
            .map(|b| {
                String::from_utf8_lossy(&b.to_bytes())
                    .chars()
                    .take(300)
                    .collect::<String>()
            })
            .unwrap_or_default();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!(
                "POST {} answered {status}: {}",
                crate::db::redact_url(&w.url),
                text.trim()
            ))
        }
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "POST {} did not answer within {timeout:?}",
            crate::db::redact_url(&w.url)
        )),
    }
}

/// The e-mail of an alert: subject and plain-text body.
pub fn email_text(alert: &serde_json::Value) -> (String, String) {
    let s = |k: &str| alert.get(k).and_then(|v| v.as_str()).unwrap_or("");
    let subject = format!(
        "[cranium {}] {}: {}",
        s("project"),
        s("event"),
        s("summary")
    );
    let mut body = format!("{}\n\n", s("summary"));
    for (label, key) in [
        ("event", "event"),
        ("job", "job"),
        ("step", "step"),
        ("interval start", "interval_start"),
        ("interval end", "interval_end"),
        ("log", "link"),
    ] {
        if !s(key).is_empty() {
            body.push_str(&format!("{label}: {}\n", s(key)));
        }
    }
    if let Some(run) = alert.get("run_id").and_then(|v| v.as_i64()) {
        body.push_str(&format!("run: {run}\n"));
    }
    if let Some(d) = alert
        .get("details")
        .filter(|d| d.as_object().is_some_and(|m| !m.is_empty()))
    {
        body.push_str(&format!(
            "\ndetails:\n{}\n",
            serde_json::to_string_pretty(d).unwrap_or_default()
        ));
    }
    // One line: a subject must not carry a newline.
    (
        subject
            .replace(['\r', '\n'], " ")
            .chars()
            .take(200)
            .collect(),
        body,
    )
}

async fn email(e: &EmailAlert, alert: &serde_json::Value) -> Result<(), String> {
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let (subject, body) = email_text(alert);
    let mut msg = Message::builder()
        .from(
            e.from
                .parse()
                .map_err(|x| format!("from '{}': {x}", e.from))?,
        )
        .subject(subject);
    for to in &e.to {
        msg = msg.to(to.parse().map_err(|x| format!("to '{to}': {x}"))?);
    }
    let msg = msg
        .body(body)
        .map_err(|x| format!("building the message: {x}"))?;
    let timeout = e.timeout.map_or(ALERT_TIMEOUT, |t| t.0);
    let builder = match e.tls {
        SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&e.smtp_host)
            .map_err(|x| format!("smtp {}: {x}", e.smtp_host))?
            .port(e.smtp_port.unwrap_or(587)),
        SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&e.smtp_host)
            .map_err(|x| format!("smtp {}: {x}", e.smtp_host))?
            .port(e.smtp_port.unwrap_or(465)),
        SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&e.smtp_host)
            .port(e.smtp_port.unwrap_or(25)),
    };
    let mut builder = builder.timeout(Some(timeout));
    if let Some(user) = &e.username {
        builder = builder.credentials(lettre::transport::smtp::authentication::Credentials::new(
            user.clone(),
            e.password.clone().unwrap_or_default(),
        ));
    }
    let mailer = builder.build();
    match tokio::time::timeout(timeout, mailer.send(msg)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(x)) => Err(format!("smtp {}: {x}", e.smtp_host)),
        Err(_) => Err(format!(
            "smtp {} did not answer within {timeout:?}",
            e.smtp_host
        )),
    }
}

async fn run_command(
    project: &Project,
    command: &[String],
    alert: &serde_json::Value,
    timeout: Duration,
) -> Result<(), String> {
    let Some((program, args)) = command.split_first() else {
        return Err("the command is empty".into());
    };
    let program = if program.contains('/') && !program.starts_with('/') {
        project.root.join(program).display().to_string()
    } else {
        program.clone()
    };
    let field = |k: &str| match alert.get(k) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => String::new(),
        Some(v) => v.to_string(),
    };
    let mut child = tokio::process::Command::new(&program)
        .args(args)
        .current_dir(&project.root)
        .env("CRANIUM_ALERT_EVENT", field("event"))
        .env("CRANIUM_ALERT_JOB", field("job"))
        .env("CRANIUM_ALERT_STEP", field("step"))
        .env("CRANIUM_ALERT_SUMMARY", field("summary"))
        .env("CRANIUM_ALERT_RUN_ID", field("run_id"))
        .env("CRANIUM_ALERT_LINK", field("link"))
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
    match tokio::time::timeout(timeout, run).await {
        Err(_) => Err(format!("{program} did not finish within {timeout:?}")),
        Ok(Err(e)) => Err(e),
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("{program} exited with {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> serde_json::Value {
        serde_json::json!({
            "event": "step_failed", "project": "p", "job": "events_daily", "step": "load",
            "interval_start": "2026-03-01T00:00:00Z", "run_id": 7, "summary": "load failed: boom",
            "link": ".cranium/logs/x.log"
        })
    }

    fn webhook(yaml: &str) -> WebhookAlert {
        serde_yaml::from_str(yaml).expect("webhook config")
    }

    #[test]
    fn bodies_in_each_format() {
        let json = webhook_body(&webhook("url: http://x/"), &alert()).expect("json");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&json).expect("json"),
            alert()
        );
        let slack =
            webhook_body(&webhook("url: http://x/\nformat: slack"), &alert()).expect("slack");
        let v: serde_json::Value = serde_json::from_str(&slack).expect("json");
        assert_eq!(v["text"], ":rotating_light: load failed: boom");
        assert_eq!(v["blocks"][0]["type"], "header");
        assert!(slack.contains("*Job*\\nevents_daily"), "{slack}");
        let pd = webhook_body(
            &webhook(
                "url: http://x/\ntemplate: '{\"routing_key\": \"k\", \"dedup_key\": \"{{ alert.job }}-{{ alert.step }}\", \"payload\": {\"summary\": {{ alert.summary | tojson }}}}'",
            ),
            &alert(),
        )
        .expect("template");
        let v: serde_json::Value = serde_json::from_str(&pd).expect("rendered JSON");
        assert_eq!(v["dedup_key"], "events_daily-load");
        assert_eq!(v["payload"]["summary"], "load failed: boom");
    }
}
