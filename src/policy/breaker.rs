//! The circuit breaker (README "What sluice does with a request"): a state machine with an injected clock and no I/O.
//!
//! closed → open after `threshold` consecutive failed requests; open → half-open after `open_for`;
//! half-open lets exactly one probe through; the probe's success closes it, its failure re-opens
//! it. The caller holds it behind a mutex and reports every admitted request's verdict.

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    /// The Prometheus gauge value: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> u8 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }
}

/// What the breaker says about one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Closed: go ahead.
    Pass,
    /// Half-open: go ahead as the one probe; report its verdict with `probe = true`.
    Probe,
    /// Open (or a probe is already out): answer 503 now; `retry_after` until the next probe.
    Reject { retry_after: Duration },
}

/// How an admitted request ended, as the breaker sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Success,
    /// Connect errors, timeouts, resets, 502/503/504 from the upstream.
    Failure,
    /// Says nothing about the upstream (client abort, sluice's own rejection).
    Neutral,
}

/// A state change, for logs and `sluice_circuit_transitions_total{to}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
}

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    open_for: Duration,
    state: State,
    opened_at: Option<Instant>,
    probe_out: bool,
    consecutive_failures: u32,
    times_opened: u64,
    last_transition: Option<Instant>,
}

impl Breaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            open_for,
            state: State::Closed,
            opened_at: None,
            probe_out: false,
            consecutive_failures: 0,
            times_opened: 0,
            last_transition: None,
        }
    }

    /// Applies new settings (SIGHUP) without losing the current state.
    pub fn reconfigure(&mut self, threshold: u32, open_for: Duration) {
        self.threshold = threshold.max(1);
        self.open_for = open_for;
    }

    /// The state as of `now` (open turns half-open once its time is up).
    pub fn state(&self, now: Instant) -> State {
        match (self.state, self.opened_at) {
            (State::Open, Some(t)) if now >= t + self.open_for => State::HalfOpen,
            (s, _) => s,
        }
    }

    /// True while the breaker refuses requests: open, or half-open with its probe out.
    pub fn refusing(&self, now: Instant) -> bool {
        match self.state(now) {
            State::Closed => false,
            State::Open => self.open_for(now).is_some(),
            State::HalfOpen => self.probe_out,
        }
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    pub fn times_opened(&self) -> u64 {
        self.times_opened
    }

    pub fn last_transition(&self) -> Option<Instant> {
        self.last_transition
    }

    /// While open and before its time is up: how long until the probe. Read-only, so callers can
    /// shed a request before queueing it; `admit` still decides for everything else.
    pub fn open_for(&self, now: Instant) -> Option<Duration> {
        match (self.state, self.opened_at) {
            (State::Open, Some(t)) if now < t + self.open_for => Some(t + self.open_for - now),
            _ => None,
        }
    }

    /// Asks to send one request upstream. Returns the decision and any state change it caused.
    pub fn admit(&mut self, now: Instant) -> (Admit, Option<Transition>) {
        match self.state {
            State::Closed => (Admit::Pass, None),
            State::Open => {
                let until = self.opened_at.map_or(now, |t| t + self.open_for);
                if now < until {
                    return (
                        Admit::Reject {
                            retry_after: until - now,
                        },
                        None,
                    );
                }
                let t = self.go(State::HalfOpen, now);
                self.probe_out = true;
                (Admit::Probe, t)
            }
            State::HalfOpen if !self.probe_out => {
                self.probe_out = true;
                (Admit::Probe, None)
            }
            State::HalfOpen => (
                Admit::Reject {
                    retry_after: Duration::from_secs(1),
                },
                None,
            ),
        }
    }

    /// As `admit`, for a request that may not be the probe (`may_probe` false: its body is still
    /// to come from the client, which could hold the breaker half-open at the client's pace):
    /// while half-open it is refused and the probe slot stays free for another request.
    pub fn admit_as(&mut self, now: Instant, may_probe: bool) -> (Admit, Option<Transition>) {
        if !may_probe && self.state(now) == State::HalfOpen {
            let retry_after = Duration::from_secs(1);
            return (Admit::Reject { retry_after }, None);
        }
        self.admit(now)
    }

    /// Reports how an admitted request ended.
    pub fn record(&mut self, now: Instant, verdict: Verdict, probe: bool) -> Option<Transition> {
        if probe {
            self.probe_out = false;
        }
        match verdict {
            Verdict::Neutral => None,
            Verdict::Success => {
                self.consecutive_failures = 0;
                if probe && self.state == State::HalfOpen {
                    return self.go(State::Closed, now);
                }
                None
            }
            Verdict::Failure => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                let reopen = probe && self.state == State::HalfOpen;
                let trip =
                    self.state == State::Closed && self.consecutive_failures >= self.threshold;
                if reopen || trip {
                    self.opened_at = Some(now);
                    self.times_opened += 1;
                    return self.go(State::Open, now);
                }
                None
            }
        }
    }

    fn go(&mut self, to: State, now: Instant) -> Option<Transition> {
        let from = self.state;
        self.state = to;
        self.last_transition = Some(now);
        if to == State::Closed {
            self.consecutive_failures = 0;
            self.opened_at = None;
        }
        (from != to).then_some(Transition { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn breaker_opens_after_threshold_consecutive_failures() {
        let now = t0();
        let mut b = Breaker::new(3, Duration::from_secs(60));
        for _ in 0..2 {
            assert_eq!(b.admit(now).0, Admit::Pass);
            assert_eq!(b.record(now, Verdict::Failure, false), None);
        }
        b.record(now, Verdict::Success, false);
        assert_eq!(b.consecutive_failures(), 0, "a success resets the count");
        for _ in 0..2 {
            b.record(now, Verdict::Failure, false);
        }
        let t = b.record(now, Verdict::Failure, false);
        assert_eq!(
            t,
            Some(Transition {
                from: State::Closed,
                to: State::Open
            })
        );
        assert_eq!(b.state(now), State::Open);
        assert_eq!(b.times_opened(), 1);
    }

    #[test]
    fn neutral_outcomes_do_not_count() {
        let now = t0();
        let mut b = Breaker::new(2, Duration::from_secs(60));
        b.record(now, Verdict::Failure, false);
        b.record(now, Verdict::Neutral, false);
        assert_eq!(b.consecutive_failures(), 1);
        assert_eq!(b.state(now), State::Closed);
    }

    #[test]
    fn open_rejects_with_time_until_half_open() {
        let now = t0();
        let mut b = Breaker::new(1, Duration::from_secs(60));
        b.record(now, Verdict::Failure, false);
        let later = now + Duration::from_secs(20);
        assert_eq!(
            b.admit(later).0,
            Admit::Reject {
                retry_after: Duration::from_secs(40)
            }
        );
    }

    #[test]
    fn a_request_whose_body_is_still_to_come_is_never_the_probe() {
        let now = t0();
        let mut b = Breaker::new(1, Duration::from_secs(10));
        b.record(now, Verdict::Failure, false);
        let later = now + Duration::from_secs(11);
        assert!(matches!(b.admit_as(later, false).0, Admit::Reject { .. }));
        assert_eq!(
            b.admit_as(later, true).0,
            Admit::Probe,
            "the slot stayed free"
        );
        let mut closed = Breaker::new(1, Duration::from_secs(10));
        assert_eq!(closed.admit_as(now, false).0, Admit::Pass);
    }

    #[test]
    fn refusing_while_open_and_while_the_probe_is_out() {
        let now = t0();
        let mut b = Breaker::new(1, Duration::from_secs(10));
        assert!(!b.refusing(now));
        b.record(now, Verdict::Failure, false);
        assert!(b.refusing(now));
        let later = now + Duration::from_secs(11);
        assert!(!b.refusing(later), "half-open, the probe slot free");
        assert_eq!(b.admit(later).0, Admit::Probe);
        assert!(b.refusing(later), "half-open, the probe out");
    }

    #[test]
    fn open_for_reports_time_left_only_while_open() {
        let now = t0();
        let mut b = Breaker::new(1, Duration::from_secs(10));
        assert_eq!(b.open_for(now), None);
        b.record(now, Verdict::Failure, false);
        assert_eq!(
            b.open_for(now + Duration::from_secs(4)),
            Some(Duration::from_secs(6))
        );
        assert_eq!(
            b.open_for(now + Duration::from_secs(10)),
            None,
            "time for a probe: admit decides"
        );
    }

    #[test]
    fn half_open_lets_exactly_one_probe_through() {
        let now = t0();
        let mut b = Breaker::new(1, Duration::from_secs(10));
        b.record(now, Verdict::Failure, false);
        let later = now + Duration::from_secs(10);
        assert_eq!(b.state(later), State::HalfOpen);
        let (a, t) = b.admit(later);
        assert_eq!(a, Admit::Probe);
        assert_eq!(
            t,
            Some(Transition {
                from: State::Open,
                to: State::HalfOpen
            })
        );
        for _ in 0..5 {
            assert!(matches!(b.admit(later).0, Admit::Reject { .. }));
        }
    }

    #[test]
    fn probe_success_closes_and_failure_reopens() {
        let now = t0();
        let mut b = Breaker::new(1, Duration::from_secs(10));
        b.record(now, Verdict::Failure, false);
        let t1 = now + Duration::from_secs(10);
        assert_eq!(b.admit(t1).0, Admit::Probe);
        assert_eq!(
            b.record(t1, Verdict::Failure, true),
            Some(Transition {
                from: State::HalfOpen,
                to: State::Open
            })
        );
        assert!(matches!(
            b.admit(t1 + Duration::from_secs(9)).0,
            Admit::Reject { .. }
        ));
        let t2 = t1 + Duration::from_secs(10);
        assert_eq!(b.admit(t2).0, Admit::Probe);
        assert_eq!(
            b.record(t2, Verdict::Success, true),
            Some(Transition {
                from: State::HalfOpen,
                to: State::Closed
            })
        );
        assert_eq!(b.admit(t2).0, Admit::Pass);
        assert_eq!(b.consecutive_failures(), 0);
        assert_eq!(b.times_opened(), 2);
    }

    #[test]
    fn a_neutral_probe_frees_the_probe_slot() {
        let now = t0();
        let mut b = Breaker::new(1, Duration::ZERO);
        b.record(now, Verdict::Failure, false);
        assert_eq!(b.admit(now).0, Admit::Probe);
        b.record(now, Verdict::Neutral, true);
        assert_eq!(b.admit(now).0, Admit::Probe);
    }

    #[test]
    fn one_probe_under_concurrent_callers() {
        use std::sync::{Arc, Mutex};
        let now = t0();
        let b = Arc::new(Mutex::new(Breaker::new(1, Duration::ZERO)));
        b.lock().unwrap().record(now, Verdict::Failure, false);
        let probes: usize = (0..8)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    (0..100)
                        .filter(|_| b.lock().unwrap().admit(now).0 == Admit::Probe)
                        .count()
                })
            })
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(probes, 1);
    }
}
