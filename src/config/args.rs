//! The command line as a Python user writes it, turned into what the flag parser (argh) takes:
//! `--flag=value` (argparse's form) becomes `--flag value` for every flag, and every boolean
//! setting takes both forms — alone (`--access-log`, meaning true) or with a value
//! (`--access-log true`, `--access-log=false`). README "Settings" states the rule.

use serde_json::Value;

use super::table::Config;

/// Switches that are not settings (`--check-config`, `--version`): they take no value, but
/// `--check-config=true` / `=false` is accepted too.
const SWITCHES: &[&str] = &["--check-config", "--version"];

/// The words after the program name, rewritten for argh (see the module doc). Words after a
/// lone `--` are left alone.
pub fn normalize(words: &[&str]) -> Vec<String> {
    let bools = bool_flags();
    let mut out = Vec::with_capacity(words.len() + 2);
    let mut i = 0;
    while i < words.len() {
        let word = words[i];
        i += 1;
        if word == "--" {
            out.extend(words[i - 1..].iter().map(|w| w.to_string()));
            break;
        }
        let (flag, inline) = match word.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") && flag.len() > 2 => (flag, Some(value)),
            _ => (word, None),
        };
        if SWITCHES.contains(&flag) {
            let value = inline.or_else(|| {
                let next = words.get(i).copied().filter(|w| is_bool_word(w));
                i += usize::from(next.is_some());
                next
            });
            // `--check-config false` means no check; anything else is left to argh.
            match value.map(truthy) {
                None | Some(Some(true)) => out.push(flag.to_string()),
                Some(Some(false)) => {}
                Some(None) => out.extend([flag.to_string(), value.unwrap_or("").to_string()]),
            }
            continue;
        }
        out.push(flag.to_string());
        match inline {
            Some(value) => out.push(value.to_string()),
            None if bools.iter().any(|b| b == flag) => {
                // A boolean alone means true; a value is taken only if it is a boolean word.
                match words.get(i).copied().filter(|w| is_bool_word(w)) {
                    Some(value) => {
                        out.push(value.to_string());
                        i += 1;
                    }
                    None => out.push("true".into()),
                }
            }
            None => {}
        }
    }
    out
}

/// `--key-name` of every boolean setting (those whose default is a JSON boolean).
fn bool_flags() -> Vec<String> {
    let Value::Object(map) = Config::default().to_json() else {
        return Vec::new();
    };
    map.iter()
        .filter(|(_, v)| v.is_boolean())
        .map(|(k, _)| format!("--{}", k.replace('_', "-")))
        .collect()
}

/// The words a boolean value may be (`value.rs` `Bool`), in any case.
fn truthy(word: &str) -> Option<bool> {
    match word.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn is_bool_word(word: &str) -> bool {
    truthy(word).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(words: &[&str]) -> Vec<String> {
        normalize(words)
    }

    #[test]
    fn flag_equals_value_is_split_for_every_flag() {
        assert_eq!(
            n(&["--target-host=foo", "--port=0", "--config=a=b.json"]),
            [
                "--target-host",
                "foo",
                "--port",
                "0",
                "--config",
                "a=b.json"
            ]
        );
        assert_eq!(n(&["--target-host", "x=y"]), ["--target-host", "x=y"]);
        assert_eq!(n(&["--", "--a=b"]), ["--", "--a=b"]);
    }

    #[test]
    fn every_boolean_takes_both_forms() {
        for flag in ["--access-log", "--abort-on-client-close", "--request-via"] {
            assert_eq!(n(&[flag]), [flag, "true"]);
            assert_eq!(n(&[flag, "--port", "1"]), [flag, "true", "--port", "1"]);
            assert_eq!(n(&[flag, "false"]), [flag, "false"]);
            assert_eq!(n(&[flag, "True"]), [flag, "True"]);
            assert_eq!(n(&[&format!("{flag}=false")]), [flag, "false"]);
            assert_eq!(
                n(&[&format!("{flag}=maybe")]),
                [flag, "maybe"],
                "argh/Bool refuse it"
            );
        }
    }

    #[test]
    fn switches_accept_a_boolean_value() {
        assert_eq!(n(&["--check-config"]), ["--check-config"]);
        assert_eq!(n(&["--check-config=true"]), ["--check-config"]);
        assert!(n(&["--check-config", "false"]).is_empty());
        assert_eq!(n(&["--version=no", "--port", "1"]), ["--port", "1"]);
    }
}
