//! Webhook deliveries: `--webhooks` echo jobs with a `callback_url` pointing at a receiver in
//! this process that answers `204` at once. Measures deliveries per second as the receiver
//! sees them (first to last delivery) and the lag from each job's `finished_at` to its
//! delivery (same machine, same clock).

use std::{collections::HashSet, time::Duration};

use axum::{body::Bytes, extract::State, http::StatusCode, routing::post};
use serde_json::{Value, json};
use tokio::{sync::mpsc, time::Instant};

use crate::{Error, load};

/// The signing secret the benchmark's gateways get.
pub(crate) const SECRET: &str = "whsec_d2FycmVuLWJlbmNobWFyay1vbmx5LXNlY3JldCEh";

/// One delivery as the receiver saw it.
struct Arrival {
    job_id: String,
    lag_ms: f64,
    at: Instant,
}

async fn receive(
    State(arrivals): State<mpsc::UnboundedSender<Arrival>>,
    body: Bytes,
) -> StatusCode {
    let job: Value = serde_json::from_slice(&body).unwrap_or_default();
    let finished = job["finished_at"]
        .as_str()
        .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok());
    #[allow(clippy::cast_precision_loss)]
    let lag_ms = finished.map_or(f64::NAN, |at| {
        (chrono::Utc::now() - at.to_utc())
            .num_microseconds()
            .unwrap_or(0) as f64
            / 1000.0
    });
    let job_id = job["id"].as_str().unwrap_or_default().to_owned();
    let _ = arrivals.send(Arrival {
        job_id,
        lag_ms,
        at: Instant::now(),
    });
    StatusCode::NO_CONTENT
}

/// Submits `count` jobs with a callback over `bases` and waits for every delivery.
pub(crate) async fn run(
    client: &reqwest::Client,
    bases: &[String],
    count: usize,
    concurrency: usize,
) -> Result<Value, Error> {
    let (sender, mut arrivals) = mpsc::unbounded_channel();
    let app = axum::Router::new()
        .route("/hook", post(receive))
        .with_state(sender);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let (client, bases) = (client.clone(), bases.to_vec());
    load::fan_out(count, concurrency, move |i| {
        let (client, base, url) = (client.clone(), bases[i % bases.len()].clone(), url.clone());
        async move {
            let body = json!({"type": "echo", "payload": {"i": i}, "callback_url": url});
            let response = client
                .post(format!("{base}/v1/jobs"))
                .json(&body)
                .send()
                .await?;
            if response.status() != 202 {
                return Err(format!("submit answered {}", response.status()).into());
            }
            Ok(())
        }
    })
    .await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let (mut seen, mut lags, mut first, mut last) = (HashSet::new(), Vec::new(), None, None);
    while seen.len() < count {
        let arrival = tokio::time::timeout_at(deadline, arrivals.recv())
            .await
            .map_err(|_| format!("only {} of {count} webhooks arrived in 300 s", seen.len()))?
            .ok_or("the receiver stopped")?;
        first.get_or_insert(arrival.at);
        last = Some(arrival.at);
        if seen.insert(arrival.job_id) {
            lags.push(arrival.lag_ms);
        }
    }
    server.abort();
    lags.sort_by(f64::total_cmp);
    let span = match (first, last) {
        (Some(first), Some(last)) => (last - first).as_secs_f64(),
        _ => f64::NAN,
    };
    #[allow(clippy::cast_precision_loss)]
    Ok(json!({
        "deliveries_per_s": count as f64 / span,
        "lag_ms": {"p50": load::percentile(&lags, 50.0), "p99": load::percentile(&lags, 99.0)},
    }))
}
