//! The in-memory store: the default when no database is configured. Records live as long as
//! the process; a restart forgets them (use the PostgreSQL store for durability). It keeps
//! the same rules as the PostgreSQL store, under one lock: a record and its idempotency key
//! are stored together, and records whose publish was never confirmed (a request dropped
//! half-way) are found by the relay through the `unconfirmed` index.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    ops::Bound,
    sync::{Mutex, MutexGuard, PoisonError},
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use warren_shared::{JobError, JobEvent, JobId, JobStatus};

use uuid::Uuid;

use super::{
    Applied, Cancelled, FireRound, Inserted, Job, JobStore, KeyClaim, ListQuery, Redriven,
    StoreError, TypeCount, transition,
};
use crate::{
    auth::keys::ApiKey,
    schedules::{Fired, Schedule},
    webhooks::{Callback, Delivery},
};

mod callbacks;
mod keys;
mod records;

use records::{Key, Marks};

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
    /// Ids of records whose `unconfirmed_since` is set, so the relay need not scan them all.
    unconfirmed: HashSet<JobId>,
    /// Ids of `scheduled` records, so the scheduler need not scan them all.
    scheduled: HashSet<JobId>,
    schedules: HashMap<Uuid, Schedule>,
    /// Ids of records whose callback is pending, so the deliverer need not scan them all.
    callbacks_due: HashSet<JobId>,
    /// Every callback attempt, by job.
    deliveries: HashMap<JobId, Vec<Delivery>>,
    /// Ids of unfinished records by the API key that submitted them, for in-flight caps.
    in_flight: HashMap<Uuid, HashSet<JobId>>,
    /// API keys, oldest first (ids are UUIDv7).
    api_keys: BTreeMap<Uuid, ApiKey>,
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
}

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

    async fn claim_callbacks(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        Ok(self.inner().claim_callbacks(now, lease_until, limit))
    }

    async fn record_delivery(
        &self,
        id: JobId,
        delivery: &Delivery,
        callback: &Callback,
    ) -> Result<(), StoreError> {
        self.inner().record_delivery(id, delivery, callback);
        Ok(())
    }

    async fn deliveries(&self, id: JobId) -> Result<Vec<Delivery>, StoreError> {
        Ok(self
            .inner()
            .deliveries
            .get(&id)
            .cloned()
            .unwrap_or_default())
    }

    async fn count_pending_callbacks(&self) -> Result<u64, StoreError> {
        Ok(u64::try_from(self.inner().callbacks_due.len()).unwrap_or(u64::MAX))
    }

    async fn insert_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        self.insert_key(key)
    }

    async fn api_key(&self, id: Uuid) -> Result<Option<ApiKey>, StoreError> {
        Ok(self.key(id))
    }

    async fn api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        Ok(self.all_keys())
    }

    async fn revoke_api_key(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<Option<ApiKey>, StoreError> {
        Ok(self.revoke_key(id, at))
    }

    async fn insert_schedule(&self, schedule: Schedule) -> Result<(), StoreError> {
        self.inner().schedules.insert(schedule.id, schedule);
        Ok(())
    }

    async fn get_schedule(&self, id: Uuid) -> Result<Option<Schedule>, StoreError> {
        Ok(self.inner().schedules.get(&id).cloned())
    }

    async fn list_schedules(&self) -> Result<Vec<Schedule>, StoreError> {
        let mut all: Vec<Schedule> = self.inner().schedules.values().cloned().collect();
        all.sort_by_key(|s| s.id);
        Ok(all)
    }

    async fn update_schedule(
        &self,
        id: Uuid,
        change: &(dyn for<'s> Fn(&'s mut Schedule) + Send + Sync),
    ) -> Result<Option<Schedule>, StoreError> {
        Ok(self.inner().schedules.get_mut(&id).map(|schedule| {
            change(schedule);
            schedule.clone()
        }))
    }

    async fn delete_schedule(&self, id: Uuid) -> Result<bool, StoreError> {
        Ok(self.inner().schedules.remove(&id).is_some())
    }

    async fn fire_due(
        &self,
        now: DateTime<Utc>,
        plan: &(dyn for<'s> Fn(&'s Schedule) -> Fired + Send + Sync),
    ) -> Result<FireRound, StoreError> {
        let mut inner = self.inner();
        let due: Vec<Uuid> = inner
            .schedules
            .values()
            .filter(|s| !s.paused && s.next_run_at.is_some_and(|at| at <= now))
            .map(|s| s.id)
            .take(64)
            .collect();
        let mut round = FireRound::default();
        for id in due {
            let Some(schedule) = inner.schedules.get(&id) else {
                continue;
            };
            let fired = plan(schedule);
            round.misfired += fired.misfired;
            inner.schedules.insert(id, fired.schedule);
            if let Some(job) = fired.job
                && !inner.jobs.contains_key(&job.id)
            {
                inner.index(job.id, Marks::of(&job));
                inner.jobs.insert(job.id, Box::new(job.clone()));
                round.jobs.push(job);
            }
        }
        Ok(round)
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
        inner.jobs.retain(|_, job| {
            !(job.status.is_terminal() && job.finished_at.is_some_and(|at| at < jobs_before))
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

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
