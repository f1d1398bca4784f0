//! The PostgreSQL store, chosen when `WARREN_DATABASE_URL` is set: durable, and shared by
//! several gateways.
//!
//! - **One set of rules.** Every change locks the job's row (`SELECT … FOR UPDATE`), runs the
//!   same [`transition`] function as the memory store, and writes the record back in the same
//!   transaction. Batches lock their rows in id order, so two batches cannot deadlock. Worker
//!   events for jobs this gateway submitted are applied to its copies of their records and
//!   written back only where the row is still at the copy's version ([`apply`], [`recent`]).
//! - **Keeps up with the broker.** New records are group-committed ([`committer`]); worker
//!   events are applied a batch per transaction with one multi-row update; statements are
//!   static SQL prepared once per connection, single-row ones for a batch of one ([`rows`]).
//! - **Every gateway hears every change.** The transaction that changes jobs also `NOTIFY`s
//!   their ids ([`changes`]), so waiters in any gateway wake once the store has the change.
//! - **Errors say what to do** ([`errors`]): retry later, a conflict, or a bug.
//!
//! Each store trait is implemented in the file named for its concern: [`jobs`], [`outbox`],
//! [`keys`] (with [`caps`], the per-key in-flight cap), [`schedules`], [`callbacks`],
//! [`workflows`].
//!
//! Migrations run at start, in one transaction under an advisory lock, so gateways starting
//! together apply each migration once.

mod apply;
mod callbacks;
mod caps;
mod changes;
mod committer;
mod diagnose;
mod errors;
mod flow;
mod jobs;
mod keys;
mod migrations;
mod outbox;
mod recent;
mod rows;
mod schedules;
mod tls;
mod workflows;
mod writes;

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use deadpool_postgres::{
    GenericClient, ManagerConfig, Pool, PoolConfig, RecyclingMethod, Runtime, Timeouts,
};
use uuid::Uuid;
use warren_shared::metrics::{Counter, Family, PathLabels};

use super::{Inserted, KeyClaim, StoreError};
use crate::model::Job;
use committer::{Committer, Unmarker};
use migrations::migrate;
use recent::Recent;

/// How the store connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Connections per gateway (`WARREN_DATABASE_POOL_SIZE`).
    pub pool_size: usize,
    /// The CA bundle to trust beside the system's (`WARREN_TLS_CA_FILE`), for `sslmode=verify-*`.
    pub tls: warren_shared::tls::TlsConfig,
    /// How long to wait for a pooled connection, or to open one (`WARREN_STORE_TIMEOUT`).
    pub timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            pool_size: 16,
            tls: warren_shared::tls::TlsConfig::default(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Job records in PostgreSQL.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    committer: Committer,
    unmarker: Unmarker,
    /// Copies of the records this gateway wrote last, for the optimistic apply.
    recent: Arc<Recent>,
    /// Events applied from copies, and under row locks (see [`apply`]).
    paths: Arc<ApplyPaths>,
    /// Where the change feed connects.
    listen_config: tokio_postgres::Config,
    /// How the pool and the change feed speak TLS (`sslmode`).
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    /// The `NOTIFY` channel of this schema.
    channel: String,
    /// This store's tag in its notifications, so it skips its own.
    origin: String,
}

impl PostgresStore {
    /// Connects to `url` with the default options and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, StoreOptions::default()).await
    }

    /// Where `url` points, for messages: hosts and ports, database and role, never the password
    /// (nothing of the URL when it does not parse).
    #[must_use]
    pub fn describe(url: &str) -> String {
        let Ok(config) = tls::without_ssl_params(url).parse::<tokio_postgres::Config>() else {
            return "(an address that does not parse)".to_owned();
        };
        let ports = config.get_ports();
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                match host {
                    tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                    tokio_postgres::config::Host::Unix(path) => {
                        format!("{}:{port}", path.display())
                    }
                }
            })
            .collect();
        format!(
            "{} database {:?} as role {:?}",
            hosts.join(","),
            config.get_dbname().unwrap_or("(the role's name)"),
            config.get_user().unwrap_or("(the OS user)")
        )
    }

    /// Connects to `url` and brings the schema up to date.
    pub async fn connect_with(url: &str, options: StoreOptions) -> Result<Self, StoreError> {
        let bad_url = |e: &dyn std::fmt::Display| {
            StoreError::unavailable(format!("bad WARREN_DATABASE_URL: {e}"))
        };
        let (url, tls) = tls::prepare(url, &options.tls)?;
        let mut listen_config: tokio_postgres::Config = url.parse().map_err(|e| bad_url(&e))?;
        listen_config.connect_timeout(options.timeout);
        let mut config = deadpool_postgres::Config::new();
        config.url = Some(url);
        config.connect_timeout = Some(options.timeout);
        config.manager = Some(ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        });
        config.pool = Some(PoolConfig {
            max_size: options.pool_size.max(1),
            timeouts: Timeouts {
                wait: Some(options.timeout),
                create: Some(options.timeout),
                recycle: Some(options.timeout),
            },
            ..PoolConfig::default()
        });
        let pool = config
            .create_pool(Some(Runtime::Tokio1), tls.clone())
            .map_err(|e| bad_url(&e))?;
        if let Err(error) = migrate(&pool).await {
            // Say what a server said, not that another address of its name was unreachable.
            let refusal = diagnose::refusal_by_address(&listen_config, &tls, options.timeout).await;
            return Err(refusal.map_or(error, StoreError::from));
        }
        let schema: String = pool
            .get()
            .await?
            .query_one("SELECT current_schema()", &[])
            .await?
            .get(0);
        let recent = Arc::new(Recent::default());
        Ok(Self {
            committer: Committer::start(pool.clone(), recent.clone()),
            recent,
            paths: Arc::default(),
            unmarker: Unmarker::start(pool.clone()),
            pool,
            listen_config,
            tls,
            channel: format!("warren_changes_{schema}"),
            origin: Uuid::now_v7().simple().to_string(),
        })
    }

    /// Writes `records` in one transaction, as a submit batch does: the outer error means
    /// none of them was written. (Submits go through the group committer; this is the batch
    /// it runs, public so its all-or-nothing rule can be tested.)
    pub async fn insert_batch(
        &self,
        records: &[(Job, Option<KeyClaim>)],
    ) -> Result<Vec<Result<Inserted, StoreError>>, StoreError> {
        committer::insert_batch(&self.pool, records).await
    }
}

/// How many events each path of [`apply`] took, since the store was opened; also counted in
/// the gateway's metrics once it hands its counters over.
#[derive(Debug, Default)]
struct ApplyPaths {
    from_copies: AtomicU64,
    locked: AtomicU64,
    /// `warren_store_events_applied_total{path}`: (`copy`, `locked`).
    series: OnceLock<(Counter, Counter)>,
}

impl ApplyPaths {
    /// Counts `from_copies` and `locked` more events.
    fn add(&self, from_copies: u64, locked: u64) {
        self.from_copies.fetch_add(from_copies, Ordering::Relaxed);
        self.locked.fetch_add(locked, Ordering::Relaxed);
        if let Some((copy, lock)) = self.series.get() {
            copy.inc_by(from_copies);
            lock.inc_by(locked);
        }
    }

    /// Counts into `paths` from now on.
    fn count_into(&self, paths: &Family<PathLabels, Counter>) {
        let series = |path: &str| {
            paths
                .get_or_create(&PathLabels {
                    path: path.to_owned(),
                })
                .clone()
        };
        let _already = self.series.set((series("copy"), series("locked")));
    }
}

impl PostgresStore {
    /// Events applied from this gateway's copies of their records, and events applied under
    /// row locks, since the store was opened (see the optimistic apply in `apply.rs`).
    #[must_use]
    pub fn apply_paths(&self) -> (u64, u64) {
        (
            self.paths.from_copies.load(Ordering::Relaxed),
            self.paths.locked.load(Ordering::Relaxed),
        )
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

/// Takes a connection out of the pool after a failure on it: it may be broken, or left inside
/// a transaction that failed half-way (the pipelined paths begin and commit by hand). The next
/// request gets a sound one. Failures are rare; a new connection is cheap next to a wrong one.
fn discard_on_error(client: deadpool_postgres::Object, error: Option<&StoreError>) {
    if error.is_some() {
        drop(deadpool_postgres::Object::take(client));
    }
}

fn saturating_i64<T: TryInto<i64>>(value: T) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}
