//! Publishing job messages: one long-lived confirm channel shared by all requests (lapin
//! pipelines confirms on it), reopened from the connection pool when it has died.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use lapin::{
    Channel,
    options::QueuePurgeOptions,
    types::{AMQPValue, FieldTable},
};
use serde_json::value::RawValue;
use tokio::sync::Mutex;
use tracing::Instrument;
use warren_shared::amqp::Pool;
use warren_shared::{
    ControlMessage, JobMessage, JobType, Topology,
    amqp::{self, BrokerError, Outgoing, PublishError},
    flow, message,
    metrics::Histogram,
    otel, topology,
    trace::{TRACEPARENT, TraceContext},
};

/// What a passive declare says of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueState {
    /// Messages ready for delivery (not those delivered and unacked).
    pub messages: u32,
    /// Consumers attached.
    pub consumers: u32,
}

/// Publishes jobs to `<ns>.jobs` with confirms.
#[derive(Debug)]
pub struct Publisher {
    pool: Pool,
    topology: Topology,
    timeout: Duration,
    /// Publish → confirm latency.
    confirm_latency: Histogram,
    /// The shared confirm channel; `None` until first use or after it died. In an `Arc`, so
    /// each publish takes one count rather than cloning the channel's own fifteen handles.
    channel: Mutex<Option<Arc<Channel>>>,
}

impl Publisher {
    /// A publisher on `pool` that gives each publish `timeout` to be confirmed.
    #[must_use]
    pub fn new(
        pool: Pool,
        topology: Topology,
        timeout: Duration,
        confirm_latency: Histogram,
    ) -> Self {
        Self {
            pool,
            topology,
            timeout,
            confirm_latency,
            channel: Mutex::new(None),
        }
    }

    /// The live confirm channel, opening (and declaring the topology on) a new one if needed.
    async fn channel(&self) -> Result<Arc<Channel>, BrokerError> {
        let mut cached = self.channel.lock().await;
        if let Some(channel) = cached.as_ref().filter(|c| c.status().connected()) {
            return Ok(channel.clone());
        }
        let channel = Arc::new(amqp::confirm_channel(&self.pool).await?);
        topology::declare_core(&channel, &self.topology).await?;
        tracing::info!(channel = channel.id(), "publisher channel open");
        *cached = Some(Arc::clone(&channel));
        Ok(channel)
    }

    /// Publishes one job message: persistent, mandatory, confirmed within the timeout, in a
    /// `publish` span (a producer span with OpenTelemetry's messaging attributes) continuing
    /// `trace`; the message's `traceparent` names that span, so the worker's span is its child.
    /// The whole call, including reconnecting, is bounded by the timeout.
    pub async fn publish_job(
        &self,
        job: &JobMessage<&RawValue>,
        trace: &TraceContext,
    ) -> Result<(), PublishError> {
        let exchange = self.topology.jobs_exchange();
        let span = if otel::enabled() {
            publish_span(job, &exchange)
        } else {
            tracing::Span::none()
        };
        otel::continue_in(&span, trace);
        let traceparent = otel::next_hop(&span, trace).header();
        let body = message::encode(job);
        let mut headers = FieldTable::default();
        headers.insert(
            TRACEPARENT.into(),
            AMQPValue::LongString(traceparent.into()),
        );
        let outgoing = Outgoing {
            exchange,
            routing_key: topology::routing_key(&job.job_type, job.priority),
            body: &body,
            message_id: job.id.to_string(),
            kind: job.job_type.as_str(),
            headers,
            mandatory: true,
        };
        let published = self.publish(outgoing).instrument(span.clone()).await;
        if let Err(error) = &published {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", error.kind());
        }
        published
    }

    /// Broadcasts a control message to every worker (none listening is not an error).
    pub async fn publish_control(&self, control: &ControlMessage) -> Result<(), PublishError> {
        let body = message::encode(control);
        let outgoing = Outgoing {
            exchange: self.topology.control_exchange(),
            routing_key: String::new(),
            body: &body,
            message_id: control.id.to_string(),
            kind: "control",
            headers: FieldTable::default(),
            mandatory: false,
        };
        self.publish(outgoing).await
    }

    async fn publish(&self, outgoing: Outgoing<'_>) -> Result<(), PublishError> {
        let publish = async {
            let channel = self.channel().await?;
            let started = std::time::Instant::now();
            let confirmed = amqp::publish_confirmed(&channel, outgoing, self.timeout).await;
            if confirmed.is_ok() {
                self.confirm_latency
                    .observe(started.elapsed().as_secs_f64());
            }
            confirmed
        };
        tokio::time::timeout(self.timeout, publish)
            .await
            .map_err(|_| PublishError::Timeout(self.timeout))?
    }

    /// Messages ready and consumers of each queue in `names` that exists (a passive declare
    /// each, on a channel of its own: a missing queue closes its channel).
    pub async fn probe_queues(
        &self,
        names: &[String],
    ) -> Result<Vec<(String, QueueState)>, BrokerError> {
        let connection = amqp::connection(&self.pool).await?;
        let passive = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let mut found = Vec::with_capacity(names.len());
        for name in names {
            let channel = connection.create_channel().await?;
            let declared = channel
                .queue_declare(
                    name.as_str().into(),
                    passive,
                    lapin::types::FieldTable::default(),
                )
                .await;
            if let Ok(queue) = declared {
                let state = QueueState {
                    messages: queue.message_count(),
                    consumers: queue.consumer_count(),
                };
                found.push((name.clone(), state));
                let _closed = channel.close(200, "probed".into()).await;
            }
        }
        Ok(found)
    }

    /// The first `limit` messages of the dead-letter queue, and how many it holds, without
    /// taking any away ([`amqp::peek`]).
    pub async fn peek_dead_letters(
        &self,
        limit: u32,
    ) -> Result<crate::model::DeadLetterPage, BrokerError> {
        let connection = amqp::connection(&self.pool).await?;
        let read = amqp::peek(&connection, &self.topology.dead_queue(), limit).await?;
        Ok(read.map_or_else(
            || crate::model::DeadLetterPage {
                total: 0,
                dead_letters: Vec::new(),
            },
            |read| crate::model::DeadLetterPage {
                total: read.total,
                dead_letters: read.deliveries.iter().map(dead_letter_of).collect(),
            },
        ))
    }

    /// The flow snapshot kept in `<ns>.flow`, if there is one (read without taking it).
    pub async fn peek_flow(&self) -> Result<Option<flow::FlowSnapshot>, BrokerError> {
        let connection = amqp::connection(&self.pool).await?;
        let read = amqp::peek(&connection, &self.topology.flow_queue(), 1).await?;
        Ok(read
            .and_then(|read| read.deliveries.into_iter().next())
            .and_then(|delivery| message::decode(&delivery.data).ok()))
    }

    /// The names it publishes under.
    #[must_use]
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Declares `<ns>.flow` and, for `job_type`, its token queues.
    pub async fn declare_flow(&self, job_type: Option<&JobType>) -> Result<(), BrokerError> {
        let channel = self.channel().await?;
        flow::declare_flow_queue(&channel, &self.topology).await?;
        if let Some(job_type) = job_type {
            flow::declare_token_queues(&channel, &self.topology, job_type).await?;
        }
        Ok(())
    }

    /// Removes the messages ready in `queue` (those a worker holds stay).
    pub async fn purge(&self, queue: &str) -> Result<u32, BrokerError> {
        let channel = self.channel().await?;
        Ok(channel
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await?)
    }

    /// Publishes `bodies` straight to `queue` (persistent, mandatory), up to 64 unconfirmed
    /// at once; fails if any is not confirmed.
    pub async fn publish_to_queue(
        &self,
        queue: &str,
        bodies: &[Vec<u8>],
    ) -> Result<(), PublishError> {
        let kind = "flow";
        let mut pending = futures_util::stream::FuturesUnordered::new();
        for body in bodies {
            if pending.len() >= 64
                && let Some(confirmed) = pending.next().await
            {
                confirmed?;
            }
            pending.push(self.publish(Outgoing {
                exchange: String::new(),
                routing_key: queue.to_owned(),
                body,
                message_id: kind.to_owned(),
                kind,
                headers: FieldTable::default(),
                mandatory: true,
            }));
        }
        while let Some(confirmed) = pending.next().await {
            confirmed?;
        }
        Ok(())
    }

    /// The RabbitMQ node (`host:port`) of the latest connection, if any.
    #[must_use]
    pub fn current_node(&self) -> Option<String> {
        self.pool.manager().current_node()
    }

    /// Whether the broker is usable now: a live channel exists or can be opened quickly.
    /// The error says what failed and how long the probe waited.
    pub async fn is_ready(&self) -> Result<(), String> {
        let wait = Duration::from_secs(2);
        match tokio::time::timeout(wait, self.channel()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!(
                "no usable channel within {wait:?} (still connecting)"
            )),
        }
    }
}

/// What a dead-lettered delivery says of itself: Warren's reason and error history when a
/// worker or gateway put it there, the broker's reason otherwise.
fn dead_letter_of(delivery: &lapin::message::Delivery) -> crate::model::DeadLetter {
    let properties = &delivery.properties;
    let body = serde_json::from_slice(&delivery.data).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&delivery.data).into_owned())
    });
    // A job or event body names its job and type; other messages only in their properties.
    let named = |field: &str| body.get(field).and_then(|v| v.as_str()).map(str::to_owned);
    crate::model::DeadLetter {
        message_id: named("id")
            .or_else(|| properties.message_id().as_ref().map(ToString::to_string)),
        job_type: named("type").or_else(|| properties.kind().as_ref().map(ToString::to_string)),
        reason: amqp::text_header(delivery, topology::DEAD_REASON_HEADER)
            .or_else(|| amqp::text_header(delivery, "x-first-death-reason")),
        errors: amqp::text_header(delivery, "x-warren-errors")
            .and_then(|text| serde_json::from_str(&text).ok()),
        body,
    }
}

/// The producer span of one job's publish, with OpenTelemetry's messaging attributes.
fn publish_span(job: &JobMessage<&RawValue>, exchange: &str) -> tracing::Span {
    tracing::info_span!("publish", job_id = %job.id, attempt = job.attempt,
            otel.name = %format_args!("publish {exchange}"), otel.kind = "producer",
            messaging.system = "rabbitmq", messaging.operation.type = "send",
            messaging.operation.name = "publish", messaging.destination.name = %exchange,
            messaging.rabbitmq.destination.routing_key = %topology::routing_key(&job.job_type, job.priority),
            messaging.message.id = %job.id, otel.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty)
}
