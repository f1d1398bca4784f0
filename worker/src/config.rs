//! The worker's configuration: environment variables, or flags of the same meaning
//! (`worker --help` lists both).

use std::net::SocketAddr;

use clap::Parser;
use warren_shared::{
    JobType,
    config::{BrokerConfig, ShutdownConfig, TelemetryConfig},
};

/// Everything a worker reads at start.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "worker",
    version,
    about = "Warren worker: runs jobs from RabbitMQ"
)]
pub struct WorkerConfig {
    /// Where RabbitMQ is and which namespace to use.
    #[command(flatten)]
    pub broker: BrokerConfig,

    /// Log format.
    #[command(flatten)]
    pub telemetry: TelemetryConfig,

    /// Shutdown grace period.
    #[command(flatten)]
    pub shutdown: ShutdownConfig,

    /// Jobs run at once by this process; also the prefetch of each job queue's consumer.
    #[arg(
        long = "concurrency",
        env = "WARREN_WORKER_CONCURRENCY",
        value_name = "WARREN_WORKER_CONCURRENCY",
        default_value_t = 8,
        value_parser = clap::value_parser!(u16).range(1..=1000)
    )]
    pub concurrency: u16,

    /// Comma-separated job types to consume (default: every handler the binary has).
    #[arg(
        long = "types",
        env = "WARREN_WORKER_TYPES",
        value_name = "WARREN_WORKER_TYPES",
        value_delimiter = ','
    )]
    pub types: Vec<JobType>,

    /// Attempts that finish within this many milliseconds go straight from `queued` to their
    /// outcome without a `running` event (sparing the broker a publish and two deliveries per
    /// quick job); 0 announces every attempt as `running` when it starts.
    #[arg(
        long = "announce-running-after-ms",
        env = "WARREN_ANNOUNCE_RUNNING_AFTER_MS",
        value_name = "WARREN_ANNOUNCE_RUNNING_AFTER_MS",
        default_value_t = 50,
        value_parser = clap::value_parser!(u64).range(0..=60_000)
    )]
    pub announce_running_after_ms: u64,

    /// How long a publish (an event, a retried job, a dead letter) waits for RabbitMQ's confirm;
    /// without one in time the worker publishes it again, holding the job, for up to 5 minutes
    /// before the job goes back to its queue and runs again.
    #[arg(
        long = "publish-timeout-ms",
        env = "WARREN_PUBLISH_TIMEOUT_MS",
        value_name = "WARREN_PUBLISH_TIMEOUT_MS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(100..=600_000)
    )]
    pub publish_timeout_ms: u64,

    /// Address of the worker's `/healthz` and `/readyz` (and, later, `/metrics`).
    #[arg(
        long = "metrics-addr",
        env = "WARREN_METRICS_ADDR",
        value_name = "WARREN_METRICS_ADDR",
        default_value = "0.0.0.0:9090",
        value_parser = warren_shared::config::parse_listen_addr
    )]
    pub metrics_addr: SocketAddr,
}

impl WorkerConfig {
    /// Defaults for everything but the broker; what tests and embedders start from.
    #[must_use]
    pub fn with_broker(broker: BrokerConfig) -> Self {
        let mut config = Self::parse_from(["worker"]);
        config.broker = broker;
        config
    }
}
