//! The registry of the partitions this process reads: each one's turn of ownership, where the
//! source stands against its end, and what it continues. The sources write it; the
//! acknowledgements read the turn (a batch of an earlier turn is never committed), and the
//! aggregate stage reads all three: whose state it holds, whether the wall clock may make a
//! class final ([`AtEnd`]), and which parents' classes a new partition takes over
//! ([`Lineage`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::ack::{AckTracker, PartitionId};

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

/// What is known of one partition.
#[derive(Debug, Default)]
struct Entry {
    /// Turn of ownership: bumped each time the partition is assigned or revoked.
    generation: u64,
    /// Assigned to this process by the source (sources that never assign leave it false).
    assigned: bool,
    /// Where the source stands against the partition's end, if it is there.
    end: Option<AtEnd>,
}

#[derive(Default)]
struct Registry {
    entries: HashMap<PartitionId, Entry>,
    /// Where partitions that continue others (Kinesis child shards) came from.
    lineage: HashMap<PartitionId, Lineage>,
}

/// The partitions of this process, shared by the source, the acknowledgements and the
/// aggregate stage (cloning shares them).
#[derive(Clone)]
pub struct Partitions {
    registry: Arc<Mutex<Registry>>,
    acks: AckTracker,
}

impl Partitions {
    /// No partition yet; turns start the acknowledgements' turns in `acks`.
    pub fn new(acks: AckTracker) -> Partitions {
        Partitions {
            registry: Arc::default(),
            acks,
        }
    }

    /// The acknowledgements whose turns these partitions start.
    pub fn acks(&self) -> &AckTracker {
        &self.acks
    }

    /// The current turn of ownership of `partition` (0 until it is first assigned or revoked).
    pub fn generation(&self, partition: &PartitionId) -> u64 {
        self.lock()
            .entries
            .get(partition)
            .map_or(0, |entry| entry.generation)
    }

    /// `partition` was assigned to this process: a new turn starts. Batches in flight from an
    /// earlier turn will never be committed; the new turn replays from the committed position.
    pub fn assign(&self, partition: &PartitionId) {
        self.start_turn(partition, true);
    }

    /// `partition` was taken away: a new turn starts, in which this process holds nothing.
    /// Returns the durable frontier not yet handed out, to commit before letting go.
    pub fn revoke(&self, partition: &PartitionId) -> Option<u64> {
        self.start_turn(partition, false)
    }

    /// Partitions assigned now, with their turn.
    pub fn assigned(&self) -> Vec<(PartitionId, u64)> {
        let mut assigned: Vec<_> = self
            .lock()
            .entries
            .iter()
            .filter(|(_, entry)| entry.assigned)
            .map(|(partition, entry)| (partition.clone(), entry.generation))
            .collect();
        assigned.sort();
        assigned
    }

    /// A new turn, in the registry and the acknowledgements at once: the registry stays
    /// locked until the acknowledgements know the turn, so no batch is stamped with a turn
    /// they do not track yet.
    fn start_turn(&self, partition: &PartitionId, assigned: bool) -> Option<u64> {
        let mut registry = self.lock();
        let entry = registry.entries.entry(partition.clone()).or_default();
        *entry = Entry {
            generation: entry.generation + 1,
            assigned,
            end: None,
        };
        self.acks.start_turn(partition, entry.generation)
    }

    /// Records what `partition` continues (before assigning it).
    pub fn set_lineage(&self, partition: &PartitionId, lineage: Lineage) {
        self.lock().lineage.insert(partition.clone(), lineage);
    }

    /// What `partition` continues, if it continues anything.
    pub fn lineage(&self, partition: &PartitionId) -> Option<Lineage> {
        self.lock().lineage.get(partition).cloned()
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
        let mut state = self.lock();
        let entry = state.entries.entry(partition.clone()).or_default();
        if entry.generation != generation {
            return;
        }
        match &mut entry.end {
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
        let mut state = self.lock();
        let Some(end) = state
            .entries
            .get_mut(partition)
            .and_then(|entry| entry.end.as_mut())
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
        if let Some(entry) = self.lock().entries.get_mut(partition) {
            entry.end = None;
        }
    }

    /// The source cannot vouch, at `now_ms`, that it would see a new message of `partition`
    /// (of every partition if `None`): paused, its broker away, a read failed. Its time at the
    /// end starts again from `now_ms`.
    pub fn doubt_end(&self, partition: Option<&PartitionId>, now_ms: i64) {
        let mut state = self.lock();
        let push = |entry: &mut Entry| {
            if let Some(end) = &mut entry.end {
                end.since_ms = end.since_ms.max(now_ms);
            }
        };
        match partition {
            Some(partition) => state.entries.get_mut(partition).into_iter().for_each(push),
            None => state.entries.values_mut().for_each(push),
        }
    }

    /// Where the source stands, at `now_ms`, against the end of `partition` in turn
    /// `generation`: `None` unless it vouched for the end recently.
    pub fn at_end(&self, partition: &PartitionId, generation: u64, now_ms: i64) -> Option<AtEnd> {
        let state = self.lock();
        let entry = state.entries.get(partition)?;
        entry
            .end
            .filter(|end| entry.generation == generation && end.fresh(now_ms))
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock leaves consistent state (every update is one step).
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(index: u32) -> PartitionId {
        PartitionId::new("events", index)
    }

    #[test]
    fn the_end_of_a_partition_is_kept_until_read_past_and_doubts_restart_its_time() {
        let tracker = Partitions::new(AckTracker::new());
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
        let tracker = Partitions::new(AckTracker::new());
        let acks = tracker.acks().clone();
        let done = acks.register(&partition(0), 0, 9);
        let in_flight = acks.register(&partition(0), 0, 19);
        drop(done);
        // Revoked: the durable frontier is handed back once, to commit before letting go.
        assert_eq!(tracker.revoke(&partition(0)), Some(10));
        assert!(tracker.assigned().is_empty());
        assert_eq!(tracker.generation(&partition(0)), 1);
        drop(in_flight);
        assert_eq!(acks.in_flight(), 0);
        assert!(
            acks.take_committable().is_empty(),
            "the old turn never commits"
        );
        // A batch read before the revoke but registered after it counts for nothing.
        let stale = acks.register(&partition(0), 0, 29);
        assert!(!stale.is_current());
        drop(stale);
        assert!(acks.take_committable().is_empty());
        // Assigned again: the next turn replays from the committed position, lower offsets
        // included.
        tracker.assign(&partition(0));
        assert_eq!(tracker.assigned(), vec![(partition(0), 2)]);
        drop(acks.register(&partition(0), 1, 29));
        let replayed = acks.register(&partition(0), 2, 4);
        assert_eq!(acks.in_flight(), 1);
        drop(replayed);
        assert_eq!(acks.take_committable(), vec![(partition(0), 5)]);
        assert_eq!(tracker.revoke(&partition(0)), None, "already handed out");
    }
}
