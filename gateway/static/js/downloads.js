// Results as files: fetched with the bearer header, saved from a Blob through
// an object URL (a plain link could not carry the key).

import { fetchBlob } from './api.js';

export const FORMATS = { text: 'txt', srt: 'srt', vtt: 'vtt', tsv: 'tsv', json: 'json', md: 'md', rttm: 'rttm' };
const FORMAT_STORE = 'gpubus.formats';
const REMEMBERED = 200;

// The output format chosen when each job was submitted (not a secret: localStorage).
function remembered() {
  try { return JSON.parse(localStorage.getItem(FORMAT_STORE) || '{}'); } catch { return {}; }
}

export function rememberFormat(jobId, format) {
  const all = remembered();
  all[jobId] = format;
  const ids = Object.keys(all);
  for (const old of ids.slice(0, Math.max(0, ids.length - REMEMBERED))) delete all[old];
  localStorage.setItem(FORMAT_STORE, JSON.stringify(all));
}

export function formatOf(jobId) {
  const f = remembered()[jobId];
  return FORMATS[f] ? f : 'text';
}

/** `hello.wav` + srt → `hello.srt`; a URL job → its last path part. */
export function fileName(name, format) {
  const base = name.replace(/[?#].*$/, '').replace(/\/+$/, '').replace(/^.*[\\/]/, '').replace(/\.[^.]+$/, '');
  return `${base || 'transcript'}.${FORMATS[format]}`;
}

/** Download one job's result in `format`; resolves to the file name, rejects with ApiError. */
export async function saveResult(jobId, format, name) {
  const blob = await fetchBlob(`/api/v1/jobs/${encodeURIComponent(jobId)}/result?format=${format}`);
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = fileName(name, format);
  a.hidden = true;
  document.body.append(a);
  a.click();
  a.remove();
  window.setTimeout(() => URL.revokeObjectURL(url), 30000);
  return a.download;
}
