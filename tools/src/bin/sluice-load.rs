//! `sluice-load`: a closed-loop HTTP load tester with the flags of the Python service's
//! `test_concurrent_load.py` (`--url --concurrent --total-requests`) and more.
//! A request fails on a transport error or a 5xx (or what `--expect-status` does not list).
//! Exit status: 0 if any request succeeded, 1 if every request failed, 2 on bad input
//! (bad flags included).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use argh::FromArgs;
use sluice_tools::client::{request_bytes, Url};
use sluice_tools::load::{run, Expect, Plan, Progress};

#[derive(FromArgs)]
/// Load-test an HTTP server (sluice or anything else) and report throughput, status codes,
/// error kinds, sluice's reasons (X-Sluice-Error) and latency percentiles.
struct Args {
    /// target URL, e.g. http://127.0.0.1:8080/path
    #[argh(option)]
    url: String,
    /// concurrent clients, each with its own connection (default 10)
    #[argh(option, default = "10")]
    concurrent: usize,
    /// requests in all (default 100; ignored with --duration)
    #[argh(option, default = "100")]
    total_requests: u64,
    /// run for this many seconds instead of a request count
    #[argh(option)]
    duration: Option<f64>,
    /// HTTP method (default GET)
    #[argh(option, default = "String::from(\"GET\")")]
    method: String,
    /// extra header "Name: value" (repeatable)
    #[argh(option)]
    header: Vec<String>,
    /// request body text
    #[argh(option)]
    body: Option<String>,
    /// request body read from a file
    #[argh(option)]
    body_file: Option<String>,
    /// seconds to wait for each response (default 30)
    #[argh(option, default = "30.0")]
    timeout: f64,
    /// keep connections alive between requests (the default)
    #[argh(switch)]
    keepalive: bool,
    /// open a new connection for every request
    #[argh(switch)]
    no_keepalive: bool,
    /// print the summary as JSON
    #[argh(switch)]
    json: bool,
    /// statuses that count as success, e.g. "200,204" or "2xx,3xx" (default: all but 5xx)
    #[argh(option)]
    expect_status: Option<String>,
}

fn bad(msg: &str) -> ExitCode {
    eprintln!("sluice-load: {msg}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let words: Vec<&str> = argv.iter().skip(1).map(String::as_str).collect();
    let args = match Args::from_args(&["sluice-load"], &words) {
        Ok(a) => a,
        Err(early) if early.status.is_ok() => {
            let _ = writeln!(std::io::stdout(), "{}", early.output);
            return ExitCode::SUCCESS;
        }
        Err(early) => return bad(early.output.trim_end()),
    };
    let url = match Url::parse(&args.url) {
        Ok(u) => u,
        Err(e) => return bad(&format!("--url {e}")),
    };
    if args.concurrent == 0 {
        return bad("--concurrent must be at least 1");
    }
    if args.duration.is_none() && args.total_requests == 0 {
        return bad("--total-requests must be at least 1");
    }
    if args.duration.is_some_and(|d| !(d.is_finite() && d > 0.0))
        || !(args.timeout.is_finite() && args.timeout > 0.0)
    {
        return bad("--duration and --timeout must be positive numbers of seconds");
    }
    let mut headers = Vec::new();
    for h in &args.header {
        match h.split_once(':') {
            Some((k, v)) if !k.trim().is_empty() => {
                headers.push((k.trim().to_string(), v.trim().to_string()))
            }
            _ => return bad(&format!("--header {h:?}: expected \"Name: value\"")),
        }
    }
    let body = match (&args.body, &args.body_file) {
        (Some(_), Some(_)) => return bad("give --body or --body-file, not both"),
        (Some(b), None) => b.clone().into_bytes(),
        (None, Some(path)) => match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => return bad(&format!("--body-file {path}: {e}")),
        },
        (None, None) => Vec::new(),
    };
    let addrs = match url.resolve() {
        Ok(a) => a,
        Err(e) => return bad(&format!("--url {}: cannot resolve host: {e}", args.url)),
    };
    let expect = match args.expect_status.as_deref().map(Expect::parse) {
        None => Expect::Not5xx,
        Some(Ok(e)) => e,
        Some(Err(e)) => return bad(&format!("--expect-status: {e}")),
    };
    let keepalive = args.keepalive || !args.no_keepalive;
    let method = args.method.to_ascii_uppercase();
    let plan = Plan {
        addrs,
        request: request_bytes(&method, &url, &headers, &body, keepalive),
        head_request: method == "HEAD",
        concurrent: args.concurrent,
        total: args.duration.is_none().then_some(args.total_requests),
        duration: args.duration.map(Duration::from_secs_f64),
        timeout: Duration::from_secs_f64(args.timeout),
        keepalive,
        expect,
    };
    let progress = Progress::default();
    let show = std::io::stderr().is_terminal() && !args.json;
    let done = std::sync::atomic::AtomicBool::new(false);
    let report = std::thread::scope(|s| {
        if show {
            s.spawn(|| progress_line(&plan, &progress, &done));
        }
        let r = run(&plan, &progress);
        done.store(true, Relaxed);
        r
    });
    if show {
        eprint!("\r\x1b[2K");
    }
    // A closed stdout (`| head`) ends the output, not the program with a panic.
    let mut out = std::io::stdout().lock();
    let _ = if args.json {
        writeln!(out, "{}", report.to_json())
    } else {
        writeln!(
            out,
            "sluice-load: {method} {} with {} clients\n{}",
            args.url,
            args.concurrent,
            report.render().trim_end()
        )
    };
    if report.successes == 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Redraws one status line on the terminal until the run ends.
fn progress_line(plan: &Plan, p: &Progress, done: &std::sync::atomic::AtomicBool) {
    let start = std::time::Instant::now();
    let mut last = (0u64, start);
    while !done.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        let n = p.done.load(Relaxed);
        let now = std::time::Instant::now();
        let rate = (n - last.0) as f64 / now.duration_since(last.1).as_secs_f64().max(1e-9);
        last = (n, now);
        let of = match (plan.total, plan.duration) {
            (Some(t), _) => format!("{n}/{t}"),
            (_, Some(d)) => format!(
                "{n} in {:.0}/{:.0}s",
                start.elapsed().as_secs_f64(),
                d.as_secs_f64()
            ),
            _ => n.to_string(),
        };
        eprint!(
            "\r\x1b[2K  {of}  {rate:.0} req/s  errors {}",
            p.errors.load(Relaxed)
        );
    }
}
