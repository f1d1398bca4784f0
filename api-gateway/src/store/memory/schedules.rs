//! The memory store's recurring schedules, and firing them (the job and the schedule's next
//! due time written under the one lock).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{MemoryStore, records::Marks};
use crate::{
    model::{Fired, Schedule},
    store::{FireRound, ScheduleStore, StoreError},
};

#[async_trait]
impl ScheduleStore for MemoryStore {
    async fn insert_schedule(&self, schedule: Schedule) -> Result<(), StoreError> {
        self.inner().schedules.insert(schedule.id, schedule);
        Ok(())
    }

    async fn get_schedule(&self, id: Uuid) -> Result<Option<Schedule>, StoreError> {
        Ok(self.inner().schedules.get(&id).cloned())
    }

    async fn list_schedules(&self) -> Result<Vec<Schedule>, StoreError> {
        let mut all: Vec<Schedule> = self.inner().schedules.values().cloned().collect();
        all.sort_by_key(|s| s.id);
        Ok(all)
    }

    async fn update_schedule(
        &self,
        id: Uuid,
        change: &(dyn for<'s> Fn(&'s mut Schedule) + Send + Sync),
    ) -> Result<Option<Schedule>, StoreError> {
        Ok(self.inner().schedules.get_mut(&id).map(|schedule| {
            change(schedule);
            schedule.clone()
        }))
    }

    async fn delete_schedule(&self, id: Uuid) -> Result<bool, StoreError> {
        Ok(self.inner().schedules.remove(&id).is_some())
    }

    async fn fire_due(
        &self,
        now: DateTime<Utc>,
        plan: &(dyn for<'s> Fn(&'s Schedule) -> Fired + Send + Sync),
    ) -> Result<FireRound, StoreError> {
        let mut inner = self.inner();
        let due: Vec<Uuid> = inner
            .schedules
            .values()
            .filter(|s| !s.paused && s.next_run_at.is_some_and(|at| at <= now))
            .map(|s| s.id)
            .take(64)
            .collect();
        let mut round = FireRound::default();
        for id in due {
            let Some(schedule) = inner.schedules.get(&id) else {
                continue;
            };
            let fired = plan(schedule);
            round.misfired += fired.misfired;
            inner.schedules.insert(id, fired.schedule);
            if let Some(job) = fired.job
                && !inner.jobs.contains_key(&job.id)
            {
                inner.index(job.id, Marks::of(&job));
                inner.jobs.insert(job.id, Box::new(job.clone()));
                round.jobs.push(job);
            }
        }
        Ok(round)
    }
}
