#include "net/listener.hpp"

#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include "net/http-routes.hpp"
#include "net/http-session.hpp"
#include "net/openai-handlers.hpp"

namespace infer::net::detail {

std::string client_key(const tcp::socket& sock) {
  beast::error_code ec;
  auto ep = sock.remote_endpoint(ec);
  if (ec) return "?";
  auto a = ep.address();
  if (a.is_v6() && a.to_v6().is_v4_mapped()) return asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6()).to_string();
  return a.to_string();
}

void listener::on_accept(beast::error_code ec, tcp::socket sock) {
  if (ec) {
    if (ec == asio::error::operation_aborted || !acc_.is_open()) return;
    ++accept_failures_;
    const auto now = std::chrono::steady_clock::now();
    if (now - last_accept_log_ >= std::chrono::seconds(1)) {
      rlimit rl{};
      ::getrlimit(RLIMIT_NOFILE, &rl);
      spdlog::warn("accept failed: {} ({} times since the last report; {} connections open, server.max_connections "
                   "{}, open-file limit {}){}",
                   ec.message(), accept_failures_, st_.connections.load(std::memory_order_relaxed),
                   st_.cfg.max_connections, uint64_t(rl.rlim_cur),
                   out_of_resources(ec) ? ": pausing accepts until descriptors free up" : "");
      last_accept_log_ = now;
      accept_failures_ = 0;
    }
    if (!out_of_resources(ec)) return do_accept();
    pause_.expires_after(accept_pause);
    pause_.async_wait([self = shared_from_this()](beast::error_code e) {
      if (!e && self->acc_.is_open()) self->do_accept();
    });
    return;
  }
  if (st_.connections.load(std::memory_order_relaxed) >= st_.cfg.max_connections) {
    st_.rejected_connections.fetch_add(1, std::memory_order_relaxed);
    spdlog::warn("connection refused: server.max_connections ({}) reached", st_.cfg.max_connections);
    beast::error_code ignored;
    sock.close(ignored);
    return do_accept();
  }
  std::string client = client_key(sock);
  if (const int32_t cap = st_.cfg.max_connections_per_client; cap > 0) {
    std::lock_guard<std::mutex> lk(st_.per_client_mu);
    int32_t& open = st_.per_client[client];
    if (open >= cap) {
      if (open == 0) st_.per_client.erase(client);
      st_.rejected_connections.fetch_add(1, std::memory_order_relaxed);
      spdlog::info("connection from {} refused: server.max_connections_per_client ({}) reached", client, cap);
      beast::error_code ignored;
      sock.close(ignored);
      return do_accept();
    }
    ++open;
  }
  st_.connections.fetch_add(1, std::memory_order_relaxed);
  connection_slot slot(&st_, st_.cfg.max_connections_per_client > 0 ? client : std::string());
  uint64_t conn = st_.next_conn.fetch_add(1, std::memory_order_relaxed);
  beast::error_code ignored;
  sock.set_option(tcp::no_delay(true), ignored);  // one small frame per token
  if (tls_)
    std::make_shared<http_session<tls_stream>>(tls_stream(std::move(sock), *tls_), st_, std::move(slot), conn,
                                               std::move(client))
        ->run();
  else
    std::make_shared<http_session<plain_stream>>(plain_stream(std::move(sock)), st_, std::move(slot), conn,
                                                 std::move(client))
        ->run();
  do_accept();
}

}  // namespace infer::net::detail
