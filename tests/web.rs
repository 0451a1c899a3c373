//! The dashboard's handlers in-process (`tower::ServiceExt::oneshot`), over a SQLite store
//! seeded by real runs of a small project: every page renders, hostile text (errors, log lines,
//! names in the store) is escaped, and actions are refused without the token, from another
//! origin, or on a read-only dashboard; with the token they act once and are audited.

use std::path::Path;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use cranium::check::check;
use cranium::config::interp::Env;
use cranium::engine::{Engine, RunOptions};
use cranium::schedule::{parse_time, Interval, Tz};
use cranium::store::{NewAlert, RequestKind, Store};
use cranium::web::Web;
use http_body_util::BodyExt;
use tower::ServiceExt;

const TOKEN: &str = "test-token-0123456789abcdef";
const HOSTILE: &str = "<script>alert('x')</script>";

fn project(dir: &Path, with_token: bool) {
    let daemon = if with_token {
        format!("daemon:\n  auth_token: {TOKEN}\n")
    } else {
        String::new()
    };
    std::fs::write(
        dir.join("cranium.yaml"),
        format!("state: sqlite://.cranium/state.db\n{daemon}"),
    )
    .expect("cranium.yaml");
    std::fs::create_dir_all(dir.join("jobs")).expect("jobs");
    std::fs::write(
        dir.join("jobs/web.yaml"),
        r#"job: web_demo
owner: data-team
schedule: "0 * * * *"
start: 2026-01-01
steps:
  - id: extract
    kind: noop
  - id: transform
    kind: lua
    after: [extract]
    code: |
      cranium.log("info", "line with <b>markup</b> & " .. "<script>alert('x')</script>")
      for i = 1, 999 do cranium.log("info", "progress " .. i) end
      error("<script>alert('x')</script> failed on purpose")
  - id: publish
    kind: noop
    after: [transform]
"#,
    )
    .expect("job");
}

fn hour(s: &str) -> Interval {
    let start = parse_time(s, Tz::UTC).expect("time");
    Interval {
        start,
        end: start + chrono::Duration::hours(1),
    }
}

/// A project with one run of the job (transform fails), and hostile rows in the store.
async fn seeded(with_token: bool) -> (tempfile::TempDir, Web, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    project(dir.path(), with_token);
    let c = check(dir.path(), &Env::default()).expect("loads");
    assert!(
        !c.diagnostics.has_errors(),
        "{}",
        c.diagnostics.render(&c.project.redactor)
    );
    let store = Store::open(&c.project.state_url, dir.path())
        .await
        .expect("store");
    let engine = Engine::new(c.project.clone(), c.graph.clone(), store.clone());
    let report = engine
        .run_interval(
            "web_demo",
            hour("2026-01-01T05:00:00Z"),
            &RunOptions::default(),
            tokio_util::sync::CancellationToken::new(),
        )
        .await
        .expect("runs");
    assert!(!report.succeeded());
    store
        .enqueue_alert(&NewAlert {
            channel: HOSTILE.into(),
            event: "step_failed".into(),
            job: Some(HOSTILE.into()),
            step: None,
            interval_start: None,
            run_id: None,
            summary: format!("summary {HOSTILE}"),
            payload: serde_json::json!({}),
            throttle_key: None,
            repeat_interval: std::time::Duration::ZERO,
        })
        .await
        .expect("alert");
    store
        .submit_request(
            RequestKind::Trigger,
            HOSTILE,
            &serde_json::json!({"start": HOSTILE}),
            0,
        )
        .await
        .expect("request");
    // A receiver keeps the last value after its sender is gone.
    let (_, rx) = tokio::sync::watch::channel(engine);
    (dir, Web::new(store.clone(), rx), store)
}

async fn get(web: &Web, uri: &str) -> (StatusCode, String) {
    let res = web
        .router()
        .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
        .await
        .expect("response");
    let status = res.status();
    let body = res.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn post(
    web: &Web,
    uri: &str,
    form: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String, Option<String>) {
    let mut req = Request::post(uri)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::HOST, "127.0.0.1:8282");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = web
        .router()
        .oneshot(req.body(Body::from(form.to_string())).expect("request"))
        .await
        .expect("response");
    let status = res.status();
    let location = res
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = res.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        String::from_utf8_lossy(&body).into_owned(),
        location,
    )
}

fn assert_escaped(page: &str, body: &str) {
    assert!(
        !body.contains("<script>alert"),
        "{page}: hostile text reached the page unescaped"
    );
    assert!(
        !body.contains("<b>markup</b>"),
        "{page}: log markup unescaped"
    );
}

#[tokio::test]
async fn every_page_renders_and_escapes_hostile_text() {
    let (_dir, web, _store) = seeded(false).await;
    let start = "2026-01-01T05:00:00Z";
    let pages = [
        "/".to_string(),
        "/?q=web&state=failed".to_string(),
        "/jobs/web_demo".to_string(),
        "/jobs/web_demo?n=1000&tz=Europe/Berlin".to_string(),
        format!("/jobs/web_demo/intervals/{start}"),
        format!("/jobs/web_demo/intervals/{start}?fragment=1&step=transform"),
        "/jobs/web_demo/runs/1".to_string(),
        format!("/jobs/web_demo/intervals/{start}/steps/transform/log"),
        "/jobs/web_demo/backfill?from=2026-01-01&to=2026-01-02".to_string(),
        "/lag".to_string(),
        "/validation".to_string(),
        "/alerts".to_string(),
        "/requests".to_string(),
        "/daemons".to_string(),
        "/audit".to_string(),
        "/login".to_string(),
    ];
    for p in &pages {
        let (status, body) = get(&web, p).await;
        assert_eq!(status, StatusCode::OK, "{p}: {body:.600}");
        assert_escaped(p, &body);
    }
    // What each page is for is on it.
    let (_, jobs) = get(&web, "/").await;
    assert!(jobs.contains("web_demo") && jobs.contains("data-team") && jobs.contains("0 * * * *"));
    assert!(jobs.contains("<svg class=\"strip\""));
    let (_, job) = get(&web, "/jobs/web_demo?n=1000").await;
    assert!(job.contains("<svg class=\"grid\"") && job.contains("<svg class=\"dag\""));
    assert!(job.contains("kind: lua"), "the job file as written");
    let grid = &job[job.find("<svg class=\"grid\"").expect("grid")..];
    let grid = &grid[..grid.find("</svg>").expect("end")];
    let nodes = grid.matches('<').count();
    assert!(
        nodes < 300,
        "the grid of 1,000 intervals is {nodes} elements"
    );
    let (_, iv) = get(&web, &format!("/jobs/web_demo/intervals/{start}")).await;
    assert!(iv.contains("failed on purpose") && iv.contains("<svg class=\"gantt\""));
    assert!(
        iv.contains("&lt;script&gt;alert"),
        "the error is shown, escaped"
    );
    let (_, log) = get(
        &web,
        &format!("/jobs/web_demo/intervals/{start}/steps/transform/log"),
    )
    .await;
    assert!(log.contains("<pre class=\"log\""));
    // 1,002 lines in all: the last 1,000 start at the first progress line.
    assert!(
        log.contains("progress 999\n") && log.contains("progress 1\n"),
        "{log:.3000}"
    );
    assert!(
        !log.contains("attempt 1 of 1"),
        "the first lines are left for 'earlier lines'"
    );
    assert!(log.contains("Earlier lines"));
    let (_, alerts) = get(&web, "/alerts").await;
    assert!(alerts.contains("summary &lt;script&gt;"));
    let (_, preview) = get(
        &web,
        "/jobs/web_demo/backfill?from=2026-01-01&to=2026-01-02",
    )
    .await;
    assert!(
        preview.contains("24 interval(s) will run"),
        "{preview:.2000}"
    );
    // Times carry their ISO value and the page's zone.
    let (_, berlin) = get(&web, "/jobs/web_demo/runs/1?tz=Europe/Berlin").await;
    assert!(berlin.contains("<time datetime=\"2026-01-01T05:00:00Z\">2026-01-01 06:00:00</time>"));
    assert!(
        berlin.contains("All times are Europe&#x2f;Berlin"),
        "the zone is shown"
    );
}

#[tokio::test]
async fn bad_requests_get_a_clear_page() {
    let (_dir, web, _store) = seeded(false).await;
    let (s, body) = get(&web, "/jobs/nope").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(
        body.contains("no job &#39;nope&#39;") || body.contains("no job 'nope'"),
        "{body}"
    );
    let (s, body) = get(&web, "/jobs/web_demo?tz=Mars/Olympus").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(body.contains("unknown time zone"));
    let (s, _) = get(&web, "/jobs/web_demo?n=5000").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, body) = get(&web, "/jobs/web_demo/intervals/2026-01-01T05:30:00Z").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(body.contains("starts 2026-01-01T05:00:00Z"), "{body}");
    let (s, body) = get(
        &web,
        &format!("/jobs/web_demo/intervals/{}", urlencode(HOSTILE)),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(!body.contains("<script>alert"));
    let (_, body) = get(
        &web,
        "/jobs/web_demo/backfill?from=2026-01-02&to=2026-01-01",
    )
    .await;
    assert!(body.contains("empty or reversed"), "{body:.3000}");
}

fn urlencode(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

#[tokio::test]
async fn a_read_only_dashboard_refuses_every_action() {
    let (_dir, web, store) = seeded(false).await;
    let (s, body, _) = post(&web, "/jobs/web_demo/pause", "nonce=n1", &[]).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(body.contains("read-only"));
    let (s, _, _) = post(
        &web,
        "/jobs/web_demo/pause",
        "nonce=n1",
        &[("authorization", &format!("Bearer {TOKEN}"))],
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(store.paused_jobs().await.expect("paused").is_empty());
    assert!(store.actions(0).await.expect("actions").is_empty());
}

#[tokio::test]
async fn actions_need_the_token_and_the_same_origin_and_act_once() {
    let (_dir, web, store) = seeded(true).await;
    let bearer = format!("Bearer {TOKEN}");
    // No token, a wrong token, another site.
    let (s, _, _) = post(&web, "/jobs/web_demo/pause", "nonce=a", &[]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, _) = post(
        &web,
        "/jobs/web_demo/pause",
        "nonce=a",
        &[("authorization", "Bearer wrong-token-0123456789ab")],
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, body, _) = post(
        &web,
        "/jobs/web_demo/pause",
        "nonce=a",
        &[
            ("authorization", &bearer),
            ("origin", "http://evil.example"),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(body.contains("cross-origin"));
    let (s, _, _) = post(
        &web,
        "/jobs/web_demo/pause",
        "nonce=a",
        &[("authorization", &bearer), ("sec-fetch-site", "cross-site")],
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(store.paused_jobs().await.expect("paused").is_empty());
    assert!(
        store.actions(0).await.expect("actions").is_empty(),
        "refused actions record nothing"
    );

    // The login form sets a strict session cookie; a wrong token sets none.
    let (s, _, loc) = post(&web, "/login", "token=nope&next=/jobs/web_demo", &[]).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert!(loc.unwrap_or_default().starts_with("/login?error="));
    let res = web
        .router()
        .oneshot(
            Request::post("/login")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(header::HOST, "127.0.0.1:8282")
                .body(Body::from(format!(
                    "token={TOKEN}&name=ana&next=/jobs/web_demo"
                )))
                .expect("request"),
        )
        .await
        .expect("response");
    let cookie = res
        .headers()
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie")
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().expect("pair").to_string();

    // Pause with the session: done once, even when the form is submitted twice.
    let (s, _, loc) = post(
        &web,
        "/jobs/web_demo/pause",
        "nonce=form-1",
        &[("cookie", &session), ("origin", "http://127.0.0.1:8282")],
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert!(loc.unwrap_or_default().contains("msg=paused"));
    let (_, _, loc) = post(
        &web,
        "/jobs/web_demo/pause",
        "nonce=form-1",
        &[("cookie", &session)],
    )
    .await;
    assert!(loc.unwrap_or_default().contains("already%20done"));
    assert_eq!(store.paused_jobs().await.expect("paused").len(), 1);
    // Trigger, clear with downstream, backfill (an empty range first), cancel.
    let (_, _, loc) = post(
        &web,
        "/jobs/web_demo/trigger",
        "nonce=form-2&start=2026-01-01T05:00:00Z",
        &[("authorization", &bearer)],
    )
    .await;
    assert!(loc.unwrap_or_default().contains("msg=request"));
    let (_, _, loc) = post(
        &web,
        "/jobs/web_demo/clear",
        "nonce=form-3&start=2026-01-01T05:00:00Z&step=transform&downstream=on",
        &[("authorization", &bearer)],
    )
    .await;
    let loc = loc.unwrap_or_default();
    assert!(loc.contains("cleared%202%20step"), "{loc}");
    let states = store
        .step_states(
            "web_demo",
            hour("2026-01-01T05:00:00Z").start,
            hour("2026-01-01T06:00:00Z").start,
        )
        .await
        .expect("states");
    let pending: Vec<&str> = states
        .iter()
        .filter(|r| r.state == cranium::store::StepState::Pending)
        .map(|r| r.step.as_str())
        .collect();
    assert_eq!(
        pending,
        ["publish", "transform"],
        "transform and its downstream were cleared"
    );
    // A range: at most 1,000 intervals; `only=failed` clears only where a step failed.
    let (_, _, loc) = post(
        &web,
        "/jobs/web_demo/clear",
        "nonce=form-3b&from=2026-01-01&to=2026-03-01",
        &[("authorization", &bearer)],
    )
    .await;
    assert!(loc.unwrap_or_default().contains("clear%20at%20most%201000"));
    let (_, _, loc) = post(
        &web,
        "/jobs/web_demo/clear",
        "nonce=form-3c&from=2026-01-01&to=2026-01-02&only=failed",
        &[("authorization", &bearer)],
    )
    .await;
    let loc = loc.unwrap_or_default();
    assert!(
        loc.contains("in%20the%200%20interval"),
        "nothing failed any more: {loc}"
    );
    let (_, _, loc) = post(
        &web,
        "/jobs/web_demo/backfill",
        "nonce=form-4&from=2026-01-02&to=2026-01-01",
        &[("authorization", &bearer)],
    )
    .await;
    assert!(loc.unwrap_or_default().contains("empty%20or%20reversed"));
    let before = store.requests(false, 0).await.expect("requests").len();
    let (_, _, loc) = post(
        &web,
        "/jobs/web_demo/backfill",
        "nonce=form-5&from=2026-01-01&to=2026-01-02&rerun=failed",
        &[("authorization", &bearer)],
    )
    .await;
    assert!(loc.unwrap_or_default().contains("24%20interval"));
    let reqs = store.requests(false, 0).await.expect("requests");
    assert_eq!(reqs.len(), before + 1);
    let (_, _, loc) = post(
        &web,
        &format!("/requests/{}/cancel", reqs[0].id),
        "nonce=form-6",
        &[("authorization", &bearer)],
    )
    .await;
    assert!(loc.unwrap_or_default().contains("cancelled"));
    // Every action is in the audit, with who did it.
    let actions = store.actions(0).await.expect("actions");
    let names: Vec<(&str, &str)> = actions
        .iter()
        .rev()
        .map(|a| (a.action.as_str(), a.who.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("pause", "ana"),
            ("trigger", "token"),
            ("clear", "token"),
            ("clear", "token"),
            ("clear", "token"),
            ("backfill", "token"),
            ("cancel", "token")
        ]
    );
    let outcomes: Vec<&str> = actions
        .iter()
        .rev()
        .map(|a| {
            a.outcome
                .as_deref()
                .unwrap_or("")
                .split(':')
                .next()
                .unwrap_or("")
        })
        .collect();
    assert_eq!(
        outcomes,
        ["done", "done", "done", "failed", "done", "done", "done"],
        "the refused range is recorded as failed, with its reason"
    );
    let (_, audit) = get(&web, "/audit").await;
    assert!(audit.contains("ana") && audit.contains("cleared 2 step"));
}

#[tokio::test]
async fn assets_are_immutable_and_pages_forbid_other_hosts() {
    let (_dir, web, _store) = seeded(false).await;
    let res = web
        .router()
        .oneshot(Request::get("/").body(Body::empty()).expect("request"))
        .await
        .expect("response");
    let csp = res
        .headers()
        .get(header::CONTENT_SECURITY_POLICY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(
        csp.contains("default-src 'self'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    let body = String::from_utf8_lossy(&res.into_body().collect().await.expect("body").to_bytes())
        .into_owned();
    let body = body.replace("&#x2f;", "/");
    let css = body
        .split("href=\"/assets/")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("css link")
        .to_string();
    assert!(
        css.starts_with("app.") && css.ends_with(".css") && css.len() > "app..css".len() + 8,
        "{css}"
    );
    for attr in [
        "src=\"http",
        "href=\"http",
        "src=\"//",
        "href=\"//",
        "url(http",
    ] {
        assert!(
            !body.contains(attr),
            "no request to any other host ({attr})"
        );
    }
    let res = web
        .router()
        .oneshot(
            Request::get(format!("/assets/{css}"))
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(res.status(), StatusCode::OK);
    let cache = res
        .headers()
        .get(header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(cache.contains("immutable"));
    // Gzip when asked.
    let res = web
        .router()
        .oneshot(
            Request::get("/jobs/web_demo?n=1000")
                .header(header::ACCEPT_ENCODING, "gzip")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(
        res.headers()
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok()),
        Some("gzip")
    );
}

#[tokio::test]
async fn the_raw_log_streams_with_ranges() {
    let (_dir, web, _store) = seeded(false).await;
    let uri = "/jobs/web_demo/intervals/2026-01-01T05:00:00Z/steps/transform/log.txt";
    let (s, whole) = get(&web, uri).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        whole.contains("progress 1\n") && whole.contains("markup"),
        "{:.300}",
        whole
    );
    let res = web
        .router()
        .oneshot(
            Request::get(uri)
                .header(header::RANGE, "bytes=-100")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    let range = res
        .headers()
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(range.ends_with(&format!("/{}", whole.len())), "{range}");
    let part = res.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(part.len(), 100);
    assert_eq!(&part[..], &whole.as_bytes()[whole.len() - 100..]);
}
