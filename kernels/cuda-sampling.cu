// Sampling on the device (the rule of cpu::sample_token), so that only token ids come
// back to the host. Greedy rows need one arg-max pass; the other rows need the order
// (logit desc, id asc), which a stable segmented radix sort gives (ids enter ascending,
// so equal logits keep ascending ids), then one block per row walks the sorted row.
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/iterator/transform_iterator.h>

#include "kernels/cuda-kernels.hpp"
#include "kernels/cuda-sampling.hpp"

namespace infer::cuda {
namespace {

constexpr int greedy_threads = 512;
constexpr int sorted_threads = 512;

// Arg-max with the lowest id winning ties.
__device__ inline void better(float& bv, int& bi, float v, int i) {
  if (v > bv || (v == bv && i < bi)) {
    bv = v;
    bi = i;
  }
}

__global__ void sample_greedy_kernel(int32_t* tokens, const float* logits, int ld,
                                     const int32_t* rows, int V, const sampling_params* sp,
                                     const uint8_t* do_sample) {
  const int r = blockIdx.x;
  if (!do_sample[r]) {
    if (threadIdx.x == 0) tokens[r] = -1;
    return;
  }
  if (!sp[r].greedy()) return;  // left to sample_sorted_forward
  const float* row = logits + size_t(rows[r]) * ld;
  float bv = -INFINITY;
  int bi = 0x7fffffff;
  for (int i = threadIdx.x; i < V; i += greedy_threads) better(bv, bi, row[i], i);
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    better(bv, bi, ov, oi);
  }
  __shared__ float s_v[greedy_threads / 32];
  __shared__ int s_i[greedy_threads / 32];
  const int w = threadIdx.x / 32;
  if (threadIdx.x % 32 == 0) {
    s_v[w] = bv;
    s_i[w] = bi;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int k = 1; k < greedy_threads / 32; ++k) better(bv, bi, s_v[k], s_i[k]);
    // All -inf or NaN rows: fall back to id 0 like an arg-max that never improves.
    tokens[r] = bi == 0x7fffffff ? 0 : bi;
  }
}

__global__ void compact_rows_kernel(float* compact, int32_t* ids, const float* logits, int ld,
                                    const int32_t* rows, int V) {
  const int r = blockIdx.y;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= V) return;
  compact[size_t(r) * V + i] = logits[size_t(rows[r]) * ld + i];
  ids[size_t(r) * V + i] = i;
}

struct row_offset {
  int V;
  __host__ __device__ int operator()(int r) const { return r * V; }
};

// First index i < n of a non-decreasing row with row[i] > x (or >= x), n if none.
template <bool strict>
__device__ int first_index(const float* row, int n, float x, int* s_found) {
  if (threadIdx.x == 0) *s_found = n;
  __syncthreads();
  for (int base = 0; base < n; base += sorted_threads) {
    const int i = base + threadIdx.x;
    const bool hit = i < n && (strict ? row[i] > x : row[i] >= x);
    if (hit) atomicMin(s_found, i);
    if (__syncthreads_or(hit)) break;
  }
  const int r = *s_found;
  __syncthreads();
  return r;
}

__global__ void sample_sorted_kernel(int32_t* tokens, const float* sorted_logits,
                                     const int32_t* sorted_ids, int V, const sampling_params* sp,
                                     const uint64_t* counters, const uint8_t* do_sample,
                                     float* prob) {
  const int r = blockIdx.x;
  if (!do_sample[r] || (sp[r].greedy() && do_sample[r] != sample_adjusted)) return;
  if (sp[r].greedy()) {  // adjusted greedy: the best of the adjusted row
    if (threadIdx.x == 0) tokens[r] = sorted_ids[size_t(r) * V];
    return;
  }
  using scan_t = cub::BlockScan<float, sorted_threads>;
  __shared__ typename scan_t::TempStorage s_scan;
  __shared__ float s_carry;
  __shared__ int s_found;
  const sampling_params p = sp[r];
  const float* row = sorted_logits + size_t(r) * V;
  float* cum = prob + size_t(r) * V;
  int K = p.top_k > 0 && p.top_k < V ? p.top_k : V;
  const float lmax = row[0];
  const float inv_t = 1.0f / p.temperature;
  // min_p: the same test as the CPU's, on the sorted row (true from some index on).
  if (p.min_p > 0.0f) {
    if (threadIdx.x == 0) s_found = K;
    __syncthreads();
    for (int base = 1; base < K; base += sorted_threads) {
      const int i = base + threadIdx.x;
      const bool cut = i < K && expf((row[i] - lmax) * inv_t) < p.min_p;
      if (cut) atomicMin(&s_found, i);
      if (__syncthreads_or(cut)) break;
    }
    K = s_found;
    __syncthreads();
  }

  // cum[i]: unnormalised softmax mass of the i + 1 best ids.
  if (threadIdx.x == 0) s_carry = 0.f;
  __syncthreads();
  for (int base = 0; base < K; base += sorted_threads) {
    const int i = base + threadIdx.x;
    const float e = i < K ? expf((row[i] - lmax) * inv_t) : 0.f;
    float inc, total;
    scan_t(s_scan).InclusiveSum(e, inc, total);
    const float carry = s_carry;
    if (i < K) cum[i] = carry + inc;
    __syncthreads();
    if (threadIdx.x == 0) s_carry = carry + total;
    __syncthreads();
  }
  const float mass = cum[K - 1];
  int kept = K;
  if (p.top_p < 1.0f) {
    const int n = first_index<false>(cum, K, p.top_p * mass, &s_found);
    kept = n < K ? n + 1 : K;
  }
  const float kept_mass = cum[kept - 1];
  const float u = sampling_uniform(p.seed, counters[r]);
  const int pick = first_index<true>(cum, kept, u * kept_mass, &s_found);
  if (threadIdx.x == 0) tokens[r] = sorted_ids[size_t(r) * V + (pick < kept ? pick : kept - 1)];
}

__global__ void adjust_rows_kernel(float* compact, int V, const int32_t* adj_start, const logit_adjust* adj,
                                   const sampling_params* sp) {
  const int r = blockIdx.x;
  const sampling_params p = sp[r];
  float* row = compact + size_t(r) * V;
  // Distinct tokens per row: no two threads touch one logit.
  for (int k = adj_start[r] + threadIdx.x; k < adj_start[r + 1]; k += blockDim.x) {
    const logit_adjust a = adj[k];
    row[a.token] = adjusted_logit(row[a.token], a, p);
  }
}

constexpr int lp_threads = 512;

// Block-wide best of (v, i) by (value desc, id asc) among elements ranked after (pv, pi).
__device__ void block_best(float& bv, int& bi) {
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    better(bv, bi, ov, oi);
  }
  __shared__ float s_v[lp_threads / 32];
  __shared__ int s_i[lp_threads / 32];
  const int w = threadIdx.x / 32;
  if (threadIdx.x % 32 == 0) {
    s_v[w] = bv;
    s_i[w] = bi;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int k = 1; k < lp_threads / 32; ++k) better(bv, bi, s_v[k], s_i[k]);
    s_v[0] = bv;
    s_i[0] = bi;
  }
  __syncthreads();
  bv = s_v[0];
  bi = s_i[0];
  __syncthreads();
}

__global__ void logprobs_top_kernel(float* lse, int32_t* top_ids, float* top_lp, const float* logits, int ld,
                                    const int32_t* rows, int V, const sampling_params* sp,
                                    const uint8_t* do_sample) {
  const int r = blockIdx.x;
  const int k = sp[r].logprobs;
  if (!do_sample[r] || k < 0) return;
  const float* row = logits + size_t(rows[r]) * ld;
  float bv = -INFINITY;
  int bi = 0x7fffffff;
  for (int i = threadIdx.x; i < V; i += lp_threads) better(bv, bi, row[i], i);
  block_best(bv, bi);
  const float maxl = bv;
  float sum = 0.f;
  for (int i = threadIdx.x; i < V; i += lp_threads) sum += expf(row[i] - maxl);
  using reduce_t = cub::BlockReduce<float, lp_threads>;
  __shared__ typename reduce_t::TempStorage s_red;
  __shared__ float s_lse;
  const float total = reduce_t(s_red).Sum(sum);
  if (threadIdx.x == 0) s_lse = maxl + logf(total);
  __syncthreads();
  const float l = s_lse;
  if (threadIdx.x == 0) lse[r] = l;
  // k passes, each the best of the ids ranked after the previous pick.
  float pv = bv;
  int pi = bi;
  for (int j = 0; j < k && j < V; ++j) {
    if (j > 0) {
      bv = -INFINITY;
      bi = 0x7fffffff;
      for (int i = threadIdx.x; i < V; i += lp_threads) {
        const float v = row[i];
        if (v < pv || (v == pv && i > pi)) better(bv, bi, v, i);
      }
      block_best(bv, bi);
      pv = bv;
      pi = bi;
    }
    if (threadIdx.x == 0) {
      top_ids[size_t(r) * sampling_params::max_logprobs + j] = pi;
      top_lp[size_t(r) * sampling_params::max_logprobs + j] = pv - l;
    }
  }
}

__global__ void logprobs_gather_kernel(float* logprob, const int32_t* tokens, const float* lse, const float* logits,
                                       int ld, const int32_t* rows, int N, const sampling_params* sp,
                                       const uint8_t* do_sample) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= N || !do_sample[r] || sp[r].logprobs < 0) return;
  const int t = tokens[r];
  logprob[r] = t >= 0 ? logits[size_t(rows[r]) * ld + t] - lse[r] : 0.0f;
}

}  // namespace

cudaError_t compact_rows_forward(float* compact, int32_t* ids, const float* logits, int ld,
                                 const int32_t* rows, int N, int V, cudaStream_t stream) {
  if (N <= 0) return cudaSuccess;
  compact_rows_kernel<<<dim3((V + 255) / 256, N), 256, 0, stream>>>(compact, ids, logits, ld, rows, V);
  return cudaGetLastError();
}

cudaError_t adjust_rows_forward(float* compact, int V, int N, const int32_t* adj_start,
                                const logit_adjust* adj, const sampling_params* sp, cudaStream_t stream) {
  if (N <= 0) return cudaSuccess;
  adjust_rows_kernel<<<N, 256, 0, stream>>>(compact, V, adj_start, adj, sp);
  return cudaGetLastError();
}

cudaError_t sort_compact_forward(void* temp, size_t& temp_bytes, float* sorted_logits, int32_t* sorted_ids,
                                 const float* compact, const int32_t* ids, int N, int V, cudaStream_t stream) {
  auto begin = thrust::make_transform_iterator(thrust::counting_iterator<int>(0), row_offset{V});
  auto end = begin + 1;
  if (temp != nullptr && N <= 0) return cudaSuccess;
  return cub::DeviceSegmentedRadixSort::SortPairsDescending(temp, temp_bytes, compact, sorted_logits, ids,
                                                            sorted_ids, int64_t(N) * V, N, begin, end, 0, 32,
                                                            stream);
}

cudaError_t logprobs_top_forward(float* lse, int32_t* top_ids, float* top_lp, const float* logits, int ld,
                                 const int32_t* rows, int N, int V, const sampling_params* sp,
                                 const uint8_t* do_sample, cudaStream_t stream) {
  if (N <= 0) return cudaSuccess;
  logprobs_top_kernel<<<N, lp_threads, 0, stream>>>(lse, top_ids, top_lp, logits, ld, rows, V, sp, do_sample);
  return cudaGetLastError();
}

cudaError_t logprobs_gather_forward(float* logprob, const int32_t* tokens, const float* lse, const float* logits,
                                    int ld, const int32_t* rows, int N, const sampling_params* sp,
                                    const uint8_t* do_sample, cudaStream_t stream) {
  if (N <= 0) return cudaSuccess;
  logprobs_gather_kernel<<<(N + 127) / 128, 128, 0, stream>>>(logprob, tokens, lse, logits, ld, rows, N, sp,
                                                              do_sample);
  return cudaGetLastError();
}

cudaError_t sample_greedy_forward(int32_t* tokens, const float* logits, int ld,
                                  const int32_t* rows, int N, int V, const sampling_params* sp,
                                  const uint8_t* do_sample, cudaStream_t stream) {
  if (N <= 0) return cudaSuccess;
  sample_greedy_kernel<<<N, greedy_threads, 0, stream>>>(tokens, logits, ld, rows, V, sp,
                                                         do_sample);
  return cudaGetLastError();
}

cudaError_t sort_rows_forward(void* temp, size_t& temp_bytes, float* sorted_logits,
                              int32_t* sorted_ids, const float* logits, int ld,
                              const int32_t* rows, int N, int V, float* compact_scratch,
                              int32_t* ids_scratch, cudaStream_t stream) {
  auto begin = thrust::make_transform_iterator(thrust::counting_iterator<int>(0), row_offset{V});
  auto end = begin + 1;
  if (temp == nullptr) {
    return cub::DeviceSegmentedRadixSort::SortPairsDescending(
        nullptr, temp_bytes, compact_scratch, sorted_logits, ids_scratch, sorted_ids,
        int64_t(N) * V, N, begin, end, 0, 32, stream);
  }
  if (N <= 0) return cudaSuccess;
  compact_rows_kernel<<<dim3((V + 255) / 256, N), 256, 0, stream>>>(compact_scratch, ids_scratch,
                                                                     logits, ld, rows, V);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  return cub::DeviceSegmentedRadixSort::SortPairsDescending(
      temp, temp_bytes, compact_scratch, sorted_logits, ids_scratch, sorted_ids, int64_t(N) * V, N,
      begin, end, 0, 32, stream);
}

cudaError_t sample_sorted_forward(int32_t* tokens, const float* sorted_logits,
                                  const int32_t* sorted_ids, int N, int V,
                                  const sampling_params* sp, const uint64_t* counters,
                                  const uint8_t* do_sample, float* prob_scratch,
                                  cudaStream_t stream) {
  if (N <= 0) return cudaSuccess;
  sample_sorted_kernel<<<N, sorted_threads, 0, stream>>>(tokens, sorted_logits, sorted_ids, V, sp,
                                                         counters, do_sample, prob_scratch);
  return cudaGetLastError();
}

}  // namespace infer::cuda
