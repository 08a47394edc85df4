//! Member profiles: what the studios' member system knows of a member (birth year, sex,
//! weight, resting and maximum heart rate, the alias screens show, whether they appear on
//! leaderboards), read from a file of NDJSON or a DynamoDB table ([`source`]).
//!
//! Every field but `member_id` is optional, and a field out of its range is ignored on its own
//! (counted in `classpulse_member_profiles_rejected_total{field}`), the rest of the profile
//! used. The aggregate stage binds a member's profile to their state in a class when it
//! arrives; from then on it is part of the checkpoint.

pub mod source;

use chrono::Datelike;
use serde::{Deserialize, Serialize};

use crate::aggregate::heart::whole_bpm;

/// Who set a maximum heart rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetBy {
    /// The member or a coach.
    Manual,
    /// A maximal test.
    Measured,
}

/// A member's sex, for the energy and training-load equations that differ by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sex {
    /// Female.
    Female,
    /// Male.
    Male,
}

/// One member's profile, every field checked against its range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Year of birth: a member's age in a class is the class's calendar year minus it.
    pub birth_year: Option<u16>,
    /// Sex.
    pub sex: Option<Sex>,
    /// Body weight.
    pub weight_kg: Option<f64>,
    /// Resting heart rate, whole bpm.
    pub resting_hr: Option<u16>,
    /// A maximum heart rate set by hand or measured, whole bpm.
    pub hr_max: Option<(u16, SetBy)>,
    /// The highest maximum classpulse observed the member sustain (its own item, beside the
    /// member system's).
    pub hr_max_observed: Option<u16>,
    /// What screens show instead of the member id.
    pub alias: Option<Box<str>>,
    /// Whether the member appears on leaderboards.
    pub leaderboard: bool,
}

impl Default for Profile {
    /// No field known; on leaderboards.
    fn default() -> Profile {
        Profile {
            birth_year: None,
            sex: None,
            weight_kg: None,
            resting_hr: None,
            hr_max: None,
            hr_max_observed: None,
            alias: None,
            leaderboard: true,
        }
    }
}

/// The fields of a profile, as named in the file and the table.
pub const FIELDS: [&str; 8] = [
    "birth_year",
    "sex",
    "weight_kg",
    "resting_hr",
    "hr_max",
    "hr_max_source",
    "alias",
    "leaderboard",
];

/// The bounds a field is checked against.
const WEIGHT_KG: (f64, f64) = (20.0, 350.0);
const RESTING_HR: (f64, f64) = (25.0, 120.0);
const HR_MAX: (f64, f64) = (100.0, 240.0);
/// The longest alias kept, in characters.
const ALIAS_MAX_CHARS: usize = 40;

/// A field's value as read, before it is checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// A number.
    Number(f64),
    /// A string.
    Text(&'a str),
    /// A boolean.
    Bool(bool),
    /// Present but null: the same as absent.
    Null,
}

/// Builds a profile field by field, collecting the fields that were out of range.
#[derive(Debug)]
pub struct Builder {
    profile: Profile,
    hr_max: Option<u16>,
    set_by: Option<SetBy>,
    rejected: Vec<&'static str>,
    this_year: i32,
}

impl Builder {
    /// A profile checked against `this_year` (born at least 5 years before it).
    pub fn new(this_year: i32) -> Builder {
        Builder {
            profile: Profile::default(),
            hr_max: None,
            set_by: None,
            rejected: Vec::new(),
            this_year,
        }
    }

    /// A profile checked against the current year.
    pub fn now() -> Builder {
        Builder::new(chrono::Utc::now().year())
    }

    /// Sets `field` to `value`, or records it as rejected. Unknown fields are ignored (the
    /// member system may keep more than classpulse reads).
    pub fn set(&mut self, field: &str, value: Value<'_>) {
        if value == Value::Null {
            return;
        }
        let Some(name) = FIELDS.iter().find(|name| **name == field) else {
            return;
        };
        let profile = &mut self.profile;
        let accepted = match (*name, value) {
            ("birth_year", Value::Number(year)) => {
                let ok =
                    year.fract() == 0.0 && year >= 1900.0 && year <= f64::from(self.this_year - 5);
                ok && set(&mut profile.birth_year, year as u16)
            }
            ("sex", Value::Text("female")) => set(&mut profile.sex, Sex::Female),
            ("sex", Value::Text("male")) => set(&mut profile.sex, Sex::Male),
            ("weight_kg", Value::Number(kg)) => {
                in_range(kg, WEIGHT_KG) && set(&mut profile.weight_kg, kg)
            }
            ("resting_hr", Value::Number(bpm)) => {
                let bpm = round_half_up(bpm);
                in_range(bpm, RESTING_HR) && set(&mut profile.resting_hr, whole_bpm(bpm))
            }
            ("hr_max", Value::Number(bpm)) => {
                let bpm = round_half_up(bpm);
                in_range(bpm, HR_MAX) && set(&mut self.hr_max, whole_bpm(bpm))
            }
            ("hr_max_source", Value::Text("manual")) => set(&mut self.set_by, SetBy::Manual),
            ("hr_max_source", Value::Text("measured")) => set(&mut self.set_by, SetBy::Measured),
            ("alias", Value::Text(text)) => {
                let alias = text.trim();
                let ok = !alias.is_empty()
                    && alias.chars().count() <= ALIAS_MAX_CHARS
                    && !alias.chars().any(char::is_control);
                ok && set(&mut profile.alias, alias.into())
            }
            ("leaderboard", Value::Bool(on)) => {
                profile.leaderboard = on;
                true
            }
            _ => false,
        };
        if !accepted {
            self.rejected.push(name);
        }
    }

    /// The profile, and the fields rejected in the order of [`FIELDS`]. A maximum without a
    /// source was set by hand.
    pub fn finish(mut self) -> (Profile, Vec<&'static str>) {
        self.rejected
            .sort_by_key(|name| FIELDS.iter().position(|field| field == name));
        self.profile.hr_max = self
            .hr_max
            .map(|bpm| (bpm, self.set_by.unwrap_or(SetBy::Manual)));
        (self.profile, self.rejected)
    }
}

/// Sets a field; `true` (it was accepted).
fn set<T>(field: &mut Option<T>, value: T) -> bool {
    *field = Some(value);
    true
}

/// A heart rate rounded to a whole bpm before its bounds are checked: 240.4 is 240.
fn round_half_up(bpm: f64) -> f64 {
    (bpm + 0.5).floor()
}

fn in_range(value: f64, (min, max): (f64, f64)) -> bool {
    value.is_finite() && (min..=max).contains(&value)
}

/// Why a line of a profiles file was not read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProfileError {
    /// Not a JSON object.
    #[error("not a JSON object: {0}")]
    NotAnObject(String),
    /// No `member_id` string.
    #[error("no member_id string")]
    NoMemberId,
}

/// A profile from one JSON object: the member id, the profile, the fields rejected.
pub fn from_json(
    line: &str,
    this_year: i32,
) -> Result<(Box<str>, Profile, Vec<&'static str>), ProfileError> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|error| ProfileError::NotAnObject(error.to_string()))?;
    let serde_json::Value::Object(object) = value else {
        return Err(ProfileError::NotAnObject(format!(
            "a JSON {}",
            kind(&value)
        )));
    };
    let member_id = match object.get("member_id") {
        Some(serde_json::Value::String(id)) if !id.is_empty() => Box::from(id.as_str()),
        _ => return Err(ProfileError::NoMemberId),
    };
    let mut builder = Builder::new(this_year);
    for (field, value) in &object {
        let value = match value {
            serde_json::Value::Number(n) => n.as_f64().map_or(Value::Null, Value::Number),
            serde_json::Value::String(text) => Value::Text(text),
            serde_json::Value::Bool(on) => Value::Bool(*on),
            serde_json::Value::Null => Value::Null,
            // An array or object where a field's value belongs: rejected by its type.
            _ => Value::Text("\u{0}"),
        };
        builder.set(field, value);
    }
    let (profile, rejected) = builder.finish();
    Ok((member_id, profile, rejected))
}

fn kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_profile_reads_every_field() {
        let (id, profile, rejected) = from_json(
            r#"{"member_id":"m-1","birth_year":1961,"sex":"female","weight_kg":64.5,"resting_hr":58,"hr_max":171,"hr_max_source":"measured","alias":"Ann K.","leaderboard":false,"shoe_size":39}"#,
            2026,
        )
        .unwrap();
        assert_eq!(&*id, "m-1");
        assert!(rejected.is_empty(), "{rejected:?}");
        assert_eq!(
            profile,
            Profile {
                birth_year: Some(1961),
                sex: Some(Sex::Female),
                weight_kg: Some(64.5),
                resting_hr: Some(58),
                hr_max: Some((171, SetBy::Measured)),
                hr_max_observed: None,
                alias: Some("Ann K.".into()),
                leaderboard: false,
            }
        );
    }

    #[test]
    fn an_out_of_range_field_is_ignored_and_the_rest_kept() {
        let (_, profile, rejected) = from_json(
            r#"{"member_id":"m-2","birth_year":1899,"sex":"x","weight_kg":351,"resting_hr":24,"hr_max":241,"hr_max_source":"guess","alias":"","leaderboard":"yes"}"#,
            2026,
        )
        .unwrap();
        assert_eq!(profile, Profile::default());
        assert_eq!(
            rejected,
            [
                "birth_year",
                "sex",
                "weight_kg",
                "resting_hr",
                "hr_max",
                "hr_max_source",
                "alias",
                "leaderboard"
            ]
        );
        // Born less than 5 years before the class's year; a fractional year; a string year.
        for (year, ok) in [
            ("2021", true),
            ("2022", false),
            ("1990.5", false),
            ("\"1990\"", false),
        ] {
            let line = format!(r#"{{"member_id":"m","birth_year":{year},"weight_kg":70}}"#);
            let (_, profile, rejected) = from_json(&line, 2026).unwrap();
            assert_eq!(profile.birth_year.is_some(), ok, "{year}");
            assert_eq!(rejected.is_empty(), ok, "{year}");
            assert_eq!(profile.weight_kg, Some(70.0));
        }
    }

    #[test]
    fn a_maximum_without_a_source_was_set_by_hand_and_bounds_hold() {
        let (_, profile, _) = from_json(r#"{"member_id":"m","hr_max":100}"#, 2026).unwrap();
        assert_eq!(profile.hr_max, Some((100, SetBy::Manual)));
        let (_, profile, _) =
            from_json(r#"{"member_id":"m","hr_max":240.4,"resting_hr":120}"#, 2026).unwrap();
        assert_eq!(profile.hr_max, Some((240, SetBy::Manual)));
        assert_eq!(profile.resting_hr, Some(120));
        let (_, profile, _) =
            from_json(r#"{"member_id":"m","hr_max":null,"sex":null}"#, 2026).unwrap();
        assert_eq!(profile, Profile::default());
    }

    #[test]
    fn a_line_without_a_member_is_an_error_naming_it() {
        assert_eq!(
            from_json(r#"{"birth_year":1980}"#, 2026).unwrap_err(),
            ProfileError::NoMemberId
        );
        assert_eq!(
            from_json("[1,2]", 2026).unwrap_err().to_string(),
            "not a JSON object: a JSON array"
        );
        assert!(from_json("{", 2026).is_err());
    }
}
