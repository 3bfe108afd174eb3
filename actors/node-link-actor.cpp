#include "actors/node-link-actor.hpp"

#include <limits>
#include <map>
#include <random>
#include <set>

#include <caf/io/all.hpp>
#include <caf/openssl/all.hpp>
#include <spdlog/spdlog.h>

#include "actors/messages.hpp"
#include "supervision/restart-policy.hpp"

namespace infer {

namespace {

// A connect or join that gets no answer within this long counts as failed (a stopped node
// accepts TCP connections in the kernel but never completes CAF's handshake).
constexpr auto handshake_timeout = std::chrono::seconds(5);

struct node_link_state {
  static inline const char* name = "infer.node_link";
  service_core_ptr core;
  std::string host;
  uint16_t port = 0;
  bool tls = false;
  std::string address;  // host:port, the node's label in status and metrics
  caf::actor agent;     // set while connected (or joining)
  bool joined = false;
  bool connecting = false;
  std::map<int32_t, int32_t> index;        // the node's worker index -> the front's
  std::map<int32_t, caf::actor> handles;   // the node's worker index -> its live worker
  restart_policy backoff;
  std::mt19937_64 rng;
};

using node_link_actor = caf::stateful_actor<node_link_state>;

void set_node(node_link_actor* self, const char* state, const std::string& error = {}) {
  auto& st = self->state;
  st.core->stats.update_node(st.address, [&](node_gauge& g) {
    if (g.state != "connected" && std::string_view(state) == "connected") ++g.joins;
    if (g.state == "connected" && std::string_view(state) != "connected") ++g.losses;
    g.state = state;
    if (!error.empty()) g.last_error = error;
    g.workers = int32_t(st.index.size());
  });
}

void schedule_reconnect(node_link_actor* self) {
  auto& st = self->state;
  st.backoff.on_failure(restart_policy::clock::now());
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  self->delayed_send(self, st.backoff.next_delay(unit(st.rng)), relink_atom::value);
}

// The node is gone (or never came): its workers are down for the batcher, which resumes
// their sequences elsewhere; then try again later.
void on_lost(node_link_actor* self, const std::string& why, bool refused = false) {
  auto& st = self->state;
  const bool was_joined = st.joined;
  if (st.agent) self->demonitor(st.agent);
  st.agent = nullptr;
  st.joined = false;
  st.connecting = false;
  for (auto& [local, global] : st.index) {
    self->send(st.core->batcher, worker_down_msg{global, "worker node " + st.address + " lost: " + why, false});
    st.core->stats.update_worker(global, [](worker_gauge& g) { g.state = worker_gauge::run_state::restarting; });
  }
  st.handles.clear();
  if (was_joined) spdlog::warn("worker node {}: lost ({}); its sequences resume elsewhere", st.address, why);
  set_node(self, refused ? "refused" : "down", why);
  schedule_reconnect(self);
}

void join(node_link_actor* self) {
  auto& st = self->state;
  self->monitor(st.agent);
  self->request(st.agent, handshake_timeout, join_atom::value, wire_protocol_version, st.core->model_id,
                caf::actor_cast<caf::actor>(self))
      .then(
          [=](bool ok, const std::string& why, int32_t n_workers) {
            auto& st = self->state;
            st.connecting = false;
            if (!ok) {
              spdlog::error("worker node {}: refused: {}", st.address, why);
              on_lost(self, "refused: " + why, true);
              return;
            }
            st.joined = true;
            st.backoff.reset();
            spdlog::info("worker node {}: joined ({} workers)", st.address, n_workers);
            set_node(self, "connected");
          },
          [=](caf::error& e) { on_lost(self, "join: " + to_string(e)); });
}

void connect(node_link_actor* self) {
  auto& st = self->state;
  if (st.agent || st.connecting) return;
  st.connecting = true;
  set_node(self, "connecting");
  auto& sys = self->system();
  caf::io::middleman_actor mm =
      st.tls ? sys.openssl_manager().actor_handle() : sys.middleman().actor_handle();
  self->request(mm, handshake_timeout, caf::connect_atom::value, st.host, st.port)
      .then(
          [=](const caf::node_id&, caf::strong_actor_ptr& p, const std::set<std::string>&) {
            auto& st = self->state;
            if (!p) {
              on_lost(self, "nothing is published at " + st.address);
              return;
            }
            st.agent = caf::actor_cast<caf::actor>(p);
            join(self);
          },
          [=](caf::error& e) { on_lost(self, "connect: " + to_string(e)); });
}

// The node's worker index -> the front's (allocated on first sight, kept across reconnects).
int32_t global_index(node_link_actor* self, int32_t local, bool allocate) {
  auto& st = self->state;
  auto it = st.index.find(local);
  if (it != st.index.end()) return it->second;
  if (!allocate) return -1;
  const int32_t g = st.core->next_worker_index.fetch_add(1);
  st.index.emplace(local, g);
  const std::string addr = st.address;
  st.core->stats.update_worker(g, [&](worker_gauge& w) { w.node = addr; });
  return g;
}

bool from_agent(node_link_actor* self) {
  auto& st = self->state;
  return st.agent && self->current_sender() == caf::actor_cast<caf::strong_actor_ptr>(st.agent);
}

caf::behavior node_link_fun(node_link_actor* self, service_core_ptr core, std::string host, uint16_t port,
                            bool tls) {
  auto& st = self->state;
  st.core = std::move(core);
  st.host = std::move(host);
  st.port = port;
  st.tls = tls;
  st.address = st.host + ":" + std::to_string(port);
  const auto& c = st.core->cfg;
  restart_policy::options o;
  o.max_restarts = std::numeric_limits<int32_t>::max();
  o.window = std::chrono::minutes(1);
  o.backoff_initial = std::chrono::milliseconds(c.reconnect_initial_ms);
  o.backoff_max = std::chrono::milliseconds(c.reconnect_max_ms);
  st.backoff = restart_policy(o);
  st.rng.seed(std::hash<std::string>{}(st.address));
  set_node(self, "connecting");
  self->set_down_handler([=](caf::down_msg& d) {
    auto& st = self->state;
    if (!st.agent || d.source != st.agent.address()) return;
    on_lost(self, to_string(d.reason));
  });
  self->send(self, relink_atom::value);
  return {
      [=](relink_atom) { connect(self); },
      [=](worker_hello_msg& h) {
        auto& st = self->state;
        if (!from_agent(self) || !st.joined) return;
        const int32_t local = h.worker;
        st.handles[local] = h.handle;
        h.worker = global_index(self, local, true);
        set_node(self, "connected");
        self->send(st.core->batcher, std::move(h));
      },
      [=](worker_report_msg& r) {
        auto& st = self->state;
        if (!from_agent(self)) return;
        auto h = st.handles.find(r.worker);
        if (h == st.handles.end()) return;
        r.worker = global_index(self, r.worker, false);
        // As the worker: the batcher takes reports only from the worker it knows.
        caf::send_as(h->second, st.core->batcher, std::move(r));
      },
      [=](seq_gone_msg& g) {
        auto& st = self->state;
        if (!from_agent(self)) return;
        g.worker = global_index(self, g.worker, false);
        if (g.worker >= 0) self->send(st.core->batcher, std::move(g));
      },
      [=](step_failed_msg& f) {
        auto& st = self->state;
        if (!from_agent(self)) return;
        f.worker = global_index(self, f.worker, false);
        if (f.worker >= 0) self->send(st.core->batcher, std::move(f));
      },
      [=](worker_down_msg& d) {
        auto& st = self->state;
        if (!from_agent(self)) return;
        st.handles.erase(d.worker);
        d.worker = global_index(self, d.worker, false);
        if (d.worker >= 0) {
          st.core->stats.update_worker(d.worker, [](worker_gauge& g) { g.state = worker_gauge::run_state::restarting; });
          self->send(st.core->batcher, std::move(d));
        }
      },
  };
}

}  // namespace

caf::actor spawn_node_link_actor(caf::actor_system& sys, service_core_ptr core, std::string host, uint16_t port,
                                 bool tls) {
  return sys.spawn(node_link_fun, std::move(core), std::move(host), port, tls);
}

}  // namespace infer
