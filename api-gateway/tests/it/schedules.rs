//! Recurring schedules: the API checks and keeps them; every due time makes exactly one job,
//! however many gateways fire and when one of them is killed; a due time more than the misfire
//! grace late is skipped and recorded.

use std::{sync::Arc, time::Duration};

use chrono::{Timelike, Utc};
use serde_json::{Value, json};
use tokio::time::Instant;
use uuid::Uuid;
use warren_gateway::{
    model::{RawJson, Schedule, schedule::fire_id},
    store::{MemoryStore, ScheduleStore, Stores},
};

use crate::helpers::{
    DEADLINE, TestApp, TestSchema, spawn_app_on, spawn_app_with, spawn_gateway_process,
};

async fn send(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let request = app.client.request(method, format!("{}{path}", app.address));
    let request = match body {
        Some(body) => request.json(&body),
        None => request,
    };
    request.send().await.unwrap()
}

#[tokio::test]
async fn schedules_are_checked_kept_paused_changed_and_deleted() {
    use reqwest::Method;
    let app = spawn_app_with(|_| {}).await;
    for (body, field) in [
        (json!({"cron": "nope", "type": "echo"}), "cron"),
        (
            json!({"cron": "0 6 * * 1", "timezone": "Mars/Olympus", "type": "echo"}),
            "timezone",
        ),
        (json!({"cron": "0 6 * * 1", "type": "Bad Type"}), "type"),
        (
            json!({"cron": "0 6 * * 1", "type": "echo", "max_attempts": 0}),
            "max_attempts",
        ),
    ] {
        let response = send(&app, Method::POST, "/v1/schedules", Some(body.clone())).await;
        assert_eq!(response.status(), 422, "{body}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["field"], field, "{problem}");
    }
    let body = json!({"cron": "0 6 * * 1", "timezone": "Europe/Paris", "type": "echo", "payload": {"a": 1}});
    let created = send(&app, Method::POST, "/v1/schedules", Some(body)).await;
    assert_eq!(created.status(), 201);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let schedule: Value = created.json().await.unwrap();
    assert_eq!(
        location,
        format!("/v1/schedules/{}", schedule["id"].as_str().unwrap())
    );
    let next: chrono::DateTime<Utc> = schedule["next_run_at"].as_str().unwrap().parse().unwrap();
    let paris = next.with_timezone(&chrono_tz::Europe::Paris);
    assert_eq!((paris.format("%a %H:%M").to_string()), "Mon 06:00");
    assert!(next > Utc::now());

    let listed: Value = app.get("/v1/schedules").await.json().await.unwrap();
    assert_eq!(listed["schedules"][0]["id"], schedule["id"]);
    let shown: Value = app.get(&location).await.json().await.unwrap();
    assert_eq!(shown, schedule);

    let paused: Value = send(
        &app,
        Method::PATCH,
        &location,
        Some(json!({"paused": true})),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        (&paused["paused"], &paused["next_run_at"]),
        (&json!(true), &Value::Null)
    );
    let resumed: Value = send(
        &app,
        Method::PATCH,
        &location,
        Some(json!({"paused": false, "cron": "@hourly"})),
    )
    .await
    .json()
    .await
    .unwrap();
    let next: chrono::DateTime<Utc> = resumed["next_run_at"].as_str().unwrap().parse().unwrap();
    assert_eq!((next.minute(), next.second()), (0, 0));
    assert!(next - Utc::now() <= chrono::Duration::hours(1));
    let bad = send(
        &app,
        Method::PATCH,
        &location,
        Some(json!({"cron": "61 * * * *"})),
    )
    .await;
    assert_eq!(bad.status(), 422);

    assert_eq!(
        send(&app, Method::DELETE, &location, None).await.status(),
        204
    );
    assert_eq!(app.get(&location).await.status(), 404);
    assert_eq!(
        send(&app, Method::DELETE, &location, None).await.status(),
        404
    );
    assert_eq!(app.get("/v1/schedules/nope").await.status(), 400);
    app.stop().await;
}

/// The ids of the `tick` jobs, oldest first.
async fn ticks(app: &TestApp) -> Vec<Uuid> {
    let page: Value = app
        .get("/v1/jobs?type=tick&limit=500")
        .await
        .json()
        .await
        .unwrap();
    let mut ids: Vec<Uuid> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["id"].as_str().unwrap().parse().unwrap())
        .collect();
    ids.sort();
    ids
}

async fn wait_for_ticks(app: &TestApp, at_least: usize) {
    let started = Instant::now();
    while ticks(app).await.len() < at_least {
        assert!(started.elapsed() < DEADLINE, "the schedule stopped firing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Milliseconds since the epoch in a UUIDv7: the due time of a fired job.
fn due_millis(id: Uuid) -> u64 {
    let bytes = id.as_bytes();
    bytes[..6].iter().fold(0, |ms, b| (ms << 8) | u64::from(*b))
}

#[tokio::test]
async fn two_gateways_make_one_job_per_due_time_even_when_one_is_killed() {
    let schema = TestSchema::create().await;
    let url = schema.url();
    let mut first = spawn_app_with({
        let url = url.clone();
        move |config| config.database_url = Some(url)
    })
    .await;
    first.declare_idle_queue("tick").await;
    let namespace = first.broker.namespace.clone();
    let (mut second, _) = spawn_gateway_process(&url, &namespace, &[]).await;
    let created = send(
        &first,
        reqwest::Method::POST,
        "/v1/schedules",
        Some(json!({"cron": "* * * * * *", "type": "tick"})),
    )
    .await;
    assert_eq!(created.status(), 201);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    wait_for_ticks(&first, 3).await;
    // A fired job points back to its schedule.
    let schedule_id = location.rsplit('/').next().unwrap();
    let page: Value = first
        .get("/v1/jobs?type=tick&limit=1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["jobs"][0]["schedule_id"], schedule_id, "{page}");
    second.kill().await.unwrap(); // SIGKILL, wherever it was
    let (restarted, _) = spawn_gateway_process(&url, &namespace, &[]).await;
    let before = ticks(&first).await.len();
    wait_for_ticks(&first, before + 3).await;
    send(&first, reqwest::Method::DELETE, &location, None).await;

    let seconds: Vec<u64> = ticks(&first)
        .await
        .into_iter()
        .map(|id| due_millis(id) / 1000)
        .collect();
    let mut distinct = seconds.clone();
    distinct.dedup();
    assert_eq!(distinct, seconds, "a due time made two jobs");
    let (first_second, last_second) = (seconds[0], seconds[seconds.len() - 1]);
    assert_eq!(
        seconds.len() as u64,
        last_second - first_second + 1,
        "a due time made no job: {seconds:?}"
    );
    drop(restarted); // killed on drop
    first.stop().await;
    schema.drop_schema().await;
}

fn schedule(next_run_at: chrono::DateTime<Utc>) -> Schedule {
    let now = Utc::now();
    Schedule {
        id: Uuid::now_v7(),
        tenant: "default".into(),
        cron: "0 3 * * *".into(),
        timezone: "UTC".into(),
        job_type: "tick".parse().unwrap(),
        payload: RawJson::from_value(&json!({})),
        max_attempts: None,
        timeout_ms: None,
        callback_url: None,
        priority: warren_shared::Priority::Normal,
        paused: false,
        next_run_at: Some(next_run_at),
        last_run_at: None,
        last_job_id: None,
        misfires: 0,
        last_misfire_at: None,
        created_at: now,
        updated_at: now,
    }
}

#[tokio::test]
async fn a_due_time_more_than_the_grace_late_is_skipped_and_recorded() {
    let store = Arc::new(MemoryStore::new());
    let now = Utc::now();
    let late = schedule(now - chrono::Duration::minutes(2));
    let on_time = schedule(now - chrono::Duration::seconds(10));
    for s in [&late, &on_time] {
        store.insert_schedule(s.clone()).await.unwrap();
    }
    let mut app = spawn_app_on(Stores::from(store.clone()), |_| {}).await;
    app.declare_idle_queue("tick").await;
    let started = Instant::now();
    let fired = |s: Option<Schedule>| s.is_some_and(|s| s.next_run_at.is_some_and(|at| at > now));
    while !(fired(store.get_schedule(late.id).await.unwrap())
        && fired(store.get_schedule(on_time.id).await.unwrap()))
    {
        assert!(
            started.elapsed() < DEADLINE,
            "the schedules were never fired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let skipped: Value = app
        .get(&format!("/v1/schedules/{}", late.id))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&skipped["misfires"], &skipped["last_job_id"]),
        (&json!(1), &Value::Null)
    );
    assert!(skipped["last_misfire_at"].is_string());
    let ran: Value = app
        .get(&format!("/v1/schedules/{}", on_time.id))
        .await
        .json()
        .await
        .unwrap();
    let job_id = fire_id(on_time.id, on_time.next_run_at.unwrap()).to_string();
    assert_eq!(
        (&ran["misfires"], ran["last_job_id"].as_str()),
        (&json!(0), Some(job_id.as_str()))
    );
    assert_eq!(app.job(&job_id).await["type"], "tick");
    app.stop().await;
}
