#include <doctest/doctest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>

#include "engine/kv-block-pool.hpp"

using namespace infer;

TEST_CASE("kv_block_pool: allocate until empty, then -1; free makes room again") {
  kv_block_pool pool(4, 16);
  CHECK(pool.n_total() == 4);
  CHECK(pool.n_free() == 4);
  std::set<int32_t> got;
  for (int i = 0; i < 4; ++i) {
    int32_t id = pool.allocate();
    REQUIRE(id >= 0);
    REQUIRE(id < 4);
    got.insert(id);
  }
  CHECK(got.size() == 4);  // distinct
  CHECK(pool.n_free() == 0);
  CHECK(pool.n_used() == 4);
  CHECK(pool.allocate() == -1);  // running out is a normal answer
  CHECK(pool.free(2).is_ok());
  CHECK(pool.n_free() == 1);
  CHECK(pool.allocate() == 2);
}

TEST_CASE("kv_block_pool: bulk allocation is all or nothing") {
  kv_block_pool pool(5, 8);
  std::vector<int32_t> a;
  CHECK(pool.allocate(3, a));
  CHECK(a.size() == 3);
  std::vector<int32_t> b{42};
  CHECK_FALSE(pool.allocate(3, b));
  CHECK(b == std::vector<int32_t>{42});  // unchanged
  CHECK(pool.n_free() == 2);
  CHECK(pool.allocate(2, b));
  CHECK(b.size() == 3);
  CHECK(pool.n_free() == 0);
}

TEST_CASE("kv_block_pool: misuse is an error and changes nothing") {
  kv_block_pool pool(3, 16);
  int32_t id = pool.allocate();
  CHECK(pool.free(id).is_ok());
  status twice = pool.free(id);
  CHECK(twice.code == errc::invalid_argument);
  CHECK(twice.message.find("twice") != std::string::npos);
  CHECK(pool.free(-1).code == errc::invalid_argument);
  CHECK(pool.free(3).code == errc::invalid_argument);
  CHECK(pool.n_free() == 3);

  std::vector<int32_t> ids;
  REQUIRE(pool.allocate(2, ids));
  std::vector<int32_t> dup{ids[0], ids[0]};
  CHECK(pool.free(std::span<const int32_t>(dup)).code == errc::invalid_argument);
  CHECK(pool.n_free() == 1);  // nothing freed by the failed call
  std::vector<int32_t> mixed{ids[0], 7};
  CHECK(pool.free(std::span<const int32_t>(mixed)).code == errc::invalid_argument);
  CHECK(pool.in_use(ids[0]));
  CHECK(pool.free(std::span<const int32_t>(ids)).is_ok());
  CHECK(pool.n_free() == 3);
}

TEST_CASE("kv_block_pool: blocks_for rounds up") {
  kv_block_pool pool(10, 16);
  CHECK(pool.blocks_for(0) == 0);
  CHECK(pool.blocks_for(1) == 1);
  CHECK(pool.blocks_for(16) == 1);
  CHECK(pool.blocks_for(17) == 2);
}

// --- content addressing (prefix caching) ---

namespace {
std::vector<int32_t> block_tokens(int32_t bs, int32_t seed) {
  std::vector<int32_t> t;
  for (int32_t i = 0; i < bs; ++i) t.push_back(seed * 1000 + i);
  return t;
}
}  // namespace

TEST_CASE("kv_block_hash: a chain over parent and tokens") {
  auto a = block_tokens(4, 1), b = block_tokens(4, 2);
  const uint64_t r = kv_hash_root(0);
  CHECK(kv_block_hash(r, a) == kv_block_hash(r, a));
  CHECK(kv_block_hash(r, a) != kv_block_hash(r, b));
  CHECK(kv_block_hash(r, a) != kv_block_hash(kv_hash_root(1), a));  // another model / adapter
  // The same block after another prefix is another block.
  CHECK(kv_block_hash(kv_block_hash(r, a), b) != kv_block_hash(kv_block_hash(r, b), b));
  auto c = a;
  std::swap(c[0], c[1]);
  CHECK(kv_block_hash(r, a) != kv_block_hash(r, c));
}

TEST_CASE("kv_block_pool: a committed block is found, shared, and cached when its last holder frees it") {
  kv_block_pool pool(4, 4);
  const uint64_t r = kv_hash_root(0);
  auto t = block_tokens(4, 7);
  const uint64_t h = kv_block_hash(r, t);
  int32_t id = pool.allocate();
  CHECK(pool.lookup(h, r, t) == -1);  // not committed yet
  REQUIRE(pool.commit(id, h, r, t).value());
  CHECK(pool.lookup(h, r, t) == id);
  CHECK(pool.lookup(h, kv_hash_root(9), t) == -1);        // another parent
  CHECK(pool.lookup(h, r, block_tokens(4, 8)) == -1);     // same hash, other tokens: never handed out
  CHECK(pool.commit(id, h, r, t).error().code == errc::invalid_argument);  // committed twice
  REQUIRE(pool.acquire(id).is_ok());
  CHECK(pool.refs(id) == 2);
  CHECK(pool.free(id).is_ok());
  CHECK(pool.in_use(id));
  CHECK(pool.free(id).is_ok());
  CHECK_FALSE(pool.in_use(id));
  CHECK(pool.n_evictable() == 1);
  CHECK(pool.n_free() == 4);  // cached blocks are available
  CHECK(pool.lookup(h, r, t) == id);
  CHECK(pool.free(id).code == errc::invalid_argument);  // freed twice
  REQUIRE(pool.acquire(id).is_ok());  // revived from the cache
  CHECK(pool.n_evictable() == 0);
  CHECK(pool.n_used() == 1);
  // The same prefix computed twice: the second copy stays private.
  int32_t dup = pool.allocate();
  CHECK_FALSE(pool.commit(dup, h, r, t).value());
  CHECK(pool.free(dup).is_ok());
  CHECK(pool.n_evictable() == 0);
  CHECK(pool.acquire(dup).code == errc::invalid_argument);  // holds no cached prefix
  CHECK(pool.commit(3, h, r, block_tokens(2, 1)).error().code == errc::invalid_argument);  // not in use
}

TEST_CASE("kv_block_pool: free blocks go first, then cached ones in LRU order") {
  kv_block_pool pool(4, 2);
  const uint64_t r = kv_hash_root(0);
  std::vector<int32_t> ids;
  std::vector<uint64_t> hs;
  for (int32_t i = 0; i < 3; ++i) {
    int32_t id = pool.allocate();
    auto t = block_tokens(2, i);
    hs.push_back(kv_block_hash(r, t));
    REQUIRE(pool.commit(id, hs.back(), r, t).value());
    ids.push_back(id);
  }
  // Freed in the order 2, 0, 1: the LRU order.
  for (int32_t k : {2, 0, 1}) REQUIRE(pool.free(ids[size_t(k)]).is_ok());
  CHECK(pool.lru_order() == std::vector<int32_t>{ids[2], ids[0], ids[1]});
  int32_t fresh = pool.allocate();
  CHECK(fresh == 3);  // the free block, not a cached one
  CHECK(pool.n_evictions() == 0);
  CHECK(pool.n_committed() == 3);
  // Under pressure: the least recently used first.
  CHECK(pool.allocate() == ids[2]);
  CHECK(pool.n_evictions() == 1);
  CHECK(pool.lookup(hs[2], r, block_tokens(2, 2)) == -1);  // evicted: its content is gone
  CHECK(pool.lookup(hs[0], r, block_tokens(2, 0)) == ids[0]);
  // A hit refreshes nothing by itself; freeing again puts it at the most recent end.
  REQUIRE(pool.acquire(ids[0]).is_ok());
  REQUIRE(pool.free(ids[0]).is_ok());
  CHECK(pool.lru_order() == std::vector<int32_t>{ids[1], ids[0]});
  std::vector<int32_t> two;
  CHECK(pool.allocate(2, two));
  CHECK(two == std::vector<int32_t>{ids[1], ids[0]});
  CHECK(pool.allocate() == -1);  // running out stays a normal answer
  CHECK(pool.n_committed() == 0);
}

TEST_CASE("kv_block_pool: flush drops the cached blocks and keeps the ones in use") {
  kv_block_pool pool(3, 2);
  const uint64_t r = kv_hash_root(0);
  int32_t a = pool.allocate(), b = pool.allocate();
  REQUIRE(pool.commit(a, kv_block_hash(r, block_tokens(2, 1)), r, block_tokens(2, 1)).value());
  REQUIRE(pool.commit(b, kv_block_hash(r, block_tokens(2, 2)), r, block_tokens(2, 2)).value());
  REQUIRE(pool.free(a).is_ok());
  CHECK(pool.flush() == 1);
  CHECK(pool.n_committed() == 1);
  CHECK(pool.lookup(kv_block_hash(r, block_tokens(2, 2)), r, block_tokens(2, 2)) == b);
  REQUIRE(pool.free(b).is_ok());
  CHECK(pool.flush() == 1);
  CHECK(pool.n_committed() == 0);
  CHECK(pool.n_free() == 3);
}

TEST_CASE("kv_block_pool: random commit / evict / lookup agree with a plain model (property)") {
  std::mt19937 rng(12345);
  kv_block_pool pool(64, 1);
  const uint64_t r = kv_hash_root(0);
  std::map<int32_t, int32_t> model_token;  // committed block -> its token
  std::map<int32_t, int32_t> model_refs;
  for (int op = 0; op < 20000; ++op) {
    const int k = int(rng() % 3);
    if (k == 0) {
      int32_t id = pool.allocate();
      if (id < 0) { CHECK(pool.n_free() == 0); continue; }
      model_token.erase(id);  // evicted, if it was cached
      model_refs[id] = 1;
      std::vector<int32_t> t{int32_t(rng() % 200)};
      auto c = pool.commit(id, kv_block_hash(r, t), r, t);
      REQUIRE(c.has_value());
      bool dup = false;
      for (auto& [o, tok] : model_token) dup |= tok == t[0];
      CHECK(c.value() == !dup);
      if (c.value()) model_token[id] = t[0];
    } else if (k == 1 && !model_refs.empty()) {
      auto it = std::next(model_refs.begin(), long(rng() % model_refs.size()));
      REQUIRE(pool.free(it->first).is_ok());
      if (--it->second == 0) model_refs.erase(it);
    } else {
      std::vector<int32_t> t{int32_t(rng() % 200)};
      int32_t found = pool.lookup(kv_block_hash(r, t), r, t);
      int32_t want = -1;
      for (auto& [o, tok] : model_token) if (tok == t[0]) want = o;
      REQUIRE(found == want);
      if (found >= 0 && rng() % 2) {
        REQUIRE(pool.acquire(found).is_ok());
        model_refs[found]++;
      }
    }
    int32_t used = 0;
    for (auto& [id, n] : model_refs) { REQUIRE(pool.refs(id) == n); ++used; }
    REQUIRE(pool.n_used() == used);
    REQUIRE(pool.n_committed() == int32_t(model_token.size()));
  }
}

TEST_CASE("kv_block_pool: share() adds a reference to a block in use, committed or not (forks)") {
  kv_block_pool pool(4, 2);
  const int32_t a = pool.allocate();
  CHECK(pool.share(a).is_ok());
  CHECK(pool.refs(a) == 2);
  CHECK(pool.free(a).is_ok());
  CHECK(pool.in_use(a));  // the other holder keeps it
  CHECK(pool.free(a).is_ok());
  CHECK(pool.n_free() == 4);
  CHECK_FALSE(pool.share(a).is_ok());  // free: nothing to share
  CHECK_FALSE(pool.share(9).is_ok());
  const int32_t b = pool.allocate();
  const std::vector<int32_t> t{1, 2};
  REQUIRE(pool.commit(b, kv_block_hash(7, t), 7, t).value());
  CHECK(pool.share(b).is_ok());
  CHECK(pool.free(b).is_ok());
  CHECK(pool.free(b).is_ok());
  CHECK(pool.n_evictable() == 1);  // cached once nobody holds it
}
