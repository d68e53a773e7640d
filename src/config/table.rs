//! The key table: every setting declared once — its name (the file key; the flag is the same
//! with `-` for `_`), type, default, parser (type and range), whether a SIGHUP reload applies
//! it, and its `--help` text. The `Config` struct, its `Default`, `KEYS`, the parser per key,
//! the JSON shown by `--check-config` and `/proxy-metrics`, the reload rule and the argh
//! `Flags` are all generated from it by `settings!` below.

use std::time::Duration;

use argh::FromArgs;
use serde_json::{Map, Value};

use super::client_key::{ClientKey, KeyParser};
use super::value::{
    Bool, Choice, ConfigError, Factor, Host, Int, OriginPath, Parse, Raw, Secs, ToJson,
};
use super::{LogLevel, Scheme};

/// Writes out the table as types and functions. Each row:
/// `/// help text` · `name: Type = default, parser, reload|restart, option(String)|switch(bool);`
macro_rules! settings {
    ($(
        $(#[doc = $help:literal])+
        $key:ident : $ty:ty = $default:expr, $parser:expr, $apply:ident, $flag:ident($fty:ident);
    )*) => {
        /// The effective settings. `Default` holds every default in one place.
        #[derive(Clone, Debug, PartialEq)]
        pub struct Config {
            $(pub $key: $ty,)*
        }

        impl Default for Config {
            fn default() -> Self {
                Config { $($key: $default,)* }
            }
        }

        /// Every setting key, in the order `--help`, `--check-config` and `/proxy-metrics`
        /// list them.
        pub const KEYS: &[&str] = &[$(stringify!($key)),*];

        /// The `--help` text of each key (for the test that the defaults it names are true).
        pub const HELP: &[(&str, &str)] = &[$((stringify!($key), concat!($($help),+))),*];

        impl Config {
            /// Parses one setting into `self`: the single place that knows each key's type
            /// and range.
            pub fn set(&mut self, key: &str, raw: &Raw) -> Result<(), ConfigError> {
                match key {
                    $(stringify!($key) => self.$key = Parse::<$ty>::parse(&$parser, key, raw)?,)*
                    _ => return Err(super::value::err(key, "unknown setting")),
                }
                Ok(())
            }

            /// The settings as JSON, keyed as in the config file (durations in seconds).
            pub fn to_json(&self) -> Value {
                let mut map = Map::new();
                $(map.insert(stringify!($key).into(), ToJson::to_json(&self.$key));)*
                Value::Object(map)
            }

            /// For a reload: keeps `running`'s value of every setting that needs a restart
            /// to change, and returns the keys whose new value was not applied.
            pub fn keep_restart_only(&mut self, running: &Config) -> Vec<&'static str> {
                let mut kept = Vec::new();
                $(
                    if !applies!($apply) && self.$key != running.$key {
                        self.$key = running.$key.clone();
                        kept.push(stringify!($key));
                    }
                )*
                kept
            }
        }

        /// Command-line flags. Values are kept as text and parsed by `Config::set`, the same
        /// parser the config file uses.
        #[derive(FromArgs, Debug, Default)]
        #[argh(
            description = "sluice: a small, fast, dependable HTTP reverse proxy for one upstream.
Every setting is also a key of the --config JSON file (flag name with _ for -); flags override the file.
--flag=value works for every flag; a true-or-false flag given alone means true (--access-log)."
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
            $(
                $(#[doc = $help])+
                #[argh($flag)]
                pub $key: Option<$fty>,
            )*
        }

        impl Flags {
            /// The settings given on the command line, as (key, text) pairs.
            pub fn given(&self) -> Vec<(&'static str, String)> {
                let mut out = Vec::new();
                $(
                    if let Some(text) = FlagText::text(&self.$key) {
                        out.push((stringify!($key), text));
                    }
                )*
                out
            }
        }
    };
}

/// `reload`: a SIGHUP applies the new value; `restart`: it needs a restart.
macro_rules! applies {
    (reload) => {
        true
    };
    (restart) => {
        false
    };
}

/// The text a given flag stands for, if it was given.
trait FlagText {
    fn text(&self) -> Option<String>;
}

impl FlagText for Option<String> {
    fn text(&self) -> Option<String> {
        self.clone()
    }
}

const fn int(min: i128, max: i128, what: &'static str) -> Int {
    Int { min, max, what }
}

const SECS: Secs = Secs { zero_ok: false };
const SECS_OR_ZERO: Secs = Secs { zero_ok: true };

settings! {
    /// listen address (default 0.0.0.0)
    host: String = "0.0.0.0".into(), Host, restart, option(String);
    /// listen port (default 8080; 0 picks a free port)
    port: u16 = 8080, int(0, 65535, "a port 0-65535"), restart, option(String);
    /// upstream host name or IP (required)
    target_host: String = String::new(), Host, reload, option(String);
    /// upstream port (default 80)
    target_port: u16 = 80, int(1, 65535, "a port 1-65535"), reload, option(String);
    /// upstream scheme: http or https (default http)
    target_scheme: Scheme = Scheme::Http, Choice, reload, option(String);
    /// worker threads = requests in flight upstream at most (default 50)
    max_concurrent_requests: usize = 50, int(1, 10_000, "a whole number 1-10000"), restart, option(String);
    /// requests waiting for a worker; beyond it 503 queue_full (default 100)
    max_queue_size: usize = 100, int(0, 1_000_000, "a whole number 0-1000000"), restart, option(String);
    /// how requests are grouped for a fair share of the workers: ip (the client's address), header:NAME (that header's value, else the address) or none (one group: first come, first served) (default ip)
    client_key: ClientKey = ClientKey::Ip, KeyParser, reload, option(String);
    /// most requests one group (client_key) may have in workers and queue together; beyond it 429 client_limit (default 0 = off)
    max_client_requests: usize = 0, int(0, 1_000_000, "a whole number 0-1000000 (0 = off)"), reload, option(String);
    /// seconds a request may wait in the queue; beyond it 503 queue_timeout (default 30)
    queue_timeout: Duration = Duration::from_secs(30), SECS, reload, option(String);
    /// seconds to connect to the upstream (default 10)
    connect_timeout: Duration = Duration::from_secs(10), SECS, reload, option(String);
    /// seconds to wait for the response head, and longest silence in a body (default 300)
    read_timeout: Duration = Duration::from_secs(300), SECS, reload, option(String);
    /// extra attempts after the first, when safe (default 2)
    max_retries: u32 = 2, int(0, 10, "a whole number 0-10"), reload, option(String);
    /// backoff before retry n = factor x 2^(n-1) seconds, jittered (default 0.5)
    retry_backoff_factor: f64 = 0.5, Factor { max: 60.0 }, reload, option(String);
    /// consecutive failures that open the circuit breaker (default 5)
    circuit_breaker_threshold: u32 = 5, int(1, u32::MAX as i128, "a whole number >= 1"), reload, option(String);
    /// seconds the breaker stays open before a probe (default 60)
    circuit_breaker_timeout: Duration = Duration::from_secs(60), SECS_OR_ZERO, reload, option(String);
    /// path of the upstream that sluice GETs on a new connection of its own to check it, e.g. /health: any status below 500 within health_check_timeout passes (a 404 too); empty, as by default, turns checks off
    health_check_path: String = String::new(), OriginPath, reload, option(String);
    /// seconds from the start of one health check to the start of the next (default 5)
    health_check_interval: Duration = Duration::from_secs(5), SECS, reload, option(String);
    /// seconds a health check may take to get its response head (default 5)
    health_check_timeout: Duration = Duration::from_secs(5), SECS, reload, option(String);
    /// passing health checks in a row that close the open breaker (default 2)
    health_check_rise: u32 = 2, int(1, 1000, "a whole number 1-1000"), reload, option(String);
    /// failing health checks in a row that open the breaker (default 3)
    health_check_fall: u32 = 3, int(1, 1000, "a whole number 1-1000"), reload, option(String);
    /// idle upstream connections kept for reuse (default 50)
    pool_maxsize: usize = 50, int(0, 100_000, "a whole number 0-100000"), reload, option(String);
    /// seconds an idle upstream connection is kept; an older one is closed, never reused (default 4)
    pool_idle_timeout: Duration = Duration::from_secs(4), SECS, reload, option(String);
    /// accepted for compatibility; one upstream means one pool (default 20)
    pool_connections: usize = 20, int(0, 100_000, "a whole number 0-100000"), reload, option(String);
    /// client connections held at once; beyond it 503 and close (default 4096)
    max_connections: usize = 4096, int(1, 1_000_000, "a whole number 1-1000000"), reload, option(String);
    /// seconds for a whole request head to arrive; else 408 (default 10)
    client_header_timeout: Duration = Duration::from_secs(10), SECS, reload, option(String);
    /// seconds an idle keep-alive client connection is kept (default 60)
    client_idle_timeout: Duration = Duration::from_secs(60), SECS, reload, option(String);
    /// request bodies up to this many bytes are read by the front end before a worker is used, and responses up to it are handed back to the front end for a slow reader (default 65536)
    client_buffer: usize = 65536, int(0, 16 * 1024 * 1024, "a byte count 0-16777216"), reload, option(String);
    /// bytes per second a client must keep up while a worker streams its larger body or response, after client_header_timeout of grace; below it 408 and close (default 1024; 0 = off)
    client_min_rate: u64 = 1024, int(0, 1 << 40, "a byte rate >= 0 (0 = off)"), reload, option(String);
    /// largest request head in bytes; else 431 (default 65536)
    max_header_bytes: usize = 65536, int(1024, 16 * 1024 * 1024, "a byte count 1024-16777216"), reload, option(String);
    /// largest request body in bytes; else 413 (default 0 = unlimited)
    max_body_bytes: u64 = 0, int(0, i64::MAX as i128, "a byte count >= 0 (0 = unlimited)"), reload, option(String);
    /// cancel a request's upstream exchange when its client hangs up, and drop a queued one: true or false (default true)
    abort_on_client_close: bool = true, Bool, reload, option(String);
    /// add "Via: 1.1 sluice" to requests sent upstream: true or false (default false; an nginx upstream stops gzipping when it sees one)
    request_via: bool = false, Bool, reload, option(String);
    /// seconds to let in-flight requests finish after SIGTERM; at least connect_timeout + read_timeout (default 320)
    shutdown_grace: Duration = Duration::from_secs(320), SECS_OR_ZERO, reload, option(String);
    /// error, warn, info or debug (default info)
    log_level: LogLevel = LogLevel::Info, Choice, reload, option(String);
    /// one JSON line per proxied request on stdout: true or false (default false)
    access_log: bool = false, Bool, reload, option(String);
}
