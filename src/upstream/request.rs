//! The upstream request's head, built from the client's by the header rules
//! (`policy/headers.rs`), and the body each attempt sends.

use std::borrow::Cow;
use std::net::IpAddr;

use ureq::http;

use super::agent::{Base, OUTPUT_BUFFER};
use crate::http::parse::{Framing, RequestHead};
use crate::policy::headers;
use crate::policy::reason::Reason;

/// A request head ureq can send: `check_encodable` passed. `Sendable::check` is the only way
/// to one and `build` takes nothing else, so no request reaches ureq unchecked and none is
/// checked twice (the front end or a kept worker checks it where it is read, the attempts only
/// build). Read through `Deref`; the one change allowed after the check is `continue_sent`.
pub struct Sendable(RequestHead);

impl Sendable {
    /// `head` if ureq can send it; else the head back with the client's error.
    pub fn check(head: RequestHead) -> Result<Sendable, (RequestHead, Reason)> {
        match check_encodable(&head) {
            Ok(()) => Ok(Sendable(head)),
            Err(reason) => Err((head, reason)),
        }
    }

    /// The `100 Continue` the client waited for was sent: none is due any more.
    pub fn continue_sent(&mut self) {
        self.0.expect_continue = false;
    }
}

impl std::ops::Deref for Sendable {
    type Target = RequestHead;

    fn deref(&self) -> &RequestHead {
        &self.0
    }
}

/// Can ureq send this request? What it would refuse is found before anything is sent, so that
/// it is the client's error (400/414/431) — answered by the front end without a worker — and
/// never an upstream failure: a line longer than ureq's output buffer, a `Host` or
/// `Authorization` value that is not visible ASCII. The request line is checked against the
/// longest upstream base URI there can be, so that the check needs no per-request allocation.
fn check_encodable(head: &RequestHead) -> Result<(), Reason> {
    if head.method().len() + MAX_BASE + requote(head.path()).len() + LINE_OVERHEAD > OUTPUT_BUFFER {
        return Err(Reason::UriTooLong);
    }
    for h in head.headers() {
        if h.name().len() + h.value().len() + LINE_OVERHEAD > OUTPUT_BUFFER {
            return Err(Reason::HeadersTooLarge);
        }
        let must_be_text =
            h.name().eq_ignore_ascii_case("host") || h.name().eq_ignore_ascii_case("authorization");
        if must_be_text
            && !h
                .value()
                .iter()
                .all(|&c| c == b'\t' || (b' '..=b'~').contains(&c))
        {
            return Err(Reason::BadRequest);
        }
    }
    Ok(())
}

/// The upstream request without its body (each attempt attaches its own), or the reason it
/// cannot be sent (anything `http` refuses, a header line the rules made too long).
/// `via`: add sluice's `Via` entry (`request_via`).
pub fn build(
    base: &Base,
    head: &Sendable,
    (client, request_id): (IpAddr, &str),
    via: bool,
) -> Result<http::Request<()>, Reason> {
    let method =
        http::Method::from_bytes(head.method().as_bytes()).map_err(|_| Reason::BadRequest)?;
    let uri = base.uri(&requote(head.path())).ok_or(Reason::BadRequest)?;
    // Built in place: the `http` builder moves itself (a few hundred bytes) on every header.
    let mut req = http::Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    let list = headers::upstream_request_headers(head, client, request_id, via);
    // Every value in one buffer, each header's a slice of it: one allocation for all.
    let mut values = Vec::with_capacity(list.iter().map(|(_, v)| v.len()).sum());
    for (name, value) in &list {
        if name.len() + value.len() + LINE_OVERHEAD > OUTPUT_BUFFER {
            return Err(Reason::HeadersTooLarge); // a merged X-Forwarded-For or Via
        }
        values.extend_from_slice(value);
    }
    let values = bytes::Bytes::from(values);
    let headers = req.headers_mut();
    let mut at = 0;
    for (name, value) in &list {
        let value = values.slice(at..at + value.len());
        at += value.len();
        let name = header_name(name);
        let value = http::HeaderValue::from_maybe_shared(value);
        let (Ok(name), Ok(value)) = (name, value) else {
            return Err(Reason::BadRequest);
        };
        headers.append(name, value);
    }
    let has_length = head.header("content-length").is_some();
    if head.framing == Framing::None
        && !has_length
        && matches!(head.method(), "POST" | "PUT" | "PATCH")
    {
        // else ureq sends an empty chunked body
        headers.append(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from_static("0"),
        );
    }
    Ok(req)
}

/// Names sluice adds, made once at compile time (`from_static` checks its text when it runs).
const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
pub const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// A header name for `http`: the ones sluice adds are static (no allocation, and nothing to
/// copy when each attempt clones the head); `http` knows the standard ones; the rest are
/// parsed (and allocated).
fn header_name(name: &str) -> Result<http::HeaderName, http::header::InvalidHeaderName> {
    Ok(match name {
        "x-forwarded-for" => X_FORWARDED_FOR,
        "x-request-id" => X_REQUEST_ID,
        _ => return http::HeaderName::from_bytes(name.as_bytes()),
    })
}

/// The output buffer a request without a body needs (`buffers::OutputSize`): room for its head
/// as ureq writes it, with what ureq may add (`Host`, `Content-Length`) and to spare, in whole
/// KiB, at most `OUTPUT_BUFFER`. A head larger than the buffer would still go out, in more
/// writes; every line fits, as each is shorter than the head.
pub fn output_for_head(req: &http::Request<()>) -> usize {
    let uri = req.uri();
    let target = uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |p| p.as_str().len());
    let headers: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + LINE_OVERHEAD)
        .sum();
    let head = req.method().as_str().len() + target + LINE_OVERHEAD + headers + HEAD_SPARE;
    head.next_multiple_of(1024).min(OUTPUT_BUFFER)
}

/// What `output_for_head` leaves for what ureq adds: a `Host` line (the target's authority, at
/// most `MAX_BASE`) and a `Content-Length` line.
const HEAD_SPARE: usize = MAX_BASE + 2 * LINE_OVERHEAD + 32;

/// The request target as it may travel: the bytes a URI cannot carry raw (`{ } " < > \ ^`,
/// the backtick, `|`, and every byte >= 0x80) percent-encoded — what the Python service's
/// `requests` did (`requote_uri`) — and nothing else decoded or re-encoded.
pub fn requote(target: &str) -> Cow<'_, str> {
    let must = |b: u8| {
        b >= 0x80
            || matches!(
                b,
                b'{' | b'}' | b'"' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'|'
            )
    };
    if !target.bytes().any(must) {
        return Cow::Borrowed(target);
    }
    let mut out = String::with_capacity(target.len() + 16);
    for b in target.bytes() {
        if must(b) {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(char::from(b));
        }
    }
    Cow::Owned(out)
}

/// The longest `scheme://host:port` an upstream base can be (`target_host` is at most 253 bytes).
const MAX_BASE: usize = "https://".len() + 253 + "[]:65535".len();

/// What a request or header line adds to its parts when written: `: `, ` HTTP/1.1`, CRLF.
const LINE_OVERHEAD: usize = 16;

/// Where the request body comes from on each attempt.
pub enum Payload {
    Empty,
    /// Read whole before the first attempt, so that a retry can send it again.
    Buffered(Vec<u8>),
    /// Streamed from the client: one attempt only once any of it was read.
    Streamed,
}

#[cfg(test)]
mod tests {
    use super::{output_for_head, requote, OUTPUT_BUFFER};
    use ureq::http;

    #[test]
    fn a_bodiless_requests_output_buffer_holds_its_whole_head_and_what_ureq_adds() {
        let long = "v".repeat(9000);
        for (path, headers) in [
            ("/tiny", vec![("accept", "*/*")]),
            (
                "/a?q=1",
                vec![("x-forwarded-for", "10.0.0.1"), ("x-request-id", "abc")],
            ),
            ("/big", vec![("cookie", long.as_str()), ("x-a", "1")]),
        ] {
            let mut b =
                http::Request::builder().uri(format!("http://{}:8888{path}", "h".repeat(253)));
            let mut written =
                format!("GET {path} HTTP/1.1\r\nhost: {}:8888\r\n", "h".repeat(253)).len();
            for (n, v) in &headers {
                b = b.header(*n, *v);
                written += n.len() + v.len() + 4;
            }
            let req = b.body(()).unwrap();
            let size = output_for_head(&req);
            assert!(
                size >= written + "content-length: 0\r\n\r\n".len(),
                "{path}: {size}"
            );
            assert!(size.is_multiple_of(1024) && size <= OUTPUT_BUFFER);
        }
        let plain = http::Request::builder()
            .uri("http://u:80/tiny")
            .body(())
            .unwrap();
        assert_eq!(output_for_head(&plain), 1024, "a usual head: 1 KiB, not 16");
    }

    #[test]
    fn only_bytes_a_uri_cannot_carry_are_encoded() {
        for (sent, forwarded) in [
            ("/a?x={\"k\":1}", "/a?x=%7B%22k%22:1%7D"),
            ("/a?x=<b>", "/a?x=%3Cb%3E"),
            ("/a?x=a|b^c`d\\e", "/a?x=a%7Cb%5Ec%60d%5Ce"),
            ("/caf\u{e9}", "/caf%C3%A9"),
            ("/a%20b?q=%7B&r=[1]", "/a%20b?q=%7B&r=[1]"),
            ("/p/a;b,c?d=e+f&g=h#i", "/p/a;b,c?d=e+f&g=h#i"),
        ] {
            assert_eq!(requote(sent), forwarded, "{sent}");
        }
    }
}
