#include "actors/batcher-actor.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <deque>
#include <limits>
#include <optional>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>

#include "actors/messages.hpp"
#include "actors/admission-queue.hpp"
#include "actors/suspect-tracker.hpp"
#include "actors/worker-router.hpp"
#include "supervision/circuit-breaker.hpp"
#include "supervision/overload-monitor.hpp"

namespace infer {

namespace {

struct route {
  int32_t worker = -1;
  caf::actor request;
  bool cancelling = false;  // a cancel was forwarded: the request waits for seq_closed
};

struct batcher_state {
  static inline const char* name = "infer.batcher";
  service_core_ptr core;
  admission_queue<enqueue_msg> queue;
  std::vector<worker_slot> workers;  // by worker index: what the batcher believes each holds
  std::vector<caf::actor> handles;   // by worker index: the worker actor now (null while down)
  worker_router router;
  std::unordered_map<uint64_t, route> routes;  // dispatched and not yet gone
  std::vector<circuit_breaker> breakers;       // by worker index; outlive the worker's restarts
  std::vector<bool> gave_up;                   // by worker index: its device was given up
  suspect_tracker suspects;
  // Moving averages of measured steps, kept apart: a prefill step costs per token of the
  // prompt, a decode step per generated token, and one average of both overstates decoding.
  double decode_step_ms = 0;                   // steps of decodes only (one token per sequence)
  double prefill_token_ms = 0;                 // steps with prefill tokens: time per token in it
  bool dispatch_timer = false;                 // an idispatch is pending
  std::chrono::steady_clock::time_point dispatch_due;  // when it fires
  overload_monitor overload;                   // sustained overload: caps max_tokens (degradation)
  // Queued sequences that have waited for the worker holding their prefix (counted in
  // prefix_routed when they land there); an id leaves when its sequence leaves the queue.
  std::unordered_set<uint64_t> waiting_for_prefix;
};

using batcher_actor = caf::stateful_actor<batcher_state>;

bool is_fallback(const batcher_state& st, size_t i) { return st.core->plan.is_fallback(int32_t(i)); }
bool has_fallback(const batcher_state& st) { return st.core->plan.n_fallback > 0; }

circuit_breaker& breaker_of(batcher_state& st, size_t i);

// Can some primary worker serve, now or soon? Not when every primary's breaker is open,
// its device given up, or it has been down (restarting) for fallback_after_ms: then the
// CPU fallback workers take new admissions. A primary still starting up counts as able.
bool primary_available(batcher_state& st, std::chrono::steady_clock::time_point now) {
  const auto grace = std::chrono::milliseconds(st.core->cfg.fallback_after_ms);
  for (size_t i = 0; i < st.workers.size(); ++i) {
    if (is_fallback(st, i)) continue;
    if (i < st.gave_up.size() && st.gave_up[i]) continue;
    if (breaker_of(st, i).current(now) == circuit_breaker::state::open) continue;
    const auto& w = st.workers[i];
    if (w.up || !w.down_since || now - *w.down_since < grace) return true;
  }
  return false;
}

bool fallback_serves(batcher_state& st, std::chrono::steady_clock::time_point now) {
  return has_fallback(st) && !primary_available(st, now);
}

void publish_gauges(batcher_actor* self) {
  auto& st = self->state;
  int64_t held = 0, used = 0, total = 0;
  for (auto& w : st.workers)
    if (w.up) {
      held += w.held;
      used += w.used_blocks;
      total += w.total_blocks;
    }
  auto& m = st.core->stats;
  const auto t = std::chrono::steady_clock::now();
  st.overload.observe(st.queue.size(), t);
  // Sustained overload: request actors cap the max_tokens of new requests while this is on
  // (they own max_tokens; this only says when). Stored before the queue depth, so whoever
  // sees this depth sees the verdict on it.
  m.max_tokens_cap_active.store(st.core->cfg.overload_max_tokens > 0 && st.overload.sustained(t) ? 1 : 0);
  m.queue_depth.store(st.queue.size());
  m.cpu_fallback_active.store(fallback_serves(st, t) ? 1 : 0);
  m.running_sequences.store(held);
  m.kv_blocks_used.store(used);
  m.kv_blocks_total.store(total);
  int64_t cached = 0;
  for (auto& w : st.workers) cached += w.up ? w.cached_blocks : 0;
  m.prefix_cache_blocks.store(cached);
  int32_t ready = 0;
  for (auto& w : st.workers) ready += w.up ? 1 : 0;
  st.core->workers_ready.store(ready);
  auto now = std::chrono::steady_clock::now();
  // Readiness: a worker that is up and whose breaker lets a step through (closed, or
  // half-open: the probe) serves now; an open breaker only from when it half-opens.
  int64_t serving_at = std::numeric_limits<int64_t>::max();
  for (size_t i = 0; i < st.workers.size(); ++i) {
    if (!st.workers[i].up || (i < st.gave_up.size() && st.gave_up[i])) continue;
    auto& b = breaker_of(st, i);
    const auto at = b.current(now) == circuit_breaker::state::open ? now + b.retry_after(now) : now;
    serving_at = std::min<int64_t>(serving_at, at.time_since_epoch().count());
  }
  st.core->serving_at.store(serving_at);
  for (size_t i = 0; i < st.workers.size(); ++i) {
    auto& w = st.workers[i];
    const uint8_t b = i < st.breakers.size() ? uint8_t(st.breakers[i].current(now)) : 0;
    m.update_worker(int32_t(i), [&](worker_gauge& g) {
      g.breaker = b;
      g.running = w.up ? w.held : 0;
      g.kv_free = w.up ? w.free_blocks : 0;
      g.kv_total = w.up ? w.total_blocks : 0;
      g.kv_cached = w.up ? w.cached_blocks : 0;
    });
  }
}

circuit_breaker& breaker_of(batcher_state& st, size_t i) {
  if (i >= st.breakers.size()) {
    circuit_breaker::options o;
    o.failure_threshold = st.core->cfg.breaker_failures;
    o.open_for = std::chrono::milliseconds(st.core->cfg.breaker_open_ms);
    st.breakers.resize(i + 1, circuit_breaker(o));
    st.gave_up.resize(i + 1, false);
  }
  return st.breakers[i];
}

// May worker i take a new sequence now? Closed breaker, or half-open and its one probe not
// yet sent. (allow() is called only when the probe is actually admitted.)
bool routable(batcher_state& st, size_t i, std::chrono::steady_clock::time_point now) {
  auto& w = st.workers[i];
  if (!w.up) return false;
  switch (breaker_of(st, i).current(now)) {
    case circuit_breaker::state::closed: return true;
    case circuit_breaker::state::open: return false;
    case circuit_breaker::state::half_open: return !w.probe;
  }
  return false;
}

// When every worker is open or given up, new requests fail fast; how long until one may
// take work again (0: some worker can, or will once it has started).
int64_t unavailable_for(batcher_state& st) {
  auto now = std::chrono::steady_clock::now();
  int64_t best = -1;
  bool any = false;
  for (size_t i = 0; i < st.workers.size(); ++i) {
    any = true;
    if (i < st.gave_up.size() && st.gave_up[i]) continue;
    auto& b = breaker_of(st, i);
    if (b.current(now) != circuit_breaker::state::open) return 0;
    int64_t left = std::max<int64_t>(1, b.retry_after(now).count());
    best = best < 0 ? left : std::min(best, left);
  }
  if (!any) return 0;
  return best < 0 ? 1000 : best;  // every device given up: nothing will come back soon
}

// Re-runs dispatch when the earliest open breaker half-opens.
// With CPU fallback workers, also when a down primary has been down for fallback_after_ms.
void arm_dispatch_timer(batcher_actor* self) {
  auto& st = self->state;
  auto now = std::chrono::steady_clock::now();
  int64_t wait = -1;
  auto consider = [&](int64_t left) { wait = wait < 0 ? left : std::min(wait, left); };
  for (size_t i = 0; i < st.breakers.size(); ++i)
    if (st.breakers[i].current(now) == circuit_breaker::state::open)
      consider(std::max<int64_t>(1, st.breakers[i].retry_after(now).count()));
  if (has_fallback(st) && st.queue.size() > 0) {
    const auto grace = std::chrono::milliseconds(st.core->cfg.fallback_after_ms);
    for (size_t i = 0; i < st.workers.size(); ++i) {
      const auto& w = st.workers[i];
      if (is_fallback(st, i) || w.up || !w.down_since || now - *w.down_since >= grace) continue;
      consider(std::max<int64_t>(
          1, std::chrono::duration_cast<std::chrono::milliseconds>(grace - (now - *w.down_since)).count() + 1));
    }
  }
  if (wait < 0) return;
  const auto due = now + std::chrono::milliseconds(wait);
  if (st.dispatch_timer && st.dispatch_due <= due) return;  // an earlier one is pending
  st.dispatch_timer = true;
  st.dispatch_due = due;
  self->delayed_send(self, std::chrono::milliseconds(wait), dispatch_atom::value);
}

// Sends m to worker `best` (the queue entry is consumed by the caller).
void admit_to(batcher_actor* self, int best, enqueue_msg& m, int32_t n) {
  auto& st = self->state;
  auto& w = st.workers[size_t(best)];
  w.sent(w.blocks_for(n));
  if (breaker_of(st, size_t(best)).current(std::chrono::steady_clock::now()) == circuit_breaker::state::half_open) {
    w.probe = true;
    breaker_of(st, size_t(best)).allow(std::chrono::steady_clock::now());
  }
  st.routes[m.id] = route{best, m.request};
  self->send(m.request, dispatched_msg{m.id, best, is_fallback(st, size_t(best))});
  admit_msg a;
  a.id = m.id;
  a.request = m.request;
  a.prompt = std::move(m.prompt);
  a.generated = std::move(m.generated);
  a.max_tokens = m.max_tokens;
  a.sampling = m.sampling;
  a.stop_ids = std::move(m.stop_ids);
  a.attempt = m.attempt;
  a.grammar = m.grammar;
  a.n = m.n;
  a.forks = std::move(m.forks);
  a.prompt_logprobs = m.prompt_logprobs;
  self->send(st.handles[size_t(best)], std::move(a));
}

// Drops reservations that no queued suspect needs any more (it was cancelled, or it is
// running elsewhere) or that the worker cannot honour now (breaker open, a fallback worker
// while primaries serve), so that a reserved worker never idles for nothing.
void prune_reservations(batcher_state& st, std::chrono::steady_clock::time_point now, bool fallback_ok) {
  bool any = false;
  for (auto& w : st.workers) any |= w.reserved != 0;
  if (!any) return;
  std::unordered_set<uint64_t> wanted;
  st.queue.for_each([&](const enqueue_msg& m) {
    if (auto r = st.suspects.retry_of(m.id); r.key != 0) wanted.insert(r.key);
  });
  worker_router::prune_reservations(
      st.workers, wanted, [&](size_t i) { return routable(st, i, now) && (!is_fallback(st, i) || fallback_ok); });
}

// Admits queued sequences, highest priority first, while some worker has room. Suspects
// run without others (their group together, or alone): they wait for an idle worker
// without holding up the others. CPU fallback workers take sequences only while no
// primary worker can serve.
void dispatch(batcher_actor* self) {
  auto& st = self->state;
  auto now = std::chrono::steady_clock::now();
  const bool fallback_ok = fallback_serves(st, now);
  prune_reservations(st, now, fallback_ok);
  auto eligible = [&](size_t i) { return routable(st, i, now) && (fallback_ok || !is_fallback(st, i)); };
  // Once an ordinary sequence found no room, the ones behind it wait (priority order), but
  // suspects still go on: a worker reserved for them turns away ordinary sequences, so a
  // blocked head must not keep them from it.
  bool blocked = false;
  int waits = 0;  // sequences left waiting for the worker holding their prefix, this pass
  for (size_t level = 0; level < admission_queue<enqueue_msg>::n_levels; ++level) {
    auto& q = st.queue.level(level);
    for (size_t qi = 0; qi < q.size();) {
      enqueue_msg& m = q[qi];
      const int32_t n = m.kv_tokens();
      if (auto most = worker_router::never_fits(st.workers, int32_t(m.prompt.size()), m.max_tokens)) {
        self->send(m.request, seq_closed_msg{m.id, uint8_t(closed_why::rejected),
                                             "the sequence needs more KV cache than a worker has (" +
                                                 std::to_string(*most) + " blocks)"});
        st.waiting_for_prefix.erase(m.id);
        st.queue.erase(level, qi);
        continue;
      }
      const suspect_tracker::retry r = st.suspects.retry_of(m.id);
      if (blocked && r.key == 0) {
        ++qi;
        continue;
      }
      const auto pick = st.router.choose(st.workers, eligible, n, r, std::span<const int32_t>(m.prompt),
                                         waits < worker_router::max_waits_per_pass);
      if (pick.wait) {  // its prefix's worker is full and worth waiting for: the next one may go
        st.waiting_for_prefix.insert(m.id);
        ++waits;
        ++qi;
        continue;
      }
      const bool waited = pick.worker >= 0 && st.waiting_for_prefix.erase(m.id) > 0;
      if (pick.prefix_routed || (waited && pick.worker == pick.home))
        st.core->stats.prefix_routed.fetch_add(1, std::memory_order_relaxed);
      if (pick.worker < 0) {
        if (r.key != 0) worker_router::reserve(st.workers, eligible, r.key);
        else blocked = true;  // head-of-line: lower levels wait too, so priority order holds
        ++qi;
        continue;
      }
      const uint64_t id = m.id;
      admit_to(self, pick.worker, m, n);
      if (r.key != 0) worker_router::admitted_suspect(st.workers, pick.worker, r.key, r.group, id);
      st.queue.erase(level, qi);
    }
  }
  publish_gauges(self);
  arm_dispatch_timer(self);
}

// Decode steps a request can take: max_tokens, but never past the context (the engine ends
// it there with finish_reason length).
int64_t decode_steps(const batcher_state& st, const enqueue_msg& m) {
  const int64_t left = int64_t(st.core->n_ctx) - int64_t(m.prompt.size()) - int64_t(m.generated.size());
  const int64_t want = int64_t(m.max_tokens) - int64_t(m.generated.size());
  return std::max<int64_t>(0, st.core->n_ctx > 0 ? std::min(want, left) : want);
}

// An estimate of the time a new request needs: its prefill and its decode steps, plus the
// queue ahead of it served max_running at a time per worker. 0 before any step was measured.
// On an idle server it is what the request takes, so a request that can make its deadline
// is not refused.
int64_t estimate_ms(batcher_state& st, const enqueue_msg& m) {
  if (st.decode_step_ms <= 0 && st.prefill_token_ms <= 0) return 0;
  int64_t slots = 0;
  for (auto& w : st.workers)
    if (w.up) slots += w.max_running;
  const double rounds = 1.0 + double(st.queue.size()) / double(std::max<int64_t>(slots, 1));
  const double own = st.prefill_token_ms * double(m.prompt.size()) + st.decode_step_ms * double(decode_steps(st, m));
  return int64_t(own * rounds);
}

caf::behavior batcher_fun(batcher_actor* self, service_core_ptr core) {
  self->state.core = std::move(core);
  const auto& cfg = self->state.core->cfg;
  self->state.workers.resize(size_t(std::max(self->state.core->plan.n_workers(), 1)));
  self->state.handles.resize(self->state.workers.size());
  self->state.router = worker_router(router_options{cfg.prefix_caching, cfg.prefix_affinity_tokens});
  self->state.overload = overload_monitor(cfg.queue_capacity, cfg.overload_queue_fraction,
                                          std::chrono::milliseconds(cfg.overload_after_ms));
  return {
      [=](enqueue_msg& m) {
        auto& st = self->state;
        const size_t level = admission_queue<enqueue_msg>::level_of(m.prio);
        if (m.resume) {  // accepted long ago: back to the front of its level
          st.queue.push_front(level, std::move(m));
          dispatch(self);
          return;
        }
        if (int64_t wait = unavailable_for(st); wait > 0) {
          // Every worker's breaker is open (or its device given up): fail fast, do not pile up.
          self->send(m.request, admission_msg{m.id, false, uint8_t(error_code::unavailable), wait,
                                              "no healthy worker: every circuit breaker is open"});
          return;
        }
        if (int64_t est = estimate_ms(st, m); m.timeout_ms > 0 && est > m.timeout_ms) {
          self->send(m.request,
                     admission_msg{m.id, false, uint8_t(error_code::timeout), 0,
                                   fmt::format("the deadline cannot be met: about {} ms needed ({} prompt tokens at "
                                               "{:.3f} ms, {} decode steps at {:.2f} ms, {} queued), {} ms left; "
                                               "raise timeout_ms",
                                               est, m.prompt.size(), st.prefill_token_ms, decode_steps(st, m),
                                               st.decode_step_ms, st.queue.size(), m.timeout_ms)});
          return;
        }
        if (st.queue.size() >= st.core->cfg.queue_capacity) {
          admission_msg a{m.id, false, uint8_t(error_code::overloaded), 100,
                          "the admission queue is full (" + std::to_string(st.core->cfg.queue_capacity) + ")"};
          self->send(m.request, std::move(a));
          return;
        }
        auto req = m.request;
        uint64_t id = m.id;
        st.queue.push_back(level, std::move(m));
        self->send(req, admission_msg{id, true, 0, 0, {}});
        dispatch(self);
      },
      [=](const cancel_msg& c) {
        auto& st = self->state;
        if (c.fork >= 0) {  // one choice ends; the request goes on: nothing to confirm
          auto it = st.routes.find(c.id);
          if (it != st.routes.end() && it->second.worker >= 0 && st.workers[size_t(it->second.worker)].up)
            self->send(st.handles[size_t(it->second.worker)], c);
          return;
        }
        auto sender = caf::actor_cast<caf::actor>(self->current_sender());
        if (st.queue.remove(c.id)) {
          st.waiting_for_prefix.erase(c.id);
          self->send(sender, seq_closed_msg{c.id, uint8_t(closed_why::cancelled), {}});
          dispatch(self);  // a worker reserved for it is free again
          return;
        }
        auto it = st.routes.find(c.id);
        if (it != st.routes.end() && it->second.worker >= 0 && st.workers[size_t(it->second.worker)].up) {
          it->second.cancelling = true;
          self->send(st.handles[size_t(it->second.worker)], c);
          return;  // the worker's seq_gone_msg (or its report that the sequence left) completes it
        }
        // Not here any more (already finished): nothing to free.
        self->send(sender, seq_closed_msg{c.id, uint8_t(closed_why::cancelled), {}});
      },
      [=](const worker_hello_msg& h) {
        auto& st = self->state;
        if (h.worker < 0) return;
        if (size_t(h.worker) >= st.workers.size()) {
          st.workers.resize(size_t(h.worker) + 1);
          st.handles.resize(st.workers.size());
        }
        auto& w = st.workers[size_t(h.worker)];
        w = worker_slot{};
        st.handles[size_t(h.worker)] = h.handle;
        w.up = true;
        w.max_running = h.max_running;
        w.block_size = std::max(h.block_size, 1);
        w.total_blocks = h.total_blocks;
        w.free_blocks = h.total_blocks;
        w.n_ctx = h.n_ctx;
        w.cached.reset(h.total_blocks);  // a new worker (or a restarted one) starts with an empty cache
        breaker_of(st, size_t(h.worker));
        st.gave_up[size_t(h.worker)] = false;
        st.core->stats.update_worker(h.worker, [&](worker_gauge& g) {
          g.state = worker_gauge::run_state::running;
          g.backend = h.backend;
        });
        dispatch(self);
      },
      [=](const worker_report_msg& r) {
        auto& st = self->state;
        if (r.worker < 0 || size_t(r.worker) >= st.workers.size()) return;
        auto& w = st.workers[size_t(r.worker)];
        if (!w.up || st.handles[size_t(r.worker)] != caf::actor_cast<caf::actor>(self->current_sender()))
          return;  // stale
        w.held = r.n_running + r.n_waiting;
        w.free_blocks = r.free_blocks;
        w.used_blocks = r.used_blocks;
        w.total_blocks = r.total_blocks;
        w.seen(r.admits_seen);
        if (r.batch_seqs > 0) {  // a step succeeded: the worker is healthy
          breaker_of(st, size_t(r.worker)).on_success();
          w.probe = false;
          // Every suspect held here was in this step (the worker holds nothing else) and it
          // succeeded: they are not poison.
          for (uint64_t id : w.step_succeeded(r.batch_seqs)) st.suspects.clear(id);
          const double ms = double(r.step_us) / 1000.0;
          auto ema = [](double avg, double x) { return avg <= 0 ? x : 0.9 * avg + 0.1 * x; };
          if (r.batch_tokens <= r.batch_seqs) st.decode_step_ms = ema(st.decode_step_ms, ms);
          else st.prefill_token_ms = ema(st.prefill_token_ms, ms / double(r.batch_tokens));
        }
        for (uint64_t id : r.left) {
          st.suspects.clear(id);
          w.leave_exclusive(id);
          auto it = st.routes.find(id);
          if (it == st.routes.end()) continue;
          // It finished while a cancel was on its way: the worker will not find it, so
          // the request learns here that the sequence is gone.
          if (it->second.cancelling)
            self->send(it->second.request, seq_closed_msg{id, uint8_t(closed_why::cancelled), {}});
          st.routes.erase(it);
        }
        auto& m = st.core->stats;
        if (r.batch_seqs > 0) {
          m.steps.fetch_add(1, std::memory_order_relaxed);
          m.batch_size.observe(double(r.batch_seqs));
          m.step_time.observe(double(r.step_us) / 1e6);
        }
        m.tokens_generated.fetch_add(uint64_t(r.n_sampled), std::memory_order_relaxed);
        if (r.preemptions > w.preemptions) {
          m.preemptions.fetch_add(r.preemptions - w.preemptions, std::memory_order_relaxed);
          w.preemptions = r.preemptions;
        }
        if (r.prefix_queries > w.prefix_queries) {
          m.prefix_cache_queries.fetch_add(r.prefix_queries - w.prefix_queries, std::memory_order_relaxed);
          w.prefix_queries = r.prefix_queries;
        }
        if (r.prefix_hits > w.prefix_hits) {
          m.prefix_cache_hits.fetch_add(r.prefix_hits - w.prefix_hits, std::memory_order_relaxed);
          w.prefix_hits = r.prefix_hits;
        }
        w.cached_blocks = r.cached_blocks;
        dispatch(self);
      },
      [=](const seq_gone_msg& g) {
        auto& st = self->state;
        auto it = st.routes.find(g.id);
        if (it == st.routes.end()) return;
        auto req = it->second.request;
        st.routes.erase(it);
        st.suspects.clear(g.id);
        if (g.worker >= 0 && size_t(g.worker) < st.workers.size()) st.workers[size_t(g.worker)].leave_exclusive(g.id);
        if (g.rejected)
          self->send(req, seq_closed_msg{g.id, uint8_t(closed_why::rejected), g.message});
        else
          self->send(req, seq_closed_msg{g.id, uint8_t(closed_why::cancelled), {}});
      },
      [=](const worker_down_msg& d) {
        auto& st = self->state;
        if (d.worker < 0 || size_t(d.worker) >= st.workers.size()) return;
        auto& w = st.workers[size_t(d.worker)];
        const auto since = w.up || !w.down_since ? std::chrono::steady_clock::now() : *w.down_since;
        w = worker_slot{};  // down until its replacement says hello
        st.handles[size_t(d.worker)] = caf::actor{};
        w.down_since = since;
        breaker_of(st, size_t(d.worker));
        if (d.gave_up) st.gave_up[size_t(d.worker)] = true;
        const int32_t limit = st.core->cfg.quarantine_after;
        for (auto it = st.routes.begin(); it != st.routes.end();) {
          if (it->second.worker == d.worker) {
            if (auto why = st.suspects.quarantine(it->first, limit)) {
              // A poison request: it failed every step it ran alone in.
              self->send(it->second.request, seq_closed_msg{it->first, uint8_t(closed_why::failed), std::move(*why)});
              st.core->stats.quarantined.fetch_add(1, std::memory_order_relaxed);
            } else {
              self->send(it->second.request,
                         seq_closed_msg{it->first, uint8_t(closed_why::lost), "worker failed: " + d.reason});
            }
            it = st.routes.erase(it);
          } else {
            ++it;
          }
        }
        dispatch(self);
      },
      [=](const step_failed_msg& f) {
        auto& st = self->state;
        if (f.worker < 0) return;
        breaker_of(st, size_t(f.worker)).on_failure(std::chrono::steady_clock::now());
        uint64_t key = 0;
        bool group = false;
        if (size_t(f.worker) < st.workers.size()) {
          key = st.workers[size_t(f.worker)].exclusive;
          group = st.workers[size_t(f.worker)].exclusive_group;
        }
        st.suspects.on_step_failed(f.ids, key, group, f.reason);
        publish_gauges(self);
      },
      [=](dispatch_atom) {
        self->state.dispatch_timer = false;
        dispatch(self);
      },
  };
}

}  // namespace

caf::actor spawn_batcher_actor(caf::actor_system& sys, service_core_ptr core) {
  return sys.spawn(batcher_fun, std::move(core));
}

}  // namespace infer
