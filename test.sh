#!/usr/bin/env bash
# Runs the whole test suite: the deployment files for real (tests/deploy.sh: podman image and
# kube play, Kubernetes schemas), unit tests, end-to-end tests (real sluice + real test upstream
# on 127.0.0.1), the dashboard page in headless Chromium (tests/dashboard.sh), doc tests.
# Installs what the tests need when missing: Python packages prometheus_client, pyyaml and
# kubernetes-validate; Debian packages jq, curl, podman, chromium, chromium-driver and nodejs;
# promtool (unpacked from Debian's prometheus package).
set -euo pipefail
cd "$(dirname "$0")"
# The observability tests judge the Prometheus text with the official Python parser.
if ! python3 -c 'import prometheus_client' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore prometheus_client
fi
# The README quick-reference test pipes metrics through jq and curl, as users do.
if ! command -v jq >/dev/null || ! command -v curl >/dev/null; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq curl >/dev/null
  fi
fi
if ! python3 -c 'import yaml' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore pyyaml
fi
# Thousands of connections in the hardening tests: raise the open-file limit as far as allowed.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --quiet --bins
# The static binary the hardening tests run in an empty root (./start.sh --build-static).
RUSTFLAGS="-C target-feature=+crt-static" cargo build --profile dist --quiet --target x86_64-unknown-linux-gnu --bin sluice
export SLUICE_REQUIRE_STATIC=1
# The container image and the Kubernetes manifests, run for real with podman (installed when
# missing) and validated against the Kubernetes schemas.
bash tests/deploy.sh
# The alert rules with promtool: checked, and each alert unit-tested (deploy/prometheus-rules.*).
bash tests/rules.sh
# The dashboard page in headless Chromium (installed when missing) against a running sluice.
bash tests/dashboard.sh
cargo test --release -- --test-threads="${TEST_THREADS:-4}"
