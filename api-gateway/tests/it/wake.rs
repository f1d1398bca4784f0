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
    model::Job,
    store::{
        Applied, Cancelled, Inserted, JobStore, KeyClaim, ListQuery, MemoryStore, Redriven,
        StoreError, Stores, TypeCount,
    },
};
use warren_shared::{JobEvent, JobId, JobStatus, V1};

use crate::helpers::{DEADLINE, spawn_app_on};

/// A memory job store whose application of a terminal event stops until the test lets it go,
/// so the test can act while the event is received but not yet in the store. (Only the job
/// store is wrapped; the other concerns use the same memory backend directly.)
struct SlowApply {
    inner: Arc<MemoryStore>,
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
    let memory = Arc::new(MemoryStore::new());
    let store = Arc::new(SlowApply {
        inner: memory.clone(),
        started: Semaphore::new(0),
        release: Semaphore::new(0),
    });
    let stores = Stores {
        jobs: store.clone(),
        ..Stores::from(memory)
    };
    let mut app = spawn_app_on(stores, |_| {}).await;
    app.declare_idle_queue("held").await;
    let id = app.submit_ok(&json!({"type": "held"})).await;
    app.publish_event(&JobEvent {
        traceparent: None,
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
