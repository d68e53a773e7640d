//! Review 6: attacks on the changes since 15c6371 (the `Sendable` head, the lingering refused
//! upload, the fair dispatch index, the `dist` profile). A test marked `#[ignore = "defect: …"]`
//! fails on the code it was written against: it proves that defect.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// One worker, no queue, its worker held by a slow request: every upload now is refused at
/// once (503 `queue_full`) while its body is still coming.
fn one_worker_held(
    up: &sluice_tools::upstream::TestUpstream,
    hold_ms: u64,
) -> (sluice::Running, std::thread::JoinHandle<Resp>) {
    let s = sluice(up.port(), |c| {
        c.max_concurrent_requests = 1;
        c.max_queue_size = 0;
    });
    let addr = s.addr();
    let busy = std::thread::spawn(move || get(addr, &format!("/busy?delay_ms={hold_ms}")));
    assert!(eventually(Duration::from_secs(3), || up.request_count() == 1));
    (s, busy)
}

/// Regression (no defect found): a client that sends an endless upload as fast as it can after
/// its 503 `queue_full`. sluice's linger (`Front::linger`) reads in a loop until the socket is
/// empty, and only `tick` ends the 2 s; if the reader never caught up, the front end's loop
/// would be held and the 2 s never enforced. README ("What can hold a worker"): "2 s of that
/// reading, then close" — and everyone else is answered meanwhile.
#[test]
fn a_refused_upload_sent_fast_lingers_no_more_than_2_s() {
    let up = upstream();
    let (s, busy) = one_worker_held(&up, 9000);
    let addr = s.addr();
    let mut flood = TcpStream::connect(addr).unwrap();
    flood
        .write_all(b"POST /flood HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000000000\r\n\r\n")
        .unwrap();
    flood
        .set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let sender = std::thread::spawn(move || {
        let chunk = vec![b'f'; 1 << 20];
        let start = Instant::now();
        // Bounded: at most 7 s of sending.
        while start.elapsed() < Duration::from_secs(7) {
            if flood.write_all(&chunk).is_err() {
                break;
            }
        }
        start.elapsed()
    });
    std::thread::sleep(Duration::from_millis(300));
    // Anyone else, meanwhile: an admin answer, from the front end alone.
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let t = Instant::now();
        let c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut c = Conn {
            r: std::io::BufReader::new(c),
        };
        c.send(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let ok = c.response(false).is_some();
        slowest = slowest.max(if ok {
            t.elapsed()
        } else {
            Duration::from_secs(99)
        });
        std::thread::sleep(Duration::from_millis(200));
    }
    let sending = sender.join().unwrap();
    assert_eq!(busy.join().unwrap().status, 200);
    assert!(
        sending < Duration::from_secs(4),
        "the refused upload was still being read after {sending:?} (README: 2 s, then close)"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "an admin request took {slowest:?} while a refused upload lingered"
    );
}

/// A pod rolled while a refused upload lingers. The upload (like `requests.post(data=...)`)
/// writes its whole body before reading; sluice answered 503 `queue_full` at once and reads and
/// drops the rest for up to 2 s (README "What can hold a worker": "the client gets its answer,
/// not a reset"). SIGTERM comes meanwhile. Proven a defect in review: the drain waited only for
/// requests in progress, so sluice exited as soon as its worker's request ended and closed the
/// socket with the client's bytes unread — a reset, the client's write failed part-way
/// (`requests` raises `ConnectionError`), its 503 lost. Now a lingering connection holds the
/// drain, at most its 2 s.
#[test]
fn a_refused_upload_lingering_through_a_drain_still_gets_its_503() {
    let up = upstream();
    let (s, busy) = one_worker_held(&up, 300);
    let addr = s.addr();
    let total: usize = 4 << 20; // 4 MiB at ~6 MiB/s: about 0.7 s of sending, inside the 2 s
    let mut c = Conn::open(addr);
    let sender = c.upload(total, Duration::from_millis(10));
    // The 503 is out at once (the queue is full); now the pod is rolled.
    std::thread::sleep(Duration::from_millis(100));
    let stopper = std::thread::spawn(move || s.shutdown(Duration::from_secs(10)));
    let sent = sender.join().unwrap();
    assert!(stopper.join().unwrap(), "nothing had to be cut");
    assert_eq!(busy.join().unwrap().status, 200);
    let r = c.response(false);
    assert_eq!(
        sent,
        total,
        "the upload was reset part-way ({sent} of {total} bytes; status read after: {:?})",
        r.as_ref().map(|r| r.status)
    );
    r.expect("the 503, not a reset")
        .assert_sluice_error(503, "queue_full");
}

/// Regression: the front end's order of answers is unchanged by the `Sendable` check moving
/// ahead of them — `OPTIONS *` and a WebSocket upgrade are answered as they were even with a
/// head ureq cannot send, and an unencodable head is the client's 400 before the client limit
/// (429) is looked at. Nothing of them reaches the upstream.
#[test]
fn an_unencodable_head_keeps_its_place_among_the_front_ends_answers() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.client_key = sluice::config::ClientKey::Ip;
        c.max_client_requests = 1;
    });
    let addr = s.addr();
    let held = std::thread::spawn(move || get(addr, "/held?delay_ms=1500"));
    assert!(eventually(Duration::from_secs(3), || up.request_count() == 1));
    let bad = "Authorization: B\u{e9}arer x\r\n";
    let cases: [(String, u16, Option<&str>); 4] = [
        (format!("OPTIONS * HTTP/1.1\r\nHost: a\r\n{bad}\r\n"), 200, None),
        (
            format!(
                "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n{bad}\r\n"
            ),
            501,
            Some("upgrade_unsupported"),
        ),
        (format!("GET /bad HTTP/1.1\r\nHost: a\r\n{bad}\r\n"), 400, None),
        (
            "GET /limited HTTP/1.1\r\nHost: a\r\n\r\n".to_string(),
            429,
            Some("client_limit"),
        ),
    ];
    for (raw, status, reason) in cases {
        let mut c = Conn::open(addr);
        let r = c.request(raw.as_bytes(), false);
        assert_eq!(r.status, status, "{raw:?}: {r:?}");
        if let Some(reason) = reason {
            r.assert_sluice_error(status, reason);
        }
        if status == 200 {
            assert!(r.header("allow").is_some(), "{r:?}");
        }
    }
    assert_eq!(held.join().unwrap().status, 200);
    let targets: Vec<String> = up.received().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/held?delay_ms=1500"]);
}

/// Regression: on a kept connection, requests pipelined in one write behind an unencodable
/// one. The worker (or the front end) reads the bad head, gives it back (`unread_head`), the
/// front end answers it once (400) and closes: the request before it is served once, the one
/// after it never reaches the upstream, and no response is written twice.
#[test]
fn requests_pipelined_after_an_unencodable_one_are_answered_once_and_not_forwarded() {
    let up = upstream();
    let s = sluice(up.port(), |c| c.max_retries = 0);
    for round in 0..5 {
        let mut c = Conn::open(s.addr());
        assert_eq!(c.get(&format!("/warm{round}")).status, 200);
        let mut raw = format!("GET /k{round} HTTP/1.1\r\nHost: a\r\n\r\n").into_bytes();
        raw.extend_from_slice(b"GET /bad HTTP/1.1\r\nHost: a\r\nAuthorization: B\xe9arer\r\n\r\n");
        raw.extend_from_slice(format!("GET /after{round} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
        c.send(&raw);
        let first = c.response(false).expect("the first pipelined answer");
        assert_eq!((first.status, first.text().as_str()), (200, "ok"));
        let bad = c.response(false).expect("the 400");
        assert_eq!(bad.status, 400, "{bad:?}");
        assert!(bad.header("x-sluice-error").is_some(), "{bad:?}");
        assert!(
            c.response(false).is_none(),
            "nothing more: closed after the 400"
        );
    }
    let targets: Vec<String> = up.received().into_iter().map(|r| r.target).collect();
    assert_eq!(targets.len(), 10, "{targets:?}");
    assert!(
        targets
            .iter()
            .all(|t| t.starts_with("/warm") || t.starts_with("/k")),
        "{targets:?}"
    );
}

/// Regression: the fair index under `header:NAME`, end to end — eviction on a full queue takes
/// the newest of the group holding the most, `/proxy-metrics` `active_groups`/`top_groups`
/// match, and once everything has ended every group is forgotten (no growth with many keys).
#[test]
fn header_groups_are_evicted_fairly_reported_and_forgotten() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.client_key = sluice::config::ClientKey::Header("X-Tenant".into());
        c.max_concurrent_requests = 1;
        c.max_queue_size = 4;
    });
    let addr = s.addr();
    let req = |tenant: &str, path: &str| {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: a\r\nX-Tenant: {tenant}\r\n\r\n");
        std::thread::spawn(move || send(addr, raw.as_bytes()))
    };
    let held = req("big", "/held?delay_ms=1500");
    assert!(eventually(Duration::from_secs(3), || up.request_count() == 1));
    let mut big = Vec::new();
    for i in 0..4 {
        big.push(req("big", &format!("/big{i}")));
        assert!(eventually(Duration::from_secs(3), || {
            metrics(addr)["queue_size"] == i + 1
        }));
    }
    let mut small = Vec::new();
    for i in 0..3 {
        small.push(req(&format!("t{i}"), &format!("/t{i}")));
        assert!(eventually(Duration::from_secs(3), || {
            s.metrics().outcome("queue_full") == i + 1
        }));
    }
    let m = metrics(addr);
    assert_eq!(m["active_groups"], 4, "{m}");
    let top = &m["top_groups"][0];
    assert_eq!(
        (
            top["group"].as_str(),
            top["in_flight"].as_u64(),
            top["queued"].as_u64()
        ),
        (Some("big"), Some(1), Some(1)),
        "{m}"
    );
    assert_eq!(held.join().unwrap().status, 200);
    let big: Vec<u16> = big.into_iter().map(|h| h.join().unwrap().status).collect();
    assert_eq!(
        big,
        [200, 503, 503, 503],
        "the newest of the largest group gave way"
    );
    for h in small {
        assert_eq!(h.join().unwrap().status, 200);
    }
    // Many one-off keys, each served and ended: none is remembered.
    for i in 0..50 {
        let r = req(&format!("once-{i}"), "/once").join().unwrap();
        assert_eq!(r.status, 200);
    }
    assert!(eventually(Duration::from_secs(3), || {
        let m = metrics(addr);
        m["active_groups"] == 0 && m["top_groups"].as_array().is_some_and(Vec::is_empty)
    }));
}
