//! Live state over Server-Sent Events: one connection per page, no polling per run.
//!
//! One poller per dashboard reads what changed in the store (`changed_steps`, an index on
//! `updated_at`) four times a second while anyone is listening, and broadcasts each change; every
//! page's `/events?job=JOB` stream passes on the changes of the jobs it shows. The browser's
//! native `EventSource` reconnects by itself.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use chrono::{DateTime, Utc};
use futures::Stream;
use serde::Serialize;
use tokio::sync::broadcast;

use super::Web;
use crate::store::Store;

/// How often the poller looks while someone listens.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// How far back each look reaches, so a change committed with a slightly older time (another
/// process's clock, a long transaction) is not missed; changes seen already are not sent again.
const OVERLAP: chrono::TimeDelta = chrono::TimeDelta::seconds(5);

/// One step record that changed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Change {
    pub job: String,
    pub step: String,
    /// The interval start, Unix seconds (as in the grid's `data-starts`).
    pub start: i64,
    pub state: &'static str,
    pub attempt: u32,
    /// The interval's state over all its steps (what the jobs page's strip shows).
    pub interval_state: &'static str,
}

pub struct Live {
    store: Store,
    tx: broadcast::Sender<Change>,
    started: AtomicBool,
}

impl Live {
    pub fn new(store: Store) -> Live {
        Live {
            store,
            tx: broadcast::channel(4096).0,
            started: AtomicBool::new(false),
        }
    }

    /// A receiver of changes, starting the poller on first use.
    fn subscribe(self: &Arc<Self>) -> broadcast::Receiver<Change> {
        let rx = self.tx.subscribe();
        if !self.started.swap(true, Ordering::SeqCst) {
            let weak = Arc::downgrade(self);
            tokio::spawn(poll(weak));
        }
        rx
    }
}

async fn poll(live: Weak<Live>) {
    let mut since: DateTime<Utc> = Utc::now() - OVERLAP;
    let mut seen: HashMap<(String, String, i64), DateTime<Utc>> = HashMap::new();
    loop {
        tokio::time::sleep(POLL_EVERY).await;
        // The dashboard is gone: so is its poller.
        let Some(live) = live.upgrade() else {
            return;
        };
        if live.tx.receiver_count() == 0 {
            continue;
        }
        let look = tokio::time::timeout(
            Duration::from_secs(5),
            live.store.changed_steps(since - OVERLAP, 2000),
        )
        .await;
        let rows = match look {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => {
                tracing::debug!("dashboard live updates: {e}");
                continue;
            }
            Err(_) => continue,
        };
        let mut fresh = Vec::new();
        for r in rows {
            since = since.max(r.updated_at);
            let key = (r.job.clone(), r.step.clone(), r.interval.start.timestamp());
            if seen.get(&key).is_some_and(|t| *t >= r.updated_at) {
                continue;
            }
            seen.insert(key, r.updated_at);
            fresh.push(r);
        }
        // Each changed interval's state over all its steps: one read per job that changed.
        let mut ranges: HashMap<String, (DateTime<Utc>, DateTime<Utc>)> = HashMap::new();
        for r in &fresh {
            let e = ranges
                .entry(r.job.clone())
                .or_insert((r.interval.start, r.interval.start));
            e.0 = e.0.min(r.interval.start);
            e.1 = e.1.max(r.interval.start);
        }
        let mut overall: HashMap<(String, i64), &'static str> = HashMap::new();
        for (job, (from, to)) in ranges {
            let to = to + chrono::TimeDelta::seconds(1);
            if let Ok(Ok(recs)) = tokio::time::timeout(
                Duration::from_secs(5),
                live.store.step_states(&job, from, to),
            )
            .await
            {
                let mut by: HashMap<i64, Vec<crate::store::StepState>> = HashMap::new();
                for r in recs {
                    by.entry(r.interval.start.timestamp())
                        .or_default()
                        .push(r.state);
                }
                for (start, states) in by {
                    overall.insert(
                        (job.clone(), start),
                        super::pages::overall(states.into_iter()),
                    );
                }
            }
        }
        for r in fresh {
            let start = r.interval.start.timestamp();
            let interval_state = overall
                .get(&(r.job.clone(), start))
                .copied()
                .unwrap_or("none");
            let _ = live.tx.send(Change {
                job: r.job,
                step: r.step,
                start,
                state: r.state.as_str(),
                attempt: r.attempt,
                interval_state,
            });
        }
        let horizon = since - OVERLAP - OVERLAP;
        seen.retain(|_, t| *t >= horizon);
    }
}

/// `GET /events[?job=A&job=B]`: the changes of those jobs (of every job without `job`).
pub async fn events(
    State(web): State<Web>,
    Query(q): Query<Vec<(String, String)>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let jobs: Vec<String> = q
        .into_iter()
        .filter(|(k, _)| k == "job")
        .map(|(_, v)| v)
        .collect();
    let live = Arc::clone(&web.inner.live);
    let rx = live.subscribe();
    let stream = futures::stream::unfold((rx, jobs), |(mut rx, jobs)| async move {
        loop {
            match rx.recv().await {
                Ok(c) if jobs.is_empty() || jobs.contains(&c.job) => {
                    let data = serde_json::to_string(&c).unwrap_or_default();
                    let ev = Event::default().event("step").data(data);
                    return Some((Ok(ev), (rx, jobs)));
                }
                Ok(_) => continue,
                // Fell behind: tell the page to reload what it shows.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let ev = Event::default().event("stale").data("{}");
                    return Some((Ok(ev), (rx, jobs)));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
