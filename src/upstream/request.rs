//! The upstream request's head, built from the client's by the header rules
//! (`policy/headers.rs`), and the body each attempt sends.

use std::net::IpAddr;

use ureq::http;

use crate::http::parse::{Framing, RequestHead};
use crate::policy::headers;

/// The upstream request without its body, or `None` if `http` refuses a part of it (400).
pub fn build(
    base: &str,
    head: &RequestHead,
    client: IpAddr,
    request_id: &str,
) -> Option<http::Request<()>> {
    let method = http::Method::from_bytes(head.method.as_bytes()).ok()?;
    let mut b = http::Request::builder()
        .method(method)
        .uri(format!("{base}{}", head.path));
    for (name, value) in headers::upstream_request_headers(head, client, request_id) {
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
    b.body(()).ok()
}

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
