//! One setting's value on its way in and out: the raw text of a flag or JSON of the file
//! (`Raw`), the parsers the key table names for each key (`Int`, `Secs`, `Factor`, `Host`,
//! `Choice`, `Bool`), the JSON each value is shown as, and the error that names the key.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

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

pub fn err(key: &str, message: impl Into<String>) -> ConfigError {
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

    fn expected(&self, key: &str, what: &str) -> ConfigError {
        err(key, format!("expected {what}, got {}", self.shown()))
    }
}

/// Parses a raw value for one key into the setting's type.
pub trait Parse<T> {
    fn parse(&self, key: &str, raw: &Raw) -> Result<T, ConfigError>;
}

/// A whole number in `min..=max`; `what` describes it in the error ("a port 1-65535").
pub struct Int {
    pub min: i128,
    pub max: i128,
    pub what: &'static str,
}

impl<T: TryFrom<i128>> Parse<T> for Int {
    fn parse(&self, key: &str, raw: &Raw) -> Result<T, ConfigError> {
        raw.as_int()
            .filter(|n| (self.min..=self.max).contains(n))
            .and_then(|n| T::try_from(n).ok())
            .ok_or_else(|| raw.expected(key, self.what))
    }
}

/// The shortest timeout sluice accepts: below it, a socket timeout would round to zero, which
/// the OS takes as "no timeout at all".
pub const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// Seconds (fractions allowed), at least `MIN_TIMEOUT`; `zero_ok`: 0 is also allowed.
pub struct Secs {
    pub zero_ok: bool,
}

impl Parse<Duration> for Secs {
    fn parse(&self, key: &str, raw: &Raw) -> Result<Duration, ConfigError> {
        let what = if self.zero_ok {
            "0 or a number of seconds >= 0.001"
        } else {
            "a number of seconds >= 0.001"
        };
        match raw.as_f64() {
            Some(s) if s.is_finite() && s <= 1e7 => {
                let d = Duration::from_secs_f64(s.max(0.0));
                if (self.zero_ok && s == 0.0) || (s > 0.0 && d >= MIN_TIMEOUT) {
                    Ok(d)
                } else {
                    Err(raw.expected(key, what))
                }
            }
            _ => Err(raw.expected(key, what)),
        }
    }
}

/// A number of seconds in `0..=max` (the retry backoff factor).
pub struct Factor {
    pub max: f64,
}

impl Parse<f64> for Factor {
    fn parse(&self, key: &str, raw: &Raw) -> Result<f64, ConfigError> {
        raw.as_f64()
            .filter(|f| f.is_finite() && (0.0..=self.max).contains(f))
            .ok_or_else(|| raw.expected(key, &format!("a number of seconds 0-{}", self.max)))
    }
}

/// A host name or IP address, nothing more (no scheme, port or path).
pub struct Host;

impl Parse<String> for Host {
    fn parse(&self, key: &str, raw: &Raw) -> Result<String, ConfigError> {
        let h = raw.as_str().ok_or_else(|| raw.expected(key, "a string"))?;
        let valid = !h.is_empty()
            && h.len() <= 253
            && h.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
            });
        if !valid {
            return Err(err(
                key,
                format!("expected a host name or IP (no scheme, port or path), got {h:?}"),
            ));
        }
        Ok(h.to_string())
    }
}

/// The path (and query) of a request sluice sends itself, in origin form (`/health`,
/// `/status?deep=1`), or empty for none: visible ASCII only, so it is sent as written.
pub struct OriginPath;

impl Parse<String> for OriginPath {
    fn parse(&self, key: &str, raw: &Raw) -> Result<String, ConfigError> {
        let p = raw.as_str().ok_or_else(|| raw.expected(key, "a string"))?;
        let valid = p.is_empty()
            || (p.starts_with('/') && p.len() <= 2048 && p.bytes().all(|b| b.is_ascii_graphic()));
        if !valid {
            return Err(err(
                key,
                format!("expected a path starting with / (no spaces), or \"\" for none, got {p:?}"),
            ));
        }
        Ok(p.to_string())
    }
}

/// An enum setting spelled as one of its names.
pub trait Named: Sized + Copy + 'static {
    const ALL: &'static [Self];
    /// Other names accepted for a value (never shown).
    const ALIASES: &'static [(&'static str, Self)] = &[];
    fn as_str(self) -> &'static str;
}

/// One of the names of `T`, in any case (`"INFO"`, as a Python config has it, is `info`).
pub struct Choice;

impl<T: Named> Parse<T> for Choice {
    fn parse(&self, key: &str, raw: &Raw) -> Result<T, ConfigError> {
        let given = raw.as_str().map(str::trim).unwrap_or_default();
        let named = |name: &str| !given.is_empty() && name.eq_ignore_ascii_case(given);
        T::ALL
            .iter()
            .map(|v| (v.as_str(), *v))
            .chain(T::ALIASES.iter().copied())
            .find(|(name, _)| named(name))
            .map(|(_, v)| v)
            .ok_or_else(|| {
                let names: Vec<String> =
                    T::ALL.iter().map(|v| format!("{:?}", v.as_str())).collect();
                raw.expected(key, &format!("one of {}", names.join(", ")))
            })
    }
}

/// `true` or `false` (flags also take `1`/`0`, `yes`/`no`, `on`/`off`), in any case.
pub struct Bool;

impl Parse<bool> for Bool {
    fn parse(&self, key: &str, raw: &Raw) -> Result<bool, ConfigError> {
        let b = match raw {
            Raw::Json(Value::Bool(b)) => Some(*b),
            Raw::Json(_) => None,
            Raw::Text(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Some(true),
                "false" | "0" | "no" | "off" => Some(false),
                _ => None,
            },
        };
        b.ok_or_else(|| raw.expected(key, "true or false"))
    }
}

/// How a setting is shown in JSON (`--check-config`, `/proxy-metrics`, the config file).
pub trait ToJson {
    fn to_json(&self) -> Value;
}

macro_rules! to_json_as_is {
    ($($t:ty),*) => {$(
        impl ToJson for $t {
            fn to_json(&self) -> Value {
                Value::from(self.clone())
            }
        }
    )*};
}
to_json_as_is!(u16, u32, u64, usize, f64, bool, String);

impl ToJson for Duration {
    fn to_json(&self) -> Value {
        Value::from(self.as_secs_f64())
    }
}

impl<T: Named> ToJson for T {
    fn to_json(&self) -> Value {
        Value::from(self.as_str())
    }
}
