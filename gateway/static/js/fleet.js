// The fleet panel: live nodes the user's jobs can run on, and the user's queues.

import { api, session } from './api.js';
import { $, fmtSeconds, h } from './ui.js';

function nodeItem(n) {
  const whose = n.owner === session.userId ? 'yours' : 'shared pool';
  const models = n.models && n.models.length ? ` · ${n.models.join(', ')}` : '';
  return h('li', {},
    h('span', { class: `lane lane-${n.lane}`, text: n.lane.toUpperCase() }),
    h('span', { class: 'node-id', text: n.node_id, title: n.node_id }),
    h('span', { class: 'node-load', text: `${n.busy}/${n.capacity} busy` }),
    h('span', { class: 'node-sub', text: `${n.device} · ${whose}${models}` }));
}

function queueItem(c) {
  const name = c.owner === session.userId ? `Your ${c.lane.toUpperCase()} queue` : 'Shared CPU pool';
  const lag = c.pending ? ` · oldest ${fmtSeconds(c.lag_s)}` : '';
  return h('li', {},
    h('span', { text: name }),
    h('span', { class: 'queue-figures', text: `${c.pending} waiting · ${c.ack_pending} running${lag}` }));
}

function gpuHint(nodes) {
  const gpus = nodes.filter((n) => n.lane === 'gpu' && n.owner === session.userId).length;
  if (!gpus) return 'No GPU node of yours is online: jobs run on CPU';
  return `${gpus} GPU node${gpus > 1 ? 's' : ''} of yours online`;
}

export async function refreshFleet() {
  if (!session.key) return;
  try {
    const [{ nodes }, queues] = await Promise.all([api('/api/v1/status/workers'), api('/api/v1/auth/queue-info')]);
    $('nodes').replaceChildren(...nodes.map(nodeItem));
    $('nodes-empty').hidden = nodes.length > 0;
    // The shared pool is everyone's: show it only while it holds work.
    const mine = queues.consumers.filter((c) => c.owner === session.userId || c.pending || c.ack_pending);
    $('queues').replaceChildren(...mine.map(queueItem));
    $('queues-empty').hidden = mine.length > 0;
    $('gpu-hint').textContent = gpuHint(nodes);
  } catch (err) {
    if (err.status !== 401) console.warn('fleet', err);
  }
}
