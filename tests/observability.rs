//! `/proxy-metrics`, `/proxy-health` and Prometheus text end to end: after a scripted mix of
//! traffic every counter has its exact expected value, and a real Prometheus parser agrees.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// Runs a scripted mix and returns the sluice it ran on (and its upstream).
fn scripted_mix() -> (sluice::Running, sluice_tools::upstream::TestUpstream) {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.max_concurrent_requests = 1;
        c.max_queue_size = 0;
        c.max_retries = 0;
        c.circuit_breaker_threshold = 3;
        c.circuit_breaker_timeout = Duration::from_secs(60);
    });
    let mut c = Conn::open(s.addr());
    for _ in 0..20 {
        assert_eq!(c.get("/ok").status, 200);
    }
    for _ in 0..5 {
        assert_eq!(c.get("/?status=500").status, 500);
    }
    for _ in 0..3 {
        assert_eq!(c.get("/?status=404").status, 404);
    }
    let addr = s.addr();
    let slow = std::thread::spawn(move || get(addr, "/slow?delay_ms=2500"));
    // The slow request holds the one worker: the upstream has it, and it is the only one active
    // (a worker may still be finishing the previous request for a moment after its response).
    assert!(eventually(Duration::from_secs(3), || {
        up.received().iter().any(|r| r.target.starts_with("/slow"))
            && metrics(addr)["active_requests"] == 1
    }));
    for _ in 0..2 {
        get(addr, "/rejected").assert_sluice_error(503, "queue_full");
    }
    assert_eq!(slow.join().unwrap().status, 200);
    up.set_fail(Some(502));
    for _ in 0..3 {
        assert_eq!(c.get("/bad-gateway").status, 502);
    }
    for _ in 0..2 {
        c.get("/open").assert_sluice_error(503, "circuit_open");
    }
    up.set_fail(None);
    (s, up)
}

/// The keys of README's `metrics` table, in its order (`avg/min/…_response_time` expanded).
fn readme_metrics_keys() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = readme
        .split("`metrics` keys")
        .nth(1)
        .expect("README has the metrics table");
    let mut keys = Vec::new();
    for row in table.lines().skip_while(|l| !l.starts_with("| `")) {
        if !row.starts_with("| `") {
            break;
        }
        let cell = row.split('|').nth(1).unwrap_or_default();
        for name in cell.split('`').skip(1).step_by(2) {
            match name.split_once('_') {
                Some((stats, rest)) if stats.contains('/') => {
                    keys.extend(stats.split('/').map(|s| format!("{s}_{rest}")))
                }
                _ => keys.push(name.to_string()),
            }
        }
    }
    keys
}

/// Where each of `keys` (as `"key":`) first appears in `text`.
fn positions(text: &str, keys: &[String]) -> Vec<usize> {
    keys.iter()
        .map(|k| {
            text.find(&format!("\"{k}\":"))
                .unwrap_or_else(|| panic!("{k} missing from {text}"))
        })
        .collect()
}

#[test]
fn proxy_metrics_reads_like_the_python_services_in_readmes_order() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    assert_eq!(get(s.addr(), "/").status, 200);
    // A client that hangs up while the upstream works: counted in total_requests, as an abort.
    let mut c = Conn::open(s.addr());
    c.send(b"GET /?delay_ms=300 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(eventually(Duration::from_secs(3), || up.request_count() == 2));
    drop(c);
    assert!(eventually(Duration::from_secs(5), || {
        metrics(s.addr())["client_aborted_requests"] == 1
    }));
    let text = get(s.addr(), "/proxy-metrics").text();
    let top: Vec<String> = ["status", "uptime_seconds", "target", "metrics", "config"]
        .map(String::from)
        .to_vec();
    let at = positions(&text, &top);
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        "top-level order: {text}"
    );
    assert!(text.starts_with("{\"status\":"), "{text}");
    // The metrics block, up to its last key (`outcomes`), holds README's keys in README's order.
    let block = &text[at[3]..at[4]];
    let keys = readme_metrics_keys();
    assert_eq!(keys.first().map(String::as_str), Some("total_requests"));
    assert_eq!(keys.last().map(String::as_str), Some("outcomes"));
    let before_outcomes = &block[..block.find("\"outcomes\":").expect("outcomes")];
    let scalars = &keys[..keys.len() - 1];
    let at = positions(before_outcomes, scalars);
    for (w, k) in at.windows(2).zip(scalars.windows(2)) {
        assert!(
            w[0] < w[1],
            "{} comes before {} in README: {text}",
            k[0],
            k[1]
        );
    }
    let v: Value = serde_json::from_str(&text).unwrap();
    let m = v["metrics"].as_object().unwrap();
    assert_eq!(
        m.len(),
        keys.len(),
        "README lists every metrics key: {text}"
    );
    // total_requests = successful + failed + client_aborted (README).
    assert_eq!(m["total_requests"], 2);
    assert_eq!(m["successful_requests"], 1);
    assert_eq!(m["failed_requests"], 0);
    assert_eq!(m["client_aborted_requests"], 1);
}

#[test]
fn every_counter_has_its_exact_value_after_a_scripted_mix() {
    let (s, _up) = scripted_mix();
    let v = get(s.addr(), "/proxy-metrics").json();
    assert_eq!(v["status"], "running");
    assert!(v["uptime_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(v["target"], format!("http://127.0.0.1:{}", _up.port()));
    assert_eq!(v["config"]["max_concurrent_requests"], 1);
    let m = &v["metrics"];
    let expect = [
        ("total_requests", 36),
        ("successful_requests", 24),
        ("failed_requests", 12),
        ("timeout_requests", 0),
        ("queue_rejected", 2),
        ("queue_timeouts", 0),
        ("circuit_rejected", 2),
        ("retried_requests", 0),
        ("retry_attempts", 0),
        ("active_requests", 0),
        ("queue_size", 0),
        ("max_queue_size", 0),
        ("available_slots", 1),
        ("max_concurrent_requests", 1),
        ("consecutive_failures", 3),
    ];
    for (key, want) in expect {
        assert_eq!(m[key], want, "metrics.{key}");
    }
    let rate = m["success_rate"].as_f64().unwrap();
    assert!(
        (rate - 24.0 * 100.0 / 36.0).abs() < 1e-9,
        "success_rate {rate}"
    );
    assert_eq!(m["circuit_open"], true);
    assert_eq!(m["circuit_state"], "open");
    for key in [
        "avg_response_time",
        "min_response_time",
        "max_response_time",
        "p50_response_time",
        "p95_response_time",
        "p99_response_time",
        "requests_per_second",
    ] {
        assert!(m[key].is_number(), "metrics.{key} missing");
    }
    assert!(
        m["max_response_time"].as_f64().unwrap() >= 2.5,
        "the 2.5 s request is the max"
    );
    let h = get(s.addr(), "/proxy-health");
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "degraded");
    assert_eq!(h.json()["circuit_state"], "open");
}

#[test]
fn percentiles_of_a_known_delay_distribution() {
    let up = upstream();
    let s = sluice(up.port(), |c| c.max_concurrent_requests = 4);
    let mut c = Conn::open(s.addr());
    for ms in [10, 50, 100] {
        for _ in 0..20 {
            c.get(&format!("/?delay_ms={ms}"));
        }
    }
    let m = metrics(s.addr());
    let near = |key: &str, want: f64| {
        let got = m[key].as_f64().unwrap();
        assert!(
            got >= want * 0.99 && got <= want * 1.10 + 0.003,
            "{key}: {got} vs {want}"
        );
    };
    near("p50_response_time", 0.050);
    near("p95_response_time", 0.100);
    near("p99_response_time", 0.100);
    near("min_response_time", 0.010);
    near("avg_response_time", 0.160 / 3.0);
}

#[test]
fn prometheus_text_parses_and_agrees_with_the_json() {
    let (s, _up) = scripted_mix();
    let r = get(s.addr(), "/proxy-metrics/prometheus");
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let fams = parse_prometheus(&r.text());
    let m = metrics(s.addr());
    assert_eq!(fams["sluice_requests"]["type"], "counter");
    let total: f64 = fams["sluice_requests"]["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[2].as_f64().unwrap())
        .sum();
    assert_eq!(
        total,
        m["total_requests"].as_f64().unwrap(),
        "admin requests are counted in neither"
    );
    for (outcome, json_key) in [
        ("queue_full", "queue_rejected"),
        ("circuit_open", "circuit_rejected"),
    ] {
        assert_eq!(
            sample(
                &fams,
                "sluice_requests",
                "sluice_requests_total",
                Some(("outcome", outcome))
            ),
            m[json_key].as_f64().unwrap()
        );
    }
    assert_eq!(
        sample(
            &fams,
            "sluice_requests",
            "sluice_requests_total",
            Some(("outcome", "ok"))
        ),
        24.0
    );
    assert_eq!(
        sample(
            &fams,
            "sluice_requests",
            "sluice_requests_total",
            Some(("outcome", "upstream_5xx"))
        ),
        8.0
    );

    let hist = &fams["sluice_request_duration_seconds"];
    assert_eq!(hist["type"], "histogram");
    let buckets: Vec<(f64, f64)> = hist["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s[0] == "sluice_request_duration_seconds_bucket")
        .map(|s| {
            (
                s[1]["le"].as_str().unwrap().parse::<f64>().unwrap(),
                s[2].as_f64().unwrap(),
            )
        })
        .collect();
    assert!(
        buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
        "cumulative and ordered"
    );
    assert!(buckets.last().unwrap().0.is_infinite());
    let count = sample(
        &fams,
        "sluice_request_duration_seconds",
        "sluice_request_duration_seconds_count",
        None,
    );
    assert_eq!(buckets.last().unwrap().1, count);
    assert_eq!(count, total);
    assert!(
        sample(
            &fams,
            "sluice_request_duration_seconds",
            "sluice_request_duration_seconds_sum",
            None
        ) >= 2.5
    );

    assert_eq!(
        sample(&fams, "sluice_circuit_state", "sluice_circuit_state", None),
        1.0
    );
    assert_eq!(
        sample(
            &fams,
            "sluice_circuit_transitions",
            "sluice_circuit_transitions_total",
            Some(("to", "open"))
        ),
        1.0
    );
    assert_eq!(
        sample(
            &fams,
            "sluice_queue_capacity",
            "sluice_queue_capacity",
            None
        ),
        0.0
    );
    assert_eq!(
        sample(
            &fams,
            "sluice_inflight_requests",
            "sluice_inflight_requests",
            None
        ),
        0.0
    );
    assert_eq!(
        sample(
            &fams,
            "sluice_upstream_attempts",
            "sluice_upstream_attempts_total",
            None
        ),
        32.0
    );
    for fam in [
        "sluice_retries",
        "sluice_queue_depth",
        "sluice_client_connections",
    ] {
        assert!(fams.get(fam).is_some(), "{fam} missing");
    }
}

#[test]
fn admin_endpoints_answer_while_the_breaker_is_open_and_the_queue_is_full() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.max_concurrent_requests = 1;
        c.max_queue_size = 0;
    });
    let addr = s.addr();
    let slow = std::thread::spawn(move || get(addr, "/slow?delay_ms=2000"));
    // The slow request holds the one worker: the upstream has it, and it is the only one active
    // (a worker may still be finishing the previous request for a moment after its response).
    assert!(eventually(Duration::from_secs(3), || {
        up.received().iter().any(|r| r.target.starts_with("/slow"))
            && metrics(addr)["active_requests"] == 1
    }));
    get(addr, "/x").assert_sluice_error(503, "queue_full");
    for path in [
        "/proxy-health",
        "/proxy-metrics",
        "/proxy-metrics/prometheus",
        "/proxy-dashboard",
    ] {
        assert_eq!(
            get(addr, path).status,
            200,
            "{path} while the queue is full"
        );
    }
    let h = get(addr, "/proxy-health").json();
    assert_eq!(
        (h["active_requests"].as_u64(), h["queue_size"].as_u64()),
        (Some(1), Some(0))
    );
    slow.join().unwrap();
}

#[test]
fn dashboard_is_one_html_page_and_a_revalidation_is_304() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    let page = get(s.addr(), "/proxy-dashboard?every=5");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page.text().contains("fetch('proxy-metrics'"));
    let etag = page.header("etag").unwrap().to_string();
    let again = send(
        s.addr(),
        format!("GET /proxy-dashboard HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(again.status, 304);
    assert!(again.text().is_empty());
    let m = metrics(s.addr());
    assert!(m["p50_queue_wait"].is_number() && m["p95_queue_wait"].is_number());
    assert_eq!(up.request_count(), 0, "never forwarded");
}

#[test]
fn access_log_has_one_json_line_per_request() {
    let up = upstream();
    let mut p =
        Proc::in_front_of_keeping_stdout(up.port(), &["--access-log", "--max-retries", "0"]);
    let addr = p.addr;
    send(
        addr,
        b"GET /a?status=404 HTTP/1.1\r\nHost: t\r\nX-Request-Id: log-1\r\n\r\n",
    );
    send(
        addr,
        b"POST /b?reset=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
    );
    std::thread::sleep(Duration::from_millis(100));
    let out = p.stdout_after_kill();
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["request_id"], "log-1");
    assert_eq!(
        (lines[0]["status"].as_u64(), lines[0]["reason"].as_str()),
        (Some(404), Some("ok"))
    );
    assert_eq!(
        (lines[0]["method"].as_str(), lines[0]["target"].as_str()),
        (Some("GET"), Some("/a?status=404"))
    );
    assert_eq!(
        (lines[1]["status"].as_u64(), lines[1]["reason"].as_str()),
        (Some(502), Some("upstream_error"))
    );
    assert_eq!(lines[1]["bytes_in"], 3);
    assert_eq!(
        lines[0]["group"], "127.0.0.1",
        "its client_key group: the address"
    );
    for key in [
        "time",
        "client",
        "attempts",
        "queue_wait",
        "upstream_time",
        "total_time",
        "bytes_out",
    ] {
        assert!(lines[0].get(key).is_some(), "{key} missing");
    }
}

/// Response-time statistics are those of proxied requests: a burst of instant refusals does not
/// pull the average down (and silence an "avg > 5 s" alert) while the upstream is slow.
#[test]
fn instant_refusals_do_not_dilute_the_response_time_statistics() {
    let up = upstream();
    let s = overloaded(&up);
    let addr = s.addr();
    let m = metrics(addr);
    assert_eq!(m["queue_rejected"], 50);
    assert!(m["avg_response_time"].as_f64().unwrap() >= 0.39, "{m}"); // histogram: ±1 %
    assert!(m["min_response_time"].as_f64().unwrap() >= 0.39, "{m}");
}
