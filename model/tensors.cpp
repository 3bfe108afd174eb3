#include "model/tensors.hpp"

#include <cmath>

#include <fmt/format.h>

namespace infer {

const char* role_name(tensor_role r) {
  static const char* const k[] = {
      "tok_embd",   "pos_embd",   "out_norm_w", "out_norm_b",       "lm_head",    "attn_norm_w",
      "attn_norm_b", "qkv_w",     "qkv_b",      "q_norm_w",         "k_norm_w",   "attn_out_w",
      "attn_out_b", "post_attn_norm_w", "ffn_norm_w", "ffn_norm_b", "ffn_up_w",   "ffn_up_b",
      "ffn_down_w", "ffn_down_b", "post_ffn_norm_w"};
  static_assert(sizeof(k) / sizeof(k[0]) == k_n_roles);
  return r < tensor_role::count_ ? k[int(r)] : "none";
}

std::vector<int64_t> role_shape(const model_config& c, tensor_role r) {
  const int64_t V = c.n_vocab, C = c.n_embd, F = c.ff_dim(), U = c.glu ? 2 * F : F;
  const int64_t Q = c.q_dim(), QKV = c.qkv_dim(), hd = c.head_dim();
  const bool ln = c.norm == norm_kind::layernorm, oi = c.linear_out_in;
  auto mat = [oi](int64_t out, int64_t in) { return oi ? std::vector<int64_t>{out, in} : std::vector<int64_t>{in, out}; };
  using R = tensor_role;
  switch (r) {
    case R::tok_embd: return {V, C};
    case R::pos_embd: return c.pos == pos_kind::learned ? std::vector<int64_t>{c.n_positions(), C} : std::vector<int64_t>{};
    case R::out_norm_w: return {C};
    case R::out_norm_b: return ln ? std::vector<int64_t>{C} : std::vector<int64_t>{};
    case R::lm_head: return c.tied_head ? std::vector<int64_t>{} : std::vector<int64_t>{V, C};
    case R::attn_norm_w: return {C};
    case R::attn_norm_b: return ln ? std::vector<int64_t>{C} : std::vector<int64_t>{};
    case R::qkv_w: return mat(QKV, C);
    case R::qkv_b: return c.qkv_bias ? std::vector<int64_t>{QKV} : std::vector<int64_t>{};
    case R::q_norm_w:
    case R::k_norm_w: return c.qk_norm ? std::vector<int64_t>{hd} : std::vector<int64_t>{};
    case R::attn_out_w: return mat(C, Q);
    case R::attn_out_b: return c.out_bias ? std::vector<int64_t>{C} : std::vector<int64_t>{};
    case R::post_attn_norm_w: return c.post_norms ? std::vector<int64_t>{C} : std::vector<int64_t>{};
    case R::ffn_norm_w: return {C};
    case R::ffn_norm_b: return ln ? std::vector<int64_t>{C} : std::vector<int64_t>{};
    case R::ffn_up_w: return mat(U, C);
    case R::ffn_up_b: return c.mlp_bias ? std::vector<int64_t>{U} : std::vector<int64_t>{};
    case R::ffn_down_w: return mat(C, F);
    case R::ffn_down_b: return c.mlp_bias ? std::vector<int64_t>{C} : std::vector<int64_t>{};
    case R::post_ffn_norm_w: return c.post_norms ? std::vector<int64_t>{C} : std::vector<int64_t>{};
    case R::count_: break;
  }
  return {};
}

namespace {

int64_t numel(const std::vector<int64_t>& s) {
  if (s.empty()) return 0;
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

// Synthetic init per role (GPT-2's initialiser: N(0, 0.02), residual projections scaled by
// 1/sqrt(2 n_layer), norm weights around 1, small non-zero biases so tests exercise them).
void init_of(const model_config& c, tensor_role r, float& mean, float& stddev) {
  using R = tensor_role;
  mean = 0.0f;
  stddev = 0.02f;
  switch (r) {
    case R::pos_embd: stddev = 0.01f; break;
    case R::out_norm_w: case R::attn_norm_w: case R::ffn_norm_w: case R::q_norm_w: case R::k_norm_w:
    case R::post_attn_norm_w: case R::post_ffn_norm_w: mean = 1.0f; break;
    case R::attn_out_w: case R::ffn_down_w:
      stddev = 0.02f / std::sqrt(2.0f * float(c.n_layer > 0 ? c.n_layer : 1));
      break;
    default: break;
  }
}

struct table_builder {
  const model_config& c;
  const std::string& prefix;
  std::vector<tensor_spec>& out;
  // Adds a tensor that fills the whole role array (when the model has the role).
  void whole(tensor_role r, int layer, const std::string& name) {
    auto shape = role_shape(c, r);
    if (shape.empty()) return;
    add(r, layer, name, std::move(shape), 0);
  }
  // Adds a tensor filling rows [row, row + rows) of the role array.
  void part(tensor_role r, int layer, const std::string& name, int64_t row, int64_t rows) {
    auto shape = role_shape(c, r);
    if (shape.empty()) return;
    shape[0] = rows;
    add(r, layer, name, std::move(shape), row);
  }
  void add(tensor_role r, int layer, const std::string& name, std::vector<int64_t> shape, int64_t row) {
    tensor_spec s;
    s.hf_name = prefix + name;
    s.role = r;
    s.layer = layer;
    s.shape = std::move(shape);
    s.row_offset = row;
    init_of(c, r, s.init_mean, s.init_std);
    out.push_back(std::move(s));
  }
};

void gpt2_head(table_builder& b) {
  b.whole(tensor_role::tok_embd, -1, "wte.weight");
  b.whole(tensor_role::pos_embd, -1, "wpe.weight");
}
void gpt2_layer(table_builder& b, int l) {
  using R = tensor_role;
  const std::string h = fmt::format("h.{}.", l);
  b.whole(R::attn_norm_w, l, h + "ln_1.weight");
  b.whole(R::attn_norm_b, l, h + "ln_1.bias");
  b.whole(R::qkv_w, l, h + "attn.c_attn.weight");
  b.whole(R::qkv_b, l, h + "attn.c_attn.bias");
  b.whole(R::attn_out_w, l, h + "attn.c_proj.weight");
  b.whole(R::attn_out_b, l, h + "attn.c_proj.bias");
  b.whole(R::ffn_norm_w, l, h + "ln_2.weight");
  b.whole(R::ffn_norm_b, l, h + "ln_2.bias");
  b.whole(R::ffn_up_w, l, h + "mlp.c_fc.weight");
  b.whole(R::ffn_up_b, l, h + "mlp.c_fc.bias");
  b.whole(R::ffn_down_w, l, h + "mlp.c_proj.weight");
  b.whole(R::ffn_down_b, l, h + "mlp.c_proj.bias");
}
void gpt2_tail(table_builder& b) {
  b.whole(tensor_role::out_norm_w, -1, "ln_f.weight");
  b.whole(tensor_role::out_norm_b, -1, "ln_f.bias");
}

// The Llama family's names (LlamaForCausalLM and the models derived from it).
void llama_head(table_builder& b) { b.whole(tensor_role::tok_embd, -1, "model.embed_tokens.weight"); }
void llama_layer(table_builder& b, int l) {
  using R = tensor_role;
  const model_config& c = b.c;
  const std::string h = fmt::format("model.layers.{}.", l);
  const int64_t Q = c.q_dim(), KV = c.kv_dim(), F = c.ff_dim();
  // Checkpoints that store a projection already fused in our layout (q|k|v rows, gate|up rows).
  const bool fused_qkv = c.arch == arch_id::phi3;
  const bool fused_gate_up = c.arch == arch_id::glm4 || c.arch == arch_id::phi3;
  b.whole(R::attn_norm_w, l, h + "input_layernorm.weight");
  if (fused_qkv) {
    b.whole(R::qkv_w, l, h + "self_attn.qkv_proj.weight");
  } else {
    b.part(R::qkv_w, l, h + "self_attn.q_proj.weight", 0, Q);
    b.part(R::qkv_w, l, h + "self_attn.k_proj.weight", Q, KV);
    b.part(R::qkv_w, l, h + "self_attn.v_proj.weight", Q + KV, KV);
    b.part(R::qkv_b, l, h + "self_attn.q_proj.bias", 0, Q);
    b.part(R::qkv_b, l, h + "self_attn.k_proj.bias", Q, KV);
    b.part(R::qkv_b, l, h + "self_attn.v_proj.bias", Q + KV, KV);
  }
  b.whole(R::q_norm_w, l, h + "self_attn.q_norm.weight");
  b.whole(R::k_norm_w, l, h + "self_attn.k_norm.weight");
  b.whole(R::attn_out_w, l, h + "self_attn.o_proj.weight");
  b.whole(R::attn_out_b, l, h + "self_attn.o_proj.bias");
  // GLM-4 names its four norms differently: post_attention_layernorm is the pre-MLP norm
  // there as in Llama; the two extra ones are post_self_attn_ and post_mlp_layernorm.
  b.whole(R::post_attn_norm_w, l, h + "post_self_attn_layernorm.weight");
  b.whole(R::ffn_norm_w, l, h + "post_attention_layernorm.weight");
  if (fused_gate_up) {
    b.whole(R::ffn_up_w, l, h + "mlp.gate_up_proj.weight");  // chunk(2): gate rows, then up
  } else {
    b.part(R::ffn_up_w, l, h + "mlp.gate_proj.weight", 0, F);
    b.part(R::ffn_up_w, l, h + "mlp.up_proj.weight", F, F);
    b.part(R::ffn_up_b, l, h + "mlp.gate_proj.bias", 0, F);
    b.part(R::ffn_up_b, l, h + "mlp.up_proj.bias", F, F);
  }
  b.whole(R::ffn_down_w, l, h + "mlp.down_proj.weight");
  b.whole(R::ffn_down_b, l, h + "mlp.down_proj.bias");
  b.whole(R::post_ffn_norm_w, l, h + "post_mlp_layernorm.weight");
}
void llama_tail(table_builder& b) {
  b.whole(tensor_role::out_norm_w, -1, "model.norm.weight");
  b.whole(tensor_role::lm_head, -1, "lm_head.weight");
}

}  // namespace

void tensor_table_part(const model_config& c, const std::string& prefix, int part,
                       std::vector<tensor_spec>& out) {
  table_builder b{c, prefix, out};
  const bool gpt2 = c.arch == arch_id::gpt2;
  if (part == -1) gpt2 ? gpt2_head(b) : llama_head(b);
  else if (part == -2) gpt2 ? gpt2_tail(b) : llama_tail(b);
  else gpt2 ? gpt2_layer(b, part) : llama_layer(b, part);
}

std::vector<tensor_spec> tensor_table(const model_config& c, const std::string& prefix) {
  std::vector<tensor_spec> out;
  tensor_table_part(c, prefix, -1, out);
  for (int l = 0; l < c.n_layer; ++l) tensor_table_part(c, prefix, l, out);
  tensor_table_part(c, prefix, -2, out);
  return out;
}

int64_t model_config::n_params() const {
  int64_t n = 0;
  for (int r = 0; r < k_n_roles; ++r) {
    const auto role = tensor_role(r);
    n += numel(role_shape(*this, role)) * (role_is_layer(role) ? int64_t(n_layer) : 1);
  }
  return n;
}

}  // namespace infer
