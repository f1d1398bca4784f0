//! Traces over OTLP, end to end: the real gateway and worker binaries export to an OTLP
//! receiver started here, which decodes the protobuf. One job is one trace, linked across the
//! two processes; spans queued at SIGTERM still arrive; an unreachable collector neither slows
//! nor fails a job, and what it drops is counted.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, routing::post};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, any_value::Value as Any},
};
use prost::Message;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use warren_shared::{JobType, Topology};
use warren_test_support::Namespace;

use crate::helpers::{
    DEADLINE, amqp_url, http_client, metric_sum, test_broker, unique_namespace, worker_binary,
};

/// Removes the test's namespace (with the echo queue the worker declares), even on failure.
fn cleanup(namespace: &str) -> Namespace {
    let mut cleanup = Namespace::new(Topology::from_config(&test_broker(namespace)));
    cleanup.uses(&JobType::parse("echo".to_owned()).unwrap());
    cleanup
}

/// One span as the collector got it (ids in hex).
#[derive(Debug, Clone)]
struct Received {
    service: String,
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    /// OTLP's `SpanKind`: 2 server, 3 client, 4 producer, 5 consumer.
    kind: i32,
    attributes: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Collected {
    spans: Arc<Mutex<Vec<Received>>>,
    /// `traceparent` headers of the webhook deliveries received.
    hooks: Arc<Mutex<Vec<String>>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

async fn receive_traces(State(collected): State<Collected>, body: Bytes) -> &'static str {
    let request = ExportTraceServiceRequest::decode(body).unwrap();
    let mut spans = collected.spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(kv.value.as_ref()))
            .unwrap_or_default();
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            spans.push(Received {
                service: service.clone(),
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent: hex(&span.parent_span_id),
                name: span.name,
                kind: span.kind,
                attributes: span
                    .attributes
                    .iter()
                    .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
                    .collect(),
            });
        }
    }
    ""
}

async fn receive_hook(State(collected): State<Collected>, headers: HeaderMap) -> &'static str {
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    collected.hooks.lock().unwrap().push(traceparent);
    ""
}

/// An OTLP/HTTP receiver (and a webhook receiver) on a port of its own.
async fn start_collector() -> (Collected, String) {
    let collected = Collected::default();
    let app = Router::new()
        .route("/v1/traces", post(receive_traces))
        .route("/hook", post(receive_hook))
        .with_state(collected.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (collected, address)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The gateway (memory store) and one worker, both exporting to `endpoint`.
async fn start(namespace: &str, endpoint: &str, extra: &[(&str, &str)]) -> (Child, Child, String) {
    let port = free_port();
    let common = |command: &mut Command| {
        command
            .env("WARREN_AMQP_URL", amqp_url())
            .env("WARREN_NAMESPACE", namespace)
            .env("WARREN_RETRY_DELAYS", "100ms,200ms,400ms")
            .env("RUST_LOG", "warn")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .envs(extra.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true);
    };
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_api-gateway"));
    common(&mut gateway);
    let gateway = gateway
        .env("WARREN_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env(
            "WARREN_WEBHOOK_SECRET",
            "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        )
        .env("WARREN_WEBHOOK_ALLOW_PRIVATE", "true")
        .spawn()
        .unwrap();
    let mut worker = Command::new(worker_binary());
    common(&mut worker);
    let worker = worker
        .env("WARREN_WORKER_TYPES", "echo")
        .env("WARREN_METRICS_ADDR", format!("127.0.0.1:{}", free_port()))
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = http_client();
    let started = Instant::now();
    // Ready, and an echo job is routable (the worker declared its queue).
    loop {
        let accepted = client
            .post(format!("{base}/v1/jobs"))
            .json(&json!({"type": "echo"}))
            .send()
            .await
            .is_ok_and(|r| r.status() == 202);
        if accepted {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the gateway and worker did not get ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (gateway, worker, base)
}

/// Sends SIGTERM and waits for the process to exit.
async fn terminate(mut child: Child) {
    let pid = child.id().unwrap().to_string();
    let sent = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exited with {status}");
}

fn the_one<'a>(
    spans: &'a [Received],
    what: &str,
    test: impl Fn(&Received) -> bool,
) -> &'a Received {
    let found: Vec<&Received> = spans.iter().filter(|s| test(s)).collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {what} span, got {found:#?} among {spans:#?}"
    );
    found[0]
}

#[tokio::test]
async fn one_job_is_one_trace_across_both_processes_and_spans_queued_at_sigterm_arrive() {
    let namespace = unique_namespace();
    let cleanup = cleanup(&namespace);
    let (collected, collector) = start_collector().await;
    // A long schedule delay: nothing is sent before shutdown, so what arrives was flushed by it.
    let (gateway, worker, base) = start(
        &namespace,
        &collector,
        &[("OTEL_BSP_SCHEDULE_DELAY", "600000")],
    )
    .await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let response = http_client()
        .post(format!("{base}/v1/jobs"))
        .header("traceparent", format!("00-{trace_id}-{client_span}-01"))
        .header("Prefer", "wait=10")
        .json(&json!({"type": "echo", "payload": {"n": 1},
            "callback_url": format!("{collector}/hook")}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["status"], "succeeded");
    let started = Instant::now();
    while collected.hooks.lock().unwrap().is_empty() {
        assert!(started.elapsed() < DEADLINE, "the webhook never came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        collected.spans.lock().unwrap().is_empty(),
        "spans were sent before shutdown"
    );

    terminate(worker).await;
    terminate(gateway).await;

    let spans: Vec<Received> = collected
        .spans
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.trace_id == trace_id)
        .cloned()
        .collect();
    let http = the_one(&spans, "http", |s| s.kind == 2 && s.parent == client_span);
    assert_eq!(http.service, "warren-gateway");
    assert_eq!(http.name, "POST /v1/jobs");
    let submit = the_one(&spans, "submit", |s| {
        s.name == "submit" && s.parent == http.span_id
    });
    let exchange = format!("{namespace}.jobs");
    let publish = the_one(&spans, "publish", |s| {
        s.kind == 4 && s.parent == submit.span_id
    });
    assert_eq!(publish.name, format!("publish {exchange}"));
    assert_eq!(publish.attributes["messaging.system"], "rabbitmq");
    assert_eq!(publish.attributes["messaging.destination.name"], exchange);
    assert_eq!(
        publish.attributes["messaging.rabbitmq.destination.routing_key"],
        "echo"
    );
    assert_eq!(
        publish.attributes["messaging.message.id"],
        job["id"].as_str().unwrap()
    );
    // The worker's spans: children, across the process boundary, of the gateway's publish.
    let consume = the_one(&spans, "worker consumer", |s| {
        s.service == "warren-worker" && s.kind == 5 && s.parent == publish.span_id
    });
    assert_eq!(consume.name, format!("process {namespace}.jobs.echo"));
    the_one(&spans, "attempt", |s| {
        s.name == "attempt echo" && s.parent == consume.span_id
    });
    // The outcome, applied by the gateway, under the worker's span; the webhook under it.
    let apply = the_one(&spans, "apply_event", |s| {
        s.service == "warren-gateway" && s.kind == 5 && s.parent == consume.span_id
    });
    assert_eq!(
        apply.attributes["messaging.destination.name"],
        format!("{namespace}.events.store")
    );
    let webhook = the_one(&spans, "webhook", |s| {
        s.kind == 3 && s.parent == apply.span_id
    });
    let hooks = collected.hooks.lock().unwrap().clone();
    assert_eq!(hooks, [format!("00-{trace_id}-{}-01", webhook.span_id)]);
    cleanup.remove().await;
}

/// `warren_trace_spans_dropped_total` (sum over reasons) on `metrics`.
async fn dropped(metrics: &str) -> f64 {
    metric_sum(metrics, "warren_trace_spans_dropped_total").await
}

#[tokio::test]
async fn a_collector_that_never_answers_neither_slows_nor_fails_jobs_and_drops_are_counted() {
    let namespace = unique_namespace();
    let cleanup = cleanup(&namespace);
    // Accepts connections and never answers: the worst collector there is.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let (gateway, worker, base) = start(
        &namespace,
        &silent_url,
        &[
            ("OTEL_BSP_MAX_QUEUE_SIZE", "8"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "60000"),
        ],
    )
    .await;
    let client = http_client();
    let started = Instant::now();
    for n in 0..100 {
        let response = client
            .post(format!("{base}/v1/jobs"))
            .header("Prefer", "wait=10")
            .json(&json!({"type": "echo", "payload": {"n": n}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let job: Value = response.json().await.unwrap();
        assert_eq!(job["status"], "succeeded");
    }
    let took = started.elapsed();
    // Each job waits on nothing the collector does: 100 sync jobs take far less than one
    // export timeout (60 s).
    assert!(took < Duration::from_secs(20), "100 jobs took {took:?}");
    let dropped = dropped(&format!("{base}/metrics")).await;
    assert!(dropped > 0.0, "no dropped span counted");
    eprintln!("100 sync jobs in {took:?} with a silent collector; {dropped} spans dropped");
    held.abort();
    drop((gateway, worker));
    cleanup.remove().await;
}

#[tokio::test]
async fn the_sampler_is_honoured_across_processes() {
    let namespace = unique_namespace();
    let cleanup = cleanup(&namespace);
    let (collected, collector) = start_collector().await;
    // Parent-based (the default): a client that did not sample its trace gets no spans, from
    // either process; always_off on the gateway alone would still let a sampled client through.
    let (gateway, worker, base) = start(&namespace, &collector, &[]).await;
    let not_sampled = "00-5bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let sampled = "00-6bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for traceparent in [not_sampled, sampled] {
        let response = http_client()
            .post(format!("{base}/v1/jobs"))
            .header("traceparent", traceparent)
            .header("Prefer", "wait=10")
            .json(&json!({"type": "echo"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    terminate(worker).await;
    terminate(gateway).await;
    let spans = collected.spans.lock().unwrap().clone();
    let in_trace = |id: &str| spans.iter().filter(|s| s.trace_id == id).count();
    assert_eq!(
        in_trace("5bf92f3577b34da6a3ce929d0e0e4736"),
        0,
        "{spans:#?}"
    );
    let sampled_spans: Vec<&str> = spans
        .iter()
        .filter(|s| s.trace_id == "6bf92f3577b34da6a3ce929d0e0e4736")
        .map(|s| s.service.as_str())
        .collect();
    assert!(sampled_spans.contains(&"warren-gateway"), "{spans:#?}");
    assert!(sampled_spans.contains(&"warren-worker"), "{spans:#?}");
    cleanup.remove().await;
}

#[tokio::test]
async fn a_variable_warren_cannot_honour_stops_the_process_naming_it() {
    let run = Command::new(env!("CARGO_BIN_EXE_api-gateway"))
        .env("WARREN_AMQP_URL", amqp_url())
        .env("WARREN_NAMESPACE", unique_namespace())
        .env("WARREN_HTTP_ADDR", "127.0.0.1:0")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(DEADLINE, run).await.unwrap().unwrap();
    assert!(!output.status.success());
    // Logs go to stdout.
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        said.contains("OTEL_EXPORTER_OTLP_PROTOCOL") && said.contains("http/protobuf"),
        "{said}"
    );
}
