//! The ground floor: the state every thread shares — current settings (swappable on SIGHUP),
//! the breaker, the retry budget, admission, metrics and the lifecycle flags. It imports no
//! stage (`front`, `pool`, `upstream`); the queue and the upstream client belong to the stages
//! that use them (docs/ARCHITECTURE.md "Threads and what they own").

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::config::Config;
use crate::observe::access_log::{self, RequestCtx};
use crate::observe::lookup::TargetLookup;
use crate::observe::metrics::Metrics;
use crate::policy::admission::Admission;
use crate::policy::breaker::{Admit, Breaker, CheckRound, Probe, State, Transition, Verdict};
use crate::policy::health::{CheckResult, CheckSettings, CheckView};
use crate::policy::outcome::Finished;
use crate::policy::retry::RetryBudget;

pub struct Shared {
    config: RwLock<Arc<Config>>,
    pub metrics: Metrics,
    breaker: Mutex<Breaker>,
    pub budget: Mutex<RetryBudget>,
    pub admission: Admission,
    /// Fixed at start: worker threads and queue capacity (changing them needs a restart).
    pub workers: usize,
    pub queue_capacity: usize,
    draining: AtomicBool,
    /// The drain's `shutdown_grace` ended: what is still in flight is cut (outcome `shutdown`).
    grace_over: AtomicBool,
    stopping: AtomicBool,
    /// Proxied requests from head parsed to response written (queued, in a worker, or being
    /// answered by the front end): what a graceful drain waits for.
    in_progress: Arc<AtomicI64>,
    /// Breaker transitions into closed, open, half-open.
    transitions: [AtomicU64; 3],
    /// Whether `target_host` resolves (the last look-up), for `/proxy-health`.
    pub target_lookup: Arc<TargetLookup>,
}

impl Shared {
    pub fn new(config: Config) -> Self {
        let now = Instant::now();
        let admission = Admission::new(config.max_concurrent_requests, config.max_queue_size);
        let mut breaker = Breaker::new(
            config.circuit_breaker_threshold,
            config.circuit_breaker_timeout,
        );
        breaker.set_checks(check_settings(&config), now);
        Shared {
            breaker: Mutex::new(breaker),
            budget: Mutex::new(RetryBudget::standard(now)),
            admission,
            workers: config.max_concurrent_requests,
            queue_capacity: config.max_queue_size,
            config: RwLock::new(Arc::new(config)),
            metrics: Metrics::new(),
            draining: AtomicBool::new(false),
            grace_over: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            in_progress: Arc::new(AtomicI64::new(0)),
            transitions: Default::default(),
            target_lookup: Arc::default(),
        }
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.read().clone()
    }

    /// Applies a re-read config to new requests; settings that need a restart keep their
    /// running values. Returns the effective config and the keys whose change was not applied.
    pub fn reconfigure(&self, new: Config) -> (Arc<Config>, Vec<&'static str>) {
        let old = self.config();
        let mut kept = new;
        let fixed = kept.keep_restart_only(&old);
        crate::observe::log::set_level(kept.log_level);
        let kept = Arc::new(kept);
        // Under the breaker's lock: a check started (`check_target`) sees the config and the
        // `CheckRound` it belongs to together.
        let t = {
            let mut b = self.breaker.lock();
            b.reconfigure(kept.circuit_breaker_threshold, kept.circuit_breaker_timeout);
            if what_checks_check(&old) != what_checks_check(&kept) {
                b.retarget_checks();
            }
            let t = b.set_checks(check_settings(&kept), Instant::now());
            *self.config.write() = kept.clone();
            t
        };
        self.note(t);
        (kept, fixed)
    }

    /// Records a finished request: metrics, and the access log when it is on.
    pub fn finish(&self, ctx: &RequestCtx<'_>, fin: &Finished) {
        access_log::record(&self.metrics, self.config().access_log, ctx, fin);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Relaxed);
    }

    pub fn grace_over(&self) -> bool {
        self.grace_over.load(Relaxed)
    }

    pub fn end_grace(&self) {
        self.draining.store(true, Relaxed);
        self.grace_over.store(true, Relaxed);
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Relaxed)
    }

    pub fn stop(&self) {
        self.draining.store(true, Relaxed);
        self.stopping.store(true, Relaxed);
    }

    /// Asks the breaker to let one request through; `may_probe`: it may be the half-open probe
    /// (nothing more is to come from its client).
    pub fn admit(&self, may_probe: bool) -> Admit {
        let (admit, t) = self.breaker.lock().admit_as(Instant::now(), may_probe);
        self.note(t);
        admit
    }

    /// Time until the probe while the breaker is open (requests can be refused before queueing).
    pub fn breaker_open_for(&self) -> Option<Duration> {
        self.breaker.lock().open_for(Instant::now())
    }

    /// Reports, once, what an admitted request tells the breaker (`probe`: the half-open probe
    /// it is, if it is one). Dropped unreported (an early refusal, a panic), it reports
    /// `Neutral`, so a probe slot is never left taken.
    pub fn verdict_report(&self, probe: Option<Probe>) -> VerdictReport<'_> {
        VerdictReport {
            shared: self,
            probe,
            sent: None,
        }
    }

    /// The settings a health check starts with and the `CheckRound` its result is for.
    pub fn check_target(&self) -> (Arc<Config>, CheckRound) {
        let b = self.breaker.lock();
        (self.config(), b.check_round())
    }

    /// Counts one health check's result (README "Health checks"), unless what the checks check
    /// changed since it started (`round`: a reload moved the target); `fall` failures in a row
    /// open the breaker, `rise` passes close it. False if it counted for nothing.
    pub fn record_check(&self, round: CheckRound, result: CheckResult, latency: Duration) -> bool {
        let mut b = self.breaker.lock();
        if b.check_round() != round {
            return false;
        }
        let counter = if result.passed() {
            &self.metrics.health_checks_passed
        } else {
            &self.metrics.health_checks_failed
        };
        counter.fetch_add(1, Relaxed);
        let t = b.record_check(Instant::now(), round, result, latency);
        drop(b);
        self.note(t);
        true
    }

    /// Tells the breaker how an admitted request ended.
    fn record_verdict(&self, verdict: Verdict, probe: Option<Probe>) {
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
            refusing: b.refusing(now),
            consecutive_failures: b.consecutive_failures(),
            times_opened: b.times_opened(),
            since_transition: b
                .last_transition()
                .map(|t| now.saturating_duration_since(t).as_secs_f64()),
            checks: b.checks(),
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
}

/// A consistent read of the breaker for metrics and health.
#[derive(Clone, Copy, Debug)]
pub struct BreakerView {
    pub state: State,
    /// Requests are being refused (open, or half-open with the probe out).
    pub refusing: bool,
    pub consecutive_failures: u32,
    pub times_opened: u64,
    pub since_transition: Option<f64>,
    /// Health checks' state and last result; `None` while they are off.
    pub checks: Option<CheckView>,
}

/// The check settings of `c`, `None` while `health_check_path` is empty (checks off).
/// What a health check is made against and how: a change starts a new `CheckRound`.
fn what_checks_check(c: &Config) -> (String, &str, Duration) {
    (
        c.target_base(),
        c.health_check_path.as_str(),
        c.health_check_timeout,
    )
}

fn check_settings(c: &Config) -> Option<CheckSettings> {
    (!c.health_check_path.is_empty()).then_some(CheckSettings {
        rise: c.health_check_rise,
        fall: c.health_check_fall,
        interval: c.health_check_interval,
    })
}

/// The breaker's verdict on one admitted request, reported as soon as it is known — when the
/// response head arrives or the last attempt fails — not when the client has taken the whole
/// response: a slow client can then neither hold the breaker half-open nor race its next
/// request past a verdict not yet recorded.
pub struct VerdictReport<'a> {
    shared: &'a Shared,
    probe: Option<Probe>,
    sent: Option<Verdict>,
}

impl VerdictReport<'_> {
    /// The verdict. Only the first counts as this request's (and its probe's); a later
    /// failure after a first verdict that was not one — the upstream broke off the body after a
    /// good head — is recorded as one more failure.
    pub fn report(&mut self, verdict: Verdict) {
        match self.sent {
            None => {
                self.sent = Some(verdict);
                self.shared.record_verdict(verdict, self.probe);
            }
            Some(first) if first != Verdict::Failure && verdict == Verdict::Failure => {
                self.sent = Some(verdict);
                self.shared.record_verdict(verdict, None);
            }
            Some(_) => {}
        }
    }
}

impl Drop for VerdictReport<'_> {
    fn drop(&mut self) {
        if self.sent.is_none() {
            self.shared.record_verdict(Verdict::Neutral, self.probe);
        }
    }
}

/// A request counted in `Shared::requests_in_progress`; it travels with the request.
pub struct InProgress(Arc<AtomicI64>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}
