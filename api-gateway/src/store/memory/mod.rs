//! The in-memory store: the default when no database is configured. Records live as long as
//! the process; a restart forgets them (use the PostgreSQL store for durability). It keeps
//! the same rules as the PostgreSQL store, under one lock: a record and its idempotency key
//! are stored together, and records whose publish was never confirmed (a request dropped
//! half-way) are found by the relay through the `unconfirmed` index.

//!
//! Each store trait is implemented in the file named for its concern: [`jobs`], [`outbox`],
//! [`keys`], [`schedules`], [`callbacks`], [`workflows`], [`flow`]; [`records`] keeps the indexes true on
//! every change.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Mutex, MutexGuard, PoisonError},
};

use uuid::Uuid;
use warren_shared::JobId;

use crate::model::{ApiKey, Delivery, Job, Schedule};

mod callbacks;
mod flow;
mod jobs;
mod keys;
mod outbox;
mod records;
mod schedules;
mod workflows;

use records::Key;

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
    /// Workflows, oldest first (ids are UUIDv7).
    workflows: BTreeMap<Uuid, workflows::Entry>,
    /// Flow settings by job type.
    flow: BTreeMap<warren_shared::JobType, crate::model::QueueSettings>,
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
