#!/usr/bin/env python3
"""The dashboard page in a real browser (README "Monitoring"): headless Chromium driven through
chromedriver's WebDriver HTTP API (Debian's chromium and chromium-driver; plain urllib, no
library), against a real sluice process and the real test upstream on 127.0.0.1, under a small
bounded load with a failing phase (the upstream answers 503 until the breaker opens).

Checks: the rendered numbers are /proxy-metrics' numbers at that moment (within one poll; equal
once the load stopped); the breaker opening shows within two polls; the page asks no other host
(Chromium's own network log; every other host name resolves nowhere); no script error; no
sideways scrolling at a phone's width. Writes the screenshot target/dashboard.png
(docs/dashboard.png with SLUICE_UPDATE_SCREENSHOT=1).
Run by tests/dashboard.sh; prints one "dashboard: ok|FAILED - ..." line per check.
"""
import base64
import queue
import re
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
EVERY = 1.0  # the page's poll interval in this test (?every=1)
passed = failed = 0


def ok(what):
    global passed
    passed += 1
    print(f"dashboard: ok - {what}", flush=True)


def bad(what):
    global failed
    failed += 1
    print(f"dashboard: FAILED - {what}", flush=True)


def check(cond, what, detail=""):
    (ok if cond else bad)(what if cond or not detail else f"{what}: {detail}")
    return cond


def port_said(stream, pattern, seconds=15):
    """The port a process prints once it listens (each is started on port 0: no race with
    other programs for a port); the rest of its output is read and dropped."""
    lines = queue.Queue()

    def drain():
        for line in stream:
            lines.put(line)

    threading.Thread(target=drain, daemon=True).start()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            m = re.search(pattern, lines.get(timeout=0.2).decode(errors="replace"))
        except queue.Empty:
            continue
        if m:
            return int(m.group(1))
    raise RuntimeError(f"no line matching {pattern!r} within {seconds} s")


def get_json(url, body=None, method=None, timeout=10):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


def wait_for(cond, seconds, step=0.05):
    """Polls cond() until it is truthy or `seconds` passed; returns its last value."""
    end = time.monotonic() + seconds
    while True:
        v = cond()
        if v or time.monotonic() > end:
            return v
        time.sleep(step)


class WebDriver:
    """The few WebDriver commands the test needs, over chromedriver's HTTP API."""

    def __init__(self, port, chrome_args):
        self.base = f"http://127.0.0.1:{port}"
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": shutil.which("chromium"), "args": chrome_args},
            "goog:loggingPrefs": {"browser": "ALL", "performance": "ALL"},
        }}}
        self.sid = get_json(f"{self.base}/session", caps, timeout=60)["value"]["sessionId"]

    def cmd(self, method, path, body=None):
        url = f"{self.base}/session/{self.sid}{path}"
        return get_json(url, body if body is not None else ({} if method == "POST" else None),
                        method=method, timeout=30)["value"]

    def js(self, script, *args):
        return self.cmd("POST", "/execute/sync", {"script": script, "args": list(args)})

    def screen(self, width, height, mobile):
        """The page's viewport, as a laptop's or a phone's (DevTools device emulation)."""
        self.cmd("POST", "/goog/cdp/execute", {"cmd": "Emulation.setDeviceMetricsOverride", "params": {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}})

    def log(self, kind):
        return self.cmd("POST", "/se/log", {"type": kind})

    def quit(self):
        try:
            self.cmd("DELETE", "")
        except Exception:
            pass


class Load:
    """Bounded load: a few client threads, each pacing its own requests, until stop() or `limit`
    seconds. Kinds: fast requests, slow ones, upstream 500s, and clients that give up."""

    def __init__(self, port, limit):
        self.port, self.stop_at, self.threads = port, time.monotonic() + limit, []
        self.halt = threading.Event()
        kinds = [("/api/items?delay_ms=20", 0.05, 5)] * 4 + [("/api/report?delay_ms=700", 0.1, 5)] * 2 \
            + [("/api/flaky?status=500&delay_ms=50", 0.5, 5)] + [("/api/export?delay_ms=3000", 1.0, 0.8)]
        for path, pause, timeout in kinds:
            t = threading.Thread(target=self.client, args=(path, pause, timeout), daemon=True)
            t.start()
            self.threads.append(t)

    def client(self, path, pause, timeout):
        conn = None
        for _ in range(10_000):
            if self.halt.is_set() or time.monotonic() > self.stop_at:
                break
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
                conn.request("GET", path)
                conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
            self.halt.wait(pause)
        if conn is not None:
            conn.close()

    def stop(self):
        self.halt.set()
        for t in self.threads:
            t.join(10)


def prefix_proxy(base, prefix):
    """A reverse proxy that serves sluice under `prefix` (as an ingress would), on a free port;
    records the paths asked of it."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            if not self.path.startswith(prefix + "/"):
                self.send_error(404)
                return
            try:
                with urllib.request.urlopen(base + self.path[len(prefix):], timeout=10) as r:
                    status, ctype, body = r.status, r.headers["Content-Type"], r.read()
            except urllib.error.HTTPError as e:
                status, ctype, body = e.code, e.headers["Content-Type"], e.read()
            self.send_response(status)
            self.send_header("Content-Type", ctype or "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


READ_DOM = """
const out = {};
for (const b of document.querySelectorAll('[data-k]')) out[b.dataset.k] = b.dataset.v;
out._polls = +(document.body.dataset.polls || 0);
out._status = document.getElementById('status').textContent;
out._transitions = document.getElementById('transitions').textContent;
out._errors = document.getElementById('errors').textContent;
return out;
"""
EXACT = ["total_requests", "failed_requests", "client_aborted_requests", "retried_requests",
         "active_requests", "queue_size", "p50_response_time", "p95_response_time",
         "p99_response_time", "p99_queue_wait", "success_rate", "circuit_state",
         "circuit_times_opened", "consecutive_failures"]


def same(dom_value, value):
    if isinstance(value, str):
        return dom_value == value
    try:
        return abs(float(dom_value) - float(value)) <= 1e-9 * max(1.0, abs(float(value)))
    except (TypeError, ValueError):
        return False


def main():
    work = tempfile.mkdtemp(prefix="sluice-dashboard-")
    procs = []

    def spawn(args, said, pattern):
        """Starts a process (ended after 120 s at most) and returns the port it listens on."""
        out = {"stdout": subprocess.PIPE, "stderr": subprocess.DEVNULL}
        if said == "stderr":
            out = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
        p = subprocess.Popen(["timeout", "120"] + args, **out)
        procs.append(p)
        return port_said(p.stdout if said == "stdout" else p.stderr, pattern)

    driver = load = None
    try:
        up = spawn([f"{BIN}/sluice-upstream", "--listen", "127.0.0.1:0", "--no-record"],
                   "stdout", r"listening on 127\.0\.0\.1:(\d+)")
        port = spawn([f"{BIN}/sluice", "--host", "127.0.0.1", "--port", "0",
                      "--target-host", "127.0.0.1", "--target-port", str(up),
                      "--max-concurrent-requests", "4", "--max-queue-size", "8", "--queue-timeout", "3",
                      "--max-retries", "0", "--circuit-breaker-threshold", "5",
                      "--circuit-breaker-timeout", "3"],
                     "stderr", r"listening on 127\.0\.0\.1:(\d+)")
        cd = spawn(["chromedriver", "--port=0"], "stdout", r"started successfully on port (\d+)")
        base = f"http://127.0.0.1:{port}"
        metrics = lambda: get_json(f"{base}/proxy-metrics")
        upstream_fail = lambda status: urllib.request.urlopen(
            f"http://127.0.0.1:{up}/__upstream/fail?status={status}", timeout=5).read()

        def up_and_running():
            try:
                get_json(f"{base}/proxy-health", timeout=1)
                urllib.request.urlopen(f"http://127.0.0.1:{cd}/status", timeout=1).read()
                return True
            except OSError:
                return False

        if not check(wait_for(up_and_running, 15, 0.1), "sluice, the upstream and chromedriver start"):
            return
        driver = WebDriver(cd, [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={work}/profile", "--window-size=1280,900",
            # Every host name but 127.0.0.1 resolves nowhere: a request elsewhere could not leave.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        ])
        load = Load(port, 60)
        time.sleep(1.0)
        driver.cmd("POST", "/url", {"url": f"{base}/proxy-dashboard?every={EVERY:g}"})
        dom = lambda: driver.js(READ_DOM)
        check(wait_for(lambda: dom()["_polls"] >= 3, 10, 0.2), "the page polls proxy-metrics and draws")

        # Under load: the page's total is between a read before its last poll and one after.
        before = metrics()["metrics"]
        time.sleep(EVERY + 0.3)
        d = dom()
        after = metrics()["metrics"]
        check(before["total_requests"] <= int(d.get("total_requests", -1)) <= after["total_requests"],
              "under load, the page shows /proxy-metrics' total within one poll",
              f"{before['total_requests']} <= {d.get('total_requests')} <= {after['total_requests']}")
        check(float(d.get("rate_total", 0)) > 5, "the page shows a request rate under load", str(d.get("rate_total")))
        groups = "const p = document.getElementById('p-groups'); return p.hidden ? '' : p.textContent"
        check(wait_for(lambda: "127.0.0.1" in driver.js(groups), 2 * EVERY + 2, 0.1),
              "under load, the top client groups table shows the load's group (top_groups)",
              driver.js(groups))
        time.sleep(4)

        # The failing phase: the upstream answers 503 until the breaker opens.
        upstream_fail(503)
        opened = wait_for(lambda: metrics()["metrics"]["circuit_state"] == "open" and time.monotonic(), 15)
        shown = opened and wait_for(lambda: dom().get("circuit_state") == "open" and time.monotonic(),
                                    2 * EVERY + 2, 0.05)
        if check(bool(opened) and bool(shown), "the breaker opens and the page shows it"):
            check(shown - opened <= 2 * EVERY + 0.3, "the breaker change appears within two polls",
                  f"{shown - opened:.2f} s")
        d = dom()
        check("breaker open for" in d["_status"], "the status says the breaker is open", d["_status"])
        check("closed → open" in d["_transitions"], "the transition is marked", d["_transitions"])
        time.sleep(3.5)
        upstream_fail(0)
        closed = wait_for(lambda: metrics()["metrics"]["circuit_state"] == "closed", 15, 0.1)
        check(closed, "the breaker closes again once the upstream recovers")
        time.sleep(6)

        # The screenshot, the whole page at a laptop's width.
        h = driver.js("return document.documentElement.scrollHeight")
        driver.screen(1280, min(2000, h), mobile=False)
        time.sleep(EVERY + 0.5)
        h = driver.js("return document.documentElement.scrollHeight")
        driver.screen(1280, min(2000, h), mobile=False)
        png = base64.b64decode(driver.cmd("GET", "/screenshot"))
        # target/ by default, so a test run leaves the tree clean; SLUICE_UPDATE_SCREENSHOT=1
        # writes the one docs/ shows.
        shot = ("docs" if os.environ.get("SLUICE_UPDATE_SCREENSHOT") == "1" else "target")
        with open(os.path.join(ROOT, shot, "dashboard.png"), "wb") as f:
            f.write(png)
        check(png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000, f"screenshot written to {shot}/dashboard.png",
              f"{len(png)} bytes")

        # Load stopped and settled: every number on the page is /proxy-metrics' number.
        load.stop()
        settle = lambda: (lambda m: m["active_requests"] == 0 and m["queue_size"] == 0 and m)(metrics()["metrics"])
        wait_for(settle, 10, 0.1)
        time.sleep(2 * EVERY + 0.5)
        m = metrics()["metrics"]
        d = dom()
        wrong = [f"{k}: page {d.get(k)!r}, /proxy-metrics {m[k]!r}" for k in EXACT if not same(d.get(k), m[k])]
        check(not wrong, f"at rest, the page's {len(EXACT)} numbers equal /proxy-metrics'", "; ".join(wrong))

        # A phone's width: one column, nothing wider than the screen.
        driver.screen(390, 800, mobile=True)
        time.sleep(EVERY + 0.5)
        w = driver.js("return [document.documentElement.scrollWidth, window.innerWidth]")
        check(w[0] <= w[1], "at a phone's width nothing scrolls sideways", f"scrollWidth {w[0]} > {w[1]}")

        # Nothing asked of any other host, and no script error.
        # (The browser's own new-tab page, before the test navigated, asks chrome:// only.)
        sent = [json.loads(e["message"])["message"]["params"] for e in driver.log("performance")
                if '"Network.requestWillBeSent"' in e["message"]]
        ours = [p["request"]["url"] for p in sent if p.get("documentURL", "").startswith(base + "/")]
        anywhere = [p["request"]["url"] for p in sent if p["request"]["url"].startswith(("http", "ws"))]
        others = sorted({u for u in ours + anywhere
                         if not u.startswith(base + "/") and not u.startswith("data:")})
        polls = [u for u in ours if u == f"{base}/proxy-metrics"]
        check(len(polls) >= 10 and not others, "the page asks only sluice (its own origin)",
              f"{len(polls)} polls; other requests: {others}")
        page_entries = driver.js("return performance.getEntries().map(e => e.name).filter(n => n.includes('://'))")
        check(all(u.startswith(base + "/") for u in page_entries), "the page's resource timing names only sluice",
              str([u for u in page_entries if not u.startswith(base + "/")]))
        errors = [e["message"] for e in driver.log("browser") if e["level"] == "SEVERE"]
        d = dom()
        check(not errors and not d["_errors"], "the page renders without script errors", f"{errors} {d['_errors']}")

        # Under a path prefix (an ingress, a port-forward through a gateway): relative URLs only.
        server, seen = prefix_proxy(base, "/ops/sluice")
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/ops/sluice/proxy-dashboard?every={EVERY:g}"
            driver.cmd("POST", "/url", {"url": url})
            drawn = wait_for(lambda: dom()["_polls"] >= 2, 10, 0.2)
            check(drawn and "/ops/sluice/proxy-metrics" in seen and not dom()["_errors"],
                  "under a path prefix the page polls the prefixed proxy-metrics", str(sorted(set(seen))))
        finally:
            server.shutdown()
    except Exception as e:  # a broken step is a failure with its reason, not a traceback only
        where = traceback.extract_tb(e.__traceback__)[-1]
        bad(f"the browser test stopped at line {where.lineno} ({where.line}): {type(e).__name__}: {e}")
    finally:
        if load:
            load.stop()
        if driver:
            driver.quit()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
    print(f"dashboard browser: {passed} passed, {failed} failed", flush=True)
    sys.exit(1 if failed else 0)
