//! This process's view of the step leases it holds: when each was last renewed, and the
//! cancellation of the attempt running under it.
//!
//! The store is the judge of who holds a lease (and refuses the writes of a runner whose lease
//! went to another, see [`crate::store::StoreError::Fenced`]); this book lets a runner stop
//! *before* that happens. An attempt whose lease could not be renewed for half its time to live
//! is cancelled (its queries are cancelled on their servers, as a timeout's are), so by the time
//! another runner may take the lease over, this one has stopped; and an `sql` step asks
//! [`LeaseBook::held`] right before its `COMMIT`, so a process frozen past its lease (SIGSTOP, a
//! long pause) rolls back instead of committing once it wakes up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

/// (job, step, interval start).
pub type LeaseKey = (String, String, DateTime<Utc>);

struct Held {
    renewed: Instant,
    cancel: CancellationToken,
}

/// The leases this process holds. Cheap to clone.
///
/// `margin` below is how long a lease stays trusted here after its last renewal: half its time
/// to live.
#[derive(Clone, Default)]
pub struct LeaseBook {
    held: Arc<Mutex<HashMap<LeaseKey, Held>>>,
    /// No other runner is known to share the store (a daemon alone on it): while the store is
    /// unreachable nobody can take a lease over, so attempts are not cancelled for want of a
    /// renewal (see [`LeaseBook::set_alone`]).
    alone: Arc<AtomicBool>,
    /// The last renewal got no answer from the store (it is unreachable).
    unanswered: Arc<AtomicBool>,
}

impl std::fmt::Debug for LeaseBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseBook")
            .field("held", &self.lock().len())
            .finish()
    }
}

impl LeaseBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<LeaseKey, Held>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A lease just claimed (a claim is a renewal), and the cancellation of its attempt.
    pub fn hold(&self, key: LeaseKey, cancel: CancellationToken) {
        self.lock().insert(
            key,
            Held {
                renewed: Instant::now(),
                cancel,
            },
        );
    }

    /// The attempt ended: its lease is released.
    /// Whether this runner is the only one on its store (a daemon learns it from the store's
    /// daemon heartbeats). Alone, an outage of the store does not cancel the attempts: when it
    /// answers again, the renewal says which leases are still this runner's (all of them, unless
    /// another runner appeared and took some over, whose attempts are then cancelled).
    pub fn set_alone(&self, alone: bool) {
        self.alone.store(alone, Ordering::Relaxed);
    }

    /// Whether the last renewal was answered by the store (refused or not) or got no answer.
    pub fn set_answered(&self, answered: bool) {
        self.unanswered.store(!answered, Ordering::Relaxed);
    }

    /// How long a lease stays trusted after its renewal: `margin`, or three times that (one and a
    /// half lease times) while a runner alone on its store cannot reach it. Nobody can take the
    /// lease over then until the run's heartbeat is two lease times old (see
    /// `Store::requeue_stale`), so a store that restarts within that time stops no attempt; a
    /// longer outage stops them before anyone else may start them.
    fn trust(&self, margin: Duration) -> Duration {
        if self.alone.load(Ordering::Relaxed) && self.unanswered.load(Ordering::Relaxed) {
            margin * 3
        } else {
            margin
        }
    }

    pub fn release(&self, key: &LeaseKey) {
        self.lock().remove(key);
    }

    /// These leases were renewed in the store just now (the others were not: expired, or taken).
    pub fn renewed(&self, keys: &[LeaseKey]) {
        let now = Instant::now();
        let mut held = self.lock();
        for k in keys {
            if let Some(h) = held.get_mut(k) {
                h.renewed = now;
            }
        }
    }

    /// Cancels the attempts whose lease was last renewed more than `margin` ago; returns their
    /// keys.
    pub fn cancel_overdue(&self, margin: Duration) -> Vec<LeaseKey> {
        let margin = self.trust(margin);
        let mut out = Vec::new();
        for (k, h) in self.lock().iter() {
            if h.renewed.elapsed() > margin && !h.cancel.is_cancelled() {
                h.cancel.cancel();
                out.push(k.clone());
            }
        }
        out
    }

    /// Whether the lease is still trusted: held, and renewed within `margin`.
    pub fn held(&self, key: &LeaseKey, margin: Duration) -> bool {
        let margin = self.trust(margin);
        self.lock()
            .get(key)
            .is_some_and(|h| h.renewed.elapsed() <= margin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> LeaseKey {
        ("j".into(), "s".into(), DateTime::<Utc>::UNIX_EPOCH)
    }

    #[test]
    fn an_overdue_lease_is_no_longer_held_and_its_attempt_is_cancelled() {
        let (book, m) = (LeaseBook::default(), Duration::from_millis(20));
        let cancel = CancellationToken::new();
        book.hold(key(), cancel.clone());
        assert!(book.held(&key(), m));
        assert!(book.cancel_overdue(m).is_empty());
        std::thread::sleep(Duration::from_millis(30));
        assert!(!book.held(&key(), m), "past half the ttl");
        assert_eq!(book.cancel_overdue(m), vec![key()]);
        assert!(cancel.is_cancelled());
        assert!(book.cancel_overdue(m).is_empty(), "cancelled once");
    }

    #[test]
    fn alone_on_an_unreachable_store_a_lease_is_trusted_three_times_longer() {
        let (book, m) = (LeaseBook::default(), Duration::from_millis(20));
        let cancel = CancellationToken::new();
        book.hold(key(), cancel.clone());
        std::thread::sleep(Duration::from_millis(30));
        book.set_alone(true);
        assert!(
            !book.held(&key(), m),
            "alone, but the store answered: the usual margin"
        );
        book.set_answered(false);
        assert!(book.held(&key(), m), "alone and unanswered: 60 ms");
        assert!(book.cancel_overdue(m).is_empty());
        book.set_alone(false);
        assert!(
            !book.held(&key(), m),
            "with others on the store: the usual margin"
        );
        book.set_alone(true);
        std::thread::sleep(Duration::from_millis(40));
        assert!(!book.held(&key(), m), "past three margins");
        assert_eq!(book.cancel_overdue(m), vec![key()]);
        assert!(cancel.is_cancelled());
    }

    #[test]
    fn a_renewal_keeps_it_held_and_a_release_forgets_it() {
        let (book, m) = (LeaseBook::default(), Duration::from_millis(20));
        book.hold(key(), CancellationToken::new());
        std::thread::sleep(Duration::from_millis(30));
        book.renewed(&[key()]);
        assert!(book.held(&key(), m));
        book.release(&key());
        assert!(!book.held(&key(), m));
    }
}
