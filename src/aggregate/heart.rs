//! The heart-rate model: which maximum applies to a member, how a bpm falls into a zone, and
//! how time in zones becomes effort points. Pure logic, all of it in whole numbers (bpm,
//! tenths of a percent, hundredths of a point), so a cut never depends on float rounding.
//!
//! The maximum in use, in this order: a value set by hand or measured in a test (the member
//! profile's `hr_max`), the highest the member's own heart rate sustained in an earlier class
//! (`observed`), an age formula, the configured default.

use serde::{Deserialize, Serialize};

use crate::profile::{Profile, SetBy};

/// Lowest bpm counted (the decoder's lower bound).
pub const BPM_MIN: u16 = 25;
/// Highest bpm counted (the decoder's upper bound).
pub const BPM_MAX: u16 = 250;
/// How far above the maximum in use one class may raise it.
pub const RAISE_CAP_BPM: u16 = 10;

/// A sample's bpm as the zones see it: whole bpm, halves up (straps report whole bpm).
pub fn whole_bpm(bpm: f64) -> u16 {
    (bpm + 0.5)
        .floor()
        .clamp(f64::from(BPM_MIN), f64::from(BPM_MAX)) as u16
}

/// An age formula for the maximum heart rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Formula {
    /// Tanaka, Monahan and Seals (2001): 208 - 0.7 x age.
    Tanaka,
    /// Gellish et al. (2007): 207 - 0.7 x age.
    Gellish,
    /// Nes et al. (2013), the HUNT study: 211 - 0.64 x age.
    Nes,
    /// Fox and Haskell (1971): 220 - age.
    Fox,
}

impl Formula {
    /// The names `CLASSPULSE_HR_MAX_FORMULA` takes.
    pub const NAMES: &'static str = "tanaka, gellish, nes or fox";

    /// The formula named `name`.
    pub fn from_name(name: &str) -> Option<Formula> {
        match name {
            "tanaka" => Some(Formula::Tanaka),
            "gellish" => Some(Formula::Gellish),
            "nes" => Some(Formula::Nes),
            "fox" => Some(Formula::Fox),
            _ => None,
        }
    }

    /// The maximum at `age`, rounded to a whole bpm (halves up), computed in hundredths.
    pub fn hr_max(self, age: i32) -> u16 {
        let (base, per_year) = match self {
            Formula::Tanaka => (20_800, 70),
            Formula::Gellish => (20_700, 70),
            Formula::Nes => (21_100, 64),
            Formula::Fox => (22_000, 100),
        };
        let hundredths = i64::from(base) - i64::from(per_year) * i64::from(age);
        (hundredths + 50)
            .div_euclid(100)
            .clamp(i64::from(BPM_MIN), i64::from(BPM_MAX)) as u16
    }
}

/// What zones are a share of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ZoneBasis {
    /// Percent of the maximum.
    Max,
    /// Percent of the heart-rate reserve (maximum minus resting; Karvonen).
    Reserve,
}

/// Where the maximum in use came from (in this order: `Stats::hr_max_sources` counts by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HrMaxSource {
    /// Set by the member or a coach.
    Manual,
    /// Measured in a test.
    Measured,
    /// Raised by classpulse after an earlier class sustained more.
    Observed,
    /// The age formula.
    Formula,
    /// `CLASSPULSE_HR_MAX_BPM`: no profile, or none with a birth year.
    Default,
}

/// The model's settings (`CLASSPULSE_HR_*`, `CLASSPULSE_EFFORT_WEIGHTS`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeartModel {
    /// The maximum for a member with no better one.
    pub default_max_bpm: u16,
    /// The age formula.
    pub formula: Formula,
    /// Lower bounds of zones 1 to 5, in tenths of a percent, ascending.
    pub zone_tenths: [u16; 5],
    /// What the bounds are a share of.
    pub basis: ZoneBasis,
    /// Points per minute in zones 1 to 5, in hundredths.
    pub effort_hundredths: [u32; 5],
    /// How long every sample must stay above the maximum to raise it.
    pub raise_after_ms: i64,
}

impl Default for HeartModel {
    /// The documented defaults.
    fn default() -> HeartModel {
        HeartModel {
            default_max_bpm: 190,
            formula: Formula::Tanaka,
            zone_tenths: [500, 600, 700, 800, 900],
            basis: ZoneBasis::Max,
            effort_hundredths: [0, 0, 0, 100, 200],
            raise_after_ms: 30_000,
        }
    }
}

/// The model applied to one member: the maximum in use and how zones are cut.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Personal {
    /// The maximum in use.
    pub hr_max: u16,
    /// Where it came from.
    pub source: HrMaxSource,
    /// Resting rate, when zones are a share of the reserve.
    pub resting: Option<u16>,
    /// What zones are a share of (`max` when `reserve` is configured but the member has no
    /// resting rate below their maximum).
    pub basis: ZoneBasis,
}

impl HeartModel {
    /// The model for a member with `profile` (`None`: none arrived) in a class of `year`.
    pub fn personal(&self, profile: Option<&Profile>, year: i32) -> Personal {
        let (hr_max, source) = self.hr_max(profile, year);
        let resting = profile
            .and_then(|p| p.resting_hr)
            .filter(|resting| *resting < hr_max && self.basis == ZoneBasis::Reserve);
        Personal {
            hr_max,
            source,
            resting,
            basis: if resting.is_some() {
                ZoneBasis::Reserve
            } else {
                ZoneBasis::Max
            },
        }
    }

    fn hr_max(&self, profile: Option<&Profile>, year: i32) -> (u16, HrMaxSource) {
        let Some(profile) = profile else {
            return (self.default_max_bpm, HrMaxSource::Default);
        };
        if let Some((bpm, set_by)) = profile.hr_max {
            let source = match set_by {
                SetBy::Manual => HrMaxSource::Manual,
                SetBy::Measured => HrMaxSource::Measured,
            };
            return (bpm, source);
        }
        if let Some(bpm) = profile.hr_max_observed {
            return (bpm, HrMaxSource::Observed);
        }
        if let Some(born) = profile.birth_year {
            return (
                self.formula.hr_max(year - i32::from(born)),
                HrMaxSource::Formula,
            );
        }
        (self.default_max_bpm, HrMaxSource::Default)
    }

    /// Effort points from time in zones: the weighted minutes, rounded down to 0.1.
    pub fn effort_points(&self, zone_ms: &[i64; 5]) -> f64 {
        let weighted: i64 = zone_ms
            .iter()
            .zip(self.effort_hundredths)
            .map(|(ms, weight)| ms * i64::from(weight))
            .sum();
        // hundredths of a point per minute x ms / 60,000 ms, in tenths of a point.
        (weighted / 600_000) as f64 / 10.0
    }
}

impl Personal {
    /// The zone (0 for zone 1 .. 4 for zone 5) of a sample of `bpm` (whole), or `None` below
    /// zone 1. Compared in whole numbers: `bpm x 1000 >= max x tenths` (on the reserve, both
    /// sides less the resting rate), so 60% of 190 (114) is exactly zone 2.
    pub fn zone(&self, bpm: u16, model: &HeartModel) -> Option<usize> {
        let floor = i64::from(self.resting.unwrap_or(0));
        let above = i64::from(bpm) - floor;
        let range = i64::from(self.hr_max) - floor;
        model
            .zone_tenths
            .iter()
            .rposition(|tenths| above * 1000 >= range * i64::from(*tenths))
    }

    /// `bpm` as a percent of the maximum in use, to 0.1.
    pub fn percent(&self, bpm: f64) -> f64 {
        (bpm * 1000.0 / f64::from(self.hr_max)).round() / 10.0
    }

    /// Time in each zone from time at each whole bpm.
    pub fn zone_ms(&self, at_bpm: &BpmTime, model: &HeartModel) -> [i64; 5] {
        let mut zone_ms = [0; 5];
        for (bpm, ms) in at_bpm.iter() {
            if let Some(zone) = self.zone(bpm, model) {
                zone_ms[zone] += ms;
            }
        }
        zone_ms
    }

    /// What one class sustained above this maximum, capped ([`RAISE_CAP_BPM`]): `None` when
    /// it sustained nothing above it, or the maximum was set by hand or measured.
    pub fn raised(&self, sustained: Option<u16>) -> Option<u16> {
        if matches!(self.source, HrMaxSource::Manual | HrMaxSource::Measured) {
            return None;
        }
        sustained
            .filter(|bpm| *bpm > self.hr_max)
            .map(|bpm| bpm.min(self.hr_max + RAISE_CAP_BPM))
    }
}

/// Milliseconds spent at each whole bpm ([`BPM_MIN`] to [`BPM_MAX`]): the heart-rate time of a
/// member in a form any maximum can cut into zones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BpmTime(Vec<u32>);

impl BpmTime {
    /// Adds `ms` at `bpm`.
    pub fn add(&mut self, bpm: u16, ms: i64) {
        if ms <= 0 {
            return;
        }
        let index = usize::from(bpm.clamp(BPM_MIN, BPM_MAX) - BPM_MIN);
        if self.0.len() <= index {
            self.0.resize(index + 1, 0);
        }
        self.0[index] = self.0[index].saturating_add(u32::try_from(ms).unwrap_or(u32::MAX));
    }

    /// Adds everything `other` holds.
    pub fn merge(&mut self, other: &BpmTime) {
        for (bpm, ms) in other.iter() {
            self.add(bpm, ms);
        }
    }

    /// Rough heap bytes held.
    pub fn approx_bytes(&self) -> usize {
        self.0.capacity() * 4
    }

    /// `(bpm, ms)` for every bpm with time.
    pub fn iter(&self) -> impl Iterator<Item = (u16, i64)> + '_ {
        self.0
            .iter()
            .enumerate()
            .filter(|(_, ms)| **ms > 0)
            .map(|(index, ms)| (BPM_MIN + index as u16, i64::from(*ms)))
    }
}

/// The highest heart rate a member *sustained*: over every stretch of at least the raise time
/// in which no two consecutive samples are further apart than the gap, the stretch's lowest
/// sample; the highest of those. Sealed samples come in time order. The maximum it is compared
/// with is not needed here, so the value holds for whatever maximum applies: a member sustained
/// more than `M` exactly when [`Sustained::best`] is above `M`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sustained {
    /// The samples since the newest one at least the raise time before the last, within the
    /// current run of gaps no longer than the gap.
    window: std::collections::VecDeque<(i64, u16)>,
    /// The first samples, until one is the raise time after the first: a part merged after
    /// another ([`Sustained::append`]) replays them, for stretches that cross into it.
    head: Vec<(i64, u16)>,
    /// Whether `head` spans the raise time.
    head_done: bool,
    /// The highest lowest sample of a stretch so far.
    best: Option<u16>,
}

impl Sustained {
    /// Takes the next sample in time order.
    pub fn push(&mut self, time_ms: i64, bpm: u16, gap_ms: i64, raise_ms: i64) {
        if !self.head_done {
            self.head.push((time_ms, bpm));
            self.head_done = time_ms - self.head[0].0 >= raise_ms;
        }
        if self
            .window
            .back()
            .is_some_and(|(last, _)| time_ms - last > gap_ms || time_ms < *last)
        {
            self.window.clear();
        }
        self.window.push_back((time_ms, bpm));
        while self.window.len() >= 2 && time_ms - self.window[1].0 >= raise_ms {
            self.window.pop_front();
        }
        if time_ms - self.window[0].0 >= raise_ms {
            let lowest = self.window.iter().map(|(_, bpm)| *bpm).min();
            self.best = self.best.max(lowest);
        }
    }

    /// Takes a part whose samples all come after this one's (the other part of a class whose
    /// key moved): stretches crossing from this part into it count too.
    pub fn append(&mut self, other: Sustained, gap_ms: i64, raise_ms: i64) {
        for (time_ms, bpm) in &other.head {
            self.push(*time_ms, *bpm, gap_ms, raise_ms);
        }
        if other.head_done {
            self.window = other.window;
        }
        self.best = self.best.max(other.best);
    }

    /// Rough heap bytes held.
    pub fn approx_bytes(&self) -> usize {
        (self.window.capacity() + self.head.capacity()) * 16
    }

    /// The highest sustained heart rate, if any stretch was long enough.
    pub fn best(&self) -> Option<u16> {
        self.best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_give_their_papers_values() {
        // 40 years: Tanaka 208 - 28 = 180; Gellish 207 - 28 = 179; Nes 211 - 25.6 = 185.4;
        // Fox 180.
        assert_eq!(Formula::Tanaka.hr_max(40), 180);
        assert_eq!(Formula::Gellish.hr_max(40), 179);
        assert_eq!(Formula::Nes.hr_max(40), 185);
        assert_eq!(Formula::Fox.hr_max(40), 180);
        // 65 years: Tanaka 162.5 rounds up to 163 (exactly, not 162.49999 from floats).
        assert_eq!(Formula::Tanaka.hr_max(65), 163);
        // 25: 190.5 -> 191; Nes 211 - 16 = 195.
        assert_eq!(Formula::Tanaka.hr_max(25), 191);
        assert_eq!(Formula::Nes.hr_max(25), 195);
        // Halves up in hundredths: Nes at 50 is 211 - 32 = 179.0; at 45: 182.2 -> 182; at
        // 55: 175.8 -> 176.
        assert_eq!(Formula::Nes.hr_max(50), 179);
        assert_eq!(Formula::Nes.hr_max(45), 182);
        assert_eq!(Formula::Nes.hr_max(55), 176);
        // Gellish at 5: 203.5 -> 204.
        assert_eq!(Formula::Gellish.hr_max(5), 204);
        for name in ["tanaka", "gellish", "nes", "fox"] {
            assert!(Formula::from_name(name).is_some(), "{name}");
        }
        assert_eq!(Formula::from_name("Tanaka"), None);
    }

    #[test]
    fn whole_bpm_rounds_halves_up() {
        assert_eq!(whole_bpm(151.5), 152);
        assert_eq!(whole_bpm(151.49), 151);
        assert_eq!(whole_bpm(25.0), 25);
        assert_eq!(whole_bpm(250.0), 250);
    }

    fn member(hr_max: u16, source: HrMaxSource) -> Personal {
        Personal {
            hr_max,
            source,
            resting: None,
            basis: ZoneBasis::Max,
        }
    }

    #[test]
    fn zones_cut_at_their_bounds() {
        let model = HeartModel::default();
        let at_190 = member(190, HrMaxSource::Default);
        assert_eq!(at_190.zone(94, &model), None); // 49.5%
        assert_eq!(at_190.zone(95, &model), Some(0)); // 50%
        assert_eq!(at_190.zone(113, &model), Some(0));
        assert_eq!(at_190.zone(114, &model), Some(1)); // 60% exactly
        assert_eq!(at_190.zone(133, &model), Some(2)); // 70%
        assert_eq!(at_190.zone(152, &model), Some(3)); // 80%
        assert_eq!(at_190.zone(170, &model), Some(3));
        assert_eq!(at_190.zone(171, &model), Some(4)); // 90%
        assert_eq!(at_190.zone(240, &model), Some(4));
        // A bound of 84%: 163 x 0.84 = 136.92, so 137 is in and 136 is not.
        let splat = HeartModel {
            zone_tenths: [500, 610, 710, 840, 920],
            ..model
        };
        let at_163 = member(163, HrMaxSource::Formula);
        assert_eq!(at_163.zone(136, &splat), Some(2));
        assert_eq!(at_163.zone(137, &splat), Some(3));
        // 92% of 163 = 149.96.
        assert_eq!(at_163.zone(149, &splat), Some(3));
        assert_eq!(at_163.zone(150, &splat), Some(4));
    }

    #[test]
    fn reserve_zones_need_a_resting_rate_below_the_maximum() {
        let model = HeartModel {
            basis: ZoneBasis::Reserve,
            ..HeartModel::default()
        };
        let profile = |resting: Option<u16>| Profile {
            birth_year: Some(1986),
            resting_hr: resting,
            ..Profile::default()
        };
        // 40 years in 2026: maximum 180; resting 60: reserve 120.
        let with_rest = model.personal(Some(&profile(Some(60))), 2026);
        assert_eq!(
            (with_rest.hr_max, with_rest.source, with_rest.basis),
            (180, HrMaxSource::Formula, ZoneBasis::Reserve)
        );
        // 50% of the reserve: 60 + 60 = 120; 90%: 60 + 108 = 168.
        assert_eq!(with_rest.zone(119, &model), None);
        assert_eq!(with_rest.zone(120, &model), Some(0));
        assert_eq!(with_rest.zone(167, &model), Some(3));
        assert_eq!(with_rest.zone(168, &model), Some(4));
        assert_eq!(with_rest.zone(50, &model), None);
        // No resting rate: percent of maximum, and the result says so.
        let without = model.personal(Some(&profile(None)), 2026);
        assert_eq!(without.basis, ZoneBasis::Max);
        assert_eq!(without.zone(90, &model), Some(0));
        // A resting rate at or above the maximum is no reserve.
        let odd = model.personal(
            Some(&Profile {
                hr_max: Some((100, SetBy::Manual)),
                resting_hr: Some(110),
                ..Profile::default()
            }),
            2026,
        );
        assert_eq!(odd.basis, ZoneBasis::Max);
        // `max` configured: the resting rate is not used.
        let plain = HeartModel::default().personal(Some(&profile(Some(60))), 2026);
        assert_eq!((plain.basis, plain.resting), (ZoneBasis::Max, None));
    }

    #[test]
    fn the_maximum_comes_from_the_best_source_there_is() {
        let model = HeartModel::default();
        let year = 2026;
        let born_1961 = Profile {
            birth_year: Some(1961),
            ..Profile::default()
        };
        let source = |profile: Option<&Profile>| {
            let p = model.personal(profile, year);
            (p.hr_max, p.source)
        };
        assert_eq!(source(None), (190, HrMaxSource::Default));
        assert_eq!(
            source(Some(&Profile::default())),
            (190, HrMaxSource::Default)
        );
        assert_eq!(source(Some(&born_1961)), (163, HrMaxSource::Formula));
        let observed = Profile {
            hr_max_observed: Some(170),
            ..born_1961.clone()
        };
        assert_eq!(source(Some(&observed)), (170, HrMaxSource::Observed));
        for (set_by, expected) in [
            (SetBy::Manual, HrMaxSource::Manual),
            (SetBy::Measured, HrMaxSource::Measured),
        ] {
            let set = Profile {
                hr_max: Some((158, set_by)),
                ..observed.clone()
            };
            assert_eq!(source(Some(&set)), (158, expected));
        }
    }

    #[test]
    fn effort_points_weigh_minutes_by_zone_and_round_down_to_a_tenth() {
        let model = HeartModel::default();
        // 1 min 5 s in zone 4 and 30 s in zone 5: 65/60 + 2 x 30/60 = 2.0833 -> 2.0
        assert_eq!(model.effort_points(&[0, 0, 0, 65_000, 30_000]), 2.0);
        assert_eq!(model.effort_points(&[0, 0, 0, 5_990, 0]), 0.0);
        assert_eq!(model.effort_points(&[0, 0, 0, 6_000, 0]), 0.1);
        assert_eq!(model.effort_points(&[60_000; 5]), 3.0);
        // 1/2/3/4/4 a minute by zone: one minute in each is 14.
        let by_zone = HeartModel {
            effort_hundredths: [100, 200, 300, 400, 400],
            ..model
        };
        assert_eq!(by_zone.effort_points(&[60_000; 5]), 14.0);
        // Fractions of a point: 0.25 a minute for 2 minutes 24 s is 0.6.
        let quarter = HeartModel {
            effort_hundredths: [25, 0, 0, 0, 0],
            ..model
        };
        assert_eq!(quarter.effort_points(&[144_000, 0, 0, 0, 0]), 0.6);
    }

    fn sustained(samples: &[(i64, u16)]) -> Option<u16> {
        let mut s = Sustained::default();
        for (time, bpm) in samples {
            s.push(*time, *bpm, 5_000, 30_000);
        }
        s.best()
    }

    #[test]
    fn a_raise_needs_the_full_time_without_a_gap() {
        // Every 5 s at 195-200 for 30 s: the lowest of the stretch, 195.
        let run: Vec<(i64, u16)> = (0..=6)
            .map(|i| (i * 5_000, 200 - (i % 2) as u16 * 5))
            .collect();
        assert_eq!(sustained(&run), Some(195));
        // 25 s is not enough.
        assert_eq!(sustained(&run[..6]), None);
        // A gap of 6 s in the middle breaks it.
        let mut gapped = run.clone();
        for sample in gapped.iter_mut().skip(3) {
            sample.0 += 1_000;
        }
        assert_eq!(sustained(&gapped), None);
        // The best stretch wins: a lower long one, then a higher one.
        let mut two: Vec<(i64, u16)> = (0..=6).map(|i| (i * 5_000, 185)).collect();
        two.extend((0..=6).map(|i| (100_000 + i * 5_000, 198)));
        assert_eq!(sustained(&two), Some(198));
        // A dip inside the only 30 s stretch is its lowest sample.
        let dip: Vec<(i64, u16)> = (0..=6)
            .map(|i| (i * 5_000, if i == 3 { 170 } else { 200 }))
            .collect();
        assert_eq!(sustained(&dip), Some(170));
    }

    #[test]
    fn a_raise_is_capped_and_never_over_a_maximum_set_by_hand() {
        let formula = member(163, HrMaxSource::Formula);
        assert_eq!(formula.raised(Some(168)), Some(168));
        assert_eq!(formula.raised(Some(190)), Some(173));
        assert_eq!(formula.raised(Some(163)), None);
        assert_eq!(formula.raised(None), None);
        assert_eq!(
            member(190, HrMaxSource::Default).raised(Some(195)),
            Some(195)
        );
        assert_eq!(
            member(170, HrMaxSource::Observed).raised(Some(175)),
            Some(175)
        );
        assert_eq!(member(160, HrMaxSource::Manual).raised(Some(190)), None);
        assert_eq!(member(160, HrMaxSource::Measured).raised(Some(190)), None);
    }

    #[test]
    fn parts_appended_find_stretches_across_them() {
        let samples: Vec<(i64, u16)> = (0..40)
            .map(|i| (i * 4_000, 150 + ((i * 7) % 40) as u16))
            .collect();
        let whole = sustained(&samples);
        for cut in [1, 3, 7, 8, 20, 39] {
            let (a, b) = samples.split_at(cut);
            let mut first = Sustained::default();
            for (t, bpm) in a {
                first.push(*t, *bpm, 5_000, 30_000);
            }
            let mut second = Sustained::default();
            for (t, bpm) in b {
                second.push(*t, *bpm, 5_000, 30_000);
            }
            first.append(second, 5_000, 30_000);
            assert_eq!(first.best(), whole, "cut at {cut}");
        }
    }

    #[test]
    fn bpm_time_keeps_time_at_each_whole_bpm() {
        let mut time = BpmTime::default();
        time.add(120, 4_000);
        time.add(120, 1_000);
        time.add(25, 2_000);
        time.add(180, 0);
        assert_eq!(time.iter().collect::<Vec<_>>(), [(25, 2_000), (120, 5_000)]);
        let model = HeartModel::default();
        assert_eq!(
            member(190, HrMaxSource::Default).zone_ms(&time, &model),
            [0, 5_000, 0, 0, 0]
        );
    }
}
