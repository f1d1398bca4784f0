//! The gateway's Prometheus series, served on `GET /metrics`:
//!
//! - `warren_jobs_submitted_total{job_type,tenant}`: jobs accepted (stored and confirmed);
//! - `warren_http_refused_total{tenant,reason}`: requests refused by authentication or a
//!   key's limits (`unauthorized`, `forbidden`, `rate_limited`, `at_capacity`);
//! - `warren_jobs_finished_total{job_type,status}`: jobs that reached a terminal status in this
//!   gateway's store writes;
//! - `warren_events_applied_total{outcome}`: worker events applied or ignored (and why);
//! - `warren_publish_confirm_seconds`: publish → broker confirm latency;
//! - `warren_webhook_deliveries_total{outcome}`, `warren_webhook_attempt_duration_seconds`,
//!   `warren_webhook_delivery_lag_seconds` (job finished → delivered) and
//!   `warren_webhook_pending`: webhook attempts by what they led to (`delivered`, `pending`
//!   i.e. retried later, `given_up`);
//! - `warren_workflows_submitted_total`, `warren_workflow_steps_submitted_total`,
//!   `warren_workflows_finished_total{reason}` (the terminal status) and
//!   `warren_workflow_settles_total{reason}` (`after_step`, `swept`: owed by a gateway that
//!   died or failed to settle);
//! - `warren_store_timeouts_total{operation}`: store calls that missed `WARREN_STORE_TIMEOUT`;
//! - `warren_store_call_duration_seconds{operation}`: how long PostgreSQL store calls took;
//! - `warren_store_events_applied_total{path}`: worker events the PostgreSQL store applied from
//!   this gateway's copy of the record (`copy`) or under row locks (`locked`);
//! - `warren_http_requests_total{route,method,status}` and
//!   `warren_http_request_duration_seconds{route}`.

use prometheus_client::encoding::EncodeLabelSet;
use warren_shared::metrics::{
    Counter, Family, Gauge, Histogram, JobLabels, OperationLabels, OutcomeLabels, PathLabels,
    ReasonLabels, Registry, duration_family, duration_histogram, render,
};

use crate::{
    model::{CallbackState, Job},
    store::Applied,
};

/// An HTTP request's labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The matched route template, e.g. `/v1/jobs/{id}`.
    pub route: String,
    /// The method (`OTHER` for one outside RFC 9110's nine).
    pub method: &'static str,
    /// The response status code.
    pub status: u16,
}

/// An accepted job's labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubmittedLabels {
    /// The job's type.
    pub job_type: String,
    /// The job's tenant.
    pub tenant: String,
}

/// A refused request's labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// The caller's tenant (`operator`, or `unknown` before a key was recognised).
    pub tenant: String,
    /// `unauthorized`, `forbidden`, `rate_limited` or `at_capacity`.
    pub reason: &'static str,
}

/// A route's label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The matched route template.
    pub route: String,
}

/// What applying an event did.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// `applied`, `unknown_job` or the reason it was ignored.
    pub outcome: &'static str,
}

/// What a webhook attempt led to.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `delivered`, `pending` or `given_up`.
    pub outcome: &'static str,
}

/// Every series the gateway exports.
#[derive(Debug)]
pub struct GatewayMetrics {
    registry: Registry,
    /// Jobs accepted.
    pub submitted: Family<SubmittedLabels, Counter>,
    /// Requests refused by authentication or a key's limits.
    pub refused: Family<RefusedLabels, Counter>,
    /// Jobs that became terminal here.
    pub finished: Family<OutcomeLabels, Counter>,
    /// Events by outcome.
    pub events: Family<EventLabels, Counter>,
    /// Publish → confirm latency.
    pub publish_confirm: Histogram,
    /// Jobs the outbox relay published because their first publish was never confirmed.
    pub relayed: Counter,
    /// Jobs submitted for later that came due and were released.
    pub released: Counter,
    /// Jobs `scheduled` now (read from the store every few seconds).
    pub scheduled: Gauge,
    /// Recurring schedules' fires, by outcome (`fired`, `misfired`).
    pub schedule_fires: Family<ReasonLabels, Counter>,
    /// Webhook attempts by the state they led to.
    pub webhook_deliveries: Family<OutcomeLabel, Counter>,
    /// How long one webhook attempt took.
    pub webhook_attempt: Histogram,
    /// From a job finishing to its callback being delivered.
    pub webhook_lag: Histogram,
    /// Callbacks waiting for delivery (read from the store every few seconds).
    pub webhook_pending: Gauge,
    /// Workflows accepted.
    pub workflows_submitted: Counter,
    /// Steps of accepted workflows.
    pub workflow_steps: Counter,
    /// Workflows that ended, by status.
    pub workflows_finished: Family<ReasonLabels, Counter>,
    /// Workflow settles by what led to them.
    pub workflow_settles: Family<ReasonLabels, Counter>,
    /// Store calls that missed `WARREN_STORE_TIMEOUT`, by operation.
    pub store_timeouts: Family<OperationLabels, Counter>,
    /// How long PostgreSQL store calls kept their callers waiting, by operation.
    pub store_calls: Family<OperationLabels, Histogram>,
    /// Worker events the PostgreSQL store applied from this gateway's copy of the record
    /// (`copy`) or under row locks (`locked`).
    pub events_by_path: Family<PathLabels, Counter>,
    /// Requests by route, method and status.
    pub http_requests: Family<HttpLabels, Counter>,
    /// Request duration by route.
    pub http_duration: Family<RouteLabels, Histogram>,
    /// Flow settings by job type: paused (1) or not (0).
    pub flow_paused: Family<JobLabels, Gauge>,
    /// Flow settings by job type: `max_running` (absent when unset).
    pub flow_max_running: Family<JobLabels, Gauge>,
    /// Flow settings by job type: `rate_limit.jobs` (absent when unset).
    pub flow_rate_jobs: Family<JobLabels, Gauge>,
    /// Flow settings by job type: `rate_limit.per_seconds` in milliseconds.
    pub flow_rate_window_ms: Family<JobLabels, Gauge>,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("warren");
        let metrics = Self {
            submitted: Family::default(),
            refused: Family::default(),
            finished: Family::default(),
            events: Family::default(),
            publish_confirm: duration_histogram(),
            relayed: Counter::default(),
            released: Counter::default(),
            scheduled: Gauge::default(),
            schedule_fires: Family::default(),
            webhook_deliveries: Family::default(),
            webhook_attempt: duration_histogram(),
            webhook_lag: duration_histogram(),
            webhook_pending: Gauge::default(),
            workflows_submitted: Counter::default(),
            workflow_steps: Counter::default(),
            workflows_finished: Family::default(),
            workflow_settles: Family::default(),
            store_timeouts: Family::default(),
            store_calls: duration_family(),
            events_by_path: Family::default(),
            http_requests: Family::default(),
            http_duration: duration_family(),
            flow_paused: Family::default(),
            flow_max_running: Family::default(),
            flow_rate_jobs: Family::default(),
            flow_rate_window_ms: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "queue_paused",
            "1 while the job type is paused (PATCH /v1/queues/{type}); workers hold its jobs back (warren_worker_jobs_held_back)",
            metrics.flow_paused.clone(),
        );
        registry.register(
            "queue_max_running",
            "The job type's max_running: at most this many run at once across all workers",
            metrics.flow_max_running.clone(),
        );
        registry.register(
            "queue_rate_limit_jobs",
            "The job type's rate_limit: starts allowed per window across all workers",
            metrics.flow_rate_jobs.clone(),
        );
        registry.register(
            "queue_rate_limit_window_ms",
            "The job type's rate_limit window in milliseconds",
            metrics.flow_rate_window_ms.clone(),
        );
        registry.register(
            "trace_spans_dropped",
            "Spans that never reached the OTLP collector, by reason: queue_full (the export queue, OTEL_BSP_MAX_QUEUE_SIZE, was full), export_failed (the collector refused or did not answer), shut_down",
            warren_shared::otel::spans_dropped(),
        );
        registry.register(
            "store_timeouts",
            "Store calls that missed WARREN_STORE_TIMEOUT (the database did not answer in time), by operation",
            metrics.store_timeouts.clone(),
        );
        registry.register(
            "store_call_duration_seconds",
            "How long each call to the PostgreSQL store kept its caller waiting, by operation (insert and apply_events are on every job's path)",
            metrics.store_calls.clone(),
        );
        registry.register(
            "store_events_applied",
            "Worker events the PostgreSQL store applied from this gateway's copy of the record (copy: one round trip, for jobs submitted here) or under row locks (locked)",
            metrics.events_by_path.clone(),
        );
        registry.register(
            "jobs_submitted",
            "Jobs accepted (stored and confirmed by RabbitMQ)",
            metrics.submitted.clone(),
        );
        registry.register(
            "http_refused",
            "Requests refused by authentication (unauthorized, forbidden) or by an API key's limits (rate_limited, at_capacity), by tenant",
            metrics.refused.clone(),
        );
        registry.register(
            "jobs_finished",
            "Jobs that reached a terminal status",
            metrics.finished.clone(),
        );
        registry.register(
            "events_applied",
            "Worker events applied to the store, or ignored and why",
            metrics.events.clone(),
        );
        registry.register(
            "publish_confirm_seconds",
            "Time from publish to the broker's confirm",
            metrics.publish_confirm.clone(),
        );
        registry.register(
            "jobs_relayed",
            "Jobs the outbox relay published because their first publish was never confirmed (a gateway died or a request was dropped mid-submit)",
            metrics.relayed.clone(),
        );
        registry.register(
            "jobs_released",
            "Jobs submitted for later (run_at, delay_ms) that came due and were published",
            metrics.released.clone(),
        );
        registry.register(
            "jobs_scheduled",
            "Jobs waiting for their run_at",
            metrics.scheduled.clone(),
        );
        registry.register(
            "schedule_fires",
            "Due times of recurring schedules: fired (a job was made) or misfired (skipped: more than the misfire grace late)",
            metrics.schedule_fires.clone(),
        );
        registry.register(
            "webhook_deliveries",
            "Webhook attempts by the state they led to: delivered, pending (retried later) or given_up",
            metrics.webhook_deliveries.clone(),
        );
        registry.register(
            "webhook_attempt_duration_seconds",
            "How long one webhook attempt took, until the answer or the failure",
            metrics.webhook_attempt.clone(),
        );
        registry.register(
            "webhook_delivery_lag_seconds",
            "From a job finishing to its callback being delivered",
            metrics.webhook_lag.clone(),
        );
        registry.register(
            "webhook_pending",
            "Callbacks waiting for delivery",
            metrics.webhook_pending.clone(),
        );
        registry.register(
            "workflows_submitted",
            "Workflows accepted",
            metrics.workflows_submitted.clone(),
        );
        registry.register(
            "workflow_steps_submitted",
            "Steps of accepted workflows (each a job)",
            metrics.workflow_steps.clone(),
        );
        registry.register(
            "workflows_finished",
            "Workflows that ended, by status (reason): succeeded, failed or cancelled",
            metrics.workflows_finished.clone(),
        );
        registry.register(
            "workflow_settles",
            "Workflow settles by cause (reason): after_step (a step finished here) or swept (owed by a gateway that died or could not settle)",
            metrics.workflow_settles.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            metrics.http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request duration by route",
            metrics.http_duration.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }
}

impl GatewayMetrics {
    /// The series in Prometheus' text format.
    #[must_use]
    pub fn render(&self) -> String {
        render(&self.registry)
    }

    /// Counts an accepted job.
    pub fn job_submitted(&self, job: &Job) {
        let labels = SubmittedLabels {
            job_type: job.job_type.to_string(),
            tenant: job.tenant.clone(),
        };
        self.submitted.get_or_create(&labels).inc();
    }

    /// Counts a request refused for `reason` (the tenant, never the key).
    pub fn refused(&self, tenant: &str, reason: &'static str) {
        let labels = RefusedLabels {
            tenant: tenant.to_owned(),
            reason,
        };
        self.refused.get_or_create(&labels).inc();
    }

    /// Counts a webhook attempt: what it led to, how long it took and, once delivered, how
    /// long after the job finished.
    pub fn webhook_attempted(
        &self,
        state: CallbackState,
        took: std::time::Duration,
        lag: Option<chrono::Duration>,
    ) {
        self.webhook_deliveries
            .get_or_create(&OutcomeLabel {
                outcome: state.as_str(),
            })
            .inc();
        self.webhook_attempt.observe(took.as_secs_f64());
        if state == CallbackState::Delivered
            && let Some(lag) = lag.and_then(|lag| lag.to_std().ok())
        {
            self.webhook_lag.observe(lag.as_secs_f64());
        }
    }

    /// Counts an accepted workflow of `steps` steps.
    pub fn workflow_submitted(&self, steps: usize) {
        self.workflows_submitted.inc();
        self.workflow_steps
            .inc_by(u64::try_from(steps).unwrap_or(u64::MAX));
    }

    /// Counts a workflow that ended with `status`.
    pub fn workflow_finished(&self, status: crate::model::WorkflowStatus) {
        let labels = ReasonLabels {
            reason: status.as_str().to_owned(),
        };
        self.workflows_finished.get_or_create(&labels).inc();
    }

    /// Counts a settle caused by `cause` (`after_step`, `swept`, `cancel`, `submit`).
    pub fn workflow_settled(&self, cause: &'static str) {
        let labels = ReasonLabels {
            reason: cause.to_owned(),
        };
        self.workflow_settles.get_or_create(&labels).inc();
    }

    /// Sets the flow settings' gauges (a limit removed removes its series).
    pub fn flow_settings(&self, settings: &[crate::model::QueueSettings]) {
        for type_settings in settings {
            let labels = JobLabels {
                job_type: type_settings.job_type.to_string(),
            };
            self.flow_paused
                .get_or_create(&labels)
                .set(i64::from(type_settings.paused));
            match type_settings.max_running {
                Some(n) => {
                    self.flow_max_running
                        .get_or_create(&labels)
                        .set(i64::from(n));
                }
                None => {
                    self.flow_max_running.remove(&labels);
                }
            }
            match type_settings.rate_limit {
                Some(rate) => {
                    self.flow_rate_jobs
                        .get_or_create(&labels)
                        .set(i64::from(rate.jobs));
                    let window = i64::try_from(rate.window_ms()).unwrap_or(i64::MAX);
                    self.flow_rate_window_ms.get_or_create(&labels).set(window);
                }
                None => {
                    self.flow_rate_jobs.remove(&labels);
                    self.flow_rate_window_ms.remove(&labels);
                }
            }
        }
    }

    /// Counts a job the outbox relay published.
    pub fn job_relayed(&self) {
        self.relayed.inc();
    }

    /// Counts what applying an event did, and a job that became terminal.
    pub fn event_applied(&self, applied: &Applied) {
        let outcome = match applied {
            Applied::Updated(job) => {
                if job.status.is_terminal() {
                    let labels = OutcomeLabels {
                        job_type: job.job_type.to_string(),
                        status: job.status.as_str(),
                    };
                    self.finished.get_or_create(&labels).inc();
                }
                "applied"
            }
            Applied::Ignored(reason) => reason.as_str(),
            Applied::UnknownJob => "unknown_job",
        };
        self.events.get_or_create(&EventLabels { outcome }).inc();
    }
}
