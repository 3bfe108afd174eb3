// cuda-logits-dump: runs prompts through a backend (cuda or cpu) the way the server
// does (one ragged prefill of all prompts, then batched greedy decode steps) and writes
// every position's logits and the greedy tokens, for scripts/gpu-hf.py check to compare
// against PyTorch transformers on the same weights (GPT-2 and the Llama family).
// The CUDA backend streams the checkpoint to the device (no host copy of the model);
// the CPU backend loads it as host fp32. The context is capped at --max-model-len.
//
//   cuda-logits-dump MODEL PROMPTS OUT [--backend cuda|cpu] [--steps 64]
//                    [--dtype auto|bf16|fp16] [--max-model-len 512]
// PROMPTS: one prompt a line, token ids separated by spaces.
// OUT (little endian): int32 n_prompts, int32 V, int32 steps; per prompt: int32 L,
//   int32 gen[steps], float32 logits[L + steps - 1][V] (positions 0 .. L + steps - 2).
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "engine/backend.hpp"
#include "engine/cpu-backend.hpp"
#include "model/weights.hpp"
#include "gpu/cuda-backend.hpp"

using namespace infer;

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s MODEL PROMPTS OUT [--backend cuda|cpu] [--steps N]\n", argv[0]);
    return 2;
  }
  std::string model = argv[1], prompts_path = argv[2], out_path = argv[3], kind = "cuda";
  std::string dtype = "auto";
  int steps = 64, max_len = 512;
  for (int i = 4; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--backend")) kind = argv[i + 1];
    else if (!std::strcmp(argv[i], "--steps")) steps = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--dtype")) dtype = argv[i + 1];
    else if (!std::strcmp(argv[i], "--max-model-len")) max_len = std::atoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "unknown option %s\n", argv[i]);
      return 2;
    }
  }
  std::vector<std::vector<int32_t>> prompts;
  {
    std::ifstream in(prompts_path);
    std::string line;
    while (std::getline(in, line)) {
      std::istringstream ls(line);
      std::vector<int32_t> p;
      int32_t t;
      while (ls >> t) p.push_back(t);
      if (!p.empty()) prompts.push_back(std::move(p));
    }
  }
  if (prompts.empty()) {
    std::fprintf(stderr, "no prompts in %s\n", prompts_path.c_str());
    return 2;
  }
  load_options lo;
  lo.max_model_len = max_len;
  backend_options o;
  o.kind = kind;
  o.kv_block_size = 16;
  o.dtype = dtype;
  o.threads = int32_t(std::max(1u, std::thread::hardware_concurrency()));  // CPU: every core
  const int N = int(prompts.size());
  auto mcfg = load_model_config(model, max_len);
  if (!mcfg) {
    std::fprintf(stderr, "load %s: %s\n", model.c_str(), mcfg.error().message.c_str());
    return 1;
  }
  const int max_blocks = (mcfg.value().n_ctx + 15) / 16;
  o.kv_blocks = N * max_blocks;
  result<std::unique_ptr<backend>> be = make_status(errc::invalid_argument, "backend " + kind);
  if (kind == "cpu") {
    auto w = load_model_weights(model, lo);
    if (!w) {
      std::fprintf(stderr, "load %s: %s\n", model.c_str(), w.error().message.c_str());
      return 1;
    }
    be = make_cpu_backend(w.value(), o);
  } else {
    be = make_cuda_backend(model, lo, o);
  }
  if (!be) {
    std::fprintf(stderr, "backend: %s\n", be.error().message.c_str());
    return 1;
  }
  const model_config cfg = be.value()->config();
  const int V = cfg.n_vocab;
  std::vector<std::vector<int32_t>> blocks(N), gen(N);
  std::vector<std::vector<float>> logits(N);
  for (int s = 0; s < N; ++s)
    for (int i = 0; i < max_blocks; ++i) blocks[s].push_back(s * max_blocks + i);
  sampling_params greedy;
  step_batch b;
  step_output out;
  // Prefill: all prompts in one ragged step, every position's logits.
  b.reset(max_blocks);
  for (int s = 0; s < N; ++s) b.add(0, prompts[s], blocks[s], true, greedy, 0);
  if (auto st = be.value()->step(b, out, logits_mode::all); !st) {
    std::fprintf(stderr, "prefill: %s\n", st.message.c_str());
    return 1;
  }
  for (int s = 0; s < N; ++s) {
    const size_t r0 = size_t(b.seq_start[s]), r1 = size_t(b.seq_start[s + 1]);
    logits[s].assign(out.logits.begin() + r0 * V, out.logits.begin() + r1 * V);
    gen[s].push_back(out.tokens[s]);
  }
  for (int k = 1; k < steps; ++k) {
    b.reset(max_blocks);
    for (int s = 0; s < N; ++s) {
      const int32_t tok = gen[s].back();
      b.add(int32_t(prompts[s].size() + k - 1), std::span<const int32_t>(&tok, 1), blocks[s], true,
            greedy, uint64_t(k));
    }
    if (auto st = be.value()->step(b, out, logits_mode::last); !st) {
      std::fprintf(stderr, "decode %d: %s\n", k, st.message.c_str());
      return 1;
    }
    for (int s = 0; s < N; ++s) {
      logits[s].insert(logits[s].end(), out.logits.begin() + size_t(s) * V,
                       out.logits.begin() + size_t(s + 1) * V);
      gen[s].push_back(out.tokens[s]);
    }
  }
  std::FILE* f = std::fopen(out_path.c_str(), "wb");
  if (!f) {
    std::perror(out_path.c_str());
    return 1;
  }
  int32_t hdr[3] = {N, V, steps};
  std::fwrite(hdr, 4, 3, f);
  for (int s = 0; s < N; ++s) {
    const int32_t L = int32_t(prompts[s].size());
    std::fwrite(&L, 4, 1, f);
    std::fwrite(gen[s].data(), 4, gen[s].size(), f);
    std::fwrite(logits[s].data(), 4, logits[s].size(), f);
  }
  std::fclose(f);
  const char* dt = cuda_backend_dtype(*be.value());
  std::printf("%s: %d prompts, %d steps, backend %s (%s), %s\n", out_path.c_str(), N, steps,
              be.value()->name(), dt ? dt : "fp32", arch_name(cfg.arch));
  return 0;
}
