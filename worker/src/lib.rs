//! Warren's worker library: consume job queues from RabbitMQ, run handlers with bounded
//! concurrency, publish each job's events, and ack a job only once its outcome is confirmed.
//!
//! Adding a job type is writing one async function and registering it:
//!
//! ```no_run
//! use serde_json::json;
//! use warren_worker::{HandlerResult, JobContext, Worker, WorkerConfig};
//!
//! async fn resize(context: JobContext) -> HandlerResult {
//!     context.progress(50, "resizing").await;
//!     Ok(json!({"resized": context.payload}))
//! }
//!
//! # async fn run(config: WorkerConfig) -> Result<(), Box<dyn std::error::Error>> {
//! let worker = Worker::builder().handler("image.resize", resize).build(config)?;
//! worker.run(warren_shared::shutdown::signal()).await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`config`]: environment and flags.
//! - [`handler`]: the handler contract: [`JobContext`], [`HandlerError`].
//! - [`worker`]: [`WorkerBuilder`] and [`Worker::run`] (shutdown with grace).
//!
//! A delivery's path, each step a module that only uses the ones after it:
//!
//! - `consume`: the consume loop, one session per connection, a task per delivery, taking
//!   by priority and holding back what flow control does not let start yet;
//! - `flow`: flow settings (pause, `max_running`, `rate_limit`): the snapshot and the tokens;
//! - `attempt`: one attempt: decode, poison check, run the handler, an `Outcome`;
//! - `settle`: carries out the settlement (event, retry, dead letter), then acks;
//! - `confirm`: publishes each of them again until the broker confirms, holding the delivery;
//! - `decide`: the pure rule from outcome to settlement, tested rule by rule;
//! - `events`: publishing a job's events with per-attempt sequence numbers;
//! - `headers`: the delivery's AMQP headers (trace, delivery count, error history);
//! - `state`: what the loop, the job tasks, cancels and health share;
//! - `cancel`: cancel requests from `<ns>.control` and the jobs they stop.
//!
//! - `health`, `metrics`: `/healthz`, `/readyz` and `/metrics` on `WARREN_METRICS_ADDR`.
//! - [`handlers`]: the built-in handlers of the `worker` binary.

mod acks;
mod attempt;
mod cancel;
pub mod config;
mod confirm;
mod consume;
mod decide;
mod events;
mod flow;
pub mod handler;
pub mod handlers;
mod headers;
mod health;
mod metrics;
mod settle;
mod state;
pub mod worker;

pub use config::WorkerConfig;
pub use handler::{HandlerError, HandlerResult, JobContext};
pub use worker::{BuildError, RunError, Worker, WorkerBuilder};

/// The README's Rust example, compiled as a doctest so it cannot drift from the code (it is
/// also `examples/custom_handler.rs`).
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeExample;
