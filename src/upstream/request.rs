//! The upstream request's head, built from the client's by the header rules
//! (`policy/headers.rs`), and the body each attempt sends.

use std::net::IpAddr;

use ureq::http;

use super::agent::OUTPUT_BUFFER;
use crate::http::parse::{Framing, RequestHead};
use crate::policy::headers;
use crate::policy::reason::Reason;

/// The upstream request without its body, or the reason it cannot be sent. What ureq would
/// refuse is found here, before anything is sent, so that it is the client's error (400/431)
/// and never an upstream failure: a line longer than ureq's output buffer, a `Host` or
/// `Authorization` value that is not visible ASCII, anything `http` refuses.
pub fn build(
    base: &str,
    head: &RequestHead,
    client: IpAddr,
    request_id: &str,
) -> Result<http::Request<()>, Reason> {
    let method =
        http::Method::from_bytes(head.method.as_bytes()).map_err(|_| Reason::BadRequest)?;
    let uri = format!("{base}{}", head.path);
    if method.as_str().len() + uri.len() + LINE_OVERHEAD > OUTPUT_BUFFER {
        return Err(Reason::UriTooLong);
    }
    let mut b = http::Request::builder().method(method).uri(uri);
    for (name, value) in headers::upstream_request_headers(head, client, request_id) {
        let value: &[u8] = &value;
        if name.len() + value.len() + LINE_OVERHEAD > OUTPUT_BUFFER {
            return Err(Reason::HeadersTooLarge);
        }
        let must_be_text =
            name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case("authorization");
        if must_be_text
            && !value
                .iter()
                .all(|&c| c == b'\t' || (b' '..=b'~').contains(&c))
        {
            return Err(Reason::BadRequest);
        }
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
