// model_weights: a model's parameters as host fp32 arrays in our layout (model/tensors.hpp),
// and the two ways to get them: the Hugging Face directory loader and seeded synthetic models.
//
// Pointers point either into a memory-mapped safetensors shard (fp32 tensors that need no
// fusing) or into `owned` (converted fp16/bf16 tensors, fused q|k|v and gate|up, synthetic
// models). Roles a model does not have are nullptr.
//
// A backend that keeps weights elsewhere (the CUDA backend, in bf16) need not build this:
// open_checkpoint + checkpoint::visit hand it every tensor straight from the mapped shard,
// one shard mapped at a time, and visit_synthetic generates tensor by tensor, so the whole
// model never exists twice in host memory.
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "base/result.hpp"
#include "base/safetensors.hpp"
#include "model/model-config.hpp"
#include "model/tensors.hpp"

namespace infer {

// Field names are GPT-2's historical ones; the comment gives the role each one holds for
// every architecture (model_weights::get maps roles to fields).
struct layer_weights {
  const float* ln1_w = nullptr;    // attn_norm_w
  const float* ln1_b = nullptr;    // attn_norm_b
  const float* qkv_w = nullptr;    // qkv_w   (GPT-2 [C, 3C]; Llama family [qkv_dim, C])
  const float* qkv_b = nullptr;    // qkv_b
  const float* proj_w = nullptr;   // attn_out_w
  const float* proj_b = nullptr;   // attn_out_b
  const float* ln2_w = nullptr;    // ffn_norm_w
  const float* ln2_b = nullptr;    // ffn_norm_b
  const float* fc_w = nullptr;     // ffn_up_w (GLU: gate|up [2F, C])
  const float* fc_b = nullptr;     // ffn_up_b
  const float* fcproj_w = nullptr; // ffn_down_w
  const float* fcproj_b = nullptr; // ffn_down_b
  const float* q_norm_w = nullptr;        // q_norm_w
  const float* k_norm_w = nullptr;        // k_norm_w
  const float* post_attn_norm_w = nullptr;  // post_attn_norm_w
  const float* post_ffn_norm_w = nullptr;   // post_ffn_norm_w
};

struct model_weights {
  model_config cfg;
  std::string source;          // "synthetic:tiny", or the directory
  const float* wte = nullptr;  // tok_embd [V, C], also the LM head when tied
  const float* wpe = nullptr;  // pos_embd [n_positions, C] (learned positions only)
  std::vector<layer_weights> layers;
  const float* lnf_w = nullptr;  // out_norm_w
  const float* lnf_b = nullptr;  // out_norm_b
  const float* lm_head = nullptr;  // [V, C] untied head; nullptr when tied

  // The array of a role (layer ignored for per-model roles); nullptr when absent.
  const float* get(tensor_role r, int layer = -1) const;
  void set(tensor_role r, int layer, const float* p);
  // The LM head actually used: lm_head, or wte when tied.
  const float* head() const { return lm_head ? lm_head : wte; }

  // Backing storage; the pointers above stay valid while this object lives.
  std::vector<std::vector<float>> owned;
  std::vector<std::shared_ptr<void>> mappings;  // memory-mapped shards still pointed into
  std::shared_ptr<void> mapping;                // (compat) the first of them, or null
};

// ---- synthetic models --------------------------------------------------------------
// "synthetic:NAME": seeded random weights of a known shape, no files.
//   tiny, gpt2-small                    GPT-2 (tiny: byte vocabulary)
//   llama-tiny                          Llama, GQA (8 heads, 2 KV heads), byte vocabulary padded: CI's model
//   llama3.2-1b, llama3.1-8b, qwen2.5-0.5b, qwen3-0.6b, glm4-9b, phi3-mini   real shapes for benchmarks
// The config is what the real model's config.json gives (parse_hf_config of it).
result<model_config> synthetic_config(const std::string& name);
std::string synthetic_names();  // "tiny, gpt2-small, llama-tiny, ..."
std::shared_ptr<model_weights> make_synthetic_weights(const model_config& cfg, uint64_t seed,
                                                      const std::string& source);
// The same values, one tensor_table entry at a time (data valid during the call only).
status visit_synthetic(const model_config& cfg, uint64_t seed,
                       const std::function<status(const tensor_spec&, std::span<const float>)>& fn);

// ---- Hugging Face directories --------------------------------------------------------
// config.json + model.safetensors, or model.safetensors.index.json + its shards.
struct checkpoint {
  model_config cfg;
  std::string dir;
  std::string prefix;               // "transformer." for GPT2LMHeadModel checkpoints, else ""
  std::vector<std::string> shards;  // shard file paths, in visiting order
  std::vector<tensor_spec> table;   // tensor_table(cfg, prefix)
  std::vector<int32_t> shard_of;    // [table.size()] index into shards
  std::string torch_dtype() const { return cfg.torch_dtype; }
  // Calls fn for every table entry, shard by shard: each shard is mapped, its tensors
  // checked (present, shape, readable dtype) and handed over with the shard (path() for
  // errors; mapping() to keep it mapped past the call), then it is unmapped.
  // Errors name the shard file and the tensor.
  status visit(const std::function<status(const tensor_spec&, const st_tensor_view&,
                                          const safetensors_file& shard)>& fn) const;
};
// Reads config.json (max_model_len caps n_ctx, see serve_context) and the index; checks
// that every shard exists and every table tensor is listed. Nothing is mapped yet.
result<checkpoint> open_checkpoint(const std::string& dir, int32_t max_model_len = 0);

struct load_options {
  uint64_t seed = 1234;        // synthetic models
  int32_t max_model_len = 0;   // > 0: serve at most this context (n_ctx = min(max_position_embeddings, it))
  int64_t host_memory_limit = 0;  // bytes the fp32 weights may take; 0: host_memory_available()
};

// Loads "synthetic:NAME" or a Hugging Face directory as host fp32.
result<std::shared_ptr<const model_weights>> load_model_weights(const std::string& spec,
                                                                const load_options& opts);
result<std::shared_ptr<const model_weights>> load_model_weights(const std::string& spec,
                                                                uint64_t seed = 1234);

// The config alone (no weights read): for memory checks before loading.
result<model_config> load_model_config(const std::string& spec, int32_t max_model_len = 0);

// Host bytes available to a new allocation (MemAvailable, capped by a cgroup limit).
int64_t host_memory_available();

}  // namespace infer
