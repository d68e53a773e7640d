//! Forwarding one request: read (or start streaming) its body, send it to the upstream through
//! the shared agent, retry when the retry policy allows (`policy/retry.rs`: safe failures only,
//! backoff with jitter, the budget, never while the breaker is not closed) within the request's
//! one deadline (`policy/deadline.rs`: a retry's timeout is what is left), then relay the
//! response (`relay.rs`).
//!
//! Not here: queueing and the breaker's admission (`pool/worker.rs`), parsing (`http/`).

use std::io::Read;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use ureq::http;
use ureq::{AsSendBody, Body, SendBody};

use super::buffers::OutputSize;
use super::classify::{cause, classify};
use super::relay::relay;
use super::request::{self, Payload};
use crate::answer;
use crate::http::body::{BodyError, RequestBody};
use crate::http::conn::ClientConn;
use crate::http::pace::Pace;
use crate::http::parse::{Framing, RequestHead};
use crate::policy::breaker::Verdict;
use crate::policy::deadline::Deadline;
use crate::policy::outcome::{AttemptFailure, Finished, Outcome};
use crate::policy::reason::Reason;
use crate::policy::retry;
use crate::state::VerdictReport;

use super::cancel::Attempt;
use super::exchange::Exchange;
use super::pool::Wire;
use super::transport::ReadBy;

/// How the attempts ended: a response (with its attempt, which lasts while its body is read),
/// a client body that broke, the client hung up, or the last attempt's failure.
enum Attempts {
    Response(http::Response<Body>, Attempt),
    ClientBody,
    ClientGone,
    /// With what went wrong, in words, naming the upstream (`host:port: cause`).
    Failed(AttemptFailure, String),
}

/// Forwards the request on `conn` (its head already parsed) and writes the response. The
/// breaker hears `verdict` as soon as the upstream's part is known, before the relay.
pub fn forward(
    x: &Exchange<'_>,
    conn: &mut ClientConn,
    scratch: &mut [u8],
    verdict: &mut VerdictReport<'_>,
) -> Finished {
    let (head, rid) = (x.head, x.request_id);
    let who = (conn.peer.ip(), rid);
    let first = match request::build(&x.upstream.base, head, who, x.cfg.request_via) {
        Ok(t) => t,
        Err(reason) => return answer::send(conn, head, reason, rid, None, false),
    };
    if let Framing::Length(n) = head.framing {
        if x.cfg.max_body_bytes > 0 && n > x.cfg.max_body_bytes {
            return answer::send(conn, head, Reason::BodyTooLarge, rid, None, false);
        }
    }
    if head.framing != Framing::None {
        conn.prepare_body_reads();
        let grace = x.cfg.client_header_timeout;
        conn.pace_reads(Some(Pace::new(
            Instant::now(),
            grace,
            x.cfg.client_min_rate,
        )));
    }
    // A body all in the buffer already (the front end read it whole) needs nothing more from
    // the client: its hang-up cancels even while the upstream connect runs.
    let in_buffer = head.framing != Framing::None && conn.body_buffered(head.framing);
    // A body still to come from the client: the end of a drain's grace can end its read.
    let reading = (head.framing != Framing::None && !in_buffer)
        .then(|| x.cancel.map(|c| c.reading(conn.stream())))
        .flatten();
    let (mut reader, client) = conn.split();
    let expect_continue = head.expect_continue;
    let mut body = RequestBody::new(&mut reader, head.framing, x.cfg.max_body_bytes).on_first_read(
        move || {
            if expect_continue {
                std::io::Write::write_all(&mut &*client, b"HTTP/1.1 100 Continue\r\n\r\n")
            } else {
                Ok(())
            }
        },
    );
    let payload = match payload(head, &mut body) {
        Ok(p) => p,
        Err(_) if x.cancelled() => {
            drop(body); // the drain's grace ended while the body came
            return answer::send(conn, head, Reason::Shutdown, rid, None, false);
        }
        Err(fail) => {
            drop(body);
            return client_body_failed(conn, head, rid, fail);
        }
    };
    if in_buffer || !matches!(payload, Payload::Streamed) {
        x.client_done();
    }
    x.shared.budget.lock().deposit();
    // The upstream waits on the client's pace: its body is streamed as it arrives.
    let client_paced = matches!(payload, Payload::Streamed) && !in_buffer;
    // A retry builds the request again (the same head, the same id): the first attempt takes
    // this one whole instead of a copy.
    let rebuild = || request::build(&x.upstream.base, head, who, x.cfg.request_via);
    let (ended, attempts, upstream_time) = attempt_all(x, (first, &rebuild), &payload, &mut body);
    let (body_done, bytes_in, body_failure) = (body.is_complete(), body.read, body.failure);
    drop((body, reading));
    verdict.report(match &ended {
        Attempts::Response(r, _) => Outcome::Upstream(r.status().as_u16()).verdict(),
        Attempts::Failed(f, _) => f.verdict(client_paced),
        Attempts::ClientBody | Attempts::ClientGone => Verdict::Neutral,
    });
    let relayed = matches!(ended, Attempts::Response(..));
    let mut fin = match ended {
        Attempts::Response(resp, attempt) => {
            let mut fin = relay(x, conn, resp, body_done, scratch);
            drop(attempt); // after the body's reader: its socket is back in the pool or closed
            if x.cancelled() {
                fin = Finished::new(cancelled(x), false); // the upstream did not fail
            }
            fin
        }
        Attempts::ClientGone if x.shared.grace_over() => {
            answer::send(conn, head, Reason::Shutdown, rid, None, body_done)
        }
        Attempts::ClientGone => Finished::new(Outcome::ClientAbort, false),
        Attempts::ClientBody => {
            let fail = body_failure.unwrap_or(BodyError::Truncated);
            client_body_failed(conn, head, rid, fail)
        }
        Attempts::Failed(f, detail) => {
            log_failure(rid, &detail);
            let a = answer::error_with(head, f.reason(), rid, None, Some(&detail), body_done);
            answer::write(conn, a, Outcome::Sluice(f.reason()))
        }
    };
    if relayed {
        verdict.report(fin.verdict()); // a body broken off after the head: one more failure
    }
    fin.attempts = attempts;
    fin.bytes_in = bytes_in;
    fin.upstream_time = upstream_time;
    fin
}

/// Who cancelled an exchange: the end of a drain's grace, else its client's hang-up.
fn cancelled(x: &Exchange<'_>) -> Outcome {
    if x.shared.grace_over() {
        Outcome::Sluice(Reason::Shutdown)
    } else {
        Outcome::ClientAbort
    }
}

/// Reads a small body of an idempotent request whole, so that a retry can replay it.
fn payload(head: &RequestHead, body: &mut RequestBody<'_>) -> Result<Payload, BodyError> {
    match head.framing {
        Framing::None => Ok(Payload::Empty),
        Framing::Length(n) if head.is_idempotent() && n <= retry::REPLAY_LIMIT => {
            let mut buf = Vec::with_capacity(n as usize);
            match (&mut *body).take(n).read_to_end(&mut buf) {
                Ok(_) if body.is_complete() => Ok(Payload::Buffered(buf)),
                _ => Err(body.failure.unwrap_or(BodyError::Truncated)),
            }
        }
        _ => Ok(Payload::Streamed),
    }
}

/// Runs attempts until one succeeds or the retry policy says stop: the first with `first`, each
/// other with the request `rebuild` makes. Returns how it ended, the number of attempts and the
/// time spent in them (backoff waits not counted).
fn attempt_all(
    x: &Exchange<'_>,
    (first, rebuild): (
        http::Request<()>,
        &dyn Fn() -> Result<http::Request<()>, Reason>,
    ),
    payload: &Payload,
    body: &mut RequestBody<'_>,
) -> (Attempts, u32, Duration) {
    let mut deadline = Deadline::new(Instant::now(), x.cfg.read_timeout);
    let mut attempts = 0u32;
    let mut upstream_time = Duration::ZERO;
    let (mut stale_retried, mut fresh) = (false, false);
    // The last 502–504 an attempt got and sluice read whole: the answer if no later attempt
    // gets one.
    let mut last_answer = None;
    // Moved into each attempt; every way back to the loop's top sets the next one.
    let mut request = first;
    let ended = loop {
        attempts += 1;
        x.shared.metrics.upstream_attempts.fetch_add(1, Relaxed);
        // Its sockets are attached to it until it is dropped: at the latest before a back-off.
        let attempt = Attempt::begin();
        Wire::begin(std::mem::take(&mut fresh));
        let t = Instant::now();
        // The first attempt has all of `read_timeout` (the agent's own timeouts); a retry what
        // is left of it.
        let left = (attempts > 1).then(|| deadline.left(t));
        let agent = &x.upstream.agent;
        let res = match payload {
            Payload::Empty => {
                let _out = OutputSize::at_most(request::output_for_head(&request));
                agent.run(timed(agent, request, left))
            }
            Payload::Buffered(b) => agent.run(timed(agent, request.map(|()| b.as_slice()), left)),
            Payload::Streamed => {
                let mut reader = Watched {
                    body: &mut *body,
                    x,
                };
                let req = request.map(|()| SendBody::from_reader(&mut reader));
                agent.run(timed(agent, req, left))
            }
        };
        let took = t.elapsed();
        upstream_time += took;
        if x.cancelled() {
            break Attempts::ClientGone;
        }
        if body.failure.is_some() {
            break Attempts::ClientBody;
        }
        let gateway_error = |r: &http::Response<Body>| matches!(r.status().as_u16(), 502..=504);
        match res {
            Ok(r) if !gateway_error(&r) => break Attempts::Response(r, attempt),
            _ => {}
        }
        let failure = match &res {
            Ok(r) => AttemptFailure::Status(r.status().as_u16()),
            Err(e) => classify(e),
        };
        if matches!(
            failure,
            AttemptFailure::Connect | AttemptFailure::ConnectTimeout
        ) {
            deadline.excuse(took); // it never got past connecting
        }
        let detail = match &res {
            Ok(r) => format!(
                "{}: answered {}",
                authority(x.upstream.base.as_str()),
                r.status()
            ),
            Err(e) => format!("{}: {}", authority(x.upstream.base.as_str()), cause(e)),
        };
        let replayable = !matches!(payload, Payload::Streamed);
        let wire = Wire::get();
        if res.is_err() && wire.reused && !wire.received && !stale_retried {
            let idempotent = x.head.is_idempotent();
            if retry::may_retry_stale(failure, idempotent, replayable, wire.wrote, body.read > 0) {
                // The upstream closed the idle connection: once more at once, on a new one.
                (stale_retried, fresh) = (true, true);
                drop((res, attempt));
                match rebuild() {
                    Ok(r) => request = r,
                    Err(_) => break Attempts::Failed(failure, detail),
                }
                continue;
            }
        }
        let counted = attempts - u32::from(stale_retried);
        let Some(delay) = retry_delay(x, failure, counted, replayable, body.read > 0, &deadline)
        else {
            break match (res, last_answer) {
                (Ok(r), _) | (Err(_), Some(r)) => Attempts::Response(r, attempt),
                (Err(_), None) => Attempts::Failed(failure, detail),
            };
        };
        match res {
            // The upstream asks for a longer wait than the back-off: its answer is passed on.
            Ok(r) if retry::outlasts(retry_after(&r), delay) => {
                break Attempts::Response(r, attempt);
            }
            Ok(r) => {
                if let Some(whole) = read_whole(r, &deadline) {
                    last_answer = Some(whole);
                }
                // The read took time: the retry may no longer fit, or the deadline passed
                // during it (README "One deadline per request").
                let now = Instant::now();
                if !deadline.retry_fits(now, delay) {
                    break match last_answer {
                        Some(r) => Attempts::Response(r, attempt),
                        None if deadline.left(now).is_zero() => Attempts::Failed(
                            AttemptFailure::Timeout,
                            format!("{detail}; its body not read within read_timeout"),
                        ),
                        None => Attempts::Failed(failure, detail),
                    };
                }
            }
            Err(_) => {}
        }
        crate::debug!(
            "request_id={} attempt={attempts} failed ({detail}); retrying in {delay:?}",
            x.request_id
        );
        drop(attempt);
        match rebuild() {
            Ok(r) => request = r,
            Err(_) => break Attempts::Failed(failure, detail),
        }
        if backoff(x, delay) {
            break Attempts::ClientGone; // hung up during the back-off: no further attempt
        }
    };
    if attempts > 1 {
        let m = &x.shared.metrics;
        m.retried_requests.fetch_add(1, Relaxed);
        m.retry_attempts.fetch_add(u64::from(attempts - 1), Relaxed);
    }
    (ended, attempts, upstream_time)
}

/// `req` with what is `left` of the request's deadline as its timeouts for sending the request
/// and awaiting the response head (`None`: the agent's own, all of `read_timeout`). The time its
/// connect takes is timed apart by ureq (`connect_timeout`), so it does not eat into `left`.
fn timed<B: AsSendBody>(
    agent: &ureq::Agent,
    req: http::Request<B>,
    left: Option<Duration>,
) -> http::Request<B> {
    match left {
        None => req,
        Some(left) => agent
            .configure_request(req)
            .timeout_send_request(Some(left))
            .timeout_recv_response(Some(left))
            .build(),
    }
}

/// The `Retry-After` of a response, if it is text.
fn retry_after(r: &http::Response<Body>) -> Option<&str> {
    r.headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
}

/// A response read whole (its connection free for the pool), to be relayed later; `None` if
/// its body is over 64 KiB, breaks, or is not all read by the end of the request's `deadline`
/// (every read of it is bounded by what is left: `ReadBy`).
fn read_whole(r: http::Response<Body>, deadline: &Deadline) -> Option<http::Response<Body>> {
    let (parts, mut body) = r.into_parts();
    let _by = ReadBy::until(deadline.end());
    let bytes = body.with_config().limit(retry::REPLAY_LIMIT).read_to_vec();
    Some(http::Response::from_parts(
        parts,
        Body::builder().data(bytes.ok()?),
    ))
}

/// The wait before another attempt after attempt number `attempts` failed, or `None` to stop:
/// the policy says no, the breaker is not closed, too little of the deadline would be left
/// after the wait (`policy/deadline.rs`), or the retry budget is spent.
fn retry_delay(
    x: &Exchange<'_>,
    failure: AttemptFailure,
    attempts: u32,
    replayable: bool,
    body_started: bool,
    deadline: &Deadline,
) -> Option<Duration> {
    let allowed = !x.probe
        && attempts <= x.cfg.max_retries
        && retry::may_retry(failure, x.head.is_idempotent(), replayable, body_started)
        && x.shared.breaker_closed();
    let delay = retry::backoff(x.cfg.retry_backoff_factor, attempts, crate::rand::unit());
    let go = allowed
        && deadline.retry_fits(Instant::now(), delay)
        && x.shared.budget.lock().withdraw(Instant::now());
    go.then_some(delay)
}

/// Waits a retry's back-off; true if the client hung up meanwhile (the wait ends at once).
fn backoff(x: &Exchange<'_>, delay: Duration) -> bool {
    match x.cancel {
        Some(cancel) => cancel.backoff(delay),
        None => {
            crate::runnable::sleep(delay);
            false
        }
    }
}

/// The client's body broke: 400/413 if it can still be told, else the request is abandoned.
fn client_body_failed(
    conn: &mut ClientConn,
    head: &RequestHead,
    request_id: &str,
    fail: BodyError,
) -> Finished {
    let reason = match fail {
        BodyError::Malformed(_) => Reason::BadRequest,
        BodyError::TooLarge => Reason::BodyTooLarge,
        BodyError::Io(std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) => {
            Reason::BodyTimeout // below the minimum rate, or silent past client_idle_timeout
        }
        BodyError::Truncated | BodyError::Io(_) => {
            return Finished::new(Outcome::ClientAbort, false)
        }
    };
    answer::send(conn, head, reason, request_id, None, false)
}

/// A streamed request body that says when the client has sent all of it.
struct Watched<'b, 'c, 'x> {
    body: &'b mut RequestBody<'c>,
    x: &'x Exchange<'x>,
}

impl Read for Watched<'_, '_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.body.read(buf)?;
        if n == 0 && self.body.is_complete() {
            self.x.client_done();
        }
        Ok(n)
    }
}

/// `host:port` of the upstream base URI.
fn authority(base: &str) -> &str {
    base.split_once("://").map_or(base, |(_, a)| a)
}

/// The second (since the epoch) of the last upstream failure logged at `warn`.
static LAST_WARNED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Logs an upstream failure: at `warn` at most once a second (an outage must not flood the
/// log), every one at `debug`.
fn log_failure(request_id: &str, detail: &str) {
    let second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if LAST_WARNED.swap(second, Relaxed) != second {
        crate::warn!(
            "upstream failed: {detail} (request_id={request_id}; at most one such line a second)"
        );
    } else {
        crate::debug!("request_id={request_id} upstream failed: {detail}");
    }
}
