//! `POST /v1/jobs`, `GET /v1/jobs/{id}`, `POST /v1/jobs/{id}/cancel` and
//! `POST /v1/jobs/{id}/retry`: parsing and answering. The rules (accept, idempotency, cancel,
//! re-drive, waiting) are the job service's, in [`crate::jobs`].

use std::time::Duration;

use axum::{
    Json,
    extract::{
        Extension, Path, Query, State,
        rejection::{JsonRejection, QueryRejection},
    },
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use warren_shared::{JobId, trace::TraceContext};

use super::{
    AppState,
    prefer::{PREFERENCE_APPLIED, Prefer},
    problem::ApiError,
    problem::Problem,
};
use crate::{
    auth::Caller,
    jobs::{Submitted, idempotency},
    model::{Job, JobSpec},
    store::KeyClaim,
};

/// The largest `?wait=` accepted (the largest `WARREN_MAX_WAIT_SECS` allows).
const MAX_WAIT_PARAM: u64 = 3600;

/// `POST /v1/jobs`: accept a job. `202` with the queued job once RabbitMQ confirmed it; with
/// `Prefer: wait=N`, `200` with the finished job if it finishes within N seconds (capped).
#[utoipa::path(post, path = "/v1/jobs", operation_id = "submitJob", tag = "jobs",
    description = "Accepts a job: `202` once it is stored and RabbitMQ has confirmed it. With `Prefer: wait=N`, `200` with the finished job if it finishes within N seconds (capped).",
    request_body = JobSpec,
    params(
        ("Prefer" = Option<String>, Header, nullable = false, description = "`wait=N` to wait up to N seconds for the outcome; `respond-async` to answer at once"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "The same key and body give the same job; kept at least 24 h; 1 to 255 visible ASCII characters"),
        ("traceparent" = Option<String>, Header, nullable = false, description = "W3C trace context to continue"),
    ),
    responses(
        (status = 202, description = "Accepted; poll `Location`", body = Job),
        (status = 200, description = "Finished within `Prefer: wait`", body = Job),
        (status = 400, description = "Malformed JSON or header", body = Problem, content_type = "application/problem+json"), (status = 409, description = "Conflicts with stored data", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the limit", body = Problem, content_type = "application/problem+json"), (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field, unknown job type, or Idempotency-Key reused with another body", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "RabbitMQ or the store is unavailable, or the queue is full", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "submit", skip_all, fields(job_id, job_type))]
pub async fn submit(
    State(state): State<AppState>,
    Extension(trace): Extension<TraceContext>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<Json<JobSpec>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(spec) = body?;
    let key = key_claim(&headers, &spec)?;
    let prefer = Prefer::from_headers(&headers);
    let wait = prefer.wait_secs.map_or(Duration::ZERO, |secs| {
        Duration::from_secs(secs).min(state.max_wait)
    });
    let Submitted { job, replayed } = state.jobs.submit(spec, key, &caller, &trace, wait).await?;
    if wait.is_zero() || !job.status.is_terminal() {
        let responded_async = prefer.respond_async || !wait.is_zero();
        return Ok(with_replay_mark(accepted(job, responded_async), replayed));
    }
    let applied = format!("wait={}", wait.as_secs());
    let response = (StatusCode::OK, [(PREFERENCE_APPLIED, applied)], Json(job)).into_response();
    Ok(with_replay_mark(response, replayed))
}

/// The request's `Idempotency-Key` claim, if it sent one (hashing the request only then).
fn key_claim(headers: &HeaderMap, request: &JobSpec) -> Result<Option<KeyClaim>, ApiError> {
    key_claim_of(headers, || request.canonical())
}

/// The request's `Idempotency-Key` claim over the request in canonical form (made by
/// `canonical_request`, only when it sent a key), if it sent one.
pub fn key_claim_of(
    headers: &HeaderMap,
    canonical_request: impl FnOnce() -> String,
) -> Result<Option<KeyClaim>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = |e: idempotency::BadKey| ApiError::BadParameter(e.to_string());
    let key = value.to_str().map_err(|_| bad(idempotency::BadKey))?;
    idempotency::claim(key, &canonical_request())
        .map(Some)
        .map_err(bad)
}

/// Marks the answer to a replayed idempotent request.
fn with_replay_mark(mut response: Response, replayed: bool) -> Response {
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// The `202` answer: the job, where to poll it, and when.
fn accepted(job: Job, responded_async: bool) -> Response {
    let location = format!("/v1/jobs/{}", job.id);
    let mut response = (
        StatusCode::ACCEPTED,
        [
            (header::LOCATION, location),
            (header::RETRY_AFTER, "1".to_owned()),
        ],
        Json(job),
    )
        .into_response();
    if responded_async {
        response.headers_mut().insert(
            PREFERENCE_APPLIED,
            HeaderValue::from_static("respond-async"),
        );
    }
    response
}

/// Parses a job id from a path segment.
pub fn parse_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::MalformedId(raw.to_owned()))
}

/// Reads a job `caller` sees, mapping absence (or another tenant's job) to 404 and store
/// failure to what it means.
pub async fn load(state: &AppState, caller: &Caller, id: JobId) -> Result<Job, ApiError> {
    Ok(state.jobs.get(caller, id).await?)
}

/// A `?wait=N` long poll's duration: N seconds, cut to `max_wait`; zero without one.
pub fn parse_wait(raw: Option<&str>, max_wait: Duration) -> Result<Duration, ApiError> {
    let Some(raw) = raw else {
        return Ok(Duration::ZERO);
    };
    let wait = raw
        .parse()
        .ok()
        .filter(|secs| *secs <= MAX_WAIT_PARAM)
        .map(Duration::from_secs)
        .ok_or_else(|| {
            ApiError::BadParameter(format!(
                "wait={raw:?} is not a whole number of seconds from 0 to {MAX_WAIT_PARAM} \
                 (waits are also cut to WARREN_MAX_WAIT_SECS)"
            ))
        })?;
    Ok(wait.min(max_wait))
}

/// The query of `GET /v1/jobs/{id}`.
#[derive(Debug, Deserialize)]
pub struct GetQuery {
    /// Seconds to wait for a terminal status (long poll).
    wait: Option<String>,
}

/// `GET /v1/jobs/{id}`: the job's current record; with `?wait=N`, once it is terminal or N
/// seconds (capped) have passed.
#[utoipa::path(get, path = "/v1/jobs/{id}", operation_id = "getJob", tag = "jobs",
    description = "The job. With `?wait=N`, answers once it is terminal or after N seconds (capped).",
    params(("id" = String, Path, format = Uuid, description = "The job id (a UUID)"), ("wait" = Option<u64>, Query, minimum = 0, maximum = 3600, nullable = false, description = "Seconds to wait for a terminal status, 0 to 3600 (cut to `WARREN_MAX_WAIT_SECS`)")),
    responses((status = 200, body = Job), (status = 400, description = "Malformed id or wait", body = Problem, content_type = "application/problem+json"), (status = 404, description = "Unknown job", body = Problem, content_type = "application/problem+json"), (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    query: Result<Query<GetQuery>, QueryRejection>,
) -> Result<Json<Job>, ApiError> {
    let id = parse_id(&id)?;
    let Query(query) = query.map_err(|e| ApiError::BadParameter(e.body_text()))?;
    let wait = parse_wait(query.wait.as_deref(), state.max_wait)?;
    if wait.is_zero() {
        return load(&state, &caller, id).await.map(Json);
    }
    Ok(Json(state.jobs.wait_for(&caller, id, wait).await?))
}

/// `GET /v1/jobs/{id}/payload`: the job's input, as it was submitted (not part of the job
/// resource, which lists and streams send often and which should stay small).
#[utoipa::path(get, path = "/v1/jobs/{id}/payload", operation_id = "getJobPayload", tag = "jobs",
    description = "The job's `payload`, as submitted (any JSON value).",
    params(("id" = String, Path, format = Uuid, description = "The job id (a UUID)")),
    responses((status = 200, description = "The payload", body = serde_json::Value), (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"), (status = 404, description = "Unknown job", body = Problem, content_type = "application/problem+json"), (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn payload(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw_id): Path<String>,
) -> Result<Response, ApiError> {
    let job = load(&state, &caller, parse_id(&raw_id)?).await?;
    let body = job.payload.as_raw().get().to_owned();
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `POST /v1/jobs/{id}/cancel`: `202` with the cancelled job; `409` if it already finished.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", operation_id = "cancelJob", tag = "jobs",
    description = "Cancels the job: a queued job is never run, a running one is told to stop.",
    params(("id" = String, Path, format = Uuid, description = "The job id (a UUID)")),
    responses((status = 202, description = "Cancelled", body = Job), (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"), (status = 404, description = "Unknown job", body = Problem, content_type = "application/problem+json"), (status = 409, description = "Already finished", body = Problem, content_type = "application/problem+json"), (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json")))]
#[tracing::instrument(name = "cancel", skip_all, fields(job_id = %raw_id))]
pub async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(trace): Extension<TraceContext>,
    Path(raw_id): Path<String>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let id = parse_id(&raw_id)?;
    let job = state.jobs.cancel(&caller, id).await?;
    if let Some(workflow) = job.workflow_id {
        // The steps that depended on it can never run now.
        state.workflows.settle_after([(workflow, trace)]).await;
    }
    Ok((StatusCode::ACCEPTED, Json(job)))
}

/// `POST /v1/jobs/{id}/retry`: re-drives a `failed` job as a new attempt series; `202` with
/// the queued job, `409` if the job is not `failed`.
#[utoipa::path(post, path = "/v1/jobs/{id}/retry", operation_id = "retryJob", tag = "jobs",
    description = "Re-drives a failed job as a new attempt series (same id, fresh attempt budget).",
    params(("id" = String, Path, format = Uuid, description = "The job id (a UUID)")),
    responses((status = 202, description = "Queued again", body = Job), (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"), (status = 404, description = "Unknown job", body = Problem, content_type = "application/problem+json"), (status = 409, description = "Not failed", body = Problem, content_type = "application/problem+json"), (status = 422, description = "No worker consumes the job's type any more (no queue is bound for it)", body = Problem, content_type = "application/problem+json"), (status = 503, description = "RabbitMQ or the store is unavailable", body = Problem, content_type = "application/problem+json")))]
#[tracing::instrument(name = "redrive", skip_all, fields(job_id = %raw_id))]
pub async fn retry(
    State(state): State<AppState>,
    Extension(trace): Extension<TraceContext>,
    Extension(caller): Extension<Caller>,
    Path(raw_id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw_id)?;
    Ok(accepted(
        state.jobs.redrive(&caller, id, &trace).await?,
        false,
    ))
}
