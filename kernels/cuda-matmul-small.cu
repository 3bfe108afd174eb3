// matmul_forward for a handful of tokens (decode at small batch): a split-K GEMV that
// streams W once with 16-byte loads, 16 rows in flight per thread, and applies bias and
// GELU in the same launch (the last block of each column tile to finish sums the split
// partials in a fixed order, so results are deterministic). cuBLASLt's small-M kernels
// plus their split-K reduce took 3-4 launches' worth of latency per GEMM here.
#include "kernels/cuda-kernels.hpp"

namespace infer::cuda {
namespace {

constexpr int tile_cols = 256;       // 32 threads x 8 columns
constexpr int rows_per_thread = 16;  // per threadIdx.y
constexpr int ys = 8;                // threadIdx.y
constexpr int rows_per_block = rows_per_thread * ys;

template <int TT>
__global__ void __launch_bounds__(32 * ys)
    matmul_small_kernel(half* __restrict__ out, const half* __restrict__ in,
                        const half* __restrict__ w, const half* __restrict__ bias,
                        float* __restrict__ partial, unsigned* __restrict__ counters, int IN,
                        int OUT, int gelu) {
  __shared__ float xs[TT][rows_per_block];
  __shared__ float red[TT][tile_cols];
  __shared__ bool last;
  const int tid = threadIdx.y * 32 + threadIdx.x;
  const int tile0 = blockIdx.x * tile_cols;
  const int col0 = tile0 + threadIdx.x * 8;
  const int r0 = blockIdx.y * rows_per_block;
  const int nsplit = gridDim.y;

  for (int i = tid; i < TT * rows_per_block; i += 32 * ys) {
    const int t = i / rows_per_block, r = r0 + i % rows_per_block;
    xs[t][i % rows_per_block] = r < IN ? __half2float(in[size_t(t) * IN + r]) : 0.f;
  }
  __syncthreads();

  float acc[TT][8];
#pragma unroll
  for (int t = 0; t < TT; ++t)
#pragma unroll
    for (int c = 0; c < 8; ++c) acc[t][c] = 0.f;
  if (col0 < OUT) {
    uint4 wv[rows_per_thread];
#pragma unroll
    for (int k = 0; k < rows_per_thread; ++k) {
      const int r = r0 + threadIdx.y + k * ys;
      if (r < IN) wv[k] = __ldg(reinterpret_cast<const uint4*>(w + size_t(r) * OUT + col0));
      else wv[k] = make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int k = 0; k < rows_per_thread; ++k) {
      const int rl = threadIdx.y + k * ys;
      const half2* h2 = reinterpret_cast<const half2*>(&wv[k]);
      float wf[8];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 f = __half22float2(h2[i]);
        wf[2 * i] = f.x;
        wf[2 * i + 1] = f.y;
      }
#pragma unroll
      for (int t = 0; t < TT; ++t) {
        const float xv = xs[t][rl];
#pragma unroll
        for (int c = 0; c < 8; ++c) acc[t][c] += xv * wf[c];
      }
    }
  }
  // Sum over threadIdx.y in a fixed order.
  for (int y = 0; y < ys; ++y) {
    if (threadIdx.y == y) {
#pragma unroll
      for (int t = 0; t < TT; ++t)
#pragma unroll
        for (int c = 0; c < 8; ++c) {
          float& d = red[t][threadIdx.x * 8 + c];
          d = y == 0 ? acc[t][c] : d + acc[t][c];
        }
    }
    __syncthreads();
  }
  for (int i = tid; i < TT * tile_cols; i += 32 * ys) {
    const int t = i / tile_cols, col = tile0 + i % tile_cols;
    if (col < OUT) partial[(size_t(blockIdx.y) * TT + t) * OUT + col] = red[t][i % tile_cols];
  }
  __threadfence();
  __syncthreads();
  if (tid == 0) {
    const unsigned done = atomicAdd(&counters[blockIdx.x], 1u);
    last = done == unsigned(nsplit - 1);
    if (last) counters[blockIdx.x] = 0;  // ready for the next launch (graph replay)
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  for (int i = tid; i < TT * tile_cols; i += 32 * ys) {
    const int t = i / tile_cols, col = tile0 + i % tile_cols;
    if (col >= OUT) continue;
    float s = 0.f;
    for (int sp = 0; sp < nsplit; ++sp) s += __ldcg(&partial[(size_t(sp) * TT + t) * OUT + col]);
    s += __half2float(bias[col]);
    if (gelu) {
      const float k = 0.7978845608028654f;  // sqrt(2 / pi)
      s = 0.5f * s * (1.f + tanhf(k * (s + 0.044715f * s * s * s)));
    }
    out[size_t(t) * OUT + col] = __float2half(s);
  }
}

template <int TT>
void launch(half* out, const half* in, const half* w, const half* bias, float* partial,
            unsigned* counters, int IN, int OUT, bool gelu, cudaStream_t stream) {
  dim3 grid((OUT + tile_cols - 1) / tile_cols, (IN + rows_per_block - 1) / rows_per_block);
  matmul_small_kernel<TT><<<grid, dim3(32, ys), 0, stream>>>(out, in, w, bias, partial, counters,
                                                             IN, OUT, gelu ? 1 : 0);
}

}  // namespace

size_t matmul_small_partial_floats(int T, int IN, int OUT) {
  return size_t((IN + rows_per_block - 1) / rows_per_block) * T * OUT;
}
int matmul_small_counters(int OUT) { return (OUT + tile_cols - 1) / tile_cols; }

cudaError_t matmul_small_forward(half* out, const half* in, const half* w, const half* bias,
                                 int T, int IN, int OUT, bool gelu, float* partial,
                                 unsigned* counters, cudaStream_t stream) {
  if (T < 1 || T > matmul_small_max_tokens || OUT % 8 != 0) return cudaErrorInvalidValue;
  switch (T) {
    case 1: launch<1>(out, in, w, bias, partial, counters, IN, OUT, gelu, stream); break;
    case 2: launch<2>(out, in, w, bias, partial, counters, IN, OUT, gelu, stream); break;
    case 3: launch<3>(out, in, w, bias, partial, counters, IN, OUT, gelu, stream); break;
    case 4: launch<4>(out, in, w, bias, partial, counters, IN, OUT, gelu, stream); break;
    case 5: launch<5>(out, in, w, bias, partial, counters, IN, OUT, gelu, stream); break;
    case 6: launch<6>(out, in, w, bias, partial, counters, IN, OUT, gelu, stream); break;
    case 7: launch<7>(out, in, w, bias, partial, counters, IN, OUT, gelu, stream); break;
    default: launch<8>(out, in, w, bias, partial, counters, IN, OUT, gelu, stream); break;
  }
  return cudaGetLastError();
}

}  // namespace infer::cuda
