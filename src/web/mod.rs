//! The dashboard: every job, run, step, log, lag and validation report in a browser, and the
//! actions people take on them (trigger, clear, pause, backfill, cancel), safely.
//!
//! # Why this module exists
//!
//! Data engineers expect a web UI, and the ones they know are slow where it matters: grids that
//! time out with many runs, a request per cell, auto-refresh that polls once per run, logs that
//! freeze the page. This one is server-rendered HTML (minijinja, templates embedded in the
//! binary), pictures written as SVG on the server ([`svg`]), JavaScript only as progressive
//! enhancement (every page reads without it), one Server-Sent Events connection per page for
//! live state ([`live`]), and nothing fetched from another host (`default-src 'self'`).
//!
//! It sits on top: it reads the [`Store`] and the loaded project (through a watch of the
//! [`Engine`], so a daemon's reload shows at once), and writes only through the store's own
//! operations (pause, requests, clear) plus an audit row per action ([`actions`]). The daemon
//! serves it beside `/health` ([`crate::daemon::Daemon::with_routes`]); `cranium ui` serves it
//! over a store alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Router;
use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::store::{Store, StoreError};

mod actions;
mod assets;
mod auth;
mod live;
mod logs;
mod pages;
pub mod svg;

/// The dashboard's shared state. Cheap to clone.
#[derive(Clone)]
pub struct Web {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    engines: watch::Receiver<Engine>,
    templates: minijinja::Environment<'static>,
    sessions: auth::Sessions,
    /// DAG layouts per job, with the hash of the definition they were made from.
    layouts: Mutex<HashMap<String, (u64, Arc<svg::DagLayout>)>>,
    live: Arc<live::Live>,
}

impl Web {
    /// A dashboard over `store`, showing the project `engines` holds (and whatever it is
    /// reloaded to).
    pub fn new(store: Store, engines: watch::Receiver<Engine>) -> Web {
        Web {
            inner: Arc::new(Inner {
                live: Arc::new(live::Live::new(store.clone())),
                store,
                engines,
                templates: templates(),
                sessions: auth::Sessions::default(),
                layouts: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The project now (a reload shows from the next request on).
    fn engine(&self) -> Engine {
        self.inner.engines.borrow().clone()
    }

    /// The dashboard's routes, with its security headers and gzip.
    pub fn router(&self) -> Router {
        use axum::routing::{get, post};
        Router::new()
            .route("/", get(pages::jobs))
            .route("/jobs/{job}", get(pages::job))
            .route("/jobs/{job}/intervals/{start}", get(pages::interval))
            .route("/jobs/{job}/runs/{run}", get(pages::run))
            .route(
                "/jobs/{job}/intervals/{start}/steps/{step}/log",
                get(logs::page),
            )
            .route(
                "/jobs/{job}/intervals/{start}/steps/{step}/log.txt",
                get(logs::raw),
            )
            .route(
                "/jobs/{job}/backfill",
                get(actions::backfill_preview).post(actions::backfill),
            )
            .route("/jobs/{job}/pause", post(actions::pause))
            .route("/jobs/{job}/unpause", post(actions::unpause))
            .route("/jobs/{job}/trigger", post(actions::trigger))
            .route("/jobs/{job}/clear", post(actions::clear))
            .route("/requests/{id}/cancel", post(actions::cancel))
            .route("/lag", get(pages::lag))
            .route("/validation", get(pages::validation))
            .route("/alerts", get(pages::alerts))
            .route("/requests", get(pages::requests))
            .route("/daemons", get(pages::daemons))
            .route("/audit", get(pages::audit))
            .route("/login", get(auth::login_form).post(auth::login))
            .route("/logout", post(auth::logout))
            .route("/events", get(live::events))
            .route("/assets/{name}", get(assets::serve))
            .layer(axum::middleware::from_fn(security_headers))
            .layer(tower_http::compression::CompressionLayer::new())
            .with_state(self.clone())
    }

    /// A page from its template.
    fn render(&self, name: &str, ctx: minijinja::Value) -> Result<Html<String>, WebError> {
        let t = self
            .inner
            .templates
            .get_template(name)
            .map_err(WebError::template)?;
        t.render(ctx).map(Html).map_err(WebError::template)
    }

    /// The DAG layout of `job` as defined now (made once per definition).
    fn layout_of(
        &self,
        key: &str,
        hash: u64,
        make: impl FnOnce() -> svg::DagLayout,
    ) -> Arc<svg::DagLayout> {
        if let Some((h, l)) = self
            .inner
            .layouts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
        {
            if *h == hash {
                return l.clone();
            }
        }
        let l = Arc::new(make());
        self.inner
            .layouts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.to_string(), (hash, l.clone()));
        l
    }
}

/// Serves `web` on `addr` until `stop` is cancelled (for `cranium ui`).
pub async fn serve(
    addr: std::net::SocketAddr,
    web: Web,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, std::io::Error> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = web.router();
    Ok(tokio::spawn(async move {
        let res = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = res {
            tracing::warn!("dashboard server stopped: {e}");
        }
    }))
}

/// The Content-Security-Policy of every page: nothing from another host, no inline script.
pub const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
                       script-src 'self'; object-src 'none'; base-uri 'none'; \
                       frame-ancestors 'none'; form-action 'self'";

async fn security_headers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let started = std::time::Instant::now();
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    // How long the page took on the server (to its headers), for the browser's devtools and
    // the benchmark.
    if let Ok(v) = HeaderValue::from_str(&format!(
        "app;dur={:.1}",
        started.elapsed().as_secs_f64() * 1000.0
    )) {
        h.insert("server-timing", v);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    res
}

/// A page that could not be shown: its status and a message for the person reading it.
#[derive(Debug)]
pub struct WebError {
    pub status: StatusCode,
    pub message: String,
}

impl WebError {
    fn new(status: StatusCode, message: impl Into<String>) -> WebError {
        WebError {
            status,
            message: message.into(),
        }
    }

    fn not_found(message: impl Into<String>) -> WebError {
        WebError::new(StatusCode::NOT_FOUND, message)
    }

    fn bad_request(message: impl Into<String>) -> WebError {
        WebError::new(StatusCode::BAD_REQUEST, message)
    }

    fn template(e: minijinja::Error) -> WebError {
        tracing::error!("dashboard template: {e:#}");
        WebError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the page could not be drawn: {e}"),
        )
    }
}

impl From<StoreError> for WebError {
    fn from(e: StoreError) -> WebError {
        WebError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the metadata store did not answer: {e}"),
        )
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let body = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{code} · \
             cranium</title><link rel=\"stylesheet\" href=\"{css}\"></head><body><main><h1>{code}</h1>\
             <p class=\"error\">{msg}</p><p><a href=\"/\">All jobs</a></p></main></body></html>",
            code = self.status,
            css = assets::url("app.css"),
            msg = svg::esc(&self.message),
        );
        (self.status, Html(body)).into_response()
    }
}

/// The page's time zone: `?tz=NAME` (an IANA name), UTC by default.
fn page_tz(q: &HashMap<String, String>) -> Result<Tz, WebError> {
    match q.get("tz").map(String::as_str).filter(|s| !s.is_empty()) {
        None => Ok(chrono_tz::UTC),
        Some(name) => name.parse::<Tz>().map_err(|_| {
            WebError::bad_request(format!(
                "unknown time zone '{name}': use an IANA name such as UTC or Europe/Berlin"
            ))
        }),
    }
}

/// A time as the templates take it: RFC 3339 UTC.
fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// An interval start from a path: RFC 3339 or Unix seconds.
fn parse_start(s: &str) -> Result<DateTime<Utc>, WebError> {
    if let Ok(secs) = s.parse::<i64>() {
        if let Some(t) = DateTime::from_timestamp(secs, 0) {
            return Ok(t);
        }
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            WebError::bad_request(format!(
                "'{s}' is not an interval start: write RFC 3339 (2026-12-04T01:00:00Z) or Unix seconds"
            ))
        })
}

/// `<time datetime="ISO">local text</time>` in the page's zone (`tz` in the template context).
fn time_filter(state: &minijinja::State, value: minijinja::Value) -> minijinja::Value {
    let Some(s) = value.as_str() else {
        return minijinja::Value::from("");
    };
    let tz: Tz = state
        .lookup("tz")
        .and_then(|v| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(chrono_tz::UTC);
    match DateTime::parse_from_rfc3339(s) {
        Ok(t) => {
            let t = t.with_timezone(&Utc);
            minijinja::Value::from_safe_string(format!(
                "<time datetime=\"{}\">{}</time>",
                iso(t),
                t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S")
            ))
        }
        Err(_) => minijinja::Value::from(s),
    }
}

fn templates() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    for (name, src) in [
        ("base.html", include_str!("templates/base.html")),
        ("jobs.html", include_str!("templates/jobs.html")),
        ("job.html", include_str!("templates/job.html")),
        ("interval.html", include_str!("templates/interval.html")),
        ("panel.html", include_str!("templates/panel.html")),
        ("attempts.html", include_str!("templates/attempts.html")),
        ("log.html", include_str!("templates/log.html")),
        ("lag.html", include_str!("templates/lag.html")),
        ("validation.html", include_str!("templates/validation.html")),
        ("alerts.html", include_str!("templates/alerts.html")),
        ("requests.html", include_str!("templates/requests.html")),
        ("daemons.html", include_str!("templates/daemons.html")),
        ("audit.html", include_str!("templates/audit.html")),
        ("login.html", include_str!("templates/login.html")),
        ("backfill.html", include_str!("templates/backfill.html")),
    ] {
        if let Err(e) = env.add_template(name, src) {
            // The templates are part of the binary: a syntax error is a build defect, caught
            // by the tests that render every page.
            tracing::error!("dashboard template {name}: {e:#}");
        }
    }
    env.add_filter("time", time_filter);
    env.add_function("asset", |name: String| assets::url(&name));
    // A one-time value per form: a second submit of the same form acts once.
    env.add_function("nonce", || {
        (0..16)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect::<String>()
    });
    env
}
