//! One deadline per request (README "One deadline per request"): over every attempt and
//! back-off, a request spends at most `read_timeout` on the upstream; a retry's timeout is what
//! is left, and no retry starts when too little would be left after its back-off.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
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

/// A raw upstream for one shape the test upstream cannot make: every request is answered
/// `503` with a `len`-byte body sent one byte every `every`. Serves at most `max` connections,
/// each on its own thread, for at most 30 s.
fn trickling_503(len: usize, every: Duration, max: usize) -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(30);
        for s in l.incoming().take(max) {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 65536 {
                    if !matches!(s.read(&mut b), Ok(1)) {
                        return;
                    }
                    head.push(b[0]);
                }
                let h =
                    format!("HTTP/1.1 503 Service Unavailable\r\nContent-Length: {len}\r\n\r\n");
                if s.write_all(h.as_bytes()).is_err() {
                    return;
                }
                for _ in 0..len {
                    if Instant::now() > until {
                        return;
                    }
                    std::thread::sleep(every);
                    if s.write_all(b"x").is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A retried 502–504 is read whole (to be the answer if the retry gets none) within what is left
/// of the request's deadline, not only under ureq's per-read timeout (found by review: a
/// trickled body, one byte within each `read_timeout`, held the worker and the client for up to
/// 64 KiB × `read_timeout`). Here: `read_timeout` 1 s, a 12-byte 503 body at one byte per 250 ms
/// (3 s): the deadline passes during the read, no retry starts, and the client has its 504
/// `upstream_timeout` at the deadline (it waited 3.0 s before).
#[test]
fn a_retried_5xx_read_whole_stays_within_the_requests_one_deadline() {
    let up = trickling_503(12, Duration::from_millis(250), 8);
    let s = sluice(up.port(), |c| {
        c.read_timeout = Duration::from_secs(1);
        c.max_retries = 1;
    });
    let started = Instant::now();
    let r = get(s.addr(), "/t");
    let took = started.elapsed();
    println!("status {} after {took:?}", r.status);
    assert!(
        took < Duration::from_secs(1) + SLACK,
        "the client waited {took:?} for its answer ({}), read_timeout 1 s",
        r.status
    );
    r.assert_sluice_error(504, "upstream_timeout");
}

/// The same read whole that ends inside the deadline but too late for the retry to fit: no retry
/// starts, and the client gets that 503, whole — the upstream's last real answer. `read_timeout`
/// 2 s, a 9-byte body at one byte per 200 ms (1.8 s): 200 ms left less a back-off of 100–200 ms
/// is under a tenth of `read_timeout`. (A retry would have streamed a second 1.8 s trickle.)
#[test]
fn a_retried_5xx_read_whole_too_late_for_the_retry_is_passed_on() {
    let up = trickling_503(9, Duration::from_millis(200), 8);
    let s = sluice(up.port(), |c| {
        c.read_timeout = READ_TIMEOUT;
        c.max_retries = 1;
        c.retry_backoff_factor = 0.2;
    });
    let started = Instant::now();
    let r = get(s.addr(), "/t");
    let took = started.elapsed();
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("x-sluice-error"), None, "the upstream's own 503");
    assert_eq!(r.body, b"xxxxxxxxx");
    assert!(took <= READ_TIMEOUT + SLACK, "{took:?}");
}
