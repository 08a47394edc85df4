//! Format version 7 (class parts of format 6): a class's event id fingerprints were written
//! as lists of variable-length integers (19 bytes for most ids), not byte strings. Nothing
//! else differs.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Checkpoint, CheckpointError};
use crate::aggregate::class::{ClassState, MemberState, Minute, SeenIds};
use crate::aggregate::partition::FinalClass;

/// [`SeenIds`] as versions 5 to 7 wrote them: the buckets and the retired ids.
#[derive(Default)]
pub(super) struct SeenIdsV7(pub(super) SeenIds);

impl<'de> Deserialize<'de> for SeenIdsV7 {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<SeenIdsV7, D::Error> {
        let (buckets, retired) =
            <(BTreeMap<i64, Vec<u128>>, Vec<u128>)>::deserialize(deserializer)?;
        Ok(SeenIdsV7(SeenIds::from_parts(buckets, retired)))
    }
}

/// [`FinalClass`] as versions 5 to 7 wrote it.
#[derive(Deserialize)]
pub(super) struct FinalClassV7 {
    pub(super) last_ms: i64,
    pub(super) stored_ids: bool,
    pub(super) late: SeenIdsV7,
}

impl FinalClassV7 {
    pub(super) fn upgrade(self) -> FinalClass {
        FinalClass {
            last_ms: self.last_ms,
            stored_ids: self.stored_ids,
            late: self.late.0,
        }
    }
}

/// [`ClassState`] as version 7 wrote it (and class parts of format 6).
#[derive(Deserialize)]
pub(super) struct ClassV7 {
    studio_id: Box<str>,
    class_id: Box<str>,
    max_time_ms: i64,
    first_event_ms: i64,
    last_event_ms: i64,
    seen: SeenIdsV7,
    stored_ids: bool,
    members: BTreeMap<Box<str>, MemberState>,
    minutes: BTreeMap<i64, Minute>,
    first_offset: u64,
    last_offset: u64,
    last_seen_wall_ms: i64,
    home: Option<u32>,
}

impl ClassV7 {
    /// The class as this build has it.
    pub(super) fn upgrade(self) -> ClassState {
        ClassState {
            studio_id: self.studio_id,
            class_id: self.class_id,
            max_time_ms: self.max_time_ms,
            first_event_ms: self.first_event_ms,
            last_event_ms: self.last_event_ms,
            seen: self.seen.0,
            stored_ids: self.stored_ids,
            members: self.members,
            minutes: self.minutes,
            first_offset: self.first_offset,
            last_offset: self.last_offset,
            last_seen_wall_ms: self.last_seen_wall_ms,
            home: self.home,
            changed: false,
            unpublished: false,
        }
    }
}

pub(super) fn read(plain: &[u8]) -> Result<Checkpoint<ClassV7, FinalClassV7>, CheckpointError> {
    postcard::from_bytes(plain).map_err(CheckpointError::Layout)
}

/// This build's form.
pub(super) fn upgrade(checkpoint: Checkpoint<ClassV7, FinalClassV7>) -> Checkpoint<ClassState> {
    checkpoint.upgrade(ClassV7::upgrade, FinalClassV7::upgrade)
}
