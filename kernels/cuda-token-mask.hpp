// Constrained decoding on the device (grammar/grammar.hpp): the allowed-token bitmasks of the
// constrained rows only (masks[r * words ..] for mask row r, whose sequence is seq_of_row[r]).
// Its own file, beside the sampler it feeds rather than inside it. CPU twin:
// cpu::apply_token_mask (then cpu::sample_token).
//   - rows that sample through the sorted path (temperature, or other logit adjustments):
//     their compact copy is masked before the sort (token_mask_rows_forward);
//   - greedy rows with nothing else to adjust: the best allowed id of the raw row is taken
//     directly (token_mask_greedy_forward), so they do not send the batch through the sort.
// Rows not listed are not touched: unconstrained rows cost nothing.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace infer::cuda {

// For each r in list[0, n): compact row seq_of_row[r] (V floats, stride V) := -inf wherever
// bit v of mask row r is 0.
cudaError_t token_mask_rows_forward(float* compact, int V, const int32_t* seq_of_row, const int32_t* list, int n,
                                    const uint32_t* masks, int words, cudaStream_t stream);
// For each r in list[0, n), s = seq_of_row[r]: tokens[s] := the allowed id with the largest
// logit in row rows[s] of logits (stride ld), the lowest id on a tie (0 if none is allowed).
cudaError_t token_mask_greedy_forward(int32_t* tokens, const float* logits, int ld, const int32_t* rows,
                                      const int32_t* seq_of_row, const int32_t* list, int n, const uint32_t* masks,
                                      int words, int V, cudaStream_t stream);

}  // namespace infer::cuda
