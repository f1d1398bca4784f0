//! The article's example routes, as thin shapes over the same machinery as `/v1/jobs`:
//!
//! - `POST /generate-report` `{"type": "monthly"}` → `202 {"status": "processing", "jobId"}`
//! - `GET /report-status/{jobId}` → `processing`, then `completed` with the CSV's `url`, or
//!   `failed` with the `error`
//! - `GET /reports/{jobId}.csv` → the CSV the worker built
//! - `GET /users/{id}` → answered synchronously by a `user.get` job: `200`, `404`, or `504`
//!   when no worker answered in time

use axum::{
    Json,
    extract::{Extension, Path, State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use warren_shared::{JobId, JobStatus, trace::TraceContext};

use super::{
    AppState,
    jobs::{load, parse_id},
    problem::{ApiError, Problem},
};
use crate::{
    auth::Caller,
    jobs::{JobsError, Submitted},
    model::{Job, JobSpec, RawJson},
};

/// The job type behind the report routes.
const REPORT_TYPE: &str = "report.generate";
/// The job type behind `/users/{id}`.
const USER_TYPE: &str = "user.get";
/// The report periods the worker knows.
const PERIODS: [&str; 3] = ["daily", "weekly", "monthly"];

/// The body of `POST /generate-report`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportRequest {
    /// `daily`, `weekly` or `monthly`.
    #[serde(rename = "type")]
    #[schema(pattern = "^(daily|weekly|monthly)$", example = "monthly")]
    period: String,
}

/// `POST /generate-report`: queue a report.
#[utoipa::path(post, path = "/generate-report", operation_id = "generateReport", tag = "article",
    description = "Queues the article's report: `{\"status\": \"processing\", \"jobId\"}`.",
    request_body = ReportRequest,
    responses((status = 202, description = "`{\"status\": \"processing\", \"jobId\": \"...\"}`"), (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"), (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Unknown report type", body = Problem, content_type = "application/problem+json"), (status = 503, description = "RabbitMQ or the store is unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn generate_report(
    State(state): State<AppState>,
    Extension(trace): Extension<TraceContext>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<ReportRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    if !PERIODS.contains(&request.period.as_str()) {
        return Err(ApiError::InvalidField {
            field: "type",
            message: format!(
                "unknown report type {:?}: use daily, weekly or monthly",
                request.period
            ),
        });
    }
    let spec = JobSpec::new(REPORT_TYPE, &json!({"period": request.period}));
    let Submitted { job, .. } = state
        .jobs
        .submit(spec, None, &caller, &trace, Duration::ZERO)
        .await?;
    let location = format!("/report-status/{}", job.id);
    let body = json!({"status": "processing", "jobId": job.id});
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response())
}

/// A report job, or 404 for an unknown id, a job of another type or of another tenant.
async fn load_report(state: &AppState, caller: &Caller, raw_id: &str) -> Result<Job, ApiError> {
    let id = parse_id(raw_id)?;
    let job = load(state, caller, id).await?;
    if job.job_type.as_str() == REPORT_TYPE {
        Ok(job)
    } else {
        Err(ApiError::JobNotFound(id))
    }
}

/// `GET /report-status/{jobId}`.
#[utoipa::path(get, path = "/report-status/{id}", operation_id = "getReportStatus", tag = "article",
    description = "`processing`, then `completed` with the CSV's `url`, or `failed` with the `error`.",
    params(("id" = String, Path, format = Uuid, description = "The job id (a UUID)")),
    responses((status = 200, description = "The report's status"), (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"), (status = 404, description = "Unknown report", body = Problem, content_type = "application/problem+json")))]
pub async fn report_status(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let job = load_report(&state, &caller, &raw_id).await?;
    Ok(Json(match job.status {
        JobStatus::Waiting
        | JobStatus::Scheduled
        | JobStatus::Queued
        | JobStatus::Running
        | JobStatus::Retrying => {
            json!({"status": "processing"})
        }
        JobStatus::Succeeded => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            json!({"status": "completed", "url": format!("http://{host}/reports/{}.csv", job.id)})
        }
        JobStatus::Failed | JobStatus::Cancelled => {
            let error = job
                .error
                .map_or_else(|| job.status.to_string(), |e| e.message);
            json!({"status": "failed", "error": error})
        }
    }))
}

/// `GET /reports/{jobId}.csv`.
#[utoipa::path(get, path = "/reports/{file}", operation_id = "getReportCsv", tag = "article",
    description = "The CSV the worker built, at `/reports/<jobId>.csv`.",
    params(("file" = String, Path, description = "`<jobId>.csv`")),
    responses((status = 200, description = "The report", content_type = "text/csv"), (status = 404, description = "Unknown or failed report", body = Problem, content_type = "application/problem+json"), (status = 409, description = "Not ready yet", body = Problem, content_type = "application/problem+json")))]
pub async fn report_csv(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let raw_id = file.strip_suffix(".csv").ok_or_else(|| {
        ApiError::NotFound(format!(
            "no report named {file:?}; reports are /reports/<jobId>.csv"
        ))
    })?;
    let job = load_report(&state, &caller, raw_id).await?;
    match job.status {
        JobStatus::Succeeded => {
            let result = job
                .result
                .as_ref()
                .map(RawJson::to_value)
                .unwrap_or_default();
            let csv = result["csv"].as_str().unwrap_or_default().to_owned();
            Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], csv).into_response())
        }
        JobStatus::Failed | JobStatus::Cancelled => Err(ApiError::NotFound(format!(
            "report {} was not produced: the job {}",
            job.id, job.status
        ))),
        _ => Err(ApiError::Conflict(format!(
            "report {} is not ready yet ({}); poll /report-status/{}",
            job.id, job.status, job.id
        ))),
    }
}

/// `GET /users/{id}`: a synchronous answer from a `user.get` worker.
#[utoipa::path(get, path = "/users/{id}", operation_id = "getUser", tag = "article",
    description = "A user, looked up synchronously by a `user.get` worker.",
    params(("id" = String, Path, description = "The user id")),
    responses((status = 200, description = "The user"), (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"), (status = 502, description = "The lookup failed", body = Problem, content_type = "application/problem+json"), (status = 503, description = "No worker handles lookups", body = Problem, content_type = "application/problem+json"), (status = 504, description = "No worker answered in time", body = Problem, content_type = "application/problem+json")))]
pub async fn get_user(
    State(state): State<AppState>,
    Extension(trace): Extension<TraceContext>,
    Extension(caller): Extension<Caller>,
    Path(user_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut spec = JobSpec::new(USER_TYPE, &json!({"id": user_id}));
    spec.max_attempts = Some(1);
    spec.timeout_ms = u64::try_from(state.user_timeout.as_millis()).ok();
    let submitted = state
        .jobs
        .submit(spec, None, &caller, &trace, state.user_timeout)
        .await;
    let job = match submitted {
        Err(JobsError::UnknownJobType(_)) => {
            return Err(ApiError::Unavailable("no worker handles user lookups"));
        }
        Ok(Submitted { job, .. }) => job,
        Err(error) => return Err(error.into()),
    };
    answer_user(&state, job, &user_id).await
}

async fn answer_user(state: &AppState, job: Job, user_id: &str) -> Result<Json<Value>, ApiError> {
    match job.status {
        JobStatus::Succeeded => {
            let user = job.result.map_or(Value::Null, |r| r.to_value());
            if user["found"] == Value::Bool(false) {
                return Err(ApiError::NotFound(format!("no user has id {user_id:?}")));
            }
            Ok(Json(user))
        }
        JobStatus::Failed | JobStatus::Cancelled => {
            tracing::warn!(job_id = %job.id, error = ?job.error, "user lookup failed");
            Err(ApiError::JobFailed(format!(
                "the user lookup failed (job {})",
                job.id
            )))
        }
        _ => {
            give_up(state, job.id).await;
            Err(ApiError::NoAnswer(format!(
                "no worker answered within {} ms; try again later",
                state.user_timeout.as_millis()
            )))
        }
    }
}

/// Cancels a lookup nobody waits for any more, so a worker that turns up later skips it (the
/// gateway does this itself, as the operator, whatever the caller's rights).
async fn give_up(state: &AppState, id: JobId) {
    if let Err(error) = state.jobs.cancel(&Caller::operator(), id).await {
        tracing::warn!(%error, job_id = %id, "cannot cancel an unanswered user lookup");
    }
}
