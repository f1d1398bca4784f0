//! Failed attempts: retries with backoff, giving up into the dead-letter queue with the error
//! history, timeouts.

use std::sync::{
    Arc,
    atomic::{AtomicU32, Ordering},
};

use lapin::{options::BasicGetOptions, types::AMQPValue};
use serde_json::{Value, json};
use warren_worker::{HandlerError, Worker, handlers};

use crate::helpers::{TestApp, TestSchema, spawn_app, spawn_app_with};

/// A handler that fails (retryably) its first `failures` calls, then succeeds.
fn flaky(
    failures: u32,
) -> (
    Arc<AtomicU32>,
    impl Fn(warren_worker::JobContext) -> futures_util::future::Ready<warren_worker::HandlerResult>
    + Send
    + Sync
    + 'static,
) {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let handler = move |_context| {
        let call = counter.fetch_add(1, Ordering::SeqCst) + 1;
        futures_util::future::ready(if call <= failures {
            Err(HandlerError::retryable(
                "upstream_unavailable",
                format!("call {call} failed"),
            ))
        } else {
            Ok(json!({"calls": call}))
        })
    };
    (calls, handler)
}

/// Reads the next message of the dead queue, polling until one arrives.
async fn next_dead(app: &TestApp) -> (Value, lapin::types::FieldTable) {
    let queue = app.topology().dead_queue();
    let started = std::time::Instant::now();
    loop {
        let got = app
            .channel
            .basic_get(queue.clone().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        if let Some(message) = got {
            let body = serde_json::from_slice(&message.delivery.data).unwrap();
            return (
                body,
                message
                    .delivery
                    .properties
                    .headers()
                    .clone()
                    .unwrap_or_default(),
            );
        }
        assert!(
            started.elapsed() < crate::helpers::DEADLINE,
            "nothing arrived in the dead queue"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn text_header(headers: &lapin::types::FieldTable, name: &str) -> String {
    match headers.inner().get(name) {
        Some(AMQPValue::LongString(text)) => text.to_string(),
        other => panic!("header {name} missing: {other:?}"),
    }
}

#[tokio::test]
async fn a_job_that_fails_twice_then_succeeds_ends_succeeded_on_attempt_3() {
    let mut app = spawn_app().await;
    let (calls, handler) = flaky(2);
    app.spawn_worker(Worker::builder().handler("flaky", handler))
        .await;

    let id = app
        .submit_ok(&json!({"type": "flaky", "max_attempts": 3}))
        .await;
    let retrying = app.wait_for_status(&id, "retrying").await;
    assert_eq!(retrying["error"]["kind"], "upstream_unavailable");
    assert!(retrying["next_attempt_at"].is_string(), "{retrying}");

    let job = app.wait_for_status(&id, "succeeded").await;
    assert_eq!(job["attempt"], 3);
    assert_eq!(job["result"], json!({"calls": 3}));
    assert!(job["next_attempt_at"].is_null());
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    app.stop().await;
}

#[tokio::test]
async fn a_job_that_always_fails_ends_failed_and_dead_with_its_error_history() {
    always_failing(spawn_app().await).await;
}

#[tokio::test]
async fn the_error_history_is_kept_on_postgres_too() {
    let schema = TestSchema::create().await;
    let url = schema.url();
    always_failing(spawn_app_with(|config| config.database_url = Some(url.clone())).await).await;
    schema.drop_schema().await;
}

async fn always_failing(mut app: TestApp) {
    let (calls, handler) = flaky(u32::MAX);
    app.spawn_worker(Worker::builder().handler("flaky", handler))
        .await;

    let id = app
        .submit_ok(&json!({"type": "flaky", "max_attempts": 3}))
        .await;
    let job = app.wait_for_status(&id, "failed").await;
    assert_eq!(job["attempt"], 3);
    assert_eq!(job["error"]["message"], "call 3 failed");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let errors: Vec<(&Value, &Value)> = job["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (&e["attempt"], &e["message"]))
        .collect();
    assert_eq!(
        errors,
        [
            (&json!(1), &json!("call 1 failed")),
            (&json!(2), &json!("call 2 failed")),
            (&json!(3), &json!("call 3 failed"))
        ],
        "the record keeps every attempt's error: {job}"
    );

    let (body, headers) = next_dead(&app).await;
    assert_eq!(body["id"], id);
    assert!(text_header(&headers, "x-warren-reason").contains("attempt 3 of 3"));
    let history: Vec<Value> =
        serde_json::from_str(&text_header(&headers, "x-warren-errors")).unwrap();
    let attempts: Vec<&Value> = history.iter().map(|e| &e["attempt"]).collect();
    assert_eq!(attempts, [1, 2, 3]);
    app.stop().await;
}

#[tokio::test]
async fn a_permanent_error_is_not_retried() {
    let mut app = spawn_app().await;
    let refuse = |_context| {
        futures_util::future::ready(Err(HandlerError::permanent(
            "not_found",
            "no order has id 404",
        )))
    };
    app.spawn_worker(Worker::builder().handler("order.check", refuse))
        .await;
    let id = app
        .submit_ok(&json!({"type": "order.check", "payload": {"id": 404}, "max_attempts": 5}))
        .await;
    let job = app.wait_for_status(&id, "failed").await;
    assert_eq!(job["attempt"], 1);
    let (_, headers) = next_dead(&app).await;
    assert!(text_header(&headers, "x-warren-reason").contains("not_found"));
    app.stop().await;
}

#[tokio::test]
async fn an_attempt_past_its_timeout_is_stopped_and_fails_with_kind_timeout() {
    let mut app = spawn_app().await;
    app.spawn_worker(Worker::builder().handler("sleep", handlers::sleep))
        .await;
    let body =
        json!({"type": "sleep", "payload": {"ms": 30_000}, "timeout_ms": 200, "max_attempts": 1});
    let id = app.submit_ok(&body).await;
    let job = app.wait_for_status(&id, "failed").await;
    assert_eq!(job["error"]["kind"], "timeout");
    assert!(job["error"]["message"].as_str().unwrap().contains("200 ms"));
    app.stop().await;
}

#[tokio::test]
async fn a_failed_job_can_be_retried_as_a_new_attempt_series() {
    let mut app = spawn_app().await;
    let (_, handler) = flaky(1);
    app.spawn_worker(Worker::builder().handler("flaky", handler))
        .await;
    let id = app
        .submit_ok(&json!({"type": "flaky", "max_attempts": 1}))
        .await;
    app.wait_for_status(&id, "failed").await;

    let response = app.post(&format!("/v1/jobs/{id}/retry")).await;
    assert_eq!(response.status(), 202);
    let queued: Value = response.json().await.unwrap();
    assert_eq!(
        (
            &queued["status"],
            &queued["attempt"],
            &queued["max_attempts"]
        ),
        (&json!("queued"), &json!(2), &json!(2))
    );
    assert!(queued["error"].is_null());

    let job = app.wait_for_status(&id, "succeeded").await;
    assert_eq!(job["attempt"], 2);
    let again = app.post(&format!("/v1/jobs/{id}/retry")).await;
    assert_eq!(again.status(), 409);
    assert_eq!(
        app.post("/v1/jobs/0193a3f0-0000-7000-8000-000000000001/retry")
            .await
            .status(),
        404
    );
    app.stop().await;
}
