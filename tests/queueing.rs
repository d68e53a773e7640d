//! Concurrency control end to end: workers are the semaphore, a full queue answers 503 at once, a
//! request that waited past `queue_timeout` is answered 503 and never forwarded late, and the
//! admin endpoints answer throughout.

mod common;

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use sluice::Running;

fn background_get(addr: SocketAddr, path: &'static str) -> JoinHandle<Resp> {
    std::thread::spawn(move || get(addr, path))
}

/// One worker, a 300 ms `queue_timeout`, and the worker busy with a 1.5 s request.
fn one_worker_busy_for_1500_ms() -> (
    sluice_tools::upstream::TestUpstream,
    Running,
    JoinHandle<Resp>,
) {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.max_concurrent_requests = 1;
        c.queue_timeout = Duration::from_millis(300);
    });
    let busy = background_get(s.addr(), "/slow?delay_ms=1500");
    assert!(eventually(Duration::from_secs(3), || metrics(s.addr())
        ["active_requests"]
        == 1));
    (up, s, busy)
}

#[test]
fn full_queue_answers_503_queue_full_at_once() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.max_concurrent_requests = 2;
        c.max_queue_size = 2;
    });
    let busy: Vec<_> = (0..4)
        .map(|_| background_get(s.addr(), "/slow?delay_ms=1500"))
        .collect();
    assert!(eventually(Duration::from_secs(3), || {
        let m = metrics(s.addr());
        m["active_requests"] == 2 && m["queue_size"] == 2
    }));
    let t = Instant::now();
    let r = get(s.addr(), "/one-too-many");
    let took = t.elapsed();
    r.assert_sluice_error(503, "queue_full");
    assert!(
        took < Duration::from_millis(500),
        "queue_full took {took:?}"
    );
    let m = metrics(s.addr());
    assert_eq!(m["queue_rejected"], 1);
    assert_eq!(
        m["available_slots"].as_u64().unwrap() + m["active_requests"].as_u64().unwrap(),
        2
    );
    assert_eq!(
        get(s.addr(), "/proxy-health").status,
        200,
        "admin answers while the queue is full"
    );
    for h in busy {
        assert_eq!(
            h.join().unwrap().status,
            200,
            "queued requests are still served"
        );
    }
    assert!(up.received().iter().all(|r| r.target != "/one-too-many"));
}

#[test]
fn request_waiting_past_queue_timeout_gets_503_and_is_never_forwarded() {
    let (up, s, busy) = one_worker_busy_for_1500_ms();
    let t = Instant::now();
    let r = get(s.addr(), "/late");
    let took = t.elapsed();
    r.assert_sluice_error(503, "queue_timeout");
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_millis(1200),
        "{took:?}"
    );
    assert_eq!(busy.join().unwrap().status, 200);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        up.received().iter().all(|r| r.target != "/late"),
        "an expired request was forwarded late"
    );
    assert_eq!(metrics(s.addr())["queue_timeouts"], 1);
    assert_eq!(
        get(s.addr(), "/after").status,
        200,
        "the connection slot is reusable afterwards"
    );
}

#[test]
fn keep_alive_connection_survives_a_queue_rejection() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.max_concurrent_requests = 1;
        c.max_queue_size = 0;
    });
    let busy = background_get(s.addr(), "/slow?delay_ms=2000");
    assert!(eventually(Duration::from_secs(3), || metrics(s.addr())
        ["active_requests"]
        == 1));
    let mut c = Conn::open(s.addr());
    c.get("/rejected").assert_sluice_error(503, "queue_full");
    busy.join().unwrap();
    assert_eq!(
        c.get("/again").status,
        200,
        "a bodiless rejected request keeps its connection"
    );
}

#[test]
fn workers_bound_upstream_concurrency() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.max_concurrent_requests = 3;
        c.max_queue_size = 50;
    });
    let all: Vec<_> = (0..12)
        .map(|_| background_get(s.addr(), "/w?delay_ms=200"))
        .collect();
    let mut peak = 0;
    for _ in 0..40 {
        let m = metrics(s.addr());
        peak = peak.max(m["active_requests"].as_u64().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    for h in all {
        assert_eq!(h.join().unwrap().status, 200);
    }
    assert_eq!(peak, 3);
    assert_eq!(up.request_count(), 12);
}

#[test]
fn connections_over_the_cap_get_503_too_many_connections() {
    let up = upstream();
    let s = sluice(up.port(), |c| c.max_connections = 2);
    let mut first = Conn::open(s.addr());
    let mut second = Conn::open(s.addr());
    assert_eq!(first.get("/1").status, 200);
    assert_eq!(second.get("/2").status, 200);
    let mut third = Conn::open(s.addr());
    third
        .response(false)
        .expect("a 503 before close")
        .assert_sluice_error(503, "too_many_connections");
    assert!(third.closed_within(Duration::from_secs(2)));
    assert_eq!(
        first.get("/1-again").status,
        200,
        "held connections keep working"
    );
    drop(second);
    assert!(eventually(Duration::from_secs(3), || {
        let mut c = Conn::open(s.addr());
        c.get("/after").status == 200
    }));
    // Read in-process: an admin request would itself be a connection over the cap.
    assert!(s.metrics().outcome("too_many_connections") >= 1);
}

#[test]
fn an_upload_still_sending_when_its_queue_time_runs_out_reads_its_503() {
    let (up, s, busy) = one_worker_busy_for_1500_ms();
    // Like `requests.post(data=...)`: the whole body is written before the answer is read.
    let total = 32 << 20;
    let mut c = Conn::open(s.addr());
    // Until all is sent or sluice stops reading (the answer is out and the linger is over).
    let sent = c.upload(total, Duration::ZERO);
    // sluice answers, closes its side and reads what still comes (README "What can hold a
    // worker"): the whole upload goes out with no reset — a client OS that discards what it
    // received on a reset would lose the answer — and then the answer is read.
    let sent = sent.join().unwrap();
    assert_eq!(sent, total, "the upload was drained, not reset");
    let r = c.response(false).expect("the 503, not a reset");
    r.assert_sluice_error(503, "queue_timeout");
    assert_eq!(busy.join().unwrap().status, 200);
    assert!(up.received().iter().all(|r| r.target != "/upload"));
}
