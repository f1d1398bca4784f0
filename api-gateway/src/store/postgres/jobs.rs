//! Job records in `warren_jobs`: inserts (group-committed, or capped per API key), reads, worker
//! events and client changes under the row lock, the job list (`GET /v1/jobs`: a page newest
//! first, filtered) and the counts for the queue overview (`GET /v1/queues`: unfinished jobs by
//! type and status through the status index, and the ones finished since a time through the
//! `finished_at` index, in one query), retention and the change feed.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;
use warren_shared::{
    JobEvent, JobId, JobType,
    metrics::{Counter, Family, PathLabels},
};

use super::{
    super::{
        Applied, Cancelled, ChangeFeed, Inserted, JobStore, KeyClaim, ListQuery, Redriven,
        StoreError, TypeCount, transition,
    },
    PostgresStore, caps, changes, discard_on_error,
    rows::{self, from_row},
    saturating_i64,
    writes::Modified,
};
use crate::model::Job;

const COUNT_BY_TYPE: &str = "
    SELECT job_type, status, count(*) FROM warren_jobs
     WHERE status IN ('scheduled', 'queued', 'running', 'retrying')
       AND ($1::text IS NULL OR tenant = $1)
     GROUP BY job_type, status
    UNION ALL
    SELECT job_type, status, count(*) FROM warren_jobs
     WHERE finished_at >= $2 AND ($1::text IS NULL OR tenant = $1)
     GROUP BY job_type, status";

#[async_trait]
impl JobStore for PostgresStore {
    async fn insert(&self, job: Job, claim: Option<KeyClaim>) -> Result<Inserted, StoreError> {
        self.committer.insert(job, claim).await
    }

    async fn insert_capped(
        &self,
        job: Job,
        claim: Option<KeyClaim>,
        max_in_flight: u32,
    ) -> Result<Inserted, StoreError> {
        caps::insert_capped(&self.pool, &job, claim.as_ref(), max_in_flight).await
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(rows::SELECT_ONE).await?;
        client
            .query_opt(&statement, &[&id.as_uuid()])
            .await?
            .map(|row| from_row(&row))
            .transpose()
    }

    async fn get_many(&self, ids: &[JobId]) -> Result<Vec<Job>, StoreError> {
        let ids: Vec<Uuid> = ids.iter().map(|id| id.as_uuid()).collect();
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(rows::SELECT_MANY).await?;
        let rows = client.query(&statement, &[&ids]).await?;
        rows.iter().map(from_row).collect()
    }

    async fn apply_events(&self, events: &[JobEvent]) -> Result<Vec<Applied>, StoreError> {
        let client = self.pool.get().await?;
        let applied = self.apply_on(&client, events).await;
        discard_on_error(client, applied.as_ref().err());
        applied
    }

    async fn cancel(&self, id: JobId) -> Result<Cancelled, StoreError> {
        Ok(match self.modify(id, transition::cancel).await? {
            None => Cancelled::UnknownJob,
            Some((job, true)) => Cancelled::Now(Box::new(job)),
            Some((job, false)) => Cancelled::AlreadyTerminal(Box::new(job)),
        })
    }

    async fn redrive(&self, id: JobId, cap: Option<(Uuid, u32)>) -> Result<Redriven, StoreError> {
        let redrive = |job: &mut Job| transition::redrive(job);
        Ok(match self.modify_capped(id, cap, redrive).await? {
            Modified::UnknownJob => Redriven::UnknownJob,
            Modified::AtCapacity => Redriven::AtCapacity,
            Modified::Done(job, true) => Redriven::Now(job),
            Modified::Done(job, false) => Redriven::NotFailed(job),
        })
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<Job>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(rows::LIST).await?;
        let status = query.status.map(|s| s.as_str());
        let job_type = query.job_type.as_ref().map(JobType::as_str);
        let before = query.before.map(|id| id.as_uuid());
        let limit = saturating_i64(query.limit);
        let tenant = query.tenant.as_deref();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
            &status,
            &job_type,
            &before,
            &limit,
            &tenant,
            &query.workflow,
        ];
        let rows = client.query(&statement, &params).await?;
        rows.iter().map(rows::from_row).collect()
    }

    async fn count_by_type(
        &self,
        tenant: Option<&str>,
        finished_since: DateTime<Utc>,
    ) -> Result<Vec<TypeCount>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(COUNT_BY_TYPE).await?;
        let corrupt =
            |column: &str| StoreError::Corrupt(format!("unreadable {column} in warren_jobs"));
        client
            .query(&statement, &[&tenant, &finished_since])
            .await?
            .iter()
            .map(|row| {
                let job_type: String = row.try_get(0).map_err(|_| corrupt("job_type"))?;
                let status: String = row.try_get(1).map_err(|_| corrupt("status"))?;
                let count: i64 = row.try_get(2).map_err(|_| corrupt("count"))?;
                Ok(TypeCount {
                    job_type: JobType::parse(job_type).map_err(|_| corrupt("job_type"))?,
                    status: status.parse().map_err(|_| corrupt("status"))?,
                    count: u64::try_from(count).unwrap_or(0),
                })
            })
            .collect()
    }

    async fn forget_key(&self, key: &str) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached("DELETE FROM warren_idempotency WHERE key = $1")
            .await?;
        client.execute(&statement, &[&key]).await?;
        Ok(())
    }

    async fn purge(
        &self,
        jobs_before: DateTime<Utc>,
        keys_before: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        // A running workflow's finished steps stay: its settle reads their statuses and its
        // waiting steps their results. A finished workflow goes with the same age rule.
        let purged = client
            .execute(
                "DELETE FROM warren_jobs
                 WHERE status IN ('succeeded', 'failed', 'cancelled') AND finished_at < $1
                   AND (workflow_id IS NULL OR workflow_id NOT IN (
                        SELECT id FROM warren_workflows WHERE status = 'running'))",
                &[&jobs_before],
            )
            .await?;
        client
            .execute(
                "DELETE FROM warren_workflows WHERE finished_at < $1",
                &[&jobs_before],
            )
            .await?;
        client
            .execute(
                "DELETE FROM warren_idempotency WHERE created_at < $1",
                &[&keys_before],
            )
            .await?;
        Ok(purged)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client.execute("SELECT 1", &[]).await?;
        Ok(())
    }

    async fn changes(&self) -> Result<Option<ChangeFeed>, StoreError> {
        changes::listen(
            &self.listen_config,
            self.tls.clone(),
            &self.channel,
            &self.origin,
        )
        .await
        .map(Some)
    }

    fn count_apply_paths(&self, paths: &Family<PathLabels, Counter>) {
        self.paths.count_into(paths);
    }
}
