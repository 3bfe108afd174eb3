// The scheduler alone, driven step by step against fake_backend (tests/fake-backend.hpp),
// whose output depends on the K/V it reads back through the block tables.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <set>

#include "engine/scheduler.hpp"
#include "fake-backend.hpp"

using namespace infer;
using infer::test::fake_backend;
using infer::test::fake_config;
using infer::test::fake_reference;

namespace {

struct harness {
  model_config mc;
  kv_geometry kv;
  fake_backend be;
  scheduler sched;
  step_batch batch;
  step_output out;
  std::vector<seq_result> results;
  std::map<uint64_t, std::vector<int32_t>> tokens;
  std::map<uint64_t, int> finished;
  std::map<uint64_t, int32_t> computed;  // tokens each sequence had computed (prefill + decode)
  std::map<uint64_t, int32_t> cached;    // its cached_tokens, from its first result
  std::vector<uint64_t> ids;
  int steps = 0;

  harness(scheduler_config sc, kv_geometry g) : mc(fake_config(sc.n_ctx)), kv(g), be(mc, g), sched(sc, g) {}

  // One step; returns the number of sequences it ran.
  int32_t step() {
    int32_t n = sched.schedule(batch);
    if (n == 0) return 0;
    REQUIRE(batch.n_tokens() <= sched.config().max_batch_tokens);
    REQUIRE(n <= sched.config().max_running);
    // A committed block is immutable (other sequences may read it): nothing writes into one.
    sched.scheduled_ids(ids);
    for (int32_t i = 0; i < n; ++i) {
      const int32_t* table = batch.block_tables.data() + size_t(i) * size_t(batch.max_blocks_per_seq);
      for (int32_t p = batch.n_past[i]; p < batch.n_past[i] + batch.seq_len(i); ++p)
        REQUIRE_FALSE(sched.pool().is_committed(table[p / kv.block_size]));
      computed[ids[size_t(i)]] += batch.seq_len(i);
    }
    status s = be.step(batch, out, logits_mode::none);
    REQUIRE_MESSAGE(s.is_ok(), s.message);
    results.clear();
    sched.on_step_done(out, results);
    for (auto& r : results) {
      if (r.cached_tokens >= 0) cached[r.id] = r.cached_tokens;
      auto& v = tokens[r.id];
      REQUIRE(r.index == int32_t(v.size()));  // no gap, no duplicate
      v.push_back(r.token);
      if (r.finished) finished[r.id]++;
    }
    ++steps;
    return n;
  }
  void run() {
    while (step() > 0) {
      REQUIRE(steps < 100000);
    }
  }
};

seq_spec make_seq(uint64_t id, int32_t prompt_len, int32_t max_tokens, uint32_t salt = 0) {
  seq_spec s;
  s.id = id;
  for (int32_t i = 0; i < prompt_len; ++i) s.prompt.push_back(int32_t((id * 31 + i * 7 + salt) % 256));
  s.max_tokens = max_tokens;
  return s;
}

}  // namespace

TEST_CASE("scheduler: one sequence generates what it generates alone and frees its blocks") {
  scheduler_config sc{.max_batch_tokens = 64, .max_running = 4, .prefill_chunk = 32, .n_ctx = 256};
  harness h(sc, {16, 32});
  auto s = make_seq(1, 40, 20);
  auto ref = fake_reference(s.prompt, 20, 256, 256);
  REQUIRE(h.sched.add(s).is_ok());
  h.run();
  CHECK(h.tokens[1] == ref);
  CHECK(h.finished[1] == 1);
  CHECK(h.sched.pool().n_free() == 32);
  CHECK_FALSE(h.sched.has_work());
  // 40-token prompt in chunks of 32: two prefill steps, the second samples token 0.
  CHECK(h.steps == 2 + 19);
}

TEST_CASE("scheduler: many sequences with chunked prefill match their solo output") {
  scheduler_config sc{.max_batch_tokens = 48, .max_running = 8, .prefill_chunk = 16, .n_ctx = 256};
  harness h(sc, {16, 200});
  std::mt19937 rng(7);
  std::map<uint64_t, std::vector<int32_t>> ref;
  for (uint64_t id = 1; id <= 40; ++id) {
    auto s = make_seq(id, 1 + int32_t(rng() % 100), 1 + int32_t(rng() % 30));
    ref[id] = fake_reference(s.prompt, s.max_tokens, 256, 256);
    REQUIRE(h.sched.add(s).is_ok());
  }
  // Whenever a step carries a prefill chunk, every running decoder also got its token
  // (decodes first): count steps mixing both.
  int mixed = 0;
  while (true) {
    int32_t n = h.sched.schedule(h.batch);
    if (n == 0) break;
    int decodes = 0, prefills = 0;
    for (int32_t i = 0; i < n; ++i) {
      if (h.batch.seq_len(i) == 1 && h.batch.sample[i] && h.batch.n_past[i] > 0) ++decodes;
      else ++prefills;
      CHECK(h.batch.seq_len(i) <= 16);
    }
    if (decodes > 0 && prefills > 0) ++mixed;
    CHECK(h.batch.n_tokens() <= 48);
    REQUIRE(h.be.step(h.batch, h.out).is_ok());
    h.results.clear();
    h.sched.on_step_done(h.out, h.results);
    for (auto& r : h.results) {
      REQUIRE(r.index == int32_t(h.tokens[r.id].size()));
      h.tokens[r.id].push_back(r.token);
      if (r.finished) h.finished[r.id]++;
    }
  }
  CHECK(mixed > 0);
  for (auto& [id, want] : ref) {
    CHECK_MESSAGE(h.tokens[id] == want, "sequence " << id);
    CHECK(h.finished[id] == 1);
  }
  CHECK(h.sched.pool().n_free() == 200);
  CHECK(h.sched.n_preemptions() == 0);
}

TEST_CASE("scheduler: running out of blocks preempts the newest and recomputes it; nothing is lost") {
  // 12 blocks of 4 tokens = 48 tokens of cache for 6 sequences that grow to 30 tokens each.
  scheduler_config sc{.max_batch_tokens = 64, .max_running = 6, .prefill_chunk = 8, .n_ctx = 64};
  harness h(sc, {4, 12});
  std::map<uint64_t, std::vector<int32_t>> ref;
  for (uint64_t id = 1; id <= 6; ++id) {
    auto s = make_seq(id, 6 + int32_t(id), 22);
    ref[id] = fake_reference(s.prompt, s.max_tokens, 256, 64);
    REQUIRE(h.sched.add(s).is_ok());
  }
  h.run();
  CHECK(h.sched.n_preemptions() > 0);
  for (auto& [id, want] : ref) {
    CHECK_MESSAGE(h.tokens[id] == want, "sequence " << id);
    CHECK(h.finished[id] == 1);
  }
  CHECK(h.sched.pool().n_free() == 12);
}

TEST_CASE("scheduler: sequences join at the next step and leave at once") {
  scheduler_config sc{.max_batch_tokens = 64, .max_running = 8, .prefill_chunk = 64, .n_ctx = 256};
  harness h(sc, {16, 64});
  REQUIRE(h.sched.add(make_seq(1, 10, 50)).is_ok());
  REQUIRE(h.sched.add(make_seq(2, 10, 50)).is_ok());
  for (int i = 0; i < 5; ++i) REQUIRE(h.step() == 2);
  // Join: a newcomer runs in the very next step, beside the decoders.
  REQUIRE(h.sched.add(make_seq(3, 20, 5)).is_ok());
  REQUIRE(h.step() == 3);
  CHECK(h.tokens[3].size() == 1);
  // Leave: cancel frees the blocks immediately, and the next step runs without it.
  int32_t free_before = h.sched.pool().n_free();
  CHECK(h.sched.cancel(2));
  CHECK(h.sched.pool().n_free() == free_before + 1);  // 16 tokens: one block
  CHECK_FALSE(h.sched.cancel(2));
  CHECK(h.step() == 2);
  for (int32_t i = 0; i < h.batch.n_seqs(); ++i) CHECK(h.batch.n_past[i] != 16);  // seq 2 had 16 cached
  size_t n2 = h.tokens[2].size();
  h.run();
  CHECK(h.tokens[2].size() == n2);
  CHECK(h.finished[3] == 1);  // finished after 5 tokens and left while 1 kept running
  CHECK(h.tokens[3] == fake_reference(make_seq(3, 20, 5).prompt, 5, 256, 256));
  CHECK(h.tokens[1] == fake_reference(make_seq(1, 10, 50).prompt, 50, 256, 256));
  CHECK(h.sched.pool().n_free() == 64);
}

TEST_CASE("scheduler: cancel while the step is in flight drops that step's token") {
  scheduler_config sc{.max_batch_tokens = 64, .max_running = 8, .prefill_chunk = 64, .n_ctx = 256};
  harness h(sc, {16, 64});
  REQUIRE(h.sched.add(make_seq(1, 8, 10)).is_ok());
  REQUIRE(h.sched.add(make_seq(2, 8, 10)).is_ok());
  REQUIRE(h.sched.schedule(h.batch) == 2);
  step_batch other;
  CHECK(h.sched.schedule(other) == 0);  // one step at a time
  REQUIRE(h.be.step(h.batch, h.out).is_ok());
  REQUIRE(h.sched.cancel(1));  // as if it arrived while the backend ran
  CHECK(h.sched.pool().n_free() == 63);
  h.results.clear();
  h.sched.on_step_done(h.out, h.results);
  REQUIRE(h.results.size() == 1);
  CHECK(h.results[0].id == 2);
  h.tokens[2].push_back(h.results[0].token);
  h.run();
  CHECK(h.tokens[1].empty());
  CHECK(h.tokens[2].size() == 10);
  CHECK(h.sched.pool().n_free() == 64);
}

TEST_CASE("scheduler: a failed step is retried with the same tokens") {
  scheduler_config sc{.max_batch_tokens = 64, .max_running = 8, .prefill_chunk = 64, .n_ctx = 256};
  harness h(sc, {16, 64});
  auto s = make_seq(5, 30, 12);
  REQUIRE(h.sched.add(s).is_ok());
  for (int i = 0; i < 4; ++i) h.step();
  REQUIRE(h.sched.schedule(h.batch) == 1);
  h.sched.on_step_failed();
  h.run();
  CHECK(h.tokens[5] == fake_reference(s.prompt, 12, 256, 256));
}

TEST_CASE("scheduler: drain hands back tokens so far; another scheduler resumes identically") {
  scheduler_config sc{.max_batch_tokens = 32, .max_running = 4, .prefill_chunk = 16, .n_ctx = 256};
  harness a(sc, {16, 64});
  sampling_params sp;
  sp.temperature = 0.8f;
  sp.seed = 99;
  auto s1 = make_seq(1, 20, 30);
  s1.sampling = sp;
  auto s2 = make_seq(2, 50, 30);
  REQUIRE(a.sched.add(s1).is_ok());
  REQUIRE(a.sched.add(s2).is_ok());
  for (int i = 0; i < 8; ++i) a.step();
  auto specs = a.sched.drain();
  REQUIRE(specs.size() == 2);
  CHECK(a.sched.pool().n_free() == 64);
  CHECK_FALSE(a.sched.has_work());
  harness b(sc, {16, 64});
  for (auto& sp2 : specs) {
    CHECK(sp2.generated == a.tokens[sp2.id]);
    b.tokens[sp2.id] = sp2.generated;
    REQUIRE(b.sched.add(sp2).is_ok());
  }
  b.run();
  CHECK(b.tokens[1] == fake_reference(s1.prompt, 30, 256, 256, sp));
  CHECK(b.tokens[2] == fake_reference(s2.prompt, 30, 256, 256));
}

TEST_CASE("scheduler: the context limit ends a sequence with its last token") {
  scheduler_config sc{.max_batch_tokens = 64, .max_running = 4, .prefill_chunk = 64, .n_ctx = 32};
  harness h(sc, {8, 16});
  auto s = make_seq(1, 28, 100);
  REQUIRE(h.sched.add(s).is_ok());
  h.run();
  CHECK(h.tokens[1].size() == 4);  // 28 + 4 = n_ctx
  CHECK(h.finished[1] == 1);
  CHECK(h.tokens[1] == fake_reference(s.prompt, 100, 256, 32));
}

TEST_CASE("scheduler: invalid sequences are refused") {
  scheduler_config sc{.max_batch_tokens = 64, .max_running = 4, .prefill_chunk = 64, .n_ctx = 64};
  scheduler sched(sc, {16, 2});
  CHECK(sched.add(make_seq(1, 0, 4)).code == errc::invalid_argument);   // empty prompt
  CHECK(sched.add(make_seq(1, 65, 4)).code == errc::invalid_argument);  // beyond n_ctx
  CHECK(sched.add(make_seq(1, 10, 0)).code == errc::invalid_argument);  // nothing to generate
  CHECK(sched.add(make_seq(1, 30, 10)).code == errc::invalid_argument); // 40 tokens > 2 blocks
  CHECK(sched.add(make_seq(1, 10, 10)).is_ok());
  CHECK(sched.add(make_seq(1, 10, 10)).code == errc::invalid_argument);  // duplicate id
  CHECK(sched.n_waiting() == 1);
}

TEST_CASE("scheduler: max_running bounds the batch; the rest wait FIFO") {
  scheduler_config sc{.max_batch_tokens = 256, .max_running = 3, .prefill_chunk = 64, .n_ctx = 128};
  harness h(sc, {16, 64});
  for (uint64_t id = 1; id <= 5; ++id) REQUIRE(h.sched.add(make_seq(id, 5, 3)).is_ok());
  REQUIRE(h.step() == 3);
  CHECK(h.tokens.count(4) == 0);
  CHECK(h.tokens.count(5) == 0);
  h.run();
  for (uint64_t id = 1; id <= 5; ++id) CHECK(h.finished[id] == 1);
}

TEST_CASE("scheduler: a stop id ends the sequence in the step that sampled it and frees its blocks") {
  model_config mc = fake_config(256, 64);
  kv_geometry kv{4, 32};
  fake_backend be(mc, kv);
  const std::vector<int32_t> prompt = {1, 2, 3, 4, 5};
  const auto ref = fake_reference(prompt, 30, mc.n_vocab, mc.n_ctx);
  scheduler_config sc;
  sc.n_ctx = mc.n_ctx;
  scheduler s(sc, kv);
  seq_spec a;
  a.id = 1;
  a.prompt = prompt;
  a.max_tokens = 30;
  a.stop_ids = {ref[5]};
  seq_spec b = a;
  b.id = 2;
  b.stop_ids.clear();  // the same sequence without stop ids runs on
  REQUIRE(s.add(a));
  REQUIRE(s.add(b));
  const size_t stop_at = size_t(std::find(ref.begin(), ref.end(), ref[5]) - ref.begin());
  step_batch batch;
  step_output out;
  std::vector<seq_result> res;
  std::vector<int32_t> got_a;
  bool a_done = false;
  while (s.schedule(batch) > 0) {
    REQUIRE(be.step(batch, out));
    res.clear();
    s.on_step_done(out, res);
    for (const auto& r : res) {
      if (r.id != 1) continue;
      got_a.push_back(r.token);
      if (r.finished) {
        a_done = true;
        CHECK(r.stopped);
        CHECK(r.token == ref[5]);
        CHECK_FALSE(s.contains(1));  // left, blocks freed, in this very step
      } else {
        CHECK_FALSE(r.stopped);
      }
    }
  }
  CHECK(a_done);
  CHECK(got_a == std::vector<int32_t>(ref.begin(), ref.begin() + long(stop_at) + 1));
  CHECK(s.pool().n_free() == s.pool().n_total());
}

// --- prefix caching ---

namespace {

// A prompt made of a shared head (seeded by `head`) and a private tail (seeded by `tail`).
std::vector<int32_t> prompt_of(int32_t head_len, uint32_t head, int32_t tail_len, uint32_t tail) {
  std::vector<int32_t> p;
  for (int32_t i = 0; i < head_len; ++i) p.push_back(int32_t((head * 131 + uint32_t(i) * 17 + 3) % 256));
  for (int32_t i = 0; i < tail_len; ++i) p.push_back(int32_t((tail * 57 + uint32_t(i) * 29 + 11) % 256));
  return p;
}

seq_spec seq_with(uint64_t id, std::vector<int32_t> prompt, int32_t max_tokens) {
  seq_spec s;
  s.id = id;
  s.prompt = std::move(prompt);
  s.max_tokens = max_tokens;
  return s;
}

// Nothing referenced, and nothing left once the cache is flushed.
void check_balanced(scheduler& sched) {
  const kv_block_pool& pool = sched.pool();
  CHECK(pool.n_used() == 0);
  CHECK(pool.n_free() == pool.n_total());
  sched.flush_prefix_cache();
  CHECK(pool.n_committed() == 0);
  CHECK(pool.n_evictable() == 0);
  CHECK(pool.n_free() == pool.n_total());
}

}  // namespace

TEST_CASE("scheduler: a shared prefix is computed once; the output is that of a solo run") {
  scheduler_config sc{.max_batch_tokens = 256, .max_running = 4, .prefill_chunk = 256, .n_ctx = 256};
  harness h(sc, {16, 64});
  auto a = seq_with(1, prompt_of(40, 1, 5, 1), 6);  // 45 tokens: blocks 0, 1 full
  REQUIRE(h.sched.add(a).is_ok());
  h.run();
  CHECK(h.cached[1] == 0);
  CHECK(h.computed[1] == 45 + 5);  // the prompt, then one token per decode step
  CHECK(h.sched.pool().n_committed() == 3);  // 45 + 6 tokens sampled, 50 of them cached: 3 full blocks

  SUBCASE("many blocks") {
    auto b = seq_with(2, prompt_of(40, 1, 9, 2), 6);  // same 40-token head, another tail
    REQUIRE(h.sched.add(b).is_ok());
    h.run();
    CHECK(h.tokens[2] == fake_reference(b.prompt, 6, 256, 256));
    CHECK(h.cached[2] == 32);                 // two full blocks of the head
    CHECK(h.computed[2] == 49 - 32 + 5);      // only the rest was prefilled
    CHECK(h.sched.prefix_hits() == 32);
    CHECK(h.sched.prefix_queries() == 45 + 49);
  }
  SUBCASE("one block") {
    auto b = seq_with(2, prompt_of(20, 1, 4, 3), 6);
    REQUIRE(h.sched.add(b).is_ok());
    h.run();
    CHECK(h.tokens[2] == fake_reference(b.prompt, 6, 256, 256));
    CHECK(h.cached[2] == 16);
    CHECK(h.computed[2] == 24 - 16 + 5);
  }
  SUBCASE("no block") {
    auto b = seq_with(2, prompt_of(40, 7, 5, 1), 6);  // another head
    REQUIRE(h.sched.add(b).is_ok());
    h.run();
    CHECK(h.tokens[2] == fake_reference(b.prompt, 6, 256, 256));
    CHECK(h.cached[2] == 0);
    CHECK(h.computed[2] == 45 + 5);
  }
  SUBCASE("the same prompt again: the last token is recomputed, a partial block is not shared") {
    REQUIRE(h.sched.add(seq_with(2, a.prompt, 6)).is_ok());
    h.run();
    CHECK(h.tokens[2] == h.tokens[1]);
    CHECK(h.cached[2] == 32);
    CHECK(h.computed[2] == 13 + 5);
  }
  SUBCASE("generated tokens are cached too: a follow-up turn reuses prompt and answer") {
    std::vector<int32_t> turn2 = a.prompt;
    turn2.insert(turn2.end(), h.tokens[1].begin(), h.tokens[1].end());  // 51 tokens
    turn2.push_back(42);
    REQUIRE(h.sched.add(seq_with(2, turn2, 4)).is_ok());
    h.run();
    CHECK(h.tokens[2] == fake_reference(turn2, 4, 256, 256));
    CHECK(h.cached[2] == 48);
  }
  check_balanced(h.sched);
}

TEST_CASE("scheduler: a prompt of whole blocks recomputes its last block only") {
  scheduler_config sc{.max_batch_tokens = 256, .max_running = 4, .prefill_chunk = 256, .n_ctx = 256};
  harness h(sc, {16, 64});
  auto a = seq_with(1, prompt_of(32, 4, 0, 0), 3);
  REQUIRE(h.sched.add(a).is_ok());
  h.run();
  REQUIRE(h.sched.add(seq_with(2, a.prompt, 3)).is_ok());
  h.run();
  CHECK(h.tokens[2] == h.tokens[1]);
  CHECK(h.cached[2] == 16);
  CHECK(h.computed[2] == 16 + 2);
  check_balanced(h.sched);
}

TEST_CASE("scheduler: sequences running together share their cached prefix blocks") {
  scheduler_config sc{.max_batch_tokens = 512, .max_running = 8, .prefill_chunk = 512, .n_ctx = 256};
  harness h(sc, {16, 64});
  auto first = seq_with(1, prompt_of(64, 9, 3, 1), 20);
  REQUIRE(h.sched.add(first).is_ok());
  h.step();  // its prompt is cached now
  std::map<uint64_t, seq_spec> specs{{1, first}};
  for (uint64_t id = 2; id <= 5; ++id) {
    specs[id] = seq_with(id, prompt_of(64, 9, int32_t(id), uint32_t(id)), 20);
    REQUIRE(h.sched.add(specs[id]).is_ok());
  }
  h.step();
  // Five sequences hold the four head blocks: 4 shared + their own tails, not 5 copies.
  CHECK(h.sched.pool().refs(h.batch.block_tables[0]) == 5);
  CHECK(h.sched.pool().n_used() < 5 * 5);
  h.run();
  for (auto& [id, s] : specs) {
    CHECK_MESSAGE(h.tokens[id] == fake_reference(s.prompt, 20, 256, 256), "sequence " << id);
    if (id > 1) CHECK(h.cached[id] == 64);
  }
  check_balanced(h.sched);
}

TEST_CASE("scheduler: with prefix caching off nothing is shared or kept") {
  scheduler_config sc{.max_batch_tokens = 256, .max_running = 4, .prefill_chunk = 256, .n_ctx = 256};
  sc.prefix_caching = false;
  harness h(sc, {16, 64});
  auto a = seq_with(1, prompt_of(40, 1, 5, 1), 6);
  REQUIRE(h.sched.add(a).is_ok());
  h.run();
  REQUIRE(h.sched.add(seq_with(2, a.prompt, 6)).is_ok());
  h.run();
  CHECK(h.tokens[2] == h.tokens[1]);
  CHECK(h.cached[2] == 0);
  CHECK(h.computed[2] == 45 + 5);
  CHECK(h.sched.pool().n_committed() == 0);
  CHECK(h.sched.prefix_queries() == 0);
}

TEST_CASE("scheduler: the cache salt separates caches") {
  scheduler_config sc{.max_batch_tokens = 256, .max_running = 4, .prefill_chunk = 256, .n_ctx = 256};
  sc.cache_salt = 1;
  scheduler_config sc2 = sc;
  sc2.cache_salt = 2;
  harness h1(sc, {16, 64}), h2(sc2, {16, 64});
  auto a = seq_with(1, prompt_of(40, 1, 5, 1), 2);
  REQUIRE(h1.sched.add(a).is_ok());
  h1.run();
  // The same tokens hash differently under another salt: a block of one cache is no block of the other.
  const int32_t bs = 16;
  uint64_t h_1 = kv_block_hash(kv_hash_root(1), std::span<const int32_t>(a.prompt.data(), size_t(bs)));
  uint64_t h_2 = kv_block_hash(kv_hash_root(2), std::span<const int32_t>(a.prompt.data(), size_t(bs)));
  CHECK(h_1 != h_2);
  CHECK(h1.sched.pool().lookup(h_1, kv_hash_root(1), std::span<const int32_t>(a.prompt.data(), size_t(bs))) >= 0);
  CHECK(h1.sched.pool().lookup(h_2, kv_hash_root(2), std::span<const int32_t>(a.prompt.data(), size_t(bs))) < 0);
}

TEST_CASE("scheduler: preemption with shared blocks resumes from the cache; nothing is lost or leaked") {
  // 14 blocks of 4 tokens for 6 sequences sharing a 12-token head and growing to 36 tokens each.
  scheduler_config sc{.max_batch_tokens = 64, .max_running = 6, .prefill_chunk = 8, .n_ctx = 64};
  harness h(sc, {4, 14});
  std::map<uint64_t, std::vector<int32_t>> ref;
  for (uint64_t id = 1; id <= 6; ++id) {
    auto s = seq_with(id, prompt_of(12, 5, int32_t(id), uint32_t(id)), 24);
    ref[id] = fake_reference(s.prompt, s.max_tokens, 256, 64);
    REQUIRE(h.sched.add(s).is_ok());
  }
  h.run();
  CHECK(h.sched.n_preemptions() > 0);
  for (auto& [id, want] : ref) {
    CHECK_MESSAGE(h.tokens[id] == want, "sequence " << id);
    CHECK(h.finished[id] == 1);
  }
  check_balanced(h.sched);
}

TEST_CASE("scheduler: eviction takes the least recently used cached blocks, and only under pressure") {
  scheduler_config sc{.max_batch_tokens = 256, .max_running = 4, .prefill_chunk = 256, .n_ctx = 128};
  harness h(sc, {8, 12});
  auto a = seq_with(1, prompt_of(33, 1, 0, 0), 1);  // 4 full blocks cached when it leaves
  auto b = seq_with(2, prompt_of(33, 2, 0, 0), 1);
  REQUIRE(h.sched.add(a).is_ok());
  h.run();
  REQUIRE(h.sched.add(b).is_ok());
  h.run();
  CHECK(h.sched.pool().n_committed() == 8);
  CHECK(h.sched.pool().n_evictions() == 0);  // 4 blocks were still free
  // a's blocks are the older ones: a newcomer needing 5 blocks takes the 4 free ones ...
  auto c = seq_with(3, prompt_of(33, 3, 0, 0), 1);
  REQUIRE(h.sched.add(c).is_ok());
  h.run();
  // ... and one cached block: a's tail (freed first), so a still hits its first 3 blocks.
  CHECK(h.sched.pool().n_evictions() == 1);
  CHECK(h.sched.pool().n_committed() == 11);
  REQUIRE(h.sched.add(seq_with(4, a.prompt, 1)).is_ok());
  h.run();
  CHECK(h.cached[4] == 24);
  // It needed two blocks beyond its 3 hits: the free one, then the LRU one, b's tail.
  CHECK(h.sched.pool().n_evictions() == 2);
  REQUIRE(h.sched.add(seq_with(5, b.prompt, 1)).is_ok());
  h.run();
  CHECK(h.cached[5] == 24);
  CHECK(h.tokens[4] == h.tokens[1]);
  CHECK(h.tokens[5] == h.tokens[2]);
  check_balanced(h.sched);
}

TEST_CASE("scheduler: cancelled and drained sequences leave their blocks cached, not leaked") {
  scheduler_config sc{.max_batch_tokens = 64, .max_running = 8, .prefill_chunk = 32, .n_ctx = 256};
  harness h(sc, {16, 64});
  auto head = prompt_of(48, 3, 0, 0);
  for (uint64_t id = 1; id <= 4; ++id) REQUIRE(h.sched.add(seq_with(id, prompt_of(48, 3, 8, uint32_t(id)), 40)).is_ok());
  for (int i = 0; i < 6; ++i) h.step();
  CHECK(h.sched.cancel(2));
  REQUIRE(h.sched.schedule(h.batch) > 0);
  CHECK(h.sched.cancel(3));  // while its step is in flight
  REQUIRE(h.be.step(h.batch, h.out).is_ok());
  h.results.clear();
  h.sched.on_step_done(h.out, h.results);
  auto specs = h.sched.drain();  // as a worker that goes away
  CHECK(specs.size() == 2);
  CHECK(h.sched.pool().n_used() == 0);
  CHECK(h.sched.pool().n_committed() > 0);
  // A resumed sequence finds its own prefix (prompt and generated tokens) cached.
  harness& again = h;
  for (auto& s : specs) {
    again.tokens[s.id] = s.generated;
    REQUIRE(again.sched.add(s).is_ok());
  }
  again.run();
  for (auto& s : specs) {
    CHECK(again.tokens[s.id] == fake_reference(s.prompt, 40, 256, 256));
    CHECK(again.cached[s.id] >= 48);
  }
  check_balanced(h.sched);
}

TEST_CASE("scheduler: random admit / cancel / fail / drain keep the pool balanced (property)") {
  uint64_t preemptions = 0, hits = 0;
  for (uint32_t seed = 1; seed <= 6; ++seed) {
    CAPTURE(seed);
    std::mt19937 rng(seed);
    auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
    scheduler_config sc{.max_batch_tokens = pick(8, 64), .max_running = pick(1, 8), .prefill_chunk = pick(4, 32),
                        .n_ctx = 96};
    sc.prefill_chunk = std::min(sc.prefill_chunk, sc.max_batch_tokens);
    const int32_t bs = 1 << pick(1, 3);
    kv_geometry g{bs, pick(96 / bs + 1, 3 * 96 / bs)};
    auto h = std::make_unique<harness>(sc, g);
    std::map<uint64_t, seq_spec> live;
    uint64_t next_id = 1;
    int ops = 0;
    for (; ops < 3000; ++ops) {
      const int op = pick(0, 99);
      if (op < 30) {  // admit: one of four heads, a short private tail
        seq_spec s = seq_with(next_id++, prompt_of(pick(0, 40), uint32_t(pick(0, 3)), pick(1, 12), uint32_t(pick(0, 1000))),
                              pick(1, 30));
        if (h->sched.add(s).is_ok()) live[s.id] = s;
      } else if (op < 40 && !live.empty()) {  // cancel a random one
        auto it = std::next(live.begin(), pick(0, int(live.size()) - 1));
        CHECK(h->sched.cancel(it->first));
        h->tokens.erase(it->first);
        live.erase(it);
      } else if (op < 43) {  // a failed step
        if (h->sched.schedule(h->batch) > 0) h->sched.on_step_failed();
      } else if (op < 45) {  // the worker goes away: its sequences resume on a fresh one
        auto specs = h->sched.drain();
        preemptions += h->sched.n_preemptions();
        hits += h->sched.prefix_hits();
        check_balanced(h->sched);
        auto fresh = std::make_unique<harness>(sc, g);
        fresh->tokens = h->tokens;
        fresh->finished = h->finished;
        h = std::move(fresh);
        for (auto& s : specs) REQUIRE(h->sched.add(s).is_ok());
      } else {
        h->step();
      }
      for (auto it = live.begin(); it != live.end();) {
        if (h->finished[it->first]) {
          const auto& s = it->second;
          REQUIRE_MESSAGE(h->tokens[s.id] == fake_reference(s.prompt, s.max_tokens, 256, 96), "sequence " << s.id);
          it = live.erase(it);
        } else {
          ++it;
        }
      }
      const auto& pool = h->sched.pool();
      REQUIRE(pool.n_used() >= 0);
      REQUIRE(pool.n_free() + pool.n_used() == pool.n_total());
      REQUIRE(pool.n_evictable() <= pool.n_committed());
    }
    h->run();
    for (auto& [id, s] : live) CHECK(h->tokens[id] == fake_reference(s.prompt, s.max_tokens, 256, 96));
    preemptions += h->sched.n_preemptions();
    hits += h->sched.prefix_hits();
    check_balanced(h->sched);
  }
  // The driver did reach the interesting states: preemptions with shared blocks, and hits.
  CHECK(preemptions > 0);
  CHECK(hits > 0);
}

// Issue 16: with device_counts the list of a sequence goes out once per admission (the
// load) and the backend counts the sampled tokens itself; here a host twin of the device's
// slots (slot_load_forward, slot_count_forward, adjusted_logit_at's ban) is held, at every
// sampled row, to the list rebuilt from the sequence's tokens. Slots are distinct among the
// running rows and in [0, max_running); a preempted or finished sequence gives its slot back
// and a resumed one reloads it; a failed step reloads every slot.
TEST_CASE("scheduler: device-held token counts load once per admission and track the host's") {
  scheduler_config sc{.max_batch_tokens = 64, .max_running = 4, .prefill_chunk = 8, .n_ctx = 64,
                      .device_counts = true};
  harness h(sc, {4, 12});
  std::map<uint64_t, seq_spec> spec;
  std::map<uint64_t, std::vector<int32_t>> gen;
  for (uint64_t id = 1; id <= 12; ++id) {
    auto s = make_seq(id, 4 + int32_t(id % 5), 10 + int32_t(id % 7));
    s.sampling.frequency_penalty = id % 3 == 0 ? 0.0f : 0.5f;
    s.sampling.repetition_penalty = id % 3 == 1 ? 1.2f : 1.0f;
    s.sampling.presence_penalty = id % 3 == 0 ? 0.0f : 0.25f;
    if (id % 4 == 0) {
      s.sampling.min_tokens = 3;
      s.stop_ids = {250};
    }
    if (id % 3 == 0) s.logit_bias = {{7, 2.0f}};
    spec[id] = s;
    REQUIRE(h.sched.add(s).is_ok());
  }
  std::map<int32_t, std::vector<logit_adjust>> slots;  // the twin of the device's lists
  std::vector<uint64_t> ids;
  int loads = 0, rows = 0, failed = 0;
  for (int step = 0; step < 2000; ++step) {
    const int32_t n = h.sched.schedule(h.batch);
    if (n == 0) break;
    h.sched.scheduled_ids(ids);
    std::vector<int32_t> seen_slots;
    for (int32_t i = 0; i < n; ++i) {
      const int32_t slot = h.batch.counts_slot[size_t(i)];
      REQUIRE(slot < sc.max_running);
      if (slot < 0) continue;
      CHECK(std::find(seen_slots.begin(), seen_slots.end(), slot) == seen_slots.end());
      seen_slots.push_back(slot);
      if (h.batch.counts_load[size_t(i)]) {
        ++loads;
        auto a = h.batch.adjustments(i);
        slots[slot].assign(a.begin(), a.end());
      } else {
        CHECK(h.batch.adjustments(i).empty());
      }
      if (!h.batch.sample[size_t(i)]) continue;
      ++rows;
      const seq_spec& s = spec[ids[size_t(i)]];
      const auto& g = gen[s.id];
      // The list rebuilt from the tokens (scheduler::add + count_token), against the twin.
      std::map<int32_t, logit_adjust> want;
      for (auto [t, b] : s.logit_bias) want[t] = {t, 0, b, 0};
      if (s.sampling.min_tokens > 0)
        for (int32_t t : s.stop_ids) want.try_emplace(t, logit_adjust{t, 0, 0.0f, 0});
      if (s.sampling.penalized())
        for (int32_t t : s.prompt) want.try_emplace(t, logit_adjust{t, 0, 0.0f, 0}).first->second.seen = 1;
      if (s.sampling.penalized())
        for (int32_t t : g) {
        auto& e = want.try_emplace(t, logit_adjust{t, 0, 0.0f, 0}).first->second;
        e.seen = 1;
        ++e.count;
      }
      const auto& have = slots[slot];
      REQUIRE(have.size() == want.size());
      for (const logit_adjust& e : have) {
        REQUIRE(want.count(e.token));
        const logit_adjust& w = want[e.token];
        CHECK(e.count == w.count);
        CHECK((e.seen & adjust_seen) == w.seen);
        CHECK(e.bias == w.bias);
        const bool banned = std::find(s.stop_ids.begin(), s.stop_ids.end(), e.token) != s.stop_ids.end() &&
                            int32_t(g.size()) < s.sampling.min_tokens;
        CHECK(std::isinf(adjusted_logit_at(1.0f, e, s.sampling, g.size())) == banned);
      }
    }
    if (step == 9) {  // a failed step: nothing counted on the host, every slot reloads
      h.sched.on_step_failed();
      ++failed;
      continue;
    }
    status st = h.be.step(h.batch, h.out, logits_mode::none);
    REQUIRE(st.is_ok());
    // The device's count after the step: the sampled token into the row's slot.
    for (int32_t i = 0; i < n; ++i) {
      const int32_t slot = h.batch.counts_slot[size_t(i)];
      if (slot < 0 || !h.batch.sample[size_t(i)] || !h.batch.sampling[size_t(i)].penalized()) continue;
      auto& L = slots[slot];
      const int32_t t = h.out.tokens[size_t(i)];
      auto it = std::find_if(L.begin(), L.end(), [&](const logit_adjust& e) { return e.token == t; });
      if (it == L.end()) L.push_back({t, 1, 0.0f, adjust_seen});
      else {
        it->seen |= adjust_seen;
        ++it->count;
      }
    }
    h.results.clear();
    h.sched.on_step_done(h.out, h.results);
    for (auto& r : h.results) gen[r.id].push_back(r.token);
  }
  CHECK(failed == 1);
  CHECK(h.sched.n_preemptions() > 0);
  CHECK(loads > 12);  // once per admission, again after preemptions and the failed step
  CHECK(rows > 100);
  for (auto& [id, s] : spec) CHECK(int32_t(gen[id].size()) >= 1);
}

// ---- n > 1: forks ---------------------------------------------------------------------------

namespace {

using K = std::pair<uint64_t, int32_t>;

// Drives a scheduler with forks: results keyed by (id, fork); counts prefill steps.
struct fork_harness {
  model_config mc;
  kv_geometry kv;
  fake_backend be;
  scheduler sched;
  step_batch batch;
  step_output out;
  std::vector<seq_result> results;
  std::map<std::pair<uint64_t, int32_t>, std::vector<int32_t>> tokens;
  std::map<std::pair<uint64_t, int32_t>, int> finished;
  std::map<uint64_t, int> gone;  // group_done seen
  int steps = 0, prefill_steps = 0;
  int64_t prefill_tokens = 0;

  fork_harness(scheduler_config sc, kv_geometry g) : mc(fake_config(sc.n_ctx)), kv(g), be(mc, g), sched(sc, g) {}

  int32_t step() {
    int32_t n = sched.schedule(batch);
    if (n == 0) return 0;
    REQUIRE(n <= sched.config().max_running);
    if (sched.last_prefill_tokens() > 0) ++prefill_steps;
    prefill_tokens += sched.last_prefill_tokens();
    status s = be.step(batch, out, logits_mode::none);
    REQUIRE_MESSAGE(s.is_ok(), s.message);
    results.clear();
    sched.on_step_done(out, results);
    for (auto& r : results) {
      auto& v = tokens[K(r.id, r.fork)];
      REQUIRE(r.index == int32_t(v.size()));
      v.push_back(r.token);
      if (r.finished) finished[K(r.id, r.fork)]++;
      if (r.group_done) gone[r.id]++;
    }
    ++steps;
    return n;
  }
  void run() {
    while (step() > 0) REQUIRE(steps < 100000);
  }
};

seq_spec make_group(uint64_t id, int32_t prompt_len, int32_t max_tokens, int32_t n, uint64_t seed) {
  seq_spec s = make_seq(id, prompt_len, max_tokens);
  s.n = n;
  s.sampling.temperature = 1.0f;
  s.sampling.seed = seed;
  return s;
}

sampling_params fork_params(const seq_spec& s, int32_t fork) {
  sampling_params p = s.sampling;
  p.seed = fork_seed(s.sampling.seed, fork);
  return p;
}

}  // namespace

TEST_CASE("scheduler: n = 4 prefills the prompt once, copies its partial block, forks four distinct streams") {
  scheduler_config sc;
  sc.n_ctx = 128;
  fork_harness h(sc, kv_geometry{16, 64});
  const seq_spec s = make_group(1, 37, 12, 4, 7);
  REQUIRE(h.sched.add(s).is_ok());
  h.run();
  // One prefill step of the prompt but its last token (36); then each fork computes that
  // token for its own logits (a one-token step, as a decode) and decodes 11 more.
  CHECK(h.prefill_steps == 1);
  CHECK(h.prefill_tokens == 36);
  CHECK(h.be.n_tokens.load() == 36 + 4 * 12);
  CHECK(h.sched.n_forks() == 3);
  CHECK(h.be.n_copies.load() == 3);  // 36 % 16 = 4 tokens of the third block are the prompt's
  std::set<std::vector<int32_t>> distinct;
  for (int32_t f = 0; f < 4; ++f) {
    // The K/V each fork read back is its own prompt's: the output of a solo run with its seed.
    CHECK(h.tokens[K(1, f)] == fake_reference(s.prompt, 12, 256, 128, fork_params(s, f)));
    CHECK(h.finished[K(1, f)] == 1);
    distinct.insert(h.tokens[K(1, f)]);
  }
  CHECK(distinct.size() == 4);
  CHECK(h.gone[1] == 1);
  CHECK_FALSE(h.sched.contains(1));
  check_balanced(h.sched);

  // The same seed gives the same four streams; choice 0 is what n = 1 gives with that seed.
  fork_harness again(sc, kv_geometry{16, 64});
  REQUIRE(again.sched.add(s).is_ok());
  again.run();
  for (int32_t f = 0; f < 4; ++f) CHECK(again.tokens[K(1, f)] == h.tokens[K(1, f)]);
  seq_spec one = s;
  one.n = 1;
  fork_harness solo(sc, kv_geometry{16, 64});
  REQUIRE(solo.sched.add(one).is_ok());
  solo.run();
  CHECK(solo.tokens[K(1, 0)] == h.tokens[K(1, 0)]);
}

TEST_CASE("scheduler: a prompt ending on a block boundary forks without a copy; a one-token prompt shares nothing") {
  scheduler_config sc;
  sc.n_ctx = 128;
  fork_harness h(sc, kv_geometry{16, 64});
  const seq_spec a = make_group(1, 33, 5, 3, 11);  // 32 prefilled: two full blocks shared
  const seq_spec b = make_group(2, 1, 5, 3, 12);
  REQUIRE(h.sched.add(a).is_ok());
  REQUIRE(h.sched.add(b).is_ok());
  h.run();
  CHECK(h.be.n_copies.load() == 0);
  for (int32_t f = 0; f < 3; ++f) {
    CHECK(h.tokens[K(1, f)] == fake_reference(a.prompt, 5, 256, 128, fork_params(a, f)));
    CHECK(h.tokens[K(2, f)] == fake_reference(b.prompt, 5, 256, 128, fork_params(b, f)));
  }
  check_balanced(h.sched);
}

TEST_CASE("scheduler: cancelling a group frees every fork's blocks; one fork can end alone") {
  scheduler_config sc;
  sc.n_ctx = 128;
  fork_harness h(sc, kv_geometry{16, 64});
  REQUIRE(h.sched.add(make_group(1, 40, 30, 4, 3)).is_ok());
  REQUIRE(h.sched.add(make_group(2, 40, 30, 4, 4)).is_ok());
  for (int i = 0; i < 5; ++i) REQUIRE(h.step() > 0);
  CHECK(h.sched.n_seqs() == 8);
  CHECK(h.sched.cancel(2, 1));  // one choice of 2 stops (a stop string): the other three go on
  CHECK(h.sched.contains(2));
  CHECK_FALSE(h.sched.cancel(2, 1));
  CHECK(h.sched.cancel(1));  // the whole of 1
  CHECK_FALSE(h.sched.contains(1));
  CHECK(h.sched.n_seqs() == 3);
  h.run();
  for (int32_t f : {0, 2, 3}) CHECK(h.finished[K(2, f)] == 1);
  CHECK(h.gone[2] == 1);
  CHECK(h.gone.count(1) == 0);
  check_balanced(h.sched);

  // Cancelled while a step is in flight, between the prefill and the fork.
  fork_harness k(sc, kv_geometry{16, 64});
  REQUIRE(k.sched.add(make_group(5, 40, 30, 4, 3)).is_ok());
  REQUIRE(k.sched.schedule(k.batch) == 1);
  CHECK(k.sched.cancel(5));
  REQUIRE(k.be.step(k.batch, k.out).is_ok());
  k.sched.on_step_done(k.out, k.results);
  CHECK(k.results.empty());
  CHECK(k.sched.schedule(k.batch) == 0);
  check_balanced(k.sched);
}

TEST_CASE("scheduler: forks under memory pressure are preempted one by one and still match; nothing leaks") {
  scheduler_config sc;
  sc.n_ctx = 128;
  sc.max_running = 16;
  for (bool prefix : {true, false}) {
    sc.prefix_caching = prefix;
    // 20 blocks: the groups' first tokens fit (2 shared + 4 x 1), their 60-token tails do not.
    fork_harness h(sc, kv_geometry{16, 20});
    std::vector<seq_spec> specs = {make_group(1, 40, 40, 4, 1), make_group(2, 23, 40, 3, 2), make_seq(3, 30, 40)};
    for (auto& s : specs) REQUIRE(h.sched.add(s).is_ok());
    h.run();
    CHECK(h.sched.n_preemptions() > 0);
    for (auto& s : specs)
      for (int32_t f = 0; f < s.n; ++f)
        CHECK_MESSAGE(h.tokens[K(s.id, f)] == fake_reference(s.prompt, 40, 256, 128, fork_params(s, f)),
                      "sequence " << s.id << " fork " << f << " prefix " << prefix);
    check_balanced(h.sched);
  }
}

TEST_CASE("scheduler: a group is refused when its choices cannot run together") {
  scheduler_config sc;
  sc.n_ctx = 128;
  sc.max_running = 4;
  scheduler sched(sc, kv_geometry{16, 8});
  seq_spec s = make_group(1, 40, 10, 5, 1);
  status st = sched.add(s);
  CHECK_FALSE(st.is_ok());
  CHECK(st.message.find("max_running") != std::string::npos);
  s.n = 4;  // 2 shared blocks + 4 x 1 fit in 8; 4 x (3 - 2) + 2 = 6
  CHECK(sched.add(s).is_ok());
  scheduler small(sc, kv_geometry{16, 5});
  st = small.add(s);  // 6 blocks at the fork, the pool has 5
  CHECK_FALSE(st.is_ok());
  CHECK(st.message.find("KV blocks at once") != std::string::npos);
}

TEST_CASE("scheduler: a drained group resumes each fork from its own tokens") {
  scheduler_config sc;
  sc.n_ctx = 128;
  const seq_spec s = make_group(9, 30, 20, 3, 5);
  for (int before : {0, 1, 6}) {  // drained before the prefill ran, before the fork, after it
    fork_harness h(sc, kv_geometry{16, 64});
    REQUIRE(h.sched.add(s).is_ok());
    for (int i = 0; i < before; ++i) REQUIRE(h.step() > 0);
    std::vector<seq_spec> specs = h.sched.drain();
    REQUIRE(specs.size() == 1);
    CHECK(specs[0].n == 3);
    CHECK(specs[0].sampling.seed == 5);
    if (before < 2) CHECK(specs[0].forks.empty());  // not forked yet: starts over as a group
    check_balanced(h.sched);
    fork_harness next(sc, kv_geometry{16, 64});
    next.tokens = h.tokens;
    REQUIRE(next.sched.add(specs[0]).is_ok());
    next.run();
    for (int32_t f = 0; f < 3; ++f)
      CHECK_MESSAGE(next.tokens[K(9, f)] == fake_reference(s.prompt, 20, 256, 128, fork_params(s, f)), "fork " << f);
    check_balanced(next.sched);
  }
}

TEST_CASE("scheduler: a group whose whole prompt is cached still prefills a token before it forks") {
  scheduler_config sc;
  sc.n_ctx = 128;
  fork_harness h(sc, kv_geometry{16, 64});
  seq_spec first = make_seq(1, 33, 3);
  REQUIRE(h.sched.add(first).is_ok());
  h.run();
  seq_spec g = make_group(2, 33, 4, 2, 8);
  g.prompt = first.prompt;  // 32 tokens cached: all but the last prompt token
  REQUIRE(h.sched.add(g).is_ok());
  h.run();
  for (int32_t f = 0; f < 2; ++f) CHECK(h.tokens[K(2, f)] == fake_reference(g.prompt, 4, 256, 128, fork_params(g, f)));
  CHECK(h.sched.prefix_hits() > 0);
  check_balanced(h.sched);
}

// Forks with device-held counts: each fork gets a slot of its own (distinct among the
// running rows) and loads its copied list once, on its first sampled row.
TEST_CASE("scheduler: n = 4 with device counts gives every fork its own slot, loaded once") {
  scheduler_config sc{.max_batch_tokens = 64, .max_running = 8, .prefill_chunk = 64, .n_ctx = 64,
                      .device_counts = true};
  fork_harness h(sc, kv_geometry{16, 64});
  seq_spec s = make_group(1, 37, 6, 4, 7);
  s.sampling.frequency_penalty = 0.5f;
  REQUIRE(h.sched.add(s).is_ok());
  std::vector<int32_t> loads_of_slot(size_t(sc.max_running), 0);
  int sampled_rows = 0;
  for (int step = 0; step < 1000; ++step) {
    const int32_t n = h.sched.schedule(h.batch);
    if (n == 0) break;
    std::vector<int32_t> seen;
    for (int32_t i = 0; i < n; ++i) {
      if (!h.batch.sample[size_t(i)]) continue;
      ++sampled_rows;
      const int32_t slot = h.batch.counts_slot[size_t(i)];
      REQUIRE(slot >= 0);
      REQUIRE(slot < sc.max_running);
      CHECK(std::find(seen.begin(), seen.end(), slot) == seen.end());
      seen.push_back(slot);
      if (h.batch.counts_load[size_t(i)]) {
        ++loads_of_slot[size_t(slot)];
        CHECK(!h.batch.adjustments(i).empty());  // the prompt's tokens, penalized
      }
    }
    REQUIRE(h.be.step(h.batch, h.out, logits_mode::none).is_ok());
    h.results.clear();
    h.sched.on_step_done(h.out, h.results);
  }
  CHECK(sampled_rows == 4 * 6);
  int slots_loaded = 0;
  for (int32_t c : loads_of_slot) {
    CHECK(c <= 1);
    slots_loaded += c;
  }
  CHECK(slots_loaded == 4);
  check_balanced(h.sched);
}
