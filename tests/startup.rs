//! Start-up hygiene of the `sluice` binary (README "Static binary and deployment"): the soft
//! open-file limit raised to the hard one, a warning when the settings cannot fit in it, and a
//! `target_host` that does not resolve warned about at start and shown in `/proxy-health`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// The soft and hard "Max open files" of process `pid`.
fn nofile(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let n: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (n[0], n[1])
}

/// sluice under a soft open-file limit of 256 and a hard one of `hard`.
fn under_limit(hard: u64, upstream_port: u16, extra: &[&str]) -> Proc {
    let script = format!(
        "ulimit -Sn 256 && ulimit -Hn {hard} && exec \"$0\" \"$@\" --host 127.0.0.1 --port 0 --target-host 127.0.0.1 --target-port {upstream_port}"
    );
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(script).arg(sluice_bin()).args(extra);
    Proc::start_with(&mut cmd)
}

#[test]
fn soft_open_file_limit_is_raised_to_the_hard_one() {
    let up = upstream();
    let p = under_limit(4096, up.port(), &["--max-connections", "1000"]);
    assert_eq!(nofile(p.pid()), (4096, 4096), "{}", p.stderr.lock());
    assert!(get(p.addr, "/x?body_bytes=3").status == 200);
    eventually(Duration::from_secs(5), || {
        p.stderr
            .lock()
            .contains("raised from 256 to the hard limit 4096")
    });
    let log = p.stderr.lock().clone();
    assert!(
        log.contains("raised from 256 to the hard limit 4096"),
        "{log}"
    );
    assert!(!log.contains("open-file limit 4096 <"), "{log}");
}

#[test]
fn a_hard_limit_too_small_for_the_settings_is_a_warning() {
    let up = upstream();
    // 4096 connections + 50 workers + 50 pooled + 32 do not fit in 1024.
    let p = under_limit(1024, up.port(), &[]);
    assert_eq!(nofile(p.pid()), (1024, 1024));
    // The log is written by a thread of its own: the line may follow "listening".
    let warned = |log: &str| log.contains("open-file limit 1024 < 4228");
    eventually(Duration::from_secs(5), || warned(&p.stderr.lock()));
    let log = p.stderr.lock().clone();
    let warn = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("open-file limit 1024 < 4228"))
        .unwrap_or_else(|| panic!("no warning: {log}"));
    assert!(warn.contains("max_connections 4096"), "{warn}");
}

/// `unshare -n` with loopback up, when this machine allows it: the look-up of a `.invalid` name
/// then cannot leave the machine. Returns the command and whether it is namespaced.
fn isolated(bin: &std::path::Path) -> (Command, bool) {
    let works = Command::new("unshare")
        .args(["-n", "sh", "-c", "ip link set lo up"])
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        let mut c = Command::new("unshare");
        c.args(["-n", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
            .arg(bin);
        (c, true)
    } else {
        (Command::new(bin), false)
    }
}

/// `/proxy-health` of `p`, from inside its network namespace if it has its own.
fn health(p: &Proc, namespaced: bool) -> serde_json::Value {
    if !namespaced {
        return get(p.addr, "/proxy-health").json();
    }
    let out = Command::new("nsenter")
        .args(["-t", &p.pid().to_string(), "-n", "curl", "-s", "-m", "5"])
        .arg(format!("http://{}/proxy-health", p.addr))
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn an_unresolvable_target_is_a_warning_at_start_and_in_health() {
    let (mut cmd, namespaced) = isolated(&sluice_bin());
    cmd.args(["--host", "127.0.0.1", "--port", "0"]).args([
        "--target-host",
        "sluice-test.invalid",
        "--target-port",
        "80",
    ]);
    let p = Proc::start_with(&mut cmd);
    let mut last = serde_json::Value::Null;
    let seen = eventually(Duration::from_secs(15), || {
        last = health(&p, namespaced);
        last["target_resolves"] == false
    });
    assert!(seen, "health: {last}");
    assert_eq!(last["status"], "healthy", "{last}");
    assert!(last["target_error"].as_str().is_some_and(|e| !e.is_empty()));
    eventually(Duration::from_secs(5), || {
        p.stderr
            .lock()
            .contains("\"sluice-test.invalid\" does not resolve")
    });
    let log = p.stderr.lock().clone();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("\"sluice-test.invalid\" does not resolve")),
        "{log}"
    );

    // A target that resolves says so, with no warning.
    let up = upstream();
    let ok = Proc::in_front_of(up.port(), &[]);
    let mut last = serde_json::Value::Null;
    let seen = eventually(Duration::from_secs(15), || {
        last = get(ok.addr, "/proxy-health").json();
        last["target_resolves"] == true
    });
    assert!(seen, "health: {last}");
    assert!(last.get("target_error").is_none(), "{last}");
    assert!(!ok.stderr.lock().contains("does not resolve"));
}
