//! One class's aggregate state: what each member did, minute by minute, and the results built
//! from it. Pure logic, no I/O: the partition state ([`super::partition`]) decides which events
//! reach it (not duplicates, not late).

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::Datelike;
use serde::{Deserialize, Serialize};

use super::chain::{self, Block, Chain};
use super::energy::{self, Work};
use super::heart::{whole_bpm, BpmTime, Personal, Sustained};
use super::output::{
    leaders, CardioSummary, ClassMinute, ClassResult, ClassSummary, MemberSummary, Positions,
    Standings, TypeCounts,
};
use super::Rules;
use crate::event::{EventType, IdSet, PerformanceEvent};
use crate::profile::Profile;

/// Length of a class-minute window.
pub const MINUTE_MS: i64 = 60_000;
/// Width of the event-time buckets the duplicate check keeps ids in: a check probes the
/// buckets within the lateness horizon, and whole buckets are dropped once past it. Wider
/// buckets probe fewer sets but keep ids longer (measured: 1 minute keeps 800 classes in
/// about 150 MB at 2.7M events/s; 5 minutes costs 70% more memory).
pub const DEDUP_BUCKET_MS: i64 = MINUTE_MS;

/// Count, sum, min and max of a measurement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    /// Values seen.
    pub count: u64,
    /// Their sum.
    pub sum: f64,
    /// Smallest (meaningless when `count` is 0).
    pub min: f64,
    /// Largest (meaningless when `count` is 0).
    pub max: f64,
}

impl Stat {
    /// Adds a value.
    pub fn add(&mut self, value: f64) {
        if self.count == 0 {
            self.min = value;
            self.max = value;
        } else {
            self.min = self.min.min(value);
            self.max = self.max.max(value);
        }
        self.count += 1;
        self.sum += value;
    }

    /// The mean, if any value was seen.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }

    /// The smallest value, if any.
    pub fn min(&self) -> Option<f64> {
        (self.count > 0).then_some(self.min)
    }

    /// The largest value, if any.
    pub fn max(&self) -> Option<f64> {
        (self.count > 0).then_some(self.max)
    }

    /// Adds the values `other` saw: counts and sums add, min and max combine.
    pub fn merge(&mut self, other: &Stat) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *other;
            return;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Max minus min of a cumulative counter (0 when unseen).
    pub fn span(&self) -> f64 {
        if self.count > 0 {
            self.max - self.min
        } else {
            0.0
        }
    }
}

/// Heart-rate state of one member, kept in a form that does not need the member's maximum:
/// time at each whole bpm ([`BpmTime`]) and the highest rate sustained ([`Sustained`]), so the
/// zones of whatever maximum applies are cut when a result is rendered. Samples wait in
/// `pending`, ordered by event time (then event-id hash), until nothing can arrive before them
/// any more; then they are *sealed*: each adds the gap to the previous sealed sample at its
/// bpm. So out-of-order arrival within the allowed lateness gives exactly the time of the
/// sorted samples.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HeartRate {
    /// Every counted sample's bpm.
    pub bpm: Stat,
    /// Samples not yet sealed, by (event time, event-id hash): ties in time are broken by
    /// the hash, the same way in every run.
    pub pending: BTreeMap<(i64, u128), f64>,
    /// Event time and bpm of the first sealed sample: it counted no gap, having no sample
    /// before it here. A hand-off ([`HeartRate::merge`]) gives it the gap to the samples of
    /// the other part.
    pub first_sealed: Option<(i64, f64)>,
    /// Event time of the last sealed sample.
    pub last_sealed_ms: Option<i64>,
    /// Milliseconds at each whole bpm, from sealed samples.
    pub at_bpm: BpmTime,
    /// Milliseconds in each zone counted by a build whose state held zones of the default
    /// maximum instead of time at each bpm (a checkpoint of format 5 or older).
    pub fixed_zone_ms: Option<[i64; 5]>,
    /// The highest rate sustained, from sealed samples.
    pub sustained: Sustained,
    /// The newest sample: (event time, event-id hash, bpm).
    pub latest: Option<(i64, u128, f64)>,
}

impl HeartRate {
    fn add(&mut self, time_ms: i64, id_hash: u128, bpm: f64) {
        self.bpm.add(bpm);
        self.pending.insert((time_ms, id_hash), bpm);
        if self
            .latest
            .is_none_or(|(time, hash, _)| (time, hash) < (time_ms, id_hash))
        {
            self.latest = Some((time_ms, id_hash, bpm));
        }
    }

    /// Seals every pending sample older than `limit_ms`.
    pub fn seal_before(&mut self, limit_ms: i64, rules: &Rules) {
        while let Some(entry) = self.pending.first_entry() {
            if entry.key().0 >= limit_ms {
                break;
            }
            let ((time_ms, _), bpm) = entry.remove_entry();
            self.first_sealed.get_or_insert((time_ms, bpm));
            accumulate(
                &mut self.at_bpm,
                &mut self.last_sealed_ms,
                time_ms,
                bpm,
                rules,
            );
            self.sustained.push(
                time_ms,
                whole_bpm(bpm),
                rules.hr_max_gap_ms,
                rules.heart.raise_after_ms,
            );
        }
    }

    /// Takes in the same member's samples counted elsewhere: the other part of a class whose
    /// key moved to another partition. Each side's sealed samples are one block, known by its
    /// first sample, its last time, its time at each bpm and its sustained rate; blocks and
    /// pending samples are laid out in time order and the chain runs across them, a block's
    /// first sample getting the (capped) gap to what precedes it. Everything up to the end of
    /// the last block is sealed; later samples stay pending. Exact unless a sample or block of
    /// one side falls inside the other's block (a device that switched partitions once never
    /// does that); returns whether it was exact.
    pub fn merge(&mut self, mut other: HeartRate, rules: &Rules) -> bool {
        let mut blocks: Vec<Block<HeartSums>> = [self.take_sealed(), other.take_sealed()]
            .into_iter()
            .flatten()
            .collect();
        blocks.sort_by_key(|b| (b.first_ms, b.last_ms));
        self.bpm.merge(&other.bpm);
        self.pending.extend(other.pending);
        // The newer by (event time, id hash); on a tie, this side's (the last maximum).
        self.latest = [other.latest, self.latest]
            .into_iter()
            .flatten()
            .max_by_key(|(time, hash, _)| (*time, *hash));
        self.fixed_zone_ms = match (self.fixed_zone_ms, other.fixed_zone_ms) {
            (Some(mut mine), Some(theirs)) => {
                for (total, ms) in mine.iter_mut().zip(theirs) {
                    *total += ms;
                }
                Some(mine)
            }
            (mine, theirs) => mine.or(theirs),
        };
        let inside = |time: i64, b: &Block<HeartSums>| b.first_ms < time && time < b.last_ms;
        let blocks_overlap = blocks.len() == 2 && blocks[1].first_ms < blocks[0].last_ms;
        let sample_inside = self
            .pending
            .keys()
            .any(|(time, _)| blocks.iter().any(|b| inside(*time, b)));
        chain::interleave(self, blocks, rules);
        !blocks_overlap && !sample_inside
    }

    /// The sealed samples as one block, leaving none sealed.
    fn take_sealed(&mut self) -> Option<Block<HeartSums>> {
        let first = self.first_sealed.take();
        let last_ms = self.last_sealed_ms.take();
        let (at_bpm, sustained) = (
            std::mem::take(&mut self.at_bpm),
            std::mem::take(&mut self.sustained),
        );
        first.map(|(first_ms, first_bpm)| Block {
            first_ms,
            last_ms: last_ms.unwrap_or(first_ms),
            sums: HeartSums {
                first_bpm,
                at_bpm,
                sustained,
            },
        })
    }

    /// Time at each bpm as if every pending sample were sealed now (live values).
    pub fn at_bpm_now(&self, rules: &Rules) -> BpmTime {
        let mut at_bpm = self.at_bpm.clone();
        let mut last = self.last_sealed_ms;
        for ((time_ms, _), bpm) in &self.pending {
            accumulate(&mut at_bpm, &mut last, *time_ms, *bpm, rules);
        }
        at_bpm
    }

    /// Time at each bpm of the sealed samples when `sealed_only`, else as if every pending
    /// sample were sealed now.
    pub fn time_at_bpm(&self, rules: &Rules, sealed_only: bool) -> Cow<'_, BpmTime> {
        if sealed_only {
            Cow::Borrowed(&self.at_bpm)
        } else {
            Cow::Owned(self.at_bpm_now(rules))
        }
    }

    /// Time in each zone for `member`'s maximum: of the sealed samples when `sealed_only`,
    /// else as if every pending sample were sealed now.
    pub fn zone_ms(&self, member: &Personal, rules: &Rules, sealed_only: bool) -> [i64; 5] {
        self.zone_ms_of(&self.time_at_bpm(rules, sealed_only), member, rules)
    }

    /// Time in each zone for `member`'s maximum, from `at_bpm` (of [`Self::time_at_bpm`])
    /// and the time an older build held as zones only.
    pub fn zone_ms_of(&self, at_bpm: &BpmTime, member: &Personal, rules: &Rules) -> [i64; 5] {
        let mut zone_ms = member.zone_ms(at_bpm, &rules.heart);
        for (total, ms) in zone_ms
            .iter_mut()
            .zip(self.fixed_zone_ms.unwrap_or_default())
        {
            *total += ms;
        }
        zone_ms
    }
}

/// A member's sealed heart-rate samples taken whole ([`HeartRate::merge`]).
pub struct HeartSums {
    first_bpm: f64,
    at_bpm: BpmTime,
    sustained: Sustained,
}

impl Chain for HeartRate {
    type Sums = HeartSums;
    type Context = Rules;

    fn first_pending_ms(&self) -> Option<i64> {
        self.pending.first_key_value().map(|((time, _), _)| *time)
    }

    fn seal_through(&mut self, time_ms: i64, rules: &Rules) {
        self.seal_before(time_ms + 1, rules);
    }

    fn append(&mut self, block: Block<HeartSums>, rules: &Rules) {
        if let Some(previous) = self.last_sealed_ms {
            self.at_bpm.add(
                whole_bpm(block.sums.first_bpm),
                (block.first_ms - previous).clamp(0, rules.hr_max_gap_ms),
            );
        }
        self.at_bpm.merge(&block.sums.at_bpm);
        self.sustained.append(
            block.sums.sustained,
            rules.hr_max_gap_ms,
            rules.heart.raise_after_ms,
        );
        self.first_sealed
            .get_or_insert((block.first_ms, block.sums.first_bpm));
        chain::reach(&mut self.last_sealed_ms, block.last_ms);
    }
}

impl HeartRate {
    /// Rough heap bytes of the time at each bpm and the sustained-rate window.
    fn approx_bytes(&self) -> usize {
        self.at_bpm.approx_bytes() + self.sustained.approx_bytes()
    }
}

fn accumulate(at_bpm: &mut BpmTime, last: &mut Option<i64>, time_ms: i64, bpm: f64, rules: &Rules) {
    // Never negative: sealing goes in time order (a merge that had to interleave parts
    // counts nothing for a step back).
    let duration = last.map_or(0, |previous| {
        (time_ms - previous).clamp(0, rules.hr_max_gap_ms)
    });
    at_bpm.add(whole_bpm(bpm), duration);
    *last = Some(time_ms);
}

/// A treadmill, rower or bike of one member.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Cardio {
    /// Events counted.
    pub samples: u64,
    /// Cumulative distance readings.
    pub distance_m: Stat,
    /// Cumulative energy readings.
    pub calories: Stat,
    /// Treadmill speed.
    pub speed_kph: Stat,
    /// Rower and bike power.
    pub watts: Stat,
    /// Bike cadence.
    pub cadence_rpm: Stat,
    /// Rower stroke rate.
    pub stroke_rate_spm: Stat,
    /// Smallest and largest distance reading per event-time minute (for distance per minute).
    pub minute_distance: BTreeMap<i64, (f64, f64)>,
    /// The readings chained in time: moving time and work.
    pub work: Work,
}

impl Cardio {
    fn add(&mut self, event: &PerformanceEvent, id_hash: u128, minute_ms: i64) {
        let metrics = &event.metrics;
        self.samples += 1;
        self.work.add(event.event_time_ms, id_hash, metrics.watts);
        for (stat, value) in [
            (&mut self.calories, metrics.calories),
            (&mut self.speed_kph, metrics.speed_kph),
            (&mut self.watts, metrics.watts),
            (&mut self.cadence_rpm, metrics.cadence_rpm),
            (&mut self.stroke_rate_spm, metrics.stroke_rate_spm),
        ] {
            if let Some(value) = value {
                stat.add(value);
            }
        }
        if let Some(distance) = metrics.distance_m {
            self.distance_m.add(distance);
            let range = self
                .minute_distance
                .entry(minute_ms)
                .or_insert((distance, distance));
            range.0 = range.0.min(distance);
            range.1 = range.1.max(distance);
        }
    }

    fn merge(&mut self, other: Cardio, rules: &Rules) {
        self.samples += other.samples;
        for (mine, theirs) in [
            (&mut self.distance_m, &other.distance_m),
            (&mut self.calories, &other.calories),
            (&mut self.speed_kph, &other.speed_kph),
            (&mut self.watts, &other.watts),
            (&mut self.cadence_rpm, &other.cadence_rpm),
            (&mut self.stroke_rate_spm, &other.stroke_rate_spm),
        ] {
            mine.merge(theirs);
        }
        for (minute_ms, (low, high)) in &other.minute_distance {
            let range = self
                .minute_distance
                .entry(*minute_ms)
                .or_insert((*low, *high));
            range.0 = range.0.min(*low);
            range.1 = range.1.max(*high);
        }
        self.work.merge(other.work, rules.hr_max_gap_ms);
    }

    /// Distance gained in `minute_ms`: its largest reading minus the largest reading of any
    /// earlier minute (or its own smallest, for the first), never negative. Over all minutes
    /// these add up to the class distance of a device whose counter only grows.
    pub fn distance_in_minute(&self, minute_ms: i64) -> f64 {
        let Some((low, high)) = self.minute_distance.get(&minute_ms) else {
            return 0.0;
        };
        let before = self
            .minute_distance
            .range(..minute_ms)
            .map(|(_, (_, high))| *high)
            .fold(None, |acc: Option<f64>, high| {
                Some(acc.map_or(high, |a| a.max(high)))
            });
        (high - before.unwrap_or(*low)).max(0.0)
    }

    /// Work in kJ and moving time: of the sealed readings when `sealed_only`, else as if
    /// every pending one were sealed now; no work without power readings or when a restored
    /// state missed readings.
    fn work(&self, rules: &Rules, sealed_only: bool) -> (Option<f64>, Option<i64>) {
        if self.work.unchained > 0 {
            return (None, None);
        }
        let (joules, moving_ms) = if sealed_only {
            (self.work.joules, self.work.moving_ms)
        } else {
            self.work.now(rules.hr_max_gap_ms)
        };
        let powered = self.watts.count > 0;
        (powered.then(|| energy::kilojoules(joules)), Some(moving_ms))
    }

    fn summary(&self, rules: &Rules, sealed_only: bool, rower: bool) -> Option<CardioSummary> {
        let (work_kj, moving_ms) = self.work(rules, sealed_only);
        let distance_m = self.distance_m.span();
        (self.samples > 0).then(|| CardioSummary {
            events: self.samples,
            distance_m: self.distance_m.span(),
            calories: self.calories.span(),
            avg_speed_kph: self.speed_kph.mean(),
            max_speed_kph: self.speed_kph.max(),
            avg_watts: self.watts.mean(),
            max_watts: self.watts.max(),
            avg_cadence_rpm: self.cadence_rpm.mean(),
            max_cadence_rpm: self.cadence_rpm.max(),
            avg_stroke_rate_spm: self.stroke_rate_spm.mean(),
            max_stroke_rate_spm: self.stroke_rate_spm.max(),
            work_kj,
            split_500m_s: moving_ms
                .filter(|_| rower)
                .and_then(|ms| energy::split_500m_s(ms, distance_m)),
        })
    }
}

/// Free-weights sets of one member.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Weights {
    /// Sets (events).
    pub sets: u64,
    /// Repetitions over all sets.
    pub reps_total: u64,
    /// Sum of reps x weight_kg.
    pub volume_kg: f64,
}

/// One member in one class.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MemberState {
    /// Order of first appearance in the class (names the member in minute windows).
    pub index: u32,
    /// Events counted, by type (in [`EventType::ALL`] order).
    pub events: [u64; 5],
    /// Heart rate.
    pub heart_rate: HeartRate,
    /// Treadmill, rower, bike (in that order).
    pub cardio: [Cardio; 3],
    /// Free weights.
    pub weights: Weights,
    /// The member's profile, once bound (`Some(Profile::default())`: none exists); from then
    /// on it is part of the state, so every result of the class uses the same one.
    pub profile: Option<Profile>,
}

fn cardio_index(event_type: EventType) -> Option<usize> {
    match event_type {
        EventType::Treadmill => Some(0),
        EventType::Rower => Some(1),
        EventType::Bike => Some(2),
        EventType::HeartRate | EventType::FreeWeights => None,
    }
}

fn type_index(event_type: EventType) -> usize {
    match event_type {
        EventType::HeartRate => 0,
        EventType::Treadmill => 1,
        EventType::Rower => 2,
        EventType::Bike => 3,
        EventType::FreeWeights => 4,
    }
}

impl MemberState {
    fn add(&mut self, event: &PerformanceEvent, id_hash: u128, minute_ms: i64) {
        self.events[type_index(event.event_type)] += 1;
        let metrics = &event.metrics;
        match event.event_type {
            EventType::HeartRate => {
                if let Some(bpm) = metrics.bpm {
                    self.heart_rate.add(event.event_time_ms, id_hash, bpm);
                }
            }
            EventType::FreeWeights => {
                let reps = u64::from(metrics.reps.unwrap_or(0));
                self.weights.sets += 1;
                self.weights.reps_total += reps;
                self.weights.volume_kg += reps as f64 * metrics.weight_kg.unwrap_or(0.0);
            }
            other => {
                if let Some(index) = cardio_index(other) {
                    self.cardio[index].add(event, id_hash, minute_ms);
                }
            }
        }
    }

    /// Takes in what the member did in another part of the class; returns whether the heart
    /// rate zones merged exactly ([`HeartRate::merge`]).
    fn merge(&mut self, other: MemberState, rules: &Rules) -> bool {
        for (mine, theirs) in self.events.iter_mut().zip(other.events) {
            *mine += theirs;
        }
        for (mine, theirs) in self.cardio.iter_mut().zip(other.cardio) {
            mine.merge(theirs, rules);
        }
        self.weights.sets += other.weights.sets;
        self.weights.reps_total += other.weights.reps_total;
        self.weights.volume_kg += other.weights.volume_kg;
        if self.profile.is_none() {
            self.profile = other.profile;
        }
        self.heart_rate.merge(other.heart_rate, rules)
    }

    /// Total distance over the member's machines.
    fn distance_m(&self) -> f64 {
        self.cardio.iter().map(|c| c.distance_m.span()).sum()
    }
}

/// One event-time minute of a class.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Minute {
    /// Events counted.
    pub events: u64,
    /// Members with at least one event, by [`MemberState::index`], sorted.
    pub members: Vec<u32>,
    /// Heart-rate samples.
    pub bpm: Stat,
}

/// The event ids (fingerprints) a class wrote to the lake, held in memory: those counted
/// within the lateness horizon by event-time bucket ([`DEDUP_BUCKET_MS`]), and the *retired*
/// ones (counted ids whose bucket left the horizon, late events written) until they go to a
/// sealed segment ([`super::segment`]). One index over all of them: judging an event is one
/// probe however many buckets the horizon spans. Serialised as the buckets and the retired
/// ids; the index is rebuilt when they are read.
#[derive(Clone, Default)]
pub struct SeenIds {
    buckets: BTreeMap<i64, Vec<u128>>,
    retired: Vec<u128>,
    index: IdSet,
}

impl SeenIds {
    /// Ids counted by event-time bucket (a checkpoint of format 4 held only these).
    pub fn from_buckets(buckets: BTreeMap<i64, Vec<u128>>) -> SeenIds {
        let mut seen = SeenIds::default();
        for (bucket_ms, ids) in buckets {
            for id in ids {
                seen.insert(bucket_ms, id);
            }
        }
        seen
    }

    /// Whether `id` is held, in any bucket or retired.
    pub fn contains(&self, id: u128) -> bool {
        self.index.contains(&id)
    }

    /// Holds `id` in the bucket starting at `bucket_ms`, unless it is held already.
    pub fn insert(&mut self, bucket_ms: i64, id: u128) {
        if self.index.insert(id) {
            self.buckets.entry(bucket_ms).or_default().push(id);
        }
    }

    /// Holds `id` as retired (outside every bucket), unless it is held already.
    pub fn insert_retired(&mut self, id: u128) {
        if self.index.insert(id) {
            self.retired.push(id);
        }
    }

    /// Adds every id `other` holds, each where `other` held it.
    pub fn merge(&mut self, other: SeenIds) {
        for (bucket_ms, ids) in other.buckets {
            for id in ids {
                self.insert(bucket_ms, id);
            }
        }
        for id in other.retired {
            self.insert_retired(id);
        }
    }

    /// Retires the buckets that end at or before `limit_ms`: their ids stay held until
    /// [`SeenIds::take_retired`].
    pub fn retire_ending_by(&mut self, limit_ms: i64) {
        while let Some(bucket) = self.buckets.first_entry() {
            if bucket.key().saturating_add(DEDUP_BUCKET_MS) > limit_ms {
                break;
            }
            self.retired.append(&mut bucket.remove());
        }
    }

    /// Lets go of a retired id that a sealed segment holds already (a late event found to be
    /// a duplicate), so that it is not sealed a second time.
    pub fn forget_retired(&mut self, id: u128) {
        // Searched from the end: the id is one of the last retired.
        if let Some(at) = self.retired.iter().rposition(|&held| held == id) {
            self.retired.remove(at);
            self.index.remove(&id);
        }
    }

    /// Retired ids held.
    pub fn retired_len(&self) -> usize {
        self.retired.len()
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Lets go of the retired ids (for a segment), sorted.
    pub fn take_retired(&mut self) -> Vec<u128> {
        let mut retired = std::mem::take(&mut self.retired);
        for id in &retired {
            self.index.remove(id);
        }
        retired.sort_unstable();
        retired
    }

    /// Lets go of every id (for a segment), sorted.
    pub fn take_all(&mut self) -> Vec<u128> {
        let mut ids = std::mem::take(&mut self.retired);
        for (_, mut bucket) in std::mem::take(&mut self.buckets) {
            ids.append(&mut bucket);
        }
        self.index.clear();
        ids.sort_unstable();
        ids
    }

    /// Bytes held, roughly: the ids and the index's slots.
    pub fn approx_bytes(&self) -> usize {
        let buckets: usize = self
            .buckets
            .values()
            .map(|ids| 64 + ids.capacity() * 16)
            .sum();
        buckets + self.retired.capacity() * 16 + self.index.capacity() * 17
    }
}

/// The buckets and the retired ids, each sorted: the same ids print the same in whatever
/// order they came.
impl std::fmt::Debug for SeenIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sorted = |ids: &Vec<u128>| {
            let mut ids = ids.clone();
            ids.sort_unstable();
            ids
        };
        let buckets: BTreeMap<&i64, Vec<u128>> = self
            .buckets
            .iter()
            .map(|(ms, ids)| (ms, sorted(ids)))
            .collect();
        f.debug_struct("SeenIds")
            .field("buckets", &buckets)
            .field("retired", &sorted(&self.retired))
            .finish()
    }
}

/// The same ids in the same places, in whatever order they came.
impl PartialEq for SeenIds {
    fn eq(&self, other: &SeenIds) -> bool {
        format!("{self:?}") == format!("{other:?}")
    }
}

/// The buckets and the retired ids, each list of ids as one byte string of 16 bytes an id
/// (little-endian): fingerprints are random, so a variable-length integer would take 19 bytes
/// of most of them and a loop per byte to write.
impl Serialize for SeenIds {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let buckets: BTreeMap<i64, IdBytes> = self
            .buckets
            .iter()
            .map(|(bucket_ms, ids)| (*bucket_ms, IdBytes::of(ids)))
            .collect();
        (buckets, IdBytes::of(&self.retired)).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SeenIds {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<SeenIds, D::Error> {
        let (buckets, retired) = <(BTreeMap<i64, ReadIds>, ReadIds)>::deserialize(deserializer)?;
        Ok(SeenIds::from_parts(
            buckets
                .into_iter()
                .map(|(bucket_ms, ids)| (bucket_ms, ids.0))
                .collect(),
            retired.0,
        ))
    }
}

impl SeenIds {
    /// Ids counted by event-time bucket and retired ones, as a checkpoint holds them.
    pub fn from_parts(buckets: BTreeMap<i64, Vec<u128>>, retired: Vec<u128>) -> SeenIds {
        let mut seen = SeenIds::from_buckets(buckets);
        for id in retired {
            seen.insert_retired(id);
        }
        seen
    }
}

/// Ids as one byte string, 16 bytes (little-endian) an id, to be written.
struct IdBytes(Vec<u8>);

impl IdBytes {
    fn of(ids: &[u128]) -> IdBytes {
        let mut bytes = Vec::with_capacity(ids.len() * 16);
        for id in ids {
            bytes.extend_from_slice(&id.to_le_bytes());
        }
        IdBytes(bytes)
    }
}

impl Serialize for IdBytes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

/// Ids read from an [`IdBytes`] string.
struct ReadIds(Vec<u128>);

impl<'de> Deserialize<'de> for ReadIds {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<ReadIds, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ReadIds;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("event id fingerprints of 16 bytes each")
            }
            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<ReadIds, E> {
                if bytes.len() % 16 != 0 {
                    return Err(E::invalid_length(bytes.len(), &self));
                }
                Ok(ReadIds(
                    bytes
                        .chunks_exact(16)
                        .map(|id| u128::from_le_bytes(id.try_into().expect("chunks of 16")))
                        .collect(),
                ))
            }
        }
        deserializer.deserialize_bytes(Visitor)
    }
}

/// Everything aggregated about one class so far.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassState {
    /// The studio.
    pub studio_id: Box<str>,
    /// The class.
    pub class_id: Box<str>,
    /// Largest event time seen, each capped at its arrival plus the allowed clock skew.
    pub max_time_ms: i64,
    /// Earliest and latest event time counted.
    pub first_event_ms: i64,
    /// Latest event time counted.
    pub last_event_ms: i64,
    /// Fingerprints of the event ids written for the class and still held here
    /// ([`SeenIds`]), for duplicates; a bucket is retired once it ends before the watermark
    /// minus the allowed lateness, and retired ids go to sealed segments.
    pub seen: SeenIds,
    /// Whether ids of the class may be held outside this state: in segments sealed from it,
    /// or on another partition that counts or counted a part of it. A late event not found
    /// here is then looked for in the class's segments ([`super::segment`]).
    pub stored_ids: bool,
    /// Members by id.
    pub members: BTreeMap<Box<str>, MemberState>,
    /// Minute windows by start time.
    pub minutes: BTreeMap<i64, Minute>,
    /// Source positions of the first and last event counted.
    pub first_offset: u64,
    /// Position of the last event counted.
    pub last_offset: u64,
    /// Wall-clock time the class last received an event (for the processing-time idle rule).
    pub last_seen_wall_ms: i64,
    /// The partition (index) that finalises this class, when it is not this one: the class
    /// began there and its key moved here (partitions were added). This part is handed to it
    /// instead of being finalised ([`super::directory`]).
    pub home: Option<u32>,
    /// Whether an event was counted (or a profile bound) since live values were last written
    /// to the table and the lake's live documents.
    #[serde(skip)]
    pub changed: bool,
    /// Whether an event was counted since the class's last live record: a record's values
    /// follow from the events up to its version.
    #[serde(skip)]
    pub unpublished: bool,
}

impl ClassState {
    /// An empty class.
    pub fn new(studio_id: &str, class_id: &str, wall_ms: i64) -> ClassState {
        ClassState {
            studio_id: studio_id.into(),
            class_id: class_id.into(),
            max_time_ms: i64::MIN,
            first_event_ms: i64::MAX,
            last_event_ms: i64::MIN,
            seen: Default::default(),
            stored_ids: false,
            members: BTreeMap::new(),
            minutes: BTreeMap::new(),
            first_offset: u64::MAX,
            last_offset: 0,
            last_seen_wall_ms: wall_ms,
            home: None,
            changed: false,
            unpublished: false,
        }
    }

    /// The watermark: newest (capped) event time minus the delay.
    pub fn watermark_ms(&self, rules: &Rules) -> i64 {
        self.max_time_ms.saturating_sub(rules.watermark_delay_ms)
    }

    /// Events older than this are late.
    pub fn lateness_limit_ms(&self, rules: &Rules) -> i64 {
        self.watermark_ms(rules)
            .saturating_sub(rules.allowed_lateness_ms)
    }

    /// Moves the watermark for an event, whatever is decided about it.
    pub fn observe(&mut self, event: &PerformanceEvent, rules: &Rules) {
        let capped = event
            .event_time_ms
            .min(event.arrival_ms.saturating_add(rules.max_clock_skew_ms));
        self.max_time_ms = self.max_time_ms.max(capped);
    }

    /// Counts an event that is neither a duplicate nor late.
    pub fn add(&mut self, event: &PerformanceEvent, id_hash: u128) {
        self.changed = true;
        self.unpublished = true;
        let bucket_ms = event.event_time_ms.div_euclid(DEDUP_BUCKET_MS) * DEDUP_BUCKET_MS;
        self.seen.insert(bucket_ms, id_hash);
        let minute_ms = event.event_time_ms.div_euclid(MINUTE_MS) * MINUTE_MS;
        self.first_event_ms = self.first_event_ms.min(event.event_time_ms);
        self.last_event_ms = self.last_event_ms.max(event.event_time_ms);
        self.first_offset = self.first_offset.min(event.offset);
        self.last_offset = self.last_offset.max(event.offset);
        let index = match self.members.get_mut(&*event.member_id) {
            Some(member) => {
                member.add(event, id_hash, minute_ms);
                member.index
            }
            None => {
                let mut member = MemberState {
                    index: self.members.len() as u32,
                    ..MemberState::default()
                };
                member.add(event, id_hash, minute_ms);
                let index = member.index;
                self.members.insert(Box::from(&*event.member_id), member);
                index
            }
        };
        let minute = self.minutes.entry(minute_ms).or_default();
        minute.events += 1;
        if let Err(at) = minute.members.binary_search(&index) {
            minute.members.insert(at, index);
        }
        if let Some(bpm) = event.metrics.bpm {
            minute.bpm.add(bpm);
        }
    }

    /// Takes in another part of the same class (counted on another partition, handed over
    /// when its key moved): every sum, count, range and event id of both, members matched by
    /// id. Returns whether it was exact: the heart-rate zones are unless one member's samples
    /// of the two parts interleave in time ([`HeartRate::merge`]). The positions stay this
    /// part's.
    pub fn merge(&mut self, other: ClassState, rules: &Rules) -> bool {
        self.changed = true;
        self.unpublished = true;
        self.max_time_ms = self.max_time_ms.max(other.max_time_ms);
        self.first_event_ms = self.first_event_ms.min(other.first_event_ms);
        self.last_event_ms = self.last_event_ms.max(other.last_event_ms);
        self.last_seen_wall_ms = self.last_seen_wall_ms.max(other.last_seen_wall_ms);
        self.seen.merge(other.seen);
        self.stored_ids |= other.stored_ids;
        // Members keep this part's indexes; the other's new members follow, in their order.
        let mut theirs: Vec<(Box<str>, MemberState)> = other.members.into_iter().collect();
        theirs.sort_by_key(|(_, member)| member.index);
        let mut index_of = BTreeMap::new();
        let mut exact = true;
        for (member_id, mut member) in theirs {
            let their_index = member.index;
            let next = self.members.len() as u32;
            match self.members.get_mut(&member_id) {
                Some(mine) => {
                    index_of.insert(their_index, mine.index);
                    exact &= mine.merge(member, rules);
                }
                None => {
                    index_of.insert(their_index, next);
                    member.index = next;
                    self.members.insert(member_id, member);
                }
            }
        }
        for (start_ms, minute) in other.minutes {
            let mine = self.minutes.entry(start_ms).or_default();
            mine.events += minute.events;
            mine.bpm.merge(&minute.bpm);
            for index in minute.members {
                let index = index_of.get(&index).copied().unwrap_or(index);
                if let Err(at) = mine.members.binary_search(&index) {
                    mine.members.insert(at, index);
                }
            }
        }
        exact
    }

    /// Seals heart-rate samples and retires event ids older than the lateness limit:
    /// nothing older is counted any more, so only a late copy can match them.
    pub fn compact(&mut self, rules: &Rules) {
        let limit = self.lateness_limit_ms(rules);
        for member in self.members.values_mut() {
            member.heart_rate.seal_before(limit, rules);
            for cardio in &mut member.cardio {
                cardio.work.seal_before(limit, rules.hr_max_gap_ms);
            }
        }
        self.seen.retire_ending_by(limit);
    }

    /// Seals every heart-rate sample (the class is final).
    pub fn seal_all(&mut self, rules: &Rules) {
        for member in self.members.values_mut() {
            member.heart_rate.seal_before(i64::MAX, rules);
            for cardio in &mut member.cardio {
                cardio.work.seal_before(i64::MAX, rules.hr_max_gap_ms);
            }
        }
    }

    /// The results: class summary, member summaries, minute windows.
    pub fn result(&self, rules: &Rules, partition: &str, is_final: bool) -> ClassResult {
        let year = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(self.first_event_ms)
            .map_or(1970, |time| time.year());
        let mut members = Vec::with_capacity(self.members.len());
        for (member_id, member) in &self.members {
            let profile = member.profile.as_ref();
            let personal = rules.heart.personal(profile, year);
            let heart = &member.heart_rate;
            let at_bpm = heart.time_at_bpm(rules, is_final);
            let zone_ms = heart.zone_ms_of(&at_bpm, &personal, rules);
            // The heart-rate energy needs the time at each bpm: none for time an older build
            // held as zones only (such a member has no profile either).
            let energy_known = heart.fixed_zone_ms.is_none();
            let hr = &heart.bpm;
            // The reading now, for live values only: a final result has no "now".
            let current = heart.latest.filter(|_| !is_final).map(|(_, _, bpm)| bpm);
            let [treadmill, rower, bike] = &member.cardio;
            let machines = [
                treadmill.summary(rules, is_final, false),
                rower.summary(rules, is_final, true),
                bike.summary(rules, is_final, false),
            ];
            let work_kj = machines
                .iter()
                .flatten()
                .filter_map(|m| m.work_kj)
                .reduce(|a, b| a + b);
            let [treadmill, rower, bike] = machines;
            members.push(MemberSummary {
                studio_id: self.studio_id.clone(),
                class_id: self.class_id.clone(),
                member_id: member_id.clone(),
                alias: member.profile.as_ref().and_then(|p| p.alias.clone()),
                is_final,
                events: TypeCounts::from_array(member.events),
                hr_samples: hr.count,
                hr_min: hr.min(),
                hr_max: hr.max(),
                hr_avg: hr.mean(),
                hr_max_used: Some(personal.hr_max),
                hr_max_source: Some(personal.source),
                hr_max_observed: personal.raised(heart.sustained.best()).filter(|_| is_final),
                zone_basis: Some(personal.basis),
                hr_pct_avg: hr.mean().map(|bpm| personal.percent(bpm)),
                hr_pct_peak: hr.max().map(|bpm| personal.percent(bpm)),
                hr_current: current,
                hr_pct_current: current.map(|bpm| personal.percent(bpm)),
                zone_current: current
                    .and_then(|bpm| personal.zone(whole_bpm(bpm), &rules.heart))
                    .map(|zone| zone as u8 + 1),
                zone_seconds: zone_ms.map(|ms| ms as f64 / 1000.0),
                effort_points: rules.heart.effort_points(&zone_ms),
                distance_m: member.distance_m(),
                calories: member.cardio.iter().map(|c| c.calories.span()).sum(),
                calories_hr: energy::calories_hr(&at_bpm, &personal, &rules.heart, profile, year)
                    .filter(|_| energy_known),
                trimp: energy::trimp(&at_bpm, &personal, profile).filter(|_| energy_known),
                work_kj,
                profile_missing: energy::missing_fields(profile),
                leaderboard: profile.is_none_or(|p| p.leaderboard),
                treadmill,
                rower,
                bike,
                sets: member.weights.sets,
                reps_total: member.weights.reps_total,
                volume_kg: member.weights.volume_kg,
            });
        }

        let minutes = self
            .minutes
            .iter()
            .map(|(start_ms, minute)| ClassMinute {
                studio_id: self.studio_id.clone(),
                class_id: self.class_id.clone(),
                minute_start_ms: *start_ms,
                is_final,
                events: minute.events,
                members_active: minute.members.len() as u64,
                hr_avg: minute.bpm.mean(),
                distance_m: self
                    .members
                    .values()
                    .flat_map(|m| m.cardio.iter())
                    .map(|c| c.distance_in_minute(*start_ms))
                    .sum(),
            })
            .collect();

        let boards = Standings::of(&members, rules.leaderboard_size);
        let [treadmill, rower, bike] = &boards.distance;
        let mut events = [0u64; 5];
        let mut bpm = Stat::default();
        for member in self.members.values() {
            for (total, n) in events.iter_mut().zip(member.events) {
                *total += n;
            }
            bpm.merge(&member.heart_rate.bpm);
        }
        let summary = ClassSummary {
            studio_id: self.studio_id.clone(),
            class_id: self.class_id.clone(),
            is_final,
            members: members.len() as u64,
            events: TypeCounts::from_array(events),
            first_event_ms: self.first_event_ms,
            last_event_ms: self.last_event_ms,
            hr_samples: bpm.count,
            hr_avg: bpm.mean(),
            zone_seconds: members.iter().fold([0.0; 5], |mut acc, m| {
                for (total, s) in acc.iter_mut().zip(m.zone_seconds) {
                    *total += s;
                }
                acc
            }),
            effort_points: members.iter().map(|m| m.effort_points).sum(),
            distance_m: members.iter().map(|m| m.distance_m).sum(),
            calories: members.iter().map(|m| m.calories).sum(),
            calories_hr: energy::plus_zero_sum(members.iter().filter_map(|m| m.calories_hr)),
            trimp: energy::plus_zero_sum(members.iter().filter_map(|m| m.trimp)),
            work_kj: energy::plus_zero_sum(members.iter().filter_map(|m| m.work_kj)),
            sets: members.iter().map(|m| m.sets).sum(),
            reps_total: members.iter().map(|m| m.reps_total).sum(),
            volume_kg: members.iter().map(|m| m.volume_kg).sum(),
            leaderboard_effort: leaders(&boards.effort),
            leaderboard_work: leaders(&boards.work),
            leaderboard_treadmill: leaders(treadmill),
            leaderboard_rower: leaders(rower),
            leaderboard_bike: leaders(bike),
            leaderboard_hidden: boards.hidden,
            leaderboard_distance: None,
            positions: Positions {
                partition: partition.to_owned(),
                first_offset: self.first_offset,
                last_offset: self.last_offset,
            },
        };
        ClassResult {
            summary,
            members,
            minutes,
        }
    }

    /// Rough heap bytes held (for the memory report).
    pub fn approx_bytes(&self) -> usize {
        let members: usize = self
            .members
            .values()
            .map(|m| {
                std::mem::size_of::<MemberState>()
                    + m.heart_rate.pending.len() * 48
                    + m.heart_rate.approx_bytes()
                    + m.cardio
                        .iter()
                        .map(|c| c.minute_distance.len() * 40 + c.work.pending.len() * 48)
                        .sum::<usize>()
            })
            .sum();
        let minutes: usize = self
            .minutes
            .values()
            .map(|m| 64 + m.members.capacity() * 4)
            .sum();
        std::mem::size_of::<ClassState>() + self.seen.approx_bytes() + members + minutes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::heart::HeartModel;

    /// The default maximum (190), cut by percent of it.
    fn default_member() -> Personal {
        HeartModel::default().personal(None, 2026)
    }

    #[test]
    fn samples_count_the_capped_gap_to_the_previous_one() {
        let rules = Rules::default();
        let member = default_member();
        let mut hr = HeartRate::default();
        // zone 5, zone 5 after 4 s, zone 4 after a 60 s gap (capped to 5 s), zone 1 after 2 s.
        for (time, bpm) in [(0, 180.0), (4_000, 180.0), (64_000, 160.0), (66_000, 100.0)] {
            hr.add(time, time as u128, bpm);
        }
        assert_eq!(
            hr.zone_ms(&member, &rules, false),
            [2_000, 0, 0, 5_000, 4_000]
        );
        hr.seal_before(64_000, &rules);
        assert_eq!(hr.zone_ms(&member, &rules, true), [0, 0, 0, 0, 4_000]);
        hr.seal_before(i64::MAX, &rules);
        assert_eq!(
            hr.zone_ms(&member, &rules, true),
            [2_000, 0, 0, 5_000, 4_000]
        );
        assert_eq!(hr.latest, Some((66_000, 66_000, 100.0)));
        // The same time, cut for a maximum of 160: 180 and 160 are zone 5, 100 is under 70%.
        let lower = HeartModel::default().personal(
            Some(&Profile {
                hr_max: Some((160, crate::profile::SetBy::Manual)),
                ..Profile::default()
            }),
            2026,
        );
        assert_eq!(hr.zone_ms(&lower, &rules, true), [0, 2_000, 0, 0, 9_000]);
    }

    /// One strap's samples split where its device switched partitions: each side sealed in
    /// part, merged either way round, gives the zones of the whole; samples that interleave
    /// with the other side's sealed block are reported as not exact.
    #[test]
    fn heart_rate_parts_merge_to_the_zones_of_the_whole() {
        let rules = Rules::default();
        let samples: Vec<(i64, f64)> = (0..40)
            .map(|i| (i * 3_000 + (i % 4) * 900, 150.0 + (i * 37 % 40) as f64))
            .collect();
        let part = |samples: &[(i64, f64)], seal_before: i64| {
            let mut hr = HeartRate::default();
            for (time, bpm) in samples {
                hr.add(*time, *time as u128, *bpm);
            }
            hr.seal_before(seal_before, &rules);
            hr
        };
        let whole = part(&samples, i64::MAX);
        assert!(whole.sustained.best().is_some());
        let (earlier, later) = samples.split_at(25);
        for (seal_earlier, seal_later) in
            [(0, 0), (40_000, 0), (i64::MAX, 100_000), (20_000, i64::MAX)]
        {
            let mut merged = part(earlier, seal_earlier);
            assert!(merged.merge(part(later, seal_later), &rules));
            merged.seal_before(i64::MAX, &rules);
            let at = format!("sealed {seal_earlier} {seal_later}");
            assert_eq!(merged.at_bpm, whole.at_bpm, "earlier into later, {at}");
            assert_eq!(merged.sustained.best(), whole.sustained.best(), "{at}");
            assert_eq!(merged.latest, whole.latest, "{at}");
            let mut merged = part(later, seal_later);
            assert!(merged.merge(part(earlier, seal_earlier), &rules));
            merged.seal_before(i64::MAX, &rules);
            assert_eq!(merged.at_bpm, whole.at_bpm, "later into earlier, {at}");
            assert_eq!(merged.sustained.best(), whole.sustained.best(), "{at}");
            assert_eq!(merged.bpm.count, 40);
        }
        // Alternating samples, both sides sealed: not exact, and said so.
        let odd: Vec<(i64, f64)> = samples.iter().copied().skip(1).step_by(2).collect();
        let even: Vec<(i64, f64)> = samples.iter().copied().step_by(2).collect();
        let mut merged = part(&even, i64::MAX);
        assert!(!merged.merge(part(&odd, i64::MAX), &rules));
    }

    #[test]
    fn minute_distances_add_up_to_the_class_distance() {
        let mut cardio = Cardio::default();
        for (minute, low, high) in [
            (0, 100.0, 180.0),
            (60_000, 195.0, 260.0),
            (180_000, 300.0, 310.0),
        ] {
            cardio.minute_distance.insert(minute, (low, high));
            cardio.distance_m.add(low);
            cardio.distance_m.add(high);
        }
        let per_minute: f64 = [0, 60_000, 180_000]
            .iter()
            .map(|m| cardio.distance_in_minute(*m))
            .sum();
        assert_eq!(per_minute, cardio.distance_m.span());
        assert_eq!(cardio.distance_in_minute(60_000), 80.0);
        assert_eq!(cardio.distance_in_minute(120_000), 0.0);
    }
}
