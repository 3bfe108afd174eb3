#include "net/sse-writer.hpp"

#include <fmt/format.h>

namespace infer::net {

namespace {
std::string frame(std::string data, bool chunked) {
  if (!chunked) return data;
  std::string chunk = fmt::format("{:x}\r\n", data.size());
  chunk += data;
  chunk += "\r\n";
  return chunk;
}
}  // namespace

std::string sse_writer::head(std::string_view request_id, bool keep_alive) const {
  std::string h = "HTTP/1.1 200 OK\r\nServer: inferd\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n";
  if (!request_id.empty()) {
    h += "X-Request-Id: ";
    h += request_id;
    h += "\r\n";
  }
  h += chunked ? "Transfer-Encoding: chunked\r\n" : "";
  h += keep_alive && chunked ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n";
  return h;
}

// One string per event, chunk framing included: one allocation on the streaming path.
std::string sse_writer::event(std::string_view payload) const {
  const size_t n = payload.size() + 8;  // "data: " payload "\n\n"
  std::string out;
  if (chunked) fmt::format_to(std::back_inserter(out), "{:x}\r\n", n);
  out.reserve(out.size() + n + 2);
  out += "data: ";
  out += payload;
  out += "\n\n";
  if (chunked) out += "\r\n";
  return out;
}

std::string sse_writer::comment() const { return frame(":\n\n", chunked); }

std::string sse_writer::done() const {
  std::string out = event("[DONE]");
  if (chunked) out += "0\r\n\r\n";
  return out;
}

}  // namespace infer::net
