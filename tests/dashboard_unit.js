// Unit test of the dashboard page's data shaping (src/front/dashboard.html): the page's own
// script, taken from the HTML and run under node (no DOM: the drawing half does not start).
// Rates from counters, restarts, window trimming, transitions, status words, settings line,
// the optional health-check and client-group fields. Run by tests/dashboard.sh.
'use strict';
const fs = require('fs');
const path = require('path');
const assert = require('assert');

const html = fs.readFileSync(path.join(__dirname, '..', 'src', 'front', 'dashboard.html'), 'utf8');
const script = html.slice(html.indexOf('<script>') + 8, html.lastIndexOf('</script>'));
const module_ = { exports: {} };
new Function('module', script)(module_);
const D = module_.exports;

let passed = 0, failed = 0;
function test(name, f) {
  try { f(); passed++; console.log(`dashboard: ok - unit: ${name}`); }
  catch (e) { failed++; console.log(`dashboard: FAILED - unit: ${name}: ${e.message}`); }
}

// A /proxy-metrics answer with the given fields.
function metrics(up, m, extra) {
  return Object.assign({ status: 'running', uptime_seconds: up, target: 'http://u:80', version: '0.1.0',
    metrics: Object.assign({ total_requests: 0, outcomes: {}, active_requests: 0, max_concurrent_requests: 50,
      queue_size: 0, max_queue_size: 100, p50_response_time: 0.01, p95_response_time: 0.02,
      p99_response_time: 0.03, p99_queue_wait: 0, circuit_state: 'closed',
      seconds_since_circuit_transition: up, circuit_times_opened: 0, consecutive_failures: 0 }, m),
    config: {} }, extra || {});
}

test('rates come from counter differences over the server uptime', () => {
  const a = D.sampleOf(metrics(10, { total_requests: 100, outcomes: { ok: 90, upstream_5xx: 10, queue_full: 0 } }), 1000);
  const b = D.sampleOf(metrics(12, { total_requests: 160, outcomes: { ok: 140, upstream_5xx: 14, queue_full: 6 } }), 3100);
  assert.deepStrictEqual(D.ratesBetween(a, b), { ok: 25, upstream_5xx: 2, queue_full: 3 });
});

test('a restart (counters going back) or no interval gives no rate', () => {
  const a = D.sampleOf(metrics(500, { total_requests: 1000, outcomes: { ok: 1000 } }), 0);
  const b = D.sampleOf(metrics(2, { total_requests: 10, outcomes: { ok: 10 } }), 2000);
  assert.strictEqual(D.ratesBetween(a, b), null);
  assert.strictEqual(D.ratesBetween(a, a), null);
});

test('the window keeps 15 minutes and the sample just before', () => {
  const s = [];
  for (let t = 0; t <= 20 * 60; t += 2) s.push({ t: t * 1000 });
  const kept = D.trim(s, 20 * 60 * 1000, D.WINDOW_MS);
  assert.strictEqual(kept[0].t, 5 * 60 * 1000);
  assert.strictEqual(kept.length, 15 * 30 + 1);
  assert.strictEqual(D.trim([{ t: 5 }], 10 * D.WINDOW_MS, D.WINDOW_MS).length, 1, 'never empty');
  assert.strictEqual(D.spanOf(kept, 20 * 60 * 1000), D.WINDOW_MS);
  assert.strictEqual(D.spanOf(kept.slice(-5), 20 * 60 * 1000), 20 * 1000, 'at least 20 s');
});

test('stacked series: outcomes seen in the window, usual ones first, zeros kept in place', () => {
  const s = [
    D.sampleOf(metrics(0, { outcomes: { ok: 0, circuit_open: 0, upstream_5xx: 0, queue_full: 0 } }), 0),
    D.sampleOf(metrics(1, { total_requests: 10, outcomes: { ok: 10, circuit_open: 0, upstream_5xx: 0, queue_full: 0 } }), 1000),
    D.sampleOf(metrics(2, { total_requests: 25, outcomes: { ok: 12, circuit_open: 8, upstream_5xx: 5, queue_full: 0 } }), 2000),
  ];
  const series = D.rateSeries(s);
  assert.deepStrictEqual(series.map(x => x.label), ['ok', 'upstream_5xx', 'circuit_open']);
  assert.deepStrictEqual(series[2].values.map(v => v.v), [0, 8]);
  assert.ok(series.every(x => /^#[0-9A-F]{6}$/.test(x.colour)));
});

test('breaker transitions are placed by seconds_since_circuit_transition', () => {
  const s = [
    D.sampleOf(metrics(10, { circuit_state: 'closed' }), 10000),
    D.sampleOf(metrics(12, { circuit_state: 'open', seconds_since_circuit_transition: 0.5, circuit_times_opened: 1 }), 12000),
    D.sampleOf(metrics(14, { circuit_state: 'open', seconds_since_circuit_transition: 2.5, circuit_times_opened: 1 }), 14000),
    D.sampleOf(metrics(16, { circuit_state: 'open', seconds_since_circuit_transition: 0.1, circuit_times_opened: 2 }), 16000),
  ];
  assert.deepStrictEqual(D.transitions(s), [
    { t: 11500, from: 'closed', to: 'open' },
    { t: 16000, from: 'open', to: 'open again' },
  ]);
});

test('status words: healthy, then the worst first', () => {
  const st = (m, rates, extra) => D.statusWords(D.sampleOf(metrics(100, m, extra), 0), rates || null, 1);
  assert.deepStrictEqual(st({}), { level: 'ok', text: 'healthy' });
  assert.deepStrictEqual(st({ p99_response_time: 4.8 }), { level: 'warn', text: 'upstream slow: p99 4.8 s' });
  assert.deepStrictEqual(st({ queue_size: 90 }), { level: 'bad', text: 'queue 90 % full' });
  assert.deepStrictEqual(st({ circuit_state: 'open', seconds_since_circuit_transition: 23.2 }),
    { level: 'bad', text: 'breaker open for 23 s' });
  assert.strictEqual(st({ active_requests: 50 }).text, 'all 50 workers busy');
  assert.strictEqual(st({}, { ok: 60, upstream_5xx: 40 }).text, 'upstream failing: 40 % of requests');
  assert.strictEqual(st({ queue_size: 60, p99_response_time: 2 }).text, 'queue 60 % full · upstream slow: p99 2.0 s');
  assert.strictEqual(st({}, null, { status: 'draining' }).level, 'bad');
});

test('health-check fields are read when present and skipped when absent', () => {
  assert.strictEqual(D.healthOf(metrics(1, {})), null);
  assert.strictEqual(D.healthOf(metrics(1, { health_check_healthy: false, health_check_latency: 0.2 })).state, 'unhealthy');
  assert.strictEqual(D.healthOf(metrics(1, { health_check_state: 'healthy' })).state, 'healthy');
  assert.strictEqual(D.healthOf(metrics(1, { health_check_state: 'off', health_checks_passed: 0 })), null);
  const h = D.healthOf(metrics(1, {}, { health_check: { status: 'down', last_latency: 5 } }));
  assert.strictEqual(h.state, 'unhealthy');
  assert.strictEqual(h.fields.health_check_last_latency, 5);
});

test('client groups are read as a list or a map, absent otherwise', () => {
  assert.strictEqual(D.groupsOf(metrics(1, {})), null);
  const list = D.groupsOf(metrics(1, { top_groups: [{ group: '10.0.0.1', in_flight: 3, queued: 1 }] }));
  assert.deepStrictEqual(list.rows, [{ group: '10.0.0.1', in_flight: 3, queued: 1 }]);
  const map = D.groupsOf(metrics(1, { client_groups: { a: 5, b: { in_flight: 1 } } }));
  assert.deepStrictEqual(map.rows, [{ group: 'a', requests: 5 }, { group: 'b', in_flight: 1 }]);
});

test('settings line and number formats', () => {
  assert.strictEqual(D.settingsLine({ max_concurrent_requests: 50, max_queue_size: 100, read_timeout: 300, health_check_path: '' }),
    'workers 50 · queue 100 · read_timeout 300 s');
  assert.deepStrictEqual([0.0000421, 0.0042, 0.042, 0.42, 4.2, 600].map(D.fmtDur),
    ['42 µs', '4.20 ms', '42.0 ms', '420 ms', '4.2 s', '10 min']);
  assert.deepStrictEqual([0, 45000, 600000].map(D.fmtAgo), ['now', '−45 s', '−10 min']);
  assert.strictEqual(D.fmtUptime(3725), '1h 2m');
  assert.deepStrictEqual([0, 2.5, 50, 112.34].map(D.fmtAxis), ['0', '2.5', '50', '112']);
  assert.deepStrictEqual([0, 0.8, 1, 8.4, 9.24, 112, 0.0931].map(D.niceTop), [1, 1, 1, 10, 10, 200, 0.1]);
});

console.log(`dashboard unit: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
