// prom: a reader for the Prometheus text exposition format (version 0.0.4), enough for
// what inferd's /metrics writes: counters, gauges and histograms with quoted labels.
// Pure functions, no DOM: the Node tests import this file as it is.

// Parses the text into Map(name -> [{labels: {k: v}, value: number}]).
// Comments, blank lines and lines that do not parse are skipped: one odd line must not
// blank the whole dashboard.
export function parsePrometheus(text) {
  const out = new Map();
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line[0] === '#') continue;
    const s = parseSample(line);
    if (!s) continue;
    let list = out.get(s.name);
    if (!list) out.set(s.name, (list = []));
    list.push({ labels: s.labels, value: s.value });
  }
  return out;
}

function parseSample(line) {
  let i = 0;
  while (i < line.length && /[A-Za-z0-9_:]/.test(line[i])) i++;
  if (i === 0) return null;
  const name = line.slice(0, i);
  const labels = {};
  if (line[i] === '{') {
    i++;
    for (;;) {
      while (line[i] === ' ' || line[i] === ',') i++;
      if (line[i] === '}') { i++; break; }
      const eq = line.indexOf('=', i);
      if (eq < 0 || line[eq + 1] !== '"') return null;
      const key = line.slice(i, eq).trim();
      let j = eq + 2, val = '';
      while (j < line.length && line[j] !== '"') {
        if (line[j] === '\\' && j + 1 < line.length) {
          const c = line[j + 1];
          val += c === 'n' ? '\n' : c;
          j += 2;
        } else {
          val += line[j++];
        }
      }
      if (j >= line.length) return null;
      labels[key] = val;
      i = j + 1;
    }
  }
  const rest = line.slice(i).trim().split(/\s+/);
  if (!rest[0]) return null;
  const value = parseValue(rest[0]);
  if (value === null) return null;
  return { name, labels, value };
}

function parseValue(t) {
  if (t === '+Inf' || t === 'Inf') return Infinity;
  if (t === '-Inf') return -Infinity;
  if (t === 'NaN') return NaN;
  const v = Number(t);
  return Number.isNaN(v) ? null : v;
}

function matches(labels, want) {
  for (const k in want) if (labels[k] !== want[k]) return false;
  return true;
}

// Sum of every series of `name` whose labels include `want`; null when there is none
// (absent is not zero: the dashboard shows a gap, not a false 0).
export function scalar(metrics, name, want = {}) {
  const list = metrics.get(name);
  if (!list) return null;
  let sum = 0, found = false;
  for (const s of list) if (matches(s.labels, want)) { sum += s.value; found = true; }
  return found ? sum : null;
}

// Every value of label `key` among the series of `name`, with its summed value.
export function byLabel(metrics, name, key) {
  const res = {};
  for (const s of metrics.get(name) || []) {
    const k = s.labels[key];
    if (k !== undefined) res[k] = (res[k] || 0) + s.value;
  }
  return res;
}

// A histogram as {buckets: [{le, count}] (cumulative, sorted, +Inf last), sum, count},
// series with other labels (e.g. per worker) added up; null when absent.
export function histogram(metrics, name) {
  const bucketList = metrics.get(name + '_bucket');
  if (!bucketList) return null;
  const byLe = new Map();
  for (const s of bucketList) {
    const le = parseValue(s.labels.le ?? '');
    if (le === null || Number.isNaN(le)) continue;
    byLe.set(le, (byLe.get(le) || 0) + s.value);
  }
  const buckets = [...byLe].map(([le, count]) => ({ le, count })).sort((a, b) => a.le - b.le);
  const count = scalar(metrics, name + '_count') ?? (buckets.length ? buckets[buckets.length - 1].count : 0);
  return { buckets, sum: scalar(metrics, name + '_sum') ?? 0, count };
}

// a - b bucket by bucket: the observations made between two scrapes. A counter that went
// down means the server restarted: then `a` alone is the window.
export function histogramDelta(a, b) {
  if (!a) return null;
  if (!b || b.count > a.count) return a;
  const prev = new Map(b.buckets.map((x) => [x.le, x.count]));
  return {
    buckets: a.buckets.map((x) => ({ le: x.le, count: Math.max(0, x.count - (prev.get(x.le) || 0)) })),
    sum: a.sum - b.sum,
    count: a.count - b.count,
  };
}

// The q-quantile estimated as Prometheus' histogram_quantile does: find the bucket holding
// rank q*count and interpolate linearly inside it (from 0 for the first bucket). A rank in
// the +Inf bucket answers the largest finite bound. null without observations.
// interpolate=false answers the bucket's upper bound instead: right for integer-valued
// histograms (batch sizes), where "p90 = 0.9 sequences" would be nonsense.
export function histogramQuantile(h, q, interpolate = true) {
  if (!h || !(h.count > 0) || !h.buckets.length) return null;
  const b = h.buckets;
  const total = b[b.length - 1].count;
  if (!(total > 0)) return null;
  const rank = q * total;
  let i = b.findIndex((x) => x.count >= rank);
  if (i < 0) i = b.length - 1;
  if (b[i].le === Infinity) return i > 0 ? b[i - 1].le : null;
  if (!interpolate) return b[i].le;
  const lo = i > 0 ? b[i - 1].le : 0;
  const below = i > 0 ? b[i - 1].count : 0;
  const inBucket = b[i].count - below;
  if (inBucket <= 0) return b[i].le;
  return lo + (b[i].le - lo) * ((rank - below) / inBucket);
}

// Per-second rate of a counter between two samples taken dt seconds apart; a reset
// (the value went down) counts from zero.
export function counterRate(now, before, dt) {
  if (now === null || before === null || !(dt > 0)) return null;
  const d = now >= before ? now - before : now;
  return d / dt;
}
