// One device: its state, latest readings (refreshed every second), a chart per sensor with a
// time range picker, and its commands (commands.js).

import { call, explain } from './api.js';
import { drawChart, stepFor } from './chart.js';
import { commandsSection } from './commands.js';
import { ago, formatTime, h, replace, uid } from './dom.js';
import { state } from './devices.js';

const READINGS_MS = 1000;
const CHARTS_MS = 15000;
const RANGES = [
  ['1h', '1 h', 3600e3],
  ['24h', '24 h', 86400e3],
  ['7d', '7 d', 7 * 86400e3],
  ['custom', 'Custom', null],
];

function localInput(ms) {
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60e3);
  return d.toISOString().slice(0, 16);
}

export function deviceView(main, live, deviceId) {
  const title = h('h1', null, 'Device');
  const summary = h('p', { class: 'hint' });
  const readingsBody = h('tbody');
  const readingsStatus = h('p', { class: 'hint', role: 'status' });
  const charts = h('div', { class: 'charts' }, h('p', null, 'Charts appear once the device has sent readings.'));
  const chartStatus = h('p', { class: 'hint', role: 'status' });
  const sensors = new Set();
  let range = '1h';
  let custom = null;

  async function loadDevice() {
    try {
      const d = await call('GET', `/devices/${deviceId}`);
      title.textContent = d.name;
      replace(summary, state(d), ` last seen ${ago(d.last_seen)} · id `, h('code', null, d.id));
    } catch (err) {
      if (err.status === 404) {
        live.stop();
        replace(main, h('h1', { tabindex: -1 }, 'Device not found'),
          h('p', null, 'It was deleted, or it belongs to someone else.'),
          h('p', null, h('a', { href: '#/devices' }, '← All devices')));
        main.querySelector('h1').focus();
        return;
      }
      replace(summary, h('span', { class: 'error' }, explain(err, 'Device not loaded')));
    }
  }

  async function loadReadings() {
    let latest;
    try {
      latest = await call('GET', '/sensors', { query: { device_id: deviceId } });
    } catch (err) {
      readingsStatus.className = 'error';
      readingsStatus.textContent = `${explain(err, 'Readings not refreshed')} (retrying every second)`;
      return;
    }
    const fresh = latest.readings.filter((r) => !sensors.has(r.sensor));
    for (const r of latest.readings) sensors.add(r.sensor);
    replace(readingsBody, latest.readings.length
      ? latest.readings.map((r) => h('tr', { 'data-sensor': r.sensor },
        h('th', { scope: 'row' }, r.sensor),
        h('td', { class: 'value' }, String(r.value)),
        h('td', null, formatTime(r.ts))))
      : h('tr', null, h('td', { colspan: 3 }, 'No readings yet.')));
    readingsStatus.className = 'hint';
    readingsStatus.textContent = `Live: checked ${new Date().toLocaleTimeString()} (from the ${latest.source}).`;
    if (fresh.length) await loadCharts();
  }

  function window_() {
    if (range === 'custom') return custom;
    const to = Date.now();
    return { from: to - RANGES.find((r) => r[0] === range)[2], to };
  }

  async function loadCharts() {
    const win = window_();
    if (!win) return;
    if (!sensors.size) {
      replace(charts, h('p', null, 'Charts appear once the device has sent readings.'));
      return;
    }
    const step = stepFor(win.from, win.to);
    const names = [...sensors].sort();
    const results = await Promise.allSettled(names.map((sensor) => call('GET', '/sensors/history', {
      query: { device_id: deviceId, sensor, from: new Date(win.from).toISOString(), to: new Date(win.to).toISOString(), step: `${step}s` },
    })));
    replace(charts, names.map((sensor, i) => {
      const r = results[i];
      return h('figure', { class: 'card' },
        h('figcaption', null, sensor),
        r.status === 'fulfilled' ? drawChart(r.value) : h('p', { class: 'error' }, explain(r.reason, 'Chart not loaded')));
    }));
    chartStatus.textContent = `${new Date(win.from).toLocaleString()} to ${new Date(win.to).toLocaleString()}, one point per ${step} s.`;
  }

  const from = h('input', { type: 'datetime-local', id: uid('from') });
  const to = h('input', { type: 'datetime-local', id: uid('to') });
  const customError = h('p', { class: 'error', role: 'alert' });
  const customForm = h('form', { class: 'row', hidden: true, onsubmit: (event) => {
    event.preventDefault();
    const f = new Date(from.value).getTime();
    const t = new Date(to.value).getTime();
    if (!(f < t)) {
      customError.textContent = 'Choose a start before the end.';
      return;
    }
    customError.textContent = '';
    custom = { from: f, to: t };
    loadCharts();
  } },
  h('label', { for: from.id }, 'From'), from,
  h('label', { for: to.id }, 'To'), to,
  h('button', { type: 'submit' }, 'Show'));

  const picker = h('fieldset', { class: 'row' }, h('legend', null, 'Time range'),
    RANGES.map(([value, text]) => {
      const id = uid('range');
      return h('span', { class: 'choice' },
        h('input', { type: 'radio', name: 'range', id, value, checked: value === range, onchange: () => {
          range = value;
          customForm.hidden = value !== 'custom';
          if (value === 'custom') {
            if (!custom) {
              const now = Date.now();
              from.value = localInput(now - 3600e3);
              to.value = localInput(now);
            }
            from.focus();
          } else {
            loadCharts();
          }
        } }),
        h('label', { for: id }, text));
    }));

  replace(main,
    h('p', null, h('a', { href: '#/devices' }, '← All devices')),
    title, summary,
    h('section', { 'aria-labelledby': 'latest-h' },
      h('h2', { id: 'latest-h' }, 'Latest readings'),
      h('div', { class: 'table-wrap' }, h('table', { id: 'latest' },
        h('thead', null, h('tr', null, ['Sensor', 'Value', 'Measured at'].map((c) => h('th', { scope: 'col' }, c)))),
        readingsBody)),
      readingsStatus),
    h('section', { 'aria-labelledby': 'charts-h' },
      h('h2', { id: 'charts-h' }, 'History'),
      picker, customForm, customError, chartStatus, charts),
    commandsSection(live, deviceId));

  live.every(READINGS_MS, loadReadings);
  live.every(CHARTS_MS, async () => {
    if (range !== 'custom' && sensors.size) await loadCharts();
  });
  live.every(10000, loadDevice);
}
