// The messages that cross nodes survive CAF 0.17's binary serialization, as a whole
// caf::message (which needs the types registered), with float fields kept bit-exact.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <memory>

#include <caf/all.hpp>
#include <caf/binary_deserializer.hpp>
#include <caf/binary_serializer.hpp>

#include "actors/messages.hpp"
#include "actors/prefix-index.hpp"

using namespace infer;

namespace {

struct sys_fixture {
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  sys_fixture() {
    register_message_types(cfg);
    sys = std::make_unique<caf::actor_system>(cfg);
  }
};

template <class T>
T round_trip(caf::actor_system& sys, const T& x) {
  caf::message in = caf::make_message(x);
  std::vector<char> buf;
  caf::binary_serializer sink{sys, buf};
  auto e1 = sink(in);
  REQUIRE_MESSAGE(!e1, sys.render(e1));
  REQUIRE(!buf.empty());
  caf::message out;
  caf::binary_deserializer source{sys, buf};
  auto e2 = source(out);
  REQUIRE_MESSAGE(!e2, sys.render(e2));
  REQUIRE(out.match_elements<T>());
  return out.get_as<T>(0);
}

}  // namespace

TEST_CASE("messages: sampling parameters cross as bit patterns, even NaN, -0 and infinity") {
  sys_fixture f;
  for (float t : {0.0f, -0.0f, 0.7f, std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN(),
                  std::numeric_limits<float>::denorm_min()}) {
    sampling_params p;
    p.temperature = t;
    p.top_k = 40;
    p.top_p = 0.95f;
    p.seed = 0xFEEDFACECAFEBEEFull;
    p.min_p = t;
    p.presence_penalty = -1.5f;
    p.frequency_penalty = t;
    p.repetition_penalty = 1.25f;
    p.min_tokens = 3;
    p.logprobs = 20;
    admit_msg a;
    a.id = 7;
    a.prompt = {1, 2, 3};
    a.generated = {4};
    a.max_tokens = 9;
    a.sampling = wire_sampling::from(p, {{5, 100.0f}, {9, -t}});
    a.stop_ids = {50256, 7};
    a.grammar = "s2:{\"type\":\"object\"}";
    admit_msg b = round_trip(*f.sys, a);
    CHECK(b.grammar == a.grammar);
    sampling_params q = b.sampling.to();
    CHECK(std::bit_cast<uint32_t>(q.temperature) == std::bit_cast<uint32_t>(t));
    CHECK(q.top_p == 0.95f);
    CHECK(q.top_k == 40);
    CHECK(q.seed == p.seed);
    CHECK(std::bit_cast<uint32_t>(q.min_p) == std::bit_cast<uint32_t>(t));
    CHECK(std::bit_cast<uint32_t>(q.frequency_penalty) == std::bit_cast<uint32_t>(t));
    CHECK(q.presence_penalty == -1.5f);
    CHECK(q.repetition_penalty == 1.25f);
    CHECK(q.min_tokens == 3);
    CHECK(q.logprobs == 20);
    const auto bias = b.sampling.bias();
    REQUIRE(bias.size() == 2);
    CHECK(bias[0] == std::pair<int32_t, float>{5, 100.0f});
    CHECK(bias[1].first == 9);
    CHECK(std::bit_cast<uint32_t>(bias[1].second) == std::bit_cast<uint32_t>(-t));
    CHECK(b.id == 7);
    CHECK(b.prompt == a.prompt);
    CHECK(b.generated == a.generated);
    CHECK(b.max_tokens == 9);
    CHECK(b.stop_ids == a.stop_ids);
  }
}

TEST_CASE("messages: every message type that crosses nodes round-trips") {
  sys_fixture f;
  token_msg t;
  t.id = 42;
  t.index = 3;
  t.token = 255;
  t.last = true;
  t.stop = true;
  t.attempt = 5;
  t.cached_tokens = 48;
  auto t2 = round_trip(*f.sys, t);
  CHECK(t2.cached_tokens == 48);
  CHECK(t2.id == 42);
  CHECK(t2.index == 3);
  CHECK(t2.token == 255);
  CHECK(t2.last);
  CHECK(t2.stop);
  CHECK(t2.attempt == 5);
  CHECK(t2.n_top == -1);
  CHECK_FALSE(t2.complete);
  token_msg tc;
  tc.complete = true;
  tc.last = true;
  CHECK(round_trip(*f.sys, tc).complete);
  token_msg tl{43, 0, 7, false, false, 1, -1, 2, std::bit_cast<uint32_t>(-0.5f), {7, 8},
               {std::bit_cast<uint32_t>(-0.5f), std::bit_cast<uint32_t>(-std::numeric_limits<float>::infinity())},
               0, {}, {}, {}, false};
  auto tl2 = round_trip(*f.sys, tl);
  CHECK(tl2.n_top == 2);
  CHECK(std::bit_cast<float>(tl2.logprob_bits) == -0.5f);
  CHECK(tl2.top_ids == std::vector<int32_t>{7, 8});
  CHECK(std::bit_cast<float>(tl2.top_bits[1]) == -std::numeric_limits<float>::infinity());

  worker_report_msg r;
  r.worker = 1;
  r.admits_seen = 10;
  r.n_running = 3;
  r.n_waiting = 2;
  r.free_blocks = -4;
  r.total_blocks = 100;
  r.used_blocks = 50;
  r.batch_seqs = 3;
  r.batch_tokens = 70;
  r.n_sampled = 3;
  r.step_us = 1234;
  r.preemptions = 5;
  r.prefix_queries = 1000;
  r.prefix_hits = 640;
  r.cached_blocks = 40;
  r.left = {8, 9};
  auto r2 = round_trip(*f.sys, r);
  CHECK(r2.worker == 1);
  CHECK(r2.admits_seen == 10);
  CHECK(r2.free_blocks == -4);
  CHECK(r2.step_us == 1234);
  CHECK(r2.preemptions == 5);
  CHECK(r2.prefix_queries == 1000);
  CHECK(r2.prefix_hits == 640);
  CHECK(r2.cached_blocks == 40);
  CHECK(r2.left == std::vector<uint64_t>{8, 9});

  seq_gone_msg g{5, 1, true, false, "too long"};
  auto g2 = round_trip(*f.sys, g);
  CHECK(g2.id == 5);
  CHECK(g2.rejected);
  CHECK(g2.message == "too long");

  CHECK(round_trip(*f.sys, cancel_msg{77}).id == 77);
  worker_hello_msg h;
  h.worker = 2;
  h.total_blocks = 64;
  h.block_size = 16;
  h.n_ctx = 1024;
  h.max_running = 32;
  h.backend = "cuda";
  auto h2 = round_trip(*f.sys, h);
  CHECK(h2.total_blocks == 64);
  CHECK(h2.backend == "cuda");
  CHECK_FALSE(h2.handle);  // a null handle stays null

  seq_closed_msg c{3, uint8_t(closed_why::lost), "worker failed"};
  auto c2 = round_trip(*f.sys, c);
  CHECK(c2.why == uint8_t(closed_why::lost));
  enqueue_msg e;
  e.id = 4;
  e.prio = 0;
  e.prompt = {5};
  e.resume = true;
  e.grammar = "r0:\\d+";
  auto e2 = round_trip(*f.sys, e);
  CHECK(e2.resume);
  CHECK(e2.grammar == "r0:\\d+");
  CHECK(e2.prompt == std::vector<int32_t>{5});
  CHECK(round_trip(*f.sys, worker_down_msg{1, "x"}).reason == "x");
  CHECK(round_trip(*f.sys, admission_msg{1, false, 1, 100, "full"}).retry_after_ms == 100);
  CHECK(round_trip(*f.sys, dispatched_msg{1, 3}).worker == 3);
}

TEST_CASE("prefix_index: the batcher's bounded estimate of a worker's cache") {
  std::vector<int32_t> a, b;
  for (int i = 0; i < 65; ++i) a.push_back(i), b.push_back(i < 32 ? i : 1000 + i);
  std::vector<uint64_t> ca, cb;
  prefix_chain(a, 16, ca);
  prefix_chain(b, 16, cb);
  CHECK(ca.size() == 4);  // the blocks wholly before the last token
  CHECK(ca[0] == cb[0]);
  CHECK(ca[1] == cb[1]);
  CHECK(ca[2] != cb[2]);  // a chain: equal from the first differing block on never again
  prefix_index idx;
  idx.reset(6);
  CHECK(idx.match(ca) == 0);
  idx.insert(ca);
  CHECK(idx.match(ca) == 4);
  CHECK(idx.match(cb) == 2);
  idx.insert(cb);  // 4 + 2 new blocks: at the bound
  CHECK(idx.size() == 6);
  std::vector<int32_t> c(65, 7);
  std::vector<uint64_t> cc;
  prefix_chain(c, 16, cc);
  idx.insert(cc);  // 4 more: the least recently sent go, tails before heads
  CHECK(idx.size() == 6);
  CHECK(idx.match(cc) == 4);
  CHECK(idx.match(cb) == 2);  // the shared head was refreshed by b
  CHECK(idx.match(ca) == 2);
  {
    // A copy (a growing vector of worker slots) stands on its own.
    auto copy = std::make_unique<prefix_index>(idx);
    prefix_index moved = std::move(*copy);
    copy.reset();
    idx.insert(ca);
    CHECK(moved.match(cc) == 4);
    moved.insert(ca);
    CHECK(moved.size() == 6);
    CHECK(moved.match(ca) == 4);
    CHECK(moved.match(cc) == 2);
  }
  idx.reset(6);
  CHECK(idx.match(cc) == 0);
  prefix_chain(std::vector<int32_t>{1}, 16, cc);
  CHECK(cc.empty());
}
