#!/usr/bin/env python3
"""Side-by-side benchmark: the upstream directly, sluice, and nginx as a keep-alive reverse proxy,
on the same upstream, in one run. Prints a markdown table (req/s, p50/p99 latency, proxy CPU per
request, proxy peak RSS, ratios). Everything runs on 127.0.0.1 and is stopped at the end.

Run through bench/run.sh, which installs wrk and nginx when missing and builds sluice.
Environment: BENCH_SECONDS (default 8) per measurement, BENCH_WARMUP (default 2), BENCH_ONLY (run
only the scenarios whose name contains this text). Targets: the upstream directly, the blocking
bound (bench/bound.rs), sluice, nginx.
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
DIST = os.path.join(ROOT, "target", "dist")  # sluice as users run it (bench/run.sh builds it)
SECONDS = int(os.environ.get("BENCH_SECONDS", "8"))
WARMUP = int(os.environ.get("BENCH_WARMUP", "2"))
TICK = os.sysconf("SC_CLK_TCK")
PROCS = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def spawn(cmd, **kw):
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, **kw)
    PROCS.append(p)
    return p


def stop(p):
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def tree(pid):
    """pid and its descendants (nginx master + workers)."""
    out = [pid]
    try:
        kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    except OSError:
        kids = []
    for k in kids:
        out += tree(int(k))
    return out


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total


def peak_rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def nginx_conf(d, name, body):
    path = os.path.join(d, f"{name}.conf")
    with open(path, "w") as f:
        f.write(
            f"""daemon off; master_process on; pid {d}/{name}.pid; error_log {d}/{name}.err warn;
worker_processes {body[0]}; worker_rlimit_nofile 30000;
events {{ worker_connections 25000; }}
http {{ access_log off; keepalive_requests 10000000; keepalive_timeout 120s;
client_body_temp_path {d}/{name}-body; proxy_temp_path {d}/{name}-proxy;
fastcgi_temp_path {d}/{name}-f; uwsgi_temp_path {d}/{name}-u; scgi_temp_path {d}/{name}-s;
{body[1]}
}}
"""
        )
    return path


def parse_wrk(text):
    def secs(v):
        m = re.match(r"([\d.]+)(us|ms|s|m)", v)
        n, unit = float(m.group(1)), m.group(2)
        return n * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    reqs = int(re.search(r"(\d+) requests in", text).group(1))
    p50 = secs(re.search(r"\s50%\s+(\S+)", text).group(1))
    p99 = secs(re.search(r"\s99%\s+(\S+)", text).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", text)
    mib = float(transfer.group(1)) * {"B": 1 / 2**20, "KB": 1 / 1024, "MB": 1, "GB": 1024}.get(transfer.group(2), 0)
    return {
        "rps": rps,
        "requests": reqs,
        "p50": p50,
        "p99": p99,
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "errors": sum(int(x) for x in errs.groups()) if errs else 0,
        "mibs": mib,
    }


def wrk_args(conns, close):
    """`close`: every request on a new connection (`Connection: close`), as a client without a
    session (`requests.get()`) does."""
    return ["wrk", "-t", "2", "-c", str(conns)] + (["-H", "Connection: close"] if close else [])


def warm_up(url, conns, close):
    if WARMUP:
        subprocess.run(wrk_args(conns, close) + ["-d", f"{WARMUP}s", url], capture_output=True)


def wrk(url, conns, close):
    out = subprocess.run(wrk_args(conns, close) + ["-d", f"{SECONDS}s", "--latency", "--timeout", "5s", url],
                         capture_output=True, text=True).stdout
    return parse_wrk(out)


def measure(url, conns, pids, close=False):
    # The CPU is counted over the measured run only: the warm-up's requests are not in its count.
    warm_up(url, conns, close)
    before = cpu_ticks(pids)
    r = wrk(url, conns, close)
    r["cpu_us"] = (cpu_ticks(pids) - before) / TICK / max(r["requests"], 1) * 1e6 if pids else None
    r["rss"] = peak_rss_kib(pids) if pids else None
    return r


def start_sluice(up_port, workers, queue):
    port = free_port()
    p = spawn([os.path.join(DIST, "sluice"), "--host", "127.0.0.1", "--port", str(port), "--target-host", "127.0.0.1",
               "--target-port", str(up_port), "--max-concurrent-requests", str(workers), "--max-queue-size", str(queue),
               "--pool-maxsize", str(workers), "--log-level", "error"])
    wait_port(port)
    return p, port


def start_bound(up_port):
    """The blocking bound (bench/bound.rs): a thread per connection, its own upstream connection."""
    port = free_port()
    p = spawn([os.path.join(REL, "bench-bound"), f"127.0.0.1:{port}", f"127.0.0.1:{up_port}"])
    wait_port(port)
    return p, port


def start_nginx_proxy(d, up_port):
    port = free_port()
    conf = nginx_conf(d, f"proxy{port}", ("auto", f"""
upstream up {{ server 127.0.0.1:{up_port}; keepalive 512; }}
server {{ listen 127.0.0.1:{port} backlog=4096;
  location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
               proxy_max_temp_file_size 0; proxy_next_upstream off; }} }}"""))
    p = spawn(["nginx", "-c", conf, "-p", d])
    wait_port(port)
    time.sleep(0.2)
    return p, port


def main():
    d = tempfile.mkdtemp(prefix="sluice-bench-")
    os.chmod(d, 0o755)  # nginx workers run as nobody and must read the files
    have_nginx = shutil.which("nginx") is not None
    rows = []
    try:
        os.makedirs(os.path.join(d, "www", "files"))
        with open(os.path.join(d, "www", "files", "1mib.bin"), "wb") as f:
            f.write(os.urandom(1 << 20))
        for sub in ("www", "www/files", "www/files/1mib.bin"):
            os.chmod(os.path.join(d, sub), 0o755)
        if have_nginx:
            fast_port = free_port()
            conf = nginx_conf(d, "upstream", ("1", f"""server {{ listen 127.0.0.1:{fast_port} backlog=4096;
  location = /tiny {{ return 200 "hello from the upstream\\n"; }}
  location /files/ {{ root {d}/www; }} }}"""))
            spawn(["nginx", "-c", conf, "-p", d])
            tiny, big, fast_name = "/tiny", "/files/1mib.bin", "nginx"
        else:
            fast_port = free_port()
            spawn([os.path.join(REL, "sluice-upstream"), "--listen", f"127.0.0.1:{fast_port}", "--no-record"])
            tiny, big, fast_name = "/tiny?body_bytes=24", f"/big?body_bytes={1 << 20}", "sluice-upstream"
        slow_port = free_port()
        spawn([os.path.join(REL, "sluice-upstream"), "--listen", f"127.0.0.1:{slow_port}", "--no-record"])
        wait_port(fast_port)
        wait_port(slow_port)
        dead_port = free_port()

        # sluice runs with the shipped proxy_config.json's sizes (100 workers, queue 200) unless
        # the row says otherwise.
        scenarios = [
            ("tiny responses, 50 conns", fast_port, tiny, 50, (100, 200)),
            ("tiny responses, 50 conns, 16 workers", fast_port, tiny, 50, (16, 1024)),
            ("tiny responses, 200 conns", fast_port, tiny, 200, (100, 200)),
            ("tiny responses, 50 conns, a new connection each", fast_port, tiny, 50, (100, 200)),
            ("1 MiB responses, 20 conns", fast_port, big, 20, (100, 200)),
            ("50 ms upstream, 200 conns", slow_port, "/slow?delay_ms=50", 200, (200, 1024)),
            ("1 s upstream, 2000 conns", slow_port, "/slow?delay_ms=1000", 2000, (2000, 2000)),
            ("dead upstream, 50 conns", dead_port, tiny, 50, (100, 200)),
            ("dead upstream, 10 conns", dead_port, tiny, 10, (100, 200)),
        ]
        only = os.environ.get("BENCH_ONLY")
        for name, up, path, conns, (workers, queue) in scenarios:
            if only and only not in name:
                continue
            close = "new connection" in name
            res = {}
            if up != dead_port:
                res["direct"] = measure(f"http://127.0.0.1:{up}{path}", conns, [], close)
                if os.path.exists(os.path.join(REL, "bench-bound")):
                    p, port = start_bound(up)
                    res["bound"] = measure(f"http://127.0.0.1:{port}{path}", conns, tree(p.pid), close)
                    stop(p)
            p, port = start_sluice(up, workers, queue)
            res["sluice"] = measure(f"http://127.0.0.1:{port}{path}", conns, tree(p.pid), close)
            stop(p)
            if have_nginx:
                p, port = start_nginx_proxy(d, up)
                res["nginx"] = measure(f"http://127.0.0.1:{port}{path}", conns, tree(p.pid), close)
                stop(p)
            rows.append((name, res))
            print(f"done: {name}", file=sys.stderr)
        idle = {}
        p, port = start_sluice(fast_port, 100, 200)
        idle["sluice"] = idle_rss(port, tree(p.pid), tiny)
        stop(p)
        if have_nginx:
            p, port = start_nginx_proxy(d, fast_port)
            idle["nginx"] = idle_rss(port, tree(p.pid), tiny)
            stop(p)
        print("done: idle connections", file=sys.stderr)
    finally:
        for p in PROCS:
            stop(p)
        shutil.rmtree(d, ignore_errors=True)
    report(rows, fast_name)
    print(f"\n{IDLE:,} idle keep-alive connections (one request each, then idle): "
          + ", ".join(f"{k} RSS {v[0] / 1024:.1f} -> {v[1] / 1024:.1f} MiB" for k, v in idle.items()))


IDLE = 10_000


def idle_rss(port, pids, path):
    """RSS (KiB, summed over pids) before and after IDLE keep-alive connections, each used once."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    before = sum(rss_kib(pid) for pid in pids)
    socks = []
    try:
        for _ in range(IDLE):
            s = socket.create_connection(("127.0.0.1", port), 5)
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            socks.append(s)
        for s in socks:
            s.recv(4096)
        time.sleep(0.5)
        return before, sum(rss_kib(pid) for pid in pids)
    finally:
        for s in socks:
            s.close()


def rss_kib(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def fmt_ms(s):
    return f"{s * 1000:.2f}"


def report(rows, fast_name):
    cores = os.cpu_count()
    print(f"\nsluice benchmark — {time.strftime('%Y-%m-%d')}, {cores} cores shared by wrk, proxy and upstream; "
          f"fast upstream: {fast_name}; {SECONDS}s per measurement\n")
    print("| scenario | target | req/s | MiB/s | p50 ms | p99 ms | non-2xx | errors | proxy CPU µs/req | proxy peak RSS MiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, res in rows:
        for target in ("direct", "bound", "sluice", "nginx"):
            r = res.get(target)
            if not r:
                continue
            cpu = f"{r['cpu_us']:.1f}" if r["cpu_us"] is not None else "-"
            rss = f"{r['rss'] / 1024:.1f}" if r["rss"] is not None else "-"
            print(f"| {name} | {target} | {r['rps']:.0f} | {r['mibs']:.1f} | {fmt_ms(r['p50'])} | {fmt_ms(r['p99'])} | "
                  f"{r['non2xx']} | {r['errors']} | {cpu} | {rss} |")
    print("\n| scenario | sluice/bound req/s | sluice/nginx req/s | sluice/direct req/s | sluice/nginx p99 | sluice/nginx CPU per req | sluice/nginx peak RSS |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, res in rows:
        s, n, d, b = res.get("sluice"), res.get("nginx"), res.get("direct"), res.get("bound")
        ratio = lambda a, b: f"{a / b:.2f}" if a is not None and b else "-"
        print(f"| {name} | {ratio(s['rps'], b['rps'] if b else None)} | {ratio(s['rps'], n['rps'] if n else None)} | "
              f"{ratio(s['rps'], d['rps'] if d else None)} | {ratio(s['p99'], n['p99'] if n else None)} | "
              f"{ratio(s['cpu_us'], n['cpu_us'] if n else None)} | {ratio(s['rss'], n['rss'] if n else None)} |")


if __name__ == "__main__":
    main()
