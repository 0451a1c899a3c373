//! `/livez`, `/readyz` and `/health`: how a supervisor (systemd, Kubernetes, a person with curl)
//! tells a live daemon from a stuck one.
//!
//! * `/livez`: 200 while the scheduling loop has ticked within [`LIVE_WITHIN`], else 503.
//! * `/readyz`: 200 when the store answered the last housekeeping call and a project is loaded.
//! * `/health`: everything as JSON (version, store, project and its hash, jobs, last tick,
//!   running steps, pools, refused reloads).
//! * `/metrics`: the Prometheus text format ([`super::metrics`]).
//!
//! Other routes given by the caller (the dashboard) are served beside these.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// The loop must have ticked this recently for `/livez` to answer 200.
pub const LIVE_WITHIN: Duration = Duration::from_secs(30);

/// A step running now.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunningStep {
    pub job: String,
    pub step: String,
    pub interval_start: DateTime<Utc>,
    pub run_id: i64,
    pub started_at: DateTime<Utc>,
    pub pool: Option<String>,
}

/// A pool's slots.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PoolUsage {
    pub name: String,
    pub slots: usize,
    pub used: usize,
}

/// What the daemon says of itself.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Status {
    pub version: &'static str,
    pub daemon_id: String,
    /// `leader` (makes the scheduling decisions) or `follower` (executes steps only).
    pub role: &'static str,
    pub pid: u32,
    pub store: String,
    pub project: String,
    pub project_hash: String,
    pub loaded_at: Option<DateTime<Utc>>,
    pub jobs: usize,
    pub paused: Vec<String>,
    pub last_tick: Option<DateTime<Utc>>,
    pub store_ok: bool,
    pub store_error: Option<String>,
    pub stopping: bool,
    pub active_runs: usize,
    pub running_steps: Vec<RunningStep>,
    pub max_running_steps: usize,
    pub pools: Vec<PoolUsage>,
    /// The `check` errors of the last refused reload (empty after a successful one).
    pub reload_errors: Vec<String>,
    pub reload_refused_at: Option<DateTime<Utc>>,
}

/// The status, shared between the daemon (writer) and the server (reader).
#[derive(Debug, Clone, Default)]
pub struct Shared(Arc<Mutex<Status>>);

impl Shared {
    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }

    pub fn get(&self) -> Status {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn live(s: &Status, now: DateTime<Utc>) -> bool {
    s.last_tick
        .is_some_and(|t| (now - t).to_std().unwrap_or(Duration::ZERO) <= LIVE_WITHIN)
}

/// What the handlers read.
#[derive(Clone)]
struct App {
    shared: Shared,
    metrics: super::metrics::Metrics,
}

impl axum::extract::FromRef<App> for Shared {
    fn from_ref(app: &App) -> Shared {
        app.shared.clone()
    }
}

async fn metrics_text(State(app): State<App>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
}

async fn livez(State(s): State<Shared>) -> impl IntoResponse {
    if live(&s.get(), Utc::now()) {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the scheduling loop has not ticked recently\n",
        )
    }
}

async fn readyz(State(s): State<Shared>) -> impl IntoResponse {
    let st = s.get();
    if st.store_ok && st.loaded_at.is_some() && !st.stopping {
        (StatusCode::OK, "ready\n".to_string())
    } else if st.stopping {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: {}\n",
                st.store_error
                    .unwrap_or_else(|| "the project is not loaded yet".to_string())
            ),
        )
    }
}

async fn health(State(s): State<Shared>) -> impl IntoResponse {
    let st = s.get();
    let code = if live(&st, Utc::now()) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(st))
}

/// Binds `addr` (errors here stop the daemon from starting: a port in use is worth knowing at
/// once) and serves until `stop` is cancelled.
pub async fn serve(
    addr: SocketAddr,
    shared: Shared,
    metrics: super::metrics::Metrics,
    routes: Option<Router>,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, std::io::Error> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let mut app = Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .with_state(App { shared, metrics });
    if let Some(r) = routes {
        app = app.merge(r);
    }
    Ok(tokio::spawn(async move {
        let res = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = res {
            tracing::warn!("health server stopped: {e}");
        }
    }))
}
