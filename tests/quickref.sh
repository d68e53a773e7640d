#!/usr/bin/env bash
# Runs every command of the README's "Quick reference" block, in order, in a fresh copy of the
# repository's files with nothing built (its own target folder), against a real sluice and the
# bundled test upstream on loopback, so the documentation cannot rot. Substitutions, and only
# these: port 8080 -> a free port (and --host 127.0.0.1), port 9000 -> a free port,
# ./target/release -> the copy's target folder, `--demo` -> `--demo --fast`.
# Exits non-zero on the first command that fails.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
copy=$(mktemp -d)
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
cleanup() {
  pkill -f -- "--listen 127.0.0.1:$UP" 2>/dev/null || true
  pkill -f -- "--port $PORT " 2>/dev/null || true
  rm -rf "$copy"
}
trap cleanup EXIT

block=$(awk '/^## Quick reference/{f=1} f&&/^```sh/{g=1;next} g&&/^```/{exit} g' README.md)
[[ -n "$block" ]] || { echo "quickref: no Quick reference block in README.md"; exit 1; }
while IFS= read -r line; do
  cmd=${line%%  #*}                      # drop the trailing comment
  cmd=$(sed -e 's/[[:space:]]*$//' <<<"$cmd")
  [[ -n $cmd ]] || continue
  cmd=$(sed -e "s/localhost:8080/127.0.0.1:$PORT/g" -e "s/9000/$UP/g" \
            -e "s|\./target/release/|$CARGO_TARGET_DIR/release/|g" \
            -e "s|^./start.sh --target-host|./start.sh --host 127.0.0.1 --port $PORT --target-host|" \
            -e 's/--demo$/--demo --fast/' -e 's/--demo *$/--demo --fast/' <<<"$cmd")
  echo "quickref\$ $cmd"
  if [[ $cmd == *"&" ]]; then
    bash -c "$cmd" >/dev/null 2>&1
  elif [[ $cmd == "pkill -TERM"* ]]; then
    pid=$(pgrep -x sluice)
    bash -c "$cmd"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then echo "quickref: sluice did not exit after SIGTERM"; exit 1; fi
  else
    out=$(bash -o pipefail -c "$cmd" 2>&1) || { echo "$out"; echo "quickref: failed: $cmd"; exit 1; }
    printf '%s\n' "$out" | tail -n 3
    [[ $cmd == "pkill -HUP"* ]] && sleep 0.3 && { pgrep -x sluice >/dev/null || { echo "quickref: SIGHUP killed sluice"; exit 1; }; }
  fi
done <<<"$block"
echo "quickref: all commands passed"
