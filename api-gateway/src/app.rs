//! Startup and shutdown: bind, wire the parts together, serve until told to stop, drain.

use std::{future::Future, net::SocketAddr, sync::Arc};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warren_shared::{Topology, amqp, readiness::ReadyFlag};

use crate::{
    auth::{AdminKey, Authenticator},
    config::GatewayConfig,
    events,
    flow::FlowService,
    http::{self, AppState},
    jobs::{self, JobService},
    keys::KeyService,
    metrics::GatewayMetrics,
    model::SpecLimits,
    publisher::Publisher,
    queues::QueueService,
    retention,
    schedules::{self, ScheduleService},
    state::Services,
    store::{CallWatch, PostgresStore, StoreError, Stores},
    watch::Watchers,
    webhooks::{CallbackPolicy, deliverer::Deliverer},
    workflows::{self, WorkflowService},
};

/// Connections the gateway keeps to RabbitMQ (the publisher and the events consumer share
/// them).
const AMQP_POOL_SIZE: usize = 2;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The HTTP address could not be bound.
    #[error("cannot listen on {addr} (WARREN_HTTP_ADDR): {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The AMQP connection pool could not be set up.
    #[error(transparent)]
    Pool(#[from] amqp::PoolSetupError),
    /// The webhook client could not be set up.
    #[error("{0}")]
    Webhooks(String),
    /// The job store could not be opened or migrated.
    #[error("cannot open the job store at {address} (WARREN_DATABASE_URL): {source}")]
    Store {
        /// Where it connected: hosts, database and role (never the password).
        address: String,
        /// Why it failed.
        source: StoreError,
    },
}

/// A gateway bound to its port, ready to run.
pub struct Application {
    listener: TcpListener,
    config: GatewayConfig,
    state: AppState,
    stores: Stores,
    pool: amqp::Pool,
    topology: Topology,
    deliverer: Arc<Deliverer>,
}

impl Application {
    /// Binds `WARREN_HTTP_ADDR` and sets up (but does not yet open) the broker connections, so
    /// the gateway starts even while RabbitMQ is down and reports it on `/readyz`.
    pub async fn build(config: GatewayConfig) -> Result<Self, StartupError> {
        let addr = config.http_addr;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartupError::Bind { addr, source })?;
        let stores = match &config.database_url {
            Some(url) => {
                let store = PostgresStore::connect_with(url, config.store_options())
                    .await
                    .map_err(|source| StartupError::Store {
                        address: PostgresStore::describe(url),
                        source,
                    })?;
                Stores::from(Arc::new(store))
            }
            None => {
                tracing::warn!(
                    "WARREN_DATABASE_URL is not set: jobs are kept in memory and lost on restart"
                );
                Stores::memory()
            }
        };
        Self::with_parts(config, listener, stores)
    }

    /// Builds on an already-bound listener and given stores (tests bind port 0).
    pub fn with_parts(
        config: GatewayConfig,
        listener: TcpListener,
        stores: Stores,
    ) -> Result<Self, StartupError> {
        let topology = Topology::from_config(&config.broker);
        let pool = amqp::connection_pool(&config.broker, "warren-gateway", AMQP_POOL_SIZE)?;
        let metrics = Arc::new(GatewayMetrics::default());
        stores.jobs.count_apply_paths(&metrics.events_by_path);
        let stores = stores.with_deadline(&CallWatch {
            deadline: config.store_timeout,
            timeouts: metrics.store_timeouts.clone(),
            durations: metrics.store_calls.clone(),
        });
        let publisher = Publisher::new(
            pool.clone(),
            topology.clone(),
            config.publish_timeout(),
            metrics.publish_confirm.clone(),
        );
        let publisher = Arc::new(publisher);
        let deliverer = Deliverer::new(
            stores.callbacks.clone(),
            stores.workflows.clone(),
            config.webhooks.clone(),
            metrics.clone(),
        )
        .map_err(StartupError::Webhooks)?;
        if config.admin_key.is_none() {
            tracing::warn!(
                "WARREN_ADMIN_KEY is not set: Warren is open, and anyone who can reach this port \
                 can submit, read and cancel every job"
            );
        }
        let admin_key = config.admin_key.as_ref().map(AdminKey::expose);
        let auth = Arc::new(Authenticator::new(admin_key, stores.keys.clone()));
        let limits = Arc::new(SpecLimits {
            default_timeout_ms: config.default_timeout_ms,
            max_timeout_ms: config.max_timeout_ms,
            max_delay: config.max_delay,
        });
        let policy = CallbackPolicy {
            signing: config.webhooks.secret.is_some(),
            allow_private: config.webhooks.allow_private,
        };
        let jobs = JobService::new(
            &stores,
            publisher.clone(),
            Arc::new(Watchers::default()),
            metrics.clone(),
            limits.clone(),
            policy,
        );
        let state = AppState::new(Services {
            workflows: WorkflowService::new(
                &stores,
                jobs.clone(),
                publisher.clone(),
                metrics.clone(),
            ),
            schedules: ScheduleService::new(stores.schedules.clone(), jobs.clone()),
            keys: KeyService::new(stores.keys.clone(), auth.clone()),
            queues: QueueService::new(stores.jobs.clone(), publisher.clone()),
            flow: FlowService::new(
                stores.flow.clone(),
                publisher.clone(),
                QueueService::new(stores.jobs.clone(), publisher.clone()),
                metrics.clone(),
            ),
            jobs,
            publisher,
            limits,
            broker_address: config.broker.amqp_url.to_string().into(),
            change_feed: ReadyFlag::default(),
            openapi: Arc::default(),
            metrics,
            max_wait: config.max_wait(),
            user_timeout: config.user_timeout(),
            auth,
            management_url: config.management_url.as_deref().map(Arc::from),
        });
        Ok(Self {
            listener,
            config,
            state,
            stores,
            pool,
            topology,
            deliverer: Arc::new(deliverer),
        })
    }

    /// The registry of requests waiting on jobs (tests check that it empties).
    pub fn watchers(&self) -> Arc<Watchers> {
        self.state.jobs.watchers().clone()
    }

    /// The gateway's routes over its state, without serving them: tests drive them with
    /// `tower::ServiceExt::oneshot` (no broker connection is opened until something publishes).
    pub fn router(&self) -> axum::Router {
        http::router(self.state.clone(), self.config.max_body_bytes)
    }

    /// The port the gateway listens on.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map_or(0, |addr| addr.port())
    }

    /// Serves until `shutdown` resolves, then stops accepting, gives requests in flight the
    /// grace period to finish, and stops the events consumer.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Self {
            listener,
            config,
            state,
            stores,
            pool,
            topology,
            deliverer,
        } = self;
        let stop_consumer = CancellationToken::new();
        let store = stores.jobs.clone();
        let watchers = state.jobs.watchers().clone();
        let consumers = [
            tokio::spawn(events::run(
                pool.clone(),
                topology,
                store.clone(),
                state.workflows.clone(),
                state.metrics.clone(),
                stop_consumer.clone(),
            )),
            tokio::spawn(workflows::sweeper::run(
                state.workflows.clone(),
                stop_consumer.clone(),
            )),
            tokio::spawn(jobs::wake::run(
                store.clone(),
                watchers.clone(),
                state.change_feed.clone(),
                stop_consumer.clone(),
            )),
            tokio::spawn(jobs::scheduler::run(
                state.jobs.clone(),
                stop_consumer.clone(),
            )),
            tokio::spawn(schedules::firing::run(
                state.schedules.clone(),
                config.misfire_grace,
                stop_consumer.clone(),
            )),
            tokio::spawn(jobs::relay::run(
                state.jobs.clone(),
                config.outbox_grace(),
                stop_consumer.clone(),
            )),
            tokio::spawn(deliverer.run(watchers.clone(), stop_consumer.clone())),
            tokio::spawn(state.flow.clone().run(stop_consumer.clone())),
            tokio::spawn(retention::run(
                store,
                config.retention,
                stop_consumer.clone(),
            )),
        ];

        let draining = CancellationToken::new();
        let signal = {
            let draining = draining.clone();
            async move {
                shutdown.await;
                tracing::info!(
                    "shutting down: refusing new connections, finishing requests in flight"
                );
                draining.cancel();
            }
        };
        let grace = config.shutdown.grace();
        let addr = listener
            .local_addr()
            .map_or_else(|_| config.http_addr.to_string(), |addr| addr.to_string());
        tracing::info!(%addr, namespace = %config.broker.namespace, broker = %config.broker.amqp_url, "gateway listening");
        let app = http::router(state, config.max_body_bytes);
        let server = axum::serve(listener, app).with_graceful_shutdown(signal);
        let served = tokio::select! {
            served = server.into_future() => served,
            () = async { draining.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(?grace, "requests still in flight after the grace period; dropping them");
                Ok(())
            }
        };
        stop_consumer.cancel();
        for consumer in consumers {
            if let Err(error) = consumer.await {
                tracing::error!(%error, "a background task of the gateway failed");
            }
        }
        pool.close();
        tracing::info!("gateway stopped");
        served
    }
}
