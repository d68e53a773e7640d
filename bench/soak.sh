#!/usr/bin/env bash
# Soak test by hand: bench/soak.sh [SECONDS] (default 300). Bounded; loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --quiet --bins
cargo build --profile dist --quiet --bin sluice # sluice as users run it (Cargo.toml)
exec python3 bench/soak.py "$@"
