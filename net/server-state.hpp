// server-state: what the listener and every session share (server_state, one per server,
// outliving the io context), the connection slot that counts a connection against
// server.max_connections, and the small helpers every session uses (request ids, the
// rejection counter, the Beast type names). Internal to net/ (namespace detail).
#pragma once
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "actors/service.hpp"
#include "base/prompt-limit.hpp"
#include "config/service-config.hpp"
#include "net/chat.hpp"
#include "net/protocol.hpp"
#include "net/rate-limiter.hpp"
#include "net/server.hpp"

namespace infer::net::detail {

namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
namespace asio = boost::asio;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;

using plain_stream = beast::tcp_stream;
using tls_stream = beast::ssl_stream<beast::tcp_stream>;
template <class S>
constexpr bool is_tls = std::is_same_v<S, tls_stream>;

inline constexpr const char* server_name = "inferd";

// Shared by the listener and every session; outlives the io context (see impl).
struct server_state {
  service_config cfg;
  std::string model_name;                // reported in responses and /v1/models
  std::vector<std::string> model_names;  // every name a request may give (model_name first)
  std::atomic<service*> svc{nullptr};
  protocol_limits limits;  // written once by attach() before svc is published
  std::atomic<int64_t> connections{0};
  std::atomic<uint64_t> rejected_connections{0};
  std::atomic<uint64_t> next_conn{1};
  std::atomic<uint64_t> slow_clients{0};  // connections closed for not reading
  std::optional<rate_limiter> limiter;    // set by server::start
  std::atomic<const server::clock_fn*> clock{nullptr};  // tests drive the rate limit's clock
  asio::thread_pool* blocking = nullptr;  // work too long for an io thread (tokenizing /tokenize)

  // Open connections by client address (server.max_connections_per_client); only kept when
  // that cap is on. Touched at accept and when a connection's last session ends.
  std::mutex per_client_mu;
  std::unordered_map<std::string, int32_t> per_client;
  // Chat templates (written once by attach() before svc is published; null: the model has
  // none) rendered (and tokenized) on `blocking`: never an io thread.
  std::shared_ptr<const chat_formatter> chat;

  std::chrono::milliseconds idle() const { return std::chrono::milliseconds(cfg.idle_timeout_ms); }
  std::chrono::milliseconds header_timeout() const { return std::chrono::milliseconds(cfg.header_timeout_ms); }
  // What an HTTP connection may hold unparsed: a request head (or the trailer section of a
  // chunked body) of max_header_bytes plus one read's worth. Without a bound the parser would
  // buffer a trailer section of any size while looking for its end.
  size_t max_buffered_bytes() const { return size_t(std::max<int64_t>(cfg.max_header_bytes, 1)) + 65536; }
  // Pending outgoing bytes per connection beyond which the client counts as too slow.
  size_t max_pending_bytes() const { return size_t(std::max<int64_t>(cfg.max_pending_bytes, 1)); }
  service* current() const { return svc.load(std::memory_order_acquire); }
  // A request's "model": empty (the default) or one of the served names.
  bool serves(std::string_view model) const {
    return model.empty() || std::find(model_names.begin(), model_names.end(), model) != model_names.end();
  }

  // One generation request of `client`: 0 if the rate limit lets it through, else the
  // milliseconds until it would.
  int64_t rate_limit(const std::string& client) {
    if (!limiter->enabled()) return 0;
    const server::clock_fn* c = clock.load(std::memory_order_acquire);
    return limiter->take(client, c ? (*c)() : rate_limiter::clock::now());
  }
  std::string rate_limit_message(int64_t wait_ms) const {
    return fmt::format("rate limit of this client: {:g} requests/s, burst {}; retry in {} ms", cfg.rate_limit_rps,
                       cfg.rate_limit_burst, wait_ms);
  }
};

// One slot of server.max_connections, released when the connection's last session ends.
// Also the connection's share of server.max_connections_per_client when `client` is set.
class connection_slot {
 public:
  explicit connection_slot(server_state* st, std::string client = {}) : st_(st), client_(std::move(client)) {}
  connection_slot(connection_slot&& o) noexcept : st_(std::exchange(o.st_, nullptr)), client_(std::move(o.client_)) {}
  connection_slot& operator=(connection_slot&&) = delete;
  ~connection_slot();

 private:
  server_state* st_;
  std::string client_;
};

// How long a connection closing for a slow client may take to get its close frame out
// before the socket is closed under it (the client may never read again).
inline constexpr auto slow_close_grace = std::chrono::seconds(10);

// Ids a client cannot guess from its own (completion ids, generated X-Request-Id): 128 random
// bits as hex, from a per-thread generator seeded by the OS.
std::string random_id();
// A client's X-Request-Id kept if it is printable ASCII of at most 128 bytes (it goes into
// headers and logs); otherwise, or when absent, a fresh one.
std::string request_id_of(std::string_view given);

// A rejection decided by net itself (never submitted) still counts in
// infer_requests_total{outcome}, like those the service decides.
void count_rejection(service* svc, error_code c);

inline std::string_view sv(beast::string_view s) { return {s.data(), s.size()}; }

inline std::string_view path_of(beast::string_view target) {
  std::string_view t = sv(target);
  auto q = t.find('?');
  return q == std::string_view::npos ? t : t.substr(0, q);
}

// The callback handed to service::submit: runs on a CAF thread, only posts.
template <class Session, class Tag>
event_callback post_to(std::shared_ptr<Session> s, std::shared_ptr<Tag> tag) {
  return [s = std::move(s), tag = std::move(tag)](const event& e) {
    asio::post(s->executor(), [s, tag, e]() { s->on_event(tag, e); });
  };
}

}  // namespace infer::net::detail
