//! Bad HTTP input gets the right 4xx with a problem body that says what to fix. The router
//! answers these before anything reaches RabbitMQ, so the tests drive it with `oneshot`, with
//! no server, worker or broker connection.

use axum::{
    body::Body,
    http::{Method, Request, StatusCode, header::HeaderMap},
};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::helpers::router;

/// Sends one request to a fresh router; its status, headers and JSON body.
async fn call(request: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    let response = router().await.oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (parts.status, parts.headers, json)
}

/// Checks the answer is a problem with `status` and a detail; its body.
fn problem(answer: (StatusCode, HeaderMap, Value), status: u16) -> (HeaderMap, Value) {
    let (code, headers, body) = answer;
    assert_eq!(code.as_u16(), status, "{body}");
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(body["status"], status);
    assert!(!body["detail"].as_str().unwrap().is_empty());
    (headers, body)
}

fn post(content_type: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut request = Request::post("/v1/jobs");
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    request.body(body.into()).unwrap()
}

fn submit(body: &Value) -> Request<Body> {
    post(Some("application/json"), body.to_string())
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

#[tokio::test]
async fn malformed_json_is_400() {
    let (_, body) = problem(
        call(post(Some("application/json"), "{\"type\": ")).await,
        400,
    );
    assert_eq!(body["type"], "urn:warren:problem:malformed-json");
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415() {
    let (_, body) = problem(
        call(post(Some("text/plain"), "{\"type\":\"echo\"}")).await,
        415,
    );
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("Content-Type: application/json"),
        "{detail}"
    );
    problem(call(post(None, "{\"type\":\"echo\"}")).await, 415);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let big = format!(
        "{{\"type\":\"echo\",\"payload\":\"{}\"}}",
        "x".repeat(1024 * 1024 + 1)
    );
    problem(call(post(Some("application/json"), big)).await, 413);
}

#[tokio::test]
async fn invalid_fields_are_422_naming_the_field() {
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
        let (_, refused) = problem(call(submit(&body)).await, 422);
        assert_eq!(refused["field"], field, "{body} → {refused}");
    }
}

#[tokio::test]
async fn wrong_shapes_and_unknown_fields_are_422_in_warrens_words() {
    for body in [
        json!({}),
        json!({"type": 5}),
        json!({"type": "echo", "max_attempt": 3}),
        json!([1]),
    ] {
        let (_, refused) = problem(call(submit(&body)).await, 422);
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
    // serde would read an array positionally as the struct's fields.
    let (_, refused) = problem(call(submit(&json!(["echo"]))).await, 422);
    assert!(
        refused["detail"].as_str().unwrap().contains("JSON object"),
        "{refused}"
    );
    let typo = json!({"type": "echo", "max_attempt": 3});
    let (_, refused) = problem(call(submit(&typo)).await, 422);
    let detail = refused["detail"].as_str().unwrap();
    assert!(detail.contains("unknown field `max_attempt`"), "{detail}");
    // Shape errors name their field, as the other validation errors do.
    for (body, field) in [
        (json!({"type": "echo", "max_attempt": 3}), "max_attempt"),
        (json!({"payload": {}}), "type"),
        (json!({"type": 5}), "type"),
        (json!({"type": "echo", "timeout_ms": "soon"}), "timeout_ms"),
    ] {
        let (_, refused) = problem(call(submit(&body)).await, 422);
        assert_eq!(refused["field"], field, "{body} → {refused}");
    }
}

#[tokio::test]
async fn job_lookup_refuses_bad_ids_and_unknown_jobs() {
    let (_, bad) = problem(call(get("/v1/jobs/not-a-uuid")).await, 400);
    assert_eq!(bad["type"], "urn:warren:problem:malformed-id");
    let unknown = call(get("/v1/jobs/0193a3f0-0000-7000-8000-000000000001")).await;
    assert_eq!(
        problem(unknown, 404).1["type"],
        "urn:warren:problem:job-not-found"
    );
    problem(call(get("/v2/nothing")).await, 404);
}

#[tokio::test]
async fn a_method_a_path_does_not_take_is_405_with_a_problem_and_allow() {
    let request = Request::builder()
        .method(Method::PUT)
        .uri("/v1/jobs")
        .body(Body::empty())
        .unwrap();
    let (headers, body) = problem(call(request).await, 405);
    let allow = headers["allow"].to_str().unwrap();
    assert!(allow.contains("POST") && allow.contains("GET"), "{allow}");
    assert_eq!(body["type"], "urn:warren:problem:method-not-allowed");
    assert!(body["detail"].as_str().unwrap().contains("PUT"), "{body}");
}
