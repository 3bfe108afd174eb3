#include "net/rate-limiter.hpp"

#include <algorithm>

namespace infer::net {

rate_limiter::rate_limiter(double rate_per_s, double burst, size_t max_clients)
    : rate_(rate_per_s),
      burst_(std::max(1.0, burst)),
      max_clients_(std::max<size_t>(1, max_clients)),
      full_after_(rate_per_s > 0 ? std::chrono::duration_cast<clock::duration>(
                                       std::chrono::duration<double>(std::max(1.0, burst) / rate_per_s))
                                 : clock::duration::zero()) {}

int64_t rate_limiter::take(std::string_view client, clock::time_point now) {
  if (!enabled()) return 0;
  std::lock_guard lk(mu_);
  // Oldest first, and the list is in order of last use: stop at the first one still refilling.
  while (!lru_.empty() && now - lru_.back().last >= full_after_) {
    index_.erase(lru_.back().key);
    lru_.pop_back();
  }
  auto it = index_.find(client);
  if (it == index_.end()) {
    if (lru_.size() >= max_clients_) {
      index_.erase(lru_.back().key);
      lru_.pop_back();
      ++evicted_;
    }
    lru_.push_front(entry{std::string(client), token_bucket(rate_, burst_, now), now});
    it = index_.emplace(std::string_view(lru_.front().key), lru_.begin()).first;
  } else if (it->second != lru_.begin()) {
    lru_.splice(lru_.begin(), lru_, it->second);  // iterators stay valid
  }
  entry& e = *it->second;
  e.last = std::max(e.last, now);  // io threads may reach the lock out of clock order
  if (e.bucket.try_take(now)) return 0;
  return std::max<int64_t>(1, e.bucket.retry_after(now).count());
}

size_t rate_limiter::clients() const {
  std::lock_guard lk(mu_);
  return lru_.size();
}

uint64_t rate_limiter::evicted_at_cap() const {
  std::lock_guard lk(mu_);
  return evicted_;
}

}  // namespace infer::net
