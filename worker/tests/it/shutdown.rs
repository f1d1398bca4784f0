//! SIGTERM mid-job: the job is finished within the grace period, or left for redelivery;
//! never lost.

use std::time::Duration;

use lapin::options::BasicGetOptions;
use serde_json::json;
use warren_shared::{JobStatus, message};

use crate::helpers::{Broker, DEADLINE, WorkerProcess};

#[tokio::test]
async fn sigterm_lets_a_running_job_finish_within_the_grace_period() {
    let mut broker = Broker::new().await;
    let sleep = broker.uses("sleep");
    let mut events = broker.tap_events().await;
    let worker = WorkerProcess::spawn(
        &broker,
        &[
            ("WARREN_WORKER_TYPES", "sleep"),
            ("WARREN_SHUTDOWN_GRACE_SECS", "20"),
        ],
    );
    broker.wait_for_consumer(&sleep).await;

    let job = Broker::job(&sleep, json!({"ms": 700}), 10_000);
    broker.publish_job(&job).await;
    events.next(job.id, JobStatus::Running).await;
    worker.terminate();

    let done = events.next(job.id, JobStatus::Succeeded).await;
    assert_eq!(done.result, Some(json!({"slept_ms": 700})));
    assert!(worker.exit_within(DEADLINE).await.success());
    // Acked: nothing went back to the queue when the worker's connection closed.
    let queue = broker.topology.job_queue(&sleep);
    broker
        .wait_for_queue(&queue, |ready, consumers| ready == 0 && consumers == 0)
        .await;
    broker.cleanup().await;
}

#[tokio::test]
async fn sigterm_past_the_grace_period_leaves_the_job_for_redelivery() {
    let mut broker = Broker::new().await;
    let sleep = broker.uses("sleep");
    let mut events = broker.tap_events().await;
    let worker = WorkerProcess::spawn(
        &broker,
        &[
            ("WARREN_WORKER_TYPES", "sleep"),
            ("WARREN_SHUTDOWN_GRACE_SECS", "1"),
        ],
    );
    broker.wait_for_consumer(&sleep).await;

    let job = Broker::job(&sleep, json!({"ms": 60_000}), 120_000);
    broker.publish_job(&job).await;
    events.next(job.id, JobStatus::Running).await;
    worker.terminate();
    assert!(worker.exit_within(Duration::from_secs(10)).await.success());

    // The unfinished job is back in its queue, marked redelivered, for the next worker.
    let queue = broker.topology.job_queue(&sleep);
    broker.wait_for_queue(&queue, |ready, _| ready == 1).await;
    let returned = broker
        .channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the job is back in its queue");
    assert!(returned.delivery.redelivered);
    let message: warren_shared::JobMessage = message::decode(&returned.delivery.data).unwrap();
    assert_eq!(message.id, job.id);
    broker.cleanup().await;
}
