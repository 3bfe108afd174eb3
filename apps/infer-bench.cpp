// infer-bench: load generator for inferd's WebSocket protocol v1.
//
// Keeps --concurrency requests in flight (1 with --serial), multiplexed over
// --connections WebSocket connections, until --requests have ended; measures time to
// first token, inter-token latency and end-to-end latency per request from the
// client's side, and prints a summary (or --json) at the end. A live progress bar
// goes to stderr when it is a terminal (or with --progress).
//
//   infer-bench --url ws://127.0.0.1:8080/v1/stream --concurrency 16 --requests 200
//               --prompt-tokens 32 --max-tokens 64 [--serial] [--json]
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>
#include <chrono>
#include <cstdio>
#include <deque>
#include <fmt/format.h>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
namespace asio = boost::asio;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using json = nlohmann::json;
using clock_type = std::chrono::steady_clock;

namespace {

struct options {
  std::string url = "ws://127.0.0.1:8080/v1/stream";
  int concurrency = 8;
  int requests = 100;
  int connections = 1;
  int prompt_tokens = 32;
  std::string prompt;
  int max_tokens = 32;
  int token_range = 256;  // prompt ids are drawn from [0, token_range)
  double temperature = 0.0;
  uint64_t seed = 1;
  bool serial = false;
  bool json_out = false;
  bool progress = false;
  bool insecure = false;
  std::string api_key;
  double timeout_s = 600;
};

struct url_parts {
  bool tls = false;
  std::string host, port, target;
};

std::optional<url_parts> parse_url(const std::string& url) {
  url_parts u;
  std::string rest;
  if (url.rfind("ws://", 0) == 0) rest = url.substr(5);
  else if (url.rfind("wss://", 0) == 0) u.tls = true, rest = url.substr(6);
  else return std::nullopt;
  auto slash = rest.find('/');
  std::string hostport = rest.substr(0, slash);
  u.target = slash == std::string::npos ? "/v1/stream" : rest.substr(slash);
  auto colon = hostport.rfind(':');
  if (colon == std::string::npos || (hostport.front() == '[' && hostport.back() == ']')) {
    u.host = hostport;
    u.port = u.tls ? "443" : "80";
  } else {
    u.host = hostport.substr(0, colon);
    u.port = hostport.substr(colon + 1);
  }
  if (u.host.size() > 2 && u.host.front() == '[') u.host = u.host.substr(1, u.host.size() - 2);
  if (u.host.empty()) return std::nullopt;
  return u;
}

struct request_record {
  clock_type::time_point sent, first, last, end;
  int tokens = 0;
  bool ended = false, ok = false;
  std::string error;
};

struct stats {
  std::vector<request_record> recs;
  std::vector<double> itl_ms;  // every gap between consecutive tokens of a request
  int sent = 0, ended = 0, errors = 0;
  uint64_t tokens = 0;
  std::map<std::string, int> error_codes;
  clock_type::time_point start;
};

double ms(clock_type::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

double pct(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = size_t(std::ceil(q * double(v.size()))) ;
  return v[std::min(v.size() - 1, i == 0 ? 0 : i - 1)];
}

class bench;

// One WebSocket connection; many requests multiplexed on it.
class connection {
 public:
  using plain_ws = websocket::stream<beast::tcp_stream>;
  using tls_ws = websocket::stream<beast::ssl_stream<beast::tcp_stream>>;

  connection(asio::io_context& ioc, ssl::context& ctx, bool tls) {
    if (tls) ws_.emplace<tls_ws>(ioc, ctx);
    else ws_.emplace<plain_ws>(ioc);
  }

  std::string connect(const url_parts& u, const std::string& api_key, asio::io_context& ioc) {
    beast::error_code ec;
    tcp::resolver res(ioc);
    auto eps = res.resolve(u.host, u.port, ec);
    if (ec) return "resolve: " + ec.message();
    auto decorate = [api_key](websocket::request_type& r) {
      r.set(http::field::user_agent, "infer-bench");
      if (!api_key.empty()) r.set(http::field::authorization, "Bearer " + api_key);
    };
    std::string hosthdr = u.host + ":" + u.port;
    return std::visit(
        [&](auto& ws) -> std::string {
          using W = std::decay_t<decltype(ws)>;
          if constexpr (std::is_same_v<W, std::monostate>) {
            return "no stream";
          } else {
            beast::get_lowest_layer(ws).connect(eps, ec);
            if (ec) return "connect: " + ec.message();
            beast::get_lowest_layer(ws).socket().set_option(tcp::no_delay(true));
            if constexpr (std::is_same_v<W, tls_ws>) {
              SSL_set_tlsext_host_name(ws.next_layer().native_handle(), u.host.c_str());
              ws.next_layer().handshake(ssl::stream_base::client, ec);
              if (ec) return "TLS handshake: " + ec.message();
            }
            ws.set_option(websocket::stream_base::decorator(decorate));
            ws.read_message_max(64 << 20);
            ws.handshake(hosthdr, u.target, ec);
            if (ec) return "WebSocket handshake: " + ec.message();
            return "";
          }
        },
        ws_);
  }

  template <class F>
  void read(beast::flat_buffer& buf, F&& f) {
    std::visit(
        [&](auto& ws) {
          if constexpr (!std::is_same_v<std::decay_t<decltype(ws)>, std::monostate>) ws.async_read(buf, std::forward<F>(f));
        },
        ws_);
  }
  template <class F>
  void write(const std::string& s, F&& f) {
    std::visit(
        [&](auto& ws) {
          if constexpr (!std::is_same_v<std::decay_t<decltype(ws)>, std::monostate>) {
            ws.text(true);
            ws.async_write(asio::buffer(s), std::forward<F>(f));
          }
        },
        ws_);
  }
  void close() {
    std::visit(
        [&](auto& ws) {
          if constexpr (!std::is_same_v<std::decay_t<decltype(ws)>, std::monostate>) {
            // A hard close: an async read is pending, and every request has ended.
            beast::error_code ec;
            beast::get_lowest_layer(ws).socket().close(ec);
          }
        },
        ws_);
  }

  beast::flat_buffer buffer;
  std::deque<std::string> out;
  bool writing = false;
  bool dead = false;

 private:
  std::variant<std::monostate, plain_ws, tls_ws> ws_;
};

class bench {
 public:
  bench(const options& o, const url_parts& u) : o_(o), u_(u), ctx_(ssl::context::tls_client), timer_(ioc_) {
    if (u.tls && !o.insecure) {
      ctx_.set_default_verify_paths();
      ctx_.set_verify_mode(ssl::verify_peer);
    } else {
      ctx_.set_verify_mode(ssl::verify_none);
    }
    st_.recs.resize(size_t(o.requests));
  }

  int run() {
    for (int i = 0; i < o_.connections; ++i) {
      conns_.push_back(std::make_unique<connection>(ioc_, ctx_, u_.tls));
      std::string err = conns_.back()->connect(u_, o_.api_key, ioc_);
      if (!err.empty()) {
        fmt::print(stderr, "infer-bench: {}: {}\n", o_.url, err);
        return 1;
      }
    }
    st_.start = clock_type::now();
    deadline_ = st_.start + std::chrono::milliseconds(int64_t(o_.timeout_s * 1000));
    for (size_t c = 0; c < conns_.size(); ++c) do_read(c);
    int window = o_.serial ? 1 : o_.concurrency;
    for (int i = 0; i < window && next_ < o_.requests; ++i) send_next();
    tick();
    ioc_.run();
    if (show_progress_) progress(true);
    return report();
  }

 private:
  std::string make_frame(int idx) {
    // ignore_eos: every request generates max_tokens (as vLLM's benchmarks do), so runs
    // compare whatever the model's end-of-sequence choices.
    json f = {{"type", "generate"}, {"id", fmt::format("b{}", idx)}, {"max_tokens", o_.max_tokens},
              {"temperature", o_.temperature}, {"seed", o_.seed + uint64_t(idx)}, {"ignore_eos", true}};
    if (!o_.prompt.empty()) {
      f["prompt"] = o_.prompt;
    } else {
      // Distinct prompts (no prefix sharing to flatter the server), deterministic per index.
      std::vector<int> ids(size_t(std::max(1, o_.prompt_tokens)));
      uint64_t x = 0x9E3779B97F4A7C15ull * uint64_t(idx + 1);
      for (auto& id : ids) {
        x ^= x >> 33, x *= 0xff51afd7ed558ccdull, x ^= x >> 29;
        id = int(x % uint64_t(std::max(1, o_.token_range)));
      }
      f["prompt_tokens"] = ids;
    }
    return f.dump();
  }

  void send_next() {
    int idx = next_++;
    size_t c = size_t(idx) % conns_.size();
    st_.recs[size_t(idx)].sent = clock_type::now();
    st_.sent++;
    queue_write(c, make_frame(idx));
  }

  void queue_write(size_t c, std::string s) {
    auto& cn = *conns_[c];
    if (cn.dead) return;
    cn.out.push_back(std::move(s));
    if (!cn.writing) do_write(c);
  }

  void do_write(size_t c) {
    auto& cn = *conns_[c];
    cn.writing = true;
    cn.write(cn.out.front(), [this, c](beast::error_code ec, size_t) {
      auto& cn = *conns_[c];
      cn.writing = false;
      if (ec) return fail_connection(c, "write: " + ec.message());
      cn.out.pop_front();
      if (!cn.out.empty()) do_write(c);
    });
  }

  void do_read(size_t c) {
    auto& cn = *conns_[c];
    cn.read(cn.buffer, [this, c](beast::error_code ec, size_t) {
      auto& cn = *conns_[c];
      if (ec) return fail_connection(c, "read: " + ec.message());
      auto d = cn.buffer.cdata();
      on_frame(std::string_view(static_cast<const char*>(d.data()), d.size()));
      cn.buffer.consume(cn.buffer.size());
      if (!finished()) do_read(c);
    });
  }

  void on_frame(std::string_view text) {
    auto now = clock_type::now();
    json f = json::parse(text, nullptr, false);
    if (f.is_discarded() || !f.contains("type")) return;
    std::string type = f["type"].get<std::string>();
    if (!f["id"].is_string()) {
      fmt::print(stderr, "\ninfer-bench: server error without id: {}\n", std::string(text));
      return;
    }
    std::string id = f["id"].get<std::string>();
    if (id.size() < 2 || id[0] != 'b') return;
    int idx = std::atoi(id.c_str() + 1);
    if (idx < 0 || idx >= o_.requests) return;
    auto& r = st_.recs[size_t(idx)];
    if (r.ended) return;
    if (type == "token") {
      if (r.tokens == 0) r.first = now;
      else st_.itl_ms.push_back(ms(now - r.last));
      r.last = now;
      r.tokens++;
      st_.tokens++;
    } else if (type == "done" || type == "error") {
      r.end = now;
      r.ended = true;
      r.ok = type == "done";
      st_.ended++;
      if (!r.ok) {
        st_.errors++;
        std::string code = f.value("code", "?");
        st_.error_codes[code]++;
        r.error = f.value("message", "");
      }
      if (next_ < o_.requests) send_next();
      if (finished()) stop();
    }
  }

  bool finished() const { return st_.ended >= o_.requests || failed_; }

  void fail_connection(size_t c, const std::string& why) {
    auto& cn = *conns_[c];
    if (cn.dead || finished()) return;
    cn.dead = true;
    fmt::print(stderr, "\ninfer-bench: connection {} failed: {}\n", c, why);
    failed_ = true;
    stop();
  }

  void stop() {
    timer_.cancel();
    for (auto& c : conns_)
      if (!c->dead) c->close();
    ioc_.stop();
  }

  void tick() {
    if (show_progress_) progress(false);
    if (clock_type::now() > deadline_) {
      fmt::print(stderr, "\ninfer-bench: --timeout-s {} reached\n", o_.timeout_s);
      failed_ = true;
      return stop();
    }
    timer_.expires_after(std::chrono::milliseconds(200));
    timer_.async_wait([this](beast::error_code ec) {
      if (!ec && !finished()) tick();
    });
  }

  void progress(bool last) {
    double el = ms(clock_type::now() - st_.start) / 1000.0;
    int width = 30, filled = o_.requests ? int(int64_t(width) * st_.ended / o_.requests) : width;
    std::string bar(size_t(filled), '#');
    bar.resize(size_t(width), '.');
    fmt::print(stderr, "\r[{}] {}/{} done, {} in flight, {} errors, {:.1f} req/s, {:.0f} tok/s, {:.1f}s   {}", bar,
               st_.ended, o_.requests, st_.sent - st_.ended, st_.errors, el > 0 ? st_.ended / el : 0.0,
               el > 0 ? double(st_.tokens) / el : 0.0, el, last ? "\n" : "");
    std::fflush(stderr);
  }

  int report() {
    clock_type::time_point last_end = st_.start;
    std::vector<double> ttft, e2e;
    int ok = 0;
    for (auto& r : st_.recs) {
      if (!r.ended) continue;
      last_end = std::max(last_end, r.end);
      if (!r.ok) continue;
      ok++;
      e2e.push_back(ms(r.end - r.sent));
      if (r.tokens > 0) ttft.push_back(ms(r.first - r.sent));
    }
    double wall = ms(last_end - st_.start) / 1000.0;
    double rps = wall > 0 ? ok / wall : 0, tps = wall > 0 ? double(st_.tokens) / wall : 0;
    auto q = [](const std::vector<double>& v) {
      return json{{"p50", pct(v, 0.5)}, {"p90", pct(v, 0.9)}, {"p99", pct(v, 0.99)}, {"mean", v.empty() ? 0.0 : [&] {
                     double s = 0;
                     for (double x : v) s += x;
                     return s / double(v.size());
                   }()}};
    };
    json out = {{"url", o_.url},
                {"requests", o_.requests},
                {"completed", ok},
                {"errors", st_.errors},
                {"error_codes", st_.error_codes},
                {"unfinished", o_.requests - st_.ended},
                {"concurrency", o_.serial ? 1 : o_.concurrency},
                {"serial", o_.serial},
                {"connections", o_.connections},
                {"prompt_tokens", o_.prompt.empty() ? o_.prompt_tokens : -1},
                {"max_tokens", o_.max_tokens},
                {"wall_s", wall},
                {"requests_per_s", rps},
                {"tokens_generated", st_.tokens},
                {"tokens_per_s", tps},
                {"ttft_ms", q(ttft)},
                {"itl_ms", q(st_.itl_ms)},
                {"e2e_ms", q(e2e)}};
    if (o_.json_out) {
      fmt::print("{}\n", out.dump(2));
    } else {
      fmt::print("infer-bench: {} requests ({} ok, {} errors, {} unfinished), concurrency {}{}, {} connection(s)\n",
                 o_.requests, ok, st_.errors, o_.requests - st_.ended, o_.serial ? 1 : o_.concurrency,
                 o_.serial ? " (serial)" : "", o_.connections);
      fmt::print("  wall {:.3f} s   throughput {:.2f} req/s   {:.1f} tok/s   ({} tokens)\n", wall, rps, tps,
                 st_.tokens);
      fmt::print("  {:<22}{:>10}{:>10}{:>10}{:>10}\n", "latency (ms)", "p50", "p90", "p99", "mean");
      for (auto [name, key] : {std::pair{"time to first token", "ttft_ms"}, std::pair{"inter-token", "itl_ms"},
                               std::pair{"end-to-end", "e2e_ms"}}) {
        auto& v = out[key];
        fmt::print("  {:<22}{:>10.2f}{:>10.2f}{:>10.2f}{:>10.2f}\n", name, v["p50"].get<double>(),
                   v["p90"].get<double>(), v["p99"].get<double>(), v["mean"].get<double>());
      }
      for (auto& [code, n] : st_.error_codes) fmt::print("  error {}: {}\n", code, n);
    }
    return (failed_ || st_.ended < o_.requests) ? 1 : 0;
  }

  options o_;
  url_parts u_;
  asio::io_context ioc_;
  ssl::context ctx_;
  asio::steady_timer timer_;
  std::vector<std::unique_ptr<connection>> conns_;
  stats st_;
  int next_ = 0;
  bool failed_ = false;
  bool show_progress_ = isatty(2) != 0;
  clock_type::time_point deadline_;

 public:
  void force_progress(bool on) { show_progress_ = on; }
};

}  // namespace

int main(int argc, char** argv) {
  options o;
  CLI::App app{"infer-bench: load generator for inferd's WebSocket protocol"};
  app.add_option("--url", o.url, "ws:// or wss:// URL of /v1/stream")->capture_default_str();
  app.add_option("--concurrency,-c", o.concurrency, "requests in flight at once")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--requests,-n", o.requests, "requests in all")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--connections", o.connections, "WebSocket connections the requests are spread over")
      ->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--prompt-tokens", o.prompt_tokens, "prompt length in token ids (sent as prompt_tokens)")
      ->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--prompt", o.prompt, "send this text prompt instead of token ids");
  app.add_option("--max-tokens", o.max_tokens, "tokens to generate per request")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--token-range", o.token_range, "prompt ids are drawn from [0, N)")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--temperature", o.temperature, "sampling temperature")->capture_default_str();
  app.add_option("--seed", o.seed, "seed of request 0 (request i uses seed+i)")->capture_default_str();
  app.add_flag("--serial", o.serial, "one request at a time");
  app.add_flag("--json", o.json_out, "print the summary as JSON");
  app.add_flag("--progress", o.progress, "progress bar even when stderr is not a terminal");
  app.add_flag("--insecure", o.insecure, "wss: do not verify the server certificate");
  app.add_option("--api-key", o.api_key, "bearer token");
  app.add_option("--timeout-s", o.timeout_s, "give up after this many seconds")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  auto u = parse_url(o.url);
  if (!u) {
    fmt::print(stderr, "infer-bench: --url: expected ws://HOST:PORT/PATH or wss://..., got {}\n", o.url);
    return 2;
  }
  bench b(o, *u);
  if (o.progress) b.force_progress(true);
  return b.run();
}
