//! Events applied per second by the PostgreSQL store, one transaction per event (what the
//! events consumer did before batching) versus one transaction per batch of 256 (what it does
//! now: everything already delivered, up to the prefetch).
//!
//! ```text
//! cargo run --release -p warren-gateway --example store_bench -- [EVENTS] [DATABASE_URL]
//! ```
//!
//! Runs in a throwaway schema of the given database (default the local `test` database).

#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs
)]

use std::time::Instant;

use chrono::Utc;
use serde_json::json;
use warren_gateway::{
    model::{JobSpec, SpecLimits},
    store::{JobStore, PostgresStore},
};
use warren_shared::{JobEvent, JobStatus, V1};

const BATCH: usize = 256;

/// Stores `events / 2` new jobs and returns a `running` and a `succeeded` event for each.
async fn prepare(store: &PostgresStore, events: usize) -> Vec<JobEvent> {
    let limits = SpecLimits {
        default_timeout_ms: 1_000,
        max_timeout_ms: 10_000,
        max_delay: std::time::Duration::from_secs(86_400),
    };
    let mut out = Vec::with_capacity(events);
    for _ in 0..events / 2 {
        let job = JobSpec::new("echo", &json!({}))
            .validate(&limits)
            .unwrap()
            .into_job();
        store.insert(job.clone(), None).await.unwrap();
        for (seq, status) in [(1, JobStatus::Running), (2, JobStatus::Succeeded)] {
            out.push(JobEvent {
                traceparent: None,
                v: V1,
                id: job.id,
                job_type: job.job_type.clone(),
                status,
                attempt: 1,
                seq,
                progress: None,
                result: None,
                error: None,
                next_attempt_at: None,
                worker: "bench".into(),
                at: Utc::now(),
            });
        }
    }
    // Interleave jobs the way a busy queue does: every job's running events, then outcomes.
    out.sort_by_key(|event| event.seq);
    out
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let events: usize = args
        .next()
        .map_or(20_000, |n| n.parse().expect("EVENTS must be a number"));
    let base = args
        .next()
        .unwrap_or_else(|| "postgresql://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!("bench_{}", uuid::Uuid::now_v7().simple());
    let (admin, connection) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    admin
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{separator}options=-csearch_path%3D{schema}");
    let store = PostgresStore::connect(&url).await.unwrap();

    let single = prepare(&store, events).await;
    let started = Instant::now();
    for event in &single {
        store.apply_event(event).await.unwrap();
    }
    let one_by_one = single.len() as f64 / started.elapsed().as_secs_f64();

    let batched = prepare(&store, events).await;
    let started = Instant::now();
    for chunk in batched.chunks(BATCH) {
        store.apply_events(chunk).await.unwrap();
    }
    let in_batches = batched.len() as f64 / started.elapsed().as_secs_f64();

    println!("events: {} per run", single.len());
    println!("one transaction per event:   {one_by_one:>9.0} events/s");
    println!(
        "one transaction per {BATCH}:     {in_batches:>9.0} events/s  ({:.1}x)",
        in_batches / one_by_one
    );
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}
