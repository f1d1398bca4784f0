//! Bad HTTP input gets the right 4xx with a problem body that says what to fix.

use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

async fn problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert!(!body["detail"].as_str().unwrap().is_empty());
    body
}

async fn post_raw(
    app: &TestApp,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let mut request = app
        .client
        .post(format!("{}/v1/jobs", app.address))
        .body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn malformed_json_is_400() {
    let app = spawn_app().await;
    let body = problem(
        post_raw(&app, Some("application/json"), "{\"type\": ").await,
        400,
    )
    .await;
    assert_eq!(body["type"], "urn:warren:problem:malformed-json");
    app.stop().await;
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415() {
    let app = spawn_app().await;
    let body = problem(
        post_raw(&app, Some("text/plain"), "{\"type\":\"echo\"}").await,
        415,
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("Content-Type: application/json")
    );
    problem(post_raw(&app, None, "{\"type\":\"echo\"}").await, 415).await;
    app.stop().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let app = spawn_app().await;
    let big = format!(
        "{{\"type\":\"echo\",\"payload\":\"{}\"}}",
        "x".repeat(1024 * 1024 + 1)
    );
    problem(post_raw(&app, Some("application/json"), big).await, 413).await;
    app.stop().await;
}

#[tokio::test]
async fn invalid_fields_are_422_naming_the_field() {
    let app = spawn_app().await;
    let cases = [
        (json!({"type": "Bad Type"}), "type"),
        (json!({"type": ""}), "type"),
        (json!({"type": "echo", "max_attempts": 0}), "max_attempts"),
        (json!({"type": "echo", "max_attempts": 101}), "max_attempts"),
        (json!({"type": "echo", "timeout_ms": 0}), "timeout_ms"),
        (
            json!({"type": "echo", "timeout_ms": 86_400_000}),
            "timeout_ms",
        ),
        (
            json!({"type": "echo", "callback_url": "ftp://x"}),
            "callback_url",
        ),
    ];
    for (body, field) in cases {
        let refused = problem(app.submit(&body).await, 422).await;
        assert_eq!(refused["field"], field, "{body} → {refused}");
    }
    app.stop().await;
}

#[tokio::test]
async fn wrong_shapes_and_unknown_fields_are_422() {
    let app = spawn_app().await;
    for body in [
        json!({}),
        json!({"type": 5}),
        json!({"type": "echo", "max_attempt": 3}),
        json!([1]),
    ] {
        let refused = problem(app.submit(&body).await, 422).await;
        assert_eq!(
            refused["type"], "urn:warren:problem:invalid-field",
            "{body}"
        );
        let detail = refused["detail"].as_str().unwrap();
        assert!(
            !detail.contains("Failed to"),
            "not in Warren's words: {detail}"
        );
    }
    let typo = problem(
        app.submit(&json!({"type": "echo", "max_attempt": 3})).await,
        422,
    )
    .await;
    let detail = typo["detail"].as_str().unwrap();
    assert!(detail.contains("unknown field `max_attempt`"), "{detail}");
    app.stop().await;
}

#[tokio::test]
async fn job_lookup_refuses_bad_ids_and_unknown_jobs() {
    let app = spawn_app().await;
    let url = |id: &str| format!("{}/v1/jobs/{id}", app.address);
    let bad = app.client.get(url("not-a-uuid")).send().await.unwrap();
    assert_eq!(
        problem(bad, 400).await["type"],
        "urn:warren:problem:malformed-id"
    );
    let unknown = app
        .client
        .get(url("0193a3f0-0000-7000-8000-000000000001"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        problem(unknown, 404).await["type"],
        "urn:warren:problem:job-not-found"
    );
    let no_route = app
        .client
        .get(format!("{}/v2/nothing", app.address))
        .send()
        .await
        .unwrap();
    problem(no_route, 404).await;
    app.stop().await;
}

#[tokio::test]
async fn a_method_a_path_does_not_take_is_405_with_a_problem_and_allow() {
    let app = spawn_app().await;
    let response = app
        .client
        .put(format!("{}/v1/jobs", app.address))
        .send()
        .await
        .unwrap();
    let allow = response.headers()["allow"].to_str().unwrap().to_owned();
    assert!(allow.contains("POST") && allow.contains("GET"), "{allow}");
    let body = problem(response, 405).await;
    assert_eq!(body["type"], "urn:warren:problem:method-not-allowed");
    assert!(body["detail"].as_str().unwrap().contains("PUT"), "{body}");
    app.stop().await;
}
