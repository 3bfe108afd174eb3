// The Llama-family CPU reference kernels on random data of several shapes, each against a
// direct float64 loop of its documented formula (kernels/cpu-kernels.hpp). The CUDA twins
// are tested against these functions.
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/cpu-kernels.hpp"

using namespace infer;

namespace {

std::vector<float> randn(std::mt19937_64& rng, size_t n, float scale = 1.0f) {
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

double max_rel(const std::vector<float>& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    num = std::max(num, std::abs(double(got[i]) - want[i]));
    den = std::max(den, std::abs(want[i]));
  }
  return num / std::max(den, 1e-30);
}

}  // namespace

TEST_CASE("rmsnorm, fused residual + rmsnorm, per-head rmsnorm") {
  std::mt19937_64 rng(1);
  for (int C : {8, 64, 896, 4096}) {
    CAPTURE(C);
    const int T = 5;
    auto x = randn(rng, size_t(T) * C), w = randn(rng, C, 0.2f), r = randn(rng, size_t(T) * C);
    for (auto& e : w) e += 1.0f;
    std::vector<float> out(x.size());
    cpu::rmsnorm_forward(out.data(), x.data(), w.data(), T, C, 1e-6f);
    std::vector<double> want(x.size());
    auto ref = [&](const std::vector<float>& in) {
      for (int t = 0; t < T; ++t) {
        double ss = 0;
        for (int i = 0; i < C; ++i) ss += double(in[t * C + i]) * in[t * C + i];
        const double s = 1 / std::sqrt(ss / C + 1e-6);
        for (int i = 0; i < C; ++i) want[t * C + i] = in[t * C + i] * s * w[i];
      }
    };
    ref(x);
    CHECK(max_rel(out, want) < 1e-6);
    std::vector<float> res = r, sum(x.size());
    for (size_t i = 0; i < x.size(); ++i) sum[i] = r[i] + x[i];
    cpu::residual_rmsnorm_forward(res.data(), out.data(), x.data(), w.data(), T, C, 1e-6f);
    CHECK(res == sum);
    ref(sum);
    CHECK(max_rel(out, want) < 1e-6);
  }
  for (int hd : {64, 128}) {
    const int T = 3, NH = 4, stride = NH * hd + 17;
    auto x = randn(rng, size_t(T) * stride), w = randn(rng, hd);
    auto y = x;
    cpu::head_rmsnorm_forward(y.data() + 5, w.data(), T, stride, NH, hd, 1e-6f);
    std::vector<double> want(x.begin(), x.end());
    for (int t = 0; t < T; ++t)
      for (int h = 0; h < NH; ++h) {
        const int o = t * stride + 5 + h * hd;
        double ss = 0;
        for (int i = 0; i < hd; ++i) ss += double(x[o + i]) * x[o + i];
        for (int i = 0; i < hd; ++i) want[o + i] = x[o + i] / std::sqrt(ss / hd + 1e-6) * w[i];
      }
    CHECK(max_rel(y, want) < 1e-6);  // including the untouched bytes around the heads
  }
}

TEST_CASE("matmul_nt (nn.Linear layout), bias add, silu and silu*mul") {
  std::mt19937_64 rng(2);
  for (auto [T, IN, OUT] : {std::tuple{1, 16, 8}, std::tuple{7, 64, 96}, std::tuple{33, 128, 40}}) {
    auto x = randn(rng, size_t(T) * IN), W = randn(rng, size_t(OUT) * IN), b = randn(rng, OUT);
    std::vector<float> out(size_t(T) * OUT);
    std::vector<double> want(out.size());
    for (bool with_bias : {false, true}) {
      cpu::matmul_nt_forward(out.data(), x.data(), W.data(), with_bias ? b.data() : nullptr, T, IN, OUT);
      for (int t = 0; t < T; ++t)
        for (int j = 0; j < OUT; ++j) {
          double s = with_bias ? b[j] : 0.0;
          for (int i = 0; i < IN; ++i) s += double(x[t * IN + i]) * W[size_t(j) * IN + i];
          want[t * OUT + j] = s;
        }
      CHECK(max_rel(out, want) < 1e-5);
    }
    cpu::matmul_nt_forward(out.data(), x.data(), W.data(), nullptr, T, IN, OUT);
    cpu::bias_add_forward(out.data(), b.data(), T, OUT);
    CHECK(max_rel(out, want) < 1e-5);
  }
  const int T = 4, F = 100;
  auto in = randn(rng, size_t(T) * 2 * F, 3.0f);
  std::vector<float> out(size_t(T) * F);
  cpu::silu_mul_forward(out.data(), in.data(), T, F);
  std::vector<double> want(out.size());
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < F; ++i) {
      const double g = in[t * 2 * F + i], u = in[t * 2 * F + F + i];
      want[t * F + i] = g / (1 + std::exp(-g)) * u;
    }
  CHECK(max_rel(out, want) < 1e-6);
  auto y = in;
  cpu::silu_forward(y.data(), int64_t(y.size()));
  std::vector<double> ws(in.size());
  for (size_t i = 0; i < in.size(); ++i) ws[i] = in[i] / (1 + std::exp(-double(in[i])));
  CHECK(max_rel(y, ws) < 1e-6);
}

TEST_CASE("rope: neox, interleaved, partial, at arbitrary positions") {
  std::mt19937_64 rng(3);
  for (int hd : {64, 128}) {
    for (int rot : {hd, hd / 2}) {
      for (bool inter : {false, true}) {
        CAPTURE(hd);
        CAPTURE(rot);
        CAPTURE(inter);
        const int T = 4, NH = 3, stride = NH * hd + 2 * hd, n_pos = 300, half = rot / 2;
        std::vector<float> cs(size_t(n_pos) * half), sn(cs.size());
        std::vector<double> freq(half);
        for (int i = 0; i < half; ++i) freq[i] = std::pow(10000.0, -2.0 * i / rot);
        for (int p = 0; p < n_pos; ++p)
          for (int i = 0; i < half; ++i) {
            cs[p * half + i] = float(std::cos(p * freq[i]));
            sn[p * half + i] = float(std::sin(p * freq[i]));
          }
        std::vector<int32_t> pos{0, 7, 123, 299};
        auto x = randn(rng, size_t(T) * stride);
        auto y = x;
        cpu::rope_forward(y.data(), pos.data(), cs.data(), sn.data(), T, stride, NH, hd, rot, inter);
        std::vector<double> want(x.begin(), x.end());
        for (int t = 0; t < T; ++t)
          for (int h = 0; h < NH; ++h)
            for (int i = 0; i < half; ++i) {
              const int a = inter ? 2 * i : i, b = inter ? 2 * i + 1 : i + half;
              const int o = t * stride + h * hd;
              const double c = std::cos(pos[t] * freq[i]), s = std::sin(pos[t] * freq[i]);
              want[o + a] = x[o + a] * c - x[o + b] * s;
              want[o + b] = x[o + b] * c + x[o + a] * s;
            }
        CHECK(max_rel(y, want) < 1e-5);
        // Dims past rot_dim and heads past n_heads are untouched.
        for (int t = 0; t < T; ++t) {
          for (int h = 0; h < NH; ++h)
            for (int i = rot; i < hd; ++i) CHECK(y[t * stride + h * hd + i] == x[t * stride + h * hd + i]);
          for (int i = NH * hd; i < stride; ++i) CHECK(y[t * stride + i] == x[t * stride + i]);
        }
      }
    }
  }
}

TEST_CASE("GQA attention over the paged cache: head_dim 64/128, n_kv_head < n_head, sliding windows") {
  std::mt19937_64 rng(4);
  for (int hd : {64, 128}) {
    for (auto [NH, NKV] : {std::pair{8, 2}, std::pair{4, 4}, std::pair{6, 1}}) {
      for (int window : {0, 1, 5, 1000}) {
        CAPTURE(hd);
        CAPTURE(NH);
        CAPTURE(NKV);
        CAPTURE(window);
        const int q_dim = NH * hd, kv_dim = NKV * hd, stride = q_dim + 2 * kv_dim, bs = 4, n_blocks = 32;
        // Two sequences: 13 cached positions + 3 new tokens, and 1 new token at position 0.
        const int L0 = 16;
        std::vector<float> kc(size_t(n_blocks) * bs * kv_dim), vc(kc.size());
        const int max_blocks = 4;
        std::vector<int32_t> tables{9, 2, 30, 17, 5, -1, -1, -1};
        // Every position's K/V (random), stored through kv_store_gqa_forward.
        std::vector<std::vector<float>> rows(L0 + 1);
        std::vector<int32_t> slot;
        std::vector<float> qkv_all;
        for (int p = 0; p <= L0; ++p) {
          rows[p] = randn(rng, stride);
          qkv_all.insert(qkv_all.end(), rows[p].begin(), rows[p].end());
          const int seq = p < L0 ? 0 : 1, pp = p < L0 ? p : 0;
          slot.push_back(tables[seq * max_blocks + pp / bs] * bs + pp % bs);
        }
        cpu::kv_store_gqa_forward(kc.data(), vc.data(), qkv_all.data(), slot.data(), L0 + 1, q_dim, kv_dim);
        // Query the last 3 tokens of sequence 0 and the one of sequence 1.
        std::vector<int32_t> tok_seq{0, 0, 0, 1}, tok_pos{13, 14, 15, 0};
        std::vector<float> q;
        for (int p : {13, 14, 15, 16}) q.insert(q.end(), rows[p].begin(), rows[p].end());
        std::vector<float> out(size_t(4) * q_dim), scratch(64);
        const float scale = 1.0f / std::sqrt(float(hd));
        cpu::paged_attention_gqa_forward(out.data(), q.data(), kc.data(), vc.data(), tok_seq.data(), tok_pos.data(),
                                         tables.data(), max_blocks, bs, 4, NH, NKV, hd, window, scale, scratch.data());
        std::vector<double> want(out.size());
        for (int t = 0; t < 4; ++t) {
          const int pos = tok_pos[t], base = tok_seq[t] == 0 ? 0 : L0;
          const int first = window > 0 ? std::max(0, pos - window + 1) : 0;
          for (int h = 0; h < NH; ++h) {
            const int kvh = h / (NH / NKV);
            std::vector<double> a;
            double mx = -1e300;
            for (int p = first; p <= pos; ++p) {
              double d = 0;
              for (int i = 0; i < hd; ++i) d += double(q[t * stride + h * hd + i]) * rows[base + p][q_dim + kvh * hd + i];
              a.push_back(d * scale);
              mx = std::max(mx, a.back());
            }
            double z = 0;
            for (auto& e : a) z += (e = std::exp(e - mx));
            for (int i = 0; i < hd; ++i) {
              double s = 0;
              for (int p = first; p <= pos; ++p) s += a[p - first] / z * rows[base + p][q_dim + kv_dim + kvh * hd + i];
              want[t * q_dim + h * hd + i] = s;
            }
          }
        }
        CHECK(max_rel(out, want) < 1e-5);
      }
    }
  }
}

TEST_CASE("apply_token_mask: -inf exactly where the mask bit is 0 (a vocabulary not a multiple of 32)") {
  const int V = 1000;
  std::mt19937 rng(9);
  std::vector<uint32_t> mask((V + 31) / 32);
  for (auto& w : mask) w = rng();
  mask[3] = 0;
  mask[4] = ~0u;
  std::vector<float> logits(V);
  for (int i = 0; i < V; ++i) logits[size_t(i)] = float(i) * 0.01f - 3.0f;
  auto orig = logits;
  cpu::apply_token_mask(logits.data(), mask.data(), V);
  for (int i = 0; i < V; ++i) {
    const bool allowed = (mask[size_t(i) >> 5] >> (i & 31)) & 1u;
    if (allowed) CHECK(logits[size_t(i)] == orig[size_t(i)]);
    else CHECK(logits[size_t(i)] == -INFINITY);
  }
}
