#include "net/request-log.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "net/protocol.hpp"

namespace infer::net::detail {

std::string q(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (c == '"' || c == '\\') out.push_back('\\'), out.push_back(c);
    else if (c == '\n') out += "\\n";
    else if (uint8_t(c) < 0x20) out.push_back(' ');
    else out.push_back(c);
  }
  return out;
}

void log_outcome(uint64_t conn, std::string_view api, std::string_view id, uint64_t rid, const event& e,
                 std::string_view request_id) {
  std::string xrid = request_id.empty() ? std::string() : fmt::format(" request_id={}", request_id);
  if (e.type == event::kind::done) {
    spdlog::info(
        "request id={}{} conn={} rid={} api={} outcome={} prompt_tokens={} completion_tokens={} queue_ms={:.2f} "
        "ttft_ms={:.2f} total_ms={:.2f}",
        q(id), xrid, conn, rid, api, outcome_of(e), e.prompt_tokens, e.completion_tokens, e.queue_ms,
        e.first_token_ms, e.total_ms);
  } else {
    spdlog::info("request id={}{} conn={} rid={} api={} outcome={} message=\"{}\"", q(id), xrid, conn, rid, api,
                 outcome_of(e), q(e.message));
  }
}

}  // namespace infer::net::detail
