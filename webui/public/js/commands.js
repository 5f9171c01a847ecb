// Commands of one device: the form (arguments checked as JSON before sending), the selected
// command's live status and event timeline, cancel, and the history a page at a time.

import { call, explain, session } from './api.js';
import { formatTime, h, keepFocus, replace } from './dom.js';

const PENDING = ['queued', 'delivered'];
const STATUS_MS = 1000;
const HISTORY_MS = 3000;
const HISTORY_PAGE = 20;
const FILTERS = [
  ['', 'All'],
  ['pending', 'Waiting (queued or delivered)'],
  ['succeeded', 'Succeeded'],
  ['failed', 'Failed'],
  ['rejected', 'Rejected'],
  ['expired', 'Expired'],
  ['cancelled', 'Cancelled'],
  ['dead', 'Dead'],
];

function newKey() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  return `${Date.now()}-${Math.random().toString(16).slice(2)}`;
}

/** The arguments as an object, or a sentence saying what is wrong. */
export function parseArgs(text) {
  let value;
  try {
    value = JSON.parse(text.trim() === '' ? '{}' : text);
  } catch (err) {
    return { error: `Not valid JSON: ${err.message}` };
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    return { error: 'Arguments must be a JSON object, like {"seconds": 30}.' };
  }
  return { value };
}

function badge(status) {
  return h('span', { class: `badge status-${status}` }, status);
}

export function commandsSection(live, deviceId) {
  // --- the form ---
  const name = h('input', { id: 'cmd-name', required: true, pattern: '[A-Za-z0-9_.\\-]{1,64}', 'aria-describedby': 'cmd-name-hint', autocomplete: 'off' });
  const args = h('textarea', { id: 'cmd-args', rows: 3, 'aria-describedby': 'cmd-args-check', spellcheck: 'false' }, '{}');
  const argsCheck = h('p', { id: 'cmd-args-check', class: 'hint', 'aria-live': 'polite' }, 'A JSON object.');
  const ttl = h('input', { id: 'cmd-ttl', type: 'number', min: 1, max: 172800, value: 3600, required: true, 'aria-describedby': 'cmd-ttl-hint' });
  const send = h('button', { type: 'submit' }, 'Send command');
  const sendStatus = h('p', { role: 'alert' });
  let key = newKey(); // kept across failed attempts, so a retry can never run the command twice

  function checkArgs() {
    const parsed = parseArgs(args.value);
    args.setAttribute('aria-invalid', parsed.error ? 'true' : 'false');
    argsCheck.className = parsed.error ? 'error' : 'hint';
    argsCheck.textContent = parsed.error || 'Valid JSON object.';
    return parsed;
  }
  args.addEventListener('input', () => {
    checkArgs();
    key = newKey();
  });
  name.addEventListener('input', () => { key = newKey(); });
  ttl.addEventListener('input', () => { key = newKey(); });

  async function submit(event) {
    event.preventDefault();
    sendStatus.textContent = '';
    sendStatus.className = '';
    const parsed = checkArgs();
    if (!name.checkValidity()) {
      sendStatus.className = 'error';
      sendStatus.textContent = 'Give the command a name: 1 to 64 letters, digits, “_”, “.” or “-”.';
      name.focus();
      return;
    }
    if (parsed.error) {
      args.focus();
      sendStatus.className = 'error';
      sendStatus.textContent = `Not sent: ${parsed.error}`;
      return;
    }
    const seconds = Number(ttl.value);
    if (!Number.isInteger(seconds) || seconds < 1 || seconds > 172800) {
      ttl.focus();
      sendStatus.className = 'error';
      sendStatus.textContent = 'Not sent: the time to live is a whole number of seconds from 1 to 172800 (48 h).';
      return;
    }
    send.disabled = true;
    try {
      const command = await call('POST', '/commands', {
        body: { device_id: deviceId, name: name.value, args: parsed.value, ttl: seconds },
        headers: { 'Idempotency-Key': key },
      });
      key = newKey();
      sendStatus.className = 'ok';
      sendStatus.textContent = `Command “${command.name}” accepted: it is queued for the device.`;
      follow(command.id);
      historyLoop.refresh();
    } catch (err) {
      sendStatus.className = 'error';
      sendStatus.textContent = `Command ${explain(err)}`;
    } finally {
      send.disabled = false;
    }
  }

  const form = h('form', { class: 'card grid', onsubmit: submit, 'aria-labelledby': 'send-h' },
    h('h2', { id: 'send-h' }, 'Send a command'),
    h('label', { for: 'cmd-name' }, 'Command name'), name,
    h('p', { id: 'cmd-name-hint', class: 'hint' }, 'Letters, digits, “_”, “.” or “-”, e.g. open_valve.'),
    h('label', { for: 'cmd-args' }, 'Arguments (JSON)'), args, argsCheck,
    h('label', { for: 'cmd-ttl' }, 'Time to live (seconds)'), ttl,
    h('p', { id: 'cmd-ttl-hint', class: 'hint' }, 'It expires if the device has not run it by then (at most 48 h).'),
    send, sendStatus);

  // --- the selected command, live ---
  const detail = h('section', { class: 'card', 'aria-labelledby': 'detail-h', hidden: true });
  const actionStatus = h('p', { role: 'alert' }); // kept across refreshes of the same command
  let statusLoop = null;
  let followed = null;

  function renderCommand(c) {
    const user = session.user;
    // Cancel and requeue: one POST each; the answer is said, and the status is followed again.
    function act(verb, what) {
      return async () => {
        try {
          const r = await call('POST', `/commands/${c.id}/${verb}`);
          actionStatus.className = 'ok';
          actionStatus.textContent = `${what} answered: ${r.status}.`;
          follow(c.id);
          historyLoop.refresh();
        } catch (err) {
          actionStatus.className = 'error';
          actionStatus.textContent = `${what} ${explain(err)}`;
        }
      };
    }
    const events = c.events || [];
    keepFocus(detail, () => replace(detail,
      h('h2', { id: 'detail-h' }, `Command “${c.name}”`),
      h('p', { class: 'status-line' }, 'Status: ', h('strong', { id: 'cmd-status', 'aria-live': 'polite' }, c.status),
        ` · attempt ${c.attempt} · sent ${formatTime(c.created_at)} · expires ${formatTime(c.expires_at)}`),
      h('p', null, 'Arguments: ', h('code', null, JSON.stringify(c.args))),
      c.result !== null && c.result !== undefined && h('p', null, 'Result: ', h('code', null, JSON.stringify(c.result))),
      PENDING.includes(c.status) && h('button', { type: 'button', class: 'danger', 'data-focus': 'cancel', onclick: act('cancel', 'Cancel') }, 'Cancel this command'),
      c.status === 'dead' && h('p', { class: 'warning', id: 'cmd-dead-hint' },
        'Dead: the device did not ack it in 5 deliveries.',
        user && user.admin ? ' Requeue gives it a new time to live and 5 more deliveries.' : ' An admin can requeue it.'),
      c.status === 'dead' && user && user.admin && h('button', { type: 'button', 'data-focus': 'requeue', 'aria-describedby': 'cmd-dead-hint', onclick: act('requeue', 'Requeue') }, 'Requeue'),
      actionStatus,
      h('h3', null, 'Timeline'),
      events.length
        ? h('ol', { class: 'timeline', id: 'cmd-timeline' }, events.map((e) => h('li', null,
          badge(e.status), ` ${formatTime(e.at)}`, e.attempt ? ` · attempt ${e.attempt}` : '',
          e.detail && Object.keys(e.detail).length ? h('code', null, ` ${JSON.stringify(e.detail)}`) : '')))
        : h('p', { class: 'hint' }, 'Accepted; not stored yet.')));
    detail.hidden = false;
  }

  function follow(commandId) {
    if (statusLoop) statusLoop.stop();
    if (commandId !== followed) replace(actionStatus); // another command: the last answer goes
    followed = commandId;
    detail.hidden = false;
    const problem = h('p', { class: 'error' });
    let shown = null;
    statusLoop = live.every(STATUS_MS, async (loop) => {
      let c;
      try {
        c = await call('GET', `/commands/${commandId}`);
      } catch (err) {
        problem.textContent = `${explain(err, 'Status not refreshed')} (retrying every second)`;
        if (!detail.contains(problem)) detail.append(problem);
        return;
      }
      const seen = JSON.stringify(c);
      if (seen !== shown || detail.contains(problem)) renderCommand(c);
      if (shown !== null && seen !== shown) historyLoop.refresh(); // the list shows it too
      shown = seen;
      if (!PENDING.includes(c.status)) loop.stop();
    });
  }

  // --- history ---
  const filter = h('select', { id: 'cmd-filter' }, FILTERS.map(([v, t]) => h('option', { value: v }, t)));
  const historyBody = h('tbody');
  const historyStatus = h('p', { class: 'hint', role: 'status' });
  const pager = h('div', { class: 'row' });
  const cursors = [null];

  async function loadHistory() {
    const f = filter.value;
    let page;
    try {
      page = await call('GET', `/devices/${deviceId}/commands`, {
        query: { limit: HISTORY_PAGE, before: cursors[cursors.length - 1], status: f === 'pending' ? PENDING : f },
      });
    } catch (err) {
      historyStatus.className = 'error';
      historyStatus.textContent = `${explain(err, 'History not refreshed')} (retrying)`;
      return;
    }
    keepFocus(historyBody, () => replace(historyBody, page.commands.length
      ? page.commands.map((c) => h('tr', null,
        h('td', { 'data-label': 'Sent' }, formatTime(c.created_at)),
        h('td', { 'data-label': 'Name' }, c.name),
        h('td', { 'data-label': 'Status' }, badge(c.status)),
        h('td', { 'data-label': 'Attempts' }, String(c.attempt)),
        h('td', { 'data-label': '' }, h('button', { type: 'button', class: 'secondary', 'data-focus': `show-${c.id}`, 'aria-label': `Show command ${c.name} sent ${formatTime(c.created_at)}`, onclick: () => { follow(c.id); detail.scrollIntoView(); } }, 'Show'))))
      : h('tr', null, h('td', { colspan: 5 }, 'No commands.'))));
    historyStatus.className = 'hint';
    historyStatus.textContent = `Page ${cursors.length}, newest first.`;
    keepFocus(pager, () => replace(pager,
      cursors.length > 1 && h('button', { type: 'button', class: 'secondary', 'data-focus': 'newer', onclick: () => { cursors.pop(); historyLoop.refresh(); } }, 'Newer'),
      page.next && h('button', { type: 'button', class: 'secondary', 'data-focus': 'older', onclick: () => { cursors.push(page.next); historyLoop.refresh(); } }, 'Older')));
  }

  const historyLoop = {
    loop: null,
    refresh() {
      if (this.loop) this.loop.stop();
      this.loop = live.every(HISTORY_MS, loadHistory);
    },
  };
  filter.addEventListener('change', () => {
    cursors.splice(1);
    historyLoop.refresh();
  });
  historyLoop.refresh();

  return h('div', { class: 'commands' },
    form,
    detail,
    h('section', { 'aria-labelledby': 'history-h' },
      h('h2', { id: 'history-h' }, 'Command history'),
      h('div', { class: 'row' }, h('label', { for: 'cmd-filter' }, 'Show'), filter),
      h('div', { class: 'table-wrap' }, h('table', { class: 'stack', id: 'history' },
        h('thead', null, h('tr', null, ['Sent', 'Name', 'Status', 'Attempts', ''].map((c) => h('th', { scope: 'col' }, c)))),
        historyBody)),
      pager, historyStatus));
}
