//! Messages a worker cannot read go to the dead-letter queue with the reason; the worker
//! goes on serving.

use lapin::{
    options::BasicGetOptions,
    types::{AMQPValue, ShortString},
};
use serde_json::json;
use tokio::sync::oneshot;
use warren_shared::{JobStatus, topology::DEAD_REASON_HEADER};
use warren_worker::{Worker, handlers};

use crate::helpers::{Broker, worker_config};

/// Polls the dead queue for the next dead letter and returns its reason header.
async fn next_dead_reason(broker: &Broker) -> String {
    let queue = broker.topology.dead_queue();
    broker.wait_for_queue(&queue, |ready, _| ready > 0).await;
    let dead = broker
        .channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    let headers = dead.delivery.properties.headers().clone().unwrap();
    match headers.inner().get(&ShortString::from(DEAD_REASON_HEADER)) {
        Some(AMQPValue::LongString(reason)) => reason.to_string(),
        other => panic!("no reason header: {other:?}"),
    }
}

#[tokio::test]
async fn unreadable_messages_are_dead_lettered_with_the_reason_and_the_worker_goes_on() {
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

    broker.publish_raw("echo", b"{not json").await;
    assert!(
        next_dead_reason(&broker)
            .await
            .contains("malformed message body")
    );

    let mut future_version = serde_json::to_value(Broker::job(&echo, json!({}), 1_000)).unwrap();
    future_version["v"] = json!(2);
    broker
        .publish_raw("echo", future_version.to_string().as_bytes())
        .await;
    assert!(
        next_dead_reason(&broker)
            .await
            .contains("unsupported schema version 2")
    );

    let mut wrong_type = serde_json::to_value(Broker::job(&echo, json!({}), 1_000)).unwrap();
    wrong_type["type"] = json!("not.mine");
    broker
        .publish_raw("echo", wrong_type.to_string().as_bytes())
        .await;
    assert!(
        next_dead_reason(&broker)
            .await
            .contains("no handler for job type \"not.mine\"")
    );

    let job = Broker::job(&echo, json!({"still": "serving"}), 1_000);
    broker.publish_job(&job).await;
    let done = events.next(job.id, JobStatus::Succeeded).await;
    assert_eq!(done.result, Some(json!({"still": "serving"})));

    let _ = stop.send(());
    running.await.unwrap().unwrap();
    broker.cleanup().await;
}
