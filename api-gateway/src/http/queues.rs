//! `GET /v1/queues`: the overview an operator keeps open. Per job type: jobs waiting, running
//! and finished in the last hour (from the store, the caller's tenant only), and workers
//! consuming (from RabbitMQ: a passive declare of the type's queue, no management plugin).
//! Messages ready and dead letters count every tenant's jobs, so only the operator sees them.
//!
//! `GET`/`PATCH /v1/queues/{type}`: one type's counts and its flow settings (see
//! [`crate::flow`]).
//!
//! `GET /v1/dead-letters`: the operator reads the first dead letters in the queue, with why
//! each is there, without taking them from it.

use axum::{
    Json,
    extract::{
        Extension, Path, Query, State,
        rejection::{JsonRejection, QueryRejection},
    },
};
use warren_shared::JobType;

use super::{
    AppState,
    problem::{ApiError, Problem},
};
use crate::{
    auth::Caller,
    flow::QueueResource,
    model::{DeadLetterPage, FlowChange},
    queues::QueueOverview,
};

/// A job type from the path.
fn parse_type(raw: String) -> Result<JobType, ApiError> {
    JobType::parse(raw)
        .map_err(|e| ApiError::BadParameter(format!("the job type in the path: {e}")))
}

/// `GET /v1/queues/{type}`.
#[utoipa::path(get, path = "/v1/queues/{type}", operation_id = "getQueue", tag = "jobs",
    description = "One job type: its counts as in `GET /v1/queues`, and its flow settings (`paused`, `max_running`, `rate_limit`; null when unset).",
    params(("type" = String, Path, pattern = "^[a-z0-9][a-z0-9._-]{0,99}$", max_length = 100, description = "The job type")),
    responses((status = 200, body = QueueResource), (status = 400, description = "Not a job type", body = Problem, content_type = "application/problem+json"), (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn get_queue(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw_type): Path<String>,
) -> Result<Json<QueueResource>, ApiError> {
    let job_type = parse_type(raw_type)?;
    Ok(Json(state.flow.get(&caller, &job_type).await?))
}

/// `PATCH /v1/queues/{type}`.
#[utoipa::path(patch, path = "/v1/queues/{type}", operation_id = "updateQueue", tag = "jobs",
    description = "Changes a job type's flow settings, for every worker and gateway: `paused` stops new starts within a second (queued jobs wait, running ones finish); `max_running` bounds how many run at once; `rate_limit` how many start per window; `null` removes a limit, an absent field is left as it is. Stored, so they survive restarts. The operator only (the admin right, without a tenant): a type's settings hold for every tenant's jobs.",
    params(("type" = String, Path, pattern = "^[a-z0-9][a-z0-9._-]{0,99}$", max_length = 100, description = "The job type")),
    request_body = FlowChange,
    responses((status = 200, body = QueueResource), (status = 400, description = "Not a job type, or malformed JSON", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Not the operator", body = Problem, content_type = "application/problem+json"), (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"), (status = 422, description = "A value out of range, named", body = Problem, content_type = "application/problem+json"), (status = 503, description = "The store or RabbitMQ is unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn update_queue(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw_type): Path<String>,
    body: Result<Json<FlowChange>, JsonRejection>,
) -> Result<Json<QueueResource>, ApiError> {
    let job_type = parse_type(raw_type)?;
    let Json(change) = body?;
    Ok(Json(state.flow.update(&caller, &job_type, change).await?))
}

/// `GET /v1/queues`.
#[utoipa::path(get, path = "/v1/queues", operation_id = "getQueues", tag = "jobs",
    description = "Per job type: jobs scheduled, queued, running and retrying, those finished in the last hour (the caller's tenant's), and workers consuming; for the operator, also messages ready and dead letters. RabbitMQ's numbers come from queue declarations, not the management plugin.",
    responses((status = 200, body = QueueOverview), (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn overview(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<QueueOverview>, ApiError> {
    Ok(Json(state.queues.overview(&caller).await?))
}

/// The query of `GET /v1/dead-letters`.
#[derive(Debug, serde::Deserialize)]
pub struct DeadLetterParams {
    limit: Option<String>,
}

/// Most dead letters one request shows.
const MAX_DEAD_LETTERS: usize = 100;

/// `GET /v1/dead-letters`: the first dead letters in the queue, without taking them from it.
#[utoipa::path(get, path = "/v1/dead-letters", operation_id = "listDeadLetters", tag = "jobs",
    description = "The first messages in the dead-letter queue (jobs out of attempts or failed for good, messages no worker could read, events no gateway could apply), with why each is there, and how many it holds. Reading leaves them in the queue (RabbitMQ returns the ones read after the others, so the order changes, not the content). Every tenant's jobs are there, so only the operator may read them.",
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "How many, 1 to 100 (default 20)")),
    responses((status = 200, body = DeadLetterPage), (status = 400, description = "A bad limit", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Not the operator", body = Problem, content_type = "application/problem+json"), (status = 503, description = "RabbitMQ is unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn dead_letters(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    params: Result<Query<DeadLetterParams>, QueryRejection>,
) -> Result<Json<DeadLetterPage>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::BadParameter(e.body_text()))?;
    let limit = super::list::limit(params.limit, 20, MAX_DEAD_LETTERS)?;
    let limit = u32::try_from(limit).unwrap_or(u32::MAX);
    if caller.tenant().is_some() {
        return Err(ApiError::Forbidden(
            "dead letters hold every tenant's jobs: only the operator (WARREN_ADMIN_KEY) reads them"
                .into(),
        ));
    }
    let page = state
        .publisher
        .peek_dead_letters(limit)
        .await
        .map_err(|error| {
            tracing::warn!(%error, "cannot read the dead-letter queue");
            ApiError::Unavailable("RabbitMQ cannot be read now")
        })?;
    Ok(Json(page))
}
