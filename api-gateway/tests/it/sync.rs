//! Synchronous submits (`Prefer: wait`) and long polls.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use warren_worker::{Worker, handlers};

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

async fn submit_preferring(app: &TestApp, prefer: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(format!("{}/v1/jobs", app.address))
        .header("prefer", prefer)
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_fast_job_submitted_with_prefer_wait_answers_200_with_its_result() {
    let mut app = spawn_app().await;
    app.spawn_worker(Worker::builder().handler("echo", handlers::echo))
        .await;

    let started = Instant::now();
    let response =
        submit_preferring(&app, "wait=10", &json!({"type": "echo", "payload": [1, 2]})).await;
    assert_eq!(response.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered only at the deadline"
    );
    assert_eq!(response.headers()["preference-applied"], "wait=10");
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["result"], json!([1, 2]));
    // What the 200 said is what the store says.
    assert_eq!(
        app.job(job["id"].as_str().unwrap()).await["status"],
        "succeeded"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_slow_job_falls_back_to_202_after_the_capped_wait() {
    let mut app = spawn_app_with(|config| config.max_wait_secs = 1).await;
    app.spawn_worker(Worker::builder().handler("sleep", handlers::sleep))
        .await;

    let started = Instant::now();
    let response = submit_preferring(
        &app,
        "wait=30",
        &json!({"type": "sleep", "payload": {"ms": 10_000}}),
    )
    .await;
    let waited = started.elapsed();
    assert_eq!(response.status(), 202);
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(5),
        "waited {waited:?}"
    );
    assert_eq!(response.headers()["preference-applied"], "respond-async");
    assert!(response.headers().contains_key("location"));
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["status"], "running");
    app.post(&format!("/v1/jobs/{}/cancel", job["id"].as_str().unwrap()))
        .await;
    app.stop().await;
}

#[tokio::test]
async fn respond_async_answers_202_at_once() {
    let mut app = spawn_app().await;
    app.declare_idle_queue("held").await;
    let response = submit_preferring(&app, "respond-async", &json!({"type": "held"})).await;
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["preference-applied"], "respond-async");
    app.stop().await;
}

#[tokio::test]
async fn a_long_poll_wakes_when_the_job_finishes() {
    let mut app = spawn_app().await;
    app.spawn_worker(Worker::builder().handler("sleep", handlers::sleep))
        .await;
    let id = app
        .submit_ok(&json!({"type": "sleep", "payload": {"ms": 300}}))
        .await;

    let started = Instant::now();
    let response = app.get(&format!("/v1/jobs/{id}?wait=20")).await;
    assert_eq!(response.status(), 200);
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["status"], "succeeded");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woke only at the deadline"
    );

    let bad = app.get(&format!("/v1/jobs/{id}?wait=soon")).await;
    assert_eq!(bad.status(), 400);
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_gives_up_waiting_leaves_no_waiter_behind() {
    let mut app = spawn_app().await;
    app.declare_idle_queue("held").await;
    let request = app
        .client
        .post(format!("{}/v1/jobs", app.address))
        .header("prefer", "wait=30")
        .timeout(Duration::from_millis(300))
        .json(&json!({"type": "held"}))
        .send()
        .await;
    assert!(request.unwrap_err().is_timeout());

    let started = Instant::now();
    while app.watchers.watched() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the waiter outlived its client"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.stop().await;
}
