//! The upstream request's head, built from the client's by the header rules
//! (`policy/headers.rs`), and the body each attempt sends.

use std::net::IpAddr;

use ureq::http;

use super::agent::OUTPUT_BUFFER;
use crate::http::parse::{Framing, RequestHead};
use crate::policy::headers;
use crate::policy::reason::Reason;

/// Can ureq send this request? What it would refuse is found before anything is sent, so that
/// it is the client's error (400/414/431) — answered by the front end without a worker — and
/// never an upstream failure: a line longer than ureq's output buffer, a `Host` or
/// `Authorization` value that is not visible ASCII. `base_len`: the length of the upstream's
/// `scheme://host:port`.
pub fn check_encodable(head: &RequestHead, base_len: usize) -> Result<(), Reason> {
    if head.method.len() + base_len + head.path.len() + LINE_OVERHEAD > OUTPUT_BUFFER {
        return Err(Reason::UriTooLong);
    }
    for h in &head.headers {
        if h.name.len() + h.value.len() + LINE_OVERHEAD > OUTPUT_BUFFER {
            return Err(Reason::HeadersTooLarge);
        }
        let must_be_text =
            h.name.eq_ignore_ascii_case("host") || h.name.eq_ignore_ascii_case("authorization");
        if must_be_text
            && !h
                .value
                .iter()
                .all(|&c| c == b'\t' || (b' '..=b'~').contains(&c))
        {
            return Err(Reason::BadRequest);
        }
    }
    Ok(())
}

/// The upstream request without its body, or the reason it cannot be sent (`check_encodable`,
/// and anything `http` refuses).
pub fn build(
    base: &str,
    head: &RequestHead,
    client: IpAddr,
    request_id: &str,
) -> Result<http::Request<()>, Reason> {
    check_encodable(head, base.len())?;
    let method =
        http::Method::from_bytes(head.method.as_bytes()).map_err(|_| Reason::BadRequest)?;
    let mut b = http::Request::builder()
        .method(method)
        .uri(format!("{base}{}", head.path));
    for (name, value) in headers::upstream_request_headers(head, client, request_id) {
        if name.len() + value.len() + LINE_OVERHEAD > OUTPUT_BUFFER {
            return Err(Reason::HeadersTooLarge); // a merged X-Forwarded-For or Via
        }
        let value: &[u8] = &value;
        b = b.header(name, value);
    }
    let has_length = head.header("content-length").is_some();
    if head.framing == Framing::None
        && !has_length
        && matches!(head.method.as_str(), "POST" | "PUT" | "PATCH")
    {
        b = b.header("content-length", "0"); // else ureq sends an empty chunked body
    }
    b.body(()).map_err(|_| Reason::BadRequest)
}

/// What a request or header line adds to its parts when written: `: `, ` HTTP/1.1`, CRLF.
const LINE_OVERHEAD: usize = 16;

/// The request `template` with `body` for one attempt.
pub fn with_body<B>(template: &http::Request<()>, body: B) -> http::Request<B> {
    let mut req = http::Request::new(body);
    *req.method_mut() = template.method().clone();
    *req.uri_mut() = template.uri().clone();
    *req.headers_mut() = template.headers().clone();
    req
}

/// Where the request body comes from on each attempt.
pub enum Payload {
    Empty,
    /// Read whole before the first attempt, so that a retry can send it again.
    Buffered(Vec<u8>),
    /// Streamed from the client: one attempt only once any of it was read.
    Streamed,
}
