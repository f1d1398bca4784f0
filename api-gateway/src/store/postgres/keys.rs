//! API keys in `warren_api_keys` (the secret's SHA-256 only), and the insert that holds a key's
//! cap on jobs in flight across gateways.
//!
//! The capped insert takes a transaction-scoped advisory lock on the key, so two gateways
//! submitting for the same key count and insert one after the other: the cap cannot be passed
//! by submits racing on different gateways. Keys without a cap keep the group-committed insert.

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Pool};
use tokio_postgres::Row;
use uuid::Uuid;

use super::{
    super::{Inserted, Job, KeyClaim, StoreError},
    discard_on_error,
    rows::{self, Columns},
};
use crate::auth::keys::{ApiKey, Right};

macro_rules! columns {
    () => {
        "id, tenant, name, rights, rate_per_sec, burst, max_in_flight, secret_sha256, \
         created_at, revoked_at"
    };
}

const INSERT: &str = concat!(
    "INSERT INTO warren_api_keys (",
    columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
);
const SELECT_ONE: &str = concat!("SELECT ", columns!(), " FROM warren_api_keys WHERE id = $1");
const SELECT_ALL: &str = concat!("SELECT ", columns!(), " FROM warren_api_keys ORDER BY id");
const REVOKE: &str = concat!(
    "UPDATE warren_api_keys SET revoked_at = coalesce(revoked_at, $2) WHERE id = $1 RETURNING ",
    columns!()
);
/// Serialises the capped inserts of one key (the lock's key is drawn from the key's id).
const LOCK_KEY: &str = "SELECT pg_advisory_xact_lock($1)";
/// The key's unfinished jobs (the partial index `warren_jobs_key_in_flight` answers it).
const COUNT_IN_FLIGHT: &str = "SELECT count(*) FROM warren_jobs WHERE key_id = $1
    AND status IN ('scheduled', 'queued', 'running', 'retrying')";
const SELECT_CLAIM: &str = "SELECT request_hash, job_id FROM warren_idempotency WHERE key = $1";
const INSERT_CLAIM: &str = "INSERT INTO warren_idempotency (key, request_hash, job_id, created_at)
    VALUES ($1, $2, $3, now()) ON CONFLICT (key) DO NOTHING";

fn from_row(row: &Row) -> Result<ApiKey, StoreError> {
    let corrupt =
        |column: &str| StoreError::Corrupt(format!("unreadable {column} in warren_api_keys"));
    macro_rules! get {
        ($column:literal) => {
            row.try_get($column).map_err(|_| corrupt($column))?
        };
    }
    let rights: Vec<String> = get!("rights");
    let unsigned = |value: Option<i32>, column| {
        value
            .map(|v| u32::try_from(v).map_err(|_| corrupt(column)))
            .transpose()
    };
    let digest: Vec<u8> = get!("secret_sha256");
    Ok(ApiKey {
        id: get!("id"),
        tenant: get!("tenant"),
        name: get!("name"),
        rights: rights
            .iter()
            .map(|name| Right::parse(name).ok_or_else(|| corrupt("rights")))
            .collect::<Result<_, _>>()?,
        rate_per_sec: get!("rate_per_sec"),
        burst: unsigned(get!("burst"), "burst")?,
        max_in_flight: unsigned(get!("max_in_flight"), "max_in_flight")?,
        created_at: get!("created_at"),
        revoked_at: get!("revoked_at"),
        secret_sha256: digest.try_into().map_err(|_| corrupt("secret_sha256"))?,
    })
}

fn signed(value: Option<u32>) -> Option<i32> {
    value.map(|v| i32::try_from(v).unwrap_or(i32::MAX))
}

pub(super) async fn insert(pool: &Pool, key: &ApiKey) -> Result<(), StoreError> {
    let client = pool.get().await?;
    let statement = client.prepare_cached(INSERT).await?;
    let rights: Vec<&str> = key.rights.iter().map(|r| r.as_str()).collect();
    client
        .execute(
            &statement,
            &[
                &key.id,
                &key.tenant,
                &key.name,
                &rights,
                &key.rate_per_sec,
                &signed(key.burst),
                &signed(key.max_in_flight),
                &key.secret_sha256.as_slice(),
                &key.created_at,
                &key.revoked_at,
            ],
        )
        .await?;
    Ok(())
}

pub(super) async fn get(pool: &Pool, id: Uuid) -> Result<Option<ApiKey>, StoreError> {
    let client = pool.get().await?;
    let statement = client.prepare_cached(SELECT_ONE).await?;
    client
        .query_opt(&statement, &[&id])
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

pub(super) async fn list(pool: &Pool) -> Result<Vec<ApiKey>, StoreError> {
    let client = pool.get().await?;
    let statement = client.prepare_cached(SELECT_ALL).await?;
    client
        .query(&statement, &[])
        .await?
        .iter()
        .map(from_row)
        .collect()
}

pub(super) async fn revoke(
    pool: &Pool,
    id: Uuid,
    at: DateTime<Utc>,
) -> Result<Option<ApiKey>, StoreError> {
    let client = pool.get().await?;
    let statement = client.prepare_cached(REVOKE).await?;
    client
        .query_opt(&statement, &[&id, &at])
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// The advisory lock's key for API key `id`: its last 8 bytes (random in a UUIDv7). Two keys
/// that share them only wait for each other.
fn lock_of(id: Uuid) -> i64 {
    let bytes = id.as_bytes();
    let mut tail = [0_u8; 8];
    tail.copy_from_slice(&bytes[8..]);
    i64::from_be_bytes(tail)
}

pub(super) async fn insert_capped(
    pool: &Pool,
    job: &Job,
    claim: Option<&KeyClaim>,
    max_in_flight: u32,
) -> Result<Inserted, StoreError> {
    let mut client = pool.get().await?;
    let outcome = capped(&mut client, job, claim, max_in_flight).await;
    discard_on_error(client, outcome.as_ref().err());
    outcome
}

async fn capped(
    client: &mut deadpool_postgres::Object,
    job: &Job,
    claim: Option<&KeyClaim>,
    max_in_flight: u32,
) -> Result<Inserted, StoreError> {
    let Some(key_id) = job.key_id else {
        return Err(StoreError::Query(std::sync::Arc::new(
            std::io::Error::other("a capped insert needs the job's key_id"),
        )));
    };
    let tx = client.transaction().await?;
    tx.execute(LOCK_KEY, &[&lock_of(key_id)]).await?;
    if let Some(claim) = claim
        && let Some(row) = tx.query_opt(SELECT_CLAIM, &[&claim.key]).await?
    {
        let (hash, earlier): (String, Uuid) = (row.get(0), row.get(1));
        return Ok(if hash == claim.request_hash {
            Inserted::Replay(earlier.into())
        } else {
            Inserted::KeyMismatch
        });
    }
    if count_reaches(&tx, key_id, max_in_flight).await? {
        return Ok(Inserted::AtCapacity);
    }
    if let Some(claim) = claim {
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
            [&claim.key, &claim.request_hash, &job.id.as_uuid()];
        if tx.execute(INSERT_CLAIM, &params).await? == 0 {
            return Err(StoreError::unavailable(
                "the idempotency key was claimed by a request for another API key meanwhile",
            ));
        }
    }
    let insert = tx.prepare_cached(rows::INSERT).await?;
    let columns = Columns::of(std::iter::once(job));
    let inserted = tx.query(&insert, &columns.params()).await?;
    if inserted.is_empty() {
        return Err(StoreError::Duplicate(job.id));
    }
    tx.commit().await?;
    Ok(Inserted::New)
}

/// Takes API key `key`'s advisory lock in `tx` and says whether it already has `max` unfinished
/// jobs (then `tx` should change nothing that would add one).
pub(super) async fn at_capacity(
    tx: &deadpool_postgres::Transaction<'_>,
    key: Uuid,
    max: u32,
) -> Result<bool, StoreError> {
    tx.execute(LOCK_KEY, &[&lock_of(key)]).await?;
    count_reaches(tx, key, max).await
}

/// Whether API key `key` has `max` or more unfinished jobs.
async fn count_reaches(
    tx: &deadpool_postgres::Transaction<'_>,
    key: Uuid,
    max: u32,
) -> Result<bool, StoreError> {
    let in_flight: i64 = tx.query_one(COUNT_IN_FLIGHT, &[&key]).await?.get(0);
    Ok(in_flight >= i64::from(max))
}
