//! Answers the front end gives without a worker, and the one place that decides them: admin
//! paths, `OPTIONS *`, a drain whose grace ended and an open breaker (`policy/refusal.rs`), a
//! client group at `max_client_requests`, a full queue (the newcomer, or the newest waiting
//! request of the group holding the most of it: `policy/fair.rs`), a queue time run out, a head that could not be read (400/408/414/431) and the
//! connection cap. Every other request is parked in a slot and queued for a worker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conns::{Entry, Pending};
use super::{admin, Front};
use crate::answer::{self, Answer};
use crate::config::Config;
use crate::http::conn::BodyPoll;
use crate::http::parse::{Framing, RequestHead};
use crate::http::write;
use crate::observe::access_log::RequestCtx;
use crate::policy::admission::Ticket;
use crate::policy::connection::keep_alive;
use crate::policy::fair::{group_of, Group, CLIENT_LIMIT_RETRY_AFTER};
use crate::policy::headers;
use crate::policy::outcome::{Finished, Outcome};
use crate::policy::reason::Reason;
use crate::policy::refusal::{refusal, Gate};
use crate::policy::route::{route, Route};
use crate::pool::handoff::{Client, Job, Parked};
use crate::pool::slot::Slot;
use crate::state::Shared;
use crate::upstream::request::Sendable;

impl Front {
    /// Handles one request head. True if the connection is still here, ready for the next one.
    pub(super) fn request(&mut self, key: usize, head: RequestHead, cfg: &Config) -> bool {
        let started = Instant::now();
        let route = route(&head);
        if route == Route::Admin {
            let (bytes, keep) = admin::answer(&self.shared, &self.queue, &head);
            return self.send(key, &bytes, keep);
        }
        let Some(peer) = self.entry(key).map(|e| e.client.io.peer) else {
            return false;
        };
        let group = group_of(&cfg.client_key, &head, peer.ip());
        let in_progress = self.shared.begin_request();
        let request_id = headers::request_id(&head);
        // While draining, sluice's own answers close the connection too.
        let body_done = head.framing == Framing::None && !self.shared.draining();
        let gate = Gate {
            grace_over: self.shared.grace_over(),
            queue_timeout: cfg.queue_timeout,
            breaker_open_for: self.shared.breaker_open_for(),
            ..Gate::default()
        };
        // Answered here, with no worker: `OPTIONS *`, WebSocket upgrades, requests ureq cannot
        // send, a sluice whose grace ended, an open breaker.
        let own = |head: &RequestHead| match route {
            Route::OptionsStar => Some((options_star(head), Outcome::Upstream(200))),
            Route::Upgrade => {
                let reason = Reason::UpgradeUnsupported;
                let a = answer::error(head, reason, &request_id, None, body_done);
                Some((a, Outcome::Sluice(reason)))
            }
            _ => None,
        };
        let head = match Sendable::check(head) {
            Ok(head) => head,
            Err((head, reason)) => {
                let (a, outcome) = own(&head).unwrap_or_else(|| {
                    let a = answer::error(&head, reason, &request_id, None, false);
                    (a, Outcome::Sluice(reason))
                });
                let ctx = RequestCtx::new(&head, &request_id, peer, started, Duration::ZERO)
                    .in_group(&group);
                return self.answer_here(key, &ctx, a, outcome);
            }
        };
        let local = if let Some(own) = own(&head) {
            Some(own)
        } else if let Some(r) = refusal(&gate) {
            let a = answer::error(&head, r.reason, &request_id, r.retry_after, body_done);
            Some((a, Outcome::Sluice(r.reason)))
        } else if cfg.max_client_requests > 0 && self.queue.load(&group) >= cfg.max_client_requests
        {
            let (reason, after) = (Reason::ClientLimit, Some(CLIENT_LIMIT_RETRY_AFTER));
            let a = answer::error(&head, reason, &request_id, after, body_done);
            Some((a, Outcome::Sluice(reason)))
        } else {
            None
        };
        if let Some((answer, outcome)) = local {
            let ctx =
                RequestCtx::new(&head, &request_id, peer, started, Duration::ZERO).in_group(&group);
            return self.answer_here(key, &ctx, answer, outcome);
        }
        let pending = Pending {
            head,
            request_id,
            started,
            in_progress,
            group,
        };
        self.wait_for_body(key, pending, cfg)
    }

    /// A small request body is read here, whole, before a worker is used, so that no worker
    /// waits on a slow client for it (README "What can hold a worker"); a larger one is
    /// streamed by the worker under the minimum rate. True if the connection is still here,
    /// ready for its next request.
    fn wait_for_body(&mut self, key: usize, mut p: Pending, cfg: &Config) -> bool {
        let limit = cfg.client_buffer;
        if p.head.framing == Framing::None || limit == 0 {
            return self.dispatch(key, p, cfg);
        }
        let Some(e) = self.entry(key) else {
            return false;
        };
        match e.client.io.poll_body(p.head.framing, limit) {
            BodyPoll::Complete | BodyPoll::Stream => self.dispatch(key, p, cfg),
            BodyPoll::Closed => {
                self.abandoned(key, p);
                false
            }
            BodyPoll::Pending => {
                if p.head.expect_continue {
                    // The client waits for this before it sends the body.
                    let _ = e.client.io.try_send(b"HTTP/1.1 100 Continue\r\n\r\n");
                    p.head.continue_sent();
                }
                e.deadline = p.started + cfg.client_header_timeout;
                e.body_wait = Some(p);
                false
            }
        }
    }

    /// Parks a request whose body is buffered (or will be streamed) and queues it for a
    /// worker; 503 `queue_full` if there is no room (`make_room`). True if the connection is
    /// still here.
    pub(super) fn dispatch(&mut self, key: usize, p: Pending, cfg: &Config) -> bool {
        let Some(entry) = self.send_away(key) else {
            return false;
        };
        let started = p.started;
        let group = p.group.clone();
        let slot = Arc::new(Slot::new(Parked {
            client: entry.client,
            head: p.head,
            request_id: p.request_id,
            started,
            in_progress: p.in_progress,
            group: p.group,
        }));
        let ticket = self.shared.admission.try_enter();
        if let Some(ticket) = ticket.or_else(|| self.make_room(&group)) {
            let job = Job {
                slot: slot.clone(),
                ticket,
            };
            if self.queue.try_push(group, job).is_ok() {
                // Claimed entries at the front are dropped as new ones come in.
                while self.queued.front().is_some_and(|(_, s)| s.is_taken()) {
                    self.queued.pop_front();
                }
                self.queued.push_back((started + cfg.queue_timeout, slot));
                return false;
            }
        }
        match slot.take() {
            Some(parked) => self.answer_parked(parked, Reason::QueueFull, Duration::ZERO),
            None => false,
        }
    }

    /// The queue is full: if the newcomer's group (`group`) holds less than its share of it,
    /// the newest waiting request of the group holding the most is answered 503 `queue_full`
    /// instead (`policy/fair.rs`), and its place — its admission ticket — is the newcomer's.
    /// Its connection comes back here (the slot's first taker owns the request) and is read
    /// again next turn.
    fn make_room(&mut self, group: &Group) -> Option<Ticket> {
        let Job { slot, ticket } = self.queue.evict_for(group)?;
        if let Some(parked) = slot.take() {
            let waited = parked.started.elapsed();
            let key = parked.client.key();
            if self.answer_parked(parked, Reason::QueueFull, waited) {
                self.more.push(key);
            }
        }
        Some(ticket)
    }

    /// The client closed while its body was being read: counted as its abort.
    pub(super) fn abandoned(&mut self, key: usize, p: Pending) {
        if let Some(peer) = self.entry(key).map(|e| e.client.io.peer) {
            let ctx = RequestCtx::new(&p.head, &p.request_id, peer, p.started, Duration::ZERO)
                .in_group(&p.group);
            self.shared
                .finish(&ctx, &Finished::new(Outcome::ClientAbort, false));
        }
        self.close(key);
    }

    /// The body did not arrive whole within `client_header_timeout` (408 `body_timeout`), or the
    /// drain's grace ended while it came (503 `shutdown`): answer, then close.
    pub(super) fn refuse_body(&mut self, key: usize, reason: Reason) {
        let Some(e) = self.entry(key) else {
            return;
        };
        let (Some(p), peer) = (e.body_wait.take(), e.client.io.peer) else {
            return;
        };
        e.linger_on_close = true;
        let answer = answer::error(&p.head, reason, &p.request_id, None, false);
        let ctx = RequestCtx::new(&p.head, &p.request_id, peer, p.started, Duration::ZERO)
            .in_group(&p.group);
        self.answer_here(key, &ctx, answer, Outcome::Sluice(reason));
    }

    /// Answers a request that no worker will serve (queue full, queue time run out) and takes
    /// its connection back. True if the connection is still here, ready for the next request.
    pub(super) fn answer_parked(
        &mut self,
        parked: Parked,
        reason: Reason,
        waited: Duration,
    ) -> bool {
        let Parked {
            client,
            head,
            request_id,
            started,
            in_progress,
            group,
        } = parked;
        let cfg = self.shared.config();
        let (key, peer) = (client.key(), client.io.peer);
        let body_done = head.framing == Framing::None && !self.shared.draining();
        let answer = answer::error(&head, reason, &request_id, None, body_done);
        let mut entry = Entry::waiting(client, &cfg, false);
        // A body still coming is read and dropped after the answer, never reset: a client that
        // sends its whole upload before it reads gets the answer (as `refuse_body`).
        entry.linger_on_close |= !body_done;
        self.insert(key, entry);
        let ctx = RequestCtx::new(&head, &request_id, peer, started, waited).in_group(&group);
        let kept = self.answer_here(key, &ctx, answer, Outcome::Sluice(reason));
        drop(in_progress);
        kept
    }

    /// Sends an answer sluice makes itself and records it (metrics, access log). True if the
    /// connection is still here, ready for the next request.
    pub(super) fn answer_here(
        &mut self,
        key: usize,
        ctx: &RequestCtx<'_>,
        answer: Answer,
        outcome: Outcome,
    ) -> bool {
        let kept = self.send(key, &answer.bytes, answer.keep);
        let fin = Finished {
            bytes_out: answer.bytes.len() as u64,
            ..Finished::new(outcome, kept)
        };
        self.shared.finish(ctx, &fin);
        kept
    }

    /// A head that could not be read: 400/408/414/431, then close.
    pub(super) fn refuse_head(&mut self, key: usize, reason: Reason) {
        let Some(peer) = self.entry(key).map(|e| e.client.io.peer) else {
            return;
        };
        let request_id = headers::new_request_id();
        let bytes = answer::error_response(reason, &request_id, None, true, false, false);
        let ctx = RequestCtx {
            method: "-",
            target: "-",
            request_id: &request_id,
            peer,
            started: Instant::now(),
            queue_wait: Duration::ZERO,
            group: None,
        };
        let answer = Answer { bytes, keep: false };
        self.answer_here(key, &ctx, answer, Outcome::Sluice(reason));
    }
}

/// Over the connection cap: a best-effort 503 without blocking, then close.
pub(super) fn refuse_connection(shared: &Shared, client: Client) {
    let started = Instant::now();
    let reason = Reason::TooManyConnections;
    let bytes =
        answer::error_response(reason, &headers::new_request_id(), None, true, false, false);
    let _ = client.io.try_send(&bytes);
    shared
        .metrics
        .record(Outcome::Sluice(reason), started.elapsed());
}

/// `OPTIONS *` asks about the server itself: sluice answers it (it cannot be sent as a URI).
fn options_star(head: &RequestHead) -> Answer {
    let keep = keep_alive(head, head.framing == Framing::None, false);
    let bytes = write::Simple {
        status: 200,
        content_type: "text/plain",
        body: b"",
        extra: &[(
            "Allow",
            "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, TRACE",
        )],
        close: !keep,
        http10: head.http10,
        head_only: false,
    }
    .to_bytes();
    Answer { bytes, keep }
}
