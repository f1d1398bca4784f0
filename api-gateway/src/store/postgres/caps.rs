//! The in-flight cap of an API key, held across gateways: the capped job insert, and the check
//! a re-drive makes.
//!
//! The capped insert takes a transaction-scoped advisory lock on the key, so two gateways
//! submitting for the same key count and insert one after the other: the cap cannot be passed
//! by submits racing on different gateways. Keys without a cap keep the group-committed insert.

use uuid::Uuid;

use super::{
    super::{Inserted, KeyClaim, StoreError},
    rows::{self, Columns},
};
use crate::model::Job;

/// Serialises the capped inserts of one key (the lock's key is drawn from the key's id).
const LOCK_KEY: &str = "SELECT pg_advisory_xact_lock($1)";
/// The key's unfinished jobs (the partial index `warren_jobs_key_in_flight` answers it).
const COUNT_IN_FLIGHT: &str = "SELECT count(*) FROM warren_jobs WHERE key_id = $1
    AND status IN ('waiting', 'scheduled', 'queued', 'running', 'retrying')";
pub(super) const SELECT_CLAIM: &str =
    "SELECT request_hash, job_id FROM warren_idempotency WHERE key = $1";
pub(super) const INSERT_CLAIM: &str =
    "INSERT INTO warren_idempotency (key, request_hash, job_id, created_at)
    VALUES ($1, $2, $3, now()) ON CONFLICT (key) DO NOTHING";

/// The advisory lock's key for API key `id`: its last 8 bytes (random in a UUIDv7). Two keys
/// that share them only wait for each other.
fn lock_of(id: Uuid) -> i64 {
    let bytes = id.as_bytes();
    let mut tail = [0_u8; 8];
    tail.copy_from_slice(&bytes[8..]);
    i64::from_be_bytes(tail)
}

pub(super) async fn insert_capped(
    pool: &deadpool_postgres::Pool,
    job: &Job,
    claim: Option<&KeyClaim>,
    max_in_flight: u32,
) -> Result<Inserted, StoreError> {
    let mut client = pool.get().await?;
    let outcome = capped(&mut client, job, claim, max_in_flight).await;
    super::discard_on_error(client, outcome.as_ref().err());
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
    let insert = tx.prepare_cached(rows::insert_for(1)).await?;
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
    Ok(in_flight(tx, key).await? >= i64::from(max))
}

/// Takes API key `key`'s advisory lock in `tx` and counts its unfinished jobs.
pub(super) async fn lock_and_count(
    tx: &deadpool_postgres::Transaction<'_>,
    key: Uuid,
) -> Result<i64, StoreError> {
    tx.execute(LOCK_KEY, &[&lock_of(key)]).await?;
    in_flight(tx, key).await
}

async fn in_flight(tx: &deadpool_postgres::Transaction<'_>, key: Uuid) -> Result<i64, StoreError> {
    Ok(tx.query_one(COUNT_IN_FLIGHT, &[&key]).await?.get(0))
}
