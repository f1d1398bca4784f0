//! The job service: the rules behind every route that changes or waits on a job, apart from
//! HTTP so they can be driven without a socket.
//!
//! - **Submit** ([`JobService::submit`]): a [`JobSpec`] is validated (fields, then the
//!   `callback_url`'s host), accepted, and optionally waited on, in one call.
//! - **Accept** ([`JobService::accept`]): the record, its idempotency key and its outbox mark
//!   are stored together; the job is published persistent, mandatory and confirmed; the mark is
//!   cleared. `Ok` means stored and confirmed: the `202` rule. A gateway that dies in between
//!   leaves the mark, and some gateway's [`relay`] publishes the job later. A replayed key
//!   whose job is still marked publishes it again itself, so a retry never waits on a
//!   request that died.
//! - **Later**: a job with `run_at`/`delay_ms` is stored `scheduled` and not published; the
//!   [`scheduler`] in every gateway releases it when due.
//! - **Cancel**, **re-drive** and **waiting** ([`JobService::wait_until_terminal`]).
//! - **Tenancy**: every method takes the [`Caller`]; a job of a tenant the caller does not
//!   see is [`JobsError::NotFound`], and idempotency keys are scoped to the tenant.
//! - Waiters are woken by whoever changes a job in this process, and by the store's change
//!   feed ([`wake`]) for changes made by other gateways.

pub mod idempotency;
pub mod relay;
pub mod scheduler;
pub mod wake;

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;
use warren_shared::{
    ControlAction, ControlMessage, ErrorKind, JobError, JobId, JobStatus, JobType, V1,
    amqp::PublishError, trace::TraceContext,
};

use crate::{
    auth::Caller,
    fault,
    metrics::GatewayMetrics,
    model::{Delivery, Job, JobSpec, SpecError, SpecLimits},
    publisher::Publisher,
    store::{
        CallbackStore, Cancelled, Inserted, JobStore, KeyClaim, KeyStore, ListQuery, OutboxStore,
        Redriven, StoreError, Stores,
    },
    watch::{Snapshot, Subscription, Watchers},
    webhooks::CallbackPolicy,
};

/// Why the service refused or could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    /// No job has this id.
    #[error("no job has id {0}")]
    NotFound(JobId),
    /// The job is already terminal, so it cannot be cancelled.
    #[error("job {id} has already finished ({status}); there is nothing to cancel")]
    AlreadyFinished {
        /// The job.
        id: JobId,
        /// Its terminal status.
        status: JobStatus,
    },
    /// Only failed jobs can be re-driven.
    #[error("job {id} is {status}; only failed jobs can be retried")]
    NotFailed {
        /// The job.
        id: JobId,
        /// Its status.
        status: JobStatus,
    },
    /// A workflow's step cannot be re-driven alone (its dependents were cancelled).
    #[error(
        "job {id} is step {step:?} of workflow {workflow}; a failed step is not retried alone \
         (the steps after it were cancelled): submit the workflow again"
    )]
    StepOfWorkflow {
        /// The job.
        id: JobId,
        /// Its step's name.
        step: String,
        /// Its workflow.
        workflow: uuid::Uuid,
    },
    /// The submitting API key already has its cap of jobs in flight.
    #[error(
        "this API key already has {0} jobs in flight (scheduled, queued, running or retrying), \
         its cap; submit again when one has finished"
    )]
    AtCapacity(u32),
    /// The `Idempotency-Key` was used with another request.
    #[error("this Idempotency-Key was used with a different request body")]
    KeyReused,
    /// No queue is bound for the job type (RabbitMQ returned the message).
    #[error("no worker handles job type {0}")]
    UnknownJobType(JobType),
    /// RabbitMQ did not confirm the message (nack, timeout, no connection).
    #[error("RabbitMQ did not confirm the job: {0}")]
    NotConfirmed(#[source] PublishError),
    /// A field of the job spec is invalid.
    #[error(transparent)]
    Invalid(#[from] SpecError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What accepting found.
#[derive(Debug)]
pub enum Accepted {
    /// A new job, stored and confirmed by RabbitMQ.
    New(Job),
    /// The job an earlier request with the same key and body created.
    Replayed(Job),
}

/// What to do with a record whose publish RabbitMQ refused or did not confirm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IfRefused {
    /// A new submit: the client gets an error and no id, so nothing may be left (no record,
    /// no key, no webhook, no count).
    Withdraw,
    /// A job the client already knows: it fails, saying why.
    Fail,
}

/// What a submit gave.
#[derive(Debug)]
pub struct Submitted {
    /// The job: as accepted, or as it stood when the wait ended.
    pub job: Job,
    /// Whether an earlier request with the same `Idempotency-Key` and body made it.
    pub replayed: bool,
}

/// Accepts, cancels, re-drives, lists and waits on jobs.
#[derive(Clone)]
pub struct JobService {
    store: Arc<dyn JobStore>,
    outbox: Arc<dyn OutboxStore>,
    keys: Arc<dyn KeyStore>,
    callbacks: Arc<dyn CallbackStore>,
    publisher: Arc<Publisher>,
    watchers: Arc<Watchers>,
    metrics: Arc<GatewayMetrics>,
    limits: Arc<SpecLimits>,
    policy: CallbackPolicy,
}

impl JobService {
    /// A service over these parts: specs are checked against `limits`, callback URLs against
    /// `policy`.
    #[must_use]
    pub fn new(
        stores: &Stores,
        publisher: Arc<Publisher>,
        watchers: Arc<Watchers>,
        metrics: Arc<GatewayMetrics>,
        limits: Arc<SpecLimits>,
        policy: CallbackPolicy,
    ) -> Self {
        Self {
            store: stores.jobs.clone(),
            outbox: stores.outbox.clone(),
            keys: stores.keys.clone(),
            callbacks: stores.callbacks.clone(),
            publisher,
            watchers,
            metrics,
            limits,
            policy,
        }
    }

    /// The limits job specs are checked against.
    #[must_use]
    pub fn limits(&self) -> &SpecLimits {
        &self.limits
    }

    /// What a `callback_url` may be.
    #[must_use]
    pub fn callback_policy(&self) -> CallbackPolicy {
        self.policy
    }

    /// Succeeds when the job store answers (for `/readyz`).
    pub async fn ping_store(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }

    /// One page of jobs (the query carries the caller's tenant), newest first.
    pub async fn list(&self, query: &ListQuery) -> Result<Vec<Job>, JobsError> {
        Ok(self.store.list(query).await?)
    }

    /// Every delivery attempt of job `id`'s callback, oldest first.
    pub async fn deliveries(&self, caller: &Caller, id: JobId) -> Result<Vec<Delivery>, JobsError> {
        self.get(caller, id).await?;
        Ok(self.callbacks.deliveries(id).await?)
    }

    /// The Prometheus series.
    #[must_use]
    pub fn metrics(&self) -> &GatewayMetrics {
        &self.metrics
    }

    /// The registry of waiters.
    #[must_use]
    pub fn watchers(&self) -> &Arc<Watchers> {
        &self.watchers
    }

    /// The job with `id`, if `caller` sees it (another tenant's job does not exist for it).
    pub async fn get(&self, caller: &Caller, id: JobId) -> Result<Job, JobsError> {
        self.store
            .get(id)
            .await?
            .filter(|job| caller.sees(&job.tenant))
            .ok_or(JobsError::NotFound(id))
    }

    /// Submits `spec` for `caller`: validates it (fields, then the `callback_url`'s host),
    /// accepts it as [`JobService::accept`] does, and, with a non-zero `wait`, waits up to that
    /// long for it to finish (subscribed before it is published, so not even the fastest
    /// outcome is missed). A replay waits on the earlier job.
    pub async fn submit(
        &self,
        spec: JobSpec,
        key: Option<KeyClaim>,
        caller: &Caller,
        trace: &TraceContext,
        wait: Duration,
    ) -> Result<Submitted, JobsError> {
        let valid = spec.validate(&self.limits)?;
        self.policy.check(valid.callback_url.as_deref()).await?;
        let job = valid.into_job();
        let span = tracing::Span::current();
        span.record("job_id", tracing::field::display(job.id));
        span.record("job_type", job.job_type.as_str());
        let subscription = (!wait.is_zero()).then(|| self.watchers.subscribe(job.id));
        let (job, replayed) = match self.accept(job, key, caller, trace).await? {
            Accepted::New(job) => (job, false),
            Accepted::Replayed(job) => (job, true),
        };
        let Some(subscription) = subscription else {
            return Ok(Submitted { job, replayed });
        };
        // A new job is known as it was stored, and the subscription (taken before that) hears
        // every change since: no need to read it back. A replay's job may have changed since
        // it was read: subscribe, then read it again.
        let (subscription, job) = if replayed {
            let subscription = self.watchers.subscribe(job.id);
            let job = self.get(caller, job.id).await?;
            (subscription, job)
        } else {
            (subscription, job)
        };
        let job = self
            .wait_until_terminal(subscription, caller, job, wait)
            .await?;
        Ok(Submitted { job, replayed })
    }

    /// Accepts `job` for `caller` (a new `queued` record with its outbox mark set, in the
    /// caller's tenant, within its key's cap on jobs in flight), or finds the job an earlier
    /// request of the same tenant with the same key and body made.
    pub async fn accept(
        &self,
        mut job: Job,
        key: Option<KeyClaim>,
        caller: &Caller,
        trace: &TraceContext,
    ) -> Result<Accepted, JobsError> {
        caller.tenant_of_new_jobs().clone_into(&mut job.tenant);
        job.key_id = caller.key().map(|key| key.id);
        let cap = caller.key().and_then(|key| key.max_in_flight);
        let key = key.map(|claim| idempotency::scoped(claim, &job.tenant));
        let key_name = key.as_ref().map(|claim| claim.key.clone());
        let mut forgot_stale_key = false;
        loop {
            let inserted = match cap {
                Some(max) => {
                    self.store
                        .insert_capped(job.clone(), key.clone(), max)
                        .await?
                }
                None => self.store.insert(job.clone(), key.clone()).await?,
            };
            match inserted {
                Inserted::AtCapacity => return Err(JobsError::AtCapacity(cap.unwrap_or(0))),
                Inserted::New if job.status == JobStatus::Scheduled => {
                    tracing::info!(job_id = %job.id, run_at = ?job.run_at, "job scheduled");
                    return Ok(Accepted::New(job));
                }
                Inserted::New => {
                    fault::pause_point("after_store").await;
                    let key = key_name.as_deref();
                    let job = self
                        .publish_as(job, key, trace, IfRefused::Withdraw)
                        .await?;
                    return Ok(Accepted::New(job));
                }
                Inserted::KeyMismatch => return Err(JobsError::KeyReused),
                Inserted::Replay(id) => {
                    if let Some(earlier) = self.store.get(id).await? {
                        let earlier = self
                            .settle_replay(earlier, key_name.as_deref(), trace)
                            .await?;
                        return Ok(Accepted::Replayed(earlier));
                    }
                    // Retention deleted the job while its key lived on: accept afresh, once.
                    let key_name = key_name.as_deref().unwrap_or_default();
                    if forgot_stale_key {
                        return Err(StoreError::unavailable(
                            "the idempotency key keeps naming a deleted job",
                        )
                        .into());
                    }
                    self.store.forget_key(key_name).await?;
                    forgot_stale_key = true;
                }
            }
        }
    }

    /// A replay's job, published again first if its publish was never confirmed (the first
    /// request may have died between storing and publishing): the `202` rule holds for
    /// replays too. A duplicate message is harmless: terminal is final.
    async fn settle_replay(
        &self,
        job: Job,
        key: Option<&str>,
        trace: &TraceContext,
    ) -> Result<Job, JobsError> {
        if job.unconfirmed_since.is_none() || job.status != JobStatus::Queued {
            return Ok(job);
        }
        tracing::info!(job_id = %job.id, "replayed job not confirmed yet; publishing it");
        self.publish_as(job, key, trace, IfRefused::Withdraw).await
    }

    /// Publishes the job's current attempt and clears its outbox mark once RabbitMQ
    /// confirmed (at once when the job has an idempotency `key`, so a replay never finds the
    /// mark of a job already confirmed). A refusal marks the record failed (and forgets `key`,
    /// so the client may try again) and says why. For a job a client already knows (relayed,
    /// released, fired, re-driven).
    pub async fn publish(
        &self,
        job: Job,
        key: Option<&str>,
        trace: &TraceContext,
    ) -> Result<Job, JobsError> {
        self.publish_as(job, key, trace, IfRefused::Fail).await
    }

    /// [`JobService::publish`], doing `if_refused` with the record when RabbitMQ refuses the
    /// message or does not confirm it.
    async fn publish_as(
        &self,
        job: Job,
        key: Option<&str>,
        trace: &TraceContext,
        if_refused: IfRefused,
    ) -> Result<Job, JobsError> {
        let published = self.publisher.publish_job(&job.message(), trace).await;
        let error = match published {
            Ok(()) => {
                tracing::info!(job_id = %job.id, attempt = job.attempt, "job published");
                self.metrics.job_submitted(&job);
                if let Err(error) = self.outbox.confirm_published(job.id, key.is_some()).await {
                    // The relay will publish it once more: a duplicate, never a loss.
                    tracing::warn!(%error, job_id = %job.id, "cannot clear the outbox mark");
                }
                return Ok(job);
            }
            Err(error) => error,
        };
        let kind = match &error {
            PublishError::Unroutable { .. } => ErrorKind::Unroutable,
            _ => ErrorKind::PublishFailed,
        };
        tracing::warn!(%error, job_id = %job.id, "job not accepted by RabbitMQ");
        match if_refused {
            IfRefused::Withdraw => match self.outbox.withdraw(job.id, key).await {
                Ok(true) => tracing::info!(job_id = %job.id, "refused submit withdrawn"),
                Ok(false) => {}
                // The mark stays: the relay publishes the job later (or fails it, unroutable).
                Err(store_error) => {
                    tracing::error!(%store_error, job_id = %job.id, "cannot withdraw the refused job");
                }
            },
            IfRefused::Fail => {
                let reason = JobError::new(kind, error.to_string());
                match self.outbox.fail_unpublished(job.id, reason, key).await {
                    Ok(Some(failed)) => self.watchers.publish(failed),
                    Ok(None) => {}
                    // The mark stays: the relay publishes the job later.
                    Err(store_error) => {
                        tracing::error!(%store_error, job_id = %job.id, "cannot mark the unpublished job failed");
                    }
                }
            }
        }
        Err(match error {
            PublishError::Unroutable { .. } => JobsError::UnknownJobType(job.job_type),
            other => JobsError::NotConfirmed(other),
        })
    }

    /// Marks a job cancelled in the store (final at once, whatever happens next), then tells
    /// the workers (a queued job is skipped, a running one stopped) and wakes this gateway's
    /// waiters; other gateways hear it from the store's change feed.
    pub async fn cancel(&self, caller: &Caller, id: JobId) -> Result<Job, JobsError> {
        self.get(caller, id).await?;
        let job = match self.store.cancel(id).await? {
            Cancelled::Now(job) => *job,
            Cancelled::AlreadyTerminal(job) => {
                return Err(JobsError::AlreadyFinished {
                    id,
                    status: job.status,
                });
            }
            Cancelled::UnknownJob => return Err(JobsError::NotFound(id)),
        };
        tracing::info!(job_id = %id, "job cancelled");
        let control = ControlMessage {
            v: V1,
            action: ControlAction::Cancel,
            id,
        };
        if let Err(error) = self.publisher.publish_control(&control).await {
            // The status is final already; a worker that runs the job anyway has its outcome
            // ignored.
            tracing::warn!(%error, job_id = %id, "cancel not broadcast to workers");
        }
        self.watchers.publish(job.clone());
        Ok(job)
    }

    /// Re-drives a `failed` job as a new attempt series and publishes it.
    pub async fn redrive(
        &self,
        caller: &Caller,
        id: JobId,
        trace: &TraceContext,
    ) -> Result<Job, JobsError> {
        let failed = self.get(caller, id).await?;
        if let Some(workflow) = failed.workflow_id {
            return Err(JobsError::StepOfWorkflow {
                id,
                step: failed.step.unwrap_or_default(),
                workflow,
            });
        }
        // The job counts against the key that submitted it, whoever re-drives it.
        let cap = match failed.key_id {
            Some(key) => self
                .keys
                .api_key(key)
                .await?
                .and_then(|record| Some((key, record.max_in_flight?))),
            None => None,
        };
        let job = match self.store.redrive(id, cap).await? {
            Redriven::Now(job) => *job,
            Redriven::AtCapacity => {
                return Err(JobsError::AtCapacity(cap.map_or(0, |(_, max)| max)));
            }
            Redriven::NotFailed(job) => {
                return Err(JobsError::NotFailed {
                    id,
                    status: job.status,
                });
            }
            Redriven::UnknownJob => return Err(JobsError::NotFound(id)),
        };
        self.watchers.publish(job.clone());
        self.publish(job, None, trace).await
    }

    /// Waits until job `id` (which `caller` must see) is terminal or `wait` has passed; returns
    /// the job's latest state either way.
    pub async fn wait_for(
        &self,
        caller: &Caller,
        id: JobId,
        wait: Duration,
    ) -> Result<Job, JobsError> {
        let subscription = self.watchers.subscribe(id);
        let job = self.get(caller, id).await?;
        self.wait_until_terminal(subscription, caller, job, wait)
            .await
    }

    /// Waits until `job` (which `caller` sees, as it was when `subscription` was taken or
    /// later) is terminal or `wait` has passed, woken by `subscription`; returns the job's
    /// latest state either way.
    async fn wait_until_terminal(
        &self,
        mut subscription: Subscription,
        caller: &Caller,
        mut job: Job,
        wait: Duration,
    ) -> Result<Job, JobsError> {
        let deadline = Instant::now() + wait;
        let id = job.id;
        while !job.status.is_terminal() {
            match tokio::time::timeout_at(deadline, subscription.next()).await {
                Ok(Snapshot::Job(snapshot)) if snapshot.version > job.version => {
                    job = Job::clone(&snapshot);
                }
                Ok(Snapshot::Job(_)) => {}
                Ok(Snapshot::Lagged) => job = self.get(caller, id).await?,
                Err(_deadline) => return self.get(caller, id).await,
            }
        }
        Ok(job)
    }
}
