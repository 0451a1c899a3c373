//! Pooled database connections, one pool per (kind, URL), shared by every step of the process.
//!
//! A daemon with 500 jobs must not open a session per `sql` attempt: each pool holds at most
//! `max_connections` connections (a connection setting, default [`DEFAULT_MAX_CONNECTIONS`]),
//! lends one to a step for the length of its attempt, and takes it back when the step is done.
//! A step that finds every connection lent waits (within its deadline, cancellable) instead of
//! opening another. A connection that comes back broken (its driver gave it up after a cleanup
//! that did not finish, or it closed) is dropped, not pooled; one that is lent again first gets a
//! fresh session ([`DbClient::reset_session`]), so nothing one step set leaks into the next.
//!
//! The pools live as long as the process and survive a hot reload of the project (the key is the
//! kind, the URL and `max_connections`, not the project version; a reload that changes
//! `max_connections` starts a new pool and the old one is left with its idle connections).
//!
//! So do their connections: each is opened on a runtime of the pool's own (see
//! [`connection_runtime`]), which drives its socket for as long as the process lives. A
//! connection opened on the runtime of whoever first asked for it would die with that runtime
//! while another borrower is in the middle of a transaction on it (a `COMMIT` failing with
//! "connection closed"), which is what happens when several runtimes share the pools (one per
//! test; a library user's own).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{DbClient, DbError, DbKind};

/// Connections a pool opens at most when the connection does not say.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10;

/// One pool.
#[derive(Debug)]
struct Pool {
    kind: DbKind,
    url: String,
    connect_timeout: Duration,
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<DbClient>>,
    max: usize,
}

fn registry() -> &'static Mutex<HashMap<String, Arc<Pool>>> {
    static POOLS: OnceLock<Mutex<HashMap<String, Arc<Pool>>>> = OnceLock::new();
    POOLS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// A connection lent by a pool; it goes back when dropped (unless it broke).
#[derive(Debug)]
pub struct Pooled {
    client: Option<DbClient>,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
}

impl std::ops::Deref for Pooled {
    type Target = DbClient;
    fn deref(&self) -> &DbClient {
        self.client
            .as_ref()
            .expect("a pooled connection holds its client until dropped")
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut DbClient {
        self.client
            .as_mut()
            .expect("a pooled connection holds its client until dropped")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            if c.is_usable() {
                let mut idle = self
                    .pool
                    .idle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if idle.len() < self.pool.max {
                    idle.push(c);
                }
            }
        }
    }
}

fn key(kind: DbKind, url: &str, max: usize) -> String {
    format!("{}|{max}|{url}", kind.name())
}

/// Borrows a connection to `url` from its pool (made on first use with `max_connections`),
/// waiting for one to come back when all are lent, until `deadline` or `cancel`.
pub async fn checkout(
    kind: DbKind,
    url: &str,
    connect_timeout: Duration,
    max_connections: usize,
    deadline: Option<Instant>,
    cancel: &CancellationToken,
) -> Result<Pooled, DbError> {
    let pool = {
        let mut pools = registry().lock().unwrap_or_else(PoisonError::into_inner);
        pools
            .entry(key(kind, url, max_connections.max(1)))
            .or_insert_with(|| {
                let max = max_connections.max(1);
                Arc::new(Pool {
                    kind,
                    url: url.to_string(),
                    connect_timeout,
                    permits: Arc::new(Semaphore::new(max)),
                    idle: Mutex::new(Vec::new()),
                    max,
                })
            })
            .clone()
    };
    let acquire = pool.permits.clone().acquire_owned();
    let permit = tokio::select! {
        p = acquire => p.map_err(|_| super::connect_error(url, "the connection pool is closed"))?,
        _ = cancel.cancelled() => return Err(DbError::Cancelled),
        _ = sleep_until(deadline) => {
            return Err(super::connect_error(
                url,
                format!("every one of its {} pooled connections stayed busy until the step's deadline (raise max_connections)", pool.max),
            ))
        }
    };
    loop {
        let reused = pool
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let Some(mut c) = reused else { break };
        if !c.is_usable() {
            continue;
        }
        match c.reset_session().await {
            Ok(()) => {
                return Ok(Pooled {
                    client: Some(c),
                    pool,
                    _permit: permit,
                })
            }
            Err(e) => tracing::debug!("a pooled connection could not be reset: {e}"),
        }
    }
    let (kind, url, timeout) = (pool.kind, pool.url.clone(), pool.connect_timeout);
    let connect = connection_runtime(&pool.url)?
        .spawn(async move { DbClient::connect(kind, &url, timeout).await });
    // Cancellable like the wait above (the connect has its own timeout).
    let c = tokio::select! {
        r = connect => r.map_err(|e| {
            super::connect_error(&pool.url, format!("the connect task failed: {e}"))
        })??,
        _ = cancel.cancelled() => return Err(DbError::Cancelled),
    };
    Ok(Pooled {
        client: Some(c),
        pool,
        _permit: permit,
    })
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The runtime that opens and drives pooled connections: built on first use, alive as long as
/// the process (two worker threads; a connection's socket is read and written there, its
/// queries still run from the borrower's task).
fn connection_runtime(url: &str) -> Result<&'static tokio::runtime::Runtime, DbError> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    let rt = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cranium-db")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    });
    match rt {
        Ok(rt) => Ok(rt),
        Err(e) => Err(super::connect_error(
            url,
            format!("cannot start the connection pool's runtime: {e}"),
        )),
    }
}
