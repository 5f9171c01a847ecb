// One rollout, live (GET /rollouts/{id} every 2 s until it is final and none of its commands is
// pending): its state, progress per phase (counts per status and a bar), the buttons that apply
// now, the decision log and the devices that failed.

import { call, explain } from './api.js';
import { formatTime, h, replace, svg } from './dom.js';
import { stateBadge } from './rollouts.js';
import { STATUSES, actionsFor, countsText, describeTarget, finishedIn, settled } from './rules.js';

const POLL_MS = 2000;
const ACTIONS = [
  ['start', 'Start', 'Started', ''],
  ['pause', 'Pause', 'Paused', 'secondary'],
  ['resume', 'Resume', 'Resumed', 'secondary'],
  ['approve', 'Approve the next phase', 'Approved', ''],
  ['cancel', 'Cancel the rollout', 'Cancelled', 'danger'],
];

function bar(phase) {
  const counts = phase.counts || {};
  const size = Math.max(phase.size, 1);
  let x = 0;
  const rects = [];
  for (const s of STATUSES) {
    if (!counts[s]) continue;
    const w = (100 * counts[s]) / size;
    rects.push(svg('rect', { class: `s-${s}`, x, y: 0, width: w, height: 10 }));
    x += w;
  }
  return svg('svg', { class: 'bar', viewBox: '0 0 100 10', preserveAspectRatio: 'none', role: 'img',
    'aria-label': `${finishedIn(counts)} of ${phase.size} finished: ${countsText(phase)}` },
  svg('rect', { class: 'track', x: 0, y: 0, width: 100, height: 10 }), rects);
}

export function rolloutView(main, live, rolloutId) {
  const title = h('h1', null, 'Rollout');
  const summary = h('div', { class: 'card grid' });
  const gate = h('p', { class: 'warning', id: 'ro-awaiting', hidden: true });
  const actionStatus = h('p', { role: 'alert', id: 'ro-action-status' });
  const buttons = Object.fromEntries(ACTIONS.map(([verb, text, done, cls]) => [verb,
    h('button', { type: 'button', class: cls || null, disabled: true, onclick: () => act(verb, text, done) }, text)]));
  const phasesBody = h('tbody');
  const decisionsBody = h('tbody');
  const failedHead = h('h2', { id: 'ro-failed-h' }, 'Failed devices');
  const failedBody = h('tbody');
  const failedNote = h('p', { class: 'hint' });
  const pollStatus = h('p', { class: 'hint', role: 'status' });
  const names = new Map(); // device id -> name, for the failed devices
  let shown = null;
  let current = null;
  let loop = null;

  async function loadNames() {
    try {
      const page = await call('GET', '/devices', { query: { limit: 1000 } });
      for (const d of page.devices) names.set(d.id, d.name);
    } catch {
      // ids are shown instead
    }
  }

  function render(r) {
    current = r;
    const can = actionsFor(r);
    title.textContent = `Rollout of “${r.command.name}”`;
    replace(summary,
      h('p', null, 'State: ', stateBadge(r.state, { id: 'ro-state' }),
        ` · sent to ${r.sent} of ${r.total} devices · phase ${Math.min(r.phase + 1, r.phases.length)} of ${r.phases.length}`),
      h('p', null, 'Command ', h('code', null, r.command.name), ' with ', h('code', null, JSON.stringify(r.command.args)),
        ` (time to live ${r.command.ttl} s) to ${describeTarget(r.target)}.`),
      h('p', { class: 'hint' },
        `${r.rate_per_minute} device${r.rate_per_minute === 1 ? '' : 's'} a minute; between phases: ${r.approval ? 'approval' : r.phase_wait_seconds ? `a wait of ${r.phase_wait_seconds} s` : 'no wait'}; `,
        `stops when more than ${Math.round(r.max_failure_share * 1000) / 10} % of at least ${r.min_finished} finished commands failed. `,
        `Created ${formatTime(r.created_at)}${r.finished_at ? `, ended ${formatTime(r.finished_at)}` : ''}.`));
    gate.hidden = !can.awaiting;
    gate.textContent = can.awaiting
      ? `Phase ${r.phase + 1} finished: waiting for your approval to start phase ${r.phase + 2}.`
      : '';
    for (const [verb] of ACTIONS) buttons[verb].disabled = !can[verb];

    replace(phasesBody, r.phases.map((p) => h('tr', { 'data-phase': p.index + 1 },
      h('th', { scope: 'row', 'data-label': 'Phase' }, `${p.index + 1}`, p.index === r.phase && !settled(r) ? ' (current)' : ''),
      h('td', { 'data-label': 'Devices' }, String(p.size)),
      h('td', { 'data-label': 'Progress', class: 'progress' }, bar(p)),
      h('td', { 'data-label': 'Commands', class: 'counts' }, countsText(p)))));

    replace(decisionsBody, r.decisions.length
      ? r.decisions.map((d) => h('tr', null,
        h('td', { 'data-label': 'Time' }, formatTime(d.at)),
        h('td', { 'data-label': 'Who' }, d.actor === 'driver' ? 'automatic' : d.actor),
        h('td', { 'data-label': 'Decision' }, d.decision),
        h('td', { 'data-label': 'Reason' }, d.reason || '—')))
      : h('tr', null, h('td', { colspan: 4 }, 'No decisions yet.')));

    failedHead.textContent = `Failed devices (${r.failed_total})`;
    replace(failedBody, r.failed.length
      ? r.failed.map((f) => h('tr', null,
        h('td', { 'data-label': 'Device' }, h('a', { href: `#/devices/${f.device_id}` }, names.get(f.device_id) || f.device_id)),
        h('td', { 'data-label': 'Status' }, h('span', { class: `badge status-${f.status}` }, f.status || '—')),
        h('td', { 'data-label': 'Reason' }, f.reason || (f.status === 'failed' || f.status === 'rejected' ? `the device answered ${f.status}` : '—'))))
      : h('tr', null, h('td', { colspan: 3 }, 'None.')));
    failedNote.textContent = r.failed_total > r.failed.length ? `The first ${r.failed.length} of ${r.failed_total} are shown.` : '';
  }

  async function load() {
    let r;
    try {
      r = await call('GET', `/rollouts/${rolloutId}`);
    } catch (err) {
      if (err.status === 404) {
        live.stop();
        replace(main, h('h1', { tabindex: -1 }, 'Rollout not found'),
          h('p', null, 'It does not exist, or it belongs to someone else.'),
          h('p', null, h('a', { href: '#/rollouts' }, '← All rollouts')));
        main.querySelector('h1').focus();
        return;
      }
      pollStatus.className = 'error';
      pollStatus.textContent = `${explain(err, 'Rollout not refreshed')} (retrying every ${POLL_MS / 1000} s)`;
      return;
    }
    if (r.failed.some((f) => !names.has(f.device_id))) await loadNames();
    const seen = JSON.stringify(r);
    if (seen !== shown) render(r);
    shown = seen;
    pollStatus.className = 'hint';
    pollStatus.textContent = settled(r)
      ? `Final: ${r.state}. Nothing changes any more.`
      : `Live: checked ${new Date().toLocaleTimeString()}, every ${POLL_MS / 1000} s.`;
    if (settled(r) && loop) loop.stop();
  }

  function follow() {
    if (loop) loop.stop();
    loop = live.every(POLL_MS, load);
  }

  async function act(verb, text, done) {
    if (verb === 'cancel' && !window.confirm('Cancel this rollout? Nothing more is sent, and its commands not yet run are cancelled.')) return;
    for (const b of Object.values(buttons)) b.disabled = true;
    try {
      const r = await call('POST', `/rollouts/${rolloutId}/${verb}`);
      actionStatus.className = 'ok';
      actionStatus.textContent = `${done}: the rollout is ${r.state}.`;
    } catch (err) {
      actionStatus.className = 'error';
      actionStatus.textContent = `${text} ${explain(err)}.`;
    }
    if (current) render(current); // buttons back until the fresh state arrives
    follow();
  }

  replace(main,
    h('p', null, h('a', { href: '#/rollouts' }, '← All rollouts')),
    title,
    summary,
    gate,
    h('div', { class: 'actions', role: 'group', 'aria-label': 'Steer the rollout' }, ACTIONS.map(([verb]) => buttons[verb])),
    actionStatus,
    h('section', { 'aria-labelledby': 'ro-phases-h' },
      h('h2', { id: 'ro-phases-h' }, 'Phases'),
      h('div', { class: 'table-wrap' }, h('table', { class: 'stack', id: 'ro-phases' },
        h('thead', null, h('tr', null, ['Phase', 'Devices', 'Progress', 'Commands'].map((c) => h('th', { scope: 'col' }, c)))),
        phasesBody))),
    h('section', { 'aria-labelledby': 'ro-decisions-h' },
      h('h2', { id: 'ro-decisions-h' }, 'Decision log'),
      h('div', { class: 'table-wrap' }, h('table', { class: 'stack', id: 'ro-decisions' },
        h('thead', null, h('tr', null, ['Time', 'Who', 'Decision', 'Reason'].map((c) => h('th', { scope: 'col' }, c)))),
        decisionsBody))),
    h('section', { 'aria-labelledby': 'ro-failed-h' },
      failedHead,
      h('div', { class: 'table-wrap' }, h('table', { class: 'stack', id: 'ro-failed' },
        h('thead', null, h('tr', null, ['Device', 'Status', 'Reason'].map((c) => h('th', { scope: 'col' }, c)))),
        failedBody)),
      failedNote),
    pollStatus);
  follow();
}
