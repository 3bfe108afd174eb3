// CPU backend throughput: single-sequence decode and a ragged batch of 32 decoding
// sequences, on synthetic:tiny and synthetic:gpt2-small. Prints a table (not a test).
//
//   build/bin/infer-bench-cpu [--steps N] [--models tiny,gpt2-small]
//
// --prefix: automatic prefix caching through the scheduler, on versus off. A closed loop of
// `concurrency` sequences serves `requests` prompts of `prompt` tokens whose first
// `shared` fraction is the same for all (a system prompt), then one long context with a
// 16-token question cold, and another question after the same context cached (time to
// first token): bench/prefix-workload.hpp, shared with infer-bench-cuda --prefix.
//
//   build/bin/infer-bench-cpu --prefix [--models tiny] [--requests 64] [--prompt 512]
//        [--shared 0.9] [--max-tokens 16] [--concurrency 8]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "engine/cpu-backend.hpp"
#include "engine/scheduler.hpp"
#include "bench/prefix-workload.hpp"

using namespace infer;
using clk = std::chrono::steady_clock;

namespace {

struct row {
  std::string model;
  int batch;
  int prompt;
  double prefill_ms, step_ms, tok_s;
};

row run(const std::string& spec, int batch, int prompt, int steps) {
  auto w = load_model_weights(spec, 1234);
  if (!w) {
    std::fprintf(stderr, "%s: %s\n", spec.c_str(), w.error().message.c_str());
    std::exit(1);
  }
  const auto& cfg = w.value()->cfg;
  backend_options o;
  o.kv_block_size = 16;
  const int per_seq = (prompt + steps + 15) / 16;
  o.kv_blocks = per_seq * batch;
  auto be = make_cpu_backend(w.value(), o);
  if (!be) {
    std::fprintf(stderr, "%s\n", be.error().message.c_str());
    std::exit(1);
  }
  step_batch b;
  step_output out;
  std::vector<std::vector<int32_t>> blocks(batch), toks(batch);
  for (int s = 0; s < batch; ++s) {
    for (int i = 0; i < per_seq; ++i) blocks[s].push_back(s * per_seq + i);
    for (int i = 0; i < prompt; ++i) toks[s].push_back((s * 131 + i * 7) % cfg.n_vocab);
  }
  // Ragged prefill: every sequence a different length (prompt - s % 8), then decode.
  auto t0 = clk::now();
  b.reset(per_seq);
  std::vector<int> past(batch);
  for (int s = 0; s < batch; ++s) {
    past[s] = prompt - s % 8;
    b.add(0, std::span(toks[s]).first(past[s]), blocks[s], true, {}, 0);
  }
  if (auto st = be.value()->step(b, out); !st) {
    std::fprintf(stderr, "%s\n", st.message.c_str());
    std::exit(1);
  }
  auto t1 = clk::now();
  std::vector<int32_t> next(out.tokens);
  for (int k = 0; k < steps; ++k) {
    b.reset(per_seq);
    for (int s = 0; s < batch; ++s) b.add(past[s], std::span(&next[s], 1), blocks[s], true, {}, k + 1);
    if (auto st = be.value()->step(b, out); !st) {
      std::fprintf(stderr, "%s\n", st.message.c_str());
      std::exit(1);
    }
    for (int s = 0; s < batch; ++s) past[s]++, next[s] = out.tokens[s];
  }
  auto t2 = clk::now();
  double pre = std::chrono::duration<double, std::milli>(t1 - t0).count();
  double dec = std::chrono::duration<double, std::milli>(t2 - t1).count();
  return {spec, batch, prompt, pre, dec / steps, batch * steps / (dec / 1000.0)};
}

using bench::prefix_opts;
using bench::prefix_row;

prefix_row run_prefix(const std::string& spec, const prefix_opts& po, bool caching) {
  auto w = load_model_weights(spec, 1234);
  if (!w) {
    std::fprintf(stderr, "%s: %s\n", spec.c_str(), w.error().message.c_str());
    std::exit(1);
  }
  backend_options o;
  o.kv_block_size = 16;
  o.kv_blocks = bench::prefix_kv_blocks(po, w.value()->cfg.n_ctx, 16);
  auto be = make_cpu_backend(w.value(), o);
  if (!be) {
    std::fprintf(stderr, "%s\n", be.error().message.c_str());
    std::exit(1);
  }
  return bench::run_prefix_workload(*be.value(), po, caching);
}

int prefix_main(const std::vector<std::string>& models, const prefix_opts& po) {
  std::printf("prefix caching: %d requests of %d tokens (%.0f%% shared), %d generated each, %d at a time\n\n",
              po.requests, po.prompt, po.shared * 100, po.max_tokens, po.concurrency);
  std::printf("| model | caching | requests/s | generated tokens/s | tokens computed | prompt tokens cached | "
              "TTFT cold ms | TTFT cached ms |\n");
  std::printf("|---|---|---:|---:|---:|---:|---:|---:|\n");
  for (auto& m : models) {
    double base = 0;
    for (bool caching : {false, true}) {
      prefix_row r = run_prefix(m, po, caching);
      const double rps = po.requests / r.seconds;
      if (!caching) base = rps;
      std::printf("| %s | %s | %.2f%s | %.0f | %lld | %lld | %.1f | %.1f |\n", m.c_str(), caching ? "on" : "off", rps,
                  caching && base > 0 ? (" (" + std::to_string(rps / base).substr(0, 4) + "x)").c_str() : "",
                  po.requests * po.max_tokens / r.seconds, (long long)r.computed, (long long)r.cached,
                  r.ttft_cold_ms, r.ttft_warm_ms);
      std::fflush(stdout);
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  int steps = 64;
  bool prefix = false;
  prefix_opts po;
  bool models_given = false;
  std::vector<std::string> models{"synthetic:tiny", "synthetic:gpt2-small"};
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--steps") && i + 1 < argc) steps = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--prefix")) prefix = true;
    else if (!std::strcmp(argv[i], "--requests") && i + 1 < argc) po.requests = std::max(1, std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--prompt") && i + 1 < argc) po.prompt = std::max(2, std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--max-tokens") && i + 1 < argc) po.max_tokens = std::max(1, std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--concurrency") && i + 1 < argc) po.concurrency = std::max(1, std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--shared") && i + 1 < argc) po.shared = std::clamp(std::atof(argv[++i]), 0.0, 1.0);
    else if (!std::strcmp(argv[i], "--models") && i + 1 < argc) {
      models_given = true;
      models.clear();
      std::string s = argv[++i];
      for (size_t p = 0; p <= s.size();) {
        size_t q = s.find(',', p);
        if (q == std::string::npos) q = s.size();
        models.push_back("synthetic:" + s.substr(p, q - p));
        p = q + 1;
      }
    } else {
      std::fprintf(stderr,
                   "usage: %s [--steps N] [--models tiny,gpt2-small]\n"
                   "       %s --prefix [--models tiny] [--requests N] [--prompt TOKENS] [--shared FRACTION]"
                   " [--max-tokens N] [--concurrency N]\n",
                   argv[0], argv[0]);
      return 2;
    }
  }
  if (prefix) return prefix_main(models_given ? models : std::vector<std::string>{"synthetic:tiny"}, po);
  std::printf("| model | batch | prompt | prefill ms | decode step ms | decode tokens/s |\n");
  std::printf("|---|---:|---:|---:|---:|---:|\n");
  for (auto& m : models)
    for (int batch : {1, 32}) {
      row r = run(m, batch, 32, steps);
      std::printf("| %s | %d | %d | %.1f | %.2f | %.0f |\n", r.model.c_str(), r.batch, r.prompt,
                  r.prefill_ms, r.step_ms, r.tok_s);
      std::fflush(stdout);
    }
}
