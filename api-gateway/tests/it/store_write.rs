//! The PostgreSQL write path: group-committed submits each get their own record and message,
//! a batch that fails half-way writes nothing and answers `503` to each of its submits, and
//! store errors are classified (a duplicate, a lost connection, a broken query).

use axum::response::IntoResponse;
use futures_util::future::join_all;
use serde_json::{Value, json};
use warren_gateway::{
    http::problem::ApiError,
    model::{Job, JobSpec, SpecLimits},
    store::{Inserted, JobStore, PostgresStore, StoreError},
};

use std::time::Duration;

use tokio::time::Instant;

use crate::{
    helpers::{DEADLINE, TestApp, TestSchema, spawn_app_with},
    proxy::Proxy,
};

fn new_job(payload: &Value) -> Job {
    let limits = SpecLimits {
        default_timeout_ms: 1_000,
        max_timeout_ms: 10_000,
        max_delay: std::time::Duration::from_secs(86_400),
    };
    JobSpec::new("held", payload)
        .validate(&limits)
        .unwrap()
        .into_job()
}

/// Makes any insert of a job whose payload has a `poison` field kill its own database
/// connection, half-way through the batch's transaction.
async fn poison_inserts(schema: &TestSchema) {
    let (client, connection) = tokio_postgres::connect(&schema.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(
            "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.payload ? 'poison' THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER poison BEFORE INSERT ON warren_jobs
                 FOR EACH ROW EXECUTE FUNCTION poison();",
        )
        .await
        .unwrap();
}

async fn status_of(error: StoreError) -> (u16, Value) {
    let response = ApiError::from(error).into_response();
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn a_batch_that_fails_half_way_stores_none_of_its_jobs() {
    let schema = TestSchema::create().await;
    let store = PostgresStore::connect(&schema.url()).await.unwrap();
    poison_inserts(&schema).await;
    let mut batch: Vec<(Job, _)> = (0..5).map(|i| (new_job(&json!({"i": i})), None)).collect();
    batch.push((new_job(&json!({"poison": true})), None));
    let error = store.insert_batch(&batch).await.unwrap_err();
    assert!(
        matches!(error, StoreError::Unavailable(_)),
        "a lost connection is 'try again': {error:?}"
    );
    for (job, _) in &batch {
        assert!(
            store.get(job.id).await.unwrap().is_none(),
            "half a batch was stored"
        );
    }
    // The pool replaces the dead connection; the next batch goes through.
    let clean: Vec<(Job, _)> = (0..3).map(|i| (new_job(&json!({"i": i})), None)).collect();
    let outcomes = store.insert_batch(&clean).await.unwrap();
    assert!(outcomes.iter().all(|o| matches!(o, Ok(Inserted::New))));
    schema.drop_schema().await;
}

async fn held_app(schema: &TestSchema) -> TestApp {
    let url = schema.url();
    let mut app = spawn_app_with(move |config| config.database_url = Some(url)).await;
    app.declare_idle_queue("held").await;
    app
}

#[tokio::test]
async fn concurrent_submits_each_get_their_own_record_and_message_and_a_failed_batch_none() {
    let schema = TestSchema::create().await;
    let app = held_app(&schema).await;
    poison_inserts(&schema).await;
    let bodies: Vec<Value> = (0..200)
        .map(|i| {
            let payload = if i == 100 {
                json!({"poison": true})
            } else {
                json!({"i": i})
            };
            json!({"type": "held", "payload": payload})
        })
        .collect();
    let submits = bodies.iter().map(|body| app.submit(body));
    let mut accepted = Vec::new();
    let mut refused = 0;
    for response in join_all(submits).await {
        match response.status().as_u16() {
            202 => accepted.push(response.json::<Value>().await.unwrap()["id"].clone()),
            503 => refused += 1,
            other => panic!("a submit answered {other}"),
        }
    }
    assert!(refused >= 1, "the poisoned submit was accepted");
    let mut ids = accepted.clone();
    ids.sort_by_key(ToString::to_string);
    ids.dedup();
    assert_eq!(ids.len(), accepted.len(), "two submits shared a record");
    let page: Value = app
        .get("/v1/jobs?type=held&limit=500")
        .await
        .json()
        .await
        .unwrap();
    let stored: Vec<Value> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["id"].clone())
        .collect();
    assert_eq!(
        stored.len(),
        accepted.len(),
        "a refused submit left a record"
    );
    assert!(accepted.iter().all(|id| stored.contains(id)));
    assert_eq!(app.queued_messages("held").await as usize, accepted.len());
    // Confirmed publishes clear their outbox marks (in batches, shortly after the 202), so
    // the relay never publishes these jobs again.
    let (client, connection) = tokio_postgres::connect(&schema.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let started = Instant::now();
    loop {
        let marked: i64 = client
            .query_one(
                "SELECT count(*) FROM warren_jobs WHERE unconfirmed_since IS NOT NULL",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if marked == 0 {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{marked} confirmed jobs kept their outbox mark"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.stop().await;
    schema.drop_schema().await;
}

#[tokio::test]
async fn store_errors_map_to_what_they_mean() {
    let schema = TestSchema::create().await;
    let proxy = Proxy::to("127.0.0.1:5432").await;
    let store = PostgresStore::connect(&schema.url_via(&proxy.addr.to_string()))
        .await
        .unwrap();

    let job = new_job(&json!({}));
    store.insert(job.clone(), None).await.unwrap();
    let duplicate = store.insert(job.clone(), None).await.unwrap_err();
    assert!(matches!(duplicate, StoreError::Duplicate(id) if id == job.id));
    assert_eq!(status_of(duplicate).await.0, 409);

    let (client, connection) = tokio_postgres::connect(&schema.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute("ALTER TABLE warren_jobs RENAME COLUMN progress TO progress_renamed")
        .await
        .unwrap();
    let broken = store.get(job.id).await.unwrap_err();
    assert!(matches!(broken, StoreError::Query(_)), "{broken:?}");
    let (status, body) = status_of(broken).await;
    assert_eq!(status, 500);
    let detail = body["detail"].as_str().unwrap();
    assert!(
        !detail.contains("progress"),
        "a 500 leaked internals: {detail}"
    );
    assert!(
        !detail.contains("try again"),
        "a bug is not 'try again': {detail}"
    );

    proxy.cut();
    let lost = store.get(job.id).await.unwrap_err();
    assert!(matches!(lost, StoreError::Unavailable(_)), "{lost:?}");
    assert_eq!(status_of(lost).await.0, 503);
    schema.drop_schema().await;
}
