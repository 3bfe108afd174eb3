#include "kernels/cuda-token-mask.hpp"

#include <cmath>

namespace infer::cuda {
namespace {

constexpr int mask_threads = 256;

// One thread per 32-id word: a fully allowed word (the common case inside strings) is one
// load and nothing written.
__global__ void token_mask_rows_kernel(float* compact, int V, const int32_t* rows, const uint32_t* masks, int words) {
  const int k = blockIdx.y;
  const int w = blockIdx.x * mask_threads + threadIdx.x;
  if (w >= words) return;
  const uint32_t m = masks[size_t(k) * size_t(words) + size_t(w)];
  if (m == 0xffffffffu) return;
  float* row = compact + size_t(rows[k]) * size_t(V);
  const int base = w * 32;
  const int n = min(32, V - base);
  for (int j = 0; j < n; ++j)
    if (!((m >> j) & 1u)) row[base + j] = -INFINITY;
}

}  // namespace

cudaError_t token_mask_rows_forward(float* compact, int V, const int32_t* rows, const uint32_t* masks, int words,
                                    int n_masked, cudaStream_t stream) {
  if (n_masked <= 0) return cudaSuccess;
  dim3 grid(unsigned((words + mask_threads - 1) / mask_threads), unsigned(n_masked));
  token_mask_rows_kernel<<<grid, mask_threads, 0, stream>>>(compact, V, rows, masks, words);
  return cudaGetLastError();
}

}  // namespace infer::cuda
