//! `/v1/workflows`: submit, read (with a long poll), list, cancel and stream workflows. The
//! rules are the workflow service's, in [`crate::workflows`].
//!
//! The event stream sends one `step` event per step status change (`data`: the step, with
//! `workflow_id`), starting with every step's status when the stream opens, and ends with one
//! `workflow` event carrying the finished workflow.

use std::{collections::HashMap, convert::Infallible, time::Duration};

use axum::{
    Json,
    extract::{
        Extension, Path, Query, State,
        rejection::{JsonRejection, QueryRejection},
    },
    http::{HeaderMap, StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures_util::stream;
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use warren_shared::{JobStatus, trace::TraceContext};

use super::{
    AppState,
    jobs::{key_claim_of, parse_wait},
    problem::{ApiError, Problem},
};
use crate::{
    auth::Caller,
    http::list::{cursor, page_limit},
    model::{StepView, WorkflowSpec, WorkflowStatus, WorkflowView},
    store::WorkflowQuery,
    watch::WorkflowSubscription,
    workflows::Submitted,
};

/// How often an idle stream sends a comment, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long a stream waits for a wake-up before it re-reads the store anyway.
const RESYNC: Duration = Duration::from_secs(15);

/// Parses a workflow id from a path segment.
fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::BadParameter(format!(
            "{raw:?} is not a workflow id: ids are UUIDs such as 0193a3f0-7c1a-7b0e-8f00-0123456789ab"
        ))
    })
}

/// `POST /v1/workflows`: accept a workflow. `201` with it once its first steps are confirmed
/// by RabbitMQ; `202` when some are not yet (the relay publishes them).
#[utoipa::path(post, path = "/v1/workflows", operation_id = "submitWorkflow", tag = "workflows",
    description = "Accepts a workflow of up to 1,000 named steps; a step starts once every step in its `depends_on` has succeeded and receives their results as `parents`. Steps without dependencies start at once, so independent steps are a batch. `201` once the first steps are stored and confirmed by RabbitMQ; `202` when some first steps are stored but not yet confirmed (they are published by the outbox relay).",
    request_body = WorkflowSpec,
    params(
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "The same key and body give the same workflow; 1 to 255 visible ASCII characters"),
        ("traceparent" = Option<String>, Header, nullable = false, description = "W3C trace context to continue"),
    ),
    responses(
        (status = 201, description = "Created; its first steps are in RabbitMQ", body = WorkflowView),
        (status = 202, description = "Created; some first steps wait for RabbitMQ's confirm", body = WorkflowView),
        (status = 400, description = "Malformed JSON or header", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the limit", body = Problem, content_type = "application/problem+json"), (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid workflow: duplicate step name, unknown dependency, a cycle (named), an invalid step (`steps[3].type`), too many steps, or Idempotency-Key reused with another body", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The API key's cap on jobs in flight would be passed", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "RabbitMQ or the store is unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "submit_workflow", skip_all, fields(workflow_id))]
pub async fn submit(
    State(state): State<AppState>,
    Extension(trace): Extension<TraceContext>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<Json<WorkflowSpec>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(spec) = body?;
    let key = key_claim_of(&headers, || spec.canonical())?;
    let Submitted {
        workflow,
        replayed,
        all_published,
    } = state.workflows.submit(spec, key, &caller, &trace).await?;
    let status = if all_published && !replayed {
        StatusCode::CREATED
    } else {
        StatusCode::ACCEPTED
    };
    let location = format!("/v1/workflows/{}", workflow.id);
    let mut response = (status, [(header::LOCATION, location)], Json(workflow)).into_response();
    if replayed {
        response.headers_mut().insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}

/// The query of `GET /v1/workflows/{id}`.
#[derive(Debug, Deserialize)]
pub struct GetQuery {
    wait: Option<String>,
}

/// `GET /v1/workflows/{id}`.
#[utoipa::path(get, path = "/v1/workflows/{id}", operation_id = "getWorkflow", tag = "workflows",
    description = "The workflow and each step's status. With `?wait=N`, answers once it has ended or after N seconds (capped).",
    params(("id" = String, Path, format = Uuid, description = "The workflow id (a UUID)"), ("wait" = Option<u64>, Query, minimum = 0, maximum = 3600, nullable = false, description = "Seconds to wait for the workflow to end, 0 to 3600 (cut to `WARREN_MAX_WAIT_SECS`)")),
    responses((status = 200, body = WorkflowView), (status = 400, description = "Malformed id or wait", body = Problem, content_type = "application/problem+json"), (status = 404, description = "Unknown workflow", body = Problem, content_type = "application/problem+json"), (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw_id): Path<String>,
    query: Result<Query<GetQuery>, QueryRejection>,
) -> Result<Json<WorkflowView>, ApiError> {
    let id = parse_id(&raw_id)?;
    let Query(query) = query.map_err(|e| ApiError::BadParameter(e.body_text()))?;
    let wait = parse_wait(query.wait.as_deref(), state.max_wait)?;
    Ok(Json(state.workflows.wait_for(&caller, id, wait).await?))
}

/// `POST /v1/workflows/{id}/cancel`.
#[utoipa::path(post, path = "/v1/workflows/{id}/cancel", operation_id = "cancelWorkflow", tag = "workflows",
    description = "Cancels every step that has not finished (running ones are told to stop); no step starts after this.",
    params(("id" = String, Path, format = Uuid, description = "The workflow id (a UUID)")),
    responses((status = 202, description = "Cancelled", body = WorkflowView), (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"), (status = 404, description = "Unknown workflow", body = Problem, content_type = "application/problem+json"), (status = 409, description = "Already finished", body = Problem, content_type = "application/problem+json"), (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json")))]
#[tracing::instrument(name = "cancel_workflow", skip_all, fields(workflow_id = %raw_id))]
pub async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw_id): Path<String>,
) -> Result<(StatusCode, Json<WorkflowView>), ApiError> {
    let id = parse_id(&raw_id)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(state.workflows.cancel(&caller, id).await?),
    ))
}

/// One page of workflows.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WorkflowPage {
    /// Newest first.
    pub workflows: Vec<WorkflowView>,
    /// Pass as `cursor` for the next page; null on the last one.
    pub next_cursor: Option<String>,
}

/// The query of `GET /v1/workflows`.
#[derive(Debug, Deserialize)]
pub struct ListParams {
    status: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET /v1/workflows`.
#[utoipa::path(get, path = "/v1/workflows", operation_id = "listWorkflows", tag = "workflows",
    description = "The caller's tenant's workflows (every tenant's for the operator) newest first, one page at a time; pass `next_cursor` back as `cursor` until it is null.",
    params(
        ("status" = Option<WorkflowStatus>, Query, description = "Only workflows with this status"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Workflows per page, 1 to 500 (default 50)"),
        ("cursor" = Option<String>, Query, format = Uuid, description = "`next_cursor` of the previous page"),
    ),
    responses((status = 200, body = WorkflowPage), (status = 400, description = "A bad parameter", body = Problem, content_type = "application/problem+json"), (status = 503, description = "The store is unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<WorkflowPage>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::BadParameter(e.body_text()))?;
    let bad = ApiError::BadParameter;
    let status = params
        .status
        .map(|raw| raw.parse::<WorkflowStatus>())
        .transpose()
        .map_err(|e| bad(format!("status: {e}")))?;
    let limit = page_limit(params.limit)?;
    let before = cursor::<Uuid>(params.cursor)?;
    let query = WorkflowQuery {
        tenant: caller.tenant().map(str::to_owned),
        status,
        limit,
        before,
    };
    let workflows = state.workflows.list(&query).await?;
    let next_cursor = (workflows.len() == limit)
        .then(|| workflows.last().map(|w| w.id.to_string()))
        .flatten();
    Ok(Json(WorkflowPage {
        workflows,
        next_cursor,
    }))
}

/// One step's change, as a `step` event's data.
#[derive(Debug, Serialize)]
struct StepEvent<'a> {
    workflow_id: Uuid,
    #[serde(flatten)]
    step: &'a StepView,
}

/// The stream's progress between two reads.
struct Cursor {
    state: AppState,
    caller: Caller,
    id: Uuid,
    subscription: WorkflowSubscription,
    /// Each step's last status sent, by name.
    sent: HashMap<String, JobStatus>,
    /// Events read but not sent yet.
    queue: std::collections::VecDeque<Event>,
    /// Whether the terminal `workflow` event is queued (the stream ends after it).
    ending: bool,
    /// The latest state read, to diff first.
    pending: Option<WorkflowView>,
}

/// `GET /v1/workflows/{id}/events`.
#[utoipa::path(get, path = "/v1/workflows/{id}/events", operation_id = "streamWorkflowEvents", tag = "workflows",
    description = "Server-Sent Events: a `step` event per step status change (`data`: the step with `workflow_id`), starting with every step's current status, then one `workflow` event with the finished workflow, after which the stream ends.",
    params(("id" = String, Path, format = Uuid, description = "The workflow id (a UUID)")),
    responses((status = 200, description = "The event stream", content_type = "text/event-stream"),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"), (status = 404, description = "Unknown workflow", body = Problem, content_type = "application/problem+json")))]
pub async fn events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw_id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw_id)?;
    let subscription = state.workflows.subscribe(id);
    let view = state.workflows.get(&caller, id).await?;
    let cursor = Cursor {
        state,
        caller,
        id,
        subscription,
        sent: HashMap::new(),
        queue: std::collections::VecDeque::new(),
        ending: false,
        pending: Some(view),
    };
    let events = stream::unfold(Some(cursor), next_event);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// Queues an event per step whose status differs from what was sent, and the terminal event
/// when the workflow has ended.
fn diff(cursor: &mut Cursor, view: &WorkflowView) {
    for step in &view.steps {
        if cursor.sent.get(&step.name) == Some(&step.status) {
            continue;
        }
        cursor.sent.insert(step.name.clone(), step.status);
        let data = StepEvent {
            workflow_id: view.id,
            step,
        };
        if let Ok(event) = Event::default().event("step").json_data(&data) {
            cursor.queue.push_back(event);
        }
    }
    if view.status.is_terminal() && !cursor.ending {
        cursor.ending = true;
        if let Ok(event) = Event::default().event("workflow").json_data(view) {
            cursor.queue.push_back(event);
        }
    }
}

/// The next event to send, or `None` to end the stream.
async fn next_event(cursor: Option<Cursor>) -> Option<(Result<Event, Infallible>, Option<Cursor>)> {
    let mut cursor = cursor?;
    loop {
        if let Some(event) = cursor.queue.pop_front() {
            let next = (!(cursor.ending && cursor.queue.is_empty())).then_some(cursor);
            return Some((Ok(event), next));
        }
        if cursor.ending {
            return None;
        }
        let view = match cursor.pending.take() {
            Some(view) => view,
            None => {
                // A tick or the resync deadline: either way, read the workflow again.
                let _ = tokio::time::timeout(RESYNC, cursor.subscription.changed()).await;
                cursor
                    .state
                    .workflows
                    .get(&cursor.caller, cursor.id)
                    .await
                    .ok()?
            }
        };
        diff(&mut cursor, &view);
    }
}
