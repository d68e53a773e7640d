//! Forwarding one request to the upstream through the shared ureq agent: building the upstream
//! request (headers.rs rules), the attempt loop (retry.rs policy, breaker gate), classifying
//! failures once, and streaming the response back with the right framing.
//!
//! Not here: queueing and the breaker's admission (worker.rs), parsing (http/).

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use ureq::http::{self, HeaderMap, HeaderValue};
use ureq::unversioned::resolver::DefaultResolver;
use ureq::unversioned::transport::{Connector, RustlsConnector};
use ureq::{Agent, Body, SendBody, Timeout};

use crate::config::Config;
use crate::headers::{self, connection_tokens, is_end_to_end};
use crate::http::body::{BodyError, RequestBody};
use crate::http::conn::ClientConn;
use crate::http::parse::{Framing, RequestHead};
use crate::http::write::{self, BodyFraming, CHUNK_PREFIX, CHUNK_SUFFIX, LAST_CHUNK};
use crate::metrics::Outcome;
use crate::reason::Reason;
use crate::retry::{self, AttemptFailure};
use crate::state::Shared;
use crate::upstream_tcp::UpstreamTcp;

/// Size of the copy buffer each worker uses for response bodies.
pub const COPY_BUFFER: usize = 32 * 1024;

/// The upstream client: one agent (one connection pool) and the base URI.
pub struct Upstream {
    pub agent: Agent,
    pub base: String,
}

impl Upstream {
    /// Builds the agent as DESIGN.md §6 says: no env proxy, no redirects, statuses are not errors,
    /// nothing injected, any method, separate connect and read timeouts, a pool sized for workers.
    pub fn new(cfg: &Config) -> Self {
        let pool = cfg.pool_maxsize.max(1);
        let config = Agent::config_builder()
            .proxy(None)
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent("")
            .accept("")
            .accept_encoding("")
            .allow_non_standard_methods(true)
            .no_delay(true)
            .timeout_connect(Some(cfg.connect_timeout))
            .timeout_send_request(Some(cfg.read_timeout))
            .timeout_recv_response(Some(cfg.read_timeout))
            .timeout_per_read(Some(cfg.read_timeout))
            .timeout_per_write(Some(cfg.read_timeout))
            .max_idle_connections(pool)
            .max_idle_connections_per_host(pool)
            .max_idle_age(Duration::from_secs(30))
            .input_buffer_size(64 * 1024)
            .output_buffer_size(32 * 1024)
            .build();
        let connector = UpstreamTcp.chain(RustlsConnector::default());
        let agent = Agent::with_parts(config, connector, DefaultResolver::default());
        Upstream {
            agent,
            base: cfg.target_base(),
        }
    }
}

/// What one proxied request came to.
#[derive(Clone, Copy, Debug)]
pub struct Finished {
    pub outcome: Outcome,
    pub keep_alive: bool,
    pub attempts: u32,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub upstream_time: Duration,
}

impl Finished {
    pub fn new(outcome: Outcome, keep_alive: bool) -> Self {
        Finished {
            outcome,
            keep_alive,
            attempts: 0,
            bytes_in: 0,
            bytes_out: 0,
            upstream_time: Duration::ZERO,
        }
    }
}

/// sluice's own error response for `reason`, and whether the connection stays open after it:
/// only when the client wants it and its request body is not left unread on the wire.
pub fn error_answer(
    head: &RequestHead,
    reason: Reason,
    request_id: &str,
    retry_after: Option<u64>,
    body_done: bool,
) -> (Vec<u8>, bool) {
    let keep = head.keep_alive
        && body_done
        && !matches!(reason, Reason::Draining | Reason::TooManyConnections);
    let bytes = write::error_response(reason, request_id, retry_after, !keep, head.http10);
    (bytes, keep)
}

/// Writes sluice's own error response for `reason` (see `error_answer`).
pub fn answer(
    conn: &mut ClientConn,
    head: &RequestHead,
    reason: Reason,
    request_id: &str,
    retry_after: Option<u64>,
    body_done: bool,
) -> Finished {
    let (bytes, keep) = error_answer(head, reason, request_id, retry_after, body_done);
    let sent = conn.write_all(&bytes).is_ok();
    Finished {
        bytes_out: bytes.len() as u64,
        ..Finished::new(Outcome::Sluice(reason), keep && sent)
    }
}

/// Classifies a ureq error once; every policy reads this.
pub fn classify(e: &ureq::Error) -> AttemptFailure {
    use io::ErrorKind as K;
    match e {
        ureq::Error::Timeout(Timeout::Connect | Timeout::Resolve) => AttemptFailure::ConnectTimeout,
        ureq::Error::Timeout(_) => AttemptFailure::Timeout,
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => AttemptFailure::Connect,
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) => AttemptFailure::Connect,
        ureq::Error::Io(io) => match io.kind() {
            K::ConnectionRefused
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::AddrNotAvailable
            | K::NotFound => AttemptFailure::Connect,
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
                AttemptFailure::Reset
            }
            K::TimedOut | K::WouldBlock => AttemptFailure::Timeout,
            _ if io.to_string().contains("lookup") => AttemptFailure::Connect,
            _ => AttemptFailure::Protocol,
        },
        _ => AttemptFailure::Protocol,
    }
}

/// The reason sluice gives the client for a failed last attempt.
pub fn reason_for(f: AttemptFailure) -> Reason {
    match f {
        AttemptFailure::Connect => Reason::ConnectFailed,
        AttemptFailure::ConnectTimeout => Reason::ConnectTimeout,
        AttemptFailure::Timeout => Reason::UpstreamTimeout,
        AttemptFailure::Reset | AttemptFailure::Protocol | AttemptFailure::Status(_) => {
            Reason::UpstreamError
        }
    }
}

fn with_body<B>(template: &http::Request<()>, body: B) -> http::Request<B> {
    let mut req = http::Request::new(body);
    *req.method_mut() = template.method().clone();
    *req.uri_mut() = template.uri().clone();
    *req.headers_mut() = template.headers().clone();
    req
}

/// The upstream request without its body, or `None` if `http` refuses a part of it (400).
fn upstream_request(
    base: &str,
    head: &RequestHead,
    conn: &ClientConn,
    request_id: &str,
) -> Option<http::Request<()>> {
    let method = http::Method::from_bytes(head.method.as_bytes()).ok()?;
    let mut b = http::Request::builder()
        .method(method)
        .uri(format!("{base}{}", head.path));
    for (name, value) in headers::upstream_request_headers(head, conn.peer.ip(), request_id) {
        let value: &[u8] = &value;
        b = b.header(name, value);
    }
    let has_length = head.header("content-length").is_some();
    if head.framing == Framing::None
        && !has_length
        && matches!(head.method.as_str(), "POST" | "PUT" | "PATCH")
    {
        b = b.header("content-length", "0");
    }
    b.body(()).ok()
}

/// Where the request body comes from on each attempt.
enum Payload {
    Empty,
    Buffered(Vec<u8>),
    Streamed,
}

/// Forwards the request on `conn` (its head already parsed) and writes the response.
/// `probe`: this is the breaker's half-open probe (one attempt, no retries).
pub fn proxy(
    shared: &Shared,
    cfg: &Config,
    conn: &mut ClientConn,
    head: &RequestHead,
    request_id: &str,
    probe: bool,
    scratch: &mut [u8],
) -> Finished {
    let upstream = shared.upstream();
    let Some(template) = upstream_request(&upstream.base, head, conn, request_id) else {
        return answer(conn, head, Reason::BadRequest, request_id, None, false);
    };
    if let Framing::Length(n) = head.framing {
        if cfg.max_body_bytes > 0 && n > cfg.max_body_bytes {
            return answer(conn, head, Reason::BodyTooLarge, request_id, None, false);
        }
    }
    if head.framing != Framing::None {
        conn.prepare_body_reads();
    }
    let idempotent = head.is_idempotent();
    let (mut reader, client) = conn.split();
    let expect_continue = head.expect_continue;
    let mut body =
        RequestBody::new(&mut reader, head.framing, cfg.max_body_bytes).on_first_read(move || {
            if expect_continue {
                (&*client).write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            } else {
                Ok(())
            }
        });
    let payload = match head.framing {
        Framing::None => Payload::Empty,
        Framing::Length(n) if idempotent && n <= retry::REPLAY_LIMIT => {
            let mut buf = Vec::with_capacity(n as usize);
            match (&mut body).take(n).read_to_end(&mut buf) {
                Ok(_) if body.is_complete() => Payload::Buffered(buf),
                _ => {
                    let fail = body.failure.unwrap_or(BodyError::Truncated);
                    drop(body);
                    return client_body_failed(conn, head, request_id, fail);
                }
            }
        }
        _ => Payload::Streamed,
    };
    let replayable = !matches!(payload, Payload::Streamed);
    shared.budget.lock().deposit();

    let deadline = Instant::now() + cfg.read_timeout;
    let mut attempts = 0u32;
    let mut upstream_time = Duration::ZERO;
    let result = loop {
        attempts += 1;
        shared
            .metrics
            .upstream_attempts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = Instant::now();
        let res = match &payload {
            Payload::Empty => upstream.agent.run(with_body(&template, ())),
            Payload::Buffered(b) => upstream.agent.run(with_body(&template, b.as_slice())),
            Payload::Streamed => upstream
                .agent
                .run(with_body(&template, SendBody::from_reader(&mut body))),
        };
        upstream_time += t.elapsed();
        let failure = match &res {
            _ if body.failure.is_some() => break Err(None),
            Ok(r) if matches!(r.status().as_u16(), 502..=504) => {
                AttemptFailure::Status(r.status().as_u16())
            }
            Ok(_) => break res.map_err(|_| None),
            Err(e) => classify(e),
        };
        let retry_n = attempts;
        let may = !probe
            && retry_n <= cfg.max_retries
            && retry::may_retry(failure, idempotent, replayable, body.read > 0)
            && shared.breaker_closed();
        let delay = retry::backoff(cfg.retry_backoff_factor, retry_n, crate::rand::unit());
        if !may
            || Instant::now() + delay >= deadline
            || !shared.budget.lock().withdraw(Instant::now())
        {
            break match res {
                Ok(r) => Ok(r),
                Err(_) => Err(Some(failure)),
            };
        }
        crate::debug!("request_id={request_id} attempt={attempts} failed ({failure:?}); retrying in {delay:?}");
        drop(res);
        std::thread::sleep(delay);
    };
    let retries = attempts - 1;
    if retries > 0 {
        let m = &shared.metrics;
        m.retried_requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        m.retry_attempts
            .fetch_add(u64::from(retries), std::sync::atomic::Ordering::Relaxed);
    }
    let body_done = body.is_complete();
    let bytes_in = body.read;
    let body_failure = body.failure;
    drop(body);
    let mut fin = match result {
        Ok(resp) => relay(conn, head, request_id, resp, body_done, scratch),
        Err(None) => client_body_failed(
            conn,
            head,
            request_id,
            body_failure.unwrap_or(BodyError::Truncated),
        ),
        Err(Some(f)) => answer(conn, head, reason_for(f), request_id, None, body_done),
    };
    fin.attempts = attempts;
    fin.bytes_in = bytes_in;
    fin.upstream_time = upstream_time;
    fin
}

/// The client's body broke: 400/413 if it can still be told, else the request is abandoned.
fn client_body_failed(
    conn: &mut ClientConn,
    head: &RequestHead,
    request_id: &str,
    fail: BodyError,
) -> Finished {
    match fail {
        BodyError::Malformed(_) => answer(conn, head, Reason::BadRequest, request_id, None, false),
        BodyError::TooLarge => answer(conn, head, Reason::BodyTooLarge, request_id, None, false),
        BodyError::Truncated | BodyError::Io(_) => Finished::new(Outcome::ClientAbort, false),
    }
}

/// How the response body is delimited towards this client.
fn response_framing(head: &RequestHead, status: u16, headers: &HeaderMap) -> BodyFraming {
    if head.is_head() || status < 200 || status == 204 || status == 304 {
        BodyFraming::None
    } else if headers.contains_key(http::header::CONTENT_LENGTH) {
        BodyFraming::Length
    } else if head.http10 {
        BodyFraming::Close
    } else {
        BodyFraming::Chunked
    }
}

/// The response head for the client: upstream status and end-to-end headers (duplicates kept),
/// `Via` appended, our `X-Request-Id` if the upstream set none, framing and connection headers.
fn response_head(
    head: &RequestHead,
    status: u16,
    headers: &HeaderMap,
    framing: BodyFraming,
    keep_alive: bool,
    request_id: &str,
) -> Vec<u8> {
    let tokens = connection_tokens(
        headers
            .get_all(http::header::CONNECTION)
            .iter()
            .map(HeaderValue::as_bytes),
    );
    let mut out = Vec::with_capacity(512);
    write::status_line(&mut out, status, head.http10);
    let mut via: Vec<u8> = Vec::new();
    for (name, value) in headers {
        if name == http::header::VIA {
            headers::append(&mut via, value.as_bytes());
        } else if is_end_to_end(name.as_str(), &tokens) {
            write::header(&mut out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    headers::append(
        &mut via,
        if head.http10 {
            b"1.0 sluice"
        } else {
            b"1.1 sluice"
        },
    );
    write::header(&mut out, b"via", &via);
    if !headers.contains_key("x-request-id") {
        write::header(&mut out, b"x-request-id", request_id.as_bytes());
    }
    if framing == BodyFraming::Chunked {
        write::header(&mut out, b"transfer-encoding", b"chunked");
    }
    if !keep_alive {
        write::header(&mut out, b"connection", b"close");
    } else if head.http10 {
        write::header(&mut out, b"connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Streams the upstream response to the client. The first body piece is read before anything is
/// written, so an upstream that fails at once still gets a clean 502/504; after that, a failure
/// closes the connection without a last chunk (the client sees a truncated response).
fn relay(
    conn: &mut ClientConn,
    head: &RequestHead,
    request_id: &str,
    resp: http::Response<Body>,
    body_done: bool,
    scratch: &mut [u8],
) -> Finished {
    let status = resp.status().as_u16();
    if status == 101 {
        return answer(
            conn,
            head,
            Reason::UpstreamError,
            request_id,
            None,
            body_done,
        );
    }
    let framing = response_framing(head, status, resp.headers());
    let keep_alive = head.keep_alive && body_done && framing != BodyFraming::Close;
    let mut out = response_head(
        head,
        status,
        resp.headers(),
        framing,
        keep_alive,
        request_id,
    );
    let mut reader = resp.into_body().into_reader();
    let room = scratch.len() - CHUNK_PREFIX - CHUNK_SUFFIX;
    let mut fin = Finished::new(Outcome::Upstream(status), keep_alive);

    let first = if framing == BodyFraming::None {
        Ok(0)
    } else {
        read_piece(&mut reader, &mut scratch[CHUNK_PREFIX..CHUNK_PREFIX + room])
    };
    let mut n = match first {
        Ok(n) => n,
        Err(e) => {
            let f = classify(&ureq::Error::from(e));
            return answer(conn, head, reason_for(f), request_id, None, body_done);
        }
    };
    let _ = write::write_piece(&mut out, framing, scratch, n);
    if n == 0 && framing == BodyFraming::Chunked {
        out.extend_from_slice(LAST_CHUNK);
    }
    fin.bytes_out = out.len() as u64;
    if conn.write_all(&out).is_err() {
        return Finished::new(Outcome::ClientAbort, false);
    }
    while n > 0 {
        n = match read_piece(&mut reader, &mut scratch[CHUNK_PREFIX..CHUNK_PREFIX + room]) {
            Ok(n) => n,
            Err(e) => {
                crate::debug!(
                    "request_id={request_id} upstream body failed after bytes were sent: {e}"
                );
                fin.outcome = Outcome::Truncated;
                fin.keep_alive = false;
                return fin;
            }
        };
        let sent = if n == 0 {
            if framing == BodyFraming::Chunked {
                conn.write_all(LAST_CHUNK)
            } else {
                Ok(())
            }
        } else {
            let mut w = conn.writer();
            write::write_piece(&mut w, framing, scratch, n)
        };
        if sent.is_err() {
            return Finished::new(Outcome::ClientAbort, false);
        }
        fin.bytes_out += n as u64;
    }
    fin
}

fn read_piece(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match reader.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_separates_nothing_sent_from_sent() {
        let io = |k| ureq::Error::Io(io::Error::from(k));
        assert_eq!(
            classify(&io(io::ErrorKind::ConnectionRefused)),
            AttemptFailure::Connect
        );
        assert_eq!(
            classify(&ureq::Error::Timeout(Timeout::Connect)),
            AttemptFailure::ConnectTimeout
        );
        assert_eq!(
            classify(&io(io::ErrorKind::ConnectionReset)),
            AttemptFailure::Reset
        );
        assert_eq!(
            classify(&io(io::ErrorKind::UnexpectedEof)),
            AttemptFailure::Reset
        );
        assert_eq!(
            classify(&ureq::Error::Timeout(Timeout::RecvResponse)),
            AttemptFailure::Timeout
        );
        assert_eq!(reason_for(AttemptFailure::Connect), Reason::ConnectFailed);
        assert_eq!(reason_for(AttemptFailure::Timeout), Reason::UpstreamTimeout);
        assert_eq!(
            reason_for(AttemptFailure::ConnectTimeout),
            Reason::ConnectTimeout
        );
    }
}
