#!/usr/bin/env bash
# Start sluice: builds the binary (profile dist: Cargo.toml) if needed and runs it with proxy_config.json
# (flags given here override the file). Also: --demo, --build-static.
set -euo pipefail
cd "$(dirname "$0")"

# More open files for many client connections (each connection is one fd, plus one upstream fd).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 65536 2>/dev/null || true

target=${CARGO_TARGET_DIR:-target}

# Build only when a binary is missing or older than the sources. PROFILE: `dist` for the
# sluice users run (optimised across crates: Cargo.toml), `release` for the demo's tools.
build() {
  local profile=$1 stale=0 sources=(src tools Cargo.toml Cargo.lock)
  shift
  [[ $profile == dist ]] && sources=(src Cargo.toml Cargo.lock) # sluice alone: not the tools
  for bin in "$@"; do
    if [[ ! -x $target/$profile/$bin ]] || [[ -n "$(find "${sources[@]}" -newer "$target/$profile/$bin" -print -quit 2>/dev/null)" ]]; then
      stale=1
    fi
  done
  if [[ $stale == 1 ]]; then
    echo "start.sh: building sluice ($profile; the first build takes a minute or two)..." >&2
    if [[ $profile == dist ]]; then
      cargo build --profile dist --quiet --bin sluice
    else
      cargo build --release --quiet --bins
    fi
    # Cargo does not relink for a change that does not touch the program (a comment in a file
    # it does not read): the binaries are marked as current, so the next start does not build.
    for bin in "$@"; do touch "$target/$profile/$bin"; done
  fi
}

case "${1:-}" in
  --demo)
    shift
    build release sluice sluice-upstream sluice-demo
    exec "$target/release/sluice-demo" "$@"
    ;;
  --build-static)
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --profile dist --target x86_64-unknown-linux-gnu --bin sluice
    echo "static binary: $target/x86_64-unknown-linux-gnu/dist/sluice"
    exit 0
    ;;
esac

build dist sluice
config=()
if [[ " $* " != *" --config "* && -f proxy_config.json ]]; then
  config=(--config proxy_config.json)
fi
exec "$target/dist/sluice" "${config[@]}" "$@"
