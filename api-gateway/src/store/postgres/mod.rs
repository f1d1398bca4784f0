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

mod callbacks;
mod changes;
mod committer;
mod errors;
mod keys;
mod migrations;
mod rows;
mod schedules;
mod stats;
mod writes;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{
    GenericClient, ManagerConfig, Pool, PoolConfig, RecyclingMethod, Runtime, Timeouts,
};
use tokio_postgres::NoTls;
use uuid::Uuid;
use warren_shared::{JobError, JobEvent, JobId};

use super::{
    Applied, Cancelled, ChangeFeed, FireRound, Inserted, Job, JobStore, KeyClaim, ListQuery,
    Redriven, StoreError, TypeCount, transition,
};
use crate::{
    auth::keys::ApiKey,
    schedules::{Fired, Schedule},
    webhooks::{Callback, Delivery},
};
use committer::{Committer, Unmarker};
use migrations::migrate;
use rows::from_row;
use writes::Modified;

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

    async fn claim_callbacks(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        callbacks::claim(&self.pool, now, lease_until, limit).await
    }

    async fn record_delivery(
        &self,
        id: JobId,
        delivery: &Delivery,
        callback: &Callback,
    ) -> Result<(), StoreError> {
        callbacks::record(&self.pool, id, delivery, callback).await
    }

    async fn deliveries(&self, id: JobId) -> Result<Vec<Delivery>, StoreError> {
        callbacks::list(&self.pool, id).await
    }

    async fn count_pending_callbacks(&self) -> Result<u64, StoreError> {
        callbacks::count_pending(&self.pool).await
    }

    async fn insert_capped(
        &self,
        job: Job,
        claim: Option<KeyClaim>,
        max_in_flight: u32,
    ) -> Result<Inserted, StoreError> {
        keys::insert_capped(&self.pool, &job, claim.as_ref(), max_in_flight).await
    }

    async fn insert_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        keys::insert(&self.pool, key).await
    }

    async fn api_key(&self, id: Uuid) -> Result<Option<ApiKey>, StoreError> {
        keys::get(&self.pool, id).await
    }

    async fn api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        keys::list(&self.pool).await
    }

    async fn revoke_api_key(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<Option<ApiKey>, StoreError> {
        keys::revoke(&self.pool, id, at).await
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

    async fn redrive(&self, id: JobId, cap: Option<(Uuid, u32)>) -> Result<Redriven, StoreError> {
        let redrive = |job: &mut Job| transition::redrive(job);
        Ok(match self.modify_capped(id, cap, redrive).await? {
            Modified::UnknownJob => Redriven::UnknownJob,
            Modified::AtCapacity => Redriven::AtCapacity,
            Modified::Done(job, true) => Redriven::Now(job),
            Modified::Done(job, false) => Redriven::NotFailed(job),
        })
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<Job>, StoreError> {
        stats::list(&self.pool, query).await
    }

    async fn count_by_type(
        &self,
        tenant: Option<&str>,
        finished_since: DateTime<Utc>,
    ) -> Result<Vec<TypeCount>, StoreError> {
        stats::count_by_type(&self.pool, tenant, finished_since).await
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
