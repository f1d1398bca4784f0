//! The memory store's side of webhook deliveries: claiming due callbacks with a lease and
//! recording attempts, under the store's one lock.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use warren_shared::JobId;

use super::{Inner, MemoryStore};
use crate::{
    model::{Callback, Delivery, Job},
    store::{CallbackStore, StoreError},
};

#[async_trait]
impl CallbackStore for MemoryStore {
    async fn claim_callbacks(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        Ok(self.inner().claim_callbacks(now, lease_until, limit))
    }

    async fn record_delivery(
        &self,
        id: JobId,
        delivery: &Delivery,
        callback: &Callback,
    ) -> Result<(), StoreError> {
        self.inner().record_delivery(id, delivery, callback);
        Ok(())
    }

    async fn deliveries(&self, id: JobId) -> Result<Vec<Delivery>, StoreError> {
        Ok(self
            .inner()
            .deliveries
            .get(&id)
            .cloned()
            .unwrap_or_default())
    }

    async fn count_pending_callbacks(&self) -> Result<u64, StoreError> {
        Ok(u64::try_from(self.inner().callbacks_due.len()).unwrap_or(u64::MAX))
    }
}

impl Inner {
    /// Up to `limit` records whose callback is due at `now`, oldest due first, each with its
    /// due time moved to `lease_until`.
    fn claim_callbacks(
        &mut self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Vec<Job> {
        let mut due: Vec<(DateTime<Utc>, JobId)> = self
            .callbacks_due
            .iter()
            .filter_map(|id| {
                let at = self.jobs.get(id)?.callback.as_ref()?.due_at()?;
                Some((at, *id))
            })
            .filter(|(at, _)| *at <= now)
            .collect();
        due.sort_unstable();
        due.into_iter()
            .take(limit)
            .filter_map(|(_, id)| {
                self.with_job(id, |job| {
                    if let Some(callback) = job.callback.as_mut() {
                        callback.next_attempt_at = Some(lease_until);
                    }
                    job.clone()
                })
            })
            .collect()
    }

    /// Keeps `delivery` and, if job `id` still owes that delivery, its new `callback` state.
    fn record_delivery(&mut self, id: JobId, delivery: &Delivery, callback: &Callback) {
        if !self.jobs.contains_key(&id) {
            return;
        }
        self.deliveries
            .entry(id)
            .or_default()
            .push(delivery.clone());
        self.with_job(id, |job| {
            let same = job
                .callback
                .as_ref()
                .is_some_and(|owed| owed.webhook_id == callback.webhook_id);
            if same {
                job.callback = Some(Box::new(callback.clone()));
            }
        });
    }
}
