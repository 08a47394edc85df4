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
    /// Where partitions that continue others (Kinesis child shards) came from.
    lineage: HashMap<PartitionId, Lineage>,
}

/// What a partition continues: a Kinesis child shard continues its parents over its range of
/// hash keys (the MD5 of the partition key, as a 128-bit number), so each class open in a
/// parent goes on in exactly one child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    /// The partitions it continues.
    pub parents: Vec<PartitionId>,
    /// First and last hash key it holds.
    pub hash_range: (u128, u128),
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
    /// Turn of ownership: bumped each time the partition is assigned or revoked. Batches and
    /// tokens of an earlier turn no longer count.
    generation: u64,
    /// Assigned to this process by the source (sources that never assign leave it false).
    assigned: bool,
    /// Where the source stands against the partition's end, if it is there.
    end: Option<AtEnd>,
}

/// A source read a partition to its end and has seen nothing newer since: every message before
/// `next_offset` was read, and the source has had no reason to doubt, since `since_ms` (wall
/// clock, epoch ms), that it would have seen a newer one. The aggregate stage finalises a class
/// by the wall clock only on such a partition: a partition starved of fetches, paused by
/// backpressure or cut off from its broker holds events nobody has read yet.
///
/// Only the span from `since_ms` to `confirmed_ms`, the last time the source vouched for it,
/// counts as time at the end. The source vouches again at least every few seconds; a silence
/// past [`AT_END_STALE_MS`] (a process frozen, a reader stuck or backing off) makes it count
/// for nothing, and the time at the end starts again when the source vouches next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtEnd {
    /// The offset after the last message read.
    pub next_offset: u64,
    /// Since when the source has been at that end without doubt.
    pub since_ms: i64,
    /// When the source last vouched for it.
    pub confirmed_ms: i64,
}

/// How long a source's word that a partition is at its end holds without being repeated
/// (sources vouch at least every 10 s: Kafka on each statistics interval, Kinesis on each poll).
pub const AT_END_STALE_MS: i64 = 15_000;

impl AtEnd {
    fn fresh(&self, now_ms: i64) -> bool {
        now_ms - self.confirmed_ms <= AT_END_STALE_MS
    }
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

    /// The current turn of ownership of `partition` (0 until it is first assigned or revoked).
    pub fn generation(&self, partition: &PartitionId) -> u64 {
        let state = self.shared.lock();
        state
            .partitions
            .get(partition)
            .map_or(0, |acks| acks.generation)
    }

    /// `partition` was assigned to this process: a new turn starts. Batches in flight from an
    /// earlier turn will never be committed; the new turn replays from the committed position.
    pub fn assign(&self, partition: &PartitionId) {
        self.start_generation(partition, true);
    }

    /// Records what `partition` continues (before assigning it).
    pub fn set_lineage(&self, partition: &PartitionId, lineage: Lineage) {
        self.shared
            .lock()
            .lineage
            .insert(partition.clone(), lineage);
    }

    /// What `partition` continues, if it continues anything.
    pub fn lineage(&self, partition: &PartitionId) -> Option<Lineage> {
        self.shared.lock().lineage.get(partition).cloned()
    }

    /// `partition` was taken away: a new turn starts, in which this process holds nothing.
    /// Returns the durable frontier not yet handed out, to commit before letting go.
    pub fn revoke(&self, partition: &PartitionId) -> Option<u64> {
        self.start_generation(partition, false)
    }

    /// Partitions assigned now, with their turn.
    pub fn assigned(&self) -> Vec<(PartitionId, u64)> {
        let state = self.shared.lock();
        let mut assigned: Vec<_> = state
            .partitions
            .iter()
            .filter(|(_, acks)| acks.assigned)
            .map(|(partition, acks)| (partition.clone(), acks.generation))
            .collect();
        assigned.sort();
        assigned
    }

    fn start_generation(&self, partition: &PartitionId, assigned: bool) -> Option<u64> {
        let mut state = self.shared.lock();
        let acks = state.partitions.entry(partition.clone()).or_default();
        let uncommitted = acks
            .frontier
            .filter(|frontier| Some(*frontier) != acks.taken);
        *acks = PartitionAcks {
            generation: acks.generation + 1,
            assigned,
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

    /// The source read `partition` (in turn `generation`) to its end, `next_offset`, at
    /// `now_ms`. Repeating it for the same end vouches for it: the earlier time stands.
    pub fn reached_end(
        &self,
        partition: &PartitionId,
        generation: u64,
        next_offset: u64,
        now_ms: i64,
    ) {
        let mut state = self.shared.lock();
        let acks = state.partitions.entry(partition.clone()).or_default();
        if acks.generation != generation {
            return;
        }
        match &mut acks.end {
            Some(end) if end.next_offset == next_offset && end.fresh(now_ms) => {
                end.confirmed_ms = end.confirmed_ms.max(now_ms);
            }
            end => {
                *end = Some(AtEnd {
                    next_offset,
                    since_ms: now_ms,
                    confirmed_ms: now_ms,
                })
            }
        }
    }

    /// The source, at `now_ms`, is still at the end it reported for `partition` (it would have
    /// seen a newer message). After a silence past [`AT_END_STALE_MS`] the time at the end
    /// starts again.
    pub fn vouch_end(&self, partition: &PartitionId, now_ms: i64) {
        let mut state = self.shared.lock();
        let Some(end) = state
            .partitions
            .get_mut(partition)
            .and_then(|acks| acks.end.as_mut())
        else {
            return;
        };
        if !end.fresh(now_ms) {
            end.since_ms = end.since_ms.max(now_ms);
        }
        end.confirmed_ms = end.confirmed_ms.max(now_ms);
    }

    /// The source read a message of `partition` past the end it reported.
    pub fn left_end(&self, partition: &PartitionId) {
        if let Some(acks) = self.shared.lock().partitions.get_mut(partition) {
            acks.end = None;
        }
    }

    /// The source cannot vouch, at `now_ms`, that it would see a new message of `partition`
    /// (of every partition if `None`): paused, its broker away, a read failed. Its time at the
    /// end starts again from `now_ms`.
    pub fn doubt_end(&self, partition: Option<&PartitionId>, now_ms: i64) {
        let mut state = self.shared.lock();
        let push = |acks: &mut PartitionAcks| {
            if let Some(end) = &mut acks.end {
                end.since_ms = end.since_ms.max(now_ms);
            }
        };
        match partition {
            Some(partition) => state
                .partitions
                .get_mut(partition)
                .into_iter()
                .for_each(push),
            None => state.partitions.values_mut().for_each(push),
        }
    }

    /// Where the source stands, at `now_ms`, against the end of `partition` in turn
    /// `generation`: `None` unless it vouched for the end recently.
    pub fn at_end(&self, partition: &PartitionId, generation: u64, now_ms: i64) -> Option<AtEnd> {
        let state = self.shared.lock();
        let acks = state.partitions.get(partition)?;
        acks.end
            .filter(|end| acks.generation == generation && end.fresh(now_ms))
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

    #[test]
    fn the_end_of_a_partition_is_kept_until_read_past_and_doubts_restart_its_time() {
        let tracker = AckTracker::new();
        let p = PartitionId::new("t", 0);
        let q = PartitionId::new("t", 1);
        tracker.assign(&p);
        let turn = tracker.generation(&p);
        assert_eq!(tracker.at_end(&p, turn, 0), None);
        tracker.reached_end(&p, turn, 10, 1_000);
        // Reported again for the same end: the earlier time stands.
        tracker.reached_end(&p, turn, 10, 5_000);
        let at_end = |now_ms| {
            tracker
                .at_end(&p, turn, now_ms)
                .map(|e| (e.next_offset, e.since_ms))
        };
        assert_eq!(at_end(5_000), Some((10, 1_000)));
        // A report for an old turn changes nothing.
        tracker.reached_end(&p, turn - 1, 20, 6_000);
        assert_eq!(at_end(6_000), Some((10, 1_000)));
        tracker.doubt_end(Some(&q), 7_000);
        assert_eq!(at_end(6_000), Some((10, 1_000)));
        tracker.doubt_end(None, 8_000);
        assert_eq!(at_end(8_000), Some((10, 8_000)));
        tracker.doubt_end(Some(&p), 2_000);
        assert_eq!(at_end(8_000), Some((10, 8_000)));
        tracker.reached_end(&p, turn, 12, 9_000);
        assert_eq!(at_end(9_000), Some((12, 9_000)));
        // Not vouched for in time: it counts for nothing, and starts again when vouched for.
        let stale = 9_000 + AT_END_STALE_MS + 1;
        assert_eq!(at_end(stale), None);
        tracker.vouch_end(&p, stale);
        assert_eq!(at_end(stale), Some((12, stale)));
        tracker.vouch_end(&p, stale + 10_000);
        let vouched = |now_ms| {
            tracker
                .at_end(&p, turn, now_ms)
                .map(|e| (e.since_ms, e.confirmed_ms))
        };
        assert_eq!(vouched(stale + 20_000), Some((stale, stale + 10_000)));
        // A silence longer than the word lasts: the time at the end starts again.
        tracker.vouch_end(&p, stale + 30_000);
        assert_eq!(
            vouched(stale + 30_000),
            Some((stale + 30_000, stale + 30_000))
        );
        tracker.left_end(&p);
        assert_eq!(at_end(stale + 30_000), None);
        tracker.reached_end(&p, turn, 13, 9_500);
        // A new turn starts with nothing known.
        tracker.revoke(&p);
        assert_eq!(tracker.at_end(&p, turn, 9_500), None);
        assert_eq!(tracker.at_end(&p, tracker.generation(&p), 9_500), None);
    }

    #[test]
    fn a_new_turn_forgets_the_old_one() {
        let tracker = AckTracker::new();
        let done = tracker.register(&partition(0), 0, 9);
        let in_flight = tracker.register(&partition(0), 0, 19);
        drop(done);
        // Revoked: the durable frontier is handed back once, to commit before letting go.
        assert_eq!(tracker.revoke(&partition(0)), Some(10));
        assert!(tracker.assigned().is_empty());
        assert_eq!(tracker.generation(&partition(0)), 1);
        drop(in_flight);
        assert_eq!(tracker.in_flight(), 0);
        assert!(
            tracker.take_committable().is_empty(),
            "the old turn never commits"
        );
        // A batch read before the revoke but registered after it counts for nothing.
        let stale = tracker.register(&partition(0), 0, 29);
        assert!(!stale.is_current());
        drop(stale);
        assert!(tracker.take_committable().is_empty());
        // Assigned again: the next turn replays from the committed position, lower offsets
        // included.
        tracker.assign(&partition(0));
        assert_eq!(tracker.assigned(), vec![(partition(0), 2)]);
        drop(tracker.register(&partition(0), 1, 29));
        let replayed = tracker.register(&partition(0), 2, 4);
        assert_eq!(tracker.in_flight(), 1);
        drop(replayed);
        assert_eq!(tracker.take_committable(), vec![(partition(0), 5)]);
        assert_eq!(tracker.revoke(&partition(0)), None, "already handed out");
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
