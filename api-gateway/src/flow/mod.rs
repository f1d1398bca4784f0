//! Flow control per job type: `GET`/`PATCH /v1/queues/{type}`, and the loop every gateway
//! runs to keep the workers' view and the tokens true (see [`warren_shared::flow`]).
//!
//! A change is stored first (under a new generation), then carried out on RabbitMQ: slot
//! tokens of a new `max_running` epoch are published (the old epoch's are dropped by the
//! workers when seen), and the snapshot every worker reads is published. A gateway that dies
//! in between leaves the change stored: every second each gateway publishes the snapshot
//! again, and a `max_running` whose tokens were not marked published within [`SLOTS_GRACE`]
//! is redone under a new epoch (so tokens a dead gateway may have half-published are
//! dropped). Every [`TICK`], the gateways refill the rate tokens of windows that began; the
//! store lets one gateway claim each window.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use serde::Serialize;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use warren_shared::{
    JobType, V1,
    flow::{FlowSnapshot, RateLimit, Token},
    message,
};

use crate::{
    auth::Caller,
    metrics::GatewayMetrics,
    model::{FlowChange, FlowUpdate, QueueSettings, SpecError},
    publisher::Publisher,
    queues::{QueueService, QueueStats},
    store::{FlowStore, StoreError},
};

/// How often the loop looks at rate windows.
const TICK: Duration = Duration::from_millis(50);
/// How often the snapshot is published again, the settings re-read and the gauges set.
const REFRESH: Duration = Duration::from_secs(1);
/// How long a `max_running` change may take to publish its tokens before a gateway redoes it.
const SLOTS_GRACE: chrono::Duration = chrono::Duration::seconds(5);

/// `GET /v1/queues/{type}`: the type's counts as in `GET /v1/queues`, and its settings.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QueueResource {
    /// The counts.
    #[serde(flatten)]
    pub stats: QueueStats,
    /// New starts are stopped.
    pub paused: bool,
    /// At most this many run at once across all workers (`null`: no limit).
    pub max_running: Option<u32>,
    /// At most `jobs` starts per `per_seconds` window across all workers (`null`: no limit).
    pub rate_limit: Option<RateLimit>,
}

/// Why a read or change was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// Settings hold for every tenant's jobs of the type.
    #[error(
        "a job type's settings hold for every tenant's jobs: only the operator (WARREN_ADMIN_KEY or a key without a tenant, with the admin right) changes them"
    )]
    Forbidden,
    /// A field is out of range.
    #[error(transparent)]
    Invalid(#[from] SpecError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The change is stored but RabbitMQ did not take it yet (a gateway finishes it).
    #[error(
        "the settings are stored, but RabbitMQ did not take them yet ({0}); every gateway retries within seconds"
    )]
    Broker(String),
}

/// Reads and changes settings, and keeps RabbitMQ in line with them.
#[derive(Clone)]
pub struct FlowService {
    store: Arc<dyn FlowStore>,
    publisher: Arc<Publisher>,
    queues: QueueService,
    metrics: Arc<GatewayMetrics>,
    /// The settings as last read (refreshed every second and after each change here).
    known: Arc<Mutex<Vec<QueueSettings>>>,
}

impl FlowService {
    /// A service over `store`, publishing through `publisher`.
    #[must_use]
    pub fn new(
        store: Arc<dyn FlowStore>,
        publisher: Arc<Publisher>,
        queues: QueueService,
        metrics: Arc<GatewayMetrics>,
    ) -> Self {
        Self {
            store,
            publisher,
            queues,
            metrics,
            known: Arc::default(),
        }
    }

    /// The type's counts and settings, as `caller` may see them.
    pub async fn get(
        &self,
        caller: &Caller,
        job_type: &JobType,
    ) -> Result<QueueResource, FlowError> {
        let settings = self
            .store
            .flow_settings()
            .await?
            .into_iter()
            .find(|s| &s.job_type == job_type)
            .unwrap_or_else(|| QueueSettings::unset(job_type.clone()));
        let overview = self.queues.overview(caller).await?;
        let stats = overview
            .queues
            .into_iter()
            .find(|q| q.job_type == job_type.as_str())
            .unwrap_or_else(|| QueueStats {
                job_type: job_type.to_string(),
                ..QueueStats::default()
            });
        Ok(QueueResource {
            stats,
            paused: settings.paused,
            max_running: settings.max_running,
            rate_limit: settings.rate_limit,
        })
    }

    /// Applies `change` to `job_type` for `caller` (the operator only), then carries it out.
    pub async fn update(
        &self,
        caller: &Caller,
        job_type: &JobType,
        change: FlowChange,
    ) -> Result<QueueResource, FlowError> {
        if caller.tenant().is_some() {
            return Err(FlowError::Forbidden);
        }
        let update = change.validate()?;
        let settings = self.store.update_flow(job_type, &update).await?;
        // The worst place to die: stored, not yet on RabbitMQ (no slot tokens of the new
        // epoch). Another gateway redoes it (see the module docs).
        crate::fault::pause_point("after_flow_stored").await;
        tracing::info!(job_type = %job_type, paused = settings.paused,
            max_running = ?settings.max_running, rate_limit = ?settings.rate_limit,
            generation = settings.generation, "flow settings changed");
        let carried = self.carry_out(&settings, &update).await;
        self.refresh().await;
        if let Err(error) = carried {
            tracing::warn!(%error, job_type = %job_type, "flow settings stored, not yet on RabbitMQ; retrying");
            return Err(FlowError::Broker(error));
        }
        self.get(caller, job_type).await
    }

    /// Publishes what a change needs on RabbitMQ: new slot tokens, a purged rate queue, and
    /// the snapshot.
    async fn carry_out(&self, settings: &QueueSettings, update: &FlowUpdate) -> Result<(), String> {
        let job_type = &settings.job_type;
        self.publisher
            .declare_flow(Some(job_type))
            .await
            .map_err(|e| e.to_string())?;
        if update.max_running.is_some() {
            self.publish_slots(settings).await?;
        }
        if update.rate_limit.is_some() {
            let queue = self.publisher.topology().rate_queue(job_type);
            self.publisher
                .purge(&queue)
                .await
                .map_err(|e| e.to_string())?;
        }
        self.publish_snapshot().await
    }

    /// Replaces the type's ready slot tokens with `max_running` tokens of its epoch, and marks
    /// them published.
    async fn publish_slots(&self, settings: &QueueSettings) -> Result<(), String> {
        let queue = self.publisher.topology().slots_queue(&settings.job_type);
        self.publisher
            .purge(&queue)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(slots) = settings.max_running {
            let token = message::encode(&Token {
                generation: settings.slots_epoch,
                window: None,
            });
            let tokens = vec![token; slots as usize];
            self.publisher
                .publish_to_queue(&queue, &tokens)
                .await
                .map_err(|e| e.to_string())?;
        }
        self.store
            .mark_slots(&settings.job_type, settings.slots_epoch)
            .await
            .map_err(|e| e.to_string())
    }

    /// Publishes every type's settings to `<ns>.flow`.
    async fn publish_snapshot(&self) -> Result<(), String> {
        let settings = self
            .store
            .flow_settings()
            .await
            .map_err(|e| e.to_string())?;
        let snapshot = FlowSnapshot {
            v: V1,
            version: settings.iter().map(|s| s.generation).max().unwrap_or(0),
            types: settings
                .iter()
                .map(|s| (s.job_type.to_string(), s.for_workers()))
                .collect(),
        };
        if snapshot.types.is_empty() {
            return Ok(());
        }
        self.publisher
            .declare_flow(None)
            .await
            .map_err(|e| e.to_string())?;
        let queue = self.publisher.topology().flow_queue();
        self.publisher
            .publish_to_queue(&queue, &[message::encode(&snapshot)])
            .await
            .map_err(|e| e.to_string())
    }

    /// Re-reads the settings into [`Self::known`] and the gauges.
    async fn refresh(&self) {
        match self.store.flow_settings().await {
            Ok(settings) => {
                self.metrics.flow_settings(&settings);
                *self.known.lock().await = settings;
            }
            Err(error) => tracing::warn!(%error, "cannot read the flow settings"),
        }
    }

    /// Every second: the snapshot again, and `max_running` changes whose tokens a gateway did
    /// not finish publishing are redone under a new epoch.
    async fn maintain(&self) {
        self.refresh().await;
        let known = self.known.lock().await.clone();
        if known.is_empty() {
            return;
        }
        if let Err(error) = self.publish_snapshot().await {
            tracing::warn!(%error, "cannot publish the flow snapshot; retrying");
        }
        let stale = Utc::now() - SLOTS_GRACE;
        for settings in known {
            let unfinished = settings.slots_generation != Some(settings.slots_epoch)
                && settings.max_running.is_some()
                && settings.updated_at < stale;
            if !unfinished {
                continue;
            }
            tracing::warn!(job_type = %settings.job_type, epoch = settings.slots_epoch,
                "slot tokens were not published (a gateway died mid-change?); publishing a new epoch");
            let redo = FlowUpdate {
                max_running: Some(settings.max_running),
                ..FlowUpdate::default()
            };
            match self.store.update_flow(&settings.job_type, &redo).await {
                Ok(redone) => {
                    if let Err(error) = self.carry_out(&redone, &redo).await {
                        tracing::warn!(%error, "cannot publish slot tokens; retrying");
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot renew the slot epoch; retrying"),
            }
        }
    }

    /// Refills the rate tokens of every type whose window began, if this gateway claims it.
    async fn refill_rates(&self) {
        let now = Utc::now();
        let due: Vec<(JobType, u64, RateLimit, u64)> = {
            let mut known = self.known.lock().await;
            known
                .iter_mut()
                .filter_map(|settings| {
                    let rate = settings.rate_limit?;
                    let window = rate.window_of(now);
                    if settings.refilled_window.is_some_and(|done| done >= window) {
                        return None;
                    }
                    settings.refilled_window = Some(window);
                    Some((settings.job_type.clone(), settings.generation, rate, window))
                })
                .collect()
        };
        for (job_type, generation, rate, window) in due {
            match self
                .store
                .claim_rate_window(&job_type, generation, window)
                .await
            {
                Ok(true) => {
                    if let Err(error) = self.publish_rate(&job_type, rate, window).await {
                        tracing::warn!(%error, job_type = %job_type,
                            "cannot refill the rate tokens; this window gets fewer starts");
                    }
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "cannot claim a rate window"),
            }
        }
    }

    async fn publish_rate(
        &self,
        job_type: &JobType,
        rate: RateLimit,
        window: u64,
    ) -> Result<(), String> {
        self.publisher
            .declare_flow(Some(job_type))
            .await
            .map_err(|e| e.to_string())?;
        let queue = self.publisher.topology().rate_queue(job_type);
        self.publisher
            .purge(&queue)
            .await
            .map_err(|e| e.to_string())?;
        let token = message::encode(&Token {
            generation: 0,
            window: Some(window),
        });
        self.publisher
            .publish_to_queue(&queue, &vec![token; rate.jobs as usize])
            .await
            .map_err(|e| e.to_string())
    }

    /// A store without settings (the memory store after a restart, a new schema) takes the
    /// ones the workers follow, from the snapshot RabbitMQ keeps: what `GET` shows is then what
    /// the workers do, and the next snapshot (newer generations) is one they take.
    async fn adopt_retained(&self) {
        match self.store.flow_settings().await {
            Ok(settings) if settings.is_empty() => {}
            _ => return,
        }
        let Ok(Some(snapshot)) = self.publisher.peek_flow().await else {
            return;
        };
        for (name, flow) in snapshot.types {
            let Ok(job_type) = JobType::parse(name) else {
                continue;
            };
            let update = FlowUpdate {
                paused: Some(flow.paused),
                max_running: Some(flow.max_running),
                rate_limit: Some(flow.rate_limit),
            };
            match self.store.update_flow(&job_type, &update).await {
                Ok(settings) => {
                    tracing::info!(job_type = %job_type, "flow settings taken from the workers' snapshot");
                    if let Err(error) = self.carry_out(&settings, &update).await {
                        tracing::warn!(%error, "cannot publish adopted flow settings; retrying");
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot adopt the workers' flow settings"),
            }
        }
    }

    /// The loop every gateway runs until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        self.adopt_retained().await;
        let mut refresh = tokio::time::interval(REFRESH);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = refresh.tick() => self.maintain().await,
                _ = tick.tick() => self.refill_rates().await,
            }
        }
    }
}
