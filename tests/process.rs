//! The `sluice` binary as users run it: exit codes for bad configs, `--check-config`, graceful
//! drain on SIGTERM under load, SIGHUP reload, and bounded memory while streaming 1 GiB.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use sluice_tools::upstream::pattern_byte;

/// Runs `sluice` with `args`; `--check-config` (which looks the target host up) runs offline.
fn sluice_cmd(args: &[&str]) -> std::process::Output {
    let bin = env!("CARGO_BIN_EXE_sluice");
    let mut cmd = if args.contains(&"--check-config") {
        offline(bin)
    } else {
        Command::new(bin)
    };
    cmd.args(args).output().unwrap()
}

fn temp_file(name: &str, text: &str) -> String {
    let dir = std::env::temp_dir().join(format!("sluice-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn bad_config_exits_2_naming_the_key() {
    let unknown = temp_file("unknown.json", r#"{"target_host":"x","max_queue_sise":5}"#);
    let wrong = temp_file("wrong.json", r#"{"target_host":"x","read_timeout":"slow"}"#);
    let broken = temp_file("broken.json", r#"{"target_host":"x","#);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--target-host", "x", "--max-queue-size", "-3"],
            "max_queue_size",
        ),
        (
            vec!["--target-host", "x", "--max-concurrent-requests", "0"],
            "max_concurrent_requests",
        ),
        (vec!["--target-host", "x", "--port", "99999"], "port"),
        (
            vec!["--target-host", "x", "--read-timeout", "-1"],
            "read_timeout",
        ),
        (
            vec!["--target-host", "x", "--log-level", "chatty"],
            "log_level",
        ),
        (vec![], "target_host"),
        (vec!["--config", &unknown], "max_queue_sise"),
        (vec!["--config", &wrong], "read_timeout"),
        (vec!["--config", &broken], "not valid JSON"),
        (vec!["--config", "/nonexistent/sluice.json"], "cannot read"),
        (vec!["--target-host", "x", "--no-such-flag"], "no-such-flag"),
    ];
    for (args, named) in cases {
        let out = sluice_cmd(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(named),
            "{args:?}: message does not name {named}: {err}"
        );
    }
}

#[test]
fn flags_override_the_file() {
    let file = temp_file(
        "over.json",
        r#"{"target_host":"from-file","max_queue_size":7,"read_timeout":99}"#,
    );
    let out = sluice_cmd(&["--config", &file, "--max-queue-size", "9", "--check-config"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |key: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        line("max_queue_size").contains('9') && line("max_queue_size").contains("(flag)"),
        "{text}"
    );
    assert!(
        line("read_timeout").contains("99") && line("read_timeout").contains("(file)"),
        "{text}"
    );
    assert!(line("connect_timeout").contains("(default)"), "{text}");
    assert!(line("target_host").contains("from-file"));
}

/// `--check-config` with `args`: the exit code, and each key's line of stdout.
fn checked(args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = vec!["--check-config"];
    all.extend_from_slice(args);
    let out = sluice_cmd(&all);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (
        out.status.code(),
        text,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The value `--check-config` printed for `key`, and its source.
fn shown(text: &str, key: &str) -> String {
    text.lines()
        .find(|l| l.trim_start().starts_with(&format!("{key} ")))
        .unwrap_or_else(|| panic!("{key} not shown: {text}"))
        .split_whitespace()
        .skip(1)
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn python_command_lines_work_flag_equals_value_any_case_and_both_boolean_forms() {
    // argparse's --flag=value, for every flag.
    let (code, out, err) = checked(&[
        "--target-host=127.0.0.1",
        "--target-port=9999",
        "--queue-timeout=2.5",
        "--log-level=INFO",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(shown(&out, "target_host"), "\"127.0.0.1\" (flag)");
    assert_eq!(shown(&out, "target_port"), "9999 (flag)");
    assert_eq!(shown(&out, "queue_timeout"), "2.5 (flag)");
    assert_eq!(shown(&out, "log_level"), "\"info\" (flag)");
    // Python's level names in the file, in any case.
    for (given, level) in [
        ("INFO", "info"),
        ("Debug", "debug"),
        ("WARNING", "warn"),
        ("error", "error"),
    ] {
        let file = temp_file(
            &format!("level-{given}.json"),
            &format!(r#"{{"target_host":"127.0.0.1","log_level":"{given}"}}"#),
        );
        let (code, out, err) = checked(&["--config", &file]);
        assert_eq!(code, Some(0), "{given}: {err}");
        assert_eq!(shown(&out, "log_level"), format!("\"{level}\" (file)"));
    }
    // One rule for every boolean: alone means true; `true`/`false` after it or after `=`.
    for flag in ["access_log", "abort_on_client_close", "request_via"] {
        let f = format!("--{}", flag.replace('_', "-"));
        for (args, want) in [
            (vec![f.clone()], "true"),
            (vec![f.clone(), "true".into()], "true"),
            (vec![f.clone(), "false".into()], "false"),
            (vec![f.clone(), "False".into()], "false"),
            (vec![format!("{f}=false")], "false"),
            (vec![format!("{f}=true")], "true"),
            (vec![f.clone(), "--max-retries".into(), "1".into()], "true"),
        ] {
            let mut all: Vec<&str> = vec!["--target-host", "127.0.0.1"];
            all.extend(args.iter().map(String::as_str));
            let (code, out, err) = checked(&all);
            assert_eq!(code, Some(0), "{args:?}: {err}");
            assert_eq!(shown(&out, flag), format!("{want} (flag)"), "{args:?}");
        }
    }
    // A wrong value is still refused, naming the key; an unknown flag too.
    let (code, _, err) = checked(&["--target-host=x", "--access-log=maybe"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("access_log"), "{err}");
    let (code, _, err) = checked(&["--target-host=x", "--log-level=loud"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("log_level"), "{err}");
    let (code, _, err) = checked(&["--target-host=x", "--no-such-flag=1"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("no-such-flag"), "{err}");
    // --help says both forms.
    let help = String::from_utf8_lossy(&sluice_cmd(&["--help"]).stdout).into_owned();
    assert!(help.contains("--flag=value works for every flag"), "{help}");
    assert!(help.contains("given alone means true"), "{help}");
}

#[test]
fn help_lists_every_setting() {
    let out = sluice_cmd(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for key in sluice::config::KEYS {
        assert!(
            text.contains(&format!("--{}", key.replace('_', "-"))),
            "--help lacks {key}"
        );
    }
}

#[test]
fn one_gib_streams_both_ways_in_bounded_memory() {
    let up = sluice_tools::upstream::TestUpstream::start_on("127.0.0.1:0", true).unwrap();
    let p = Proc::in_front_of(up.port(), &[]);
    const GIB: u64 = 1 << 30;

    let mut st = TcpStream::connect(p.addr).unwrap();
    st.write_all(
        format!("POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: {GIB}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let piece: Vec<u8> = (0..(1u64 << 20) + 26).map(pattern_byte).collect();
    let mut sent = 0u64;
    while sent < GIB {
        let n = (GIB - sent).min(1 << 20) as usize;
        let off = (sent % 26) as usize;
        st.write_all(&piece[off..off + n]).unwrap();
        sent += n as u64;
    }
    let mut c = Conn {
        r: std::io::BufReader::new(st),
    };
    let r = c.response(false).unwrap();
    assert_eq!(r.status, 200);
    let got = up.received().pop().unwrap();
    assert_eq!(got.body_len, GIB);
    assert!(got.body_complete);

    c.send(format!("GET /down?body_bytes={GIB} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        c.r.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    assert!(String::from_utf8_lossy(&head).contains(&format!("Content-Length: {GIB}")));
    let mut buf = vec![0u8; 1 << 20];
    let mut received = 0u64;
    let mut first_ok = true;
    while received < GIB {
        let n = c.r.read(&mut buf).unwrap();
        assert!(n > 0, "download ended early at {received}");
        if received == 0 {
            first_ok = buf[..n.min(26)]
                .iter()
                .enumerate()
                .all(|(i, b)| *b == pattern_byte(i as u64));
        }
        received += n as u64;
    }
    assert!(first_ok);
    let peak = p.peak_rss_kib();
    eprintln!("peak RSS while streaming 1 GiB up and 1 GiB down: {peak} KiB");
    assert!(peak > 0 && peak < 32 * 1024, "peak RSS {peak} KiB");
}

/// A second sluice on a port the first holds must fail loudly, not share the port with it.
#[test]
fn a_second_sluice_on_the_same_port_exits_1_with_address_in_use() {
    let up = upstream();
    let first = Proc::in_front_of(up.port(), &[]);
    let port = first.addr.port().to_string();
    let target = up.port().to_string();
    let out = sluice_cmd(&[
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--target-host",
        "127.0.0.1",
        "--target-port",
        &target,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Address already in use"), "{err}");
    assert_eq!(get(first.addr, "/still-the-first").status, 200);
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let up = upstream();
    let mut p = Proc::in_front_of(up.port(), &["--shutdown-grace", "10"]);
    let addr = p.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, rejected, failed) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (stop, ok, rejected, failed) =
                (stop.clone(), ok.clone(), rejected.clone(), failed.clone());
            std::thread::spawn(move || {
                while !stop.load(Relaxed) {
                    let Ok(st) = TcpStream::connect(addr) else {
                        rejected.fetch_add(1, Relaxed); // listener closed: never accepted
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    st.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
                    let mut c = Conn {
                        r: std::io::BufReader::new(st),
                    };
                    for i in 0.. {
                        c.send(b"GET /work?delay_ms=150 HTTP/1.1\r\nHost: t\r\n\r\n");
                        match c.response(false) {
                            Some(r) if r.status == 200 && r.complete => {
                                ok.fetch_add(1, Relaxed);
                                if r.header("connection") == Some("close") {
                                    break; // draining: the answer closes its connection
                                }
                            }
                            // A reused connection closed before any response byte: the request
                            // was never read (RFC 9112 §9.3.1), so the client may retry it.
                            None if i > 0 => {
                                rejected.fetch_add(1, Relaxed);
                                break;
                            }
                            _ => {
                                failed.fetch_add(1, Relaxed);
                                break;
                            }
                        };
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(600));
    let t = Instant::now();
    p.signal("TERM");
    assert!(eventually(Duration::from_secs(2), || get_status_or_zero(
        addr,
        "/proxy-health"
    ) != 200));
    let code = p.wait_exit(Duration::from_secs(12));
    let took = t.elapsed();
    stop.store(true, Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(code, Some(0), "{}", p.stderr.lock());
    assert!(took < Duration::from_secs(10), "exit took {took:?}");
    assert!(ok.load(Relaxed) > 10);
    assert_eq!(
        failed.load(Relaxed),
        0,
        "accepted requests failed during drain (ok={}, rejected={})",
        ok.load(Relaxed),
        rejected.load(Relaxed)
    );
}

fn get_status_or_zero(addr: std::net::SocketAddr, path: &str) -> u16 {
    let Ok(st) = TcpStream::connect(addr) else {
        return 0;
    };
    let mut c = Conn {
        r: std::io::BufReader::new(st),
    };
    c.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    c.response(false).map_or(0, |r| r.status)
}

#[test]
fn health_turns_503_draining_while_in_flight_requests_finish() {
    let up = upstream();
    let mut p = Proc::in_front_of(up.port(), &[]);
    let addr = p.addr;
    assert_eq!(get(addr, "/proxy-health").status, 200);
    // A drain closes idle kept-alive connections: this one has not asked anything yet.
    let mut health = Conn::open(addr);
    let slow = std::thread::spawn(move || get(addr, "/slow?delay_ms=1500"));
    std::thread::sleep(Duration::from_millis(300));
    p.signal("TERM");
    std::thread::sleep(Duration::from_millis(200));
    let h = health.get("/proxy-health");
    assert_eq!(
        (h.status, h.json()["status"].as_str()),
        (503, Some("draining"))
    );
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err(),
        "still accepting while draining"
    );
    assert_eq!(
        slow.join().unwrap().status,
        200,
        "the in-flight request finished"
    );
    assert_eq!(p.wait_exit(Duration::from_secs(5)), Some(0));
}

#[test]
fn second_sigterm_exits_at_once() {
    let up = upstream();
    let mut p = Proc::in_front_of(up.port(), &[]);
    let addr = p.addr;
    let _slow = std::thread::spawn(move || get_status_or_zero(addr, "/slow?delay_ms=20000"));
    std::thread::sleep(Duration::from_millis(300));
    p.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        p.wait_exit(Duration::from_millis(100)),
        None,
        "first SIGTERM waits for the in-flight request"
    );
    p.signal("TERM");
    assert!(
        p.wait_exit(Duration::from_secs(2)).is_some(),
        "second SIGTERM exits at once"
    );
}

#[test]
fn sighup_reloads_the_config_file_and_keeps_the_old_one_when_bad() {
    let up = upstream();
    let file = temp_file(
        "reload.json",
        &format!(
            r#"{{"host":"127.0.0.1","port":0,"target_host":"127.0.0.1","target_port":{},"max_retries":0}}"#,
            up.port()
        ),
    );
    let p = Proc::start(&["--config", &file]);
    assert!(
        eventually(Duration::from_secs(2), || p
            .stderr
            .lock()
            .contains("effective config: {")),
        "the start-up log carries the effective config"
    );
    assert_eq!(get(p.addr, "/?status=503").status, 503);
    assert_eq!(up.request_count(), 1);

    std::fs::write(&file, format!(r#"{{"host":"127.0.0.1","port":0,"target_host":"127.0.0.1","target_port":{},"max_retries":2,"retry_backoff_factor":0}}"#, up.port())).unwrap();
    p.signal("HUP");
    assert!(eventually(Duration::from_secs(3), || p
        .stderr
        .lock()
        .contains("config reloaded")));
    up.clear();
    assert_eq!(get(p.addr, "/?status=503").status, 503);
    assert_eq!(
        up.request_count(),
        3,
        "the reloaded max_retries applies to new requests"
    );
    assert_eq!(
        metrics(p.addr)["config"]["max_retries"],
        serde_json::Value::Null,
        "metrics() is the metrics object"
    );
    assert_eq!(
        get(p.addr, "/proxy-metrics").json()["config"]["max_retries"],
        2
    );

    std::fs::write(&file, r#"{"target_host":"127.0.0.1","max_retries":"lots"}"#).unwrap();
    p.signal("HUP");
    assert!(eventually(Duration::from_secs(3), || p
        .stderr
        .lock()
        .contains("not reloaded")));
    assert!(
        p.stderr.lock().contains("max_retries"),
        "the log names the bad key"
    );
    assert_eq!(
        get(p.addr, "/proxy-metrics").json()["config"]["max_retries"],
        2,
        "the old config is kept"
    );
    assert_eq!(get(p.addr, "/").status, 200, "and sluice still serves");
}

/// `--check-config` says when `target_host` does not resolve (every request would be a 502).
#[test]
fn check_config_warns_when_the_target_does_not_resolve() {
    let out = sluice_cmd(&["--check-config", "--target-host", "no-such-host.invalid"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("warning: target_host \"no-such-host.invalid\" does not resolve"),
        "{text}"
    );
    let out = sluice_cmd(&["--check-config", "--target-host", "127.0.0.1"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("warning"));
}

/// A closed stdout (`sluice --help | head -1`) ends the output quietly: no panic, no 101.
#[test]
fn a_closed_stdout_is_not_a_panic() {
    for args in [
        &["--help"][..],
        &["--check-config", "--target-host", "127.0.0.1"][..],
        &["--version"][..],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    }
}
