// The device list: online state and last-seen time (refreshed every 5 s), labels and their
// editor, register, rotate a token, delete, and ticking devices for a rollout.

import { call, explain } from './api.js';
import { ago, formatTime, h, keepFocus, replace } from './dom.js';
import { formatLabels, parseLabels } from './rules.js';
import { selection } from './selection.js';
import { showToken } from './token.js';

const PAGE = 100;
const REFRESH_MS = 5000;

export function state(device) {
  if (device.online === null || device.online === undefined) return h('span', { class: 'badge unknown' }, 'unknown');
  return device.online
    ? h('span', { class: 'badge online' }, 'online')
    : h('span', { class: 'badge offline' }, 'offline');
}

export function labelChips(labels) {
  const keys = Object.keys(labels || {}).sort();
  if (!keys.length) return h('span', { class: 'hint' }, 'none');
  return h('ul', { class: 'chips' }, keys.map((k) => h('li', { class: 'chip' }, `${k}=${labels[k]}`)));
}

export function devicesView(main, live) {
  let offset = 0;
  let shown = []; // the devices of the page on screen
  const labelsPanel = h('section', { class: 'card grid', hidden: true, 'aria-labelledby': 'labels-h' });
  const pick = h('div', { class: 'row selection' });
  const pageBox = h('input', { type: 'checkbox', id: 'select-page', 'aria-label': 'Select every device on this page', onchange: (e) => {
    for (const d of shown) {
      if (e.target.checked) selection.set(d.id, d.name);
      else selection.delete(d.id);
    }
    load();
  } });
  const newLabels = h('input', { id: 'new-device-labels', autocomplete: 'off', placeholder: 'site=north, model=esp32', 'aria-describedby': 'new-device-labels-hint' });
  const tokenPanel = h('section', { class: 'card token-panel', hidden: true, 'aria-label': 'Token shown once' });
  const name = h('input', { id: 'new-device-name', required: true, maxlength: 128, autocomplete: 'off' });
  const registerStatus = h('p', { role: 'alert' });
  const registerButton = h('button', { type: 'submit' }, 'Register');
  const rows = h('tbody');
  const listStatus = h('p', { class: 'hint', role: 'status' });
  const paging = h('div', { class: 'row' });

  async function register(event) {
    event.preventDefault();
    registerButton.disabled = true;
    registerStatus.textContent = '';
    registerStatus.className = '';
    const labels = parseLabels(newLabels.value);
    if (labels.error) {
      registerStatus.className = 'error';
      registerStatus.textContent = `Device not registered: labels: ${labels.error}.`;
      registerButton.disabled = false;
      newLabels.focus();
      return;
    }
    try {
      const device = await call('POST', '/devices', { body: { name: name.value.trim(), labels: labels.value } });
      name.value = '';
      newLabels.value = '';
      showToken(tokenPanel, device, 'Registered');
      await load();
    } catch (err) {
      registerStatus.className = 'error';
      registerStatus.textContent = explain(err, 'Device not registered');
    } finally {
      registerButton.disabled = false;
    }
  }

  async function rotate(device) {
    if (!window.confirm(`Give “${device.name}” a new token? The old token stops working at once.`)) return;
    try {
      const fresh = await call('POST', `/devices/${device.id}/token`);
      showToken(tokenPanel, fresh, 'Rotated');
    } catch (err) {
      listStatus.textContent = explain(err, 'Token not rotated');
      listStatus.className = 'error';
    }
  }

  async function remove(device) {
    if (!window.confirm(`Delete “${device.name}” with all its readings and commands? This cannot be undone.`)) return;
    try {
      await call('DELETE', `/devices/${device.id}`);
      notice = `Deleted “${device.name}”.`; // kept by the refreshes that follow
      listStatus.className = 'hint';
      listStatus.textContent = notice;
      await load();
    } catch (err) {
      listStatus.textContent = explain(err, 'Device not deleted');
      listStatus.className = 'error';
    }
  }

  function editLabels(device) {
    const field = h('textarea', { id: 'labels-edit', rows: 4, spellcheck: 'false', 'aria-describedby': 'labels-edit-hint' },
      formatLabels(device.labels, '\n'));
    const status = h('p', { role: 'alert' });
    const save = h('button', { type: 'submit' }, 'Save labels');
    async function submit(event) {
      event.preventDefault();
      const parsed = parseLabels(field.value);
      field.setAttribute('aria-invalid', parsed.error ? 'true' : 'false');
      if (parsed.error) {
        status.className = 'error';
        status.textContent = `Labels not saved: ${parsed.error}.`;
        field.focus();
        return;
      }
      save.disabled = true;
      try {
        const saved = await call('PATCH', `/devices/${device.id}`, { body: { labels: parsed.value } });
        close();
        listStatus.className = 'hint';
        notice = `Labels of “${saved.name}” saved: ${formatLabels(saved.labels) || 'none'}.`;
        listStatus.textContent = notice;
        await load();
      } catch (err) {
        status.className = 'error';
        status.textContent = `Labels ${explain(err)}`;
      } finally {
        save.disabled = false;
      }
    }
    function close() {
      replace(labelsPanel);
      labelsPanel.hidden = true;
    }
    replace(labelsPanel,
      h('form', { class: 'grid', onsubmit: submit },
        h('h2', { id: 'labels-h' }, `Labels of “${device.name}”`),
        h('label', { for: 'labels-edit' }, 'Labels'), field,
        h('p', { id: 'labels-edit-hint', class: 'hint' },
          'One key=value a line (or separated by commas), e.g. site=north; up to 16. They replace the old ones; empty removes them all. Rollouts select devices by label.'),
        h('div', { class: 'actions' }, save,
          h('button', { type: 'button', class: 'secondary', onclick: close }, 'Cancel')),
        status));
    labelsPanel.hidden = false;
    field.focus();
  }

  function toggle(d, checked) {
    if (checked) selection.set(d.id, d.name);
    else selection.delete(d.id);
    renderPick();
  }

  function renderPick() {
    const n = selection.size;
    pageBox.checked = shown.length > 0 && shown.every((d) => selection.has(d.id));
    keepFocus(pick, () => replace(pick,
      h('span', { id: 'selected-count', role: 'status' }, n ? `${n} device${n === 1 ? '' : 's'} selected` : 'Tick devices to roll a command out to them.'),
      n > 0 && h('a', { class: 'button', href: '#/rollouts', 'data-focus': 'rollout' }, 'Roll out a command to the selected devices'),
      n > 0 && h('button', { type: 'button', class: 'secondary', 'data-focus': 'clear', onclick: () => { selection.clear(); load(); } }, 'Clear the selection')));
  }

  function row(d, now) {
    return h('tr', null,
      h('td', { 'data-label': 'Select' }, h('input', { type: 'checkbox', 'aria-label': `Select ${d.name}`, 'data-focus': `select-${d.id}`, checked: selection.has(d.id), onchange: (e) => toggle(d, e.target.checked) })),
      h('td', { 'data-label': 'Name' }, h('a', { href: `#/devices/${d.id}`, 'data-focus': `open-${d.id}` }, d.name)),
      h('td', { 'data-label': 'Labels' }, labelChips(d.labels),
        h('button', { type: 'button', class: 'link', 'data-focus': `labels-${d.id}`, 'aria-label': `Edit the labels of ${d.name}`, onclick: () => editLabels(d) }, 'Edit')),
      h('td', { 'data-label': 'State' }, state(d)),
      h('td', { 'data-label': 'Last seen', title: formatTime(d.last_seen) }, ago(d.last_seen, now)),
      h('td', { 'data-label': 'Registered' }, formatTime(d.created_at)),
      h('td', { 'data-label': 'Actions', class: 'actions' },
        h('button', { type: 'button', class: 'secondary', 'data-focus': `rotate-${d.id}`, 'aria-label': `Rotate the token of ${d.name}`, onclick: () => rotate(d) }, 'Rotate token'),
        h('button', { type: 'button', class: 'danger', 'data-focus': `delete-${d.id}`, 'aria-label': `Delete ${d.name}`, onclick: () => remove(d) }, 'Delete')));
  }

  let notice = ''; // the outcome of the last delete, shown until the page is left

  async function load() {
    let page;
    try {
      page = await call('GET', '/devices', { query: { limit: PAGE, offset } });
    } catch (err) {
      listStatus.className = 'error';
      listStatus.textContent = `${explain(err, 'Device list not refreshed')} (retrying every ${REFRESH_MS / 1000} s)`;
      return;
    }
    const now = Date.now();
    shown = page.devices;
    for (const d of shown) if (selection.has(d.id)) selection.set(d.id, d.name);
    keepFocus(rows, () => {
      if (!page.devices.length) {
        replace(rows, h('tr', null, h('td', { colspan: 7 }, offset ? 'No more devices.' : 'No devices yet: register one above.')));
      } else {
        replace(rows, page.devices.map((d) => row(d, now)));
      }
    });
    renderPick();
    listStatus.className = 'hint';
    listStatus.textContent = `${notice ? `${notice} ` : ''}Updated ${new Date(now).toLocaleTimeString()}; online means readings stored in the last 2 minutes.`;
    keepFocus(paging, () => replace(paging,
      offset > 0 && h('button', { type: 'button', class: 'secondary', 'data-focus': 'previous', onclick: () => { offset = Math.max(0, offset - PAGE); load(); } }, 'Previous page'),
      page.devices.length === PAGE && h('button', { type: 'button', class: 'secondary', 'data-focus': 'next', onclick: () => { offset += PAGE; load(); } }, 'Next page')));
  }

  replace(main,
    h('h1', null, 'Devices'),
    h('form', { class: 'card row', onsubmit: register },
      h('label', { for: 'new-device-name' }, 'New device name'), name,
      h('label', { for: 'new-device-labels' }, 'Labels (optional)'), newLabels, registerButton,
      h('p', { id: 'new-device-labels-hint', class: 'hint' }, 'key=value pairs separated by commas.')),
    registerStatus,
    tokenPanel,
    labelsPanel,
    pick,
    h('div', { class: 'table-wrap' },
      h('table', { class: 'stack' },
        h('caption', { class: 'visually-hidden' }, 'Your devices'),
        h('thead', null, h('tr', null,
          h('th', { scope: 'col' }, pageBox),
          ['Name', 'Labels', 'State', 'Last seen', 'Registered', 'Actions'].map((c) => h('th', { scope: 'col' }, c)))),
        rows)),
    paging,
    listStatus);
  live.every(REFRESH_MS, load);
}
