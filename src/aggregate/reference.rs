//! A straightforward batch computation of the aggregate definitions, written independently of
//! the streaming code, and property tests that the streaming stage (shuffled arrival within
//! the lateness bound, duplicates, compaction at random points, a checkpoint round trip in
//! the middle) gives the same results.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::Value;

use super::energy::plus_zero_sum;
use super::heart::{Formula, HeartModel, HrMaxSource, ZoneBasis};
use super::output::{
    CardioSummary, ClassMinute, ClassResult, ClassSummary, Leader, MemberSummary, Outgoing,
    Positions, TypeCounts,
};
use super::partition::PartitionState;
use super::Rules;
use crate::event::{EventType, Metrics, PerformanceEvent, Verdict};
use crate::profile::{Profile, SetBy, Sex};
use chrono::Datelike;

const PARTITION: &str = "test/0";

/// The results of one class from its events, in arrival order (first copy of an id counts),
/// for members without a profile.
pub fn batch_result(arrivals: &[PerformanceEvent], rules: &Rules) -> ClassResult {
    batch_result_with(arrivals, rules, &BTreeMap::new())
}

/// A member's maximum in use and its source, from the rules as the docs state them.
fn reference_max(profile: Option<&Profile>, year: i32, rules: &Rules) -> (u16, HrMaxSource) {
    let model = &rules.heart;
    match profile {
        Some(Profile {
            hr_max: Some((bpm, set_by)),
            ..
        }) => (
            *bpm,
            match set_by {
                SetBy::Manual => HrMaxSource::Manual,
                SetBy::Measured => HrMaxSource::Measured,
            },
        ),
        Some(Profile {
            hr_max_observed: Some(bpm),
            ..
        }) => (*bpm, HrMaxSource::Observed),
        Some(Profile {
            birth_year: Some(born),
            ..
        }) => {
            let age = i64::from(year - i32::from(*born));
            // Tenths of a bpm for Tanaka, Gellish and Fox; hundredths for Nes.
            let (value, unit) = match model.formula {
                Formula::Tanaka => (2080 - 7 * age, 10),
                Formula::Gellish => (2070 - 7 * age, 10),
                Formula::Nes => (21_100 - 64 * age, 100),
                Formula::Fox => (220 - age, 1),
            };
            let rounded = (value * 2 + unit) / (2 * unit);
            (rounded as u16, HrMaxSource::Formula)
        }
        _ => (model.default_max_bpm, HrMaxSource::Default),
    }
}

/// The highest, over every stretch of at least the raise time with no gap over the
/// sample gap, of the stretch's lowest sample (by brute force).
fn reference_sustained(samples: &[(i64, f64)], rules: &Rules) -> Option<u16> {
    let mut best: Option<u16> = None;
    for i in 0..samples.len() {
        let mut lowest = f64::MAX;
        for j in i..samples.len() {
            if j > i && samples[j].0 - samples[j - 1].0 > rules.hr_max_gap_ms {
                break;
            }
            lowest = lowest.min(samples[j].1);
            if samples[j].0 - samples[i].0 >= rules.heart.raise_after_ms {
                let whole = (lowest + 0.5).floor() as u16;
                best = best.max(Some(whole));
            }
        }
    }
    best
}

/// The results of one class, each member with the profile `profiles` gives them (absent:
/// none arrived).
pub fn batch_result_with(
    arrivals: &[PerformanceEvent],
    rules: &Rules,
    profiles: &BTreeMap<String, Profile>,
) -> ClassResult {
    let mut ids = HashSet::new();
    let events: Vec<&PerformanceEvent> = arrivals
        .iter()
        .filter(|e| ids.insert(e.event_id.clone()))
        .collect();
    let first = events[0];
    let mut by_member: BTreeMap<&str, Vec<&PerformanceEvent>> = BTreeMap::new();
    for event in &events {
        by_member.entry(&event.member_id).or_default().push(event);
    }
    let mean = |values: &[f64]| {
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    let max = |values: &[f64]| values.iter().copied().reduce(f64::max);
    let min = |values: &[f64]| values.iter().copied().reduce(f64::min);
    let span = |values: &[f64]| max(values).unwrap_or(0.0) - min(values).unwrap_or(0.0);

    let mut members = Vec::new();
    for (member_id, events) in &by_member {
        let mut counts = [0u64; 5];
        for e in events {
            counts[EventType::ALL
                .iter()
                .position(|t| *t == e.event_type)
                .unwrap()] += 1;
        }
        // Ties in time are broken by the xxh3-128 hash of the event id.
        let mut hr: Vec<(i64, u128, f64)> = events
            .iter()
            .filter(|e| e.event_type == EventType::HeartRate)
            .map(|e| {
                (
                    e.event_time_ms,
                    crate::event::fingerprint(&e.event_id),
                    e.metrics.bpm.unwrap(),
                )
            })
            .collect();
        hr.sort_by_key(|sample| (sample.0, sample.1));
        let year = chrono::DateTime::from_timestamp_millis(
            events.iter().map(|e| e.event_time_ms).min().unwrap(),
        )
        .unwrap()
        .year();
        let profile = profiles.get(*member_id);
        let (hr_max, source) = reference_max(profile, year, rules);
        let resting = profile
            .and_then(|p| p.resting_hr)
            .filter(|r| rules.heart.basis == ZoneBasis::Reserve && *r < hr_max);
        let percent_of_zone = |bpm: f64| {
            let whole = (bpm + 0.5).floor();
            match resting {
                Some(r) => (whole - f64::from(r)) * 100.0 / f64::from(hr_max - r),
                None => whole * 100.0 / f64::from(hr_max),
            }
        };
        let zone_of = |bpm: f64| {
            let p = percent_of_zone(bpm);
            (0..5)
                .rev()
                .find(|z| p >= f64::from(rules.heart.zone_tenths[*z]) / 10.0)
        };
        // Keytel et al. (2005) in kJ a minute, and Banister's TRIMP weighting, as published.
        let age = profile
            .and_then(|p| p.birth_year)
            .map(|born| f64::from(year - i32::from(born)));
        let keytel = match (
            profile.and_then(|p| p.sex),
            profile.and_then(|p| p.weight_kg),
            age,
        ) {
            (Some(sex), Some(weight), Some(age)) => Some(move |hr: f64| match sex {
                Sex::Male => -55.0969 + 0.6309 * hr + 0.1988 * weight + 0.2017 * age,
                Sex::Female => -20.4022 + 0.4472 * hr - 0.1263 * weight + 0.074 * age,
            }),
            _ => None,
        };
        let banister = match (
            profile.and_then(|p| p.sex),
            profile.and_then(|p| p.resting_hr),
        ) {
            (Some(sex), Some(rest)) if rest < hr_max => Some(move |hr: f64| {
                let x = ((hr - f64::from(rest)) / f64::from(hr_max - rest)).clamp(0.0, 1.0);
                match sex {
                    Sex::Male => x * 0.64 * (1.92 * x).exp(),
                    Sex::Female => x * 0.86 * (1.67 * x).exp(),
                }
            }),
            _ => None,
        };
        let mut zone_ms = [0i64; 5];
        let (mut calories_hr, mut trimp) = (0.0, 0.0);
        for (i, (time, _, bpm)) in hr.iter().enumerate() {
            let duration = if i == 0 {
                0
            } else {
                (time - hr[i - 1].0).min(rules.hr_max_gap_ms)
            };
            let minutes = duration as f64 / 60_000.0;
            let whole = (bpm + 0.5).floor();
            if let Some(zone) = zone_of(*bpm) {
                zone_ms[zone] += duration;
                if let Some(keytel) = keytel {
                    calories_hr += (keytel(whole) / 4.184).max(0.0) * minutes;
                }
            }
            if let Some(banister) = banister {
                trimp += banister(whole) * minutes;
            }
        }
        let points: f64 = (0..5)
            .map(|z| {
                f64::from(rules.heart.effort_hundredths[z]) / 100.0 * zone_ms[z] as f64 / 60_000.0
            })
            .sum();
        let effort = ((points * 10.0) + 1e-9).floor() / 10.0;
        let samples: Vec<(i64, f64)> = hr.iter().map(|(t, _, b)| (*t, *b)).collect();
        let observed = match source {
            HrMaxSource::Manual | HrMaxSource::Measured => None,
            _ => reference_sustained(&samples, rules)
                .filter(|best| *best > hr_max)
                .map(|best| best.min(hr_max + 10)),
        };
        let pct = |bpm: f64| (bpm * 1000.0 / f64::from(hr_max)).round() / 10.0;
        let bpms: Vec<f64> = hr.iter().map(|s| s.2).collect();
        let cardio = |t: EventType| {
            let of: Vec<&Metrics> = events
                .iter()
                .filter(|e| e.event_type == t)
                .map(|e| &e.metrics)
                .collect();
            if of.is_empty() {
                return None;
            }
            let values = |f: fn(&Metrics) -> Option<f64>| {
                of.iter().filter_map(|m| f(m)).collect::<Vec<f64>>()
            };
            // Readings in time order (ties by the id's hash), each counting the capped gap to
            // the one before it: moving time, and watts times it as work.
            let mut chain: Vec<(i64, u128, Option<f64>)> = events
                .iter()
                .filter(|e| e.event_type == t)
                .map(|e| {
                    (
                        e.event_time_ms,
                        crate::event::fingerprint(&e.event_id),
                        e.metrics.watts,
                    )
                })
                .collect();
            chain.sort_by_key(|reading| (reading.0, reading.1));
            let (mut joules, mut moving_ms) = (0.0, 0i64);
            for pair in chain.windows(2) {
                let gap = (pair[1].0 - pair[0].0).min(rules.hr_max_gap_ms);
                moving_ms += gap;
                joules += pair[1].2.unwrap_or(0.0) * gap as f64 / 1_000.0;
            }
            let distance_m = span(&values(|m| m.distance_m));
            let powered = !values(|m| m.watts).is_empty();
            Some(CardioSummary {
                events: of.len() as u64,
                distance_m: span(&values(|m| m.distance_m)),
                calories: span(&values(|m| m.calories)),
                avg_speed_kph: mean(&values(|m| m.speed_kph)),
                max_speed_kph: max(&values(|m| m.speed_kph)),
                avg_watts: mean(&values(|m| m.watts)),
                max_watts: max(&values(|m| m.watts)),
                avg_cadence_rpm: mean(&values(|m| m.cadence_rpm)),
                max_cadence_rpm: max(&values(|m| m.cadence_rpm)),
                avg_stroke_rate_spm: mean(&values(|m| m.stroke_rate_spm)),
                max_stroke_rate_spm: max(&values(|m| m.stroke_rate_spm)),
                work_kj: powered.then_some(joules / 1_000.0),
                split_500m_s: (t == EventType::Rower && distance_m > 0.0 && moving_ms > 0)
                    .then(|| moving_ms as f64 / 1_000.0 * 500.0 / distance_m),
            })
        };
        let (treadmill, rower, bike) = (
            cardio(EventType::Treadmill),
            cardio(EventType::Rower),
            cardio(EventType::Bike),
        );
        let machines = [&treadmill, &rower, &bike];
        let sets: Vec<&&PerformanceEvent> = events
            .iter()
            .filter(|e| e.event_type == EventType::FreeWeights)
            .collect();
        members.push(MemberSummary {
            studio_id: first.studio_id.as_ref().into(),
            class_id: first.class_id.as_ref().into(),
            member_id: (*member_id).into(),
            alias: profile.and_then(|p| p.alias.clone()),
            is_final: true,
            events: TypeCounts::from_array(counts),
            hr_samples: bpms.len() as u64,
            hr_min: min(&bpms),
            hr_max: max(&bpms),
            hr_avg: mean(&bpms),
            hr_max_used: Some(hr_max),
            hr_max_source: Some(source),
            hr_max_observed: observed,
            zone_basis: Some(if resting.is_some() {
                ZoneBasis::Reserve
            } else {
                ZoneBasis::Max
            }),
            hr_pct_avg: mean(&bpms).map(pct),
            hr_pct_peak: max(&bpms).map(pct),
            hr_current: None,
            hr_pct_current: None,
            zone_current: None,
            zone_seconds: zone_ms.map(|ms| ms as f64 / 1000.0),
            effort_points: effort,
            distance_m: machines
                .iter()
                .filter_map(|m| m.as_ref())
                .map(|m| m.distance_m)
                .sum(),
            calories: machines
                .iter()
                .filter_map(|m| m.as_ref())
                .map(|m| m.calories)
                .sum(),
            calories_hr: keytel.map(|_| calories_hr),
            trimp: banister.map(|_| trimp),
            work_kj: [&rower, &bike]
                .iter()
                .filter_map(|m| m.as_ref().and_then(|m| m.work_kj))
                .reduce(|a, b| a + b),
            profile_missing: [
                ("birth_year", profile.is_none_or(|p| p.birth_year.is_none())),
                ("sex", profile.is_none_or(|p| p.sex.is_none())),
                ("weight_kg", profile.is_none_or(|p| p.weight_kg.is_none())),
                ("resting_hr", profile.is_none_or(|p| p.resting_hr.is_none())),
            ]
            .into_iter()
            .filter(|(_, missing)| *missing)
            .map(|(name, _)| name.into())
            .collect(),
            leaderboard: profile.is_none_or(|p| p.leaderboard),
            treadmill: treadmill.clone(),
            rower: rower.clone(),
            bike: bike.clone(),
            sets: sets.len() as u64,
            reps_total: sets
                .iter()
                .map(|e| u64::from(e.metrics.reps.unwrap()))
                .sum(),
            volume_kg: sets
                .iter()
                .map(|e| f64::from(e.metrics.reps.unwrap()) * e.metrics.weight_kg.unwrap())
                .sum(),
        });
    }

    // Minutes: distance gained = this minute's largest reading minus the largest before it.
    let minute_of = |t: i64| t.div_euclid(60_000) * 60_000;
    let minute_starts: BTreeSet<i64> = events.iter().map(|e| minute_of(e.event_time_ms)).collect();
    let minutes = minute_starts
        .iter()
        .map(|start| {
            let here: Vec<&&PerformanceEvent> = events
                .iter()
                .filter(|e| minute_of(e.event_time_ms) == *start)
                .collect();
            let bpms: Vec<f64> = here.iter().filter_map(|e| e.metrics.bpm).collect();
            let mut distance = 0.0;
            for (member, of_member) in &by_member {
                let _ = member;
                for t in [EventType::Treadmill, EventType::Rower, EventType::Bike] {
                    let readings = |pick: &dyn Fn(i64) -> bool| -> Vec<f64> {
                        of_member
                            .iter()
                            .filter(|e| e.event_type == t && pick(minute_of(e.event_time_ms)))
                            .filter_map(|e| e.metrics.distance_m)
                            .collect()
                    };
                    let now = readings(&|m| m == *start);
                    if now.is_empty() {
                        continue;
                    }
                    let before = max(&readings(&|m| m < *start));
                    distance +=
                        (max(&now).unwrap() - before.unwrap_or(min(&now).unwrap())).max(0.0);
                }
            }
            ClassMinute {
                studio_id: first.studio_id.as_ref().into(),
                class_id: first.class_id.as_ref().into(),
                minute_start_ms: *start,
                is_final: true,
                events: here.len() as u64,
                members_active: here
                    .iter()
                    .map(|e| &e.member_id)
                    .collect::<BTreeSet<_>>()
                    .len() as u64,
                hr_avg: mean(&bpms),
                distance_m: distance,
            }
        })
        .collect();

    // The top five by each value (the default size), ties by member id, members who keep
    // off leaderboards left out; a machine's board only of those who used it.
    let leaders = |value: &dyn Fn(&MemberSummary) -> Option<f64>| {
        let mut ranked: Vec<(&MemberSummary, f64)> = members
            .iter()
            .filter(|m| profiles.get(&*m.member_id).is_none_or(|p| p.leaderboard))
            .filter_map(|m| value(m).map(|v| (m, v)))
            .collect();
        ranked.sort_by(|a, b| {
            b.1.partial_cmp(&a.1)
                .unwrap()
                .then(a.0.member_id.cmp(&b.0.member_id))
        });
        ranked
            .into_iter()
            .take(rules.leaderboard_size)
            .map(|(m, value)| Leader {
                member_id: m.alias.is_none().then(|| m.member_id.clone()),
                alias: m.alias.clone(),
                value,
            })
            .collect::<Vec<Leader>>()
    };
    let all_bpm: Vec<f64> = events.iter().filter_map(|e| e.metrics.bpm).collect();
    let mut counts = [0u64; 5];
    for e in &events {
        counts[EventType::ALL
            .iter()
            .position(|t| *t == e.event_type)
            .unwrap()] += 1;
    }
    let summary = ClassSummary {
        studio_id: first.studio_id.as_ref().into(),
        class_id: first.class_id.as_ref().into(),
        is_final: true,
        members: members.len() as u64,
        events: TypeCounts::from_array(counts),
        first_event_ms: events.iter().map(|e| e.event_time_ms).min().unwrap(),
        last_event_ms: events.iter().map(|e| e.event_time_ms).max().unwrap(),
        hr_samples: all_bpm.len() as u64,
        hr_avg: mean(&all_bpm),
        zone_seconds: members.iter().fold([0.0; 5], |mut acc, m| {
            for (a, s) in acc.iter_mut().zip(m.zone_seconds) {
                *a += s;
            }
            acc
        }),
        effort_points: members.iter().map(|m| m.effort_points).sum(),
        distance_m: members.iter().map(|m| m.distance_m).sum(),
        calories: members.iter().map(|m| m.calories).sum(),
        calories_hr: plus_zero_sum(members.iter().filter_map(|m| m.calories_hr)),
        trimp: plus_zero_sum(members.iter().filter_map(|m| m.trimp)),
        work_kj: plus_zero_sum(members.iter().filter_map(|m| m.work_kj)),
        sets: members.iter().map(|m| m.sets).sum(),
        reps_total: members.iter().map(|m| m.reps_total).sum(),
        volume_kg: members.iter().map(|m| m.volume_kg).sum(),
        leaderboard_effort: leaders(&|m| Some(m.effort_points)),
        leaderboard_work: leaders(&|m| m.work_kj),
        leaderboard_treadmill: leaders(&|m| m.treadmill.as_ref().map(|c| c.distance_m)),
        leaderboard_rower: leaders(&|m| m.rower.as_ref().map(|c| c.distance_m)),
        leaderboard_bike: leaders(&|m| m.bike.as_ref().map(|c| c.distance_m)),
        leaderboard_hidden: profiles
            .iter()
            .filter(|(id, p)| !p.leaderboard && by_member.contains_key(id.as_str()))
            .count() as u64,
        leaderboard_distance: None,
        positions: Positions {
            partition: PARTITION.into(),
            first_offset: events.iter().map(|e| e.offset).min().unwrap(),
            last_offset: events.iter().map(|e| e.offset).max().unwrap(),
        },
    };
    ClassResult {
        summary,
        members,
        minutes,
    }
}

/// Asserts two JSON values are equal, numbers to a relative 1e-9 (sums in another order).
pub fn assert_close(actual: &Value, expected: &Value, path: &str) {
    match (actual, expected) {
        (Value::Number(a), Value::Number(b)) => {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!(
                (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0),
                "{path}: {a} != {b}"
            );
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{path}: lengths");
            for (i, (a, b)) in a.iter().zip(b).enumerate() {
                assert_close(a, b, &format!("{path}[{i}]"));
            }
        }
        (Value::Object(a), Value::Object(b)) => {
            let keys_a: Vec<_> = a.keys().collect();
            let keys_b: Vec<_> = b.keys().collect();
            assert_eq!(keys_a, keys_b, "{path}: keys");
            for (key, value) in a {
                assert_close(value, &b[key], &format!("{path}.{key}"));
            }
        }
        _ => assert_eq!(actual, expected, "{path}"),
    }
}

/// A test event.
pub fn event(
    id: &str,
    member: &str,
    time_ms: i64,
    event_type: EventType,
    metrics: Metrics,
    offset: u64,
) -> PerformanceEvent {
    PerformanceEvent {
        event_id: id.into(),
        event_type,
        event_time_ms: time_ms,
        studio_id: Arc::from("studio-1"),
        class_id: Arc::from("class-1"),
        member_id: member.into(),
        device_id: None,
        schema_version: 1,
        metrics,
        event_data: crate::event::RawJson::from_string("{}".into()).unwrap(),
        offset,
        arrival_ms: time_ms,
        verdict: Verdict::Counted,
    }
}

/// One member's machine and readings: (event time, bpm, cumulative distance, reps) per step.
type MemberReadings = (EventType, Vec<(i64, f64, f64, u32)>);

/// A member's profile: none of the fields the heart model reads, a birth year, a maximum set
/// by hand or measured, an observed maximum; a resting rate, a sex, a weight, an alias and a
/// place on leaderboards, each there or not.
fn profile() -> impl Strategy<Value = Profile> {
    let sex = prop::option::of(prop_oneof![Just(Sex::Female), Just(Sex::Male)]);
    (
        (0u8..5, 1940u16..2010, any::<bool>()),
        150u16..200,
        prop::option::of(40u16..80),
        (sex, prop::option::of(45.0f64..120.0)),
        prop::option::of("[A-Z][a-z]{2,6}"),
        any::<bool>(),
    )
        .prop_map(
            |((kind, born, with_birth), hr_max, resting, (sex, weight_kg), alias, leaderboard)| {
                Profile {
                    birth_year: (kind == 1 || kind == 4 || (kind > 0 && with_birth))
                        .then_some(born),
                    hr_max: match kind {
                        2 => Some((hr_max, SetBy::Manual)),
                        3 => Some((hr_max, SetBy::Measured)),
                        _ => None,
                    },
                    hr_max_observed: (kind == 4).then_some(hr_max),
                    resting_hr: resting,
                    sex,
                    weight_kg,
                    alias: alias.map(Into::into),
                    leaderboard,
                }
            },
        )
}

/// A heart model: formula, zone bounds, basis and effort weights drawn from the settings.
fn heart_model() -> impl Strategy<Value = HeartModel> {
    let formula = prop_oneof![
        Just(Formula::Tanaka),
        Just(Formula::Gellish),
        Just(Formula::Nes),
        Just(Formula::Fox)
    ];
    let basis = prop_oneof![Just(ZoneBasis::Max), Just(ZoneBasis::Reserve)];
    let zones = prop_oneof![
        Just([500u16, 600, 700, 800, 900]),
        Just([500, 610, 710, 840, 920]),
        Just([455, 555, 655, 755, 855])
    ];
    let weights = prop_oneof![
        Just([0u32, 0, 0, 100, 200]),
        Just([100, 200, 300, 400, 400]),
        Just([0, 0, 0, 100, 100]),
        Just([25, 50, 75, 125, 150])
    ];
    (formula, basis, zones, weights, 150u16..200).prop_map(
        |(formula, basis, zone_tenths, effort_hundredths, default_max_bpm)| HeartModel {
            default_max_bpm,
            formula,
            zone_tenths,
            basis,
            effort_hundredths,
            // Short, so that generated classes sustain stretches above a maximum.
            raise_after_ms: 10_000,
        },
    )
}

/// One member's readings: a heart-rate sample and a machine reading at each step.
fn member_events() -> impl Strategy<Value = MemberReadings> {
    let machine = prop_oneof![
        Just(EventType::Treadmill),
        Just(EventType::Rower),
        Just(EventType::Bike),
        Just(EventType::FreeWeights),
    ];
    // (gap to previous ms, bpm, distance gained, reps)
    let steps = prop::collection::vec((0i64..9_000, 0u32..40, 0.0f64..40.0, 1u32..20), 1..60);
    // Each member's heart runs in a band of 40 bpm somewhere from 80 to 210.
    (machine, 80u32..170, steps).prop_map(|(machine, low, steps)| {
        let mut time = 1_700_000_000_000i64;
        let mut distance = 0.0;
        let readings = steps
            .into_iter()
            .map(|(gap, above, gained, reps)| {
                time += gap;
                distance += gained;
                (time, f64::from(low + above), distance, reps)
            })
            .collect();
        (machine, readings)
    })
}

fn class_events(members: Vec<MemberReadings>) -> Vec<PerformanceEvent> {
    let mut events = Vec::new();
    for (m, (machine, readings)) in members.into_iter().enumerate() {
        let member = format!("member-{m}");
        for (i, (time, bpm, distance, reps)) in readings.into_iter().enumerate() {
            let id = format!("{member}-hr-{i}");
            events.push(event(
                &id,
                &member,
                time,
                EventType::HeartRate,
                Metrics {
                    bpm: Some(bpm),
                    ..Metrics::default()
                },
                0,
            ));
            let metrics = match machine {
                EventType::FreeWeights => Metrics {
                    exercise: Some("squat".into()),
                    reps: Some(reps),
                    weight_kg: Some(bpm / 4.0),
                    ..Metrics::default()
                },
                EventType::Treadmill => Metrics {
                    speed_kph: Some(bpm / 20.0),
                    incline_pct: Some(1.0),
                    distance_m: Some(distance),
                    calories: Some(distance / 15.0),
                    ..Metrics::default()
                },
                EventType::Rower => Metrics {
                    stroke_rate_spm: Some(bpm / 6.0),
                    watts: Some(bpm),
                    distance_m: Some(distance),
                    calories: Some(distance / 12.0),
                    ..Metrics::default()
                },
                _ => Metrics {
                    cadence_rpm: Some(bpm / 2.0),
                    watts: Some(bpm * 1.5),
                    distance_m: Some(distance),
                    calories: Some(distance / 20.0),
                    ..Metrics::default()
                },
            };
            // Machines report a little after the strap, sometimes in the same millisecond.
            events.push(event(
                &format!("{member}-m-{i}"),
                &member,
                time + (i as i64 % 3) * 700,
                machine,
                metrics,
                0,
            ));
        }
    }
    events
}

fn to_json(result: &ClassResult) -> Value {
    serde_json::to_value(result).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Arrival shuffled within the lateness bound, with duplicates, in random batches with
    /// compaction between them and a checkpoint round trip: the same results as the batch
    /// computation.
    #[test]
    fn streaming_equals_batch(
        members in prop::collection::vec(member_events(), 1..5),
        jitter_seed in prop::collection::vec(0i64..1_000_000, 1..400),
        duplicate_every in 2usize..12,
        cuts in prop::collection::vec(1usize..80, 1..20),
        checkpoint_after in 0usize..20,
        profiles in prop::collection::vec((profile(), 0usize..24), 4),
        model in heart_model(),
    ) {
        let rules = Rules {
            allowed_lateness_ms: 20_000,
            watermark_delay_ms: 5_000,
            heart: model,
            ..Rules::default()
        };
        let bound = rules.allowed_lateness_ms + rules.watermark_delay_ms;
        let events = class_events(members);
        // Arrival key: event time plus a jitter below the lateness bound; every n-th event is
        // sent again later (still within the bound).
        let mut arrivals: Vec<(i64, usize, PerformanceEvent)> = Vec::new();
        for (i, e) in events.into_iter().enumerate() {
            let jitter = jitter_seed[i % jitter_seed.len()] % bound;
            if i % duplicate_every == 0 {
                let again = (jitter + bound / 3) % bound;
                arrivals.push((e.event_time_ms + again.max(jitter), arrivals.len(), e.clone()));
            }
            arrivals.push((e.event_time_ms + jitter, arrivals.len(), e));
        }
        arrivals.sort_by_key(|(key, order, _)| (*key, *order));
        let mut arrivals: Vec<PerformanceEvent> = arrivals.into_iter().map(|(_, _, e)| e).collect();
        for (offset, e) in arrivals.iter_mut().enumerate() {
            e.offset = offset as u64;
            e.arrival_ms = e.event_time_ms;
        }

        // Member m's profile arrives after batch `arrives_after` (later than the last batch:
        // never, and the member keeps the default), as the stage binds it: to members met
        // so far, then to each met later.
        let key = "studio-1:class-1";
        let mut bound = BTreeMap::new();
        let mut waiting: Vec<Box<str>> = Vec::new();
        let mut state = PartitionState::new(PARTITION.into());
        let mut start = 0;
        let mut verdicts = Vec::new();
        for (n, cut) in cuts.iter().cycle().enumerate() {
            if start >= arrivals.len() {
                break;
            }
            let end = (start + cut).min(arrivals.len());
            let mut batch = arrivals[start..end].to_vec();
            let (_, finalised) = state.apply(&mut batch, (end - 1) as u64, &rules, 0);
            waiting.extend(state.take_unbound().into_iter().map(|(_, member)| member));
            waiting.retain(|member| {
                let m: usize = member.trim_start_matches("member-").parse().unwrap();
                let (profile, arrives_after) = &profiles[m];
                if n < *arrives_after {
                    return true;
                }
                assert!(state.bind_profile(key, member, profile.clone()));
                bound.insert(member.to_string(), profile.clone());
                false
            });
            prop_assert!(finalised.is_empty());
            verdicts.extend(batch.iter().map(|e| e.verdict));
            prop_assert!(state.sweep(&rules, Some((0, 0))).is_empty());
            if n == checkpoint_after {
                state = PartitionState::decode(&state.encode(), 0).unwrap();
                let mut again: Vec<Box<str>> = state
                    .unbound_members()
                    .into_iter()
                    .map(|(_, member)| member)
                    .collect();
                again.sort();
                let mut expected_waiting = waiting.clone();
                expected_waiting.sort();
                prop_assert_eq!(again, expected_waiting, "a restore knows who waits");
            }
            start = end;
        }
        let expected = batch_result_with(&arrivals, &rules, &bound);
        prop_assert!(!verdicts.contains(&Verdict::Late));
        let duplicates = verdicts.iter().filter(|v| **v == Verdict::Duplicate).count();
        let distinct: HashSet<_> = arrivals.iter().map(|e| e.event_id.clone()).collect();
        prop_assert_eq!(duplicates, arrivals.len() - distinct.len());

        let live = state.live_results(&rules);
        prop_assert_eq!(live.len(), 1);
        let mut finals = state.finalise_all(&rules);
        prop_assert_eq!(finals.len(), 1);
        let actual = finals.pop().unwrap().result;
        assert_close(&to_json(&actual), &to_json(&expected), "result");
        // Live values before the end already equal the final ones but for the flag.
        let mut live = to_json(&live[0]);
        let mut final_json = to_json(&actual);
        for json in [&mut live, &mut final_json] {
            json["summary"]["final"] = Value::Null;
            for m in json["members"].as_array_mut().unwrap() {
                m["final"] = Value::Null;
                // What a class sustained counts at its end; "now" is for live values.
                let m = m.as_object_mut().unwrap();
                for field in ["hr_max_observed", "hr_current", "hr_pct_current", "zone_current"] {
                    m.remove(field);
                }
            }
            for m in json["minutes"].as_array_mut().unwrap() { m["final"] = Value::Null; }
        }
        assert_close(&live, &final_json, "live");
    }
}

/// Arrival order of `events`: event time plus a jitter under `bound`; every n-th event sent
/// again later, still within it.
fn jittered_arrivals(
    events: Vec<PerformanceEvent>,
    jitter_seed: &[i64],
    duplicate_every: usize,
    bound: i64,
    first_offset: u64,
) -> Vec<PerformanceEvent> {
    let mut arrivals: Vec<(i64, usize, PerformanceEvent)> = Vec::new();
    for (i, e) in events.into_iter().enumerate() {
        let jitter = jitter_seed[i % jitter_seed.len()] % bound;
        if i % duplicate_every == 0 {
            let again = (jitter + bound / 3) % bound;
            arrivals.push((
                e.event_time_ms + again.max(jitter),
                arrivals.len(),
                e.clone(),
            ));
        }
        arrivals.push((e.event_time_ms + jitter, arrivals.len(), e));
    }
    arrivals.sort_by_key(|(key, order, _)| (*key, *order));
    let mut arrivals: Vec<PerformanceEvent> = arrivals.into_iter().map(|(_, _, e)| e).collect();
    for (offset, e) in arrivals.iter_mut().enumerate() {
        e.offset = first_offset + offset as u64;
        e.arrival_ms = e.event_time_ms;
    }
    arrivals
}

/// Streams `arrivals` into `state` in batches cut by `cuts`, sweeping (compacting) after each.
fn stream_into(
    state: &mut PartitionState,
    arrivals: &[PerformanceEvent],
    cuts: &[usize],
    rules: &Rules,
) {
    let mut start = 0;
    for cut in cuts.iter().cycle() {
        if start >= arrivals.len() {
            break;
        }
        let end = (start + cut).min(arrivals.len());
        let mut batch = arrivals[start..end].to_vec();
        let last = batch.last().unwrap().offset;
        let (_, finalised) = state.apply(&mut batch, last, rules, 0);
        assert!(finalised.is_empty());
        assert!(batch.iter().all(|e| e.verdict != Verdict::Late));
        state.sweep(rules, Some((0, 0)));
        start = end;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// A class whose key moved to another partition part way (partitions were added): each
    /// part is counted on its own partition, reordered and duplicated within the lateness
    /// bound, compacted, its state round-tripped through a checkpoint; the visitor hands its
    /// part over and the home merges it. The result is the batch computation's over all the
    /// events, whether the home holds the earlier part or the later one (a home read behind).
    #[test]
    fn a_class_split_across_two_partitions_ends_with_the_batch_result(
        members in prop::collection::vec(member_events(), 1..5),
        split_permille in 1usize..1000,
        jitter_seed in prop::collection::vec(0i64..1_000_000, 1..200),
        duplicate_every in 2usize..12,
        cuts in prop::collection::vec(1usize..80, 1..10),
        home_is_earlier in any::<bool>(),
    ) {
        use super::directory::{Place, Role};
        let rules = Rules { allowed_lateness_ms: 20_000, watermark_delay_ms: 5_000, ..Rules::default() };
        let bound = rules.allowed_lateness_ms + rules.watermark_delay_ms;
        let mut events = class_events(members);
        events.sort_by_key(|e| e.event_time_ms);
        // Every device's events after the switch go to the new partition.
        let switch_ms = events[events.len() * split_permille / 1000].event_time_ms;
        let (earlier, later): (Vec<_>, Vec<_>) =
            events.into_iter().partition(|e| e.event_time_ms < switch_ms);
        prop_assume!(!earlier.is_empty() && !later.is_empty());
        let earlier = jittered_arrivals(earlier, &jitter_seed, duplicate_every, bound, 0);
        let later = jittered_arrivals(later, &jitter_seed[1..].iter().chain(&jitter_seed[..1]).copied().collect::<Vec<_>>(), duplicate_every + 1, bound, 0);
        let all: Vec<PerformanceEvent> = earlier.iter().chain(&later).cloned().collect();
        let expected = batch_result(&all, &rules);

        let (home_part, visitor_part) = if home_is_earlier { (&earlier, &later) } else { (&later, &earlier) };
        let key = format!("{}:{}", all[0].studio_id, all[0].class_id);
        let mut home = PartitionState::new("test/0".into());
        home.place = Some(Place::of("kafka", "test", 0));
        let mut visitor = PartitionState::new("test/1".into());
        visitor.place = Some(Place::of("kafka", "test", 1));
        visitor.roles.insert(key.clone(), Role::Visitor(0));
        stream_into(&mut home, home_part, &cuts, &rules);
        stream_into(&mut visitor, visitor_part, &cuts, &rules);
        let mut visitor = PartitionState::decode(&visitor.encode(), 0).unwrap();
        visitor.place = Some(Place::of("kafka", "test", 1));
        let mut home = PartitionState::decode(&home.encode(), 0).unwrap();
        home.place = Some(Place::of("kafka", "test", 0));

        // The visitor ends its part: it is handed over, not a result.
        prop_assert!(visitor.finalise_all(&rules).is_empty());
        prop_assert_eq!(visitor.take_handed_over(), 1);
        // The part, and the visitor's ids sealed for copies that still come to it.
        let Some(Outgoing::Ids { ids, .. }) = visitor.outbox.pop() else {
            panic!("the visitor's ids are sealed");
        };
        let distinct: HashSet<&str> = visitor_part.iter().map(|e| &*e.event_id).collect();
        prop_assert_eq!(ids.len(), distinct.len());
        let Some(Outgoing::Part { key: part_key, body }) = visitor.outbox.pop() else {
            panic!("the part is in the outbox");
        };
        prop_assert!(part_key.ends_with("/part-1.postcard.zst"), "{}", part_key);
        prop_assert!(visitor.outbox.is_empty());
        let (counted_on, part) = PartitionState::decode_part(&body).unwrap();
        prop_assert_eq!(counted_on, "test/1");

        // The home's class is due, and waits, closing, for the part.
        prop_assert!(home.finalise_all(&rules).is_empty());
        prop_assert!(home.closing.contains_key(&key));
        let mut home = PartitionState::decode(&home.encode(), 0).unwrap();
        home.place = Some(Place::of("kafka", "test", 0));
        let (finalised, exact) = home.close(&key, vec![part], &rules).unwrap();
        prop_assert!(exact);
        let Some(Outgoing::HomeFinal { key: home_key, .. }) = home.outbox.last() else {
            panic!("the home record is last in the outbox");
        };
        // The home seals every id of the class, its own and the visitor's.
        let sealed: HashSet<u128> = home.outbox.iter().flat_map(|outgoing| match outgoing {
            Outgoing::Ids { ids, .. } => ids.clone(),
            _ => Vec::new(),
        }).collect();
        let distinct: HashSet<&str> = all.iter().map(|e| &*e.event_id).collect();
        prop_assert_eq!(sealed.len(), distinct.len());
        prop_assert!(home_key.ends_with("/home"), "marked final after the result: {}", home_key);

        let mut actual = to_json(&finalised.result);
        let mut expected = to_json(&expected);
        for json in [&mut actual, &mut expected] {
            json["summary"]["positions"] = Value::Null;
        }
        assert_close(&actual, &expected, "result");
    }
}

/// The store side of the stage for tests of the state alone: segments written from the
/// outbox, late events confirmed against them, and what reaches the lake.
#[derive(Default)]
struct Lake {
    /// Sealed ids by `studio:class`.
    segments: BTreeMap<String, HashSet<u128>>,
    /// Event ids written to the lake, with their copies.
    rows: BTreeMap<String, usize>,
}

impl Lake {
    /// Writes the outbox's segments (a checkpoint became durable).
    fn drain(&mut self, state: &mut PartitionState) {
        for outgoing in state.outbox.drain(..) {
            if let Outgoing::Ids {
                studio_id,
                class_id,
                ids,
            } = outgoing
            {
                self.segments
                    .entry(format!("{studio_id}:{class_id}"))
                    .or_default()
                    .extend(ids);
            }
        }
    }

    /// Applies `batch` as the stage does: judged, late events looked up in the segments,
    /// then what is not a duplicate written.
    fn apply(
        &mut self,
        state: &mut PartitionState,
        mut batch: Vec<PerformanceEvent>,
        rules: &Rules,
    ) {
        let last = batch.last().unwrap().offset;
        let (mut tally, _) = state.apply(&mut batch, last, rules, 0);
        for unconfirmed in state.take_unconfirmed() {
            let key = format!("{}:{}", unconfirmed.studio_id, unconfirmed.class_id);
            let found: Vec<usize> = unconfirmed
                .events
                .into_iter()
                .filter(|i| {
                    self.segments.get(&key).is_some_and(|ids| {
                        ids.contains(&crate::event::fingerprint(&batch[*i].event_id))
                    })
                })
                .collect();
            state.confirm_duplicates(&mut batch, &found, &mut tally);
        }
        for event in batch.iter().filter(|e| e.verdict != Verdict::Duplicate) {
            *self.rows.entry(event.event_id.to_string()).or_default() += 1;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// A class counted, then copies of its events (retries of counted ones, new events far
    /// behind, retries of those) while it is open past their lateness and again after it is
    /// final, shuffled, in batches, with segments sealed and written at random points and a
    /// checkpoint round trip: the lake gets every event id exactly once.
    #[test]
    fn late_copies_of_a_class_land_once_whatever_their_order(
        members in prop::collection::vec(member_events(), 1..4),
        copy_every in 1usize..5,
        new_late in 0usize..12,
        order_seed in any::<u64>(),
        cuts in prop::collection::vec(1usize..40, 1..8),
        restore_at in 0usize..40,
        write_every in 1usize..6,
        seal_at in 1usize..60,
    ) {
        let rules = Rules { allowed_lateness_ms: 20_000, watermark_delay_ms: 5_000, ..Rules::default() };
        let mut class = class_events(members);
        class.sort_by_key(|e| e.event_time_ms);
        let first_ms = class[0].event_time_ms;
        let last_ms = class.last().unwrap().event_time_ms;
        // Copies of every n-th event, and events the class never had, far behind, twice.
        let copies = |tag: &str| -> Vec<PerformanceEvent> {
            let mut mix: Vec<PerformanceEvent> = class.iter().step_by(copy_every).cloned().collect();
            for i in 0..new_late {
                let mut fresh = hr(&format!("{tag}-{i}"), first_ms + i as i64, 120.0, 0);
                fresh.arrival_ms = last_ms;
                mix.push(fresh.clone());
                mix.push(fresh);
            }
            let shuffle = |e: &PerformanceEvent| {
                xxhash_rust::xxh3::xxh3_64_with_seed(e.event_id.as_bytes(), order_seed)
            };
            mix.sort_by_key(|e| (shuffle(e), e.event_time_ms));
            mix
        };
        // The class's own events, then a copy mix while it is open, then another class far
        // ahead (the class is final), then a mix again.
        let mut ahead = hr("ahead", last_ms + rules.class_idle_timeout_ms + 60_000, 120.0, 0);
        ahead.class_id = Arc::from("class-2");
        let mut arrivals: Vec<PerformanceEvent> = class.clone();
        arrivals.extend(copies("open"));
        let final_from = arrivals.len();
        arrivals.push(ahead);
        arrivals.extend(copies("final"));
        for (offset, e) in arrivals.iter_mut().enumerate() {
            e.offset = offset as u64;
            e.arrival_ms = e.arrival_ms.max(e.event_time_ms);
        }

        let mut lake = Lake::default();
        let mut state = PartitionState::new(PARTITION.into());
        let (mut start, mut n) = (0, 0);
        for cut in cuts.iter().cycle() {
            if start >= arrivals.len() {
                break;
            }
            // The final class's mix starts a batch: its class-2 run makes class-1 final.
            let end = if start < final_from { (start + cut).min(final_from) } else { start + cut };
            let end = end.min(arrivals.len());
            lake.apply(&mut state, arrivals[start..end].to_vec(), &rules);
            state.sweep(&rules, None);
            state.seal_ids(seal_at);
            if n % write_every == 0 {
                lake.drain(&mut state);
            }
            if n == restore_at {
                state = PartitionState::decode(&state.encode(), 0).unwrap();
            }
            start = end;
            n += 1;
        }
        prop_assert!(state.finalised.contains_key("studio-1:class-1"));
        let distinct: HashSet<&str> = arrivals.iter().map(|e| &*e.event_id).collect();
        prop_assert_eq!(lake.rows.len(), distinct.len());
        let twice: Vec<_> = lake.rows.iter().filter(|(_, copies)| **copies != 1).collect();
        prop_assert!(twice.is_empty(), "written more than once: {:?}", twice);
    }
}

fn hr(id: &str, time_ms: i64, bpm: f64, offset: u64) -> PerformanceEvent {
    event(
        id,
        "m1",
        time_ms,
        EventType::HeartRate,
        Metrics {
            bpm: Some(bpm),
            ..Metrics::default()
        },
        offset,
    )
}

#[test]
fn old_events_and_events_for_final_classes_are_late_and_old_copies_duplicates() {
    let rules = Rules::default();
    let t0 = 1_700_000_000_000;
    let mut state = PartitionState::new(PARTITION.into());
    let mut batch = vec![
        hr("a", t0, 120.0, 0),
        hr("b", t0 + 400_000, 120.0, 1),
        // 400 s behind the newest: past the 10 s delay + 300 s lateness.
        hr("c", t0 + 80_000, 120.0, 2),
        // 300 s behind: within.
        hr("d", t0 + 110_000, 120.0, 3),
        hr("a", t0, 120.0, 4),
    ];
    state.apply(&mut batch, 4, &rules, 0);
    let verdicts: Vec<Verdict> = batch.iter().map(|e| e.verdict).collect();
    // The copy of "a" is older than the limit, and a duplicate all the same.
    assert_eq!(
        verdicts,
        [
            Verdict::Counted,
            Verdict::Counted,
            Verdict::Late,
            Verdict::Counted,
            Verdict::Duplicate
        ]
    );

    // Another class on the partition moves its clock 10 minutes past class-1's last event.
    let mut other = hr("x", t0 + 400_000 + 600_000 + 10_000, 120.0, 5);
    other.class_id = Arc::from("class-2");
    let mut batch = vec![
        other,
        hr("e", t0 + 400_001, 120.0, 6),
        hr("c", t0 + 80_000, 120.0, 7),
        hr("a", t0, 120.0, 8),
        hr("e", t0 + 400_001, 120.0, 9),
    ];
    let (tally, finalised) = state.apply(&mut batch, 9, &rules, 0);
    assert_eq!(
        finalised.len(),
        1,
        "class-1 becomes final when its next event arrives"
    );
    // New to the final class: late, once. Copies of what it wrote, counted or late:
    // duplicates, its ids sealed in the outbox.
    let verdicts: Vec<Verdict> = batch[1..].iter().map(|e| e.verdict).collect();
    assert_eq!(
        verdicts,
        [
            Verdict::Late,
            Verdict::Duplicate,
            Verdict::Duplicate,
            Verdict::Duplicate
        ]
    );
    assert_eq!((tally.counted, tally.late, tally.duplicate), (1, 1, 3));
    assert!(state.finalised.contains_key("studio-1:class-1"));
    // The class's ids left the state (sealed): the new one is looked for in its segments.
    let unconfirmed = state.take_unconfirmed();
    assert_eq!(unconfirmed.len(), 1);
    assert_eq!(unconfirmed[0].events, [1]);
    // Found there (a copy of an event it wrote elsewhere): a duplicate after all.
    let mut tally = tally;
    state.confirm_duplicates(&mut batch, &unconfirmed[0].events, &mut tally);
    assert_eq!(batch[1].verdict, Verdict::Duplicate);
    assert_eq!((tally.late, tally.duplicate), (0, 4));
    assert!(
        state.left_out[&6].iter().all(|(_, late, _)| !late),
        "a replay gives it the same verdict"
    );
    assert!(
        state.finalised["studio-1:class-1"].late.is_empty(),
        "the ids of its late events found sealed are not held to be sealed again"
    );
    assert_eq!(finalised[0].result.summary.hr_samples, 3);
}

#[test]
fn a_fast_clock_cannot_pull_the_watermark_past_arrival_plus_skew() {
    let rules = Rules::default();
    let t0 = 1_700_000_000_000;
    let mut state = PartitionState::new(PARTITION.into());
    // Sent at t0 claiming to be an hour ahead: the watermark moves to t0 + 60 s skew only.
    let mut fast = hr("fast", t0 + 3_600_000, 120.0, 0);
    fast.arrival_ms = t0;
    let mut batch = vec![fast, hr("on-time", t0 - 200_000, 120.0, 1)];
    state.apply(&mut batch, 1, &rules, 0);
    assert_eq!(batch[1].verdict, Verdict::Counted);
}

#[test]
fn replayed_positions_are_skipped_and_a_class_idle_on_the_wall_clock_is_final() {
    let rules = Rules::default();
    let t0 = 1_700_000_000_000;
    let mut state = PartitionState::new(PARTITION.into());
    let mut batch = vec![hr("a", t0, 120.0, 10), hr("b", t0 + 4000, 130.0, 11)];
    state.apply(&mut batch, 11, &rules, 1_000);
    let mut restored = PartitionState::decode(&state.encode(), 5_000).unwrap();
    assert_eq!(restored.position, Some(11));
    let mut replay = vec![
        hr("a", t0, 120.0, 10),
        hr("b", t0 + 4000, 130.0, 11),
        hr("c", t0 + 8000, 140.0, 12),
    ];
    let (tally, _) = restored.apply(&mut replay, 12, &rules, 5_000);
    assert_eq!((tally.replayed, tally.counted), (2, 1));
    let timeout = rules.class_idle_timeout_ms;
    // Not read to the end of the partition: however long the wall clock says, its events may
    // be waiting unread.
    assert!(restored.sweep(&rules, None).is_empty());
    // At the end only since 7 s: the idle time counts from there.
    assert!(restored
        .sweep(&rules, Some((7_000, 7_000 + timeout - 1)))
        .is_empty());
    // Only time the source vouched for counts, however late the sweep runs.
    assert!(restored
        .sweep(&rules, Some((0, 5_000 + timeout - 1)))
        .is_empty());
    // Idle time restarts at the restore (5 s), not at the last event before it (1 s).
    let finalised = restored.sweep(&rules, Some((0, 5_000 + timeout)));
    assert_eq!(finalised.len(), 1);
    assert_eq!(finalised[0].result.summary.hr_samples, 3);
    assert!(
        matches!(&restored.outbox[..], [Outgoing::Result(result), Outgoing::Ids { ids, .. }] if result.summary.hr_samples == 3 && ids.len() == 3),
        "the result and the class's sealed ids wait in the outbox"
    );
}
