//! Warren's API gateway: accepts jobs over HTTP, publishes them to RabbitMQ with publisher
//! confirms, and answers status queries from a job store that it keeps up to date by consuming
//! the workers' events. The gateway never runs jobs.
//!
//! # Layout
//!
//! Layers import one way, from the bottom up (`scripts/import-graph.sh` checks it in CI):
//!
//! 1. [`model`]: the domain types and their pure rules (job, job spec and its validation,
//!    schedule, workflow and its settle rule, API key, callback and delivery). Imports nothing
//!    else from the crate.
//! 2. [`store`]: one trait per concern (jobs, outbox, keys, schedules, callbacks, workflows,
//!    flow settings), each
//!    implemented by the memory and PostgreSQL backends, and the shared transition rules.
//! 3. Parts the services use: [`metrics`] (the Prometheus series), [`watch`] (the registry
//!    that wakes requests waiting on a job), [`publisher`] (the confirmed publish), [`auth`]
//!    (who is calling, and what they may do), [`fault`] (fault-injection points for crash
//!    tests, debug builds only).
//! 4. Services, which own the use cases: [`jobs`] (submit, accept with the outbox,
//!    idempotency, cancel, re-drive, waiting; the outbox relay, the scheduler and the change
//!    feed), [`workflows`] (submit, settle, cancel, the sweeper), [`schedules`], [`keys`],
//!    [`queues`], [`flow`] (per-type settings: pause, `max_running`, `rate_limit`, and the
//!    loop that keeps RabbitMQ's tokens and the workers' snapshot in line), [`webhooks`] (the deliverer), [`events`] (the consumer that applies worker
//!    events and settles the workflows of finished steps), [`retention`].
//! 5. [`http`]: the router, handlers and problem+json errors, over an [`state::AppState`]
//!    of services.
//! 6. [`app`]: startup ([`Application::build`]), serving and graceful shutdown; [`config`]:
//!    environment and flags; [`admin`]: the `warren-admin` commands.

pub mod admin;
pub mod app;
pub mod auth;
pub mod config;
pub mod events;
pub mod fault;
pub mod flow;
pub mod http;
pub mod jobs;
pub mod keys;
pub mod metrics;
pub mod model;
pub mod publisher;
pub mod queues;
pub mod retention;
pub mod schedules;
pub mod state;
pub mod store;
pub mod watch;
pub mod webhooks;
pub mod workflows;

pub use app::Application;
pub use config::GatewayConfig;
