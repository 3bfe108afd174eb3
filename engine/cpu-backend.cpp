// The CPU backend: model/forward.hpp's op sequence over the fp32 reference kernels of
// kernels/cpu-kernels.hpp, for every architecture of the model layer.
#include "engine/cpu-backend.hpp"

#include <cblas.h>

#include <algorithm>
#include <cstring>
#include <string>

#include <fmt/format.h>

#include "kernels/cpu-kernels.hpp"
#include "model/forward.hpp"
#include "model/rope.hpp"

namespace infer {
namespace {

// Grows, never shrinks: after the first steps of a given size a step allocates nothing.
template <class T>
T* ensure(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

class cpu_backend;

// One step's view of the backend: the ops of model/forward.hpp, unfused.
struct cpu_ops {
  cpu_backend& be;
  const model_weights& w;
  const model_config& c;
  const step_batch& b;
  int T;
  float* bufs[7];
  float* buf(act_buf x) const { return bufs[int(x)]; }
  const float* weight(tensor_role r, int layer) const { return r == no_tensor ? nullptr : w.get(r, layer); }

  void embed();
  void norm(const norm_op& op, act_buf in, act_buf out) {
    const float* wt = weight(op.w, op.layer);
    if (op.kind == norm_kind::layernorm)
      cpu::layernorm_forward(buf(out), buf(in), wt, weight(op.b, op.layer), T, op.dim, op.eps);
    else
      cpu::rmsnorm_forward(buf(out), buf(in), wt, T, op.dim, op.eps);
  }
  void add_norm(const norm_op& op, act_buf x, act_buf out) {
    const float* wt = weight(op.w, op.layer);
    if (op.kind == norm_kind::layernorm)
      cpu::residual_layernorm_forward(buf(act_buf::res), buf(out), buf(x), wt, weight(op.b, op.layer), T, op.dim,
                                      op.eps);
    else
      cpu::residual_rmsnorm_forward(buf(act_buf::res), buf(out), buf(x), wt, T, op.dim, op.eps);
  }
  void linear(const linear_op& op) {
    const float* wt = weight(op.w, op.layer);
    const float* bias = weight(op.b, op.layer);
    if (op.out_in) cpu::matmul_nt_forward(buf(op.out), buf(op.in), wt, bias, T, op.in_dim, op.out_dim);
    else cpu::matmul_forward(buf(op.out), buf(op.in), wt, bias, T, op.in_dim, op.out_dim);
  }
  void head_norm(const head_norm_op& op) {
    float* qkv = buf(act_buf::qkv);
    const int stride = c.qkv_dim();
    cpu::head_rmsnorm_forward(qkv, w.get(tensor_role::q_norm_w, op.layer), T, stride, op.n_head, op.head_dim, op.eps);
    cpu::head_rmsnorm_forward(qkv + c.q_dim(), w.get(tensor_role::k_norm_w, op.layer), T, stride, op.n_kv_head,
                              op.head_dim, op.eps);
  }
  void rope(const rope_op& op);
  void kv_store(int layer);
  void attention(const attention_op& op);
  void glu(act_kind, int F) { cpu::silu_mul_forward(buf(act_buf::ffn_act), buf(act_buf::ffn), T, F); }
  void activation(act_kind a, int F) {
    if (a == act_kind::gelu_tanh) cpu::gelu_forward(buf(act_buf::ffn), int64_t(T) * F);
    else cpu::silu_forward(buf(act_buf::ffn), int64_t(T) * F);
  }
  void residual(act_buf x) { cpu::residual_forward(buf(act_buf::res), buf(x), int64_t(T) * c.n_embd); }
  void lm_head(const norm_op& op, tensor_role head);
};

class cpu_backend final : public backend {
 public:
  cpu_backend(std::shared_ptr<const model_weights> w, kv_geometry kv) : w_(std::move(w)), kv_(kv) {
    const auto& c = w_->cfg;
    layer_stride_ = int64_t(kv_.n_blocks) * kv_.block_size * c.kv_dim();
    kv_cache_.assign(size_t(layer_stride_) * 2 * c.n_layer, 0.0f);
    if (c.uses_rope()) rope_tables(c, c.n_ctx, rope_cos_, rope_sin_);
  }

  const char* name() const override { return "cpu"; }
  const model_config& config() const override { return w_->cfg; }
  kv_geometry kv() const override { return kv_; }

  status copy_blocks(std::span<const int32_t> src, std::span<const int32_t> dst) override {
    if (auto s = validate_block_copies(src, dst, kv_); !s) return s;
    const int64_t block = int64_t(kv_.block_size) * w_->cfg.kv_dim();  // floats of one block in one plane
    for (int plane = 0; plane < 2 * w_->cfg.n_layer; ++plane) {  // (layer, k|v)
      float* base = kv_cache_.data() + plane * layer_stride_;
      for (size_t i = 0; i < src.size(); ++i)
        std::memcpy(base + dst[i] * block, base + src[i] * block, size_t(block) * sizeof(float));
    }
    return status::ok();
  }

  status step(const step_batch& b, step_output& out, logits_mode mode) override {
    if (auto s = validate_step_batch(b, w_->cfg, kv_); !s) return s;
    // The host list is this backend's only source of counts (device_token_counts: false).
    for (size_t i = 0; i < b.counts_slot.size(); ++i)
      if (b.counts_slot[i] >= 0 && !b.counts_load[i] && b.sample[i])
        return make_status(errc::invalid_argument, "step: the cpu backend keeps no token counts (count slot of sequence " +
                                                       std::to_string(i) + ")");
    if (auto s = copy_blocks(b.copy_src, b.copy_dst); !s) return s;
    const auto& c = w_->cfg;
    const int T = b.n_tokens(), S = b.n_seqs(), bs = kv_.block_size, V = c.n_vocab;

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
    // Rows that need logits: every token (all), or each sequence's last token, and every
    // token of a sequence that asks for prompt logprobs.
    const bool prompt_lp = b.any_prompt_logprobs();
    int32_t* rows = ensure(rows_, mode == logits_mode::all || prompt_lp ? T : S);
    n_rows_ = 0;
    if (mode == logits_mode::all) {
      for (int t = 0; t < T; ++t) rows[n_rows_++] = t;
    } else {
      for (int s = 0; s < S; ++s) {
        if (b.prompt_next_of(s) >= -1)
          for (int t = b.seq_start[s]; t < b.seq_start[s + 1] - 1; ++t) rows[n_rows_++] = t;
        if (mode == logits_mode::last || b.sample[s] || b.prompt_next_of(s) >= -1) rows[n_rows_++] = b.seq_start[s + 1] - 1;
      }
    }

    const size_t C = size_t(c.n_embd), F = size_t(c.ff_dim());
    cpu_ops ops{*this, *w_, c, b, T, {}};
    ops.bufs[int(act_buf::res)] = ensure(residual_, T * C);
    ops.bufs[int(act_buf::x)] = ensure(x_, T * C);
    ops.bufs[int(act_buf::qkv)] = ensure(qkv_, T * size_t(c.qkv_dim()));
    ops.bufs[int(act_buf::att)] = ensure(att_, T * size_t(c.q_dim()));
    ops.bufs[int(act_buf::proj)] = ensure(proj_, T * C);
    ops.bufs[int(act_buf::ffn)] = ensure(ffn_, T * (c.glu ? 2 * F : F));
    ops.bufs[int(act_buf::ffn_act)] = c.glu ? ensure(ffn_act_, T * F) : nullptr;
    ensure(scratch_, size_t(max_len));
    forward(ops, c);

    const int R = n_rows_;
    const float* logits = logits_.data();
    out.tokens.assign(S, -1);
    // [0, 2V): the sampler's scratch; [2V, 3V): a row with its adjustments applied.
    float* sscratch = ensure(sample_scratch_, size_t(3) * V);
    float* adjusted = sscratch + size_t(2) * V;
    const bool lp = b.any_logprobs();
    constexpr int K = sampling_params::max_logprobs;
    if (lp) {
      out.logprob.assign(S, 0.0f);
      out.top_ids.assign(size_t(S) * K, -1);
      out.top_logprobs.assign(size_t(S) * K, 0.0f);
    } else {
      out.logprob.clear(); out.top_ids.clear(); out.top_logprobs.clear();
    }
    for (int s = 0, r = 0; s < S; ++s) {
      const int last = b.seq_start[s + 1] - 1;
      while (r < R && rows[r] < last) ++r;
      if (!b.sample[s]) continue;
      const sampling_params& sp = b.sampling[s];
      const float* row = logits + int64_t(r) * V;
      const auto adj = b.adjustments(s);
      const float* pick_from = row;
      if (!adj.empty()) {
        std::memcpy(adjusted, row, size_t(V) * sizeof(float));
        cpu::apply_logit_adjust(adjusted, adj, sp);
        pick_from = adjusted;
      }
      out.tokens[s] = cpu::sample_token(pick_from, V, sp, b.sample_counter[s], sscratch);
      if (lp && sp.logprobs >= 0) {
        const float lse = cpu::log_softmax_top(row, V, sp.logprobs, out.top_ids.data() + size_t(s) * K,
                                               out.top_logprobs.data() + size_t(s) * K);
        out.logprob[s] = row[out.tokens[s]] - lse;
      }
    }
    if (prompt_lp) {
      int32_t* row_at = ensure(row_at_, T);  // token -> its row
      for (int r = 0; r < R; ++r) row_at[rows[r]] = r;
      out.fill_prompt_logprobs(b, V, [&](int32_t t) { return logits + int64_t(row_at[t]) * V; });
    } else {
      out.prompt_start.clear(); out.prompt_logprob.clear(); out.prompt_top_ids.clear(); out.prompt_top_logprobs.clear();
    }
    if (mode == logits_mode::none) {
      out.logits.clear();
    } else if (mode == logits_mode::last && prompt_lp) {  // only each sequence's last row
      out.logits.resize(size_t(S) * V);
      for (int s = 0, r = 0; s < S; ++s) {
        while (rows[r] < b.seq_start[s + 1] - 1) ++r;
        std::memcpy(out.logits.data() + size_t(s) * V, logits + int64_t(r) * V, size_t(V) * sizeof(float));
      }
    } else {
      out.logits.assign(logits, logits + int64_t(R) * V);
    }
    return status::ok();
  }

 private:
  friend struct cpu_ops;
  std::shared_ptr<const model_weights> w_;
  kv_geometry kv_;
  int64_t layer_stride_ = 0;
  std::vector<float> kv_cache_;  // [n_layer][k|v][n_blocks][block_size][kv_dim]
  std::vector<float> rope_cos_, rope_sin_;  // [n_ctx, rot_dim / 2]
  std::vector<int32_t> tok_seq_, tok_pos_, slot_, rows_, row_at_;
  int n_rows_ = 0;
  std::vector<float> residual_, x_, qkv_, att_, proj_, ffn_, ffn_act_, scratch_, gathered_, logits_,
      sample_scratch_;
};

void cpu_ops::embed() {
  cpu::embed_forward(buf(act_buf::res), b.tokens.data(), be.tok_pos_.data(), w.wte,
                     c.pos == pos_kind::learned ? w.wpe : nullptr, T, c.n_embd);
}

void cpu_ops::rope(const rope_op& op) {
  cpu::rope_forward(buf(act_buf::qkv), be.tok_pos_.data(), be.rope_cos_.data(), be.rope_sin_.data(), T, c.qkv_dim(),
                    op.n_head + op.n_kv_head, op.head_dim, op.rot_dim, op.kind == pos_kind::rope_interleaved);
}

void cpu_ops::kv_store(int layer) {
  float* kc = be.kv_cache_.data() + (2 * layer) * be.layer_stride_;
  float* vc = be.kv_cache_.data() + (2 * layer + 1) * be.layer_stride_;
  cpu::kv_store_gqa_forward(kc, vc, buf(act_buf::qkv), be.slot_.data(), T, c.q_dim(), c.kv_dim());
}

void cpu_ops::attention(const attention_op& op) {
  const float* kc = be.kv_cache_.data() + (2 * op.layer) * be.layer_stride_;
  const float* vc = be.kv_cache_.data() + (2 * op.layer + 1) * be.layer_stride_;
  cpu::paged_attention_gqa_forward(buf(act_buf::att), buf(act_buf::qkv), kc, vc, be.tok_seq_.data(),
                                   be.tok_pos_.data(), b.block_tables.data(), b.max_blocks_per_seq,
                                   be.kv_.block_size, T, op.n_head, op.n_kv_head, op.head_dim, op.window, op.scale,
                                   be.scratch_.data());
}

void cpu_ops::lm_head(const norm_op& op, tensor_role head) {
  const int R = be.n_rows_, C = c.n_embd, V = c.n_vocab;
  float* gathered = ensure(be.gathered_, size_t(std::max(R, 1)) * C);
  const float* res = buf(act_buf::res);
  for (int r = 0; r < R; ++r) {
    const float* in = res + int64_t(be.rows_[size_t(r)]) * C;
    float* o = gathered + int64_t(r) * C;
    if (op.kind == norm_kind::layernorm)
      cpu::layernorm_forward(o, in, weight(op.w, -1), weight(op.b, -1), 1, C, op.eps);
    else
      cpu::rmsnorm_forward(o, in, weight(op.w, -1), 1, C, op.eps);
  }
  float* logits = ensure(be.logits_, size_t(std::max(R, 1)) * V);
  if (R > 0) cpu::lm_head_forward(logits, gathered, w.get(head, -1), R, C, V);
}

}  // namespace

result<std::unique_ptr<backend>> make_cpu_backend(std::shared_ptr<const model_weights> weights,
                                                  const backend_options& opts) {
  if (!weights) return make_status(errc::invalid_argument, "cpu backend: no weights");
  const auto& c = weights->cfg;
  if (opts.kv_block_size < 1) return make_status(errc::invalid_argument, "kv_block_size must be >= 1");
  if (c.glu && c.act != act_kind::silu)
    return make_status(errc::invalid_argument, "cpu backend: a gated MLP with an activation other than silu");
  kv_geometry kv;
  kv.block_size = opts.kv_block_size;
  const int64_t block_bytes = c.kv_bytes_per_token(sizeof(float)) * kv.block_size;
  kv.n_blocks = opts.kv_blocks > 0 ? opts.kv_blocks
                                   : int32_t(std::min<int64_t>(INT32_MAX, opts.kv_memory_mb * (int64_t(1) << 20) / block_bytes));
  if (kv.n_blocks < 1)
    return make_status(errc::invalid_argument,
                       "kv cache: kv_memory_mb=" + std::to_string(opts.kv_memory_mb) +
                           " holds no block of " + std::to_string(block_bytes) + " bytes");
  const int64_t need = block_bytes * kv.n_blocks;
  if (const int64_t have = host_memory_available(); need > have)
    return make_status(errc::out_of_memory,
                       fmt::format("cpu backend: the KV cache needs {} bytes ({} blocks of {}); {} bytes are available",
                                   need, kv.n_blocks, block_bytes, have));
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
