//! The in-memory store: the default when no database is configured. Records live as long as
//! the process; a restart forgets them (use the PostgreSQL store for durability).

use std::{
    collections::{BTreeMap, HashMap},
    ops::Bound,
    sync::{Mutex, MutexGuard, PoisonError},
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use warren_shared::{JobError, JobEvent, JobId};

use super::{
    Applied, Cancelled, Job, JobStore, ListQuery, Redriven, Reservation, StoreError, transition,
};

/// Records in a map ordered by id, i.e. by creation time (ids are UUIDv7), and idempotency
/// keys.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Boxed: a `Job` is a few hundred bytes, and B-tree nodes are rarely full, so keeping
    /// records inline would pay for every empty slot too.
    jobs: BTreeMap<JobId, Box<Job>>,
    keys: HashMap<String, Key>,
}

#[derive(Debug)]
struct Key {
    request_hash: String,
    job: JobId,
    accepted: bool,
    created_at: DateTime<Utc>,
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a record half-written (every change is
        // a whole-field assignment), so a poisoned lock is safe to keep using.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `change` on the record with `id`, if there is one.
    fn with_job<T>(&self, id: JobId, change: impl FnOnce(&mut Job) -> T) -> Option<T> {
        self.inner().jobs.get_mut(&id).map(|job| change(job))
    }
}

#[async_trait]
impl JobStore for MemoryStore {
    async fn insert(&self, job: Job) -> Result<(), StoreError> {
        let mut inner = self.inner();
        if inner.jobs.contains_key(&job.id) {
            return Err(StoreError::Duplicate(job.id));
        }
        inner.jobs.insert(job.id, Box::new(job));
        Ok(())
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        Ok(self.inner().jobs.get(&id).map(|job| Job::clone(job)))
    }

    async fn apply_event(&self, event: &JobEvent) -> Result<Applied, StoreError> {
        let applied = self.with_job(event.id, |job| match transition::apply(job, event) {
            Ok(()) => Applied::Updated(Box::new(job.clone())),
            Err(ignored) => Applied::Ignored(ignored),
        });
        Ok(applied.unwrap_or(Applied::UnknownJob))
    }

    async fn fail_unpublished(&self, id: JobId, error: JobError) -> Result<(), StoreError> {
        self.with_job(id, |job| transition::fail(job, error));
        Ok(())
    }

    async fn cancel(&self, id: JobId) -> Result<Cancelled, StoreError> {
        let cancelled = self.with_job(id, |job| {
            if transition::cancel(job) {
                Cancelled::Now(Box::new(job.clone()))
            } else {
                Cancelled::AlreadyTerminal(Box::new(job.clone()))
            }
        });
        Ok(cancelled.unwrap_or(Cancelled::UnknownJob))
    }

    async fn redrive(&self, id: JobId) -> Result<Redriven, StoreError> {
        let redriven = self.with_job(id, |job| {
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
            .filter(|job| query.status.is_none_or(|status| job.status == status))
            .filter(|job| query.job_type.as_ref().is_none_or(|t| &job.job_type == t))
            .take(query.limit)
            .map(|job| Job::clone(job))
            .collect())
    }

    async fn reserve_key(
        &self,
        key: &str,
        request_hash: &str,
        id: JobId,
    ) -> Result<Reservation, StoreError> {
        let mut inner = self.inner();
        if let Some(existing) = inner.keys.get(key) {
            return Ok(if existing.request_hash != request_hash {
                Reservation::Mismatch
            } else if existing.accepted {
                Reservation::Replay(existing.job)
            } else {
                Reservation::InProgress
            });
        }
        let entry = Key {
            request_hash: request_hash.to_owned(),
            job: id,
            accepted: false,
            created_at: Utc::now(),
        };
        inner.keys.insert(key.to_owned(), entry);
        Ok(Reservation::Reserved)
    }

    async fn settle_key(&self, key: &str, accepted: bool) -> Result<(), StoreError> {
        let mut inner = self.inner();
        if accepted {
            if let Some(entry) = inner.keys.get_mut(key) {
                entry.accepted = true;
            }
        } else {
            inner.keys.remove(key);
        }
        Ok(())
    }

    async fn purge(
        &self,
        jobs_before: DateTime<Utc>,
        keys_before: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut inner = self.inner();
        let before = inner.jobs.len();
        inner.jobs.retain(|_, job| {
            !(job.status.is_terminal() && job.finished_at.is_some_and(|at| at < jobs_before))
        });
        let purged = before - inner.jobs.len();
        inner.keys.retain(|_, key| key.created_at >= keys_before);
        Ok(u64::try_from(purged).unwrap_or(u64::MAX))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
