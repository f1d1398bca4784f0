//! The PostgreSQL store, chosen when `WARREN_DATABASE_URL` is set: durable, and shared by
//! several gateways.
//!
//! - **One set of rules.** Every change locks the job's row (`SELECT … FOR UPDATE`), runs the
//!   same [`transition`] function as the memory store, and writes the record back in the same
//!   transaction. Batches lock their rows in id order, so two batches cannot deadlock.
//! - **Keeps up with the broker.** New records are group-committed ([`committer`]); worker
//!   events are applied a batch per transaction with one multi-row update; statements are
//!   static SQL prepared once per connection ([`rows`]).
//! - **Every gateway hears every change.** The transaction that changes jobs also `NOTIFY`s
//!   their ids ([`changes`]), so waiters in any gateway wake once the store has the change.
//! - **Errors say what to do** ([`errors`]): retry later, a conflict, or a bug.
//!
//! Migrations run at start, in one transaction under an advisory lock, so gateways starting
//! together apply each migration once.

mod changes;
mod committer;
mod errors;
mod rows;
mod schedules;

use std::{collections::HashMap, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{
    GenericClient, ManagerConfig, Pool, PoolConfig, RecyclingMethod, Runtime, Timeouts,
};
use tokio_postgres::{NoTls, types::ToSql};
use uuid::Uuid;
use warren_shared::{JobError, JobEvent, JobId, JobType};

use super::{
    Applied, Cancelled, ChangeFeed, FireRound, Inserted, Job, JobStore, KeyClaim, ListQuery,
    Redriven, StoreError, transition,
};
use crate::schedules::{Fired, Schedule};
use committer::{Committer, Unmarker};
use rows::{Columns, from_row};

/// The schema's versions, applied in order.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../migrations/0001_jobs.sql")),
    (2, include_str!("../migrations/0002_outbox.sql")),
    (3, include_str!("../migrations/0003_scheduled.sql")),
    (4, include_str!("../migrations/0004_schedules.sql")),
];
/// The advisory lock that serialises migrations ("WARREN" in ASCII).
const MIGRATION_LOCK: i64 = 0x5741_5252_454e;
/// How long to wait for a connection (to get one from the pool, or to open one).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How the store connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Connections per gateway (`WARREN_DATABASE_POOL_SIZE`).
    pub pool_size: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { pool_size: 16 }
    }
}

/// Job records in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: Pool,
    committer: Committer,
    unmarker: Unmarker,
    /// Where the change feed connects.
    listen_config: tokio_postgres::Config,
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

    /// Connects to `url` and brings the schema up to date.
    pub async fn connect_with(url: &str, options: StoreOptions) -> Result<Self, StoreError> {
        let bad_url = |e: &dyn std::fmt::Display| {
            StoreError::unavailable(format!("bad WARREN_DATABASE_URL: {e}"))
        };
        let mut listen_config: tokio_postgres::Config = url.parse().map_err(|e| bad_url(&e))?;
        listen_config.connect_timeout(CONNECT_TIMEOUT);
        let mut config = deadpool_postgres::Config::new();
        config.url = Some(url.to_owned());
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        config.manager = Some(ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        });
        config.pool = Some(PoolConfig {
            max_size: options.pool_size.max(1),
            timeouts: Timeouts {
                wait: Some(CONNECT_TIMEOUT),
                create: Some(CONNECT_TIMEOUT),
                recycle: Some(CONNECT_TIMEOUT),
            },
            ..PoolConfig::default()
        });
        let pool = config
            .create_pool(Some(Runtime::Tokio1), NoTls)
            .map_err(|e| bad_url(&e))?;
        migrate(&pool).await?;
        let schema: String = pool
            .get()
            .await?
            .query_one("SELECT current_schema()", &[])
            .await?
            .get(0);
        Ok(Self {
            committer: Committer::start(pool.clone()),
            unmarker: Unmarker::start(pool.clone()),
            pool,
            listen_config,
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

    /// Applies `events` in one transaction on `client`, in two round trips: `BEGIN` with the
    /// row locks, then the update, the notification and `COMMIT` together.
    async fn apply_on(
        &self,
        client: &deadpool_postgres::Object,
        events: &[JobEvent],
    ) -> Result<Vec<Applied>, StoreError> {
        let mut ids: Vec<Uuid> = events.iter().map(|e| e.id.as_uuid()).collect();
        ids.sort_unstable();
        ids.dedup();
        let lock = client.prepare_cached(rows::LOCK_MANY).await?;
        let update = client.prepare_cached(rows::UPDATE).await?;
        let notify = client.prepare_cached(changes::NOTIFY).await?;
        let lock_params: [&(dyn ToSql + Sync); 1] = [&ids];
        let (begun, locked) = tokio::join!(
            client.batch_execute("BEGIN"),
            client.query(&lock, &lock_params)
        );
        begun?;
        let mut jobs = HashMap::new();
        for row in locked? {
            let job = from_row(&row)?;
            jobs.insert(job.id, (job.version, job));
        }
        let applied: Vec<Applied> = events
            .iter()
            .map(|event| match jobs.get_mut(&event.id) {
                None => Applied::UnknownJob,
                Some((_, job)) => match transition::apply(job, event) {
                    Ok(()) => Applied::Updated(Box::new(job.clone())),
                    Err(ignored) => Applied::Ignored(ignored),
                },
            })
            .collect();
        let changed: Vec<&Job> = jobs
            .values()
            .filter(|(version_before, job)| job.version != *version_before)
            .map(|(_, job)| job)
            .collect();
        if changed.is_empty() {
            client.batch_execute("COMMIT").await?;
            return Ok(applied);
        }
        let columns = Columns::of(changed.iter().copied());
        let ids: Vec<JobId> = changed.iter().map(|job| job.id).collect();
        let payloads = changes::payloads(&self.origin, &ids);
        let update_params = columns.params();
        let notify_params: [&(dyn ToSql + Sync); 2] = [&self.channel, &payloads];
        let (updated, notified, committed) = tokio::join!(
            client.execute(&update, &update_params),
            client.execute(&notify, &notify_params),
            client.batch_execute("COMMIT")
        );
        updated?;
        notified?;
        committed?;
        Ok(applied)
    }

    /// Releases due scheduled jobs on `client`: locks them (skipping those another gateway
    /// holds), applies [`transition::release`], writes them back and announces them.
    async fn release_on(
        &self,
        client: &deadpool_postgres::Object,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let lock = client.prepare_cached(rows::LOCK_DUE).await?;
        let update = client.prepare_cached(rows::UPDATE).await?;
        let notify = client.prepare_cached(changes::NOTIFY).await?;
        let limit = saturating_i64(limit);
        let lock_params: [&(dyn ToSql + Sync); 2] = [&now, &limit];
        let (begun, locked) = tokio::join!(
            client.batch_execute("BEGIN"),
            client.query(&lock, &lock_params)
        );
        begun?;
        let mut released = Vec::new();
        for row in locked? {
            let mut job = from_row(&row)?;
            if transition::release(&mut job, now) {
                released.push(job);
            }
        }
        if released.is_empty() {
            client.batch_execute("COMMIT").await?;
            return Ok(released);
        }
        let columns = Columns::of(released.iter());
        let ids: Vec<JobId> = released.iter().map(|job| job.id).collect();
        let payloads = changes::payloads(&self.origin, &ids);
        let update_params = columns.params();
        let notify_params: [&(dyn ToSql + Sync); 2] = [&self.channel, &payloads];
        let (updated, notified, committed) = tokio::join!(
            client.execute(&update, &update_params),
            client.execute(&notify, &notify_params),
            client.batch_execute("COMMIT")
        );
        updated?;
        notified?;
        committed?;
        Ok(released)
    }

    /// Locks the job's row, lets `change` work on the record, writes it back and announces it
    /// if its version moved, commits. `None` when no record has this id.
    async fn modify<T>(
        &self,
        id: JobId,
        change: impl FnOnce(&mut Job) -> T + Send,
    ) -> Result<Option<(Job, T)>, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let statement = tx.prepare_cached(rows::LOCK_MANY).await?;
        let Some(row) = tx.query(&statement, &[&vec![id.as_uuid()]]).await?.pop() else {
            return Ok(None);
        };
        let mut job = from_row(&row)?;
        let before = job.version;
        let outcome = change(&mut job);
        if job.version != before {
            let statement = tx.prepare_cached(rows::UPDATE).await?;
            tx.execute(&statement, &Columns::of([&job].into_iter()).params())
                .await?;
            changes::notify(&tx, &self.channel, &self.origin, &[job.id]).await?;
        }
        tx.commit().await?;
        Ok(Some((job, outcome)))
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

async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS warren_schema_migrations (
            version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM warren_schema_migrations", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    for (version, sql) in MIGRATIONS {
        if !applied.contains(version) {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO warren_schema_migrations (version) VALUES ($1)",
                &[version],
            )
            .await?;
            tracing::info!(version, "database migration applied");
        }
    }
    tx.commit().await?;
    Ok(())
}

fn saturating_i64<T: TryInto<i64>>(value: T) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}

#[async_trait]
impl JobStore for PostgresStore {
    async fn insert(&self, job: Job, claim: Option<KeyClaim>) -> Result<Inserted, StoreError> {
        self.committer.insert(job, claim).await
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(rows::SELECT_ONE).await?;
        client
            .query_opt(&statement, &[&id.as_uuid()])
            .await?
            .map(|row| from_row(&row))
            .transpose()
    }

    async fn get_many(&self, ids: &[JobId]) -> Result<Vec<Job>, StoreError> {
        let ids: Vec<Uuid> = ids.iter().map(|id| id.as_uuid()).collect();
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(rows::SELECT_MANY).await?;
        let rows = client.query(&statement, &[&ids]).await?;
        rows.iter().map(from_row).collect()
    }

    async fn apply_events(&self, events: &[JobEvent]) -> Result<Vec<Applied>, StoreError> {
        let client = self.pool.get().await?;
        let applied = self.apply_on(&client, events).await;
        discard_on_error(client, applied.as_ref().err());
        applied
    }

    async fn confirm_published(&self, id: JobId, now: bool) -> Result<(), StoreError> {
        if now {
            committer::unmark(&self.pool, &[id.as_uuid()]).await
        } else {
            self.unmarker.clear(id.as_uuid())
        }
    }

    async fn fail_unpublished(
        &self,
        id: JobId,
        error: JobError,
        key: Option<&str>,
    ) -> Result<Option<Job>, StoreError> {
        if let Some(key) = key {
            self.forget_key(key).await?;
        }
        let failed = self
            .modify(id, |job| {
                job.unconfirmed_since = None;
                transition::fail(job, error)
            })
            .await?;
        Ok(failed.and_then(|(job, changed)| changed.then_some(job)))
    }

    async fn claim_unpublished(
        &self,
        marked_before: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(rows::CLAIM_UNCONFIRMED).await?;
        let rows = client
            .query(&statement, &[&marked_before, &now, &saturating_i64(limit)])
            .await?;
        rows.iter().map(from_row).collect()
    }

    async fn release_due(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Job>, StoreError> {
        let client = self.pool.get().await?;
        let released = self.release_on(&client, now, limit).await;
        discard_on_error(client, released.as_ref().err());
        released
    }

    async fn count_scheduled(&self) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached("SELECT count(*) FROM warren_jobs WHERE status = 'scheduled'")
            .await?;
        let count: i64 = client.query_one(&statement, &[]).await?.get(0);
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn insert_schedule(&self, schedule: Schedule) -> Result<(), StoreError> {
        schedules::insert(&self.pool, &schedule).await
    }

    async fn get_schedule(&self, id: Uuid) -> Result<Option<Schedule>, StoreError> {
        schedules::get(&self.pool, id).await
    }

    async fn list_schedules(&self) -> Result<Vec<Schedule>, StoreError> {
        schedules::list(&self.pool).await
    }

    async fn update_schedule(
        &self,
        id: Uuid,
        change: &(dyn for<'s> Fn(&'s mut Schedule) + Send + Sync),
    ) -> Result<Option<Schedule>, StoreError> {
        schedules::update(&self.pool, id, change).await
    }

    async fn delete_schedule(&self, id: Uuid) -> Result<bool, StoreError> {
        schedules::delete(&self.pool, id).await
    }

    async fn fire_due(
        &self,
        now: DateTime<Utc>,
        plan: &(dyn for<'s> Fn(&'s Schedule) -> Fired + Send + Sync),
    ) -> Result<FireRound, StoreError> {
        schedules::fire_due(&self.pool, now, plan).await
    }

    async fn cancel(&self, id: JobId) -> Result<Cancelled, StoreError> {
        Ok(match self.modify(id, transition::cancel).await? {
            None => Cancelled::UnknownJob,
            Some((job, true)) => Cancelled::Now(Box::new(job)),
            Some((job, false)) => Cancelled::AlreadyTerminal(Box::new(job)),
        })
    }

    async fn redrive(&self, id: JobId) -> Result<Redriven, StoreError> {
        Ok(match self.modify(id, transition::redrive).await? {
            None => Redriven::UnknownJob,
            Some((job, true)) => Redriven::Now(Box::new(job)),
            Some((job, false)) => Redriven::NotFailed(Box::new(job)),
        })
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<Job>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(rows::LIST).await?;
        let status = query.status.map(|s| s.as_str());
        let job_type = query.job_type.as_ref().map(JobType::as_str);
        let before = query.before.map(|id| id.as_uuid());
        let limit = saturating_i64(query.limit);
        let rows = client
            .query(&statement, &[&status, &job_type, &before, &limit])
            .await?;
        rows.iter().map(from_row).collect()
    }

    async fn forget_key(&self, key: &str) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached("DELETE FROM warren_idempotency WHERE key = $1")
            .await?;
        client.execute(&statement, &[&key]).await?;
        Ok(())
    }

    async fn purge(
        &self,
        jobs_before: DateTime<Utc>,
        keys_before: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        let purged = client
            .execute(
                "DELETE FROM warren_jobs
                 WHERE status IN ('succeeded', 'failed', 'cancelled') AND finished_at < $1",
                &[&jobs_before],
            )
            .await?;
        client
            .execute(
                "DELETE FROM warren_idempotency WHERE created_at < $1",
                &[&keys_before],
            )
            .await?;
        Ok(purged)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client.execute("SELECT 1", &[]).await?;
        Ok(())
    }

    async fn changes(&self) -> Result<Option<ChangeFeed>, StoreError> {
        changes::listen(&self.listen_config, &self.channel, &self.origin)
            .await
            .map(Some)
    }
}
