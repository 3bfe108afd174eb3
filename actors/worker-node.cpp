#include "actors/worker-node.hpp"

#include <caf/io/all.hpp>
#include <caf/openssl/all.hpp>

#include "actors/node-agent-actor.hpp"
#include "actors/node-guard.hpp"
#include "actors/service-core.hpp"
#include "actors/supervisor-actor.hpp"
#include "config/service-config.hpp"

namespace infer {

namespace {

constexpr auto engine_wait = std::chrono::seconds(30);

class worker_node_impl final : public worker_node {
 public:
  worker_node_impl(caf::actor_system& sys, service_core_ptr core, uint16_t port, bool tls,
                   std::unique_ptr<node_guard> guard)
      : sys_(sys), core_(std::move(core)), port_(port), tls_(tls), guard_(std::move(guard)) {}
  ~worker_node_impl() override { shutdown(); }

  uint16_t port() const override { return guard_->port(); }

  void shutdown() override {
    if (shut_) return;
    shut_ = true;
    core_->closed.store(true);
    guard_->stop();
    if (tls_)
      caf::anon_send(sys_.openssl_manager().actor_handle(), caf::close_atom::value, port_);
    else
      caf::anon_send(sys_.middleman().actor_handle(), caf::close_atom::value, port_);
    core_->faults->release();
    caf::anon_send_exit(core_->supervisor, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(core_->batcher, caf::exit_reason::user_shutdown);  // the agent
    std::unique_lock<std::mutex> lk(core_->mu);
    // Detached engines must be gone before the actor_system is destroyed (CAF 0.17).
    core_->cv.wait_for(lk, engine_wait, [&] { return core_->live_engines == 0; });
  }

 private:
  caf::actor_system& sys_;
  service_core_ptr core_;
  uint16_t port_;  // the middleman's, on loopback (the guard relays to it)
  bool tls_;
  std::unique_ptr<node_guard> guard_;
  bool shut_ = false;
};

}  // namespace

result<std::unique_ptr<worker_node>> worker_node::start(caf::actor_system& sys, const service_config& cfg,
                                                        const service_hooks& hooks) {
  auto made = make_core(cfg, hooks);
  if (!made) return made.error();
  service_core_ptr core = std::move(made.value());
  auto addr = parse_listen_address(cfg.listen);
  if (!addr) return make_status(errc::invalid_argument, "server.listen: " + addr.error().message);
  const bool tls = !cfg.cluster_tls_cert.empty();
  if (!sys.has_middleman())
    return make_status(errc::invalid_argument, "worker node: the actor system has no middleman");
  if (tls && !sys.has_openssl_manager())
    return make_status(errc::invalid_argument, "worker node: cluster.tls_* set but no OpenSSL manager is loaded");

  // The agent stands where the batcher stands for the workers: their hellos and reports
  // go to it, and it relays them to the front node that joined.
  core->batcher = spawn_node_agent_actor(sys, core);
  // The middleman listens on loopback only; peers reach it through the guard (node-guard.hpp).
  auto port = tls ? caf::openssl::publish(core->batcher, 0, "127.0.0.1", true)
                  : caf::io::publish(core->batcher, 0, "127.0.0.1", true);
  if (!port) {
    caf::anon_send_exit(core->batcher, caf::exit_reason::user_shutdown);
    return make_status(errc::io_error, "worker node: cannot publish on loopback: " + sys.render(port.error()));
  }
  node_guard::options go;
  go.host = addr.value().host;
  go.port = addr.value().port;
  go.backend_port = port.value();
  go.max_connections = cfg.cluster_max_connections;
  go.max_payload = uint32_t(cfg.cluster_max_message_bytes);
  go.inspect = !tls;
  auto guard = node_guard::start(go);
  if (!guard) {
    if (tls) caf::anon_send(sys.openssl_manager().actor_handle(), caf::close_atom::value, port.value());
    else caf::anon_send(sys.middleman().actor_handle(), caf::close_atom::value, port.value());
    caf::anon_send_exit(core->batcher, caf::exit_reason::user_shutdown);
    return guard.error();
  }
  core->supervisor = spawn_supervisor_actor(sys, core);
  return std::unique_ptr<worker_node>(
      new worker_node_impl(sys, std::move(core), port.value(), tls, std::move(guard.value())));
}

result<std::unique_ptr<worker_node>> worker_node::start(caf::actor_system& sys, const service_config& cfg) {
  service_config run_cfg = cfg;
  auto hooks = model_hooks(run_cfg);
  if (!hooks) return hooks.error();
  return start(sys, run_cfg, hooks.value());
}

}  // namespace infer
