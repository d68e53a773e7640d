//! A worker keeps a busy connection: done with a kept-alive connection's request that came
//! promptly (within `KEEP` of its previous response), while no request waits for a worker and
//! another worker sleeps, it waits up to `KEEP` (a few milliseconds) for that connection's next
//! request and serves it itself — the client's bytes
//! wake this worker alone, with no trip through the front end, the queue and a sleeping worker
//! (docs/ARCHITECTURE.md "A worker keeps a busy connection", docs/PERFORMANCE.md).
//!
//! It serves only what the front end would have queued unchanged — a request for the upstream
//! that sluice can send, whose body (if any) is already here, while sluice is not draining, the
//! breaker is not refusing, the admission limit has room, its client group is under
//! `max_client_requests` and no other group waits with fewer requests in workers (the rule a
//! free worker follows, `policy/fair.rs`); anything else (an admin path, a
//! body still to come, `Expect: 100-continue`, a malformed head, a head not whole in time) goes
//! back to the front end unread. A client can hold a worker here for at most twice `KEEP` (each
//! read's wait rounded up to the kernel's timer tick, as socket timeouts are).

use std::time::{Duration, Instant};

use super::handoff::{Back, Client, Job, Parked};
use super::marks::briefly;
use super::queue::{Queue, Serving};
use crate::http::conn::HeadPoll;
use crate::http::parse::Framing;
use crate::policy::admission::Ticket;
use crate::policy::fair::group_of;
use crate::policy::headers;
use crate::policy::route::{route, Route};
use crate::state::Shared;
use crate::upstream::request::Sendable;
use crate::upstream::transport::give_back_idle;

/// How long a worker waits for its connection's next request.
pub const KEEP: Duration = Duration::from_millis(2);

/// True if a request (its head read at `head_at`) came within `KEEP` of its connection's
/// previous response: that client sends its next request at once, and is worth waiting for.
/// A connection's first request, or one after a pause, is not: a burst of one-request
/// connections must not park every worker on a connection that will send nothing more.
pub fn prompt(previous_done: Option<Instant>, head_at: Instant) -> bool {
    previous_done.is_some_and(|t| head_at.saturating_duration_since(t) <= KEEP)
}

/// What becomes of a kept-alive connection a worker is done with. Returned once and taken
/// apart at once: boxing the request would cost an allocation on the fastest path.
#[allow(clippy::large_enum_variant)]
pub enum Next<'q> {
    /// Its next request, for this worker to serve, counted against admission and in its group.
    Serve(Parked, (Ticket, Serving<'q, Job>)),
    /// Back to the front end.
    Back(Client),
    /// The client closed.
    Gone,
}

pub fn next<'q>(
    shared: &Shared,
    queue: &'q Queue<Job>,
    back: &Back,
    mut client: Client,
) -> Next<'q> {
    if !client.prompt || shared.draining() || client.io.has_unsent() || !queue.spare() {
        return Next::Back(client);
    }
    if !client.kept && !back.watch_hangups_only(&mut client) {
        return Next::Back(client);
    }
    let cfg = shared.config();
    // The wait the worker's kept upstream connection is for: it keeps it (`marks.rs`).
    let head = match briefly(|| client.io.await_head(KEEP, cfg.max_header_bytes)) {
        HeadPoll::Ready(head) => head,
        HeadPoll::Closed => return Next::Gone,
        HeadPoll::Pending | HeadPoll::Invalid(_) => {
            // The wait the kept upstream connection was for found nothing: it goes to the shared
            // set now, not when this worker next blocks — the client's request may come through
            // the front end to another worker first, which would miss it and connect anew.
            give_back_idle();
            return Next::Back(client);
        }
    };
    let body_here = head.framing == Framing::None
        || (!head.expect_continue && client.io.body_buffered(head.framing));
    let servable = route(&head) == Route::Upstream
        && body_here
        && !shared.draining()
        && shared.breaker_open_for().is_none();
    let head = servable.then(|| Sendable::check(head).ok()).flatten();
    let group = head
        .as_ref()
        .map(|head| group_of(&cfg.client_key, head, client.io.peer.ip()));
    let held = group
        .as_ref()
        .and_then(|group| queue.keep(group.clone(), cfg.max_client_requests))
        .and_then(|serving| Some((shared.admission.try_enter()?, serving)));
    let (Some(head), Some(group), Some(held)) = (head, group, held) else {
        // The front end reads the head again and answers or queues it.
        client.io.unread_head();
        return Next::Back(client);
    };
    let parked = Parked {
        in_progress: shared.begin_request(),
        request_id: headers::request_id(&head),
        started: Instant::now(),
        client,
        head,
        group,
    };
    Next::Serve(parked, held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_request_that_followed_its_previous_response_at_once_is_prompt() {
        let t = Instant::now();
        assert!(!prompt(None, t), "a connection's first request");
        assert!(prompt(Some(t), t + KEEP / 2));
        assert!(prompt(Some(t), t + KEEP));
        assert!(!prompt(Some(t), t + KEEP * 2), "after a pause");
        assert!(prompt(Some(t + KEEP), t), "clocks read out of order");
    }
}
