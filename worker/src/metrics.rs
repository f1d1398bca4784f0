//! The worker's Prometheus series, served on `WARREN_METRICS_ADDR` at `/metrics`:
//!
//! - `warren_worker_jobs_finished_total{job_type,status}`: outcomes this worker published
//!   (`succeeded`, `failed`, `cancelled`);
//! - `warren_worker_job_retries_total{job_type}`: failed attempts sent for another try;
//! - `warren_worker_dead_letters_total{reason}`: messages moved to `<ns>.dead`
//!   (`failed`, `poison`, `unreadable`);
//! - `warren_worker_unconfirmed_publishes_total{what}`: settlement publishes the broker did not
//!   confirm (`outcome`, `retry`, `dead_letter`), each tried again while the worker holds the
//!   job unless its channel closed (the broker then returns the job); rising means the events or dead-letter queue cannot take messages;
//! - `warren_worker_flow_settings_read_failures_total`: failed reads of `<ns>.flow` (the
//!   worker keeps the settings it knows and reads again);
//! - `warren_worker_sessions_total`: consume sessions started (each after the first is a
//!   reconnect);
//! - `warren_worker_job_queue_wait_seconds{job_type}`: from acceptance to the attempt's start;
//! - `warren_worker_job_run_seconds{job_type}`: how long attempts ran;
//! - `warren_worker_jobs_in_flight`: attempts running now;
//! - `warren_worker_acks_sent_total` and `warren_worker_ack_frames_total`: deliveries acked,
//!   and the `basic.ack` frames that carried them (their ratio is how well acks batch).

use chrono::{DateTime, Utc};

use crate::acks::AckCounters;
use warren_shared::metrics::{
    Counter, Family, Gauge, Histogram, JobLabels, OutcomeLabels, ReasonLabels, Registry,
    duration_family, render,
};

/// Every series a worker exports.
#[derive(Debug)]
pub(crate) struct WorkerMetrics {
    registry: Registry,
    finished: Family<OutcomeLabels, Counter>,
    retries: Family<JobLabels, Counter>,
    dead_letters: Family<ReasonLabels, Counter>,
    unconfirmed: Family<WhatLabels, Counter>,
    queue_wait: Family<JobLabels, Histogram>,
    run_time: Family<JobLabels, Histogram>,
    in_flight: Gauge,
    held_back: Family<HeldLabels, Gauge>,
    flow_version: Gauge,
    flow_read_failures: Counter,
    sessions: Counter,
    acks: AckCounters,
}

/// Series split by what a settlement published.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub(crate) struct WhatLabels {
    what: &'static str,
}

/// Series split by job type and why its jobs are held back.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub(crate) struct HeldLabels {
    job_type: String,
    reason: &'static str,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("warren_worker");
        let metrics = Self {
            registry: Registry::default(),
            finished: Family::default(),
            retries: Family::default(),
            dead_letters: Family::default(),
            unconfirmed: Family::default(),
            queue_wait: duration_family(),
            run_time: duration_family(),
            in_flight: Gauge::default(),
            held_back: Family::default(),
            flow_version: Gauge::default(),
            flow_read_failures: Counter::default(),
            sessions: Counter::default(),
            acks: AckCounters::default(),
        };
        registry.register(
            "trace_spans_dropped",
            "Spans that never reached the OTLP collector, by reason: queue_full (the export queue, OTEL_BSP_MAX_QUEUE_SIZE, was full), export_failed (the collector refused or did not answer), shut_down",
            warren_shared::otel::spans_dropped(),
        );
        registry.register(
            "jobs_finished",
            "Outcomes published by this worker",
            metrics.finished.clone(),
        );
        registry.register(
            "job_retries",
            "Failed attempts sent for another try",
            metrics.retries.clone(),
        );
        registry.register(
            "dead_letters",
            "Messages moved to the dead-letter queue",
            metrics.dead_letters.clone(),
        );
        registry.register(
            "unconfirmed_publishes",
            "Settlement publishes the broker did not confirm, by what was published (outcome, retry, dead_letter); each is tried again while the worker holds the job, unless its channel closed (the broker then returns the job to its queue)",
            metrics.unconfirmed.clone(),
        );
        registry.register(
            "job_queue_wait_seconds",
            "Time from acceptance to an attempt's start",
            metrics.queue_wait.clone(),
        );
        registry.register(
            "job_run_seconds",
            "How long attempts ran",
            metrics.run_time.clone(),
        );
        registry.register(
            "jobs_held_back",
            "Deliveries this worker holds without starting them, by job type and reason: paused, max_running (no slot free), rate_limit (this window's starts used up)",
            metrics.held_back.clone(),
        );
        registry.register(
            "flow_settings_version",
            "Version of the flow settings snapshot this worker follows (0: none read yet); every worker shows the same once a change has reached them all",
            metrics.flow_version.clone(),
        );
        registry.register(
            "flow_settings_read_failures",
            "Reads of the flow settings (<ns>.flow) that failed; the worker keeps the settings it knows and reads again on a new channel",
            metrics.flow_read_failures.clone(),
        );
        registry.register(
            "sessions",
            "Consume sessions started: one per connection to the broker, so each one after the first is a reconnect (the log says why)",
            metrics.sessions.clone(),
        );
        registry.register(
            "jobs_in_flight",
            "Attempts running now",
            metrics.in_flight.clone(),
        );
        registry.register(
            "acks_sent",
            "Deliveries this worker acked (after their outcomes were confirmed)",
            metrics.acks.acks.clone(),
        );
        registry.register(
            "ack_frames",
            "basic.ack frames that carried them: one per job when acks cannot go together (a flow token on the channel, concurrency 1)",
            metrics.acks.frames.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }
}

fn job(job_type: &str) -> JobLabels {
    JobLabels {
        job_type: job_type.to_owned(),
    }
}

impl WorkerMetrics {
    /// The counters the consume channel's ack flusher adds to.
    pub(crate) fn ack_counters(&self) -> AckCounters {
        self.acks.clone()
    }

    /// The series in Prometheus' text format.
    pub(crate) fn render(&self) -> String {
        render(&self.registry)
    }

    /// An attempt starts: counts it in flight until the guard drops, and records its wait.
    pub(crate) fn attempt_started(
        &self,
        job_type: &str,
        accepted_at: DateTime<Utc>,
    ) -> InFlightGuard<'_> {
        let waited = (Utc::now() - accepted_at)
            .num_microseconds()
            .unwrap_or(0)
            .max(0);
        #[allow(clippy::cast_precision_loss)]
        self.queue_wait
            .get_or_create(&job(job_type))
            .observe(waited as f64 / 1e6);
        self.in_flight.inc();
        InFlightGuard(&self.in_flight)
    }

    /// An attempt ran for `seconds`.
    pub(crate) fn attempt_ran(&self, job_type: &str, seconds: f64) {
        self.run_time.get_or_create(&job(job_type)).observe(seconds);
    }

    /// An outcome was published.
    pub(crate) fn finished(&self, job_type: &str, status: &'static str) {
        let labels = OutcomeLabels {
            job_type: job_type.to_owned(),
            status,
        };
        self.finished.get_or_create(&labels).inc();
    }

    /// Sets the held-back gauges from the deliveries held now (type, reason).
    pub(crate) fn held_back(&self, held: impl Iterator<Item = (String, &'static str)>) {
        let mut counts = std::collections::HashMap::new();
        for (job_type, reason) in held {
            *counts
                .entry(HeldLabels { job_type, reason })
                .or_insert(0_i64) += 1;
        }
        // Series of types no longer held go back to 0.
        let known: Vec<HeldLabels> = counts.keys().cloned().collect();
        for reason in ["paused", "max_running", "rate_limit"] {
            for job_type in known.iter().map(|l| l.job_type.clone()).collect::<Vec<_>>() {
                let labels = HeldLabels { job_type, reason };
                counts.entry(labels).or_insert(0);
            }
        }
        for (labels, count) in counts {
            self.held_back.get_or_create(&labels).set(count);
        }
    }

    /// This worker now follows flow settings `version`.
    pub(crate) fn flow_version(&self, version: u64) {
        self.flow_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
    }

    /// A failed attempt was sent for another try.
    pub(crate) fn retried(&self, job_type: &str) {
        self.retries.get_or_create(&job(job_type)).inc();
    }

    /// A consume session starts.
    pub(crate) fn session_started(&self) {
        self.sessions.inc();
    }

    /// A read of the flow settings failed.
    pub(crate) fn flow_read_failed(&self) {
        self.flow_read_failures.inc();
    }

    /// The broker did not confirm a settlement's publish of `what`.
    pub(crate) fn unconfirmed(&self, what: &'static str) {
        self.unconfirmed.get_or_create(&WhatLabels { what }).inc();
    }

    /// A message went to the dead-letter queue.
    pub(crate) fn dead_lettered(&self, reason: &str) {
        self.dead_letters
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }
}

/// Counts an attempt in flight while alive.
#[derive(Debug)]
pub(crate) struct InFlightGuard<'a>(&'a Gauge);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
