//! The consume loop: one session per broker connection, reconnecting with backoff, running
//! each delivery as a job under a concurrency limit, and deciding in one place
//! ([`settle`]) whether a delivery is acked or returned.
//!
//! At-least-once: a job is acked only after its outcome event is confirmed by the broker. Any
//! failure before that leaves the delivery unacked (or nacks it back), so the broker hands it
//! out again; the store keeps the first terminal outcome.

use std::{future::Future, sync::Arc, time::Duration};

use futures_util::{StreamExt, stream};
use lapin::{
    Channel,
    message::Delivery,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use tokio::{sync::Semaphore, time::Instant};
use tokio_util::{
    sync::CancellationToken,
    task::{AbortOnDropHandle, TaskTracker},
};
use tracing::Instrument;
use warren_shared::{
    JobError, JobMessage, JobStatus, JobType, Topology,
    amqp::{self, BrokerError, Pool},
    message,
    readiness::ReadyFlag,
    topology,
    trace::{TRACEPARENT, TraceContext},
};

use crate::{
    cancel::{self, Cancels},
    handler::{Handler, JobContext, Registry},
    metrics::WorkerMetrics,
    report::{Change, Reporter},
    settle::{Outcome, dead_letter, header_text, previous_deliveries, settle},
};

/// How long a cancelled handler may take to stop on its own before it is dropped.
const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// A job handed out this many times without an outcome is failed as poison instead of run:
/// its handler has most likely killed a worker each time. (The queue's delivery limit, above
/// this, is the broker's own backstop.)
const POISON_DELIVERIES: u64 = 5;

/// How long a publish (event or dead letter) may wait for its confirm.
pub(crate) const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// What the worker needs while it runs, shared by every job task.
pub(crate) struct Shared {
    pub(crate) topology: Topology,
    /// The broker's URL with its password hidden, for logs and `/readyz`.
    pub(crate) broker_address: Arc<str>,
    /// The connection pool (its manager knows which node the worker is on).
    pub(crate) pool: Pool,
    pub(crate) handlers: Registry,
    pub(crate) identity: Arc<str>,
    pub(crate) concurrency: u16,
    /// Attempts that finish within this are not announced as `running` (zero: all are).
    pub(crate) announce_running_after: Duration,
    pub(crate) cancels: Cancels,
    /// Whether a session is consuming every job queue.
    pub(crate) readiness: ReadyFlag,
    /// The Prometheus series.
    pub(crate) metrics: WorkerMetrics,
    /// The current session's consume channel, closed gracefully at shutdown.
    pub(crate) consume_channel: std::sync::Mutex<Option<Channel>>,
}

impl Shared {
    fn set_consume_channel(&self, channel: &Channel) {
        let mut current = self
            .consume_channel
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *current = Some(channel.clone());
    }

    /// Takes the last session's consume channel (once).
    pub(crate) fn take_consume_channel(&self) -> Option<Channel> {
        self.consume_channel
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// Why a consuming session ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("the broker cancelled the consumer of {0} (queue deleted?)")]
    ConsumerEnded(String),
}

impl From<lapin::Error> for SessionError {
    fn from(error: lapin::Error) -> Self {
        Self::Broker(BrokerError::Amqp(error))
    }
}

/// The jobs a worker is running: tracked so shutdown can wait for them, and abandoned
/// together (their futures dropped, their deliveries left unacked) once the grace period is
/// over.
#[derive(Debug, Clone, Default)]
pub(crate) struct InFlight {
    tracker: TaskTracker,
    abandon: CancellationToken,
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

    /// Waits up to `grace` for the running jobs, then abandons the rest; returns how many
    /// were abandoned.
    pub(crate) async fn drain(&self, grace: Duration) -> usize {
        self.tracker.close();
        let running = self.tracker.len();
        if running > 0 {
            tracing::info!(running, ?grace, "waiting for jobs in flight");
        }
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
        {
            return 0;
        }
        let unfinished = self.tracker.len();
        self.abandon.cancel();
        self.tracker.wait().await;
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
        session(shared, pool, stop, in_flight, &permits)
    })
    .await;
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
    let consume_channel = connection.create_channel().await?;
    drop(connection);
    shared.set_consume_channel(&consume_channel);
    let publish_channel = amqp::confirm_channel(pool).await?;
    topology::declare_core(&publish_channel, &shared.topology).await?;
    consume_channel
        .basic_qos(shared.concurrency, BasicQosOptions::default())
        .await?;

    let control = cancel::consume_control(&consume_channel, &shared.topology).await?;
    let _control = AbortOnDropHandle::new(tokio::spawn(cancel::listen(shared.clone(), control)));

    let mut consumers = Vec::new();
    let mut tags = Vec::new();
    for job_type in shared.handlers.keys() {
        let queue =
            topology::declare_job_queue(&consume_channel, &shared.topology, job_type).await?;
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
        consumers.push(Box::pin(tagged));
    }
    let types: Vec<&str> = shared.handlers.keys().map(JobType::as_str).collect();
    tracing::info!(types = %types.join(","), concurrency = shared.concurrency, "consuming");
    let mut deliveries = stream::select_all(consumers);
    let _ready = shared.readiness.up();
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            permit = permits.clone().acquire_owned() => permit,
        };
        let Ok(permit) = permit else { break };
        let next = tokio::select! {
            () = stop.cancelled() => break,
            next = deliveries.next() => next,
        };
        match next {
            Some((_, Some(Ok(delivery)))) => {
                let shared = shared.clone();
                let channels = (consume_channel.clone(), publish_channel.clone());
                in_flight.spawn(async move {
                    // The delivery's acker does not keep its channel open: lapin closes a
                    // channel (requeueing its unacked deliveries) when the last handle drops,
                    // so the job holds the consume channel until it is settled.
                    let (consume_channel, publish_channel) = channels;
                    process(&shared, publish_channel, delivery).await;
                    drop((consume_channel, permit));
                });
            }
            Some((_, Some(Err(error)))) => return Err(error.into()),
            Some((queue, None)) => return Err(SessionError::ConsumerEnded(queue)),
            None => return Ok(()),
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

/// Runs one delivery: reads the job, runs its handler, publishes the outcome, settles.
async fn process(shared: &Shared, channel: Channel, delivery: Delivery) {
    let job: JobMessage = match message::decode(&delivery.data) {
        Ok(job) => job,
        Err(error) => return dead_letter(shared, &channel, delivery, &error.to_string()).await,
    };
    let Some(handler) = shared.handlers.get(&job.job_type).cloned() else {
        let reason = format!(
            "this worker has no handler for job type {:?}",
            job.job_type.as_str()
        );
        return dead_letter(shared, &channel, delivery, &reason).await;
    };
    // Continue the trace the gateway started for the request (or start one).
    let trace = header_text(&delivery, TRACEPARENT)
        .as_deref()
        .and_then(TraceContext::parse)
        .unwrap_or_else(TraceContext::new_root);
    let span = tracing::info_span!(
        "job", job_id = %job.id, job_type = %job.job_type, attempt = job.attempt,
        redelivered = delivery.redelivered, trace_id = %trace.trace_id()
    );
    run_job(shared, channel, delivery, job, &handler, &trace)
        .instrument(span)
        .await;
}

async fn run_job(
    shared: &Shared,
    channel: Channel,
    delivery: Delivery,
    job: JobMessage,
    handler: &Handler,
    trace: &TraceContext,
) {
    let reporter = Reporter::new(
        channel,
        &shared.topology,
        job.clone(),
        shared.identity.clone(),
        trace.child(),
    );
    let cancel = CancellationToken::new();
    let _running = shared.cancels.track(job.id, cancel.clone());
    if cancel.is_cancelled() {
        tracing::info!("job was cancelled before it started; skipping it");
        return settle(shared, &reporter, &delivery, Outcome::Cancelled, 0.0).await;
    }
    let deliveries = previous_deliveries(&delivery) + 1;
    if deliveries >= POISON_DELIVERIES {
        let error = JobError::new(
            "poison",
            format!(
                "delivered {deliveries} times without an outcome: its handler probably crashes \
                 the worker; not running it again"
            ),
        );
        let outcome = Outcome::Failed {
            error,
            retryable: false,
        };
        return settle(shared, &reporter, &delivery, outcome, 0.0).await;
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
        reporter: reporter.clone(),
        cancel,
    };
    let outcome =
        announce_running_unless_quick(shared, &reporter, execute(handler, context, timeout)).await;
    let elapsed = started.elapsed().as_secs_f64();
    shared.metrics.attempt_ran(job.job_type.as_str(), elapsed);
    settle(shared, &reporter, &delivery, outcome, elapsed * 1000.0).await;
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
            return Outcome::Failed { error: JobError::new("timeout", message), retryable: true };
        }
        () = cancel.cancelled() => {
            let _stopped = tokio::time::timeout(CANCEL_GRACE, &mut task).await;
            return Outcome::Cancelled;
        }
    };
    match joined {
        Ok(Ok(result)) => Outcome::Succeeded(result),
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
            let error = JobError::new("panic", format!("the handler panicked: {text}"));
            Outcome::Failed {
                error,
                retryable: true,
            }
        }
        Err(_) => {
            let error = JobError::new("aborted", "the handler task was cancelled");
            Outcome::Failed {
                error,
                retryable: true,
            }
        }
    }
}
