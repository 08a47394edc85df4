//! Member profiles as the tests see them: the simulator's members, and the maximum heart rate
//! a result must report for each, computed here from the profile alone.

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::Value;

/// The profiles of every member the simulation of `command` can seat (its `CLASSPULSE_SIM_*`
/// settings), by member id, as NDJSON lines.
pub fn simulated_profiles(command: &Command) -> BTreeMap<String, String> {
    let vars = command
        .get_envs()
        .filter_map(|(name, value)| Some((name.to_str()?.to_owned(), value?.to_str()?.to_owned())))
        .filter(|(name, _)| name.starts_with("CLASSPULSE_"))
        .collect();
    let config = classpulse::config::Config::from_vars(&vars).unwrap();
    let simulator =
        classpulse::source::simulator::Simulator::new(&config.simulator, 500, chrono::Utc::now());
    simulator
        .profiles_ndjson()
        .lines()
        .map(|line| {
            let profile: Value = serde_json::from_str(line).unwrap();
            (
                profile["member_id"].as_str().unwrap().to_owned(),
                line.to_owned(),
            )
        })
        .collect()
}

/// A simulated member's number in their studio's pool (`m{studio:04}{number:04}`).
pub fn member_number(member_id: &str) -> u32 {
    member_id[member_id.len() - 4..].parse().unwrap()
}

/// The maximum heart rate and its source a class in `class_year` must use for a member with
/// `profile` (an NDJSON line, or none) and an `observed` maximum, by the documented order:
/// set by hand or measured, observed, Tanaka's 208 - 0.7 x age (halves up), the default 190.
pub fn expected_max(
    profile: Option<&str>,
    observed: Option<u16>,
    class_year: i64,
) -> (u16, &'static str) {
    let profile: Option<Value> = profile.map(|line| serde_json::from_str(line).unwrap());
    let field = |name: &str| profile.as_ref().and_then(|p| p.get(name).cloned());
    if let Some(bpm) = field("hr_max").and_then(|v| v.as_f64()) {
        let source = match field("hr_max_source").as_ref().and_then(Value::as_str) {
            Some("measured") => "measured",
            _ => "manual",
        };
        return (bpm.round() as u16, source);
    }
    if let Some(bpm) = observed {
        return (bpm, "observed");
    }
    if let Some(year) = field("birth_year").and_then(|v| v.as_i64()) {
        let tenths = 2080 - 7 * (class_year - year);
        return (((tenths + 5) / 10) as u16, "formula");
    }
    (190, "default")
}
