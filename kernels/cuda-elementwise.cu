// Row-wise and element-wise kernels: embedding, LayerNorm (fused with the residual
// add), GELU, row gather and the KV-cache store. All are memory bound: one warp a row,
// fp32 math, loads and stores as wide as the row allows.
#include "kernels/cuda-kernels.hpp"

namespace infer::cuda {
namespace {

constexpr int warps_per_block = 8;

__device__ inline float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__global__ void embed_kernel(float* out, const int32_t* tokens, const int32_t* pos,
                             const half* wte, const half* wpe, int T, int C) {
  const int t = blockIdx.x * warps_per_block + threadIdx.x / 32;
  if (t >= T) return;
  const int lane = threadIdx.x % 32;
  const int p = pos[t] < 0 ? 0 : pos[t];
  const half* te = wte + size_t(tokens[t]) * C;
  const half* pe = wpe + size_t(p) * C;
  float* o = out + size_t(t) * C;
  for (int c = lane; c < C; c += 32) o[c] = __half2float(te[c]) + __half2float(pe[c]);
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
  embed_kernel<<<row_blocks(T), warps_per_block * 32, 0, stream>>>(out, tokens, pos, wte, wpe, T,
                                                                    C);
  return cudaGetLastError();
}

cudaError_t layernorm_forward(half* out, const float* in, const float* w, const float* b, int T,
                              int C, float eps, cudaStream_t stream) {
  if (T <= 0) return cudaSuccess;
  layernorm_kernel<<<row_blocks(T), warps_per_block * 32, 0, stream>>>(out, in, w, b, T, C, eps);
  return cudaGetLastError();
}

cudaError_t residual_layernorm_forward(float* residual, half* out, const half* x, const float* w,
                                       const float* b, int T, int C, float eps,
                                       cudaStream_t stream) {
  if (T <= 0) return cudaSuccess;
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
