//! Losing a RabbitMQ node loses no accepted job (DESIGN.md guarantee 9): on a local 3-node
//! cluster (`scripts/rabbitmq-cluster.sh`), a gateway and two workers given all three
//! addresses keep going while the node the gateway is on is killed with `kill -9`.

use std::{
    path::PathBuf,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{StreamExt, future::join_all};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::Mutex};
use warren_gateway::{Application, GatewayConfig, store::Stores};
use warren_shared::config::BrokerConfig;
use warren_worker::{Worker, WorkerConfig, handlers};

use crate::helpers::unique_namespace;

/// A cluster of the test's own, removed when dropped (also when the test fails).
struct Cluster {
    dir: PathBuf,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/rabbitmq-cluster.sh")
}

/// The first AMQP port of this process's cluster (nodes take it and the next two), so two test
/// runs on one machine (two checkouts, or the suite run twice at once) each have their own.
fn first_port() -> u16 {
    let slot = u16::try_from(std::process::id() % 100).unwrap_or(0);
    5711 + slot * 3
}

/// Runs the cluster script on the cluster kept in `dir`.
fn cluster_script(dir: &std::path::Path, args: &[&str]) -> String {
    let output = Command::new(script())
        .args(args)
        .env("WARREN_CLUSTER_DIR", dir)
        .env("WARREN_CLUSTER_PORT", first_port().to_string())
        .env(
            "WARREN_CLUSTER_NAME",
            format!("warrentest{}x", std::process::id()),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "rabbitmq-cluster.sh {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

impl Cluster {
    fn run(&self, args: &[&str]) -> String {
        cluster_script(&self.dir, args)
    }

    fn up() -> Self {
        let dir = std::env::temp_dir().join(format!("warren-test-cluster-{}", std::process::id()));
        let cluster = Self { dir };
        cluster.run(&["up"]);
        cluster
    }

    fn urls(&self) -> String {
        self.run(&["urls"]).trim().to_owned()
    }

    /// The queues of `namespace`, as `node` sees them.
    fn queues(&self, node: &str, namespace: &str) -> Vec<QueueRow> {
        self.run(&["queues", node])
            .lines()
            .filter(|line| line.starts_with(&format!("{namespace}.")))
            .map(QueueRow::parse)
            .collect()
    }
}

/// One line of `rabbitmq-cluster.sh queues`.
#[derive(Debug)]
#[allow(dead_code)] // the counts are read through Debug, in a failure's message
struct QueueRow {
    name: String,
    kind: String,
    durable: bool,
    ready: String,
    unacked: String,
    consumers: String,
}

impl QueueRow {
    fn parse(line: &str) -> Self {
        let mut fields = line.split('\t').map(str::to_owned);
        let mut next = || fields.next().unwrap_or_default();
        Self {
            name: next(),
            kind: next(),
            durable: next() == "true",
            ready: next(),
            unacked: next(),
            consumers: next(),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("down")
            .env("WARREN_CLUSTER_DIR", &self.dir)
            .env("WARREN_CLUSTER_NAME", "warrentest")
            .output();
    }
}

fn rabbitmq_installed() -> bool {
    Command::new("sh")
        .args(["-c", "command -v rabbitmq-server"])
        .output()
        .is_ok_and(|o| o.status.success())
}

async fn readyz(client: &reqwest::Client, base: &str) -> Option<Value> {
    let response = client.get(format!("{base}/readyz")).send().await.ok()?;
    (response.status() == 200).then_some(())?;
    response.json().await.ok()
}

async fn ready_within(client: &reqwest::Client, base: &str, limit: Duration) -> Value {
    let started = Instant::now();
    loop {
        if let Some(body) = readyz(client, base).await {
            return body;
        }
        assert!(
            started.elapsed() < limit,
            "the gateway was not ready within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One submit: its status, its job id if accepted, how long it took, and when it ended.
async fn submit(
    client: &reqwest::Client,
    base: &str,
    i: usize,
) -> (u16, Option<String>, Duration, Instant) {
    let started = Instant::now();
    let response = client
        .post(format!("{base}/v1/jobs"))
        .json(&json!({"type": "echo", "payload": {"i": i}}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let id = if status == 202 {
        let job: Value = response.json().await.unwrap();
        job["id"].as_str().map(str::to_owned)
    } else {
        None
    };
    (status, id, started.elapsed(), Instant::now())
}

/// Why the dead letters are there, counted by reason and by what they carry (a job or an event),
/// from the first 100 in the dead-letter queue, for a failure's message.
async fn dead_letter_reasons(client: &reqwest::Client, base: &str) -> String {
    let Ok(response) = client
        .get(format!("{base}/v1/dead-letters?limit=100"))
        .send()
        .await
    else {
        return "the dead letters could not be read".to_owned();
    };
    let page: Value = response.json().await.unwrap_or_default();
    let mut by_reason = std::collections::BTreeMap::new();
    for letter in page["dead_letters"].as_array().into_iter().flatten() {
        let carries = if letter["body"].get("status").is_some() {
            "event"
        } else {
            "job"
        };
        let reason = letter["reason"].as_str().unwrap_or("none").to_owned();
        *by_reason.entry((carries, reason)).or_insert(0) += 1;
    }
    format!("{} in all; of the first 100: {by_reason:?}", page["total"])
}

/// What the workers' metrics say of their settlements: outcomes the broker did not confirm at
/// first (each published again while the worker held the job, or left to the broker when its
/// channel had closed) and jobs failed as poison.
async fn settlement_counts(client: &reqwest::Client, metrics: &[String]) -> String {
    let series = [
        r#"warren_worker_unconfirmed_publishes_total{what="outcome"}"#,
        r#"warren_worker_dead_letters_total{reason="poison"}"#,
    ];
    let mut totals = [0_u64; 2];
    for url in metrics {
        let Ok(response) = client.get(url).send().await else {
            continue;
        };
        let text = response.text().await.unwrap_or_default();
        for (total, name) in totals.iter_mut().zip(series) {
            *total += text
                .lines()
                .find_map(|line| line.strip_prefix(name)?.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    format!(
        "{} outcomes not confirmed at first, {} jobs failed as poison",
        totals[0], totals[1]
    )
}

/// The errors of the first few jobs that ended `failed`, for a failure's message.
async fn failed_errors(client: &reqwest::Client, base: &str, ids: &[&String]) -> Vec<Value> {
    let mut errors = Vec::new();
    for id in ids {
        let Ok(response) = client.get(format!("{base}/v1/jobs/{id}")).send().await else {
            continue;
        };
        let job: Value = response.json().await.unwrap_or_default();
        if job["status"] == "failed" {
            errors.push(job["error"].clone());
        }
        if errors.len() == 3 {
            break;
        }
    }
    errors
}

async fn succeeded(client: &reqwest::Client, base: &str, id: &str) -> bool {
    status_after_wait(client, base, id).await == "succeeded"
}

/// The job's status once it is terminal, or after 30 s.
async fn status_after_wait(client: &reqwest::Client, base: &str, id: &str) -> String {
    let job: Value = client
        .get(format!("{base}/v1/jobs/{id}?wait=30"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    job["status"].as_str().unwrap_or("?").to_owned()
}

#[tokio::test]
async fn losing_the_node_the_gateway_is_on_loses_no_accepted_job() {
    if !rabbitmq_installed() {
        eprintln!("SKIPPED: rabbitmq-server is not installed, so no local cluster can be started");
        return;
    }
    if std::env::var_os("WARREN_TEST_LOG").is_some() {
        warren_shared::telemetry::init(warren_shared::config::LogFormat::Pretty);
    }
    let cluster = Cluster::up();
    let namespace = unique_namespace();
    let broker = BrokerConfig::new(&cluster.urls(), &namespace).unwrap();
    let mut config = GatewayConfig::with_broker(broker.clone());
    config.shutdown.shutdown_grace_secs = 5;
    let publish_timeout = config.publish_timeout();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = Application::with_parts(config, listener, Stores::memory()).unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let mut workers = Vec::new();
    let mut worker_metrics = Vec::new();
    for _ in 0..2 {
        let mut worker_config = WorkerConfig::with_broker(broker.clone());
        worker_config.shutdown.shutdown_grace_secs = 5;
        let worker = Worker::builder()
            .handler("echo", handlers::echo)
            .build(worker_config)
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        worker_metrics.push(format!("http://{}/metrics", listener.local_addr().unwrap()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        workers.push((
            stop,
            tokio::spawn(worker.run_on(listener, async {
                let _ = stopped.await;
            })),
        ));
    }
    let client = crate::helpers::http_client();
    ready_within(&client, &base, Duration::from_secs(30)).await;
    // The workers have declared the echo queue once an echo job is accepted.
    let started = Instant::now();
    while submit(&client, &base, 0).await.0 != 202 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no worker declared the echo queue"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 2,000 submits from 16 clients; once 300 are accepted, kill the gateway's node.
    let node = ready_within(&client, &base, Duration::from_secs(5)).await["broker_node"]
        .as_str()
        .unwrap()
        .to_owned();
    let port: u16 = node.rsplit(':').next().unwrap().parse().unwrap();
    let killed_node = match port - first_port() {
        0 => "1",
        1 => "2",
        _ => "3",
    };
    let surviving_node = if killed_node == "1" { "2" } else { "1" };
    // A durable classic queue lives on one node, and while that node is down every declaration
    // of it fails: a worker reconnecting to another node could not set up and would consume
    // nothing until the node came back. So every durable queue must be a quorum queue.
    let queues = cluster.queues(surviving_node, &namespace);
    let not_replicated: Vec<&QueueRow> = queues
        .iter()
        .filter(|q| q.durable && q.kind != "quorum")
        .collect();
    assert!(
        not_replicated.is_empty(),
        "durable queues that are not quorum queues: {not_replicated:?}"
    );
    let results = Arc::new(Mutex::new(Vec::new()));
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients = (0..16).map(|_| {
        let (client, base, results, killed_at, next) = (
            client.clone(),
            base.clone(),
            results.clone(),
            killed_at.clone(),
            next.clone(),
        );
        let cluster_dir = cluster.dir.clone();
        async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= 2_000 {
                    return;
                }
                let outcome = submit(&client, &base, i).await;
                let mut results = results.lock().await;
                results.push(outcome);
                let accepted = results.iter().filter(|r| r.0 == 202).count();
                drop(results);
                let mut killed = killed_at.lock().await;
                if accepted >= 300 && killed.is_none() {
                    cluster_script(&cluster_dir, &["kill", killed_node]);
                    *killed = Some(Instant::now());
                }
            }
        }
    });
    join_all(clients).await;
    let killed_at = killed_at.lock().await.unwrap();
    let results = results.lock().await;

    let longest = results.iter().map(|r| r.2).max().unwrap();
    assert!(
        longest < publish_timeout + Duration::from_secs(2),
        "a submit hung for {longest:?}"
    );
    let refused = results.iter().filter(|r| r.0 != 202).count();
    assert!(
        results.iter().all(|r| r.0 == 202 || r.0 == 503),
        "a submit answered something else than 202 or 503"
    );
    let first_after = results
        .iter()
        .filter(|r| r.0 == 202 && r.3 > killed_at)
        .map(|r| r.3 - killed_at)
        .min();
    eprintln!(
        "node {node} killed: {refused} submits refused with 503, first accepted submit {first_after:?} after the kill"
    );
    assert!(
        first_after.is_some(),
        "no submit was accepted after the node loss"
    );

    // Every accepted job ends succeeded, and the gateway is ready again without a restart.
    ready_within(&client, &base, Duration::from_secs(30)).await;
    let accepted: Vec<&String> = results.iter().filter_map(|r| r.1.as_ref()).collect();
    // A hundred at a time, as a client pool would: 2,000 connections opened at once overflow
    // the listener's backlog on a loaded machine, and the kernel resets some of them.
    let statuses: Vec<String> = futures_util::stream::iter(&accepted)
        .map(|id| status_after_wait(&client, &base, id))
        .buffered(100)
        .collect()
        .await;
    eprintln!(
        "every accepted job checked {:?} after the kill; workers: {}",
        killed_at.elapsed(),
        settlement_counts(&client, &worker_metrics).await
    );
    let lost: Vec<&String> = accepted
        .iter()
        .zip(&statuses)
        .filter(|(_, status)| *status != "succeeded")
        .map(|(id, _)| *id)
        .collect();
    if !lost.is_empty() {
        let mut by_status = std::collections::BTreeMap::new();
        for status in statuses.iter().filter(|s| *s != "succeeded") {
            *by_status.entry(status.as_str()).or_insert(0) += 1;
        }
        panic!(
            "{} of {} accepted jobs did not succeed within 30 s; by status: {by_status:?}; \
             errors of the first failed: {:?}; dead letters: {}; the namespace's queues as node \
             {surviving_node} sees them: {:#?}",
            lost.len(),
            accepted.len(),
            failed_errors(&client, &base, &lost).await,
            dead_letter_reasons(&client, &base).await,
            cluster.queues(surviving_node, &namespace)
        );
    }

    // The node comes back and the cluster is used as before.
    cluster.run(&["start", killed_node]);
    for i in 0..50 {
        let (status, id, _, _) = submit(&client, &base, i).await;
        assert_eq!(status, 202);
        assert!(succeeded(&client, &base, &id.unwrap()).await);
    }

    let _ = stop.send(());
    gateway.await.unwrap().unwrap();
    for (stop, worker) in workers {
        let _ = stop.send(());
        worker.await.unwrap().unwrap();
    }
}
