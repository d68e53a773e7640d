//! The shipped alerts (deploy/prometheus-rules.yaml, docs/GUIDE.md "Alerts") against a real
//! sluice: every metric they, their unit tests and the docs name is one sluice emits, and the
//! "slow answers" alert's series describes proxied requests only, so an overload of instant
//! refusals cannot silence it. (promtool checks and unit-tests the rules: tests/rules.sh.)

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use common::*;

/// The Prometheus text's samples as (name with labels, value).
fn scrape(addr: SocketAddr) -> Vec<(String, f64)> {
    let r = get(addr, "/proxy-metrics/prometheus");
    assert_eq!(r.status, 200);
    r.text()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name.to_string(), value.parse().unwrap())
        })
        .collect()
}

fn value(samples: &[(String, f64)], name: &str) -> f64 {
    samples
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no sample {name}"))
        .1
}

/// Every `sluice_…` name in `text`.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("sluice_") {
        let before = text[..i].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let len = text[i..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(text.len() - i);
        out.insert(text[i..i + len].to_string());
    }
    out
}

#[test]
fn every_metric_the_alert_rules_and_the_docs_name_is_one_sluice_emits() {
    let up = upstream();
    let s = sluice(up.port(), |_| {});
    assert_eq!(get(s.addr(), "/x").status, 200);
    let samples = scrape(s.addr());
    // Sample names, and family names (`# TYPE` names a histogram's family).
    let mut emitted: BTreeSet<String> = samples
        .iter()
        .map(|(n, _)| n.split('{').next().unwrap().to_string())
        .collect();
    let text = get(s.addr(), "/proxy-metrics/prometheus").text();
    for l in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        emitted.insert(l.split(' ').nth(2).unwrap().to_string());
    }
    let root = env!("CARGO_MANIFEST_DIR");
    // Names prometheus-adapter serves from sluice's series (`as: "sluice_busy"`) are known too.
    let adapter =
        std::fs::read_to_string(format!("{root}/deploy/prometheus-adapter.yaml")).unwrap();
    for (i, _) in adapter.match_indices("as: \"") {
        let derived = adapter[i + 5..].split('"').next().unwrap();
        emitted.insert(derived.to_string());
    }
    let mut checked = 0;
    for file in [
        "deploy/prometheus-rules.yaml",
        "deploy/prometheus-rules.test.yaml",
        "deploy/kubernetes.yaml",
        "deploy/prometheus-adapter.yaml",
        "deploy/hpa-cpu.yaml",
        "docs/GUIDE.md",
        "README.md",
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let names = names_in(&text);
        let unknown: Vec<_> = names.iter().filter(|n| !emitted.contains(*n)).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics sluice does not emit: {unknown:?}"
        );
        checked += names.len();
    }
    let rules = std::fs::read_to_string(format!("{root}/deploy/prometheus-rules.yaml")).unwrap();
    assert!(names_in(&rules).len() >= 6, "the rules name the metrics");
    assert!(checked > 20);
    // And every label value they select on (`outcome="…"`, `outcome=~"a|b"`, `to="…"`).
    let mut values = 0;
    for label in ["outcome", "to"] {
        for op in ["=\"", "=~\""] {
            let key = format!("{label}{op}");
            for (i, _) in rules.match_indices(&key) {
                let list = rules[i + key.len()..].split('"').next().unwrap();
                for v in list.split('|') {
                    assert!(
                        text.contains(&format!("{{{label}=\"{v}\"}}")),
                        "the rules select {label}=\"{v}\", which sluice does not emit"
                    );
                    values += 1;
                }
            }
        }
    }
    assert!(values >= 15, "{values}");
}

/// The overload: one worker held by a slow request while 50 more are refused at once.
/// The histogram of every request averages next to nothing; the proxied one, which the alert
/// watches, is the slow request's time — as `/proxy-metrics` `avg_response_time` says.
#[test]
fn the_slow_answers_series_leaves_out_instant_refusals() {
    let up = upstream();
    let s = overloaded(&up);
    let addr = s.addr();
    let p = scrape(addr);
    let avg = |family: &str| {
        let count = value(&p, &format!("{family}_count"));
        (value(&p, &format!("{family}_sum")) / count, count)
    };
    let (all, all_count) = avg("sluice_request_duration_seconds");
    let (proxied, proxied_count) = avg("sluice_proxied_request_duration_seconds");
    assert_eq!((all_count, proxied_count), (51.0, 1.0));
    assert!(all < 0.02, "every request's average: {all}");
    assert!((0.4..5.0).contains(&proxied), "proxied average: {proxied}");
    assert_eq!(
        value(
            &p,
            "sluice_proxied_request_duration_seconds_bucket{le=\"0.5\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &p,
            "sluice_proxied_request_duration_seconds_bucket{le=\"0.25\"}"
        ),
        0.0
    );
    let json = metrics(addr)["avg_response_time"].as_f64().unwrap();
    assert!(
        (json - proxied).abs() <= json * 0.02,
        "JSON {json} vs Prometheus {proxied}"
    );
}
