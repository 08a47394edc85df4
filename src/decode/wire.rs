//! The wire types: an event's members as serde and the one-pass reader (`scan`) read them,
//! each a [`Scalar`] that accepts any JSON value.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::reject::truncate_for_detail;

/// Any JSON value, reduced to what validation needs. Never fails to deserialize.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) enum Scalar<'a> {
    /// The member is not there.
    #[default]
    Absent,
    /// JSON `null`.
    Null,
    /// Any JSON number.
    Num(f64),
    /// A JSON string (borrowed when it had no escapes).
    Str(Cow<'a, str>),
    /// A boolean, array or object, by type name.
    Other(&'static str),
}

impl Scalar<'_> {
    pub(super) fn type_name(&self) -> &'static str {
        match self {
            Scalar::Absent => "nothing",
            Scalar::Null => "null",
            Scalar::Num(_) => "a number",
            Scalar::Str(_) => "a string",
            Scalar::Other(name) => name,
        }
    }
}

impl fmt::Display for Scalar<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Num(number) => write!(f, "{number}"),
            Scalar::Str(text) => write!(f, "{:?}", truncate_for_detail(text)),
            other => f.write_str(other.type_name()),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl<'de> Visitor<'de> for ScalarVisitor {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Other("a boolean"))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Scalar::Num(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Scalar::Num(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Scalar::Num(v))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other("an array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other("an object"))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// The base members of an event; anything else at the top level is ignored.
#[derive(Debug, Default, PartialEq, Deserialize)]
pub(super) struct WireEvent<'a> {
    #[serde(default, borrow)]
    pub(super) event_id: Scalar<'a>,
    #[serde(default, borrow)]
    pub(super) event_type: Scalar<'a>,
    #[serde(default, borrow)]
    pub(super) event_created: Scalar<'a>,
    #[serde(default, borrow)]
    pub(super) studio_id: Scalar<'a>,
    #[serde(default, borrow)]
    pub(super) class_id: Scalar<'a>,
    #[serde(default, borrow)]
    pub(super) member_id: Scalar<'a>,
    #[serde(default, borrow)]
    pub(super) device_id: Scalar<'a>,
    #[serde(default, borrow)]
    pub(super) schema_version: Scalar<'a>,
    /// The `event_data` value exactly as written.
    #[serde(default, borrow, deserialize_with = "raw_text")]
    pub(super) event_data: Option<&'a str>,
}

/// A member's value as its JSON text (`None` for `null`).
fn raw_text<'de: 'a, 'a, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<&'a str>, D::Error> {
    let raw: Option<&'de RawValue> = Deserialize::deserialize(deserializer)?;
    Ok(raw.map(RawValue::get))
}

/// The known `event_data` members of every type; which ones count depends on the type.
#[derive(Debug, Default, PartialEq, Deserialize)]
pub(super) struct WireData<'a> {
    #[serde(default, borrow)]
    pub(super) bpm: Scalar<'a>,
    #[serde(default, borrow)]
    pub(super) speed_kph: Scalar<'a>,
    #[serde(default, borrow)]
    pub(super) incline_pct: Scalar<'a>,
    #[serde(default, borrow)]
    pub(super) distance_m: Scalar<'a>,
    #[serde(default, borrow)]
    pub(super) calories: Scalar<'a>,
    #[serde(default, borrow)]
    pub(super) stroke_rate_spm: Scalar<'a>,
    #[serde(default, borrow)]
    pub(super) watts: Scalar<'a>,
    #[serde(default, borrow)]
    pub(super) cadence_rpm: Scalar<'a>,
    #[serde(default, borrow)]
    pub(super) exercise: Scalar<'a>,
    #[serde(default, borrow)]
    pub(super) reps: Scalar<'a>,
    #[serde(default, borrow)]
    pub(super) weight_kg: Scalar<'a>,
}

impl<'a> WireData<'a> {
    pub(super) fn get(&self, name: &str) -> &Scalar<'a> {
        match name {
            "bpm" => &self.bpm,
            "speed_kph" => &self.speed_kph,
            "incline_pct" => &self.incline_pct,
            "distance_m" => &self.distance_m,
            "calories" => &self.calories,
            "stroke_rate_spm" => &self.stroke_rate_spm,
            "watts" => &self.watts,
            "cadence_rpm" => &self.cadence_rpm,
            "exercise" => &self.exercise,
            "reps" => &self.reps,
            "weight_kg" => &self.weight_kg,
            _ => unreachable!("event_data field {name} is missing from WireData"),
        }
    }
}
