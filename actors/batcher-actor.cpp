#include "actors/batcher-actor.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <deque>
#include <unordered_map>

#include "actors/messages.hpp"
#include "supervision/circuit-breaker.hpp"

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
  // A suspect running alone here: nothing else is admitted until one of its steps succeeds.
  uint64_t exclusive = 0;
  uint64_t exclusive_admit = 0;  // its admission number (admits_sent)
  bool probe = false;            // admitted the half-open breaker's single probe
  // Held for a suspect that must run alone: takes nothing new until it is idle.
  uint64_t reserved = 0;
};

// A sequence that was in a failed step. Random faults must not condemn it, a poison
// request must not crash-loop the fleet: a second failed step makes it run alone, and
// quarantine_after failures while alone end it with error(internal).
struct suspect {
  bool alone = false;
  int32_t solo_failures = 0;
  std::string reason;
};

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
  double step_ms = 0;                          // moving average of measured step times
  bool dispatch_timer = false;                 // an idispatch is pending
};

using batcher_actor = caf::stateful_actor<batcher_state>;

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
  m.running_sequences.store(held);
  m.kv_blocks_used.store(used);
  m.kv_blocks_total.store(total);
  int32_t ready = 0;
  for (auto& w : st.workers) ready += w.up ? 1 : 0;
  st.core->workers_ready.store(ready);
  auto now = std::chrono::steady_clock::now();
  for (size_t i = 0; i < st.workers.size(); ++i) {
    auto& w = st.workers[i];
    const uint8_t b = i < st.breakers.size() ? uint8_t(st.breakers[i].current(now)) : 0;
    m.update_worker(int32_t(i), [&](worker_gauge& g) {
      g.breaker = b;
      g.running = w.up ? w.held : 0;
      g.kv_free = w.up ? w.free_blocks : 0;
      g.kv_total = w.up ? w.total_blocks : 0;
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
void arm_dispatch_timer(batcher_actor* self) {
  auto& st = self->state;
  if (st.dispatch_timer) return;
  auto now = std::chrono::steady_clock::now();
  int64_t wait = -1;
  for (size_t i = 0; i < st.breakers.size(); ++i)
    if (st.breakers[i].current(now) == circuit_breaker::state::open) {
      int64_t left = std::max<int64_t>(1, st.breakers[i].retry_after(now).count());
      wait = wait < 0 ? left : std::min(wait, left);
    }
  if (wait < 0) return;
  st.dispatch_timer = true;
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
  self->send(m.request, dispatched_msg{m.id, best});
  admit_msg a;
  a.id = m.id;
  a.request = m.request;
  a.prompt = std::move(m.prompt);
  a.generated = std::move(m.generated);
  a.max_tokens = m.max_tokens;
  a.sampling = m.sampling;
  a.attempt = m.attempt;
  self->send(w.handle, std::move(a));
}

// Admits queued sequences, highest priority first, while some worker has room. A suspect
// that must run alone waits for an idle worker without holding up the others.
void dispatch(batcher_actor* self) {
  auto& st = self->state;
  auto now = std::chrono::steady_clock::now();
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
      auto sit = st.suspects.find(m.id);
      const bool alone = sit != st.suspects.end() && sit->second.alone;
      int best = -1;
      for (int i = 0; i < int(st.workers.size()); ++i) {
        auto& w = st.workers[size_t(i)];
        if (!routable(st, size_t(i), now) || w.exclusive != 0) continue;
        if (w.reserved != 0 && w.reserved != m.id) continue;
        if (alone && (w.held != 0 || !w.in_transit.empty())) continue;
        if (w.est_held() >= w.max_running || w.est_free() < w.blocks_for(n)) continue;
        if (best < 0 || w.est_free() > st.workers[size_t(best)].est_free()) best = i;
      }
      if (best < 0) {
        if (alone) {
          // Reserve the least busy worker (once) so that it drains; the others go on.
          bool has = false;
          for (auto& w : st.workers) has |= w.reserved == m.id;
          if (!has) {
            int pick = -1;
            for (int i = 0; i < int(st.workers.size()); ++i) {
              auto& w = st.workers[size_t(i)];
              if (!routable(st, size_t(i), now) || w.exclusive != 0 || w.reserved != 0) continue;
              if (pick < 0 || w.est_held() < st.workers[size_t(pick)].est_held()) pick = i;
            }
            if (pick >= 0) st.workers[size_t(pick)].reserved = m.id;
          }
          ++qi;
          continue;
        }
        publish_gauges(self);
        arm_dispatch_timer(self);
        return;  // head-of-line: lower levels wait too, so priority order holds
      }
      admit_to(self, best, m, n);
      if (alone) {
        for (auto& o : st.workers)
          if (o.reserved == m.id) o.reserved = 0;
        auto& w = st.workers[size_t(best)];
        w.exclusive = m.id;
        w.exclusive_admit = w.admits_sent;
      }
      q.erase(q.begin() + std::ptrdiff_t(qi));
      --st.queued;
    }
  }
  publish_gauges(self);
  arm_dispatch_timer(self);
}

// A lower bound of the time a new request needs: its own decode steps, plus the queue ahead
// of it served max_running at a time per worker. 0 before any step was measured.
int64_t estimate_ms(batcher_state& st, const enqueue_msg& m) {
  if (st.step_ms <= 0) return 0;
  int64_t slots = 0;
  for (auto& w : st.workers)
    if (w.up) slots += w.max_running;
  const double rounds = 1.0 + double(st.queued) / double(std::max<int64_t>(slots, 1));
  return int64_t(st.step_ms * double(m.max_tokens) * rounds);
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
  self->state.workers.resize(size_t(std::max(self->state.core->cfg.workers, 1)));
  return {
      [=](enqueue_msg& m) {
        auto& st = self->state;
        const size_t level = std::min<size_t>(m.prio, 2);
        if (m.resume) {  // accepted long ago: back to the front of its level
          st.queues[level].push_front(std::move(m));
          ++st.queued;
        } else if (int64_t wait = unavailable_for(st); wait > 0) {
          // Every worker's breaker is open (or its device given up): fail fast, do not pile up.
          self->send(m.request, admission_msg{m.id, false, uint8_t(error_code::unavailable), wait,
                                              "no healthy worker: every circuit breaker is open"});
          return;
        } else if (int64_t est = estimate_ms(st, m); m.timeout_ms > 0 && est > m.timeout_ms) {
          self->send(m.request,
                     admission_msg{m.id, false, uint8_t(error_code::timeout), 0,
                                   "the deadline cannot be met: about " + std::to_string(est) + " ms needed (" +
                                       std::to_string(st.queued) + " queued, steps of " +
                                       std::to_string(int64_t(std::lround(st.step_ms))) + " ms), " +
                                       std::to_string(m.timeout_ms) + " ms left"});
          return;
        } else if (st.queued >= st.core->cfg.queue_capacity) {
          admission_msg a{m.id, false, uint8_t(error_code::overloaded), 100,
                          "the admission queue is full (" + std::to_string(st.core->cfg.queue_capacity) + ")"};
          self->send(m.request, std::move(a));
          return;
        } else {
          auto req = m.request;
          uint64_t id = m.id;
          st.queues[level].push_back(std::move(m));
          ++st.queued;
          self->send(req, admission_msg{id, true, 0, 0, {}});
        }
        dispatch(self);
      },
      [=](const cancel_msg& c) {
        auto& st = self->state;
        auto sender = caf::actor_cast<caf::actor>(self->current_sender());
        if (remove_queued(st, c.id)) {
          for (auto& w : st.workers)
            if (w.reserved == c.id) w.reserved = 0;
          publish_gauges(self);
          self->send(sender, seq_closed_msg{c.id, uint8_t(closed_why::cancelled), {}});
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
          if (w.exclusive != 0 && r.admits_seen >= w.exclusive_admit) {
            st.suspects.erase(w.exclusive);  // it ran alone without failing: not a poison
            w.exclusive = 0;
          }
          const double ms = double(r.step_us) / 1000.0;
          st.step_ms = st.step_ms <= 0 ? ms : 0.9 * st.step_ms + 0.1 * ms;
        }
        for (uint64_t id : r.left) {
          st.suspects.erase(id);
          if (w.exclusive == id) w.exclusive = 0;
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
        dispatch(self);
      },
      [=](const seq_gone_msg& g) {
        auto& st = self->state;
        auto it = st.routes.find(g.id);
        if (it == st.routes.end()) return;
        auto req = it->second.request;
        st.routes.erase(it);
        st.suspects.erase(g.id);
        if (g.worker >= 0 && size_t(g.worker) < st.workers.size() && st.workers[size_t(g.worker)].exclusive == g.id)
          st.workers[size_t(g.worker)].exclusive = 0;
        if (g.rejected)
          self->send(req, seq_closed_msg{g.id, uint8_t(closed_why::rejected), g.message});
        else
          self->send(req, seq_closed_msg{g.id, uint8_t(closed_why::cancelled), {}});
      },
      [=](const worker_down_msg& d) {
        auto& st = self->state;
        if (d.worker < 0 || size_t(d.worker) >= st.workers.size()) return;
        auto& w = st.workers[size_t(d.worker)];
        w = worker_slot{};  // down until its replacement says hello
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
        const uint64_t solo =
            size_t(f.worker) < st.workers.size() ? st.workers[size_t(f.worker)].exclusive : uint64_t(0);
        for (uint64_t id : f.ids) {
          auto [it, fresh] = st.suspects.try_emplace(id);
          it->second.reason = f.reason;
          if (fresh) continue;  // first failed step: only a suspect
          if (id == solo)
            ++it->second.solo_failures;
          else
            it->second.alone = true;  // failed again among others: try it alone
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
