//! The worker's probes: alive always, ready only while consuming.

use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::{Broker, DEADLINE, WorkerProcess, body, free_port, series_value};

/// The status code of `GET path` on the probe port, or `None` while nothing listens yet.
async fn status(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// Polls until `GET path` answers `expected`.
async fn wait_for_status(port: u16, path: &str, expected: u16) {
    let started = Instant::now();
    while status(port, path).await != Some(expected) {
        assert!(
            started.elapsed() < DEADLINE,
            "{path} never answered {expected}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_worker_without_a_broker_is_alive_but_not_ready() {
    let broker = Broker::new().await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let worker = WorkerProcess::spawn(
        &broker,
        &[
            ("WARREN_METRICS_ADDR", &addr),
            ("WARREN_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f"),
        ],
    );
    wait_for_status(port, "/healthz", 200).await;
    assert_eq!(status(port, "/readyz").await, Some(503));
    worker.terminate();
    assert!(worker.exit_within(DEADLINE).await.success());
    broker.cleanup().await;
}

#[tokio::test]
async fn a_consuming_worker_is_ready() {
    let mut broker = Broker::new().await;
    broker.uses("echo");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let worker = WorkerProcess::spawn(
        &broker,
        &[
            ("WARREN_METRICS_ADDR", &addr),
            ("WARREN_WORKER_TYPES", "echo"),
        ],
    );
    wait_for_status(port, "/readyz", 200).await;
    worker.terminate();
    assert!(worker.exit_within(DEADLINE).await.success());
    broker.cleanup().await;
}

#[tokio::test]
async fn the_worker_metrics_move_when_a_job_runs() {
    let mut broker = Broker::new().await;
    let echo = broker.uses("echo");
    let mut events = broker.tap_events().await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let worker = WorkerProcess::spawn(
        &broker,
        &[
            ("WARREN_METRICS_ADDR", &addr),
            ("WARREN_WORKER_TYPES", "echo"),
        ],
    );
    broker.wait_for_consumer(&echo).await;
    let job = Broker::job(&echo, serde_json::json!(1), 1_000);
    broker.publish_job(&job).await;
    events
        .next(job.id, warren_shared::JobStatus::Succeeded)
        .await;

    // The outcome event goes out before the counters move: poll until they have.
    let expected = [
        r#"warren_worker_jobs_finished_total{job_type="echo",status="succeeded"} 1"#,
        r#"warren_worker_job_run_seconds_count{job_type="echo"} 1"#,
        r#"warren_worker_job_queue_wait_seconds_count{job_type="echo"} 1"#,
        "warren_worker_jobs_in_flight 0",
    ];
    let started = Instant::now();
    loop {
        let text = body(port, "/metrics").await;
        if expected.iter().all(|series| text.contains(series)) {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "series missing from\n{text}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    worker.terminate();
    assert!(worker.exit_within(DEADLINE).await.success());
    broker.cleanup().await;
}

/// `warren_worker_acks_sent_total` and `warren_worker_ack_frames_total` from a metrics page.
fn acks_and_frames(text: &str) -> (u64, u64) {
    (
        series_value(text, "warren_worker_acks_sent_total"),
        series_value(text, "warren_worker_ack_frames_total"),
    )
}

#[tokio::test]
async fn every_job_is_acked_and_the_acks_of_a_burst_share_frames() {
    let mut broker = Broker::new().await;
    let echo = broker.uses("echo");
    let mut events = broker.tap_events().await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let worker = WorkerProcess::spawn(
        &broker,
        &[
            ("WARREN_METRICS_ADDR", &addr),
            ("WARREN_WORKER_TYPES", "echo"),
            ("WARREN_WORKER_CONCURRENCY", "16"),
        ],
    );
    broker.wait_for_consumer(&echo).await;
    let jobs: Vec<_> = (0..64)
        .map(|i| Broker::job(&echo, serde_json::json!(i), 10_000))
        .collect();
    for job in &jobs {
        broker.publish_job(job).await;
    }
    // Outcomes come in any order: take events until every job has succeeded.
    let mut waiting: std::collections::HashSet<_> = jobs.iter().map(|job| job.id).collect();
    while !waiting.is_empty() {
        let event = events.next_event().await;
        if event.status == warren_shared::JobStatus::Succeeded {
            waiting.remove(&event.id);
        }
    }

    // Acks follow the outcomes within a few milliseconds: poll until all 64 are sent.
    let started = Instant::now();
    let (acks, frames) = loop {
        let (acks, frames) = acks_and_frames(&body(port, "/metrics").await);
        if acks == 64 {
            break (acks, frames);
        }
        assert!(started.elapsed() < DEADLINE, "{acks} of 64 jobs acked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        (1..=acks).contains(&frames),
        "{frames} ack frames for {acks} jobs"
    );
    eprintln!("{acks} jobs acked in {frames} basic.ack frames");
    // Nothing was left unacked: the queue is empty once the worker is gone.
    worker.terminate();
    assert!(worker.exit_within(DEADLINE).await.success());
    let queue = broker.topology.job_queue(&echo);
    broker
        .wait_for_queue(&queue, |ready, consumers| ready == 0 && consumers == 0)
        .await;
    broker.cleanup().await;
}
