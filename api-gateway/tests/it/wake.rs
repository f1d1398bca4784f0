//! Waiters never miss a finish: a long poll and an SSE stream that start after the gateway has
//! received a job's terminal event, but before the store has applied it, answer as soon as the
//! store has it, not at their deadline.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::{sync::Semaphore, time::Instant};
use uuid::Uuid;
use warren_gateway::{
    auth::keys::ApiKey,
    schedules::{Fired, Schedule},
    store::{
        Applied, Cancelled, FireRound, Inserted, Job, JobStore, KeyClaim, ListQuery, MemoryStore,
        Redriven, StoreError, TypeCount,
    },
    webhooks::{Callback, Delivery},
};
use warren_shared::{JobError, JobEvent, JobId, JobStatus, V1};

use crate::helpers::{DEADLINE, spawn_app_on};

/// A memory store whose application of a terminal event stops until the test lets it go, so
/// the test can act while the event is received but not yet in the store.
struct SlowApply {
    inner: MemoryStore,
    /// Gets a permit when an apply of a terminal event has started.
    started: Semaphore,
    /// Gives the stopped apply a permit to go on.
    release: Semaphore,
}

#[async_trait]
impl JobStore for SlowApply {
    async fn insert(&self, job: Job, key: Option<KeyClaim>) -> Result<Inserted, StoreError> {
        self.inner.insert(job, key).await
    }
    async fn insert_capped(
        &self,
        job: Job,
        key: Option<KeyClaim>,
        max_in_flight: u32,
    ) -> Result<Inserted, StoreError> {
        self.inner.insert_capped(job, key, max_in_flight).await
    }
    async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        self.inner.get(id).await
    }
    async fn count_by_type(
        &self,
        tenant: Option<&str>,
        finished_since: DateTime<Utc>,
    ) -> Result<Vec<TypeCount>, StoreError> {
        self.inner.count_by_type(tenant, finished_since).await
    }
    async fn insert_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        self.inner.insert_api_key(key).await
    }
    async fn api_key(&self, id: Uuid) -> Result<Option<ApiKey>, StoreError> {
        self.inner.api_key(id).await
    }
    async fn api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        self.inner.api_keys().await
    }
    async fn revoke_api_key(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<Option<ApiKey>, StoreError> {
        self.inner.revoke_api_key(id, at).await
    }
    async fn get_many(&self, ids: &[JobId]) -> Result<Vec<Job>, StoreError> {
        self.inner.get_many(ids).await
    }
    async fn apply_events(&self, events: &[JobEvent]) -> Result<Vec<Applied>, StoreError> {
        if events.iter().any(|e| e.status.is_terminal()) {
            self.started.add_permits(1);
            self.release.acquire().await.unwrap().forget();
        }
        self.inner.apply_events(events).await
    }
    async fn confirm_published(&self, id: JobId, now: bool) -> Result<(), StoreError> {
        self.inner.confirm_published(id, now).await
    }
    async fn fail_unpublished(
        &self,
        id: JobId,
        error: JobError,
        key: Option<&str>,
    ) -> Result<Option<Job>, StoreError> {
        self.inner.fail_unpublished(id, error, key).await
    }
    async fn claim_unpublished(
        &self,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        self.inner.claim_unpublished(before, now, limit).await
    }
    async fn release_due(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Job>, StoreError> {
        self.inner.release_due(now, limit).await
    }
    async fn count_scheduled(&self) -> Result<u64, StoreError> {
        self.inner.count_scheduled().await
    }
    async fn claim_callbacks(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        self.inner.claim_callbacks(now, lease_until, limit).await
    }
    async fn record_delivery(
        &self,
        id: JobId,
        delivery: &Delivery,
        callback: &Callback,
    ) -> Result<(), StoreError> {
        self.inner.record_delivery(id, delivery, callback).await
    }
    async fn deliveries(&self, id: JobId) -> Result<Vec<Delivery>, StoreError> {
        self.inner.deliveries(id).await
    }
    async fn count_pending_callbacks(&self) -> Result<u64, StoreError> {
        self.inner.count_pending_callbacks().await
    }
    async fn insert_schedule(&self, schedule: Schedule) -> Result<(), StoreError> {
        self.inner.insert_schedule(schedule).await
    }
    async fn get_schedule(&self, id: Uuid) -> Result<Option<Schedule>, StoreError> {
        self.inner.get_schedule(id).await
    }
    async fn list_schedules(&self) -> Result<Vec<Schedule>, StoreError> {
        self.inner.list_schedules().await
    }
    async fn update_schedule(
        &self,
        id: Uuid,
        change: &(dyn for<'s> Fn(&'s mut Schedule) + Send + Sync),
    ) -> Result<Option<Schedule>, StoreError> {
        self.inner.update_schedule(id, change).await
    }
    async fn delete_schedule(&self, id: Uuid) -> Result<bool, StoreError> {
        self.inner.delete_schedule(id).await
    }
    async fn fire_due(
        &self,
        now: DateTime<Utc>,
        plan: &(dyn for<'s> Fn(&'s Schedule) -> Fired + Send + Sync),
    ) -> Result<FireRound, StoreError> {
        self.inner.fire_due(now, plan).await
    }
    async fn cancel(&self, id: JobId) -> Result<Cancelled, StoreError> {
        self.inner.cancel(id).await
    }
    async fn redrive(&self, id: JobId, cap: Option<(Uuid, u32)>) -> Result<Redriven, StoreError> {
        self.inner.redrive(id, cap).await
    }
    async fn list(&self, query: &ListQuery) -> Result<Vec<Job>, StoreError> {
        self.inner.list(query).await
    }
    async fn forget_key(&self, key: &str) -> Result<(), StoreError> {
        self.inner.forget_key(key).await
    }
    async fn purge(
        &self,
        jobs_before: DateTime<Utc>,
        keys_before: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.inner.purge(jobs_before, keys_before).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

#[tokio::test]
async fn a_long_poll_and_a_stream_begun_before_the_store_has_the_outcome_answer_at_once() {
    let store = Arc::new(SlowApply {
        inner: MemoryStore::new(),
        started: Semaphore::new(0),
        release: Semaphore::new(0),
    });
    let mut app = spawn_app_on(store.clone(), |_| {}).await;
    app.declare_idle_queue("held").await;
    let id = app.submit_ok(&json!({"type": "held"})).await;
    app.publish_event(&JobEvent {
        v: V1,
        id: id.parse().unwrap(),
        job_type: "held".parse().unwrap(),
        status: JobStatus::Succeeded,
        attempt: 1,
        seq: 1,
        progress: None,
        result: Some(json!("done")),
        error: None,
        next_attempt_at: None,
        worker: "test".into(),
        at: Utc::now(),
    })
    .await;
    // The gateway has the event and is applying it; the store does not have it yet.
    let started = tokio::time::timeout(DEADLINE, store.started.acquire()).await;
    started.unwrap().unwrap().forget();

    let get = |path: String| tokio::spawn(app.client.get(format!("{}{path}", app.address)).send());
    let poll = get(format!("/v1/jobs/{id}?wait=30"));
    let stream = get(format!("/v1/jobs/{id}/events"));
    let job_id = id.parse().unwrap();
    let waiting = Instant::now();
    while app.watchers.subscribers(job_id) < 2 {
        assert!(
            waiting.elapsed() < DEADLINE,
            "the poll and stream never subscribed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    store.release.add_permits(1);
    let released = Instant::now();

    let job: Value = poll.await.unwrap().unwrap().json().await.unwrap();
    assert_eq!(job["status"], "succeeded");
    let body = tokio::time::timeout(DEADLINE, stream.await.unwrap().unwrap().text())
        .await
        .unwrap()
        .unwrap();
    assert!(body.contains("event: succeeded"), "{body}");
    assert!(
        released.elapsed() < Duration::from_secs(1),
        "waiters answered {:?} after the store had the outcome",
        released.elapsed()
    );
    app.stop().await;
}
