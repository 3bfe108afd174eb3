#include "actors/supervisor-actor.hpp"

#include <chrono>
#include <random>

#include "actors/device-supervisor-actor.hpp"
#include "actors/messages.hpp"
#include "supervision/restart-policy.hpp"

namespace infer {

namespace {

using clock_type = std::chrono::steady_clock;

struct device_child {
  caf::actor handle;  // null while down
  caf::actor_addr addr;
  restart_policy policy;
  bool gave_up = false;
};

struct supervisor_state {
  static inline const char* name = "infer.supervisor";
  service_core_ptr core;
  std::vector<device_child> devices;  // by group of core->plan
  std::mt19937_64 rng;
};

using supervisor_actor = caf::stateful_actor<supervisor_state>;

void start_device(supervisor_actor* self, int32_t g) {
  auto& d = self->state.devices[size_t(g)];
  d.handle = spawn_device_supervisor_actor(self, self->state.core, g);
  d.addr = d.handle.address();
}

caf::behavior supervisor_fun(supervisor_actor* self, service_core_ptr core) {
  auto& st = self->state;
  st.core = std::move(core);
  st.rng.seed(st.core->cfg.fault_seed * 104729 + 17);
  const auto& c = st.core->cfg;
  restart_policy::options o;
  o.max_restarts = c.max_restarts;
  o.window = std::chrono::milliseconds(c.restart_window_ms);
  o.backoff_initial = std::chrono::milliseconds(c.backoff_initial_ms);
  o.backoff_max = std::chrono::milliseconds(c.backoff_max_ms);
  st.devices.resize(size_t(st.core->plan.n_groups()));
  for (auto& d : st.devices) d.policy = restart_policy(o);
  for (int32_t g = 0; g < st.core->plan.n_groups(); ++g) start_device(self, g);

  self->set_exit_handler([=](caf::exit_msg& m) {
    auto& st = self->state;
    for (size_t g = 0; g < st.devices.size(); ++g) {
      auto& d = st.devices[g];
      if (!d.handle || d.addr != m.source) continue;
      d.handle = nullptr;
      if (m.reason == caf::exit_reason::normal) return;
      const auto& workers = st.core->plan.workers[g];
      if (!d.policy.on_failure(clock_type::now())) {
        d.gave_up = true;  // escalation at the root: this device stays down, the others serve
        for (int32_t w : workers) {
          st.core->stats.update_worker(w, [](worker_gauge& x) { x.state = worker_gauge::run_state::failed; });
          self->send(st.core->batcher,
                     worker_down_msg{w, "device given up: " + to_string(m.reason), true});
        }
        return;
      }
      std::uniform_real_distribution<double> unit(0.0, 1.0);
      self->delayed_send(self, d.policy.next_delay(unit(st.rng)), restart_atom::value, int32_t(g));
      return;
    }
    // Not one of ours: a shutdown request.
    self->quit(m.reason);
  });
  return {
      [=](restart_atom, int32_t g) {
        auto& st = self->state;
        if (g < 0 || size_t(g) >= st.devices.size() || st.devices[size_t(g)].handle) return;
        for (int32_t w : st.core->plan.workers[size_t(g)]) {
          st.core->stats.worker_restarts.fetch_add(1, std::memory_order_relaxed);
          st.core->stats.update_worker(w, [](worker_gauge& x) { ++x.restarts; });
        }
        start_device(self, g);
      },
  };
}

}  // namespace

caf::actor spawn_supervisor_actor(caf::actor_system& sys, service_core_ptr core) {
  return sys.spawn(supervisor_fun, std::move(core));
}

}  // namespace infer
