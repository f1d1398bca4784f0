//! Warren's benchmark. Against a running RabbitMQ it starts the release `api-gateway` and
//! `worker` binaries in a namespace of its own and measures, in one run:
//!
//! 1. end-to-end throughput: `--jobs` `echo` jobs submitted over HTTP by `--concurrency`
//!    clients, until the gateway's store has them all `succeeded`;
//! 2. sync latency: `--sync-samples` sequential `Prefer: wait` submits of `echo`;
//! 3. the raw floor on the same broker and message size: publisher with confirms → consumer
//!    that publishes a persistent result with confirm, then acks → collector;
//!
//! and prints each Warren figure beside its floor, with the peak RSS of gateway and worker,
//! and writes the figures as JSON (`--json`).
//!
//! ```text
//! cargo build --release --bins && cargo run --release -p warren-bench -- --jobs 20000
//! ```

#![allow(clippy::print_stdout, missing_docs)]

mod floor;

use std::{
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use warren_shared::{JobId, JobMessage, JobType, V1, message};

/// What to measure.
#[derive(Debug, Parser)]
#[command(
    name = "warren-bench",
    about = "Warren's throughput and latency beside the raw RabbitMQ floor"
)]
struct Args {
    /// Jobs for the throughput run.
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
    /// Concurrent HTTP clients (and publishes in flight for the floor).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Sequential synchronous round trips measured.
    #[arg(long, default_value_t = 1_000)]
    sync_samples: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Jobs in flight per worker (and the floor consumer's prefetch).
    #[arg(long, default_value_t = 64)]
    worker_concurrency: u16,
    /// RabbitMQ.
    #[arg(
        long,
        env = "WARREN_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "bench-results.json")]
    json: PathBuf,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn binary(name: &str) -> Result<PathBuf, Error> {
    let path = std::env::current_exe()?.with_file_name(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found: run `cargo build --release --bins` first",
            path.display()
        )
        .into())
    }
}

fn free_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn spawn(path: &PathBuf, env: &[(&str, String)]) -> Result<Child, Error> {
    let mut command = Command::new(path);
    command
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "warn");
    command
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    Ok(command.spawn()?)
}

/// Peak resident memory of a process, in MiB (`VmHWM`).
fn peak_rss_mib(child: &Child) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()?)).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank]
}

fn millis(durations: &[Duration]) -> Vec<f64> {
    let mut ms: Vec<f64> = durations.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    ms
}

/// The sum of `warren_jobs_finished_total` for succeeded `echo` jobs in the gateway's metrics.
async fn echo_succeeded(client: &reqwest::Client, base: &str) -> Result<f64, Error> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let series = r#"warren_jobs_finished_total{job_type="echo",status="succeeded"} "#;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(series)?.parse().ok())
        .unwrap_or(0.0))
}

async fn submit(
    client: &reqwest::Client,
    base: &str,
    i: usize,
    prefer_wait: bool,
) -> Result<u16, Error> {
    let mut request = client
        .post(format!("{base}/v1/jobs"))
        .json(&json!({"type": "echo", "payload": {"i": i}}));
    if prefer_wait {
        request = request.header("prefer", "wait=10");
    }
    Ok(request.send().await?.status().as_u16())
}

/// Submits `jobs` with `concurrency` clients; returns (submit seconds, until-all-succeeded seconds).
async fn throughput(
    client: &reqwest::Client,
    base: &str,
    jobs: usize,
    concurrency: usize,
) -> Result<(f64, f64), Error> {
    let before = echo_succeeded(client, base).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let clients: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, base, next) = (client.clone(), base.to_owned(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= jobs {
                        return Ok::<(), Error>(());
                    }
                    let status = submit(&client, &base, i, false).await?;
                    if status != 202 {
                        return Err(format!("submit answered {status}").into());
                    }
                }
            })
        })
        .collect();
    for handle in clients {
        handle.await??;
    }
    let submitted = started.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    while echo_succeeded(client, base).await? - before < jobs as f64 {
        if started.elapsed() > Duration::from_secs(600) {
            return Err("jobs did not all succeed within 10 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((submitted, started.elapsed().as_secs_f64()))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let namespace = format!("bench-{}", uuid::Uuid::now_v7().simple());
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let common = [
        ("WARREN_AMQP_URL", args.amqp_url.clone()),
        ("WARREN_NAMESPACE", namespace.clone()),
    ];
    let mut gateway_env = common.to_vec();
    gateway_env.push(("WARREN_HTTP_ADDR", format!("127.0.0.1:{port}")));
    let gateway = spawn(&binary("api-gateway")?, &gateway_env)?;
    let mut workers = Vec::new();
    for _ in 0..args.workers {
        let mut env = common.to_vec();
        env.extend([
            ("WARREN_WORKER_TYPES", "echo".to_owned()),
            (
                "WARREN_WORKER_CONCURRENCY",
                args.worker_concurrency.to_string(),
            ),
            ("WARREN_METRICS_ADDR", "127.0.0.1:0".to_owned()),
        ]);
        workers.push(spawn(&binary("worker")?, &env)?);
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let started = Instant::now();
    while submit(&client, &base, 0, true).await.unwrap_or(0) != 200 {
        if started.elapsed() > Duration::from_secs(30) {
            return Err("the gateway and worker did not come up within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("warming up...");
    throughput(&client, &base, 1_000.min(args.jobs), args.concurrency).await?;

    println!(
        "throughput: {} jobs, {} clients...",
        args.jobs, args.concurrency
    );
    let (submit_secs, total_secs) = throughput(&client, &base, args.jobs, args.concurrency).await?;
    #[allow(clippy::cast_precision_loss)]
    let jobs = args.jobs as f64;
    let warren_throughput = jobs / total_secs;

    println!(
        "sync latency: {} sequential Prefer: wait submits...",
        args.sync_samples
    );
    let mut sync = Vec::with_capacity(args.sync_samples);
    for i in 0..args.sync_samples {
        let started = Instant::now();
        let status = submit(&client, &base, i, true).await?;
        if status != 200 {
            return Err(format!("a sync submit answered {status}").into());
        }
        sync.push(started.elapsed());
    }
    let sync = millis(&sync);
    let gateway_rss = peak_rss_mib(&gateway);
    let worker_rss = workers
        .iter()
        .filter_map(peak_rss_mib)
        .fold(0.0_f64, f64::max);

    println!("raw floor on the same broker...");
    let body = message::encode(&JobMessage {
        v: V1,
        id: JobId::new(),
        job_type: JobType::parse("echo")?,
        payload: json!({"i": 12345}),
        attempt: 1,
        max_attempts: 3,
        timeout_ms: 60_000,
        created_at: chrono::Utc::now(),
    });
    let (floor_throughput, floor_latencies) = floor::run(
        &args.amqp_url,
        &body,
        args.jobs,
        args.concurrency,
        args.worker_concurrency,
        args.sync_samples,
    )
    .await?;
    let floor = millis(&floor_latencies);

    let results = json!({
        "jobs": args.jobs, "concurrency": args.concurrency, "workers": args.workers,
        "worker_concurrency": args.worker_concurrency, "message_bytes": body.len(),
        "warren": {
            "throughput_jobs_per_s": warren_throughput,
            "submit_only_jobs_per_s": jobs / submit_secs,
            "sync_ms": {"p50": percentile(&sync, 50.0), "p90": percentile(&sync, 90.0), "p99": percentile(&sync, 99.0)},
            "gateway_peak_rss_mib": gateway_rss, "worker_peak_rss_mib": worker_rss,
        },
        "floor": {
            "throughput_jobs_per_s": floor_throughput,
            "round_trip_ms": {"p50": percentile(&floor, 50.0), "p90": percentile(&floor, 90.0), "p99": percentile(&floor, 99.0)},
        },
    });
    print_report(&results);
    std::fs::write(&args.json, serde_json::to_string_pretty(&results)?)?;
    println!("results written to {}", args.json.display());

    for mut child in workers.into_iter().chain([gateway]) {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    cleanup(&args.amqp_url, &namespace).await?;
    Ok(())
}

fn print_report(results: &Value) {
    let w = &results["warren"];
    let f = &results["floor"];
    let ratio = |a: &Value, b: &Value| a.as_f64().unwrap_or(0.0) / b.as_f64().unwrap_or(1.0);
    println!();
    println!(
        "{:<34} {:>12} {:>12} {:>8}",
        "", "warren", "raw floor", "ratio"
    );
    println!(
        "{:<34} {:>12.0} {:>12.0} {:>8.2}",
        "throughput (jobs/s)",
        w["throughput_jobs_per_s"].as_f64().unwrap_or(0.0),
        f["throughput_jobs_per_s"].as_f64().unwrap_or(0.0),
        ratio(&w["throughput_jobs_per_s"], &f["throughput_jobs_per_s"])
    );
    for p in ["p50", "p90", "p99"] {
        println!(
            "{:<34} {:>12.2} {:>12.2} {:>8.2}",
            format!("sync round trip {p} (ms)"),
            w["sync_ms"][p].as_f64().unwrap_or(0.0),
            f["round_trip_ms"][p].as_f64().unwrap_or(0.0),
            ratio(&w["sync_ms"][p], &f["round_trip_ms"][p])
        );
    }
    println!(
        "{:<34} {:>12.0}",
        "submit-only rate (jobs/s)",
        w["submit_only_jobs_per_s"].as_f64().unwrap_or(0.0)
    );
    println!(
        "{:<34} {:>12.1}",
        "gateway peak RSS (MiB)",
        w["gateway_peak_rss_mib"].as_f64().unwrap_or(f64::NAN)
    );
    println!(
        "{:<34} {:>12.1}",
        "worker peak RSS (MiB)",
        w["worker_peak_rss_mib"].as_f64().unwrap_or(f64::NAN)
    );
}

/// Deletes the bench namespace's exchanges and queues.
async fn cleanup(url: &str, namespace: &str) -> Result<(), Error> {
    let connection =
        lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let topology = warren_shared::Topology::new(namespace);
    warren_shared::topology::delete(&channel, &topology, &[JobType::parse("echo")?]).await?;
    Ok(())
}
