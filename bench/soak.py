#!/usr/bin/env python3
"""Soak test, run by hand (bench/soak.sh): sluice (the `dist` build users run) against sluice-upstream for a bounded
time (default 300 s), mixing normal traffic with faults (slow and hanging upstream responses,
resets, truncations, garbage, client aborts, malformed and slow clients). Reports sluice's RSS,
open fds and threads at the start and the end, and whether it crashed. Loopback only."""
import os, random, re, socket, subprocess, sys, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
DIST = os.path.join(ROOT, "target", "dist")  # sluice as users run it (soak.sh builds it)
SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 300.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stats(pid):
    st = {}
    for line in open(f"/proc/{pid}/status"):
        k, v = line.split(":", 1)
        st[k] = v.split()[0] if v.split() else ""
    return {"rss_kib": int(st["VmRSS"]), "threads": int(st["Threads"]), "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def raw(port, data, read=True, timeout=3):
    try:
        with socket.create_connection(("127.0.0.1", port), 2) as s:
            s.settimeout(timeout)
            s.sendall(data)
            if read:
                return s.recv(65536)
    except OSError:
        return b""


FAULTS = ["/?body_bytes=100", "/?delay_ms=200", "/?hang=1", "/?reset=1", "/?reset_mid_body=1&body_bytes=200000",
          "/?close_mid_body=1&body_bytes=100000", "/?garbage=1", "/?status=503", "/?chunked=1&body_bytes=50000",
          "/?big_header=100000"]
BAD = [b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
       b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", b"\x16\x03\x01garbage\r\n\r\n",
       b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n"]


def chaos(port, until):
    rnd = random.Random(7)
    while time.time() < until:
        kind = rnd.random()
        if kind < 0.6:
            raw(port, f"GET {rnd.choice(FAULTS)} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        elif kind < 0.75:
            raw(port, rnd.choice(BAD))
        elif kind < 0.85:
            raw(port, b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000, read=False)
        elif kind < 0.95:
            try:
                with socket.create_connection(("127.0.0.1", port), 2) as s:
                    s.sendall(b"GET /?body_bytes=5000000 HTTP/1.1\r\nHost: t\r\n\r\n")
                    s.recv(1000)
            except OSError:
                pass
        else:
            raw(port, b"GET / HTTP/1.1\r\nHo", timeout=4)


def main():
    up, port = free_port(), free_port()
    ups = subprocess.Popen([os.path.join(REL, "sluice-upstream"), "--listen", f"127.0.0.1:{up}", "--no-record"], stdout=subprocess.DEVNULL)
    sl = subprocess.Popen([os.path.join(DIST, "sluice"), "--host", "127.0.0.1", "--port", str(port), "--target-host", "127.0.0.1",
                           "--target-port", str(up), "--read-timeout", "2", "--client-header-timeout", "2",
                           "--client-idle-timeout", "5", "--circuit-breaker-threshold", "1000000", "--log-level", "error"],
                          stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    raw(port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    start = stats(sl.pid)
    until = time.time() + SECONDS
    threads = [threading.Thread(target=chaos, args=(port, until)) for _ in range(8)]
    load = subprocess.Popen([os.path.join(REL, "sluice-load"), "--url", f"http://127.0.0.1:{port}/?body_bytes=1000",
                             "--concurrent", "16", "--duration", str(SECONDS), "--json"], stdout=subprocess.PIPE)
    for t in threads:
        t.start()
    peak = start["rss_kib"]
    while time.time() < until and sl.poll() is None:
        time.sleep(1)
        peak = max(peak, stats(sl.pid)["rss_kib"])
    for t in threads:
        t.join()
    out = load.communicate()[0].decode()
    time.sleep(8)  # idle and header timeouts let every leftover connection go
    crashed = sl.poll() is not None
    end = stats(sl.pid) if not crashed else {}
    reply = raw(port, b"GET /proxy-metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n") or b""
    m = re.search(rb'"client_connections":(\d+)', reply)
    clients = int(m.group(1)) if m else -1
    sl.terminate(); ups.terminate()
    print(f"soak: {SECONDS:.0f}s, crashed: {crashed}")
    print(f"start: {start}")
    print(f"end:   {end}  (peak RSS {peak} KiB)")
    print(f"normal traffic: {out.strip()[:400]}")
    print(f"client connections left open: {clients - 1} (the metrics request itself excluded)")
    # Extra fds allowed: the idle upstream pool (pool_maxsize, default 50) that ureq keeps for reuse.
    ok = (not crashed and clients == 1 and end["fds"] <= start["fds"] + 50
          and end["threads"] <= start["threads"] + 2)
    print("soak: PASS" if ok else "soak: FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
