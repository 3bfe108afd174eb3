#include "actors/device-supervisor-actor.hpp"

#include <chrono>
#include <random>
#include <set>

#include "actors/messages.hpp"
#include "actors/worker-actor.hpp"
#include "supervision/restart-policy.hpp"

namespace infer {

namespace {

using clock_type = std::chrono::steady_clock;

restart_policy::options policy_options(const service_config& c) {
  restart_policy::options o;
  o.max_restarts = c.max_restarts;
  o.window = std::chrono::milliseconds(c.restart_window_ms);
  o.backoff_initial = std::chrono::milliseconds(c.backoff_initial_ms);
  o.backoff_max = std::chrono::milliseconds(c.backoff_max_ms);
  return o;
}

struct child {
  int32_t id = 0;
  caf::actor handle;  // null while down
  caf::actor_addr addr;
};

struct device_supervisor_state {
  static inline const char* name = "infer.device_supervisor";
  service_core_ptr core;
  int32_t group = 0;
  int32_t label = -1;
  caf::actor_addr parent;
  std::vector<child> children;
  std::set<int32_t> device_fault;  // workers that reported a device-level fault before exiting
  std::set<int32_t> pending;       // restarts waiting for their back-off
  restart_policy policy;
  std::mt19937_64 rng;
};

using device_supervisor_actor = caf::stateful_actor<device_supervisor_state>;

child* find_child(device_supervisor_state& st, const caf::actor_addr& a) {
  for (auto& c : st.children)
    if (c.handle && c.addr == a) return &c;
  return nullptr;
}

child* find_child(device_supervisor_state& st, int32_t id) {
  for (auto& c : st.children)
    if (c.id == id) return &c;
  return nullptr;
}

void start_worker(device_supervisor_actor* self, child& c) {
  auto& st = self->state;
  c.handle = spawn_worker_actor(self, st.core, c.id);
  c.addr = c.handle.address();
  st.core->stats.update_worker(c.id, [&](worker_gauge& g) {
    g.device = st.label;
    g.state = worker_gauge::run_state::starting;
  });
}

void mark_down(device_supervisor_actor* self, int32_t id, const std::string& why) {
  auto& st = self->state;
  st.core->stats.update_worker(id, [](worker_gauge& g) { g.state = worker_gauge::run_state::restarting; });
  self->send(st.core->batcher, worker_down_msg{id, why, false});
}

void on_worker_failed(device_supervisor_actor* self, int32_t id, const std::string& why) {
  auto& st = self->state;
  mark_down(self, id, why);
  const bool whole_device = st.core->cfg.restart_strategy == "one_for_all" || st.device_fault.erase(id) > 0;
  if (!st.policy.on_failure(clock_type::now())) {
    // Intensity exceeded: restarting here is not helping. Take the device down and let
    // the root decide (restart the subtree after its own back-off, or give the device up).
    for (auto& c : st.children)
      if (c.handle) mark_down(self, c.id, "device " + std::to_string(st.label) + " supervisor escalated");
    st.core->stats.escalations.fetch_add(1, std::memory_order_relaxed);
    self->quit(caf::make_error(caf::sec::runtime_error,
                               "device " + std::to_string(st.label) + ": more than " +
                                   std::to_string(st.core->cfg.max_restarts) + " restarts within " +
                                   std::to_string(st.core->cfg.restart_window_ms) + " ms (last: " + why + ")"));
    return;
  }
  std::vector<int32_t> restart{id};
  if (whole_device) {
    for (auto& c : st.children) {
      if (!c.handle || c.id == id) continue;
      mark_down(self, c.id, "restarting every worker of device " + std::to_string(st.label) + " (" + why + ")");
      self->send_exit(c.handle, caf::exit_reason::user_shutdown);
      c.handle = nullptr;  // its exit_msg then finds no live child: expected, not a failure
      restart.push_back(c.id);
    }
  }
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  auto delay = st.policy.next_delay(unit(st.rng));
  for (int32_t r : restart) {
    st.pending.insert(r);
    self->delayed_send(self, delay, restart_atom::value, r);
  }
}

caf::behavior device_supervisor_fun(device_supervisor_actor* self, service_core_ptr core, int32_t group,
                                    caf::actor_addr parent) {
  auto& st = self->state;
  st.core = std::move(core);
  st.group = group;
  st.parent = std::move(parent);
  st.label = st.core->plan.labels[size_t(group)];
  st.policy = restart_policy(policy_options(st.core->cfg));
  st.rng.seed(st.core->cfg.fault_seed * 7919 + uint64_t(group) + 1);
  for (int32_t id : st.core->plan.workers[size_t(group)]) {
    st.children.push_back(child{id, nullptr, {}});
    start_worker(self, st.children.back());
  }

  self->set_exit_handler([=](caf::exit_msg& m) {
    auto& st = self->state;
    if (m.source == st.parent || !m.source) {  // the root is stopping
      self->quit(m.reason);
      return;
    }
    // No live child with that address: a worker this supervisor stopped itself (one_for_all,
    // its handle cleared then), already reported down and scheduled for restart; or an
    // older incarnation of a child restarted since.
    child* c = find_child(st, m.source);
    if (!c) return;
    c->handle = nullptr;
    if (m.reason == caf::exit_reason::normal) return;
    on_worker_failed(self, c->id, to_string(m.reason));
  });
  return {
      [=](const step_failed_msg& f) {
        if (f.device_fault) self->state.device_fault.insert(f.worker);
      },
      [=](restart_atom, int32_t id) {
        auto& st = self->state;
        if (st.pending.erase(id) == 0) return;
        child* c = find_child(st, id);
        if (!c || c->handle) return;
        st.core->stats.worker_restarts.fetch_add(1, std::memory_order_relaxed);
        st.core->stats.update_worker(id, [](worker_gauge& g) { ++g.restarts; });
        start_worker(self, *c);
      },
  };
}

}  // namespace

caf::actor spawn_device_supervisor_actor(caf::local_actor* root, service_core_ptr core, int32_t group) {
  return root->spawn<caf::linked>(device_supervisor_fun, std::move(core), group, root->address());
}

}  // namespace infer
