#!/usr/bin/env bash
# The deployment files, run for real (README "Deployment"): the container image from
# deploy/Dockerfile run read-only as uid 65534 with no capabilities, deploy/kubernetes.yaml run
# with `podman kube play`, the manifests (the deploy/*.yaml with an apiVersion: not the Prometheus
# rules, which tests/rules.sh checks) validated against the Kubernetes schemas
# offline, the prometheus-adapter rule checked against the metrics a running sluice serves, and
# the drain, autoscaling and memory numbers checked against the settings (docs/GUIDE.md
# "Scaling out").
# Installs podman (Debian packages) and kubernetes-validate (PyPI) when missing. Everything
# listens on 127.0.0.1 (host networking); nothing is fetched from an image registry (FROM scratch).
# Needs the static binary (./start.sh --build-static; test.sh builds it). ~15 s.
set -euo pipefail
cd "$(dirname "$0")/.."
passed=0
failed=0
ok() { echo "deploy: ok - $*"; passed=$((passed + 1)); }
bad() { echo "deploy: FAILED - $*"; failed=$((failed + 1)); }

if ! command -v podman >/dev/null; then
  [[ $(id -u) == 0 ]] || { echo "deploy: podman missing and not root: skipped"; exit 0; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc netavark aardvark-dns \
    catatonit containernetworking-plugins uidmap >/dev/null
fi
if ! command -v kubernetes-validate >/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore kubernetes-validate
fi

work=$(mktemp -d)
# These VMs have no systemd and a low default process limit: runc, and explicit ulimits.
cat >"$work/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF=$work/containers.conf
tag="localhost/sluice-test:$$"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port)
timeout 300 ./target/release/sluice-upstream --listen "127.0.0.1:$UP" --no-record >/dev/null 2>&1 &
UPPID=$!
cleanup() {
  podman rm -f "sluice-test-$$" >/dev/null 2>&1 || true
  [[ -f $work/kube.yaml ]] && podman kube down "$work/kube.yaml" >/dev/null 2>&1 || true
  podman rmi -f "$tag" >/dev/null 2>&1 || true
  kill "$UPPID" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
wait_health() { # port -> 0 once /proxy-health answers
  for _ in $(seq 100); do curl -sf "127.0.0.1:$1/proxy-health" >/dev/null && return 0; sleep 0.1; done
  return 1
}
# A request that takes 2 s at the upstream, started in the background; its status lands in $1.
# Stops something (`$3...`, a podman command) while a 2 s request to port $1 is in flight, and
# checks that the request completed and container $2 exited 0. $4 onwards name the check.
drains() {
  local port=$1 ctr=$2 stop=$3 what=$4 out
  out=$(mktemp -p "$work")
  curl -s -m 30 -o /dev/null -w '%{http_code}' "127.0.0.1:$port/slow?delay_ms=2000" >"$out" &
  local slow=$!
  sleep 0.3
  eval "$stop" >/dev/null 2>&1
  wait "$slow" || true
  local code
  code=$(podman inspect "$ctr" --format '{{.State.ExitCode}}')
  if [[ $(cat "$out") == 200 && $code == 0 ]]; then
    ok "$what drains: the in-flight request completed, exit status 0"
  else
    bad "$what: in-flight $(cat "$out"), exit $code"
  fi
}

# 1. The image: build it, run it the strict way, proxy through it, stop it while busy.
if podman build -q -f deploy/Dockerfile -t "$tag" . >/dev/null; then ok "image builds from deploy/Dockerfile"; else bad "image build"; exit 1; fi
P=$(free_port)
podman run -d --name "sluice-test-$$" --network host --read-only --user 65534:65534 \
  --cap-drop all --security-opt no-new-privileges "$tag" \
  --config /etc/sluice/proxy_config.json --host 127.0.0.1 --port "$P" \
  --target-host 127.0.0.1 --target-port "$UP" >/dev/null
if wait_health "$P"; then ok "container (read-only, uid 65534, no capabilities) answers /proxy-health"; else bad "container health"; podman logs "sluice-test-$$" | tail -5; fi
body=$(curl -s "127.0.0.1:$P/x?body_bytes=5")
if [[ $body == abcde ]]; then ok "container proxies to the upstream on 127.0.0.1"; else bad "container proxy: got '$body'"; fi
drains "$P" "sluice-test-$$" "podman stop -t 40 sluice-test-$$" "podman stop"
podman rm -f "sluice-test-$$" >/dev/null

# 2. The Kubernetes manifests with podman kube play (image, ports and target rewritten).
K=$(free_port)
python3 - "$tag" "$K" "$UP" >"$work/kube.yaml" <<'EOF'
import json, sys, yaml
tag, port, up = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = []
for d in yaml.safe_load_all(open("deploy/kubernetes.yaml")):
    if not d:
        continue
    if d["kind"] == "ConfigMap":
        c = json.loads(d["data"]["proxy_config.json"])
        c.update(host="127.0.0.1", port=port, target_host="127.0.0.1", target_port=up)
        d["data"]["proxy_config.json"] = json.dumps(c)
    if d["kind"] == "Deployment":
        d["spec"]["replicas"] = 1
        pod = d["spec"]["template"]["spec"]
        pod["hostNetwork"] = True  # the test upstream is on the host's 127.0.0.1
        c = pod["containers"][0]
        c["image"] = tag
        c.pop("ports", None)
        for probe in ("livenessProbe", "readinessProbe"):
            c[probe]["httpGet"]["port"] = port
    out.append(d)
yaml.safe_dump_all(out, sys.stdout)
EOF
podman kube play "$work/kube.yaml" >/dev/null 2>"$work/play.err" || { cat "$work/play.err"; bad "podman kube play"; }
ctr=$(podman ps -a --format '{{.Names}}' | grep -- '-sluice$' | head -1)
if wait_health "$K"; then ok "kube play: the pod starts and answers /proxy-health"; else bad "kube play health"; podman logs "$ctr" 2>&1 | tail -5; fi
sleep 3
restarts=$(podman inspect "$ctr" --format '{{.RestartCount}}')
state=$(podman inspect "$ctr" --format '{{.State.Status}}')
if [[ $restarts == 0 && $state == running ]]; then ok "kube play: the pod stays up (0 restarts in 3 s)"; else bad "kube play: $state, $restarts restarts"; fi
effective=$(curl -s "127.0.0.1:$K/proxy-metrics")
if python3 - "$work/kube.yaml" "$effective" <<'EOF'
import json, sys, yaml
cm = next(d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "ConfigMap")
want = json.loads(cm["data"]["proxy_config.json"])
got = json.loads(sys.argv[2])["config"]
wrong = {k: (v, got.get(k)) for k, v in want.items() if got.get(k) != v}
sys.exit(f"not effective: {wrong}" if wrong else 0)
EOF
then ok "kube play: the ConfigMap's values are the effective config"; else bad "kube play config"; fi
curl -s "127.0.0.1:$K/proxy-metrics/prometheus" >"$work/prom.txt"
if python3 - "$work/prom.txt" <<'EOF'
import re, sys, yaml
served = set(re.findall(r"^# TYPE (\S+) ", open(sys.argv[1]).read(), re.M))
cm = next(yaml.safe_load_all(open("deploy/prometheus-adapter.yaml")))
rules = yaml.safe_load(cm["data"]["config.yaml"])["rules"]
exposed, wrong = set(), []
for r in rules:
    used = set(re.findall(r"\bsluice_\w+", r["seriesQuery"] + " " + r["metricsQuery"]))
    wrong += sorted(used - served)
    exposed.add(r["name"]["as"])
    if set(r["resources"]["overrides"]) != {"namespace", "pod"}:
        wrong.append("resources: not per namespace and pod")
hpa = next(d for d in yaml.safe_load_all(open("deploy/kubernetes.yaml")) if d and d["kind"] == "HorizontalPodAutoscaler")
for m in hpa["spec"]["metrics"]:
    if m["type"] == "Pods" and m["pods"]["metric"]["name"] not in exposed:
        wrong.append(f"HPA metric {m['pods']['metric']['name']} not exposed by the adapter rules")
sys.exit(f"adapter rules: {wrong}" if wrong or not exposed else 0)
EOF
then ok "prometheus-adapter rules: their queries name metrics sluice serves; the HPA's metric is the one they expose"; else bad "prometheus-adapter rules"; fi
pod=$(podman pod ps --format '{{.Name}}' | grep '^sluice' | head -1)
drains "$K" "$ctr" "podman pod stop -t 40 $pod" "podman pod stop"

# 3. The manifests against the Kubernetes schemas (strict: no unknown fields), for every version
#    the README supports. The Prometheus rules files are not manifests.
mapfile -t manifests < <(grep -l '^apiVersion:' deploy/*.yaml)
for v in 1.30.0 1.31.0 1.32.0 1.33.0 1.34.0 1.35.0 1.36.0 1.37.0; do
  if kubernetes-validate --strict --quiet -k "$v" "${manifests[@]}" >"$work/kv.out" 2>&1; then
    ok "kubernetes-validate --strict, Kubernetes $v"
  else
    bad "kubernetes-validate $v: $(tail -3 "$work/kv.out")"
  fi
done

# 4. The numbers against the settings (docs/GUIDE.md "Scaling out" and "Rolling updates").
if python3 - <<'EOF'
import json, math, re, sys, yaml
docs = [d for d in yaml.safe_load_all(open("deploy/kubernetes.yaml")) if d]
kind = {d["kind"]: d for d in docs}
c = json.loads(kind["ConfigMap"]["data"]["proxy_config.json"])
shipped = json.load(open("proxy_config.json"))
get = lambda k, d: c.get(k, shipped.get(k, d))
pod = kind["Deployment"]["spec"]["template"]["spec"]
ctr = pod["containers"][0]
wrong = []
grace = get("shutdown_grace", 30)
if grace < get("connect_timeout", 10) + get("read_timeout", 300):
    wrong.append(f"ConfigMap shutdown_grace {grace} < connect_timeout + read_timeout")
pre = ctr["lifecycle"]["preStop"]["sleep"]["seconds"]
if pod["terminationGracePeriodSeconds"] <= pre + grace:
    wrong.append(f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} <= preStop {pre} + grace {grace}")
unit = open("deploy/sluice.service").read()
stop = int(re.search(r"^TimeoutStopSec=(\d+)", unit, re.M).group(1))
if stop <= max(shipped.get("shutdown_grace", 30), grace):
    wrong.append(f"TimeoutStopSec {stop} <= shutdown_grace")
workers = get("max_concurrent_requests", 50)
hpa = kind["HorizontalPodAutoscaler"]["spec"]
for m in hpa["metrics"]:
    t = float(m["pods"]["target"]["averageValue"]) if m["type"] == "Pods" else None
    if t is not None and not 0.7 * workers <= t <= 0.8 * workers:
        wrong.append(f"HPA target {t} not 70-80 % of max_concurrent_requests {workers}")
down = hpa["behavior"]["scaleDown"]
if down["stabilizationWindowSeconds"] < pod["terminationGracePeriodSeconds"] or any(
        p["type"] != "Pods" or p["value"] != 1 or p["periodSeconds"] < pod["terminationGracePeriodSeconds"]
        for p in down["policies"]):
    wrong.append(f"scale-down faster than a drain: {down}")
mib = lambda q: int(q.removesuffix("Mi"))
kib = 1 / 1024
buf = get("client_buffer", 65536) / 1024 / 1024
base = 16 + workers * 60 * kib
request = base + (workers + get("max_queue_size", 100)) * (buf + 2 * kib)
worst = base + get("max_connections", 4096) * (buf + 2 * kib)
res = ctr["resources"]
if mib(res["requests"]["memory"]) != 16 * math.ceil(request / 16):
    wrong.append(f"memory request {res['requests']['memory']}, formula {request:.1f} MiB")
if mib(res["limits"]["memory"]) != 64 * math.ceil(1.25 * worst / 64):
    wrong.append(f"memory limit {res['limits']['memory']}, formula 1.25 x {worst:.1f} MiB")
sys.exit(f"{wrong}" if wrong else 0)
EOF
then ok "drain, autoscaling and memory numbers follow the settings (GUIDE formulas)"; else bad "deployment numbers"; fi

echo "deploy: $passed passed, $failed failed"
[[ $failed == 0 ]]
