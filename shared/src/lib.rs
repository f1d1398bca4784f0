//! What Warren's gateway and workers share: the job vocabulary, the two message types, the
//! RabbitMQ topology, configuration, telemetry and the publish path.
//!
//! # Layout
//!
//! - [`job`]: ids, types, statuses, progress, errors (parsed types).
//! - [`message`]: the job message and the job event, `"v": 1` JSON.
//! - [`topology`]: exchange and queue names from `WARREN_NAMESPACE`, and their declaration.
//! - [`config`]: environment/flag configuration both binaries use.
//! - [`flow`]: per-type flow settings, their snapshot for workers, and the start tokens.
//! - [`amqp`]: connection pool, confirm channels, the confirmed publish.
//! - [`metrics`]: Prometheus label sets, buckets and rendering.
//! - [`readiness`]: the flag behind `/readyz`.
//! - [`telemetry`]: log subscriber setup.
//! - [`otel`]: span export over OTLP, and the trace links across processes.
//! - [`trace`]: W3C `traceparent` propagation.
//! - [`tls`]: the CA bundle and client certificate (`WARREN_TLS_*`), and TLS failures in words.
//! - [`shutdown`]: SIGTERM/SIGINT as a future.

pub mod amqp;
pub mod config;
pub mod error_kind;
pub mod flow;
pub mod job;
pub mod message;
pub mod metrics;
pub mod otel;
pub mod readiness;
pub mod removal;
pub mod shutdown;
pub mod storable;
pub mod telemetry;
pub mod tls;
pub mod topology;
pub mod trace;

pub use error_kind::ErrorKind;
pub use job::{JobError, JobId, JobStatus, JobType, Priority, Progress};
pub use message::{ControlAction, ControlMessage, JobEvent, JobMessage, V1};
pub use topology::Topology;
