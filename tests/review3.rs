//! The third review (of the per-worker idle slots in the upstream pool and the head-sized output
//! buffer): each test showed a defect, now fixed — a worker gives its kept idle connection to
//! the shared set before any call that may block (`pool/marks.rs`). Real sluice, the real test
//! upstream on 127.0.0.1; what the upstream received (which connection carried what).

mod common;

use std::time::Duration;

use common::*;

/// The upstream connection (its client port) that carried the request whose target starts with
/// `prefix`.
fn port_of(up: &sluice_tools::upstream::TestUpstream, prefix: &str) -> u16 {
    up.received()
        .iter()
        .find(|r| r.target.starts_with(prefix))
        .map(|r| r.peer_port)
        .unwrap_or_else(|| panic!("the upstream never saw {prefix}"))
}

/// `pool_maxsize` 1, two workers, `client_buffer` 1 KiB. Worker one ends `/a` and goes straight on (no sleep: a PUT
/// waits in the queue) to read that PUT's slowly arriving body: `/a`'s idle connection stays in
/// its slot, counted, usable by no one. Worker two's connections, put back while that slot is
/// full, are each closed at once (the shared part closes its oldest past the maximum: the one
/// just put), so `/c` and `/d` each connect anew. Before the slots, `/a`'s connection was the
/// oldest and went; `/b`'s was kept and carried `/c` and `/d` (README "Upstream pool": the
/// most recently used first, the oldest closed past `pool_maxsize`).
#[test]
fn a_worker_reading_a_slow_body_does_not_stop_pooling_for_the_others() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.pool_maxsize = 1;
        c.max_concurrent_requests = 2;
        c.client_buffer = 1024; // a PUT body over 1 KiB is read by its worker
    });
    let addr = s.addr();
    let a = std::thread::spawn(move || get(addr, "/a?delay_ms=300"));
    let b = std::thread::spawn(move || get(addr, "/b?delay_ms=1200"));
    std::thread::sleep(Duration::from_millis(100));
    // Both workers busy: the PUT waits in the queue, its body half here.
    let mut put = Conn::open(addr);
    put.send(b"PUT /put HTTP/1.1\r\nHost: test\r\nContent-Length: 2048\r\n\r\n");
    put.send(&[b'x'; 1500]);
    assert_eq!(a.join().unwrap().status, 200);
    assert_eq!(b.join().unwrap().status, 200);
    // Worker one reads the PUT's body; worker two serves these one after the other.
    assert_eq!(get(addr, "/c").status, 200);
    assert_eq!(get(addr, "/d").status, 200);
    put.send(&[b'x'; 548]);
    let p = put.response(false).expect("the PUT's answer");
    assert_eq!(p.status, 200);
    let (b, c, d) = (port_of(&up, "/b"), port_of(&up, "/c"), port_of(&up, "/d"));
    assert_eq!(
        (c, d),
        (b, b),
        "/c and /d should reuse /b's idle connection; upstream connections: {}",
        up.connection_count()
    );
}

/// `pool_maxsize` 1, two workers, the default `client_buffer`. Worker one's GET meets a 503 and
/// waits out its retry's back-off (1–2 s) — asleep, but not on the queue, so the connection the
/// 503 came on stays in its slot. Meanwhile worker two serves `/b` and `/c`: no idle connection
/// for it to take, and each of its own is closed as it goes back (the set is full with the
/// sleeping worker's). docs/ARCHITECTURE.md: "no connection waits in a sleeping worker".
/// Before the slots, the 503's connection was idle in the shared set and carried `/b` and `/c`.
#[test]
fn a_worker_in_a_retry_backoff_does_not_keep_its_idle_connection_from_the_others() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.pool_maxsize = 1;
        c.max_concurrent_requests = 2;
        c.retry_backoff_factor = 2.0; // the first retry after 1–2 s
    });
    let addr = s.addr();
    let retried = std::thread::spawn(move || get(addr, "/r?fail_first=1"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get(addr, "/b").status, 200);
    assert_eq!(get(addr, "/c").status, 200);
    assert_eq!(retried.join().unwrap().status, 200, "the retry's answer");
    let (r, b, c) = (port_of(&up, "/r"), port_of(&up, "/b"), port_of(&up, "/c"));
    assert_eq!(
        (b, c),
        (r, r),
        "/b and /c should reuse the 503's idle connection; upstream connections: {}",
        up.connection_count()
    );
}
