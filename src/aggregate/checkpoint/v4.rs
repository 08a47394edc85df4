//! Format version 4: a class held only the ids counted within the lateness horizon (by
//! event-time bucket) and forgot older ones, and a final class was only its last event time.
//! Nothing was sealed, so an upgraded class holds no ids outside the state, but for a part
//! counted on a visitor: its home holds ids of the class.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::v5::{ClassV5, MemberV5};
use super::v7::{FinalClassV7, SeenIdsV7};
use super::{Checkpoint, CheckpointError};
use crate::aggregate::class::{Minute, SeenIds};
use crate::aggregate::output::Outgoing;
use crate::aggregate::partition::Trigger;

/// [`ClassState`] as versions 3 and 4 wrote it (and class parts of format 3).
#[derive(Deserialize)]
pub(super) struct ClassV4 {
    studio_id: Box<str>,
    class_id: Box<str>,
    max_time_ms: i64,
    first_event_ms: i64,
    last_event_ms: i64,
    seen: BTreeMap<i64, Vec<u128>>,
    members: BTreeMap<Box<str>, MemberV5>,
    minutes: BTreeMap<i64, Minute>,
    first_offset: u64,
    last_offset: u64,
    last_seen_wall_ms: i64,
    home: Option<u32>,
}

impl ClassV4 {
    /// The class as version 5 had it.
    pub(super) fn upgrade(self) -> ClassV5 {
        ClassV5 {
            studio_id: self.studio_id,
            class_id: self.class_id,
            max_time_ms: self.max_time_ms,
            first_event_ms: self.first_event_ms,
            last_event_ms: self.last_event_ms,
            seen: SeenIdsV7(SeenIds::from_buckets(self.seen)),
            stored_ids: self.home.is_some(),
            members: self.members,
            minutes: self.minutes,
            first_offset: self.first_offset,
            last_offset: self.last_offset,
            last_seen_wall_ms: self.last_seen_wall_ms,
            home: self.home,
        }
    }
}

#[derive(Deserialize)]
pub(super) struct CheckpointV4 {
    #[allow(dead_code)] // read by `super::version`
    pub(super) version: u32,
    pub(super) name: String,
    pub(super) position: Option<u64>,
    pub(super) clock_ms: i64,
    pub(super) classes: Vec<ClassV4>,
    pub(super) finalised: BTreeMap<String, i64>,
    pub(super) outbox: Vec<Outgoing>,
    pub(super) left_out: BTreeMap<u64, Vec<(u128, bool, i64)>>,
    pub(super) last_class: Option<String>,
    pub(super) closing: Vec<(String, ClassV4, Trigger)>,
}

pub(super) fn read(plain: &[u8]) -> Result<CheckpointV4, CheckpointError> {
    postcard::from_bytes(plain).map_err(CheckpointError::Layout)
}

impl CheckpointV4 {
    /// Version 5's form.
    pub(super) fn upgrade(self) -> Checkpoint<ClassV5, FinalClassV7> {
        Checkpoint {
            version: super::VERSION,
            name: self.name,
            position: self.position,
            clock_ms: self.clock_ms,
            classes: self.classes.into_iter().map(ClassV4::upgrade).collect(),
            finalised: self
                .finalised
                .into_iter()
                .map(|(key, last_ms)| {
                    let class = FinalClassV7 {
                        last_ms,
                        stored_ids: false,
                        late: SeenIdsV7::default(),
                    };
                    (key, class)
                })
                .collect(),
            outbox: self.outbox,
            left_out: self.left_out,
            last_class: self.last_class,
            closing: self
                .closing
                .into_iter()
                .map(|(key, class, trigger)| (key, class.upgrade(), trigger))
                .collect(),
        }
    }
}
