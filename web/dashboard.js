// dashboard: every second, scrape GET /metrics (Prometheus text) and GET /v1/status (JSON,
// optional) and push one point onto each plot. Rates come from the difference between
// two scrapes; latency percentiles from the histogram buckets filled in the last 10 s,
// so the plots show what happens now, not the average since the server started.
import { parsePrometheus, scalar, byLabel, histogram, histogramDelta, histogramQuantile, counterRate } from './prom.js';
import { LinePlot, formatNumber } from './plot.js';

const PERIOD_MS = 1000;
const LATENCY_WINDOW_S = 10;

const $ = (id) => document.getElementById(id);

// The API key the page was given (app.js), sent on every fetch; empty: none.
let apiKey = '';
export function setApiKey(key) { apiKey = key; }
export function authHeaders() { return apiKey ? { Authorization: `Bearer ${apiKey}` } : {}; }

// Outcomes a person reads as "went well" vs "cancelled" vs "failed".
const OK_OUTCOMES = new Set(['done_length', 'done_stop']);

export function startDashboard() {
  const msFormat = (v) => formatNumber(v) + ' ms';
  const plots = {
    tokens: new LinePlot($('plot-tokens'), { series: [{ name: 'tokens/s' }] }),
    load: new LinePlot($('plot-load'), { series: [{ name: 'queued' }, { name: 'running' }] }),
    batch: new LinePlot($('plot-batch'), { series: [{ name: 'mean' }, { name: 'p90' }] }),
    ttft: new LinePlot($('plot-ttft'), { series: [{ name: 'p50' }, { name: 'p90' }, { name: 'p99' }], format: msFormat }),
    itl: new LinePlot($('plot-itl'), { series: [{ name: 'p50' }, { name: 'p90' }, { name: 'p99' }], format: msFormat }),
    outcomes: new LinePlot($('plot-outcomes'), {
      series: [{ name: 'ok' }, { name: 'cancelled' }, { name: 'errors', color: '#e15759' }],
    }),
  };

  let prev = null; // {t, m, ttft, itl, batch}
  let tick = 0, statusMissing = false;
  const history = []; // histogram snapshots of the last LATENCY_WINDOW_S seconds

  async function scrapeOnce() {
    const t = Date.now() / 1000;
    // A server without /v1/status is asked again every 10 s only (it may be upgraded).
    const askStatus = !statusMissing || tick++ % 10 === 0;
    const [metricsRes, statusRes] = await Promise.allSettled([
      fetchText('/metrics'), askStatus ? fetchJson('/v1/status') : Promise.resolve(null)]);
    if (askStatus) {
      statusMissing = statusRes.status === 'rejected' && statusRes.reason.status === 404;
      renderSupervision(statusRes);
    }

    const scrape = $('scrape');
    if (metricsRes.status === 'rejected') {
      scrape.dataset.state = 'error';
      scrape.textContent = `/metrics unavailable: ${metricsRes.reason.message}`;
      return;
    }
    scrape.dataset.state = 'ok';
    scrape.textContent = `updated ${new Date(t * 1000).toLocaleTimeString()}`;

    const m = parsePrometheus(metricsRes.value);
    const snap = {
      t, m,
      ttft: histogram(m, 'infer_time_to_first_token_seconds'),
      itl: histogram(m, 'infer_inter_token_latency_seconds'),
      batch: histogram(m, 'infer_batch_size'),
    };
    renderTotals(m);

    const dt = prev ? t - prev.t : 0;
    const tokens = scalar(m, 'infer_tokens_generated_total');
    plots.tokens.push(t, [prev ? counterRate(tokens, scalar(prev.m, 'infer_tokens_generated_total'), dt) : null]);
    plots.load.push(t, [scalar(m, 'infer_queue_depth'), scalar(m, 'infer_running_sequences')]);

    const stepBatch = prev ? histogramDelta(snap.batch, prev.batch) : null;
    plots.batch.push(t, [
      stepBatch && stepBatch.count > 0 ? stepBatch.sum / stepBatch.count : null,
      histogramQuantile(stepBatch, 0.9, false),
    ]);

    // The oldest snapshot still inside the window is the baseline of the percentiles.
    history.push(snap);
    while (history.length > 1 && history[0].t < t - LATENCY_WINDOW_S - 0.5) history.shift();
    const base = history.length > 1 ? history[0] : null;
    for (const [key, plot] of [['ttft', plots.ttft], ['itl', plots.itl]]) {
      const w = base ? histogramDelta(snap[key], base[key]) : null;
      plot.push(t, [0.5, 0.9, 0.99].map((q) => {
        const v = histogramQuantile(w, q);
        return v === null ? null : v * 1000;
      }));
    }

    if (prev) {
      const now = byLabel(m, 'infer_requests_total', 'outcome');
      const before = byLabel(prev.m, 'infer_requests_total', 'outcome');
      const sums = [0, 0, 0];
      for (const k of Object.keys(now)) {
        const r = counterRate(now[k], before[k] ?? 0, dt) ?? 0;
        sums[OK_OUTCOMES.has(k) ? 0 : k === 'cancelled' ? 1 : 2] += r;
      }
      plots.outcomes.push(t, sums);
    } else {
      plots.outcomes.push(t, [null, null, null]);
    }
    prev = snap;
  }

  async function loop() {
    const started = performance.now();
    try {
      await scrapeOnce();
    } catch (e) {
      $('scrape').dataset.state = 'error';
      $('scrape').textContent = `dashboard error: ${e.message}`;
    }
    setTimeout(loop, Math.max(50, PERIOD_MS - (performance.now() - started)));
  }
  loop();
}

async function fetchText(url) {
  const r = await fetch(url, { cache: 'no-store', headers: authHeaders() });
  if (!r.ok) throw new Error(`${r.status} ${r.statusText}`);
  return r.text();
}

async function fetchJson(url) {
  const r = await fetch(url, { cache: 'no-store', headers: authHeaders() });
  if (!r.ok) {
    const e = new Error(`${r.status} ${r.statusText}`);
    e.status = r.status;
    throw e;
  }
  return r.json();
}

function set(id, v) { $(id).textContent = v === null || v === undefined ? '–' : String(v); }

function renderTotals(m) {
  const ready = scalar(m, 'infer_ready');
  set('t-ready', ready === null ? null : ready > 0 ? 'yes' : 'no');
  $('t-ready').dataset.ready = ready > 0 ? '1' : '0';
  set('t-tokens', scalar(m, 'infer_tokens_generated_total'));
  set('t-requests', scalar(m, 'infer_requests_total'));
  set('t-queue', scalar(m, 'infer_queue_depth'));
  set('t-running', scalar(m, 'infer_running_sequences'));
  const used = scalar(m, 'infer_kv_blocks_used'), total = scalar(m, 'infer_kv_blocks_capacity');
  set('t-kv', used === null ? null : `${used} / ${total ?? '?'}`);
  set('t-conns', scalar(m, 'infer_connections_open'));
  const restarts = scalar(m, 'infer_worker_restarts_total');
  set('t-restarts', restarts);
  $('t-restarts').classList.toggle('bad', restarts > 0);

  const body = $('outcomes').tBodies[0];
  const outcomes = byLabel(m, 'infer_requests_total', 'outcome');
  const rows = Object.keys(outcomes).sort().map((k) => {
    const tr = document.createElement('tr');
    tr.dataset.outcome = k;
    const th = document.createElement('th');
    th.textContent = k;
    const td = document.createElement('td');
    td.textContent = String(outcomes[k]);
    tr.append(th, td);
    return tr;
  });
  body.replaceChildren(...rows);
}

// /v1/status (proposed in web/README.md):
//   {"workers":[{"id":0,"backend":"cpu","state":"running","restarts":0,"breaker":"closed",
//                "running":2,"kv_free":120}],"queue_depth":0}
// Fields beyond these are shown too, so the server can add some without a page change.
const WORKER_COLUMNS = ['id', 'backend', 'state', 'restarts', 'breaker', 'running', 'kv_free'];

function renderSupervision(res) {
  const box = $('supervision');
  if (res.status === 'rejected') {
    box.dataset.state = 'unavailable';
    box.replaceChildren(note(res.reason.status === 404
      ? 'not available: this server has no GET /v1/status'
      : `not available: ${res.reason.message}`));
    return;
  }
  const st = res.value || {};
  const workers = Array.isArray(st.workers) ? st.workers : [];
  box.dataset.state = 'ok';
  box.dataset.workers = String(workers.length);

  const root = document.createElement('div');
  root.className = 'tree-root';
  const extras = Object.entries(st).filter(([k, v]) => k !== 'workers' && typeof v !== 'object');
  root.textContent = 'supervisor' + extras.map(([k, v]) => ` · ${k} ${v}`).join('');

  const cols = [...WORKER_COLUMNS];
  for (const w of workers)
    for (const k of Object.keys(w)) if (!cols.includes(k) && typeof w[k] !== 'object') cols.push(k);
  const table = document.createElement('table');
  table.className = 'workers';
  const head = table.createTHead().insertRow();
  for (const c of cols) {
    const th = document.createElement('th');
    th.textContent = c;
    head.appendChild(th);
  }
  const body = table.createTBody();
  for (const w of workers) {
    const tr = body.insertRow();
    tr.dataset.worker = String(w.id);
    tr.dataset.state = String(w.state ?? '');
    tr.dataset.breaker = String(w.breaker ?? '');
    for (const c of cols) {
      const td = tr.insertCell();
      const v = w[c];
      if ((c === 'state' || c === 'breaker') && v !== undefined) {
        const b = document.createElement('span');
        b.className = `badge ${c}-${String(v).replace(/[^a-z_]/gi, '')}`;
        b.textContent = String(v);
        td.appendChild(b);
      } else {
        td.textContent = v === undefined || v === null ? '–' : String(v);
      }
    }
  }
  box.replaceChildren(root, workers.length ? table : note('no workers'));
}

function note(text) {
  const p = document.createElement('p');
  p.className = 'note';
  p.textContent = text;
  return p;
}
