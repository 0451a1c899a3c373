//! The dashboard's part of the SQLite store: the audit of actions people took, and what changed
//! since a moment (for live updates). See [`crate::store::Store`] for what each operation means.

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};

use super::STEP_COLUMNS;
use super::{err, now, parse_json, parse_ts, step_from_row, to_json, ts, SqliteStore};
use crate::store::{
    clamp_bound, ActionRecord, LagSample, NewAction, StepIntervalRecord, StoreError,
};

impl SqliteStore {
    pub async fn record_action(&self, a: &NewAction) -> Result<Option<i64>, StoreError> {
        const OP: &str = "record_action";
        let a = a.clone();
        self.call(OP, move |conn| {
            conn.prepare_cached(
                "INSERT INTO actions (nonce, who, action, job, detail, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (nonce) DO NOTHING RETURNING id",
            )
            .map_err(err(OP))?
            .query_row(
                params![
                    a.nonce,
                    a.who,
                    a.action,
                    a.job,
                    to_json(&a.detail),
                    ts(now())
                ],
                |r| r.get(0),
            )
            .optional()
            .map_err(err(OP))
        })
        .await
    }

    pub async fn set_action_outcome(&self, id: i64, outcome: &str) -> Result<(), StoreError> {
        const OP: &str = "set_action_outcome";
        let outcome = outcome.to_string();
        self.call(OP, move |conn| {
            conn.prepare_cached("UPDATE actions SET outcome = ?2 WHERE id = ?1")
                .map_err(err(OP))?
                .execute(params![id, outcome])
                .map_err(err(OP))?;
            Ok(())
        })
        .await
    }

    pub async fn actions(&self, limit: usize) -> Result<Vec<ActionRecord>, StoreError> {
        const OP: &str = "actions";
        let limit = if limit == 0 { -1 } else { limit as i64 };
        self.call(OP, move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, who, action, job, detail, outcome, created_at FROM actions \
                     ORDER BY id DESC LIMIT ?1",
                )
                .map_err(err(OP))?;
            let mut rows = stmt.query([limit]).map_err(err(OP))?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(err(OP))? {
                let e = err(OP);
                let detail: String = r.get(4).map_err(&e)?;
                let created: String = r.get(6).map_err(&e)?;
                out.push(ActionRecord {
                    id: r.get(0).map_err(&e)?,
                    who: r.get(1).map_err(&e)?,
                    action: r.get(2).map_err(&e)?,
                    job: r.get(3).map_err(&e)?,
                    detail: parse_json(&detail)?,
                    outcome: r.get(5).map_err(&e)?,
                    created_at: parse_ts(&created)?,
                });
            }
            Ok(out)
        })
        .await
    }

    pub async fn changed_steps(
        &self,
        since: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<StepIntervalRecord>, StoreError> {
        const OP: &str = "changed_steps";
        let since = ts(clamp_bound(since));
        let limit = limit.max(1) as i64;
        self.call(OP, move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {STEP_COLUMNS} FROM step_intervals WHERE updated_at > ?1 \
                     ORDER BY updated_at LIMIT ?2"
                ))
                .map_err(err(OP))?;
            let mut rows = stmt.query(params![since, limit]).map_err(err(OP))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(err(OP))? {
                out.push(step_from_row(row, OP)?);
            }
            Ok(out)
        })
        .await
    }

    pub async fn lag_history(&self, since: DateTime<Utc>) -> Result<Vec<LagSample>, StoreError> {
        const OP: &str = "lag_history";
        let since = ts(clamp_bound(since));
        self.call(OP, move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT job, step, substr(recorded_at, 1, 19) || '.000000Z' AS at, sum(lag) \
                     FROM consumer_lag_history WHERE recorded_at >= ?1 GROUP BY job, step, at \
                     ORDER BY job, step, at",
                )
                .map_err(err(OP))?;
            let mut rows = stmt.query([since]).map_err(err(OP))?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(err(OP))? {
                let e = err(OP);
                let at: String = r.get(2).map_err(&e)?;
                out.push(LagSample {
                    job: r.get(0).map_err(&e)?,
                    step: r.get(1).map_err(&e)?,
                    recorded_at: parse_ts(&at)?,
                    lag: r.get(3).map_err(&e)?,
                });
            }
            Ok(out)
        })
        .await
    }
}
