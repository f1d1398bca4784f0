//! The records this gateway wrote last, kept so that their workers' events can be applied
//! without reading the rows back first (the optimistic apply in [`super::writes`]).
//!
//! A copy is only a guess: the apply writes it back with `WHERE version = <the copy's>`, so a
//! record that changed since (cancelled, redriven, applied by another gateway) is simply not
//! written, and its events take the locked path. Only records whose written columns are all
//! the copy's own are kept: unfinished (`queued`, `running`, `retrying`) jobs outside
//! workflows. Of the columns the store changes without a new version, the outbox mark is
//! cleared by every applied event and the callback columns are only set once a job has
//! finished, so a copy at the row's version has every column the update writes.
//!
//! Bounded by size (payloads included): past [`MAX_BYTES`] the oldest copies (UUIDv7 ids
//! sort by age) are dropped, so copies of jobs whose events another gateway applies do not
//! pile up.

use std::{collections::BTreeMap, sync::Mutex};

use uuid::Uuid;
use warren_shared::JobStatus;

use crate::model::Job;

/// The most the copies may take, roughly (a few tens of thousands of small jobs).
const MAX_BYTES: usize = 16 << 20;

/// Copies of recently written records, by id.
#[derive(Debug, Default)]
pub(super) struct Recent {
    inner: Mutex<Copies>,
}

#[derive(Debug, Default)]
struct Copies {
    jobs: BTreeMap<Uuid, Job>,
    bytes: usize,
}

impl Recent {
    /// Keeps a copy of `job`, as just written, if the optimistic apply can use it.
    pub(super) fn remember(&self, job: &Job) {
        if !usable(job) {
            return;
        }
        let size = bytes_of(job);
        let mut copies = self.lock();
        if let Some(old) = copies.jobs.insert(job.id.as_uuid(), job.clone()) {
            copies.bytes -= bytes_of(&old);
        }
        copies.bytes += size;
        while copies.bytes > MAX_BYTES {
            let Some((_, oldest)) = copies.jobs.pop_first() else {
                break;
            };
            copies.bytes -= bytes_of(&oldest);
        }
    }

    /// Takes the copy of `id` out, if there is one (whoever applies events to it puts the
    /// result back with [`Self::remember`]).
    pub(super) fn take(&self, id: Uuid) -> Option<Job> {
        let mut copies = self.lock();
        let job = copies.jobs.remove(&id)?;
        copies.bytes -= bytes_of(&job);
        Some(job)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Copies> {
        // The copies are only a cache: a panic elsewhere while holding the lock leaves them
        // consistent enough (every copy is checked against the row's version anyway).
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Whether the optimistic apply may write `job` back from a copy (see the module's docs).
fn usable(job: &Job) -> bool {
    matches!(
        job.status,
        JobStatus::Queued | JobStatus::Running | JobStatus::Retrying
    ) && job.workflow_id.is_none()
        && job.callback.is_none()
}

/// Roughly what a copy takes: the record and its JSON texts.
fn bytes_of(job: &Job) -> usize {
    std::mem::size_of::<Job>()
        + job.payload.as_raw().get().len()
        + job.result.as_ref().map_or(0, |r| r.as_raw().get().len())
        + job.callback_url.as_ref().map_or(0, String::len)
        + job.errors.len() * 128
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{JobSpec, SpecLimits};

    fn job() -> Job {
        let limits = SpecLimits {
            default_timeout_ms: 1_000,
            max_timeout_ms: 1_000,
            max_delay: std::time::Duration::from_secs(1),
        };
        JobSpec::new("echo", &serde_json::json!({"i": 1}))
            .validate(&limits)
            .unwrap()
            .into_job()
    }

    #[test]
    fn a_copy_is_taken_once_and_only_unfinished_jobs_outside_workflows_are_kept() {
        let recent = Recent::default();
        let queued = job();
        recent.remember(&queued);
        assert_eq!(recent.take(queued.id.as_uuid()), Some(queued.clone()));
        assert_eq!(recent.take(queued.id.as_uuid()), None);

        let mut done = job();
        done.status = JobStatus::Succeeded;
        recent.remember(&done);
        let mut step = job();
        step.workflow_id = Some(Uuid::now_v7());
        recent.remember(&step);
        assert_eq!(recent.take(done.id.as_uuid()), None);
        assert_eq!(recent.take(step.id.as_uuid()), None);
        assert_eq!(recent.lock().bytes, 0);
    }

    #[test]
    fn past_the_bound_the_oldest_copies_go() {
        let recent = Recent::default();
        let first = job();
        recent.remember(&first);
        let per_copy = bytes_of(&first);
        let mut last = first.clone();
        for _ in 0..MAX_BYTES / per_copy + 10 {
            last = job();
            recent.remember(&last);
        }
        assert!(recent.lock().bytes <= MAX_BYTES);
        assert_eq!(recent.take(first.id.as_uuid()), None);
        assert!(recent.take(last.id.as_uuid()).is_some());
    }
}
