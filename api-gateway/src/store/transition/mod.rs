//! The lifecycle rules, as one pure function every store uses.
//!
//! An event moves a job only forward:
//! 1. a terminal job never changes (first terminal outcome wins; duplicates after a crash
//!    and redelivery are ignored), but for one fact: a job cancelled while a worker had
//!    already started it, whose start is reported after the cancel, records when it started;
//! 2. an event of an older attempt is stale;
//! 3. a terminal event of the current or a newer attempt is applied, whatever its `seq`: a
//!    redelivered attempt restarts its `seq` at 1, and its outcome must still land;
//! 4. within an attempt, a `seq` at or below the last applied one is stale or a duplicate, and
//!    a status of lower rank (e.g. `running` after `retrying`) would move backwards.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use warren_shared::{ErrorKind, JobError, JobEvent, JobId, JobStatus};

use crate::model::{
    AttemptError, Callback, Job, MAX_ERRORS, Plan, RawJson, Workflow, WorkflowStatus,
};

/// Why an event was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// The job is already terminal.
    AlreadyTerminal,
    /// The event belongs to an attempt before the job's current one.
    StaleAttempt,
    /// The event's `seq` is not newer than the last applied one of its attempt.
    StaleSeq,
    /// The event would move the status backwards within an attempt.
    Backwards,
    /// The event names another job type than the record (a bug or a forged event).
    TypeMismatch,
    /// Workers never report `queued` (or `scheduled`).
    Queued,
    /// The event says nothing new (same status and attempt, no new progress, result or
    /// error), e.g. a delayed `running` announcement after a progress report already said so.
    Unchanged,
}

impl Ignored {
    /// A short label for logs and metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AlreadyTerminal => "already_terminal",
            Self::StaleAttempt => "stale_attempt",
            Self::StaleSeq => "stale_seq",
            Self::Backwards => "backwards",
            Self::TypeMismatch => "type_mismatch",
            Self::Queued => "queued_from_worker",
            Self::Unchanged => "unchanged",
        }
    }
}

/// Decides whether `event` applies to `job` and, if so, applies it.
pub fn apply(job: &mut Job, event: &JobEvent) -> Result<(), Ignored> {
    if started_before_cancel(job, event) {
        job.started_at = Some(event.at);
        job.version += 1;
        return Ok(());
    }
    check(job, event)?;
    let new_attempt = event.attempt > job.attempt;
    job.status = event.status;
    job.attempt = event.attempt;
    job.seq = if new_attempt || event.seq > job.seq {
        event.seq
    } else {
        job.seq
    };
    if let Some(progress) = &event.progress {
        job.progress = Some(Box::new(progress.clone()));
    }
    if let Some(result) = &event.result {
        job.result = Some(RawJson::from_value(result));
    }
    if let Some(error) = &event.error {
        job.error = Some(Box::new(error.clone()));
        record_error(job, event.attempt, event.at, error);
    }
    job.next_attempt_at = event
        .next_attempt_at
        .filter(|_| event.status == JobStatus::Retrying);
    // A quick attempt is not announced as running: its outcome is also its start.
    let started = event.status == JobStatus::Running || event.status.is_terminal();
    if started && job.started_at.is_none() {
        job.started_at = Some(event.at);
    }
    if event.status.is_terminal() {
        job.finished_at = Some(event.at);
        arm_callback(job, event.at, event.traceparent.as_deref());
    }
    job.updated_at = event.at;
    // A worker reported on the job, so its message was delivered: nothing left to relay.
    job.unconfirmed_since = None;
    job.version += 1;
    Ok(())
}

/// Whether `event` is the late news that a worker had started the current attempt of a job
/// cancelled meanwhile (its status stays `cancelled`; only `started_at` is learned).
fn started_before_cancel(job: &Job, event: &JobEvent) -> bool {
    job.status == JobStatus::Cancelled
        && job.started_at.is_none()
        && event.job_type == job.job_type
        && event.attempt == job.attempt
        && (event.status == JobStatus::Running || event.status.is_terminal())
}

fn check(job: &Job, event: &JobEvent) -> Result<(), Ignored> {
    if job.status.is_terminal() {
        return Err(Ignored::AlreadyTerminal);
    }
    if event.job_type != job.job_type {
        return Err(Ignored::TypeMismatch);
    }
    if matches!(event.status, JobStatus::Queued | JobStatus::Scheduled) {
        return Err(Ignored::Queued);
    }
    if event.attempt < job.attempt {
        return Err(Ignored::StaleAttempt);
    }
    if event.status.is_terminal() || event.attempt > job.attempt {
        return Ok(());
    }
    if event.seq <= job.seq {
        return Err(Ignored::StaleSeq);
    }
    if event.status.rank() < job.status.rank() {
        return Err(Ignored::Backwards);
    }
    let says_nothing_new = event.status == job.status
        && event.result.is_none()
        && event.error.is_none()
        && event
            .progress
            .as_ref()
            .is_none_or(|progress| job.progress.as_deref() == Some(progress));
    if says_nothing_new {
        return Err(Ignored::Unchanged);
    }
    Ok(())
}

/// Marks a job failed for a reason found by the gateway (not by a worker), unless it is
/// already terminal. Returns whether the record changed.
pub fn fail(job: &mut Job, error: JobError) -> bool {
    if job.status.is_terminal() {
        return false;
    }
    record_error(job, job.attempt, Utc::now(), &error);
    finish(job, JobStatus::Failed, Some(error))
}

/// Appends an attempt's error to the job's history, keeping the newest [`MAX_ERRORS`].
fn record_error(job: &mut Job, attempt: u32, at: chrono::DateTime<Utc>, error: &JobError) {
    if job.errors.len() >= MAX_ERRORS {
        job.errors.remove(0);
    }
    job.errors.push(AttemptError {
        attempt,
        at,
        error: error.clone(),
    });
}

/// Marks a job cancelled at a client's request, unless it is already terminal. Returns
/// whether the record changed.
pub fn cancel(job: &mut Job) -> bool {
    let error = JobError::new(ErrorKind::Cancelled, "cancelled at the client's request");
    finish(job, JobStatus::Cancelled, Some(error))
}

/// Releases a `scheduled` job that is due: `queued`, with an outbox mark so that it is
/// published (by the scheduler now, or by the relay if that dies first). Returns whether the
/// record changed.
pub fn release(job: &mut Job, now: chrono::DateTime<Utc>) -> bool {
    if job.status != JobStatus::Scheduled {
        return false;
    }
    job.status = JobStatus::Queued;
    job.unconfirmed_since = Some(now);
    job.updated_at = now;
    job.version += 1;
    true
}

/// What [`settle`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SettleOutcome {
    /// Steps now `queued`, to publish.
    pub released: Vec<JobId>,
    /// Steps now `cancelled`.
    pub cancelled: Vec<JobId>,
    /// Whether every step the plan named was still `waiting` and changed; if not (another
    /// writer held one), the workflow's status was left alone and it stays owed a settle.
    pub complete: bool,
    /// Whether the workflow ended now.
    pub finished: bool,
}

/// Applies `plan` to `workflow` and to its step jobs it names (`steps`: those records, by id,
/// as locked by the store; `results`: the results of every released step's dependencies):
/// a released step becomes `queued` with its dependencies' results as `parents` and an outbox
/// mark, so it is published (now by the settler, or by the relay if that dies first); a
/// doomed one becomes `cancelled`. Only `waiting` steps change, so a step is released once
/// however often this runs. When every named step changed, the workflow takes the plan's
/// status.
pub fn settle(
    workflow: &mut Workflow,
    plan: &Plan,
    steps: &mut HashMap<JobId, Job>,
    results: &HashMap<JobId, Option<RawJson>>,
    now: DateTime<Utc>,
) -> SettleOutcome {
    let mut outcome = SettleOutcome {
        complete: true,
        ..SettleOutcome::default()
    };
    for &i in &plan.release {
        let Some(step) = workflow.steps.get(i) else {
            continue;
        };
        let parents = workflow.parents(i, results);
        let released = steps
            .get_mut(&step.job_id)
            .is_some_and(|job| release_step(job, parents, now));
        if released {
            outcome.released.push(step.job_id);
        } else {
            outcome.complete = false;
        }
    }
    let reason = if workflow.cancel_requested {
        "the workflow was cancelled"
    } else {
        "a step it depends on did not succeed, so it can never run"
    };
    for &i in &plan.cancel {
        let Some(step) = workflow.steps.get(i) else {
            continue;
        };
        match steps.get_mut(&step.job_id) {
            Some(job) if job.status == JobStatus::Waiting => {
                let error = JobError::new(ErrorKind::Cancelled, reason);
                finish(job, JobStatus::Cancelled, Some(error));
                outcome.cancelled.push(job.id);
            }
            _ => outcome.complete = false,
        }
    }
    if outcome.complete {
        outcome.finished = conclude(workflow, plan.status, now);
    }
    outcome
}

/// Releases a `waiting` workflow step: `queued`, with `parents` and an outbox mark. Returns
/// whether the record changed.
pub fn release_step(job: &mut Job, parents: RawJson, now: DateTime<Utc>) -> bool {
    if job.status != JobStatus::Waiting {
        return false;
    }
    job.status = JobStatus::Queued;
    job.parents = Some(parents);
    job.unconfirmed_since = Some(now);
    job.updated_at = now;
    job.version += 1;
    true
}

/// Gives a running workflow the status its steps say; a terminal status is final. Returns
/// whether it ended now; a workflow that ends owes its `callback_url` a delivery, armed in the
/// same write.
pub fn conclude(workflow: &mut Workflow, status: WorkflowStatus, now: DateTime<Utc>) -> bool {
    if workflow.status.is_terminal() || status == workflow.status {
        return false;
    }
    workflow.status = status;
    workflow.updated_at = now;
    workflow.version += 1;
    if status.is_terminal() {
        workflow.finished_at = Some(now);
        if workflow.callback_url.is_some() {
            workflow.callback = Some(Callback::due_now(now));
        }
        return true;
    }
    false
}

/// Re-drives a `failed` job: `queued` again with the next attempt number and a fresh budget
/// of attempts. Returns whether the record changed (only failed jobs can be re-driven).
pub fn redrive(job: &mut Job) -> bool {
    // A workflow's failed step has had its dependents cancelled: running it again alone
    // would leave them cancelled, so the workflow is what a client runs again.
    if job.status != JobStatus::Failed || job.workflow_id.is_some() {
        return false;
    }
    job.attempt += 1;
    job.max_attempts = job.attempt - 1 + job.attempt_budget;
    job.status = JobStatus::Queued;
    job.seq = 0;
    job.progress = None;
    job.result = None;
    job.error = None;
    job.next_attempt_at = None;
    job.finished_at = None;
    // The earlier outcome's delivery stops; the next outcome gets its own.
    job.callback = None;
    job.updated_at = Utc::now();
    // The new attempt's message is not published yet: the outbox mark says so.
    job.unconfirmed_since = Some(job.updated_at);
    job.version += 1;
    true
}

/// A job that just finished at `at` owes its `callback_url` a delivery, due at once: armed in
/// the same write as the terminal status, so no crash can lose it.
/// `traceparent` is the outcome's trace, which the delivery joins.
fn arm_callback(job: &mut Job, at: chrono::DateTime<Utc>, traceparent: Option<&str>) {
    if job.callback_url.is_some() {
        let mut callback = Callback::due_now(at);
        callback.traceparent = traceparent.map(str::to_owned);
        job.callback = Some(Box::new(callback));
    }
}

fn finish(job: &mut Job, status: JobStatus, error: Option<JobError>) -> bool {
    if job.status.is_terminal() {
        return false;
    }
    let now = Utc::now();
    job.status = status;
    job.error = error.map(Box::new);
    job.next_attempt_at = None;
    job.finished_at = Some(now);
    arm_callback(job, now, None);
    job.updated_at = now;
    // A finished job is never published again.
    job.unconfirmed_since = None;
    job.version += 1;
    true
}

#[cfg(test)]
mod tests;
