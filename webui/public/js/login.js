// Log in with a user name and password; the access token stays in memory (api.js).

import { explain, session } from './api.js';
import { h, replace } from './dom.js';

export function loginView(main, live, done) {
  const status = h('p', { class: 'error', role: 'alert' });
  const username = h('input', { id: 'login-user', name: 'username', autocomplete: 'username', required: true });
  const password = h('input', { id: 'login-password', name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const button = h('button', { type: 'submit' }, 'Log in');
  const form = h('form', { class: 'card narrow', onsubmit: submit },
    h('label', { for: 'login-user' }, 'User name'), username,
    h('label', { for: 'login-password' }, 'Password'), password,
    button, status,
    h('p', { class: 'hint' }, 'You stay logged in for an hour while this tab is open; reloading the page logs you out.'));

  async function submit(event) {
    event.preventDefault();
    button.disabled = true;
    status.textContent = '';
    try {
      await session.login(username.value.trim(), password.value);
    } catch (err) {
      status.textContent = err.status === 401 ? 'Wrong user name or password.' : explain(err, 'Not logged in');
      button.disabled = false;
      password.select();
      return;
    }
    if (live.active) done();
  }

  replace(main, h('h1', null, 'Log in'), form);
  username.focus();
}
