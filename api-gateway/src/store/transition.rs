//! The lifecycle rules, as one pure function every store uses.
//!
//! An event moves a job only forward:
//! 1. a terminal job never changes (first terminal outcome wins; duplicates after a crash
//!    and redelivery are ignored);
//! 2. an event of an older attempt is stale;
//! 3. a terminal event of the current or a newer attempt is applied, whatever its `seq`: a
//!    redelivered attempt restarts its `seq` at 1, and its outcome must still land;
//! 4. within an attempt, a `seq` at or below the last applied one is stale or a duplicate, and
//!    a status of lower rank (e.g. `running` after `retrying`) would move backwards.

use chrono::Utc;
use warren_shared::{ErrorKind, JobError, JobEvent, JobStatus};

use super::{Job, RawJson};
use crate::webhooks::Callback;

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
        arm_callback(job, event.at);
    }
    job.updated_at = event.at;
    // A worker reported on the job, so its message was delivered: nothing left to relay.
    job.unconfirmed_since = None;
    job.version += 1;
    Ok(())
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
    finish(job, JobStatus::Failed, Some(error))
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

/// Re-drives a `failed` job: `queued` again with the next attempt number and a fresh budget
/// of attempts. Returns whether the record changed (only failed jobs can be re-driven).
pub fn redrive(job: &mut Job) -> bool {
    if job.status != JobStatus::Failed {
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
fn arm_callback(job: &mut Job, at: chrono::DateTime<Utc>) {
    if job.callback_url.is_some() {
        job.callback = Some(Box::new(Callback::due_now(at)));
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
    arm_callback(job, now);
    job.updated_at = now;
    // A finished job is never published again.
    job.unconfirmed_since = None;
    job.version += 1;
    true
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;
    use warren_shared::{JobId, JobType, Progress, V1};

    use super::*;

    fn queued_job() -> Job {
        let now = Utc::now();
        Job {
            id: JobId::new(),
            job_type: JobType::parse("echo").unwrap(),
            status: JobStatus::Queued,
            attempt: 1,
            max_attempts: 3,
            progress: None,
            result: None,
            error: None,
            created_at: now,
            updated_at: now,
            next_attempt_at: None,
            started_at: None,
            finished_at: None,
            payload: RawJson::from_value(&json!({})),
            timeout_ms: 1000,
            callback_url: None,
            seq: 0,
            attempt_budget: 3,
            version: 0,
            unconfirmed_since: None,
            run_at: None,
            callback: None,
        }
    }

    fn event(job: &Job, status: JobStatus, attempt: u32, seq: u64) -> JobEvent {
        JobEvent {
            v: V1,
            id: job.id,
            job_type: job.job_type.clone(),
            status,
            attempt,
            seq,
            progress: None,
            result: (status == JobStatus::Succeeded).then(|| json!({"seq": seq})),
            error: (status == JobStatus::Failed).then(|| JobError::new("handler_error", "boom")),
            next_attempt_at: None,
            worker: "w".into(),
            at: Utc::now(),
        }
    }

    /// Applies an event of `job`'s id and type.
    fn step(job: &mut Job, status: JobStatus, attempt: u32, seq: u64) -> Result<(), Ignored> {
        let event = event(job, status, attempt, seq);
        apply(job, &event)
    }

    #[test]
    fn the_happy_path_runs_forward_and_stamps_times() {
        let mut job = queued_job();
        step(&mut job, JobStatus::Running, 1, 1).unwrap();
        assert_eq!(job.status, JobStatus::Running);
        assert!(job.started_at.is_some() && job.finished_at.is_none());
        step(&mut job, JobStatus::Succeeded, 1, 2).unwrap();
        assert_eq!(job.status, JobStatus::Succeeded);
        assert_eq!(job.result.map(|r| r.to_value()), Some(json!({"seq": 2})));
        assert!(job.finished_at.is_some());
    }

    #[test]
    fn terminal_is_final_even_for_a_later_terminal_event() {
        let mut job = queued_job();
        step(&mut job, JobStatus::Succeeded, 1, 2).unwrap();
        let before = job.clone();
        for (status, attempt, seq) in [
            (JobStatus::Failed, 1, 3),
            (JobStatus::Running, 2, 1),
            (JobStatus::Succeeded, 1, 2),
        ] {
            assert_eq!(
                step(&mut job, status, attempt, seq),
                Err(Ignored::AlreadyTerminal)
            );
        }
        assert_eq!(job, before);
    }

    #[test]
    fn stale_and_duplicate_events_change_nothing() {
        let mut job = queued_job();
        step(&mut job, JobStatus::Running, 2, 3).unwrap();
        let before = job.clone();
        assert_eq!(
            step(&mut job, JobStatus::Running, 1, 9),
            Err(Ignored::StaleAttempt)
        );
        assert_eq!(
            step(&mut job, JobStatus::Running, 2, 3),
            Err(Ignored::StaleSeq)
        );
        assert_eq!(
            step(&mut job, JobStatus::Running, 2, 2),
            Err(Ignored::StaleSeq)
        );
        assert_eq!(job, before);
    }

    #[test]
    fn status_never_moves_backwards_within_an_attempt() {
        let mut job = queued_job();
        step(&mut job, JobStatus::Retrying, 1, 3).unwrap();
        assert_eq!(
            step(&mut job, JobStatus::Running, 1, 4),
            Err(Ignored::Backwards)
        );
        step(&mut job, JobStatus::Running, 2, 1).unwrap();
        assert_eq!((job.status, job.attempt), (JobStatus::Running, 2));
    }

    #[test]
    fn a_redelivered_attempt_still_lands_its_outcome() {
        // First run got to seq 5 before its worker died; the second run finishes at seq 2.
        let mut job = queued_job();
        step(&mut job, JobStatus::Running, 1, 5).unwrap();
        step(&mut job, JobStatus::Succeeded, 1, 2).unwrap();
        assert_eq!(job.status, JobStatus::Succeeded);
    }

    #[test]
    fn foreign_type_and_queued_events_are_refused() {
        let mut job = queued_job();
        let mut foreign = event(&job, JobStatus::Running, 1, 1);
        foreign.job_type = JobType::parse("other").unwrap();
        assert_eq!(apply(&mut job, &foreign), Err(Ignored::TypeMismatch));
        assert_eq!(
            step(&mut job, JobStatus::Queued, 1, 1),
            Err(Ignored::Queued)
        );
    }

    #[test]
    fn every_change_bumps_the_version_and_ignored_events_do_not() {
        let mut job = queued_job();
        step(&mut job, JobStatus::Running, 1, 1).unwrap();
        step(&mut job, JobStatus::Retrying, 1, 2).unwrap();
        assert_eq!(job.version, 2);
        let _ = step(&mut job, JobStatus::Retrying, 1, 2);
        assert_eq!(job.version, 2);
        assert!(cancel(&mut job));
        assert_eq!((job.status, job.version), (JobStatus::Cancelled, 3));
        assert!(!cancel(&mut job));
        assert_eq!(job.version, 3);
    }

    #[test]
    fn an_event_that_says_nothing_new_is_not_a_change() {
        let mut job = queued_job();
        let progress = Progress {
            percent: 40,
            message: None,
        };
        let mut running = event(&job, JobStatus::Running, 1, 1);
        running.progress = Some(progress.clone());
        assert_eq!(apply(&mut job, &running), Ok(()));
        let mut again = event(&job, JobStatus::Running, 1, 2);
        assert_eq!(apply(&mut job, &again), Err(Ignored::Unchanged));
        again.progress = Some(progress);
        assert_eq!(apply(&mut job, &again), Err(Ignored::Unchanged));
        assert_eq!(job.version, 1, "no new version, so no second SSE event");
        again.progress = Some(Progress {
            percent: 60,
            message: None,
        });
        assert_eq!(apply(&mut job, &again), Ok(()));
    }

    #[test]
    fn only_a_scheduled_job_is_released_and_then_it_waits_for_its_publish() {
        let mut job = queued_job();
        job.status = JobStatus::Scheduled;
        let now = Utc::now();
        assert!(release(&mut job, now));
        assert_eq!(
            (job.status, job.unconfirmed_since, job.version),
            (JobStatus::Queued, Some(now), 1)
        );
        assert!(
            !release(&mut job, now),
            "a queued job is not released twice"
        );
        assert!(cancel(&mut job));
        assert!(!release(&mut job, now));
    }

    #[test]
    fn redrive_starts_a_new_attempt_series_that_old_events_cannot_touch() {
        let mut job = queued_job();
        assert!(!redrive(&mut job), "only failed jobs are re-driven");
        step(&mut job, JobStatus::Failed, 3, 4).unwrap();
        assert!(redrive(&mut job));
        assert_eq!(
            (job.status, job.attempt, job.max_attempts),
            (JobStatus::Queued, 4, 6)
        );
        assert!(job.error.is_none() && job.finished_at.is_none());
        assert_eq!(
            step(&mut job, JobStatus::Succeeded, 3, 9),
            Err(Ignored::StaleAttempt)
        );
        step(&mut job, JobStatus::Running, 4, 1).unwrap();
    }

    #[test]
    fn fail_marks_only_unfinished_jobs() {
        let mut job = queued_job();
        assert!(fail(&mut job, JobError::new("publish_failed", "nack")));
        assert_eq!(job.status, JobStatus::Failed);
        assert!(!fail(&mut job, JobError::new("other", "x")));
        assert_eq!(
            job.error.as_ref().map(|e| e.kind.as_str()),
            Some("publish_failed")
        );
    }

    #[test]
    fn finishing_a_job_with_a_callback_url_arms_its_delivery_and_redrive_drops_it() {
        let mut job = queued_job();
        step(&mut job, JobStatus::Running, 1, 1).unwrap();
        assert_eq!(job.callback, None, "no callback_url, no delivery");
        job.callback_url = Some("https://example.com/hook".into());
        step(&mut job, JobStatus::Failed, 1, 2).unwrap();
        let armed = job.callback.clone().unwrap();
        assert_eq!(armed.due_at(), job.finished_at);
        assert!(redrive(&mut job));
        assert_eq!(job.callback, None);
        let mut cancelled = queued_job();
        cancelled.callback_url = job.callback_url.clone();
        assert!(cancel(&mut cancelled));
        assert!(cancelled.callback.is_some_and(|c| c.due_at().is_some()));
    }
}
