// Sampling on the device (the rule of cpu::sample_token), so that only token ids come
// back to the host. Greedy rows need one arg-max pass; the other rows need the order
// (logit desc, id asc), which a stable segmented radix sort gives (ids enter ascending,
// so equal logits keep ascending ids), then one block per row walks the sorted row.
// sample_fused_forward (at the end) settles the same rule without the sort; the sort path
// stays as its fallback and as the reference the device tests hold it to.
#include <climits>
#include <cstdint>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/iterator/transform_iterator.h>

#include "kernels/cuda-kernels.hpp"
#include "kernels/cuda-sampling.hpp"

namespace infer::cuda {
namespace {

constexpr int greedy_threads = 512;
constexpr int sorted_threads = 512;

// Arg-max with the lowest id winning ties.
__device__ inline void better(float& bv, int& bi, float v, int i) {
  if (v > bv || (v == bv && i < bi)) {
    bv = v;
    bi = i;
  }
}

// f(v, i) for every element of a row, NT threads of a block. A row is 512 KB at a 128k
// vocabulary and one block reads it: loads must be in flight together (16 floats a thread)
// or the loop waits out the memory latency element by element.
template <int NT, class F>
__device__ __forceinline__ void for_row(const float* row, int V, F&& f) {
  int tail = 0;
  if ((reinterpret_cast<uintptr_t>(row) & 15) == 0) {
    const float4* r4 = reinterpret_cast<const float4*>(row);
    const int n4 = V / 4;
    int i = threadIdx.x;
    for (; i + 3 * NT < n4; i += 4 * NT) {
      float4 x[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) x[u] = r4[i + u * NT];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int b = 4 * (i + u * NT);
        f(x[u].x, b);
        f(x[u].y, b + 1);
        f(x[u].z, b + 2);
        f(x[u].w, b + 3);
      }
    }
    for (; i < n4; i += NT) {
      const float4 x = r4[i];
      f(x.x, 4 * i);
      f(x.y, 4 * i + 1);
      f(x.z, 4 * i + 2);
      f(x.w, 4 * i + 3);
    }
    tail = 4 * n4;
  }
  for (int j = tail + int(threadIdx.x); j < V; j += NT) f(row[j], j);
}

__global__ void sample_greedy_kernel(int32_t* tokens, const float* logits, int ld,
                                     const int32_t* rows, int V, const sampling_params* sp,
                                     const uint8_t* do_sample) {
  const int r = blockIdx.x;
  if (!do_sample[r]) {
    if (threadIdx.x == 0) tokens[r] = -1;
    return;
  }
  if (!sp[r].greedy()) return;  // left to sample_sorted_forward
  const float* row = logits + size_t(rows[r]) * ld;
  float bv = -INFINITY;
  int bi = 0x7fffffff;
  for_row<greedy_threads>(row, V, [&](float v, int i) { better(bv, bi, v, i); });
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    better(bv, bi, ov, oi);
  }
  __shared__ float s_v[greedy_threads / 32];
  __shared__ int s_i[greedy_threads / 32];
  const int w = threadIdx.x / 32;
  if (threadIdx.x % 32 == 0) {
    s_v[w] = bv;
    s_i[w] = bi;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int k = 1; k < greedy_threads / 32; ++k) better(bv, bi, s_v[k], s_i[k]);
    // All -inf or NaN rows: fall back to id 0 like an arg-max that never improves.
    tokens[r] = bi == 0x7fffffff ? 0 : bi;
  }
}

__global__ void compact_rows_kernel(float* compact, int32_t* ids, const float* logits, int ld,
                                    const int32_t* rows, int V) {
  const int r = blockIdx.y;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= V) return;
  compact[size_t(r) * V + i] = logits[size_t(rows[r]) * ld + i];
  ids[size_t(r) * V + i] = i;
}

struct row_offset {
  int V;
  __host__ __device__ int operator()(int r) const { return r * V; }
};

// First index i < n of a non-decreasing row with row[i] > x (or >= x), n if none.
template <bool strict>
__device__ int first_index(const float* row, int n, float x, int* s_found) {
  if (threadIdx.x == 0) *s_found = n;
  __syncthreads();
  for (int base = 0; base < n; base += sorted_threads) {
    const int i = base + threadIdx.x;
    const bool hit = i < n && (strict ? row[i] > x : row[i] >= x);
    if (hit) atomicMin(s_found, i);
    if (__syncthreads_or(hit)) break;
  }
  const int r = *s_found;
  __syncthreads();
  return r;
}

__global__ void sample_sorted_kernel(int32_t* tokens, const float* sorted_logits,
                                     const int32_t* sorted_ids, int V, const sampling_params* sp,
                                     const uint64_t* counters, const uint8_t* do_sample,
                                     float* prob) {
  const int r = blockIdx.x;
  if (!do_sample[r] || (sp[r].greedy() && do_sample[r] != sample_adjusted)) return;
  if (sp[r].greedy()) {  // adjusted greedy: the best of the adjusted row
    if (threadIdx.x == 0) tokens[r] = sorted_ids[size_t(r) * V];
    return;
  }
  using scan_t = cub::BlockScan<float, sorted_threads>;
  __shared__ typename scan_t::TempStorage s_scan;
  __shared__ float s_carry;
  __shared__ int s_found;
  const sampling_params p = sp[r];
  const float* row = sorted_logits + size_t(r) * V;
  float* cum = prob + size_t(r) * V;
  int K = p.top_k > 0 && p.top_k < V ? p.top_k : V;
  const float lmax = row[0];
  const float inv_t = 1.0f / p.temperature;
  // min_p: the same test as the CPU's, on the sorted row (true from some index on).
  if (p.min_p > 0.0f) {
    if (threadIdx.x == 0) s_found = K;
    __syncthreads();
    for (int base = 1; base < K; base += sorted_threads) {
      const int i = base + threadIdx.x;
      const bool cut = i < K && expf((row[i] - lmax) * inv_t) < p.min_p;
      if (cut) atomicMin(&s_found, i);
      if (__syncthreads_or(cut)) break;
    }
    K = s_found;
    __syncthreads();
  }

  // cum[i]: unnormalised softmax mass of the i + 1 best ids.
  if (threadIdx.x == 0) s_carry = 0.f;
  __syncthreads();
  for (int base = 0; base < K; base += sorted_threads) {
    const int i = base + threadIdx.x;
    const float e = i < K ? expf((row[i] - lmax) * inv_t) : 0.f;
    float inc, total;
    scan_t(s_scan).InclusiveSum(e, inc, total);
    const float carry = s_carry;
    if (i < K) cum[i] = carry + inc;
    __syncthreads();
    if (threadIdx.x == 0) s_carry = carry + total;
    __syncthreads();
  }
  const float mass = cum[K - 1];
  int kept = K;
  if (p.top_p < 1.0f) {
    const int n = first_index<false>(cum, K, p.top_p * mass, &s_found);
    kept = n < K ? n + 1 : K;
  }
  const float kept_mass = cum[kept - 1];
  const float u = sampling_uniform(p.seed, counters[r]);
  const int pick = first_index<true>(cum, kept, u * kept_mass, &s_found);
  if (threadIdx.x == 0) tokens[r] = sorted_ids[size_t(r) * V + (pick < kept ? pick : kept - 1)];
}

__global__ void adjust_rows_kernel(float* compact, int V, const int32_t* adj_start, const logit_adjust* adj,
                                   const sampling_params* sp, const uint64_t* counters, count_slots slots) {
  const int r = blockIdx.x;
  const sampling_params p = sp[r];
  float* row = compact + size_t(r) * V;
  const int slot = slots.slot != nullptr ? slots.slot[r] : -1;
  const logit_adjust* L = slot >= 0 ? slots.adj + size_t(slot) * slots.cap : adj_start ? adj + adj_start[r] : nullptr;
  const int n = slot >= 0 ? slots.len[slot] : adj_start ? adj_start[r + 1] - adj_start[r] : 0;
  const uint64_t gen = counters != nullptr ? counters[r] : 0;
  // Distinct tokens per row: no two threads touch one logit.
  for (int k = threadIdx.x; k < n; k += blockDim.x) {
    const logit_adjust a = L[k];
    row[a.token] = adjusted_logit_at(row[a.token], a, p, gen);
  }
}

// Slot slot[i] := the uploaded list of row i, for the rows with load[i] set.
__global__ void slot_load_kernel(count_slots slots, const int32_t* adj_start, const logit_adjust* adj,
                                 const uint8_t* load) {
  const int r = blockIdx.x;
  const int slot = slots.slot[r];
  if (slot < 0 || !load[r]) return;
  const int a0 = adj_start[r], n = min(adj_start[r + 1] - a0, slots.cap);
  logit_adjust* L = slots.adj + size_t(slot) * slots.cap;
  for (int k = threadIdx.x; k < n; k += blockDim.x) L[k] = adj[a0 + k];
  if (threadIdx.x == 0) slots.len[slot] = n;
}

// The scheduler's count_token on the device: the token row i sampled, counted in its slot
// (found by a scan of the list: it is read whole by every sampling step anyway).
__global__ void slot_count_kernel(count_slots slots, const int32_t* tokens, int V, const sampling_params* sp,
                                  const uint8_t* do_sample) {
  const int r = blockIdx.x;
  const int slot = slots.slot[r];
  if (slot < 0 || !do_sample[r] || !sp[r].penalized()) return;
  const int t = tokens[r];
  if (t < 0 || t >= V) return;
  logit_adjust* L = slots.adj + size_t(slot) * slots.cap;
  const int n = slots.len[slot];
  __shared__ int s_at;
  if (threadIdx.x == 0) s_at = INT_MAX;
  __syncthreads();
  for (int k = threadIdx.x; k < n; k += blockDim.x)
    if (L[k].token == t) s_at = k;  // distinct tokens: at most one writer
  __syncthreads();
  if (threadIdx.x != 0) return;
  if (s_at != INT_MAX) {
    L[s_at].seen |= adjust_seen;
    ++L[s_at].count;
  } else if (n < slots.cap) {  // the capacity bounds the distinct tokens of a context
    L[n] = logit_adjust{t, 1, 0.0f, adjust_seen};
    slots.len[slot] = n + 1;
  }
}

constexpr int lp_threads = 512;

// Block-wide best of (v, i) by (value desc, id asc) among elements ranked after (pv, pi).
__device__ void block_best(float& bv, int& bi) {
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    better(bv, bi, ov, oi);
  }
  __shared__ float s_v[lp_threads / 32];
  __shared__ int s_i[lp_threads / 32];
  const int w = threadIdx.x / 32;
  if (threadIdx.x % 32 == 0) {
    s_v[w] = bv;
    s_i[w] = bi;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int k = 1; k < lp_threads / 32; ++k) better(bv, bi, s_v[k], s_i[k]);
    s_v[0] = bv;
    s_i[0] = bi;
  }
  __syncthreads();
  bv = s_v[0];
  bi = s_i[0];
  __syncthreads();
}

__global__ void logprobs_top_kernel(float* lse, int32_t* top_ids, float* top_lp, const float* logits, int ld,
                                    const int32_t* rows, int V, const sampling_params* sp,
                                    const uint8_t* do_sample) {
  const int r = blockIdx.x;
  const int k = sp[r].logprobs;
  if (!do_sample[r] || k < 0) return;
  const float* row = logits + size_t(rows[r]) * ld;
  float bv = -INFINITY;
  int bi = 0x7fffffff;
  for (int i = threadIdx.x; i < V; i += lp_threads) better(bv, bi, row[i], i);
  block_best(bv, bi);
  const float maxl = bv;
  float sum = 0.f;
  for (int i = threadIdx.x; i < V; i += lp_threads) sum += expf(row[i] - maxl);
  using reduce_t = cub::BlockReduce<float, lp_threads>;
  __shared__ typename reduce_t::TempStorage s_red;
  __shared__ float s_lse;
  const float total = reduce_t(s_red).Sum(sum);
  if (threadIdx.x == 0) s_lse = maxl + logf(total);
  __syncthreads();
  const float l = s_lse;
  if (threadIdx.x == 0) lse[r] = l;
  // k passes, each the best of the ids ranked after the previous pick.
  float pv = bv;
  int pi = bi;
  for (int j = 0; j < k && j < V; ++j) {
    if (j > 0) {
      bv = -INFINITY;
      bi = 0x7fffffff;
      for (int i = threadIdx.x; i < V; i += lp_threads) {
        const float v = row[i];
        if (v < pv || (v == pv && i > pi)) better(bv, bi, v, i);
      }
      block_best(bv, bi);
      pv = bv;
      pi = bi;
    }
    if (threadIdx.x == 0) {
      top_ids[size_t(r) * sampling_params::max_logprobs + j] = pi;
      top_lp[size_t(r) * sampling_params::max_logprobs + j] = pv - l;
    }
  }
}

__global__ void logprobs_gather_kernel(float* logprob, const int32_t* tokens, const float* lse, const float* logits,
                                       int ld, const int32_t* rows, int N, const sampling_params* sp,
                                       const uint8_t* do_sample) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= N || !do_sample[r] || sp[r].logprobs < 0) return;
  const int t = tokens[r];
  logprob[r] = t >= 0 ? logits[size_t(rows[r]) * ld + t] - lse[r] : 0.0f;
}


// ---- The fast path (cuda-sampling.hpp: fused_sampling_args) ----
constexpr int fs_threads = 512;
constexpr int fs_warps = fs_threads / 32;
constexpr int fs_bins = 4096;    // mass histogram of the sampling view
constexpr int fs_cap = 2048;     // gathered sampling candidates
constexpr int fs_cap_lp = 512;   // gathered logprobs candidates
// Masses are w * 2^40 truncated: w = exp(-d) < 2^-40 for d > 27.8 counts as 0, so bins
// need to span at most 28 (temperature-scaled) nats below the maximum.
constexpr float fs_span = 28.0f;
constexpr float fs_fixed = 1099511627776.0f;  // 2^40
// The histogram adds each mass as two 20-bit halves with 32-bit shared atomics (native;
// a 64-bit shared add is a compare-and-swap loop, and it was most of the kernel's time);
// a bin whose halves wrap (over 4096 elements of mass ~1 in one bin: ties) shows in the
// check of the bins' sum against the exact total, and the row goes to the sort path.
constexpr int fs_half = 20;
constexpr size_t fs_smem_bytes = size_t(fs_bins) * 8 + size_t(2 * fs_cap) * 8 +
                                 size_t(2 * fs_cap_lp) * 8 + size_t(fs_bins) * 4;
using u64 = unsigned long long;

// Keys ordered as the rule ranks ids: (value desc, id asc) is key desc; -0 ranks as +0.
__device__ __forceinline__ uint32_t fs_ord(float v) {
  const uint32_t u = __float_as_uint(v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ u64 fs_key(float v, int i) {
  if (v == 0.0f) v = 0.0f;
  return (u64(fs_ord(v)) << 32) | u64(~uint32_t(i));
}
__device__ __forceinline__ float fs_key_value(u64 k) {
  const uint32_t o = uint32_t(k >> 32);
  return __uint_as_float((o & 0x80000000u) ? (o & 0x7fffffffu) : ~o);
}
__device__ __forceinline__ int fs_key_id(u64 k) { return int(~uint32_t(k)); }

// Every logit the sampling view reads passes here. A per-row vocabulary mask (grammar,
// issue 20) goes here: return -INFINITY where it bans token i (the view's arg-max,
// histogram and gather all read through this, the logprobs view does not).
__device__ __forceinline__ float fused_view_value(float v, int /*i*/) { return v; }

// The sampling view's geometry of one row: distance d = (max - v) / T, its bin, its mass
// (min_p applied with the cpu rule's test, exp(-d) < min_p).
struct fs_view {
  float m, inv_t, scale, min_p;
  __device__ __forceinline__ float dist(float v) const { return (m - v) * inv_t; }
  __device__ __forceinline__ int bin(float v) const {
    const float x = dist(v) * scale;
    return x < float(fs_bins - 1) ? int(x) : fs_bins - 1;
  }
  __device__ __forceinline__ u64 mass(float v) const {
    const float w = expf(-dist(v));
    if (min_p > 0.0f && w < min_p) return 0;
    return __float2ull_rz(w * fs_fixed);
  }
};

// Online log-sum-exp.
__device__ __forceinline__ void lse_add(float& m, float& s, float v) {
  if (!(v > -INFINITY)) return;
  if (v > m) {
    s = s * expf(m - v) + 1.0f;
    m = v;
  } else {
    s += expf(v - m);
  }
}
__device__ __forceinline__ void lse_merge(float& m, float& s, float m2, float s2) {
  if (!(m2 > -INFINITY)) return;
  if (!(m > -INFINITY)) {
    m = m2;
    s = s2;
  } else if (m2 > m) {
    s = s * expf(m - m2) + s2;
    m = m2;
  } else {
    s += s2 * expf(m2 - m);
  }
}

// Sorts n distinct keys descending: each key's rank is the number of keys above it.
__device__ void fs_rank_sort(const u64* in, u64* out, int n) {
  constexpr int per = fs_cap / fs_threads;  // n <= fs_cap: each thread ranks up to 4 keys
  u64 key[per];
  int rank[per];
#pragma unroll
  for (int u = 0; u < per; ++u) {
    const int j = threadIdx.x + u * fs_threads;
    key[u] = j < n ? in[j] : 0;
    rank[u] = 0;
  }
  if (int(threadIdx.x) >= n) return;
  for (int q = 0; q < n; ++q) {
    const u64 kq = in[q];
#pragma unroll
    for (int u = 0; u < per; ++u) rank[u] += kq > key[u];
  }
#pragma unroll
  for (int u = 0; u < per; ++u)
    if (int(threadIdx.x) + u * fs_threads < n) out[rank[u]] = key[u];
}

// How many j < n satisfy pred (block-uniform call).
template <class F>
__device__ int fs_count(int n, F pred) {
  int c = 0;
  for (int base = 0; base < n; base += fs_threads) {
    const int j = base + threadIdx.x;
    c += __syncthreads_count(j < n && pred(j));
  }
  return c;
}

// First bin whose inclusive prefix is >= x (strict: > x); the last bin if none.
__device__ int fs_first_bin(const u64* incl, double x, bool strict) {
  int lo = 0, hi = fs_bins - 1;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    const double v = double(incl[mid]);
    if (strict ? v > x : v >= x) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

struct fs_ctl {
  float m_s, m_l, lse, mn_s, th_lp;
  int arg;
  int lo1, hi1, lo2, hi2;  // gathered bins: one or two intervals (lo2 > hi1 + 1)
  u64 off1, off2;          // mass before the first gathered element of each interval
  u64 total;               // whole kept mass before top_k (no top_k: the row's)
  int bk, need_k;          // top_k: the bin of the K-th element, and its rank inside the bin
  float u;
  int n_s, n_l, token;
  bool wrapped;  // a histogram half wrapped: the row goes to the sort path
};

__global__ void __launch_bounds__(fs_threads, 2) sample_fused_kernel(const fused_sampling_args a) {
  extern __shared__ __align__(16) unsigned char fs_dyn[];
  u64* mass = reinterpret_cast<u64*>(fs_dyn);  // [fs_bins] inclusive prefix, after
  uint32_t* mass_hi = reinterpret_cast<uint32_t*>(fs_dyn);  // the halves it is built from
  uint32_t* mass_lo = mass_hi + fs_bins;
  u64* cand = mass + fs_bins;                  // gathered keys, then prefix masses
  u64* sorted = cand + fs_cap;
  u64* cand_l = sorted + fs_cap;
  u64* sorted_l = cand_l + fs_cap_lp;
  uint32_t* cnt = reinterpret_cast<uint32_t*>(sorted_l + fs_cap_lp);  // top_k counts
  __shared__ fs_ctl c;
  __shared__ float w_bv[fs_warps], w_m[fs_warps], w_s[fs_warps], w_mn[fs_warps];
  __shared__ int w_bi[fs_warps];
  __shared__ u64 w_sum[fs_warps];
  __shared__ u64 thr_key[fs_threads];
  using scan64 = cub::BlockScan<u64, fs_threads>;
  using scan32 = cub::BlockScan<uint32_t, fs_threads>;
  __shared__ union {
    typename scan64::TempStorage s64;
    typename scan32::TempStorage s32;
  } scan_tmp;

  const int r = blockIdx.x, tid = threadIdx.x, N = a.N, V = a.V;
  const uint8_t ds = a.do_sample[r];
  if (tid == 0) {
    a.redo[r] = 0;
    a.redo[N + r] = 0;
  }
  if (!ds) return;
  const sampling_params p = a.sp[r];
  const bool want_lp = p.logprobs >= 0 && a.lse != nullptr;
  // The row's adjustments: its slot's list (device-held counts) or the step's uploaded one.
  const int slot = a.slots.slot != nullptr ? a.slots.slot[r] : -1;
  const logit_adjust* L = nullptr;
  float* LR = nullptr;
  int nL = 0;
  if (ds == sample_adjusted) {
    if (slot >= 0) {
      L = a.slots.adj + size_t(slot) * a.slots.cap;
      LR = a.slots.raw + size_t(slot) * a.slots.cap;
      nL = a.slots.len[slot];
    } else if (a.adj_start != nullptr) {
      L = a.adj + a.adj_start[r];
      LR = a.adj_raw + a.adj_start[r];
      nL = a.adj_start[r + 1] - a.adj_start[r];
    }
  }
  const bool adjusted = ds == sample_adjusted && (slot >= 0 || a.adj_start != nullptr);
  const uint64_t gen = a.counters[r];
  const bool sampled = !p.greedy();
  if (!sampled && !adjusted && !want_lp) return;  // plain greedy: sample_greedy_forward's
  float* row = a.logits + size_t(a.rows[r]) * a.ld;
  const int k_lp = want_lp ? min(p.logprobs, V) : 0;
  const float inv_t = sampled ? 1.0f / p.temperature : 1.0f;

  // 0. Adjusted entries aside (distinct tokens: no two threads touch one); NaN marks them.
  for (int k = tid; k < nL; k += fs_threads) {
    const int t = L[k].token;
    LR[k] = row[t];
    row[t] = __int_as_float(0x7fc00000);
  }
  for (int b = tid; b < fs_bins; b += fs_threads) {
    mass[b] = 0;  // both halves
    cnt[b] = 0;
  }
  if (tid == 0) {
    c.n_s = 0;
    c.n_l = 0;
    c.token = -1;
    c.th_lp = -INFINITY;
    c.lo1 = c.lo2 = -1;
    c.wrapped = false;
    c.hi1 = c.hi2 = -2;
  }
  __syncthreads();

  // 1. Arg-max of the sampling view; lse and each thread's maximum of the raw view.
  float bv = -INFINITY, lm = -INFINITY, ls = 0.0f, mn = INFINITY, tmax = -INFINITY;
  int bi = INT_MAX;
  bool any = false;
  for_row<fs_threads>(row, V, [&](float raw, int i) {
    if (raw != raw) return;
    const float v = fused_view_value(raw, i);
    better(bv, bi, v, i);
    if (v > -INFINITY) mn = fminf(mn, v);
    if (want_lp) {
      lse_add(lm, ls, raw);
      tmax = fmaxf(tmax, raw);
      any = true;
    }
  });
  for (int k = tid; k < nL; k += fs_threads) {
    const float raw = LR[k];
    const int t = L[k].token;
    const float v = fused_view_value(adjusted_logit_at(raw, L[k], p, gen), t);
    better(bv, bi, v, t);
    if (v > -INFINITY) mn = fminf(mn, v);
    if (want_lp && raw == raw) {
      lse_add(lm, ls, raw);
      tmax = fmaxf(tmax, raw);
      any = true;
    }
  }
  thr_key[tid] = any ? fs_key(tmax, tid) : 0;
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    better(bv, bi, ov, oi);
    const float om = __shfl_xor_sync(0xffffffffu, lm, o);
    const float os = __shfl_xor_sync(0xffffffffu, ls, o);
    lse_merge(lm, ls, om, os);
    mn = fminf(mn, __shfl_xor_sync(0xffffffffu, mn, o));
  }
  if (tid % 32 == 0) {
    w_bv[tid / 32] = bv;
    w_bi[tid / 32] = bi;
    w_m[tid / 32] = lm;
    w_s[tid / 32] = ls;
    w_mn[tid / 32] = mn;
  }
  __syncthreads();
  if (tid == 0) {
    for (int w = 1; w < fs_warps; ++w) {
      better(bv, bi, w_bv[w], w_bi[w]);
      lse_merge(lm, ls, w_m[w], w_s[w]);
      mn = fminf(mn, w_mn[w]);
    }
    c.m_s = bv;
    c.arg = bi == INT_MAX ? 0 : bi;  // all -inf / NaN: id 0, as an arg-max that never improves
    c.m_l = lm;
    c.lse = lm + logf(ls);
    c.mn_s = mn;
  }
  // Logprobs threshold: the k-th largest thread maximum (each of those k threads holds an
  // element >= it, so the k best are among the elements >= it).
  if (k_lp > 0) {
    const u64 mine = thr_key[tid];
    if (mine != 0) {
      int rank = 0;
      for (int q = 0; q < fs_threads; ++q) rank += thr_key[q] > mine;
      if (rank == k_lp - 1) c.th_lp = fs_key_value(mine);
    }
  }
  __syncthreads();

  const float m_s = c.m_s;
  const bool sel = sampled && m_s > -INFINITY && m_s < INFINITY;
  if (tid == 0 && !sel && (sampled || adjusted)) c.token = c.arg;
  fs_view g{m_s, inv_t, 1.0f, p.min_p};
  const int K = p.top_k > 0 && p.top_k < V ? p.top_k : V;
  const bool kact = K < V;
  if (sel) {
    float span = (m_s - c.mn_s) * inv_t;
    if (!(span > 0.0f)) span = 1.0f;
    g.scale = float(fs_bins - 1) / fminf(span, fs_span);

    // 2. Mass (and, under top_k, count) histogram of the sampling view.
    u64 tsum = 0;  // the exact total, for the check of the halves
    auto add = [&](float v) {
      const int b = g.bin(v);
      if (kact && b < fs_bins - 1) atomicAdd(&cnt[b], 1u);
      const u64 f = g.mass(v);
      if (f == 0) return;
      tsum += f;
      const uint32_t hi = uint32_t(f >> fs_half), lo = uint32_t(f) & ((1u << fs_half) - 1);
      if (hi) atomicAdd(&mass_hi[b], hi);
      if (lo) atomicAdd(&mass_lo[b], lo);
    };
    for_row<fs_threads>(row, V, [&](float raw, int i) {
      if (raw == raw) add(fused_view_value(raw, i));
    });
    for (int k = tid; k < nL; k += fs_threads) {
      const float v = fused_view_value(adjusted_logit_at(LR[k], L[k], p, gen), L[k].token);
      if (v == v) add(v);
    }
    for (int o = 16; o > 0; o >>= 1) tsum += __shfl_xor_sync(0xffffffffu, tsum, o);
    if (tid % 32 == 0) w_sum[tid / 32] = tsum;
    __syncthreads();
    constexpr int per = fs_bins / fs_threads;
    {
      u64 it[per];
      for (int q = 0; q < per; ++q) {
        const int b = tid * per + q;
        it[q] = (u64(mass_hi[b]) << fs_half) + u64(mass_lo[b]);
      }
      __syncthreads();  // the halves are read: mass[] overwrites them
      scan64(scan_tmp.s64).InclusiveSum(it, it);
      for (int q = 0; q < per; ++q) mass[tid * per + q] = it[q];
    }
    __syncthreads();
    if (kact) {
      uint32_t it[per];
      for (int q = 0; q < per; ++q) it[q] = cnt[tid * per + q];
      scan32(scan_tmp.s32).InclusiveSum(it, it);
      for (int q = 0; q < per; ++q) cnt[tid * per + q] = it[q];
      __syncthreads();
    }

    // Where top_k's K-th element, top_p's cut and the draw can fall.
    if (tid == 0) {
      auto excl = [&](int b) -> u64 { return b > 0 ? mass[b - 1] : 0; };
      auto incl_cnt = [&](int b) -> uint32_t { return b >= fs_bins - 1 ? uint32_t(V) : cnt[b]; };
      const u64 all = mass[fs_bins - 1];
      u64 exact = 0;
      for (int w = 0; w < fs_warps; ++w) exact += w_sum[w];
      c.wrapped = exact != all;
      int bk = fs_bins;
      int need_k = 0;
      if (kact) {
        int lo = 0, hi = fs_bins - 1;
        while (lo < hi) {
          const int mid = (lo + hi) / 2;
          if (incl_cnt(mid) >= uint32_t(K)) hi = mid;
          else lo = mid + 1;
        }
        bk = lo;
        need_k = K - int(bk > 0 ? incl_cnt(bk - 1) : 0);
      }
      const u64 m_lo = kact ? excl(bk) : all, m_hi = kact ? mass[bk] : all;
      int lo = -1, hi = -2;
      u64 kept_lo = all, kept_hi = all;
      if (p.top_p < 1.0f) {
        lo = fs_first_bin(mass, double(p.top_p) * double(m_lo), false);
        if (kact) {
          lo = min(lo, bk);
          hi = bk;
          kept_hi = m_hi;
        } else {
          hi = lo;
          kept_hi = mass[lo];
        }
        kept_lo = excl(lo);
      } else if (kact) {
        lo = hi = bk;
        kept_lo = m_lo;
        kept_hi = m_hi;
      }
      const float u = sampling_uniform(p.seed, a.counters[r]);
      const int dlo = fs_first_bin(mass, double(u) * double(kept_lo), true);
      const int dhi = fs_first_bin(mass, double(u) * double(kept_hi), true);
      if (lo < 0 || dhi + 1 >= lo) {
        c.lo1 = lo < 0 ? dlo : min(dlo, lo);
        c.hi1 = max(dhi, hi);
      } else {
        c.lo1 = dlo;
        c.hi1 = dhi;
        c.lo2 = lo;
        c.hi2 = hi;
      }
      c.off1 = excl(c.lo1);
      c.off2 = c.lo2 >= 0 ? excl(c.lo2) - (mass[c.hi1] - excl(c.lo1)) : 0;
      c.total = all;
      c.bk = bk;
      c.need_k = need_k;
      c.u = u;
    }
    __syncthreads();
  }

  // 3. Gather the candidates: the sampling view's in the chosen bins, the raw view's at or
  // above the logprobs threshold.
  if (sel || k_lp > 0) {
    const int lo1 = c.lo1, hi1 = c.hi1, lo2 = c.lo2, hi2 = c.hi2;
    const float th = c.th_lp;
    for_row<fs_threads>(row, V, [&](float raw, int i) {
      if (raw != raw) return;
      if (sel) {
        const float v = fused_view_value(raw, i);
        const int b = g.bin(v);
        if ((b >= lo1 && b <= hi1) || (b >= lo2 && b <= hi2)) {
          const int j = atomicAdd(&c.n_s, 1);
          if (j < fs_cap) cand[j] = fs_key(v, i);
        }
      }
      if (k_lp > 0 && raw >= th) {
        const int j = atomicAdd(&c.n_l, 1);
        if (j < fs_cap_lp) cand_l[j] = fs_key(raw, i);
      }
    });
    for (int k = tid; k < nL; k += fs_threads) {
      const float raw = LR[k];
      const int t = L[k].token;
      if (sel) {
        const float v = fused_view_value(adjusted_logit_at(raw, L[k], p, gen), t);
        const int b = v == v ? g.bin(v) : -3;
        if ((b >= lo1 && b <= hi1) || (b >= lo2 && b <= hi2)) {
          const int j = atomicAdd(&c.n_s, 1);
          if (j < fs_cap) cand[j] = fs_key(v, t);
        }
      }
      if (k_lp > 0 && raw == raw && raw >= th) {
        const int j = atomicAdd(&c.n_l, 1);
        if (j < fs_cap_lp) cand_l[j] = fs_key(raw, t);
      }
    }
    __syncthreads();
  }
  const bool ok_s = sel && !c.wrapped && c.n_s > 0 && c.n_s <= fs_cap;
  const bool ok_l = k_lp > 0 && c.n_l <= fs_cap_lp && c.n_l >= k_lp;
  const int n_s = min(c.n_s, fs_cap), n_l = min(c.n_l, fs_cap_lp);
  if (ok_s) fs_rank_sort(cand, sorted, n_s);
  if (ok_l) fs_rank_sort(cand_l, sorted_l, n_l);
  __syncthreads();

  if (ok_s) {
    // Prefix masses of the ranked candidates: the row's cumulative mass through each (the
    // gathered bins are whole, so one offset per interval).
    constexpr int per = fs_cap / fs_threads;
    u64 it[per];
    for (int q = 0; q < per; ++q) {
      const int j = tid * per + q;
      it[q] = j < n_s ? g.mass(fs_key_value(sorted[j])) : 0;
    }
    scan64(scan_tmp.s64).InclusiveSum(it, it);
    for (int q = 0; q < per; ++q) {
      const int j = tid * per + q;
      if (j < n_s) cand[j] = it[q] + (g.bin(fs_key_value(sorted[j])) <= c.hi1 ? c.off1 : c.off2);
    }
    __syncthreads();
    const u64* pre = cand;
    int lim = n_s - 1;
    u64 total = c.total;
    if (kact) {
      const int bk = c.bk;
      const int before = fs_count(n_s, [&](int j) { return g.bin(fs_key_value(sorted[j])) < bk; });
      lim = min(before + c.need_k - 1, n_s - 1);
      total = pre[lim];
    }
    int je = lim;
    if (p.top_p < 1.0f) {
      const double t1 = double(p.top_p) * double(total);
      je = min(fs_count(lim + 1, [&](int j) { return double(pre[j]) < t1; }), lim);
    }
    const u64 kept = (p.top_p < 1.0f || kact) ? pre[je] : total;
    const double t2 = double(c.u) * double(kept);
    const int jd = min(fs_count(je + 1, [&](int j) { return double(pre[j]) <= t2; }), je);
    if (tid == 0) c.token = fs_key_id(sorted[jd]);
  }
  if (ok_l && tid < k_lp) {
    const size_t o = size_t(r) * sampling_params::max_logprobs + size_t(tid);
    a.top_ids[o] = fs_key_id(sorted_l[tid]);
    a.top_lp[o] = fs_key_value(sorted_l[tid]) - c.lse;
  }

  // The row as it came in, then what only thread 0 writes.
  __syncthreads();
  for (int k = tid; k < nL; k += fs_threads) row[L[k].token] = LR[k];
  __syncthreads();
  if (tid == 0) {
    const bool redo_s = sel && !ok_s;
    const bool redo_l = k_lp > 0 && !ok_l;
    if (c.token >= 0) a.tokens[r] = c.token;
    a.redo[r] = redo_s ? ds : 0;
    a.redo[N + r] = redo_l ? 1 : 0;
    if (want_lp) {
      a.lse[r] = c.lse;
      const int t = (sampled || adjusted) ? c.token : a.tokens[r];
      if (t >= 0 && t < V) a.logprob[r] = row[t] - c.lse;
    }
  }
}

}  // namespace

cudaError_t sample_fused_forward(const fused_sampling_args& a, cudaStream_t stream) {
  if (a.N <= 0) return cudaSuccess;
  cudaError_t e = cudaFuncSetAttribute(sample_fused_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       int(fs_smem_bytes));
  if (e != cudaSuccess) return e;
  sample_fused_kernel<<<a.N, fs_threads, fs_smem_bytes, stream>>>(a);
  return cudaGetLastError();
}

cudaError_t compact_rows_forward(float* compact, int32_t* ids, const float* logits, int ld,
                                 const int32_t* rows, int N, int V, cudaStream_t stream) {
  if (N <= 0) return cudaSuccess;
  compact_rows_kernel<<<dim3((V + 255) / 256, N), 256, 0, stream>>>(compact, ids, logits, ld, rows, V);
  return cudaGetLastError();
}

cudaError_t adjust_rows_forward(float* compact, int V, int N, const int32_t* adj_start,
                                const logit_adjust* adj, const sampling_params* sp, cudaStream_t stream) {
  return adjust_rows_forward(compact, V, N, adj_start, adj, sp, nullptr, count_slots{}, stream);
}

cudaError_t adjust_rows_forward(float* compact, int V, int N, const int32_t* adj_start, const logit_adjust* adj,
                                const sampling_params* sp, const uint64_t* counters, const count_slots& slots,
                                cudaStream_t stream) {
  if (N <= 0) return cudaSuccess;
  adjust_rows_kernel<<<N, 256, 0, stream>>>(compact, V, adj_start, adj, sp, counters, slots);
  return cudaGetLastError();
}

cudaError_t slot_load_forward(const count_slots& slots, const int32_t* adj_start, const logit_adjust* adj,
                              const uint8_t* load, int N, cudaStream_t stream) {
  if (N <= 0) return cudaSuccess;
  slot_load_kernel<<<N, 128, 0, stream>>>(slots, adj_start, adj, load);
  return cudaGetLastError();
}

cudaError_t slot_count_forward(const count_slots& slots, const int32_t* tokens, int N, int V,
                               const sampling_params* sp, const uint8_t* do_sample, cudaStream_t stream) {
  if (N <= 0) return cudaSuccess;
  slot_count_kernel<<<N, 128, 0, stream>>>(slots, tokens, V, sp, do_sample);
  return cudaGetLastError();
}

cudaError_t sort_compact_forward(void* temp, size_t& temp_bytes, float* sorted_logits, int32_t* sorted_ids,
                                 const float* compact, const int32_t* ids, int N, int V, cudaStream_t stream) {
  auto begin = thrust::make_transform_iterator(thrust::counting_iterator<int>(0), row_offset{V});
  auto end = begin + 1;
  if (temp != nullptr && N <= 0) return cudaSuccess;
  return cub::DeviceSegmentedRadixSort::SortPairsDescending(temp, temp_bytes, compact, sorted_logits, ids,
                                                            sorted_ids, int64_t(N) * V, N, begin, end, 0, 32,
                                                            stream);
}

cudaError_t logprobs_top_forward(float* lse, int32_t* top_ids, float* top_lp, const float* logits, int ld,
                                 const int32_t* rows, int N, int V, const sampling_params* sp,
                                 const uint8_t* do_sample, cudaStream_t stream) {
  if (N <= 0) return cudaSuccess;
  logprobs_top_kernel<<<N, lp_threads, 0, stream>>>(lse, top_ids, top_lp, logits, ld, rows, V, sp, do_sample);
  return cudaGetLastError();
}

cudaError_t logprobs_gather_forward(float* logprob, const int32_t* tokens, const float* lse, const float* logits,
                                    int ld, const int32_t* rows, int N, const sampling_params* sp,
                                    const uint8_t* do_sample, cudaStream_t stream) {
  if (N <= 0) return cudaSuccess;
  logprobs_gather_kernel<<<(N + 127) / 128, 128, 0, stream>>>(logprob, tokens, lse, logits, ld, rows, N, sp,
                                                              do_sample);
  return cudaGetLastError();
}

cudaError_t sample_greedy_forward(int32_t* tokens, const float* logits, int ld,
                                  const int32_t* rows, int N, int V, const sampling_params* sp,
                                  const uint8_t* do_sample, cudaStream_t stream) {
  if (N <= 0) return cudaSuccess;
  sample_greedy_kernel<<<N, greedy_threads, 0, stream>>>(tokens, logits, ld, rows, V, sp,
                                                         do_sample);
  return cudaGetLastError();
}

cudaError_t sort_rows_forward(void* temp, size_t& temp_bytes, float* sorted_logits,
                              int32_t* sorted_ids, const float* logits, int ld,
                              const int32_t* rows, int N, int V, float* compact_scratch,
                              int32_t* ids_scratch, cudaStream_t stream) {
  auto begin = thrust::make_transform_iterator(thrust::counting_iterator<int>(0), row_offset{V});
  auto end = begin + 1;
  if (temp == nullptr) {
    return cub::DeviceSegmentedRadixSort::SortPairsDescending(
        nullptr, temp_bytes, compact_scratch, sorted_logits, ids_scratch, sorted_ids,
        int64_t(N) * V, N, begin, end, 0, 32, stream);
  }
  if (N <= 0) return cudaSuccess;
  compact_rows_kernel<<<dim3((V + 255) / 256, N), 256, 0, stream>>>(compact_scratch, ids_scratch,
                                                                     logits, ld, rows, V);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  return cub::DeviceSegmentedRadixSort::SortPairsDescending(
      temp, temp_bytes, compact_scratch, sorted_logits, ids_scratch, sorted_ids, int64_t(N) * V, N,
      begin, end, 0, 32, stream);
}

cudaError_t sample_sorted_forward(int32_t* tokens, const float* sorted_logits,
                                  const int32_t* sorted_ids, int N, int V,
                                  const sampling_params* sp, const uint64_t* counters,
                                  const uint8_t* do_sample, float* prob_scratch,
                                  cudaStream_t stream) {
  if (N <= 0) return cudaSuccess;
  sample_sorted_kernel<<<N, sorted_threads, 0, stream>>>(tokens, sorted_logits, sorted_ids, V, sp,
                                                         counters, do_sample, prob_scratch);
  return cudaGetLastError();
}

}  // namespace infer::cuda
