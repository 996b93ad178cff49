// gpubus web page: sign in with an API key, then submit, follow, retry and
// download jobs. Plain JavaScript modules, no framework, no build step. The key
// lives in sessionStorage (this tab only) and travels only as a bearer header.

import { ApiError, api, session } from './api.js';
import { refreshFleet } from './fleet.js';
import { refreshJobs, resetJobs } from './jobs.js';
import { KEY_REFUSED, UNREACHABLE } from './messages.js';
import { resetSubmit, setupSubmit } from './submit.js';
import { setupTranscript } from './transcript.js';
import { $, showAlert, whileBusy } from './ui.js';

const KEY_STORE = 'gpubus.apiKey';
const POLL_MS = 4000;
let timer = null;

async function validateKey(key) {
  const who = await api('/api/v1/auth/validate-key', { method: 'POST', key });
  if (who.admin) throw new ApiError(403, 'FORBIDDEN', 'That is the admin token. Sign in with a user API key (gpb_…).');
  if (!who.roles.includes('user')) {
    throw new ApiError(403, 'FORBIDDEN', 'This is a node key without the user role. Sign in with a user API key.');
  }
  return who;
}

function signInErrorText(err) {
  if (err.status === 401) {
    return 'That API key was not accepted. Check that you pasted the whole key (it starts with gpb_) '
      + 'and that it has not been revoked or expired.';
  }
  return err.status === undefined ? UNREACHABLE : err.message;
}

function refresh() {
  return Promise.all([refreshJobs(), refreshFleet()]);
}

function enter(key, userId) {
  session.key = key;
  session.userId = userId;
  $('who-name').textContent = userId;
  $('who').hidden = false;
  $('signin').hidden = true;
  $('app').hidden = false;
  $('main').focus();
  refresh();
  timer = window.setInterval(() => { if (!document.hidden) refresh(); }, POLL_MS);
}

function signOut(message) {
  window.clearInterval(timer);
  sessionStorage.removeItem(KEY_STORE);
  session.key = session.userId = null;
  resetJobs();
  resetSubmit();
  $('who').hidden = true;
  $('app').hidden = true;
  $('signin').hidden = false;
  showAlert($('signin-error'), message);
  $('api-key').focus();
}

async function onSignIn(event) {
  event.preventDefault();
  const input = $('api-key');
  const key = input.value.trim();
  const fail = (text) => {
    showAlert($('signin-error'), text);
    input.setAttribute('aria-invalid', 'true');
    input.focus();
    input.select();
  };
  if (!key) { fail('Paste your API key first.'); return; }
  await whileBusy($('signin-button'), async () => {
    try {
      const who = await validateKey(key);
      sessionStorage.setItem(KEY_STORE, key);
      input.value = '';
      input.removeAttribute('aria-invalid');
      showAlert($('signin-error'), '');
      enter(key, who.user_id);
    } catch (err) {
      fail(signInErrorText(err));
    }
  });
}

async function resume() {
  const key = sessionStorage.getItem(KEY_STORE);
  if (!key) return;
  try {
    enter(key, (await validateKey(key)).user_id);
  } catch (err) {
    sessionStorage.removeItem(KEY_STORE);
    showAlert($('signin-error'), signInErrorText(err));
  }
}

session.onUnauthorized = () => signOut(KEY_REFUSED);
$('signin-form').addEventListener('submit', onSignIn);
$('sign-out').addEventListener('click', () => signOut(''));
$('refresh').addEventListener('click', refresh);
setupSubmit();
setupTranscript();
resume();
// Every handler is attached: until now a click on Sign in would be the
// browser's own form submission, which the CSP refuses (form-action 'none').
document.documentElement.dataset.ready = 'true';
