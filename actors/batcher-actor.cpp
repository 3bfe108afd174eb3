#include "actors/batcher-actor.hpp"

#include <algorithm>
#include <array>
#include <deque>
#include <unordered_map>

#include "actors/messages.hpp"

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
}

// Admits queued sequences, highest priority first, while some worker has room.
void dispatch(batcher_actor* self) {
  auto& st = self->state;
  for (auto& q : st.queues) {
    while (!q.empty()) {
      enqueue_msg& m = q.front();
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
        q.pop_front();
        --st.queued;
        continue;
      }
      int best = -1;
      for (int i = 0; i < int(st.workers.size()); ++i) {
        auto& w = st.workers[size_t(i)];
        if (!w.up || w.est_held() >= w.max_running || w.est_free() < w.blocks_for(n)) continue;
        if (best < 0 || w.est_free() > st.workers[size_t(best)].est_free()) best = i;
      }
      if (best < 0) {
        publish_gauges(self);
        return;  // head-of-line: lower levels wait too, so priority order holds
      }
      auto& w = st.workers[size_t(best)];
      w.in_transit.emplace_back(++w.admits_sent, w.blocks_for(n));
      st.routes[m.id] = route{best, m.request};
      self->send(m.request, dispatched_msg{m.id, best});
      admit_msg a;
      a.id = m.id;
      a.request = m.request;
      a.prompt = std::move(m.prompt);
      a.generated = std::move(m.generated);
      a.max_tokens = m.max_tokens;
      a.sampling = m.sampling;
      self->send(w.handle, std::move(a));
      q.pop_front();
      --st.queued;
    }
  }
  publish_gauges(self);
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
        for (uint64_t id : r.left) {
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
        for (auto it = st.routes.begin(); it != st.routes.end();) {
          if (it->second.worker == d.worker) {
            self->send(it->second.request,
                       seq_closed_msg{it->first, uint8_t(closed_why::lost), "worker failed: " + d.reason});
            it = st.routes.erase(it);
          } else {
            ++it;
          }
        }
        dispatch(self);
      },
  };
}

}  // namespace

caf::actor spawn_batcher_actor(caf::actor_system& sys, service_core_ptr core) {
  return sys.spawn(batcher_fun, std::move(core));
}

}  // namespace infer
