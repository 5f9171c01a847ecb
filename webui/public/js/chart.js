// A line chart of one sensor's history (GET /sensors/history buckets), drawn as SVG: the
// average as a line, min to max as a band, a gap where buckets are missing.

import { svg } from './dom.js';

const W = 420;
const H = 180;
const PAD = { left: 52, right: 12, top: 12, bottom: 28 };

function label(n) {
  return Math.abs(n) >= 1000 || Number.isInteger(n) ? String(Math.round(n * 100) / 100) : String(Number(n.toPrecision(4)));
}

/** An axis value with as many decimals as the axis's span needs. */
function axisLabel(n, span) {
  const digits = span >= 20 ? 0 : span >= 2 ? 1 : span >= 0.2 ? 2 : 3;
  return String(Number(n.toFixed(digits)));
}

function timeLabel(ms, spanMs) {
  const d = new Date(ms);
  return spanMs > 36 * 3600 * 1000
    ? d.toLocaleDateString(undefined, { month: 'short', day: 'numeric' }) +
        ' ' + d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' })
    : d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
}

/**
 * Runs of points to join by a line: a gap breaks the line when it is wider than 1.5 buckets and
 * clearly wider (2.5×) than the usual spacing of the points (a device reporting every 90 s into
 * 30 s buckets still gets a line).
 */
export function runs(points, stepMs) {
  const gaps = points.slice(1).map((p, i) => p.t - points[i].t).sort((a, b) => a - b);
  const usual = gaps.length ? gaps[Math.floor(gaps.length / 2)] : 0;
  const limit = Math.max(stepMs * 1.5, usual * 2.5);
  const out = [];
  let run = [];
  for (const p of points) {
    if (run.length && p.t - run[run.length - 1].t > limit) {
      out.push(run);
      run = [];
    }
    run.push(p);
  }
  if (run.length) out.push(run);
  return out;
}

/** An <svg> for `history` (the API's answer), with a text alternative. */
export function drawChart(history) {
  const from = new Date(history.from).getTime();
  const to = new Date(history.to).getTime();
  const stepMs = history.step_seconds * 1000;
  const points = history.points.map((p) => ({ t: new Date(p.ts).getTime(), ...p }));
  const span = `${new Date(from).toLocaleString()} to ${new Date(to).toLocaleString()}`;
  if (!points.length) {
    return svg('svg', { viewBox: `0 0 ${W} 60`, role: 'img', class: 'chart empty', 'aria-label': `${history.sensor}: no readings from ${span}` },
      svg('text', { x: W / 2, y: 34, 'text-anchor': 'middle' }, 'No readings in this range'));
  }
  let lo = Math.min(...points.map((p) => p.min));
  let hi = Math.max(...points.map((p) => p.max));
  if (lo === hi) {
    lo -= 1;
    hi += 1;
  }
  const x = (t) => PAD.left + ((t - from) / (to - from)) * (W - PAD.left - PAD.right);
  const y = (v) => PAD.top + (1 - (v - lo) / (hi - lo)) * (H - PAD.top - PAD.bottom);
  const parts = [];
  for (const run of runs(points, stepMs)) {
    const band = run.map((p) => `${x(p.t)},${y(p.max)}`).concat(run.slice().reverse().map((p) => `${x(p.t)},${y(p.min)}`));
    parts.push(svg('polygon', { class: 'band', points: band.join(' ') }));
    if (run.length === 1) parts.push(svg('circle', { class: 'dot', cx: x(run[0].t), cy: y(run[0].avg), r: 3 }));
    else parts.push(svg('polyline', { class: 'line', points: run.map((p) => `${x(p.t)},${y(p.avg)}`).join(' ') }));
  }
  const last = points[points.length - 1];
  const summary = `${history.sensor} from ${span}: ${points.length} points, lowest ${label(Math.min(...points.map((p) => p.min)))}, highest ${label(Math.max(...points.map((p) => p.max)))}, latest average ${label(last.avg)}`;
  const bottom = H - PAD.bottom;
  return svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', class: 'chart', 'aria-label': summary },
    svg('line', { class: 'axis', x1: PAD.left, y1: PAD.top, x2: PAD.left, y2: bottom }),
    svg('line', { class: 'axis', x1: PAD.left, y1: bottom, x2: W - PAD.right, y2: bottom }),
    svg('text', { x: PAD.left - 6, y: PAD.top + 10, 'text-anchor': 'end' }, axisLabel(hi, hi - lo)),
    svg('text', { x: PAD.left - 6, y: bottom, 'text-anchor': 'end' }, axisLabel(lo, hi - lo)),
    svg('text', { x: PAD.left, y: H - 8, 'text-anchor': 'start' }, timeLabel(from, to - from)),
    svg('text', { x: W - PAD.right, y: H - 8, 'text-anchor': 'end' }, timeLabel(to, to - from)),
    parts);
}

const NICE_STEPS = [10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];

/** A bucket width (seconds) giving at most about 150 points over the range. */
export function stepFor(fromMs, toMs) {
  const wanted = (toMs - fromMs) / 1000 / 150;
  return NICE_STEPS.find((s) => s >= wanted) || Math.ceil(wanted / 86400) * 86400;
}
