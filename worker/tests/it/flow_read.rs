//! A failed read of the flow settings (`<ns>.flow` gone, or without a leader while a cluster
//! re-elects one) does not end the worker's consume session. Ending it would cancel its
//! consumers, and the deliveries it had taken but not started would go back to their queue
//! once its jobs in flight end, each return counting one delivery more: while a cluster
//! re-elects leaders, that repeats with every reconnect.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use lapin::options::QueueDeleteOptions;
use serde_json::json;
use tokio::sync::Notify;
use warren_shared::JobStatus;
use warren_worker::{JobContext, Worker};

use crate::helpers::{Broker, DEADLINE, RunningWorker, body, series_value, worker_config};

#[tokio::test]
async fn a_failed_read_of_the_flow_settings_does_not_end_the_session() {
    let mut broker = Broker::new().await;
    let job_type = broker.uses("held");
    let mut events = broker.tap_events().await;
    // Jobs with `{"hold": true}` run until released; each start is counted.
    let (starts, release) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
    let handler = {
        let (starts, release) = (starts.clone(), release.clone());
        move |context: JobContext| {
            let (starts, release) = (starts.clone(), release.clone());
            async move {
                if context.payload["hold"] == true {
                    starts.fetch_add(1, Ordering::SeqCst);
                    release.notified().await;
                }
                Ok(context.payload)
            }
        }
    };
    let worker = Worker::builder()
        .handler("held", handler)
        .build(worker_config(&broker))
        .unwrap();
    let running = RunningWorker::start(worker).await;
    broker.wait_for_consumer(&job_type).await;
    let held = Broker::job(&job_type, json!({"hold": true}), 30_000);
    broker.publish_job(&held).await;
    let started = Instant::now();
    while starts.load(Ordering::SeqCst) == 0 {
        assert!(started.elapsed() < DEADLINE, "the held job never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Every read of the flow settings fails from now on.
    broker
        .channel
        .queue_delete(
            broker.topology.flow_queue().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    let failures = "warren_worker_flow_settings_read_failures_total";
    loop {
        let text = body(running.port, "/metrics").await;
        if series_value(&text, failures) >= 1 {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no failed read counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A job published now runs, in the same session: the worker did not reconnect.
    let quick = Broker::job(&job_type, json!({"hold": false}), 30_000);
    broker.publish_job(&quick).await;
    events.next(quick.id, JobStatus::Succeeded).await;
    let text = body(running.port, "/metrics").await;
    assert_eq!(
        series_value(&text, "warren_worker_sessions_total"),
        1,
        "the worker reconnected:\n{text}"
    );
    assert_eq!(
        starts.load(Ordering::SeqCst),
        1,
        "the held job started again"
    );

    release.notify_waiters();
    events.next(held.id, JobStatus::Succeeded).await;
    running.stop().await;
    broker.cleanup().await;
}
