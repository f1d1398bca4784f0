//! [`AppState`]: what every HTTP handler can reach, built once by [`crate::app`]. The services
//! own the use cases; the rest is configuration and the parts `/readyz` and `/metrics` read.
//! axum clones the state for every extractor and middleware of every request, so it is one
//! [`Arc`] around the [`Services`] (a clone is one atomic increment, not one per part).

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use warren_shared::readiness::ReadyFlag;

use crate::{
    auth::Authenticator, flow::FlowService, jobs::JobService, keys::KeyService,
    metrics::GatewayMetrics, model::SpecLimits, publisher::Publisher, queues::QueueService,
    schedules::ScheduleService, workflows::WorkflowService,
};

/// What every handler can reach: a cheap handle on the [`Services`].
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    /// The handle on `services`.
    #[must_use]
    pub fn new(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The services and settings behind [`AppState`].
pub struct Services {
    /// Submits, reads, lists, cancels, re-drives and waits on jobs.
    pub jobs: JobService,
    /// Submits, settles, cancels, reads and waits on workflows.
    pub workflows: WorkflowService,
    /// Recurring schedules.
    pub schedules: ScheduleService,
    /// API keys.
    pub keys: KeyService,
    /// The queue overview.
    pub queues: QueueService,
    /// Per-type flow settings.
    pub flow: FlowService,
    /// Publishes job messages with confirms (its readiness backs `/readyz`).
    pub publisher: Arc<Publisher>,
    /// Limits applied to job specs (shown in the OpenAPI document).
    pub limits: Arc<SpecLimits>,
    /// The Prometheus series.
    pub metrics: Arc<GatewayMetrics>,
    /// The OpenAPI document, rendered once when the router is built.
    pub openapi: Arc<OnceLock<String>>,
    /// The broker's URL with its password hidden, for `/readyz`.
    pub broker_address: Arc<str>,
    /// Up while the store's change feed is followed (waiters can be woken).
    pub change_feed: ReadyFlag,
    /// The longest a request may wait for a job.
    pub max_wait: Duration,
    /// How long `GET /users/{id}` waits for a worker.
    pub user_timeout: Duration,
    /// Who may call which route (API keys, tenants, rate limits).
    pub auth: Arc<Authenticator>,
    /// The RabbitMQ management UI, linked from the dashboard.
    pub management_url: Option<Arc<str>>,
}
