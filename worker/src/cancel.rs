//! Cancel requests from `<ns>.control`, and the jobs running here that they may stop.
//!
//! A request for a job running in this process cancels its context (the handler is told to
//! stop). A request for a job not (yet) here is remembered, so that when the job is delivered
//! it is skipped. Requests are remembered for the last [`REMEMBERED`] jobs only; the gateway has
//! already made the job `cancelled` in its store, so a job that slips through runs with its
//! outcome ignored.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Mutex, MutexGuard, PoisonError},
};

use futures_util::StreamExt;
use lapin::{Channel, Consumer, types::FieldTable};
use tokio_util::sync::CancellationToken;
use warren_shared::{ControlAction, ControlMessage, JobId, Topology, message, topology};

use crate::acks::Acks;

/// How many cancel requests a worker remembers.
pub(crate) const REMEMBERED: usize = 100_000;

/// Cancel requests seen, and the jobs running here.
#[derive(Debug, Default)]
pub(crate) struct Cancels {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    requested: HashSet<JobId>,
    order: VecDeque<JobId>,
    running: HashMap<JobId, CancellationToken>,
}

impl Cancels {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        // Each change under the lock leaves the sets consistent: a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a cancel request and stops the job if it runs here.
    pub(crate) fn request(&self, id: JobId) {
        let mut inner = self.inner();
        if let Some(token) = inner.running.get(&id) {
            token.cancel();
        }
        if inner.requested.insert(id) {
            inner.order.push_back(id);
            if inner.order.len() > REMEMBERED
                && let Some(oldest) = inner.order.pop_front()
            {
                inner.requested.remove(&oldest);
            }
        }
    }

    /// Registers a job starting here; `token` is cancelled at once if a cancel request came
    /// first, or later when one comes. The registration ends when the guard drops.
    pub(crate) fn track(&self, id: JobId, token: CancellationToken) -> Running<'_> {
        let mut inner = self.inner();
        if inner.requested.contains(&id) {
            token.cancel();
        }
        inner.running.insert(id, token);
        Running { cancels: self, id }
    }
}

/// A job registered as running; unregisters on drop.
#[derive(Debug)]
pub(crate) struct Running<'a> {
    cancels: &'a Cancels,
    id: JobId,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.cancels.inner().running.remove(&self.id);
    }
}

/// Starts consuming `<ns>.control` on an exclusive queue of this session's own.
pub(crate) async fn consume_control(
    channel: &Channel,
    topology: &Topology,
) -> lapin::Result<Consumer> {
    let exchange = topology.control_exchange();
    topology::subscribe_exclusive(channel, exchange, "", FieldTable::default()).await
}

/// Applies cancel requests as they come, until the consumer ends with its session. Each
/// takes a delivery tag on the consume channel without needing an ack: `acks` hears of it.
pub(crate) async fn listen(cancels: &Cancels, mut control: Consumer, acks: &Acks) {
    while let Some(Ok(delivery)) = control.next().await {
        acks.settled(delivery.delivery_tag);
        match message::decode::<ControlMessage>(&delivery.data) {
            Ok(ControlMessage {
                action: ControlAction::Cancel,
                id,
                ..
            }) => {
                tracing::info!(job_id = %id, "cancel requested");
                cancels.request(id);
            }
            Err(error) => tracing::warn!(%error, "unreadable control message ignored"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_stops_a_running_job_and_marks_a_later_one() {
        let cancels = Cancels::default();
        let (running, later) = (JobId::new(), JobId::new());
        let token = CancellationToken::new();
        let guard = cancels.track(running, token.clone());
        cancels.request(running);
        assert!(token.is_cancelled());
        drop(guard);

        cancels.request(later);
        let token = CancellationToken::new();
        let _guard = cancels.track(later, token.clone());
        assert!(token.is_cancelled());
    }

    #[test]
    fn only_the_most_recent_requests_are_remembered() {
        let cancels = Cancels::default();
        let first = JobId::new();
        cancels.request(first);
        for _ in 0..REMEMBERED {
            cancels.request(JobId::new());
        }
        let token = CancellationToken::new();
        let _guard = cancels.track(first, token.clone());
        assert!(!token.is_cancelled());
        assert_eq!(cancels.inner().requested.len(), REMEMBERED);
    }
}
