//! The blocking bound: the fastest a proxy with blocking I/O and one OS thread per in-flight
//! request can be, as a reference row in `bench/run.sh` (docs/PERFORMANCE.md). One thread per
//! client connection, each with its own upstream keep-alive connection: read a request head,
//! write it upstream, read the response head and its `Content-Length` body, write it back. No
//! queue, no pool, no header rules, no bodies on requests, no error answers. std only; built by
//! `bench/run.sh` with `rustc -O`.
//!
//! Usage: bound LISTEN_ADDR UPSTREAM_ADDR

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (listen, upstream) = match (args.get(1), args.get(2)) {
        (Some(l), Some(u)) => (l.clone(), u.clone()),
        _ => {
            eprintln!("usage: bound LISTEN_ADDR UPSTREAM_ADDR");
            std::process::exit(2);
        }
    };
    let listener = TcpListener::bind(&listen).expect("bind");
    for client in listener.incoming().flatten() {
        let upstream = upstream.clone();
        std::thread::spawn(move || {
            let _ = serve(client, &upstream);
        });
    }
}

/// Reads one head (through the blank line) into `out`; false at a clean end of stream.
fn read_head(r: &mut impl BufRead, out: &mut Vec<u8>) -> io::Result<bool> {
    out.clear();
    loop {
        let n = r.read_until(b'\n', out)?;
        if n == 0 {
            return Ok(false);
        }
        if out.ends_with(b"\r\n\r\n") || out == b"\r\n" {
            return Ok(true);
        }
    }
}

fn content_length(head: &[u8]) -> usize {
    let text = String::from_utf8_lossy(head);
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

fn serve(client: TcpStream, upstream: &str) -> io::Result<()> {
    client.set_nodelay(true)?;
    let up = TcpStream::connect(upstream)?;
    up.set_nodelay(true)?;
    let mut from_client = BufReader::new(client.try_clone()?);
    let mut to_client = client;
    let mut from_up = BufReader::new(up.try_clone()?);
    let mut to_up = up;
    let (mut req, mut resp) = (Vec::new(), Vec::new());
    let mut body = vec![0u8; 64 * 1024];
    while read_head(&mut from_client, &mut req)? {
        to_up.write_all(&req)?;
        if !read_head(&mut from_up, &mut resp)? {
            return Ok(());
        }
        let mut left = content_length(&resp);
        let head_len = resp.len();
        let first = left.min(body.len() - head_len.min(body.len()));
        resp.resize(head_len + first, 0);
        from_up.read_exact(&mut resp[head_len..])?;
        left -= first;
        to_client.write_all(&resp)?;
        while left > 0 {
            let n = left.min(body.len());
            from_up.read_exact(&mut body[..n])?;
            to_client.write_all(&body[..n])?;
            left -= n;
        }
    }
    Ok(())
}
