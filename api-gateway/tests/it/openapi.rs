//! `/openapi.json` is a valid OpenAPI 3 document that lists every route; `/docs` renders it.

use serde_json::{Value, json};

use crate::{
    auth::with_admin,
    helpers::{spawn_app, spawn_app_with},
};

/// Every route of the contract, as (method, OpenAPI path).
const ROUTES: [(&str, &str); 34] = [
    ("post", "/v1/jobs"),
    ("get", "/v1/jobs"),
    ("get", "/v1/jobs/{id}"),
    ("get", "/v1/jobs/{id}/events"),
    ("post", "/v1/jobs/{id}/cancel"),
    ("post", "/v1/jobs/{id}/retry"),
    ("get", "/v1/jobs/{id}/deliveries"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/docs"),
    ("post", "/generate-report"),
    ("get", "/report-status/{id}"),
    ("get", "/reports/{file}"),
    ("get", "/users/{id}"),
    ("post", "/v1/schedules"),
    ("get", "/v1/schedules"),
    ("get", "/v1/schedules/{id}"),
    ("patch", "/v1/schedules/{id}"),
    ("delete", "/v1/schedules/{id}"),
    ("post", "/v1/keys"),
    ("get", "/v1/keys"),
    ("delete", "/v1/keys/{id}"),
    ("get", "/v1/queues"),
    ("get", "/v1/queues/{type}"),
    ("patch", "/v1/queues/{type}"),
    ("get", "/v1/jobs/{id}/payload"),
    ("get", "/v1/dead-letters"),
    ("post", "/v1/workflows"),
    ("get", "/v1/workflows"),
    ("get", "/v1/workflows/{id}"),
    ("get", "/v1/workflows/{id}/events"),
    ("post", "/v1/workflows/{id}/cancel"),
];

/// Every `$ref` anywhere in `value`.
fn refs(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get("$ref") {
                found.push(target.clone());
            }
            map.values().for_each(|v| refs(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
        _ => {}
    }
}

#[tokio::test]
async fn the_openapi_document_is_valid_and_lists_every_route() {
    let app = spawn_app().await;
    let response = app.get("/openapi.json").await;
    assert_eq!(response.status(), 200);
    let spec: Value = response.json().await.unwrap();

    assert!(
        spec["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        spec["openapi"]
    );
    assert!(spec["info"]["title"].is_string() && spec["info"]["version"].is_string());
    for (method, path) in ROUTES {
        let operation = &spec["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is not described");
        let responses = operation["responses"].as_object().unwrap();
        assert!(!responses.is_empty(), "{method} {path} has no responses");
    }
    let webhook = &spec["paths"]["/v1/jobs"]["post"]["callbacks"]["jobFinished"];
    let delivery = &webhook["{$request.body#/callback_url}"]["post"];
    assert_eq!(
        delivery["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Job",
        "the callback a job's callback_url receives is described"
    );
    let workflow_hook = &spec["paths"]["/v1/workflows"]["post"]["callbacks"]["workflowFinished"];
    assert_eq!(
        workflow_hook["{$request.body#/callback_url}"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"]["$ref"],
        "#/components/schemas/WorkflowView",
        "the callback a workflow's callback_url receives is described"
    );
    // A result is whatever the handler returned: any JSON value (`echo` of `false` is `false`).
    let result = &spec["components"]["schemas"]["Job"]["properties"]["result"];
    assert!(
        result.get("type").is_none() || result["type"].as_array().is_some_and(|t| t.len() >= 6),
        "a job's result may be any JSON value: {result}"
    );
    // Client generators name functions after operationIds and need a description on every
    // response (OpenAPI requires one).
    let mut ids = std::collections::HashSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap_or_default();
            assert!(
                !id.is_empty() && ids.insert(id.to_owned()),
                "{method} {path}: operationId {id:?} is missing or repeats"
            );
            for (status, response) in operation["responses"].as_object().unwrap() {
                assert!(
                    response["description"].is_string(),
                    "{method} {path} {status} has no description"
                );
            }
        }
    }
    assert!(ids.contains("submitJob") && ids.contains("listSchedules"));
    let operations: usize = spec["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    assert_eq!(
        operations,
        ROUTES.len(),
        "the document describes routes the contract does not name"
    );

    let mut targets = Vec::new();
    refs(&spec, &mut targets);
    assert!(!targets.is_empty());
    for target in targets {
        let name = target
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("odd $ref {target}"));
        assert!(
            spec["components"]["schemas"][name].is_object(),
            "{target} does not resolve"
        );
    }
    let job = &spec["components"]["schemas"]["Job"]["properties"];
    for field in [
        "id",
        "type",
        "status",
        "attempt",
        "max_attempts",
        "progress",
        "result",
        "error",
        "created_at",
        "updated_at",
        "started_at",
        "finished_at",
        "run_at",
    ] {
        assert!(job[field].is_object(), "Job.{field} missing");
    }
    let submit = &spec["components"]["schemas"]["SubmitRequest"]["properties"];
    assert!(submit["run_at"].is_object() && submit["delay_ms"].is_object());
    let schedule = &spec["components"]["schemas"]["Schedule"]["properties"];
    for field in [
        "cron",
        "timezone",
        "next_run_at",
        "last_run_at",
        "last_job_id",
    ] {
        assert!(schedule[field].is_object(), "Schedule.{field} missing");
    }

    // The constraints the server checks are in the document, so generated clients agree.
    let id = &spec["paths"]["/v1/jobs/{id}"]["get"]["parameters"][0]["schema"];
    assert_eq!(id["format"], "uuid", "{id}");
    let submit_type = &spec["components"]["schemas"]["SubmitRequest"]["properties"]["type"];
    assert_eq!(submit_type["pattern"], "^[a-z0-9][a-z0-9._-]{0,99}$");
    let attempts = &spec["components"]["schemas"]["SubmitRequest"]["properties"]["max_attempts"];
    assert_eq!(
        (&attempts["minimum"], &attempts["maximum"]),
        (&json!(1), &json!(100))
    );
    let list = spec["paths"]["/v1/jobs"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let param = |name: &str| list.iter().find(|p| p["name"] == name).unwrap()["schema"].clone();
    assert_eq!(param("status")["$ref"], "#/components/schemas/JobStatus");
    assert_eq!(
        (
            param("limit")["minimum"].clone(),
            param("limit")["maximum"].clone()
        ),
        (json!(1), json!(500))
    );
    let statuses = spec["components"]["schemas"]["JobStatus"]["enum"]
        .as_array()
        .unwrap();
    assert_eq!(
        statuses.len(),
        8,
        "waiting, scheduled, queued, running, retrying and the three terminal ones"
    );
    for (path, method, status) in [
        ("/generate-report", "post", "400"),
        ("/generate-report", "post", "415"),
        ("/report-status/{id}", "get", "400"),
    ] {
        assert!(
            spec["paths"][path][method]["responses"][status].is_object(),
            "{method} {path} does not document {status}"
        );
    }

    let docs = app.get("/docs").await;
    assert!(
        docs.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(docs.text().await.unwrap().contains("/openapi.json"));
    app.stop().await;
}

#[tokio::test]
async fn the_document_declares_keys_only_when_the_gateway_needs_them() {
    let app = spawn_app_with(with_admin).await;
    let spec: Value = app.get("/openapi.json").await.json().await.unwrap();
    assert_eq!(
        spec["components"]["securitySchemes"]["bearer"]["scheme"], "bearer",
        "the bearer scheme is declared"
    );
    for (method, path, protected) in [
        ("post", "/v1/jobs", true),
        ("get", "/report-status/{id}", true),
        ("delete", "/v1/keys/{id}", true),
        ("get", "/healthz", false),
        ("get", "/openapi.json", false),
    ] {
        let operation = &spec["paths"][path][method];
        assert_eq!(
            !operation["security"].as_array().unwrap().is_empty(),
            protected,
            "{method} {path}: {}",
            operation["security"]
        );
        assert_eq!(operation["responses"]["401"].is_object(), protected);
        assert_eq!(operation["responses"]["429"].is_object(), protected);
    }
    app.stop().await;

    // An open gateway (no WARREN_ADMIN_KEY) needs no key: its document says so, and a request
    // that carries some key anyway is served, not refused.
    let app = spawn_app().await;
    let spec: Value = app.get("/openapi.json").await.json().await.unwrap();
    assert!(
        spec["components"]["securitySchemes"].is_null(),
        "an open gateway declares a bearer scheme"
    );
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            assert!(
                operation["security"].is_null() && operation["responses"]["401"].is_null(),
                "{method} {path} needs a key on an open gateway"
            );
        }
    }
    let listed = app
        .client
        .get(format!("{}/v1/jobs", app.address))
        .header("authorization", "Bearer made-up")
        .send()
        .await
        .unwrap();
    assert_eq!(
        listed.status(),
        200,
        "an open gateway refused a made-up key"
    );
    app.stop().await;
}
