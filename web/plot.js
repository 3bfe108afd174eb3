// plot: a small time-series line plot on a <canvas>. No library: the page must work with
// no internet and nothing to bundle.
//
//   const p = new LinePlot(canvas, {series: [{name: 'p50', color: '#4e79a7'}], unit: 'ms'});
//   p.push(Date.now() / 1000, [12.5]);   // null in the values leaves a gap
//
// The canvas carries data-points (samples pushed so far, never decreasing) and data-last
// (the latest values as JSON) so tests and people with devtools can see what it drew.

const PALETTE = ['#4e79a7', '#f28e2b', '#59a14f', '#e15759', '#b07aa1', '#76b7b2', '#edc948', '#9c755f'];

export class LinePlot {
  constructor(canvas, { series, unit = '', window = 120, yMin = 0, format = null, stacked = false } = {}) {
    this.canvas = canvas;
    this.series = series.map((s, i) => ({ color: PALETTE[i % PALETTE.length], ...s }));
    this.unit = unit;
    this.window = window; // seconds shown
    this.yMin = yMin;
    this.format = format || ((v) => formatNumber(v) + (unit ? ' ' + unit : ''));
    this.samples = []; // {t, v: [...]}
    this.pushed = 0;
    this.canvas.dataset.points = '0';
    this.resizeObserver = new ResizeObserver(() => this.draw());
    this.resizeObserver.observe(canvas);
    this.draw();
  }

  push(t, values) {
    this.samples.push({ t, v: values });
    const cut = t - this.window - 5;
    while (this.samples.length && this.samples[0].t < cut) this.samples.shift();
    this.pushed++;
    this.canvas.dataset.points = String(this.pushed);
    this.canvas.dataset.last = JSON.stringify(values);
    this.draw();
  }

  draw() {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(c.clientWidth * dpr));
    const h = Math.max(1, Math.round(c.clientHeight * dpr));
    if (c.width !== w || c.height !== h) { c.width = w; c.height = h; }
    const g = c.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    const W = c.clientWidth, H = c.clientHeight;
    g.clearRect(0, 0, W, H);
    const style = getComputedStyle(c);
    const fg = style.getPropertyValue('--plot-fg').trim() || '#444';
    const grid = style.getPropertyValue('--plot-grid').trim() || '#ddd';
    g.font = '11px system-ui, sans-serif';

    const pad = { l: 52, r: 8, t: 20, b: 18 };
    const pw = W - pad.l - pad.r, ph = H - pad.t - pad.b;
    if (pw < 10 || ph < 10) return;

    const tMax = this.samples.length ? this.samples[this.samples.length - 1].t : Date.now() / 1000;
    // A young plot shows its last 30 s rather than a few points squeezed to the right edge.
    const span = this.samples.length ? Math.min(this.window, Math.max(30, tMax - this.samples[0].t)) : 30;
    const tMin = tMax - span;
    let yMax = 0;
    for (const s of this.samples)
      for (const v of s.v) if (v !== null && Number.isFinite(v) && v > yMax) yMax = v;
    const ticks = niceTicks(this.yMin, yMax > this.yMin ? yMax : this.yMin + 1, 4);
    const top = ticks[ticks.length - 1];
    const x = (t) => pad.l + ((t - tMin) / span) * pw;
    const y = (v) => pad.t + ph - ((v - this.yMin) / (top - this.yMin)) * ph;

    // Grid and axis labels.
    g.strokeStyle = grid;
    g.fillStyle = fg;
    g.lineWidth = 1;
    g.textAlign = 'right';
    g.textBaseline = 'middle';
    for (const tv of ticks) {
      const yy = Math.round(y(tv)) + 0.5;
      g.beginPath(); g.moveTo(pad.l, yy); g.lineTo(pad.l + pw, yy); g.stroke();
      g.fillText(formatNumber(tv), pad.l - 4, yy);
    }
    g.textAlign = 'center';
    g.textBaseline = 'top';
    const every = span > 60 ? 30 : 10;
    for (let s = 0; s <= span + 0.01; s += every) {
      const xx = x(tMax - s);
      g.fillText(s === 0 ? 'now' : `-${s}s`, Math.min(Math.max(xx, pad.l + 10), pad.l + pw - 12), pad.t + ph + 4);
    }

    // Lines: a null value breaks the line.
    g.lineWidth = 1.75;
    this.series.forEach((ser, k) => {
      g.strokeStyle = ser.color;
      g.beginPath();
      let open = false, lone = null, n = 0;
      for (const s of this.samples) {
        const v = s.v[k];
        if (v === null || v === undefined || !Number.isFinite(v) || s.t < tMin) { open = false; continue; }
        const px = x(s.t), py = y(v);
        if (open) g.lineTo(px, py); else { g.moveTo(px, py); lone = [px, py]; }
        open = true; n++;
      }
      g.stroke();
      if (n === 1 && lone) { g.fillStyle = ser.color; g.fillRect(lone[0] - 1.5, lone[1] - 1.5, 3, 3); }
    });

    // Legend with the latest values.
    const last = this.samples.length ? this.samples[this.samples.length - 1].v : [];
    g.textAlign = 'left';
    g.textBaseline = 'top';
    let lx = pad.l;
    this.series.forEach((ser, k) => {
      const v = last[k];
      const label = `${ser.name} ${v === null || v === undefined || !Number.isFinite(v) ? '–' : this.format(v)}`;
      g.fillStyle = ser.color;
      g.fillRect(lx, 5, 10, 3);
      g.fillStyle = fg;
      g.fillText(label, lx + 14, 1);
      lx += g.measureText(label).width + 26;
    });
  }
}

// Round tick values from lo to at least hi: 1, 2 or 5 times a power of ten apart.
export function niceTicks(lo, hi, n) {
  const span = hi - lo;
  const raw = span / n;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
  const ticks = [];
  for (let v = lo; v < hi + step * 0.999; v += step) ticks.push(Number(v.toPrecision(12)));
  if (ticks.length < 2) ticks.push(lo + step);
  return ticks;
}

export function formatNumber(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return '–';
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(1) + 'G';
  if (a >= 1e6) return (v / 1e6).toFixed(1) + 'M';
  if (a >= 1e4) return (v / 1e3).toFixed(1) + 'k';
  if (a >= 100 || v === Math.round(v)) return String(Math.round(v));
  if (a >= 10) return v.toFixed(1);
  if (a >= 1) return v.toFixed(2);
  return v.toPrecision(2);
}
