// The tensor table: for each architecture, every checkpoint tensor's Hugging Face name,
// its shape from the hyper-parameters, and where it lands in our layout. The loader
// (model/weights.cpp) and the synthetic-weight maker both walk it, so the two cannot
// disagree; a backend uploading weights walks the *roles* (model_weights::get).
//
// Our layout ("roles"): one array per role and layer, fp32 on the host.
//   qkv_w   fused q|k|v. Llama family: [q_dim + 2 kv_dim, C] (nn.Linear [out, in]): q_proj
//           rows first, then k_proj, then v_proj. GPT-2: c_attn as on disk, [C, 3C] (Conv1D).
//   ffn_up_w  GLU families: fused gate|up [2 F, C], gate rows first (GLM-4's gate_up_proj is
//           already so); GPT-2: c_fc [C, 4C].
//   the other matrices as on disk (nn.Linear [out, in], or Conv1D [in, out] for GPT-2).
// A source tensor fills rows [row_offset, row_offset + shape[0]) of its role's array:
// fusing at load time is a copy into a slice, no second pass.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/model-config.hpp"

namespace infer {

enum class tensor_role : uint8_t {
  // per model
  tok_embd,     // [V, C]
  pos_embd,     // [n_positions, C]          learned positions only
  out_norm_w,   // [C]
  out_norm_b,   // [C]                       layernorm only
  lm_head,      // [V, C]                    untied heads only
  // per layer
  attn_norm_w, attn_norm_b,   // [C]         (b: layernorm only)
  qkv_w, qkv_b,               // see above; b [qkv_dim]
  q_norm_w, k_norm_w,         // [head_dim]  qk_norm only
  attn_out_w, attn_out_b,     // [C, q_dim] (Linear) / [C, C] (Conv1D); b [C]
  post_attn_norm_w,           // [C]         post_norms only
  ffn_norm_w, ffn_norm_b,     // [C]
  ffn_up_w, ffn_up_b,         // see above; b [2F] or [F]
  ffn_down_w, ffn_down_b,     // [C, F] (Linear) / [F, C] (Conv1D); b [C]
  post_ffn_norm_w,            // [C]         post_norms only
  count_,
};
constexpr int k_n_roles = int(tensor_role::count_);
constexpr bool role_is_layer(tensor_role r) { return r >= tensor_role::attn_norm_w; }
const char* role_name(tensor_role r);

// The full shape of a role's array in our layout; empty when the model has no such tensor.
std::vector<int64_t> role_shape(const model_config& cfg, tensor_role r);

struct tensor_spec {
  std::string hf_name;           // full checkpoint name, e.g. "model.layers.3.self_attn.q_proj.weight"
  tensor_role role;
  int32_t layer = -1;            // -1 for per-model roles
  std::vector<int64_t> shape;    // on disk
  int64_t row_offset = 0;        // first row of the role array this tensor fills
  // Synthetic init: N(mean, stddev); norms get mean 1.
  float init_mean = 0.0f;
  float init_std = 0.02f;
};

// Every tensor the architecture of `cfg` reads, in checkpoint order (per-model first, then
// layer by layer). `prefix` is prepended to every name: GPT-2 checkpoints saved from
// GPT2LMHeadModel say "transformer.", GPT2Model ""; Llama-family names are absolute
// ("model.layers...", "lm_head.weight") and prefix is "".
std::vector<tensor_spec> tensor_table(const model_config& cfg, const std::string& prefix = "");
// One part of the table appended to out: part -1 the leading per-model tensors (embeddings),
// 0..n_layer-1 a layer, -2 the trailing ones (final norm, untied head). tensor_table is
// head, layers, tail; a loader walks parts so that a config claiming 2^31 layers fails at
// the first missing tensor instead of building the table.
void tensor_table_part(const model_config& cfg, const std::string& prefix, int part,
                       std::vector<tensor_spec>& out);

}  // namespace infer
