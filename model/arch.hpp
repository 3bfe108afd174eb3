// The architecture table: Hugging Face `architectures` / `model_type` -> our arch_id and
// its traits. Adding an architecture is one row here, one row set in model/tensors.cpp
// and, only if it needs a genuinely new op, a branch in model/forward.hpp
// (docs/adding-a-model.md walks through it).
#pragma once
#include <string>
#include <string_view>

#include "model/model-config.hpp"

namespace infer {

struct arch_traits {
  arch_id id;
  const char* name;            // our name, also the HF model_type ("llama", "glm4", ...)
  const char* hf_class;        // the HF `architectures` entry ("LlamaForCausalLM", ...)
  norm_kind norm;
  pos_kind pos;
  act_kind act;
  bool glu;
  bool linear_out_in;          // nn.Linear [out, in] on disk (false: Conv1D [in, out])
  bool qkv_bias;               // q/k/v bias when config.json has no attention_bias
  bool out_bias;               // o_proj / c_proj bias likewise
  bool mlp_bias;               // MLP biases likewise (mlp_bias key: Llama)
  bool attention_bias_qkv;     // config.json attention_bias sets qkv_bias (Llama, Qwen3, GLM-4)
  bool attention_bias_out;     // ... and out_bias (Llama, Qwen3; GLM-4's o_proj never has one)
  bool qk_norm;
  bool post_norms;
  bool tied_default;           // tie_word_embeddings when absent
  bool sliding_window;         // honours config.json sliding_window (Mistral, Phi-3)
  int32_t sliding_window_default;  // when config.json omits it (0: none)
  double partial_rotary_default;  // partial_rotary_factor when absent (GLM-4: 0.5)
  double rms_eps_default;      // rms_norm_eps when absent
  double rope_theta_default;
  int32_t max_pos_default;     // max_position_embeddings when absent
};

// The row for an HF `architectures` entry or `model_type`; nullptr when unknown.
const arch_traits* find_arch(std::string_view hf_name);
const arch_traits& arch_row(arch_id id);
// "GPT2LMHeadModel (gpt2), LlamaForCausalLM (llama), ...": for error messages and --help.
std::string supported_architectures();
// Copies a row's traits into cfg (arch, norm, pos, act, glu, layout, biases, norms, tie).
void apply_traits(const arch_traits& t, model_config& cfg);

}  // namespace infer
