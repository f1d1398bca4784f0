//! `GET /v1/queues` against the real broker: the store's counts per type, RabbitMQ's
//! consumers and ready messages, dead letters, and a tenant's narrower view.

use reqwest::Method;
use serde_json::{Value, json};
use warren_worker::{Worker, handlers};

use crate::{
    auth::{ADMIN, call, make_key, with_admin},
    helpers::{TestApp, TestSchema, spawn_app, spawn_app_with},
};

fn queue<'a>(overview: &'a Value, job_type: &str) -> &'a Value {
    overview["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["type"] == job_type)
        .unwrap_or_else(|| panic!("no {job_type} in {overview}"))
}

#[tokio::test]
async fn the_overview_counts_jobs_per_type_and_reads_consumers_from_the_broker() {
    overview_counts(spawn_app().await).await;
}

#[tokio::test]
async fn the_overview_counts_the_same_on_postgres() {
    let schema = TestSchema::create().await;
    let url = schema.url();
    overview_counts(spawn_app_with(|config| config.database_url = Some(url.clone())).await).await;
    schema.drop_schema().await;
}

async fn overview_counts(mut app: TestApp) {
    app.declare_idle_queue("idle").await;
    let builder = Worker::builder()
        .handler("echo", handlers::echo)
        .handler("boom", |_context| async { panic!("kaboom") });
    app.spawn_worker(builder).await;
    for _ in 0..2 {
        app.submit_ok(&json!({"type": "idle"})).await;
    }
    let echo = app.submit_ok(&json!({"type": "echo"})).await;
    let boom = app
        .submit_ok(&json!({"type": "boom", "max_attempts": 1}))
        .await;
    app.wait_for_status(&echo, "succeeded").await;
    app.wait_for_status(&boom, "failed").await;
    app.submit_ok(&json!({"type": "echo", "delay_ms": 3_600_000}))
        .await;

    let response = app.get("/v1/queues").await;
    assert_eq!(response.status(), 200);
    let overview: Value = response.json().await.unwrap();
    assert_eq!(overview["broker_answered"], true);
    let idle = queue(&overview, "idle");
    assert_eq!(
        (idle["queued"].as_u64(), idle["workers"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(
        idle["messages_ready"], 2,
        "RabbitMQ holds the two queued jobs"
    );
    let echo = queue(&overview, "echo");
    assert_eq!(echo["succeeded_last_hour"], 1);
    assert_eq!(echo["scheduled"], 1);
    assert_eq!(echo["workers"], 1, "the worker consumes echo");
    let boom = queue(&overview, "boom");
    assert_eq!(boom["failed_last_hour"], 1);
    assert_eq!(
        overview["dead_letters"], 1,
        "the failed job went to the dead-letter queue"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_tenant_sees_only_its_own_counts_and_no_broker_totals() {
    let mut app = spawn_app_with(with_admin).await;
    app.declare_idle_queue("idle").await;
    let acme = make_key(&app, &json!({"tenant": "acme"})).await;
    let acme = acme["key"].as_str().unwrap();
    let body = json!({"type": "idle"});
    call(&app, Method::POST, "/v1/jobs", Some(acme), Some(&body)).await;
    call(&app, Method::POST, "/v1/jobs", Some(ADMIN), Some(&body)).await;

    let mine: Value = call(&app, Method::GET, "/v1/queues", Some(acme), None)
        .await
        .json()
        .await
        .unwrap();
    let idle = queue(&mine, "idle");
    assert_eq!(idle["queued"], 1, "only acme's job: {mine}");
    assert_eq!(idle["workers"], 0);
    assert!(
        idle["messages_ready"].is_null() && mine["dead_letters"].is_null(),
        "{mine}"
    );
    let all: Value = call(&app, Method::GET, "/v1/queues", Some(ADMIN), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(queue(&all, "idle")["queued"], 2);
    assert_eq!(queue(&all, "idle")["messages_ready"], 2);
    app.stop().await;
}

#[tokio::test]
async fn the_operator_reads_dead_letters_with_their_reason_and_errors_and_they_stay() {
    let mut app = spawn_app_with(with_admin).await;
    let builder = Worker::builder().handler("boom", |_context| async {
        Err::<Value, _>(warren_worker::HandlerError::permanent(
            "boom",
            "it always fails",
        ))
    });
    app.spawn_worker(builder).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let body = json!({"type": "boom", "payload": {"n": n}, "max_attempts": 1});
        let submitted = call(&app, Method::POST, "/v1/jobs", Some(ADMIN), Some(&body)).await;
        let job: Value = submitted.json().await.unwrap();
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    let read = || async {
        let response = call(
            &app,
            Method::GET,
            "/v1/dead-letters?limit=2",
            Some(ADMIN),
            None,
        )
        .await;
        assert_eq!(response.status(), 200);
        response.json::<Value>().await.unwrap()
    };
    // The worker's dead-lettering is confirmed after the job's failure event, and a peek's
    // messages go back as its channel closes: wait (with the deadline) until all three show.
    let all_three = || async {
        let started = std::time::Instant::now();
        loop {
            let page = read().await;
            if page["total"] == 3 && page["dead_letters"].as_array().unwrap().len() == 2 {
                return page;
            }
            assert!(started.elapsed() < crate::helpers::DEADLINE, "{page}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    let page = all_three().await;
    let letters = page["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 2, "the limit");
    let first = letters[0]["message_id"].as_str().unwrap();
    let n = ids
        .iter()
        .position(|id| id == first)
        .expect("one of the failed jobs");
    assert_eq!(letters[0]["type"], "boom");
    assert_eq!(
        letters[0]["reason"],
        "failed on attempt 1 of 1: boom: it always fails"
    );
    assert_eq!(letters[0]["errors"][0]["kind"], "boom");
    assert_eq!(letters[0]["body"]["payload"], json!({ "n": n }));
    // Reading took nothing away: all three are still there, and a read sees two of them
    // (RabbitMQ returns the ones read after the others, so not necessarily the same two).
    let again = all_three().await;
    for letter in again["dead_letters"].as_array().unwrap() {
        assert!(ids.iter().any(|id| letter["message_id"] == *id), "{again}");
    }
    let tenant = make_key(
        &app,
        &json!({"tenant": "acme", "rights": ["admin", "read"]}),
    )
    .await;
    let tenant = tenant["key"].as_str().unwrap();
    let refused = call(&app, Method::GET, "/v1/dead-letters", Some(tenant), None).await;
    assert_eq!(
        refused.status(),
        403,
        "dead letters hold every tenant's jobs"
    );
    let bad = call(
        &app,
        Method::GET,
        "/v1/dead-letters?limit=0",
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(bad.status(), 400);
    app.stop().await;
}
