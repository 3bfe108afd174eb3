// model_weights: a GPT-2 model's parameters as host fp32 arrays, Hugging Face Conv1D layout.
//
// Linear layers are stored [in, out] (row-major), so y = x @ W + b is a plain
// row-major GEMM. The LM head is tied to wte ([n_vocab, n_embd]).
// Pointers point either into a memory-mapped safetensors file (fp32 tensors)
// or into `owned` (converted fp16/bf16 tensors, synthetic models).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/model-config.hpp"
#include "engine/result.hpp"

namespace infer {

struct layer_weights {
  const float* ln1_w = nullptr;    // [C]
  const float* ln1_b = nullptr;    // [C]
  const float* qkv_w = nullptr;    // [C, 3C]   attn.c_attn
  const float* qkv_b = nullptr;    // [3C]
  const float* proj_w = nullptr;   // [C, C]    attn.c_proj
  const float* proj_b = nullptr;   // [C]
  const float* ln2_w = nullptr;    // [C]
  const float* ln2_b = nullptr;    // [C]
  const float* fc_w = nullptr;     // [C, 4C]   mlp.c_fc
  const float* fc_b = nullptr;     // [4C]
  const float* fcproj_w = nullptr; // [4C, C]   mlp.c_proj
  const float* fcproj_b = nullptr; // [C]
};

struct model_weights {
  model_config cfg;
  std::string source;          // "synthetic:tiny", or the directory
  const float* wte = nullptr;  // [V, C]  token embedding, also the LM head
  const float* wpe = nullptr;  // [P, C]  position embedding
  std::vector<layer_weights> layers;
  const float* lnf_w = nullptr;  // [C]
  const float* lnf_b = nullptr;  // [C]

  // Backing storage; the pointers above stay valid while this object lives.
  std::vector<std::vector<float>> owned;
  std::shared_ptr<void> mapping;  // keeps a memory-mapped file alive
};

// Seeded synthetic models that need no files.
//   "synthetic:tiny"       byte vocabulary (256), 4 layers, 128 wide: fast on 2 cores
//   "synthetic:gpt2-small" GPT-2 124M shape with the real 50,257-token vocabulary
result<model_config> synthetic_config(const std::string& name);
std::shared_ptr<model_weights> make_synthetic_weights(const model_config& cfg, uint64_t seed,
                                                      const std::string& source);

// Loads "synthetic:NAME" or a Hugging Face GPT-2 directory (config.json + model.safetensors).
result<std::shared_ptr<const model_weights>> load_model_weights(const std::string& spec,
                                                                uint64_t seed = 1234);

}  // namespace infer
