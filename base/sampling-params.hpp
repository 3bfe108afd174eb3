// sampling_params: how one sequence picks its next token.
#pragma once
#include <cmath>
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
  float min_p = 0.0f;        // 0: off; keeps ids whose probability is >= min_p * the top one's
  // OpenAI: logit -= frequency * count + presence * (count > 0), count over generated tokens.
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  // HF/vLLM: a logit of a token seen in prompt or output is divided by it (> 0) or multiplied (<= 0).
  float repetition_penalty = 1.0f;
  int32_t min_tokens = 0;    // the stop ids are banned until this many tokens are generated
  int32_t logprobs = -1;     // -1: none; k in 0..max_logprobs: the sampled token's and the top k

  static constexpr int32_t max_logprobs = 20;

  // `!(t >= ...)` also takes a NaN temperature as greedy: no NaN reaches a softmax.
  INFER_HOST_DEVICE bool greedy() const { return !(temperature >= greedy_below) || top_k == 1; }
  INFER_HOST_DEVICE bool penalized() const {
    return presence_penalty != 0.0f || frequency_penalty != 0.0f || repetition_penalty != 1.0f;
  }
};

// One sparse change to one sequence's logits before it samples: the scheduler lists, per
// sequence and step, each distinct token that is seen (prompt or output), counted (output)
// or biased (logit_bias, or -inf while min_tokens bans the stop ids). A token appears at
// most once per sequence, so a device thread per entry needs no atomics.
struct logit_adjust {
  int32_t token = 0;
  int32_t count = 0;  // occurrences among the generated tokens
  float bias = 0.0f;
  int32_t seen = 0;   // flags: adjust_seen, adjust_stop
};
// In prompt or output: repetition_penalty applies.
constexpr int32_t adjust_seen = 1;
// A stop id: banned while fewer than min_tokens tokens are generated. The host list carries
// the ban as a -inf bias in each step's copy; a list held on the device (the CUDA backend's
// per-sequence slots) is the same every step, so the device bans on this flag and the
// sequence's generated-token count (adjusted_logit_at).
constexpr int32_t adjust_stop = 2;

// Penalties first (repetition, then frequency/presence, as vLLM), then the additive bias.
INFER_HOST_DEVICE inline float adjusted_logit(float l, const logit_adjust& a, const sampling_params& p) {
  if ((a.seen & adjust_seen) && p.repetition_penalty != 1.0f)
    l = l > 0.0f ? l / p.repetition_penalty : l * p.repetition_penalty;
  if (a.count > 0) l -= p.frequency_penalty * float(a.count) + p.presence_penalty;
  return l + a.bias;
}
// The same, with the min_tokens ban of a stop id applied from `generated` (the sequence's
// generated tokens so far, the step's sample counter).
INFER_HOST_DEVICE inline float adjusted_logit_at(float l, const logit_adjust& a, const sampling_params& p,
                                                 uint64_t generated) {
  if ((a.seen & adjust_stop) && generated < uint64_t(p.min_tokens > 0 ? p.min_tokens : 0)) return -INFINITY;
  return adjusted_logit(l, a, p);
}

// Counter-based randomness: the draw for a sequence's n-th generated token depends
// only on (seed, n), never on batching, so the same seed gives the same output
// on any backend and in any batch.
INFER_HOST_DEVICE inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
// The seed of choice `fork` of an n > 1 request: choice 0 keeps the request's seed (n = 1
// is unchanged), the others draw streams of their own, reproducible for a given seed.
INFER_HOST_DEVICE inline uint64_t fork_seed(uint64_t seed, int32_t fork) {
  return fork == 0 ? seed : splitmix64(seed ^ splitmix64(0xF0F0'5EED'0000'0000ull + uint64_t(uint32_t(fork))));
}
// Uniform in [0, 1), 24 bits: exactly representable as float on host and device.
INFER_HOST_DEVICE inline float sampling_uniform(uint64_t seed, uint64_t counter) {
  uint64_t r = splitmix64(seed ^ splitmix64(counter + 0x632BE59BD9B4E019ull));
  return float(r >> 40) * (1.0f / 16777216.0f);
}

}  // namespace infer
