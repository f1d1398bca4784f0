//! `/v1/schedules`: recurring jobs. `POST` makes one, `GET` lists them or shows one (with
//! `next_run_at`, `last_run_at`, `last_job_id` and the misfires), `PATCH` pauses, resumes or
//! changes one, `DELETE` removes it. Every field is checked as a submit would check it, so a
//! schedule never fires a job that a submit would have refused. A schedule belongs to the
//! tenant of the key that made it, as do the jobs it makes.

use axum::{
    Json,
    extract::{Extension, Path, State, rejection::JsonRejection},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;
use warren_shared::JobType;

use super::{AppState, jobs::SubmitRequest, openapi::Problem, problem::ApiError};
use crate::{
    auth::Caller,
    schedules::{Cadence, Schedule},
    store::RawJson,
};

/// The body of `POST /v1/schedules`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"cron": "0 6 * * 1", "timezone": "Europe/Paris", "type": "report.generate", "payload": {"period": "weekly"}}))]
pub struct NewSchedule {
    /// A 5-field cron pattern (`0 6 * * 1`), a shortcut (`@hourly`, `@daily`, ...), or 6
    /// fields with seconds first.
    pub cron: String,
    /// The IANA time zone the pattern is read in (default `UTC`).
    #[serde(default)]
    pub timezone: Option<String>,
    /// The type of the jobs it makes.
    #[serde(rename = "type")]
    #[schema(
        pattern = "^[a-z0-9][a-z0-9._-]{0,99}$",
        min_length = 1,
        max_length = 100
    )]
    pub job_type: String,
    /// The payload of the jobs it makes.
    #[serde(default)]
    #[schema(value_type = serde_json::Value)]
    pub payload: Option<Box<RawValue>>,
    /// `max_attempts` of its jobs, 1 to 100.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: Option<u32>,
    /// `timeout_ms` of its jobs, at least 1 and at most `WARREN_MAX_TIMEOUT_MS`.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub timeout_ms: Option<u64>,
    /// `callback_url` of its jobs.
    #[serde(default)]
    #[schema(format = "uri", pattern = "^https?://", max_length = 2048)]
    pub callback_url: Option<String>,
    /// Start paused.
    #[serde(default)]
    pub paused: bool,
}

/// The body of `PATCH /v1/schedules/{id}`: the fields to change.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"paused": true}))]
pub struct ScheduleChange {
    /// A new cron pattern.
    #[serde(default)]
    pub cron: Option<String>,
    /// A new time zone.
    #[serde(default)]
    pub timezone: Option<String>,
    /// A new payload.
    #[serde(default)]
    #[schema(value_type = serde_json::Value)]
    pub payload: Option<Box<RawValue>>,
    /// New `max_attempts`, 1 to 100.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: Option<u32>,
    /// New `timeout_ms`, at least 1 and at most `WARREN_MAX_TIMEOUT_MS`.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub timeout_ms: Option<u64>,
    /// New `callback_url`.
    #[serde(default)]
    #[schema(format = "uri", pattern = "^https?://", max_length = 2048)]
    pub callback_url: Option<String>,
    /// Pause (`true`) or resume (`false`); a resumed schedule is next due after now.
    #[serde(default)]
    pub paused: Option<bool>,
}

/// Every schedule.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ScheduleList {
    /// Oldest first.
    pub schedules: Vec<Schedule>,
}

/// Checks a schedule's pattern, zone and job settings, and sets its next due time from now.
fn check(state: &AppState, schedule: &mut Schedule) -> Result<(), ApiError> {
    let cadence = Cadence::parse(&schedule.cron, &schedule.timezone)
        .map_err(|(field, message)| ApiError::InvalidField { field, message })?;
    let request = SubmitRequest {
        max_attempts: schedule.max_attempts,
        timeout_ms: schedule.timeout_ms,
        callback_url: schedule.callback_url.clone(),
        ..SubmitRequest::new(schedule.job_type.as_str(), &schedule.payload.to_value())
    };
    request.into_job(&state.limits)?;
    schedule.next_run_at = if schedule.paused {
        None
    } else {
        cadence.next_after(Utc::now())
    };
    Ok(())
}

fn parse_schedule_id(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::BadParameter(format!("{raw:?} is not a schedule id: ids are UUIDs")))
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no schedule has id {id}"))
}

/// Schedule `id`, if `caller` sees it (another tenant's schedule does not exist for it).
async fn load(state: &AppState, caller: &Caller, id: Uuid) -> Result<Schedule, ApiError> {
    state
        .jobs
        .store()
        .get_schedule(id)
        .await?
        .filter(|schedule| caller.sees(&schedule.tenant))
        .ok_or_else(|| not_found(id))
}

/// `POST /v1/schedules`.
#[utoipa::path(post, path = "/v1/schedules", tag = "schedules",
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
    let now = Utc::now();
    let job_type = JobType::parse(new.job_type).map_err(|e| ApiError::InvalidField {
        field: "type",
        message: e.to_string(),
    })?;
    let mut schedule = Schedule {
        id: Uuid::now_v7(),
        tenant: caller.tenant_of_new_jobs().to_owned(),
        cron: new.cron,
        timezone: new.timezone.unwrap_or_else(|| "UTC".to_owned()),
        job_type,
        payload: new.payload.map_or_else(
            || RawJson::from_value(&serde_json::json!({})),
            RawJson::from_raw,
        ),
        max_attempts: new.max_attempts,
        timeout_ms: new.timeout_ms,
        callback_url: new.callback_url,
        paused: new.paused,
        next_run_at: None,
        last_run_at: None,
        last_job_id: None,
        misfires: 0,
        last_misfire_at: None,
        created_at: now,
        updated_at: now,
    };
    check(&state, &mut schedule)?;
    state
        .callbacks
        .check(schedule.callback_url.as_deref())
        .await?;
    state.jobs.store().insert_schedule(schedule.clone()).await?;
    tracing::info!(schedule_id = %schedule.id, cron = %schedule.cron, "schedule made");
    let location = format!("/v1/schedules/{}", schedule.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(schedule),
    )
        .into_response())
}

/// `GET /v1/schedules`.
#[utoipa::path(get, path = "/v1/schedules", tag = "schedules",
    description = "Every schedule, oldest first.",
    responses((status = 200, body = ScheduleList), (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<ScheduleList>, ApiError> {
    let mut schedules = state.jobs.store().list_schedules().await?;
    schedules.retain(|schedule| caller.sees(&schedule.tenant));
    Ok(Json(ScheduleList { schedules }))
}

/// `GET /v1/schedules/{id}`.
#[utoipa::path(get, path = "/v1/schedules/{id}", tag = "schedules",
    description = "One schedule, with `next_run_at`, `last_run_at`, `last_job_id` and its misfires.",
    params(("id" = String, Path, format = Uuid, description = "The schedule id")),
    responses((status = 200, body = Schedule), (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such schedule", body = Problem, content_type = "application/problem+json"), (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw_id): Path<String>,
) -> Result<Json<Schedule>, ApiError> {
    let id = parse_schedule_id(&raw_id)?;
    load(&state, &caller, id).await.map(Json)
}

/// `PATCH /v1/schedules/{id}`.
#[utoipa::path(patch, path = "/v1/schedules/{id}", tag = "schedules",
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
    let current = load(&state, &caller, id).await?;
    let mut changed = current;
    if let Some(cron) = change.cron {
        changed.cron = cron;
    }
    if let Some(timezone) = change.timezone {
        changed.timezone = timezone;
    }
    if let Some(payload) = change.payload {
        changed.payload = RawJson::from_raw(payload);
    }
    changed.max_attempts = change.max_attempts.or(changed.max_attempts);
    changed.timeout_ms = change.timeout_ms.or(changed.timeout_ms);
    changed.callback_url = change.callback_url.or(changed.callback_url);
    changed.paused = change.paused.unwrap_or(changed.paused);
    changed.updated_at = Utc::now();
    check(&state, &mut changed)?;
    state
        .callbacks
        .check(changed.callback_url.as_deref())
        .await?;
    let apply = |schedule: &mut Schedule| {
        let (last_run_at, last_job_id, misfires, last_misfire_at) = (
            schedule.last_run_at,
            schedule.last_job_id,
            schedule.misfires,
            schedule.last_misfire_at,
        );
        *schedule = Schedule {
            last_run_at,
            last_job_id,
            misfires,
            last_misfire_at,
            ..changed.clone()
        };
    };
    let updated = state.jobs.store().update_schedule(id, &apply).await?;
    updated.map(Json).ok_or_else(|| not_found(id))
}

/// `DELETE /v1/schedules/{id}`.
#[utoipa::path(delete, path = "/v1/schedules/{id}", tag = "schedules",
    description = "Removes a schedule; jobs it already made are not touched.",
    params(("id" = String, Path, format = Uuid, description = "The schedule id")),
    responses((status = 204, description = "Removed"), (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such schedule", body = Problem, content_type = "application/problem+json"), (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_schedule_id(&raw_id)?;
    load(&state, &caller, id).await?;
    if state.jobs.store().delete_schedule(id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(id))
    }
}
