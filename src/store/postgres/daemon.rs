//! The daemon's part of the PostgreSQL store: scheduling decisions, step leases, pauses, requests
//! and daemon heartbeats (see [`crate::store::Store`] for what each operation means).
//!
//! Every write is one statement (the multi-table ones, `schedule_interval`, `requeue_stale` and
//! `claim_step`, with data-modifying CTEs), so it is all or nothing and several daemons never see
//! half of one. Sub-statements of one `WITH` all see the same snapshot: `schedule_interval`
//! therefore takes the new run's id from the sequence up front rather than reading back a row a
//! sibling inserted, and `claim_step` relies on `INSERT ... ON CONFLICT DO UPDATE ... WHERE`,
//! which judges the latest committed lease (not the snapshot), so two daemons racing for one step
//! never both acquire it. Every time is the server's `now()`.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use super::{
    first, get, run_from_row, stale_duration, with_timeout, Lease, PgStore, INTERRUPTED,
    RUN_COLUMNS,
};
use crate::store::{
    Claim, DaemonRecord, DaemonRun, Decision, Interval, LeaseRecord, RequestKind, RequestRecord,
    RequestState, RunRecord, SkippedInterval, StoreError, Trigger,
};

/// A duration as the microseconds the SQL multiplies by `interval '1 microsecond'` (capped like
/// `stale_after`, so a huge one never overflows).
pub(super) fn micros(d: Duration) -> i64 {
    stale_duration(d).num_microseconds().unwrap_or(i64::MAX)
}

/// `LIMIT $n`: NULL (no limit) for 0.
pub(super) fn limit_param(limit: usize) -> Option<i64> {
    i64::try_from(limit).ok().filter(|&l| l > 0)
}

const REQUEST_COLUMNS: &str =
    "id, kind, job, spec, priority, state, message, created_at, updated_at";

fn request_from_row(row: &Row, op: &'static str) -> Result<RequestRecord, StoreError> {
    Ok(RequestRecord {
        id: get(row, 0, op)?,
        kind: get::<&str>(row, 1, op)?.parse()?,
        job: get(row, 2, op)?,
        spec: get(row, 3, op)?,
        priority: get(row, 4, op)?,
        state: get::<&str>(row, 5, op)?.parse()?,
        message: get(row, 6, op)?,
        created_at: get(row, 7, op)?,
        updated_at: get(row, 8, op)?,
    })
}

const LEASE_COLUMNS: &str = "job, step, interval_start, owner, run_id, acquired_at, expires_at";

fn lease_from_row(row: &Row, op: &'static str) -> Result<LeaseRecord, StoreError> {
    Ok(LeaseRecord {
        job: get(row, 0, op)?,
        step: get(row, 1, op)?,
        interval_start: get(row, 2, op)?,
        owner: get(row, 3, op)?,
        run_id: get(row, 4, op)?,
        acquired_at: get(row, 5, op)?,
        expires_at: get(row, 6, op)?,
    })
}

const DAEMON_COLUMNS: &str = "id, pid, host, version, started_at, heartbeat_at, stopped_at, status";

fn daemon_from_row(row: &Row, op: &'static str) -> Result<DaemonRecord, StoreError> {
    Ok(DaemonRecord {
        id: get(row, 0, op)?,
        pid: i64::from(get::<i32>(row, 1, op)?),
        host: get(row, 2, op)?,
        version: get(row, 3, op)?,
        started_at: get(row, 4, op)?,
        heartbeat_at: get(row, 5, op)?,
        stopped_at: get(row, 6, op)?,
        status: get(row, 7, op)?,
    })
}

impl PgStore {
    pub async fn schedule_interval(
        &self,
        job: &str,
        interval: Interval,
        decision: &Decision,
    ) -> Result<Option<i64>, StoreError> {
        const OP: &str = "schedule_interval";
        let (kind, reason, priority) = match decision {
            Decision::Run { priority } => ("run", None, *priority),
            Decision::Skipped { reason } => ("skipped", Some(reason.as_str()), 0),
        };
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            // The run's id comes from the sequence with the decision, so the run is created only
            // when the decision row is (a conflict inserts nothing, here or below).
            let rows = c
                .query(
                    OP,
                    "WITH decided AS ( \
                         INSERT INTO scheduled_intervals (job, interval_start, interval_end, \
                         decision, reason, run_id) \
                         VALUES ($1, $2, $3, $4::text, $5::text, \
                                 CASE WHEN $4::text = 'run' \
                                      THEN nextval(pg_get_serial_sequence('runs', 'id')) END) \
                         ON CONFLICT (job, interval_start) DO NOTHING \
                         RETURNING run_id \
                     ), created AS ( \
                         INSERT INTO runs (id, job, interval_start, interval_end, state, \
                         \"trigger\", executor, priority) \
                         SELECT run_id, $1, $2, $3, 'queued', 'schedule', 'daemon', $6 \
                         FROM decided WHERE run_id IS NOT NULL \
                         RETURNING id \
                     ) \
                     SELECT id FROM created",
                    &[
                        &job,
                        &interval.start,
                        &interval.end,
                        &kind,
                        &reason,
                        &priority,
                    ],
                )
                .await?;
            rows.first().map(|r| get(r, 0, OP)).transpose()
        })
        .await
    }

    pub async fn last_scheduled(&self) -> Result<HashMap<String, DateTime<Utc>>, StoreError> {
        const OP: &str = "last_scheduled";
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let rows = c
                .query(
                    OP,
                    "SELECT job, max(interval_start) FROM scheduled_intervals GROUP BY job",
                    &[],
                )
                .await?;
            rows.iter()
                .map(|r| Ok((get(r, 0, OP)?, get(r, 1, OP)?)))
                .collect()
        })
        .await
    }

    pub async fn skipped_intervals(
        &self,
        job: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SkippedInterval>, StoreError> {
        const OP: &str = "skipped_intervals";
        let limit = limit_param(limit);
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let rows = c
                .query(
                    OP,
                    "SELECT job, interval_start, interval_end, coalesce(reason, ''), created_at \
                     FROM scheduled_intervals WHERE decision = 'skipped' \
                     AND ($1::text IS NULL OR job = $1) \
                     ORDER BY interval_start DESC, job LIMIT $2",
                    &[&job, &limit],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(SkippedInterval {
                        job: get(r, 0, OP)?,
                        interval: Interval {
                            start: get(r, 1, OP)?,
                            end: get(r, 2, OP)?,
                        },
                        reason: get(r, 3, OP)?,
                        created_at: get(r, 4, OP)?,
                    })
                })
                .collect()
        })
        .await
    }

    pub async fn create_daemon_run(
        &self,
        job: &str,
        interval: Interval,
        trigger: Trigger,
        request_id: Option<i64>,
        priority: i32,
    ) -> Result<i64, StoreError> {
        const OP: &str = "create_daemon_run";
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let rows = c
                .query(
                    OP,
                    "INSERT INTO runs (job, interval_start, interval_end, state, \"trigger\", \
                     executor, request_id, priority) \
                     VALUES ($1, $2, $3, 'queued', $4, 'daemon', $5, $6) RETURNING id",
                    &[
                        &job,
                        &interval.start,
                        &interval.end,
                        &trigger.as_str(),
                        &request_id,
                        &priority,
                    ],
                )
                .await?;
            get(first(&rows, OP)?, 0, OP)
        })
        .await
    }

    pub async fn take_queued_run(&self, run_id: i64, owner: &str) -> Result<bool, StoreError> {
        const OP: &str = "take_queued_run";
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let n = c
                .execute(
                    OP,
                    "UPDATE runs SET state = 'running', started_at = now(), heartbeat_at = now(), \
                     ended_at = NULL, owner = $2 WHERE id = $1 AND state = 'queued'",
                    &[&run_id, &owner],
                )
                .await?;
            Ok(n == 1)
        })
        .await
    }

    pub async fn queued_daemon_runs(&self) -> Result<Vec<DaemonRun>, StoreError> {
        const OP: &str = "queued_daemon_runs";
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let sql = select!(
                RUN_COLUMNS,
                ", request_id, priority FROM runs \
                 WHERE executor = 'daemon' AND state = 'queued' ORDER BY id"
            );
            let rows = c.query(OP, sql, &[]).await?;
            rows.iter()
                .map(|r| {
                    Ok(DaemonRun {
                        run: run_from_row(r, OP)?,
                        request_id: get(r, 10, OP)?,
                        priority: get(r, 11, OP)?,
                    })
                })
                .collect()
        })
        .await
    }

    pub async fn open_daemon_runs(&self) -> Result<HashMap<String, usize>, StoreError> {
        const OP: &str = "open_daemon_runs";
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let rows = c
                .query(
                    OP,
                    "SELECT job, count(*) FROM runs WHERE executor = 'daemon' \
                     AND state IN ('queued', 'running') AND \"trigger\" <> 'backfill' GROUP BY job",
                    &[],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    let n: i64 = get(r, 1, OP)?;
                    Ok((get(r, 0, OP)?, usize::try_from(n).unwrap_or(0)))
                })
                .collect()
        })
        .await
    }

    pub async fn requeue_stale(&self, stale_after: Duration) -> Result<Vec<i64>, StoreError> {
        const OP: &str = "requeue_stale";
        let micros = micros(stale_after);
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            // The row locks of the first UPDATE make two daemons re-queue each run once.
            let rows = c
                .query(
                    OP,
                    "WITH stale AS ( \
                         UPDATE runs SET state = 'queued' \
                         WHERE state = 'running' AND executor = 'daemon' \
                         AND coalesce(heartbeat_at, started_at, created_at) \
                             <= now() - $1::bigint * interval '1 microsecond' \
                         RETURNING id \
                     ), steps AS ( \
                         UPDATE step_intervals SET state = 'pending', updated_at = now() \
                         WHERE run_id IN (SELECT id FROM stale) \
                         AND state IN ('running', 'up_for_retry') \
                         RETURNING 1 \
                     ), attempts AS ( \
                         UPDATE step_attempts SET state = 'failed', ended_at = now(), \
                         duration_ms = greatest(0, floor(extract(epoch FROM now() - started_at) \
                                                         * 1000))::bigint, \
                         error = coalesce(error, $2) \
                         WHERE run_id IN (SELECT id FROM stale) AND state = 'running' \
                         RETURNING 1 \
                     ), leases AS ( \
                         DELETE FROM step_leases WHERE run_id IN (SELECT id FROM stale) \
                         RETURNING 1 \
                     ) \
                     SELECT id FROM stale ORDER BY id",
                    &[&micros, &INTERRUPTED],
                )
                .await?;
            let mut ids = Vec::with_capacity(rows.len());
            for row in &rows {
                let run_id: i64 = get(row, 0, OP)?;
                tracing::warn!(run_id, "re-queued a daemon run whose daemon stopped");
                ids.push(run_id);
            }
            Ok(ids)
        })
        .await
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn claim_step(
        &self,
        job: &str,
        step: &str,
        interval_start: DateTime<Utc>,
        owner: &str,
        run_id: i64,
        ttl: Duration,
        skip_done: bool,
        pool: Option<(&str, u32)>,
    ) -> Result<Claim, StoreError> {
        const OP: &str = "claim_step";
        let ttl = micros(ttl);
        let key = ClaimKey {
            job,
            step,
            interval_start,
            owner,
            run_id,
            ttl,
            skip_done,
        };
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let Some((pool, size)) = pool else {
                return claim_on(&mut c, &key, None).await;
            };
            // A pool's leases are counted and taken under one lock per pool (held to COMMIT), so
            // two daemons claiming the pool's last slot never both get it.
            c.simple(OP, "BEGIN").await?;
            let lock = format!("cranium.pool:{}:{pool}", self.inner.schema);
            let result = match c
                .execute(OP, "SELECT pg_advisory_xact_lock(hashtext($1))", &[&lock])
                .await
            {
                Ok(_) => claim_on(&mut c, &key, Some((pool, i64::from(size)))).await,
                Err(e) => Err(e),
            };
            let result = match result {
                Ok(v) => c.simple(OP, "COMMIT").await.map(|()| v),
                Err(e) => Err(e),
            };
            if result.is_err() && c.simple(OP, "ROLLBACK").await.is_err() {
                // Never hand a connection in an unknown transaction state back to the pool.
                c.ok = false;
            }
            result
        })
        .await
    }

    pub async fn renew_leases(
        &self,
        owner: &str,
        ttl: Duration,
    ) -> Result<Vec<(String, String, DateTime<Utc>)>, StoreError> {
        const OP: &str = "renew_leases";
        let ttl = micros(ttl);
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let rows = c
                .query(
                    OP,
                    "UPDATE step_leases SET expires_at = now() + $2::bigint * interval '1 microsecond' \
                     WHERE owner = $1 RETURNING job, step, interval_start",
                    &[&owner, &ttl],
                )
                .await?;
            rows.iter()
                .map(|r| Ok((get(r, 0, OP)?, get(r, 1, OP)?, get(r, 2, OP)?)))
                .collect()
        })
        .await
    }

    pub async fn release_step(
        &self,
        job: &str,
        step: &str,
        interval_start: DateTime<Utc>,
        owner: &str,
    ) -> Result<(), StoreError> {
        const OP: &str = "release_step";
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            c.execute(
                OP,
                "DELETE FROM step_leases WHERE job = $1 AND interval_start = $2 AND step = $3 \
                 AND owner = $4",
                &[&job, &interval_start, &step, &owner],
            )
            .await?;
            Ok(())
        })
        .await
    }

    pub async fn release_leases(&self, owner: &str) -> Result<u64, StoreError> {
        const OP: &str = "release_leases";
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            c.execute(OP, "DELETE FROM step_leases WHERE owner = $1", &[&owner])
                .await
        })
        .await
    }

    pub async fn leases(&self) -> Result<Vec<LeaseRecord>, StoreError> {
        const OP: &str = "leases";
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let sql = select!(
                LEASE_COLUMNS,
                "FROM step_leases ORDER BY job, interval_start, step"
            );
            let rows = c.query(OP, sql, &[]).await?;
            rows.iter().map(|r| lease_from_row(r, OP)).collect()
        })
        .await
    }

    pub async fn set_paused(&self, job: &str, paused: bool) -> Result<bool, StoreError> {
        const OP: &str = "set_paused";
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let n = if paused {
                c.execute(
                    OP,
                    "INSERT INTO paused_jobs (job, paused_at) VALUES ($1, now()) \
                     ON CONFLICT (job) DO NOTHING",
                    &[&job],
                )
                .await?
            } else {
                c.execute(OP, "DELETE FROM paused_jobs WHERE job = $1", &[&job])
                    .await?
            };
            Ok(n > 0)
        })
        .await
    }

    pub async fn paused_jobs(&self) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        const OP: &str = "paused_jobs";
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let rows = c
                .query(
                    OP,
                    "SELECT job, paused_at FROM paused_jobs ORDER BY job",
                    &[],
                )
                .await?;
            rows.iter()
                .map(|r| Ok((get(r, 0, OP)?, get(r, 1, OP)?)))
                .collect()
        })
        .await
    }

    pub async fn submit_request(
        &self,
        kind: RequestKind,
        job: &str,
        spec: &serde_json::Value,
        priority: i32,
    ) -> Result<i64, StoreError> {
        const OP: &str = "submit_request";
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let rows = c
                .query(
                    OP,
                    "INSERT INTO requests (kind, job, spec, priority, state, created_at, \
                     updated_at) VALUES ($1, $2, $3, $4, 'pending', now(), now()) RETURNING id",
                    &[&kind.as_str(), &job, spec, &priority],
                )
                .await?;
            get(first(&rows, OP)?, 0, OP)
        })
        .await
    }

    pub async fn requests(
        &self,
        open_only: bool,
        limit: usize,
    ) -> Result<Vec<RequestRecord>, StoreError> {
        const OP: &str = "requests";
        let limit = limit_param(limit);
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let sql = if open_only {
                select!(
                    REQUEST_COLUMNS,
                    "FROM requests WHERE state IN ('pending', 'running') ORDER BY id LIMIT $1"
                )
            } else {
                select!(REQUEST_COLUMNS, "FROM requests ORDER BY id DESC LIMIT $1")
            };
            let rows = c.query(OP, sql, &[&limit]).await?;
            rows.iter().map(|r| request_from_row(r, OP)).collect()
        })
        .await
    }

    pub async fn request(&self, id: i64) -> Result<Option<RequestRecord>, StoreError> {
        const OP: &str = "request";
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let sql = select!(REQUEST_COLUMNS, "FROM requests WHERE id = $1");
            let rows = c.query(OP, sql, &[&id]).await?;
            rows.first().map(|r| request_from_row(r, OP)).transpose()
        })
        .await
    }

    pub async fn set_request_state(
        &self,
        id: i64,
        state: RequestState,
        message: Option<&str>,
    ) -> Result<(), StoreError> {
        const OP: &str = "set_request_state";
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            c.execute(
                OP,
                "UPDATE requests SET state = $2, message = coalesce($3, message), \
                 updated_at = now() WHERE id = $1 AND state <> 'cancelled'",
                &[&id, &state.as_str(), &message],
            )
            .await?;
            Ok(())
        })
        .await
    }

    pub async fn claim_requests(
        &self,
        owner: &str,
        ttl: Duration,
    ) -> Result<Vec<RequestRecord>, StoreError> {
        const OP: &str = "claim_requests";
        let ttl = micros(ttl);
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            // Rows another daemon is claiming right now are skipped, not waited for.
            let rows = c
                .query(
                    OP,
                    "WITH c AS ( \
                         SELECT id FROM requests WHERE state IN ('pending', 'running') \
                         AND (owner IS NULL OR owner = $1 OR owner_until <= now()) \
                         ORDER BY id FOR UPDATE SKIP LOCKED \
                     ) \
                     UPDATE requests r SET owner = $1, \
                         owner_until = now() + $2::bigint * interval '1 microsecond' \
                     FROM c WHERE r.id = c.id \
                     RETURNING r.id, r.kind, r.job, r.spec, r.priority, r.state, r.message, \
                               r.created_at, r.updated_at",
                    &[&owner, &ttl],
                )
                .await?;
            let mut out: Vec<RequestRecord> = rows
                .iter()
                .map(|r| request_from_row(r, OP))
                .collect::<Result<_, _>>()?;
            out.sort_by_key(|r| r.id);
            Ok(out)
        })
        .await
    }

    pub async fn release_requests(&self, owner: &str) -> Result<u64, StoreError> {
        const OP: &str = "release_requests";
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            c.execute(
                OP,
                "UPDATE requests SET owner = NULL, owner_until = NULL WHERE owner = $1",
                &[&owner],
            )
            .await
        })
        .await
    }

    pub async fn cancel_request(&self, id: i64) -> Result<bool, StoreError> {
        const OP: &str = "cancel_request";
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let n = c
                .execute(
                    OP,
                    "UPDATE requests SET state = 'cancelled', updated_at = now(), \
                     message = 'cancelled from the command line' \
                     WHERE id = $1 AND state IN ('pending', 'running')",
                    &[&id],
                )
                .await?;
            Ok(n > 0)
        })
        .await
    }

    pub async fn request_runs(&self, id: i64) -> Result<Vec<RunRecord>, StoreError> {
        const OP: &str = "request_runs";
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let sql = select!(RUN_COLUMNS, "FROM runs WHERE request_id = $1 ORDER BY id");
            let rows = c.query(OP, sql, &[&id]).await?;
            rows.iter().map(|r| run_from_row(r, OP)).collect()
        })
        .await
    }

    pub async fn daemon_beat(
        &self,
        id: &str,
        pid: i64,
        host: &str,
        version: &str,
        status: &serde_json::Value,
    ) -> Result<(), StoreError> {
        const OP: &str = "daemon_beat";
        // The column is `integer` (process ids are small).
        let pid = i32::try_from(pid).map_err(|_| {
            StoreError::Corrupt(format!("daemon {id}: pid {pid} does not fit an integer"))
        })?;
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            c.execute(
                OP,
                "INSERT INTO daemons (id, pid, host, version, started_at, heartbeat_at, \
                 stopped_at, status) VALUES ($1, $2, $3, $4, now(), now(), NULL, $5) \
                 ON CONFLICT (id) DO UPDATE SET pid = EXCLUDED.pid, host = EXCLUDED.host, \
                 version = EXCLUDED.version, heartbeat_at = EXCLUDED.heartbeat_at, \
                 stopped_at = NULL, status = EXCLUDED.status",
                &[&id, &pid, &host, &version, status],
            )
            .await?;
            Ok(())
        })
        .await
    }

    pub async fn daemon_stopped(&self, id: &str) -> Result<(), StoreError> {
        const OP: &str = "daemon_stopped";
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            c.execute(
                OP,
                "UPDATE daemons SET stopped_at = now() WHERE id = $1",
                &[&id],
            )
            .await?;
            Ok(())
        })
        .await
    }

    pub async fn daemons(&self) -> Result<Vec<DaemonRecord>, StoreError> {
        const OP: &str = "daemons";
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let sql = select!(
                DAEMON_COLUMNS,
                "FROM daemons ORDER BY heartbeat_at DESC, id"
            );
            let rows = c.query(OP, sql, &[]).await?;
            rows.iter().map(|r| daemon_from_row(r, OP)).collect()
        })
        .await
    }
}

/// What [`PgStore::claim_step`] claims.
struct ClaimKey<'a> {
    job: &'a str,
    step: &'a str,
    interval_start: DateTime<Utc>,
    owner: &'a str,
    run_id: i64,
    ttl: i64,
    skip_done: bool,
}

/// One claim on `c` (inside the pool's transaction when `pool` is given: then a pool with `size`
/// unexpired leases of other steps is full).
async fn claim_on(
    c: &mut Lease<'_>,
    k: &ClaimKey<'_>,
    pool: Option<(&str, i64)>,
) -> Result<Claim, StoreError> {
    const OP: &str = "claim_step";
    let (job, step, interval_start, owner, run_id, ttl, skip_done) = (
        k.job,
        k.step,
        k.interval_start,
        k.owner,
        k.run_id,
        k.ttl,
        k.skip_done,
    );
    let (pool_name, pool_size) = (pool.map(|p| p.0), pool.map(|p| p.1));
    loop {
        // The lease is taken when there is none, when it is the caller's (a renewal,
        // which keeps acquired_at) or when it expired. The ON CONFLICT ... WHERE judges
        // the latest committed lease, so of two racing claims one gets no row back.
        // Only a lease that changes hands (or is new) interrupts the running attempts
        // left behind: a renewal's attempts are the caller's own. `fresh` tells them
        // apart: a renewal keeps the earlier acquired_at.
        let rows = c
            .query(
                OP,
                "WITH done AS ( \
                     SELECT outputs FROM step_intervals \
                     WHERE ($7::boolean OR run_id = $5) AND job = $1 AND interval_start = $3 \
                     AND step = $2 AND state = 'success' \
                 ), full_pool AS ( \
                     SELECT 1 FROM step_leases WHERE $9::text IS NOT NULL AND pool = $9 \
                     AND expires_at > now() \
                     AND NOT (job = $1 AND interval_start = $3 AND step = $2) \
                     HAVING count(*) >= $10::bigint \
                 ), claimed AS ( \
                     INSERT INTO step_leases (job, step, interval_start, owner, run_id, \
                     acquired_at, expires_at, token, pool) \
                     SELECT $1, $2, $3, $4, $5, now(), \
                            now() + $6::bigint * interval '1 microsecond', \
                            nextval('lease_tokens'), $9 \
                     WHERE NOT EXISTS (SELECT 1 FROM done) \
                     AND NOT EXISTS (SELECT 1 FROM full_pool) \
                     ON CONFLICT (job, interval_start, step) DO UPDATE SET \
                     owner = EXCLUDED.owner, run_id = EXCLUDED.run_id, pool = EXCLUDED.pool, \
                     acquired_at = CASE WHEN step_leases.owner = EXCLUDED.owner \
                                         AND step_leases.expires_at > now() \
                                        THEN step_leases.acquired_at \
                                        ELSE EXCLUDED.acquired_at END, \
                     token = CASE WHEN step_leases.owner = EXCLUDED.owner \
                                   AND step_leases.expires_at > now() \
                                  THEN step_leases.token ELSE EXCLUDED.token END, \
                     expires_at = EXCLUDED.expires_at \
                     WHERE step_leases.owner = EXCLUDED.owner \
                     OR step_leases.expires_at <= now() \
                     RETURNING acquired_at = now() AS fresh, token \
                 ), interrupted AS ( \
                     UPDATE step_attempts SET state = 'failed', ended_at = now(), \
                     duration_ms = greatest(0, floor(extract(epoch FROM now() - started_at) \
                                                     * 1000))::bigint, \
                     error = coalesce(error, $8) \
                     WHERE job = $1 AND interval_start = $3 AND step = $2 \
                     AND state = 'running' AND EXISTS (SELECT 1 FROM claimed WHERE fresh) \
                     RETURNING 1 \
                 ) \
                 SELECT EXISTS (SELECT 1 FROM done), (SELECT outputs FROM done), \
                        (SELECT token FROM claimed), EXISTS (SELECT 1 FROM full_pool)",
                &[
                    &job,
                    &step,
                    &interval_start,
                    &owner,
                    &run_id,
                    &ttl,
                    &skip_done,
                    &INTERRUPTED,
                    &pool_name,
                    &pool_size,
                ],
            )
            .await?;
        let row = first(&rows, OP)?;
        if get::<bool>(row, 0, OP)? {
            return Ok(Claim::Done {
                outputs: get(row, 1, OP)?,
            });
        }
        if let Some(token) = get::<Option<i64>>(row, 2, OP)? {
            return Ok(Claim::Acquired { token });
        }
        let full: bool = get(row, 3, OP)?;
        let rows = c
            .query(
                OP,
                "SELECT owner, expires_at FROM step_leases \
                 WHERE job = $1 AND interval_start = $2 AND step = $3 \
                 AND owner <> $4 AND expires_at > now()",
                &[&job, &interval_start, &step, &owner],
            )
            .await?;
        if let Some(row) = rows.first() {
            return Ok(Claim::Held {
                owner: get(row, 0, OP)?,
                expires_at: get(row, 1, OP)?,
            });
        }
        if full {
            return Ok(Claim::Full {
                pool: pool_name.unwrap_or_default().to_string(),
            });
        }
        // The holder released it or its lease expired since: claim again.
    }
}
