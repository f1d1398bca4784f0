//! Crash at the worst line of a delivery: a gateway killed with `kill -9` after the receiver
//! got the request but before the attempt was recorded. Its lease runs out, another gateway
//! sends the delivery again under the same `webhook-id` (so the receiver can drop it), and the
//! job ends `delivered` with the one recorded attempt.

use lapin::{Connection, ConnectionProperties};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use warren_shared::{Topology, topology};
use warren_worker::{Worker, WorkerConfig, handlers};

use crate::{
    helpers::{
        DEADLINE, TestSchema, amqp_url, spawn_app_with, spawn_gateway_process, test_broker,
        unique_namespace,
    },
    webhooks::{Receiver, SECRET_B64, callback_state, deliveries, verifies, webhooks_on},
};

#[tokio::test]
async fn a_gateway_killed_between_sending_and_recording_leaves_a_delivery_another_sends_again() {
    let schema = TestSchema::create().await;
    let namespace = unique_namespace();
    let mut receiver = Receiver::start(&[]).await;
    let secret = format!("whsec_{SECRET_B64}");
    // One slot and a 300 ms timeout: the lease is 600 ms.
    let (mut doomed, address) = spawn_gateway_process(
        &schema.url(),
        &namespace,
        &[
            ("WARREN_WEBHOOK_SECRET", &secret),
            ("WARREN_WEBHOOK_ALLOW_PRIVATE", "true"),
            ("WARREN_WEBHOOK_TIMEOUT_MS", "300"),
            ("WARREN_WEBHOOK_CONCURRENCY", "1"),
            ("WARREN_WEBHOOK_HOST_CONCURRENCY", "1"),
            ("WARREN_FAULT_PAUSE", "after_webhook_send"),
        ],
    )
    .await;
    let mut stderr = BufReader::new(doomed.stderr.take().unwrap()).lines();
    // The echo queue exists before the submit, so the job is routable.
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let topology = Topology::from_config(&test_broker(&namespace));
    topology::declare_core(&channel, &topology).await.unwrap();
    topology::declare_job_queue(&channel, &topology, &"echo".parse().unwrap())
        .await
        .unwrap();
    let mut config = WorkerConfig::with_broker(test_broker(&namespace));
    config.metrics_addr = "127.0.0.1:0".parse().unwrap();
    let worker = Worker::builder()
        .handler("echo", handlers::echo)
        .build(config)
        .unwrap();
    let (stop_worker, worker_stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(worker.run(async {
        let _ = worker_stopped.await;
    }));

    let submitted = crate::helpers::http_client()
        .post(format!("{address}/v1/jobs"))
        .json(&json!({"type": "echo", "callback_url": receiver.url}))
        .send()
        .await
        .unwrap();
    let id = submitted.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let first = receiver.next().await;
    let reached = async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if line.contains("fault point after_webhook_send reached") {
                return;
            }
        }
        panic!("the gateway ended without reaching the fault point");
    };
    tokio::time::timeout(DEADLINE, reached).await.unwrap();
    doomed.kill().await.unwrap(); // SIGKILL between sending and recording

    let survivor = spawn_app_with(|config| {
        webhooks_on(config);
        config.database_url = Some(schema.url());
        config.broker.namespace = namespace.clone();
    })
    .await;
    let again = receiver.next().await;
    assert!(verifies(&again));
    assert_eq!(
        again.headers["webhook-id"], first.headers["webhook-id"],
        "the same delivery"
    );
    callback_state(&survivor, &id, "delivered").await;
    let attempts = deliveries(&survivor, &id).await;
    assert_eq!(
        attempts.len(),
        1,
        "only the survivor's attempt was recorded: {attempts:?}"
    );
    let _ = stop_worker.send(());
    worker.await.unwrap().unwrap();
    let mut survivor = survivor;
    survivor.job_types = vec!["echo".parse().unwrap()];
    survivor.stop().await;
    schema.drop_schema().await;
}
