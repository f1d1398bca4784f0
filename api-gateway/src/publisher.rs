//! Publishing job messages: one long-lived confirm channel shared by all requests (lapin
//! pipelines confirms on it), reopened from the connection pool when it has died.

use std::time::Duration;

use lapin::{
    Channel,
    types::{AMQPValue, FieldTable},
};
use serde_json::value::RawValue;
use tokio::sync::Mutex;
use warren_shared::amqp::Pool;
use warren_shared::{
    ControlMessage, JobMessage, Topology,
    amqp::{self, BrokerError, Outgoing, PublishError},
    message,
    metrics::Histogram,
    topology,
    trace::TRACEPARENT,
};

/// Publishes jobs to `<ns>.jobs` with confirms.
#[derive(Debug)]
pub struct Publisher {
    pool: Pool,
    topology: Topology,
    timeout: Duration,
    /// Publish → confirm latency.
    confirm_latency: Histogram,
    /// The shared confirm channel; `None` until first use or after it died.
    channel: Mutex<Option<Channel>>,
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
    async fn channel(&self) -> Result<Channel, BrokerError> {
        let mut cached = self.channel.lock().await;
        if let Some(channel) = cached.as_ref().filter(|c| c.status().connected()) {
            return Ok(channel.clone());
        }
        let channel = amqp::confirm_channel(&self.pool).await?;
        topology::declare_core(&channel, &self.topology).await?;
        tracing::info!(channel = channel.id(), "publisher channel open");
        *cached = Some(channel.clone());
        Ok(channel)
    }

    /// Publishes one job message (with its `traceparent`): persistent, mandatory, confirmed
    /// within the timeout.
    /// The whole call, including reconnecting, is bounded by the timeout.
    pub async fn publish_job(
        &self,
        job: &JobMessage<&RawValue>,
        traceparent: &str,
    ) -> Result<(), PublishError> {
        let body = message::encode(job);
        let mut headers = FieldTable::default();
        headers.insert(
            TRACEPARENT.into(),
            AMQPValue::LongString(traceparent.into()),
        );
        let outgoing = Outgoing {
            exchange: &self.topology.jobs_exchange(),
            routing_key: job.job_type.as_str(),
            body: &body,
            message_id: &job.id.to_string(),
            kind: job.job_type.as_str(),
            headers,
            mandatory: true,
        };
        self.publish(outgoing).await
    }

    /// Broadcasts a control message to every worker (none listening is not an error).
    pub async fn publish_control(&self, control: &ControlMessage) -> Result<(), PublishError> {
        let body = message::encode(control);
        let outgoing = Outgoing {
            exchange: &self.topology.control_exchange(),
            routing_key: "",
            body: &body,
            message_id: &control.id.to_string(),
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
