//! Nothing beside the request path can stop it: an output nobody drains (the access log's
//! stdout, the log's stderr) never stalls a request, and a worker blocked in any kind of call
//! counts as not running, so the requests queued meanwhile start at once (docs/ARCHITECTURE.md
//! "Workers awake").

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{command_in_front_of, Conn};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// A GET on a fresh connection, answered within `within`; its status and how long it took.
fn timed_get(addr: SocketAddr, path: &str, within: Duration) -> (u16, Duration) {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(within)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let status = std::str::from_utf8(out.get(9..12).unwrap_or(b"000"))
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    (status, t.elapsed())
}

#[test]
fn an_undrained_stdout_and_stderr_never_stall_the_proxy() {
    let up = common::upstream();
    let mut child = command_in_front_of(
        up.port(),
        &[
            "--access-log",
            "--log-level",
            "debug",
            "--max-concurrent-requests",
            "8",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn sluice");
    // Read stderr only up to the line that says where sluice listens; then never again (the
    // reader is kept, so the pipe stays open and fills). stdout is never read.
    let err = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(err);
        let mut line = String::new();
        while lines.read_line(&mut line).is_ok_and(|n| n > 0) {
            if let Some(rest) = line.split("listening on ").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                let _ = tx.send((addr, lines));
                return;
            }
            line.clear();
        }
    });
    let (addr, _stalled_stderr) = rx.recv_timeout(Duration::from_secs(20)).expect("listening");
    let addr: SocketAddr = addr.parse().unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Kill(child);

    // Long targets make long access-log lines: the 64 KiB pipe and the 1 MiB buffer behind it
    // fill after about 450 requests (on main, sluice stopped once the pipe was full: after 226
    // to 274 requests, depending on the lines' length).
    let target = format!("/{}", "a".repeat(2000));
    let per_client = 300;
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let target = target.clone();
            std::thread::spawn(move || {
                let mut c = Conn::open(addr);
                c.r.get_ref()
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let mut took = Vec::new();
                for _ in 0..per_client {
                    let t = Instant::now();
                    let r = c.get(&target);
                    assert_eq!(r.status, 200);
                    took.push(t.elapsed());
                }
                took
            })
        })
        .collect();
    let (health, health_took) = timed_get(addr, "/proxy-health", Duration::from_secs(5));
    let mut took: Vec<Duration> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("every request answered"))
        .collect();
    took.sort();
    assert_eq!(took.len(), 4 * per_client);
    let (p50, p99, max) = (
        percentile(&took, 0.5),
        percentile(&took, 0.99),
        took[took.len() - 1],
    );
    eprintln!(
        "stdout stalled: {} requests p50 {p50:?} p99 {p99:?} max {max:?}",
        took.len()
    );
    assert!(p99 < Duration::from_secs(1), "p99 {p99:?}");
    assert_eq!(health, 200, "/proxy-health answers");
    assert!(health_took < Duration::from_secs(1), "{health_took:?}");

    // The log: each refused head is a debug line on stderr, written by the front end.
    let mut log_dropped = 0;
    for _ in 0..40 {
        for _ in 0..100 {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"NOT HTTP\r\n\r\n").unwrap();
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            assert!(out.starts_with(b"HTTP/1.1 400"), "answered");
        }
        log_dropped = common::metrics(addr)["log_dropped"].as_u64().unwrap();
        if log_dropped > 0 {
            break;
        }
    }
    let (health, health_took) = timed_get(addr, "/proxy-health", Duration::from_secs(5));
    assert_eq!(health, 200);
    assert!(health_took < Duration::from_secs(1), "{health_took:?}");
    let m = common::metrics(addr);
    let access_dropped = m["access_log_dropped"].as_u64().unwrap();
    eprintln!("access_log_dropped {access_dropped} log_dropped {log_dropped}");
    assert!(access_dropped > 0, "{m}");
    assert!(log_dropped > 0, "{m}");
    let prom = common::get(addr, "/proxy-metrics/prometheus").text();
    assert!(
        prom.contains("\nsluice_access_log_dropped_total "),
        "{prom}"
    );
    assert!(prom.contains("\nsluice_log_dropped_total "), "{prom}");
}

/// What a blocker does to hold its worker in one kind of call.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// A replayable body (a GET's, larger than `client_buffer`) that stops coming.
    ClientBodyReplayable,
    /// A streamed body (a POST's) that stops coming.
    ClientBodyStreamed,
    /// A large response the client does not read.
    ClientResponseWrite,
    /// An upstream that takes long to answer.
    UpstreamRead,
    /// A large body to an upstream that does not read it yet.
    UpstreamWrite,
    /// An upstream whose accept queue is full: the connect waits.
    UpstreamConnect,
    /// A 503 retried after a long back-off.
    Backoff,
}

/// Starts a blocker: it holds its connection (and so a worker) until dropped.
fn blocker(addr: SocketAddr, kind: Kind) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    let head = match kind {
        Kind::ClientBodyReplayable => {
            "GET /?echo=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 20000\r\n\r\n".to_string()
                + &"b".repeat(3000)
        }
        Kind::ClientBodyStreamed => {
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n".to_string()
                + &"b".repeat(3000)
        }
        Kind::ClientResponseWrite => "GET /?body_bytes=64000000 HTTP/1.1\r\nHost: x\r\n\r\n".into(),
        Kind::UpstreamRead => "GET /?delay_ms=4000 HTTP/1.1\r\nHost: x\r\n\r\n".into(),
        Kind::UpstreamWrite => {
            "POST /?hold_body_ms=4000 HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n"
                .into()
        }
        Kind::UpstreamConnect => "GET / HTTP/1.1\r\nHost: x\r\n\r\n".into(),
        Kind::Backoff => "GET /?status=503 HTTP/1.1\r\nHost: x\r\n\r\n".into(),
    };
    s.write_all(head.as_bytes()).unwrap();
    if let Kind::UpstreamWrite = kind {
        // The body comes as fast as sluice takes it, until the socket is shut down.
        let mut body = s.try_clone().unwrap();
        std::thread::spawn(move || {
            let chunk = vec![b'b'; 64 * 1024];
            while body.write_all(&chunk).is_ok() {}
        });
    }
    s
}

/// How long the probes waited for a worker, the median (sluice's own measure: from the head
/// read to a worker taking it), `probes` requests sent one after another while `blockers`
/// workers block in `kind`.
fn probe_wait(kind: Kind, blockers: usize, probes: usize) -> Duration {
    let up = common::upstream();
    // A listener that never accepts, its queue filled: connects to it wait.
    let full = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    full.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    full.listen(0).unwrap();
    let full_port = full.local_addr().unwrap().as_socket().unwrap().port();
    let mut filler = Vec::new();
    let port = match kind {
        Kind::UpstreamConnect => {
            for _ in 0..4 {
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                    .unwrap();
                s.set_nonblocking(true).unwrap();
                let _ = s.connect(
                    &format!("127.0.0.1:{full_port}")
                        .parse::<SocketAddr>()
                        .unwrap()
                        .into(),
                );
                filler.push(s);
            }
            std::thread::sleep(Duration::from_millis(50));
            full_port
        }
        _ => up.port(),
    };
    let connect_timeout = Duration::from_secs(2);
    let sluice = common::sluice(port, |c| {
        c.max_concurrent_requests = blockers + probes + 4;
        c.max_queue_size = 64;
        c.client_buffer = 1024;
        c.connect_timeout = connect_timeout;
        c.max_retries = if matches!(kind, Kind::Backoff) { 1 } else { 0 };
        c.retry_backoff_factor = 4.0;
        c.circuit_breaker_threshold = 1_000_000;
    });
    let addr = sluice.addr();
    let held: Vec<TcpStream> = (0..blockers).map(|_| blocker(addr, kind)).collect();
    assert!(
        common::eventually(Duration::from_secs(5), || common::active(addr)
            == blockers as u64),
        "{kind:?}: every blocker in a worker"
    );
    std::thread::sleep(Duration::from_millis(300)); // each reaches its blocking call
                                                    // Each probe's wait, from the mean queue wait before and after it (admin requests are not
                                                    // counted in it).
    let avg_queue_wait = || common::metrics(addr)["avg_queue_wait"].as_f64().unwrap();
    let mut taken = blockers;
    let mut before = avg_queue_wait();
    let mut waits = Vec::new();
    let mut pending = Vec::new();
    for i in 0..probes {
        std::thread::sleep(Duration::from_millis(7 + (i as u64 * 5) % 13));
        match kind {
            Kind::UpstreamConnect => {
                // Probes wait in the connect too: answered 504 when it times out.
                pending.push(std::thread::spawn(move || {
                    timed_get(addr, "/", Duration::from_secs(10))
                }));
                assert!(common::eventually(Duration::from_secs(5), || {
                    common::active(addr) == (taken + 1) as u64
                }));
            }
            _ => {
                let (status, _) = timed_get(addr, "/", Duration::from_secs(10));
                assert_eq!(status, 200, "{kind:?}");
            }
        }
        let after = avg_queue_wait();
        let n = taken as f64;
        waits.push(Duration::from_secs_f64(
            (after * (n + 1.0) - before * n).max(0.0),
        ));
        (taken, before) = (taken + 1, after);
    }
    for p in pending {
        assert_eq!(p.join().unwrap().0, 504, "{kind:?}: connect_timeout");
    }
    for s in held {
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
    drop(filler);
    waits.sort();
    eprintln!("{kind:?}: probes waited in the queue {waits:?}");
    percentile(&waits, 0.5)
}

/// A worker blocked in any kind of call is not running: a request queued meanwhile wakes a
/// sleeping worker at once, not at the front end's next 20 ms tick.
#[test]
fn a_worker_blocked_in_any_call_lets_queued_requests_start_at_once() {
    // More blockers than the queue lets run before it stops waking workers (two per core).
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let blockers = 2 * cores + 1;
    let kinds = [
        Kind::ClientBodyReplayable,
        Kind::ClientBodyStreamed,
        Kind::ClientResponseWrite,
        Kind::UpstreamRead,
        Kind::UpstreamWrite,
        Kind::UpstreamConnect,
        Kind::Backoff,
    ];
    // One kind at a time: the probes' timings are the test.
    for kind in kinds {
        let median = probe_wait(kind, blockers, 15);
        // Measured: tens of µs; with the body read unmarked (main before this test), 5-10 ms.
        assert!(
            median < Duration::from_millis(2),
            "{kind:?}: queued requests waited a median {median:?} (the front end's tick is 20 ms)"
        );
    }
}

/// On SIGTERM every access-log line of a request answered is on stdout before the exit.
#[test]
fn a_clean_shutdown_writes_out_every_logged_line() {
    let up = common::upstream();
    let mut p = common::Proc::in_front_of_keeping_stdout(up.port(), &["--access-log"]);
    let mut c = Conn::open(p.addr);
    for i in 0..150 {
        assert_eq!(c.get(&format!("/line-{i}")).status, 200);
    }
    drop(c);
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
    let mut out = String::new();
    p.child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 150, "{out}");
    assert!(lines[149].contains("\"/line-149\""), "{}", lines[149]);
}
