//! When PostgreSQL stalls, answer fast: with a proxy between the gateway and PostgreSQL that
//! stops forwarding without closing (a silent link), submits answer `503` within the store
//! deadline plus a second while clients keep submitting with `Idempotency-Key`s (so group
//! commits are in flight when the link goes silent); `/readyz` says so; after the heal every
//! accepted job succeeds and no key maps to two jobs.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{Value, json};
use tokio::time::Instant;
use warren_worker::{Worker, handlers};

use crate::{
    helpers::{DEADLINE, TestSchema, spawn_app_with},
    proxy::Proxy,
};

/// The store deadline, and how long the link stays silent. Measuring by hand (BENCHMARKS.md):
/// `WARREN_STALL_SECS=30 WARREN_STALL_STORE_TIMEOUT_SECS=5` (and `=3600` for "no deadline").
fn knob(name: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

#[tokio::test]
async fn a_stalled_database_gets_quick_503s_and_loses_or_doubles_nothing() {
    let schema = TestSchema::create().await;
    let proxy = Proxy::to("127.0.0.1:5432").await;
    let url = schema.url_via(&proxy.addr.to_string());
    let store_timeout = knob("WARREN_STALL_STORE_TIMEOUT_SECS", 1);
    let stall = knob("WARREN_STALL_SECS", 3);
    let mut app = spawn_app_with(move |config| {
        config.database_url = Some(url);
        config.store_timeout = store_timeout;
    })
    .await;
    app.spawn_worker(Worker::builder().handler("echo", handlers::echo))
        .await;

    // Eight clients, each submitting its keys in turn and retrying a key until it is accepted.
    let accepted: Arc<Mutex<BTreeMap<String, BTreeSet<String>>>> = Arc::default();
    let slowest_503 = Arc::new(Mutex::new(Duration::ZERO));
    let slowest_any = Arc::new(Mutex::new(Duration::ZERO));
    let stop_at = Arc::new(Mutex::new(None::<Instant>));
    let clients: Vec<_> = (0..8)
        .map(|client_no| {
            let (client, base) = (app.client.clone(), app.address.clone());
            let (accepted, slowest_503, slowest_any, stop_at) = (
                accepted.clone(),
                slowest_503.clone(),
                slowest_any.clone(),
                stop_at.clone(),
            );
            tokio::spawn(async move {
                for n in 0.. {
                    if stop_at
                        .lock()
                        .unwrap()
                        .is_some_and(|at| Instant::now() >= at)
                    {
                        return;
                    }
                    let key = format!("stall-{client_no}-{n}");
                    loop {
                        let started = Instant::now();
                        let response = client
                            .post(format!("{base}/v1/jobs"))
                            .header("idempotency-key", &key)
                            .json(&json!({"type": "echo", "payload": {"key": key}}))
                            .send()
                            .await
                            .unwrap();
                        let took = started.elapsed();
                        {
                            let mut slowest = slowest_any.lock().unwrap();
                            *slowest = (*slowest).max(took);
                        }
                        match response.status().as_u16() {
                            202 => {
                                let job: Value = response.json().await.unwrap();
                                let id = job["id"].as_str().unwrap().to_owned();
                                accepted
                                    .lock()
                                    .unwrap()
                                    .entry(key.clone())
                                    .or_default()
                                    .insert(id);
                                break;
                            }
                            503 => {
                                assert!(response.headers().contains_key("retry-after"));
                                {
                                    let mut slowest = slowest_503.lock().unwrap();
                                    *slowest = (*slowest).max(took);
                                }
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            other => panic!("submit answered {other}"),
                        }
                    }
                }
            })
        })
        .collect();

    // Let some jobs through, then silence the link for three store deadlines.
    let started = Instant::now();
    while accepted.lock().unwrap().len() < 50 {
        assert!(
            started.elapsed() < DEADLINE,
            "no submits accepted before the stall"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.stall();
    tokio::time::sleep(stall).await;
    if store_timeout < stall {
        let ready = app.get("/readyz").await;
        assert_eq!(ready.status(), 503, "readyz during the stall");
        let body: Value = ready.json().await.unwrap();
        assert!(
            body["store_error"]
                .as_str()
                .unwrap_or_default()
                .contains("did not answer"),
            "{body}"
        );
    }
    proxy.heal();
    *stop_at.lock().unwrap() = Some(Instant::now() + Duration::from_secs(1));
    for client in clients {
        tokio::time::timeout(DEADLINE, client)
            .await
            .unwrap()
            .unwrap();
    }

    let slowest = *slowest_503.lock().unwrap();
    eprintln!(
        "during a {stall:?} stall with a {store_timeout:?} store deadline: slowest 503 {slowest:?}, slowest answer {:?}",
        *slowest_any.lock().unwrap()
    );
    assert!(slowest > Duration::ZERO, "no submit met the stall");
    assert!(
        slowest < store_timeout + Duration::from_secs(1),
        "a submit took {slowest:?} to answer 503"
    );
    let accepted = accepted.lock().unwrap().clone();
    for (key, ids) in &accepted {
        assert_eq!(
            ids.len(),
            1,
            "key {key} was answered with two jobs: {ids:?}"
        );
    }
    for ids in accepted.values() {
        let id = ids.iter().next().unwrap();
        app.wait_for_status(id, "succeeded").await;
    }
    // No job beyond those: every stored job is one of the accepted keys' jobs.
    let listed: Value = app.get("/v1/jobs?limit=500").await.json().await.unwrap();
    let stored = listed["jobs"].as_array().unwrap().len();
    assert!(accepted.len() < 500, "too many jobs for one page");
    assert_eq!(
        stored,
        accepted.len(),
        "jobs stored beyond the accepted keys"
    );
    app.stop().await;
    schema.drop_schema().await;
}
