// status-json: the body of GET /v1/status, rendered from service::status():
// {"workers":[{"id":0,"backend":"cpu","device":-1,"state":"running|starting|restarting|failed",
//   "restarts":0,"breaker":"closed|open|half_open","running":N,"kv_free":N,"kv_cached":N,
//   "node":"HOST:PORT of its worker node, empty if local"}],
//  "nodes":[{"address":"HOST:PORT","state":"connecting|connected|down|refused","workers":N,"joins":N,
//   "losses":N,"last_error":"..."}],
//  "prefix_cache":{"enabled":B,"queries":N,"hits":N,"hit_rate":F,"blocks":N,"routed":N},
//  "queue_depth":N}
#pragma once
#include <string>

#include "actors/metrics.hpp"

namespace infer::net {

std::string status_json(const service_status& s);

}  // namespace infer::net
