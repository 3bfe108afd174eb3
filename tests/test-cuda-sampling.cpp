// The CUDA sampler's controls beyond the plain rule (issue 16) against the CPU rule run on
// the device's own logits: logit adjustments (penalties, logit_bias, min_tokens bans) and
// min_p choose what cpu::apply_logit_adjust + cpu::sample_token choose, greedy rows with
// adjustments included, in eager steps and in graph-captured decode steps; logprobs are the
// log-softmax of the raw logits (before adjustments and temperature), sorted, with the
// sampled token's. Exits 77 (skipped) without a CUDA device.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>

#include "engine/cpu-backend.hpp"
#include "cuda-test-util.hpp"
#include "gpu/cuda-backend.hpp"
#include "kernels/cpu-kernels.hpp"

using namespace infer;

namespace {

std::shared_ptr<const model_weights> random_weights(model_config c, uint64_t seed) {
  return test::random_gpt2_weights(c, seed, 0.3f);
}

model_config small_config() {
  model_config c;
  c.n_vocab = 777;
  c.n_ctx = 256;
  c.n_embd = 128;
  c.n_layer = 2;
  c.n_head = 2;
  return c;
}

struct seq {
  std::vector<int32_t> tokens;
  int past = 0;
  std::vector<int32_t> blocks;
  sampling_params sp;
  std::vector<logit_adjust> adj;
};

// One sequence's adjustments as the scheduler lists them: every distinct token seen, with
// its count among the generated ones, plus the biases.
std::vector<logit_adjust> adjustments(const seq& s, int n_prompt, const std::vector<std::pair<int32_t, float>>& bias) {
  std::vector<logit_adjust> a;
  auto at = [&](int32_t t) -> logit_adjust& {
    for (auto& e : a)
      if (e.token == t) return e;
    a.push_back({t, 0, 0.0f, 0});
    return a.back();
  };
  if (s.sp.penalized())
    for (size_t i = 0; i < s.tokens.size(); ++i) {
      auto& e = at(s.tokens[i]);
      e.seen = 1;
      if (int(i) >= n_prompt) ++e.count;
    }
  for (auto [t, b] : bias) at(t).bias += b;
  return a;
}

}  // namespace

TEST_CASE("cuda sampler: adjustments, min_p and logprobs follow the cpu rule on the device's logits") {
  auto w = random_weights(small_config(), 21);
  const int V = w->cfg.n_vocab;
  backend_options o;
  o.kv_blocks = 512;  // 24 sequences x 16 blocks
  o.kv_block_size = 16;
  auto gpu = make_cuda_backend(w, o);
  REQUIRE(gpu);
  std::mt19937 rng(3);
  const int N = 24, n_prompt = 9, max_blocks = 16;
  std::vector<seq> seqs(N);
  for (int i = 0; i < N; ++i) {
    auto& s = seqs[size_t(i)];
    for (int k = 0; k < n_prompt; ++k) s.tokens.push_back(int32_t(rng() % 40));  // repeats: penalties bite
    for (int k = 0; k < max_blocks; ++k) s.blocks.push_back(i * max_blocks + k);
    s.sp.seed = 1000 + uint64_t(i);
    switch (i % 6) {
      case 0: break;                                                        // greedy, biased below
      case 1: s.sp.temperature = 1.0f; s.sp.repetition_penalty = 1.7f; break;
      case 2: s.sp.temperature = 0.8f; s.sp.frequency_penalty = 1.5f; s.sp.presence_penalty = 0.5f; break;
      case 3: s.sp.temperature = 1.2f; s.sp.min_p = 0.2f; break;
      case 4: s.sp.repetition_penalty = 1.3f; s.sp.presence_penalty = -1.0f; break;  // greedy, penalized
      case 5: s.sp.temperature = 1.0f; s.sp.top_k = 50; s.sp.min_p = 0.05f; s.sp.frequency_penalty = -0.5f; break;
    }
    s.sp.logprobs = i % 4 == 0 ? -1 : (i % 3) * 7;  // -1, 0, 7, 14
  }
  std::vector<float> row(static_cast<size_t>(V)), scratch(static_cast<size_t>(2 * V));
  int agree = 0, compared = 0, forced = 0;
  for (int step = 0; step < 10; ++step) {  // step 0: prefill (eager); then decodes (graphs)
    step_batch b;
    b.reset(max_blocks);
    for (int i = 0; i < N; ++i) {
      auto& s = seqs[size_t(i)];
      std::vector<std::pair<int32_t, float>> bias;
      if (i % 6 == 0) bias = {{int32_t((7 * i + step) % V), i % 12 == 0 ? 100.0f : -100.0f}};
      if (i % 6 == 3) bias = {{5, 2.5f}, {6, -3.0f}};
      s.adj = adjustments(s, n_prompt, bias);
      std::span<const int32_t> nt(s.tokens.data() + s.past, s.tokens.size() - size_t(s.past));
      b.add(s.past, nt, s.blocks, true, s.sp, uint64_t(s.tokens.size() - n_prompt), s.adj);
    }
    step_output out;
    const status st = gpu.value()->step(b, out, logits_mode::last);
    INFO(st.message);
    REQUIRE(st);
    REQUIRE(out.logits.size() == size_t(N) * V);
    REQUIRE(out.logprob.size() == size_t(N));
    for (int i = 0; i < N; ++i) {
      auto& s = seqs[size_t(i)];
      const float* raw = out.logits.data() + size_t(i) * V;
      std::copy(raw, raw + V, row.begin());
      cpu::apply_logit_adjust(row.data(), s.adj, s.sp);
      const int32_t want = cpu::sample_token(row.data(), V, s.sp, uint64_t(s.tokens.size() - n_prompt), scratch.data());
      const int32_t got = out.tokens[size_t(i)];
      REQUIRE(got >= 0);
      REQUIRE(got < V);
      if (s.sp.greedy()) {
        CHECK(got == want);  // an arg-max of the same floats: no rounding to disagree on
      } else {
        ++compared;
        agree += got == want;
      }
      if (i % 12 == 0) {
        CHECK(got == (7 * i + step) % V);  // +100 forces
        ++forced;
      } else if (i % 6 == 0) {
        CHECK(got != (7 * i + step) % V);  // -100 bans
      }
      if (s.sp.logprobs >= 0) {
        float maxl = -INFINITY;
        for (int v = 0; v < V; ++v) maxl = std::max(maxl, raw[v]);
        double z = 0;
        for (int v = 0; v < V; ++v) z += std::exp(double(raw[v]) - maxl);
        const double lse = maxl + std::log(z);
        CHECK(std::abs(out.logprob[size_t(i)] - (raw[got] - lse)) < 1e-4);
        std::vector<int> order(static_cast<size_t>(V));
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int a, int c) { return raw[a] > raw[c]; });
        for (int j = 0; j < s.sp.logprobs; ++j) {
          const size_t k = size_t(i) * sampling_params::max_logprobs + size_t(j);
          CHECK(out.top_ids[k] == order[size_t(j)]);
          CHECK(std::abs(out.top_logprobs[k] - (raw[order[size_t(j)]] - lse)) < 1e-4);
          if (j > 0) CHECK(out.top_logprobs[k] <= out.top_logprobs[k - 1]);
          if (out.top_ids[k] == got) CHECK(out.top_logprobs[k] == doctest::Approx(out.logprob[size_t(i)]).epsilon(1e-6));
        }
      }
      s.past = int(s.tokens.size());
      s.tokens.push_back(got);
    }
  }
  CHECK(forced == 20);
  // Sampled rows: the same draw unless a cumulative sum lands within rounding of u.
  CHECK(agree >= compared * 95 / 100);
  MESSAGE("sampled rows agreeing with the cpu rule: " << agree << " / " << compared);
}

TEST_CASE("cuda sampler: logprobs of the device agree with the cpu backend's") {
  auto w = random_weights(small_config(), 22);
  const int V = w->cfg.n_vocab;
  backend_options o;
  o.kv_blocks = 64;
  auto gpu = make_cuda_backend(w, o);
  auto cpu = make_cpu_backend(w, o);
  REQUIRE(gpu);
  REQUIRE(cpu);
  std::vector<int32_t> prompt{3, 14, 15, 92, 65, 35, 89, 79}, blocks{0, 1};
  sampling_params sp;
  sp.logprobs = 20;
  step_batch b;
  b.reset(4);
  b.add(0, prompt, blocks, true, sp, 0);
  step_output og, oc;
  REQUIRE(gpu.value()->step(b, og));
  REQUIRE(cpu.value()->step(b, oc));
  REQUIRE(og.top_logprobs.size() == size_t(sampling_params::max_logprobs));
  REQUIRE(oc.top_logprobs.size() == size_t(sampling_params::max_logprobs));
  // fp16 logits vs fp32: 2e-2 as for bf16/fp16 logits elsewhere.
  for (int j = 0; j < 20; ++j) CHECK(std::abs(og.top_logprobs[size_t(j)] - oc.top_logprobs[size_t(j)]) < 2e-2);
  CHECK(og.top_ids[0] == oc.top_ids[0]);
  CHECK(std::abs(og.logprob[0] - oc.logprob[0]) < 2e-2);
  (void)V;
}

int main(int argc, char** argv) { return infer::test::cuda_test_main("test-cuda-sampling", argc, argv); }
