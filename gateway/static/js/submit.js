// New jobs: files (picker or drag-and-drop) and URLs, with the per-submission
// options ("Run on GPU", "Label speakers", language, priority, output format) and upload progress per file.

import { api, upload } from './api.js';
import { rememberFormat } from './downloads.js';
import { follow, refreshJobs } from './jobs.js';
import { UNREACHABLE, requestErrorText } from './messages.js';
import { $, announce, fmtBytes, h, showAlert } from './ui.js';

const selected = [];

function renderSelected() {
  const list = $('selected');
  list.replaceChildren(...selected.map((file, i) => h('li', { class: 'chip' },
    h('span', { class: 'chip-name', text: file.name }),
    h('span', { class: 'chip-size', text: fmtBytes(file.size) }),
    h('button', { type: 'button', 'aria-label': `Remove ${file.name}`, text: '×', onclick: () => {
      selected.splice(i, 1);
      renderSelected();
      $('files').focus();
    } }))));
  list.hidden = selected.length === 0;
}

function addFiles(files) {
  selected.push(...files);
  renderSelected();
  showAlert($('submit-error'), '');
}

function choices() {
  const options = {};
  if ($('language').value) options.language = $('language').value;
  if ($('diarize').checked) {
    options.diarize = true;
    if ($('speakers').value) options.num_speakers = Number($('speakers').value);
  }
  if ($('priority').value) options.priority = $('priority').value;
  return { gpu: $('gpu').checked, options, format: $('format').value, urlKind: $('url-kind').value };
}

function uploadRow(label) {
  const bar = h('progress', { max: '100', value: '0', 'aria-label': `Upload of ${label.name}` });
  const state = h('span', { class: 'upload-state', text: 'Waiting…' });
  const title = label.size === null ? label.name : `${label.name} · ${fmtBytes(label.size)}`;
  const li = h('li', { class: 'upload' }, h('span', { class: 'upload-name', text: title, title }), state, bar);
  $('uploads').append(li);
  return {
    progress(fraction) { bar.value = Math.round(fraction * 100); state.textContent = `Uploading ${bar.value}%`; },
    done(body) {
      li.classList.add('done');
      state.textContent = `Uploaded · queued on ${body.lane === 'gpu' ? 'GPU' : 'CPU'}`;
    },
    fail(text) { li.classList.add('failed'); bar.hidden = true; state.textContent = text; },
  };
}

function queued(body, choice, name) {
  rememberFormat(body.job_id, choice.format);
  announce(`${name} queued on ${body.lane === 'gpu' ? 'GPU' : 'CPU'}`);
  refreshJobs().then(() => follow(body.job_id));
}

async function sendFile(file, choice) {
  const row = uploadRow(file);
  const form = new FormData();
  form.append('gpu', choice.gpu ? 'true' : 'false');
  form.append('options', JSON.stringify(choice.options));
  form.append('file', file, file.name);
  try {
    const body = await upload('/api/v1/jobs', form, (f) => row.progress(f));
    row.done(body);
    queued(body, choice, file.name);
  } catch (err) {
    row.fail(err.status === undefined ? `The upload was interrupted. ${UNREACHABLE}` : requestErrorText(err));
  }
}

async function sendUrl(url, choice) {
  const row = uploadRow({ name: url, size: null });
  try {
    const job = { url, kind: choice.urlKind, gpu: choice.gpu, options: choice.options };
    const body = await api('/api/v1/jobs', { method: 'POST', body: job });
    row.done(body);
    queued(body, choice, url);
    return true;
  } catch (err) {
    row.fail(requestErrorText(err));
    return false;
  }
}

async function onSubmit(event) {
  event.preventDefault();
  const url = $('url').value.trim();
  if (!selected.length && !url) {
    showAlert($('submit-error'), 'Choose or drop a file, or paste a URL.');
    $('files').focus();
    return;
  }
  showAlert($('submit-error'), '');
  const files = selected.splice(0);
  renderSelected();
  const choice = choices();
  $('uploads').querySelectorAll('li.done, li.failed').forEach((li) => li.remove()); // earlier batches' rows
  if (url && await sendUrl(url, choice)) $('url').value = '';
  for (const file of files) await sendFile(file, choice); // one at a time: each gets the whole link
}

export function setupSubmit() {
  const zone = $('dropzone');
  const input = $('files');
  $('submit-form').addEventListener('submit', onSubmit);
  $('diarize').addEventListener('change', () => { $('speakers-field').hidden = !$('diarize').checked; });
  input.addEventListener('change', () => { addFiles(input.files); input.value = ''; });
  for (const type of ['dragenter', 'dragover']) {
    zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.add('dragging'); });
  }
  for (const type of ['dragleave', 'drop']) zone.addEventListener(type, () => zone.classList.remove('dragging'));
  zone.addEventListener('drop', (e) => {
    e.preventDefault();
    if (e.dataTransfer && e.dataTransfer.files.length) addFiles(e.dataTransfer.files);
  });
  // A file dropped beside the zone must not make the browser navigate away from the page.
  window.addEventListener('dragover', (e) => e.preventDefault());
  window.addEventListener('drop', (e) => e.preventDefault());
}

export function resetSubmit() {
  selected.length = 0;
  renderSelected();
  $('uploads').replaceChildren();
}
