//! What the operating system and deployment do to sluice: a tiny open-file limit under a
//! connection flood, thousands of idle keep-alive connections, the static binary in an empty
//! root, and the deployment files.

mod common;

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sluice")
}

#[test]
fn acceptor_survives_emfile_under_a_connection_flood() {
    let up = upstream();
    let script = format!(
        "ulimit -n 64 && exec {} --host 127.0.0.1 --port 0 --target-host 127.0.0.1 --target-port {} --max-concurrent-requests 4",
        bin(),
        up.port()
    );
    let mut p = Proc::start_with(Command::new("bash").args(["-c", &script]));
    let mut flood = Vec::new();
    for _ in 0..300 {
        if let Ok(s) = TcpStream::connect_timeout(&p.addr, Duration::from_millis(300)) {
            flood.push(s);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        p.stderr.lock().contains("accept failed"),
        "the flood did not reach the fd limit: {}",
        p.stderr.lock()
    );
    drop(flood);
    let t = Instant::now();
    let ok = eventually(Duration::from_secs(15), || {
        TcpStream::connect_timeout(&p.addr, Duration::from_millis(500)).is_ok_and(|s| {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut c = Conn {
                r: std::io::BufReader::new(s),
            };
            c.send(b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n");
            c.response(false).is_some_and(|r| r.status == 200)
        })
    });
    assert!(ok, "sluice did not serve again after the flood");
    for _ in 0..20 {
        assert_eq!(get(p.addr, "/again").status, 200);
    }
    eprintln!("served again {:?} after the flood ended", t.elapsed());
    assert!(p.child_alive());
}

#[test]
fn ten_thousand_idle_keep_alive_connections_cost_little_and_close_on_time() {
    const N: usize = 10_000;
    let up = upstream();
    let p = Proc::in_front_of(
        up.port(),
        &[
            // Long enough for all 10,000 answers to be read (~4 s with debug builds) before
            // the first connections go idle past it.
            "--client-idle-timeout",
            "7",
            "--max-connections",
            "11000",
            "--max-queue-size",
            "10000",
        ],
    );
    let base = p.rss_kib();
    let mut conns = Vec::with_capacity(N);
    for i in 0..N {
        let s = TcpStream::connect(p.addr).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        conns.push(s);
    }
    // Every connection carries one request first, so all are keep-alive connections gone idle.
    for c in conns.iter_mut() {
        std::io::Write::write_all(c, b"GET /ka HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    }
    let mut conns: Vec<Conn> = conns
        .into_iter()
        .map(|s| {
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut c = Conn {
                r: std::io::BufReader::new(s),
            };
            let r = c
                .response(false)
                .unwrap_or_else(|| panic!("no response; sluice log: {}", p.stderr.lock()));
            assert_eq!(r.status, 200);
            c
        })
        .collect();
    assert_eq!(metrics(p.addr)["client_connections"], N + 1);
    let rss = p.rss_kib();
    let per_conn = (rss.saturating_sub(base)) as f64 / N as f64;
    eprintln!(
        "{N} idle keep-alive connections: RSS {} KiB -> {} KiB ({per_conn:.1} KiB each)",
        base, rss
    );
    assert!(rss < 150 * 1024, "RSS {rss} KiB (issue 7: at most 150 MiB)");
    assert_eq!(
        get(p.addr, "/busy-but-fine").status,
        200,
        "still serving with {N} idle connections"
    );
    let t = Instant::now();
    assert!(eventually(Duration::from_secs(18), || metrics(p.addr)
        ["client_connections"]
        == 1));
    let took = t.elapsed();
    assert!(
        took > Duration::from_secs(1) && took < Duration::from_secs(15),
        "idle close after {took:?}"
    );
    assert!(conns[0].closed_within(Duration::from_secs(1)));
    assert!(conns[N - 1].closed_within(Duration::from_secs(1)));
}

/// `./test.sh` builds the static binary (`./start.sh --build-static`); plain `cargo test` may not.
fn static_binary() -> Option<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/x86_64-unknown-linux-gnu/dist/sluice"
    );
    if std::path::Path::new(path).exists() {
        return Some(path.to_string());
    }
    assert!(
        std::env::var_os("SLUICE_REQUIRE_STATIC").is_none(),
        "static binary missing: ./start.sh --build-static"
    );
    eprintln!("skipped: no static binary (./start.sh --build-static builds it; ./test.sh does)");
    None
}

#[test]
fn static_binary_is_static_and_proxies_from_an_empty_root() {
    let Some(path) = static_binary() else { return };
    let ldd = Command::new("ldd").arg(&path).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&ldd.stdout),
        String::from_utf8_lossy(&ldd.stderr)
    );
    assert!(
        text.contains("statically linked") || text.contains("not a dynamic executable"),
        "ldd: {text}"
    );
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    if !is_root {
        eprintln!("skipped the chroot part: needs root");
        return;
    }
    let root = std::env::temp_dir().join(format!("sluice-chroot-{}", std::process::id()));
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::copy(&path, root.join("sluice")).unwrap();
    std::fs::write(
        root.join("etc/hosts"),
        "127.0.0.1 localhost upstream.test\n",
    )
    .unwrap();
    let up = upstream();
    let port = up.port().to_string();
    let p = Proc::start_with(Command::new("chroot").arg(&root).args([
        "/sluice",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--target-host",
        "upstream.test",
        "--target-port",
        &port,
    ]));
    let r = get(p.addr, "/from-chroot?echo=1");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        up.received()[0].target,
        "/from-chroot?echo=1",
        "the name was resolved from /etc/hosts"
    );
    drop(p);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn deployment_files_are_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    let unit = std::fs::read_to_string(format!("{root}/deploy/sluice.service")).unwrap();
    for needed in [
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "LimitNOFILE=",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "TimeoutStopSec=",
        "RestartPreventExitStatus=2",
    ] {
        assert!(unit.contains(needed), "unit lacks {needed}");
    }
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let dir = std::env::temp_dir().join(format!("sluice-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("sluice.service");
        std::fs::write(&f, unit.replace("/usr/local/bin/sluice", bin())).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&f)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !err.contains("sluice.service:"),
            "systemd-analyze verify: {err}"
        );
    }
    let docker = std::fs::read_to_string(format!("{root}/deploy/Dockerfile")).unwrap();
    assert!(docker.contains("FROM scratch"));
    assert!(
        docker.contains("COPY target/x86_64-unknown-linux-gnu/dist/sluice"),
        "copies what start.sh --build-static builds"
    );
    let check = r#"
import json, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
kinds = {d["kind"]: d for d in docs}
dep = kinds["Deployment"]["spec"]["template"]
c = dep["spec"]["containers"][0]
cfg = json.loads(kinds["ConfigMap"]["data"]["proxy_config.json"])
assert c["livenessProbe"]["httpGet"]["path"] == "/proxy-health"
assert c["readinessProbe"]["httpGet"]["path"] == "/proxy-health"
assert "preStop" in c["lifecycle"]
pre = c["lifecycle"]["preStop"]["sleep"]["seconds"]
assert dep["spec"]["terminationGracePeriodSeconds"] > cfg["shutdown_grace"] + pre
ann = dep["metadata"]["annotations"]
assert ann["prometheus.io/path"] == "/proxy-metrics/prometheus"
print(json.dumps(cfg))
"#;
    let out = Command::new("python3")
        .args(["-c", check, &format!("{root}/deploy/kubernetes.yaml")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubernetes.yaml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let dir = std::env::temp_dir().join(format!("sluice-k8s-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("c.json"), cfg).unwrap();
    let out = Command::new(bin())
        .args([
            "--check-config",
            "--target-host",
            "127.0.0.1",
            "--config",
            dir.join("c.json").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "the ConfigMap's config is valid"
    );
}
