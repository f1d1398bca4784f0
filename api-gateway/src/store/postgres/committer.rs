//! Group commit for new records: concurrent submits share one transaction.
//!
//! A submit hands its record (and idempotency key) to the committer task and awaits the
//! outcome. The task takes whatever has queued up meanwhile (up to [`MAX_BATCH`]) and writes
//! it with one multi-row insert per table, in one transaction; at most [`IN_FLIGHT`] batches
//! commit at once, so under load batches grow instead of queueing more transactions (on the
//! 2-core benchmark machine one in flight beat two and four: fewer, larger batches cost the
//! database less CPU; see BENCHMARKS.md). A batch that fails is rolled back whole and every
//! submit in it gets the error.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Instant,
};

use deadpool_postgres::Pool;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{
    super::{Inserted, Job, KeyClaim, StoreError},
    recent::Recent,
    rows::{self, Columns},
};

/// The most records one transaction takes.
const MAX_BATCH: usize = 512;
/// Batches committing at once.
const IN_FLIGHT: usize = 1;

/// Claims keys; returns the ones this batch now holds, with their job.
const INSERT_KEYS: &str = "INSERT INTO warren_idempotency (key, request_hash, job_id, created_at)
    SELECT k, h, j, now() FROM unnest($1::text[], $2::text[], $3::uuid[]) AS t(k, h, j)
    ON CONFLICT (key) DO NOTHING RETURNING key, job_id";
/// Keys that were already taken.
const SELECT_KEYS: &str =
    "SELECT key, request_hash, job_id FROM warren_idempotency WHERE key = ANY($1)";

/// One submit waiting for its batch.
struct Pending {
    job: Job,
    claim: Option<KeyClaim>,
    reply: oneshot::Sender<Result<Inserted, StoreError>>,
}

/// The handle submits use; the task stops when the last handle is dropped.
#[derive(Debug, Clone)]
pub(super) struct Committer {
    sender: mpsc::Sender<Pending>,
}

impl Committer {
    /// Starts the committer task on `pool`; it keeps a copy of every new record in `recent`.
    pub(super) fn start(pool: Pool, recent: Arc<Recent>) -> Self {
        let (sender, receiver) = mpsc::channel(MAX_BATCH * IN_FLIGHT);
        tokio::spawn(run(pool, recent, receiver));
        Self { sender }
    }

    /// Stores `job` (and its key) in the next batch.
    pub(super) async fn insert(
        &self,
        job: Job,
        claim: Option<KeyClaim>,
    ) -> Result<Inserted, StoreError> {
        let (reply, outcome) = oneshot::channel();
        let pending = Pending { job, claim, reply };
        self.sender
            .send(pending)
            .await
            .map_err(|_| StoreError::unavailable("the store's committer has stopped"))?;
        outcome
            .await
            .map_err(|_| StoreError::unavailable("the insert batch was dropped"))?
    }
}

async fn run(pool: Pool, recent: Arc<Recent>, mut receiver: mpsc::Receiver<Pending>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = receiver.recv().await {
        // Wait for a free slot before draining, so a busy database means bigger batches.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        let recent = recent.clone();
        tokio::spawn(async move {
            let _slot = slot;
            commit(&pool, &recent, batch).await;
        });
    }
}

async fn commit(pool: &Pool, recent: &Recent, batch: Vec<Pending>) {
    let started = Instant::now();
    let (records, replies): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|p| ((p.job, p.claim), p.reply))
        .unzip();
    match insert_batch(pool, &records).await {
        Ok(outcomes) => {
            for ((job, _), outcome) in records.iter().zip(&outcomes) {
                if matches!(outcome, Ok(Inserted::New)) {
                    recent.remember(job);
                }
            }
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // A submit that gave up (client gone) no longer listens; its record stays
                // marked and the relay publishes it.
                let _ = reply.send(outcome);
            }
        }
        Err(error) => {
            tracing::warn!(%error, records = records.len(), "insert batch rolled back");
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
    tracing::trace!(records = records.len(), elapsed = ?started.elapsed(), "insert batch");
}

/// Writes `records` in one transaction: keys first (a key already taken turns its record
/// into a replay or a mismatch), then every record whose key is its own. The outer error
/// means nothing was written; the inner ones are per record.
pub(super) async fn insert_batch(
    pool: &Pool,
    records: &[(Job, Option<KeyClaim>)],
) -> Result<Vec<Result<Inserted, StoreError>>, StoreError> {
    let client = pool.get().await?;
    let written = write_batch(&client, records).await;
    super::discard_on_error(client, written.as_ref().err());
    written
}

/// The batch's writes, with as few round trips as it takes: a batch without keys is one
/// multi-row insert (atomic by itself); with keys, `BEGIN` travels with the key insert and
/// `COMMIT` with the record insert (tokio-postgres pipelines requests polled together).
async fn write_batch(
    client: &deadpool_postgres::Object,
    records: &[(Job, Option<KeyClaim>)],
) -> Result<Vec<Result<Inserted, StoreError>>, StoreError> {
    let keyed: Vec<(usize, &KeyClaim, Uuid)> = records
        .iter()
        .enumerate()
        .filter_map(|(i, (job, claim))| claim.as_ref().map(|c| (i, c, job.id.as_uuid())))
        .collect();
    if keyed.is_empty() {
        let insert = client
            .prepare_cached(rows::insert_for(records.len()))
            .await?;
        let columns = Columns::of(records.iter().map(|(job, _)| job));
        let inserted = ids_of(&client.query(&insert, &columns.params()).await?);
        return Ok(records
            .iter()
            .map(|(job, _)| new_or_duplicate(job, &inserted))
            .collect());
    }
    let claim_keys = client.prepare_cached(INSERT_KEYS).await?;
    let keys: Vec<&str> = keyed.iter().map(|(_, c, _)| c.key.as_str()).collect();
    let hashes: Vec<&str> = keyed
        .iter()
        .map(|(_, c, _)| c.request_hash.as_str())
        .collect();
    let ids: Vec<Uuid> = keyed.iter().map(|(_, _, id)| *id).collect();
    let key_params: [&(dyn ToSql + Sync); 3] = [&keys, &hashes, &ids];
    let (begun, won) = tokio::join!(
        client.batch_execute("BEGIN"),
        client.query(&claim_keys, &key_params)
    );
    begun?;
    let won: HashMap<String, Uuid> = won?.iter().map(|row| (row.get(0), row.get(1))).collect();
    let mut outcomes: Vec<Option<Result<Inserted, StoreError>>> = vec![None; records.len()];
    let lost: Vec<_> = keyed
        .iter()
        .filter(|(_, claim, id)| won.get(&claim.key) != Some(id))
        .collect();
    if !lost.is_empty() {
        let keys: Vec<&str> = lost.iter().map(|(_, c, _)| c.key.as_str()).collect();
        let select_keys = client.prepare_cached(SELECT_KEYS).await?;
        let taken: HashMap<String, (String, Uuid)> = client
            .query(&select_keys, &[&keys])
            .await?
            .iter()
            .map(|row| (row.get(0), (row.get(1), row.get(2))))
            .collect();
        for (i, claim, _) in lost {
            outcomes[*i] = Some(match taken.get(&claim.key) {
                Some((hash, job)) if *hash == claim.request_hash => {
                    Ok(Inserted::Replay((*job).into()))
                }
                Some(_) => Ok(Inserted::KeyMismatch),
                None => Err(StoreError::unavailable(
                    "the idempotency key was released while being claimed",
                )),
            });
        }
    }
    let fresh: Vec<&Job> = records
        .iter()
        .zip(&outcomes)
        .filter(|(_, outcome)| outcome.is_none())
        .map(|((job, _), _)| job)
        .collect();
    let insert = client.prepare_cached(rows::insert_for(fresh.len())).await?;
    let columns = Columns::of(fresh.iter().copied());
    let params = columns.params();
    let (inserted, committed) = tokio::join!(
        client.query(&insert, &params),
        client.batch_execute("COMMIT")
    );
    let inserted = ids_of(&inserted?);
    committed?;
    Ok(records
        .iter()
        .zip(outcomes)
        .map(|((job, _), outcome)| outcome.unwrap_or_else(|| new_or_duplicate(job, &inserted)))
        .collect())
}

fn ids_of(rows: &[tokio_postgres::Row]) -> HashSet<Uuid> {
    rows.iter().map(|row| row.get(0)).collect()
}

/// `New` if the insert took the record, a duplicate id if it was already there.
fn new_or_duplicate(job: &Job, inserted: &HashSet<Uuid>) -> Result<Inserted, StoreError> {
    if inserted.contains(&job.id.as_uuid()) {
        Ok(Inserted::New)
    } else {
        Err(StoreError::Duplicate(job.id))
    }
}

/// Clears outbox marks in batches: a confirmed publish must not cost a transaction of its own.
/// A mark that is never cleared (the gateway dies first, or the update fails) only means the
/// relay publishes the job once more.
#[derive(Debug, Clone)]
pub(super) struct Unmarker {
    sender: mpsc::UnboundedSender<Uuid>,
}

/// How long a confirmed mark waits before it is cleared; well below the relay's grace
/// (`WARREN_OUTBOX_GRACE_MS`, at least a second).
const UNMARK_DELAY: std::time::Duration = std::time::Duration::from_millis(250);

/// Clears many marks, locking the rows in id order as every multi-row write does: two
/// writers that lock overlapping rows in different orders deadlock (and PostgreSQL breaks
/// the tie only after `deadlock_timeout`, failing one of them).
const UNMARK: &str = "UPDATE warren_jobs SET unconfirmed_since = NULL WHERE id IN (
        SELECT id FROM warren_jobs WHERE id = ANY($1) AND unconfirmed_since IS NOT NULL
        ORDER BY id FOR UPDATE)";

impl Unmarker {
    /// Starts the task that clears marks on `pool`.
    pub(super) fn start(pool: Pool) -> Self {
        let (sender, mut receiver) = mpsc::unbounded_channel::<Uuid>();
        tokio::spawn(async move {
            while let Some(first) = receiver.recv().await {
                // Wait a moment first: a quick job's outcome clears its mark on the way, and
                // then this update finds nothing to write.
                tokio::time::sleep(UNMARK_DELAY).await;
                let mut ids = vec![first];
                while ids.len() < MAX_BATCH * 8 {
                    match receiver.try_recv() {
                        Ok(id) => ids.push(id),
                        Err(_) => break,
                    }
                }
                if let Err(error) = unmark(&pool, &ids).await {
                    tracing::warn!(%error, jobs = ids.len(), "cannot clear outbox marks; the relay will publish these jobs again");
                }
            }
        });
        Self { sender }
    }

    /// Queues the mark of `id` to be cleared.
    pub(super) fn clear(&self, id: Uuid) -> Result<(), StoreError> {
        self.sender
            .send(id)
            .map_err(|_| StoreError::unavailable("the store's mark clearer has stopped"))
    }
}

/// Clears the marks of `ids` now.
pub(super) async fn unmark(pool: &Pool, ids: &[Uuid]) -> Result<(), StoreError> {
    let client = pool.get().await?;
    let statement = client.prepare_cached(UNMARK).await?;
    client.execute(&statement, &[&ids]).await?;
    Ok(())
}
