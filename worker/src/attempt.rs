//! One attempt of one delivery, top to bottom: decode the job, check it is not poison, run
//! its handler (announcing `running` unless it is quick), and hand the [`Outcome`] to
//! [`settle`].

use std::{future::Future, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};

use lapin::{Channel, message::Delivery};
use tokio::time::Instant;
use tokio_util::{sync::CancellationToken, task::AbortOnDropHandle};
use tracing::Instrument;
use warren_shared::{
    ErrorKind, JobError, JobMessage, JobStatus, message, otel,
    trace::{TRACEPARENT, TraceContext},
};

use crate::{
    acks::Acks,
    decide::Outcome,
    events::{Change, Reporter},
    handler::{Handler, JobContext},
    headers::{header_text, previous_deliveries},
    settle::{dead_letter, settle},
    state::Shared,
};

/// How long a cancelled handler may take to stop on its own before it is dropped.
const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// A job handed out this many times without an outcome is failed as poison instead of run:
/// its handler has most likely killed a worker each time. (The queue's delivery limit, above
/// this, is the broker's own backstop.)
const POISON_DELIVERIES: u64 = 5;

/// Runs one delivery: reads the job, runs its handler, publishes the outcome, settles.
/// `admitted_at` is when the consume loop let it start (its `running` event's time).
pub(crate) async fn process(
    shared: &Shared,
    channel: Arc<Channel>,
    acks: &Acks,
    delivery: Delivery,
    admitted_at: DateTime<Utc>,
) {
    let job: JobMessage = match message::decode(&delivery.data) {
        Ok(job) => job,
        Err(error) => {
            return dead_letter(shared, &channel, acks, delivery, &error.to_string()).await;
        }
    };
    let Some(handler) = shared.handlers.get(&job.job_type).cloned() else {
        let reason = format!(
            "this worker has no handler for job type {:?}",
            job.job_type.as_str()
        );
        return dead_letter(shared, &channel, acks, delivery, &reason).await;
    };
    // Continue the trace the gateway started for the request (or start one).
    let trace = header_text(&delivery, TRACEPARENT)
        .as_deref()
        .and_then(TraceContext::parse)
        .unwrap_or_else(TraceContext::new_root);
    // Exported, a consumer span whose parent is the gateway's publish span.
    let span = if otel::enabled() {
        let queue = shared.topology.priority_queue(&job.job_type, job.priority);
        let span = tracing::info_span!(
            "job", job_id = %job.id, job_type = %job.job_type, attempt = job.attempt,
            redelivered = delivery.redelivered, trace_id = %trace.trace_id(),
            otel.name = %format_args!("process {queue}"), otel.kind = "consumer",
            messaging.system = "rabbitmq", messaging.operation.type = "process",
            messaging.destination.name = %queue, messaging.message.id = %job.id,
            messaging.rabbitmq.message.delivery_tag = delivery.delivery_tag
        );
        otel::set_parent(&span, &trace);
        span
    } else {
        tracing::info_span!(
            "job", job_id = %job.id, job_type = %job.job_type, attempt = job.attempt,
            redelivered = delivery.redelivered, trace_id = %trace.trace_id()
        )
    };
    let started = Started {
        trace: &trace,
        at: admitted_at,
    };
    run_job(shared, channel, acks, delivery, job, &handler, started)
        .instrument(span)
        .await;
}

/// How an attempt began: the trace it continues, and when the worker let it start.
struct Started<'a> {
    trace: &'a TraceContext,
    at: DateTime<Utc>,
}

async fn run_job(
    shared: &Shared,
    channel: Arc<Channel>,
    acks: &Acks,
    delivery: Delivery,
    job: JobMessage,
    handler: &Handler,
    started: Started<'_>,
) {
    let trace = started.trace;
    let reporter = Reporter::new(
        channel,
        shared.publish_timeout,
        &shared.topology,
        job.clone(),
        shared.identity.clone(),
        otel::next_hop(&tracing::Span::current(), trace),
        started.at,
    );
    let cancel = CancellationToken::new();
    let _running = shared.cancels.track(job.id, cancel.clone());
    if cancel.is_cancelled() {
        tracing::info!("job was cancelled before it started; skipping it");
        return settle(shared, acks, &reporter, &delivery, Outcome::Cancelled, 0.0).await;
    }
    let deliveries = previous_deliveries(&delivery) + 1;
    if deliveries >= POISON_DELIVERIES {
        let error = JobError::new(
            ErrorKind::Poison,
            format!(
                "delivered {deliveries} times without an outcome: its handler probably crashes \
                 the worker; not running it again"
            ),
        );
        let outcome = Outcome::Failed {
            error,
            retryable: false,
        };
        return settle(shared, acks, &reporter, &delivery, outcome, 0.0).await;
    }
    tracing::info!("job started");
    let _in_flight = shared
        .metrics
        .attempt_started(job.job_type.as_str(), job.created_at);
    let started = Instant::now();
    let timeout = Duration::from_millis(job.timeout_ms);
    let context = JobContext {
        id: job.id,
        job_type: job.job_type.clone(),
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        payload: job.payload,
        parents: job.parents,
        reporter: reporter.clone(),
        cancel,
    };
    // Exported, the handler's run is a span of its own under the consumer span.
    let attempt_span = if otel::enabled() {
        tracing::info_span!("attempt", attempt = job.attempt, otel.name = %format_args!("attempt {}", job.job_type))
    } else {
        tracing::Span::none()
    };
    let attempt = execute(handler, context, timeout).instrument(attempt_span);
    let outcome = announce_running_unless_quick(shared, &reporter, attempt).await;
    let elapsed = started.elapsed().as_secs_f64();
    shared.metrics.attempt_ran(job.job_type.as_str(), elapsed);
    settle(
        shared,
        acks,
        &reporter,
        &delivery,
        outcome,
        elapsed * 1000.0,
    )
    .await;
}

/// Runs `attempt`, announcing `running` only once it has taken `WARREN_ANNOUNCE_RUNNING_AFTER_MS`
/// (default 50 ms; 0 announces every attempt at its start): an attempt
/// that ends sooner goes straight from `queued` to its outcome (no client could have seen it
/// running), which spares the broker one confirmed publish and two deliveries per quick job.
/// A handler that reports progress announces `running` itself.
async fn announce_running_unless_quick(
    shared: &Shared,
    reporter: &Reporter,
    attempt: impl Future<Output = Outcome>,
) -> Outcome {
    let announce = async {
        if let Err(error) = reporter.publish(Change::to(JobStatus::Running)).await {
            tracing::warn!(%error, "running event not published; the job goes on");
        }
    };
    if shared.announce_running_after.is_zero() {
        // Zero means every attempt: announced before the handler starts, not raced with it.
        announce.await;
        return attempt.await;
    }
    let mut attempt = std::pin::pin!(attempt);
    tokio::select! {
        outcome = &mut attempt => return outcome,
        () = tokio::time::sleep(shared.announce_running_after) => {}
    }
    let ((), outcome) = tokio::join!(announce, attempt);
    outcome
}

/// A handler's result, unless no store could keep it faithfully or no gateway could read it
/// (nested past [`warren_shared::storable::MAX_DEPTH`], a NUL or lone surrogate in a string, a
/// number beyond PostgreSQL's `numeric`): then the attempt fails for good with kind
/// `invalid_result`, saying why, instead of sending an event every gateway would refuse.
fn storable(result: serde_json::Value) -> Outcome {
    let checked = serde_json::to_string(&result)
        .map_err(|e| e.to_string())
        .and_then(|text| warren_shared::storable::check(&text));
    match checked {
        Ok(()) => Outcome::Succeeded(result),
        Err(why) => Outcome::Failed {
            error: JobError::new(
                ErrorKind::InvalidResult,
                format!("the handler's result cannot be kept: it {why}"),
            ),
            retryable: false,
        },
    }
}

/// Runs the handler on its own task, so a panic is caught as a failed attempt; stops it at
/// its timeout, or when a cancel request cancels its context (after [`CANCEL_GRACE`] to stop
/// on its own). Timeouts and panics count as retryable; a handler error says for itself.
async fn execute(handler: &Handler, context: JobContext, timeout: Duration) -> Outcome {
    let cancel = context.cancel.clone();
    let mut task = AbortOnDropHandle::new(tokio::spawn(handler(context)));
    let joined = tokio::select! {
        joined = &mut task => joined,
        () = tokio::time::sleep(timeout) => {
            cancel.cancel();
            let message = format!("the attempt ran longer than its timeout of {} ms", timeout.as_millis());
            return Outcome::Failed { error: JobError::new(ErrorKind::Timeout, message), retryable: true };
        }
        () = cancel.cancelled() => {
            let _stopped = tokio::time::timeout(CANCEL_GRACE, &mut task).await;
            return Outcome::Cancelled;
        }
    };
    match joined {
        Ok(Ok(result)) => storable(result),
        Ok(Err(error)) => Outcome::Failed {
            retryable: error.retryable,
            error: JobError::new(error.kind, error.message),
        },
        Err(join_error) if join_error.is_panic() => {
            let panic = join_error.into_panic();
            let text = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-text panic payload".to_owned());
            let error = JobError::new(ErrorKind::Panic, format!("the handler panicked: {text}"));
            Outcome::Failed {
                error,
                retryable: true,
            }
        }
        Err(_) => {
            let error = JobError::new(ErrorKind::Aborted, "the handler task was cancelled");
            Outcome::Failed {
                error,
                retryable: true,
            }
        }
    }
}
