// Multi-node in one process: two actor systems, each with CAF's middleman, talking over
// loopback exactly as two machines would. The process-level scenarios (kill -9, kill -STOP)
// are in tests/e2e/cluster-e2e.js; these check the handshake and the token path.
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <boost/asio.hpp>
#include <chrono>
#include <thread>

#include <caf/all.hpp>
#include <caf/io/all.hpp>

#include "actors/messages.hpp"
#include "actors/service.hpp"
#include "actors/worker-node.hpp"
#include "config/service-config.hpp"
#include "net/status-json.hpp"

namespace {

using namespace std::chrono_literals;

caf::actor_system_config& with_middleman(caf::actor_system_config& cfg) {
  infer::register_message_types(cfg);
  cfg.load<caf::io::middleman>();
  cfg.set("middleman.heartbeat-interval", caf::timespan{100ms});
  cfg.set("middleman.connection-timeout", caf::timespan{2000ms});
  return cfg;
}

infer::service_config tiny(uint64_t seed = 5) {
  infer::service_config c;
  c.model = "synthetic:tiny";
  c.model_seed = seed;
  c.backend = "cpu";
  c.cpu_threads = 1;
  c.listen = "127.0.0.1:0";
  return c;
}

struct join_reply {
  bool ok = false;
  std::string why;
  int32_t n_workers = -1;
};

// Joins the agent published at `port` the way a front's node link does.
join_reply join(caf::actor_system& sys, uint16_t port, uint32_t version, const std::string& model_id) {
  auto agent = sys.middleman().remote_actor("127.0.0.1", port);
  REQUIRE(agent);
  caf::scoped_actor self{sys};
  join_reply r;
  self->request(*agent, 10s, infer::join_atom::value, version, model_id, caf::actor_cast<caf::actor>(self))
      .receive(
          [&](bool ok, const std::string& why, int32_t n) {
            r.ok = ok;
            r.why = why;
            r.n_workers = n;
          },
          [&](caf::error& e) { FAIL("join failed: " << sys.render(e)); });
  return r;
}

std::vector<int32_t> greedy(infer::service& svc, const std::string& prompt, int32_t n) {
  infer::generate_request req;
  req.prompt = prompt;
  req.max_tokens = n;
  req.sampling.temperature = 0;
  auto c = svc.generate(req);
  REQUIRE_MESSAGE(c.ok, c.terminal.message);
  return c.tokens;
}

}  // namespace

TEST_CASE("worker node: the handshake refuses another protocol version or another model, by value") {
  caf::actor_system_config wcfg;
  caf::actor_system wsys{with_middleman(wcfg)};
  auto cfg = tiny();
  cfg.role = "worker";
  cfg.workers = 2;
  auto node = infer::worker_node::start(wsys, cfg);
  REQUIRE_MESSAGE(node, node.error().message);
  const uint16_t port = (*node)->port();
  CHECK(port != 0);

  caf::actor_system_config fcfg;
  caf::actor_system fsys{with_middleman(fcfg)};
  const std::string model = "synthetic:tiny seed=5 n_vocab=256 n_ctx=1024 n_embd=128 n_layer=4 n_head=4 tokenizer=256";

  auto v = join(fsys, port, infer::wire_protocol_version + 1, model);
  CHECK_FALSE(v.ok);
  CHECK(v.why.find("protocol version mismatch") != std::string::npos);
  CHECK(v.why.find(std::to_string(infer::wire_protocol_version + 1)) != std::string::npos);

  auto m = join(fsys, port, infer::wire_protocol_version, "synthetic:tiny seed=6 n_vocab=256");
  CHECK_FALSE(m.ok);
  CHECK(m.why.find("model mismatch") != std::string::npos);

  {
    // join() asks from a scoped actor that lives only for the call: the node sees that
    // front go (down) and is free for the next one.
    auto ok = join(fsys, port, infer::wire_protocol_version, model);
    CHECK_MESSAGE(ok.ok, ok.why);
    CHECK(ok.n_workers == 2);
  }
  {
    // A second front while the first is alive is refused.
    caf::scoped_actor first{fsys};
    auto agent = fsys.middleman().remote_actor("127.0.0.1", port);
    REQUIRE(agent);
    bool first_ok = false;
    for (int i = 0; i < 100 && !first_ok; ++i) {  // until the node has noticed the previous one went
      first->request(*agent, 10s, infer::join_atom::value, infer::wire_protocol_version, model,
                     caf::actor_cast<caf::actor>(first))
          .receive([&](bool ok, const std::string&, int32_t) { first_ok = ok; }, [&](caf::error&) {});
      if (!first_ok) std::this_thread::sleep_for(20ms);
    }
    REQUIRE(first_ok);
    auto second = join(fsys, port, infer::wire_protocol_version, model);
    CHECK_FALSE(second.ok);
    CHECK(second.why.find("already serves another front node") != std::string::npos);
  }
  (*node)->shutdown();
}

TEST_CASE("front node with no local workers: tokens come from the worker node, equal to a local run") {
  caf::actor_system_config wcfg;
  caf::actor_system wsys{with_middleman(wcfg)};
  auto wc = tiny();
  wc.role = "worker";
  auto node = infer::worker_node::start(wsys, wc);
  REQUIRE_MESSAGE(node, node.error().message);

  // The reference: the same model in one process.
  std::vector<std::vector<int32_t>> local;
  {
    caf::actor_system_config lcfg;
    infer::register_message_types(lcfg);
    caf::actor_system lsys{lcfg};
    auto svc = infer::service::start(lsys, tiny());
    REQUIRE_MESSAGE(svc, svc.error().message);
    for (int i = 0; i < 4; ++i) local.push_back(greedy(**svc, "prompt " + std::to_string(i), 20));
    (*svc)->shutdown();
  }

  caf::actor_system_config fcfg;
  caf::actor_system fsys{with_middleman(fcfg)};
  auto fc = tiny();
  fc.workers = 0;
  fc.worker_nodes = {"127.0.0.1:" + std::to_string((*node)->port())};
  auto front = infer::service::start(fsys, fc);
  REQUIRE_MESSAGE(front, front.error().message);
  for (int i = 0; i < 200 && !(*front)->ready(); ++i) std::this_thread::sleep_for(20ms);
  REQUIRE((*front)->ready());
  const std::string st = infer::net::status_json((*front)->status());
  CHECK(st.find("\"state\":\"connected\"") != std::string::npos);
  CHECK(st.find("\"node\":\"127.0.0.1:" + std::to_string((*node)->port()) + "\"") != std::string::npos);
  for (int i = 0; i < 4; ++i) CHECK(greedy(**front, "prompt " + std::to_string(i), 20) == local[size_t(i)]);
  {
    // A stop token id ends the sequence on the worker node, where the token is generated.
    infer::generate_request req;
    req.prompt = "prompt 0";
    req.max_tokens = 20;
    req.sampling.temperature = 0;
    req.stop_token_ids = {local[0][5]};
    auto c = (*front)->generate(req);
    REQUIRE_MESSAGE(c.ok, c.terminal.message);
    CHECK(c.terminal.reason == infer::finish_reason::stop);
    const auto first = std::find(local[0].begin(), local[0].end(), local[0][5]);
    CHECK(c.tokens == std::vector<int32_t>(local[0].begin(), first + 1));
  }

  // A front whose model differs is refused: the node shows up as refused, nothing is routed.
  caf::actor_system_config gcfg;
  caf::actor_system gsys{with_middleman(gcfg)};
  auto gc = tiny(6);
  gc.workers = 0;
  gc.worker_nodes = fc.worker_nodes;
  auto other = infer::service::start(gsys, gc);
  REQUIRE_MESSAGE(other, other.error().message);
  std::string gst;
  for (int i = 0; i < 200; ++i) {
    gst = infer::net::status_json((*other)->status());
    if (gst.find("\"state\":\"refused\"") != std::string::npos) break;
    std::this_thread::sleep_for(20ms);
  }
  CHECK(gst.find("\"state\":\"refused\"") != std::string::npos);
  CHECK(gst.find("model mismatch") != std::string::npos);
  CHECK_FALSE((*other)->ready());
  (*other)->shutdown();

  // The first front still works after the refused one came and went.
  CHECK(greedy(**front, "prompt 0", 20) == local[0]);
  (*front)->shutdown();
  (*node)->shutdown();
}

namespace {

namespace asio = boost::asio;

// Waits up to `limit` for the peer to close `s`: true if it did (EOF or reset).
bool closed_by_peer(asio::ip::tcp::socket& s, std::chrono::milliseconds limit) {
  timeval tv{long(limit.count() / 1000), long(limit.count() % 1000) * 1000};
  ::setsockopt(s.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char b[64];
  boost::system::error_code ec;
  s.read_some(asio::buffer(b), ec);  // CAF's server handshake may come first: read on
  while (!ec) s.read_some(asio::buffer(b), ec);
  return ec == asio::error::eof || ec == asio::error::connection_reset;
}

}  // namespace

// Issue 13.5: a peer of the worker's CAF port could announce any payload size in a 32-byte
// BASP header and CAF allocated it (three headers of 1 GiB: +3 GB), with no connection cap.
TEST_CASE("worker node: a BASP header announcing more than cluster.max_message_bytes closes the connection") {
  caf::actor_system_config wcfg;
  caf::actor_system wsys{with_middleman(wcfg)};
  auto cfg = tiny();
  cfg.role = "worker";
  cfg.cluster_max_message_bytes = 1 << 20;
  cfg.cluster_max_connections = 2;
  auto node = infer::worker_node::start(wsys, cfg);
  REQUIRE_MESSAGE(node, node.error().message);
  asio::io_context ioc;
  const asio::ip::tcp::endpoint ep(asio::ip::make_address("127.0.0.1"), (*node)->port());

  asio::ip::tcp::socket hostile(ioc);
  hostile.connect(ep);
  std::array<uint8_t, 32> hdr{};
  hdr[0] = 0x01;  // client_handshake
  const uint32_t gib = 1u << 30;
  hdr[4] = uint8_t(gib >> 24), hdr[5] = uint8_t(gib >> 16), hdr[6] = uint8_t(gib >> 8), hdr[7] = uint8_t(gib);
  asio::write(hostile, asio::buffer(hdr));
  // Within 1 s: less than middleman.connection-timeout (2 s), after which CAF itself would
  // drop a silent peer; the guard closes at once.
  CHECK(closed_by_peer(hostile, 1s));

  // The cap: two open connections, the third is closed at once.
  asio::ip::tcp::socket a(ioc), b(ioc), c(ioc);
  a.connect(ep);
  b.connect(ep);
  std::this_thread::sleep_for(200ms);  // both accepted (a closed third would otherwise race them)
  c.connect(ep);
  CHECK(closed_by_peer(c, 1s));
  a.close();
  b.close();
  std::this_thread::sleep_for(500ms);  // the guard sees them go

  // And the node still takes a front.
  caf::actor_system_config fcfg;
  caf::actor_system fsys{with_middleman(fcfg)};
  const std::string model = "synthetic:tiny seed=5 n_vocab=256 n_ctx=1024 n_embd=128 n_layer=4 n_head=4 tokenizer=256";
  auto ok = join(fsys, (*node)->port(), infer::wire_protocol_version, model);
  CHECK_MESSAGE(ok.ok, ok.why);
  (*node)->shutdown();
}
