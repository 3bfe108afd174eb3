// server: the Boost.Beast front end of the service. One port speaks HTTP/1.1
// (health, readiness, metrics, OpenAI completions, tokenize/detokenize, the page of
// web/) and upgrades /v1/stream to the WebSocket protocol v1 (docs/protocol.md).
//
// Threads: a small pool of io threads runs every connection, each connection on its
// own strand. The service's event callbacks run on CAF threads; they only post the
// event to the connection's strand, so neither side ever blocks on the other.
//
// Lifetime: attach() the service once it exists (before that /readyz answers 503 and
// requests get `unavailable`); shut the service down (or never attach one) before the
// server is destroyed, so that no callback posts into a destroyed io context.
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "config/service-config.hpp"
#include "base/result.hpp"

namespace infer {
class service;
}

namespace infer::net {

class server {
 public:
  // Binds cfg.server.listen (port 0: any free port), loads TLS files when both are set,
  // and starts cfg.io_threads io threads. Fails with a message naming the problem.
  static result<std::unique_ptr<server>> start(const service_config& cfg);
  ~server();

  // From now on requests go to `svc`; /readyz follows svc.ready().
  void attach(service& svc);
  // The clock of the per-client rate limit (server.rate_limit_*), steady_clock::now by
  // default. For tests, which drive it instead of waiting.
  using clock_fn = std::function<std::chrono::steady_clock::time_point()>;
  void set_rate_limit_clock(clock_fn now);
  uint16_t port() const;
  const std::string& host() const;
  bool tls() const;
  // Stops accepting, closes every connection (cancelling their requests) and joins the
  // io threads. Idempotent; called by the destructor.
  void stop();

  struct impl;

 private:
  explicit server(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

}  // namespace infer::net
