//! The memory store's job records: insert (with the idempotency key and the in-flight cap),
//! events under the transition rules, cancel, re-drive, the job list and counts, retention.

use std::{collections::HashMap, ops::Bound};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;
use warren_shared::{JobEvent, JobId, JobStatus, JobType};

use super::{Inner, MemoryStore};
use crate::{
    model::Job,
    store::{
        Applied, Cancelled, Inserted, JobStore, KeyClaim, ListQuery, Redriven, StoreError,
        TypeCount, transition,
    },
};

#[async_trait]
impl JobStore for MemoryStore {
    async fn insert(&self, job: Job, claim: Option<KeyClaim>) -> Result<Inserted, StoreError> {
        self.inner().insert(job, claim)
    }

    async fn insert_capped(
        &self,
        job: Job,
        claim: Option<KeyClaim>,
        max_in_flight: u32,
    ) -> Result<Inserted, StoreError> {
        self.inner().insert_capped(job, claim, max_in_flight)
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        Ok(self.inner().jobs.get(&id).map(|job| Job::clone(job)))
    }

    async fn get_many(&self, ids: &[JobId]) -> Result<Vec<Job>, StoreError> {
        let inner = self.inner();
        Ok(ids
            .iter()
            .filter_map(|id| inner.jobs.get(id).map(|job| Job::clone(job)))
            .collect())
    }

    async fn apply_events(&self, events: &[JobEvent]) -> Result<Vec<Applied>, StoreError> {
        let mut inner = self.inner();
        Ok(events
            .iter()
            .map(|event| {
                let applied = inner.with_job(event.id, |job| match transition::apply(job, event) {
                    Ok(()) => Applied::Updated(Box::new(job.clone())),
                    Err(ignored) => Applied::Ignored(ignored),
                });
                applied.unwrap_or(Applied::UnknownJob)
            })
            .collect())
    }

    async fn cancel(&self, id: JobId) -> Result<Cancelled, StoreError> {
        let cancelled = self.inner().with_job(id, |job| {
            if transition::cancel(job) {
                Cancelled::Now(Box::new(job.clone()))
            } else {
                Cancelled::AlreadyTerminal(Box::new(job.clone()))
            }
        });
        Ok(cancelled.unwrap_or(Cancelled::UnknownJob))
    }

    async fn redrive(&self, id: JobId, cap: Option<(Uuid, u32)>) -> Result<Redriven, StoreError> {
        let mut inner = self.inner();
        if let Some((key, max)) = cap
            && inner
                .jobs
                .get(&id)
                .is_some_and(|job| job.status == JobStatus::Failed)
            && inner.in_flight_of(key) >= usize::try_from(max).unwrap_or(usize::MAX)
        {
            return Ok(Redriven::AtCapacity);
        }
        let redriven = inner.with_job(id, |job| {
            if transition::redrive(job) {
                Redriven::Now(Box::new(job.clone()))
            } else {
                Redriven::NotFailed(Box::new(job.clone()))
            }
        });
        Ok(redriven.unwrap_or(Redriven::UnknownJob))
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<Job>, StoreError> {
        let inner = self.inner();
        let upper = query.before.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(inner
            .jobs
            .range((Bound::Unbounded, upper))
            .rev()
            .map(|(_, job)| job)
            .filter(|job| query.tenant.as_ref().is_none_or(|t| &job.tenant == t))
            .filter(|job| query.status.is_none_or(|status| job.status == status))
            .filter(|job| query.job_type.as_ref().is_none_or(|t| &job.job_type == t))
            .filter(|job| query.workflow.is_none_or(|w| job.workflow_id == Some(w)))
            .take(query.limit)
            .map(|job| Job::clone(job))
            .collect())
    }

    async fn count_by_type(
        &self,
        tenant: Option<&str>,
        finished_since: DateTime<Utc>,
    ) -> Result<Vec<TypeCount>, StoreError> {
        Ok(self.inner().count_by_type(tenant, finished_since))
    }

    async fn forget_key(&self, key: &str) -> Result<(), StoreError> {
        self.inner().keys.remove(key);
        Ok(())
    }

    async fn purge(
        &self,
        jobs_before: DateTime<Utc>,
        keys_before: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut inner = self.inner();
        let before = inner.jobs.len();
        let Inner {
            jobs, workflows, ..
        } = &mut *inner;
        // A running workflow's finished steps stay (its settle reads them); a finished
        // workflow goes with the same age rule.
        jobs.retain(|_, job| {
            let old =
                job.status.is_terminal() && job.finished_at.is_some_and(|at| at < jobs_before);
            let running_workflow = job.workflow_id.is_some_and(|id| {
                workflows
                    .get(&id)
                    .is_some_and(|entry| !entry.workflow.status.is_terminal())
            });
            !old || running_workflow
        });
        workflows.retain(|_, entry| {
            entry
                .workflow
                .finished_at
                .is_none_or(|at| at >= jobs_before)
        });
        let Inner {
            jobs,
            unconfirmed,
            scheduled,
            callbacks_due,
            deliveries,
            ..
        } = &mut *inner;
        unconfirmed.retain(|id| jobs.contains_key(id));
        scheduled.retain(|id| jobs.contains_key(id));
        callbacks_due.retain(|id| jobs.contains_key(id));
        deliveries.retain(|id, _| jobs.contains_key(id));
        let purged = before - inner.jobs.len();
        inner.keys.retain(|_, key| key.created_at >= keys_before);
        Ok(u64::try_from(purged).unwrap_or(u64::MAX))
    }

    fn is_remote(&self) -> bool {
        false
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

impl Inner {
    /// Jobs by type and status, of `tenant` (all for `None`): the unfinished ones, and those
    /// finished since `finished_since`.
    fn count_by_type(&self, tenant: Option<&str>, finished_since: DateTime<Utc>) -> Vec<TypeCount> {
        let mut counts: HashMap<(JobType, JobStatus), u64> = HashMap::new();
        let counted = self.jobs.values().filter(|job| {
            tenant.is_none_or(|t| job.tenant == t)
                && (!job.status.is_terminal()
                    || job.finished_at.is_some_and(|at| at >= finished_since))
        });
        for job in counted {
            *counts
                .entry((job.job_type.clone(), job.status))
                .or_default() += 1;
        }
        counts
            .into_iter()
            .map(|((job_type, status), count)| TypeCount {
                job_type,
                status,
                count,
            })
            .collect()
    }
}
