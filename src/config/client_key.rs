//! The `client_key` setting: how requests are grouped for fair dispatch (README "Concurrency").
//! `ip` (the client's address), `header:NAME` (that header's value, else the address) or `none`
//! (one group for everyone).

use std::fmt;

use serde_json::Value;

use super::value::{err, ConfigError, Parse, Raw, ToJson};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientKey {
    Ip,
    /// A header's name (as given; matched in any case).
    Header(String),
    None,
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientKey::Ip => f.write_str("ip"),
            ClientKey::Header(name) => write!(f, "header:{name}"),
            ClientKey::None => f.write_str("none"),
        }
    }
}

/// The parser of `client_key`.
pub struct KeyParser;

impl Parse<ClientKey> for KeyParser {
    fn parse(&self, key: &str, raw: &Raw) -> Result<ClientKey, ConfigError> {
        let given = match raw {
            Raw::Json(Value::String(s)) | Raw::Text(s) => s.trim(),
            Raw::Json(_) => "",
        };
        let token = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
        match given.split_once(':') {
            None if given.eq_ignore_ascii_case("ip") => Ok(ClientKey::Ip),
            None if given.eq_ignore_ascii_case("none") => Ok(ClientKey::None),
            Some((h, name))
                if h.eq_ignore_ascii_case("header")
                    && !name.is_empty()
                    && name.bytes().all(token) =>
            {
                Ok(ClientKey::Header(name.to_string()))
            }
            _ => Err(err(
                key,
                format!(
                    "expected \"ip\", \"none\" or \"header:NAME\" (a header name), got {given:?}"
                ),
            )),
        }
    }
}

impl ToJson for ClientKey {
    fn to_json(&self) -> Value {
        Value::from(self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ClientKey, ConfigError> {
        KeyParser.parse("client_key", &Raw::Text(s.into()))
    }

    #[test]
    fn client_key_is_ip_none_or_a_header_name() {
        assert_eq!(parse("ip").unwrap(), ClientKey::Ip);
        assert_eq!(parse(" NONE ").unwrap(), ClientKey::None);
        let h = parse("header:X-Tenant-Id").unwrap();
        assert_eq!(h, ClientKey::Header("X-Tenant-Id".into()));
        assert_eq!(h.to_json(), Value::from("header:X-Tenant-Id"));
        for bad in ["", "header:", "header:a b", "port", "header"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
