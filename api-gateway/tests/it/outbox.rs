//! Crash-consistent accept (DESIGN.md guarantee 8): a gateway killed with `kill -9` between
//! storing a job and publishing it leaves no half-accepted job. Another gateway's relay
//! publishes it, or a retry with the same `Idempotency-Key` does; the memory store keeps the
//! same rule inside its process.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use lapin::{Connection, ConnectionProperties};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Child,
    time::Instant,
};
use warren_gateway::{
    model::{JobSpec, SpecLimits},
    store::{JobStore, MemoryStore, Stores},
};
use warren_shared::{Topology, topology};
use warren_worker::{Worker, handlers};

use crate::helpers::{
    DEADLINE, TestApp, TestSchema, amqp_url, spawn_app_on, spawn_app_with, spawn_gateway_process,
    test_broker, unique_namespace,
};

/// The submit every crash test makes.
fn echo_body() -> Value {
    json!({"type": "echo", "payload": {"crash": "test"}})
}

/// Starts the `api-gateway` binary, told to stop for good once a submit has stored its job,
/// and waits until it is ready.
async fn gateway_that_stops_after_store(database_url: &str, namespace: &str) -> (Child, String) {
    spawn_gateway_process(
        database_url,
        namespace,
        &[("WARREN_FAULT_PAUSE", "after_store")],
    )
    .await
}

/// Submits through a gateway that stops after storing, and kills it (`SIGKILL`) right there.
/// The echo queue is declared first, so the job is routable once someone publishes it.
async fn submit_and_kill_after_store(schema: &TestSchema, namespace: &str, key: &str) {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let topology = Topology::from_config(&test_broker(namespace));
    topology::declare_core(&channel, &topology).await.unwrap();
    topology::declare_job_queue(&channel, &topology, &"echo".parse().unwrap())
        .await
        .unwrap();
    let (mut child, address) = gateway_that_stops_after_store(&schema.url(), namespace).await;
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let request = crate::helpers::http_client()
        .post(format!("{address}/v1/jobs"))
        .header("idempotency-key", key)
        .json(&echo_body())
        .send();
    let submit = tokio::spawn(request);
    let reached = async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if line.contains("fault point after_store reached") {
                return;
            }
        }
        panic!("the gateway ended without reaching the fault point");
    };
    tokio::time::timeout(DEADLINE, reached).await.unwrap();
    child.kill().await.unwrap(); // SIGKILL: no destructor, no flush, no goodbye
    assert!(
        submit.await.unwrap().is_err(),
        "the killed gateway answered the submit"
    );
}

async fn pg_gateway(schema: &TestSchema, namespace: &str, outbox_grace_ms: u64) -> TestApp {
    let (url, namespace) = (schema.url(), namespace.to_owned());
    let mut app = spawn_app_with(move |config| {
        config.database_url = Some(url);
        config.broker.namespace = namespace;
        config.outbox_grace_ms = outbox_grace_ms;
    })
    .await;
    app.spawn_worker(Worker::builder().handler("echo", handlers::echo))
        .await;
    app
}

async fn submit_with_key(app: &TestApp, key: &str) -> reqwest::Response {
    app.client
        .post(format!("{}/v1/jobs", app.address))
        .header("idempotency-key", key)
        .json(&echo_body())
        .send()
        .await
        .unwrap()
}

async fn listed(app: &TestApp, query: &str) -> Vec<Value> {
    let page: Value = app
        .get(&format!("/v1/jobs?{query}"))
        .await
        .json()
        .await
        .unwrap();
    page["jobs"].as_array().unwrap().clone()
}

fn relayed(metrics: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("warren_jobs_relayed_total ")?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_gateway_killed_after_storing_leaves_a_job_another_gateway_publishes() {
    let (schema, namespace) = (TestSchema::create().await, unique_namespace());
    submit_and_kill_after_store(&schema, &namespace, "crash-relay").await;

    // No client retries: the other gateway's relay must find the job and publish it.
    let app = pg_gateway(&schema, &namespace, 1_000).await;
    let started = Instant::now();
    let job = loop {
        let jobs = listed(&app, "type=echo").await;
        assert!(jobs.len() <= 1, "the crash left more than one record");
        let metrics = app.get("/metrics").await.text().await.unwrap();
        if let Some(job) = jobs.into_iter().find(|j| j["status"] == "succeeded")
            && relayed(&metrics) >= 1.0
        {
            break job;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the relay never ran the stored job"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let retry = submit_with_key(&app, "crash-relay").await;
    assert_eq!(retry.status(), 202);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let replayed: Value = retry.json().await.unwrap();
    assert_eq!(
        (&replayed["id"], &replayed["status"]),
        (&job["id"], &json!("succeeded"))
    );
    assert!(listed(&app, "status=queued").await.is_empty());
    app.stop().await;
    schema.drop_schema().await;
}

#[tokio::test]
async fn a_retry_of_a_key_whose_gateway_died_gets_the_job_within_seconds() {
    let (schema, namespace) = (TestSchema::create().await, unique_namespace());
    submit_and_kill_after_store(&schema, &namespace, "crash-retry").await;

    // The relay waits a minute here, so only the retry itself can publish the job.
    let app = pg_gateway(&schema, &namespace, 60_000).await;
    let started = Instant::now();
    let retry = submit_with_key(&app, "crash-retry").await;
    assert_eq!(retry.status(), 202, "{}", retry.text().await.unwrap());
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let job: Value = retry.json().await.unwrap();
    let id = job["id"].as_str().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    app.wait_for_status(id, "succeeded").await;
    assert_eq!(listed(&app, "type=echo").await.len(), 1);
    assert_eq!(
        relayed(&app.get("/metrics").await.text().await.unwrap()),
        0.0
    );
    app.stop().await;
    schema.drop_schema().await;
}

#[tokio::test]
async fn the_memory_store_relays_a_job_whose_request_was_dropped_before_publishing() {
    let store = Arc::new(MemoryStore::new());
    let mut app = spawn_app_on(Stores::from(store.clone()), |config| {
        config.outbox_grace_ms = 1_000
    })
    .await;
    app.spawn_worker(Worker::builder().handler("echo", handlers::echo))
        .await;
    // What a submit whose task was dropped between storing and publishing leaves behind.
    let limits = SpecLimits {
        default_timeout_ms: 1_000,
        max_timeout_ms: 10_000,
        max_delay: std::time::Duration::from_secs(86_400),
    };
    let mut job = JobSpec::new("echo", &json!({"dropped": true}))
        .validate(&limits)
        .unwrap()
        .into_job();
    job.unconfirmed_since = Some(Utc::now());
    let id = job.id;
    store.insert(job, None).await.unwrap();

    let done = app.wait_for_status(&id.to_string(), "succeeded").await;
    assert_eq!(done["result"], json!({"dropped": true}));
    let stored = store.get(id).await.unwrap().unwrap();
    assert!(
        stored.unconfirmed_since.is_none(),
        "the mark was not cleared"
    );
    app.stop().await;
}
