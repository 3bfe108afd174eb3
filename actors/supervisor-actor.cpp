#include "actors/supervisor-actor.hpp"

#include <chrono>
#include <deque>

#include "actors/messages.hpp"
#include "actors/worker-actor.hpp"

namespace infer {

namespace {

constexpr int max_restarts = 5;
constexpr auto restart_window = std::chrono::seconds(10);

struct supervisor_state {
  static inline const char* name = "infer.supervisor";
  service_core_ptr core;
  std::vector<caf::actor> workers;
  std::vector<std::deque<std::chrono::steady_clock::time_point>> restarts;
};

using supervisor_actor = caf::stateful_actor<supervisor_state>;

caf::behavior supervisor_fun(supervisor_actor* self, service_core_ptr core) {
  auto& st = self->state;
  st.core = std::move(core);
  const int32_t n = std::max(st.core->cfg.workers, 1);
  st.restarts.resize(size_t(n));
  for (int32_t i = 0; i < n; ++i) st.workers.push_back(spawn_worker_actor(self, st.core, i));

  self->set_exit_handler([=](caf::exit_msg& m) {
    auto& st = self->state;
    for (size_t i = 0; i < st.workers.size(); ++i) {
      if (!st.workers[i] || st.workers[i].address() != m.source) continue;
      st.workers[i] = nullptr;
      if (m.reason == caf::exit_reason::normal) return;
      std::string why = to_string(m.reason);
      self->send(st.core->batcher, worker_down_msg{int32_t(i), why});
      auto now = std::chrono::steady_clock::now();
      auto& r = st.restarts[i];
      while (!r.empty() && now - r.front() > restart_window) r.pop_front();
      if (int(r.size()) >= max_restarts) return;  // gives up on this worker
      r.push_back(now);
      st.core->stats.worker_restarts.fetch_add(1, std::memory_order_relaxed);
      st.workers[i] = spawn_worker_actor(self, st.core, int32_t(i));
      return;
    }
    // Not one of ours: a shutdown request.
    self->quit(m.reason);
  });
  return {
      [](caf::get_atom) { return int32_t(0); },  // keeps the actor alive; nothing to ask yet
  };
}

}  // namespace

caf::actor spawn_supervisor_actor(caf::actor_system& sys, service_core_ptr core) {
  return sys.spawn(supervisor_fun, std::move(core));
}

}  // namespace infer
