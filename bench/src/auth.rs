//! The cost of authentication: the scenario's sync latency again, on a stack of its own with
//! keys on (`WARREN_ADMIN_KEY`), every request carrying a tenant's key (no rate limit or cap,
//! so only the check itself is measured: the key's record from the gateway's cache, read again
//! from the store every 500 ms, and the SHA-256 compare).

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde_json::{Value, json};

use crate::{
    Error, load,
    stack::{Stack, StackSpec},
};

/// The benchmark's operator key.
pub(crate) const ADMIN_KEY: &str = "bench-admin-key-0123456789";

/// Sync latency (sorted, ms) with a tenant's key, on a keyed stack like `spec`.
pub(crate) async fn sync_latency_with_key(
    spec: &StackSpec<'_>,
    samples: usize,
) -> Result<Vec<f64>, Error> {
    let stack = Stack::start(&StackSpec {
        admin_key: Some(ADMIN_KEY),
        ..*spec
    })
    .await?;
    let measured = measure(&stack, samples).await;
    stack.stop().await?;
    measured
}

async fn measure(stack: &Stack, samples: usize) -> Result<Vec<f64>, Error> {
    let base = &stack.bases[0];
    let admin = client_with(ADMIN_KEY)?;
    load::wait_until_up(&admin, &stack.bases).await?;
    let created: Value = admin
        .post(format!("{base}/v1/keys"))
        .json(&json!({"tenant": "bench", "name": "sync latency"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let secret = created["key"]
        .as_str()
        .ok_or("POST /v1/keys answered without a key")?;
    let tenant = client_with(secret)?;
    // Warm up as the open run did (its throughput runs came first).
    load::sync_latency(&tenant, base, samples / 5).await?;
    load::sync_latency(&tenant, base, samples).await
}

fn client_with(key: &str) -> Result<reqwest::Client, Error> {
    // See `measure` in main.rs: the workspace's reqwest needs a TLS provider installed.
    let _already = rustls::crypto::ring::default_provider().install_default();
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {key}"))?,
    );
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .build()?)
}
