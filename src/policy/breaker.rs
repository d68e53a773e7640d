//! The circuit breaker (README "What sluice does with a request", "Health checks"): a state
//! machine with an injected clock and no I/O.
//!
//! closed → open after `threshold` consecutive failed requests; open → half-open after `open_for`;
//! half-open lets exactly one probe through, refusing the rest for at most `open_for` more: past
//! that, the probe is overdue and every request goes through again (a slow probe never keeps a
//! healthy upstream refused), the first success closes it, the probe's failure or `threshold`
//! failures re-open it. The probe's success closes it, its failure re-opens it.
//!
//! With health checks on (`set_checks`) the checks are the probe: `fall` failed checks open it
//! whatever its state, it stays open (no half-open, no client request as probe) until `rise`
//! passing checks close it; the counting is `health.rs`. The caller holds it behind a mutex and
//! reports every admitted request's verdict.

use std::time::{Duration, Instant};

use super::health::{CheckResult, CheckSettings, CheckView, Checks, Health, Signal};

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

/// One half-open probe, never reused: a verdict reported for an earlier probe (one that was
/// still out when the breaker moved on) is not taken for the current one's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe(u64);

/// What the breaker says about one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Closed (or half-open with its probe overdue): go ahead.
    Pass,
    /// Half-open: go ahead as the one probe; report its verdict with this `Probe`.
    Probe(Probe),
    /// Open (or a probe is already out): answer 503 now; `retry_after` until the next probe.
    Reject { retry_after: Duration },
}

impl Admit {
    /// The probe this request is, if it is one.
    pub fn probe(self) -> Option<Probe> {
        match self {
            Admit::Probe(p) => Some(p),
            _ => None,
        }
    }
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

/// While half-open with nothing better to say: `Retry-After` for a refused request.
const HALF_OPEN_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    open_for: Duration,
    state: State,
    opened_at: Option<Instant>,
    /// The probe out and when it went; only while half-open.
    probe_out: Option<(Probe, Instant)>,
    probes: u64,
    consecutive_failures: u32,
    times_opened: u64,
    last_transition: Option<Instant>,
    /// Health checks, when `health_check_path` is set.
    checks: Option<Checks>,
}

impl Breaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            open_for,
            state: State::Closed,
            opened_at: None,
            probe_out: None,
            probes: 0,
            consecutive_failures: 0,
            times_opened: 0,
            last_transition: None,
            checks: None,
        }
    }

    /// Applies new settings (SIGHUP) without losing the current state.
    pub fn reconfigure(&mut self, threshold: u32, open_for: Duration) {
        self.threshold = threshold.max(1);
        self.open_for = open_for;
    }

    /// Turns health checks on (`Some`), changes their settings, or turns them off. Turned on
    /// while the breaker is not closed, the checks take over as its probe: half-open becomes
    /// open again, and `rise` passing checks are needed to close it.
    pub fn set_checks(
        &mut self,
        settings: Option<CheckSettings>,
        now: Instant,
    ) -> Option<Transition> {
        let Some(settings) = settings else {
            self.checks = None;
            return None;
        };
        if let Some(c) = &mut self.checks {
            c.reconfigure(settings);
            return None;
        }
        let health = match self.state {
            State::Closed => Health::Healthy,
            State::Open | State::HalfOpen => Health::Unhealthy,
        };
        self.checks = Some(Checks::new(settings, health));
        (self.state == State::HalfOpen)
            .then(|| self.go(State::Open, now))
            .flatten()
    }

    /// Counts one health check's result (ignored while checks are off); `fall` failures in a
    /// row open the breaker, `rise` passes in a row close it.
    pub fn record_check(
        &mut self,
        now: Instant,
        result: CheckResult,
        latency: Duration,
    ) -> Option<Transition> {
        let signal = self.checks.as_mut()?.record(now, result, latency)?;
        match signal {
            Signal::Down if self.state != State::Open => self.open(now),
            Signal::Up if self.state != State::Closed => self.go(State::Closed, now),
            _ => None,
        }
    }

    /// The checks' state and last result; `None` while checks are off.
    pub fn checks(&self) -> Option<CheckView> {
        self.checks.as_ref().map(Checks::view)
    }

    /// The state as of `now` (open turns half-open once its time is up, unless checks decide).
    pub fn state(&self, now: Instant) -> State {
        match (self.state, self.opened_at) {
            (State::Open, Some(t)) if self.checks.is_none() && now >= t + self.open_for => {
                State::HalfOpen
            }
            (s, _) => s,
        }
    }

    /// True while the probe out may still be waited for (it went less than `open_for` ago).
    fn probe_exclusive(&self, now: Instant) -> bool {
        self.probe_out
            .is_some_and(|(_, sent)| now < sent + self.open_for)
    }

    /// True while half-open and the probe has been out for `open_for`: every request passes.
    fn probe_overdue(&self, now: Instant) -> bool {
        self.probe_out.is_some() && !self.probe_exclusive(now)
    }

    /// True while the breaker refuses requests: open, or half-open with its probe out (for at
    /// most `open_for`).
    pub fn refusing(&self, now: Instant) -> bool {
        match self.state(now) {
            State::Closed => false,
            State::Open => true,
            State::HalfOpen => self.probe_exclusive(now),
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

    /// While open: how long until a request may pass (the probe, or with checks on the
    /// earliest `rise` passing checks could close it). Read-only, so callers can shed a
    /// request before queueing it; `admit` still decides for everything else.
    pub fn open_for(&self, now: Instant) -> Option<Duration> {
        if self.state(now) != State::Open {
            return None;
        }
        match (&self.checks, self.opened_at) {
            (Some(c), _) => Some(c.time_to_rise()),
            (None, Some(t)) => Some(t + self.open_for - now),
            (None, None) => Some(HALF_OPEN_RETRY),
        }
    }

    /// Asks to send one request upstream. Returns the decision and any state change it caused.
    pub fn admit(&mut self, now: Instant) -> (Admit, Option<Transition>) {
        match self.state(now) {
            State::Closed => (Admit::Pass, None),
            State::Open => {
                let retry_after = self.open_for(now).unwrap_or(HALF_OPEN_RETRY);
                (Admit::Reject { retry_after }, None)
            }
            State::HalfOpen => {
                let t = if self.state == State::Open {
                    self.go(State::HalfOpen, now)
                } else {
                    None
                };
                let admit = if self.probe_out.is_none() {
                    self.probes += 1;
                    let probe = Probe(self.probes);
                    self.probe_out = Some((probe, now));
                    Admit::Probe(probe)
                } else if self.probe_exclusive(now) {
                    Admit::Reject {
                        retry_after: HALF_OPEN_RETRY,
                    }
                } else {
                    Admit::Pass
                };
                (admit, t)
            }
        }
    }

    /// As `admit`, for a request that may not be the probe (`may_probe` false: its body is still
    /// to come from the client, which could hold the breaker half-open at the client's pace):
    /// while half-open it is refused and the probe slot stays free for another request — unless
    /// the probe is overdue and every request passes.
    pub fn admit_as(&mut self, now: Instant, may_probe: bool) -> (Admit, Option<Transition>) {
        if !may_probe && self.state(now) == State::HalfOpen && !self.probe_overdue(now) {
            let retry_after = HALF_OPEN_RETRY;
            return (Admit::Reject { retry_after }, None);
        }
        self.admit(now)
    }

    /// Reports how an admitted request ended (`probe`: the probe it was, if it was one).
    pub fn record(
        &mut self,
        now: Instant,
        verdict: Verdict,
        probe: Option<Probe>,
    ) -> Option<Transition> {
        let current = probe.is_some() && probe == self.probe_out.map(|(p, _)| p);
        let overdue = self.state == State::HalfOpen && self.probe_overdue(now);
        if current {
            self.probe_out = None;
        }
        match verdict {
            Verdict::Neutral => None,
            Verdict::Success => {
                self.consecutive_failures = 0;
                if self.state == State::HalfOpen && (current || overdue) {
                    return self.go(State::Closed, now);
                }
                None
            }
            Verdict::Failure => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                let reopen = current && self.state == State::HalfOpen;
                let counting = self.state == State::Closed || overdue;
                if reopen || (counting && self.consecutive_failures >= self.threshold) {
                    return self.open(now);
                }
                None
            }
        }
    }

    fn open(&mut self, now: Instant) -> Option<Transition> {
        self.opened_at = Some(now);
        self.times_opened += 1;
        if let Some(c) = &mut self.checks {
            c.suspect();
        }
        self.go(State::Open, now)
    }

    fn go(&mut self, to: State, now: Instant) -> Option<Transition> {
        let from = self.state;
        self.state = to;
        self.last_transition = Some(now);
        match to {
            State::Closed => {
                self.consecutive_failures = 0;
                self.opened_at = None;
                self.probe_out = None;
            }
            State::Open => self.probe_out = None,
            // The probe's and the overdue requests' failures are counted afresh.
            State::HalfOpen => self.consecutive_failures = 0,
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
            assert_eq!(b.record(now, Verdict::Failure, None), None);
        }
        b.record(now, Verdict::Success, None);
        assert_eq!(b.consecutive_failures(), 0, "a success resets the count");
        for _ in 0..2 {
            b.record(now, Verdict::Failure, None);
        }
        let t = b.record(now, Verdict::Failure, None);
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
        b.record(now, Verdict::Failure, None);
        b.record(now, Verdict::Neutral, None);
        assert_eq!(b.consecutive_failures(), 1);
        assert_eq!(b.state(now), State::Closed);
    }

    #[test]
    fn open_rejects_with_time_until_half_open() {
        let now = t0();
        let mut b = Breaker::new(1, Duration::from_secs(60));
        b.record(now, Verdict::Failure, None);
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
        b.record(now, Verdict::Failure, None);
        let later = now + Duration::from_secs(11);
        assert!(matches!(b.admit_as(later, false).0, Admit::Reject { .. }));
        assert!(
            b.admit_as(later, true).0.probe().is_some(),
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
        b.record(now, Verdict::Failure, None);
        assert!(b.refusing(now));
        let later = now + Duration::from_secs(11);
        assert!(!b.refusing(later), "half-open, the probe slot free");
        assert!(b.admit(later).0.probe().is_some());
        assert!(b.refusing(later), "half-open, the probe out");
    }

    #[test]
    fn open_for_reports_time_left_only_while_open() {
        let now = t0();
        let mut b = Breaker::new(1, Duration::from_secs(10));
        assert_eq!(b.open_for(now), None);
        b.record(now, Verdict::Failure, None);
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
        b.record(now, Verdict::Failure, None);
        let later = now + Duration::from_secs(10);
        assert_eq!(b.state(later), State::HalfOpen);
        let (a, t) = b.admit(later);
        assert!(a.probe().is_some());
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
        b.record(now, Verdict::Failure, None);
        let t1 = now + Duration::from_secs(10);
        let p1 = b.admit(t1).0.probe();
        assert!(p1.is_some());
        assert_eq!(
            b.record(t1, Verdict::Failure, p1),
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
        let p2 = b.admit(t2).0.probe();
        assert!(p2.is_some() && p2 != p1, "a probe is never reused");
        assert_eq!(
            b.record(t2, Verdict::Success, p2),
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
        b.record(now, Verdict::Failure, None);
        let p = b.admit(now).0.probe();
        assert!(p.is_some());
        b.record(now, Verdict::Neutral, p);
        assert!(b.admit(now).0.probe().is_some());
    }

    #[test]
    fn one_probe_under_concurrent_callers() {
        use std::sync::{Arc, Mutex};
        let now = t0();
        let b = Arc::new(Mutex::new(Breaker::new(1, Duration::ZERO)));
        b.lock().unwrap().record(now, Verdict::Failure, None);
        let probes: usize = (0..8)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    (0..100)
                        .filter(|_| b.lock().unwrap().admit(now).0.probe().is_some())
                        .count()
                })
            })
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(probes, 1);
    }

    #[test]
    fn a_slow_probe_refuses_others_for_at_most_open_for_then_every_request_passes() {
        let now = t0();
        let s = Duration::from_secs;
        let mut b = Breaker::new(1, s(10));
        b.record(now, Verdict::Failure, None);
        let probe = b.admit(now + s(10)).0.probe();
        assert!(probe.is_some());
        assert!(matches!(b.admit(now + s(15)).0, Admit::Reject { .. }));
        assert!(b.refusing(now + s(19)));
        assert!(!b.refusing(now + s(20)), "the probe is overdue");
        assert_eq!(b.state(now + s(20)), State::HalfOpen);
        assert_eq!(b.admit(now + s(20)).0, Admit::Pass);
        assert_eq!(b.admit_as(now + s(20), false).0, Admit::Pass);
        assert_eq!(
            b.record(now + s(21), Verdict::Success, None),
            Some(Transition {
                from: State::HalfOpen,
                to: State::Closed
            }),
            "any success closes it once the probe is overdue"
        );
        assert_eq!(b.record(now + s(30), Verdict::Success, probe), None);
        assert_eq!(b.state(now + s(30)), State::Closed);
    }

    #[test]
    fn while_the_probe_is_overdue_threshold_failures_or_its_own_failure_reopen() {
        let now = t0();
        let s = Duration::from_secs;
        let mut b = Breaker::new(2, s(10));
        b.record(now, Verdict::Failure, None);
        b.record(now, Verdict::Failure, None);
        let probe = b.admit(now + s(10)).0.probe();
        assert_eq!(b.admit(now + s(20)).0, Admit::Pass);
        assert_eq!(
            b.record(now + s(21), Verdict::Failure, None),
            None,
            "counted afresh since half-open"
        );
        let t = b.record(now + s(21), Verdict::Failure, None);
        assert_eq!(t.map(|t| t.to), Some(State::Open));
        assert!(b.refusing(now + s(22)));
        let p2 = b.admit(now + s(31)).0.probe();
        assert!(p2.is_some());
        let t = b.record(now + s(45), Verdict::Failure, p2);
        assert_eq!(t.map(|t| t.to), Some(State::Open), "the probe's failure");
        assert_eq!(
            b.record(now + s(46), Verdict::Failure, probe),
            None,
            "stale"
        );
    }

    #[test]
    fn an_earlier_probe_verdict_is_not_taken_for_the_current_probe() {
        let now = t0();
        let s = Duration::from_secs;
        let mut b = Breaker::new(1, s(10));
        b.record(now, Verdict::Failure, None);
        let p1 = b.admit(now + s(10)).0.probe();
        b.record(now + s(21), Verdict::Success, None);
        b.record(now + s(22), Verdict::Failure, None);
        let p2 = b.admit(now + s(32)).0.probe();
        assert!(p1.is_some() && p2.is_some() && p1 != p2);
        assert_eq!(b.record(now + s(33), Verdict::Success, p1), None);
        assert!(
            matches!(b.admit(now + s(33)).0, Admit::Reject { .. }),
            "the current probe keeps its slot"
        );
        let t = b.record(now + s(34), Verdict::Success, p2);
        assert_eq!(t.map(|t| t.to), Some(State::Closed));
    }

    fn with_checks(threshold: u32) -> (Breaker, Instant) {
        let now = t0();
        let mut b = Breaker::new(threshold, Duration::from_secs(1));
        let settings = CheckSettings {
            rise: 2,
            fall: 3,
            interval: Duration::from_secs(1),
        };
        assert_eq!(b.set_checks(Some(settings), now), None);
        (b, now)
    }

    const PASS: CheckResult = CheckResult::Status(404);
    const FAIL: CheckResult = CheckResult::Failed(super::super::outcome::AttemptFailure::Timeout);

    #[test]
    fn fall_failed_checks_open_it_and_only_rise_passing_checks_close_it() {
        let (mut b, now) = with_checks(5);
        let ms = Duration::from_millis(1);
        let s = Duration::from_secs;
        assert_eq!(b.record_check(now, FAIL, ms), None);
        assert_eq!(b.record_check(now, FAIL, ms), None);
        let t = b.record_check(now, FAIL, ms);
        assert_eq!(
            t.map(|t| (t.from, t.to)),
            Some((State::Closed, State::Open))
        );
        assert_eq!(b.checks().unwrap().health, Health::Unhealthy);
        let later = now + s(100);
        assert_eq!(b.state(later), State::Open, "no half-open by time");
        assert_eq!(
            b.admit(later).0,
            Admit::Reject { retry_after: s(2) },
            "no client request is the probe"
        );
        assert_eq!(b.record_check(later, PASS, ms), None);
        assert_eq!(b.open_for(later), Some(s(1)));
        let t = b.record_check(later, PASS, ms);
        assert_eq!(t.map(|t| t.to), Some(State::Closed));
        assert_eq!(b.admit(later).0, Admit::Pass);
    }

    #[test]
    fn with_checks_on_a_breaker_opened_by_requests_waits_for_rise_passing_checks() {
        let (mut b, now) = with_checks(2);
        let ms = Duration::from_millis(1);
        b.record_check(now, PASS, ms);
        b.record(now, Verdict::Failure, None);
        let t = b.record(now, Verdict::Failure, None);
        assert_eq!(t.map(|t| t.to), Some(State::Open));
        let later = now + Duration::from_secs(60);
        assert!(b.refusing(later));
        assert!(matches!(b.admit_as(later, true).0, Admit::Reject { .. }));
        assert_eq!(b.record_check(later, PASS, ms), None);
        let t = b.record_check(later, PASS, ms);
        assert_eq!(t.map(|t| t.to), Some(State::Closed));
    }

    #[test]
    fn checks_turned_on_while_half_open_take_over_and_off_restores_the_timer() {
        let now = t0();
        let s = Duration::from_secs;
        let mut b = Breaker::new(1, s(10));
        b.record(now, Verdict::Failure, None);
        let probe = b.admit(now + s(10)).0.probe();
        let settings = CheckSettings {
            rise: 1,
            fall: 1,
            interval: s(1),
        };
        let t = b.set_checks(Some(settings), now + s(11));
        assert_eq!(t.map(|t| t.to), Some(State::Open));
        assert_eq!(b.record(now + s(12), Verdict::Success, probe), None);
        assert!(b.refusing(now + s(60)));
        assert_eq!(b.set_checks(None, now + s(60)), None);
        assert_eq!(
            b.state(now + s(60)),
            State::HalfOpen,
            "its open time is long up"
        );
        assert!(b.admit(now + s(60)).0.probe().is_some());
        assert_eq!(
            b.record_check(now + s(61), FAIL, s(1)),
            None,
            "checks are off"
        );
    }
}
