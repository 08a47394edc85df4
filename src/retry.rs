//! Exponential backoff with full jitter, for every retry loop in classpulse.
//!
//! Full jitter (a random delay between zero and the exponential cap) spreads the retries of
//! many tasks hitting the same throttled backend; see the AWS architecture blog's "Exponential
//! Backoff And Jitter".

use std::time::Duration;

use rand::Rng;

/// Delays for successive attempts of one operation.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Cap of the first delay.
    base: Duration,
    /// No delay exceeds this.
    max: Duration,
    /// Failed attempts so far.
    attempt: u32,
}

impl Backoff {
    /// Starts at `base`, doubling up to `max`.
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    /// Failed attempts so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The exponential cap for the next attempt, before jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(30));
        self.base.saturating_mul(factor).min(self.max)
    }

    /// Records a failure and returns how long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(rand::rng().random_range(0.0..=1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_stay_under_it() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let ceilings: Vec<_> = (0..10)
            .map(|_| {
                let ceiling = backoff.ceiling();
                let delay = backoff.next_delay();
                assert!(delay <= ceiling, "{delay:?} > {ceiling:?}");
                ceiling
            })
            .collect();
        assert_eq!(ceilings[0], Duration::from_millis(100));
        assert_eq!(ceilings[3], Duration::from_millis(800));
        assert_eq!(ceilings[9], Duration::from_secs(5));
        assert_eq!(backoff.attempts(), 10);
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut delays = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
            delays.insert(backoff.next_delay());
        }
        assert!(
            delays.len() > 10,
            "full jitter should rarely repeat a delay: {delays:?}"
        );
    }
}
