//! The HTTP API: routes, request tracing and the fallback. Handlers parse, call a service from
//! the [`AppState`], and answer; they never reach a store.
//!
//! [`router`] builds the whole app from an [`AppState`] without a socket, so handlers can be
//! driven in tests with `tower::ServiceExt::oneshot`.

pub mod article;
pub mod auth;
pub mod callbacks;
pub mod health;
pub mod jobs;
pub mod keys;
pub mod list;
pub mod openapi;
pub mod prefer;
pub mod problem;
pub mod queues;
pub mod schedules;
pub mod stream;
pub mod ui;
pub mod workflows;

use std::time::{Duration, Instant};

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::Method,
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use tower::ServiceBuilder;
use tower_http::trace::TraceLayer;
use tracing::Span;
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};
use warren_shared::{
    otel,
    trace::{TRACEPARENT, TraceContext},
};

use crate::metrics::{HttpLabels, RouteLabels};
pub use crate::state::AppState;
use problem::ApiError;

/// The gateway's routes over `state`, with a body limit of `max_body_bytes`. Each handler is
/// registered with its OpenAPI description, so `/openapi.json` lists exactly these routes.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let (routes, api) = OpenApiRouter::<AppState>::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(jobs::submit, list::list))
        .routes(routes!(jobs::get))
        .routes(routes!(jobs::payload))
        .routes(routes!(jobs::cancel))
        .routes(routes!(jobs::retry))
        .routes(routes!(stream::events))
        .routes(routes!(callbacks::deliveries))
        .routes(routes!(workflows::submit, workflows::list))
        .routes(routes!(workflows::get))
        .routes(routes!(workflows::cancel))
        .routes(routes!(workflows::events))
        .routes(routes!(keys::create, keys::list))
        .routes(routes!(keys::revoke))
        .routes(routes!(queues::overview))
        .routes(routes!(queues::get_queue, queues::update_queue))
        .routes(routes!(queues::dead_letters))
        .routes(routes!(schedules::create, schedules::list))
        .routes(routes!(
            schedules::get,
            schedules::update,
            schedules::delete
        ))
        .routes(routes!(article::generate_report))
        .routes(routes!(article::report_status))
        .routes(routes!(article::report_csv))
        .routes(routes!(article::get_user))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(openapi::spec))
        .routes(routes!(openapi::docs))
        .split_for_parts();
    if let Some(document) = openapi::render(&api, &state.limits, !state.auth.is_open()) {
        // Set once per state; a second router over the same state serves the first document.
        let _ = state.openapi.set(document);
    }
    // One stack, applied to each route once: axum wraps every `Router::layer` call in a boxed
    // service of its own, and each `from_fn` middleware clones everything beneath it on every
    // request, so layering them one call at a time made a request clone (and allocate) the
    // boxes below each layer again. The order is the same: the first layer is the outermost.
    let middleware = ServiceBuilder::new()
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_request(())
                .on_response(log_response),
        )
        .map_request(continue_trace)
        .layer(middleware::from_fn_with_state(state.clone(), count_request))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn(move |request, next| {
            require_object_body(request, next, max_body_bytes)
        }))
        .layer(middleware::from_fn(method_not_allowed));
    routes
        .merge(ui::routes())
        .fallback(not_found)
        .layer(middleware)
        .with_state(state)
}

/// Refuses a JSON body that is not an object with a `422`: every body Warren takes is one, and
/// serde would otherwise read an array positionally as a struct's fields (`["echo"]` as
/// `{"type": "echo"}`). Other content types and malformed JSON go on to the handler's own
/// answers (`415`, `400`).
async fn require_object_body(request: Request, next: Next, max_body_bytes: usize) -> Response {
    let is_json = request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json") || value.contains("+json"));
    if !is_json {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, max_body_bytes).await else {
        return ApiError::BodyTooLarge.into_response();
    };
    let first = bytes.iter().find(|byte| !byte.is_ascii_whitespace());
    // Only a body that does not start with `{` is parsed here, to tell a JSON value that is not
    // an object (422) from malformed JSON (the handler's 400).
    let other_json = first.is_some_and(|byte| *byte != b'{')
        && serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok();
    if other_json {
        return ApiError::invalid_body("the body must be a JSON object".into()).into_response();
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

/// Gives the router's bare `405` a problem body like every other error, keeping its `Allow`.
async fn method_not_allowed(request: Request, next: Next) -> Response {
    // Cheap to keep (a standard method and a shared buffer); turned into text only for a 405.
    let (method, uri) = (request.method().clone(), request.uri().clone());
    let response = next.run(request).await;
    if response.status() != axum::http::StatusCode::METHOD_NOT_ALLOWED {
        return response;
    }
    let allow = response.headers().get(axum::http::header::ALLOW).cloned();
    let allowed = allow
        .as_ref()
        .and_then(|value| value.to_str().ok())
        .unwrap_or("other methods")
        .replace(',', ", ");
    let mut problem = ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_owned(),
        allowed,
    }
    .into_response();
    if let Some(allow) = allow {
        problem
            .headers_mut()
            .insert(axum::http::header::ALLOW, allow);
    }
    problem
}

async fn not_found(request: Request) -> ApiError {
    ApiError::RouteNotFound(format!("{} {}", request.method(), request.uri().path()))
}

/// The request's trace, handed to handlers as an extension: the request span's own context
/// with OTLP export; else the client's `traceparent`, or a new trace. Runs inside the request
/// span ([`request_span`]), whose `trace_id` field it fills. It only changes the request, so it
/// is a plain function (tower's `map_request`), with no future to box per request.
fn continue_trace(mut request: Request) -> Request {
    let span = Span::current();
    let trace = otel::context_of(&span)
        .or_else(|| client_trace(&request))
        .unwrap_or_else(TraceContext::new_root);
    span.record("trace_id", trace.trace_id());
    request.extensions_mut().insert(trace);
    request
}

/// The client's `traceparent`, if valid.
fn client_trace<B>(request: &axum::http::Request<B>) -> Option<TraceContext> {
    request
        .headers()
        .get(TRACEPARENT)
        .and_then(|value| value.to_str().ok())
        .and_then(TraceContext::parse)
}

/// The matched route template, e.g. `/v1/jobs/{id}` (`unmatched` for the fallback).
fn route_of<B>(request: &axum::http::Request<B>) -> &str {
    request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
}

/// The methods a metric names; any other is counted as `OTHER`, so a client inventing methods
/// cannot add series.
static METHODS: [Method; 9] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::HEAD,
    Method::OPTIONS,
    Method::CONNECT,
    Method::TRACE,
];

/// `method` as a metric label: one of RFC 9110's nine, or `OTHER`.
fn method_label(method: &Method) -> &'static str {
    METHODS
        .iter()
        .find(|known| *known == method)
        .map_or("OTHER", Method::as_str)
}

/// One span per request (tower-http's `TraceLayer`) with method, route and `trace_id`, and
/// the caller's tenant once authenticated. Exported, it is a server span whose parent is the
/// client's `traceparent` (or a trace's root).
fn request_span<B>(request: &axum::http::Request<B>) -> Span {
    let route = route_of(request);
    let method = request.method();
    if !otel::enabled() {
        return tracing::info_span!("http", method = %method, route = %route,
            trace_id = tracing::field::Empty, tenant = tracing::field::Empty);
    }
    let span = tracing::info_span!("http", method = %method, route = %route,
        trace_id = tracing::field::Empty, tenant = tracing::field::Empty,
        otel.name = %format_args!("{method} {route}"), otel.kind = "server",
        http.request.method = %method, http.route = %route,
        http.response.status_code = tracing::field::Empty);
    if let Some(client) = client_trace(request) {
        otel::set_parent(&span, &client);
    }
    span
}

/// One log line per finished request, in its span.
fn log_response<B>(response: &axum::http::Response<B>, latency: Duration, span: &Span) {
    span.record("http.response.status_code", response.status().as_u16());
    let elapsed_ms = latency.as_secs_f64() * 1000.0;
    tracing::info!(
        status = response.status().as_u16(),
        elapsed_ms,
        "request finished"
    );
}

/// The HTTP metrics: requests by route, method and status, and duration by route.
async fn count_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = route_of(&request).to_owned();
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let metrics = &state.metrics;
    let labels = HttpLabels {
        route,
        method,
        status,
    };
    metrics.http_requests.get_or_create(&labels).inc();
    metrics
        .http_duration
        .get_or_create(&RouteLabels {
            route: labels.route,
        })
        .observe(started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_method_outside_the_standard_nine_is_counted_as_other() {
        assert_eq!(method_label(&Method::POST), "POST");
        assert_eq!(method_label(&Method::DELETE), "DELETE");
        let invented = Method::from_bytes(b"BREW").unwrap_or(Method::GET);
        assert_ne!(invented, Method::GET, "BREW is a valid extension method");
        assert_eq!(method_label(&invented), "OTHER");
    }
}
