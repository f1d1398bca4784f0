//! `warren-admin remove-namespace`, the real binary: refused while a gateway and a worker
//! consume, then removes every queue and exchange of the namespace once they stopped, the job
//! queues included without naming their types or reaching the management plugin (the
//! namespace's registry of job types names them).

use lapin::{
    Connection, ConnectionProperties,
    options::{ExchangeDeclareOptions, QueueDeclareOptions},
    types::FieldTable,
};
use warren_worker::{Worker, handlers};

use crate::helpers::{DEADLINE, amqp_url, spawn_app};

/// Runs `warren-admin remove-namespace` on `namespace`; (succeeded, stdout, stderr).
async fn remove_namespace(namespace: &str, extra: &[&str]) -> (bool, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren-admin"))
        .arg("remove-namespace")
        .args(extra)
        .env("WARREN_AMQP_URL", amqp_url())
        .env("WARREN_NAMESPACE", namespace)
        .env("WARREN_RETRY_DELAYS", "100ms,200ms,400ms")
        .output()
        .await
        .unwrap();
    let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
    (
        output.status.success(),
        text(output.stdout),
        text(output.stderr),
    )
}

/// Whether the queue (or, with `exchange`, the exchange) exists: a passive declare succeeds.
async fn exists(connection: &Connection, name: &str, exchange: bool) -> bool {
    let channel = connection.create_channel().await.unwrap();
    if exchange {
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        let kind = lapin::ExchangeKind::Direct;
        channel
            .exchange_declare(name.into(), kind, passive, FieldTable::default())
            .await
            .is_ok()
    } else {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(name.into(), passive, FieldTable::default())
            .await
            .is_ok()
    }
}

#[tokio::test]
async fn remove_namespace_refuses_while_consumed_then_removes_everything() {
    let mut app = spawn_app().await;
    let builder = Worker::builder()
        .handler("echo", handlers::echo)
        .handler("sleep", handlers::sleep);
    app.spawn_worker(builder).await;
    let (namespace, topology) = (app.broker.namespace.clone(), app.topology());
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let job_queue = topology.job_queue(&"echo".parse().unwrap());

    let (removed, _, refusal) = remove_namespace(&namespace, &[]).await;
    assert!(!removed, "removed a namespace that is in use");
    assert!(
        refusal.contains("consumer(s)") && refusal.contains("--force"),
        "{refusal}"
    );
    assert!(
        exists(&connection, &job_queue, false).await,
        "a refused removal deleted something"
    );

    app.stop_processes().await;
    // The broker drops a stopped process's consumers a moment after it is gone.
    let started = tokio::time::Instant::now();
    let (said, problem) = loop {
        let (removed, said, problem) = remove_namespace(&namespace, &[]).await;
        if removed || started.elapsed() > DEADLINE {
            assert!(removed, "{problem}");
            break (said, problem);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(problem.is_empty(), "{problem}");
    assert!(said.contains(&job_queue), "{said}");
    for queue in [
        job_queue,
        topology.job_queue(&"sleep".parse().unwrap()),
        topology.types_queue(),
        topology.events_store_queue(),
        topology.dead_queue(),
        topology.retry_queue(std::time::Duration::from_millis(100)),
    ] {
        assert!(!exists(&connection, &queue, false).await, "{queue} is left");
    }
    for exchange in [
        topology.jobs_exchange(),
        topology.events_exchange(),
        topology.control_exchange(),
    ] {
        assert!(
            !exists(&connection, &exchange, true).await,
            "{exchange} is left"
        );
    }
}
