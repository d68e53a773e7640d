#!/usr/bin/env bash
# A/B of sluice builds on one machine in one sitting: each build in turn (alternating, ROUNDS
# rounds) behind a one-process nginx answering 24 bytes (and a 1 MiB file), 100 workers / queue
# 200 / pool 100 as the shipped proxy_config.json, `wrk -t2` for SECONDS after 2 s of warm-up,
# and `perf stat` on the sluice process: syscalls, futex calls, context switches and CPU time per request —
# the stable signal on noisy shared cores (docs/PERFORMANCE.md "What each change moved").
#
#   bench/ab.sh OLD_BINARY NEW_BINARY [CONNS...]      e.g. bench/ab.sh /tmp/old/sluice target/dist/sluice 50 200
#
# Environment: SECONDS_EACH (default 6), ROUNDS (default 2), PATHS (default "/tiny").
# Needs wrk, nginx and perf (bench/run.sh installs the first two). Not part of .ci/run.
set -euo pipefail
[[ $# -ge 2 ]] || { sed -n 2,11p "$0"; exit 2; }
old=$1 new=$2; shift 2
if [[ $# -eq 0 ]]; then conns=(50 200); else conns=("$@"); fi
for t in wrk nginx perf; do command -v $t >/dev/null || { echo "ab: $t is required" >&2; exit 2; }; done
secs=${SECONDS_EACH:-6} rounds=${ROUNDS:-2} paths=${PATHS:-/tiny}
d=$(mktemp -d); chmod 755 "$d"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up=$(free_port) px=$(free_port)
mkdir -p "$d/www/files"; head -c 1048576 /dev/urandom > "$d/www/files/1mib.bin"; chmod -R 755 "$d/www"
cat > "$d/up.conf" <<EOF
daemon off; master_process off; pid $d/up.pid; error_log $d/up.err warn;
worker_processes 1; worker_rlimit_nofile 30000; events { worker_connections 25000; }
http { access_log off; keepalive_requests 10000000; keepalive_timeout 120s;
client_body_temp_path $d/b; proxy_temp_path $d/p; fastcgi_temp_path $d/f; uwsgi_temp_path $d/u; scgi_temp_path $d/s;
server { listen 127.0.0.1:$up backlog=4096;
  location = /tiny { return 200 "hello from the upstream\n"; }
  location /files/ { root $d/www; } } }
EOF
nginx -c "$d/up.conf" -p "$d" >/dev/null 2>&1 </dev/null & ngx=$!
sluice_pid=
cleanup() { [[ -n $sluice_pid ]] && kill -9 "$sluice_pid" 2>/dev/null; kill "$ngx" 2>/dev/null; rm -rf "$d"; }
trap cleanup EXIT
sleep 0.5

one() { # binary conns path
  "$1" --host 127.0.0.1 --port "$px" --target-host 127.0.0.1 --target-port "$up" \
    --max-concurrent-requests 100 --max-queue-size 200 --pool-maxsize 100 --log-level error 2>/dev/null &
  sluice_pid=$!
  sleep 0.5
  wrk -t2 -c"$2" -d2s "http://127.0.0.1:$px$3" >/dev/null
  perf stat -e raw_syscalls:sys_enter,syscalls:sys_enter_futex,context-switches,task-clock -p "$sluice_pid" -o "$d/perf" -- sleep $((secs - 1)) &
  local stat=$!
  wrk -t2 -c"$2" -d"${secs}s" --latency "http://127.0.0.1:$px$3" > "$d/wrk"
  wait $stat || true
  kill -9 "$sluice_pid"; wait "$sluice_pid" 2>/dev/null || true; sluice_pid=
  python3 - "$d" "$1" "$2" "$3" "$((secs - 1))" <<'EOF'
import re, sys
d, binary, conns, path, window = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
w = open(f"{d}/wrk").read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", w).group(1))
p99 = re.search(r"\s99%\s+(\S+)", w).group(1)
p = open(f"{d}/perf").read()
n = lambda name: float(re.search(r"([\d,.]+)\s+(?:msec\s+)?" + re.escape(name), p).group(1).replace(",", ""))
reqs = rps * window
print(f"| {binary} | {conns} | {path} | {rps:.0f} | {p99} | {n('raw_syscalls:sys_enter') / reqs:.2f} | "
      f"{n('syscalls:sys_enter_futex') / reqs:.2f} | {n('context-switches') / reqs:.2f} | {n('task-clock') * 1000 / reqs:.1f} |")
EOF
}

echo "| build | conns | path | req/s | p99 | syscalls/req | futex/req | ctx switches/req | CPU µs/req |"
echo "|---|---:|---|---:|---:|---:|---:|---:|---:|"
for _ in $(seq "$rounds"); do
  for c in "${conns[@]}"; do
    for p in $paths; do
      one "$old" "$c" "$p"
      one "$new" "$c" "$p"
    done
  done
done
