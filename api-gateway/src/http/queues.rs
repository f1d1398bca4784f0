//! `GET /v1/queues`: the overview an operator keeps open. Per job type: jobs waiting, running
//! and finished in the last hour (from the store, the caller's tenant only), and workers
//! consuming (from RabbitMQ: a passive declare of the type's queue, no management plugin).
//! Messages ready and dead letters count every tenant's jobs, so only the operator sees them.

use axum::{
    Json,
    extract::{Extension, State},
};

use super::{
    AppState,
    problem::{ApiError, Problem},
};
use crate::{auth::Caller, queues::QueueOverview};

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
