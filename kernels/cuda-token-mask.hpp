// Constrained decoding on the device (grammar/grammar.hpp): the allowed-token bitmasks of the
// constrained rows only, applied to their logits in place before the sampler, which then
// settles those rows (they count as adjusted: cuda::sample_adjusted). Its own file, beside
// the sampler it feeds rather than inside it. CPU twin: cpu::apply_token_mask.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace infer::cuda {

// For each mask row r in [0, n) of sequence s = seq_of_row[r]: logits row rows[s] (stride ld,
// V ids) := -inf wherever bit v of masks[r * words ..] is 0. Rows of other sequences are not
// touched: unconstrained rows cost nothing.
cudaError_t token_mask_rows_forward(float* logits, int ld, const int32_t* rows, const int32_t* seq_of_row, int n,
                                    const uint32_t* masks, int words, int V, cudaStream_t stream);

}  // namespace infer::cuda
