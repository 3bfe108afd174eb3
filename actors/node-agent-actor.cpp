#include "actors/node-agent-actor.hpp"

#include <map>

#include <spdlog/spdlog.h>

#include "actors/messages.hpp"

namespace infer {

namespace {

struct node_agent_state {
  static inline const char* name = "infer.node_agent";
  service_core_ptr core;
  caf::actor front;  // the node link of the front node that joined last; null: none
  std::map<int32_t, caf::actor> workers;  // local index -> the live worker (from its hello)
  uint64_t joins = 0;
};

using node_agent_actor = caf::stateful_actor<node_agent_state>;

// Every worker drops its sequences and says hello again (to us): either for the new front,
// or because the old one is gone and its sequences must not keep the KV cache busy.
void reset_workers(node_agent_actor* self) {
  for (auto& [index, w] : self->state.workers) self->send(w, reset_atom::value);
}

template <class Msg>
void relay(node_agent_actor* self, Msg&& m) {
  if (self->state.front) self->send(self->state.front, std::forward<Msg>(m));
}

caf::behavior node_agent_fun(node_agent_actor* self, service_core_ptr core) {
  self->state.core = std::move(core);
  self->set_down_handler([=](caf::down_msg& d) {
    auto& st = self->state;
    if (!st.front || d.source != st.front.address()) return;
    spdlog::warn("worker node: lost the front node ({}); cancelling its sequences", to_string(d.reason));
    st.front = nullptr;
    reset_workers(self);
  });
  return {
      [=](join_atom, uint32_t version, const std::string& model_id,
          const caf::actor& link) -> std::tuple<bool, std::string, int32_t> {
        auto& st = self->state;
        const int32_t n = st.core->plan.n_workers();
        if (version != wire_protocol_version) {
          std::string why = "protocol version mismatch: the front node speaks version " + std::to_string(version) +
                            ", this worker node speaks version " + std::to_string(wire_protocol_version);
          spdlog::error("worker node: refused a front node: {}", why);
          return {false, why, n};
        }
        if (model_id != st.core->model_id) {
          std::string why = "model mismatch: the front node serves \"" + model_id + "\", this worker node \"" +
                            st.core->model_id + "\"";
          spdlog::error("worker node: refused a front node: {}", why);
          return {false, why, n};
        }
        if (!link) return {false, "join without a node link handle", n};
        // The same front comes back through a new connection with a new proxy: same node, same id.
        const bool same = st.front && st.front.node() == link.node() && st.front.id() == link.id();
        if (st.front && !same) {
          // Two fronts would both route to these workers, each blind to the other's load.
          std::string why = "this worker node already serves another front node (one at a time)";
          spdlog::warn("worker node: refused a second front node: {}", why);
          return {false, why, n};
        }
        if (same) {
          // The same front again: it lost us and resumed our sequences elsewhere.
          spdlog::warn("worker node: the front node rejoined; dropping its earlier sequences");
          self->demonitor(st.front);
        }
        self->monitor(link);
        st.front = link;
        ++st.joins;
        spdlog::info("worker node: front node joined (join #{}), {} workers", st.joins, n);
        // The workers answer with a hello, which goes to the new front.
        reset_workers(self);
        return {true, std::string(), n};
      },
      [=](worker_hello_msg& h) {
        auto& st = self->state;
        st.workers[h.worker] = h.handle;
        relay(self, std::move(h));
      },
      [=](worker_report_msg& r) { relay(self, std::move(r)); },
      [=](seq_gone_msg& g) { relay(self, std::move(g)); },
      [=](step_failed_msg& f) { relay(self, std::move(f)); },
      [=](worker_down_msg& d) {
        self->state.workers.erase(d.worker);
        relay(self, std::move(d));
      },
  };
}

}  // namespace

caf::actor spawn_node_agent_actor(caf::actor_system& sys, service_core_ptr core) {
  return sys.spawn(node_agent_fun, std::move(core));
}

}  // namespace infer
