//! The performance event: the unit of everything classpulse does.
//!
//! One table, [`fields_of`] and [`BASE_FIELDS`], says what a valid event is. The decoder's
//! fast path, its diagnosis of bad input and the published JSON Schema
//! (`schemas/performance-event.v1.json`) are all derived from it, so they cannot drift apart.

use std::fmt;
use std::sync::Arc;

use bytestring::ByteString;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Kinds of device that send events. The wire names are the `event_type` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    HeartRate,
    Treadmill,
    Rower,
    Bike,
    FreeWeights,
}

impl EventType {
    /// Every type, in a fixed order (metric labels, schema generation, simulator).
    pub const ALL: [EventType; 5] = [
        EventType::HeartRate,
        EventType::Treadmill,
        EventType::Rower,
        EventType::Bike,
        EventType::FreeWeights,
    ];

    /// The `event_type` string on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::HeartRate => "heart_rate",
            EventType::Treadmill => "treadmill",
            EventType::Rower => "rower",
            EventType::Bike => "bike",
            EventType::FreeWeights => "free_weights",
        }
    }

    /// Parses a wire name; `None` for anything unknown.
    pub fn from_wire(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Schema versions this build understands.
pub const SUPPORTED_SCHEMA_VERSIONS: &[i64] = &[1];

/// Earliest event time accepted (2000-01-01T00:00:00Z): anything older is a broken clock.
pub const MIN_EVENT_TIME_MS: i64 = 946_684_800_000;

/// What JSON type a field holds and what values it allows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldKind {
    /// A number in `min..=max`.
    Number { min: f64, max: f64 },
    /// A whole number in `min..=max`.
    Integer { min: f64, max: f64 },
    /// A string of `min_len..=max_len` characters, each allowed by `charset`.
    String {
        min_len: usize,
        max_len: usize,
        charset: Charset,
    },
    /// RFC 3339 with an offset, or integer epoch milliseconds.
    Timestamp,
    /// One of the [`EventType`] wire names.
    EventType,
    /// A JSON object (the type-specific `event_data`).
    Object,
}

/// Characters allowed in a string field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// `[A-Za-z0-9_.-]`: ids joined with `:` in keys, so `:` is excluded.
    Id,
    /// `[A-Za-z0-9_.:-]`: event and device ids (UUIDs, ULIDs, MAC addresses).
    IdWithColon,
    /// Any Unicode text without control characters.
    Text,
}

impl Charset {
    /// Whether `c` is allowed.
    pub fn allows(self, c: char) -> bool {
        match self {
            Charset::Id => c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'),
            Charset::IdWithColon => c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':'),
            Charset::Text => !c.is_control(),
        }
    }

    /// Whether every byte of an ASCII string is allowed (a table lookup per byte: this runs on
    /// every id of every event). Non-ASCII text goes through [`Charset::allows`].
    pub fn allows_ascii(self, bytes: &[u8]) -> bool {
        const fn table(colon: bool) -> [bool; 256] {
            let mut table = [false; 256];
            let mut byte = 0;
            while byte < 256 {
                let c = byte as u8;
                table[byte] = c.is_ascii_alphanumeric()
                    || c == b'_'
                    || c == b'.'
                    || c == b'-'
                    || (colon && c == b':');
                byte += 1;
            }
            table
        }
        static ID: [bool; 256] = table(false);
        static ID_WITH_COLON: [bool; 256] = table(true);
        match self {
            Charset::Id => bytes.iter().all(|b| ID[usize::from(*b)]),
            Charset::IdWithColon => bytes.iter().all(|b| ID_WITH_COLON[usize::from(*b)]),
            Charset::Text => bytes.iter().all(|b| !b.is_ascii_control()),
        }
    }

    /// The same rule as a JSON Schema / ECMA regex character class.
    pub fn pattern(self) -> Option<&'static str> {
        match self {
            Charset::Id => Some("^[A-Za-z0-9_.-]+$"),
            Charset::IdWithColon => Some("^[A-Za-z0-9_.:-]+$"),
            Charset::Text => None,
        }
    }
}

/// One field of the event contract.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FieldSpec {
    /// The JSON member name.
    pub name: &'static str,
    /// Its type and allowed values.
    pub kind: FieldKind,
    /// Whether an event without it is rejected (`missing_field`).
    pub required: bool,
    /// One line for the schema's `description`.
    pub description: &'static str,
}

const fn number(name: &'static str, min: f64, max: f64, description: &'static str) -> FieldSpec {
    FieldSpec {
        name,
        kind: FieldKind::Number { min, max },
        required: true,
        description,
    }
}

const fn optional(spec: FieldSpec) -> FieldSpec {
    FieldSpec {
        required: false,
        ..spec
    }
}

/// The longest id of the contract (studio, class, member, device).
pub const ID_LEN: usize = 64;

const fn id(name: &'static str, charset: Charset, description: &'static str) -> FieldSpec {
    FieldSpec {
        name,
        kind: FieldKind::String {
            min_len: 1,
            max_len: ID_LEN,
            charset,
        },
        required: true,
        description,
    }
}

/// Producer-assigned unique id.
pub const EVENT_ID: FieldSpec = id(
    "event_id",
    Charset::IdWithColon,
    "Unique id of this measurement (UUID or ULID); the deduplication key.",
);
/// Device kind.
pub const EVENT_TYPE: FieldSpec = FieldSpec {
    name: "event_type",
    kind: FieldKind::EventType,
    required: true,
    description: "Which device kind sent it; selects the shape of event_data.",
};
/// Event time.
pub const EVENT_CREATED: FieldSpec = FieldSpec {
    name: "event_created",
    kind: FieldKind::Timestamp,
    required: true,
    description: "When the device measured it (event time): RFC 3339 with offset, or integer epoch milliseconds.",
};
/// The studio.
pub const STUDIO_ID: FieldSpec = id("studio_id", Charset::Id, "The studio.");
/// The class session.
pub const CLASS_ID: FieldSpec = id(
    "class_id",
    Charset::Id,
    "One class session at the studio (a recurring class gets a new id each time).",
);
/// The member.
pub const MEMBER_ID: FieldSpec = id(
    "member_id",
    Charset::Id,
    "The member wearing or using the device.",
);
/// The sending device.
pub const DEVICE_ID: FieldSpec = optional(id(
    "device_id",
    Charset::IdWithColon,
    "The sending device, if known.",
));
/// Contract version.
pub const SCHEMA_VERSION: FieldSpec = optional(FieldSpec {
    name: "schema_version",
    kind: FieldKind::Integer { min: 1.0, max: 1.0 },
    required: false,
    description: "Version of this contract; 1 when absent.",
});
/// Type-specific payload.
pub const EVENT_DATA: FieldSpec = FieldSpec {
    name: "event_data",
    kind: FieldKind::Object,
    required: true,
    description:
        "Type-specific measurements; unknown members are kept in the lake but not aggregated.",
};

/// The base fields every event carries, in wire order.
pub const BASE_FIELDS: &[FieldSpec] = &[
    EVENT_ID,
    EVENT_TYPE,
    EVENT_CREATED,
    STUDIO_ID,
    CLASS_ID,
    MEMBER_ID,
    DEVICE_ID,
    SCHEMA_VERSION,
    EVENT_DATA,
];

/// Largest plausible cumulative distance in one class (metres): 1,000 km.
const MAX_DISTANCE_M: f64 = 1_000_000.0;
/// Largest plausible cumulative energy in one class (kcal).
const MAX_CALORIES: f64 = 100_000.0;

const DISTANCE: FieldSpec = number(
    "distance_m",
    0.0,
    MAX_DISTANCE_M,
    "Distance covered since the class started (cumulative), metres.",
);
const CALORIES: FieldSpec = optional(number(
    "calories",
    0.0,
    MAX_CALORIES,
    "Energy since the class started (cumulative), kcal.",
));

const HEART_RATE_FIELDS: &[FieldSpec] =
    &[number("bpm", 25.0, 250.0, "Heart rate, beats per minute.")];
const TREADMILL_FIELDS: &[FieldSpec] = &[
    number("speed_kph", 0.0, 30.0, "Belt speed, km/h."),
    number("incline_pct", -5.0, 30.0, "Incline, percent."),
    DISTANCE,
    CALORIES,
];
const ROWER_FIELDS: &[FieldSpec] = &[
    number("stroke_rate_spm", 0.0, 80.0, "Strokes per minute."),
    number("watts", 0.0, 2000.0, "Power, watts."),
    DISTANCE,
    CALORIES,
];
const BIKE_FIELDS: &[FieldSpec] = &[
    number("cadence_rpm", 0.0, 250.0, "Pedal cadence, rpm."),
    number("watts", 0.0, 3000.0, "Power, watts."),
    DISTANCE,
    CALORIES,
];
const FREE_WEIGHTS_FIELDS: &[FieldSpec] = &[
    FieldSpec {
        name: "exercise",
        kind: FieldKind::String {
            min_len: 1,
            max_len: 64,
            charset: Charset::Text,
        },
        required: true,
        description: "Exercise name, e.g. squat.",
    },
    FieldSpec {
        name: "reps",
        kind: FieldKind::Integer {
            min: 1.0,
            max: 1000.0,
        },
        required: true,
        description: "Repetitions in this set.",
    },
    number("weight_kg", 0.0, 500.0, "Load, kg."),
];

/// The `event_data` fields of one event type.
pub fn fields_of(event_type: EventType) -> &'static [FieldSpec] {
    match event_type {
        EventType::HeartRate => HEART_RATE_FIELDS,
        EventType::Treadmill => TREADMILL_FIELDS,
        EventType::Rower => ROWER_FIELDS,
        EventType::Bike => BIKE_FIELDS,
        EventType::FreeWeights => FREE_WEIGHTS_FIELDS,
    }
}

/// Numeric metrics an event may carry: one nullable column each in the lake.
///
/// Only the fields of the event's own type are set; anything else in `event_data` stays in
/// [`PerformanceEvent::event_data`] (schema on read).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    /// Heart rate, bpm.
    pub bpm: Option<f64>,
    /// Treadmill belt speed, km/h.
    pub speed_kph: Option<f64>,
    /// Treadmill incline, percent.
    pub incline_pct: Option<f64>,
    /// Cumulative distance in the class, metres.
    pub distance_m: Option<f64>,
    /// Cumulative energy in the class, kcal.
    pub calories: Option<f64>,
    /// Rower strokes per minute.
    pub stroke_rate_spm: Option<f64>,
    /// Rower or bike power, watts.
    pub watts: Option<f64>,
    /// Bike cadence, rpm.
    pub cadence_rpm: Option<f64>,
    /// Free-weights exercise name.
    pub exercise: Option<String>,
    /// Free-weights repetitions in the set.
    pub reps: Option<u32>,
    /// Free-weights load, kg.
    pub weight_kg: Option<f64>,
}

impl Metrics {
    /// Names of the numeric metrics, in the order of [`Metrics::numbers`] (and lake columns).
    pub const NUMBER_NAMES: [&'static str; 9] = [
        "bpm",
        "speed_kph",
        "incline_pct",
        "distance_m",
        "calories",
        "stroke_rate_spm",
        "watts",
        "cadence_rpm",
        "weight_kg",
    ];

    /// The numeric metrics, in the order of [`Metrics::NUMBER_NAMES`].
    pub fn numbers(&self) -> [Option<f64>; 9] {
        [
            self.bpm,
            self.speed_kph,
            self.incline_pct,
            self.distance_m,
            self.calories,
            self.stroke_rate_spm,
            self.watts,
            self.cadence_rpm,
            self.weight_kg,
        ]
    }

    /// The numeric metric named `name`, for code driven by the field table.
    pub fn number_mut(&mut self, name: &str) -> Option<&mut Option<f64>> {
        Some(match name {
            "bpm" => &mut self.bpm,
            "speed_kph" => &mut self.speed_kph,
            "incline_pct" => &mut self.incline_pct,
            "distance_m" => &mut self.distance_m,
            "calories" => &mut self.calories,
            "stroke_rate_spm" => &mut self.stroke_rate_spm,
            "watts" => &mut self.watts,
            "cadence_rpm" => &mut self.cadence_rpm,
            "weight_kg" => &mut self.weight_kg,
            _ => return None,
        })
    }
}

/// A JSON value exactly as it was received, already validated. It shares the buffer of the
/// message it came in (as the ids of [`PerformanceEvent`] do), so decoding copies nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawJson(ByteString);

impl RawJson {
    /// Checks that `json` is one JSON value and keeps it as it is.
    pub fn from_string(json: String) -> Result<RawJson, serde_json::Error> {
        serde_json::from_str::<&RawValue>(&json)?;
        Ok(RawJson(json.into()))
    }

    /// Wraps text the decoder has already parsed as one JSON value.
    pub(crate) fn parsed(json: ByteString) -> RawJson {
        RawJson(json)
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        &self.0
    }
}

/// A valid performance event. Its strings are slices of the message buffer it was decoded
/// from ([`ByteString`]), so the buffer lives as long as any of its events.
#[derive(Debug, Clone)]
pub struct PerformanceEvent {
    /// Producer-assigned unique id; the deduplication key.
    pub event_id: ByteString,
    /// Device kind.
    pub event_type: EventType,
    /// Event time (`event_created`), epoch milliseconds UTC.
    pub event_time_ms: i64,
    /// The studio.
    pub studio_id: Arc<str>,
    /// The class session within the studio.
    pub class_id: Arc<str>,
    /// The member.
    pub member_id: ByteString,
    /// The device, if the producer named it.
    pub device_id: Option<ByteString>,
    /// Contract version (1 when absent on the wire).
    pub schema_version: u16,
    /// Typed measurements of this event's type.
    pub metrics: Metrics,
    /// `event_data` exactly as received, including fields classpulse does not know.
    pub event_data: RawJson,
    /// Offset of the message that carried it, within its partition.
    pub offset: u64,
    /// When its message reached the source, epoch ms (see [`crate::decode::RawMessage`]).
    pub arrival_ms: i64,
    /// What the aggregator made of it; the lake stores it accordingly.
    pub verdict: Verdict,
}

/// What the aggregator decided about an event. Every event still reaches the lake unless it is
/// a duplicate; nothing is dropped without being counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verdict {
    /// Counted in the aggregates (or not judged: aggregation off, or a replayed position the
    /// restored state already includes).
    #[default]
    Counted,
    /// The same `event_id` was already counted for its class: left out of the aggregates and
    /// the lake (`classpulse_events_duplicate_total`).
    Duplicate,
    /// Older than its class's watermark minus the allowed lateness, or for a class already
    /// finalised: left out of the aggregates, kept in the lake with `late = true`
    /// (`classpulse_events_late_total`).
    Late,
}

/// Event ids by fingerprint: the xxh3-128 hash of the id ([`fingerprint`]). The set hashes
/// a fingerprint by its own bits, since hashing a uniform hash again spreads no better and
/// costs time on every event judged.
pub type IdSet = hashbrown::HashSet<u128, FingerprintBits>;

/// The fingerprint of an event id (xxh3-128).
pub fn fingerprint(event_id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(event_id.as_bytes())
}

/// Builds the hasher of an [`IdSet`].
#[derive(Debug, Clone, Copy, Default)]
pub struct FingerprintBits;

impl std::hash::BuildHasher for FingerprintBits {
    type Hasher = FingerprintHasher;

    fn build_hasher(&self) -> FingerprintHasher {
        FingerprintHasher(0)
    }
}

/// Folds a fingerprint's two halves into its hash.
#[derive(Debug)]
pub struct FingerprintHasher(u64);

impl std::hash::Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u128(&mut self, fingerprint: u128) {
        self.0 ^= (fingerprint as u64) ^ ((fingerprint >> 64) as u64);
    }

    // Only fingerprints are hashed; anything else is folded in eight bytes at a time.
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }
}

impl PerformanceEvent {
    /// The `studio_id:class_id` key producers partition by.
    pub fn class_key(&self) -> String {
        format!("{}:{}", self.studio_id, self.class_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_type_names_round_trip() {
        for event_type in EventType::ALL {
            assert_eq!(EventType::from_wire(event_type.as_str()), Some(event_type));
            let json = serde_json::to_string(&event_type).unwrap();
            assert_eq!(json, format!("\"{}\"", event_type.as_str()));
        }
        assert_eq!(EventType::from_wire("HeartRate"), None);
        assert_eq!(EventType::from_wire("elliptical"), None);
    }

    #[test]
    fn ascii_table_agrees_with_the_char_rule() {
        for charset in [Charset::Id, Charset::IdWithColon, Charset::Text] {
            for byte in 0u8..128 {
                assert_eq!(
                    charset.allows_ascii(&[byte]),
                    charset.allows(char::from(byte)),
                    "{charset:?} {byte}"
                );
            }
        }
    }

    #[test]
    fn id_charset_excludes_key_separator() {
        assert!(!Charset::Id.allows(':'));
        assert!(Charset::IdWithColon.allows(':'));
        for c in ['/', ' ', '\\', '\n', '"', '\''] {
            assert!(!Charset::Id.allows(c), "{c:?} must not be allowed in ids");
            assert!(
                !Charset::IdWithColon.allows(c),
                "{c:?} must not be allowed in event ids"
            );
        }
        assert!(!Charset::Text.allows('\u{7}'));
        assert!(Charset::Text.allows('é'));
    }

    #[test]
    fn number_names_match_number_order() {
        let mut metrics = Metrics::default();
        for (i, name) in Metrics::NUMBER_NAMES.iter().enumerate() {
            *metrics.number_mut(name).unwrap() = Some(i as f64);
        }
        let expected: Vec<_> = (0..9).map(|i| Some(i as f64)).collect();
        assert_eq!(metrics.numbers().to_vec(), expected);
    }

    #[test]
    fn every_numeric_field_has_a_metric_column() {
        let mut metrics = Metrics::default();
        for event_type in EventType::ALL {
            for field in fields_of(event_type) {
                if let FieldKind::Number { .. } = field.kind {
                    assert!(metrics.number_mut(field.name).is_some(), "{}", field.name);
                }
            }
        }
    }
}
