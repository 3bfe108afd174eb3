#include "actors/node-guard.hpp"

#include <array>
#include <atomic>
#include <boost/asio.hpp>
#include <thread>

#include <spdlog/spdlog.h>

namespace infer {

namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

constexpr size_t basp_header_size = 32;  // caf::io::basp::header_size in 0.17

struct shared_state {
  node_guard::options opt;
  std::atomic<int32_t> open{0};
};

// One relayed connection: client <-> middleman. Ends (both sockets closed) on the first error
// from either side or on a header over the payload bound.
class relay : public std::enable_shared_from_this<relay> {
 public:
  relay(tcp::socket client, asio::io_context& ioc, std::shared_ptr<shared_state> st)
      : client_(std::move(client)), backend_(ioc), st_(std::move(st)) {}
  ~relay() { st_->open.fetch_sub(1); }

  void start() {
    backend_.async_connect(tcp::endpoint(asio::ip::address_v4::loopback(), st_->opt.backend_port),
                           [self = shared_from_this()](boost::system::error_code ec) {
                             if (ec) return self->close();
                             self->pump_in();
                             self->pump_out();
                           });
  }

 private:
  void close() {
    boost::system::error_code ignored;
    client_.close(ignored);
    backend_.close(ignored);
  }

  void pump_in() {
    client_.async_read_some(asio::buffer(in_), [self = shared_from_this()](boost::system::error_code ec, size_t n) {
      if (ec || !self->frames_ok(n)) return self->close();
      asio::async_write(self->backend_, asio::buffer(self->in_.data(), n),
                        [self](boost::system::error_code ec, size_t) {
                          if (ec) return self->close();
                          self->pump_in();
                        });
    });
  }

  void pump_out() {
    backend_.async_read_some(asio::buffer(out_), [self = shared_from_this()](boost::system::error_code ec, size_t n) {
      if (ec) return self->close();
      asio::async_write(self->client_, asio::buffer(self->out_.data(), n),
                        [self](boost::system::error_code ec, size_t) {
                          if (ec) return self->close();
                          self->pump_out();
                        });
    });
  }

  // Follows the BASP framing of what the client sent: header, payload, header, ...
  bool frames_ok(size_t n) {
    if (!st_->opt.inspect) return true;
    for (size_t i = 0; i < n;) {
      if (payload_left_ > 0) {
        const size_t take = std::min<uint64_t>(payload_left_, n - i);
        payload_left_ -= take;
        i += take;
        continue;
      }
      const size_t take = std::min(basp_header_size - have_, n - i);
      std::copy(in_.data() + i, in_.data() + i + take, header_.data() + have_);
      have_ += take;
      i += take;
      if (have_ < basp_header_size) continue;
      have_ = 0;
      const uint32_t len = uint32_t(header_[4]) << 24 | uint32_t(header_[5]) << 16 | uint32_t(header_[6]) << 8 |
                           uint32_t(header_[7]);
      if (len > st_->opt.max_payload) {
        boost::system::error_code ec;
        auto ep = client_.remote_endpoint(ec);
        spdlog::warn("worker node: a peer ({}) announced a {}-byte message, over cluster.max_message_bytes ({}): "
                     "connection closed",
                     ec ? std::string("?") : ep.address().to_string(), len, st_->opt.max_payload);
        return false;
      }
      payload_left_ = len;
    }
    return true;
  }

  tcp::socket client_, backend_;
  std::shared_ptr<shared_state> st_;
  std::array<uint8_t, 16384> in_{}, out_{};
  std::array<uint8_t, basp_header_size> header_{};
  size_t have_ = 0;
  uint64_t payload_left_ = 0;
};

class node_guard_impl final : public node_guard {
 public:
  explicit node_guard_impl(const options& o) : st_(std::make_shared<shared_state>()), acc_(ioc_) { st_->opt = o; }
  ~node_guard_impl() override { stop(); }

  status open() {
    boost::system::error_code ec;
    auto ip = asio::ip::make_address(st_->opt.host, ec);
    if (ec) {
      tcp::resolver res(ioc_);
      auto r = res.resolve(st_->opt.host, std::to_string(st_->opt.port), ec);
      if (ec || r.empty())
        return make_status(errc::invalid_argument, "worker node: cannot resolve " + st_->opt.host + ": " + ec.message());
      ip = r.begin()->endpoint().address();
    }
    tcp::endpoint ep(ip, st_->opt.port);
    acc_.open(ep.protocol(), ec);
    if (!ec) acc_.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) acc_.bind(ep, ec);
    if (!ec) acc_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec)
      return make_status(errc::io_error, "worker node: cannot listen on " + st_->opt.host + ":" +
                                             std::to_string(st_->opt.port) + ": " + ec.message());
    port_ = acc_.local_endpoint().port();
    do_accept();
    thread_ = std::thread([this] {
      for (;;) {
        try {
          ioc_.run();
          return;
        } catch (const std::exception& e) {
          spdlog::error("worker node guard: {}", e.what());
        }
      }
    });
    return status::ok();
  }

  uint16_t port() const override { return port_; }

  void stop() override {
    if (stopped_.exchange(true)) return;
    ioc_.stop();
    if (thread_.joinable()) thread_.join();
    boost::system::error_code ignored;
    acc_.close(ignored);
  }

 private:
  void do_accept() {
    acc_.async_accept([this](boost::system::error_code ec, tcp::socket sock) {
      if (ec == asio::error::operation_aborted || !acc_.is_open()) return;
      if (ec) {
        // Out of descriptors and the like: try again shortly rather than spin.
        auto t = std::make_shared<asio::steady_timer>(ioc_, std::chrono::milliseconds(100));
        t->async_wait([this, t](boost::system::error_code) { do_accept(); });
        return;
      }
      if (st_->open.load() >= st_->opt.max_connections) {
        boost::system::error_code ignored;
        auto ep = sock.remote_endpoint(ignored);
        spdlog::warn("worker node: connection from {} refused: cluster.max_connections ({}) reached",
                     ignored ? std::string("?") : ep.address().to_string(), st_->opt.max_connections);
        sock.close(ignored);
      } else {
        st_->open.fetch_add(1);
        std::make_shared<relay>(std::move(sock), ioc_, st_)->start();
      }
      do_accept();
    });
  }

  std::shared_ptr<shared_state> st_;
  asio::io_context ioc_;
  tcp::acceptor acc_;
  std::thread thread_;
  uint16_t port_ = 0;
  std::atomic<bool> stopped_{false};
};

}  // namespace

result<std::unique_ptr<node_guard>> node_guard::start(const options& o) {
  auto g = std::make_unique<node_guard_impl>(o);
  if (auto s = g->open(); !s) return s;
  return std::unique_ptr<node_guard>(std::move(g));
}

}  // namespace infer
