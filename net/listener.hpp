// listener: accepts connections (server.max_connections, max_connections_per_client, a pause
// when descriptors run out) and starts an http_session on a strand of its own for each,
// over TLS when the server has a certificate. Internal to net/.
#pragma once
#include <chrono>
#include <memory>

#include "net/server-state.hpp"

namespace infer::net::detail {

// The rate limit's key of a connection: its peer's IP address (an IPv4-mapped IPv6
// address as the IPv4 one, so a dual-stack listener counts a client once).
std::string client_key(const tcp::socket& sock);

class listener : public std::enable_shared_from_this<listener> {
 public:
  listener(asio::io_context& ioc, ssl::context* tls, server_state& st)
      : ioc_(ioc), tls_(tls), acc_(ioc), st_(st), pause_(ioc) {}

  status open(const tcp::endpoint& ep) {
    beast::error_code ec;
    acc_.open(ep.protocol(), ec);
    if (!ec) acc_.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) acc_.bind(ep, ec);
    if (!ec) acc_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec)
      return make_status(errc::io_error,
                         fmt::format("server.listen: cannot listen on {}:{}: {}", ep.address().to_string(), ep.port(),
                                     ec.message()));
    return status::ok();
  }
  uint16_t port() const { return acc_.local_endpoint().port(); }
  void start() { do_accept(); }
  void close() {
    beast::error_code ec;
    acc_.close(ec);
    pause_.cancel();
  }

 private:
  void do_accept() {
    acc_.async_accept(asio::make_strand(ioc_), beast::bind_front_handler(&listener::on_accept, shared_from_this()));
  }

  // Out of descriptors (or kernel memory): accepting again at once fails again at once, a
  // busy loop. Pause, and log once a second with the count, until descriptors free up.
  static bool out_of_resources(const beast::error_code& ec) {
    if (ec.category() != boost::system::system_category()) return false;
    const int e = ec.value();
    return e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM;
  }
  static constexpr auto accept_pause = std::chrono::milliseconds(100);

  void on_accept(beast::error_code ec, tcp::socket sock);

  asio::io_context& ioc_;
  ssl::context* tls_;
  tcp::acceptor acc_;
  server_state& st_;
  asio::steady_timer pause_;
  uint64_t accept_failures_ = 0;
  std::chrono::steady_clock::time_point last_accept_log_{};
};

}  // namespace infer::net::detail
