// metrics-text: the body of GET /metrics: the service's figures (metrics::render_prometheus),
// the server's own (connections, slow clients, rate-limited clients, readiness) and the
// standard process_* families. Internal to net/.
#pragma once
#include <string>

#include "net/server-state.hpp"

namespace infer::net::detail {

// The standard process_* families (Prometheus client libraries' names), from /proc.
std::string process_metrics();

// `svc` may be null (no model yet): then only the server's and the process's figures.
std::string metrics_text(const server_state& st, service* svc);

}  // namespace infer::net::detail
