//! The consumer of worker events.
//!
//! It reads `<ns>.events.store` (competing with other gateways, so each event is applied
//! once, whatever the number of gateways) and applies whatever has arrived, up to the
//! prefetch, in one store call; it acks the batch only once the store has it. Then it wakes
//! this gateway's waiters of the jobs that changed; other gateways' waiters hear of the change
//! from the store's change feed (see [`crate::jobs::wake`]). A waiter is therefore only ever
//! woken with what the store already has.
//!
//! A step of a workflow that finished has its workflow settled right after the batch is
//! acked (its dependents released or cancelled, see [`crate::workflows`]); a gateway that
//! dies in between leaves the workflow marked owed a settle, and some gateway's sweeper
//! settles it.
//!
//! A malformed event is rejected without requeue (the queue dead-letters it to `<ns>.dead`).
//! When the store fails, the consumer stops and its unacked events return to the queue; it
//! reconnects with backoff, so events wait in RabbitMQ until the store is back.

use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions},
    types::FieldTable,
};
use tokio_util::sync::CancellationToken;
use tracing::Span;
use warren_shared::{
    JobEvent, Topology,
    amqp::{self, BrokerError, Pool},
    message, otel, topology,
    trace::{TRACEPARENT, TraceContext},
};

use crate::{
    fault,
    metrics::GatewayMetrics,
    store::{Applied, JobStore, StoreError},
    watch::Watchers,
    workflows::WorkflowService,
};

/// Events fetched ahead of the store (and the largest batch).
const PREFETCH: u16 = 512;

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
    let channel = amqp::channel(pool).await?;
    topology::declare_core(&channel, topology).await?;
    Ok(channel)
}

/// Consumes events until `stop` is cancelled, reconnecting with backoff.
pub async fn run(
    pool: Pool,
    topology: Topology,
    store: Arc<dyn JobStore>,
    workflows: WorkflowService,
    metrics: Arc<GatewayMetrics>,
    stop: CancellationToken,
) {
    let watchers = workflows.watchers().clone();
    let queue = topology.events_store_queue();
    let consumer = Consumer {
        queue: &queue,
        store: store.as_ref(),
        watchers: &watchers,
        workflows: &workflows,
        metrics: &metrics,
    };
    amqp::reconnecting("events consumer", &stop, || {
        session(&pool, &topology, &consumer, &stop)
    })
    .await;
}

/// What the consumer applies events to and whom it tells.
struct Consumer<'a> {
    /// The queue it consumes (`<ns>.events.store`), for span names.
    queue: &'a str,
    store: &'a dyn JobStore,
    watchers: &'a Watchers,
    workflows: &'a WorkflowService,
    metrics: &'a GatewayMetrics,
}

/// One connection's worth of consuming; `Ok` only when asked to stop.
async fn session(
    pool: &Pool,
    topology: &Topology,
    consumer_of: &Consumer<'_>,
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
        handle_batch(consumer_of, batch).await?;
    }
    // Unacked events go back to the queue for another gateway (or our next start).
    let _closed = channel.close(200, "gateway shutting down".into()).await;
    Ok(())
}

/// Applies a batch of deliveries in one store call, then acks them all at once. Malformed
/// events are rejected (dead-lettered) one by one first. If the store fails, nothing is acked
/// and the session ends, so the events are delivered again.
async fn handle_batch(consumer: &Consumer<'_>, batch: Vec<Delivery>) -> Result<(), SessionError> {
    let mut events = Vec::with_capacity(batch.len());
    let mut spans = Vec::with_capacity(batch.len());
    let mut last_valid = None;
    for delivery in &batch {
        match message::decode::<JobEvent>(&delivery.data) {
            Ok(mut event) => {
                event.traceparent = amqp::text_header(delivery, TRACEPARENT);
                let span = apply_span(consumer, &event);
                // What the outcome causes (a webhook) is a child of applying it.
                if let Some(applying) = otel::context_of(&span) {
                    event.traceparent = Some(applying.header());
                }
                spans.push(span);
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
    let mut finished_steps = Vec::new();
    if !events.is_empty() {
        let outcomes = consumer.store.apply_events(&events).await?;
        for ((event, outcome), span) in events.iter().zip(outcomes).zip(&spans) {
            let _entered = span.enter();
            log_outcome(event, &outcome);
            consumer.metrics.event_applied(&outcome);
            if let Applied::Updated(job) = outcome {
                if job.status.is_terminal()
                    && let Some(workflow) = job.workflow_id
                {
                    finished_steps.push((workflow, outcome_trace(event)));
                }
                consumer.watchers.publish(*job);
            }
        }
    }
    if let Some(last) = last_valid {
        // Deliveries on this channel are settled in order: acking the last valid one with
        // `multiple` acks every earlier one not settled yet (rejected ones already are).
        last.acker.ack(BasicAckOptions { multiple: true }).await?;
    }
    drop(spans);
    if !finished_steps.is_empty() {
        // The worst place to die: the outcomes are stored and acked, the dependents not yet
        // released. The store marked the workflows owed a settle; a sweeper finishes it.
        fault::pause_point("after_step_outcome").await;
        consumer.workflows.settle_after(finished_steps).await;
    }
    Ok(())
}

/// With OTLP export, one consumer span per event (child of the worker's span that sent it),
/// lasting while its batch is applied; without, none (no cost per event).
fn apply_span(consumer: &Consumer<'_>, event: &JobEvent) -> Span {
    if !otel::enabled() {
        return Span::none();
    }
    let queue = consumer.queue;
    let span = tracing::info_span!("apply_event", job_id = %event.id,
        job_type = %event.job_type, status = %event.status, attempt = event.attempt,
        seq = event.seq, otel.name = %format_args!("process {queue}"), otel.kind = "consumer",
        messaging.system = "rabbitmq", messaging.operation.type = "process",
        messaging.destination.name = %queue, messaging.message.id = %event.id);
    if let Some(trace) = event.traceparent.as_deref().and_then(TraceContext::parse) {
        otel::set_parent(&span, &trace);
    }
    span
}

/// The trace a step's outcome hands on to the steps it releases: the applying span's with
/// export, else the event's.
fn outcome_trace(event: &JobEvent) -> TraceContext {
    event
        .traceparent
        .as_deref()
        .and_then(TraceContext::parse)
        .unwrap_or_else(TraceContext::new_root)
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
