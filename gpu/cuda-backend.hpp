// cuda_backend: the forward pass of model/forward.hpp on one CUDA device (GPT-2 in fp16,
// the Llama family in bf16 or fp16: weights, activations and paged KV cache; fp32
// residual stream and accumulation), implementing infer::backend. Each backend owns one
// CUDA stream, its cuBLASLt handle and workspace, its KV cache and its staging buffers;
// several backends (worker actors) on one device share the device copy of the weights
// (cuda_device_weights), which is uploaded once per (weights, device).
//
// A step is used from one thread at a time (its worker). Decode steps (one new token per
// sequence) replay a CUDA graph captured per batch-size bucket; every other step is
// launched kernel by kernel. Sampling runs on the device: only token ids (and logits,
// when asked for) come back.
#pragma once
#include <memory>

#include "engine/backend.hpp"
#include "model/weights.hpp"
#include "model/weights.hpp"

namespace infer {

// True where the CUDA runtime finds at least one device.
bool cuda_device_available();

// opts.dtype: auto (the checkpoint's torch_dtype; GPT-2 always fp16), bf16 or fp16.
result<std::unique_ptr<backend>> make_cuda_backend(std::shared_ptr<const model_weights> weights,
                                                   const backend_options& opts);
// Streams "synthetic:NAME" or a Hugging Face directory straight to the device (shard by
// shard, never the whole model in host memory); backends of one spec share the copy.
result<std::unique_ptr<backend>> make_cuda_backend(const std::string& spec,
                                                   const load_options& load,
                                                   const backend_options& opts);

// "bf16" / "fp16": the type a CUDA backend runs in; null where b is not one.
const char* cuda_backend_dtype(const backend& b);

// What a CUDA backend did, for benchmarks and tests.
struct cuda_backend_stats {
  int64_t steps = 0;
  int64_t graph_steps = 0;     // decode steps replayed from a captured graph
  int64_t graphs_captured = 0;
  int64_t weight_bytes = 0;    // device bytes of the shared weights
  int64_t kv_bytes = 0;        // device bytes of this backend's KV cache
  double gpu_ms = 0;           // summed stream time from the input copy to the token copy
  // Rows (sampling or logprobs) the fused sampler left to the sort path: candidates over
  // its shared memory (flat rows, ties, top_k in the far tail).
  int64_t sampling_fallback_rows = 0;
};
// Null where b is not a CUDA backend.
const cuda_backend_stats* cuda_backend_get_stats(const backend& b);

// Switches graph replay off (tests compare the two paths) or on.
void cuda_backend_set_graphs(backend& b, bool enabled);

// Sampling controls through the fused kernel (default) or the sort path it replaced (its
// fallback; tests and benchmarks compare the two).
void cuda_backend_set_fused_sampling(backend& b, bool enabled);

}  // namespace infer
