//! The workload: 800 studios in four US time zones, each running its classes at local
//! morning, noon and evening times; 12 members a class, each with a heart-rate strap and a
//! machine that both report every 4 s. Everything here is written from the workload model and
//! the event contract, not from classpulse's code, so the expectations it yields are an
//! independent check.
//!
//! Generation is deterministic: every class draws from its own ChaCha8 stream seeded by the
//! run seed and the class index, so a class's events (values, ids, imperfections) do not depend
//! on which other classes run beside it. Members are people of their studio ([`person`]), the
//! same body and profile in every class; a studio seats each of them once a run (a raise of a
//! member's maximum applies from their next class, and when that class looks it up is timing
//! the load test does not control). Event ids encode a dense index, so `verify` can check
//! "each exactly once" for 69 million events with a bitmap instead of a set of strings.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Duration, NaiveDate, SecondsFormat, TimeZone, Utc};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::expect::{member_max, ClassAcc, Expected, Rules};

/// One second of event time: the step in which classes generate and messages are cut.
pub const TICK_MS: i64 = 1000;
/// Indices at or above this are invalid events' (never in the lake).
pub const INVALID_BASE: u64 = 1 << 40;
/// Invalid events a class may have (the index space of each class).
const INVALID_PER_CLASS: u64 = 1 << 20;
/// How long a producer retry follows its original, at most (event time).
const MAX_RETRY_DELAY_MS: i64 = 20_000;
/// How long an out-of-order event is held back, at most (within the watermark delay).
const MAX_DISORDER_MS: i64 = 8_000;
/// Studios' member pools, from which classes draw their members.
const MEMBERS_PER_STUDIO: u32 = 400;
/// US time zones in November (standard time), minutes east of UTC, with the share of studios.
const ZONES: [(i32, u32); 4] = [(-300, 4), (-360, 3), (-420, 1), (-480, 2)];
/// Local start hours, a choice per class of the day: morning, noon, evening, late evening,
/// then mid-morning and afternoon for studios that run more than four.
const SLOTS: [&[u32]; 6] = [&[6, 7], &[12], &[17, 18], &[19, 20], &[9, 10], &[15]];
const EXERCISES: [&str; 6] = [
    "squat",
    "deadlift",
    "bench_press",
    "overhead_press",
    "row",
    "lunge",
];

/// The workload's shape and imperfections (the manifest records them).
#[derive(clap::Args, Debug, Clone, Serialize, Deserialize)]
pub struct WorkloadArgs {
    /// Studios.
    #[arg(long, default_value_t = 800)]
    pub studios: u32,
    /// Classes per studio and day.
    #[arg(long, default_value_t = 4)]
    pub classes_per_day: u32,
    /// Length of a class.
    #[arg(long, default_value_t = 60)]
    pub class_minutes: u32,
    /// Members in each class.
    #[arg(long, default_value_t = 12)]
    pub members: u32,
    /// Every strap and machine reports this often.
    #[arg(long, default_value_t = 4000)]
    pub sample_ms: i64,
    /// Run one class per studio, every class at the same time (the worst case).
    #[arg(long)]
    pub all_at_once: bool,
    /// With --all-at-once: classes each studio runs back to back, so the peak rate lasts
    /// this many class lengths while class state turns over (a soak).
    #[arg(long, default_value_t = 1)]
    pub rounds: u32,
    /// The day replayed (UTC date; local class times are on it). Default: the day before
    /// yesterday, so every event time is in the past.
    #[arg(long)]
    pub day: Option<NaiveDate>,
    /// With --all-at-once: when the classes start (RFC 3339). Default: now for a paced run at
    /// real time, else early enough that no event time is ahead of the clock.
    #[arg(long)]
    pub start: Option<DateTime<Utc>>,
    /// Random seed: the same seed and times give the same events, ids included.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Share of events sent twice (a producer retry up to 20 s later).
    #[arg(long, default_value_t = 0.01)]
    pub duplicate_rate: f64,
    /// Share of events held back up to 8 s (within the watermark delay).
    #[arg(long, default_value_t = 0.02)]
    pub out_of_order_rate: f64,
    /// Share of events held back beyond the allowed lateness (in the lake as late, not in the
    /// aggregates).
    #[arg(long, default_value_t = 0.0005)]
    pub late_rate: f64,
    /// Share of classes whose whole stream is posted again after the class is final (a
    /// client's offline queue posted twice): every copy is a duplicate, none in the lake.
    #[arg(long, default_value_t = 0.01)]
    pub resend_rate: f64,
    /// How long after a class's end its stream is posted again (event time): more than
    /// classpulse's CLASSPULSE_CLASS_IDLE_TIMEOUT, so the class is final by then.
    #[arg(long, default_value_t = 900_000)]
    pub resend_after_ms: i64,
    /// Share of extra messages that are not JSON (a truncated event).
    #[arg(long, default_value_t = 0.0005)]
    pub malformed_rate: f64,
    /// Share of extra events with a value out of range, inside valid batches.
    #[arg(long, default_value_t = 0.0005)]
    pub out_of_range_rate: f64,
    /// Studios whose clock runs fast (the first N).
    #[arg(long, default_value_t = 1)]
    pub fast_clock_studios: u32,
    /// How fast their clock runs, in ms (classpulse's CLASSPULSE_CLASS_IDLE_TIMEOUT must be
    /// longer, or the studio's events make the classes sharing its partition final early).
    #[arg(long, default_value_t = 180_000)]
    pub fast_clock_ms: i64,
    /// Events per Kafka message or Kinesis record (a class's events, batched as producers do).
    #[arg(long, default_value_t = 5)]
    pub events_per_message: usize,
    /// classpulse's CLASSPULSE_HR_MAX_BPM.
    #[arg(long, default_value_t = 190.0)]
    pub hr_max_bpm: f64,
    /// classpulse's CLASSPULSE_HR_MAX_GAP, in ms.
    #[arg(long, default_value_t = 5_000)]
    pub hr_max_gap_ms: i64,
    /// classpulse's CLASSPULSE_HR_MAX_RAISE_AFTER, in ms.
    #[arg(long, default_value_t = 30_000)]
    pub hr_max_raise_after_ms: i64,
    /// classpulse's CLASSPULSE_WATERMARK_DELAY, in ms.
    #[arg(long, default_value_t = 10_000)]
    pub watermark_delay_ms: i64,
    /// classpulse's CLASSPULSE_ALLOWED_LATENESS, in ms.
    #[arg(long, default_value_t = 300_000)]
    pub allowed_lateness_ms: i64,
    /// classpulse's CLASSPULSE_MAX_CLOCK_SKEW, in ms.
    #[arg(long, default_value_t = 60_000)]
    pub max_clock_skew_ms: i64,
}

impl WorkloadArgs {
    /// The expectation rules these arguments give.
    pub fn rules(&self) -> Rules {
        Rules {
            hr_max_bpm: self.hr_max_bpm,
            hr_max_gap_ms: self.hr_max_gap_ms,
            hr_max_raise_after_ms: self.hr_max_raise_after_ms,
        }
    }

    /// How far a late event is held back: past the watermark delay and the allowed lateness,
    /// with a minute to spare.
    pub fn late_hold_ms(&self) -> i64 {
        self.watermark_delay_ms + self.allowed_lateness_ms + 60_000
    }

    /// Checks the arguments make a workload whose expectations hold.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.studios > 0 && self.members > 0,
            "--studios and --members must be positive"
        );
        anyhow::ensure!(
            self.members <= MEMBERS_PER_STUDIO,
            "--members at most {MEMBERS_PER_STUDIO}"
        );
        anyhow::ensure!(
            (1..=SLOTS.len() as u32).contains(&self.classes_per_day),
            "--classes-per-day must be 1 to {}",
            SLOTS.len()
        );
        anyhow::ensure!(
            self.rounds >= 1 && (self.rounds == 1 || self.all_at_once),
            "--rounds must be at least 1, and above 1 only with --all-at-once"
        );
        anyhow::ensure!(
            self.class_minutes > 0 && self.class_minutes <= 180,
            "--class-minutes must be 1 to 180"
        );
        anyhow::ensure!(
            self.sample_ms >= TICK_MS,
            "--sample-ms must be at least {TICK_MS}"
        );
        anyhow::ensure!(
            self.events_per_message > 0,
            "--events-per-message must be positive"
        );
        anyhow::ensure!(
            MAX_DISORDER_MS < self.watermark_delay_ms,
            "out-of-order events are held back up to {MAX_DISORDER_MS} ms: --watermark-delay-ms must be more"
        );
        anyhow::ensure!(
            MAX_RETRY_DELAY_MS < self.allowed_lateness_ms,
            "producer retries come up to {MAX_RETRY_DELAY_MS} ms later: --allowed-lateness-ms must be more"
        );
        for (name, rate) in [
            ("--duplicate-rate", self.duplicate_rate),
            ("--out-of-order-rate", self.out_of_order_rate),
            ("--late-rate", self.late_rate),
            ("--resend-rate", self.resend_rate),
            ("--malformed-rate", self.malformed_rate),
            ("--out-of-range-rate", self.out_of_range_rate),
        ] {
            anyhow::ensure!(
                (0.0..=0.5).contains(&rate),
                "{name} must be between 0 and 0.5"
            );
        }
        Ok(())
    }
}

/// How sending is paced; decides which event times are ahead of the clock when they arrive.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Pacing {
    /// Wall-clock time of the first send, epoch ms.
    pub wall_start_ms: i64,
    /// Event time runs this many times faster than the wall clock (0: unpaced).
    pub speedup: f64,
}

/// The five event types of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    HeartRate,
    Treadmill,
    Rower,
    Bike,
    FreeWeights,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::HeartRate,
        Kind::Treadmill,
        Kind::Rower,
        Kind::Bike,
        Kind::FreeWeights,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::HeartRate => "heart_rate",
            Kind::Treadmill => "treadmill",
            Kind::Rower => "rower",
            Kind::Bike => "bike",
            Kind::FreeWeights => "free_weights",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// What a class is: which machines its members use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClassKind {
    Cycle,
    Row,
    Run,
    Strength,
    Hiit,
}

impl ClassKind {
    fn name(self) -> &'static str {
        match self {
            ClassKind::Cycle => "cycle",
            ClassKind::Row => "row",
            ClassKind::Run => "run",
            ClassKind::Strength => "strength",
            ClassKind::Hiit => "hiit",
        }
    }

    fn machine(self, rng: &mut ChaCha8Rng) -> Kind {
        match self {
            ClassKind::Cycle => Kind::Bike,
            ClassKind::Row => Kind::Rower,
            ClassKind::Run => Kind::Treadmill,
            ClassKind::Strength => Kind::FreeWeights,
            ClassKind::Hiit => Kind::ALL[rng.random_range(1..5)],
        }
    }
}

/// One member's devices in one class.
#[derive(Debug, Clone)]
pub struct MemberPlan {
    pub member_id: String,
    pub machine: Kind,
    hr_phase_ms: i64,
    machine_phase_ms: i64,
    max_hr: f64,
    rest_hr: f64,
    /// 0.8 (beginner) to 1.1 (athlete).
    fitness: f64,
    /// The maximum classpulse must use for them in this class, and its source.
    pub hr_max: (u16, &'static str),
    /// Their profile, if the member system has one.
    pub profile: Option<Profile>,
}

/// A member of a studio: their body, and what the studios' member system knows of them.
#[derive(Debug, Clone)]
pub struct Person {
    pub member_id: String,
    /// Their true maximum heart rate: about Tanaka's estimate, for one in ten 12 bpm above it.
    pub max_hr: f64,
    pub rest_hr: f64,
    /// Their profile; `None` for one in ten, whom the member system does not know.
    pub profile: Option<Profile>,
}

/// A member profile, as the member system holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub birth_year: i32,
    pub female: bool,
    pub weight_kg: f64,
    /// Known for seven in ten.
    pub resting_hr: Option<f64>,
    /// Measured for one in ten, set by hand for another.
    pub hr_max: Option<(f64, &'static str)>,
    /// Off the leaderboards for one in twelve.
    pub leaderboard: bool,
}

impl Profile {
    /// The profile as one NDJSON line (`CLASSPULSE_MEMBERS_FILE`, or an item of the table).
    pub fn to_json(&self, member_id: &str) -> String {
        let mut json = format!(
            r#"{{"member_id":"{member_id}","birth_year":{},"sex":"{}","weight_kg":{}"#,
            self.birth_year,
            if self.female { "female" } else { "male" },
            self.weight_kg
        );
        if let Some(resting) = self.resting_hr {
            let _ = write!(json, r#","resting_hr":{resting}"#);
        }
        if let Some((bpm, source)) = self.hr_max {
            let _ = write!(json, r#","hr_max":{bpm},"hr_max_source":"{source}""#);
        }
        if !self.leaderboard {
            json.push_str(r#","leaderboard":false"#);
        }
        json.push('}');
        json
    }
}

/// Member `number` of `studio`: the same person in every class and every run of `seed`.
pub fn person(seed: u64, studio: u32, number: u32) -> Person {
    let mut rng = ChaCha8Rng::seed_from_u64(
        seed ^ 0x70e0_91e5
            ^ (u64::from(studio) << 32 | u64::from(number)).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    let birth_year = rng.random_range(1946..=2008);
    // Ages as of 2026; a run in another year shifts everyone alike.
    let age = f64::from(2026 - birth_year);
    let above = if rng.random_bool(0.1) { 12.0 } else { 0.0 };
    let max_hr = (208.0 - 0.7 * age + rng.random_range(-4.0..4.0) + above).round();
    let rest_hr = rng.random_range(50.0..75.0f64).round();
    let female = rng.random_bool(0.5);
    let weight_kg = (rng.random_range(50.0..110.0f64) * 10.0).round() / 10.0;
    let hr_max = match rng.random_range(0..10) {
        0 => Some((max_hr, "measured")),
        1 => Some((max_hr - 3.0, "manual")),
        _ => None,
    };
    let resting_hr = rng.random_bool(0.7).then_some(rest_hr);
    let leaderboard = !rng.random_bool(1.0 / 12.0);
    let known = !rng.random_bool(0.1);
    Person {
        member_id: format!("m{studio:04}{number:04}"),
        max_hr,
        rest_hr,
        profile: known.then_some(Profile {
            birth_year,
            female,
            weight_kg,
            resting_hr,
            hr_max,
            leaderboard,
        }),
    }
}

/// One class session.
#[derive(Debug, Clone)]
pub struct ClassPlan {
    pub index: u32,
    pub studio_id: String,
    pub class_id: String,
    /// True (UTC) start and end, epoch ms.
    pub start_ms: i64,
    pub end_ms: i64,
    /// The studio's clock error, added to every `event_created`.
    pub clock_offset_ms: i64,
    /// Minutes east of UTC of the studio, for its `event_created` strings.
    pub tz_offset_min: i32,
    pub members: Vec<MemberPlan>,
    /// Index of the class's first valid event.
    pub base_index: u64,
    /// Valid events the class sends.
    pub events: u64,
    /// Whether its whole stream is posted again `resend_after_ms` after its end.
    pub resend: bool,
}

impl ClassPlan {
    /// The message key producers use: one class lives on one partition or shard.
    pub fn key(&self) -> String {
        format!("{}:{}", self.studio_id, self.class_id)
    }
}

/// Every class of the run, in start order.
#[derive(Debug, Clone)]
pub struct Plan {
    pub args: WorkloadArgs,
    pub pacing: Pacing,
    /// Names this run's events: the first 8 hex digits of every event id.
    pub run_id: u32,
    pub classes: Vec<ClassPlan>,
    /// Event time of the first and last tick.
    pub start_ms: i64,
    pub end_ms: i64,
}

impl Plan {
    /// Plans the run. `now_ms` is the wall clock at the start of sending.
    pub fn new(args: &WorkloadArgs, speedup: f64, now_ms: i64) -> anyhow::Result<Plan> {
        args.validate()?;
        let class_ms = i64::from(args.class_minutes) * 60_000;
        let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
        let mut classes = Vec::new();
        let all_at_once_start = args.all_at_once.then(|| {
            args.start.map(|s| s.timestamp_millis()).unwrap_or_else(|| {
                // No event time may run ahead of the clock: a paced run starts far enough
                // back that it ends at "now"; an unpaced one ends five minutes ago (so even a
                // fast studio clock is not ahead).
                let span = i64::from(args.rounds) * class_ms + 60_000;
                let back = if speedup > 0.0 {
                    (span as f64 * (1.0 - 1.0 / speedup)).max(0.0) as i64
                } else {
                    span + 240_000
                };
                (now_ms - back) / 1000 * 1000
            })
        });
        let day = args.day.unwrap_or_else(|| {
            (DateTime::<Utc>::from_timestamp_millis(now_ms).unwrap_or_default() - Duration::days(2))
                .date_naive()
        });
        let midnight = Utc
            .from_utc_datetime(&day.and_hms_opt(0, 0, 0).unwrap_or_default())
            .timestamp_millis();
        let zone_total: u32 = ZONES.iter().map(|(_, share)| share).sum();
        for studio in 0..args.studios {
            let studio_id = format!("studio-{studio:04}");
            let mut slot = studio % zone_total;
            let tz_offset_min = ZONES
                .iter()
                .find(|(_, share)| {
                    let here = slot < *share;
                    slot = slot.saturating_sub(*share);
                    here
                })
                .map_or(0, |(offset, _)| *offset);
            let clock_offset_ms = if studio < args.fast_clock_studios {
                args.fast_clock_ms
            } else {
                0
            };
            let starts: Vec<i64> = match all_at_once_start {
                Some(start) => (0..i64::from(args.rounds))
                    .map(|round| start + round * class_ms)
                    .collect(),
                None => SLOTS[..args.classes_per_day as usize]
                    .iter()
                    .map(|hours| {
                        let hour = hours[rng.random_range(0..hours.len())];
                        let jitter_s: i64 = rng.random_range(0..300);
                        midnight + i64::from(hour) * 3_600_000 + jitter_s * 1000
                            - i64::from(tz_offset_min) * 60_000
                    })
                    .collect(),
            };
            // Each member of the studio once a run: a shuffled pool, wider than the studio's
            // 400 when the run seats more.
            let seats = starts.len() * args.members as usize;
            let mut pool: Vec<u32> = (0..(seats as u32).max(MEMBERS_PER_STUDIO)).collect();
            pool.shuffle(&mut ChaCha8Rng::seed_from_u64(
                args.seed ^ 0x9001 ^ (u64::from(studio) << 24),
            ));
            let mut seated = pool.into_iter();
            for start_ms in starts {
                let index = classes.len() as u32;
                let year = DateTime::<Utc>::from_timestamp_millis(start_ms)
                    .map_or(2026, |t| chrono::Datelike::year(&t));
                let mut class_rng = class_rng(args.seed, index);
                let kind = [
                    ClassKind::Cycle,
                    ClassKind::Row,
                    ClassKind::Run,
                    ClassKind::Strength,
                    ClassKind::Hiit,
                ][class_rng.random_range(0..5)];
                let local = DateTime::<Utc>::from_timestamp_millis(
                    start_ms + i64::from(tz_offset_min) * 60_000,
                )
                .unwrap_or_default();
                let class_id = format!("{}-{}", local.format("%Y%m%dT%H%M"), kind.name());
                let mut members = Vec::new();
                for pick in seated.by_ref().take(args.members as usize) {
                    let person = person(args.seed, studio, pick);
                    members.push(MemberPlan {
                        hr_max: member_max(person.profile.as_ref(), year, args.hr_max_bpm),
                        profile: person.profile,
                        member_id: person.member_id,
                        machine: kind.machine(&mut class_rng),
                        hr_phase_ms: class_rng.random_range(0..args.sample_ms),
                        machine_phase_ms: class_rng.random_range(0..args.sample_ms),
                        max_hr: person.max_hr,
                        rest_hr: person.rest_hr,
                        fitness: class_rng.random_range(0.8..1.1),
                    });
                }
                let per_device =
                    |phase: i64| ((class_ms - phase + args.sample_ms - 1) / args.sample_ms) as u64;
                let events = members
                    .iter()
                    .map(|m| per_device(m.hr_phase_ms) + per_device(m.machine_phase_ms))
                    .sum();
                classes.push(ClassPlan {
                    index,
                    studio_id: studio_id.clone(),
                    class_id,
                    start_ms,
                    end_ms: start_ms + class_ms,
                    clock_offset_ms,
                    tz_offset_min,
                    members,
                    base_index: 0,
                    events,
                    resend: (xxhash(&format!("{}:{index}:resend", args.seed)) as f64)
                        < args.resend_rate * u64::MAX as f64,
                });
            }
        }
        classes.sort_by_key(|c| (c.start_ms, c.index));
        let mut base = 0;
        for class in &mut classes {
            class.base_index = base;
            base += class.events;
        }
        anyhow::ensure!(base < INVALID_BASE, "too many events for the id space");
        let start_ms = classes.iter().map(|c| c.start_ms).min().unwrap_or(0) / TICK_MS * TICK_MS;
        let resends_end = classes
            .iter()
            .filter(|c| c.resend)
            .map(|c| c.end_ms + args.resend_after_ms)
            .max()
            .unwrap_or(0);
        let end_ms = (classes.iter().map(|c| c.end_ms).max().unwrap_or(0)
            + args.late_hold_ms().max(MAX_RETRY_DELAY_MS))
        .max(resends_end)
            + TICK_MS;
        let run_id = (xxhash(&format!("{}:{start_ms}", args.seed)) & 0xffff_ffff) as u32;
        Ok(Plan {
            args: args.clone(),
            pacing: Pacing {
                wall_start_ms: now_ms,
                speedup,
            },
            run_id,
            classes,
            start_ms,
            end_ms,
        })
    }

    /// The profiles of every member the run seats who has one, as NDJSON: what the members
    /// table or `CLASSPULSE_MEMBERS_FILE` holds for classpulse.
    pub fn profiles_ndjson(&self) -> String {
        let mut lines = BTreeMap::new();
        for class in &self.classes {
            for member in &class.members {
                if let Some(profile) = &member.profile {
                    lines.insert(member.member_id.clone(), profile.to_json(&member.member_id));
                }
            }
        }
        lines
            .into_values()
            .flat_map(|line| [line, "\n".to_owned()])
            .collect()
    }

    /// Valid events in all (each sent at least once).
    pub fn valid_events(&self) -> u64 {
        self.classes.iter().map(|c| c.events).sum()
    }

    /// The most classes running in the same minute, and when.
    pub fn peak_concurrency(&self) -> (usize, i64) {
        let mut changes: BTreeMap<i64, i64> = BTreeMap::new();
        for class in &self.classes {
            *changes.entry(class.start_ms).or_default() += 1;
            *changes.entry(class.end_ms).or_default() -= 1;
        }
        let (mut running, mut peak, mut at) = (0i64, 0i64, 0);
        for (time, change) in changes {
            running += change;
            if running > peak {
                (peak, at) = (running, time);
            }
        }
        (peak as usize, at)
    }

    /// The event id of a valid event's index (or an invalid one's, from [`INVALID_BASE`]):
    /// shaped like a UUID, the run in the first group and the index in the last, with hash
    /// bits between so ids are not sequential text.
    pub fn event_id(&self, index: u64) -> String {
        event_id(self.run_id, index)
    }

    /// Wall-clock time at which the tick at `time_ms` is sent (the pacing's estimate).
    pub fn wall_due_ms(&self, time_ms: i64) -> Option<i64> {
        (self.pacing.speedup > 0.0).then(|| {
            self.pacing.wall_start_ms
                + ((time_ms - self.start_ms) as f64 / self.pacing.speedup) as i64
        })
    }

    /// Generates every message in send order, with the expectations of every class.
    pub fn generate(&self, mut send: impl FnMut(Message)) -> Expected {
        let mut expected = Expected::default();
        let mut next = 0;
        let mut active: Vec<ClassGen> = Vec::new();
        let mut tick = self.start_ms;
        while tick <= self.end_ms || !active.is_empty() {
            while next < self.classes.len() && self.classes[next].start_ms < tick + TICK_MS {
                active.push(ClassGen::new(self, &self.classes[next]));
                next += 1;
            }
            for class in &mut active {
                class.tick(self, tick, &mut expected, &mut send);
                for message in expected.take_stash() {
                    send(message);
                }
            }
            active.retain_mut(|class| {
                let done = class.done(tick);
                if done {
                    expected.finish_class(
                        class.plan,
                        std::mem::take(&mut class.acc),
                        &self.args.rules(),
                    );
                }
                !done
            });
            if next >= self.classes.len() && active.is_empty() {
                break;
            }
            tick += TICK_MS;
        }
        expected
    }
}

/// A message to produce: one class's events, keyed by class.
#[derive(Debug)]
pub struct Message {
    pub key: String,
    pub payload: Vec<u8>,
    /// Events (valid or not) in it.
    pub events: u32,
    /// Event time of the tick that sent it.
    pub tick_ms: i64,
    /// Valid-event indices first sent in it that the aggregates count (for end-to-end
    /// latency), in order.
    pub first_sends: Vec<u64>,
    /// Late events' indices sent in it (in the lake, not in the aggregates).
    pub late_sends: Vec<u64>,
}

/// An event held back: (due tick, JSON, index if valid and first sent, and whether it is
/// late).
type Held = (i64, String, Option<(u64, bool)>);

/// A class being generated.
struct ClassGen<'a> {
    plan: &'a ClassPlan,
    rng: ChaCha8Rng,
    devices: Vec<DeviceState>,
    next_seq: u64,
    next_invalid: u64,
    /// Events waiting to go out.
    delayed: Vec<Held>,
    pending: Vec<String>,
    pending_first: Vec<u64>,
    pending_late: Vec<u64>,
    acc: ClassAcc,
    messages_sent: u64,
    /// With [`ClassPlan::resend`]: every valid event sent, until it is posted again.
    sent: Vec<String>,
    resent: bool,
}

#[derive(Default)]
struct DeviceState {
    distance_m: f64,
    calories: f64,
}

/// Whether a valid event is sent once, twice, held back, or held back past the lateness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    OnTime,
    Retried(i64),
    Disordered(i64),
    Late,
}

impl<'a> ClassGen<'a> {
    fn new(plan: &Plan, class: &'a ClassPlan) -> ClassGen<'a> {
        // A second stream per class for values, apart from the one that drew its members.
        let rng = class_rng(plan.args.seed ^ 0x5eed_5eed, class.index);
        ClassGen {
            plan: class,
            rng,
            devices: class
                .members
                .iter()
                .map(|_| DeviceState::default())
                .collect(),
            next_seq: 0,
            next_invalid: 0,
            delayed: Vec::new(),
            pending: Vec::new(),
            pending_first: Vec::new(),
            pending_late: Vec::new(),
            acc: ClassAcc::seated(
                class
                    .members
                    .iter()
                    .map(|m| (m.member_id.clone(), m.hr_max, m.profile.clone())),
            ),
            messages_sent: 0,
            sent: Vec::new(),
            resent: !class.resend,
        }
    }

    fn done(&self, tick: i64) -> bool {
        tick >= self.plan.end_ms
            && self.delayed.is_empty()
            && self.pending.is_empty()
            && self.resent
    }

    fn tick(
        &mut self,
        plan: &Plan,
        tick: i64,
        expected: &mut Expected,
        send: &mut impl FnMut(Message),
    ) {
        let class = self.plan;
        let args = &plan.args;
        if tick + TICK_MS > class.start_ms && tick < class.end_ms {
            for member in 0..class.members.len() {
                let m = &class.members[member];
                for (phase, kind) in [
                    (m.hr_phase_ms, Kind::HeartRate),
                    (m.machine_phase_ms, m.machine),
                ] {
                    // Samples at start + phase + k * sample, for those in this tick.
                    let first = class.start_ms + phase;
                    let mut k = if tick <= first {
                        0
                    } else {
                        (tick - first + args.sample_ms - 1) / args.sample_ms
                    };
                    loop {
                        let time_ms = first + k * args.sample_ms;
                        if time_ms >= tick + TICK_MS || time_ms >= class.end_ms {
                            break;
                        }
                        if time_ms >= tick {
                            self.sample(plan, member, kind, time_ms, expected);
                        }
                        k += 1;
                    }
                }
            }
        }
        // The class's queue posted again, long after it is final.
        if !self.resent && tick >= class.end_ms + args.resend_after_ms {
            self.resent = true;
            expected.resent_classes += 1;
            for json in std::mem::take(&mut self.sent) {
                expected.retried();
                self.pending.push(json);
            }
        }
        // Held-back events that are due go out with this tick's.
        let mut index = 0;
        while index < self.delayed.len() {
            if self.delayed[index].0 <= tick {
                let (_, json, first) = self.delayed.swap_remove(index);
                self.pending.push(json);
                match first {
                    Some((index, true)) => self.pending_late.push(index),
                    Some((index, false)) => self.pending_first.push(index),
                    None => {}
                }
            } else {
                index += 1;
            }
        }
        // Cut messages of the configured size; whatever is left goes at the end of the tick
        // (a producer's linger), so no event waits for the next second.
        while !self.pending.is_empty() {
            let n = self.pending.len().min(args.events_per_message);
            let events: Vec<String> = self.pending.drain(..n).collect();
            let first_sends = std::mem::take(&mut self.pending_first);
            let late_sends = std::mem::take(&mut self.pending_late);
            self.emit(tick, events, (first_sends, late_sends), send);
        }
    }

    fn emit(
        &mut self,
        tick: i64,
        events: Vec<String>,
        (first_sends, late_sends): (Vec<u64>, Vec<u64>),
        send: &mut impl FnMut(Message),
    ) {
        // Alternate the two batch framings the contract allows.
        let ndjson = (self.plan.index as u64 + self.messages_sent) % 2 == 1;
        self.messages_sent += 1;
        let mut payload = Vec::with_capacity(events.iter().map(|e| e.len() + 1).sum::<usize>() + 2);
        if ndjson || events.len() == 1 {
            for (i, event) in events.iter().enumerate() {
                if i > 0 {
                    payload.push(b'\n');
                }
                payload.extend_from_slice(event.as_bytes());
            }
        } else {
            payload.push(b'[');
            for (i, event) in events.iter().enumerate() {
                if i > 0 {
                    payload.push(b',');
                }
                payload.extend_from_slice(event.as_bytes());
            }
            payload.push(b']');
        }
        send(Message {
            key: self.plan.key(),
            payload,
            events: events.len() as u32,
            tick_ms: tick,
            first_sends,
            late_sends,
        });
    }

    /// One reading of one device.
    fn sample(
        &mut self,
        plan: &Plan,
        member: usize,
        kind: Kind,
        time_ms: i64,
        expected: &mut Expected,
    ) {
        let class = self.plan;
        let args = &plan.args;
        let m = &class.members[member];
        let intensity = intensity_at(class, time_ms);
        let effort = intensity * m.fitness * self.rng.random_range(0.95..1.05);
        let seconds = args.sample_ms as f64 / 1000.0;
        let device = &mut self.devices[member];
        let reading = match kind {
            Kind::HeartRate => {
                let noise: f64 = self.rng.random_range(-4.0..4.0);
                let bpm = (m.rest_hr + (m.max_hr - m.rest_hr) * effort + noise)
                    .clamp(45.0, 215.0)
                    .round();
                Reading::HeartRate { bpm }
            }
            Kind::Treadmill => {
                let speed = round1((4.0 + 12.0 * effort).min(30.0));
                device.distance_m += speed / 3.6 * seconds;
                device.calories += speed * 0.018 * seconds;
                Reading::Treadmill {
                    speed,
                    incline: (effort * 6.0).round(),
                    distance: round1(device.distance_m),
                    calories: round1(device.calories),
                }
            }
            Kind::Rower => {
                let watts = (60.0 + 260.0 * effort).round();
                device.distance_m += (watts / 2.8).cbrt() * seconds;
                device.calories += watts * 0.0011 * seconds;
                Reading::Rower {
                    spm: (16.0 + 16.0 * effort).round(),
                    watts,
                    distance: round1(device.distance_m),
                    calories: round1(device.calories),
                }
            }
            Kind::Bike => {
                let watts = (70.0 + 240.0 * effort).round();
                device.distance_m += (20.0 + 20.0 * effort) / 3.6 * seconds;
                device.calories += watts * 0.001 * seconds;
                Reading::Bike {
                    cadence: (60.0 + 45.0 * effort).round(),
                    watts,
                    distance: round1(device.distance_m),
                    calories: round1(device.calories),
                }
            }
            Kind::FreeWeights => Reading::Weights {
                exercise: EXERCISES[self.rng.random_range(0..EXERCISES.len())],
                reps: self.rng.random_range(6..=15),
                weight: round1(f64::from(self.rng.random_range(2u32..=24)) * 2.5 * m.fitness),
            },
        };
        let index = class.base_index + self.next_seq;
        self.next_seq += 1;
        let created_ms = time_ms + class.clock_offset_ms;
        let json = event_json(
            class,
            member,
            kind,
            created_ms,
            &plan.event_id(index),
            &reading,
        );

        // A fast studio clock puts the event ahead of the arrival time: past the allowed
        // skew, classpulse rejects it.
        let arrival_ms = plan
            .wall_due_ms(time_ms)
            .unwrap_or(plan.pacing.wall_start_ms);
        if created_ms > arrival_ms + args.max_clock_skew_ms {
            expected.rejected(index, "timestamp_skew");
            self.pending.push(json);
            return;
        }

        let fate = self.fate(plan, time_ms);
        if class.resend {
            self.sent.push(json.clone());
        }
        match fate {
            Fate::Late => {
                expected.late(index);
                self.delayed.push((
                    tick_of(time_ms + args.late_hold_ms()),
                    json,
                    Some((index, true)),
                ));
                return;
            }
            Fate::Retried(delay) => {
                expected.retried();
                self.delayed
                    .push((tick_of(time_ms + delay), json.clone(), None));
                self.pending.push(json);
                self.pending_first.push(index);
            }
            Fate::Disordered(delay) => {
                self.delayed
                    .push((tick_of(time_ms + delay), json, Some((index, false))));
            }
            Fate::OnTime => {
                self.pending.push(json);
                self.pending_first.push(index);
            }
        }
        self.acc
            .add(&m.member_id, kind, created_ms, &reading, &args.rules());

        // Invalid extras, each with an id of its own.
        let roll: f64 = self.rng.random();
        if roll < args.malformed_rate {
            let id = self.invalid_id(plan);
            let mut text = event_json(class, member, kind, created_ms, &id, &reading);
            text.truncate(text.find("\"event_created\"").unwrap_or(text.len()) + 20);
            expected.invalid(id, "not_json");
            // A truncated event breaks the framing of a batch, so it travels alone, as a
            // corrupted message does.
            self.emit(tick_of(time_ms), vec![text], Default::default(), &mut |m| {
                expected.stash(m)
            });
        } else if roll < args.malformed_rate + args.out_of_range_rate {
            let id = self.invalid_id(plan);
            let bad = Reading::HeartRate { bpm: 400.0 };
            let text = event_json(class, member, Kind::HeartRate, created_ms, &id, &bad);
            expected.invalid(id, "out_of_range");
            self.pending.push(text);
        }
    }

    fn invalid_id(&mut self, plan: &Plan) -> String {
        let index =
            INVALID_BASE + u64::from(self.plan.index) * INVALID_PER_CLASS + self.next_invalid;
        self.next_invalid += 1;
        plan.event_id(index)
    }

    fn fate(&mut self, plan: &Plan, time_ms: i64) -> Fate {
        let args = &plan.args;
        let roll: f64 = self.rng.random();
        // Late only where the class is still running when it arrives, so its watermark has
        // certainly passed it by more than the allowed lateness.
        if roll < args.late_rate && time_ms + args.late_hold_ms() < self.plan.end_ms {
            return Fate::Late;
        }
        let roll = roll - args.late_rate;
        if (0.0..args.duplicate_rate).contains(&roll) {
            return Fate::Retried(self.rng.random_range(TICK_MS..=MAX_RETRY_DELAY_MS));
        }
        let roll = roll - args.duplicate_rate;
        if (0.0..args.out_of_order_rate).contains(&roll) {
            return Fate::Disordered(self.rng.random_range(TICK_MS..=MAX_DISORDER_MS));
        }
        Fate::OnTime
    }
}

/// A device reading, as sent in `event_data`.
#[derive(Debug, Clone, Copy)]
pub enum Reading {
    HeartRate {
        bpm: f64,
    },
    Treadmill {
        speed: f64,
        incline: f64,
        distance: f64,
        calories: f64,
    },
    Rower {
        spm: f64,
        watts: f64,
        distance: f64,
        calories: f64,
    },
    Bike {
        cadence: f64,
        watts: f64,
        distance: f64,
        calories: f64,
    },
    Weights {
        exercise: &'static str,
        reps: u32,
        weight: f64,
    },
}

fn event_json(
    class: &ClassPlan,
    member: usize,
    kind: Kind,
    created_ms: i64,
    id: &str,
    reading: &Reading,
) -> String {
    let m = &class.members[member];
    let mut json = String::with_capacity(300);
    let _ = write!(
        json,
        "{{\"event_id\":\"{id}\",\"event_type\":\"{}\",\"event_created\":",
        kind.as_str()
    );
    // Straps send local RFC 3339 times with the studio's offset, machines epoch milliseconds.
    if kind == Kind::HeartRate {
        let _ = write!(
            json,
            "\"{}\"",
            local_rfc3339(created_ms, class.tz_offset_min)
        );
    } else {
        let _ = write!(json, "{created_ms}");
    }
    let device = if kind == Kind::HeartRate { "hr" } else { "eq" };
    let _ = write!(
        json,
        ",\"studio_id\":\"{}\",\"class_id\":\"{}\",\"member_id\":\"{}\",\"device_id\":\"{device}-{}\",\"event_data\":",
        class.studio_id, class.class_id, m.member_id, m.member_id
    );
    let _ = match *reading {
        Reading::HeartRate { bpm } => write!(json, "{{\"bpm\":{bpm}}}"),
        Reading::Treadmill { speed, incline, distance, calories } => write!(
            json,
            "{{\"speed_kph\":{speed},\"incline_pct\":{incline},\"distance_m\":{distance},\"calories\":{calories}}}"
        ),
        Reading::Rower { spm, watts, distance, calories } => write!(
            json,
            "{{\"stroke_rate_spm\":{spm},\"watts\":{watts},\"distance_m\":{distance},\"calories\":{calories}}}"
        ),
        Reading::Bike { cadence, watts, distance, calories } => write!(
            json,
            "{{\"cadence_rpm\":{cadence},\"watts\":{watts},\"distance_m\":{distance},\"calories\":{calories}}}"
        ),
        Reading::Weights { exercise, reps, weight } => write!(
            json,
            "{{\"exercise\":\"{exercise}\",\"reps\":{reps},\"weight_kg\":{weight}}}"
        ),
    };
    json.push('}');
    json
}

/// Warm-up, alternating 3-minute intervals, cool-down.
fn intensity_at(class: &ClassPlan, time_ms: i64) -> f64 {
    let phase = (time_ms - class.start_ms) as f64 / (class.end_ms - class.start_ms) as f64;
    if phase < 0.15 {
        0.45 + phase / 0.15 * 0.25
    } else if phase > 0.9 {
        0.55
    } else if ((time_ms - class.start_ms) / 180_000) % 2 == 0 {
        0.7
    } else {
        0.92
    }
}

fn class_rng(seed: u64, class: u32) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(class))
}

fn tick_of(time_ms: i64) -> i64 {
    time_ms.div_euclid(TICK_MS) * TICK_MS
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn xxhash(text: &str) -> u64 {
    // FNV-1a: stable and dependency-free; only names the run.
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `run` in the first group, `index` in the last 12 hex digits (48 bits), mixing bits between.
pub fn event_id(run: u32, index: u64) -> String {
    let mix = index.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(run);
    format!(
        "{run:08x}-{:04x}-4{:03x}-{:04x}-{index:012x}",
        (mix >> 48) & 0xffff,
        (mix >> 36) & 0xfff,
        0x8000 | ((mix >> 20) & 0x3fff)
    )
}

/// The run and index of an id made by [`event_id`], if it is one.
pub fn parse_event_id(id: &str) -> Option<(u32, u64)> {
    let bytes = id.as_bytes();
    if bytes.len() != 36 || bytes[8] != b'-' || bytes[23] != b'-' {
        return None;
    }
    let run = u32::from_str_radix(&id[..8], 16).ok()?;
    let index = u64::from_str_radix(&id[24..], 16).ok()?;
    Some((run, index))
}

/// RFC 3339 with milliseconds at a fixed offset, e.g. `2026-11-24T06:00:04.000-05:00`.
pub fn local_rfc3339(time_ms: i64, offset_min: i32) -> String {
    let offset = chrono::FixedOffset::east_opt(offset_min * 60)
        .unwrap_or(chrono::FixedOffset::east_opt(0).unwrap());
    DateTime::<Utc>::from_timestamp_millis(time_ms)
        .unwrap_or_default()
        .with_timezone(&offset)
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// UTC RFC 3339 with milliseconds, as classpulse writes times.
pub fn utc_rfc3339(time_ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(time_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> WorkloadArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: WorkloadArgs,
        }
        let mut args = Cli::parse_from(["x"]).args;
        args.studios = 10;
        args.class_minutes = 20;
        args.day = NaiveDate::from_ymd_opt(2026, 11, 20);
        args
    }

    /// A class posted again sends every valid event it sent, once more, after it is final.
    #[test]
    fn a_class_posted_again_repeats_its_events_after_it_is_final() {
        let mut args = small();
        args.resend_rate = 0.3;
        let plan = Plan::new(&args, 0.0, 1_800_000_000_000).unwrap();
        let resent: Vec<&ClassPlan> = plan.classes.iter().filter(|c| c.resend).collect();
        assert!(!resent.is_empty() && resent.len() < plan.classes.len());
        let mut again: BTreeMap<String, u64> = BTreeMap::new();
        let expected = plan.generate(|m| {
            if let Some(class) = resent.iter().find(|c| c.key() == m.key) {
                if m.tick_ms >= class.end_ms + args.resend_after_ms {
                    *again.entry(m.key.clone()).or_default() += u64::from(m.events);
                }
            }
        });
        assert_eq!(expected.resent_classes, resent.len() as u64);
        assert!(expected.rejected_valid.is_empty());
        for class in resent {
            assert_eq!(again[&class.key()], class.events, "{}", class.key());
        }
    }

    /// Every member is seated once a run, with the same body and profile wherever they are;
    /// the population has each kind of profile the expectations distinguish.
    #[test]
    fn members_are_seated_once_with_their_own_profile() {
        let mut args = small();
        args.classes_per_day = 4;
        let plan = Plan::new(&args, 0.0, 1_800_000_000_000).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        let mut sources: BTreeMap<&str, usize> = BTreeMap::new();
        for class in &plan.classes {
            for member in &class.members {
                assert!(
                    seen.insert(member.member_id.clone()),
                    "{} twice",
                    member.member_id
                );
                *sources.entry(member.hr_max.1).or_default() += 1;
            }
        }
        for source in ["manual", "measured", "formula", "default"] {
            assert!(sources.contains_key(source), "{sources:?}");
        }
        let profiles = plan.profiles_ndjson();
        assert_eq!(profiles.lines().count(), seen.len() - sources["default"]);
        let again = person(args.seed, 3, 17);
        assert_eq!(again.profile, person(args.seed, 3, 17).profile);
        for line in profiles.lines() {
            let profile: serde_json::Value = serde_json::from_str(line).unwrap();
            let year = profile["birth_year"].as_i64().unwrap();
            assert!((1946..=2008).contains(&year), "{line}");
        }
    }

    #[test]
    fn ids_round_trip_and_look_like_uuids() {
        for index in [0, 1, 69_119_999, INVALID_BASE + 12345] {
            let id = event_id(0xdead_beef, index);
            assert_eq!(id.len(), 36, "{id}");
            assert_eq!(parse_event_id(&id), Some((0xdead_beef, index)));
        }
        assert_ne!(event_id(1, 1)[9..23], event_id(1, 2)[9..23]);
        assert_eq!(parse_event_id("not-an-id"), None);
    }

    #[test]
    fn the_full_workload_is_69_million_events_a_day() {
        let mut args = small();
        args.studios = 800;
        let plan = Plan::new(&args, 0.0, 1_800_000_000_000).unwrap();
        assert_eq!(plan.classes.len(), 3200);
        // 20-minute classes here: 12 members x 2 devices x 300 samples.
        assert_eq!(plan.valid_events(), 3200 * 12 * 2 * 300);
        args.class_minutes = 60;
        let plan = Plan::new(&args, 0.0, 1_800_000_000_000).unwrap();
        assert_eq!(plan.valid_events(), 69_120_000);
        let (peak, _) = plan.peak_concurrency();
        assert!((200..800).contains(&peak), "{peak}");
    }

    #[test]
    fn generation_sends_every_planned_event_and_is_deterministic() {
        let args = small();
        let plan = Plan::new(&args, 0.0, 1_800_000_000_000).unwrap();
        let mut firsts = Vec::new();
        let mut bytes = 0usize;
        let mut events = 0u64;
        let expected = plan.generate(|m| {
            firsts.extend(m.first_sends);
            firsts.extend(m.late_sends);
            bytes += m.payload.len();
            events += u64::from(m.events);
        });
        // Every valid event that is not rejected is first sent exactly once (late ones too).
        firsts.sort_unstable();
        let n = firsts.len();
        firsts.dedup();
        assert_eq!(firsts.len(), n);
        assert!(!expected.late.is_empty());
        assert_eq!(
            n as u64 + expected.rejected_valid.len() as u64,
            plan.valid_events()
        );
        assert_eq!(
            events,
            plan.valid_events() + expected.retries + expected.invalid.len() as u64
        );
        let mut again = 0usize;
        plan.generate(|m| again += m.payload.len());
        assert_eq!(again, bytes);
    }

    #[test]
    fn a_paced_real_time_run_predicts_the_fast_clock_rejected() {
        let mut args = small();
        args.all_at_once = true;
        args.class_minutes = 2;
        let now = 1_800_000_000_000;
        let plan = Plan::new(&args, 1.0, now).unwrap();
        assert!(plan.start_ms <= now && now - plan.start_ms < 2000);
        let expected = plan.generate(|_| {});
        let fast = plan
            .classes
            .iter()
            .filter(|c| c.clock_offset_ms > 0)
            .map(|c| c.events)
            .sum::<u64>();
        assert_eq!(expected.rejected_valid.len() as u64, fast);
        // Unpaced, the same classes run in the past and nothing is ahead of the clock.
        let plan = Plan::new(&args, 0.0, now).unwrap();
        assert!(plan.classes.iter().all(|c| c.end_ms <= now));
        assert!(plan.generate(|_| {}).rejected_valid.is_empty());
    }

    #[test]
    fn rounds_run_classes_back_to_back_at_the_same_rate() {
        let mut args = small();
        args.all_at_once = true;
        args.class_minutes = 2;
        args.rounds = 3;
        let now = 1_800_000_000_000;
        let plan = Plan::new(&args, 1.0, now).unwrap();
        assert_eq!(plan.classes.len(), 30);
        let mut by_studio: BTreeMap<&str, Vec<&ClassPlan>> = BTreeMap::new();
        for class in &plan.classes {
            by_studio.entry(&class.studio_id).or_default().push(class);
        }
        assert_eq!(by_studio.len(), 10);
        for studio in by_studio.values_mut() {
            studio.sort_by_key(|c| c.start_ms);
            assert_eq!(studio.len(), 3);
            assert_eq!(studio[1].start_ms, studio[0].end_ms);
            assert_eq!(studio[2].start_ms, studio[1].end_ms);
            assert_ne!(studio[0].class_id, studio[1].class_id);
        }
        // At real time the last round ends six minutes from now, not in the past.
        assert!(plan.start_ms <= now && now - plan.start_ms < 2000);
        assert_eq!(plan.peak_concurrency().0, 10);
        args.all_at_once = false;
        assert!(Plan::new(&args, 1.0, now).is_err());
    }
}
