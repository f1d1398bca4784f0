//! Accepting a job: the path behind every `202`.
//!
//! Store the record as `queued`, then publish (persistent, mandatory, confirmed). The record
//! exists before the message so a worker's first event always finds it; a publish that is not
//! confirmed marks the record failed, so no job stays `queued` for a message the broker never
//! took. With an `Idempotency-Key`, the key is claimed first: the same key and body give the
//! same job without a second message, another body is refused, and a key whose first request
//! is still being accepted answers `409`.

use axum::http::HeaderMap;
use warren_shared::{JobError, amqp::PublishError, trace::TraceContext};

use super::{AppState, problem::ApiError};
use crate::store::{Job, Reservation, StoreError};

/// The longest `Idempotency-Key` accepted.
const MAX_KEY_LEN: usize = 255;

/// A request's idempotency key and the hash of its body.
#[derive(Debug, Clone)]
pub struct Idempotency {
    key: String,
    request_hash: String,
}

impl Idempotency {
    /// Reads the `Idempotency-Key` header, if any; `canonical_body` is the request as JSON
    /// with sorted keys, so equal requests hash equally.
    pub fn from_headers(
        headers: &HeaderMap,
        canonical_body: &str,
    ) -> Result<Option<Self>, ApiError> {
        let Some(value) = headers.get("idempotency-key") else {
            return Ok(None);
        };
        let key = value
            .to_str()
            .ok()
            .filter(|k| {
                !k.is_empty() && k.len() <= MAX_KEY_LEN && k.bytes().all(|b| b.is_ascii_graphic())
            })
            .ok_or_else(|| {
                ApiError::BadParameter(format!(
                    "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"
                ))
            })?;
        Ok(Some(Self {
            key: key.to_owned(),
            request_hash: fnv1a_hex(canonical_body),
        }))
    }
}

/// A stable 64-bit FNV-1a hash, in hex (stored, so it must not change between releases).
fn fnv1a_hex(text: &str) -> String {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// What accepting found.
#[derive(Debug)]
pub enum Accepted {
    /// A new job, stored and confirmed by RabbitMQ.
    New(Job),
    /// The job an earlier request with the same key and body created; nothing was published.
    Replayed(Job),
}

fn unavailable(error: &StoreError) -> ApiError {
    tracing::error!(%error, "job store unavailable");
    ApiError::Unavailable("the job store is unavailable")
}

/// Accepts `job`, or finds the job an idempotent replay refers to.
pub async fn accept_idempotent(
    state: &AppState,
    job: Job,
    idempotency: Option<&Idempotency>,
    trace: &TraceContext,
) -> Result<Accepted, ApiError> {
    let Some(Idempotency { key, request_hash }) = idempotency else {
        return accept(state, job, trace).await.map(Accepted::New);
    };
    let reservation = state.store.reserve_key(key, request_hash, job.id).await;
    match reservation.map_err(|e| unavailable(&e))? {
        Reservation::Reserved => {}
        Reservation::Replay(id) => {
            if let Some(existing) = state.store.get(id).await.map_err(|e| unavailable(&e))? {
                return Ok(Accepted::Replayed(existing));
            }
            // The job was purged by retention while its key lived on: start afresh.
            release(state, key).await;
            return Err(ApiError::Conflict(
                "the job this Idempotency-Key named no longer exists; retry to submit it again"
                    .into(),
            ));
        }
        Reservation::InProgress => {
            return Err(ApiError::Conflict(
                "a request with this Idempotency-Key is still being accepted; retry in a moment"
                    .into(),
            ));
        }
        Reservation::Mismatch => return Err(ApiError::IdempotencyMismatch),
    }
    let accepted = accept(state, job, trace).await;
    if let Err(error) = state.store.settle_key(key, accepted.is_ok()).await {
        tracing::error!(%error, "cannot settle the idempotency key");
    }
    accepted.map(Accepted::New)
}

async fn release(state: &AppState, key: &str) {
    if let Err(error) = state.store.settle_key(key, false).await {
        tracing::error!(%error, "cannot release the idempotency key");
    }
}

/// Stores the record, publishes the job and waits for the broker's confirm.
///
/// `Ok` means the guarantee behind a `202`: the record is stored and RabbitMQ has confirmed
/// the persistent, routed message.
pub async fn accept(state: &AppState, job: Job, trace: &TraceContext) -> Result<Job, ApiError> {
    state
        .store
        .insert(job.clone())
        .await
        .map_err(|e| unavailable(&e))?;
    publish(state, job, trace).await
}

/// Publishes the job's current attempt (carrying the request's trace); on failure marks the record failed (so it does not
/// stay `queued`) and says what to tell the client.
pub async fn publish(state: &AppState, job: Job, trace: &TraceContext) -> Result<Job, ApiError> {
    let traceparent = trace.child().header();
    let Err(error) = state
        .publisher
        .publish_job(&job.message(), &traceparent)
        .await
    else {
        tracing::info!(attempt = job.attempt, "job published");
        state.metrics.job_submitted(&job);
        return Ok(job);
    };
    let (kind, refusal) = match &error {
        PublishError::Unroutable { .. } => {
            tracing::info!(%error, "job refused: no queue for its type");
            ("unroutable", ApiError::UnknownJobType(job.job_type.clone()))
        }
        _ => {
            tracing::error!(%error, "job not confirmed by RabbitMQ");
            (
                "publish_failed",
                ApiError::Unavailable("RabbitMQ did not confirm the job"),
            )
        }
    };
    let reason = JobError::new(kind, error.to_string());
    if let Err(store_error) = state.store.fail_unpublished(job.id, reason).await {
        tracing::error!(%store_error, "cannot mark the unpublished job failed");
    }
    Err(refusal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_hash_is_stable_and_tells_bodies_apart() {
        assert_eq!(fnv1a_hex(""), "cbf29ce484222325");
        assert_eq!(
            fnv1a_hex(r#"{"type":"echo"}"#),
            fnv1a_hex(r#"{"type":"echo"}"#)
        );
        assert_ne!(
            fnv1a_hex(r#"{"type":"echo"}"#),
            fnv1a_hex(r#"{"type":"echo "}"#)
        );
    }

    #[test]
    fn keys_must_be_short_visible_ascii() {
        let mut headers = HeaderMap::new();
        assert!(Idempotency::from_headers(&headers, "{}").unwrap().is_none());
        headers.insert("idempotency-key", "order-42".parse().unwrap());
        assert!(Idempotency::from_headers(&headers, "{}").unwrap().is_some());
        for bad in ["", "has space", &"k".repeat(256)] {
            headers.insert("idempotency-key", bad.parse().unwrap());
            assert!(
                Idempotency::from_headers(&headers, "{}").is_err(),
                "{bad:?}"
            );
        }
    }
}
