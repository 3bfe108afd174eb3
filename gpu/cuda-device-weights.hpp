// cuda_device_weights: a model's weights converted to fp16 (LayerNorm parameters fp32)
// and uploaded to one device, shared by every backend of that device. The LM head (the
// tied wte) is padded with zero rows to a multiple of 64 so its GEMM output rows stay
// aligned; the sampler only reads the first n_vocab columns.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include <cuda_fp16.h>

#include "engine/model-weights.hpp"
#include "gpu/cuda-resources.hpp"

namespace infer::gpu {

struct cuda_layer_weights {
  const float* ln1_w = nullptr;
  const float* ln1_b = nullptr;
  const __half* qkv_w = nullptr;
  const __half* qkv_b = nullptr;
  const __half* proj_w = nullptr;
  const __half* proj_b = nullptr;
  const float* ln2_w = nullptr;
  const float* ln2_b = nullptr;
  const __half* fc_w = nullptr;
  const __half* fc_b = nullptr;
  const __half* fcproj_w = nullptr;
  const __half* fcproj_b = nullptr;
};

struct cuda_device_weights {
  model_config cfg;
  int device = 0;
  int32_t vocab_padded = 0;     // rows of wte on the device
  const __half* wte = nullptr;  // [vocab_padded, C]
  const __half* wpe = nullptr;  // [n_ctx, C]
  std::vector<cuda_layer_weights> layers;
  const float* lnf_w = nullptr;
  const float* lnf_b = nullptr;
  device_buffer storage;        // everything above lives here
};

// The device copy of weights on device, uploaded on first use and shared while any
// backend holds it.
result<std::shared_ptr<const cuda_device_weights>> acquire_cuda_device_weights(
    const std::shared_ptr<const model_weights>& weights, int device);

}  // namespace infer::gpu
