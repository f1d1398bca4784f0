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
//! - `runner`: the consume loop and running a job's handler.
//! - `settle`: deciding in one place what an attempt's outcome leads to (event, retry, dead
//!   letter) and acking or returning the delivery.
//! - `cancel`: cancel requests from `<ns>.control` and the jobs they stop.
//! - `report`: publishing a job's events with per-attempt sequence numbers.
//! - `health`, `metrics`: `/healthz`, `/readyz` and `/metrics` on `WARREN_METRICS_ADDR`.
//! - [`handlers`]: the built-in handlers of the `worker` binary.

mod cancel;
pub mod config;
pub mod handler;
pub mod handlers;
mod health;
mod metrics;
mod report;
mod runner;
mod settle;
pub mod worker;

pub use config::WorkerConfig;
pub use handler::{HandlerError, HandlerResult, JobContext};
pub use worker::{BuildError, RunError, Worker, WorkerBuilder};
