// Device-side conversions between the two 16-bit activation types (fp16 for GPT-2,
// bf16 for the Llama family) and fp32, so that one kernel template serves both.
// Only .cu files include this.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace infer::cuda {

__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ __half from_f32<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Eight 16-bit values (one 16-byte load) to floats and back, converted in pairs (one
// instruction per pair: the attention kernel's inner loop is bound by these).
__device__ __forceinline__ float2 pair_to_f32(__half2 v) { return __half22float2(v); }
__device__ __forceinline__ float2 pair_to_f32(__nv_bfloat162 v) { return __bfloat1622float2(v); }
template <class T>
struct pair_of;
template <>
struct pair_of<__half> {
  using type = __half2;
  static __device__ __forceinline__ type make(float a, float b) { return __floats2half2_rn(a, b); }
};
template <>
struct pair_of<__nv_bfloat16> {
  using type = __nv_bfloat162;
  static __device__ __forceinline__ type make(float a, float b) { return __floats2bfloat162_rn(a, b); }
};

template <class T>
__device__ __forceinline__ void unpack8(const uint4& raw, float* f) {
  const auto* v = reinterpret_cast<const typename pair_of<T>::type*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 p = pair_to_f32(v[i]);
    f[2 * i] = p.x;
    f[2 * i + 1] = p.y;
  }
}
template <class T>
__device__ __forceinline__ uint4 pack8(const float* f) {
  uint4 raw;
  auto* v = reinterpret_cast<typename pair_of<T>::type*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) v[i] = pair_of<T>::make(f[2 * i], f[2 * i + 1]);
  return raw;
}

__device__ __forceinline__ float warp_sum_f32(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

}  // namespace infer::cuda
