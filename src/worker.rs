//! The worker pool: `max_concurrent_requests` threads drain the bounded queue. Each job is
//! checked against the queue deadline and the breaker, forwarded, recorded, and a kept-alive
//! connection handed back to the front end. A panic while handling one request is caught; the worker lives on.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::access_log::{self, RequestCtx};
use crate::admission::Ticket;
use crate::breaker::{Admit, Verdict};
use crate::forward::{self, COPY_BUFFER};
use crate::front::{Back, Client};
use crate::http::parse::{Framing, RequestHead};
use crate::metrics::Outcome;
use crate::queue::Queue;
use crate::reason::Reason;
use crate::slot::Slot;
use crate::state::{InProgress, Shared};

/// A request with its connection, parked in a slot while it waits for a worker.
pub struct Parked {
    pub client: Client,
    pub head: RequestHead,
    pub request_id: String,
    /// When its head was parsed: response time and queue wait count from here.
    pub started: Instant,
    pub in_progress: InProgress,
}

/// One queued request: the slot holding it (which the front end may empty first when the
/// request's queue time runs out).
pub struct Job {
    pub slot: Arc<Slot<Parked>>,
    /// Held until the worker is done with the job; counts it against the admission limit.
    pub ticket: Ticket,
}

pub fn spawn(shared: &Arc<Shared>, back: &Back) -> Vec<JoinHandle<()>> {
    (0..shared.workers)
        .filter_map(|i| {
            let (shared, back) = (shared.clone(), back.clone());
            std::thread::Builder::new()
                .name(format!("sluice-worker-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || run(&shared, &back))
                .map_err(|e| crate::error!("could not start worker {i}: {e}"))
                .ok()
        })
        .collect()
}

fn run(shared: &Shared, back: &Back) {
    let mut scratch = vec![0u8; COPY_BUFFER];
    drain(shared, &shared.queue, |job| {
        handle(shared, job, &mut scratch, back)
    });
}

/// Takes jobs until the queue closes or sluice stops. A panic while handling one job is caught
/// and counted; the loop (this worker) goes on with the next job.
fn drain<J>(shared: &Shared, queue: &Queue<J>, mut handle: impl FnMut(J)) {
    loop {
        let Some(job) = queue.pop_timeout(Duration::from_millis(500)) else {
            if shared.stopping() {
                return;
            }
            continue;
        };
        if catch_unwind(AssertUnwindSafe(|| handle(job))).is_err() {
            shared.metrics.worker_panics.fetch_add(1, Relaxed);
            crate::error!("worker panicked; that request's connection was closed");
        }
    }
}

/// Counts a request in `active_requests` while it is held by a worker (panics included).
struct Active<'a>(&'a Shared);

impl<'a> Active<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared.metrics.active_requests.fetch_add(1, Relaxed);
        Active(shared)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.metrics.active_requests.fetch_sub(1, Relaxed);
    }
}

fn handle(shared: &Shared, job: Job, scratch: &mut [u8], back: &Back) {
    let Job { slot, ticket } = job;
    let Some(parked) = slot.take() else {
        return; // the front end answered 503 queue_timeout already
    };
    let active = Active::new(shared);
    let cfg = shared.config();
    let Parked {
        mut client,
        head,
        request_id,
        started,
        in_progress,
    } = parked;
    let waited = started.elapsed();
    shared.metrics.record_queue_wait(waited);
    // The front end reads heads without blocking; a worker blocks, under its timeouts.
    if client.io.stream().set_nonblocking(false).is_err() {
        return;
    }
    let (conn, rid) = (&mut client.io, request_id.as_str());
    let body_done = head.framing == Framing::None;
    let admit = (waited <= cfg.queue_timeout).then(|| shared.admit());
    let fin = match admit {
        None => forward::answer(conn, &head, Reason::QueueTimeout, rid, None, body_done),
        Some(Admit::Reject { retry_after }) => {
            let secs = crate::breaker::retry_after_secs(retry_after);
            forward::answer(conn, &head, Reason::CircuitOpen, rid, Some(secs), body_done)
        }
        Some(Admit::Pass) => forward::proxy(shared, &cfg, conn, &head, rid, false, scratch),
        Some(Admit::Probe) => {
            let guard = ProbeGuard(Some(shared));
            let fin = forward::proxy(shared, &cfg, conn, &head, rid, true, scratch);
            std::mem::forget(guard);
            fin
        }
    };
    if let Some(a @ (Admit::Pass | Admit::Probe)) = admit {
        shared.record_verdict(verdict(fin.outcome), a == Admit::Probe);
    }
    let ctx = RequestCtx::new(&head, rid, conn.peer, started, waited);
    access_log::record(shared, &ctx, &fin);
    // Before the hand-back, so the client's next request finds this worker free.
    drop((ticket, active, in_progress));
    if fin.keep_alive {
        back.give(client);
    }
}

/// Frees the breaker's probe slot if the probe request panics, so the breaker cannot stay
/// half-open with a probe that will never report.
struct ProbeGuard<'a>(Option<&'a Shared>);

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            shared.record_verdict(Verdict::Neutral, true);
        }
    }
}

/// What an outcome tells the breaker about the upstream.
pub fn verdict(outcome: Outcome) -> Verdict {
    match outcome {
        Outcome::Upstream(502..=504) | Outcome::Truncated => Verdict::Failure,
        Outcome::Upstream(_) => Verdict::Success,
        Outcome::Sluice(
            Reason::ConnectFailed
            | Reason::ConnectTimeout
            | Reason::UpstreamTimeout
            | Reason::UpstreamError,
        ) => Verdict::Failure,
        Outcome::Sluice(_) | Outcome::ClientAbort => Verdict::Neutral,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_request_does_not_kill_its_worker() {
        let shared = Shared::new(crate::Config {
            target_host: "127.0.0.1".into(),
            log_level: crate::config::LogLevel::Error,
            ..crate::Config::default()
        });
        let jobs = Queue::new(3);
        for n in 0..3 {
            jobs.try_push(n).unwrap();
        }
        shared.stop();
        let mut served = Vec::new();
        drain(&shared, &jobs, |n: u32| {
            assert!(n != 1, "request 1 panics");
            served.push(n);
        });
        assert_eq!(served, [0, 2], "the job after the panic was still served");
        assert_eq!(shared.metrics.worker_panics.load(Relaxed), 1);
    }

    #[test]
    fn breaker_counts_gateway_failures_but_not_application_errors() {
        assert_eq!(verdict(Outcome::Upstream(503)), Verdict::Failure);
        assert_eq!(verdict(Outcome::Upstream(500)), Verdict::Success);
        assert_eq!(verdict(Outcome::Upstream(404)), Verdict::Success);
        assert_eq!(
            verdict(Outcome::Sluice(Reason::ConnectFailed)),
            Verdict::Failure
        );
        assert_eq!(
            verdict(Outcome::Sluice(Reason::QueueFull)),
            Verdict::Neutral
        );
        assert_eq!(verdict(Outcome::ClientAbort), Verdict::Neutral);
        assert_eq!(verdict(Outcome::Truncated), Verdict::Failure);
    }
}
