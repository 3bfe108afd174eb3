// x[t, :] += bias, for the GEMM shapes where cuBLASLt's heuristic offers no bias
// epilogue (matmul_runner falls back to a plain GEMM and this).
#include "kernels/cuda-dtype.cuh"
#include "kernels/cuda-kernels.hpp"

namespace infer::cuda {
namespace {

template <class T>
__global__ void bias_add_kernel(T* x, const T* bias, int N, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) x[i] = from_f32<T>(to_f32(x[i]) + to_f32(bias[i % N]));
}

}  // namespace

template <class T>
cudaError_t bias_add_forward(T* x, const T* bias, int Tn, int N, cudaStream_t stream) {
  const int64_t n = int64_t(Tn) * N;
  if (n <= 0) return cudaSuccess;
  bias_add_kernel<T><<<unsigned((n + 255) / 256), 256, 0, stream>>>(x, bias, N, n);
  return cudaGetLastError();
}

template cudaError_t bias_add_forward<half>(half*, const half*, int, int, cudaStream_t);
template cudaError_t bias_add_forward<bf16>(bf16*, const bf16*, int, int, cudaStream_t);

}  // namespace infer::cuda
