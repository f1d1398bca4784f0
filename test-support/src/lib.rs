//! What the gateway's and the worker's integration tests share (a dev-dependency only): the
//! RabbitMQ and PostgreSQL they use, names no other test uses, and cleanup that runs even when
//! a test fails. A test removes what it made with [`Namespace::remove`] or
//! [`TestSchema::drop_schema`]; if it panics first, `Drop` removes it on a thread of its own
//! (a test's runtime cannot be awaited while it unwinds), so a failing test leaks nothing.
//! [`proxy::Proxy`] stands between a process and RabbitMQ or PostgreSQL to stage an outage or
//! a silent link.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod proxy;

use std::{future::Future, time::Duration};

use lapin::{Connection, ConnectionProperties};
use warren_shared::{JobType, Topology, config::BrokerConfig, removal};

/// How long any awaited condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// The broker the tests use (`WARREN_TEST_AMQP_URL`, default the local RabbitMQ).
pub fn amqp_url() -> String {
    std::env::var("WARREN_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// The PostgreSQL the tests use (`WARREN_TEST_DATABASE_URL`, default the local one).
pub fn database_url() -> String {
    std::env::var("WARREN_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/test".to_owned())
}

/// A namespace no other test uses.
pub fn unique_namespace() -> String {
    format!("test-{}", uuid::Uuid::now_v7().simple())
}

/// The broker settings of a test namespace: fast retry tiers so retries take milliseconds.
pub fn test_broker(namespace: &str) -> BrokerConfig {
    let mut broker = BrokerConfig::new(&amqp_url(), namespace).unwrap();
    broker.retry_delays = [100, 200, 400].map(Duration::from_millis).to_vec();
    broker
}

/// Runs `work` on a runtime of its own, on a thread of its own: usable from `Drop`, even while
/// a test's runtime unwinds. Waits for it at most [`DEADLINE`]: the test's own runtime is
/// blocked meanwhile, so anything `work` waits on that needs that runtime (a transaction of
/// the app under test, say) would otherwise wait forever and hang the suite.
fn finish_elsewhere(work: impl Future<Output = ()> + Send + 'static) {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        if let Ok(runtime) = runtime {
            runtime.block_on(work);
        }
        let _ = done.send(());
    });
    if finished.recv_timeout(DEADLINE).is_err() {
        eprintln!("test cleanup did not finish within {DEADLINE:?}; leaving it");
    }
}

/// Deletes `topology`'s exchanges and queues (with the job queues of `job_types`).
async fn delete_topology(topology: Topology, job_types: Vec<JobType>) {
    let Ok(connection) = Connection::connect(&amqp_url(), ConnectionProperties::default()).await
    else {
        return;
    };
    // With the types the namespace's registry names (flow settings' token queues of types no
    // worker of the test handled, say).
    let mut job_types = job_types;
    if let Ok(registered) = removal::registered_types(&connection, &topology).await {
        job_types.extend(registered);
        job_types.sort_unstable();
        job_types.dedup();
    }
    let names = removal::Names::declared(&topology, &job_types);
    let _ = removal::remove(&connection, &names, true).await;
    let _ = connection.close(200, "test cleanup".into()).await;
}

/// A test's namespace on the broker and the job types whose queues it made there.
#[derive(Debug)]
pub struct Namespace {
    topology: Topology,
    job_types: Vec<JobType>,
    removed: bool,
}

impl Namespace {
    /// Tracks `topology` (nothing is declared here).
    pub fn new(topology: Topology) -> Self {
        Self {
            topology,
            job_types: Vec::new(),
            removed: false,
        }
    }

    /// Records a job type whose queue exists in the namespace, so it is deleted too.
    pub fn uses(&mut self, job_type: &JobType) {
        if !self.job_types.contains(job_type) {
            self.job_types.push(job_type.clone());
        }
    }

    /// The job types recorded so far.
    pub fn job_types(&self) -> &[JobType] {
        &self.job_types
    }

    /// Deletes the namespace's exchanges and queues now.
    pub async fn remove(mut self) {
        self.removed = true;
        delete_topology(self.topology.clone(), std::mem::take(&mut self.job_types)).await;
    }

    /// Leaves the namespace in place (another part of the test goes on using it and removes
    /// it); returns its job types for whoever does.
    pub fn hand_over(mut self) -> Vec<JobType> {
        self.removed = true;
        std::mem::take(&mut self.job_types)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if !self.removed {
            let (topology, job_types) =
                (self.topology.clone(), std::mem::take(&mut self.job_types));
            finish_elsewhere(delete_topology(topology, job_types));
        }
    }
}

/// A schema of the test's own in the test database, dropped by [`TestSchema::drop_schema`],
/// or on drop if the test failed first.
pub struct TestSchema {
    pub name: String,
    client: Option<tokio_postgres::Client>,
}

impl TestSchema {
    /// Creates a fresh, empty schema.
    pub async fn create() -> Self {
        let (client, connection) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let name = format!("test_{}", uuid::Uuid::now_v7().simple());
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .unwrap();
        Self {
            name,
            client: Some(client),
        }
    }

    /// The URL of the test database with this schema as its search path, e.g. through `host`.
    pub fn url_via(&self, host_port: &str) -> String {
        let base = database_url();
        let rest = base.split_once('@').map_or(base.as_str(), |(_, rest)| rest);
        let path = rest.split_once('/').map_or("test", |(_, path)| path);
        // The schema's name is also the sessions' application_name, so cleanup can end them.
        format!(
            "postgresql://postgres@{host_port}/{path}?options=-csearch_path%3D{}&application_name={}",
            self.name, self.name
        )
    }

    /// The URL of the test database with this schema as its search path.
    pub fn url(&self) -> String {
        let base = database_url();
        let rest = base.split_once('@').map_or(base.as_str(), |(_, rest)| rest);
        let host_port = rest.split_once('/').map_or(rest, |(host, _)| host);
        self.url_via(host_port)
    }

    /// Ends every session still connected to this schema (a failed test's app may hold one
    /// inside a transaction), then drops the schema.
    fn cleanup_sql(&self, if_exists: &str) -> String {
        format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{name}';
             DROP SCHEMA {if_exists}{name} CASCADE",
            name = self.name
        )
    }

    /// Drops the schema and everything in it.
    pub async fn drop_schema(mut self) {
        if let Some(client) = self.client.take() {
            client.batch_execute(&self.cleanup_sql("")).await.unwrap();
        }
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        if self.client.take().is_some() {
            let statement = self.cleanup_sql("IF EXISTS ");
            finish_elsewhere(async move {
                let connected =
                    tokio_postgres::connect(&database_url(), tokio_postgres::NoTls).await;
                if let Ok((client, connection)) = connected {
                    tokio::spawn(connection);
                    let _ = client.batch_execute(&statement).await;
                }
            });
        }
    }
}
