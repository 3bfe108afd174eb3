// cpu_backend: the GPT-2 forward pass on the CPU (fp32, OpenBLAS GEMMs) over a ragged
// batch with a paged KV cache. It is the backend of CI and laptops, and the reference
// the CUDA backend is checked against.
#pragma once
#include <memory>

#include "engine/backend.hpp"
#include "model/weights.hpp"

namespace infer {

result<std::unique_ptr<backend>> make_cpu_backend(std::shared_ptr<const model_weights> weights,
                                                  const backend_options& opts);

}  // namespace infer
