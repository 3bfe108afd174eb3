#include <doctest/doctest.h>

#include <algorithm>
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
