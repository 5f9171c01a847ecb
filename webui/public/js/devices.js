// The device list: online state and last-seen time (refreshed every 5 s), register, rotate a
// token, delete.

import { call, explain } from './api.js';
import { ago, formatTime, h, keepFocus, replace } from './dom.js';
import { showToken } from './token.js';

const PAGE = 100;
const REFRESH_MS = 5000;

export function state(device) {
  if (device.online === null || device.online === undefined) return h('span', { class: 'badge unknown' }, 'unknown');
  return device.online
    ? h('span', { class: 'badge online' }, 'online')
    : h('span', { class: 'badge offline' }, 'offline');
}

export function devicesView(main, live) {
  let offset = 0;
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
    try {
      const device = await call('POST', '/devices', { body: { name: name.value.trim() } });
      name.value = '';
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

  function row(d, now) {
    return h('tr', null,
      h('td', { 'data-label': 'Name' }, h('a', { href: `#/devices/${d.id}`, 'data-focus': `open-${d.id}` }, d.name)),
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
    keepFocus(rows, () => {
      if (!page.devices.length) {
        replace(rows, h('tr', null, h('td', { colspan: 5 }, offset ? 'No more devices.' : 'No devices yet: register one above.')));
      } else {
        replace(rows, page.devices.map((d) => row(d, now)));
      }
    });
    listStatus.className = 'hint';
    listStatus.textContent = `${notice ? `${notice} ` : ''}Updated ${new Date(now).toLocaleTimeString()}; online means readings stored in the last 2 minutes.`;
    keepFocus(paging, () => replace(paging,
      offset > 0 && h('button', { type: 'button', class: 'secondary', 'data-focus': 'previous', onclick: () => { offset = Math.max(0, offset - PAGE); load(); } }, 'Previous page'),
      page.devices.length === PAGE && h('button', { type: 'button', class: 'secondary', 'data-focus': 'next', onclick: () => { offset += PAGE; load(); } }, 'Next page')));
  }

  replace(main,
    h('h1', null, 'Devices'),
    h('form', { class: 'card row', onsubmit: register },
      h('label', { for: 'new-device-name' }, 'New device name'), name, registerButton),
    registerStatus,
    tokenPanel,
    h('div', { class: 'table-wrap' },
      h('table', { class: 'stack' },
        h('caption', { class: 'visually-hidden' }, 'Your devices'),
        h('thead', null, h('tr', null,
          ['Name', 'State', 'Last seen', 'Registered', 'Actions'].map((c) => h('th', { scope: 'col' }, c)))),
        rows)),
    paging,
    listStatus);
  live.every(REFRESH_MS, load);
}
