//! The floors: what RabbitMQ itself allows for the same work, without HTTP or a store.
//!
//! A publisher with confirms sends job-sized messages to a queue; a consumer publishes a
//! persistent result with confirm for each, then acks it (Warren's at-least-once rule); a
//! collector counts the results. The raw floor does the least the broker allows for that
//! ([`Route::Raw`]); the contract floor sends the same messages the way DESIGN.md has Warren
//! send them ([`Route::Contract`]), so the two apart are what the contract's topology costs the
//! broker, and Warren against the second is what Warren's own processes cost.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{StreamExt, future::join_all};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Event, ExchangeKind,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};
use warren_shared::{
    amqp::{self, Outgoing},
    trace::{TRACEPARENT, TraceContext},
};

/// How long the floor's measurements may take in all.
const DEADLINE: Duration = Duration::from_secs(600);
/// How long closing a connection may take.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// How the floor's messages travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// Through the default exchange straight to each queue, without headers; results taken
    /// without acknowledgement.
    Raw,
    /// As DESIGN.md fixes for Warren: jobs through a direct exchange with `mandatory`, results
    /// through a topic exchange bound `#`, a `traceparent` header on each message, and results
    /// acknowledged (`multiple`, every 16, as the gateway's events consumer acks a batch).
    Contract,
}

/// The results the contract floor's collector takes before one `multiple` ack.
const ACK_EVERY: usize = 16;

/// Where one floor's messages go: each queue's exchange and routing key under its route.
struct Target {
    route: Route,
    exchange: String,
    routing_key: String,
}

impl Target {
    fn new(route: Route, queue: &str, contract_key: &str) -> Self {
        match route {
            Route::Raw => Self {
                route,
                exchange: String::new(),
                routing_key: queue.to_owned(),
            },
            Route::Contract => Self {
                route,
                exchange: format!("{queue}.exchange"),
                routing_key: contract_key.to_owned(),
            },
        }
    }
}

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

/// For [`Route::Contract`], `target`'s exchange (of `kind`), with `queue` bound to it by the
/// target's routing key (`#` on a topic exchange).
async fn declare_route(
    channel: &Channel,
    queue: &str,
    target: &Target,
    kind: ExchangeKind,
) -> lapin::Result<()> {
    if target.route == Route::Raw {
        return Ok(());
    }
    let binding = if kind == ExchangeKind::Topic {
        "#"
    } else {
        target.routing_key.as_str()
    };
    let options = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    let exchange = target.exchange.as_str();
    channel
        .exchange_declare(exchange.into(), kind, options, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            binding.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Publishes one message to `target` and waits for its confirm. Along the contract's route it
/// goes through Warren's own [`amqp::publish_confirmed`], so it carries what Warren's messages
/// carry (`mandatory`, a `traceparent` header, the JSON content type, an id and a type).
async fn publish(channel: &Channel, target: &Target, body: &[u8]) -> lapin::Result<()> {
    if target.route == Route::Contract {
        let mut headers = FieldTable::default();
        headers.insert(
            TRACEPARENT.into(),
            AMQPValue::LongString(TraceContext::new_root().header().as_str().into()),
        );
        let outgoing = Outgoing {
            exchange: target.exchange.clone(),
            routing_key: target.routing_key.clone(),
            body,
            message_id: uuid::Uuid::now_v7().to_string(),
            kind: "echo",
            headers,
            mandatory: true,
        };
        return amqp::publish_confirmed(channel, outgoing, DEADLINE)
            .await
            .map_err(|error| io_error(format!("the contract floor's publish failed: {error}")));
    }
    let properties = BasicProperties::default().with_delivery_mode(2);
    channel
        .basic_publish(
            target.exchange.as_str().into(),
            target.routing_key.as_str().into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await?
        .await
        .map(|_| ())
}

/// Runs a floor along `route`: `messages` through with `concurrency` publishes in flight and
/// the consumer's prefetch at `prefetch`; then `samples` sequential round trips. Returns
/// (messages/s, round trip latencies).
pub(crate) async fn run(
    url: &str,
    route: Route,
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
    let to_jobs = Arc::new(Target::new(route, &jobs, "echo"));
    let to_results = Arc::new(Target::new(route, &results, "succeeded.echo"));
    let setup = connection.create_channel().await?;
    declare(&setup, &jobs).await?;
    declare(&setup, &results).await?;
    declare_route(&setup, &jobs, &to_jobs, ExchangeKind::Direct).await?;
    declare_route(&setup, &results, &to_results, ExchangeKind::Topic).await?;
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
    let results_target = to_results.clone();
    let consumer = tokio::spawn(async move {
        let mut in_flight = futures_util::stream::FuturesUnordered::new();
        loop {
            tokio::select! {
                Some(Ok(delivery)) = deliveries.next() => {
                    let (out, target) = (worker_out.clone(), results_target.clone());
                    in_flight.push(async move {
                        if publish(&out, &target, &delivery.data).await.is_ok() {
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
    let acked = route == Route::Contract;
    if acked {
        let prefetch = u16::try_from(concurrency.max(ACK_EVERY)).unwrap_or(u16::MAX);
        collector
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
    }
    let no_ack = BasicConsumeOptions {
        no_ack: !acked,
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

    // Throughput, then round trips; until the connection is lost (its confirms and deliveries
    // would never come) and within a deadline, so a lost connection fails the run with its
    // cause instead of hanging it, and the queues are still deleted.
    let publisher = confirm_channel(&connection).await?;
    let lost = lost(connection.events_listener());
    let measure = tokio::time::timeout(DEADLINE, async {
        // Throughput: `concurrency` publishers with confirms.
        let roles = crate::cpu::Roles::of(&[], &[]);
        let before = roles.read();
        let started = Instant::now();
        let per_task = messages.div_ceil(concurrency);
        let publishers = (0..concurrency).map(|_| {
            let (channel, target) = (publisher.clone(), to_jobs.clone());
            async move {
                for _ in 0..per_task {
                    publish(&channel, &target, body).await?;
                }
                lapin::Result::Ok(())
            }
        });
        let total = per_task * concurrency;
        let (published, collected_all) = tokio::join!(join_all(publishers), async {
            for taken in 1..=total {
                let result = collected.next().await;
                if acked && (taken % ACK_EVERY == 0 || taken == total) {
                    ack(result, true).await?;
                }
            }
            lapin::Result::Ok(())
        });
        for result in published {
            result?;
        }
        collected_all?;
        let throughput = total as f64 / started.elapsed().as_secs_f64();
        let per_job = before.per_job(&roles.read(), total);

        // Round trips, one at a time.
        let mut latencies = Vec::with_capacity(samples);
        for _ in 0..samples {
            let started = Instant::now();
            publish(&publisher, &to_jobs, body).await?;
            let result = collected.next().await;
            if acked {
                ack(result, false).await?;
            }
            latencies.push(started.elapsed());
        }
        lapin::Result::Ok((throughput, latencies, per_job))
    });
    let measured = tokio::select! {
        measured = measure => measured.unwrap_or_else(|_| Err(io_error(format!(
            "the floor did not finish within {DEADLINE:?}"
        )))),
        error = lost => Err(io_error(format!(
            "the floor's connection to RabbitMQ was lost mid-run: {error}"
        ))),
    };

    // Close the consumers' connection before deleting their queues: deleting a queue under a
    // live consumer makes the broker cancel it mid-flight. A lost connection's close may
    // never answer, hence the bound.
    consumer.abort();
    let closing = connection.close(200, "bench done".into());
    let _ = tokio::time::timeout(CLOSE_WAIT, closing).await;
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
    for target in [&to_jobs, &to_results] {
        if target.route == Route::Contract {
            let exchange = target.exchange.as_str();
            let deleted = channel
                .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                .await;
            if let Err(error) = deleted {
                eprintln!("could not delete {exchange}: {error}");
            }
        }
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, cleanup.close(200, "bench done".into())).await;
    measured
}

/// The error that ends a connection, once its `events` report one (a lost connection fails
/// none of the confirms or deliveries awaited on it).
async fn lost(events: impl futures_util::Stream<Item = Event> + Unpin) -> lapin::Error {
    let mut events = events;
    while let Some(event) = events.next().await {
        if let Event::Error(error) = event {
            return error;
        }
    }
    std::future::pending().await
}

fn io_error(message: String) -> lapin::Error {
    lapin::Error::from(std::io::Error::other(message))
}

/// Acks the collected `result` (with everything before it when `multiple`).
async fn ack(
    result: Option<lapin::Result<lapin::message::Delivery>>,
    multiple: bool,
) -> lapin::Result<()> {
    match result {
        Some(Ok(delivery)) => delivery
            .acker
            .ack(BasicAckOptions { multiple })
            .await
            .map(|_| ()),
        Some(Err(error)) => Err(error),
        None => Ok(()),
    }
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
