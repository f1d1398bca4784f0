//! Connections to RabbitMQ and the one publish path everybody uses.
//!
//! Connections come from a pool ([`pool`]) over one node or several nodes of a cluster, which
//! replaces a connection that has died the next time one is asked for; that is the base of
//! reconnecting after a broker restart or a node loss.
//! [`publish_confirmed`] is the only way Warren publishes: persistent, JSON, publisher confirm
//! awaited with a deadline, and every way it can go wrong is a distinct [`PublishError`].
//! [`peek`] reads a queue without taking from it.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

mod peek;
mod pool;

pub use peek::{Peeked, peek, text_header};

use deadpool::managed::{PoolConfig, Timeouts};
use lapin::{
    BasicProperties, Channel, Confirmation,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{FieldTable, ShortString},
};
pub use pool::{NodeManager, Pool, PoolError, PooledConnection};

use crate::config::BrokerConfig;

/// First wait before reconnecting after a failed session.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between reconnect attempts. Short, so a consumer is back within seconds of
/// the broker (or a cluster's queue leaders) coming back, even after a long outage doubled its
/// wait many times; the log stays calm through [`LOG_EVERY`].
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The wait before trying again after `previous` (none before the first retry): 100 ms,
/// doubling up to 5 s. Reconnects, a worker's held publishes and its flow reads all back off
/// this way.
#[must_use]
pub fn next_backoff(previous: Option<Duration>) -> Duration {
    previous.map_or(MIN_BACKOFF, |wait| (wait * 2).min(MAX_BACKOFF))
}

/// How often a failure that goes on is logged again.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// How long to wait for a pooled connection, or for a new one to be made.
const POOL_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a connection pool could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the RabbitMQ connection pool: {0}")]
pub struct PoolSetupError(String);

/// A pool of AMQP connections to the configured broker (or cluster), named
/// `connection_name` in the management UI.
pub fn connection_pool(
    config: &BrokerConfig,
    connection_name: &str,
    max_size: usize,
) -> Result<Pool, PoolSetupError> {
    let pool_config = PoolConfig {
        max_size,
        timeouts: Timeouts {
            wait: Some(POOL_TIMEOUT),
            create: Some(POOL_TIMEOUT),
            recycle: Some(POOL_TIMEOUT),
        },
        ..PoolConfig::default()
    };
    let tls = config
        .tls
        .amqp()
        .map_err(|error| PoolSetupError(error.to_string()))?;
    Pool::builder(NodeManager::new(&config.amqp_url, connection_name, tls))
        .config(pool_config)
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| PoolSetupError(e.to_string()))
}

/// A connection from the pool, or an error that says what went wrong and how long it waited.
pub async fn connection(pool: &Pool) -> Result<PooledConnection, BrokerError> {
    let started = Instant::now();
    pool.get().await.map_err(|error| {
        let waited = started.elapsed();
        let at = pool.manager().addresses();
        let reason = match error {
            PoolError::Timeout(deadpool::managed::TimeoutType::Create) => {
                format!(
                    "no AMQP handshake with {at} (WARREN_AMQP_URL) within {waited:.1?}: the broker \
                     accepts connections but does not complete them (overloaded, or out of file \
                     handles: check its open-files limit and `rabbitmqctl status`)"
                )
            }
            PoolError::Backend(error)
                if crate::tls::explain(&error.to_string(), "WARREN_AMQP_URL").is_some() =>
            {
                let why =
                    crate::tls::explain(&error.to_string(), "WARREN_AMQP_URL").unwrap_or_default();
                format!("cannot connect to {at} (WARREN_AMQP_URL): {why} ({error})")
            }
            PoolError::Backend(error) => {
                let check = match error.kind() {
                    lapin::ErrorKind::IOError(_) => {
                        "check that RabbitMQ runs there and the host and port are right"
                    }
                    _ => "check the user, password and vhost in it",
                };
                format!(
                    "cannot connect to {at} (WARREN_AMQP_URL) after {waited:.1?}: {error}; {check}"
                )
            }
            other => {
                format!("no connection to {at} (WARREN_AMQP_URL) within {waited:.1?}: {other}")
            }
        };
        BrokerError::Unavailable { at, reason }
    })
}

/// Opens a channel on a pooled connection.
pub async fn channel(pool: &Pool) -> Result<Channel, BrokerError> {
    let connection = connection(pool).await?;
    Ok(connection.create_channel().await?)
}

/// Opens a channel with publisher confirms enabled on a pooled connection.
pub async fn confirm_channel(pool: &Pool) -> Result<Channel, BrokerError> {
    let connection = connection(pool).await?;
    Ok(confirm_channel_on(&connection).await?)
}

/// Opens a channel with publisher confirms enabled on `connection`.
pub async fn confirm_channel_on(connection: &lapin::Connection) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// The broker could not be reached or refused an operation.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No connection could be had from the pool (broker down, refused, timed out).
    #[error("RabbitMQ is unavailable: {reason}")]
    Unavailable {
        /// The nodes tried, `host:port` (no password).
        at: String,
        /// What went wrong, naming `WARREN_AMQP_URL` and what to check.
        reason: String,
    },
    /// An AMQP operation failed.
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
}

/// Why a message may not be on the broker.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// `mandatory` was set and no queue is bound for the routing key.
    #[error("no queue is bound for routing key {routing_key:?} on exchange {exchange:?}")]
    Unroutable {
        /// The exchange published to.
        exchange: String,
        /// The routing key nothing was bound for.
        routing_key: String,
    },
    /// The broker refused the message (e.g. the queue is full and rejects publishes).
    #[error("the broker refused the message (nack)")]
    Nacked,
    /// No confirm arrived in time; the message may or may not be on the broker.
    #[error("no publisher confirm within {0:?}")]
    Timeout(Duration),
    /// The channel or connection failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl PublishError {
    /// A short stable word for the failure (span attributes, metrics).
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unroutable { .. } => "unroutable",
            Self::Nacked => "nacked",
            Self::Timeout(_) => "timeout",
            Self::Broker(_) => "broker",
        }
    }
}

impl From<lapin::Error> for PublishError {
    fn from(error: lapin::Error) -> Self {
        Self::Broker(BrokerError::Amqp(error))
    }
}

/// What to publish: a JSON body and its AMQP properties. The names are owned, so a name the
/// caller built goes to lapin as it is, without a second copy.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    /// Exchange to publish to.
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// JSON body.
    pub body: &'a [u8],
    /// `message_id` property (Warren uses the job id).
    pub message_id: String,
    /// `type` property (Warren uses the job type).
    pub kind: &'a str,
    /// Application headers (e.g. `traceparent`, dead-letter reason).
    pub headers: FieldTable,
    /// Ask the broker to return the message if no queue is bound for it.
    pub mandatory: bool,
}

/// Publishes a persistent JSON message and waits up to `timeout` for the broker's confirm.
///
/// `Ok` means the broker has taken responsibility for the message (and, for `mandatory`, routed
/// it to at least one queue). The channel must be in confirm mode ([`confirm_channel`]).
pub async fn publish_confirmed(
    channel: &Channel,
    message: Outgoing<'_>,
    timeout: Duration,
) -> Result<(), PublishError> {
    let properties = BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(2)
        .with_message_id(message.message_id.into())
        .with_type(message.kind.into())
        .with_headers(message.headers);
    let options = BasicPublishOptions {
        mandatory: message.mandatory,
        ..BasicPublishOptions::default()
    };
    let confirm = async {
        channel
            .basic_publish(
                message.exchange.into(),
                message.routing_key.into(),
                options,
                message.body,
                properties,
            )
            .await?
            .await
    };
    let confirmation = tokio::time::timeout(timeout, confirm)
        .await
        .map_err(|_| PublishError::Timeout(timeout))??;
    match confirmation {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        // The broker's return names the exchange and key it could not route.
        Confirmation::Ack(Some(returned)) => Err(PublishError::Unroutable {
            exchange: returned.delivery.exchange.to_string(),
            routing_key: returned.delivery.routing_key.to_string(),
        }),
        Confirmation::Nack(_) => Err(PublishError::Nacked),
    }
}

/// Runs `session` again and again until it returns `Ok` (it was asked to stop) or `stop` is
/// cancelled. After a failure it waits with capped exponential backoff (100 ms doubling to
/// 30 s); a session that ran longer than the cap resets the backoff, so one old outage does
/// not slow the next reconnect.
pub async fn reconnecting<F, Fut, E>(what: &str, stop: &CancellationToken, mut session: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut backoff = MIN_BACKOFF;
    // The same failure is logged once, then again every `LOG_EVERY` while it lasts, so a
    // broker that stays away gives a calm log, not a flood.
    let mut last_logged: Option<(String, Instant)> = None;
    loop {
        let started = Instant::now();
        match session().await {
            Ok(()) => return,
            Err(error) => {
                let text = error.to_string();
                // The same failure, told apart from another by its words, not its numbers
                // (the text carries how long the attempt took).
                let gist: String = text.chars().filter(|c| !c.is_ascii_digit()).collect();
                let repeat = last_logged
                    .as_ref()
                    .is_some_and(|(previous, at)| *previous == gist && at.elapsed() < LOG_EVERY);
                if repeat {
                    tracing::debug!(error = %text, retry_in = ?backoff, "{what} stopped; reconnecting");
                } else {
                    tracing::warn!(error = %text, retry_in = ?backoff, "{what} stopped; reconnecting (the same failure is logged again every 30 s while it lasts)");
                    last_logged = Some((gist, Instant::now()));
                }
            }
        }
        if started.elapsed() > MAX_BACKOFF {
            backoff = MIN_BACKOFF;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = next_backoff(Some(backoff));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_from_the_first_up_to_the_longest() {
        let mut wait = None;
        let mut waits = Vec::new();
        for _ in 0..9 {
            let next = next_backoff(wait);
            waits.push(next.as_millis());
            wait = Some(next);
        }
        assert_eq!(
            waits,
            [100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000, 5_000]
        );
    }
}
