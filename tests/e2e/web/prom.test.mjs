#!/usr/bin/env node
// The dashboard's Prometheus reader (web/prom.js), run by Node on the file the page serves.
//   node tests/e2e/web/prom.test.mjs
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  parsePrometheus, scalar, byLabel, histogram, histogramDelta, histogramQuantile, counterRate,
} from '../../../web/prom.js';

const text = `# HELP infer_requests_total Requests by outcome (terminal event).
# TYPE infer_requests_total counter
infer_requests_total{outcome="done_length"} 7
infer_requests_total{outcome="cancelled"} 2
infer_requests_total{outcome="overloaded"} 5
# TYPE infer_queue_depth gauge
infer_queue_depth 3
infer_tokens_generated_total 1.5e3
infer_odd{path="a \\"quoted\\" \\\\ b\\nc",le="x"} 1 1700000000000
garbage line without value
# TYPE infer_batch_size histogram
infer_batch_size_bucket{le="1"} 4
infer_batch_size_bucket{le="2"} 4
infer_batch_size_bucket{le="4"} 10
infer_batch_size_bucket{le="+Inf"} 10
infer_batch_size_sum 28
infer_batch_size_count 10
infer_lat_bucket{worker="0",le="0.1"} 1
infer_lat_bucket{worker="1",le="0.1"} 1
infer_lat_bucket{worker="0",le="+Inf"} 3
infer_lat_bucket{worker="1",le="+Inf"} 1
infer_lat_sum{worker="0"} 1
infer_lat_sum{worker="1"} 0.5
infer_lat_count{worker="0"} 3
infer_lat_count{worker="1"} 1
`;

test('samples, labels and escapes', () => {
  const m = parsePrometheus(text);
  assert.equal(scalar(m, 'infer_queue_depth'), 3);
  assert.equal(scalar(m, 'infer_tokens_generated_total'), 1500);
  assert.equal(scalar(m, 'infer_requests_total'), 14);
  assert.equal(scalar(m, 'infer_requests_total', { outcome: 'cancelled' }), 2);
  assert.equal(scalar(m, 'infer_requests_total', { outcome: 'timeout' }), null);
  assert.equal(scalar(m, 'infer_absent'), null);
  assert.deepEqual(byLabel(m, 'infer_requests_total', 'outcome'), { done_length: 7, cancelled: 2, overloaded: 5 });
  assert.deepEqual(m.get('infer_odd')[0].labels, { path: 'a "quoted" \\ b\nc', le: 'x' });
  assert.equal(m.has('garbage'), false);
});

test('histograms: buckets, sums, quantiles as histogram_quantile', () => {
  const m = parsePrometheus(text);
  const h = histogram(m, 'infer_batch_size');
  assert.deepEqual(h.buckets.map((b) => b.le), [1, 2, 4, Infinity]);
  assert.equal(h.count, 10);
  assert.equal(h.sum, 28);
  // rank 5 of 10: in (2, 4], 1 of the 6 there -> 2 + 2 * 1/6
  assert.ok(Math.abs(histogramQuantile(h, 0.5) - (2 + 2 / 6)) < 1e-12);
  // rank 2 of 10: in (0, 1], 2 of 4 -> 0.5
  assert.equal(histogramQuantile(h, 0.2), 0.5);
  assert.equal(histogramQuantile(h, 1), 4);
  // Without interpolation: the upper bound of the bucket holding the rank.
  assert.equal(histogramQuantile(h, 0.2, false), 1);
  assert.equal(histogramQuantile(h, 0.5, false), 4);
  // Series of different workers add up.
  const lat = histogram(m, 'infer_lat');
  assert.deepEqual(lat.buckets, [{ le: 0.1, count: 2 }, { le: Infinity, count: 4 }]);
  assert.equal(lat.count, 4);
  assert.equal(lat.sum, 1.5);
  // Rank in +Inf: the largest finite bound.
  assert.equal(histogramQuantile(lat, 0.9), 0.1);
  assert.equal(histogramQuantile(null, 0.5), null);
  assert.equal(histogramQuantile({ buckets: [{ le: 1, count: 0 }], count: 0, sum: 0 }, 0.5), null);
});

test('deltas between scrapes, counter resets', () => {
  const a = histogram(parsePrometheus(text), 'infer_batch_size');
  const later = histogram(parsePrometheus(text.replace('infer_batch_size_bucket{le="4"} 10', 'infer_batch_size_bucket{le="4"} 13')
    .replace('infer_batch_size_bucket{le="+Inf"} 10', 'infer_batch_size_bucket{le="+Inf"} 13')
    .replace('infer_batch_size_sum 28', 'infer_batch_size_sum 40')
    .replace('infer_batch_size_count 10', 'infer_batch_size_count 13')), 'infer_batch_size');
  const d = histogramDelta(later, a);
  assert.deepEqual(d.buckets.map((b) => b.count), [0, 0, 3, 3]);
  assert.equal(d.count, 3);
  assert.equal(d.sum, 12);
  assert.ok(histogramQuantile(d, 0.5) > 2 && histogramQuantile(d, 0.5) <= 4);
  // The server restarted: the newer scrape alone is the window.
  assert.equal(histogramDelta(a, later), a);
  assert.equal(counterRate(150, 100, 2), 25);
  assert.equal(counterRate(30, 100, 2), 15);
  assert.equal(counterRate(null, 100, 2), null);
  assert.equal(counterRate(5, 1, 0), null);
});
