//! A broker link that goes silent does not wedge a worker: with a proxy between the worker and
//! RabbitMQ that stops forwarding (without closing), an outcome whose confirm does not come
//! within `WARREN_PUBLISH_TIMEOUT_MS` is published again while the worker holds the job, and
//! after the heal every job ends `succeeded` (the stalled one without running again) and new
//! jobs run at once.

use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;
use warren_shared::JobStatus;
use warren_test_support::proxy::Proxy;
use warren_worker::{Worker, handlers};

use crate::helpers::{Broker, DEADLINE, RunningWorker, body, series_value, worker_config};

#[tokio::test]
async fn an_outcome_without_a_confirm_is_sent_again_and_the_worker_goes_on() {
    let mut broker = Broker::new().await;
    let sleep = broker.uses("sleep");
    let mut events = broker.tap_events().await;
    let proxy = Proxy::start().await;
    let mut config = worker_config(&broker);
    config.broker.amqp_url = proxy.amqp_url().parse().unwrap();
    config.publish_timeout_ms = 1_000;
    let worker = Worker::builder()
        .handler("sleep", handlers::sleep)
        .build(config)
        .unwrap();
    let running = RunningWorker::start(worker).await;
    broker.wait_for_consumer(&sleep).await;

    // A job that is running when the link goes silent: its outcome gets no confirm.
    let stalled = Broker::job(&sleep, json!({"ms": 400}), 10_000);
    broker.publish_job(&stalled).await;
    events.next(stalled.id, JobStatus::Running).await;
    proxy.stall();
    let other = Broker::job(&sleep, json!({"ms": 0}), 10_000);
    broker.publish_job(&other).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.heal();

    let healed = Instant::now();
    // The confirm did not come in time, so the worker published the outcome again while it
    // held the job: the stalled job succeeds without a second start (which would announce
    // `running` again), and the other job runs too.
    let (mut stalled_done, mut other_done) = (false, false);
    while !(stalled_done && other_done) {
        let event = events.next_event().await;
        if event.id == other.id {
            other_done |= event.status == JobStatus::Succeeded;
        } else if event.id == stalled.id {
            assert_eq!(event.attempt, stalled.attempt);
            match event.status {
                JobStatus::Succeeded => stalled_done = true,
                status => panic!("the stalled job reported {status}: it ran again"),
            }
        }
    }
    let metrics = body(running.port, "/metrics").await;
    let unconfirmed = r#"warren_worker_unconfirmed_publishes_total{what="outcome"}"#;
    assert!(
        series_value(&metrics, unconfirmed) >= 1,
        "no outcome went unconfirmed:\n{metrics}"
    );
    // And the worker takes new work at once.
    let fresh = Broker::job(&sleep, json!({"ms": 0}), 10_000);
    broker.publish_job(&fresh).await;
    events.next(fresh.id, JobStatus::Succeeded).await;
    eprintln!("every job succeeded {:?} after the heal", healed.elapsed());
    assert!(healed.elapsed() < DEADLINE);

    running.stop().await;
    broker.cleanup().await;
}
