// config.json -> model_config: one table-driven parser for every architecture.
//
// Keys (Hugging Face names): architectures / model_type, vocab_size, hidden_size (n_embd),
// intermediate_size (n_inner), num_hidden_layers (n_layer), num_attention_heads (n_head),
// num_key_value_heads (null -> heads), head_dim (null -> hidden / heads), rms_norm_eps /
// layer_norm_epsilon, hidden_act / activation_function, tie_word_embeddings, attention_bias,
// max_position_embeddings (n_positions), partial_rotary_factor, sliding_window
// (+ use_sliding_window for Qwen), bos_token_id / eos_token_id (int or list), torch_dtype
// (or dtype), RoPE as rope_theta + rope_scaling or as rope_parameters, with rope types
// default, linear and llama3.
//
// Errors name the file and the key: an unknown architecture lists the supported ones; a
// quantization_config, a rope type we do not implement, or an option that would change
// the math (GPT-2's scale_attn_by_inverse_layer_idx, ...) is refused, never ignored.
#pragma once
#include <cstdint>
#include <string>

#include <nlohmann/json_fwd.hpp>

#include "base/result.hpp"
#include "model/model-config.hpp"

namespace infer {

// `path` names the file in errors. n_ctx is set to max_position_embeddings; apply
// serve_context() to cap it.
result<model_config> parse_hf_config(const nlohmann::json& j, const std::string& path);
result<model_config> read_hf_config(const std::string& config_json_path);

// n_ctx = min(n_positions(), max_model_len) (max_model_len <= 0: no cap).
void serve_context(model_config& cfg, int32_t max_model_len);

}  // namespace infer
