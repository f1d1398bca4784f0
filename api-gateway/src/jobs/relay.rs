//! The outbox relay: every gateway republishes records whose publish was never confirmed.
//!
//! A record is stored with an outbox mark before its job is published; the publishing
//! request clears it once RabbitMQ confirmed. A request that died in between (the gateway was
//! killed, the client went away mid-request) leaves the mark, and after `grace` the relay
//! claims the record (re-stamping the mark, so other gateways leave it alone for another
//! grace period; PostgreSQL claims with `FOR UPDATE SKIP LOCKED`), publishes it and clears the
//! mark. A job a worker already reported on has no mark; one that is no longer `queued` is
//! only unmarked. Publishing twice is allowed: workers are at-least-once and terminal is
//! final.

use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use warren_shared::{JobStatus, trace::TraceContext};

use super::{JobService, JobsError};

/// Records claimed per round.
const CLAIM_LIMIT: usize = 256;

/// Republishes unconfirmed records older than `grace`, checking every `grace / 2` (at most
/// every second), until `stop` is cancelled.
pub async fn run(service: JobService, grace: Duration, stop: CancellationToken) {
    let every = (grace / 2).min(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        // A full round may leave more behind: go again at once.
        while relay_once(&service, grace).await == CLAIM_LIMIT && !stop.is_cancelled() {}
    }
}

/// One round: claims due records and publishes them; returns how many it claimed.
pub async fn relay_once(service: &JobService, grace: Duration) -> usize {
    let now = Utc::now();
    let marked_before = now - chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let claimed = match service
        .outbox
        .claim_unpublished(marked_before, now, CLAIM_LIMIT)
        .await
    {
        Ok(claimed) => claimed,
        Err(error) => {
            tracing::warn!(%error, "outbox relay cannot read the store; retrying later");
            return 0;
        }
    };
    let count = claimed.len();
    for job in claimed {
        let id = job.id;
        if job.status != JobStatus::Queued {
            if let Err(error) = service.outbox.confirm_published(id, false).await {
                tracing::warn!(%error, job_id = %id, "outbox relay cannot clear a mark");
            }
            continue;
        }
        tracing::warn!(job_id = %id, since = ?job.unconfirmed_since, "publishing a job whose publish was never confirmed");
        match service.publish(job, None, &TraceContext::new_root()).await {
            Ok(_) => service.metrics.job_relayed(),
            // Still marked (or failed, if RabbitMQ refused it): nothing more to do now.
            Err(JobsError::NotConfirmed(error)) => {
                tracing::warn!(%error, job_id = %id, "outbox relay could not publish; retrying later");
            }
            Err(error) => tracing::warn!(%error, job_id = %id, "outbox relay gave up on a job"),
        }
    }
    count
}
