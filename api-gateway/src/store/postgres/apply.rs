//! Applying a batch of worker events: from this gateway's copies where it has them, in one
//! round trip, and under row locks for the rest.
//!
//! - **From a copy** (the job was submitted through this gateway and has not changed since,
//!   see [`super::recent`]): the events are applied to the copy by the same
//!   [`transition`] function, and the result is written back only where the row is still at
//!   the copy's version (`UPDATE … WHERE version = $known`). `BEGIN`, the row locks (in id
//!   order, when there are several), that update, the notification and `COMMIT` travel
//!   together: no read, no row lock held across a round trip.
//! - **Under row locks**, as every other change: `BEGIN` with `SELECT … FOR UPDATE`, then the
//!   update, the notification and `COMMIT`. This takes the events of jobs without a copy,
//!   of jobs whose row had moved past their copy, and of jobs where an event was ignored
//!   (stale or redundant: decided again on the row itself, never on a copy).
//!
//! Both paths run the same rules on the same record, so they write the same row: the version
//! check makes the copy the row, and a job applied from a copy is one no other writer
//! touched in between.

use std::collections::{HashMap, HashSet, hash_map::Entry};

use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;
use uuid::Uuid;
use warren_shared::{JobEvent, JobId};

use super::{
    super::{Applied, Job, StoreError, transition},
    PostgresStore, changes,
    rows::{self, Columns, from_row},
};

/// A job's copy and the events of the batch applied to it.
struct FromCopy {
    /// The version the copy was taken at: the row must still be there.
    known: u64,
    job: Job,
    /// The batch's events for this job (indices), in order.
    events: Vec<usize>,
    /// Their outcomes, while every one applied.
    outcomes: Vec<Applied>,
    /// Whether every event applied (an ignored one sends the job to the locked path).
    all_applied: bool,
}

impl PostgresStore {
    /// Applies `events` on `client`, outcomes in the events' order: from copies first, then
    /// the rest under row locks. Each path is one transaction.
    pub(super) async fn apply_on(
        &self,
        client: &deadpool_postgres::Object,
        events: &[JobEvent],
    ) -> Result<Vec<Applied>, StoreError> {
        let (mut outcomes, rest) = self.apply_from_copies(client, events).await?;
        self.paths.add(outcomes.len() as u64, rest.len() as u64);
        if !rest.is_empty() {
            let locked: Vec<&JobEvent> = rest.iter().map(|&i| &events[i]).collect();
            let applied = self.apply_locked(client, &locked).await?;
            outcomes.extend(rest.into_iter().zip(applied));
        }
        outcomes.sort_unstable_by_key(|(i, _)| *i);
        Ok(outcomes.into_iter().map(|(_, outcome)| outcome).collect())
    }

    /// Applies the events of jobs this gateway holds a copy of, writing each back only if its
    /// row is still at the copy's version, in one round trip. Returns their outcomes (by
    /// event index) and the indices of the events left for the locked path, in order.
    async fn apply_from_copies(
        &self,
        client: &deadpool_postgres::Object,
        events: &[JobEvent],
    ) -> Result<(Vec<(usize, Applied)>, Vec<usize>), StoreError> {
        let mut copies: HashMap<JobId, FromCopy> = HashMap::new();
        let mut rest = Vec::new();
        for (i, event) in events.iter().enumerate() {
            let copy = match copies.entry(event.id) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) => match self.recent.take(event.id.as_uuid()) {
                    Some(job) => entry.insert(FromCopy {
                        known: job.version,
                        job,
                        events: Vec::new(),
                        outcomes: Vec::new(),
                        all_applied: true,
                    }),
                    None => {
                        rest.push(i);
                        continue;
                    }
                },
            };
            copy.events.push(i);
            if copy.all_applied {
                match transition::apply(&mut copy.job, event) {
                    Ok(()) => copy
                        .outcomes
                        .push(Applied::Updated(Box::new(copy.job.clone()))),
                    Err(_) => copy.all_applied = false,
                }
            }
        }
        let (writable, unsure): (Vec<FromCopy>, Vec<FromCopy>) =
            copies.into_values().partition(|copy| copy.all_applied);
        rest.extend(unsure.into_iter().flat_map(|copy| copy.events));
        let written = self.write_known(client, &writable).await?;
        let mut outcomes = Vec::new();
        let mut stale = 0_usize;
        for copy in writable {
            if written.contains(&copy.job.id.as_uuid()) {
                self.recent.remember(&copy.job);
                outcomes.extend(copy.events.into_iter().zip(copy.outcomes));
            } else {
                stale += 1;
                rest.extend(copy.events);
            }
        }
        rest.sort_unstable();
        tracing::trace!(
            written = written.len(),
            stale,
            locked = rest.len(),
            "events applied from copies"
        );
        Ok((outcomes, rest))
    }

    /// Writes `copies` back where their rows are still at the copies' versions and announces
    /// them, in one transaction and one round trip; returns the ids written. (A copy whose row
    /// had moved is announced too: a spurious wake-up only makes a waiter read again.)
    async fn write_known(
        &self,
        client: &deadpool_postgres::Object,
        copies: &[FromCopy],
    ) -> Result<HashSet<Uuid>, StoreError> {
        if copies.is_empty() {
            return Ok(HashSet::new());
        }
        let update = client
            .prepare_cached(rows::update_known_for(copies.len()))
            .await?;
        let notify = client.prepare_cached(changes::NOTIFY).await?;
        let columns = Columns::of(copies.iter().map(|copy| &copy.job));
        let known: Vec<i64> = copies
            .iter()
            .map(|copy| super::saturating_i64(copy.known))
            .collect();
        let mut update_params = columns.update_params().to_vec();
        update_params.push(&known);
        let ids: Vec<JobId> = copies.iter().map(|copy| copy.job.id).collect();
        let payloads = changes::payloads(&self.origin, &ids);
        let notify_params: [&(dyn ToSql + Sync); 2] = [&self.channel, &payloads];
        // Several rows are locked first, in id order, as every multi-row write locks them:
        // the update alone would lock them in its plan's order, and two writers locking
        // overlapping rows in different orders deadlock. One row needs no order.
        let lock = if copies.len() > 1 {
            let mut lock_ids: Vec<Uuid> = ids.iter().map(|id| id.as_uuid()).collect();
            lock_ids.sort_unstable();
            Some((client.prepare_cached(rows::LOCK_IDS).await?, lock_ids))
        } else {
            None
        };
        let locked = async {
            match &lock {
                Some((statement, lock_ids)) => {
                    let params: [&(dyn ToSql + Sync); 1] = [lock_ids];
                    client.query(statement, &params).await.map(drop)
                }
                None => Ok(()),
            }
        };
        let (begun, locked, written, notified, committed) = tokio::join!(
            client.batch_execute("BEGIN"),
            locked,
            client.query(&update, &update_params),
            client.execute(&notify, &notify_params),
            client.batch_execute("COMMIT")
        );
        begun?;
        locked?;
        let written = written?.iter().map(|row| row.get(0)).collect();
        notified?;
        committed?;
        Ok(written)
    }

    /// Applies `events` in one transaction on `client`, in two round trips: `BEGIN` with the
    /// row locks, then the update, the notification and `COMMIT` together.
    async fn apply_locked(
        &self,
        client: &deadpool_postgres::Object,
        events: &[&JobEvent],
    ) -> Result<Vec<Applied>, StoreError> {
        let mut ids: Vec<Uuid> = events.iter().map(|e| e.id.as_uuid()).collect();
        ids.sort_unstable();
        ids.dedup();
        let lock = client.prepare_cached(rows::LOCK_MANY).await?;
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
        self.write_and_commit(client, &changed).await?;
        Ok(applied)
    }
}
