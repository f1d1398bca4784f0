//! The events consumer: reads `<ns>.events.store` (competing with other gateways) and applies
//! each worker event to the store, acking only once the store has it.
//!
//! A malformed event is rejected without requeue (the queue dead-letters it to `<ns>.dead`).
//! When the store fails, the consumer stops and its unacked events return to the queue; it
//! reconnects with backoff, so events wait in RabbitMQ until the store is back.

use std::sync::Arc;

use futures_util::StreamExt;
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions},
    types::FieldTable,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use warren_shared::{
    JobEvent, Topology,
    amqp::{self, BrokerError, Pool},
    message, topology,
};

use crate::store::{Applied, JobStore, StoreError};

/// Events fetched ahead of the store.
const PREFETCH: u16 = 256;

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

/// Consumes events until `stop` is cancelled, reconnecting with backoff.
pub async fn run(
    pool: Pool,
    topology: Topology,
    store: Arc<dyn JobStore>,
    stop: CancellationToken,
) {
    amqp::reconnecting("events consumer", &stop, || {
        session(&pool, &topology, store.as_ref(), &stop)
    })
    .await;
}

/// One connection's worth of consuming; `Ok` only when asked to stop.
async fn session(
    pool: &Pool,
    topology: &Topology,
    store: &dyn JobStore,
    stop: &CancellationToken,
) -> Result<(), SessionError> {
    let connection = pool
        .get()
        .await
        .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
    let channel = connection.create_channel().await?;
    drop(connection);
    topology::declare_core(&channel, topology).await?;
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
        match delivery {
            Some(Ok(delivery)) => handle(store, delivery).await?,
            Some(Err(error)) => return Err(error.into()),
            None => return Err(SessionError::ConsumerEnded),
        }
    }
    // Unacked events go back to the queue for another gateway (or our next start).
    let _closed = channel.close(200, "gateway shutting down".into()).await;
    Ok(())
}

async fn handle(store: &dyn JobStore, delivery: Delivery) -> Result<(), SessionError> {
    let event: JobEvent = match message::decode(&delivery.data) {
        Ok(event) => event,
        Err(error) => {
            tracing::error!(%error, "malformed event; dead-lettering it");
            delivery
                .acker
                .reject(BasicRejectOptions { requeue: false })
                .await?;
            return Ok(());
        }
    };
    let span = tracing::debug_span!(
        "apply_event", job_id = %event.id, job_type = %event.job_type,
        status = %event.status, attempt = event.attempt, seq = event.seq
    );
    apply(store, &event).instrument(span).await?;
    delivery.acker.ack(BasicAckOptions::default()).await?;
    Ok(())
}

async fn apply(store: &dyn JobStore, event: &JobEvent) -> Result<(), StoreError> {
    match store.apply_event(event).await? {
        Applied::Updated(job) => tracing::debug!(status = %job.status, "event applied"),
        Applied::Ignored(reason) => tracing::debug!(reason = reason.as_str(), "event ignored"),
        Applied::UnknownJob => tracing::warn!("event for a job this store does not know; dropped"),
    }
    Ok(())
}
