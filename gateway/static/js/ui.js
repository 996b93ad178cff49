// DOM and formatting helpers shared by the page's modules.

export const $ = (id) => document.getElementById(id);

/** Build an element: h('button', { class: 'btn', text: 'Go', onclick: fn }, ...children). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) if (c !== null && c !== undefined) el.append(c);
  return el;
}

/** Say something to screen-reader users through the page's polite live region. */
export function announce(text) {
  const el = $('announcer');
  el.textContent = '';
  window.setTimeout(() => { el.textContent = text; }, 50);
}

export function showAlert(el, text) {
  el.textContent = text || '';
  el.hidden = !text;
}

export function fmtSeconds(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return '–';
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(Math.round(s % 60)).padStart(2, '0')} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, '0')} min`;
}

/** A segment timestamp: m:ss.s, or h:mm:ss.s past the hour. */
export function fmtStamp(s) {
  const hours = Math.floor(s / 3600);
  const mins = Math.floor((s % 3600) / 60);
  const secs = (s % 60).toFixed(1).padStart(4, '0');
  return hours ? `${hours}:${String(mins).padStart(2, '0')}:${secs}` : `${mins}:${secs}`;
}

export function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

export function fmtClock(epochS) {
  return new Date(epochS * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

export function jobName(job) {
  if (job.input && job.input.filename) return job.input.filename;
  return job.url || job.job_id;
}

/**
 * Run `work` while `button` shows it is busy. Not `disabled`: disabling the
 * focused button would drop keyboard focus to the page. A second press while
 * busy does nothing.
 */
export async function whileBusy(button, work) {
  if (button.getAttribute('aria-disabled') === 'true') return;
  button.setAttribute('aria-disabled', 'true');
  try {
    await work();
  } finally {
    button.removeAttribute('aria-disabled');
  }
}
