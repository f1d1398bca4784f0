//! The PostgreSQL store's side of webhook deliveries: claiming due callbacks (a lease on the
//! `callback_due` column, skipping rows another gateway holds) and recording attempts in
//! `warren_deliveries` together with the callback's new state, in one statement.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio_postgres::types::Json;
use warren_shared::JobId;

use super::{
    super::{CallbackStore, StoreError},
    PostgresStore,
    rows::{self, from_row},
    saturating_i64,
};
use crate::model::{Callback, Delivery, Job};

/// Inserts the attempt and, only if the job still owes that delivery, writes its new state.
const RECORD: &str = "WITH recorded AS (
        INSERT INTO warren_deliveries (job_id, webhook_id, attempt, at, duration_ms,
            status_code, error, callback_state, next_attempt_at)
        SELECT id, $2, $3, $4, $5, $6, $7, $8, $9 FROM warren_jobs WHERE id = $1
        ON CONFLICT DO NOTHING)
    UPDATE warren_jobs SET callback = $10, callback_due = $9
    WHERE id = $1 AND callback->>'webhook_id' = $2";

/// A job's attempts, oldest first.
const LIST: &str = "SELECT webhook_id, attempt, at, duration_ms, status_code, error,
        callback_state, next_attempt_at
    FROM warren_deliveries WHERE job_id = $1 ORDER BY at, attempt";

#[async_trait]
impl CallbackStore for PostgresStore {
    /// See [`CallbackStore::claim_callbacks`].
    async fn claim_callbacks(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(rows::CLAIM_CALLBACKS).await?;
        let rows = client
            .query(&statement, &[&now, &lease_until, &saturating_i64(limit)])
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// See [`CallbackStore::record_delivery`].
    async fn record_delivery(
        &self,
        id: JobId,
        delivery: &Delivery,
        callback: &Callback,
    ) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(RECORD).await?;
        let status_code = delivery.status_code.map(i32::from);
        let attempt = i32::try_from(delivery.attempt).unwrap_or(i32::MAX);
        client
            .execute(
                &statement,
                &[
                    &id.as_uuid(),
                    &delivery.webhook_id,
                    &attempt,
                    &delivery.at,
                    &saturating_i64(delivery.duration_ms),
                    &status_code,
                    &delivery.error,
                    &delivery.callback_state.as_str(),
                    &callback.due_at(),
                    &Json(callback),
                ],
            )
            .await?;
        Ok(())
    }

    /// See [`CallbackStore::deliveries`].
    async fn deliveries(&self, id: JobId) -> Result<Vec<Delivery>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(LIST).await?;
        let rows = client.query(&statement, &[&id.as_uuid()]).await?;
        let corrupt =
            |column: &str| StoreError::Corrupt(format!("unreadable {column} in warren_deliveries"));
        rows.iter()
            .map(|row| {
                let attempt: i32 = row.try_get("attempt").map_err(|_| corrupt("attempt"))?;
                let duration_ms: i64 = row
                    .try_get("duration_ms")
                    .map_err(|_| corrupt("duration_ms"))?;
                let status_code: Option<i32> = row
                    .try_get("status_code")
                    .map_err(|_| corrupt("status_code"))?;
                let state: String = row
                    .try_get("callback_state")
                    .map_err(|_| corrupt("callback_state"))?;
                Ok(Delivery {
                    webhook_id: row
                        .try_get("webhook_id")
                        .map_err(|_| corrupt("webhook_id"))?,
                    attempt: u32::try_from(attempt).map_err(|_| corrupt("attempt"))?,
                    at: row.try_get("at").map_err(|_| corrupt("at"))?,
                    duration_ms: u64::try_from(duration_ms).unwrap_or(0),
                    status_code: status_code.and_then(|code| u16::try_from(code).ok()),
                    error: row.try_get("error").map_err(|_| corrupt("error"))?,
                    callback_state: state.parse().map_err(|_| corrupt("callback_state"))?,
                    next_attempt_at: row
                        .try_get("next_attempt_at")
                        .map_err(|_| corrupt("next_attempt_at"))?,
                })
            })
            .collect()
    }

    /// See [`CallbackStore::count_pending_callbacks`].
    async fn count_pending_callbacks(&self) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached("SELECT count(*) FROM warren_jobs WHERE callback_due IS NOT NULL")
            .await?;
        let count: i64 = client.query_one(&statement, &[]).await?.get(0);
        Ok(u64::try_from(count).unwrap_or(0))
    }
}
