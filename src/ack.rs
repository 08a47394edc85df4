//! Acknowledgements: a source position is committed only after every sink that received its
//! events has made them durable (at least once).
//!
//! The decoder registers each batch it hands to the sinks and gets an [`AckToken`]. Every sink
//! that keeps data from the batch keeps a clone of the token until that data is durable, then
//! drops it. When the last clone is gone the batch is acknowledged. Batches of one partition may
//! be acknowledged out of order (the lake flushes objects by hour, dead letters flush on their
//! own), so the tracker commits only the contiguous acknowledged prefix: the *frontier*, the
//! next offset to read after a restart. A sink that gives up calls [`AckToken::fail`]; the
//! partition's frontier then stops before that batch until the process restarts and replays it.
//!
//! Which turn of ownership a partition is in comes from [`crate::partitions`]: a batch of an
//! earlier turn counts for nothing.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

/// One partition of one source stream (a Kafka topic partition, a Kinesis shard, a simulator
/// partition).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId {
    /// Topic or stream name.
    pub stream: Arc<str>,
    /// Partition number within the stream.
    pub index: u32,
}

impl PartitionId {
    /// A partition of `stream`.
    pub fn new(stream: impl Into<Arc<str>>, index: u32) -> PartitionId {
        PartitionId {
            stream: stream.into(),
            index,
        }
    }
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.stream, self.index)
    }
}

/// Tracks every batch in flight and the committable frontier of each partition.
#[derive(Clone)]
pub struct AckTracker {
    shared: Arc<Shared>,
}

struct Shared {
    /// Per-partition state; short critical sections only.
    state: Mutex<TrackerState>,
    /// Bumped on every completion so waiters can re-check.
    completions: watch::Sender<u64>,
}

#[derive(Default)]
struct TrackerState {
    /// Batches in flight and frontiers, by partition.
    partitions: HashMap<PartitionId, PartitionAcks>,
    /// Ids are unique across partitions and increase in registration order.
    next_batch_id: u64,
    /// Set once the process stops committing: later completions change nothing.
    closed: bool,
}

#[derive(Default)]
struct PartitionAcks {
    /// Registered batches in offset order, oldest first.
    pending: VecDeque<PendingBatch>,
    /// All offsets below this are durable in every sink.
    frontier: Option<u64>,
    /// The frontier last handed out by [`AckTracker::take_committable`].
    taken: Option<u64>,
    /// A batch of this partition failed: its frontier is stuck until a restart.
    failed: bool,
    /// The partition's turn of ownership ([`crate::partitions::Partitions::generation`]).
    /// Batches and tokens of an earlier turn no longer count.
    generation: u64,
}

struct PendingBatch {
    id: u64,
    /// The offset after the batch's last message.
    end_offset: u64,
    state: BatchState,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum BatchState {
    InFlight,
    Durable,
    Failed,
}

impl Default for AckTracker {
    fn default() -> Self {
        AckTracker::new()
    }
}

impl AckTracker {
    /// An empty tracker.
    pub fn new() -> AckTracker {
        let (completions, _) = watch::channel(0);
        AckTracker {
            shared: Arc::new(Shared {
                state: Mutex::new(TrackerState::default()),
                completions,
            }),
        }
    }

    /// A new turn of ownership `generation` of `partition` starts (it was assigned or
    /// revoked): batches of earlier turns will never be committed. Returns the durable
    /// frontier not yet handed out, to commit before letting go.
    pub(crate) fn start_turn(&self, partition: &PartitionId, generation: u64) -> Option<u64> {
        let mut state = self.shared.lock();
        let acks = state.partitions.entry(partition.clone()).or_default();
        let uncommitted = acks
            .frontier
            .filter(|frontier| Some(*frontier) != acks.taken);
        *acks = PartitionAcks {
            generation,
            ..PartitionAcks::default()
        };
        uncommitted
    }

    /// Registers a batch holding the messages of `partition` up to and including `last_offset`,
    /// read in turn `generation`. Batches of one turn must be registered in offset order. A
    /// batch of an earlier turn gets a token that counts for nothing.
    pub fn register(&self, partition: &PartitionId, generation: u64, last_offset: u64) -> AckToken {
        let mut state = self.shared.lock();
        let id = state.next_batch_id;
        state.next_batch_id += 1;
        let acks = state.partitions.entry(partition.clone()).or_default();
        // A batch of an earlier turn is not tracked: its token counts for nothing.
        if generation == acks.generation {
            debug_assert!(
                acks.pending
                    .back()
                    .is_none_or(|last| last.end_offset <= last_offset + 1),
                "batches of {partition} registered out of offset order"
            );
            acks.pending.push_back(PendingBatch {
                id,
                end_offset: last_offset + 1,
                state: BatchState::InFlight,
            });
        }
        AckToken {
            inner: Arc::new(TokenInner {
                shared: Arc::clone(&self.shared),
                partition: partition.clone(),
                batch_id: id,
                generation,
                failed: AtomicBool::new(false),
            }),
        }
    }

    /// Frontiers that moved since the last call: `(partition, next offset to read)`.
    pub fn take_committable(&self) -> Vec<(PartitionId, u64)> {
        let mut state = self.shared.lock();
        let mut moved = Vec::new();
        for (partition, acks) in state.partitions.iter_mut() {
            if acks.frontier.is_some() && acks.frontier != acks.taken {
                acks.taken = acks.frontier;
                moved.push((partition.clone(), acks.frontier.unwrap_or_default()));
            }
        }
        moved.sort();
        moved
    }

    /// Batches registered and not yet acknowledged, over all partitions.
    pub fn in_flight(&self) -> usize {
        let state = self.shared.lock();
        state
            .partitions
            .values()
            .map(|acks| acks.pending.len())
            .sum()
    }

    /// Partitions whose frontier is stuck behind a failed batch.
    pub fn failed_partitions(&self) -> Vec<PartitionId> {
        let state = self.shared.lock();
        let mut failed: Vec<_> = state
            .partitions
            .iter()
            .filter(|(_, acks)| acks.failed)
            .map(|(partition, _)| partition.clone())
            .collect();
        failed.sort();
        failed
    }

    /// Waits until no batch is in flight, or `timeout` passes. Returns whether all settled.
    pub async fn wait_settled(&self, timeout: Duration) -> bool {
        let mut completions = self.shared.completions.subscribe();
        let settled = async {
            loop {
                if self.in_flight_not_failed() == 0 {
                    return;
                }
                if completions.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, settled).await.is_ok()
    }

    fn in_flight_not_failed(&self) -> usize {
        let state = self.shared.lock();
        let pending = state
            .partitions
            .values()
            .flat_map(|acks| acks.pending.iter());
        pending
            .filter(|batch| batch.state == BatchState::InFlight)
            .count()
    }

    /// Stops tracking: completions after this change nothing, so batches dropped by an aborted
    /// drain are never mistaken for durable ones.
    pub fn close(&self) {
        self.shared.lock().closed = true;
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, TrackerState> {
        // A panic while holding the lock leaves consistent state (every update is one step).
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn complete(
        &self,
        partition: &PartitionId,
        generation: u64,
        batch_id: u64,
        outcome: BatchState,
    ) {
        {
            let mut state = self.lock();
            if state.closed {
                return;
            }
            let Some(acks) = state.partitions.get_mut(partition) else {
                return;
            };
            if acks.generation != generation {
                return;
            }
            if let Ok(position) = acks
                .pending
                .binary_search_by_key(&batch_id, |batch| batch.id)
            {
                acks.pending[position].state = outcome;
            }
            acks.failed |= outcome == BatchState::Failed;
            while let Some(front) = acks.pending.front() {
                if front.state != BatchState::Durable {
                    break;
                }
                acks.frontier = Some(front.end_offset);
                acks.pending.pop_front();
            }
        }
        self.completions.send_modify(|count| *count += 1);
    }
}

/// Proof that a batch is still held by someone. Clone it for every sink that keeps data of the
/// batch; drop the clone once that data is durable.
#[derive(Clone)]
pub struct AckToken {
    inner: Arc<TokenInner>,
}

struct TokenInner {
    shared: Arc<Shared>,
    partition: PartitionId,
    batch_id: u64,
    /// The partition's turn when the batch was registered.
    generation: u64,
    /// Set by [`AckToken::fail`]: the batch must not be acknowledged.
    failed: AtomicBool,
}

impl AckToken {
    /// Marks the batch as not durable: its partition's frontier will not pass it.
    pub fn fail(&self) {
        self.inner.failed.store(true, Ordering::Release);
    }

    /// Whether two tokens belong to the same batch.
    pub fn same_batch(&self, other: &AckToken) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The partition of the batch.
    pub fn partition(&self) -> &PartitionId {
        &self.inner.partition
    }

    /// Whether the batch belongs to its partition's current turn of ownership. A batch of an
    /// earlier turn is never committed: whatever holds it may drop its data, the next turn
    /// replays it.
    pub fn is_current(&self) -> bool {
        let state = self.inner.shared.lock();
        state
            .partitions
            .get(&self.inner.partition)
            .is_none_or(|acks| acks.generation == self.inner.generation)
    }
}

impl fmt::Debug for AckToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "AckToken({}#{})",
            self.inner.partition, self.inner.batch_id
        )
    }
}

impl Drop for TokenInner {
    fn drop(&mut self) {
        let outcome = if self.failed.load(Ordering::Acquire) {
            BatchState::Failed
        } else {
            BatchState::Durable
        };
        self.shared
            .complete(&self.partition, self.generation, self.batch_id, outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn partition(index: u32) -> PartitionId {
        PartitionId::new("events", index)
    }

    #[test]
    fn frontier_waits_for_the_oldest_batch() {
        let tracker = AckTracker::new();
        let first = tracker.register(&partition(0), 0, 9);
        let second = tracker.register(&partition(0), 0, 19);
        let second_copy = second.clone();
        drop(second);
        drop(second_copy);
        assert!(
            tracker.take_committable().is_empty(),
            "batch 0..=9 is still in flight"
        );
        drop(first);
        assert_eq!(tracker.take_committable(), vec![(partition(0), 20)]);
        assert!(tracker.take_committable().is_empty(), "nothing moved since");
        assert_eq!(tracker.in_flight(), 0);
    }

    #[test]
    fn a_token_clone_keeps_the_batch_in_flight() {
        let tracker = AckTracker::new();
        let token = tracker.register(&partition(1), 0, 4);
        let held_by_sink = token.clone();
        drop(token);
        assert_eq!(tracker.in_flight(), 1);
        assert!(tracker.take_committable().is_empty());
        drop(held_by_sink);
        assert_eq!(tracker.take_committable(), vec![(partition(1), 5)]);
    }

    #[test]
    fn a_failed_batch_blocks_its_partition_only() {
        let tracker = AckTracker::new();
        let bad = tracker.register(&partition(0), 0, 0);
        let after_bad = tracker.register(&partition(0), 0, 1);
        let other = tracker.register(&partition(1), 0, 7);
        bad.fail();
        drop(bad);
        drop(after_bad);
        drop(other);
        assert_eq!(tracker.take_committable(), vec![(partition(1), 8)]);
        assert_eq!(tracker.failed_partitions(), vec![partition(0)]);
    }

    #[test]
    fn completions_after_close_are_ignored() {
        let tracker = AckTracker::new();
        let token = tracker.register(&partition(0), 0, 3);
        tracker.close();
        drop(token);
        assert!(tracker.take_committable().is_empty());
    }

    #[tokio::test]
    async fn wait_settled_returns_when_the_last_token_drops() {
        let tracker = AckTracker::new();
        let token = tracker.register(&partition(0), 0, 0);
        let waiter = tokio::spawn({
            let tracker = tracker.clone();
            async move { tracker.wait_settled(Duration::from_secs(5)).await }
        });
        tokio::task::yield_now().await;
        drop(token);
        assert!(waiter.await.unwrap());
        let stuck = tracker.register(&partition(0), 0, 1);
        assert!(!tracker.wait_settled(Duration::from_millis(20)).await);
        drop(stuck);
    }

    proptest! {
        /// Whatever order batches complete in, the frontier is the end of the longest
        /// acknowledged prefix, and it never moves backwards.
        #[test]
        fn frontier_is_the_acknowledged_prefix(order in Just((0..12usize).collect::<Vec<_>>()).prop_shuffle()) {
            let tracker = AckTracker::new();
            let mut tokens: Vec<Option<AckToken>> =
                (0..12u64).map(|i| Some(tracker.register(&partition(0), 0, i * 10 + 9))).collect();
            let mut done = [false; 12];
            let mut last_frontier = 0;
            for index in order {
                tokens[index].take();
                done[index] = true;
                let prefix = done.iter().take_while(|d| **d).count() as u64;
                if let Some((_, frontier)) = tracker.take_committable().pop() {
                    prop_assert!(frontier > last_frontier);
                    last_frontier = frontier;
                }
                prop_assert_eq!(last_frontier, prefix * 10);
            }
        }
    }
}
