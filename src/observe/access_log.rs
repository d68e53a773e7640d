//! The end of every proxied request: metrics are recorded and, with `--access-log`, one JSON line
//! is written (time, request id, client, method, target, status, reason, attempts, timings, bytes).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;

use super::metrics::Metrics;
use crate::http::parse::RequestHead;
use crate::policy::fair::Group;
use crate::policy::outcome::{Finished, Outcome};

/// What is known about a request besides how it ended.
pub struct RequestCtx<'a> {
    pub method: &'a str,
    pub target: &'a str,
    pub request_id: &'a str,
    pub peer: SocketAddr,
    pub started: Instant,
    pub queue_wait: Duration,
    /// Its client group (`client_key`), once known.
    pub group: Option<&'a Group>,
}

impl<'a> RequestCtx<'a> {
    /// The context of a request whose head was read.
    pub fn new(
        head: &'a RequestHead,
        request_id: &'a str,
        peer: SocketAddr,
        started: Instant,
        queue_wait: Duration,
    ) -> Self {
        RequestCtx {
            method: head.method(),
            target: head.target(),
            request_id,
            peer,
            started,
            queue_wait,
            group: None,
        }
    }

    /// The same, with its client group.
    pub fn in_group(self, group: &'a Group) -> Self {
        RequestCtx {
            group: Some(group),
            ..self
        }
    }
}

/// Records a finished request in the metrics and, when `access_log` is on, the access log.
pub fn record(metrics: &Metrics, access_log: bool, ctx: &RequestCtx<'_>, fin: &Finished) {
    let took = ctx.started.elapsed();
    metrics.record(fin.outcome, took);
    if access_log {
        super::log::access(&line(ctx, fin, took));
    }
}

fn line(ctx: &RequestCtx<'_>, fin: &Finished, took: Duration) -> String {
    let reason = match fin.outcome {
        Outcome::Upstream(_) => "ok",
        other => other.label(),
    };
    json!({
        "time": super::log::now_rfc3339(),
        "request_id": ctx.request_id,
        "client": ctx.peer.to_string(),
        "group": ctx.group.map(Group::to_string),
        "method": ctx.method,
        "target": ctx.target,
        "status": fin.outcome.status(),
        "reason": reason,
        "attempts": fin.attempts,
        "queue_wait": ctx.queue_wait.as_secs_f64(),
        "upstream_time": fin.upstream_time.as_secs_f64(),
        "total_time": took.as_secs_f64(),
        "bytes_in": fin.bytes_in,
        "bytes_out": fin.bytes_out,
    })
    .to_string()
}
