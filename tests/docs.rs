//! The documentation is executable: every command of the README's quick reference runs, and every
//! shipped config file passes `--check-config`; each unwise setting prints its warning; the GUIDE
//! quotes the shipped alert rules as they are; nothing in the repository signals processes by
//! name.

use std::process::Command;

fn check_config(args: &[&str]) -> (Option<i32>, String, String) {
    // The shipped files name hosts of the users' networks; the target is 127.0.0.1 here, so
    // that the look-up sends nothing anywhere and says nothing.
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--check-config", "--target-host", "127.0.0.1"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_shipped_config_passes_check_config() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut files = vec![format!("{root}/proxy_config.json")];
    for e in std::fs::read_dir(format!("{root}/examples")).unwrap() {
        files.push(e.unwrap().path().to_string_lossy().into_owned());
    }
    assert!(files.len() >= 4, "proxy_config.json and three scenarios");
    for f in files {
        let (code, out, err) = check_config(&["--config", &f]);
        assert_eq!(code, Some(0), "{f}: {err}");
        assert!(out.starts_with("config ok"), "{f}");
        assert!(!out.contains("warning:"), "{f} ships with a warning: {out}");
    }
}

#[test]
fn shipped_proxy_config_names_every_key() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proxy_config.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for key in sluice::config::KEYS {
        assert!(v.get(key).is_some(), "proxy_config.json lacks {key}");
    }
}

#[test]
fn each_unwise_setting_prints_its_warning_and_still_exits_0() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--pool-maxsize", "10"],
            "pool_maxsize (10) < max_concurrent_requests",
        ),
        (
            &["--max-queue-size", "10"],
            "max_queue_size (10) < max_concurrent_requests",
        ),
        (
            &["--read-timeout", "5"],
            "read_timeout (5s) is shorter than connect_timeout",
        ),
        (
            &["--queue-timeout", "120"],
            "queue_timeout (120s) is longer than most clients wait",
        ),
        (
            &["--circuit-breaker-timeout", "0"],
            "circuit_breaker_timeout is 0",
        ),
        (
            &[
                "--health-check-path",
                "/health",
                "--health-check-timeout",
                "6",
            ],
            "health_check_timeout (6s) > health_check_interval (5s)",
        ),
    ];
    for (args, warning) in cases {
        let mut all = vec![];
        all.extend_from_slice(args);
        let (code, out, _) = check_config(&all);
        assert_eq!(code, Some(0), "{args:?}");
        assert!(
            out.contains(&format!("warning: {warning}")),
            "{args:?}: {out}"
        );
        assert_eq!(out.matches("warning:").count(), 1, "{args:?}: {out}");
    }
}

#[test]
fn check_config_errors_exit_2_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("sluice-docs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (text, key) in [
        (
            r#"{"target_host":"x","max_queue_sise":1}"#,
            "max_queue_sise",
        ),
        (r#"{"target_host":"x","max_retries":"two"}"#, "max_retries"),
        (
            r#"{"target_host":"x","circuit_breaker_threshold":0}"#,
            "circuit_breaker_threshold",
        ),
    ] {
        let f = dir.join(format!("{key}.json"));
        std::fs::write(&f, text).unwrap();
        let (code, _, err) = check_config(&["--config", f.to_str().unwrap()]);
        assert_eq!(code, Some(2), "{text}");
        assert!(err.contains(&format!("'{key}'")), "{text}: {err}");
    }
}

#[test]
fn readme_quick_reference_commands_all_run() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/quickref.sh");
    // The block checks proxy_config.json, whose target is a host of the users' network: in a
    // network namespace with only loopback (where root can make one), its look-up leaves nothing.
    let isolated = Command::new("unshare")
        .args(["-n", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    let out = if isolated {
        Command::new("unshare")
            .args([
                "-n",
                "sh",
                "-c",
                "ip link set lo up && exec bash \"$0\"",
                script,
            ])
            .output()
            .unwrap()
    } else {
        Command::new("bash").arg(script).output().unwrap()
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("quickref: all commands passed"));
    assert!(
        text.lines().filter(|l| l.starts_with("quickref$ ")).count() >= 9,
        "{text}"
    );
}

/// Every file of the repository (but build output and version control), as (path, text); files
/// that are not text are skipped.
fn repo_text_files() -> Vec<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy();
            if p.is_dir() {
                if name != "target" && name != ".git" {
                    dirs.push(p);
                }
            } else if let Ok(text) = std::fs::read_to_string(&p) {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.push((rel, text));
            }
        }
    }
    out
}

#[test]
fn nothing_in_the_repository_signals_processes_by_name() {
    // Commands that signal every process of a name, a production sluice included. The one
    // allowed mention is a line saying never to use them, as this one:
    let by_name = ["pkill", "killall"]; // never used here
    let files = repo_text_files();
    assert!(
        files.iter().any(|(p, _)| p == "README.md") && files.iter().any(|(p, _)| p == "test.sh"),
        "the walk sees the repository"
    );
    let mut found = Vec::new();
    for (path, text) in &files {
        for (n, line) in text.lines().enumerate() {
            let words: Vec<&str> = line
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .collect();
            let named = by_name.iter().any(|w| words.contains(w));
            if named && !line.to_lowercase().contains("never") {
                found.push(format!("{path}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "signal the process you started, by its id ($!, kill \"$pid\"), never by name:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_guide_quotes_the_shipped_alert_rules_whole_and_copyable() {
    let root = env!("CARGO_MANIFEST_DIR");
    let guide = std::fs::read_to_string(format!("{root}/docs/GUIDE.md")).unwrap();
    let rules = std::fs::read_to_string(format!("{root}/deploy/prometheus-rules.yaml")).unwrap();
    let alerts = &guide[guide.find("## 5. Alerts").unwrap()..];
    assert!(
        alerts.contains(&format!("```yaml\n{rules}```\n")),
        "docs/GUIDE.md \"Alerts\" must quote deploy/prometheus-rules.yaml as it is"
    );
    // A query inside a markdown table needs `\|`, which is invalid PromQL once copied.
    for (n, line) in guide.lines().enumerate() {
        assert!(!line.contains("\\|"), "docs/GUIDE.md:{}: {line}", n + 1);
    }
}
