//! Webhooks against a real HTTP receiver started by the test: the signed body arrives and
//! verifies with the test's own HMAC (not Warren's signing code), failures are retried with
//! growing gaps, `410` stops at once, a silent receiver times out, a gateway restart in the
//! middle of the retries still delivers, and the SSRF guard refuses private destinations.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::{sync::mpsc, time::Instant};
use warren_gateway::{config::GatewayConfig, webhooks::Secret};
use warren_worker::{Worker, handlers};

use crate::helpers::{DEADLINE, TestApp, TestSchema, spawn_app_with};

/// The secret the tests sign with, and its bytes in base64.
pub const SECRET_B64: &str = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// How the receiver answers one request.
#[derive(Debug, Clone, Copy)]
pub enum Reply {
    Status(u16),
    /// Never answers.
    Silence,
}

/// One request the receiver got.
#[derive(Debug)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

/// A webhook receiver on a loopback port that answers from a script (then `200`).
pub struct Receiver {
    pub url: String,
    requests: mpsc::UnboundedReceiver<Received>,
    server: tokio::task::JoinHandle<()>,
}

type Script = Arc<(Mutex<VecDeque<Reply>>, mpsc::UnboundedSender<Received>)>;

impl Receiver {
    pub async fn start(script: &[Reply]) -> Self {
        let (sender, requests) = mpsc::unbounded_channel();
        let state: Script = Arc::new((Mutex::new(script.iter().copied().collect()), sender));
        let app = axum::Router::new()
            .route("/hook", post(receive))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url,
            requests,
            server,
        }
    }

    pub async fn next(&mut self) -> Received {
        tokio::time::timeout(DEADLINE, self.requests.recv())
            .await
            .expect("no webhook arrived in time")
            .unwrap()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(State(script): State<Script>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let reply = script.0.lock().unwrap().pop_front();
    let _ = script.1.send(Received {
        headers,
        body,
        at: Instant::now(),
    });
    match reply.unwrap_or(Reply::Status(200)) {
        Reply::Status(code) => StatusCode::from_u16(code).unwrap(),
        Reply::Silence => std::future::pending::<StatusCode>().await,
    }
}

/// Verifies a Standard Webhooks signature the way the specification describes it.
pub fn verifies(received: &Received) -> bool {
    let header = |name: &str| received.headers[name].to_str().unwrap().to_owned();
    let key = STANDARD.decode(SECRET_B64).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    let signed = format!("{}.{}.", header("webhook-id"), header("webhook-timestamp"));
    mac.update(signed.as_bytes());
    mac.update(&received.body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    header("webhook-signature")
        .split(' ')
        .any(|signature| signature == expected)
}

/// Webhook settings for tests: signed, loopback allowed, short timeouts and delays.
pub fn webhooks_on(config: &mut GatewayConfig) {
    config.webhooks.secret = Some(Secret::parse(&format!("whsec_{SECRET_B64}")).unwrap());
    config.webhooks.allow_private = true;
    config.webhooks.timeout_ms = 300;
    config.webhooks.retry_delays = vec![Duration::from_millis(100), Duration::from_millis(400)];
}

async fn app_with_echo(adjust: impl FnOnce(&mut GatewayConfig)) -> TestApp {
    let mut app = spawn_app_with(|config| {
        webhooks_on(config);
        adjust(config);
    })
    .await;
    app.spawn_worker(Worker::builder().handler("echo", handlers::echo))
        .await;
    app
}

/// Submits an echo job that calls `url` back; its id.
async fn submit_with_callback(app: &TestApp, url: &str) -> String {
    app.submit_ok(&json!({"type": "echo", "payload": {"n": 7}, "callback_url": url}))
        .await
}

pub async fn callback_state(app: &TestApp, id: &str, state: &str) -> Value {
    app.wait_for(id, |job| job["callback"]["state"] == state)
        .await
}

pub async fn deliveries(app: &TestApp, id: &str) -> Vec<Value> {
    let response = app.get(&format!("/v1/jobs/{id}/deliveries")).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["deliveries"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_finished_job_is_posted_to_its_callback_signed() {
    let app = app_with_echo(|_| {}).await;
    let mut receiver = Receiver::start(&[]).await;
    let id = submit_with_callback(&app, &receiver.url).await;

    let received = receiver.next().await;
    assert!(verifies(&received), "the signature does not verify");
    assert_eq!(received.headers["content-type"], "application/json");
    let body: Value = serde_json::from_slice(&received.body).unwrap();
    assert_eq!(
        (body["id"].as_str(), body["status"].as_str()),
        (Some(id.as_str()), Some("succeeded"))
    );
    assert_eq!(body["result"], json!({"n": 7}));
    let job = callback_state(&app, &id, "delivered").await;
    assert_eq!(
        job["callback"]["webhook_id"],
        received.headers["webhook-id"].to_str().unwrap()
    );
    let attempts = deliveries(&app, &id).await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        (
            attempts[0]["status_code"].as_u64(),
            attempts[0]["attempt"].as_u64()
        ),
        (Some(200), Some(1))
    );
    app.stop().await;
}

#[tokio::test]
async fn a_failing_receiver_is_retried_with_growing_gaps_under_one_webhook_id() {
    let app = app_with_echo(|_| {}).await;
    let mut receiver = Receiver::start(&[Reply::Status(500), Reply::Status(500)]).await;
    let id = submit_with_callback(&app, &receiver.url).await;

    let arrivals = [
        receiver.next().await,
        receiver.next().await,
        receiver.next().await,
    ];
    callback_state(&app, &id, "delivered").await;
    let ids: Vec<_> = arrivals
        .iter()
        .map(|r| r.headers["webhook-id"].clone())
        .collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one delivery keeps one webhook-id: {ids:?}"
    );
    assert!(arrivals.iter().all(verifies));
    let (first_gap, second_gap) = (
        arrivals[1].at - arrivals[0].at,
        arrivals[2].at - arrivals[1].at,
    );
    assert!(first_gap >= Duration::from_millis(100), "{first_gap:?}");
    assert!(second_gap >= Duration::from_millis(400), "{second_gap:?}");
    let attempts = deliveries(&app, &id).await;
    let codes: Vec<_> = attempts.iter().map(|a| a["status_code"].as_u64()).collect();
    assert_eq!(codes, [Some(500), Some(500), Some(200)]);
    assert!(attempts[0]["next_attempt_at"].is_string() && attempts[2]["next_attempt_at"].is_null());
    app.stop().await;
}

#[tokio::test]
async fn gone_stops_the_delivery_at_once() {
    let app = app_with_echo(|_| {}).await;
    let mut receiver = Receiver::start(&[Reply::Status(410)]).await;
    let id = submit_with_callback(&app, &receiver.url).await;

    receiver.next().await;
    let job = callback_state(&app, &id, "given_up").await;
    assert_eq!(job["callback"]["attempts"], 1);
    let attempts = deliveries(&app, &id).await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["status_code"], 410);
    app.stop().await;
}

#[tokio::test]
async fn a_receiver_that_never_answers_times_out_and_is_retried() {
    let app = app_with_echo(|_| {}).await;
    let mut receiver = Receiver::start(&[Reply::Silence]).await;
    let id = submit_with_callback(&app, &receiver.url).await;

    receiver.next().await;
    receiver.next().await;
    callback_state(&app, &id, "delivered").await;
    let attempts = deliveries(&app, &id).await;
    assert_eq!(attempts.len(), 2);
    let error = attempts[0]["error"].as_str().unwrap();
    assert!(error.contains("no answer within 300 ms"), "{error}");
    assert!(attempts[0]["status_code"].is_null());
    assert_eq!(attempts[1]["status_code"], 200);
    app.stop().await;
}

#[tokio::test]
async fn a_gateway_restart_in_the_middle_of_the_retries_still_delivers() {
    let schema = TestSchema::create().await;
    let url = schema.url();
    let with_store = |config: &mut GatewayConfig| {
        config.database_url = Some(url.clone());
        config.webhooks.retry_delays = vec![Duration::from_secs(1)];
    };
    let first = app_with_echo(with_store).await;
    let mut receiver = Receiver::start(&[Reply::Status(503)]).await;
    let id = submit_with_callback(&first, &receiver.url).await;
    receiver.next().await;
    first
        .wait_for(&id, |job| job["callback"]["attempts"] == 1)
        .await;
    let (namespace, job_types) = (first.broker.namespace.clone(), first.job_types.clone());
    first.stop_processes().await;

    let mut second = spawn_app_with(|config| {
        webhooks_on(config);
        with_store(config);
        config.broker.namespace = namespace;
    })
    .await;
    second.job_types = job_types;
    let retried = receiver.next().await;
    assert!(verifies(&retried));
    callback_state(&second, &id, "delivered").await;
    let codes: Vec<_> = deliveries(&second, &id)
        .await
        .iter()
        .map(|a| a["status_code"].as_u64())
        .collect();
    assert_eq!(codes, [Some(503), Some(200)]);
    second.stop().await;
    schema.drop_schema().await;
}

#[tokio::test]
async fn the_ssrf_guard_refuses_private_destinations_at_submit() {
    let app = spawn_app_with(|config| {
        webhooks_on(config);
        config.webhooks.allow_private = false;
    })
    .await;
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://[::1]/",
        "http://localhost/",
        "http://[::ffff:127.0.0.1]/",
        "file:///etc/passwd",
    ] {
        let response = app
            .submit(&json!({"type": "echo", "callback_url": url}))
            .await;
        assert_eq!(response.status(), 422, "{url}");
        let problem: Value = response.json().await.unwrap();
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains("callback_url"), "{url}: {detail}");
    }
    let long = format!("https://example.com/{}", "a".repeat(2048));
    let response = app
        .submit(&json!({"type": "echo", "callback_url": long}))
        .await;
    assert_eq!(response.status(), 422);
    app.stop().await;
}

#[tokio::test]
async fn without_a_signing_secret_a_callback_url_is_refused_not_ignored() {
    let app = spawn_app_with(|_| {}).await;
    let response = app
        .submit(&json!({"type": "echo", "callback_url": "https://example.com/hook"}))
        .await;
    assert_eq!(response.status(), 422);
    let problem: Value = response.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("WARREN_WEBHOOK_SECRET")
    );
    app.stop().await;
}

/// Issue 30's report: with the default delays (first retry after 5 s), a receiver answering
/// `500` once got no retry within 90 s, one run in five. Sixteen deliveries at once on each
/// store, under whatever else runs: each first retry must come within 5 s + 2 s. (Not
/// reproduced in 64 first retries per store under load; kept as the guard.)
#[tokio::test]
async fn many_failing_deliveries_each_get_their_first_retry_on_time_on_both_stores() {
    let schema = TestSchema::create().await;
    for postgres in [false, true] {
        let url = schema.url();
        let app = app_with_echo(|config| {
            config.webhooks.retry_delays = vec![Duration::from_secs(5), Duration::from_secs(300)];
            config.webhooks.timeout_ms = 10_000;
            if postgres {
                config.database_url = Some(url);
            }
        })
        .await;
        const N: usize = 16;
        let mut receiver = Receiver::start(&[Reply::Status(500); N]).await;
        for _ in 0..N {
            submit_with_callback(&app, &receiver.url).await;
        }
        let started = Instant::now();
        let mut seen: std::collections::HashMap<String, Vec<Instant>> = Default::default();
        while seen.values().filter(|v| v.len() >= 2).count() < N {
            let got = tokio::time::timeout(Duration::from_secs(25), receiver.requests.recv()).await;
            let Ok(Some(got)) = got else {
                let attempts: Vec<usize> = seen.values().map(Vec::len).collect();
                panic!(
                    "postgres={postgres}: after {:?}, attempts per webhook: {attempts:?}",
                    started.elapsed()
                );
            };
            let id = got.headers["webhook-id"].to_str().unwrap().to_owned();
            seen.entry(id).or_default().push(got.at);
        }
        let gaps: Vec<_> = seen.values().map(|v| v[1] - v[0]).collect();
        let slowest = gaps.iter().max().copied().unwrap_or_default();
        eprintln!("postgres={postgres}: slowest first retry after {slowest:?}");
        assert!(
            slowest < Duration::from_secs(7),
            "postgres={postgres}: a first retry came {slowest:?} after the failure"
        );
        app.stop().await;
    }
    schema.drop_schema().await;
}
