//! Warnings that repeat, logged once per interval with a count of those left out: a broker
//! away for a minute makes librdkafka report "all brokers down" many times a second, and the
//! log would drown in the same line.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Admits one log line per key and interval.
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    /// Per key: when a line was last admitted, and how many were refused since.
    seen: Mutex<HashMap<String, (Instant, u64)>>,
}

impl LogLimiter {
    pub fn new(interval: Duration) -> LogLimiter {
        LogLimiter {
            interval,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a line about `key` is to be logged now; if so, how many lines about it were
    /// left out since the last one that was.
    pub fn admit(&self, key: &str) -> Option<u64> {
        self.admit_at(key, Instant::now())
    }

    fn admit_at(&self, key: &str, now: Instant) -> Option<u64> {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match seen.get_mut(key) {
            Some((logged_at, left_out)) if now.duration_since(*logged_at) < self.interval => {
                *left_out += 1;
                None
            }
            Some((logged_at, left_out)) => {
                *logged_at = now;
                Some(std::mem::take(left_out))
            }
            None => {
                seen.insert(key.to_owned(), (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_and_interval_then_the_count_of_those_left_out() {
        let limiter = LogLimiter::new(Duration::from_secs(30));
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        assert_eq!(limiter.admit_at("down", at(0)), Some(0));
        assert_eq!(limiter.admit_at("down", at(1)), None);
        assert_eq!(limiter.admit_at("down", at(29)), None);
        // Another key has its own allowance.
        assert_eq!(limiter.admit_at("ssl", at(29)), Some(0));
        assert_eq!(limiter.admit_at("down", at(30)), Some(2));
        assert_eq!(limiter.admit_at("down", at(31)), None);
        assert_eq!(limiter.admit_at("down", at(90)), Some(1));
    }
}
