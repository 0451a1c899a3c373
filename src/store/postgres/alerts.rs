//! The alert queue in the PostgreSQL store (see [`crate::store::Store::enqueue_alert`] and its
//! siblings for what each operation means).
//!
//! Every write but one is one statement (`alert_tried` with a data-modifying CTE). The exception
//! is `enqueue_alert` with a throttle key: whether the alert is held back depends on the key's
//! throttle row as the last enqueue left it, and a statement's snapshot may predate a concurrent
//! enqueue's commit, so it is a short transaction that first makes sure the row exists
//! (`INSERT ... ON CONFLICT DO NOTHING`, which waits for a concurrent first insert to commit),
//! then locks and reads its latest version (`SELECT ... FOR UPDATE`, in a new snapshot) and
//! writes the alert and the row. Two enqueues of one (channel, key) are thus serialised, and
//! only one of them goes out within the repeat interval. Every time is the server's `now()`.

use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use super::daemon::{limit_param, micros};
use super::{first, get, with_timeout, Lease, PgStore};
use crate::store::{AlertRecord, Enqueued, NewAlert, StoreError};

const ALERT_COLUMNS: &str = "id, channel, event, job, step, interval_start, run_id, summary, \
                             payload, state, tries, next_try_at, last_error, created_at, sent_at";

fn alert_from_row(row: &Row, op: &'static str) -> Result<AlertRecord, StoreError> {
    let tries: i32 = get(row, 10, op)?;
    Ok(AlertRecord {
        id: get(row, 0, op)?,
        channel: get(row, 1, op)?,
        event: get(row, 2, op)?,
        job: get(row, 3, op)?,
        step: get(row, 4, op)?,
        interval_start: get(row, 5, op)?,
        run_id: get(row, 6, op)?,
        summary: get(row, 7, op)?,
        payload: get(row, 8, op)?,
        state: get::<&str>(row, 9, op)?.parse()?,
        tries: u32::try_from(tries).map_err(|_| StoreError::Corrupt(format!("tries {tries}")))?,
        next_try_at: get(row, 11, op)?,
        last_error: get(row, 12, op)?,
        created_at: get(row, 13, op)?,
        sent_at: get(row, 14, op)?,
    })
}

/// Inserts the alert and, when it has a throttle key, updates the key's (locked) row: a held
/// alert adds one to the row's count, a queued one resets it and becomes the last sent. Without a
/// key (NULL `$9`) the UPDATE matches nothing.
const INSERT_ALERT: &str = "WITH throttle AS ( \
         UPDATE alert_throttle SET \
         last_sent_at = CASE WHEN $11::boolean THEN last_sent_at ELSE now() END, \
         suppressed = CASE WHEN $11::boolean THEN suppressed + 1 ELSE 0 END, \
         open = true \
         WHERE channel = $1 AND key = $9::text \
         RETURNING 1 \
     ) \
     INSERT INTO alerts (channel, event, job, step, interval_start, run_id, summary, payload, \
     state, next_try_at, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $10, now(), now()) RETURNING id";

/// `payload` with `suppressed` set, when it is an object.
fn with_suppressed(payload: &serde_json::Value, suppressed: i64) -> serde_json::Value {
    let mut payload = payload.clone();
    if let Some(m) = payload.as_object_mut() {
        m.insert("suppressed".into(), suppressed.into());
    }
    payload
}

async fn insert_alert(
    c: &mut Lease<'_>,
    op: &'static str,
    a: &NewAlert,
    payload: &serde_json::Value,
    held: bool,
) -> Result<i64, StoreError> {
    let state = if held { "suppressed" } else { "queued" };
    let rows = c
        .query(
            op,
            INSERT_ALERT,
            &[
                &a.channel,
                &a.event,
                &a.job,
                &a.step,
                &a.interval_start,
                &a.run_id,
                &a.summary,
                payload,
                &a.throttle_key,
                &state,
                &held,
            ],
        )
        .await?;
    get(first(&rows, op)?, 0, op)
}

/// The part of a throttled `enqueue_alert` inside its transaction.
async fn enqueue_throttled(
    c: &mut Lease<'_>,
    op: &'static str,
    a: &NewAlert,
    key: &str,
) -> Result<Enqueued, StoreError> {
    // A new row's last_sent_at of -infinity is never "within the interval"; the row is
    // rewritten below, before anyone else can see it.
    c.execute(
        op,
        "INSERT INTO alert_throttle (channel, key, last_sent_at, suppressed, open) \
         VALUES ($1, $2, '-infinity', 0, true) ON CONFLICT (channel, key) DO NOTHING",
        &[&a.channel, &key],
    )
    .await?;
    // A zero interval never holds back (even when a concurrent enqueue that started later
    // committed first, so its last_sent_at is after this transaction's now()).
    let interval = micros(a.repeat_interval);
    let rows = c
        .query(
            op,
            "SELECT suppressed, $3::bigint > 0 \
                    AND last_sent_at + $3::bigint * interval '1 microsecond' > now() \
             FROM alert_throttle WHERE channel = $1 AND key = $2 FOR UPDATE",
            &[&a.channel, &key, &interval],
        )
        .await?;
    let row = first(&rows, op)?;
    let suppressed = i64::from(get::<i32>(row, 0, op)?);
    let held: bool = get(row, 1, op)?;
    if held {
        let id = insert_alert(c, op, a, &a.payload, true).await?;
        Ok(Enqueued::Suppressed { id })
    } else {
        let payload = with_suppressed(&a.payload, suppressed);
        let id = insert_alert(c, op, a, &payload, false).await?;
        Ok(Enqueued::Queued { id, suppressed })
    }
}

impl PgStore {
    pub async fn enqueue_alert(&self, alert: &NewAlert) -> Result<Enqueued, StoreError> {
        const OP: &str = "enqueue_alert";
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let Some(key) = alert.throttle_key.as_deref() else {
                let payload = with_suppressed(&alert.payload, 0);
                let id = insert_alert(&mut c, OP, alert, &payload, false).await?;
                return Ok(Enqueued::Queued { id, suppressed: 0 });
            };
            // Every await below is a call on the connection, during which the lease is marked
            // not ok: a timeout drops the connection, and the server rolls the transaction back.
            c.simple(OP, "BEGIN").await?;
            let result = match enqueue_throttled(&mut c, OP, alert, key).await {
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

    pub async fn due_alerts(&self, limit: usize) -> Result<Vec<AlertRecord>, StoreError> {
        const OP: &str = "due_alerts";
        let limit = limit_param(limit);
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let sql = select!(
                ALERT_COLUMNS,
                "FROM alerts WHERE state = 'queued' AND next_try_at <= now() \
                 ORDER BY next_try_at, id LIMIT $1"
            );
            let rows = c.query(OP, sql, &[&limit]).await?;
            rows.iter().map(|r| alert_from_row(r, OP)).collect()
        })
        .await
    }

    pub async fn alert_tried(
        &self,
        id: i64,
        error: Option<&str>,
        retry_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        const OP: &str = "alert_tried";
        let (state, retry_at) = match (error, retry_at) {
            (None, _) => ("sent", None),
            (Some(_), Some(t)) => ("queued", Some(t)),
            (Some(_), None) => ("failed", None),
        };
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let rows = c
                .query(
                    OP,
                    "WITH tried AS ( \
                         UPDATE alerts SET state = $2::text, tries = tries + 1, \
                         last_error = $3::text, \
                         next_try_at = coalesce($4::timestamptz, next_try_at), \
                         sent_at = CASE WHEN $2::text = 'sent' THEN now() ELSE sent_at END \
                         WHERE id = $1 \
                         RETURNING id, channel \
                     ), sends AS ( \
                         INSERT INTO alert_sends (alert_id, channel, at, ok, error) \
                         SELECT id, channel, now(), $3::text IS NULL, $3::text FROM tried \
                         RETURNING 1 \
                     ) \
                     SELECT id FROM tried",
                    &[&id, &state, &error, &retry_at],
                )
                .await?;
            if rows.is_empty() {
                return Err(StoreError::NotFound { what: "alert", id });
            }
            Ok(())
        })
        .await
    }

    pub async fn alerts(
        &self,
        job: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AlertRecord>, StoreError> {
        const OP: &str = "alerts";
        let limit = limit_param(limit);
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            // One statement per filter shape, so the job's can use its index.
            let rows = match job {
                Some(job) => {
                    let sql = select!(
                        ALERT_COLUMNS,
                        "FROM alerts WHERE job = $2 ORDER BY id DESC LIMIT $1"
                    );
                    c.query(OP, sql, &[&limit, &job]).await?
                }
                None => {
                    let sql = select!(ALERT_COLUMNS, "FROM alerts ORDER BY id DESC LIMIT $1");
                    c.query(OP, sql, &[&limit]).await?
                }
            };
            rows.iter().map(|r| alert_from_row(r, OP)).collect()
        })
        .await
    }

    pub async fn close_alert_condition(
        &self,
        channel: &str,
        key: &str,
    ) -> Result<bool, StoreError> {
        const OP: &str = "close_alert_condition";
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let n = c
                .execute(
                    OP,
                    "UPDATE alert_throttle SET open = false \
                     WHERE channel = $1 AND key = $2 AND open",
                    &[&channel, &key],
                )
                .await?;
            Ok(n > 0)
        })
        .await
    }

    pub async fn claim_sla_alert(
        &self,
        job: &str,
        interval_start: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        const OP: &str = "claim_sla_alert";
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let n = c
                .execute(
                    OP,
                    "INSERT INTO sla_alerts (job, interval_start, raised_at) \
                     VALUES ($1, $2, now()) ON CONFLICT (job, interval_start) DO NOTHING",
                    &[&job, &interval_start],
                )
                .await?;
            Ok(n > 0)
        })
        .await
    }
}
