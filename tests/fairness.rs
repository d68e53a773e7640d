//! A fair share of the workers for every client group (README "Concurrency"), end to end: clients
//! bind distinct loopback addresses (127.0.0.2, 127.0.0.3…). A light client's request starts
//! within one service time beside a greedy one, the greedy one gets every worker the light ones
//! leave idle, a full queue gives up the greedy group's newest request rather than refuse a light
//! client, `header:` keys, `none` keeps first come first served, `max_client_requests` answers
//! 429 `client_limit`, and a reload changes `client_key`.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use sluice::config::ClientKey;

const GREEDY: [u8; 4] = [127, 0, 0, 2];
const LIGHT: [[u8; 4]; 3] = [[127, 0, 0, 3], [127, 0, 0, 4], [127, 0, 0, 5]];

fn get_from(addr: SocketAddr, from: [u8; 4], path: &str) -> Resp {
    Conn::open_from(addr, from).get(path)
}

fn background(addr: SocketAddr, from: [u8; 4], path: String) -> JoinHandle<Resp> {
    std::thread::spawn(move || get_from(addr, from, &path))
}

/// `conns` kept-alive connections from the greedy client, each sending `path` again as soon as
/// its answer comes, until `stop` (at most 200 requests each). Each returns its statuses.
fn greedy(
    addr: SocketAddr,
    conns: usize,
    path: &'static str,
    stop: &Arc<AtomicBool>,
) -> Vec<JoinHandle<Vec<u16>>> {
    (0..conns)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut c = Conn::open_from(addr, GREEDY);
                let mut statuses = Vec::new();
                while !stop.load(SeqCst) && statuses.len() < 200 {
                    statuses.push(c.get(path).status);
                }
                statuses
            })
        })
        .collect()
}

/// Waits until `/proxy-metrics` satisfies `f` (10 s at most).
fn until(addr: SocketAddr, f: impl Fn(&serde_json::Value) -> bool) {
    assert!(
        eventually(Duration::from_secs(10), || f(&metrics(addr))),
        "{:#}",
        metrics(addr)
    );
}

/// Four workers; a greedy client keeps 40 requests of 400 ms in flight (10× the workers) while
/// three light clients each send three 50 ms requests one after another. Returns the light
/// requests' times, and the mean busy workers once the light clients stopped.
fn greedy_and_light(key: ClientKey, light_requests: usize) -> (Vec<Duration>, f64) {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.max_concurrent_requests = 4;
        c.max_queue_size = 64;
        c.client_key = key;
    });
    let stop = Arc::new(AtomicBool::new(false));
    let hogs = greedy(s.addr(), 40, "/greedy?delay_ms=400", &stop);
    until(s.addr(), |m| m["queue_size"].as_u64() >= Some(30));
    let lights: Vec<JoinHandle<Vec<Duration>>> = LIGHT
        .iter()
        .map(|&from| {
            let addr = s.addr();
            std::thread::spawn(move || {
                (0..light_requests)
                    .map(|_| {
                        let t = Instant::now();
                        assert_eq!(get_from(addr, from, "/light?delay_ms=50").status, 200);
                        let took = t.elapsed();
                        std::thread::sleep(Duration::from_millis(100));
                        took
                    })
                    .collect()
            })
        })
        .collect();
    let waits: Vec<Duration> = lights.into_iter().flat_map(|h| h.join().unwrap()).collect();
    // The light clients are done: the greedy one has every worker.
    let samples: Vec<u64> = (0..40)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            active(s.addr())
        })
        .collect();
    let busy = samples.iter().sum::<u64>() as f64 / samples.len() as f64;
    stop.store(true, SeqCst);
    for h in hogs {
        assert!(h.join().unwrap().iter().all(|&st| st == 200));
    }
    (waits, busy)
}

fn ms(d: &[Duration]) -> Vec<u128> {
    d.iter().map(Duration::as_millis).collect()
}

#[test]
fn a_light_request_starts_within_one_service_time_and_the_greedy_client_gets_the_rest() {
    let (waits, busy) = greedy_and_light(ClientKey::Ip, 3);
    eprintln!(
        "client_key ip: light requests took {:?} ms; busy workers after {busy:.2}/4",
        ms(&waits)
    );
    // 50 ms of its own, at most one greedy service time (400 ms) for a worker to free up, and
    // room for a loaded machine.
    for w in &waits {
        assert!(*w < Duration::from_millis(1000), "{:?}", ms(&waits));
    }
    assert!(
        busy >= 0.95 * 4.0,
        "the greedy client alone: {busy:.2} of 4 workers busy"
    );
}

#[test]
fn without_fairness_the_light_clients_wait_behind_the_greedy_one() {
    let (waits, _) = greedy_and_light(ClientKey::None, 1);
    eprintln!("client_key none: light requests took {:?} ms", ms(&waits));
    // 36 greedy requests queued ahead, four workers, 400 ms each: seconds, not milliseconds.
    assert!(
        waits.iter().all(|w| *w > Duration::from_millis(1500)),
        "{:?}",
        ms(&waits)
    );
}

/// With one worker busy (`a0`): `a1`, `a2` queue from the greedy client, then `b0` from another.
/// The upstream's order of arrival.
fn order_of_service(s: &sluice::Running, up: &sluice_tools::upstream::TestUpstream) -> Vec<String> {
    up.clear();
    let addr = s.addr();
    let mut hs = vec![background(addr, GREEDY, "/a0?delay_ms=400".into())];
    until(addr, |m| m["active_requests"] == 1);
    for (i, path) in ["/a1", "/a2"].iter().enumerate() {
        hs.push(background(addr, GREEDY, path.to_string()));
        until(addr, |m| m["queue_size"] == i as u64 + 1);
    }
    hs.push(background(addr, LIGHT[0], "/b0".into()));
    for h in hs {
        assert_eq!(h.join().unwrap().status, 200);
    }
    up.received().into_iter().map(|r| r.target).collect()
}

#[test]
fn none_is_first_come_first_served_and_a_reload_to_ip_serves_the_light_client_first() {
    let up = upstream();
    let cfg = config(up.port(), |c| {
        c.max_concurrent_requests = 1;
        c.client_key = ClientKey::None;
    });
    let s = sluice::start(cfg.clone()).expect("start sluice");
    assert_eq!(
        order_of_service(&s, &up),
        ["/a0?delay_ms=400", "/a1", "/a2", "/b0"]
    );
    s.reload(sluice::Config {
        client_key: ClientKey::Ip,
        ..cfg
    });
    assert_eq!(metrics(s.addr())["active_groups"], 0, "every group freed");
    assert_eq!(
        order_of_service(&s, &up),
        ["/a0?delay_ms=400", "/b0", "/a1", "/a2"]
    );
}

#[test]
fn header_keys_group_by_the_headers_value_and_the_top_groups_show_it() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.max_concurrent_requests = 1;
        c.client_key = ClientKey::Header("X-Tenant".into());
    });
    let addr = s.addr();
    let as_tenant = |tenant: &'static str, path: &'static str| {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: t\r\nX-Tenant: {tenant}\r\n\r\n");
        std::thread::spawn(move || send(addr, raw.as_bytes()))
    };
    let mut hs = vec![as_tenant("acme", "/a0?delay_ms=600")];
    until(addr, |m| m["active_requests"] == 1);
    for (i, path) in ["/a1", "/a2"].into_iter().enumerate() {
        hs.push(as_tenant("acme", path));
        until(addr, |m| m["queue_size"] == i as u64 + 1);
    }
    hs.push(as_tenant("other", "/b0"));
    // Same address, no header: its own group, by address.
    hs.push(std::thread::spawn(move || get(addr, "/n0")));
    until(addr, |m| m["queue_size"] == 4);
    let m = metrics(addr);
    assert_eq!(m["active_groups"], 3, "{m:#}");
    assert_eq!(
        m["top_groups"][0],
        serde_json::json!({"group": "acme", "in_flight": 1, "queued": 2})
    );
    let groups: Vec<&str> = m["top_groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group"].as_str().unwrap())
        .collect();
    assert!(
        groups.contains(&"other") && groups.contains(&"127.0.0.1"),
        "{groups:?}"
    );
    for h in hs {
        assert_eq!(h.join().unwrap().status, 200);
    }
    let order: Vec<String> = up.received().into_iter().map(|r| r.target).collect();
    assert_eq!(order[0], "/a0?delay_ms=600");
    let mut next = order[1..3].to_vec();
    next.sort();
    assert_eq!(
        next,
        ["/b0", "/n0"],
        "the other groups before acme's queued ones"
    );
    assert_eq!(order[3..], ["/a1", "/a2"]);
}

#[test]
fn a_full_queue_gives_up_the_greedy_groups_newest_request_not_a_light_clients() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.max_concurrent_requests = 2;
        c.max_queue_size = 6;
    });
    let addr = s.addr();
    let hogs: Vec<_> = (0..8)
        .map(|i| background(addr, GREEDY, format!("/greedy{i}?delay_ms=1000")))
        .collect();
    until(addr, |m| m["active_requests"] == 2 && m["queue_size"] == 6);
    // The greedy client holds the whole queue: its own next request is refused.
    get_from(addr, GREEDY, "/greedy-more").assert_sluice_error(503, "queue_full");
    let lights: Vec<_> = LIGHT
        .iter()
        .map(|&from| background(addr, from, "/light".into()))
        .collect();
    for h in lights {
        assert_eq!(
            h.join().unwrap().status,
            200,
            "a light client is never refused"
        );
    }
    let statuses: Vec<u16> = hogs.into_iter().map(|h| h.join().unwrap().status).collect();
    let given_up = statuses.iter().filter(|&&st| st == 503).count();
    assert_eq!(
        given_up, 3,
        "one queued greedy request per light one: {statuses:?}"
    );
    let served: Vec<String> = up.received().into_iter().map(|r| r.target).collect();
    assert_eq!(
        served.len(),
        5 + 3,
        "a request given up is never forwarded: {served:?}"
    );
    assert_eq!(metrics(addr)["queue_rejected"], 4);
}

#[test]
fn max_client_requests_answers_429_client_limit_with_retry_after() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.max_concurrent_requests = 4;
        c.max_client_requests = 2;
    });
    let addr = s.addr();
    let busy: Vec<_> = (0..2)
        .map(|_| background(addr, GREEDY, "/slow?delay_ms=800".into()))
        .collect();
    until(addr, |m| m["active_requests"] == 2);
    let r = get_from(addr, GREEDY, "/third");
    r.assert_sluice_error(429, "client_limit");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        get_from(addr, LIGHT[0], "/other").status,
        200,
        "another group"
    );
    for h in busy {
        assert_eq!(h.join().unwrap().status, 200);
    }
    assert_eq!(
        get_from(addr, GREEDY, "/later").status,
        200,
        "under the cap again"
    );
    assert!(up.received().iter().all(|r| r.target != "/third"));
    assert_eq!(metrics(addr)["outcomes"]["client_limit"], 1);
}
