//! The drain (README "Shutdown"), with sluice run as a process and sent SIGTERM by its PID: a
//! request in flight finishes byte for byte; idle kept-alive connections are closed; a request
//! that still arrives on an open connection is forwarded with `Connection: close`; a request
//! still running or queued when `shutdown_grace` ends gets 503 `shutdown`, its access-log line
//! and the `shutdown` outcome; `--check-config` warns about a grace shorter than connect + read.

mod common;

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
    let log = p.stdout_after_kill();
    let line = log
        .lines()
        .find(|l| l.contains("/too-long"))
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
