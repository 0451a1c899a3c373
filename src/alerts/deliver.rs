//! Delivering the queue: send what is due, record every try, retry with backoff.
//!
//! A failed send is tried again after 5 s, doubling up to 5 minutes, for two days after the alert
//! was raised: a channel that is down for an hour gets its alerts late, not never. The daemon runs
//! [`run`] in the background; the foreground `run` and `backfill` call [`drain`] before they exit.

use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::channels::send_one;
use crate::project::Project;
use crate::store::{AlertRecord, Store, StoreError};

/// How long a failed alert is retried.
pub const GIVE_UP_AFTER: chrono::TimeDelta = chrono::TimeDelta::days(2);

/// The wait before try `tries + 1` after `tries` failed tries.
pub fn backoff(tries: u32) -> Duration {
    let secs = 5u64.saturating_mul(1u64 << tries.min(10));
    Duration::from_secs(secs.min(300))
}

/// Called after every try: the alert, and whether it was sent.
pub type OnTried<'a> = &'a (dyn Fn(&AlertRecord, bool) + Send + Sync);

/// Sends every due alert once; returns how many were tried.
pub async fn deliver_due(project: &Project, store: &Store) -> Result<usize, StoreError> {
    deliver_due_counted(project, store, &|_, _| {}).await
}

/// [`deliver_due`], telling `on_tried` of each try.
pub async fn deliver_due_counted(
    project: &Project,
    store: &Store,
    on_tried: OnTried<'_>,
) -> Result<usize, StoreError> {
    let due = store.due_alerts(100).await?;
    let n = due.len();
    for a in due {
        let sent = try_one(project, store, &a).await?;
        on_tried(&a, sent);
    }
    Ok(n)
}

async fn try_one(project: &Project, store: &Store, a: &AlertRecord) -> Result<bool, StoreError> {
    let result = match project.alerts.get(&a.channel) {
        Some(c) => send_one(project, c, &a.payload).await,
        None => Err(format!(
            "the channel '{}' is no longer in cranium.yaml",
            a.channel
        )),
    };
    match result {
        Ok(()) => {
            tracing::info!(
                channel = a.channel,
                event = a.event,
                id = a.id,
                "alert sent"
            );
            store.alert_tried(a.id, None, None).await?;
            Ok(true)
        }
        Err(e) => {
            let retry =
                Utc::now() + chrono::TimeDelta::from_std(backoff(a.tries)).unwrap_or_default();
            let retry = (retry < a.created_at + GIVE_UP_AFTER
                && project.alerts.contains_key(&a.channel))
            .then_some(retry);
            tracing::warn!(
                channel = a.channel,
                event = a.event,
                id = a.id,
                retry_at = ?retry,
                "sending an alert failed: {e}"
            );
            store.alert_tried(a.id, Some(&e), retry).await?;
            Ok(false)
        }
    }
}

/// Delivers the queue every `every` until `stop` is cancelled (the daemon's background task).
/// `project` is read each round, so a reload's channels apply; a round happens only when
/// `may_send` says so (of several daemons, only the leader sends).
pub async fn run(
    project: impl Fn() -> std::sync::Arc<Project>,
    store: Store,
    every: Duration,
    stop: CancellationToken,
    may_send: impl Fn() -> bool + Send + Sync,
    on_tried: impl Fn(&AlertRecord, bool) + Send + Sync,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if !may_send() {
            continue;
        }
        if let Err(e) = deliver_due_counted(&project(), &store, &on_tried).await {
            tracing::warn!("delivering alerts: metadata store: {e}");
        }
    }
}

/// Delivers until nothing is due or `within` has passed (the foreground commands, before they
/// exit); what is left stays queued for the daemon or the next command.
pub async fn drain(project: &Project, store: &Store, within: Duration) {
    let until = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(until, deliver_due(project, store)).await {
            Ok(Ok(0)) | Err(_) => return,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!("delivering alerts: metadata store: {e}");
                return;
            }
        }
    }
}
