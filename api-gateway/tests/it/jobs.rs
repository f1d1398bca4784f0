//! Submitting jobs and reading their outcome through the real worker.

use serde_json::json;
use warren_worker::{Worker, handlers};

use crate::helpers::{spawn_app, spawn_app_with, spawn_unready_app_with};

#[tokio::test]
async fn an_echo_job_succeeds_with_its_payload_as_result() {
    let mut app = spawn_app().await;
    app.spawn_worker(handlers::register(Worker::builder()))
        .await;

    let response = app
        .submit(&json!({"type": "echo", "payload": {"hello": "world"}}))
        .await;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(response.headers()["retry-after"], "1");
    let accepted: serde_json::Value = response.json().await.unwrap();
    let id = accepted["id"].as_str().unwrap();
    assert_eq!(location, format!("/v1/jobs/{id}"));
    assert_eq!(accepted["status"], "queued");
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);

    let job = app.wait_for_status(id, "succeeded").await;
    assert_eq!(job["result"], json!({"hello": "world"}));
    assert_eq!(job["attempt"], 1);
    assert!(job["started_at"].is_string() && job["finished_at"].is_string());
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_job_type_is_refused_with_422_and_not_queued() {
    let mut app = spawn_app().await;
    app.spawn_worker(Worker::builder().handler("echo", handlers::echo))
        .await;

    let response = app.submit(&json!({"type": "nobody.handles.this"})).await;
    assert_eq!(response.status(), 422);
    assert!(response.headers().get("location").is_none());
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["type"], "urn:warren:problem:unknown-job-type");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("\"nobody.handles.this\"")
    );
    // The message was returned, not parked anywhere: the dead queue holds nothing.
    let dead = app
        .channel
        .basic_get(app.topology().dead_queue().into(), Default::default())
        .await
        .unwrap();
    assert!(dead.is_none());
    app.stop().await;
}

#[tokio::test]
async fn a_panicking_handler_fails_its_job_and_the_worker_keeps_serving() {
    let mut app = spawn_app().await;
    let builder = Worker::builder()
        .handler("boom", |_context| async { panic!("kaboom") })
        .handler("echo", handlers::echo);
    app.spawn_worker(builder).await;

    let boom = app
        .submit_ok(&json!({"type": "boom", "max_attempts": 1}))
        .await;
    let failed = app.wait_for_status(&boom, "failed").await;
    assert_eq!(failed["error"]["kind"], "panic");
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("kaboom"),
        "{failed}"
    );

    let echo = app.submit_ok(&json!({"type": "echo", "payload": 7})).await;
    let job = app.wait_for_status(&echo, "succeeded").await;
    assert_eq!(job["result"], 7);
    app.stop().await;
}

#[tokio::test]
async fn a_handler_error_fails_the_job_with_its_kind_and_message() {
    let mut app = spawn_app().await;
    let refuse = |_context| {
        futures_util::future::ready(Err(warren_worker::HandlerError::permanent(
            "not_found",
            "no order has id 999",
        )))
    };
    app.spawn_worker(
        Worker::builder()
            .handler("order.check", refuse)
            .handler("user.get", handlers::get_user),
    )
    .await;

    let missing = app
        .submit_ok(&json!({"type": "order.check", "payload": {"id": 999}}))
        .await;
    let failed = app.wait_for_status(&missing, "failed").await;
    assert_eq!(
        failed["error"],
        json!({"kind": "not_found", "message": "no order has id 999"})
    );

    let found = app
        .submit_ok(&json!({"type": "user.get", "payload": {"id": 1}}))
        .await;
    let user = app.wait_for_status(&found, "succeeded").await;
    assert_eq!(user["result"]["name"], "Ada Lovelace");
    app.stop().await;
}

#[tokio::test]
async fn the_report_handler_reports_progress_and_builds_a_csv() {
    let mut app = spawn_app().await;
    app.spawn_worker(handlers::register(Worker::builder()))
        .await;

    let body = json!({"type": "report.generate", "payload": {"period": "weekly", "step_ms": 1}});
    let id = app.submit_ok(&body).await;
    let job = app.wait_for_status(&id, "succeeded").await;
    assert_eq!(job["progress"]["percent"], 100);
    let csv = job["result"]["csv"].as_str().unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "day,orders,revenue_cents,refunds");
    assert_eq!(lines.len(), 8, "{csv}");
    // Same payload, same report.
    let again = app.submit_ok(&body).await;
    let second = app.wait_for_status(&again, "succeeded").await;
    assert_eq!(second["result"]["csv"], job["result"]["csv"]);
    app.stop().await;
}

#[tokio::test]
async fn without_a_broker_submit_answers_503_and_readiness_fails() {
    let app = spawn_unready_app_with(|config| {
        config.broker.amqp_url = "amqp://guest:guest@127.0.0.1:1/%2f".parse().unwrap();
        config.publish_timeout_ms = 2_000;
    })
    .await;

    let response = app.submit(&json!({"type": "echo"})).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: serde_json::Value = response.json().await.unwrap();
    assert!(
        !problem["detail"].as_str().unwrap().contains("127.0.0.1"),
        "5xx leaks internals: {problem}"
    );

    let ready = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let health = app
        .client
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    app.stop().await;
}

/// `spawn_app` already waited for `200`; what a ready answer must also say is which broker
/// and node the gateway uses, without the broker's password.
#[tokio::test]
async fn readiness_names_the_broker_node_and_hides_the_password() {
    let app = spawn_app().await;
    let ready: serde_json::Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(
        (ready["status"].as_str(), ready["broker"].as_str()),
        (Some("ready"), Some("ok"))
    );
    assert_eq!(ready["store"], "ok");
    let address = ready["broker_address"].as_str().unwrap();
    assert!(address.contains("127.0.0.1:5672"), "{address}");
    assert!(
        !address.contains(":guest@"),
        "the password shows: {address}"
    );
    assert_eq!(
        ready["broker_node"], "127.0.0.1:5672",
        "the node the gateway is connected to is named"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_full_job_queue_refuses_submits_with_503() {
    let mut app = spawn_app_with(|config| config.broker.queue_max_length = Some(2)).await;
    app.declare_idle_queue("held").await;
    app.submit_ok(&json!({"type": "held"})).await;
    app.submit_ok(&json!({"type": "held"})).await;

    // A quorum queue checks its limit after enqueuing, so it can take one job past it.
    app.submit(&json!({"type": "held"})).await;
    for _ in 0..3 {
        let refused = app.submit(&json!({"type": "held"})).await;
        assert_eq!(refused.status(), 503);
        assert!(refused.headers().contains_key("retry-after"));
    }
    app.stop().await;
}

/// The value of one series (name with labels, as exposed) in a metrics text, 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_expose_the_named_series_and_they_move_when_a_job_runs() {
    let mut app = spawn_app().await;
    app.spawn_worker(Worker::builder().handler("echo", handlers::echo))
        .await;
    let before = app.get("/metrics").await.text().await.unwrap();
    let id = app.submit_ok(&json!({"type": "echo"})).await;
    app.wait_for_status(&id, "succeeded").await;

    let response = app.get("/metrics").await;
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("openmetrics-text")
    );
    let after = response.text().await.unwrap();
    for (series, moved_by) in [
        (
            r#"warren_jobs_submitted_total{job_type="echo",tenant="default"}"#,
            1.0,
        ),
        (
            r#"warren_jobs_finished_total{job_type="echo",status="succeeded"}"#,
            1.0,
        ),
        ("warren_publish_confirm_seconds_count", 1.0),
        (
            r#"warren_http_requests_total{route="/v1/jobs",method="POST",status="202"}"#,
            1.0,
        ),
    ] {
        assert_eq!(
            metric(&after, series) - metric(&before, series),
            moved_by,
            "{series} in\n{after}"
        );
    }
    assert!(after.contains("# TYPE warren_http_request_duration_seconds histogram"));
    app.stop().await;
}
