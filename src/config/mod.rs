//! Settings: the one `Config` with every default, the command-line flags (argh), the JSON file,
//! their merge (flag > file > default) and validation. Nothing here opens a socket.
//!
//! Every setting is both a flag (`--max-queue-size`) and a file key (`max_queue_size`), declared
//! once in the key table (`table.rs`); flags and file values go through the same parser
//! (`value.rs`), so a bad value gets the same message either way.

mod args;
mod client_key;
mod table;
mod value;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value};

pub use args::normalize as normalize_args;
pub use client_key::ClientKey;
pub use table::{Config, Flags, HELP, KEYS};
use value::{err, Named};
pub use value::{ConfigError, Raw, MIN_TIMEOUT};

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

impl Named for Scheme {
    const ALL: &'static [Self] = &[Scheme::Http, Scheme::Https];

    fn as_str(self) -> &'static str {
        Scheme::as_str(self)
    }
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

impl Named for LogLevel {
    const ALL: &'static [Self] = &[
        LogLevel::Error,
        LogLevel::Warn,
        LogLevel::Info,
        LogLevel::Debug,
    ];
    /// Python's `logging` names.
    const ALIASES: &'static [(&'static str, Self)] =
        &[("warning", LogLevel::Warn), ("critical", LogLevel::Error)];

    fn as_str(self) -> &'static str {
        LogLevel::as_str(self)
    }
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

impl Config {
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
        if self.shutdown_grace < self.connect_timeout + self.read_timeout {
            w.push(format!(
                "shutdown_grace ({}s) < connect_timeout + read_timeout ({}s): a request that started just before SIGTERM may be cut (outcome shutdown)",
                self.shutdown_grace.as_secs_f64(),
                (self.connect_timeout + self.read_timeout).as_secs_f64()
            ));
        }
        if self.circuit_breaker_timeout.is_zero() {
            w.push(
                "circuit_breaker_timeout is 0: the breaker half-opens at once and protects nothing"
                    .into(),
            );
        }
        if !self.health_check_path.is_empty()
            && self.health_check_timeout > self.health_check_interval
        {
            w.push(format!(
                "health_check_timeout ({}s) > health_check_interval ({}s): failing checks run back to back, so a hung upstream is noticed after health_check_fall x health_check_timeout",
                self.health_check_timeout.as_secs_f64(),
                self.health_check_interval.as_secs_f64()
            ));
        }
        w
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
    use argh::FromArgs;

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
            ("health_check_path", "health", "health_check_path"),
            ("health_check_path", "/a b", "health_check_path"),
            ("health_check_rise", "0", "health_check_rise"),
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
            shutdown_grace: Duration::from_secs(5),
            ..Config::default()
        };
        assert_eq!(c.warnings().len(), 6);
        assert!(c
            .warnings()
            .iter()
            .any(|w| w.starts_with("shutdown_grace (5s)")));
        assert!(Config {
            target_host: "x".into(),
            ..Config::default()
        }
        .warnings()
        .is_empty());
    }

    #[test]
    fn help_names_the_true_default() {
        let defaults = Config::default().to_json();
        for (key, help) in HELP {
            let Some(rest) = help.split("(default ").nth(1) else {
                continue;
            };
            let named = rest.split([')', ';', ' ']).next().unwrap();
            match &defaults[*key] {
                Value::String(s) => assert_eq!(named, s, "--help of {key}"),
                Value::Bool(b) => assert_eq!(named, b.to_string(), "--help of {key}"),
                v => assert_eq!(named.parse::<f64>().ok(), v.as_f64(), "--help of {key}"),
            }
        }
    }

    #[test]
    fn timeouts_under_a_millisecond_are_refused_not_rounded_to_none() {
        let mut c = Config::default();
        for v in ["0.0001", "0", "-1"] {
            let e = c
                .set("client_idle_timeout", &Raw::Text(v.into()))
                .unwrap_err();
            assert_eq!(e.key, "client_idle_timeout", "{v}");
        }
        c.set("client_idle_timeout", &Raw::Text("0.001".into()))
            .unwrap();
        assert_eq!(c.client_idle_timeout, MIN_TIMEOUT);
        c.set("shutdown_grace", &Raw::Text("0".into())).unwrap();
        assert!(c
            .set("shutdown_grace", &Raw::Text("0.0005".into()))
            .is_err());
    }

    #[test]
    fn a_reload_keeps_restart_only_settings_and_names_them() {
        let running = Config::default();
        let mut new = Config {
            port: 9,
            max_queue_size: 3,
            read_timeout: Duration::from_secs(7),
            ..Config::default()
        };
        assert_eq!(new.keep_restart_only(&running), ["port", "max_queue_size"]);
        assert_eq!((new.port, new.max_queue_size), (8080, 100));
        assert_eq!(new.read_timeout, Duration::from_secs(7));
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
