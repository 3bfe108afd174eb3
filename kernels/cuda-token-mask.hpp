// Constrained decoding on the device (grammar/grammar.hpp): the allowed-token bitmasks of the
// constrained rows only, applied to the compact (adjusted) rows before the sorted sampler.
// Its own file, beside the sampler it feeds rather than inside it. CPU twin: cpu::apply_token_mask.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace infer::cuda {

// For k in [0, n_masked): compact row rows[k] (of V floats, stride V) := -inf wherever bit v
// of masks[k * words ..] is 0. Rows not listed are not touched (unconstrained rows cost nothing).
cudaError_t token_mask_rows_forward(float* compact, int V, const int32_t* rows, const uint32_t* masks, int words,
                                    int n_masked, cudaStream_t stream);

}  // namespace infer::cuda
