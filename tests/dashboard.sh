#!/usr/bin/env bash
# The live dashboard page (README "Monitoring"): the page's data shaping under node
# (tests/dashboard_unit.js), then the page in headless Chromium against a running sluice under a
# small bounded load with a failing phase (tests/dashboard_browser.py); writes target/dashboard.png
# (docs/dashboard.png with SLUICE_UPDATE_SCREENSHOT=1).
# Installs Debian's chromium, chromium-driver and nodejs when missing (as root), like tests/deploy.sh
# installs podman. Needs the release binaries (test.sh builds them). ~35 s.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null || ! command -v node >/dev/null; then
  [[ $(id -u) == 0 ]] || { echo "dashboard: chromium missing and not root: skipped"; exit 0; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver nodejs >/dev/null
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
node tests/dashboard_unit.js | tee -a "$log" || status=1
python3 tests/dashboard_browser.py | tee -a "$log" || status=1
passed=$(grep -c '^dashboard: ok' "$log" || true)
failed=$(grep -c '^dashboard: FAILED' "$log" || true)
echo "dashboard: $passed passed, $failed failed"
[[ $status == 0 && $failed == 0 ]]
