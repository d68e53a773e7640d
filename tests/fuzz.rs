//! Bounded fuzzing with a seeded generator (no nightly toolchain needed): mutated and random
//! request heads and chunked bodies must never panic the parser or the decoder, and a running
//! sluice fed the same bytes keeps serving. `SLUICE_FUZZ_SECONDS` runs longer (bench/fuzz.sh).

mod common;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use sluice::http::body::RequestBody;
use sluice::http::parse::{parse_head, Framing};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const SEEDS: &[&[u8]] = &[
    b"GET /a?b=c HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n",
    b"GET http://x:1/p HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
];
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b" ",
    b"\t",
    b":",
    b"\0",
    b"0x",
    b"+",
    b"-",
    b"_",
    b";",
    b",",
    b"chunked",
    b"identity",
    b"Content-Length: ",
    b"Transfer-Encoding: ",
    b"Host: ",
    b"99999999999999999999",
    b"fffffffffffffffff",
    b"\xff",
    b"HTTP/1.1",
];

fn mutate(rng: &mut Rng) -> Vec<u8> {
    let mut v = SEEDS[rng.below(SEEDS.len())].to_vec();
    for _ in 0..1 + rng.below(6) {
        let at = rng.below(v.len() + 1);
        match rng.below(5) {
            0 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                v.splice(at..at, t.iter().copied());
            }
            1 if at < v.len() => {
                v.remove(at);
            }
            2 if at < v.len() => v[at] = rng.next() as u8,
            3 => {
                let end = (at + rng.below(8)).min(v.len());
                let dup = v[at..end].to_vec();
                v.splice(at..at, dup);
            }
            _ => v.truncate(at),
        }
    }
    v
}

fn exercise(input: &[u8]) {
    if let Ok(Some((head, len))) = parse_head(input, 65536) {
        assert!(len <= input.len());
        assert!(head.path().starts_with('/') || head.path() == "*");
        if head.framing != Framing::None {
            let mut src = BufReader::with_capacity(7, &input[len..]);
            let mut body = RequestBody::new(&mut src, head.framing, 1 << 20);
            let mut sink = Vec::new();
            let _ = body.read_to_end(&mut sink);
            if let Framing::Length(n) = head.framing {
                assert!(sink.len() as u64 <= n);
            }
        }
    }
}

#[test]
fn parser_and_chunked_decoder_never_panic() {
    let secs: u64 = std::env::var("SLUICE_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let until = Instant::now() + Duration::from_secs(secs);
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut n = 0u64;
    while Instant::now() < until {
        for _ in 0..1000 {
            exercise(&mutate(&mut rng));
            let random: Vec<u8> = (0..rng.below(200)).map(|_| rng.next() as u8).collect();
            exercise(&random);
            n += 2;
        }
    }
    eprintln!("fuzzed {n} inputs in {secs}s");
    assert!(n > 10_000);
}

#[test]
fn a_running_sluice_survives_mutated_requests() {
    let up = upstream();
    let s = sluice(up.port(), |c| {
        c.client_header_timeout = Duration::from_millis(300);
        c.client_idle_timeout = Duration::from_millis(300);
        c.max_retries = 0;
    });
    let mut rng = Rng(0xfeed_beef_0000_0042);
    let until = Instant::now() + Duration::from_secs(4);
    let mut sent = 0;
    while Instant::now() < until && sent < 400 {
        let input = mutate(&mut rng);
        if let Ok(mut st) = TcpStream::connect(s.addr()) {
            st.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let _ = st.write_all(&input);
            let _ = st.shutdown(std::net::Shutdown::Write);
            let mut out = Vec::new();
            let _ = st.read_to_end(&mut out);
            if !out.is_empty() {
                assert!(
                    out.starts_with(b"HTTP/1."),
                    "not HTTP: {:?}",
                    String::from_utf8_lossy(&out)
                );
            }
        }
        sent += 1;
    }
    assert_eq!(get(s.addr(), "/still-serving").status, 200);
    assert_eq!(
        s.metrics()
            .worker_panics
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}
