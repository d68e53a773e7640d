//! Logging: human-readable lines on stderr (`TIME LEVEL message key=value…`) filtered by
//! `--log-level`, and the JSON access log on stdout. Both go out through a bounded outbox
//! (`outbox.rs`) written by a thread of its own, so that an output nobody drains never blocks
//! a worker or the front end: a line that does not fit is dropped and counted (README
//! "Monitoring"). Also owns wall-clock formatting (RFC 3339), the only place sluice reads the
//! calendar.

use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::outbox::Outbox;
use crate::config::LogLevel;

static LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Info as u8);

/// Access-log lines not yet on stdout: about 4,000 lines of 250 bytes (a stalled reader's
/// first few hundred milliseconds at full load).
static ACCESS: Outbox = Outbox::new("access-log", 1 << 20, |b| {
    let mut out = std::io::stdout().lock();
    out.write_all(b)?;
    out.flush()
});

/// Log lines not yet on stderr (a few hundred lines).
static STDERR: Outbox = Outbox::new("log", 64 << 10, |b| std::io::stderr().lock().write_all(b));

/// Access-log lines dropped: stdout did not take them in time.
pub fn access_dropped() -> u64 {
    ACCESS.dropped()
}

/// Log lines dropped: stderr did not take them in time.
pub fn log_dropped() -> u64 {
    STDERR.dropped()
}

/// Waits up to `within` for the lines logged so far to be written out, stderr's and the access
/// log's (a clean shutdown). False if an output did not take them in time.
pub fn flush(within: Duration) -> bool {
    let access = ACCESS.flush(within);
    STDERR.flush(within) && access
}

pub fn set_level(level: LogLevel) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn enabled(level: LogLevel) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Writes one log line to stderr if `level` is enabled.
pub fn log(level: LogLevel, args: std::fmt::Arguments<'_>) {
    if enabled(level) {
        always(level, args);
    }
}

/// Writes one lifecycle line (listening, draining, exit) whatever the level.
pub fn always(level: LogLevel, args: std::fmt::Arguments<'_>) {
    let line = format!(
        "{} {:5} {}\n",
        now_rfc3339(),
        level.as_str().to_uppercase(),
        args
    );
    STDERR.push(&[line.as_bytes()]);
}

/// Hands one access-log line (already JSON) to the writer of stdout, or drops it if stdout is
/// that far behind; a warning says so on stderr, at most once a second.
pub fn access(line: &str) {
    if !ACCESS.push(&[line.as_bytes(), b"\n"]) {
        warn_access_dropped();
    }
}

/// The second (since the epoch) of the last warning about dropped access-log lines.
static LAST_WARNED: AtomicU64 = AtomicU64::new(u64::MAX);

fn warn_access_dropped() {
    let second = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if LAST_WARNED.swap(second, Ordering::Relaxed) != second {
        crate::warn!(
            "access log: stdout is not taking lines; {} dropped so far (at most one such line a second)",
            ACCESS.dropped()
        );
    }
}

#[macro_export]
macro_rules! error { ($($t:tt)*) => { $crate::observe::log::log($crate::config::LogLevel::Error, format_args!($($t)*)) } }
#[macro_export]
macro_rules! warn { ($($t:tt)*) => { $crate::observe::log::log($crate::config::LogLevel::Warn, format_args!($($t)*)) } }
#[macro_export]
macro_rules! info { ($($t:tt)*) => { $crate::observe::log::log($crate::config::LogLevel::Info, format_args!($($t)*)) } }
#[macro_export]
macro_rules! debug { ($($t:tt)*) => { $crate::observe::log::log($crate::config::LogLevel::Debug, format_args!($($t)*)) } }

/// Current UTC time as `2026-11-25T20:17:58.123Z`.
pub fn now_rfc3339() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs(), d.subsec_millis())
}

fn rfc3339(secs: u64, millis: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_known_instants() {
        assert_eq!(super::rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::rfc3339(1_795_638_278, 123),
            "2026-11-25T20:24:38.123Z"
        );
        assert_eq!(super::rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
    }
}
