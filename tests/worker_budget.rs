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

/// The same on a kept connection, whose next request a worker reads itself: a request ureq
/// cannot encode goes back to the front end for its 400/431 (checked once, where it is read;
/// the connection then closes, its body unread), and the requests before it on that
/// connection are served as sent.
#[test]
fn an_unencodable_request_on_a_kept_connection_is_the_clients_error() {
    let up = upstream();
    let s = sluice(up.port(), |c| c.max_retries = 0);
    let long = "a".repeat(40 * 1024);
    for (bad, status) in [
        (
            b"GET /auth HTTP/1.1\r\nHost: a\r\nAuthorization: B\xe9arer x\r\n\r\n".to_vec(),
            400,
        ),
        (
            format!("GET /long HTTP/1.1\r\nHost: a\r\nX-Long: {long}\r\n\r\n").into_bytes(),
            431,
        ),
    ] {
        let mut c = Conn::open(s.addr());
        for i in 0..3 {
            let r = c.get(&format!("/before{i}"));
            assert_eq!((r.status, r.text().as_str()), (200, "ok"), "{r:?}");
        }
        let r = c.request(&bad, false);
        assert_eq!(r.status, status, "{r:?}");
        assert!(r.header("x-sluice-error").is_some(), "{r:?}");
        assert!(c.closed_within(Duration::from_secs(5)), "then it closes");
    }
    let targets: Vec<String> = up.received().into_iter().map(|r| r.target).collect();
    assert_eq!(targets.len(), 6, "{targets:?}");
    assert!(
        targets.iter().all(|t| t.starts_with("/before")),
        "the upstream saw none of them: {targets:?}"
    );
    assert_eq!(metrics(s.addr())["circuit_state"], "closed");
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
    let until = gone + Duration::from_secs(3);
    while up.hangs_closed() == 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_micros(200));
    }
    let upstream_saw_close = gone.elapsed();
    assert_eq!(
        up.hangs_closed(),
        1,
        "the upstream saw its connection closed"
    );
    while s
        .metrics()
        .active_requests
        .load(std::sync::atomic::Ordering::Relaxed)
        > 0
        && Instant::now() < until
    {
        std::thread::sleep(Duration::from_micros(200));
    }
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

/// Sends `head` then `body` one byte every `gap`, and returns the response (on its own thread).
fn trickle(
    addr: std::net::SocketAddr,
    head: String,
    body: Vec<u8>,
    gap: Duration,
) -> std::thread::JoinHandle<Option<Resp>> {
    std::thread::spawn(move || {
        let mut c = Conn::open(addr);
        c.send(head.as_bytes());
        for b in body {
            std::thread::sleep(gap);
            c.r.get_mut().write_all(&[b]).ok()?;
        }
        c.response(false)
    })
}

/// A small body trickled in by slow clients is read by the front end: no worker waits for it,
/// and everyone else is served meanwhile.
#[test]
fn slow_small_bodies_hold_no_worker() {
    let up = upstream();
    let s = sluice(up.port(), |c| c.max_concurrent_requests = 2);
    let slow: Vec<_> = (0..6)
        .map(|i| {
            let head = format!("POST /slow{i} HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\n");
            trickle(
                s.addr(),
                head,
                b"abcdef".to_vec(),
                Duration::from_millis(300),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let until = Instant::now() + Duration::from_millis(1200);
    let mut served = 0;
    while Instant::now() < until {
        let t = Instant::now();
        assert_eq!(get(s.addr(), "/fast").status, 200);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        served += 1;
    }
    assert!(served > 10, "{served}");
    assert_eq!(
        metrics(s.addr())["queue_size"],
        0,
        "no request waited for a worker held by a trickling body"
    );
    for h in slow {
        assert_eq!(h.join().unwrap().unwrap().status, 200);
    }
    let got = up.received();
    assert!(got
        .iter()
        .filter(|r| r.target.starts_with("/slow"))
        .all(|r| r.body_prefix == b"abcdef"));
}

/// A small body that does not arrive within client_header_timeout gets 408 body_timeout.
#[test]
fn a_small_body_that_never_completes_gets_408() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.client_header_timeout = Duration::from_millis(500)
    });
    let mut c = Conn::open(s.addr());
    c.send(b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc");
    let r = c.response(false).unwrap();
    r.assert_sluice_error(408, "body_timeout");
    assert_eq!(up.request_count(), 0, "nothing was sent upstream");
}

/// `Expect: 100-continue` with a small body: the front end says continue, then reads it.
#[test]
fn expect_continue_is_answered_by_the_front_end_before_the_body() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    let mut c = Conn::open(s.addr());
    c.send(b"PUT /e?echo_body=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut c.r, &mut line).unwrap();
    assert_eq!(
        line, "HTTP/1.1 100 Continue\r\n",
        "before any body byte was sent"
    );
    c.send(b"hello");
    let r = c.response(false).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "hello"));
}

/// A larger body streamed by a worker must keep up client_min_rate: below it, 408 and the
/// worker is free again.
#[test]
fn a_large_body_below_the_minimum_rate_is_cut_with_408() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.client_buffer = 1024;
        c.client_min_rate = 1000;
        c.client_header_timeout = Duration::from_millis(500);
    });
    let started = Instant::now();
    let mut c = Conn::open(s.addr());
    c.send(b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n");
    c.send(&[b'x'; 2000]);
    let mut w = c.r.get_ref().try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(100));
            if w.write_all(&[b'y'; 20]).is_err() {
                return; // 200 B/s until sluice gives up
            }
        }
    });
    let r = c.response(false).expect("an answer before the body ended");
    let took = started.elapsed();
    eprintln!("408 after {took:?}");
    r.assert_sluice_error(408, "body_timeout");
    // 2,000 bytes at once, then 200 B/s against 1,000 B/s after 0.5 s of grace: cut at ~3.1 s.
    assert!(took < Duration::from_secs(4), "{took:?}");
    let _ = writer.join();
    assert!(eventually(Duration::from_secs(2), || active(s.addr()) == 0));
    let m = metrics(s.addr());
    assert_eq!(m["circuit_state"], "closed");
}

/// A client that does not read a response that fits client_buffer does not hold the worker:
/// the front end sends the rest as the client reads, whole and in order.
#[test]
fn a_slow_reader_of_a_buffered_response_holds_no_worker() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.max_concurrent_requests = 1;
        c.client_buffer = 16 << 20;
    });
    let size = 12u64 << 20;
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&s.addr().into()).unwrap();
    let mut c: TcpStream = sock.into();
    c.write_all(format!("GET /big?body_bytes={size} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || up.request_count()
        == 1
        && active(s.addr()) == 0));
    assert_eq!(
        get(s.addr(), "/other").status,
        200,
        "the one worker is free"
    );
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::with_capacity(size as usize + 1024);
    let mut buf = vec![0u8; 1 << 16];
    while got.len() < size as usize {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
    }
    let at = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    while got.len() < at + size as usize {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    let body = &got[at..];
    assert_eq!(body.len() as u64, size);
    assert!(body
        .iter()
        .enumerate()
        .all(|(i, &b)| b == sluice_tools::upstream::pattern_byte(i as u64)));
}

/// A response too large to hold, sent to a client that does not read it, must leave at
/// client_min_rate: the worker gives up on that client within a bounded time.
#[test]
fn a_reader_below_the_minimum_rate_frees_its_worker() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.max_concurrent_requests = 1;
        c.client_buffer = 0;
        c.client_min_rate = 10 << 20;
        c.client_header_timeout = Duration::from_millis(500);
    });
    let mut c = TcpStream::connect(s.addr()).unwrap();
    c.write_all(b"GET /big?body_bytes=500000000 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || up.request_count() == 1));
    let t = Instant::now();
    assert!(eventually(Duration::from_secs(5), || active(s.addr()) == 0));
    eprintln!(
        "worker freed {:?} after the upstream got the request",
        t.elapsed()
    );
    assert_eq!(get(s.addr(), "/other").status, 200);
    let m = metrics(s.addr());
    assert_eq!(m["client_aborted_requests"], 1, "{m}");
}

/// A client pipelining requests that sluice answers itself cannot stall the event loop for
/// everyone else.
#[test]
fn a_pipelining_client_does_not_stall_the_event_loop() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    let addr = s.addr();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_write_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut reader = c.try_clone().unwrap();
            let drain = std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                while reader.read(&mut buf).is_ok_and(|n| n > 0) {}
            });
            let batch = b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n".repeat(500);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if c.write_all(&batch).is_err() {
                    break;
                }
            }
            let _ = c.shutdown(std::net::Shutdown::Both);
            let _ = drain.join();
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(get(addr, "/proxy-health").status, 200);
        worst = worst.max(t.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = flood.join();
    eprintln!("worst health-check time beside the flood: {worst:?}");
    assert!(worst < Duration::from_secs(1), "{worst:?}");
}

/// One hostile behaviour, played by one client.
#[derive(Clone, Copy, Debug)]
enum Hostile {
    HangsUp,
    TricklesSmallBody,
    TricklesLargeBody,
    ReadsSmallResponseSlowly,
    ReadsLargeResponseSlowly,
    Unencodable,
    Pipelines,
}

fn play(kind: Hostile, addr: std::net::SocketAddr, for_: Duration) {
    let until = Instant::now() + for_;
    let connect = || {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        sock.connect(&addr.into()).unwrap();
        let s: TcpStream = sock.into();
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    };
    while Instant::now() < until {
        let mut c = connect();
        let _ = match kind {
            Hostile::HangsUp => c
                .write_all(b"GET /h?hang=1 HTTP/1.1\r\nHost: a\r\n\r\n")
                .map(|_| std::thread::sleep(Duration::from_millis(300))),
            Hostile::TricklesSmallBody => c
                .write_all(b"POST /t HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\n")
                .and_then(|_| {
                    for b in b"abcdef" {
                        std::thread::sleep(Duration::from_millis(200));
                        c.write_all(&[*b])?;
                    }
                    Ok(())
                }),
            Hostile::TricklesLargeBody => c
                .write_all(b"POST /t HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n")
                .and_then(|_| {
                    for _ in 0..20 {
                        std::thread::sleep(Duration::from_millis(100));
                        c.write_all(&[b'x'; 10])?;
                    }
                    Ok(())
                }),
            Hostile::ReadsSmallResponseSlowly => c
                .write_all(b"GET /s?body_bytes=200000 HTTP/1.1\r\nHost: a\r\n\r\n")
                .map(|_| std::thread::sleep(Duration::from_millis(1500))),
            Hostile::ReadsLargeResponseSlowly => c
                .write_all(b"GET /l?body_bytes=100000000 HTTP/1.1\r\nHost: a\r\n\r\n")
                .map(|_| std::thread::sleep(Duration::from_millis(1500))),
            Hostile::Unencodable => {
                let raw = b"GET /u HTTP/1.1\r\nHost: a\r\nAuthorization: B\xe9arer\r\n\r\n";
                (0..50).try_for_each(|_| c.write_all(raw))
            }
            Hostile::Pipelines => {
                let batch = b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n".repeat(200);
                let mut r = c.try_clone().unwrap();
                let drain = std::thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 16];
                    while r.read(&mut buf).is_ok_and(|n| n > 0) {}
                });
                let mut sent = Ok(());
                for _ in 0..20 {
                    sent = c.write_all(&batch);
                    if sent.is_err() {
                        break;
                    }
                }
                let _ = c.shutdown(std::net::Shutdown::Both);
                let _ = drain.join();
                sent
            }
        };
    }
}

/// Well-behaved clients on kept-alive connections: (statuses, latencies).
fn behave(addr: std::net::SocketAddr, for_: Duration) -> (Vec<u16>, Vec<Duration>) {
    let until = Instant::now() + for_;
    let mut c = Conn::open(addr);
    let (mut statuses, mut took) = (Vec::new(), Vec::new());
    while Instant::now() < until {
        let t = Instant::now();
        let r = c.get("/ok?delay_ms=5");
        took.push(t.elapsed());
        statuses.push(r.status);
        if r.header("connection") == Some("close") {
            c = Conn::open(addr);
        }
    }
    (statuses, took)
}

/// The worker budget: with 4 workers, 12 clients of each hostile kind at once, while
/// well-behaved clients keep sending — every well-behaved request succeeds, the breaker stays
/// closed, and no worker stays busy afterwards.
#[test]
fn hostile_clients_cannot_take_the_workers_from_well_behaved_ones() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.max_concurrent_requests = 4;
        c.max_queue_size = 64;
        c.client_buffer = 16 * 1024;
        c.client_min_rate = 20 << 20;
        c.client_header_timeout = Duration::from_millis(1000);
        c.circuit_breaker_threshold = 3;
    });
    let addr = s.addr();
    let phase = Duration::from_millis(2500);
    for kind in [
        Hostile::HangsUp,
        Hostile::TricklesSmallBody,
        Hostile::TricklesLargeBody,
        Hostile::ReadsSmallResponseSlowly,
        Hostile::ReadsLargeResponseSlowly,
        Hostile::Unencodable,
        Hostile::Pipelines,
    ] {
        let hostile: Vec<_> = (0..12)
            .map(|_| std::thread::spawn(move || play(kind, addr, phase)))
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let good: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(move || behave(addr, phase - Duration::from_millis(400))))
            .collect();
        let (mut statuses, mut took) = (Vec::new(), Vec::new());
        for g in good {
            let (s, t) = g.join().unwrap();
            statuses.extend(s);
            took.extend(t);
        }
        for h in hostile {
            h.join().unwrap();
        }
        took.sort();
        let p99 = took[(took.len() * 99 / 100).min(took.len() - 1)];
        let ok = statuses.iter().filter(|s| **s == 200).count();
        eprintln!(
            "{kind:?}: well-behaved {ok}/{} succeeded, p99 {p99:?}",
            statuses.len()
        );
        assert_eq!(ok, statuses.len(), "{kind:?}: {statuses:?}");
        assert!(
            eventually(Duration::from_secs(5), || active(addr) == 0),
            "{kind:?}: a worker stayed busy"
        );
        assert_eq!(metrics(addr)["circuit_state"], "closed", "{kind:?}");
    }
}

/// A client that pipelines requests the upstream fails and never reads its answers holds no
/// worker (README "What can hold a worker"): once its socket is full, each worker's 502 goes to
/// the front end with the connection, unsent, and the front end closes it when that answer
/// stalls for `client_idle_timeout` (found by review: the worker's own answers were blocking
/// writes, and a worker was held 9 s with `client_idle_timeout` 3 s).
#[test]
fn a_client_that_never_reads_holds_no_worker_over_sluices_own_small_answers() {
    let dead = dead_port();
    let s = sluice(dead.port(), |c| {
        c.client_idle_timeout = Duration::from_secs(3);
        c.max_retries = 0;
        c.circuit_breaker_threshold = u32::MAX;
        c.max_concurrent_requests = 2;
    });
    let addr = s.addr();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut hog: TcpStream = sock.into();
    let one = b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n";
    let raw: Vec<u8> = one
        .iter()
        .copied()
        .cycle()
        .take(one.len() * 40_000)
        .collect();
    hog.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let writer = std::thread::spawn(move || {
        let _ = hog.write_all(&raw);
        hog
    });
    // Wait until the answers stall: the request count stops moving.
    let count = || metrics(addr)["total_requests"].as_u64().unwrap_or(0);
    let until = Instant::now() + Duration::from_secs(15);
    let mut last = count();
    let stalled = loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = count();
        if now == last && now > 0 {
            break Some(Instant::now() - Duration::from_millis(200));
        }
        if Instant::now() > until {
            break None;
        }
        last = now;
    };
    let stalled = stalled.expect("the answers stalled");
    // How long a worker stays busy with no answer moving.
    let freed = eventually(Duration::from_secs(10), || active(addr) == 0);
    let held = stalled.elapsed();
    let at = count();
    let hog = writer.join().unwrap();
    drop(hog);
    println!("a worker held {held:?} after {last} requests (then {at}); freed {freed}");
    assert!(
        last > 10,
        "the client's socket filled with answers first: {last}"
    );
    assert!(
        held < Duration::from_millis(1000),
        "a worker was held {held:?} writing a ~400-byte 502 to a client that never reads"
    );
    assert_eq!(
        get(addr, "/other").status,
        502,
        "sluice still answers others"
    );
}
