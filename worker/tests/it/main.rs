//! The worker's integration tests: the real `worker` binary and library against the real
//! RabbitMQ, each test in its own namespace.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

mod crash;
mod flow_read;
mod health;
mod helpers;
mod malformed;
mod publish;
mod shutdown;
mod stall;
mod unconfirmed;
