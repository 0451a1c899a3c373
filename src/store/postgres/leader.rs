//! The leader lock of the daemons sharing one PostgreSQL store: a session-level advisory lock,
//! held on a connection of its own (never one of the pool's), so the lock lives exactly as long as
//! that session. A daemon that dies drops the connection and the server frees the lock at once; one
//! that is frozen keeps it until another daemon ends its session ([`PgStore::depose_frozen_leader`]).
//!
//! The lock is `pg_advisory_lock(CLASS, hashtext('cranium.leader:' || schema))`: one leader per
//! schema, so throwaway test schemas on one server never see each other's leader. The leader's
//! session names its daemon in `application_name` (`cranium leader ID`), which is how the others
//! find out who leads and how long its session has been silent.

use std::time::Duration;

use tokio_postgres::Client;

use super::{connect, err, first, with_timeout, PgStore};
use crate::store::StoreError;

/// The first key of the lock (`crnm`): keeps it apart from any other advisory lock.
const CLASS: i32 = 0x6372_6e6d;
/// How long one check of the session may take before the session counts as lost.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// The session holding the lock: its process id, its name and how long it has been silent.
const HOLDER: &str = "SELECT a.pid, coalesce(a.application_name, ''), \
     extract(epoch FROM clock_timestamp() - coalesce(a.state_change, a.backend_start))::float8 \
     FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
     WHERE l.locktype = 'advisory' AND l.granted \
     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
     AND l.classid = $1::int4::oid AND l.objid = hashtext($2)::oid AND l.objsubid = 2";

/// A dedicated session that holds (or tries for) the leader lock.
pub struct LeaderSession {
    client: Client,
    key: String,
}

/// Who holds the leader lock, as another daemon sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaderHolder {
    /// The holder's backend process id on the server.
    pub pid: i32,
    /// The daemon id its session names (empty if it named none).
    pub daemon: String,
    /// How long its session has been silent (the leader checks it four times a second).
    pub silent_for: Duration,
}

async fn bounded<T>(
    op: &'static str,
    fut: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(CHECK_TIMEOUT, fut)
        .await
        .map_err(|_| StoreError::NoAnswer(op, CHECK_TIMEOUT))?
        .map_err(err(op))
}

impl PgStore {
    fn leader_key(&self) -> String {
        format!("cranium.leader:{}", self.inner.schema)
    }

    /// Opens the session that competes for the leader lock, naming `daemon` in it.
    pub async fn leader_session(&self, daemon: &str) -> Result<LeaderSession, StoreError> {
        const OP: &str = "leader session";
        let mut config = self.inner.config.clone();
        // application_name is at most 63 bytes; the id is cut on a character boundary.
        let mut name = format!("cranium leader {daemon}");
        while name.len() > 63 {
            name.pop();
        }
        config.application_name(&name);
        config.connect_timeout(CHECK_TIMEOUT);
        let client = tokio::time::timeout(CHECK_TIMEOUT, connect(&config, &self.inner.schema, OP))
            .await
            .map_err(|_| StoreError::NoAnswer(OP, CHECK_TIMEOUT))??;
        Ok(LeaderSession {
            client,
            key: self.leader_key(),
        })
    }

    /// The session holding the leader lock now, if any.
    pub async fn leader_holder(&self) -> Result<Option<LeaderHolder>, StoreError> {
        const OP: &str = "leader holder";
        let key = self.leader_key();
        let rows = with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            c.query(OP, HOLDER, &[&CLASS, &key]).await
        })
        .await?;
        let row = rows.first();
        Ok(match row {
            None => None,
            Some(r) => {
                let name: String = r.try_get(1).map_err(err(OP))?;
                let silent: f64 = r.try_get(2).map_err(err(OP))?;
                Some(LeaderHolder {
                    pid: r.try_get(0).map_err(err(OP))?,
                    daemon: name
                        .strip_prefix("cranium leader ")
                        .unwrap_or(&name)
                        .to_string(),
                    silent_for: Duration::from_secs_f64(silent.max(0.0)),
                })
            }
        })
    }

    /// Ends the leader's session if it has been silent for `silent_for` or longer (its daemon is
    /// frozen or its host unreachable): the lock is freed for the next daemon to take. Returns the
    /// leader that was deposed.
    pub async fn depose_frozen_leader(
        &self,
        silent_for: Duration,
    ) -> Result<Option<LeaderHolder>, StoreError> {
        const OP: &str = "depose a frozen leader";
        let Some(holder) = self.leader_holder().await? else {
            return Ok(None);
        };
        if holder.silent_for < silent_for {
            return Ok(None);
        }
        let rows = with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            c.query(OP, "SELECT pg_terminate_backend($1)", &[&holder.pid])
                .await
        })
        .await?;
        let ended: bool = first(&rows, OP)?.try_get(0).map_err(err(OP))?;
        Ok(ended.then_some(holder))
    }
}

impl LeaderSession {
    /// Takes the lock if it is free (true), without waiting.
    pub async fn try_acquire(&self) -> Result<bool, StoreError> {
        const OP: &str = "leader lock";
        bounded(
            OP,
            self.client.query_one(
                "SELECT pg_try_advisory_lock($1, hashtext($2))",
                &[&CLASS, &self.key],
            ),
        )
        .await?
        .try_get(0)
        .map_err(err(OP))
    }

    /// Proves the session (and so the lock it holds) is still alive.
    pub async fn confirm(&self) -> Result<(), StoreError> {
        const OP: &str = "leader session check";
        if self.client.is_closed() {
            return Err(StoreError::NoAnswer(OP, CHECK_TIMEOUT));
        }
        bounded(OP, self.client.simple_query("SELECT 1")).await?;
        Ok(())
    }

    /// Gives the lock up (a clean stop: the next leader need not wait for the session to end).
    pub async fn release(self) {
        let _ = tokio::time::timeout(
            CHECK_TIMEOUT,
            self.client.query_one(
                "SELECT pg_advisory_unlock($1, hashtext($2))",
                &[&CLASS, &self.key],
            ),
        )
        .await;
    }
}
