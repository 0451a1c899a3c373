//! The daemon's part of the SQLite store: scheduling decisions, step leases, pauses, requests and
//! daemon heartbeats (see [`crate::store::Store`] for what each operation means).
//!
//! Multi-statement operations run in one `BEGIN IMMEDIATE` transaction, so a claim or a decision
//! is all or nothing, and two processes on one file serialise on the write lock.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, Row, TransactionBehavior};

use super::{err, now, parse_json, parse_opt_ts, parse_ts, run_from_row, to_json, ts, SqliteStore};
use super::{RUN_COLUMNS, STEP_COLUMNS};
use crate::store::{
    stale_duration, Claim, DaemonRecord, DaemonRun, Decision, Interval, LeaseRecord, RequestKind,
    RequestRecord, RequestState, RunRecord, SkippedInterval, StoreError, Trigger, INTERRUPTED,
};

/// `now + ttl`, as stored.
fn until(ttl: Duration) -> String {
    ts(now() + stale_duration(ttl))
}

const REQUEST_COLUMNS: &str =
    "id, kind, job, spec, priority, state, message, created_at, updated_at";

fn request_from_row(row: &Row<'_>, op: &'static str) -> Result<RequestRecord, StoreError> {
    let e = err(op);
    let kind: String = row.get(1).map_err(&e)?;
    let spec: String = row.get(3).map_err(&e)?;
    let state: String = row.get(5).map_err(&e)?;
    let created: String = row.get(7).map_err(&e)?;
    let updated: String = row.get(8).map_err(&e)?;
    Ok(RequestRecord {
        id: row.get(0).map_err(&e)?,
        kind: kind.parse()?,
        job: row.get(2).map_err(&e)?,
        spec: parse_json(&spec)?,
        priority: row.get(4).map_err(&e)?,
        state: state.parse()?,
        message: row.get(6).map_err(&e)?,
        created_at: parse_ts(&created)?,
        updated_at: parse_ts(&updated)?,
    })
}

fn insert_daemon_run(
    tx: &rusqlite::Transaction<'_>,
    op: &'static str,
    job: &str,
    interval: Interval,
    trigger: Trigger,
    request_id: Option<i64>,
    priority: i32,
) -> Result<i64, StoreError> {
    tx.prepare_cached(
        "INSERT INTO runs (job, interval_start, interval_end, state, \"trigger\", created_at, \
         executor, request_id, priority) VALUES (?1, ?2, ?3, 'queued', ?4, ?5, 'daemon', ?6, ?7)",
    )
    .map_err(err(op))?
    .insert(params![
        job,
        ts(interval.start),
        ts(interval.end),
        trigger.as_str(),
        ts(now()),
        request_id,
        priority
    ])
    .map_err(err(op))
}

impl SqliteStore {
    pub async fn schedule_interval(
        &self,
        job: &str,
        interval: Interval,
        decision: &Decision,
    ) -> Result<Option<i64>, StoreError> {
        const OP: &str = "schedule_interval";
        let job = job.to_string();
        let decision = decision.clone();
        self.call(OP, move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err(OP))?;
            let (kind, reason) = match &decision {
                Decision::Run { .. } => ("run", None),
                Decision::Skipped { reason } => ("skipped", Some(reason.clone())),
            };
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO scheduled_intervals (job, interval_start, interval_end, decision, \
                     reason, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
                )
                .map_err(err(OP))?
                .execute(params![
                    job,
                    ts(interval.start),
                    ts(interval.end),
                    kind,
                    reason,
                    ts(now())
                ])
                .map_err(err(OP))?;
            let run_id = match (&decision, inserted) {
                (Decision::Run { priority }, 1) => {
                    let id = insert_daemon_run(
                        &tx,
                        OP,
                        &job,
                        interval,
                        Trigger::Schedule,
                        None,
                        *priority,
                    )?;
                    tx.prepare_cached(
                        "UPDATE scheduled_intervals SET run_id = ?3 \
                         WHERE job = ?1 AND interval_start = ?2",
                    )
                    .map_err(err(OP))?
                    .execute(params![job, ts(interval.start), id])
                    .map_err(err(OP))?;
                    Some(id)
                }
                _ => None,
            };
            tx.commit().map_err(err(OP))?;
            Ok(run_id)
        })
        .await
    }

    pub async fn last_scheduled(&self) -> Result<HashMap<String, DateTime<Utc>>, StoreError> {
        const OP: &str = "last_scheduled";
        self.call(OP, move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT job, max(interval_start) FROM scheduled_intervals GROUP BY job",
                )
                .map_err(err(OP))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(err(OP))?;
            let mut out = HashMap::new();
            for r in rows {
                let (job, at) = r.map_err(err(OP))?;
                out.insert(job, parse_ts(&at)?);
            }
            Ok(out)
        })
        .await
    }

    pub async fn skipped_intervals(
        &self,
        job: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SkippedInterval>, StoreError> {
        const OP: &str = "skipped_intervals";
        let job = job.map(str::to_string);
        let limit = if limit == 0 { -1 } else { limit as i64 };
        self.call(OP, move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT job, interval_start, interval_end, coalesce(reason, ''), created_at \
                     FROM scheduled_intervals WHERE decision = 'skipped' \
                     AND (?1 IS NULL OR job = ?1) ORDER BY interval_start DESC, job LIMIT ?2",
                )
                .map_err(err(OP))?;
            let rows = stmt
                .query_map(params![job, limit], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                    ))
                })
                .map_err(err(OP))?;
            let mut out = Vec::new();
            for r in rows {
                let (job, s, e, reason, at) = r.map_err(err(OP))?;
                out.push(SkippedInterval {
                    job,
                    interval: Interval {
                        start: parse_ts(&s)?,
                        end: parse_ts(&e)?,
                    },
                    reason,
                    created_at: parse_ts(&at)?,
                });
            }
            Ok(out)
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
        let job = job.to_string();
        self.call(OP, move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err(OP))?;
            let id = insert_daemon_run(&tx, OP, &job, interval, trigger, request_id, priority)?;
            tx.commit().map_err(err(OP))?;
            Ok(id)
        })
        .await
    }

    pub async fn take_queued_run(&self, run_id: i64, owner: &str) -> Result<bool, StoreError> {
        const OP: &str = "take_queued_run";
        let owner = owner.to_string();
        self.call(OP, move |conn| {
            let now = ts(now());
            let n = conn
                .prepare_cached(
                    "UPDATE runs SET state = 'running', started_at = ?2, heartbeat_at = ?2, \
                     ended_at = NULL, owner = ?3 WHERE id = ?1 AND state = 'queued'",
                )
                .map_err(err(OP))?
                .execute(params![run_id, now, owner])
                .map_err(err(OP))?;
            Ok(n == 1)
        })
        .await
    }

    pub async fn queued_daemon_runs(&self) -> Result<Vec<DaemonRun>, StoreError> {
        const OP: &str = "queued_daemon_runs";
        self.call(OP, move |conn| {
            let sql = format!(
                "SELECT {RUN_COLUMNS}, request_id, priority FROM runs \
                 WHERE executor = 'daemon' AND state = 'queued' ORDER BY id"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(err(OP))?;
            let mut rows = stmt.query([]).map_err(err(OP))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(err(OP))? {
                out.push(DaemonRun {
                    run: run_from_row(row, OP)?,
                    request_id: row.get(10).map_err(err(OP))?,
                    priority: row.get(11).map_err(err(OP))?,
                });
            }
            Ok(out)
        })
        .await
    }

    pub async fn open_daemon_runs(&self) -> Result<HashMap<String, usize>, StoreError> {
        const OP: &str = "open_daemon_runs";
        self.call(OP, move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT job, count(*) FROM runs WHERE executor = 'daemon' \
                     AND state IN ('queued', 'running') AND \"trigger\" <> 'backfill' GROUP BY job",
                )
                .map_err(err(OP))?;
            let mut rows = stmt.query([]).map_err(err(OP))?;
            let mut out = HashMap::new();
            while let Some(row) = rows.next().map_err(err(OP))? {
                let n: i64 = row.get(1).map_err(err(OP))?;
                out.insert(
                    row.get(0).map_err(err(OP))?,
                    usize::try_from(n).unwrap_or(0),
                );
            }
            Ok(out)
        })
        .await
    }

    pub async fn requeue_stale(&self, stale_after: Duration) -> Result<Vec<i64>, StoreError> {
        const OP: &str = "requeue_stale";
        let stale_after = stale_duration(stale_after);
        self.call(OP, move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err(OP))?;
            let now = now();
            let Some(cutoff) = now.checked_sub_signed(stale_after) else {
                return Ok(Vec::new());
            };
            let stale: Vec<i64> = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT id FROM runs WHERE state = 'running' AND executor = 'daemon' \
                         AND coalesce(heartbeat_at, started_at, created_at) <= ?1 ORDER BY id",
                    )
                    .map_err(err(OP))?;
                let ids = stmt
                    .query_map([ts(cutoff)], |row| row.get(0))
                    .map_err(err(OP))?
                    .collect::<Result<_, _>>()
                    .map_err(err(OP))?;
                ids
            };
            let now_s = ts(now);
            for &run_id in &stale {
                tx.prepare_cached("UPDATE runs SET state = 'queued' WHERE id = ?1")
                    .map_err(err(OP))?
                    .execute([run_id])
                    .map_err(err(OP))?;
                tx.prepare_cached(
                    "UPDATE step_intervals SET state = 'pending', updated_at = ?2 \
                     WHERE run_id = ?1 AND state IN ('running', 'up_for_retry')",
                )
                .map_err(err(OP))?
                .execute(params![run_id, now_s])
                .map_err(err(OP))?;
                tx.prepare_cached(
                    "UPDATE step_attempts SET state = 'failed', ended_at = ?2, \
                     duration_ms = max(0, CAST(round((julianday(?2) - julianday(started_at)) \
                                                     * 86400000) AS INTEGER)), \
                     error = coalesce(error, ?3) WHERE run_id = ?1 AND state = 'running'",
                )
                .map_err(err(OP))?
                .execute(params![run_id, now_s, INTERRUPTED])
                .map_err(err(OP))?;
                tx.prepare_cached("DELETE FROM step_leases WHERE run_id = ?1")
                    .map_err(err(OP))?
                    .execute([run_id])
                    .map_err(err(OP))?;
                tracing::warn!(run_id, "re-queued a daemon run whose daemon stopped");
            }
            tx.commit().map_err(err(OP))?;
            Ok(stale)
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
        let (job, step, owner) = (job.to_string(), step.to_string(), owner.to_string());
        let pool = pool.map(|(p, n)| (p.to_string(), i64::from(n)));
        self.call(OP, move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err(OP))?;
            let start = ts(interval_start);
            {
                let sql = format!(
                    "SELECT {STEP_COLUMNS} FROM step_intervals \
                     WHERE job = ?1 AND interval_start = ?2 AND step = ?3 AND state = 'success' \
                     AND (?4 OR run_id = ?5)"
                );
                let outputs: Option<String> = tx
                    .prepare_cached(&sql)
                    .map_err(err(OP))?
                    .query_row(params![job, start, step, skip_done, run_id], |r| r.get(7))
                    .optional()
                    .map_err(err(OP))?;
                if let Some(o) = outputs {
                    return Ok(Claim::Done {
                        outputs: parse_json(&o)?,
                    });
                }
            }
            let held: Option<(String, String)> = tx
                .prepare_cached(
                    "SELECT owner, expires_at FROM step_leases \
                     WHERE job = ?1 AND interval_start = ?2 AND step = ?3",
                )
                .map_err(err(OP))?
                .query_row(params![job, start, step], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .map_err(err(OP))?;
            let now = now();
            // A claim on the caller's own live lease renews it: acquired_at is kept and its
            // running attempts are the caller's own, so nothing is interrupted.
            let mut renewal = false;
            if let Some((holder, expires)) = held {
                let expires = parse_ts(&expires)?;
                if expires > now {
                    if holder != owner {
                        return Ok(Claim::Held {
                            owner: holder,
                            expires_at: expires,
                        });
                    }
                    renewal = true;
                }
            }
            let now_s = ts(now);
            if let Some((name, size)) = &pool {
                // Counted in this IMMEDIATE transaction: every runner on the store shares the
                // pool.
                let used: i64 = tx
                    .prepare_cached(
                        "SELECT count(*) FROM step_leases WHERE pool = ?1 AND expires_at > ?2 \
                         AND NOT (job = ?3 AND interval_start = ?4 AND step = ?5)",
                    )
                    .map_err(err(OP))?
                    .query_row(params![name, now_s, job, start, step], |r| r.get(0))
                    .map_err(err(OP))?;
                if used >= *size {
                    return Ok(Claim::Full { pool: name.clone() });
                }
            }
            let pool_name = pool.as_ref().map(|p| p.0.clone());
            // A renewal keeps its fencing token; a new holder gets the next one.
            let token: i64 = if renewal {
                tx.prepare_cached(
                    "SELECT token FROM step_leases \
                     WHERE job = ?1 AND interval_start = ?2 AND step = ?3",
                )
                .map_err(err(OP))?
                .query_row(params![job, start, step], |r| r.get(0))
                .map_err(err(OP))?
            } else {
                tx.prepare_cached("UPDATE lease_tokens SET n = n + 1 RETURNING n")
                    .map_err(err(OP))?
                    .query_row([], |r| r.get(0))
                    .map_err(err(OP))?
            };
            tx.prepare_cached(
                "INSERT INTO step_leases (job, step, interval_start, owner, run_id, acquired_at, \
                 expires_at, token, pool) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?9, ?10) \
                 ON CONFLICT (job, interval_start, step) DO UPDATE SET owner = excluded.owner, \
                 run_id = excluded.run_id, pool = excluded.pool, \
                 acquired_at = CASE WHEN ?8 THEN step_leases.acquired_at \
                                    ELSE excluded.acquired_at END, \
                 expires_at = excluded.expires_at, token = excluded.token",
            )
            .map_err(err(OP))?
            .execute(params![
                job,
                step,
                start,
                owner,
                run_id,
                now_s,
                until(ttl),
                renewal,
                token,
                pool_name
            ])
            .map_err(err(OP))?;
            if !renewal {
                // Whoever recorded these attempts as running no longer holds the lease.
                tx.prepare_cached(
                    "UPDATE step_attempts SET state = 'failed', ended_at = ?4, \
                     duration_ms = max(0, CAST(round((julianday(?4) - julianday(started_at)) \
                                                     * 86400000) AS INTEGER)), \
                     error = coalesce(error, ?5) \
                     WHERE job = ?1 AND interval_start = ?2 AND step = ?3 AND state = 'running'",
                )
                .map_err(err(OP))?
                .execute(params![job, start, step, now_s, INTERRUPTED])
                .map_err(err(OP))?;
            }
            tx.commit().map_err(err(OP))?;
            Ok(Claim::Acquired { token })
        })
        .await
    }

    pub async fn renew_leases(
        &self,
        owner: &str,
        ttl: Duration,
    ) -> Result<Vec<(String, String, DateTime<Utc>)>, StoreError> {
        const OP: &str = "renew_leases";
        let owner = owner.to_string();
        self.call(OP, move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "UPDATE step_leases SET expires_at = ?2 WHERE owner = ?1 \
                     RETURNING job, step, interval_start",
                )
                .map_err(err(OP))?;
            let mut rows = stmt.query(params![owner, until(ttl)]).map_err(err(OP))?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(err(OP))? {
                let start: String = r.get(2).map_err(err(OP))?;
                out.push((
                    r.get(0).map_err(err(OP))?,
                    r.get(1).map_err(err(OP))?,
                    parse_ts(&start)?,
                ));
            }
            Ok(out)
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
        let (job, step, owner) = (job.to_string(), step.to_string(), owner.to_string());
        self.call(OP, move |conn| {
            conn.prepare_cached(
                "DELETE FROM step_leases WHERE job = ?1 AND interval_start = ?2 AND step = ?3 \
                 AND owner = ?4",
            )
            .map_err(err(OP))?
            .execute(params![job, ts(interval_start), step, owner])
            .map_err(err(OP))?;
            Ok(())
        })
        .await
    }

    pub async fn release_leases(&self, owner: &str) -> Result<u64, StoreError> {
        const OP: &str = "release_leases";
        let owner = owner.to_string();
        self.call(OP, move |conn| {
            let n = conn
                .prepare_cached("DELETE FROM step_leases WHERE owner = ?1")
                .map_err(err(OP))?
                .execute([owner])
                .map_err(err(OP))?;
            Ok(n as u64)
        })
        .await
    }

    pub async fn leases(&self) -> Result<Vec<LeaseRecord>, StoreError> {
        const OP: &str = "leases";
        self.call(OP, move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT job, step, interval_start, owner, run_id, acquired_at, expires_at \
                     FROM step_leases ORDER BY job, interval_start, step",
                )
                .map_err(err(OP))?;
            let mut rows = stmt.query([]).map_err(err(OP))?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(err(OP))? {
                let e = err(OP);
                let start: String = r.get(2).map_err(&e)?;
                let acquired: String = r.get(5).map_err(&e)?;
                let expires: String = r.get(6).map_err(&e)?;
                out.push(LeaseRecord {
                    job: r.get(0).map_err(&e)?,
                    step: r.get(1).map_err(&e)?,
                    interval_start: parse_ts(&start)?,
                    owner: r.get(3).map_err(&e)?,
                    run_id: r.get(4).map_err(&e)?,
                    acquired_at: parse_ts(&acquired)?,
                    expires_at: parse_ts(&expires)?,
                });
            }
            Ok(out)
        })
        .await
    }

    pub async fn set_paused(&self, job: &str, paused: bool) -> Result<bool, StoreError> {
        const OP: &str = "set_paused";
        let job = job.to_string();
        self.call(OP, move |conn| {
            let n = if paused {
                conn.prepare_cached(
                    "INSERT INTO paused_jobs (job, paused_at) VALUES (?1, ?2) \
                     ON CONFLICT DO NOTHING",
                )
                .map_err(err(OP))?
                .execute(params![job, ts(now())])
            } else {
                conn.prepare_cached("DELETE FROM paused_jobs WHERE job = ?1")
                    .map_err(err(OP))?
                    .execute([job])
            }
            .map_err(err(OP))?;
            Ok(n > 0)
        })
        .await
    }

    pub async fn paused_jobs(&self) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        const OP: &str = "paused_jobs";
        self.call(OP, move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT job, paused_at FROM paused_jobs ORDER BY job")
                .map_err(err(OP))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(err(OP))?;
            let mut out = Vec::new();
            for r in rows {
                let (job, at) = r.map_err(err(OP))?;
                out.push((job, parse_ts(&at)?));
            }
            Ok(out)
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
        let (job, spec) = (job.to_string(), to_json(spec));
        self.call(OP, move |conn| {
            let now = ts(now());
            conn.prepare_cached(
                "INSERT INTO requests (kind, job, spec, priority, state, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5)",
            )
            .map_err(err(OP))?
            .insert(params![kind.as_str(), job, spec, priority, now])
            .map_err(err(OP))
        })
        .await
    }

    pub async fn requests(
        &self,
        open_only: bool,
        limit: usize,
    ) -> Result<Vec<RequestRecord>, StoreError> {
        const OP: &str = "requests";
        let limit = if limit == 0 { -1 } else { limit as i64 };
        self.call(OP, move |conn| {
            let sql = if open_only {
                format!(
                    "SELECT {REQUEST_COLUMNS} FROM requests \
                     WHERE state IN ('pending', 'running') ORDER BY id LIMIT ?1"
                )
            } else {
                format!("SELECT {REQUEST_COLUMNS} FROM requests ORDER BY id DESC LIMIT ?1")
            };
            let mut stmt = conn.prepare_cached(&sql).map_err(err(OP))?;
            let mut rows = stmt.query([limit]).map_err(err(OP))?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(err(OP))? {
                out.push(request_from_row(r, OP)?);
            }
            Ok(out)
        })
        .await
    }

    pub async fn claim_requests(
        &self,
        owner: &str,
        ttl: Duration,
    ) -> Result<Vec<RequestRecord>, StoreError> {
        const OP: &str = "claim_requests";
        let owner = owner.to_string();
        self.call(OP, move |conn| {
            let sql = format!(
                "UPDATE requests SET owner = ?1, owner_until = ?2 \
                 WHERE state IN ('pending', 'running') \
                 AND (owner IS NULL OR owner = ?1 OR owner_until <= ?3) \
                 RETURNING {REQUEST_COLUMNS}"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(err(OP))?;
            let mut rows = stmt
                .query(params![owner, until(ttl), ts(now())])
                .map_err(err(OP))?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(err(OP))? {
                out.push(request_from_row(r, OP)?);
            }
            out.sort_by_key(|r| r.id);
            Ok(out)
        })
        .await
    }

    pub async fn release_requests(&self, owner: &str) -> Result<u64, StoreError> {
        const OP: &str = "release_requests";
        let owner = owner.to_string();
        self.call(OP, move |conn| {
            let n = conn
                .prepare_cached(
                    "UPDATE requests SET owner = NULL, owner_until = NULL WHERE owner = ?1",
                )
                .map_err(err(OP))?
                .execute([owner])
                .map_err(err(OP))?;
            Ok(n as u64)
        })
        .await
    }

    pub async fn request(&self, id: i64) -> Result<Option<RequestRecord>, StoreError> {
        const OP: &str = "request";
        self.call(OP, move |conn| {
            let sql = format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE id = ?1");
            let mut stmt = conn.prepare_cached(&sql).map_err(err(OP))?;
            let mut rows = stmt.query([id]).map_err(err(OP))?;
            match rows.next().map_err(err(OP))? {
                Some(r) => Ok(Some(request_from_row(r, OP)?)),
                None => Ok(None),
            }
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
        let message = message.map(str::to_string);
        self.call(OP, move |conn| {
            conn.prepare_cached(
                "UPDATE requests SET state = ?2, message = coalesce(?3, message), updated_at = ?4 \
                 WHERE id = ?1 AND state <> 'cancelled'",
            )
            .map_err(err(OP))?
            .execute(params![id, state.as_str(), message, ts(now())])
            .map_err(err(OP))?;
            Ok(())
        })
        .await
    }

    pub async fn cancel_request(&self, id: i64) -> Result<bool, StoreError> {
        const OP: &str = "cancel_request";
        self.call(OP, move |conn| {
            let n = conn
                .prepare_cached(
                    "UPDATE requests SET state = 'cancelled', updated_at = ?2, \
                     message = 'cancelled from the command line' \
                     WHERE id = ?1 AND state IN ('pending', 'running')",
                )
                .map_err(err(OP))?
                .execute(params![id, ts(now())])
                .map_err(err(OP))?;
            Ok(n > 0)
        })
        .await
    }

    pub async fn request_runs(&self, id: i64) -> Result<Vec<RunRecord>, StoreError> {
        const OP: &str = "request_runs";
        self.call(OP, move |conn| {
            let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE request_id = ?1 ORDER BY id");
            let mut stmt = conn.prepare_cached(&sql).map_err(err(OP))?;
            let mut rows = stmt.query([id]).map_err(err(OP))?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(err(OP))? {
                out.push(run_from_row(r, OP)?);
            }
            Ok(out)
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
        let (id, host, version, status) = (
            id.to_string(),
            host.to_string(),
            version.to_string(),
            to_json(status),
        );
        self.call(OP, move |conn| {
            conn.prepare_cached(
                "INSERT INTO daemons (id, pid, host, version, started_at, heartbeat_at, status) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6) ON CONFLICT (id) DO UPDATE SET \
                 pid = excluded.pid, host = excluded.host, version = excluded.version, \
                 heartbeat_at = excluded.heartbeat_at, stopped_at = NULL, status = excluded.status",
            )
            .map_err(err(OP))?
            .execute(params![id, pid, host, version, ts(now()), status])
            .map_err(err(OP))?;
            Ok(())
        })
        .await
    }

    pub async fn daemon_stopped(&self, id: &str) -> Result<(), StoreError> {
        const OP: &str = "daemon_stopped";
        let id = id.to_string();
        self.call(OP, move |conn| {
            conn.prepare_cached("UPDATE daemons SET stopped_at = ?2 WHERE id = ?1")
                .map_err(err(OP))?
                .execute(params![id, ts(now())])
                .map_err(err(OP))?;
            Ok(())
        })
        .await
    }

    pub async fn daemons(&self) -> Result<Vec<DaemonRecord>, StoreError> {
        const OP: &str = "daemons";
        self.call(OP, move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, pid, host, version, started_at, heartbeat_at, stopped_at, status \
                     FROM daemons ORDER BY heartbeat_at DESC, id",
                )
                .map_err(err(OP))?;
            let mut rows = stmt.query([]).map_err(err(OP))?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(err(OP))? {
                let e = err(OP);
                let started: String = r.get(4).map_err(&e)?;
                let beat: String = r.get(5).map_err(&e)?;
                let status: String = r.get(7).map_err(&e)?;
                out.push(DaemonRecord {
                    id: r.get(0).map_err(&e)?,
                    pid: r.get(1).map_err(&e)?,
                    host: r.get(2).map_err(&e)?,
                    version: r.get(3).map_err(&e)?,
                    started_at: parse_ts(&started)?,
                    heartbeat_at: parse_ts(&beat)?,
                    stopped_at: parse_opt_ts(r.get(6).map_err(&e)?)?,
                    status: parse_json(&status)?,
                });
            }
            Ok(out)
        })
        .await
    }
}
