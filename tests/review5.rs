//! The fifth review (of the request head in one buffer, the head seen at the end of a read, the
//! retry that builds its request again, the thread's reused output buffer and the inline request
//! id): no defect was proven. These are the strongest attacks, kept as regression tests: each
//! asserts what the upstream received, byte for byte, for client bytes that stress the change.
//! Real sluice, real sockets on 127.0.0.1, the real test upstream.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use sluice_tools::upstream::Received;

/// The headers a request reached the upstream with, values as bytes.
fn heads(got: &[Received], target: &str) -> Vec<Vec<(String, Vec<u8>)>> {
    got.iter()
        .filter(|r| r.target == target)
        .map(|r| r.headers.clone())
        .collect()
}

fn value<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Vec<&'a [u8]> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
        .collect()
}

/// A stale pooled connection (the upstream resets it after reading the request whole): the
/// retry on a new connection is built again from the head, and must be the same request — the
/// same generated X-Request-Id, the merged X-Forwarded-For and Via (`request_via`), the
/// `Content-Length: 0` added to a bodiless PUT, obs-text values, duplicates in order.
#[test]
fn a_stale_connection_retry_sends_the_same_request_as_the_first_attempt() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.max_retries = 0;
        c.request_via = true;
        c.max_concurrent_requests = 1;
    });
    let mut conn = Conn::open(s.addr());
    assert_eq!(conn.get("/first?reset_next=1").status, 200);
    let r = conn.request(
        b"PUT /doc HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 10.0.0.9\r\nVia: 1.0 a\xe9\r\n\
          X-Dup: 1\r\nX-Obs: caf\xe9 \xc3\r\nx-dup: 2\r\n\r\n",
        false,
    );
    assert_eq!(r.status, 200, "{r:?}");
    let got = up.received();
    let doc: Vec<&Received> = got.iter().filter(|g| g.target == "/doc").collect();
    assert_eq!(doc.len(), 2, "sent, reset, sent again: {got:?}");
    assert_ne!(doc[0].peer_port, doc[1].peer_port, "the retry on a new one");
    assert_eq!(doc[0].headers, doc[1].headers, "the same request twice");
    let h = &doc[0].headers;
    assert_eq!(value(h, "x-forwarded-for"), [&b"10.0.0.9, 127.0.0.1"[..]]);
    assert_eq!(value(h, "via"), [&b"1.0 a\xe9, 1.1 sluice"[..]]);
    assert_eq!(value(h, "content-length"), [&b"0"[..]]);
    assert_eq!(value(h, "x-dup"), [&b"1"[..], &b"2"[..]]);
    assert_eq!(value(h, "x-obs"), [&b"caf\xe9 \xc3"[..]]);
    let id = value(h, "x-request-id");
    assert_eq!(id.len(), 1);
    assert_eq!(r.header("x-request-id").map(str::as_bytes), Some(id[0]));
}

/// Back-off retries of a bodiless PUT the upstream answers 503: every attempt is the same
/// request, the client's own X-Request-Id (128 printable bytes, the longest kept) included.
#[test]
fn back_off_retries_send_the_same_request_with_the_clients_longest_request_id() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.max_retries = 2;
        c.request_via = true;
    });
    let id = "i".repeat(127) + "~";
    let raw = format!(
        "PUT /busy?status=503 HTTP/1.1\r\nHost: t\r\nX-Request-Id: {id}\r\nVia: 1.0 x\r\n\r\n"
    );
    let r = send(s.addr(), raw.as_bytes());
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("x-request-id"), Some(id.as_str()));
    let all = heads(&up.received(), "/busy?status=503");
    assert_eq!(all.len(), 3, "1 + max_retries attempts");
    assert!(all.iter().all(|h| *h == all[0]), "{all:?}");
    assert_eq!(value(&all[0], "x-request-id"), [id.as_bytes()]);
    assert_eq!(value(&all[0], "content-length"), [&b"0"[..]]);
    assert_eq!(value(&all[0], "via"), [&b"1.0 x, 1.1 sluice"[..]]);
    // One byte longer: replaced by sluice's own, the same on every attempt too.
    up.clear();
    let long = format!("{id}i");
    let raw = format!("PUT /busy?status=503 HTTP/1.1\r\nHost: t\r\nX-Request-Id: {long}\r\n\r\n");
    let r = send(s.addr(), raw.as_bytes());
    let made = r.header("x-request-id").expect("an id").to_string();
    assert_eq!(made.len(), 16, "{made}");
    let all = heads(&up.received(), "/busy?status=503");
    assert_eq!(all.len(), 3);
    assert!(all
        .iter()
        .all(|h| value(h, "x-request-id") == [made.as_bytes()]));
}

/// One worker, one upstream connection: a large head (its output buffer is kept by the worker),
/// then smaller requests, a body, pipelined. Nothing of the first head may reach the upstream
/// again: each request arrives whole and alone, the secret only in the first.
#[test]
fn a_reused_output_buffer_never_sends_bytes_of_an_earlier_request() {
    let up = upstream();
    let s = sluice(up.port(), |c| c.max_concurrent_requests = 1);
    let pad = "p".repeat(3000);
    let big = format!(
        "GET /big HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer SECRET\r\nX-Pad: {pad}\r\n\r\n"
    );
    let mut conn = Conn::open(s.addr());
    for round in 0..3 {
        up.clear();
        let mut raw = big.clone().into_bytes();
        raw.extend_from_slice(b"GET /small HTTP/1.1\r\nHost: t\r\n\r\n");
        raw.extend_from_slice(b"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello");
        raw.extend_from_slice(b"GET /obs HTTP/1.1\r\nHost: t\r\nX-O: \xff\r\n\r\n");
        raw.extend_from_slice(b"POST /empty HTTP/1.1\r\nHost: t\r\n\r\n");
        conn.send(&raw);
        for _ in 0..5 {
            let r = conn.response(false).expect("a response");
            assert_eq!(r.status, 200, "round {round}: {r:?}");
        }
        let got = up.received();
        let targets: Vec<&str> = got.iter().map(|g| g.target.as_str()).collect();
        assert_eq!(
            targets,
            ["/big", "/small", "/body", "/obs", "/empty"],
            "round {round}"
        );
        for g in &got[1..] {
            assert!(
                !g.headers
                    .iter()
                    .any(|(n, v)| n.eq_ignore_ascii_case("authorization")
                        || v.windows(6).any(|w| w == b"SECRET")),
                "round {round}: {g:?}"
            );
            assert_eq!(g.headers.len(), 3 + usize::from(g.target != "/small"));
        }
        assert_eq!(got[2].body_prefix, b"hello");
        assert_eq!(value(&got[3].headers, "x-o"), [&b"\xff"[..]]);
        assert_eq!(value(&got[4].headers, "content-length"), [&b"0"[..]]);
        assert!(got.iter().all(|g| g.peer_port == got[0].peer_port));
    }
}

/// A head with obs-text values (one UTF-8 character cut across two values), an absolute-form
/// target with a query only, duplicates and a Connection-named header, sent in two pieces split
/// at every byte: the upstream receives what it receives when the head comes in one piece.
#[test]
fn a_head_split_at_every_byte_reaches_the_upstream_unchanged() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    let raw: &[u8] = b"GET HTTP://Evil.example?q=\xc3\xa9&x={1} HTTP/1.1\r\nHost: t\r\nX-A: a\xc3\r\n\
        X-B: \xa9b\r\nX-Request-Id: split\r\nConnection: x-drop\r\nX-Drop: 1\r\nx-a: 2\r\nX-Forwarded-For: 1.1.1.1\r\n\r\n";
    let whole = send(s.addr(), raw);
    assert_eq!(whole.status, 200, "{whole:?}");
    let want = up.received().pop().expect("received");
    assert_eq!(want.target, "/?q=%C3%A9&x=%7B1%7D");
    assert_eq!(value(&want.headers, "x-a"), [&b"a\xc3"[..], &b"2"[..]]);
    assert_eq!(value(&want.headers, "x-b"), [&b"\xa9b"[..]]);
    assert!(value(&want.headers, "x-drop").is_empty());
    for at in 1..raw.len() {
        up.clear();
        let mut conn = Conn::open(s.addr());
        conn.r.get_ref().set_nodelay(true).unwrap();
        conn.send(&raw[..at]);
        std::thread::sleep(Duration::from_millis(3));
        conn.send(&raw[at..]);
        let r = conn.response(false).expect("a response");
        assert_eq!(r.status, 200, "split at {at}: {r:?}");
        let got = up.received();
        assert_eq!(got.len(), 1, "split at {at}");
        assert_eq!(
            (&got[0].target, &got[0].headers),
            (&want.target, &want.headers),
            "split at {at}"
        );
    }
}

/// Heads that end exactly at the read buffer's first size (2 KiB) or one byte either side, each
/// followed in the same write by its body and a pipelined request: both reach the upstream, the
/// body whole and not taken for the next head.
#[test]
fn a_head_ending_at_the_read_buffer_end_then_its_body_and_a_pipelined_request() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    for total in [2047usize, 2048, 2049, 4096] {
        up.clear();
        let start = "POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nX-Pad: ";
        let pad = "p".repeat(total - start.len() - 4);
        let head = format!("{start}{pad}\r\n\r\n");
        assert_eq!(head.len(), total);
        let mut conn = Conn::open(s.addr());
        let mut raw = head.into_bytes();
        raw.extend_from_slice(b"helloGET /next HTTP/1.1\r\nHost: t\r\n\r\n");
        conn.r.get_mut().write_all(&raw).unwrap();
        assert_eq!(conn.response(false).expect("first").status, 200);
        assert_eq!(conn.response(false).expect("second").status, 200);
        let got = up.received();
        let targets: Vec<&str> = got.iter().map(|g| g.target.as_str()).collect();
        assert_eq!(targets, ["/b", "/next"], "head of {total} bytes");
        assert_eq!(got[0].body_prefix, b"hello");
        assert!(got[0].body_complete);
    }
}

/// The request line at its limit (its LF the 8,193rd byte) is forwarded; one byte longer is 414,
/// whether the line came whole or the buffer holds only its first 8,193 bytes yet.
#[test]
fn the_request_line_limit_is_exact() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    let line = |n: usize| {
        let path = "a".repeat(n - "GET / HTTP/1.1\r".len());
        format!("GET /{path} HTTP/1.1\r\nHost: t\r\n\r\n")
    };
    let at = line(8192);
    assert_eq!(at.find('\n'), Some(8192));
    assert_eq!(send(s.addr(), at.as_bytes()).status, 200);
    let past = line(8193);
    send(s.addr(), past.as_bytes()).assert_sluice_error(414, "uri_too_long");
    let mut conn = Conn::open(s.addr());
    conn.send(&past.as_bytes()[..8193]);
    conn.response(false)
        .expect("answered before the line ends")
        .assert_sluice_error(414, "uri_too_long");
    assert_eq!(up.received().len(), 1, "only the line at the limit");
}
