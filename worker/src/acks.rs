//! Acks on a consume channel, sent together.
//!
//! An attempt whose outcome the broker confirmed hands its delivery's tag to [`Acks::ack`] and
//! goes on; a flusher sends what has gathered every [`GATHER`], or at once when a quarter of
//! the worker's concurrency is waiting (unacked deliveries count against the prefetch, so a
//! worker of concurrency 1 acks each job at once, as before). One `basic.ack` for many costs
//! the broker less CPU per job (see BENCHMARKS.md). It sends one ack with
//! `multiple` over the run of tags right after the last run it sent, but only while every tag
//! in that run was settled by this worker (acked here, or nacked already): a job still running,
//! or a tag this worker never saw settled (a flow token taken on the same channel), ends the
//! run, so `multiple` can never ack a delivery that is not done. An ack past the run waits one
//! more flush for the run to reach it, then goes alone. The pure part, what to send, is
//! [`Tags::plan`].
//!
//! At-least-once holds: an ack is still only ever sent after the outcome was confirmed. A
//! worker that dies before the flusher ran leaves a few more deliveries unacked than before
//! (those of the last [`GATHER`]); they run again, and the store keeps the first outcome, as
//! for any death between the outcome and its ack.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use lapin::{Channel, options::BasicAckOptions};
use tokio::sync::Notify;
use warren_shared::metrics::Counter;

/// How long acks gather, at most, before they are sent.
pub(crate) const GATHER: Duration = Duration::from_millis(5);

/// Settled tags above the last run that are remembered; past this many the channel has a tag
/// that will never be settled here (a flow token), and acks go one by one from then on.
const REMEMBERED: usize = 4096;

/// The books of one channel's delivery tags (the broker numbers a channel's deliveries 1, 2, …).
#[derive(Debug, Default)]
pub(crate) struct Tags {
    /// Every tag up to this one is settled on the broker.
    floor: u64,
    /// Acked by an attempt, not sent yet.
    pending: BTreeSet<u64>,
    /// Of those, the ones already waiting at the last flush (past the run then).
    aged: BTreeSet<u64>,
    /// Settled on the broker above `floor` (nacked, rejected, acked alone, or never needing
    /// an ack).
    sent: BTreeSet<u64>,
    /// A tag will never be settled here: no more runs.
    one_by_one: bool,
}

/// What one flush sends.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// One ack with `multiple` up to this tag.
    pub(crate) up_to: Option<u64>,
    /// How many jobs that one ack settles.
    pub(crate) together: u64,
    /// Single acks.
    pub(crate) single: Vec<u64>,
}

impl Tags {
    /// Notes an ack to send; returns how many are waiting.
    pub(crate) fn ack(&mut self, tag: u64) -> usize {
        self.pending.insert(tag);
        self.pending.len().saturating_sub(self.aged.len())
    }

    /// Notes a tag settled some other way (a nack, or a delivery that needs no ack).
    pub(crate) fn settled(&mut self, tag: u64) {
        if tag > self.floor && !self.one_by_one {
            self.sent.insert(tag);
        }
    }

    /// What to send now; the books then count it as sent.
    pub(crate) fn plan(&mut self) -> Plan {
        let mut plan = Plan::default();
        if !self.one_by_one {
            let mut next = self.floor + 1;
            loop {
                if self.pending.remove(&next) {
                    self.aged.remove(&next);
                    plan.up_to = Some(next);
                    plan.together += 1;
                } else if !self.sent.remove(&next) {
                    break;
                }
                self.floor = next;
                next += 1;
            }
        }
        // Past the run: what already waited a flush goes alone; the rest waits one more.
        let aged = if self.one_by_one {
            std::mem::take(&mut self.pending)
        } else {
            std::mem::take(&mut self.aged)
        };
        for tag in &aged {
            self.pending.remove(tag);
        }
        self.aged.clone_from(&self.pending);
        plan.single = aged.into_iter().collect();
        if !self.one_by_one {
            self.sent.extend(&plan.single);
            if self.sent.len() > REMEMBERED {
                self.one_by_one = true;
                self.sent.clear();
            }
        }
        plan
    }
}

/// What the flusher counts: jobs acked, and the `basic.ack` frames that carried them.
#[derive(Debug, Clone, Default)]
pub(crate) struct AckCounters {
    pub(crate) acks: Counter,
    pub(crate) frames: Counter,
}

struct Inner {
    channel: Channel,
    counters: AckCounters,
    tags: Mutex<Tags>,
    /// Waiting acks this many or more are sent at once.
    flush_at: usize,
    /// An ack is waiting (or a handle was dropped).
    wake: Notify,
    /// `flush_at` acks are waiting.
    full: Notify,
}

/// A handle on one consume channel's acks. The flusher ([`Acks::new`]) runs until the last
/// handle is dropped, then sends what is left and ends.
pub(crate) struct Acks {
    inner: Arc<Inner>,
}

impl Clone for Acks {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl Drop for Acks {
    fn drop(&mut self) {
        // The flusher checks whether it is the last holder.
        self.inner.wake.notify_one();
    }
}

impl Acks {
    /// Acks for `channel` of a worker running `concurrency` jobs, and the flusher to run
    /// beside the jobs (tracked like them, so a graceful stop sends the last acks before the
    /// channel closes).
    pub(crate) fn new(
        channel: Channel,
        concurrency: u16,
        counters: AckCounters,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let inner = Arc::new(Inner {
            channel,
            counters,
            tags: Mutex::new(Tags::default()),
            flush_at: usize::from(concurrency / 4).max(1),
            wake: Notify::new(),
            full: Notify::new(),
        });
        let flusher = flush_until_released(inner.clone());
        (Self { inner }, flusher)
    }

    /// Queues the ack of `tag` (the outcome is confirmed).
    pub(crate) fn ack(&self, tag: u64) {
        let waiting = self.with_tags(|tags| tags.ack(tag));
        self.inner.wake.notify_one();
        if waiting >= self.inner.flush_at {
            self.inner.full.notify_one();
        }
    }

    /// Notes `tag` settled otherwise (nacked, or never needing an ack).
    pub(crate) fn settled(&self, tag: u64) {
        self.with_tags(|tags| tags.settled(tag));
    }

    fn with_tags<T>(&self, f: impl FnOnce(&mut Tags) -> T) -> T {
        let mut tags = self
            .inner
            .tags
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(&mut tags)
    }
}

/// Sends gathered acks every [`GATHER`] while anyone holds a handle; then the rest, and ends.
async fn flush_until_released(inner: Arc<Inner>) {
    loop {
        inner.wake.notified().await;
        let last = Arc::strong_count(&inner) == 1;
        if !last {
            tokio::select! {
                () = tokio::time::sleep(GATHER) => {}
                () = inner.full.notified() => {}
            }
        }
        let waiting = flush(&inner).await;
        if last || Arc::strong_count(&inner) == 1 {
            while flush(&inner).await {}
            return;
        }
        if waiting {
            // Acks past the run wait for the next flush.
            inner.wake.notify_one();
        }
    }
}

/// Sends what [`Tags::plan`] says; returns whether acks are still waiting (past the run).
async fn flush(inner: &Inner) -> bool {
    let (plan, waiting) = {
        let mut tags = inner.tags.lock().unwrap_or_else(PoisonError::into_inner);
        let plan = tags.plan();
        (plan, !tags.pending.is_empty())
    };
    let multiple = plan.up_to.map(|tag| (tag, true, plan.together));
    let single = plan.single.iter().map(|tag| (*tag, false, 1));
    for (tag, multiple, jobs) in multiple.into_iter().chain(single) {
        let options = BasicAckOptions { multiple };
        if let Err(error) = inner.channel.basic_ack(tag, options).await {
            // The channel died after the outcomes were confirmed: these jobs will be handed out
            // again, and the store ignores their second outcomes.
            tracing::warn!(%error, tag, multiple, "outcomes confirmed but ack failed; these jobs will run again");
            return false;
        }
        inner.counters.acks.inc_by(jobs);
        inner.counters.frames.inc();
    }
    waiting
}

#[cfg(test)]
mod tests {
    use super::{Plan, REMEMBERED, Tags};

    fn plan(up_to: Option<u64>, together: u64, single: &[u64]) -> Plan {
        Plan {
            up_to,
            together,
            single: single.to_vec(),
        }
    }

    #[test]
    fn a_run_of_acks_from_the_start_goes_as_one() {
        let mut tags = Tags::default();
        for tag in [2, 1, 3] {
            tags.ack(tag);
        }
        assert_eq!(tags.plan(), plan(Some(3), 3, &[]));
        assert_eq!(tags.plan(), plan(None, 0, &[]));
    }

    #[test]
    fn a_running_job_ends_the_run_and_later_acks_go_alone() {
        let mut tags = Tags::default();
        // 2 is still running.
        for tag in [1, 3, 4] {
            tags.ack(tag);
        }
        // 3 and 4 wait one flush for 2.
        assert_eq!(tags.plan(), plan(Some(1), 1, &[]));
        tags.ack(2);
        tags.ack(5);
        assert_eq!(tags.plan(), plan(Some(5), 4, &[]));
    }

    #[test]
    fn an_ack_past_the_run_goes_alone_after_waiting_one_flush() {
        let mut tags = Tags::default();
        // 1 is still running.
        tags.ack(2);
        assert_eq!(tags.plan(), plan(None, 0, &[]));
        tags.ack(3);
        assert_eq!(tags.plan(), plan(None, 0, &[2]));
        assert_eq!(tags.plan(), plan(None, 0, &[3]));
        // Once 1 is acked, the run passes 2 and 3 (sent alone already).
        tags.ack(1);
        tags.ack(4);
        assert_eq!(tags.plan(), plan(Some(4), 2, &[]));
    }

    #[test]
    fn a_nacked_tag_does_not_end_the_run() {
        let mut tags = Tags::default();
        tags.ack(1);
        tags.settled(2);
        tags.ack(3);
        assert_eq!(tags.plan(), plan(Some(3), 2, &[]));
    }

    #[test]
    fn a_tag_never_settled_here_is_never_covered() {
        let mut tags = Tags::default();
        // 2 is a flow token this book never hears of.
        tags.ack(1);
        tags.ack(3);
        assert_eq!(tags.plan(), plan(Some(1), 1, &[]));
        let mut acked = 3;
        while acked < 3 + REMEMBERED as u64 + 10 {
            acked += 1;
            tags.ack(acked);
            let p = tags.plan();
            assert_eq!(p.up_to, None, "tag 2 must never be covered");
            // Each ack goes alone, one flush after it came (at once past the limit).
            let alone = [vec![acked - 1], vec![acked - 1, acked], vec![acked]];
            assert!(alone.contains(&p.single), "{:?} after {acked}", p.single);
        }
        // The books stay bounded: past the limit they are dropped and acks go one by one.
        assert!(tags.sent.len() <= REMEMBERED);
        assert!(tags.one_by_one);
    }
}
