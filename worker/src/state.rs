//! What a running worker shares between its consume loop, its job tasks, the cancel listener
//! and the health endpoint.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use lapin::Channel;
use warren_shared::{Topology, amqp::Pool, readiness::ReadyFlag};

use crate::{cancel::Cancels, handler::Registry, metrics::WorkerMetrics};

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
    /// How long a publish (event, retried job, dead letter) may wait for its confirm; one that
    /// gets none in time is published again while the job is held ([`crate::confirm`]),
    /// never blocking other jobs.
    pub(crate) publish_timeout: Duration,
    pub(crate) cancels: Cancels,
    /// Whether a session is consuming every job queue.
    pub(crate) readiness: ReadyFlag,
    /// The Prometheus series.
    pub(crate) metrics: WorkerMetrics,
    /// The flow settings this worker knows.
    pub(crate) flow: crate::flow::FlowView,
    /// The current session's consume channel, closed gracefully at shutdown.
    pub(crate) consume_channel: Mutex<Option<Channel>>,
}

impl Shared {
    /// Remembers the current session's consume channel.
    pub(crate) fn set_consume_channel(&self, channel: &Channel) {
        let mut current = self
            .consume_channel
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *current = Some(channel.clone());
    }

    /// Takes the last session's consume channel (once).
    pub(crate) fn take_consume_channel(&self) -> Option<Channel> {
        self.consume_channel
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}
