// RMSNorm of the Llama family, alone and fused with the residual add (and, for GLM-4,
// with the post-norm of the branch output before that add). A block a row, the row in
// registers (all loads of a row in flight at once, as the LayerNorm kernels do), fp32
// math, the fp32 residual stream read and written once.
#include "kernels/cuda-dtype.cuh"
#include "kernels/cuda-kernels.hpp"

namespace infer::cuda {
namespace {

constexpr int rms_threads = 256;

__device__ inline float rms_block_sum(float v, float* red) {
  v = warp_sum_f32(v);
  const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // red may still be read by the previous reduction
  if (lane == 0) red[w] = v;
  __syncthreads();
  float r = 0.f;
#pragma unroll
  for (int i = 0; i < rms_threads / 32; ++i) r += red[i];
  return r;
}

// mode 0: out = rms(in) * w
// mode 1: residual += x;                 out = rms(residual) * w
// mode 2: residual += rms(x) * x_w;      out = rms(residual) * w
template <class T, int KPT, int mode>
__global__ void __launch_bounds__(rms_threads)
    rmsnorm_kernel(T* __restrict__ out, float* __restrict__ residual, const float* __restrict__ in,
                   const T* __restrict__ x, const float* __restrict__ x_w,
                   const float* __restrict__ w, int C, float eps) {
  __shared__ float red[rms_threads / 32];
  const size_t row = size_t(blockIdx.x) * C;
  float v[KPT];
  if (mode == 2) {
    float xs[KPT];
    float q = 0.f;
#pragma unroll
    for (int k = 0; k < KPT; ++k) {
      const int c = threadIdx.x + k * rms_threads;
      xs[k] = c < C ? to_f32(x[row + c]) : 0.f;
      q += xs[k] * xs[k];
    }
    const float r = rsqrtf(rms_block_sum(q, red) / float(C) + eps);
#pragma unroll
    for (int k = 0; k < KPT; ++k) {
      const int c = threadIdx.x + k * rms_threads;
      v[k] = c < C ? residual[row + c] + xs[k] * r * x_w[c] : 0.f;
    }
  } else {
#pragma unroll
    for (int k = 0; k < KPT; ++k) {
      const int c = threadIdx.x + k * rms_threads;
      v[k] = 0.f;
      if (c < C) v[k] = mode == 1 ? residual[row + c] + to_f32(x[row + c]) : in[row + c];
    }
  }
  float q = 0.f;
#pragma unroll
  for (int k = 0; k < KPT; ++k) {
    const int c = threadIdx.x + k * rms_threads;
    if (c < C) {
      if (mode != 0) residual[row + c] = v[k];
      q += v[k] * v[k];
    }
  }
  const float r = rsqrtf(rms_block_sum(q, red) / float(C) + eps);
#pragma unroll
  for (int k = 0; k < KPT; ++k) {
    const int c = threadIdx.x + k * rms_threads;
    if (c < C) out[row + c] = from_f32<T>(v[k] * r * w[c]);
  }
}

template <class T, int mode>
cudaError_t launch(T* out, float* residual, const float* in, const T* x, const float* x_w,
                   const float* w, int Tn, int C, float eps, cudaStream_t st) {
  if (Tn <= 0) return cudaSuccess;
  const int kpt = (C + rms_threads - 1) / rms_threads;
#define INFER_RMS(K)                                                                        \
  rmsnorm_kernel<T, K, mode><<<Tn, rms_threads, 0, st>>>(out, residual, in, x, x_w, w, C, \
                                                          eps)
  if (kpt <= 1) INFER_RMS(1);
  else if (kpt <= 2) INFER_RMS(2);
  else if (kpt <= 4) INFER_RMS(4);
  else if (kpt <= 8) INFER_RMS(8);
  else if (kpt <= 16) INFER_RMS(16);
  else if (kpt <= 32) INFER_RMS(32);
  else return cudaErrorInvalidValue;  // rows wider than rmsnorm_max_width
#undef INFER_RMS
  return cudaGetLastError();
}

}  // namespace

template <class T>
cudaError_t rmsnorm_forward(T* out, const float* in, const float* w, int Tn, int C, float eps,
                            cudaStream_t stream) {
  return launch<T, 0>(out, nullptr, in, nullptr, nullptr, w, Tn, C, eps, stream);
}

template <class T>
cudaError_t residual_rmsnorm_forward(float* residual, T* out, const T* x, const float* x_norm_w,
                                     const float* w, int Tn, int C, float eps,
                                     cudaStream_t stream) {
  if (x_norm_w) return launch<T, 2>(out, residual, nullptr, x, x_norm_w, w, Tn, C, eps, stream);
  return launch<T, 1>(out, residual, nullptr, x, nullptr, w, Tn, C, eps, stream);
}

#define INFER_INST(T)                                                                         \
  template cudaError_t rmsnorm_forward<T>(T*, const float*, const float*, int, int, float,    \
                                          cudaStream_t);                                      \
  template cudaError_t residual_rmsnorm_forward<T>(float*, T*, const T*, const float*,        \
                                                   const float*, int, int, float, cudaStream_t);
INFER_INST(half)
INFER_INST(bf16)
#undef INFER_INST

}  // namespace infer::cuda
