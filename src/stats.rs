//! Counters for the progress line and the run summary. Prometheus metrics are write-only from
//! inside the process, so the few numbers the process reports itself are kept here too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::aggregate::output::ClassSummary;

use crate::decode::RejectReason;

/// Totals since start. Updated per batch or per object, never per event.
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages read from the source.
    pub messages: AtomicU64,
    /// Valid events decoded.
    pub events: AtomicU64,
    /// Rejected inputs, by [`RejectReason::ALL`] index.
    pub rejected: [AtomicU64; 11],
    /// Objects written to the lake.
    pub lake_objects: AtomicU64,
    /// Bytes written to the lake.
    pub lake_bytes: AtomicU64,
    /// Events written to the lake.
    pub lake_records: AtomicU64,
    /// Dead-letter objects written.
    pub dead_letter_objects: AtomicU64,
    /// Dead letters written.
    pub dead_letter_records: AtomicU64,
    /// Events left out of the aggregates as duplicates.
    pub duplicates: AtomicU64,
    /// Events left out of the aggregates as late.
    pub late: AtomicU64,
    /// Classes made final.
    pub classes_final: AtomicU64,
    /// Final result objects written.
    pub aggregate_objects: AtomicU64,
    /// The final class with the highest effort on its leaderboard, for the run summary.
    pub top_class: Mutex<Option<ClassSummary>>,
    /// Members of final classes by where their maximum heart rate came from, in the order of
    /// `HrMaxSource`: manual, measured, observed, formula, default.
    pub hr_max_sources: [AtomicU64; 5],
    /// Members of final classes whose class raised their maximum.
    pub hr_max_raised: AtomicU64,
}

impl Stats {
    /// Adds to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Rejected inputs over all reasons.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().map(Stats::get).sum()
    }

    /// Non-zero rejection counts by reason.
    pub fn rejected_by_reason(&self) -> Vec<(RejectReason, u64)> {
        RejectReason::ALL
            .iter()
            .zip(&self.rejected)
            .map(|(reason, count)| (*reason, Stats::get(count)))
            .filter(|(_, count)| *count > 0)
            .collect()
    }

    /// Records an object written by `sink`.
    pub fn record_object(&self, sink: &str, records: usize, bytes: usize) {
        match sink {
            "lake" => {
                Stats::add(&self.lake_objects, 1);
                Stats::add(&self.lake_records, records as u64);
                Stats::add(&self.lake_bytes, bytes as u64);
            }
            "dead_letters" => {
                Stats::add(&self.dead_letter_objects, 1);
                Stats::add(&self.dead_letter_records, records as u64);
            }
            _ => {}
        }
    }
}
