//! The overhead of a workflow step over a plain job, on the scenario's stack:
//!
//! - a chain of `--chain-steps` steps (`sleep` of 0 ms) (each waits for the one before): time per step,
//!   beside the same number of sequential synchronous submits (one job after another, each
//!   waited for), which is what a client orchestrating the chain itself would pay;
//! - a batch of `--batch-steps` independent steps in one workflow, from submit until the
//!   workflow has ended (jobs/s), beside as many single submits from the scenario's clients
//!   (`load::throughput`).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{Error, load};

/// Submits `body` as a workflow to `base` and long-polls it until it ends; seconds taken.
async fn run_workflow(client: &reqwest::Client, base: &str, body: &Value) -> Result<f64, Error> {
    let started = Instant::now();
    let response = client
        .post(format!("{base}/v1/workflows"))
        .json(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    let workflow: Value = response.json().await?;
    if status != 201 && status != 202 {
        return Err(format!("a workflow submit answered {status}: {workflow}").into());
    }
    let id = workflow["id"].as_str().ok_or("no workflow id")?.to_owned();
    loop {
        let polled: Value = client
            .get(format!("{base}/v1/workflows/{id}?wait=30"))
            .send()
            .await?
            .json()
            .await?;
        match polled["status"].as_str() {
            Some("running") => {}
            Some("succeeded") => return Ok(started.elapsed().as_secs_f64()),
            other => return Err(format!("the workflow ended {other:?}").into()),
        }
        if started.elapsed() > Duration::from_secs(600) {
            return Err("the workflow did not end within 600 s".into());
        }
    }
}

/// Both measurements, as JSON figures.
pub(crate) async fn run(
    client: &reqwest::Client,
    bases: &[String],
    chain_steps: usize,
    batch_steps: usize,
    concurrency: usize,
) -> Result<Value, Error> {
    let base = &bases[0];
    let chain: Vec<Value> = (0..chain_steps)
        .map(|i| match i {
            // `sleep` of 0 ms: echo's answers would nest its parents' ever deeper.
            0 => json!({"name": "s0", "type": "sleep", "payload": {"ms": 0}}),
            _ => json!({"name": format!("s{i}"), "type": "sleep", "payload": {"ms": 0}, "depends_on": [format!("s{}", i - 1)]}),
        })
        .collect();
    let chain_s = run_workflow(client, base, &json!({ "steps": chain })).await?;
    let sequential = load::sync_latency(client, base, chain_steps).await?;
    let sequential_s: f64 = sequential.iter().sum::<f64>() / 1000.0;
    let batch: Vec<Value> = (0..batch_steps)
        .map(|i| json!({"name": format!("s{i}"), "type": "echo", "payload": {"i": i}}))
        .collect();
    let batch_s = run_workflow(client, base, &json!({ "steps": batch })).await?;
    let singles = load::throughput(client, bases, batch_steps, concurrency).await?;
    #[allow(clippy::cast_precision_loss)]
    let (chain_n, batch_n) = (chain_steps as f64, batch_steps as f64);
    Ok(json!({
        "chain_ms_per_step": chain_s * 1000.0 / chain_n,
        "sequential_sync_ms_per_job": sequential_s * 1000.0 / chain_n,
        "batch_jobs_per_s": batch_n / batch_s,
        "singles_jobs_per_s": batch_n / singles.by_long_poll,
    }))
}
