//! Format version 6 (class parts of format 5): a machine's readings were not chained in event
//! time, so no work or moving time was kept. An upgraded machine counts its readings so far as
//! unchained ([`Work::unchained`]): its class's results give no work or rower split for it.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::v7::{FinalClassV7, SeenIdsV7};
use super::{Checkpoint, CheckpointError};
use crate::aggregate::class::{Cardio, ClassState, HeartRate, MemberState, Minute, Stat, Weights};
use crate::aggregate::energy::Work;
use crate::profile::Profile;

/// [`Cardio`] as versions 3 to 6 wrote it.
#[derive(Deserialize)]
pub(super) struct CardioV6 {
    samples: u64,
    distance_m: Stat,
    calories: Stat,
    speed_kph: Stat,
    watts: Stat,
    cadence_rpm: Stat,
    stroke_rate_spm: Stat,
    minute_distance: BTreeMap<i64, (f64, f64)>,
}

impl CardioV6 {
    /// The machine with its readings so far unchained.
    pub(super) fn upgrade(self) -> Cardio {
        Cardio {
            samples: self.samples,
            distance_m: self.distance_m,
            calories: self.calories,
            speed_kph: self.speed_kph,
            watts: self.watts,
            cadence_rpm: self.cadence_rpm,
            stroke_rate_spm: self.stroke_rate_spm,
            minute_distance: self.minute_distance,
            work: Work {
                unchained: self.samples,
                ..Work::default()
            },
        }
    }
}

/// [`MemberState`] as version 6 wrote it.
#[derive(Deserialize)]
struct MemberV6 {
    index: u32,
    events: [u64; 5],
    heart_rate: HeartRate,
    cardio: [CardioV6; 3],
    weights: Weights,
    profile: Option<Profile>,
}

/// [`ClassState`] as version 6 wrote it (and class parts of format 5).
#[derive(Deserialize)]
pub(super) struct ClassV6 {
    studio_id: Box<str>,
    class_id: Box<str>,
    max_time_ms: i64,
    first_event_ms: i64,
    last_event_ms: i64,
    seen: SeenIdsV7,
    stored_ids: bool,
    members: BTreeMap<Box<str>, MemberV6>,
    minutes: BTreeMap<i64, Minute>,
    first_offset: u64,
    last_offset: u64,
    last_seen_wall_ms: i64,
    home: Option<u32>,
}

impl ClassV6 {
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
            members: self
                .members
                .into_iter()
                .map(|(id, member)| {
                    let MemberV6 {
                        index,
                        events,
                        heart_rate,
                        cardio,
                        weights,
                        profile,
                    } = member;
                    let member = MemberState {
                        index,
                        events,
                        heart_rate,
                        cardio: cardio.map(CardioV6::upgrade),
                        weights,
                        profile,
                    };
                    (id, member)
                })
                .collect(),
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

pub(super) fn read(plain: &[u8]) -> Result<Checkpoint<ClassV6, FinalClassV7>, CheckpointError> {
    postcard::from_bytes(plain).map_err(CheckpointError::Layout)
}

/// This build's form.
pub(super) fn upgrade(checkpoint: Checkpoint<ClassV6, FinalClassV7>) -> Checkpoint<ClassState> {
    checkpoint.upgrade(ClassV6::upgrade, FinalClassV7::upgrade)
}
