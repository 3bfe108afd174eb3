// Sampling on the device (the rule of cpu::sample_token), so that only token ids come
// back to the host. Greedy rows need one arg-max pass; the other rows need the order
// (logit desc, id asc), which a stable segmented radix sort gives (ids enter ascending,
// so equal logits keep ascending ids), then one block per row walks the sorted row.
#include <cub/block/block_scan.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/iterator/transform_iterator.h>

#include "kernels/cuda-kernels.hpp"

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
  if (!do_sample[r] || sp[r].greedy()) return;
  using scan_t = cub::BlockScan<float, sorted_threads>;
  __shared__ typename scan_t::TempStorage s_scan;
  __shared__ float s_carry;
  __shared__ int s_found;
  const sampling_params p = sp[r];
  const float* row = sorted_logits + size_t(r) * V;
  float* cum = prob + size_t(r) * V;
  const int K = p.top_k > 0 && p.top_k < V ? p.top_k : V;
  const float lmax = row[0];
  const float inv_t = 1.0f / p.temperature;

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

}  // namespace

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
