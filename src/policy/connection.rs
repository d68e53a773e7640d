//! The one keep-alive rule: whether a client connection stays open after an answer. Every
//! answer — proxied, local, admin — asks here.

use crate::http::parse::RequestHead;

/// The connection stays open only if the client asked for it, its request body was read to
/// the end (else the unread rest would be taken for the next request), and nothing about the
/// answer forces a close (`closes`: draining, shutdown, connection cap, a close-delimited body).
pub fn keep_alive(head: &RequestHead, body_done: bool, closes: bool) -> bool {
    head.keep_alive && body_done && !closes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse::parse_head;

    fn head(text: &str) -> RequestHead {
        parse_head(text.as_bytes(), 65536).unwrap().unwrap().0
    }

    #[test]
    fn open_only_when_asked_for_body_read_and_nothing_forces_a_close() {
        let h = head("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(keep_alive(&h, true, false));
        assert!(!keep_alive(&h, false, false), "unread body");
        assert!(!keep_alive(&h, true, true), "forced close");
        let h = head("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        assert!(!keep_alive(&h, true, false));
        let h = head("GET / HTTP/1.0\r\n\r\n");
        assert!(!keep_alive(&h, true, false), "HTTP/1.0 without keep-alive");
    }
}
