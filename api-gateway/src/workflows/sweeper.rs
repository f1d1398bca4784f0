//! The sweeper: every gateway settles, every second, the workflows some gateway left owed a
//! settle (it died between applying a step's outcome and settling its workflow, or the settle
//! failed). A workflow is owed one while a step finished since its last complete settle; the
//! store hands out only those owed for more than a moment, so the settle right after a step
//! (by whoever applied it) usually comes first and the sweeper finds nothing.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::WorkflowService;

/// How often the sweeper looks.
const EVERY: Duration = Duration::from_secs(1);
/// Workflows settled per round.
const LIMIT: usize = 64;

/// Settles owed workflows every [`EVERY`] until `stop` is cancelled.
pub async fn run(service: WorkflowService, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
        match service.sweep(LIMIT).await {
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "workflow sweeper cannot read the store; retrying later");
            }
        }
    }
}
