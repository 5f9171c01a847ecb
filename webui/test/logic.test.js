// The app's pure rules, in Node's own test runner (no dependencies): argument checking, plain
// error sentences, chart steps and gaps, relative times.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { ApiError, explain } from '../public/js/api.js';
import { runs, stepFor } from '../public/js/chart.js';
import { parseArgs } from '../public/js/commands.js';
import { ago } from '../public/js/dom.js';

test('arguments must be a JSON object', () => {
  assert.deepEqual(parseArgs('{"seconds": 30}'), { value: { seconds: 30 } });
  assert.deepEqual(parseArgs('  '), { value: {} });
  assert.match(parseArgs('{"seconds": 30').error, /^Not valid JSON/);
  for (const text of ['[1, 2]', 'null', '42', '"open"']) {
    assert.match(parseArgs(text).error, /must be a JSON object/, text);
  }
});

test('a broker outage is said plainly, with the wait the API asked for', () => {
  const err = new ApiError(503, 'message broker unavailable; retry later', '5');
  assert.equal(explain(err), 'not accepted: the broker is unavailable — try again in 5 s');
  assert.equal(explain(new ApiError(503, 'database unavailable (no connection)', '2'), 'could not load'),
    'could not load: the database is unavailable — try again in 2 s');
  assert.equal(explain(new ApiError(503, 'service unavailable; retry later', null)),
    'not accepted: the service is unavailable — try again shortly');
});

test('other failures name their cause', () => {
  assert.match(explain(new ApiError(0, null, null)), /server cannot be reached/);
  assert.match(explain(new ApiError(429, "the device's command queue is full (100 pending); retry later", '1')),
    /too many commands waiting — try again in 1 s/);
  assert.match(explain(new ApiError(429, 'rate limited; slow down and retry', '1')), /too many requests/);
  assert.equal(explain(new ApiError(422, [{ loc: ['body', 'ttl'], msg: 'too large', type: 'x' }], null)),
    'not accepted: ttl: too large');
  assert.match(explain(new ApiError(404, 'no such device', null)), /not found/);
  assert.match(explain(new ApiError(500, null, null)), /server failed \(HTTP 500\)/);
  assert.match(explain(new Error('boom')), /something went wrong in the page \(boom\)/);
});

test('chart steps keep every range to at most about 150 points', () => {
  const hour = 3600e3;
  assert.equal(stepFor(0, hour), 30);
  assert.equal(stepFor(0, 24 * hour), 600);
  assert.equal(stepFor(0, 7 * 24 * hour), 7200);
  for (const span of [60e3, hour, 5 * hour, 90 * 24 * hour, 400 * 24 * hour]) {
    assert.ok(span / 1000 / stepFor(0, span) <= 150, `span ${span}`);
  }
});

test('a missing bucket breaks the line', () => {
  const p = (t) => ({ t });
  assert.deepEqual(runs([p(0), p(60), p(120), p(300), p(360)], 60), [[p(0), p(60), p(120)], [p(300), p(360)]]);
  assert.deepEqual(runs([], 60), []);
  const sparse = [0, 90, 180, 270, 900, 990].map(p); // every 90 s into 30 s buckets, one gap
  assert.deepEqual(runs(sparse, 30), [sparse.slice(0, 4), sparse.slice(4)]);
});

test('relative times', () => {
  const now = Date.parse('2026-11-30T10:00:00Z');
  assert.equal(ago(null, now), 'never');
  assert.equal(ago('2026-11-30T09:59:48Z', now), '12 s ago');
  assert.equal(ago('2026-11-30T09:55:00Z', now), '5 min ago');
  assert.equal(ago('2026-11-30T07:00:00Z', now), '3 h ago');
  assert.equal(ago('2026-11-28T10:00:00Z', now), '2 d ago');
});
