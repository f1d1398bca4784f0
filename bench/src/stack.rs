//! The system under test: release `api-gateway` and `worker` processes in a namespace of their
//! own, on the memory store or on a PostgreSQL schema of their own, and their cleanup.

use std::{path::PathBuf, process::Stdio};

use tokio::process::{Child, Command};
use warren_shared::{JobType, removal};

use crate::Error;

/// Which store the gateways use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Store {
    /// In memory (one gateway only: memory is not shared).
    Memory,
    /// PostgreSQL, a fresh schema per scenario.
    Postgres,
}

impl Store {
    /// The name in reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Postgres => "postgres",
        }
    }
}

/// Running gateways and workers.
pub(crate) struct Stack {
    pub(crate) bases: Vec<String>,
    pub(crate) gateways: Vec<Child>,
    pub(crate) workers: Vec<Child>,
    namespace: String,
    amqp_url: String,
    schema: Option<(tokio_postgres::Client, String)>,
}

/// How to start a stack.
#[derive(Clone, Copy)]
pub(crate) struct StackSpec<'a> {
    pub(crate) store: Store,
    pub(crate) gateways: usize,
    pub(crate) workers: usize,
    pub(crate) worker_concurrency: u16,
    pub(crate) amqp_url: &'a str,
    pub(crate) database_url: &'a str,
    /// `WARREN_ADMIN_KEY` for the gateways (keys on), or none (open).
    pub(crate) admin_key: Option<&'a str>,
}

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
    command.envs(env.iter().map(|(k, v)| (*k, v.as_str()))).env(
        "RUST_LOG",
        std::env::var("WARREN_BENCH_RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
    );
    // With WARREN_BENCH_RUST_LOG set, the processes' logs go to this process's stdout.
    let logs = if std::env::var_os("WARREN_BENCH_RUST_LOG").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    };
    command
        .stdout(logs)
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    Ok(command.spawn()?)
}

/// `url` without `sslmode` and `sslrootcert`.
fn without_tls_params(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.starts_with("sslmode=") && !pair.starts_with("sslrootcert="))
        .collect();
    if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

/// A schema of its own in the benchmark database, and the URL that uses it.
async fn create_schema(
    database_url: &str,
) -> Result<(tokio_postgres::Client, String, String), Error> {
    // The benchmark's own connection (schema setup and cleanup) goes without TLS and without
    // libpq's TLS settings, which tokio-postgres cannot read; the gateways use the URL as given.
    let admin_url = without_tls_params(database_url);
    let (client, connection) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("cannot reach PostgreSQL at {database_url} (--database-url): {e}"))?;
    tokio::spawn(connection);
    let schema = format!("bench_{}", uuid::Uuid::now_v7().simple());
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await?;
    let separator = if database_url.contains('?') { '&' } else { '?' };
    let url = format!("{database_url}{separator}options=-csearch_path%3D{schema}");
    Ok((client, schema, url))
}

impl Stack {
    /// Starts the gateways and workers of `spec` in a fresh namespace.
    pub(crate) async fn start(spec: &StackSpec<'_>) -> Result<Self, Error> {
        let namespace = format!("bench-{}", uuid::Uuid::now_v7().simple());
        let common = [
            ("WARREN_AMQP_URL", spec.amqp_url.to_owned()),
            ("WARREN_NAMESPACE", namespace.clone()),
        ];
        let (schema, database) = match spec.store {
            Store::Memory => (None, None),
            Store::Postgres => {
                let (client, schema, url) = create_schema(spec.database_url).await?;
                (Some((client, schema)), Some(url))
            }
        };
        let mut stack = Self {
            bases: Vec::new(),
            gateways: Vec::new(),
            workers: Vec::new(),
            namespace,
            amqp_url: spec.amqp_url.to_owned(),
            schema,
        };
        for _ in 0..spec.gateways {
            let port = free_port()?;
            let mut env = common.to_vec();
            env.push(("WARREN_HTTP_ADDR", format!("127.0.0.1:{port}")));
            // The webhook receiver is this process, on loopback.
            env.push(("WARREN_WEBHOOK_SECRET", crate::webhooks::SECRET.to_owned()));
            env.push(("WARREN_WEBHOOK_ALLOW_PRIVATE", "true".to_owned()));
            if let Some(url) = &database {
                env.push(("WARREN_DATABASE_URL", url.clone()));
            }
            if let Some(key) = spec.admin_key {
                env.push(("WARREN_ADMIN_KEY", key.to_owned()));
            }
            stack.gateways.push(spawn(&binary("api-gateway")?, &env)?);
            stack.bases.push(format!("http://127.0.0.1:{port}"));
        }
        for _ in 0..spec.workers {
            let mut env = common.to_vec();
            env.extend([
                ("WARREN_WORKER_TYPES", "echo,sleep".to_owned()),
                (
                    "WARREN_WORKER_CONCURRENCY",
                    spec.worker_concurrency.to_string(),
                ),
                ("WARREN_METRICS_ADDR", "127.0.0.1:0".to_owned()),
            ]);
            stack.workers.push(spawn(&binary("worker")?, &env)?);
        }
        Ok(stack)
    }

    /// Gathers the store's table statistics, as autovacuum does within a minute of a new table
    /// filling. Without them the gateways keep plans made while the table was empty
    /// (sequential scans, cached for the connection's life until statistics change), and the
    /// figures would describe a new database's first minute, not its life.
    pub(crate) async fn analyze(&self) -> Result<(), Error> {
        if let Some((client, schema)) = &self.schema {
            client
                .batch_execute(&format!(
                    "ANALYZE {schema}.warren_jobs, {schema}.warren_idempotency"
                ))
                .await?;
        }
        Ok(())
    }

    /// Stops every process, deletes the namespace's exchanges and queues and the schema.
    pub(crate) async fn stop(self) -> Result<(), Error> {
        for mut child in self.workers.into_iter().chain(self.gateways) {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        let connection = crate::floor::connect(&self.amqp_url).await?;
        let topology = warren_shared::Topology::new(&self.namespace);
        let names = removal::Names::declared(
            &topology,
            &[JobType::parse("echo")?, JobType::parse("sleep")?],
        );
        removal::remove(&connection, &names, true).await?;
        if let Some((client, schema)) = self.schema {
            client
                .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
                .await?;
        }
        Ok(())
    }
}

/// Peak resident memory of a process, in MiB (`VmHWM`).
pub(crate) fn peak_rss_mib(child: &Child) -> Option<f64> {
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
