// The web app's entry: routes (#/devices, #/devices/<id>), the login gate, the notice area,
// and a last-resort error handler so a failure is said in words, never a blank page.

import { explain, session } from './api.js';
import { deviceView } from './device.js';
import { devicesView } from './devices.js';
import { h, replace } from './dom.js';
import { Live } from './live.js';
import { loginView } from './login.js';

const main = document.getElementById('main');
const who = document.getElementById('who');
const notice = document.getElementById('notice');
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
  replace(notice);
  route();
}

function route() {
  if (live) live.stop();
  live = new Live();
  renderWho();
  if (!session.user) {
    loginView(main, live, () => {
      replace(notice);
      route();
    });
  } else {
    const match = window.location.hash.match(/^#\/devices\/([0-9a-fA-F-]{36})$/);
    if (match) deviceView(main, live, match[1]);
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
