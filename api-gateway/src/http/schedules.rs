//! `/v1/schedules`: recurring jobs. `POST` makes one, `GET` lists them or shows one (with
//! `next_run_at`, `last_run_at`, `last_job_id` and the misfires), `PATCH` pauses, resumes or
//! changes one, `DELETE` removes it. The rules are the schedule service's, in
//! [`crate::schedules`].

use axum::{
    Json,
    extract::{Extension, Path, State, rejection::JsonRejection},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use uuid::Uuid;

use super::{
    AppState,
    problem::{ApiError, Problem},
};
use crate::{
    auth::Caller,
    model::Schedule,
    schedules::{NewSchedule, ScheduleChange},
};

/// Every schedule.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ScheduleList {
    /// Oldest first.
    pub schedules: Vec<Schedule>,
}

fn parse_schedule_id(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::BadParameter(format!("{raw:?} is not a schedule id: ids are UUIDs")))
}

/// `POST /v1/schedules`.
#[utoipa::path(post, path = "/v1/schedules", operation_id = "createSchedule", tag = "schedules",
    description = "Makes a recurring schedule: each due time of `cron` (read in `timezone`) makes a normal job.",
    request_body = NewSchedule,
    responses((status = 201, description = "Made; `Location` names it", body = Schedule),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid cron, time zone or job field", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<NewSchedule>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(new) = body?;
    let schedule = state.schedules.create(&caller, new).await?;
    let location = format!("/v1/schedules/{}", schedule.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(schedule),
    )
        .into_response())
}

/// `GET /v1/schedules`.
#[utoipa::path(get, path = "/v1/schedules", operation_id = "listSchedules", tag = "schedules",
    description = "Every schedule, oldest first.",
    responses((status = 200, body = ScheduleList), (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<ScheduleList>, ApiError> {
    let schedules = state.schedules.list(&caller).await?;
    Ok(Json(ScheduleList { schedules }))
}

/// `GET /v1/schedules/{id}`.
#[utoipa::path(get, path = "/v1/schedules/{id}", operation_id = "getSchedule", tag = "schedules",
    description = "One schedule, with `next_run_at`, `last_run_at`, `last_job_id` and its misfires.",
    params(("id" = String, Path, format = Uuid, description = "The schedule id")),
    responses((status = 200, body = Schedule), (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such schedule", body = Problem, content_type = "application/problem+json"), (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw_id): Path<String>,
) -> Result<Json<Schedule>, ApiError> {
    let id = parse_schedule_id(&raw_id)?;
    Ok(Json(state.schedules.get(&caller, id).await?))
}

/// `PATCH /v1/schedules/{id}`.
#[utoipa::path(patch, path = "/v1/schedules/{id}", operation_id = "updateSchedule", tag = "schedules",
    description = "Pauses, resumes or changes a schedule; its next due time is computed again from now.",
    params(("id" = String, Path, format = Uuid, description = "The schedule id")),
    request_body = ScheduleChange,
    responses((status = 200, body = Schedule), (status = 400, description = "Malformed id or JSON", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such schedule", body = Problem, content_type = "application/problem+json"), (status = 413, description = "Body over the limit", body = Problem, content_type = "application/problem+json"), (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid field", body = Problem, content_type = "application/problem+json"), (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn update(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw_id): Path<String>,
    body: Result<Json<ScheduleChange>, JsonRejection>,
) -> Result<Json<Schedule>, ApiError> {
    let id = parse_schedule_id(&raw_id)?;
    let Json(change) = body?;
    Ok(Json(state.schedules.update(&caller, id, change).await?))
}

/// `DELETE /v1/schedules/{id}`.
#[utoipa::path(delete, path = "/v1/schedules/{id}", operation_id = "deleteSchedule", tag = "schedules",
    description = "Removes a schedule; jobs it already made are not touched.",
    params(("id" = String, Path, format = Uuid, description = "The schedule id")),
    responses((status = 204, description = "Removed"), (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such schedule", body = Problem, content_type = "application/problem+json"), (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_schedule_id(&raw_id)?;
    state.schedules.delete(&caller, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
