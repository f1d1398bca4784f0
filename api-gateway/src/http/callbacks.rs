//! Webhooks over HTTP: checking a `callback_url` when a job or schedule is submitted, and
//! `GET /v1/jobs/{id}/deliveries`, every attempt to deliver a job's callback.

use axum::{
    Json,
    extract::{Extension, Path, State},
};
use serde::Serialize;

use super::{
    AppState,
    jobs::{load, parse_id},
    openapi::Problem,
    problem::ApiError,
};
use crate::{
    auth::Caller,
    webhooks::{Delivery, guard},
};

/// What the gateway allows as a `callback_url`.
#[derive(Debug, Clone, Copy)]
pub struct CallbackPolicy {
    /// A signing secret is set (`WARREN_WEBHOOK_SECRET`); without one, deliveries could not
    /// be signed, so callbacks are refused rather than accepted and never sent.
    pub signing: bool,
    /// `WARREN_WEBHOOK_ALLOW_PRIVATE`.
    pub allow_private: bool,
}

impl CallbackPolicy {
    /// Refuses a `callback_url` that could not be delivered: no signing secret, not
    /// `http(s)`, too long, or a host that is (or resolves to) a private address.
    pub async fn check(&self, url: Option<&str>) -> Result<(), ApiError> {
        let Some(url) = url else { return Ok(()) };
        let invalid = |message: String| ApiError::InvalidField {
            field: "callback_url",
            message,
        };
        if !self.signing {
            return Err(invalid(
                "this gateway has no webhook signing secret (WARREN_WEBHOOK_SECRET), so it \
                 cannot send callbacks; leave callback_url out, or ask the operator to set it"
                    .into(),
            ));
        }
        let url = guard::parse(url).map_err(|why| invalid(format!("callback_url {why}")))?;
        guard::check(&url, self.allow_private)
            .await
            .map_err(|why| invalid(format!("callback_url refused: {why}")))
    }
}

/// The body of `GET /v1/jobs/{id}/deliveries`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Deliveries {
    /// Every attempt, oldest first.
    pub deliveries: Vec<Delivery>,
}

/// `GET /v1/jobs/{id}/deliveries`: every attempt to deliver the job's callback.
#[utoipa::path(get, path = "/v1/jobs/{id}/deliveries", tag = "jobs",
    description = "Every attempt to deliver the job's `callback_url`: when, the status code or error, how long it took, the attempt number and when the next one is due. The job's `callback` field says where the delivery is now.",
    params(("id" = String, Path, format = Uuid, description = "The job id (a UUID)")),
    responses((status = 200, body = Deliveries), (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"), (status = 404, description = "Unknown job", body = Problem, content_type = "application/problem+json"), (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn deliveries(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Deliveries>, ApiError> {
    let id = parse_id(&id)?;
    load(&state, &caller, id).await?;
    let deliveries = state.jobs.store().deliveries(id).await?;
    Ok(Json(Deliveries { deliveries }))
}
