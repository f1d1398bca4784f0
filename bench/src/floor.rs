//! The raw floor: what RabbitMQ itself allows for the same work, without HTTP or a store.
//!
//! A publisher with confirms sends job-sized messages to a queue; a consumer publishes a
//! persistent result with confirm for each, then acks it (Warren's at-least-once rule); a
//! collector counts the results.

use std::time::{Duration, Instant};

use futures_util::{StreamExt, future::join_all};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};

/// How long the floor's measurements may take in all.
const DEADLINE: Duration = Duration::from_secs(600);

/// A quorum queue named `name`, like Warren's.
async fn declare(channel: &Channel, name: &str) -> lapin::Result<()> {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(name.into(), options, arguments)
        .await
        .map(|_| ())
}

async fn confirm_channel(connection: &Connection) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

async fn publish(channel: &Channel, queue: &str, body: &[u8]) -> lapin::Result<()> {
    let properties = BasicProperties::default().with_delivery_mode(2);
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await?
        .await
        .map(|_| ())
}

/// Runs the floor: `messages` through with `concurrency` publishes in flight and the consumer's
/// prefetch at `prefetch`; then `samples` sequential round trips. Returns (messages/s, round
/// trip latencies).
pub(crate) async fn run(
    url: &str,
    body: &[u8],
    messages: usize,
    concurrency: usize,
    prefetch: u16,
    samples: usize,
) -> lapin::Result<(f64, Vec<Duration>, serde_json::Value)> {
    let connection = connect(url).await?;
    let id = uuid::Uuid::now_v7().simple().to_string();
    let (jobs, results) = (
        format!("bench-floor-{id}.jobs"),
        format!("bench-floor-{id}.results"),
    );
    let setup = connection.create_channel().await?;
    declare(&setup, &jobs).await?;
    declare(&setup, &results).await?;
    drop(setup);

    // The consumer: result with confirm, then ack.
    let worker = connection.create_channel().await?;
    worker
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let worker_out = confirm_channel(&connection).await?;
    let mut deliveries = worker
        .basic_consume(
            jobs.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let results_queue = results.clone();
    let consumer = tokio::spawn(async move {
        let mut in_flight = futures_util::stream::FuturesUnordered::new();
        loop {
            tokio::select! {
                Some(Ok(delivery)) = deliveries.next() => {
                    let (out, queue) = (worker_out.clone(), results_queue.clone());
                    in_flight.push(async move {
                        if publish(&out, &queue, &delivery.data).await.is_ok() {
                            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                        }
                    });
                }
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                else => break,
            }
        }
    });

    // The collector.
    let collector = connection.create_channel().await?;
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    let mut collected = collector
        .basic_consume(
            results.as_str().into(),
            "".into(),
            no_ack,
            FieldTable::default(),
        )
        .await?;

    // Throughput, then round trips; within a deadline, so a lost connection (whose confirms
    // may never come) fails the run instead of hanging it, and the queues are still deleted.
    let publisher = confirm_channel(&connection).await?;
    let measured = tokio::time::timeout(DEADLINE, async {
        // Throughput: `concurrency` publishers with confirms.
        let roles = crate::cpu::Roles::of(&[], &[]);
        let before = roles.read();
        let started = Instant::now();
        let per_task = messages.div_ceil(concurrency);
        let publishers = (0..concurrency).map(|_| {
            let (channel, queue) = (publisher.clone(), jobs.clone());
            async move {
                for _ in 0..per_task {
                    publish(&channel, &queue, body).await?;
                }
                lapin::Result::Ok(())
            }
        });
        let total = per_task * concurrency;
        let (published, ()) = tokio::join!(join_all(publishers), async {
            for _ in 0..total {
                collected.next().await;
            }
        });
        for result in published {
            result?;
        }
        let throughput = total as f64 / started.elapsed().as_secs_f64();
        let per_job = before.per_job(&roles.read(), total);

        // Round trips, one at a time.
        let mut latencies = Vec::with_capacity(samples);
        for _ in 0..samples {
            let started = Instant::now();
            publish(&publisher, &jobs, body).await?;
            collected.next().await;
            latencies.push(started.elapsed());
        }
        lapin::Result::Ok((throughput, latencies, per_job))
    })
    .await;

    // Close the consumers' connection before deleting their queues: deleting a queue under a
    // live consumer makes the broker cancel it mid-flight.
    consumer.abort();
    let _ = connection.close(200, "bench done".into()).await;
    let cleanup = connect(url).await?;
    let channel = cleanup.create_channel().await?;
    for queue in [jobs, results] {
        let deleted = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        if let Err(error) = deleted {
            eprintln!("could not delete {queue}: {error}");
        }
    }
    let _ = cleanup.close(200, "bench done".into()).await;
    measured.map_err(|_| {
        lapin::Error::from(std::io::Error::other(format!(
            "the floor did not finish within {DEADLINE:?} (its connection to RabbitMQ was lost?)"
        )))
    })?
}

/// A connection to `url`, over TLS for `amqps://` trusting `WARREN_TLS_CA_FILE` as Warren does,
/// so the floor and Warren pay for the same link.
pub(crate) async fn connect(url: &str) -> lapin::Result<Connection> {
    let files = warren_shared::tls::TlsConfig {
        ca_file: std::env::var_os("WARREN_TLS_CA_FILE").map(std::path::PathBuf::from),
        ..Default::default()
    };
    let tls = files
        .amqp()
        .map_err(|error| lapin::Error::from(std::io::Error::other(error.to_string())))?;
    let runtime = lapin::runtime::default_runtime()?;
    Connection::connect_with_config(url, ConnectionProperties::default(), tls, runtime).await
}
