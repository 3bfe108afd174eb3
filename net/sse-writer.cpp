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

std::string sse_writer::event(std::string_view payload) const {
  std::string data = "data: ";
  data += payload;
  data += "\n\n";
  return frame(std::move(data), chunked);
}

std::string sse_writer::comment() const { return frame(":\n\n", chunked); }

std::string sse_writer::done() const {
  std::string out = event("[DONE]");
  if (chunked) out += "0\r\n\r\n";
  return out;
}

}  // namespace infer::net
