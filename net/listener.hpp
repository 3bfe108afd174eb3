// listener: accepts connections (server.max_connections, max_connections_per_client, a pause
// when descriptors run out) and starts an http_session on a strand of its own for each,
// over TLS when the server has a certificate, handing connections to the io contexts in turn
// (one thread each). Internal to net/.
#pragma once
#include <chrono>
#include <memory>
#include <vector>

#include "net/server-state.hpp"

namespace infer::net::detail {

// The rate limit's key of a connection: its peer's IP address (an IPv4-mapped IPv6
// address as the IPv4 one, so a dual-stack listener counts a client once).
std::string client_key(const tcp::socket& sock);

class listener : public std::enable_shared_from_this<listener> {
 public:
  // Accepts on the first io context; each connection goes to the next of `pool` in turn.
  listener(std::vector<asio::io_context*> pool, ssl::context* tls, server_state& st)
      : pool_(std::move(pool)), tls_(tls), acc_(*pool_.front()), st_(st), pause_(*pool_.front()) {}

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
    asio::io_context& ioc = *pool_[next_++ % pool_.size()];
    acc_.async_accept(asio::make_strand(ioc), beast::bind_front_handler(&listener::on_accept, shared_from_this()));
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

  std::vector<asio::io_context*> pool_;
  size_t next_ = 0;
  ssl::context* tls_;
  tcp::acceptor acc_;
  server_state& st_;
  asio::steady_timer pause_;
  uint64_t accept_failures_ = 0;
  std::chrono::steady_clock::time_point last_accept_log_{};
};

}  // namespace infer::net::detail
