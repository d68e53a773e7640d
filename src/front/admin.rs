//! The admin endpoints, answered by the front end and never queued, so they work while
//! the queue is full or the breaker is open: `/proxy-health`, `/proxy-metrics` (the Python
//! service's JSON keys), `/proxy-metrics/prometheus` (text format 0.0.4) and
//! `/proxy-dashboard` (a static page: `dashboard.rs`).

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use serde_json::{json, Value};

use crate::http::parse::{Framing, RequestHead};
use crate::http::write::Simple;
use crate::observe::lookup::Lookup;
use crate::policy::breaker::State;
use crate::policy::connection::keep_alive;
use crate::policy::route::{path_only, DASHBOARD, HEALTH, METRICS};
use crate::state::Shared;

/// The response to an admin request, and whether the connection stays open after it.
/// `queued`: requests waiting in the queue now.
pub fn answer(shared: &Shared, queued: usize, head: &RequestHead) -> (Vec<u8>, bool) {
    let keep = keep_alive(head, head.framing == Framing::None, false);
    if path_only(&head.path) == DASHBOARD && matches!(head.method.as_str(), "GET" | "HEAD") {
        return (super::dashboard::answer(head, keep), keep);
    }
    let (status, ctype, body) = if !matches!(head.method.as_str(), "GET" | "HEAD") {
        (
            405,
            "application/json",
            json!({"error": "method_not_allowed"}).to_string(),
        )
    } else {
        match path_only(&head.path) {
            HEALTH => {
                let (status, v) = health(shared, queued);
                (status, "application/json", v.to_string())
            }
            METRICS => (
                200,
                "application/json",
                metrics_json(shared, queued).to_string(),
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

fn active(shared: &Shared) -> u64 {
    shared.metrics.active_requests.load(Relaxed).max(0) as u64
}

/// `/proxy-metrics`: the Python service's keys, seconds as floats, success_rate in percent.
pub fn metrics_json(shared: &Shared, queued: usize) -> Value {
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
            "timeout_requests": c.of("upstream_timeout") + c.of("connect_timeout"),
            "queue_rejected": c.of("queue_full"),
            "queue_timeouts": c.of("queue_timeout"),
            "circuit_rejected": c.of("circuit_open"),
            "retried_requests": m.retried_requests.load(Relaxed),
            "retry_attempts": m.retry_attempts.load(Relaxed),
            "upstream_attempts": m.upstream_attempts.load(Relaxed),
            "active_requests": active,
            "queue_size": queued,
            "max_queue_size": shared.queue_capacity,
            "available_slots": (shared.workers as u64).saturating_sub(active),
            "max_concurrent_requests": shared.workers,
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
            "success_rate": success_rate,
            "requests_per_second": m.requests_per_second(),
            "circuit_open": b.refusing,
            "circuit_state": b.state.as_str(),
            "consecutive_failures": b.consecutive_failures,
            "circuit_times_opened": b.times_opened,
            "seconds_since_circuit_transition": b.since_transition,
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
    let head = |o: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    head(
        &mut o,
        "sluice_requests_total",
        "counter",
        "Proxied requests, by how they ended.",
    );
    for (label, n) in m.outcomes() {
        let _ = writeln!(o, "sluice_requests_total{{outcome=\"{label}\"}} {n}");
    }
    head(
        &mut o,
        "sluice_request_duration_seconds",
        "histogram",
        "Time from request head parsed to last response byte written.",
    );
    let (buckets, sum, count) = m.duration_histogram();
    for (le, n) in buckets {
        let _ = writeln!(
            o,
            "sluice_request_duration_seconds_bucket{{le=\"{le}\"}} {n}"
        );
    }
    let _ = writeln!(
        o,
        "sluice_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
    );
    let _ = writeln!(o, "sluice_request_duration_seconds_sum {sum}");
    let _ = writeln!(o, "sluice_request_duration_seconds_count {count}");
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
    o
}
