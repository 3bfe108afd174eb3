// sampling_params: how one sequence picks its next token.
#pragma once
#include <cstdint>

// Host and device share the sampling rule's randomness: the CUDA sampler calls the
// same functions, so a seed draws the same u on either backend.
#if defined(__CUDACC__)
#define INFER_HOST_DEVICE __host__ __device__
#else
#define INFER_HOST_DEVICE
#endif

namespace infer {

struct sampling_params {
  // Below this a temperature samples exactly as greedy. 1/T overflows float for tiny T (1e-40
  // gives inf, and 0 * inf = NaN in the softmax: the sampler then returned the lowest-ranked
  // id), and long before that only the top logit keeps any mass anyway.
  static constexpr float greedy_below = 1e-5f;

  float temperature = 0.0f;  // 0 (anything < greedy_below): greedy
  int32_t top_k = 0;         // 0: off
  float top_p = 1.0f;        // 1: off
  uint64_t seed = 0;

  // `!(t >= ...)` also takes a NaN temperature as greedy: no NaN reaches a softmax.
  INFER_HOST_DEVICE bool greedy() const { return !(temperature >= greedy_below) || top_k == 1; }
};

// Counter-based randomness: the draw for a sequence's n-th generated token depends
// only on (seed, n), never on batching, so the same seed gives the same output
// on any backend and in any batch.
INFER_HOST_DEVICE inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
// Uniform in [0, 1), 24 bits: exactly representable as float on host and device.
INFER_HOST_DEVICE inline float sampling_uniform(uint64_t seed, uint64_t counter) {
  uint64_t r = splitmix64(seed ^ splitmix64(counter + 0x632BE59BD9B4E019ull));
  return float(r >> 40) * (1.0f / 16777216.0f);
}

}  // namespace infer
