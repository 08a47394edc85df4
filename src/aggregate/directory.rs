//! The class directory: where each class is finalised when its key can move between
//! partitions.
//!
//! Producers key messages by `studio_id:class_id`, so a class lives on one partition, until
//! partitions are added to the topic (or a Kinesis shard is split): then the key of a class in
//! progress hashes elsewhere and the rest of its events arrive on another partition, possibly
//! read by another task. Counted where they land, the class would end twice, with two halves.
//! The directory keeps one place per class that finalises it, and the other parts are handed
//! to it:
//!
//! ```text
//! {prefix}/checkpoints/classes/{source}-{stream}/{studio_id}/{class_id}/home          {"partition":3,"first_ms":..,"final":false}
//!                                                                 /visit-{partition}   a part is being counted there
//!                                                                 /part-{partition}.postcard.zst   that part, handed over
//! ```
//!
//! 1. The first partition to count a class *claims* it: it creates `home` (a put that fails if
//!    the object exists). That partition is the class's home and finalises it.
//! 2. A partition that meets a class whose `home` names another partition is a *visitor*: it
//!    writes `visit-{partition}`, counts the class's events there as usual (judged and in the
//!    lake as everywhere), and never finalises it. When its part would have become final
//!    (the same rules), it writes the part's state to `part-{partition}` (after the checkpoint
//!    that records it) and treats later events of the class as late.
//! 3. When the class is due at home, it is *closing*: its events are late from then on, as for
//!    any final class, and home lists the directory. Every visitor that announced itself must
//!    have handed its part over; home then merges the parts ([`ClassState::merge`]) and
//!    renders the result, then marks `home` final. Until then the class waits, checkpointed.
//! 4. A visitor that meets a class whose `home` is final counts its events as late.
//!
//! Each step is a function of the directory's objects, which are written once (parts and
//! markers) or move one way (`home` to final), so a task that crashes and replays takes the
//! same role again. What is assumed (and documented in docs/aggregates.md): each member's events
//! switch partitions once rather than alternating, and the visitor meets the class before the
//! class is due at home (within the idle timeout, in event time, of the home's reader).
//!
//! [`ClassState::merge`]: super::class::ClassState::merge

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::ack::PartitionId;
use crate::store::{sanitize, ObjectWriter};

/// What a partition is to a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It finalises the class.
    Home,
    /// It counts a part of the class and hands it to `home`.
    Visitor(u32),
    /// The class is final at its home already: events here are late.
    Closed(u32),
}

/// The body of `home`.
#[derive(Debug, Serialize, Deserialize)]
struct HomeRecord {
    /// The partition (index) that finalises the class.
    partition: u32,
    /// Event time of the first event it counted. A record older than the dedup horizon is a
    /// previous class with the same ids, and is claimed again.
    first_ms: i64,
    /// Whether the class is final there.
    #[serde(rename = "final")]
    is_final: bool,
}

/// One partition's view of the directory of its stream.
#[derive(Debug, Clone)]
pub struct Place {
    /// `checkpoints/classes/{source}-{stream}`, relative to the lake's prefix.
    base: String,
    /// This partition's index.
    pub partition: u32,
}

/// A class's directory as its home finds it when the class is due.
#[derive(Debug, Default)]
pub struct Visits {
    /// Partitions that announced a part.
    pub visitors: BTreeSet<u32>,
    /// Parts handed over, by partition.
    pub parts: BTreeMap<u32, Path>,
}

impl Visits {
    /// Visitors whose part is not there yet.
    pub fn missing(&self) -> Vec<u32> {
        self.visitors
            .iter()
            .filter(|p| !self.parts.contains_key(p))
            .copied()
            .collect()
    }
}

impl Place {
    /// The directory place of `partition` of a stream read from `writer`'s source kind.
    pub fn new(writer: &ObjectWriter, partition: &PartitionId) -> Place {
        Place {
            base: format!(
                "checkpoints/classes/{}-{}",
                writer.source_kind(),
                sanitize(&partition.stream)
            ),
            partition: partition.index,
        }
    }

    /// A place of partition `partition` in a stream `stream` of a `source` (tests of the
    /// state alone).
    #[cfg(test)]
    pub fn of(source: &str, stream: &str, partition: u32) -> Place {
        Place {
            base: format!("checkpoints/classes/{source}-{}", sanitize(stream)),
            partition,
        }
    }

    /// The class's directory, relative. Ids are of the id charset (letters, digits, `_.-`),
    /// and each is one path segment (`object_store` escapes `.` and `..`).
    pub fn class_dir(&self, studio_id: &str, class_id: &str) -> String {
        format!("{}/{studio_id}/{class_id}", self.base)
    }

    fn home_key(&self, studio_id: &str, class_id: &str) -> String {
        format!("{}/home", self.class_dir(studio_id, class_id))
    }

    fn visit_key(&self, studio_id: &str, class_id: &str) -> String {
        format!(
            "{}/visit-{}",
            self.class_dir(studio_id, class_id),
            self.partition
        )
    }

    /// Where this partition hands its part of a class over.
    pub fn part_key(&self, studio_id: &str, class_id: &str) -> String {
        format!(
            "{}/part-{}.postcard.zst",
            self.class_dir(studio_id, class_id),
            self.partition
        )
    }

    /// The outbox entry that marks a class final at its home (this partition).
    pub fn home_final(&self, studio_id: &str, class_id: &str, first_ms: i64) -> (String, Vec<u8>) {
        let record = HomeRecord {
            partition: self.partition,
            first_ms,
            is_final: true,
        };
        (
            self.home_key(studio_id, class_id),
            serde_json::to_vec(&record).unwrap_or_else(|e| unreachable!("plain struct: {e}")),
        )
    }
}

/// Claims a class met for the first time on this partition (its first event at `first_ms`):
/// this partition's role for it. A home record more than `horizon_ms` older is of a previous
/// class with the same ids.
pub async fn claim(
    writer: &ObjectWriter,
    place: &Place,
    studio_id: &str,
    class_id: &str,
    first_ms: i64,
    horizon_ms: i64,
) -> object_store::Result<Role> {
    let store = writer.store();
    let home = writer.path(&place.home_key(studio_id, class_id));
    let record = HomeRecord {
        partition: place.partition,
        first_ms,
        is_final: false,
    };
    let body = serde_json::to_vec(&record).unwrap_or_else(|e| unreachable!("plain struct: {e}"));
    let create = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    match store
        .put_opts(&home, PutPayload::from(body.clone()), create)
        .await
    {
        Ok(_) => return Ok(Role::Home),
        Err(object_store::Error::AlreadyExists { .. }) => {}
        Err(error) => return Err(error),
    }
    let existing = store.get(&home).await?.bytes().await?;
    let existing: HomeRecord = match serde_json::from_slice(&existing) {
        Ok(existing) => existing,
        Err(error) => {
            tracing::warn!(key = %home, error = %error, "unreadable class home record: claimed again");
            store.put(&home, PutPayload::from(body)).await?;
            return Ok(Role::Home);
        }
    };
    if first_ms.saturating_sub(existing.first_ms) > horizon_ms {
        // A class of the same ids long ago.
        store.put(&home, PutPayload::from(body)).await?;
        return Ok(Role::Home);
    }
    if existing.is_final {
        return Ok(Role::Closed(existing.partition));
    }
    if existing.partition == place.partition {
        // Claimed by this partition before a restart.
        return Ok(Role::Home);
    }
    let visit = writer.path(&place.visit_key(studio_id, class_id));
    store.put(&visit, PutPayload::from(Bytes::new())).await?;
    Ok(Role::Visitor(existing.partition))
}

/// Lists a class's directory at its home.
pub async fn visits(
    writer: &ObjectWriter,
    place: &Place,
    studio_id: &str,
    class_id: &str,
) -> object_store::Result<Visits> {
    let directory = writer.path(&place.class_dir(studio_id, class_id));
    let objects: Vec<Path> = writer
        .store()
        .list(Some(&directory))
        .map_ok(|meta| meta.location)
        .try_collect()
        .await?;
    let mut visits = Visits::default();
    for object in objects {
        let Some(name) = object.filename() else {
            continue;
        };
        let partition = |rest: &str| rest.parse::<u32>().ok();
        if let Some(p) = name.strip_prefix("visit-").and_then(partition) {
            visits.visitors.insert(p);
        } else if let Some(p) = name
            .strip_prefix("part-")
            .and_then(|rest| rest.strip_suffix(".postcard.zst"))
            .and_then(partition)
        {
            visits.visitors.insert(p);
            visits.parts.insert(p, object.clone());
        }
    }
    visits.visitors.remove(&place.partition);
    visits.parts.remove(&place.partition);
    Ok(visits)
}

/// Reads a part handed over.
pub async fn read(writer: &ObjectWriter, key: &Path) -> object_store::Result<Bytes> {
    writer.store().get(key).await?.bytes().await
}

/// Keys of a class's markers and parts, for deleting once its result is durable.
pub fn leftovers(visits: &Visits, place: &Place, studio_id: &str, class_id: &str) -> Vec<String> {
    let dir = place.class_dir(studio_id, class_id);
    visits
        .visitors
        .iter()
        .flat_map(|p| {
            [
                format!("{dir}/visit-{p}"),
                format!("{dir}/part-{p}.postcard.zst"),
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::stage::tests::writer;

    const HORIZON: i64 = 24 * 3_600_000;

    #[tokio::test]
    async fn the_first_partition_to_claim_a_class_is_its_home_and_the_others_visit() {
        let lake = tempfile::tempdir().unwrap();
        let writer = writer(lake.path());
        let place = |index| Place::new(&writer, &PartitionId::new("events", index));
        let t0 = 1_764_090_000_000;
        let claim = |index, first_ms| {
            let (writer, place) = (&writer, place(index));
            async move {
                claim(writer, &place, "s1", "c1", first_ms, HORIZON)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(claim(2, t0).await, Role::Home);
        // The same partition after a restart: still home.
        assert_eq!(claim(2, t0 + 5_000).await, Role::Home);
        assert_eq!(claim(5, t0 + 60_000).await, Role::Visitor(2));
        let found = super::visits(&writer, &place(2), "s1", "c1").await.unwrap();
        assert_eq!(found.missing(), vec![5], "announced, not handed over");

        // The visitor hands its part over: nothing is missing any more.
        let part = writer.path(&place(5).part_key("s1", "c1"));
        writer
            .store()
            .put(&part, PutPayload::from(Bytes::from_static(b"part")))
            .await
            .unwrap();
        let found = super::visits(&writer, &place(2), "s1", "c1").await.unwrap();
        assert!(found.missing().is_empty());
        assert_eq!(found.parts.keys().collect::<Vec<_>>(), [&5]);
        assert_eq!(read(&writer, &found.parts[&5]).await.unwrap(), "part");
        assert_eq!(leftovers(&found, &place(2), "s1", "c1").len(), 2);

        // Final at home: a partition meeting the class now is too late.
        let (key, body) = place(2).home_final("s1", "c1", t0);
        writer
            .store()
            .put(&writer.path(&key), PutPayload::from(body))
            .await
            .unwrap();
        assert_eq!(claim(7, t0 + 120_000).await, Role::Closed(2));
        // A class of the same ids a day and more later is a new class.
        let next_day = t0 + HORIZON + 1;
        assert_eq!(claim(7, next_day).await, Role::Home);
        assert_eq!(claim(2, next_day).await, Role::Visitor(7));
    }
}
