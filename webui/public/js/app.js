// The web app's entry: routes (#/devices, #/devices/<id>, #/rollouts, #/rollouts/<id>), the
// login gate, the notice area,
// and a last-resort error handler so a failure is said in words, never a blank page.

import { explain, session } from './api.js';
import { deviceView } from './device.js';
import { devicesView } from './devices.js';
import { h, replace } from './dom.js';
import { Live } from './live.js';
import { loginView } from './login.js';
import { rolloutView } from './rollout.js';
import { rolloutsView } from './rollouts.js';
import { selection } from './selection.js';

const main = document.getElementById('main');
const who = document.getElementById('who');
const notice = document.getElementById('notice');
const nav = document.getElementById('nav');
let live = null;

/** A message above the page, until dismissed or replaced. */
export function notify(message, kind = 'error') {
  replace(notice,
    h('p', { class: kind }, message, ' ',
      h('button', { type: 'button', class: 'link', onclick: () => replace(notice) }, 'Dismiss')));
}

function renderWho() {
  const user = session.user;
  if (!user) {
    replace(who);
    return;
  }
  const ends = new Date(user.expires).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  replace(who,
    h('span', { title: `logged in until ${ends}` }, user.name, user.admin ? ' (admin)' : ''),
    ' ',
    h('button', { type: 'button', onclick: logout }, 'Log out'));
}

function logout() {
  session.logout();
  selection.clear();
  replace(notice);
  route();
}

function route() {
  if (live) live.stop();
  live = new Live();
  renderWho();
  nav.hidden = !session.user;
  const hash = window.location.hash;
  for (const a of nav.querySelectorAll('a')) {
    if ((hash || '#/devices').startsWith(a.getAttribute('href'))) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (!session.user) {
    loginView(main, live, () => {
      replace(notice);
      route();
    });
  } else {
    const device = hash.match(/^#\/devices\/([0-9a-fA-F-]{36})$/);
    const rollout = hash.match(/^#\/rollouts\/([0-9a-fA-F-]{36})$/);
    if (device) deviceView(main, live, device[1]);
    else if (rollout) rolloutView(main, live, rollout[1]);
    else if (hash === '#/rollouts') rolloutsView(main, live);
    else devicesView(main, live);
  }
  const heading = main.querySelector('h1');
  if (heading && !main.contains(document.activeElement)) {
    heading.setAttribute('tabindex', '-1');
    heading.focus();
  }
}

session.onEnd = (err) => {
  notify(`You were logged out: ${err.detail || 'the access token is no longer valid'}. Log in again.`);
  route();
};

window.addEventListener('hashchange', route);
window.addEventListener('error', (event) => {
  notify(`Something went wrong in the page (${event.message}). Reload it to start again.`);
});
window.addEventListener('unhandledrejection', (event) => {
  notify(explain(event.reason, 'something failed'));
});

route();
