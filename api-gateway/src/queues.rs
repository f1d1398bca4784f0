//! The queue overview behind `GET /v1/queues`: per job type, the store's counts (the caller's
//! tenant's) beside RabbitMQ's numbers (workers consuming, and for the operator messages ready
//! and dead letters), read with passive declares so no management plugin is needed.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use serde::Serialize;
use warren_shared::{JobStatus, JobType};

use crate::{
    auth::Caller,
    publisher::Publisher,
    store::{JobStore, StoreError},
};

/// How far back "finished" counts reach.
const FINISHED_WINDOW: chrono::Duration = chrono::Duration::hours(1);
/// How long the broker's numbers may take before the answer goes without them.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One job type's numbers.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct QueueStats {
    /// The job type.
    #[serde(rename = "type")]
    #[schema(example = "report.generate")]
    pub job_type: String,
    /// Workflow steps waiting for the steps they depend on.
    pub waiting: u64,
    /// Jobs waiting for their `run_at`.
    pub scheduled: u64,
    /// Jobs waiting for a worker.
    pub queued: u64,
    /// Jobs a worker runs now.
    pub running: u64,
    /// Jobs waiting to be tried again.
    pub retrying: u64,
    /// Jobs that succeeded in the last hour.
    pub succeeded_last_hour: u64,
    /// Jobs that failed in the last hour.
    pub failed_last_hour: u64,
    /// Jobs cancelled in the last hour.
    pub cancelled_last_hour: u64,
    /// Workers consuming the type's queue; null when RabbitMQ did not answer or the queue does
    /// not exist.
    pub workers: Option<u32>,
    /// Messages ready in the type's queue, every tenant's (operator only; null otherwise).
    pub messages_ready: Option<u32>,
}

/// `GET /v1/queues`'s answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QueueOverview {
    /// One entry per job type with unfinished jobs or jobs finished in the last hour, by name.
    pub queues: Vec<QueueStats>,
    /// Messages in the dead-letter queue (operator only; null otherwise, or when RabbitMQ did
    /// not answer).
    pub dead_letters: Option<u32>,
    /// Whether RabbitMQ answered: without it, `workers`, `messages_ready` and `dead_letters`
    /// are null.
    pub broker_answered: bool,
    /// When the numbers were read.
    pub at: DateTime<Utc>,
}

/// Reads the queue overview.
#[derive(Clone)]
pub struct QueueService {
    store: Arc<dyn JobStore>,
    publisher: Arc<Publisher>,
}

impl QueueService {
    /// A service counting in `store` and asking the broker through `publisher`'s connections.
    #[must_use]
    pub fn new(store: Arc<dyn JobStore>, publisher: Arc<Publisher>) -> Self {
        Self { store, publisher }
    }

    /// The overview as `caller` may see it; without RabbitMQ's numbers when it does not answer
    /// within 2 s.
    pub async fn overview(&self, caller: &Caller) -> Result<QueueOverview, StoreError> {
        let now = Utc::now();
        let counts = self
            .store
            .count_by_type(caller.tenant(), now - FINISHED_WINDOW)
            .await?;
        let mut by_type: BTreeMap<JobType, QueueStats> = BTreeMap::new();
        for count in counts {
            let stats = by_type
                .entry(count.job_type.clone())
                .or_insert_with(|| QueueStats {
                    job_type: count.job_type.to_string(),
                    ..QueueStats::default()
                });
            let slot = match count.status {
                JobStatus::Waiting => &mut stats.waiting,
                JobStatus::Scheduled => &mut stats.scheduled,
                JobStatus::Queued => &mut stats.queued,
                JobStatus::Running => &mut stats.running,
                JobStatus::Retrying => &mut stats.retrying,
                JobStatus::Succeeded => &mut stats.succeeded_last_hour,
                JobStatus::Failed => &mut stats.failed_last_hour,
                JobStatus::Cancelled => &mut stats.cancelled_last_hour,
            };
            *slot += count.count;
        }
        let topology = self.publisher.topology();
        let mut names: Vec<String> = by_type
            .keys()
            .flat_map(|t| topology.job_queues(t).map(|(_, queue)| queue))
            .collect();
        names.push(topology.dead_queue());
        let probed = tokio::time::timeout(PROBE_TIMEOUT, self.publisher.probe_queues(&names)).await;
        let probed = match probed {
            Ok(Ok(found)) => Some(found.into_iter().collect::<BTreeMap<_, _>>()),
            Ok(Err(error)) => {
                tracing::warn!(%error, "queue overview without RabbitMQ's numbers");
                None
            }
            Err(_) => {
                tracing::warn!("queue overview without RabbitMQ's numbers: no answer within 2 s");
                None
            }
        };
        let operator = caller.tenant().is_none();
        let mut queues = Vec::with_capacity(by_type.len());
        for (job_type, mut stats) in by_type {
            // Each worker consumes every level, so any level's consumers are the workers;
            // the messages waiting are the three levels' together.
            let levels: Vec<_> = topology
                .job_queues(&job_type)
                .iter()
                .filter_map(|(_, queue)| probed.as_ref()?.get(queue).copied())
                .collect();
            let found = !levels.is_empty();
            stats.workers = found.then(|| levels.iter().map(|q| q.consumers).max().unwrap_or(0));
            stats.messages_ready =
                (found && operator).then(|| levels.iter().map(|q| q.messages).sum());
            queues.push(stats);
        }
        let dead_letters = probed
            .as_ref()
            .and_then(|p| p.get(&topology.dead_queue()))
            .filter(|_| operator)
            .map(|q| q.messages);
        Ok(QueueOverview {
            queues,
            dead_letters,
            broker_answered: probed.is_some(),
            at: now,
        })
    }
}
