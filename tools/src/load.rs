//! The closed-loop load generator behind `sluice-load` and the demo: `concurrent` threads, each
//! with its own keep-alive connection, send one prepared request until a count or a duration is
//! reached; the report has statuses, error kinds, sluice reasons and a latency histogram. A
//! request fails on a transport error or a status the plan does not expect (default: 5xx).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::client::{Client, ErrorKind};

/// What to send, how hard and for how long.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The server's addresses, tried in order.
    pub addrs: Vec<SocketAddr>,
    pub request: Vec<u8>,
    pub head_request: bool,
    pub concurrent: usize,
    /// Stop after this many requests …
    pub total: Option<u64>,
    /// … or after this long.
    pub duration: Option<Duration>,
    pub timeout: Duration,
    pub keepalive: bool,
    /// Which statuses count as success.
    pub expect: Expect,
}

/// Which statuses count as success: by default everything but a 5xx (a 404 is the server's
/// answer, as `/proxy-metrics` counts it); `--expect-status` names them instead.
#[derive(Clone, Debug, Default)]
pub enum Expect {
    #[default]
    Not5xx,
    /// Exact codes, or classes (`2xx` is 200-299).
    Listed(Vec<(u16, u16)>),
}

impl Expect {
    /// Parses `200,204,3xx`.
    pub fn parse(text: &str) -> Result<Expect, String> {
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim) {
            let range = match part.as_bytes() {
                [d @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => {
                    let base = u16::from(d - b'0') * 100;
                    (base, base + 99)
                }
                _ => match part.parse::<u16>() {
                    Ok(n) if (100..=599).contains(&n) => (n, n),
                    _ => return Err(format!("{part:?} is not a status code or class like 2xx")),
                },
            };
            out.push(range);
        }
        Ok(Expect::Listed(out))
    }

    pub fn accepts(&self, status: u16) -> bool {
        match self {
            Expect::Not5xx => status < 500,
            Expect::Listed(l) => l.iter().any(|(lo, hi)| (*lo..=*hi).contains(&status)),
        }
    }
}

/// Live counters, read by the progress line.
#[derive(Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub errors: AtomicU64,
}

/// The outcome of a run.
pub struct Report {
    pub elapsed: Duration,
    pub requests: u64,
    pub successes: u64,
    pub by_status: BTreeMap<u16, u64>,
    pub by_error: BTreeMap<ErrorKind, u64>,
    pub by_reason: BTreeMap<String, u64>,
    pub bytes: u64,
    /// Latency of every request that got an answer, in microseconds.
    pub latency: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds are valid")
}

impl Report {
    fn empty() -> Report {
        Report {
            elapsed: Duration::ZERO,
            requests: 0,
            successes: 0,
            by_status: BTreeMap::new(),
            by_error: BTreeMap::new(),
            by_reason: BTreeMap::new(),
            bytes: 0,
            latency: histogram(),
        }
    }

    fn merge(&mut self, other: Report) {
        self.requests += other.requests;
        self.successes += other.successes;
        self.bytes += other.bytes;
        for (k, v) in other.by_status {
            *self.by_status.entry(k).or_default() += v;
        }
        for (k, v) in other.by_error {
            *self.by_error.entry(k).or_default() += v;
        }
        for (k, v) in other.by_reason {
            *self.by_reason.entry(k).or_default() += v;
        }
        let _ = self.latency.add(&other.latency);
    }

    pub fn failures(&self) -> u64 {
        self.requests - self.successes
    }

    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency quantile in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        if self.latency.is_empty() {
            0.0
        } else {
            self.latency.value_at_quantile(q) as f64 / 1000.0
        }
    }

    pub fn to_json(&self) -> Value {
        let lat = &self.latency;
        let ms = |us: u64| us as f64 / 1000.0;
        json!({
            "requests": self.requests,
            "successes": self.successes,
            "failures": self.failures(),
            "elapsed_seconds": self.elapsed.as_secs_f64(),
            "requests_per_second": self.requests_per_second(),
            "bytes_per_second": self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9),
            "by_status": self.by_status.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "by_error": self.by_error.iter().map(|(k, v)| (k.as_str().to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "sluice_reasons": self.by_reason.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "latency_ms": {
                "min": if lat.is_empty() { 0.0 } else { ms(lat.min()) },
                "avg": lat.mean() / 1000.0,
                "p50": self.ms(0.50),
                "p90": self.ms(0.90),
                "p95": self.ms(0.95),
                "p99": self.ms(0.99),
                "max": if lat.is_empty() { 0.0 } else { ms(lat.max()) },
            },
        })
    }

    /// The human summary, with a small latency histogram.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let _ = writeln!(
            o,
            "requests      {} in {:.2}s ({} ok, {} failed)",
            self.requests,
            secs,
            self.successes,
            self.failures()
        );
        let _ = writeln!(
            o,
            "throughput    {:.1} req/s, {:.2} MiB/s",
            self.requests_per_second(),
            self.bytes as f64 / secs / (1 << 20) as f64
        );
        let statuses: Vec<String> = self
            .by_status
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(
            o,
            "statuses      {}",
            if statuses.is_empty() {
                "-".into()
            } else {
                statuses.join(", ")
            }
        );
        if !self.by_error.is_empty() {
            let errs: Vec<String> = self
                .by_error
                .iter()
                .map(|(k, v)| format!("{}: {v}", k.as_str()))
                .collect();
            let _ = writeln!(o, "errors        {}", errs.join(", "));
        }
        if !self.by_reason.is_empty() {
            let rs: Vec<String> = self
                .by_reason
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            let _ = writeln!(o, "sluice said   {}", rs.join(", "));
        }
        if self.latency.is_empty() {
            return o;
        }
        let lat = &self.latency;
        let _ = writeln!(
            o,
            "latency ms    min {:.2}  avg {:.2}  p50 {:.2}  p90 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}",
            lat.min() as f64 / 1000.0,
            lat.mean() / 1000.0,
            self.ms(0.5),
            self.ms(0.9),
            self.ms(0.95),
            self.ms(0.99),
            lat.max() as f64 / 1000.0
        );
        o.push_str(&self.bars());
        o
    }

    /// Ten buckets between min and max latency, drawn as bars.
    fn bars(&self) -> String {
        let lat = &self.latency;
        let (lo, hi) = (lat.min(), lat.max().max(lat.min() + 1));
        let step = ((hi - lo) / 10).max(1);
        let counts: Vec<u64> = (0..10)
            .map(|i| {
                let a = lo + i * step;
                let b = if i == 9 { hi } else { a + step - 1 };
                lat.count_between(a, b)
            })
            .collect();
        let peak = counts.iter().copied().max().unwrap_or(1).max(1);
        let mut o = String::new();
        for (i, c) in counts.iter().enumerate() {
            let a = (lo + i as u64 * step) as f64 / 1000.0;
            let bar = "#".repeat(((c * 40).div_ceil(peak)) as usize);
            let _ = writeln!(o, "  {a:>9.2} ms | {bar:<40} {c}");
        }
        o
    }
}

/// Runs the plan; `progress` is updated as requests finish.
pub fn run(plan: &Plan, progress: &Progress) -> Report {
    let started = Instant::now();
    let deadline = plan.duration.map(|d| started + d);
    let issued = AtomicU64::new(0);
    let mut report = Report::empty();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..plan.concurrent.max(1))
            .map(|_| scope.spawn(|| worker(plan, deadline, &issued, progress)))
            .collect();
        for w in workers {
            if let Ok(r) = w.join() {
                report.merge(r);
            }
        }
    });
    report.elapsed = started.elapsed();
    report
}

fn worker(
    plan: &Plan,
    deadline: Option<Instant>,
    issued: &AtomicU64,
    progress: &Progress,
) -> Report {
    let mut client = Client::new(plan.addrs.clone(), plan.timeout, plan.keepalive);
    let mut r = Report::empty();
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if let Some(total) = plan.total {
            if issued.fetch_add(1, Relaxed) >= total {
                break;
            }
        }
        let t = Instant::now();
        let result = client.call(&plan.request, plan.head_request);
        r.requests += 1;
        progress.done.fetch_add(1, Relaxed);
        match result {
            Ok(a) => {
                let _ = r.latency.record(t.elapsed().as_micros().max(1) as u64);
                *r.by_status.entry(a.status).or_default() += 1;
                r.bytes += a.body_bytes;
                if let Some(reason) = a.sluice_error {
                    *r.by_reason.entry(reason).or_default() += 1;
                }
                if plan.expect.accepts(a.status) {
                    r.successes += 1;
                } else {
                    progress.errors.fetch_add(1, Relaxed);
                }
            }
            Err(e) => {
                *r.by_error.entry(ErrorKind::of(&e)).or_default() += 1;
                progress.errors.fetch_add(1, Relaxed);
                if ErrorKind::of(&e) == ErrorKind::Refused {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
    r
}
