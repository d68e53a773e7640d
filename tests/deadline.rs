//! One deadline per request (README "One deadline per request"): over every attempt and
//! back-off, a request spends at most `read_timeout` on the upstream; a retry's timeout is what
//! is left, and no retry starts when too little would be left after its back-off.

mod common;

use std::time::{Duration, Instant};

use common::*;

const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Scheduling on a loaded machine: the most a request may end after its deadline.
const SLACK: Duration = Duration::from_millis(250);

#[test]
fn a_retry_gets_what_is_left_and_the_request_ends_at_its_deadline() {
    let up = upstream();
    up.set_fail(Some(503));
    let s = sluice(up.port(), |c| {
        c.read_timeout = READ_TIMEOUT;
        c.max_retries = 2;
        c.retry_backoff_factor = 1.0; // the retry waits 500–1000 ms
    });
    let started = Instant::now();
    let client = std::thread::spawn({
        let addr = s.addr();
        move || get(addr, "/deadline")
    });
    // The first attempt is answered 503 at once; the retry finds an upstream that hangs.
    assert!(eventually(Duration::from_secs(2), || up.request_count() >= 1));
    std::thread::sleep(Duration::from_millis(100));
    up.set_fail(None);
    up.set_delay(Duration::from_secs(10));
    let r = client.join().unwrap();
    let took = started.elapsed();
    println!("longest request: {took:?} against read_timeout {READ_TIMEOUT:?}");
    // The retry timed out with no answer: the client gets the upstream's last real answer, its
    // 503 (README "Retries"), not sluice's 504.
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("x-sluice-error"), None, "{r:?}");
    assert_eq!(up.request_count(), 2, "one retry, after the 503");
    assert!(
        took <= READ_TIMEOUT + SLACK,
        "the request outlived its deadline: {took:?}"
    );
    assert!(
        took >= READ_TIMEOUT - Duration::from_millis(100),
        "the retry was not given what was left: {took:?}"
    );
}

#[test]
fn no_retry_starts_when_too_little_is_left() {
    let up = upstream();
    up.set_fail(Some(503));
    let s = sluice(up.port(), |c| {
        c.read_timeout = READ_TIMEOUT;
        c.max_retries = 2;
        c.retry_backoff_factor = 0.2; // 100–200 ms
    });
    // The 503 comes after 1.7 s: 300 ms left, less the back-off, is under a tenth of 2 s.
    let started = Instant::now();
    let r = get(s.addr(), "/slow-failure?delay_ms=1700");
    let took = started.elapsed();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-sluice-error"), None, "the upstream's own 503");
    assert_eq!(up.request_count(), 1, "no retry with 300 ms left");
    assert!(took <= READ_TIMEOUT + SLACK, "{took:?}");
}

#[test]
fn retries_that_fit_still_happen() {
    let up = upstream();
    up.set_fail(Some(503));
    let s = sluice(up.port(), |c| {
        c.read_timeout = READ_TIMEOUT;
        c.max_retries = 2;
        c.retry_backoff_factor = 0.05;
    });
    let started = Instant::now();
    let r = get(s.addr(), "/fast-failure");
    assert_eq!(r.status, 503);
    assert_eq!(
        up.request_count(),
        3,
        "two retries, both well inside the deadline"
    );
    assert!(started.elapsed() < READ_TIMEOUT);
}
