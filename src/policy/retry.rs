//! Retry policy (README "What sluice does with a request"): which failed attempts may be tried again, how long to wait
//! (exponential backoff with jitter), and the retry budget that keeps a failing upstream from
//! seeing 3× the traffic. Pure: an injected clock and jitter, no sockets.

use std::time::{Duration, Instant};

use super::outcome::AttemptFailure;

/// Longest backoff between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Bodies up to this size are buffered before the first attempt so that they can be replayed.
pub const REPLAY_LIMIT: u64 = 64 * 1024;

/// May this failed attempt be tried again?
///
/// `idempotent`: the method is GET HEAD OPTIONS PUT DELETE TRACE. `replayable`: the body is
/// empty or buffered. `body_started`: some of a streamed (unbuffered) body was already consumed.
pub fn may_retry(
    failure: AttemptFailure,
    idempotent: bool,
    replayable: bool,
    body_started: bool,
) -> bool {
    match failure {
        AttemptFailure::Connect | AttemptFailure::ConnectTimeout => replayable || !body_started,
        AttemptFailure::Reset | AttemptFailure::Status(502..=504) => idempotent && replayable,
        AttemptFailure::Status(_)
        | AttemptFailure::Timeout
        | AttemptFailure::Protocol
        | AttemptFailure::HeadTooLarge => false,
    }
}

/// May an attempt that failed on a *reused* connection before any response byte came back be
/// tried once more, at once, on a new connection? The upstream most likely closed the idle
/// connection as the request went out (docs/ARCHITECTURE.md "The upstream client"). Only a
/// reset qualifies (not a timeout: the upstream may be working on it), and only when that is
/// safe: an idempotent request whose body can be sent again, or one of which nothing was
/// written (`wrote`) and whose body can still be sent (buffered, or not yet read from the
/// client). Never a POST whose request went out. Not counted as a retry (`max_retries`, the
/// budget, the back-off); once per request.
pub fn may_retry_stale(
    failure: AttemptFailure,
    idempotent: bool,
    replayable: bool,
    wrote: bool,
    body_started: bool,
) -> bool {
    failure == AttemptFailure::Reset
        && ((idempotent && replayable) || (!wrote && (replayable || !body_started)))
}

/// Does an upstream's `Retry-After` (on a 502–504) ask for a longer wait than the back-off
/// `delay`? Then its answer is passed on rather than retried early. A value that is not a
/// number of seconds (an HTTP date) counts as longer: sluice does not time it.
pub fn outlasts(retry_after: Option<&str>, delay: Duration) -> bool {
    match retry_after.map(str::trim) {
        None => false,
        Some(v) => v
            .parse::<u64>()
            .map_or(true, |secs| Duration::from_secs(secs) > delay),
    }
}

/// Delay before retry number `n` (1-based): `factor × 2^(n−1)` seconds, scaled by a jitter in
/// [½, 1) from `unit` ∈ [0, 1), capped at `MAX_BACKOFF`.
pub fn backoff(factor: f64, n: u32, unit: f64) -> Duration {
    let base = factor * 2f64.powi(n.saturating_sub(1).min(30) as i32);
    let secs = (base * (0.5 + 0.5 * unit.clamp(0.0, 1.0))).min(MAX_BACKOFF.as_secs_f64());
    Duration::from_secs_f64(secs.max(0.0))
}

/// A retry budget in the style of linkerd/Finagle: each request deposits `ratio` of a retry;
/// a floor of `floor_per_sec` retries per second is always allowed, so a quiet service can
/// still retry. Past both, failures are returned as they are.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    floor_per_sec: f64,
    cap: f64,
    tokens: f64,
    floor_tokens: f64,
    last: Instant,
}

impl RetryBudget {
    pub fn new(ratio: f64, floor_per_sec: f64, now: Instant) -> Self {
        RetryBudget {
            ratio,
            floor_per_sec,
            cap: 10.0,
            tokens: 0.0,
            floor_tokens: floor_per_sec,
            last: now,
        }
    }

    /// The default: retries ≤ 20 % of requests + 5 per second.
    pub fn standard(now: Instant) -> Self {
        Self::new(0.2, 5.0, now)
    }

    /// Every client request that may retry deposits here once.
    pub fn deposit(&mut self) {
        self.tokens = (self.tokens + self.ratio).min(self.cap);
    }

    /// Takes one retry from the budget, if there is one.
    pub fn withdraw(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.floor_tokens =
            (self.floor_tokens + elapsed * self.floor_per_sec).min(self.floor_per_sec);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else if self.floor_tokens >= 1.0 {
            self.floor_tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::AttemptFailure::*;
    use super::*;

    #[test]
    fn nothing_sent_is_retryable_for_any_method() {
        assert!(may_retry(Connect, false, false, false));
        assert!(may_retry(ConnectTimeout, false, true, false));
        assert!(
            !may_retry(Connect, false, false, true),
            "a streamed body already consumed cannot be replayed"
        );
    }

    #[test]
    fn after_sending_only_idempotent_replayable_requests_retry() {
        assert!(may_retry(Reset, true, true, false));
        assert!(may_retry(Status(503), true, true, false));
        assert!(
            !may_retry(Reset, false, true, false),
            "POST after its request went out"
        );
        assert!(
            !may_retry(Reset, true, false, true),
            "PUT with a streamed body"
        );
        assert!(!may_retry(Status(500), true, true, false));
        assert!(!may_retry(Timeout, true, true, false));
        assert!(!may_retry(Protocol, true, true, false));
    }

    #[test]
    fn a_reset_on_a_reused_connection_is_retried_only_when_safe() {
        assert!(may_retry_stale(Reset, true, true, true, false), "GET");
        assert!(
            !may_retry_stale(Reset, false, true, true, false),
            "a POST whose request went out"
        );
        assert!(
            !may_retry_stale(Reset, false, false, true, true),
            "a POST whose body went out"
        );
        assert!(
            may_retry_stale(Reset, false, false, false, false),
            "nothing written, the body still unread"
        );
        assert!(
            !may_retry_stale(Reset, false, false, false, true),
            "nothing written but the streamed body was consumed"
        );
        assert!(!may_retry_stale(Timeout, true, true, true, false));
        assert!(!may_retry_stale(Protocol, true, true, true, false));
    }

    #[test]
    fn a_retry_after_longer_than_the_back_off_is_honoured() {
        let d = Duration::from_millis(500);
        assert!(!outlasts(None, d));
        assert!(!outlasts(Some("0"), d));
        assert!(outlasts(Some("1"), d));
        assert!(outlasts(Some(" 30 "), d));
        assert!(outlasts(Some("Wed, 21 Oct 2026 07:28:00 GMT"), d));
        assert!(!outlasts(Some("1"), Duration::from_secs(2)));
    }

    #[test]
    fn backoff_doubles_with_jitter_in_half_to_full_and_is_capped() {
        assert_eq!(backoff(0.5, 1, 0.0), Duration::from_millis(250));
        assert_eq!(backoff(0.5, 1, 1.0), Duration::from_millis(500));
        assert_eq!(backoff(0.5, 2, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(0.5, 3, 0.0), Duration::from_secs(1));
        for n in 1..8 {
            for j in [0.0, 0.3, 0.99] {
                let d = backoff(0.5, n, j);
                let full = 0.5 * 2f64.powi(n as i32 - 1);
                assert!(
                    d.as_secs_f64() >= (full / 2.0).min(10.0) - 1e-9
                        && d.as_secs_f64() <= full.min(10.0) + 1e-9
                );
            }
        }
        assert_eq!(backoff(4.0, 10, 1.0), MAX_BACKOFF);
        assert_eq!(backoff(0.0, 3, 0.7), Duration::ZERO);
    }

    #[test]
    fn budget_allows_ratio_of_requests_plus_floor() {
        let t = Instant::now();
        let mut b = RetryBudget::new(0.2, 5.0, t);
        let mut allowed = 0;
        for _ in 0..1000 {
            b.deposit();
            if b.withdraw(t) {
                allowed += 1;
            }
        }
        assert_eq!(
            allowed, 205,
            "20 % of 1000 plus the floor of 5, all within one instant"
        );
        assert!(!b.withdraw(t));
        assert!(
            b.withdraw(t + Duration::from_millis(200)),
            "the floor refills over time"
        );
        assert!(!b.withdraw(t + Duration::from_millis(200)));
    }

    #[test]
    fn budget_caps_saved_up_tokens() {
        let t = Instant::now();
        let mut b = RetryBudget::new(0.2, 0.0, t);
        for _ in 0..10_000 {
            b.deposit();
        }
        assert_eq!((0..100).filter(|_| b.withdraw(t)).count(), 10);
    }
}
