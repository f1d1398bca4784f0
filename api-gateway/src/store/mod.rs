//! The stores: where the gateway keeps its records, one trait per concern, each implemented by
//! both backends (memory and PostgreSQL) in a file named for the concern.
//!
//! - [`JobStore`]: job records and their lifecycle (insert, events, cancel, re-drive, list,
//!   counts, retention).
//! - [`OutboxStore`]: what is still to publish (the outbox mark, due `scheduled` jobs).
//! - [`KeyStore`]: API keys.
//! - [`ScheduleStore`]: recurring schedules, and firing them.
//! - [`CallbackStore`]: webhook callbacks due and their delivery attempts.
//! - [`WorkflowStore`]: workflows, their step jobs, and settling them (releasing and
//!   cancelling steps under [`crate::model::workflow::plan`]).
//!
//! [`Stores`] holds one of each; a backend implements all six, so they share one database
//! (and one lock, in memory) and writes that span concerns (a fired schedule's job) stay in
//! one transaction. The rules of the lifecycle (terminal is final, stale events are ignored,
//! status never moves backwards) live in [`transition`] as pure functions, so both backends
//! apply exactly the same rules.

mod deadline;
mod memory;
mod postgres;
pub mod transition;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;
use warren_shared::{
    JobError, JobEvent, JobId, JobStatus, JobType,
    metrics::{Counter, Family, PathLabels},
};

use crate::model::{
    ApiKey, Callback, Delivery, Fired, FlowUpdate, Job, QueueSettings, Schedule, Workflow,
    WorkflowStatus,
};

pub use deadline::CallWatch;
pub use memory::MemoryStore;
pub use postgres::PostgresStore;
pub use postgres::StoreOptions;
pub use transition::Ignored;

/// What applying an event did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The record changed; this is the new state.
    Updated(Box<Job>),
    /// The event was recognised as stale or redundant and changed nothing.
    Ignored(Ignored),
    /// No record has this id (e.g. it was deleted by retention, or belongs to another store).
    UnknownJob,
}

/// What a cancel request did.
#[derive(Debug, Clone, PartialEq)]
pub enum Cancelled {
    /// The job was not finished and is now `cancelled`.
    Now(Box<Job>),
    /// The job had already finished; nothing changed.
    AlreadyTerminal(Box<Job>),
    /// No record has this id.
    UnknownJob,
}

/// What a re-drive request did.
#[derive(Debug, Clone, PartialEq)]
pub enum Redriven {
    /// The failed job is `queued` again as a new attempt series; publish its message.
    Now(Box<Job>),
    /// The job is not `failed`; nothing changed.
    NotFailed(Box<Job>),
    /// The job's API key already has its cap of jobs in flight; nothing changed.
    AtCapacity,
    /// No record has this id.
    UnknownJob,
}

/// Which jobs `GET /v1/jobs` asks for: newest first, optionally filtered, one page.
#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    /// Only this tenant's jobs (`None`: every tenant's, for the operator).
    pub tenant: Option<String>,
    /// Only jobs with this status.
    pub status: Option<JobStatus>,
    /// Only jobs of this type.
    pub job_type: Option<JobType>,
    /// Only the step jobs of this workflow.
    pub workflow: Option<Uuid>,
    /// At most this many jobs.
    pub limit: usize,
    /// Only jobs older than this one (the previous page's last job): ids are time-ordered,
    /// so pages stay stable while new jobs arrive.
    pub before: Option<JobId>,
}

/// How many jobs of one type have one status (for `GET /v1/queues`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeCount {
    /// The job type.
    pub job_type: JobType,
    /// The status.
    pub status: JobStatus,
    /// How many jobs.
    pub count: u64,
}

/// What firing due schedules did.
#[derive(Debug, Default)]
pub struct FireRound {
    /// New jobs, to publish.
    pub jobs: Vec<Job>,
    /// Due times skipped as more than the misfire grace late.
    pub misfired: u64,
}

/// An `Idempotency-Key` and the digest of the request it came with, as the store keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyClaim {
    /// The client's key.
    pub key: String,
    /// SHA-256 of the canonical request, in hex: the same key with another body is refused.
    pub request_hash: String,
}

/// What storing a new job found.
#[derive(Debug, Clone, PartialEq)]
pub enum Inserted {
    /// The record (and its key, if any) is stored, marked as not yet confirmed by RabbitMQ.
    New,
    /// The key was used before with the same request: this is that request's job.
    Replay(JobId),
    /// The key was used before with another request body; nothing was stored.
    KeyMismatch,
    /// The submitting key already has its cap of jobs in flight; nothing was stored.
    AtCapacity,
}

/// A boxed error kept as the cause of a [`StoreError`] (shared, so a batch's failure can be
/// handed to every request in it).
pub type Cause = std::sync::Arc<dyn std::error::Error + Send + Sync>;

/// The store could not do what was asked. Each variant says what the caller should do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or refused for a passing reason (connection lost, pool
    /// exhausted, database restarting, serialisation failure): try again later.
    #[error("the job store is unavailable: {0}")]
    Unavailable(#[source] Cause),
    /// A record with this id already exists.
    #[error("job {0} already exists")]
    Duplicate(JobId),
    /// The database refused who or where the store connects as: an unknown database, role or
    /// schema, a wrong password, missing privileges. An operator must fix the settings.
    #[error(
        "the job store refused its settings ({0}); check WARREN_DATABASE_URL: the database, role, password and search_path schema it names must exist and the role needs privileges on them"
    )]
    Misconfigured(#[source] Cause),
    /// A constraint refused the change (the data conflicts with what is stored).
    #[error("the job store refused a change that conflicts with stored data: {0}")]
    Conflict(#[source] Cause),
    /// The database refused the data itself as invalid (SQLSTATE class 22, data exception, or
    /// 54, a program limit such as nesting depth): the request's input, not the store, is at
    /// fault; retrying it will not help. The message is the database's own.
    #[error("the job store cannot keep this data: {0}")]
    BadData(String),
    /// The database did not answer within `WARREN_STORE_TIMEOUT`: try again later (the call
    /// may still complete; writes keep the outbox and idempotency rules either way).
    #[error("the database did not answer {operation} within {after:?} (WARREN_STORE_TIMEOUT)")]
    TimedOut {
        /// The store operation.
        operation: &'static str,
        /// The deadline it missed.
        after: std::time::Duration,
    },
    /// A stored record could not be read back (a bug, or a hand-edited row).
    #[error("a stored job record is corrupt: {0}")]
    Corrupt(String),
    /// The store refused a statement for a reason retrying will not fix: a bug in a query, or
    /// a schema that does not match this release.
    #[error("the job store refused a query (a bug, or a schema from another release): {0}")]
    Query(#[source] Cause),
}

impl StoreError {
    /// An [`StoreError::Unavailable`] with a plain message as its cause.
    #[must_use]
    pub fn unavailable(message: impl Into<String>) -> Self {
        let message: Box<dyn std::error::Error + Send + Sync> = message.into().into();
        Self::Unavailable(Cause::from(message))
    }
}

/// Ids of jobs that changed, from a store shared by several gateways (PostgreSQL
/// `LISTEN/NOTIFY`), so each gateway wakes its own waiters. Ends when the feed's connection
/// is lost; the caller opens a new one and re-reads whatever it waits on.
pub type ChangeFeed = tokio::sync::mpsc::Receiver<Vec<JobId>>;

/// Job records and their lifecycle. Implementations must be safe to share between request
/// handlers and the events consumer, and must apply events with [`transition::apply`]'s rules
/// even when several gateways apply events for the same job at once.
///
/// The outbox rule (crash-consistent accept): a new record is stored with `unconfirmed_since`
/// set, in the same transaction as its idempotency key. Whoever publishes it clears the mark
/// once RabbitMQ confirmed ([`OutboxStore`]); the relay republishes records marked for longer
/// than its grace.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Stores a new record and its idempotency key together (or finds the key's earlier job).
    async fn insert(&self, job: Job, key: Option<KeyClaim>) -> Result<Inserted, StoreError>;

    /// Stores a new record as [`JobStore::insert`] does, unless the API key that submits it
    /// (`job.key_id`) already has `max_in_flight` jobs that are not finished: then
    /// [`Inserted::AtCapacity`]. The count and the insert are atomic across gateways. A replay
    /// of an idempotency key is answered whatever the count.
    async fn insert_capped(
        &self,
        job: Job,
        key: Option<KeyClaim>,
        max_in_flight: u32,
    ) -> Result<Inserted, StoreError>;

    /// The record with this id, if any.
    async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError>;

    /// The records with these ids that exist, in no particular order.
    async fn get_many(&self, ids: &[JobId]) -> Result<Vec<Job>, StoreError>;

    /// Applies a batch of events in order, atomically where the store can (one transaction).
    async fn apply_events(&self, events: &[JobEvent]) -> Result<Vec<Applied>, StoreError>;

    /// Applies one worker event under the lifecycle rules.
    async fn apply_event(&self, event: &JobEvent) -> Result<Applied, StoreError> {
        let mut applied = self.apply_events(std::slice::from_ref(event)).await?;
        Ok(applied.pop().unwrap_or(Applied::UnknownJob))
    }

    /// Marks a job `cancelled` unless it has already finished.
    async fn cancel(&self, id: JobId) -> Result<Cancelled, StoreError>;

    /// Puts a `failed` job back to `queued` as a new attempt series (same id, next attempt
    /// number, a fresh attempt budget), with an outbox mark. The one way out of a terminal
    /// status, and only on a client's explicit request. With `cap` (the job's API key and its
    /// `max_in_flight`), only while that key has fewer unfinished jobs, counted atomically with
    /// the change as [`JobStore::insert_capped`] counts.
    async fn redrive(&self, id: JobId, cap: Option<(Uuid, u32)>) -> Result<Redriven, StoreError>;

    /// One page of jobs, newest first.
    async fn list(&self, query: &ListQuery) -> Result<Vec<Job>, StoreError>;

    /// Jobs by type and status, of `tenant` only (every tenant's for `None`): every unfinished
    /// one, and those that finished since `finished_since`.
    async fn count_by_type(
        &self,
        tenant: Option<&str>,
        finished_since: DateTime<Utc>,
    ) -> Result<Vec<TypeCount>, StoreError>;

    /// Forgets an idempotency key (its job was purged while the key lived on).
    async fn forget_key(&self, key: &str) -> Result<(), StoreError>;

    /// Deletes terminal jobs that finished before `jobs_before` and idempotency keys made
    /// before `keys_before`; returns how many jobs went.
    async fn purge(
        &self,
        jobs_before: DateTime<Utc>,
        keys_before: DateTime<Utc>,
    ) -> Result<u64, StoreError>;

    /// Succeeds when the store is usable; backs `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Whether calls leave the process (a database), and so need a deadline
    /// ([`Stores::with_deadline`]); the memory store answers at once.
    fn is_remote(&self) -> bool {
        true
    }

    /// Where the store counts the worker events it applies, by path (`copy` or `locked`);
    /// only the PostgreSQL store has two paths, the others ignore it.
    fn count_apply_paths(&self, _paths: &Family<PathLabels, Counter>) {}

    /// For a store shared by several gateways, a feed of the jobs that changed anywhere;
    /// `None` for a store only this process uses (its own changes wake its waiters directly).
    async fn changes(&self) -> Result<Option<ChangeFeed>, StoreError> {
        Ok(None)
    }
}

/// What is still to publish: the outbox mark of accepted jobs whose publish RabbitMQ has not
/// confirmed yet, and `scheduled` jobs that come due.
#[async_trait]
pub trait OutboxStore: Send + Sync + 'static {
    /// RabbitMQ confirmed the job's message: clears its outbox mark. The PostgreSQL store
    /// clears marks in batches a moment later (a quick job's outcome usually clears it first,
    /// sparing the write), unless `now`: then the mark is gone when this returns. A submit
    /// with an `Idempotency-Key` asks for `now`, since a replay that finds the mark publishes
    /// the job again. A mark left behind only means the relay publishes the job once more.
    async fn confirm_published(&self, id: JobId, now: bool) -> Result<(), StoreError>;

    /// Marks a job that RabbitMQ refused as failed (unless something already finished it),
    /// clears its outbox mark and forgets `key`, so the client may try again. Returns the
    /// record if it changed.
    async fn fail_unpublished(
        &self,
        id: JobId,
        error: JobError,
        key: Option<&str>,
    ) -> Result<Option<Job>, StoreError>;

    /// Takes back a new job whose first publish RabbitMQ refused or did not confirm, so the
    /// refused submit leaves nothing: the record (while it is still `queued` with its outbox
    /// mark, i.e. no worker reported on it) and `key`, if it names this job. Returns whether the
    /// record went.
    async fn withdraw(&self, id: JobId, key: Option<&str>) -> Result<bool, StoreError>;

    /// Claims up to `limit` records marked unconfirmed since before `marked_before`,
    /// re-stamping their mark with `now` so no other gateway claims them for another grace
    /// period; the relay publishes them.
    async fn claim_unpublished(
        &self,
        marked_before: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError>;

    /// Releases up to `limit` `scheduled` jobs due by `now` ([`transition::release`]: `queued`
    /// with an outbox mark), claiming them so no other gateway releases them too; the
    /// scheduler publishes them.
    async fn release_due(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Job>, StoreError>;

    /// How many jobs are `scheduled` (for the metrics).
    async fn count_scheduled(&self) -> Result<u64, StoreError>;
}

/// API keys (only their secrets' digests).
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Stores a new API key.
    async fn insert_api_key(&self, key: &ApiKey) -> Result<(), StoreError>;

    /// The API key with this id (revoked or not), if any.
    async fn api_key(&self, id: Uuid) -> Result<Option<ApiKey>, StoreError>;

    /// Every API key (revoked ones too), oldest first.
    async fn api_keys(&self) -> Result<Vec<ApiKey>, StoreError>;

    /// Revokes API key `id` at `at` (a key already revoked keeps its time); the record after,
    /// or `None` when there is no such key.
    async fn revoke_api_key(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<Option<ApiKey>, StoreError>;
}

/// Recurring schedules, and firing them.
#[async_trait]
pub trait ScheduleStore: Send + Sync + 'static {
    /// Stores a new schedule.
    async fn insert_schedule(&self, schedule: Schedule) -> Result<(), StoreError>;

    /// The schedule with this id, if any.
    async fn get_schedule(&self, id: Uuid) -> Result<Option<Schedule>, StoreError>;

    /// Every schedule, oldest first.
    async fn list_schedules(&self) -> Result<Vec<Schedule>, StoreError>;

    /// Changes a schedule under its row lock; `None` when there is none with this id.
    async fn update_schedule(
        &self,
        id: Uuid,
        change: &(dyn for<'s> Fn(&'s mut Schedule) + Send + Sync),
    ) -> Result<Option<Schedule>, StoreError>;

    /// Deletes a schedule; whether there was one.
    async fn delete_schedule(&self, id: Uuid) -> Result<bool, StoreError>;

    /// Fires the schedules due by `now` (at most 64 per call), each claimed by one gateway
    /// only: `plan` says what each makes; its job (if new) and its updated record are written
    /// in one transaction. Returns the jobs made, to publish (they carry an outbox mark).
    async fn fire_due(
        &self,
        now: DateTime<Utc>,
        plan: &(dyn for<'s> Fn(&'s Schedule) -> Fired + Send + Sync),
    ) -> Result<FireRound, StoreError>;
}

/// Webhook callbacks: claiming the due ones with a lease, and every delivery attempt.
#[async_trait]
pub trait CallbackStore: Send + Sync + 'static {
    /// Claims up to `limit` jobs whose callback is due at `now`, moving their due time to
    /// `lease_until` so no other deliverer sends them meanwhile; if this one dies, the lease
    /// runs out and another sends the attempt again (at-least-once).
    async fn claim_callbacks(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError>;

    /// Records one delivery attempt and, in the same write, the callback's state after it;
    /// the state is written only while job `id` still owes that delivery (same `webhook_id`:
    /// a re-drive drops it).
    async fn record_delivery(
        &self,
        id: JobId,
        delivery: &Delivery,
        callback: &Callback,
    ) -> Result<(), StoreError>;

    /// Every recorded delivery attempt for job `id`, oldest first.
    async fn deliveries(&self, id: JobId) -> Result<Vec<Delivery>, StoreError>;

    /// How many callbacks wait for delivery (for the metrics).
    async fn count_pending_callbacks(&self) -> Result<u64, StoreError>;
}

/// What storing a new workflow found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkflowInserted {
    /// The workflow, its step jobs and its key are stored.
    New,
    /// The key was used before with the same request: this is that request's workflow.
    Replay(Uuid),
    /// The key was used before with another request body; nothing was stored.
    KeyMismatch,
    /// The submitting key cannot take this many more jobs in flight; nothing was stored.
    AtCapacity,
}

/// Each step job's status, by job id.
pub type StepStatuses = std::collections::HashMap<JobId, JobStatus>;

/// Which workflows `GET /v1/workflows` asks for: newest first, one page.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowQuery {
    /// Only this tenant's (`None`: every tenant's).
    pub tenant: Option<String>,
    /// Only workflows with this status.
    pub status: Option<WorkflowStatus>,
    /// At most this many.
    pub limit: usize,
    /// Only workflows older than this one (the previous page's last).
    pub before: Option<Uuid>,
}

/// What settling a workflow did.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    /// The workflow after it.
    pub workflow: Workflow,
    /// Steps released now (`queued`, with their parents' results and an outbox mark):
    /// publish them.
    pub released: Vec<Job>,
    /// Steps cancelled now, because a dependency failed or the workflow was cancelled.
    pub cancelled: Vec<Job>,
    /// Whether the workflow ended in this settle.
    pub finished: bool,
}

/// Workflows and their steps. A step's job is an ordinary job record (with `workflow_id` and
/// `step`); what this store adds is the workflow record and the settle: the one write that
/// moves a workflow on after its steps changed.
///
/// The settle rule ([`crate::model::workflow::plan`]) reads only state, and a step leaves
/// `waiting` only under its row lock, so settling twice (two gateways, or again after a
/// crash) releases nothing twice. Whoever makes a step job finish (applying an event, a
/// cancel) also marks its workflow unsettled in the same transaction; a gateway that dies
/// before it settles leaves the mark, and [`WorkflowStore::unsettled`] finds it.
#[async_trait]
pub trait WorkflowStore: Send + Sync + 'static {
    /// Stores a new workflow with its step jobs and idempotency key, in one transaction.
    /// With `max_in_flight`, refuses when the submitting key's unfinished jobs plus the steps
    /// would exceed it (a replay is answered whatever the count).
    async fn insert_workflow(
        &self,
        workflow: &Workflow,
        jobs: Vec<Job>,
        key: Option<KeyClaim>,
        max_in_flight: Option<u32>,
    ) -> Result<WorkflowInserted, StoreError>;

    /// The workflow with this id and its steps' statuses, if any.
    async fn get_workflow(&self, id: Uuid) -> Result<Option<(Workflow, StepStatuses)>, StoreError>;

    /// One page of workflows, newest first, each with its steps' statuses.
    async fn list_workflows(
        &self,
        query: &WorkflowQuery,
    ) -> Result<Vec<(Workflow, StepStatuses)>, StoreError>;

    /// Settles workflow `id`: releases the waiting steps whose dependencies all succeeded,
    /// cancels those that can never run, and records the workflow's status, in one
    /// transaction. `None` when there is no such workflow.
    async fn settle_workflow(&self, id: Uuid) -> Result<Option<Settled>, StoreError>;

    /// Records that a client asked to cancel workflow `id` (no step is released after this
    /// returns); the record after, or `None` when there is none.
    async fn request_workflow_cancel(&self, id: Uuid) -> Result<Option<Workflow>, StoreError>;

    /// Up to `limit` workflows owed a settle (a step finished since the last complete one).
    async fn unsettled(&self, limit: usize) -> Result<Vec<Uuid>, StoreError>;

    /// Claims up to `limit` finished workflows whose callback is due at `now`, as
    /// [`CallbackStore::claim_callbacks`] claims jobs' (a lease until `lease_until`).
    async fn claim_workflow_callbacks(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(Workflow, StepStatuses)>, StoreError>;

    /// Records the workflow's callback state after an attempt.
    async fn record_workflow_callback(
        &self,
        id: Uuid,
        callback: &Callback,
    ) -> Result<(), StoreError>;
}

/// Flow settings per job type (`PATCH /v1/queues/{type}`), shared by every gateway.
#[async_trait]
pub trait FlowStore: Send + Sync + 'static {
    /// Every type that has settings.
    async fn flow_settings(&self) -> Result<Vec<QueueSettings>, StoreError>;

    /// Applies `update` to `job_type`'s settings (made if missing) under a new generation,
    /// greater than every earlier one of any type; the settings after it.
    async fn update_flow(
        &self,
        job_type: &JobType,
        update: &FlowUpdate,
    ) -> Result<QueueSettings, StoreError>;

    /// Records that the slot tokens of `generation` are published, unless the settings have
    /// moved on since.
    async fn mark_slots(&self, job_type: &JobType, generation: u64) -> Result<(), StoreError>;

    /// Claims the refill of rate `window` for `generation`: `true` for exactly one caller per
    /// window (whatever the number of gateways), `false` if the window is refilled or the
    /// settings moved on.
    async fn claim_rate_window(
        &self,
        job_type: &JobType,
        generation: u64,
        window: u64,
    ) -> Result<bool, StoreError>;
}

/// A backend that keeps every concern (both backends do).
pub trait Backend:
    JobStore + OutboxStore + KeyStore + ScheduleStore + CallbackStore + WorkflowStore + FlowStore
{
}

impl<
    T: JobStore + OutboxStore + KeyStore + ScheduleStore + CallbackStore + WorkflowStore + FlowStore,
> Backend for T
{
}

/// One store per concern, as the services take them.
#[derive(Clone)]
pub struct Stores {
    /// Job records and their lifecycle.
    pub jobs: Arc<dyn JobStore>,
    /// What is still to publish.
    pub outbox: Arc<dyn OutboxStore>,
    /// API keys.
    pub keys: Arc<dyn KeyStore>,
    /// Recurring schedules.
    pub schedules: Arc<dyn ScheduleStore>,
    /// Webhook callbacks and deliveries.
    pub callbacks: Arc<dyn CallbackStore>,
    /// Workflows.
    pub workflows: Arc<dyn WorkflowStore>,
    /// Flow settings per job type.
    pub flow: Arc<dyn FlowStore>,
}

impl Stores {
    /// An in-memory backend for every concern (lost on restart).
    #[must_use]
    pub fn memory() -> Self {
        Self::from(Arc::new(MemoryStore::new()))
    }
}

impl<B: Backend> From<Arc<B>> for Stores {
    fn from(backend: Arc<B>) -> Self {
        Self {
            jobs: backend.clone(),
            outbox: backend.clone(),
            keys: backend.clone(),
            schedules: backend.clone(),
            callbacks: backend.clone(),
            workflows: backend.clone(),
            flow: backend,
        }
    }
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}
