//! The worker's probes on `WARREN_METRICS_ADDR`: `/healthz` (the process answers) and
//! `/readyz` (connected to RabbitMQ and consuming every queue it should). A worker that is
//! alive but not consuming, the classic failure after a broker hiccup, is not ready. The same
//! port serves `/metrics` (see [`crate::metrics`]).

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warren_shared::metrics::CONTENT_TYPE;

use crate::state::Shared;

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(shared): State<Arc<Shared>>) -> (StatusCode, Json<Value>) {
    let node = shared.pool.manager().current_node();
    if shared.readiness.is_up() {
        (
            StatusCode::OK,
            Json(json!({"status": "ready", "broker_node": node})),
        )
    } else {
        let body = json!({
            "status": "unavailable",
            "reason": "not consuming its job queues (broker unreachable or reconnecting; the log says why)",
            "broker_address": &*shared.broker_address,
            "broker_node": node,
        });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body))
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        shared.metrics.render(),
    )
}

/// Serves the probes and metrics on `listener` until `stop` is cancelled.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(error) = served {
        tracing::error!(%error, "health endpoint stopped");
    }
}
