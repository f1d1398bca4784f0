//! The two consumers of worker events.
//!
//! The store consumer ([`run`]) reads `<ns>.events.store` (competing with other gateways) and
//! applies each event to the store, acking only once the store has it.
//!
//! The notifier ([`run_notifier`]) reads this gateway's own exclusive queue, which receives
//! every event of the namespace, and wakes the requests waiting on a job. It applies a watched
//! job's event to the store before waking its waiters, so what a waiter answers is already in
//! the store (the store consumer's later application of the same event is then ignored as a
//! duplicate). Events of unwatched jobs are dropped at once: each gateway sees the whole event
//! traffic, but only pays for the jobs its own clients wait on.
//!
//! A malformed event is rejected without requeue (the queue dead-letters it to `<ns>.dead`).
//! When the store fails, the consumer stops and its unacked events return to the queue; it
//! reconnects with backoff, so events wait in RabbitMQ until the store is back.

use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions},
    types::{AMQPValue, FieldTable},
};
use tokio_util::sync::CancellationToken;
use warren_shared::{
    JobEvent, Topology,
    amqp::{self, BrokerError, Pool},
    message,
    readiness::ReadyFlag,
    topology,
};

use crate::{
    metrics::GatewayMetrics,
    store::{Applied, JobStore, StoreError},
    watch::Watchers,
};

/// Events fetched ahead of the store.
const PREFETCH: u16 = 256;
/// Events the notifier queue keeps when the gateway falls behind (oldest dropped first):
/// waiters re-read the store at their deadline, so a dropped wake-up only delays an answer.
const NOTIFIER_MAX_LENGTH: i64 = 10_000;

/// Why a consuming session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("the broker cancelled the events consumer")]
    ConsumerEnded,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<lapin::Error> for SessionError {
    fn from(error: lapin::Error) -> Self {
        Self::Broker(BrokerError::Amqp(error))
    }
}

/// A channel on a pooled connection, with the core topology declared.
async fn open_channel(pool: &Pool, topology: &Topology) -> Result<lapin::Channel, SessionError> {
    let connection = pool
        .get()
        .await
        .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
    let channel = connection.create_channel().await?;
    topology::declare_core(&channel, topology).await?;
    Ok(channel)
}

/// Consumes events until `stop` is cancelled, reconnecting with backoff.
pub async fn run(
    pool: Pool,
    topology: Topology,
    store: Arc<dyn JobStore>,
    metrics: Arc<GatewayMetrics>,
    stop: CancellationToken,
) {
    amqp::reconnecting("events consumer", &stop, || {
        session(&pool, &topology, store.as_ref(), &metrics, &stop)
    })
    .await;
}

/// One connection's worth of consuming; `Ok` only when asked to stop.
async fn session(
    pool: &Pool,
    topology: &Topology,
    store: &dyn JobStore,
    metrics: &GatewayMetrics,
    stop: &CancellationToken,
) -> Result<(), SessionError> {
    let channel = open_channel(pool, topology).await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            topology.events_store_queue().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue = %topology.events_store_queue(), "events consumer started");
    loop {
        let delivery = tokio::select! {
            () = stop.cancelled() => break,
            next = consumer.next() => next,
        };
        let mut batch = match delivery {
            Some(Ok(delivery)) => vec![delivery],
            Some(Err(error)) => return Err(error.into()),
            None => return Err(SessionError::ConsumerEnded),
        };
        // Take whatever else has already arrived, without waiting for more.
        while batch.len() < usize::from(PREFETCH) {
            match consumer.next().now_or_never() {
                Some(Some(Ok(delivery))) => batch.push(delivery),
                Some(Some(Err(error))) => return Err(error.into()),
                Some(None) => return Err(SessionError::ConsumerEnded),
                None => break,
            }
        }
        handle_batch(store, metrics, batch).await?;
    }
    // Unacked events go back to the queue for another gateway (or our next start).
    let _closed = channel.close(200, "gateway shutting down".into()).await;
    Ok(())
}

/// Applies a batch of deliveries in one store call, then acks them all at once. Malformed
/// events are rejected (dead-lettered) one by one first. If the store fails, nothing is acked
/// and the session ends, so the events are delivered again.
async fn handle_batch(
    store: &dyn JobStore,
    metrics: &GatewayMetrics,
    batch: Vec<Delivery>,
) -> Result<(), SessionError> {
    let mut events = Vec::with_capacity(batch.len());
    let mut last_valid = None;
    for delivery in &batch {
        match message::decode::<JobEvent>(&delivery.data) {
            Ok(event) => {
                events.push(event);
                last_valid = Some(delivery);
            }
            Err(error) => {
                tracing::error!(%error, "malformed event; dead-lettering it");
                let reject = BasicRejectOptions { requeue: false };
                delivery.acker.reject(reject).await?;
            }
        }
    }
    if !events.is_empty() {
        let outcomes = store.apply_events(&events).await?;
        for (event, outcome) in events.iter().zip(&outcomes) {
            log_outcome(event, outcome);
            metrics.event_applied(outcome);
        }
    }
    if let Some(last) = last_valid {
        // Deliveries on this channel are settled in order: acking the last valid one with
        // `multiple` acks every earlier one not settled yet (rejected ones already are).
        last.acker.ack(BasicAckOptions { multiple: true }).await?;
    }
    Ok(())
}

fn log_outcome(event: &JobEvent, outcome: &Applied) {
    let span = tracing::debug_span!(
        "apply_event", job_id = %event.id, job_type = %event.job_type,
        status = %event.status, attempt = event.attempt, seq = event.seq
    );
    let _entered = span.enter();
    match outcome {
        Applied::Updated(job) => tracing::debug!(status = %job.status, "event applied"),
        Applied::Ignored(reason) => tracing::debug!(reason = reason.as_str(), "event ignored"),
        Applied::UnknownJob => tracing::warn!("event for a job this store does not know; dropped"),
    }
}

/// Consumes this gateway's own event queue until `stop` is cancelled, waking waiters.
pub async fn run_notifier(
    pool: Pool,
    topology: Topology,
    store: Arc<dyn JobStore>,
    watchers: Arc<Watchers>,
    metrics: Arc<GatewayMetrics>,
    ready: ReadyFlag,
    stop: CancellationToken,
) {
    amqp::reconnecting("notifier", &stop, || {
        notifier_session(
            &pool,
            &topology,
            store.as_ref(),
            &watchers,
            &metrics,
            &ready,
            &stop,
        )
    })
    .await;
}

async fn notifier_session(
    pool: &Pool,
    topology: &Topology,
    store: &dyn JobStore,
    watchers: &Watchers,
    metrics: &GatewayMetrics,
    ready: &ReadyFlag,
    stop: &CancellationToken,
) -> Result<(), SessionError> {
    let channel = open_channel(pool, topology).await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(NOTIFIER_MAX_LENGTH),
    );
    let mut consumer =
        topology::subscribe_exclusive(&channel, topology.events_exchange(), "#", arguments).await?;
    tracing::info!(queue = %consumer.queue(), "notifier started");
    let _ready = ready.up();
    loop {
        let delivery = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            next = consumer.next() => next,
        };
        match delivery {
            Some(Ok(delivery)) => notify(store, watchers, metrics, &delivery.data).await,
            Some(Err(error)) => return Err(error.into()),
            None => return Err(SessionError::ConsumerEnded),
        }
    }
}

/// Wakes the waiters of the event's job, if any, with the job's state after the event.
async fn notify(store: &dyn JobStore, watchers: &Watchers, metrics: &GatewayMetrics, body: &[u8]) {
    let Ok(event) = message::decode::<JobEvent>(body) else {
        return; // The store consumer dead-letters it and logs why.
    };
    if !watchers.is_watched(event.id) {
        return;
    }
    let applied = store.apply_event(&event).await;
    if let Ok(applied) = &applied {
        metrics.event_applied(applied);
    }
    let snapshot = match applied {
        Ok(Applied::Updated(job)) => Ok(Some(*job)),
        Ok(Applied::Ignored(_) | Applied::UnknownJob) => store.get(event.id).await,
        Err(error) => Err(error),
    };
    match snapshot {
        Ok(Some(job)) => watchers.publish(job),
        Ok(None) => {}
        Err(error) => {
            tracing::warn!(%error, job_id = %event.id, "cannot read a watched job; its waiters re-read at their deadline");
        }
    }
}
