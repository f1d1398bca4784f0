//! The store's lifecycle rules, seen through the real events queue: terminal is final, stale
//! and duplicate events change nothing.

use chrono::Utc;
use serde_json::json;
use warren_shared::{JobError, JobEvent, JobStatus, JobType, V1};

use crate::helpers::spawn_app;

fn event(id: &str, job_type: &str, status: JobStatus, attempt: u32, seq: u64) -> JobEvent {
    JobEvent {
        traceparent: None,
        v: V1,
        id: id.parse().unwrap(),
        job_type: JobType::parse(job_type).unwrap(),
        status,
        attempt,
        seq,
        progress: None,
        result: (status == JobStatus::Succeeded).then(|| json!({"from": "first outcome"})),
        error: (status == JobStatus::Failed).then(|| JobError::new("late", "a late failure")),
        next_attempt_at: None,
        worker: "test".into(),
        at: Utc::now(),
    }
}

#[tokio::test]
async fn stale_or_duplicate_events_do_not_move_a_terminal_job() {
    let mut app = spawn_app().await;
    app.declare_idle_queue("held").await;
    let id = app.submit_ok(&json!({"type": "held"})).await;
    let marker = app.submit_ok(&json!({"type": "held"})).await;

    app.publish_event(&event(&id, "held", JobStatus::Running, 1, 1))
        .await;
    app.publish_event(&event(&id, "held", JobStatus::Succeeded, 1, 2))
        .await;
    let finished = app.wait_for_status(&id, "succeeded").await;

    // A duplicate outcome, a later failure, a new attempt and a stale running event.
    app.publish_event(&event(&id, "held", JobStatus::Succeeded, 1, 2))
        .await;
    app.publish_event(&event(&id, "held", JobStatus::Failed, 1, 3))
        .await;
    app.publish_event(&event(&id, "held", JobStatus::Running, 2, 1))
        .await;
    app.publish_event(&event(&id, "held", JobStatus::Running, 1, 1))
        .await;
    // Events are applied in queue order: once the marker's event shows, the others were seen.
    app.publish_event(&event(&marker, "held", JobStatus::Running, 1, 1))
        .await;
    app.wait_for_status(&marker, "running").await;

    assert_eq!(app.job(&id).await, finished);
    app.stop().await;
}

/// Events reach the store in the order they were published on one queue, so once a later
/// event of another job shows, the stale ones before it were seen, and must have changed
/// nothing: the stale ones carry progress that would show if they had been applied.
#[tokio::test]
async fn an_older_attempt_or_seq_does_not_overwrite_a_running_job() {
    let mut app = spawn_app().await;
    app.declare_idle_queue("held").await;
    let id = app.submit_ok(&json!({"type": "held"})).await;
    let sentinel = app.submit_ok(&json!({"type": "held"})).await;

    app.publish_event(&event(&id, "held", JobStatus::Running, 2, 5))
        .await;
    let running = app.wait_for(&id, |job| job["attempt"] == 2).await;
    let with_progress = |attempt, seq, percent| {
        let mut stale = event(&id, "held", JobStatus::Running, attempt, seq);
        stale.progress = Some(warren_shared::Progress {
            percent,
            message: None,
        });
        stale
    };
    app.publish_event(&with_progress(1, 9, 10)).await; // an older attempt
    app.publish_event(&with_progress(2, 4, 20)).await; // an older seq of this attempt
    app.publish_event(&event(&sentinel, "held", JobStatus::Running, 1, 1))
        .await;
    app.wait_for(&sentinel, |job| job["status"] == "running")
        .await;

    let job = app.job(&id).await;
    assert_eq!(job["attempt"], 2, "an older attempt moved the job back");
    assert!(
        job["progress"].is_null(),
        "a stale event was applied: {job}"
    );
    assert_eq!(job["started_at"], running["started_at"]);
    app.stop().await;
}
