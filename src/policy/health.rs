//! Active health checks as policy (README "Health checks"): what one check's result means —
//! healthy is any status below 500 within `health_check_timeout`, a 404 included — and the
//! rise/fall counting that turns results into "the upstream is up" or "down". No I/O and no
//! clock of its own: the checker thread (`upstream/health.rs`) reports each result with the
//! time; the breaker (`breaker.rs`) holds this counter and opens or closes on its signals.

use std::time::{Duration, Instant};

use super::outcome::AttemptFailure;

/// The check settings the counting needs (`health_check_rise`, `_fall`, `_interval`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckSettings {
    pub rise: u32,
    pub fall: u32,
    pub interval: Duration,
}

/// How one check ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// The upstream answered with this status within the timeout.
    Status(u16),
    /// No answer: refused, timed out, reset, malformed.
    Failed(AttemptFailure),
}

impl CheckResult {
    /// Healthy: any answer below 500. A 404 means the upstream is up and has no such path.
    pub fn passed(self) -> bool {
        matches!(self, CheckResult::Status(s) if s < 500)
    }

    pub fn status(self) -> Option<u16> {
        match self {
            CheckResult::Status(s) => Some(s),
            CheckResult::Failed(_) => None,
        }
    }

    /// The reason word of a failure without a status (`upstream_timeout`, `connect_failed`…).
    pub fn error(self) -> Option<&'static str> {
        match self {
            CheckResult::Status(_) => None,
            CheckResult::Failed(f) => Some(f.reason().as_str()),
        }
    }
}

/// What the checks say about the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Unhealthy,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// A change of `Health`, for the breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// `rise` checks in a row passed while unhealthy.
    Up,
    /// `fall` checks in a row failed while healthy.
    Down,
}

/// The last check, for `/proxy-health`, `/proxy-metrics` and Prometheus.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LastCheck {
    pub result: CheckResult,
    pub latency: Duration,
    pub at: Instant,
}

/// A consistent read of the checks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CheckView {
    pub health: Health,
    pub last: Option<LastCheck>,
}

/// The rise/fall counter.
#[derive(Debug)]
pub struct Checks {
    settings: CheckSettings,
    health: Health,
    passes: u32,
    fails: u32,
    last: Option<LastCheck>,
}

impl Checks {
    /// Starts `health` (healthy while the breaker is closed, unhealthy while it is not).
    pub fn new(settings: CheckSettings, health: Health) -> Self {
        Checks {
            settings: Self::sane(settings),
            health,
            passes: 0,
            fails: 0,
            last: None,
        }
    }

    fn sane(s: CheckSettings) -> CheckSettings {
        CheckSettings {
            rise: s.rise.max(1),
            fall: s.fall.max(1),
            interval: s.interval,
        }
    }

    /// New settings (SIGHUP); the counts so far stay.
    pub fn reconfigure(&mut self, settings: CheckSettings) {
        self.settings = Self::sane(settings);
    }

    /// Counts one check that ended at `now` after `latency`; a change of health is signalled.
    pub fn record(
        &mut self,
        now: Instant,
        result: CheckResult,
        latency: Duration,
    ) -> Option<Signal> {
        self.last = Some(LastCheck {
            result,
            latency,
            at: now,
        });
        if result.passed() {
            self.fails = 0;
            self.passes = self.passes.saturating_add(1);
            if self.health == Health::Unhealthy && self.passes >= self.settings.rise {
                self.health = Health::Healthy;
                return Some(Signal::Up);
            }
        } else {
            self.passes = 0;
            self.fails = self.fails.saturating_add(1);
            if self.health == Health::Healthy && self.fails >= self.settings.fall {
                self.health = Health::Unhealthy;
                return Some(Signal::Down);
            }
        }
        None
    }

    /// The breaker opened for another reason (requests failed): from now on `rise` passing
    /// checks are needed before it closes.
    pub fn suspect(&mut self) {
        self.health = Health::Unhealthy;
        self.passes = 0;
    }

    /// At the earliest, how long until `rise` passing checks can close the breaker (for
    /// `Retry-After`).
    pub fn time_to_rise(&self) -> Duration {
        let left = self.settings.rise.saturating_sub(self.passes).max(1);
        self.settings.interval.saturating_mul(left)
    }

    pub fn view(&self) -> CheckView {
        CheckView {
            health: self.health,
            last: self.last,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: CheckResult = CheckResult::Status(200);
    const DOWN: CheckResult = CheckResult::Failed(AttemptFailure::Timeout);

    fn checks(health: Health) -> Checks {
        let s = CheckSettings {
            rise: 2,
            fall: 3,
            interval: Duration::from_secs(5),
        };
        Checks::new(s, health)
    }

    #[test]
    fn any_status_below_500_passes_a_404_included() {
        for s in [200, 204, 301, 401, 404, 499] {
            assert!(CheckResult::Status(s).passed(), "{s}");
        }
        for s in [500, 502, 503, 504, 599] {
            assert!(!CheckResult::Status(s).passed(), "{s}");
        }
        assert!(!DOWN.passed());
        assert_eq!(DOWN.error(), Some("upstream_timeout"));
        assert_eq!(CheckResult::Status(404).status(), Some(404));
    }

    #[test]
    fn fall_failures_in_a_row_signal_down_once() {
        let now = Instant::now();
        let mut c = checks(Health::Healthy);
        let ms = Duration::from_millis(1);
        assert_eq!(c.record(now, DOWN, ms), None);
        assert_eq!(c.record(now, DOWN, ms), None);
        assert_eq!(c.record(now, OK, ms), None, "a pass resets the count");
        assert_eq!(c.record(now, DOWN, ms), None);
        assert_eq!(c.record(now, DOWN, ms), None);
        assert_eq!(c.record(now, DOWN, ms), Some(Signal::Down));
        assert_eq!(c.record(now, DOWN, ms), None, "already down");
        assert_eq!(c.view().health, Health::Unhealthy);
    }

    #[test]
    fn rise_passes_in_a_row_signal_up() {
        let now = Instant::now();
        let mut c = checks(Health::Unhealthy);
        let ms = Duration::from_millis(1);
        assert_eq!(c.record(now, OK, ms), None);
        assert_eq!(c.record(now, DOWN, ms), None, "a failure resets the count");
        assert_eq!(c.record(now, OK, ms), None);
        assert_eq!(c.record(now, OK, ms), Some(Signal::Up));
        assert_eq!(c.record(now, OK, ms), None, "already up");
    }

    #[test]
    fn a_suspect_upstream_needs_rise_passes_counted_from_then() {
        let now = Instant::now();
        let mut c = checks(Health::Healthy);
        let ms = Duration::from_millis(1);
        for _ in 0..5 {
            c.record(now, OK, ms);
        }
        c.suspect();
        assert_eq!(c.view().health, Health::Unhealthy);
        assert_eq!(c.time_to_rise(), Duration::from_secs(10));
        assert_eq!(c.record(now, OK, ms), None);
        assert_eq!(c.time_to_rise(), Duration::from_secs(5));
        assert_eq!(c.record(now, OK, ms), Some(Signal::Up));
    }

    #[test]
    fn the_last_check_is_kept_with_its_latency_and_time() {
        let now = Instant::now();
        let mut c = checks(Health::Healthy);
        assert_eq!(c.view().last, None);
        let later = now + Duration::from_secs(3);
        c.record(later, CheckResult::Status(404), Duration::from_millis(7));
        let last = c.view().last.unwrap();
        assert_eq!(last.result, CheckResult::Status(404));
        assert_eq!(last.latency, Duration::from_millis(7));
        assert_eq!(last.at, later);
    }
}
