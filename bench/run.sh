#!/usr/bin/env bash
# Benchmark sluice against the upstream directly and nginx (when installed) in one run; prints a
# markdown table. Installs wrk and nginx when missing (as root). Not part of .ci/run: ~5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx >/dev/null
  fi
fi
command -v wrk >/dev/null || { echo "bench: wrk is required (apt-get install wrk)" >&2; exit 2; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --quiet --bins
# sluice as users run it (`./start.sh`): the `dist` build, optimised across crates (Cargo.toml).
cargo build --profile dist --quiet --bin sluice
# The blocking bound (a reference row): std only, one file.
rustc --edition 2021 -O -o target/release/bench-bound bench/bound.rs
exec python3 bench/run.py "$@"
