//! Tenants: another tenant's job does not exist in any route, list or stream; idempotency
//! keys are scoped to the tenant; a key's cap on jobs in flight holds across gateways.

use reqwest::Method;
use serde_json::{Value, json};

use warren_worker::Worker;

use crate::{
    auth::{ADMIN, call, keys_on_postgres, make_key, with_admin},
    helpers::{DEADLINE, TestApp, TestSchema, spawn_app_with},
};

#[tokio::test]
async fn another_tenants_job_is_404_in_every_route_and_absent_from_lists() {
    let mut app = spawn_app_with(with_admin).await;
    app.declare_idle_queue("echo").await;
    app.declare_idle_queue("report.generate").await;
    let a = make_key(&app, &json!({"tenant": "acme"})).await;
    let b = make_key(&app, &json!({"tenant": "globex"})).await;
    let (a, b) = (a["key"].as_str().unwrap(), b["key"].as_str().unwrap());

    let job: Value = call(
        &app,
        Method::POST,
        "/v1/jobs",
        Some(a),
        Some(&json!({"type": "echo"})),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(job["tenant"], "acme");
    let id = job["id"].as_str().unwrap();
    let report: Value = call(
        &app,
        Method::POST,
        "/generate-report",
        Some(a),
        Some(&json!({"type": "monthly"})),
    )
    .await
    .json()
    .await
    .unwrap();
    let report_id = report["jobId"].as_str().unwrap();

    let routes = [
        (Method::GET, format!("/v1/jobs/{id}")),
        (Method::GET, format!("/v1/jobs/{id}?wait=1")),
        (Method::GET, format!("/v1/jobs/{id}/events")),
        (Method::GET, format!("/v1/jobs/{id}/deliveries")),
        (Method::POST, format!("/v1/jobs/{id}/cancel")),
        (Method::POST, format!("/v1/jobs/{id}/retry")),
        (Method::GET, format!("/report-status/{report_id}")),
        (Method::GET, format!("/reports/{report_id}.csv")),
    ];
    for (method, path) in &routes {
        let response = call(&app, method.clone(), path, Some(b), None).await;
        assert_eq!(response.status(), 404, "tenant B: {method} {path}");
    }
    let page: Value = call(&app, Method::GET, "/v1/jobs", Some(b), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["jobs"], json!([]), "tenant B lists nothing of A's");
    let page: Value = call(
        &app,
        Method::GET,
        "/v1/jobs?status=queued&type=echo",
        Some(b),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(page["jobs"], json!([]));

    let own: Value = call(&app, Method::GET, "/v1/jobs", Some(a), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        own["jobs"].as_array().unwrap().len(),
        2,
        "tenant A lists its own"
    );
    let everyone: Value = call(&app, Method::GET, "/v1/jobs", Some(ADMIN), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        everyone["jobs"].as_array().unwrap().len(),
        2,
        "the operator sees every tenant"
    );
    assert_eq!(
        call(
            &app,
            Method::GET,
            &format!("/report-status/{report_id}"),
            Some(a),
            None
        )
        .await
        .status(),
        200
    );
    let stream = call(
        &app,
        Method::GET,
        &format!("/v1/jobs/{id}/events"),
        Some(a),
        None,
    )
    .await;
    assert_eq!(stream.status(), 200, "tenant A streams its job");
    drop(stream);
    let cancelled = call(
        &app,
        Method::POST,
        &format!("/v1/jobs/{id}/cancel"),
        Some(a),
        None,
    )
    .await;
    assert_eq!(
        cancelled.status(),
        202,
        "B's attempt changed nothing; A cancels"
    );

    let schedule = json!({"cron": "0 3 * * *", "type": "echo"});
    let made: Value = call(
        &app,
        Method::POST,
        "/v1/schedules",
        Some(a),
        Some(&schedule),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(made["tenant"], "acme");
    let path = format!("/v1/schedules/{}", made["id"].as_str().unwrap());
    assert_eq!(
        call(&app, Method::GET, &path, Some(b), None).await.status(),
        404
    );
    assert_eq!(
        call(&app, Method::DELETE, &path, Some(b), None)
            .await
            .status(),
        404
    );
    let listed: Value = call(&app, Method::GET, "/v1/schedules", Some(b), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["schedules"], json!([]));
    assert_eq!(
        call(&app, Method::DELETE, &path, Some(a), None)
            .await
            .status(),
        204
    );
    app.stop().await;
}

#[tokio::test]
async fn the_same_idempotency_key_from_two_tenants_makes_two_jobs() {
    let mut app = spawn_app_with(with_admin).await;
    app.declare_idle_queue("echo").await;
    let mut ids = Vec::new();
    for tenant in ["acme", "globex", "acme"] {
        let key = make_key(&app, &json!({"tenant": tenant})).await;
        let response = app
            .client
            .post(format!("{}/v1/jobs", app.address))
            .bearer_auth(key["key"].as_str().unwrap())
            .header("idempotency-key", "order-42")
            .json(&json!({"type": "echo"}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        let job: Value = response.json().await.unwrap();
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    assert_ne!(ids[0], ids[1], "two tenants, two jobs");
    assert_eq!(
        ids[0], ids[2],
        "a second key of the same tenant replays its job"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_in_flight_cap_holds_across_gateways_and_frees_up_when_a_job_finishes() {
    let schema = TestSchema::create().await;
    let url = schema.url();
    let mut a = spawn_app_with(keys_on_postgres(&url)).await;
    let mut b = spawn_app_with(keys_on_postgres(&url)).await;
    a.declare_idle_queue("echo").await;
    b.declare_idle_queue("echo").await;
    let key = make_key(&a, &json!({"tenant": "acme", "max_in_flight": 3})).await;
    let secret = key["key"].as_str().unwrap();
    let body = json!({"type": "echo"});
    let submits = (0..10).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        call(app, Method::POST, "/v1/jobs", Some(secret), Some(&body))
    });
    let responses = futures_util::future::join_all(submits).await;
    let mut accepted = Vec::new();
    for response in responses {
        match response.status().as_u16() {
            202 => accepted.push(response.json::<Value>().await.unwrap()),
            429 => {
                let problem: Value = response.json().await.unwrap();
                let detail = problem["detail"].as_str().unwrap();
                assert!(detail.contains("3 jobs in flight"), "{detail}");
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        accepted.len(),
        3,
        "ten submits racing on two gateways, cap 3"
    );
    let id = accepted[0]["id"].as_str().unwrap();
    let cancelled = call(
        &b,
        Method::POST,
        &format!("/v1/jobs/{id}/cancel"),
        Some(secret),
        None,
    )
    .await;
    assert_eq!(cancelled.status(), 202);
    let again = call(&a, Method::POST, "/v1/jobs", Some(secret), Some(&body)).await;
    assert_eq!(again.status(), 202, "a finished job frees a place");
    let full = call(&b, Method::POST, "/v1/jobs", Some(secret), Some(&body)).await;
    assert_eq!(full.status(), 429);
    assert!(full.headers().contains_key("retry-after"));
    a.stop().await;
    b.stop().await;
    schema.drop_schema().await;
}

#[tokio::test]
async fn an_in_flight_cap_holds_on_the_memory_store() {
    let mut app = spawn_app_with(with_admin).await;
    app.declare_idle_queue("echo").await;
    let key = make_key(&app, &json!({"tenant": "acme", "max_in_flight": 3})).await;
    let secret = key["key"].as_str().unwrap();
    let body = json!({"type": "echo"});
    let mut ids = Vec::new();
    for _ in 0..3 {
        let job: Value = call(&app, Method::POST, "/v1/jobs", Some(secret), Some(&body))
            .await
            .json()
            .await
            .unwrap();
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        call(&app, Method::POST, "/v1/jobs", Some(secret), Some(&body))
            .await
            .status(),
        429
    );
    let other = make_key(&app, &json!({"tenant": "acme"})).await;
    let other = other["key"].as_str().unwrap();
    assert_eq!(
        call(&app, Method::POST, "/v1/jobs", Some(other), Some(&body))
            .await
            .status(),
        202,
        "the cap is the key's, not the tenant's"
    );
    let path = format!("/v1/jobs/{}/cancel", ids[0]);
    assert_eq!(
        call(&app, Method::POST, &path, Some(secret), None)
            .await
            .status(),
        202
    );
    assert_eq!(
        call(&app, Method::POST, "/v1/jobs", Some(secret), Some(&body))
            .await
            .status(),
        202
    );
    app.stop().await;
}

#[tokio::test]
async fn a_redrive_counts_against_the_cap_of_the_key_that_submitted_the_job() {
    redrive_within_cap(spawn_app_with(with_admin).await).await;
    let schema = TestSchema::create().await;
    redrive_within_cap(spawn_app_with(keys_on_postgres(&schema.url())).await).await;
    schema.drop_schema().await;
}

async fn redrive_within_cap(mut app: TestApp) {
    app.declare_idle_queue("idle").await;
    app.spawn_worker(Worker::builder().handler("boom", |_context| async { panic!("kaboom") }))
        .await;
    let key = make_key(&app, &json!({"tenant": "acme", "max_in_flight": 1})).await;
    let secret = key["key"].as_str().unwrap();
    let failed = submit_as(&app, secret, json!({"type": "boom", "max_attempts": 1})).await;
    let started = std::time::Instant::now();
    while status_of(&app, &failed).await != "failed" {
        assert!(started.elapsed() < DEADLINE, "the boom job never failed");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let waiting = submit_as(&app, secret, json!({"type": "idle"})).await;
    let retry = format!("/v1/jobs/{failed}/retry");
    let refused = call(&app, Method::POST, &retry, Some(ADMIN), None).await;
    assert_eq!(refused.status(), 429, "the key's one place is taken");
    assert_eq!(status_of(&app, &failed).await, "failed", "nothing changed");
    let cancel = format!("/v1/jobs/{waiting}/cancel");
    assert_eq!(
        call(&app, Method::POST, &cancel, Some(secret), None)
            .await
            .status(),
        202
    );
    let redriven = call(&app, Method::POST, &retry, Some(ADMIN), None).await;
    assert_eq!(redriven.status(), 202, "the place is free again");
    app.stop().await;
}

async fn submit_as(app: &TestApp, key: &str, body: Value) -> String {
    let response = call(app, Method::POST, "/v1/jobs", Some(key), Some(&body)).await;
    assert_eq!(response.status(), 202);
    let job: Value = response.json().await.unwrap();
    job["id"].as_str().unwrap().to_owned()
}

async fn status_of(app: &TestApp, id: &str) -> Value {
    let path = format!("/v1/jobs/{id}");
    let job: Value = call(app, Method::GET, &path, Some(ADMIN), None)
        .await
        .json()
        .await
        .unwrap();
    job["status"].clone()
}

#[tokio::test]
async fn another_tenants_workflow_is_404_and_a_workflow_counts_against_the_keys_cap() {
    let mut app = spawn_app_with(with_admin).await;
    app.declare_idle_queue("echo").await;
    let a = make_key(&app, &json!({"tenant": "acme", "max_in_flight": 3})).await;
    let b = make_key(&app, &json!({"tenant": "globex"})).await;
    let (a, b) = (a["key"].as_str().unwrap(), b["key"].as_str().unwrap());
    let body = json!({"steps": [
        {"name": "one", "type": "echo"},
        {"name": "two", "type": "echo", "depends_on": ["one"]},
    ]});
    let response = call(&app, Method::POST, "/v1/workflows", Some(a), Some(&body)).await;
    assert_eq!(response.status(), 201);
    let workflow: Value = response.json().await.unwrap();
    let id = workflow["id"].as_str().unwrap();
    let job = workflow["steps"][0]["job_id"].as_str().unwrap();
    for (method, path) in [
        (Method::GET, format!("/v1/workflows/{id}")),
        (Method::GET, format!("/v1/workflows/{id}?wait=1")),
        (Method::GET, format!("/v1/workflows/{id}/events")),
        (Method::POST, format!("/v1/workflows/{id}/cancel")),
        (Method::GET, format!("/v1/jobs/{job}")),
    ] {
        let response = call(&app, method.clone(), &path, Some(b), None).await;
        assert_eq!(response.status(), 404, "{method} {path}");
    }
    let listed: Value = call(&app, Method::GET, "/v1/workflows", Some(b), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["workflows"], json!([]));
    let mine: Value = call(&app, Method::GET, "/v1/workflows", Some(a), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(mine["workflows"][0]["id"], id);
    // Two steps in flight (no worker runs them) and a cap of 3: another two-step workflow
    // would pass it, so it is refused whole; a one-step one fits.
    let refused = call(&app, Method::POST, "/v1/workflows", Some(a), Some(&body)).await;
    assert_eq!(refused.status(), 429);
    let one = json!({"steps": [{"name": "only", "type": "echo"}]});
    let fits = call(&app, Method::POST, "/v1/workflows", Some(a), Some(&one)).await;
    assert_eq!(fits.status(), 201);
    app.stop().await;
}
