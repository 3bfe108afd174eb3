// restart_policy: OTP-style restart intensity (at most max_restarts within `window`,
// else escalate to the parent) and exponential back-off with jitter between restarts.
// Pure host code; the caller passes the clock and the random source.
#pragma once
#include <chrono>
#include <cstdint>
#include <deque>

namespace infer {

enum class restart_strategy : uint8_t {
  one_for_one,  // a worker fails: restart that worker
  one_for_all,  // a device-level fault: restart every worker of the device
};

class restart_policy {
 public:
  using clock = std::chrono::steady_clock;
  struct options {
    int32_t max_restarts = 5;
    std::chrono::milliseconds window{10000};
    std::chrono::milliseconds backoff_initial{50};
    std::chrono::milliseconds backoff_max{5000};
    double jitter = 0.2;  // +-20%
  };

  restart_policy() = default;
  explicit restart_policy(options o) : opt_(o) {}

  // Records a failure at `now`. Returns false when the intensity limit is exceeded:
  // the supervisor must then escalate instead of restarting.
  bool on_failure(clock::time_point now);
  // Delay before the next restart: initial * 2^(recent failures - 1), capped, jittered.
  // `unit` is a uniform draw in [0, 1).
  std::chrono::milliseconds next_delay(double unit) const;
  int32_t recent_failures() const { return int32_t(failures_.size()); }
  void reset() { failures_.clear(); }

 private:
  options opt_;
  std::deque<clock::time_point> failures_;
};

}  // namespace infer
