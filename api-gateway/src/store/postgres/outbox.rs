//! The outbox in `warren_jobs`: clearing the mark of jobs RabbitMQ confirmed (batched by the
//! [`super::committer`]'s unmarker), failing the ones it refused, claiming the marks the relay
//! republishes, and releasing `scheduled` jobs that came due.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use warren_shared::{JobError, JobId};

use super::{
    super::{JobStore, OutboxStore, StoreError, transition},
    PostgresStore, committer, discard_on_error,
    rows::{self, from_row},
    saturating_i64,
};
use crate::model::Job;

/// Deletes a new job that was never published (still `queued` with its outbox mark) and its
/// idempotency key, if the key names it, in one statement.
const WITHDRAW: &str = "WITH gone AS (
        DELETE FROM warren_jobs
        WHERE id = $1 AND status = 'queued' AND unconfirmed_since IS NOT NULL RETURNING id
    ), forgotten AS (
        DELETE FROM warren_idempotency WHERE key = $2 AND job_id IN (SELECT id FROM gone)
    )
    SELECT count(*) FROM gone";

#[async_trait]
impl OutboxStore for PostgresStore {
    async fn confirm_published(&self, id: JobId, now: bool) -> Result<(), StoreError> {
        if now {
            committer::unmark(&self.pool, &[id.as_uuid()]).await
        } else {
            self.unmarker.clear(id.as_uuid())
        }
    }

    async fn fail_unpublished(
        &self,
        id: JobId,
        error: JobError,
        key: Option<&str>,
    ) -> Result<Option<Job>, StoreError> {
        if let Some(key) = key {
            self.forget_key(key).await?;
        }
        let failed = self
            .modify(id, |job| {
                job.unconfirmed_since = None;
                transition::fail(job, error)
            })
            .await?;
        Ok(failed.and_then(|(job, changed)| changed.then_some(job)))
    }

    async fn withdraw(&self, id: JobId, key: Option<&str>) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(WITHDRAW).await?;
        let gone: i64 = client
            .query_one(&statement, &[&id.as_uuid(), &key])
            .await?
            .get(0);
        Ok(gone > 0)
    }

    async fn claim_unpublished(
        &self,
        marked_before: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(rows::CLAIM_UNCONFIRMED).await?;
        let rows = client
            .query(&statement, &[&marked_before, &now, &saturating_i64(limit)])
            .await?;
        rows.iter().map(from_row).collect()
    }

    async fn release_due(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Job>, StoreError> {
        let client = self.pool.get().await?;
        let released = self.release_on(&client, now, limit).await;
        discard_on_error(client, released.as_ref().err());
        released
    }

    async fn count_scheduled(&self) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached("SELECT count(*) FROM warren_jobs WHERE status = 'scheduled'")
            .await?;
        let count: i64 = client.query_one(&statement, &[]).await?.get(0);
        Ok(u64::try_from(count).unwrap_or(0))
    }
}
