//! The worker pool: `max_concurrent_requests` threads drain the bounded queue. Each job is
//! checked once more for refusal (queue time, breaker — `policy/refusal.rs`), forwarded through
//! the upstream client, recorded, and a kept-alive connection handed back to the front end —
//! or kept for its next request while no one else needs this worker (`keep.rs`). A
//! panic while handling one request is caught; the worker lives on.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::handoff::{Back, Client, Job, Parked};
use super::keep::{self, Next};
use super::marks::{UnlessForwarded, WorkerMarks};
use super::queue::{Queue, Serving};
use crate::answer;
use crate::http::parse::Framing;
use crate::observe::access_log::RequestCtx;
use crate::policy::admission::Ticket;
use crate::policy::breaker::Admit;
use crate::policy::outcome::{Finished, Outcome};
use crate::policy::reason::Reason;
use crate::policy::refusal::{refusal, Gate, Refusal};
use crate::state::Shared;
use crate::upstream::agent::UpstreamClient;
use crate::upstream::attempt::forward;
use crate::upstream::cancel::Current;
use crate::upstream::exchange::{Exchange, COPY_BUFFER};
use crate::upstream::transport::give_back_idle;

/// What every worker shares.
#[derive(Clone)]
pub struct Pool {
    pub shared: Arc<Shared>,
    pub queue: Arc<Queue<Job>>,
    pub upstream: Arc<UpstreamClient>,
    pub back: Back,
}

/// Worker threads' stack: the deepest path (a TLS handshake inside ureq) fits with room.
const STACK: usize = 256 * 1024;

pub fn spawn(pool: &Pool) -> Vec<JoinHandle<()>> {
    (0..pool.shared.workers)
        .filter_map(|i| {
            let pool = pool.clone();
            std::thread::Builder::new()
                .name(format!("sluice-worker-{i}"))
                .stack_size(STACK)
                .spawn(move || run(&pool))
                .map_err(|e| crate::error!("could not start worker {i}: {e}"))
                .ok()
        })
        .collect()
}

/// How many workers should run at once for the queue to wake no more (`runnable.rs`): two per
/// core keeps every core busy while one worker is between system calls.
pub fn run_cap() -> usize {
    2 * std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn run(pool: &Pool) {
    pool.queue.worker_started();
    crate::runnable::register(Arc::new(WorkerMarks(pool.queue.clone())));
    let mut scratch = vec![0u8; COPY_BUFFER];
    drain(&pool.shared, &pool.queue, |serving, job| {
        handle(pool, serving, job, &mut scratch)
    });
}

/// Takes jobs until the queue closes or sluice stops. A panic while handling one job is caught
/// and counted; the loop (this worker) goes on with the next job.
fn drain<'q, J>(shared: &Shared, queue: &'q Queue<J>, mut handle: impl FnMut(Serving<'q, J>, J)) {
    loop {
        let popped = queue.pop_or_sleep(Duration::from_millis(500), give_back_idle);
        let Some((serving, job)) = popped else {
            if shared.stopping() {
                return;
            }
            continue;
        };
        if catch_unwind(AssertUnwindSafe(|| handle(serving, job))).is_err() {
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

/// The breaker's word on a request that was not refused for its queue time (taking the
/// half-open probe slot is a state change, so it is asked only here, once). `may_probe`: the
/// request's body is all here, so its client cannot hold the probe open.
fn admit(shared: &Shared, may_probe: bool) -> Result<Admit, Refusal> {
    match shared.admit(may_probe) {
        Admit::Reject { retry_after } => Err(Refusal::new(Reason::CircuitOpen, Some(retry_after))),
        pass => Ok(pass),
    }
}

fn handle<'q>(pool: &'q Pool, serving: Serving<'q, Job>, job: Job, scratch: &mut [u8]) {
    let Job { slot, ticket } = job;
    let Some(parked) = slot.take() else {
        return; // the front end answered it already (503 queue_timeout, queue_full)
    };
    let mut kept = serve(pool, parked, (ticket, serving), scratch);
    // A busy connection's next requests, while no one else needs this worker (`keep.rs`).
    while let Some(client) = kept.take() {
        match keep::next(&pool.shared, &pool.queue, &pool.back, client) {
            Next::Serve(parked, held) => kept = serve(pool, parked, held, scratch),
            Next::Back(client) => pool.back.give(client),
            Next::Gone => {}
        }
    }
}

/// Serves one request (counted against admission and in its group while `held`); returns its
/// connection if it stays open with nothing left to send.
fn serve(
    pool: &Pool,
    parked: Parked,
    held: (Ticket, Serving<'_, Job>),
    scratch: &mut [u8],
) -> Option<Client> {
    let shared = &*pool.shared;
    let active = Active::new(shared);
    let mut kept_idle = UnlessForwarded::default();
    let cfg = shared.config();
    let Parked {
        mut client,
        head,
        request_id,
        started,
        in_progress,
        group,
    } = parked;
    let waited = started.elapsed();
    shared.metrics.record_queue_wait(waited);
    client.prompt = keep::prompt(client.last_done, started);
    // (After a drain's grace the front end marks every connection as hung up: those get their
    // 503 `shutdown` below.)
    if cfg.abort_on_client_close && client.cancel.hung_up() && !shared.grace_over() {
        // Its client left while it waited in the queue: never sent upstream.
        let ctx =
            RequestCtx::new(&head, &request_id, client.io.peer, started, waited).in_group(&group);
        shared.finish(&ctx, &Finished::new(Outcome::ClientAbort, false));
        return None;
    }
    let cancel = client.cancel.clone();
    let (conn, rid) = (&mut client.io, request_id.as_str());
    let gate = Gate {
        grace_over: shared.grace_over(),
        waited,
        queue_timeout: cfg.queue_timeout,
        ..Gate::default()
    };
    let admitted = match refusal(&gate) {
        Some(r) => Err(r),
        None => admit(shared, conn.body_buffered(head.framing)),
    };
    let fin = match admitted {
        Err(r) => {
            let body_done = head.framing == Framing::None;
            answer::send(conn, &head, r.reason, rid, r.retry_after, body_done)
        }
        Ok(a) => {
            kept_idle.forwarded();
            let upstream = pool.upstream.get();
            let probe = a.probe();
            // Set whatever `abort_on_client_close` says: the end of a drain's grace cancels too
            // (the front end passes a client's hang-up on only when the setting is on).
            let _current = Current::set(&cancel);
            let x = Exchange {
                shared,
                cfg: &cfg,
                upstream: &upstream,
                head: &head,
                request_id: rid,
                probe: probe.is_some(),
                cancel: Some(&cancel),
            };
            let mut verdict = shared.verdict_report(probe);
            forward(&x, conn, scratch, &mut verdict)
        }
    };
    let ctx = RequestCtx::new(&head, rid, conn.peer, started, waited).in_group(&group);
    shared.finish(&ctx, &fin);
    // Before the hand-back, so the client's next request finds this worker free.
    drop((held, active));
    // sluice's own answer on a connection that closes, or any answer closing a connection a
    // drain ends: the front end drains what the client still sends (a request it sent on)
    // before closing, so the answer is not lost to a reset.
    let closing = matches!(fin.outcome, Outcome::Sluice(_)) || shared.draining();
    if !fin.keep_alive && closing && !client.io.has_unsent() {
        client.io.leave_unsent(Vec::new(), true);
    }
    client.last_done = Some(Instant::now());
    // Something the front end must still send (then maybe close).
    if client.io.has_unsent() {
        // Still in progress until the front end has sent it: a drain waits for it.
        client.delivering = Some(in_progress);
        pool.back.give(client);
        return None;
    }
    drop(in_progress);
    fin.keep_alive.then_some(client)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::fair::Group;

    #[test]
    fn a_panicking_request_does_not_kill_its_worker() {
        let shared = Shared::new(crate::Config {
            target_host: "127.0.0.1".into(),
            log_level: crate::config::LogLevel::Error,
            ..crate::Config::default()
        });
        let jobs = Queue::new(3);
        for n in 0..3 {
            jobs.try_push(Group::All, n).unwrap();
        }
        shared.stop();
        let mut served = Vec::new();
        drain(&shared, &jobs, |_, n: u32| {
            assert!(n != 1, "request 1 panics");
            served.push(n);
        });
        assert_eq!(served, [0, 2], "the job after the panic was still served");
        assert_eq!(shared.metrics.worker_panics.load(Relaxed), 1);
    }
}
