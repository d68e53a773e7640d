//! The state every thread shares: current settings (swappable on SIGHUP), the upstream client,
//! the breaker, the retry budget, metrics, the queue's sending end and the lifecycle flags.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::admission::Admission;
use crate::breaker::{Admit, Breaker, State, Transition, Verdict};
use crate::config::Config;
use crate::forward::Upstream;
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::retry::RetryBudget;
use crate::worker::Job;

pub struct Shared {
    config: RwLock<Arc<Config>>,
    upstream: RwLock<Arc<Upstream>>,
    pub metrics: Metrics,
    breaker: Mutex<Breaker>,
    pub budget: Mutex<RetryBudget>,
    pub queue: Queue<Job>,
    pub admission: Admission,
    /// Fixed at start: worker threads and queue capacity (changing them needs a restart).
    pub workers: usize,
    pub queue_capacity: usize,
    draining: AtomicBool,
    stopping: AtomicBool,
    /// Proxied requests from head parsed to response written (queued, in a worker, or being
    /// answered by the front end): what a graceful drain waits for.
    in_progress: Arc<AtomicI64>,
    /// Breaker transitions into closed, open, half-open.
    transitions: [AtomicU64; 3],
}

impl Shared {
    pub fn new(config: Config) -> Self {
        let now = Instant::now();
        let admission = Admission::new(config.max_concurrent_requests, config.max_queue_size);
        Shared {
            upstream: RwLock::new(Arc::new(Upstream::new(&config))),
            breaker: Mutex::new(Breaker::new(
                config.circuit_breaker_threshold,
                config.circuit_breaker_timeout,
            )),
            budget: Mutex::new(RetryBudget::standard(now)),
            queue: Queue::new(admission.capacity()),
            admission,
            workers: config.max_concurrent_requests,
            queue_capacity: config.max_queue_size,
            config: RwLock::new(Arc::new(config)),
            metrics: Metrics::new(),
            draining: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            in_progress: Arc::new(AtomicI64::new(0)),
            transitions: Default::default(),
        }
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.read().clone()
    }

    pub fn upstream(&self) -> Arc<Upstream> {
        self.upstream.read().clone()
    }

    /// Applies a re-read config to new requests. Returns the keys that need a restart to change.
    pub fn reconfigure(&self, new: Config) -> Vec<&'static str> {
        let old = self.config();
        let mut fixed = Vec::new();
        for (key, same) in [
            ("host", old.host == new.host),
            ("port", old.port == new.port),
            (
                "max_concurrent_requests",
                old.max_concurrent_requests == new.max_concurrent_requests,
            ),
            ("max_queue_size", old.max_queue_size == new.max_queue_size),
        ] {
            if !same {
                fixed.push(key);
            }
        }
        let mut kept = new;
        kept.host = old.host.clone();
        kept.port = old.port;
        kept.max_concurrent_requests = old.max_concurrent_requests;
        kept.max_queue_size = old.max_queue_size;
        let upstream_changed = kept.target_base() != old.target_base()
            || kept.connect_timeout != old.connect_timeout
            || kept.read_timeout != old.read_timeout
            || kept.pool_maxsize != old.pool_maxsize;
        if upstream_changed {
            *self.upstream.write() = Arc::new(Upstream::new(&kept));
        }
        self.breaker
            .lock()
            .reconfigure(kept.circuit_breaker_threshold, kept.circuit_breaker_timeout);
        crate::log::set_level(kept.log_level);
        *self.config.write() = Arc::new(kept);
        fixed
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Relaxed);
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Relaxed)
    }

    pub fn stop(&self) {
        self.draining.store(true, Relaxed);
        self.stopping.store(true, Relaxed);
    }

    /// Asks the breaker to let one request through.
    pub fn admit(&self) -> Admit {
        let (admit, t) = self.breaker.lock().admit(Instant::now());
        self.note(t);
        admit
    }

    /// Time until the probe while the breaker is open (requests can be refused before queueing).
    pub fn breaker_open_for(&self) -> Option<Duration> {
        self.breaker.lock().open_for(Instant::now())
    }

    /// Tells the breaker how an admitted request ended.
    pub fn record_verdict(&self, verdict: Verdict, probe: bool) {
        let t = self.breaker.lock().record(Instant::now(), verdict, probe);
        self.note(t);
    }

    fn note(&self, t: Option<Transition>) {
        if let Some(t) = t {
            self.transitions[t.to.as_gauge() as usize].fetch_add(1, Relaxed);
            crate::warn!("circuit breaker {} -> {}", t.from.as_str(), t.to.as_str());
        }
    }

    /// True unless the breaker is open or half-open (retries stop then).
    pub fn breaker_closed(&self) -> bool {
        self.breaker_view().state == State::Closed
    }

    pub fn breaker_view(&self) -> BreakerView {
        let b = self.breaker.lock();
        let now = Instant::now();
        BreakerView {
            state: b.state(now),
            consecutive_failures: b.consecutive_failures(),
            times_opened: b.times_opened(),
            since_transition: b
                .last_transition()
                .map(|t| now.saturating_duration_since(t).as_secs_f64()),
        }
    }

    /// Transitions into closed, open, half-open so far.
    pub fn transitions(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.transitions[i].load(Relaxed))
    }

    /// Counts one request as in progress until the returned guard drops.
    pub fn begin_request(&self) -> InProgress {
        self.in_progress.fetch_add(1, Relaxed);
        InProgress(self.in_progress.clone())
    }

    pub fn requests_in_progress(&self) -> i64 {
        self.in_progress.load(Relaxed)
    }

    /// Requests waiting in the queue.
    pub fn queue_size(&self) -> usize {
        self.queue.len()
    }
}

/// A consistent read of the breaker for metrics and health.
#[derive(Clone, Copy, Debug)]
pub struct BreakerView {
    pub state: State,
    pub consecutive_failures: u32,
    pub times_opened: u64,
    pub since_transition: Option<f64>,
}

/// A request counted in `Shared::requests_in_progress`; it travels with the request.
pub struct InProgress(Arc<AtomicI64>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}
