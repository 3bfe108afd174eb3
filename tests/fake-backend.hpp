// fake_backend: a backend for scheduler and actor tests that needs no model.
//
// Its "KV cache" stores token ids in the blocks the scheduler hands out, and the
// next token is a hash of the whole context read back from those blocks. So a
// wrong n_past, a wrong block table, a block shared by two sequences or a lost
// prefill chunk changes the output: comparing with fake_reference() (the same
// hash over the plain token list) checks the scheduler's bookkeeping end to end.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "engine/backend.hpp"

namespace infer::test {

inline int32_t fake_next_token(const int32_t* ctx, int32_t n, int32_t n_vocab, const sampling_params& sp,
                               uint64_t counter) {
  uint64_t h = 1469598103934665603ull;
  for (int32_t i = 0; i < n; ++i) h = (h ^ uint64_t(uint32_t(ctx[i]))) * 1099511628211ull;
  if (!sp.greedy()) h ^= splitmix64(sp.seed ^ splitmix64(counter));
  return int32_t(splitmix64(h) % uint64_t(n_vocab));
}

// The tokens a sequence generates alone.
inline std::vector<int32_t> fake_reference(std::vector<int32_t> ctx, int32_t max_tokens, int32_t n_vocab,
                                           int32_t n_ctx, const sampling_params& sp = {}) {
  std::vector<int32_t> out;
  const size_t n_prompt = ctx.size();
  while (int32_t(out.size()) < max_tokens) {
    int32_t t = fake_next_token(ctx.data(), int32_t(ctx.size()), n_vocab, sp, out.size());
    out.push_back(t);
    ctx.push_back(t);
    if (int32_t(n_prompt + out.size()) >= n_ctx) break;
  }
  return out;
}

class fake_backend : public backend {
 public:
  fake_backend(model_config cfg, kv_geometry kv) : cfg_(cfg), kv_(kv), cache_(size_t(kv.n_blocks) * kv.block_size, -1) {}

  const char* name() const override { return "fake"; }
  const model_config& config() const override { return cfg_; }
  kv_geometry kv() const override { return kv_; }

  status copy_blocks(std::span<const int32_t> src, std::span<const int32_t> dst) override {
    if (auto s = validate_block_copies(src, dst, kv_); !s) return s;
    const int32_t bs = kv_.block_size;
    for (size_t i = 0; i < src.size(); ++i)
      std::copy_n(cache_.begin() + std::ptrdiff_t(size_t(src[i]) * bs), bs,
                  cache_.begin() + std::ptrdiff_t(size_t(dst[i]) * bs));
    n_copies += int64_t(src.size());
    return status::ok();
  }

  status step(const step_batch& b, step_output& out, logits_mode = logits_mode::none) override {
    int64_t n = n_steps.fetch_add(1);
    if (on_step) {
      status s = on_step(n, b);
      if (!s) return s;
    }
    if (auto s = copy_blocks(b.copy_src, b.copy_dst); !s) return s;
    n_tokens += b.n_tokens();
    out.tokens.assign(size_t(b.n_seqs()), -1);
    const int32_t bs = kv_.block_size;
    max_batch_seqs = std::max<int32_t>(max_batch_seqs, b.n_seqs());
    for (int32_t i = 0; i < b.n_seqs(); ++i) {
      const int32_t* table = b.block_tables.data() + size_t(i) * b.max_blocks_per_seq;
      auto slot = [&](int32_t pos) -> int32_t* {
        if (pos / bs >= b.max_blocks_per_seq) return nullptr;
        int32_t blk = table[pos / bs];
        if (blk < 0 || blk >= kv_.n_blocks) return nullptr;
        return &cache_[size_t(blk) * bs + pos % bs];
      };
      const int32_t past = b.n_past[i];
      if (past + b.seq_len(i) > cfg_.n_ctx)
        return make_status(errc::invalid_argument, "fake_backend: position past n_ctx");
      for (int32_t j = 0; j < b.seq_len(i); ++j) {
        int32_t* p = slot(past + j);
        if (!p) return make_status(errc::invalid_argument, "fake_backend: block table too short");
        *p = b.tokens[size_t(b.seq_start[i] + j)];
      }
      if (!b.sample[i]) continue;
      ctx_.clear();
      for (int32_t pos = 0; pos < past + b.seq_len(i); ++pos) ctx_.push_back(*slot(pos));
      int32_t t = fake_next_token(ctx_.data(), int32_t(ctx_.size()), cfg_.n_vocab, b.sampling[i],
                                  b.sample_counter[i]);
      if (forced_eos >= 0) {  // EOS exactly at forced_eos_at, never before or after
        if (b.sample_counter[i] == forced_eos_at) t = forced_eos;
        else if (t == forced_eos) t = (t + 1) % cfg_.n_vocab;
      }
      out.tokens[size_t(i)] = t;
    }
    return status::ok();
  }

  // Called before each step with its number (0-based); an error fails the step.
  std::function<status(int64_t, const step_batch&)> on_step;
  std::atomic<int64_t> n_steps{0};
  std::atomic<int64_t> n_tokens{0};  // tokens computed, all steps
  std::atomic<int64_t> n_copies{0};  // blocks copied (forks)
  int32_t max_batch_seqs = 0;
  // >= 0: the token generated at index forced_eos_at (0-based) of every sequence is this id,
  // and no other generated token is: a model whose end of sequence comes after exactly
  // forced_eos_at tokens.
  int32_t forced_eos = -1;
  uint64_t forced_eos_at = 0;

 private:
  model_config cfg_;
  kv_geometry kv_;
  std::vector<int32_t> cache_;
  std::vector<int32_t> ctx_;
};

inline model_config fake_config(int32_t n_ctx = 256, int32_t n_vocab = 256) {
  model_config c;
  c.n_vocab = n_vocab;
  c.n_ctx = n_ctx;
  c.n_embd = 8;
  c.n_layer = 1;
  c.n_head = 1;
  return c;
}

}  // namespace infer::test
