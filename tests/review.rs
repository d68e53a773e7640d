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

/// README "Settings": `pool_maxsize` is the number of "idle upstream connections kept for reuse",
/// and 0 is accepted (`config/table.rs:183`, range 0-100000). But the agent builds sluice's idle
/// set with `cfg.pool_maxsize.max(1)` (`upstream/agent.rs:32`, `:59`): with `pool_maxsize 0`
/// one idle connection is still kept and reused (the `IdleSet`'s own test says "pool_maxsize 0
/// keeps nothing", `upstream/pool.rs:570-572`).
#[test]
#[ignore = "defect: pool_maxsize 0 still keeps (and reuses) one idle upstream connection"]
fn pool_maxsize_zero_keeps_no_idle_upstream_connection() {
    let up = upstream();
    let s = sluice(up.port(), |c| c.pool_maxsize = 0);
    for i in 0..3 {
        let r = get(s.addr(), &format!("/p{i}"));
        assert_eq!(r.status, 200);
    }
    let ports: Vec<u16> = up.received().iter().map(|r| r.peer_port).collect();
    assert_eq!(ports.len(), 3);
    assert_eq!(
        up.connection_count(),
        3,
        "each request on a new connection (peer ports {ports:?})"
    );
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

/// README "Settings": `read_timeout` is the wait "for the response head (over all of a
/// request's attempts and back-offs: "One deadline per request")", and "What can hold a worker":
/// a slow upstream holds one "`read_timeout` in all over its attempts and back-offs, plus each
/// attempt's connect". But a retried 502–504 is first read whole (`upstream/attempt.rs:253`,
/// `read_whole`, `:300-307`) with no deadline at all — only ureq's per-read silence
/// (`timeout_per_read` = `read_timeout`, `agent.rs:47`), after `retry_delay` already decided that
/// the retry fits (`attempt.rs:241`, `policy/deadline.rs:49`). An upstream that trickles its 503
/// body (one byte within each `read_timeout`) holds the worker, and keeps the client waiting
/// for its response head, for up to 64 KiB × `read_timeout`. Here: `read_timeout` 1 s, a
/// 12-byte body at one byte per 250 ms: the client waits ~3 s.
#[test]
#[ignore = "defect: a retried 5xx is read whole with no deadline; a trickled body holds the worker past read_timeout"]
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
        took < Duration::from_millis(2000),
        "the client waited {took:?} for its answer ({}), read_timeout 1 s",
        r.status
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

/// README "What can hold a worker": a client that reads a response of at most `client_buffer`
/// bytes slowly does not hold a worker ("no: the front end sends the rest"), and "a client that
/// pipelines requests and never reads the answers holds up no one" (README "Hardening"). That
/// holds for the front end's answers and for relayed responses (`relay.rs` `Delivery`), but
/// sluice's own answers written by a worker — a 502 when the upstream refuses, 504, 503
/// `circuit_open` at the worker… (`answer::send` → `answer::write` → `ClientConn::write_all`,
/// `answer.rs:126-127`, `http/conn.rs:134-136`) — are plain blocking writes under the
/// socket's `client_idle_timeout` write timeout, neither handed to the front end nor paced.
/// A client that pipelines requests the upstream fails and never reads fills its socket; the
/// next ~400-byte 502s then hold a worker for at least `client_idle_timeout` (3 s here, 60 s by
/// default; measured 9 s here, as the kernel takes a few bytes now and then) with no answer
/// moving. With a few such clients every worker is held.
#[test]
#[ignore = "defect: a worker's own small answer is a blocking write; a client that never reads holds the worker client_idle_timeout"]
fn a_client_that_never_reads_holds_no_worker_over_sluices_own_small_answers() {
    let dead = dead_port();
    let s = sluice(dead.port(), |c| {
        c.client_idle_timeout = Duration::from_secs(3);
        c.max_retries = 0;
        c.circuit_breaker_threshold = u32::MAX;
        c.max_concurrent_requests = 2;
    });
    let addr = s.addr();
    let mut hog = slow_reader(addr);
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
    // Wait until the answers stall: the request count stops moving while a worker is busy.
    let count = || metrics(addr)["total_requests"].as_u64().unwrap_or(0);
    let until = Instant::now() + Duration::from_secs(15);
    let mut last = count();
    let stalled = loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = count();
        if now == last && active(addr) == 1 {
            break Some(Instant::now() - Duration::from_millis(200));
        }
        if Instant::now() > until {
            break None;
        }
        last = now;
    };
    let stalled = stalled.expect("the answers stalled");
    // How long the worker stays busy with no answer moving.
    let freed = eventually(Duration::from_secs(10), || active(addr) == 0);
    let held = stalled.elapsed();
    let at = count();
    let hog = writer.join().unwrap();
    drop(hog);
    println!("a worker held {held:?} after {last} requests (then {at}); freed {freed}");
    assert!(
        held < Duration::from_millis(1000),
        "a worker was held {held:?} writing a ~400-byte 502 to a client that never reads"
    );
}
