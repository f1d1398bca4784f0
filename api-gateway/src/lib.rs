//! Warren's API gateway: accepts jobs over HTTP, publishes them to RabbitMQ with publisher
//! confirms, and answers status queries from a job store that it keeps up to date by consuming
//! the workers' events. The gateway never runs jobs.
//!
//! # Layout
//!
//! - [`auth`]: API keys, tenants and rate limits.
//! - [`config`]: environment and flags.
//! - [`app`]: startup ([`Application::build`]), serving and graceful shutdown.
//! - [`http`]: the router, handlers and problem+json errors.
//! - [`metrics`]: the Prometheus series.
//! - [`publisher`]: the confirmed publish of job messages.
//! - [`events`]: the consumer that applies worker events to the store and wakes waiters.
//! - [`fault`]: fault-injection points for crash tests (debug builds only).
//! - [`jobs`]: the job service (accept with the outbox, idempotency, cancel, re-drive,
//!   waiting), the outbox relay and the store's change feed.
//! - [`schedules`]: recurring schedules (cron in a time zone) and the loop that fires them.
//! - [`retention`]: the background task that deletes old finished jobs and idempotency keys.
//! - [`store`]: the [`store::JobStore`] trait, lifecycle rules, the in-memory and PostgreSQL
//!   stores.
//! - [`watch`]: the registry that wakes requests waiting on a job.

pub mod admin;
pub mod app;
pub mod auth;
pub mod config;
pub mod events;
pub mod fault;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod publisher;
pub mod retention;
pub mod schedules;
pub mod store;
pub mod watch;
pub mod webhooks;

pub use app::Application;
pub use config::GatewayConfig;
