#include "actors/metrics.hpp"

#include <algorithm>

#include <cmath>
#include <cstring>

#include <fmt/format.h>

namespace infer {

namespace {

constexpr const char* outcome_names[] = {"done_length", "done_stop",   "cancelled",
                                         "invalid_request", "overloaded", "rate_limited",
                                         "timeout",     "unavailable", "internal"};

int outcome_index(const char* outcome) {
  if (!outcome) return -1;
  for (int i = 0; i < int(std::size(outcome_names)); ++i)
    if (std::strcmp(outcome, outcome_names[i]) == 0) return i;
  return -1;
}

// Prometheus renders floats in Go's shortest form; %g is what clients parse happily.
std::string num(double v) { return fmt::format("{:g}", v); }

}  // namespace

void histogram::observe(double v) {
  if (!(v >= 0)) v = 0;  // NaN and negatives (clock skew) count as 0
  int i = 0;
  while (i < n_buckets && v > bounds_[size_t(i)]) ++i;
  counts_[size_t(i)].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  sum_micro_.fetch_add(uint64_t(std::llround(v * 1e6)), std::memory_order_relaxed);
}

double histogram::sum() const { return double(sum_micro_.load(std::memory_order_relaxed)) / 1e6; }

double histogram::quantile(double q) const {
  uint64_t total = 0;
  std::array<uint64_t, n_buckets + 1> c{};
  for (size_t i = 0; i < c.size(); ++i) total += c[i] = counts_[i].load(std::memory_order_relaxed);
  if (total == 0) return 0;
  double rank = q * double(total);
  uint64_t cum = 0;
  for (size_t i = 0; i < c.size(); ++i) {
    if (double(cum + c[i]) >= rank && c[i] > 0) {
      if (i == size_t(n_buckets)) return bounds_[n_buckets - 1];  // +Inf bucket: the last finite bound
      double lo = i == 0 ? 0.0 : bounds_[i - 1];
      double hi = bounds_[i];
      return lo + (hi - lo) * (rank - double(cum)) / double(c[i]);
    }
    cum += c[i];
  }
  return bounds_[n_buckets - 1];
}

std::string histogram::render(const std::string& name, const std::string& help) const {
  std::string s = fmt::format("# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
  uint64_t cum = 0;
  for (int i = 0; i < n_buckets; ++i) {
    cum += counts_[size_t(i)].load(std::memory_order_relaxed);
    s += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, num(bounds_[size_t(i)]), cum);
  }
  cum += counts_[n_buckets].load(std::memory_order_relaxed);
  s += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n", name, cum);
  s += fmt::format("{}_sum {}\n{}_count {}\n", name, num(sum()), name, cum);
  return s;
}

metrics::metrics()
    : time_to_first_token({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80}),
      inter_token_latency(
          {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}),
      batch_size({1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256, 512}),
      step_time({0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}) {}

void metrics::count_outcome(const char* outcome) {
  int i = outcome_index(outcome);
  if (i >= 0) outcomes_[size_t(i)].fetch_add(1, std::memory_order_relaxed);
}

uint64_t metrics::outcome_count(const char* outcome) const {
  int i = outcome_index(outcome);
  return i < 0 ? 0 : outcomes_[size_t(i)].load(std::memory_order_relaxed);
}

const char* to_string(worker_gauge::run_state s) {
  switch (s) {
    case worker_gauge::run_state::starting: return "starting";
    case worker_gauge::run_state::running: return "running";
    case worker_gauge::run_state::restarting: return "restarting";
    case worker_gauge::run_state::failed: return "failed";
  }
  return "?";
}

std::string metrics::render_prometheus() const {
  auto ld = [](const auto& a) { return a.load(std::memory_order_relaxed); };
  std::string s;
  s += "# HELP infer_requests_total Requests by outcome (terminal event).\n# TYPE infer_requests_total counter\n";
  for (int i = 0; i < n_outcomes; ++i)
    s += fmt::format("infer_requests_total{{outcome=\"{}\"}} {}\n", outcome_names[i], ld(outcomes_[size_t(i)]));
  auto gauge = [&](const char* name, const char* help, int64_t v) {
    s += fmt::format("# HELP {} {}\n# TYPE {} gauge\n{} {}\n", name, help, name, name, v);
  };
  auto counter = [&](const char* name, const char* help, uint64_t v) {
    s += fmt::format("# HELP {} {}\n# TYPE {} counter\n{} {}\n", name, help, name, name, v);
  };
  gauge("infer_queue_depth", "Requests waiting in the admission queue.", ld(queue_depth));
  gauge("infer_running_sequences", "Sequences held by workers (running or about to run).", ld(running_sequences));
  gauge("infer_kv_blocks_used", "KV cache blocks in use, all workers.", ld(kv_blocks_used));
  gauge("infer_kv_blocks_total", "KV cache blocks, all workers.", ld(kv_blocks_total));
  counter("infer_tokens_generated_total", "Tokens sampled.", ld(tokens_generated));
  counter("infer_worker_restarts_total", "Workers restarted by the supervisor.", ld(worker_restarts));
  counter("infer_steps_total", "Engine steps run.", ld(steps));
  counter("infer_preemptions_total", "Sequences preempted for lack of KV blocks (resumed by recompute).",
          ld(preemptions));
  counter("infer_prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache at admission.",
          ld(prefix_cache_queries));
  counter("infer_prefix_cache_hits_total", "Prompt tokens found in the prefix cache (not prefilled again).",
          ld(prefix_cache_hits));
  s += fmt::format("# HELP infer_prefix_cache_hit_rate {}\n# TYPE infer_prefix_cache_hit_rate gauge\n"
                   "infer_prefix_cache_hit_rate {}\n",
                   "Prefix cache hits over queries (tokens) since start.", num(prefix_cache_hit_rate()));
  gauge("infer_prefix_cache_blocks", "KV blocks holding a cached prefix, all workers.", ld(prefix_cache_blocks));
  counter("infer_prefix_routed_total", "Admissions routed to a worker for its cached prefix rather than its load.",
          ld(prefix_routed));
  counter("infer_step_failures_total", "Engine steps that failed or timed out.", ld(step_failures));
  counter("infer_step_timeouts_total", "Steps the watchdog declared hung.", ld(step_timeouts));
  counter("infer_requests_quarantined_total", "Poison requests quarantined (error internal).", ld(quarantined));
  counter("infer_supervisor_escalations_total", "Device supervisors that exceeded their restart intensity.",
          ld(escalations));
  s += "# HELP infer_degraded_requests_total Requests served degraded, by kind (their terminal event says so).\n"
       "# TYPE infer_degraded_requests_total counter\n";
  s += fmt::format("infer_degraded_requests_total{{kind=\"cpu_fallback\"}} {}\n", ld(degraded_cpu_fallback));
  s += fmt::format("infer_degraded_requests_total{{kind=\"max_tokens_capped\"}} {}\n",
                   ld(degraded_max_tokens_capped));
  s += "# HELP infer_degradation_active 1 while new requests are served degraded this way.\n"
       "# TYPE infer_degradation_active gauge\n";
  s += fmt::format("infer_degradation_active{{kind=\"cpu_fallback\"}} {}\n", ld(cpu_fallback_active));
  s += fmt::format("infer_degradation_active{{kind=\"max_tokens_capped\"}} {}\n", ld(max_tokens_cap_active));
  {
    auto ws = workers_snapshot();
    auto family = [&](const char* name, const char* type, const char* help, auto value) {
      s += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
      for (const auto& w : ws)
        s += fmt::format("{}{{worker=\"{}\",device=\"{}\"}} {}\n", name, w.id, w.device, value(w));
    };
    family("infer_worker_up", "gauge", "1 while the worker is running.",
           [](const worker_gauge& w) { return w.state == worker_gauge::run_state::running ? 1 : 0; });
    family("infer_worker_breaker_state", "gauge", "Circuit breaker of the worker: 0 closed, 1 open, 2 half-open.",
           [](const worker_gauge& w) { return int(w.breaker); });
    family("infer_worker_restarts", "counter", "Restarts of this worker.",
           [](const worker_gauge& w) { return w.restarts; });
    family("infer_worker_running_sequences", "gauge", "Sequences held by this worker.",
           [](const worker_gauge& w) { return w.running; });
    // Per device: sums over its workers.
    std::vector<int32_t> devs;
    for (const auto& w : ws)
      if (std::find(devs.begin(), devs.end(), w.device) == devs.end()) devs.push_back(w.device);
    auto per_device = [&](const char* name, const char* type, const char* help, auto value) {
      s += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
      for (int32_t d : devs) {
        int64_t sum = 0;
        for (const auto& w : ws)
          if (w.device == d) sum += int64_t(value(w));
        s += fmt::format("{}{{device=\"{}\"}} {}\n", name, d, sum);
      }
    };
    per_device("infer_device_workers_up", "gauge", "Running workers of the device.",
               [](const worker_gauge& w) { return w.state == worker_gauge::run_state::running ? 1 : 0; });
    per_device("infer_device_restarts_total", "counter", "Worker restarts on the device.",
               [](const worker_gauge& w) { return w.restarts; });
    per_device("infer_device_kv_blocks_free", "gauge", "Free KV blocks on the device.",
               [](const worker_gauge& w) { return w.kv_free; });
    per_device("infer_device_running_sequences", "gauge", "Sequences held on the device.",
               [](const worker_gauge& w) { return w.running; });
  }
  {
    // Worker nodes (multi-node: the front node's links).
    auto ns = nodes_snapshot();
    auto family = [&](const char* name, const char* type, const char* help, auto value) {
      s += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
      for (const auto& n : ns) s += fmt::format("{}{{node=\"{}\"}} {}\n", name, n.address, value(n));
    };
    if (!ns.empty()) {
      family("infer_node_up", "gauge", "1 while the worker node is joined.",
             [](const node_gauge& n) { return n.state == "connected" ? 1 : 0; });
      family("infer_node_losses_total", "counter", "Times the worker node was lost (died, unreachable, silent).",
             [](const node_gauge& n) { return n.losses; });
      family("infer_node_joins_total", "counter", "Times the worker node joined.",
             [](const node_gauge& n) { return n.joins; });
      family("infer_node_workers", "gauge", "Workers seen on the worker node.",
             [](const node_gauge& n) { return n.workers; });
    }
  }
  s += time_to_first_token.render("infer_time_to_first_token_seconds", "Time from submission to the first token.");
  s += inter_token_latency.render("infer_inter_token_latency_seconds", "Time between consecutive tokens of a request.");
  s += batch_size.render("infer_batch_size", "Sequences per engine step.");
  s += step_time.render("infer_step_time_seconds", "Engine step duration.");
  return s;
}

}  // namespace infer
