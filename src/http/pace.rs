//! The minimum transfer rate a client must keep while a worker waits on it (like Apache's
//! `mod_reqtimeout` MinRate): a streamed request body, or a response too large to hand to the
//! front end. After `bytes` have moved, the next must arrive by `start + grace + bytes / rate`;
//! past that the transfer is cut (408 for a body). Pure: the caller passes the clock; the
//! connection (`conn.rs`) applies it as socket timeouts.

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub struct Pace {
    start: Instant,
    grace: Duration,
    /// Bytes per second; 0 turns the rule off.
    min_rate: u64,
}

impl Pace {
    pub fn new(start: Instant, grace: Duration, min_rate: u64) -> Self {
        Pace {
            start,
            grace,
            min_rate,
        }
    }

    /// When the transfer must have moved its next byte, having moved `bytes`.
    pub fn deadline(&self, bytes: u64) -> Option<Instant> {
        (self.min_rate > 0).then(|| {
            self.start + self.grace + Duration::from_secs_f64(bytes as f64 / self.min_rate as f64)
        })
    }

    /// How long the next socket operation may block: the time left, at most `cap`; `None` if
    /// the deadline has passed.
    pub fn wait(&self, bytes: u64, now: Instant, cap: Duration) -> Option<Duration> {
        match self.deadline(bytes) {
            None => Some(cap),
            Some(d) => d
                .checked_duration_since(now)
                .filter(|left| !left.is_zero())
                .map(|left| left.min(cap)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowance_grows_with_the_bytes_moved() {
        let t0 = Instant::now();
        let p = Pace::new(t0, Duration::from_secs(10), 1000);
        let cap = Duration::from_secs(60);
        assert_eq!(p.wait(0, t0, cap), Some(Duration::from_secs(10)));
        assert_eq!(p.wait(5000, t0, cap), Some(Duration::from_secs(15)));
        assert_eq!(p.wait(0, t0 + Duration::from_secs(10), cap), None);
        assert_eq!(
            p.wait(100_000, t0, cap),
            Some(cap),
            "never longer than the per-operation cap"
        );
    }

    #[test]
    fn a_zero_rate_turns_the_rule_off() {
        let t0 = Instant::now();
        let p = Pace::new(t0, Duration::ZERO, 0);
        let cap = Duration::from_secs(60);
        assert_eq!(p.wait(0, t0 + Duration::from_secs(3600), cap), Some(cap));
    }
}
