// The gateway's REST API, always with the API key as a bearer header (never in
// a URL, never in a cookie). Server-Sent Events are read with fetch() and a
// stream reader, because EventSource cannot send an Authorization header.

export const session = {
  key: null,
  userId: null,
  onUnauthorized: () => {}, // set by the app: a key that stops working signs the tab out
};

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function authHeaders(extra = {}, key = session.key) {
  return { Authorization: `Bearer ${key}`, ...extra };
}

function errorOf(status, body, statusText) {
  const e = body && body.error ? body.error : { code: `HTTP_${status}`, message: statusText || 'request failed' };
  return new ApiError(status, e.code, e.message);
}

async function raise(response, key) {
  let body = null;
  try { body = await response.json(); } catch { /* not JSON */ }
  const err = errorOf(response.status, body, response.statusText);
  if (err.status === 401 && !key && session.key) session.onUnauthorized();
  throw err;
}

/** JSON in, JSON out. `key` checks a key that is not the session's yet. */
export async function api(path, { method = 'GET', body, key } = {}) {
  const headers = authHeaders(body === undefined ? {} : { 'Content-Type': 'application/json' }, key || session.key);
  const response = await fetch(path, {
    method, headers, cache: 'no-store', body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) await raise(response, key);
  return response.json();
}

/** A result as a Blob (for downloads through an object URL). */
export async function fetchBlob(path) {
  const response = await fetch(path, { headers: authHeaders(), cache: 'no-store' });
  if (!response.ok) await raise(response);
  return response.blob();
}

/** POST a multipart form with upload progress (fetch() cannot report it; XMLHttpRequest can). */
export function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', path);
    xhr.setRequestHeader('Authorization', `Bearer ${session.key}`);
    xhr.responseType = 'json';
    xhr.upload.addEventListener('progress', (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); });
    xhr.addEventListener('load', () => {
      if (xhr.status >= 200 && xhr.status < 300) { resolve(xhr.response); return; }
      const err = errorOf(xhr.status, xhr.response, xhr.statusText);
      if (err.status === 401) session.onUnauthorized();
      reject(err);
    });
    xhr.addEventListener('error', () => reject(new TypeError('network error')));
    xhr.send(form);
  });
}

function parseBlock(block) {
  let event = 'message';
  const data = [];
  for (const line of block.split('\n')) {
    if (!line || line.startsWith(':')) continue; // a `: ping` comment
    const i = line.indexOf(':');
    const field = i < 0 ? line : line.slice(0, i);
    const value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
    if (field === 'event') event = value;
    else if (field === 'data') data.push(value);
  }
  return data.length ? { event, data: JSON.parse(data.join('\n')) } : null;
}

/** Yield {event, data} from a Server-Sent Events endpoint until it ends or `signal` aborts. */
export async function* events(path, signal) {
  const response = await fetch(path, { headers: authHeaders({ Accept: 'text/event-stream' }), signal, cache: 'no-store' });
  if (!response.ok || !response.body) await raise(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, '\n');
    let cut;
    while ((cut = buffer.indexOf('\n\n')) >= 0) {
      const parsed = parseBlock(buffer.slice(0, cut));
      buffer = buffer.slice(cut + 2);
      if (parsed) yield parsed;
    }
  }
}
