//! Settings: the one `Config` with every default, the command-line flags (argh), the JSON file,
//! their merge (flag > file > default) and validation. Nothing here opens a socket.
//!
//! Every setting is both a flag (`--max-queue-size`) and a file key (`max_queue_size`); flags and
//! file values go through the same parser, so a bad value gets the same message either way.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use argh::FromArgs;
use serde_json::{json, Map, Value};

/// Where a setting's effective value came from (shown by `--check-config`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    File,
    Flag,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::File => "file",
            Source::Flag => "flag",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        }
    }
}

/// The effective settings. `Default` holds every default in one place.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub host: String,
    pub port: u16,
    pub target_host: String,
    pub target_port: u16,
    pub target_scheme: Scheme,
    pub max_concurrent_requests: usize,
    pub max_queue_size: usize,
    pub queue_timeout: Duration,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub max_retries: u32,
    pub retry_backoff_factor: f64,
    pub circuit_breaker_threshold: u32,
    pub circuit_breaker_timeout: Duration,
    pub pool_maxsize: usize,
    pub pool_connections: usize,
    pub max_connections: usize,
    pub client_header_timeout: Duration,
    pub client_idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    pub shutdown_grace: Duration,
    pub log_level: LogLevel,
    pub access_log: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host: "0.0.0.0".into(),
            port: 8080,
            target_host: String::new(),
            target_port: 80,
            target_scheme: Scheme::Http,
            max_concurrent_requests: 50,
            max_queue_size: 100,
            queue_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(300),
            max_retries: 2,
            retry_backoff_factor: 0.5,
            circuit_breaker_threshold: 5,
            circuit_breaker_timeout: Duration::from_secs(60),
            pool_maxsize: 50,
            pool_connections: 20,
            max_connections: 4096,
            client_header_timeout: Duration::from_secs(10),
            client_idle_timeout: Duration::from_secs(60),
            max_header_bytes: 65536,
            max_body_bytes: 0,
            shutdown_grace: Duration::from_secs(30),
            log_level: LogLevel::Info,
            access_log: false,
        }
    }
}

/// Every setting key, in the order `--help`, `--check-config` and `/proxy-metrics` list them.
pub const KEYS: &[&str] = &[
    "host",
    "port",
    "target_host",
    "target_port",
    "target_scheme",
    "max_concurrent_requests",
    "max_queue_size",
    "queue_timeout",
    "connect_timeout",
    "read_timeout",
    "max_retries",
    "retry_backoff_factor",
    "circuit_breaker_threshold",
    "circuit_breaker_timeout",
    "pool_maxsize",
    "pool_connections",
    "max_connections",
    "client_header_timeout",
    "client_idle_timeout",
    "max_header_bytes",
    "max_body_bytes",
    "shutdown_grace",
    "log_level",
    "access_log",
];

/// A bad setting: which key, and what was wrong with the value.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "config key '{}': {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        message: message.into(),
    }
}

/// A raw value before parsing: a JSON value from the file or the text of a flag.
#[derive(Clone, Debug)]
pub enum Raw {
    Json(Value),
    Text(String),
}

impl Raw {
    fn shown(&self) -> String {
        match self {
            Raw::Json(v) => v.to_string(),
            Raw::Text(s) => format!("{s:?}"),
        }
    }

    fn as_f64(&self) -> Option<f64> {
        match self {
            Raw::Json(Value::Number(n)) => n.as_f64(),
            Raw::Json(_) => None,
            Raw::Text(s) => s.trim().parse::<f64>().ok(),
        }
    }

    fn as_int(&self) -> Option<i128> {
        match self {
            Raw::Json(Value::Number(n)) => n
                .as_i64()
                .map(i128::from)
                .or_else(|| n.as_u64().map(i128::from)),
            Raw::Json(_) => None,
            Raw::Text(s) => s.trim().parse::<i128>().ok(),
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Raw::Json(Value::String(s)) => Some(s),
            Raw::Json(_) => None,
            Raw::Text(s) => Some(s),
        }
    }

    fn as_bool(&self) -> Option<bool> {
        match self {
            Raw::Json(Value::Bool(b)) => Some(*b),
            Raw::Json(_) => None,
            Raw::Text(s) => match s.trim() {
                "true" | "1" | "yes" | "on" => Some(true),
                "false" | "0" | "no" | "off" => Some(false),
                _ => None,
            },
        }
    }
}

fn int_in(key: &str, raw: &Raw, min: i128, max: i128, what: &str) -> Result<i128, ConfigError> {
    match raw.as_int() {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(err(key, format!("expected {what}, got {}", raw.shown()))),
    }
}

fn seconds(key: &str, raw: &Raw, allow_zero: bool) -> Result<Duration, ConfigError> {
    let what = if allow_zero {
        "a number of seconds >= 0"
    } else {
        "a number of seconds > 0"
    };
    match raw.as_f64() {
        Some(s) if s.is_finite() && (s > 0.0 || (allow_zero && s == 0.0)) && s <= 1e7 => {
            Ok(Duration::from_secs_f64(s))
        }
        _ => Err(err(key, format!("expected {what}, got {}", raw.shown()))),
    }
}

fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
        })
}

impl Config {
    /// Parses one setting into `self`. The single place that knows each key's type and range.
    pub fn set(&mut self, key: &str, raw: &Raw) -> Result<(), ConfigError> {
        const MAXU: i128 = u32::MAX as i128;
        match key {
            "host" => {
                let h = raw
                    .as_str()
                    .ok_or_else(|| err(key, format!("expected a string, got {}", raw.shown())))?;
                if !valid_host(h) {
                    return Err(err(key, format!("not a valid listen address: {h:?}")));
                }
                self.host = h.to_string();
            }
            "port" => self.port = int_in(key, raw, 0, 65535, "a port 0-65535")? as u16,
            "target_host" => {
                let h = raw
                    .as_str()
                    .ok_or_else(|| err(key, format!("expected a string, got {}", raw.shown())))?;
                if !valid_host(h) {
                    return Err(err(
                        key,
                        format!("expected a host name or IP (no scheme, port or path), got {h:?}"),
                    ));
                }
                self.target_host = h.to_string();
            }
            "target_port" => {
                self.target_port = int_in(key, raw, 1, 65535, "a port 1-65535")? as u16
            }
            "target_scheme" => {
                self.target_scheme = match raw.as_str() {
                    Some("http") => Scheme::Http,
                    Some("https") => Scheme::Https,
                    _ => {
                        return Err(err(
                            key,
                            format!("expected \"http\" or \"https\", got {}", raw.shown()),
                        ))
                    }
                }
            }
            "max_concurrent_requests" => {
                self.max_concurrent_requests =
                    int_in(key, raw, 1, 10_000, "a whole number 1-10000")? as usize
            }
            "max_queue_size" => {
                self.max_queue_size =
                    int_in(key, raw, 0, 1_000_000, "a whole number 0-1000000")? as usize
            }
            "queue_timeout" => self.queue_timeout = seconds(key, raw, false)?,
            "connect_timeout" => self.connect_timeout = seconds(key, raw, false)?,
            "read_timeout" => self.read_timeout = seconds(key, raw, false)?,
            "max_retries" => {
                self.max_retries = int_in(key, raw, 0, 10, "a whole number 0-10")? as u32
            }
            "retry_backoff_factor" => match raw.as_f64() {
                Some(f) if f.is_finite() && (0.0..=60.0).contains(&f) => {
                    self.retry_backoff_factor = f
                }
                _ => {
                    return Err(err(
                        key,
                        format!("expected a number of seconds 0-60, got {}", raw.shown()),
                    ))
                }
            },
            "circuit_breaker_threshold" => {
                self.circuit_breaker_threshold =
                    int_in(key, raw, 1, MAXU, "a whole number >= 1")? as u32
            }
            "circuit_breaker_timeout" => self.circuit_breaker_timeout = seconds(key, raw, true)?,
            "pool_maxsize" => {
                self.pool_maxsize =
                    int_in(key, raw, 0, 100_000, "a whole number 0-100000")? as usize
            }
            "pool_connections" => {
                self.pool_connections =
                    int_in(key, raw, 0, 100_000, "a whole number 0-100000")? as usize
            }
            "max_connections" => {
                self.max_connections =
                    int_in(key, raw, 1, 1_000_000, "a whole number 1-1000000")? as usize
            }
            "client_header_timeout" => self.client_header_timeout = seconds(key, raw, false)?,
            "client_idle_timeout" => self.client_idle_timeout = seconds(key, raw, false)?,
            "max_header_bytes" => {
                self.max_header_bytes = int_in(
                    key,
                    raw,
                    1024,
                    16 * 1024 * 1024,
                    "a byte count 1024-16777216",
                )? as usize
            }
            "max_body_bytes" => {
                self.max_body_bytes = int_in(
                    key,
                    raw,
                    0,
                    i64::MAX as i128,
                    "a byte count >= 0 (0 = unlimited)",
                )? as u64
            }
            "shutdown_grace" => self.shutdown_grace = seconds(key, raw, true)?,
            "log_level" => {
                self.log_level = match raw.as_str() {
                    Some("error") => LogLevel::Error,
                    Some("warn") => LogLevel::Warn,
                    Some("info") => LogLevel::Info,
                    Some("debug") => LogLevel::Debug,
                    _ => {
                        return Err(err(
                            key,
                            format!(
                                "expected one of \"error\", \"warn\", \"info\", \"debug\", got {}",
                                raw.shown()
                            ),
                        ))
                    }
                }
            }
            "access_log" => {
                self.access_log = raw.as_bool().ok_or_else(|| {
                    err(key, format!("expected true or false, got {}", raw.shown()))
                })?
            }
            _ => return Err(err(key, "unknown setting")),
        }
        Ok(())
    }

    /// Checks what no single key can check alone.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.target_host.is_empty() {
            return Err(err(
                "target_host",
                "required: give --target-host or \"target_host\" in the config file",
            ));
        }
        Ok(())
    }

    /// `http://host:port`, the base every upstream URI starts with.
    pub fn target_base(&self) -> String {
        let host = if self.target_host.contains(':') && !self.target_host.starts_with('[') {
            format!("[{}]", self.target_host)
        } else {
            self.target_host.clone()
        };
        format!(
            "{}://{}:{}",
            self.target_scheme.as_str(),
            host,
            self.target_port
        )
    }

    /// The effective settings as JSON, keyed as in the config file (durations in seconds).
    pub fn to_json(&self) -> Value {
        json!({
            "host": self.host,
            "port": self.port,
            "target_host": self.target_host,
            "target_port": self.target_port,
            "target_scheme": self.target_scheme.as_str(),
            "max_concurrent_requests": self.max_concurrent_requests,
            "max_queue_size": self.max_queue_size,
            "queue_timeout": self.queue_timeout.as_secs_f64(),
            "connect_timeout": self.connect_timeout.as_secs_f64(),
            "read_timeout": self.read_timeout.as_secs_f64(),
            "max_retries": self.max_retries,
            "retry_backoff_factor": self.retry_backoff_factor,
            "circuit_breaker_threshold": self.circuit_breaker_threshold,
            "circuit_breaker_timeout": self.circuit_breaker_timeout.as_secs_f64(),
            "pool_maxsize": self.pool_maxsize,
            "pool_connections": self.pool_connections,
            "max_connections": self.max_connections,
            "client_header_timeout": self.client_header_timeout.as_secs_f64(),
            "client_idle_timeout": self.client_idle_timeout.as_secs_f64(),
            "max_header_bytes": self.max_header_bytes,
            "max_body_bytes": self.max_body_bytes,
            "shutdown_grace": self.shutdown_grace.as_secs_f64(),
            "log_level": self.log_level.as_str(),
            "access_log": self.access_log,
        })
    }

    /// Legal but unwise combinations, as human sentences (printed by `--check-config`).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.pool_maxsize < self.max_concurrent_requests {
            w.push(format!(
                "pool_maxsize ({}) < max_concurrent_requests ({}): busy workers will open new upstream connections instead of reusing idle ones",
                self.pool_maxsize, self.max_concurrent_requests
            ));
        }
        if self.max_queue_size < self.max_concurrent_requests {
            w.push(format!(
                "max_queue_size ({}) < max_concurrent_requests ({}): short bursts will be rejected with 503 queue_full",
                self.max_queue_size, self.max_concurrent_requests
            ));
        }
        if self.read_timeout < self.connect_timeout {
            w.push(format!(
                "read_timeout ({}s) is shorter than connect_timeout ({}s)",
                self.read_timeout.as_secs_f64(),
                self.connect_timeout.as_secs_f64()
            ));
        }
        if self.queue_timeout > Duration::from_secs(60) {
            w.push(format!(
                "queue_timeout ({}s) is longer than most clients wait (60 s): they will give up before sluice answers 503",
                self.queue_timeout.as_secs_f64()
            ));
        }
        if self.circuit_breaker_timeout.is_zero() {
            w.push(
                "circuit_breaker_timeout is 0: the breaker half-opens at once and protects nothing"
                    .into(),
            );
        }
        w
    }
}

/// Command-line flags. Values are kept as text and parsed by `Config::set`, the same parser the
/// config file uses.
#[derive(FromArgs, Debug, Default)]
#[argh(
    description = "sluice: a small, fast, dependable HTTP reverse proxy for one upstream.
Every setting is also a key of the --config JSON file (flag name with _ for -); flags override the file."
)]
pub struct Flags {
    /// JSON config file (e.g. proxy_config.json)
    #[argh(option)]
    pub config: Option<String>,
    /// validate the settings, print the effective values with their source, and exit (0 ok, 2 bad)
    #[argh(switch)]
    pub check_config: bool,
    /// print the version and exit
    #[argh(switch)]
    pub version: bool,
    /// listen address (default 0.0.0.0)
    #[argh(option)]
    pub host: Option<String>,
    /// listen port (default 8080; 0 picks a free port)
    #[argh(option)]
    pub port: Option<String>,
    /// upstream host name or IP (required)
    #[argh(option)]
    pub target_host: Option<String>,
    /// upstream port (default 80)
    #[argh(option)]
    pub target_port: Option<String>,
    /// upstream scheme: http or https (default http)
    #[argh(option)]
    pub target_scheme: Option<String>,
    /// worker threads = requests in flight upstream at most (default 50)
    #[argh(option)]
    pub max_concurrent_requests: Option<String>,
    /// requests waiting for a worker; beyond it 503 queue_full (default 100)
    #[argh(option)]
    pub max_queue_size: Option<String>,
    /// seconds a request may wait in the queue; beyond it 503 queue_timeout (default 30)
    #[argh(option)]
    pub queue_timeout: Option<String>,
    /// seconds to connect to the upstream (default 10)
    #[argh(option)]
    pub connect_timeout: Option<String>,
    /// seconds to wait for the response head, and longest silence in a body (default 300)
    #[argh(option)]
    pub read_timeout: Option<String>,
    /// extra attempts after the first, when safe (default 2)
    #[argh(option)]
    pub max_retries: Option<String>,
    /// backoff before retry n = factor x 2^(n-1) seconds, jittered (default 0.5)
    #[argh(option)]
    pub retry_backoff_factor: Option<String>,
    /// consecutive failures that open the circuit breaker (default 5)
    #[argh(option)]
    pub circuit_breaker_threshold: Option<String>,
    /// seconds the breaker stays open before a probe (default 60)
    #[argh(option)]
    pub circuit_breaker_timeout: Option<String>,
    /// idle upstream connections kept for reuse (default 50)
    #[argh(option)]
    pub pool_maxsize: Option<String>,
    /// accepted for compatibility; one upstream means one pool (default 20)
    #[argh(option)]
    pub pool_connections: Option<String>,
    /// client connections held at once; beyond it 503 and close (default 4096)
    #[argh(option)]
    pub max_connections: Option<String>,
    /// seconds for a whole request head to arrive; else 408 (default 10)
    #[argh(option)]
    pub client_header_timeout: Option<String>,
    /// seconds an idle keep-alive client connection is kept (default 60)
    #[argh(option)]
    pub client_idle_timeout: Option<String>,
    /// largest request head in bytes; else 431 (default 65536)
    #[argh(option)]
    pub max_header_bytes: Option<String>,
    /// largest request body in bytes; else 413 (default 0 = unlimited)
    #[argh(option)]
    pub max_body_bytes: Option<String>,
    /// seconds to let in-flight requests finish after SIGTERM (default 30)
    #[argh(option)]
    pub shutdown_grace: Option<String>,
    /// error, warn, info or debug (default info)
    #[argh(option)]
    pub log_level: Option<String>,
    /// one JSON line per proxied request on stdout
    #[argh(switch)]
    pub access_log: bool,
}

impl Flags {
    /// The settings given on the command line, as (key, text) pairs.
    fn given(&self) -> Vec<(&'static str, String)> {
        let all: [(&'static str, &Option<String>); 23] = [
            ("host", &self.host),
            ("port", &self.port),
            ("target_host", &self.target_host),
            ("target_port", &self.target_port),
            ("target_scheme", &self.target_scheme),
            ("max_concurrent_requests", &self.max_concurrent_requests),
            ("max_queue_size", &self.max_queue_size),
            ("queue_timeout", &self.queue_timeout),
            ("connect_timeout", &self.connect_timeout),
            ("read_timeout", &self.read_timeout),
            ("max_retries", &self.max_retries),
            ("retry_backoff_factor", &self.retry_backoff_factor),
            ("circuit_breaker_threshold", &self.circuit_breaker_threshold),
            ("circuit_breaker_timeout", &self.circuit_breaker_timeout),
            ("pool_maxsize", &self.pool_maxsize),
            ("pool_connections", &self.pool_connections),
            ("max_connections", &self.max_connections),
            ("client_header_timeout", &self.client_header_timeout),
            ("client_idle_timeout", &self.client_idle_timeout),
            ("max_header_bytes", &self.max_header_bytes),
            ("max_body_bytes", &self.max_body_bytes),
            ("shutdown_grace", &self.shutdown_grace),
            ("log_level", &self.log_level),
        ];
        let mut out: Vec<(&'static str, String)> = all
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k, v.clone())))
            .collect();
        if self.access_log {
            out.push(("access_log", "true".into()));
        }
        out
    }
}

/// The effective config and where each value came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub sources: BTreeMap<&'static str, Source>,
}

/// Parses the text of a config file (a JSON object of known keys).
pub fn parse_file_text(text: &str, into: &mut Config) -> Result<Vec<&'static str>, ConfigError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| err("", format!("config file is not valid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(err("", "config file must hold a JSON object of settings"));
    };
    apply_object(map, into)
}

fn apply_object(
    map: Map<String, Value>,
    into: &mut Config,
) -> Result<Vec<&'static str>, ConfigError> {
    let mut seen = Vec::new();
    for (key, value) in map {
        let Some(known) = KEYS.iter().find(|k| **k == key) else {
            return Err(err(
                &key,
                "unknown setting (see sluice --help for the list)",
            ));
        };
        into.set(known, &Raw::Json(value))?;
        seen.push(*known);
    }
    Ok(seen)
}

/// Merges defaults, the file named by `--config` and the flags; validates the result.
pub fn load(flags: &Flags) -> Result<Loaded, ConfigError> {
    let mut config = Config::default();
    let mut sources: BTreeMap<&'static str, Source> =
        KEYS.iter().map(|k| (*k, Source::Default)).collect();
    if let Some(path) = &flags.config {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err("config", format!("cannot read {path}: {e}")))?;
        for key in parse_file_text(&text, &mut config)? {
            sources.insert(key, Source::File);
        }
    }
    for (key, text) in flags.given() {
        config.set(key, &Raw::Text(text))?;
        sources.insert(key, Source::Flag);
    }
    config.validate()?;
    Ok(Loaded { config, sources })
}

/// Re-reads a config file for SIGHUP: the file over the defaults, then the original flags.
pub fn reload(flags: &Flags) -> Result<Config, ConfigError> {
    load(flags).map(|l| l.config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Flags {
        Flags::from_args(&["sluice"], args).expect("flags parse")
    }

    #[test]
    fn flag_overrides_file_overrides_default() {
        let dir = std::env::temp_dir().join(format!("sluice-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.json");
        std::fs::write(
            &path,
            r#"{"target_host":"up","max_queue_size":7,"queue_timeout":2.5}"#,
        )
        .unwrap();
        let f = flags(&["--config", path.to_str().unwrap(), "--max-queue-size", "9"]);
        let l = load(&f).unwrap();
        assert_eq!(l.config.max_queue_size, 9);
        assert_eq!(l.sources["max_queue_size"], Source::Flag);
        assert_eq!(l.config.queue_timeout, Duration::from_millis(2500));
        assert_eq!(l.sources["queue_timeout"], Source::File);
        assert_eq!(l.config.max_concurrent_requests, 50);
        assert_eq!(l.sources["max_concurrent_requests"], Source::Default);
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            ("max_concurrent_requests", "0", "max_concurrent_requests"),
            ("max_queue_size", "-3", "max_queue_size"),
            ("target_port", "70000", "target_port"),
            ("read_timeout", "-1", "read_timeout"),
            ("queue_timeout", "abc", "queue_timeout"),
            ("target_scheme", "ftp", "target_scheme"),
            ("log_level", "loud", "log_level"),
        ];
        for (key, value, named) in cases {
            let mut c = Config::default();
            let e = c.set(key, &Raw::Text(value.to_string())).unwrap_err();
            assert_eq!(e.key, *named);
            assert!(e.to_string().contains(named), "{e}");
        }
    }

    #[test]
    fn file_rejects_unknown_keys_and_wrong_types() {
        let mut c = Config::default();
        let e = parse_file_text(r#"{"max_queue_sise": 3}"#, &mut c).unwrap_err();
        assert_eq!(e.key, "max_queue_sise");
        let e = parse_file_text(r#"{"max_queue_size": "3"}"#, &mut c).unwrap_err();
        assert_eq!(e.key, "max_queue_size");
        let e = parse_file_text(r#"{"access_log": "yes"}"#, &mut c).unwrap_err();
        assert_eq!(e.key, "access_log");
        assert!(parse_file_text("[1]", &mut c).is_err());
    }

    #[test]
    fn target_host_is_required_and_checked() {
        assert_eq!(load(&flags(&[])).unwrap_err().key, "target_host");
        let e = load(&flags(&["--target-host", "http://x/y"])).unwrap_err();
        assert_eq!(e.key, "target_host");
    }

    #[test]
    fn warnings_for_unwise_settings() {
        let c = Config {
            target_host: "x".into(),
            pool_maxsize: 1,
            max_queue_size: 1,
            read_timeout: Duration::from_secs(1),
            queue_timeout: Duration::from_secs(600),
            circuit_breaker_timeout: Duration::ZERO,
            ..Config::default()
        };
        assert_eq!(c.warnings().len(), 5);
        assert!(Config {
            target_host: "x".into(),
            ..Config::default()
        }
        .warnings()
        .is_empty());
    }

    #[test]
    fn every_key_round_trips_through_json() {
        let c = Config {
            target_host: "up".into(),
            ..Config::default()
        };
        let Value::Object(map) = c.to_json() else {
            panic!()
        };
        assert_eq!(map.len(), KEYS.len());
        let mut d = Config::default();
        apply_object(map, &mut d).unwrap();
        assert_eq!(c, d);
    }
}
