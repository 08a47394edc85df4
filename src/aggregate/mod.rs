//! Rolling class aggregates in event time, exactly once over at-least-once delivery.
//!
//! The aggregate stage sits between the decoder and the sinks. For each event it decides
//! (and writes on the event, for the lake) whether it is *counted*, a *duplicate* (the same
//! `event_id` already counted for its class) or *late* (older than its class's watermark minus
//! the allowed lateness, or for a class already final), and counts it into the state of its
//! class:
//!
//! - per member in a class: events by type; heart-rate samples, min, max, mean and seconds in
//!   each of 5 zones of the member's own maximum ([`heart`]; a sample counts the capped gap to
//!   the member's previous sample); `effort_points`; calories from heart rate and training
//!   load ([`energy`]); per machine the distance and energy (max minus min of the cumulative
//!   readings), mean and max of speed, power, cadence, stroke rate, work and the rower's
//!   split; free-weights sets, reps and volume;
//! - per class: the sums, and leaderboards by effort points, by work and by distance on each
//!   kind of machine;
//! - per class minute: events, members active, mean heart rate, distance gained.
//!
//! Time is event time. A class's watermark is its newest event time (each capped at its
//! arrival plus the allowed clock skew) minus the watermark delay. A class is final when its
//! partition's event time passes its last event by the idle timeout, when it has had no event
//! for that long on the wall clock, or when a bounded source ends. A drain does not finalise:
//! the class goes on in the next task that owns the partition.
//!
//! Exactly once: state is kept per source partition ([`partition`]) and checkpointed to the
//! object store with the position it includes ([`stage`]). A batch's acknowledgement is held
//! until a checkpoint that includes it is durable, so the committed position is never ahead of
//! the checkpoint; after a crash or a rebalance the state is restored and the replayed events
//! it already includes are skipped. Final results are rendered into the checkpoint first and
//! written after it (an outbox), under keys that depend only on the class ([`output`]).

pub mod chain;
pub mod checkpoint;
pub mod class;
pub mod directory;
pub mod energy;
pub mod heart;
pub mod output;
pub mod partition;
pub mod segment;
pub mod stage;

#[cfg(test)]
pub(crate) mod fixture;
#[cfg(test)]
pub(crate) mod reference;

use crate::config::AggregateConfig;
use heart::HeartModel;

/// The definitions' parameters, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    /// Maximum heart rates, zones and effort points.
    pub heart: HeartModel,
    /// Longest time one heart-rate sample counts for.
    pub hr_max_gap_ms: i64,
    /// How far a class's watermark trails its newest event.
    pub watermark_delay_ms: i64,
    /// How far behind the watermark an event may be and still count.
    pub allowed_lateness_ms: i64,
    /// Idle time after which a class is final.
    pub class_idle_timeout_ms: i64,
    /// How far ahead of its arrival an event may pull the watermark.
    pub max_clock_skew_ms: i64,
    /// How long (event time on the partition's clock) a final class is remembered after its
    /// last event: its events are late, never a new class, and copies of what it wrote are
    /// duplicates (those are found in its sealed segments for as long as they are kept).
    pub dedup_horizon_ms: i64,
    /// Members on each leaderboard.
    pub leaderboard_size: usize,
}

impl Default for Rules {
    /// The documented defaults.
    fn default() -> Rules {
        Rules {
            heart: HeartModel::default(),
            hr_max_gap_ms: 5_000,
            watermark_delay_ms: 10_000,
            allowed_lateness_ms: 300_000,
            class_idle_timeout_ms: 600_000,
            max_clock_skew_ms: 60_000,
            dedup_horizon_ms: 24 * 3_600_000,
            leaderboard_size: 5,
        }
    }
}

impl Rules {
    /// The rules configured.
    pub fn from_config(config: &AggregateConfig) -> Rules {
        let ms = |d: std::time::Duration| d.as_millis() as i64;
        Rules {
            heart: HeartModel {
                default_max_bpm: config.hr_max_bpm,
                formula: config.hr_max_formula,
                zone_tenths: config.hr_zone_tenths,
                basis: config.hr_zone_basis,
                effort_hundredths: config.effort_hundredths,
                raise_after_ms: ms(config.hr_max_raise_after),
            },
            hr_max_gap_ms: ms(config.hr_max_gap),
            watermark_delay_ms: ms(config.watermark_delay),
            allowed_lateness_ms: ms(config.allowed_lateness),
            class_idle_timeout_ms: ms(config.class_idle_timeout),
            max_clock_skew_ms: ms(config.max_clock_skew),
            dedup_horizon_ms: ms(config.dedup_horizon),
            leaderboard_size: config.leaderboard_size,
        }
    }
}
