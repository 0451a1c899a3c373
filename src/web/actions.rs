//! What people do from the dashboard: pause and unpause a job, trigger an interval, clear a step
//! (with downstream) for one interval or a filtered set of up to 1,000, submit a backfill from a
//! preview that lists exactly the intervals it will run, and cancel a request.
//!
//! Every action is a POST that [`Web::authorize`]s (token, same origin), carries a one-time
//! `nonce` from its form, and is recorded in the store with who did it before it is carried
//! out: a second submit of the same form finds its nonce used and does nothing. The outcome is
//! recorded too, and shown on the page the action returns to.

use std::collections::HashMap;

use axum::extract::{Form, Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use super::auth::url_encode;
use super::pages::PageCx;
use super::{iso, parse_start, Web, WebError};
use crate::engine::RunOptions;
use crate::project::Job;
use crate::schedule::Interval;
use crate::store::{NewAction, RequestKind, StepState};

/// At most this many intervals are cleared by one action.
pub const CLEAR_MAX: usize = 1000;
/// The rank of a dashboard backfill's steps (as `cranium backfill --submit`'s default).
const BACKFILL_PRIORITY: i32 = -1000;

type Fields = HashMap<String, String>;

fn field<'a>(f: &'a Fields, name: &str) -> Option<&'a str> {
    f.get(name).map(|s| s.trim()).filter(|s| !s.is_empty())
}

/// Where to go back to: a local path from the form, else the job's page.
fn back_to(f: &Fields, job: &str) -> String {
    match field(f, "back") {
        Some(b) if b.starts_with('/') && !b.starts_with("//") && !b.contains('\\') => b.to_string(),
        _ => format!("/jobs/{}", url_encode(job)),
    }
}

fn with_param(path: &str, key: &str, value: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    // A fragment stays at the end.
    let (p, frag) = match path.split_once('#') {
        Some((p, f)) => (p, format!("#{f}")),
        None => (path, String::new()),
    };
    format!("{p}{sep}{key}={}{frag}", url_encode(value))
}

/// Checks who acts and records the action; `Ok(None)`: this form was submitted before.
async fn begin(
    web: &Web,
    headers: &HeaderMap,
    f: &Fields,
    action: &str,
    job: Option<&str>,
    detail: serde_json::Value,
) -> Result<Option<i64>, WebError> {
    let who = web.authorize(headers)?;
    let Some(nonce) = field(f, "nonce") else {
        return Err(WebError::bad_request(
            "the form carries no nonce: reload the page and submit it again",
        ));
    };
    let id = web
        .store()
        .record_action(&NewAction {
            nonce: nonce.to_string(),
            who,
            action: action.to_string(),
            job: job.map(str::to_string),
            detail,
        })
        .await?;
    Ok(id)
}

/// Records how the action went and goes back with the message.
async fn finish(
    web: &Web,
    id: Option<i64>,
    outcome: Result<String, String>,
    back: &str,
) -> Result<Response, WebError> {
    let Some(id) = id else {
        return Ok(Redirect::to(&with_param(
            back,
            "msg",
            "already done: this form was submitted before, so nothing was done again",
        ))
        .into_response());
    };
    let (text, key, msg) = match &outcome {
        Ok(m) => (format!("done: {m}"), "msg", m.clone()),
        Err(e) => (format!("failed: {e}"), "error", e.clone()),
    };
    web.store().set_action_outcome(id, &text).await?;
    Ok(Redirect::to(&with_param(back, key, &msg)).into_response())
}

fn job_of<'a>(engine: &'a crate::engine::Engine, name: &str) -> Result<&'a Job, WebError> {
    engine
        .project
        .job(name)
        .ok_or_else(|| WebError::not_found(format!("no job '{name}' in the loaded project")))
}

async fn set_paused(
    web: Web,
    headers: HeaderMap,
    job: String,
    f: Fields,
    paused: bool,
) -> Result<Response, WebError> {
    let engine = web.engine();
    job_of(&engine, &job)?;
    let word = if paused { "pause" } else { "unpause" };
    let id = begin(&web, &headers, &f, word, Some(&job), serde_json::json!({})).await?;
    let outcome = if id.is_some() {
        match web.store().set_paused(&job, paused).await {
            Ok(true) if paused => Ok(format!("paused {job}: no new runs until it is unpaused")),
            Ok(true) => Ok(format!("unpaused {job}: it is scheduled again")),
            Ok(false) => Ok(format!("{job} was already {word}d")),
            Err(e) => Err(format!("the metadata store: {e}")),
        }
    } else {
        Ok(String::new())
    };
    finish(&web, id, outcome, &back_to(&f, &job)).await
}

/// `POST /jobs/{job}/pause`.
pub async fn pause(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(job): Path<String>,
    Form(f): Form<Fields>,
) -> Result<Response, WebError> {
    set_paused(web, headers, job, f, true).await
}

/// `POST /jobs/{job}/unpause`.
pub async fn unpause(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(job): Path<String>,
    Form(f): Form<Fields>,
) -> Result<Response, WebError> {
    set_paused(web, headers, job, f, false).await
}

/// The interval a form names: `start` (an interval start), else `at` (a time inside it, in the
/// job's zone unless it says otherwise), else the latest that has ended.
fn interval_of_form(j: &Job, f: &Fields) -> Result<Interval, String> {
    let t = match (field(f, "start"), field(f, "at")) {
        (Some(s), _) => parse_start(s).map_err(|e| e.message)?,
        (None, Some(a)) => crate::schedule::parse_time(a, j.timezone).map_err(|e| e.to_string())?,
        (None, None) => {
            let end = j
                .calendar
                .schedule
                .prev_at_or_before(Utc::now())
                .ok_or_else(|| format!("{} has no interval that has ended yet", j.name))?;
            end - TimeDelta::seconds(1)
        }
    };
    j.calendar
        .interval_at(t)
        .ok_or_else(|| format!("{} is outside the schedule of {}", iso(t), j.name))
}

/// `POST /jobs/{job}/trigger` (`start` or `at`): asks the daemon to run that interval now.
pub async fn trigger(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(job): Path<String>,
    Form(f): Form<Fields>,
) -> Result<Response, WebError> {
    let engine = web.engine();
    let j = job_of(&engine, &job)?;
    let iv = interval_of_form(j, &f);
    let detail = match &iv {
        Ok(iv) => serde_json::json!({ "start": iso(iv.start), "end": iso(iv.end) }),
        Err(e) => serde_json::json!({ "error": e }),
    };
    let id = begin(&web, &headers, &f, "trigger", Some(&job), detail.clone()).await?;
    let outcome = match (id, iv) {
        (None, _) => Ok(String::new()),
        (Some(_), Err(e)) => Err(e),
        (Some(_), Ok(iv)) => match web
            .store()
            .submit_request(RequestKind::Trigger, &job, &detail, j.priority)
            .await
        {
            Ok(rid) => Ok(format!(
                "request {rid}: run {job} for the interval starting {} (a daemon starts it within a second)",
                iso(iv.start)
            )),
            Err(e) => Err(format!("the metadata store: {e}")),
        },
    };
    finish(&web, id, outcome, &back_to(&f, &job)).await
}

/// The steps a clear selects: `step` (all when empty), with everything downstream in the job
/// when `downstream` is set.
fn cleared_steps(
    engine: &crate::engine::Engine,
    j: &Job,
    f: &Fields,
) -> Result<Vec<String>, String> {
    let step = field(f, "step");
    let downstream = field(f, "downstream").is_some();
    let Some(step) = step else {
        return Ok(Vec::new());
    };
    let opts = RunOptions {
        steps: vec![step.to_string()],
        downstream,
        ..RunOptions::default()
    };
    let selected = engine.select(j, &opts).map_err(|e| e.to_string())?;
    Ok(j.steps
        .iter()
        .zip(&selected)
        .filter(|(_, s)| **s)
        .map(|(s, _)| s.id.clone())
        .collect())
}

/// `POST /jobs/{job}/clear`: `step` (all when empty) and `downstream`, for the interval `start`,
/// or for the intervals starting in [`from`, `to`) (`only=failed`: those where a chosen step
/// failed), at most [`CLEAR_MAX`]. The steps run again on the next run of those intervals.
pub async fn clear(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(job): Path<String>,
    Form(f): Form<Fields>,
) -> Result<Response, WebError> {
    let engine = web.engine();
    let j = job_of(&engine, &job)?;
    let steps = cleared_steps(&engine, j, &f);
    let range: Result<(DateTime<Utc>, DateTime<Utc>), String> = match field(&f, "start") {
        Some(s) => parse_start(s)
            .map(|t| (t, t + TimeDelta::seconds(1)))
            .map_err(|e| e.message),
        None => match (field(&f, "from"), field(&f, "to")) {
            (Some(a), Some(b)) => {
                let a = crate::schedule::parse_time(a, j.timezone).map_err(|e| e.to_string());
                let b = crate::schedule::parse_time(b, j.timezone).map_err(|e| e.to_string());
                match (a, b) {
                    (Ok(a), Ok(b)) if a < b => Ok((a, b)),
                    (Ok(_), Ok(_)) => {
                        Err("the range is empty or reversed: `from` must be before `to`".into())
                    }
                    (Err(e), _) | (_, Err(e)) => Err(e),
                }
            }
            _ => Err("say which interval (`start`) or which range (`from` and `to`)".into()),
        },
    };
    let detail = serde_json::json!({
        "step": field(&f, "step"),
        "downstream": field(&f, "downstream").is_some(),
        "only": field(&f, "only"),
        "from": range.as_ref().ok().map(|r| iso(r.0)),
        "to": range.as_ref().ok().map(|r| iso(r.1)),
    });
    let id = begin(&web, &headers, &f, "clear", Some(&job), detail).await?;
    let outcome = if id.is_none() {
        Ok(String::new())
    } else {
        match (steps, range) {
            (Err(e), _) | (_, Err(e)) => Err(e),
            (Ok(ids), Ok((from, to))) => {
                clear_range(&web, j, &ids, from, to, field(&f, "only")).await
            }
        }
    };
    finish(&web, id, outcome, &back_to(&f, &job)).await
}

async fn clear_range(
    web: &Web,
    j: &Job,
    ids: &[String],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    only: Option<&str>,
) -> Result<String, String> {
    let intervals = j.calendar.intervals(from, to);
    if intervals.len() > CLEAR_MAX {
        return Err(format!(
            "that is {} intervals: clear at most {CLEAR_MAX} at once (narrow the range)",
            intervals.len()
        ));
    }
    let what = if ids.is_empty() {
        "every step".to_string()
    } else {
        ids.join(", ")
    };
    let store_err = |e: crate::store::StoreError| format!("the metadata store: {e}");
    match only {
        None => {
            let n = web
                .store()
                .clear(&j.name, from, to, ids)
                .await
                .map_err(store_err)?;
            Ok(format!(
                "cleared {n} step record(s) of {} ({what}) for {} interval(s); they run again on the next run",
                j.name,
                intervals.len()
            ))
        }
        Some("failed") => {
            let recs = web
                .store()
                .step_states(&j.name, from, to)
                .await
                .map_err(store_err)?;
            let mut starts: Vec<DateTime<Utc>> = recs
                .iter()
                .filter(|r| ids.is_empty() || ids.contains(&r.step))
                .filter(|r| matches!(r.state, StepState::Failed | StepState::UpstreamFailed))
                .map(|r| r.interval.start)
                .collect();
            starts.sort();
            starts.dedup();
            let mut n = 0;
            for s in &starts {
                n += web
                    .store()
                    .clear(&j.name, *s, *s + TimeDelta::seconds(1), ids)
                    .await
                    .map_err(store_err)?;
            }
            Ok(format!(
                "cleared {n} step record(s) of {} ({what}) in the {} interval(s) where they failed",
                j.name,
                starts.len()
            ))
        }
        Some(other) => Err(format!("only={other}: the filter can only be `failed`")),
    }
}

#[derive(Serialize)]
struct PreviewRow {
    start: String,
    end: String,
}

/// What a backfill form asks for, checked: the range and the intervals in it.
struct Backfill {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    intervals: Vec<Interval>,
}

fn backfill_of(j: &Job, f: &Fields) -> Result<Option<Backfill>, String> {
    let (Some(a), Some(b)) = (field(f, "from"), field(f, "to")) else {
        return Ok(None);
    };
    let from = crate::schedule::parse_time(a, j.timezone).map_err(|e| format!("from: {e}"))?;
    let to = crate::schedule::parse_time(b, j.timezone).map_err(|e| format!("to: {e}"))?;
    if from >= to {
        return Err(format!(
            "the range {a} .. {b} is empty or reversed: `from` must be before `to`; nothing was submitted"
        ));
    }
    let intervals = j.calendar.intervals(from, to);
    if intervals.is_empty() {
        return Err(format!(
            "no interval of {} starts in {a} .. {b}; nothing was submitted",
            j.name
        ));
    }
    Ok(Some(Backfill {
        from,
        to,
        intervals,
    }))
}

/// `GET /jobs/{job}/backfill?from=&to=&steps=&rerun=`: the form, and the exact intervals it
/// would run (a range that is empty or reversed is an inline error).
pub async fn backfill_preview(cx: PageCx, Path(job): Path<String>) -> Result<Response, WebError> {
    let (web, q) = (&cx.web, &cx.q);
    let engine = web.engine();
    let j = job_of(&engine, &job)?;
    let (rows, count, error) = match backfill_of(j, q) {
        Ok(Some(b)) => (
            b.intervals
                .iter()
                .take(1000)
                .map(|iv| PreviewRow {
                    start: iso(iv.start),
                    end: iso(iv.end),
                })
                .collect::<Vec<_>>(),
            b.intervals.len(),
            None,
        ),
        Ok(None) => (Vec::new(), 0, None),
        Err(e) => (Vec::new(), 0, Some(e)),
    };
    let ctx = minijinja::context! {
        job => minijinja::context! { name => j.name.clone(), href => format!("/jobs/{}", url_encode(&j.name)), timezone => j.timezone.name() },
        from => field(q, "from"),
        to => field(q, "to"),
        steps => field(q, "steps"),
        rerun => field(q, "rerun").unwrap_or("none"),
        intervals => super::pages::ser(rows),
        count => count,
        preview_error => error,
    };
    cx.render(
        "backfill.html",
        "backfill",
        format!("Backfill {}", j.name),
        ctx,
    )
}

/// `POST /jobs/{job}/backfill`: submits the previewed backfill as a request for the daemon.
pub async fn backfill(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(job): Path<String>,
    Form(f): Form<Fields>,
) -> Result<Response, WebError> {
    let engine = web.engine();
    let j = job_of(&engine, &job)?;
    let preview = format!("/jobs/{}/backfill", url_encode(&job));
    let checked = match backfill_of(j, &f) {
        Ok(Some(b)) => Ok(b),
        Ok(None) => Err("give `from` and `to`".to_string()),
        Err(e) => Err(e),
    };
    let steps: Vec<String> = field(&f, "steps")
        .map(|s| {
            s.split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let rerun = match field(&f, "rerun").unwrap_or("none") {
        r @ ("none" | "failed" | "all") => Ok(r),
        other => Err(format!("rerun={other}: choose none, failed or all")),
    };
    // Bad input goes back to the preview with its error, before anything is recorded.
    let (b, rerun) = match (checked, rerun) {
        (Ok(b), Ok(r)) => (b, r),
        (Err(e), _) | (_, Err(e)) => {
            web.authorize(&headers)?;
            let back = format!(
                "{preview}?from={}&to={}",
                url_encode(field(&f, "from").unwrap_or("")),
                url_encode(field(&f, "to").unwrap_or(""))
            );
            return Ok(Redirect::to(&with_param(&back, "error", &e)).into_response());
        }
    };
    if let Err(e) = engine.select(
        j,
        &RunOptions {
            steps: steps.clone(),
            ..RunOptions::default()
        },
    ) {
        web.authorize(&headers)?;
        return Ok(Redirect::to(&with_param(&preview, "error", &e.to_string())).into_response());
    }
    let spec = serde_json::json!({
        "from": b.from.to_rfc3339(),
        "to": b.to.to_rfc3339(),
        "steps": steps,
        "downstream": false,
        "rerun": rerun,
        "max_active_runs": serde_json::Value::Null,
    });
    let id = begin(&web, &headers, &f, "backfill", Some(&job), spec.clone()).await?;
    let outcome = if id.is_none() {
        Ok(String::new())
    } else {
        match web
            .store()
            .submit_request(RequestKind::Backfill, &job, &spec, BACKFILL_PRIORITY)
            .await
        {
            Ok(rid) => Ok(format!(
                "request {rid}: backfill of {job} over {} interval(s) from {} to {}",
                b.intervals.len(),
                iso(b.from),
                iso(b.to)
            )),
            Err(e) => Err(format!("the metadata store: {e}")),
        }
    };
    finish(&web, id, outcome, "/requests").await
}

/// `POST /requests/{id}/cancel`.
pub async fn cancel(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(f): Form<Fields>,
) -> Result<Response, WebError> {
    let job = web.store().request(id).await?.map(|r| r.job);
    let aid = begin(
        &web,
        &headers,
        &f,
        "cancel",
        job.as_deref(),
        serde_json::json!({ "request": id }),
    )
    .await?;
    let outcome = if aid.is_none() {
        Ok(String::new())
    } else {
        match web.store().cancel_request(id).await {
            Ok(true) => Ok(format!(
                "request {id} cancelled: its running intervals stop, no more start"
            )),
            Ok(false) => Err(format!(
                "request {id} is not open (it ended, or does not exist)"
            )),
            Err(e) => Err(format!("the metadata store: {e}")),
        }
    };
    finish(&web, aid, outcome, "/requests").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_added_to_the_way_back() {
        assert_eq!(
            with_param("/jobs/a", "msg", "ok done"),
            "/jobs/a?msg=ok%20done"
        );
        assert_eq!(with_param("/jobs/a?n=30", "msg", "x"), "/jobs/a?n=30&msg=x");
        assert_eq!(
            with_param("/jobs/a#grid", "error", "x"),
            "/jobs/a?error=x#grid"
        );
    }

    #[test]
    fn the_way_back_stays_on_the_dashboard() {
        let f: Fields = [("back".to_string(), "//evil.example/".to_string())].into();
        assert_eq!(back_to(&f, "j"), "/jobs/j");
        let f: Fields = [("back".to_string(), "/requests".to_string())].into();
        assert_eq!(back_to(&f, "j"), "/requests");
    }
}
