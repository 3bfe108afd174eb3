// The device side of the sampling controls beyond the plain rule (cuda-kernels.hpp has
// that): logit adjustments (penalties, logit_bias, min_tokens bans) on a compact copy of
// the rows, so that the raw logits stay for logprobs, and logprobs of the raw distribution.
// min_p is applied by sample_sorted_forward itself (sampling_params::min_p).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "base/sampling-params.hpp"

namespace infer::cuda {

// do_sample[i] == 2: a greedy sequence with adjustments; sample_sorted_forward settles it
// from its sorted (adjusted) row, overwriting what sample_greedy_forward took from the raw one.
constexpr uint8_t sample_adjusted = 2;

// Row i of compact [N, V] := row rows[i] of logits (stride ld); ids [N, V] := 0..V-1.
cudaError_t compact_rows_forward(float* compact, int32_t* ids, const float* logits, int ld,
                                 const int32_t* rows, int N, int V, cudaStream_t stream);
// Applies adjusted_logit to compact row i for adj[adj_start[i] .. adj_start[i + 1]).
cudaError_t adjust_rows_forward(float* compact, int V, int N, const int32_t* adj_start,
                                const logit_adjust* adj, const sampling_params* sp, cudaStream_t stream);
// Sorts the compact rows by (logit desc, id asc) into sorted_logits / sorted_ids.
// temp == nullptr: sets temp_bytes only.
cudaError_t sort_compact_forward(void* temp, size_t& temp_bytes, float* sorted_logits, int32_t* sorted_ids,
                                 const float* compact, const int32_t* ids, int N, int V, cudaStream_t stream);

// For each sampled row with sp[i].logprobs >= 0: lse[i] = log(sum exp(row)), and the
// sp[i].logprobs best ids (logit desc, id asc) with their logprobs in top_ids / top_lp
// [N, sampling_params::max_logprobs].
cudaError_t logprobs_top_forward(float* lse, int32_t* top_ids, float* top_lp, const float* logits, int ld,
                                 const int32_t* rows, int N, int V, const sampling_params* sp,
                                 const uint8_t* do_sample, cudaStream_t stream);
// logprob[i] = row[tokens[i]] - lse[i] where logprobs are asked.
cudaError_t logprobs_gather_forward(float* logprob, const int32_t* tokens, const float* lse, const float* logits,
                                    int ld, const int32_t* rows, int N, const sampling_params* sp,
                                    const uint8_t* do_sample, cudaStream_t stream);

}  // namespace infer::cuda
