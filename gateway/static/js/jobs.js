// The signed-in user's job list: one row per job, updated in place (so a
// focused button keeps its focus), fed by the list poll and by each active
// job's event stream.

import { api, events, session } from './api.js';
import { FORMATS, formatOf, saveResult } from './downloads.js';
import { FALLBACK_REASONS, ROUTE_NOTES, STATUS_LABEL, jobErrorText, requestErrorText } from './messages.js';
import { hasFormat, isTextKind, openTranscript } from './transcript.js';
import { $, announce, fmtClock, fmtSeconds, h, jobName, whileBusy } from './ui.js';

const TERMINAL = new Set(['succeeded', 'failed', 'cancelled', 'expired']);
const MAX_STREAMS = 3; // event streams at once (browsers allow 6 connections per host); the rest follow the poll
const LIST_LIMIT = 50;

const jobs = new Map();
const rows = new Map();
const streams = new Map();
const liveText = new Map(); // job id -> the current attempt's segment texts by index, while it runs

function fact(label, cls) {
  const dd = h('dd', { class: cls || null });
  return { wrap: h('div', {}, h('dt', { text: label }), dd), dd };
}

function makeRow(job) {
  const id = job.job_id;
  const name = jobName(job);
  const r = {
    li: h('li', { 'data-job-id': id, tabindex: '-1' }), // focusable by script only: see keepFocus
    badge: h('span', { class: 'badge' }),
    lane: fact('Lane'), node: fact('Node', 'mono'), duration: fact('Duration'), pages: fact('Pages'),
    rtf: fact('Real-time factor'), attempts: fact('Attempt'), submitted: fact('Submitted'),
    note: h('p', { class: 'job-note' }),
    error: h('p', { class: 'job-error' }),
    progress: h('progress', { max: '100', value: '0', 'aria-label': `Progress of ${name}` }),
    progressText: h('span'),
    // The text so far, segment by segment as the node finishes them (the `segment` events).
    live: h('p', { class: 'job-live', hidden: '' }),
  };
  r.progressWrap = h('div', { class: 'job-progress' }, r.progress, r.progressText);
  const what = isTextKind(job) ? 'result' : 'transcript';
  r.open = h('button', { type: 'button', class: 'btn btn-primary btn-small', text: `Open ${what}`,
    'aria-label': `Open ${what} of ${name}`, onclick: () => openTranscript(jobs.get(id)) });
  r.download = h('button', { type: 'button', class: 'btn btn-outline btn-small', onclick: () => download(r, id) });
  r.retry = h('button', { type: 'button', class: 'btn btn-primary btn-small', text: 'Retry',
    'aria-label': `Retry ${name}`, onclick: () => control(id, 'retry') });
  r.cancel = h('button', { type: 'button', class: 'btn btn-danger btn-small', text: 'Cancel',
    'aria-label': `Cancel ${name}`, onclick: () => control(id, 'cancel') });
  const facts = h('dl', { class: 'facts' },
    r.lane.wrap, r.node.wrap, r.duration.wrap, r.pages.wrap, r.rtf.wrap, r.attempts.wrap, r.submitted.wrap);
  r.li.append(
    h('div', { class: 'job-body' },
      h('div', { class: 'job-title' }, h('span', { class: 'job-name', text: name, title: name }), r.badge),
      facts, r.note, r.error, r.progressWrap, r.live),
    h('div', { class: 'job-actions' }, r.open, r.download, r.retry, r.cancel),
  );
  return r;
}

function showFacts(r, job) {
  const lane = job.lane === 'gpu' ? 'GPU' : 'CPU';
  const why = job.lane === 'cpu' && !job.fallback ? ROUTE_NOTES[job.routed_reason] : null;
  r.lane.dd.replaceChildren(h('span', { class: `lane lane-${job.lane}`, text: lane }), why ? ` · ${why}` : '');
  r.node.dd.textContent = job.node_id || '';
  r.node.wrap.hidden = !job.node_id;
  const s = job.summary;
  const text = isTextKind(job); // pages, not media seconds
  r.duration.dd.textContent = s && !text ? fmtSeconds(s.duration_s) : '';
  r.duration.wrap.hidden = !s || text;
  r.pages.dd.textContent = s && s.pages ? String(s.pages) : '';
  r.pages.wrap.hidden = !(s && s.pages);
  const rtf = s && s.real_time_factor;
  r.rtf.dd.textContent = rtf ? `${rtf.toFixed(2)} (${fmtSeconds(s.processing_s)} on ${s.device || '?'})` : '';
  r.rtf.wrap.hidden = !rtf;
  r.attempts.dd.textContent = String(job.attempts);
  r.attempts.wrap.hidden = !(job.attempts > 1);
  r.submitted.dd.textContent = fmtClock(job.created_at);
}

function showOutcome(r, job) {
  const fb = job.fallback;
  r.note.textContent = fb ? `Moved from GPU to CPU: ${FALLBACK_REASONS[fb.reason] || fb.reason}.` : '';
  r.note.hidden = !fb;
  const failed = job.status === 'failed' && job.error;
  if (failed) {
    r.error.replaceChildren(jobErrorText(job.error),
      h('span', { class: 'detail' }, h('code', { text: job.error.code }), ` · ${job.error.message}`));
  }
  r.error.hidden = !failed;
  const active = !TERMINAL.has(job.status);
  r.progressWrap.hidden = !active;
  if (active) {
    r.progress.value = Math.round((job.progress || 0) * 100);
    r.progressText.textContent = job.status === 'queued' ? 'Waiting' : `${r.progress.value}%`;
  }
  const text = active ? liveTextOf(job) : '';
  r.live.textContent = text;
  r.live.hidden = !text;
  if (text) r.live.scrollTop = r.live.scrollHeight; // follow the newest text
}

function liveTextOf(job) {
  const live = liveText.get(job.job_id);
  if (!live || live.attempt !== job.attempts) return '';
  return live.parts.filter((t) => t !== undefined).join('').trim();
}

function addSegment(job, attempt, segment) {
  let live = liveText.get(job.job_id);
  if (!live || live.attempt !== attempt) liveText.set(job.job_id, (live = { attempt, parts: [] }));
  live.parts[segment.index] = segment.text;
  upsert({ ...job, status: 'running' });
}

function showActions(r, job) {
  const ext = FORMATS[downloadFormat(job)].toUpperCase();
  r.open.hidden = r.download.hidden = job.status !== 'succeeded';
  r.download.textContent = `Download ${ext}`;
  r.download.setAttribute('aria-label', `Download ${jobName(job)} as ${ext}`);
  r.cancel.hidden = TERMINAL.has(job.status);
  r.retry.hidden = !['failed', 'cancelled', 'expired'].includes(job.status);
}

function merge(before, incoming) {
  if (!before) return incoming;
  if (incoming.updated_at < before.updated_at) return before; // a poll older than the stream's news
  if (before.status === 'running' && incoming.status === 'running' && before.attempts === incoming.attempts) {
    return { ...incoming, progress: Math.max(incoming.progress || 0, before.progress || 0) }; // progress events outrun the record
  }
  return incoming;
}

function keepFocus(r, focused) {
  // A job's actions change under the keyboard (Retry gives way to Cancel, Cancel to Retry):
  // a hidden button cannot keep focus, so it moves to the row's first visible action, or the row.
  if (!focused || !focused.hidden) return;
  const next = [r.cancel, r.open, r.retry, r.download].find((b) => !b.hidden);
  (next || r.li).focus();
}

function upsert(incoming) {
  const before = jobs.get(incoming.job_id);
  const job = merge(before, incoming);
  jobs.set(job.job_id, job);
  let r = rows.get(job.job_id);
  if (!r) rows.set(job.job_id, (r = makeRow(job)));
  const focused = r.li.contains(document.activeElement) ? document.activeElement : null;
  r.li.dataset.status = job.status;
  r.badge.className = `badge status-${job.status}`;
  r.badge.textContent = STATUS_LABEL[job.status] || job.status;
  showFacts(r, job);
  showOutcome(r, job);
  showActions(r, job);
  keepFocus(r, focused);
  if (before && before.status !== job.status) {
    const why = job.status === 'failed' && job.error ? `: ${jobErrorText(job.error)}` : '';
    announce(`${jobName(job)}: ${STATUS_LABEL[job.status] || job.status}${why}`);
  }
}

function place(order) {
  // Insert without moving rows already in place: moving a node blurs a focused button inside it.
  const list = $('jobs');
  order.forEach((id, i) => {
    const li = rows.get(id).li;
    if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null);
  });
  const keep = new Set(order);
  for (const [id, r] of rows) {
    if (!keep.has(id)) { r.li.remove(); rows.delete(id); jobs.delete(id); liveText.delete(id); }
  }
  $('jobs-empty').hidden = order.length > 0;
}

export async function refreshJobs() {
  if (!session.key) return;
  try {
    const { jobs: list } = await api(`/api/v1/jobs?limit=${LIST_LIMIT}`);
    list.forEach(upsert);
    place(list.map((j) => j.job_id));
    followActive();
  } catch (err) {
    if (err.status !== 401) console.warn('job list', err);
  }
}

function control(id, action) {
  const r = rows.get(id);
  return whileBusy(action === 'retry' ? r.retry : r.cancel, async () => {
    try {
      upsert(await api(`/api/v1/jobs/${encodeURIComponent(id)}/${action}`, { method: 'POST' }));
      follow(id);
    } catch (err) {
      announce(`${action === 'retry' ? 'Retry' : 'Cancel'} refused: ${requestErrorText(err)}`);
      refreshJobs();
    }
  });
}

/** The format chosen at submit, or Markdown where the kind has no such format (a PDF as SRT). */
function downloadFormat(job) {
  const chosen = formatOf(job.job_id);
  return hasFormat(job, chosen) ? chosen : 'md';
}

function download(r, id) {
  return whileBusy(r.download, async () => {
    const job = jobs.get(id);
    try {
      announce(`Downloaded ${await saveResult(id, downloadFormat(job), jobName(job))}`);
    } catch (err) {
      announce(`Download failed: ${requestErrorText(err)}`);
    }
  });
}

function onEvent(id, { event, data }) {
  if (event === 'state') { upsert(data); return; }
  // Node events replay from the job's first attempt: only the current attempt's move the row.
  const job = jobs.get(id);
  if (!job || TERMINAL.has(job.status) || data.attempt !== job.attempts) return;
  if (event === 'started') upsert({ ...job, status: 'running', node_id: data.node_id, lane: data.lane || job.lane });
  else if (event === 'progress' && typeof data.progress === 'number') {
    upsert({ ...job, status: 'running', progress: data.progress, node_id: data.node_id || job.node_id });
  } else if (event === 'segment' && data.segment) addSegment(job, data.attempt, data.segment);
}

/** Follow one job's event stream (while a slot is free) until its terminal state. */
export async function follow(id) {
  if (!session.key || streams.has(id) || streams.size >= MAX_STREAMS) return;
  const ctl = new AbortController();
  streams.set(id, ctl);
  try {
    for await (const item of events(`/api/v1/jobs/${encodeURIComponent(id)}/events`, ctl.signal)) onEvent(id, item);
  } catch (err) {
    if (err.name !== 'AbortError' && err.status !== 401) console.warn('events', id, err);
  } finally {
    if (streams.get(id) === ctl) streams.delete(id);
  }
  followActive(id); // a slot is free; this job, if its stream broke, waits for the next poll
}

function followActive(except = null) {
  for (const job of jobs.values()) if (!TERMINAL.has(job.status) && job.job_id !== except) follow(job.job_id);
}

export function resetJobs() {
  for (const ctl of streams.values()) ctl.abort();
  streams.clear();
  liveText.clear();
  jobs.clear();
  rows.clear();
  $('jobs').replaceChildren();
}
