// cuda_device_weights: a model's weights on one device, by role (model/tensors.hpp), in
// the model's device type (fp16 for GPT-2, bf16 or fp16 for the Llama family) with norm
// weights and biases in fp32; shared by every backend of that device. The token
// embedding and the untied LM head are padded with zero rows to a multiple of 64 so the
// LM-head GEMM's output rows stay aligned; the sampler only reads the first n_vocab
// columns.
//
// Two ways up: from host fp32 model_weights (what the service loads today), or streamed
// straight from a checkpoint (model/weights.hpp open_checkpoint + visit: one shard mapped
// at a time, each tensor converted through a small pinned staging buffer) or a synthetic
// spec, so the model never sits in host memory as a whole.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gpu/cuda-resources.hpp"
#include "kernels/cuda-kernels.hpp"
#include "model/weights.hpp"

namespace infer::gpu {

// Norm weights and biases (the kernels' fp32 operands); every other role is 16-bit.
bool role_on_device_fp32(tensor_role r);

struct cuda_device_weights {
  model_config cfg;
  int device = 0;
  cuda::dtype dt = cuda::dtype::f16;
  int32_t vocab_padded = 0;  // rows of tok_embd / lm_head on the device
  std::string source;

  // nullptr where the model has no such tensor.
  const void* get(tensor_role r, int layer = -1) const {
    return ptrs[size_t(role_is_layer(r) ? layer + 1 : 0) * k_n_roles + size_t(r)];
  }
  const float* f32(tensor_role r, int layer = -1) const {
    return static_cast<const float*>(get(r, layer));
  }
  // The LM head: lm_head, or tok_embd when tied.
  const void* head() const {
    const void* h = get(tensor_role::lm_head);
    return h ? h : get(tensor_role::tok_embd);
  }

  std::vector<const void*> ptrs;  // [(n_layer + 1) * k_n_roles]: per model, then per layer
  device_buffer storage;          // everything above lives here
};

// The device type for a model: GPT-2 is fp16 (its fused kernels are); the Llama family
// takes `requested` ("bf16" / "fp16"), or with "auto" the checkpoint's torch_dtype
// (float16 -> fp16, otherwise bf16: their native type, fp16 can overflow in real
// activations). Unknown names and bf16 for GPT-2 are invalid_argument errors.
result<cuda::dtype> resolve_device_dtype(const model_config& cfg, const std::string& requested);

// The device copy of host weights, uploaded on first use and shared while any backend
// holds it (keyed by the weights object, device and type).
result<std::shared_ptr<const cuda_device_weights>> acquire_cuda_device_weights(
    const std::shared_ptr<const model_weights>& weights, int device, cuda::dtype dt);

// Streams "synthetic:NAME" or a Hugging Face directory to the device without building
// host model_weights (shared likewise, keyed by spec, context, device and type).
result<std::shared_ptr<const cuda_device_weights>> acquire_cuda_device_weights(
    const std::string& spec, const load_options& opts, int device, const std::string& dtype);

}  // namespace infer::gpu
