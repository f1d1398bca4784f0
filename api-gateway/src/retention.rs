//! Retention: finished jobs older than `WARREN_RETENTION` (default 7 days) are deleted, and
//! idempotency keys after 24 hours (or the retention, if longer), by a task that runs at start
//! and then every ten minutes. Several gateways may run it at once; deletes are idempotent.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::store::JobStore;

/// How long an idempotency key is kept at least.
pub const KEY_TTL: Duration = Duration::from_secs(24 * 3600);
/// How often the task runs.
const EVERY: Duration = Duration::from_secs(600);

/// Purges until `stop` is cancelled.
pub async fn run(store: Arc<dyn JobStore>, retention: Duration, stop: CancellationToken) {
    loop {
        purge_once(store.as_ref(), retention).await;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
    }
}

/// One purge: logs what went, or why it could not run (it tries again next time).
pub async fn purge_once(store: &dyn JobStore, retention: Duration) {
    let now = Utc::now();
    // A retention too large to subtract (e.g. 100000000d) means "keep everything".
    let cutoff = |age: Duration| {
        chrono::Duration::from_std(age)
            .ok()
            .and_then(|age| now.checked_sub_signed(age))
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    };
    match store
        .purge(cutoff(retention), cutoff(retention.max(KEY_TTL)))
        .await
    {
        Ok(0) => {}
        Ok(purged) => tracing::info!(purged, "retention: deleted finished jobs"),
        Err(error) => tracing::warn!(%error, "retention purge failed; retrying later"),
    }
}
