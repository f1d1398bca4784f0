//! Carrying out what [`decide`] settled for an attempt, on the broker, then acking; or
//! returning the delivery to its queue when a publish was not confirmed:
//!
//! - succeed / cancel → the outcome event, then ack;
//! - retry → the job again with `attempt + 1` into the retry wait queue of its backoff tier, a
//!   `retrying` event with the next try's time, then ack;
//! - give up → a copy of the job with its error history in `<ns>.dead`, a `failed` event, then
//!   ack.
//!
//! Each publish is tried again while the worker holds the delivery ([`crate::confirm`]): an
//! outcome the broker cannot confirm for a while neither reruns the job nor counts as one more
//! delivery.
//!
//! Each attempt's error is appended to the `x-warren-errors` header (JSON), so the dead letter
//! carries the whole history.

use chrono::Utc;
use lapin::{
    Channel,
    message::Delivery,
    options::BasicNackOptions,
    types::{AMQPValue, FieldTable, ShortString},
};
use warren_shared::{
    JobError, JobMessage, JobStatus, Topology,
    amqp::{self, Outgoing, PublishError},
    message,
    topology::{self, DEAD_REASON_HEADER, RETRY_DELAY_HEADER},
};

use crate::{
    acks::Acks,
    confirm::{Publish, until_confirmed},
    decide::{DeadReason, Outcome, Settlement, decide},
    events::{Change, Reporter},
    headers::history_headers,
    state::Shared,
};

/// Settles `delivery` as [`decide`] says for `outcome`; its ack goes out with others
/// ([`Acks`]).
pub(crate) async fn settle(
    shared: &Shared,
    acks: &Acks,
    reporter: &Reporter,
    delivery: &Delivery,
    outcome: Outcome,
    elapsed_ms: f64,
) {
    let job = reporter.job();
    let (status, published) = match decide(outcome, job.attempt, job.max_attempts) {
        Settlement::Succeed(result) => {
            let change = Change {
                result: Some(result),
                ..Change::to(JobStatus::Succeeded)
            };
            (
                JobStatus::Succeeded,
                announce(shared, reporter, change).await,
            )
        }
        Settlement::Cancel(error) => {
            let change = Change::with_error(JobStatus::Cancelled, error);
            (
                JobStatus::Cancelled,
                announce(shared, reporter, change).await,
            )
        }
        Settlement::Retry(error) => {
            shared.metrics.retried(job.job_type.as_str());
            tracing::warn!(error_kind = %error.kind, error = %error.message, "attempt failed; retrying");
            (
                JobStatus::Retrying,
                retry(shared, reporter, delivery, error).await,
            )
        }
        Settlement::GiveUp {
            error,
            reason,
            dead,
        } => {
            tracing::warn!(error_kind = %error.kind, error = %error.message, "job failed");
            let given_up = give_up(shared, reporter, delivery, error, &reason, dead).await;
            (JobStatus::Failed, given_up)
        }
    };
    match published {
        Ok(()) => {
            if status.is_terminal() {
                shared
                    .metrics
                    .finished(job.job_type.as_str(), status.as_str());
            }
            acks.ack(delivery.delivery_tag);
            tracing::info!(%status, elapsed_ms, "job settled");
        }
        Err(error) => {
            tracing::error!(%error, "outcome not confirmed; returning the job to its queue");
            requeue(acks, delivery).await;
        }
    }
}

/// Publishes the outcome event `change` until the broker confirms it (the same event each
/// time: the store applies it once).
async fn announce(
    shared: &Shared,
    reporter: &Reporter,
    change: Change,
) -> Result<(), PublishError> {
    let event = reporter.event(change);
    let body = message::encode(&event);
    until_confirmed(shared, reporter.channel(), Publish::Outcome, || {
        reporter.send(&event, &body)
    })
    .await
}

/// Republishes the job as its next attempt into the wait queue of its backoff tier, then
/// announces `retrying`.
async fn retry(
    shared: &Shared,
    reporter: &Reporter,
    delivery: &Delivery,
    error: JobError,
) -> Result<(), PublishError> {
    let job = reporter.job();
    let seed = u64::try_from(job.id.as_uuid().as_u128() & u128::from(u64::MAX)).unwrap_or_default();
    let delay = shared.topology.retry_delay(job.attempt, seed);
    let next = JobMessage {
        attempt: job.attempt + 1,
        ..job.clone()
    };
    let mut headers = history_headers(delivery, job.attempt, &error);
    for (name, value) in &reporter.trace_headers() {
        headers.insert(name.clone(), value.clone());
    }
    headers.insert(
        RETRY_DELAY_HEADER.into(),
        AMQPValue::LongString(Topology::retry_label(delay).as_str().into()),
    );
    let body = message::encode(&next);
    // The wait queue dead-letters it back with this key: to its own priority's queue.
    let routing_key = topology::routing_key(&job.job_type, job.priority);
    let outgoing = Outgoing {
        exchange: shared.topology.retry_exchange(),
        routing_key,
        body: &body,
        message_id: job.id.to_string(),
        kind: job.job_type.as_str(),
        headers,
        // Unroutable means the tier's wait queue is missing: keep the job rather than lose it.
        mandatory: true,
    };
    until_confirmed(shared, reporter.channel(), Publish::Retry, || {
        amqp::publish_confirmed(
            reporter.channel(),
            outgoing.clone(),
            reporter.publish_timeout(),
        )
    })
    .await?;
    let next_attempt_at = Utc::now() + delay;
    let change = Change {
        next_attempt_at: Some(next_attempt_at),
        ..Change::with_error(JobStatus::Retrying, error)
    };
    announce(shared, reporter, change).await
}

/// Stores a copy of the job with its error history in `<ns>.dead`, then announces `failed`.
async fn give_up(
    shared: &Shared,
    reporter: &Reporter,
    delivery: &Delivery,
    error: JobError,
    reason: &str,
    dead: DeadReason,
) -> Result<(), PublishError> {
    let headers = history_headers(delivery, reporter.job().attempt, &error);
    publish_dead(shared, reporter.channel(), delivery, reason, headers).await?;
    shared.metrics.dead_lettered(dead.as_str());
    announce(
        shared,
        reporter,
        Change::with_error(JobStatus::Failed, error),
    )
    .await
}

/// Publishes the delivery's body to `<ns>.dead` with `reason` and `headers`, until confirmed.
async fn publish_dead(
    shared: &Shared,
    channel: &Channel,
    delivery: &Delivery,
    reason: &str,
    mut headers: FieldTable,
) -> Result<(), PublishError> {
    headers.insert(
        DEAD_REASON_HEADER.into(),
        AMQPValue::LongString(reason.into()),
    );
    headers.insert(
        "x-warren-worker".into(),
        AMQPValue::LongString(shared.identity.as_ref().into()),
    );
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(ShortString::as_str)
        .unwrap_or_default();
    let outgoing = Outgoing {
        exchange: shared.topology.dead_exchange(),
        routing_key: delivery.routing_key.to_string(),
        body: &delivery.data,
        message_id: message_id.to_owned(),
        kind: "dead-letter",
        headers,
        mandatory: false,
    };
    until_confirmed(shared, channel, Publish::DeadLetter, || {
        amqp::publish_confirmed(channel, outgoing.clone(), shared.publish_timeout)
    })
    .await
}

/// Moves an unreadable message to `<ns>.dead` with the reason, then acks it; if that cannot be
/// confirmed, returns it to its queue rather than lose it.
pub(crate) async fn dead_letter(
    shared: &Shared,
    channel: &Channel,
    acks: &Acks,
    delivery: Delivery,
    reason: &str,
) {
    tracing::error!(reason, queue = %delivery.routing_key, "unreadable job message; dead-lettering it");
    match publish_dead(shared, channel, &delivery, reason, FieldTable::default()).await {
        Ok(()) => {
            shared.metrics.dead_lettered("unreadable");
            acks.ack(delivery.delivery_tag);
        }
        Err(error) => {
            tracing::error!(%error, "dead letter not confirmed; returning the message to its queue");
            requeue(acks, &delivery).await;
        }
    }
}

/// Returns a delivery to its queue. If even that fails the channel is gone, and the broker
/// requeues everything unacked on it anyway.
async fn requeue(acks: &Acks, delivery: &Delivery) {
    let options = BasicNackOptions {
        requeue: true,
        multiple: false,
    };
    match delivery.acker.nack(options).await {
        Ok(true) => acks.settled(delivery.delivery_tag),
        Ok(false) => {
            tracing::warn!("channel closed before the nack; the broker requeues the message")
        }
        Err(error) => {
            tracing::warn!(%error, "nack failed; the broker requeues the message when the channel closes");
        }
    }
}
