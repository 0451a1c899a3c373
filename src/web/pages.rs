//! The dashboard's pages (GET): jobs, job, interval and run, lag, validation, alerts, requests,
//! daemons and the audit of actions. Each handler reads the store and the loaded project, builds
//! plain views, and renders one template; the pictures come from [`super::svg`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};

use axum::extract::{Path, Query};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use petgraph::Direction;
use serde::Serialize;

use super::auth::url_encode;
use super::{iso, page_tz, parse_start, svg, Web, WebError};
use crate::project::Job;
use crate::schedule::{Calendar, Interval};
use crate::store::{AttemptRecord, RunFilter, RunRecord, StepIntervalRecord, StepState};

/// Intervals in the job page's grid by default, and at most.
pub const GRID_DEFAULT: usize = 100;
pub const GRID_MAX: usize = 1000;
/// Intervals in the jobs page's strip.
const STRIP: usize = 30;

/// A view for the templates.
pub(super) fn ser<T: Serialize>(v: T) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(v))
}

/// The query string that keeps the page's time zone on links (`?tz=…` or empty).
fn tz_query(tz: Tz) -> String {
    if tz == chrono_tz::UTC {
        String::new()
    } else {
        format!("?tz={}", url_encode(tz.name()))
    }
}

/// What every page handler starts from: the dashboard, the request's headers and query, and the
/// page's time zone (`?tz=`, checked here: an unknown zone is a 400 before the handler runs).
pub(super) struct PageCx {
    pub web: Web,
    pub headers: HeaderMap,
    pub q: HashMap<String, String>,
    pub tz: Tz,
}

impl axum::extract::FromRequestParts<Web> for PageCx {
    type Rejection = WebError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        web: &Web,
    ) -> Result<PageCx, WebError> {
        let Query(q) = Query::<HashMap<String, String>>::from_request_parts(parts, web)
            .await
            .map_err(|e| WebError::bad_request(e.body_text()))?;
        let tz = page_tz(&q)?;
        Ok(PageCx {
            web: web.clone(),
            headers: parts.headers.clone(),
            q,
            tz,
        })
    }
}

impl PageCx {
    /// Renders `template` with the page's own `ctx` over what every page gets.
    pub(super) fn render(
        &self,
        template: &str,
        page: &str,
        title: String,
        ctx: minijinja::Value,
    ) -> Result<Response, WebError> {
        let ctx = minijinja::context! {
            ..ctx,
            ..base_ctx(&self.web, &self.headers, &self.q, page, title, self.tz)
        };
        Ok(self.web.render(template, ctx)?.into_response())
    }
}

/// What every page's template gets.
fn base_ctx(
    web: &Web,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    page: &str,
    title: String,
    tz: Tz,
) -> minijinja::Value {
    minijinja::context! {
        page => page,
        title => title,
        tz => tz.name(),
        tzq => tz_query(tz),
        zones => zones(web),
        writable => web.writable(),
        viewer => web.viewer(headers),
        msg => q.get("msg"),
        error => q.get("error"),
        now => iso(Utc::now()),
        css => super::assets::url("app.css"),
        js => super::assets::url("app.js"),
    }
}

/// UTC and every job's zone: what the page's zone can be switched to.
fn zones(web: &Web) -> Vec<String> {
    let mut z: Vec<String> = web
        .engine()
        .project
        .jobs
        .iter()
        .map(|j| j.timezone.name().to_string())
        .collect();
    z.push("UTC".into());
    z.sort();
    z.dedup();
    z
}

/// The end of the page's window: `?until=T` (a date or time, UTC unless it says otherwise), else
/// now. A permalink with `until` shows the same intervals tomorrow.
fn window_end(q: &HashMap<String, String>) -> Result<DateTime<Utc>, WebError> {
    match q.get("until").filter(|s| !s.is_empty()) {
        None => Ok(Utc::now()),
        Some(s) => crate::schedule::parse_time(s, chrono_tz::UTC)
            .map_err(|e| WebError::bad_request(format!("until={s}: {e}"))),
    }
}

/// The `n` latest intervals of `cal` that have ended by `now`, newest first.
pub fn recent_intervals(cal: &Calendar, now: DateTime<Utc>, n: usize) -> Vec<Interval> {
    let mut out = Vec::with_capacity(n);
    let Some(mut end) = cal.schedule.prev_at_or_before(now) else {
        return out;
    };
    if let Some(e) = cal.end {
        // Nothing after the job's end: its last interval ends at the next fire time after it.
        if end > e {
            match cal.schedule.next_after(e - TimeDelta::seconds(1)) {
                Some(t) => end = end.min(cal.schedule.next_after(t).unwrap_or(end)),
                None => return out,
            }
        }
    }
    while out.len() < n {
        let Some(start) = cal.schedule.prev_at_or_before(end - TimeDelta::seconds(1)) else {
            break;
        };
        if start < cal.start {
            break;
        }
        if cal.end.is_none_or(|e| start < e) {
            out.push(Interval { start, end });
        }
        end = start;
    }
    out
}

/// One state for an interval of a job, from its steps' states: running, failed, success,
/// pending, or none (no record).
pub(super) fn overall(states: impl Iterator<Item = StepState>) -> &'static str {
    let (mut any, mut running, mut failed, mut open) = (false, false, false, false);
    for s in states {
        any = true;
        match s {
            StepState::Running => running = true,
            StepState::Failed | StepState::UpstreamFailed => failed = true,
            StepState::Pending | StepState::UpForRetry => open = true,
            StepState::Success | StepState::Skipped => {}
        }
    }
    match (any, running, failed, open) {
        (false, ..) => "none",
        (_, true, ..) => "running",
        (_, _, true, _) => "failed",
        (_, _, _, true) => "pending",
        _ => "success",
    }
}

#[derive(Serialize)]
struct Failure {
    step: String,
    start: String,
}

#[derive(Serialize)]
struct JobRow {
    name: String,
    href: String,
    owner: String,
    schedule: String,
    timezone: String,
    next_fire: Option<String>,
    paused: bool,
    strip: String,
    latest: &'static str,
    sla: &'static str,
    failure: Option<Failure>,
    tags: Vec<String>,
}

/// `GET /?q=&owner=&state=`: every job, the last intervals as a strip, what failed last.
pub async fn jobs(cx: PageCx) -> Result<Response, WebError> {
    let (web, q) = (&cx.web, &cx.q);
    let engine = web.engine();
    let now = window_end(q)?;
    let paused: HashSet<String> = web
        .store()
        .paused_jobs()
        .await?
        .into_iter()
        .map(|(j, _)| j)
        .collect();
    let name_q = q
        .get("q")
        .map(|s| s.to_lowercase())
        .filter(|s| !s.is_empty());
    let owner_q = q.get("owner").filter(|s| !s.is_empty());
    let state_q = q.get("state").filter(|s| !s.is_empty());
    let mut rows = Vec::new();
    for j in &engine.project.jobs {
        if name_q
            .as_ref()
            .is_some_and(|n| !j.name.to_lowercase().contains(n))
        {
            continue;
        }
        if owner_q.is_some_and(|o| j.owner.as_deref() != Some(o.as_str())) {
            continue;
        }
        let ivs = recent_intervals(&j.calendar, now, STRIP);
        let recs = match (ivs.last(), ivs.first()) {
            (Some(old), Some(new)) => {
                web.store()
                    .step_states(&j.name, old.start, new.start + TimeDelta::seconds(1))
                    .await?
            }
            _ => Vec::new(),
        };
        let mut by_start: HashMap<DateTime<Utc>, Vec<&StepIntervalRecord>> = HashMap::new();
        for r in &recs {
            by_start.entry(r.interval.start).or_default().push(r);
        }
        let states: Vec<&'static str> = ivs
            .iter()
            .map(|iv| {
                overall(
                    by_start
                        .get(&iv.start)
                        .into_iter()
                        .flatten()
                        .map(|r| r.state),
                )
            })
            .collect();
        let latest = states.first().copied().unwrap_or("none");
        let is_paused = paused.contains(&j.name);
        if let Some(s) = state_q {
            let keep = match s.as_str() {
                "paused" => is_paused,
                other => latest == other,
            };
            if !keep {
                continue;
            }
        }
        let failure = recs
            .iter()
            .filter(|r| matches!(r.state, StepState::Failed))
            .max_by_key(|r| (r.interval.start, r.updated_at))
            .map(|r| Failure {
                step: r.step.clone(),
                start: iso(r.interval.start),
            });
        let sla = match (j.sla, ivs.first()) {
            (None, _) => "none",
            (Some(_), None) => "none",
            (Some(sla), Some(iv)) => {
                if latest == "success" {
                    "met"
                } else if now > iv.end + sla {
                    "missed"
                } else {
                    "waiting"
                }
            }
        };
        let base_href = format!("/jobs/{}", url_encode(&j.name));
        rows.push(JobRow {
            href: base_href.clone(),
            strip: svg::strip(
                &states,
                &ivs.iter().map(|iv| iv.start).collect::<Vec<_>>(),
                &base_href,
            ),
            name: j.name.clone(),
            owner: j.owner.clone().unwrap_or_default(),
            schedule: j.calendar.schedule.expr().to_string(),
            timezone: j.timezone.name().to_string(),
            next_fire: j.calendar.next_due(Utc::now()).map(|iv| iso(iv.end)),
            paused: is_paused,
            latest,
            sla,
            failure,
            tags: j.tags.clone(),
        });
    }
    let owners: Vec<String> = {
        let mut o: Vec<String> = engine
            .project
            .jobs
            .iter()
            .filter_map(|j| j.owner.clone())
            .collect();
        o.sort();
        o.dedup();
        o
    };
    let ctx = minijinja::context! {
        jobs => ser(rows),
        owners => owners,
        q => q.get("q"),
        until => q.get("until"),
        owner => q.get("owner"),
        state => q.get("state"),
        job_names => engine.project.jobs.iter().map(|j| j.name.clone()).collect::<Vec<_>>(),
    };
    cx.render("jobs.html", "jobs", "Jobs".into(), ctx)
}

fn job_of<'a>(engine: &'a crate::engine::Engine, name: &str) -> Result<&'a Job, WebError> {
    engine.project.job(name).ok_or_else(|| {
        WebError::not_found(format!(
            "no job '{name}' in the loaded project{}",
            crate::diag::did_you_mean(name, engine.project.jobs.iter().map(|j| j.name.as_str()))
        ))
    })
}

/// The job's DAG with its cross-job neighbours, laid out (cached per definition).
fn dag_layout(
    web: &Web,
    engine: &crate::engine::Engine,
    j: &Job,
) -> std::sync::Arc<svg::DagLayout> {
    let g = &engine.graph;
    let own = g.job_steps(&j.name);
    let mut index: HashMap<petgraph::graph::NodeIndex, usize> = HashMap::new();
    let mut nodes = Vec::new();
    for st in &j.steps {
        if let Some(n) = g.node(&j.name, &st.id) {
            index.insert(n, nodes.len());
            nodes.push(svg::DagNode {
                id: st.id.clone(),
                foreign: false,
            });
        }
    }
    let mut edges = Vec::new();
    for &n in &own {
        for dir in [Direction::Incoming, Direction::Outgoing] {
            for m in g.graph.neighbors_directed(n, dir) {
                let mi = match index.get(&m) {
                    Some(&i) => i,
                    None => {
                        let id = g.graph[m].to_string();
                        index.insert(m, nodes.len());
                        nodes.push(svg::DagNode { id, foreign: true });
                        nodes.len() - 1
                    }
                };
                let ni = index[&n];
                let e = if dir == Direction::Incoming {
                    (mi, ni)
                } else {
                    (ni, mi)
                };
                if !edges.contains(&e) {
                    edges.push(e);
                }
            }
        }
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    j.source.text.hash(&mut h);
    for n in &nodes {
        n.id.hash(&mut h);
    }
    edges.hash(&mut h);
    web.layout_of(&j.name, h.finish(), || svg::layout(nodes, edges))
}

#[derive(Serialize)]
struct RunRow {
    id: i64,
    href: String,
    start: String,
    end: String,
    state: &'static str,
    trigger: &'static str,
    created: String,
    duration: Option<String>,
    owner: Option<String>,
}

fn run_row(r: &RunRecord) -> RunRow {
    RunRow {
        id: r.id,
        href: format!("/jobs/{}/runs/{}", url_encode(&r.job), r.id),
        start: iso(r.interval.start),
        end: iso(r.interval.end),
        state: r.state.as_str(),
        trigger: r.trigger.as_str(),
        created: iso(r.created_at),
        duration: match (r.started_at, r.ended_at) {
            (Some(s), Some(e)) => Some(svg::fmt_ms((e - s).num_milliseconds())),
            _ => None,
        },
        owner: r.owner.clone(),
    }
}

/// `GET /jobs/{job}?n=&at=&tz=`: the DAG, the grid, run durations, recent runs, the job file.
pub async fn job(cx: PageCx, Path(name): Path<String>) -> Result<Response, WebError> {
    let (web, q, tz) = (&cx.web, &cx.q, cx.tz);
    let engine = web.engine();
    let j = job_of(&engine, &name)?;
    let n = match q.get("n").filter(|s| !s.is_empty()) {
        None => GRID_DEFAULT,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=GRID_MAX).contains(&n) => n,
            _ => {
                return Err(WebError::bad_request(format!(
                    "n={s}: show between 1 and {GRID_MAX} intervals"
                )))
            }
        },
    };
    let now = window_end(q)?;
    let ivs = recent_intervals(&j.calendar, now, n);
    let recs = match (ivs.last(), ivs.first()) {
        (Some(old), Some(new)) => {
            web.store()
                .step_states(&j.name, old.start, new.start + TimeDelta::seconds(1))
                .await?
        }
        _ => Vec::new(),
    };
    let rows: Vec<String> = j.steps.iter().map(|s| s.id.clone()).collect();
    let row_of: HashMap<&str, usize> = rows
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i))
        .collect();
    let col_of: HashMap<DateTime<Utc>, usize> = ivs
        .iter()
        .enumerate()
        .map(|(i, iv)| (iv.start, i))
        .collect();
    let mut cells: HashMap<(usize, usize), &'static str> = HashMap::new();
    for r in &recs {
        if let (Some(&c), Some(&row)) = (col_of.get(&r.interval.start), row_of.get(r.step.as_str()))
        {
            cells.insert((c, row), r.state.as_str());
        }
    }
    let starts: Vec<DateTime<Utc>> = ivs.iter().map(|iv| iv.start).collect();
    let grid = svg::grid(&rows, &starts, tz, |c, r| cells.get(&(c, r)).copied());
    // The DAG shows the chosen interval (the newest by default).
    let selected = match q.get("at").filter(|s| !s.is_empty()) {
        Some(s) => Some(parse_start(s)?),
        None => ivs.first().map(|iv| iv.start),
    };
    let sel_states: HashMap<&str, &'static str> = recs
        .iter()
        .filter(|r| Some(r.interval.start) == selected)
        .map(|r| (r.step.as_str(), r.state.as_str()))
        .collect();
    let layout = dag_layout(web, &engine, j);
    let job_href = format!("/jobs/{}", url_encode(&j.name));
    let dag = svg::dag(
        &layout,
        |i| {
            let node = &layout.nodes[i];
            if node.foreign {
                None
            } else {
                sel_states.get(node.id.as_str()).copied()
            }
        },
        |i| {
            let node = &layout.nodes[i];
            if node.foreign {
                let other = node.id.split('.').next().unwrap_or("");
                format!("/jobs/{}", url_encode(other))
            } else {
                match selected {
                    Some(s) => format!("{job_href}/intervals/{}#step-{}", iso(s), node.id),
                    None => job_href.clone(),
                }
            }
        },
    );
    let runs = web
        .store()
        .runs(&RunFilter {
            job: Some(j.name.clone()),
            state: None,
            limit: 200,
        })
        .await?;
    let mut points: Vec<(DateTime<Utc>, f64)> = runs
        .iter()
        .filter_map(|r| match (r.started_at, r.ended_at) {
            (Some(s), Some(e)) => Some((s, (e - s).num_milliseconds() as f64 / 1000.0)),
            _ => None,
        })
        .collect();
    points.sort_by_key(|p| p.0);
    let paused = web
        .store()
        .paused_jobs()
        .await?
        .into_iter()
        .any(|(p, _)| p == j.name);
    let latest = ivs.first().map(|iv| iso(iv.start));
    let ctx = minijinja::context! {
        job => minijinja::context! {
            name => j.name.clone(),
            href => job_href.clone(),
            description => j.description.clone(),
            owner => j.owner.clone(),
            schedule => j.calendar.schedule.expr().to_string(),
            timezone => j.timezone.name(),
            catchup => j.catchup,
            max_active_runs => j.max_active_runs,
            file => j.source.rel.display().to_string(),
            text => j.source.text.clone(),
            next_fire => j.calendar.next_due(Utc::now()).map(|iv| iso(iv.end)),
            paused => paused,
            steps => rows.clone(),
        },
        n => n,
        until => q.get("until"),
        sizes => [30usize, 100, 300, 1000],
        intervals => ivs.len(),
        selected => selected.map(iso),
        latest => latest,
        grid => minijinja::Value::from_safe_string(grid),
        dag => minijinja::Value::from_safe_string(dag),
        durations => minijinja::Value::from_safe_string(svg::durations(&points)),
        runs => ser(runs.iter().take(20).map(run_row).collect::<Vec<_>>()),
    };
    cx.render("job.html", "job", j.name.clone(), ctx)
}

#[derive(Serialize)]
pub struct AttemptView {
    pub id: i64,
    pub run_id: i64,
    pub step: String,
    pub attempt: u32,
    pub state: &'static str,
    pub started: String,
    pub ended: Option<String>,
    pub duration: Option<String>,
    pub error: Option<String>,
    pub rows: Option<i64>,
    pub bytes: Option<i64>,
    pub outputs: Option<String>,
    pub log: Option<String>,
}

pub fn attempt_view(a: &AttemptRecord) -> AttemptView {
    AttemptView {
        id: a.id,
        run_id: a.run_id,
        step: a.step.clone(),
        attempt: a.attempt,
        state: a.state.as_str(),
        started: iso(a.started_at),
        ended: a.ended_at.map(iso),
        duration: a.duration_ms.map(svg::fmt_ms),
        error: a.error.clone(),
        rows: a.rows_affected,
        bytes: a.bytes,
        outputs: (!a.outputs.is_null())
            .then(|| serde_json::to_string_pretty(&a.outputs).unwrap_or_default()),
        log: a.log_path.as_ref().map(|_| {
            format!(
                "/jobs/{}/intervals/{}/steps/{}/log?attempt={}",
                url_encode(&a.job),
                iso(a.interval.start),
                url_encode(&a.step),
                a.id
            )
        }),
    }
}

/// When each attempt became ready to start: the previous attempt's end (a retry), else the
/// latest end of the step's upstream attempts in the same run, else the run's start.
fn gantt_bars(
    j: &Job,
    attempts: &[AttemptRecord],
    runs: &BTreeMap<i64, RunRecord>,
    now: DateTime<Utc>,
) -> Vec<svg::Bar> {
    let mut bars = Vec::new();
    for (i, a) in attempts.iter().enumerate() {
        let prev = attempts[..i]
            .iter()
            .rev()
            .find(|p| p.step == a.step && p.run_id == a.run_id);
        let waited_from = match prev {
            Some(p) => p.ended_at,
            None => {
                let ups: Vec<String> = j
                    .step(&a.step)
                    .map(|s| {
                        s.after
                            .iter()
                            .filter_map(|d| match d {
                                crate::project::Dep::Name(n) => Some(n.clone()),
                                crate::project::Dep::JobStep(..) => None,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                attempts[..i]
                    .iter()
                    .filter(|u| u.run_id == a.run_id && ups.contains(&u.step))
                    .filter_map(|u| u.ended_at)
                    .max()
                    .or_else(|| runs.get(&a.run_id).and_then(|r| r.started_at))
            }
        };
        bars.push(svg::Bar {
            label: format!("{} #{}", a.step, a.attempt),
            state: a.state.as_str(),
            waited_from,
            started: a.started_at,
            ended: a.ended_at.unwrap_or(now),
        });
    }
    bars
}

#[derive(Serialize)]
struct StepRow {
    id: String,
    state: &'static str,
    attempt: u32,
    updated: Option<String>,
}

/// The interval of `j` that starts at `start`, or a 404 saying which one contains it.
fn interval_of(j: &Job, start: DateTime<Utc>) -> Result<Interval, WebError> {
    match j.calendar.interval_at(start) {
        Some(iv) if iv.start == start => Ok(iv),
        Some(iv) => Err(WebError::not_found(format!(
            "{} is not the start of an interval of {}: the interval containing it starts {}",
            iso(start),
            j.name,
            iso(iv.start)
        ))),
        None => Err(WebError::not_found(format!(
            "{} is outside the schedule of {}",
            iso(start),
            j.name
        ))),
    }
}

async fn interval_page(
    cx: &PageCx,
    j: &Job,
    iv: Interval,
    run: Option<RunRecord>,
) -> Result<Response, WebError> {
    let (web, q) = (&cx.web, &cx.q);
    let recs = web
        .store()
        .step_states(&j.name, iv.start, iv.start + TimeDelta::seconds(1))
        .await?;
    let mut attempts = web.store().attempts(&j.name, iv.start, None).await?;
    if let Some(r) = &run {
        attempts.retain(|a| a.run_id == r.id);
    }
    let only_step = q.get("step").filter(|s| !s.is_empty());
    let mut runs: BTreeMap<i64, RunRecord> = BTreeMap::new();
    for id in attempts.iter().map(|a| a.run_id).collect::<HashSet<_>>() {
        if let Some(r) = web.store().run(id).await? {
            runs.insert(id, r);
        }
    }
    let by_step: HashMap<&str, &StepIntervalRecord> =
        recs.iter().map(|r| (r.step.as_str(), r)).collect();
    let steps: Vec<StepRow> = j
        .steps
        .iter()
        .map(|s| {
            let r = by_step.get(s.id.as_str());
            StepRow {
                id: s.id.clone(),
                state: r.map(|r| r.state.as_str()).unwrap_or("none"),
                attempt: r.map(|r| r.attempt).unwrap_or(0),
                updated: r.map(|r| iso(r.updated_at)),
            }
        })
        .collect();
    let gantt = svg::gantt(&gantt_bars(j, &attempts, &runs, Utc::now()));
    let shown: Vec<AttemptView> = attempts
        .iter()
        .filter(|a| only_step.is_none_or(|s| &a.step == s))
        .map(attempt_view)
        .collect();
    let job_href = format!("/jobs/{}", url_encode(&j.name));
    let title = match &run {
        Some(r) => format!("{} run {}", j.name, r.id),
        None => format!("{} {}", j.name, iso(iv.start)),
    };
    let ctx = minijinja::context! {
        job => minijinja::context! { name => j.name.clone(), href => job_href.clone() },
        start => iso(iv.start),
        end => iso(iv.end),
        interval_href => format!("{job_href}/intervals/{}", iso(iv.start)),
        run => ser(run.as_ref().map(run_row)),
        runs => ser(runs.values().map(run_row).collect::<Vec<_>>()),
        steps => ser(steps),
        step => only_step,
        attempts => ser(shown),
        gantt => minijinja::Value::from_safe_string(gantt),
    };
    let fragment = q.get("fragment").is_some_and(|f| f == "1");
    let page = if fragment {
        "panel.html"
    } else {
        "interval.html"
    };
    cx.render(page, "interval", title, ctx)
}

/// `GET /jobs/{job}/intervals/{start}[?step=S][&fragment=1]`: every attempt of one interval; with
/// `fragment=1` only the panel the grid shows when a cell is clicked (one request).
pub async fn interval(
    cx: PageCx,
    Path((name, start)): Path<(String, String)>,
) -> Result<Response, WebError> {
    let web = &cx.web;
    let engine = web.engine();
    let j = job_of(&engine, &name)?;
    let iv = interval_of(j, parse_start(&start)?)?;
    interval_page(&cx, j, iv, None).await
}

/// `GET /jobs/{job}/runs/{run}`: one run (what alerts link to): its attempts and Gantt.
pub async fn run(
    cx: PageCx,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, WebError> {
    let web = &cx.web;
    let engine = web.engine();
    let j = job_of(&engine, &name)?;
    let id: i64 = id
        .parse()
        .map_err(|_| WebError::bad_request(format!("'{id}' is not a run id")))?;
    let r = match web.store().run(id).await? {
        Some(r) if r.job == j.name => r,
        _ => return Err(WebError::not_found(format!("{name} has no run {id}"))),
    };
    let iv = r.interval;
    interval_page(&cx, j, iv, Some(r)).await
}

#[derive(Serialize)]
struct LagRow {
    job: String,
    step: String,
    topic: String,
    partition: i32,
    committed: i64,
    end: i64,
    lag: i64,
    recorded: String,
}

/// `GET /lag`: consumer lag of every `kafka_to_s3` step, per topic partition.
pub async fn lag(cx: PageCx) -> Result<Response, WebError> {
    let (web, q) = (&cx.web, &cx.q);
    let rows: Vec<LagRow> = web
        .store()
        .consumer_lag(q.get("job").map(String::as_str).filter(|s| !s.is_empty()))
        .await?
        .into_iter()
        .map(|l| LagRow {
            job: l.job,
            step: l.step,
            topic: l.topic,
            partition: l.partition,
            committed: l.committed_offset,
            end: l.end_offset,
            lag: l.lag,
            recorded: iso(l.recorded_at),
        })
        .collect();
    let total: i64 = rows.iter().map(|r| r.lag).sum();
    // Each step's total lag over the last week, as a line.
    let mut history: BTreeMap<(String, String), Vec<svg::Point>> = BTreeMap::new();
    for s in web
        .store()
        .lag_history(Utc::now() - TimeDelta::days(7))
        .await?
    {
        history
            .entry((s.job, s.step))
            .or_default()
            .push((s.recorded_at, s.lag as f64));
    }
    let charts: Vec<_> = history
        .into_iter()
        .map(|((job, step), points)| {
            minijinja::context! {
                job => job,
                step => step,
                samples => points.len(),
                chart => minijinja::Value::from_safe_string(svg::lag_line(&points)),
            }
        })
        .collect();
    let ctx = minijinja::context! {
        rows => ser(rows),
        charts => charts,
        total => total,
    };
    cx.render("lag.html", "lag", "Lag".into(), ctx)
}

/// A column of a differing row: its name, the production value and the warehouse value.
type ColumnValues = (String, String, String);

#[derive(Serialize)]
struct Report {
    job: String,
    step: String,
    start: String,
    state: &'static str,
    equal: Option<bool>,
    counts: Vec<(String, String)>,
    report: Option<String>,
    /// Differing rows: key, then (column, source, target).
    differing: Vec<(String, Vec<ColumnValues>)>,
    missing: Vec<String>,
    extra: Vec<String>,
    href: String,
    /// The step's attempts for the interval before the one reported, newest first.
    earlier: Vec<AttemptView>,
}

fn show(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "NULL".into(),
        other => other.to_string(),
    }
}

fn keys(v: Option<&serde_json::Value>, limit: usize) -> Vec<String> {
    v.and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .take(limit)
                .map(|k| match k.as_array() {
                    Some(parts) => parts.iter().map(show).collect::<Vec<_>>().join(", "),
                    None => show(k),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `GET /validation`: each `validate` step's latest reports (counts, missing, extra and
/// differing rows with both values per column, from the report file when it is local).
pub async fn validation(cx: PageCx) -> Result<Response, WebError> {
    let (web, q) = (&cx.web, &cx.q);
    let engine = web.engine();
    let now = window_end(q)?;
    let mut reports = Vec::new();
    for j in &engine.project.jobs {
        let vsteps: Vec<&str> = j
            .steps
            .iter()
            .filter(|s| matches!(s.config, crate::steps::StepConfig::Validate(_)))
            .map(|s| s.id.as_str())
            .collect();
        if vsteps.is_empty() {
            continue;
        }
        let ivs = recent_intervals(&j.calendar, now, 10);
        let (Some(old), Some(new)) = (ivs.last(), ivs.first()) else {
            continue;
        };
        let recs = web
            .store()
            .step_states(&j.name, old.start, new.start + TimeDelta::seconds(1))
            .await?;
        for r in recs
            .iter()
            .rev()
            .filter(|r| vsteps.contains(&r.step.as_str()))
        {
            let o = &r.outputs;
            let counts = [
                "source_rows",
                "target_rows",
                "differences",
                "missing_in_target",
                "only_in_target",
                "differing",
                "duplicate_keys_in_target",
            ]
            .iter()
            .filter_map(|k| o.get(*k).map(|v| (k.replace('_', " "), show(v))))
            .collect();
            let report_path = o.get("report").and_then(|v| v.as_str()).map(str::to_string);
            let full = report_path
                .as_deref()
                .filter(|p| !p.starts_with("s3://"))
                .and_then(|p| {
                    let path = engine.project.root.join(p);
                    let meta = std::fs::metadata(&path).ok()?;
                    // A report is a few rows per difference; a huge one is linked, not inlined.
                    (meta.len() < 8 << 20).then_some(())?;
                    serde_json::from_slice::<serde_json::Value>(&std::fs::read(path).ok()?).ok()
                });
            let differing = full
                .as_ref()
                .and_then(|f| f.get("differing"))
                .and_then(|d| d.as_array())
                .map(|rows| {
                    rows.iter()
                        .take(50)
                        .map(|row| {
                            let key = row
                                .get("key")
                                .map(|k| match k.as_array() {
                                    Some(parts) => {
                                        parts.iter().map(show).collect::<Vec<_>>().join(", ")
                                    }
                                    None => show(k),
                                })
                                .unwrap_or_default();
                            let cols = row
                                .get("columns")
                                .and_then(|c| c.as_object())
                                .map(|c| {
                                    c.iter()
                                        .map(|(name, v)| {
                                            (
                                                name.clone(),
                                                v.get("source").map(show).unwrap_or_default(),
                                                v.get("target").map(show).unwrap_or_default(),
                                            )
                                        })
                                        .collect()
                                })
                                .unwrap_or_default();
                            (key, cols)
                        })
                        .collect()
                })
                .unwrap_or_default();
            // The attempts before the latest: a mismatch, then the rerun that fixed it.
            let attempts = web
                .store()
                .attempts(&j.name, r.interval.start, Some(&r.step))
                .await?;
            let earlier = attempts.iter().rev().skip(1).map(attempt_view).collect();
            reports.push(Report {
                earlier,
                job: j.name.clone(),
                step: r.step.clone(),
                start: iso(r.interval.start),
                state: r.state.as_str(),
                equal: o.get("equal").and_then(|v| v.as_bool()),
                counts,
                report: report_path,
                differing,
                missing: keys(full.as_ref().and_then(|f| f.get("missing_in_target")), 50),
                extra: keys(full.as_ref().and_then(|f| f.get("only_in_target")), 50),
                href: format!(
                    "/jobs/{}/intervals/{}?step={}",
                    url_encode(&j.name),
                    iso(r.interval.start),
                    url_encode(&r.step)
                ),
            });
        }
    }
    let ctx = minijinja::context! {
        reports => ser(reports),
        until => q.get("until"),
    };
    cx.render("validation.html", "validation", "Validation".into(), ctx)
}

/// `GET /alerts`: what was sent, held back or failed, newest first.
pub async fn alerts(cx: PageCx) -> Result<Response, WebError> {
    let (web, q) = (&cx.web, &cx.q);
    let rows: Vec<_> = web
        .store()
        .alerts(
            q.get("job").map(String::as_str).filter(|s| !s.is_empty()),
            200,
        )
        .await?
        .into_iter()
        .map(|a| {
            minijinja::context! {
                id => a.id,
                channel => a.channel,
                event => a.event,
                job => a.job,
                step => a.step,
                summary => a.summary,
                state => a.state.as_str(),
                tries => a.tries,
                error => a.last_error,
                created => iso(a.created_at),
                sent => a.sent_at.map(iso),
            }
        })
        .collect();
    let ctx = minijinja::context! {
        alerts => rows,
    };
    cx.render("alerts.html", "alerts", "Alerts".into(), ctx)
}

/// `GET /requests`: triggers and submitted backfills with their progress.
pub async fn requests(cx: PageCx) -> Result<Response, WebError> {
    let web = &cx.web;
    let mut rows = Vec::new();
    for r in web.store().requests(false, 100).await? {
        let runs = web.store().request_runs(r.id).await?;
        let done = runs
            .iter()
            .filter(|r| r.state == crate::store::RunState::Success)
            .count();
        let failed = runs
            .iter()
            .filter(|r| r.state == crate::store::RunState::Failed)
            .count();
        let total = match r.kind {
            crate::store::RequestKind::Trigger => 1,
            crate::store::RequestKind::Backfill => {
                let from = r
                    .spec
                    .get("from")
                    .and_then(|v| v.as_str())
                    .and_then(|s| parse_start(s).ok());
                let to = r
                    .spec
                    .get("to")
                    .and_then(|v| v.as_str())
                    .and_then(|s| parse_start(s).ok());
                match (web.engine().project.job(&r.job), from, to) {
                    (Some(j), Some(f), Some(t)) => j.calendar.intervals(f, t).len(),
                    _ => runs.len(),
                }
            }
        };
        rows.push(minijinja::context! {
            id => r.id,
            kind => r.kind.as_str(),
            job => r.job,
            spec => serde_json::to_string(&r.spec).unwrap_or_default(),
            state => r.state.as_str(),
            open => matches!(r.state, crate::store::RequestState::Pending | crate::store::RequestState::Running),
            message => r.message,
            created => iso(r.created_at),
            updated => iso(r.updated_at),
            done => done,
            failed => failed,
            total => total,
        });
    }
    let ctx = minijinja::context! {
        requests => rows,
    };
    cx.render("requests.html", "requests", "Requests".into(), ctx)
}

/// `GET /daemons`: every daemon on the store, its role, heartbeat and running steps.
pub async fn daemons(cx: PageCx) -> Result<Response, WebError> {
    let web = &cx.web;
    let now = Utc::now();
    let rows: Vec<_> = web
        .store()
        .daemons()
        .await?
        .into_iter()
        .map(|d| {
            let up = d.stopped_at.is_none() && now - d.heartbeat_at < TimeDelta::seconds(15);
            minijinja::context! {
                id => d.id,
                host => d.host,
                pid => d.pid,
                version => d.version,
                started => iso(d.started_at),
                heartbeat => iso(d.heartbeat_at),
                stopped => d.stopped_at.map(iso),
                up => up,
                role => d.status.get("role").and_then(|v| v.as_str()).map(str::to_string),
                running => d.status.get("running_steps").and_then(|v| v.as_array()).map(|a| a.len()).unwrap_or(0),
            }
        })
        .collect();
    let ctx = minijinja::context! {
        daemons => rows,
    };
    cx.render("daemons.html", "daemons", "Daemons".into(), ctx)
}

/// `GET /audit`: every action taken in the dashboard, who and when.
pub async fn audit(cx: PageCx) -> Result<Response, WebError> {
    let web = &cx.web;
    let rows: Vec<_> = web
        .store()
        .actions(200)
        .await?
        .into_iter()
        .map(|a| {
            minijinja::context! {
                id => a.id,
                who => a.who,
                action => a.action,
                job => a.job,
                detail => serde_json::to_string(&a.detail).unwrap_or_default(),
                outcome => a.outcome,
                created => iso(a.created_at),
            }
        })
        .collect();
    let ctx = minijinja::context! {
        actions => rows,
    };
    cx.render("audit.html", "audit", "Audit".into(), ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Schedule;

    #[test]
    fn recent_intervals_are_the_ended_ones_newest_first() {
        let cal = Calendar {
            schedule: Schedule::parse("0 * * * *", chrono_tz::UTC).unwrap(),
            start: DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z")
                .unwrap()
                .to_utc(),
            end: None,
        };
        let now = DateTime::parse_from_rfc3339("2026-12-01T05:30:00Z")
            .unwrap()
            .to_utc();
        let ivs = recent_intervals(&cal, now, 3);
        let starts: Vec<String> = ivs.iter().map(|i| iso(i.start)).collect();
        assert_eq!(
            starts,
            [
                "2026-12-01T04:00:00Z",
                "2026-12-01T03:00:00Z",
                "2026-12-01T02:00:00Z"
            ]
        );
        assert_eq!(iso(ivs[0].end), "2026-12-01T05:00:00Z");
        // Never before the job's start.
        assert_eq!(recent_intervals(&cal, now, 100).len(), 5);
    }

    #[test]
    fn overall_state_of_an_interval() {
        use StepState::*;
        assert_eq!(overall([Success, Running].into_iter()), "running");
        assert_eq!(overall([Success, UpstreamFailed].into_iter()), "failed");
        assert_eq!(overall([Success, Skipped].into_iter()), "success");
        assert_eq!(overall([Success, Pending].into_iter()), "pending");
        assert_eq!(overall(std::iter::empty()), "none");
    }
}
