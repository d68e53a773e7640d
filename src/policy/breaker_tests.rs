//! The breaker's unit tests (`breaker.rs`): every transition with an injected clock, the
//! overdue probe, probe identities, and health checks as the probe. Apart so that each file
//! stays short.

use super::*;
use crate::policy::outcome::AttemptFailure;

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
fn with_no_request_that_may_probe_the_others_pass_open_for_into_half_open() {
    let now = t0();
    let s = Duration::from_secs;
    let mut b = Breaker::new(1, s(10));
    b.record(now, Verdict::Failure, None);
    // Half-open from 10 s; only requests whose body is still to come: refused until 20 s.
    assert!(matches!(
        b.admit_as(now + s(11), false).0,
        Admit::Reject { .. }
    ));
    assert!(matches!(
        b.admit_as(now + s(19), false).0,
        Admit::Reject { .. }
    ));
    assert_eq!(b.admit_as(now + s(20), false).0, Admit::Pass);
    assert_eq!(b.state(now + s(20)), State::HalfOpen);
    assert_eq!(
        b.record(now + s(21), Verdict::Success, None),
        Some(Transition {
            from: State::HalfOpen,
            to: State::Closed
        }),
        "their first success closes it"
    );
    // Past that point their failures count as the overdue case's: `threshold` re-open it.
    b.record(now + s(30), Verdict::Failure, None);
    assert_eq!(b.admit_as(now + s(50), false).0, Admit::Pass);
    assert_eq!(
        b.record(now + s(51), Verdict::Failure, None).map(|t| t.to),
        Some(State::Open)
    );
    // Before that, a request that may probe becomes the probe, and holds the others back.
    let mut p = Breaker::new(1, s(10));
    p.record(now, Verdict::Failure, None);
    assert!(p.admit_as(now + s(15), true).0.probe().is_some());
    assert!(matches!(
        p.admit_as(now + s(16), false).0,
        Admit::Reject { .. }
    ));
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
const FAIL: CheckResult = CheckResult::Failed(AttemptFailure::Timeout);

#[test]
fn fall_failed_checks_open_it_and_only_rise_passing_checks_close_it() {
    let (mut b, now) = with_checks(5);
    let ms = Duration::from_millis(1);
    let s = Duration::from_secs;
    assert_eq!(b.record_check(now, b.check_round(), FAIL, ms), None);
    assert_eq!(b.record_check(now, b.check_round(), FAIL, ms), None);
    let t = b.record_check(now, b.check_round(), FAIL, ms);
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
    assert_eq!(b.record_check(later, b.check_round(), PASS, ms), None);
    assert_eq!(b.open_for(later), Some(s(1)));
    let t = b.record_check(later, b.check_round(), PASS, ms);
    assert_eq!(t.map(|t| t.to), Some(State::Closed));
    assert_eq!(b.admit(later).0, Admit::Pass);
}

#[test]
fn with_checks_on_a_breaker_opened_by_requests_waits_for_rise_passing_checks() {
    let (mut b, now) = with_checks(2);
    let ms = Duration::from_millis(1);
    b.record_check(now, b.check_round(), PASS, ms);
    b.record(now, Verdict::Failure, None);
    let t = b.record(now, Verdict::Failure, None);
    assert_eq!(t.map(|t| t.to), Some(State::Open));
    let later = now + Duration::from_secs(60);
    assert!(b.refusing(later));
    assert!(matches!(b.admit_as(later, true).0, Admit::Reject { .. }));
    assert_eq!(b.record_check(later, b.check_round(), PASS, ms), None);
    let t = b.record_check(later, b.check_round(), PASS, ms);
    assert_eq!(t.map(|t| t.to), Some(State::Closed));
}

#[test]
fn a_check_made_for_an_earlier_round_counts_for_nothing() {
    let (mut b, now) = with_checks(5);
    let ms = Duration::from_millis(10);
    let old = b.check_round();
    b.retarget_checks(); // a reload moved the target while a check of the old one was out
    assert_eq!(b.record_check(now, old, FAIL, ms), None);
    assert_eq!(b.record_check(now, old, FAIL, ms), None);
    assert_eq!(b.record_check(now, old, FAIL, ms), None);
    assert_eq!(
        b.state(now),
        State::Closed,
        "the old target's failures are not counted"
    );
    let current = b.check_round();
    assert_ne!(current, old);
    b.set_checks(None, now);
    assert_ne!(
        b.check_round(),
        current,
        "turning checks off voids the checks out"
    );
    b.set_checks(
        Some(CheckSettings {
            rise: 2,
            fall: 1,
            interval: ms,
        }),
        now,
    );
    let on = b.check_round();
    assert_ne!(on, current);
    assert_eq!(b.record_check(now, current, FAIL, ms), None);
    assert_eq!(b.state(now), State::Closed);
    assert_eq!(
        b.record_check(now, on, FAIL, ms).map(|t| t.to),
        Some(State::Open)
    );
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
        b.record_check(now + s(61), b.check_round(), FAIL, s(1)),
        None,
        "checks are off"
    );
}

#[test]
fn once_every_request_passes_no_late_probe_holds_the_others_back_again() {
    let now = t0();
    let s = Duration::from_secs;
    let mut b = Breaker::new(1, s(10));
    b.record(now, Verdict::Failure, None);
    // No request that may probe came within open_for of half-open: an upload passes ...
    assert_eq!(b.admit_as(now + s(20), false).0, Admit::Pass);
    // ... and from then on a request that could probe passes too, instead of becoming a probe.
    assert_eq!(b.admit_as(now + s(21), true).0, Admit::Pass);
    assert_eq!(b.admit_as(now + s(22), false).0, Admit::Pass);
    assert!(!b.refusing(now + s(22)));
}
