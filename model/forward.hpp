// The forward pass of every architecture, once, as a template over a small op vocabulary.
//
// A backend supplies `Ops`; forward<Ops>(ops, cfg) calls its ops in order for one step over
// a ragged batch (all sequences' new tokens back to back, T rows). The CPU backend's ops
// (engine/cpu-backend.cpp) are the unfused reference; the CUDA backend's ops may fuse
// (add_norm is already one op), defer or reorder work as long as the result is the same,
// and may record the whole sequence into a CUDA graph: the template branches only on the
// config, never on data, so one config always yields the same op sequence.
//
// Activations live in a few named buffers (act_buf); weights are named by (role, layer)
// (model/tensors.hpp), so each backend resolves them to its own storage (host fp32,
// device bf16/fp16, ...). Per-step state (positions, KV slots, block tables, which rows
// need logits) is the Ops object's business, prepared before forward() is called.
//
// Buffer widths, per token row:
//   res [C]  the residual stream        x [C]    normed input of a block
//   qkv [q_dim + 2 kv_dim]  q | k | v   att [q_dim]  attention output (heads concatenated)
//   proj [C] a block's output           ffn [2F (GLU) or F]   ffn_act [F]
#pragma once
#include <cmath>
#include <cstdint>

#include "model/model-config.hpp"
#include "model/tensors.hpp"

namespace infer {

enum class act_buf : uint8_t { res, x, qkv, att, proj, ffn, ffn_act };

constexpr tensor_role no_tensor = tensor_role::count_;  // "no bias" / "no norm bias"

struct norm_op {
  int layer;          // -1: per-model (out_norm)
  tensor_role w, b;   // b == no_tensor for RMSNorm and bias-free norms
  norm_kind kind;
  float eps;
  int dim;            // C
};

struct linear_op {
  int layer;
  tensor_role w, b;   // b == no_tensor: no bias
  act_buf in, out;
  int in_dim, out_dim;
  bool out_in;        // weight stored [out, in] (nn.Linear): out = in @ W^T; false: [in, out] (Conv1D)
};

struct head_norm_op {  // per-head RMSNorm of q and k inside the qkv buffer (Qwen3)
  int layer;
  int n_head, n_kv_head, head_dim;
  float eps;
};

struct rope_op {  // rotate q and k inside the qkv buffer at each token's position
  pos_kind kind;  // rope_neox or rope_interleaved
  int n_head, n_kv_head, head_dim, rot_dim;  // dims [0, rot_dim) of each head rotate, the rest pass
};

struct attention_op {
  int layer;
  int n_head, n_kv_head, head_dim;  // query head h reads KV head h / (n_head / n_kv_head)
  int window;                       // > 0: attend to positions p with pos - p < window
  float scale;                      // 1 / sqrt(head_dim)
};

// The op vocabulary (what an Ops type provides):
//   void embed();                          res = tok_embd[token] (+ pos_embd[pos] if learned)
//   void norm(const norm_op&, act_buf in, act_buf out);          out = norm(in); in == out allowed
//   void add_norm(const norm_op&, act_buf x, act_buf out);       res += x; out = norm(res)
//   void linear(const linear_op&);
//   void head_norm(const head_norm_op&);
//   void rope(const rope_op&);             cos/sin per position precomputed by the Ops (model/rope.hpp)
//   void kv_store(int layer);              k, v of qkv -> the layer's paged cache at each token's slot
//   void attention(const attention_op&);   att = softmax(q K^T * scale, causal + window) V over the cache
//   void glu(act_kind, int F);             ffn_act = act(ffn[:, :F]) * ffn[:, F:]
//   void activation(act_kind, int F);      ffn = act(ffn), in place
//   void residual(act_buf x);              res += x
//   void lm_head(const norm_op& out_norm, tensor_role head);  rows needing logits: norm, then @ head^T
template <class Ops>
void forward(Ops& ops, const model_config& c) {
  const int C = c.n_embd, F = c.ff_dim();
  const bool ln = c.norm == norm_kind::layernorm;
  auto nrm = [&](int l, tensor_role w, tensor_role b) {
    return norm_op{l, w, ln ? b : no_tensor, c.norm, c.ln_eps, C};
  };
  auto bias = [](bool has, tensor_role b) { return has ? b : no_tensor; };

  ops.embed();
  for (int l = 0; l < c.n_layer; ++l) {
    // The previous block's output joins the residual stream in the same op that norms it.
    const norm_op attn_norm = nrm(l, tensor_role::attn_norm_w, tensor_role::attn_norm_b);
    if (l == 0) ops.norm(attn_norm, act_buf::res, act_buf::x);
    else ops.add_norm(attn_norm, act_buf::proj, act_buf::x);

    ops.linear({l, tensor_role::qkv_w, bias(c.qkv_bias, tensor_role::qkv_b), act_buf::x, act_buf::qkv,
                C, c.qkv_dim(), c.linear_out_in});
    if (c.qk_norm) ops.head_norm({l, c.n_head, c.kv_heads(), c.head_dim(), c.ln_eps});
    if (c.uses_rope()) ops.rope({c.pos, c.n_head, c.kv_heads(), c.head_dim(), c.rot_dim()});
    ops.kv_store(l);
    ops.attention({l, c.n_head, c.kv_heads(), c.head_dim(), c.sliding_window,
                   float(1.0 / std::sqrt(double(c.head_dim())))});
    ops.linear({l, tensor_role::attn_out_w, bias(c.out_bias, tensor_role::attn_out_b), act_buf::att,
                act_buf::proj, c.q_dim(), C, c.linear_out_in});
    if (c.post_norms) ops.norm(nrm(l, tensor_role::post_attn_norm_w, no_tensor), act_buf::proj, act_buf::proj);

    ops.add_norm(nrm(l, tensor_role::ffn_norm_w, tensor_role::ffn_norm_b), act_buf::proj, act_buf::x);
    ops.linear({l, tensor_role::ffn_up_w, bias(c.mlp_bias, tensor_role::ffn_up_b), act_buf::x, act_buf::ffn,
                C, c.glu ? 2 * F : F, c.linear_out_in});
    if (c.glu) ops.glu(c.act, F);
    else ops.activation(c.act, F);
    ops.linear({l, tensor_role::ffn_down_w, bias(c.mlp_bias, tensor_role::ffn_down_b),
                c.glu ? act_buf::ffn_act : act_buf::ffn, act_buf::proj, F, C, c.linear_out_in});
    if (c.post_norms) ops.norm(nrm(l, tensor_role::post_ffn_norm_w, no_tensor), act_buf::proj, act_buf::proj);
  }
  ops.residual(act_buf::proj);
  ops.lm_head(nrm(-1, tensor_role::out_norm_w, tensor_role::out_norm_b),
              c.tied_head ? tensor_role::tok_embd : tensor_role::lm_head);
}

}  // namespace infer
