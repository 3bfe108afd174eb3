// overload_monitor: "sustained overload" for the degradation policy. The queue is
// overloaded while it holds at least `fraction` x capacity requests; overload is sustained
// once that has held without a break for `after`. Fed with every queue-depth change by the
// batcher; pure host code driven by the caller's clock, so tests need no sleeping.
//
//   depth >= threshold        : since = first time seen (kept while it holds)
//   depth <  threshold        : since cleared
//   sustained(now)            : since set and now - since >= after
#pragma once
#include <chrono>
#include <cstdint>
#include <optional>

namespace infer {

class overload_monitor {
 public:
  using clock = std::chrono::steady_clock;

  overload_monitor() = default;
  overload_monitor(int64_t capacity, double fraction, std::chrono::milliseconds after);

  // The queue now holds `depth` requests.
  void observe(int64_t depth, clock::time_point now);
  bool sustained(clock::time_point now) const { return since_ && now - *since_ >= after_; }
  int64_t threshold() const { return threshold_; }

 private:
  int64_t threshold_ = 1;
  std::chrono::milliseconds after_{0};
  std::optional<clock::time_point> since_;
};

}  // namespace infer
