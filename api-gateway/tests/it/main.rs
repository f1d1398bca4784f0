//! The gateway's integration tests: the real gateway and workers against the real RabbitMQ.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

mod admin;
mod article;
mod auth;
mod cancel;
mod cluster;
mod dashboard;
mod flow;
mod helpers;
mod jobs;
mod later;
mod lifecycle;
mod misconfig;
mod openapi;
mod otlp;
mod outage;
mod outbox;
mod postgres;
mod priority;
mod queues;
mod refusals;
mod retry;
mod schedules;
mod stall;
mod store_write;
mod stream;
mod sync;
mod tenancy;
mod tls;
mod trace;
mod ui;
mod validation;
mod wake;
mod webdriver;
mod webhook_crash;
mod webhooks;
mod workflow_crash;
mod workflows;

use warren_test_support::proxy;
