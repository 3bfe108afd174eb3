#include "net/status-json.hpp"

#include <fmt/format.h>

#include "net/protocol.hpp"
#include "supervision/circuit-breaker.hpp"

namespace infer::net {

std::string status_json(const service_status& st) {
  std::string s = "{\"workers\":[";
  for (size_t i = 0; i < st.workers.size(); ++i) {
    const auto& w = st.workers[i];
    s += fmt::format("{}{{\"id\":{},\"backend\":", i ? "," : "", w.id);
    append_json_string(s, w.backend);
    s += fmt::format(",\"device\":{},\"state\":\"{}\",\"restarts\":{},\"breaker\":\"{}\",\"running\":{},\"kv_free\":{},"
                     "\"kv_cached\":{},\"node\":",
                     w.device, to_string(w.state), w.restarts, to_string(circuit_breaker::state(w.breaker)), w.running,
                     w.kv_free, w.kv_cached);
    append_json_string(s, w.node);
    s += "}";
  }
  s += "],\"nodes\":[";
  for (size_t i = 0; i < st.nodes.size(); ++i) {
    const auto& n = st.nodes[i];
    s += i ? ",{\"address\":" : "{\"address\":";
    append_json_string(s, n.address);
    s += ",\"state\":";
    append_json_string(s, n.state);
    s += fmt::format(",\"workers\":{},\"joins\":{},\"losses\":{},\"last_error\":", n.workers, n.joins, n.losses);
    append_json_string(s, n.last_error);
    s += "}";
  }
  s += fmt::format(
      "],\"prefix_cache\":{{\"enabled\":{},\"queries\":{},\"hits\":{},\"hit_rate\":{:.4f},\"blocks\":{},"
      "\"routed\":{}}}",
      st.prefix_caching ? "true" : "false", st.prefix_cache_queries, st.prefix_cache_hits, st.prefix_cache_hit_rate,
      st.prefix_cache_blocks, st.prefix_routed);
  s += fmt::format(",\"queue_depth\":{}}}", st.queue_depth);
  return s;
}

}  // namespace infer::net
