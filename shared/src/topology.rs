//! Every exchange and queue name Warren uses, derived from `WARREN_NAMESPACE`, and the one place
//! that declares them.
//!
//! | name | kind | declared by |
//! |---|---|---|
//! | `<ns>.jobs` | direct exchange, routing key = job type | everyone ([`declare_core`]) |
//! | `<ns>.jobs.<type>` | quorum queue with a delivery limit (`normal` priority) | the workers of that type |
//! | `<ns>.jobs-high.<type>`, `<ns>.jobs-low.<type>` | the same, for `high` and `low` | the workers of that type |
//! | `<ns>.retry` + `<ns>.retry.<delay>` | headers exchange + wait queues | everyone |
//! | `<ns>.dead` | fanout exchange + quorum queue | everyone |
//! | `<ns>.events` | topic exchange, key `<status>.<type>` | everyone |
//! | `<ns>.events.store` | quorum queue bound `#` | everyone |
//! | `<ns>.control` | fanout exchange | everyone |
//! | `<ns>.types` | quorum queue of job type names (the registry) | the workers of each type |
//!
//! The registry lets `warren-admin remove-namespace` find every job queue without the
//! management plugin (AMQP cannot list queues): a worker that declares its job queue also
//! leaves the type's name there (the newest 10,000 names are kept; every (re)connect adds them
//! again, so a live type is never forgotten).
//! Every durable queue is a quorum queue: a classic one lives on one node, and while that node
//! is down every declaration of it fails, which would stop each worker's reconnect.
//! Declarations are idempotent, so every process declares what it needs at every (re)connect
//! and nothing depends on start order. Arguments must not change between releases without a
//! migration: RabbitMQ refuses a redeclaration with different arguments.

use std::time::Duration;

use lapin::{
    Channel, Consumer, ExchangeKind,
    options::{BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, ShortString},
};

use crate::{
    config::BrokerConfig,
    job::{JobType, Priority},
};

/// How often a job message may be handed out before the broker dead-letters it instead: a job
/// that kills its worker every time must not loop forever.
pub const DEFAULT_DELIVERY_LIMIT: i64 = 10;

/// The header that selects a retry wait queue on the `<ns>.retry` headers exchange. It must
/// not start with `x-`: a headers exchange ignores such headers when matching with
/// `x-match: all`, which would copy every retry into every wait queue.
pub const RETRY_DELAY_HEADER: &str = "warren-retry-delay";

/// The header that says why a message was dead-lettered by Warren.
pub const DEAD_REASON_HEADER: &str = "x-warren-reason";

/// The names of one deployment's exchanges and queues, and the settings that shape them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    namespace: String,
    retry_delays: Vec<Duration>,
    queue_max_length: Option<u32>,
}

impl Topology {
    /// The topology of the deployment whose names start with `namespace`, with the default
    /// retry tiers and unbounded job queues.
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            retry_delays: crate::config::DEFAULT_RETRY_DELAYS.to_vec(),
            queue_max_length: None,
        }
    }

    /// The topology a process configured with `config` uses.
    #[must_use]
    pub fn from_config(config: &BrokerConfig) -> Self {
        let mut retry_delays = config.retry_delays.clone();
        retry_delays.sort_unstable();
        retry_delays.dedup();
        Self {
            namespace: config.namespace.clone(),
            retry_delays,
            queue_max_length: config.queue_max_length,
        }
    }

    /// How long to wait before attempt `attempt + 1` after attempt `attempt` failed:
    /// exponential (the first tier doubled per attempt) with ±25 % jitter derived from `seed`
    /// (the job id, so jobs that failed together spread out), rounded up to the next tier.
    #[must_use]
    pub fn retry_delay(&self, attempt: u32, seed: u64) -> Duration {
        let (Some(&first), Some(&last)) = (self.retry_delays.first(), self.retry_delays.last())
        else {
            return Duration::ZERO;
        };
        let jitter = 0.75 + (seed % 1000) as f64 / 2000.0;
        let exponent = i32::try_from(attempt.saturating_sub(1).min(30)).unwrap_or(30);
        let wanted = first.as_secs_f64() * 2_f64.powi(exponent) * jitter;
        self.retry_delays
            .iter()
            .copied()
            .find(|tier| tier.as_secs_f64() >= wanted)
            .unwrap_or(last)
    }

    /// The label of a retry tier, as the wait queue's name and the routing header use it.
    #[must_use]
    pub fn retry_label(delay: Duration) -> String {
        delay_label(delay)
    }

    /// The namespace every name starts with.
    #[must_use]
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Where the gateway publishes jobs (direct; routing key = job type).
    #[must_use]
    pub fn jobs_exchange(&self) -> String {
        format!("{}.jobs", self.namespace)
    }

    /// The queue of one job type (its `normal` priority level).
    #[must_use]
    pub fn job_queue(&self, job_type: &JobType) -> String {
        format!("{}.jobs.{job_type}", self.namespace)
    }

    /// The queue of one job type's `priority` level: `<ns>.jobs.<type>` for `normal`,
    /// `<ns>.jobs-high.<type>` and `<ns>.jobs-low.<type>` for the others (distinct prefixes,
    /// so no type's queue can be named like another's level).
    #[must_use]
    pub fn priority_queue(&self, job_type: &JobType, priority: Priority) -> String {
        match priority {
            Priority::Normal => self.job_queue(job_type),
            other => format!("{}.jobs-{other}.{job_type}", self.namespace),
        }
    }

    /// The queues of one job type, highest priority first.
    #[must_use]
    pub fn job_queues(&self, job_type: &JobType) -> [(Priority, String); 3] {
        Priority::ALL.map(|priority| (priority, self.priority_queue(job_type, priority)))
    }

    /// The exchange failed attempts are republished to for a backoff wait.
    #[must_use]
    pub fn retry_exchange(&self) -> String {
        format!("{}.retry", self.namespace)
    }

    /// The wait queue for one backoff tier, e.g. `warren.retry.5s`.
    #[must_use]
    pub fn retry_queue(&self, delay: Duration) -> String {
        format!("{}.retry.{}", self.namespace, delay_label(delay))
    }

    /// The backoff tiers, shortest first.
    #[must_use]
    pub fn retry_delays(&self) -> &[Duration] {
        &self.retry_delays
    }

    /// Where jobs out of attempts, malformed and unroutable messages go (fanout).
    #[must_use]
    pub fn dead_exchange(&self) -> String {
        format!("{}.dead", self.namespace)
    }

    /// The queue that keeps dead letters for an operator to inspect.
    #[must_use]
    pub fn dead_queue(&self) -> String {
        self.dead_exchange()
    }

    /// The registry of job types whose queues were declared (see the module docs).
    #[must_use]
    pub fn types_queue(&self) -> String {
        format!("{}.types", self.namespace)
    }

    /// Where workers publish job events (topic; routing key `<status>.<type>`).
    #[must_use]
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.namespace)
    }

    /// The queue the gateways consume (competing) to write events into the store.
    #[must_use]
    pub fn events_store_queue(&self) -> String {
        format!("{}.events.store", self.namespace)
    }

    /// Where cancel requests go to every worker (fanout).
    #[must_use]
    pub fn control_exchange(&self) -> String {
        format!("{}.control", self.namespace)
    }
}

/// `1s`, `2m`, `1h`: the shortest exact label for a delay, used in queue names.
fn delay_label(delay: Duration) -> String {
    let secs = delay.as_secs();
    if delay.subsec_millis() != 0 || secs == 0 {
        format!("{}ms", delay.as_millis())
    } else if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

pub(crate) fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in entries {
        table.insert(ShortString::from(*key), value.clone());
    }
    table
}

pub(crate) fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

pub(crate) fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

async fn declare_exchange(
    channel: &Channel,
    name: String,
    kind: ExchangeKind,
) -> lapin::Result<()> {
    let options = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(name.into(), kind, options, FieldTable::default())
        .await
}

async fn bind(
    channel: &Channel,
    queue: String,
    exchange: String,
    key: &str,
    arguments: FieldTable,
) -> lapin::Result<()> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            arguments,
        )
        .await
}

/// Declares every shared exchange and queue: jobs, retry (with its wait queues), dead, events
/// (with the store queue) and control. Job queues are declared per type by
/// [`declare_job_queue`].
pub async fn declare_core(channel: &Channel, topology: &Topology) -> lapin::Result<()> {
    declare_exchange(channel, topology.jobs_exchange(), ExchangeKind::Direct).await?;
    declare_exchange(channel, topology.events_exchange(), ExchangeKind::Topic).await?;
    declare_exchange(channel, topology.control_exchange(), ExchangeKind::Fanout).await?;
    declare_exchange(channel, topology.dead_exchange(), ExchangeKind::Fanout).await?;
    declare_exchange(channel, topology.retry_exchange(), ExchangeKind::Headers).await?;

    let quorum = text("quorum");
    let dead_queue = table(&[("x-queue-type", quorum.clone())]);
    channel
        .queue_declare(topology.dead_queue().into(), durable(), dead_queue)
        .await?;
    bind(
        channel,
        topology.dead_queue(),
        topology.dead_exchange(),
        "",
        FieldTable::default(),
    )
    .await?;

    // A malformed event is rejected by the gateway and lands in the dead queue with the rest.
    let store_queue = table(&[
        ("x-queue-type", quorum.clone()),
        ("x-dead-letter-exchange", text(&topology.dead_exchange())),
    ]);
    channel
        .queue_declare(topology.events_store_queue().into(), durable(), store_queue)
        .await?;
    bind(
        channel,
        topology.events_store_queue(),
        topology.events_exchange(),
        "#",
        FieldTable::default(),
    )
    .await?;

    for &delay in topology.retry_delays() {
        let millis = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        // When the TTL runs out the message goes back to the jobs exchange with its original
        // routing key (the job type), i.e. into its job queue. At-least-once dead-lettering
        // needs reject-publish overflow.
        let wait_queue = table(&[
            ("x-queue-type", quorum.clone()),
            ("x-message-ttl", AMQPValue::LongLongInt(millis)),
            ("x-dead-letter-exchange", text(&topology.jobs_exchange())),
            ("x-dead-letter-strategy", text("at-least-once")),
            ("x-overflow", text("reject-publish")),
        ]);
        let queue = topology.retry_queue(delay);
        channel
            .queue_declare(queue.clone().into(), durable(), wait_queue)
            .await?;
        let selector = table(&[
            ("x-match", text("all")),
            (RETRY_DELAY_HEADER, text(&delay_label(delay))),
        ]);
        bind(channel, queue, topology.retry_exchange(), "", selector).await?;
    }
    Ok(())
}

/// The routing key of a job of `job_type` at `priority` on the jobs exchange: the type for
/// `normal`, `<type>/high` and `<type>/low` otherwise (`/` is not in a type name).
#[must_use]
pub fn routing_key(job_type: &JobType, priority: Priority) -> String {
    match priority {
        Priority::Normal => job_type.as_str().to_owned(),
        other => format!("{job_type}/{other}"),
    }
}

/// Declares the quorum queues of one job type (one per priority level, see
/// [`Topology::job_queues`]), binds each to the jobs exchange with its [`routing_key`], and
/// returns the `normal` one's name.
///
/// With `WARREN_QUEUE_MAX_LENGTH` the queue refuses jobs once it is full (a quorum queue
/// checks after enqueuing, so it may hold one more than the limit).
/// RabbitMQ refuses to redeclare a queue with other arguments, so changing the limit means
/// deleting the queue (or moving the limit into a policy).
///
/// A message delivered more than [`DEFAULT_DELIVERY_LIMIT`] times (its worker died each time)
/// is dead-lettered to `<ns>.dead` by the broker instead of being handed out again.
pub async fn declare_job_queue(
    channel: &Channel,
    topology: &Topology,
    job_type: &JobType,
) -> lapin::Result<String> {
    let queue = topology.job_queue(job_type);
    let mut arguments = table(&[
        ("x-queue-type", text("quorum")),
        (
            "x-delivery-limit",
            AMQPValue::LongLongInt(DEFAULT_DELIVERY_LIMIT),
        ),
        ("x-dead-letter-exchange", text(&topology.dead_exchange())),
    ]);
    if let Some(max_length) = topology.queue_max_length {
        // A full queue refuses new jobs (the gateway's publish is nacked → 503) rather than
        // dropping old ones.
        let max_length = AMQPValue::LongLongInt(i64::from(max_length));
        arguments.insert("x-max-length".into(), max_length);
        arguments.insert("x-overflow".into(), text("reject-publish"));
    }
    for (priority, level_queue) in topology.job_queues(job_type) {
        channel
            .queue_declare(level_queue.clone().into(), durable(), arguments.clone())
            .await?;
        bind(
            channel,
            level_queue,
            topology.jobs_exchange(),
            &routing_key(job_type, priority),
            FieldTable::default(),
        )
        .await?;
    }
    register_job_type(channel, topology, job_type).await?;
    Ok(queue)
}

/// Names kept in the registry of job types (the oldest are dropped first).
const REGISTRY_LENGTH: i64 = 10_000;

/// Declares the registry of job types ([`Topology::types_queue`]).
pub async fn declare_registry(channel: &Channel, topology: &Topology) -> lapin::Result<String> {
    let queue = topology.types_queue();
    let arguments = table(&[
        ("x-queue-type", text("quorum")),
        ("x-max-length", AMQPValue::LongLongInt(REGISTRY_LENGTH)),
        ("x-overflow", text("drop-head")),
    ]);
    channel
        .queue_declare(queue.clone().into(), durable(), arguments)
        .await?;
    Ok(queue)
}

/// Leaves `job_type`'s name in the registry (persistent, straight to the queue through the
/// default exchange; not confirmed: the registry only helps removal find queues).
pub async fn register_job_type(
    channel: &Channel,
    topology: &Topology,
    job_type: &JobType,
) -> lapin::Result<()> {
    let queue = declare_registry(channel, topology).await?;
    let properties = lapin::BasicProperties::default().with_delivery_mode(2);
    let _confirm = channel
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            lapin::options::BasicPublishOptions::default(),
            job_type.as_str().as_bytes(),
            properties,
        )
        .await?;
    Ok(())
}

/// Follows `exchange` (messages matching `routing_key`) on an exclusive, server-named queue that
/// lives as long as `channel`, consumed without acks. For the per-process queues: a gateway's
/// notifier queue and a worker's control queue. `arguments` are the queue's (e.g. a length cap).
pub async fn subscribe_exclusive(
    channel: &Channel,
    exchange: String,
    routing_key: &str,
    arguments: FieldTable,
) -> lapin::Result<Consumer> {
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel.queue_declare("".into(), options, arguments).await?;
    let name = queue.name().to_string();
    bind(
        channel,
        name.clone(),
        exchange,
        routing_key,
        FieldTable::default(),
    )
    .await?;
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    channel
        .basic_consume(name.into(), "".into(), no_ack, FieldTable::default())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_the_namespace() {
        let topology = Topology::new("warren");
        let echo = JobType::parse("echo").unwrap();
        assert_eq!(topology.jobs_exchange(), "warren.jobs");
        assert_eq!(topology.job_queue(&echo), "warren.jobs.echo");
        assert_eq!(topology.retry_exchange(), "warren.retry");
        assert_eq!(topology.dead_exchange(), "warren.dead");
        assert_eq!(topology.events_exchange(), "warren.events");
        assert_eq!(topology.events_store_queue(), "warren.events.store");
        assert_eq!(topology.control_exchange(), "warren.control");
        assert_eq!(Topology::new("t-1").jobs_exchange(), "t-1.jobs");
    }

    #[test]
    fn retry_delays_grow_by_attempt_and_stay_on_the_tiers() {
        let topology = Topology::new("warren");
        let tiers = topology.retry_delays().to_vec();
        for seed in [0, 499, 999] {
            let delays: Vec<Duration> = (1..=12)
                .map(|attempt| topology.retry_delay(attempt, seed))
                .collect();
            assert!(delays.iter().all(|d| tiers.contains(d)), "{delays:?}");
            assert!(delays.is_sorted(), "{delays:?}");
            assert_eq!(delays[11], Duration::from_secs(600));
        }
        // Jitter spreads jobs that fail together across tiers.
        assert_ne!(topology.retry_delay(1, 0), topology.retry_delay(1, 999));
    }

    #[test]
    fn retry_queues_are_labelled_by_their_delay() {
        let topology = Topology::new("warren");
        let labels: Vec<String> = topology
            .retry_delays()
            .iter()
            .map(|d| topology.retry_queue(*d))
            .collect();
        assert_eq!(
            labels,
            [
                "warren.retry.1s",
                "warren.retry.5s",
                "warren.retry.30s",
                "warren.retry.2m",
                "warren.retry.10m"
            ]
        );
        assert_eq!(delay_label(Duration::from_millis(1500)), "1500ms");
        assert_eq!(delay_label(Duration::from_secs(7200)), "2h");
    }
}
