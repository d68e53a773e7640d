//! Shared end-to-end helpers: start a real test upstream and a real sluice on 127.0.0.1, speak
//! raw HTTP/1.1 over sockets, and run the `sluice` binary as a process. No HTTP is mocked.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice::{Config, Running};
use sluice_tools::upstream::TestUpstream;

/// The `sluice` binary: Cargo names it for this package's tests; the tooling crate's tests
/// (which share these helpers) find it beside their own executable's folder.
pub fn sluice_bin() -> std::path::PathBuf {
    match option_env!("CARGO_BIN_EXE_sluice") {
        Some(p) => p.into(),
        None => {
            let exe = std::env::current_exe().expect("test executable path");
            let deps = exe.parent().expect("deps folder");
            deps.parent().expect("profile folder").join("sluice")
        }
    }
}

/// A command for `program` that cannot reach any network: in a network namespace of its own
/// when `unshare -n` works here (as root), so that `--check-config`'s look-up of a target host
/// name sends nothing beyond this machine. Elsewhere the plain command.
pub fn offline(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let works = Command::new("unshare")
        .args(["-n", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        let mut c = Command::new("unshare");
        c.arg("-n").arg(program);
        c
    } else {
        Command::new(program)
    }
}

pub fn upstream() -> TestUpstream {
    TestUpstream::start().expect("start test upstream")
}

/// Settings for tests: loopback, small pools, short timeouts; `tweak` changes the rest.
pub fn config(target_port: u16, tweak: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config {
        host: "127.0.0.1".into(),
        port: 0,
        target_host: "127.0.0.1".into(),
        target_port,
        max_concurrent_requests: 8,
        max_queue_size: 16,
        pool_maxsize: 8,
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(10),
        retry_backoff_factor: 0.01,
        client_header_timeout: Duration::from_secs(5),
        log_level: sluice::config::LogLevel::Error,
        ..Config::default()
    };
    tweak(&mut c);
    c
}

pub fn sluice(target_port: u16, tweak: impl FnOnce(&mut Config)) -> Running {
    sluice::start(config(target_port, tweak)).expect("start sluice")
}

/// An overload: a one-worker, no-queue sluice in front of `up` whose worker holds one 400 ms
/// request while 50 more are refused at once (503 `queue_full`); returned after all answered.
pub fn overloaded(up: &TestUpstream) -> Running {
    let s = sluice(up.port(), |c| {
        c.max_concurrent_requests = 1;
        c.max_queue_size = 0;
    });
    let addr = s.addr();
    let slow = std::thread::spawn(move || get(addr, "/slow?delay_ms=400"));
    assert!(eventually(Duration::from_secs(3), || up.request_count() == 1));
    for _ in 0..50 {
        get(addr, "/refused").assert_sluice_error(503, "queue_full");
    }
    assert_eq!(slow.join().unwrap().status, 200);
    s
}

/// A loopback port that refuses connections: bound but never listening, so no other test can be
/// given it while this lives (a released port can be handed to a parallel test's upstream).
pub struct DeadPort(socket2::Socket);

impl DeadPort {
    pub fn port(&self) -> u16 {
        self.0.local_addr().unwrap().as_socket().unwrap().port()
    }
}

pub fn dead_port() -> DeadPort {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    DeadPort(s)
}

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub version: u8,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body ended as its framing said it would (false: truncated).
    pub complete: bool,
    pub chunked: bool,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts one of sluice's own error responses (README "Responses sluice makes itself").
    pub fn assert_sluice_error(&self, status: u16, reason: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.header("x-sluice-error"), Some(reason), "{self:?}");
        let v = self.json();
        assert_eq!(v["error"], reason);
        assert!(v["request_id"].as_str().is_some_and(|s| !s.is_empty()));
        if status == 503 {
            assert!(
                self.header("retry-after").is_some(),
                "503 without Retry-After"
            );
        }
    }
}

/// One client connection speaking raw HTTP/1.1.
pub struct Conn {
    pub r: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).expect("connect to sluice");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Conn {
            r: BufReader::new(s),
        }
    }

    /// A connection from the loopback address `from` (127.0.0.2, 127.0.0.3…): a client of its
    /// own for `client_key ip`. Bound before connecting.
    pub fn open_from(addr: SocketAddr, from: [u8; 4]) -> Conn {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let local = SocketAddr::from((from, 0));
        s.bind(&local.into())
            .expect("bind a loopback source address");
        s.connect(&addr.into()).expect("connect to sluice");
        let s: TcpStream = s.into();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Conn {
            r: BufReader::new(s),
        }
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.r.get_mut().write_all(raw).expect("write request");
    }

    /// Sends a `POST /upload` head for `total` body bytes, then writes the body from a thread
    /// in 64 KiB pieces (with `pause` after each) until all of it is sent or a write fails —
    /// like `requests.post(data=...)`, which sends the whole body before reading the answer.
    /// The thread returns the bytes sent.
    pub fn upload(&mut self, total: usize, pause: Duration) -> std::thread::JoinHandle<usize> {
        self.send(
            format!("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {total}\r\n\r\n")
                .as_bytes(),
        );
        let mut writer = self.r.get_ref().try_clone().unwrap();
        writer
            .set_write_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        std::thread::spawn(move || {
            let chunk = vec![b'u'; 64 * 1024];
            let mut sent = 0;
            while sent < total {
                if writer.write_all(&chunk).is_err() {
                    break;
                }
                sent += chunk.len();
                std::thread::sleep(pause);
            }
            sent
        })
    }

    /// Sends `raw` and reads one response (`head`: it answers a HEAD request).
    pub fn request(&mut self, raw: &[u8], head: bool) -> Resp {
        self.send(raw);
        self.response(head).expect("a response")
    }

    pub fn get(&mut self, path: &str) -> Resp {
        self.request(
            format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
            false,
        )
    }

    /// Reads one response; None if the connection closed before a status line.
    pub fn response(&mut self, head: bool) -> Option<Resp> {
        let mut raw = Vec::new();
        loop {
            let mut line = Vec::new();
            let n = self.r.read_until(b'\n', &mut line).ok()?;
            if n == 0 {
                return None;
            }
            raw.extend_from_slice(&line);
            if line == b"\r\n" && raw.len() > 2 {
                break;
            }
        }
        let mut hs = [httparse::EMPTY_HEADER; 256];
        let mut r = httparse::Response::new(&mut hs);
        r.parse(&raw).expect("response head parses");
        let status = r.code.unwrap();
        if status == 100 {
            return self.response(head);
        }
        let headers: Vec<(String, String)> = r
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let mut resp = Resp {
            status,
            version: r.version.unwrap(),
            headers,
            body: Vec::new(),
            complete: true,
            chunked: false,
        };
        if head || status == 204 || status == 304 || status < 200 {
            return Some(resp);
        }
        if resp
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            resp.chunked = true;
            resp.complete = self.read_chunked(&mut resp.body);
        } else if let Some(cl) = resp
            .header("content-length")
            .map(|v| v.parse::<u64>().unwrap())
        {
            let got = (&mut self.r)
                .take(cl)
                .read_to_end(&mut resp.body)
                .unwrap_or(0);
            resp.complete = got as u64 == cl;
        } else {
            let _ = self.r.read_to_end(&mut resp.body);
        }
        Some(resp)
    }

    fn read_chunked(&mut self, out: &mut Vec<u8>) -> bool {
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line).unwrap_or(0) == 0 {
                return false;
            }
            let Ok(size) =
                usize::from_str_radix(line.trim_end().split(';').next().unwrap_or(""), 16)
            else {
                return false;
            };
            if size == 0 {
                let mut end = String::new();
                let _ = self.r.read_line(&mut end);
                return end == "\r\n";
            }
            let start = out.len();
            out.resize(start + size, 0);
            if self.r.read_exact(&mut out[start..]).is_err() {
                out.truncate(start);
                return false;
            }
            let mut crlf = [0u8; 2];
            if self.r.read_exact(&mut crlf).is_err() {
                return false;
            }
        }
    }

    /// True if the server closed the connection (EOF) within `wait`.
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        self.r.get_ref().set_read_timeout(Some(wait)).unwrap();
        let mut b = [0u8; 1];
        matches!(self.r.read(&mut b), Ok(0))
            || matches!(self.r.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
    }
}

/// A client socket with a tiny receive buffer: it takes a response only as fast as it reads it.
pub fn slow_reader(addr: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// One request on a fresh connection.
pub fn get(addr: SocketAddr, path: &str) -> Resp {
    Conn::open(addr).get(path)
}

pub fn send(addr: SocketAddr, raw: &[u8]) -> Resp {
    Conn::open(addr).request(raw, false)
}

/// Polls `f` until it is true or `within` passes.
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

/// Polls every 5 ms until `f`, at most `within`; the time it took.
pub fn time_until(within: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < within {
        if f() {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// Requests a worker holds now (`active_requests`).
pub fn active(addr: SocketAddr) -> u64 {
    metrics(addr)["active_requests"].as_u64().unwrap()
}

/// The `/proxy-metrics` JSON's `metrics` object.
pub fn metrics(addr: SocketAddr) -> serde_json::Value {
    get(addr, "/proxy-metrics").json()["metrics"].clone()
}

/// Parses Prometheus text with the official parser (`tests/prom_check.py`): the families as
/// JSON, `{name: {"type", "samples": [[name, labels, value]…]}}`.
pub fn parse_prometheus(text: &str) -> serde_json::Value {
    let mut child = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/prom_check.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (test.sh installs prometheus_client)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus parser refused the text: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The value of one sample of a parsed family.
pub fn sample(
    fams: &serde_json::Value,
    family: &str,
    name: &str,
    label: Option<(&str, &str)>,
) -> f64 {
    fams[family]["samples"]
        .as_array()
        .unwrap_or_else(|| panic!("no family {family}"))
        .iter()
        .find(|s| s[0] == name && label.is_none_or(|(k, v)| s[1][k] == v))
        .unwrap_or_else(|| panic!("no sample {name} {label:?}"))[2]
        .as_f64()
        .unwrap()
}

/// A `sluice` process; killed when dropped.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    pub stderr: std::sync::Arc<parking_lot::Mutex<String>>,
}

impl Proc {
    /// Starts the sluice binary with `args` (add `--port 0 --host 127.0.0.1`) and waits until
    /// it listens.
    pub fn start(args: &[&str]) -> Proc {
        Self::start_with(Command::new(sluice_bin()).args(args))
    }

    /// Starts the sluice binary on a free loopback port in front of `upstream_port`.
    pub fn in_front_of(upstream_port: u16, extra: &[&str]) -> Proc {
        Self::start_with(&mut command_in_front_of(upstream_port, extra))
    }

    pub fn start_with(cmd: &mut Command) -> Proc {
        Self::spawn(cmd.stdout(Stdio::null()))
    }

    /// Like `in_front_of`, with stdout kept for `stdout_after_kill` (the access log).
    pub fn in_front_of_keeping_stdout(upstream_port: u16, extra: &[&str]) -> Proc {
        Self::spawn(command_in_front_of(upstream_port, extra).stdout(Stdio::piped()))
    }

    /// Kills the process and returns everything it wrote to stdout.
    pub fn stdout_after_kill(&mut self) -> String {
        let _ = self.child.kill();
        let mut out = String::new();
        if let Some(mut s) = self.child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        out
    }

    fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd.stderr(Stdio::piped()).spawn().expect("spawn sluice");
        let err = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(parking_lot::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let l2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                // Logged before the address is passed on: what came before "listening" is in
                // the log when `start` returns.
                l2.lock().push_str(&line);
                l2.lock().push('\n');
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("sluice did not start: {}", log.lock()))
            .parse()
            .expect("listen address");
        Proc {
            child,
            addr,
            stderr: log,
        }
    }

    pub fn child_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        status_field(self.pid(), "VmHWM:")
    }

    pub fn rss_kib(&self) -> u64 {
        status_field(self.pid(), "VmRSS:")
    }

    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .args(["-s", sig, &self.pid().to_string()])
            .status()
            .unwrap();
    }

    /// Waits for exit up to `within`; the exit code if it exited.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn status_field(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The sluice binary's command line for a free loopback port in front of `upstream_port`.
pub fn command_in_front_of(upstream_port: u16, extra: &[&str]) -> Command {
    let mut cmd = Command::new(sluice_bin());
    cmd.args(["--host", "127.0.0.1", "--port", "0"])
        .args(["--target-host", "127.0.0.1"])
        .args(["--target-port", &upstream_port.to_string()])
        .args(extra);
    cmd
}
