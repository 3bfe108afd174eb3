// sim_backend: a backend that takes as long as a GPU would and costs the host no CPU, for
// measuring what the actors and the network cost around an engine on any machine
// (infer-bench-actors --backend sim, infer-bench-net).
#pragma once
#include <algorithm>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include "actors/service-core.hpp"
#include "actors/service.hpp"
#include "config/service-config.hpp"
#include "engine/backend.hpp"

namespace infer::bench {

// Its tokens are a hash of the sequence's last token, position and seed (deterministic,
// spread over the vocabulary; no KV is kept: nothing reads it); its step lasts fixed_us + per_seq_us per sequence + per_token_us per prompt token beyond one
// per sequence, slept (and the last stretch spun, sleep being coarse), as a CUDA stream
// synchronize would leave the thread. The defaults are GPT-2 small on the H200 (fp16,
// graphs): 0.535 ms at 64 sequences, 0.80 ms at 256, 8192 prompt tokens in 6 ms.
class sim_backend final : public backend {
 public:
  sim_backend(model_config cfg, kv_geometry kv, double fixed_us, double per_seq_us, double per_token_us)
      : cfg_(cfg), kv_(kv), fixed_us_(fixed_us), per_seq_us_(per_seq_us), per_token_us_(per_token_us) {}
  const char* name() const override { return "sim"; }
  const model_config& config() const override { return cfg_; }
  kv_geometry kv() const override { return kv_; }
  status step(const step_batch& b, step_output& out, logits_mode m) override {
    using clk = std::chrono::steady_clock;
    auto t0 = clk::now();
    if (last_end_ != clk::time_point{}) {
      std::lock_guard<std::mutex> g(gaps_mu);  // one engine per thread; read once after the run
      gaps_us.push_back(std::chrono::duration<double, std::micro>(t0 - last_end_).count());
    }
    (void)m;
    status s = validate_step_batch(b, cfg_, kv_);
    out.tokens.assign(size_t(b.n_seqs()), -1);
    for (int32_t i = 0; s && i < b.n_seqs(); ++i) {
      if (!b.sample[size_t(i)]) continue;
      const int32_t last = b.tokens[size_t(b.seq_start[size_t(i) + 1] - 1)];
      const uint64_t h = splitmix64(uint64_t(uint32_t(last)) ^ (uint64_t(b.n_past[size_t(i)] + b.seq_len(i)) << 32) ^
                                    b.sampling[size_t(i)].seed);
      out.tokens[size_t(i)] = int32_t(h % uint64_t(cfg_.n_vocab));
    }
    const double us = fixed_us_ + per_seq_us_ * b.n_seqs() + per_token_us_ * std::max(0, b.n_tokens() - b.n_seqs());
    auto end = t0 + std::chrono::nanoseconds(int64_t(us * 1e3));
    auto coarse = end - std::chrono::microseconds(100);
    if (clk::now() < coarse) std::this_thread::sleep_until(coarse);
    while (clk::now() < end) {
    }
    last_end_ = clk::now();
    return s;
  }

  // The host's time between the end of a step and the start of the next, per engine: what
  // the device would idle. (Gaps with no work, between rounds, are in it too.)
  static inline std::mutex gaps_mu;
  static inline std::vector<double> gaps_us;

 private:
  model_config cfg_;
  kv_geometry kv_;
  double fixed_us_, per_seq_us_, per_token_us_;
  std::chrono::steady_clock::time_point last_end_{};
};


// Hooks that build sim engines with GPT-2's vocabulary (so that detokenisation costs what it
// would) and context, KV room for cfg.max_running full-context sequences per engine.
inline result<service_hooks> sim_hooks(const service_config& cfg, double fixed_us, double per_seq_us,
                                       double per_token_us) {
  service_hooks hooks;
  const int32_t n_vocab = 50257, n_ctx = 1024;
  service_config tc = cfg;
  tc.model = "synthetic:gpt2-small";
  auto tok = model_tokenizer(tc, n_vocab);
  if (!tok) return make_status(tok.error().code, "sim tokenizer: " + tok.error().message);
  hooks.tok = std::move(tok.value());
  hooks.n_ctx = n_ctx;
  hooks.n_vocab = n_vocab;
  const int32_t blocks = std::max(64, cfg.max_running * (n_ctx / 16));
  hooks.make_backend = [=](int32_t) -> result<std::unique_ptr<backend>> {
    model_config mc;
    mc.n_vocab = n_vocab;
    mc.n_ctx = n_ctx;
    mc.n_embd = 8;
    mc.n_layer = 1;
    mc.n_head = 1;
    return std::unique_ptr<backend>(new sim_backend(mc, kv_geometry{16, blocks},
                                                    fixed_us, per_seq_us, per_token_us));
  };
  return hooks;
}

}  // namespace infer::bench
