// What the CUDA test binaries share: the entry point that skips (exit 77, ctest's "skipped")
// where there is no device, and random GPT-2 weights for backends compared with the CPU.
#pragma once
#include <doctest/doctest.h>

#include <cstdio>
#include <memory>
#include <random>

#include "gpu/cuda-resources.hpp"
#include "model/weights.hpp"

namespace infer::test {

// main() of a CUDA test: runs doctest where a device is present, else says so and skips.
inline int cuda_test_main(const char* name, int argc, char** argv) {
  if (gpu::cuda_device_count() == 0) {
    std::printf("%s: no CUDA device, skipped\n", name);
    return 77;
  }
  doctest::Context ctx(argc, argv);
  return ctx.run();
}

// A GPT-2 model of config `c` with normally distributed weights (layer norms around 1),
// seeded: the same seed gives the same model. wte_scale: the embedding's spread (larger:
// peakier logits, which sampling tests want).
inline std::shared_ptr<const model_weights> random_gpt2_weights(model_config c, uint64_t seed,
                                                                 float wte_scale = 0.1f) {
  auto w = std::make_shared<model_weights>();
  std::mt19937_64 rng(seed);
  w->cfg = c;
  w->source = "test:random";
  const int C = c.n_embd;
  auto t = [&](size_t n, float scale, float offset = 0.f) {
    std::normal_distribution<float> d(0.f, 1.f);
    auto& v = w->owned.emplace_back(n);
    for (auto& x : v) x = offset + scale * d(rng);
    return v.data();
  };
  w->wte = t(size_t(c.n_vocab) * C, wte_scale);
  w->wpe = t(size_t(c.n_ctx) * C, 0.05f);
  for (int l = 0; l < c.n_layer; ++l) {
    layer_weights L;
    L.ln1_w = t(C, 0.1f, 1.f);
    L.ln1_b = t(C, 0.1f);
    L.qkv_w = t(size_t(C) * 3 * C, 0.1f);
    L.qkv_b = t(3 * C, 0.1f);
    L.proj_w = t(size_t(C) * C, 0.1f);
    L.proj_b = t(C, 0.1f);
    L.ln2_w = t(C, 0.1f, 1.f);
    L.ln2_b = t(C, 0.1f);
    L.fc_w = t(size_t(C) * 4 * C, 0.1f);
    L.fc_b = t(4 * C, 0.1f);
    L.fcproj_w = t(size_t(4) * C * C, 0.05f);
    L.fcproj_b = t(C, 0.1f);
    w->layers.push_back(L);
  }
  w->lnf_w = t(C, 0.1f, 1.f);
  w->lnf_b = t(C, 0.1f);
  return w;
}

}  // namespace infer::test
