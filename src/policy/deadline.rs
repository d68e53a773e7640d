//! The one deadline a request has on the upstream (README "One deadline per request"): apart
//! from the time its connects take, a request spends at most `read_timeout` on the upstream in
//! all, over every attempt and back-off. A retry's timeout is what is left, and no retry starts
//! when what would be left after its back-off is less than `useful` (a tenth of
//! `read_timeout`, at least `MIN_USEFUL`). Pure: the caller passes the clock.

use std::time::{Duration, Instant};

/// The least time worth giving a retry, whatever `read_timeout` is.
pub const MIN_USEFUL: Duration = Duration::from_millis(100);

/// The least time a retry must have left after its back-off: a tenth of `read_timeout`, at
/// least `MIN_USEFUL`. An upstream that needed most of `read_timeout` for the failed attempt
/// is not given a sliver of it for the next.
pub fn useful(read_timeout: Duration) -> Duration {
    (read_timeout / 10).max(MIN_USEFUL)
}

/// A request's time on the upstream: `read_timeout` from its first attempt, plus the time its
/// connects took.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    start: Instant,
    budget: Duration,
    excused: Duration,
}

impl Deadline {
    pub fn new(start: Instant, read_timeout: Duration) -> Self {
        Deadline {
            start,
            budget: read_timeout,
            excused: Duration::ZERO,
        }
    }

    /// Time spent connecting (bounded by `connect_timeout` each time): not counted.
    pub fn excuse(&mut self, connecting: Duration) {
        self.excused += connecting;
    }

    /// What is left at `now`: the next attempt's timeout.
    pub fn left(&self, now: Instant) -> Duration {
        let spent = now.saturating_duration_since(self.start);
        (self.budget + self.excused).saturating_sub(spent)
    }

    /// When nothing is left (as it stands: a later `excuse` moves it).
    pub fn end(&self) -> Instant {
        self.start + self.budget + self.excused
    }

    /// True if a retry that waits `backoff` from `now` would still have a useful time left.
    pub fn retry_fits(&self, now: Instant, backoff: Duration) -> bool {
        let left = self.left(now);
        left > backoff && left - backoff >= useful(self.budget)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_retry_gets_what_is_left_never_a_fresh_read_timeout() {
        let t = Instant::now();
        let d = Deadline::new(t, ms(2000));
        assert_eq!(d.left(t), ms(2000));
        assert_eq!(d.left(t + ms(300)), ms(1700));
        assert_eq!(d.left(t + ms(2500)), Duration::ZERO);
    }

    #[test]
    fn connect_time_is_not_counted() {
        let t = Instant::now();
        let mut d = Deadline::new(t, ms(2000));
        d.excuse(ms(900)); // an attempt that never connected
        assert_eq!(d.left(t + ms(1000)), ms(1900));
        assert_eq!(d.end(), t + ms(2900));
        assert_eq!(d.left(d.end()), Duration::ZERO);
    }

    #[test]
    fn no_retry_when_too_little_is_left_after_the_backoff() {
        let t = Instant::now();
        let d = Deadline::new(t, ms(2000)); // useful: 200 ms
        assert!(d.retry_fits(t + ms(100), ms(500)));
        assert!(d.retry_fits(t + ms(1500), ms(300)), "exactly 200 ms left");
        assert!(!d.retry_fits(t + ms(1700), ms(150)), "150 ms left");
        assert!(
            !d.retry_fits(t + ms(1900), ms(200)),
            "the back-off alone passes it"
        );
        assert!(!d.retry_fits(t + ms(2100), ms(0)));
    }

    #[test]
    fn useful_is_a_tenth_of_the_read_timeout_and_never_below_the_minimum() {
        assert_eq!(useful(Duration::from_secs(300)), Duration::from_secs(30));
        assert_eq!(useful(ms(2000)), ms(200));
        assert_eq!(useful(ms(500)), MIN_USEFUL);
    }
}
