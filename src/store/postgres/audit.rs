//! The dashboard's part of the PostgreSQL store: the audit of actions people took, and what
//! changed since a moment (for live updates). See [`crate::store::Store`] for what each
//! operation means.

use chrono::{DateTime, Utc};

use super::daemon::limit_param;
use super::{get, step_from_row, with_timeout, PgStore, STEP_COLUMNS};
use crate::store::{
    clamp_bound, ActionRecord, LagSample, NewAction, StepIntervalRecord, StoreError,
};

impl PgStore {
    pub async fn record_action(&self, a: &NewAction) -> Result<Option<i64>, StoreError> {
        const OP: &str = "record_action";
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let rows = c
                .query(
                    OP,
                    "INSERT INTO actions (nonce, who, action, job, detail, created_at) \
                     VALUES ($1, $2, $3, $4, $5, now()) ON CONFLICT (nonce) DO NOTHING \
                     RETURNING id",
                    &[&a.nonce, &a.who, &a.action, &a.job, &a.detail],
                )
                .await?;
            rows.first().map(|r| get(r, 0, OP)).transpose()
        })
        .await
    }

    pub async fn set_action_outcome(&self, id: i64, outcome: &str) -> Result<(), StoreError> {
        const OP: &str = "set_action_outcome";
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            c.execute(
                OP,
                "UPDATE actions SET outcome = $2 WHERE id = $1",
                &[&id, &outcome],
            )
            .await?;
            Ok(())
        })
        .await
    }

    pub async fn actions(&self, limit: usize) -> Result<Vec<ActionRecord>, StoreError> {
        const OP: &str = "actions";
        let limit = limit_param(limit);
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let rows = c
                .query(
                    OP,
                    "SELECT id, who, action, job, detail, outcome, created_at FROM actions \
                     ORDER BY id DESC LIMIT $1",
                    &[&limit],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(ActionRecord {
                        id: get(r, 0, OP)?,
                        who: get(r, 1, OP)?,
                        action: get(r, 2, OP)?,
                        job: get(r, 3, OP)?,
                        detail: get(r, 4, OP)?,
                        outcome: get(r, 5, OP)?,
                        created_at: get(r, 6, OP)?,
                    })
                })
                .collect()
        })
        .await
    }

    pub async fn changed_steps(
        &self,
        since: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<StepIntervalRecord>, StoreError> {
        const OP: &str = "changed_steps";
        let since = clamp_bound(since);
        let limit = limit.max(1) as i64;
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let sql = select!(
                STEP_COLUMNS,
                "FROM step_intervals WHERE updated_at > $1 ORDER BY updated_at LIMIT $2"
            );
            let rows = c.query(OP, sql, &[&since, &limit]).await?;
            rows.iter().map(|r| step_from_row(r, OP)).collect()
        })
        .await
    }

    pub async fn lag_history(&self, since: DateTime<Utc>) -> Result<Vec<LagSample>, StoreError> {
        const OP: &str = "lag_history";
        let since = clamp_bound(since);
        with_timeout(OP, async {
            let mut c = self.lease(OP).await?;
            let rows = c
                .query(
                    OP,
                    "SELECT job, step, date_trunc('second', recorded_at) AS at, sum(lag)::bigint \
                     FROM consumer_lag_history WHERE recorded_at >= $1 GROUP BY job, step, at \
                     ORDER BY job, step, at",
                    &[&since],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(LagSample {
                        job: get(r, 0, OP)?,
                        step: get(r, 1, OP)?,
                        recorded_at: get(r, 2, OP)?,
                        lag: get(r, 3, OP)?,
                    })
                })
                .collect()
        })
        .await
    }
}
