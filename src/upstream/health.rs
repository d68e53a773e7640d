//! The health checker (README "Health checks"): one thread that, while `health_check_path` is
//! set, sends `GET health_check_path` to the upstream every `health_check_interval` and reports
//! each result to the breaker (`Shared::record_check`); what a result means and the rise/fall
//! counting are policy (`policy/health.rs`). Not the workers' agent nor its pool: each check
//! opens a new connection and closes it, so a check proves what a new request needs (the name
//! resolves, the upstream accepts, and answers) and can never wait behind client traffic,
//! take a pooled connection from a worker, or pass on a connection the upstream has stopped
//! accepting beside. The `Host` header is the target's authority.
//!
//! A reload (`Checker::wake`) applies new check settings at once: the next check is due
//! `interval` after the last one started, the first at once. A check still out when a reload
//! moves the target (or changes or turns off the checks) counts for nothing: its result is
//! for an earlier `CheckRound` (`Shared::check_target`, `Shared::record_check`). `Checker::stop` ends the thread,
//! after the check in progress if one is (at most `health_check_timeout`).

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use ureq::Agent;

use super::classify::{cause, classify};
use crate::config::Config;
use crate::policy::health::CheckResult;
use crate::state::Shared;

/// The thread and the bell that wakes it.
pub struct Checker {
    thread: Option<JoinHandle<()>>,
    bell: Arc<Bell>,
}

/// A wake-up that is never lost: a generation counter under a lock, and a condvar.
#[derive(Default)]
struct Bell {
    rung: Mutex<u64>,
    cv: Condvar,
}

impl Bell {
    fn ring(&self) {
        *self.rung.lock() += 1;
        self.cv.notify_all();
    }

    fn seen(&self) -> u64 {
        *self.rung.lock()
    }

    /// Waits until rung after `seen`, or until `until` (`None`: no time limit).
    fn wait(&self, seen: u64, until: Option<Instant>) {
        let mut rung = self.rung.lock();
        while *rung == seen {
            match until {
                None => self.cv.wait(&mut rung),
                Some(t) => {
                    if self.cv.wait_until(&mut rung, t).timed_out() {
                        return;
                    }
                }
            }
        }
    }
}

impl Checker {
    /// Starts the checker thread; it idles while checks are off.
    pub fn spawn(shared: Arc<Shared>) -> io::Result<Checker> {
        let bell = Arc::new(Bell::default());
        let b = bell.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-health".into())
            .stack_size(256 * 1024)
            .spawn(move || run(&shared, &b))?;
        Ok(Checker {
            thread: Some(thread),
            bell,
        })
    }

    /// The settings changed (reload) or sluice is stopping: look again.
    pub fn wake(&self) {
        self.bell.ring();
    }

    /// Ends the thread once sluice is stopping (`Shared::stop` was called).
    pub fn stop(mut self) {
        self.bell.ring();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(shared: &Shared, bell: &Bell) {
    let mut last_start: Option<Instant> = None;
    let mut last_passed = true;
    loop {
        let seen = bell.seen();
        if shared.stopping() {
            return;
        }
        let (cfg, round) = shared.check_target();
        if cfg.health_check_path.is_empty() {
            last_start = None;
            bell.wait(seen, None);
            continue;
        }
        if let Some(due) = last_start.map(|t| t + cfg.health_check_interval) {
            if Instant::now() < due {
                bell.wait(seen, Some(due));
                continue;
            }
        }
        let started = Instant::now();
        last_start = Some(started);
        let (result, why) = check(&cfg);
        let latency = started.elapsed();
        if shared.stopping() {
            return;
        }
        // A reload that moved the target or changed or turned off the checks while this one
        // ran voids it (it is for an earlier round): it counts for nothing.
        if !shared.record_check(round, result, latency) {
            continue;
        }
        if result.passed() != last_passed {
            last_passed = result.passed();
            let url = url(&cfg);
            match why {
                Some(why) => crate::warn!("health check GET {url} failed: {why}"),
                None => crate::info!(
                    "health check GET {url} passed again ({})",
                    result.status().unwrap_or(0)
                ),
            }
        }
    }
}

fn url(cfg: &Config) -> String {
    format!("{}{}", cfg.target_base(), cfg.health_check_path)
}

/// One check: its result, and for a failure the cause in an operator's words.
fn check(cfg: &Config) -> (CheckResult, Option<String>) {
    let agent = agent(cfg.health_check_timeout);
    match agent.get(&url(cfg)).header("Connection", "close").call() {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let why = (status >= 500).then(|| format!("status {status}"));
            (CheckResult::Status(status), why)
        }
        Err(e) => (CheckResult::Failed(classify(&e)), Some(cause(&e))),
    }
}

/// An agent for one check: the whole check (look-up, connect, request, response head) within
/// `timeout`, no pool, no redirects, statuses are results, no environment proxy.
fn agent(timeout: Duration) -> Agent {
    let config = Agent::config_builder()
        .proxy(None)
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!(
            "sluice/",
            env!("CARGO_PKG_VERSION"),
            " health-check"
        ))
        .no_delay(true)
        .timeout_global(Some(timeout))
        .max_idle_connections(0)
        .max_idle_connections_per_host(0)
        .build();
    Agent::new_with_config(config)
}
