//! The consume loop: one session per broker connection, reconnecting with backoff, handing
//! each delivery to [`attempt::process`] on its own task under a concurrency limit.
//!
//! At-least-once: a job is acked only after its outcome event is confirmed by the broker
//! ([`crate::settle`]). Any failure before that leaves the delivery unacked (or nacks it
//! back), so the broker hands it out again; the store keeps the first terminal outcome.

use std::{future::Future, sync::Arc, time::Duration};

use futures_util::{StreamExt, stream};
use lapin::message::Delivery;
use lapin::{
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::{
    sync::CancellationToken,
    task::{AbortOnDropHandle, TaskTracker},
};
use warren_shared::{
    JobType, Priority,
    amqp::{self, BrokerError, Pool},
    topology,
};

use crate::{acks::Acks, attempt, cancel, flow, metrics::WorkerMetrics, state::Shared};

/// Why a consuming session ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("the broker cancelled the consumer of {0} (queue deleted?)")]
    ConsumerEnded(String),
    #[error("the task reading the flow settings stopped (it panicked)")]
    FlowLost,
}

impl From<lapin::Error> for SessionError {
    fn from(error: lapin::Error) -> Self {
        Self::Broker(BrokerError::Amqp(error))
    }
}

/// The jobs a worker is running: tracked so shutdown can wait for them, and abandoned
/// together (their futures dropped, their deliveries left unacked) once the grace period is
/// over. Beside them, each consume channel's ack flusher ([`Acks`]), which ends once that
/// channel's jobs have, after sending their last acks.
#[derive(Debug, Clone, Default)]
pub(crate) struct InFlight {
    tracker: TaskTracker,
    abandon: CancellationToken,
    flushers: TaskTracker,
}

impl InFlight {
    fn spawn(&self, job: impl Future<Output = ()> + Send + 'static) {
        let abandon = self.abandon.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = job => {}
                () = abandon.cancelled() => {}
            }
        });
    }

    fn spawn_flusher(&self, flusher: impl Future<Output = ()> + Send + 'static) {
        self.flushers.spawn(flusher);
    }

    /// Waits up to `grace` for the running jobs, then abandons the rest; then for the acks
    /// of those that finished. Returns how many were abandoned.
    pub(crate) async fn drain(&self, grace: Duration) -> usize {
        self.tracker.close();
        self.flushers.close();
        let running = self.tracker.len();
        if running > 0 {
            tracing::info!(running, ?grace, "waiting for jobs in flight");
        }
        let unfinished = if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
        {
            0
        } else {
            let unfinished = self.tracker.len();
            self.abandon.cancel();
            self.tracker.wait().await;
            unfinished
        };
        self.flushers.wait().await;
        unfinished
    }
}

/// Consumes until `stop` is cancelled, reconnecting with backoff; jobs run in `in_flight`.
pub(crate) async fn consume(
    shared: &Arc<Shared>,
    pool: &Pool,
    stop: &CancellationToken,
    in_flight: &InFlight,
) {
    let permits = Arc::new(Semaphore::new(usize::from(shared.concurrency)));
    amqp::reconnecting("consuming", stop, || {
        shared.metrics.session_started();
        session(shared, pool, stop, in_flight, &permits)
    })
    .await;
}

/// The prefetch of a consumer of `priority`'s queue, for a worker running `concurrency` jobs:
/// twice that for `high` and `normal`, that for `low` (so a worker holds at most five times its
/// concurrency per job type, and runs its concurrency).
fn prefetch(concurrency: u16, priority: Priority) -> u16 {
    match priority {
        Priority::High | Priority::Normal => concurrency.saturating_mul(2),
        Priority::Low => concurrency,
    }
}

/// Declares `<ns>.flow` and the token queues of every type this worker handles.
async fn flow_decl(channel: &lapin::Channel, shared: &Shared) -> Result<(), SessionError> {
    warren_shared::flow::declare_flow_queue(channel, &shared.topology).await?;
    for job_type in shared.handlers.keys() {
        warren_shared::flow::declare_token_queues(channel, &shared.topology, job_type).await?;
    }
    Ok(())
}

/// How often held deliveries are tried again when nothing else happens (a slot freed on
/// another worker, a new rate window).
const HELD_RETRY: Duration = Duration::from_millis(50);

/// Whether `delivery` may start now (its type from the AMQP `type` property); a message
/// without one goes on, to be dead-lettered by the attempt.
async fn admit(
    shared: &Shared,
    channel: &lapin::Channel,
    delivery: &Delivery,
) -> Result<flow::Admission, flow::Held> {
    let Some(job_type) = delivery
        .properties
        .kind()
        .as_ref()
        .and_then(|kind| JobType::parse(kind.as_str()).ok())
    else {
        return Ok(flow::Admission {
            at: chrono::Utc::now(),
            slot: None,
        });
    };
    shared
        .flow
        .admit(channel, &shared.topology, &job_type)
        .await
}

/// Deliveries held back by flow control, in the order they came.
#[derive(Default)]
struct Holding {
    deliveries: Vec<(usize, Delivery, flow::Held)>,
}

impl Holding {
    fn is_empty(&self) -> bool {
        self.deliveries.is_empty()
    }

    fn hold(
        &mut self,
        level: usize,
        delivery: Delivery,
        reason: flow::Held,
        metrics: &WorkerMetrics,
    ) {
        self.deliveries.push((level, delivery, reason));
        self.count(metrics);
    }

    /// The first held delivery that may start now, highest priority first; each type is
    /// tried once per call.
    async fn next_admitted(
        &mut self,
        shared: &Shared,
        channel: &lapin::Channel,
    ) -> Option<(Delivery, flow::Admission)> {
        if self.deliveries.is_empty() {
            return None;
        }
        self.deliveries.sort_by_key(|(level, _, _)| *level);
        let mut tried = std::collections::HashMap::new();
        for index in 0..self.deliveries.len() {
            let kind = self.deliveries[index].1.properties.kind().clone();
            let kind = kind.as_ref().map(|k| k.to_string()).unwrap_or_default();
            if let Some(reason) = tried.get(&kind) {
                self.deliveries[index].2 = *reason;
                continue;
            }
            match admit(shared, channel, &self.deliveries[index].1).await {
                Ok(admission) => {
                    let (_, delivery, _) = self.deliveries.remove(index);
                    self.count(&shared.metrics);
                    return Some((delivery, admission));
                }
                Err(reason) => {
                    self.deliveries[index].2 = reason;
                    tried.insert(kind, reason);
                }
            }
        }
        self.count(&shared.metrics);
        None
    }

    /// Sets the held-back gauges.
    fn count(&self, metrics: &WorkerMetrics) {
        metrics.held_back(self.deliveries.iter().map(|(_, delivery, reason)| {
            let kind = delivery.properties.kind().as_ref();
            (
                kind.map(|k| k.to_string()).unwrap_or_default(),
                reason.as_str(),
            )
        }));
    }
}

/// One connection's worth of consuming; `Ok` only when asked to stop, after cancelling the
/// consumers so no new deliveries arrive. Jobs in flight keep their channels.
async fn session(
    shared: &Arc<Shared>,
    pool: &Pool,
    stop: &CancellationToken,
    in_flight: &InFlight,
    permits: &Arc<Semaphore>,
) -> Result<(), SessionError> {
    let connection = amqp::connection(pool).await?;
    // Shared by every job in flight (one handle each, see `start` below): an `Arc`, because
    // cloning a lapin `Channel` clones some fifteen handles of its own.
    let consume_channel = Arc::new(connection.create_channel().await?);
    drop(connection);
    shared.set_consume_channel(&consume_channel);
    let counters = shared.metrics.ack_counters();
    let (acks, flusher) = Acks::new(
        lapin::Channel::clone(&consume_channel),
        shared.concurrency,
        counters,
    );
    in_flight.spawn_flusher(flusher);
    let publish_channel = Arc::new(amqp::confirm_channel(pool).await?);
    topology::declare_core(&publish_channel, &shared.topology).await?;

    // Flow settings: the snapshot's queue and each type's token queues exist before use.
    flow_decl(&publish_channel, shared).await?;
    let mut flow_follower = AbortOnDropHandle::new(tokio::spawn({
        let (shared, pool) = (shared.clone(), pool.clone());
        async move {
            shared
                .flow
                .follow(&pool, &shared.topology, &shared.metrics)
                .await;
        }
    }));

    let control = cancel::consume_control(&consume_channel, &shared.topology).await?;
    let _control = AbortOnDropHandle::new(tokio::spawn({
        let (shared, acks) = (shared.clone(), acks.clone());
        async move { cancel::listen(&shared.cancels, control, &acks).await }
    }));

    // One consumer per queue: each type has a queue per priority level. Taking from the
    // levels in order whenever a slot is free makes a waiting `high` job start before any
    // `normal` or `low` one this worker holds (see `docs/topology.md`).
    let mut levels: [Vec<_>; 3] = Default::default();
    let mut tags = Vec::new();
    for job_type in shared.handlers.keys() {
        topology::declare_job_queue(&consume_channel, &shared.topology, job_type).await?;
        for (level, (priority, queue)) in
            shared.topology.job_queues(job_type).into_iter().enumerate()
        {
            // Quorum queues take the prefetch in force when a consumer starts. `high` and
            // `normal` hold as many again as can run, so when a slot frees the next job of
            // that level is already here and a lower one does not slip in meanwhile.
            consume_channel
                .basic_qos(
                    prefetch(shared.concurrency, priority),
                    BasicQosOptions::default(),
                )
                .await?;
            let consumer = consume_channel
                .basic_consume(
                    queue.clone().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            tags.push(consumer.tag());
            // A consumer stream that ends (the broker cancelled it) yields one final `None`.
            let tagged = consumer
                .map(Some)
                .chain(stream::once(async { None }))
                .map(move |item| (queue.clone(), item));
            levels[level].push(Box::pin(tagged));
        }
    }
    let types: Vec<&str> = shared.handlers.keys().map(JobType::as_str).collect();
    tracing::info!(types = %types.join(","), concurrency = shared.concurrency, "consuming");
    let [high, normal, low] = levels.map(stream::select_all);
    let (mut high, mut normal, mut low) = (high, normal, low);
    let _ready = shared.readiness.up();
    let start = |delivery: Delivery, admission: flow::Admission, permit: OwnedSemaphorePermit| {
        let flow::Admission {
            at: admitted_at,
            slot,
        } = admission;
        let (shared, acks) = (shared.clone(), acks.clone());
        let channels = (consume_channel.clone(), publish_channel.clone());
        // Boxed here: the attempt's future is ~11 KB, and each move on its way into the task
        // (the tracker's wrapper, tokio's cell) would copy it whole (a tenth of the worker's
        // CPU per job in `perf`).
        in_flight.spawn(Box::pin(async move {
            // The delivery's acker does not keep its channel open: lapin closes a channel
            // (requeueing its unacked deliveries) when the last handle drops, so the job holds
            // the consume channel until it is settled.
            let (consume_channel, publish_channel) = channels;
            attempt::process(&shared, publish_channel, &acks, delivery, admitted_at).await;
            if let Some(slot) = slot {
                slot.release(&shared.flow).await;
            }
            drop((consume_channel, acks, permit));
        }));
    };
    // Deliveries flow control holds back (see `crate::flow`), and a permit kept for them.
    let mut held = Holding::default();
    let mut spare = None;
    let mut retry = tokio::time::interval(HELD_RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let permit = match spare.take() {
            Some(permit) => permit,
            None => {
                let permit = tokio::select! {
                    () = stop.cancelled() => break,
                    permit = permits.clone().acquire_owned() => permit,
                };
                let Ok(permit) = permit else { break };
                permit
            }
        };
        if let Some((delivery, admission)) = held.next_admitted(shared, &consume_channel).await {
            start(delivery, admission, permit);
            continue;
        }
        let changed = shared.flow.changed.notified();
        let waiting = !held.is_empty();
        let next = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            _ = &mut flow_follower => return Err(SessionError::FlowLost),
            next = high.next() => (0, next),
            next = normal.next() => (1, next),
            next = low.next() => (2, next),
            () = changed, if waiting => {
                spare = Some(permit);
                continue;
            }
            _ = retry.tick(), if waiting => {
                spare = Some(permit);
                continue;
            }
        };
        match next {
            (level, Some((_, Some(Ok(delivery))))) => {
                match admit(shared, &consume_channel, &delivery).await {
                    Ok(admission) => start(delivery, admission, permit),
                    Err(reason) => {
                        held.hold(level, delivery, reason, &shared.metrics);
                        spare = Some(permit);
                    }
                }
            }
            (_, Some((_, Some(Err(error))))) => return Err(error.into()),
            (_, Some((queue, None))) => return Err(SessionError::ConsumerEnded(queue)),
            (_, None) => return Ok(()),
        }
    }
    for tag in tags {
        if let Err(error) = consume_channel
            .basic_cancel(tag, BasicCancelOptions::default())
            .await
        {
            tracing::warn!(%error, "cannot cancel a consumer; the channel closes anyway");
        }
    }
    tracing::info!("stopped consuming");
    Ok(())
}
