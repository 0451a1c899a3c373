//! Which daemon makes the scheduling decisions. Every daemon executes steps; only the leader
//! creates scheduled runs, passes intervals over, checks SLAs, probes connections, measures the
//! consumer lag and sends alerts, so none of that happens twice when several daemons share one
//! PostgreSQL store.
//!
//! The leader is whoever holds the store's leader lock (a PostgreSQL advisory lock on a session of
//! its own, [`crate::store::postgres::leader`]). An elector task checks four times a second:
//!
//! * the leader proves its session still answers; if it does not (the server ended it, the
//!   network is gone), it stops leading at once;
//! * the others try the lock: a leader that died freed it with its connection, one that stopped
//!   cleanly released it, so one of them leads within a second;
//! * a leader whose session has been silent for a lease time is frozen (SIGSTOP, a stalled VM):
//!   the others end its session on the server, which frees the lock. When it wakes, its own
//!   check fails before it decides anything: leadership counts only while confirmed within the
//!   last [`FRESH`].
//!
//! A store that only one daemon can use (SQLite, under the daemon lock) has no election: that
//! daemon leads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::store::postgres::leader::LeaderSession;
use crate::store::postgres::PgStore;
use crate::store::Store;

/// How often the elector checks.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);
/// How recent the leader's last confirmation must be for it to act as the leader.
pub const FRESH: Duration = Duration::from_secs(2);

/// This daemon's role, as the elector last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The only daemon a store allows (SQLite).
    Sole,
    /// Holds the leader lock, confirmed at that instant.
    Leader { confirmed: Instant },
    /// Another daemon leads (or nobody does yet).
    Follower,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Sole | Role::Leader { .. } => "leader",
            Role::Follower => "follower",
        }
    }
}

/// The daemon's view of the election: cheap to clone, read by the loop and the alert sender.
#[derive(Clone)]
pub struct Leadership {
    rx: tokio::sync::watch::Receiver<Role>,
    /// Times this daemon became the leader (the loop reloads the schedule's watermarks then).
    terms: Arc<std::sync::atomic::AtomicU64>,
}

impl Leadership {
    /// A daemon that leads alone.
    pub fn sole() -> Leadership {
        let (_tx, rx) = tokio::sync::watch::channel(Role::Sole);
        Leadership {
            rx,
            terms: Arc::new(1.into()),
        }
    }

    /// Whether this daemon may make leader decisions now.
    pub fn is_leader(&self) -> bool {
        match *self.rx.borrow() {
            Role::Sole => true,
            Role::Leader { confirmed } => confirmed.elapsed() < FRESH,
            Role::Follower => false,
        }
    }

    /// The role to show (`/health`, the heartbeat row).
    pub fn role(&self) -> &'static str {
        if self.is_leader() {
            "leader"
        } else {
            "follower"
        }
    }

    /// How many times this daemon has become the leader.
    pub fn terms(&self) -> u64 {
        self.terms.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Starts the election for `store` (none for SQLite: [`Leadership::sole`]), trying for the lock
/// once before it returns, so a daemon alone on its store leads from its first tick. The elector
/// stops, releasing the lock, when `stop` is cancelled; `depose_after` is how long a leader's
/// session may stay silent before the others end it.
pub async fn elect(
    store: &Store,
    daemon: &str,
    depose_after: Duration,
    stop: CancellationToken,
) -> (Leadership, Option<tokio::task::JoinHandle<()>>) {
    let pg = match store {
        Store::Sqlite(_) => return (Leadership::sole(), None),
        Store::Postgres(pg) => pg.clone(),
    };
    let (tx, rx) = tokio::sync::watch::channel(Role::Follower);
    let terms = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut elector = Elector {
        pg,
        daemon: daemon.to_string(),
        depose_after,
        tx,
        terms: terms.clone(),
        session: None,
        leading: false,
        last_error: None,
    };
    elector.check().await;
    let task = tokio::spawn(elector.run(stop));
    (Leadership { rx, terms }, Some(task))
}

struct Elector {
    pg: PgStore,
    daemon: String,
    depose_after: Duration,
    tx: tokio::sync::watch::Sender<Role>,
    terms: Arc<std::sync::atomic::AtomicU64>,
    session: Option<LeaderSession>,
    leading: bool,
    last_error: Option<Instant>,
}

impl Elector {
    async fn run(mut self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            self.check().await;
        }
        if self.leading {
            self.tx.send_replace(Role::Follower);
        }
        if let Some(s) = self.session.take() {
            s.release().await;
            if self.leading {
                tracing::info!("released the leader lock");
            }
        }
    }

    async fn check(&mut self) {
        if self.session.is_none() {
            match self.pg.leader_session(&self.daemon).await {
                Ok(s) => self.session = Some(s),
                Err(e) => {
                    if self
                        .last_error
                        .is_none_or(|t| t.elapsed() >= Duration::from_secs(30))
                    {
                        tracing::warn!("leader election: {e} (trying again)");
                        self.last_error = Some(Instant::now());
                    }
                    return;
                }
            }
        }
        let Some(s) = self.session.as_ref() else {
            return;
        };
        if self.leading {
            match s.confirm().await {
                Ok(()) => {
                    self.tx.send_replace(Role::Leader {
                        confirmed: Instant::now(),
                    });
                }
                Err(e) => {
                    self.leading = false;
                    self.session = None;
                    self.tx.send_replace(Role::Follower);
                    tracing::warn!(
                        "no longer the leader: the leader lock's session is gone ({e}); another daemon makes the scheduling decisions now"
                    );
                }
            }
            return;
        }
        match s.try_acquire().await {
            Ok(true) => {
                self.leading = true;
                self.terms
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.tx.send_replace(Role::Leader {
                    confirmed: Instant::now(),
                });
                tracing::info!("became the leader: this daemon now makes the scheduling decisions");
            }
            Ok(false) => match self.pg.depose_frozen_leader(self.depose_after).await {
                Ok(Some(h)) => tracing::warn!(
                    leader = h.daemon,
                    backend_pid = h.pid,
                    "ended the session of leader {} (silent for {:.1}s: frozen or cut off); its lock is free",
                    h.daemon,
                    h.silent_for.as_secs_f64()
                ),
                Ok(None) => {}
                Err(e) => tracing::warn!("leader election: {e}"),
            },
            Err(e) => {
                self.session = None;
                tracing::warn!("leader election: {e} (reconnecting)");
            }
        }
    }
}
