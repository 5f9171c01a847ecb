// Rollouts: the form that creates one (the command, to the devices ticked in the list, to a
// label selector or to all devices; phases, rate, wait or approval, when to stop by itself) and
// the list of rollouts (refreshed every 5 s). One rollout, live: rollout.js.

import { call, explain } from './api.js';
import { formatTime, h, keepFocus, replace } from './dom.js';
import { describeTarget, rolloutBody } from './rules.js';
import { selection } from './selection.js';

const LIST_MS = 5000;

export function stateBadge(state, attrs = {}) {
  return h('span', { class: `badge rollout-${state}`, ...attrs }, state);
}

function field(id, text, control, hint) {
  return [
    h('label', { for: id }, text),
    control,
    hint && h('p', { id: `${id}-hint`, class: 'hint' }, hint),
  ];
}

export function rolloutsView(main, live) {
  const chosen = [...selection.keys()];
  const inputs = {
    labels: h('input', { id: 'ro-labels', autocomplete: 'off', placeholder: 'site=north', 'aria-describedby': 'ro-labels-hint' }),
    name: h('input', { id: 'ro-name', required: true, autocomplete: 'off' }),
    args: h('textarea', { id: 'ro-args', rows: 2, spellcheck: 'false' }, '{}'),
    ttl: h('input', { id: 'ro-ttl', type: 'number', min: 1, max: 172800, value: 3600 }),
    phases: h('input', { id: 'ro-phases', value: '1, 10, 100', autocomplete: 'off', 'aria-describedby': 'ro-phases-hint' }),
    unit: h('select', { id: 'ro-unit' },
      h('option', { value: 'percent' }, '% of the devices'), h('option', { value: 'count' }, 'devices')),
    rate: h('input', { id: 'ro-rate', type: 'number', min: 0.01, step: 'any', value: 600 }),
    wait: h('input', { id: 'ro-wait', type: 'number', min: 0, step: 'any', value: 0, 'aria-describedby': 'ro-wait-hint' }),
    approval: h('input', { id: 'ro-approval', type: 'checkbox' }),
    share: h('input', { id: 'ro-share', type: 'number', min: 0, max: 100, step: 'any', value: 20, 'aria-describedby': 'ro-share-hint' }),
    min: h('input', { id: 'ro-min', type: 'number', min: 1, step: 1, value: 10 }),
    start: h('input', { id: 'ro-start', type: 'checkbox', checked: true }),
  };
  const radio = (value, text, checked) => h('span', { class: 'choice' },
    h('input', { type: 'radio', name: 'ro-target', id: `ro-target-${value}`, value, checked }),
    h('label', { for: `ro-target-${value}` }, text));
  const targets = h('fieldset', null, h('legend', null, 'Devices'),
    radio('selection', `The ${chosen.length} device${chosen.length === 1 ? '' : 's'} selected in the device list`, chosen.length > 0),
    radio('labels', 'Devices with labels', chosen.length === 0),
    radio('all', 'All my devices', false),
    field('ro-labels', 'Label selector', inputs.labels, 'key=value pairs, comma-separated: a device must carry every one. The devices are fixed when the rollout is created.'));
  const create = h('button', { type: 'submit' }, 'Create rollout');
  const createStatus = h('p', { role: 'alert' });

  async function submit(event) {
    event.preventDefault();
    createStatus.textContent = '';
    const values = Object.fromEntries(Object.entries(inputs).map(([k, el]) => [k, el.type === 'checkbox' ? el.checked : el.value.trim()]));
    values.target = targets.querySelector('input[name="ro-target"]:checked').value;
    for (const el of Object.values(inputs)) el.removeAttribute('aria-invalid');
    const body = rolloutBody(values, chosen);
    if (body.error) {
      createStatus.className = 'error';
      createStatus.textContent = `Not created: ${body.error}.`;
      const bad = inputs[body.field] || targets.querySelector('input[name="ro-target"]');
      bad.setAttribute('aria-invalid', 'true');
      bad.focus();
      return;
    }
    create.disabled = true;
    try {
      const rollout = await call('POST', '/rollouts', { body: body.value });
      window.location.hash = `#/rollouts/${rollout.id}`;
    } catch (err) {
      createStatus.className = 'error';
      createStatus.textContent = `Rollout ${explain(err)}`;
    } finally {
      create.disabled = false;
    }
  }

  const form = h('form', { class: 'card grid', onsubmit: submit, 'aria-labelledby': 'ro-new-h' },
    h('h2', { id: 'ro-new-h' }, 'New rollout'),
    targets,
    field('ro-name', 'Command name', inputs.name),
    field('ro-args', 'Arguments (JSON)', inputs.args),
    field('ro-ttl', 'Time to live (seconds)', inputs.ttl),
    h('div', { class: 'row' }, field('ro-phases', 'Phases (cumulative)', inputs.phases), field('ro-unit', 'in', inputs.unit)),
    h('p', { id: 'ro-phases-hint', class: 'hint' }, 'E.g. 1, 10, 100: 1 % of the devices first, then up to 10 %, then all.'),
    field('ro-rate', 'Rate (devices per minute)', inputs.rate),
    field('ro-wait', 'Wait between phases (seconds)', inputs.wait, 'After a phase has finished, before the next one starts.'),
    h('span', { class: 'choice' }, inputs.approval, h('label', { for: 'ro-approval' }, 'Pause after each phase until I approve the next')),
    h('fieldset', { class: 'grid' }, h('legend', null, 'Stop by itself'),
      field('ro-share', 'when more than this % of finished commands failed', inputs.share,
        'Failed, rejected, expired, dead, or refused (the device had too many commands waiting); in the current phase or overall.'),
      field('ro-min', 'once at least this many commands finished', inputs.min)),
    h('span', { class: 'choice' }, inputs.start, h('label', { for: 'ro-start' }, 'Start at once (otherwise it waits for Start)')),
    create, createStatus);

  // --- the list ---
  const rows = h('tbody');
  const listStatus = h('p', { class: 'hint', role: 'status' });

  async function load() {
    let page;
    try {
      page = await call('GET', '/rollouts', { query: { limit: 50 } });
    } catch (err) {
      listStatus.className = 'error';
      listStatus.textContent = `${explain(err, 'Rollouts not refreshed')} (retrying every ${LIST_MS / 1000} s)`;
      return;
    }
    keepFocus(rows, () => replace(rows, page.rollouts.length
      ? page.rollouts.map((r) => h('tr', null,
        h('td', { 'data-label': 'Created' }, formatTime(r.created_at)),
        h('td', { 'data-label': 'Command' }, h('a', { href: `#/rollouts/${r.id}`, 'data-focus': `open-${r.id}`, 'aria-label': `Watch the rollout of ${r.command.name} created ${formatTime(r.created_at)}` }, r.command.name)),
        h('td', { 'data-label': 'Devices' }, describeTarget(r.target)),
        h('td', { 'data-label': 'State' }, stateBadge(r.state)),
        h('td', { 'data-label': 'Sent' }, `${r.sent} of ${r.total}`)))
      : h('tr', null, h('td', { colspan: 5 }, 'No rollouts yet: create one above.'))));
    listStatus.className = 'hint';
    listStatus.textContent = `Newest first; updated ${new Date().toLocaleTimeString()}.`;
  }

  replace(main,
    h('h1', null, 'Rollouts'),
    h('p', { class: 'hint' }, 'One command to many devices, a few first, then more; it stops by itself when too many fail.'),
    form,
    h('section', { 'aria-labelledby': 'ro-list-h' },
      h('h2', { id: 'ro-list-h' }, 'Your rollouts'),
      h('div', { class: 'table-wrap' }, h('table', { class: 'stack', id: 'rollouts' },
        h('thead', null, h('tr', null, ['Created', 'Command', 'Devices', 'State', 'Sent'].map((c) => h('th', { scope: 'col' }, c)))),
        rows)),
      listStatus));
  live.every(LIST_MS, load);
}
