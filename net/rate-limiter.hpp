// rate_limiter: the per-client request rate limit of the server ([server] rate_limit_*).
// One token_bucket (supervision/token-bucket.hpp) per client key (the client's IP
// address), shared by every io thread behind one short lock.
//
// Bounded memory: a bucket left alone for burst / rate seconds is full again, which is
// exactly a fresh bucket, so it is dropped without changing any answer. Beyond
// max_clients live buckets, the least recently seen client is dropped as well (it then
// starts over with a full burst: lenient towards that one client, but the table never
// grows past the cap however many addresses a client rotates through).
//
// Time comes in as an argument, so tests drive the clock.
#pragma once
#include <chrono>
#include <cstdint>
#include <list>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

#include "supervision/token-bucket.hpp"

namespace infer::net {

class rate_limiter {
 public:
  using clock = token_bucket::clock;

  // rate_per_s <= 0: off (take() always allows and stores nothing).
  rate_limiter(double rate_per_s, double burst, size_t max_clients);

  bool enabled() const { return rate_ > 0; }
  // Takes one token of `client`'s bucket. 0: allowed; otherwise refused, and the value is
  // how many milliseconds until a token is back (>= 1), as the bucket computes it.
  int64_t take(std::string_view client, clock::time_point now);

  size_t clients() const;           // buckets held now
  uint64_t evicted_at_cap() const;  // clients dropped at max_clients before their bucket was full

 private:
  struct entry {
    std::string key;
    token_bucket bucket;
    clock::time_point last;
  };
  using lru_list = std::list<entry>;  // front: most recently seen

  double rate_, burst_;
  size_t max_clients_;
  clock::duration full_after_;  // idle this long, a bucket is full again
  mutable std::mutex mu_;
  lru_list lru_;
  // Keys view the entries' own strings (list nodes never move): no second copy.
  std::unordered_map<std::string_view, lru_list::iterator> index_;
  uint64_t evicted_ = 0;
};

}  // namespace infer::net
