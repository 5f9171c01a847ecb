// The app's pure rules, in Node's own test runner (no dependencies): argument checking, plain
// error sentences, chart steps and gaps, relative times, labels, rollout bodies and actions.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { ApiError, explain } from '../public/js/api.js';
import { runs, stepFor } from '../public/js/chart.js';
import { parseArgs } from '../public/js/commands.js';
import { ago } from '../public/js/dom.js';
import { actionsFor, countsText, describeTarget, formatLabels, parseLabels, parsePhases, rolloutBody, settled } from '../public/js/rules.js';

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

test('labels are key=value pairs, by commas or lines', () => {
  assert.deepEqual(parseLabels('site=north, model = esp32-s3\nroom=2=b'), { value: { site: 'north', model: 'esp32-s3', room: '2=b' } });
  assert.deepEqual(parseLabels('  '), { value: {} });
  assert.deepEqual(parseLabels('empty='), { value: { empty: '' } });
  assert.match(parseLabels('site').error, /is not key=value/);
  assert.match(parseLabels('bad key=1').error, /not a label key/);
  assert.match(parseLabels('a=1, a=2').error, /given twice/);
  assert.match(parseLabels(`a=${'x'.repeat(129)}`).error, /longer than 128/);
  assert.match(parseLabels(Array.from({ length: 17 }, (_, i) => `k${i}=v`).join(',')).error, /at most 16/);
  assert.equal(formatLabels({ site: 'north', model: 'esp32' }), 'model=esp32, site=north');
  assert.equal(formatLabels({}), '');
});

test('phases are rising numbers', () => {
  assert.deepEqual(parsePhases('1, 10, 100'), { value: [1, 10, 100] });
  assert.deepEqual(parsePhases('5 50'), { value: [5, 50] });
  assert.match(parsePhases('10, 10').error, /cumulative/);
  assert.match(parsePhases('0, 10').error, /above 0/);
  assert.match(parsePhases('a').error, /above 0/);
  assert.match(parsePhases('').error, /at least one/);
});

const form = {
  target: 'selection', labels: '', name: 'configure', args: '{"interval": 30}', ttl: '600', phases: '25, 100',
  unit: 'percent', rate: '600', wait: '0', approval: true, share: '50', min: '10', start: true,
};

test('a rollout body from the form, or the field to fix', () => {
  assert.deepEqual(rolloutBody(form, ['a', 'b']).value, {
    command: { name: 'configure', args: { interval: 30 }, ttl: 600 },
    target: { device_ids: ['a', 'b'] },
    phases: [25, 100],
    phase_unit: 'percent',
    rate_per_minute: 600,
    phase_wait_seconds: 0,
    approval: true,
    max_failure_share: 0.5,
    min_finished: 10,
    start: true,
  });
  assert.deepEqual(rolloutBody({ ...form, target: 'labels', labels: 'site=north' }, []).value.target, { labels: { site: 'north' } });
  assert.deepEqual(rolloutBody({ ...form, target: 'all' }, []).value.target, { all: true });
  assert.equal(rolloutBody(form, []).field, 'target');
  assert.equal(rolloutBody({ ...form, target: 'labels', labels: '' }, []).field, 'labels');
  assert.equal(rolloutBody({ ...form, name: 'no spaces' }, ['a']).field, 'name');
  assert.equal(rolloutBody({ ...form, args: '[1]' }, ['a']).field, 'args');
  assert.equal(rolloutBody({ ...form, ttl: '1.5' }, ['a']).field, 'ttl');
  assert.equal(rolloutBody({ ...form, share: '101' }, ['a']).field, 'share');
  assert.equal(rolloutBody({ ...form, phases: '50, 150' }, ['a']).field, 'phases');
  assert.deepEqual(rolloutBody({ ...form, phases: '1, 150', unit: 'count' }, ['a']).value.phases, [1, 150]);
});

const rollout = (state, sent, phase, counts, approval = true) => ({
  state, sent, phase, approval, phases: [{ index: 0, size: 1, counts }, { index: 1, size: 3, counts: {} }],
});

test('the rollout actions that apply', () => {
  const on = (a) => Object.keys(a).filter((k) => k !== 'awaiting' && a[k]).sort();
  assert.deepEqual(on(actionsFor(rollout('scheduled', 0, 0, {}))), ['cancel', 'start']);
  assert.deepEqual(on(actionsFor(rollout('running', 1, 0, { delivered: 1 }))), ['cancel', 'pause']);
  const awaiting = actionsFor(rollout('paused', 1, 0, { succeeded: 1 }));
  assert.equal(awaiting.awaiting, true);
  assert.deepEqual(on(awaiting), ['approve', 'cancel']);
  // paused by a person before the phase finished: resume, or approve the next phase early
  assert.deepEqual(on(actionsFor(rollout('paused', 1, 0, { delivered: 1 }))), ['approve', 'cancel', 'resume']);
  assert.deepEqual(on(actionsFor(rollout('paused', 0, 0, {}))), ['cancel', 'resume']);
  assert.deepEqual(on(actionsFor({ ...rollout('paused', 4, 1, {}), phase: 1 })), ['cancel', 'resume']);
  for (const s of ['completed', 'aborted', 'cancelled']) assert.deepEqual(on(actionsFor(rollout(s, 4, 1, {}))), []);
});

test('a phase in words, and when a rollout is settled', () => {
  assert.equal(countsText({ size: 5, counts: { queued: 1, succeeded: 2, failed: 1 } }), '2 succeeded · 1 failed · 1 queued · 1 not sent');
  assert.equal(countsText({ size: 0, counts: {} }), 'nothing yet');
  assert.equal(settled(rollout('aborted', 1, 0, { queued: 1 })), false);
  assert.equal(settled(rollout('aborted', 1, 0, { cancelled: 1 })), true);
  assert.equal(settled(rollout('paused', 1, 0, { succeeded: 1 })), false);
  assert.equal(describeTarget({ device_ids: ['a'] }), '1 chosen device');
  assert.equal(describeTarget({ labels: { site: 'north' } }), 'devices labelled site=north');
  assert.equal(describeTarget({ all: true }), 'all devices');
});
