//! `POST /v1/jobs/{id}/cancel`: queued jobs never run, running ones stop promptly.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use warren_worker::{Worker, handlers};

use crate::helpers::spawn_app;

#[tokio::test]
async fn a_cancelled_queued_job_is_never_run_and_a_running_sleep_stops_at_once() {
    let mut app = spawn_app().await;
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let builder = Worker::builder()
        .handler("sleep", handlers::sleep)
        .handler("count", move |_| {
            let counter = counter.clone();
            async move { Ok(json!(counter.fetch_add(1, Ordering::SeqCst) + 1)) }
        });
    app.spawn_worker_with(builder, |config| config.concurrency = 1)
        .await;

    let blocker = app
        .submit_ok(&json!({"type": "sleep", "payload": {"ms": 60_000}}))
        .await;
    app.wait_for_status(&blocker, "running").await;
    let queued = app.submit_ok(&json!({"type": "count"})).await;

    let cancelled = app.post(&format!("/v1/jobs/{queued}/cancel")).await;
    assert_eq!(cancelled.status(), 202);
    assert_eq!(
        cancelled.json::<Value>().await.unwrap()["status"],
        "cancelled"
    );

    let started = Instant::now();
    assert_eq!(
        app.post(&format!("/v1/jobs/{blocker}/cancel"))
            .await
            .status(),
        202
    );
    // The only slot frees as soon as the sleep stops; the cancelled job is skipped.
    let after = app.submit_ok(&json!({"type": "count"})).await;
    let job = app.wait_for_status(&after, "succeeded").await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the running sleep did not stop promptly"
    );
    assert_eq!(job["result"], 1, "the cancelled job ran");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(app.job(&queued).await["status"], "cancelled");
    app.stop().await;
}

#[tokio::test]
async fn a_running_report_stops_promptly_when_cancelled() {
    let mut app = spawn_app().await;
    let builder = handlers::register(Worker::builder());
    app.spawn_worker_with(builder, |config| config.concurrency = 1)
        .await;
    let body =
        json!({"type": "report.generate", "payload": {"period": "monthly", "step_ms": 1_000}});
    let report = app.submit_ok(&body).await;
    app.wait_for_status(&report, "running").await;

    let started = Instant::now();
    assert_eq!(
        app.post(&format!("/v1/jobs/{report}/cancel"))
            .await
            .status(),
        202
    );
    let echo = app
        .client
        .post(format!("{}/v1/jobs", app.address))
        .header("prefer", "wait=10")
        .json(&json!({"type": "echo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(echo.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the report kept its slot"
    );
    app.stop().await;
}

#[tokio::test]
async fn cancel_refuses_finished_unknown_and_malformed_jobs() {
    let mut app = spawn_app().await;
    app.spawn_worker(Worker::builder().handler("echo", handlers::echo))
        .await;
    let id = app.submit_ok(&json!({"type": "echo"})).await;
    app.wait_for_status(&id, "succeeded").await;

    let finished = app.post(&format!("/v1/jobs/{id}/cancel")).await;
    assert_eq!(finished.status(), 409);
    let problem: Value = finished.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("already finished")
    );
    assert_eq!(app.job(&id).await["status"], "succeeded");
    let unknown = app
        .post("/v1/jobs/0193a3f0-0000-7000-8000-000000000001/cancel")
        .await;
    assert_eq!(unknown.status(), 404);
    assert_eq!(app.post("/v1/jobs/nope/cancel").await.status(), 400);
    app.stop().await;
}
