//! Building a worker from handlers, and running it until shutdown.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warren_shared::{JobType, Topology, amqp, job::InvalidJobType, readiness::ReadyFlag};

use crate::{
    cancel::Cancels,
    config::WorkerConfig,
    consume::{self, InFlight},
    handler::{Handler, HandlerFuture, HandlerResult, JobContext, Registry},
    health,
    metrics::WorkerMetrics,
    state::Shared,
};

/// How long closing the broker connection at shutdown may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Collects handlers; [`WorkerBuilder::build`] checks them against the configuration.
#[derive(Default)]
pub struct WorkerBuilder {
    handlers: Vec<(String, Handler)>,
}

/// Why a worker could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A handler was registered under a name that is not a valid job type.
    #[error(transparent)]
    InvalidType(#[from] InvalidJobType),
    /// Two handlers were registered for one type.
    #[error("two handlers are registered for job type {0:?}")]
    Duplicate(String),
    /// `WARREN_WORKER_TYPES` names a type this binary has no handler for.
    #[error(
        "WARREN_WORKER_TYPES names {requested:?}, which this worker has no handler for; it handles: {available}"
    )]
    NotHandled {
        /// The type asked for.
        requested: String,
        /// The types registered.
        available: String,
    },
    /// Nothing to consume.
    #[error("the worker has no handlers to run")]
    NoHandlers,
    /// The connection pool could not be set up.
    #[error(transparent)]
    Pool(#[from] amqp::PoolSetupError),
}

impl WorkerBuilder {
    /// A builder with no handlers.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for jobs of `job_type` (`[a-z0-9][a-z0-9._-]{0,99}`).
    #[must_use]
    pub fn handler<F, Fut>(mut self, job_type: &str, handler: F) -> Self
    where
        F: Fn(JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        let boxed: Handler = Arc::new(move |context| Box::pin(handler(context)) as HandlerFuture);
        self.handlers.push((job_type.to_owned(), boxed));
        self
    }

    /// Checks the handlers, keeps those `WARREN_WORKER_TYPES` selects (all when unset), and
    /// prepares the broker connection.
    pub fn build(self, config: WorkerConfig) -> Result<Worker, BuildError> {
        let mut all = Registry::new();
        for (name, handler) in self.handlers {
            let job_type = JobType::parse(name)?;
            if all.insert(job_type.clone(), handler).is_some() {
                return Err(BuildError::Duplicate(job_type.to_string()));
            }
        }
        let handlers = if config.types.is_empty() {
            all
        } else {
            let mut available: Vec<&str> = all.keys().map(JobType::as_str).collect();
            available.sort_unstable();
            let available = available.join(", ");
            let mut selected = Registry::new();
            for job_type in &config.types {
                let handler = all.get(job_type).ok_or_else(|| BuildError::NotHandled {
                    requested: job_type.to_string(),
                    available: available.clone(),
                })?;
                selected.insert(job_type.clone(), handler.clone());
            }
            selected
        };
        if handlers.is_empty() {
            return Err(BuildError::NoHandlers);
        }
        let identity = worker_identity();
        let pool = amqp::connection_pool(&config.broker, &format!("warren-worker {identity}"), 1)?;
        let shared = Shared {
            topology: Topology::from_config(&config.broker),
            handlers,
            identity: identity.into(),
            concurrency: config.concurrency,
            announce_running_after: Duration::from_millis(config.announce_running_after_ms),
            publish_timeout: Duration::from_millis(config.publish_timeout_ms),
            cancels: Cancels::default(),
            readiness: ReadyFlag::default(),
            broker_address: config.broker.amqp_url.to_string().into(),
            pool: pool.clone(),
            metrics: WorkerMetrics::default(),
            consume_channel: std::sync::Mutex::default(),
            flow: crate::flow::FlowView::default(),
        };
        Ok(Worker {
            shared: Arc::new(shared),
            pool,
            config,
        })
    }
}

/// Why a worker stopped before it could run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The health endpoint's address could not be bound.
    #[error("cannot listen on {addr} (WARREN_METRICS_ADDR): {source}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// A worker ready to consume its job queues.
pub struct Worker {
    shared: Arc<Shared>,
    pool: amqp::Pool,
    config: WorkerConfig,
}

impl Worker {
    /// Starts building a worker.
    #[must_use]
    pub fn builder() -> WorkerBuilder {
        WorkerBuilder::new()
    }

    /// The job types this worker consumes.
    #[must_use]
    pub fn job_types(&self) -> Vec<JobType> {
        self.shared.handlers.keys().cloned().collect()
    }

    /// Binds `WARREN_METRICS_ADDR` for the probes, then [`Worker::run_on`] it.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), RunError> {
        let addr = self.config.metrics_addr;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| RunError::Bind { addr, source })?;
        self.run_on(listener, shutdown).await
    }

    /// Serves the probes and `/metrics` on `listener`, and consumes until `shutdown` resolves;
    /// then stops consuming, gives jobs in flight the grace period to finish, and abandons the
    /// rest unacked so the broker hands them out again.
    pub async fn run_on(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), RunError> {
        let addr = listener
            .local_addr()
            .map(|addr| addr.to_string())
            .unwrap_or_default();
        tracing::info!(%addr, broker = %self.shared.broker_address, "health endpoint listening");
        let stop = CancellationToken::new();
        let probes = tokio::spawn(health::serve(listener, self.shared.clone(), stop.clone()));
        let signal = {
            let stop = stop.clone();
            tokio::spawn(async move {
                shutdown.await;
                stop.cancel();
            })
        };
        let in_flight = InFlight::default();
        // On a task of the runtime's own, not on the caller's thread: under `#[tokio::main]`
        // that is the main thread, outside the worker pool, and every delivery would then
        // wake it and every attempt it spawns wake a pool thread (a context switch each way).
        let consuming = tokio::spawn({
            let (shared, pool, stop, in_flight) = (
                self.shared.clone(),
                self.pool.clone(),
                stop.clone(),
                in_flight.clone(),
            );
            async move { consume::consume(&shared, &pool, &stop, &in_flight).await }
        });
        if let Err(error) = consuming.await {
            tracing::error!(%error, "the consuming task failed; stopping");
            stop.cancel();
        }
        signal.abort();

        let abandoned = in_flight.drain(self.config.shutdown.grace()).await;
        if abandoned > 0 {
            tracing::warn!(
                abandoned,
                "grace period over; left unfinished jobs unacked for redelivery"
            );
        }
        if let Some(channel) = self.shared.take_consume_channel() {
            close_consume_channel(&channel).await;
        }
        close_connection(&self.pool).await;
        if let Err(error) = probes.await {
            tracing::error!(%error, "health endpoint task failed");
        }
        tracing::info!("worker stopped");
        Ok(())
    }
}

/// Closes the consume channel gracefully. Acks are sent asynchronously on it; the broker's
/// `Close-Ok` comes after it has processed every earlier frame on the channel, so this is what
/// makes the last acks land before the process exits (and returns unfinished jobs at once).
async fn close_consume_channel(channel: &lapin::Channel) {
    match tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, "worker stopped".into())).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(%error, "consume channel not closed cleanly; unacked jobs return when it drops");
        }
        Err(_) => {
            tracing::warn!("consume channel close timed out; unacked jobs return when it drops")
        }
    }
}

/// Closes the broker connection, best effort: what matters (acks flushed) is done.
async fn close_connection(pool: &amqp::Pool) {
    let close = async {
        let connection = pool.get().await.map_err(|e| e.to_string())?;
        connection
            .close(200, "worker stopped".into())
            .await
            .map_err(|e| e.to_string())
    };
    if let Ok(Err(error)) | Err(error) = tokio::time::timeout(CLOSE_TIMEOUT, close)
        .await
        .map_err(|_| "timed out".to_owned())
    {
        tracing::debug!(%error, "broker connection not closed cleanly");
    }
    pool.close();
}

/// `host-pid`: which process sent an event, as it appears in events and the management UI.
fn worker_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    format!("{host}-{}", std::process::id())
}
