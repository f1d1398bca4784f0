//! Priorities under a backlog, with two real workers: `high` jobs start before the `normal`
//! and `low` ones queued before them, `normal` before `low`, with timings from the jobs'
//! `started_at`; a priority reaches the job resource, the relay and retries; bad ones are 422.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use warren_worker::{Worker, handlers};

use crate::helpers::{TestApp, TestSchema, spawn_app, spawn_app_with};

/// Workers of this test run two jobs at once each.
const CONCURRENCY: u16 = 2;
const WORKERS: usize = 2;

async fn started_at(app: &TestApp, id: &str) -> DateTime<Utc> {
    let job = app.wait_for_status(id, "succeeded").await;
    job["started_at"].as_str().unwrap().parse().unwrap()
}

/// Jobs of `lower` that started before the last of `higher` did.
fn started_before_last(higher: &[DateTime<Utc>], lower: &[DateTime<Utc>]) -> usize {
    let last = higher.iter().max().unwrap();
    lower.iter().filter(|at| *at < last).count()
}

async fn backlog_starts_by_priority(mut app: TestApp) {
    app.declare_idle_queue("sleep").await;
    let mut ids = std::collections::BTreeMap::<&str, Vec<String>>::new();
    // The backlog, oldest first: low, then normal, then high.
    for (priority, count) in [("low", 24), ("normal", 24), ("high", 8)] {
        for _ in 0..count {
            let id = app
                .submit_ok(&json!({"type": "sleep", "payload": {"ms": 30}, "priority": priority}))
                .await;
            ids.entry(priority).or_default().push(id);
        }
    }
    let first: Value = app.job(&ids["high"][0]).await;
    assert_eq!(first["priority"], "high");
    assert_eq!(first["status"], "queued");
    for _ in 0..WORKERS {
        app.spawn_worker_with(
            Worker::builder().handler("sleep", handlers::sleep),
            |config| {
                config.concurrency = CONCURRENCY;
                // Every attempt announces its start, so `started_at` is when it began.
                config.announce_running_after_ms = 0;
            },
        )
        .await;
    }
    let mut starts = std::collections::BTreeMap::new();
    for (priority, jobs) in &ids {
        let mut at = Vec::new();
        for id in jobs {
            at.push(started_at(&app, id).await);
        }
        starts.insert(*priority, at);
    }
    // What may start out of order: a job a worker already runs or holds when a higher one
    // reaches it (a slot frees while its prefetched higher jobs are still on the way).
    let allowance = WORKERS * usize::from(CONCURRENCY);
    let lower: Vec<DateTime<Utc>> = [&starts["normal"][..], &starts["low"][..]].concat();
    let before_high = started_before_last(&starts["high"], &lower);
    let low_before_normal = started_before_last(&starts["normal"], &starts["low"]);
    eprintln!(
        "lower-priority jobs started before the last high one: {before_high}; low before the \
         last normal: {low_before_normal} (allowed {allowance} each)"
    );
    assert!(
        before_high <= allowance,
        "{before_high} jobs overtook high ones"
    );
    assert!(
        low_before_normal <= allowance,
        "{low_before_normal} low jobs overtook normal ones"
    );
    app.stop().await;
}

#[tokio::test]
async fn under_a_backlog_high_starts_before_normal_before_low() {
    backlog_starts_by_priority(spawn_app().await).await;
}

#[tokio::test]
async fn under_a_backlog_high_starts_before_normal_before_low_on_postgres() {
    let schema = TestSchema::create().await;
    let url = schema.url();
    backlog_starts_by_priority(spawn_app_with(move |config| config.database_url = Some(url)).await)
        .await;
    schema.drop_schema().await;
}

#[tokio::test]
async fn an_unknown_priority_is_refused_naming_the_field_and_leaves_nothing() {
    let mut app = spawn_app().await;
    app.declare_idle_queue("echo").await;
    let response = app
        .submit(&json!({"type": "echo", "priority": "urgent"}))
        .await;
    assert_eq!(response.status(), 422);
    let problem: Value = response.json().await.unwrap();
    assert!(
        problem.to_string().contains("priority")
            && problem.to_string().contains("high, normal or low"),
        "{problem}"
    );
    let listed: Value = app.get("/v1/jobs").await.json().await.unwrap();
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 0);
    let schedule = app
        .post_json(
            "/v1/schedules",
            &json!({"cron": "0 6 * * 1", "type": "echo", "priority": "soon"}),
        )
        .await;
    assert_eq!(schedule.status(), 422);
    let made = app
        .post_json(
            "/v1/schedules",
            &json!({"cron": "0 6 * * 1", "type": "echo", "priority": "low"}),
        )
        .await;
    assert_eq!(made.status(), 201);
    let made: Value = made.json().await.unwrap();
    assert_eq!(made["priority"], "low");
    app.stop().await;
}
