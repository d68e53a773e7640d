//! Forwarding rules end to end (README "What sluice does with a request"): what the upstream received and what the client got.

mod common;

use common::*;
use sluice_tools::upstream::pattern_byte;

#[test]
fn every_method_including_extension_methods_is_forwarded() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    for m in [
        "GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PROPFIND", "PURGE",
    ] {
        let r = send(
            s.addr(),
            format!("{m} /m?x=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n").as_bytes(),
        );
        assert_eq!(r.status, 200, "{m}");
    }
    let r = Conn::open(s.addr()).request(b"HEAD /m HTTP/1.1\r\nHost: t\r\n\r\n", true);
    assert_eq!(r.status, 200);
    let methods: Vec<String> = up.received().iter().map(|r| r.method.clone()).collect();
    assert_eq!(
        methods,
        [
            "GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PROPFIND", "PURGE",
            "HEAD"
        ]
    );
}

#[test]
fn path_and_query_are_forwarded_byte_for_byte() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    let target = "/a%2Fb/../c;p=1?q=%20x&y=a+b&z=%2F&e=";
    assert_eq!(get(s.addr(), target).status, 200);
    assert_eq!(up.received()[0].target, target);
}

#[test]
fn absolute_form_target_never_leaves_the_configured_upstream() {
    let up = upstream();
    let other = upstream();
    let s = sluice(up.port(), |_| {});
    let raw = format!(
        "GET http://127.0.0.1:{}/secret?x=1 HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
        other.port(),
        other.port()
    );
    assert_eq!(send(s.addr(), raw.as_bytes()).status, 200);
    assert_eq!(other.request_count(), 0, "the URI's host got traffic");
    assert_eq!(up.received()[0].target, "/secret?x=1");
}

#[test]
fn request_bodies_of_all_sizes_arrive_intact() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    for size in [0usize, 1024, 16 << 20] {
        let body: Vec<u8> = (0..size as u64).map(pattern_byte).collect();
        let mut raw =
            format!("POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\n\r\n").into_bytes();
        raw.extend_from_slice(&body);
        let r = send(s.addr(), &raw);
        assert_eq!(r.status, 200);
        let got = up.received().pop().unwrap();
        assert_eq!(got.body_len, size as u64);
        assert!(got.body_complete);
        assert_eq!(&got.body_prefix[..], &body[..size.min(64 * 1024)]);
        assert_eq!(
            got.header("content-length").as_deref(),
            Some(size.to_string().as_str())
        );
    }
}

#[test]
fn chunked_request_body_is_streamed_as_chunked() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    let raw = b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n";
    let r = send(s.addr(), raw);
    assert_eq!(r.status, 200);
    let got = &up.received()[0];
    assert_eq!(got.body_prefix, b"hello world");
    assert_eq!(got.header("transfer-encoding").as_deref(), Some("chunked"));
    assert_eq!(got.header("content-length"), None);
}

#[test]
fn bodiless_post_is_sent_with_content_length_zero() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    assert_eq!(
        send(s.addr(), b"POST /e HTTP/1.1\r\nHost: t\r\n\r\n").status,
        200
    );
    let got = &up.received()[0];
    assert_eq!(got.header("content-length").as_deref(), Some("0"));
    assert_eq!(got.header("transfer-encoding"), None);
}

#[test]
fn response_bodies_of_all_sizes_stream_back() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    for size in [0u64, 1024, 16 << 20] {
        for chunked in [false, true] {
            let r = get(
                s.addr(),
                &format!("/d?body_bytes={size}&chunked={}", u8::from(chunked)),
            );
            assert_eq!(r.status, 200);
            assert!(r.complete);
            assert_eq!(r.body.len() as u64, size);
            assert!(r
                .body
                .iter()
                .enumerate()
                .all(|(i, b)| *b == pattern_byte(i as u64)));
            if chunked {
                assert!(
                    r.chunked,
                    "unknown length goes chunked to an HTTP/1.1 client"
                );
            } else {
                assert_eq!(r.header("content-length"), Some(size.to_string().as_str()));
            }
        }
    }
}

#[test]
fn head_204_and_304_have_no_body_and_the_connection_stays_usable() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    let mut c = Conn::open(s.addr());
    let r = c.request(b"HEAD /h?body_bytes=500 HTTP/1.1\r\nHost: t\r\n\r\n", true);
    assert_eq!((r.status, r.header("content-length")), (200, Some("500")));
    for status in [204, 304] {
        let r = c.get(&format!("/n?status={status}"));
        assert_eq!(r.status, status);
        assert!(r.body.is_empty());
    }
    let r = c.get("/after");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "ok"),
        "no stray body bytes were left on the connection"
    );
}

#[test]
fn redirects_and_errors_pass_through_unchanged() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    let r = get(
        s.addr(),
        "/r?status=301&header=Location:http://elsewhere.invalid/x",
    );
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("http://elsewhere.invalid/x"));
    assert_eq!(up.request_count(), 1, "3xx is not followed");
    for status in [404, 418, 500] {
        let r = get(s.addr(), &format!("/e?status={status}"));
        assert_eq!(r.status, status);
        assert_eq!(r.header("x-sluice-error"), None);
        assert_eq!(r.text(), "ok");
    }
}

#[test]
fn duplicate_response_headers_are_kept() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    let r = get(s.addr(), "/c?header=Set-Cookie:a=1&header=Set-Cookie:b=2");
    assert_eq!(r.headers_named("set-cookie"), ["a=1", "b=2"]);
}

#[test]
fn hop_by_hop_headers_are_stripped_both_ways() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    let raw = b"GET /h?header=Connection:X-Up-Secret&header=X-Up-Secret:1&header=Keep-Alive:timeout=5&header=X-Up-Keep:1 HTTP/1.1\r\n\
        Host: t\r\nConnection: keep-alive, X-Foo\r\nX-Foo: secret\r\nKeep-Alive: 300\r\nTE: trailers\r\nUpgrade: websocket\r\n\
        Proxy-Connection: keep-alive\r\nX-Keep: yes\r\n\r\n";
    let r = send(s.addr(), raw);
    assert_eq!(r.status, 200);
    let got = &up.received()[0];
    for h in [
        "connection",
        "x-foo",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-connection",
    ] {
        assert_eq!(got.header(h), None, "{h} reached the upstream");
    }
    assert_eq!(got.header("x-keep").as_deref(), Some("yes"));
    assert_eq!(
        r.header("x-up-secret"),
        None,
        "a header the upstream's Connection named reached the client"
    );
    assert_eq!(r.header("keep-alive"), None);
    assert_eq!(r.header("x-up-keep"), Some("1"));
}

#[test]
fn forwarded_for_via_and_request_id_are_added() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    let r = send(s.addr(), b"GET / HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 203.0.113.7\r\nVia: 1.0 edge\r\nX-Request-Id: req-42\r\n\r\n");
    let got = &up.received()[0];
    assert_eq!(
        got.header("x-forwarded-for").as_deref(),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(
        got.header("via").as_deref(),
        Some("1.0 edge"),
        "sluice adds no Via to requests unless request_via"
    );
    assert_eq!(got.header("x-request-id").as_deref(), Some("req-42"));
    assert_eq!(
        got.header("host").as_deref(),
        Some("t"),
        "the client's Host is forwarded"
    );
    assert_eq!(r.header("x-request-id"), Some("req-42"));
    assert_eq!(r.header("via"), Some("1.1 sluice"));
    let r = get(s.addr(), "/");
    let made = r.header("x-request-id").unwrap().to_string();
    assert_eq!(up.received()[1].header("x-request-id").unwrap(), made);
}

#[test]
fn nothing_is_injected_into_the_upstream_request() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    send(s.addr(), b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    let names: Vec<String> = up.received()[0]
        .headers
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase())
        .collect();
    assert_eq!(names, ["host", "x-forwarded-for", "x-request-id"]);
}

#[test]
fn request_via_adds_sluices_via_entry_and_a_reload_turns_it_off() {
    let up = upstream();
    let cfg = config(up.port(), |c| c.request_via = true);
    let s = sluice::start(cfg.clone()).expect("start sluice");
    send(s.addr(), b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    send(
        s.addr(),
        b"GET / HTTP/1.1\r\nHost: t\r\nVia: 1.0 edge\r\n\r\n",
    );
    send(s.addr(), b"GET / HTTP/1.0\r\n\r\n");
    s.reload(sluice::config::Config {
        request_via: false,
        ..cfg
    });
    send(s.addr(), b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    let via: Vec<Option<String>> = up.received().iter().map(|r| r.header("via")).collect();
    assert_eq!(
        via,
        [
            Some("1.1 sluice".to_string()),
            Some("1.0 edge, 1.1 sluice".to_string()),
            Some("1.0 sluice".to_string()),
            None
        ]
    );
}

#[test]
fn hundred_requests_on_one_keep_alive_connection() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    let mut c = Conn::open(s.addr());
    for i in 0..100 {
        let r = c.get(&format!("/k/{i}?body_bytes={i}"));
        assert_eq!((r.status, r.body.len()), (200, i));
    }
    assert_eq!(up.request_count(), 100);
    assert_eq!(
        s.metrics()
            .client_connections
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    let mut c = Conn::open(s.addr());
    c.send(b"GET /p1?body_bytes=1 HTTP/1.1\r\nHost: t\r\n\r\nPOST /p2?echo=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabcGET /p3?body_bytes=3 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.response(false).unwrap().body, b"a");
    assert_eq!(c.response(false).unwrap().json()["body_len"], 3);
    assert_eq!(c.response(false).unwrap().body, b"abc");
    let targets: Vec<String> = up.received().iter().map(|r| r.target.clone()).collect();
    assert_eq!(
        targets,
        ["/p1?body_bytes=1", "/p2?echo=1", "/p3?body_bytes=3"]
    );
}

#[test]
fn connection_close_is_honoured() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    let mut c = Conn::open(s.addr());
    let r = c.request(
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        false,
    );
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed_within(std::time::Duration::from_secs(2)));
}

#[test]
fn http10_clients_get_an_http11_status_line_with_http10_framing() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    let mut c = Conn::open(s.addr());
    let r = c.request(b"GET /x?body_bytes=10&chunked=1 HTTP/1.0\r\n\r\n", false);
    assert_eq!((r.version, r.status, r.body.len()), (1, 200, 10));
    assert!(!r.chunked, "no chunked encoding to an HTTP/1.0 client");
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(r.header("content-length"), None, "close-delimited");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed_within(std::time::Duration::from_secs(2)));
    // With a length, and keep-alive asked for: kept open, and it says so.
    let mut c = Conn::open(s.addr());
    let r = c.request(
        b"GET /x?body_bytes=10 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        false,
    );
    assert_eq!((r.version, r.header("content-length")), (1, Some("10")));
    assert_eq!(r.header("connection"), Some("keep-alive"));
    assert_eq!(
        c.request(b"GET /y HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", false)
            .text(),
        "ok"
    );
    assert_eq!(up.received()[0].header("via"), None, "no request_via");
    // Not asked for: closed after a response with a length too.
    let mut c = Conn::open(s.addr());
    let r = c.request(b"GET /x?body_bytes=10 HTTP/1.0\r\n\r\n", false);
    assert_eq!((r.version, r.header("connection")), (1, Some("close")));
    assert!(c.closed_within(std::time::Duration::from_secs(2)));
    // sluice's own answers: an admin page, an error, a refusal of the request itself.
    for (raw, status) in [
        (&b"GET /proxy-health HTTP/1.0\r\n\r\n"[..], 200),
        (b"GET /?close=1 HTTP/1.0\r\n\r\n", 502),
        (
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
    ] {
        let mut c = Conn::open(s.addr());
        let r = c.request(raw, false);
        assert_eq!(
            (r.version, r.status),
            (1, status),
            "{}",
            String::from_utf8_lossy(raw)
        );
        assert!(r.header("content-length").is_some() && r.header("transfer-encoding").is_none());
        assert!(c.closed_within(std::time::Duration::from_secs(2)));
    }
}

#[test]
fn response_header_names_are_written_in_their_usual_spelling() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    let r = get(
        s.addr(),
        "/?header=X-Custom-Thing:1&header=etag:v1&header=cache-control:no-cache&header=WWW-Authenticate:Basic",
    );
    let names: Vec<&str> = r.headers.iter().map(|(n, _)| n.as_str()).collect();
    for want in [
        "X-Custom-Thing",
        "ETag",
        "Cache-Control",
        "WWW-Authenticate",
        "Content-Type",
        "Content-Length",
        "Via",
        "X-Request-Id",
    ] {
        assert!(names.contains(&want), "{want} not in {names:?}");
    }
}

#[test]
fn expect_100_continue_is_answered_when_the_body_is_read() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    let mut c = Conn::open(s.addr());
    c.send(b"PUT /u HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut c.r, &mut line).unwrap();
    assert_eq!(line, "HTTP/1.1 100 Continue\r\n");
    let mut blank = String::new();
    std::io::BufRead::read_line(&mut c.r, &mut blank).unwrap();
    c.send(b"hello");
    assert_eq!(c.response(false).unwrap().status, 200);
    let got = &up.received()[0];
    assert_eq!(got.body_prefix, b"hello");
    assert_eq!(
        got.header("expect"),
        None,
        "Expect is answered by sluice, not forwarded"
    );
}

#[test]
fn options_star_is_answered_by_sluice() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    let r = send(s.addr(), b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(r.header("allow").is_some());
    assert_eq!(up.request_count(), 0);
}

#[test]
fn compressed_bodies_pass_untouched() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    let r = get(s.addr(), "/z?header=Content-Encoding:gzip&body_bytes=40");
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.header("content-length"), Some("40"));
    assert_eq!(r.body.len(), 40);
}

#[test]
fn upstream_connections_are_reused() {
    let up = upstream();
    let s = sluice(up.port(), |c| c.max_concurrent_requests = 1);
    for _ in 0..20 {
        assert_eq!(get(s.addr(), "/").status, 200);
    }
    assert_eq!(
        up.connection_count(),
        1,
        "one pooled connection served all 20 requests"
    );
}

/// Targets the Python service forwarded (its `requests` re-quoted them) are forwarded too: only
/// the bytes a URI cannot carry raw are percent-encoded, nothing else is touched.
#[test]
fn targets_with_bytes_a_uri_cannot_carry_are_forwarded_percent_encoded() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    let cases: &[(&[u8], &str)] = &[
        (b"/a?x={\"k\":1}", "/a?x=%7B%22k%22:1%7D"),
        (b"/a?x=<b>", "/a?x=%3Cb%3E"),
        (b"/a?x=a|b^c`d\\e", "/a?x=a%7Cb%5Ec%60d%5Ce"),
        (b"/caf\xc3\xa9", "/caf%C3%A9"),
        (b"/a%20b?q=%7B&r=[1]", "/a%20b?q=%7B&r=[1]"),
        (b"/p/a;b,c?d=e+f&g=h", "/p/a;b,c?d=e+f&g=h"),
    ];
    for (sent, forwarded) in cases {
        up.clear();
        let mut raw = b"GET ".to_vec();
        raw.extend_from_slice(sent);
        raw.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
        let r = send(s.addr(), &raw);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(sent));
        assert_eq!(up.received()[0].target, *forwarded);
    }
}

/// A target given by name is looked up (and the addresses kept, `upstream/resolve.rs`): every
/// request reaches the upstream, over one pooled connection.
#[test]
fn a_target_named_by_host_name_is_served() {
    let up = upstream();
    let s = sluice(up.port(), |c| c.target_host = "localhost".into());
    let mut c = Conn::open(s.addr());
    for i in 0..20 {
        let r = c.get(&format!("/named{i}"));
        assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    }
    assert_eq!(up.request_count(), 20);
    assert_eq!(up.connection_count(), 1);
}
