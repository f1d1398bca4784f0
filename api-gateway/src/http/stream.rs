//! `GET /v1/jobs/{id}/events`: a job's changes as Server-Sent Events.
//!
//! Each event is one change of the job (a status change or a progress report): `event:` is
//! the status, `data:` the job as JSON, `id:` the job's version (its count of changes). A
//! client that reconnects with `Last-Event-ID` gets only newer changes; the job's current state
//! carries everything an intermediate change said, so nothing is lost or repeated. The stream
//! ends after the terminal event; a finished job streams its final state and ends, and a
//! client that has already seen it gets `204` (which tells `EventSource` not to reconnect).

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::{Extension, Path, State},
    http::{HeaderMap, StatusCode},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures_util::stream;

use super::{
    AppState,
    jobs::{load, parse_id},
    problem::{ApiError, Problem},
};
use crate::{
    auth::Caller,
    model::Job,
    watch::{Snapshot, Subscription},
};

/// How often an idle stream sends a comment, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long a stream waits for a wake-up before it re-reads the store anyway: a wake-up can be
/// missed while the notifier reconnects, and a stream has no deadline to fall back on.
const RESYNC: Duration = Duration::from_secs(15);

/// The stream's progress between two events.
struct Cursor {
    state: AppState,
    caller: Caller,
    subscription: Subscription,
    /// The version of the last change sent (or seen by the client before reconnecting).
    last_sent: Option<u64>,
    /// A state read before waiting, to send first.
    pending: Option<Job>,
}

/// `GET /v1/jobs/{id}/events`.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", operation_id = "streamJobEvents", tag = "jobs",
    description = "Server-Sent Events: one per change (`event:` the status, `data:` the job, `id:` its change count); ends after the terminal one. `Last-Event-ID` resumes.",
    params(("id" = String, Path, format = Uuid, description = "The job id (a UUID)"), ("Last-Event-ID" = Option<u64>, Header, minimum = 0, nullable = false, description = "The last event id seen")),
    responses((status = 200, description = "The event stream", content_type = "text/event-stream"),
        (status = 204, description = "The job finished and the client has seen its last change"),
        (status = 400, description = "Malformed id or Last-Event-ID", body = Problem, content_type = "application/problem+json"), (status = 404, description = "Unknown job", body = Problem, content_type = "application/problem+json")))]
pub async fn events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw_id)?;
    let last_seen = match headers.get("last-event-id") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .and_then(|v| u64::try_from(v).ok())
                .ok_or_else(|| {
                    ApiError::BadParameter(
                        "Last-Event-ID must be an event id this stream sent".into(),
                    )
                })?,
        ),
    };
    let subscription = state.jobs.watchers().subscribe(id);
    let job = load(&state, &caller, id).await?;
    if job.status.is_terminal() && last_seen.is_some_and(|seen| seen >= job.version) {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let cursor = Cursor {
        state,
        caller,
        subscription,
        last_sent: last_seen,
        pending: Some(job),
    };
    let events = stream::unfold(Some(cursor), next_event);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// The next event to send, or `None` to end the stream.
async fn next_event(cursor: Option<Cursor>) -> Option<(Result<Event, Infallible>, Option<Cursor>)> {
    let mut cursor = cursor?;
    loop {
        let job = match cursor.pending.take() {
            Some(job) => job,
            None => match tokio::time::timeout(RESYNC, cursor.subscription.next()).await {
                Ok(Snapshot::Job(job)) => Job::clone(&job),
                Ok(Snapshot::Lagged) | Err(_) => {
                    load(&cursor.state, &cursor.caller, cursor.subscription.id())
                        .await
                        .ok()?
                }
            },
        };
        if cursor.last_sent.is_some_and(|sent| job.version <= sent) {
            if job.status.is_terminal() {
                return None;
            }
            continue;
        }
        cursor.last_sent = Some(job.version);
        let event = Event::default()
            .id(job.version.to_string())
            .event(job.status.as_str())
            .json_data(&job)
            .unwrap_or_else(|_| Event::default().comment("unserialisable job"));
        let next = (!job.status.is_terminal()).then_some(cursor);
        return Some((Ok(event), next));
    }
}
