//! The dashboard in a real browser (headless Chromium through `chromedriver`), against a
//! running gateway (keys on) and worker: sign in, watch a job appear and finish, open it, cancel
//! a long `sleep` job with its button, re-drive a failed one, follow and cancel a workflow.
//!
//! Where `chromedriver` is not installed the test says so and passes without a browser, unless
//! `WARREN_REQUIRE_BROWSER` is set (CI sets it, and installs Chromium). With
//! `WARREN_UI_SCREENSHOTS=<dir>` it saves the three pages there (`scripts/ui-screenshots.sh`).

use reqwest::Method;
use serde_json::{Value, json};
use warren_worker::{Worker, handlers};

use crate::{
    auth::{ADMIN, call, with_admin},
    helpers::{TestApp, spawn_app_with},
    webdriver::{Browser, chromedriver},
};

async fn submit(app: &TestApp, body: &Value) -> String {
    let response = call(app, Method::POST, "/v1/jobs", Some(ADMIN), Some(body)).await;
    assert_eq!(response.status(), 202);
    let job: Value = response.json().await.unwrap();
    job["id"].as_str().unwrap().to_owned()
}

async fn status_of(app: &TestApp, id: &str) -> Value {
    let path = format!("/v1/jobs/{id}");
    call(app, Method::GET, &path, Some(ADMIN), None)
        .await
        .json()
        .await
        .unwrap()
}

async fn save(browser: &Browser, name: &str) {
    if let Some(dir) = std::env::var_os("WARREN_UI_SCREENSHOTS") {
        let path = std::path::Path::new(&dir).join(name);
        std::fs::write(&path, browser.screenshot().await).unwrap();
    }
}

#[tokio::test]
async fn the_dashboard_follows_cancels_and_redrives_jobs_in_a_real_browser() {
    let Some(driver) = chromedriver() else {
        assert!(
            std::env::var_os("WARREN_REQUIRE_BROWSER").is_none(),
            "WARREN_REQUIRE_BROWSER is set but chromedriver is not installed \
             (apt-get install chromium chromium-driver)"
        );
        eprintln!(
            "skipped: chromedriver is not installed (apt-get install chromium chromium-driver)"
        );
        return;
    };
    let mut app = spawn_app_with(|config| {
        with_admin(config);
        config.management_url = Some("http://localhost:15672/".into());
    })
    .await;
    let builder = handlers::register(Worker::builder())
        .handler("boom", |_context| async { panic!("kaboom") });
    app.spawn_worker(builder).await;
    let browser = Browser::start(&driver, 1100, 1000).await;

    // Without a key: the sign-in form; with the operator's key: the overview.
    browser.open(&format!("{}/ui", app.address)).await;
    browser.type_into("#key", ADMIN).await;
    browser.click("form[action='/ui/login'] button").await;
    browser.wait_for_text("main h1", |t| t == "Overview").await;

    // A submitted job appears in the list and finishes; its payload shows as text.
    let payload = json!({"note": "<img src=x onerror=alert(1)>"});
    let echo = submit(&app, &json!({"type": "echo", "payload": payload})).await;
    for period in ["daily", "weekly", "monthly"] {
        let report = json!({"type": "report.generate", "payload": {"period": period}});
        submit(&app, &report).await;
    }
    browser.open(&format!("{}/ui#/jobs", app.address)).await;
    let row = format!("tr[data-job='{echo}'] td.status-succeeded");
    browser.wait_for_text(&row, |t| t == "succeeded").await;
    save(&browser, "ui-jobs.png").await;
    browser.click(&format!("tr[data-job='{echo}'] a")).await;
    browser
        .wait_for_text("dd[data-field='status']", |t| t == "succeeded")
        .await;
    let shown = browser
        .wait_for_text("#payload", |t| t.contains("onerror"))
        .await;
    assert!(shown.contains("<img src=x onerror=alert(1)>"), "{shown}");

    // A long sleep, cancelled with the button (after confirming).
    let sleeper = submit(&app, &json!({"type": "sleep", "payload": {"ms": 600_000}})).await;
    browser
        .open(&format!("{}/ui#/jobs/{sleeper}", app.address))
        .await;
    browser
        .wait_for_text("dd[data-field='status']", |t| t == "running")
        .await;
    browser.click("#cancel").await;
    browser.accept_dialog().await;
    browser
        .wait_for_text("dd[data-field='status']", |t| t == "cancelled")
        .await;
    assert_eq!(status_of(&app, &sleeper).await["status"], "cancelled");

    // A failed job, re-driven with the button: a second attempt series runs.
    let boom = submit(&app, &json!({"type": "boom", "max_attempts": 2})).await;
    let started = std::time::Instant::now();
    while status_of(&app, &boom).await["status"] != "failed" {
        assert!(
            started.elapsed() < crate::helpers::DEADLINE,
            "boom never failed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    browser
        .open(&format!("{}/ui#/jobs/{boom}", app.address))
        .await;
    browser
        .wait_for_text("#error", |t| t.contains("kaboom"))
        .await;
    save(&browser, "ui-job.png").await;
    browser.click("#redrive").await;
    browser.accept_dialog().await;
    browser
        .wait_for_text("dd[data-field='attempt']", |t| t.starts_with("3 of"))
        .await;

    // The failed job is among the dead letters, with why.
    browser.open(&format!("{}/ui#/dead", app.address)).await;
    browser
        .wait_for_text(&format!("tr[data-dead='{boom}'] td.reason"), |t| {
            t.starts_with("failed on attempt")
        })
        .await;

    // A job type's flow settings, changed with the form (after confirming), hold at once.
    browser
        .open(&format!("{}/ui#/queues/echo", app.address))
        .await;
    browser
        .wait_for_text("dd[data-field='max-running']", |t| t == "none")
        .await;
    browser.type_into("#max-running", "3").await;
    browser.click("#settings button").await;
    browser.accept_dialog().await;
    browser
        .wait_for_text("dd[data-field='max-running']", |t| t == "3")
        .await;
    save(&browser, "ui-queue.png").await;
    let settings: Value = call(&app, Method::GET, "/v1/queues/echo", Some(ADMIN), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(settings["max_running"], 3);

    // A workflow: listed, its page shows each step with its dependencies and job, and its
    // cancel button (after confirming) cancels the running step and the one waiting on it.
    let body = json!({"steps": [
        {"name": "long", "type": "sleep", "payload": {"ms": 600_000}},
        {"name": "after", "type": "echo", "depends_on": ["long"]},
    ]});
    let response = call(
        &app,
        Method::POST,
        "/v1/workflows",
        Some(ADMIN),
        Some(&body),
    )
    .await;
    assert_eq!(response.status(), 201);
    let workflow: Value = response.json().await.unwrap();
    let workflow_id = workflow["id"].as_str().unwrap();
    let long_job = workflow["steps"][0]["job_id"].as_str().unwrap();
    browser
        .open(&format!("{}/ui#/workflows", app.address))
        .await;
    browser
        .click(&format!("tr[data-workflow='{workflow_id}'] a"))
        .await;
    browser
        .wait_for_text("tr[data-step='long'] td.status-running", |t| t == "running")
        .await;
    assert_eq!(
        browser
            .text("tr[data-step='after'] td:nth-of-type(2)")
            .await,
        "long"
    );
    assert_eq!(browser.text("tr[data-step='long'] a").await, long_job);
    save(&browser, "ui-workflow.png").await;
    browser.click("#cancel-workflow").await;
    browser.accept_dialog().await;
    browser
        .wait_for_text("dd[data-field='status']", |t| t == "cancelled")
        .await;
    browser
        .wait_for_text("tr[data-step='after'] td.status-cancelled", |t| {
            t == "cancelled"
        })
        .await;

    browser.open(&format!("{}/ui#/", app.address)).await;
    browser
        .wait_for_text("main table th[scope='row']", |_| true)
        .await;
    if std::env::var_os("WARREN_UI_SCREENSHOTS").is_some() {
        // Only for the picture: jobs over a few refreshes, so the chart has a line.
        for burst in [10, 30, 20, 40, 25] {
            for _ in 0..burst {
                submit(&app, &json!({"type": "echo"})).await;
            }
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        }
    }
    let links = browser.text("nav").await;
    assert!(
        links.contains("RabbitMQ management") && links.contains("API docs"),
        "{links}"
    );
    save(&browser, "ui-overview.png").await;

    // /docs renders the document: jobs first (the probes last), `code` as code, request bodies.
    browser.open(&format!("{}/docs", app.address)).await;
    browser.wait_for_text("#api h2", |t| t == "jobs").await;
    let api = browser
        .wait_for_text("#api", |t| {
            t.contains("Request body: application/json SubmitRequest")
        })
        .await;
    assert!(!api.contains('`'), "raw backticks on /docs");
    assert!(!browser.text("#api section p code").await.is_empty());
    browser.quit().await;
    app.stop().await;
}
