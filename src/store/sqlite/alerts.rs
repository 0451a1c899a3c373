//! The alert queue in the SQLite store (see [`crate::store::Store::enqueue_alert`] and its
//! siblings for what each operation means).

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, Row, TransactionBehavior};

use super::{err, now, parse_json, parse_opt_ts, parse_ts, to_json, ts, SqliteStore};
use crate::store::{stale_duration, AlertRecord, Enqueued, NewAlert, StoreError};

const ALERT_COLUMNS: &str = "id, channel, event, job, step, interval_start, run_id, summary, \
                             payload, state, tries, next_try_at, last_error, created_at, sent_at";

fn alert_from_row(row: &Row<'_>, op: &'static str) -> Result<AlertRecord, StoreError> {
    let e = err(op);
    let payload: String = row.get(8).map_err(&e)?;
    let state: String = row.get(9).map_err(&e)?;
    let tries: i64 = row.get(10).map_err(&e)?;
    let next: String = row.get(11).map_err(&e)?;
    let created: String = row.get(13).map_err(&e)?;
    Ok(AlertRecord {
        id: row.get(0).map_err(&e)?,
        channel: row.get(1).map_err(&e)?,
        event: row.get(2).map_err(&e)?,
        job: row.get(3).map_err(&e)?,
        step: row.get(4).map_err(&e)?,
        interval_start: parse_opt_ts(row.get(5).map_err(&e)?)?,
        run_id: row.get(6).map_err(&e)?,
        summary: row.get(7).map_err(&e)?,
        payload: parse_json(&payload)?,
        state: state.parse()?,
        tries: u32::try_from(tries).map_err(|_| StoreError::Corrupt(format!("tries {tries}")))?,
        next_try_at: parse_ts(&next)?,
        last_error: row.get(12).map_err(&e)?,
        created_at: parse_ts(&created)?,
        sent_at: parse_opt_ts(row.get(14).map_err(&e)?)?,
    })
}

impl SqliteStore {
    pub async fn enqueue_alert(&self, alert: &NewAlert) -> Result<Enqueued, StoreError> {
        const OP: &str = "enqueue_alert";
        let a = alert.clone();
        self.call(OP, move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err(OP))?;
            let now = now();
            let throttle: Option<(String, i64)> = match &a.throttle_key {
                Some(key) => tx
                    .prepare_cached(
                        "SELECT last_sent_at, suppressed FROM alert_throttle \
                         WHERE channel = ?1 AND key = ?2",
                    )
                    .map_err(err(OP))?
                    .query_row(params![a.channel, key], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
                    .map_err(err(OP))?,
                None => None,
            };
            let held = match &throttle {
                Some((last, _)) => parse_ts(last)? + stale_duration(a.repeat_interval) > now,
                None => false,
            };
            let suppressed = throttle.as_ref().map_or(0, |t| t.1);
            let mut payload = a.payload.clone();
            if !held {
                if let Some(m) = payload.as_object_mut() {
                    m.insert("suppressed".into(), suppressed.into());
                }
            }
            let state = if held { "suppressed" } else { "queued" };
            let id = tx
                .prepare_cached(
                    "INSERT INTO alerts (channel, event, job, step, interval_start, run_id, summary, \
                     payload, state, next_try_at, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)",
                )
                .map_err(err(OP))?
                .insert(params![
                    a.channel,
                    a.event,
                    a.job,
                    a.step,
                    a.interval_start.map(ts),
                    a.run_id,
                    a.summary,
                    to_json(&payload),
                    state,
                    ts(now)
                ])
                .map_err(err(OP))?;
            if let Some(key) = &a.throttle_key {
                if held {
                    tx.prepare_cached(
                        "UPDATE alert_throttle SET suppressed = suppressed + 1, open = 1 \
                         WHERE channel = ?1 AND key = ?2",
                    )
                    .map_err(err(OP))?
                    .execute(params![a.channel, key])
                    .map_err(err(OP))?;
                } else {
                    tx.prepare_cached(
                        "INSERT INTO alert_throttle (channel, key, last_sent_at, suppressed, open) \
                         VALUES (?1, ?2, ?3, 0, 1) ON CONFLICT (channel, key) DO UPDATE SET \
                         last_sent_at = excluded.last_sent_at, suppressed = 0, open = 1",
                    )
                    .map_err(err(OP))?
                    .execute(params![a.channel, key, ts(now)])
                    .map_err(err(OP))?;
                }
            }
            tx.commit().map_err(err(OP))?;
            Ok(if held {
                Enqueued::Suppressed { id }
            } else {
                Enqueued::Queued { id, suppressed }
            })
        })
        .await
    }

    pub async fn due_alerts(&self, limit: usize) -> Result<Vec<AlertRecord>, StoreError> {
        const OP: &str = "due_alerts";
        let limit = if limit == 0 { -1 } else { limit as i64 };
        self.call(OP, move |conn| {
            let sql = format!(
                "SELECT {ALERT_COLUMNS} FROM alerts WHERE state = 'queued' AND next_try_at <= ?1 \
                 ORDER BY next_try_at, id LIMIT ?2"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(err(OP))?;
            let mut rows = stmt.query(params![ts(now()), limit]).map_err(err(OP))?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(err(OP))? {
                out.push(alert_from_row(r, OP)?);
            }
            Ok(out)
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
        let error = error.map(str::to_string);
        self.call(OP, move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err(OP))?;
            let now = ts(now());
            let channel: Option<String> = tx
                .prepare_cached("SELECT channel FROM alerts WHERE id = ?1")
                .map_err(err(OP))?
                .query_row([id], |r| r.get(0))
                .optional()
                .map_err(err(OP))?;
            let Some(channel) = channel else {
                return Err(StoreError::NotFound { what: "alert", id });
            };
            tx.prepare_cached(
                "INSERT INTO alert_sends (alert_id, channel, at, ok, error) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(err(OP))?
            .execute(params![id, channel, now, error.is_none(), error])
            .map_err(err(OP))?;
            let (state, next) = match (&error, retry_at) {
                (None, _) => ("sent", None),
                (Some(_), Some(t)) => ("queued", Some(ts(t))),
                (Some(_), None) => ("failed", None),
            };
            tx.prepare_cached(
                "UPDATE alerts SET state = ?2, tries = tries + 1, last_error = ?3, \
                 next_try_at = coalesce(?4, next_try_at), \
                 sent_at = CASE WHEN ?2 = 'sent' THEN ?5 ELSE sent_at END WHERE id = ?1",
            )
            .map_err(err(OP))?
            .execute(params![id, state, error, next, now])
            .map_err(err(OP))?;
            tx.commit().map_err(err(OP))?;
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
        let job = job.map(str::to_string);
        let limit = if limit == 0 { -1 } else { limit as i64 };
        self.call(OP, move |conn| {
            let sql = format!(
                "SELECT {ALERT_COLUMNS} FROM alerts WHERE (?1 IS NULL OR job = ?1) \
                 ORDER BY id DESC LIMIT ?2"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(err(OP))?;
            let mut rows = stmt.query(params![job, limit]).map_err(err(OP))?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(err(OP))? {
                out.push(alert_from_row(r, OP)?);
            }
            Ok(out)
        })
        .await
    }

    pub async fn close_alert_condition(
        &self,
        channel: &str,
        key: &str,
    ) -> Result<bool, StoreError> {
        const OP: &str = "close_alert_condition";
        let (channel, key) = (channel.to_string(), key.to_string());
        self.call(OP, move |conn| {
            // The count stays: the alerts held back are counted in the next one sent.
            let n = conn
                .prepare_cached(
                    "UPDATE alert_throttle SET open = 0 WHERE channel = ?1 AND key = ?2 AND open = 1",
                )
                .map_err(err(OP))?
                .execute(params![channel, key])
                .map_err(err(OP))?;
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
        let job = job.to_string();
        self.call(OP, move |conn| {
            let n = conn
                .prepare_cached(
                    "INSERT INTO sla_alerts (job, interval_start, raised_at) VALUES (?1, ?2, ?3) \
                     ON CONFLICT DO NOTHING",
                )
                .map_err(err(OP))?
                .execute(params![job, ts(interval_start), ts(now())])
                .map_err(err(OP))?;
            Ok(n > 0)
        })
        .await
    }
}
