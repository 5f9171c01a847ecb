// Pure rules of the labels editor and the rollouts views (no DOM, no calls): what a person typed
// turned into API bodies, or a sentence saying what is wrong; which rollout actions apply now.
// Node's test runner checks them (test/logic.test.js).

const LABEL_KEY = /^[A-Za-z0-9_.-]{1,64}$/;
const MAX_LABELS = 16;
const MAX_LABEL_VALUE = 128;

/** `site=north, model=esp32` (commas or new lines) as an object, or a sentence. */
export function parseLabels(text) {
  const labels = {};
  const parts = String(text).split(/[,\n]/).map((p) => p.trim()).filter(Boolean);
  for (const part of parts) {
    const eq = part.indexOf('=');
    if (eq < 0) return { error: `“${part}” is not key=value` };
    const key = part.slice(0, eq).trim();
    const value = part.slice(eq + 1).trim();
    if (!LABEL_KEY.test(key)) return { error: `“${key}” is not a label key: 1 to 64 letters, digits, “_”, “.” or “-”` };
    if (value.length > MAX_LABEL_VALUE) return { error: `the value of “${key}” is longer than ${MAX_LABEL_VALUE} characters` };
    if (key in labels) return { error: `“${key}” is given twice` };
    labels[key] = value;
  }
  if (Object.keys(labels).length > MAX_LABELS) return { error: `at most ${MAX_LABELS} labels` };
  return { value: labels };
}

/** Labels as the editor shows them: `key=value` pairs, sorted by key. */
export function formatLabels(labels, separator = ', ') {
  return Object.keys(labels || {}).sort().map((k) => `${k}=${labels[k]}`).join(separator);
}

/** `1, 10, 100` as rising numbers, or a sentence. */
export function parsePhases(text) {
  const parts = String(text).split(/[,\s]+/).filter(Boolean);
  if (!parts.length) return { error: 'give at least one phase, like 1, 10, 100' };
  if (parts.length > 10) return { error: 'at most 10 phases' };
  const phases = parts.map(Number);
  if (phases.some((p) => !Number.isFinite(p) || p <= 0)) return { error: 'each phase is a number above 0' };
  if (phases.some((p, i) => i > 0 && p <= phases[i - 1])) {
    return { error: 'phases are cumulative: each larger than the one before' };
  }
  return { value: phases };
}

function number(text, what, { min, max, integer = false }) {
  const n = Number(String(text).trim());
  if (String(text).trim() === '' || !Number.isFinite(n) || n < min || n > max || (integer && !Number.isInteger(n))) {
    return { error: `${what} is ${integer ? 'a whole number' : 'a number'} from ${min} to ${max}` };
  }
  return { value: n };
}

/**
 * The body of POST /rollouts from the form's fields (all strings, checkboxes as booleans), or
 * `{ error, field }` naming the field to fix. `selected` are the device ids picked in the list.
 */
export function rolloutBody(f, selected) {
  let target;
  if (f.target === 'selection') {
    if (!selected.length) return { error: 'no device is selected: tick them in the device list', field: 'target' };
    target = { device_ids: selected };
  } else if (f.target === 'labels') {
    const labels = parseLabels(f.labels);
    if (labels.error) return { error: `label selector: ${labels.error}`, field: 'labels' };
    if (!Object.keys(labels.value).length) return { error: 'give the labels to select by, like site=north', field: 'labels' };
    target = { labels: labels.value };
  } else {
    target = { all: true };
  }
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(f.name)) {
    return { error: 'the command name is 1 to 64 letters, digits, “_”, “.” or “-”', field: 'name' };
  }
  let args;
  try {
    args = JSON.parse(String(f.args).trim() === '' ? '{}' : f.args);
  } catch (err) {
    return { error: `arguments are not valid JSON: ${err.message}`, field: 'args' };
  }
  if (args === null || typeof args !== 'object' || Array.isArray(args)) {
    return { error: 'arguments must be a JSON object, like {"interval": 30}', field: 'args' };
  }
  const checks = {
    ttl: number(f.ttl, 'the time to live', { min: 1, max: 172800, integer: true }),
    rate: number(f.rate, 'the rate', { min: 0.01, max: 100000 }),
    wait: number(f.wait, 'the wait between phases', { min: 0, max: 604800 }),
    share: number(f.share, 'the failure threshold', { min: 0, max: 100 }),
    min: number(f.min, 'the minimum of finished commands', { min: 1, max: 1000000, integer: true }),
  };
  for (const [field, c] of Object.entries(checks)) if (c.error) return { error: c.error, field };
  const phases = parsePhases(f.phases);
  if (phases.error) return { error: phases.error, field: 'phases' };
  if (f.unit === 'percent' && phases.value[phases.value.length - 1] > 100) {
    return { error: 'phases in percent go up to 100', field: 'phases' };
  }
  return {
    value: {
      command: { name: f.name, args, ttl: checks.ttl.value },
      target,
      phases: phases.value,
      phase_unit: f.unit === 'count' ? 'count' : 'percent',
      rate_per_minute: checks.rate.value,
      phase_wait_seconds: checks.wait.value,
      approval: Boolean(f.approval),
      max_failure_share: checks.share.value / 100,
      min_finished: checks.min.value,
      start: Boolean(f.start),
    },
  };
}

export function describeTarget(target) {
  if (!target) return '—';
  if (target.device_ids) return `${target.device_ids.length} chosen device${target.device_ids.length === 1 ? '' : 's'}`;
  if (target.labels) return `devices labelled ${formatLabels(target.labels)}`;
  return 'all devices';
}

export const FINAL = ['completed', 'aborted', 'cancelled'];
const FINISHED = ['succeeded', 'failed', 'rejected', 'expired', 'dead', 'refused', 'cancelled'];
// The order in which statuses are shown and stacked in a phase's bar.
export const STATUSES = ['succeeded', 'failed', 'rejected', 'expired', 'dead', 'refused', 'cancelled', 'delivered', 'queued'];

function total(counts) {
  return Object.values(counts || {}).reduce((a, b) => a + b, 0);
}

export function finishedIn(counts) {
  return Object.entries(counts || {}).reduce((a, [s, n]) => a + (FINISHED.includes(s) ? n : 0), 0);
}

/** A phase's counts in words: `2 succeeded · 1 failed · 1 not sent`. */
export function countsText(phase) {
  const counts = phase.counts || {};
  const parts = STATUSES.filter((s) => counts[s]).map((s) => `${counts[s]} ${s}`);
  for (const [s, n] of Object.entries(counts)) if (!STATUSES.includes(s) && n) parts.push(`${n} ${s}`);
  const unsent = phase.size - total(counts);
  if (unsent > 0) parts.push(`${unsent} not sent`);
  return parts.join(' · ') || 'nothing yet';
}

/**
 * What a person may do with a rollout now (the API answers 409 otherwise): `awaiting` is true
 * when it paused at a phase's end for approval (resuming would only pause it again).
 */
export function actionsFor(r) {
  const end = r.phases.slice(0, r.phase + 1).reduce((a, p) => a + p.size, 0);
  const current = r.phases[r.phase] || { size: 0, counts: {} };
  const atEnd = r.sent >= end;
  const more = r.phase + 1 < r.phases.length;
  const paused = r.state === 'paused';
  const awaiting = paused && r.approval && atEnd && more && finishedIn(current.counts) >= current.size;
  return {
    awaiting,
    start: r.state === 'scheduled',
    pause: r.state === 'running',
    resume: paused && !awaiting,
    approve: paused && atEnd && more,
    cancel: !FINAL.includes(r.state),
  };
}

/** Whether the view may stop polling: final, and none of its commands still pending. */
export function settled(r) {
  return FINAL.includes(r.state) && r.phases.every((p) => !(p.counts.queued || p.counts.delivered));
}
