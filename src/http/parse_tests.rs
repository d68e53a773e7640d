//! Unit tests of request head parsing (`parse.rs`).

use super::*;

fn ok(raw: &str) -> RequestHead {
    parse_head(raw.as_bytes(), 65536).unwrap().unwrap().0
}

fn bad(raw: &str) -> HeadError {
    parse_head(raw.as_bytes(), 65536).unwrap_err()
}

#[test]
fn parses_a_simple_get_with_keep_alive() {
    let h = ok("GET /a%2Fb?x=1&y=%20 HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(h.method(), "GET");
    assert_eq!(h.path(), "/a%2Fb?x=1&y=%20");
    assert!(h.keep_alive && !h.http10);
    assert_eq!(h.framing, Framing::None);
}

#[test]
fn partial_head_asks_for_more_and_reports_consumed_length() {
    assert_eq!(
        parse_head(b"GET / HTTP/1.1\r\nHost: h\r\n", 65536),
        Ok(None)
    );
    let raw = b"GET / HTTP/1.1\r\nHost: h\r\n\r\nGET /next";
    let (_, len) = parse_head(raw, 65536).unwrap().unwrap();
    assert_eq!(&raw[len..], b"GET /next");
}

#[test]
fn http10_keeps_alive_only_when_asked() {
    assert!(!ok("GET / HTTP/1.0\r\n\r\n").keep_alive);
    assert!(ok("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
    assert!(!ok("GET / HTTP/1.1\r\nHost: h\r\nConnection: foo, close\r\n\r\n").keep_alive);
}

#[test]
fn absolute_form_keeps_only_path_and_query() {
    assert_eq!(
        ok("GET http://evil.example:9/p?q=1 HTTP/1.1\r\nHost: h\r\n\r\n").path(),
        "/p?q=1"
    );
    assert_eq!(
        ok("GET HTTPS://evil.example HTTP/1.1\r\nHost: h\r\n\r\n").path(),
        "/"
    );
    assert_eq!(
        ok("GET http://evil?q HTTP/1.1\r\nHost: h\r\n\r\n").path(),
        "/?q"
    );
    assert_eq!(
        bad("GET http:/// HTTP/1.1\r\nHost: h\r\n\r\n"),
        HeadError::Bad("absolute-form target without a host")
    );
    assert!(matches!(
        bad("GET ftp://x/ HTTP/1.1\r\nHost: h\r\n\r\n"),
        HeadError::Bad(_)
    ));
}

#[test]
fn connect_and_star_are_refused_except_options_star() {
    assert!(matches!(
        bad("CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n"),
        HeadError::Bad(_)
    ));
    assert!(matches!(
        bad("GET * HTTP/1.1\r\nHost: h\r\n\r\n"),
        HeadError::Bad(_)
    ));
    assert_eq!(ok("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n").path(), "*");
}

#[test]
fn ambiguous_framing_is_refused() {
    for raw in [
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x3\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        assert!(matches!(bad(raw), HeadError::Bad(_)), "accepted: {raw:?}");
    }
}

#[test]
fn valid_framing_is_understood() {
    let h = ok("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\n\r\n");
    assert_eq!(h.framing, Framing::Length(12));
    let h = ok("POST / HTTP/1.1\r\nHost: h\r\ntransfer-encoding:  Chunked \r\n\r\n");
    assert_eq!(h.framing, Framing::Chunked);
    let h = ok("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999\r\n\r\n");
    assert_eq!(h.framing, Framing::Length(99_999_999_999_999));
}

#[test]
fn malformed_header_lines_are_refused() {
    for raw in [
        "GET / HTTP/1.1\r\nHost : h\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n  folded\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nX-A: a\0b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nX(A): 1\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET / HTTP/2.0\r\nHost: h\r\n\r\n",
        "GET /\x01 HTTP/1.1\r\nHost: h\r\n\r\n",
        "G@T / HTTP/1.1\r\nHost: h\r\n\r\n",
    ] {
        assert!(matches!(bad(raw), HeadError::Bad(_)), "accepted: {raw:?}");
    }
}

#[test]
fn limits_map_to_414_and_431() {
    let long = format!(
        "GET /{} HTTP/1.1\r\nHost: h\r\n\r\n",
        "a".repeat(MAX_REQUEST_LINE)
    );
    assert_eq!(bad(&long), HeadError::UriTooLong);
    let partial_long = format!("GET /{}", "a".repeat(MAX_REQUEST_LINE + 10));
    assert_eq!(
        parse_head(partial_long.as_bytes(), 65536),
        Err(HeadError::UriTooLong)
    );
    let big = format!(
        "GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
        "b".repeat(2000)
    );
    assert_eq!(parse_head(big.as_bytes(), 1024), Err(HeadError::TooLarge));
    let many: String = (0..200).map(|i| format!("X-{i}: v\r\n")).collect();
    assert_eq!(
        bad(&format!("GET / HTTP/1.1\r\nHost: h\r\n{many}\r\n")),
        HeadError::TooLarge
    );
}

#[test]
fn expect_continue_is_noticed_for_http11_only() {
    assert!(
        ok("PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n")
            .expect_continue
    );
    assert!(
        !ok("PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n").expect_continue
    );
}

#[test]
fn many_headers_keep_spelling_bytes_order_and_duplicates_in_one_buffer() {
    let mut raw = b"POST /many HTTP/1.1\r\nHost: h\r\n".to_vec();
    for i in 1..MAX_HEADERS {
        let name = if i % 2 == 0 { "X-Dup" } else { "x-ODD" };
        raw.extend_from_slice(format!("{name}: v{i} \t, w\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    let (h, len) = parse_head(&raw, 65536).unwrap().unwrap();
    assert_eq!(len, raw.len());
    let got: Vec<(&str, &[u8])> = h.headers().map(|x| (x.name(), x.value())).collect();
    assert_eq!(got.len(), MAX_HEADERS);
    assert_eq!(got[0], ("Host", &b"h"[..]));
    for (i, (name, value)) in got.iter().enumerate().skip(1) {
        let want = if i % 2 == 0 { "X-Dup" } else { "x-ODD" };
        assert_eq!((*name, *value), (want, format!("v{i} \t, w").as_bytes()));
    }
    assert_eq!(h.header("x-dup"), Some(&b"v2 \t, w"[..]));
    assert_eq!(
        (h.method(), h.target(), h.path()),
        ("POST", "/many", "/many")
    );
    // Every piece of text lies in one buffer no longer than the head.
    let start = h.method().as_ptr() as usize;
    let inside = |s: &[u8]| {
        let at = s.as_ptr() as usize;
        at >= start && at + s.len() <= start + raw.len()
    };
    assert!(inside(h.target().as_bytes()) && inside(h.path().as_bytes()));
    assert!(h
        .headers()
        .all(|x| inside(x.name().as_bytes()) && inside(x.value())));
    assert_eq!(h.clone(), h);
}

#[test]
fn absolute_form_keeps_the_target_as_sent_and_forwards_its_path() {
    for (target, path) in [
        ("/a?b", "/a?b"),
        ("http://evil.example:9/p?q=1", "/p?q=1"),
        ("hTTp://evil/", "/"),
        ("https://evil?q=/x", "/?q=/x"),
        ("HTTPS://evil.example", "/"),
    ] {
        let h = ok(&format!(
            "GET {target} HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n"
        ));
        assert_eq!((h.target(), h.path()), (target, path));
        assert_eq!(h.header("x-a"), Some(&b"1"[..]), "{target}");
        assert_eq!(h.method(), "GET");
    }
    assert!(matches!(
        bad("GET htt://x/ HTTP/1.1\r\nHost: h\r\n\r\n"),
        HeadError::Bad(_)
    ));
}

#[test]
fn obs_text_values_are_kept_byte_for_byte() {
    let raw = b"GET /\xc3\xa9 HTTP/1.1\r\nHost: h\r\nX-Latin: caf\xe9 \xff!\r\nX-Utf8: \xc3\xa9\r\nx-after: ok\r\n\r\n";
    let (h, _) = parse_head(raw, 65536).unwrap().unwrap();
    let got: Vec<(&str, &[u8])> = h.headers().map(|x| (x.name(), x.value())).collect();
    assert_eq!(
        got,
        [
            ("Host", &b"h"[..]),
            ("X-Latin", &b"caf\xe9 \xff!"[..]),
            ("X-Utf8", &b"\xc3\xa9"[..]),
            ("x-after", &b"ok"[..]),
        ]
    );
    assert_eq!((h.target(), h.path()), ("/\u{e9}", "/\u{e9}"));
    assert_eq!(h.header("X-AFTER"), Some(&b"ok"[..]));
    assert_eq!(h.clone(), h);
    let utf8 = ok("GET / HTTP/1.1\r\nHost: h\r\nX-Utf8: \u{e9}\r\n\r\n");
    assert_eq!(utf8.header("x-utf8"), Some("\u{e9}".as_bytes()));
}

#[test]
fn a_head_can_cross_to_a_worker_thread() {
    fn send_and_clone<T: Send + Clone + 'static>() {}
    send_and_clone::<RequestHead>();
}
