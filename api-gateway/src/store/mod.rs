//! The job store: where the gateway keeps each job's record and applies worker events.
//!
//! [`JobStore`] is the seam between HTTP and storage. The rules of the lifecycle (terminal is
//! final, stale events are ignored, status never moves backwards) live in [`transition`] as a
//! pure function so every implementation applies exactly the same rules.

mod memory;
mod postgres;
pub mod transition;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, value::RawValue};
use warren_shared::{JobError, JobEvent, JobId, JobMessage, JobStatus, JobType, Progress, V1};

pub use memory::MemoryStore;
pub use postgres::PostgresStore;
pub use transition::Ignored;

/// A job's record: the resource `GET /v1/jobs/{id}` answers, plus what the store needs to
/// apply events and re-publish the job.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Job {
    /// The job's id (UUIDv7).
    #[schema(value_type = String, format = Uuid)]
    pub id: JobId,
    /// The job's type.
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "report.generate")]
    pub job_type: JobType,
    /// Where the job is in its lifecycle.
    pub status: JobStatus,
    /// The current (or last) attempt, from 1.
    pub attempt: u32,
    /// Attempts allowed in all.
    pub max_attempts: u32,
    /// The handler's latest progress report (boxed: most records have none).
    pub progress: Option<Box<Progress>>,
    /// The handler's result once `succeeded`.
    #[schema(value_type = Option<Object>)]
    pub result: Option<RawJson>,
    /// Why the job failed, once `failed` (or the last attempt's error while `retrying`).
    pub error: Option<Box<JobError>>,
    /// When the gateway accepted the job.
    pub created_at: DateTime<Utc>,
    /// When the record last changed.
    pub updated_at: DateTime<Utc>,
    /// When the next attempt is due, while `retrying`.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When a worker first started it.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a terminal status.
    pub finished_at: Option<DateTime<Utc>>,
    /// The handler's input (kept to re-publish the job; not part of the resource).
    #[serde(skip)]
    pub payload: RawJson,
    /// Per-attempt time limit in milliseconds (not part of the resource).
    #[serde(skip)]
    pub timeout_ms: u64,
    /// Where to POST the finished job, if the client asked (not part of the resource).
    #[serde(skip)]
    pub callback_url: Option<String>,
    /// Sequence number of the last event applied within `attempt` (not part of the resource).
    #[serde(skip)]
    pub seq: u64,
    /// Attempts the client asked for; a re-driven job gets this many again (not part of the
    /// resource).
    #[serde(skip)]
    pub attempt_budget: u32,
    /// How many changes the record has had: 0 when accepted, +1 per applied event, cancel or
    /// failure. The SSE event id, so a client resumes after the last change it saw.
    #[serde(skip)]
    pub version: u64,
}

impl Job {
    /// The message that asks a worker to run this job's current attempt.
    #[must_use]
    pub fn message(&self) -> JobMessage {
        JobMessage {
            v: V1,
            id: self.id,
            job_type: self.job_type.clone(),
            payload: self.payload.to_value(),
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            timeout_ms: self.timeout_ms,
            created_at: self.created_at,
        }
    }
}

/// A JSON value kept as its compact text. A parsed `Value` object costs a B-tree node
/// (hundreds of bytes) even for `{"i": 1}`; a store holding many jobs keeps payloads and
/// results as text and parses them only when something reads inside them.
#[derive(Debug, Clone)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    /// The compact text of `value`.
    #[must_use]
    pub fn from_value(value: &Value) -> Self {
        // Serialising a `Value` cannot fail.
        Self(serde_json::value::to_raw_value(value).unwrap_or_else(|_| RawValue::NULL.to_owned()))
    }

    /// The value, parsed.
    #[must_use]
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.0.get()).unwrap_or(Value::Null)
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Serialize for RawJson {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

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
    /// No record has this id.
    UnknownJob,
}

/// Which jobs `GET /v1/jobs` asks for: newest first, optionally filtered, one page.
#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    /// Only jobs with this status.
    pub status: Option<JobStatus>,
    /// Only jobs of this type.
    pub job_type: Option<JobType>,
    /// At most this many jobs.
    pub limit: usize,
    /// Only jobs older than this one (the previous page's last job): ids are time-ordered,
    /// so pages stay stable while new jobs arrive.
    pub before: Option<JobId>,
}

/// What reserving an idempotency key found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// The key is new and now belongs to this request's job.
    Reserved,
    /// The same request was accepted before: this is its job.
    Replay(JobId),
    /// The same key is being used by a request still being accepted.
    InProgress,
    /// The key was used with another request body.
    Mismatch,
}

/// The store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backing store cannot be reached; try again later.
    #[error("job store unavailable: {0}")]
    Unavailable(String),
    /// A record with this id already exists.
    #[error("job {0} already exists")]
    Duplicate(JobId),
    /// A stored record could not be read back (a bug, or a hand-edited row).
    #[error("a stored job record is corrupt: {0}")]
    Corrupt(String),
}

/// Keeps job records. Implementations must be safe to share between request handlers and the
/// events consumer, and must apply events with [`transition::apply`]'s rules even when several
/// gateways apply events for the same job at once.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Stores a new record; called before the job is published.
    async fn insert(&self, job: Job) -> Result<(), StoreError>;

    /// The record with this id, if any.
    async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError>;

    /// Applies a worker event under the lifecycle rules.
    async fn apply_event(&self, event: &JobEvent) -> Result<Applied, StoreError>;

    /// Marks a job that could not be published as failed (unless something already finished
    /// it), so no record stays `queued` for a message the broker never took.
    async fn fail_unpublished(&self, id: JobId, error: JobError) -> Result<(), StoreError>;

    /// Marks a job `cancelled` unless it has already finished.
    async fn cancel(&self, id: JobId) -> Result<Cancelled, StoreError>;

    /// Puts a `failed` job back to `queued` as a new attempt series (same id, next attempt
    /// number, a fresh attempt budget). The one way out of a terminal status, and only on a
    /// client's explicit request.
    async fn redrive(&self, id: JobId) -> Result<Redriven, StoreError>;

    /// Applies a batch of events in order, atomically where the store can (one transaction).
    async fn apply_events(&self, events: &[JobEvent]) -> Result<Vec<Applied>, StoreError> {
        let mut applied = Vec::with_capacity(events.len());
        for event in events {
            applied.push(self.apply_event(event).await?);
        }
        Ok(applied)
    }

    /// One page of jobs, newest first.
    async fn list(&self, query: &ListQuery) -> Result<Vec<Job>, StoreError>;

    /// Claims `key` for the job `id` of a request whose body hashes to `request_hash`, or says
    /// who has it.
    async fn reserve_key(
        &self,
        key: &str,
        request_hash: &str,
        id: JobId,
    ) -> Result<Reservation, StoreError>;

    /// Settles a reserved key: kept for replays once its job was accepted, released (so the
    /// client may try again) when it was not.
    async fn settle_key(&self, key: &str, accepted: bool) -> Result<(), StoreError>;

    /// Deletes terminal jobs that finished before `jobs_before` and idempotency keys made
    /// before `keys_before`; returns how many jobs went.
    async fn purge(
        &self,
        jobs_before: DateTime<Utc>,
        keys_before: DateTime<Utc>,
    ) -> Result<u64, StoreError>;

    /// Succeeds when the store is usable; backs `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;
}
