// prefix-workload: the prefix caching benchmark (issue 19) over any backend, through the
// scheduler alone (no actors): infer-bench-cpu --prefix and infer-bench-cuda --prefix.
//
// Throughput: a closed loop keeps `concurrency` sequences in flight until `requests`
// prompts of `prompt` tokens are served, `max_tokens` greedy tokens each; the first
// `shared` fraction of every prompt is the same for all (a system prompt), the rest its
// own. Time to first token: one request alone whose first `ttft_prefix` tokens are a long
// context followed by a 16-token question, cold (cache flushed) and again with another
// question after the same context (the context cached), `ttft_repeat` times each on new
// contexts (the median is reported), with `ttft_warmup` after one unmeasured pair
// (first-use costs: cuBLAS heuristics, CUDA graph capture).
#pragma once
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "engine/backend.hpp"
#include "engine/scheduler.hpp"

namespace infer::bench {

struct prefix_opts {
  int requests = 64, prompt = 512, max_tokens = 16, concurrency = 8;
  double shared = 0.9;
  int ttft_prefix = 2000;  // capped to what the context holds with the question
  int ttft_repeat = 1;
  bool ttft_warmup = false;  // one unmeasured pair first (the GPU's first-use costs)
  int max_batch_tokens = 512, prefill_chunk = 256;
};

struct prefix_row {
  double seconds = 0;
  int64_t computed = 0;  // tokens run through the model
  int64_t cached = 0;    // prompt tokens taken from the cache
  int ttft_prefix = 0;   // context tokens of the TTFT request (before its 16-token question)
  double ttft_cold_ms = 0, ttft_warm_ms = 0;
};

// KV blocks the workload needs at most (all in flight plus a cached prefix, and the TTFT pair).
inline int32_t prefix_kv_blocks(const prefix_opts& po, int32_t n_ctx, int32_t block_size) {
  const int32_t per_seq = (po.prompt + po.max_tokens + block_size) / block_size;
  const int32_t ttft = (std::min(po.ttft_prefix, n_ctx - 24) + 16 + block_size) / block_size;
  return per_seq * (po.concurrency + 4) + 2 * ttft + 8;
}

inline prefix_row run_prefix_workload(backend& be, const prefix_opts& po, bool caching) {
  using clk = std::chrono::steady_clock;
  const auto& cfg = be.config();
  scheduler_config sc;
  sc.max_batch_tokens = po.max_batch_tokens;
  sc.max_running = po.concurrency;
  sc.prefill_chunk = po.prefill_chunk;
  sc.n_ctx = cfg.n_ctx;
  sc.prefix_caching = caching;
  scheduler sched(sc, be.kv());
  step_batch b;
  step_output out;
  std::vector<seq_result> res;
  prefix_row r;
  auto run_until_idle = [&](auto on_result) {
    while (sched.schedule(b) > 0) {
      r.computed += b.n_tokens();
      if (auto st = be.step(b, out); !st) {
        std::fprintf(stderr, "step: %s\n", st.message.c_str());
        std::exit(1);
      }
      res.clear();
      sched.on_step_done(out, res);
      for (auto& x : res) on_result(x);
    }
  };
  auto add = [&](seq_spec s) {
    if (auto st = sched.add(std::move(s)); !st) {
      std::fprintf(stderr, "add: %s\n", st.message.c_str());
      std::exit(1);
    }
  };
  const int n_shared = int(po.prompt * po.shared);
  auto prompt_of = [&](int i) {
    seq_spec s;
    s.id = uint64_t(i + 1);
    for (int t = 0; t < n_shared; ++t) s.prompt.push_back((t * 7 + 3) % cfg.n_vocab);
    for (int t = n_shared; t < po.prompt; ++t) s.prompt.push_back((i * 131 + t * 17 + 1) % cfg.n_vocab);
    s.max_tokens = po.max_tokens;
    s.sampling.temperature = 0;
    return s;
  };
  int next = 0, done = 0;
  auto t0 = clk::now();
  while (next < std::min(po.concurrency, po.requests)) add(prompt_of(next++));
  while (done < po.requests) {
    run_until_idle([&](const seq_result& x) {
      if (x.cached_tokens > 0) r.cached += x.cached_tokens;
      if (!x.finished) return;
      ++done;
      if (next < po.requests) add(prompt_of(next++));
    });
  }
  r.seconds = std::chrono::duration<double>(clk::now() - t0).count();
  // Time to first token: context c, question q (16 tokens), one token generated.
  r.ttft_prefix = std::max(1, std::min(po.ttft_prefix, cfg.n_ctx - 24));
  auto ttft_ms = [&](int c, int q) {
    seq_spec s;
    s.id = uint64_t(1000000 + c * 16 + q);
    for (int t = 0; t < r.ttft_prefix; ++t) s.prompt.push_back((t * 11 + 5 + c * 101) % cfg.n_vocab);
    for (int t = 0; t < 16; ++t) s.prompt.push_back((t * 13 + 7 + q * 29) % cfg.n_vocab);
    s.max_tokens = 1;
    add(std::move(s));
    auto t1 = clk::now();
    run_until_idle([](const seq_result&) {});
    return std::chrono::duration<double, std::milli>(clk::now() - t1).count();
  };
  std::vector<double> cold, warm;
  const int first = po.ttft_warmup ? 0 : 1;
  for (int c = first; c <= std::max(1, po.ttft_repeat); ++c) {
    sched.flush_prefix_cache();
    const double a = ttft_ms(c, 0), w = ttft_ms(c, 1);
    if (c == 0) continue;  // the warm-up pair: not measured
    cold.push_back(a);
    warm.push_back(w);
  }
  std::sort(cold.begin(), cold.end());
  std::sort(warm.begin(), warm.end());
  r.ttft_cold_ms = cold[cold.size() / 2];
  r.ttft_warm_ms = warm[warm.size() / 2];
  return r;
}

}  // namespace infer::bench
