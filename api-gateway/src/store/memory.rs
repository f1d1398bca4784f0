//! The in-memory store: the default when no database is configured. Records live as long as
//! the process; a restart forgets them (use the PostgreSQL store for durability).

use std::{collections::BTreeMap, sync::Mutex};

use async_trait::async_trait;
use warren_shared::{JobError, JobEvent, JobId};

use super::{Applied, Cancelled, Job, JobStore, Redriven, StoreError, transition};

/// Records in a map ordered by id, i.e. by creation time (ids are UUIDv7).
#[derive(Debug, Default)]
pub struct MemoryStore {
    jobs: Mutex<BTreeMap<JobId, Job>>,
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, BTreeMap<JobId, Job>> {
        // A panic while holding the lock cannot leave a record half-written (every change is
        // a whole-field assignment), so a poisoned lock is safe to keep using.
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl JobStore for MemoryStore {
    async fn insert(&self, job: Job) -> Result<(), StoreError> {
        let mut jobs = self.jobs();
        if jobs.contains_key(&job.id) {
            return Err(StoreError::Duplicate(job.id));
        }
        jobs.insert(job.id, job);
        Ok(())
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        Ok(self.jobs().get(&id).cloned())
    }

    async fn apply_event(&self, event: &JobEvent) -> Result<Applied, StoreError> {
        let mut jobs = self.jobs();
        let Some(job) = jobs.get_mut(&event.id) else {
            return Ok(Applied::UnknownJob);
        };
        Ok(match transition::apply(job, event) {
            Ok(()) => Applied::Updated(Box::new(job.clone())),
            Err(ignored) => Applied::Ignored(ignored),
        })
    }

    async fn fail_unpublished(&self, id: JobId, error: JobError) -> Result<(), StoreError> {
        if let Some(job) = self.jobs().get_mut(&id) {
            transition::fail(job, error);
        }
        Ok(())
    }

    async fn cancel(&self, id: JobId) -> Result<Cancelled, StoreError> {
        let mut jobs = self.jobs();
        let Some(job) = jobs.get_mut(&id) else {
            return Ok(Cancelled::UnknownJob);
        };
        Ok(if transition::cancel(job) {
            Cancelled::Now(Box::new(job.clone()))
        } else {
            Cancelled::AlreadyTerminal(Box::new(job.clone()))
        })
    }

    async fn redrive(&self, id: JobId) -> Result<Redriven, StoreError> {
        let mut jobs = self.jobs();
        let Some(job) = jobs.get_mut(&id) else {
            return Ok(Redriven::UnknownJob);
        };
        Ok(if transition::redrive(job) {
            Redriven::Now(Box::new(job.clone()))
        } else {
            Redriven::NotFailed(Box::new(job.clone()))
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
