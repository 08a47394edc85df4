//! The studio simulator: the built-in source of `classpulse run` with no configuration.
//!
//! Studios run classes; members wear a heart-rate strap and use one machine each, and every
//! device reports on its own schedule. Event time runs `speedup` times faster than the wall
//! clock (or unpaced). Messages are keyed `studio_id:class_id` and batched per class, as real
//! producers do, alternating JSON arrays and newline-delimited JSON. A small share of events is
//! sent twice, delayed, or corrupted; every corrupted event is one the decoder must reject, so
//! `rejected == corrupted` after a run.
//!
//! With a seed and a start time the run is reproducible event for event (ChaCha8 is stable
//! across platforms and `rand` versions).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Datelike, SecondsFormat, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;

use super::{RawBatch, Source, SourceError};
use crate::ack::PartitionId;
use crate::config::SimulatorConfig;
use crate::decode::RawMessage;
use crate::event::EventType;

/// Event-time step of the simulation.
const TICK_MS: i64 = 1000;
/// Sampling interval of straps and cardio machines (the seed's workload: every 4 s).
const SAMPLE_INTERVAL_MS: i64 = 4000;
/// A free-weights station reports once per set.
const SET_INTERVAL_MS: i64 = 30_000;
/// Delayed and duplicated sends arrive within this many seconds.
const MAX_DELAY_TICKS: i64 = 8;
/// Size of each studio's member pool, from which a class draws its members.
const MEMBERS_PER_STUDIO: u32 = 400;

const EXERCISES: [&str; 6] = [
    "squat",
    "deadlift",
    "bench_press",
    "overhead_press",
    "row",
    "lunge",
];

/// What the simulator sent, for the run summary and tests.
#[derive(Debug, Default)]
pub struct SimulatorStats {
    /// Distinct valid events generated.
    pub events: AtomicU64,
    /// Extra copies of valid events sent (producer retries).
    pub duplicates: AtomicU64,
    /// Events sent later than their neighbours.
    pub delayed: AtomicU64,
    /// Events corrupted so that validation must reject them.
    pub corrupted: AtomicU64,
    /// Messages sent.
    pub messages: AtomicU64,
    /// Classes simulated.
    pub classes: AtomicU64,
}

impl SimulatorStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// One class session being simulated.
struct SimClass {
    studio_id: String,
    class_id: String,
    key: Bytes,
    partition: usize,
    start_ms: i64,
    end_ms: i64,
    members: Vec<SimMember>,
    /// Events to send at a later tick: (due tick ms, event JSON).
    delayed: Vec<(i64, String)>,
    /// Whether this class's messages are NDJSON (else JSON arrays).
    ndjson: bool,
}

struct SimMember {
    member_id: String,
    machine: EventType,
    /// Personal maximum and resting heart rate.
    max_hr: f64,
    rest_hr: f64,
    /// Scales effort: 0.8 (beginner) to 1.1 (athlete).
    fitness: f64,
    next_hr_ms: i64,
    next_machine_ms: i64,
    distance_m: f64,
    calories: f64,
}

struct PartitionState {
    id: PartitionId,
    next_offset: u64,
    pending: Vec<RawMessage>,
}

/// The simulator source.
pub struct Simulator {
    config: SimulatorConfig,
    people: People,
    rng: ChaCha8Rng,
    classes: Vec<SimClass>,
    /// Simulated time of the next tick to generate.
    clock_ms: i64,
    start_ms: i64,
    end_ms: i64,
    /// Wall-clock time of the start, for pacing.
    wall_start: Instant,
    partitions: Vec<PartitionState>,
    ready: VecDeque<RawBatch>,
    /// Cut a batch at about this many events.
    batch_max_events: usize,
    pending_events: usize,
    finished: bool,
    stats: Arc<SimulatorStats>,
    /// Frontiers committed so far (the simulator has no backend to store them in).
    committed: BTreeMap<PartitionId, u64>,
}

impl Simulator {
    /// Plans every class in the simulated window. `now` is the wall-clock time used for the
    /// default start.
    pub fn new(config: &SimulatorConfig, batch_max_events: usize, now: DateTime<Utc>) -> Simulator {
        let seed = config.seed.unwrap_or_else(rand::random);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let duration_ms = config.duration.as_millis() as i64;
        let start_ms = match config.start {
            Some(start) => start.timestamp_millis(),
            None => (now.timestamp_millis() - duration_ms) / 60_000 * 60_000,
        };
        let end_ms = start_ms + duration_ms;
        let class_ms = config.class_length.as_millis() as i64;

        let year = DateTime::<Utc>::from_timestamp_millis(start_ms)
            .unwrap_or_default()
            .year();
        let mut classes = Vec::new();
        for studio in 0..config.studios {
            // Studios do not start on the same second (but short simulations stay busy).
            let jitter_seconds = (class_ms / 6).min(duration_ms / 4) / 1000;
            let mut class_start = start_ms + rng.random_range(0..=jitter_seconds) * 1000;
            while class_start < end_ms {
                let people = People { seed, year };
                classes.push(plan_class(
                    &mut rng,
                    config,
                    &people,
                    studio,
                    class_start,
                    class_ms,
                ));
                class_start += class_ms;
            }
        }
        // The stream is named by what determines it: a run with the same seed and start is the
        // same stream (a replay, whose results the checkpoints already hold); any other run is
        // a new one, whose positions start again at 0.
        let start = DateTime::<Utc>::from_timestamp_millis(start_ms).unwrap_or_default();
        let stream: Arc<str> = format!("sim-{seed:x}-{}", start.format("%Y%m%dT%H%M%S")).into();
        let partitions = (0..config.partitions)
            .map(|index| PartitionState {
                id: PartitionId::new(Arc::clone(&stream), index),
                next_offset: 0,
                pending: Vec::new(),
            })
            .collect();
        let stats = Arc::new(SimulatorStats::default());
        SimulatorStats::add(&stats.classes, classes.len() as u64);
        tracing::info!(seed, start = %format_rfc3339(start_ms), classes = classes.len(), "simulator planned");
        Simulator {
            config: config.clone(),
            people: People { seed, year },
            rng,
            classes,
            clock_ms: start_ms,
            start_ms,
            end_ms,
            wall_start: Instant::now(),
            partitions,
            ready: VecDeque::new(),
            batch_max_events: batch_max_events.max(1),
            pending_events: 0,
            finished: false,
            stats,
            committed: BTreeMap::new(),
        }
    }

    /// The profiles of every member of every studio's pool, as NDJSON (the file
    /// `CLASSPULSE_MEMBERS_FILE` reads): what the studios' member system would know of them.
    pub fn profiles_ndjson(&self) -> String {
        let mut text = String::new();
        for studio in 0..self.config.studios {
            for number in 0..MEMBERS_PER_STUDIO {
                text.push_str(&self.people.person(studio, number).profile_json());
                text.push('\n');
            }
        }
        text
    }

    /// Counters of what was sent.
    pub fn stats(&self) -> Arc<SimulatorStats> {
        Arc::clone(&self.stats)
    }

    /// The frontiers committed so far.
    pub fn committed(&self) -> &BTreeMap<PartitionId, u64> {
        &self.committed
    }

    /// Wall-clock time at which the tick at `clock_ms` is due.
    fn wall_due(&self, clock_ms: i64) -> Option<Instant> {
        if self.config.speedup <= 0.0 {
            return None;
        }
        let event_seconds = (clock_ms - self.start_ms) as f64 / 1000.0;
        Some(self.wall_start + Duration::from_secs_f64(event_seconds / self.config.speedup))
    }

    /// Generates ticks until a batch is worth sending, then queues every pending batch.
    fn generate(&mut self) {
        let target_events = self.batch_max_events * self.partitions.len();
        loop {
            if self.clock_ms > self.end_ms {
                self.finished = true;
                break;
            }
            let last_tick = self.clock_ms + TICK_MS > self.end_ms;
            self.tick(self.clock_ms, last_tick);
            self.clock_ms += TICK_MS;
            if self.pending_events >= target_events {
                break;
            }
            if let Some(due) = self.wall_due(self.clock_ms) {
                if due > Instant::now() {
                    break;
                }
            }
        }
        for partition in &mut self.partitions {
            if !partition.pending.is_empty() {
                self.ready.push_back(RawBatch {
                    partition: partition.id.clone(),
                    generation: 0,
                    messages: std::mem::take(&mut partition.pending),
                });
            }
        }
        self.pending_events = 0;
    }

    /// Generates one tick of every class. On the last tick, everything delayed is sent too
    /// (including what this tick delayed), so nothing generated is left unsent.
    fn tick(&mut self, now_ms: i64, last_tick: bool) {
        for class_index in 0..self.classes.len() {
            let mut events = Vec::new();
            let class = &self.classes[class_index];
            if now_ms >= class.start_ms && now_ms < class.end_ms {
                for member_index in 0..class.members.len() {
                    self.member_tick(class_index, member_index, now_ms, &mut events);
                }
            }
            // Delayed sends that are due go out with this tick's events.
            self.classes[class_index].delayed.retain(|(due, json)| {
                let send = *due <= now_ms || last_tick;
                if send {
                    events.push(json.clone());
                }
                !send
            });
            if !events.is_empty() {
                self.send(class_index, events);
            }
        }
    }

    /// Produces the events one member's devices send in the tick ending at `now_ms`.
    fn member_tick(
        &mut self,
        class_index: usize,
        member_index: usize,
        now_ms: i64,
        out: &mut Vec<String>,
    ) {
        let tick_end = now_ms + TICK_MS;
        let class = &self.classes[class_index];
        let intensity = intensity_at(class, now_ms);
        let member = &class.members[member_index];
        let hr_due = (member.next_hr_ms < tick_end).then_some(member.next_hr_ms);
        let machine_due = (member.next_machine_ms < tick_end).then_some(member.next_machine_ms);

        if let Some(time_ms) = hr_due {
            let member = &self.classes[class_index].members[member_index];
            let effort = intensity * member.fitness;
            let noise: f64 = self.rng.random_range(-4.0..4.0);
            let bpm = (member.rest_hr + (member.max_hr - member.rest_hr) * effort + noise)
                .clamp(45.0, 215.0)
                .round();
            let data = format!("{{\"bpm\":{bpm}}}");
            let json = self.event_json(
                class_index,
                member_index,
                EventType::HeartRate,
                time_ms,
                &data,
            );
            self.classes[class_index].members[member_index].next_hr_ms += SAMPLE_INTERVAL_MS;
            self.emit(class_index, json, out);
        }
        if let Some(time_ms) = machine_due {
            let (machine, data, interval) =
                self.machine_reading(class_index, member_index, intensity);
            let json = self.event_json(class_index, member_index, machine, time_ms, &data);
            self.classes[class_index].members[member_index].next_machine_ms += interval;
            self.emit(class_index, json, out);
        }
    }

    /// The next reading of a member's machine: (type, event_data JSON, interval to the next).
    fn machine_reading(
        &mut self,
        class_index: usize,
        member_index: usize,
        intensity: f64,
    ) -> (EventType, String, i64) {
        let jitter: f64 = self.rng.random_range(0.95..1.05);
        let exercise = EXERCISES[self.rng.random_range(0..EXERCISES.len())];
        let reps: u32 = self.rng.random_range(6..=15);
        let load_step: u32 = self.rng.random_range(2..=24);
        let member = &mut self.classes[class_index].members[member_index];
        let effort = intensity * member.fitness * jitter;
        let seconds = SAMPLE_INTERVAL_MS as f64 / 1000.0;
        let machine = member.machine;
        match machine {
            EventType::Treadmill => {
                let speed = (4.0 + 12.0 * effort).min(30.0);
                member.distance_m += speed / 3.6 * seconds;
                member.calories += speed * 0.018 * seconds;
                let incline = (effort * 6.0).round();
                let data = format!(
                    "{{\"speed_kph\":{speed:.1},\"incline_pct\":{incline},\"distance_m\":{:.1},\"calories\":{:.1}}}",
                    member.distance_m, member.calories
                );
                (machine, data, SAMPLE_INTERVAL_MS)
            }
            EventType::Rower => {
                let watts = 60.0 + 260.0 * effort;
                member.distance_m += (watts / 2.8).cbrt() * seconds;
                member.calories += watts * 0.0011 * seconds;
                let data = format!(
                    "{{\"stroke_rate_spm\":{:.0},\"watts\":{watts:.0},\"distance_m\":{:.1},\"calories\":{:.1}}}",
                    16.0 + 16.0 * effort,
                    member.distance_m,
                    member.calories
                );
                (machine, data, SAMPLE_INTERVAL_MS)
            }
            EventType::Bike => {
                let watts = 70.0 + 240.0 * effort;
                member.distance_m += (20.0 + 20.0 * effort) / 3.6 * seconds;
                member.calories += watts * 0.001 * seconds;
                let data = format!(
                    "{{\"cadence_rpm\":{:.0},\"watts\":{watts:.0},\"distance_m\":{:.1},\"calories\":{:.1}}}",
                    60.0 + 45.0 * effort,
                    member.distance_m,
                    member.calories
                );
                (machine, data, SAMPLE_INTERVAL_MS)
            }
            EventType::FreeWeights | EventType::HeartRate => {
                let weight = f64::from(load_step) * 2.5 * member.fitness;
                let data = format!(
                    "{{\"exercise\":\"{exercise}\",\"reps\":{reps},\"weight_kg\":{weight:.1}}}"
                );
                (EventType::FreeWeights, data, SET_INTERVAL_MS)
            }
        }
    }

    /// Serialises one event. Straps send RFC 3339 times, machines epoch milliseconds.
    fn event_json(
        &mut self,
        class_index: usize,
        member_index: usize,
        event_type: EventType,
        time_ms: i64,
        data: &str,
    ) -> String {
        let id: u128 = self.rng.random();
        let class = &self.classes[class_index];
        let member = &class.members[member_index];
        let mut json = String::with_capacity(320);
        let _ = write!(
            json,
            "{{\"event_id\":\"{}\",\"event_type\":\"{}\",\"event_created\":",
            uuid_text(id),
            event_type.as_str()
        );
        if event_type == EventType::HeartRate {
            let _ = write!(json, "\"{}\"", format_rfc3339(time_ms));
        } else {
            let _ = write!(json, "{time_ms}");
        }
        let device_prefix = if event_type == EventType::HeartRate {
            "hr"
        } else {
            "eq"
        };
        let _ = write!(
            json,
            ",\"studio_id\":\"{}\",\"class_id\":\"{}\",\"member_id\":\"{}\",\"device_id\":\"{device_prefix}-{}\",\"event_data\":{data}}}",
            class.studio_id, class.class_id, member.member_id, member.member_id
        );
        json
    }

    /// Sends an event now, later, twice, or corrupted, by the configured rates.
    fn emit(&mut self, class_index: usize, json: String, out: &mut Vec<String>) {
        let roll: f64 = self.rng.random();
        let config = &self.config;
        if roll < config.invalid_rate {
            let ndjson = self.classes[class_index].ndjson;
            out.push(self.corrupt(json, ndjson));
            SimulatorStats::add(&self.stats.corrupted, 1);
            return;
        }
        SimulatorStats::add(&self.stats.events, 1);
        let delay_ticks = self.rng.random_range(1..=MAX_DELAY_TICKS);
        let due = self.clock_ms + delay_ticks * TICK_MS;
        if roll < config.invalid_rate + config.duplicate_rate {
            self.classes[class_index].delayed.push((due, json.clone()));
            SimulatorStats::add(&self.stats.duplicates, 1);
            out.push(json);
        } else if roll < config.invalid_rate + config.duplicate_rate + config.out_of_order_rate {
            self.classes[class_index].delayed.push((due, json));
            SimulatorStats::add(&self.stats.delayed, 1);
        } else {
            out.push(json);
        }
    }

    /// Breaks an event in one of the ways real producers do. Truncation is used only in
    /// NDJSON messages: in an array it would take the neighbours down with it.
    fn corrupt(&mut self, json: String, ndjson: bool) -> String {
        let kinds = if ndjson { 6 } else { 5 };
        match self.rng.random_range(0..kinds) {
            0 => replace_first_data_value(&json, "99999"),
            1 => remove_member(&json, "member_id"),
            2 => json.replacen(
                "\"event_created\":",
                "\"event_created\":\"yesterday\",\"was\":",
                1,
            ),
            3 => json.replacen("\"event_type\":\"", "\"event_type\":\"elliptical_", 1),
            4 => json.replacen("{\"event_id\"", "{\"schema_version\":7,\"event_id\"", 1),
            _ => json[..json.len() / 2].to_owned(),
        }
    }

    /// Queues one message for the class's partition.
    fn send(&mut self, class_index: usize, events: Vec<String>) {
        let class = &self.classes[class_index];
        let payload = if class.ndjson {
            events.join("\n")
        } else {
            format!("[{}]", events.join(","))
        };
        let partition = &mut self.partitions[class.partition];
        partition.pending.push(RawMessage {
            offset: partition.next_offset,
            timestamp_ms: Some(self.clock_ms),
            key: Some(class.key.clone()),
            payload: Some(Bytes::from(payload)),
        });
        partition.next_offset += 1;
        self.pending_events += events.len();
        SimulatorStats::add(&self.stats.messages, 1);
    }
}

#[async_trait]
impl Source for Simulator {
    fn kind(&self) -> &'static str {
        "simulator"
    }

    async fn next_batch(&mut self) -> Result<Option<RawBatch>, SourceError> {
        loop {
            if let Some(batch) = self.ready.pop_front() {
                return Ok(Some(batch));
            }
            if self.finished {
                return Ok(None);
            }
            if let Some(due) = self.wall_due(self.clock_ms) {
                // Cancel-safe: nothing changes before the sleep completes.
                tokio::time::sleep_until(due).await;
                let behind = Instant::now().saturating_duration_since(due).as_secs_f64();
                for partition in &self.partitions {
                    crate::metrics::set_source_lag(
                        self.kind(),
                        &partition.id,
                        0,
                        behind * self.config.speedup,
                    );
                }
            }
            self.generate();
        }
    }

    async fn commit(&mut self, frontiers: &[(PartitionId, u64)]) -> Result<(), SourceError> {
        for (partition, next_offset) in frontiers {
            self.committed.insert(partition.clone(), *next_offset);
        }
        Ok(())
    }
}

fn plan_class(
    rng: &mut ChaCha8Rng,
    config: &SimulatorConfig,
    people: &People,
    studio: u32,
    start_ms: i64,
    class_ms: i64,
) -> SimClass {
    const KINDS: [&str; 5] = ["hiit", "ride", "row", "strength", "run"];
    let kind = KINDS[rng.random_range(0..KINDS.len())];
    let studio_id = format!("studio-{studio:04}");
    let start = DateTime::from_timestamp_millis(start_ms).unwrap_or_default();
    let class_id = format!("{}-{kind}", start.format("%Y%m%dT%H%M"));
    let mut member_numbers: Vec<u32> = Vec::new();
    while member_numbers.len() < config.members_per_class.min(MEMBERS_PER_STUDIO) as usize {
        let number = rng.random_range(0..MEMBERS_PER_STUDIO);
        if !member_numbers.contains(&number) {
            member_numbers.push(number);
        }
    }
    let members = member_numbers
        .into_iter()
        .map(|number| {
            let machine = match kind {
                "ride" => EventType::Bike,
                "row" => EventType::Rower,
                "strength" => EventType::FreeWeights,
                "run" => EventType::Treadmill,
                _ => [
                    EventType::Treadmill,
                    EventType::Rower,
                    EventType::Bike,
                    EventType::FreeWeights,
                ][rng.random_range(0..4)],
            };
            let person = people.person(studio, number);
            SimMember {
                member_id: person.member_id,
                machine,
                // How they are on the day: their reach a bpm or two either way of their
                // true maximum, their resting rate a few.
                max_hr: person.max_hr + rng.random_range(-2.0..2.0),
                rest_hr: person.resting_hr + rng.random_range(-3.0..3.0),
                fitness: rng.random_range(0.8..1.1),
                next_hr_ms: start_ms + rng.random_range(0..SAMPLE_INTERVAL_MS),
                next_machine_ms: start_ms + rng.random_range(0..SAMPLE_INTERVAL_MS),
                distance_m: 0.0,
                calories: 0.0,
            }
        })
        .collect();
    let key = Bytes::from(format!("{studio_id}:{class_id}"));
    let partition = (fnv1a(&key) % u64::from(config.partitions)) as usize;
    SimClass {
        studio_id,
        class_id,
        key,
        partition,
        start_ms,
        end_ms: start_ms + class_ms,
        members,
        delayed: Vec::new(),
        ndjson: rng.random_bool(0.5),
    }
}

/// Where each studio's members come from: the same person in every class they attend.
struct People {
    seed: u64,
    /// The calendar year of the simulation's start (ages count from it).
    year: i32,
}

/// One member of a studio's pool: their body and what their profile says of it.
struct Person {
    member_id: String,
    birth_year: i32,
    female: bool,
    weight_kg: f64,
    resting_hr: f64,
    /// Their true maximum: about the age formula's, a few well above it.
    max_hr: f64,
    /// What their profile holds of it: measured, set by hand, or nothing (the formula).
    profile_max: Option<(f64, &'static str)>,
    resting_known: bool,
    alias: Option<String>,
    leaderboard: bool,
}

impl People {
    fn person(&self, studio: u32, number: u32) -> Person {
        let member = u64::from(studio) << 32 | u64::from(number);
        let mut rng =
            ChaCha8Rng::seed_from_u64(self.seed ^ member.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let birth_year = self.year - rng.random_range(18..=80);
        let female = rng.random_bool(0.5);
        let age = f64::from(self.year - birth_year);
        // Tanaka's estimate, the spread people have around it, and one in ten well above it.
        let above = if rng.random_bool(0.1) { 12.0 } else { 0.0 };
        let max_hr = (208.0 - 0.7 * age + rng.random_range(-6.0..6.0) + above).round();
        let profile_max = match rng.random_range(0..10) {
            0 => Some((max_hr, "measured")),
            1 => Some((max_hr - 2.0, "manual")),
            _ => None,
        };
        let weight_kg = if female {
            rng.random_range(50.0..95.0)
        } else {
            rng.random_range(60.0..115.0)
        };
        let aliases = [
            "Ace", "Blaze", "Comet", "Dash", "Echo", "Flash", "Gale", "Hawk",
        ];
        Person {
            member_id: format!("m{studio:04}{number:04}"),
            birth_year,
            female,
            weight_kg: (weight_kg * 10.0_f64).round() / 10.0,
            resting_hr: rng.random_range(50.0..75.0_f64).round(),
            max_hr,
            profile_max,
            resting_known: rng.random_bool(0.7),
            alias: rng
                .random_bool(0.5)
                .then(|| format!("{} {number}", aliases[number as usize % aliases.len()])),
            leaderboard: !rng.random_bool(0.1),
        }
    }
}

impl Person {
    fn profile_json(&self) -> String {
        let mut json = format!(
            r#"{{"member_id":"{}","birth_year":{},"sex":"{}","weight_kg":{}"#,
            self.member_id,
            self.birth_year,
            if self.female { "female" } else { "male" },
            self.weight_kg
        );
        if self.resting_known {
            let _ = write!(json, r#","resting_hr":{}"#, self.resting_hr);
        }
        if let Some((bpm, source)) = self.profile_max {
            let _ = write!(json, r#","hr_max":{bpm},"hr_max_source":"{source}""#);
        }
        if let Some(alias) = &self.alias {
            let _ = write!(json, r#","alias":"{alias}""#);
        }
        if !self.leaderboard {
            json.push_str(r#","leaderboard":false"#);
        }
        json.push('}');
        json
    }
}

/// Share of maximum effort at `time_ms`: warm-up, 3-minute intervals, cool-down.
fn intensity_at(class: &SimClass, time_ms: i64) -> f64 {
    let phase = (time_ms - class.start_ms) as f64 / (class.end_ms - class.start_ms) as f64;
    if phase < 0.15 {
        0.45 + phase / 0.15 * 0.25
    } else if phase > 0.9 {
        0.55
    } else {
        let interval = ((time_ms - class.start_ms) / 180_000) % 2;
        if interval == 0 {
            0.7
        } else {
            0.92
        }
    }
}

/// Stable hash for partitioning (producers use murmur2; any stable hash does here).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn uuid_text(bits: u128) -> String {
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn format_rfc3339(time_ms: i64) -> String {
    DateTime::from_timestamp_millis(time_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Replaces the first value inside `event_data` (always a required field) with `value`.
fn replace_first_data_value(json: &str, value: &str) -> String {
    let Some(data) = json.find("\"event_data\":{") else {
        return json.to_owned();
    };
    let Some(colon) = json[data + 14..].find(':').map(|i| data + 14 + i + 1) else {
        return json.to_owned();
    };
    let end = colon + json[colon..].find([',', '}']).unwrap_or(0);
    format!("{}{value}{}", &json[..colon], &json[end..])
}

fn remove_member(json: &str, name: &str) -> String {
    let marker = format!(",\"{name}\":\"");
    match json.find(&marker) {
        Some(start) => {
            let value_start = start + marker.len();
            let value_end = value_start + json[value_start..].find('"').unwrap_or(0) + 1;
            format!("{}{}", &json[..start], &json[value_end..])
        }
        None => json.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::decode::{decode_message, DecodeLimits};

    fn small_config(seed: u64) -> SimulatorConfig {
        let mut config = Config::from_vars(&Default::default()).unwrap().simulator;
        config.studios = 10;
        config.duration = Duration::from_secs(300);
        config.speedup = 0.0;
        config.seed = Some(seed);
        config.start = Some("2026-11-25T17:00:00Z".parse().unwrap());
        config.invalid_rate = 0.05;
        config
    }

    async fn drain(simulator: &mut Simulator) -> Vec<RawBatch> {
        let mut batches = Vec::new();
        while let Some(batch) = simulator.next_batch().await.unwrap() {
            batches.push(batch);
        }
        batches
    }

    #[test]
    fn every_member_has_a_profile_that_reads_without_a_rejected_field() {
        let simulator = Simulator::new(&small_config(3), 500, Utc::now());
        let text = simulator.profiles_ndjson();
        let mut members = 0;
        let (mut with_max, mut with_resting, mut hidden) = (0, 0, 0);
        for line in text.lines() {
            let (_, profile, rejected) = crate::profile::from_json(line, 2026).unwrap();
            assert!(rejected.is_empty(), "{line}: {rejected:?}");
            let age = 2026 - i32::from(profile.birth_year.unwrap());
            assert!((18..=80).contains(&age), "{line}");
            assert!(
                profile.sex.is_some() && profile.weight_kg.is_some(),
                "{line}"
            );
            members += 1;
            with_max += usize::from(profile.hr_max.is_some());
            with_resting += usize::from(profile.resting_hr.is_some());
            hidden += usize::from(!profile.leaderboard);
        }
        assert_eq!(members, 10 * MEMBERS_PER_STUDIO as usize);
        // About one in five with a maximum of their own, seven in ten a resting rate, one in
        // ten off the leaderboards: each present and none universal.
        for (count, share) in [(with_max, 0.2), (with_resting, 0.7), (hidden, 0.1)] {
            let seen = count as f64 / members as f64;
            assert!(
                (seen - share).abs() < 0.1,
                "{count} of {members}, expected {share}"
            );
        }
        let again = Simulator::new(&small_config(3), 500, Utc::now()).profiles_ndjson();
        assert_eq!(text, again, "the same seed, the same people");
    }

    #[tokio::test]
    async fn same_seed_and_start_give_the_same_messages() {
        let now = Utc::now();
        let first = drain(&mut Simulator::new(&small_config(7), 500, now)).await;
        let second = drain(&mut Simulator::new(&small_config(7), 500, now)).await;
        let third = drain(&mut Simulator::new(&small_config(8), 500, now)).await;
        let payloads = |batches: &[RawBatch]| -> Vec<Bytes> {
            batches
                .iter()
                .flat_map(|b| b.messages.iter().map(|m| m.payload.clone().unwrap()))
                .collect()
        };
        assert!(!first.is_empty());
        assert_eq!(payloads(&first), payloads(&second));
        assert_ne!(payloads(&first), payloads(&third));
    }

    #[tokio::test]
    async fn every_corrupted_event_is_rejected_and_every_other_accepted() {
        let mut simulator = Simulator::new(&small_config(11), 500, Utc::now());
        let stats = simulator.stats();
        let limits = DecodeLimits {
            max_message_bytes: 1 << 20,
            max_clock_skew_ms: 60_000,
        };
        let (mut events, mut rejected) = (Vec::new(), Vec::new());
        let mut offsets: BTreeMap<PartitionId, u64> = BTreeMap::new();
        for batch in drain(&mut simulator).await {
            for message in &batch.messages {
                let expected = offsets.entry(batch.partition.clone()).or_default();
                assert_eq!(message.offset, *expected, "offsets are dense per partition");
                *expected += 1;
                decode_message(
                    message,
                    &limits,
                    Utc::now().timestamp_millis(),
                    &mut events,
                    &mut rejected,
                );
            }
        }
        let corrupted = SimulatorStats::get(&stats.corrupted);
        assert!(
            corrupted > 10,
            "the test needs corrupted events, got {corrupted}"
        );
        assert_eq!(
            rejected.len() as u64,
            corrupted,
            "{:?}",
            rejected.iter().map(|r| &r.rejection).collect::<Vec<_>>()
        );
        let expected_valid =
            SimulatorStats::get(&stats.events) + SimulatorStats::get(&stats.duplicates);
        assert_eq!(events.len() as u64, expected_valid);
        let types: std::collections::BTreeSet<_> = events.iter().map(|e| e.event_type).collect();
        assert_eq!(types.len(), 5, "every event type is simulated: {types:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn paced_run_follows_the_speedup() {
        let mut config = small_config(3);
        config.speedup = 60.0;
        let expected = config.duration.div_f64(config.speedup); // 300 s of event time in 5 s
        let mut simulator = Simulator::new(&config, 500, Utc::now());
        let started = Instant::now();
        drain(&mut simulator).await;
        let took = started.elapsed();
        let tolerance = Duration::from_millis(200);
        assert!(
            took + tolerance >= expected && took <= expected + tolerance,
            "{took:?} vs {expected:?}"
        );
    }
}
