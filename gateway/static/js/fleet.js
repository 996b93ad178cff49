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

function queueName(c) {
  const priority = c.priority && c.priority !== 'normal' ? ` · ${c.priority}` : '';
  if (c.owner === session.userId) return `Your ${c.lane.toUpperCase()} queue${priority}`;
  if (c.job_owner === session.userId) return `Your share of the shared pool${priority}`;
  return 'Shared CPU pool (older jobs)';
}

function queueItem(c) {
  const lag = c.pending ? ` · oldest ${fmtSeconds(c.lag_s)}` : '';
  return h('li', {},
    h('span', { text: queueName(c) }),
    h('span', { class: 'queue-figures', text: `${c.pending} waiting · ${c.ack_pending} running${lag}` }));
}

// One row per priority the user has jobs of: how many wait, and for how long the oldest has.
function waitingItem(w) {
  const label = w.priority.charAt(0).toUpperCase() + w.priority.slice(1);
  const oldest = w.waiting ? ` · oldest ${fmtSeconds(w.oldest_wait_s)}` : '';
  return h('li', { 'data-priority': w.priority },
    h('span', { text: label }),
    h('span', { class: 'queue-figures', text: `${w.waiting} waiting · ${w.running} running${oldest}` }));
}

function poolLine(pool) {
  if (!pool || !pool.waiting) return 'The shared pool has nothing waiting.';
  const owners = pool.owners_waiting === 1 ? '1 user' : `${pool.owners_waiting} users`;
  return `Shared pool: ${pool.waiting} waiting from ${owners}, taken in turns.`;
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
    // Your lanes always; high and low queues and the shared pool only while they hold work.
    const always = (c) => c.owner === session.userId && (c.priority || 'normal') === 'normal';
    const mine = queues.consumers.filter((c) => always(c) || c.pending || c.ack_pending);
    $('queues').replaceChildren(...mine.map(queueItem));
    $('queues-empty').hidden = mine.length > 0;
    const waiting = (queues.waiting || []).filter((w) => w.owner === session.userId);
    $('waiting').replaceChildren(...waiting.map(waitingItem));
    $('pool-line').textContent = poolLine(queues.shared_pool);
    $('gpu-hint').textContent = gpuHint(nodes);
  } catch (err) {
    if (err.status !== 401) console.warn('fleet', err);
  }
}
