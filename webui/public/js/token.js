// A device token, shown once (after registering or rotating) with a copy button and a warning.

import { h, replace } from './dom.js';

export function showToken(panel, device, what) {
  const status = h('span', { role: 'status', class: 'hint' });
  const field = h('input', { id: 'device-token', readonly: true, value: device.token, spellcheck: 'false', class: 'token' });
  async function copy() {
    try {
      await navigator.clipboard.writeText(device.token);
      status.textContent = 'Copied to the clipboard.';
    } catch {
      field.select();
      const ok = document.execCommand && document.execCommand('copy');
      status.textContent = ok ? 'Copied to the clipboard.' : 'Copying was refused: the token is selected, press Ctrl+C.';
    }
  }
  replace(panel,
    h('h2', null, `${what}: token of “${device.name}”`),
    h('p', { class: 'warning' },
      h('strong', null, 'This token is shown only once.'),
      ' Copy it now and put it on the device: it cannot be shown again. If it is lost, rotate the token to get a new one.'),
    h('label', { for: 'device-token' }, 'Device token'),
    h('div', { class: 'row' }, field,
      h('button', { type: 'button', onclick: copy }, 'Copy token'), status),
    h('button', { type: 'button', class: 'secondary', onclick: () => { replace(panel); panel.hidden = true; } },
      'I have saved it — hide the token'));
  panel.hidden = false;
  field.focus();
  field.select();
}
