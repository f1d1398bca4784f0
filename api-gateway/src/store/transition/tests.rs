//! The lifecycle rules, rule by rule.

use chrono::Utc;
use serde_json::json;
use warren_shared::{JobId, JobType, Progress, V1};

use super::*;

fn queued_job() -> Job {
    let now = Utc::now();
    Job {
        tenant: "default".into(),
        key_id: None,
        schedule_id: None,
        workflow_id: None,
        step: None,
        parents: None,
        errors: Vec::new(),
        id: JobId::new(),
        job_type: JobType::parse("echo").unwrap(),
        status: JobStatus::Queued,
        priority: warren_shared::Priority::Normal,
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
        traceparent: None,
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

#[test]
fn every_attempts_error_is_kept_up_to_the_cap() {
    let mut job = queued_job();
    for attempt in 1..=(MAX_ERRORS as u32 + 2) {
        let error = JobError::new(ErrorKind::Timeout, format!("attempt {attempt} timed out"));
        let mut event = event(&job, JobStatus::Retrying, attempt, 1);
        event.error = Some(error);
        apply(&mut job, &event).unwrap();
    }
    assert_eq!(job.errors.len(), MAX_ERRORS);
    assert_eq!(job.errors[0].attempt, 3, "the oldest go first");
    assert_eq!(
        job.errors.last().unwrap().error.message,
        "attempt 27 timed out"
    );
    assert!(fail(
        &mut job,
        JobError::new(ErrorKind::PublishFailed, "nack")
    ));
    assert_eq!(
        job.errors.last().unwrap().error.kind,
        ErrorKind::PublishFailed
    );
}

#[test]
fn a_cancelled_job_learns_when_it_had_started_and_stays_cancelled() {
    let mut job = queued_job();
    assert!(cancel(&mut job));
    let version = job.version;
    // The worker had started the attempt; its `running` reaches the store after the cancel.
    let late_start = event(&job, JobStatus::Running, 1, 1);
    assert_eq!(apply(&mut job, &late_start), Ok(()));
    assert_eq!(job.status, JobStatus::Cancelled);
    assert_eq!(job.started_at, Some(late_start.at));
    assert_eq!(job.version, version + 1);
    // Its outcome changes nothing: terminal is final.
    assert_eq!(
        step(&mut job, JobStatus::Succeeded, 1, 2),
        Err(Ignored::AlreadyTerminal)
    );
    assert_eq!(job.status, JobStatus::Cancelled);
    assert!(job.result.is_none());
}
