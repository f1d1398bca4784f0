//! A deadline on every store call (`WARREN_STORE_TIMEOUT`), for any backend: a database that
//! stalls (a partition, a hung server) turns into a quick `StoreError::TimedOut` (a `503` with
//! `Retry-After`, a `/readyz` failure, a backoff in the background loops) instead of requests
//! and memory piling up while nobody is told to retry. Each call is timed by operation, as
//! long as its caller waited (`warren_store_call_duration_seconds`), and each miss counted
//! (`warren_store_timeouts_total`).
//!
//! Only the *wait* for a call is cut: a call runs in its caller's task (no hand-off to another
//! task on the way to the database and back), and one that is abandoned, at its deadline or
//! because its caller was dropped (a client that went away), goes on to its end in a task of
//! its own ([`Detached`]; bounded by the connection pool's size). So no connection is dropped
//! half-way through a transaction begun by hand, and a write that commits after its deadline
//! obeys the outbox and idempotency rules as any commit does. A call that panics fails as
//! `unavailable`, as it would in a task of its own, and takes nothing else down.
//! The two calls that take a borrowed closure (`update_schedule`, `fire_due`) cannot be moved
//! into a task; they are cut in place, and their transactions roll back on drop.
//!
//! **Claims are never abandoned.** A call that claims rows for its caller (due webhooks, with a
//! lease; unconfirmed jobs for the relay; due scheduled jobs; a workflow's released steps) has
//! no client waiting on it, and its result is work only this caller will do: a claim abandoned
//! at its deadline would still commit, leaving its rows leased to nobody (a webhook retry then
//! waited out its whole lease, 90 s by default, instead of going as soon as the database
//! answered). Those calls count and log the missed deadline, then wait for the result.

use std::{
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use uuid::Uuid;
use warren_shared::{
    JobError, JobEvent, JobId, JobType,
    metrics::{Counter, Family, Histogram, OperationLabels, PathLabels},
};

use super::{
    Applied, CallbackStore, Cancelled, ChangeFeed, FireRound, FlowStore, Inserted, JobStore,
    KeyClaim, KeyStore, ListQuery, OutboxStore, Redriven, ScheduleStore, Settled, StepStatuses,
    StoreError, Stores, TypeCount, WorkflowInserted, WorkflowQuery, WorkflowStore,
};
use crate::model::{
    ApiKey, Callback, Delivery, Fired, FlowUpdate, Job, QueueSettings, Schedule, Workflow,
};

/// The deadline every store call gets, and the series that watch the calls.
#[derive(Clone)]
pub struct CallWatch {
    /// `WARREN_STORE_TIMEOUT`.
    pub deadline: Duration,
    /// Calls that missed the deadline, by operation.
    pub timeouts: Family<OperationLabels, Counter>,
    /// How long each call kept its caller waiting, by operation.
    pub durations: Family<OperationLabels, Histogram>,
}

/// One concern's store behind a deadline.
pub(super) struct Bounded<S: ?Sized> {
    inner: Arc<S>,
    watch: CallWatch,
}

impl Stores {
    /// These stores with `watch`'s deadline on every call, each call timed and each miss
    /// counted by operation. Stores that never leave the process are returned as they are.
    #[must_use]
    pub fn with_deadline(self, watch: &CallWatch) -> Self {
        if !self.jobs.is_remote() {
            return self;
        }
        Self {
            jobs: watch.bound(self.jobs),
            outbox: watch.bound(self.outbox),
            keys: watch.bound(self.keys),
            schedules: watch.bound(self.schedules),
            callbacks: watch.bound(self.callbacks),
            workflows: watch.bound(self.workflows),
            flow: watch.bound(self.flow),
        }
    }
}

impl CallWatch {
    /// `inner` behind this deadline and these series.
    fn bound<S: ?Sized>(&self, inner: Arc<S>) -> Arc<Bounded<S>> {
        Arc::new(Bounded {
            inner,
            watch: self.clone(),
        })
    }
}

impl<S: ?Sized> Bounded<S> {
    fn timed_out(&self, operation: &'static str) -> StoreError {
        self.watch
            .timeouts
            .get_or_create(&OperationLabels { operation })
            .inc();
        tracing::warn!(operation, deadline = ?self.watch.deadline, "the database did not answer in time (WARREN_STORE_TIMEOUT)");
        StoreError::TimedOut {
            operation,
            after: self.watch.deadline,
        }
    }

    /// Records how long `operation`'s caller waited, from `started`.
    fn waited(&self, operation: &'static str, started: Instant) {
        self.watch
            .durations
            .get_or_create(&OperationLabels { operation })
            .observe(started.elapsed().as_secs_f64());
    }

    /// Waits for `call` until the deadline; past it, `call` goes on in the background.
    async fn run<T: Send + 'static>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let mut call = Detached::new(operation, call);
        let answered = match tokio::time::timeout(self.watch.deadline, &mut call).await {
            Ok(result) => result,
            // Dropping `call` hands the rest of it to a task of its own.
            Err(_elapsed) => Err(self.timed_out(operation)),
        };
        self.waited(operation, started);
        answered
    }

    /// Waits for `call` to the end: past the deadline it is counted and logged as a timeout,
    /// but its result is still taken (for claims: see the module docs).
    async fn run_claim<T: Send + 'static>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let mut call = Detached::new(operation, call);
        let answered = match tokio::time::timeout(self.watch.deadline, &mut call).await {
            Ok(result) => result,
            Err(_elapsed) => {
                let _counted = self.timed_out(operation);
                tracing::warn!(
                    operation,
                    "waiting for the claim to finish: its rows are this gateway's to work on"
                );
                call.await
            }
        };
        self.waited(operation, started);
        answered
    }

    /// Waits for `call` in place until the deadline (for calls that borrow).
    async fn run_here<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let answered = tokio::time::timeout(self.watch.deadline, call)
            .await
            .unwrap_or_else(|_elapsed| Err(self.timed_out(operation)));
        self.waited(operation, started);
        answered
    }
}

/// A store call in its caller's task that, dropped before it ends, finishes in a task of its
/// own: abandoning a call (at its deadline, or with its caller) never cuts it half-way.
struct Detached<T: Send + 'static> {
    /// The call while it runs; `None` once it has answered.
    call: Option<StoreCall<T>>,
}

/// A store call, boxed so that it can move into a task of its own half-way.
type StoreCall<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

impl<T: Send + 'static> Detached<T> {
    /// `call`, whose panic answers as the store being unavailable for `operation`.
    fn new(
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Self {
        let call = AssertUnwindSafe(call).catch_unwind().map(move |answered| {
            answered.unwrap_or_else(|_panic| {
                tracing::error!(operation, "the store call panicked");
                Err(StoreError::unavailable(format!(
                    "the store call {operation} panicked"
                )))
            })
        });
        Self {
            call: Some(Box::pin(call)),
        }
    }
}

impl<T: Send + 'static> Future for Detached<T> {
    type Output = Result<T, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(call) = self.call.as_mut() else {
            return Poll::Ready(Err(StoreError::unavailable(
                "a store call was awaited after it answered",
            )));
        };
        let answered = std::task::ready!(call.as_mut().poll(cx));
        self.call = None;
        Poll::Ready(answered)
    }
}

impl<T: Send + 'static> Drop for Detached<T> {
    fn drop(&mut self) {
        if let Some(call) = self.call.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(call);
        }
    }
}

#[async_trait]
impl JobStore for Bounded<dyn JobStore> {
    async fn insert(&self, job: Job, key: Option<KeyClaim>) -> Result<Inserted, StoreError> {
        let inner = self.inner.clone();
        self.run("insert", async move { inner.insert(job, key).await })
            .await
    }

    async fn insert_capped(
        &self,
        job: Job,
        key: Option<KeyClaim>,
        max_in_flight: u32,
    ) -> Result<Inserted, StoreError> {
        let inner = self.inner.clone();
        self.run("insert_capped", async move {
            inner.insert_capped(job, key, max_in_flight).await
        })
        .await
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        let inner = self.inner.clone();
        self.run("get", async move { inner.get(id).await }).await
    }

    async fn get_many(&self, ids: &[JobId]) -> Result<Vec<Job>, StoreError> {
        let (inner, ids) = (self.inner.clone(), ids.to_vec());
        self.run("get_many", async move { inner.get_many(&ids).await })
            .await
    }

    async fn apply_events(&self, events: &[JobEvent]) -> Result<Vec<Applied>, StoreError> {
        let (inner, events) = (self.inner.clone(), events.to_vec());
        self.run(
            "apply_events",
            async move { inner.apply_events(&events).await },
        )
        .await
    }

    async fn cancel(&self, id: JobId) -> Result<Cancelled, StoreError> {
        let inner = self.inner.clone();
        self.run("cancel", async move { inner.cancel(id).await })
            .await
    }

    async fn redrive(&self, id: JobId, cap: Option<(Uuid, u32)>) -> Result<Redriven, StoreError> {
        let inner = self.inner.clone();
        self.run("redrive", async move { inner.redrive(id, cap).await })
            .await
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<Job>, StoreError> {
        let (inner, query) = (self.inner.clone(), query.clone());
        self.run("list", async move { inner.list(&query).await })
            .await
    }

    async fn count_by_type(
        &self,
        tenant: Option<&str>,
        finished_since: DateTime<Utc>,
    ) -> Result<Vec<TypeCount>, StoreError> {
        let (inner, tenant) = (self.inner.clone(), tenant.map(str::to_owned));
        self.run("count_by_type", async move {
            inner.count_by_type(tenant.as_deref(), finished_since).await
        })
        .await
    }

    async fn forget_key(&self, key: &str) -> Result<(), StoreError> {
        let (inner, key) = (self.inner.clone(), key.to_owned());
        self.run("forget_key", async move { inner.forget_key(&key).await })
            .await
    }

    async fn purge(
        &self,
        jobs_before: DateTime<Utc>,
        keys_before: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let inner = self.inner.clone();
        self.run("purge", async move {
            inner.purge(jobs_before, keys_before).await
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        self.run("ping", async move { inner.ping().await }).await
    }

    fn is_remote(&self) -> bool {
        self.inner.is_remote()
    }

    async fn changes(&self) -> Result<Option<ChangeFeed>, StoreError> {
        let inner = self.inner.clone();
        self.run("changes", async move { inner.changes().await })
            .await
    }

    fn count_apply_paths(&self, paths: &Family<PathLabels, Counter>) {
        self.inner.count_apply_paths(paths);
    }
}

#[async_trait]
impl OutboxStore for Bounded<dyn OutboxStore> {
    async fn confirm_published(&self, id: JobId, now: bool) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        self.run("confirm_published", async move {
            inner.confirm_published(id, now).await
        })
        .await
    }

    async fn fail_unpublished(
        &self,
        id: JobId,
        error: JobError,
        key: Option<&str>,
    ) -> Result<Option<Job>, StoreError> {
        let (inner, key) = (self.inner.clone(), key.map(str::to_owned));
        self.run("fail_unpublished", async move {
            inner.fail_unpublished(id, error, key.as_deref()).await
        })
        .await
    }

    async fn withdraw(&self, id: JobId, key: Option<&str>) -> Result<bool, StoreError> {
        let (inner, key) = (self.inner.clone(), key.map(str::to_owned));
        self.run("withdraw", async move {
            inner.withdraw(id, key.as_deref()).await
        })
        .await
    }

    async fn claim_unpublished(
        &self,
        marked_before: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let inner = self.inner.clone();
        self.run_claim("claim_unpublished", async move {
            inner.claim_unpublished(marked_before, now, limit).await
        })
        .await
    }

    async fn release_due(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Job>, StoreError> {
        let inner = self.inner.clone();
        self.run_claim(
            "release_due",
            async move { inner.release_due(now, limit).await },
        )
        .await
    }

    async fn count_scheduled(&self) -> Result<u64, StoreError> {
        let inner = self.inner.clone();
        self.run(
            "count_scheduled",
            async move { inner.count_scheduled().await },
        )
        .await
    }
}

#[async_trait]
impl KeyStore for Bounded<dyn KeyStore> {
    async fn insert_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let (inner, key) = (self.inner.clone(), key.clone());
        self.run(
            "insert_api_key",
            async move { inner.insert_api_key(&key).await },
        )
        .await
    }

    async fn api_key(&self, id: Uuid) -> Result<Option<ApiKey>, StoreError> {
        let inner = self.inner.clone();
        self.run("api_key", async move { inner.api_key(id).await })
            .await
    }

    async fn api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let inner = self.inner.clone();
        self.run("api_keys", async move { inner.api_keys().await })
            .await
    }

    async fn revoke_api_key(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<Option<ApiKey>, StoreError> {
        let inner = self.inner.clone();
        self.run("revoke_api_key", async move {
            inner.revoke_api_key(id, at).await
        })
        .await
    }
}

#[async_trait]
impl ScheduleStore for Bounded<dyn ScheduleStore> {
    async fn insert_schedule(&self, schedule: Schedule) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        self.run("insert_schedule", async move {
            inner.insert_schedule(schedule).await
        })
        .await
    }

    async fn get_schedule(&self, id: Uuid) -> Result<Option<Schedule>, StoreError> {
        let inner = self.inner.clone();
        self.run("get_schedule", async move { inner.get_schedule(id).await })
            .await
    }

    async fn list_schedules(&self) -> Result<Vec<Schedule>, StoreError> {
        let inner = self.inner.clone();
        self.run(
            "list_schedules",
            async move { inner.list_schedules().await },
        )
        .await
    }

    async fn update_schedule(
        &self,
        id: Uuid,
        change: &(dyn for<'s> Fn(&'s mut Schedule) + Send + Sync),
    ) -> Result<Option<Schedule>, StoreError> {
        self.run_here("update_schedule", self.inner.update_schedule(id, change))
            .await
    }

    async fn delete_schedule(&self, id: Uuid) -> Result<bool, StoreError> {
        let inner = self.inner.clone();
        self.run(
            "delete_schedule",
            async move { inner.delete_schedule(id).await },
        )
        .await
    }

    async fn fire_due(
        &self,
        now: DateTime<Utc>,
        plan: &(dyn for<'s> Fn(&'s Schedule) -> Fired + Send + Sync),
    ) -> Result<FireRound, StoreError> {
        self.run_here("fire_due", self.inner.fire_due(now, plan))
            .await
    }
}

#[async_trait]
impl CallbackStore for Bounded<dyn CallbackStore> {
    async fn claim_callbacks(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let inner = self.inner.clone();
        self.run_claim("claim_callbacks", async move {
            inner.claim_callbacks(now, lease_until, limit).await
        })
        .await
    }

    async fn record_delivery(
        &self,
        id: JobId,
        delivery: &Delivery,
        callback: &Callback,
    ) -> Result<(), StoreError> {
        let (inner, delivery, callback) = (self.inner.clone(), delivery.clone(), callback.clone());
        self.run("record_delivery", async move {
            inner.record_delivery(id, &delivery, &callback).await
        })
        .await
    }

    async fn deliveries(&self, id: JobId) -> Result<Vec<Delivery>, StoreError> {
        let inner = self.inner.clone();
        self.run("deliveries", async move { inner.deliveries(id).await })
            .await
    }

    async fn count_pending_callbacks(&self) -> Result<u64, StoreError> {
        let inner = self.inner.clone();
        self.run("count_pending_callbacks", async move {
            inner.count_pending_callbacks().await
        })
        .await
    }
}

#[async_trait]
impl FlowStore for Bounded<dyn FlowStore> {
    async fn flow_settings(&self) -> Result<Vec<QueueSettings>, StoreError> {
        let inner = self.inner.clone();
        self.run("flow_settings", async move { inner.flow_settings().await })
            .await
    }

    async fn update_flow(
        &self,
        job_type: &JobType,
        update: &FlowUpdate,
    ) -> Result<QueueSettings, StoreError> {
        let (inner, job_type, update) = (self.inner.clone(), job_type.clone(), *update);
        self.run("update_flow", async move {
            inner.update_flow(&job_type, &update).await
        })
        .await
    }

    async fn mark_slots(&self, job_type: &JobType, generation: u64) -> Result<(), StoreError> {
        let (inner, job_type) = (self.inner.clone(), job_type.clone());
        self.run("mark_slots", async move {
            inner.mark_slots(&job_type, generation).await
        })
        .await
    }

    async fn claim_rate_window(
        &self,
        job_type: &JobType,
        generation: u64,
        window: u64,
    ) -> Result<bool, StoreError> {
        let (inner, job_type) = (self.inner.clone(), job_type.clone());
        self.run_claim("claim_rate_window", async move {
            inner.claim_rate_window(&job_type, generation, window).await
        })
        .await
    }
}

#[async_trait]
impl WorkflowStore for Bounded<dyn WorkflowStore> {
    async fn insert_workflow(
        &self,
        workflow: &Workflow,
        jobs: Vec<Job>,
        key: Option<KeyClaim>,
        max_in_flight: Option<u32>,
    ) -> Result<WorkflowInserted, StoreError> {
        let (inner, workflow) = (self.inner.clone(), workflow.clone());
        self.run("insert_workflow", async move {
            inner
                .insert_workflow(&workflow, jobs, key, max_in_flight)
                .await
        })
        .await
    }

    async fn get_workflow(&self, id: Uuid) -> Result<Option<(Workflow, StepStatuses)>, StoreError> {
        let inner = self.inner.clone();
        self.run("get_workflow", async move { inner.get_workflow(id).await })
            .await
    }

    async fn list_workflows(
        &self,
        query: &WorkflowQuery,
    ) -> Result<Vec<(Workflow, StepStatuses)>, StoreError> {
        let (inner, query) = (self.inner.clone(), query.clone());
        self.run("list_workflows", async move {
            inner.list_workflows(&query).await
        })
        .await
    }

    async fn settle_workflow(&self, id: Uuid) -> Result<Option<Settled>, StoreError> {
        let inner = self.inner.clone();
        self.run_claim(
            "settle_workflow",
            async move { inner.settle_workflow(id).await },
        )
        .await
    }

    async fn request_workflow_cancel(&self, id: Uuid) -> Result<Option<Workflow>, StoreError> {
        let inner = self.inner.clone();
        self.run("request_workflow_cancel", async move {
            inner.request_workflow_cancel(id).await
        })
        .await
    }

    async fn unsettled(&self, limit: usize) -> Result<Vec<Uuid>, StoreError> {
        let inner = self.inner.clone();
        self.run("unsettled", async move { inner.unsettled(limit).await })
            .await
    }

    async fn claim_workflow_callbacks(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(Workflow, StepStatuses)>, StoreError> {
        let inner = self.inner.clone();
        self.run_claim("claim_workflow_callbacks", async move {
            inner
                .claim_workflow_callbacks(now, lease_until, limit)
                .await
        })
        .await
    }

    async fn record_workflow_callback(
        &self,
        id: Uuid,
        callback: &Callback,
    ) -> Result<(), StoreError> {
        let (inner, callback) = (self.inner.clone(), callback.clone());
        self.run("record_workflow_callback", async move {
            inner.record_workflow_callback(id, &callback).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    //! The decorator's contract for claims, against a backend that answers after the deadline.

    use std::time::Duration;

    use super::*;

    /// Callbacks whose claim answers only after `delay`, with one job.
    struct SlowClaims {
        delay: Duration,
    }

    #[async_trait]
    impl CallbackStore for SlowClaims {
        async fn claim_callbacks(
            &self,
            _now: DateTime<Utc>,
            _lease_until: DateTime<Utc>,
            _limit: usize,
        ) -> Result<Vec<Job>, StoreError> {
            tokio::time::sleep(self.delay).await;
            let spec = crate::model::JobSpec::new("echo", &serde_json::json!({}));
            let limits = crate::model::SpecLimits {
                default_timeout_ms: 1_000,
                max_timeout_ms: 1_000,
                max_delay: Duration::from_secs(1),
            };
            let job = spec
                .validate(&limits)
                .map_err(|e| StoreError::unavailable(e.to_string()))?;
            Ok(vec![job.into_job()])
        }

        async fn record_delivery(
            &self,
            _id: JobId,
            _delivery: &Delivery,
            _callback: &Callback,
        ) -> Result<(), StoreError> {
            Ok(())
        }

        async fn deliveries(&self, _id: JobId) -> Result<Vec<Delivery>, StoreError> {
            Ok(Vec::new())
        }

        async fn count_pending_callbacks(&self) -> Result<u64, StoreError> {
            tokio::time::sleep(self.delay).await;
            Ok(0)
        }
    }

    fn bounded(delay: Duration) -> (Bounded<dyn CallbackStore>, CallWatch) {
        let watch = CallWatch {
            deadline: Duration::from_millis(20),
            timeouts: Family::default(),
            durations: warren_shared::metrics::duration_family(),
        };
        let inner: Arc<dyn CallbackStore> = Arc::new(SlowClaims { delay });
        let store = Bounded {
            inner,
            watch: watch.clone(),
        };
        (store, watch)
    }

    #[tokio::test]
    async fn a_claim_past_its_deadline_is_counted_but_its_rows_are_still_handed_over() {
        // A claim commits its lease whether or not anyone waits: abandoned, the leased
        // callbacks would wait out their whole lease (a webhook retry 90 s late).
        let (store, watch) = bounded(Duration::from_millis(100));
        let now = Utc::now();
        let claimed = store.claim_callbacks(now, now, 8).await;
        assert_eq!(claimed.map(|jobs| jobs.len()).ok(), Some(1));
        let labels = OperationLabels {
            operation: "claim_callbacks",
        };
        assert_eq!(
            watch.timeouts.get_or_create(&labels).get(),
            1,
            "the miss is counted"
        );
    }

    /// A call that answers once `release` fires, and says when it ended.
    async fn held_call(
        release: tokio::sync::oneshot::Receiver<()>,
        ended: tokio::sync::oneshot::Sender<()>,
    ) -> Result<(), StoreError> {
        let _released = release.await;
        let _told = ended.send(());
        Ok(())
    }

    /// Releases a [`held_call`] nobody waits for any more, and checks that it still ends.
    async fn assert_it_ends_once_released(
        release: tokio::sync::oneshot::Sender<()>,
        ended: tokio::sync::oneshot::Receiver<()>,
    ) {
        release.send(()).ok();
        tokio::time::timeout(Duration::from_secs(5), ended)
            .await
            .expect("the abandoned call went on to its end")
            .expect("the call ended rather than being dropped");
    }

    /// The calls of `operation` that `watch` timed, read as `/metrics` shows them.
    fn timed_calls(watch: &CallWatch, operation: &'static str) -> u64 {
        let mut registry = warren_shared::metrics::Registry::default();
        registry.register("store_call_duration_seconds", "", watch.durations.clone());
        let text = warren_shared::metrics::render(&registry);
        let series = format!("store_call_duration_seconds_count{{operation=\"{operation}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(series.as_str()))
            .and_then(|count| count.trim().parse().ok())
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn a_call_is_timed_under_its_operation() {
        let (store, watch) = bounded(Duration::ZERO);
        let answered = store.count_pending_callbacks().await;
        assert!(answered.is_ok(), "{answered:?}");
        assert_eq!(timed_calls(&watch, "count_pending_callbacks"), 1);
        assert_eq!(timed_calls(&watch, "claim_callbacks"), 0);
    }

    #[tokio::test]
    async fn a_call_whose_caller_goes_away_still_ends() {
        // A client that disconnects drops its request, and with it the store call: a
        // transaction begun by hand must not be cut half-way on its connection.
        let (release, released) = tokio::sync::oneshot::channel();
        let (end, ended) = tokio::sync::oneshot::channel();
        let mut call = Detached::new("insert", held_call(released, end));
        assert!(
            futures_util::poll!(&mut call).is_pending(),
            "the call waits for its release"
        );
        drop(call);
        assert_it_ends_once_released(release, ended).await;
    }

    #[tokio::test]
    async fn a_call_past_its_deadline_answers_timed_out_and_still_ends() {
        let (store, watch) = bounded(Duration::ZERO);
        let (release, released) = tokio::sync::oneshot::channel();
        let (end, ended) = tokio::sync::oneshot::channel();
        let answered = store.run("insert", held_call(released, end)).await;
        assert!(
            matches!(answered, Err(StoreError::TimedOut { .. })),
            "{answered:?}"
        );
        let labels = OperationLabels {
            operation: "insert",
        };
        assert_eq!(
            watch.timeouts.get_or_create(&labels).get(),
            1,
            "the miss is counted"
        );
        assert_eq!(
            timed_calls(&watch, "insert"),
            1,
            "the wait until the deadline is timed"
        );
        assert_it_ends_once_released(release, ended).await;
    }

    #[tokio::test]
    async fn a_call_that_panics_answers_unavailable() {
        let (store, _) = bounded(Duration::ZERO);
        let answered: Result<(), StoreError> =
            store.run("get", async { panic!("a bug in a store") }).await;
        assert!(
            matches!(&answered, Err(error) if error.to_string().contains("get panicked")),
            "{answered:?}"
        );
    }

    #[tokio::test]
    async fn a_read_past_its_deadline_is_cut() {
        let (store, _) = bounded(Duration::from_millis(100));
        let counted = store.count_pending_callbacks().await;
        assert!(
            matches!(counted, Err(StoreError::TimedOut { .. })),
            "{counted:?}"
        );
    }
}
