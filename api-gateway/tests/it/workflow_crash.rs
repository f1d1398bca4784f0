//! Workflows across gateway crashes, on PostgreSQL with two gateways: every step runs once and
//! the join runs once, whichever gateway applies which outcome and whichever dies.
//!
//! The worst point is inside the events consumer: a batch of step outcomes is stored and
//! acked, and the gateway dies before it settles their workflow (releases the join). Nothing
//! in RabbitMQ asks for that settle again; only the store's mark does, and the surviving
//! gateway's sweeper must find it.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use lapin::{Connection, ConnectionProperties};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use warren_shared::{Topology, topology};
use warren_worker::{JobContext, Worker, WorkerConfig, handlers};

use crate::{
    helpers::{
        DEADLINE, TestApp, TestSchema, amqp_url, http_client, spawn_app_with,
        spawn_gateway_process, test_broker, unique_namespace,
    },
    workflows::finished,
};

/// Steps in the fan-out.
const FAN_OUT: usize = 50;

/// A 50-way fan-out joined by one `join` step.
fn fan_out() -> Value {
    let mut steps: Vec<Value> = (0..FAN_OUT)
        .map(|i| json!({"name": format!("part-{i}"), "type": "echo", "payload": {"i": i}}))
        .collect();
    let parts: Vec<String> = (0..FAN_OUT).map(|i| format!("part-{i}")).collect();
    steps.push(json!({"name": "join", "type": "join", "depends_on": parts}));
    json!({ "steps": steps })
}

/// A worker in `namespace` whose `join` handler counts its runs.
async fn worker(
    namespace: &str,
    joins: Arc<AtomicUsize>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let mut config = WorkerConfig::with_broker(test_broker(namespace));
    config.metrics_addr = "127.0.0.1:0".parse().unwrap();
    let worker = Worker::builder()
        .handler("echo", handlers::echo)
        .handler("join", move |context: JobContext| {
            let joins = joins.clone();
            async move {
                joins.fetch_add(1, Ordering::SeqCst);
                handlers::echo(context).await
            }
        })
        .build(config)
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        worker
            .run(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (stop, task)
}

/// Declares the job queues first, so a gateway process can route the first steps.
async fn declare_queues(namespace: &str) {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let topology = Topology::from_config(&test_broker(namespace));
    topology::declare_core(&channel, &topology).await.unwrap();
    for job_type in ["echo", "join"] {
        topology::declare_job_queue(&channel, &topology, &job_type.parse().unwrap())
            .await
            .unwrap();
    }
    let _ = connection.close(200, "declared".into()).await;
}

/// Waits until `doomed` says it reached its fault point, then kills it with SIGKILL.
async fn kill_at_fault_point(
    doomed: &mut tokio::process::Child,
    stderr: &mut tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
) {
    let reached = async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if line.contains("fault point after_step_outcome reached") {
                return;
            }
        }
        panic!("the gateway ended without reaching the fault point");
    };
    tokio::time::timeout(DEADLINE, reached).await.unwrap();
    doomed.kill().await.unwrap();
}

/// Stops the surviving gateway (removing the namespace with the job types the test used) and
/// drops the schema.
async fn tear_down(mut survivor: TestApp, schema: TestSchema) {
    survivor.job_types = vec!["echo".parse().unwrap(), "join".parse().unwrap()];
    survivor.stop().await;
    schema.drop_schema().await;
}

/// Checks the workflow succeeded with one job per step, and the join ran once and saw every
/// part's result.
async fn assert_completed_once(survivor: &TestApp, id: &str, joins: &AtomicUsize) {
    let workflow = finished(survivor, id).await;
    assert_eq!(workflow["status"], "succeeded", "{workflow}");
    let listed: Value = survivor
        .get(&format!("/v1/jobs?workflow={id}&limit=500"))
        .await
        .json()
        .await
        .unwrap();
    let mut per_step: HashMap<String, usize> = HashMap::new();
    for job in listed["jobs"].as_array().unwrap() {
        *per_step
            .entry(job["step"].as_str().unwrap().to_owned())
            .or_default() += 1;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    assert_eq!(per_step.len(), FAN_OUT + 1, "{per_step:?}");
    assert!(per_step.values().all(|n| *n == 1), "{per_step:?}");
    let join_id = workflow["steps"][FAN_OUT]["job_id"].as_str().unwrap();
    let join = survivor.job(join_id).await;
    assert_eq!(
        join["result"]["parents"].as_object().unwrap().len(),
        FAN_OUT
    );
    assert_eq!(joins.load(Ordering::SeqCst), 1, "the join ran once");
}

#[tokio::test]
async fn a_gateway_killed_after_storing_step_outcomes_but_before_settling_loses_no_release() {
    let schema = TestSchema::create().await;
    let namespace = unique_namespace();
    declare_queues(&namespace).await;
    let (mut doomed, address) = spawn_gateway_process(
        &schema.url(),
        &namespace,
        &[("WARREN_FAULT_PAUSE", "after_step_outcome")],
    )
    .await;
    let mut stderr = BufReader::new(doomed.stderr.take().unwrap()).lines();
    let survivor = spawn_app_with(|config| {
        config.database_url = Some(schema.url());
        config.broker.namespace = namespace.clone();
    })
    .await;
    let joins = Arc::new(AtomicUsize::new(0));
    let (stop_worker, worker_task) = worker(&namespace, joins.clone()).await;

    let submitted = http_client()
        .post(format!("{address}/v1/workflows"))
        .json(&fan_out())
        .send()
        .await
        .unwrap();
    assert_eq!(submitted.status(), 201);
    let id = submitted.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    kill_at_fault_point(&mut doomed, &mut stderr).await; // outcomes stored and acked, not settled

    assert_completed_once(&survivor, &id, &joins).await;
    let _ = stop_worker.send(());
    worker_task.await.unwrap();
    tear_down(survivor, schema).await;
}

#[tokio::test]
async fn a_gateway_killed_right_after_accepting_a_fan_out_leaves_it_to_the_other() {
    let schema = TestSchema::create().await;
    let namespace = unique_namespace();
    declare_queues(&namespace).await;
    let (mut doomed, address) = spawn_gateway_process(&schema.url(), &namespace, &[]).await;
    let survivor = spawn_app_with(|config| {
        config.database_url = Some(schema.url());
        config.broker.namespace = namespace.clone();
    })
    .await;
    let joins = Arc::new(AtomicUsize::new(0));
    let (stop_worker, worker_task) = worker(&namespace, joins.clone()).await;

    let submitted = http_client()
        .post(format!("{address}/v1/workflows"))
        .json(&fan_out())
        .send()
        .await
        .unwrap();
    doomed.kill().await.unwrap(); // SIGKILL right after the answer
    assert_eq!(submitted.status(), 201);
    let id = submitted.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    assert_completed_once(&survivor, &id, &joins).await;
    let _ = stop_worker.send(());
    worker_task.await.unwrap();
    tear_down(survivor, schema).await;
}

#[tokio::test]
async fn the_last_outcome_stored_by_a_gateway_that_died_before_settling_is_settled_by_the_sweeper()
{
    let schema = TestSchema::create().await;
    let namespace = unique_namespace();
    declare_queues(&namespace).await;
    // The doomed gateway is the only one while the first step runs, so it applies the outcome
    // that releases the second, acks it, and dies before settling: RabbitMQ holds nothing more
    // for this workflow, only the store's mark says it is owed a settle.
    let (mut doomed, address) = spawn_gateway_process(
        &schema.url(),
        &namespace,
        &[("WARREN_FAULT_PAUSE", "after_step_outcome")],
    )
    .await;
    let mut stderr = BufReader::new(doomed.stderr.take().unwrap()).lines();
    let joins = Arc::new(AtomicUsize::new(0));
    let (stop_worker, worker_task) = worker(&namespace, joins.clone()).await;
    let submitted = http_client()
        .post(format!("{address}/v1/workflows"))
        .json(&json!({"steps": [
            {"name": "first", "type": "echo", "payload": {"n": 1}},
            {"name": "second", "type": "join", "depends_on": ["first"]},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(submitted.status(), 201);
    let id = submitted.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    kill_at_fault_point(&mut doomed, &mut stderr).await;

    let survivor = spawn_app_with(|config| {
        config.database_url = Some(schema.url());
        config.broker.namespace = namespace.clone();
    })
    .await;
    let workflow = finished(&survivor, &id).await;
    assert_eq!(workflow["status"], "succeeded", "{workflow}");
    let second = survivor
        .job(workflow["steps"][1]["job_id"].as_str().unwrap())
        .await;
    assert_eq!(second["result"]["parents"], json!({"first": {"n": 1}}));
    assert_eq!(joins.load(Ordering::SeqCst), 1);
    let metrics = survivor.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("warren_workflow_settles_total{reason=\"swept\"} 1"),
        "the survivor's sweeper settled it: {metrics}"
    );
    let _ = stop_worker.send(());
    worker_task.await.unwrap();
    tear_down(survivor, schema).await;
}
