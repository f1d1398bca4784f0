//! The PostgreSQL store, chosen when `WARREN_DATABASE_URL` is set: durable, and shared by
//! several gateways.
//!
//! The lifecycle rules are not written twice: every change locks the job's row
//! (`SELECT … FOR UPDATE`), runs the same [`transition`] function as the memory store, and
//! writes the record back in the same transaction. Two gateways applying events to one job
//! therefore take turns, and each sees the other's result. Batches lock their rows in id
//! order, so two batches cannot deadlock.
//!
//! Migrations run at start, in one transaction under an advisory lock, so gateways starting
//! together apply each migration once.

use std::{collections::HashMap, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{
    GenericClient, ManagerConfig, Pool, PoolConfig, RecyclingMethod, Runtime, Timeouts,
};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_postgres::{NoTls, Row};
use uuid::Uuid;
use warren_shared::{JobError, JobEvent, JobId, JobType};

use super::{
    Applied, Cancelled, Job, JobStore, ListQuery, RawJson, Redriven, Reservation, StoreError,
    transition,
};

/// The schema's versions, applied in order.
const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("migrations/0001_jobs.sql"))];
/// The advisory lock that serialises migrations ("WARREN" in ASCII).
const MIGRATION_LOCK: i64 = 0x5741_5252_454e;
/// Connections per gateway.
const POOL_SIZE: usize = 16;
/// How long to wait for a connection (to get one from the pool, or to open one).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

const COLUMNS: &str = "id, job_type, status, attempt, max_attempts, attempt_budget, progress, \
    result, error, payload, timeout_ms, callback_url, seq, version, created_at, updated_at, \
    next_attempt_at, started_at, finished_at";

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        Self::Unavailable(error.to_string())
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        Self::Unavailable(error.to_string())
    }
}

/// Job records in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: Pool,
}

impl PostgresStore {
    /// Connects to `url` and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let mut config = deadpool_postgres::Config::new();
        config.url = Some(url.to_owned());
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        config.manager = Some(ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        });
        config.pool = Some(PoolConfig {
            max_size: POOL_SIZE,
            timeouts: Timeouts {
                wait: Some(CONNECT_TIMEOUT),
                create: Some(CONNECT_TIMEOUT),
                recycle: Some(CONNECT_TIMEOUT),
            },
            ..PoolConfig::default()
        });
        let pool = config
            .create_pool(Some(Runtime::Tokio1), NoTls)
            .map_err(|e| StoreError::Unavailable(format!("bad WARREN_DATABASE_URL: {e}")))?;
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
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

    /// Locks the job's row, lets `change` work on the record, writes it back if its version
    /// moved, commits. `None` when no record has this id.
    async fn modify<T>(
        &self,
        id: JobId,
        change: impl FnOnce(&mut Job) -> T + Send,
    ) -> Result<Option<(Job, T)>, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let sql = format!("SELECT {COLUMNS} FROM warren_jobs WHERE id = $1 FOR UPDATE");
        let Some(row) = tx.query_opt(&sql, &[&id.as_uuid()]).await? else {
            return Ok(None);
        };
        let mut job = from_row(&row)?;
        let before = job.version;
        let outcome = change(&mut job);
        if job.version != before {
            write(&tx, &job).await?;
        }
        tx.commit().await?;
        Ok(Some((job, outcome)))
    }
}

fn int<T: TryInto<i64>>(value: T) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}

fn small<T: TryInto<i32>>(value: T) -> i32 {
    value.try_into().unwrap_or(i32::MAX)
}

fn json<T: serde::Serialize>(value: Option<&T>) -> Option<Value> {
    value.and_then(|v| serde_json::to_value(v).ok())
}

fn parse_json<T: DeserializeOwned>(value: Option<Value>) -> Result<Option<T>, StoreError> {
    value
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_row(row: &Row) -> Result<Job, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("unreadable {what} in warren_jobs"));
    let unsigned = |column: &str| -> Result<u32, StoreError> {
        u32::try_from(row.get::<_, i32>(column)).map_err(|_| corrupt(column))
    };
    let long = |column: &str| -> Result<u64, StoreError> {
        u64::try_from(row.get::<_, i64>(column)).map_err(|_| corrupt(column))
    };
    Ok(Job {
        id: JobId::from(row.get::<_, Uuid>("id")),
        job_type: JobType::parse(row.get::<_, String>("job_type"))
            .map_err(|_| corrupt("job_type"))?,
        status: row
            .get::<_, String>("status")
            .parse()
            .map_err(|_| corrupt("status"))?,
        attempt: unsigned("attempt")?,
        max_attempts: unsigned("max_attempts")?,
        attempt_budget: unsigned("attempt_budget")?,
        progress: parse_json(row.get("progress"))?.map(Box::new),
        result: row
            .get::<_, Option<Value>>("result")
            .as_ref()
            .map(RawJson::from_value),
        error: parse_json::<JobError>(row.get("error"))?.map(Box::new),
        payload: RawJson::from_value(&row.get::<_, Value>("payload")),
        timeout_ms: long("timeout_ms")?,
        callback_url: row.get("callback_url"),
        seq: long("seq")?,
        version: long("version")?,
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        next_attempt_at: row.get("next_attempt_at"),
        started_at: row.get("started_at"),
        finished_at: row.get("finished_at"),
    })
}

/// Writes back every field a change can touch.
async fn write(client: &impl GenericClient, job: &Job) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE warren_jobs SET status = $2, attempt = $3, max_attempts = $4, progress = $5,
                result = $6, error = $7, seq = $8, version = $9, updated_at = $10,
                next_attempt_at = $11, started_at = $12, finished_at = $13
             WHERE id = $1",
            &[
                &job.id.as_uuid(),
                &job.status.as_str(),
                &small(job.attempt),
                &small(job.max_attempts),
                &json(job.progress.as_ref()),
                &job.result.as_ref().map(RawJson::to_value),
                &json(job.error.as_ref()),
                &int(job.seq),
                &int(job.version),
                &job.updated_at,
                &job.next_attempt_at,
                &job.started_at,
                &job.finished_at,
            ],
        )
        .await?;
    Ok(())
}

#[async_trait]
impl JobStore for PostgresStore {
    async fn insert(&self, job: Job) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        let sql = format!(
            "INSERT INTO warren_jobs ({COLUMNS}) VALUES
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)"
        );
        client
            .execute(
                &sql,
                &[
                    &job.id.as_uuid(),
                    &job.job_type.as_str(),
                    &job.status.as_str(),
                    &small(job.attempt),
                    &small(job.max_attempts),
                    &small(job.attempt_budget),
                    &json(job.progress.as_ref()),
                    &job.result.as_ref().map(RawJson::to_value),
                    &json(job.error.as_ref()),
                    &job.payload.to_value(),
                    &int(job.timeout_ms),
                    &job.callback_url,
                    &int(job.seq),
                    &int(job.version),
                    &job.created_at,
                    &job.updated_at,
                    &job.next_attempt_at,
                    &job.started_at,
                    &job.finished_at,
                ],
            )
            .await?;
        Ok(())
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        let client = self.pool.get().await?;
        let sql = format!("SELECT {COLUMNS} FROM warren_jobs WHERE id = $1");
        client
            .query_opt(&sql, &[&id.as_uuid()])
            .await?
            .map(|row| from_row(&row))
            .transpose()
    }

    async fn apply_event(&self, event: &JobEvent) -> Result<Applied, StoreError> {
        let applied = self
            .modify(event.id, |job| transition::apply(job, event))
            .await?;
        Ok(match applied {
            None => Applied::UnknownJob,
            Some((job, Ok(()))) => Applied::Updated(Box::new(job)),
            Some((_, Err(ignored))) => Applied::Ignored(ignored),
        })
    }

    async fn apply_events(&self, events: &[JobEvent]) -> Result<Vec<Applied>, StoreError> {
        let mut ids: Vec<Uuid> = events.iter().map(|e| e.id.as_uuid()).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let sql =
            format!("SELECT {COLUMNS} FROM warren_jobs WHERE id = ANY($1) ORDER BY id FOR UPDATE");
        let mut jobs = HashMap::new();
        for row in tx.query(&sql, &[&ids]).await? {
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
        // Written concurrently: tokio-postgres pipelines them on the one connection.
        let writes = jobs
            .values()
            .filter(|(version_before, job)| job.version != *version_before)
            .map(|(_, job)| write(&tx, job));
        futures_util::future::try_join_all(writes).await?;
        tx.commit().await?;
        Ok(applied)
    }

    async fn fail_unpublished(&self, id: JobId, error: JobError) -> Result<(), StoreError> {
        self.modify(id, |job| transition::fail(job, error)).await?;
        Ok(())
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
        let sql = format!(
            "SELECT {COLUMNS} FROM warren_jobs
             WHERE ($1::text IS NULL OR status = $1)
               AND ($2::text IS NULL OR job_type = $2)
               AND ($3::uuid IS NULL OR id < $3)
             ORDER BY id DESC LIMIT $4"
        );
        let status = query.status.map(|s| s.as_str());
        let job_type = query.job_type.as_ref().map(JobType::as_str);
        let before = query.before.map(|id| id.as_uuid());
        let rows = client
            .query(&sql, &[&status, &job_type, &before, &int(query.limit)])
            .await?;
        rows.iter().map(from_row).collect()
    }

    async fn reserve_key(
        &self,
        key: &str,
        request_hash: &str,
        id: JobId,
    ) -> Result<Reservation, StoreError> {
        let client = self.pool.get().await?;
        let inserted = client
            .execute(
                "INSERT INTO warren_idempotency (key, request_hash, job_id, accepted, created_at)
                 VALUES ($1, $2, $3, false, now()) ON CONFLICT (key) DO NOTHING",
                &[&key, &request_hash, &id.as_uuid()],
            )
            .await?;
        if inserted == 1 {
            return Ok(Reservation::Reserved);
        }
        let row = client
            .query_opt(
                "SELECT request_hash, job_id, accepted FROM warren_idempotency WHERE key = $1",
                &[&key],
            )
            .await?;
        // Gone between the two statements (released or purged): the caller may try again.
        let Some(row) = row else {
            return Ok(Reservation::InProgress);
        };
        Ok(if row.get::<_, String>(0) != request_hash {
            Reservation::Mismatch
        } else if row.get::<_, bool>(2) {
            Reservation::Replay(JobId::from(row.get::<_, Uuid>(1)))
        } else {
            Reservation::InProgress
        })
    }

    async fn settle_key(&self, key: &str, accepted: bool) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        let sql = if accepted {
            "UPDATE warren_idempotency SET accepted = true WHERE key = $1"
        } else {
            "DELETE FROM warren_idempotency WHERE key = $1"
        };
        client.execute(sql, &[&key]).await?;
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
}
