//! The memory store's outbox: clearing and claiming the mark of jobs not yet confirmed by
//! RabbitMQ, failing the ones it refused, and releasing `scheduled` jobs that came due.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use warren_shared::{JobError, JobId, JobStatus};

use super::MemoryStore;
use crate::{
    model::Job,
    store::{OutboxStore, StoreError, transition},
};

#[async_trait]
impl OutboxStore for MemoryStore {
    async fn confirm_published(&self, id: JobId, _now: bool) -> Result<(), StoreError> {
        self.inner()
            .with_job(id, |job| job.unconfirmed_since = None);
        Ok(())
    }

    async fn fail_unpublished(
        &self,
        id: JobId,
        error: JobError,
        key: Option<&str>,
    ) -> Result<Option<Job>, StoreError> {
        let mut inner = self.inner();
        if let Some(key) = key {
            inner.keys.remove(key);
        }
        let failed = inner.with_job(id, |job| {
            job.unconfirmed_since = None;
            transition::fail(job, error).then(|| job.clone())
        });
        Ok(failed.flatten())
    }

    async fn withdraw(&self, id: JobId, key: Option<&str>) -> Result<bool, StoreError> {
        let mut inner = self.inner();
        let pending = inner
            .jobs
            .get(&id)
            .is_some_and(|job| job.status == JobStatus::Queued && job.unconfirmed_since.is_some());
        if !pending {
            return Ok(false);
        }
        inner.remove(id);
        if let Some(key) = key
            && inner.keys.get(key).is_some_and(|claim| claim.job == id)
        {
            inner.keys.remove(key);
        }
        Ok(true)
    }

    async fn claim_unpublished(
        &self,
        marked_before: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let mut inner = self.inner();
        let due: Vec<JobId> = inner
            .unconfirmed
            .iter()
            .filter(|id| {
                inner.jobs.get(id).is_some_and(|job| {
                    job.unconfirmed_since
                        .is_some_and(|since| since < marked_before)
                })
            })
            .take(limit)
            .copied()
            .collect();
        Ok(due
            .into_iter()
            .filter_map(|id| {
                inner.with_job(id, |job| {
                    job.unconfirmed_since = Some(now);
                    job.clone()
                })
            })
            .collect())
    }

    async fn release_due(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Job>, StoreError> {
        let mut inner = self.inner();
        let mut due: Vec<(DateTime<Utc>, JobId)> = inner
            .scheduled
            .iter()
            .filter_map(|id| inner.jobs.get(id)?.run_at.map(|at| (at, *id)))
            .filter(|(at, _)| *at <= now)
            .collect();
        due.sort_unstable();
        Ok(due
            .into_iter()
            .take(limit)
            .filter_map(|(_, id)| {
                inner
                    .with_job(id, |job| transition::release(job, now).then(|| job.clone()))
                    .flatten()
            })
            .collect())
    }

    async fn count_scheduled(&self) -> Result<u64, StoreError> {
        Ok(u64::try_from(self.inner().scheduled.len()).unwrap_or(u64::MAX))
    }
}
