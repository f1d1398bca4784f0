//! Waking requests that wait on a job: synchronous submits, long polls and event streams.
//!
//! Workflows are watched the same way, by workflow id ([`Watchers::subscribe_workflow`]): any
//! change to one of its steps, or to the workflow itself, wakes its waiters, who re-read it.
//!
//! A request subscribes to a job id, then reads the store; whatever changes the job after
//! that (this gateway's events consumer, cancel or re-drive, or the store's change feed for
//! other gateways' changes, see [`crate::jobs::wake`]) hands the new snapshot to its
//! subscribers. Subscribing before reading means no change can fall between the two. Subscriptions are removed when the last
//! subscriber drops its [`Subscription`], so a client that goes away leaves nothing behind.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use tokio::sync::broadcast;
use warren_shared::JobId;

use crate::model::Job;

/// Snapshots buffered per job for a slow subscriber before it is told it lagged.
const BUFFER: usize = 64;

/// The jobs someone is waiting on, and how to reach them.
#[derive(Debug, Default)]
pub struct Watchers {
    senders: Mutex<HashMap<JobId, broadcast::Sender<Arc<Job>>>>,
    /// Woken when a job that owes a webhook delivery changes here (see
    /// [`crate::webhooks::deliverer`]).
    callbacks: tokio::sync::Notify,
    /// Waiters on workflows: a tick per change, after which they re-read the store.
    workflows: Mutex<HashMap<uuid::Uuid, broadcast::Sender<()>>>,
}

impl Watchers {
    fn senders(&self) -> MutexGuard<'_, HashMap<JobId, broadcast::Sender<Arc<Job>>>> {
        // Every change under this lock is a single map operation: a poisoned lock is consistent.
        self.senders.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts receiving snapshots of job `id`.
    pub fn subscribe(self: &Arc<Self>, id: JobId) -> Subscription {
        let receiver = self
            .senders()
            .entry(id)
            .or_insert_with(|| broadcast::channel(BUFFER).0)
            .subscribe();
        Subscription {
            id,
            receiver,
            watchers: Arc::clone(self),
        }
    }

    /// Whether anyone waits on job `id`.
    pub fn is_watched(&self, id: JobId) -> bool {
        self.senders().contains_key(&id)
    }

    fn workflow_senders(&self) -> MutexGuard<'_, HashMap<uuid::Uuid, broadcast::Sender<()>>> {
        // As for `senders`: single map operations only.
        self.workflows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts hearing of changes to workflow `id` (and its steps).
    pub fn subscribe_workflow(self: &Arc<Self>, id: uuid::Uuid) -> WorkflowSubscription {
        let receiver = self
            .workflow_senders()
            .entry(id)
            .or_insert_with(|| broadcast::channel(BUFFER).0)
            .subscribe();
        WorkflowSubscription {
            id,
            receiver,
            watchers: Arc::clone(self),
        }
    }

    /// Whether anyone waits on workflow `id`.
    pub fn is_watched_workflow(&self, id: uuid::Uuid) -> bool {
        self.workflow_senders().contains_key(&id)
    }

    /// Wakes everyone waiting on workflow `id`.
    pub fn publish_workflow(&self, id: uuid::Uuid) {
        if let Some(sender) = self.workflow_senders().get(&id) {
            let _ = sender.send(());
        }
    }

    /// The ids of every watched workflow.
    pub fn watched_workflows(&self) -> Vec<uuid::Uuid> {
        self.workflow_senders().keys().copied().collect()
    }

    /// Hands a new snapshot to everyone waiting on its job (and wakes its workflow's waiters).
    pub fn publish(&self, job: Job) {
        if job.callback.as_ref().is_some_and(|c| c.due_at().is_some()) {
            self.callbacks.notify_one();
        }
        if let Some(workflow) = job.workflow_id {
            self.publish_workflow(workflow);
        }
        if let Some(sender) = self.senders().get(&job.id) {
            // An error only means every subscriber has just gone.
            let _ = sender.send(Arc::new(job));
        }
    }

    /// Wakes the deliverer: a callback (e.g. a finished workflow's) was armed here.
    pub fn callback_armed(&self) {
        self.callbacks.notify_one();
    }

    /// Resolves once a job that owes a webhook delivery was published (at once if one was
    /// since the last call).
    pub async fn callback_due(&self) {
        self.callbacks.notified().await;
    }

    /// The ids of every watched job.
    pub fn watched_ids(&self) -> Vec<JobId> {
        self.senders().keys().copied().collect()
    }

    /// How many waiters job `id` has (for tests).
    pub fn subscribers(&self, id: JobId) -> usize {
        self.senders()
            .get(&id)
            .map_or(0, broadcast::Sender::receiver_count)
    }

    /// How many jobs are watched (for tests and metrics).
    pub fn watched(&self) -> usize {
        self.senders().len()
    }
}

/// What a subscriber receives next.
#[derive(Debug)]
pub enum Snapshot {
    /// The job's latest state.
    Job(Arc<Job>),
    /// Snapshots were missed; read the store for the current state.
    Lagged,
}

/// One waiter's stream of snapshots of one job; unsubscribes on drop.
#[derive(Debug)]
pub struct Subscription {
    id: JobId,
    receiver: broadcast::Receiver<Arc<Job>>,
    watchers: Arc<Watchers>,
}

impl Subscription {
    /// The job this subscription follows.
    #[must_use]
    pub fn id(&self) -> JobId {
        self.id
    }

    /// The next snapshot of the job. Waits as long as it takes; callers bound it.
    pub async fn next(&mut self) -> Snapshot {
        match self.receiver.recv().await {
            Ok(job) => Snapshot::Job(job),
            // The sender lives in the map as long as this subscription does, so `Closed`
            // cannot happen; treat it like a lag and re-read.
            Err(_) => Snapshot::Lagged,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut senders = self.watchers.senders();
        // This subscription's receiver is still alive here, so it counts as one.
        if senders
            .get(&self.id)
            .is_some_and(|sender| sender.receiver_count() <= 1)
        {
            senders.remove(&self.id);
        }
    }
}

/// One waiter's ticks for one workflow; unsubscribes on drop.
#[derive(Debug)]
pub struct WorkflowSubscription {
    id: uuid::Uuid,
    receiver: broadcast::Receiver<()>,
    watchers: Arc<Watchers>,
}

impl WorkflowSubscription {
    /// Resolves at the next change (or a missed one): re-read the workflow then.
    pub async fn changed(&mut self) {
        // `Lagged` means changes were missed: re-reading covers them as well.
        let _ = self.receiver.recv().await;
    }
}

impl Drop for WorkflowSubscription {
    fn drop(&mut self) {
        let mut senders = self.watchers.workflow_senders();
        if senders
            .get(&self.id)
            .is_some_and(|sender| sender.receiver_count() <= 1)
        {
            senders.remove(&self.id);
        }
    }
}
