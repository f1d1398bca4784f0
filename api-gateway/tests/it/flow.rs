//! Flow control per job type against real workers (two or more), on both stores: pausing stops
//! new starts and resuming starts them again, `max_running` and `rate_limit` hold across
//! workers (timings from the jobs' `started_at` and `finished_at`), settings are shared by
//! gateways and survive a restart, and only the operator changes them.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use warren_shared::{amqp, flow::FlowSnapshot, message};
use warren_worker::{Worker, handlers};

use crate::{
    auth::{ADMIN, make_key, with_admin},
    helpers::{
        DEADLINE, TestApp, TestSchema, metric_sum, spawn_app, spawn_app_with,
        spawn_gateway_process, spawn_worker_process,
    },
};

/// `PATCH /v1/queues/{type}`.
async fn patch(app: &TestApp, job_type: &str, body: &Value) -> reqwest::Response {
    app.client
        .patch(format!("{}/v1/queues/{job_type}", app.address))
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn patch_ok(app: &TestApp, job_type: &str, body: &Value) -> Value {
    let response = patch(app, job_type, body).await;
    assert_eq!(response.status(), 200, "PATCH {body}");
    response.json().await.unwrap()
}

/// Patches `job_type` with `body`, then waits until every worker of `app` follows the
/// settings snapshot holding the change (each reads `<ns>.flow` every 250 ms; under load that
/// can take longer, so the tests that count starts wait for it rather than for a fixed time).
async fn heard(app: &TestApp, job_type: &str, body: &Value) -> Value {
    let answer = patch_ok(app, job_type, body).await;
    let version = snapshot_holding(app, job_type, &answer).await;
    workers_follow(app, version).await;
    answer
}

/// Waits until every in-process worker of `app` follows flow settings `version` or newer.
async fn workers_follow(app: &TestApp, version: u64) {
    for metrics in &app.worker_metrics {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let follows = metric_sum(metrics, "warren_worker_flow_settings_version").await;
            #[allow(clippy::cast_precision_loss)]
            let version = version as f64;
            if follows >= version {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "worker {metrics} follows flow settings version {follows}, not {version}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Longest a worker's read of `<ns>.flow` is allowed to hold the snapshot off the queue.
const READ_HOLD: Duration = Duration::from_millis(100);

/// The snapshot on `<ns>.flow` now, if any (read without taking it).
async fn current_snapshot(app: &TestApp) -> Option<FlowSnapshot> {
    let queue = app.topology().flow_queue();
    let read = amqp::peek(&app.connection, &queue, 1).await.unwrap()?;
    let delivery = read.deliveries.into_iter().next()?;
    Some(message::decode(&delivery.data).unwrap())
}

/// The snapshot on `<ns>.flow` now. A worker reads it by taking it unacknowledged and giving it
/// back, so for a few milliseconds the queue can look empty: poll, but only for
/// [`READ_HOLD`], far less than the gateways' once-a-second republish, so a change that was
/// not on the queue when its `PATCH` answered is still caught.
async fn snapshot_now(app: &TestApp) -> FlowSnapshot {
    let deadline = Instant::now() + READ_HOLD;
    loop {
        if let Some(snapshot) = current_snapshot(app).await {
            return snapshot;
        }
        assert!(
            Instant::now() < deadline,
            "no flow snapshot on the queue within {READ_HOLD:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The version of the first snapshot on `<ns>.flow` whose `job_type` entry has the settings
/// `resource` shows.
async fn snapshot_holding(app: &TestApp, job_type: &str, resource: &Value) -> u64 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(snapshot) = current_snapshot(app).await {
            let flow = serde_json::to_value(snapshot.of(job_type)).unwrap();
            if ["paused", "max_running", "rate_limit"]
                .iter()
                .all(|field| flow[field] == resource[field])
            {
                return snapshot.version;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no flow snapshot holds {resource} for {job_type}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two workers of `concurrency` running `sleep` and `echo`, announcing every start.
async fn two_workers(app: &mut TestApp, concurrency: u16) {
    for _ in 0..2 {
        let builder = Worker::builder()
            .handler("sleep", handlers::sleep)
            .handler("echo", handlers::echo);
        app.spawn_worker_with(builder, |config| {
            config.concurrency = concurrency;
            config.announce_running_after_ms = 0;
        })
        .await;
    }
}

fn at(job: &Value, field: &str) -> DateTime<Utc> {
    job[field].as_str().unwrap().parse().unwrap()
}

/// The finished jobs `ids`.
async fn finished(app: &TestApp, ids: &[String]) -> Vec<Value> {
    let mut jobs = Vec::new();
    for id in ids {
        jobs.push(app.wait_for_status(id, "succeeded").await);
    }
    jobs
}

/// The most jobs that ran at once, from their `started_at` and `finished_at`.
fn most_at_once(jobs: &[Value]) -> usize {
    let mut edges: Vec<(DateTime<Utc>, i32)> = jobs
        .iter()
        .flat_map(|job| [(at(job, "started_at"), 1), (at(job, "finished_at"), -1)])
        .collect();
    // A finish at the same instant as a start is counted first.
    edges.sort();
    let (mut now, mut most) = (0, 0);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    usize::try_from(most).unwrap_or(0)
}

async fn pause_holds_new_starts_and_resume_starts_them(mut app: TestApp) {
    two_workers(&mut app, 4).await;
    let paused = patch_ok(&app, "sleep", &json!({"paused": true})).await;
    assert_eq!(paused["paused"], true);
    assert_eq!(paused["max_running"], Value::Null);
    assert_eq!(paused["rate_limit"], Value::Null);
    // The change is on `<ns>.flow` when the PATCH answers, so every worker has it at its next
    // read (every 250 ms: the 1 s bound, with room for a slow read).
    let snapshot = snapshot_now(&app).await;
    assert!(snapshot.of("sleep").paused, "{snapshot:?}");
    workers_follow(&app, snapshot.version).await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(
            app.submit_ok(&json!({"type": "sleep", "payload": {"ms": 10}}))
                .await,
        );
    }
    let other = app.submit_ok(&json!({"type": "echo"})).await;
    app.wait_for_status(&other, "succeeded").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    for id in &ids {
        assert_eq!(
            app.job(id).await["status"],
            "queued",
            "a paused type's job started"
        );
    }
    let seen: Value = app.get("/v1/queues/sleep").await.json().await.unwrap();
    assert_eq!(seen["paused"], true);
    assert_eq!(seen["queued"], 6);
    let resumed_at = Utc::now();
    patch_ok(&app, "sleep", &json!({"paused": false})).await;
    for job in finished(&app, &ids).await {
        assert!(at(&job, "started_at") >= resumed_at - chrono::Duration::milliseconds(50));
    }
    app.stop().await;
}

#[tokio::test]
async fn pausing_a_type_holds_its_new_starts_and_resuming_starts_them() {
    pause_holds_new_starts_and_resume_starts_them(spawn_app().await).await;
}

#[tokio::test]
async fn pausing_a_type_holds_its_new_starts_and_resuming_starts_them_on_postgres() {
    let schema = TestSchema::create().await;
    let url = schema.url();
    let app = spawn_app_with(move |config| config.database_url = Some(url)).await;
    pause_holds_new_starts_and_resume_starts_them(app).await;
    schema.drop_schema().await;
}

async fn max_running_holds_across_workers(mut app: TestApp) {
    two_workers(&mut app, 4).await;
    let set = heard(&app, "sleep", &json!({"max_running": 2})).await;
    assert_eq!(set["max_running"], 2);
    let mut ids = Vec::new();
    for _ in 0..12 {
        ids.push(
            app.submit_ok(&json!({"type": "sleep", "payload": {"ms": 150}}))
                .await,
        );
    }
    let jobs = finished(&app, &ids).await;
    let most = most_at_once(&jobs);
    eprintln!("max_running 2 over 2 workers of 4: at most {most} ran at once");
    assert_eq!(most, 2, "max_running 2 let {most} run at once");
    // Removing the limit lets the workers' concurrency through again.
    heard(&app, "sleep", &json!({"max_running": null})).await;
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(
            app.submit_ok(&json!({"type": "sleep", "payload": {"ms": 300}}))
                .await,
        );
    }
    let most = most_at_once(&finished(&app, &ids).await);
    assert!(most > 2, "without the limit only {most} ran at once");
    app.stop().await;
}

#[tokio::test]
async fn max_running_holds_across_workers_on_both_stores() {
    max_running_holds_across_workers(spawn_app().await).await;
    let schema = TestSchema::create().await;
    let url = schema.url();
    max_running_holds_across_workers(
        spawn_app_with(move |config| config.database_url = Some(url)).await,
    )
    .await;
    schema.drop_schema().await;
}

#[tokio::test]
async fn a_rate_limit_holds_per_window_across_workers() {
    let mut app = spawn_app().await;
    two_workers(&mut app, 8).await;
    heard(
        &app,
        "echo",
        &json!({"rate_limit": {"jobs": 4, "per_seconds": 0.5}}),
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..12 {
        ids.push(app.submit_ok(&json!({"type": "echo"})).await);
    }
    let jobs = finished(&app, &ids).await;
    let mut per_window = std::collections::BTreeMap::new();
    for job in &jobs {
        let window = at(job, "started_at").timestamp_millis() / 500;
        *per_window.entry(window).or_insert(0) += 1;
    }
    eprintln!("starts per 500 ms window: {per_window:?}");
    assert!(per_window.values().all(|n| *n <= 4), "{per_window:?}");
    assert!(
        per_window.len() >= 3,
        "12 starts at 4 per window need 3 windows: {per_window:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn settings_are_shared_by_gateways_survive_a_restart_and_only_the_operator_changes_them() {
    let schema = TestSchema::create().await;
    let url = schema.url();
    let first = spawn_app_with({
        let url = url.clone();
        move |config| config.database_url = Some(url)
    })
    .await;
    patch_ok(
        &first,
        "report.generate",
        &json!({"paused": true, "max_running": 3}),
    )
    .await;
    // Bad values are refused naming the field, and change nothing.
    for (body, field) in [
        (json!({"max_running": 0}), "max_running"),
        (
            json!({"rate_limit": {"jobs": 0, "per_seconds": 1}}),
            "rate_limit.jobs",
        ),
        (
            json!({"rate_limit": {"jobs": 5, "per_seconds": -1}}),
            "rate_limit.per_seconds",
        ),
        (json!({"paused": "yes"}), ""),
        (json!({"max_runing": 3}), ""),
    ] {
        let response = patch(&first, "report.generate", &body).await;
        assert_eq!(response.status(), 422, "{body}");
        let problem: Value = response.json().await.unwrap();
        if !field.is_empty() {
            assert_eq!(problem["field"], field, "{problem}");
        }
    }
    let bad_type = patch(&first, "Not A Type", &json!({"paused": true})).await;
    assert_eq!(bad_type.status(), 400);
    first.stop().await;
    // Another gateway on the same database (as after a restart) has them.
    let second = spawn_app_with(move |config| config.database_url = Some(url)).await;
    let seen: Value = second
        .get("/v1/queues/report.generate")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seen["paused"], true);
    assert_eq!(seen["max_running"], 3);
    assert_eq!(seen["rate_limit"], Value::Null);
    let cleared = patch_ok(
        &second,
        "report.generate",
        &json!({"paused": false, "max_running": null}),
    )
    .await;
    assert_eq!(cleared["paused"], false);
    assert_eq!(cleared["max_running"], Value::Null);
    second.stop().await;
    schema.drop_schema().await;
}

#[tokio::test]
async fn a_tenant_key_reads_settings_but_cannot_change_them() {
    let app = spawn_app_with(with_admin).await;
    let key = make_key(
        &app,
        &json!({"name": "acme admin", "tenant": "acme",
        "rights": ["read", "submit", "admin"]}),
    )
    .await;
    let secret = key["key"].as_str().unwrap().to_owned();
    let refused = app
        .client
        .patch(format!("{}/v1/queues/echo", app.address))
        .bearer_auth(&secret)
        .json(&json!({"paused": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let problem: Value = refused.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("every tenant"),
        "{problem}"
    );
    let read = app
        .client
        .get(format!("{}/v1/queues/echo", app.address))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    let seen: Value = read.json().await.unwrap();
    assert_eq!(seen["paused"], false);
    let operator = app
        .client
        .patch(format!("{}/v1/queues/echo", app.address))
        .bearer_auth(ADMIN)
        .json(&json!({"paused": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(operator.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn a_killed_workers_slot_is_freed_and_its_job_runs_on_another_worker() {
    let mut app = spawn_app().await;
    let sleep: warren_shared::JobType = "sleep".parse().unwrap();
    let mut doomed = spawn_worker_process(
        &app.broker.namespace,
        "sleep",
        &[("WARREN_ANNOUNCE_RUNNING_AFTER_MS", "0")],
    );
    app.wait_for_consumer(&sleep).await;
    app.job_types.push(sleep);
    heard(&app, "sleep", &json!({"max_running": 1})).await;
    let id = app
        .submit_ok(&json!({"type": "sleep", "payload": {"ms": 2000}}))
        .await;
    app.wait_for_status(&id, "running").await;
    // The worker dies holding the only slot.
    doomed.start_kill().unwrap();
    doomed.wait().await.unwrap();
    let killed_at = Utc::now();
    app.spawn_worker_with(
        Worker::builder().handler("sleep", handlers::sleep),
        |config| {
            config.announce_running_after_ms = 0;
        },
    )
    .await;
    // Its job comes back, takes the freed slot on the other worker and runs to the end.
    let job = app.wait_for_status(&id, "succeeded").await;
    let restarted = at(&job, "finished_at") - chrono::Duration::milliseconds(2000);
    let freed_after = (restarted - killed_at).num_milliseconds();
    eprintln!("the killed worker's slot was taken again {freed_after} ms after the kill");
    assert!(
        freed_after < 5_000,
        "the slot took {freed_after} ms to come back"
    );
    // One slot still: two more jobs run one at a time.
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(
            app.submit_ok(&json!({"type": "sleep", "payload": {"ms": 200}}))
                .await,
        );
    }
    assert_eq!(most_at_once(&finished(&app, &ids).await), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_gateway_killed_between_storing_max_running_and_publishing_its_slots_leaves_it_to_another()
 {
    let schema = TestSchema::create().await;
    let url = schema.url();
    let mut app = spawn_app_with({
        let url = url.clone();
        move |config| config.database_url = Some(url)
    })
    .await;
    two_workers(&mut app, 2).await;
    let (mut doomed, address) = spawn_gateway_process(
        &url,
        &app.broker.namespace,
        &[("WARREN_FAULT_PAUSE", "after_flow_stored")],
    )
    .await;
    let mut stderr = BufReader::new(doomed.stderr.take().unwrap()).lines();
    let patch = tokio::spawn(
        app.client
            .patch(format!("{address}/v1/queues/sleep"))
            .json(&json!({"max_running": 1}))
            .send(),
    );
    let reached = async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if line.contains("fault point after_flow_stored reached") {
                return;
            }
        }
        panic!("the gateway ended without reaching the fault point");
    };
    tokio::time::timeout(DEADLINE, reached).await.unwrap();
    doomed.kill().await.unwrap();
    assert!(patch.await.unwrap().is_err(), "the killed gateway answered");
    let killed_at = Instant::now();
    // The setting is stored, its snapshot and slot tokens were never published: within a
    // second the other gateway publishes the snapshot (the documented bound, waited for), and
    // within seconds a new epoch of tokens; the type then runs one job at a time.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            app.submit_ok(&json!({"type": "sleep", "payload": {"ms": 200}}))
                .await,
        );
    }
    let jobs = finished(&app, &ids).await;
    eprintln!("jobs ran again {:?} after the kill", killed_at.elapsed());
    assert_eq!(most_at_once(&jobs), 1);
    let seen: Value = app.get("/v1/queues/sleep").await.json().await.unwrap();
    assert_eq!(seen["max_running"], 1);
    app.stop().await;
    schema.drop_schema().await;
}

#[tokio::test]
async fn a_restarted_memory_gateway_shows_and_changes_the_settings_the_workers_follow() {
    let first = spawn_app().await;
    let namespace = first.broker.namespace.clone();
    patch_ok(&first, "sleep", &json!({"paused": true})).await;
    // The memory store forgets; RabbitMQ keeps the snapshot the workers follow.
    first.stop_processes().await;
    let mut second = spawn_app_with(move |config| config.broker.namespace = namespace).await;
    two_workers(&mut second, 2).await;
    let id = second
        .submit_ok(&json!({"type": "sleep", "payload": {"ms": 10}}))
        .await;
    // The restarted gateway adopts, as it starts, what the workers follow.
    let started = Instant::now();
    loop {
        let seen: Value = second.get("/v1/queues/sleep").await.json().await.unwrap();
        if seen["paused"] == true {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the restarted gateway shows {seen}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(second.job(&id).await["status"], "queued");
    patch_ok(&second, "sleep", &json!({"paused": false})).await;
    second.wait_for_status(&id, "succeeded").await;
    second.stop().await;
}
