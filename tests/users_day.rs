//! The user's day, scaled 1:60: the day the Python forwarding service failed, played against two
//! `sluice` processes (README "Health checks", "One deadline per request", "What can hold a
//! worker", "Shutdown"). The real test upstream answers in 1–5 s (minutes, scaled) with pattern
//! bodies up to 300 KB; well-behaved clients (one request per connection, and keep-alive) check
//! every byte; other clients give up after 50–800 ms; some requests meet a 503 first so retries
//! fire; health checks run. Mid-load a second process starts (the new pod), new connections go
//! to it and the first gets SIGTERM; later the upstream hangs (accepts, never answers) for a
//! while and recovers. Every assertion is on what the clients got and what the upstream saw.
//!
//! Settings (scaled): read_timeout 6 s, connect_timeout 1 s, queue_timeout 5 s, 8 workers,
//! pool 4, queue 32, 2 retries with a 25–50 ms back-off, checks every 0.25 s (timeout 0.2 s,
//! rise 2, fall 3), shutdown_grace 8 s (≥ connect + read), access log on.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use parking_lot::Mutex;
use sluice_tools::upstream::pattern_byte;

const READ_TIMEOUT: f64 = 6.0;
const CONNECT_TIMEOUT: f64 = 1.0;
const QUEUE_TIMEOUT: f64 = 5.0;
const MAX_RETRIES: u32 = 2;
const INTERVAL: f64 = 0.25;
const CHECK_TIMEOUT: f64 = 0.2;
const RISE: u32 = 2;
const FALL: u32 = 3;
const GRACE: f64 = 8.0;
/// Scheduling on a loaded 2-core machine, on top of the breaker's bounds (polled every 5 ms).
const SLACK: f64 = 0.5;
/// The longest a request may take, measured by its client: the longest queue wait, one connect
/// per attempt, the one read deadline over all attempts (README "One deadline per request"),
/// and a second for the client's own writes and reads of up to 300 KB on a loaded machine.
const DEADLINE: f64 =
    QUEUE_TIMEOUT + (1 + MAX_RETRIES) as f64 * CONNECT_TIMEOUT + READ_TIMEOUT + 1.0;
/// Body sizes of the answers: small, and over 64 KiB (streamed past `client_buffer`).
const SIZES: [u64; 5] = [100, 10_000, 70_000, 200_000, 300_000];

fn settings() -> Vec<String> {
    let s = [
        ("--read-timeout", READ_TIMEOUT.to_string()),
        ("--connect-timeout", CONNECT_TIMEOUT.to_string()),
        ("--queue-timeout", QUEUE_TIMEOUT.to_string()),
        ("--max-concurrent-requests", "8".into()),
        ("--max-queue-size", "32".into()),
        ("--pool-maxsize", "4".into()),
        ("--max-retries", MAX_RETRIES.to_string()),
        ("--retry-backoff-factor", "0.05".into()),
        ("--health-check-path", "/health".into()),
        ("--health-check-interval", INTERVAL.to_string()),
        ("--health-check-timeout", CHECK_TIMEOUT.to_string()),
        ("--health-check-rise", RISE.to_string()),
        ("--health-check-fall", FALL.to_string()),
        ("--shutdown-grace", GRACE.to_string()),
        ("--log-level", "warn".into()),
        ("--access-log", "true".into()),
    ];
    s.into_iter()
        .flat_map(|(k, v)| [k.to_string(), v])
        .collect()
}

/// A sluice process (a pod) and its access log, read as it is written.
fn start_pod(upstream_port: u16) -> (Proc, Arc<Mutex<String>>) {
    let args = settings();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = Proc::in_front_of_keeping_stdout(upstream_port, &args);
    let out = p.child.stdout.take().expect("stdout piped");
    let log = Arc::new(Mutex::new(String::new()));
    let l = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let mut g = l.lock();
            g.push_str(&line);
            g.push('\n');
        }
    });
    assert!(
        eventually(Duration::from_secs(5), || health(p.addr)["health_check"]
            ["last_status"]
            == 200),
        "the pod's first check passed"
    );
    (p, log)
}

fn health(addr: SocketAddr) -> serde_json::Value {
    get(addr, "/proxy-health").json()
}

fn circuit(addr: SocketAddr) -> String {
    health(addr)["circuit_state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// A small deterministic random source (xorshift), one per client thread.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// In `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + self.0 % (hi - lo)
    }
}

/// What a client got for one request.
#[derive(Clone, Debug, PartialEq)]
enum Got {
    /// A 2xx whose body is the upstream's, byte for byte.
    Exact,
    /// A 2xx that is not (short, or a wrong byte).
    Wrong(String),
    /// Another status, and sluice's `X-Sluice-Error` ("" when the upstream's own).
    Status(u16, String),
    /// No answer: refused, reset or closed before a whole response head.
    NoAnswer,
}

/// One request of a well-behaved client (or a give-up client's warm-up request).
#[derive(Clone, Debug)]
struct Done {
    target: String,
    /// 0: the first pod, 1: the new one.
    pod: u8,
    sent: Instant,
    ended: Instant,
    got: Got,
}

/// What the clients share: where new connections go, and what happened.
struct Day {
    pod: Mutex<(u8, SocketAddr)>,
    stop: AtomicBool,
    ids: AtomicU64,
    done: Mutex<Vec<Done>>,
    /// Give-ups: the target, when it was sent, and when the client hung up.
    gave_up: Mutex<Vec<(String, Instant, Instant)>>,
}

impl Day {
    fn id(&self) -> u64 {
        self.ids.fetch_add(1, SeqCst)
    }

    fn current(&self) -> (u8, SocketAddr) {
        *self.pod.lock()
    }
}

fn open(addr: SocketAddr) -> Option<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    Some(s)
}

fn send(c: &mut Conn, target: &str) -> bool {
    let raw = format!("GET {target} HTTP/1.1\r\nHost: day\r\n\r\n");
    c.r.get_mut().write_all(raw.as_bytes()).is_ok()
}

/// Sends one GET on `c` and judges the answer; whether the connection may be used again.
fn exchange(c: &mut Conn, target: &str, len: u64) -> (Got, bool) {
    let Some(r) = send(c, target).then(|| c.response(false)).flatten() else {
        return (Got::NoAnswer, false);
    };
    let closes = r
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let got = if !(200..300).contains(&r.status) {
        let reason = r.header("x-sluice-error").unwrap_or("").to_string();
        Got::Status(r.status, reason)
    } else if !r.complete || r.body.len() as u64 != len {
        Got::Wrong(format!("{} of {len} bytes", r.body.len()))
    } else if let Some(i) = (0..len).find(|&i| r.body[i as usize] != pattern_byte(i)) {
        Got::Wrong(format!("byte {i} of {len} wrong"))
    } else {
        Got::Exact
    };
    (got, !closes)
}

/// Answers of 1–5 s and varied sizes; one in five meets a 503 first, so a retry fires.
fn well_behaved(day: &Day, seed: u64, keep_alive: bool) {
    let mut rng = Rng::new(seed);
    let mut kept: Option<(u8, Conn)> = None;
    while !day.stop.load(SeqCst) {
        let id = day.id();
        let len = SIZES[rng.range(0, SIZES.len() as u64) as usize];
        let wait = rng.range(1000, 5001);
        let first = if rng.range(0, 5) == 0 {
            "&fail_first=1"
        } else {
            ""
        };
        let kind = if keep_alive { "ka" } else { "one" };
        let target = format!("/day/{kind}?id={id}&wait_ms={wait}&body_bytes={len}{first}");
        let (pod, conn) = match kept.take() {
            Some((pod, c)) => (pod, Some(c)),
            None => {
                let (pod, addr) = day.current();
                (
                    pod,
                    open(addr).map(|s| Conn {
                        r: BufReader::new(s),
                    }),
                )
            }
        };
        let sent = Instant::now();
        let got = match conn {
            Some(mut c) => {
                let (got, again) = exchange(&mut c, &target, len);
                if keep_alive && again {
                    kept = Some((pod, c));
                }
                got
            }
            None => Got::NoAnswer,
        };
        let ended = Instant::now();
        if got != Got::Exact {
            std::thread::sleep(Duration::from_millis(100)); // a client's back-off
        }
        day.done.lock().push(Done {
            target,
            pod,
            sent,
            ended,
            got,
        });
    }
}

/// Sends a request the upstream answers in 1–5 s and hangs up after 50–800 ms; on a kept-alive
/// connection after a first, fast request on it.
fn gives_up(day: &Day, seed: u64, keep_alive: bool) {
    let mut rng = Rng::new(seed);
    while !day.stop.load(SeqCst) {
        let (pod, addr) = day.current();
        let Some(s) = open(addr) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let mut c = Conn {
            r: BufReader::new(s),
        };
        if keep_alive {
            let target = format!("/day/warm?id={}&body_bytes=1000", day.id());
            let sent = Instant::now();
            let (got, again) = exchange(&mut c, &target, 1000);
            let ended = Instant::now();
            day.done.lock().push(Done {
                target,
                pod,
                sent,
                ended,
                got,
            });
            if !again {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        }
        let (wait, hold) = (rng.range(1000, 5001), rng.range(50, 801));
        let kind = if keep_alive { "ka" } else { "one" };
        let target = format!(
            "/day/giveup-{kind}?id={}&wait_ms={wait}&hold={hold}",
            day.id()
        );
        let sent = Instant::now();
        if send(&mut c, &target) {
            std::thread::sleep(Duration::from_millis(hold));
            drop(c);
            day.gave_up.lock().push((target, sent, Instant::now()));
        }
        std::thread::sleep(Duration::from_millis(rng.range(100, 400)));
    }
}

/// Each access-logged request's queue wait (seconds), by target.
fn queue_waits(logs: &[&str]) -> std::collections::HashMap<String, f64> {
    logs.iter()
        .flat_map(|l| l.lines())
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["target"].as_str()?.to_string(), v["queue_wait"].as_f64()?)))
        .collect()
}

fn sleep_until(t: Instant) {
    std::thread::sleep(t.saturating_duration_since(Instant::now()));
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[test]
fn the_users_day_scaled_1_to_60() {
    let up = upstream();
    let (mut first, first_log) = start_pod(up.port());
    let day = Arc::new(Day {
        pod: Mutex::new((0, first.addr)),
        stop: AtomicBool::new(false),
        ids: AtomicU64::new(0),
        done: Mutex::new(Vec::new()),
        gave_up: Mutex::new(Vec::new()),
    });
    let t0 = Instant::now();
    let mut clients = Vec::new();
    for i in 0..10u64 {
        let day = day.clone();
        clients.push(std::thread::spawn(move || match i {
            0..=2 => well_behaved(&day, i + 1, false),
            3..=5 => well_behaved(&day, i + 1, true),
            6 | 7 => gives_up(&day, i + 1, false),
            _ => gives_up(&day, i + 1, true),
        }));
    }

    // The rollout: the new pod starts, new connections go to it, the first gets SIGTERM.
    sleep_until(t0 + Duration::from_secs(8));
    let (second, second_log) = start_pod(up.port());
    *day.pod.lock() = (1, second.addr);
    std::thread::sleep(Duration::from_millis(500));
    let term_at = Instant::now();
    first.signal("TERM");
    let exit = first.wait_exit(Duration::from_secs_f64(GRACE + 2.0));
    let first_exited = term_at.elapsed();

    // The hang: long enough that every request caught in it reaches its deadline within it.
    sleep_until(t0 + Duration::from_secs(18));
    let hang_at = Instant::now();
    up.set_hang(true);
    let opened = time_until(Duration::from_secs(10), || circuit(second.addr) == "open");
    sleep_until(hang_at + Duration::from_secs(8));
    let recovered_at = Instant::now();
    up.set_hang(false);
    let resumed = time_until(Duration::from_secs(10), || circuit(second.addr) == "closed");
    let probe = get(second.addr, "/day/after-recovery?body_bytes=100");
    let hang_end = recovered_at + Duration::from_secs_f64(f64::from(RISE) * INTERVAL + SLACK);

    sleep_until(t0 + Duration::from_secs(36));
    day.stop.store(true, SeqCst);
    let stopped = Instant::now();
    for c in clients {
        c.join().expect("client thread");
    }
    let freed = time_until(Duration::from_secs(1), || active(second.addr) == 0);
    let day_took = t0.elapsed();

    // What the upstream saw.
    let received: Vec<String> = up.received().into_iter().map(|r| r.target).collect();
    let reached = |t: &str| received.iter().any(|r| r == t);
    eventually(Duration::from_secs(2), || {
        let closes = up.closes();
        let gave_up = day.gave_up.lock();
        gave_up
            .iter()
            .filter(|(t, _, _)| reached(t))
            .all(|(t, _, _)| closes.iter().any(|(c, _)| c == t))
    });
    let closes = up.closes();

    let logged = |target: &str| {
        let logs = format!("{}{}", first_log.lock(), second_log.lock());
        let line = logs
            .lines()
            .find(|l| l.contains(target))
            .map(str::to_string);
        line.unwrap_or_else(|| "not in the access logs".into())
    };

    // Every give-up that reached the upstream reaches it as a close within 100 ms.
    let gave_up = day.gave_up.lock().clone();
    let (mut sent_up, mut cancelled, mut slowest) = (0, 0, Duration::ZERO);
    let mut delays = Vec::new();
    for (target, sent, when) in &gave_up {
        if !reached(target) {
            continue; // refused (breaker open) or dropped unsent from the queue
        }
        sent_up += 1;
        match closes.iter().find(|(t, _)| t == target) {
            Some((_, closed)) => {
                let after = closed.saturating_duration_since(*when);
                slowest = slowest.max(after);
                delays.push(after);
                if after <= Duration::from_millis(100) {
                    cancelled += 1;
                } else {
                    eprintln!(
                        "{target}: closed {after:?} after the give-up, {:.2} s into the day, \
                         {:?} after it was sent; {}",
                        secs(*when - t0),
                        *when - *sent,
                        logged(target)
                    );
                }
            }
            None => eprintln!(
                "{target}: never closed while the upstream waited; given up {:.2} s into the \
                 day; {}",
                secs(*when - t0),
                logged(target)
            ),
        }
    }

    delays.sort();

    // The well-behaved clients' answers.
    let done = day.done.lock().clone();
    let queue_waits = queue_waits(&[&first_log.lock(), &second_log.lock()]);
    let in_hang = |d: &Done| d.sent < hang_end && d.ended > hang_at;
    // In the hang: the breaker's refusal, the deadline's 504, or the upstream's own 503 to a
    // request whose retry the opened breaker did not let through.
    let hang_answer = |d: &Done, status: u16, reason: &str| {
        matches!(
            (status, reason),
            (503, "circuit_open") | (504, "upstream_timeout")
        ) || (status, reason) == (503, "") && d.target.contains("fail_first=1")
    };
    let (mut exact, mut in_hang_refused, mut bad) = (0, 0, Vec::new());
    let (mut longest, mut longest_upstream) = (Duration::ZERO, 0.0f64);
    let (mut in_flight_at_term, mut in_flight_done, mut retried) = (0, 0, 0);
    let (mut drain_races, mut in_flight_targets) = (0, Vec::new());
    for d in &done {
        let took = d.ended - d.sent;
        longest = longest.max(took);
        // Its own queue wait when logged, else the longest one (QUEUE_TIMEOUT).
        let q = queue_waits.get(&d.target).copied();
        let deadline = q.map_or(DEADLINE, |q| DEADLINE - QUEUE_TIMEOUT + q);
        longest_upstream = longest_upstream.max(secs(took) - q.unwrap_or(QUEUE_TIMEOUT));
        if secs(took) > deadline {
            bad.push(format!(
                "{}: took {took:?}, past its deadline {deadline:.2} s",
                d.target
            ));
        }
        if d.target.contains("fail_first=1")
            && received.iter().filter(|r| **r == d.target).count() > 1
        {
            retried += 1;
        }
        if d.pod == 0 && d.sent < term_at && d.ended > term_at {
            in_flight_at_term += 1;
            in_flight_done += usize::from(d.got == Got::Exact);
            in_flight_targets.push(d.target.as_str());
        }
        match &d.got {
            Got::Exact => exact += 1,
            Got::Status(status, reason) if in_hang(d) && hang_answer(d, *status, reason) => {
                in_hang_refused += 1
            }
            // The drain: a request sent on a kept-alive connection after SIGTERM, closed idle
            // before it came, or a connection the closed listener refused. Never sent on.
            Got::NoAnswer if d.pod == 0 && d.sent >= term_at && !reached(&d.target) => {
                drain_races += 1
            }
            other => bad.push(format!(
                "{}: {other:?} (sent {:.2} s into the day, ended {:.2} s)",
                d.target,
                secs(d.sent - t0),
                secs(d.ended - t0)
            )),
        }
        if closes.iter().any(|(t, _)| *t == d.target) {
            bad.push(format!(
                "{}: its upstream connection was closed under it",
                d.target
            ));
        }
    }
    let first_log = first_log.lock().clone();
    let logged_200 = |t: &str| {
        first_log.lines().any(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .is_ok_and(|v| v["target"] == t && v["status"] == 200)
        })
    };
    let unlogged: Vec<&&str> = in_flight_targets
        .iter()
        .filter(|t| !logged_200(t))
        .collect();
    let m = metrics(second.addr);

    let open_bound = f64::from(FALL) * INTERVAL + CHECK_TIMEOUT;
    let resume_bound = f64::from(RISE) * INTERVAL;
    eprintln!(
        "the user's day, scaled 1:60 ({day_took:.1?}; clients stopped after {:.1?}):",
        stopped - t0
    );
    eprintln!(
        "  well-behaved: {} requests, {exact} byte-exact 2xx, {in_hang_refused} refused 503/504 \
         in the hang window, {drain_races} unsent in drain races, {} wrong",
        done.len(),
        bad.len()
    );
    eprintln!(
        "  give-ups: {cancelled}/{sent_up} that reached the upstream cancelled within 100 ms \
         ({} given up; close after the give-up: median {:?}, slowest {slowest:?}); workers \
         free after the day: {freed:?}",
        gave_up.len(),
        delays.get(delays.len() / 2).copied().unwrap_or_default()
    );
    eprintln!("  retries: {retried} requests answered 503 first were retried");
    eprintln!(
        "  rollout: {in_flight_done}/{in_flight_at_term} in flight at SIGTERM answered whole; \
         first pod exit {exit:?} after {first_exited:.2?} (grace {GRACE} s)"
    );
    eprintln!(
        "  hang: breaker open after {opened:.2?} (bound {open_bound} s), closed {resumed:.2?} \
         after recovery (bound {resume_bound} s)"
    );
    eprintln!(
        "  longest request {longest:.2?} (deadline {DEADLINE} s with the longest queue wait); \
         longest less its queue wait {longest_upstream:.2} s (read_timeout {READ_TIMEOUT} s)"
    );
    eprintln!("  surviving pod: outcomes {}", m["outcomes"]);

    for b in &bad {
        eprintln!("  WRONG {b}");
    }
    assert!(
        bad.is_empty(),
        "{} well-behaved requests went wrong",
        bad.len()
    );
    assert!(exact > 50, "the day carried load: {exact}");
    assert!(sent_up > 5, "give-ups reached the upstream: {sent_up}");
    assert_eq!(cancelled, sent_up, "every give-up cancelled within 100 ms");
    assert!(freed.is_some(), "active_requests back to 0: {m}");
    assert!(retried > 0, "retries fired");
    assert!(in_flight_at_term > 0, "requests were in flight at SIGTERM");
    assert_eq!(in_flight_done, in_flight_at_term, "none cut by the rollout");
    assert!(
        unlogged.is_empty(),
        "in flight at SIGTERM, no 200 logged: {unlogged:?}"
    );
    assert_eq!(exit, Some(0), "the first pod exits 0 within the grace");
    assert!(secs(first_exited) <= GRACE, "{first_exited:?}");
    assert!(
        !first.stderr.lock().contains("outcome shutdown"),
        "{}",
        first.stderr.lock()
    );
    let opened = opened.expect("the hang opens the breaker");
    assert!(
        secs(opened) <= open_bound + SLACK,
        "breaker opened after {opened:?}"
    );
    let resumed = resumed.expect("the checks close the breaker");
    assert!(
        secs(resumed) <= resume_bound + SLACK,
        "resumed after {resumed:?}"
    );
    assert_eq!(
        (probe.status, probe.body.len()),
        (200, 100),
        "served after recovery"
    );
    assert_eq!(m["circuit_state"], "closed", "{m}");
}
