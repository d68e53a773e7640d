//! The upstream response on its way to the client: its framing towards this client, its head
//! (status, end-to-end headers, `Via`, `X-Request-Id`), and the body streamed through a
//! worker's copy buffer. The first body piece is read before anything is written, so an
//! upstream that fails at once still gets a clean 502/504; after that, a failure closes the
//! connection without a last chunk (the client sees a truncated response).

use std::io::{self, Read, Write};

use ureq::http::{self, HeaderMap, HeaderValue};
use ureq::Body;

use super::cancel::Cancel;
use super::classify::classify;
use super::exchange::Exchange;
use super::request::X_REQUEST_ID;
use crate::answer;
use crate::http::conn::ClientConn;
use crate::http::delivery::Delivery;
use crate::http::parse::RequestHead;
use crate::http::write::{self, BodyFraming, CHUNK_PREFIX, CHUNK_SUFFIX, LAST_CHUNK};
use crate::policy::connection::keep_alive;
use crate::policy::headers::{self, connection_tokens, is_end_to_end};
use crate::policy::outcome::{Finished, Outcome};
use crate::policy::reason::Reason;

/// The length of the upstream's body as its head declares it (RFC 9112 §6.3):
/// `Transfer-Encoding` overrides `Content-Length` (the body is decoded by it, and
/// `Content-Length` is dropped); several `Content-Length` values must all agree. `Err`: a
/// length that cannot be trusted (the response is refused as 502 `upstream_error`).
fn declared_length(headers: &HeaderMap) -> Result<Option<u64>, ()> {
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        return Ok(None);
    }
    let mut length = None;
    for value in headers.get_all(http::header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let text = std::str::from_utf8(part.trim_ascii()).map_err(|_| ())?;
            let n: u64 = text.parse().map_err(|_| ())?;
            if length.is_some_and(|l| l != n) {
                return Err(());
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// How the response body is delimited towards this client.
fn response_framing(head: &RequestHead, status: u16, length: Option<u64>) -> BodyFraming {
    if head.is_head() || status < 200 || status == 204 || status == 304 {
        BodyFraming::None
    } else if length.is_some() {
        BodyFraming::Length
    } else if head.http10 {
        BodyFraming::Close
    } else {
        BodyFraming::Chunked
    }
}

/// The response head for the client: upstream status and end-to-end headers (duplicates kept),
/// `Via` appended, our `X-Request-Id` if the upstream set none, and the framing and connection
/// headers sluice writes itself — whatever the upstream's `Connection` header names.
fn response_head(
    head: &RequestHead,
    status: u16,
    headers: &HeaderMap,
    (framing, length): (BodyFraming, Option<u64>),
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
    write::status_line(&mut out, status);
    let mut via: Vec<u8> = Vec::new();
    for (name, value) in headers {
        if name == http::header::VIA {
            headers::append(&mut via, value.as_bytes());
        } else if name == http::header::CONTENT_LENGTH {
            continue; // written below, from the one length sluice frames the body with
        } else if is_end_to_end(name.as_str(), &tokens) {
            write::header_canonical(&mut out, name.as_str(), value.as_bytes());
        }
    }
    headers::append(&mut via, headers::via_entry(head.http10));
    write::header(&mut out, b"Via", &via);
    if !headers.contains_key(X_REQUEST_ID) {
        write::header(&mut out, b"X-Request-Id", request_id.as_bytes());
    }
    let bodiless_status = status < 200 || status == 204;
    match (framing, length) {
        (BodyFraming::Chunked, _) => write::header(&mut out, b"Transfer-Encoding", b"chunked"),
        // A HEAD or 304 answer keeps the length the body would have.
        (BodyFraming::Length | BodyFraming::None, Some(n)) if !bodiless_status => {
            write::header_u64(&mut out, b"Content-Length", n)
        }
        _ => {}
    }
    if !keep_alive {
        write::header(&mut out, b"Connection", b"close");
    } else if head.http10 {
        write::header(&mut out, b"Connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Streams the upstream response `resp` to the client. `body_done`: the request body was read
/// to its end. A response the client does not take at once is held, up to `client_buffer`
/// bytes, and handed to the front end with the connection; past that the worker writes it
/// itself, under the minimum rate (`http/delivery.rs`, README "What can hold a worker").
/// `x.cancel` is told when the upstream's whole response has been read — before the client gets its
/// last byte and may close — so that a close after a complete response cancels nothing.
pub fn relay(
    x: &Exchange<'_>,
    conn: &mut ClientConn,
    resp: http::Response<Body>,
    body_done: bool,
    scratch: &mut [u8],
) -> Finished {
    let (cfg, head, request_id) = (x.cfg, x.head, x.request_id);
    let upstream_done = || x.cancel.map_or((), Cancel::upstream_done);
    let status = resp.status().as_u16();
    if status == 101 {
        let reason = Reason::UpgradeUnsupported; // sluice sent no Upgrade: nothing to tunnel
        return answer::send(conn, head, reason, request_id, None, body_done);
    }
    let Ok(length) = declared_length(resp.headers()) else {
        crate::debug!("request_id={request_id} upstream response with conflicting lengths");
        let reason = Reason::UpstreamError;
        return answer::send(conn, head, reason, request_id, None, body_done);
    };
    let framing = response_framing(head, status, length);
    // Draining: the answer says `Connection: close` (README "Shutdown").
    let closes = framing == BodyFraming::Close || x.shared.draining();
    let keep = keep_alive(head, body_done, closes);
    let parts = (framing, length);
    let mut out = response_head(head, status, resp.headers(), parts, keep, request_id);
    let mut reader = resp.into_body().into_reader();
    let room = scratch.len() - CHUNK_PREFIX - CHUNK_SUFFIX;
    let mut fin = Finished::new(Outcome::Upstream(status), keep);

    let first = if framing == BodyFraming::None {
        Ok(0)
    } else {
        read_piece(&mut reader, &mut scratch[CHUNK_PREFIX..CHUNK_PREFIX + room])
    };
    let mut n = match first {
        Ok(n) => n,
        Err(e) => {
            let reason = classify(&ureq::Error::from(e)).reason();
            return answer::send(conn, head, reason, request_id, None, body_done);
        }
    };
    let mut received = n as u64;
    if n == 0 || length == Some(received) {
        upstream_done();
    }
    let _ = write::write_piece(&mut out, framing, scratch, n);
    if n == 0 && framing == BodyFraming::Chunked {
        out.extend_from_slice(LAST_CHUNK);
    }
    fin.bytes_out = out.len() as u64;
    let mut to = Delivery::new(
        conn,
        cfg.client_buffer,
        cfg.client_header_timeout,
        cfg.client_min_rate,
    );
    if to.write_all(&out).is_err() {
        return Finished::new(Outcome::ClientAbort, false);
    }
    while n > 0 {
        n = match read_piece(&mut reader, &mut scratch[CHUNK_PREFIX..CHUNK_PREFIX + room]) {
            Ok(n) => {
                received += n as u64;
                if n == 0 || length == Some(received) {
                    upstream_done();
                }
                n
            }
            Err(e) => {
                crate::debug!(
                    "request_id={request_id} upstream body failed after bytes were sent: {e}"
                );
                fin.client_paced = to.waited_on_client();
                to.finish(true); // what the client has not taken goes out, then the close
                fin.outcome = Outcome::Truncated;
                fin.keep_alive = false;
                return fin;
            }
        };
        let sent = if n == 0 {
            if framing == BodyFraming::Chunked {
                to.write_all(LAST_CHUNK)
            } else {
                Ok(())
            }
        } else {
            write::write_piece(&mut to, framing, scratch, n)
        };
        if sent.is_err() {
            return Finished::new(Outcome::ClientAbort, false);
        }
        fin.bytes_out += n as u64;
    }
    to.finish(!keep);
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
