//! Workflows against the real broker, on both stores: chains pass results along, fan-outs
//! join, a failure cancels only its dependents, a cancel stops the rest, every validation case
//! is refused with its field, the stream tells each step's change, and a batch runs.

use serde_json::{Value, json};
use tokio::time::Instant;
use warren_gateway::GatewayConfig;
use warren_worker::{HandlerError, JobContext, Worker, handlers};

use crate::{
    helpers::{DEADLINE, TestApp, TestSchema, spawn_app_with},
    webhooks::{Receiver, Reply, verifies, webhooks_on},
};

/// A handler that fails for good.
async fn boom(_context: JobContext) -> Result<Value, HandlerError> {
    Err(HandlerError::permanent("boom", "this step always fails"))
}

/// A gateway (on PostgreSQL in `schema` when given) with `echo`, `sleep` and `boom` workers.
pub async fn app_on(schema: Option<&TestSchema>) -> TestApp {
    let url = schema.map(TestSchema::url);
    let mut app = spawn_app_with(|config: &mut GatewayConfig| {
        config.database_url = url;
    })
    .await;
    app.spawn_worker(
        Worker::builder()
            .handler("echo", handlers::echo)
            .handler("sleep", handlers::sleep)
            .handler("boom", boom),
    )
    .await;
    app
}

/// `POST /v1/workflows`, asserting `201`; the workflow.
pub async fn submit_workflow(app: &TestApp, body: &Value) -> Value {
    let response = app.post_json("/v1/workflows", body).await;
    let status = response.status();
    let location = response
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_owned());
    let workflow: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "workflow refused: {workflow}");
    assert_eq!(
        location.as_deref(),
        Some(format!("/v1/workflows/{}", workflow["id"].as_str().unwrap()).as_str())
    );
    workflow
}

/// Long-polls the workflow until it has ended; fails the test at the deadline.
pub async fn finished(app: &TestApp, id: &str) -> Value {
    let started = Instant::now();
    loop {
        let response = app.get(&format!("/v1/workflows/{id}?wait=5")).await;
        assert_eq!(response.status(), 200);
        let workflow: Value = response.json().await.unwrap();
        if workflow["status"] != "running" {
            return workflow;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the workflow never finished: {workflow}"
        );
    }
}

/// The job of step `name` of `workflow`.
async fn step_job(app: &TestApp, workflow: &Value, name: &str) -> Value {
    let step = workflow["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {workflow}"));
    app.job(step["job_id"].as_str().unwrap()).await
}

fn statuses(workflow: &Value) -> Vec<(String, String)> {
    workflow["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_chain_of_three_passes_each_result_to_the_next_on_both_stores() {
    let schema = TestSchema::create().await;
    for store in [None, Some(&schema)] {
        let app = app_on(store).await;
        let submitted = submit_workflow(
            &app,
            &json!({"steps": [
                {"name": "fetch", "type": "echo", "payload": {"month": 11}},
                {"name": "transform", "type": "echo", "payload": {"op": "sum"}, "depends_on": ["fetch"]},
                {"name": "load", "type": "echo", "depends_on": ["transform"]},
            ]}),
        )
        .await;
        assert_eq!(submitted["status"], "running");
        let steps = statuses(&submitted);
        assert_eq!(steps[1].1, "waiting", "{submitted}");
        assert_eq!(steps[2].1, "waiting", "{submitted}");
        let id = submitted["id"].as_str().unwrap();
        let workflow = finished(&app, id).await;
        assert_eq!(workflow["status"], "succeeded", "{workflow}");
        assert!(workflow["finished_at"].is_string());

        let fetch = step_job(&app, &workflow, "fetch").await;
        assert_eq!(
            fetch["result"],
            json!({"month": 11}),
            "no parents: unchanged"
        );
        let load = step_job(&app, &workflow, "load").await;
        assert_eq!(
            load["result"],
            json!({"payload": {}, "parents": {"transform": {
                "payload": {"op": "sum"}, "parents": {"fetch": {"month": 11}}
            }}}),
            "each step saw its parent's result"
        );
        assert_eq!(load["workflow_id"], id);
        assert_eq!(load["step"], "load");
        // Each step was settled by the gateway that applied its outcome, never by the sweeper
        // (whose count tells an operator a gateway died or failed mid-settle).
        let metrics = app.get("/metrics").await.text().await.unwrap();
        assert!(
            metrics.contains("warren_workflow_settles_total{reason=\"after_step\"}"),
            "{metrics}"
        );
        assert!(
            !metrics.contains("warren_workflow_settles_total{reason=\"swept\"}"),
            "{metrics}"
        );

        let listed: Value = app
            .get(&format!("/v1/jobs?workflow={id}"))
            .await
            .json()
            .await
            .unwrap();
        let mut names: Vec<&str> = listed["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|job| job["step"].as_str().unwrap())
            .collect();
        names.sort_unstable();
        assert_eq!(names, ["fetch", "load", "transform"]);
        app.stop().await;
    }
    schema.drop_schema().await;
}

#[tokio::test]
async fn a_fan_out_of_twenty_joins_in_one_step_that_sees_every_result_on_both_stores() {
    let schema = TestSchema::create().await;
    for store in [None, Some(&schema)] {
        let app = app_on(store).await;
        let mut steps: Vec<Value> = (0..20)
            .map(|i| json!({"name": format!("part-{i}"), "type": "echo", "payload": {"i": i}}))
            .collect();
        let parts: Vec<String> = (0..20).map(|i| format!("part-{i}")).collect();
        steps.push(json!({"name": "join", "type": "echo", "depends_on": parts}));
        let submitted = submit_workflow(&app, &json!({ "steps": steps })).await;
        let workflow = finished(&app, submitted["id"].as_str().unwrap()).await;
        assert_eq!(workflow["status"], "succeeded", "{workflow}");
        let join = step_job(&app, &workflow, "join").await;
        let parents = join["result"]["parents"].as_object().unwrap();
        assert_eq!(parents.len(), 20);
        for i in 0..20 {
            assert_eq!(parents[&format!("part-{i}")], json!({"i": i}));
        }
        assert_eq!(join["attempt"], 1);
        app.stop().await;
    }
    schema.drop_schema().await;
}

#[tokio::test]
async fn a_failure_cancels_only_the_steps_that_depend_on_it_on_both_stores() {
    let schema = TestSchema::create().await;
    for store in [None, Some(&schema)] {
        let app = app_on(store).await;
        let submitted = submit_workflow(
            &app,
            &json!({"steps": [
                {"name": "bad", "type": "boom", "max_attempts": 1},
                {"name": "after-bad", "type": "echo", "depends_on": ["bad"]},
                {"name": "after-that", "type": "echo", "depends_on": ["after-bad"]},
                {"name": "good", "type": "echo"},
                {"name": "after-good", "type": "echo", "depends_on": ["good"]},
            ]}),
        )
        .await;
        let workflow = finished(&app, submitted["id"].as_str().unwrap()).await;
        assert_eq!(workflow["status"], "failed", "{workflow}");
        let by_name: std::collections::HashMap<String, String> =
            statuses(&workflow).into_iter().collect();
        assert_eq!(by_name["bad"], "failed");
        assert_eq!(by_name["after-bad"], "cancelled");
        assert_eq!(by_name["after-that"], "cancelled");
        assert_eq!(by_name["good"], "succeeded");
        assert_eq!(by_name["after-good"], "succeeded");
        for never_ran in ["after-bad", "after-that"] {
            let job = step_job(&app, &workflow, never_ran).await;
            assert!(job["started_at"].is_null(), "{never_ran} ran: {job}");
        }
        // A failed step is not re-driven alone.
        let bad = step_job(&app, &workflow, "bad").await;
        let retried = app
            .post(&format!("/v1/jobs/{}/retry", bad["id"].as_str().unwrap()))
            .await;
        assert_eq!(retried.status(), 409);
        app.stop().await;
    }
    schema.drop_schema().await;
}

#[tokio::test]
async fn cancelling_a_workflow_stops_its_running_step_and_starts_nothing_more_on_both_stores() {
    let schema = TestSchema::create().await;
    for store in [None, Some(&schema)] {
        let app = app_on(store).await;
        let submitted = submit_workflow(
            &app,
            &json!({"steps": [
                {"name": "long", "type": "sleep", "payload": {"ms": 60_000}},
                {"name": "next", "type": "echo", "depends_on": ["long"]},
            ]}),
        )
        .await;
        let id = submitted["id"].as_str().unwrap();
        let long_id = submitted["steps"][0]["job_id"].as_str().unwrap();
        app.wait_for_status(long_id, "running").await;
        let cancelled = app.post(&format!("/v1/workflows/{id}/cancel")).await;
        assert_eq!(cancelled.status(), 202);
        let workflow = finished(&app, id).await;
        assert_eq!(workflow["status"], "cancelled", "{workflow}");
        assert_eq!(
            statuses(&workflow),
            [
                ("long".to_owned(), "cancelled".to_owned()),
                ("next".to_owned(), "cancelled".to_owned())
            ]
        );
        let again = app.post(&format!("/v1/workflows/{id}/cancel")).await;
        assert_eq!(again.status(), 409);
        app.stop().await;
    }
    schema.drop_schema().await;
}

#[tokio::test]
async fn every_invalid_workflow_is_refused_with_what_is_wrong_and_leaves_nothing() {
    let app = app_on(None).await;
    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"name": format!("s{i}"), "type": "echo"}))
        .collect();
    let cases = [
        (
            json!({"steps": [{"name": "a", "type": "echo"}, {"name": "a", "type": "echo"}]}),
            "steps[1].name",
            "duplicate",
        ),
        (
            json!({"steps": [{"name": "a", "type": "echo", "depends_on": ["ghost"]}]}),
            "steps[0].depends_on",
            "ghost",
        ),
        (
            json!({"steps": [
                {"name": "a", "type": "echo", "depends_on": ["c"]},
                {"name": "b", "type": "echo", "depends_on": ["a"]},
                {"name": "c", "type": "echo", "depends_on": ["b"]},
            ]}),
            "steps",
            "cycle",
        ),
        (
            json!({"steps": [
                {"name": "a", "type": "echo"}, {"name": "b", "type": "echo"},
                {"name": "c", "type": "echo"}, {"name": "d", "type": "NOT A TYPE"},
            ]}),
            "steps[3].type",
            "",
        ),
        (
            json!({"steps": [{"name": "a", "type": "echo"}, {"name": "b", "type": "nobody.handles"}]}),
            "steps[1].type",
            "no worker handles",
        ),
        (json!({ "steps": too_many }), "steps", "at most 1000"),
        (
            json!({"steps": [{"name": "a", "type": "echo", "priority": "urgent"}]}),
            "steps[0].priority",
            "high, normal or low",
        ),
    ];
    for (body, field, says) in cases {
        let response = app.post_json("/v1/workflows", &body).await;
        assert_eq!(response.status(), 422);
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["field"], field, "{problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(says),
            "{problem}"
        );
    }
    let cycle = app
        .post_json(
            "/v1/workflows",
            &json!({"steps": [
                {"name": "x", "type": "echo", "depends_on": ["y"]},
                {"name": "y", "type": "echo", "depends_on": ["x"]},
            ]}),
        )
        .await;
    let problem: Value = cycle.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("\"x\"") && detail.contains("\"y\""),
        "{detail}"
    );
    let listed: Value = app.get("/v1/workflows").await.json().await.unwrap();
    assert_eq!(listed["workflows"], json!([]), "a refusal leaves nothing");
    let jobs: Value = app.get("/v1/jobs").await.json().await.unwrap();
    assert_eq!(jobs["jobs"], json!([]), "a refusal leaves no job");
    app.stop().await;
}

#[tokio::test]
async fn a_batch_of_two_hundred_independent_steps_succeeds_on_both_stores() {
    let schema = TestSchema::create().await;
    for store in [None, Some(&schema)] {
        let app = app_on(store).await;
        let steps: Vec<Value> = (0..200)
            .map(|i| json!({"name": format!("item-{i}"), "type": "echo", "payload": {"i": i}}))
            .collect();
        let submitted = submit_workflow(&app, &json!({ "steps": steps })).await;
        assert!(
            statuses(&submitted)
                .iter()
                .all(|(_, status)| status != "waiting"),
            "a batch starts at once"
        );
        let workflow = finished(&app, submitted["id"].as_str().unwrap()).await;
        assert_eq!(workflow["status"], "succeeded");
        assert_eq!(workflow["steps"].as_array().unwrap().len(), 200);
        let listed: Value = app
            .get("/v1/workflows?status=succeeded")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(listed["workflows"][0]["id"], workflow["id"]);
        app.stop().await;
    }
    schema.drop_schema().await;
}

#[tokio::test]
async fn the_event_stream_tells_each_step_change_and_ends_with_the_workflow() {
    let app = app_on(None).await;
    let submitted = submit_workflow(
        &app,
        &json!({"steps": [
            {"name": "first", "type": "sleep", "payload": {"ms": 200}},
            {"name": "second", "type": "echo", "depends_on": ["first"]},
        ]}),
    )
    .await;
    let id = submitted["id"].as_str().unwrap();
    let response = app.get(&format!("/v1/workflows/{id}/events")).await;
    assert_eq!(response.status(), 200);
    let body = tokio::time::timeout(DEADLINE, response.text())
        .await
        .expect("the stream ended")
        .unwrap();
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut last_event = String::new();
    for line in body.lines() {
        if let Some(event) = line.strip_prefix("event: ") {
            last_event = event.to_owned();
        } else if let Some(data) = line.strip_prefix("data: ") {
            let data: Value = serde_json::from_str(data).unwrap();
            if last_event == "step" {
                assert_eq!(data["workflow_id"], id);
                seen.push((
                    data["name"].as_str().unwrap().to_owned(),
                    data["status"].as_str().unwrap().to_owned(),
                ));
            } else {
                assert_eq!(last_event, "workflow");
                assert_eq!(data["status"], "succeeded");
            }
        }
    }
    assert_eq!(last_event, "workflow", "ends with the workflow: {body}");
    let of = |name: &str| -> Vec<&str> {
        seen.iter()
            .filter(|(n, _)| n == name)
            .map(|(_, s)| s.as_str())
            .collect()
    };
    assert_eq!(of("second").first(), Some(&"waiting"), "{seen:?}");
    assert_eq!(of("second").last(), Some(&"succeeded"), "{seen:?}");
    assert_eq!(of("first").last(), Some(&"succeeded"), "{seen:?}");
    app.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_gives_the_same_workflow_and_an_unknown_id_is_not_found() {
    let app = app_on(None).await;
    let body = json!({"steps": [{"name": "only", "type": "echo"}]});
    let send = || {
        app.client
            .post(format!("{}/v1/workflows", app.address))
            .header("idempotency-key", "wf-1")
            .json(&body)
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = send().await.unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    let listed: Value = app.get("/v1/workflows").await.json().await.unwrap();
    assert_eq!(listed["workflows"].as_array().unwrap().len(), 1);
    let unknown = app
        .get("/v1/workflows/0193a3f0-7c1a-7b0e-8f00-0123456789ab")
        .await;
    assert_eq!(unknown.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn a_finished_workflow_calls_its_callback_url_signed_like_a_job_on_both_stores() {
    let schema = TestSchema::create().await;
    for store in [None, Some(&schema)] {
        let url = store.map(TestSchema::url);
        let mut app = spawn_app_with(|config: &mut GatewayConfig| {
            webhooks_on(config);
            config.database_url = url;
        })
        .await;
        app.spawn_worker(
            Worker::builder()
                .handler("echo", handlers::echo)
                .handler("boom", boom),
        )
        .await;
        // The first attempt gets a 500: the workflow's delivery is retried as a job's is.
        let mut receiver = Receiver::start(&[Reply::Status(500)]).await;
        let submitted = submit_workflow(
            &app,
            &json!({"callback_url": receiver.url, "steps": [
                {"name": "ok", "type": "echo"},
                {"name": "bad", "type": "boom", "max_attempts": 1},
            ]}),
        )
        .await;
        let first = receiver.next().await;
        let again = receiver.next().await;
        assert!(verifies(&again), "signed");
        assert_eq!(first.headers["webhook-id"], again.headers["webhook-id"]);
        let body: Value = serde_json::from_slice(&again.body).unwrap();
        assert_eq!(body["id"], submitted["id"]);
        assert_eq!(body["status"], "failed");
        assert_eq!(body["steps"].as_array().unwrap().len(), 2);
        app.stop().await;
    }
    schema.drop_schema().await;
}

/// A chain of `n` steps of `step(i)`, each depending on the one before.
fn chain(n: usize, step: impl Fn(usize) -> Value) -> Value {
    let steps: Vec<Value> = (0..n)
        .map(|i| {
            let mut body = step(i);
            body["name"] = json!(format!("s{i}"));
            if i > 0 {
                body["depends_on"] = json!([format!("s{}", i - 1)]);
            }
            body
        })
        .collect();
    json!({ "steps": steps })
}

#[tokio::test]
async fn a_hundred_step_chain_and_a_thousand_step_batch_finish() {
    let app = app_on(None).await;
    let sleeps = chain(100, |_| json!({"type": "sleep", "payload": {"ms": 0}}));
    let submitted = submit_workflow(&app, &sleeps).await;
    let workflow = finished(&app, submitted["id"].as_str().unwrap()).await;
    assert_eq!(workflow["status"], "succeeded");
    let batch: Vec<Value> = (0..1000)
        .map(|i| json!({"name": format!("s{i}"), "type": "echo"}))
        .collect();
    let submitted = submit_workflow(&app, &json!({ "steps": batch })).await;
    let workflow = finished(&app, submitted["id"].as_str().unwrap()).await;
    assert_eq!(workflow["status"], "succeeded");
    app.stop().await;
}

#[tokio::test]
async fn a_result_nested_too_deep_fails_its_step_with_why_instead_of_stalling_the_workflow() {
    // Each echo step answers {"payload", "parents": {<previous answer>}}: two levels deeper
    // per step, so a long echo chain's results pass the 100 levels Warren keeps.
    let app = app_on(None).await;
    let echoes = chain(100, |_| json!({"type": "echo"}));
    let submitted = submit_workflow(&app, &echoes).await;
    let workflow = finished(&app, submitted["id"].as_str().unwrap()).await;
    assert_eq!(workflow["status"], "failed", "{workflow}");
    let steps = workflow["steps"].as_array().unwrap();
    let failed = steps.iter().position(|s| s["status"] == "failed").unwrap();
    assert!(steps[..failed].iter().all(|s| s["status"] == "succeeded"));
    assert!(
        steps[failed + 1..]
            .iter()
            .all(|s| s["status"] == "cancelled")
    );
    let job = app.job(steps[failed]["job_id"].as_str().unwrap()).await;
    assert_eq!(job["error"]["kind"], "invalid_result", "{job}");
    assert!(
        job["error"]["message"]
            .as_str()
            .unwrap()
            .contains("100 deep"),
        "{job}"
    );
    app.stop().await;
}
