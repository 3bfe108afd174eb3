// metrics: counters and histograms the service updates and /metrics exposes.
// Lock-free (atomics), fixed buckets: updating them allocates nothing.
#pragma once
#include <array>
#include <atomic>
#include <cstdint>
#include <string>

namespace infer {

class histogram {
 public:
  static constexpr int n_buckets = 16;
  explicit histogram(std::array<double, n_buckets> upper_bounds) : bounds_(upper_bounds) {}
  void observe(double v);
  std::string render(const std::string& name, const std::string& help) const;  // Prometheus text
  uint64_t count() const { return count_.load(std::memory_order_relaxed); }
  double sum() const;
  double quantile(double q) const;  // estimate from buckets

 private:
  std::array<double, n_buckets> bounds_;
  std::array<std::atomic<uint64_t>, n_buckets + 1> counts_{};  // last: +Inf
  std::atomic<uint64_t> count_{0};
  std::atomic<uint64_t> sum_micro_{0};  // sum * 1e6, integer for atomicity
};

class metrics {
 public:
  metrics();
  // requests by outcome: done_length, done_stop, cancelled, invalid_request, overloaded,
  // rate_limited, timeout, unavailable, internal
  void count_outcome(const char* outcome);
  std::atomic<int64_t> queue_depth{0};
  std::atomic<int64_t> running_sequences{0};
  std::atomic<int64_t> kv_blocks_used{0};
  std::atomic<int64_t> kv_blocks_total{0};
  std::atomic<uint64_t> tokens_generated{0};
  std::atomic<uint64_t> worker_restarts{0};
  std::atomic<uint64_t> steps{0};
  std::atomic<uint64_t> preemptions{0};  // sequences preempted for KV blocks (recomputed later)
  histogram time_to_first_token;  // seconds
  histogram inter_token_latency;  // seconds
  histogram batch_size;           // sequences per step
  histogram step_time;            // seconds

  uint64_t outcome_count(const char* outcome) const;
  std::string render_prometheus() const;  // the whole text exposition

 private:
  static constexpr int n_outcomes = 9;
  std::array<std::atomic<uint64_t>, n_outcomes> outcomes_{};
};

}  // namespace infer
