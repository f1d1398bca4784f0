//! Publishing a settlement's messages until the broker confirms them, while the worker holds
//! the delivery.
//!
//! An outcome the broker did not confirm (a nack, no confirm in time, a queue without a leader
//! while a cluster re-elects one) is not the job's fault. Returning the delivery to its queue
//! would run the handler again and, on a quorum queue, count one more delivery: a job whose
//! outcome cannot be published for a few seconds would reach the poison threshold and then the
//! broker's delivery limit, and end `failed` or dead-lettered while still `queued` in the store.
//! So the worker keeps the delivery (unacked, so it is safe) and publishes again, backing off
//! as a reconnect does ([`next_backoff`]); the broker's own redelivery is left for when the
//! channel is gone, and for an outage longer than [`PATIENCE`].

use std::time::{Duration, Instant};

use lapin::Channel;
use warren_shared::amqp::{PublishError, next_backoff};

use crate::state::Shared;

/// How long a settlement keeps trying before it gives the delivery back to the broker. Well
/// under RabbitMQ's default `consumer_timeout` (30 min), past which the broker would close the
/// channel for holding the delivery.
pub(crate) const PATIENCE: Duration = Duration::from_secs(300);

/// What a settlement publishes (the `what` label of the metric, and the logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Publish {
    /// The outcome event (`succeeded`, `cancelled`, `retrying`, `failed`).
    Outcome,
    /// The job's next attempt, into its retry wait queue.
    Retry,
    /// A copy into the dead letters.
    DeadLetter,
}

impl Publish {
    /// The metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Outcome => "outcome",
            Self::Retry => "retry",
            Self::DeadLetter => "dead_letter",
        }
    }
}

/// Runs `publish` until the broker confirms it. Gives up with the last error when `channel`
/// is closed (the broker has returned the delivery to its queue already, so holding it is
/// pointless) or once the next try would start after [`PATIENCE`].
pub(crate) async fn until_confirmed<F, Fut>(
    shared: &Shared,
    channel: &Channel,
    what: Publish,
    mut publish: F,
) -> Result<(), PublishError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), PublishError>>,
{
    let started = Instant::now();
    let mut wait = None;
    loop {
        let error = match publish().await {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        shared.metrics.unconfirmed(what.as_str());
        let next = next_backoff(wait);
        if !channel.status().connected() {
            tracing::warn!(%error, what = what.as_str(), "not confirmed and the channel is closed; the broker returns the job to its queue");
            return Err(error);
        }
        if started.elapsed() + next > PATIENCE {
            tracing::error!(%error, what = what.as_str(), ?PATIENCE, "still not confirmed; giving up holding the job");
            return Err(error);
        }
        tracing::warn!(%error, what = what.as_str(), retry_in = ?next, "not confirmed; holding the job and publishing again");
        tokio::time::sleep(next).await;
        wait = Some(next);
    }
}
