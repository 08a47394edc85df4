//! Format version 5: a member's heart rate held milliseconds in each zone of the one maximum
//! configured (`CLASSPULSE_HR_MAX_BPM`), not the time at each bpm, and no profile. An upgraded
//! member keeps those zone times as counted ([`HeartRate::fixed_zone_ms`]) and is bound to an
//! empty profile: its class uses the default maximum, and its results say so.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::v6::CardioV6;
use super::v7::{FinalClassV7, SeenIdsV7};
use super::{Checkpoint, CheckpointError};
use crate::aggregate::class::{ClassState, HeartRate, MemberState, Minute, Stat, Weights};
use crate::profile::Profile;

/// [`HeartRate`] as versions 3 to 5 wrote it.
#[derive(Deserialize)]
struct HeartRateV5 {
    bpm: Stat,
    pending: BTreeMap<(i64, u128), f64>,
    first_sealed: Option<(i64, f64)>,
    last_sealed_ms: Option<i64>,
    zone_ms: [i64; 5],
}

/// [`MemberState`] as versions 3 to 5 wrote it.
#[derive(Deserialize)]
pub(super) struct MemberV5 {
    index: u32,
    events: [u64; 5],
    heart_rate: HeartRateV5,
    cardio: [CardioV6; 3],
    weights: Weights,
}

impl MemberV5 {
    fn upgrade(self) -> MemberState {
        let hr = self.heart_rate;
        let latest = hr
            .pending
            .last_key_value()
            .map(|((time, hash), bpm)| (*time, *hash, *bpm));
        MemberState {
            index: self.index,
            events: self.events,
            heart_rate: HeartRate {
                bpm: hr.bpm,
                pending: hr.pending,
                first_sealed: hr.first_sealed,
                last_sealed_ms: hr.last_sealed_ms,
                at_bpm: Default::default(),
                fixed_zone_ms: Some(hr.zone_ms),
                sustained: Default::default(),
                latest,
            },
            cardio: self.cardio.map(CardioV6::upgrade),
            weights: self.weights,
            profile: Some(Profile::default()),
        }
    }
}

/// The members as versions 3 to 5 wrote them, upgraded.
pub(super) fn upgrade_members(
    members: BTreeMap<Box<str>, MemberV5>,
) -> BTreeMap<Box<str>, MemberState> {
    members
        .into_iter()
        .map(|(id, member)| (id, member.upgrade()))
        .collect()
}

/// [`ClassState`] as version 5 wrote it (and class parts of format 4).
#[derive(Deserialize)]
pub(super) struct ClassV5 {
    pub(super) studio_id: Box<str>,
    pub(super) class_id: Box<str>,
    pub(super) max_time_ms: i64,
    pub(super) first_event_ms: i64,
    pub(super) last_event_ms: i64,
    pub(super) seen: SeenIdsV7,
    pub(super) stored_ids: bool,
    pub(super) members: BTreeMap<Box<str>, MemberV5>,
    pub(super) minutes: BTreeMap<i64, Minute>,
    pub(super) first_offset: u64,
    pub(super) last_offset: u64,
    pub(super) last_seen_wall_ms: i64,
    pub(super) home: Option<u32>,
}

impl ClassV5 {
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
            members: upgrade_members(self.members),
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

pub(super) fn read(plain: &[u8]) -> Result<Checkpoint<ClassV5, FinalClassV7>, CheckpointError> {
    postcard::from_bytes(plain).map_err(CheckpointError::Layout)
}

/// This build's form.
pub(super) fn upgrade(checkpoint: Checkpoint<ClassV5, FinalClassV7>) -> Checkpoint<ClassState> {
    checkpoint.upgrade(ClassV5::upgrade, FinalClassV7::upgrade)
}
