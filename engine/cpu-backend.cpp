#include "engine/cpu-backend.hpp"

#include <cblas.h>

#include <algorithm>
#include <string>

#include "kernels/cpu-kernels.hpp"

namespace infer {
namespace {

// Grows, never shrinks: after the first steps of a given size a step allocates nothing.
template <class T>
T* ensure(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

class cpu_backend final : public backend {
 public:
  cpu_backend(std::shared_ptr<const model_weights> w, kv_geometry kv) : w_(std::move(w)), kv_(kv) {
    const auto& c = w_->cfg;
    layer_stride_ = int64_t(kv_.n_blocks) * kv_.block_size * c.n_embd;
    kv_cache_.assign(size_t(layer_stride_) * 2 * c.n_layer, 0.0f);
  }

  const char* name() const override { return "cpu"; }
  const model_config& config() const override { return w_->cfg; }
  kv_geometry kv() const override { return kv_; }

  status step(const step_batch& b, step_output& out, logits_mode mode) override {
    if (auto s = validate(b); !s) return s;
    const auto& cfg = w_->cfg;
    const int C = cfg.n_embd, V = cfg.n_vocab, NH = cfg.n_head, T = b.n_tokens();
    const int S = b.n_seqs();
    const int bs = kv_.block_size;

    int32_t* tok_seq = ensure(tok_seq_, T);
    int32_t* tok_pos = ensure(tok_pos_, T);
    int32_t* slot = ensure(slot_, T);
    int max_len = 1;
    for (int s = 0; s < S; ++s) {
      const int32_t* table = b.block_tables.data() + int64_t(s) * b.max_blocks_per_seq;
      for (int t = b.seq_start[s]; t < b.seq_start[s + 1]; ++t) {
        const int p = b.n_past[s] + (t - b.seq_start[s]);
        tok_seq[t] = s;
        tok_pos[t] = p;
        slot[t] = table[p / bs] * bs + p % bs;
        max_len = std::max(max_len, p + 1);
      }
    }

    float* res = ensure(residual_, size_t(T) * C);
    float* ln = ensure(ln_, size_t(T) * C);
    float* qkv = ensure(qkv_, size_t(T) * 3 * C);
    float* att = ensure(att_, size_t(T) * C);
    float* proj = ensure(proj_, size_t(T) * C);
    float* fc = ensure(fc_, size_t(T) * 4 * C);
    float* scratch = ensure(scratch_, size_t(max_len));

    cpu::embed_forward(res, b.tokens.data(), tok_pos, w_->wte, w_->wpe, T, C);
    for (int l = 0; l < cfg.n_layer; ++l) {
      const auto& L = w_->layers[l];
      float* kc = kv_cache_.data() + (2 * l) * layer_stride_;
      float* vc = kv_cache_.data() + (2 * l + 1) * layer_stride_;
      cpu::layernorm_forward(ln, res, L.ln1_w, L.ln1_b, T, C, cfg.ln_eps);
      cpu::matmul_forward(qkv, ln, L.qkv_w, L.qkv_b, T, C, 3 * C);
      cpu::kv_store_forward(kc, vc, qkv, slot, T, C);
      cpu::paged_attention_forward(att, qkv, kc, vc, tok_seq, tok_pos, b.block_tables.data(),
                                   b.max_blocks_per_seq, bs, T, C, NH, scratch);
      cpu::matmul_forward(proj, att, L.proj_w, L.proj_b, T, C, C);
      cpu::residual_layernorm_forward(res, ln, proj, L.ln2_w, L.ln2_b, T, C, cfg.ln_eps);
      cpu::matmul_forward(fc, ln, L.fc_w, L.fc_b, T, C, 4 * C);
      cpu::gelu_forward(fc, int64_t(T) * 4 * C);
      cpu::matmul_forward(proj, fc, L.fcproj_w, L.fcproj_b, T, 4 * C, C);
      cpu::residual_forward(res, proj, int64_t(T) * C);
    }

    // Rows that need logits: every token (all), or each sequence's last token.
    int32_t* rows = ensure(rows_, mode == logits_mode::all ? T : S);
    int R = 0;
    if (mode == logits_mode::all) {
      for (int t = 0; t < T; ++t) rows[R++] = t;
    } else {
      for (int s = 0; s < S; ++s)
        if (mode == logits_mode::last || b.sample[s]) rows[R++] = b.seq_start[s + 1] - 1;
    }
    float* gathered = ensure(gathered_, size_t(std::max(R, 1)) * C);
    for (int r = 0; r < R; ++r)
      cpu::layernorm_forward(gathered + int64_t(r) * C, res + int64_t(rows[r]) * C, w_->lnf_w,
                             w_->lnf_b, 1, C, cfg.ln_eps);
    float* logits = ensure(logits_, size_t(std::max(R, 1)) * V);
    if (R > 0) cpu::lm_head_forward(logits, gathered, w_->wte, R, C, V);

    out.tokens.assign(S, -1);
    float* sscratch = ensure(sample_scratch_, size_t(2) * V);
    for (int s = 0, r = 0; s < S; ++s) {
      const int last = b.seq_start[s + 1] - 1;
      while (r < R && rows[r] < last) ++r;
      if (!b.sample[s]) continue;
      out.tokens[s] = cpu::sample_token(logits + int64_t(r) * V, V, b.sampling[s],
                                        b.sample_counter[s], sscratch);
    }
    if (mode == logits_mode::none) {
      out.logits.clear();
    } else {
      out.logits.assign(logits, logits + int64_t(R) * V);
    }
    return status::ok();
  }

 private:
  status validate(const step_batch& b) const { return validate_step_batch(b, w_->cfg, kv_); }

  std::shared_ptr<const model_weights> w_;
  kv_geometry kv_;
  int64_t layer_stride_ = 0;
  std::vector<float> kv_cache_;  // [n_layer][k|v][n_blocks][block_size][C]
  std::vector<int32_t> tok_seq_, tok_pos_, slot_, rows_;
  std::vector<float> residual_, ln_, qkv_, att_, proj_, fc_, scratch_, gathered_, logits_,
      sample_scratch_;
};

}  // namespace

result<std::unique_ptr<backend>> make_cpu_backend(std::shared_ptr<const model_weights> weights,
                                                  const backend_options& opts) {
  if (!weights) return make_status(errc::invalid_argument, "cpu backend: no weights");
  const auto& c = weights->cfg;
  if (opts.kv_block_size < 1) return make_status(errc::invalid_argument, "kv_block_size must be >= 1");
  kv_geometry kv;
  kv.block_size = opts.kv_block_size;
  const int64_t block_bytes = int64_t(c.n_layer) * 2 * kv.block_size * c.n_embd * sizeof(float);
  kv.n_blocks = opts.kv_blocks > 0 ? opts.kv_blocks
                                   : int32_t(opts.kv_memory_mb * (int64_t(1) << 20) / block_bytes);
  if (kv.n_blocks < 1)
    return make_status(errc::invalid_argument,
                       "kv cache: kv_memory_mb=" + std::to_string(opts.kv_memory_mb) +
                           " holds no block of " + std::to_string(block_bytes) + " bytes");
  // OpenBLAS threads busy-wait between calls; with small per-step GEMMs one thread per
  // worker is faster (measured on 2 cores), and `workers` is the parallelism knob.
  openblas_set_num_threads(opts.threads > 0 ? opts.threads : 1);
  try {
    return std::unique_ptr<backend>(new cpu_backend(std::move(weights), kv));
  } catch (const std::bad_alloc&) {
    return make_status(errc::out_of_memory, "cpu backend: cannot allocate the KV cache");
  }
}

}  // namespace infer
