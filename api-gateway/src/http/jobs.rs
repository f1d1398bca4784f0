//! `POST /v1/jobs` and `GET /v1/jobs/{id}`.
//!
//! Accepting a job is: validate → store the record as `queued` → publish (persistent,
//! mandatory, confirmed) → `202`. The record exists before the message so a worker's first
//! event always finds it; a publish that is not confirmed marks the record failed, so no job
//! stays `queued` for a message the broker never took.

use axum::{
    Json,
    extract::{Path, State, rejection::JsonRejection},
    http::{StatusCode, header},
    response::IntoResponse,
};
use chrono::Utc;
use serde::Deserialize;
use serde_json::Value;
use tracing::Span;
use warren_shared::{JobError, JobId, JobStatus, JobType, amqp::PublishError};

use super::{AppState, problem::ApiError};
use crate::store::Job;

/// Attempts a job gets when the request does not say.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Most attempts a job may ask for.
pub const MAX_MAX_ATTEMPTS: u32 = 100;
/// Longest accepted `callback_url`.
const MAX_URL_LEN: usize = 2048;

/// Limits applied to submitted jobs.
#[derive(Debug, Clone)]
pub struct SubmitLimits {
    /// `timeout_ms` for jobs that do not set one.
    pub default_timeout_ms: u64,
    /// Largest `timeout_ms` accepted.
    pub max_timeout_ms: u64,
}

/// The body of `POST /v1/jobs`. Only `type` is required; unknown fields are refused so a typo
/// does not silently fall back to a default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The job type, `[a-z0-9][a-z0-9._-]{0,99}`.
    #[serde(rename = "type")]
    pub job_type: String,
    /// The handler's input.
    #[serde(default)]
    pub payload: Option<Value>,
    /// Attempts allowed, 1 to 100 (default 3).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Per-attempt time limit in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// An `http(s)` URL to call when the job finishes.
    #[serde(default)]
    pub callback_url: Option<String>,
}

impl SubmitRequest {
    /// Checks every field and builds the new job's `queued` record.
    pub fn into_job(self, limits: &SubmitLimits) -> Result<Job, ApiError> {
        let job_type = JobType::parse(self.job_type).map_err(|e| ApiError::InvalidField {
            field: "type",
            message: e.to_string(),
        })?;
        let max_attempts = self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if !(1..=MAX_MAX_ATTEMPTS).contains(&max_attempts) {
            return Err(ApiError::InvalidField {
                field: "max_attempts",
                message: format!("must be between 1 and {MAX_MAX_ATTEMPTS}, got {max_attempts}"),
            });
        }
        let timeout_ms = self.timeout_ms.unwrap_or(limits.default_timeout_ms);
        if !(1..=limits.max_timeout_ms).contains(&timeout_ms) {
            return Err(ApiError::InvalidField {
                field: "timeout_ms",
                message: format!(
                    "must be between 1 and {} milliseconds, got {timeout_ms}",
                    limits.max_timeout_ms
                ),
            });
        }
        if let Some(url) = &self.callback_url {
            let http = url.starts_with("http://") || url.starts_with("https://");
            if !http || url.len() > MAX_URL_LEN || url.contains(char::is_whitespace) {
                return Err(ApiError::InvalidField {
                    field: "callback_url",
                    message: format!(
                        "must be an http:// or https:// URL of at most {MAX_URL_LEN} characters"
                    ),
                });
            }
        }
        let now = Utc::now();
        Ok(Job {
            id: JobId::new(),
            job_type,
            status: JobStatus::Queued,
            attempt: 1,
            max_attempts,
            progress: None,
            result: None,
            error: None,
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
            payload: self
                .payload
                .unwrap_or_else(|| Value::Object(Default::default())),
            timeout_ms,
            callback_url: self.callback_url,
            seq: 0,
        })
    }
}

/// Stores the record, publishes the job and waits for the broker's confirm.
///
/// `Ok` means the guarantee behind a `202`: the record is stored and RabbitMQ has confirmed
/// the persistent, routed message.
pub async fn accept(state: &AppState, job: Job) -> Result<Job, ApiError> {
    let message = job.message();
    state.store.insert(job.clone()).await.map_err(|error| {
        tracing::error!(%error, "cannot store the job record");
        ApiError::Unavailable("the job store is unavailable")
    })?;
    let Err(error) = state.publisher.publish_job(&message).await else {
        tracing::info!("job accepted");
        return Ok(job);
    };
    let (kind, refusal) = match &error {
        PublishError::Unroutable { .. } => {
            tracing::info!(%error, "job refused: no queue for its type");
            ("unroutable", ApiError::UnknownJobType(job.job_type.clone()))
        }
        _ => {
            tracing::error!(%error, "job not confirmed by RabbitMQ");
            (
                "publish_failed",
                ApiError::Unavailable("RabbitMQ did not confirm the job"),
            )
        }
    };
    let reason = JobError::new(kind, error.to_string());
    if let Err(store_error) = state.store.fail_unpublished(job.id, reason).await {
        tracing::error!(%store_error, "cannot mark the unpublished job failed");
    }
    Err(refusal)
}

/// `POST /v1/jobs`: accept a job; `202` with the queued job once RabbitMQ confirmed it.
#[tracing::instrument(name = "submit", skip_all, fields(job_id, job_type))]
pub async fn submit(
    State(state): State<AppState>,
    body: Result<Json<SubmitRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Json(request) = body?;
    let job = request.into_job(&state.limits)?;
    Span::current()
        .record("job_id", tracing::field::display(job.id))
        .record("job_type", job.job_type.as_str());
    let job = accept(&state, job).await?;
    let location = format!("/v1/jobs/{}", job.id);
    Ok((
        StatusCode::ACCEPTED,
        [
            (header::LOCATION, location),
            (header::RETRY_AFTER, "1".to_owned()),
        ],
        Json(job),
    ))
}

/// Parses a job id from a path segment.
pub fn parse_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::MalformedId(raw.to_owned()))
}

/// Reads a job, mapping absence to 404 and store failure to 503.
pub async fn load(state: &AppState, id: JobId) -> Result<Job, ApiError> {
    match state.store.get(id).await {
        Ok(Some(job)) => Ok(job),
        Ok(None) => Err(ApiError::JobNotFound(id)),
        Err(error) => {
            tracing::error!(%error, job_id = %id, "cannot read the job store");
            Err(ApiError::Unavailable("the job store is unavailable"))
        }
    }
}

/// `GET /v1/jobs/{id}`: the job's current record.
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    let id = parse_id(&id)?;
    load(&state, id).await.map(Json)
}
