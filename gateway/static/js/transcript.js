// The transcript view: a modal dialog (focus kept inside, Escape closes) with
// segment timestamps and one download button per format.

import { api } from './api.js';
import { saveResult } from './downloads.js';
import { requestErrorText } from './messages.js';
import { $, announce, fmtSeconds, fmtStamp, h, jobName, showAlert, whileBusy } from './ui.js';

let shown = null; // the job in the dialog

function languageName(code) {
  const option = $('language').querySelector(`option[value="${CSS.escape(code)}"]`);
  return option && option.value ? option.textContent : code;
}

function describe(t) {
  const speakers = t.speakers && `${t.speakers.length} speaker${t.speakers.length === 1 ? '' : 's'}`;
  return [
    t.language && languageName(t.language),
    `${fmtSeconds(t.duration)} of audio`,
    speakers,
    t.model && `${t.model} on ${t.device || '?'}`,
    t.node_id && `node ${t.node_id}`,
    t.real_time_factor && `real-time factor ${t.real_time_factor.toFixed(2)}`,
  ].filter(Boolean).join(' · ');
}

function segmentItem(s) {
  return h('li', {},
    h('time', { datetime: `PT${s.start.toFixed(2)}S`, text: `${fmtStamp(s.start)} – ${fmtStamp(s.end)}` }),
    h('span', {}, s.speaker ? h('strong', { class: 'speaker', text: `${s.speaker}: ` }) : null, s.text.trim()));
}

export async function openTranscript(job) {
  const dialog = $('transcript');
  shown = job;
  $('tr-title').textContent = jobName(job);
  $('tr-meta').textContent = 'Loading…';
  showAlert($('tr-error'), '');
  $('tr-segments').replaceChildren();
  $('tr-rttm').hidden = true;
  if (!dialog.open) dialog.showModal();
  try {
    const t = await api(`/api/v1/jobs/${encodeURIComponent(job.job_id)}/result?format=json`);
    $('tr-meta').textContent = describe(t);
    $('tr-rttm').hidden = !t.speakers; // RTTM: who spoke when, for diarized jobs only
    const items = t.segments.map(segmentItem);
    $('tr-segments').replaceChildren(...(items.length ? items : [h('li', { class: 'empty', text: 'No speech was found in this file.' })]));
  } catch (err) {
    $('tr-meta').textContent = '';
    showAlert($('tr-error'), requestErrorText(err));
  }
}

function download(button) {
  return whileBusy(button, async () => {
    try {
      announce(`Downloaded ${await saveResult(shown.job_id, button.dataset.format, jobName(shown))}`);
    } catch (err) {
      showAlert($('tr-error'), `Download failed: ${requestErrorText(err)}`);
    }
  });
}

export function setupTranscript() {
  const dialog = $('transcript');
  $('tr-close').addEventListener('click', () => dialog.close());
  dialog.addEventListener('click', (e) => { if (e.target === dialog) dialog.close(); }); // a click on the backdrop
  for (const b of dialog.querySelectorAll('[data-format]')) {
    b.setAttribute('aria-label', `Download as ${b.textContent}`);
    b.addEventListener('click', () => download(b));
  }
}
