//! The store's multi-row writes under row locks: writing back changed records, releasing due
//! scheduled jobs and single-record changes, each as one transaction that also announces the
//! changed ids and marks the workflows of finished steps owed a settle.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;
use uuid::Uuid;
use warren_shared::JobId;

use super::{
    super::{Job, StoreError, transition},
    PostgresStore, caps, changes,
    rows::{self, Columns, from_row},
    saturating_i64, workflows,
};

impl PostgresStore {
    /// Writes `changed` back and announces them, then commits, in one round trip (the update,
    /// the `NOTIFY` and `COMMIT` are pipelined); only commits when nothing changed.
    pub(super) async fn write_and_commit(
        &self,
        client: &deadpool_postgres::Object,
        changed: &[&Job],
    ) -> Result<(), StoreError> {
        if changed.is_empty() {
            client.batch_execute("COMMIT").await?;
            return Ok(());
        }
        let update = client
            .prepare_cached(rows::update_for(changed.len()))
            .await?;
        let notify = client.prepare_cached(changes::NOTIFY).await?;
        let columns = Columns::of(changed.iter().copied());
        // Finished workflow steps mark their workflows owed a settle, in this transaction.
        let workflows = workflows::to_mark(changed.iter().copied());
        let mut ids: Vec<JobId> = changed.iter().map(|job| job.id).collect();
        ids.extend(workflows.iter().copied().map(JobId::from));
        let payloads = changes::payloads(&self.origin, &ids);
        let update_params = columns.update_params();
        let notify_params: [&(dyn ToSql + Sync); 2] = [&self.channel, &payloads];
        if workflows.is_empty() {
            let (updated, notified, committed) = tokio::join!(
                client.execute(&update, &update_params),
                client.execute(&notify, &notify_params),
                client.batch_execute("COMMIT")
            );
            updated?;
            notified?;
            committed?;
            return Ok(());
        }
        let mark = client.prepare_cached(workflows::MARK).await?;
        let mark_params: [&(dyn ToSql + Sync); 1] = [&workflows];
        let (updated, marked, notified, committed) = tokio::join!(
            client.execute(&update, &update_params),
            client.execute(&mark, &mark_params),
            client.execute(&notify, &notify_params),
            client.batch_execute("COMMIT")
        );
        updated?;
        marked?;
        notified?;
        committed?;
        Ok(())
    }

    /// Releases due scheduled jobs on `client`: locks them (skipping those another gateway
    /// holds), applies [`transition::release`], writes them back and announces them.
    pub(super) async fn release_on(
        &self,
        client: &deadpool_postgres::Object,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let lock = client.prepare_cached(rows::LOCK_DUE).await?;
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
        self.write_and_commit(client, &released.iter().collect::<Vec<_>>())
            .await?;
        Ok(released)
    }

    /// Locks the job's row, lets `change` work on the record, writes it back and announces it
    /// if its version moved, commits. `None` when no record has this id.
    pub(super) async fn modify<T>(
        &self,
        id: JobId,
        change: impl FnOnce(&mut Job) -> T + Send,
    ) -> Result<Option<(Job, T)>, StoreError> {
        Ok(match self.modify_capped(id, None, change).await? {
            Modified::Done(job, outcome) => Some((*job, outcome)),
            Modified::UnknownJob | Modified::AtCapacity => None,
        })
    }

    /// Runs `change` on record `id` under its row lock, as [`Self::modify`] does; with `cap`
    /// (an API key and its `max_in_flight`), first takes the key's advisory lock and refuses
    /// if the key already has that many unfinished jobs, so the count and the change are one
    /// step for every gateway (the capped insert takes the same lock).
    pub(super) async fn modify_capped<T>(
        &self,
        id: JobId,
        cap: Option<(Uuid, u32)>,
        change: impl FnOnce(&mut Job) -> T + Send,
    ) -> Result<Modified<T>, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        if let Some((key, max)) = cap
            && caps::at_capacity(&tx, key, max).await?
        {
            return Ok(Modified::AtCapacity);
        }
        let statement = tx.prepare_cached(rows::LOCK_MANY).await?;
        let Some(row) = tx.query(&statement, &[&vec![id.as_uuid()]]).await?.pop() else {
            return Ok(Modified::UnknownJob);
        };
        let mut job = from_row(&row)?;
        let before = job.version;
        let outcome = change(&mut job);
        if job.version != before {
            let statement = tx.prepare_cached(rows::update_for(1)).await?;
            tx.execute(&statement, &Columns::of([&job].into_iter()).update_params())
                .await?;
            let mut ids = vec![job.id];
            let workflows = workflows::to_mark([&job]);
            if !workflows.is_empty() {
                tx.execute(workflows::MARK, &[&workflows]).await?;
                ids.extend(workflows.iter().copied().map(JobId::from));
            }
            changes::notify(&tx, &self.channel, &self.origin, &ids).await?;
        }
        tx.commit().await?;
        Ok(Modified::Done(Box::new(job), outcome))
    }
}

/// What a capped change did.
pub(super) enum Modified<T> {
    /// The change ran (it may have changed nothing); the record after it.
    Done(Box<Job>, T),
    /// No record has this id.
    UnknownJob,
    /// The API key already has its cap of unfinished jobs; nothing ran.
    AtCapacity,
}
