// infer-bench-actors: the classic "serial versus parallel" table through the actor
// pipeline. N tasks (prompt P tokens, G new tokens, greedy) run one after another
// (each waits for the previous one: batch size 1), then all submitted together
// (continuous batching), on the CPU backend with synthetic:tiny by default.
//
//   infer-bench-actors [--tasks 100] [--prompt 32] [--new 64] [--workers 1]
//                      [--threads 1] [--max-running 128] [--model synthetic:tiny]
//                      [--caf-policy stealing|sharing] [--repeat R] [--skip-serial]
//                      [--backend cpu|cuda|auto] [--tokenizer-dir DIR] [--kv-memory-mb MB]
//                      [--shared PERCENT] [--prefixes K] [--no-prefix-caching]
//                      [--prefix-affinity-tokens T]
// --shared: that share of every prompt is one of K system prompts (task i gets prefix i % K),
// the rest its own: prefix caching and cache-aware routing at work (bench/RESULTS.md). Use it
// with --skip-serial --repeat 1: a second run of the same tasks would find them all cached.
#include <algorithm>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <mutex>
#include <thread>
#include <vector>

#include <caf/all.hpp>
#include <fmt/format.h>

#include "actors/messages.hpp"
#include "actors/metrics.hpp"
#include "actors/service-core.hpp"
#include "actors/service.hpp"
#include "config/service-config.hpp"
#include "bench/sim-backend.hpp"

using namespace infer;
using clk = std::chrono::steady_clock;

namespace {

struct run_result {
  double total_s = 0;
  double cpu_s = 0;  // process CPU time (all threads): what the run cost, whatever else ran
  double mean_latency_ms = 0;
  double mean_ttft_ms = 0;
  uint64_t tokens = 0;
  int failed = 0;
};

std::vector<generate_request> make_tasks(int n, int prompt_len, int new_tokens, int shared_pct = 0, int prefixes = 1) {
  std::vector<generate_request> tasks;
  uint64_t x = 42;
  const int n_shared = prompt_len * std::clamp(shared_pct, 0, 100) / 100;
  for (int i = 0; i < n; ++i) {
    generate_request r;
    uint64_t y = 7 + uint64_t(i % std::max(prefixes, 1));
    for (int j = 0; j < n_shared; ++j) {
      y = splitmix64(y);
      r.prompt_tokens.push_back(int32_t(y % 256));
    }
    for (int j = n_shared; j < prompt_len; ++j) {
      x = splitmix64(x);
      r.prompt_tokens.push_back(int32_t(x % 256));
    }
    r.max_tokens = new_tokens;
    r.ignore_eos = true;  // the measured token count does not depend on where EOS falls
    tasks.push_back(std::move(r));
  }
  return tasks;
}

void account(run_result& rr, const completion& c) {
  if (!c.ok) {
    ++rr.failed;
    return;
  }
  rr.tokens += c.tokens.size();
  rr.mean_latency_ms += c.terminal.total_ms;
  rr.mean_ttft_ms += c.terminal.first_token_ms;
}

double cpu_now() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

void finish(run_result& rr, size_t n, clk::time_point t0, double c0) {
  rr.total_s = std::chrono::duration<double>(clk::now() - t0).count();
  rr.cpu_s = cpu_now() - c0;
  size_t ok = n - size_t(rr.failed);
  if (ok) {
    rr.mean_latency_ms /= double(ok);
    rr.mean_ttft_ms /= double(ok);
  }
}

run_result run_serial(service& svc, const std::vector<generate_request>& tasks) {
  run_result rr;
  auto t0 = clk::now();
  double c0 = cpu_now();
  for (const auto& t : tasks) account(rr, svc.generate(t));
  finish(rr, tasks.size(), t0, c0);
  return rr;
}

run_result run_together(service& svc, const std::vector<generate_request>& tasks) {
  run_result rr;
  auto t0 = clk::now();
  double c0 = cpu_now();
  auto futures = svc.submit(tasks);
  for (auto& f : futures) account(rr, f.get());
  finish(rr, tasks.size(), t0, c0);
  return rr;
}

int arg_int(int argc, char** argv, const char* name, int def) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) return std::atoi(argv[i + 1]);
  return def;
}
std::string arg_str(int argc, char** argv, const char* name, const char* def) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) return argv[i + 1];
  return def;
}

}  // namespace

int main(int argc, char** argv) {
  const int n_tasks = arg_int(argc, argv, "--tasks", 100);
  const int prompt_len = arg_int(argc, argv, "--prompt", 32);
  const int new_tokens = arg_int(argc, argv, "--new", 64);

  service_config cfg;
  cfg.model = arg_str(argc, argv, "--model", "synthetic:tiny");
  cfg.backend = arg_str(argc, argv, "--backend", "cpu");
  cfg.tokenizer_dir = arg_str(argc, argv, "--tokenizer-dir", "");
  cfg.kv_memory_mb = arg_int(argc, argv, "--kv-memory-mb", 256);
  cfg.workers = arg_int(argc, argv, "--workers", 1);
  cfg.cpu_threads = arg_int(argc, argv, "--threads", 1);
  cfg.max_running = arg_int(argc, argv, "--max-running", 128);
  cfg.max_batch_tokens = arg_int(argc, argv, "--max-batch-tokens", 512);
  cfg.prefill_chunk = arg_int(argc, argv, "--prefill-chunk", 256);
  for (int i = 1; i < argc; ++i)
    if (std::strcmp(argv[i], "--no-prefix-caching") == 0) cfg.prefix_caching = false;
  cfg.prefix_affinity_tokens = arg_int(argc, argv, "--prefix-affinity-tokens", cfg.prefix_affinity_tokens);
  const int shared_pct = arg_int(argc, argv, "--shared", 0);
  const int prefixes = arg_int(argc, argv, "--prefixes", 1);
  cfg.queue_capacity = std::max(n_tasks, 256);
  cfg.default_timeout_ms = 0;
  cfg.max_tokens_limit = std::max(new_tokens, 4096);

  caf::actor_system_config caf_cfg;
  register_message_types(caf_cfg);
  const std::string policy = arg_str(argc, argv, "--caf-policy", "stealing");  // inferd's default (runtime.actor_scheduler)
  caf_cfg.set("scheduler.policy", caf::atom_from_string(policy));
  caf::actor_system sys{caf_cfg};
  const bool sim = cfg.backend == "sim";
  result<std::unique_ptr<service>> started = make_status(errc::internal, "not started");
  if (sim) {
    auto hooks = bench::sim_hooks(cfg, std::atof(arg_str(argc, argv, "--sim-fixed-us", "430").c_str()),
                                  std::atof(arg_str(argc, argv, "--sim-seq-us", "1.45").c_str()),
                                  std::atof(arg_str(argc, argv, "--sim-token-us", "0.7").c_str()));
    if (!hooks) {
      std::fprintf(stderr, "infer-bench-actors: %s\n", hooks.error().message.c_str());
      return 1;
    }
    cfg.backend = "cpu";  // the service validates the name; the hooks build the engines
    started = service::start(sys, cfg, hooks.value());
    cfg.backend = "sim";
  } else {
    started = service::start(sys, cfg);
  }
  if (!started) {
    std::fprintf(stderr, "infer-bench-actors: %s\n", started.error().message.c_str());
    return 1;
  }
  auto svc = std::move(started.value());
  auto tasks = make_tasks(n_tasks, prompt_len, new_tokens, shared_pct, prefixes);

  // Warm-up (first steps allocate buffers).
  svc->generate(tasks[0]);

  fmt::print("infer-bench-actors: {} tasks, prompt {} tokens, {} new tokens, model {}, backend {}, "
             "{} worker(s), {} BLAS thread(s) each, max_running {}, CAF scheduler {}\n",
             n_tasks, prompt_len, new_tokens, cfg.model, cfg.backend, cfg.workers, cfg.cpu_threads, cfg.max_running, policy);
  // --skip-serial: only the batched run (for profiling it); the speed-up is then meaningless.
  bool skip_serial = false;
  for (int i = 1; i < argc; ++i) skip_serial |= std::strcmp(argv[i], "--skip-serial") == 0;
  // --repeat R: R rounds (serial, then together); the row shown is the round with the
  // median speed-up, which damps the noise of a shared machine.
  const int repeat = std::max(1, arg_int(argc, argv, "--repeat", 1));
  struct round {
    run_result serial, together;
    uint64_t steps = 0;
    double engine_s = 0;
    double speedup() const { return serial.total_s / together.total_s; }
  };
  std::vector<round> rounds;
  for (int k = 0; k < repeat; ++k) {
    round rd;
    rd.serial = skip_serial ? run_result{1, 1, 0, 0, 0, 0} : run_serial(*svc, tasks);
    uint64_t steps_before = svc->stats().steps.load();
    double engine_before = svc->stats().step_time.sum();
    rd.together = run_together(*svc, tasks);
    rd.steps = svc->stats().steps.load() - steps_before;
    rd.engine_s = svc->stats().step_time.sum() - engine_before;
    if (repeat > 1)
      fmt::print("round {}: serial {:.2f} s, together {:.2f} s, speed-up {:.2f}x\n", k + 1, rd.serial.total_s,
                 rd.together.total_s, rd.speedup());
    rounds.push_back(rd);
  }
  std::sort(rounds.begin(), rounds.end(), [](const round& a, const round& b) { return a.speedup() < b.speedup(); });
  const round& med = rounds[rounds.size() / 2];
  const run_result& serial = med.serial;
  const run_result& together = med.together;
  const uint64_t together_steps = med.steps;
  const double together_engine_s = med.engine_s;

  fmt::print("\n{:<10} {:>6} {:>10} {:>18} {:>15} {:>10} {:>9} {:>12}\n", "mode", "tasks", "total (s)",
             "mean latency (ms)", "mean TTFT (ms)", "tokens/s", "speed-up", "CPU time (s)");
  auto row = [&](const char* name, const run_result& r, double speedup) {
    fmt::print("{:<10} {:>6} {:>10.2f} {:>18.1f} {:>15.1f} {:>10.0f} {:>8.2f}x {:>12.2f}\n", name, n_tasks,
               r.total_s, r.mean_latency_ms, r.mean_ttft_ms, double(r.tokens) / r.total_s, speedup, r.cpu_s);
  };
  row("serial", serial, 1.0);
  row("together", together, serial.total_s / together.total_s);
  fmt::print("\ntogether: {} engine steps, mean batch {:.1f} sequences; failed: serial {}, together {}\n",
             together_steps, together_steps ? double(together.tokens) / double(together_steps) : 0.0, serial.failed,
             together.failed);
  fmt::print("together: engine busy {:.2f} s of {:.2f} s wall ({:.0f}% per worker), mean step {:.2f} ms\n",
             together_engine_s, together.total_s, 100.0 * together_engine_s / together.total_s / cfg.workers,
             together_steps ? 1e3 * together_engine_s / double(together_steps) : 0.0);
  if (sim) {
    std::lock_guard<std::mutex> g(bench::sim_backend::gaps_mu);
    auto v = bench::sim_backend::gaps_us;
    std::sort(v.begin(), v.end());
    auto q = [&](double f) { return v.empty() ? 0.0 : v[std::min(v.size() - 1, size_t(f * double(v.size())))]; };
    fmt::print("sim: host gap between steps p50 {:.0f} us, p90 {:.0f} us, p99 {:.0f} us over {} gaps (all rounds)\n",
               q(0.5), q(0.9), q(0.99), v.size());
  }
  auto& m = svc->stats();
  fmt::print("step time p50 {:.2f} ms, p99 {:.2f} ms (all steps)\n", m.step_time.quantile(0.5) * 1e3,
             m.step_time.quantile(0.99) * 1e3);
  fmt::print("prefix cache ({}): {} of {} prompt tokens cached ({:.1f}%), {} admissions routed by prefix\n",
             cfg.prefix_caching ? "on" : "off", m.prefix_cache_hits.load(), m.prefix_cache_queries.load(),
             100.0 * m.prefix_cache_hit_rate(), m.prefix_routed.load());
  svc->shutdown();
  svc.reset();
  return serial.failed + together.failed ? 2 : 0;
}
