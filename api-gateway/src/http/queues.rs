//! `GET /v1/queues`: the overview an operator keeps open. Per job type: jobs waiting, running
//! and finished in the last hour (from the store, the caller's tenant only), and workers
//! consuming (from RabbitMQ: a passive declare of the type's queue, no management plugin).
//! Messages ready and dead letters count every tenant's jobs, so only the operator sees them.
//!
//! `GET /v1/dead-letters`: the operator reads the first dead letters in the queue, with why
//! each is there, without taking them from it.

use axum::{
    Json,
    extract::{Extension, Query, State, rejection::QueryRejection},
};

use super::{
    AppState,
    problem::{ApiError, Problem},
};
use crate::{auth::Caller, model::DeadLetterPage, queues::QueueOverview};

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
