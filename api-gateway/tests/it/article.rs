//! The article's routes, in exactly the article's shapes.

use serde_json::{Value, json};
use warren_worker::{Worker, handlers};

use crate::helpers::{spawn_app, spawn_app_with};

#[tokio::test]
async fn generate_report_then_status_then_csv() {
    let mut app = spawn_app().await;
    // No worker yet: the report stays queued, so "processing" is certain.
    app.declare_idle_queue("report.generate").await;
    let response = app
        .post_json("/generate-report", &json!({"type": "daily"}))
        .await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    let id = body["jobId"].as_str().unwrap().to_owned();
    assert_eq!(body, json!({"status": "processing", "jobId": id}));

    let status: Value = app
        .get(&format!("/report-status/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status, json!({"status": "processing"}));
    assert_eq!(app.get(&format!("/reports/{id}.csv")).await.status(), 409);

    app.spawn_worker(handlers::register(Worker::builder()))
        .await;
    app.wait_for_status(&id, "succeeded").await;
    let status: Value = app
        .get(&format!("/report-status/{id}"))
        .await
        .json()
        .await
        .unwrap();
    let host = app.address.trim_start_matches("http://");
    assert_eq!(
        status,
        json!({"status": "completed", "url": format!("http://{host}/reports/{id}.csv")})
    );

    let csv = app.get(&format!("/reports/{id}.csv")).await;
    assert_eq!(csv.status(), 200);
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let text = csv.text().await.unwrap();
    assert!(
        text.starts_with("day,orders,revenue_cents,refunds\n1,"),
        "{text}"
    );
    app.stop().await;
}

#[tokio::test]
async fn report_routes_refuse_bad_input_and_report_failure() {
    let mut app = spawn_app().await;
    app.declare_idle_queue("report.generate").await;
    let bad = app
        .post_json("/generate-report", &json!({"type": "yearly"}))
        .await;
    assert_eq!(bad.status(), 422);

    let unknown = "0193a3f0-0000-7000-8000-000000000001";
    assert_eq!(
        app.get(&format!("/report-status/{unknown}")).await.status(),
        404
    );
    assert_eq!(app.get("/reports/report.pdf").await.status(), 404);

    let body: Value = app
        .post_json("/generate-report", &json!({"type": "monthly"}))
        .await
        .json()
        .await
        .unwrap();
    let id = body["jobId"].as_str().unwrap();
    app.post(&format!("/v1/jobs/{id}/cancel")).await;
    let status: Value = app
        .get(&format!("/report-status/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        status,
        json!({"status": "failed", "error": "cancelled at the client's request"})
    );
    app.stop().await;
}

#[tokio::test]
async fn users_are_answered_synchronously() {
    let mut app = spawn_app().await;
    app.spawn_worker(Worker::builder().handler("user.get", handlers::get_user))
        .await;

    let found = app.get("/users/1").await;
    assert_eq!(found.status(), 200);
    let user: Value = found.json().await.unwrap();
    assert_eq!(
        user,
        json!({"id": 1, "name": "Ada Lovelace", "email": "ada@example.com"})
    );

    let missing = app.get("/users/999").await;
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.headers()["content-type"],
        "application/problem+json"
    );
    // A lookup that finds nobody is a normal answer: the job succeeded, nothing is dead.
    let lookups: Value = app
        .get("/v1/jobs?type=user.get")
        .await
        .json()
        .await
        .unwrap();
    let statuses: Vec<&Value> = lookups["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| &job["status"])
        .collect();
    assert_eq!(statuses, [&json!("succeeded"), &json!("succeeded")]);
    let dead = app.topology().dead_queue();
    let probe = app.connection.create_channel().await.unwrap();
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let state = probe
        .queue_declare(dead.into(), passive, lapin::types::FieldTable::default())
        .await
        .unwrap();
    assert_eq!(
        state.message_count(),
        0,
        "a not-found lookup was dead-lettered"
    );
    app.stop().await;
}

#[tokio::test]
async fn users_answer_504_when_no_worker_answers_in_time() {
    let mut app = spawn_app_with(|config| config.user_timeout_ms = 300).await;
    app.declare_idle_queue("user.get").await;
    let response = app.get("/users/1").await;
    assert_eq!(response.status(), 504);
    let problem: Value = response.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("no worker answered")
    );
    app.stop().await;
}
