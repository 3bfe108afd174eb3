// metrics: counters and histograms the service updates and /metrics exposes.
// Lock-free (atomics), fixed buckets: updating them allocates nothing.
#pragma once
#include <array>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace infer {

// One worker as the supervision tree and the batcher see it (GET /v1/status, per-worker
// and per-device gauges). Written by the supervisors (state, restarts) and the batcher
// (breaker, running, kv), read by service::status (GET /v1/status) and render_prometheus.
struct worker_gauge {
  enum class run_state : uint8_t { starting, running, restarting, failed };
  int32_t id = 0;
  int32_t device = -1;
  std::string backend = "cpu";
  run_state state = run_state::starting;
  uint64_t restarts = 0;
  uint8_t breaker = 0;  // circuit_breaker::state: 0 closed, 1 open, 2 half_open
  int64_t running = 0;
  int64_t kv_free = 0;
  int64_t kv_total = 0;
  int64_t kv_cached = 0;       // blocks holding a cached prefix (in use or evictable)
  uint64_t step_failures = 0;  // failed or timed-out steps
  std::string node;            // "HOST:PORT" of its worker node; empty: this process
};

// One worker node as the front node's link to it sees it (GET /v1/status "nodes").
struct node_gauge {
  std::string address;             // HOST:PORT
  std::string state = "connecting";  // connecting | connected | down | refused
  uint64_t joins = 0;              // times it (re)joined
  uint64_t losses = 0;             // times it was lost while joined
  int32_t workers = 0;             // workers seen on it
  std::string last_error;
};
const char* to_string(worker_gauge::run_state s);

// The supervision tree and the caches at one moment (service::status; GET /v1/status renders
// it, net/status-json.hpp).
struct service_status {
  std::vector<worker_gauge> workers;
  std::vector<node_gauge> nodes;
  bool prefix_caching = false;
  uint64_t prefix_cache_queries = 0, prefix_cache_hits = 0;
  double prefix_cache_hit_rate = 0;
  int64_t prefix_cache_blocks = 0;
  uint64_t prefix_routed = 0;
  int64_t queue_depth = 0;
};
// `v` escaped for a Prometheus label value.
std::string label_value(const std::string& v);

class histogram {
 public:
  static constexpr int n_buckets = 16;
  explicit histogram(std::array<double, n_buckets> upper_bounds) : bounds_(upper_bounds) {}
  void observe(double v);
  // Prometheus text; `labels` (e.g. model_name="m") go on every sample.
  std::string render(const std::string& name, const std::string& help, const std::string& labels = {}) const;
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
  // Automatic prefix caching (vLLM's prefix_cache_queries / _hits): prompt tokens looked up at
  // admission and found cached, all workers; blocks holding a cached prefix now.
  std::atomic<uint64_t> prefix_cache_queries{0};
  std::atomic<uint64_t> prefix_cache_hits{0};
  std::atomic<int64_t> prefix_cache_blocks{0};
  // Admissions the router sent to a worker because of its cached prefix, over the least loaded one.
  std::atomic<uint64_t> prefix_routed{0};
  double prefix_cache_hit_rate() const {
    const uint64_t q = prefix_cache_queries.load(std::memory_order_relaxed);
    return q == 0 ? 0.0 : double(prefix_cache_hits.load(std::memory_order_relaxed)) / double(q);
  }
  histogram time_to_first_token;  // seconds
  histogram inter_token_latency;  // seconds
  histogram batch_size;           // sequences per step
  histogram step_time;            // seconds
  // Per finished request (vLLM's request-level figures): end-to-end, queue, prefill (dispatch
  // to first token) and decode (first token to end) times, prompt and generation lengths.
  histogram e2e_time, queue_time, prefill_time, decode_time;  // seconds
  histogram prompt_len, generation_len;                       // tokens
  std::atomic<uint64_t> prompt_tokens{0};      // prompt tokens of finished requests
  std::atomic<uint64_t> generation_tokens{0};  // tokens returned by finished requests
  // Labels every request-level family and infer_build_info carry (the served model name),
  // and the build's version. Set once before the service starts.
  std::string model_name;
  std::string version;
  // At a request's `done` event; times in milliseconds (as the event has them).
  void observe_finished(int32_t prompt, int32_t generated, double queue_ms, double first_token_ms, double total_ms);

  std::atomic<uint64_t> step_failures{0};   // steps that failed or timed out (watchdog)
  std::atomic<uint64_t> step_timeouts{0};   // of which the watchdog fired
  std::atomic<uint64_t> quarantined{0};     // poison requests ended with error(internal)
  std::atomic<uint64_t> escalations{0};     // a device supervisor exceeded its restart intensity

  // Degradation (supervision/README.md): requests served degraded, counted at their
  // terminal event, and whether the service degrades new requests right now.
  std::atomic<uint64_t> degraded_cpu_fallback{0};
  std::atomic<uint64_t> degraded_max_tokens_capped{0};
  std::atomic<int64_t> cpu_fallback_active{0};   // 1: no primary worker can serve, fallback workers do
  std::atomic<int64_t> max_tokens_cap_active{0}; // 1: sustained overload, new requests are capped

  // Per-worker figures (see worker_gauge). `f` runs under a lock: keep it short.
  template <class F>
  void update_worker(int32_t id, F&& f) {
    std::lock_guard<std::mutex> lk(workers_mu_);
    if (id < 0) return;
    if (size_t(id) >= workers_.size()) {
      size_t old = workers_.size();
      workers_.resize(size_t(id) + 1);
      for (size_t i = old; i < workers_.size(); ++i) workers_[i].id = int32_t(i);
    }
    f(workers_[size_t(id)]);
  }
  std::vector<worker_gauge> workers_snapshot() const {
    std::lock_guard<std::mutex> lk(workers_mu_);
    return workers_;
  }
  template <class F>
  void update_node(const std::string& address, F&& f) {
    std::lock_guard<std::mutex> lk(workers_mu_);
    for (auto& n : nodes_)
      if (n.address == address) return f(n);
    nodes_.push_back(node_gauge{});
    nodes_.back().address = address;
    f(nodes_.back());
  }
  std::vector<node_gauge> nodes_snapshot() const {
    std::lock_guard<std::mutex> lk(workers_mu_);
    return nodes_;
  }

  uint64_t outcome_count(const char* outcome) const;
  std::string render_prometheus() const;  // the whole text exposition
  std::string model_label() const;         // model_name="..." (escaped)

 private:
  static constexpr int n_outcomes = 9;
  std::array<std::atomic<uint64_t>, n_outcomes> outcomes_{};
  mutable std::mutex workers_mu_;
  std::vector<worker_gauge> workers_;
  std::vector<node_gauge> nodes_;
};

}  // namespace infer
