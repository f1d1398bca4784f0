//! The load: concurrent submits, completion by the gateways' counters and as a client sees it
//! (long-polling each job); the same submits without the long polls, for the CPU that the
//! pipeline alone costs; and sequential synchronous submits.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{Error, cpu::Roles};

/// What one throughput run measured, in seconds from its start.
pub(crate) struct Throughput {
    /// Until the last submit was answered.
    pub(crate) submitted: f64,
    /// Until the gateways' counters had every job `succeeded`.
    pub(crate) by_counter: f64,
    /// Until a long poll of every job had answered `succeeded`.
    pub(crate) by_long_poll: f64,
}

/// The sum over `bases` of `warren_jobs_finished_total` for succeeded `echo` jobs.
async fn echo_succeeded(client: &reqwest::Client, bases: &[String]) -> Result<f64, Error> {
    let series = r#"warren_jobs_finished_total{job_type="echo",status="succeeded"} "#;
    let mut total = 0.0;
    for base in bases {
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        total += text
            .lines()
            .find_map(|l| l.strip_prefix(series)?.parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    Ok(total)
}

/// One `echo` submit; returns the status and the job id (if any).
pub(crate) async fn submit(
    client: &reqwest::Client,
    base: &str,
    i: usize,
    prefer_wait: bool,
) -> Result<(u16, Option<String>), Error> {
    let mut request = client
        .post(format!("{base}/v1/jobs"))
        .json(&json!({"type": "echo", "payload": {"i": i}}));
    if prefer_wait {
        request = request.header("prefer", "wait=10");
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or_default();
    Ok((status, body["id"].as_str().map(str::to_owned)))
}

/// Waits (up to 30 s) until a sync submit succeeds on every gateway: they are up and a
/// worker consumes.
pub(crate) async fn wait_until_up(client: &reqwest::Client, bases: &[String]) -> Result<(), Error> {
    let started = Instant::now();
    for base in bases {
        while submit(client, base, 0, true).await.map_or(0, |r| r.0) != 200 {
            if started.elapsed() > Duration::from_secs(30) {
                return Err("the gateways and worker did not come up within 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Runs `work(i)` for every `i < count` on `concurrency` tasks.
pub(crate) async fn fan_out<F, Fut, T>(
    count: usize,
    concurrency: usize,
    work: F,
) -> Result<Vec<T>, Error>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<T, Error>> + Send,
    T: Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (next, work) = (next.clone(), work.clone());
            tokio::spawn(async move {
                let mut done = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return Ok::<_, Error>(done);
                    }
                    done.push((i, work(i).await?));
                }
            })
        })
        .collect();
    let mut results = Vec::with_capacity(count);
    for task in tasks {
        results.extend(task.await??);
    }
    results.sort_by_key(|(i, _)| *i);
    Ok(results.into_iter().map(|(_, r)| r).collect())
}

/// Submits `jobs` echo jobs with `concurrency` clients spread over the gateways, and waits
/// until the gateways' counters have every one `succeeded`: the work the raw floor does too (a
/// job in, its outcome stored), with no read-back. Returns the seconds that took and the CPU
/// per job of each role (`roles`) over them.
pub(crate) async fn pipeline(
    client: &reqwest::Client,
    bases: &[String],
    jobs: usize,
    concurrency: usize,
    roles: &Roles,
) -> Result<(f64, Value), Error> {
    let bases: Arc<Vec<String>> = Arc::new(bases.to_vec());
    let before = echo_succeeded(client, &bases).await?;
    let at_start = roles.read();
    let started = Instant::now();
    let (client2, bases2) = (client.clone(), bases.clone());
    fan_out(jobs, concurrency, move |i| {
        let (client, bases) = (client2.clone(), bases2.clone());
        async move {
            match submit(&client, &bases[i % bases.len()], i, false).await? {
                (202, _) => Ok(()),
                (status, _) => Err(format!("submit answered {status}").into()),
            }
        }
    })
    .await?;
    let seconds = until_counted(client, &bases, before + jobs as f64, started).await?;
    Ok((seconds, at_start.per_job(&roles.read(), jobs)))
}

/// Polls the gateways' counters until they reach `total` succeeded `echo` jobs (10 minutes at
/// most); returns the seconds since `started`.
async fn until_counted(
    client: &reqwest::Client,
    bases: &[String],
    total: f64,
    started: Instant,
) -> Result<f64, Error> {
    while echo_succeeded(client, bases).await? < total {
        if started.elapsed() > Duration::from_secs(600) {
            return Err("jobs did not all succeed within 10 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Submits `jobs` echo jobs with `concurrency` clients spread over the gateways, then
/// long-polls each one; the counters are watched meanwhile.
pub(crate) async fn throughput(
    client: &reqwest::Client,
    bases: &[String],
    jobs: usize,
    concurrency: usize,
) -> Result<Throughput, Error> {
    let bases: Arc<Vec<String>> = Arc::new(bases.to_vec());
    let before = echo_succeeded(client, &bases).await?;
    let started = Instant::now();
    let counter = {
        let (client, bases) = (client.clone(), bases.clone());
        #[allow(clippy::cast_precision_loss)]
        let total = before + jobs as f64;
        tokio::spawn(async move { until_counted(&client, &bases, total, started).await })
    };
    let ids = {
        let (client, bases) = (client.clone(), bases.clone());
        fan_out(jobs, concurrency, move |i| {
            let (client, bases) = (client.clone(), bases.clone());
            async move {
                let base = &bases[i % bases.len()];
                match submit(&client, base, i, false).await? {
                    (202, Some(id)) => Ok(id),
                    (status, _) => Err(format!("submit answered {status}").into()),
                }
            }
        })
        .await?
    };
    let submitted = started.elapsed().as_secs_f64();
    let ids = Arc::new(ids);
    let (client2, bases2) = (client.clone(), bases.clone());
    fan_out(jobs, concurrency, move |i| {
        let (client, bases, ids) = (client2.clone(), bases2.clone(), ids.clone());
        async move {
            // Any gateway can answer for any job: ask another one than the submitter.
            let base = &bases[(i + 1) % bases.len()];
            let job: Value = client
                .get(format!("{base}/v1/jobs/{}?wait=30", ids[i]))
                .send()
                .await?
                .json()
                .await?;
            if job["status"] == "succeeded" {
                Ok(())
            } else {
                Err(format!("a long poll answered {}", job["status"]).into())
            }
        }
    })
    .await?;
    let by_long_poll = started.elapsed().as_secs_f64();
    let by_counter = counter.await??;
    Ok(Throughput {
        submitted,
        by_counter,
        by_long_poll,
    })
}

/// `samples` sequential `Prefer: wait` submits to `base`; their latencies in ms, sorted.
pub(crate) async fn sync_latency(
    client: &reqwest::Client,
    base: &str,
    samples: usize,
) -> Result<Vec<f64>, Error> {
    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples {
        let started = Instant::now();
        let (status, _) = submit(client, base, i, true).await?;
        if status != 200 {
            return Err(format!("a sync submit answered {status}").into());
        }
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}

/// The `p`th percentile of sorted values.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank]
}
