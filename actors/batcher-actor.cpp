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
#include "actors/prefix-index.hpp"
#include "supervision/circuit-breaker.hpp"
#include "supervision/overload-monitor.hpp"

namespace infer {

namespace {

struct worker_slot {
  caf::actor handle;
  bool up = false;
  int32_t max_running = 0;
  int32_t block_size = 16;
  int32_t total_blocks = 0;
  // From the last report.
  int32_t held = 0;  // running + waiting
  int32_t free_blocks = 0;
  int32_t used_blocks = 0;
  uint64_t admits_seen = 0;
  // Admissions sent and not yet seen in a report: (admit number, blocks it needs).
  uint64_t admits_sent = 0;
  std::deque<std::pair<uint64_t, int32_t>> in_transit;

  int32_t est_held() const { return held + int32_t(in_transit.size()); }
  int32_t est_free() const {
    int32_t f = free_blocks;
    for (auto& t : in_transit) f -= t.second;
    return f;
  }
  int32_t blocks_for(int32_t n) const { return (n + block_size - 1) / block_size; }
  int32_t n_ctx = 0;
  uint64_t preemptions = 0;  // the worker's cumulative count at its last report
  uint64_t prefix_queries = 0, prefix_hits = 0;  // likewise, prefix cache tokens
  int32_t cached_blocks = 0;
  prefix_index cached;  // what it is believed to hold (actors/prefix-index.hpp)
  // Suspects retried here (the key of one suspect running alone, or of a failed step's
  // group retried together): nothing else is admitted until a step holding every one of
  // them succeeds (or they are gone).
  uint64_t exclusive = 0;
  bool exclusive_group = false;
  std::vector<uint64_t> exclusive_ids;  // admitted under the exclusivity and still held here
  uint64_t exclusive_admit = 0;         // admission number (admits_sent) of the latest of them
  bool probe = false;                   // admitted the half-open breaker's single probe
  // Held for suspects (this key) that must run without others: takes nothing new until idle.
  uint64_t reserved = 0;
  // Since when it is down after a failure (unset: up, or never started yet).
  std::optional<std::chrono::steady_clock::time_point> down_since;
};

// A sequence that was in a failed step. Random faults must not condemn it, a poison
// request must not crash-loop the fleet. The sequences of a failed step are retried
// together, in steps of their own (their group); if such a step fails again, each runs
// alone; quarantine_after failures while alone end it with error(internal).
struct suspect {
  enum class stage : uint8_t { together, alone };
  stage at = stage::together;
  uint64_t group = 0;  // key of its group while `together`
  int32_t solo_failures = 0;
  std::string reason;
};

// Group keys live apart from request ids (which count up from 1 and never reach 2^63).
constexpr uint64_t k_group_key_bit = uint64_t(1) << 63;

// The key a suspect is retried under: its group's, or its own when it runs alone.
uint64_t key_of(const suspect& s, uint64_t id) { return s.at == suspect::stage::together ? s.group : id; }

struct route {
  int32_t worker = -1;
  caf::actor request;
  bool cancelling = false;  // a cancel was forwarded: the request waits for seq_closed
};

struct batcher_state {
  static inline const char* name = "infer.batcher";
  service_core_ptr core;
  std::array<std::deque<enqueue_msg>, 3> queues;  // by priority
  int32_t queued = 0;
  std::vector<worker_slot> workers;
  std::unordered_map<uint64_t, route> routes;  // dispatched and not yet gone
  std::vector<circuit_breaker> breakers;       // by worker index; outlive the worker's restarts
  std::vector<bool> gave_up;                   // by worker index: its device was given up
  std::unordered_map<uint64_t, suspect> suspects;
  uint64_t next_group = 0;
  // Moving averages of measured steps, kept apart: a prefill step costs per token of the
  // prompt, a decode step per generated token, and one average of both overstates decoding.
  double decode_step_ms = 0;                   // steps of decodes only (one token per sequence)
  double prefill_token_ms = 0;                 // steps with prefill tokens: time per token in it
  bool dispatch_timer = false;                 // an idispatch is pending
  std::chrono::steady_clock::time_point dispatch_due;  // when it fires
  overload_monitor overload;                   // sustained overload: caps max_tokens (degradation)
  std::vector<uint64_t> chain;                 // scratch: prefix block hashes of the sequence being routed
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
  m.queue_depth.store(st.queued);
  const auto t = std::chrono::steady_clock::now();
  st.overload.observe(st.queued, t);
  m.cpu_fallback_active.store(fallback_serves(st, t) ? 1 : 0);
  m.max_tokens_cap_active.store(st.core->cfg.overload_max_tokens > 0 && st.overload.sustained(t) ? 1 : 0);
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
  if (has_fallback(st) && st.queued > 0) {
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
  w.in_transit.emplace_back(++w.admits_sent, w.blocks_for(n));
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
  self->send(w.handle, std::move(a));
}

// Drops reservations that no queued suspect needs any more (it was cancelled, or it is
// running elsewhere) or that the worker cannot honour now (breaker open, a fallback worker
// while primaries serve), so that a reserved worker never idles for nothing.
void prune_reservations(batcher_state& st, std::chrono::steady_clock::time_point now, bool fallback_ok) {
  bool any = false;
  for (auto& w : st.workers) any |= w.reserved != 0;
  if (!any) return;
  std::unordered_set<uint64_t> wanted;
  for (auto& q : st.queues)
    for (auto& m : q)
      if (auto it = st.suspects.find(m.id); it != st.suspects.end()) wanted.insert(key_of(it->second, m.id));
  for (size_t i = 0; i < st.workers.size(); ++i) {
    auto& w = st.workers[i];
    if (w.reserved == 0) continue;
    if (!wanted.count(w.reserved) || !routable(st, i, now) || (is_fallback(st, i) && !fallback_ok)) w.reserved = 0;
  }
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
  for (auto& q : st.queues) {
    for (size_t qi = 0; qi < q.size();) {
      enqueue_msg& m = q[qi];
      const int32_t n = int32_t(m.prompt.size() + m.generated.size()) + 1;
      // A sequence that no worker could ever hold must not block the queue.
      bool any_up = false, fits_some = false;
      int32_t most = 0;
      for (auto& w : st.workers) {
        if (!w.up) continue;
        any_up = true;
        const int32_t peak = std::min<int32_t>(int32_t(m.prompt.size()) + m.max_tokens, w.n_ctx);
        fits_some |= w.blocks_for(peak) <= w.total_blocks;
        most = std::max(most, w.total_blocks);
      }
      if (any_up && !fits_some) {
        self->send(m.request, seq_closed_msg{m.id, uint8_t(closed_why::rejected),
                                             "the sequence needs more KV cache than a worker has (" +
                                                 std::to_string(most) + " blocks)"});
        q.erase(q.begin() + std::ptrdiff_t(qi));
        --st.queued;
        continue;
      }
      // 0: an ordinary sequence; else the key its suspect retry runs under.
      uint64_t key = 0;
      bool group = false;
      if (auto sit = st.suspects.find(m.id); sit != st.suspects.end()) {
        key = key_of(sit->second, m.id);
        group = sit->second.at == suspect::stage::together;
      }
      if (blocked && key == 0) {
        ++qi;
        continue;
      }
      int best = -1, n_fit = 0;
      for (int i = 0; i < int(st.workers.size()); ++i) {
        auto& w = st.workers[size_t(i)];
        if (!eligible(size_t(i))) continue;
        if (w.exclusive != 0) {
          if (key == 0 || w.exclusive != key || !group) continue;  // only its own group joins
        } else {
          if (w.reserved != 0 && w.reserved != key) continue;
          if (key != 0 && (w.held != 0 || !w.in_transit.empty())) continue;  // suspects start on an idle worker
        }
        if (w.est_held() >= w.max_running || w.est_free() < w.blocks_for(n)) continue;
        ++n_fit;
        if (best < 0 || w.est_free() > st.workers[size_t(best)].est_free()) best = i;
      }
      if (best >= 0 && key == 0 && st.core->cfg.prefix_caching && st.core->cfg.prefix_affinity_tokens > 0 &&
          st.workers.size() > 1) {
        // Cache-aware routing (actors/README.md): a worker believed to hold a longer prefix
        // wins over the least loaded one when its extra prefix tokens outweigh
        // prefix_affinity_tokens per extra sequence it holds.
        const int32_t bs = st.workers[size_t(best)].block_size;
        prefix_chain(std::span<const int32_t>(m.prompt), bs, st.chain);
        const auto& b0 = st.workers[size_t(best)];
        const int64_t base_hit = int64_t(b0.cached.match(st.chain)) * bs;
        const int64_t per_seq = st.core->cfg.prefix_affinity_tokens;
        int pick = best;
        int64_t pick_score = 0;
        if (n_fit > 1) {
          for (int i = 0; i < int(st.workers.size()); ++i) {
            auto& w = st.workers[size_t(i)];
            if (i == best || !eligible(size_t(i)) || w.exclusive != 0 || w.reserved != 0) continue;
            if (w.est_held() >= w.max_running || w.est_free() < w.blocks_for(n) || w.block_size != bs) continue;
            const int64_t gain = int64_t(w.cached.match(st.chain)) * bs - base_hit;
            const int64_t score = gain - per_seq * std::max<int64_t>(0, w.est_held() - b0.est_held());
            if (gain > 0 && score > pick_score) pick = i, pick_score = score;
          }
        }
        if (pick != best) st.core->stats.prefix_routed.fetch_add(1, std::memory_order_relaxed);
        best = pick;
        st.workers[size_t(best)].cached.insert(st.chain);
      }
      if (best < 0) {
        if (key != 0) {
          // Reserve the least busy worker (once per key) so that it drains; the others go on.
          bool has = false;
          for (auto& w : st.workers) has |= w.reserved == key || w.exclusive == key;
          if (!has) {
            int pick = -1;
            for (int i = 0; i < int(st.workers.size()); ++i) {
              auto& w = st.workers[size_t(i)];
              if (!eligible(size_t(i)) || w.exclusive != 0 || w.reserved != 0) continue;
              if (pick < 0 || w.est_held() < st.workers[size_t(pick)].est_held()) pick = i;
            }
            if (pick >= 0) st.workers[size_t(pick)].reserved = key;
          }
          ++qi;
          continue;
        }
        blocked = true;  // head-of-line: lower levels wait too, so priority order holds
        ++qi;
        continue;
      }
      const uint64_t id = m.id;
      admit_to(self, best, m, n);
      if (key != 0) {
        for (auto& o : st.workers)
          if (o.reserved == key) o.reserved = 0;
        auto& w = st.workers[size_t(best)];
        w.exclusive = key;
        w.exclusive_group = group;
        w.exclusive_ids.push_back(id);
        w.exclusive_admit = w.admits_sent;
      }
      q.erase(q.begin() + std::ptrdiff_t(qi));
      --st.queued;
    }
  }
  publish_gauges(self);
  arm_dispatch_timer(self);
}

// A sequence left worker w (finished, cancelled, refused): it no longer holds the worker's
// exclusivity, which ends when none of its suspects is left there.
void leave_exclusive(worker_slot& w, uint64_t id) {
  auto it = std::find(w.exclusive_ids.begin(), w.exclusive_ids.end(), id);
  if (it != w.exclusive_ids.end()) w.exclusive_ids.erase(it);
  if (w.exclusive != 0 && w.exclusive_ids.empty() && w.admits_seen >= w.exclusive_admit) {
    w.exclusive = 0;
    w.exclusive_group = false;
  }
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
  const double rounds = 1.0 + double(st.queued) / double(std::max<int64_t>(slots, 1));
  const double own = st.prefill_token_ms * double(m.prompt.size()) + st.decode_step_ms * double(decode_steps(st, m));
  return int64_t(own * rounds);
}

bool remove_queued(batcher_state& st, uint64_t id) {
  for (auto& q : st.queues)
    for (auto it = q.begin(); it != q.end(); ++it)
      if (it->id == id) {
        q.erase(it);
        --st.queued;
        return true;
      }
  return false;
}

caf::behavior batcher_fun(batcher_actor* self, service_core_ptr core) {
  self->state.core = std::move(core);
  const auto& cfg = self->state.core->cfg;
  self->state.workers.resize(size_t(std::max(self->state.core->plan.n_workers(), 1)));
  self->state.overload = overload_monitor(cfg.queue_capacity, cfg.overload_queue_fraction,
                                          std::chrono::milliseconds(cfg.overload_after_ms));
  return {
      [=](enqueue_msg& m) {
        auto& st = self->state;
        const size_t level = std::min<size_t>(m.prio, 2);
        if (m.resume) {  // accepted long ago: back to the front of its level
          st.queues[level].push_front(std::move(m));
          ++st.queued;
          dispatch(self);
          return;
        }
        if (int64_t wait = unavailable_for(st); wait > 0) {
          // Every worker's breaker is open (or its device given up): fail fast, do not pile up.
          self->send(m.request, admission_msg{m.id, false, uint8_t(error_code::unavailable), wait,
                                              "no healthy worker: every circuit breaker is open"});
          return;
        }
        int32_t cap = 0;  // sustained overload: a newly admitted request gets a smaller max_tokens
        if (const int32_t limit = st.core->cfg.overload_max_tokens; limit > 0) {
          const auto now = std::chrono::steady_clock::now();
          st.overload.observe(st.queued, now);
          if (st.overload.sustained(now) && m.max_tokens > limit) {
            m.max_tokens = limit;
            cap = limit;
          }
        }
        if (int64_t est = estimate_ms(st, m); m.timeout_ms > 0 && est > m.timeout_ms) {
          self->send(m.request,
                     admission_msg{m.id, false, uint8_t(error_code::timeout), 0,
                                   fmt::format("the deadline cannot be met: about {} ms needed ({} prompt tokens at "
                                               "{:.3f} ms, {} decode steps at {:.2f} ms, {} queued), {} ms left; "
                                               "raise timeout_ms",
                                               est, m.prompt.size(), st.prefill_token_ms, decode_steps(st, m),
                                               st.decode_step_ms, st.queued, m.timeout_ms)});
          return;
        }
        if (st.queued >= st.core->cfg.queue_capacity) {
          admission_msg a{m.id, false, uint8_t(error_code::overloaded), 100,
                          "the admission queue is full (" + std::to_string(st.core->cfg.queue_capacity) + ")"};
          self->send(m.request, std::move(a));
          return;
        }
        auto req = m.request;
        uint64_t id = m.id;
        st.queues[level].push_back(std::move(m));
        ++st.queued;
        self->send(req, admission_msg{id, true, 0, 0, {}, cap});
        dispatch(self);
      },
      [=](const cancel_msg& c) {
        auto& st = self->state;
        auto sender = caf::actor_cast<caf::actor>(self->current_sender());
        if (remove_queued(st, c.id)) {
          self->send(sender, seq_closed_msg{c.id, uint8_t(closed_why::cancelled), {}});
          dispatch(self);  // a worker reserved for it is free again
          return;
        }
        auto it = st.routes.find(c.id);
        if (it != st.routes.end() && it->second.worker >= 0 && st.workers[size_t(it->second.worker)].up) {
          it->second.cancelling = true;
          self->send(st.workers[size_t(it->second.worker)].handle, c);
          return;  // the worker's seq_gone_msg (or its report that the sequence left) completes it
        }
        // Not here any more (already finished): nothing to free.
        self->send(sender, seq_closed_msg{c.id, uint8_t(closed_why::cancelled), {}});
      },
      [=](const worker_hello_msg& h) {
        auto& st = self->state;
        if (h.worker < 0) return;
        if (size_t(h.worker) >= st.workers.size()) st.workers.resize(size_t(h.worker) + 1);
        auto& w = st.workers[size_t(h.worker)];
        w = worker_slot{};
        w.handle = h.handle;
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
        if (!w.up || w.handle != caf::actor_cast<caf::actor>(self->current_sender())) return;  // stale
        w.held = r.n_running + r.n_waiting;
        w.free_blocks = r.free_blocks;
        w.used_blocks = r.used_blocks;
        w.total_blocks = r.total_blocks;
        w.admits_seen = r.admits_seen;
        while (!w.in_transit.empty() && w.in_transit.front().first <= r.admits_seen) w.in_transit.pop_front();
        if (r.batch_seqs > 0) {  // a step succeeded: the worker is healthy
          breaker_of(st, size_t(r.worker)).on_success();
          w.probe = false;
          // Every suspect held here was in this step (the worker holds nothing else) and it
          // succeeded: they are not poison.
          if (w.exclusive != 0 && r.admits_seen >= w.exclusive_admit &&
              r.batch_seqs >= int32_t(w.exclusive_ids.size())) {
            for (uint64_t id : w.exclusive_ids) st.suspects.erase(id);
            w.exclusive_ids.clear();
            w.exclusive = 0;
            w.exclusive_group = false;
          }
          const double ms = double(r.step_us) / 1000.0;
          auto ema = [](double avg, double x) { return avg <= 0 ? x : 0.9 * avg + 0.1 * x; };
          if (r.batch_tokens <= r.batch_seqs) st.decode_step_ms = ema(st.decode_step_ms, ms);
          else st.prefill_token_ms = ema(st.prefill_token_ms, ms / double(r.batch_tokens));
        }
        for (uint64_t id : r.left) {
          st.suspects.erase(id);
          leave_exclusive(w, id);
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
        st.suspects.erase(g.id);
        if (g.worker >= 0 && size_t(g.worker) < st.workers.size()) leave_exclusive(st.workers[size_t(g.worker)], g.id);
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
        w.down_since = since;
        breaker_of(st, size_t(d.worker));
        if (d.gave_up) st.gave_up[size_t(d.worker)] = true;
        const int32_t limit = st.core->cfg.quarantine_after;
        for (auto it = st.routes.begin(); it != st.routes.end();) {
          if (it->second.worker == d.worker) {
            auto sit = st.suspects.find(it->first);
            if (sit != st.suspects.end() && sit->second.solo_failures >= limit) {
              // A poison request: it failed every step it ran alone in.
              self->send(it->second.request,
                         seq_closed_msg{it->first, uint8_t(closed_why::failed),
                                        "quarantined: the request failed its engine step " + std::to_string(limit) +
                                            " times while running alone (" + sit->second.reason + ")"});
              st.core->stats.quarantined.fetch_add(1, std::memory_order_relaxed);
              st.suspects.erase(sit);
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
        uint64_t fresh_group = 0;
        for (uint64_t id : f.ids) {
          auto it = st.suspects.find(id);
          if (it == st.suspects.end()) {  // first failed step: a suspect, retried with its group
            if (fresh_group == 0) fresh_group = k_group_key_bit | ++st.next_group;
            suspect s;
            s.group = fresh_group;
            s.reason = f.reason;
            st.suspects.emplace(id, std::move(s));
            continue;
          }
          auto& s = it->second;
          s.reason = f.reason;
          if (s.at == suspect::stage::together) {  // failed again: each of them runs alone
            s.at = suspect::stage::alone;
            s.group = 0;
          } else if (key == id && !group) {
            ++s.solo_failures;  // failed while alone: counts towards quarantine
          }
        }
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
