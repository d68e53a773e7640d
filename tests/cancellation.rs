//! Exact cancellation (README "What can hold a worker"; docs/ARCHITECTURE.md "Who owns a
//! connection when"): a client's hang-up cancels its own upstream exchange — in the upstream
//! wait, a retry's back-off, a connect — at once, and nothing one client does reaches another
//! request's socket. Each test plays real clients against a real sluice and the real test
//! upstream on 127.0.0.1 and checks both ends; the stress test compares every well-behaved
//! client's answer byte for byte with what the upstream sent.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use parking_lot::Mutex;
use sluice_tools::upstream::pattern_byte;

/// A small deterministic random source (xorshift), one per client thread.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// In `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

/// Opens a connection and sends `raw` without reading anything.
fn send_only(addr: SocketAddr, raw: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect to sluice");
    s.write_all(raw).expect("write request");
    s
}

fn outcome(m: &serde_json::Value, name: &str) -> u64 {
    m["outcomes"][name].as_u64().unwrap_or(0)
}

/// One request per connection, as `requests.get()` and curl make them: a fast request, then one
/// on a slow upstream whose client gives up after 50–150 ms, over and over from two clients with
/// two workers. The upstream sockets are pooled, so each give-up's request starts on a socket
/// the previous connection's request used. Every give-up that reached the upstream reaches it
/// as a close within 100 ms, and frees its worker.
#[test]
fn every_give_up_on_a_one_request_connection_cancels_within_100ms() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.max_concurrent_requests = 2;
        c.pool_maxsize = 2;
        c.max_retries = 0;
        c.max_queue_size = 64;
    });
    let addr = s.addr();
    let gave_up = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..2u64)
        .map(|t| {
            let gave_up = gave_up.clone();
            std::thread::spawn(move || {
                let mut rng = Rng::new(t + 1);
                for i in 0..20 {
                    let r = get(addr, &format!("/fast?t={t}&i={i}"));
                    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
                    let target = format!("/slow?t={t}&i={i}&wait_ms=1500");
                    let raw = format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n");
                    let c = send_only(addr, raw.as_bytes());
                    std::thread::sleep(Duration::from_millis(rng.range(50, 150)));
                    drop(c);
                    gave_up.lock().push((target, Instant::now()));
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client thread");
    }
    assert!(
        eventually(Duration::from_secs(3), || active(addr) == 0),
        "every worker is free"
    );
    let gave_up = gave_up.lock().clone();
    let reached: Vec<String> = up.received().into_iter().map(|r| r.target).collect();
    let slow = reached.iter().filter(|t| t.starts_with("/slow")).count();
    // The upstream notices a close within a millisecond or so: let the last one be recorded.
    eventually(Duration::from_secs(2), || up.closes().len() >= slow);
    let closes = up.closes();
    let (mut cancelled, mut sent, mut slowest) = (0, 0, Duration::ZERO);
    for (target, when) in &gave_up {
        if !reached.contains(target) {
            continue; // dropped unsent: its worker took it after the hang-up
        }
        sent += 1;
        if let Some((_, closed)) = closes.iter().find(|(t, _)| t == target) {
            let after = closed.saturating_duration_since(*when);
            slowest = slowest.max(after);
            if after <= Duration::from_millis(100) {
                cancelled += 1;
            } else {
                eprintln!("{target}: closed {after:?} after the give-up");
            }
        } else {
            eprintln!("{target}: never closed while the upstream waited");
        }
    }
    eprintln!(
        "one request per connection: {cancelled}/{} give-ups cancelled within 100 ms \
         ({sent} reached the upstream; slowest close {slowest:?})",
        gave_up.len()
    );
    assert!(sent > 0, "the give-ups reached the upstream");
    assert_eq!(cancelled, sent, "every give-up that reached the upstream");
    let m = metrics(addr);
    assert_eq!(m["client_aborted_requests"], gave_up.len() as u64, "{m}");
    assert_eq!(m["circuit_state"], "closed", "{m}");
}

/// A bodiless 503 puts its upstream socket back in the pool and sluice backs off (1–2 s) before
/// retrying; another client's POST takes that socket; then the first client hangs up. The POST
/// is answered as the upstream answered it, and the hung-up request ends at once, with no
/// further attempt, counted as the client's abort — never a breaker failure.
#[test]
fn a_hang_up_during_a_back_off_ends_it_at_once_and_breaks_no_one_else() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.max_concurrent_requests = 2;
        c.pool_maxsize = 1;
        c.max_retries = 2;
        c.retry_backoff_factor = 2.0;
        c.circuit_breaker_threshold = 1;
    });
    let addr = s.addr();
    let seen = |target: &str| up.received().iter().filter(|r| r.target == target).count();
    let rounds = 6;
    let (mut ended_at_once, mut broken, mut slowest) = (0, 0, Duration::ZERO);
    for i in 0..rounds {
        let a_target = format!("/a?r={i}&status=503&body_bytes=0");
        let a = send_only(
            addr,
            format!("GET {a_target} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes(),
        );
        assert!(eventually(Duration::from_secs(2), || seen(&a_target) == 1));
        std::thread::sleep(Duration::from_millis(30)); // the 503 is in: sluice backs off
        assert_eq!(active(addr), 1, "the first request waits in its back-off");
        let b_target = format!("/b?r={i}&wait_ms=600");
        let mut b = Conn::open(addr);
        b.send(
            format!("POST {b_target} HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
                .as_bytes(),
        );
        assert!(eventually(Duration::from_secs(2), || seen(&b_target) == 1));
        let gone = Instant::now();
        drop(a);
        if eventually(Duration::from_secs(1), || active(addr) == 1) {
            let took = gone.elapsed();
            slowest = slowest.max(took);
            if took <= Duration::from_millis(100) {
                ended_at_once += 1;
            }
        }
        let r = b.response(false).expect("an answer for the POST");
        if (r.status, r.text().as_str()) != (200, "ok") {
            broken += 1;
            eprintln!("round {i}: the POST got {} {:?}", r.status, r.text());
        }
    }
    std::thread::sleep(Duration::from_secs(2)); // past every back-off: a retry would be in
    let retried = (0..rounds)
        .filter(|i| seen(&format!("/a?r={i}&status=503&body_bytes=0")) > 1)
        .count();
    eprintln!(
        "hang-ups during back-off: {ended_at_once}/{rounds} ended within 100 ms (slowest \
         {slowest:?}), {retried} retried after the hang-up, {broken}/{rounds} other clients' \
         requests broken"
    );
    assert_eq!(broken, 0, "no other client's request is broken");
    assert_eq!(retried, 0, "no attempt after a hang-up");
    assert_eq!(ended_at_once, rounds, "each ends at once");
    let m = metrics(addr);
    assert_eq!(outcome(&m, "client_abort"), rounds as u64, "{m}");
    assert_eq!(outcome(&m, "upstream_error"), 0, "{m}");
    assert_eq!(m["circuit_state"], "closed", "{m}");
    assert_eq!(m["consecutive_failures"], 0, "{m}");
    assert_eq!(m["active_requests"], 0, "{m}");
}

/// An upstream that does not answer a SYN (a listener whose backlog is full): a client that
/// hangs up while sluice connects ends the connect at once — no worker waits out
/// `connect_timeout`, and no breaker failure is counted.
#[test]
fn a_hang_up_during_an_upstream_connect_abandons_it() {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    listener.listen(0).unwrap();
    let port = listener.local_addr().unwrap().as_socket().unwrap().port();
    // Fill the backlog: the kernel drops the SYNs of later connects.
    let fillers: Vec<Socket> = (0..2)
        .map(|_| {
            let f = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            f.set_nonblocking(true).unwrap();
            let _ = f.connect(&listener.local_addr().unwrap());
            f
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    let s = sluice(port, |c| {
        c.max_concurrent_requests = 1;
        c.connect_timeout = Duration::from_secs(8);
        c.max_retries = 0;
        c.circuit_breaker_threshold = 1;
    });
    let addr = s.addr();
    let requests: [&[u8]; 2] = [
        b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    ];
    for raw in requests {
        let c = send_only(addr, raw);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(active(addr), 1, "sluice is connecting");
        let gone = Instant::now();
        drop(c);
        let freed = eventually(Duration::from_secs(3), || active(addr) == 0);
        let took = gone.elapsed();
        eprintln!("hang-up during a connect -> worker free in {took:?}");
        assert!(freed && took < Duration::from_millis(500), "{took:?}");
    }
    let m = metrics(addr);
    assert_eq!(outcome(&m, "client_abort"), 2, "{m}");
    assert_eq!(outcome(&m, "connect_timeout"), 0, "{m}");
    assert_eq!(m["circuit_state"], "closed", "{m}");
    drop(fillers);
}

/// What a well-behaved request asks for, and the answer the upstream sends for it.
fn well_behaved(rng: &mut Rng, tag: &str) -> (Vec<u8>, Vec<u8>) {
    match rng.range(0, 4) {
        0 | 1 => {
            let n = rng.range(0, 40_000);
            let chunked = rng.range(0, 2);
            let raw = format!(
                "GET /w?{tag}&body_bytes={n}&chunked={chunked} HTTP/1.1\r\nHost: a\r\n\r\n"
            );
            (raw.into_bytes(), (0..n).map(pattern_byte).collect())
        }
        2 => {
            let n = rng.range(0, 20_000) as usize;
            let body: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            let mut raw = format!(
                "POST /e?{tag}&echo_body=1 HTTP/1.1\r\nHost: a\r\nContent-Length: {n}\r\n\r\n"
            )
            .into_bytes();
            raw.extend_from_slice(&body);
            (raw, body)
        }
        _ => {
            let raw = format!("GET /d?{tag}&delay_ms=5 HTTP/1.1\r\nHost: a\r\n\r\n");
            (raw.into_bytes(), b"ok".to_vec())
        }
    }
}

/// A hostile client: a request it hangs up on, at a random moment.
fn hostile(addr: SocketAddr, rng: &mut Rng, tag: &str) {
    let (raw, wait) = match rng.range(0, 5) {
        // Before or during its body.
        0 => {
            let sent = rng.range(0, 500) as usize;
            let mut raw =
                format!("POST /h?{tag} HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n")
                    .into_bytes();
            raw.extend_from_slice(&vec![b'x'; sent]);
            (raw, rng.range(0, 20))
        }
        // While the upstream takes its time.
        1 => {
            let raw = format!("GET /h?{tag}&wait_ms=300 HTTP/1.1\r\nHost: a\r\n\r\n");
            (raw.into_bytes(), rng.range(0, 100))
        }
        // During a retry's back-off (or the upstream wait before it).
        2 | 3 => {
            let d = rng.range(0, 30);
            let raw = format!(
                "GET /h?{tag}&status=503&body_bytes=0&delay_ms={d} HTTP/1.1\r\nHost: a\r\n\r\n"
            );
            (raw.into_bytes(), rng.range(0, 120))
        }
        // While the response streams.
        _ => {
            let raw = format!("GET /h?{tag}&body_bytes=300000 HTTP/1.1\r\nHost: a\r\n\r\n");
            (raw.into_bytes(), rng.range(0, 10))
        }
    };
    let c = send_only(addr, &raw);
    std::thread::sleep(Duration::from_millis(wait));
    drop(c);
}

/// Thousands of requests: well-behaved clients (keep-alive, and one request per connection)
/// check every answer byte for byte, while hostile clients hang up at random moments — before
/// or during their body, while the upstream takes its time, during a retry's back-off, while
/// the response streams — on the same pooled upstream sockets. No well-behaved answer is wrong,
/// the breaker stays closed, and every worker is free at the end.
#[test]
fn hostile_hang_ups_never_change_anyone_elses_answer() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.max_concurrent_requests = 8;
        c.pool_maxsize = 8;
        c.max_queue_size = 256;
        c.max_retries = 2;
        c.retry_backoff_factor = 0.2; // the first back-off: 100–200 ms
    });
    let addr = s.addr();
    let until = Instant::now() + Duration::from_secs(25);
    let wrong = Arc::new(Mutex::new(Vec::new()));
    // Hostile clients stop with the last well-behaved one: a 503 they are answered (a retry the
    // budget refused) is an honest breaker failure, and with no one else's success between
    // such failures the breaker would open.
    let polite_running = Arc::new(AtomicUsize::new(8));
    let mut threads = Vec::new();
    for t in 0..8u64 {
        let wrong = wrong.clone();
        let running = polite_running.clone();
        threads.push(std::thread::spawn(move || {
            let mut rng = Rng::new(100 + t);
            let keep_alive = t % 2 == 0;
            let mut conn = None;
            let mut n = 0u64;
            while n < 650 && Instant::now() < until {
                let (raw, expect) = well_behaved(&mut rng, &format!("t={t}&n={n}"));
                let c = conn.get_or_insert_with(|| Conn::open(addr));
                c.send(&raw);
                let got = match c.response(false) {
                    Some(r) if r.status == 200 && r.complete && r.body == expect => None,
                    Some(r) => Some(format!(
                        "{} complete={} {} of {} bytes {:?}",
                        r.status,
                        r.complete,
                        r.body.len(),
                        expect.len(),
                        String::from_utf8_lossy(&r.body[..r.body.len().min(300)])
                    )),
                    None => Some("no response".to_string()),
                };
                if let Some(got) = got {
                    let head = String::from_utf8_lossy(&raw[..raw.len().min(90)]).into_owned();
                    wrong
                        .lock()
                        .push(format!("t={t} n={n}: {head:?} got {got}"));
                    conn = None;
                } else if !keep_alive {
                    conn = None;
                }
                n += 1;
            }
            running.fetch_sub(1, SeqCst);
            n
        }));
    }
    for t in 0..4u64 {
        let running = polite_running.clone();
        threads.push(std::thread::spawn(move || {
            let mut rng = Rng::new(200 + t);
            let mut n = 0u64;
            while n < 120 && running.load(SeqCst) > 0 {
                hostile(addr, &mut rng, &format!("h={t}&n={n}"));
                n += 1;
            }
            n
        }));
    }
    let counts: Vec<u64> = threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect();
    let total: u64 = counts.iter().sum();
    let polite: u64 = counts[..8].iter().sum();
    let wrong = wrong.lock().clone();
    eprintln!(
        "stress mix: {} wrong answers / {polite} well-behaved requests ({total} in all, {} \
         hostile); first wrong: {:?}",
        wrong.len(),
        total - polite,
        wrong.first()
    );
    assert!(total >= 5_000, "{total} requests");
    assert!(wrong.is_empty(), "{} wrong: {wrong:?}", wrong.len());
    assert!(
        eventually(Duration::from_secs(3), || active(addr) == 0),
        "every worker is free"
    );
    let m = metrics(addr);
    assert_eq!(m["circuit_state"], "closed", "{m}");
    assert_eq!(outcome(&m, "upstream_error"), 0, "{m}");
}
