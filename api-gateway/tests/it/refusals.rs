//! What a refusal leaves, and payloads both stores take alike: a submit refused because no
//! worker handles its type leaves no job, no queue-overview row and no idempotency key; payloads
//! PostgreSQL's `jsonb` cannot keep get the same `422` from both stores, naming the payload.

use serde_json::{Value, json};
use warren_gateway::GatewayConfig;

use crate::helpers::{TestApp, TestSchema, spawn_app_with};

/// One gateway on each store: the memory store, and PostgreSQL on a schema of its own.
async fn on_both_stores(check: impl AsyncFn(&mut TestApp, &str)) {
    let schema = TestSchema::create().await;
    let url = schema.url();
    let postgres = move |config: &mut GatewayConfig| config.database_url = Some(url);
    for (store, mut app) in [
        ("memory", spawn_app_with(|_| {}).await),
        ("postgres", spawn_app_with(postgres).await),
    ] {
        check(&mut app, store).await;
        app.stop().await;
    }
}

#[tokio::test]
async fn a_submit_refused_for_its_type_leaves_no_job_no_row_and_no_key() {
    on_both_stores(async |app: &mut TestApp, store: &str| {
        let body = json!({"type": "nobody.handles.this", "payload": {"n": 1}});
        let refused = app
            .client
            .post(format!("{}/v1/jobs", app.address))
            .header("idempotency-key", "refusal-1")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 422, "{store}");

        let list: Value = app.get("/v1/jobs").await.json().await.unwrap();
        assert_eq!(
            list["jobs"],
            json!([]),
            "{store}: the refused job is listed"
        );
        let overview: Value = app.get("/v1/queues").await.json().await.unwrap();
        assert_eq!(
            overview["queues"],
            json!([]),
            "{store}: the refused type has a row on the overview"
        );

        // The key was not kept: once a worker handles the type, the same key and body make a
        // job (a key kept for a refused job would replay the refusal's id instead).
        app.declare_idle_queue("nobody.handles.this").await;
        let accepted = app
            .client
            .post(format!("{}/v1/jobs", app.address))
            .header("idempotency-key", "refusal-1")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(accepted.status(), 202, "{store}");
        assert!(
            accepted.headers().get("idempotent-replayed").is_none(),
            "{store}: the retry replayed a refused submit"
        );
        let list: Value = app.get("/v1/jobs").await.json().await.unwrap();
        assert_eq!(list["jobs"].as_array().map(Vec::len), Some(1), "{store}");
    })
    .await;
}

#[tokio::test]
async fn payloads_jsonb_cannot_keep_get_the_same_422_from_both_stores() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let bodies = [
        (
            "nested 100,000 deep",
            format!(r#"{{"type": "echo", "payload": {deep}}}"#),
        ),
        (
            "a lone surrogate",
            r#"{"type": "echo", "payload": "\ud800"}"#.to_owned(),
        ),
        (
            "a NUL character",
            r#"{"type": "echo", "payload": {"s": "a\u0000b"}}"#.to_owned(),
        ),
        (
            "a huge number",
            r#"{"type": "echo", "payload": [1e999999]}"#.to_owned(),
        ),
    ];
    on_both_stores(async |app: &mut TestApp, store: &str| {
        for (what, body) in &bodies {
            let response = app
                .client
                .post(format!("{}/v1/jobs", app.address))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 422, "{store}, {what}");
            let problem: Value = response.json().await.unwrap();
            assert_eq!(problem["field"], "payload", "{store}, {what}: {problem}");
        }
        // Within the limits, both keep the payload as sent.
        app.declare_idle_queue("echo").await;
        let deep_enough = format!("{}1{}", "[".repeat(64), "]".repeat(64));
        let kept = format!(
            r#"{{"type": "echo", "payload": {{"deep": {deep_enough}, "pair": "\ud83d\ude00"}}}}"#
        );
        let response = app
            .client
            .post(format!("{}/v1/jobs", app.address))
            .header("content-type", "application/json")
            .body(kept)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            202,
            "{store}: a payload 64 deep was refused"
        );
        let id = response.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let payload: Value = app
            .get(&format!("/v1/jobs/{id}/payload"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(payload["pair"], "😀", "{store}");
    })
    .await;
}
