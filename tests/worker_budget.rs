//! Workers are the scarce resource (README "What can hold a worker"): no client may hold one
//! beyond a bounded time, and only the upstream may open the breaker. Each test plays one
//! unlucky or hostile client against a real sluice and a real upstream on 127.0.0.1, and checks
//! what the upstream saw and what everyone else got.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// Requests that ureq cannot encode are the client's error (400/431), never the upstream's:
/// five of them leave the breaker closed, and the upstream sees none.
#[test]
fn unencodable_requests_are_client_errors_and_never_open_the_breaker() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.circuit_breaker_threshold = 2;
        c.max_retries = 0;
    });
    let long = "a".repeat(40 * 1024);
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (
            format!("GET /long HTTP/1.1\r\nHost: a\r\nX-Long: {long}\r\n\r\n").into_bytes(),
            431,
        ),
        (
            b"GET /host HTTP/1.1\r\nHost: h\xc3\xa9llo\r\n\r\n".to_vec(),
            400,
        ),
        (
            b"GET /auth HTTP/1.1\r\nHost: a\r\nAuthorization: B\xe9arer x\r\n\r\n".to_vec(),
            400,
        ),
    ];
    for (raw, status) in &cases {
        for _ in 0..3 {
            let r = send(s.addr(), raw);
            assert_eq!(r.status, *status, "{r:?}");
            assert!(r.header("x-sluice-error").is_some());
        }
    }
    assert_eq!(up.request_count(), 0, "the upstream saw none of them");
    let m = metrics(s.addr());
    assert_eq!(m["circuit_state"], "closed", "{m}");
    assert_eq!(get(s.addr(), "/ok").status, 200, "everyone else is served");
}

/// An upstream response with both `Content-Length` and `Transfer-Encoding: chunked` is framed
/// by `Transfer-Encoding` (RFC 9112 §6.3); the next response on the connection is intact.
#[test]
fn transfer_encoding_overrides_content_length_in_a_response() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    let mut c = Conn::open(s.addr());
    let r = c.get("/te?chunked=1&body_bytes=3000&header=Content-Length:10");
    assert_eq!(r.status, 200);
    assert!(r.complete);
    assert_eq!(r.body.len(), 3000, "the whole decoded body");
    let v = r.headers_named("content-length");
    assert!(v.is_empty() || v == ["3000"], "{v:?}");
    let next = c.get("/next");
    assert_eq!((next.status, next.text().as_str()), (200, "ok"), "in sync");
}

/// `Connection: content-length` in a response does not strip the response's framing.
#[test]
fn a_connection_header_naming_content_length_keeps_the_framing() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    let mut c = Conn::open(s.addr());
    let r = c.get("/cl?body_bytes=100&header=Connection:content-length");
    assert_eq!((r.status, r.body.len(), r.complete), (200, 100, true));
    assert_eq!(r.header("content-length"), Some("100"));
    assert_eq!(c.get("/next").text(), "ok", "in sync");
}

/// None of sluice's own answers to HEAD carries a body: the next response on a kept-alive
/// connection starts where it should.
#[test]
fn sluices_own_answers_to_head_have_no_body() {
    let dead = dead_port();
    let s = sluice(dead.port(), |c| {
        c.circuit_breaker_threshold = 1;
        c.max_retries = 0;
    });
    let mut c = Conn::open(s.addr());
    let head = b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n";
    let r = c.request(head, true);
    assert_eq!(r.header("x-sluice-error"), Some("connect_failed"));
    let r = c.request(head, true);
    assert_eq!(r.header("x-sluice-error"), Some("circuit_open"));
    c.send(head);
    c.send(b"GET /proxy-health HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = c.response(true).unwrap();
    assert_eq!(r.header("x-sluice-error"), Some("circuit_open"));
    let health = c.response(false).unwrap();
    assert_eq!(health.status, 200, "in sync after the HEAD answers");
}

/// A WebSocket upgrade is refused before anything reaches the upstream (sluice does not tunnel
/// upgraded connections), and an upstream's 101 never counts against the breaker.
#[test]
fn upgrades_are_refused_clearly_and_never_open_the_breaker() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.circuit_breaker_threshold = 2;
        c.max_retries = 0;
    });
    for _ in 0..3 {
        let r = send(
            s.addr(),
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        );
        r.assert_sluice_error(501, "upgrade_unsupported");
    }
    assert_eq!(up.request_count(), 0);
    for _ in 0..3 {
        let r = get(s.addr(), "/switch?status=101");
        assert!(matches!(r.status, 501 | 502), "{r:?}");
    }
    assert_eq!(metrics(s.addr())["circuit_state"], "closed");
    assert_eq!(get(s.addr(), "/ok").status, 200);
}

/// A request head trickling in one byte at a time is read in time linear in its size.
#[test]
fn a_large_head_in_small_pieces_is_read_in_linear_time() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.client_header_timeout = Duration::from_secs(30)
    });
    let mut head = b"GET /big HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..100 {
        head.extend_from_slice(format!("X-H{i}: {}\r\n", "v".repeat(500)).as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    let mut t = TcpStream::connect(s.addr()).unwrap();
    t.set_nodelay(true).unwrap();
    let started = Instant::now();
    for piece in head.chunks(8) {
        t.write_all(piece).unwrap();
    }
    let mut r = Vec::new();
    t.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 4096];
    while !r.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = t.read(&mut buf).unwrap();
        assert!(n > 0);
        r.extend_from_slice(&buf[..n]);
    }
    assert!(
        r.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&r)
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

fn active(addr: std::net::SocketAddr) -> u64 {
    metrics(addr)["active_requests"].as_u64().unwrap()
}

/// A client that hangs up while its request waits on a slow upstream frees its worker at once:
/// the upstream sees its connection closed, the request counts as a client abort (not an
/// upstream failure), and it is not retried.
#[test]
fn a_client_hang_up_cancels_the_upstream_exchange() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.max_concurrent_requests = 1;
        c.circuit_breaker_threshold = 1;
    });
    let mut c = TcpStream::connect(s.addr()).unwrap();
    c.write_all(b"GET /slow?hang=1 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || up.request_count()
        == 1
        && active(s.addr()) == 1));
    let gone = Instant::now();
    drop(c);
    assert!(eventually(Duration::from_secs(3), || up.hangs_closed() == 1));
    let upstream_saw_close = gone.elapsed();
    assert!(eventually(Duration::from_secs(3), || active(s.addr()) == 0));
    let worker_free = gone.elapsed();
    eprintln!("hang-up -> upstream closed {upstream_saw_close:?}, worker free {worker_free:?}");
    assert!(worker_free < Duration::from_secs(1), "{worker_free:?}");
    let m = metrics(s.addr());
    assert_eq!(m["client_aborted_requests"], 1, "{m}");
    assert_eq!(m["failed_requests"], 0, "{m}");
    assert_eq!(m["circuit_state"], "closed", "{m}");
    assert_eq!(m["retry_attempts"], 0, "{m}");
    assert_eq!(up.request_count(), 1, "not retried");
    assert_eq!(
        get(s.addr(), "/ok").status,
        200,
        "the one worker serves the next client"
    );
}

/// A queued request whose client has gone is dropped when a worker takes it: never sent.
#[test]
fn a_queued_request_whose_client_left_is_never_sent_upstream() {
    let up = upstream();
    let s = sluice(up.port(), |c| c.max_concurrent_requests = 1);
    let mut holder = TcpStream::connect(s.addr()).unwrap();
    holder
        .write_all(b"GET /hold?hang=1 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || up.request_count() == 1));
    let mut queued = TcpStream::connect(s.addr()).unwrap();
    queued
        .write_all(b"GET /queued HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert!(eventually(Duration::from_secs(3), || metrics(s.addr())
        ["queue_size"]
        == 1));
    drop(queued);
    std::thread::sleep(Duration::from_millis(100));
    drop(holder);
    assert!(eventually(Duration::from_secs(3), || {
        let m = metrics(s.addr());
        m["active_requests"] == 0 && m["client_aborted_requests"] == 2
    }));
    assert_eq!(
        up.request_count(),
        1,
        "the queued request never reached the upstream"
    );
    assert!(up.received().iter().all(|r| r.target != "/queued"));
}

/// With `abort_on_client_close` off, the upstream sees the request through (nginx's
/// `proxy_ignore_client_abort`).
#[test]
fn with_abort_on_client_close_off_the_upstream_sees_the_request_through() {
    let up = upstream();
    let s = sluice(up.port(), |c| c.abort_on_client_close = false);
    let mut c = TcpStream::connect(s.addr()).unwrap();
    c.write_all(b"GET /slow?delay_ms=800 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || up.request_count() == 1));
    drop(c);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        active(s.addr()),
        1,
        "still waiting for the upstream's answer"
    );
    assert!(eventually(Duration::from_secs(3), || active(s.addr()) == 0));
}
