// request-log: the one log line of each request's outcome, in key=value form (internal to net/).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

#include "actors/service.hpp"

namespace infer::net::detail {

// Log values in key="..." form stay one line and unambiguous.
std::string q(std::string_view s);

// `request_id`: the HTTP request's X-Request-Id (WebSocket requests have their own ids).
void log_outcome(uint64_t conn, std::string_view api, std::string_view id, uint64_t rid, const event& e,
                 std::string_view request_id = {});

}  // namespace infer::net::detail
