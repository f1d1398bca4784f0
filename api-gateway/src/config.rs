//! The gateway's configuration: environment variables, or flags of the same meaning
//! (`api-gateway --help` lists both).

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use warren_shared::config::{BrokerConfig, ShutdownConfig, TelemetryConfig};

/// Everything the gateway reads at start.
#[derive(Debug, Clone, Parser)]
#[command(name = "api-gateway", version, about = "Warren's HTTP job gateway")]
pub struct GatewayConfig {
    /// Where RabbitMQ is and which namespace to use.
    #[command(flatten)]
    pub broker: BrokerConfig,

    /// Log format.
    #[command(flatten)]
    pub telemetry: TelemetryConfig,

    /// Shutdown grace period.
    #[command(flatten)]
    pub shutdown: ShutdownConfig,

    /// Webhook deliveries (`callback_url`).
    #[command(flatten)]
    pub webhooks: crate::webhooks::WebhookConfig,

    /// The operator's API key. Set, every `/v1` route (and the article's) needs
    /// `Authorization: Bearer <key>`, and keys for tenants are made with it; unset, Warren is
    /// open to anyone who can reach it.
    #[arg(
        long = "admin-key",
        env = "WARREN_ADMIN_KEY",
        value_name = "WARREN_ADMIN_KEY",
        value_parser = warren_shared::config::SecretParser(crate::auth::AdminKey::parse),
        hide_env_values = true
    )]
    pub admin_key: Option<crate::auth::AdminKey>,

    /// The RabbitMQ management UI, linked from the dashboard (`/ui`) when set, e.g.
    /// `http://localhost:15672`.
    #[arg(
        long = "management-url",
        env = "WARREN_MANAGEMENT_URL",
        value_name = "WARREN_MANAGEMENT_URL",
        value_parser = parse_http_url
    )]
    pub management_url: Option<String>,

    /// PostgreSQL URL of the job store (unset: an in-memory store that a restart forgets).
    #[arg(
        long = "database-url",
        env = "WARREN_DATABASE_URL",
        value_name = "WARREN_DATABASE_URL"
    )]
    pub database_url: Option<String>,

    /// The longest any one store call may take (pool checkout, connect, each statement, each
    /// group commit) before the request answers `503` and the background loops back off. 5 s: a
    /// healthy database answers in milliseconds, a failover or restart takes seconds, and
    /// clients (and load balancers) commonly give up at 10 to 30 s, so a stall is reported well
    /// before they would.
    #[arg(
        long = "store-timeout",
        env = "WARREN_STORE_TIMEOUT",
        value_name = "WARREN_STORE_TIMEOUT",
        default_value = "5s",
        value_parser = warren_shared::config::parse_delay
    )]
    pub store_timeout: Duration,

    /// Connections each gateway keeps to PostgreSQL.
    #[arg(
        long = "database-pool-size",
        env = "WARREN_DATABASE_POOL_SIZE",
        value_name = "WARREN_DATABASE_POOL_SIZE",
        default_value_t = 16,
        value_parser = clap::value_parser!(u16).range(1..=1000)
    )]
    pub database_pool_size: u16,

    /// How long a stored job may wait for RabbitMQ's confirm before the outbox relay (in any
    /// gateway) publishes it: the job of a request that died between storing and publishing.
    #[arg(
        long = "outbox-grace-ms",
        env = "WARREN_OUTBOX_GRACE_MS",
        value_name = "WARREN_OUTBOX_GRACE_MS",
        default_value_t = 5_000,
        value_parser = clap::value_parser!(u64).range(1_000..=3_600_000)
    )]
    pub outbox_grace_ms: u64,

    /// How far ahead a job may be submitted for (`run_at`, `delay_ms`).
    #[arg(
        long = "max-delay",
        env = "WARREN_MAX_DELAY",
        value_name = "WARREN_MAX_DELAY",
        default_value = "365d",
        value_parser = warren_shared::config::parse_delay
    )]
    pub max_delay: Duration,

    /// How late a schedule's due time may be fired (after a gateway outage); later ones are
    /// skipped and recorded as misfires.
    #[arg(
        long = "schedule-misfire-grace",
        env = "WARREN_SCHEDULE_MISFIRE_GRACE",
        value_name = "WARREN_SCHEDULE_MISFIRE_GRACE",
        default_value = "1m",
        value_parser = warren_shared::config::parse_delay
    )]
    pub misfire_grace: Duration,

    /// How long finished jobs are kept before the retention task deletes them (e.g. `7d`).
    #[arg(
        long = "retention",
        env = "WARREN_RETENTION",
        value_name = "WARREN_RETENTION",
        default_value = "7d",
        value_parser = warren_shared::config::parse_delay
    )]
    pub retention: Duration,

    /// Address the HTTP server listens on.
    #[arg(
        long = "http-addr",
        env = "WARREN_HTTP_ADDR",
        value_name = "WARREN_HTTP_ADDR",
        default_value = "0.0.0.0:8080",
        value_parser = warren_shared::config::parse_listen_addr
    )]
    pub http_addr: SocketAddr,

    /// How long a submit waits for RabbitMQ's publisher confirm before answering 503.
    #[arg(
        long = "publish-timeout-ms",
        env = "WARREN_PUBLISH_TIMEOUT_MS",
        value_name = "WARREN_PUBLISH_TIMEOUT_MS",
        default_value_t = 5_000,
        value_parser = clap::value_parser!(u64).range(1..=60_000)
    )]
    pub publish_timeout_ms: u64,

    /// Largest request body accepted, in bytes.
    #[arg(
        long = "max-body-bytes",
        env = "WARREN_MAX_BODY_BYTES",
        value_name = "WARREN_MAX_BODY_BYTES",
        default_value_t = 1024 * 1024
    )]
    pub max_body_bytes: usize,

    /// Per-attempt time limit given to jobs that do not set `timeout_ms`.
    #[arg(
        long = "default-timeout-ms",
        env = "WARREN_DEFAULT_TIMEOUT_MS",
        value_name = "WARREN_DEFAULT_TIMEOUT_MS",
        default_value_t = 60_000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub default_timeout_ms: u64,

    /// Largest `timeout_ms` a job may ask for. Keep it below RabbitMQ's `consumer_timeout`
    /// (30 min by default), or the broker closes the channel of a worker still running the job.
    #[arg(
        long = "max-timeout-ms",
        env = "WARREN_MAX_TIMEOUT_MS",
        value_name = "WARREN_MAX_TIMEOUT_MS",
        default_value_t = 25 * 60 * 1000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_timeout_ms: u64,

    /// The longest a request may wait for a job to finish (`Prefer: wait=N`, `?wait=N`);
    /// longer asks are cut to this.
    #[arg(
        long = "max-wait-secs",
        env = "WARREN_MAX_WAIT_SECS",
        value_name = "WARREN_MAX_WAIT_SECS",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(0..=3600)
    )]
    pub max_wait_secs: u64,

    /// How long `GET /users/{id}` waits for a worker before answering 504.
    #[arg(
        long = "user-timeout-ms",
        env = "WARREN_USER_TIMEOUT_MS",
        value_name = "WARREN_USER_TIMEOUT_MS",
        default_value_t = 2_000,
        value_parser = clap::value_parser!(u64).range(1..=600_000)
    )]
    pub user_timeout_ms: u64,
}

impl GatewayConfig {
    /// The longest a request may wait for a job (`Prefer: wait`, `?wait=`).
    #[must_use]
    pub fn max_wait(&self) -> Duration {
        Duration::from_secs(self.max_wait_secs)
    }

    /// How long `GET /users/{id}` waits for a worker's answer.
    #[must_use]
    pub fn user_timeout(&self) -> Duration {
        Duration::from_millis(self.user_timeout_ms)
    }

    /// Defaults for everything but the broker; what tests and embedders start from.
    #[must_use]
    pub fn with_broker(broker: BrokerConfig) -> Self {
        let mut config = Self::parse_from(["api-gateway"]);
        config.broker = broker;
        config
    }

    /// How long a stored job may wait for its confirm before the relay publishes it.
    #[must_use]
    pub fn outbox_grace(&self) -> Duration {
        Duration::from_millis(self.outbox_grace_ms)
    }

    /// The PostgreSQL store's settings.
    #[must_use]
    pub fn store_options(&self) -> crate::store::StoreOptions {
        crate::store::StoreOptions {
            pool_size: usize::from(self.database_pool_size),
            tls: self.broker.tls.clone(),
            timeout: self.store_timeout,
        }
    }

    /// The publish confirm deadline.
    #[must_use]
    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }
}

/// An `http(s)` URL, for links.
fn parse_http_url(value: &str) -> Result<String, String> {
    let url = url::Url::parse(value).map_err(|e| format!("{value:?} is not a URL: {e}"))?;
    if matches!(url.scheme(), "http" | "https") {
        Ok(url.to_string())
    } else {
        Err(format!("{value:?} must be an http:// or https:// URL"))
    }
}
