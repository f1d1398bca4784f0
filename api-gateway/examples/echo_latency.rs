//! Measures `echo` jobs end to end against a running gateway and worker, one after another:
//!
//! 1. asynchronous: submit, then poll every millisecond until `succeeded` (so up to 1 ms of
//!    polling slack), beside the record's `finished_at - created_at`;
//! 2. synchronous: submit with `Prefer: wait=10` and time the `200`.
//!
//! ```text
//! cargo run --release -p warren-gateway --example echo_latency -- [JOBS] [GATEWAY_URL]
//! ```

#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs
)]

use std::time::{Duration, Instant};

use chrono::DateTime;
use serde_json::{Value, json};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank]
}

fn report(name: &str, mut samples: Vec<f64>) {
    samples.sort_by(f64::total_cmp);
    println!(
        "{name:<28} n={} min={:.2}ms p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms",
        samples.len(),
        samples[0],
        percentile(&samples, 50.0),
        percentile(&samples, 90.0),
        percentile(&samples, 99.0),
        samples[samples.len() - 1],
    );
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let jobs: usize = args
        .next()
        .map_or(200, |n| n.parse().expect("JOBS must be a number"));
    let base = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8080".to_owned());
    warren_gateway::webhooks::install_tls_provider();
    let client = reqwest::Client::new();
    let (mut client_side, mut server_side) = (Vec::new(), Vec::new());
    for i in 0..jobs {
        let started = Instant::now();
        let response = client
            .post(format!("{base}/v1/jobs"))
            .json(&json!({"type": "echo", "payload": {"i": i}}))
            .send()
            .await
            .expect("gateway unreachable");
        assert_eq!(
            response.status(),
            202,
            "submit refused: {}",
            response.text().await.unwrap()
        );
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        let job = loop {
            let job: Value = client
                .get(format!("{base}{location}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            match job["status"].as_str() {
                Some("succeeded") => break job,
                Some("failed" | "cancelled") => panic!("job did not succeed: {job}"),
                _ => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        };
        client_side.push(started.elapsed().as_secs_f64() * 1000.0);
        let at = |field: &str| DateTime::parse_from_rfc3339(job[field].as_str().unwrap()).unwrap();
        let server = at("finished_at") - at("created_at");
        server_side.push(server.num_microseconds().unwrap() as f64 / 1000.0);
    }
    report("async: submit → succeeded", client_side);
    report("async: created → finished", server_side);

    let mut sync = Vec::new();
    for i in 0..jobs {
        let started = Instant::now();
        let response = client
            .post(format!("{base}/v1/jobs"))
            .header("prefer", "wait=10")
            .json(&json!({"type": "echo", "payload": {"i": i}}))
            .send()
            .await
            .expect("gateway unreachable");
        assert_eq!(response.status(), 200, "not answered synchronously");
        response.bytes().await.unwrap();
        sync.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    report("sync: Prefer wait → 200", sync);
}
