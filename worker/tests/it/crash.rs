//! Workers that die: a job survives `kill -9`, a job that kills every worker ends as poison,
//! and a deleted job queue is declared again.

use lapin::options::{BasicGetOptions, QueueDeleteOptions};
use serde_json::json;
use tokio::sync::oneshot;
use warren_shared::JobStatus;
use warren_worker::{Worker, handlers};

use crate::helpers::{Broker, DEADLINE, WorkerProcess, worker_config};

const SLEEP_ONLY: [(&str, &str); 1] = [("WARREN_WORKER_TYPES", "sleep")];

#[tokio::test]
async fn a_job_whose_worker_is_killed_finishes_on_another_worker() {
    let mut broker = Broker::new().await;
    let sleep = broker.uses("sleep");
    let mut events = broker.tap_events().await;
    let first = WorkerProcess::spawn(&broker, &SLEEP_ONLY);
    broker.wait_for_consumer(&sleep).await;

    let job = Broker::job(&sleep, json!({"ms": 500}), 10_000);
    broker.publish_job(&job).await;
    let started = events.next(job.id, JobStatus::Running).await;
    first.kill().await;

    let second = WorkerProcess::spawn(&broker, &SLEEP_ONLY);
    let done = events.next(job.id, JobStatus::Succeeded).await;
    assert_ne!(
        done.worker, started.worker,
        "the same process cannot have finished it"
    );
    assert_eq!(done.result, Some(json!({"slept_ms": 500})));
    second.terminate();
    assert!(second.exit_within(DEADLINE).await.success());
    broker.cleanup().await;
}

#[tokio::test]
async fn a_job_that_kills_every_worker_ends_failed_as_poison_and_dead() {
    let mut broker = Broker::new().await;
    let sleep = broker.uses("sleep");
    let mut events = broker.tap_events().await;
    let job = Broker::job(&sleep, json!({"ms": 60_000}), 120_000);
    for delivery in 1..=4 {
        let worker = WorkerProcess::spawn(&broker, &SLEEP_ONLY);
        broker.wait_for_consumer(&sleep).await;
        if delivery == 1 {
            broker.publish_job(&job).await;
        }
        events.next(job.id, JobStatus::Running).await;
        worker.kill().await;
    }

    let last = WorkerProcess::spawn(&broker, &SLEEP_ONLY);
    let failed = events.next(job.id, JobStatus::Failed).await;
    let error = failed.error.unwrap();
    assert_eq!(error.kind, warren_shared::ErrorKind::Poison);
    assert!(
        error.message.contains("delivered 5 times"),
        "{}",
        error.message
    );

    let dead = broker
        .channel
        .basic_get(
            broker.topology.dead_queue().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("the poison job is in the dead-letter queue");
    let body: serde_json::Value = serde_json::from_slice(&dead.delivery.data).unwrap();
    assert_eq!(body["id"], job.id.to_string());
    last.terminate();
    assert!(last.exit_within(DEADLINE).await.success());
    broker.cleanup().await;
}

#[tokio::test]
async fn a_job_queue_deleted_under_a_worker_is_declared_again_and_consumed() {
    let mut broker = Broker::new().await;
    let echo = broker.uses("echo");
    let mut events = broker.tap_events().await;
    let config = worker_config(&broker);
    let worker = Worker::builder()
        .handler("echo", handlers::echo)
        .build(config)
        .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    broker.wait_for_consumer(&echo).await;

    let queue = broker.topology.job_queue(&echo);
    broker
        .channel
        .queue_delete(queue.clone().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    // The broker cancels the consumer; the worker notices, declares the queue again and
    // consumes it.
    broker.wait_for_consumer(&echo).await;
    let job = Broker::job(&echo, json!("still here"), 1_000);
    broker.publish_job(&job).await;
    let done = events.next(job.id, JobStatus::Succeeded).await;
    assert_eq!(done.result, Some(json!("still here")));

    let _ = stop.send(());
    running.await.unwrap().unwrap();
    broker.cleanup().await;
}

#[tokio::test]
async fn only_attempts_that_take_a_while_are_announced_as_running() {
    let mut broker = Broker::new().await;
    let sleep = broker.uses("sleep");
    let mut events = broker.tap_events().await;
    let worker = WorkerProcess::spawn(&broker, &SLEEP_ONLY);
    broker.wait_for_consumer(&sleep).await;

    let quick = Broker::job(&sleep, json!({"ms": 0}), 10_000);
    let slow = Broker::job(&sleep, json!({"ms": 300}), 10_000);
    broker.publish_job(&quick).await;
    let done = events.next_any(quick.id).await;
    assert_eq!(
        done.status,
        JobStatus::Succeeded,
        "a quick attempt went straight to its outcome"
    );
    broker.publish_job(&slow).await;
    assert_eq!(events.next_any(slow.id).await.status, JobStatus::Running);
    assert_eq!(events.next_any(slow.id).await.status, JobStatus::Succeeded);
    worker.terminate();
    assert!(worker.exit_within(DEADLINE).await.success());
    broker.cleanup().await;
}

#[tokio::test]
async fn with_announce_running_after_zero_every_attempt_is_announced() {
    let mut broker = Broker::new().await;
    let sleep = broker.uses("sleep");
    let mut events = broker.tap_events().await;
    let worker = WorkerProcess::spawn(
        &broker,
        &[
            ("WARREN_WORKER_TYPES", "sleep"),
            ("WARREN_ANNOUNCE_RUNNING_AFTER_MS", "0"),
        ],
    );
    broker.wait_for_consumer(&sleep).await;
    // 200 attempts that end at once: each must still be announced before its outcome.
    let mut first_status = std::collections::HashMap::new();
    for _ in 0..200 {
        let quick = Broker::job(&sleep, json!({"ms": 0}), 10_000);
        first_status.insert(quick.id, None);
        broker.publish_job(&quick).await;
    }
    let mut finished = 0;
    while finished < 200 {
        let event = events.next_event().await;
        let Some(first) = first_status.get_mut(&event.id) else {
            continue;
        };
        first.get_or_insert(event.status);
        if event.status == JobStatus::Succeeded {
            finished += 1;
        }
    }
    let unannounced = first_status
        .values()
        .filter(|first| **first != Some(JobStatus::Running))
        .count();
    assert_eq!(
        unannounced, 0,
        "{unannounced} of 200 attempts were not announced first"
    );
    worker.terminate();
    assert!(worker.exit_within(DEADLINE).await.success());
    broker.cleanup().await;
}
