// circuit_breaker: per-worker health gate (closed -> open -> half_open -> closed).
//
//   closed    --failures >= threshold (consecutive)-->  open
//   open      --open_for elapsed-------------------->   half_open (admits one probe step)
//   half_open --probe succeeds-->  closed   --probe fails-->  open (timer restarts)
//
// Pure host code driven by the caller's clock, so tests need no sleeping.
#pragma once
#include <chrono>
#include <cstdint>

namespace infer {

class circuit_breaker {
 public:
  using clock = std::chrono::steady_clock;
  enum class state : uint8_t { closed, open, half_open };

  struct options {
    int32_t failure_threshold = 3;
    std::chrono::milliseconds open_for{2000};
  };

  circuit_breaker() = default;
  explicit circuit_breaker(options o) : opt_(o) {}

  // Whether a step may be sent now; in half_open, true once (the probe) until it reports.
  bool allow(clock::time_point now);
  void on_success();
  void on_failure(clock::time_point now);

  state current(clock::time_point now);
  // Time until an open breaker lets a probe through (0 when not open).
  std::chrono::milliseconds retry_after(clock::time_point now) const;
  uint64_t opened_count() const { return opened_; }

 private:
  options opt_;
  state state_ = state::closed;
  int32_t failures_ = 0;
  bool probe_in_flight_ = false;
  clock::time_point opened_at_{};
  uint64_t opened_ = 0;
};

const char* to_string(circuit_breaker::state s);

}  // namespace infer
