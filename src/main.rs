//! The `sluice` command: parse flags, load and validate the config (exit 2 naming the key on a
//! bad one), `--check-config`, then serve until SIGTERM/SIGINT (graceful drain) with SIGHUP
//! reloading the config file.

use std::io::Write;
use std::net::ToSocketAddrs;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use argh::FromArgs;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use sluice::config::{self, Flags, Loaded, KEYS};
use sluice::{error, info, warn};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let cmd = args.first().map_or("sluice", String::as_str);
    let words: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    let words = config::normalize_args(&words);
    let rest: Vec<&str> = words.iter().map(String::as_str).collect();
    let flags = match Flags::from_args(&[cmd], &rest) {
        Ok(f) => f,
        Err(early) => {
            return if early.status.is_ok() {
                say(format_args!("{}", early.output));
                ExitCode::SUCCESS
            } else {
                eprintln!("{}", early.output.trim_end());
                eprintln!("Run sluice --help for the list of settings.");
                ExitCode::from(2)
            };
        }
    };
    if flags.version {
        say(format_args!("sluice {}", env!("CARGO_PKG_VERSION")));
        return ExitCode::SUCCESS;
    }
    let loaded = match config::load(&flags) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::from(2);
        }
    };
    if flags.check_config {
        print_check(&loaded);
        return ExitCode::SUCCESS;
    }
    run(flags, loaded)
}

/// Writes a line to stdout; a closed stdout (`sluice --help | head -1`) ends the output
/// quietly instead of panicking.
fn say(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// `--check-config`: every effective setting with where it came from, then the warnings —
/// including a `target_host` that does not resolve here.
fn print_check(loaded: &Loaded) {
    let cfg = &loaded.config;
    let json = cfg.to_json();
    say(format_args!("config ok"));
    for key in KEYS {
        say(format_args!(
            "  {key:<27} {:<24} ({})",
            json[*key].to_string(),
            loaded.sources[key].as_str()
        ));
    }
    let mut warnings = cfg.warnings();
    let target = (cfg.target_host.as_str(), cfg.target_port);
    match target.to_socket_addrs().map(Iterator::count) {
        Ok(1..) => {}
        Ok(0) => warnings.push(format!("target_host {:?} resolves to no address here", cfg.target_host)),
        Err(e) => warnings.push(format!(
            "target_host {:?} does not resolve here ({e}): every request would get 502 connect_failed",
            cfg.target_host
        )),
    }
    for w in warnings {
        say(format_args!("warning: {w}"));
    }
}

fn run(flags: Flags, loaded: Loaded) -> ExitCode {
    let cfg = loaded.config;
    let nofile = sluice::limits::raise_nofile();
    let mut signals = match watch_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sluice: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    // A panic's message goes through the log's outbox too: a worker that panics while nobody
    // drains stderr must not block in the default hook's write (README "Monitoring").
    std::panic::set_hook(Box::new(|info| {
        let trace = std::backtrace::Backtrace::capture();
        let trace = match trace.status() {
            std::backtrace::BacktraceStatus::Captured => format!("\n{trace}"),
            _ => String::new(),
        };
        sluice::observe::log::always(
            sluice::config::LogLevel::Error,
            format_args!("{info}{trace}"),
        );
    }));
    let mut running = match sluice::start(cfg.clone()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluice: cannot listen on {}:{}: {e}", cfg.host, cfg.port);
            return ExitCode::from(1);
        }
    };
    sluice::observe::log::always(
        sluice::config::LogLevel::Info,
        format_args!(
            "sluice {} listening on {} -> {} (workers={} queue={} queue_timeout={}s connect_timeout={}s read_timeout={}s retries={} breaker={}/{}s)",
        env!("CARGO_PKG_VERSION"),
        running.addr(),
        cfg.target_base(),
        cfg.max_concurrent_requests,
        cfg.max_queue_size,
        cfg.queue_timeout.as_secs_f64(),
        cfg.connect_timeout.as_secs_f64(),
        cfg.read_timeout.as_secs_f64(),
        cfg.max_retries,
        cfg.circuit_breaker_threshold,
            cfg.circuit_breaker_timeout.as_secs_f64(),
        ),
    );
    info!("effective config: {}", cfg.to_json());
    match nofile {
        Ok((before, after)) => {
            if after.soft != before.soft {
                info!(
                    "open-file limit raised from {} to the hard limit {}",
                    before.soft, after.soft
                );
            }
            if let Some(w) = sluice::limits::check(&cfg, after.soft) {
                warn!("{w}");
            }
        }
        Err(e) => warn!("cannot raise the open-file limit: {e}"),
    }
    for w in cfg.warnings() {
        warn!("{w}");
    }
    for sig in signals.forever() {
        match sig {
            SIGHUP => reload(&flags, &running),
            _ => {
                let grace = running.shutdown_grace();
                info!(
                    "signal {sig}: draining (grace {}s); a second signal exits at once",
                    grace.as_secs_f64()
                );
                running.drain();
                if !running.wait_idle(grace) {
                    let cut_at = running.metrics().outcome("shutdown");
                    let left = running.end_grace();
                    let cut = running.metrics().outcome("shutdown") - cut_at;
                    warn!(
                        "shutdown_grace ({}s) over: {cut} request(s) cut with outcome shutdown{}",
                        grace.as_secs_f64(),
                        if left > 0 {
                            format!(", {left} not yet answered")
                        } else {
                            String::new()
                        }
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
                sluice::observe::log::always(
                    sluice::config::LogLevel::Info,
                    format_args!("drained; exiting"),
                );
                // Every line logged is out before the exit (unless a reader stalls that long).
                sluice::observe::log::flush(Duration::from_secs(5));
                return ExitCode::SUCCESS;
            }
        }
    }
    ExitCode::SUCCESS
}

/// SIGTERMs and SIGINTs received so far, counted in the signal handler itself.
static STOP_SIGNALS: AtomicUsize = AtomicUsize::new(0);

/// The signals for the whole life of the process, registered once before serving: SIGHUP,
/// SIGTERM and SIGINT through the returned iterator; and a second SIGTERM or SIGINT exits at once
/// with status 1 from the signal handler itself (README "Shutdown") — whatever main is doing
/// then, however soon after the first it comes, and on whichever thread the two run.
fn watch_signals() -> std::io::Result<Signals> {
    for sig in [SIGTERM, SIGINT] {
        // SAFETY: `register` installs a handler (`sigaction(2)`); the action runs inside it and
        // does only what is async-signal-safe: one lock-free atomic add, and `_exit(2)`
        // (signal-hook's `low_level::exit`).
        unsafe {
            signal_hook::low_level::register(sig, || {
                if STOP_SIGNALS.fetch_add(1, SeqCst) > 0 {
                    signal_hook::low_level::exit(1);
                }
            })?;
        }
    }
    Signals::new([SIGTERM, SIGINT, SIGHUP])
}

fn reload(flags: &Flags, running: &sluice::Running) {
    match config::reload(flags) {
        Ok(new) => {
            if let Some(w) = sluice::limits::raise_nofile()
                .ok()
                .and_then(|(_, now)| sluice::limits::check(&new, now.soft))
            {
                warn!("SIGHUP: {w}");
            }
            let fixed = running.reload(new);
            info!("SIGHUP: config reloaded");
            if !fixed.is_empty() {
                warn!(
                    "SIGHUP: {} changed but need a restart; kept the running values",
                    fixed.join(", ")
                );
            }
        }
        Err(e) => error!("SIGHUP: config not reloaded, keeping the running one: {e}"),
    }
}
