//! The admin endpoints, answered by the front end and never queued, so they work while
//! the queue is full or the breaker is open: `/proxy-health`, `/proxy-metrics` (the Python
//! service's JSON keys), `/proxy-metrics/prometheus` (text format 0.0.4) and
//! `/proxy-dashboard` (a static page: `dashboard.rs`).

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::http::parse::{Framing, RequestHead};
use crate::http::write::Simple;
use crate::observe::lookup::Lookup;
use crate::policy::breaker::State;
use crate::policy::connection::keep_alive;
use crate::policy::fair::Load;
use crate::policy::health::{CheckView, Health};
use crate::policy::route::{path_only, DASHBOARD, HEALTH, METRICS};
use crate::pool::handoff::Job;
use crate::pool::queue::Queue;
use crate::state::Shared;

/// The response to an admin request, and whether the connection stays open after it.
/// `queue`: the job queue, for what waits in it now.
pub fn answer(shared: &Shared, queue: &Queue<Job>, head: &RequestHead) -> (Vec<u8>, bool) {
    let queued = queue.len();
    let keep = keep_alive(head, head.framing == Framing::None, shared.draining());
    if path_only(head.path()) == DASHBOARD && matches!(head.method(), "GET" | "HEAD") {
        return (super::dashboard::answer(head, keep), keep);
    }
    let (status, ctype, body) = if !matches!(head.method(), "GET" | "HEAD") {
        (
            405,
            "application/json",
            json!({"error": "method_not_allowed"}).to_string(),
        )
    } else {
        match path_only(head.path()) {
            HEALTH => {
                let (status, v) = health(shared, queued);
                (status, "application/json", v.to_string())
            }
            METRICS => (
                200,
                "application/json",
                metrics_json(shared, queued, queue.groups(TOP_GROUPS)).to_string(),
            ),
            _ => (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                prometheus(shared, queued),
            ),
        }
    };
    let bytes = Simple {
        status,
        content_type: ctype,
        body: body.as_bytes(),
        extra: &[("Cache-Control", "no-store"), ("Allow", "GET, HEAD")]
            [usize::from(status != 405)..],
        close: !keep,
        http10: head.http10,
        head_only: head.is_head(),
    }
    .to_bytes();
    (bytes, keep)
}

/// `/proxy-health`: 200 healthy or degraded (breaker not closed), 503 while draining.
pub fn health(shared: &Shared, queued: usize) -> (u16, Value) {
    if shared.draining() {
        return (503, json!({"status": "draining"}));
    }
    let b = shared.breaker_view();
    let status = if b.state == State::Closed {
        "healthy"
    } else {
        "degraded"
    };
    let mut v = json!({
        "status": status,
        "circuit_state": b.state.as_str(),
        "active_requests": active(shared),
        "queue_size": queued,
        "health_check": check_json(b.checks),
    });
    target_lookup(shared, &mut v);
    (200, v)
}

/// `target_resolves` (null until the first look-up) and, when false, `target_error`: the
/// name's look-up is not the upstream's health, so neither changes `status`.
fn target_lookup(shared: &Shared, v: &mut Value) {
    let (resolves, error) = match shared.target_lookup.get() {
        Lookup::Pending => (Value::Null, None),
        Lookup::Resolves => (Value::Bool(true), None),
        Lookup::Fails(e) => (Value::Bool(false), Some(e)),
    };
    v["target_resolves"] = resolves;
    if let Some(e) = error {
        v["target_error"] = Value::String(e);
    }
}

/// The health checks' state and last result (README "Health checks"); `state` is `off`,
/// `healthy` or `unhealthy`, the rest `null` until a check has ended.
fn check_json(checks: Option<CheckView>) -> Value {
    let last = checks.and_then(|c| c.last);
    json!({
        "state": checks.map_or("off", |c| c.health.as_str()),
        "last_status": last.and_then(|l| l.result.status()),
        "last_error": last.and_then(|l| l.result.error()),
        "last_latency": last.map(|l| l.latency.as_secs_f64()),
        "seconds_since_last": last.map(|l| l.at.elapsed().as_secs_f64()),
    })
}

fn active(shared: &Shared) -> u64 {
    shared.metrics.active_requests.load(Relaxed).max(0) as u64
}

/// How many client groups `/proxy-metrics` lists in `top_groups`.
const TOP_GROUPS: usize = 10;

/// `/proxy-metrics`: the Python service's keys, seconds as floats, success_rate in percent. The
/// keys come out in the order written here (serde_json's `preserve_order`), which is README's:
/// `status, uptime_seconds, target, metrics, config`, the metrics in README's table order with
/// `outcomes` last, so `watch 'curl … | jq'` shows the watch signals first.
/// `groups`: the client groups with a request in a worker or waiting, and the top ones.
pub fn metrics_json(shared: &Shared, queued: usize, groups: (usize, Vec<Load>)) -> Value {
    let m = &shared.metrics;
    let cfg = shared.config();
    let lat = m.latency();
    let b = shared.breaker_view();
    let c = m.counts();
    let (total, successful, aborted, failed) =
        (c.total, c.successful, c.client_aborted, c.failed());
    let judged = successful + failed;
    let success_rate = if judged == 0 {
        100.0
    } else {
        successful as f64 * 100.0 / judged as f64
    };
    let active = active(shared);
    let qw = m.queue_wait();
    let hc = check_json(b.checks);
    json!({
        "status": if shared.draining() { "draining" } else { "running" },
        "uptime_seconds": m.uptime().as_secs_f64(),
        "version": env!("CARGO_PKG_VERSION"),
        "target": cfg.target_base(),
        "metrics": {
            "total_requests": total,
            "successful_requests": successful,
            "failed_requests": failed,
            "client_aborted_requests": aborted,
            "success_rate": success_rate,
            "timeout_requests": c.of("upstream_timeout") + c.of("connect_timeout"),
            "queue_rejected": c.of("queue_full"),
            "queue_timeouts": c.of("queue_timeout"),
            "circuit_rejected": c.of("circuit_open"),
            "retried_requests": m.retried_requests.load(Relaxed),
            "retry_attempts": m.retry_attempts.load(Relaxed),
            "upstream_attempts": m.upstream_attempts.load(Relaxed),
            "active_requests": active,
            "available_slots": (shared.workers as u64).saturating_sub(active),
            "max_concurrent_requests": shared.workers,
            "queue_size": queued,
            "max_queue_size": shared.queue_capacity,
            "active_groups": groups.0,
            "top_groups": groups.1.iter().map(|l| json!({
                "group": l.group.to_string(),
                "in_flight": l.in_flight,
                "queued": l.queued,
            })).collect::<Vec<Value>>(),
            "client_connections": m.client_connections.load(Relaxed).max(0),
            "avg_response_time": lat.mean,
            "min_response_time": lat.min,
            "max_response_time": lat.max,
            "p50_response_time": lat.p50,
            "p95_response_time": lat.p95,
            "p99_response_time": lat.p99,
            "avg_queue_wait": qw.mean,
            "p50_queue_wait": qw.p50,
            "p95_queue_wait": qw.p95,
            "p99_queue_wait": qw.p99,
            "requests_per_second": m.requests_per_second(),
            "circuit_open": b.refusing,
            "circuit_state": b.state.as_str(),
            "consecutive_failures": b.consecutive_failures,
            "circuit_times_opened": b.times_opened,
            "seconds_since_circuit_transition": b.since_transition,
            "health_check_state": hc["state"],
            "health_check_last_status": hc["last_status"],
            "health_check_last_error": hc["last_error"],
            "health_check_last_latency": hc["last_latency"],
            "seconds_since_health_check": hc["seconds_since_last"],
            "health_checks_passed": m.health_checks_passed.load(Relaxed),
            "health_checks_failed": m.health_checks_failed.load(Relaxed),
            "access_log_dropped": m.access_log_dropped(),
            "log_dropped": m.log_dropped(),
            "outcomes": c
                .by_label
                .iter()
                .map(|(k, v)| (k.to_string(), Value::from(*v)))
                .collect::<serde_json::Map<String, Value>>(),
        },
        "config": cfg.to_json(),
    })
}

/// Prometheus text exposition format 0.0.4.
pub fn prometheus(shared: &Shared, queued: usize) -> String {
    let m = &shared.metrics;
    let mut o = String::with_capacity(4096);
    let head = self::head;
    head(
        &mut o,
        "sluice_requests_total",
        "counter",
        "Proxied requests, by how they ended.",
    );
    for (label, n) in m.outcomes() {
        let _ = writeln!(o, "sluice_requests_total{{outcome=\"{label}\"}} {n}");
    }
    let histogram = |o: &mut String, name: &str, help: &str, h: (Vec<(f64, u64)>, f64, u64)| {
        head(o, name, "histogram", help);
        let (buckets, sum, count) = h;
        for (le, n) in buckets {
            let _ = writeln!(o, "{name}_bucket{{le=\"{le}\"}} {n}");
        }
        let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(o, "{name}_sum {sum}\n{name}_count {count}");
    };
    histogram(
        &mut o,
        "sluice_request_duration_seconds",
        "Time from request head parsed to last response byte written.",
        m.duration_histogram(),
    );
    histogram(
        &mut o,
        "sluice_proxied_request_duration_seconds",
        "The same, of requests that reached the upstream only (sluice's own refusals are not in it).",
        m.proxied_duration_histogram(),
    );
    let b = shared.breaker_view();
    let simple: [(&str, &str, &str, f64); 10] = [
        (
            "sluice_upstream_attempts_total",
            "counter",
            "Attempts sent to the upstream, retries included.",
            m.upstream_attempts.load(Relaxed) as f64,
        ),
        (
            "sluice_retries_total",
            "counter",
            "Retry attempts (attempts after the first).",
            m.retry_attempts.load(Relaxed) as f64,
        ),
        (
            "sluice_retried_requests_total",
            "counter",
            "Requests that needed at least one retry.",
            m.retried_requests.load(Relaxed) as f64,
        ),
        (
            "sluice_inflight_requests",
            "gauge",
            "Requests held by a worker.",
            active(shared) as f64,
        ),
        (
            "sluice_queue_depth",
            "gauge",
            "Requests waiting for a worker.",
            queued as f64,
        ),
        (
            "sluice_queue_capacity",
            "gauge",
            "The queue's size limit (max_queue_size).",
            shared.queue_capacity as f64,
        ),
        (
            "sluice_workers",
            "gauge",
            "Worker threads (max_concurrent_requests).",
            shared.workers as f64,
        ),
        (
            "sluice_circuit_state",
            "gauge",
            "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
            f64::from(b.state.as_gauge()),
        ),
        (
            "sluice_client_connections",
            "gauge",
            "Open client connections.",
            m.client_connections.load(Relaxed).max(0) as f64,
        ),
        (
            "sluice_uptime_seconds",
            "gauge",
            "Seconds since start.",
            m.uptime().as_secs_f64(),
        ),
    ];
    for (name, kind, help, v) in simple {
        head(&mut o, name, kind, help);
        let _ = writeln!(o, "{name} {v}");
    }
    head(
        &mut o,
        "sluice_circuit_transitions_total",
        "counter",
        "Circuit breaker state changes, by the state entered.",
    );
    for (i, n) in shared.transitions().iter().enumerate() {
        let to = ["closed", "open", "half_open"][i];
        let _ = writeln!(o, "sluice_circuit_transitions_total{{to=\"{to}\"}} {n}");
    }
    health_checks(&mut o, shared, &b.checks);
    head(
        &mut o,
        "sluice_worker_panics_total",
        "counter",
        "Requests or connections whose handling panicked (the worker or the front end lived on).",
    );
    let _ = writeln!(
        o,
        "sluice_worker_panics_total {}",
        m.worker_panics.load(Relaxed)
    );
    for (name, help, n) in [
        (
            "sluice_access_log_dropped_total",
            "Access-log lines dropped: stdout did not take them (a reader that stalls).",
            m.access_log_dropped(),
        ),
        (
            "sluice_log_dropped_total",
            "Log lines dropped: stderr did not take them (a reader that stalls).",
            m.log_dropped(),
        ),
    ] {
        head(&mut o, name, "counter", help);
        let _ = writeln!(o, "{name} {n}");
    }
    o
}

fn head(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The health-check families: whether checks are on, what they say, the last one's duration
/// and time, and the count of checks by result.
fn health_checks(o: &mut String, shared: &Shared, checks: &Option<CheckView>) {
    let m = &shared.metrics;
    let last = checks.and_then(|c| c.last);
    let at = last.map_or(0.0, |l| {
        let ago = Instant::now().saturating_duration_since(l.at);
        SystemTime::now()
            .checked_sub(ago)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64())
    });
    let up = checks.is_some_and(|c| c.health == Health::Healthy);
    let gauges: [(&str, &str, f64); 4] = [
        (
            "sluice_health_check_enabled",
            "Health checks are on (health_check_path set): 1, else 0.",
            f64::from(u8::from(checks.is_some())),
        ),
        (
            "sluice_health_check_up",
            "What the health checks say: 1 healthy, 0 unhealthy or checks off.",
            f64::from(u8::from(up)),
        ),
        (
            "sluice_health_check_last_duration_seconds",
            "How long the last health check took (0 before the first).",
            last.map_or(0.0, |l| l.latency.as_secs_f64()),
        ),
        (
            "sluice_health_check_last_timestamp_seconds",
            "Unix time the last health check ended (0 before the first).",
            at,
        ),
    ];
    for (name, help, v) in gauges {
        head(o, name, "gauge", help);
        let _ = writeln!(o, "{name} {v}");
    }
    head(
        o,
        "sluice_health_checks_total",
        "counter",
        "Health checks by result: pass (a status below 500 in time) or fail.",
    );
    for (result, n) in [
        ("pass", &m.health_checks_passed),
        ("fail", &m.health_checks_failed),
    ] {
        let _ = writeln!(
            o,
            "sluice_health_checks_total{{result=\"{result}\"}} {}",
            n.load(Relaxed)
        );
    }
}
