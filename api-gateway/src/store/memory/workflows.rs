//! The memory store's workflows: the record with its step jobs and key stored together, and
//! the settle, all under the store's one lock (so a settle always finds every step it plans
//! to change).

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;
use warren_shared::{JobId, JobStatus};

use super::{Inner, MemoryStore, records::Key};
use crate::{
    model::{Callback, Job, RawJson, Workflow, workflow::plan},
    store::{
        KeyClaim, Settled, StepStatuses, StoreError, WorkflowInserted, WorkflowQuery,
        WorkflowStore, transition,
    },
};

/// A workflow and its settle bookkeeping: `marks` counts its steps that finished, `settled`
/// the count the last settle saw, `marked_at` when `marks` last moved.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) workflow: Workflow,
    marks: u64,
    settled: u64,
    marked_at: DateTime<Utc>,
}

/// How long a workflow is owed a settle before the sweeper takes it (as the PostgreSQL store:
/// the settle right after a step's outcome comes first).
const SWEEP_AFTER: chrono::Duration = chrono::Duration::seconds(2);

impl Inner {
    /// Marks workflow `id` owed a settle (one of its steps finished).
    pub(super) fn mark_workflow(&mut self, id: Uuid) {
        if let Some(entry) = self.workflows.get_mut(&id) {
            entry.marks += 1;
            entry.marked_at = Utc::now();
        }
    }

    fn statuses(&self, workflow: &Workflow) -> StepStatuses {
        workflow
            .steps
            .iter()
            .filter_map(|step| self.jobs.get(&step.job_id).map(|job| (job.id, job.status)))
            .collect()
    }
}

#[async_trait]
impl WorkflowStore for MemoryStore {
    async fn insert_workflow(
        &self,
        workflow: &Workflow,
        jobs: Vec<Job>,
        claim: Option<KeyClaim>,
        max_in_flight: Option<u32>,
    ) -> Result<WorkflowInserted, StoreError> {
        let mut inner = self.inner();
        if let Some(claim) = &claim
            && let Some(existing) = inner.keys.get(&claim.key)
        {
            return Ok(if existing.request_hash == claim.request_hash {
                WorkflowInserted::Replay(existing.job.as_uuid())
            } else {
                WorkflowInserted::KeyMismatch
            });
        }
        if let (Some(max), Some(key)) = (max_in_flight, workflow.key_id) {
            let max = usize::try_from(max).unwrap_or(usize::MAX);
            if inner.in_flight_of(key).saturating_add(jobs.len()) > max {
                return Ok(WorkflowInserted::AtCapacity);
            }
        }
        if let Some(job) = jobs.iter().find(|job| inner.jobs.contains_key(&job.id)) {
            return Err(StoreError::Duplicate(job.id));
        }
        if let Some(claim) = claim {
            let key = Key {
                request_hash: claim.request_hash,
                job: JobId::from(workflow.id),
                created_at: Utc::now(),
            };
            inner.keys.insert(claim.key, key);
        }
        for job in jobs {
            inner.insert(job, None)?;
        }
        let entry = Entry {
            workflow: workflow.clone(),
            marks: 0,
            settled: 0,
            marked_at: workflow.created_at,
        };
        inner.workflows.insert(workflow.id, entry);
        Ok(WorkflowInserted::New)
    }

    async fn get_workflow(&self, id: Uuid) -> Result<Option<(Workflow, StepStatuses)>, StoreError> {
        let inner = self.inner();
        Ok(inner.workflows.get(&id).map(|entry| {
            let statuses = inner.statuses(&entry.workflow);
            (entry.workflow.clone(), statuses)
        }))
    }

    async fn list_workflows(
        &self,
        query: &WorkflowQuery,
    ) -> Result<Vec<(Workflow, StepStatuses)>, StoreError> {
        let inner = self.inner();
        let upper = query
            .before
            .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        Ok(inner
            .workflows
            .range((std::ops::Bound::Unbounded, upper))
            .rev()
            .map(|(_, entry)| &entry.workflow)
            .filter(|w| query.tenant.as_ref().is_none_or(|t| &w.tenant == t))
            .filter(|w| query.status.is_none_or(|status| w.status == status))
            .take(query.limit)
            .map(|w| (w.clone(), inner.statuses(w)))
            .collect())
    }

    async fn settle_workflow(&self, id: Uuid) -> Result<Option<Settled>, StoreError> {
        let mut inner = self.inner();
        let Some(entry) = inner.workflows.get(&id) else {
            return Ok(None);
        };
        let (mut workflow, marks) = (entry.workflow.clone(), entry.marks);
        let plan = plan(
            &workflow,
            &workflow.step_statuses(&inner.statuses(&workflow)),
        );
        let mut steps: HashMap<JobId, Job> = plan
            .release
            .iter()
            .chain(&plan.cancel)
            .filter_map(|&i| workflow.steps.get(i))
            .filter_map(|step| inner.jobs.get(&step.job_id))
            .map(|job| (job.id, Job::clone(job)))
            .collect();
        let results: HashMap<JobId, Option<RawJson>> = workflow
            .steps
            .iter()
            .filter_map(|step| inner.jobs.get(&step.job_id))
            .filter(|job| job.status == JobStatus::Succeeded)
            .map(|job| (job.id, job.result.clone()))
            .collect();
        let outcome = transition::settle(&mut workflow, &plan, &mut steps, &results, Utc::now());
        let mut write_back = |ids: &[JobId]| -> Vec<Job> {
            ids.iter()
                .filter_map(|id| steps.remove(id))
                .inspect(|job| {
                    let after = job.clone();
                    inner.with_job(job.id, move |record| *record = after);
                })
                .collect()
        };
        let released = write_back(&outcome.released);
        let cancelled = write_back(&outcome.cancelled);
        if let Some(entry) = inner.workflows.get_mut(&id) {
            entry.workflow = workflow.clone();
            if outcome.complete {
                entry.settled = entry.settled.max(marks);
            }
        }
        Ok(Some(Settled {
            workflow,
            released,
            cancelled,
            finished: outcome.finished,
        }))
    }

    async fn request_workflow_cancel(&self, id: Uuid) -> Result<Option<Workflow>, StoreError> {
        let mut inner = self.inner();
        Ok(inner.workflows.get_mut(&id).map(|entry| {
            if !entry.workflow.cancel_requested {
                entry.workflow.cancel_requested = true;
                entry.workflow.version += 1;
                entry.workflow.updated_at = Utc::now();
                entry.marks += 1;
                entry.marked_at = entry.workflow.updated_at;
            }
            entry.workflow.clone()
        }))
    }

    async fn claim_workflow_callbacks(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(Workflow, StepStatuses)>, StoreError> {
        let mut inner = self.inner();
        let due: Vec<Uuid> = inner
            .workflows
            .iter()
            .filter(|(_, entry)| {
                entry
                    .workflow
                    .callback
                    .as_ref()
                    .and_then(Callback::due_at)
                    .is_some_and(|at| at <= now)
            })
            .map(|(id, _)| *id)
            .take(limit)
            .collect();
        let mut claimed = Vec::with_capacity(due.len());
        for id in due {
            let Some(entry) = inner.workflows.get_mut(&id) else {
                continue;
            };
            if let Some(callback) = entry.workflow.callback.as_mut() {
                callback.next_attempt_at = Some(lease_until);
            }
            let workflow = entry.workflow.clone();
            let statuses = inner.statuses(&workflow);
            claimed.push((workflow, statuses));
        }
        Ok(claimed)
    }

    async fn record_workflow_callback(
        &self,
        id: Uuid,
        callback: &Callback,
    ) -> Result<(), StoreError> {
        if let Some(entry) = self.inner().workflows.get_mut(&id) {
            entry.workflow.callback = Some(callback.clone());
        }
        Ok(())
    }

    async fn unsettled(&self, limit: usize) -> Result<Vec<Uuid>, StoreError> {
        let before = Utc::now() - SWEEP_AFTER;
        Ok(self
            .inner()
            .workflows
            .iter()
            .filter(|(_, entry)| entry.marks > entry.settled && entry.marked_at < before)
            .map(|(id, _)| *id)
            .take(limit)
            .collect())
    }
}
