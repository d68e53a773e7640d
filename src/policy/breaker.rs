//! The circuit breaker (README "What sluice does with a request", "Health checks"): a state
//! machine with an injected clock and no I/O.
//!
//! closed → open after `threshold` consecutive failed requests; open → half-open after `open_for`;
//! half-open lets exactly one probe through: its success closes it, its failure re-opens it. The
//! others are refused while the probe is out, for at most `open_for`: past that the probe is
//! overdue and every request goes through again (a slow probe never keeps a healthy upstream
//! refused); the first success closes it, the probe's failure or `threshold` failures re-open it.
//! The same once half-open has lasted `open_for` with no probe sent (only requests that may not
//! probe came): they pass, so no traffic keeps a healthy upstream refused past twice `open_for`.
//!
//! With health checks on (`set_checks`) the checks are the probe: `fall` failed checks open it
//! whatever its state, it stays open (no half-open, no client request as probe) until `rise`
//! passing checks close it; the counting is `health.rs`. The caller holds it behind a mutex and
//! reports every admitted request's verdict.

use std::time::{Duration, Instant};

use super::health::{CheckResult, CheckSettings, CheckView, Checks, Health, Signal};
pub use super::outcome::Verdict;

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

/// What the health checks check (target and check settings), as a number never reused: a
/// check's result counts only if its round is still the current one, so a check still out when
/// a reload moved the target (or changed or turned off the checks) counts for nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckRound(u64);

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
    /// Half-open and a request passed because the probe was overdue (or none came): from then
    /// on every request passes and none becomes a probe that would hold the others back again.
    passing: bool,
    probes: u64,
    consecutive_failures: u32,
    times_opened: u64,
    last_transition: Option<Instant>,
    /// Health checks, when `health_check_path` is set.
    checks: Option<Checks>,
    /// The current `CheckRound`'s number.
    round: u64,
}

impl Breaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            open_for,
            state: State::Closed,
            opened_at: None,
            probe_out: None,
            passing: false,
            probes: 0,
            consecutive_failures: 0,
            times_opened: 0,
            last_transition: None,
            checks: None,
            round: 0,
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
            if self.checks.take().is_some() {
                self.retarget_checks();
            }
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
        self.retarget_checks();
        self.checks = Some(Checks::new(settings, health));
        (self.state == State::HalfOpen)
            .then(|| self.go(State::Open, now))
            .flatten()
    }

    /// What a check started now checks; `record_check` takes its result with it.
    pub fn check_round(&self) -> CheckRound {
        CheckRound(self.round)
    }

    /// What the checks check changed (a reload moved the target or changed how a check is
    /// made): the results of checks still out are for a round no longer current.
    pub fn retarget_checks(&mut self) {
        self.round += 1;
    }

    /// Counts one health check's result (ignored while checks are off, or if it was made for
    /// an earlier `CheckRound`); `fall` failures in a row open the breaker, `rise` passes in a
    /// row close it.
    pub fn record_check(
        &mut self,
        now: Instant,
        round: CheckRound,
        result: CheckResult,
        latency: Duration,
    ) -> Option<Transition> {
        if round != self.check_round() {
            return None;
        }
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

    /// True while half-open and the probe has been out for `open_for` — or no probe has gone
    /// although half-open began `open_for` ago (only requests that may not probe came, e.g.
    /// uploads larger than `client_buffer`): every request passes. Either way the refusal ends
    /// at most twice `open_for` after the opening.
    fn probe_overdue(&self, now: Instant) -> bool {
        match (self.probe_out, self.opened_at) {
            (Some(_), _) => !self.probe_exclusive(now),
            (None, Some(t)) => now >= t + self.open_for + self.open_for,
            (None, None) => false,
        }
    }

    /// True while the breaker refuses requests: open, or half-open with its probe out (for at
    /// most `open_for`).
    pub fn refusing(&self, now: Instant) -> bool {
        match self.state(now) {
            State::Closed => false,
            State::Open => true,
            State::HalfOpen => !self.passing && self.probe_exclusive(now),
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
    /// request before queueing it; `admit_as` still decides for everything else.
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

    /// Asks to send one request that may be the probe upstream. Returns the decision and any
    /// state change it caused. (sluice itself always says whether a request may probe.)
    #[cfg(test)]
    pub fn admit(&mut self, now: Instant) -> (Admit, Option<Transition>) {
        self.admit_as(now, true)
    }

    /// Asks to send one request upstream. Returns the decision and any state change it caused.
    /// A request that may not be the probe (`may_probe` false: its body is still to come from
    /// the client, which could hold the breaker half-open at the client's pace) is refused
    /// while half-open and the probe slot stays free for another request — unless the probe is
    /// overdue (or none came within `open_for` of half-open) and every request passes.
    pub fn admit_as(&mut self, now: Instant, may_probe: bool) -> (Admit, Option<Transition>) {
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
                // Once a request passed because the probe was overdue (or none came), every
                // request passes and none becomes a probe that would hold the others back.
                let admit = if self.passing {
                    Admit::Pass
                } else if may_probe && self.probe_out.is_none() {
                    self.probes += 1;
                    let probe = Probe(self.probes);
                    self.probe_out = Some((probe, now));
                    Admit::Probe(probe)
                } else if self.probe_overdue(now) {
                    self.passing = true;
                    Admit::Pass
                } else {
                    Admit::Reject {
                        retry_after: HALF_OPEN_RETRY,
                    }
                };
                (admit, t)
            }
        }
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
        self.passing = false;
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
#[path = "breaker_tests.rs"]
mod tests;
