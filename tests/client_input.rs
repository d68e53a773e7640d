//! Malformed, hostile and slow clients: the right 400/408/413/414/431, the upstream never sees a
//! smuggled request, and sluice keeps serving everyone else.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// Sends `raw`, expects `status` with `reason`, and checks the upstream saw no request at all.
fn refused_without_reaching_upstream(raw: &[u8], status: u16, reason: &str) {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    let mut c = Conn::open(s.addr());
    c.send(raw);
    let r = c
        .response(false)
        .unwrap_or_else(|| panic!("no response to {:?}", String::from_utf8_lossy(raw)));
    r.assert_sluice_error(status, reason);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(
        c.closed_within(Duration::from_secs(2)),
        "connection left open after a framing error"
    );
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        up.request_count(),
        0,
        "upstream saw a request for {:?}",
        String::from_utf8_lossy(raw)
    );
    assert_eq!(get(s.addr(), "/still-serving").status, 200);
}

const SMUGGLE: &str = "GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n";

#[test]
fn content_length_with_transfer_encoding_is_400_and_nothing_reaches_upstream() {
    for raw in [
        format!("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLE}"),
        format!("POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n{SMUGGLE}"),
    ] {
        refused_without_reaching_upstream(raw.as_bytes(), 400, "bad_request");
    }
}

#[test]
fn request_smuggling_shapes_are_refused() {
    for raw in [
        format!("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 41\r\n\r\nhello{SMUGGLE}"),
        format!("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello{SMUGGLE}"),
        format!("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5x\r\n\r\nhello{SMUGGLE}"),
        format!("POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{SMUGGLE}"),
        format!("POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{SMUGGLE}"),
        format!("POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{SMUGGLE}"),
        format!("POST / HTTP/1.1\r\nHost: t\r\nX: a\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLE}"),
        "GET / HTTP/1.1\r\nHost: t\r\nX-A: a\0b\r\n\r\n".to_string(),
        "GET / HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n".to_string(),
        "GET / HTTP/1.1\r\nHost: t\r\nX A: 1\r\n\r\n".to_string(),
        "GET / HTTP/1.1 junk\r\nHost: t\r\n\r\n".to_string(),
        "GET  / HTTP/1.1\r\nHost: t\r\n\r\n".to_string(),
        "\x16\x03\x01\x02\x00\x01\x00\x01\x7c\x03\x03\r\n\r\n".to_string(),
        "CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: t\r\n\r\n".to_string(),
        "GET / HTTP/1.1\r\n\r\n".to_string(),
    ] {
        refused_without_reaching_upstream(raw.as_bytes(), 400, "bad_request");
    }
}

#[test]
fn malformed_chunked_bodies_never_reach_upstream_as_complete() {
    for chunk in [
        "0x5\r\nhello\r\n0\r\n\r\n",
        "+5\r\nhello\r\n0\r\n\r\n",
        "5_\r\nhello\r\n0\r\n\r\n",
        " 5\r\nhello\r\n0\r\n\r\n",
        "5\nhello\r\n0\r\n\r\n",
        "fffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        "5\r\nhelloXX0\r\n\r\n",
    ] {
        let up = upstream();
        let s = sluice(up.port(), |_| {});
        let mut c = Conn::open(s.addr());
        c.send(
            format!(
                "POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}{SMUGGLE}"
            )
            .as_bytes(),
        );
        if let Some(r) = c.response(false) {
            r.assert_sluice_error(400, "bad_request");
        }
        assert!(c.closed_within(Duration::from_secs(3)));
        std::thread::sleep(Duration::from_millis(50));
        let got = up.received();
        assert!(
            got.iter().all(|r| r.target != "/smuggled"),
            "smuggled request reached upstream for {chunk:?}"
        );
        assert!(
            got.iter().all(|r| !r.body_complete),
            "a broken chunked body was forwarded as complete: {chunk:?}"
        );
        assert_eq!(get(s.addr(), "/still").status, 200);
    }
}

#[test]
fn oversized_head_is_431_and_sluice_still_serves() {
    let big = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "x".repeat(70_000)
    );
    refused_without_reaching_upstream(big.as_bytes(), 431, "headers_too_large");
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    refused_without_reaching_upstream(
        format!("GET / HTTP/1.1\r\nHost: t\r\n{many}\r\n").as_bytes(),
        431,
        "headers_too_large",
    );
}

#[test]
fn overlong_request_line_is_414() {
    let long = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(9000));
    refused_without_reaching_upstream(long.as_bytes(), 414, "uri_too_long");
}

#[test]
fn incomplete_head_is_408_after_the_header_timeout() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.client_header_timeout = Duration::from_millis(500)
    });
    let mut c = Conn::open(s.addr());
    let t = Instant::now();
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n");
    let r = c.response(false).expect("408");
    r.assert_sluice_error(408, "header_timeout");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(up.request_count(), 0);
}

#[test]
fn five_hundred_slow_clients_are_cut_at_the_header_timeout_while_others_are_served() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.client_header_timeout = Duration::from_secs(2)
    });
    let addr = s.addr();
    let lorises: Vec<_> = (0..500)
        .map(|_| {
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let mut st = TcpStream::connect(addr).unwrap();
                    let t = Instant::now();
                    for b in b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaa" {
                        if st.write_all(&[*b]).is_err() {
                            break;
                        }
                        std::thread::sleep(Duration::from_secs(1));
                    }
                    t.elapsed()
                })
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let mut c = Conn::open(addr);
    for _ in 0..50 {
        assert_eq!(c.get("/fast").status, 200);
        assert_eq!(get(addr, "/fast-new-connection").status, 200);
    }
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "normal clients were delayed: {:?}",
        t.elapsed()
    );
    for l in lorises {
        let held = l.join().unwrap();
        assert!(
            held < Duration::from_secs(6),
            "a slow client was held {held:?}"
        );
    }
    assert_eq!(up.received().iter().filter(|r| r.target == "/").count(), 0);
    assert_eq!(s.metrics().outcome("header_timeout"), 500);
}

#[test]
fn idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.client_idle_timeout = Duration::from_millis(300)
    });
    let mut c = Conn::open(s.addr());
    assert_eq!(c.get("/").status, 200);
    let t = Instant::now();
    assert!(c.closed_within(Duration::from_secs(3)));
    assert!(t.elapsed() >= Duration::from_millis(250));
}

#[test]
fn huge_declared_body_that_never_comes_leaves_sluice_serving() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    let mut st = TcpStream::connect(s.addr()).unwrap();
    st.write_all(b"POST /huge HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999\r\n\r\nab")
        .unwrap();
    drop(st);
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..5 {
        assert_eq!(get(s.addr(), "/after").status, 200);
    }
    let huge: Vec<_> = up
        .received()
        .into_iter()
        .filter(|r| r.target == "/huge")
        .collect();
    assert!(
        huge.iter().all(|r| !r.body_complete),
        "a cut-off body was forwarded as complete"
    );
}

#[test]
fn body_over_the_limit_is_413() {
    let up = upstream();
    let s = sluice(up.port(), |c| c.max_body_bytes = 1000);
    let mut raw = b"POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n".to_vec();
    raw.extend_from_slice(&[b'x'; 1001]);
    send(s.addr(), &raw).assert_sluice_error(413, "body_too_large");
    assert_eq!(
        up.request_count(),
        0,
        "a declared oversize body is refused before forwarding"
    );
    let chunk = "a".repeat(600);
    let raw = format!("POST /big HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n");
    send(s.addr(), raw.as_bytes()).assert_sluice_error(413, "body_too_large");
    assert!(up.received().iter().all(|r| !r.body_complete));
    let mut raw = b"POST /ok HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n".to_vec();
    raw.extend_from_slice(&[b'x'; 1000]);
    assert_eq!(send(s.addr(), &raw).status, 200);
}

#[test]
fn client_abort_mid_upload_does_not_forward_a_complete_body() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    let mut st = TcpStream::connect(s.addr()).unwrap();
    st.write_all(b"POST /abort HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000\r\n\r\n")
        .unwrap();
    st.write_all(&vec![b'x'; 100_000]).unwrap();
    drop(st);
    // The hang-up is seen while the request waits: it is dropped unsent
    // (abort_on_client_close), or, had a worker begun, forwarded with a body that is cut short.
    assert!(eventually(Duration::from_secs(5), || s
        .metrics()
        .outcome("client_abort")
        == 1));
    assert!(up.received().iter().all(|r| !r.body_complete));
    assert_eq!(get(s.addr(), "/after").status, 200);
}

#[test]
fn client_abort_mid_download_frees_the_worker() {
    let up = upstream();
    let s = sluice(up.port(), |c| c.max_concurrent_requests = 1);
    for _ in 0..3 {
        let mut c = Conn::open(s.addr());
        c.send(b"GET /big?body_bytes=50000000 HTTP/1.1\r\nHost: t\r\n\r\n");
        let mut buf = [0u8; 1000];
        std::io::Read::read(&mut c.r, &mut buf).unwrap();
        drop(c);
    }
    assert_eq!(
        get(s.addr(), "/after").status,
        200,
        "the one worker was freed each time"
    );
}

#[test]
fn admin_paths_are_not_forwarded() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    assert_eq!(get(s.addr(), "/proxy-health").status, 200);
    assert_eq!(get(s.addr(), "/proxy-metrics?x=1").status, 200);
    assert_eq!(
        send(
            s.addr(),
            b"POST /proxy-health HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"
        )
        .status,
        405
    );
    assert_eq!(up.request_count(), 0);
}

/// Many pipelined requests answered by sluice itself: the answers (~4 KB each, 12 MB) outgrow the
/// socket buffers, so the front end holds the rest, sends it as the client reads, and reads on.
#[test]
fn pipelined_admin_requests_beyond_the_socket_buffers_are_all_answered_in_order() {
    const N: usize = 3000;
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    // A small receive window, so that the answers cannot all sit in kernel buffers.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&s.addr().into()).unwrap();
    let st: TcpStream = sock.into();
    st.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut c = Conn {
        r: std::io::BufReader::new(st),
    };
    let mut w = c.r.get_ref().try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut raw = Vec::new();
        for _ in 0..N {
            raw.extend_from_slice(b"GET /proxy-metrics/prometheus HTTP/1.1\r\nHost: t\r\n\r\n");
        }
        raw.extend_from_slice(b"GET /after-the-admin-burst HTTP/1.1\r\nHost: t\r\n\r\n");
        w.write_all(&raw).unwrap();
    });
    std::thread::sleep(Duration::from_millis(300)); // let sluice fill the socket and wait
    for i in 0..N {
        let r = c
            .response(false)
            .unwrap_or_else(|| panic!("answer {i} of {N} missing"));
        assert_eq!(r.status, 200, "answer {i}");
        assert!(r.text().contains("sluice_requests_total"), "answer {i}");
    }
    let last = c
        .response(false)
        .expect("the proxied request after the burst");
    assert_eq!(last.status, 200);
    writer.join().unwrap();
    let seen: Vec<_> = up.received().into_iter().map(|r| r.target).collect();
    assert_eq!(seen, ["/after-the-admin-burst"]);
}

/// A client that sends requests but never reads the answers must not hold up anyone else, and is
/// dropped once its answers stall for the client timeout.
#[test]
fn a_client_that_never_reads_its_answers_blocks_no_one_and_is_dropped() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.client_idle_timeout = Duration::from_secs(3)
    });
    let hog = TcpStream::connect(s.addr()).unwrap();
    let mut w = hog.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let one = b"GET /proxy-metrics HTTP/1.1\r\nHost: t\r\n\r\n";
        let raw: Vec<u8> = one
            .iter()
            .copied()
            .cycle()
            .take(one.len() * 20_000)
            .collect();
        let _ = w.write_all(&raw); // fails once sluice drops the connection
    });
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    assert_eq!(get(s.addr(), "/proxy-health").status, 200);
    assert_eq!(get(s.addr(), "/proxied-meanwhile").status, 200);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "others waited {:?}",
        t.elapsed()
    );
    assert!(
        eventually(Duration::from_secs(15), || metrics(s.addr())
            ["client_connections"]
            == 1),
        "the non-reading client was not dropped"
    );
    drop(hog);
    writer.join().unwrap();
}
