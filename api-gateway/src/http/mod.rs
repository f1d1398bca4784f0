//! The HTTP API: routes, shared state, request tracing and the fallback.
//!
//! [`router`] builds the whole app from an [`AppState`] without a socket, so handlers can be
//! driven in tests with `tower::ServiceExt::oneshot`.

pub mod accept;
pub mod article;
pub mod health;
pub mod jobs;
pub mod list;
pub mod prefer;
pub mod problem;
pub mod stream;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    middleware::{self, Next},
    response::Response,
    routing::{get, post},
};
use tracing::Instrument;
use warren_shared::{
    readiness::ReadyFlag,
    trace::{TRACEPARENT, TraceContext},
};

use crate::{
    metrics::{GatewayMetrics, HttpLabels, RouteLabels},
    publisher::Publisher,
    store::JobStore,
    watch::Watchers,
};
use jobs::SubmitLimits;
use problem::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// Job records.
    pub store: Arc<dyn JobStore>,
    /// Publishes job messages with confirms.
    pub publisher: Arc<Publisher>,
    /// Limits applied to submitted jobs.
    pub limits: Arc<SubmitLimits>,
    /// Requests waiting on jobs.
    pub watchers: Arc<Watchers>,
    /// The Prometheus series.
    pub metrics: Arc<GatewayMetrics>,
    /// Up while the notifier consumes this gateway's event queue (waiters can be woken).
    pub notifier: ReadyFlag,
    /// The longest a request may wait for a job.
    pub max_wait: Duration,
    /// How long `GET /users/{id}` waits for a worker.
    pub user_timeout: Duration,
}

/// The gateway's routes over `state`, with a body limit of `max_body_bytes`.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/jobs", post(jobs::submit).get(list::list))
        .route("/v1/jobs/{id}", get(jobs::get))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/jobs/{id}/retry", post(jobs::retry))
        .route("/v1/jobs/{id}/events", get(stream::events))
        .route("/generate-report", post(article::generate_report))
        .route("/report-status/{id}", get(article::report_status))
        .route("/reports/{file}", get(article::report_csv))
        .route("/users/{id}", get(article::get_user))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), trace_request))
        .with_state(state)
}

async fn not_found(request: Request) -> ApiError {
    ApiError::RouteNotFound(format!("{} {}", request.method(), request.uri().path()))
}

/// One span per request with method, route and `trace_id` (the client's `traceparent`, or a
/// new trace, handed to handlers as an extension); one log line and the HTTP metrics when it
/// finishes.
async fn trace_request(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let trace = request
        .headers()
        .get(TRACEPARENT)
        .and_then(|value| value.to_str().ok())
        .and_then(TraceContext::parse)
        .unwrap_or_else(TraceContext::new_root);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = request.method().to_string();
    let span =
        tracing::info_span!("http", method = %method, route = %route, trace_id = %trace.trace_id());
    request.extensions_mut().insert(trace);
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed().as_secs_f64();
    let elapsed_ms = elapsed * 1000.0;
    span.in_scope(|| tracing::info!(status, elapsed_ms, "request finished"));
    let metrics = &state.metrics;
    metrics
        .http_requests
        .get_or_create(&HttpLabels {
            route: route.clone(),
            method,
            status,
        })
        .inc();
    metrics
        .http_duration
        .get_or_create(&RouteLabels { route })
        .observe(elapsed);
    response
}
