#!/usr/bin/env bash
# Runs every command of the README's "Quick reference" block, in order and in one shell (as a
# user pastes it: the process ids kept in variables), in a fresh copy of the repository's files
# with nothing built (its own target folder), against a real sluice and the bundled test upstream
# on loopback, so the documentation cannot rot. Substitutions, and only these: port 8080 -> a
# free port (and --host 127.0.0.1), port 9000 -> a free port, ./target/release -> the copy's
# target folder, `--demo` -> `--demo --fast`. A background command's output goes to a log.
# Exits non-zero on the first command that fails; `kill -HUP "$x"` must leave process $x alive.
# Signals only the processes the block started (by their ids): what is still running at the end
# is stopped by the block's own shell (`jobs`).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
copy=$(mktemp -d)
trap 'rm -rf "$copy"' EXIT
# Dependencies are built once per machine in this folder; the copy's own crates always anew.
export CARGO_TARGET_DIR=$root/target/quickref
if git -C "$root" rev-parse --git-dir >/dev/null 2>&1; then
  (cd "$root" && git ls-files -z | xargs -0 cp --parents -t "$copy")
else
  (cd "$root" && tar --exclude=./target -cf - .) | (cd "$copy" && tar -xf -)
fi
cd "$copy"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
UP=$(free_port)

block=$(awk '/^## Quick reference/{f=1} f&&/^```sh/{g=1;next} g&&/^```/{exit} g' README.md)
[[ -n "$block" ]] || { echo "quickref: no Quick reference block in README.md"; exit 1; }
run=$copy/.quickref-run.sh
bglog=$copy/.quickref-background.log
{
  echo 'set -uo pipefail'
  # The block's shell stops what it started and is still running, by id; a timeout ends it.
  # shellcheck disable=SC2016
  echo 'trap '\''for p in $(jobs -pr); do kill "$p" 2>/dev/null; done; wait'\'' EXIT'
  echo 'trap "exit 1" TERM INT'
  printf 'fail() { echo "$1"; echo "--- background log"; tail -n 20 %q; exit 1; }\n' "$bglog"
  while IFS= read -r line; do
    cmd=${line%%  #*}                      # drop the trailing comment
    cmd=$(sed -e 's/[[:space:]]*$//' <<<"$cmd")
    [[ -n $cmd ]] || continue
    cmd=$(sed -e "s/localhost:8080/127.0.0.1:$PORT/g" -e "s/9000/$UP/g" \
              -e "s|\./target/release/|$CARGO_TARGET_DIR/release/|g" \
              -e "s|^./start.sh --target-host|./start.sh --host 127.0.0.1 --port $PORT --target-host|" \
              -e 's/--demo$/--demo --fast/' <<<"$cmd")
    printf 'echo %q\n' "quickref\$ $cmd"
    if [[ $cmd =~ ^(.*[^\&])\ \&(\ (.*))?$ ]]; then
      # `COMMAND & name=$!`: started in the background, its output to the log.
      printf '%s >>%q 2>&1 & %s\n' "${BASH_REMATCH[1]}" "$bglog" "${BASH_REMATCH[3]}"
    else
      printf '{ %s\n} >%q 2>&1 || { cat %q; fail %q; }\ntail -n 3 %q\n' \
        "$cmd" "$copy/.out" "$copy/.out" "quickref: failed: $cmd" "$copy/.out"
    fi
    if [[ $cmd =~ kill\ -HUP\ \"?\$([A-Za-z_][A-Za-z0-9_]*) ]]; then
      v=${BASH_REMATCH[1]}
      printf 'sleep 0.3; kill -0 "$%s" 2>/dev/null || fail "quickref: SIGHUP stopped process $%s"\n' "$v" "$v"
    fi
  done <<<"$block"
  echo 'echo "quickref: all commands passed"'
} >"$run"
# Every step is bounded: the build takes minutes on a busy machine, each command seconds.
timeout 1800 bash "$run"
