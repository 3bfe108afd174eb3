// infer-bench: load generator for inferd (WebSocket protocol v1) and for any
// OpenAI-compatible server (/v1/completions and /v1/chat/completions over SSE).
//
// The API follows the URL: ws:// or wss:// speaks inferd's WebSocket protocol (many requests
// multiplexed over --connections connections); http:// or https:// speaks OpenAI's streaming
// completions (one request per keep-alive connection at a time, as vLLM's
// benchmark_serving.py), the chat flavour when the path ends in /chat/completions
// (--backend overrides). Requests arrive at once (--request-rate inf, the default) or by a
// Poisson process (a gamma process with --burstiness other than 1, as vLLM's benchmark);
// at most --concurrency are in flight. Prompts are --prompt-tokens ids (or --prompt text)
// and --max-tokens new tokens, or drawn per request (--dataset random: lengths uniform in
// [L*(1-r), L*(1+r)] around --random-input-len / --random-output-len, r =
// --random-range-ratio). Measured per request from the client's side: time to first token,
// time per output token after the first (TPOT), the gaps between token arrivals (ITL) and
// end-to-end latency; goodput counts the requests that meet every --goodput limit. A
// progress bar goes to stderr when it is a terminal (or with --progress); the summary to
// stdout (or --json); --save-result FILE writes the summary, the run's metadata and one row
// per request.
//
//   infer-bench --url ws://127.0.0.1:8080/v1/stream --concurrency 16 --requests 200
//               --prompt-tokens 32 --max-tokens 64 [--serial] [--json]
//   infer-bench --url http://127.0.0.1:8080/v1/completions --requests 500 --request-rate 50
//               --dataset random --random-input-len 128 --random-output-len 128
//               --goodput ttft:200 tpot:20 --save-result run.json
#include <charconv>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>
#include <chrono>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <deque>
#include <fmt/format.h>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
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

enum class api { ws, completions, chat };

const char* api_name(api a) {
  switch (a) {
    case api::ws: return "ws";
    case api::completions: return "openai";
    case api::chat: return "openai-chat";
  }
  return "?";
}

struct options {
  std::string url = "ws://127.0.0.1:8080/v1/stream";
  std::string backend = "auto";  // ws | openai | openai-chat | auto (from the URL)
  std::string model;             // the OpenAI "model" field (absent: the server's default)
  int concurrency = 8;
  int requests = 100;
  int connections = 1;
  int prompt_tokens = 32;
  std::string prompt;
  int max_tokens = 32;
  std::string dataset = "fixed";  // fixed | random
  int random_input_len = 0, random_output_len = 0;  // 0: --prompt-tokens / --max-tokens
  double random_range_ratio = 0.0;
  double request_rate = std::numeric_limits<double>::infinity();
  double burstiness = 1.0;
  int warmup = 0;
  std::vector<std::string> goodput;  // "ttft:MS", "tpot:MS", "e2el:MS"
  std::string save_result;
  std::vector<std::string> metadata;  // KEY=VALUE, into --save-result's metadata
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
  bool tls = false, ws = false;
  std::string host, port, target;
};

std::optional<url_parts> parse_url(const std::string& url) {
  url_parts u;
  std::string rest;
  if (url.rfind("ws://", 0) == 0) u.ws = true, rest = url.substr(5);
  else if (url.rfind("wss://", 0) == 0) u.ws = u.tls = true, rest = url.substr(6);
  else if (url.rfind("http://", 0) == 0) rest = url.substr(7);
  else if (url.rfind("https://", 0) == 0) u.tls = true, rest = url.substr(8);
  else return std::nullopt;
  auto slash = rest.find('/');
  std::string hostport = rest.substr(0, slash);
  u.target = slash == std::string::npos ? (u.ws ? "/v1/stream" : "/v1/completions") : rest.substr(slash);
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

// What one request asks for.
struct request_spec {
  std::vector<int> ids;  // the prompt as token ids (empty: text)
  std::string text;      // the prompt as text (chat, --prompt)
  int input_len = 0;     // as asked (ids: exact; text: words)
  int output_len = 0;    // max_tokens
};

// Words for text prompts (the chat API takes no token ids): common English words, most one
// GPT-2 / Llama 3 token each with their leading space, so a prompt of N words is about N tokens.
constexpr const char* k_words[] = {"the",  "of",    "and",  "to",    "in",   "is",   "that",  "for",  "it",
                                   "as",   "was",   "with", "be",    "by",   "on",   "not",   "he",   "this",
                                   "are",  "or",    "his",  "from",  "at",   "which", "but",  "have", "an",
                                   "had",  "they",  "you",  "were",  "their", "one", "all",   "we",   "can",
                                   "her",  "has",   "there", "been", "if",   "more", "when",  "will", "would",
                                   "who",  "so",    "no",   "time",  "new",  "some", "about", "year", "people"};

std::vector<request_spec> make_specs(const options& o, int n, uint64_t seed, bool chat) {
  std::mt19937_64 rng(seed);
  auto draw = [&](int center) {
    if (o.dataset != "random" || o.random_range_ratio <= 0) return std::max(1, center);
    int lo = std::max(1, int(std::floor(double(center) * (1.0 - o.random_range_ratio))));
    int hi = std::max(lo, int(std::ceil(double(center) * (1.0 + o.random_range_ratio))));
    return std::uniform_int_distribution<int>(lo, hi)(rng);
  };
  int in_c = o.dataset == "random" && o.random_input_len > 0 ? o.random_input_len : o.prompt_tokens;
  int out_c = o.dataset == "random" && o.random_output_len > 0 ? o.random_output_len : o.max_tokens;
  std::vector<request_spec> specs(size_t(std::max(0, n)));
  for (int i = 0; i < n; ++i) {
    auto& s = specs[size_t(i)];
    s.input_len = draw(in_c);
    s.output_len = draw(out_c);
    // Distinct prompts (no prefix sharing to flatter the server), deterministic per index and seed.
    uint64_t x = 0x9E3779B97F4A7C15ull * (uint64_t(i) + 1) ^ (seed * 0xD1B54A32D192ED03ull);
    auto next = [&x] {
      x ^= x >> 33, x *= 0xff51afd7ed558ccdull, x ^= x >> 29;
      return x;
    };
    if (!o.prompt.empty()) {
      s.text = o.prompt;
      s.input_len = -1;
    } else if (chat) {
      constexpr size_t nw = sizeof k_words / sizeof k_words[0];
      for (int k = 0; k < s.input_len; ++k) {
        if (k) s.text.push_back(' ');
        s.text += k_words[next() % nw];
      }
    } else {
      s.ids.resize(size_t(s.input_len));
      for (auto& id : s.ids) id = int(next() % uint64_t(std::max(1, o.token_range)));
    }
  }
  return specs;
}

// Arrival offsets in seconds from the start: all 0 at an infinite rate; otherwise the gaps
// are gamma(shape = burstiness, scale = 1 / (rate * burstiness)): mean 1/rate, Poisson at 1.
std::vector<double> make_arrivals(const options& o, int n) {
  std::vector<double> t(size_t(std::max(0, n)), 0.0);
  if (!std::isfinite(o.request_rate) || o.request_rate <= 0) return t;
  std::mt19937_64 rng(o.seed ^ 0xA5A5A5A5ull);
  std::gamma_distribution<double> gap(o.burstiness, 1.0 / (o.request_rate * o.burstiness));
  double at = 0;
  for (int i = 0; i < n; ++i) {
    t[size_t(i)] = at;
    at += gap(rng);
  }
  return t;
}

struct request_record {
  clock_type::time_point sent, first, last, end;
  int chunks = 0;            // token arrivals seen
  int completion_tokens = -1;  // the server's usage (-1: not given)
  int prompt_tokens = -1;
  bool ended = false, ok = false;
  std::string error;
  std::vector<double> itl_ms;  // gaps between this request's token arrivals
};

struct stats {
  std::vector<request_record> recs;
  int sent = 0, ended = 0, errors = 0;
  uint64_t tokens = 0;  // token arrivals, for the progress bar
  std::map<std::string, int> error_codes;
  clock_type::time_point start;
};

double ms(clock_type::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

double pct(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = size_t(std::ceil(q * double(v.size())));
  return v[std::min(v.size() - 1, i == 0 ? 0 : i - 1)];
}

// The value of "key":N in a JSON text, found without parsing it (the hot path: one call per
// token event). nullopt if absent or not a number.
std::optional<long> scan_int(std::string_view s, std::string_view quoted_key) {
  auto p = s.find(quoted_key);
  if (p == std::string_view::npos) return std::nullopt;
  p += quoted_key.size();
  while (p < s.size() && (s[p] == ' ' || s[p] == ':')) ++p;
  if (p >= s.size() || !(std::isdigit(static_cast<unsigned char>(s[p])) || s[p] == '-')) return std::nullopt;
  // from_chars, not strtol: the frame's text is not NUL-terminated (ASan's strict string
  // checks caught strtol reading past it).
  long v = 0;
  if (std::from_chars(s.data() + p, s.data() + s.size(), v).ec != std::errc{}) return std::nullopt;
  return v;
}

// Whether "key":"..." holds a non-empty string.
bool scan_nonempty_string(std::string_view s, std::string_view quoted_key) {
  auto p = s.find(quoted_key);
  if (p == std::string_view::npos) return false;
  p += quoted_key.size();
  while (p < s.size() && (s[p] == ' ' || s[p] == ':')) ++p;
  return p + 1 < s.size() && s[p] == '"' && s[p + 1] != '"';
}

class bench;

// One WebSocket connection; many requests multiplexed on it.
class ws_connection {
 public:
  using plain_ws = websocket::stream<beast::tcp_stream>;
  using tls_ws = websocket::stream<beast::ssl_stream<beast::tcp_stream>>;

  ws_connection(asio::io_context& ioc, ssl::context& ctx, bool tls) {
    if (tls) ws_.emplace<tls_ws>(ioc, ctx);
    else ws_.emplace<plain_ws>(ioc);
  }

  std::string connect(const url_parts& u, const std::string& api_key, const tcp::resolver::results_type& eps) {
    beast::error_code ec;
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

// What an HTTP connection reports to the bench.
struct sse_sink {
  virtual ~sse_sink() = default;
  virtual void on_sse_data(int idx, std::string_view payload, clock_type::time_point now) = 0;
  // The response ended (ok: 200 and a complete stream; else `error` / `code` say why).
  virtual void on_http_end(int idx, clock_type::time_point now, bool ok, const std::string& code,
                           const std::string& error) = 0;
};

// One keep-alive HTTP/1.1 connection carrying one streamed completion at a time.
struct http_connection {
  virtual ~http_connection() = default;
  virtual void start(int idx, std::string body) = 0;
  virtual void close() = 0;
  bool busy = false;
};

template <class Stream>
class http_connection_impl final : public http_connection {
 public:
  http_connection_impl(sse_sink& sink, const url_parts& u, const tcp::resolver::results_type& eps,
                       const std::string& api_key, asio::io_context& ioc, ssl::context& ctx)
      : sink_(sink), u_(u), eps_(eps), api_key_(api_key), ioc_(ioc), ctx_(ctx) {}

  // Opens the connection now (before the clock starts), so that the first requests'
  // figures do not hold a TCP (and TLS) handshake. Empty string: connected.
  std::string connect_sync() {
    fresh();
    beast::error_code ec;
    beast::get_lowest_layer(*stream_).connect(eps_, ec);
    if (ec) return "connect: " + ec.message();
    beast::get_lowest_layer(*stream_).socket().set_option(tcp::no_delay(true));
    if constexpr (!std::is_same_v<Stream, beast::tcp_stream>) {
      SSL_set_tlsext_host_name(stream_->native_handle(), u_.host.c_str());
      stream_->handshake(ssl::stream_base::client, ec);
      if (ec) return "TLS handshake: " + ec.message();
    }
    open_ = true;
    return "";
  }

  void start(int idx, std::string body) override {
    busy = true;
    idx_ = idx;
    retried_ = false;
    body_ = std::move(body);
    if (open_) return send();
    reconnect();
  }

  void close() override {
    if (!stream_) return;
    beast::error_code ec;
    beast::get_lowest_layer(*stream_).socket().close(ec);
    open_ = false;
  }

 private:
  void fresh() {
    if constexpr (std::is_same_v<Stream, beast::tcp_stream>) stream_.emplace(ioc_);
    else stream_.emplace(ioc_, ctx_);
  }

  void reconnect() {
    close();
    fresh();
    beast::get_lowest_layer(*stream_).async_connect(eps_, [this](beast::error_code ec, const tcp::endpoint&) {
      if (ec) return end(false, "connect", ec.message());
      beast::get_lowest_layer(*stream_).socket().set_option(tcp::no_delay(true));
      if constexpr (!std::is_same_v<Stream, beast::tcp_stream>) {
        SSL_set_tlsext_host_name(stream_->native_handle(), u_.host.c_str());
        stream_->async_handshake(ssl::stream_base::client, [this](beast::error_code ec) {
          if (ec) return end(false, "tls", ec.message());
          open_ = true;
          send();
        });
      } else {
        open_ = true;
        send();
      }
    });
  }

  void send() {
    req_ = {};
    req_.method(http::verb::post);
    req_.target(u_.target);
    req_.version(11);
    req_.set(http::field::host, u_.host + ":" + u_.port);
    req_.set(http::field::user_agent, "infer-bench");
    req_.set(http::field::content_type, "application/json");
    req_.set(http::field::accept, "text/event-stream");
    if (!api_key_.empty()) req_.set(http::field::authorization, "Bearer " + api_key_);
    req_.keep_alive(true);
    req_.body() = body_;
    req_.prepare_payload();
    got_bytes_ = false;
    http::async_write(*stream_, req_, [this](beast::error_code ec, size_t) {
      if (ec) return retry_or_fail(ec);
      read_header();
    });
  }

  // A reused connection the server closed while idle fails before any answer: once, the
  // request goes again on a fresh connection (not counted as an error, as aiohttp does).
  void retry_or_fail(beast::error_code ec) {
    if (!got_bytes_ && !retried_) {
      retried_ = true;
      return reconnect();
    }
    end(false, "io", ec.message());
  }

  void read_header() {
    parser_.emplace();
    parser_->body_limit(boost::none);
    http::async_read_header(*stream_, buf_, *parser_, [this](beast::error_code ec, size_t) {
      if (ec) return retry_or_fail(ec);
      got_bytes_ = true;
      status_ = parser_->get().result_int();
      sse_.clear();
      err_body_.clear();
      read_body();
    });
  }

  void read_body() {
    if (parser_->is_done()) return finished();
    parser_->get().body().data = chunk_;
    parser_->get().body().size = sizeof chunk_;
    http::async_read_some(*stream_, buf_, *parser_, [this](beast::error_code ec, size_t) {
      if (ec == http::error::need_buffer) ec = {};
      size_t n = sizeof chunk_ - parser_->get().body().size;
      if (n) on_bytes(std::string_view(chunk_, n));
      if (ec == http::error::end_of_stream && parser_->is_done()) ec = {};
      if (ec) return end(false, "io", ec.message());
      read_body();
    });
  }

  void on_bytes(std::string_view b) {
    if (status_ != 200) {
      if (err_body_.size() < 4096) err_body_.append(b.substr(0, 4096 - err_body_.size()));
      return;
    }
    auto now = clock_type::now();
    sse_.append(b);
    // Events end with a blank line; the data lines of one event are its payload.
    size_t pos = 0;
    for (;;) {
      size_t e = sse_.find("\n\n", pos);
      size_t sep = 2;
      size_t e2 = sse_.find("\r\n\r\n", pos);
      if (e2 != std::string::npos && (e == std::string::npos || e2 < e)) e = e2, sep = 4;
      if (e == std::string::npos) break;
      std::string_view ev(sse_.data() + pos, e - pos);
      pos = e + sep;
      for (size_t l = 0; l < ev.size();) {
        size_t nl = ev.find('\n', l);
        std::string_view line = ev.substr(l, nl == std::string_view::npos ? std::string_view::npos : nl - l);
        l = nl == std::string_view::npos ? ev.size() : nl + 1;
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        if (line.rfind("data:", 0) != 0) continue;  // comments (":"), event:, id:
        line.remove_prefix(5);
        if (!line.empty() && line.front() == ' ') line.remove_prefix(1);
        if (line == "[DONE]") done_ = true;
        else sink_.on_sse_data(idx_, line, now);
      }
    }
    sse_.erase(0, pos);
  }

  void finished() {
    bool keep = parser_->get().keep_alive();
    if (!keep) close();
    if (status_ != 200) {
      std::string code = std::to_string(status_), msg = err_body_;
      json j = json::parse(err_body_, nullptr, false);
      if (!j.is_discarded() && j.is_object() && j.contains("error") && j["error"].is_object()) {
        auto& e = j["error"];
        if (e.contains("code") && e["code"].is_string()) code += " " + e["code"].get<std::string>();
        if (e.contains("message") && e["message"].is_string()) msg = e["message"].get<std::string>();
      }
      return end(false, code, msg);
    }
    if (!done_) return end(false, "stream", "the stream ended without data: [DONE]");
    done_ = false;
    end(true, "", "");
  }

  void end(bool ok, const std::string& code, const std::string& why) {
    if (!ok) close();
    done_ = false;
    busy = false;
    sink_.on_http_end(idx_, clock_type::now(), ok, code, why);
  }

  sse_sink& sink_;
  const url_parts& u_;
  const tcp::resolver::results_type& eps_;
  const std::string& api_key_;
  asio::io_context& ioc_;
  ssl::context& ctx_;
  std::optional<Stream> stream_;
  bool open_ = false, retried_ = false, got_bytes_ = false, done_ = false;
  int idx_ = -1;
  unsigned status_ = 0;
  std::string body_, sse_, err_body_;
  http::request<http::string_body> req_;
  std::optional<http::response_parser<http::buffer_body>> parser_;
  beast::flat_buffer buf_;
  char chunk_[16384];
};

struct slo {
  double ttft_ms = -1, tpot_ms = -1, e2el_ms = -1;  // -1: no limit
  bool any() const { return ttft_ms >= 0 || tpot_ms >= 0 || e2el_ms >= 0; }
};

class bench final : public sse_sink {
 public:
  bench(const options& o, const url_parts& u, api a, std::vector<request_spec> specs, std::vector<double> arrivals,
        bool quiet)
      : o_(o),
        u_(u),
        api_(a),
        specs_(std::move(specs)),
        arrivals_(std::move(arrivals)),
        n_(int(specs_.size())),
        ctx_(ssl::context::tls_client),
        timer_(ioc_),
        arrival_timer_(ioc_),
        quiet_(quiet) {
    if (u.tls && !o.insecure) {
      ctx_.set_default_verify_paths();
      ctx_.set_verify_mode(ssl::verify_peer);
    } else {
      ctx_.set_verify_mode(ssl::verify_none);
    }
    st_.recs.resize(size_t(n_));
    for (int i = 0; i < n_; ++i) st_.recs[size_t(i)].itl_ms.reserve(size_t(specs_[size_t(i)].output_len));
    window_ = o.serial ? 1 : std::min(o.concurrency, std::max(1, n_));
    if (quiet) show_progress_ = false;
  }

  void force_progress(bool on) {
    if (!quiet_) show_progress_ = on;
  }

  int run() {
    beast::error_code ec;
    tcp::resolver res(ioc_);
    eps_ = res.resolve(u_.host, u_.port, ec);
    if (ec) {
      fmt::print(stderr, "infer-bench: {}: resolve: {}\n", o_.url, ec.message());
      return 1;
    }
    if (api_ == api::ws) {
      for (int i = 0; i < o_.connections; ++i) {
        ws_.push_back(std::make_unique<ws_connection>(ioc_, ctx_, u_.tls));
        std::string err = ws_.back()->connect(u_, o_.api_key, eps_);
        if (!err.empty()) {
          fmt::print(stderr, "infer-bench: {}: {}\n", o_.url, err);
          return 1;
        }
      }
    } else {
      // As many keep-alive connections as requests can be in flight, opened before the clock.
      for (int i = 0; i < window_; ++i) {
        std::string err;
        if (u_.tls) {
          auto c = std::make_unique<http_connection_impl<beast::ssl_stream<beast::tcp_stream>>>(*this, u_, eps_,
                                                                                                 o_.api_key, ioc_, ctx_);
          err = c->connect_sync();
          http_.push_back(std::move(c));
        } else {
          auto c = std::make_unique<http_connection_impl<beast::tcp_stream>>(*this, u_, eps_, o_.api_key, ioc_, ctx_);
          err = c->connect_sync();
          http_.push_back(std::move(c));
        }
        if (!err.empty()) {
          fmt::print(stderr, "infer-bench: {}: {}\n", o_.url, err);
          return 1;
        }
      }
    }
    st_.start = clock_type::now();
    deadline_ = st_.start + std::chrono::milliseconds(int64_t(o_.timeout_s * 1000));
    for (size_t c = 0; c < ws_.size(); ++c) do_read(c);
    pump();
    tick();
    if (n_ > 0) ioc_.run();
    if (show_progress_) progress(true);
    return (failed_ || st_.ended < n_) ? 1 : 0;
  }

  // The summary (and the rows of --save-result when rows is set).
  json summary(json* rows, const slo& limits) const {
    clock_type::time_point last_end = st_.start;
    std::vector<double> ttft, tpot, e2e, itl;
    int ok = 0, good = 0;
    uint64_t out_tokens = 0, in_tokens = 0;
    for (int i = 0; i < n_; ++i) {
      auto& r = st_.recs[size_t(i)];
      auto& s = specs_[size_t(i)];
      if (!r.ended) continue;
      last_end = std::max(last_end, r.end);
      int out = r.completion_tokens >= 0 ? r.completion_tokens : r.chunks;
      int in = r.prompt_tokens >= 0 ? r.prompt_tokens : s.input_len;
      double t_ttft = r.chunks > 0 ? ms(r.first - r.sent) : -1, t_e2e = ms(r.end - r.sent);
      // TPOT: the time after the first token over the tokens after it (vLLM's definition).
      double t_tpot = out > 1 && r.chunks > 0 ? ms(r.last - r.first) / double(out - 1) : -1;
      bool meets = r.ok && (limits.ttft_ms < 0 || (t_ttft >= 0 && t_ttft <= limits.ttft_ms)) &&
                   (limits.tpot_ms < 0 || t_tpot <= limits.tpot_ms) &&
                   (limits.e2el_ms < 0 || t_e2e <= limits.e2el_ms);
      if (rows) {
        json row = {{"index", i},
                    {"ok", r.ok},
                    {"start_s", ms(r.sent - st_.start) / 1000.0},
                    {"input_len", in},
                    {"output_len", out},
                    {"max_tokens", s.output_len},
                    {"ttft_ms", t_ttft >= 0 ? json(t_ttft) : json(nullptr)},
                    {"tpot_ms", t_tpot >= 0 ? json(t_tpot) : json(nullptr)},
                    {"e2el_ms", t_e2e},
                    {"itl_ms", r.itl_ms}};
        if (limits.any()) row["meets_slo"] = meets;
        if (!r.ok) row["error"] = r.error;
        rows->push_back(std::move(row));
      }
      if (!r.ok) continue;
      ok++;
      good += meets;
      out_tokens += uint64_t(std::max(0, out));
      in_tokens += uint64_t(std::max(0, in));
      e2e.push_back(t_e2e);
      if (t_ttft >= 0) ttft.push_back(t_ttft);
      if (t_tpot >= 0) tpot.push_back(t_tpot);
      itl.insert(itl.end(), r.itl_ms.begin(), r.itl_ms.end());
    }
    double wall = ms(last_end - st_.start) / 1000.0;
    auto per_s = [wall](double x) { return wall > 0 ? x / wall : 0.0; };
    auto q = [](const std::vector<double>& v) {
      double s = 0;
      for (double x : v) s += x;
      return json{{"p50", pct(v, 0.5)}, {"p90", pct(v, 0.9)}, {"p99", pct(v, 0.99)},
                  {"mean", v.empty() ? 0.0 : s / double(v.size())}};
    };
    json out = {{"url", o_.url},
                {"backend", api_name(api_)},
                {"requests", n_},
                {"completed", ok},
                {"errors", st_.errors},
                {"error_codes", st_.error_codes},
                {"unfinished", n_ - st_.ended},
                {"concurrency", window_},
                {"serial", o_.serial},
                {"connections", api_ == api::ws ? o_.connections : window_},
                {"request_rate", std::isfinite(o_.request_rate) ? json(o_.request_rate) : json("inf")},
                {"burstiness", o_.burstiness},
                {"dataset", o_.dataset},
                {"prompt_tokens", o_.prompt.empty() ? o_.prompt_tokens : -1},
                {"max_tokens", o_.max_tokens},
                {"wall_s", wall},
                {"requests_per_s", per_s(ok)},
                {"total_input_tokens", in_tokens},
                {"tokens_generated", out_tokens},
                {"tokens_per_s", per_s(double(out_tokens))},
                {"total_tokens_per_s", per_s(double(in_tokens + out_tokens))},
                {"ttft_ms", q(ttft)},
                {"tpot_ms", q(tpot)},
                {"itl_ms", q(itl)},
                {"e2e_ms", q(e2e)}};
    if (limits.any()) {
      json l = json::object();
      if (limits.ttft_ms >= 0) l["ttft_ms"] = limits.ttft_ms;
      if (limits.tpot_ms >= 0) l["tpot_ms"] = limits.tpot_ms;
      if (limits.e2el_ms >= 0) l["e2el_ms"] = limits.e2el_ms;
      out["goodput"] = {{"limits", l}, {"good_requests", good}, {"requests_per_s", per_s(good)}};
    }
    return out;
  }

  static void print_summary(const json& out) {
    fmt::print("infer-bench: {} requests ({} ok, {} errors, {} unfinished) over {}, concurrency {}{}, {} connection(s)\n",
               out["requests"].get<int>(), out["completed"].get<int>(), out["errors"].get<int>(),
               out["unfinished"].get<int>(), out["backend"].get<std::string>(), out["concurrency"].get<int>(),
               out["serial"].get<bool>() ? " (serial)" : "", out["connections"].get<int>());
    if (!out["request_rate"].is_string())
      fmt::print("  request rate {:.2f}/s (burstiness {})\n", out["request_rate"].get<double>(),
                 out["burstiness"].get<double>());
    fmt::print("  wall {:.3f} s   throughput {:.2f} req/s   {:.1f} tok/s   ({} tokens; {:.1f} tok/s with the prompts)\n",
               out["wall_s"].get<double>(), out["requests_per_s"].get<double>(), out["tokens_per_s"].get<double>(),
               out["tokens_generated"].get<uint64_t>(), out["total_tokens_per_s"].get<double>());
    if (out.contains("goodput"))
      fmt::print("  goodput {:.2f} req/s ({} of {} requests within {})\n", out["goodput"]["requests_per_s"].get<double>(),
                 out["goodput"]["good_requests"].get<int>(), out["requests"].get<int>(),
                 out["goodput"]["limits"].dump());
    fmt::print("  {:<22}{:>10}{:>10}{:>10}{:>10}\n", "latency (ms)", "p50", "p90", "p99", "mean");
    for (auto [name, key] : {std::pair{"time to first token", "ttft_ms"}, std::pair{"per output token", "tpot_ms"},
                             std::pair{"inter-token", "itl_ms"}, std::pair{"end-to-end", "e2e_ms"}}) {
      auto& v = out[key];
      fmt::print("  {:<22}{:>10.2f}{:>10.2f}{:>10.2f}{:>10.2f}\n", name, v["p50"].get<double>(),
                 v["p90"].get<double>(), v["p99"].get<double>(), v["mean"].get<double>());
    }
    for (auto& [code, n] : out["error_codes"].items()) fmt::print("  error {}: {}\n", code, n.get<int>());
  }

 private:
  std::string make_body(int idx) {
    const auto& s = specs_[size_t(idx)];
    // ignore_eos: every request generates max_tokens (as vLLM's benchmarks do), so runs
    // compare whatever the model's end-of-sequence choices.
    json f;
    if (api_ == api::ws) {
      f = {{"type", "generate"}, {"id", fmt::format("b{}", idx)}};
      if (s.ids.empty()) f["prompt"] = s.text;
      else f["prompt_tokens"] = s.ids;
    } else {
      if (!o_.model.empty()) f["model"] = o_.model;
      if (api_ == api::chat) {
        f["messages"] = json::array({json{{"role", "user"}, {"content", s.text}}});
      } else if (s.ids.empty()) {
        f["prompt"] = s.text;
      } else {
        f["prompt"] = s.ids;
      }
      f["stream"] = true;
      f["stream_options"] = {{"include_usage", true}};
    }
    f["max_tokens"] = s.output_len;
    f["temperature"] = o_.temperature;
    f["seed"] = o_.seed + uint64_t(idx);
    f["ignore_eos"] = true;
    return f.dump();
  }

  // Sends whatever may go now: arrivals that are due, while the window has room; arms the
  // arrival timer for the next one otherwise.
  void pump() {
    auto now = clock_type::now();
    while (next_ < n_ && st_.sent - st_.ended < window_) {
      auto due = st_.start + std::chrono::duration_cast<clock_type::duration>(
                                 std::chrono::duration<double>(arrivals_[size_t(next_)]));
      if (due > now) {
        if (!arrival_armed_) {
          arrival_armed_ = true;
          arrival_timer_.expires_at(due);
          arrival_timer_.async_wait([this](beast::error_code ec) {
            arrival_armed_ = false;
            if (!ec && !finished()) pump();
          });
        }
        return;
      }
      send_next();
    }
  }

  void send_next() {
    int idx = next_++;
    st_.recs[size_t(idx)].sent = clock_type::now();
    st_.sent++;
    if (api_ == api::ws) return queue_write(size_t(idx) % ws_.size(), make_body(idx));
    for (auto& c : http_)
      if (!c->busy) return c->start(idx, make_body(idx));
    // Unreachable: there are as many connections as the window is wide.
    end_request(idx, clock_type::now(), false, "client", "no free connection");
  }

  void queue_write(size_t c, std::string s) {
    auto& cn = *ws_[c];
    if (cn.dead) return;
    cn.out.push_back(std::move(s));
    if (!cn.writing) do_write(c);
  }

  void do_write(size_t c) {
    auto& cn = *ws_[c];
    cn.writing = true;
    cn.write(cn.out.front(), [this, c](beast::error_code ec, size_t) {
      auto& cn = *ws_[c];
      cn.writing = false;
      if (ec) return fail_connection(c, "write: " + ec.message());
      cn.out.pop_front();
      if (!cn.out.empty()) do_write(c);
    });
  }

  void do_read(size_t c) {
    auto& cn = *ws_[c];
    cn.read(cn.buffer, [this, c](beast::error_code ec, size_t) {
      auto& cn = *ws_[c];
      if (ec) return fail_connection(c, "read: " + ec.message());
      auto d = cn.buffer.cdata();
      on_frame(std::string_view(static_cast<const char*>(d.data()), d.size()));
      cn.buffer.consume(cn.buffer.size());
      if (!finished()) do_read(c);
    });
  }

  void on_token(int idx, clock_type::time_point now) {
    auto& r = st_.recs[size_t(idx)];
    if (r.chunks == 0) r.first = now;
    else r.itl_ms.push_back(ms(now - r.last));
    r.last = now;
    r.chunks++;
    st_.tokens++;
  }

  void end_request(int idx, clock_type::time_point now, bool ok, const std::string& code, const std::string& msg) {
    auto& r = st_.recs[size_t(idx)];
    if (r.ended) return;
    r.end = now;
    r.ended = true;
    r.ok = ok;
    st_.ended++;
    if (!ok) {
      st_.errors++;
      st_.error_codes[code]++;
      r.error = msg;
    }
    if (finished()) return stop();
    pump();
  }

  int frame_index(std::string_view id) const {
    if (id.size() < 2 || id[0] != 'b') return -1;
    int idx = -1;
    if (std::from_chars(id.data() + 1, id.data() + id.size(), idx).ec != std::errc{}) return -1;
    return idx >= 0 && idx < n_ ? idx : -1;
  }

  void on_frame(std::string_view text) {
    auto now = clock_type::now();
    // The hot path: a token frame of our own shape, without a JSON parse.
    constexpr std::string_view tok = R"({"type":"token","id":"b)";
    if (text.rfind(tok, 0) == 0) {
      int idx = -1;
      (void)std::from_chars(text.data() + tok.size(), text.data() + text.size(), idx);  // not NUL-terminated
      if (idx >= 0 && idx < n_ && !st_.recs[size_t(idx)].ended) on_token(idx, now);
      return;
    }
    json f = json::parse(text, nullptr, false);
    if (f.is_discarded() || !f.is_object() || !f.contains("type") || !f["type"].is_string()) return;
    std::string type = f["type"].get<std::string>();
    if (!f.contains("id") || !f["id"].is_string()) {
      fmt::print(stderr, "\ninfer-bench: server error without id: {}\n", std::string(text));
      return;
    }
    int idx = frame_index(f["id"].get<std::string>());
    if (idx < 0 || st_.recs[size_t(idx)].ended) return;
    auto& r = st_.recs[size_t(idx)];
    if (type == "token") {
      on_token(idx, now);
    } else if (type == "done" || type == "error") {
      if (f.contains("usage") && f["usage"].is_object()) {
        r.completion_tokens = f["usage"].value("completion_tokens", -1);
        r.prompt_tokens = f["usage"].value("prompt_tokens", -1);
      }
      end_request(idx, now, type == "done", f.value("code", "?"), f.value("message", ""));
    }
  }

  // One SSE data payload of a streamed completion.
  void on_sse_data(int idx, std::string_view p, clock_type::time_point now) override {
    auto& r = st_.recs[size_t(idx)];
    if (r.ended) return;
    if (p.find(R"("usage":{)") != std::string_view::npos || p.find(R"("usage": {)") != std::string_view::npos) {
      // The usage chunk (stream_options.include_usage): the server's token counts.
      if (auto v = scan_int(p, R"("completion_tokens")")) r.completion_tokens = int(*v);
      if (auto v = scan_int(p, R"("prompt_tokens")")) r.prompt_tokens = int(*v);
    }
    if (p.rfind(R"({"error")", 0) == 0) {
      json j = json::parse(p, nullptr, false);
      std::string code = "stream_error", msg(p);
      if (!j.is_discarded() && j["error"].is_object()) {
        if (j["error"].contains("code") && j["error"]["code"].is_string()) code = j["error"]["code"];
        if (j["error"].contains("message") && j["error"]["message"].is_string()) msg = j["error"]["message"];
      }
      r.error = msg;
      stream_error_[idx] = code;
      return;
    }
    if (p.find(R"("choices":[])") != std::string_view::npos) return;  // usage only
    // A token arrival: a chunk with text (vLLM's rule); completions also count inferd's
    // chunks whose token decoded to no text yet (finish_reason null), chat does not (its
    // first chunk carries only the role).
    bool token = api_ == api::chat
                     ? scan_nonempty_string(p, R"("content")")
                     : (scan_nonempty_string(p, R"("text")") || p.find(R"("finish_reason":null)") != std::string_view::npos);
    if (token) on_token(idx, now);
  }

  void on_http_end(int idx, clock_type::time_point now, bool ok, const std::string& code,
                   const std::string& error) override {
    auto it = stream_error_.find(idx);
    if (ok && it != stream_error_.end()) {
      std::string c = it->second;
      stream_error_.erase(it);
      return end_request(idx, now, false, c, st_.recs[size_t(idx)].error);
    }
    end_request(idx, now, ok, code, error);
  }

  bool finished() const { return st_.ended >= n_ || failed_; }

  void fail_connection(size_t c, const std::string& why) {
    auto& cn = *ws_[c];
    if (cn.dead || finished()) return;
    cn.dead = true;
    fmt::print(stderr, "\ninfer-bench: connection {} failed: {}\n", c, why);
    failed_ = true;
    stop();
  }

  void stop() {
    timer_.cancel();
    arrival_timer_.cancel();
    for (auto& c : ws_)
      if (!c->dead) c->close();
    for (auto& c : http_) c->close();
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
    int width = 30, filled = n_ ? int(int64_t(width) * st_.ended / n_) : width;
    std::string bar(size_t(filled), '#');
    bar.resize(size_t(width), '.');
    fmt::print(stderr, "\r[{}] {}/{} done, {} in flight, {} errors, {:.1f} req/s, {:.0f} tok/s, {:.1f}s   {}", bar,
               st_.ended, n_, st_.sent - st_.ended, st_.errors, el > 0 ? st_.ended / el : 0.0,
               el > 0 ? double(st_.tokens) / el : 0.0, el, last ? "\n" : "");
    std::fflush(stderr);
  }

  const options& o_;
  const url_parts& u_;
  api api_;
  std::vector<request_spec> specs_;
  std::vector<double> arrivals_;
  int n_;
  asio::io_context ioc_;
  ssl::context ctx_;
  asio::steady_timer timer_, arrival_timer_;
  tcp::resolver::results_type eps_;
  std::vector<std::unique_ptr<ws_connection>> ws_;
  std::vector<std::unique_ptr<http_connection>> http_;
  std::map<int, std::string> stream_error_;  // an error event inside a 200 stream
  stats st_;
  int next_ = 0, window_ = 1;
  bool failed_ = false, arrival_armed_ = false, quiet_ = false;
  bool show_progress_ = isatty(2) != 0;
  clock_type::time_point deadline_;
};

std::optional<slo> parse_goodput(const std::vector<std::string>& items, std::string& err) {
  slo s;
  for (auto& it : items) {
    auto c = it.find(':');
    std::string key = it.substr(0, c);
    double v = -1;
    try {
      if (c == std::string::npos) throw std::invalid_argument("no value");
      size_t used = 0;
      v = std::stod(it.substr(c + 1), &used);
      if (used != it.size() - c - 1 || !(v >= 0)) throw std::invalid_argument("not a number");
    } catch (const std::exception&) {
      err = fmt::format("--goodput: expected KEY:MILLISECONDS (ttft, tpot, e2el) with a value >= 0, got '{}'", it);
      return std::nullopt;
    }
    if (key == "ttft") s.ttft_ms = v;
    else if (key == "tpot") s.tpot_ms = v;
    else if (key == "e2el") s.e2el_ms = v;
    else {
      err = fmt::format("--goodput: unknown metric '{}' (ttft, tpot or e2el)", key);
      return std::nullopt;
    }
  }
  return s;
}

std::string utc_now() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char b[32];
  std::strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  options o;
  CLI::App app{"infer-bench: load generator for inferd's WebSocket protocol and OpenAI-compatible servers"};
  app.add_option("--url", o.url,
                 "ws(s)://HOST:PORT/v1/stream, or http(s)://HOST:PORT/v1/completions or .../v1/chat/completions")
      ->capture_default_str();
  app.add_option("--backend", o.backend, "ws, openai (completions), openai-chat; auto: from the URL")
      ->check(CLI::IsMember({"auto", "ws", "openai", "openai-chat"}))
      ->capture_default_str();
  app.add_option("--model", o.model, "the OpenAI request's model field (absent: the server's default)");
  app.add_option("--concurrency,-c,--max-concurrency", o.concurrency, "requests in flight at most")
      ->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--requests,-n,--num-prompts", o.requests, "requests in all")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--connections", o.connections, "WebSocket connections the requests are spread over")
      ->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--prompt-tokens", o.prompt_tokens, "prompt length in token ids (chat: in words)")
      ->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--prompt", o.prompt, "send this text prompt instead of token ids");
  app.add_option("--max-tokens", o.max_tokens, "tokens to generate per request")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--dataset,--dataset-name", o.dataset, "fixed (--prompt-tokens, --max-tokens) or random lengths")
      ->check(CLI::IsMember({"fixed", "random"}))
      ->capture_default_str();
  app.add_option("--random-input-len", o.random_input_len, "random dataset: mean prompt length (0: --prompt-tokens)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--random-output-len", o.random_output_len, "random dataset: mean new tokens (0: --max-tokens)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--random-range-ratio", o.random_range_ratio, "random dataset: lengths uniform in [L*(1-r), L*(1+r)]")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--request-rate", o.request_rate, "requests per second (inf: all at once)")
      ->check(CLI::PositiveNumber);
  app.add_option("--burstiness", o.burstiness, "gamma shape of the arrival gaps (1: Poisson; lower: burstier)")
      ->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--warmup", o.warmup, "requests run (and not measured) before the run")
      ->check(CLI::NonNegativeNumber)->capture_default_str();
  app.add_option("--goodput", o.goodput, "service-level limits in ms, as vLLM's: ttft:MS tpot:MS e2el:MS");
  app.add_option("--save-result", o.save_result, "write the summary, metadata and per-request rows to this JSON file");
  app.add_option("--metadata", o.metadata, "KEY=VALUE pairs recorded in --save-result's metadata");
  app.add_option("--token-range", o.token_range, "prompt ids are drawn from [0, N)")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--temperature", o.temperature, "sampling temperature")->capture_default_str();
  app.add_option("--seed", o.seed, "seed of request 0 (request i uses seed+i), of the dataset and the arrivals")
      ->capture_default_str();
  app.add_flag("--serial", o.serial, "one request at a time");
  app.add_flag("--json", o.json_out, "print the summary as JSON");
  app.add_flag("--progress", o.progress, "progress bar even when stderr is not a terminal");
  app.add_flag("--insecure", o.insecure, "wss/https: do not verify the server certificate");
  app.add_option("--api-key", o.api_key, "bearer token");
  app.add_option("--timeout-s", o.timeout_s, "give up after this many seconds")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  auto u = parse_url(o.url);
  if (!u) {
    fmt::print(stderr, "infer-bench: --url: expected ws(s)://HOST:PORT/PATH or http(s)://HOST:PORT/PATH, got {}\n", o.url);
    return 2;
  }
  api a = u->ws ? api::ws
                : (u->target.size() >= 17 && u->target.compare(u->target.size() - 17, 17, "/chat/completions") == 0
                       ? api::chat
                       : api::completions);
  if (o.backend == "ws") a = api::ws;
  else if (o.backend == "openai") a = api::completions;
  else if (o.backend == "openai-chat") a = api::chat;
  if ((a == api::ws) != u->ws) {
    fmt::print(stderr, "infer-bench: --backend {} needs a {} URL, got {}\n", o.backend,
               a == api::ws ? "ws:// or wss://" : "http:// or https://", o.url);
    return 2;
  }
  std::string err;
  auto limits = parse_goodput(o.goodput, err);
  if (!limits) {
    fmt::print(stderr, "infer-bench: {}\n", err);
    return 2;
  }
  json meta = json::object();
  for (auto& kv : o.metadata) {
    auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) {
      fmt::print(stderr, "infer-bench: --metadata: expected KEY=VALUE, got '{}'\n", kv);
      return 2;
    }
    meta[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  if (o.warmup > 0) {
    // Warm-up: the same kind of requests (other prompts), all at once within the window; the
    // server's first-use costs (graph captures, allocations) land here, not in the figures.
    options w = o;
    w.request_rate = std::numeric_limits<double>::infinity();
    bench wb(w, *u, a, make_specs(w, o.warmup, o.seed + 0x5eed, a == api::chat), make_arrivals(w, o.warmup), true);
    if (wb.run() != 0) {
      json s = wb.summary(nullptr, {});
      fmt::print(stderr, "infer-bench: warm-up failed ({} of {} ok): {}\n", s["completed"].get<int>(), o.warmup,
                 s["error_codes"].dump());
      return 1;
    }
  }
  bench b(o, *u, a, make_specs(o, o.requests, o.seed, a == api::chat), make_arrivals(o, o.requests), false);
  if (o.progress) b.force_progress(true);
  int rc = b.run();
  json rows = json::array();
  json out = b.summary(o.save_result.empty() ? nullptr : &rows, *limits);
  if (o.json_out) fmt::print("{}\n", out.dump(2));
  else bench::print_summary(out);
  if (!o.save_result.empty()) {
    json m = meta;
    m["date"] = utc_now();
    m["tool"] = "infer-bench";
    m["argv"] = json::array();
    for (int i = 0; i < argc; ++i) m["argv"].push_back(argv[i]);
    m["warmup_requests"] = o.warmup;
    m["seed"] = o.seed;
    m["temperature"] = o.temperature;
    if (o.dataset == "random") {
      m["random_input_len"] = o.random_input_len > 0 ? o.random_input_len : o.prompt_tokens;
      m["random_output_len"] = o.random_output_len > 0 ? o.random_output_len : o.max_tokens;
      m["random_range_ratio"] = o.random_range_ratio;
    }
    if (!o.model.empty()) m["model"] = o.model;
    json file = {{"metadata", m}, {"summary", out}, {"requests", rows}};
    std::ofstream f(o.save_result);
    f << file.dump(1) << "\n";
    if (!f) {
      fmt::print(stderr, "infer-bench: --save-result: cannot write {}\n", o.save_result);
      return 1;
    }
  }
  return rc;
}
