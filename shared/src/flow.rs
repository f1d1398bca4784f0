//! Flow control per job type: the settings (`paused`, `max_running`, `rate_limit`), how the
//! gateways hand them to every worker, and the tokens that bound starts across all workers.
//!
//! - `<ns>.flow` holds one message, the [`FlowSnapshot`] of every type's settings. The
//!   gateways publish it after each change and every second (a quorum queue of length 1 that
//!   drops the oldest); each worker reads it every [`POLL`] and keeps the newest `version`.
//! - `<ns>.slots.<type>` holds `max_running` [`Token`]s. A worker takes one before it starts a
//!   job of the type and holds it, unacknowledged, until the job is settled; then it returns
//!   it. A worker that dies returns its tokens with its connection, at once.
//! - `<ns>.rate.<type>` gets `jobs` tokens at the start of each `per_seconds` window (one
//!   gateway refills it per window); a start takes one for good.
//!
//! A token carries the `generation` of the settings that made it: when a limit changes, the
//! queue is refilled under a new generation, and tokens of older ones are dropped when seen.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use lapin::{Channel, types::AMQPValue};
use serde::{Deserialize, Serialize};

use crate::{
    JobType, Topology, V1,
    topology::{durable, table, text},
};

/// How often a worker reads the snapshot: a pause takes effect within this (plus the
/// gateway's publish), well within a second.
pub const POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// At most this many starts per window (tokens are messages; more would be a flood).
pub const MAX_RATE_JOBS: u32 = 1_000;
/// At most this many starts per second through a rate limit (`jobs / per_seconds`).
pub const MAX_RATE_PER_SECOND: f64 = 1_000.0;
/// The shortest and longest rate window, in seconds.
pub const RATE_SECONDS: (f64, f64) = (0.1, 86_400.0);
/// The largest `max_running` (each slot is a token message).
pub const MAX_RUNNING: u32 = 1_000;

/// At most `jobs` starts per `per_seconds` window, across all workers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Starts allowed per window, 1 to 1,000 (and at most 1,000 a second).
    #[schema(minimum = 1, maximum = 1000, example = 10)]
    pub jobs: u32,
    /// The window, in seconds (0.1 to 86,400).
    #[schema(minimum = 0.1, maximum = 86400, example = 1)]
    pub per_seconds: f64,
}

impl RateLimit {
    /// The window's length in milliseconds.
    #[must_use]
    pub fn window_ms(&self) -> u64 {
        // Checked at the edge: 100 ms to one day.
        (self.per_seconds * 1000.0).round().max(1.0) as u64
    }

    /// The number of the window `at` falls in (windows are aligned to the Unix epoch).
    #[must_use]
    pub fn window_of(&self, at: DateTime<Utc>) -> u64 {
        u64::try_from(at.timestamp_millis()).unwrap_or(0) / self.window_ms()
    }
}

/// One type's settings, as the workers get them.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct TypeFlow {
    /// No new starts.
    #[serde(default)]
    pub paused: bool,
    /// At most this many running at once.
    #[serde(default)]
    pub max_running: Option<u32>,
    /// At most this many starts per window.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// The generation of these settings (tokens of other generations are stale).
    pub generation: u64,
}

/// Every type's settings: the body of the message in `<ns>.flow`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FlowSnapshot {
    /// Schema version.
    pub v: V1,
    /// Grows with every change anywhere: a worker keeps the highest it has seen.
    pub version: u64,
    /// Settings by job type (types without any are absent).
    pub types: BTreeMap<String, TypeFlow>,
}

impl FlowSnapshot {
    /// The settings of `job_type` (none set: the default).
    #[must_use]
    pub fn of(&self, job_type: &str) -> TypeFlow {
        self.types.get(job_type).copied().unwrap_or_default()
    }
}

/// A slot or rate token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// The settings generation that made it.
    pub generation: u64,
    /// For a rate token, the window it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<u64>,
}

impl Topology {
    /// The queue holding the latest [`FlowSnapshot`].
    #[must_use]
    pub fn flow_queue(&self) -> String {
        format!("{}.flow", self.namespace())
    }

    /// The slot tokens of `job_type` (its `max_running`).
    #[must_use]
    pub fn slots_queue(&self, job_type: &JobType) -> String {
        format!("{}.slots.{job_type}", self.namespace())
    }

    /// The rate tokens of `job_type` (its `rate_limit`).
    #[must_use]
    pub fn rate_queue(&self, job_type: &JobType) -> String {
        format!("{}.rate.{job_type}", self.namespace())
    }
}

/// Declares `<ns>.flow` (one message: the newest publish drops the older).
///
/// # Errors
/// The broker refused the declaration.
pub async fn declare_flow_queue(channel: &Channel, topology: &Topology) -> lapin::Result<String> {
    let queue = topology.flow_queue();
    let arguments = table(&[
        ("x-queue-type", text("quorum")),
        ("x-max-length", AMQPValue::LongLongInt(1)),
        ("x-overflow", text("drop-head")),
    ]);
    channel
        .queue_declare(queue.clone().into(), durable(), arguments)
        .await?;
    Ok(queue)
}

/// Declares the token queues of `job_type` (slots and rate), and registers the type.
///
/// # Errors
/// The broker refused a declaration.
pub async fn declare_token_queues(
    channel: &Channel,
    topology: &Topology,
    job_type: &JobType,
) -> lapin::Result<()> {
    for queue in [
        topology.slots_queue(job_type),
        topology.rate_queue(job_type),
    ] {
        channel
            .queue_declare(
                queue.into(),
                durable(),
                table(&[("x-queue-type", text("quorum"))]),
            )
            .await?;
    }
    // In the registry, so removing the namespace finds these queues too.
    crate::topology::register_job_type(channel, topology, job_type).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_aligned_to_the_epoch() {
        let rate = RateLimit {
            jobs: 10,
            per_seconds: 2.0,
        };
        let at = DateTime::from_timestamp_millis(10_999).unwrap();
        assert_eq!(rate.window_of(at), 5);
        let next = DateTime::from_timestamp_millis(12_000).unwrap();
        assert_eq!(rate.window_of(next), 6);
    }

    #[test]
    fn a_snapshot_reads_back_and_unset_types_have_no_limits() {
        let mut snapshot = FlowSnapshot {
            version: 3,
            ..FlowSnapshot::default()
        };
        snapshot.types.insert(
            "echo".into(),
            TypeFlow {
                paused: true,
                max_running: Some(2),
                rate_limit: None,
                generation: 3,
            },
        );
        let text = serde_json::to_string(&snapshot).unwrap();
        let back: FlowSnapshot = serde_json::from_str(&text).unwrap();
        assert_eq!(back, snapshot);
        assert!(back.of("echo").paused);
        assert_eq!(back.of("other"), TypeFlow::default());
    }
}
