// The device side of the sampling controls beyond the plain rule (cuda-kernels.hpp has
// that): logit adjustments (penalties, logit_bias, min_tokens bans) on a compact copy of
// the rows, so that the raw logits stay for logprobs, and logprobs of the raw distribution.
// min_p is applied by sample_sorted_forward itself (sampling_params::min_p).
//
// sample_fused_forward is the fast path over all of that (issue 16: under 10 % of a decode
// step): the sort path below is its fallback for the rows it cannot settle.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "base/sampling-params.hpp"

namespace infer::cuda {

// do_sample[i] == 2: a greedy sequence with adjustments; sample_sorted_forward settles it
// from its sorted (adjusted) row, overwriting what sample_greedy_forward took from the raw one.
constexpr uint8_t sample_adjusted = 2;

// Token counts held on the device (issue 16): one list per sequence slot, of the entries the
// scheduler would upload each step (logit_adjust: distinct tokens, counts, bias, flags),
// loaded from an uploaded list once per admission, then counted into by slot_count_forward
// after each step. Row i of a step uses slot[i]'s list where slot[i] >= 0.
struct count_slots {
  const int32_t* slot = nullptr;  // [N] per row, -1: the step's uploaded list; null: no slots
  logit_adjust* adj = nullptr;    // [slots, cap]
  int32_t* len = nullptr;         // [slots]
  float* raw = nullptr;           // [slots, cap] the fused kernel's scratch
  int cap = 0;                    // entries a slot holds
};

// Row i of compact [N, V] := row rows[i] of logits (stride ld); ids [N, V] := 0..V-1.
cudaError_t compact_rows_forward(float* compact, int32_t* ids, const float* logits, int ld,
                                 const int32_t* rows, int N, int V, cudaStream_t stream);
// Applies adjusted_logit to compact row i for adj[adj_start[i] .. adj_start[i + 1]).
cudaError_t adjust_rows_forward(float* compact, int V, int N, const int32_t* adj_start,
                                const logit_adjust* adj, const sampling_params* sp, cudaStream_t stream);
// The same where rows may use slots, with the min_tokens ban of adjust_stop entries from the
// rows' counters (adjusted_logit_at).
cudaError_t adjust_rows_forward(float* compact, int V, int N, const int32_t* adj_start, const logit_adjust* adj,
                                const sampling_params* sp, const uint64_t* counters, const count_slots& slots,
                                cudaStream_t stream);
// slot[i] := adj[adj_start[i] .. adj_start[i + 1]) where load[i] (at most cap entries).
cudaError_t slot_load_forward(const count_slots& slots, const int32_t* adj_start, const logit_adjust* adj,
                              const uint8_t* load, int N, cudaStream_t stream);
// Counts tokens[i] into slot[i] (count + 1, seen; a new entry if absent) where row i sampled
// and is penalized: the scheduler's count_token, so that the next step sees it.
cudaError_t slot_count_forward(const count_slots& slots, const int32_t* tokens, int N, int V,
                               const sampling_params* sp, const uint8_t* do_sample, cudaStream_t stream);
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

// The fast path: one block per row settles, without sorting the vocabulary, what
// adjust_rows + sort_compact + sample_sorted + logprobs_top + logprobs_gather settle:
//   0. the row's adjusted tokens (a sparse list) are set aside in adj_raw and marked in the
//      row, so that the dense reads below see only unadjusted logits;
//   1. one read: arg-max of the adjusted row (greedy rows end here), max and sum of exp
//      of the raw row (logprobs' lse), each thread's raw maximum (the logprobs threshold);
//   2. one read: a histogram of the probability mass (fixed point, integer atomics: the
//      same figures in any order) over bins of (max - logit) / temperature, with min_p
//      applied, and of the counts when top_k bounds the row;
//   3. one read: the elements of the few bins where top_p's cut and the draw can fall,
//      and the logprobs candidates, are gathered into shared memory and ranked there.
// The rule is cpu::sample_token's on cpu::apply_logit_adjust's row (mass sums differ only
// by rounding: 2^-40 fixed point here, fp32 sequential sums there); logprobs are
// cpu::log_softmax_top's. The adjusted tokens are restored before the kernel ends.
// A row whose candidates overflow shared memory is flagged in redo (redo[i]: its
// do_sample code where the token is left to the sort path, redo[N + i] = 1 where the
// logprobs are left to logprobs_top_forward): the caller runs those after the step.
// A grammar mask (issue 20) belongs in fused_view_value (cuda-sampling.cu): the one place
// every read of the sampling view goes through.
struct fused_sampling_args {
  int32_t* tokens;  // in: sample_greedy_forward's; out: the token of each row settled here
  float* logits;    // rows[i] of stride ld; adjusted entries are written and restored
  int ld, N, V;
  const int32_t* rows;
  const sampling_params* sp;
  const uint64_t* counters;
  const uint8_t* do_sample;
  const int32_t* adj_start;  // null: no adjustments in the step
  const logit_adjust* adj;
  float* adj_raw;            // one float per adjustment entry (scratch)
  float* logprob;            // [N], null where no row asks for logprobs
  int32_t* top_ids;          // [N, max_logprobs]
  float* top_lp;             // [N, max_logprobs]
  float* lse;                // [N]
  uint8_t* redo;             // [2N]
  count_slots slots;         // rows with slots.slot[i] >= 0 read their slot's list instead
};
cudaError_t sample_fused_forward(const fused_sampling_args& a, cudaStream_t stream);

}  // namespace infer::cuda
