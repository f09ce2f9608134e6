// The skiff dashboard. Plain browser JavaScript, no framework and no build step: every panel
// reads the ordinary Kubernetes API (plus /ui/api/cluster for the raft view) with the bearer
// token the user signed in with; pods are kept live by a watch (?watch=1) read as a fetch
// stream, the other panels are re-read every few seconds.
'use strict';

const POLL_MS = 5000;
const CHART_POINTS = 60;
const WRITE_VERBS = new Set(['create', 'update', 'patch', 'delete', 'deletecollection']);
const TOKEN_KEY = 'skiff-dashboard-token';

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || '',
  running: false,
  pollTimer: 0,
  watchAbort: null,
  pods: new Map(),
  podsVersion: '',
  renderPending: false,
  samples: [],
  lastCounters: null,
};

/// An HTTP error from the API, with the Status message kube-apiserver-style servers send.
class ApiError extends Error {
  constructor(status, reason, message) {
    super(`${status} ${reason}: ${message}`);
    this.status = status;
  }
  get refused() { return this.status === 401 || this.status === 403; }
}

function headers(accept) {
  const h = { Accept: accept };
  // An empty token sends no credentials at all: the server then sees an anonymous user and
  // refuses it, which is what the page shows.
  if (state.token) h.Authorization = `Bearer ${state.token}`;
  return h;
}

async function failure(res) {
  let reason = res.statusText || 'error';
  let message = '';
  try {
    const body = await res.json();
    reason = body.reason || reason;
    message = body.message || '';
  } catch (_) { /* not a Status object */ }
  return new ApiError(res.status, reason, message || reason);
}

async function api(path, { text = false, signal } = {}) {
  const res = await fetch(path, {
    headers: headers(text ? 'text/plain' : 'application/json'),
    cache: 'no-store',
    signal,
  });
  if (!res.ok) throw await failure(res);
  return text ? res.text() : res.json();
}

// ---- small DOM helpers (textContent only: names and messages are never parsed as HTML) ----

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function fillTable(id, rows) {
  const body = document.querySelector(`#${id} tbody`);
  const fresh = document.createElement('tbody');
  for (const row of rows) {
    const tr = document.createElement('tr');
    if (row.key) tr.dataset.key = row.key;
    for (const cell of row.cells) {
      tr.append(cell instanceof Node ? wrapCell(cell) : el('td', cell));
    }
    fresh.append(tr);
  }
  if (rows.length === 0) {
    const tr = document.createElement('tr');
    const td = el('td', 'none', 'muted');
    td.colSpan = document.querySelectorAll(`#${id} thead th`).length;
    tr.append(td);
    fresh.append(tr);
  }
  body.replaceWith(fresh);
}

function wrapCell(node) {
  if (node.tagName === 'TD') return node;
  const td = document.createElement('td');
  td.append(node);
  return td;
}

function showError(err) {
  const box = document.getElementById('error');
  box.textContent = err ? String(err.message || err) : '';
  box.hidden = !err;
}

function age(timestamp) {
  if (!timestamp) return '';
  const s = Math.max(0, Math.floor((Date.now() - Date.parse(timestamp)) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  if (s < 172800) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

function bytes(n) {
  if (n >= 1 << 30) return `${(n / (1 << 30)).toFixed(1)}G`;
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)}M`;
  if (n >= 1 << 10) return `${(n / 1024).toFixed(1)}K`;
  return `${n}B`;
}

// ---- panels ----

async function loadCluster() {
  const status = await api('/ui/api/cluster');
  document.getElementById('cluster-id').textContent = `cluster ${status.cluster_id}`;
  document.getElementById('leader').textContent = `leader ${status.leader || '<none>'}`;
  fillTable('members', status.members.map((m) => {
    const health = m.error ? el('td', `unreachable: ${m.error}`, 'bad')
      : m.healthy ? el('td', 'ok', 'ok') : el('td', 'no leader', 'bad');
    return {
      key: m.name,
      cells: [m.name, m.role, m.term, m.commit, m.applied, m.revision, bytes(m.db_bytes), health],
    };
  }));
}

function condition(obj, type) {
  return (obj.status?.conditions || []).find((c) => c.type === type);
}

async function loadNodes() {
  const list = await api('/api/v1/nodes');
  fillTable('nodes', list.items.map((n) => {
    const ready = condition(n, 'Ready');
    let status = ready?.status === 'True' ? 'Ready' : 'NotReady';
    if (n.spec?.unschedulable) status += ',SchedulingDisabled';
    const roles = Object.keys(n.metadata.labels || {})
      .filter((l) => l.startsWith('node-role.kubernetes.io/'))
      .map((l) => l.slice('node-role.kubernetes.io/'.length)).join(',') || '<none>';
    const address = (n.status?.addresses || []).find((a) => a.type === 'InternalIP')?.address || '';
    return {
      key: n.metadata.name,
      cells: [n.metadata.name, el('td', status, status === 'Ready' ? 'ok' : 'bad'), roles,
        address, n.spec?.podCIDR || '', n.status?.nodeInfo?.kubeletVersion || '',
        age(n.metadata.creationTimestamp)],
    };
  }));
}

async function loadWorkloads() {
  const [deployments, statefulsets, daemonsets] = await Promise.all([
    api('/apis/apps/v1/deployments'),
    api('/apis/apps/v1/statefulsets'),
    api('/apis/apps/v1/daemonsets'),
  ]);
  const row = (kind, o, ready, want, updated, available) => ({
    key: `${kind}/${o.metadata.namespace}/${o.metadata.name}`,
    cells: [kind, o.metadata.namespace, o.metadata.name,
      el('td', `${ready}/${want}`, ready >= want ? 'ok' : 'warn'), updated, available,
      age(o.metadata.creationTimestamp)],
  });
  const rows = [
    ...deployments.items.map((d) => row('Deployment', d, d.status?.readyReplicas || 0,
      d.spec?.replicas ?? 1, d.status?.updatedReplicas || 0, d.status?.availableReplicas || 0)),
    ...statefulsets.items.map((s) => row('StatefulSet', s, s.status?.readyReplicas || 0,
      s.spec?.replicas ?? 1, s.status?.updatedReplicas || 0, s.status?.availableReplicas || 0)),
    ...daemonsets.items.map((d) => row('DaemonSet', d, d.status?.numberReady || 0,
      d.status?.desiredNumberScheduled || 0, d.status?.updatedNumberScheduled || 0,
      d.status?.numberAvailable || 0)),
  ];
  fillTable('workloads', rows);
}

async function loadEvents() {
  const list = await api('/api/v1/events');
  const when = (e) => e.lastTimestamp || e.eventTime || e.metadata.creationTimestamp || '';
  const recent = list.items.sort((a, b) => Date.parse(when(b)) - Date.parse(when(a))).slice(0, 30);
  fillTable('events', recent.map((e) => ({
    key: e.metadata.uid,
    cells: [age(when(e)), el('td', e.type, e.type === 'Warning' ? 'warn' : ''),
      e.metadata.namespace, `${(e.involvedObject?.kind || '').toLowerCase()}/${e.involvedObject?.name || ''}`,
      e.reason || '', el('td', e.message || '', 'message')],
  })));
}

// ---- pods: list, then watch from the list's resourceVersion ----

/// The STATUS column as kubectl prints it: a waiting/terminated reason wins over the phase.
function podStatus(p) {
  if (p.metadata.deletionTimestamp) return 'Terminating';
  let reason = p.status?.reason || p.status?.phase || 'Pending';
  for (const c of p.status?.containerStatuses || []) {
    const r = c.state?.waiting?.reason || c.state?.terminated?.reason;
    if (r && !(c.state?.terminated && p.status?.phase === 'Succeeded')) reason = r;
  }
  return reason;
}

function renderPods() {
  state.renderPending = false;
  const pods = [...state.pods.values()].sort((a, b) =>
    `${a.metadata.namespace}/${a.metadata.name}`.localeCompare(`${b.metadata.namespace}/${b.metadata.name}`));
  fillTable('pods', pods.map((p) => {
    const statuses = p.status?.containerStatuses || [];
    const ready = statuses.filter((c) => c.ready).length;
    const total = (p.spec?.containers || []).length;
    const status = podStatus(p);
    const cls = ['Running', 'Succeeded', 'Completed'].includes(status) ? 'ok'
      : ['Pending', 'ContainerCreating', 'Terminating'].includes(status) ? 'warn' : 'bad';
    return {
      key: `${p.metadata.namespace}/${p.metadata.name}`,
      cells: [p.metadata.namespace, p.metadata.name, `${ready}/${total}`, el('td', status, cls),
        statuses.reduce((n, c) => n + (c.restartCount || 0), 0), p.spec?.nodeName || '',
        p.status?.podIP || '', age(p.metadata.creationTimestamp)],
    };
  }));
}

function scheduleRender() {
  // Events come in bursts (a Deployment's pods): draw once per burst.
  if (!state.renderPending) {
    state.renderPending = true;
    setTimeout(renderPods, 50);
  }
}

function setWatchState(text, cls) {
  const badge = document.getElementById('watch-state');
  badge.textContent = text;
  badge.className = `badge ${cls || ''}`;
}

function applyPodEvent(event) {
  const obj = event.object || {};
  switch (event.type) {
    case 'ADDED':
    case 'MODIFIED':
      state.pods.set(obj.metadata.uid, obj);
      break;
    case 'DELETED':
      state.pods.delete(obj.metadata.uid);
      break;
    case 'BOOKMARK':
      break;
    case 'ERROR':
      // 410 Gone: our resourceVersion was compacted away; list again.
      if (obj.code === 410) state.podsVersion = '';
      return;
    default:
      return;
  }
  if (obj.metadata?.resourceVersion) state.podsVersion = obj.metadata.resourceVersion;
  scheduleRender();
}

async function watchPods() {
  while (state.running) {
    const abort = new AbortController();
    state.watchAbort = abort;
    try {
      if (!state.podsVersion) {
        const list = await api('/api/v1/pods', { signal: abort.signal });
        state.pods = new Map(list.items.map((p) => [p.metadata.uid, p]));
        state.podsVersion = list.metadata.resourceVersion;
        scheduleRender();
      }
      const path = `/api/v1/pods?watch=1&allowWatchBookmarks=true&timeoutSeconds=600&resourceVersion=${encodeURIComponent(state.podsVersion)}`;
      const res = await fetch(path, { headers: headers('application/json'), cache: 'no-store', signal: abort.signal });
      if (!res.ok) throw await failure(res);
      setWatchState('live', 'live');
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buffered = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffered += decoder.decode(value, { stream: true });
        let newline;
        while ((newline = buffered.indexOf('\n')) >= 0) {
          const line = buffered.slice(0, newline).trim();
          buffered = buffered.slice(newline + 1);
          if (line) applyPodEvent(JSON.parse(line));
        }
      }
      // The server ended the watch (timeoutSeconds): resume from the last version seen.
    } catch (err) {
      if (!state.running || abort.signal.aborted) return;
      if (err instanceof ApiError && err.refused) {
        refused(err);
        return;
      }
      setWatchState('reconnecting', 'down');
      await new Promise((r) => setTimeout(r, 2000));
    }
  }
}

// ---- the write chart, from this member's /metrics ----

/// Sums of the write verbs' request counter and latency histogram in the Prometheus text.
function writeCounters(text) {
  let count = 0;
  let seconds = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^(apiserver_request_duration_seconds_(?:sum|count))\{([^}]*)\}\s+(\S+)$/.exec(line);
    if (!m) continue;
    const verb = /(?:^|,)verb="([^"]*)"/.exec(m[2]);
    if (!verb || !WRITE_VERBS.has(verb[1])) continue;
    if (m[1].endsWith('_count')) count += Number(m[3]);
    else seconds += Number(m[3]);
  }
  return { count, seconds, at: Date.now() };
}

async function loadMetrics() {
  const now = writeCounters(await api('/metrics', { text: true }));
  const last = state.lastCounters;
  state.lastCounters = now;
  if (!last) return;
  const writes = Math.max(0, now.count - last.count);
  const elapsed = Math.max(0.001, (now.at - last.at) / 1000);
  const latency = writes > 0 ? ((now.seconds - last.seconds) / writes) * 1000 : 0;
  state.samples.push({ rate: writes / elapsed, latency });
  if (state.samples.length > CHART_POINTS) state.samples.shift();
  drawChart('chart-rate', state.samples.map((s) => s.rate));
  drawChart('chart-latency', state.samples.map((s) => s.latency));
  document.getElementById('rate-now').textContent = `now ${(writes / elapsed).toFixed(1)}`;
  document.getElementById('latency-now').textContent = `now ${latency.toFixed(1)}`;
}

function svg(tag, attrs) {
  const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

/// A line over the last CHART_POINTS samples, scaled to the largest, with three grid lines.
function drawChart(id, values) {
  const chart = document.getElementById(id);
  const width = 400;
  const height = 120;
  const top = 10;
  const max = Math.max(1e-9, ...values);
  chart.replaceChildren();
  for (const f of [0, 0.5, 1]) {
    const y = top + (height - top - 2) * (1 - f);
    chart.append(svg('line', { x1: 0, x2: width, y1: y, y2: y, class: 'grid' }));
    const label = svg('text', { x: 2, y: y - 2 });
    label.textContent = (max * f).toFixed(max * f >= 10 ? 0 : 1);
    chart.append(label);
  }
  const step = width / (CHART_POINTS - 1);
  const offset = CHART_POINTS - values.length;
  const points = values.map((v, i) =>
    `${((offset + i) * step).toFixed(1)},${(top + (height - top - 2) * (1 - v / max)).toFixed(1)}`);
  chart.append(svg('polyline', { points: points.join(' '), class: 'series' }));
}

// ---- sign in, polling, sign out ----

async function poll() {
  const panels = [loadCluster, loadNodes, loadWorkloads, loadEvents, loadMetrics];
  const results = await Promise.allSettled(panels.map((load) => load()));
  const failed = results.filter((r) => r.status === 'rejected').map((r) => r.reason);
  const refusal = failed.find((e) => e instanceof ApiError && e.refused);
  if (refusal) {
    refused(refusal);
    return;
  }
  showError(failed[0] || null);
  if (state.running) state.pollTimer = setTimeout(poll, POLL_MS);
}

function stop() {
  state.running = false;
  clearTimeout(state.pollTimer);
  if (state.watchAbort) state.watchAbort.abort();
}

/// The server said no (401/403): stop everything and ask for another token.
function refused(err) {
  stop();
  showError(err);
  document.getElementById('dashboard').hidden = true;
  document.getElementById('logout').hidden = true;
  document.getElementById('login').hidden = false;
}

async function signIn(token) {
  stop();
  state.token = token.trim();
  try {
    // The cluster endpoint is the admin check: it needs a non-resource-URL grant that only
    // cluster administrators hold.
    await loadCluster();
  } catch (err) {
    refused(err);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, state.token);
  showError(null);
  document.getElementById('login').hidden = true;
  document.getElementById('dashboard').hidden = false;
  document.getElementById('logout').hidden = false;
  state.running = true;
  state.podsVersion = '';
  state.samples = [];
  state.lastCounters = null;
  whoami();
  poll();
  watchPods();
}

async function whoami() {
  try {
    const res = await fetch('/apis/authentication.k8s.io/v1/selfsubjectreviews', {
      method: 'POST',
      headers: { ...headers('application/json'), 'Content-Type': 'application/json' },
      body: JSON.stringify({ apiVersion: 'authentication.k8s.io/v1', kind: 'SelfSubjectReview' }),
    });
    if (!res.ok) return;
    const review = await res.json();
    document.getElementById('whoami').textContent = review.status?.userInfo?.username || '';
  } catch (_) { /* the name is a nicety */ }
}

function signOut() {
  stop();
  state.token = '';
  sessionStorage.removeItem(TOKEN_KEY);
  document.getElementById('whoami').textContent = '';
  document.getElementById('dashboard').hidden = true;
  document.getElementById('logout').hidden = true;
  document.getElementById('login').hidden = false;
  showError(null);
}

document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    signIn(document.getElementById('token').value);
  });
  document.getElementById('logout').addEventListener('click', signOut);
  if (state.token) signIn(state.token);
  else document.getElementById('login').hidden = false;
});
