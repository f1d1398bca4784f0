//! One trace id links a request, its job and the worker that ran it, in the logs.

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use serde_json::{Value, json};
use tracing_subscriber::fmt::MakeWriter;
use warren_worker::{Worker, handlers};

use crate::helpers::spawn_app;

/// Log output captured in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Self;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The `trace_id`s of the JSON log lines from `crate_name` about job `id`.
fn trace_ids(logs: &[Value], crate_name: &str, id: &str) -> Vec<String> {
    logs.iter()
        .filter(|line| {
            line["target"]
                .as_str()
                .is_some_and(|t| t.starts_with(crate_name))
        })
        .filter_map(|line| {
            let spans = line["spans"].as_array()?;
            spans
                .iter()
                .any(|span| span["job_id"] == id)
                .then_some(())?;
            spans
                .iter()
                .find_map(|span| span["trace_id"].as_str().map(str::to_owned))
        })
        .collect()
}

/// Runs one `echo` job, with `traceparent` if given, and returns the gateway's and the
/// worker's trace ids for it.
async fn traced_job(traceparent: Option<&str>) -> (Vec<String>, Vec<String>) {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(true)
        .with_writer(logs.clone())
        .finish();
    // The test's runtime is single-threaded, so the gateway's and the worker's tasks all log
    // through this subscriber.
    let _logging = tracing::subscriber::set_default(subscriber);
    let mut app = spawn_app().await;
    app.spawn_worker(Worker::builder().handler("echo", handlers::echo))
        .await;
    // Other tests' threads log without a subscriber; a callsite they register while this one
    // is being registered can keep a stale "never" interest. Recompute it now that this
    // subscriber exists, so the job's spans and events reach it.
    tracing::callsite::rebuild_interest_cache();
    let mut request = app
        .client
        .post(format!("{}/v1/jobs", app.address))
        .json(&json!({"type": "echo"}));
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let job: Value = request.send().await.unwrap().json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    app.wait_for_status(&id, "succeeded").await;
    app.stop().await;

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    (
        trace_ids(&lines, "warren_gateway", &id),
        trace_ids(&lines, "warren_worker", &id),
    )
}

#[tokio::test]
async fn the_worker_logs_the_trace_id_of_the_clients_request() {
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let (gateway, worker) = traced_job(Some(&format!("00-{trace_id}-b7ad6b7169203331-01"))).await;
    assert!(
        !gateway.is_empty() && !worker.is_empty(),
        "no job log lines: {gateway:?} {worker:?}"
    );
    assert!(
        gateway.iter().chain(&worker).all(|id| id == trace_id),
        "{gateway:?} {worker:?}"
    );
}

#[tokio::test]
async fn without_a_traceparent_the_gateway_starts_a_trace_the_worker_continues() {
    let (gateway, worker) = traced_job(None).await;
    assert!(
        !gateway.is_empty() && !worker.is_empty(),
        "no job log lines: {gateway:?} {worker:?}"
    );
    let first = &gateway[0];
    assert_eq!(first.len(), 32);
    assert!(
        gateway.iter().chain(&worker).all(|id| id == first),
        "{gateway:?} {worker:?}"
    );
}
