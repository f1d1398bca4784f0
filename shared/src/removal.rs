//! Removing a namespace's topology (queues, exchanges, and with them their bindings): for
//! tests, trials and renamed deployments. `rabbitmqctl` deletes queues one by one and cannot
//! delete exchanges; this removes everything a namespace declared, and refuses while any of
//! its queues has consumers (a gateway or worker still runs) unless forced.

use lapin::{
    Connection,
    options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::FieldTable,
};

use crate::{JobType, Topology};

/// The queues and exchanges to remove.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    /// Queue names.
    pub queues: Vec<String>,
    /// Exchange names.
    pub exchanges: Vec<String>,
}

impl Names {
    /// Everything Warren declares in `topology`: the core queues and exchanges, the retry
    /// tiers of its delays, and the job and token queues of `job_types`.
    #[must_use]
    pub fn declared(topology: &Topology, job_types: &[JobType]) -> Self {
        let mut queues: Vec<String> = job_types
            .iter()
            .flat_map(|t| {
                let levels = topology.job_queues(t).map(|(_, queue)| queue);
                levels
                    .into_iter()
                    .chain([topology.slots_queue(t), topology.rate_queue(t)])
            })
            .collect();
        queues.extend(
            topology
                .retry_delays()
                .iter()
                .map(|d| topology.retry_queue(*d)),
        );
        queues.extend([
            topology.dead_queue(),
            topology.events_store_queue(),
            topology.types_queue(),
            topology.flow_queue(),
        ]);
        let exchanges = vec![
            topology.jobs_exchange(),
            topology.retry_exchange(),
            topology.dead_exchange(),
            topology.events_exchange(),
            topology.control_exchange(),
        ];
        Self { queues, exchanges }
    }
}

/// The job types named in the namespace's registry ([`Topology::types_queue`]), each once,
/// read without taking them ([`crate::amqp::peek`]). Empty when there is no registry.
pub async fn registered_types(
    connection: &Connection,
    topology: &Topology,
) -> Result<Vec<JobType>, lapin::Error> {
    let Some(read) = crate::amqp::peek(connection, &topology.types_queue(), REGISTRY_READ).await?
    else {
        return Ok(Vec::new());
    };
    let types: std::collections::BTreeSet<JobType> = read
        .deliveries
        .iter()
        .filter_map(|delivery| std::str::from_utf8(&delivery.data).ok())
        .filter_map(|name| JobType::parse(name.to_owned()).ok())
        .collect();
    Ok(types.into_iter().collect())
}

/// The most names read from the registry (its length cap).
const REGISTRY_READ: u32 = 10_000;

/// Why a namespace was not removed.
#[derive(Debug, thiserror::Error)]
pub enum RemovalError {
    /// A queue still has consumers; nothing was removed.
    #[error(
        "queue {queue} has {consumers} consumer(s): stop the namespace's gateways and workers \
         first, or force the removal (`warren-admin remove-namespace --force`)"
    )]
    InUse {
        /// The queue.
        queue: String,
        /// How many consumers it has.
        consumers: u32,
    },
    /// The broker refused or the connection failed.
    #[error("the broker refused the removal: {0}")]
    Amqp(#[from] lapin::Error),
}

/// The queues that existed and were deleted (exchanges are deleted whether or not they existed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    /// Deleted queues.
    pub queues: Vec<String>,
    /// Deleted exchanges.
    pub exchanges: Vec<String>,
}

/// Removes `names`: first checks every queue for consumers (refusing, unless `force`, before
/// anything is deleted), then deletes the queues that exist and the exchanges.
pub async fn remove(
    connection: &Connection,
    names: &Names,
    force: bool,
) -> Result<Removed, RemovalError> {
    let mut present = Vec::new();
    for queue in &names.queues {
        // A passive declare of a missing queue closes its channel: one channel per probe.
        let channel = connection.create_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let Ok(declared) = channel
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await
        else {
            continue;
        };
        let consumers = declared.consumer_count();
        if consumers > 0 && !force {
            return Err(RemovalError::InUse {
                queue: queue.clone(),
                consumers,
            });
        }
        present.push(queue.clone());
        let _closed = channel.close(200, "probed".into()).await;
    }
    let channel = connection.create_channel().await?;
    for queue in &present {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    for exchange in &names.exchanges {
        channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await?;
    }
    let _closed = channel.close(200, "namespace removed".into()).await;
    Ok(Removed {
        queues: present,
        exchanges: names.exchanges.clone(),
    })
}
