// token_bucket: per-client rate limit. `rate` tokens per second refill up to `burst`;
// a request takes one. When empty, retry_after says how long until one is back.
#pragma once
#include <algorithm>
#include <chrono>
#include <cstdint>

namespace infer {

class token_bucket {
 public:
  using clock = std::chrono::steady_clock;
  token_bucket(double rate_per_s, double burst, clock::time_point now)
      : rate_(rate_per_s), burst_(burst), tokens_(burst), last_(now) {}

  bool try_take(clock::time_point now, double n = 1.0) {
    refill(now);
    if (tokens_ >= n) {
      tokens_ -= n;
      return true;
    }
    return false;
  }
  std::chrono::milliseconds retry_after(clock::time_point now, double n = 1.0) {
    refill(now);
    if (tokens_ >= n || rate_ <= 0) return std::chrono::milliseconds(0);
    return std::chrono::milliseconds(int64_t((n - tokens_) / rate_ * 1000.0) + 1);
  }

 private:
  void refill(clock::time_point now) {
    const double dt = std::chrono::duration<double>(now - last_).count();
    if (dt > 0) {
      tokens_ = std::min(burst_, tokens_ + dt * rate_);
      last_ = now;
    }
  }
  double rate_, burst_, tokens_;
  clock::time_point last_;
};

}  // namespace infer
