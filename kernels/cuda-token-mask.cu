#include "kernels/cuda-token-mask.hpp"

#include <cmath>

namespace infer::cuda {
namespace {

constexpr int mask_threads = 256;
constexpr int greedy_threads = 512;

// One thread per 32-id word: a fully allowed word (the common case inside strings) is one
// load and nothing written.
__global__ void token_mask_rows_kernel(float* compact, int V, const int32_t* seq_of_row, const int32_t* list,
                                       const uint32_t* masks, int words) {
  const int r = list[blockIdx.y];
  const int w = blockIdx.x * mask_threads + threadIdx.x;
  if (w >= words) return;
  const uint32_t m = masks[size_t(r) * size_t(words) + size_t(w)];
  if (m == 0xffffffffu) return;
  float* row = compact + size_t(seq_of_row[r]) * size_t(V);
  const int base = w * 32;
  const int n = min(32, V - base);
  for (int j = 0; j < n; ++j)
    if (!((m >> j) & 1u)) row[base + j] = -INFINITY;
}

__device__ inline void better(float& bv, int& bi, float v, int i) {
  if (v > bv || (v == bv && i < bi)) {
    bv = v;
    bi = i;
  }
}

// One block per row; each thread scans whole words and skips the empty ones.
__global__ void token_mask_greedy_kernel(int32_t* tokens, const float* logits, int ld, const int32_t* rows,
                                         const int32_t* seq_of_row, const int32_t* list, const uint32_t* masks,
                                         int words, int V) {
  const int r = list[blockIdx.x];
  const int s = seq_of_row[r];
  const float* row = logits + size_t(rows[s]) * size_t(ld);
  const uint32_t* mask = masks + size_t(r) * size_t(words);
  float bv = -INFINITY;
  int bi = 0x7fffffff;
  for (int w = threadIdx.x; w < words; w += greedy_threads) {
    uint32_t m = mask[w];
    while (m) {
      const int j = __ffs(m) - 1;
      m &= m - 1;
      const int v = w * 32 + j;
      if (v < V) better(bv, bi, row[v], v);
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    better(bv, bi, ov, oi);
  }
  __shared__ float s_v[greedy_threads / 32];
  __shared__ int s_i[greedy_threads / 32];
  if (threadIdx.x % 32 == 0) {
    s_v[threadIdx.x / 32] = bv;
    s_i[threadIdx.x / 32] = bi;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int k = 1; k < greedy_threads / 32; ++k) better(bv, bi, s_v[k], s_i[k]);
    // An allowed id whose logit is -inf or NaN still beats none: the first allowed one.
    if (bi == 0x7fffffff) {
      for (int w = 0; w < words && bi == 0x7fffffff; ++w)
        if (mask[w]) bi = w * 32 + __ffs(mask[w]) - 1;
    }
    tokens[s] = bi == 0x7fffffff ? 0 : bi;
  }
}

}  // namespace

cudaError_t token_mask_rows_forward(float* compact, int V, const int32_t* seq_of_row, const int32_t* list, int n,
                                    const uint32_t* masks, int words, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  dim3 grid(unsigned((words + mask_threads - 1) / mask_threads), unsigned(n));
  token_mask_rows_kernel<<<grid, mask_threads, 0, stream>>>(compact, V, seq_of_row, list, masks, words);
  return cudaGetLastError();
}

cudaError_t token_mask_greedy_forward(int32_t* tokens, const float* logits, int ld, const int32_t* rows,
                                      const int32_t* seq_of_row, const int32_t* list, int n, const uint32_t* masks,
                                      int words, int V, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  token_mask_greedy_kernel<<<n, greedy_threads, 0, stream>>>(tokens, logits, ld, rows, seq_of_row, list, masks, words,
                                                             V);
  return cudaGetLastError();
}

}  // namespace infer::cuda
