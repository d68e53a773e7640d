//! A real HTTP/1.1 upstream with fault injection, for tests, the demo and the benchmark
//! (`sluice-upstream`). Each request picks its answer with query parameters:
//!
//! | parameter | effect |
//! |---|---|
//! | `status=N` | response status (default 200) |
//! | `delay_ms=N` | wait before the response head |
//! | `hold_body_ms=N` | wait before reading the request body (the sender's writes back up) |
//! | `body_bytes=N` | response body of N bytes (default: `ok`) |
//! | `chunked=1` / `no_length=1` | chunked body / close-delimited body |
//! | `echo=1` | JSON of what was received (method, target, headers, body length and hash) |
//! | `echo_body=1` | the request body streamed back |
//! | `header=Name:Value` | extra response header (repeatable) |
//! | `close_mid_body=1` / `reset_mid_body=1` / `stall_mid_body=1` | send half the body, then FIN / RST / silence |
//! | `reset=1` / `close=1` / `hang=1` | RST / FIN / silence instead of a response |
//! | `wait_ms=N` | wait before the response head, watching the connection: a close meanwhile ends the request, and when it came is recorded (`closes()`) |
//! | `garbage=1` / `big_header=N` | a non-HTTP answer / a response header of N bytes |
//! | `drop_after=1` | close the connection after the response without saying so (stale pool) |
//! | `reset_next=1` | answer normally; the next request on this connection is read whole, then RST |
//! | `then_reset=1` | answer the first request with this target; every later one is read whole, then RST |
//! | `fail_first=1` | answer the first request with this target a bodiless 503 at once (unless hung: `set_hang`); later ones as asked |
//!
//! `/__upstream/fail?status=N` makes every later request answer N (`status=0` clears it);
//! `/__upstream/delay?ms=N` delays every later request; `/__upstream/stats` gives counts.
//! `/__upstream/hang?on=1` (`on=0` clears it) hangs every later request; `/__upstream/health?status=N`
//! makes `/health` answer N (`status=0`: as any path). The same switches for a test that flips
//! them while it runs: `set_fail`, `set_delay`, `set_hang` (every request is read and never
//! answered: a hung upstream), `set_health`.
//! `set_idle_close` makes it close a connection idle that long, as Node (5 s) or gunicorn (2 s) do.
//! Everything received is recorded for the tests (`received()`).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::json;

use sluice::http::body::RequestBody;
use sluice::http::conn::{ClientConn, HeadDeadlines};
use sluice::http::parse::RequestHead;

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body_len: u64,
    pub body_hash: u64,
    /// The first 64 KiB of the body.
    pub body_prefix: Vec<u8>,
    pub body_complete: bool,
    /// The port the request came from: which upstream connection carried it.
    pub peer_port: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }
}

#[derive(Default)]
struct State {
    received: Mutex<Vec<Received>>,
    requests: AtomicU64,
    connections: AtomicU64,
    fail_status: AtomicU64,
    delay_ms: AtomicU64,
    /// Targets of `then_reset=1` and `fail_first=1` requests seen so far.
    seen: Mutex<std::collections::HashSet<String>>,
    /// Close a connection idle this long (0: 120 s).
    idle_close_ms: AtomicU64,
    /// `hang=1` requests whose connection sluice closed while the upstream held them.
    hangs_closed: AtomicU64,
    /// Every request hangs (`set_hang`).
    hang_all: AtomicBool,
    /// The status `/health` answers (0: as any other path).
    health_status: AtomicU64,
    /// `wait_ms` requests whose connection was closed during the wait: target, when.
    closes: Mutex<Vec<(String, Instant)>>,
    record: AtomicBool,
    stopped: AtomicBool,
}

/// A running test upstream; stops when dropped.
pub struct TestUpstream {
    addr: SocketAddr,
    state: Arc<State>,
}

impl TestUpstream {
    /// Starts on a free port of 127.0.0.1.
    pub fn start() -> io::Result<Self> {
        Self::start_on("127.0.0.1:0", true)
    }

    /// Starts on `addr`; `record` keeps every request for `received()` (off for benchmarks).
    pub fn start_on(addr: &str, record: bool) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        state.record.store(record, Relaxed);
        let s = state.clone();
        std::thread::Builder::new()
            .name("upstream-accept".into())
            .spawn(move || accept_loop(listener, s))?;
        Ok(TestUpstream { addr, state })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().clone()
    }

    /// Requests whose head arrived (recorded or not).
    pub fn request_count(&self) -> u64 {
        self.state.requests.load(Relaxed)
    }

    /// `hang=1` requests whose connection was closed by sluice while the upstream held them.
    pub fn hangs_closed(&self) -> u64 {
        self.state.hangs_closed.load(Relaxed)
    }

    /// `wait_ms=N` requests whose connection was closed during the wait: their targets, and
    /// when the close was seen.
    pub fn closes(&self) -> Vec<(String, Instant)> {
        self.state.closes.lock().clone()
    }

    /// TCP connections accepted so far.
    pub fn connection_count(&self) -> u64 {
        self.state.connections.load(Relaxed)
    }

    pub fn clear(&self) {
        self.state.received.lock().clear();
        self.state.requests.store(0, Relaxed);
    }

    /// Every later request answers `status` (None: back to normal).
    pub fn set_fail(&self, status: Option<u16>) {
        self.state
            .fail_status
            .store(status.map_or(0, u64::from), Relaxed);
    }

    /// From now on a connection that stays idle (no request head begun) for `idle` is closed,
    /// the way a busy server's event loop does it: the close takes effect `IDLE_CLOSE_LAG`
    /// later, and a request that arrives in between is lost — never read, reset by the close.
    pub fn set_idle_close(&self, idle: Duration) {
        let ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        self.state.idle_close_ms.store(ms.max(1), Relaxed);
    }

    /// Every later request waits this long before its response.
    pub fn set_delay(&self, delay: Duration) {
        self.state.delay_ms.store(delay.as_millis() as u64, Relaxed);
    }

    /// `true`: every later request is read and never answered (a hung upstream: it accepts,
    /// then says nothing until the peer closes, as `hang=1`); `false`: back to normal.
    pub fn set_hang(&self, on: bool) {
        self.state.hang_all.store(on, Relaxed);
    }

    /// `/health` (any query) answers `status` (None: as any other path). `set_fail` and
    /// `set_hang` still apply to it.
    pub fn set_health(&self, status: Option<u16>) {
        self.state
            .health_status
            .store(status.map_or(0, u64::from), Relaxed);
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.state.stopped.store(true, Relaxed);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(100));
    }
}

fn accept_loop(listener: TcpListener, state: Arc<State>) {
    for stream in listener.incoming() {
        if state.stopped.load(Relaxed) {
            return;
        }
        let Ok(stream) = stream else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        state.connections.fetch_add(1, Relaxed);
        let s = state.clone();
        let _ = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || serve(stream, &s));
    }
}

fn serve(stream: TcpStream, state: &State) {
    let Ok(peer) = stream.peer_addr() else { return };
    let mut conn = ClientConn::new(stream, peer, Duration::from_secs(30));
    let mut reset_next = false;
    while !state.stopped.load(Relaxed) {
        let idle_ms = state.idle_close_ms.load(Relaxed);
        let deadlines = HeadDeadlines {
            first_byte: match idle_ms {
                0 => Duration::from_secs(120),
                ms => Duration::from_millis(ms),
            },
            whole_head: Duration::from_secs(30),
            max_head_bytes: 1 << 20,
        };
        let Ok(head) = conn.read_head(deadlines) else {
            if idle_ms > 0 {
                std::thread::sleep(IDLE_CLOSE_LAG); // closing: what arrives now is never read
            }
            return;
        };
        state.requests.fetch_add(1, Relaxed);
        let go_on = respond(&mut conn, &head, state, reset_next).unwrap_or(false);
        reset_next = head.target().contains("reset_next=1");
        if !go_on {
            return;
        }
    }
}

/// How long after its idle timeout fires a connection is closed (`set_idle_close`).
pub const IDLE_CLOSE_LAG: Duration = Duration::from_millis(50);

fn params(target: &str) -> Vec<(String, String)> {
    let query = target.split_once('?').map_or("", |(_, q)| q);
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), v.replace("%3A", ":").replace("%20", " "))
        })
        .collect()
}

fn fnv(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// Handles one request; returns whether the connection goes on.
/// With `reset_now`, the request is read whole and recorded, then the connection is reset.
fn respond(
    conn: &mut ClientConn,
    head: &RequestHead,
    state: &State,
    reset_now: bool,
) -> io::Result<bool> {
    let p = params(head.target());
    let get = |k: &str| p.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let num = |k: &str| get(k).and_then(|v| v.parse::<u64>().ok());
    let flag = |k: &str| get(k) == Some("1");

    if head.path().starts_with("/__upstream/") {
        return control(conn, head, state, num("status"), num("ms"));
    }
    conn.prepare_body_reads();
    if let Some(ms) = num("hold_body_ms") {
        std::thread::sleep(Duration::from_millis(ms));
    }
    let mut received = Received {
        method: head.method().to_string(),
        target: head.target().to_string(),
        headers: head
            .headers()
            .map(|h| (h.name().to_string(), h.value().to_vec()))
            .collect(),
        body_len: 0,
        body_hash: FNV_START,
        body_prefix: Vec::new(),
        body_complete: true,
        peer_port: conn.peer.port(),
    };
    let echo_body = flag("echo_body");
    let mut echoed = Vec::new();
    {
        let (mut reader, _) = conn.split();
        let mut body = RequestBody::new(&mut reader, head.framing, 0);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    received.body_len += n as u64;
                    received.body_hash = fnv(received.body_hash, &buf[..n]);
                    let room = (64 * 1024usize)
                        .saturating_sub(received.body_prefix.len())
                        .min(n);
                    received.body_prefix.extend_from_slice(&buf[..room]);
                    if echo_body {
                        echoed.extend_from_slice(&buf[..n]);
                    }
                }
                Err(_) => {
                    received.body_complete = false;
                    break;
                }
            }
        }
    }
    if state.record.load(Relaxed) {
        state.received.lock().push(received.clone());
    }
    if !received.body_complete {
        return Ok(false);
    }
    let hung = state.hang_all.load(Relaxed);
    if flag("fail_first") && !hung && state.seen.lock().insert(head.target().to_string()) {
        conn.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")?;
        return Ok(true);
    }
    let delay = num("delay_ms").unwrap_or(0) + state.delay_ms.load(Relaxed);
    if delay > 0 {
        std::thread::sleep(Duration::from_millis(delay));
    }
    if let Some(ms) = num("wait_ms") {
        if closed_within(conn, Duration::from_millis(ms)) {
            state
                .closes
                .lock()
                .push((head.target().to_string(), Instant::now()));
            return Ok(false);
        }
    }
    if flag("hang") || state.hang_all.load(Relaxed) {
        if hang(conn) {
            state.hangs_closed.fetch_add(1, Relaxed);
        }
        return Ok(false);
    }
    let again = flag("then_reset") && !state.seen.lock().insert(head.target().to_string());
    if flag("reset") || reset_now || again {
        reset(conn);
        return Ok(false);
    }
    if flag("close") {
        return Ok(false);
    }
    if flag("garbage") {
        conn.write_all(b"THIS IS NOT HTTP\r\n\r\n")?;
        return Ok(false);
    }
    let fail = state.fail_status.load(Relaxed) as u16;
    let health = state.health_status.load(Relaxed) as u16;
    let status = if fail > 0 {
        fail
    } else if health > 0 && head.path().split('?').next() == Some("/health") {
        health
    } else {
        num("status").unwrap_or(200) as u16
    };
    let body = if flag("echo") {
        let headers: Vec<_> = received
            .headers
            .iter()
            .map(|(n, v)| json!([n, String::from_utf8_lossy(v)]))
            .collect();
        Payload::Bytes(
            json!({
                "method": received.method,
                "target": received.target,
                "headers": headers,
                "body_len": received.body_len,
                "body_hash": format!("{:016x}", received.body_hash),
            })
            .to_string()
            .into_bytes(),
        )
    } else if echo_body {
        Payload::Bytes(echoed)
    } else if let Some(n) = num("body_bytes") {
        Payload::Pattern(n)
    } else {
        Payload::Bytes(b"ok".to_vec())
    };
    let bodiless = head.is_head() || status == 204 || status == 304 || status < 200;
    let mut out = Vec::with_capacity(256);
    write!(
        out,
        "HTTP/1.1 {status} {}\r\n",
        sluice::http::write::reason_phrase(status)
    )?;
    for (_, v) in p.iter().filter(|(k, _)| k == "header") {
        if let Some((name, value)) = v.split_once(':') {
            write!(out, "{name}: {value}\r\n")?;
        }
    }
    if let Some(n) = num("big_header") {
        write!(out, "X-Big: {}\r\n", "b".repeat(n as usize))?;
    }
    let chunked = flag("chunked") && !bodiless;
    let no_length = flag("no_length") && !bodiless;
    if chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    } else if no_length {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if !(status == 204 || status < 200) {
        write!(out, "Content-Length: {}\r\n", body.len())?;
    }
    out.extend_from_slice(b"Content-Type: application/octet-stream\r\n\r\n");
    conn.write_all(&out)?;
    if bodiless {
        return Ok(!flag("drop_after"));
    }
    if flag("close_mid_body") || flag("reset_mid_body") || flag("stall_mid_body") {
        body.write(conn, body.len() / 2, chunked)?;
        if flag("stall_mid_body") {
            hang(conn);
        }
        std::thread::sleep(Duration::from_millis(20));
        if flag("reset_mid_body") {
            reset(conn);
        }
        return Ok(false);
    }
    body.write(conn, body.len(), chunked)?;
    if chunked {
        conn.write_all(b"0\r\n\r\n")?;
    }
    Ok(!(no_length || flag("drop_after")))
}

/// A response body: given bytes, or `n` bytes of a repeating alphabet made as they are sent.
enum Payload {
    Bytes(Vec<u8>),
    Pattern(u64),
}

const PATTERN_PIECE: usize = 64 * 1024;

/// The byte at `i` of a `Pattern` body.
pub fn pattern_byte(i: u64) -> u8 {
    b'a' + (i % 26) as u8
}

impl Payload {
    fn len(&self) -> u64 {
        match self {
            Payload::Bytes(b) => b.len() as u64,
            Payload::Pattern(n) => *n,
        }
    }

    /// Writes the first `upto` bytes, as chunks if `chunked` (the last chunk is not written).
    fn write(&self, conn: &mut ClientConn, upto: u64, chunked: bool) -> io::Result<()> {
        let piece: Vec<u8> = (0..PATTERN_PIECE as u64 + 26).map(pattern_byte).collect();
        let mut sent = 0u64;
        while sent < upto {
            let n = (upto - sent).min(PATTERN_PIECE as u64) as usize;
            let data = match self {
                Payload::Bytes(b) => &b[sent as usize..sent as usize + n],
                Payload::Pattern(_) => {
                    let off = (sent % 26) as usize;
                    &piece[off..off + n]
                }
            };
            if chunked {
                write!(conn.writer(), "{n:x}\r\n")?;
                conn.write_all(data)?;
                conn.write_all(b"\r\n")?;
            } else {
                conn.write_all(data)?;
            }
            sent += n as u64;
        }
        Ok(())
    }
}

fn control(
    conn: &mut ClientConn,
    head: &RequestHead,
    state: &State,
    status: Option<u64>,
    ms: Option<u64>,
) -> io::Result<bool> {
    let path = head.path().split('?').next().unwrap_or("");
    match path {
        "/__upstream/fail" => state.fail_status.store(status.unwrap_or(0), Relaxed),
        "/__upstream/delay" => state.delay_ms.store(ms.unwrap_or(0), Relaxed),
        "/__upstream/hang" => {
            let on = params(head.target()).contains(&("on".into(), "1".into()));
            state.hang_all.store(on, Relaxed);
        }
        "/__upstream/health" => state.health_status.store(status.unwrap_or(0), Relaxed),
        _ => {}
    }
    let body = json!({
        "requests": state.requests.load(Relaxed),
        "connections": state.connections.load(Relaxed),
        "fail_status": state.fail_status.load(Relaxed),
        "delay_ms": state.delay_ms.load(Relaxed),
        "hang": state.hang_all.load(Relaxed),
        "health_status": state.health_status.load(Relaxed),
    })
    .to_string();
    write!(
        conn.writer(),
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    Ok(true)
}

/// Closes with RST (SO_LINGER 0) instead of FIN.
fn reset(conn: &ClientConn) {
    if let Ok(s) = conn.stream().try_clone() {
        let sock = socket2::Socket::from(s);
        let _ = sock.set_linger(Some(Duration::ZERO));
    }
}

/// Waits up to `wait` for the peer to close the connection; true if it did. Sleeps in poll(2)
/// for the peer's FIN or reset (bytes it sends meanwhile do not wake it), reading nothing: the
/// close is seen when it comes, and a waiting request costs no CPU.
fn closed_within(conn: &ClientConn, wait: Duration) -> bool {
    use std::os::fd::AsRawFd;
    let until = Instant::now() + wait;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
        let mut fd = libc::pollfd {
            fd: conn.stream().as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid `pollfd` on this connection's open descriptor, for the call only.
        match unsafe { libc::poll(&mut fd, 1, ms) } {
            n if n > 0 => return true, // POLLRDHUP, or POLLHUP / POLLERR
            0 => {}
            _ => std::thread::sleep(Duration::from_millis(1)), // EINTR: try again
        }
    }
}

/// Says nothing until the peer goes away (bounded: 10 minutes).
/// Answers nothing for up to 10 minutes; true if the peer closed the connection meanwhile.
fn hang(conn: &ClientConn) -> bool {
    let mut s = conn.stream();
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 1024];
    for _ in 0..3000 {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}
