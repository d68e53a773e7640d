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
    (String::from_utf8_lossy(&all[..end]).into_owned(), all.len() - end)
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
