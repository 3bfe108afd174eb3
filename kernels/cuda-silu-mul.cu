// SwiGLU's gate: out = silu(gate) * up over the fused gate|up GEMM output
// ([T, 2I], gate first, as GLM-4's gate_up_proj and our load-time fusion of the other
// families lay it out). fp32 math, 16-byte loads where the row allows.
#include "kernels/cuda-dtype.cuh"
#include "kernels/cuda-kernels.hpp"

namespace infer::cuda {
namespace {

__device__ __forceinline__ float silu(float g) { return g / (1.f + __expf(-g)); }

template <class T>
__global__ void silu_mul_vec_kernel(T* out, const T* gate_up, int I, int64_t n8) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n8) return;
  const int per_row = I / 8;
  const int64_t t = i / per_row;
  const int c = int(i % per_row) * 8;
  const T* row = gate_up + size_t(t) * 2 * I;
  float g[8], u[8], o[8];
  unpack8<T>(*reinterpret_cast<const uint4*>(row + c), g);
  unpack8<T>(*reinterpret_cast<const uint4*>(row + I + c), u);
#pragma unroll
  for (int k = 0; k < 8; ++k) o[k] = silu(g[k]) * u[k];
  *reinterpret_cast<uint4*>(out + size_t(t) * I + c) = pack8<T>(o);
}

template <class T>
__global__ void silu_mul_kernel(T* out, const T* gate_up, int I, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t t = i / I;
  const int c = int(i % I);
  const T* row = gate_up + size_t(t) * 2 * I;
  out[i] = from_f32<T>(silu(to_f32(row[c])) * to_f32(row[I + c]));
}

}  // namespace

template <class T>
cudaError_t silu_mul_forward(T* out, const T* gate_up, int Tn, int I, cudaStream_t stream) {
  if (Tn <= 0 || I <= 0) return cudaSuccess;
  const int64_t n = int64_t(Tn) * I;
  if (I % 8 == 0) {
    const int64_t n8 = n / 8;
    silu_mul_vec_kernel<T><<<unsigned((n8 + 255) / 256), 256, 0, stream>>>(out, gate_up, I, n8);
  } else {
    silu_mul_kernel<T><<<unsigned((n + 255) / 256), 256, 0, stream>>>(out, gate_up, I, n);
  }
  return cudaGetLastError();
}

template cudaError_t silu_mul_forward<half>(half*, const half*, int, int, cudaStream_t);
template cudaError_t silu_mul_forward<bf16>(bf16*, const bf16*, int, int, cudaStream_t);

}  // namespace infer::cuda
