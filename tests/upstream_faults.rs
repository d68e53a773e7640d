//! A broken upstream: refused, silent, reset, truncating, speaking garbage. The client gets the
//! right §4 status with a JSON body and `X-Sluice-Error`, or a visibly truncated response; never
//! a hang, and sluice keeps serving.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn refused_upstream_is_502_connect_failed_quickly() {
    let dead = dead_port();
    let s = sluice(dead.port(), |c| c.circuit_breaker_threshold = 100);
    let t = Instant::now();
    get(s.addr(), "/").assert_sluice_error(502, "connect_failed");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}

#[test]
fn silent_upstream_is_504_after_the_read_timeout() {
    let up = upstream();
    let s = sluice(up.port(), |c| c.read_timeout = Duration::from_millis(600));
    let t = Instant::now();
    get(s.addr(), "/?hang=1").assert_sluice_error(504, "upstream_timeout");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(up.request_count(), 1, "a read timeout is not retried");
    assert_eq!(metrics(s.addr())["timeout_requests"], 1);
}

#[test]
fn stalled_body_is_cut_after_the_read_timeout() {
    let up = upstream();
    let s = sluice(up.port(), |c| c.read_timeout = Duration::from_millis(500));
    let mut c = Conn::open(s.addr());
    let t = Instant::now();
    let r = c.get("/?stall_mid_body=1&body_bytes=100000");
    let took = t.elapsed();
    assert_eq!(r.status, 200);
    assert!(!r.complete, "a stalled body must end truncated");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[test]
fn connect_timeout_is_504_connect_timeout() {
    // A listener whose backlog is full and never accepts: SYNs go unanswered.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let _fill: Vec<_> = (0..4)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
        })
        .collect();
    let s = sluice(addr.port(), |c| {
        c.connect_timeout = Duration::from_millis(400);
        c.max_retries = 0;
    });
    let t = Instant::now();
    get(s.addr(), "/").assert_sluice_error(504, "connect_timeout");
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[test]
fn reset_mid_body_truncates_the_client_response() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    for q in ["chunked=1", "chunked=0"] {
        let mut c = Conn::open(s.addr());
        let r = c.get(&format!("/?reset_mid_body=1&body_bytes=200000&{q}"));
        assert_eq!(r.status, 200, "the head went out before the failure");
        assert!(
            !r.complete,
            "a mid-body failure must not look complete ({q})"
        );
        assert!(r.body.len() < 200_000);
        assert!(c.closed_within(Duration::from_secs(2)));
    }
    assert!(eventually(Duration::from_secs(2), || metrics(s.addr())
        ["outcomes"]["upstream_truncated"]
        == 2));
    assert_eq!(get(s.addr(), "/after").status, 200);
}

#[test]
fn close_mid_body_truncates_the_client_response() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    let r = get(s.addr(), "/?close_mid_body=1&body_bytes=300000");
    assert_eq!(r.status, 200);
    assert!(!r.complete);
}

#[test]
fn reset_or_close_before_the_response_is_502_upstream_error() {
    let up = upstream();
    let s = sluice(up.port(), |c| c.max_retries = 0);
    get(s.addr(), "/?reset=1").assert_sluice_error(502, "upstream_error");
    get(s.addr(), "/?close=1").assert_sluice_error(502, "upstream_error");
}

#[test]
fn garbage_and_oversized_response_heads_are_502() {
    let up = upstream();
    let s = sluice(up.port(), |c| c.max_retries = 0);
    get(s.addr(), "/?garbage=1").assert_sluice_error(502, "upstream_error");
    get(s.addr(), "/?big_header=100000").assert_sluice_error(502, "upstream_error");
    assert_eq!(get(s.addr(), "/?big_header=12000").status, 200);
    assert_eq!(get(s.addr(), "/fine").status, 200);
}

/// The test upstream's head around `X-Big` (`tools/src/upstream.rs`): status line, the `X-Big`
/// line's name and CRLF, `Content-Length: 2`, `Content-Type` and the blank line.
const HEAD_AROUND_BIG: usize = "HTTP/1.1 200 OK\r\n".len()
    + "X-Big: \r\n".len()
    + "Content-Length: 2\r\n".len()
    + "Content-Type: application/octet-stream\r\n\r\n".len();

#[test]
fn response_heads_up_to_64_kib_pass_and_a_longer_one_never_opens_the_breaker() {
    let up = upstream();
    let s = sluice(up.port(), |c| c.circuit_breaker_threshold = 2);
    // A 17 KB header (a big Set-Cookie or CSP), ~60 KB, and a head of exactly 64 KiB.
    for n in [17_000, 60_000, 65_536 - HEAD_AROUND_BIG] {
        let r = get(s.addr(), &format!("/?big_header={n}"));
        assert_eq!(r.status, 200, "{n}: {:?}", r.header("x-sluice-error"));
        assert_eq!(r.header("x-big"), Some("b".repeat(n).as_str()), "{n}");
        assert_eq!(r.text(), "ok");
    }
    // One byte over, and far over: a 502 saying why, as often as you like, breaker closed.
    for n in [
        65_537 - HEAD_AROUND_BIG,
        70_000,
        200_000,
        65_537 - HEAD_AROUND_BIG,
        70_000,
    ] {
        let r = get(s.addr(), &format!("/?big_header={n}"));
        r.assert_sluice_error(502, "upstream_error");
        let message = r.json()["message"].as_str().unwrap_or_default().to_string();
        assert!(message.contains("response head over 64 KiB"), "{message}");
    }
    // More header fields than ureq parses (128): the same.
    let many: Vec<String> = (0..130).map(|i| format!("header=X-F{i}:v")).collect();
    for _ in 0..3 {
        let r = get(s.addr(), &format!("/?{}", many.join("&")));
        r.assert_sluice_error(502, "upstream_error");
        assert!(r.text().contains("over 128 header fields"), "{}", r.text());
    }
    // The worker records a request just after its answer is written: wait until it is idle.
    assert!(eventually(Duration::from_secs(2), || active(s.addr()) == 0));
    let m = metrics(s.addr());
    assert_eq!(m["circuit_state"], "closed", "{m}");
    assert_eq!(m["consecutive_failures"], 0, "{m}");
    assert_eq!(m["circuit_times_opened"], 0, "{m}");
    assert_eq!(m["outcomes"]["upstream_error"], 8, "{m}");
    // 100 header fields (the Python service's limit) pass.
    let hundred: Vec<String> = (0..100).map(|i| format!("header=X-F{i}:v{i}")).collect();
    let r = get(s.addr(), &format!("/?{}", hundred.join("&")));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-f99"), Some("v99"));
    assert_eq!(up.request_count(), 3 + 5 + 3 + 1, "none of them retried");
}

#[test]
fn close_delimited_upstream_body_is_reframed() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    let mut c = Conn::open(s.addr());
    let r = c.get("/?no_length=1&body_bytes=5000");
    assert_eq!(r.body.len(), 5000);
    assert!(
        r.chunked && r.complete,
        "an HTTP/1.1 client gets it chunked"
    );
    assert_eq!(
        c.get("/next").status,
        200,
        "the client connection stays usable"
    );
}

/// An upstream failure says where and why, in the answer's message: `host:port: cause`.
#[test]
fn an_upstream_failure_names_the_upstream_and_the_cause() {
    let dead = dead_port();
    let s = sluice(dead.port(), |c| c.max_retries = 0);
    let r = get(s.addr(), "/x");
    r.assert_sluice_error(502, "connect_failed");
    let message = r.json()["message"].as_str().unwrap().to_string();
    assert!(
        message.contains(&format!("127.0.0.1:{}: connection refused", dead.port())),
        "{message}"
    );
}
