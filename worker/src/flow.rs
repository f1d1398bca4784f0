//! The worker's side of flow control (see [`warren_shared::flow`]): the settings snapshot it
//! reads from `<ns>.flow` every [`POLL`], and the admission of a delivery: a paused type's
//! jobs wait; a type with `max_running` needs a slot token, held until the job is settled; a
//! type with `rate_limit` takes a rate token of the current window for good. A delivery that
//! may not start yet is held here, unacknowledged (so it stays `queued` and is not counted as
//! redelivered), and tried again when the settings change or a moment later.

use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};
use lapin::{
    Channel,
    message::BasicGetMessage,
    options::{BasicAckOptions, BasicGetOptions, BasicRejectOptions},
};
use tokio::sync::Notify;
use warren_shared::{
    JobType, Topology,
    amqp::{self, Pool},
    flow::{FlowSnapshot, POLL, RateLimit, Token, TypeFlow},
    message,
};

use crate::metrics::WorkerMetrics;

/// Why a delivery waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Held {
    /// Its type is paused.
    Paused,
    /// Its type's `max_running` jobs run already.
    MaxRunning,
    /// Its type's `rate_limit` is used up for this window.
    RateLimit,
}

impl Held {
    /// The metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Paused => "paused",
            Self::MaxRunning => "max_running",
            Self::RateLimit => "rate_limit",
        }
    }
}

/// A delivery let through: when it started (the instant its rate token, if any, counts for)
/// and the slot it holds, if its type has `max_running`.
#[derive(Debug)]
pub(crate) struct Admission {
    pub(crate) at: DateTime<Utc>,
    pub(crate) slot: Option<Slot>,
}

/// A slot token held while a job runs; [`Slot::release`] gives it back.
#[derive(Debug)]
pub(crate) struct Slot {
    token: BasicGetMessage,
    generation: u64,
    job_type: String,
}

/// The settings this worker knows, and a wake-up when they change.
#[derive(Debug, Default)]
pub(crate) struct FlowView {
    snapshot: Mutex<FlowSnapshot>,
    /// Woken when the snapshot changes.
    pub(crate) changed: Notify,
}

impl FlowView {
    fn of(&self, job_type: &str) -> TypeFlow {
        self.snapshot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .of(job_type)
    }

    /// Takes `snapshot` if it is newer than the one known.
    fn offer(&self, snapshot: FlowSnapshot, metrics: &WorkerMetrics) {
        let mut known = self.snapshot.lock().unwrap_or_else(PoisonError::into_inner);
        if snapshot.version > known.version {
            tracing::info!(version = snapshot.version, types = ?snapshot.types, "flow settings");
            metrics.flow_version(snapshot.version);
            *known = snapshot;
            drop(known);
            self.changed.notify_waiters();
        }
    }

    /// Reads `<ns>.flow` every [`POLL`] for as long as the session lives, on a channel of its
    /// own. A read that fails (the channel closed, or the queue has no leader while a cluster
    /// re-elects one) keeps the settings known and reads again on a new channel, with backoff.
    /// Ending the session instead would cancel its consumers and return the deliveries it had
    /// taken but not started to their queue, each one delivery more towards the poison
    /// threshold and the queue's delivery limit, at every reconnect while the read fails.
    pub(crate) async fn follow(&self, pool: &Pool, topology: &Topology, metrics: &WorkerMetrics) {
        let queue = topology.flow_queue();
        let mut backoff = None;
        loop {
            let (error, read_some) = self.read_until_failure(pool, &queue, metrics).await;
            metrics.flow_read_failed();
            if read_some {
                backoff = None;
            }
            let wait = amqp::next_backoff(backoff);
            tracing::warn!(%error, retry_in = ?wait, "cannot read the flow settings; keeping the known ones and reading again");
            tokio::time::sleep(wait).await;
            backoff = Some(wait);
        }
    }

    /// Reads `queue` every [`POLL`] on a new channel until a read fails; says why, and whether
    /// any read succeeded first.
    async fn read_until_failure(
        &self,
        pool: &Pool,
        queue: &str,
        metrics: &WorkerMetrics,
    ) -> (String, bool) {
        let channel = match amqp::channel(pool).await {
            Ok(channel) => channel,
            Err(error) => return (error.to_string(), false),
        };
        let mut every = tokio::time::interval(POLL);
        let mut read_some = false;
        loop {
            every.tick().await;
            let got = channel
                .basic_get(queue.into(), BasicGetOptions::default())
                .await;
            match got {
                Ok(Some(message)) => {
                    // Returned at once: the snapshot stays for every other worker.
                    let returned = message
                        .delivery
                        .acker
                        .reject(BasicRejectOptions { requeue: true })
                        .await;
                    match message::decode::<FlowSnapshot>(&message.delivery.data) {
                        Ok(snapshot) => self.offer(snapshot, metrics),
                        Err(error) => tracing::warn!(%error, "unreadable flow settings; ignored"),
                    }
                    if let Err(error) = returned {
                        return (error.to_string(), true);
                    }
                }
                Ok(None) => {}
                Err(error) => return (error.to_string(), read_some),
            }
            read_some = true;
        }
    }

    /// Whether a job of `job_type` may start now, taking the tokens it needs from `channel`
    /// (slot tokens are held until [`Slot::release`]); `Err` says why it waits.
    pub(crate) async fn admit(
        &self,
        channel: &Channel,
        topology: &Topology,
        job_type: &JobType,
    ) -> Result<Admission, Held> {
        let flow = self.of(job_type.as_str());
        if flow.paused {
            return Err(Held::Paused);
        }
        let slot = match flow.max_running {
            Some(_) => Some(
                take_slot(channel, topology, job_type, flow.generation)
                    .await
                    .ok_or(Held::MaxRunning)?,
            ),
            None => None,
        };
        let at = match flow.rate_limit {
            Some(rate) => match take_rate(channel, topology, job_type, rate).await {
                Some(at) => at,
                None => {
                    if let Some(slot) = slot {
                        slot.release(self).await;
                    }
                    return Err(Held::RateLimit);
                }
            },
            None => Utc::now(),
        };
        Ok(Admission { at, slot })
    }
}

/// A token from `queue`, or `None` when it is empty (or unreachable: the job waits).
async fn take(channel: &Channel, queue: &str) -> Option<(BasicGetMessage, Token)> {
    loop {
        let message = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .ok()??;
        match message::decode::<Token>(&message.delivery.data) {
            Ok(token) => return Some((message, token)),
            Err(error) => {
                tracing::warn!(%error, queue, "unreadable token; dropped");
                let _ = message.delivery.acker.ack(BasicAckOptions::default()).await;
            }
        }
    }
}

/// A slot token of `generation` or newer; older ones are dropped on the way.
async fn take_slot(
    channel: &Channel,
    topology: &Topology,
    job_type: &JobType,
    generation: u64,
) -> Option<Slot> {
    let queue = topology.slots_queue(job_type);
    loop {
        let (message, token) = take(channel, &queue).await?;
        // A token newer than the settings this worker knows is current (the worker has not
        // read the new snapshot yet).
        if token.generation >= generation {
            return Some(Slot {
                token: message,
                generation: token.generation,
                job_type: job_type.to_string(),
            });
        }
        // A token of an earlier max_running: the gateway published the current ones.
        let _ = message.delivery.acker.ack(BasicAckOptions::default()).await;
    }
}

/// Takes (for good) a rate token of the window the start falls in, and returns the start:
/// the instant right after the token came, so the job's `started_at` lies in the token's
/// window (a start is never counted in the next window as well as its own tokens). Older
/// windows' leftovers are dropped on the way; a token of a later window (the gateway's clock
/// is ahead) goes back, and the job waits for that window.
async fn take_rate(
    channel: &Channel,
    topology: &Topology,
    job_type: &JobType,
    rate: RateLimit,
) -> Option<DateTime<Utc>> {
    let queue = topology.rate_queue(job_type);
    loop {
        let (message, token) = take(channel, &queue).await?;
        let at = Utc::now();
        let window = rate.window_of(at);
        let acker = &message.delivery.acker;
        match token.window {
            Some(w) if w == window => {
                let _ = acker.ack(BasicAckOptions::default()).await;
                return Some(at);
            }
            Some(w) if w > window => {
                let _ = acker.reject(BasicRejectOptions { requeue: true }).await;
                return None;
            }
            _ => {
                let _ = acker.ack(BasicAckOptions::default()).await;
            }
        }
    }
}

impl Slot {
    /// Gives the slot back for another job (or drops it if `max_running` changed since).
    pub(crate) async fn release(self, flow: &FlowView) {
        let current = flow.of(&self.job_type).generation;
        let acker = &self.token.delivery.acker;
        let released = if self.generation >= current {
            acker.reject(BasicRejectOptions { requeue: true }).await
        } else {
            acker.ack(BasicAckOptions::default()).await
        };
        if let Err(error) = released {
            // The channel is gone, and the token went back with it.
            tracing::debug!(%error, "slot token returned with its channel");
        }
    }
}
