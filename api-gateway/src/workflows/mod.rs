//! The workflow service: the rules behind `/v1/workflows`, apart from HTTP.
//!
//! - **Submit** ([`WorkflowService::submit`]): the spec is validated (every step as a job
//!   spec, the dependency graph, each step's type has a queue), then the workflow, one job per
//!   step and the idempotency key are stored in one transaction: steps without dependencies
//!   `queued` with their outbox mark, the others `waiting`. The first steps are then
//!   published; one RabbitMQ did not confirm stays marked and the relay publishes it.
//! - **Settle** ([`WorkflowService::settle`]): after a step finishes, the store applies the
//!   settle rule in one transaction (releasing, with their parents' results and an outbox
//!   mark, the steps whose dependencies all succeeded; cancelling those that can never run);
//!   this service then publishes the released steps and wakes waiters. The events consumer
//!   settles after each batch; the [`sweeper`] settles whatever a gateway that died left owed.
//! - **Cancel**: the workflow is marked cancelled first (nothing is released after that),
//!   then every unfinished step is cancelled as a job would be.
//! - **Reading**: one workflow, a long poll, a list; tenants see only their own.

pub mod sweeper;

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;

use tokio::time::Instant;
use uuid::Uuid;
use warren_shared::{JobStatus, trace::TraceContext};

use crate::{
    auth::Caller,
    jobs::{JobService, JobsError, idempotency},
    metrics::GatewayMetrics,
    model::{Job, Workflow, WorkflowError, WorkflowSpec, WorkflowView},
    publisher::Publisher,
    store::{
        KeyClaim, StepStatuses, StoreError, Stores, WorkflowInserted, WorkflowQuery, WorkflowStore,
    },
    watch::Watchers,
};

/// Steps published at once (confirms in flight together) when a submit or a settle has many.
const PUBLISHES_IN_FLIGHT: usize = 64;

/// Why the service refused or could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowsError {
    /// No workflow has this id (for this caller).
    #[error("no workflow has id {0}")]
    NotFound(Uuid),
    /// The workflow has already ended.
    #[error("workflow {id} has already finished ({status}); there is nothing to cancel")]
    AlreadyFinished {
        /// The workflow.
        id: Uuid,
        /// Its terminal status.
        status: crate::model::WorkflowStatus,
    },
    /// The spec is invalid; the field says where.
    #[error(transparent)]
    Invalid(#[from] WorkflowError),
    /// The `Idempotency-Key` was used with another request.
    #[error("this Idempotency-Key was used with a different request body")]
    KeyReused,
    /// The submitting API key cannot take this many more jobs in flight.
    #[error(
        "this API key may have {max} jobs in flight (waiting, scheduled, queued, running or \
         retrying), and this workflow's {steps} steps would pass that; submit it when fewer \
         are in flight, or split it"
    )]
    AtCapacity {
        /// The key's cap.
        max: u32,
        /// The workflow's steps.
        steps: usize,
    },
    /// RabbitMQ could not be asked which job types have queues.
    #[error("RabbitMQ is unreachable, so the steps' job types cannot be checked: {0}")]
    BrokerUnavailable(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a submit gave.
#[derive(Debug)]
pub struct Submitted {
    /// The workflow as it stands after its first steps were published.
    pub workflow: WorkflowView,
    /// Whether an earlier request with the same key and body made it.
    pub replayed: bool,
    /// Whether every first step was confirmed by RabbitMQ (if not, the relay publishes the
    /// rest: the answer is `202` rather than `201`).
    pub all_published: bool,
}

/// Submits, settles, cancels, reads and waits on workflows.
#[derive(Clone)]
pub struct WorkflowService {
    store: Arc<dyn WorkflowStore>,
    jobs: JobService,
    publisher: Arc<Publisher>,
    watchers: Arc<Watchers>,
    metrics: Arc<GatewayMetrics>,
}

impl WorkflowService {
    /// A service over `stores`, publishing and cancelling steps through `jobs`.
    #[must_use]
    pub fn new(
        stores: &Stores,
        jobs: JobService,
        publisher: Arc<Publisher>,
        metrics: Arc<GatewayMetrics>,
    ) -> Self {
        Self {
            store: stores.workflows.clone(),
            watchers: jobs.watchers().clone(),
            jobs,
            publisher,
            metrics,
        }
    }

    /// Validates and accepts `spec` for `caller`, then publishes its first steps.
    pub async fn submit(
        &self,
        spec: WorkflowSpec,
        key: Option<KeyClaim>,
        caller: &Caller,
        trace: &TraceContext,
    ) -> Result<Submitted, WorkflowsError> {
        let valid = spec.validate(self.jobs.limits())?;
        if let Err(error) = self
            .jobs
            .callback_policy()
            .check(valid.callback_url.as_deref())
            .await
        {
            return Err(WorkflowError {
                field: "callback_url".into(),
                message: error.message,
            }
            .into());
        }
        self.check_types(&valid.steps).await?;
        let tenant = caller.tenant_of_new_jobs();
        let key_id = caller.key().map(|key| key.id);
        let cap = caller.key().and_then(|key| key.max_in_flight);
        let (workflow, jobs) = valid.into_records(tenant, key_id);
        let span = tracing::Span::current();
        span.record("workflow_id", tracing::field::display(workflow.id));
        // Scoped to the tenant as a job's key is, and apart from jobs' keys: "workflow " and a
        // space, which no key contains.
        let key = key.map(|claim| {
            let scoped = idempotency::scoped(claim, tenant);
            KeyClaim {
                key: format!("workflow {}", scoped.key),
                ..scoped
            }
        });
        let steps = jobs.len();
        let first: Vec<_> = jobs
            .iter()
            .filter(|job| job.status == JobStatus::Queued)
            .cloned()
            .collect();
        match self
            .store
            .insert_workflow(&workflow, jobs, key.clone(), cap)
            .await?
        {
            WorkflowInserted::New => {}
            WorkflowInserted::Replay(earlier) => {
                let workflow = self.get(caller, earlier).await?;
                return Ok(Submitted {
                    workflow,
                    replayed: true,
                    all_published: true,
                });
            }
            WorkflowInserted::KeyMismatch => return Err(WorkflowsError::KeyReused),
            WorkflowInserted::AtCapacity => {
                return Err(WorkflowsError::AtCapacity {
                    max: cap.unwrap_or(0),
                    steps,
                });
            }
        }
        tracing::info!(workflow_id = %workflow.id, steps, first = first.len(), "workflow accepted");
        self.metrics.workflow_submitted(steps);
        let (all_published, any_failed) = self.publish_all(workflow.id, first, trace).await;
        if any_failed {
            self.settle(workflow.id, trace, "submit").await;
        }
        Ok(Submitted {
            workflow: self.get(caller, workflow.id).await?,
            replayed: false,
            all_published,
        })
    }

    /// Refuses a step whose job type no queue is declared for (no worker ever started for
    /// it), naming the step, as a job submit would be refused.
    async fn check_types(
        &self,
        steps: &[crate::model::workflow::ValidStep],
    ) -> Result<(), WorkflowsError> {
        let topology = self.publisher.topology();
        let mut names: Vec<String> = steps
            .iter()
            .map(|step| topology.priority_queue(&step.job.job_type, step.job.priority))
            .collect();
        names.sort_unstable();
        names.dedup();
        let found = self
            .publisher
            .probe_queues(&names)
            .await
            .map_err(|error| WorkflowsError::BrokerUnavailable(error.to_string()))?;
        for (i, step) in steps.iter().enumerate() {
            let queue = topology.priority_queue(&step.job.job_type, step.job.priority);
            if !found.iter().any(|(name, _)| *name == queue) {
                return Err(WorkflowError {
                    field: format!("steps[{i}].type"),
                    message: format!(
                        "no worker handles job type {} (no queue {queue} is declared): start a worker for it or fix the type",
                        step.job.job_type
                    ),
                }
                .into());
            }
        }
        Ok(())
    }

    /// Settles workflow `id` (see the module docs), publishes the steps it released and
    /// wakes waiters. Errors are logged: the workflow stays owed a settle and the
    /// [`sweeper`] comes back to it.
    pub async fn settle(&self, id: Uuid, trace: &TraceContext, cause: &'static str) {
        self.metrics.workflow_settled(cause);
        let settled = match self.store.settle_workflow(id).await {
            Ok(Some(settled)) => settled,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, workflow_id = %id, "cannot settle a workflow now; the sweeper retries it");
                return;
            }
        };
        for job in settled.cancelled {
            tracing::info!(workflow_id = %id, job_id = %job.id, step = ?job.step, "step cancelled: it can never run");
            self.watchers.publish(job);
        }
        for job in &settled.released {
            tracing::info!(workflow_id = %id, job_id = %job.id, step = ?job.step, "step released");
            self.watchers.publish(job.clone());
        }
        self.publish_all(id, settled.released, trace).await;
        if settled.finished {
            let workflow = &settled.workflow;
            tracing::info!(workflow_id = %id, status = %workflow.status, "workflow finished");
            self.metrics.workflow_finished(workflow.status);
            if workflow.callback.is_some() {
                self.watchers.callback_armed();
            }
        }
        self.watchers.publish_workflow(id);
    }

    /// Publishes steps of workflow `id` with confirms in flight together (a batch's first steps
    /// must not wait one round trip after another). Returns whether every one was confirmed,
    /// and whether any failed for good. An unconfirmed step keeps its outbox mark (the relay
    /// publishes it); one refused for good is failed, and the next settle cancels its
    /// dependents.
    async fn publish_all(&self, id: Uuid, steps: Vec<Job>, trace: &TraceContext) -> (bool, bool) {
        let (mut all_confirmed, mut any_failed) = (true, false);
        let mut published = futures_util::stream::iter(steps)
            .map(|job| self.jobs.publish(job, None, trace))
            .buffer_unordered(PUBLISHES_IN_FLIGHT);
        while let Some(outcome) = published.next().await {
            match outcome {
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, workflow_id = %id, "a step was not published now");
                    if matches!(error, JobsError::NotConfirmed(_)) {
                        all_confirmed = false;
                    } else {
                        any_failed = true;
                    }
                }
            }
        }
        (all_confirmed, any_failed)
    }

    /// Settles `workflows` (each once), after some of their steps finished; the steps it
    /// releases continue the trace given with the workflow (that of the step's outcome).
    pub async fn settle_after(&self, workflows: impl IntoIterator<Item = (Uuid, TraceContext)>) {
        let mut settles: Vec<(Uuid, TraceContext)> = workflows.into_iter().collect();
        settles.sort_unstable_by_key(|(id, _)| *id);
        settles.dedup_by_key(|(id, _)| *id);
        for (id, trace) in settles {
            self.settle(id, &trace, "after_step").await;
        }
    }

    /// The workflow with `id` if `caller` sees it.
    async fn record(
        &self,
        caller: &Caller,
        id: Uuid,
    ) -> Result<(Workflow, StepStatuses), WorkflowsError> {
        self.store
            .get_workflow(id)
            .await?
            .filter(|(workflow, _)| caller.sees(&workflow.tenant))
            .ok_or(WorkflowsError::NotFound(id))
    }

    /// The workflow resource.
    pub async fn get(&self, caller: &Caller, id: Uuid) -> Result<WorkflowView, WorkflowsError> {
        let (workflow, statuses) = self.record(caller, id).await?;
        Ok(workflow.view(&statuses))
    }

    /// Waits up to `wait` for the workflow to end; its latest state either way.
    pub async fn wait_for(
        &self,
        caller: &Caller,
        id: Uuid,
        wait: Duration,
    ) -> Result<WorkflowView, WorkflowsError> {
        let deadline = Instant::now() + wait;
        let mut subscription = self.watchers.subscribe_workflow(id);
        loop {
            let view = self.get(caller, id).await?;
            if view.status.is_terminal() {
                return Ok(view);
            }
            if tokio::time::timeout_at(deadline, subscription.changed())
                .await
                .is_err()
            {
                return self.get(caller, id).await;
            }
        }
    }

    /// The registry of waiters (shared with the job service).
    #[must_use]
    pub fn watchers(&self) -> &Arc<Watchers> {
        &self.watchers
    }

    /// A subscription to workflow `id`'s changes (for event streams): subscribe, then read.
    #[must_use]
    pub fn subscribe(&self, id: Uuid) -> crate::watch::WorkflowSubscription {
        self.watchers.subscribe_workflow(id)
    }

    /// One page of workflows, newest first.
    pub async fn list(&self, query: &WorkflowQuery) -> Result<Vec<WorkflowView>, WorkflowsError> {
        Ok(self
            .store
            .list_workflows(query)
            .await?
            .into_iter()
            .map(|(workflow, statuses)| workflow.view(&statuses))
            .collect())
    }

    /// Cancels every step of the workflow that has not finished: first marks the workflow
    /// cancelled (so no step is released after this), then cancels each unfinished step's job
    /// (stopping running ones), then settles.
    pub async fn cancel(&self, caller: &Caller, id: Uuid) -> Result<WorkflowView, WorkflowsError> {
        let (workflow, _) = self.record(caller, id).await?;
        if workflow.status.is_terminal() {
            return Err(WorkflowsError::AlreadyFinished {
                id,
                status: workflow.status,
            });
        }
        let Some(workflow) = self.store.request_workflow_cancel(id).await? else {
            return Err(WorkflowsError::NotFound(id));
        };
        // Read after the mark: every step released before it shows as released now.
        let (_, statuses) = self.record(caller, id).await?;
        for step in &workflow.steps {
            let unfinished = statuses
                .get(&step.job_id)
                .is_some_and(|status| !status.is_terminal() && *status != JobStatus::Waiting);
            if !unfinished {
                continue;
            }
            match self.jobs.cancel(caller, step.job_id).await {
                Ok(_) | Err(JobsError::AlreadyFinished { .. }) => {}
                Err(error) => {
                    tracing::warn!(%error, workflow_id = %id, job_id = %step.job_id, "cannot cancel a step");
                }
            }
        }
        tracing::info!(workflow_id = %id, "workflow cancelled");
        self.settle(id, &TraceContext::new_root(), "cancel").await;
        self.get(caller, id).await
    }

    /// Settles up to `limit` workflows owed a settle; how many there were.
    pub async fn sweep(&self, limit: usize) -> Result<usize, StoreError> {
        let owed = self.store.unsettled(limit).await?;
        for &id in &owed {
            tracing::info!(workflow_id = %id, "settling a workflow a gateway left owed");
            self.settle(id, &TraceContext::new_root(), "swept").await;
        }
        Ok(owed.len())
    }
}
