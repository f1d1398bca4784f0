//! The job record: the resource `GET /v1/jobs/{id}` answers, and what the stores keep to
//! apply events and re-publish the job.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;
use warren_shared::{JobError, JobId, JobMessage, JobStatus, JobType, Priority, Progress, V1};

use super::{Callback, RawJson};

/// A job's record: the resource `GET /v1/jobs/{id}` answers, plus what the store needs to
/// apply events and re-publish the job.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Job {
    /// The job's id (UUIDv7).
    #[schema(value_type = String, format = Uuid)]
    pub id: JobId,
    /// The tenant it belongs to: the submitting key's (`default` without a tenant's key).
    #[schema(example = "default")]
    pub tenant: String,
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
    /// How soon it starts under a backlog: `high`, `normal` or `low`.
    pub priority: Priority,
    /// The handler's latest progress report (boxed: most records have none).
    pub progress: Option<Box<Progress>>,
    /// The handler's result once `succeeded`: any JSON value.
    #[schema(value_type = Option<serde_json::Value>)]
    pub result: Option<RawJson>,
    /// Why the job failed, once `failed` (or the last attempt's error while `retrying`).
    pub error: Option<Box<JobError>>,
    /// Every attempt's error, oldest first (the last [`MAX_ERRORS`]), so a job that failed
    /// after retries shows why each attempt failed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<AttemptError>,
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
    /// When a job submitted for later (`run_at` or `delay_ms`) is due.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_at: Option<DateTime<Utc>>,
    /// Where the delivery to `callback_url` is, once the job finished (only for jobs with a
    /// `callback_url`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback: Option<Box<Callback>>,
    /// The recurring schedule that made it, for jobs a schedule fired.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub schedule_id: Option<Uuid>,
    /// The workflow it is a step of, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub workflow_id: Option<Uuid>,
    /// Its step's name in that workflow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// For a workflow step with dependencies, once released: their results by step name, sent
    /// with the job message (not part of the resource).
    #[serde(skip)]
    pub parents: Option<RawJson>,
    /// The API key that submitted it, whose cap on jobs in flight counts it (not part of the
    /// resource).
    #[serde(skip)]
    pub key_id: Option<Uuid>,
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
    /// The outbox mark: since when the current attempt's message has waited for RabbitMQ's
    /// confirm (set when stored, and each time the relay claims it); `None` once confirmed or
    /// once a worker reported on the job (not part of the resource).
    #[serde(skip)]
    pub unconfirmed_since: Option<DateTime<Utc>>,
}

/// How many attempt errors a record keeps (the newest).
pub const MAX_ERRORS: usize = 25;

/// One attempt's error, in a job's error history.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct AttemptError {
    /// The attempt that failed.
    pub attempt: u32,
    /// When its failure was reported.
    pub at: DateTime<Utc>,
    /// What went wrong.
    #[serde(flatten)]
    pub error: JobError,
}

impl Job {
    /// The message that asks a worker to run this job's current attempt (the payload goes
    /// out as the stored text, unparsed).
    #[must_use]
    pub fn message(&self) -> JobMessage<&RawValue> {
        JobMessage {
            v: V1,
            id: self.id,
            job_type: self.job_type.clone(),
            payload: self.payload.as_raw(),
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            timeout_ms: self.timeout_ms,
            created_at: self.created_at,
            parents: self.parents.as_ref().map(RawJson::as_raw),
            priority: self.priority,
        }
    }
}
