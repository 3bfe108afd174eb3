// Structure follows Boost.Beast's advanced server examples: listener -> http_session
// (-> ws_session on upgrade), do_X / on_X pairs, every handler opens with its error
// path, each connection on its own strand. Both session kinds are templates over the
// byte stream (plain TCP or TLS).
//
// Bridge to the service: submit() gets a callback that runs on a CAF thread and only
// posts the event to the connection's strand. The callback holds the session strongly,
// so a session lives until each of its requests has had its one terminal event (the
// service guarantees it), and the outcome of every request is logged exactly once.
#include "net/server.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <boost/asio.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>
#include <chrono>
#include <deque>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unistd.h>
#include <mutex>
#include <random>
#include <thread>

#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unordered_map>

#include "actors/metrics.hpp"
#include "actors/service.hpp"
#include "engine/tokenizer.hpp"
#include "net/chat.hpp"
#include "net/protocol.hpp"
#include "net/rate-limiter.hpp"
#include "web/static-files.hpp"

namespace infer::net {

namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
namespace asio = boost::asio;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;

namespace {

using plain_stream = beast::tcp_stream;
using tls_stream = beast::ssl_stream<beast::tcp_stream>;
template <class S>
constexpr bool is_tls = std::is_same_v<S, tls_stream>;

constexpr const char* server_name = "inferd";

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

// Ids a client cannot guess from its own (completion ids, generated X-Request-Id): 128 random
// bits as hex, from a per-thread generator seeded by the OS.
std::string random_id() {
  thread_local std::mt19937_64 gen = [] {
    std::random_device rd;
    std::seed_seq seq{rd(), rd(), rd(), rd(), rd(), rd(), rd(), rd()};
    return std::mt19937_64(seq);
  }();
  return fmt::format("{:016x}{:016x}", gen(), gen());
}

// A client's X-Request-Id kept if it is printable ASCII of at most 128 bytes (it goes into
// headers and logs); otherwise, or when absent, a fresh one.
std::string request_id_of(std::string_view given) {
  bool ok = !given.empty() && given.size() <= 128;
  for (char c : given) ok = ok && c > 0x20 && c < 0x7f && c != '"' && c != '\\';
  return ok ? std::string(given) : random_id();
}

// The standard process_* families (Prometheus client libraries' names), from /proc: what
// dashboards and alerts written for any exporter plot. Nothing is written when /proc is absent.
std::string process_metrics() {
  std::string out;
  std::ifstream f("/proc/self/stat");
  std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const size_t rp = stat.rfind(')');  // the command name may hold spaces and parentheses
  if (rp == std::string::npos) return out;
  std::istringstream in(stat.substr(rp + 2));
  std::vector<std::string> v;  // from field 3 (state) on
  for (std::string x; in >> x;) v.push_back(x);
  if (v.size() < 22) return out;
  const double tick = double(::sysconf(_SC_CLK_TCK));
  const double page = double(::sysconf(_SC_PAGESIZE));
  const double cpu = (std::stod(v[11]) + std::stod(v[12])) / tick;  // utime + stime
  const double start_ticks = std::stod(v[19]);
  const double vsize = std::stod(v[20]), rss = std::stod(v[21]) * page;
  double boot = 0;
  {
    std::ifstream s("/proc/stat");
    for (std::string line; std::getline(s, line);)
      if (line.rfind("btime ", 0) == 0) boot = std::stod(line.substr(6));
  }
  int64_t fds = 0;
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator("/proc/self/fd", ec); !ec && it != std::filesystem::directory_iterator();
       it.increment(ec))
    ++fds;
  rlimit rl{};
  const bool have_rl = ::getrlimit(RLIMIT_NOFILE, &rl) == 0;
  fmt::format_to(std::back_inserter(out),
                 "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
                 "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {:g}\n"
                 "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
                 "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {:.0f}\n"
                 "# HELP process_virtual_memory_bytes Virtual memory size in bytes.\n"
                 "# TYPE process_virtual_memory_bytes gauge\nprocess_virtual_memory_bytes {:.0f}\n"
                 "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n"
                 "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {:.2f}\n"
                 "# HELP process_open_fds Number of open file descriptors.\n"
                 "# TYPE process_open_fds gauge\nprocess_open_fds {}\n",
                 cpu, rss, vsize, boot + start_ticks / tick, fds);
  if (have_rl && rl.rlim_cur != RLIM_INFINITY)
    fmt::format_to(std::back_inserter(out),
                   "# HELP process_max_fds Maximum number of open file descriptors.\n"
                   "# TYPE process_max_fds gauge\nprocess_max_fds {}\n",
                   uint64_t(rl.rlim_cur));
  return out;
}

// A rejection decided by net itself (never submitted) still counts in
// infer_requests_total{outcome}, like those the service decides.
void count_rejection(service* svc, error_code c) {
  if (svc) svc->stats().count_outcome(to_string(c));
}

// How long a connection closing for a slow client may take to get its close frame out
// before the socket is closed under it (the client may never read again).
constexpr auto slow_close_grace = std::chrono::seconds(10);

// One slot of server.max_connections, released when the connection's last session ends.
// Also the connection's share of server.max_connections_per_client when `client` is set.
class connection_slot {
 public:
  explicit connection_slot(server_state* st, std::string client = {}) : st_(st), client_(std::move(client)) {}
  connection_slot(connection_slot&& o) noexcept : st_(std::exchange(o.st_, nullptr)), client_(std::move(o.client_)) {}
  connection_slot& operator=(connection_slot&&) = delete;
  ~connection_slot() {
    if (!st_) return;
    st_->connections.fetch_sub(1, std::memory_order_relaxed);
    if (client_.empty()) return;
    std::lock_guard<std::mutex> lk(st_->per_client_mu);
    auto it = st_->per_client.find(client_);
    if (it != st_->per_client.end() && --it->second <= 0) st_->per_client.erase(it);
  }

 private:
  server_state* st_;
  std::string client_;
};

// The request parser with the limits Beast's own lacks. Beast stores a field's name and
// value with 16-bit offsets and throws std::length_error past 65,533 bytes (a header of that
// size once server.max_header_bytes is raised, or any trailer field, which header_limit does
// not cover); this turns such a field into error::header_limit instead. Trailer fields count
// with the header's fields against max_header_bytes, and chunk extensions count with the
// chunk data against the body limit (Beast counts the data only).
class request_parser final : public http::request_parser<http::string_body> {
 public:
  request_parser(uint64_t field_budget, uint64_t body_budget) : field_budget_(field_budget), body_budget_(body_budget) {
    header_limit(uint32_t(std::min<uint64_t>(field_budget, UINT32_MAX)));
    body_limit(body_budget);
  }

 private:
  static constexpr size_t max_field_part = 65533;  // beast::http::basic_fields' off_t is 16 bits, minus ": "

  void on_field_impl(http::field name, beast::string_view name_string, beast::string_view value,
                     beast::error_code& ec) override {
    field_bytes_ += name_string.size() + value.size() + 4;  // ": " and CRLF
    if (name_string.size() > max_field_part || value.size() > max_field_part || field_bytes_ > field_budget_) {
      ec = http::error::header_limit;
      return;
    }
    get().insert(name, name_string, value);
  }

  void on_chunk_header_impl(std::uint64_t size, beast::string_view extensions, beast::error_code& ec) override {
    body_bytes_ += size + extensions.size();
    if (body_bytes_ > body_budget_) ec = http::error::body_limit;
  }

  uint64_t field_budget_, body_budget_;
  uint64_t field_bytes_ = 0, body_bytes_ = 0;
};

std::string_view sv(beast::string_view s) { return {s.data(), s.size()}; }

std::string_view path_of(beast::string_view target) {
  std::string_view t = sv(target);
  auto q = t.find('?');
  return q == std::string_view::npos ? t : t.substr(0, q);
}

bool key_matches(const std::string& key, std::string_view tok) {
  // Constant time in the key's length: do not leak how many bytes matched.
  unsigned diff = tok.size() != key.size();
  for (size_t i = 0; i < key.size(); ++i) diff |= unsigned(uint8_t(key[i]) ^ uint8_t(i < tok.size() ? tok[i] : 0));
  return diff == 0;
}

template <class Body>
bool authorized(const server_state& st, const http::request<Body>& req) {
  const std::string& key = st.cfg.api_key;
  if (key.empty()) return true;
  auto it = req.find(http::field::authorization);
  if (it == req.end()) return false;
  std::string_view v = sv(it->value());
  if (v.size() < 7 || !beast::iequals(v.substr(0, 7), "Bearer ")) return false;
  return key_matches(key, v.substr(7));
}

// WebSocket subprotocols. A browser cannot set Authorization on the upgrade request, but
// it can offer subprotocols: "bearer.KEY" carries the API key. The answer must name one
// of those offered (else the browser fails the connection): "inferd.v1" when offered, so
// that the key is not echoed, else the bearer one.
constexpr std::string_view ws_protocol_name = "inferd.v1";
constexpr std::string_view ws_bearer_prefix = "bearer.";

struct ws_offer {
  bool key_ok = false;    // a bearer.KEY with the right key was offered
  std::string selected;   // the subprotocol to answer with, empty: none
};

template <class Body>
ws_offer read_ws_offer(const server_state& st, const http::request<Body>& req) {
  ws_offer out;
  std::string bearer;
  for (const auto& f : req) {  // the header may come more than once
    if (f.name() != http::field::sec_websocket_protocol) continue;
    std::string_view list = sv(f.value());
    while (!list.empty()) {
      size_t comma = list.find(',');
      std::string_view p = list.substr(0, comma);
      list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 1);
      while (!p.empty() && (p.front() == ' ' || p.front() == '\t')) p.remove_prefix(1);
      while (!p.empty() && (p.back() == ' ' || p.back() == '\t')) p.remove_suffix(1);
      if (p == ws_protocol_name) {
        out.selected = std::string(p);
      } else if (p.size() > ws_bearer_prefix.size() && p.substr(0, ws_bearer_prefix.size()) == ws_bearer_prefix) {
        // Without a configured key any key will do: a page may always send the one it has.
        if (st.cfg.api_key.empty() || key_matches(st.cfg.api_key, p.substr(ws_bearer_prefix.size()))) {
          out.key_ok = true;
          bearer = std::string(p);
        }
      }
    }
  }
  if (out.selected.empty()) out.selected = std::move(bearer);
  return out;
}

// Log values in key="..." form stay one line and unambiguous.
std::string q(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (c == '"' || c == '\\') out.push_back('\\'), out.push_back(c);
    else if (c == '\n') out += "\\n";
    else if (uint8_t(c) < 0x20) out.push_back(' ');
    else out.push_back(c);
  }
  return out;
}

std::string outcome_name(const event& e) {
  if (e.type == event::kind::done) {
    return e.reason == finish_reason::cancelled ? "cancelled" : fmt::format("done_{}", to_string(e.reason));
  }
  return to_string(e.code);
}

// `request_id`: the HTTP request's X-Request-Id (WebSocket requests have their own ids).
void log_outcome(uint64_t conn, std::string_view api, std::string_view id, uint64_t rid, const event& e,
                 std::string_view request_id = {}) {
  std::string xrid = request_id.empty() ? std::string() : fmt::format(" request_id={}", request_id);
  if (e.type == event::kind::done) {
    spdlog::info(
        "request id={}{} conn={} rid={} api={} outcome={} prompt_tokens={} completion_tokens={} queue_ms={:.2f} "
        "ttft_ms={:.2f} total_ms={:.2f}",
        q(id), xrid, conn, rid, api, outcome_name(e), e.prompt_tokens, e.completion_tokens, e.queue_ms,
        e.first_token_ms, e.total_ms);
  } else {
    spdlog::info("request id={}{} conn={} rid={} api={} outcome={} message=\"{}\"", q(id), xrid, conn, rid, api,
                 outcome_name(e), q(e.message));
  }
}

// The callback handed to service::submit: runs on a CAF thread, only posts.
template <class Session, class Tag>
event_callback post_to(std::shared_ptr<Session> s, std::shared_ptr<Tag> tag) {
  return [s = std::move(s), tag = std::move(tag)](const event& e) {
    asio::post(s->executor(), [s, tag, e]() { s->on_event(tag, e); });
  };
}

// ---- WebSocket session -------------------------------------------------------------------

template <class Stream>
class ws_session : public std::enable_shared_from_this<ws_session<Stream>> {
 public:
  ws_session(Stream&& s, server_state& st, connection_slot slot, uint64_t conn, std::string client)
      : ws_(std::move(s)), st_(st), slot_(std::move(slot)), conn_(conn), client_(std::move(client)),
        close_timer_(ws_.get_executor()) {}

  auto executor() { return ws_.get_executor(); }

  void run(http::request<http::string_body> req, std::string subprotocol) {
    websocket::stream_base::timeout t = websocket::stream_base::timeout::suggested(beast::role_type::server);
    t.idle_timeout = st_.idle();
    t.keep_alive_pings = true;  // a quiet but alive client answers pings; a dead one times out
    ws_.set_option(t);
    // The handshake's answer carries X-Request-Id like every HTTP response (the requests on
    // the socket then have their own ids).
    auto given = req.find("X-Request-Id");
    std::string rid = request_id_of(given != req.end() ? sv(given->value()) : std::string_view());
    ws_.set_option(websocket::stream_base::decorator([subprotocol, rid](websocket::response_type& res) {
      res.set(http::field::server, server_name);
      res.set("X-Request-Id", rid);
      if (!subprotocol.empty()) res.set(http::field::sec_websocket_protocol, subprotocol);
    }));
    ws_.read_message_max(size_t(st_.cfg.max_frame_bytes));
    ws_.async_accept(req, beast::bind_front_handler(&ws_session::on_accept, this->shared_from_this()));
  }

  struct live {
    std::string id;
    uint64_t rid = 0;
    int32_t next_index = 0;
    bool first_sent = false;  // its accepted (or the error ending it) is out
    int32_t duplicates = 0;   // generate frames with its id refused before that: answered after it
    bool rendering = false;  // a chat request whose template runs on the render pool: not submitted yet
    bool cancel_pending = false;
  };

  static std::string duplicate_frame(const std::string& id) {
    return error_frame(id, error_code::invalid_request,
                       fmt::format("id: \"{}\" is already in flight on this connection: this generate is refused, "
                                   "the request in flight with that id goes on",
                                   id));
  }

  void on_event(const std::shared_ptr<live>& lr, const event& e) {
    auto it = live_.find(lr->id);
    if (it == live_.end() || it->second != lr) return;  // not ours any more: drop
    switch (e.type) {
      case event::kind::accepted: send(accepted_frame(lr->id)); break;
      case event::kind::token: {
        if (e.index != lr->next_index)
          spdlog::warn("request id={} conn={} rid={} token index {} where {} was due", q(lr->id), conn_, lr->rid,
                       e.index, lr->next_index);
        lr->next_index = e.index + 1;
        std::string frame;
        token_frame(frame, lr->id, e.index, e.token, e.text, &e);
        send(std::move(frame));
        break;
      }
      case event::kind::done: send(done_frame(lr->id, e)); break;
      case event::kind::error: send(error_frame(lr->id, e.code, e.message, e.retry_after_ms)); break;
    }
    if (!lr->first_sent) {
      // A duplicate's refusal never precedes the first frame of the request it duplicates,
      // so a client cannot take it for that request's end before it even began.
      lr->first_sent = true;
      for (; lr->duplicates > 0; --lr->duplicates) send(duplicate_frame(lr->id));
    }
    if (e.terminal()) {
      log_outcome(conn_, "ws", lr->id, lr->rid, e);
      live_.erase(it);
    }
  }

 private:
  void on_accept(beast::error_code ec) {
    if (ec) {
      spdlog::debug("conn={} websocket handshake failed: {}", conn_, ec.message());
      return;
    }
    spdlog::debug("conn={} websocket open", conn_);
    do_read();
  }

  void do_read() {
    ws_.async_read(buffer_, beast::bind_front_handler(&ws_session::on_read, this->shared_from_this()));
  }

  void on_read(beast::error_code ec, size_t) {
    if (ec) {
      // Closed by the peer, timed out, or a protocol violation such as an oversize
      // message (Beast has then already sent the close frame with the right code).
      if (ec != websocket::error::closed && !slow_)
        spdlog::info("conn={} websocket ended: {} ({} live requests cancelled)", conn_, ec.message(), live_.size());
      closed_ = true;
      cancel_all();
      return;
    }
    if (!ws_.got_text()) {
      buffer_.consume(buffer_.size());
      spdlog::info("conn={} binary frame: closing with 1003 ({} live requests cancelled)", conn_, live_.size());
      closed_ = true;
      cancel_all();
      ws_.async_close(websocket::close_reason(websocket::close_code::unknown_data, "binary frames are not supported"),
                      beast::bind_front_handler(&ws_session::on_close, this->shared_from_this()));
      return;
    }
    auto data = buffer_.cdata();
    handle_frame(std::string_view(static_cast<const char*>(data.data()), data.size()));
    buffer_.consume(buffer_.size());
    do_read();
  }

  void on_close(beast::error_code ec) {
    close_timer_.cancel();
    if (ec) spdlog::debug("conn={} close: {}", conn_, ec.message());
  }

  void handle_frame(std::string_view frame) {
    service* svc = st_.current();
    command cmd = parse_command(frame, svc ? st_.limits : protocol_limits{});
    if (auto* bad = std::get_if<invalid_request>(&cmd)) {
      spdlog::info("request id={} conn={} api=ws outcome=invalid_request message=\"{}\"",
                   bad->id ? q(*bad->id) : "null", conn_, q(bad->message));
      count_rejection(svc, error_code::invalid_request);
      send(error_frame(bad->id, error_code::invalid_request, bad->message));
      return;
    }
    if (auto* c = std::get_if<cancel_command>(&cmd)) {
      // Idempotent: a request that already ended (or never existed) has nothing to cancel.
      auto it = live_.find(c->id);
      if (it != live_.end() && it->second->rendering) it->second->cancel_pending = true;
      else if (it != live_.end() && svc) svc->cancel(it->second->rid);
      return;
    }
    auto& g = std::get<generate_command>(cmd);
    if (!svc) {
      spdlog::info("request id={} conn={} api=ws outcome=unavailable message=\"model loading\"", q(g.id), conn_);
      send(error_frame(g.id, error_code::unavailable, "the model is not loaded yet"));
      return;
    }
    if (!st_.serves(g.model)) {
      std::string msg = model_not_found_message(g.model, st_.model_names);
      spdlog::info("request id={} conn={} api=ws outcome=invalid_request message=\"{}\"", q(g.id), conn_, q(msg));
      count_rejection(svc, error_code::invalid_request);
      send(model_not_found_frame(g.id, msg));
      return;
    }
    if (auto dup = live_.find(g.id); dup != live_.end()) {
      spdlog::info("request id={} conn={} api=ws outcome=invalid_request message=\"duplicate id\"", q(g.id), conn_);
      count_rejection(svc, error_code::invalid_request);
      if (dup->second->first_sent) send(duplicate_frame(g.id));
      else ++dup->second->duplicates;
      return;
    }
    if (int64_t(live_.size()) >= st_.cfg.max_inflight_per_connection) {
      spdlog::info("request id={} conn={} api=ws outcome=rate_limited message=\"connection in-flight limit\"", q(g.id),
                   conn_);
      count_rejection(svc, error_code::rate_limited);
      send(error_frame(g.id, error_code::rate_limited,
                       fmt::format("at most {} requests in flight per connection",
                                   st_.cfg.max_inflight_per_connection),
                       100));
      return;
    }
    if (int64_t wait = st_.rate_limit(client_)) {
      spdlog::info("request id={} conn={} client={} api=ws outcome=rate_limited message=\"client rate limit\" "
                   "retry_after_ms={}",
                   q(g.id), conn_, client_, wait);
      count_rejection(svc, error_code::rate_limited);
      send(error_frame(g.id, error_code::rate_limited, st_.rate_limit_message(wait), wait));
      return;
    }
    auto lr = std::make_shared<live>();
    lr->id = g.id;
    live_.emplace(g.id, lr);
    if (g.chat) return render_chat(lr, std::move(g));
    // Events are posted to this strand, so none is handled before rid is set.
    lr->rid = svc->submit(std::move(g.request), post_to(this->shared_from_this(), lr));
  }

  // `messages` instead of a prompt: the template runs on the render pool, the request is
  // submitted back on this strand (it holds the live entry, so its id stays taken and it
  // counts in flight meanwhile).
  void render_chat(std::shared_ptr<live> lr, generate_command g) {
    service* svc = st_.current();
    auto tpl = st_.chat;
    if (!tpl) {
      live_.erase(lr->id);
      count_rejection(svc, error_code::invalid_request);
      send(error_frame(lr->id, error_code::invalid_request, no_chat_template_message()));
      return;
    }
    lr->rendering = true;
    auto job = std::make_shared<generate_command>(std::move(g));
    const tokenizer* tok = &svc->tok();
    asio::post(*st_.blocking, [self = this->shared_from_this(), lr, job, tpl, tok]() {
      auto ids = tpl->render_tokens(*job->chat, *tok, false);
      asio::post(self->executor(), [self, lr, job, ids = std::move(ids)]() mutable {
        self->on_chat_rendered(lr, std::move(*job), std::move(ids));
      });
    });
  }

  void on_chat_rendered(const std::shared_ptr<live>& lr, generate_command g, result<std::vector<int32_t>> ids) {
    lr->rendering = false;
    auto it = live_.find(lr->id);
    if (it == live_.end() || it->second != lr) return;
    service* svc = st_.current();
    std::string why;
    if (!ids) why = ids.error().message;
    else if (ids.value().empty()) why = "messages: the chat template made an empty prompt";
    else if (int64_t(ids.value().size()) >= st_.limits.n_ctx)
      why = fmt::format("messages: the prompt is {} tokens, longer than the context allows ({} tokens)",
                        ids.value().size(), st_.limits.n_ctx);
    if (closed_ || !svc) {  // the connection went away meanwhile: nothing was submitted
      live_.erase(it);
      return;
    }
    if (!why.empty()) {
      spdlog::info("request id={} conn={} api=ws outcome=invalid_request message=\"{}\"", q(lr->id), conn_, q(why));
      count_rejection(svc, error_code::invalid_request);
      live_.erase(it);
      send(error_frame(lr->id, error_code::invalid_request, why));
      return;
    }
    g.request.prompt_tokens = std::move(ids.value());
    lr->rid = svc->submit(std::move(g.request), post_to(this->shared_from_this(), lr));
    if (lr->cancel_pending) svc->cancel(lr->rid);
  }

  void cancel_all() {
    service* svc = st_.current();
    if (!svc) return;
    for (auto& [id, lr] : live_) svc->cancel(lr->rid);
  }

  void send(std::string frame) {
    if (closed_) return;
    if (pending_bytes_ + frame.size() > st_.max_pending_bytes()) return too_slow(pending_bytes_ + frame.size());
    pending_bytes_ += frame.size();
    out_.push_back(std::move(frame));
    if (!writing_) do_write();
  }

  // The client does not read its frames: rather than buffer without bound, cancel its
  // requests (their KV blocks go back to the pool now, not when they would have ended)
  // and close with 1008. The close frame goes out after the frame being written, if the
  // client ever reads again; if not, the grace timer closes the socket.
  void too_slow(size_t would_be_pending) {
    spdlog::warn("conn={} client={} too slow ({} bytes pending, limit {}): {} live requests cancelled, closing with 1008",
                 conn_, client_, would_be_pending, st_.max_pending_bytes(), live_.size());
    st_.slow_clients.fetch_add(1, std::memory_order_relaxed);
    closed_ = true;
    slow_ = true;
    cancel_all();
    // Frames not started are dropped; the one being written must stay alive until its handler.
    if (writing_) {
      out_.erase(std::next(out_.begin()), out_.end());
      pending_bytes_ = out_.front().size();
    } else {
      out_.clear();
      pending_bytes_ = 0;
    }
    close_timer_.expires_after(slow_close_grace);
    close_timer_.async_wait([self = this->shared_from_this()](beast::error_code ec) {
      if (ec) return;  // cancelled: the close handshake finished
      beast::error_code ignored;
      beast::get_lowest_layer(self->ws_).socket().close(ignored);
    });
    ws_.async_close(websocket::close_reason(websocket::close_code::policy_error,
                                            fmt::format("client too slow: more than {} bytes unread",
                                                        st_.max_pending_bytes())),
                    beast::bind_front_handler(&ws_session::on_close, this->shared_from_this()));
  }

  void do_write() {
    writing_ = true;
    // More frames behind this one (a step's tokens of many requests): the socket is corked
    // until the queue drains, so that the burst leaves in full segments with one transmit
    // instead of one per frame (on loopback each transmit also runs the receiver's side).
    set_cork(out_.size() > 1);
    ws_.text(true);
    ws_.async_write(asio::buffer(out_.front()),
                    beast::bind_front_handler(&ws_session::on_write, this->shared_from_this()));
  }

  void on_write(beast::error_code ec, size_t) {
    writing_ = false;
    if (ec) {
      spdlog::debug("conn={} write failed: {}", conn_, ec.message());
      closed_ = true;
      cancel_all();
      out_.clear();
      return;
    }
    pending_bytes_ -= out_.front().size();
    out_.pop_front();
    if (!out_.empty() && !closed_) return do_write();
    set_cork(false);  // pushes out what the cork held
  }

  void set_cork(bool on) {
    if (on == corked_) return;
    corked_ = on;
    int v = on ? 1 : 0;
    ::setsockopt(beast::get_lowest_layer(ws_).socket().native_handle(), IPPROTO_TCP, TCP_CORK, &v, sizeof v);
  }

  websocket::stream<Stream> ws_;
  beast::flat_buffer buffer_;
  server_state& st_;
  connection_slot slot_;
  uint64_t conn_;
  std::string client_;  // the peer's IP address: the rate limit's key
  asio::steady_timer close_timer_;
  std::deque<std::string> out_;
  size_t pending_bytes_ = 0;
  bool writing_ = false;
  bool corked_ = false;  // TCP_CORK set while a burst of frames is written
  bool closed_ = false;  // no more frames go out
  bool slow_ = false;    // closing for a slow client
  std::unordered_map<std::string, std::shared_ptr<live>> live_;
};

// ---- HTTP session ------------------------------------------------------------------------

template <class Stream>
class http_session : public std::enable_shared_from_this<http_session<Stream>> {
 public:
  http_session(Stream&& s, server_state& st, connection_slot slot, uint64_t conn, std::string client)
      : stream_(std::move(s)), buffer_(st.max_buffered_bytes()), st_(st), slot_(std::move(slot)), conn_(conn),
        client_(std::move(client)) {}

  auto executor() { return stream_.get_executor(); }

  void run() {
    if constexpr (is_tls<Stream>) {
      beast::get_lowest_layer(stream_).expires_after(std::chrono::seconds(30));
      stream_.async_handshake(ssl::stream_base::server,
                              beast::bind_front_handler(&http_session::on_handshake, this->shared_from_this()));
    } else {
      asio::dispatch(stream_.get_executor(),
                     beast::bind_front_handler(&http_session::do_read, this->shared_from_this()));
    }
  }

  // One OpenAI completion in progress on this connection (no pipelining meanwhile).
  struct completion_state {
    uint64_t rid = 0;
    bool chat = false;  // /v1/chat/completions: chat.completion objects
    bool stream = false, include_usage = false, keep_alive = true, chunked = true;
    bool headers_sent = false, finished = false, client_gone = false;
    std::string cmpl_id, model, text, request_id;
    int64_t created = 0;
    std::string echo;                   // completions' echo: the prompt text, sent first
    const tokenizer* tok = nullptr;     // the tokens' bytes for logprobs
    logprobs_builder lp;                // the whole choice's (non-streamed) or one chunk's

    logprobs_builder::bytes_fn bytes() const {
      return [t = tok](int32_t id) { return t ? t->token_bytes(id) : std::string_view(); };
    }
    // The chunk's logprobs: this token's only (the builder keeps the running text offset).
    std::string chunk_logprobs(const event& e) {
      if (e.n_top < 0) return {};
      lp.clear_tokens();
      lp.add(e, bytes());
      return lp.json();
    }
  };

  void on_event(const std::shared_ptr<completion_state>& c, const event& e) {
    if (c != cur_) return;
    if (e.terminal()) log_outcome(conn_, c->chat ? "chat" : "openai", c->cmpl_id, c->rid, e, c->request_id);
    if (c->client_gone) {
      if (e.terminal()) cur_.reset();
      return;
    }
    if (c->chat) return on_chat_event(*c, e);
    switch (e.type) {
      case event::kind::accepted:
        if (c->stream) {
          send_sse_headers(*c);
          if (!c->echo.empty()) send_sse(*c, openai_chunk_json(c->cmpl_id, c->created, c->model, c->echo, nullptr));
        }
        break;
      case event::kind::token:
        if (c->stream) {
          send_sse(*c, openai_chunk_json(c->cmpl_id, c->created, c->model, e.text, nullptr, c->chunk_logprobs(e)));
        } else {
          c->text += e.text;
          c->lp.add(e, c->bytes());
        }
        break;
      case event::kind::done:
        if (c->stream) {
          send_sse(*c, openai_final_chunk_json(c->cmpl_id, c->created, c->model, e));
          if (c->include_usage) send_sse(*c, openai_usage_chunk_json(c->cmpl_id, c->created, c->model, e));
          end_sse(*c);
        } else {
          c->finished = true;
          const std::string lp = c->lp.empty() ? std::string() : c->lp.json();
          respond(http::status::ok,
                  openai_completion_json(c->cmpl_id, c->created, c->model, c->echo + c->text, e, lp),
                  "application/json", c->keep_alive, true);
        }
        break;
      case event::kind::error:
        if (c->stream && c->headers_sent) {
          send_sse(*c, openai_error_json(e.code, e.message));
          end_sse(*c);
        } else {
          c->finished = true;
          respond(http::status(http_status(e.code)), openai_error_json(e.code, e.message, e.retry_after_ms),
                  "application/json", c->keep_alive, true, e.retry_after_ms);
        }
        break;
    }
  }

  // The chat flavour of on_event: the role in the first delta, no empty content deltas.
  void on_chat_event(completion_state& c, const event& e) {
    switch (e.type) {
      case event::kind::accepted:
        if (c.stream) send_sse(c, openai_chat_chunk_json(c.cmpl_id, c.created, c.model, true, "", nullptr));
        break;
      case event::kind::token:
        if (!c.stream) {
          c.text += e.text;
          c.lp.add(e, c.bytes());
        } else if (!e.text.empty() || e.n_top >= 0) {  // every token's logprobs go out
          send_sse(c, openai_chat_chunk_json(c.cmpl_id, c.created, c.model, false, e.text, nullptr,
                                             c.chunk_logprobs(e)));
        }
        break;
      case event::kind::done:
        if (c.stream) {
          send_sse(c, openai_chat_final_chunk_json(c.cmpl_id, c.created, c.model, e));
          if (c.include_usage) send_sse(c, openai_chat_usage_chunk_json(c.cmpl_id, c.created, c.model, e));
          end_sse(c);
        } else {
          c.finished = true;
          const std::string lp = c.lp.empty() ? std::string() : c.lp.json();
          respond(http::status::ok, openai_chat_json(c.cmpl_id, c.created, c.model, c.text, e, lp),
                  "application/json", c.keep_alive, true);
        }
        break;
      case event::kind::error:
        if (c.stream && c.headers_sent) {
          send_sse(c, openai_error_json(e.code, e.message));
          end_sse(c);
        } else {
          c.finished = true;
          respond(http::status(http_status(e.code)), openai_error_json(e.code, e.message, e.retry_after_ms),
                  "application/json", c.keep_alive, true, e.retry_after_ms);
        }
        break;
    }
  }

 private:
  void on_handshake(beast::error_code ec) {
    if (ec) {
      spdlog::debug("conn={} TLS handshake failed: {}", conn_, ec.message());
      return;
    }
    do_read();
  }

  void do_read() {
    parser_.emplace(uint64_t(std::max<int64_t>(st_.cfg.max_header_bytes, 1)), uint64_t(st_.cfg.max_frame_bytes));
    if (heads_read_ > 0 && buffer_.size() == 0) {
      // A keep-alive connection may wait idle_timeout_ms for its next request; the head's own
      // clock (header_timeout_ms) starts with that request's first byte.
      beast::get_lowest_layer(stream_).expires_after(st_.idle());
      stream_.async_read_some(buffer_.prepare(4096),
                              beast::bind_front_handler(&http_session::on_first_byte, this->shared_from_this()));
      return;
    }
    read_head();
  }

  void on_first_byte(beast::error_code ec, size_t n) {
    if (ec) return on_read(ec == asio::error::eof ? beast::error_code(http::error::end_of_stream) : ec, 0);
    buffer_.commit(n);
    read_head();
  }

  // The whole head within header_timeout_ms, however slowly it trickles in (slowloris).
  void read_head() {
    beast::get_lowest_layer(stream_).expires_after(st_.header_timeout());
    http::async_read_header(stream_, buffer_, *parser_,
                            beast::bind_front_handler(&http_session::on_header, this->shared_from_this()));
  }

  // Header first, so that a client waiting for "100 Continue" (curl, for bodies over
  // 1 KiB) gets it at once instead of sending its body after a pause.
  void on_header(beast::error_code ec, size_t n) {
    if (ec == beast::error::timeout)
      spdlog::info("conn={} client={} request head incomplete after server.header_timeout_ms ({} ms): closing", conn_,
                   client_, st_.cfg.header_timeout_ms);
    if (ec) return on_read(ec, n);
    ++heads_read_;
    beast::get_lowest_layer(stream_).expires_after(st_.idle());  // the body: the idle time again
    auto& req = parser_->get();
    auto expect = req.find(http::field::expect);
    if (!parser_->is_done() && expect != req.end() && beast::iequals(expect->value(), "100-continue")) {
      static const std::string cont = "HTTP/1.1 100 Continue\r\n\r\n";
      return asio::async_write(stream_, asio::buffer(cont),
                               [self = this->shared_from_this()](beast::error_code ec, size_t n) {
                                 if (ec) return self->on_read(ec, n);
                                 self->read_body();
                               });
    }
    if (parser_->is_done()) return on_read(ec, n);
    read_body();
  }

  void read_body() {
    http::async_read(stream_, buffer_, *parser_,
                     beast::bind_front_handler(&http_session::on_read, this->shared_from_this()));
  }

  void on_read(beast::error_code ec, size_t) {
    if (ec == http::error::end_of_stream) return do_close();
    // buffer_overflow: a request head or a trailer section longer than the connection buffers.
    if (ec == http::error::header_limit || ec == http::error::buffer_overflow)
      return respond(http::status::request_header_fields_too_large,
                     plain_error(fmt::format("request header fields too large: the request head, and the header and "
                                             "trailer fields together, may take {} bytes (server.max_header_bytes), "
                                             "one field at most 65533",
                                             st_.cfg.max_header_bytes)),
                     "application/json", false);
    if (ec == http::error::body_limit)
      return respond(http::status::payload_too_large,
                     plain_error(fmt::format("request body too large: at most {} bytes (server.max_frame_bytes; "
                                             "chunked: chunk data and extensions together)",
                                             st_.cfg.max_frame_bytes)),
                     "application/json", false);
    if (ec) {
      if (ec != beast::error::timeout && ec != asio::error::connection_reset)
        spdlog::debug("conn={} http read: {}", conn_, ec.message());
      // A parse error (bad method, target, header...) gets a 400; I/O errors just end.
      if (ec.category() == http::make_error_code(http::error::bad_target).category() &&
          ec != http::error::partial_message)
        return respond(http::status::bad_request, plain_error("malformed HTTP request"), "application/json", false);
      return;
    }
    auto& req = parser_->get();
    if (websocket::is_upgrade(req)) return upgrade();
    handle_request();
  }

  static std::string plain_error(std::string_view msg) { return openai_error_json(error_code::invalid_request, msg); }

  void upgrade() {
    auto& req = parser_->get();
    if (path_of(req.target()) != "/v1/stream")
      return respond(http::status::not_found, plain_error("no WebSocket endpoint here; use /v1/stream"),
                     "application/json", false);
    ws_offer offer = read_ws_offer(st_, req);
    if (!offer.key_ok && !authorized(st_, req)) return unauthorized(false);
    // The WebSocket stream applies its own handshake and idle timeouts.
    beast::get_lowest_layer(stream_).expires_never();
    std::make_shared<ws_session<Stream>>(std::move(stream_), st_, std::move(slot_), conn_, std::move(client_))
        ->run(parser_->release(), std::move(offer.selected));
  }

  void unauthorized(bool keep_alive) {
    respond(http::status::unauthorized,
            R"({"error":{"message":"missing or invalid bearer token","type":"authentication_error","param":null,"code":"unauthorized"}})",
            "application/json", keep_alive);
  }

  void handle_request() {
    auto& req = parser_->get();
    std::string_view path = path_of(req.target());
    bool keep = req.keep_alive();
    bool get = req.method() == http::verb::get, post = req.method() == http::verb::post;
    service* svc = st_.current();
    req_id_ = request_id_of(req.find("X-Request-Id") != req.end() ? sv(req.find("X-Request-Id")->value()) : "");

    if (path == "/healthz" && get) return respond(http::status::ok, R"({"status":"ok"})", "application/json", keep);
    // /readyz, and /health (vLLM, TGI) and /ping (SageMaker; GET or POST) for probes written
    // for those: one truth, whether a request could be served now.
    if ((path == "/readyz" || path == "/health" || path == "/ping") && (get || (post && path == "/ping"))) {
      const std::string why = svc ? svc->not_ready_reason() : std::string("loading");
      if (why.empty()) return respond(http::status::ok, R"({"status":"ready"})", "application/json", keep);
      std::string body = R"({"status":)";
      append_json_string(body, why);
      body += "}";
      return respond(http::status::service_unavailable, std::move(body), "application/json", keep);
    }
    if (path == "/version" && get)
      return respond(http::status::ok, fmt::format(R"({{"version":"{}"}})", INFER_VERSION), "application/json",
                     keep);
    // Open by default as in vLLM (Prometheus scrapes without a key; no request content is in
    // it): server.metrics_require_key puts it behind the key.
    if (path == "/metrics" && get && !st_.cfg.metrics_require_key)
      return respond(http::status::ok, metrics_text(svc), "text/plain; version=0.0.4", keep);
    // The page (web/, embedded) is public like the probes: it holds no data, and a browser
    // navigating to it cannot send a bearer token. What it then fetches is checked as usual.
    if (get)
      if (const static_file* f = find_static_file(path))
        return respond(http::status::ok, std::string(f->body), std::string(f->content_type).c_str(), keep);
    if (!authorized(st_, req)) return unauthorized(keep);

    if (path == "/metrics" && get) return respond(http::status::ok, metrics_text(svc), "text/plain; version=0.0.4", keep);
    if (path == "/v1/status" && get) {  // the supervision tree: workers, breakers, restarts
      if (!svc) return respond(http::status::service_unavailable, R"({"status":"loading"})", "application/json", keep);
      return respond(http::status::ok, svc->status_json(), "application/json", keep);
    }
    if (path == "/v1/models" && get)
      return respond(http::status::ok, R"({"object":"list","data":[)" + model_json(st_.model_name, svc) + "]}",
                     "application/json", keep);
    if (path.rfind("/v1/models/", 0) == 0 && path.size() > 11 && get) {
      // Names with a slash (a path as given, org/name) arrive percent-encoded or not: both work.
      std::string id = percent_decode(path.substr(11));
      if (id.empty() || !st_.serves(id))
        return respond(http::status::not_found,
                       model_not_found_json(model_not_found_message(id, st_.model_names)), "application/json", keep);
      return respond(http::status::ok, model_json(id, svc), "application/json", keep);
    }
    if (path == "/v1/completions" && post) return start_completion();
    if (path == "/v1/chat/completions" && post) return start_chat();
    if ((path == "/tokenize" || path == "/detokenize") && post) {
      if (!svc)
        return respond(http::status::service_unavailable,
                       openai_error_json(error_code::unavailable, "the model is not loaded yet"), "application/json",
                       keep);
      return path == "/tokenize" ? tokenize(*svc) : detokenize(*svc);
    }
    if (path == "/v1/stream")
      return respond(http::status::upgrade_required, plain_error("/v1/stream speaks WebSocket only"),
                     "application/json", keep);
    bool known = path == "/healthz" || path == "/readyz" || path == "/health" || path == "/ping" ||
                 path == "/version" || path == "/metrics" || path == "/v1/status" ||
                 path == "/v1/models" ||
                 path == "/v1/completions" || path == "/v1/chat/completions" || path == "/tokenize" ||
                 path == "/detokenize";
    if (known) return respond(http::status::method_not_allowed, plain_error("method not allowed"), "application/json", keep);
    return respond(http::status::not_found, plain_error(fmt::format("no route for {}", path)), "application/json", keep);
  }

  // One entry of /v1/models, as vLLM's (max_model_len: the context served; root: the model
  // as loaded).
  std::string model_json(std::string_view id, service* svc) const {
    std::string body = R"({"id":)";
    append_json_string(body, id);
    body += R"(,"object":"model","created":0,"owned_by":"infer","root":)";
    append_json_string(body, st_.cfg.model);
    body += R"(,"parent":null,"max_model_len":)";
    const int64_t n_ctx = svc ? svc->n_ctx() : st_.cfg.max_model_len;
    body += n_ctx > 0 ? std::to_string(n_ctx) : std::string("null");
    body += "}";
    return body;
  }

  static std::string percent_decode(std::string_view s) {
    std::string out;
    auto hex = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      const char l = char(c | 32);
      return l >= 'a' && l <= 'f' ? l - 'a' + 10 : -1;
    };
    for (size_t i = 0; i < s.size(); ++i) {
      if (s[i] == '%' && i + 2 < s.size() && hex(s[i + 1]) >= 0 && hex(s[i + 2]) >= 0) {
        out.push_back(char(hex(s[i + 1]) * 16 + hex(s[i + 2])));
        i += 2;
      } else {
        out.push_back(s[i]);
      }
    }
    return out;
  }

  std::string metrics_text(service* svc) {
    std::string out = svc ? svc->stats().render_prometheus() : std::string();
    fmt::format_to(std::back_inserter(out),
                   "# HELP infer_connections_open Client connections open now.\n"
                   "# TYPE infer_connections_open gauge\n"
                   "infer_connections_open {}\n"
                   "# HELP infer_connections_rejected_total Connections refused at server.max_connections.\n"
                   "# TYPE infer_connections_rejected_total counter\n"
                   "infer_connections_rejected_total {}\n"
                   "# HELP infer_connections_slow_closed_total Connections closed because their client did not read "
                   "(server.max_pending_bytes).\n"
                   "# TYPE infer_connections_slow_closed_total counter\n"
                   "infer_connections_slow_closed_total {}\n"
                   "# HELP infer_rate_limit_clients Clients whose request rate the server tracks now.\n"
                   "# TYPE infer_rate_limit_clients gauge\n"
                   "infer_rate_limit_clients {}\n"
                   "# HELP infer_ready Whether the service takes requests (model loaded, a healthy worker).\n"
                   "# TYPE infer_ready gauge\n"
                   "infer_ready {}\n",
                   st_.connections.load(), st_.rejected_connections.load(), st_.slow_clients.load(),
                   st_.limiter->clients(), svc && svc->ready() ? 1 : 0);
    out += process_metrics();
    return out;
  }

  void tokenize(service& svc) {
    bool keep = parser_->get().keep_alive();
    auto r = parse_tokenize_command(parser_->get().body());
    if (auto* bad = std::get_if<invalid_request>(&r))
      return respond(http::status::bad_request, openai_error_json(error_code::invalid_request, bad->message),
                     "application/json", keep);
    auto& cmd = std::get<tokenize_command>(r);
    if (!cmd.chat) {
      encode_options o;
      o.add_special_tokens = cmd.add_special_tokens;
      // Off the io thread: a megabyte of text takes a while to encode.
      asio::post(*st_.blocking, [self = this->shared_from_this(), &svc, keep, o, text = std::move(cmd.prompt)] {
        std::string body = tokenize_response_json(svc.tok().encode(text, o), svc.n_ctx());
        asio::post(self->executor(), [self, keep, body = std::move(body)]() mutable {
          self->respond(http::status::ok, std::move(body), "application/json", keep);
        });
      });
      return;
    }
    // The exact prompt a chat request would get: rendered on the blocking pool.
    auto tpl = st_.chat;
    if (!tpl)
      return respond(http::status::bad_request, openai_error_json(error_code::invalid_request, no_chat_template_message()),
                     "application/json", keep);
    beast::get_lowest_layer(stream_).expires_never();
    auto job = std::make_shared<tokenize_command>(std::move(cmd));
    const tokenizer* tok = &svc.tok();
    const int32_t n_ctx = svc.n_ctx();
    asio::post(*st_.blocking, [self = this->shared_from_this(), job, tpl, tok, keep, n_ctx]() {
      auto ids = tpl->render_tokens(*job->chat, *tok, job->add_special_tokens);
      std::string body = ids ? tokenize_response_json(ids.value(), n_ctx)
                             : openai_error_json(error_code::invalid_request, ids.error().message);
      const bool ok = ids.has_value();
      asio::post(self->executor(), [self, body = std::move(body), ok, keep]() mutable {
        self->respond(ok ? http::status::ok : http::status::bad_request, std::move(body), "application/json", keep);
      });
    });
  }

  void detokenize(service& svc) {
    bool keep = parser_->get().keep_alive();
    auto r = parse_detokenize_request(parser_->get().body(), svc.tok().n_vocab());
    if (auto* bad = std::get_if<invalid_request>(&r))
      return respond(http::status::bad_request, openai_error_json(error_code::invalid_request, bad->message),
                     "application/json", keep);
    const auto& ids = std::get<std::vector<int32_t>>(r);
    respond(http::status::ok, detokenize_response_json(svc.tok().decode(std::span<const int32_t>(ids))),
            "application/json", keep);
  }

  void start_completion() {
    auto& req = parser_->get();
    bool keep = req.keep_alive();
    service* svc = st_.current();
    if (!svc)
      return respond(http::status::service_unavailable,
                     openai_error_json(error_code::unavailable, "the model is not loaded yet"), "application/json",
                     keep);
    auto parsed = parse_completion_request(req.body(), st_.limits);
    if (auto* bad = std::get_if<invalid_request>(&parsed)) {
      spdlog::info("request id=null conn={} api=openai outcome=invalid_request message=\"{}\"", conn_, q(bad->message));
      count_rejection(svc, error_code::invalid_request);
      return respond(http::status::bad_request, openai_error_json(error_code::invalid_request, bad->message),
                     "application/json", keep);
    }
    if (int64_t wait = st_.rate_limit(client_)) {
      spdlog::info("request id=null conn={} client={} api=openai outcome=rate_limited message=\"client rate limit\" "
                   "retry_after_ms={}",
                   conn_, client_, wait);
      count_rejection(svc, error_code::rate_limited);
      return respond(http::status::too_many_requests,
                     openai_error_json(error_code::rate_limited, st_.rate_limit_message(wait), wait),
                     "application/json", keep, false, wait);
    }
    auto& cmd = std::get<completion_command>(parsed);
    if (!st_.serves(cmd.model)) {
      std::string msg = model_not_found_message(cmd.model, st_.model_names);
      spdlog::info("request id=null request_id={} conn={} api=openai outcome=invalid_request message=\"{}\"", req_id_,
                   conn_, q(msg));
      count_rejection(svc, error_code::invalid_request);
      return respond(http::status::not_found, model_not_found_json(msg), "application/json", keep);
    }
    // The deadline: the body's timeout_ms, else the X-Request-Timeout header (milliseconds),
    // else queue.default_timeout_ms.
    if (auto h = req.find("X-Request-Timeout"); h != req.end() && cmd.request.timeout_ms == 0) {
      std::string_view v = sv(h->value());
      int64_t ms = 0;
      bool ok = !v.empty() && v.size() <= 9;
      for (char ch : v) ok = ok && ch >= '0' && ch <= '9', ms = ms * 10 + (ch - '0');
      if (!ok || ms > 24LL * 3600 * 1000) {
        count_rejection(svc, error_code::invalid_request);
        return respond(http::status::bad_request,
                       openai_error_json(error_code::invalid_request,
                                         "X-Request-Timeout: must be milliseconds, 0..86400000"),
                       "application/json", keep);
      }
      cmd.request.timeout_ms = ms;
    }
    if (!cmd.seeded) cmd.request.sampling.seed = std::random_device{}() | (uint64_t(std::random_device{}()) << 32);
    auto c = std::make_shared<completion_state>();
    c->tok = &svc->tok();
    if (cmd.echo) {
      c->echo = cmd.request.prompt_tokens.empty() ? cmd.request.prompt : svc->tok().decode(cmd.request.prompt_tokens);
      c->lp.offset = c->echo.size();
    }
    c->stream = cmd.stream;
    c->include_usage = cmd.include_usage;
    c->keep_alive = keep;
    c->chunked = req.version() >= 11;
    c->cmpl_id = "cmpl-" + random_id();
    c->request_id = req_id_;
    c->model = cmd.model.empty() ? st_.model_name : cmd.model;
    c->created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
                     .count();
    cur_ = c;
    // A generation may take long: no read timeout until it ends. A disconnect is
    // noticed by the watch read below (plain TCP) or by a failing write.
    beast::get_lowest_layer(stream_).expires_never();
    c->rid = svc->submit(std::move(cmd.request), post_to(this->shared_from_this(), c));
    if constexpr (!is_tls<Stream>) start_watch();
  }

  // POST /v1/chat/completions: parsed here, the template rendered and tokenized on the
  // render pool, then submitted back on this strand (on_chat_rendered). The connection
  // reads nothing meanwhile, as during any completion.
  void start_chat() {
    auto& req = parser_->get();
    bool keep = req.keep_alive();
    service* svc = st_.current();
    if (!svc)
      return respond(http::status::service_unavailable,
                     openai_error_json(error_code::unavailable, "the model is not loaded yet"), "application/json",
                     keep);
    auto parsed = parse_chat_request(req.body(), st_.limits);
    if (auto* cc = std::get_if<chat_command>(&parsed); cc && !st_.serves(cc->model)) {
      std::string msg = model_not_found_message(cc->model, st_.model_names);
      spdlog::info("request id=null request_id={} conn={} api=chat outcome=invalid_request message=\"{}\"", req_id_,
                   conn_, q(msg));
      count_rejection(svc, error_code::invalid_request);
      return respond(http::status::not_found, model_not_found_json(msg), "application/json", keep);
    }
    std::string bad_msg;
    if (auto* bad = std::get_if<invalid_request>(&parsed)) bad_msg = bad->message;
    else if (!st_.chat) bad_msg = no_chat_template_message();
    if (!bad_msg.empty()) {
      spdlog::info("request id=null conn={} api=chat outcome=invalid_request message=\"{}\"", conn_, q(bad_msg));
      count_rejection(svc, error_code::invalid_request);
      return respond(http::status::bad_request, openai_error_json(error_code::invalid_request, bad_msg),
                     "application/json", keep);
    }
    if (int64_t wait = st_.rate_limit(client_)) {
      spdlog::info("request id=null conn={} client={} api=chat outcome=rate_limited message=\"client rate limit\" "
                   "retry_after_ms={}",
                   conn_, client_, wait);
      count_rejection(svc, error_code::rate_limited);
      return respond(http::status::too_many_requests,
                     openai_error_json(error_code::rate_limited, st_.rate_limit_message(wait), wait),
                     "application/json", keep, false, wait);
    }
    auto cmd = std::make_shared<chat_command>(std::move(std::get<chat_command>(parsed)));
    if (!cmd->seeded) cmd->request.sampling.seed = std::random_device{}() | (uint64_t(std::random_device{}()) << 32);
    auto c = std::make_shared<completion_state>();
    c->chat = true;
    c->lp.chat = true;
    c->tok = &svc->tok();
    c->stream = cmd->stream;
    c->include_usage = cmd->include_usage;
    c->keep_alive = keep;
    c->chunked = req.version() >= 11;
    c->cmpl_id = "chatcmpl-" + random_id();
    c->request_id = req_id_;
    c->model = cmd->model.empty() ? st_.model_name : cmd->model;
    c->created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
                     .count();
    cur_ = c;
    beast::get_lowest_layer(stream_).expires_never();
    auto tpl = st_.chat;
    const tokenizer* tok = &svc->tok();
    asio::post(*st_.blocking, [self = this->shared_from_this(), c, cmd, tpl, tok]() {
      auto ids = tpl->render_tokens(cmd->chat, *tok, false);
      asio::post(self->executor(), [self, c, cmd, ids = std::move(ids)]() mutable {
        self->on_chat_rendered(c, std::move(cmd->request), std::move(ids));
      });
    });
  }

  void on_chat_rendered(const std::shared_ptr<completion_state>& c, generate_request r,
                        result<std::vector<int32_t>> ids) {
    if (c != cur_) return;
    service* svc = st_.current();
    std::string why;
    if (!ids) why = ids.error().message;
    else if (ids.value().empty()) why = "messages: the chat template made an empty prompt";
    else if (int64_t(ids.value().size()) >= st_.limits.n_ctx)
      why = fmt::format("messages: the prompt is {} tokens, longer than the context allows ({} tokens, at most {} "
                        "for the prompt)",
                        ids.value().size(), st_.limits.n_ctx, st_.limits.n_ctx - 1);
    if (!svc) why = "the service is shutting down";
    if (!why.empty()) {
      spdlog::info("request id={} conn={} api=chat outcome=invalid_request message=\"{}\"", c->cmpl_id, conn_, q(why));
      count_rejection(svc, error_code::invalid_request);
      c->finished = true;
      return respond(http::status::bad_request, openai_error_json(error_code::invalid_request, why),
                     "application/json", c->keep_alive, true);
    }
    r.prompt_tokens = std::move(ids.value());
    c->rid = svc->submit(std::move(r), post_to(this->shared_from_this(), c));
    if constexpr (!is_tls<Stream>) start_watch();
  }

  // Reads while a completion runs, so a client that hangs up cancels its request.
  // Plain TCP only: a TLS read cannot be abandoned midway without breaking the stream.
  void start_watch() {
    // A client that sent that much ahead is not watched (prepare would throw): TCP holds the rest.
    const size_t room = std::min<size_t>(4096, buffer_.max_size() - buffer_.size());
    if (room == 0 || peer_half_closed_) return;
    watching_ = true;
    stream_.async_read_some(buffer_.prepare(room),
                            beast::bind_front_handler(&http_session::on_watch, this->shared_from_this()));
  }

  void on_watch(beast::error_code ec, size_t n) {
    watching_ = false;
    if (!ec) buffer_.commit(n);  // the client's next request: parsed later
    if (ec == asio::error::eof && cur_ && !resume_after_watch_ && probe_after_eof()) return;
    if (ec == asio::error::eof && cur_ && resume_after_watch_) {
      // The answer is out and the client has nothing more to send: done.
      cur_->keep_alive = false;
      peer_half_closed_ = true;
      resume_after_watch_ = false;
      return do_read();
    }
    if (ec && ec != asio::error::operation_aborted) {
      if (cur_ && !cur_->client_gone) {
        spdlog::info("request id={} conn={} rid={} client disconnected: cancelling", cur_->cmpl_id, conn_, cur_->rid);
        cur_->client_gone = true;
        if (service* svc = st_.current()) svc->cancel(cur_->rid);
      }
      resume_after_watch_ = false;
      return;
    }
    if (resume_after_watch_) {
      resume_after_watch_ = false;
      do_read();
    }
    // else: the completion still runs; its end resumes reading.
  }

  // End of file while a completion runs: the client either hung up (close) or only ended its
  // side (shutdown(SHUT_WR) after the request, which HTTP allows: it still wants the answer).
  // Only a write tells them apart: to a closed socket the peer answers with a reset. So send
  // what the client ignores (an interim 100 response before the answer, an SSE comment inside
  // the stream), then look again shortly: a reset (a pending socket error: reads keep
  // saying end of file once it came) cancels; none means a half-close, and the answer is
  // sent, the connection closed after it. False: cannot probe (HTTP/1.0 takes no interim
  // responses): taken as a hang-up.
  bool probe_after_eof() {
    auto c = cur_;
    std::string probe;
    if (c->headers_sent) probe = c->chunked ? "3\r\n:\n\n\r\n" : ":\n\n";
    else if (c->chunked) probe = "HTTP/1.1 100 Continue\r\n\r\n";  // chunked: an HTTP/1.1 request
    else return false;
    peer_half_closed_ = true;
    c->keep_alive = false;
    if (!writing_ && !res_) {
      // Nothing of ours in flight, so the probe cannot interleave with another write; never
      // blocking: a full send buffer skips it (the writes that filled it will tell).
      beast::error_code ec;
      auto& sock = beast::get_lowest_layer(stream_).socket();
      sock.non_blocking(true, ec);
      if (!ec) sock.send(asio::buffer(probe), 0, ec);
      if (ec) return ec != asio::error::would_block ? false : true;
    }
    probe_timer_.expires_after(std::chrono::milliseconds(100));
    probe_timer_.async_wait([self = this->shared_from_this(), c](beast::error_code ec) {
      if (ec || self->cur_ != c || c->client_gone) return;
      int err = 0;
      socklen_t len = sizeof err;
      ::getsockopt(beast::get_lowest_layer(self->stream_).socket().native_handle(), SOL_SOCKET, SO_ERROR, &err, &len);
      if (err == 0) return;  // half-closed, still reading: it gets its answer
      self->on_watch(beast::error_code(err, boost::system::system_category()), 0);
    });
    return true;
  }

  void send_sse_headers(completion_state& c) {
    c.headers_sent = true;
    std::string h = "HTTP/1.1 200 OK\r\nServer: inferd\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n";
    if (!c.request_id.empty()) h += "X-Request-Id: " + c.request_id + "\r\n";
    h += c.chunked ? "Transfer-Encoding: chunked\r\n" : "";
    h += c.keep_alive && c.chunked ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n";
    if (!c.chunked) c.keep_alive = false;
    queue_raw(std::move(h));
  }

  void send_sse(completion_state& c, std::string_view payload) {
    if (!c.headers_sent) send_sse_headers(c);
    // One string per event, chunk framing included (one allocation on the streaming path).
    const size_t n = payload.size() + 8;  // "data: " payload "\n\n"
    std::string chunk;
    if (c.chunked) fmt::format_to(std::back_inserter(chunk), "{:x}\r\n", n);
    chunk.reserve(chunk.size() + n + 2);
    chunk += "data: ";
    chunk += payload;
    chunk += "\n\n";
    if (c.chunked) chunk += "\r\n";
    queue_raw(std::move(chunk));
  }

  void end_sse(completion_state& c) {
    send_sse(c, "[DONE]");
    if (c.chunked) queue_raw("0\r\n\r\n");
    c.finished = true;
    if (!writing_) finish_exchange();
  }

  void queue_raw(std::string s) {
    if (pending_bytes_ + s.size() > st_.max_pending_bytes()) {
      // The client does not read its stream: cancel the request (its KV blocks go back
      // now) and close; an SSE stream has no way to say why that the client would read.
      spdlog::warn("conn={} client={} too slow ({} bytes pending, limit {}): cancelling, closing", conn_, client_,
                   pending_bytes_ + s.size(), st_.max_pending_bytes());
      st_.slow_clients.fetch_add(1, std::memory_order_relaxed);
      if (cur_ && !cur_->client_gone) {
        cur_->client_gone = true;
        if (service* svc = st_.current()) svc->cancel(cur_->rid);
      }
      // The chunks being written stay alive until their handler runs (with the error of the close).
      out_.erase(out_.begin() + std::ptrdiff_t(writing_ ? in_flight_ : 0), out_.end());
      pending_bytes_ = 0;
      for (const auto& o : out_) pending_bytes_ += o.size();
      beast::error_code ignored;
      beast::get_lowest_layer(stream_).socket().close(ignored);
      return;
    }
    pending_bytes_ += s.size();
    out_.push_back(std::move(s));
    if (!writing_) do_write_raw();
  }

  // Everything queued goes in one gathered write: the events that came while the last write
  // was out leave together (one send, not one per event).
  void do_write_raw() {
    writing_ = true;
    in_flight_ = out_.size();
    wbufs_.clear();
    for (const auto& o : out_) wbufs_.push_back(asio::buffer(o));
    asio::async_write(stream_, wbufs_,
                      beast::bind_front_handler(&http_session::on_write_raw, this->shared_from_this()));
  }

  void on_write_raw(beast::error_code ec, size_t) {
    writing_ = false;
    if (ec) {
      spdlog::debug("conn={} write failed: {}", conn_, ec.message());
      out_.clear();
      in_flight_ = 0;
      pending_bytes_ = 0;
      if (cur_ && !cur_->client_gone) {
        cur_->client_gone = true;
        if (service* svc = st_.current()) svc->cancel(cur_->rid);
      }
      return;
    }
    for (; in_flight_ > 0; --in_flight_) {
      pending_bytes_ -= out_.front().size();
      out_.pop_front();
    }
    if (!out_.empty()) return do_write_raw();
    if (cur_ && cur_->finished) finish_exchange();
  }

  // The completion's response is out: back to reading requests.
  void finish_exchange() {
    bool keep = cur_ && cur_->keep_alive;
    cur_.reset();
    if (!keep) return do_close();
    beast::get_lowest_layer(stream_).expires_after(st_.idle());
    if (watching_) {
      resume_after_watch_ = true;
      beast::get_lowest_layer(stream_).socket().cancel();
      return;
    }
    do_read();
  }

  void respond(http::status status, std::string body, const char* content_type, bool keep_alive,
               bool ends_completion = false, int64_t retry_after_ms = 0) {
    auto res = std::make_shared<http::response<http::string_body>>(status, 11);
    res->set(http::field::server, server_name);
    res->set(http::field::content_type, content_type);
    if (status == http::status::unauthorized) res->set(http::field::www_authenticate, "Bearer");
    if (retry_after_ms > 0) res->set(http::field::retry_after, std::to_string((retry_after_ms + 999) / 1000));
    // Every response carries its request's id; one refused before its head was read gets a
    // fresh one.
    res->set("X-Request-Id", req_id_.empty() ? random_id() : std::exchange(req_id_, std::string()));
    res->keep_alive(keep_alive);
    res->body() = std::move(body);
    res->prepare_payload();
    res_ = res;
    http::async_write(stream_, *res,
                      beast::bind_front_handler(&http_session::on_respond, this->shared_from_this(),
                                                res->need_eof(), ends_completion));
  }

  void on_respond(bool close, bool ends_completion, beast::error_code ec, size_t) {
    res_.reset();
    if (ec) {
      spdlog::debug("conn={} write failed: {}", conn_, ec.message());
      return;
    }
    if (ends_completion) {
      if (close && cur_) cur_->keep_alive = false;
      return finish_exchange();
    }
    if (close && parser_ && !parser_->is_done()) return linger_close();
    if (close) return do_close();
    do_read();
  }

  // Refused before the request was read to its end (431, 413, 400): the client may still be
  // sending. Closing with unread bytes would reset the connection, and a reset can destroy
  // the response before the client reads it; so read and drop for up to 2 s first (bounded in
  // time, and in memory: the same 4 KiB again and again).
  void linger_close() {
    do_close();
    if constexpr (!is_tls<Stream>) {
      beast::get_lowest_layer(stream_).expires_after(std::chrono::seconds(2));
      buffer_.clear();
      do_linger_read();
    }
  }

  void do_linger_read() {
    stream_.async_read_some(buffer_.prepare(4096), [self = this->shared_from_this()](beast::error_code ec, size_t n) {
      (void)n;  // dropped: prepare() reuses the same bytes
      if (ec) return;  // the client closed, or the 2 s are up
      self->do_linger_read();
    });
  }

  void do_close() {
    beast::error_code ec;
    if constexpr (is_tls<Stream>) {
      beast::get_lowest_layer(stream_).expires_after(std::chrono::seconds(5));
      stream_.async_shutdown([self = this->shared_from_this()](beast::error_code) {});
    } else {
      stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    }
  }

  Stream stream_;
  beast::flat_buffer buffer_;  // bounded: max_buffered_bytes()
  std::optional<request_parser> parser_;
  uint64_t heads_read_ = 0;
  bool peer_half_closed_ = false;
  asio::steady_timer probe_timer_{stream_.get_executor()};
  server_state& st_;
  connection_slot slot_;
  uint64_t conn_;
  std::string client_;
  std::shared_ptr<http::response<http::string_body>> res_;
  std::string req_id_;  // X-Request-Id of the request being answered
  std::shared_ptr<completion_state> cur_;
  std::deque<std::string> out_;  // queued raw bytes; the first in_flight_ are being written
  std::vector<asio::const_buffer> wbufs_;
  size_t in_flight_ = 0;
  size_t pending_bytes_ = 0;
  bool writing_ = false;
  bool watching_ = false;
  bool resume_after_watch_ = false;
};

// ---- listener -----------------------------------------------------------------------------

// The rate limit's key of a connection: its peer's IP address (an IPv4-mapped IPv6
// address as the IPv4 one, so a dual-stack listener counts a client once).
std::string client_key(const tcp::socket& sock) {
  beast::error_code ec;
  auto ep = sock.remote_endpoint(ec);
  if (ec) return "?";
  auto a = ep.address();
  if (a.is_v6() && a.to_v6().is_v4_mapped()) return asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6()).to_string();
  return a.to_string();
}

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

  void on_accept(beast::error_code ec, tcp::socket sock) {
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

  asio::io_context& ioc_;
  ssl::context* tls_;
  tcp::acceptor acc_;
  server_state& st_;
  asio::steady_timer pause_;
  uint64_t accept_failures_ = 0;
  std::chrono::steady_clock::time_point last_accept_log_{};
};


}  // namespace

// ---- server ---------------------------------------------------------------------------------

struct server::impl {
  server_state st;  // declared first: destroyed after the io context and its sessions
  std::optional<ssl::context> tls;
  asio::io_context ioc;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::shared_ptr<listener> lst;
  std::vector<std::thread> threads;
  std::string host;
  uint16_t port = 0;
  bool stopped = false;
  std::vector<std::unique_ptr<server::clock_fn>> clocks;
  asio::thread_pool blocking{2};  // tokenizing long prompts, rendering chat templates

  explicit impl(int threads_hint) : ioc(std::max(1, threads_hint)) { st.blocking = &blocking; }
};

result<std::pair<std::string, uint16_t>> parse_listen_address(const std::string& listen) {
  auto colon = listen.rfind(':');
  if (colon == std::string::npos || colon + 1 >= listen.size())
    return make_status(errc::invalid_argument, fmt::format("server.listen: expected HOST:PORT, got \"{}\"", listen));
  std::string host = listen.substr(0, colon), port_s = listen.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host.empty()) return make_status(errc::invalid_argument, fmt::format("server.listen: no host in \"{}\"", listen));
  uint32_t port = 0;
  for (char ch : port_s) {
    if (ch < '0' || ch > '9' || port > 65535)
      return make_status(errc::invalid_argument, fmt::format("server.listen: bad port in \"{}\"", listen));
    port = port * 10 + uint32_t(ch - '0');
  }
  if (port > 65535) return make_status(errc::invalid_argument, fmt::format("server.listen: bad port in \"{}\"", listen));
  return std::pair<std::string, uint16_t>(host, uint16_t(port));
}

result<std::unique_ptr<server>> server::start(const service_config& cfg) {
  auto addr = parse_listen_address(cfg.listen);
  if (!addr) return addr.error();
  auto p = std::make_unique<impl>(cfg.io_threads);
  p->st.cfg = cfg;
  p->st.limiter.emplace(cfg.rate_limit_rps, double(cfg.rate_limit_burst), size_t(std::max(1, cfg.rate_limit_clients)));
  // The served name: what the operator passed, as vLLM does (the path as given), unless
  // model.served_model_name says otherwise.
  p->st.model_names = served_model_names(cfg);
  p->st.model_name = p->st.model_names.front();
  p->host = addr->first;

  beast::error_code ec;
  auto ip = asio::ip::make_address(addr->first, ec);
  if (ec) {
    // A name such as localhost: resolve it, and listen on its first address only.
    tcp::resolver res(p->ioc);
    auto r = res.resolve(addr->first, std::to_string(addr->second), ec);
    if (ec || r.empty())
      return make_status(errc::invalid_argument,
                         fmt::format("server.listen: cannot resolve \"{}\": {}", addr->first, ec.message()));
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

  p->lst = std::make_shared<listener>(p->ioc, p->tls ? &*p->tls : nullptr, p->st);
  if (auto s = p->lst->open(tcp::endpoint(ip, addr->second)); !s) return s;
  p->port = p->lst->port();
  p->lst->start();
  p->work.emplace(p->ioc.get_executor());
  for (int i = 0; i < std::max(1, cfg.io_threads); ++i)
    p->threads.emplace_back([io = &p->ioc] {
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
  impl_->work.reset();
  impl_->ioc.stop();
  impl_->blocking.join();  // what it finishes posts into the stopped context: dropped with it
  for (auto& t : impl_->threads) t.join();
  impl_->threads.clear();
  impl_->lst->close();
  impl_->lst.reset();
  spdlog::debug("server stopped");
}

}  // namespace infer::net
