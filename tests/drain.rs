//! The drain (README "Shutdown"), with sluice run as a process and sent SIGTERM by its PID: a
//! request in flight finishes byte for byte, and so does a response the front end still sends
//! to a slow reader; idle kept-alive connections are closed, but a request already sent on one
//! is served; a request that still arrives on an open connection is forwarded with
//! `Connection: close`; a request still running or queued when `shutdown_grace` ends gets 503
//! `shutdown`, its access-log line and the `shutdown` outcome — also one whose body is still
//! streaming; a second signal exits at once; `--check-config` warns about a grace shorter than
//! connect + read.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use sluice_tools::upstream::pattern_byte;

fn assert_pattern(body: &[u8], len: usize) {
    assert_eq!(body.len(), len);
    let wrong = body
        .iter()
        .enumerate()
        .position(|(i, b)| *b != pattern_byte(i as u64));
    assert_eq!(wrong, None, "first wrong byte");
}

#[test]
fn a_request_in_flight_at_sigterm_completes_byte_exact_and_sluice_exits_zero() {
    let up = upstream();
    let mut p = Proc::in_front_of(up.port(), &["--shutdown-grace", "5"]);
    let addr = p.addr;
    let started = Instant::now();
    let slow = std::thread::spawn(move || get(addr, "/long?delay_ms=2000&body_bytes=300000"));
    std::thread::sleep(Duration::from_millis(300));
    p.signal("TERM");
    let r = slow.join().unwrap();
    let answered = started.elapsed();
    assert_eq!(r.status, 200);
    assert!(r.complete);
    assert_pattern(&r.body, 300_000);
    assert_eq!(
        r.header("connection"),
        Some("close"),
        "draining: the answer closes"
    );
    assert_eq!(
        p.wait_exit(Duration::from_secs(5)),
        Some(0),
        "{}",
        p.stderr.lock()
    );
    let exited = started.elapsed();
    println!("drain: answered after {answered:?}, exited after {exited:?} (grace 5 s)");
    assert!(
        exited < Duration::from_secs(4),
        "exit waits for the request only"
    );
}

#[test]
fn during_drain_idle_connections_close_and_open_ones_are_still_served() {
    let up = upstream();
    let mut p = Proc::in_front_of(up.port(), &["--shutdown-grace", "10"]);
    let addr = p.addr;
    // Kept alive and idle at SIGTERM: closed.
    let mut idle = Conn::open(addr);
    assert_eq!(idle.get("/first").status, 200);
    // Kept alive, its next request's head half sent at SIGTERM: served.
    let mut begun = Conn::open(addr);
    assert_eq!(begun.get("/first").status, 200);
    // Connected, no request yet: left open for its first.
    let mut fresh = Conn::open(addr);
    // Holds the drain open while the others are tried.
    let slow = std::thread::spawn(move || get(addr, "/slow?delay_ms=2000"));
    std::thread::sleep(Duration::from_millis(200));
    begun.send(b"GET /on-an-open-connection HTTP/1.1\r\nHo");
    std::thread::sleep(Duration::from_millis(100));
    p.signal("TERM");
    assert!(
        idle.closed_within(Duration::from_secs(1)),
        "idle connection left open"
    );
    begun.send(b"st: t\r\n\r\n");
    let r = begun.response(false).expect("an answer, not a close");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "ok"),
        "forwarded, not refused"
    );
    assert_eq!(r.header("connection"), Some("close"));
    assert!(begun.closed_within(Duration::from_secs(1)));
    let r = fresh.get("/proxy-health");
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (503, Some("draining"))
    );
    assert_eq!(r.header("connection"), Some("close"));
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err(),
        "new connections are refused"
    );
    assert!(up
        .received()
        .iter()
        .any(|q| q.target == "/on-an-open-connection"));
    assert_eq!(slow.join().unwrap().status, 200);
    assert_eq!(p.wait_exit(Duration::from_secs(5)), Some(0));
}

#[test]
fn a_request_sent_on_behind_one_in_flight_does_not_cost_the_first_its_answer() {
    let up = upstream();
    let mut p = Proc::in_front_of(up.port(), &["--shutdown-grace", "5"]);
    let mut c = Conn::open(p.addr);
    c.send(b"GET /first?delay_ms=1000&body_bytes=200000 HTTP/1.1\r\nHost: t\r\n\r\n");
    c.send(b"GET /second HTTP/1.1\r\nHost: t\r\n\r\n");
    std::thread::sleep(Duration::from_millis(300));
    p.signal("TERM");
    let r = c.response(false).expect("the first answer, not a reset");
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    assert_pattern(&r.body, 200_000);
    assert!(
        c.response(false).is_none(),
        "the second is left for the client to retry"
    );
    assert_eq!(up.request_count(), 1);
    assert_eq!(p.wait_exit(Duration::from_secs(5)), Some(0));
}

#[test]
fn a_request_still_running_when_the_grace_ends_is_answered_and_logged_as_shutdown() {
    let up = upstream();
    let args = ["--shutdown-grace", "1", "--access-log"];
    let mut p = Proc::in_front_of_keeping_stdout(up.port(), &args);
    let addr = p.addr;
    let started = Instant::now();
    let slow = std::thread::spawn(move || get(addr, "/too-long?delay_ms=8000"));
    std::thread::sleep(Duration::from_millis(300));
    p.signal("TERM");
    let r = slow.join().unwrap();
    let took = started.elapsed();
    r.assert_sluice_error(503, "shutdown");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(
        took < Duration::from_secs(3),
        "answered when the grace ended: {took:?}"
    );
    assert_eq!(
        p.wait_exit(Duration::from_secs(3)),
        Some(0),
        "{}",
        p.stderr.lock()
    );
    assert_cut_as_shutdown(&mut p, "/too-long");
}

#[test]
fn the_end_of_the_grace_counts_each_cut_request_as_shutdown() {
    let up = upstream();
    let mut s = sluice(up.port(), |_| {});
    let addr = s.addr();
    let in_worker = std::thread::spawn(move || get(addr, "/in-a-worker?delay_ms=8000"));
    // Streaming when the grace ends: bytes went out already, so the connection just closes.
    let streaming = std::thread::spawn(move || {
        get(
            addr,
            "/streaming?body_bytes=1000000&chunked=1&stall_mid_body=1",
        )
    });
    assert!(eventually(Duration::from_secs(2), || up.request_count() >= 2));
    s.drain();
    assert!(!s.wait_idle(Duration::from_millis(300)));
    assert_eq!(
        s.end_grace(),
        0,
        "every cut request answered within CUT_WAIT"
    );
    in_worker
        .join()
        .unwrap()
        .assert_sluice_error(503, "shutdown");
    let r = streaming.join().unwrap();
    assert_eq!(r.status, 200);
    assert!(!r.complete, "a cut stream must not look complete");
    assert_eq!(s.metrics().outcome("shutdown"), 2);
    assert!(s.shutdown(Duration::ZERO));
}

#[test]
fn a_queued_request_is_answered_shutdown_when_the_grace_ends() {
    let up = upstream();
    let mut s = sluice(up.port(), |c| c.max_concurrent_requests = 1);
    let addr = s.addr();
    let busy = std::thread::spawn(move || get(addr, "/holds-the-worker?delay_ms=8000"));
    assert!(eventually(Duration::from_secs(2), || up.request_count() >= 1));
    let queued = std::thread::spawn(move || get(addr, "/queued"));
    assert!(eventually(Duration::from_secs(2), || metrics(addr)
        ["queue_size"]
        == 1));
    s.drain();
    assert!(!s.wait_idle(Duration::from_millis(300)));
    assert_eq!(s.end_grace(), 0);
    queued.join().unwrap().assert_sluice_error(503, "shutdown");
    busy.join().unwrap().assert_sluice_error(503, "shutdown");
    assert_eq!(
        up.request_count(),
        1,
        "the queued request never went upstream"
    );
    assert_eq!(s.metrics().outcome("shutdown"), 2);
    assert!(s.shutdown(Duration::ZERO));
}

#[test]
fn check_config_warns_when_the_grace_is_shorter_than_connect_plus_read() {
    let check = |extra: &[&str]| {
        let out = offline(sluice_bin())
            .args(["--target-host", "127.0.0.1", "--check-config"])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let short = check(&["--shutdown-grace", "30"]);
    assert!(
        short.contains("warning: shutdown_grace (30s) < connect_timeout + read_timeout (310s)"),
        "{short}"
    );
    let shipped = check(&[]);
    assert!(shipped.contains("(default)") && !shipped.contains("warning: shutdown_grace"));
    assert!(shipped.contains("320"), "{shipped}");
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

/// README "Shutdown": requests in flight "are answered normally", including a response the
/// front end still sends to a slow reader. A response of up to `client_buffer` bytes that a
/// client is slow to take is handed to the front end's non-blocking writer
/// (`ClientConn::leave_unsent`) with the worker done: the request stays in progress
/// (`Client::delivering`) until its bytes are out, so the drain waits for them. (Found by a
/// review: the process exited at once and the client got 8.6 MB of 12.)
#[test]
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
    assert_eq!(exit, Some(0), "{}", p.stderr.lock());
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
/// outcome `shutdown`": one "that has had no response byte yet is answered 503 `shutdown`" —
/// also one whose worker is still reading its body from a silent client (a body larger than
/// `client_buffer` is streamed): the end of the grace ends that read (`Cancel::shutdown`), not
/// only a wait for the upstream. (Found by a review: the worker stayed blocked in the client
/// read, and the client got only a close, with no log line and no `shutdown` count.)
#[test]
fn a_streaming_upload_at_the_end_of_the_grace_is_answered_503_shutdown() {
    let up = upstream();
    let args = [
        "--client-buffer",
        "0",
        "--shutdown-grace",
        "1",
        "--access-log",
    ];
    let mut p = Proc::in_front_of_keeping_stdout(up.port(), &args);
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
        text.starts_with("HTTP/1.1 503") && text.contains("X-Sluice-Error: shutdown\r\n"),
        "the client got {text:?} (exit {exit:?}); stderr: {}",
        p.stderr.lock()
    );
    assert_eq!(exit, Some(0));
    assert_cut_as_shutdown(&mut p, "/up");
}

/// True if SIGTERM is pending for the whole process `pid`: sent, not yet taken by any thread.
fn sigterm_pending(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("ShdPnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGTERM - 1)) != 0)
}

/// README "Shutdown": "a second signal exits at once (status 1)", however soon after the
/// first it comes: the handler that counts them is registered once, before serving, not when
/// the drain starts. Each trial sends the second signal 0.2–2 ms after the first (by PID)
/// while a request holds the drain open for 4 s. A trial whose first signal no thread of
/// sluice had taken yet when the second was sent proves nothing when it fails: the kernel keeps
/// one pending SIGTERM, and drops a second (a loaded machine may be that slow to schedule
/// sluice). (Found by a review: a second signal that came while the drain started was lost,
/// 4 trials of 8.)
#[test]
fn a_second_sigterm_soon_after_the_first_exits_at_once() {
    let up = upstream();
    let (mut lost, mut conclusive, mut kernel) = (Vec::new(), 0, 0);
    let gaps = [200u64, 500, 1000, 2000];
    for gap_us in gaps.iter().cycle().take(16) {
        if conclusive >= 8 {
            break;
        }
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
        let pid = p.pid();
        // SAFETY: kill(2) on the PID of the child this test started.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        std::thread::sleep(Duration::from_micros(*gap_us));
        let first_pending = sigterm_pending(pid);
        // SAFETY: as above.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let code = p.wait_exit(Duration::from_millis(1500));
        if code == Some(1) || !first_pending {
            conclusive += 1;
            if code != Some(1) {
                lost.push((gap_us, code));
            }
        } else {
            kernel += 1;
        }
        drop(p);
        let _ = slow.join();
        up.clear();
    }
    println!("{conclusive} trials, {kernel} with the first signal still pending");
    assert!(
        lost.is_empty(),
        "second signal not acted on (gap µs, exit): {lost:?}"
    );
    assert!(conclusive >= 4, "too few trials the kernel let through");
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
/// clients already sent". A worker hands a connection back (`Back::give`) with `stirred` false
/// when no event was seen for it while the worker had it — including a request that arrived
/// after the event loop processed its batch (or while a worker kept the socket watched for
/// hang-ups only). Draining, the front end reads such a connection's socket before closing it
/// (`Front::close_if_idle`): a request already there is served, and one sent while sluice
/// closes meets a clean close, never the reset a close with unread data makes. Keep-alive
/// clients sending back-to-back requests, a drain mid-way, repeated; any `Reset` is a lost
/// request. (Found by a review: such connections were closed unread.)
#[test]
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

/// The one request cut at the grace's end has its access-log line (503 `shutdown`) and is
/// counted in the log's summary.
fn assert_cut_as_shutdown(p: &mut Proc, target: &str) {
    let log = p.stdout_after_kill();
    let line = log
        .lines()
        .find(|l| l.contains(target))
        .unwrap_or_else(|| panic!("no access-log line: {log}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(
        (v["status"].as_u64(), v["reason"].as_str()),
        (Some(503), Some("shutdown"))
    );
    assert!(p
        .stderr
        .lock()
        .contains("1 request(s) cut with outcome shutdown"));
}
