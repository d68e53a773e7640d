//! Who may open the breaker, and for how long it refuses (README "Circuit breaker", "What can
//! hold a worker"): a hung upstream opens it for uploads too; a client reading slowly within its
//! allowance never does; once half-open lets every request pass, no late probe brings the
//! refusals back. Self-contained: an in-process sluice and a tiny raw upstream written here
//! (each of these was a defect a hostile review proved).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use sluice::config::LogLevel;
use sluice::Config;

/// What the test upstream does with one request: `path`, and the connection to answer on.
/// Returns false to close the connection.
type Handler = Arc<dyn Fn(&str, &mut TcpStream) -> bool + Send + Sync>;

/// A tiny keep-alive HTTP/1.1 upstream: reads each request head and its `Content-Length` body,
/// then lets `handler` answer.
fn upstream(handler: Handler) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let h = handler.clone();
            thread::spawn(move || loop {
                let Some((head, _)) = read_head(&mut s) else {
                    return;
                };
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let n = content_length(&head).unwrap_or(0);
                if std::io::copy(&mut (&mut s).take(n), &mut std::io::sink()).unwrap_or(0) != n {
                    return;
                }
                if !h(&path, &mut s) {
                    return;
                }
            });
        }
    });
    addr
}

/// Reads a head up to its blank line; returns it and nothing more (reads byte by byte).
fn read_head(s: &mut TcpStream) -> Option<(String, ())> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => return None,
        }
    }
    Some((String::from_utf8_lossy(&head).into_owned(), ()))
}

fn content_length(head: &str) -> Option<u64> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })
}

fn ok(s: &mut TcpStream) -> bool {
    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        .is_ok()
}

fn sluice_for(upstream: SocketAddr, tweak: impl FnOnce(&mut Config)) -> SocketAddr {
    let mut cfg = Config {
        host: "127.0.0.1".into(),
        port: 0,
        target_host: "127.0.0.1".into(),
        target_port: upstream.port(),
        log_level: LogLevel::Error,
        max_retries: 0,
        ..Config::default()
    };
    tweak(&mut cfg);
    let running = sluice::start(cfg).unwrap();
    let addr = running.addr();
    std::mem::forget(running); // serves until the test process ends
    addr
}

/// A response as the client got it: status, head, how long it took.
struct Got {
    status: u16,
    head: String,
    took: Duration,
}

impl Got {
    fn sluice_error(&self) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("x-sluice-error")
                .then(|| v.trim())
        })
    }
}

/// Sends `request` (head and body) on a new connection and reads the response (head and a
/// `Content-Length` body).
fn send(addr: SocketAddr, request: &[u8]) -> Got {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request).unwrap();
    let (head, ()) = read_head(&mut s).expect("a response head");
    let n = content_length(&head).unwrap_or(0);
    let _ = std::io::copy(&mut (&mut s).take(n), &mut std::io::sink());
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Got {
        status,
        head,
        took: started.elapsed(),
    }
}

fn get(addr: SocketAddr, path: &str) -> Got {
    send(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// A POST whose body (200 000 bytes, over the default `client_buffer`) is all sent at once.
fn upload(addr: SocketAddr, path: &str) -> Got {
    let body = vec![b'x'; 200_000];
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    send(addr, &req)
}

/// An upstream that accepts the request, reads its whole body and never answers (hung) is a
/// genuine upstream failure: the client sent its body at full speed, never paused, and the
/// timeout came while waiting for the response head after the whole body was written. Yet
/// `AttemptFailure::verdict(client_paced = true)` makes every such timeout neutral
/// (src/policy/outcome.rs:77, client_paced set at src/upstream/attempt.rs:108 from the payload
/// kind alone): with uploads as the traffic, a hung upstream never opens the breaker, and every
/// upload holds a worker for the whole `read_timeout`.
#[test]
fn a_hung_upstream_opens_the_breaker_for_uploads_sent_at_full_speed() {
    let up = upstream(Arc::new(|path: &str, s: &mut TcpStream| match path {
        "/hang" => {
            thread::sleep(Duration::from_secs(60)); // the whole request read; no answer
            false
        }
        _ => ok(s),
    }));
    let addr = sluice_for(up, |c| {
        c.read_timeout = Duration::from_millis(500);
        c.circuit_breaker_threshold = 2;
        c.circuit_breaker_timeout = Duration::from_secs(30);
    });
    for i in 0..2 {
        let got = upload(addr, "/hang");
        assert_eq!(got.status, 504, "upload {i}: {}", got.head);
        assert_eq!(got.sluice_error(), Some("upstream_timeout"));
    }
    // Two timeouts in a row against a threshold of two: the breaker must be open.
    let got = get(addr, "/ok");
    assert_eq!(
        (got.status, got.sluice_error()),
        (503, Some("circuit_open")),
        "after 2 upstream timeouts (threshold 2) the breaker is still closed: {}",
        got.head
    );
}

/// A client that reads a large response slowly — a pause of 1.5 s, well within sluice's own
/// allowance (`client_header_timeout` of grace, then `client_min_rate`) — stalls the upstream's
/// writes; an upstream that gives up on a stalled write (its send timeout: nginx
/// `send_timeout`, gunicorn's worker timeout…) closes early, and the relay's read of the rest
/// fails: `Outcome::Truncated`, whose verdict is `Failure` (src/policy/outcome.rs:117), reported
/// as "one more failure" after the good head (src/upstream/attempt.rs:142,
/// src/state.rs VerdictReport::report). So a client can make sluice count a failure against a
/// healthy upstream — the response-side twin of the client-paced upload the fixbreaker merge
/// made neutral ("no client may make sluice count a failure against the upstream", README).
#[test]
fn a_slow_reader_within_its_allowance_cannot_open_the_breaker() {
    let up = upstream(Arc::new(|path: &str, s: &mut TcpStream| match path {
        "/big" => {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n");
            // The upstream's own send timeout: it gives up on a reader that stalls.
            s.set_write_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let chunk = vec![0u8; 65536];
            while s.write_all(&chunk).is_ok() {}
            let _ = s.shutdown(std::net::Shutdown::Both);
            false
        }
        _ => ok(s),
    }));
    let addr = sluice_for(up, |c| {
        c.circuit_breaker_threshold = 1;
        c.circuit_breaker_timeout = Duration::from_secs(30);
    });
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    // The client pauses 1.5 s (sluice allows it client_header_timeout, 10 s, of grace)…
    thread::sleep(Duration::from_millis(1500));
    // …then reads as fast as it can until sluice ends the response.
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n as u64,
        }
    }
    assert!(
        total < 1 << 30,
        "the response was cut short by the upstream"
    );
    thread::sleep(Duration::from_millis(100));
    let got = get(addr, "/ok");
    assert_eq!(
        (got.status, got.sluice_error()),
        (200, None),
        "a client's slow read made sluice open the breaker against a healthy upstream: {}",
        got.head
    );
}

/// README: "So the breaker refuses a healthy but slow upstream for at most twice
/// `circuit_breaker_timeout`, whatever the probe takes or the traffic is." Once half-open has
/// lasted `open_for` with no probe, every request passes (`probe_overdue`,
/// src/policy/breaker.rs:217-220) — but the next request that may probe still takes the free
/// probe slot (`admit_as`, breaker.rs:286 tests `may_probe && probe_out.is_none()` before
/// `probe_overdue`), and `probe_exclusive` (breaker.rs:208) then refuses every other request
/// for another whole `open_for`: here 2.4 × `open_for` after the opening, after requests had
/// already been passing again.
#[test]
fn once_passing_again_a_late_probe_does_not_bring_refusals_back() {
    let up = upstream(Arc::new(|path: &str, s: &mut TcpStream| match path {
        "/fail" => s
            .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
            .is_ok(),
        "/slow" => {
            thread::sleep(Duration::from_secs(2)); // healthy, slow
            ok(s)
        }
        _ => ok(s),
    }));
    let open_for = Duration::from_millis(500);
    let addr = sluice_for(up, |c| {
        c.circuit_breaker_threshold = 1;
        c.circuit_breaker_timeout = open_for;
    });
    let opened = Instant::now();
    assert_eq!(get(addr, "/fail").status, 503); // the upstream's 503: the breaker opens
    assert_eq!(get(addr, "/x").sluice_error(), Some("circuit_open"));
    // Past twice open_for with no probe: an upload passes (documented).
    thread::sleep(
        (opened + open_for * 2 + Duration::from_millis(200))
            .saturating_duration_since(Instant::now()),
    );
    let first = thread::spawn(move || upload(addr, "/slow"));
    thread::sleep(Duration::from_millis(150));
    // A small request now: it becomes the probe.
    let probe = thread::spawn(move || get(addr, "/slow"));
    thread::sleep(Duration::from_millis(150));
    let late = upload(addr, "/slow");
    let since = opened.elapsed();
    let first = first.join().unwrap();
    let probe = probe.join().unwrap();
    assert_eq!(first.status, 200, "the overdue pass: {}", first.head);
    assert_eq!(probe.status, 200, "{}", probe.head);
    assert!(
        late.sluice_error() != Some("circuit_open"),
        "refused {since:?} after the opening (open_for {open_for:?}), {:?} into the request, \
         after an upload had passed: {}",
        late.took,
        late.head
    );
}
