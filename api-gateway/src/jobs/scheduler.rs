//! Releasing jobs submitted for later: every gateway checks several times a second for
//! `scheduled` jobs whose `run_at` has come, releases them (`queued`, with an outbox mark) and
//! publishes them. The store claims each due job for one gateway only (PostgreSQL: `FOR
//! UPDATE SKIP LOCKED`), and the outbox mark means a gateway that dies between releasing and
//! publishing leaves the job to the relay: it is published once it is due, never lost, and
//! never twice on purpose.

use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use warren_shared::trace::TraceContext;

use super::JobService;

/// How often due jobs are looked for: a job is published within this (plus the publish) of
/// its `run_at`.
const EVERY: Duration = Duration::from_millis(200);
/// Jobs released per round.
const LIMIT: usize = 256;
/// How often the `scheduled` gauge is refreshed.
const GAUGE_EVERY: Duration = Duration::from_secs(5);

/// Releases due jobs until `stop` is cancelled.
pub async fn run(service: JobService, stop: CancellationToken) {
    let mut gauge_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
        while release_once(&service).await == LIMIT && !stop.is_cancelled() {}
        if gauge_at.elapsed() >= GAUGE_EVERY {
            gauge_at = tokio::time::Instant::now();
            if let Ok(count) = service.outbox.count_scheduled().await {
                service
                    .metrics
                    .scheduled
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
        }
    }
}

/// One round: releases and publishes the jobs due now; returns how many it released.
pub async fn release_once(service: &JobService) -> usize {
    let released = match service.outbox.release_due(Utc::now(), LIMIT).await {
        Ok(released) => released,
        Err(error) => {
            tracing::warn!(%error, "scheduler cannot read the store; retrying shortly");
            return 0;
        }
    };
    let count = released.len();
    for job in released {
        let (id, late) = (job.id, job.run_at.map(|at| Utc::now() - at));
        tracing::info!(job_id = %id, ?late, "scheduled job due; publishing it");
        service.watchers.publish(job.clone());
        service.metrics.released.inc();
        if let Err(error) = service.publish(job, None, &TraceContext::new_root()).await {
            // Still marked unless RabbitMQ refused it: the relay tries again.
            tracing::warn!(%error, job_id = %id, "a due job was not published");
        }
    }
    count
}
