//! Energy, work and training load, the way studios report them: calories from heart rate
//! (Keytel et al. 2005), training load (Banister's TRIMP), and the work and pace of the
//! machines from their power readings. Pure logic.
//!
//! The heart-rate figures are computed when a result is rendered, from the time at each whole
//! bpm ([`BpmTime`]) the zones are cut from, so they need no state of their own and follow
//! whatever maximum applies. Work needs the machine's samples in time order: [`Work`] chains
//! them the way heart-rate samples are chained (each counts the capped gap to the previous
//! one), sealing samples once nothing can arrive before them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::chain::{self, Block, Chain};
use super::heart::{BpmTime, HeartModel, Personal};
use crate::profile::{Profile, Sex};

/// Kilojoules in a kilocalorie.
const KJ_PER_KCAL: f64 = 4.184;

/// Keytel et al. (2005), "Prediction of energy expenditure from heart rate monitoring during
/// submaximal exercise", J Sports Sci 23(3): the equation without VO2max, in kcal a minute
/// (the paper's kJ a minute over 4.184), never below zero:
///
/// - male: -55.0969 + 0.6309 x HR + 0.1988 x weight + 0.2017 x age
/// - female: -20.4022 + 0.4472 x HR - 0.1263 x weight + 0.074 x age
pub fn keytel_kcal_per_min(sex: Sex, bpm: f64, weight_kg: f64, age: f64) -> f64 {
    let kj = match sex {
        Sex::Male => -55.0969 + 0.6309 * bpm + 0.1988 * weight_kg + 0.2017 * age,
        Sex::Female => -20.4022 + 0.4472 * bpm - 0.1263 * weight_kg + 0.074 * age,
    };
    (kj / KJ_PER_KCAL).max(0.0)
}

/// Banister's training impulse for one minute at `bpm`: the heart-rate reserve fraction
/// x = (HR - resting) / (maximum - resting), held to 0..1, weighted by a x e^(b x), with
/// a = 0.64, b = 1.92 for men and a = 0.86, b = 1.67 for women.
pub fn trimp_per_min(sex: Sex, bpm: f64, resting: f64, hr_max: f64) -> f64 {
    let reserve = ((bpm - resting) / (hr_max - resting)).clamp(0.0, 1.0);
    let (a, b) = match sex {
        Sex::Male => (0.64, 1.92),
        Sex::Female => (0.86, 1.67),
    };
    reserve * a * (b * reserve).exp()
}

/// The profile fields the energy and load equations need that `profile` lacks, in the order
/// they are named in the result (`profile_missing`).
pub fn missing_fields(profile: Option<&Profile>) -> Vec<Box<str>> {
    let profile = profile.cloned().unwrap_or_default();
    [
        ("birth_year", profile.birth_year.is_none()),
        ("sex", profile.sex.is_none()),
        ("weight_kg", profile.weight_kg.is_none()),
        ("resting_hr", profile.resting_hr.is_none()),
    ]
    .into_iter()
    .filter(|(_, missing)| *missing)
    .map(|(name, _)| name.into())
    .collect()
}

/// Calories from heart rate: [`keytel_kcal_per_min`] over the time at each whole bpm, for the
/// bpm in zone 1 or above of `member`'s maximum; `None` unless the profile has a sex, a
/// weight and a birth year (the age is the class's `year` minus it).
pub fn calories_hr(
    at_bpm: &BpmTime,
    member: &Personal,
    model: &HeartModel,
    profile: Option<&Profile>,
    year: i32,
) -> Option<f64> {
    let profile = profile?;
    let (sex, weight_kg, born) = (profile.sex?, profile.weight_kg?, profile.birth_year?);
    let age = f64::from(year - i32::from(born));
    Some(plus_zero_sum(
        at_bpm
            .iter()
            .filter(|(bpm, _)| member.zone(*bpm, model).is_some())
            .map(|(bpm, ms)| {
                keytel_kcal_per_min(sex, f64::from(bpm), weight_kg, age) * ms as f64 / 60_000.0
            }),
    ))
}

/// Training load: [`trimp_per_min`] over the time at each whole bpm, of `member`'s maximum;
/// `None` unless the profile has a sex and a resting rate below the maximum.
pub fn trimp(at_bpm: &BpmTime, member: &Personal, profile: Option<&Profile>) -> Option<f64> {
    let profile = profile?;
    let (sex, resting) = (profile.sex?, profile.resting_hr?);
    if resting >= member.hr_max {
        return None;
    }
    let (resting, hr_max) = (f64::from(resting), f64::from(member.hr_max));
    Some(plus_zero_sum(at_bpm.iter().map(|(bpm, ms)| {
        trimp_per_min(sex, f64::from(bpm), resting, hr_max) * ms as f64 / 60_000.0
    })))
}

/// The sum of `values`, `0.0` when there are none (a float sum of nothing is `-0.0`, which
/// JSON would carry as `-0.0`).
pub fn plus_zero_sum(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(0.0, |sum, value| sum + value)
}

/// Kilojoules of `joules`.
pub fn kilojoules(joules: f64) -> f64 {
    joules / 1_000.0
}

/// A rower's mean split: seconds per 500 m over its moving time, `None` without distance.
pub fn split_500m_s(moving_ms: i64, distance_m: f64) -> Option<f64> {
    (distance_m > 0.0 && moving_ms > 0).then(|| moving_ms as f64 / 1_000.0 * 500.0 / distance_m)
}

/// A machine's samples chained in event time: each counts the gap to the previous one
/// (capped at `CLASSPULSE_HR_MAX_GAP`; the first counts 0) as moving time, and its power
/// times that gap as work. Samples wait in `pending`, by (event time, event-id hash), until
/// they are sealed, as heart-rate samples do, so out-of-order arrival within the allowed
/// lateness gives the sums of the sorted samples.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Work {
    /// Samples not yet sealed, with their watts (none: the reading had no power).
    pub pending: BTreeMap<(i64, u128), Option<f64>>,
    /// The first sealed sample: a hand-over ([`Work::merge`]) gives it the gap to the
    /// samples of the other part.
    pub first_sealed: Option<(i64, Option<f64>)>,
    /// Event time of the last sealed sample.
    pub last_sealed_ms: Option<i64>,
    /// Watts x gap over the sealed samples, in joules.
    pub joules: f64,
    /// Gaps over the sealed samples.
    pub moving_ms: i64,
    /// Samples counted by a build that kept no chain (a checkpoint of format 6 or older): the
    /// sums miss them, so no work or split is given.
    pub unchained: u64,
}

impl Work {
    /// Adds a sample.
    pub fn add(&mut self, time_ms: i64, id_hash: u128, watts: Option<f64>) {
        self.pending.insert((time_ms, id_hash), watts);
    }

    /// Seals every pending sample older than `limit_ms`.
    pub fn seal_before(&mut self, limit_ms: i64, gap_cap_ms: i64) {
        while let Some(entry) = self.pending.first_entry() {
            if entry.key().0 >= limit_ms {
                break;
            }
            let ((time_ms, _), watts) = entry.remove_entry();
            self.first_sealed.get_or_insert((time_ms, watts));
            self.chain(time_ms, watts, gap_cap_ms);
        }
    }

    /// Counts a sample at `time_ms` after the last sealed one.
    fn chain(&mut self, time_ms: i64, watts: Option<f64>, gap_cap_ms: i64) {
        let (joules, gap) = step(&mut self.last_sealed_ms, time_ms, watts, gap_cap_ms);
        self.joules += joules;
        self.moving_ms += gap;
    }

    /// Joules and moving time as if every pending sample were sealed now (live values).
    pub fn now(&self, gap_cap_ms: i64) -> (f64, i64) {
        let (mut joules, mut moving_ms, mut last) =
            (self.joules, self.moving_ms, self.last_sealed_ms);
        for ((time_ms, _), watts) in &self.pending {
            let (j, gap) = step(&mut last, *time_ms, *watts, gap_cap_ms);
            joules += j;
            moving_ms += gap;
        }
        (joules, moving_ms)
    }

    /// Takes in the same machine's samples counted elsewhere (the other part of a class whose
    /// key moved): each side's sealed samples are one block, laid out in time order with the
    /// pending samples ([`chain::interleave`]). Exact unless the parts' samples interleave in
    /// time, as [`super::class::HeartRate::merge`].
    pub fn merge(&mut self, mut other: Work, gap_cap_ms: i64) {
        let blocks = [self.take_sealed(), other.take_sealed()]
            .into_iter()
            .flatten()
            .collect();
        self.pending.extend(other.pending);
        self.unchained += other.unchained;
        chain::interleave(self, blocks, &gap_cap_ms);
    }

    /// The sealed samples as one block, leaving none sealed.
    fn take_sealed(&mut self) -> Option<Block<WorkSums>> {
        let first = self.first_sealed.take();
        let last_ms = self.last_sealed_ms.take();
        let (joules, moving_ms) = (
            std::mem::take(&mut self.joules),
            std::mem::take(&mut self.moving_ms),
        );
        first.map(|(first_ms, first_watts)| Block {
            first_ms,
            last_ms: last_ms.unwrap_or(first_ms),
            sums: WorkSums {
                first_watts,
                joules,
                moving_ms,
            },
        })
    }
}

/// A machine's sealed samples taken whole ([`Work::merge`]).
pub struct WorkSums {
    first_watts: Option<f64>,
    joules: f64,
    moving_ms: i64,
}

impl Chain for Work {
    type Sums = WorkSums;
    /// The gap cap in ms.
    type Context = i64;

    fn first_pending_ms(&self) -> Option<i64> {
        self.pending.first_key_value().map(|((time, _), _)| *time)
    }

    fn seal_through(&mut self, time_ms: i64, gap_cap_ms: &i64) {
        self.seal_before(time_ms + 1, *gap_cap_ms);
    }

    fn append(&mut self, block: Block<WorkSums>, gap_cap_ms: &i64) {
        let first = (block.first_ms, block.sums.first_watts);
        self.first_sealed.get_or_insert(first);
        if self.last_sealed_ms.is_some() {
            self.chain(first.0, first.1, *gap_cap_ms);
        }
        self.joules += block.sums.joules;
        self.moving_ms += block.sums.moving_ms;
        chain::reach(&mut self.last_sealed_ms, block.last_ms);
    }
}

/// One sample chained after `last`: its joules and its gap (capped, never negative), with
/// `last` moved on.
fn step(last: &mut Option<i64>, time_ms: i64, watts: Option<f64>, gap_cap_ms: i64) -> (f64, i64) {
    let gap = last.map_or(0, |previous| (time_ms - previous).clamp(0, gap_cap_ms));
    chain::reach(last, time_ms);
    (watts.unwrap_or(0.0) * gap as f64 / 1_000.0, gap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::SetBy;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * a.abs().max(b.abs()).max(1.0)
    }

    /// The paper's equations at worked values (the arithmetic written out).
    #[test]
    fn keytel_at_worked_values() {
        // Male, 150 bpm, 80 kg, 35 years: -55.0969 + 94.635 + 15.904 + 7.0595 = 62.5016 kJ/min.
        assert!(close(
            keytel_kcal_per_min(Sex::Male, 150.0, 80.0, 35.0),
            62.5016 / 4.184
        ));
        // Female, 150 bpm, 60 kg, 30 years: -20.4022 + 67.08 - 7.578 + 2.22 = 41.3198 kJ/min.
        assert!(close(
            keytel_kcal_per_min(Sex::Female, 150.0, 60.0, 30.0),
            41.3198 / 4.184
        ));
        // Far below exercise the line goes negative: no energy, not a negative one.
        assert_eq!(keytel_kcal_per_min(Sex::Male, 40.0, 50.0, 20.0), 0.0);
    }

    #[test]
    fn banister_at_worked_values() {
        // 150 bpm with resting 60 and maximum 190: reserve 90/130.
        let x: f64 = 90.0 / 130.0;
        assert!(close(
            trimp_per_min(Sex::Male, 150.0, 60.0, 190.0),
            x * 0.64 * (1.92 * x).exp()
        ));
        assert!(close(
            trimp_per_min(Sex::Female, 150.0, 60.0, 190.0),
            x * 0.86 * (1.67 * x).exp()
        ));
        // Below resting nothing; above the maximum no more than at it.
        assert_eq!(trimp_per_min(Sex::Male, 50.0, 60.0, 190.0), 0.0);
        assert_eq!(
            trimp_per_min(Sex::Male, 200.0, 60.0, 190.0),
            trimp_per_min(Sex::Male, 190.0, 60.0, 190.0)
        );
    }

    fn profile(sex: Option<Sex>, weight: Option<f64>, resting: Option<u16>) -> Profile {
        Profile {
            birth_year: Some(1991),
            sex,
            weight_kg: weight,
            resting_hr: resting,
            hr_max: Some((190, SetBy::Measured)),
            ..Profile::default()
        }
    }

    /// Ten minutes at 150 bpm and two at 80 (below zone 1 of 190: 95): calories count the ten,
    /// training load counts both; either is `None` without the fields it needs, and the result
    /// names them.
    #[test]
    fn heart_rate_energy_counts_zone_1_and_above_for_members_with_the_fields() {
        let model = HeartModel::default();
        let mut at_bpm = BpmTime::default();
        at_bpm.add(150, 600_000);
        at_bpm.add(80, 120_000);
        let full = profile(Some(Sex::Male), Some(80.0), Some(60));
        let member = model.personal(Some(&full), 2026);
        let kcal = calories_hr(&at_bpm, &member, &model, Some(&full), 2026).unwrap();
        assert!(close(
            kcal,
            10.0 * keytel_kcal_per_min(Sex::Male, 150.0, 80.0, 35.0)
        ));
        let load = trimp(&at_bpm, &member, Some(&full)).unwrap();
        let expected = 10.0 * trimp_per_min(Sex::Male, 150.0, 60.0, 190.0)
            + 2.0 * trimp_per_min(Sex::Male, 80.0, 60.0, 190.0);
        assert!(close(load, expected));
        assert!(missing_fields(Some(&full)).is_empty());

        let no_weight = profile(Some(Sex::Female), None, None);
        assert_eq!(
            calories_hr(&at_bpm, &member, &model, Some(&no_weight), 2026),
            None
        );
        assert_eq!(trimp(&at_bpm, &member, Some(&no_weight)), None);
        assert_eq!(
            missing_fields(Some(&no_weight)),
            vec![Box::from("weight_kg"), Box::from("resting_hr")]
        );
        assert_eq!(calories_hr(&at_bpm, &member, &model, None, 2026), None);
        // No heart-rate time: zero, not the -0.0 JSON would carry.
        let none = calories_hr(&BpmTime::default(), &member, &model, Some(&full), 2026).unwrap();
        assert!(none == 0.0 && none.is_sign_positive());
        assert!(plus_zero_sum(std::iter::empty()).is_sign_positive());
        assert_eq!(missing_fields(None).len(), 4);
    }

    /// 200 W for 4 s then a 60 s gap (capped to 5 s) at 300 W: 200 x 4 + 300 x 5 joules.
    #[test]
    fn work_counts_power_over_the_capped_gap_in_time_order() {
        let mut work = Work::default();
        for (time, watts) in [
            (64_000, Some(300.0)),
            (0, Some(100.0)),
            (4_000, Some(200.0)),
        ] {
            work.add(time, time as u128, watts);
        }
        assert_eq!(work.now(5_000), (2_300.0, 9_000));
        work.seal_before(10_000, 5_000);
        assert_eq!((work.joules, work.moving_ms), (800.0, 4_000));
        work.seal_before(i64::MAX, 5_000);
        assert_eq!((work.joules, work.moving_ms), (2_300.0, 9_000));
        // A reading without power moves time but does no work.
        work.add(66_000, 1, None);
        assert_eq!(work.now(5_000), (2_300.0, 11_000));
        assert_eq!(split_500m_s(100_000, 400.0), Some(125.0));
        assert_eq!(split_500m_s(100_000, 0.0), None);
    }

    /// A machine's samples split where its device switched partitions: the parts, each sealed
    /// in part, merged either way round, give the sums of the whole.
    #[test]
    fn work_parts_merge_to_the_sums_of_the_whole() {
        let samples: Vec<(i64, f64)> = (0..30)
            .map(|i| (i * 2_000 + (i % 3) * 700, 100.0 + (i * 13 % 50) as f64))
            .collect();
        let part = |samples: &[(i64, f64)], seal: i64| {
            let mut work = Work::default();
            for (time, watts) in samples {
                work.add(*time, *time as u128, Some(*watts));
            }
            work.seal_before(seal, 5_000);
            work
        };
        let whole = part(&samples, i64::MAX);
        let (earlier, later) = samples.split_at(18);
        for (seal_earlier, seal_later) in [(0, 0), (20_000, 0), (i64::MAX, 45_000), (0, i64::MAX)] {
            for earlier_first in [true, false] {
                let (mut merged, other) = if earlier_first {
                    (part(earlier, seal_earlier), part(later, seal_later))
                } else {
                    (part(later, seal_later), part(earlier, seal_earlier))
                };
                merged.merge(other, 5_000);
                merged.seal_before(i64::MAX, 5_000);
                let at =
                    format!("sealed {seal_earlier} {seal_later}, earlier first {earlier_first}");
                assert!(close(merged.joules, whole.joules), "{at}");
                assert_eq!(merged.moving_ms, whole.moving_ms, "{at}");
            }
        }
    }
}
