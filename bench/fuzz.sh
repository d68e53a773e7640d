#!/usr/bin/env bash
# Long fuzz run by hand: the seeded generator of tests/fuzz.rs for SECONDS (default 600).
set -euo pipefail
cd "$(dirname "$0")/.."
SLUICE_FUZZ_SECONDS="${1:-600}" cargo test --release --test fuzz parser_and_chunked_decoder_never_panic -- --nocapture
