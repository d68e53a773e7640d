//! The tools users run: `sluice-load` (flags, report, exit codes) and the demo end to end.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn load(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sluice-load"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn load_tester_reports_exact_counts_as_json() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    let url = format!("http://{}/x?body_bytes=10", s.addr());
    let out = load(&[
        "--url",
        &url,
        "--concurrent",
        "4",
        "--total-requests",
        "200",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["requests"], 200);
    assert_eq!(v["successes"], 200);
    assert_eq!(v["by_status"]["200"], 200);
    assert!(v["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    assert_eq!(
        up.request_count(),
        200,
        "exactly --total-requests reached the upstream"
    );
    assert_eq!(
        up.connection_count(),
        4,
        "keep-alive: one upstream connection per busy worker at most"
    );
}

#[test]
fn load_tester_sends_method_headers_and_body() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    let dir = std::env::temp_dir().join(format!("sluice-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let body = dir.join("body.json");
    std::fs::write(&body, br#"{"k":1}"#).unwrap();
    let url = format!("http://{}/p", s.addr());
    let out = load(&[
        "--url",
        &url,
        "--concurrent",
        "1",
        "--total-requests",
        "3",
        "--method",
        "post",
        "--header",
        "X-Test: yes",
        "--body-file",
        body.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("requests      3") && text.contains("200: 3"),
        "{text}"
    );
    assert!(
        text.contains(" ms | "),
        "a latency histogram is drawn: {text}"
    );
    let got = up.received();
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|r| r.method == "POST"
        && r.body_prefix == br#"{"k":1}"#
        && r.header("x-test").as_deref() == Some("yes")));
}

#[test]
fn load_tester_reports_sluice_reasons_and_duration_mode() {
    let dead = dead_port();
    let s = sluice(dead.port(), |c| c.circuit_breaker_threshold = 1);
    let url = format!("http://{}/", s.addr());
    let t = Instant::now();
    let out = load(&[
        "--url",
        &url,
        "--concurrent",
        "2",
        "--duration",
        "0.5",
        "--json",
    ]);
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(out.status.code(), Some(1), "every request failed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["sluice_reasons"]["circuit_open"].as_u64().unwrap() > 0,
        "{v}"
    );
    assert_eq!(v["successes"], 0);
}

#[test]
fn load_tester_counts_connection_errors_by_kind() {
    let dead = dead_port();
    let url = format!("http://127.0.0.1:{}/", dead.port());
    let out = load(&[
        "--url",
        &url,
        "--concurrent",
        "1",
        "--total-requests",
        "3",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["by_error"]["refused"], 3);
}

#[test]
fn load_tester_rejects_bad_input_with_exit_2() {
    for args in [
        vec!["--url", "not a url"],
        vec!["--url", "https://127.0.0.1/"],
        vec!["--url", "http://127.0.0.1:1/", "--concurrent", "0"],
        vec![
            "--url",
            "http://127.0.0.1:1/",
            "--body-file",
            "/nonexistent/body",
        ],
        vec!["--url", "http://127.0.0.1:1/", "--header", "no colon"],
        vec!["--url", "http://127.0.0.1:1/", "--duration", "-1"],
    ] {
        let out = load(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty());
    }
}

#[test]
fn demo_shows_queueing_retries_and_the_breaker() {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-demo"))
        .arg("--fast")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(t.elapsed() < Duration::from_secs(60));
    let value = |key: &str, after: &str| -> String {
        let tail = &text[text
            .find(after)
            .unwrap_or_else(|| panic!("no {after:?} in {text}"))..];
        tail.lines()
            .find(|l| l.trim_start().starts_with(key))
            .unwrap_or_else(|| panic!("no {key} after {after}"))
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert_eq!(value("success_rate", "Step 1"), "100.0");
    assert!(value("queue_rejected", "Step 2").parse::<u64>().unwrap() > 0);
    assert!(value("retry_attempts", "Step 3").parse::<u64>().unwrap() > 0);
    assert_eq!(value("circuit_state", "Step 3"), "\"open\"");
    assert!(text.contains("503 circuit_open in"));
    assert_eq!(value("circuit_state", "Step 4"), "\"closed\"");
    assert!(text.contains("probe: 200"));
    assert!(text.contains("demo finished"));
}

/// A 404 is the server's answer, not a failure (as `/proxy-metrics` counts it); a 5xx or a
/// transport error is; `--expect-status` says what counts instead.
#[test]
fn load_tester_fails_on_5xx_not_4xx_unless_told_otherwise() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    let run = |path: &str, extra: &[&str]| {
        let url = format!("http://{}{path}", s.addr());
        let mut args = vec!["--url", &url, "--total-requests", "20", "--json"];
        args.extend_from_slice(extra);
        let out = load(&args);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        (out.status.code(), v["failures"].as_u64())
    };
    assert_eq!(run("/x?status=404", &[]), (Some(0), Some(0)));
    assert_eq!(run("/x?status=500", &[]), (Some(1), Some(20)));
    assert_eq!(
        run("/x?status=404", &["--expect-status", "2xx"]),
        (Some(1), Some(20))
    );
    assert_eq!(
        run("/x?status=204", &["--expect-status", "200,204"]),
        (Some(0), Some(0))
    );
    let bad = load(&["--url", "http://127.0.0.1:1/", "--expect-status", "abc"]);
    assert_eq!(bad.status.code(), Some(2));
    let bad = load(&["--url", "http://127.0.0.1:1/", "--no-such-flag"]);
    assert_eq!(bad.status.code(), Some(2), "a bad flag is bad input");
}

/// Every address a name resolves to is tried, as curl does: a first address that refuses
/// (`::1` while the server listens on IPv4 only) does not fail the run.
#[test]
fn load_client_tries_the_next_address() {
    let up = upstream();
    let dead = dead_port();
    let refused: std::net::SocketAddr = format!("127.0.0.1:{}", dead.port()).parse().unwrap();
    let mut c =
        sluice_tools::client::Client::new(vec![refused, up.addr()], Duration::from_secs(5), true);
    let raw = b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(c.call(raw, false).unwrap().status, 200);
    let url =
        sluice_tools::client::Url::parse(&format!("http://localhost:{}/", up.port())).unwrap();
    let addrs = url.resolve().unwrap();
    assert!(addrs.iter().any(|a| a.is_ipv4()), "{addrs:?}");
    assert!(!addrs.first().unwrap().is_ipv4() || addrs.iter().all(|a| a.is_ipv4()));
    let out = load(&[
        "--url",
        &format!("http://localhost:{}/", up.port()),
        "--total-requests",
        "3",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `sluice-upstream --help` says what each query parameter does, so a user can drive it.
#[test]
fn test_upstream_help_lists_its_query_parameters() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-upstream"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for p in [
        "status=N",
        "delay_ms=N",
        "body_bytes=N",
        "chunked=1",
        "echo=1",
        "hang=1",
        "reset=1",
    ] {
        assert!(text.contains(p), "--help lacks {p}: {text}");
    }
}
