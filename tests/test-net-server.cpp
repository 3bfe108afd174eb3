// The Beast server in-process against fake_service, over real loopback sockets:
// WebSocket protocol v1 (streaming, multiplexing, cancel, disconnect, every malformed
// case, close codes, per-connection limit), HTTP (health, readiness, metrics, OpenAI
// completions with and without streaming, tokenize/detokenize), the bearer token, the
// per-client rate limit (its clock driven by the test) and slow consumers.
// Waits are on observable state with a generous deadline, never on elapsed time.
#include <doctest/doctest.h>
#include <sys/socket.h>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "net/rate-limiter.hpp"
#include "net/server.hpp"
#include "base/prompt-limit.hpp"
#include "test-net-fake-service.hpp"

namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using json = nlohmann::json;
using infer::testing::fake_service;

namespace {

void set_recv_timeout(tcp::socket& s, int seconds) {
  timeval tv{seconds, 0};
  setsockopt(s.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

template <class F>
bool eventually(F&& f) {
  for (int i = 0; i < 2000; ++i) {
    if (f()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return f();
}

struct ws_client {
  asio::io_context ioc;
  websocket::stream<tcp::socket> ws{ioc};
  beast::error_code handshake_ec;

  // rcvbuf > 0: a small receive buffer, so that a client that does not read backs up
  // into the server's queue after a few KiB.
  explicit ws_client(uint16_t port, const std::string& bearer = "", int rcvbuf = 0) {
    ws.next_layer().open(tcp::v4());
    if (rcvbuf > 0) ws.next_layer().set_option(asio::socket_base::receive_buffer_size(rcvbuf));
    ws.next_layer().connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
    set_recv_timeout(ws.next_layer(), 20);
    if (!bearer.empty())
      ws.set_option(websocket::stream_base::decorator(
          [bearer](websocket::request_type& r) { r.set(http::field::authorization, "Bearer " + bearer); }));
    ws.handshake("127.0.0.1", "/v1/stream", handshake_ec);
  }
  void send(const std::string& s) {
    ws.text(true);
    ws.write(asio::buffer(s));
  }
  void send(const json& j) { send(j.dump()); }
  json recv() {
    beast::flat_buffer b;
    ws.read(b);
    return json::parse(beast::buffers_to_string(b.data()));
  }
  // Reads until the connection ends; returns the code of the server's close frame (0 if
  // none arrived). Once a server has sent its close frame it may drop the TCP connection
  // before our reply goes out, so the read can end with an I/O error after the frame.
  int read_until_closed() {
    beast::flat_buffer b;
    beast::error_code ec;
    for (int i = 0; i < 1000 && !ec; ++i) {
      ws.read(b, ec);
      b.consume(b.size());
    }
    return int(ws.reason().code);
  }
  // Reads every frame until the connection ends, however many; returns how many.
  size_t drain() {
    beast::flat_buffer b;
    beast::error_code ec;
    size_t n = 0;
    while (!ec) {
      ws.read(b, ec);
      b.consume(b.size());
      if (!ec) ++n;
    }
    return n;
  }
};

// A steady clock the test moves by hand (server::set_rate_limit_clock).
struct manual_clock {
  const std::chrono::steady_clock::time_point base = std::chrono::steady_clock::now();
  std::atomic<int64_t> ms{0};
  std::chrono::steady_clock::time_point now() const { return base + std::chrono::milliseconds(ms.load()); }
};

// The value of one sample line of a Prometheus text ("name{labels} value"), -1 if absent.
double metric(const std::string& text, const std::string& sample) {
  auto pos = text.find("\n" + sample + " ");
  if (pos == std::string::npos) return -1;
  return std::stod(text.substr(pos + sample.size() + 2));
}

struct http_reply {
  int status = 0;
  std::string body;
  http::fields headers;
  json j() const { return json::parse(body); }
};

http_reply http_call(uint16_t port, http::verb verb, const std::string& target, const std::string& body = "",
                     const std::string& bearer = "") {
  asio::io_context ioc;
  tcp::socket s(ioc);
  s.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
  set_recv_timeout(s, 20);
  http::request<http::string_body> req(verb, target, 11);
  req.set(http::field::host, "127.0.0.1");
  if (!bearer.empty()) req.set(http::field::authorization, "Bearer " + bearer);
  if (!body.empty()) {
    req.set(http::field::content_type, "application/json");
    req.body() = body;
  }
  req.prepare_payload();
  http::write(s, req);
  beast::flat_buffer b;
  http::response<http::string_body> res;
  http::read(s, b, res);
  http_reply r;
  r.status = int(res.result_int());
  r.body = res.body();
  r.headers = res.base();
  return r;
}

struct fixture {
  infer::service_config cfg;
  std::unique_ptr<fake_service> svc;
  std::unique_ptr<infer::net::server> srv;

  explicit fixture(std::function<void(infer::service_config&)> tweak = {}, bool attach = true,
                   infer::tokenizer tok = infer::tokenizer::byte_level()) {
    cfg.listen = "127.0.0.1:0";
    cfg.io_threads = 2;
    cfg.max_tokens_limit = 256;
    if (tweak) tweak(cfg);
    svc = std::make_unique<fake_service>(std::move(tok), 64);
    auto s = infer::net::server::start(cfg);
    REQUIRE(s.has_value());
    srv = std::move(*s);
    if (attach) srv->attach(*svc);
  }
  ~fixture() {
    svc->shutdown();  // service first: its last events still reach the strands
    srv->stop();
  }
  uint16_t port() const { return srv->port(); }
};

json gen(const std::string& id, const std::string& prompt, int max_tokens) {
  return {{"type", "generate"}, {"id", id}, {"prompt", prompt}, {"max_tokens", max_tokens}};
}

}  // namespace

TEST_CASE("ws: one request streams accepted, tokens 0..n-1, done") {
  fixture f;
  ws_client c(f.port());
  REQUIRE(!c.handshake_ec);
  c.send(gen("c1", "hello", 5));
  auto a = c.recv();
  CHECK(a == json{{"type", "accepted"}, {"id", "c1"}});
  std::string text;
  for (int i = 0; i < 5; ++i) {
    auto t = c.recv();
    CHECK(t["type"] == "token");
    CHECK(t["id"] == "c1");
    CHECK(t["index"] == i);
    CHECK(t["token"] == 'a' + i);
    text += t["text"].get<std::string>();
  }
  CHECK(text == "abcde");
  auto d = c.recv();
  CHECK(d["type"] == "done");
  CHECK(d["finish_reason"] == "length");
  CHECK(d["usage"]["prompt_tokens"] == 5);  // byte-level: 5 ids
  CHECK(d["usage"]["completion_tokens"] == 5);
  CHECK(d["timing_ms"].contains("first_token"));

  // stop sequence
  json s = gen("c2", "x", 20);
  s["stop"] = json::array({"cd"});
  c.send(s);
  std::string t2;
  json e;
  while ((e = c.recv())["type"] != "done") {
    if (e["type"] == "token") t2 += e["text"].get<std::string>();
  }
  CHECK(e["finish_reason"] == "stop");
  CHECK(t2 == "abcd");
}

TEST_CASE("ws: 50 requests multiplexed on one connection") {
  fixture f;
  ws_client c(f.port());
  const int n = 50;
  for (int i = 0; i < n; ++i) c.send(gen("r" + std::to_string(i), "p" + std::to_string(i), 3 + i % 7));
  std::map<std::string, int> next_index, accepted, terminal;
  int done = 0;
  while (done < n) {
    auto e = c.recv();
    std::string id = e["id"];
    if (e["type"] == "accepted") {
      accepted[id]++;
      CHECK(next_index.count(id) == 0);  // accepted precedes the tokens
    } else if (e["type"] == "token") {
      CHECK(e["index"] == next_index[id]);
      next_index[id]++;
      CHECK(terminal[id] == 0);
    } else {
      CHECK(e["type"] == "done");
      terminal[id]++;
      done++;
    }
  }
  for (int i = 0; i < n; ++i) {
    std::string id = "r" + std::to_string(i);
    CHECK(accepted[id] == 1);
    CHECK(terminal[id] == 1);
    CHECK(next_index[id] == 3 + i % 7);
  }
}

TEST_CASE("ws: cancel ends a request with done(cancelled); cancelling twice is harmless") {
  fixture f;
  f.svc->hold = true;
  ws_client c(f.port());
  c.send(gen("k", "abc", 100));
  CHECK(c.recv()["type"] == "accepted");
  c.send(json{{"type", "cancel"}, {"id", "k"}});
  auto d = c.recv();
  CHECK(d["type"] == "done");
  CHECK(d["id"] == "k");
  CHECK(d["finish_reason"] == "cancelled");
  c.send(json{{"type", "cancel"}, {"id", "k"}});       // ended: ignored
  c.send(json{{"type", "cancel"}, {"id", "never"}});   // unknown: ignored
  // the id is free again and the connection works
  f.svc->hold = false;
  c.send(gen("k", "abc", 2));
  CHECK(c.recv()["type"] == "accepted");
  CHECK(c.recv()["type"] == "token");
  CHECK(c.recv()["type"] == "token");
  CHECK(c.recv()["type"] == "done");
  CHECK(f.svc->cancels == 1);
}

TEST_CASE("ws: a disconnect cancels every request of that connection, and only those") {
  fixture f;
  f.svc->hold = true;
  ws_client other(f.port());
  other.send(gen("keep", "x", 3));
  CHECK(other.recv()["type"] == "accepted");
  {
    ws_client c(f.port());
    for (int i = 0; i < 3; ++i) c.send(gen("d" + std::to_string(i), "abc", 100));
    for (int i = 0; i < 3; ++i) CHECK(c.recv()["type"] == "accepted");
    CHECK(f.svc->live() == 4);
    c.ws.next_layer().close();  // no close frame: the peer just vanishes
  }
  CHECK(eventually([&] { return f.svc->cancels == 3; }));
  CHECK(f.svc->live() == 1);
  f.svc->hold = false;
  for (int i = 0; i < 3; ++i) CHECK(other.recv()["type"] == "token");
  CHECK(other.recv()["type"] == "done");
  CHECK(f.svc->live() == 0);
}

TEST_CASE("ws: every malformed frame gets invalid_request and the connection stays usable") {
  fixture f;
  f.svc->hold = true;
  ws_client c(f.port());
  c.send(gen("live", "abc", 5));
  CHECK(c.recv()["type"] == "accepted");
  struct kase {
    std::string frame;
    json id;
  } cases[] = {
      {"this is not json", nullptr},
      {"[1,2,3]", nullptr},
      {R"({"type":"generate","prompt":"a"})", nullptr},
      {R"({"type":"generate","id":12,"prompt":"a"})", nullptr},
      {R"({"type":"explode","id":"x1"})", "x1"},
      {R"({"id":"x2","prompt":"a"})", "x2"},
      {R"({"type":"generate","id":"x3"})", "x3"},
      {R"({"type":"generate","id":"x4","prompt":7})", "x4"},
      {R"({"type":"generate","id":"x5","prompt":"a","max_tokens":-3})", "x5"},
      {R"({"type":"generate","id":"x6","prompt":"a","temperature":-1})", "x6"},
      {R"({"type":"generate","id":"x7","prompt":"a","top_p":0})", "x7"},
      {R"({"type":"generate","id":"x8","prompt":"a","top_p":1.5})", "x8"},
      {R"({"type":"generate","id":"x9","prompt":")" + std::string(64, 'z') + R"("})", "x9"},  // n_ctx 64
      {R"({"type":"generate","id":"x10","prompt_tokens":[1,256]})", "x10"},                  // vocab 256
      {R"({"type":"generate","id":"x11","prompt":"a","max_tokens":"many"})", "x11"},
      {R"({"type":"generate","id":"live","prompt":"dup"})", "live"},  // duplicate live id
  };
  for (auto& k : cases) {
    INFO(k.frame);
    c.send(k.frame);
    auto e = c.recv();
    CHECK(e["type"] == "error");
    CHECK(e["code"] == "invalid_request");
    CHECK(e["id"] == k.id);
    CHECK(!e["message"].get<std::string>().empty());
  }
  CHECK(f.svc->submitted == 1);
  f.svc->hold = false;
  // the live request was untouched by all that
  for (int i = 0; i < 5; ++i) CHECK(c.recv()["type"] == "token");
  auto d = c.recv();
  CHECK(d["type"] == "done");
  CHECK(d["id"] == "live");
  c.send(gen("after", "ok", 1));
  CHECK(c.recv()["type"] == "accepted");
}

// Issue 13.10: the refusal of a duplicate live id went out at once, before the first
// request's accepted (which comes from the service later), so a client saw error(X) and then
// accepted(X). It now follows the first request's first frame.
TEST_CASE("ws: a duplicate id's error never precedes the accepted of the request it duplicates") {
  fixture f;
  f.svc->hold_accept = true;
  ws_client c(f.port());
  c.send(gen("x", "first", 3));
  c.send(gen("x", "second", 3));
  // The server has refused the second (counted) while the first is not yet accepted.
  bool counted = false;
  for (int i = 0; i < 2000 && !counted; ++i) {
    counted = f.svc->stats().render_prometheus().find("infer_requests_total{outcome=\"invalid_request\"} 1") !=
              std::string::npos;
    if (!counted) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  REQUIRE(counted);
  f.svc->hold_accept = false;
  auto first = c.recv();
  CHECK(first["type"] == "accepted");
  CHECK(first["id"] == "x");
  auto dup = c.recv();
  CHECK(dup["type"] == "error");
  CHECK(dup["id"] == "x");
  CHECK(dup["code"] == "invalid_request");
  CHECK(dup["message"].get<std::string>().find("already in flight") != std::string::npos);
  for (int i = 0; i < 3; ++i) CHECK(c.recv()["type"] == "token");
  CHECK(c.recv()["type"] == "done");
  CHECK(f.svc->submitted == 1);
}

TEST_CASE("ws: binary frame closes with 1003, oversize frame with 1009, others unaffected") {
  fixture f([](infer::service_config& c) { c.max_frame_bytes = 1024; });
  ws_client bystander(f.port());
  {
    ws_client c(f.port());
    c.ws.binary(true);
    std::string bytes = R"({"type":"generate","id":"b","prompt":"a"})";
    c.ws.write(asio::buffer(bytes));
    CHECK(c.read_until_closed() == int(websocket::close_code::unknown_data));
  }
  {
    ws_client c(f.port());
    c.send(std::string(2000, ' '));
    CHECK(c.read_until_closed() == int(websocket::close_code::too_big));
  }
  bystander.send(gen("fine", "a", 1));
  CHECK(bystander.recv()["type"] == "accepted");
  CHECK(bystander.recv()["type"] == "token");
  CHECK(bystander.recv()["type"] == "done");
}

TEST_CASE("ws: per-connection in-flight limit answers rate_limited with retry_after_ms") {
  fixture f([](infer::service_config& c) { c.max_inflight_per_connection = 2; });
  f.svc->hold = true;
  ws_client c(f.port());
  c.send(gen("a", "x", 5));
  c.send(gen("b", "x", 5));
  c.send(gen("c", "x", 5));
  std::map<std::string, json> first;
  for (int i = 0; i < 3; ++i) {
    auto e = c.recv();
    first[e["id"]] = e;
  }
  CHECK(first["a"]["type"] == "accepted");
  CHECK(first["b"]["type"] == "accepted");
  CHECK(first["c"]["type"] == "error");
  CHECK(first["c"]["code"] == "rate_limited");
  CHECK(first["c"]["retry_after_ms"].get<int>() > 0);
}

TEST_CASE("ws: the service's own errors pass through with retry_after_ms") {
  fixture f;
  f.svc->reject_overloaded = 1;
  ws_client c(f.port());
  c.send(gen("o", "x", 5));
  auto e = c.recv();
  CHECK(e["type"] == "error");
  CHECK(e["id"] == "o");
  CHECK(e["code"] == "overloaded");
  CHECK(e["retry_after_ms"] == 50);
  c.send(gen("o", "x", 1));  // the rejected id is not live
  CHECK(c.recv()["type"] == "accepted");
}

TEST_CASE("http: health, readiness before and after attach, metrics, 404/405/426") {
  fixture f({}, /*attach=*/false);
  CHECK(http_call(f.port(), http::verb::get, "/healthz").status == 200);
  CHECK(http_call(f.port(), http::verb::get, "/readyz").status == 503);
  auto early = http_call(f.port(), http::verb::post, "/v1/completions", R"({"prompt":"a"})");
  CHECK(early.status == 503);
  CHECK(early.j()["error"]["code"] == "unavailable");
  {
    ws_client c(f.port());
    c.send(gen("e", "a", 1));
    auto e = c.recv();
    CHECK(e["code"] == "unavailable");
  }
  f.srv->attach(*f.svc);
  CHECK(http_call(f.port(), http::verb::get, "/readyz").status == 200);
  f.svc->is_ready = false;
  CHECK(http_call(f.port(), http::verb::get, "/readyz").status == 503);
  f.svc->is_ready = true;
  auto m = http_call(f.port(), http::verb::get, "/metrics");
  CHECK(m.status == 200);
  CHECK(m.body.find("infer_requests_total") != std::string::npos);
  CHECK(m.body.find("infer_connections_open") != std::string::npos);
  auto st = http_call(f.port(), http::verb::get, "/v1/status");  // net::status_json(service::status())
  CHECK(st.status == 200);
  CHECK(st.j()["workers"].is_array());
  CHECK(st.j()["queue_depth"] == 0);
  CHECK(http_call(f.port(), http::verb::post, "/v1/status").status == 405);
  CHECK(http_call(f.port(), http::verb::get, "/nope").status == 404);
  CHECK(http_call(f.port(), http::verb::get, "/v1/completions").status == 405);
  CHECK(http_call(f.port(), http::verb::get, "/v1/stream").status == 426);
}

TEST_CASE("http: model names (404 model_not_found), /v1/models/{id}, /health, /ping, /version, open /metrics") {
  fixture f([](infer::service_config& c) {
    c.served_model_name = {"first", "org/second"};
    c.api_key = "k";
  }, /*attach=*/false);
  // Probes are public and tell the same truth as /readyz.
  CHECK(http_call(f.port(), http::verb::get, "/health").status == 503);
  CHECK(http_call(f.port(), http::verb::get, "/ping").status == 503);
  f.srv->attach(*f.svc);
  CHECK(http_call(f.port(), http::verb::get, "/health").status == 200);
  CHECK(http_call(f.port(), http::verb::post, "/ping").status == 200);
  f.svc->is_ready = false;
  CHECK(http_call(f.port(), http::verb::get, "/health").status == 503);
  f.svc->is_ready = true;
  auto v = http_call(f.port(), http::verb::get, "/version");
  CHECK(v.status == 200);
  CHECK(v.j()["version"].is_string());
  // /metrics open without the key by default (server.metrics_require_key = false).
  CHECK(http_call(f.port(), http::verb::get, "/metrics").status == 200);

  auto list = http_call(f.port(), http::verb::get, "/v1/models", "", "k");
  REQUIRE(list.status == 200);
  CHECK(list.j()["data"][0]["id"] == "first");
  CHECK(list.j()["data"][0]["max_model_len"] == 64);
  CHECK(http_call(f.port(), http::verb::get, "/v1/models/org%2Fsecond", "", "k").j()["id"] == "org/second");
  CHECK(http_call(f.port(), http::verb::get, "/v1/models/org/second", "", "k").status == 200);
  auto none = http_call(f.port(), http::verb::get, "/v1/models/other", "", "k");
  CHECK(none.status == 404);
  CHECK(none.j()["error"]["code"] == "model_not_found");

  auto wrong = http_call(f.port(), http::verb::post, "/v1/completions", R"({"model":"other","prompt":"hi"})", "k");
  CHECK(wrong.status == 404);
  CHECK(wrong.j()["error"]["code"] == "model_not_found");
  CHECK(wrong.j()["error"]["type"] == "invalid_request_error");
  CHECK(wrong.j()["error"]["param"] == "model");
  auto wrong_chat = http_call(f.port(), http::verb::post, "/v1/chat/completions",
                              R"({"model":"other","messages":[{"role":"user","content":"hi"}]})", "k");
  CHECK(wrong_chat.status == 404);
  CHECK(wrong_chat.j()["error"]["code"] == "model_not_found");
  auto alias = http_call(f.port(), http::verb::post, "/v1/completions",
                         R"({"model":"org/second","prompt":"hi","max_tokens":2})", "k");
  CHECK(alias.status == 200);
  CHECK(http_call(f.port(), http::verb::post, "/v1/completions", R"({"prompt":"hi","max_tokens":2})", "k").j()["model"] ==
        "first");
}

TEST_CASE("http: /metrics behind the key with server.metrics_require_key; WebSocket model names") {
  fixture f([](infer::service_config& c) { c.metrics_require_key = true; c.api_key = "k"; });
  CHECK(http_call(f.port(), http::verb::get, "/metrics").status == 401);
  CHECK(http_call(f.port(), http::verb::get, "/metrics", "", "k").status == 200);
}

TEST_CASE("ws: a generate naming another model is refused with model_not_found") {
  fixture f;
  ws_client c(f.port());
  json g = gen("w", "hi", 1);
  g["model"] = "other";
  c.send(g);
  auto e = c.recv();
  CHECK(e["type"] == "error");
  CHECK(e["id"] == "w");
  CHECK(e["code"] == "model_not_found");
  g["model"] = "synthetic:tiny";
  c.send(g);
  CHECK(c.recv()["type"] == "accepted");
}

TEST_CASE("http: OpenAI completions, plain and streamed, and their errors") {
  fixture f;
  auto r = http_call(f.port(), http::verb::post, "/v1/completions",
                     R"({"model":"synthetic:tiny","prompt":"hi","max_tokens":4,"temperature":0})");
  REQUIRE(r.status == 200);
  auto j = r.j();
  CHECK(j["object"] == "text_completion");
  CHECK(j["model"] == "synthetic:tiny");
  CHECK(std::string(j["id"]).size() == 5 + 32);  // cmpl- and 128 random bits, not a sequence number
  CHECK(r.headers["X-Request-Id"].size() == 32);
  CHECK(j["choices"][0]["text"] == "abcd");
  CHECK(j["choices"][0]["finish_reason"] == "length");
  CHECK(j["usage"]["completion_tokens"] == 4);
  CHECK(j["usage"]["prompt_tokens"] == 2);

  auto s = http_call(f.port(), http::verb::post, "/v1/completions",
                     R"({"prompt":"hi","max_tokens":3,"stream":true,"stream_options":{"include_usage":true}})");
  REQUIRE(s.status == 200);
  CHECK(s.headers[http::field::content_type] == "text/event-stream");
  std::vector<std::string> data;
  size_t pos = 0;
  while ((pos = s.body.find("data: ", pos)) != std::string::npos) {
    auto end = s.body.find("\n\n", pos);
    REQUIRE(end != std::string::npos);
    data.push_back(s.body.substr(pos + 6, end - pos - 6));
    pos = end + 2;
  }
  REQUIRE(data.size() >= 3);
  CHECK(data.back() == "[DONE]");
  std::string text;
  std::string finish;
  bool usage = false;
  for (size_t i = 0; i + 1 < data.size(); ++i) {
    auto c = json::parse(data[i]);
    if (c.contains("usage")) {
      usage = true;
      CHECK(c["usage"]["completion_tokens"] == 3);
      continue;
    }
    text += c["choices"][0]["text"].get<std::string>();
    if (!c["choices"][0]["finish_reason"].is_null()) finish = c["choices"][0]["finish_reason"];
  }
  CHECK(text == "abc");
  CHECK(finish == "length");
  CHECK(usage);

  auto bad = http_call(f.port(), http::verb::post, "/v1/completions", R"({"prompt":"hi","max_tokens":-1})");
  CHECK(bad.status == 400);
  CHECK(bad.j()["error"]["type"] == "invalid_request_error");
  CHECK(!bad.j()["error"]["message"].get<std::string>().empty());
  CHECK(http_call(f.port(), http::verb::post, "/v1/completions", "{not json").status == 400);

  f.svc->reject_overloaded = 2;
  auto busy = http_call(f.port(), http::verb::post, "/v1/completions", R"({"prompt":"hi"})");
  CHECK(busy.status == 429);
  CHECK(busy.j()["error"]["code"] == "overloaded");
  CHECK(busy.headers.count(http::field::retry_after) == 1);
  auto busy_stream = http_call(f.port(), http::verb::post, "/v1/completions", R"({"prompt":"hi","stream":true})");
  CHECK(busy_stream.status == 429);
}

TEST_CASE("http: a client that hangs up cancels its completion") {
  fixture f;
  f.svc->hold = true;
  for (bool stream : {false, true}) {
    int before = f.svc->cancels;
    asio::io_context ioc;
    tcp::socket s(ioc);
    s.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), f.port()));
    http::request<http::string_body> req(http::verb::post, "/v1/completions", 11);
    req.set(http::field::host, "127.0.0.1");
    req.body() = stream ? R"({"prompt":"hi","max_tokens":50,"stream":true})" : R"({"prompt":"hi","max_tokens":50})";
    req.prepare_payload();
    http::write(s, req);
    CHECK(eventually([&] { return f.svc->live() == 1; }));
    s.close();
    CHECK(eventually([&] { return f.svc->cancels == before + 1; }));
    CHECK(f.svc->live() == 0);
  }
}

// The disconnect watch reads while a completion runs; a byte that arrives first (the start
// of a pipelined request) completes that read. The watch must read on, or the hang-up after
// it goes unnoticed until the completion ends (issue 22: on_watch was not re-armed).
TEST_CASE("http: a client that sends a byte, then hangs up, still cancels its completion") {
  fixture f;
  f.svc->hold = true;
  asio::io_context ioc;
  tcp::socket s(ioc);
  s.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), f.port()));
  http::request<http::string_body> req(http::verb::post, "/v1/completions", 11);
  req.set(http::field::host, "127.0.0.1");
  req.body() = R"({"prompt":"hi","max_tokens":50})";
  req.prepare_payload();
  http::write(s, req);
  CHECK(eventually([&] { return f.svc->live() == 1; }));
  asio::write(s, asio::buffer("G", 1));
  s.close();
  CHECK(eventually([&] { return f.svc->cancels == 1; }));
  CHECK(f.svc->live() == 0);
}

// One prompt-length rule (base/prompt-limit.hpp) on every entry point of the server: with a
// context of 64, 63 prompt tokens pass and 64 are refused with the same words, by token ids or
// through the chat template, over HTTP and the WebSocket (the WebSocket's chat path used to
// give another message). The service's own check (the request actor) is in test-actors.
TEST_CASE("prompt length: n_ctx - 1 tokens pass, n_ctx are refused alike on every entry point") {
  infer::tokenizer_info info = infer::tokenizer::byte_level().info();
  info.chat_templates = {{"default", "{% for m in messages %}{{ m['content'] }}{% endfor %}"}};
  fixture f({}, true, infer::tokenizer::byte_level().with_info(info));
  const std::string want_ids = infer::prompt_too_long_message("prompt", 64, 64);
  const std::string want_chat = infer::prompt_too_long_message("messages", 64, 64);
  CHECK(want_ids == "prompt: 64 tokens, longer than the context allows (64 tokens, at most 63 for the prompt)");
  auto ids = [](int n) { return json(std::vector<int>(size_t(n), 97)); };
  auto chat = [](int n) { return json::array({{{"role", "user"}, {"content", std::string(size_t(n), 'a')}}}); };

  auto ok = http_call(f.port(), http::verb::post, "/v1/completions",
                      json{{"prompt", ids(63)}, {"max_tokens", 1}}.dump());
  CHECK(ok.status == 200);
  auto bad = http_call(f.port(), http::verb::post, "/v1/completions", json{{"prompt", ids(64)}, {"max_tokens", 1}}.dump());
  CHECK(bad.status == 400);
  CHECK(bad.j()["error"]["message"] == want_ids);

  auto chat_ok = http_call(f.port(), http::verb::post, "/v1/chat/completions",
                           json{{"messages", chat(63)}, {"max_tokens", 1}}.dump());
  CHECK(chat_ok.status == 200);
  auto chat_bad = http_call(f.port(), http::verb::post, "/v1/chat/completions",
                            json{{"messages", chat(64)}, {"max_tokens", 1}}.dump());
  CHECK(chat_bad.status == 400);
  CHECK(chat_bad.j()["error"]["message"] == want_chat);

  ws_client c(f.port());
  REQUIRE_FALSE(c.handshake_ec);
  c.send(json{{"type", "generate"}, {"id", "w1"}, {"prompt_tokens", ids(64)}, {"max_tokens", 1}});
  auto e1 = c.recv();
  CHECK(e1["type"] == "error");
  CHECK(e1["message"] == want_ids);
  c.send(json{{"type", "generate"}, {"id", "w2"}, {"messages", chat(64)}, {"max_tokens", 1}});
  auto e2 = c.recv();
  CHECK(e2["type"] == "error");
  CHECK(e2["message"] == want_chat);
  c.send(json{{"type", "generate"}, {"id", "w3"}, {"messages", chat(63)}, {"max_tokens", 1}});
  CHECK(c.recv()["type"] == "accepted");
}

TEST_CASE("http: keep-alive connection serves several completions in a row") {
  fixture f;
  asio::io_context ioc;
  tcp::socket s(ioc);
  s.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), f.port()));
  set_recv_timeout(s, 20);
  beast::flat_buffer b;
  for (int i = 1; i <= 3; ++i) {
    http::request<http::string_body> req(http::verb::post, "/v1/completions", 11);
    req.set(http::field::host, "127.0.0.1");
    req.body() = json{{"prompt", "hi"}, {"max_tokens", i}, {"stream", i == 2}}.dump();
    req.prepare_payload();
    http::write(s, req);
    http::response<http::string_body> res;
    http::read(s, b, res);
    CHECK(res.result_int() == 200);
    if (i != 2) CHECK(json::parse(res.body())["usage"]["completion_tokens"] == i);
    else CHECK(res.body().find("data: [DONE]") != std::string::npos);
  }
}

TEST_CASE("http: tokenize and detokenize") {
  fixture f;
  auto t = http_call(f.port(), http::verb::post, "/tokenize", R"({"prompt":"Hi!"})");
  REQUIRE(t.status == 200);
  CHECK(t.j()["tokens"] == json::array({'H', 'i', '!'}));
  CHECK(t.j()["count"] == 3);
  auto d = http_call(f.port(), http::verb::post, "/detokenize", R"({"tokens":[72,105,33]})");
  REQUIRE(d.status == 200);
  CHECK(d.j()["prompt"] == "Hi!");
  CHECK(http_call(f.port(), http::verb::post, "/detokenize", R"({"tokens":[256]})").status == 400);
  CHECK(http_call(f.port(), http::verb::post, "/tokenize", R"({"tokens":[1]})").status == 400);
}

TEST_CASE("bearer token: required on upgrade and HTTP, not on health probes") {
  fixture f([](infer::service_config& c) { c.api_key = "s3cret"; });
  {
    ws_client none(f.port());
    CHECK(none.handshake_ec);
    ws_client wrong(f.port(), "s3cre");
    CHECK(wrong.handshake_ec);
    ws_client right(f.port(), "s3cret");
    REQUIRE(!right.handshake_ec);
    right.send(gen("a", "x", 1));
    CHECK(right.recv()["type"] == "accepted");
  }
  auto no = http_call(f.port(), http::verb::post, "/v1/completions", R"({"prompt":"hi"})");
  CHECK(no.status == 401);
  CHECK(no.j()["error"]["code"] == "unauthorized");
  // /metrics stays open (server.metrics_require_key = false, as vLLM); /v1/status does not.
  CHECK(http_call(f.port(), http::verb::get, "/metrics").status == 200);
  CHECK(http_call(f.port(), http::verb::get, "/v1/status").status == 401);
  CHECK(http_call(f.port(), http::verb::get, "/v1/status", "", "wrong").status == 401);
  CHECK(http_call(f.port(), http::verb::get, "/v1/status", "", "s3cret").status == 200);
  CHECK(http_call(f.port(), http::verb::post, "/v1/completions", R"({"prompt":"hi","max_tokens":1})", "s3cret")
            .status == 200);
  CHECK(http_call(f.port(), http::verb::get, "/healthz").status == 200);
  CHECK(http_call(f.port(), http::verb::get, "/readyz").status == 200);
}

TEST_CASE("limits: connections beyond max_connections are refused, header size is bounded") {
  fixture f([](infer::service_config& c) {
    c.max_connections = 2;
    c.max_header_bytes = 1024;
  });
  ws_client a(f.port()), b(f.port());
  REQUIRE(!a.handshake_ec);
  REQUIRE(!b.handshake_ec);
  ws_client c(f.port());
  CHECK(c.handshake_ec);  // closed at accept
  a.ws.close(websocket::close_code::normal);
  // the slot comes back once the first connection is gone
  CHECK(eventually([&] {
    ws_client d(f.port());
    return !d.handshake_ec;
  }));
  b.ws.close(websocket::close_code::normal);
  CHECK(eventually([&] {
    asio::io_context ioc;
    tcp::socket s(ioc);
    s.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), f.port()));
    set_recv_timeout(s, 20);
    http::request<http::string_body> req(http::verb::get, "/healthz", 11);
    req.set(http::field::host, "127.0.0.1");
    req.set("X-Padding", std::string(4000, 'p'));
    http::write(s, req);
    beast::flat_buffer buf;
    http::response<http::string_body> res;
    beast::error_code ec;
    http::read(s, buf, res, ec);
    return !ec && res.result_int() == 431;
  }));
}

TEST_CASE("listen address parsing (the one parser: config's, also the server's)") {
  auto a = infer::parse_listen_address("127.0.0.1:8080");
  REQUIRE(a.has_value());
  CHECK(a->host == "127.0.0.1");
  CHECK(a->port == 8080);
  auto b = infer::parse_listen_address("[::1]:0");
  REQUIRE(b.has_value());
  CHECK(b->host == "::1");
  CHECK(!infer::parse_listen_address("8080").has_value());
  CHECK(!infer::parse_listen_address("host:99999").has_value());
  CHECK(!infer::parse_listen_address(":80").has_value());
  CHECK(!infer::parse_listen_address("::1:80").has_value());  // IPv6 needs brackets
  // A server started on an address the config would refuse fails the same way.
  infer::service_config cfg;
  cfg.listen = "[::1]8080";
  auto s = infer::net::server::start(cfg);
  REQUIRE_FALSE(s.has_value());
  CHECK(s.error().message.find("server.listen") != std::string::npos);
}

TEST_CASE("limits: an idle HTTP connection is closed by the server") {
  fixture f([](infer::service_config& c) { c.idle_timeout_ms = 100; });
  asio::io_context ioc;
  tcp::socket s(ioc);
  s.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), f.port()));
  set_recv_timeout(s, 20);
  char byte;
  beast::error_code ec;
  size_t n = s.read_some(asio::buffer(&byte, 1), ec);  // blocks until the server gives up on us
  CHECK(n == 0);
  CHECK(ec == asio::error::eof);
}

TEST_CASE("http: Expect: 100-continue is answered before the body is read") {
  fixture f;
  asio::io_context ioc;
  tcp::socket s(ioc);
  s.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), f.port()));
  set_recv_timeout(s, 20);
  std::string body = R"({"prompt":"hi","max_tokens":2})";
  std::string head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
                     "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n";
  asio::write(s, asio::buffer(head));
  // The interim answer comes while the body has not been sent.
  std::string interim;
  asio::read_until(s, asio::dynamic_buffer(interim), "\r\n\r\n");
  CHECK(interim.rfind("HTTP/1.1 100 Continue\r\n\r\n", 0) == 0);
  asio::write(s, asio::buffer(body));
  beast::flat_buffer b;
  http::response<http::string_body> res;
  http::read(s, b, res);
  CHECK(res.result_int() == 200);
  CHECK(json::parse(res.body())["choices"][0]["text"] == "ab");
}

// ---- per-client rate limit ------------------------------------------------------------------

TEST_CASE("rate_limiter: buckets per client, refill with the clock, bounded table") {
  using namespace std::chrono_literals;
  const auto t0 = std::chrono::steady_clock::time_point{} + 1h;
  SUBCASE("off") {
    infer::net::rate_limiter off(0, 5, 10);
    CHECK(!off.enabled());
    for (int i = 0; i < 100; ++i) CHECK(off.take("1.2.3.4", t0) == 0);
    CHECK(off.clients() == 0);
  }
  SUBCASE("burst, then one token per 1/rate, per client") {
    infer::net::rate_limiter rl(2.0, 3, 100);  // 2/s, burst 3
    for (int i = 0; i < 3; ++i) CHECK(rl.take("a", t0) == 0);
    int64_t wait = rl.take("a", t0);
    CHECK(wait >= 500);  // one token takes 500 ms at 2/s
    CHECK(wait <= 501);
    CHECK(rl.take("b", t0) == 0);  // another client has its own bucket
    CHECK(rl.take("a", t0 + 250ms) > 0);
    int64_t rest = rl.take("a", t0 + 250ms);
    CHECK(rest >= 250);
    CHECK(rest <= 251);
    CHECK(rl.take("a", t0 + 250ms + std::chrono::milliseconds(rest)) == 0);  // the wait it named is enough
    CHECK(rl.take("a", t0 + 250ms + std::chrono::milliseconds(rest)) > 0);
    CHECK(rl.clients() == 2);
  }
  SUBCASE("a bucket full again is forgotten; at the cap the least recently seen goes") {
    infer::net::rate_limiter rl(1.0, 2, 3);  // full again 2 s after the last use
    CHECK(rl.take("a", t0) == 0);
    CHECK(rl.take("b", t0 + 1s) == 0);
    CHECK(rl.clients() == 2);
    CHECK(rl.take("c", t0 + 2s) == 0);  // "a" idle 2 s: full, dropped
    CHECK(rl.clients() == 2);
    CHECK(rl.evicted_at_cap() == 0);
    // Four clients at once where three fit: the least recently seen is dropped early.
    CHECK(rl.take("d", t0 + 2s) == 0);
    CHECK(rl.take("e", t0 + 2s) == 0);
    CHECK(rl.clients() == 3);
    CHECK(rl.evicted_at_cap() == 1);
    for (int i = 0; i < 1000; ++i) rl.take("x" + std::to_string(i), t0 + 2s);
    CHECK(rl.clients() == 3);
    CHECK(rl.evicted_at_cap() == 1001);
  }
}

TEST_CASE("rate limit: WebSocket generate over the client's rate gets rate_limited with retry_after_ms") {
  manual_clock clk;
  fixture f([](infer::service_config& c) {
    c.rate_limit_rps = 2;
    c.rate_limit_burst = 2;
  });
  f.srv->set_rate_limit_clock([&clk] { return clk.now(); });
  ws_client c(f.port());
  REQUIRE(!c.handshake_ec);
  c.send(gen("a", "x", 1));
  c.send(gen("b", "x", 1));
  c.send(gen("c", "x", 1));
  std::map<std::string, json> terminal;
  while (terminal.size() < 3) {
    auto e = c.recv();
    if (e["type"] == "done" || e["type"] == "error") terminal[e["id"]] = e;
  }
  CHECK(terminal["a"]["type"] == "done");
  CHECK(terminal["b"]["type"] == "done");
  CHECK(terminal["c"]["type"] == "error");
  CHECK(terminal["c"]["code"] == "rate_limited");
  int64_t wait = terminal["c"]["retry_after_ms"].get<int64_t>();
  CHECK(wait >= 500);  // from the bucket: one token at 2/s
  CHECK(wait <= 501);
  CHECK(f.svc->submitted == 2);

  // Per client, not per connection: a second connection from the same address shares it.
  ws_client c2(f.port());
  c2.send(gen("d", "x", 1));
  auto e = c2.recv();
  CHECK(e["code"] == "rate_limited");

  // Invalid frames take no token and are answered as such.
  c2.send(std::string(R"({"type":"generate","id":"bad"})"));
  CHECK(c2.recv()["code"] == "invalid_request");

  clk.ms += wait;  // refilled: exactly one token is back
  c.send(gen("e", "x", 1));
  CHECK(c.recv() == json{{"type", "accepted"}, {"id", "e"}});
  CHECK(c.recv()["type"] == "token");
  CHECK(c.recv()["type"] == "done");
  c.send(gen("f", "x", 1));
  CHECK(c.recv()["code"] == "rate_limited");

  auto m = http_call(f.port(), http::verb::get, "/metrics").body;
  CHECK(metric(m, "infer_requests_total{outcome=\"rate_limited\"}") == 3);
  CHECK(metric(m, "infer_requests_total{outcome=\"invalid_request\"}") == 1);
  CHECK(metric(m, "infer_rate_limit_clients") == 1);
}

TEST_CASE("rate limit: /v1/completions over the rate answers 429 with Retry-After and retry_after_ms") {
  manual_clock clk;
  fixture f([](infer::service_config& c) {
    c.rate_limit_rps = 0.5;  // one token per 2 s
    c.rate_limit_burst = 1;
  });
  f.srv->set_rate_limit_clock([&clk] { return clk.now(); });
  const std::string body = R"({"prompt":"hi","max_tokens":2})";
  CHECK(http_call(f.port(), http::verb::post, "/v1/completions", body).status == 200);
  auto r = http_call(f.port(), http::verb::post, "/v1/completions", body);
  CHECK(r.status == 429);
  CHECK(r.headers[http::field::retry_after] == "3");  // whole seconds, rounded up from 2001 ms
  auto err = r.j()["error"];
  CHECK(err["code"] == "rate_limited");
  CHECK(err["type"] == "rate_limit_error");
  CHECK(err["retry_after_ms"] >= 2000);
  CHECK(err["retry_after_ms"] <= 2001);
  // Streaming requests count alike; tokenize is not a generation and is never limited.
  CHECK(http_call(f.port(), http::verb::post, "/v1/completions", R"({"prompt":"hi","stream":true})").status == 429);
  CHECK(http_call(f.port(), http::verb::post, "/tokenize", R"({"prompt":"Hi"})").status == 200);
  clk.ms += err["retry_after_ms"].get<int64_t>();
  auto ok = http_call(f.port(), http::verb::post, "/v1/completions", body);
  CHECK(ok.status == 200);
  CHECK(ok.j()["choices"][0]["text"] == "ab");
  CHECK(f.svc->submitted == 2);
}

TEST_CASE("rate limit: after waiting retry_after_ms (real clock) the next request goes through") {
  fixture f([](infer::service_config& c) {
    c.rate_limit_rps = 2;
    c.rate_limit_burst = 1;
  });
  ws_client c(f.port());
  // Requests in a row, each answered before the next: one is refused within a few (each
  // would have to take 500 ms to be let through).
  int64_t wait = 0;
  for (int i = 0; i < 50 && wait == 0; ++i) {
    c.send(gen("r" + std::to_string(i), "x", 1));
    json e;
    while ((e = c.recv())["type"] != "done" && e["type"] != "error") {
    }
    if (e["type"] == "error") {
      REQUIRE(e["code"] == "rate_limited");
      wait = e["retry_after_ms"].get<int64_t>();
    }
  }
  REQUIRE(wait > 0);
  CHECK(wait <= 501);
  std::this_thread::sleep_for(std::chrono::milliseconds(wait));
  c.send(gen("after", "x", 1));
  CHECK(c.recv() == json{{"type", "accepted"}, {"id", "after"}});
}

// ---- slow consumers --------------------------------------------------------------------------

TEST_CASE("slow consumer: a WebSocket client that stops reading has its request cancelled and gets 1008") {
  fixture f([](infer::service_config& c) {
    c.max_pending_bytes = 64 << 10;
    c.max_tokens_limit = 1 << 30;
  });
  f.svc->tokens_per_tick = 2000;  // far faster than a client that does not read drains
  ws_client c(f.port(), "", 4096);
  REQUIRE(!c.handshake_ec);
  c.send(gen("flood", "x", 1 << 30));
  // Not reading: the socket buffers fill, then the server's queue, then it gives up.
  CHECK(eventually([&] { return f.svc->cancels == 1; }));
  CHECK(f.svc->live() == 0);  // the request's KV blocks are free
  // Reading again, the client finds the frames that were on their way, then the close.
  size_t frames = c.drain();
  CHECK(frames > 0);
  CHECK(int(c.ws.reason().code) == int(websocket::close_code::policy_error));
  CHECK(std::string(c.ws.reason().reason.data(), c.ws.reason().reason.size()).find("too slow") != std::string::npos);
  CHECK(f.svc->cancels == 1);
  CHECK(eventually([&] {
    auto m = http_call(f.port(), http::verb::get, "/metrics").body;
    return metric(m, "infer_connections_slow_closed_total") == 1 && metric(m, "infer_connections_open") == 1;
  }));
  // The server is fine for everyone else.
  f.svc->tokens_per_tick = 1;
  ws_client other(f.port());
  other.send(gen("ok", "x", 2));
  CHECK(other.recv()["type"] == "accepted");
  CHECK(other.recv()["type"] == "token");
  CHECK(other.recv()["type"] == "token");
  CHECK(other.recv()["type"] == "done");
}

TEST_CASE("slow consumer: an SSE client that stops reading has its completion cancelled and is disconnected") {
  fixture f([](infer::service_config& c) {
    c.max_pending_bytes = 64 << 10;
    c.max_tokens_limit = 1 << 30;
  });
  f.svc->tokens_per_tick = 2000;
  asio::io_context ioc;
  tcp::socket s(ioc);
  s.open(tcp::v4());
  s.set_option(asio::socket_base::receive_buffer_size(4096));
  s.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), f.port()));
  set_recv_timeout(s, 20);
  http::request<http::string_body> req(http::verb::post, "/v1/completions", 11);
  req.set(http::field::host, "127.0.0.1");
  req.body() = json{{"prompt", "hi"}, {"max_tokens", 1 << 30}, {"stream", true}}.dump();
  req.prepare_payload();
  http::write(s, req);
  CHECK(eventually([&] { return f.svc->cancels == 1; }));
  CHECK(f.svc->live() == 0);
  // What was on its way arrives, then the connection ends without the stream's end.
  std::string tail;
  char buf[65536];
  beast::error_code ec;
  size_t total = 0;
  while (!ec) {
    size_t n = s.read_some(asio::buffer(buf), ec);
    total += n;
    tail.append(buf, n);
    if (tail.size() > 4096) tail.erase(0, tail.size() - 4096);
  }
  CHECK(total > 0);
  CHECK((ec == asio::error::eof || ec == asio::error::connection_reset));
  CHECK(tail.find("[DONE]") == std::string::npos);
  CHECK(eventually([&] {
    auto m = http_call(f.port(), http::verb::get, "/metrics").body;
    return metric(m, "infer_connections_slow_closed_total") == 1;
  }));
}

// ---- the API key as a WebSocket subprotocol (browsers cannot send Authorization) -----------

namespace {
struct offer_result {
  beast::error_code ec;
  int status = 0;
  std::string selected;  // Sec-WebSocket-Protocol of the answer
};
offer_result upgrade_offering(uint16_t port, const std::string& protocols) {
  asio::io_context ioc;
  websocket::stream<tcp::socket> ws{ioc};
  ws.next_layer().connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
  set_recv_timeout(ws.next_layer(), 20);
  ws.set_option(websocket::stream_base::decorator(
      [protocols](websocket::request_type& r) { r.set(http::field::sec_websocket_protocol, protocols); }));
  websocket::response_type res;
  offer_result out;
  ws.handshake(res, "127.0.0.1", "/v1/stream", out.ec);
  out.status = int(res.result_int());
  out.selected = std::string(res[http::field::sec_websocket_protocol]);
  if (!out.ec) {  // and the connection serves
    ws.text(true);
    ws.write(asio::buffer(gen("p", "x", 1).dump()));
    beast::flat_buffer b;
    ws.read(b);
    if (json::parse(beast::buffers_to_string(b.data()))["type"] != "accepted") out.status = -1;
  }
  return out;
}
}  // namespace

TEST_CASE("bearer token: a WebSocket may present the key as subprotocol bearer.KEY") {
  fixture f([](infer::service_config& c) { c.api_key = "s3cret"; });
  auto both = upgrade_offering(f.port(), "inferd.v1, bearer.s3cret");
  CHECK(!both.ec);
  CHECK(both.status == 101);
  CHECK(both.selected == "inferd.v1");  // the key is not echoed when it need not be
  auto only = upgrade_offering(f.port(), "bearer.s3cret");
  CHECK(!only.ec);
  CHECK(only.selected == "bearer.s3cret");  // a browser needs one of its offers back
  auto wrong = upgrade_offering(f.port(), "inferd.v1, bearer.s3cre");
  CHECK(wrong.ec);
  CHECK(wrong.status == 401);
  auto none = upgrade_offering(f.port(), "inferd.v1");
  CHECK(none.ec);
  CHECK(none.status == 401);
  CHECK(f.svc->submitted == 2);
}

TEST_CASE("subprotocol inferd.v1 is answered without an API key configured") {
  fixture f;
  auto r = upgrade_offering(f.port(), "chat, inferd.v1");
  CHECK(!r.ec);
  CHECK(r.selected == "inferd.v1");
  auto b = upgrade_offering(f.port(), "bearer.anything");  // no key to match: any is fine, and answered
  CHECK(!b.ec);
  CHECK(b.selected == "bearer.anything");
  auto other = upgrade_offering(f.port(), "chat");  // nothing we speak: no subprotocol, still served
  CHECK(!other.ec);
  CHECK(other.selected.empty());
}
