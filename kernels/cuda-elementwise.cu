// Row-wise and element-wise kernels: embedding, LayerNorm (fused with the residual
// add), GELU, row gather and the KV-cache store. All are memory bound: one warp a row,
// fp32 math, loads and stores as wide as the row allows.
#include "kernels/cuda-dtype.cuh"
#include "kernels/cuda-kernels.hpp"

namespace infer::cuda {
namespace {

constexpr int warps_per_block = 8;

__device__ inline float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__global__ void embed_kernel(float* __restrict__ out, const int32_t* __restrict__ tokens,
                             const int32_t* __restrict__ pos, const half* __restrict__ wte,
                             const half* __restrict__ wpe, int C) {
  const int t = blockIdx.x;
  const int p = pos[t] < 0 ? 0 : pos[t];
  const half* te = wte + size_t(tokens[t]) * C;
  const half* pe = wpe + size_t(p) * C;
  float* o = out + size_t(t) * C;
#pragma unroll 4
  for (int c = threadIdx.x; c < C; c += blockDim.x) o[c] = __half2float(te[c]) + __half2float(pe[c]);
}

template <class T>
__global__ void embed_tokens_kernel(float* __restrict__ out, const int32_t* __restrict__ tokens,
                                    const T* __restrict__ wte, int C) {
  const int t = blockIdx.x;
  const T* te = wte + size_t(tokens[t]) * C;
  float* o = out + size_t(t) * C;
#pragma unroll 4
  for (int c = threadIdx.x; c < C; c += blockDim.x) o[c] = to_f32(te[c]);
}

// Two passes over the row (mean, then centred variance) like the CPU reference, so
// rows with a large mean lose no precision; the row stays in L1 between passes.
__device__ inline void layernorm_row(half* o, const float* r, const float* w, const float* b,
                                     int C, float eps, int lane) {
  float s = 0.f;
  for (int c = lane; c < C; c += 32) s += r[c];
  const float mean = warp_sum(s) / float(C);
  float v = 0.f;
  for (int c = lane; c < C; c += 32) {
    const float d = r[c] - mean;
    v += d * d;
  }
  const float rstd = rsqrtf(warp_sum(v) / float(C) + eps);
  for (int c = lane; c < C; c += 32) o[c] = __float2half((r[c] - mean) * rstd * w[c] + b[c]);
}

__global__ void layernorm_kernel(half* out, const float* in, const float* w, const float* b, int T,
                                 int C, float eps) {
  const int t = blockIdx.x * warps_per_block + threadIdx.x / 32;
  if (t >= T) return;
  layernorm_row(out + size_t(t) * C, in + size_t(t) * C, w, b, C, eps, threadIdx.x % 32);
}

__global__ void residual_layernorm_kernel(float* residual, half* out, const half* x,
                                          const float* w, const float* b, int T, int C,
                                          float eps) {
  const int t = blockIdx.x * warps_per_block + threadIdx.x / 32;
  if (t >= T) return;
  const int lane = threadIdx.x % 32;
  float* r = residual + size_t(t) * C;
  const half* xr = x + size_t(t) * C;
  for (int c = lane; c < C; c += 32) r[c] += __half2float(xr[c]);
  __syncwarp();
  layernorm_row(out + size_t(t) * C, r, w, b, C, eps, lane);
}

// Block-per-row LayerNorm with the row in registers: all loads of a row are issued at
// once (a warp looping over the row serialises one memory latency per 32 elements,
// which dominated decode steps). KPT = values per thread, ln_threads threads a row.
constexpr int ln_threads = 256;

__device__ inline float ln_block_sum(float v, float* red) {
  v = warp_sum(v);
  const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // red may still be read by the previous reduction
  if (lane == 0) red[w] = v;
  __syncthreads();
  float r = 0.f;
#pragma unroll
  for (int i = 0; i < ln_threads / 32; ++i) r += red[i];
  return r;
}

// residual != nullptr: residual += x first (and written back); else in = residual_in.
template <int KPT, bool add>
__global__ void __launch_bounds__(ln_threads)
    layernorm_block_kernel(half* __restrict__ out, float* __restrict__ residual,
                           const float* __restrict__ in, const half* __restrict__ x,
                           const float* __restrict__ w, const float* __restrict__ b, int C,
                           float eps) {
  __shared__ float red[ln_threads / 32];
  const size_t row = size_t(blockIdx.x) * C;
  float v[KPT];
#pragma unroll
  for (int k = 0; k < KPT; ++k) {
    const int c = threadIdx.x + k * ln_threads;
    v[k] = 0.f;
    if (c < C) v[k] = add ? residual[row + c] + __half2float(x[row + c]) : in[row + c];
  }
  float s = 0.f;
#pragma unroll
  for (int k = 0; k < KPT; ++k) {
    const int c = threadIdx.x + k * ln_threads;
    if (c < C) {
      if (add) residual[row + c] = v[k];
      s += v[k];
    }
  }
  const float mean = ln_block_sum(s, red) / float(C);
  float q = 0.f;
#pragma unroll
  for (int k = 0; k < KPT; ++k) {
    const int c = threadIdx.x + k * ln_threads;
    if (c < C) q += (v[k] - mean) * (v[k] - mean);
  }
  const float rstd = rsqrtf(ln_block_sum(q, red) / float(C) + eps);
#pragma unroll
  for (int k = 0; k < KPT; ++k) {
    const int c = threadIdx.x + k * ln_threads;
    if (c < C) out[row + c] = __float2half((v[k] - mean) * rstd * w[c] + b[c]);
  }
}

template <bool add>
bool launch_layernorm_block(half* out, float* residual, const float* in, const half* x,
                            const float* w, const float* b, int T, int C, float eps,
                            cudaStream_t stream) {
  const int kpt = (C + ln_threads - 1) / ln_threads;
  if (kpt <= 1)
    layernorm_block_kernel<1, add><<<T, ln_threads, 0, stream>>>(out, residual, in, x, w, b, C, eps);
  else if (kpt <= 2)
    layernorm_block_kernel<2, add><<<T, ln_threads, 0, stream>>>(out, residual, in, x, w, b, C, eps);
  else if (kpt <= 4)
    layernorm_block_kernel<4, add><<<T, ln_threads, 0, stream>>>(out, residual, in, x, w, b, C, eps);
  else if (kpt <= 8)
    layernorm_block_kernel<8, add><<<T, ln_threads, 0, stream>>>(out, residual, in, x, w, b, C, eps);
  else
    return false;  // wider rows: the warp-per-row kernels
  return true;
}

__global__ void gelu_kernel(half* x, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float v = __half2float(x[i]);
  const float k = 0.7978845608028654f;  // sqrt(2 / pi)
  x[i] = __float2half(0.5f * v * (1.f + tanhf(k * (v + 0.044715f * v * v * v))));
}

__global__ void residual_kernel(float* residual, const half* x, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) residual[i] += __half2float(x[i]);
}

__global__ void gather_rows_kernel(half* out, const half* in, const int32_t* rows, int N, int C) {
  const int i = blockIdx.x;
  if (i >= N) return;
  const half* src = in + size_t(rows[i]) * C;
  half* dst = out + size_t(i) * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) dst[c] = src[c];
}

__global__ void kv_store_kernel(half* k_cache, half* v_cache, const half* qkv,
                                const int32_t* slot, int T, int C) {
  const int t = blockIdx.x;
  const int s = slot[t];
  if (s < 0) return;
  const half* src = qkv + size_t(t) * 3 * C;
  half* kd = k_cache + size_t(s) * C;
  half* vd = v_cache + size_t(s) * C;
  if (C % 8 == 0) {  // 16-byte moves: rows are 16-byte aligned when C is a multiple of 8
    const uint4* ks = reinterpret_cast<const uint4*>(src + C);
    const uint4* vs = reinterpret_cast<const uint4*>(src + 2 * C);
    for (int c = threadIdx.x; c < C / 8; c += blockDim.x) {
      reinterpret_cast<uint4*>(kd)[c] = ks[c];
      reinterpret_cast<uint4*>(vd)[c] = vs[c];
    }
  } else {
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
      kd[c] = src[C + c];
      vd[c] = src[2 * C + c];
    }
  }
}

int row_blocks(int T) { return (T + warps_per_block - 1) / warps_per_block; }
int flat_blocks(int64_t n) { return int((n + 255) / 256); }

}  // namespace

cudaError_t embed_forward(float* out, const int32_t* tokens, const int32_t* pos, const half* wte,
                          const half* wpe, int T, int C, cudaStream_t stream) {
  if (T <= 0) return cudaSuccess;
  embed_kernel<<<T, 256, 0, stream>>>(out, tokens, pos, wte, wpe, C);
  return cudaGetLastError();
}

template <class T>
cudaError_t embed_tokens_forward(float* out, const int32_t* tokens, const T* wte, int Tn, int C,
                                 cudaStream_t stream) {
  if (Tn <= 0) return cudaSuccess;
  embed_tokens_kernel<T><<<Tn, 256, 0, stream>>>(out, tokens, wte, C);
  return cudaGetLastError();
}
template cudaError_t embed_tokens_forward<half>(float*, const int32_t*, const half*, int, int,
                                                cudaStream_t);
template cudaError_t embed_tokens_forward<bf16>(float*, const int32_t*, const bf16*, int, int,
                                                cudaStream_t);

cudaError_t layernorm_forward(half* out, const float* in, const float* w, const float* b, int T,
                              int C, float eps, cudaStream_t stream) {
  if (T <= 0) return cudaSuccess;
  if (launch_layernorm_block<false>(out, nullptr, in, nullptr, w, b, T, C, eps, stream))
    return cudaGetLastError();
  layernorm_kernel<<<row_blocks(T), warps_per_block * 32, 0, stream>>>(out, in, w, b, T, C, eps);
  return cudaGetLastError();
}

cudaError_t residual_layernorm_forward(float* residual, half* out, const half* x, const float* w,
                                       const float* b, int T, int C, float eps,
                                       cudaStream_t stream) {
  if (T <= 0) return cudaSuccess;
  if (launch_layernorm_block<true>(out, residual, nullptr, x, w, b, T, C, eps, stream))
    return cudaGetLastError();
  residual_layernorm_kernel<<<row_blocks(T), warps_per_block * 32, 0, stream>>>(residual, out, x,
                                                                                 w, b, T, C, eps);
  return cudaGetLastError();
}

cudaError_t gelu_forward(half* x, int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  gelu_kernel<<<flat_blocks(n), 256, 0, stream>>>(x, n);
  return cudaGetLastError();
}

cudaError_t residual_forward(float* residual, const half* x, int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  residual_kernel<<<flat_blocks(n), 256, 0, stream>>>(residual, x, n);
  return cudaGetLastError();
}

cudaError_t gather_rows_forward(half* out, const half* in, const int32_t* rows, int N, int C,
                                cudaStream_t stream) {
  if (N <= 0) return cudaSuccess;
  gather_rows_kernel<<<N, 128, 0, stream>>>(out, in, rows, N, C);
  return cudaGetLastError();
}

cudaError_t kv_store_forward(half* k_cache, half* v_cache, const half* qkv, const int32_t* slot,
                             int T, int C, cudaStream_t stream) {
  if (T <= 0) return cudaSuccess;
  kv_store_kernel<<<T, 128, 0, stream>>>(k_cache, v_cache, qkv, slot, T, C);
  return cudaGetLastError();
}

}  // namespace infer::cuda
