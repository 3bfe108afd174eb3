// worker_node: this process as a worker node (`inferd --role worker`). It loads the model,
// runs the supervision tree with its workers (as a front node would), and publishes its
// node agent through CAF's middleman (or OpenSSL's) at cfg.listen, where front nodes
// (`--worker-node HOST:PORT`) join it. No client-facing server runs here; admissions,
// cancels and tokens flow directly between the front's actors and these workers.
#pragma once
#include <cstdint>
#include <memory>

#include "base/result.hpp"

namespace caf { class actor_system; }

namespace infer {

struct service_config;
struct service_hooks;

class worker_node {
 public:
  virtual ~worker_node() = default;
  // `sys` must have loaded caf::io::middleman (and caf::openssl::manager with cluster.tls_*).
  static result<std::unique_ptr<worker_node>> start(caf::actor_system& sys, const service_config& cfg);
  static result<std::unique_ptr<worker_node>> start(caf::actor_system& sys, const service_config& cfg,
                                                    const service_hooks& hooks);
  virtual uint16_t port() const = 0;  // where the agent is published (useful with port 0)
  // Stops publishing, stops the workers (a front still joined sees them go and resumes
  // their sequences elsewhere) and waits for the engines. Idempotent; run by the destructor.
  virtual void shutdown() = 0;
};

}  // namespace infer
