//! `sluice-demo` (run by `./start.sh --demo`): starts `sluice-upstream` and `sluice` on free
//! loopback ports and walks through normal traffic, queueing, retries and the breaker, printing
//! the relevant `/proxy-metrics` fields after each step. Stops everything it started.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use argh::FromArgs;
use serde_json::Value;
use sluice_tools::client::{request_bytes, Client, Url};
use sluice_tools::load::{run, Expect, Plan, Progress};

#[derive(FromArgs)]
/// A one-minute tour of sluice: queueing, retries and the circuit breaker, live.
struct Args {
    /// shorter pauses and timeouts (used by the tests)
    #[argh(switch)]
    fast: bool,
}

/// A child process that is killed when dropped.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sibling(name: &str) -> PathBuf {
    let me = std::env::current_exe().unwrap_or_default();
    me.with_file_name(name)
}

/// Starts a binary and waits for its "listening on ADDR" line.
fn start(name: &str, args: &[&str]) -> Result<(Started, SocketAddr), String> {
    let mut child = Command::new(sibling(name))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!("cannot start {name}: {e} (build with cargo build --release --bins)")
        })?;
    let out = child.stdout.take();
    let err = child.stderr.take();
    let (tx, rx) = std::sync::mpsc::channel();
    for stream in [
        out.map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
        err.map(|e| Box::new(e) as _),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                }
            }
        });
    }
    let started = Started(child);
    let addr = rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| format!("{name} did not start"))?
        .parse()
        .map_err(|e| format!("{name}: bad address: {e}"))?;
    Ok((started, addr))
}

fn get(addr: SocketAddr, path: &str) -> Option<(u16, Option<String>, Duration)> {
    let url = Url::parse(&format!("http://{addr}{path}")).ok()?;
    let mut c = Client::new(vec![addr], Duration::from_secs(10), false);
    let t = Instant::now();
    let a = c
        .call(&request_bytes("GET", &url, &[], &[], false), false)
        .ok()?;
    Some((a.status, a.sluice_error, t.elapsed()))
}

fn metrics(addr: SocketAddr) -> Value {
    let url = format!("http://{addr}/proxy-metrics");
    let Ok(stream) = std::net::TcpStream::connect(addr) else {
        return Value::Null;
    };
    let _ = url;
    let mut r = BufReader::new(stream);
    let _ = std::io::Write::write_all(
        r.get_mut(),
        b"GET /proxy-metrics HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n",
    );
    let mut text = String::new();
    let _ = std::io::Read::read_to_string(&mut r, &mut text);
    text.split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str::<Value>(body).ok())
        .map_or(Value::Null, |v| v["metrics"].clone())
}

fn show(addr: SocketAddr, keys: &[&str]) {
    let m = metrics(addr);
    for k in keys {
        println!("    {k:<22} {}", m[*k]);
    }
}

fn load(addr: SocketAddr, path: &str, concurrent: usize, secs: f64) -> sluice_tools::load::Report {
    let url = Url::parse(&format!("http://{addr}{path}")).unwrap_or(Url {
        host: addr.ip().to_string(),
        port: addr.port(),
        path: "/".into(),
    });
    let plan = Plan {
        addrs: vec![addr],
        request: request_bytes("GET", &url, &[], &[], true),
        head_request: false,
        concurrent,
        total: None,
        duration: Some(Duration::from_secs_f64(secs)),
        timeout: Duration::from_secs(10),
        keepalive: true,
        expect: Expect::Not5xx,
    };
    run(&plan, &Progress::default())
}

fn step(n: u32, title: &str, text: &str) {
    println!("\n== Step {n}: {title}\n   {text}");
}

fn main() -> std::process::ExitCode {
    let args: Args = argh::from_env();
    match demo(args.fast) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-demo: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

fn demo(fast: bool) -> Result<(), String> {
    let pause =
        |s: f64| std::thread::sleep(Duration::from_secs_f64(if fast { s / 4.0 } else { s }));
    let breaker_timeout = if fast { "1" } else { "4" };
    let (_up, up) = start(
        "sluice-upstream",
        &["--listen", "127.0.0.1:0", "--no-record"],
    )?;
    let port = up.port().to_string();
    let (_sluice, addr) = start(
        "sluice",
        &[
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--target-host",
            "127.0.0.1",
            "--target-port",
            &port,
            "--max-concurrent-requests",
            "4",
            "--max-queue-size",
            "4",
            "--queue-timeout",
            "2",
            "--max-retries",
            "2",
            "--retry-backoff-factor",
            "0.05",
            "--circuit-breaker-threshold",
            "5",
            "--circuit-breaker-timeout",
            breaker_timeout,
            "--log-level",
            "error",
        ],
    )?;
    println!("sluice demo: test upstream on {up}, sluice on {addr}");
    println!("sluice: 4 workers, queue of 4, 2 retries, breaker opens after 5 failures for {breaker_timeout}s");

    step(
        1,
        "normal traffic",
        "8 clients for a moment against a healthy upstream: every request succeeds.",
    );
    let r = load(addr, "/hello", 8, if fast { 0.5 } else { 2.0 });
    println!(
        "    client view: {} requests, {} ok, p50 {:.2} ms",
        r.requests,
        r.successes,
        r.ms(0.5)
    );
    show(
        addr,
        &["total_requests", "success_rate", "p50_response_time"],
    );

    step(2, "a slow upstream and more clients than workers + queue",
        "The upstream now takes 300 ms. 30 clients > 4 workers + 4 queued: the rest get 503 queue_full at once,\n   instead of piling up (the Python service would have opened 30 upstream connections).");
    let r = load(addr, "/slow?delay_ms=300", 30, if fast { 1.0 } else { 3.0 });
    let full = r.by_reason.get("queue_full").copied().unwrap_or(0);
    println!("    client view: {} ok, {full} fast 503 queue_full, p50 {:.2} ms (most answers are instant 503s)", r.successes, r.ms(0.5));
    show(
        addr,
        &[
            "queue_rejected",
            "max_concurrent_requests",
            "max_queue_size",
            "p99_response_time",
        ],
    );

    step(3, "the upstream starts failing",
        "Every request now gets 503 from the upstream. GETs are retried with backoff (retry_attempts), then after 5\n   failed requests the breaker opens and sluice answers 503 circuit_open itself, without touching the upstream.");
    let _ = get(up, "/__upstream/fail?status=503");
    for _ in 0..5 {
        let _ = get(addr, "/flaky");
    }
    show(
        addr,
        &["retry_attempts", "consecutive_failures", "circuit_state"],
    );
    let open = get(addr, "/flaky").ok_or("no answer while open")?;
    println!(
        "    a request now: {} {} in {:.3} ms",
        open.0,
        open.1.as_deref().unwrap_or("-"),
        open.2.as_secs_f64() * 1000.0
    );
    show(addr, &["circuit_open", "circuit_rejected"]);

    step(
        4,
        "the upstream recovers",
        "After the breaker timeout one probe request goes through; its success closes the breaker.",
    );
    let _ = get(up, "/__upstream/fail?status=0");
    pause(
        f64::from(breaker_timeout.parse::<u8>().unwrap_or(4)) * if fast { 4.0 } else { 1.0 } + 0.3,
    );
    let probe = get(addr, "/recovered").ok_or("no answer to the probe")?;
    println!(
        "    probe: {} in {:.2} ms",
        probe.0,
        probe.2.as_secs_f64() * 1000.0
    );
    show(
        addr,
        &[
            "circuit_state",
            "consecutive_failures",
            "circuit_times_opened",
        ],
    );
    let r = load(addr, "/hello", 8, if fast { 0.3 } else { 1.0 });
    println!(
        "    client view: {} requests, {} ok",
        r.requests, r.successes
    );
    println!("\ndemo finished; sluice and the test upstream are stopped.");
    Ok(())
}
