//! Defects found by a hostile review of the concurrency code, each proved by a test that fails
//! on the code as reviewed (marked `#[ignore = "defect: …"]` so that the suite stays green).
//! Real sockets on 127.0.0.1, the project's test upstream; every loop bounded in count and time.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

/// A client socket with a tiny receive buffer: it takes a response only as fast as it reads it.
fn slow_reader(addr: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Reads until EOF (or 20 s, or a 5 s silence); returns the head and how many body bytes came.
fn read_all(s: &mut TcpStream) -> (String, usize) {
    let mut all = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(all.len(), |p| p + 4);
    (
        String::from_utf8_lossy(&all[..end]).into_owned(),
        all.len() - end,
    )
}

/// README "Shutdown": requests in flight "are answered normally"; sluice exits "as soon as no
/// request is queued or in flight". A response of up to `client_buffer` bytes that a client is
/// slow to take is handed to the front end's non-blocking writer (`relay.rs` `Delivery`,
/// `ClientConn::leave_unsent`) — but the worker drops the request's `InProgress` before that
/// hand-off (`pool/worker.rs:192`, then `:203`), and `Running::wait_idle` (`lib.rs`) counts only
/// `InProgress`. So at SIGTERM the process exits at once while the front end still holds most of
/// the response: the client gets a truncated body (the access log said 200, complete).
#[test]
#[ignore = "defect: the drain exits while the front end still holds a response for a slow reader; the client's body is cut"]
fn a_response_the_front_end_still_delivers_at_sigterm_is_not_cut() {
    let up = upstream();
    let mut p = Proc::in_front_of(
        up.port(),
        &["--client-buffer", "16777216", "--shutdown-grace", "10"],
    );
    let len = 12_000_000usize;
    let mut c = slow_reader(p.addr);
    c.write_all(format!("GET /big?body_bytes={len} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    // The worker is done with it (the response is all read from the upstream and held).
    let addr = p.addr;
    assert!(
        eventually(Duration::from_secs(10), || active(addr) == 0),
        "the worker finished"
    );
    p.signal("TERM");
    let (head, got) = read_all(&mut c);
    let exit = p.wait_exit(Duration::from_secs(15));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        got, len,
        "the whole body reaches the client (exit status {exit:?}); head: {head}"
    );
}

/// The control for the test above: the same slow reader, no SIGTERM, gets the whole body.
#[test]
fn control_a_slow_reader_gets_the_whole_held_response_without_a_drain() {
    let up = upstream();
    let p = Proc::in_front_of(up.port(), &["--client-buffer", "16777216"]);
    let len = 12_000_000usize;
    let mut c = slow_reader(p.addr);
    c.write_all(
        format!("GET /big?body_bytes={len} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let addr = p.addr;
    assert!(eventually(Duration::from_secs(10), || active(addr) == 0));
    let (head, got) = read_all(&mut c);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(got, len);
}

/// README "Shutdown": when `shutdown_grace` ends, every request still in flight "ends with the
/// outcome `shutdown`": one "that has had no response byte yet is answered 503 `shutdown`". A
/// request whose body is larger than `client_buffer` is streamed by its worker, and while the
/// worker still reads that body from the client the exchange is not `waiting`
/// (`upstream/cancel.rs:106-114`): the front end's cut (`front/mod.rs:240-242`,
/// `Cancel::client_gone`) only sets `HUNG_UP` and wakes a back-off, so the worker stays blocked
/// in the client read (`http/conn.rs`, paced by `client_header_timeout` + `client_min_rate`),
/// `Running::end_grace` waits its 1 s and `main` returns: the client gets no answer at all (the
/// connection just closes), and no access-log line or `shutdown` outcome is recorded.
#[test]
#[ignore = "defect: at the end of the grace a request whose large body is still streaming gets no 503 shutdown, only a close"]
fn a_streaming_upload_at_the_end_of_the_grace_is_answered_503_shutdown() {
    let up = upstream();
    let mut p = Proc::in_front_of(
        up.port(),
        &["--client-buffer", "0", "--shutdown-grace", "1"],
    );
    let mut c = TcpStream::connect(p.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        .unwrap();
    c.write_all(&[b'a'; 1000]).unwrap();
    // The worker streams the body: the upstream has the request.
    assert!(
        eventually(Duration::from_secs(5), || up.connection_count() >= 1),
        "forwarded"
    );
    std::thread::sleep(Duration::from_millis(200));
    p.signal("TERM");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let exit = p.wait_exit(Duration::from_secs(10));
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 503") && text.to_ascii_lowercase().contains("shutdown"),
        "the client got {text:?} (exit {exit:?}); stderr: {}",
        p.stderr.lock()
    );
}

/// README "Shutdown": "a second signal exits at once (status 1)". `main` takes the first
/// signal from its `Signals` iterator and never reads that iterator again; the second signal is
/// watched by a new `Signals` registered only after `Running::drain` has returned and a thread
/// has started (`main.rs:161-170`). A second SIGTERM delivered in between is recorded in the
/// first `Signals` and lost: sluice then waits out the request in flight (here 4 s) instead of
/// exiting at once. Each trial sends the second signal 0.2–2 ms after the first (by PID).
#[test]
#[ignore = "defect: a second SIGTERM arriving while the drain starts is lost; sluice waits out the grace"]
fn a_second_sigterm_soon_after_the_first_exits_at_once() {
    let up = upstream();
    let mut lost = Vec::new();
    for gap_us in [200u64, 500, 1000, 2000, 200, 500, 1000, 2000] {
        let mut p = Proc::in_front_of(up.port(), &["--shutdown-grace", "10"]);
        let addr = p.addr;
        let slow = std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = c.write_all(b"GET /slow?delay_ms=4000 HTTP/1.1\r\nHost: x\r\n\r\n");
            let _ = c.read(&mut [0u8; 64]);
        });
        assert!(eventually(Duration::from_secs(5), || up.connection_count()
            > 0
            && active(addr) == 1));
        let pid = p.pid() as i32;
        // SAFETY: kill(2) on the PID of the child this test started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        std::thread::sleep(Duration::from_micros(gap_us));
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let code = p.wait_exit(Duration::from_millis(1500));
        if code != Some(1) {
            lost.push((gap_us, code));
        }
        drop(p);
        let _ = slow.join();
        up.clear();
    }
    assert!(
        lost.is_empty(),
        "second signal not acted on (gap µs, exit): {lost:?}"
    );
}

/// One POST with a `len`-byte body the client sends after its head (so its body is not all in
/// sluice's buffer when a worker takes it); the response's status and `X-Sluice-Error`.
fn upload(addr: SocketAddr, len: usize) -> (u16, String) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = format!(
        "POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    c.write_all(head.as_bytes()).unwrap();
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        let _ = w.write_all(&vec![b'b'; len]);
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let _ = writer.join();
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let reason = text
        .lines()
        .find_map(|l| l.strip_prefix("X-Sluice-Error: "))
        .unwrap_or("")
        .to_string();
    (status, reason)
}

/// README "Circuit breaker": after `circuit_breaker_timeout` "exactly one probe goes upstream",
/// and "the breaker refuses a healthy but slow upstream for at most twice
/// `circuit_breaker_timeout`, whatever the probe takes". But only a request whose body is all in
/// the buffer may be the probe (`pool/worker.rs:163`, `Breaker::admit_as`,
/// `policy/breaker.rs` — `!may_probe && HalfOpen && !probe_overdue` → reject), and with no
/// probe out the probe is never overdue. Traffic made of uploads larger than `client_buffer`
/// (an upload API) therefore never probes: the healthy upstream is refused 503 `circuit_open`
/// for ever. Here: timeout 1 s, 3.5 s of uploads after the upstream recovered, all refused.
#[test]
#[ignore = "defect: with only streamed-body requests the half-open breaker never probes and refuses a healthy upstream for ever"]
fn uploads_alone_do_not_keep_a_healthy_upstream_refused_for_ever() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.circuit_breaker_threshold = 1;
        c.circuit_breaker_timeout = Duration::from_secs(1);
        c.client_buffer = 1024;
        c.max_retries = 0;
    });
    up.set_fail(Some(503));
    assert_eq!(get(s.addr(), "/x").status, 503);
    up.set_fail(None);
    let opened = Instant::now();
    let mut seen = Vec::new();
    for _ in 0..40 {
        if opened.elapsed() > Duration::from_millis(3500) {
            break;
        }
        let (status, reason) = upload(s.addr(), 300_000);
        seen.push((opened.elapsed().as_millis(), status, reason));
        std::thread::sleep(Duration::from_millis(200));
    }
    let late_ok = seen
        .iter()
        .any(|(ms, status, _)| *ms > 2000 && *status == 200);
    assert!(
        late_ok,
        "past 2 × circuit_breaker_timeout an upload reaches the healthy upstream: {seen:?}"
    );
}

/// docs/ARCHITECTURE.md "The breaker and the health checks": "with checks on, the breaker is
/// closed exactly when the checks say healthy"; a reload applies to new requests. The health
/// thread records whatever its check returns (`upstream/health.rs:101-122`): only a reload that
/// turns the checks *off* meanwhile voids a check in flight. A check that started against the
/// old target and fails after a reload moved `target_port` to a healthy upstream is counted
/// against the new one (`Shared::record_check`): with `fall` 1 it opens the breaker, and the
/// healthy new upstream is refused 503 `circuit_open` until `rise` new checks pass.
#[test]
#[ignore = "defect: a health check of the old target that fails after a reload opens the breaker on the new, healthy target"]
fn a_check_of_the_old_target_does_not_open_the_breaker_after_a_reload() {
    let a = upstream();
    let b = upstream();
    let tweak = |c: &mut sluice::config::Config| {
        c.health_check_path = "/health".into();
        c.health_check_interval = Duration::from_millis(300);
        c.health_check_timeout = Duration::from_millis(1500);
        c.health_check_fall = 1;
        c.health_check_rise = 2;
    };
    let s = sluice(a.port(), tweak);
    let addr = s.addr();
    assert!(eventually(Duration::from_secs(5), || metrics(addr)
        ["health_checks_passed"]
        .as_u64()
        .unwrap_or(0)
        >= 1));
    a.set_hang(true); // the old target stops answering: the next check hangs
    std::thread::sleep(Duration::from_millis(500)); // a check of `a` is in flight
    let fixed = s.reload(config(b.port(), tweak));
    assert!(fixed.is_empty(), "{fixed:?}");
    let started = Instant::now();
    let mut refused = Vec::new();
    for _ in 0..60 {
        if started.elapsed() > Duration::from_millis(2500) {
            break;
        }
        let r = get(addr, "/after-reload");
        if r.status != 200 {
            refused.push((
                started.elapsed().as_millis(),
                r.status,
                r.header("x-sluice-error").map(str::to_string),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    a.set_hang(false);
    assert!(
        refused.is_empty(),
        "the healthy new target was refused: {refused:?}"
    );
}

/// How one keep-alive client's request ended during a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Answered (the loop goes on unless the answer said `Connection: close`).
    Answered { close: bool },
    /// Clean EOF before any byte of the answer: sluice closed the idle connection first.
    Eof,
    /// ECONNRESET before any byte of the answer: sluice closed the socket with the request
    /// unread in its receive queue (the kernel resets a socket closed with unread data).
    Reset,
}

fn one_request(c: &mut TcpStream, target: &str) -> Ending {
    if c.write_all(format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .is_err()
    {
        return Ending::Reset;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            if got.len() >= end + 4 + 2 {
                return Ending::Answered {
                    close: head.contains("connection: close"),
                };
            }
        }
        match c.read(&mut buf) {
            Ok(0) if got.is_empty() => return Ending::Eof,
            Ok(0) => return Ending::Answered { close: true },
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && got.is_empty() => {
                return Ending::Reset
            }
            Err(_) => return Ending::Answered { close: true },
        }
    }
}

/// README "Shutdown": idle kept-alive connections are closed "after reading anything their
/// clients already sent"; a connection "whose next request's head has begun to arrive, stays
/// open". A worker hands a connection back (`Back::give`) with `stirred` false when no event
/// was seen for it while the worker had it — including a request that arrived after the event
/// loop processed its batch (or while a worker kept the socket watched for hang-ups only); the
/// front end's `take_returns` then calls `close_if_idle` with no read (`front/mod.rs:345-348`),
/// and `Entry::idle` looks only at sluice's own buffer (`front/conns.rs:96-103`), not the
/// socket. Draining, that closes a connection whose next request is already in the socket: the
/// kernel answers the client with a reset (a close with unread data), the request gets no
/// answer and no log line. Keep-alive clients sending back-to-back requests, a drain mid-way,
/// repeated; any `Reset` is such a lost request.
#[test]
#[ignore = "defect: draining, a connection handed back by a worker is closed with its next request unread (reset, no answer)"]
fn a_request_already_sent_on_a_kept_alive_connection_is_served_during_a_drain() {
    let up = upstream();
    let mut resets = Vec::new();
    let mut endings = std::collections::HashMap::new();
    let started = Instant::now();
    for round in 0..12 {
        if started.elapsed() > Duration::from_secs(40) {
            break;
        }
        let mut s = sluice(up.port(), |c| c.max_concurrent_requests = 4);
        let addr = s.addr();
        let clients: Vec<_> = (0..16)
            .map(|k| {
                std::thread::spawn(move || {
                    let mut c = TcpStream::connect(addr).unwrap();
                    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut out = Vec::new();
                    let until = Instant::now() + Duration::from_secs(3);
                    for i in 0..100_000 {
                        if Instant::now() > until {
                            break;
                        }
                        let e = one_request(&mut c, &format!("/k?c={k}&i={i}"));
                        out.push(e);
                        if e != (Ending::Answered { close: false }) {
                            break;
                        }
                    }
                    out
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(150));
        s.drain();
        for c in clients {
            let out = c.join().unwrap();
            let last = *out.last().unwrap();
            *endings.entry(format!("{last:?}")).or_insert(0u32) += 1;
            if last == Ending::Reset {
                resets.push((round, out.len()));
            }
        }
        drop(s);
    }
    println!("last endings over all rounds: {endings:?}");
    assert!(
        resets.is_empty(),
        "requests reset unanswered during the drain (round, request number): {resets:?}; {endings:?}"
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
/// then `client_min_rate`). But while a worker streams that body the upstream waits for it, and
/// an upstream with its own body timeout (nginx `client_body_timeout`, gunicorn) gives up and
/// closes. sluice classifies the close as the upstream's `Reset` (`upstream/classify.rs`) — the
/// client's body did not fail, so `attempt.rs:207` does not see `ClientBody` — and its verdict
/// is a breaker failure (`policy/outcome.rs`, `AttemptFailure::verdict`). Two clients pausing
/// 1 s inside their uploads (well within sluice's 5 s grace) open a threshold-2 breaker, and a
/// healthy upstream is refused 503 `circuit_open` to everyone.
#[test]
#[ignore = "defect: a client pausing inside its streamed body (within sluice's allowance) makes the upstream give up, counted as a breaker failure"]
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
        println!(
            "slow upload got: {:?}",
            String::from_utf8_lossy(&r).lines().next()
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
