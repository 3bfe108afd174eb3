// Paged attention for prefill and decode in one kernel: a block per (token, head,
// split of the key range). Each key's head slice (hd halves) is read by hd/8 threads as
// 16-byte loads, so a group of threads streams one cache line per key; the scores of
// the split stay in shared memory, softmax is exact within the split, and splits are
// merged (flash-decoding style) by attention_merge_kernel.
// One template serves fp16 (GPT-2) and bf16 (the Llama family), grouped-query heads
// (query head h reads KV head h / (n_head / n_kv_head); the cache rows are
// n_kv_head * head_dim wide) and a sliding window (keys pos - window + 1 .. pos).
// GPT-2's case (one query head per KV head, no window) is its own instantiation
// (GQA == false), and a power-of-two block size (POW2) turns the per-key block lookup
// into a shift and a mask: the inner loops are ALU bound, and a runtime group, window
// and an integer division per key cost GPT-2 3-6 % of its decode step on the H200.
#include <cmath>

#include "kernels/cuda-dtype.cuh"
#include "kernels/cuda-kernels.hpp"

namespace infer::cuda {
namespace {

constexpr int attn_threads = 128;

__device__ inline float block_reduce_max(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) red[w] = v;
  __syncthreads();
  float r = red[0];
  for (int i = 1; i < attn_threads / 32; ++i) r = fmaxf(r, red[i]);
  return r;
}

__device__ inline float block_reduce_sum(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) red[w] = v;
  __syncthreads();
  float r = 0.f;
  for (int i = 0; i < attn_threads / 32; ++i) r += red[i];
  return r;
}

// GQA: group > 1 or window > 0 possible (else both are taken as 1 and 0). POW2:
// bs == 1 << bs_log2.
template <class T, int HD, bool GQA, bool POW2>
__global__ void __launch_bounds__(attn_threads)
    paged_attention_kernel(T* __restrict__ out, const T* __restrict__ qkv, const T* k_cache,
                           const T* v_cache, const int32_t* __restrict__ tok_seq,
                           const int32_t* __restrict__ tok_pos,
                           const int32_t* __restrict__ block_tables, int max_blocks, int bs,
                           int bs_log2, int group, int q_ld, int kvw, int window, int n_splits,
                           int split_len, float* __restrict__ scratch,
                           const int32_t* __restrict__ fused_kv_slot) {
  constexpr int G = HD / 8;  // threads per key, 8 values (16 bytes) each
  constexpr int NG = attn_threads / G;
  __shared__ float s_p[attention_max_split_len];
  __shared__ float s_acc[NG][HD];
  __shared__ float s_red[attn_threads / 32];

  const int t = blockIdx.x, h = blockIdx.y, split = blockIdx.z;
  const int NH = gridDim.y;
  const int kvh = GQA ? h / group : h;
  const int pos = tok_pos[t];
  const int k0 = GQA && window > 0 ? max(split * split_len, max(0, pos - window + 1))
                                   : split * split_len;
  const int k1 = min(pos + 1, split * split_len + split_len);
  T* o = out + size_t(t) * NH * HD + size_t(h) * HD;
  float* part = scratch + ((size_t(t) * NH + h) * n_splits + split) * (HD + 2);
  if (k0 >= k1) {  // an empty split, or a padding token (pos < 0)
    if (n_splits == 1) {
      for (int d = threadIdx.x; d < HD; d += attn_threads) o[d] = from_f32<T>(0.f);
    } else if (threadIdx.x == 0) {
      part[HD] = -INFINITY;
      part[HD + 1] = 0.f;
    }
    return;
  }

  const int g = threadIdx.x / G, li = threadIdx.x % G;
  const float scale = rsqrtf(float(HD));
  const T* qrow = qkv + size_t(t) * q_ld;
  float q[8];
  unpack8<T>(*reinterpret_cast<const uint4*>(qrow + size_t(h) * HD + li * 8), q);
#pragma unroll
  for (int i = 0; i < 8; ++i) q[i] *= scale;
  const int32_t* table = block_tables + size_t(tok_seq[t]) * max_blocks;
  const size_t head_off = size_t(kvh) * HD + li * 8;

  // Scores. Each group has U keys' loads in flight before it reduces (a key at a time
  // left one memory latency per key on the critical path). The loop bound is uniform
  // across the block so that the group shuffles always see all their lanes.
  constexpr int U = 4;
  // With a fused store the token's own K/V are read from qkv (they are not in the
  // cache yet) and written to it below.
  const T* own_k = qrow + size_t(NH) * HD + head_off;
  const T* own_v = own_k + kvw;
  auto key_row = [&](const T* cache, int j) {
    if (fused_kv_slot && j == pos)
      return reinterpret_cast<const uint4*>(cache == k_cache ? own_k : own_v);
    const int row = POW2 ? (table[j >> bs_log2] << bs_log2) + (j & (bs - 1))
                         : table[j / bs] * bs + j % bs;
    return reinterpret_cast<const uint4*>(cache + size_t(row) * kvw + head_off);
  };
  // One query head of the group stores the KV head's row.
  if (fused_kv_slot && pos >= k0 && pos < k1 && g == 0 && (!GQA || h % group == 0)) {
    const int slot = fused_kv_slot[t];
    if (slot >= 0) {
      *reinterpret_cast<uint4*>(const_cast<T*>(k_cache) + size_t(slot) * kvw + head_off) =
          *reinterpret_cast<const uint4*>(own_k);
      *reinterpret_cast<uint4*>(const_cast<T*>(v_cache) + size_t(slot) * kvw + head_off) =
          *reinterpret_cast<const uint4*>(own_v);
    }
  }
  for (int jb = k0; jb < k1; jb += NG * U) {
    uint4 raw[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int j = jb + u * NG + g;
      if (j < k1) raw[u] = __ldg(key_row(k_cache, j));
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int j = jb + u * NG + g;
      float dot = 0.f;
      if (j < k1) {
        float k[8];
        unpack8<T>(raw[u], k);
        // In pairs: a dependent chain of 4 adds per key instead of 8 FMAs.
#pragma unroll
        for (int i = 0; i < 4; ++i) dot += q[2 * i] * k[2 * i] + q[2 * i + 1] * k[2 * i + 1];
      }
#pragma unroll
      for (int off = G / 2; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
      if (j < k1 && li == 0) s_p[j - k0] = dot;
    }
  }
  __syncthreads();

  const int n = k1 - k0;
  float m = -INFINITY;
  for (int i = threadIdx.x; i < n; i += attn_threads) m = fmaxf(m, s_p[i]);
  m = block_reduce_max(m, s_red);
  float l = 0.f;
  for (int i = threadIdx.x; i < n; i += attn_threads) {
    const float e = __expf(s_p[i] - m);
    s_p[i] = e;
    l += e;
  }
  l = block_reduce_sum(l, s_red);  // its barriers also publish s_p

  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  for (int jb = k0; jb < k1; jb += NG * U) {
    uint4 raw[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int j = jb + u * NG + g;
      if (j < k1) raw[u] = __ldg(key_row(v_cache, j));
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int j = jb + u * NG + g;
      if (j >= k1) continue;
      float v[8];
      unpack8<T>(raw[u], v);
      const float p = s_p[j - k0];
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[i] += p * v[i];
    }
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) s_acc[g][li * 8 + i] = acc[i];
  __syncthreads();
  for (int d = threadIdx.x; d < HD; d += attn_threads) {
    float s = 0.f;
#pragma unroll 4
    for (int gg = 0; gg < NG; ++gg) s += s_acc[gg][d];
    if (n_splits == 1)
      o[d] = from_f32<T>(s / l);
    else
      part[d] = s;
  }
  if (n_splits > 1 && threadIdx.x == 0) {
    part[HD] = m;
    part[HD + 1] = l;
  }
}

template <class T, int HD>
__global__ void attention_merge_kernel(T* out, const float* scratch, int n_splits) {
  const int t = blockIdx.x, h = blockIdx.y, NH = gridDim.y;
  const float* base = scratch + (size_t(t) * NH + h) * n_splits * (HD + 2);
  float M = -INFINITY;
  for (int s = 0; s < n_splits; ++s) {
    const float* p = base + size_t(s) * (HD + 2);
    if (p[HD + 1] > 0.f) M = fmaxf(M, p[HD]);
  }
  T* o = out + size_t(t) * NH * HD + size_t(h) * HD;
  for (int d = threadIdx.x; d < HD; d += blockDim.x) {
    float L = 0.f, acc = 0.f;
    for (int s = 0; s < n_splits; ++s) {
      const float* p = base + size_t(s) * (HD + 2);
      if (p[HD + 1] <= 0.f) continue;  // empty split: its accumulator was never written
      const float w = __expf(p[HD] - M);
      L += w * p[HD + 1];
      acc += w * p[d];
    }
    o[d] = from_f32<T>(L > 0.f ? acc / L : 0.f);
  }
}

template <class T, int HD>
cudaError_t launch(T* out, const T* qkv, const T* k_cache, const T* v_cache,
                   const int32_t* tok_seq, const int32_t* tok_pos, const int32_t* block_tables,
                   int max_blocks, int block_size, int Tn, const attention_shape& sh,
                   int n_splits, int split_len, float* scratch, const int32_t* fused_kv_slot,
                   cudaStream_t stream) {
  const dim3 grid(Tn, sh.n_head, n_splits);
  const int group = sh.n_head / sh.n_kv_head;
  const bool gqa = group > 1 || sh.window > 0;
  int log2 = 0;
  while ((1 << log2) < block_size) ++log2;
  const bool pow2 = (1 << log2) == block_size;
  auto go = [&](auto kernel) {
    kernel<<<grid, attn_threads, 0, stream>>>(out, qkv, k_cache, v_cache, tok_seq, tok_pos,
                                              block_tables, max_blocks, block_size, log2, group,
                                              sh.q_ld(), sh.n_kv_head * HD, sh.window, n_splits,
                                              split_len, scratch, fused_kv_slot);
  };
  if (gqa)
    pow2 ? go(paged_attention_kernel<T, HD, true, true>) : go(paged_attention_kernel<T, HD, true, false>);
  else
    pow2 ? go(paged_attention_kernel<T, HD, false, true>)
         : go(paged_attention_kernel<T, HD, false, false>);
  if (n_splits > 1)
    attention_merge_kernel<T, HD><<<dim3(Tn, sh.n_head), HD, 0, stream>>>(out, scratch, n_splits);
  return cudaGetLastError();
}

}  // namespace

bool attention_head_dim_supported(int hd) { return hd == 32 || hd == 64 || hd == 128; }

template <class T>
cudaError_t paged_attention_forward(T* out, const T* qkv, const T* k_cache, const T* v_cache,
                                    const int32_t* tok_seq, const int32_t* tok_pos,
                                    const int32_t* block_tables, int max_blocks, int block_size,
                                    int Tn, const attention_shape& sh, int n_splits,
                                    int split_len, float* scratch, const int32_t* fused_kv_slot,
                                    cudaStream_t stream) {
  if (Tn <= 0) return cudaSuccess;
  if (n_splits < 1 || split_len < 1 || split_len > attention_max_split_len ||
      (n_splits > 1 && scratch == nullptr) || block_size < 1 || sh.n_kv_head < 1 ||
      sh.n_head % sh.n_kv_head != 0 || sh.window < 0)
    return cudaErrorInvalidValue;
  switch (sh.head_dim) {
    case 32:
      return launch<T, 32>(out, qkv, k_cache, v_cache, tok_seq, tok_pos, block_tables,
                           max_blocks, block_size, Tn, sh, n_splits, split_len, scratch,
                           fused_kv_slot, stream);
    case 64:
      return launch<T, 64>(out, qkv, k_cache, v_cache, tok_seq, tok_pos, block_tables,
                           max_blocks, block_size, Tn, sh, n_splits, split_len, scratch,
                           fused_kv_slot, stream);
    case 128:
      return launch<T, 128>(out, qkv, k_cache, v_cache, tok_seq, tok_pos, block_tables,
                            max_blocks, block_size, Tn, sh, n_splits, split_len, scratch,
                            fused_kv_slot, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

#define INFER_INST(T)                                                                        \
  template cudaError_t paged_attention_forward<T>(                                           \
      T*, const T*, const T*, const T*, const int32_t*, const int32_t*, const int32_t*, int, \
      int, int, const attention_shape&, int, int, float*, const int32_t*, cudaStream_t);
INFER_INST(half)
INFER_INST(bf16)
#undef INFER_INST

}  // namespace infer::cuda
