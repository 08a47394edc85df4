//! What the aggregates look like outside: the three record kinds, and where final results
//! land in the object store (the embedded default's directory, or S3 beside the lake).
//!
//! Final results are written once per class, as JSON that query engines read as is:
//!
//! ```text
//! {prefix}/aggregates/classes/dt=YYYY-MM-DD/{studio}-{class}.json      one class summary
//! {prefix}/aggregates/members/dt=YYYY-MM-DD/{studio}-{class}.ndjson    one line per member
//! {prefix}/aggregates/minutes/dt=YYYY-MM-DD/{studio}-{class}.ndjson    one line per minute
//! ```
//!
//! While a class runs, its live values (`final: false`, the same three kinds in one document)
//! are written every `CLASSPULSE_AGG_FLUSH_INTERVAL` if they changed, with a local lake (the
//! embedded default); the last write there is the final result. With an S3 lake, live values
//! are for the DynamoDB aggregates table ([`crate::sink::dynamodb`]): a PUT per class every
//! few seconds would cost more than the table.
//!
//! ```text
//! {prefix}/aggregates/live/{studio}-{class}.json                       summary, members, minutes
//! ```
//!
//! `dt` is the date of the class's first event. The keys depend only on the class, and the
//! content only on the events counted, so writing a result again (after a crash, from a
//! restored checkpoint) replaces it with identical bytes.

use chrono::{DateTime, SecondsFormat, Utc};
use object_store::path::Path;
use serde::{Deserialize, Serialize, Serializer};

use super::heart::{HrMaxSource, ZoneBasis};
use crate::event::EventType;

/// Counts per event type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeCounts {
    /// Heart-rate samples.
    pub heart_rate: u64,
    /// Treadmill readings.
    pub treadmill: u64,
    /// Rower readings.
    pub rower: u64,
    /// Bike readings.
    pub bike: u64,
    /// Free-weights sets.
    pub free_weights: u64,
}

impl TypeCounts {
    /// From counts in [`EventType::ALL`] order.
    pub fn from_array(counts: [u64; 5]) -> TypeCounts {
        debug_assert_eq!(EventType::ALL[0], EventType::HeartRate);
        let [heart_rate, treadmill, rower, bike, free_weights] = counts;
        TypeCounts {
            heart_rate,
            treadmill,
            rower,
            bike,
            free_weights,
        }
    }

    /// All events.
    pub fn total(&self) -> u64 {
        self.heart_rate + self.treadmill + self.rower + self.bike + self.free_weights
    }
}

/// One machine of one member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CardioSummary {
    /// Readings counted.
    pub events: u64,
    /// Max minus min of the cumulative distance.
    pub distance_m: f64,
    /// Max minus min of the cumulative energy.
    pub calories: f64,
    /// Treadmill speed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub avg_speed_kph: Option<f64>,
    /// Treadmill speed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub max_speed_kph: Option<f64>,
    /// Rower or bike power.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub avg_watts: Option<f64>,
    /// Rower or bike power.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub max_watts: Option<f64>,
    /// Bike cadence.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub avg_cadence_rpm: Option<f64>,
    /// Bike cadence.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub max_cadence_rpm: Option<f64>,
    /// Rower stroke rate.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub avg_stroke_rate_spm: Option<f64>,
    /// Rower stroke rate.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub max_stroke_rate_spm: Option<f64>,
    /// Rower or bike: power over each reading's capped gap, in kJ (absent without power
    /// readings, or when a restored state missed some).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub work_kj: Option<f64>,
    /// Rower: seconds per 500 m over the time rowing (absent without distance).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub split_500m_s: Option<f64>,
}

/// A member in a class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberSummary {
    /// The studio.
    pub studio_id: Box<str>,
    /// The class.
    pub class_id: Box<str>,
    /// The member.
    pub member_id: Box<str>,
    /// The name screens and leaderboards show, from the member's profile (absent without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<Box<str>>,
    /// Whether the class is over (else a live value).
    #[serde(rename = "final")]
    pub is_final: bool,
    /// Events counted by type.
    pub events: TypeCounts,
    /// Heart-rate samples.
    pub hr_samples: u64,
    /// Lowest bpm.
    pub hr_min: Option<f64>,
    /// Highest bpm.
    pub hr_max: Option<f64>,
    /// Mean bpm.
    pub hr_avg: Option<f64>,
    /// The maximum heart rate zones and percentages are of (absent in results an older build
    /// rendered, as are the fields after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hr_max_used: Option<u16>,
    /// Where it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hr_max_source: Option<HrMaxSource>,
    /// A final result only: what the member sustained above the maximum in use, capped at 10
    /// bpm above it (absent when nothing was, or the maximum was set by hand or measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hr_max_observed: Option<u16>,
    /// What zones are a share of: `max`, or `reserve` (maximum minus resting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_basis: Option<ZoneBasis>,
    /// Mean bpm as a percent of the maximum in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hr_pct_avg: Option<f64>,
    /// Highest bpm as a percent of the maximum in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hr_pct_peak: Option<f64>,
    /// Live values only: the newest sample's bpm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hr_current: Option<f64>,
    /// Live values only: the newest sample as a percent of the maximum in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hr_pct_current: Option<f64>,
    /// Live values only: the newest sample's zone (1 to 5; absent below zone 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_current: Option<u8>,
    /// Seconds in zones 1 to 5.
    pub zone_seconds: [f64; 5],
    /// Weighted minutes in zones (`CLASSPULSE_EFFORT_WEIGHTS`), rounded down to 0.1.
    pub effort_points: f64,
    /// Distance over all machines.
    pub distance_m: f64,
    /// Energy over all machines.
    pub calories: f64,
    /// Energy from heart rate (Keytel et al. 2005) over zone 1 and above, kcal: `null` for a
    /// member whose profile lacks a sex, weight or birth year (`profile_missing` names them).
    #[serde(default)]
    pub calories_hr: Option<f64>,
    /// Training load (Banister's TRIMP from the heart-rate reserve): `null` without a sex and
    /// a resting rate.
    #[serde(default)]
    pub trimp: Option<f64>,
    /// Work on the rower and bike, kJ (`null` with neither).
    #[serde(default)]
    pub work_kj: Option<f64>,
    /// The profile fields the energy and load figures need that the member's profile lacks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profile_missing: Vec<Box<str>>,
    /// `false` for a member whose profile keeps them off leaderboards.
    #[serde(default = "on", skip_serializing_if = "is_on")]
    pub leaderboard: bool,
    /// Treadmill, if used.
    pub treadmill: Option<CardioSummary>,
    /// Rower, if used.
    pub rower: Option<CardioSummary>,
    /// Bike, if used.
    pub bike: Option<CardioSummary>,
    /// Free-weights sets.
    pub sets: u64,
    /// Repetitions over all sets.
    pub reps_total: u64,
    /// Sum of reps x weight_kg.
    pub volume_kg: f64,
}

fn on() -> bool {
    true
}

fn is_on(on: &bool) -> bool {
    *on
}

/// A place on a leaderboard: the member's alias where they have one, else their id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Leader {
    /// The member, when they have no alias.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_id: Option<Box<str>>,
    /// The member's alias.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<Box<str>>,
    /// What the board ranks by.
    pub value: f64,
}

/// The class's leaderboards, each `size` long at most.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Standings<'a> {
    /// By effort points.
    pub effort: Vec<(&'a MemberSummary, f64)>,
    /// By work on the rower and bike.
    pub work: Vec<(&'a MemberSummary, f64)>,
    /// By distance, one board per machine kind: treadmill, rower, bike.
    pub distance: [Vec<(&'a MemberSummary, f64)>; 3],
    /// Members left off by their profile.
    pub hidden: u64,
}

impl Standings<'_> {
    /// The boards of `members`: the top `size` by each value, ties by member id, members
    /// whose profile says `leaderboard: false` left out and counted; a board holds only the
    /// members the value exists for (a machine's board, those who used it).
    pub fn of(members: &[MemberSummary], size: usize) -> Standings<'_> {
        let rank = |value: &dyn Fn(&MemberSummary) -> Option<f64>| {
            let mut ranked: Vec<(&MemberSummary, f64)> = members
                .iter()
                .filter(|m| m.leaderboard)
                .filter_map(|m| value(m).map(|v| (m, v)))
                .collect();
            ranked.sort_by(|a, b| {
                b.1.total_cmp(&a.1)
                    .then_with(|| a.0.member_id.cmp(&b.0.member_id))
            });
            ranked.truncate(size);
            ranked
        };
        let machine = |pick: fn(&MemberSummary) -> &Option<CardioSummary>| {
            rank(&|m| pick(m).as_ref().map(|c| c.distance_m))
        };
        Standings {
            effort: rank(&|m| Some(m.effort_points)),
            work: rank(&|m| m.work_kj),
            distance: [
                machine(|m| &m.treadmill),
                machine(|m| &m.rower),
                machine(|m| &m.bike),
            ],
            hidden: members.iter().filter(|m| !m.leaderboard).count() as u64,
        }
    }
}

/// A board as results hold it.
pub fn leaders(board: &[(&MemberSummary, f64)]) -> Vec<Leader> {
    board
        .iter()
        .map(|(member, value)| Leader {
            member_id: member.alias.is_none().then(|| member.member_id.clone()),
            alias: member.alias.clone(),
            value: *value,
        })
        .collect()
}

/// The source positions a result includes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Positions {
    /// `stream/partition`.
    pub partition: String,
    /// Position of the first event counted.
    pub first_offset: u64,
    /// Position of the last event counted.
    pub last_offset: u64,
}

/// A class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassSummary {
    /// The studio.
    pub studio_id: Box<str>,
    /// The class.
    pub class_id: Box<str>,
    /// Whether the class is over (else a live value).
    #[serde(rename = "final")]
    pub is_final: bool,
    /// Members seen.
    pub members: u64,
    /// Events counted by type.
    pub events: TypeCounts,
    /// Earliest event time counted.
    #[serde(
        rename = "first_event",
        serialize_with = "rfc3339",
        deserialize_with = "from_rfc3339"
    )]
    pub first_event_ms: i64,
    /// Latest event time counted.
    #[serde(
        rename = "last_event",
        serialize_with = "rfc3339",
        deserialize_with = "from_rfc3339"
    )]
    pub last_event_ms: i64,
    /// Heart-rate samples.
    pub hr_samples: u64,
    /// Mean bpm over all samples.
    pub hr_avg: Option<f64>,
    /// Member seconds in zones 1 to 5.
    pub zone_seconds: [f64; 5],
    /// Sum of the members' effort points.
    pub effort_points: f64,
    /// Sum of the members' distance.
    pub distance_m: f64,
    /// Sum of the members' energy.
    pub calories: f64,
    /// Sum of the members' energy from heart rate, of those who have it.
    #[serde(default)]
    pub calories_hr: f64,
    /// Sum of the members' training load, of those who have it.
    #[serde(default)]
    pub trimp: f64,
    /// Sum of the members' work, kJ.
    #[serde(default)]
    pub work_kj: f64,
    /// Free-weights sets.
    pub sets: u64,
    /// Repetitions.
    pub reps_total: u64,
    /// Volume lifted.
    pub volume_kg: f64,
    /// Top members by effort points ([`Standings`]).
    pub leaderboard_effort: Vec<Leader>,
    /// Top members by work, kJ.
    #[serde(default)]
    pub leaderboard_work: Vec<Leader>,
    /// Top members by treadmill distance.
    #[serde(default)]
    pub leaderboard_treadmill: Vec<Leader>,
    /// Top members by rower distance.
    #[serde(default)]
    pub leaderboard_rower: Vec<Leader>,
    /// Top members by bike distance.
    #[serde(default)]
    pub leaderboard_bike: Vec<Leader>,
    /// Members left off the boards by their profile.
    #[serde(default)]
    pub leaderboard_hidden: u64,
    /// Top members by distance over all machines: only in results an older build rendered
    /// (written as it rendered them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaderboard_distance: Option<Vec<Leader>>,
    /// What the result includes.
    pub positions: Positions,
}

/// One event-time minute of a class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMinute {
    /// The studio.
    pub studio_id: Box<str>,
    /// The class.
    pub class_id: Box<str>,
    /// Start of the minute.
    #[serde(
        rename = "minute",
        serialize_with = "rfc3339",
        deserialize_with = "from_rfc3339"
    )]
    pub minute_start_ms: i64,
    /// Whether the class is over.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// Events counted.
    pub events: u64,
    /// Members with an event in the minute.
    pub members_active: u64,
    /// Mean bpm in the minute.
    pub hr_avg: Option<f64>,
    /// Distance gained in the minute over all machines.
    pub distance_m: f64,
}

/// Everything written for one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassResult {
    /// The class summary.
    pub summary: ClassSummary,
    /// One per member.
    pub members: Vec<MemberSummary>,
    /// One per minute with events.
    pub minutes: Vec<ClassMinute>,
}

impl ClassResult {
    /// The live document: the whole result as one JSON object.
    pub fn live_object(&self) -> Result<(String, Vec<u8>), serde_json::Error> {
        let mut body = serde_json::to_vec(self)?;
        body.push(b'\n');
        Ok((
            format!(
                "aggregates/live/{}-{}.json",
                self.summary.studio_id, self.summary.class_id
            ),
            body,
        ))
    }

    /// The objects to write, `(key relative to the prefix, body)`.
    pub fn objects(&self) -> Result<Vec<(String, Vec<u8>)>, serde_json::Error> {
        let summary = &self.summary;
        let date = DateTime::<Utc>::from_timestamp_millis(summary.first_event_ms)
            .unwrap_or_default()
            .format("%Y-%m-%d");
        let name = format!("dt={date}/{}-{}", summary.studio_id, summary.class_id);
        let ndjson = |lines: Vec<Vec<u8>>| {
            let mut body = Vec::new();
            for line in lines {
                body.extend_from_slice(&line);
                body.push(b'\n');
            }
            body
        };
        let mut summary_body = serde_json::to_vec(summary)?;
        summary_body.push(b'\n');
        let members = self
            .members
            .iter()
            .map(serde_json::to_vec)
            .collect::<Result<Vec<_>, _>>()?;
        let minutes = self
            .minutes
            .iter()
            .map(serde_json::to_vec)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(vec![
            (format!("aggregates/classes/{name}.json"), summary_body),
            (format!("aggregates/members/{name}.ndjson"), ndjson(members)),
            (format!("aggregates/minutes/{name}.ndjson"), ndjson(minutes)),
        ])
    }
}

/// What a partition writes once the checkpoint that records it is durable: an entry of its
/// outbox, kept in the checkpoint until then.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outgoing {
    /// A class final here. The stage writes its objects ([`ClassResult::objects`]), the final
    /// values of its live document and its row in the aggregates table, as configured. A
    /// checkpoint holds it as its JSON (the result types are shaped for JSON).
    Result(#[serde(with = "as_json")] Box<ClassResult>),
    /// A part of a class counted here, for the class's home partition: the object's key
    /// (relative to the prefix) and body.
    Part {
        /// Where it goes.
        key: String,
        /// The packed part.
        body: Vec<u8>,
    },
    /// The class-directory record that marks a class final at its home (this partition);
    /// after the class's result in the outbox.
    HomeFinal {
        /// Where it goes.
        key: String,
        /// The record.
        body: Vec<u8>,
    },
    /// Event ids the class wrote that leave the state: a sealed segment
    /// ([`super::segment`]), named by its content when written.
    Ids {
        /// The studio.
        studio_id: Box<str>,
        /// The class.
        class_id: Box<str>,
        /// The fingerprints, ascending.
        ids: Vec<u128>,
    },
}

impl Outgoing {
    /// Rough heap bytes held.
    pub fn approx_bytes(&self) -> usize {
        match self {
            Outgoing::Result(result) => {
                1_024 + result.members.len() * 512 + result.minutes.len() * 128
            }
            Outgoing::Part { key, body } | Outgoing::HomeFinal { key, body } => {
                key.len() + body.len()
            }
            Outgoing::Ids { ids, .. } => 64 + ids.capacity() * 16,
        }
    }

    /// Whether this is a segment of class `studio_id`/`class_id` holding `id`.
    pub fn holds_id(&self, studio_id: &str, class_id: &str, id: u128) -> bool {
        match self {
            Outgoing::Ids {
                studio_id: studio,
                class_id: class,
                ids,
            } => **studio == *studio_id && **class == *class_id && ids.binary_search(&id).is_ok(),
            _ => false,
        }
    }
}

/// A [`ClassResult`] inside a checkpoint: its JSON as bytes.
mod as_json {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::ClassResult;

    pub fn serialize<S: Serializer>(
        result: &ClassResult,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serde_json::to_vec(result)
            .map_err(serde::ser::Error::custom)?
            .serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Box<ClassResult>, D::Error> {
        let body = Vec::<u8>::deserialize(deserializer)?;
        serde_json::from_slice(&body).map_err(serde::de::Error::custom)
    }
}

/// `prefix/relative`, or `relative` with no prefix.
pub fn prefixed(prefix: &str, relative: &str) -> Path {
    if prefix.is_empty() {
        Path::from(relative)
    } else {
        Path::from(format!("{prefix}/{relative}"))
    }
}

fn rfc3339<S: Serializer>(time_ms: &i64, serializer: S) -> Result<S::Ok, S::Error> {
    let time = DateTime::<Utc>::from_timestamp_millis(*time_ms).unwrap_or_default();
    serializer.serialize_str(&time.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn from_rfc3339<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    let text = String::deserialize(deserializer)?;
    DateTime::parse_from_rfc3339(&text)
        .map(|time| time.timestamp_millis())
        .map_err(serde::de::Error::custom)
}
