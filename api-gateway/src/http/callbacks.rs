//! `GET /v1/jobs/{id}/deliveries`: every attempt to deliver a job's callback.

use axum::{
    Json,
    extract::{Extension, Path, State},
};
use serde::Serialize;

use super::{
    AppState,
    jobs::parse_id,
    problem::{ApiError, Problem},
};
use crate::{auth::Caller, model::Delivery};

/// The body of `GET /v1/jobs/{id}/deliveries`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Deliveries {
    /// Every attempt, oldest first.
    pub deliveries: Vec<Delivery>,
}

/// `GET /v1/jobs/{id}/deliveries`: every attempt to deliver the job's callback.
#[utoipa::path(get, path = "/v1/jobs/{id}/deliveries", operation_id = "listDeliveries", tag = "jobs",
    description = "Every attempt to deliver the job's `callback_url`: when, the status code or error, how long it took, the attempt number and when the next one is due. The job's `callback` field says where the delivery is now.",
    params(("id" = String, Path, format = Uuid, description = "The job id (a UUID)")),
    responses((status = 200, body = Deliveries), (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"), (status = 404, description = "Unknown job", body = Problem, content_type = "application/problem+json"), (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn deliveries(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Deliveries>, ApiError> {
    let id = parse_id(&id)?;
    let deliveries = state.jobs.deliveries(&caller, id).await?;
    Ok(Json(Deliveries { deliveries }))
}
