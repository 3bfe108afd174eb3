// CPU backend throughput: single-sequence decode and a ragged batch of 32 decoding
// sequences, on synthetic:tiny and synthetic:gpt2-small. Prints a table (not a test).
//
//   build/bin/infer-bench-cpu [--steps N] [--models tiny,gpt2-small]
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "engine/cpu-backend.hpp"

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

}  // namespace

int main(int argc, char** argv) {
  int steps = 64;
  std::vector<std::string> models{"synthetic:tiny", "synthetic:gpt2-small"};
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--steps") && i + 1 < argc) steps = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--models") && i + 1 < argc) {
      models.clear();
      std::string s = argv[++i];
      for (size_t p = 0; p <= s.size();) {
        size_t q = s.find(',', p);
        if (q == std::string::npos) q = s.size();
        models.push_back("synthetic:" + s.substr(p, q - p));
        p = q + 1;
      }
    } else {
      std::fprintf(stderr, "usage: %s [--steps N] [--models tiny,gpt2-small]\n", argv[0]);
      return 2;
    }
  }
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
