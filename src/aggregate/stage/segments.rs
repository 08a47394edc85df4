//! Late events confirmed against their classes' sealed id segments
//! ([`crate::aggregate::segment`]): the ids a partition's state no longer holds, or that other
//! partitions counted, read back from the store only when a late event for the class comes.
//!
//! A class's segments are listed once and each read once per burst of its late events, then
//! cached: the listing is trusted for [`RELIST_AFTER`] (a longer burst lists again and reads
//! only the segments new since), and a class is forgotten after [`FORGET_AFTER`] without a
//! late event, or sooner when the cache holds more than [`MAX_CACHED_IDS`]. Segments this task
//! writes go into the cache of their class: when they are handed to the writer if the class
//! is cached then, else at the class's next lookup while the write is under way
//! ([`InFlight`]), since a listing made before the write is done does not show them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use object_store::path::Path;
use tokio::time::Instant;

use crate::ack::PartitionId;
use crate::aggregate::partition::Unconfirmed;
use crate::aggregate::segment;
use crate::event::{fingerprint, PerformanceEvent};
use crate::metrics;

use super::AggregateStage;

/// How long a class's listing is trusted during a burst of its late events.
const RELIST_AFTER: Duration = Duration::from_secs(30);
/// How long a class stays cached after its last late event.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Ids the cache holds at most, over every class (16 bytes each: 64 MB).
const MAX_CACHED_IDS: usize = 4_000_000;
/// Segment reads in flight at once.
const READS_AT_ONCE: usize = 16;

/// The sealed ids of the classes whose late events came lately.
#[derive(Default)]
pub(super) struct SegmentCache {
    classes: HashMap<String, CachedClass>,
    ids: usize,
}

struct CachedClass {
    /// Every id of the segments read, ascending.
    ids: Vec<u128>,
    /// The segments read (or written here).
    read: HashSet<Path>,
    /// When the class's segments were last listed; `None`: never (only written here).
    listed: Option<Instant>,
    /// When a late event last looked here.
    used: Instant,
}

impl CachedClass {
    fn add(&mut self, ids: &[u128]) -> usize {
        let before = self.ids.len();
        self.ids.extend_from_slice(ids);
        self.ids.sort_unstable();
        self.ids.dedup();
        self.ids.len() - before
    }
}

/// A segment handed to the writer and not yet written: the job that writes it.
pub(super) struct InFlight {
    pub(super) job: u64,
    pub(super) class_dir: String,
    pub(super) key: Path,
    pub(super) ids: Arc<Vec<u128>>,
}

impl SegmentCache {
    /// Takes in a segment this task writes, if its class is cached.
    pub(super) fn written(&mut self, class_dir: &str, key: &Path, ids: &[u128]) {
        if let Some(class) = self.classes.get_mut(class_dir) {
            class.read.insert(key.clone());
            self.ids += class.add(ids);
        }
    }

    /// Takes into the cache of class folder `dir` (if cached) its segments in `in_flight`.
    fn take_in_flight(&mut self, dir: &str, in_flight: &[InFlight]) {
        let Some(class) = self.classes.get_mut(dir) else {
            return;
        };
        for segment in in_flight.iter().filter(|segment| segment.class_dir == dir) {
            if class.read.insert(segment.key.clone()) {
                self.ids += class.add(&segment.ids);
            }
        }
    }

    /// Whether the cache of class folder `dir` holds `id`.
    fn holds(&self, dir: &str, id: u128) -> bool {
        self.classes
            .get(dir)
            .is_some_and(|class| class.ids.binary_search(&id).is_ok())
    }

    /// Forgets the classes idle too long, then the least recently used beyond the limit.
    fn trim(&mut self, now: Instant) {
        let mut ids = self.ids;
        self.classes.retain(|_, class| {
            let keep = now.duration_since(class.used) < FORGET_AFTER;
            if !keep {
                ids -= class.ids.len();
            }
            keep
        });
        if ids > MAX_CACHED_IDS {
            let mut by_use: Vec<(Instant, String)> = self
                .classes
                .iter()
                .map(|(dir, class)| (class.used, dir.clone()))
                .collect();
            by_use.sort();
            for (_, dir) in by_use {
                if ids <= MAX_CACHED_IDS {
                    break;
                }
                if let Some(class) = self.classes.remove(&dir) {
                    ids -= class.ids.len();
                }
            }
        }
        self.ids = ids;
        metrics::set_id_segment_cache(ids);
    }
}

impl AggregateStage {
    /// The events of `unconfirmed` (indexes into `events`, read on `partition`) whose ids
    /// their class's segments hold: duplicates.
    pub(super) async fn find_in_segments(
        &mut self,
        partition: &PartitionId,
        events: &[PerformanceEvent],
        unconfirmed: Vec<Unconfirmed>,
    ) -> Vec<usize> {
        let mut found = Vec::new();
        let mut looked_up = 0;
        for class in unconfirmed {
            let dir = segment::class_dir(
                &self.writer,
                &partition.stream,
                &class.studio_id,
                &class.class_id,
            );
            self.load_segments(&dir).await;
            self.segments.take_in_flight(&dir, &self.in_flight);
            looked_up += class.events.len() as u64;
            for index in class.events {
                if self
                    .segments
                    .holds(&dir, fingerprint(&events[index].event_id))
                {
                    found.push(index);
                }
            }
        }
        metrics::record_id_segment_lookups(found.len() as u64, looked_up - found.len() as u64);
        self.segments.trim(Instant::now());
        found
    }

    /// Brings the cache of class folder `dir` up to date: listed unless it was within
    /// [`RELIST_AFTER`], each segment not read yet read. An unreadable segment is reported
    /// and passed over: its ids' copies are late, written once more, never dropped.
    async fn load_segments(&mut self, dir: &str) {
        let now = Instant::now();
        let cached = self.segments.classes.get(dir);
        let fresh = cached.is_some_and(|class| {
            class
                .listed
                .is_some_and(|listed| now.duration_since(listed) < RELIST_AFTER)
        });
        if fresh {
            if let Some(class) = self.segments.classes.get_mut(dir) {
                class.used = now;
            }
            return;
        }
        let keys = self
            .retry("listing a class's id segments", || {
                segment::list(&self.writer, dir)
            })
            .await;
        metrics::record_id_segment_requests("list", 1);
        let unread: Vec<Path> = keys
            .into_iter()
            .filter(|key| cached.is_none_or(|class| !class.read.contains(key)))
            .collect();
        let mut reads = Vec::with_capacity(unread.len());
        for key in unread {
            let this = &*self;
            reads.push(async move {
                let body = this
                    .retry("reading an id segment", || {
                        segment::read(&this.writer, &key)
                    })
                    .await;
                let ids = segment::decode(&body);
                (key, ids)
            });
        }
        let bodies: Vec<_> = futures::stream::iter(reads)
            .buffer_unordered(READS_AT_ONCE)
            .collect()
            .await;
        metrics::record_id_segment_requests("get", bodies.len() as u64);
        let class = self
            .segments
            .classes
            .entry(dir.to_owned())
            .or_insert_with(|| CachedClass {
                ids: Vec::new(),
                read: HashSet::new(),
                listed: None,
                used: now,
            });
        let mut added = 0;
        for (key, ids) in bodies {
            match ids {
                Ok(ids) => added += class.add(&ids),
                Err(error) => {
                    tracing::error!(key = %key, error = %error, "id segment unreadable: copies of its events are written again");
                }
            }
            class.read.insert(key);
        }
        class.listed = Some(now);
        class.used = now;
        self.segments.ids += added;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A class listed while its segment was being written, then looked up again after the
    /// write was done (and the segment no longer in flight), finds the segment's ids.
    #[test]
    fn a_segment_in_flight_at_a_listing_stays_found_after_it_is_written() {
        let now = Instant::now();
        let mut cache = SegmentCache::default();
        cache.classes.insert(
            "c".to_owned(),
            CachedClass {
                ids: vec![1],
                read: HashSet::from([Path::from("c/old")]),
                listed: Some(now),
                used: now,
            },
        );
        cache.ids = 1;
        let in_flight = vec![
            InFlight {
                job: 7,
                class_dir: "c".to_owned(),
                key: Path::from("c/new"),
                ids: Arc::new(vec![2, 3]),
            },
            InFlight {
                job: 7,
                class_dir: "other".to_owned(),
                key: Path::from("other/new"),
                ids: Arc::new(vec![4]),
            },
        ];
        cache.take_in_flight("c", &in_flight);
        // Taken in once, however often it is looked up while in flight.
        cache.take_in_flight("c", &in_flight);
        drop(in_flight);
        assert!(cache.holds("c", 1) && cache.holds("c", 2) && cache.holds("c", 3));
        assert!(!cache.holds("c", 4), "another class's segment");
        assert_eq!(cache.ids, 3);
        assert!(cache.classes["c"].read.contains(&Path::from("c/new")));
        // A class not cached takes nothing in: its first lookup lists the store.
        cache.take_in_flight("other", &[]);
        assert!(!cache.classes.contains_key("other"));
    }
}
