//! Warren's benchmark, for the shape users run. Against a running RabbitMQ (and PostgreSQL,
//! for `--store postgres|both`) it measures, in one run, each scenario:
//!
//! - the memory store with one gateway;
//! - the PostgreSQL store with each of `--gateways` (e.g. `1,3`) gateways on one schema;
//!
//! and for each: end-to-end throughput of `--jobs` `echo` jobs submitted by `--concurrency`
//! clients spread over the gateways (completion by the gateways' counters, and as a client
//! sees it: a long poll of every job, from another gateway than the one that took it), the
//! long-poll phase after the burst, the submit-only rate, the CPU per job of each process
//! (the gateways, workers, RabbitMQ, PostgreSQL, the client, from /proc) over a second burst
//! of the same size without long polls (the pipeline alone, the raw floor's work) and over the
//! first (with a long poll per job), sync latency (`--sync-samples`
//! sequential `Prefer: wait` submits), and peak RSS; then, on a stack of its own with keys on,
//! sync latency again with a tenant's API key (`sync_with_key_ms`, the cost of
//! authentication; one-gateway scenarios only); and workflows (`workflows`): a chain's time
//! per step beside sequential sync submits, a batch in one workflow beside single submits. Then the raw floor on the same broker:
//! publisher with confirms → consumer that publishes a persistent result with confirm, then
//! acks → collector; and the contract floor, the same through the exchanges, `traceparent`
//! header and acknowledged results DESIGN.md fixes for Warren (`contract_floor`: what
//! Warren's own processes are judged against once the broker does the contract's work). It
//! prints everything with ratios and writes JSON (`--json`); with
//! `--rounds N` it does all of that N times and ends with each ratio's median over the rounds.
//!
//! ```text
//! cargo build --release --bins && cargo run --release -p warren-bench -- --jobs 20000 --gateways 1,3
//! ```

#![allow(clippy::print_stdout, missing_docs)]

mod auth;
mod cpu;
mod floor;
mod load;
mod stack;
mod webhooks;
mod workflows;

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use serde_json::{Value, json};
use warren_shared::{JobId, JobMessage, JobType, V1, message};

use load::percentile;
use stack::{Stack, StackSpec, Store};

/// Which stores to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StoreChoice {
    Memory,
    Postgres,
    Both,
}

/// What to measure.
#[derive(Debug, Parser)]
#[command(
    name = "warren-bench",
    about = "Warren's throughput and latency, per store and gateway count, beside the raw RabbitMQ floor"
)]
struct Args {
    /// Jobs for each throughput run.
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
    /// Concurrent HTTP clients (and publishes in flight for the floor).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Sequential synchronous round trips measured per scenario.
    #[arg(long, default_value_t = 1_000)]
    sync_samples: usize,
    /// Stores to measure.
    #[arg(long, value_enum, default_value_t = StoreChoice::Both)]
    store: StoreChoice,
    /// Jobs with a `callback_url` per scenario, delivered to a receiver in this process
    /// (0: skip).
    #[arg(long, default_value_t = 2_000)]
    webhooks: usize,
    /// Steps of the workflow chain measured per scenario (0: skip the workflow figures).
    #[arg(long, default_value_t = 100)]
    chain_steps: usize,
    /// Steps of the workflow batch measured per scenario, beside as many single submits.
    #[arg(long, default_value_t = 1_000)]
    batch_steps: usize,
    /// Gateway counts to measure on PostgreSQL, comma separated (memory always runs one).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    gateways: Vec<usize>,
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
    /// PostgreSQL (each scenario gets a schema of its own, dropped at the end).
    #[arg(
        long,
        env = "WARREN_BENCH_DATABASE_URL",
        default_value = "postgresql://postgres@127.0.0.1:5432/test"
    )]
    database_url: String,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "bench-results.json")]
    json: PathBuf,
    /// Times to run every scenario and the floor, one after another; the ratios are then
    /// reported per round and as their median (on a shared machine, one run's ratios move
    /// with its neighbours' load).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=50))]
    rounds: u16,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Starts a scenario's stack, measures it, stops it.
async fn scenario(args: &Args, store: Store, gateways: usize) -> Result<Value, Error> {
    println!("\n--- {} store, {gateways} gateway(s)", store.name());
    let spec = StackSpec {
        store,
        gateways,
        workers: args.workers,
        worker_concurrency: args.worker_concurrency,
        amqp_url: &args.amqp_url,
        database_url: &args.database_url,
        admin_key: None,
    };
    let stack = Stack::start(&spec).await?;
    let measured = measure(args, &stack).await;
    stack.stop().await?;
    let mut figures = measured?;
    if gateways == 1 && args.sync_samples > 0 {
        println!(
            "sync latency with an API key: {} sequential submits, keys on...",
            args.sync_samples
        );
        let keyed = auth::sync_latency_with_key(&spec, args.sync_samples).await?;
        figures["sync_with_key_ms"] = json!({"p50": percentile(&keyed, 50.0), "p90": percentile(&keyed, 90.0), "p99": percentile(&keyed, 99.0)});
    }
    Ok(figures)
}

async fn measure(args: &Args, stack: &Stack) -> Result<Value, Error> {
    // The workspace's reqwest has TLS without a built-in provider (see the gateway's
    // `webhooks::install_tls_provider`): install one before building a client.
    let _already = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    load::wait_until_up(&client, &stack.bases).await?;
    println!("warming up...");
    load::throughput(
        &client,
        &stack.bases,
        1_000.min(args.jobs),
        args.concurrency,
    )
    .await?;
    stack.analyze().await?;
    println!(
        "throughput: {} jobs, {} clients...",
        args.jobs, args.concurrency
    );
    let pids = |children: &[tokio::process::Child]| -> Vec<u32> {
        children
            .iter()
            .filter_map(tokio::process::Child::id)
            .collect()
    };
    let roles = cpu::Roles::of(&pids(&stack.gateways), &pids(&stack.workers));
    let before = roles.read();
    let run = load::throughput(&client, &stack.bases, args.jobs, args.concurrency).await?;
    let with_reads = before.per_job(&roles.read(), args.jobs);
    println!(
        "pipeline: {} jobs again, {} clients, no long polls...",
        args.jobs, args.concurrency
    );
    let (pipeline_s, per_job) =
        load::pipeline(&client, &stack.bases, args.jobs, args.concurrency, &roles).await?;
    println!("sync latency: {} sequential submits...", args.sync_samples);
    let sync = load::sync_latency(&client, &stack.bases[0], args.sync_samples).await?;
    let hooks = if args.webhooks > 0 {
        println!("webhooks: {} jobs with a callback_url...", args.webhooks);
        webhooks::run(&client, &stack.bases, args.webhooks, args.concurrency).await?
    } else {
        Value::Null
    };
    let flows = if args.chain_steps > 0 {
        println!(
            "workflows: a {}-step chain, a {}-step batch beside single submits...",
            args.chain_steps, args.batch_steps
        );
        workflows::run(
            &client,
            &stack.bases,
            args.chain_steps,
            args.batch_steps,
            args.concurrency,
        )
        .await?
    } else {
        Value::Null
    };
    #[allow(clippy::cast_precision_loss)]
    let jobs = args.jobs as f64;
    let max_rss = |children: &[tokio::process::Child]| {
        children
            .iter()
            .filter_map(stack::peak_rss_mib)
            .fold(0.0_f64, f64::max)
    };
    Ok(json!({
        "throughput_jobs_per_s": jobs / run.by_counter,
        "client_throughput_jobs_per_s": jobs / run.by_long_poll,
        "long_poll_phase_s": run.by_long_poll - run.submitted,
        "submit_only_jobs_per_s": jobs / run.submitted,
        "sync_ms": {"p50": percentile(&sync, 50.0), "p90": percentile(&sync, 90.0), "p99": percentile(&sync, 99.0)},
        "gateway_peak_rss_mib": max_rss(&stack.gateways),
        "worker_peak_rss_mib": max_rss(&stack.workers),
        "webhooks": hooks,
        "workflows": flows,
        "pipeline_jobs_per_s": jobs / pipeline_s,
        "per_job": per_job,
        "per_job_with_long_polls": with_reads,
    }))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        if args.rounds > 1 {
            println!("\n=== round {round} of {}", args.rounds);
        }
        let results = run_round(&args).await?;
        print_report(&results);
        rounds.push(results);
    }
    let ratios = ratio_runs(&rounds);
    if rounds.len() > 1 {
        print_ratio_medians(&ratios);
    }
    let mut results = rounds.first().cloned().unwrap_or(Value::Null);
    results["ratios"] = json!(
        ratios
            .iter()
            .map(|(name, runs)| (name.clone(), json!({"median": median(runs), "runs": runs})))
            .collect::<serde_json::Map<_, _>>()
    );
    if rounds.len() > 1 {
        results["rounds"] = Value::Array(rounds);
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&results)?)?;
    println!("results written to {}", args.json.display());
    Ok(())
}

/// Every scenario, then the raw floor: one round's results.
async fn run_round(args: &Args) -> Result<Value, Error> {
    let mut scenarios = Vec::new();
    if args.store != StoreChoice::Postgres {
        scenarios.push((
            "memory, 1 gateway".to_owned(),
            scenario(args, Store::Memory, 1).await?,
        ));
    }
    if args.store != StoreChoice::Memory {
        for &gateways in &args.gateways {
            let name = format!("postgres, {gateways} gateway(s)");
            scenarios.push((
                name,
                scenario(args, Store::Postgres, gateways.max(1)).await?,
            ));
        }
    }

    let body = message::encode(&JobMessage {
        v: V1,
        id: JobId::new(),
        job_type: JobType::parse("echo")?,
        payload: json!({"i": 12345}),
        attempt: 1,
        max_attempts: 3,
        timeout_ms: 60_000,
        created_at: chrono::Utc::now(),
        parents: None,
        priority: warren_shared::Priority::Normal,
    });
    println!("\n--- raw floor on the same broker...");
    let raw = run_floor(args, floor::Route::Raw, &body).await?;
    println!("--- contract floor: the same, through the contract's exchanges...");
    let contract = run_floor(args, floor::Route::Contract, &body).await?;
    Ok(json!({
        "jobs": args.jobs, "concurrency": args.concurrency, "workers": args.workers,
        "worker_concurrency": args.worker_concurrency, "message_bytes": body.len(),
        "scenarios": scenarios.iter().map(|(name, figures)| json!({"scenario": name, "figures": figures})).collect::<Vec<_>>(),
        "floor": raw,
        "contract_floor": contract,
    }))
}

/// One floor along `route` with `body` as its job message: its throughput, CPU per job and
/// round trips.
async fn run_floor(args: &Args, route: floor::Route, body: &[u8]) -> Result<Value, Error> {
    let (throughput, mut latencies, per_job) = floor::run(
        &args.amqp_url,
        route,
        body,
        args.jobs,
        args.concurrency,
        args.worker_concurrency,
        args.sync_samples,
    )
    .await?;
    latencies.sort();
    let ms: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    Ok(json!({
        "throughput_jobs_per_s": throughput,
        "per_job": per_job,
        "round_trip_ms": {"p50": percentile(&ms, 50.0), "p90": percentile(&ms, 90.0), "p99": percentile(&ms, 99.0)},
    }))
}

/// The ratios a round is judged by, each scenario against the floor and against the first
/// scenario (memory, when it ran), named for the report; in the rounds' order.
fn ratios(results: &Value) -> Vec<(String, f64)> {
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let (floor, contract) = (&results["floor"], &results["contract_floor"]);
    let empty = Vec::new();
    let scenarios = results["scenarios"].as_array().unwrap_or(&empty);
    let Some(first) = scenarios.first() else {
        return Vec::new();
    };
    let first_name = first["scenario"].as_str().unwrap_or("?");
    let cpu = |figures: &Value| num(&figures["per_job"]["cpu_ms_per_job"]["total"]);
    let mut named = Vec::new();
    for s in scenarios {
        let (name, f) = (s["scenario"].as_str().unwrap_or("?"), &s["figures"]);
        named.push((format!("{name}: CPU per job x floor"), cpu(f) / cpu(floor)));
        named.push((
            format!("{name}: pipeline x floor"),
            num(&f["pipeline_jobs_per_s"]) / num(&floor["throughput_jobs_per_s"]),
        ));
        if contract.is_object() {
            named.push((
                format!("{name}: CPU per job x contract floor"),
                cpu(f) / cpu(contract),
            ));
            named.push((
                format!("{name}: pipeline x contract floor"),
                num(&f["pipeline_jobs_per_s"]) / num(&contract["throughput_jobs_per_s"]),
            ));
        }
        if std::ptr::eq(s, first) {
            continue;
        }
        named.push((
            format!("{name}: pipeline x {first_name}"),
            num(&f["pipeline_jobs_per_s"]) / num(&first["figures"]["pipeline_jobs_per_s"]),
        ));
        named.push((
            format!("{name}: sync p50 x {first_name}"),
            num(&f["sync_ms"]["p50"]) / num(&first["figures"]["sync_ms"]["p50"]),
        ));
    }
    named
}

/// Each ratio's value in every round, in the first round's order.
fn ratio_runs(rounds: &[Value]) -> Vec<(String, Vec<f64>)> {
    let mut runs: Vec<(String, Vec<f64>)> = Vec::new();
    for round in rounds {
        for (name, value) in ratios(round) {
            match runs.iter_mut().find(|(known, _)| *known == name) {
                Some((_, values)) => values.push(value),
                None => runs.push((name, vec![value])),
            }
        }
    }
    runs
}

/// The middle value (the mean of the two middle ones for an even count); NaN for none.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => f64::midpoint(sorted[n / 2 - 1], sorted[n / 2]),
    }
}

fn print_ratio_medians(ratios: &[(String, Vec<f64>)]) {
    println!(
        "\nratios over {} rounds (median, then each round):",
        ratios.first().map_or(0, |(_, runs)| runs.len())
    );
    for (name, runs) in ratios {
        let each: Vec<String> = runs.iter().map(|r| format!("{r:.2}")).collect();
        println!("  {name:<52} {:>6.2}   {}", median(runs), each.join(" "));
    }
}

fn print_report(results: &Value) {
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let floor = &results["floor"];
    let empty = Vec::new();
    let scenarios = results["scenarios"].as_array().unwrap_or(&empty);
    println!();
    print!("{:<30}", "");
    for s in scenarios {
        print!(" {:>20}", s["scenario"].as_str().unwrap_or("?"));
    }
    println!(" {:>12}", "raw floor");
    let rows: [(&str, &str, Option<&Value>); 30] = [
        (
            "throughput, counter (jobs/s)",
            "/throughput_jobs_per_s",
            Some(&floor["throughput_jobs_per_s"]),
        ),
        (
            "throughput, client (jobs/s)",
            "/client_throughput_jobs_per_s",
            None,
        ),
        ("long-poll phase (s)", "/long_poll_phase_s", None),
        ("submit-only (jobs/s)", "/submit_only_jobs_per_s", None),
        (
            "sync p50 (ms)",
            "/sync_ms/p50",
            Some(&floor["round_trip_ms"]["p50"]),
        ),
        (
            "sync p90 (ms)",
            "/sync_ms/p90",
            Some(&floor["round_trip_ms"]["p90"]),
        ),
        (
            "sync p99 (ms)",
            "/sync_ms/p99",
            Some(&floor["round_trip_ms"]["p99"]),
        ),
        ("sync p50, API key (ms)", "/sync_with_key_ms/p50", None),
        ("gateway peak RSS (MiB)", "/gateway_peak_rss_mib", None),
        ("worker peak RSS (MiB)", "/worker_peak_rss_mib", None),
        (
            "webhooks (deliveries/s)",
            "/webhooks/deliveries_per_s",
            None,
        ),
        ("webhook lag p50 (ms)", "/webhooks/lag_ms/p50", None),
        ("webhook lag p99 (ms)", "/webhooks/lag_ms/p99", None),
        (
            "workflow chain (ms/step)",
            "/workflows/chain_ms_per_step",
            None,
        ),
        (
            "sequential sync (ms/job)",
            "/workflows/sequential_sync_ms_per_job",
            None,
        ),
        (
            "workflow batch (jobs/s)",
            "/workflows/batch_jobs_per_s",
            None,
        ),
        (
            "same jobs, single submits (jobs/s)",
            "/workflows/singles_jobs_per_s",
            None,
        ),
        (
            "CPU ms/job: gateways",
            "/per_job/cpu_ms_per_job/gateways",
            None,
        ),
        (
            "CPU ms/job: workers",
            "/per_job/cpu_ms_per_job/workers",
            None,
        ),
        (
            "CPU ms/job: rabbitmq",
            "/per_job/cpu_ms_per_job/rabbitmq",
            Some(&floor["per_job"]["cpu_ms_per_job"]["rabbitmq"]),
        ),
        (
            "CPU ms/job: postgresql",
            "/per_job/cpu_ms_per_job/postgresql",
            Some(&floor["per_job"]["cpu_ms_per_job"]["postgresql"]),
        ),
        (
            "CPU ms/job: bench client",
            "/per_job/cpu_ms_per_job/client",
            Some(&floor["per_job"]["cpu_ms_per_job"]["client"]),
        ),
        (
            "CPU ms/job: total",
            "/per_job/cpu_ms_per_job/total",
            Some(&floor["per_job"]["cpu_ms_per_job"]["total"]),
        ),
        (
            "pipeline, no long polls (jobs/s)",
            "/pipeline_jobs_per_s",
            Some(&floor["throughput_jobs_per_s"]),
        ),
        (
            "CPU ms/job with long polls: total",
            "/per_job_with_long_polls/cpu_ms_per_job/total",
            None,
        ),
        (
            "CPU ms/job with long polls: gateways",
            "/per_job_with_long_polls/cpu_ms_per_job/gateways",
            None,
        ),
        (
            "broker messages in/job",
            "/per_job/broker_per_job/messages_received",
            Some(&floor["per_job"]["broker_per_job"]["messages_received"]),
        ),
        (
            "broker confirms/job",
            "/per_job/broker_per_job/confirms",
            Some(&floor["per_job"]["broker_per_job"]["confirms"]),
        ),
        (
            "broker deliveries/job",
            "/per_job/broker_per_job/deliveries",
            Some(&floor["per_job"]["broker_per_job"]["deliveries"]),
        ),
        ("", "", None),
    ];
    for (label, pointer, floor_value) in rows.iter().filter(|r| !r.0.is_empty()) {
        print!("{label:<30}");
        for s in scenarios {
            print!(
                " {:>20.2}",
                num(s["figures"].pointer(pointer).unwrap_or(&Value::Null))
            );
        }
        match floor_value {
            Some(value) => println!(" {:>12.2}", num(value)),
            None => println!(),
        }
    }
    let contract = &results["contract_floor"];
    if contract.is_object() {
        let cpu = &contract["per_job"]["cpu_ms_per_job"];
        println!(
            "contract floor (the contract's exchanges, headers and acks): {:.0} jobs/s, round \
             trip p50 {:.2} ms, CPU ms/job rabbitmq {:.2}, client {:.2}, total {:.2}",
            num(&contract["throughput_jobs_per_s"]),
            num(&contract["round_trip_ms"]["p50"]),
            num(&cpu["rabbitmq"]),
            num(&cpu["client"]),
            num(&cpu["total"]),
        );
    }
    let Some(first) = scenarios.first() else {
        return;
    };
    println!("\nratios (each scenario against the first, and against the floor):");
    for s in scenarios {
        let f = &s["figures"];
        println!(
            "  {:<22} throughput {:.2} x first, {:.2} x floor; sync p50 {:.2} x first, {:.2} x floor",
            s["scenario"].as_str().unwrap_or("?"),
            num(&f["throughput_jobs_per_s"]) / num(&first["figures"]["throughput_jobs_per_s"]),
            num(&f["throughput_jobs_per_s"]) / num(&floor["throughput_jobs_per_s"]),
            num(&f["sync_ms"]["p50"]) / num(&first["figures"]["sync_ms"]["p50"]),
            num(&f["sync_ms"]["p50"]) / num(&floor["round_trip_ms"]["p50"]),
        );
        let cpu = |figures: &Value| num(&figures["per_job"]["cpu_ms_per_job"]["total"]);
        println!(
            "  {:<22} CPU per job {:.2} x first, {:.2} x floor; pipeline {:.2} x first, {:.2} x floor",
            "",
            cpu(f) / cpu(&first["figures"]),
            cpu(f) / cpu(floor),
            num(&f["pipeline_jobs_per_s"]) / num(&first["figures"]["pipeline_jobs_per_s"]),
            num(&f["pipeline_jobs_per_s"]) / num(&floor["throughput_jobs_per_s"]),
        );
        if f["sync_with_key_ms"].is_object() {
            println!(
                "  {:<22} sync p50 with an API key {:.2} x without",
                "",
                num(&f["sync_with_key_ms"]["p50"]) / num(&f["sync_ms"]["p50"]),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(memory_cpu: f64, pg_cpu: f64, pg_sync: f64) -> Value {
        let scenario = |name: &str, cpu: f64, pipeline: f64, sync: f64| {
            json!({"scenario": name, "figures": {
                "per_job": {"cpu_ms_per_job": {"total": cpu}},
                "pipeline_jobs_per_s": pipeline,
                "sync_ms": {"p50": sync},
            }})
        };
        json!({
            "scenarios": [
                scenario("memory, 1 gateway", memory_cpu, 800.0, 2.0),
                scenario("postgres, 1 gateway(s)", pg_cpu, 400.0, pg_sync),
            ],
            "floor": {"per_job": {"cpu_ms_per_job": {"total": 0.2}}, "throughput_jobs_per_s": 1000.0},
        })
    }

    #[test]
    fn each_ratio_is_gathered_over_the_rounds_and_its_median_taken() {
        let rounds = [
            round(0.3, 0.5, 3.0),
            round(0.4, 0.6, 5.0),
            round(0.2, 0.4, 4.0),
        ];
        let runs = ratio_runs(&rounds);
        let names: Vec<&str> = runs.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "memory, 1 gateway: CPU per job x floor",
                "memory, 1 gateway: pipeline x floor",
                "postgres, 1 gateway(s): CPU per job x floor",
                "postgres, 1 gateway(s): pipeline x floor",
                "postgres, 1 gateway(s): pipeline x memory, 1 gateway",
                "postgres, 1 gateway(s): sync p50 x memory, 1 gateway",
            ]
        );
        let memory_cpu = &runs[0].1;
        assert_eq!(memory_cpu.len(), 3);
        assert!((median(memory_cpu) - 1.5).abs() < 1e-9);
        assert!((median(&runs[5].1) - 2.0).abs() < 1e-9);
        assert!((median(&[1.0, 4.0]) - 2.5).abs() < 1e-9);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn a_round_with_the_contract_floor_is_judged_against_both_floors() {
        let mut with_contract = round(0.3, 0.5, 3.0);
        with_contract["contract_floor"] =
            json!({"per_job": {"cpu_ms_per_job": {"total": 0.25}}, "throughput_jobs_per_s": 800.0});
        let named = ratios(&with_contract);
        let value = |wanted: &str| {
            named
                .iter()
                .find(|(name, _)| name == wanted)
                .map(|(_, value)| *value)
        };
        let memory_cpu = value("memory, 1 gateway: CPU per job x contract floor");
        assert!(memory_cpu.is_some_and(|v| (v - 1.2).abs() < 1e-9));
        let pg_pipeline = value("postgres, 1 gateway(s): pipeline x contract floor");
        assert!(pg_pipeline.is_some_and(|v| (v - 0.5).abs() < 1e-9));
        let raw_cpu = value("memory, 1 gateway: CPU per job x floor");
        assert!(raw_cpu.is_some_and(|v| (v - 1.5).abs() < 1e-9));
        assert_eq!(named.len(), 10);
    }
}
