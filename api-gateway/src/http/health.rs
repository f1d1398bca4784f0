//! Liveness and readiness probes, and the metrics endpoint.

use axum::{Json, extract::State, http::StatusCode, response::IntoResponse};
use serde_json::json;

use super::AppState;

/// `GET /healthz`: 200 while the process can answer at all.
#[utoipa::path(get, path = "/healthz", operation_id = "getHealth", tag = "operations", responses((status = 200, description = "The process is alive")))]
pub async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 when RabbitMQ and the store are usable and the store's change feed is
/// followed (so waiting requests can be woken); 503 otherwise, saying which is not, why, and
/// which broker address it tried (password hidden).
#[utoipa::path(get, path = "/readyz", operation_id = "getReadiness", tag = "operations", responses((status = 200, description = "RabbitMQ and the store are usable"), (status = 503, description = "Something is not; the body says what")))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let (broker, store) = tokio::join!(state.publisher.is_ready(), state.jobs.ping_store());
    let store = match store {
        Ok(()) if !state.change_feed.is_up() => {
            Err("the store's change feed is reconnecting".to_owned())
        }
        Ok(()) => Ok(()),
        Err(error) => Err(error.to_string()),
    };
    let status = if broker.is_ok() && store.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({
        "status": if status.is_success() { "ready" } else { "unavailable" },
        "broker": if broker.is_ok() { "ok" } else { "unavailable" },
        "broker_address": &*state.broker_address,
        "broker_node": state.publisher.current_node(),
        "store": if store.is_ok() { "ok" } else { "unavailable" },
    });
    if let Err(error) = broker {
        body["broker_error"] = json!(error);
    }
    if let Err(error) = store {
        body["store_error"] = json!(error);
    }
    (status, Json(body))
}

/// `GET /metrics`: the Prometheus series.
#[utoipa::path(get, path = "/metrics", operation_id = "getMetrics", tag = "operations", responses((status = 200, description = "Prometheus metrics", content_type = "application/openmetrics-text")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            warren_shared::metrics::CONTENT_TYPE,
        )],
        state.metrics.render(),
    )
}
