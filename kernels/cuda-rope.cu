// Rotary position embedding on the q and k heads of the fused q|k|v rows, in place,
// with the per-head RMSNorm of q and k (Qwen3) applied first where asked, and the
// rotated K and the V of each token stored into the paged cache in the same pass (so
// that attention reads the cache only). A warp a (token, head): the head's values sit
// in registers, the rotation partner comes through the warp's shared row.
// cos/sin come from the model layer's tables (model/rope.hpp), uploaded once: row p,
// entry i = (cos, sin) of p * inv_freq[i].
#include "kernels/cuda-dtype.cuh"
#include "kernels/cuda-kernels.hpp"

namespace infer::cuda {
namespace {

constexpr int rope_warps = 4;

template <class T>
__global__ void __launch_bounds__(rope_warps * 32)
    rope_kernel(T* qkv, const int32_t* pos, const float2* table, int NH, int NKV, int hd,
                int rot_dim, bool interleaved, const float* q_norm_w, const float* k_norm_w,
                float eps, T* k_cache, T* v_cache, const int32_t* slot, int n_heads_launch) {
  __shared__ float s_row[rope_warps][rope_max_head_dim];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int t = blockIdx.x, h = blockIdx.y * rope_warps + warp;
  if (h >= n_heads_launch) return;
  const int ld = (NH + 2 * NKV) * hd;
  const bool is_v = h >= NH + NKV, is_k = !is_v && h >= NH;
  T* src = qkv + size_t(t) * ld + size_t(h) * hd;
  const int p = pos[t];
  const int epl = hd / 32;  // values per lane: d = lane + 32 * k
  float x[rope_max_head_dim / 32];
#pragma unroll
  for (int k = 0; k < rope_max_head_dim / 32; ++k)
    if (k < epl) x[k] = to_f32(src[lane + 32 * k]);
  if (!is_v && p >= 0) {
    const float* nw = is_k ? k_norm_w : q_norm_w;
    if (nw) {
      float ss = 0.f;
#pragma unroll
      for (int k = 0; k < rope_max_head_dim / 32; ++k)
        if (k < epl) ss += x[k] * x[k];
      const float r = rsqrtf(warp_sum_f32(ss) / float(hd) + eps);
#pragma unroll
      for (int k = 0; k < rope_max_head_dim / 32; ++k)
        if (k < epl) x[k] *= r * nw[lane + 32 * k];
    }
    if (rot_dim > 0) {
      float* row = s_row[warp];
#pragma unroll
      for (int k = 0; k < rope_max_head_dim / 32; ++k)
        if (k < epl) row[lane + 32 * k] = x[k];
      __syncwarp();
      const int half_rot = rot_dim / 2;
      const float2* cs = table + size_t(p) * half_rot;
#pragma unroll
      for (int k = 0; k < rope_max_head_dim / 32; ++k) {
        const int d = lane + 32 * k;
        if (k >= epl || d >= rot_dim) continue;
        int i, partner;
        float sign;
        if (interleaved) {  // pairs (2i, 2i+1), GPT-J style
          i = d >> 1;
          partner = d ^ 1;
          sign = (d & 1) ? 1.f : -1.f;
        } else {  // pairs (i, i + rot/2), GPT-NeoX style (rotate_half)
          const bool lo = d < half_rot;
          i = lo ? d : d - half_rot;
          partner = lo ? d + half_rot : d - half_rot;
          sign = lo ? -1.f : 1.f;
        }
        const float2 c = cs[i];
        x[k] = x[k] * c.x + sign * row[partner] * c.y;
      }
    }
#pragma unroll
    for (int k = 0; k < rope_max_head_dim / 32; ++k)
      if (k < epl) src[lane + 32 * k] = from_f32<T>(x[k]);
  }
  if (k_cache && (is_k || is_v)) {
    const int s = slot[t];
    if (s < 0) return;
    const int kvh = h - (is_k ? NH : NH + NKV);
    T* dst = (is_k ? k_cache : v_cache) + size_t(s) * NKV * hd + size_t(kvh) * hd;
#pragma unroll
    for (int k = 0; k < rope_max_head_dim / 32; ++k)
      if (k < epl) dst[lane + 32 * k] = from_f32<T>(x[k]);
  }
}

}  // namespace

bool rope_shape_supported(int head_dim, int rot_dim) {
  return head_dim % 32 == 0 && head_dim <= rope_max_head_dim && rot_dim >= 0 &&
         rot_dim <= head_dim && rot_dim % 2 == 0;
}

template <class T>
cudaError_t rope_forward(T* qkv, const int32_t* pos, const float2* table, int Tn,
                         const qkv_shape& sh, int rot_dim, bool interleaved,
                         const float* q_norm_w, const float* k_norm_w, float eps, T* k_cache,
                         T* v_cache, const int32_t* slot, cudaStream_t stream) {
  if (Tn <= 0) return cudaSuccess;
  if (!rope_shape_supported(sh.head_dim, rot_dim) || (rot_dim > 0 && !table) ||
      (k_cache && (!v_cache || !slot)))
    return cudaErrorInvalidValue;
  const int heads = sh.n_head + sh.n_kv_head + (k_cache ? sh.n_kv_head : 0);
  const dim3 grid(Tn, (heads + rope_warps - 1) / rope_warps);
  rope_kernel<T><<<grid, rope_warps * 32, 0, stream>>>(
      qkv, pos, table, sh.n_head, sh.n_kv_head, sh.head_dim, rot_dim, interleaved, q_norm_w,
      k_norm_w, eps, k_cache, v_cache, slot, heads);
  return cudaGetLastError();
}

#define INFER_INST(T)                                                                          \
  template cudaError_t rope_forward<T>(T*, const int32_t*, const float2*, int, const qkv_shape&, \
                                       int, bool, const float*, const float*, float, T*, T*,    \
                                       const int32_t*, cudaStream_t);
INFER_INST(half)
INFER_INST(bf16)
#undef INFER_INST

}  // namespace infer::cuda
