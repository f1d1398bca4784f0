//! The memory store's records and their indexes: storing a record with its idempotency key,
//! and keeping the outbox, scheduled, callback and in-flight indexes true on every change (and
//! a finished workflow step's workflow marked owed a settle).

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use uuid::Uuid;
use warren_shared::{JobId, JobStatus};

use super::Inner;
use crate::{
    model::Job,
    store::{Inserted, KeyClaim, StoreError},
};

/// Which indexes a record belongs in.
#[derive(Debug, Clone, Copy)]
pub(super) struct Marks {
    unconfirmed: bool,
    scheduled: bool,
    callback_due: bool,
    /// The submitting key, and whether the record counts against its cap (unfinished).
    key: Option<(Uuid, bool)>,
}

impl Marks {
    pub(super) fn of(job: &Job) -> Self {
        Self {
            key: job.key_id.map(|key| (key, !job.status.is_terminal())),
            unconfirmed: job.unconfirmed_since.is_some(),
            scheduled: job.status == JobStatus::Scheduled,
            callback_due: job.callback.as_ref().is_some_and(|c| c.due_at().is_some()),
        }
    }
}

#[derive(Debug)]
pub(super) struct Key {
    pub(super) request_hash: String,
    pub(super) job: JobId,
    pub(super) created_at: DateTime<Utc>,
}

impl Inner {
    /// Runs `change` on the record with `id`, if there is one, keeping the outbox index true.
    pub(super) fn with_job<T>(
        &mut self,
        id: JobId,
        change: impl FnOnce(&mut Job) -> T,
    ) -> Option<T> {
        let job = self.jobs.get_mut(&id)?;
        let was_terminal = job.status.is_terminal();
        let outcome = change(job);
        let marks = Marks::of(job);
        let finished_step = job
            .workflow_id
            .filter(|_| !was_terminal && job.status.is_terminal());
        self.index(id, marks);
        if let Some(workflow) = finished_step {
            self.mark_workflow(workflow);
        }
        Some(outcome)
    }

    /// Keeps the outbox, scheduled and callback indexes true for record `id`.
    pub(super) fn index(&mut self, id: JobId, marks: Marks) {
        for (index, member) in [
            (&mut self.unconfirmed, marks.unconfirmed),
            (&mut self.scheduled, marks.scheduled),
            (&mut self.callbacks_due, marks.callback_due),
        ] {
            if member {
                index.insert(id);
            } else {
                index.remove(&id);
            }
        }
        match marks.key {
            Some((key, true)) => {
                self.in_flight.entry(key).or_default().insert(id);
            }
            Some((key, false)) => {
                if let Some(ids) = self.in_flight.get_mut(&key) {
                    ids.remove(&id);
                    if ids.is_empty() {
                        self.in_flight.remove(&key);
                    }
                }
            }
            None => {}
        }
    }

    /// Removes record `id` and takes it out of every index.
    pub(super) fn remove(&mut self, id: JobId) {
        let Some(job) = self.jobs.remove(&id) else {
            return;
        };
        let marks = Marks {
            unconfirmed: false,
            scheduled: false,
            callback_due: false,
            key: job.key_id.map(|key| (key, false)),
        };
        self.index(id, marks);
        self.deliveries.remove(&id);
    }

    /// Stores a new record and its key, or finds the key's earlier job.
    pub(super) fn insert(
        &mut self,
        job: Job,
        claim: Option<KeyClaim>,
    ) -> Result<Inserted, StoreError> {
        if self.jobs.contains_key(&job.id) {
            return Err(StoreError::Duplicate(job.id));
        }
        if let Some(claim) = claim {
            if let Some(existing) = self.keys.get(&claim.key) {
                return Ok(if existing.request_hash == claim.request_hash {
                    Inserted::Replay(existing.job)
                } else {
                    Inserted::KeyMismatch
                });
            }
            let key = Key {
                request_hash: claim.request_hash,
                job: job.id,
                created_at: Utc::now(),
            };
            self.keys.insert(claim.key, key);
        }
        self.index(job.id, Marks::of(&job));
        self.jobs.insert(job.id, Box::new(job));
        Ok(Inserted::New)
    }

    /// Stores a new record as [`Inner::insert`] does, unless its key already has
    /// `max_in_flight` unfinished jobs (a replay of an idempotency key is answered anyway).
    pub(super) fn insert_capped(
        &mut self,
        job: Job,
        claim: Option<KeyClaim>,
        max_in_flight: u32,
    ) -> Result<Inserted, StoreError> {
        let replay = claim
            .as_ref()
            .is_some_and(|c| self.keys.contains_key(&c.key));
        let in_flight = job.key_id.map_or(0, |key| self.in_flight_of(key));
        if !replay && in_flight >= usize::try_from(max_in_flight).unwrap_or(usize::MAX) {
            return Ok(Inserted::AtCapacity);
        }
        self.insert(job, claim)
    }

    /// How many unfinished records API key `key` submitted.
    pub(super) fn in_flight_of(&self, key: Uuid) -> usize {
        self.in_flight.get(&key).map_or(0, HashSet::len)
    }
}
