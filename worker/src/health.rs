//! The worker's probes on `WARREN_METRICS_ADDR`: `/healthz` (the process answers) and
//! `/readyz` (connected to RabbitMQ and consuming every queue it should). A worker that is
//! alive but not consuming, the classic failure after a broker hiccup, is not ready.

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warren_shared::readiness::ReadyFlag;

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(readiness): State<ReadyFlag>) -> (StatusCode, Json<Value>) {
    if readiness.is_up() {
        (StatusCode::OK, Json(json!({"status": "ready"})))
    } else {
        let body = json!({"status": "unavailable", "reason": "not consuming its job queues (broker unreachable or reconnecting)"});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body))
    }
}

/// Serves the probes on `listener` until `stop` is cancelled.
pub(crate) async fn serve(listener: TcpListener, readiness: ReadyFlag, stop: CancellationToken) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(readiness);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(error) = served {
        tracing::error!(%error, "health endpoint stopped");
    }
}
