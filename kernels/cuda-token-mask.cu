#include "kernels/cuda-token-mask.hpp"

#include <cmath>

namespace infer::cuda {
namespace {

constexpr int mask_threads = 256;

// One thread per 32-id word: a fully allowed word (the common case inside a string) is one
// load and nothing written; a structural state's mask is mostly empty words.
__global__ void token_mask_rows_kernel(float* logits, int ld, const int32_t* rows, const int32_t* seq_of_row,
                                       const uint32_t* masks, int words, int V) {
  const int r = blockIdx.y;
  const int w = blockIdx.x * mask_threads + threadIdx.x;
  if (w >= words) return;
  const uint32_t m = masks[size_t(r) * size_t(words) + size_t(w)];
  if (m == 0xffffffffu) return;
  float* row = logits + size_t(rows[seq_of_row[r]]) * size_t(ld);
  const int base = w * 32;
  const int n = min(32, V - base);
  for (int j = 0; j < n; ++j)
    if (!((m >> j) & 1u)) row[base + j] = -INFINITY;
}

}  // namespace

cudaError_t token_mask_rows_forward(float* logits, int ld, const int32_t* rows, const int32_t* seq_of_row, int n,
                                    const uint32_t* masks, int words, int V, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  dim3 grid(unsigned((words + mask_threads - 1) / mask_threads), unsigned(n));
  token_mask_rows_kernel<<<grid, mask_threads, 0, stream>>>(logits, ld, rows, seq_of_row, masks, words, V);
  return cudaGetLastError();
}

}  // namespace infer::cuda
