#!/usr/bin/env bash
# The shipped alert rules (deploy/prometheus-rules.yaml, quoted by docs/GUIDE.md "Alerts") under
# Prometheus's own tool: `promtool check rules` (syntax, PromQL, labels) and `promtool test rules
# deploy/prometheus-rules.test.yaml` (for each alert, series that fire it and series that must
# not). promtool is the one from Debian's `prometheus` package: when it is not on the PATH, the
# package is downloaded (`apt-get download`, after one `apt-get update` as root) and only
# promtool is unpacked into target/promtool/ — nothing is installed, no server is started.
# That every metric the rules name is one sluice emits is checked on a live scrape
# (tests/alerts.rs). Prints `rules: N passed, M failed`.
set -euo pipefail
cd "$(dirname "$0")/.."
passed=0
failed=0
ok() { echo "rules: ok - $*"; passed=$((passed + 1)); }
bad() { echo "rules: FAILED - $*"; failed=$((failed + 1)); }

promtool=$(command -v promtool || true)
if [[ -z $promtool ]]; then
  promtool=$PWD/target/promtool/promtool
  if [[ ! -x $promtool ]]; then
    command -v apt-get >/dev/null || { echo "rules: promtool missing and no apt-get: skipped"; exit 0; }
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    chmod 755 "$work"
    fetch() { (cd "$work" && apt-get download prometheus >/dev/null 2>&1); }
    if ! fetch; then
      [[ $(id -u) == 0 ]] || { echo "rules: promtool missing and not root: skipped"; exit 0; }
      apt-get update -qq
      fetch
    fi
    dpkg-deb -x "$work"/prometheus_*.deb "$work/x"
    mkdir -p "$(dirname "$promtool")"
    cp "$work/x/usr/bin/promtool" "$promtool"
  fi
fi
echo "rules: $("$promtool" --version 2>&1 | head -1)"

out=$("$promtool" check rules deploy/prometheus-rules.yaml 2>&1) && [[ $out == *"SUCCESS: 8 rules found"* ]] \
  && ok "promtool check rules: the 8 alerts of docs/GUIDE.md" || bad "promtool check rules: $out"
out=$("$promtool" test rules deploy/prometheus-rules.test.yaml 2>&1) \
  && ok "promtool test rules: every alert fires on its series and not on the others" || bad "promtool test rules: $out"
# Every alert of the rules file has a test.
missing=$(grep -o 'alert: [A-Za-z]*' deploy/prometheus-rules.yaml | cut -d' ' -f2 | while read -r a; do
  grep -q "alertname: $a\$" deploy/prometheus-rules.test.yaml || echo "$a"; done)
[[ -z $missing ]] && ok "every alert has a test" || bad "alerts without a test: $missing"

echo "rules: $passed passed, $failed failed"
[[ $failed == 0 ]]
