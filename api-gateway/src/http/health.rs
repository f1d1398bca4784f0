//! Liveness and readiness probes, and the metrics endpoint.

use axum::{Json, extract::State, http::StatusCode, response::IntoResponse};
use serde_json::json;

use super::AppState;

/// `GET /healthz`: 200 while the process can answer at all.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "The process is alive")))]
pub async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 when RabbitMQ and the store are usable and the store's change feed is
/// followed (so waiting requests can be woken); 503, saying which is not, otherwise.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200, description = "RabbitMQ and the store are usable"), (status = 503, description = "Something is not; the body says what")))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let (broker, store) = tokio::join!(state.publisher.is_ready(), state.jobs.store().ping());
    let store = store.is_ok() && state.change_feed.is_up();
    let status = if broker && store {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if status.is_success() { "ready" } else { "unavailable" },
        "broker": if broker { "ok" } else { "unavailable" },
        "store": if store { "ok" } else { "unavailable" },
    });
    (status, Json(body))
}

/// `GET /metrics`: the Prometheus series.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus metrics", content_type = "application/openmetrics-text")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            warren_shared::metrics::CONTENT_TYPE,
        )],
        state.metrics.render(),
    )
}
