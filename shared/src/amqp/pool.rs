//! The connection pool, over one RabbitMQ node or several nodes of one cluster.
//!
//! A new connection tries the nodes in turn, starting one further each time (round-robin),
//! so processes spread over the nodes and a lost node is left for the next one with the
//! existing backoff of whoever asked. The node of the latest connection is kept for logs and
//! `/readyz`. A connection that is no longer connected is replaced the next time one is asked
//! for; that is the base of reconnecting after a broker restart or a node loss.

use std::sync::{
    Mutex, PoisonError,
    atomic::{AtomicUsize, Ordering},
};

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use lapin::ConnectionProperties;

use crate::config::AmqpUrl;

/// A pool of AMQP connections.
pub type Pool = managed::Pool<NodeManager>;
/// A pooled connection.
pub type PooledConnection = managed::Object<NodeManager>;
/// Why no connection could be had.
pub type PoolError = managed::PoolError<lapin::Error>;

/// Makes connections to the first node of the cluster that answers.
pub struct NodeManager {
    /// `(host:port, URL)` of each node.
    nodes: Vec<(String, String)>,
    /// The connection name shown in the management UI.
    name: String,
    /// Where the next connection starts trying.
    next: AtomicUsize,
    /// The node of the latest connection made.
    current: Mutex<Option<String>>,
    /// The extra CAs and client identity for `amqps://` nodes.
    tls: lapin::tcp::OwnedTLSConfig,
}

impl std::fmt::Debug for NodeManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let labels: Vec<&str> = self.nodes.iter().map(|(label, _)| label.as_str()).collect();
        f.debug_struct("NodeManager")
            .field("nodes", &labels)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl NodeManager {
    /// A manager for the nodes of `url`, naming its connections `name`, trusting `tls`'s CAs
    /// (beside the system's) for `amqps://` nodes.
    #[must_use]
    pub fn new(url: &AmqpUrl, name: &str, tls: lapin::tcp::OwnedTLSConfig) -> Self {
        Self {
            nodes: url.nodes(),
            name: name.to_owned(),
            next: AtomicUsize::new(0),
            current: Mutex::new(None),
            tls,
        }
    }

    /// Every node, as `host:port` joined by commas (for messages: no password).
    #[must_use]
    pub fn addresses(&self) -> String {
        let labels: Vec<&str> = self.nodes.iter().map(|(label, _)| label.as_str()).collect();
        labels.join(",")
    }

    /// The node (`host:port`) of the latest connection made, if any.
    #[must_use]
    pub fn current_node(&self) -> Option<String> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl managed::Manager for NodeManager {
    type Type = lapin::Connection;
    type Error = lapin::Error;

    async fn create(&self) -> Result<lapin::Connection, lapin::Error> {
        let count = self.nodes.len().max(1);
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last_error = None;
        for offset in 0..count {
            let Some((label, url)) = self.nodes.get((start + offset) % count) else {
                break;
            };
            let properties =
                ConnectionProperties::default().with_connection_name(self.name.clone().into());
            let runtime = lapin::runtime::default_runtime()?;
            let connected =
                lapin::Connection::connect_with_config(url, properties, self.tls.clone(), runtime)
                    .await;
            match connected {
                Ok(connection) => {
                    tracing::info!(node = %label, "connected to RabbitMQ");
                    *self.current.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some(label.clone());
                    return Ok(connection);
                }
                Err(error) => {
                    if count > 1 {
                        tracing::warn!(node = %label, %error, "cannot connect to this RabbitMQ node; trying the next");
                    }
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| {
            lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed).into()
        }))
    }

    async fn recycle(
        &self,
        connection: &mut lapin::Connection,
        _: &Metrics,
    ) -> RecycleResult<lapin::Error> {
        if connection.status().connected() {
            Ok(())
        } else {
            Err(RecycleError::message(format!(
                "the RabbitMQ connection is not connected: {:?}",
                connection.status()
            )))
        }
    }
}
