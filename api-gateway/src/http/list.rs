//! `GET /v1/jobs?status=&type=&workflow=&limit=&cursor=`: jobs newest first, one page at a time.
//!
//! The cursor is the last job's id of the previous page. Ids are time-ordered (UUIDv7), so a
//! page is "older than the cursor": jobs created while a client walks the pages never shift
//! them, and every job that existed when the walk began is seen exactly once.

use axum::{
    Json,
    extract::{Extension, Query, State, rejection::QueryRejection},
};
use serde::{Deserialize, Serialize};
use warren_shared::{JobId, JobStatus, JobType};

use super::{AppState, problem::ApiError, problem::Problem};
use crate::{auth::Caller, model::Job, store::ListQuery};

/// Jobs per page when the client does not say.
pub const DEFAULT_LIMIT: usize = 50;
/// Most jobs per page.
pub const MAX_LIMIT: usize = 500;

/// One page of jobs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobPage {
    /// Newest first.
    pub jobs: Vec<Job>,
    /// Pass as `cursor` for the next page; null on the last one.
    pub next_cursor: Option<String>,
}

/// The raw query parameters (validated below, so each refusal can say what is wrong).
#[derive(Debug, Deserialize)]
pub struct ListParams {
    status: Option<String>,
    #[serde(rename = "type")]
    job_type: Option<String>,
    workflow: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// A page's `limit`: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] without one.
pub fn page_limit(raw: Option<String>) -> Result<usize, ApiError> {
    limit(raw, DEFAULT_LIMIT, MAX_LIMIT)
}

/// A `limit` parameter: a whole number from 1 to `max`, `default` without one.
pub fn limit(raw: Option<String>, default: usize, max: usize) -> Result<usize, ApiError> {
    let Some(raw) = raw else {
        return Ok(default);
    };
    raw.parse()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            ApiError::BadParameter(format!("limit={raw:?}: use a whole number from 1 to {max}"))
        })
}

/// A page's `cursor` (the last id of the previous page), if given.
pub fn cursor<T: std::str::FromStr>(raw: Option<String>) -> Result<Option<T>, ApiError> {
    raw.map(|raw| {
        raw.parse::<T>().map_err(|_| {
            ApiError::BadParameter(format!("cursor={raw:?} is not a cursor this API returned"))
        })
    })
    .transpose()
}

impl ListParams {
    fn into_query(self, caller: &Caller) -> Result<ListQuery, ApiError> {
        let bad = |message: String| ApiError::BadParameter(message);
        let status = self
            .status
            .map(|s| s.parse::<JobStatus>())
            .transpose()
            .map_err(|e| bad(format!("status: {e}")))?;
        let job_type = self
            .job_type
            .map(JobType::parse)
            .transpose()
            .map_err(|e| bad(format!("type: {e}")))?;
        let workflow = self
            .workflow
            .map(|raw| {
                raw.parse::<uuid::Uuid>()
                    .map_err(|_| bad(format!("workflow={raw:?} is not a workflow id (a UUID)")))
            })
            .transpose()?;
        let limit = page_limit(self.limit)?;
        let before = cursor::<JobId>(self.cursor)?;
        Ok(ListQuery {
            tenant: caller.tenant().map(str::to_owned),
            status,
            job_type,
            workflow,
            limit,
            before,
        })
    }
}

/// `GET /v1/jobs`.
#[utoipa::path(get, path = "/v1/jobs", operation_id = "listJobs", tag = "jobs",
    description = "The caller's tenant's jobs (every tenant's for the operator) newest first, one page at a time; pass `next_cursor` back as `cursor` until it is null.",
    params(
        ("status" = Option<JobStatus>, Query, description = "Only jobs with this status"),
        ("type" = Option<String>, Query, pattern = "^[a-z0-9][a-z0-9._-]{0,99}$", description = "Only jobs of this type"),
        ("workflow" = Option<String>, Query, format = Uuid, description = "Only the step jobs of this workflow"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Jobs per page, 1 to 500 (default 50)"),
        ("cursor" = Option<String>, Query, format = Uuid, description = "`next_cursor` of the previous page"),
    ),
    responses((status = 200, body = JobPage), (status = 400, description = "A bad parameter", body = Problem, content_type = "application/problem+json"), (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<JobPage>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::BadParameter(e.body_text()))?;
    let query = params.into_query(&caller)?;
    let jobs = state.jobs.list(&query).await.map_err(|error| {
        tracing::error!(%error, "cannot list jobs");
        ApiError::Unavailable("the job store is unavailable")
    })?;
    let next_cursor = (jobs.len() == query.limit)
        .then(|| jobs.last().map(|job| job.id.to_string()))
        .flatten();
    Ok(Json(JobPage { jobs, next_cursor }))
}
