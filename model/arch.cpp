#include "model/arch.hpp"

#include <fmt/format.h>

namespace infer {
namespace {

using N = norm_kind;
using P = pos_kind;
using A = act_kind;

// One row per architecture. Defaults are those of the HF config class when config.json
// omits the key (LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config, Glm4Config,
// Phi3Config).
// clang-format off
const arch_traits k_arch[] = {
  //  id              name       hf_class              norm        pos                  act          glu    out_in qkv_b  out_b  mlp_b  ab_qkv ab_out qknorm post   tied   sw     swdef  rot  eps        theta     max_pos
  {arch_id::gpt2,    "gpt2",    "GPT2LMHeadModel",    N::layernorm, P::learned,         A::gelu_tanh, false, false, true,  true,  true,  false, false, false, false, true,  false, 0,     1.0, 1e-5,      0.0,      1024},
  {arch_id::llama,   "llama",   "LlamaForCausalLM",   N::rmsnorm,  P::rope_neox,        A::silu,      true,  true,  false, false, false, true,  true,  false, false, false, false, 0,     1.0, 1e-6,      10000.0,  2048},
  {arch_id::mistral, "mistral", "MistralForCausalLM", N::rmsnorm,  P::rope_neox,        A::silu,      true,  true,  false, false, false, false, false, false, false, false, true,  4096,  1.0, 1e-6,      10000.0,  4096 * 32},
  {arch_id::qwen2,   "qwen2",   "Qwen2ForCausalLM",   N::rmsnorm,  P::rope_neox,        A::silu,      true,  true,  true,  false, false, false, false, false, false, false, false, 0,     1.0, 1e-6,      10000.0,  32768},
  {arch_id::qwen3,   "qwen3",   "Qwen3ForCausalLM",   N::rmsnorm,  P::rope_neox,        A::silu,      true,  true,  false, false, false, true,  true,  true,  false, false, false, 0,     1.0, 1e-6,      10000.0,  32768},
  {arch_id::glm4,    "glm4",    "Glm4ForCausalLM",    N::rmsnorm,  P::rope_interleaved, A::silu,      true,  true,  true,  false, false, true,  false, false, true,  false, false, 0,     0.5, 1.5625e-7, 10000.0,  131072},
  {arch_id::phi3,    "phi3",    "Phi3ForCausalLM",    N::rmsnorm,  P::rope_neox,        A::silu,      true,  true,  false, false, false, false, false, false, false, false, true,  0,     1.0, 1e-5,      10000.0,  4096},
};
// clang-format on

}  // namespace

const arch_traits* find_arch(std::string_view hf_name) {
  for (const auto& a : k_arch)
    if (hf_name == a.name || hf_name == a.hf_class) return &a;
  return nullptr;
}

const arch_traits& arch_row(arch_id id) {
  for (const auto& a : k_arch)
    if (a.id == id) return a;
  return k_arch[0];
}

const char* arch_name(arch_id a) { return arch_row(a).name; }

std::string supported_architectures() {
  std::string s;
  for (const auto& a : k_arch) s += fmt::format("{}{} ({})", s.empty() ? "" : ", ", a.hf_class, a.name);
  return s;
}

void apply_traits(const arch_traits& t, model_config& c) {
  c.arch = t.id;
  c.norm = t.norm;
  c.pos = t.pos;
  c.act = t.act;
  c.glu = t.glu;
  c.linear_out_in = t.linear_out_in;
  c.qkv_bias = t.qkv_bias;
  c.out_bias = t.out_bias;
  c.mlp_bias = t.mlp_bias;
  c.qk_norm = t.qk_norm;
  c.post_norms = t.post_norms;
  c.tied_head = t.tied_default;
  c.rope = rope_config{};
  if (t.pos != pos_kind::learned) {
    c.rope.type = rope_type::default_;
    c.rope.theta = t.rope_theta_default;
  }
}

}  // namespace infer
