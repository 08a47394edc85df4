//! Samples chained in event time, each counting the capped gap to the one before: heart rate
//! ([`super::class::HeartRate`]) and machine work ([`super::energy::Work`]). When a class's key
//! moves, two parts of one chain meet; [`interleave`] lays them out in time order.

/// A chain of samples: pending ones in event-time order, and the sums of the sealed ones.
pub trait Chain {
    /// What a part's sealed samples sum to, taken whole.
    type Sums;
    /// What sealing needs (the rules, or the gap cap).
    type Context: ?Sized;

    /// Event time of the earliest pending sample.
    fn first_pending_ms(&self) -> Option<i64>;
    /// Seals every pending sample at or before `time_ms`.
    fn seal_through(&mut self, time_ms: i64, context: &Self::Context);
    /// Appends a part's sealed samples after what is sealed (the first of them gets the
    /// capped gap to the last sealed sample).
    fn append(&mut self, block: Block<Self::Sums>, context: &Self::Context);
}

/// One part's sealed samples.
pub struct Block<S> {
    /// Event time of the first sample.
    pub first_ms: i64,
    /// Event time of the last sample.
    pub last_ms: i64,
    /// What they sum to, with what the first sample needs to be chained.
    pub sums: S,
}

/// Lays out `blocks` (the parts' sealed samples, taken out of `chain`, whose sealed sums are
/// reset) and `chain`'s pending samples in time order, sealing every sample up to the end of
/// the last block; later samples stay pending. Exact unless a sample or block of one part
/// falls inside another block.
pub fn interleave<C: Chain>(chain: &mut C, mut blocks: Vec<Block<C::Sums>>, context: &C::Context) {
    blocks.sort_by_key(|b| (b.first_ms, b.last_ms));
    let end = blocks.last().map(|b| b.last_ms);
    let mut blocks = blocks.into_iter().peekable();
    loop {
        let sample = chain
            .first_pending_ms()
            .filter(|time| end.is_some_and(|end| *time <= end));
        match (sample, blocks.peek().map(|b| b.first_ms)) {
            (None, None) => break,
            (Some(time), next) if next.is_none_or(|first| time < first) => {
                chain.seal_through(time, context);
            }
            _ => {
                let Some(block) = blocks.next() else { break };
                chain.append(block, context);
            }
        }
    }
}

/// Moves the last sealed time `last` on to `time_ms`, never back.
pub fn reach(last: &mut Option<i64>, time_ms: i64) {
    *last = Some(last.map_or(time_ms, |l| l.max(time_ms)));
}
