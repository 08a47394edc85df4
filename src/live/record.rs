//! The live record: what a studio's wall shows of one class, published every
//! `CLASSPULSE_LIVE_INTERVAL` while the class changes and once more when it is final.
//!
//! A record names no member: each member is a *tile*, an HMAC of the class and the member
//! under `CLASSPULSE_LIVE_TILE_KEY` (stable within the class, meaningless outside it), shown
//! by the member's alias where the profile has one. Its [`Version`] orders a class's records
//! wherever they were counted (decision 0018).

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::aggregate::heart::HrMaxSource;
use crate::aggregate::output::{ClassResult, MemberSummary, Standings};

/// A record's place in its class's sequence: `[epoch, position]`, compared in that order.
///
/// The position is the counting partition's offset of the class's last event, doubled, plus
/// one on the final record (the aggregates table's `version`). The epoch is the index of the
/// partition that counts the class: a class changes partition only when a Kinesis child shard
/// takes it over, and a child's index is above its parents' (shard ids are handed out in
/// ascending order), so its records order after every record of the parent even though the
/// child's offsets start again from zero. A visitor counting a part of a class (a Kafka key
/// moved by added partitions) publishes nothing: the class's home does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version(pub u32, pub u64);

impl Version {
    /// The version of `result` counted by partition number `epoch`.
    pub fn of(result: &ClassResult, epoch: u32) -> Version {
        let summary = &result.summary;
        Version(
            epoch,
            summary.positions.last_offset.saturating_mul(2) + u64::from(summary.is_final),
        )
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

impl std::str::FromStr for Version {
    type Err = ();

    fn from_str(text: &str) -> Result<Version, ()> {
        let (epoch, position) = text.split_once('.').ok_or(())?;
        let digits =
            |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(epoch) || !digits(position) {
            return Err(());
        }
        Ok(Version(
            epoch.parse().map_err(|_| ())?,
            position.parse().map_err(|_| ())?,
        ))
    }
}

/// One member's tile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tile {
    /// Opaque, stable within the class.
    pub tile: String,
    /// The member's alias, where their profile has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<Box<str>>,
    /// The newest heart-rate sample's bpm (absent on the final record, or with no strap).
    pub hr: Option<f64>,
    /// That sample as a percent of the member's maximum.
    pub hr_pct: Option<f64>,
    /// Its zone, 1 to 5 (absent below zone 1).
    pub zone: Option<u8>,
    /// The class's mean bpm as a percent of the maximum.
    pub hr_pct_avg: Option<f64>,
    /// Effort points so far.
    pub effort: f64,
    /// The maximum in use, and where it came from.
    pub hr_max: Option<u16>,
    /// `manual`, `measured`, `observed`, a formula, or `default`.
    pub hr_max_source: Option<HrMaxSource>,
    /// Seconds in zones 1 to 5.
    pub zone_seconds: [f64; 5],
    /// Distance over all machines, to 0.1 m.
    pub distance_m: f64,
    /// Energy the machines counted, to 0.1 kcal.
    pub calories: f64,
    /// Energy from heart rate, to 0.1 kcal (absent without the profile fields it needs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calories_hr: Option<f64>,
    /// Work on the rower and bike, to 0.1 kJ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_kj: Option<f64>,
    /// The rower's mean split, seconds per 500 m, to 0.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_500m_s: Option<f64>,
    /// Training load so far, to 0.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trimp: Option<f64>,
}

/// A place on a leaderboard: the alias where there is one, else the tile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Place {
    /// The tile.
    pub tile: String,
    /// What the wall writes: the alias, or the tile.
    pub name: String,
    /// Effort points, kJ or metres, to 0.1.
    pub value: f64,
}

/// The class's leaderboards ([`Standings`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Boards {
    /// By effort points.
    pub effort: Vec<Place>,
    /// By work on the rower and bike, kJ.
    pub work: Vec<Place>,
    /// By treadmill distance.
    pub treadmill: Vec<Place>,
    /// By rower distance.
    pub rower: Vec<Place>,
    /// By bike distance.
    pub bike: Vec<Place>,
    /// Members left off by their profile.
    pub hidden: u64,
}

/// One class on the wall.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveRecord {
    /// The studio.
    pub studio_id: Box<str>,
    /// The class.
    pub class_id: Box<str>,
    /// Orders the class's records.
    pub version: Version,
    /// The last record of the class: its values equal its final result's.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// Event time from the class's first event to its newest, seconds.
    pub elapsed_s: f64,
    /// The class's event-time watermark (epoch milliseconds).
    pub watermark_ms: i64,
    /// Members seen.
    pub members: Vec<Tile>,
    /// Top members.
    pub leaderboards: Boards,
}

/// Names members as tiles: HMAC-SHA256 of `studio:class:member` under the tile key.
#[derive(Clone)]
pub struct Tiles {
    key: Hmac<Sha256>,
}

impl std::fmt::Debug for Tiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tiles(****)")
    }
}

impl Tiles {
    /// Tiles under `key`.
    pub fn new(key: &[u8]) -> Tiles {
        Tiles {
            key: Hmac::new_from_slice(key).expect("HMAC takes a key of any length"),
        }
    }

    /// The tile of `member_id` in a class: 12 hex digits.
    pub fn tile(&self, studio_id: &str, class_id: &str, member_id: &str) -> String {
        let mut mac = self.key.clone();
        for part in [studio_id, ":", class_id, ":", member_id] {
            mac.update(part.as_bytes());
        }
        let digest = mac.finalize().into_bytes();
        digest[..6]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

impl LiveRecord {
    /// The record of `result`, counted by partition number `epoch`, at `watermark_ms`, with
    /// `board_size` places on each leaderboard.
    pub fn from_result(
        result: &ClassResult,
        epoch: u32,
        watermark_ms: i64,
        tiles: &Tiles,
        board_size: usize,
    ) -> LiveRecord {
        let summary = &result.summary;
        let tile_of =
            |member_id: &str| tiles.tile(&summary.studio_id, &summary.class_id, member_id);
        let members: Vec<Tile> = result
            .members
            .iter()
            .map(|m| tile(m, tile_of(&m.member_id)))
            .collect();
        let standings = Standings::of(&result.members, board_size);
        let board = |ranked: &[(&MemberSummary, f64)]| -> Vec<Place> {
            ranked
                .iter()
                .map(|(member, value)| {
                    let tile = tile_of(&member.member_id);
                    Place {
                        name: member
                            .alias
                            .as_deref()
                            .map_or_else(|| tile.clone(), str::to_owned),
                        tile,
                        value: tenths(*value),
                    }
                })
                .collect()
        };
        let [treadmill, rower, bike] = &standings.distance;
        LiveRecord {
            studio_id: summary.studio_id.clone(),
            class_id: summary.class_id.clone(),
            version: Version::of(result, epoch),
            is_final: summary.is_final,
            elapsed_s: (summary.last_event_ms.saturating_sub(summary.first_event_ms)).max(0) as f64
                / 1000.0,
            watermark_ms,
            members,
            leaderboards: Boards {
                effort: board(&standings.effort),
                work: board(&standings.work),
                treadmill: board(treadmill),
                rower: board(rower),
                bike: board(bike),
                hidden: standings.hidden,
            },
        }
    }

    /// The record as the topic carries it: its key (`studio_id:class_id`) and JSON.
    pub fn encode(&self) -> (String, Vec<u8>) {
        let body = serde_json::to_vec(self)
            .unwrap_or_else(|error| unreachable!("a live record does not serialise: {error}"));
        (format!("{}:{}", self.studio_id, self.class_id), body)
    }
}

fn tile(member: &MemberSummary, tile: String) -> Tile {
    Tile {
        tile,
        alias: member.alias.clone(),
        hr: member.hr_current,
        hr_pct: member.hr_pct_current,
        zone: member.zone_current,
        hr_pct_avg: member.hr_pct_avg,
        effort: member.effort_points,
        hr_max: member.hr_max_used,
        hr_max_source: member.hr_max_source,
        zone_seconds: member.zone_seconds,
        distance_m: tenths(member.distance_m),
        calories: tenths(member.calories),
        calories_hr: member.calories_hr.map(tenths),
        work_kj: member.work_kj.map(tenths),
        split_500m_s: member
            .rower
            .as_ref()
            .and_then(|rower| rower.split_500m_s)
            .map(tenths),
        trimp: member.trimp.map(tenths),
    }
}

/// To 0.1, as a wall shows it (sums of readings carry float noise).
fn tenths(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::fixture;

    #[test]
    fn versions_order_by_epoch_then_position_and_read_back() {
        assert!(Version(1, 0) > Version(0, u64::MAX));
        assert!(Version(0, 11) > Version(0, 10));
        for version in [
            Version(0, 0),
            Version(7, 12_345),
            Version(u32::MAX, u64::MAX),
        ] {
            assert_eq!(version.to_string().parse::<Version>(), Ok(version));
        }
        for bad in ["", "1", "1.", ".1", "a.1", "1.2.3", "-1.2", "99999999999.1"] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?}");
        }
        assert_eq!(serde_json::to_string(&Version(2, 40)).unwrap(), "[2,40]");
    }

    #[test]
    fn tiles_are_stable_per_class_and_name_no_member() {
        let tiles = Tiles::new(b"key");
        let a = tiles.tile("studio-1", "class-1", "m-1");
        assert_eq!(a, tiles.tile("studio-1", "class-1", "m-1"));
        assert_eq!(a.len(), 12);
        assert_ne!(a, tiles.tile("studio-1", "class-2", "m-1"));
        assert_ne!(a, Tiles::new(b"other").tile("studio-1", "class-1", "m-1"));
    }

    #[test]
    fn a_record_holds_no_member_id_and_boards_show_the_alias() {
        let result = fixture::final_result_with_alias();
        let tiles = Tiles::new(b"key");
        let record = LiveRecord::from_result(&result, 3, 1_000, &tiles, 5);
        let (key, body) = record.encode();
        let text = String::from_utf8(body).unwrap();
        assert_eq!(
            key,
            format!("{}:{}", result.summary.studio_id, result.summary.class_id)
        );
        for member in &result.members {
            assert!(!text.contains(&*member.member_id), "{text}");
        }
        assert_eq!(
            record.version,
            Version(3, result.summary.positions.last_offset * 2 + 1)
        );
        assert!(record.is_final);
        let with_alias = result.members.iter().find(|m| m.alias.is_some()).unwrap();
        let tile = tiles.tile(
            &result.summary.studio_id,
            &result.summary.class_id,
            &with_alias.member_id,
        );
        let place = record
            .leaderboards
            .effort
            .iter()
            .chain(&record.leaderboards.work)
            .find(|place| place.tile == tile)
            .expect("the member with an alias is on a board");
        assert_eq!(place.name, &**with_alias.alias.as_ref().unwrap());
        let back: LiveRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back, record);
    }

    /// The invariant walls rely on (decision 0018): a record's values follow from the events
    /// up to its version, so a replay that cuts its batches elsewhere, or restores from a
    /// checkpoint, publishes under a version only what the first run published under it.
    #[test]
    fn a_version_carries_the_same_values_however_the_events_came_and_across_a_restore() {
        use std::collections::BTreeMap;

        use crate::aggregate::partition::PartitionState;

        let (events, cut) = fixture::events();
        let rules = fixture::rules();
        let tiles = Tiles::new(b"tile-key");
        let published = |batch_size: usize, restore: bool| {
            let mut seen: BTreeMap<(String, Version), String> = BTreeMap::new();
            let mut record = |state: &mut PartitionState| {
                for (result, watermark_ms) in state.take_unpublished(&rules) {
                    let record = LiveRecord::from_result(&result, 0, watermark_ms, &tiles, 5);
                    let body = String::from_utf8(record.encode().1).unwrap();
                    seen.insert((record.class_id.to_string(), record.version), body);
                }
            };
            let mut state = fixture::state();
            fixture::apply_in(&mut state, &events[..cut], batch_size, &mut record);
            if restore {
                state = PartitionState::decode(&state.encode(), 0).unwrap();
                fixture::prepare(&mut state);
            }
            fixture::apply_in(&mut state, &events[cut..], batch_size, &mut record);
            seen
        };
        // A record after every event: every version a run can publish.
        let every = published(1, false);
        let mut compared = 0;
        for (batch_size, restore) in [(7, false), (37, true), (13, true), (101, false)] {
            for (key, body) in published(batch_size, restore) {
                let expected = every.get(&key).unwrap_or_else(|| {
                    panic!("{key:?} ({batch_size}, {restore}) not published event by event")
                });
                assert_eq!(
                    &body, expected,
                    "{key:?} in batches of {batch_size}, restored: {restore}"
                );
                compared += 1;
            }
        }
        assert!(compared > 50, "{compared} records compared");
    }
}
