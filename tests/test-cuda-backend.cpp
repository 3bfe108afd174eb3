// The CUDA backend against the CPU backend (the fp32 reference) on the same random
// weights: prefill of ragged batches, decode steps with and without CUDA graphs, logits
// (fp16 vs fp32: relative error under 1e-2; bf16 under 3e-2) and greedy tokens, for GPT-2
// and for a tiny config of every Llama-family architecture (GQA, tied and untied heads,
// QKV bias, q/k norm, post-norms, partial interleaved rotary, a sliding window shorter
// than the prompts, llama3 rope scaling); errors as values; weights shared between
// backends of one device; prefix caching through the scheduler (same greedy tokens with
// and without it, at the GPT-2 and Llama-3.2-1B shapes); the KV pool sized from
// gpu_memory_utilization. Exits 77 (skipped) without a CUDA device.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <numeric>
#include <random>

#include <cuda_runtime_api.h>
#include <nlohmann/json.hpp>

#include "engine/cpu-backend.hpp"
#include "cuda-test-util.hpp"
#include "engine/scheduler.hpp"
#include "gpu/cuda-backend.hpp"
#include "gpu/cuda-device-weights.hpp"
#include "model/hf-config.hpp"

using namespace infer;

namespace {

std::shared_ptr<const model_weights> random_weights(model_config c, uint64_t seed) {
  return test::random_gpt2_weights(c, seed, 0.1f);
}

model_config small_config(int C, int NH) {
  model_config c;
  c.n_vocab = 777;
  c.n_ctx = 320;
  c.n_embd = C;
  c.n_layer = 3;
  c.n_head = NH;
  return c;
}

double rel_err(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// A set of sequences driven through any backend with the same block tables.
struct driver {
  int block_size, max_blocks;
  std::vector<std::vector<int32_t>> seqs;  // all tokens so far
  std::vector<int> past;                   // tokens already in the cache
  std::vector<std::vector<int32_t>> blocks;
  step_batch batch;

  driver(int bs, int n_ctx, const std::vector<std::vector<int32_t>>& prompts, int first_block)
      : block_size(bs), max_blocks((n_ctx + bs - 1) / bs), seqs(prompts), past(prompts.size(), 0) {
    int next = first_block;
    for (size_t s = 0; s < prompts.size(); ++s) {
      blocks.emplace_back();
      for (int i = 0; i < max_blocks; ++i) blocks.back().push_back(next++);
    }
  }
  // Each sequence's tokens not yet cached.
  void build(const std::vector<sampling_params>& sp) {
    batch.reset(max_blocks);
    for (size_t s = 0; s < seqs.size(); ++s) {
      std::span<const int32_t> nt(seqs[s].data() + past[s], seqs[s].size() - past[s]);
      batch.add(past[s], nt, blocks[s], true, sp[s], uint64_t(seqs[s].size()));
    }
  }
  void advance() {
    for (size_t s = 0; s < seqs.size(); ++s) past[s] = int(seqs[s].size());
  }
};

std::vector<std::vector<int32_t>> random_prompts(int n, int V, std::mt19937& rng,
                                                 std::vector<int> lens) {
  std::vector<std::vector<int32_t>> p(n);
  for (int i = 0; i < n; ++i) {
    p[i].resize(lens[i % lens.size()]);
    for (auto& t : p[i]) t = int32_t(rng() % V);
  }
  return p;
}

// Greedy tokens must agree wherever the reference's best two logits are further apart
// than the largest logit difference seen in that row (elsewhere fp16 may swap them).
void check_tokens(const std::vector<float>& ref_logits, const std::vector<float>& got_logits,
                  const std::vector<int32_t>& ref_tok, const std::vector<int32_t>& got_tok, int V,
                  int& compared) {
  for (size_t s = 0; s < ref_tok.size(); ++s) {
    const float* r = ref_logits.data() + s * V;
    const float* g = got_logits.data() + s * V;
    float best = -INFINITY, second = -INFINITY, maxdiff = 0;
    for (int i = 0; i < V; ++i) {
      if (r[i] > best) {
        second = best;
        best = r[i];
      } else if (r[i] > second) {
        second = r[i];
      }
      maxdiff = std::max(maxdiff, std::fabs(r[i] - g[i]));
    }
    if (best - second > 2 * maxdiff) {
      ++compared;
      CHECK(ref_tok[s] == got_tok[s]);
    }
  }
}

}  // namespace

TEST_CASE("cuda backend matches the cpu backend: prefill, decode with and without graphs") {
  for (auto [C, NH] : {std::pair{128, 2}, std::pair{128, 4}}) {
    CAPTURE(C);
    CAPTURE(NH);
    auto w = random_weights(small_config(C, NH), 7 + C + NH);
    const int V = w->cfg.n_vocab;
    backend_options o;
    o.kv_block_size = 16;
    o.kv_blocks = 256;
    auto cpu = make_cpu_backend(w, o);
    REQUIRE(cpu);
    auto gpu = make_cuda_backend(w, o);
    REQUIRE_MESSAGE(gpu, (gpu ? "" : gpu.error().message));
    auto gpu_nograph = make_cuda_backend(w, o);
    REQUIRE(gpu_nograph);
    cuda_backend_set_graphs(*gpu_nograph.value(), false);

    std::mt19937 rng(99);
    auto prompts = random_prompts(5, V, rng, {1, 7, 16, 33, 70});
    driver dc(16, w->cfg.n_ctx, prompts, 3);
    std::vector<sampling_params> greedy(prompts.size());
    int compared = 0;
    step_output oc, og, on;

    // Prefill, every position's logits.
    dc.build(greedy);
    REQUIRE(cpu.value()->step(dc.batch, oc, logits_mode::all));
    REQUIRE(gpu.value()->step(dc.batch, og, logits_mode::all));
    REQUIRE(gpu_nograph.value()->step(dc.batch, on, logits_mode::all));
    REQUIRE(og.logits.size() == oc.logits.size());
    CHECK(rel_err(og.logits.data(), oc.logits.data(), oc.logits.size()) < 1e-2);
    CHECK(rel_err(on.logits.data(), oc.logits.data(), oc.logits.size()) < 1e-2);
    // Decode: teacher-forced with the CPU's tokens so all three see the same inputs.
    for (int step = 0; step < 40; ++step) {
      if (step > 0) {
        dc.build(greedy);
        REQUIRE(cpu.value()->step(dc.batch, oc, logits_mode::last));
        REQUIRE(gpu.value()->step(dc.batch, og, logits_mode::last));
        REQUIRE(gpu_nograph.value()->step(dc.batch, on, logits_mode::last));
        REQUIRE(og.logits.size() == oc.logits.size());
        for (size_t s = 0; s < prompts.size(); ++s) {
          CHECK(rel_err(og.logits.data() + s * V, oc.logits.data() + s * V, V) < 1e-2);
          CHECK(rel_err(on.logits.data() + s * V, oc.logits.data() + s * V, V) < 1e-2);
        }
        check_tokens(oc.logits, og.logits, oc.tokens, og.tokens, V, compared);
        check_tokens(oc.logits, on.logits, oc.tokens, on.tokens, V, compared);
      }
      dc.advance();
      for (size_t s = 0; s < prompts.size(); ++s) dc.seqs[s].push_back(oc.tokens[s]);
    }
    CHECK(compared > 100);  // the check above must have had something to check
    const auto* st = cuda_backend_get_stats(*gpu.value());
    REQUIRE(st);
    CHECK(st->graph_steps >= 39);
    CHECK(st->graphs_captured >= 1);
    CHECK(cuda_backend_get_stats(*gpu_nograph.value())->graph_steps == 0);
  }
}

TEST_CASE("cuda backend: logits_mode none returns tokens only, non-sampling sequences get -1") {
  auto w = random_weights(small_config(128, 2), 3);
  backend_options o;
  o.kv_blocks = 64;
  auto gpu = make_cuda_backend(w, o);
  REQUIRE(gpu);
  auto cpu = make_cpu_backend(w, o);
  REQUIRE(cpu);
  step_batch b;
  b.reset(4);
  std::vector<int32_t> t1 = {1, 2, 3}, t2 = {4, 5};
  std::vector<int32_t> b1 = {0, 1}, b2 = {2, 3};
  b.add(0, t1, b1, true, {}, 3);
  b.add(0, t2, b2, false, {}, 2);
  step_output og, oc;
  REQUIRE(gpu.value()->step(b, og, logits_mode::none));
  REQUIRE(cpu.value()->step(b, oc, logits_mode::none));
  CHECK(og.logits.empty());
  REQUIRE(og.tokens.size() == 2);
  CHECK(og.tokens[1] == -1);
  CHECK(og.tokens[0] >= 0);
  CHECK(og.tokens[0] < w->cfg.n_vocab);
}

TEST_CASE("cuda backend: sampling is reproducible and follows the seed") {
  auto w = random_weights(small_config(128, 2), 5);
  backend_options o;
  o.kv_blocks = 128;
  auto gpu = make_cuda_backend(w, o);
  REQUIRE(gpu);
  std::mt19937 rng(1);
  auto prompts = random_prompts(6, w->cfg.n_vocab, rng, {4, 9});
  auto run = [&](uint64_t seed) {
    driver d(16, w->cfg.n_ctx, prompts, 0);
    std::vector<sampling_params> sp(prompts.size());
    for (size_t s = 0; s < sp.size(); ++s) {
      sp[s].temperature = 1.0f;
      sp[s].top_k = s % 2 ? 20 : 0;
      sp[s].top_p = s % 3 ? 0.9f : 1.0f;
      sp[s].seed = seed + s;
    }
    step_output out;
    for (int step = 0; step < 12; ++step) {
      d.build(sp);
      REQUIRE(gpu.value()->step(d.batch, out, logits_mode::none));
      d.advance();
      for (size_t s = 0; s < prompts.size(); ++s) {
        REQUIRE(out.tokens[s] >= 0);
        REQUIRE(out.tokens[s] < w->cfg.n_vocab);
        d.seqs[s].push_back(out.tokens[s]);
      }
    }
    return d.seqs;
  };
  auto a = run(100), b = run(100), c = run(200);
  CHECK(a == b);
  CHECK(a != c);
}

TEST_CASE("cuda backend: misuse is invalid_argument, not a crash") {
  auto w = random_weights(small_config(128, 2), 11);
  backend_options o;
  o.kv_blocks = 8;
  auto gpu = make_cuda_backend(w, o);
  REQUIRE(gpu);
  CHECK(gpu.value()->kv().n_blocks == 8);
  step_output out;
  step_batch b;
  b.reset(2);
  std::vector<int32_t> toks = {1, 2};
  std::vector<int32_t> bad_block = {9};
  b.add(0, toks, bad_block, true, {}, 0);
  auto s = gpu.value()->step(b, out);
  CHECK(s.code == errc::invalid_argument);
  b.reset(2);
  std::vector<int32_t> bad_tok = {int32_t(w->cfg.n_vocab)};
  std::vector<int32_t> ok_block = {1};
  b.add(0, bad_tok, ok_block, true, {}, 0);
  CHECK(gpu.value()->step(b, out).code == errc::invalid_argument);
  b.reset(2);
  b.add(w->cfg.n_ctx, toks, ok_block, true, {}, 0);
  CHECK(gpu.value()->step(b, out).code == errc::invalid_argument);
  // Still usable after refusing.
  b.reset(2);
  b.add(0, toks, ok_block, true, {}, 0);
  CHECK(gpu.value()->step(b, out));
}

TEST_CASE("cuda backend: backends of one device share the weights, each has its own cache") {
  auto w = random_weights(small_config(128, 2), 13);
  auto d1 = gpu::acquire_cuda_device_weights(w, 0, cuda::dtype::f16);
  auto d2 = gpu::acquire_cuda_device_weights(w, 0, cuda::dtype::f16);
  REQUIRE(d1);
  REQUIRE(d2);
  CHECK(d1.value().get() == d2.value().get());
  auto w2 = random_weights(small_config(128, 2), 13);
  auto d3 = gpu::acquire_cuda_device_weights(w2, 0, cuda::dtype::f16);
  REQUIRE(d3);
  CHECK(d3.value().get() != d1.value().get());

  backend_options o;
  o.kv_blocks = 32;
  auto a = make_cuda_backend(w, o), b = make_cuda_backend(w, o);
  REQUIRE(a);
  REQUIRE(b);
  // The same blocks in both: each backend has its own cache, so they do not interfere.
  step_batch batch;
  batch.reset(4);
  std::vector<int32_t> toks = {5, 6, 7, 8}, blocks = {0};
  batch.add(0, toks, blocks, true, {}, 4);
  step_output oa, ob;
  REQUIRE(a.value()->step(batch, oa, logits_mode::last));
  std::vector<int32_t> other = {9, 9, 9, 9};
  step_batch batch2;
  batch2.reset(4);
  batch2.add(0, other, blocks, true, {}, 4);
  REQUIRE(b.value()->step(batch2, ob, logits_mode::last));
  // Decode one more token on a: must not see b's tokens.
  step_batch d;
  d.reset(4);
  std::vector<int32_t> next = {oa.tokens[0]};
  d.add(4, next, blocks, true, {}, 5);
  step_output oa2, ref;
  REQUIRE(a.value()->step(d, oa2, logits_mode::last));
  auto c = make_cpu_backend(w, o);
  REQUIRE(c);
  REQUIRE(c.value()->step(batch, ref, logits_mode::last));
  REQUIRE(c.value()->step(d, ref, logits_mode::last));
  CHECK(rel_err(oa2.logits.data(), ref.logits.data(), ref.logits.size()) < 1e-2);
}

namespace {

// Tiny configs as config.json would give them, one per architecture and trait.
struct arch_case {
  const char* name;
  const char* json;
};
const arch_case k_arch_cases[] = {
    {"llama-gqa-untied-llama3",
     R"({"architectures":["LlamaForCausalLM"],"model_type":"llama","vocab_size":300,
         "hidden_size":256,"intermediate_size":512,"num_hidden_layers":2,
         "num_attention_heads":4,"num_key_value_heads":2,"max_position_embeddings":320,
         "rms_norm_eps":1e-5,"rope_theta":500000.0,"tie_word_embeddings":false,
         "rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,
                         "high_freq_factor":4.0,"original_max_position_embeddings":64},
         "torch_dtype":"bfloat16"})"},
    {"llama-tied-head128",
     R"({"architectures":["LlamaForCausalLM"],"model_type":"llama","vocab_size":300,
         "hidden_size":256,"intermediate_size":384,"num_hidden_layers":2,
         "num_attention_heads":2,"num_key_value_heads":1,"max_position_embeddings":320,
         "rms_norm_eps":1e-5,"tie_word_embeddings":true,"torch_dtype":"bfloat16"})"},
    {"mistral-window",
     R"({"architectures":["MistralForCausalLM"],"model_type":"mistral","vocab_size":300,
         "hidden_size":256,"intermediate_size":512,"num_hidden_layers":2,
         "num_attention_heads":4,"num_key_value_heads":1,"max_position_embeddings":320,
         "rms_norm_eps":1e-5,"sliding_window":24,"tie_word_embeddings":false,
         "torch_dtype":"bfloat16"})"},
    {"qwen2-bias",
     R"({"architectures":["Qwen2ForCausalLM"],"model_type":"qwen2","vocab_size":300,
         "hidden_size":256,"intermediate_size":512,"num_hidden_layers":2,
         "num_attention_heads":4,"num_key_value_heads":2,"max_position_embeddings":320,
         "rms_norm_eps":1e-6,"rope_theta":1000000.0,"tie_word_embeddings":true,
         "torch_dtype":"bfloat16"})"},
    {"qwen3-qknorm",
     R"({"architectures":["Qwen3ForCausalLM"],"model_type":"qwen3","vocab_size":300,
         "hidden_size":256,"intermediate_size":512,"num_hidden_layers":2,
         "num_attention_heads":4,"num_key_value_heads":2,"head_dim":128,
         "max_position_embeddings":320,"rms_norm_eps":1e-6,"rope_theta":1000000.0,
         "attention_bias":false,"tie_word_embeddings":true,"torch_dtype":"bfloat16"})"},
    {"glm4-postnorm-partial",
     R"({"architectures":["Glm4ForCausalLM"],"model_type":"glm4","vocab_size":300,
         "hidden_size":256,"intermediate_size":512,"num_hidden_layers":2,
         "num_attention_heads":4,"num_key_value_heads":2,"head_dim":64,
         "partial_rotary_factor":0.5,"max_position_embeddings":320,"rms_norm_eps":1e-5,
         "attention_bias":true,"tie_word_embeddings":false,"torch_dtype":"bfloat16"})"},
};

// Synthetic init (N(0, 0.02)) leaves attention nearly uniform; larger matrices make
// every path matter to the logits.
void widen(model_weights& w) {
  auto scale = [](const float* p, size_t n, float f) {
    auto* q = const_cast<float*>(p);
    for (size_t i = 0; i < n; ++i) q[i] *= f;
  };
  auto numel = [&](tensor_role r) {
    size_t n = 1;
    for (int64_t d : role_shape(w.cfg, r)) n *= size_t(d);
    return role_shape(w.cfg, r).empty() ? size_t(0) : n;
  };
  for (tensor_role r : {tensor_role::tok_embd, tensor_role::lm_head})
    if (const float* p = w.get(r)) scale(p, numel(r), 25.f);
  for (int l = 0; l < w.cfg.n_layer; ++l)
    for (tensor_role r : {tensor_role::qkv_w, tensor_role::attn_out_w, tensor_role::ffn_up_w,
                          tensor_role::ffn_down_w, tensor_role::qkv_b})
      if (const float* p = w.get(r, l)) scale(p, numel(r), 4.f);
}

}  // namespace

TEST_CASE("cuda backend matches the cpu backend on every Llama-family architecture") {
  for (const auto& ac : k_arch_cases) {
    auto cfg = parse_hf_config(nlohmann::json::parse(ac.json), ac.name);
    REQUIRE_MESSAGE(cfg, (cfg ? "" : cfg.error().message));
    auto wm = make_synthetic_weights(cfg.value(), 77, std::string("test:") + ac.name);
    REQUIRE(wm);
    widen(*wm);
    std::shared_ptr<const model_weights> w = wm;
    const int V = w->cfg.n_vocab;
    for (const char* dt : {"bf16", "fp16"}) {
      CAPTURE(ac.name);
      CAPTURE(dt);
      const double tol = std::string(dt) == "bf16" ? 3e-2 : 1e-2;
      backend_options o;
      o.kv_block_size = 16;
      o.kv_blocks = 256;
      o.dtype = dt;
      auto cpu = make_cpu_backend(w, o);
      REQUIRE_MESSAGE(cpu, (cpu ? "" : cpu.error().message));
      auto gpu = make_cuda_backend(w, o);
      REQUIRE_MESSAGE(gpu, (gpu ? "" : gpu.error().message));
      CHECK(std::string(cuda_backend_dtype(*gpu.value())) == dt);
      auto gpu_nograph = make_cuda_backend(w, o);
      REQUIRE(gpu_nograph);
      cuda_backend_set_graphs(*gpu_nograph.value(), false);

      std::mt19937 rng(5);
      auto prompts = random_prompts(5, V, rng, {1, 7, 16, 33, 70});
      driver dc(16, w->cfg.n_ctx, prompts, 3);
      std::vector<sampling_params> greedy(prompts.size());
      step_output oc, og, on;
      dc.build(greedy);
      REQUIRE(cpu.value()->step(dc.batch, oc, logits_mode::all));
      REQUIRE(gpu.value()->step(dc.batch, og, logits_mode::all));
      REQUIRE(gpu_nograph.value()->step(dc.batch, on, logits_mode::all));
      REQUIRE(og.logits.size() == oc.logits.size());
      const double e0 = rel_err(og.logits.data(), oc.logits.data(), oc.logits.size());
      MESSAGE((std::string(ac.name) + " " + dt + " prefill rel err " + std::to_string(e0)));
      CHECK(e0 < tol);
      CHECK(rel_err(on.logits.data(), oc.logits.data(), oc.logits.size()) < tol);
      int compared = 0;
      double worst = 0;
      for (int step = 0; step < 24; ++step) {
        if (step > 0) {
          dc.build(greedy);
          REQUIRE(cpu.value()->step(dc.batch, oc, logits_mode::last));
          REQUIRE(gpu.value()->step(dc.batch, og, logits_mode::last));
          REQUIRE(gpu_nograph.value()->step(dc.batch, on, logits_mode::last));
          for (size_t s = 0; s < prompts.size(); ++s) {
            const double e = rel_err(og.logits.data() + s * V, oc.logits.data() + s * V, V);
            worst = std::max(worst, e);
            CHECK(e < tol);
            CHECK(rel_err(on.logits.data() + s * V, oc.logits.data() + s * V, V) < tol);
          }
          check_tokens(oc.logits, og.logits, oc.tokens, og.tokens, V, compared);
          check_tokens(oc.logits, on.logits, oc.tokens, on.tokens, V, compared);
        }
        dc.advance();
        for (size_t s = 0; s < prompts.size(); ++s) dc.seqs[s].push_back(oc.tokens[s]);
      }
      MESSAGE((std::string(ac.name) + " " + dt + " decode rel err max " + std::to_string(worst) +
               ", tokens compared " + std::to_string(compared)));
      CHECK(compared > 40);
      CHECK(cuda_backend_get_stats(*gpu.value())->graph_steps >= 23);
    }
  }
}

TEST_CASE("cuda backend: dtype choice and refusals") {
  auto cfg = parse_hf_config(nlohmann::json::parse(k_arch_cases[0].json), "t");
  REQUIRE(cfg);
  CHECK(gpu::resolve_device_dtype(cfg.value(), "auto").value() == cuda::dtype::bf16);
  model_config half_ckpt = cfg.value();
  half_ckpt.torch_dtype = "float16";
  CHECK(gpu::resolve_device_dtype(half_ckpt, "auto").value() == cuda::dtype::f16);
  CHECK(gpu::resolve_device_dtype(half_ckpt, "bf16").value() == cuda::dtype::bf16);
  CHECK(gpu::resolve_device_dtype(cfg.value(), "fp8").error().code == errc::invalid_argument);
  model_config g2;  // GPT-2 stays fp16
  CHECK(gpu::resolve_device_dtype(g2, "auto").value() == cuda::dtype::f16);
  CHECK(gpu::resolve_device_dtype(g2, "bf16").error().code == errc::invalid_argument);
  // A head size the attention kernel lacks is refused at creation, naming it.
  model_config odd = cfg.value();
  odd.n_head_dim = 80;
  auto w = make_synthetic_weights(odd, 1, "test:odd");
  auto be = make_cuda_backend(std::shared_ptr<const model_weights>(w), backend_options{});
  REQUIRE_FALSE(be);
  CHECK(be.error().message.find("head_dim 80") != std::string::npos);
}

TEST_CASE("cuda backend: streamed synthetic weights equal uploaded host weights") {
  load_options lo;
  lo.seed = 9;
  lo.max_model_len = 256;
  auto host = load_model_weights("synthetic:llama-tiny", lo);
  REQUIRE_MESSAGE(host, (host ? "" : host.error().message));
  backend_options o;
  o.kv_blocks = 64;
  auto a = make_cuda_backend(host.value(), o);
  auto b = make_cuda_backend("synthetic:llama-tiny", lo, o);
  REQUIRE_MESSAGE(a, (a ? "" : a.error().message));
  REQUIRE_MESSAGE(b, (b ? "" : b.error().message));
  CHECK(b.value()->config().n_ctx == 256);
  step_batch batch;
  batch.reset(4);
  std::vector<int32_t> toks = {5, 6, 7, 8, 9}, blocks = {0};
  batch.add(0, toks, blocks, true, {}, 5);
  step_output oa, ob;
  REQUIRE(a.value()->step(batch, oa, logits_mode::all));
  REQUIRE(b.value()->step(batch, ob, logits_mode::all));
  CHECK(oa.logits == ob.logits);  // the same bits on the device, the same kernels
}

TEST_CASE("cuda backend: a block copy carries every layer's K and V (n > 1 forks, copy-on-write)") {
  auto w = random_weights(small_config(128, 2), 21);
  backend_options o;
  o.kv_blocks = 32;
  o.kv_block_size = 4;
  auto gpu = make_cuda_backend(w, o);
  REQUIRE(gpu);
  auto& be = *gpu.value();
  std::vector<int32_t> prompt = {11, 12, 13, 14, 15, 16, 17, 18, 19, 20};  // blocks 0, 1 full, 2 half
  step_batch b;
  b.reset(8);
  b.add(0, prompt, std::vector<int32_t>{0, 1, 2}, false, {}, 0);
  step_output out;
  REQUIRE(be.step(b, out, logits_mode::none));
  // Fork: block 5 := block 2 (in the batch), then both decode the same token at position 10.
  const std::vector<int32_t> tok = {21};
  b.reset(8);
  b.add_copy(2, 5);
  b.add(10, tok, std::vector<int32_t>{0, 1, 2}, true, {}, 0);
  b.add(10, tok, std::vector<int32_t>{0, 1, 5}, true, {}, 0);
  b.add(10, tok, std::vector<int32_t>{0, 1, 6}, true, {}, 0);  // never written: must differ
  REQUIRE(be.step(b, out, logits_mode::last));
  const int V = w->cfg.n_vocab;
  CHECK(rel_err(out.logits.data() + V, out.logits.data(), size_t(V)) < 1e-6);
  CHECK(rel_err(out.logits.data() + 2 * V, out.logits.data(), size_t(V)) > 1e-3);
  // Directly through the interface, and misuse as values.
  REQUIRE(be.copy_blocks(std::vector<int32_t>{5}, std::vector<int32_t>{7}));
  b.reset(8);
  b.add(10, tok, std::vector<int32_t>{0, 1, 7}, true, {}, 0);
  step_output o7;
  REQUIRE(be.step(b, o7, logits_mode::last));
  CHECK(rel_err(o7.logits.data(), out.logits.data(), size_t(V)) < 1e-6);
  CHECK_FALSE(be.copy_blocks(std::vector<int32_t>{0}, std::vector<int32_t>{32}));
  CHECK_FALSE(be.copy_blocks(std::vector<int32_t>{0, 1}, std::vector<int32_t>{3, 3}));
  CHECK_FALSE(be.copy_blocks(std::vector<int32_t>{4}, std::vector<int32_t>{4}));
}

TEST_CASE("cuda backend: prompt logprobs match the cpu backend; a sequence that does not ask gets none") {
  auto w = random_weights(small_config(128, 2), 23);
  backend_options o;
  o.kv_blocks = 64;
  o.kv_block_size = 4;
  auto gpu = make_cuda_backend(w, o);
  auto cpu = make_cpu_backend(w, o);
  REQUIRE(gpu);
  REQUIRE(cpu);
  std::mt19937 rng(5);
  auto prompts = random_prompts(2, w->cfg.n_vocab, rng, {13, 9});
  sampling_params sp;
  sp.logprobs = 3;
  step_batch b;
  b.reset(8);
  b.add(0, prompts[0], std::vector<int32_t>{0, 1, 2, 3}, true, sp, 0);
  b.want_prompt_logprobs(-1);  // the whole prompt: 12 entries
  b.add(0, prompts[1], std::vector<int32_t>{4, 5, 6}, true, sp, 0);
  step_output og, oc;
  for (auto mode : {logits_mode::none, logits_mode::last}) {
    REQUIRE(gpu.value()->step(b, og, mode));
    REQUIRE(cpu.value()->step(b, oc, mode));
    REQUIRE(og.prompt_start == oc.prompt_start);
    CHECK(og.prompt_start[1] == 12);
    CHECK(og.prompt_start[2] == 12);
    constexpr size_t K = size_t(sampling_params::max_logprobs);
    for (size_t j = 0; j < 12; ++j) {
      CHECK(std::fabs(og.prompt_logprob[j] - oc.prompt_logprob[j]) < 2e-2);
      CHECK(std::fabs(og.prompt_top_logprobs[j * K] - oc.prompt_top_logprobs[j * K]) < 2e-2);
    }
    if (mode == logits_mode::last) {
      REQUIRE(og.logits.size() == oc.logits.size());
      CHECK(rel_err(og.logits.data(), oc.logits.data(), og.logits.size()) < 1e-2);
    }
    CHECK(og.tokens.size() == 2);
  }
}

// --- prefix caching on the device (issue 19) ---
// The scheduler (prefix caching off, then on) drives one CUDA backend through the same
// requests, one after another: K/V taken from cached blocks must give what recomputing
// them gives. Prefill of a whole prompt and of its uncached tail are GEMMs of other
// heights (cuBLASLt may pick another algorithm), so logits may differ in the last bits:
// tokens must agree wherever the uncached run's best two logits are further apart than the
// two runs' largest logit difference in that row (check_tokens' rule), and the logits
// themselves must agree within the dtype's tolerance.
namespace {

struct prefix_served {
  std::map<uint64_t, std::vector<int32_t>> tokens;
  std::map<uint64_t, std::vector<std::vector<float>>> logits;  // the row each token was sampled from
  std::map<uint64_t, int32_t> cached;
  int64_t computed = 0;
};

prefix_served serve_prefix(backend& be, bool caching, const std::vector<std::vector<int32_t>>& prompts,
                           int32_t max_tokens) {
  scheduler_config sc{.max_batch_tokens = 512, .max_running = 4, .prefill_chunk = 256,
                      .n_ctx = be.config().n_ctx};
  sc.prefix_caching = caching;
  scheduler sched(sc, be.kv());
  const size_t V = size_t(be.config().n_vocab);
  prefix_served out;
  step_batch batch;
  step_output so;
  std::vector<seq_result> results;
  std::vector<uint64_t> ids;
  for (size_t i = 0; i < prompts.size(); ++i) {
    seq_spec s;
    s.id = i + 1;
    s.prompt = prompts[i];
    s.max_tokens = max_tokens;
    s.sampling.temperature = 0;
    REQUIRE(sched.add(s).is_ok());
    while (sched.schedule(batch) > 0) {
      sched.scheduled_ids(ids);
      out.computed += batch.n_tokens();
      auto st = be.step(batch, so, logits_mode::last);
      REQUIRE_MESSAGE(st, st.message);
      results.clear();
      sched.on_step_done(so, results);
      for (auto& r : results) {
        const size_t k = size_t(std::find(ids.begin(), ids.end(), r.id) - ids.begin());
        REQUIRE(k < ids.size());
        out.tokens[r.id].push_back(r.token);
        out.logits[r.id].emplace_back(so.logits.begin() + std::ptrdiff_t(k * V),
                                      so.logits.begin() + std::ptrdiff_t((k + 1) * V));
        if (r.cached_tokens >= 0) out.cached[r.id] = r.cached_tokens;
      }
    }
  }
  CHECK(sched.pool().n_used() == 0);
  sched.flush_prefix_cache();
  CHECK(sched.pool().n_free() == sched.pool().n_total());
  return out;
}

void check_prefix_caching(const std::string& spec, double tol) {
  CAPTURE(spec);
  load_options lo;
  lo.seed = 3;
  lo.max_model_len = 512;
  backend_options o;
  o.kv_block_size = 16;
  o.kv_blocks = 160;
  auto be = make_cuda_backend(spec, lo, o);
  REQUIRE_MESSAGE(be, (be ? "" : be.error().message));
  const int V = be.value()->config().n_vocab;
  std::mt19937 rng(11);
  auto rnd = [&](int n) {
    std::vector<int32_t> v(static_cast<size_t>(n));
    for (auto& t : v) t = int32_t(rng() % uint32_t(V));
    return v;
  };
  const auto system = rnd(200);  // 12 full blocks and 8 tokens
  auto cat = [](std::vector<int32_t> a, const std::vector<int32_t>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  const std::vector<int32_t> one_block(system.begin(), system.begin() + 16);
  const std::vector<std::vector<int32_t>> prompts = {
      cat(system, rnd(13)),     // 1: first: nothing cached
      rnd(40),                  // 2: shares nothing
      cat(one_block, rnd(30)),  // 3: shares 1 block with 1
      cat(system, rnd(21)),     // 4: shares 12 blocks with 1
  };
  auto all = prompts;
  all.push_back(prompts[0]);  // 5: 1 again: its 13 full prompt blocks before the last token
  const int32_t max_tokens = 8;
  prefix_served off = serve_prefix(*be.value(), false, all, max_tokens);
  prefix_served on = serve_prefix(*be.value(), true, all, max_tokens);
  const std::vector<int32_t> want_cached = {0, 0, 16, 192, 208};
  int compared = 0, total = 0;
  double worst = 0;
  for (uint64_t id = 1; id <= all.size(); ++id) {
    CAPTURE(id);
    CHECK(off.cached[id] == 0);
    CHECK(on.cached[id] == want_cached[id - 1]);
    REQUIRE(on.tokens[id].size() == size_t(max_tokens));
    REQUIRE(off.tokens[id].size() == size_t(max_tokens));
    for (int32_t i = 0; i < max_tokens; ++i) {
      CAPTURE(i);
      const auto& r = off.logits[id][size_t(i)];
      const auto& g = on.logits[id][size_t(i)];
      const double err = rel_err(g.data(), r.data(), r.size());
      worst = std::max(worst, err);
      CHECK(err < tol);
      ++total;
      if (on.tokens[id][size_t(i)] == off.tokens[id][size_t(i)]) {
        ++compared;
        continue;
      }
      // A swap is allowed only at a near-tie; the sequences then differ: stop comparing.
      float best = -INFINITY, second = -INFINITY, maxdiff = 0;
      for (size_t v = 0; v < r.size(); ++v) {
        if (r[v] > best) second = best, best = r[v];
        else if (r[v] > second) second = r[v];
        maxdiff = std::max(maxdiff, std::fabs(r[v] - g[v]));
      }
      CHECK(best - second <= 2 * maxdiff);
      break;
    }
  }
  // Tokens run through the model: the cached blocks' tokens are not.
  CHECK(on.computed == off.computed - (16 + 192 + 208));
  MESSAGE(spec << ": " << compared << " of " << total << " greedy tokens compared are identical with and without "
               << "the prefix cache (of " << all.size() * max_tokens << "), logits relative error at most " << worst
               << ", tokens computed " << on.computed << " with the cache, " << off.computed << " without");
  CHECK(compared >= int(all.size()) * max_tokens / 2);  // near-ties cannot have hidden most of them
}

}  // namespace

TEST_CASE("cuda backend: gpu_memory_utilization sizes the KV pool from the device's memory") {
  // vLLM's rule (gpu/cuda-backend.cpp): fraction x total memory, less the weights, split
  // equally among the device's workers. Checked against cudaMemGetInfo here and against
  // the memory the pool really takes.
  size_t free0 = 0, total = 0;
  REQUIRE(cudaMemGetInfo(&free0, &total) == cudaSuccess);
  load_options lo;
  lo.max_model_len = 1024;
  for (int workers : {1, 2}) {
    CAPTURE(workers);
    backend_options o;
    o.kind = "cuda";
    o.gpu_memory_utilization = 0.2;
    o.device_workers = workers;
    size_t before = 0;
    REQUIRE(cudaMemGetInfo(&before, &total) == cudaSuccess);
    auto be = make_cuda_backend("synthetic:gpt2-small", lo, o);
    REQUIRE_MESSAGE(be, (be ? "" : be.error().message));
    size_t after = 0;
    REQUIRE(cudaMemGetInfo(&after, &total) == cudaSuccess);
    const auto* st = cuda_backend_get_stats(*be.value());
    REQUIRE(st != nullptr);
    const auto& cfg = be.value()->config();
    const int64_t block_bytes = int64_t(cfg.kv_bytes_per_token(2)) * be.value()->kv().block_size;
    const double budget = 0.2 * double(total) - double(st->weight_bytes);
    const int64_t want = int64_t(budget / workers) / block_bytes;
    CHECK(be.value()->kv().n_blocks == want);
    CHECK(st->kv_bytes == int64_t(be.value()->kv().n_blocks) * block_bytes);
    // The pool is really allocated: the device lost at least its bytes (plus the weights,
    // unless another backend of this process still shares them, and the workspaces).
    CHECK(int64_t(before) - int64_t(after) >= st->kv_bytes);
    MESSAGE("gpu_memory_utilization 0.2, " << workers << " worker(s): device " << total / 1048576 << " MiB, weights "
                                           << st->weight_bytes / 1048576 << " MiB, KV pool " << be.value()->kv().n_blocks
                                           << " blocks = " << st->kv_bytes / 1048576 << " MiB; cudaMemGetInfo free "
                                           << before / 1048576 << " -> " << after / 1048576 << " MiB");
  }
  // A fraction that leaves nothing after the weights is refused, naming the setting.
  backend_options tiny;
  tiny.kind = "cuda";
  tiny.gpu_memory_utilization = 0.0001;
  auto none = make_cuda_backend("synthetic:gpt2-small", lo, tiny);
  REQUIRE_FALSE(none);
  CHECK(none.error().message.find("gpu_memory_utilization") != std::string::npos);
}

TEST_CASE("cuda backend: prefix caching gives the same greedy tokens (GPT-2 shape)") {
  check_prefix_caching("synthetic:gpt2-small", 1e-2);
}

TEST_CASE("cuda backend: prefix caching gives the same greedy tokens (Llama-3.2-1B shape, bf16)") {
  check_prefix_caching("synthetic:llama3.2-1b", 3e-2);
}

int main(int argc, char** argv) { return infer::test::cuda_test_main("test-cuda-backend", argc, argv); }
