//! Waking this gateway's waiters for changes other gateways made, from the store's change
//! feed (PostgreSQL `LISTEN/NOTIFY`). Changes this gateway makes wake its waiters directly.
//!
//! The feed is read on a connection of its own; when it is lost, changes in between are not
//! heard, so after every (re)connect each watched job is read again and its waiters woken.
//! A store only this process uses (memory) has no feed and needs none.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use warren_shared::{JobId, amqp, readiness::ReadyFlag};

use crate::{
    store::{JobStore, StoreError},
    watch::Watchers,
};

/// Follows the store's change feed until `stop` is cancelled, reconnecting with backoff;
/// `ready` is up while waiters can be woken.
pub async fn run(
    store: Arc<dyn JobStore>,
    watchers: Arc<Watchers>,
    ready: ReadyFlag,
    stop: CancellationToken,
) {
    amqp::reconnecting("store change feed", &stop, || {
        follow(store.as_ref(), &watchers, &ready, &stop)
    })
    .await;
}

/// One connection's worth of following; `Ok` only when asked to stop.
async fn follow(
    store: &dyn JobStore,
    watchers: &Watchers,
    ready: &ReadyFlag,
    stop: &CancellationToken,
) -> Result<(), StoreError> {
    let Some(mut feed) = store.changes().await? else {
        let _ready = ready.up();
        stop.cancelled().await;
        return Ok(());
    };
    let _ready = ready.up();
    wake(store, watchers, &watchers.watched_ids()).await;
    for workflow in watchers.watched_workflows() {
        watchers.publish_workflow(workflow);
    }
    loop {
        let changed = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            changed = feed.recv() => changed,
        };
        match changed {
            Some(ids) => wake(store, watchers, &ids).await,
            None => {
                return Err(StoreError::unavailable(
                    "the change feed's connection was lost",
                ));
            }
        }
    }
}

/// Reads the watched ones among `ids` and hands them to their waiters; wakes the waiters of
/// watched workflows among them (a workflow's id is announced with its steps' changes).
async fn wake(store: &dyn JobStore, watchers: &Watchers, ids: &[JobId]) {
    for id in ids {
        if watchers.is_watched_workflow(id.as_uuid()) {
            watchers.publish_workflow(id.as_uuid());
        }
    }
    let watched: Vec<JobId> = ids
        .iter()
        .copied()
        .filter(|id| watchers.is_watched(*id))
        .collect();
    if watched.is_empty() {
        return;
    }
    match store.get_many(&watched).await {
        Ok(jobs) => jobs.into_iter().for_each(|job| watchers.publish(job)),
        // Waiters re-read the store at their deadline (streams every 15 s).
        Err(error) => {
            tracing::warn!(%error, jobs = watched.len(), "cannot read changed jobs to wake their waiters")
        }
    }
}
