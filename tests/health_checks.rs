//! Active health checks and recovery that never waits on a client (README "Health checks"), end
//! to end against the real test upstream switched while it runs: a hung upstream opens the
//! breaker within fall × interval + timeout, the checks alone close it within rise × interval
//! of recovery, a 404 is healthy, without checks a slow probe stops the refusal after
//! `circuit_breaker_timeout`, the state shows in every admin view, a reload turns checks on and
//! off, and shutdown stops them. Times are scaled: interval 0.3 s, timeout 0.2 s, rise 2, fall 3.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use sluice::Config;
use sluice_tools::upstream::TestUpstream;

const INTERVAL: f64 = 0.3;
const TIMEOUT: f64 = 0.2;
const RISE: u32 = 2;
const FALL: u32 = 3;
/// Scheduling on a loaded 2-core machine, on top of each bound.
const SLACK: f64 = 0.4;

fn checks_on(c: &mut Config) {
    c.health_check_path = "/health".into();
    c.health_check_interval = Duration::from_secs_f64(INTERVAL);
    c.health_check_timeout = Duration::from_secs_f64(TIMEOUT);
    c.health_check_rise = RISE;
    c.health_check_fall = FALL;
}

fn health(s: &sluice::Running) -> Value {
    get(s.addr(), "/proxy-health").json()
}

fn circuit(s: &sluice::Running) -> String {
    health(s)["circuit_state"].as_str().unwrap().to_string()
}

/// Health-check requests the upstream received.
fn checks_seen(up: &TestUpstream) -> usize {
    up.received()
        .iter()
        .filter(|r| r.target.starts_with("/health"))
        .count()
}

/// Client requests (anything but the checks) the upstream received.
fn clients_seen(up: &TestUpstream) -> usize {
    up.received().len() - checks_seen(up)
}

#[test]
fn a_hung_upstream_opens_the_breaker_within_fall_checks_not_after_read_timeout() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        checks_on(c);
        c.read_timeout = Duration::from_secs(30);
    });
    assert!(eventually(Duration::from_secs(3), || health(&s)
        ["health_check"]["last_status"]
        == 200));
    up.set_hang(true);
    let noticed = time_until(Duration::from_secs(10), || circuit(&s) == "open")
        .expect("the hang opens the breaker");
    let bound = f64::from(FALL) * INTERVAL + TIMEOUT;
    eprintln!("hung upstream noticed after {noticed:?} (bound {bound} s; read_timeout 30 s)");
    assert!(noticed.as_secs_f64() <= bound + SLACK, "{noticed:?}");
    assert!(
        noticed.as_secs_f64() >= f64::from(FALL - 1) * INTERVAL + TIMEOUT - 0.1,
        "{FALL} failed checks, not one: {noticed:?}"
    );
    let h = health(&s);
    assert_eq!(h["status"], "degraded");
    assert_eq!(h["health_check"]["state"], "unhealthy");
    assert_eq!(h["health_check"]["last_error"], "upstream_timeout");
    let t = Instant::now();
    get(s.addr(), "/work").assert_sluice_error(503, "circuit_open");
    assert!(t.elapsed() < Duration::from_secs(1), "refused at once");
    assert_eq!(clients_seen(&up), 0);
    s.shutdown(Duration::from_secs(1));
}

#[test]
fn the_checks_alone_close_the_breaker_within_rise_checks_of_recovery() {
    let up = upstream();
    up.set_hang(true);
    let s = sluice(up.port(), |c| {
        checks_on(c);
        c.circuit_breaker_timeout = Duration::from_millis(300);
    });
    assert!(eventually(Duration::from_secs(5), || circuit(&s) == "open"));
    // Long past circuit_breaker_timeout: without checks a client request would be the probe.
    std::thread::sleep(Duration::from_millis(800));
    for _ in 0..5 {
        get(s.addr(), "/work").assert_sluice_error(503, "circuit_open");
    }
    assert_eq!(circuit(&s), "open");
    assert_eq!(clients_seen(&up), 0, "no client request was the probe");
    up.set_hang(false);
    let recovered = time_until(Duration::from_secs(10), || circuit(&s) == "closed")
        .expect("passing checks close the breaker");
    let bound = f64::from(RISE) * INTERVAL;
    eprintln!(
        "recovered {recovered:?} after the upstream did (bound {bound} s), no client request sent"
    );
    assert!(recovered.as_secs_f64() <= bound + SLACK, "{recovered:?}");
    assert_eq!(clients_seen(&up), 0);
    let r = get(s.addr(), "/work");
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert_eq!(health(&s)["health_check"]["state"], "healthy");
    s.shutdown(Duration::from_secs(1));
}

#[test]
fn a_404_on_the_check_path_is_healthy_and_a_5xx_is_not() {
    let up = upstream();
    up.set_health(Some(404));
    let s = sluice(up.port(), checks_on);
    assert!(eventually(Duration::from_secs(3), || checks_seen(&up) >= 4));
    let h = health(&s);
    assert_eq!(h["status"], "healthy");
    assert_eq!(h["health_check"]["state"], "healthy");
    assert_eq!(h["health_check"]["last_status"], 404);
    assert_eq!(h["health_check"]["last_error"], Value::Null);
    assert_eq!(metrics(s.addr())["health_checks_failed"], 0);
    up.set_fail(Some(503));
    assert!(eventually(Duration::from_secs(3), || circuit(&s) == "open"));
    let h = health(&s);
    assert_eq!(h["health_check"]["last_status"], 503);
    assert_eq!(h["health_check"]["state"], "unhealthy");
    up.set_fail(None);
    assert!(eventually(Duration::from_secs(3), || circuit(&s) == "closed"));
    assert_eq!(health(&s)["health_check"]["last_status"], 404);
    s.shutdown(Duration::from_secs(1));
}

#[test]
fn without_checks_a_slow_probe_stops_the_refusal_after_circuit_breaker_timeout() {
    const OPEN: f64 = 1.0;
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.circuit_breaker_threshold = 1;
        c.circuit_breaker_timeout = Duration::from_secs_f64(OPEN);
        c.max_retries = 0;
    });
    let addr = s.addr();
    assert_eq!(get(addr, "/fail?status=503").status, 503);
    let opened = Instant::now();
    assert_eq!(circuit(&s), "open");
    std::thread::sleep(Duration::from_secs_f64(OPEN + 0.05));
    // The probe: a healthy upstream that takes 3 s for this one.
    let probe = std::thread::spawn(move || get(addr, "/slow?delay_ms=3000"));
    assert!(eventually(Duration::from_secs(1), || up.received().len() == 2));
    get(addr, "/work").assert_sluice_error(503, "circuit_open");
    assert!(metrics(addr)["circuit_open"].as_bool().unwrap());
    let stopped = time_until(Duration::from_secs(5), || {
        !metrics(addr)["circuit_open"].as_bool().unwrap()
    })
    .map(|_| opened.elapsed())
    .expect("the refusal stops");
    eprintln!(
        "slow probe: refusal stopped {stopped:?} after opening (bound {} s; the probe takes 3 s)",
        2.0 * OPEN
    );
    assert!(stopped.as_secs_f64() <= 2.0 * OPEN + SLACK, "{stopped:?}");
    assert!(stopped.as_secs_f64() >= 2.0 * OPEN - 0.1, "{stopped:?}");
    let r = get(addr, "/work");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "ok"),
        "passes beside the probe"
    );
    assert!(!probe.is_finished(), "the probe is still out");
    assert_eq!(circuit(&s), "closed", "the first success closed it");
    assert_eq!(probe.join().unwrap().status, 200);
    assert_eq!(circuit(&s), "closed");
}

#[test]
fn without_checks_a_hung_upstream_is_noticed_only_when_requests_time_out() {
    const READ: f64 = 1.0;
    const OPEN: f64 = 1.0;
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.read_timeout = Duration::from_secs_f64(READ);
        c.circuit_breaker_timeout = Duration::from_secs_f64(OPEN);
    });
    let addr = s.addr();
    up.set_hang(true);
    let clients: Vec<_> = (0..5)
        .map(|_| std::thread::spawn(move || get(addr, "/work").status))
        .collect();
    let noticed = time_until(Duration::from_secs(10), || circuit(&s) == "open")
        .expect("five timeouts open the breaker");
    for c in clients {
        assert_eq!(c.join().unwrap(), 504);
    }
    up.set_hang(false);
    // A client every 50 ms: the first one after the open period is the probe.
    let recovered = time_until(Duration::from_secs(5), || get(addr, "/work").status == 200)
        .expect("a probe closes it");
    eprintln!(
        "without checks: hung upstream noticed after {noticed:?} (read_timeout {READ} s), \
         recovered {recovered:?} after the upstream did (circuit_breaker_timeout {OPEN} s)"
    );
    assert!(noticed.as_secs_f64() >= READ, "{noticed:?}");
    assert!(recovered.as_secs_f64() <= OPEN + SLACK, "{recovered:?}");
}

#[test]
fn the_check_state_shows_in_proxy_health_proxy_metrics_and_prometheus() {
    let up = upstream();
    let off = sluice(up.port(), |_| {});
    let h = health(&off)["health_check"].clone();
    assert_eq!(h["state"], "off");
    assert_eq!(h["last_status"], Value::Null);
    assert_eq!(metrics(off.addr())["health_check_state"], "off");
    let fams = parse_prometheus(&get(off.addr(), "/proxy-metrics/prometheus").text());
    let g = |f: &Value, name: &str| sample(f, name, name, None);
    assert_eq!(g(&fams, "sluice_health_check_enabled"), 0.0);
    assert_eq!(g(&fams, "sluice_health_check_up"), 0.0);
    off.shutdown(Duration::from_secs(1));

    let s = sluice(up.port(), checks_on);
    assert!(eventually(Duration::from_secs(3), || checks_seen(&up) >= 3));
    let h = health(&s)["health_check"].clone();
    assert_eq!(h["state"], "healthy");
    assert_eq!(h["last_status"], 200);
    assert!(h["last_latency"].as_f64().unwrap() < TIMEOUT);
    assert!(h["seconds_since_last"].as_f64().unwrap() < 2.0 * INTERVAL);
    let m = get(s.addr(), "/proxy-metrics").json();
    let mm = &m["metrics"];
    assert_eq!(mm["health_check_state"], "healthy");
    assert_eq!(mm["health_check_last_status"], 200);
    assert_eq!(mm["health_check_last_error"], Value::Null);
    assert!(mm["health_check_last_latency"].is_number());
    assert!(mm["seconds_since_health_check"].is_number());
    assert!(mm["health_checks_passed"].as_u64().unwrap() >= 3);
    assert_eq!(mm["health_checks_failed"], 0);
    assert_eq!(m["config"]["health_check_path"], "/health");
    assert_eq!(m["config"]["health_check_interval"], INTERVAL);
    assert_eq!(m["config"]["health_check_timeout"], TIMEOUT);
    assert_eq!(m["config"]["health_check_rise"], RISE);
    assert_eq!(m["config"]["health_check_fall"], FALL);
    let fams = parse_prometheus(&get(s.addr(), "/proxy-metrics/prometheus").text());
    assert_eq!(g(&fams, "sluice_health_check_enabled"), 1.0);
    assert_eq!(g(&fams, "sluice_health_check_up"), 1.0);
    let took = g(&fams, "sluice_health_check_last_duration_seconds");
    assert!(took > 0.0 && took < TIMEOUT, "{took}");
    let at = g(&fams, "sluice_health_check_last_timestamp_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - at).abs() < 2.0, "{at} vs {now}");
    let (fam, total) = ("sluice_health_checks", "sluice_health_checks_total");
    assert_eq!(fams[fam]["type"], "counter");
    assert!(sample(&fams, fam, total, Some(("result", "pass"))) >= 3.0);
    assert_eq!(sample(&fams, fam, total, Some(("result", "fail"))), 0.0);

    // What the upstream got: GET health_check_path, Host the target's authority, each check on
    // a new connection of its own.
    let seen = up.received();
    let c = seen.iter().find(|r| r.target == "/health").unwrap();
    assert_eq!(c.method, "GET");
    assert_eq!(c.header("host"), Some(format!("127.0.0.1:{}", up.port())));
    let n = checks_seen(&up);
    assert!(
        up.connection_count() as usize >= n,
        "{} < {n}",
        up.connection_count()
    );
    s.shutdown(Duration::from_secs(1));
}

#[test]
fn a_reload_turns_checks_on_and_off_and_shutdown_stops_them() {
    let up = upstream();
    let fast = |c: &mut Config| {
        checks_on(c);
        c.health_check_interval = Duration::from_millis(100);
    };
    let s = sluice(up.port(), |_| {});
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(checks_seen(&up), 0, "off by default");
    s.reload(config(up.port(), fast));
    assert!(
        eventually(Duration::from_secs(2), || checks_seen(&up) >= 3),
        "a reload turns them on"
    );
    assert_eq!(health(&s)["health_check"]["state"], "healthy");
    s.reload(config(up.port(), |_| {}));
    std::thread::sleep(Duration::from_millis(150));
    let n = checks_seen(&up);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(checks_seen(&up), n, "a reload turns them off");
    assert_eq!(health(&s)["health_check"]["state"], "off");
    s.reload(config(up.port(), fast));
    assert!(eventually(Duration::from_secs(2), || checks_seen(&up) >= n + 2));
    s.shutdown(Duration::from_secs(1));
    let n = checks_seen(&up);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(checks_seen(&up), n, "shutdown stops them");
}

/// One POST with a `len`-byte body the client sends after its head (so its body is not all in
/// sluice's buffer when a worker takes it); the response's status and `X-Sluice-Error`.
fn upload(addr: SocketAddr, len: usize) -> (u16, String) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = format!(
        "POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    c.write_all(head.as_bytes()).unwrap();
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        let _ = w.write_all(&vec![b'b'; len]);
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let _ = writer.join();
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let reason = text
        .lines()
        .find_map(|l| l.strip_prefix("X-Sluice-Error: "))
        .unwrap_or("")
        .to_string();
    (status, reason)
}

/// README "Circuit breaker": the breaker refuses a healthy upstream for at most twice
/// `circuit_breaker_timeout`. Only a request whose body is all in the buffer may be the probe
/// (`Breaker::admit_as`); traffic made of uploads larger than `client_buffer` (an upload API)
/// never probes, so once half-open has lasted `circuit_breaker_timeout` with no probe sent the
/// uploads pass as when the probe is overdue (before, the healthy upstream was refused 503
/// `circuit_open` for ever). Here: timeout 1 s, 3.5 s of uploads after the upstream recovered.
#[test]
fn uploads_alone_do_not_keep_a_healthy_upstream_refused_for_ever() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.circuit_breaker_threshold = 1;
        c.circuit_breaker_timeout = Duration::from_secs(1);
        c.client_buffer = 1024;
        c.max_retries = 0;
    });
    up.set_fail(Some(503));
    assert_eq!(get(s.addr(), "/x").status, 503);
    up.set_fail(None);
    let opened = Instant::now();
    let mut seen = Vec::new();
    for _ in 0..40 {
        if opened.elapsed() > Duration::from_millis(3500) {
            break;
        }
        let (status, reason) = upload(s.addr(), 300_000);
        seen.push((opened.elapsed().as_millis(), status, reason));
        std::thread::sleep(Duration::from_millis(200));
    }
    let late_ok = seen
        .iter()
        .any(|(ms, status, _)| *ms > 2000 && *status == 200);
    assert!(
        late_ok,
        "past 2 × circuit_breaker_timeout an upload reaches the healthy upstream: {seen:?}"
    );
}

/// docs/ARCHITECTURE.md "The breaker and the health checks": a check's result counts only for
/// the target (and check settings) it was made for. A check that started against the old
/// target and fails after a reload moved `target_port` to a healthy upstream counts for nothing
/// (its `CheckRound` is no longer current); before, with `fall` 1 it opened the breaker, and the
/// healthy new upstream was refused 503 `circuit_open` until `rise` new checks passed.
#[test]
fn a_check_of_the_old_target_does_not_open_the_breaker_after_a_reload() {
    let a = upstream();
    let b = upstream();
    let tweak = |c: &mut sluice::config::Config| {
        c.health_check_path = "/health".into();
        c.health_check_interval = Duration::from_millis(300);
        c.health_check_timeout = Duration::from_millis(1500);
        c.health_check_fall = 1;
        c.health_check_rise = 2;
    };
    let s = sluice(a.port(), tweak);
    let addr = s.addr();
    assert!(eventually(Duration::from_secs(5), || metrics(addr)
        ["health_checks_passed"]
        .as_u64()
        .unwrap_or(0)
        >= 1));
    a.set_hang(true); // the old target stops answering: the next check hangs
    std::thread::sleep(Duration::from_millis(500)); // a check of `a` is in flight
    let fixed = s.reload(config(b.port(), tweak));
    assert!(fixed.is_empty(), "{fixed:?}");
    let started = Instant::now();
    let mut refused = Vec::new();
    for _ in 0..60 {
        if started.elapsed() > Duration::from_millis(2500) {
            break;
        }
        let r = get(addr, "/after-reload");
        if r.status != 200 {
            refused.push((
                started.elapsed().as_millis(),
                r.status,
                r.header("x-sluice-error").map(str::to_string),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    a.set_hang(false);
    assert!(
        refused.is_empty(),
        "the healthy new target was refused: {refused:?}"
    );
}
