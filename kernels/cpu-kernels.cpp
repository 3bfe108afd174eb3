#include "kernels/cpu-kernels.hpp"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

namespace infer::cpu {
namespace {

// expf as Cephes computes it (range reduction by ln 2, degree-5 polynomial), written
// branch-free so `omp simd` loops vectorise it: libm's expf is a scalar call per
// element. Relative error ~2e-7, inside fp32 rounding of the callers' sums.
inline float exp_approx(float x) {
  x = std::min(88.3762626647949f, std::max(-87.3365478515625f, x));
  const float k = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - k * 0.693359375f + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  int32_t bits;
  std::memcpy(&bits, &y, 4);
  bits += int32_t(k) << 23;
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

}  // namespace

void embed_forward(float* out, const int32_t* tokens, const int32_t* pos, const float* wte,
                   const float* wpe, int T, int C) {
  for (int t = 0; t < T; ++t) {
    const float* te = wte + int64_t(tokens[t]) * C;
    float* o = out + int64_t(t) * C;
    if (!wpe) {
      std::memcpy(o, te, sizeof(float) * size_t(C));
      continue;
    }
    const float* pe = wpe + int64_t(pos[t]) * C;
    for (int i = 0; i < C; ++i) o[i] = te[i] + pe[i];
  }
}

void layernorm_forward(float* out, const float* in, const float* w, const float* b, int T, int C,
                       float eps) {
  for (int t = 0; t < T; ++t) {
    const float* x = in + int64_t(t) * C;
    float* o = out + int64_t(t) * C;
    float mean = 0.f;
#pragma omp simd reduction(+ : mean)
    for (int i = 0; i < C; ++i) mean += x[i];
    mean /= float(C);
    float var = 0.f;
#pragma omp simd reduction(+ : var)
    for (int i = 0; i < C; ++i) {
      float d = x[i] - mean;
      var += d * d;
    }
    var /= float(C);
    float rstd = 1.0f / std::sqrt(var + eps);
    for (int i = 0; i < C; ++i) o[i] = (x[i] - mean) * rstd * w[i] + b[i];
  }
}

void residual_forward(float* residual, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) residual[i] += x[i];
}

void residual_layernorm_forward(float* residual, float* out, const float* x, const float* w,
                                const float* b, int T, int C, float eps) {
  residual_forward(residual, x, int64_t(T) * C);
  layernorm_forward(out, residual, w, b, T, C, eps);
}

void matmul_forward(float* out, const float* in, const float* w, const float* bias, int T, int IN,
                    int OUT) {
  if (bias) {
    for (int t = 0; t < T; ++t) std::memcpy(out + int64_t(t) * OUT, bias, sizeof(float) * OUT);
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, OUT, IN, 1.0f, in, IN, w, OUT,
              bias ? 1.0f : 0.0f, out, OUT);
}

void gelu_forward(float* x, int64_t n) {
  const float s = std::sqrt(2.0f / float(M_PI));
  #pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    float v = x[i];
    const float y = s * (v + 0.044715f * v * v * v);
    // tanh(y) = 1 - 2 / (exp(2y) + 1): one expf, cheaper than tanhf; saturates correctly.
    x[i] = 0.5f * v * (2.0f - 2.0f / (exp_approx(2.0f * y) + 1.0f));
  }
}

void kv_store_forward(float* k_cache, float* v_cache, const float* qkv, const int32_t* slot, int T,
                      int C) {
  for (int t = 0; t < T; ++t) {
    const float* row = qkv + int64_t(t) * 3 * C;
    std::memcpy(k_cache + int64_t(slot[t]) * C, row + C, sizeof(float) * C);
    std::memcpy(v_cache + int64_t(slot[t]) * C, row + 2 * C, sizeof(float) * C);
  }
}

void paged_attention_forward(float* out, const float* qkv, const float* k_cache,
                             const float* v_cache, const int32_t* tok_seq, const int32_t* tok_pos,
                             const int32_t* block_tables, int max_blocks, int block_size, int T,
                             int C, int NH, float* scratch) {
  const int hd = C / NH;
  const float scale = 1.0f / std::sqrt(float(hd));
  for (int t = 0; t < T; ++t) {
    const int32_t* table = block_tables + int64_t(tok_seq[t]) * max_blocks;
    const int L = tok_pos[t] + 1;
    const int nb = (L + block_size - 1) / block_size;
    for (int h = 0; h < NH; ++h) {
      const float* q = qkv + int64_t(t) * 3 * C + h * hd;
      float maxv = -INFINITY;
      // Walk the sequence block by block: rows inside a block are contiguous.
      for (int blk = 0, p = 0; blk < nb; ++blk) {
        const float* kb = k_cache + int64_t(table[blk]) * block_size * C + h * hd;
        const int rows = std::min(block_size, L - blk * block_size);
        for (int r = 0; r < rows; ++r, ++p) {
          const float* k = kb + int64_t(r) * C;
          float dot = 0.f;
#pragma omp simd reduction(+ : dot)
          for (int i = 0; i < hd; ++i) dot += q[i] * k[i];
          dot *= scale;
          scratch[p] = dot;
          maxv = std::max(maxv, dot);
        }
      }
      float sum = 0.f;
#pragma omp simd reduction(+ : sum)
      for (int p = 0; p < L; ++p) {
        scratch[p] = exp_approx(scratch[p] - maxv);
        sum += scratch[p];
      }
      const float inv = 1.0f / sum;
      float* o = out + int64_t(t) * C + h * hd;
      std::fill(o, o + hd, 0.f);
      for (int blk = 0, p = 0; blk < nb; ++blk) {
        const float* vb = v_cache + int64_t(table[blk]) * block_size * C + h * hd;
        const int rows = std::min(block_size, L - blk * block_size);
        for (int r = 0; r < rows; ++r, ++p) {
          const float* v = vb + int64_t(r) * C;
          const float a = scratch[p] * inv;
#pragma omp simd
          for (int i = 0; i < hd; ++i) o[i] += a * v[i];
        }
      }
    }
  }
}

void lm_head_forward(float* logits, const float* x, const float* wte, int N, int C, int V) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, V, C, 1.0f, x, C, wte, C, 0.0f, logits,
              V);
}

void rmsnorm_forward(float* out, const float* in, const float* w, int T, int C, float eps) {
  for (int t = 0; t < T; ++t) {
    const float* x = in + int64_t(t) * C;
    float* o = out + int64_t(t) * C;
    float ss = 0.f;
#pragma omp simd reduction(+ : ss)
    for (int i = 0; i < C; ++i) ss += x[i] * x[i];
    const float r = 1.0f / std::sqrt(ss / float(C) + eps);
#pragma omp simd
    for (int i = 0; i < C; ++i) o[i] = x[i] * r * w[i];
  }
}

void residual_rmsnorm_forward(float* residual, float* out, const float* x, const float* w, int T,
                              int C, float eps) {
  residual_forward(residual, x, int64_t(T) * C);
  rmsnorm_forward(out, residual, w, T, C, eps);
}

void matmul_nt_forward(float* out, const float* in, const float* w, const float* bias, int T,
                       int IN, int OUT) {
  if (bias) {
    for (int t = 0; t < T; ++t) std::memcpy(out + int64_t(t) * OUT, bias, sizeof(float) * OUT);
  }
  if (T == 1) {  // one decode token: a matrix-vector product, which sgemm handles poorly here
    cblas_sgemv(CblasRowMajor, CblasNoTrans, OUT, IN, 1.0f, w, IN, in, 1, bias ? 1.0f : 0.0f, out, 1);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, OUT, IN, 1.0f, in, IN, w, IN,
              bias ? 1.0f : 0.0f, out, OUT);
}

void bias_add_forward(float* out, const float* bias, int T, int N) {
  for (int t = 0; t < T; ++t) {
    float* o = out + int64_t(t) * N;
#pragma omp simd
    for (int i = 0; i < N; ++i) o[i] += bias[i];
  }
}

void head_rmsnorm_forward(float* x, const float* w, int T, int row_stride, int n_heads, int hd,
                          float eps) {
  for (int t = 0; t < T; ++t)
    for (int h = 0; h < n_heads; ++h) {
      float* v = x + int64_t(t) * row_stride + int64_t(h) * hd;
      float ss = 0.f;
#pragma omp simd reduction(+ : ss)
      for (int i = 0; i < hd; ++i) ss += v[i] * v[i];
      const float r = 1.0f / std::sqrt(ss / float(hd) + eps);
#pragma omp simd
      for (int i = 0; i < hd; ++i) v[i] = v[i] * r * w[i];
    }
}

void rope_forward(float* x, const int32_t* pos, const float* cos, const float* sin, int T,
                  int row_stride, int n_heads, int hd, int rot_dim, bool interleaved) {
  const int half = rot_dim / 2;
  for (int t = 0; t < T; ++t) {
    const float* c = cos + int64_t(pos[t]) * half;
    const float* s = sin + int64_t(pos[t]) * half;
    for (int h = 0; h < n_heads; ++h) {
      float* v = x + int64_t(t) * row_stride + int64_t(h) * hd;
      if (interleaved) {
        for (int i = 0; i < half; ++i) {
          const float a = v[2 * i], b = v[2 * i + 1];
          v[2 * i] = a * c[i] - b * s[i];
          v[2 * i + 1] = b * c[i] + a * s[i];
        }
      } else {
#pragma omp simd
        for (int i = 0; i < half; ++i) {
          const float a = v[i], b = v[i + half];
          v[i] = a * c[i] - b * s[i];
          v[i + half] = b * c[i] + a * s[i];
        }
      }
    }
  }
}

void silu_mul_forward(float* out, const float* in, int T, int F) {
  for (int t = 0; t < T; ++t) {
    const float* g = in + int64_t(t) * 2 * F;
    const float* u = g + F;
    float* o = out + int64_t(t) * F;
#pragma omp simd
    for (int i = 0; i < F; ++i) o[i] = g[i] / (1.0f + exp_approx(-g[i])) * u[i];
  }
}

void silu_forward(float* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] / (1.0f + exp_approx(-x[i]));
}

void kv_store_gqa_forward(float* k_cache, float* v_cache, const float* qkv, const int32_t* slot,
                          int T, int q_dim, int kv_dim) {
  const int64_t stride = q_dim + 2 * int64_t(kv_dim);
  for (int t = 0; t < T; ++t) {
    const float* row = qkv + int64_t(t) * stride;
    std::memcpy(k_cache + int64_t(slot[t]) * kv_dim, row + q_dim, sizeof(float) * size_t(kv_dim));
    std::memcpy(v_cache + int64_t(slot[t]) * kv_dim, row + q_dim + kv_dim, sizeof(float) * size_t(kv_dim));
  }
}

void paged_attention_gqa_forward(float* out, const float* qkv, const float* k_cache,
                                 const float* v_cache, const int32_t* tok_seq,
                                 const int32_t* tok_pos, const int32_t* block_tables,
                                 int max_blocks, int block_size, int T, int NH, int NKV, int hd,
                                 int window, float scale, float* scratch) {
  const int q_dim = NH * hd, kv_dim = NKV * hd, group = NH / NKV;
  const int64_t stride = q_dim + 2 * int64_t(kv_dim);
  for (int t = 0; t < T; ++t) {
    const int32_t* table = block_tables + int64_t(tok_seq[t]) * max_blocks;
    const int end = tok_pos[t] + 1;
    const int begin = window > 0 ? std::max(0, end - window) : 0;
    for (int h = 0; h < NH; ++h) {
      const float* q = qkv + int64_t(t) * stride + int64_t(h) * hd;
      const int64_t kh = int64_t(h / group) * hd;
      float maxv = -INFINITY;
      // Positions begin..end-1, walked block by block: rows inside a block are contiguous.
      for (int p = begin; p < end;) {
        const int blk = p / block_size, r0 = p % block_size;
        const int rows = std::min(block_size - r0, end - p);
        const float* kb = k_cache + (int64_t(table[blk]) * block_size + r0) * kv_dim + kh;
        for (int r = 0; r < rows; ++r) {
          const float* k = kb + int64_t(r) * kv_dim;
          float dot = 0.f;
#pragma omp simd reduction(+ : dot)
          for (int i = 0; i < hd; ++i) dot += q[i] * k[i];
          dot *= scale;
          scratch[p - begin + r] = dot;
          maxv = std::max(maxv, dot);
        }
        p += rows;
      }
      const int L = end - begin;
      float sum = 0.f;
#pragma omp simd reduction(+ : sum)
      for (int p = 0; p < L; ++p) {
        scratch[p] = exp_approx(scratch[p] - maxv);
        sum += scratch[p];
      }
      const float inv = 1.0f / sum;
      float* o = out + int64_t(t) * q_dim + int64_t(h) * hd;
      std::fill(o, o + hd, 0.f);
      for (int p = begin; p < end;) {
        const int blk = p / block_size, r0 = p % block_size;
        const int rows = std::min(block_size - r0, end - p);
        const float* vb = v_cache + (int64_t(table[blk]) * block_size + r0) * kv_dim + kh;
        for (int r = 0; r < rows; ++r) {
          const float* v = vb + int64_t(r) * kv_dim;
          const float a = scratch[p - begin + r] * inv;
#pragma omp simd
          for (int i = 0; i < hd; ++i) o[i] += a * v[i];
        }
        p += rows;
      }
    }
  }
}

int32_t sample_token(const float* logits, int V, const sampling_params& sp, uint64_t counter,
                     float* scratch) {
  if (sp.greedy()) {
    int32_t best = 0;
    for (int i = 1; i < V; ++i)
      if (logits[i] > logits[best]) best = i;
    return best;
  }
  // Rank ids by (logit desc, id asc). Partial sort when top_k bounds the candidates.
  int32_t* ids = reinterpret_cast<int32_t*>(scratch);
  float* probs = scratch + V;
  std::iota(ids, ids + V, 0);
  auto by_rank = [logits](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  int K = (sp.top_k > 0 && sp.top_k < V) ? sp.top_k : V;
  if (K < V) {
    std::partial_sort(ids, ids + K, ids + V, by_rank);
  } else {
    std::sort(ids, ids + V, by_rank);
  }
  const float inv_t = 1.0f / sp.temperature;
  const float maxl = logits[ids[0]];
  // min_p: probabilities relative to the top one are exp((l - max) / T), 1 for the first,
  // non-increasing along the ranking: the kept ids are a prefix.
  if (sp.min_p > 0.0f) {
    for (int i = 1; i < K; ++i)
      if (std::exp((logits[ids[i]] - maxl) * inv_t) < sp.min_p) {
        K = i;
        break;
      }
  }
  float total = 0.f;
  for (int i = 0; i < K; ++i) {
    probs[i] = std::exp((logits[ids[i]] - maxl) * inv_t);
    total += probs[i];
  }
  // Nucleus: the shortest prefix whose mass reaches top_p (at least one id).
  int keep = K;
  if (sp.top_p < 1.0f) {
    const float target = sp.top_p * total;
    float cum = 0.f;
    for (int i = 0; i < K; ++i) {
      cum += probs[i];
      if (cum >= target) {
        keep = i + 1;
        break;
      }
    }
  }
  float kept = 0.f;
  for (int i = 0; i < keep; ++i) kept += probs[i];
  const float u = sampling_uniform(sp.seed, counter) * kept;
  float cum = 0.f;
  for (int i = 0; i < keep; ++i) {
    cum += probs[i];
    if (u < cum) return ids[i];
  }
  return ids[keep - 1];
}

void apply_logit_adjust(float* logits, std::span<const logit_adjust> adj, const sampling_params& sp) {
  for (const logit_adjust& a : adj) logits[a.token] = adjusted_logit(logits[a.token], a, sp);
}

void apply_token_mask(float* logits, const uint32_t* mask, int V) {
  // Whole words branch-free (vectorised); most words of a structural state are 0, most of a
  // string's are all ones.
  const int full = V / 32;
  for (int w = 0; w < full; ++w) {
    const uint32_t m = mask[w];
    if (m == ~0u) continue;
    float* p = logits + size_t(w) * 32;
    for (int j = 0; j < 32; ++j) p[j] = (m >> j) & 1u ? p[j] : -INFINITY;
  }
  for (int i = full * 32; i < V; ++i)
    if (!((mask[i >> 5] >> (i & 31)) & 1u)) logits[i] = -INFINITY;
}

float log_softmax_top(const float* logits, int V, int k, int32_t* top_ids, float* top_lp) {
  float maxl = -INFINITY;
  for (int i = 0; i < V; ++i) maxl = std::max(maxl, logits[i]);
  double sum = 0.0;
  for (int i = 0; i < V; ++i) sum += std::exp(double(logits[i] - maxl));
  const float lse = maxl + float(std::log(sum));
  // k <= 20 passes, each the best id ranked after the previous pick (logit desc, id asc):
  // O(k V), no sort of V ids.
  float pv = INFINITY;
  int32_t pi = -1;
  for (int n = 0; n < k && n < V; ++n) {
    int32_t best = -1;
    for (int i = 0; i < V; ++i) {
      const float v = logits[i];
      if (!(v < pv || (v == pv && i > pi))) continue;
      if (best < 0 || v > logits[best]) best = i;
    }
    if (best < 0) break;
    top_ids[n] = best;
    top_lp[n] = logits[best] - lse;
    pv = logits[best];
    pi = best;
  }
  return lse;
}

}  // namespace infer::cpu
