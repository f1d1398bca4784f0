//! Jobs submitted for later (`delay_ms`, `run_at`): `scheduled` until due, then published and
//! run as any job; cancel works while scheduled; bad times are refused saying why. On both
//! stores.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use warren_worker::{Worker, handlers};

use crate::helpers::{TestApp, TestSchema, spawn_app_with};

fn at(job: &Value, field: &str) -> DateTime<Utc> {
    job[field].as_str().unwrap().parse().unwrap()
}

async fn delayed_jobs_run_when_due_and_a_cancelled_one_never_runs(app: &mut TestApp) {
    app.spawn_worker(Worker::builder().handler("echo", handlers::echo))
        .await;
    let submitted = app
        .submit(&json!({"type": "echo", "payload": "later", "delay_ms": 1500}))
        .await;
    assert_eq!(submitted.status(), 202);
    let job: Value = submitted.json().await.unwrap();
    assert_eq!(job["status"], "scheduled");
    let id = job["id"].as_str().unwrap().to_owned();
    let due = at(&job, "run_at");
    let doomed = app
        .submit_ok(&json!({"type": "echo", "delay_ms": 1000}))
        .await;
    assert_eq!(
        app.post(&format!("/v1/jobs/{doomed}/cancel"))
            .await
            .status(),
        202
    );

    let done = app.wait_for_status(&id, "succeeded").await;
    let (created, finished) = (at(&done, "created_at"), at(&done, "finished_at"));
    let took = (finished - created).num_milliseconds();
    assert!((1_500..3_000).contains(&took), "ran {took} ms after submit");
    assert!(at(&done, "started_at") >= due, "started before its run_at");
    assert_eq!(done["result"], "later");
    // The cancelled job was due before the other ran: it stayed cancelled and never started.
    let cancelled = app.job(&doomed).await;
    assert_eq!(cancelled["status"], "cancelled");
    assert!(cancelled["started_at"].is_null());
    let metrics = app.get("/metrics").await.text().await.unwrap();
    let released: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("warren_jobs_released_total ")?.parse().ok())
        .unwrap_or(0.0);
    assert_eq!(released, 1.0, "the cancelled job was released too");
}

async fn bad_times_are_refused(app: &TestApp) {
    for (body, field) in [
        (json!({"type": "echo", "run_at": "tomorrow"}), "run_at"),
        (
            json!({"type": "echo", "run_at": "2026-12-01T06:00:00"}),
            "run_at",
        ),
        (
            json!({"type": "echo", "run_at": "2030-01-01T00:00:00Z", "delay_ms": 5}),
            "run_at",
        ),
        (
            json!({"type": "echo", "delay_ms": 400_000_000_000_u64}),
            "delay_ms",
        ),
    ] {
        let response = app.submit(&body).await;
        assert_eq!(response.status(), 422, "{body}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["field"], field, "{problem}");
    }
    // The past means now.
    let job: Value = app
        .submit(&json!({"type": "echo", "run_at": "2020-01-01T00:00:00+02:00"}))
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(job["status"], "scheduled", "{job}");
}

#[tokio::test]
async fn later_in_memory() {
    let mut app = spawn_app_with(|_| {}).await;
    delayed_jobs_run_when_due_and_a_cancelled_one_never_runs(&mut app).await;
    bad_times_are_refused(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn later_in_postgres() {
    let schema = TestSchema::create().await;
    let url = schema.url();
    let mut app = spawn_app_with(move |config| config.database_url = Some(url)).await;
    delayed_jobs_run_when_due_and_a_cancelled_one_never_runs(&mut app).await;
    bad_times_are_refused(&app).await;
    app.stop().await;
    schema.drop_schema().await;
}
