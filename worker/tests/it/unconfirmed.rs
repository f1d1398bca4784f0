//! An outcome the broker will not confirm for a while is published again while the worker
//! holds the job: the handler runs once, and the job does not go towards the poison threshold
//! or the queue's delivery limit (a cluster re-electing a queue leader does this for seconds).
//! A worker killed while it holds one loses nothing: the delivery was never acked.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::json;
use warren_shared::JobStatus;
use warren_worker::{JobContext, Worker};

use crate::helpers::{
    Broker, DEADLINE, RunningWorker, WorkerProcess, body, free_port, series_value, worker_config,
};

/// Polls the worker's metrics until `series` is at least `at_least`.
async fn wait_for_series(port: u16, series: &str, at_least: u64) {
    let started = Instant::now();
    loop {
        let text = body(port, "/metrics").await;
        if series_value(&text, series) >= at_least {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{series} never reached {at_least} in\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_outcome_the_broker_refuses_for_a_while_is_sent_again_without_running_the_job_again() {
    let mut broker = Broker::new().await;
    let counted = broker.uses("counted");
    let mut events = broker.tap_events().await;
    broker.refuse_events().await;
    let runs = Arc::new(AtomicUsize::new(0));
    let handler = {
        let runs = runs.clone();
        move |context: JobContext| {
            runs.fetch_add(1, Ordering::SeqCst);
            async move { Ok(context.payload) }
        }
    };
    let worker = Worker::builder()
        .handler("counted", handler)
        .build(worker_config(&broker))
        .unwrap();
    let running = RunningWorker::start(worker).await;
    let port = running.port;
    broker.wait_for_consumer(&counted).await;

    let job = Broker::job(&counted, json!({"n": 1}), 10_000);
    broker.publish_job(&job).await;
    // Five refusals: had each returned the job to its queue, its fifth delivery would have
    // been failed as poison.
    let refused = r#"warren_worker_unconfirmed_publishes_total{what="outcome"}"#;
    wait_for_series(port, refused, 5).await;
    broker.accept_events().await;
    wait_for_series(
        port,
        r#"warren_worker_jobs_finished_total{job_type="counted",status="succeeded"}"#,
        1,
    )
    .await;
    wait_for_series(port, "warren_worker_acks_sent_total", 1).await;

    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran again");
    // Every try sent the same event: the tap saw it each time, never anything else.
    let first = events.next_any(job.id).await;
    assert_eq!(
        (first.status, first.attempt, first.seq),
        (JobStatus::Succeeded, 1, 1)
    );
    let dead = broker.topology.dead_queue();
    broker.wait_for_queue(&dead, |ready, _| ready == 0).await;

    running.stop().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn a_worker_killed_while_it_holds_an_unconfirmed_outcome_loses_no_job() {
    let mut broker = Broker::new().await;
    let echo = broker.uses("echo");
    let mut events = broker.tap_events().await;
    broker.refuse_events().await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let env = [
        ("WARREN_WORKER_TYPES", "echo"),
        ("WARREN_METRICS_ADDR", &addr),
    ];
    let first = WorkerProcess::spawn(&broker, &env);
    broker.wait_for_consumer(&echo).await;
    let job = Broker::job(&echo, json!({"n": 2}), 10_000);
    broker.publish_job(&job).await;
    // The refused outcome still reaches the tap (the broker nacks it for the refusing queue
    // alone): it names the worker holding the job.
    let holder = events.next(job.id, JobStatus::Succeeded).await.worker;
    // A second refusal: the worker is holding the job, not done with it.
    wait_for_series(
        port,
        r#"warren_worker_unconfirmed_publishes_total{what="outcome"}"#,
        2,
    )
    .await;
    first.kill().await;

    // The held delivery was never acked: the broker hands it to the next worker.
    broker.accept_events().await;
    let second = WorkerProcess::spawn(&broker, &[("WARREN_WORKER_TYPES", "echo")]);
    let done = loop {
        let event = events.next(job.id, JobStatus::Succeeded).await;
        if event.worker != holder {
            break event;
        }
    };
    assert_eq!(done.result, Some(json!({"n": 2})));
    let dead = broker.topology.dead_queue();
    broker.wait_for_queue(&dead, |ready, _| ready == 0).await;
    second.terminate();
    assert!(second.exit_within(DEADLINE).await.success());
    broker.cleanup().await;
}
