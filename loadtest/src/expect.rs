//! What classpulse must produce, computed as the events are generated, from the definitions
//! of the aggregates (docs/aggregates.md), not from classpulse's code: which events
//! land once, which late, which as dead letters, and every class's final results as the JSON
//! the lake holds.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::model::{utc_rfc3339, Kind, Message, Profile, Reading};

/// The parameters of the definitions.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// The maximum of a member with no better one.
    pub hr_max_bpm: f64,
    pub hr_max_gap_ms: i64,
    /// How long a member's heart rate must stay above their maximum to raise it.
    pub hr_max_raise_after_ms: i64,
}

/// The most a class raises a maximum by.
const RAISE_CAP_BPM: u16 = 10;

/// The maximum heart rate a class in `year` uses for a member with `profile` (none: the member
/// system does not know them), and its source, by the definitions: set by hand or measured,
/// else Tanaka's 208 - 0.7 x age rounded halves up, else the default. (A run seats a member
/// once, so no class of it sees a maximum another class raised.)
pub fn member_max(profile: Option<&Profile>, year: i32, default: f64) -> (u16, &'static str) {
    match profile {
        Some(Profile {
            hr_max: Some((bpm, source)),
            ..
        }) => (bpm.round() as u16, source),
        Some(profile) => {
            let tenths = 2080 - 7 * (year - profile.birth_year);
            (((tenths + 5) / 10) as u16, "formula")
        }
        None => (default.round() as u16, "default"),
    }
}

/// The highest heart rate a member held for `raise_ms`: over every shortest run of samples
/// that spans it with no two consecutive ones further apart than `gap_ms`, the run's lowest
/// sample, and the highest of those.
fn sustained(samples: &[(i64, u16)], gap_ms: i64, raise_ms: i64) -> Option<u16> {
    let mut best = None;
    for (i, (start, first)) in samples.iter().enumerate() {
        let mut lowest = *first;
        for pair in samples[i..].windows(2) {
            let ((before, _), (time, bpm)) = (pair[0], pair[1]);
            if time - before > gap_ms {
                break;
            }
            lowest = lowest.min(bpm);
            if time - start >= raise_ms {
                best = best.max(Some(lowest));
                break;
            }
        }
    }
    best
}

/// Leaderboards keep this many members (`CLASSPULSE_LEADERBOARD_SIZE`'s default).
const LEADERBOARD_SIZE: usize = 5;

/// Keytel et al. (2005), without VO2max, in kcal a minute (kJ over 4.184), never below 0.
fn keytel(profile: &Profile, bpm: f64, age: f64) -> f64 {
    let kj = if profile.female {
        -20.4022 + 0.4472 * bpm - 0.1263 * profile.weight_kg + 0.074 * age
    } else {
        -55.0969 + 0.6309 * bpm + 0.1988 * profile.weight_kg + 0.2017 * age
    };
    (kj / 4.184).max(0.0)
}

/// Banister's TRIMP a minute at `bpm`: reserve fraction x (held to 0..1) x a e^(b x).
fn banister(female: bool, bpm: f64, resting: f64, hr_max: f64) -> f64 {
    let x = ((bpm - resting) / (hr_max - resting)).clamp(0.0, 1.0);
    let (a, b) = if female { (0.86, 1.67) } else { (0.64, 1.92) };
    x * a * (b * x).exp()
}

/// Everything expected of one run.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Expected {
    /// Valid events' indices that arrive past the allowed lateness (in the lake as late).
    pub late: Vec<u64>,
    /// Valid events' indices rejected anyway (a fast clock), with the reason.
    pub rejected_valid: BTreeMap<u64, String>,
    /// Invalid events: id and the dead-letter reason.
    pub invalid: BTreeMap<String, String>,
    /// Extra copies sent (producer retries, classes posted again).
    pub retries: u64,
    /// Classes whose whole stream was posted again after they were final.
    #[serde(default)]
    pub resent_classes: u64,
    /// Final results per class key (`studio:class`): summary, members, minutes.
    pub classes: BTreeMap<String, ClassExpectation>,
    /// Messages generated on the side (malformed ones), waiting to be sent.
    #[serde(skip)]
    stash: Vec<Message>,
}

/// One class's final results, as the lake's JSON (fields classpulse adds, like source
/// positions, are left out).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassExpectation {
    pub summary: Value,
    pub members: Vec<Value>,
    pub minutes: Vec<Value>,
}

impl Expected {
    pub fn late(&mut self, index: u64) {
        self.late.push(index);
    }

    pub fn rejected(&mut self, index: u64, reason: &str) {
        self.rejected_valid.insert(index, reason.to_owned());
    }

    pub fn invalid(&mut self, id: String, reason: &str) {
        self.invalid.insert(id, reason.to_owned());
    }

    pub fn retried(&mut self) {
        self.retries += 1;
    }

    /// Keeps a message generated inside a sample, for the caller to send after it.
    pub fn stash(&mut self, message: Message) {
        self.stash.push(message);
    }

    /// Messages kept by [`Expected::stash`].
    pub fn take_stash(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.stash)
    }

    pub fn finish_class(&mut self, plan: &crate::model::ClassPlan, acc: ClassAcc, rules: &Rules) {
        if let Some(result) = acc.result(&plan.studio_id, &plan.class_id, rules) {
            self.classes.insert(plan.key(), result);
        }
    }
}

/// Running statistics of one value.
#[derive(Debug, Clone, Copy, Default)]
struct Stat {
    n: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Stat {
    fn add(&mut self, x: f64) {
        if self.n == 0 {
            (self.min, self.max) = (x, x);
        }
        self.n += 1;
        self.sum += x;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
    }
    fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }
    fn max(&self) -> Option<f64> {
        (self.n > 0).then_some(self.max)
    }
    fn min(&self) -> Option<f64> {
        (self.n > 0).then_some(self.min)
    }
    fn span(&self) -> f64 {
        if self.n > 0 {
            self.max - self.min
        } else {
            0.0
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Machine {
    n: u64,
    distance: Stat,
    calories: Stat,
    speed: Stat,
    watts: Stat,
    cadence: Stat,
    spm: Stat,
    /// Smallest and largest distance reading per minute.
    minutes: BTreeMap<i64, (f64, f64)>,
    /// Time of the last reading, and the sums of the capped gaps and of watts times them.
    last_ms: Option<i64>,
    moving_ms: i64,
    joules: f64,
}

impl Machine {
    fn gained_in(&self, minute: i64) -> f64 {
        let Some((low, high)) = self.minutes.get(&minute) else {
            return 0.0;
        };
        let before = self
            .minutes
            .range(..minute)
            .map(|(_, (_, h))| *h)
            .reduce(f64::max);
        (high - before.unwrap_or(*low)).max(0.0)
    }
}

#[derive(Debug, Default, Clone)]
struct Member {
    counts: [u64; 5],
    bpm: Stat,
    last_hr_ms: Option<i64>,
    /// Heart-rate samples counted, in time order.
    samples: Vec<(i64, u16)>,
    zone_ms: [i64; 5],
    /// Whole bpm and the capped gap each heart-rate sample counts, in time order.
    timed: Vec<(f64, i64, Option<usize>)>,
    machines: BTreeMap<Kind, Machine>,
    sets: u64,
    reps: u64,
    volume: f64,
}

#[derive(Debug, Default, Clone)]
struct Minute {
    events: u64,
    members: BTreeSet<String>,
    bpm: Stat,
}

/// One class's counted events, accumulated in event-time order.
#[derive(Debug, Default, Clone)]
pub struct ClassAcc {
    /// Each seated member's maximum and its source, and their profile.
    seats: BTreeMap<String, ((u16, &'static str), Option<Profile>)>,
    members: BTreeMap<String, Member>,
    minutes: BTreeMap<i64, Minute>,
    first_ms: Option<i64>,
    last_ms: i64,
}

impl ClassAcc {
    /// A class of these members: (id, maximum and source, profile). Others have the default
    /// maximum and no profile.
    pub fn seated(
        members: impl IntoIterator<Item = (String, (u16, &'static str), Option<Profile>)>,
    ) -> ClassAcc {
        ClassAcc {
            seats: members
                .into_iter()
                .map(|(id, max, profile)| (id, (max, profile)))
                .collect(),
            ..ClassAcc::default()
        }
    }

    fn seat(&self, member_id: &str, rules: &Rules) -> ((u16, &'static str), Option<&Profile>) {
        self.seats.get(member_id).map_or(
            ((rules.hr_max_bpm.round() as u16, "default"), None),
            |(max, profile)| (*max, profile.as_ref()),
        )
    }

    /// Counts one event (the caller adds a member's events in time order).
    pub fn add(
        &mut self,
        member_id: &str,
        kind: Kind,
        time_ms: i64,
        reading: &Reading,
        rules: &Rules,
    ) {
        let minute_ms = time_ms.div_euclid(60_000) * 60_000;
        self.first_ms = Some(self.first_ms.map_or(time_ms, |f| f.min(time_ms)));
        self.last_ms = self.last_ms.max(time_ms);
        let ((hr_max, _), _) = self.seat(member_id, rules);
        let minute = self.minutes.entry(minute_ms).or_default();
        minute.events += 1;
        minute.members.insert(member_id.to_owned());
        let member = self.members.entry(member_id.to_owned()).or_default();
        member.counts[kind.index()] += 1;
        match *reading {
            Reading::HeartRate { bpm } => {
                member.bpm.add(bpm);
                minute.bpm.add(bpm);
                // Each sample counts the gap to the previous one, capped; the first counts 0.
                let gap = member
                    .last_hr_ms
                    .map_or(0, |last| (time_ms - last).min(rules.hr_max_gap_ms));
                member.last_hr_ms = Some(time_ms);
                member.samples.push((time_ms, bpm.round() as u16));
                // Zone k from (40 + 10k)% of the member's maximum up; compared in whole
                // numbers so 60% is exactly zone 2.
                let zone = (5..=9)
                    .rev()
                    .find(|tens| bpm * 10.0 >= f64::from(hr_max) * f64::from(*tens));
                if let Some(tens) = zone {
                    member.zone_ms[(tens - 5) as usize] += gap;
                }
                member
                    .timed
                    .push((bpm.round(), gap, zone.map(|tens| (tens - 5) as usize)));
            }
            Reading::Weights { reps, weight, .. } => {
                member.sets += 1;
                member.reps += u64::from(reps);
                member.volume += f64::from(reps) * weight;
            }
            Reading::Treadmill {
                speed,
                distance,
                calories,
                ..
            } => {
                let m = member.machines.entry(kind).or_default();
                m.speed.add(speed);
                add_cumulative(m, minute_ms, distance, calories);
                add_timed(m, time_ms, None, rules);
            }
            Reading::Rower {
                spm,
                watts,
                distance,
                calories,
            } => {
                let m = member.machines.entry(kind).or_default();
                m.spm.add(spm);
                m.watts.add(watts);
                add_cumulative(m, minute_ms, distance, calories);
                add_timed(m, time_ms, Some(watts), rules);
            }
            Reading::Bike {
                cadence,
                watts,
                distance,
                calories,
            } => {
                let m = member.machines.entry(kind).or_default();
                m.cadence.add(cadence);
                m.watts.add(watts);
                add_cumulative(m, minute_ms, distance, calories);
                add_timed(m, time_ms, Some(watts), rules);
            }
        }
    }

    /// The final results, or `None` if nothing was counted.
    pub fn result(
        &self,
        studio_id: &str,
        class_id: &str,
        rules: &Rules,
    ) -> Option<ClassExpectation> {
        let first_ms = self.first_ms?;
        let year = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(first_ms)
            .map_or(2026, |t| chrono::Datelike::year(&t));
        let mut members = Vec::new();
        // On the boards: (member, effort, work, distance per machine kind).
        type Row = (String, f64, Option<f64>, [Option<f64>; 3]);
        let mut rows: Vec<Row> = Vec::new();
        let mut hidden = 0u64;
        let mut totals = Totals::default();
        for (member_id, m) in &self.members {
            let zone_seconds: Vec<f64> = m.zone_ms.iter().map(|ms| *ms as f64 / 1000.0).collect();
            let effort = ((m.zone_ms[3] + 2 * m.zone_ms[4]) / 6_000) as f64 / 10.0;
            let distance: f64 = m.machines.values().map(|x| x.distance.span()).sum();
            let calories: f64 = m.machines.values().map(|x| x.calories.span()).sum();
            let machine = |kind: Kind| {
                m.machines.get(&kind).map(|x| {
                    let mut o = Map::new();
                    o.insert("events".into(), json!(x.n));
                    o.insert("distance_m".into(), json!(x.distance.span()));
                    o.insert("calories".into(), json!(x.calories.span()));
                    for (name, stat) in [
                        ("speed_kph", &x.speed),
                        ("watts", &x.watts),
                        ("cadence_rpm", &x.cadence),
                        ("stroke_rate_spm", &x.spm),
                    ] {
                        if stat.n > 0 {
                            o.insert(format!("avg_{name}"), json!(stat.mean()));
                            o.insert(format!("max_{name}"), json!(stat.max()));
                        }
                    }
                    if x.watts.n > 0 {
                        o.insert("work_kj".into(), json!(x.joules / 1_000.0));
                    }
                    let distance = x.distance.span();
                    if kind == Kind::Rower && distance > 0.0 && x.moving_ms > 0 {
                        let split = x.moving_ms as f64 / 1_000.0 * 500.0 / distance;
                        o.insert("split_500m_s".into(), json!(split));
                    }
                    Value::Object(o)
                })
            };
            let ((hr_max, source), profile) = self.seat(member_id, rules);
            let leaderboard = profile.is_none_or(|p| p.leaderboard);
            let age = profile.map(|p| f64::from(year - p.birth_year));
            // Every seated profile has a sex, weight and birth year; resting rate for some.
            let calories_hr = profile.zip(age).map(|(p, age)| {
                m.timed
                    .iter()
                    .filter(|(_, _, zone)| zone.is_some())
                    .map(|(bpm, gap, _)| keytel(p, *bpm, age) * *gap as f64 / 60_000.0)
                    .sum::<f64>()
            });
            let resting = profile.and_then(|p| p.resting_hr.map(|r| (p.female, r.round())));
            let trimp =
                resting
                    .filter(|(_, rest)| *rest < f64::from(hr_max))
                    .map(|(female, rest)| {
                        m.timed
                            .iter()
                            .map(|(bpm, gap, _)| {
                                banister(female, *bpm, rest, f64::from(hr_max)) * *gap as f64
                                    / 60_000.0
                            })
                            .sum::<f64>()
                    });
            let work_kj = [Kind::Rower, Kind::Bike]
                .iter()
                .filter_map(|kind| m.machines.get(kind).filter(|x| x.watts.n > 0))
                .map(|x| x.joules / 1_000.0)
                .reduce(|a, b| a + b);
            let mut missing = Vec::new();
            match profile {
                None => missing.extend(["birth_year", "sex", "weight_kg", "resting_hr"]),
                Some(p) if p.resting_hr.is_none() => missing.push("resting_hr"),
                Some(_) => {}
            }
            let percent = |bpm: f64| (bpm * 1000.0 / f64::from(hr_max)).round() / 10.0;
            let raised = sustained(&m.samples, rules.hr_max_gap_ms, rules.hr_max_raise_after_ms)
                .filter(|bpm| *bpm > hr_max && !["manual", "measured"].contains(&source))
                .map(|bpm| bpm.min(hr_max + RAISE_CAP_BPM));
            members.push(json!({
                "studio_id": studio_id,
                "class_id": class_id,
                "member_id": member_id,
                "final": true,
                "events": counts(&m.counts),
                "hr_samples": m.bpm.n,
                "hr_min": m.bpm.min(),
                "hr_max": m.bpm.max(),
                "hr_avg": m.bpm.mean(),
                "hr_max_used": hr_max,
                "hr_max_source": source,
                "hr_max_observed": raised,
                "zone_basis": "max",
                "hr_pct_avg": m.bpm.mean().map(percent),
                "hr_pct_peak": m.bpm.max().map(percent),
                // A final result has no "now".
                "hr_current": null,
                "hr_pct_current": null,
                "zone_current": null,
                "zone_seconds": zone_seconds,
                "effort_points": effort,
                "distance_m": distance,
                "calories": calories,
                "calories_hr": calories_hr,
                "trimp": trimp,
                "work_kj": work_kj,
                "treadmill": machine(Kind::Treadmill),
                "rower": machine(Kind::Rower),
                "bike": machine(Kind::Bike),
                "sets": m.sets,
                "reps_total": m.reps,
                "volume_kg": m.volume,
            }));
            if let Some(object) = members.last_mut().and_then(Value::as_object_mut) {
                if !missing.is_empty() {
                    object.insert("profile_missing".into(), json!(missing));
                }
                if !leaderboard {
                    object.insert("leaderboard".into(), json!(false));
                }
            }
            if leaderboard {
                let machine_distance = [Kind::Treadmill, Kind::Rower, Kind::Bike]
                    .map(|kind| m.machines.get(&kind).map(|x| x.distance.span()));
                rows.push((member_id.clone(), effort, work_kj, machine_distance));
            } else {
                hidden += 1;
            }
            totals.add(m, &zone_seconds, effort, distance, calories);
            totals.calories_hr += calories_hr.unwrap_or(0.0);
            totals.trimp += trimp.unwrap_or(0.0);
            totals.work_kj += work_kj.unwrap_or(0.0);
        }
        // The top members by a value, ties by member id, only those it exists for (no
        // profile in the run has an alias: boards name members by id).
        let board = |value: &dyn Fn(&Row) -> Option<f64>| {
            let mut ranked: Vec<(&str, f64)> = rows
                .iter()
                .filter_map(|r| value(r).map(|v| (r.0.as_str(), v)))
                .collect();
            ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
            ranked
                .iter()
                .take(LEADERBOARD_SIZE)
                .map(|(id, value)| json!({"member_id": id, "value": value}))
                .collect::<Vec<_>>()
        };
        let summary = json!({
            "studio_id": studio_id,
            "class_id": class_id,
            "final": true,
            "members": self.members.len(),
            "events": counts(&totals.counts),
            "first_event": utc_rfc3339(first_ms),
            "last_event": utc_rfc3339(self.last_ms),
            "hr_samples": totals.bpm.n,
            "hr_avg": totals.bpm.mean(),
            "zone_seconds": totals.zone_seconds,
            "effort_points": totals.effort,
            "distance_m": totals.distance,
            "calories": totals.calories,
            "calories_hr": totals.calories_hr,
            "trimp": totals.trimp,
            "work_kj": totals.work_kj,
            "sets": totals.sets,
            "reps_total": totals.reps,
            "volume_kg": totals.volume,
            "leaderboard_effort": board(&|r| Some(r.1)),
            "leaderboard_work": board(&|r| r.2),
            "leaderboard_treadmill": board(&|r| r.3[0]),
            "leaderboard_rower": board(&|r| r.3[1]),
            "leaderboard_bike": board(&|r| r.3[2]),
            "leaderboard_hidden": hidden,
        });
        let minutes = self
            .minutes
            .iter()
            .map(|(start, minute)| {
                let gained: f64 = self
                    .members
                    .values()
                    .flat_map(|m| m.machines.values())
                    .map(|x| x.gained_in(*start))
                    .sum();
                json!({
                    "studio_id": studio_id,
                    "class_id": class_id,
                    "minute": utc_rfc3339(*start),
                    "final": true,
                    "events": minute.events,
                    "members_active": minute.members.len(),
                    "hr_avg": minute.bpm.mean(),
                    "distance_m": gained,
                })
            })
            .collect();
        Some(ClassExpectation {
            summary,
            members,
            minutes,
        })
    }
}

/// Chains a machine's reading (the caller adds them in time order): the capped gap to the
/// previous one, and watts times it.
fn add_timed(m: &mut Machine, time_ms: i64, watts: Option<f64>, rules: &Rules) {
    let gap = m
        .last_ms
        .map_or(0, |last| (time_ms - last).min(rules.hr_max_gap_ms));
    m.last_ms = Some(time_ms);
    m.moving_ms += gap;
    m.joules += watts.unwrap_or(0.0) * gap as f64 / 1_000.0;
}

fn add_cumulative(m: &mut Machine, minute_ms: i64, distance: f64, calories: f64) {
    m.n += 1;
    m.distance.add(distance);
    m.calories.add(calories);
    let range = m.minutes.entry(minute_ms).or_insert((distance, distance));
    range.0 = range.0.min(distance);
    range.1 = range.1.max(distance);
}

fn counts(c: &[u64; 5]) -> Value {
    json!({
        "heart_rate": c[0], "treadmill": c[1], "rower": c[2], "bike": c[3], "free_weights": c[4],
    })
}

#[derive(Default)]
struct Totals {
    counts: [u64; 5],
    bpm: Stat,
    zone_seconds: [f64; 5],
    effort: f64,
    distance: f64,
    calories: f64,
    calories_hr: f64,
    trimp: f64,
    work_kj: f64,
    sets: u64,
    reps: u64,
    volume: f64,
}

impl Totals {
    fn add(&mut self, m: &Member, zone_seconds: &[f64], effort: f64, distance: f64, calories: f64) {
        for (t, c) in self.counts.iter_mut().zip(m.counts) {
            *t += c;
        }
        if m.bpm.n > 0 {
            if self.bpm.n == 0 {
                self.bpm = m.bpm;
            } else {
                self.bpm.n += m.bpm.n;
                self.bpm.sum += m.bpm.sum;
            }
        }
        for (t, s) in self.zone_seconds.iter_mut().zip(zone_seconds) {
            *t += s;
        }
        self.effort += effort;
        self.distance += distance;
        self.calories += calories;
        self.sets += m.sets;
        self.reps += m.reps;
        self.volume += m.volume;
    }
}

/// Differences between an expected and an actual JSON value, as `path: expected X, got Y`.
/// Numbers match within a relative 1e-9 (sums in another order round differently); a field
/// missing on one side and null on the other match (absent options).
pub fn diff(path: &str, expected: &Value, actual: &Value, out: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Number(e), Value::Number(a)) => {
            let (e, a) = (
                e.as_f64().unwrap_or(f64::NAN),
                a.as_f64().unwrap_or(f64::NAN),
            );
            if (e - a).abs() > 1e-9 * e.abs().max(a.abs()).max(1.0) {
                out.push(format!("{path}: expected {e}, got {a}"));
            }
        }
        (Value::Object(e), Value::Object(a)) => {
            for (key, value) in e {
                let other = a.get(key).unwrap_or(&Value::Null);
                diff(&format!("{path}.{key}"), value, other, out);
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                out.push(format!(
                    "{path}: expected {} entries, got {}",
                    e.len(),
                    a.len()
                ));
            }
            for (i, (x, y)) in e.iter().zip(a).enumerate() {
                diff(&format!("{path}[{i}]"), x, y, out);
            }
        }
        (e, a) if e == a => {}
        (e, a) => out.push(format!("{path}: expected {e}, got {a}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules = Rules {
        hr_max_bpm: 190.0,
        hr_max_gap_ms: 5_000,
        hr_max_raise_after_ms: 30_000,
    };

    fn hr(acc: &mut ClassAcc, member: &str, time_ms: i64, bpm: f64) {
        acc.add(
            member,
            Kind::HeartRate,
            time_ms,
            &Reading::HeartRate { bpm },
            &RULES,
        );
    }

    #[test]
    fn zones_count_capped_gaps_from_the_second_sample() {
        let mut acc = ClassAcc::default();
        // zone 5 at 0 (counts 0), zone 5 after 4 s, zone 4 after 60 s (5 s), zone 1 after 2 s.
        hr(&mut acc, "a", 0, 180.0);
        hr(&mut acc, "a", 4_000, 175.0);
        hr(&mut acc, "a", 64_000, 160.0);
        hr(&mut acc, "a", 66_000, 100.0);
        // 94 bpm is under 50%: no zone; 114 is exactly 60%: zone 2.
        hr(&mut acc, "a", 70_000, 94.0);
        hr(&mut acc, "a", 74_000, 114.0);
        let result = acc.result("s", "c", &RULES).unwrap();
        assert_eq!(
            result.members[0]["zone_seconds"],
            json!([2.0, 4.0, 0.0, 5.0, 4.0])
        );
        // (5 s + 2 x 4 s) / 60 = 0.216 min -> 0.2
        assert_eq!(result.members[0]["effort_points"], json!(0.2));
        assert_eq!(result.summary["hr_samples"], json!(6));
        assert_eq!(result.minutes.len(), 2);
    }

    fn profile(birth_year: i32, hr_max: Option<(f64, &'static str)>) -> Profile {
        Profile {
            birth_year,
            female: true,
            weight_kg: 60.0,
            resting_hr: None,
            hr_max,
            leaderboard: true,
        }
    }

    #[test]
    fn a_member_s_maximum_is_theirs_then_tanaka_then_the_default() {
        assert_eq!(
            member_max(Some(&profile(1980, Some((177.0, "measured")))), 2026, 190.0),
            (177, "measured")
        );
        // 65 years: 208 - 45.5 = 162.5, halves up.
        assert_eq!(
            member_max(Some(&profile(1961, None)), 2026, 190.0),
            (163, "formula")
        );
        assert_eq!(
            member_max(Some(&profile(1986, None)), 2026, 190.0),
            (180, "formula")
        );
        assert_eq!(member_max(None, 2026, 190.0), (190, "default"));
    }

    #[test]
    fn zones_and_percentages_are_of_the_member_s_maximum_and_a_held_rate_raises_it() {
        let off_boards = Profile {
            leaderboard: false,
            ..profile(1990, Some((163.0, "manual")))
        };
        let mut acc = ClassAcc::seated([
            (
                "old".to_owned(),
                (163, "formula"),
                Some(profile(1961, None)),
            ),
            ("hand".to_owned(), (163, "manual"), Some(off_boards)),
        ]);
        // 170 bpm for 40 s, every 4 s: above 163 for more than 30 s.
        for member in ["old", "hand"] {
            for (i, bpm) in [
                170.0, 171.0, 169.0, 172.0, 170.0, 168.0, 175.0, 170.0, 171.0, 170.0, 170.0,
            ]
            .into_iter()
            .enumerate()
            {
                hr(&mut acc, member, i as i64 * 4_000, bpm);
            }
        }
        let result = acc.result("s", "c", &RULES).unwrap();
        let old = &result.members[1];
        assert_eq!(old["member_id"], json!("old"));
        // 168 over 163 is 103.1%: every sample in zone 5.
        assert_eq!(old["zone_seconds"], json!([0.0, 0.0, 0.0, 0.0, 40.0]));
        assert_eq!(old["hr_pct_peak"], json!(107.4));
        // The lowest of the shortest 30 s runs, at best: samples 4 s apart, 8 of them span 28 s,
        // so 9 (32 s): the best of those is 168 (and 169 from index 2 to 10 has 168 in it).
        assert_eq!(old["hr_max_observed"], json!(168));
        // Set by hand: never raised; off the leaderboards.
        let hand = &result.members[0];
        assert_eq!(hand["hr_max_observed"], Value::Null);
        let board = result.summary["leaderboard_effort"].as_array().unwrap();
        assert_eq!(board.len(), 1);
        assert_eq!(board[0]["member_id"], json!("old"));
        assert_eq!(result.summary["leaderboard_hidden"], json!(1));
        assert_eq!(hand["leaderboard"], json!(false));
        // A gap longer than 5 s breaks the run.
        let samples: Vec<(i64, u16)> = (0..8).map(|i| (i * 6_000, 180)).collect();
        assert_eq!(sustained(&samples, 5_000, 30_000), None);
        let samples: Vec<(i64, u16)> = (0..8).map(|i| (i * 5_000, 180)).collect();
        assert_eq!(sustained(&samples, 5_000, 30_000), Some(180));
    }

    #[test]
    fn minute_distances_add_up_to_the_class_distance() {
        let mut acc = ClassAcc::default();
        for (t, d) in [
            (10_000, 5.0),
            (50_000, 20.0),
            (70_000, 31.0),
            (130_000, 40.5),
        ] {
            let reading = Reading::Bike {
                cadence: 80.0,
                watts: 200.0,
                distance: d,
                calories: d / 10.0,
            };
            acc.add("a", Kind::Bike, t, &reading, &RULES);
        }
        let result = acc.result("s", "c", &RULES).unwrap();
        let gained: f64 = result
            .minutes
            .iter()
            .map(|m| m["distance_m"].as_f64().unwrap())
            .sum();
        assert_eq!(gained, 35.5);
        assert_eq!(result.summary["distance_m"], json!(35.5));
        assert_eq!(result.members[0]["bike"]["max_watts"], json!(200.0));
    }

    #[test]
    fn leaderboards_rank_by_value_then_member() {
        let mut acc = ClassAcc::default();
        for member in ["c", "b", "a"] {
            let reading = Reading::Weights {
                exercise: "squat",
                reps: 10,
                weight: 20.0,
            };
            acc.add(member, Kind::FreeWeights, 0, &reading, &RULES);
        }
        let result = acc.result("s", "c", &RULES).unwrap();
        let board: Vec<&str> = result.summary["leaderboard_effort"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["member_id"].as_str().unwrap())
            .collect();
        assert_eq!(board, ["a", "b", "c"]);
        assert_eq!(result.summary["volume_kg"], json!(600.0));
    }

    #[test]
    fn diff_names_the_path_and_tolerates_summation_order() {
        let mut out = Vec::new();
        diff(
            "x",
            &json!({"a": [1.0, 2.0], "b": null}),
            &json!({"a": [1.0 + 1e-13, 3.0]}),
            &mut out,
        );
        assert_eq!(out, ["x.a[1]: expected 2, got 3"]);
    }
}
