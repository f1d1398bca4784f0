//! A test's own namespace on the real RabbitMQ, a tap on its events, and the real `worker`
//! binary as a child process.

use std::{
    process::{ExitStatus, Stdio},
    time::Duration,
};

use chrono::Utc;
use futures_util::StreamExt;
use lapin::{
    Channel, Connection, ConnectionProperties, Consumer,
    options::{
        BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};
use serde_json::Value;
use tokio::{process::Child, sync::oneshot, time::Instant};
use warren_shared::{
    JobEvent, JobId, JobMessage, JobStatus, JobType, Topology, V1,
    amqp::{self, Outgoing},
    message, removal, topology,
};

pub use warren_test_support::{DEADLINE, amqp_url};
use warren_test_support::{Namespace, unique_namespace};

/// The configuration of an in-process worker in `broker`'s namespace (probes on a free port).
pub fn worker_config(broker: &Broker) -> warren_worker::WorkerConfig {
    let broker = warren_shared::config::BrokerConfig::new(&amqp_url(), &broker.namespace).unwrap();
    let mut config = warren_worker::WorkerConfig::with_broker(broker);
    config.metrics_addr = "127.0.0.1:0".parse().unwrap();
    config
}

/// A namespace of the test's own, with a connection to poke it.
pub struct Broker {
    pub namespace: String,
    pub topology: Topology,
    pub connection: Connection,
    pub channel: Channel,
    job_types: Vec<JobType>,
    /// Set once [`Broker::cleanup`] ran; until then `Drop` removes the namespace.
    cleaned: bool,
}

impl Drop for Broker {
    /// A test that failed before `cleanup` leaves nothing behind.
    fn drop(&mut self) {
        let mut namespace = Namespace::new(self.topology.clone());
        for job_type in &self.job_types {
            namespace.uses(job_type);
        }
        if self.cleaned {
            namespace.hand_over();
        }
    }
}

impl Broker {
    /// Declares a fresh namespace's core topology.
    pub async fn new() -> Self {
        let namespace = unique_namespace();
        let topology = Topology::new(namespace.clone());
        // Until `Self` exists to remove it, a declare that fails half-way removes what it made.
        let setup = Namespace::new(topology.clone());
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap();
        let channel = amqp::confirm_channel_on(&connection).await.unwrap();
        topology::declare_core(&channel, &topology).await.unwrap();
        let _no_types_yet = setup.hand_over();
        Self {
            namespace,
            topology,
            connection,
            channel,
            job_types: Vec::new(),
            cleaned: false,
        }
    }

    /// Records a job type whose queue the test creates (via a worker), for cleanup.
    pub fn uses(&mut self, job_type: &str) -> JobType {
        let job_type = JobType::parse(job_type).unwrap();
        self.job_types.push(job_type.clone());
        job_type
    }

    /// A job message of `job_type` with `payload`, first attempt.
    pub fn job(job_type: &JobType, payload: Value, timeout_ms: u64) -> JobMessage {
        JobMessage {
            v: V1,
            id: JobId::new(),
            job_type: job_type.clone(),
            payload,
            attempt: 1,
            max_attempts: 1,
            timeout_ms,
            created_at: Utc::now(),
            parents: None,
            priority: warren_shared::Priority::Normal,
        }
    }

    /// Publishes a job as the gateway would (mandatory, confirmed).
    pub async fn publish_job(&self, job: &JobMessage) {
        self.publish_raw(job.job_type.as_str(), &message::encode(job))
            .await;
    }

    /// Publishes any bytes to the jobs exchange under `routing_key`.
    pub async fn publish_raw(&self, routing_key: &str, body: &[u8]) {
        let outgoing = Outgoing {
            exchange: self.topology.jobs_exchange(),
            routing_key: routing_key.to_owned(),
            body,
            message_id: "raw".to_owned(),
            kind: routing_key,
            headers: FieldTable::default(),
            mandatory: true,
        };
        amqp::publish_confirmed(&self.channel, outgoing, DEADLINE)
            .await
            .unwrap();
    }

    /// Polls until the job queue of `job_type` has a consumer.
    pub async fn wait_for_consumer(&self, job_type: &JobType) {
        self.wait_for_queue(&self.topology.job_queue(job_type), |_, consumers| {
            consumers > 0
        })
        .await;
    }

    /// Polls a queue's (ready messages, consumers) until `done` holds.
    pub async fn wait_for_queue(&self, queue: &str, done: impl Fn(u32, u32) -> bool) {
        let started = Instant::now();
        loop {
            // A passive declare of a missing queue closes its channel: use a throwaway one.
            let probe = self.connection.create_channel().await.unwrap();
            let options = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            if let Ok(state) = probe
                .queue_declare(queue.into(), options, FieldTable::default())
                .await
                && done(state.message_count(), state.consumer_count())
            {
                return;
            }
            if started.elapsed() >= DEADLINE {
                let probe = self.connection.create_channel().await.unwrap();
                let options = QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                };
                let state = probe
                    .queue_declare(queue.into(), options, FieldTable::default())
                    .await;
                panic!("queue {queue} never reached the expected state: {state:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A queue of the test's own that receives every event of the namespace.
    /// Binds a queue that refuses every message (`x-max-length` 0, `reject-publish`) to every
    /// event, so the broker nacks each event a worker publishes until [`Broker::accept_events`].
    /// The queue is exclusive: it goes with the test's connection even if the test fails.
    pub async fn refuse_events(&self) {
        let mut arguments = FieldTable::default();
        arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
        arguments.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        let options = QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        };
        let queue = self.refusing_queue();
        self.channel
            .queue_declare(queue.as_str().into(), options, arguments)
            .await
            .unwrap();
        self.bind_to_events(&self.channel, &queue).await;
    }

    /// Binds `queue` to every event of the namespace.
    async fn bind_to_events(&self, channel: &Channel, queue: &str) {
        channel
            .queue_bind(
                queue.into(),
                self.topology.events_exchange().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    /// Removes the queue [`Broker::refuse_events`] bound: events are confirmed again.
    pub async fn accept_events(&self) {
        self.channel
            .queue_delete(self.refusing_queue().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }

    fn refusing_queue(&self) -> String {
        format!("{}.test-refuses-events", self.namespace)
    }

    pub async fn tap_events(&self) -> EventTap {
        let channel = self.connection.create_channel().await.unwrap();
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        let queue = channel
            .queue_declare("".into(), options, FieldTable::default())
            .await
            .unwrap();
        self.bind_to_events(&channel, queue.name().as_str()).await;
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        EventTap { consumer }
    }

    /// Deletes the namespace's exchanges and queues.
    pub async fn cleanup(mut self) {
        let names = removal::Names::declared(&self.topology, &self.job_types);
        removal::remove(&self.connection, &names, true)
            .await
            .unwrap();
        self.cleaned = true;
    }
}

/// Events of one namespace, in publish order.
pub struct EventTap {
    consumer: Consumer,
}

impl EventTap {
    /// The next event of job `id`, whatever its status; fails at the deadline.
    pub async fn next_any(&mut self, id: JobId) -> JobEvent {
        self.next_where(&format!("event for job {id}"), |event| event.id == id)
            .await
    }

    /// The next event of any job; fails at the deadline.
    pub async fn next_event(&mut self) -> JobEvent {
        self.next_where("any event", |_| true).await
    }

    /// The next event of job `id` with `status`, skipping others; fails at the deadline.
    pub async fn next(&mut self, id: JobId, status: JobStatus) -> JobEvent {
        let what = format!("{status} event for job {id}");
        self.next_where(&what, |event| event.id == id && event.status == status)
            .await
    }

    async fn next_where(&mut self, what: &str, wanted: impl Fn(&JobEvent) -> bool) -> JobEvent {
        let wait = async {
            loop {
                let delivery = self.consumer.next().await.unwrap().unwrap();
                delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .unwrap();
                let event: JobEvent = message::decode(&delivery.data).unwrap();
                if wanted(&event) {
                    return event;
                }
            }
        };
        tokio::time::timeout(DEADLINE, wait)
            .await
            .unwrap_or_else(|_| panic!("no {what} in time"))
    }
}

/// A worker running in the test's process, with its probes on a port of its own.
pub struct RunningWorker {
    /// The port of its `/metrics` and probes.
    pub port: u16,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), warren_worker::worker::RunError>>,
}

impl RunningWorker {
    /// Runs `worker` until [`RunningWorker::stop`].
    pub async fn start(worker: warren_worker::Worker) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(worker.run_on(listener, async {
            let _ = stopped.await;
        }));
        Self { port, stop, task }
    }

    /// Stops it as `SIGTERM` would, and checks it stopped cleanly within [`DEADLINE`].
    pub async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

/// The real `worker` binary, running in the test's namespace.
pub struct WorkerProcess {
    child: Child,
}

impl WorkerProcess {
    /// Starts the binary with the namespace and `env` on top of it. Its logs are discarded
    /// unless `WARREN_TEST_LOG` is set.
    pub fn spawn(broker: &Broker, env: &[(&str, &str)]) -> Self {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_worker"));
        command
            .env("WARREN_AMQP_URL", amqp_url())
            .env("WARREN_NAMESPACE", &broker.namespace)
            .env("WARREN_METRICS_ADDR", "127.0.0.1:0")
            .envs(env.iter().copied())
            .kill_on_drop(true);
        if std::env::var_os("WARREN_TEST_LOG").is_none() {
            command.stdout(Stdio::null()).stderr(Stdio::null());
        }
        Self {
            child: command.spawn().unwrap(),
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = self.child.id().unwrap().to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Kills the process with SIGKILL (no chance to clean up) and waits for it to be gone.
    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }

    /// Waits for the process to exit; fails at `deadline`.
    pub async fn exit_within(mut self, deadline: Duration) -> ExitStatus {
        tokio::time::timeout(deadline, self.child.wait())
            .await
            .expect("the worker did not exit in time")
            .unwrap()
    }
}

/// A free local port (bound and released; good enough for a test).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The body of `GET path` on a worker's probe port.
pub async fn body(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// The value of `series` (a name with its labels, as the page writes it) on a metrics page, or
/// 0 when the page does not have it yet.
pub fn series_value(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}
