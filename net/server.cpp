// server: the io context, its threads, TLS, and the listener (net/listener.hpp).
//
// Structure follows Boost.Beast's advanced server examples, one file each: listener ->
// http_session (http-session.hpp; routes in http-routes.hpp, completions in
// openai-handlers.hpp) -> ws_session on upgrade (ws-session.hpp), with what they share in
// server-state.hpp; do_X / on_X pairs, every handler opens with its error path, each
// connection on its own strand. Both session kinds are templates over the byte stream
// (plain TCP or TLS), instantiated once, in listener.cpp.
//
// Bridge to the service: submit() gets a callback that runs on a CAF thread and only
// posts the event to the connection's strand. The callback holds the session strongly,
// so a session lives until each of its requests has had its one terminal event (the
// service guarantees it), and the outcome of every request is logged exactly once.
#include "net/server.hpp"

#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/thread_pool.hpp>
#include <thread>

#include "net/listener.hpp"
#include "net/server-state.hpp"
#include "tokenizer/tokenizer.hpp"

namespace infer::net {

using namespace detail;

struct server::impl {
  server_state st;  // declared first: destroyed after the io context and its sessions
  std::optional<ssl::context> tls;
  // One io context per io thread, each connection on one of them: its handlers and their
  // completions stay on one thread (no hand-offs between threads of a shared context, no
  // contention on its queue); the listener and its timers live on the first.
  std::vector<std::unique_ptr<asio::io_context>> iocs;
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::shared_ptr<listener> lst;
  std::vector<std::thread> threads;
  std::string host;
  uint16_t port = 0;
  bool stopped = false;
  std::vector<std::unique_ptr<server::clock_fn>> clocks;
  asio::thread_pool blocking{2};  // tokenizing long prompts, rendering chat templates

  explicit impl(int threads) {
    for (int i = 0; i < std::max(1, threads); ++i) iocs.push_back(std::make_unique<asio::io_context>(1));
    st.blocking = &blocking;
  }
};

result<std::unique_ptr<server>> server::start(const service_config& cfg) {
  auto addr = infer::parse_listen_address(cfg.listen);  // config/service-config.hpp: the one grammar
  if (!addr) return make_status(errc::invalid_argument, "server.listen: " + addr.error().message);
  auto p = std::make_unique<impl>(cfg.io_threads);
  p->st.cfg = cfg;
  p->st.limiter.emplace(cfg.rate_limit_rps, double(cfg.rate_limit_burst), size_t(std::max(1, cfg.rate_limit_clients)));
  // The served name: what the operator passed, as vLLM does (the path as given), unless
  // model.served_model_name says otherwise.
  p->st.model_names = served_model_names(cfg);
  p->st.model_name = p->st.model_names.front();
  p->host = addr->host;

  beast::error_code ec;
  auto ip = asio::ip::make_address(addr->host, ec);
  if (ec) {
    // A name such as localhost: resolve it, and listen on its first address only.
    tcp::resolver res(*p->iocs.front());
    auto r = res.resolve(addr->host, std::to_string(addr->port), ec);
    if (ec || r.empty())
      return make_status(errc::invalid_argument,
                         fmt::format("server.listen: cannot resolve \"{}\": {}", addr->host, ec.message()));
    ip = r.begin()->endpoint().address();
  }

  if (!cfg.tls_cert.empty() || !cfg.tls_key.empty()) {
    if (cfg.tls_cert.empty() || cfg.tls_key.empty())
      return make_status(errc::invalid_argument, "server.tls_cert and server.tls_key: set both or neither");
    p->tls.emplace(ssl::context::tls_server);
    p->tls->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                        ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
    p->tls->use_certificate_chain_file(cfg.tls_cert, ec);
    if (ec) return make_status(errc::io_error, fmt::format("server.tls_cert: {}: {}", cfg.tls_cert, ec.message()));
    p->tls->use_private_key_file(cfg.tls_key, ssl::context::pem, ec);
    if (ec) return make_status(errc::io_error, fmt::format("server.tls_key: {}: {}", cfg.tls_key, ec.message()));
  }

  std::vector<asio::io_context*> pool;
  for (auto& c : p->iocs) pool.push_back(c.get());
  p->lst = std::make_shared<listener>(std::move(pool), p->tls ? &*p->tls : nullptr, p->st);
  if (auto s = p->lst->open(tcp::endpoint(ip, addr->port)); !s) return s;
  p->port = p->lst->port();
  p->lst->start();
  for (auto& c : p->iocs) {
    p->work.push_back(asio::make_work_guard(*c));
    p->threads.emplace_back([io = c.get()] {
      // The backstop of "no exception escapes a network handler": the connection whose
      // handler threw loses its handler (and so ends); the io thread and the server go on.
      for (;;) {
        try {
          io->run();
          return;
        } catch (const std::exception& e) {
          spdlog::error("exception escaped a network handler (its connection is dropped): {}", e.what());
        } catch (...) {
          spdlog::error("unknown exception escaped a network handler (its connection is dropped)");
        }
      }
    });
  }
  {
    // Each connection is a descriptor: past RLIMIT_NOFILE accept fails long before max_connections.
    rlimit rl{};
    constexpr uint64_t reserve = 64;  // listener, log, model files, CAF, eventfds
    if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        uint64_t(rl.rlim_cur) < uint64_t(cfg.max_connections) + reserve)
      spdlog::warn("server.max_connections is {} but the open-file limit (RLIMIT_NOFILE, ulimit -n) is {}: "
                   "connections beyond about {} fail to be accepted; raise the limit or lower max_connections",
                   cfg.max_connections, uint64_t(rl.rlim_cur),
                   uint64_t(rl.rlim_cur) > reserve ? uint64_t(rl.rlim_cur) - reserve : 0);
  }
  spdlog::info("listening on {}://{}:{} ({} io threads)", p->tls ? "https" : "http",
               ip.is_v6() ? "[" + ip.to_string() + "]" : ip.to_string(), p->port, std::max(1, cfg.io_threads));
  return std::unique_ptr<server>(new server(std::move(p)));
}

server::server(std::unique_ptr<impl> p) : impl_(std::move(p)) {}

server::~server() { stop(); }

void server::attach(service& svc) {
  protocol_limits lim;
  lim.n_ctx = svc.n_ctx();
  lim.n_vocab = svc.tok().n_vocab();
  lim.max_tokens_default = impl_->st.cfg.max_tokens_default;
  lim.max_tokens_limit = impl_->st.cfg.max_tokens_limit;
  // No lim.encode: tokenizing a long prompt here would stall an io thread (and with it every
  // connection on it); the service tokenizes on its own threads. A prompt too long in bytes
  // to fit the context in any tokenization is refused here without tokenizing.
  const tokenizer& tok = svc.tok();
  size_t longest = 1;
  for (int32_t id = 0; id < tok.n_vocab(); ++id) longest = std::max(longest, tok.token_bytes(id).size());
  lim.max_token_bytes = longest;
  const auto& gen = tok.info().generation;
  lim.default_temperature = gen.temperature;
  lim.default_top_p = gen.top_p;
  lim.default_top_k = gen.top_k;
  impl_->st.limits = std::move(lim);
  // The service refused to start with a template that does not parse, so this succeeds.
  auto chat = chat_formatter::from_tokenizer(svc.tok());
  if (!chat) spdlog::error("chat templates disabled: {}", chat.error().message);
  impl_->st.chat = chat ? chat.value() : nullptr;
  spdlog::info("chat template: {}", impl_->st.chat ? "yes (/v1/chat/completions)"
                                                    : "none (/v1/chat/completions answers 400; --chat-template FILE)");
  impl_->st.svc.store(&svc, std::memory_order_release);
}

void server::set_rate_limit_clock(clock_fn now) {
  impl_->clocks.push_back(std::make_unique<clock_fn>(std::move(now)));  // earlier ones may still be read
  impl_->st.clock.store(impl_->clocks.back().get(), std::memory_order_release);
}

uint16_t server::port() const { return impl_->port; }
const std::string& server::host() const { return impl_->host; }
bool server::tls() const { return impl_->tls.has_value(); }

void server::stop() {
  if (impl_->stopped) return;
  impl_->stopped = true;
  impl_->work.clear();
  for (auto& c : impl_->iocs) c->stop();
  impl_->blocking.join();  // what it finishes posts into the stopped context: dropped with it
  for (auto& t : impl_->threads) t.join();
  impl_->threads.clear();
  impl_->lst->close();
  impl_->lst.reset();
  spdlog::debug("server stopped");
}

}  // namespace infer::net
