//! `GET /proxy-dashboard`: the live dashboard, one self-contained HTML page (`dashboard.html`,
//! inline CSS and JavaScript, no external URL) compiled into the binary. Serving it is a copy of
//! static bytes: the page draws itself in the browser from `/proxy-metrics`, polled with a
//! relative URL so that it works behind `kubectl port-forward` and under a path prefix
//! (README "Monitoring"). Not here: the numbers (`admin.rs` renders `/proxy-metrics`).

use crate::http::parse::RequestHead;
use crate::http::write::Simple;

/// The page, as shipped.
pub const PAGE: &str = include_str!("dashboard.html");

/// The page's entity tag: a hash of its bytes, fixed at compile time, so a browser revalidating
/// gets a 304 and the page is sent again only after an upgrade changed it.
const ETAG: &str = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    const TAG: [u8; 18] = {
        let bytes = PAGE.as_bytes();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut i = 0;
        while i < bytes.len() {
            h ^= bytes[i] as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
            i += 1;
        }
        let mut tag = [b'"'; 18];
        let mut d = 0;
        while d < 16 {
            tag[16 - d] = HEX[((h >> (4 * d)) & 0xf) as usize];
            d += 1;
        }
        tag
    };
    match std::str::from_utf8(&TAG) {
        Ok(s) => s,
        Err(_) => panic!("hex digits are ASCII"),
    }
};

/// Only what the page itself holds: no request leaves for another host, scripts and styles
/// are the inline ones, and fetches go back to where the page came from.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// The response bytes: 200 with the page, or 304 when the browser already holds this version.
pub fn answer(head: &RequestHead, keep: bool) -> Vec<u8> {
    let fresh = head.header("If-None-Match").is_some_and(|v| {
        v.split(|&b| b == b',')
            .any(|t| t.trim_ascii() == ETAG.as_bytes())
    });
    Simple {
        status: if fresh { 304 } else { 200 },
        content_type: "text/html; charset=utf-8",
        body: PAGE.as_bytes(),
        extra: &[
            ("ETag", ETAG),
            ("Cache-Control", "no-cache"),
            ("Content-Security-Policy", CSP),
            ("X-Content-Type-Options", "nosniff"),
        ],
        close: !keep,
        http10: head.http10,
        // A 304 keeps the 200's Content-Length and sends no body.
        head_only: fresh || head.is_head(),
    }
    .to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse::parse_head;

    fn get(extra: &str) -> String {
        let raw = format!("GET /proxy-dashboard HTTP/1.1\r\nHost: a\r\n{extra}\r\n");
        let head = parse_head(raw.as_bytes(), 65536).unwrap().unwrap().0;
        String::from_utf8(answer(&head, true)).unwrap()
    }

    #[test]
    fn page_is_served_as_html_with_its_etag() {
        let r = get("");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Type: text/html; charset=utf-8\r\n"));
        assert!(r.contains(&format!("ETag: {ETAG}\r\n")));
        assert!(r.ends_with(PAGE));
        assert_eq!(ETAG.len(), 18);
    }

    #[test]
    fn a_browser_holding_this_version_gets_304_without_the_page() {
        let r = get(&format!("If-None-Match: \"x\", {ETAG}\r\n"));
        assert!(r.starts_with("HTTP/1.1 304 Not Modified\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\n"));
        assert!(get("If-None-Match: \"0000\"\r\n").starts_with("HTTP/1.1 200"));
    }

    #[test]
    fn page_names_no_other_host_and_polls_a_relative_url() {
        // The SVG namespace is a name, not a request; the empty icon keeps the browser from
        // asking the upstream for /favicon.ico.
        let page = PAGE
            .replace("'http://www.w3.org/2000/svg'", "")
            .replace(r#"<link rel="icon" href="data:,">"#, "");
        for absolute in ["://", "'//", "\"//", "src=", "href=", "@import", "url("] {
            assert!(!page.contains(absolute), "the page holds {absolute:?}");
        }
        assert!(PAGE.contains("fetch('proxy-metrics'"));
        assert!(!PAGE.contains("fetch('/"));
    }
}
