//! Retries and the circuit breaker end to end, against real upstream faults.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use sluice_tools::upstream::TestUpstream;

#[test]
fn breaker_opens_answers_fast_probes_once_and_closes_on_recovery() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.circuit_breaker_threshold = 3;
        c.circuit_breaker_timeout = Duration::from_millis(1500);
        c.max_retries = 0;
    });
    up.set_fail(Some(503));
    for _ in 0..3 {
        assert_eq!(get(s.addr(), "/f").status, 503);
    }
    assert_eq!(metrics(s.addr())["circuit_state"], "open");
    assert_eq!(get(s.addr(), "/proxy-health").json()["status"], "degraded");
    let before = up.request_count();
    let mut c = Conn::open(s.addr());
    let t = Instant::now();
    let r = c.get("/while-open");
    let took = t.elapsed();
    r.assert_sluice_error(503, "circuit_open");
    assert!(
        took < Duration::from_millis(50),
        "open breaker answered in {took:?}"
    );
    let retry_after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert_eq!(
        retry_after, 2,
        "Retry-After is the whole seconds until half-open, rounded up"
    );
    assert_eq!(up.request_count(), before, "no upstream traffic while open");

    std::thread::sleep(Duration::from_millis(1550));
    up.set_fail(None);
    assert_eq!(get(s.addr(), "/probe").status, 200);
    assert_eq!(
        up.request_count(),
        before + 1,
        "exactly the probe reached the upstream"
    );
    let m = metrics(s.addr());
    assert_eq!(m["circuit_state"], "closed");
    assert_eq!(m["consecutive_failures"], 0);
    assert_eq!(m["circuit_rejected"], 1);
    assert_eq!(get(s.addr(), "/proxy-health").json()["status"], "healthy");
}

#[test]
fn a_failing_probe_reopens_the_breaker() {
    let dead = dead_port();
    let s = sluice(dead.port(), |c| {
        c.circuit_breaker_threshold = 2;
        c.circuit_breaker_timeout = Duration::from_millis(1000);
        c.max_retries = 0;
    });
    for _ in 0..2 {
        get(s.addr(), "/").assert_sluice_error(502, "connect_failed");
    }
    get(s.addr(), "/").assert_sluice_error(503, "circuit_open");
    std::thread::sleep(Duration::from_millis(1050));
    get(s.addr(), "/probe").assert_sluice_error(502, "connect_failed");
    get(s.addr(), "/").assert_sluice_error(503, "circuit_open");
    let prom = get(s.addr(), "/proxy-metrics/prometheus").text();
    assert!(
        prom.contains("sluice_circuit_transitions_total{to=\"open\"} 2"),
        "{prom}"
    );
    assert!(prom.contains("sluice_circuit_transitions_total{to=\"half_open\"} 1"));
}

#[test]
fn half_open_lets_one_probe_through_among_concurrent_requests() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.circuit_breaker_threshold = 1;
        c.circuit_breaker_timeout = Duration::from_millis(300);
        c.max_retries = 0;
    });
    up.set_fail(Some(502));
    assert_eq!(get(s.addr(), "/").status, 502);
    up.set_fail(None);
    std::thread::sleep(Duration::from_millis(350));
    let before = up.request_count();
    let addr = s.addr();
    let all: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(move || get(addr, "/p?delay_ms=300").status))
        .collect();
    let statuses: Vec<u16> = all.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 7);
    assert_eq!(up.request_count(), before + 1);
}

#[test]
fn application_errors_do_not_open_the_breaker() {
    let up = upstream();
    let s = sluice(up.port(), |c| c.circuit_breaker_threshold = 2);
    for status in [500, 404, 500, 400, 500] {
        assert_eq!(get(s.addr(), &format!("/?status={status}")).status, status);
    }
    assert_eq!(metrics(s.addr())["circuit_state"], "closed");
}

#[test]
fn idempotent_request_is_retried_after_a_gateway_error_and_counted() {
    let up = upstream();
    let s = sluice(up.port(), |c| c.max_retries = 2);
    assert_eq!(get(s.addr(), "/?status=503").status, 503);
    assert_eq!(up.request_count(), 3, "GET tried 1 + max_retries times");
    let m = metrics(s.addr());
    assert_eq!(
        (m["retried_requests"].as_u64(), m["retry_attempts"].as_u64()),
        (Some(1), Some(2))
    );
}

#[test]
fn post_to_a_refused_port_is_retried_because_nothing_was_sent() {
    let dead = dead_port();
    let port = dead.port();
    let s = sluice(port, |c| {
        c.max_retries = 2;
        c.retry_backoff_factor = 0.4;
    });
    let starter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(80));
        drop(dead); // the port comes alive
        TestUpstream::start_on(&format!("127.0.0.1:{port}"), true).unwrap()
    });
    let r = send(
        s.addr(),
        b"POST /create HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
    );
    let up = starter.join().unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let got = up.received();
    assert_eq!(got.len(), 1, "the POST reached the upstream exactly once");
    assert_eq!(got[0].body_prefix, b"hello");
    assert!(metrics(s.addr())["retry_attempts"].as_u64().unwrap() >= 1);
}

#[test]
fn post_whose_body_was_sent_is_not_retried_after_a_reset() {
    let up = upstream();
    let s = sluice(up.port(), |c| c.max_retries = 2);
    let r = send(
        s.addr(),
        b"POST /pay?reset=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
    );
    r.assert_sluice_error(502, "upstream_error");
    assert_eq!(
        up.request_count(),
        1,
        "a POST that reached the upstream is never replayed"
    );
    let r = send(
        s.addr(),
        b"POST /pay?status=503 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(r.status, 503);
    assert_eq!(up.request_count(), 2, "nor after a 503");
}

#[test]
fn put_with_a_small_body_is_replayed_intact() {
    let up = upstream();
    let s = sluice(up.port(), |c| c.max_retries = 1);
    let r = send(
        s.addr(),
        b"PUT /doc?reset=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
    );
    r.assert_sluice_error(502, "upstream_error");
    let got = up.received();
    assert_eq!(
        got.len(),
        2,
        "an idempotent PUT with a buffered body is retried"
    );
    assert!(got
        .iter()
        .all(|g| g.body_prefix == b"hello" && g.body_complete));
}

#[test]
fn every_attempt_sends_the_same_head_and_body() {
    let up = upstream();
    let s = sluice(up.port(), |c| c.max_retries = 2);
    let r = send(
        s.addr(),
        b"PUT /doc/caf\xc3\xa9?q={1}&reset=1 HTTP/1.1\r\nHost: t\r\nX-Custom: a\r\nX-Forwarded-For: 10.0.0.9\r\n\
          X-Custom: b\r\nContent-Length: 5\r\n\r\nhello",
    );
    r.assert_sluice_error(502, "upstream_error");
    let got = up.received();
    assert_eq!(got.len(), 3, "tried 1 + max_retries times");
    let first = &got[0];
    assert_eq!(first.method, "PUT");
    assert_eq!(first.target, "/doc/caf%C3%A9?q=%7B1%7D&reset=1");
    assert_eq!(
        first.header("x-forwarded-for").as_deref(),
        Some("10.0.0.9, 127.0.0.1")
    );
    let customs: Vec<_> = first
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-custom"))
        .collect();
    assert_eq!(customs.len(), 2, "{:?}", first.headers);
    let id = first.header("x-request-id").expect("an id");
    for again in &got[1..] {
        assert_eq!(
            (&again.method, &again.target, &again.headers),
            (&first.method, &first.target, &first.headers),
            "a retry is the same request"
        );
        assert_eq!(again.body_prefix, b"hello");
    }
    assert_eq!(r.header("x-request-id"), Some(id.as_str()));
}

#[test]
fn stale_pooled_connections_are_retried_transparently() {
    let up = upstream();
    let s = sluice(up.port(), |c| c.max_concurrent_requests = 1);
    for i in 0..20 {
        let r = get(s.addr(), &format!("/s{i}?drop_after=1"));
        assert_eq!(r.status, 200, "request {i}");
    }
    assert!(
        up.connection_count() >= 2,
        "the upstream really dropped connections"
    );
}

/// The pool's liveness probe: a connection the upstream closed while idle is never used again —
/// here for a POST, which may not be retried once sent, so a missed close would be a 502.
#[test]
fn a_pooled_connection_the_upstream_closed_is_not_used_for_a_post() {
    let up = upstream();
    let s = sluice(up.port(), |c| c.max_concurrent_requests = 1);
    for i in 0..10 {
        let first = send(
            s.addr(),
            format!(
                "POST /first{i}?drop_after=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi"
            )
            .as_bytes(),
        );
        assert_eq!(first.status, 200, "round {i}");
        std::thread::sleep(Duration::from_millis(50)); // the upstream's close reaches sluice
        let second = send(
            s.addr(),
            format!("POST /second{i} HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nho")
                .as_bytes(),
        );
        assert_eq!(second.status, 200, "round {i}: {second:?}");
    }
    let m = metrics(s.addr());
    assert_eq!(
        m["upstream_attempts"], 20,
        "no attempt went to a closed connection"
    );
    // Each round's first POST reuses the previous round's connection, which the upstream then
    // drops; each second POST needs a new one: 1 + 10.
    assert_eq!(up.connection_count(), 11);
}

#[test]
fn retry_budget_bounds_amplification_against_a_failing_upstream() {
    let up = upstream();
    up.set_fail(Some(503));
    let s = sluice(up.port(), |c| {
        c.max_retries = 2;
        c.retry_backoff_factor = 0.0;
        c.circuit_breaker_threshold = 1_000_000;
    });
    let addr = s.addr();
    let t = Instant::now();
    let per_thread = 50;
    let threads: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Conn::open(addr);
                (0..per_thread)
                    .filter(|_| c.get("/x").status == 503)
                    .count()
            })
        })
        .collect();
    let answered: usize = threads.into_iter().map(|h| h.join().unwrap()).sum();
    let secs = t.elapsed().as_secs_f64();
    let clients = (8 * per_thread) as f64;
    let upstream_saw = up.request_count() as f64;
    let allowed = 1.2 * clients + 5.0 * secs.ceil() + 10.0;
    eprintln!("retry amplification: {clients} client requests -> {upstream_saw} upstream requests ({:.2}x) in {secs:.2}s", upstream_saw / clients);
    assert_eq!(answered, 8 * per_thread);
    assert!(
        upstream_saw <= allowed,
        "upstream saw {upstream_saw} for {clients} requests (allowed {allowed})"
    );
    assert!(upstream_saw > clients, "some retries happened");
}

#[test]
fn no_retries_while_the_breaker_is_open() {
    let dead = dead_port();
    let s = sluice(dead.port(), |c| {
        c.max_retries = 2;
        c.circuit_breaker_threshold = 1;
        c.circuit_breaker_timeout = Duration::from_secs(60);
    });
    get(s.addr(), "/").assert_sluice_error(502, "connect_failed");
    let attempts_before = metrics(s.addr())["upstream_attempts"].as_u64().unwrap();
    for _ in 0..5 {
        get(s.addr(), "/").assert_sluice_error(503, "circuit_open");
    }
    assert_eq!(
        metrics(s.addr())["upstream_attempts"].as_u64().unwrap(),
        attempts_before
    );
}

/// A raw upstream that, like nginx's `client_body_timeout` or gunicorn's worker timeout, gives
/// up on a request body that goes silent for `patience` (it closes the connection without an
/// answer); a request whose body comes in time is answered 200. At most `max` connections,
/// each on its own thread, for at most 30 s.
fn impatient_upstream(patience: Duration, max: usize) -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().take(max) {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                s.set_read_timeout(Some(patience)).unwrap();
                let mut got = Vec::new();
                let mut b = [0u8; 4096];
                let until = Instant::now() + Duration::from_secs(30);
                loop {
                    if Instant::now() > until {
                        return;
                    }
                    let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut b) {
                            Ok(n) if n > 0 => got.extend_from_slice(&b[..n]),
                            _ => return,
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap_or(0));
                    while got.len() < end + 4 + len {
                        match s.read(&mut b) {
                            Ok(n) if n > 0 => got.extend_from_slice(&b[..n]),
                            _ => return, // silent too long (or closed): give up, no answer
                        }
                    }
                    got.drain(..end + 4 + len);
                    if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// README "What can hold a worker": "only the upstream decides how long one is busy and whether
/// the breaker opens"; a client may send a larger body slowly (`client_header_timeout` of grace,
/// then `client_min_rate`). While a worker streams that body the upstream waits for it, and an
/// upstream with its own body timeout (nginx `client_body_timeout`, gunicorn) gives up and
/// closes: a `Reset` while the client's body was not all sent, whose verdict is neutral
/// (`AttemptFailure::verdict`); the client still gets its 502. Two clients pausing 1 s inside
/// their uploads (well within sluice's 5 s grace) leave a threshold-2 breaker closed (before,
/// they opened it and a healthy upstream was refused 503 `circuit_open` to everyone).
#[test]
fn slow_uploads_within_the_allowance_do_not_open_the_breaker() {
    let up = impatient_upstream(Duration::from_millis(300), 16);
    let s = sluice(up.port(), |c| {
        c.client_buffer = 1024;
        c.circuit_breaker_threshold = 2;
        c.max_retries = 0;
    });
    let addr = s.addr();
    for _ in 0..2 {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let len = 20_000;
        c.write_all(
            format!("POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n").as_bytes(),
        )
        .unwrap();
        c.write_all(&vec![b'a'; 2000]).unwrap();
        std::thread::sleep(Duration::from_millis(1000)); // a pause, within the 5 s grace
        let _ = c.write_all(&vec![b'a'; len - 2000]);
        let mut r = Vec::new();
        let mut b = [0u8; 1024];
        while !r.windows(4).any(|w| w == b"\r\n\r\n") {
            match c.read(&mut b) {
                Ok(n) if n > 0 => r.extend_from_slice(&b[..n]),
                _ => break,
            }
        }
        let text = String::from_utf8_lossy(&r).into_owned();
        println!("slow upload got: {:?}", text.lines().next());
        assert!(
            text.starts_with("HTTP/1.1 502") && text.contains("X-Sluice-Error: upstream_error"),
            "the client still gets its 502 upstream_error: {text}"
        );
    }
    let r = get(addr, "/after");
    assert_eq!(
        r.status,
        200,
        "a healthy upstream is refused after two slow uploads: {:?}",
        r.header("x-sluice-error")
    );
}
