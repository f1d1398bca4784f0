//! A broker outage: readiness and submits say 503 meanwhile, then everything recovers by
//! itself and the jobs accepted before the outage finish.

use std::time::{Duration, Instant};

use serde_json::json;
use warren_worker::{Worker, handlers};

use crate::{
    helpers::{DEADLINE, TestApp, spawn_app_with},
    proxy::Proxy,
};

async fn wait_for_readiness(app: &TestApp, status: u16) {
    let started = Instant::now();
    while app.get("/readyz").await.status() != status {
        assert!(
            started.elapsed() < DEADLINE,
            "/readyz never became {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn gateway_and_worker_ride_out_a_broker_outage() {
    let proxy = Proxy::start().await;
    let url = proxy.amqp_url();
    let mut app = spawn_app_with(|config| {
        config.broker.amqp_url = url.parse().unwrap();
        config.publish_timeout_ms = 1_000;
    })
    .await;
    app.spawn_worker(Worker::builder().handler("sleep", handlers::sleep))
        .await;
    wait_for_readiness(&app, 200).await;
    let before = app
        .submit_ok(&json!({"type": "sleep", "payload": {"ms": 1_500}}))
        .await;
    app.wait_for_status(&before, "running").await;

    proxy.cut();
    wait_for_readiness(&app, 503).await;
    let started = Instant::now();
    let refused = app
        .submit(&json!({"type": "sleep", "payload": {"ms": 1}}))
        .await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a submit hung past the publish timeout"
    );

    proxy.restore();
    wait_for_readiness(&app, 200).await;
    let after = app
        .submit_ok(&json!({"type": "sleep", "payload": {"ms": 1}}))
        .await;
    // The job cut off mid-run is redelivered to the reconnected worker and finishes.
    app.wait_for_status(&before, "succeeded").await;
    app.wait_for_status(&after, "succeeded").await;
    app.stop().await;
}
