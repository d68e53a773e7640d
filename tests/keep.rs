//! A worker keeps a busy connection (docs/ARCHITECTURE.md "A worker keeps a busy connection"):
//! a connection that sends its next request at once is served by the same worker, which reads
//! that head itself. Whatever the next request is, the client gets the same answer and the
//! upstream the same request as through the front end; a hang-up still cancels; a quiet
//! connection goes back to the front end.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Requests back to back on one connection, the later ones read by the worker that served the
/// one before: plain GETs, an admin path, a POST whose body comes later, `Expect:
/// 100-continue`, a request sluice answers itself, and a malformed head — each answered as the
/// front end answers it, and the upstream receives exactly the forwarded ones, in order.
#[test]
fn whatever_a_busy_connection_sends_next_is_answered_as_usual() {
    let up = upstream();
    let s = sluice(up.port(), |c| c.max_concurrent_requests = 4);
    let mut c = Conn::open(s.addr());
    for i in 0..6 {
        let r = c.get(&format!("/a{i}"));
        assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    }
    let r = c.get("/proxy-health");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "healthy", "{}", r.text());
    assert_eq!(c.get("/b").status, 200);
    // A body that is not here yet when its head is: the front end reads it first.
    c.send(b"POST /late-body HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n");
    std::thread::sleep(Duration::from_millis(30));
    let r = c.request(b"hello", false);
    assert_eq!(r.status, 200);
    assert_eq!(c.get("/c").status, 200);
    // The client waits for 100 Continue before its body.
    c.send(
        b"POST /continue HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n",
    );
    let mut interim = [0u8; 25];
    std::io::Read::read_exact(c.r.get_mut(), &mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    let r = c.request(b"abc", false);
    assert_eq!(r.status, 200);
    assert_eq!(c.get("/d").status, 200);
    // A body that is here with its head: served like a GET.
    let r = c.request(
        b"PUT /with-body HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nwxyz",
        false,
    );
    assert_eq!(r.status, 200);
    let r = c.request(b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n", false);
    assert_eq!(r.status, 200);
    assert!(r.header("allow").is_some());
    assert_eq!(c.get("/e").status, 200);
    let r = c.request(b"GET /x HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n", false);
    assert_eq!(r.status, 400);
    r.assert_sluice_error(400, "bad_request");

    let seen: Vec<(String, String, Vec<u8>)> = up
        .received()
        .into_iter()
        .map(|r| (r.method, r.target, r.body_prefix))
        .collect();
    let want: Vec<(String, String, Vec<u8>)> = (0..6)
        .map(|i| ("GET", format!("/a{i}"), &b""[..]))
        .chain([
            ("GET", "/b".into(), &b""[..]),
            ("POST", "/late-body".into(), &b"hello"[..]),
            ("GET", "/c".into(), &b""[..]),
            ("POST", "/continue".into(), &b"abc"[..]),
            ("GET", "/d".into(), &b""[..]),
            ("PUT", "/with-body".into(), &b"wxyz"[..]),
            ("GET", "/e".into(), &b""[..]),
        ])
        .map(|(m, t, b)| (m.to_string(), t, b.to_vec()))
        .collect();
    assert_eq!(seen, want);
    assert_eq!(
        up.connection_count(),
        1,
        "one upstream connection all along"
    );
    assert!(eventually(Duration::from_secs(2), || active(s.addr()) == 0));
}

/// A hang-up while a kept connection's request waits on a slow upstream cancels the exchange,
/// as on any connection: the front end still watches the socket for hang-ups while the worker
/// reads it.
#[test]
fn a_hang_up_during_a_kept_connections_request_cancels_it() {
    let up = upstream();
    let s = sluice(up.port(), |c| c.max_concurrent_requests = 2);
    let mut c = Conn::open(s.addr());
    for i in 0..4 {
        assert_eq!(c.get(&format!("/warm{i}")).status, 200);
    }
    c.send(b"GET /slow?hang=1 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(eventually(Duration::from_secs(5), || up.request_count()
        == 5
        && active(s.addr()) == 1));
    let gone = Instant::now();
    drop(c);
    assert!(
        eventually(Duration::from_secs(2), || up.hangs_closed() == 1),
        "the upstream saw its connection closed"
    );
    assert!(eventually(Duration::from_secs(2), || active(s.addr()) == 0));
    eprintln!("hang-up -> worker free {:?}", gone.elapsed());
    let m = metrics(s.addr());
    assert_eq!(m["client_aborted_requests"], 1, "{m}");
    assert_eq!(m["failed_requests"], 0, "{m}");
    assert_eq!(m["circuit_state"], "closed", "{m}");
}

/// A busy connection that goes quiet is handed back to the front end within a few
/// milliseconds: its next request, much later, is served; its hang-up then closes it; and a
/// worker kept nobody else waiting meanwhile.
#[test]
fn a_connection_that_goes_quiet_goes_back_to_the_front_end() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.max_concurrent_requests = 2;
        c.client_idle_timeout = Duration::from_secs(5);
    });
    let mut quiet = Conn::open(s.addr());
    for i in 0..4 {
        assert_eq!(quiet.get(&format!("/busy{i}")).status, 200);
    }
    std::thread::sleep(Duration::from_millis(100));
    // Both workers are free again: two slow requests run side by side.
    let t = Instant::now();
    let others: Vec<_> = (0..2)
        .map(|_| {
            let addr = s.addr();
            std::thread::spawn(move || get(addr, "/slow?delay_ms=300").status)
        })
        .collect();
    for o in others {
        assert_eq!(o.join().unwrap(), 200);
    }
    assert!(
        t.elapsed() < Duration::from_millis(550),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(quiet.get("/later").status, 200);
    assert_eq!(metrics(s.addr())["client_connections"], 2);
    drop(quiet);
    assert!(eventually(Duration::from_secs(2), || metrics(s.addr())
        ["client_connections"]
        == 1));
}
