//! One client connection's life on its own thread: read a head (idle and header deadlines),
//! answer admin paths here, queue proxied requests for a worker (503 at once when the queue is
//! full, 503 when one waits past `queue_timeout`), and loop while the connection is kept alive.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::TrySendError;

use crate::access_log::{self, RequestCtx};
use crate::admin;
use crate::breaker::retry_after_secs;
use crate::forward::{self, Finished};
use crate::handoff::{Handoff, Waited};
use crate::headers;
use crate::http::conn::{ClientConn, HeadDeadlines, ReadHeadError};
use crate::http::parse::{Framing, HeadError};
use crate::http::write;
use crate::metrics::Outcome;
use crate::reason::Reason;
use crate::state::Shared;
use crate::worker::{Job, Parked};

/// Serves requests on one client connection until it closes.
pub fn serve(shared: &Shared, stream: TcpStream, peer: SocketAddr) {
    let cfg = shared.config();
    let mut conn = ClientConn::new(stream, peer, cfg.client_idle_timeout);
    let handoff = Arc::new(Handoff::default());
    let mut gen = 0u64;
    loop {
        let cfg = shared.config();
        let deadlines = HeadDeadlines {
            first_byte: if gen == 0 || conn.has_buffered() {
                cfg.client_header_timeout
            } else {
                cfg.client_idle_timeout
            },
            whole_head: cfg.client_header_timeout,
            max_head_bytes: cfg.max_header_bytes,
        };
        gen += 1;
        let head = match conn.read_head(deadlines) {
            Ok(head) => head,
            Err(ReadHeadError::Closed) => return,
            Err(ReadHeadError::Timeout) => {
                return refuse_head(shared, &mut conn, Reason::HeaderTimeout)
            }
            Err(ReadHeadError::Invalid(e)) => {
                crate::debug!("client={peer} refused request head: {e:?}");
                let reason = match e {
                    HeadError::Bad(_) => Reason::BadRequest,
                    HeadError::UriTooLong => Reason::UriTooLong,
                    HeadError::TooLarge => Reason::HeadersTooLarge,
                };
                return refuse_head(shared, &mut conn, reason);
            }
        };
        let started = Instant::now();
        if admin::is_admin(&head) {
            if admin::serve(shared, &mut conn, &head) {
                continue;
            }
            return;
        }
        let _in_progress = shared.begin_request();
        let request_id = headers::request_id(&head);
        let body_done = head.framing == Framing::None;
        // Answered here, with no worker: `OPTIONS *`, a draining sluice, an open breaker.
        let local = if head.path == "*" {
            Some(options_star(
                &mut conn,
                head.http10,
                head.keep_alive && body_done,
            ))
        } else if shared.draining() {
            let reason = Reason::Draining;
            Some(forward::answer(
                &mut conn,
                &head,
                reason,
                &request_id,
                None,
                body_done,
            ))
        } else {
            shared.breaker_open_for().map(|left| {
                let retry_after = Some(retry_after_secs(left));
                forward::answer(
                    &mut conn,
                    &head,
                    Reason::CircuitOpen,
                    &request_id,
                    retry_after,
                    body_done,
                )
            })
        };
        if let Some(fin) = local {
            let (method, target) = (&head.method, &head.target);
            record(
                shared,
                method,
                target,
                &request_id,
                peer,
                started,
                Duration::ZERO,
                &fin,
            );
            if fin.keep_alive {
                continue;
            }
            return;
        }
        handoff.put(
            gen,
            Parked {
                conn,
                head,
                request_id,
                started,
            },
        );
        let refused = match shared.admission.try_enter() {
            None => Some(Reason::QueueFull),
            Some(ticket) => match shared.queue.try_send(Job {
                handoff: handoff.clone(),
                gen,
                ticket,
            }) {
                Ok(()) => None,
                Err(TrySendError::Full(_)) => Some(Reason::QueueFull),
                Err(TrySendError::Disconnected(_)) => Some(Reason::Draining),
            },
        };
        let (parked, reason, waited) = match refused {
            Some(reason) => match handoff.take_back(gen) {
                Some(p) => (p, reason, Duration::ZERO),
                None => return,
            },
            None => match handoff.wait(gen, started + cfg.queue_timeout) {
                Waited::Done(p, true) => {
                    conn = p.conn;
                    continue;
                }
                Waited::Done(_, false) | Waited::Lost => return,
                Waited::Expired(p) => (p, Reason::QueueTimeout, started.elapsed()),
            },
        };
        let Parked {
            conn: mut c,
            head,
            request_id,
            started,
        } = parked;
        if reason == Reason::QueueTimeout {
            shared.metrics.record_queue_wait(waited);
        }
        let fin = forward::answer(&mut c, &head, reason, &request_id, None, body_done);
        record(
            shared,
            &head.method,
            &head.target,
            &request_id,
            peer,
            started,
            waited,
            &fin,
        );
        if !fin.keep_alive {
            return;
        }
        conn = c;
    }
}

#[allow(clippy::too_many_arguments)]
fn record(
    shared: &Shared,
    method: &str,
    target: &str,
    request_id: &str,
    peer: SocketAddr,
    started: Instant,
    queue_wait: Duration,
    fin: &Finished,
) {
    let ctx = RequestCtx {
        method,
        target,
        request_id,
        peer,
        started,
        queue_wait,
    };
    access_log::record(shared, &ctx, fin);
}

/// Answers a head that could not be read (400/408/414/431) and closes.
fn refuse_head(shared: &Shared, conn: &mut ClientConn, reason: Reason) {
    let request_id = headers::new_request_id();
    let bytes = write::error_response(reason, &request_id, None, true, false);
    let _ = conn.write_all(&bytes);
    let _ = conn.stream().shutdown(std::net::Shutdown::Write);
    let fin = Finished {
        outcome: Outcome::Sluice(reason),
        keep_alive: false,
        attempts: 0,
        bytes_in: 0,
        bytes_out: bytes.len() as u64,
        upstream_time: Duration::ZERO,
    };
    record(
        shared,
        "-",
        "-",
        &request_id,
        conn.peer,
        Instant::now(),
        Duration::ZERO,
        &fin,
    );
}

/// `OPTIONS *` asks about the server itself: sluice answers it (it cannot be sent as a URI).
fn options_star(conn: &mut ClientConn, http10: bool, keep_alive: bool) -> Finished {
    let bytes = write::Simple {
        status: 200,
        content_type: "text/plain",
        body: b"",
        extra: &[(
            "Allow",
            "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, TRACE",
        )],
        close: !keep_alive,
        http10,
        head_only: false,
    }
    .to_bytes();
    let sent = conn.write_all(&bytes).is_ok();
    Finished {
        outcome: Outcome::Upstream(200),
        keep_alive: keep_alive && sent,
        attempts: 0,
        bytes_in: 0,
        bytes_out: bytes.len() as u64,
        upstream_time: Duration::ZERO,
    }
}
