//! Counters, gauges and latency histograms, recorded on the hot path with atomics and one short
//! lock, and read by `front/admin.rs` to render `/proxy-metrics` and Prometheus text.
//!
//! Every proxied request ends in exactly one `Outcome`; the JSON counters of the Python service
//! and the Prometheus `outcome` label are both derived from it.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;

pub use crate::policy::outcome::Outcome;
use crate::policy::outcome::OUTCOME_LABELS;

/// One consistent read of the outcome counters.
pub struct Counts {
    pub total: u64,
    /// Answered with a status below 500 (the Python service's "successful").
    pub successful: u64,
    pub client_aborted: u64,
    pub by_label: Vec<(&'static str, u64)>,
}

impl Counts {
    pub fn of(&self, label: &str) -> u64 {
        self.by_label
            .iter()
            .find(|(l, _)| *l == label)
            .map_or(0, |(_, n)| *n)
    }

    /// Neither successful nor abandoned by the client; never negative.
    pub fn failed(&self) -> u64 {
        self.total - self.successful - self.client_aborted
    }
}

/// Upper bounds (seconds) of the Prometheus duration buckets.
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

/// A Prometheus histogram over `DURATION_BUCKETS` in atomics: one counter per bucket and one
/// past the last, so that its count is their sum and never disagrees with them.
struct Buckets {
    counts: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

impl Buckets {
    fn new() -> Self {
        Buckets {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }

    fn record(&self, secs: f64, us: u64) {
        let i = DURATION_BUCKETS.partition_point(|le| *le < secs);
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// Cumulative counts for the buckets, then (sum in seconds, count).
    fn read(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let mut acc = 0;
        let buckets = DURATION_BUCKETS
            .iter()
            .zip(&self.counts)
            .map(|(le, c)| {
                acc += c.load(Relaxed);
                (*le, acc)
            })
            .collect();
        let count = acc + self.counts[DURATION_BUCKETS.len()].load(Relaxed);
        (buckets, self.sum_us.load(Relaxed) as f64 / 1e6, count)
    }
}

/// Whole seconds `requests_per_second` averages over.
const RATE_SECONDS: u64 = 60;
/// The ring holds those seconds and the current, partial one.
const RATE_WINDOW: usize = RATE_SECONDS as usize + 1;

/// Requests per second over the last minute: one counter per second in a ring.
struct RateWindow {
    seconds: [AtomicU64; RATE_WINDOW],
    counts: [AtomicU64; RATE_WINDOW],
}

impl RateWindow {
    fn new() -> Self {
        RateWindow {
            seconds: std::array::from_fn(|_| AtomicU64::new(u64::MAX)),
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn add(&self, sec: u64) {
        let i = (sec % RATE_WINDOW as u64) as usize;
        let old = self.seconds[i].load(Relaxed);
        if old != sec
            && self.seconds[i]
                .compare_exchange(old, sec, Relaxed, Relaxed)
                .is_ok()
        {
            self.counts[i].store(0, Relaxed);
        }
        self.counts[i].fetch_add(1, Relaxed);
    }

    /// Requests in the `window` whole seconds before `sec` (the current second is partial).
    fn sum(&self, sec: u64, window: u64) -> u64 {
        (0..RATE_WINDOW)
            .filter(|&i| {
                let s = self.seconds[i].load(Relaxed);
                s != u64::MAX && s < sec && s + window >= sec
            })
            .map(|i| self.counts[i].load(Relaxed))
            .sum()
    }
}

/// Latency histograms in microseconds, 2 significant digits (±1 %), fixed memory.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("static histogram bounds are valid")
}

/// A histogram in shards, each under its own lock: workers record into the shard of their
/// thread, so fifty workers finishing requests at once do not queue on one lock (a contended
/// lock parks a thread: a context switch). Read by merging the shards (the metrics endpoints).
struct Sharded([Mutex<Histogram<u64>>; SHARDS]);

const SHARDS: usize = 8;

impl Sharded {
    fn new() -> Self {
        Sharded(std::array::from_fn(|_| Mutex::new(new_histogram())))
    }

    fn record(&self, us: u64) {
        thread_local! {
            static SHARD: usize = {
                static NEXT: AtomicUsize = AtomicUsize::new(0);
                NEXT.fetch_add(1, Relaxed) % SHARDS
            };
        }
        let i = SHARD.with(|s| *s);
        self.0[i].lock().saturating_record(us);
    }

    fn summary(&self) -> Summary {
        let mut all = new_histogram();
        for shard in &self.0 {
            // Same bounds: adding cannot fail.
            let _ = all.add(&*shard.lock());
        }
        summarize(&all)
    }
}

pub struct Metrics {
    started: Instant,
    outcomes: [AtomicU64; OUTCOME_LABELS.len()],
    pub retried_requests: AtomicU64,
    pub retry_attempts: AtomicU64,
    pub upstream_attempts: AtomicU64,
    pub client_connections: AtomicI64,
    pub active_requests: AtomicI64,
    pub worker_panics: AtomicU64,
    /// Health checks that passed and that failed (README "Health checks").
    pub health_checks_passed: AtomicU64,
    pub health_checks_failed: AtomicU64,
    duration_buckets: [AtomicU64; DURATION_BUCKETS.len()],
    duration_sum_us: AtomicU64,
    /// The requests that reached the upstream only (`Outcome::proxied`): what the response-time
    /// statistics of `/proxy-metrics` describe, as a Prometheus histogram.
    proxied_duration: Buckets,
    latency: Sharded,
    queue_wait: Sharded,
    rate: RateWindow,
}

/// Percentiles and extremes of one histogram, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

fn summarize(h: &Histogram<u64>) -> Summary {
    if h.is_empty() {
        return Summary::default();
    }
    let s = |us: u64| us as f64 / 1e6;
    Summary {
        count: h.len(),
        min: s(h.min()),
        max: s(h.max()),
        mean: h.mean() / 1e6,
        p50: s(h.value_at_quantile(0.50)),
        p95: s(h.value_at_quantile(0.95)),
        p99: s(h.value_at_quantile(0.99)),
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            started: Instant::now(),
            outcomes: std::array::from_fn(|_| AtomicU64::new(0)),
            retried_requests: AtomicU64::new(0),
            retry_attempts: AtomicU64::new(0),
            upstream_attempts: AtomicU64::new(0),
            client_connections: AtomicI64::new(0),
            active_requests: AtomicI64::new(0),
            worker_panics: AtomicU64::new(0),
            health_checks_passed: AtomicU64::new(0),
            health_checks_failed: AtomicU64::new(0),
            duration_buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            duration_sum_us: AtomicU64::new(0),
            proxied_duration: Buckets::new(),
            latency: Sharded::new(),
            queue_wait: Sharded::new(),
            rate: RateWindow::new(),
        }
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Records one finished request: its outcome and its response time. The Prometheus
    /// duration histogram counts every request; the response-time statistics of
    /// `/proxy-metrics` (average, min, max, percentiles) and the proxied-duration histogram
    /// only proxied ones (`Outcome::proxied`).
    pub fn record(&self, outcome: Outcome, took: Duration) {
        let label = outcome.label();
        if let Some(i) = OUTCOME_LABELS.iter().position(|l| *l == label) {
            self.outcomes[i].fetch_add(1, Relaxed);
        }
        let us = took.as_micros().clamp(1, 3_600_000_000) as u64;
        let secs = took.as_secs_f64();
        if let Some(i) = DURATION_BUCKETS.iter().position(|le| secs <= *le) {
            self.duration_buckets[i].fetch_add(1, Relaxed);
        }
        self.duration_sum_us.fetch_add(us, Relaxed);
        if outcome.proxied() {
            self.latency.record(us);
            self.proxied_duration.record(secs, us);
        }
        self.rate.add(self.started.elapsed().as_secs());
    }

    /// Records how long a request waited in the queue before a worker took it.
    pub fn record_queue_wait(&self, waited: Duration) {
        let us = waited.as_micros().clamp(1, 3_600_000_000) as u64;
        self.queue_wait.record(us);
    }

    /// Count of requests that ended with this outcome label.
    pub fn outcome(&self, label: &str) -> u64 {
        OUTCOME_LABELS
            .iter()
            .position(|l| *l == label)
            .map_or(0, |i| self.outcomes[i].load(Relaxed))
    }

    /// (label, count) for every outcome.
    pub fn outcomes(&self) -> Vec<(&'static str, u64)> {
        OUTCOME_LABELS
            .iter()
            .zip(&self.outcomes)
            .map(|(l, c)| (*l, c.load(Relaxed)))
            .collect()
    }

    /// Every outcome counter read once, so that sums and differences drawn from it agree (a
    /// request finishing between two reads cannot make `failed` negative).
    pub fn counts(&self) -> Counts {
        let mut c = Counts {
            total: 0,
            successful: 0,
            client_aborted: 0,
            by_label: self.outcomes(),
        };
        c.total = c.by_label.iter().map(|(_, n)| n).sum();
        let sluice_ok: u64 = crate::policy::reason::Reason::ALL
            .iter()
            .filter(|r| r.status() < 500)
            .map(|r| c.of(r.as_str()))
            .sum();
        c.successful = c.of("ok") + sluice_ok;
        c.client_aborted = c.of("client_abort");
        c
    }

    pub fn total_requests(&self) -> u64 {
        self.outcomes.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Requests answered with a status below 500.
    pub fn successful_requests(&self) -> u64 {
        self.counts().successful
    }

    pub fn latency(&self) -> Summary {
        self.latency.summary()
    }

    pub fn queue_wait(&self) -> Summary {
        self.queue_wait.summary()
    }

    /// Cumulative counts for the Prometheus buckets, then (sum in seconds, count).
    pub fn duration_histogram(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let mut acc = 0;
        let buckets = DURATION_BUCKETS
            .iter()
            .zip(&self.duration_buckets)
            .map(|(le, c)| {
                acc += c.load(Relaxed);
                (*le, acc)
            })
            .collect();
        let sum = self.duration_sum_us.load(Relaxed) as f64 / 1e6;
        (buckets, sum, self.total_requests())
    }

    /// Access-log lines dropped because stdout did not take them (the whole process's).
    pub fn access_log_dropped(&self) -> u64 {
        super::log::access_dropped()
    }

    /// Log lines dropped because stderr did not take them (the whole process's).
    pub fn log_dropped(&self) -> u64 {
        super::log::log_dropped()
    }

    /// The same for the requests that reached the upstream only.
    pub fn proxied_duration_histogram(&self) -> (Vec<(f64, u64)>, f64, u64) {
        self.proxied_duration.read()
    }

    /// Requests per second over the last 60 s (or the uptime, if shorter).
    pub fn requests_per_second(&self) -> f64 {
        let now = self.started.elapsed().as_secs();
        let window = now.min(RATE_SECONDS);
        if window == 0 {
            return 0.0;
        }
        self.rate.sum(now, window) as f64 / window as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::reason::Reason;

    #[test]
    fn outcomes_sum_to_total_and_success_follows_status() {
        let m = Metrics::new();
        for _ in 0..20 {
            m.record(Outcome::Upstream(200), Duration::from_millis(10));
        }
        for _ in 0..3 {
            m.record(Outcome::Upstream(404), Duration::from_millis(10));
        }
        for _ in 0..5 {
            m.record(Outcome::Upstream(500), Duration::from_millis(10));
        }
        m.record(
            Outcome::Sluice(Reason::QueueFull),
            Duration::from_micros(50),
        );
        m.record(
            Outcome::Sluice(Reason::BodyTooLarge),
            Duration::from_micros(50),
        );
        assert_eq!(m.total_requests(), 30);
        assert_eq!(m.successful_requests(), 24);
        assert_eq!(m.outcome("upstream_5xx"), 5);
        assert_eq!(m.outcome("queue_full"), 1);
        let (buckets, _, count) = m.duration_histogram();
        assert_eq!(count, 30);
        assert_eq!(buckets.last().unwrap().1, 30);
        assert_eq!(
            buckets[0].1, 2,
            "the two 50 µs answers are in the 1 ms bucket"
        );
    }

    #[test]
    fn percentiles_within_histogram_precision() {
        let m = Metrics::new();
        for ms in [10u64, 50, 100] {
            for _ in 0..100 {
                m.record(Outcome::Upstream(200), Duration::from_millis(ms));
            }
        }
        let s = m.latency();
        assert!((s.p50 - 0.050).abs() < 0.001, "{s:?}");
        assert!((s.p99 - 0.100).abs() < 0.001, "{s:?}");
        assert!((s.min - 0.010).abs() < 0.0002);
        assert!((s.mean - 0.0533).abs() < 0.001);
    }

    #[test]
    fn rate_window_counts_whole_seconds_only() {
        let r = RateWindow::new();
        for _ in 0..5 {
            r.add(10);
        }
        r.add(11);
        assert_eq!(r.sum(11, 59), 5);
        assert_eq!(r.sum(12, 59), 6);
        assert_eq!(r.sum(80, 59), 0);
        r.add(70);
        assert_eq!(r.sum(71, 59), 1, "a reused slot forgets its old second");
    }

    #[test]
    fn the_proxied_histogram_leaves_out_sluice_s_own_answers() {
        let m = Metrics::new();
        for _ in 0..100 {
            m.record(
                Outcome::Sluice(Reason::QueueFull),
                Duration::from_micros(50),
            );
        }
        m.record(Outcome::Upstream(200), Duration::from_secs(6));
        m.record(
            Outcome::Sluice(Reason::UpstreamTimeout),
            Duration::from_secs(400),
        );
        let (all, _, all_count) = m.duration_histogram();
        let (buckets, sum, count) = m.proxied_duration_histogram();
        assert_eq!((all_count, all[0].1), (102, 100));
        assert!((sum - 406.0).abs() < 1e-6, "{sum}");
        let at = |le: f64| buckets.iter().find(|(b, _)| *b == le).unwrap().1;
        assert_eq!((at(5.0), at(10.0), at(300.0)), (0, 1, 1));
        assert_eq!(
            count, 2,
            "the 100 refusals are not in it; the 400 s one, past the last bucket, is"
        );
    }

    /// The shipped success-rate alert (deploy/prometheus-rules.yaml, docs/GUIDE.md "Alerts")
    /// names exactly the outcomes `failed_requests` counts, so that it computes `success_rate`.
    #[test]
    fn the_success_rate_alert_names_exactly_the_failed_outcomes() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus-rules.yaml");
        let rules = std::fs::read_to_string(path).unwrap();
        let alert = &rules[rules.find("alert: SluiceSuccessRateLow").unwrap()..];
        let start = alert.find("outcome=~\"").unwrap() + "outcome=~\"".len();
        let mut named: Vec<&str> = alert[start..]
            .split('"')
            .next()
            .unwrap()
            .split('|')
            .collect();
        named.sort();
        let mut outcomes = vec![
            Outcome::Upstream(200),
            Outcome::Upstream(502),
            Outcome::Truncated,
            Outcome::ClientAbort,
        ];
        outcomes.extend(Reason::ALL.map(Outcome::Sluice));
        assert_eq!(
            outcomes.len(),
            OUTCOME_LABELS.len(),
            "a new Outcome variant: list it here"
        );
        let mut failed: Vec<&str> = outcomes
            .into_iter()
            .filter(|o| {
                let m = Metrics::new();
                m.record(*o, Duration::from_millis(1));
                m.counts().failed() == 1
            })
            .map(Outcome::label)
            .collect();
        failed.sort();
        assert_eq!(named, failed);
    }
}
