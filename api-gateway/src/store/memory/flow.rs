//! [`FlowStore`] in memory: one map of settings by type, under the store's lock (one gateway,
//! so a rate window's claim is this process's). Generations follow the clock, so after a
//! restart they are newer than those the workers kept (see `crate::flow`).

use async_trait::async_trait;
use chrono::Utc;
use warren_shared::JobType;

use super::MemoryStore;
use crate::{
    model::{FlowUpdate, QueueSettings},
    store::{FlowStore, StoreError},
};

#[async_trait]
impl FlowStore for MemoryStore {
    async fn flow_settings(&self) -> Result<Vec<QueueSettings>, StoreError> {
        Ok(self.inner().flow.values().cloned().collect())
    }

    async fn update_flow(
        &self,
        job_type: &JobType,
        update: &FlowUpdate,
    ) -> Result<QueueSettings, StoreError> {
        let mut inner = self.inner();
        // From the clock (in ms) at least: a restarted gateway's generations are newer than
        // the ones workers kept from before the restart.
        let clock = u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0);
        let newest = inner.flow.values().map(|s| s.generation).max().unwrap_or(0);
        let generation = (newest + 1).max(clock);
        let current = inner
            .flow
            .get(job_type)
            .cloned()
            .unwrap_or_else(|| QueueSettings::unset(job_type.clone()));
        let updated = current.with(update, generation);
        inner.flow.insert(job_type.clone(), updated.clone());
        Ok(updated)
    }

    async fn mark_slots(&self, job_type: &JobType, generation: u64) -> Result<(), StoreError> {
        if let Some(settings) = self.inner().flow.get_mut(job_type)
            && settings.slots_epoch == generation
        {
            settings.slots_generation = Some(generation);
        }
        Ok(())
    }

    async fn claim_rate_window(
        &self,
        job_type: &JobType,
        generation: u64,
        window: u64,
    ) -> Result<bool, StoreError> {
        let mut inner = self.inner();
        let Some(settings) = inner.flow.get_mut(job_type) else {
            return Ok(false);
        };
        let due = settings.generation == generation
            && settings.refilled_window.is_none_or(|done| done < window);
        if due {
            settings.refilled_window = Some(window);
        }
        Ok(due)
    }
}
