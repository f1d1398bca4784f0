//! Publishing a job's events: `running`, progress reports and the outcome, numbered with a
//! per-attempt sequence so the store can recognise stale and repeated events.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use chrono::{DateTime, Utc};
use lapin::{
    Channel,
    types::{AMQPValue, FieldTable},
};
use serde_json::Value;
use warren_shared::{
    JobError, JobEvent, JobMessage, JobStatus, Progress, Topology, V1,
    amqp::{self, Outgoing, PublishError},
    message,
    trace::{TRACEPARENT, TraceContext},
};

/// What an event says happened.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub(crate) status: JobStatus,
    pub(crate) progress: Option<Progress>,
    pub(crate) result: Option<Value>,
    pub(crate) error: Option<JobError>,
    pub(crate) next_attempt_at: Option<DateTime<Utc>>,
}

impl Change {
    /// A change to `status` with nothing else to say.
    pub(crate) fn to(status: JobStatus) -> Self {
        Self {
            status,
            progress: None,
            result: None,
            error: None,
            next_attempt_at: None,
        }
    }

    /// A failure-like change (`failed`, `retrying`, `cancelled`) with its reason.
    pub(crate) fn with_error(status: JobStatus, error: JobError) -> Self {
        Self {
            error: Some(error),
            ..Self::to(status)
        }
    }
}

/// Publishes the events of one attempt of one job.
#[derive(Debug, Clone)]
pub(crate) struct Reporter {
    inner: Arc<ReporterInner>,
}

#[derive(Debug)]
struct ReporterInner {
    channel: Arc<Channel>,
    /// How long a publish may wait for its confirm (`WARREN_PUBLISH_TIMEOUT_MS`).
    publish_timeout: std::time::Duration,
    exchange: String,
    job: JobMessage,
    worker: Arc<str>,
    trace: TraceContext,
    /// When the worker let the attempt start: the time of its `running` event.
    started_at: DateTime<Utc>,
    seq: AtomicU64,
}

impl Reporter {
    pub(crate) fn new(
        channel: Arc<Channel>,
        publish_timeout: std::time::Duration,
        topology: &Topology,
        job: JobMessage,
        worker: Arc<str>,
        trace: TraceContext,
        started_at: DateTime<Utc>,
    ) -> Self {
        Self {
            inner: Arc::new(ReporterInner {
                channel,
                publish_timeout,
                exchange: topology.events_exchange(),
                job,
                worker,
                trace,
                started_at,
                seq: AtomicU64::new(0),
            }),
        }
    }

    /// The job whose events this reporter publishes.
    pub(crate) fn job(&self) -> &JobMessage {
        &self.inner.job
    }

    /// The `traceparent` headers for what this attempt publishes (events, the retried job):
    /// the attempt's hop (its consumer span when exported), parent of what they cause.
    pub(crate) fn trace_headers(&self) -> FieldTable {
        let mut headers = FieldTable::default();
        let value = self.inner.trace.header();
        headers.insert(
            TRACEPARENT.into(),
            AMQPValue::LongString(value.as_str().into()),
        );
        headers
    }

    /// How long a publish on [`Reporter::channel`] may wait for its confirm.
    pub(crate) fn publish_timeout(&self) -> std::time::Duration {
        self.inner.publish_timeout
    }

    /// The confirm channel the events go out on (also used for retries and dead letters).
    pub(crate) fn channel(&self) -> &Channel {
        &self.inner.channel
    }

    /// Publishes an event and waits for the broker's confirm (one try).
    pub(crate) async fn publish(&self, change: Change) -> Result<(), PublishError> {
        let event = self.event(change);
        self.send(&event, &message::encode(&event)).await
    }

    /// The event saying `change` happened, numbered after the attempt's earlier ones.
    pub(crate) fn event(&self, change: Change) -> JobEvent {
        let inner = &self.inner;
        JobEvent {
            traceparent: None,
            v: V1,
            id: inner.job.id,
            job_type: inner.job.job_type.clone(),
            status: change.status,
            attempt: inner.job.attempt,
            seq: inner.seq.fetch_add(1, Ordering::SeqCst) + 1,
            progress: change.progress,
            result: change.result,
            error: change.error,
            next_attempt_at: change.next_attempt_at,
            worker: inner.worker.to_string(),
            // A start is stamped when the worker let the attempt start (flow control counts
            // starts then), however late its announcement goes out.
            at: if change.status == JobStatus::Running {
                inner.started_at
            } else {
                Utc::now()
            },
        }
    }

    /// Publishes `event`, encoded as `body`, and waits for the broker's confirm. Sending the
    /// same event again is harmless: the store applies it once.
    pub(crate) async fn send(&self, event: &JobEvent, body: &[u8]) -> Result<(), PublishError> {
        let inner = &self.inner;
        let outgoing = Outgoing {
            exchange: inner.exchange.clone(),
            routing_key: event.routing_key(),
            body,
            message_id: event.id.to_string(),
            kind: event.job_type.as_str(),
            headers: self.trace_headers(),
            mandatory: false,
        };
        amqp::publish_confirmed(&inner.channel, outgoing, inner.publish_timeout).await
    }

    /// Publishes a progress report; failures are logged, not returned.
    pub(crate) async fn progress(&self, progress: Progress) {
        let change = Change {
            progress: Some(progress),
            ..Change::to(JobStatus::Running)
        };
        if let Err(error) = self.publish(change).await {
            tracing::warn!(%error, "progress report not published");
        }
    }
}
