//! Spawns the real gateway (and in-process workers) against the real RabbitMQ, each test in
//! its own namespace so tests run in parallel without meeting.

use std::{sync::Arc, time::Duration};

use lapin::{Channel, Connection, ConnectionProperties, types::FieldTable};
use serde_json::Value;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle, time::Instant};
use warren_gateway::{
    Application, GatewayConfig,
    store::{PostgresStore, Stores},
    watch::Watchers,
};
use warren_shared::{
    JobEvent, JobType, Topology,
    amqp::{self, Outgoing},
    config::BrokerConfig,
    message, removal, topology,
};
use warren_test_support::Namespace;
use warren_worker::{Worker, WorkerBuilder, WorkerConfig};

pub use warren_test_support::{DEADLINE, TestSchema, amqp_url, test_broker, unique_namespace};

/// A running gateway, the workers started for it, and a raw channel for poking the broker.
pub struct TestApp {
    pub address: String,
    /// The gateway's broker settings, which workers and helpers share.
    pub broker: BrokerConfig,
    pub client: reqwest::Client,
    /// A connection of the test's own, for probing and publishing.
    pub connection: Connection,
    /// A confirm channel on it.
    pub channel: Channel,
    pub watchers: Arc<Watchers>,
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
    pub job_types: Vec<JobType>,
    /// Where each in-process worker serves `/metrics`.
    pub worker_metrics: Vec<String>,
    /// Set once the namespace is removed or handed over; until then `Drop` removes it.
    released: bool,
}

impl Drop for TestApp {
    /// A test that failed before `stop` leaves nothing behind: its namespace is removed here.
    fn drop(&mut self) {
        let mut namespace = Namespace::new(self.topology());
        for job_type in &self.job_types {
            namespace.uses(job_type);
        }
        if self.released {
            namespace.hand_over();
        }
    }
}

/// The sum of the series named `series` (every label set) that `metrics` (a `/metrics` URL)
/// shows now; 0 when it has none.
pub async fn metric_sum(metrics: &str, series: &str) -> f64 {
    let text = http_client()
        .get(metrics)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| {
            line.strip_prefix(series)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// An HTTP client for talking to gateways (with the process's TLS provider installed first:
/// see [`warren_gateway::webhooks::install_tls_provider`]).
pub fn http_client() -> reqwest::Client {
    warren_gateway::webhooks::install_tls_provider();
    reqwest::Client::new()
}

/// The routes of a gateway on the memory store, not served and not connected: for requests
/// the router answers without the broker (validation), driven with `oneshot`.
pub async fn router() -> axum::Router {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = GatewayConfig::with_broker(test_broker(&unique_namespace()));
    Application::with_parts(config, listener, Stores::memory())
        .unwrap()
        .router()
}

/// Starts a gateway on port 0 in a fresh namespace.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a gateway after letting the test adjust its configuration, and waits until it is
/// ready (connected, notifier consuming), so no event a test publishes can go unnoticed.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut GatewayConfig)) -> TestApp {
    let app = spawn_unready_app_with(adjust).await;
    app.wait_until_ready().await;
    app
}

/// Starts a gateway on a store the test keeps a handle on, and waits until it is ready.
pub async fn spawn_app_on(stores: Stores, adjust: impl FnOnce(&mut GatewayConfig)) -> TestApp {
    let app = spawn_unready_app_on(Some(stores), adjust).await;
    app.wait_until_ready().await;
    app
}

/// Starts a gateway without waiting for it to be ready (for tests of an unreachable broker).
pub async fn spawn_unready_app_with(adjust: impl FnOnce(&mut GatewayConfig)) -> TestApp {
    spawn_unready_app_on(None, adjust).await
}

/// A confirm channel on `connection` with `topology`'s core declared. The gateway declares it
/// at the same moment, and RabbitMQ refuses a declare of a quorum queue whose leader the other
/// declare is still starting ("home node … is down or inaccessible", closing the channel), so
/// a refused declare is tried again on a fresh channel for up to 5 s.
async fn declared_core_channel(connection: &Connection, topology: &Topology) -> Channel {
    let started = Instant::now();
    loop {
        let channel = amqp::confirm_channel_on(connection).await.unwrap();
        match topology::declare_core(&channel, topology).await {
            Ok(()) => return channel,
            Err(error) if started.elapsed() < Duration::from_secs(5) => {
                eprintln!("declaring the core topology again after: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("cannot declare the core topology within 5 s: {error}"),
        }
    }
}

/// Starts a gateway on `store` (or the one its configuration names) without waiting.
async fn spawn_unready_app_on(
    stores: Option<Stores>,
    adjust: impl FnOnce(&mut GatewayConfig),
) -> TestApp {
    if std::env::var_os("WARREN_TEST_LOG").is_some() {
        warren_shared::telemetry::init(warren_shared::config::LogFormat::Pretty);
    }
    let namespace = unique_namespace();
    let mut config = GatewayConfig::with_broker(test_broker(&namespace));
    config.shutdown.shutdown_grace_secs = 5;
    adjust(&mut config);
    let broker = config.broker.clone();
    // Until the `TestApp` exists to remove it, a setup that panics removes what the gateway
    // declared meanwhile.
    let setup = Namespace::new(Topology::from_config(&broker));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stores = match (stores, &config.database_url) {
        (Some(stores), _) => stores,
        (None, Some(url)) => Stores::from(Arc::new(PostgresStore::connect(url).await.unwrap())),
        (None, None) => Stores::memory(),
    };
    let app = Application::with_parts(config, listener, stores).unwrap();
    let address = format!("http://127.0.0.1:{}", app.port());
    let watchers = app.watchers();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        app.run_until_stopped(async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = declared_core_channel(&connection, &Topology::from_config(&broker)).await;
    // From here the `TestApp`'s own `Drop` removes the namespace.
    let _no_types_yet = setup.hand_over();
    TestApp {
        address,
        broker,
        client: http_client(),
        connection,
        channel,
        watchers,
        stops: vec![stop],
        tasks: vec![task],
        job_types: Vec::new(),
        worker_metrics: Vec::new(),
        released: false,
    }
}

impl TestApp {
    /// Polls `/readyz` until it answers 200.
    pub async fn wait_until_ready(&self) {
        let started = Instant::now();
        while self.get("/readyz").await.status() != 200 {
            assert!(
                started.elapsed() < DEADLINE,
                "the gateway never became ready"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The deployment's topology names.
    pub fn topology(&self) -> Topology {
        Topology::from_config(&self.broker)
    }

    /// Starts an in-process worker with `builder`'s handlers, and waits until it consumes.
    pub async fn spawn_worker(&mut self, builder: WorkerBuilder) {
        self.spawn_worker_with(builder, |_| {}).await;
    }

    /// Starts an in-process worker after letting the test adjust its configuration.
    pub async fn spawn_worker_with(
        &mut self,
        builder: WorkerBuilder,
        adjust: impl FnOnce(&mut WorkerConfig),
    ) {
        let mut config = WorkerConfig::with_broker(self.broker.clone());
        config.shutdown.shutdown_grace_secs = 5;
        adjust(&mut config);
        let worker: Worker = builder.build(config).unwrap();
        let types = worker.job_types();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.worker_metrics
            .push(format!("http://{}/metrics", listener.local_addr().unwrap()));
        let (stop, stopped) = oneshot::channel::<()>();
        self.tasks.push(tokio::spawn(async move {
            let stopped = async {
                let _ = stopped.await;
            };
            worker.run_on(listener, stopped).await.unwrap();
        }));
        self.stops.push(stop);
        for job_type in types {
            self.wait_for_consumer(&job_type).await;
            self.job_types.push(job_type);
        }
    }

    /// Polls until the queue of `job_type` has a consumer.
    pub async fn wait_for_consumer(&self, job_type: &JobType) {
        let queue = self.topology().job_queue(job_type);
        let started = Instant::now();
        loop {
            // A passive declare of a missing queue closes the channel, so use a fresh one.
            let probe = self.connection.create_channel().await.unwrap();
            let options = lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            if let Ok(state) = probe
                .queue_declare(queue.clone().into(), options, FieldTable::default())
                .await
                && state.consumer_count() > 0
            {
                return;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "no consumer on {queue} in time"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `POST /v1/jobs` with a JSON body.
    pub async fn submit(&self, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/jobs", self.address))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Messages waiting in the job queue of `job_type`.
    pub async fn queued_messages(&self, job_type: &str) -> u32 {
        let queue = self.topology().job_queue(&job_type.parse().unwrap());
        let probe = self.connection.create_channel().await.unwrap();
        let options = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let state = probe
            .queue_declare(queue.into(), options, FieldTable::default())
            .await
            .unwrap();
        state.message_count()
    }

    /// Submits and returns the accepted job's id, asserting the `202`.
    pub async fn submit_ok(&self, body: &Value) -> String {
        let response = self.submit(body).await;
        assert_eq!(response.status(), 202, "submit of {body} was refused");
        let job: Value = response.json().await.unwrap();
        job["id"].as_str().unwrap().to_owned()
    }

    /// `GET` of a path on the gateway.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .unwrap()
    }

    /// `POST` of a JSON body to a path on the gateway.
    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.address))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// `POST` of a path on the gateway, without a body.
    pub async fn post(&self, path: &str) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.address))
            .send()
            .await
            .unwrap()
    }

    /// `GET /v1/jobs/{id}` as JSON.
    pub async fn job(&self, id: &str) -> Value {
        let response = self
            .client
            .get(format!("{}/v1/jobs/{id}", self.address))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// Polls the job until `done` says so; fails the test at the deadline.
    pub async fn wait_for(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let job = self.job(id).await;
            if done(&job) {
                return job;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "job never reached the expected state: {job}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Polls the job until it has `status`.
    pub async fn wait_for_status(&self, id: &str, status: &str) -> Value {
        self.wait_for(id, |job| job["status"] == status).await
    }

    /// Publishes an event as if a worker had sent it.
    pub async fn publish_event(&self, event: &JobEvent) {
        let body = message::encode(event);
        let outgoing = Outgoing {
            exchange: self.topology().events_exchange(),
            routing_key: event.routing_key(),
            body: &body,
            message_id: event.id.to_string(),
            kind: event.job_type.as_str(),
            headers: FieldTable::default(),
            mandatory: false,
        };
        amqp::publish_confirmed(&self.channel, outgoing, DEADLINE)
            .await
            .unwrap();
    }

    /// Declares the job queue of `job_type` without a consumer, so jobs of that type are
    /// accepted and stay queued.
    pub async fn declare_idle_queue(&mut self, job_type: &str) {
        let job_type = JobType::parse(job_type).unwrap();
        topology::declare_job_queue(&self.channel, &self.topology(), &job_type)
            .await
            .unwrap();
        self.job_types.push(job_type);
    }

    /// Stops workers and gateway, then deletes the namespace's exchanges and queues.
    pub async fn stop(mut self) {
        self.halt().await;
        // What an operator runs (`warren-admin remove-namespace`), unforced: it also checks
        // that nothing consumes any more. The broker hears of a stopped process's consumers
        // a moment after the process is gone, so a consumer may show for a little while.
        // As `warren-admin` does: the types the registry names too (flow settings' token
        // queues of types no worker of the test handled, say).
        let mut types = removal::registered_types(&self.connection, &self.topology())
            .await
            .unwrap_or_default();
        types.extend(self.job_types.iter().cloned());
        types.sort_unstable();
        types.dedup();
        let names = removal::Names::declared(&self.topology(), &types);
        let started = Instant::now();
        loop {
            match removal::remove(&self.connection, &names, false).await {
                Ok(_) => break,
                Err(removal::RemovalError::InUse { queue, consumers })
                    if started.elapsed() < DEADLINE =>
                {
                    tracing::debug!(queue, consumers, "still consumed; waiting");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => panic!("the namespace could not be removed: {error}"),
            }
        }
        self.released = true;
    }

    /// Stops workers and gateway but leaves the namespace (another gateway still uses it).
    pub async fn stop_processes(mut self) {
        self.released = true;
        self.halt().await;
    }

    /// Stops workers, then the gateway, and waits for them.
    async fn halt(&mut self) {
        for stop in self.stops.drain(..).rev() {
            let _ = stop.send(());
        }
        for task in self.tasks.drain(..) {
            tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
        }
    }
}

/// Starts the real `api-gateway` binary on `database_url` in `namespace` (with `extra` env),
/// its stderr piped, and waits until it is ready; returns it and its base URL.
pub async fn spawn_gateway_process(
    database_url: &str,
    namespace: &str,
    extra: &[(&str, &str)],
) -> (tokio::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_api-gateway"))
        .env("WARREN_AMQP_URL", amqp_url())
        .env("WARREN_NAMESPACE", namespace)
        .env("WARREN_DATABASE_URL", database_url)
        .env("WARREN_HTTP_ADDR", format!("127.0.0.1:{port}"))
        // The tiers of `test_broker`, so the test's cleanup deletes the wait queues it declares.
        .env("WARREN_RETRY_DELAYS", "100ms,200ms,400ms")
        .env("RUST_LOG", "warn")
        .envs(extra.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let address = format!("http://127.0.0.1:{port}");
    let client = http_client();
    let started = Instant::now();
    loop {
        let ready = client.get(format!("{address}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the gateway exited");
        assert!(
            started.elapsed() < DEADLINE,
            "the gateway never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (child, address)
}

/// The worker binary, built beside the gateway's. `cargo test --workspace` (the README's test
/// command) builds it; this builds what that command builds, so it is a no-op there and makes
/// the binary current when the gateway's tests run alone.
pub fn worker_binary() -> std::path::PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let built = std::process::Command::new(env!("CARGO"))
            .args(["test", "--workspace", "--no-run", "--quiet"])
            .status()
            .unwrap();
        assert!(built.success(), "cannot build the worker binary");
    });
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_api-gateway")).with_file_name("worker")
}

/// Starts the real `worker` binary in `namespace` for `types` (with `extra` env), its output
/// dropped, killed when dropped.
pub fn spawn_worker_process(
    namespace: &str,
    types: &str,
    extra: &[(&str, &str)],
) -> tokio::process::Child {
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    tokio::process::Command::new(worker_binary())
        .env("WARREN_AMQP_URL", amqp_url())
        .env("WARREN_NAMESPACE", namespace)
        .env("WARREN_WORKER_TYPES", types)
        .env("WARREN_RETRY_DELAYS", "100ms,200ms,400ms")
        .env("WARREN_METRICS_ADDR", metrics.to_string())
        .env("RUST_LOG", "warn")
        .envs(extra.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}
