//! sluice's own answers — above the wire format (`http/`) and the policy (`policy/`), which it
//! joins: the one writer that turns a `Reason` into response bytes — status, a
//! JSON body `{"error", "message", "request_id"}`, `X-Sluice-Error`, `X-Request-Id`, and
//! `Retry-After` on every 503 (README "Responses sluice makes itself") — with the keep-alive
//! rule applied, and no body on a HEAD request.

use std::io::Write;

use crate::http::conn::ClientConn;
use crate::http::delivery::Delivery;
use crate::http::parse::RequestHead;
use crate::http::write::Simple;
use crate::policy::connection::keep_alive;
use crate::policy::outcome::{Finished, Outcome};
use crate::policy::reason::Reason;

/// The bytes of one answer and whether the connection stays open after it.
#[derive(Debug)]
pub struct Answer {
    pub bytes: Vec<u8>,
    pub keep: bool,
}

/// The JSON error body; `detail` (what exactly went wrong) follows the reason's message.
pub fn error_body(reason: Reason, request_id: &str, detail: Option<&str>) -> String {
    let message = match detail {
        Some(d) => format!("{}: {d}", reason.message()),
        None => reason.message().to_string(),
    };
    serde_json::json!({
        "error": reason.as_str(),
        "message": message,
        "request_id": request_id,
    })
    .to_string()
}

/// A response sluice makes itself for `reason`. `head_only`: the request was HEAD, so the
/// head says how long the body would be, and no body follows.
pub fn error_response(
    reason: Reason,
    request_id: &str,
    retry_after_secs: Option<u64>,
    close: bool,
    http10: bool,
    head_only: bool,
) -> Vec<u8> {
    error_response_with(
        reason,
        request_id,
        retry_after_secs,
        None,
        (close, http10, head_only),
    )
}

/// `error_response` with a `detail` in the message; `(close, http10, head_only)`.
fn error_response_with(
    reason: Reason,
    request_id: &str,
    retry_after_secs: Option<u64>,
    detail: Option<&str>,
    (close, http10, head_only): (bool, bool, bool),
) -> Vec<u8> {
    let body = error_body(reason, request_id, detail);
    let retry = retry_after_secs
        .or((reason.status() == 503).then_some(1))
        .map(|s| s.max(1).to_string());
    let mut extra: Vec<(&str, &str)> = vec![("X-Sluice-Error", reason.as_str())];
    if !request_id.is_empty() {
        extra.push(("X-Request-Id", request_id));
    }
    if let Some(r) = &retry {
        extra.push(("Retry-After", r));
    }
    Simple {
        status: reason.status(),
        content_type: "application/json",
        body: body.as_bytes(),
        extra: &extra,
        close,
        http10,
        head_only,
    }
    .to_bytes()
}

/// sluice's answer to the request `head` for `reason`. `body_done`: the request body was read
/// to its end (else the connection must close after the answer).
pub fn error(
    head: &RequestHead,
    reason: Reason,
    request_id: &str,
    retry_after: Option<u64>,
    body_done: bool,
) -> Answer {
    error_with(head, reason, request_id, retry_after, None, body_done)
}

/// `error`, with `detail` (for an upstream failure: `host:port: cause`) in the message.
pub fn error_with(
    head: &RequestHead,
    reason: Reason,
    request_id: &str,
    retry_after: Option<u64>,
    detail: Option<&str>,
    body_done: bool,
) -> Answer {
    let keep = keep_alive(head, body_done, reason.closes_connection());
    let framing = (!keep, head.http10, head.is_head());
    let bytes = error_response_with(reason, request_id, retry_after, detail, framing);
    Answer { bytes, keep }
}

/// Writes sluice's answer for `reason` on a worker's connection (`write`).
pub fn send(
    conn: &mut ClientConn,
    head: &RequestHead,
    reason: Reason,
    request_id: &str,
    retry_after: Option<u64>,
    body_done: bool,
) -> Finished {
    let a = error(head, reason, request_id, retry_after, body_done);
    write(conn, a, Outcome::Sluice(reason))
}

/// Writes an answer on a worker's connection and says how the request ended. The worker never
/// waits on the client for it: what the socket does not take at once goes to the front end
/// with the connection (`Delivery::whole`; README "What can hold a worker").
pub fn write(conn: &mut ClientConn, a: Answer, outcome: Outcome) -> Finished {
    let mut to = Delivery::whole(conn);
    let sent = to.write_all(&a.bytes).is_ok();
    to.finish(!a.keep);
    Finished {
        bytes_out: a.bytes.len() as u64,
        ..Finished::new(outcome, a.keep && sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse::parse_head;

    #[test]
    fn error_response_carries_reason_everywhere() {
        let bytes = error_response(Reason::QueueFull, "abc", None, false, false, false);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(text.contains("X-Sluice-Error: queue_full\r\n"));
        assert!(text.contains("Retry-After: 1\r\n"));
        assert!(text.contains("X-Request-Id: abc\r\n"));
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "queue_full");
        assert_eq!(v["request_id"], "abc");
        let text = String::from_utf8(error_response(
            Reason::UpstreamTimeout,
            "",
            None,
            true,
            true,
            false,
        ))
        .unwrap();
        assert!(
            text.starts_with("HTTP/1.1 504 Gateway Timeout\r\n"),
            "1.1, also to 1.0"
        );
        assert!(!text.contains("Retry-After"));
        assert!(text.contains("Connection: close\r\n"));
    }

    #[test]
    fn an_answer_to_head_has_no_body() {
        let head = parse_head(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", 65536)
            .unwrap()
            .unwrap()
            .0;
        let a = error(&head, Reason::CircuitOpen, "id", Some(3), true);
        let text = String::from_utf8(a.bytes).unwrap();
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        assert!(text.contains("Content-Length: "));
        assert!(a.keep);
    }
}
