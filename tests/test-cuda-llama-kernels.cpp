// The CUDA kernels of the Llama family (RMSNorm, RoPE with q/k norm and the cache
// store, SiLU-mul, bias add, grouped-query paged attention with a sliding window, the
// nn.Linear and LM-head GEMMs) in bf16 and fp16, on random data of several shapes,
// against the CPU twin of the same name (kernels/cpu-kernels.hpp: rmsnorm_forward,
// residual_rmsnorm_forward, head_rmsnorm_forward + rope_forward + kv_store_gqa_forward,
// silu_mul_forward, bias_add_forward, matmul_nt_forward, paged_attention_gqa_forward).
// Inputs are rounded to the 16-bit type first so both sides see the same numbers;
// tolerances are those of one 16-bit rounding of the result. Exits 77 (skipped) where
// there is no CUDA device.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include "cuda-test-util.hpp"
#include "base/half.hpp"
#include "gpu/cuda-resources.hpp"
#include "kernels/cpu-kernels.hpp"
#include "kernels/cuda-kernels.hpp"

using namespace infer;
using cuda::dtype;

namespace {

template <class T>
struct dbuf {
  T* p = nullptr;
  size_t n = 0;
  explicit dbuf(size_t count) : n(count) {
    REQUIRE(cudaMalloc(reinterpret_cast<void**>(&p), std::max<size_t>(count, 1) * sizeof(T)) ==
            cudaSuccess);
  }
  explicit dbuf(const std::vector<T>& v) : dbuf(v.size()) { up(v); }
  ~dbuf() { cudaFree(p); }
  dbuf(const dbuf&) = delete;
  void up(const std::vector<T>& v) {
    REQUIRE(v.size() <= n);
    REQUIRE(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess);
  }
  std::vector<T> down() const {
    std::vector<T> v(n);
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    REQUIRE(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
    return v;
  }
};

std::mt19937 rng(4242);

uint16_t to16(float f, dtype dt) { return dt == dtype::bf16 ? float_to_bf16(f) : float_to_half(f); }
float from16(uint16_t h, dtype dt) { return dt == dtype::bf16 ? bf16_to_float(h) : half_to_float(h); }

// Random values rounded to the 16-bit type: as floats (reference) and bits (device).
struct vec16 {
  std::vector<float> f;
  std::vector<uint16_t> h;
};
vec16 rand16(size_t n, dtype dt, float scale = 1.f, float mean = 0.f) {
  std::normal_distribution<float> d(mean, scale);
  vec16 v;
  v.f.resize(n);
  v.h.resize(n);
  for (size_t i = 0; i < n; ++i) {
    v.h[i] = to16(d(rng), dt);
    v.f[i] = from16(v.h[i], dt);
  }
  return v;
}
std::vector<float> rand32(size_t n, float scale = 1.f, float mean = 0.f) {
  std::normal_distribution<float> d(mean, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}
std::vector<float> to_float(const std::vector<uint16_t>& h, dtype dt) {
  std::vector<float> f(h.size());
  for (size_t i = 0; i < h.size(); ++i) f[i] = from16(h[i], dt);
  return f;
}
// Largest |got - want| / (atol + rtol * |want|); <= 1 passes, NaN fails.
double worst(const std::vector<float>& got, const std::vector<double>& want, double atol,
             double rtol) {
  REQUIRE(got.size() >= want.size());
  double w = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double e = std::fabs(double(got[i]) - want[i]) / (atol + rtol * std::fabs(want[i]));
    if (!(e <= w)) w = e;
  }
  return w;
}
double worst(const std::vector<float>& got, const std::vector<float>& want, double atol,
             double rtol) {
  return worst(got, std::vector<double>(want.begin(), want.end()), atol, rtol);
}
// One rounding of a result of magnitude ~1 in the type, plus fp32 accumulation.
double rtol_of(dtype dt) { return dt == dtype::bf16 ? 1.2e-2 : 2e-3; }

template <class T>
T* as(dbuf<uint16_t>& b) {
  return reinterpret_cast<T*>(b.p);
}

cudaStream_t s0 = nullptr;

}  // namespace

TEST_CASE_TEMPLATE("rmsnorm_forward and residual_rmsnorm_forward (plain and post-norm)", T, cuda::half,
                   cuda::bf16) {
  const dtype dt = std::is_same_v<T, cuda::bf16> ? dtype::bf16 : dtype::f16;
  for (auto [Tn, C] : {std::pair{1, 64}, {7, 896}, {33, 2048}, {3, 4096}, {2, 5000}, {1, 8192}}) {
    CAPTURE(Tn);
    CAPTURE(C);
    const float eps = 1e-6f;
    auto res = rand32(size_t(Tn) * C, 3.f, 0.2f);
    auto w = rand32(C, 0.3f, 1.f), xw = rand32(C, 0.3f, 1.f);
    auto x = rand16(size_t(Tn) * C, dt, 2.f);
    dbuf<float> dw(w), dxw(xw);
    dbuf<uint16_t> dx(x.h);
    for (int mode = 0; mode < 3; ++mode) {
      CAPTURE(mode);
      // The CPU twins; GLM-4's post-norm is rmsnorm_forward of x, then the residual add.
      std::vector<float> want(size_t(Tn) * C), want_res = res, xin = x.f;
      if (mode == 0) {
        cpu::rmsnorm_forward(want.data(), res.data(), w.data(), Tn, C, eps);
      } else {
        if (mode == 2) cpu::rmsnorm_forward(xin.data(), x.f.data(), xw.data(), Tn, C, eps);
        cpu::residual_rmsnorm_forward(want_res.data(), want.data(), xin.data(), w.data(), Tn, C,
                                      eps);
      }
      dbuf<float> dres(res);
      dbuf<uint16_t> out(size_t(Tn) * C);
      if (mode == 0)
        REQUIRE(cuda::rmsnorm_forward(as<T>(out), dres.p, dw.p, Tn, C, eps, s0) == cudaSuccess);
      else
        REQUIRE(cuda::residual_rmsnorm_forward(dres.p, as<T>(out), as<T>(dx),
                                               mode == 2 ? dxw.p : nullptr, dw.p, Tn, C, eps,
                                               s0) == cudaSuccess);
      CHECK(worst(to_float(out.down(), dt), want, 1e-2, rtol_of(dt)) <= 1.0);
      CHECK(worst(dres.down(), want_res, 1e-5, 1e-5) <= 1.0);
    }
  }
  dbuf<float> big(size_t(9000));
  dbuf<uint16_t> o(size_t(9000));
  CHECK(cuda::rmsnorm_forward(as<T>(o), big.p, big.p, 1, 9000, 1e-6f, s0) == cudaErrorInvalidValue);
}

TEST_CASE("embed_tokens_forward") {
  for (dtype dt : {dtype::bf16, dtype::f16}) {
    const int Tn = 9, C = 896, V = 300;
    auto wte = rand16(size_t(V) * C, dt);
    std::vector<int32_t> tok(Tn);
    for (auto& t : tok) t = int(rng() % V);
    dbuf<uint16_t> dw(wte.h);
    dbuf<int32_t> dt_(tok);
    dbuf<float> out(size_t(Tn) * C);
    if (dt == dtype::bf16)
      REQUIRE(cuda::embed_tokens_forward(out.p, dt_.p, as<cuda::bf16>(dw), Tn, C, s0) == cudaSuccess);
    else
      REQUIRE(cuda::embed_tokens_forward(out.p, dt_.p, as<cuda::half>(dw), Tn, C, s0) == cudaSuccess);
    auto got = out.down();
    for (int t = 0; t < Tn; ++t)
      for (int c = 0; c < C; ++c) CHECK_EQ(got[size_t(t) * C + c], wte.f[size_t(tok[t]) * C + c]);
  }
}

namespace {
struct rope_case {
  int NH, NKV, hd, rot;
  bool interleaved, qk_norm, store;
};
}  // namespace

TEST_CASE_TEMPLATE("rope_forward: neox, interleaved, partial; q/k norm; cache store", T,
                   cuda::half, cuda::bf16) {
  const dtype dt = std::is_same_v<T, cuda::bf16> ? dtype::bf16 : dtype::f16;
  const std::vector<rope_case> cases = {
      {32, 8, 64, 64, false, false, true},    // Llama-3.2-1B
      {14, 2, 64, 64, false, false, false},   // Qwen2.5-0.5B
      {16, 8, 128, 128, false, true, true},   // Qwen3-0.6B: q/k norm before RoPE
      {32, 2, 128, 64, true, false, true},    // GLM-4: partial (0.5), interleaved
      {4, 4, 32, 16, false, true, false},     // partial neox with norm
      {8, 1, 256, 0, false, true, false},     // norm alone (no rotation)
  };
  const int Tn = 11, n_pos = 5000;
  const double theta = 500000.0, eps = 1e-6;
  for (const auto& k : cases) {
    CAPTURE(k.NH);
    CAPTURE(k.hd);
    CAPTURE(k.rot);
    CAPTURE(k.interleaved);
    CAPTURE(k.qk_norm);
    const cuda::qkv_shape sh{k.NH, k.NKV, k.hd, 0};
    const int ld = sh.q_ld(), nf = k.rot / 2, kvw = k.NKV * k.hd;
    std::vector<float> inv(std::max(nf, 1));
    for (int i = 0; i < nf; ++i) inv[i] = float(1.0 / std::pow(theta, 2.0 * i / k.rot));
    std::vector<int32_t> pos(Tn), slot(Tn);
    for (int t = 0; t < Tn; ++t) {
      pos[t] = t == 3 ? -1 : t == 0 ? 0 : int(rng() % n_pos);
      slot[t] = t == 3 ? -1 : t * 2 + 1;
    }
    auto qkv = rand16(size_t(Tn) * ld, dt, 1.5f);
    auto qn = rand32(k.hd, 0.3f, 1.f), kn = rand32(k.hd, 0.3f, 1.f);
    // The CPU twins in forward order: head norm of q and of k, rotation, cache store
    // (padding rows, pos < 0, are left out: the twins know no padding).
    std::vector<float> cosv(size_t(n_pos) * std::max(nf, 1)), sinv(cosv.size());
    for (int p = 0; p < n_pos; ++p)
      for (int i = 0; i < nf; ++i) {
        const float a = float(p) * inv[i];
        cosv[size_t(p) * nf + i] = float(std::cos(double(a)));
        sinv[size_t(p) * nf + i] = float(std::sin(double(a)));
      }
    std::vector<float> want = qkv.f;
    for (int t = 0; t < Tn; ++t) {
      if (pos[t] < 0) continue;
      float* row = want.data() + size_t(t) * ld;
      if (k.qk_norm) {
        cpu::head_rmsnorm_forward(row, qn.data(), 1, ld, k.NH, k.hd, float(eps));
        cpu::head_rmsnorm_forward(row + size_t(k.NH) * k.hd, kn.data(), 1, ld, k.NKV, k.hd,
                                  float(eps));
      }
      if (k.rot > 0)
        cpu::rope_forward(row, &pos[t], cosv.data(), sinv.data(), 1, ld, k.NH + k.NKV, k.hd,
                          k.rot, k.interleaved);
    }
    std::vector<float2> tab(cosv.size());
    for (size_t i = 0; i < tab.size(); ++i) tab[i] = make_float2(cosv[i], sinv[i]);
    dbuf<float2> table(tab);
    dbuf<uint16_t> dq(qkv.h);
    dbuf<int32_t> dpos(pos), dslot(slot);
    dbuf<float> dqn(qn), dkn(kn);
    const size_t cache_n = size_t(2 * Tn + 2) * kvw;
    dbuf<uint16_t> kc(cache_n), vc(cache_n);
    REQUIRE(cudaMemset(kc.p, 0, cache_n * 2) == cudaSuccess);
    REQUIRE(cudaMemset(vc.p, 0, cache_n * 2) == cudaSuccess);
    REQUIRE(cuda::rope_forward(as<T>(dq), dpos.p, table.p, Tn, sh, k.rot, k.interleaved,
                               k.qk_norm ? dqn.p : nullptr, k.qk_norm ? dkn.p : nullptr,
                               float(eps), k.store ? as<T>(kc) : nullptr,
                               k.store ? as<T>(vc) : nullptr, dslot.p, s0) == cudaSuccess);
    const auto got = to_float(dq.down(), dt);
    CHECK(worst(got, want, 1e-2, rtol_of(dt)) <= 1.0);
    // V and the padding token's row untouched, bit for bit.
    const auto got_bits = dq.down();
    for (int t = 0; t < Tn; ++t)
      for (int c = (pos[t] < 0 ? 0 : (k.NH + k.NKV) * k.hd); c < ld; ++c)
        REQUIRE(got_bits[size_t(t) * ld + c] == qkv.h[size_t(t) * ld + c]);
    if (k.store) {
      // kv_store_gqa_forward of the device's own rotated rows: the stores are copies.
      std::vector<float> kref(cache_n, 0.f), vref(cache_n, 0.f), rows;
      std::vector<int32_t> live_slot;
      for (int t = 0; t < Tn; ++t) {
        if (slot[t] < 0) continue;
        live_slot.push_back(slot[t]);
        rows.insert(rows.end(), got.begin() + size_t(t) * ld, got.begin() + size_t(t + 1) * ld);
      }
      cpu::kv_store_gqa_forward(kref.data(), vref.data(), rows.data(), live_slot.data(),
                                int(live_slot.size()), k.NH * k.hd, kvw);
      CHECK(to_float(kc.down(), dt) == kref);
      CHECK(to_float(vc.down(), dt) == vref);
      const auto kb = kc.down(), vb = vc.down();
      for (int t = 0; t < Tn; ++t) {
        for (int c = 0; c < kvw; ++c) {
          const size_t src = size_t(t) * ld + size_t(k.NH) * k.hd + c;
          if (slot[t] < 0) continue;
          REQUIRE(kb[size_t(slot[t]) * kvw + c] == got_bits[src]);
          REQUIRE(vb[size_t(slot[t]) * kvw + c] == got_bits[src + kvw]);
        }
      }
      // Slot 0 is nobody's (slots are odd): still zero.
      for (int c = 0; c < kvw; ++c) CHECK(kb[c] == 0);
    }
  }
  CHECK_FALSE(cuda::rope_shape_supported(80, 64));
  CHECK_FALSE(cuda::rope_shape_supported(64, 66));
}

TEST_CASE_TEMPLATE("silu_mul_forward and bias_add_forward", T, cuda::half, cuda::bf16) {
  const dtype dt = std::is_same_v<T, cuda::bf16> ? dtype::bf16 : dtype::f16;
  for (auto [Tn, I] : {std::pair{1, 8}, {5, 4864}, {3, 13}, {17, 8192}}) {
    CAPTURE(Tn);
    CAPTURE(I);
    auto gu = rand16(size_t(Tn) * 2 * I, dt, 2.f);
    std::vector<float> want(size_t(Tn) * I);
    cpu::silu_mul_forward(want.data(), gu.f.data(), Tn, I);
    dbuf<uint16_t> dgu(gu.h), out(size_t(Tn) * I);
    REQUIRE(cuda::silu_mul_forward(as<T>(out), as<T>(dgu), Tn, I, s0) == cudaSuccess);
    CHECK(worst(to_float(out.down(), dt), want, 1e-2, rtol_of(dt)) <= 1.0);

    auto b = rand16(size_t(I), dt);
    // gate_up viewed as [2 Tn, I] rows
    std::vector<float> wb = gu.f;
    cpu::bias_add_forward(wb.data(), b.f.data(), 2 * Tn, I);
    dbuf<uint16_t> db(b.h);
    REQUIRE(cuda::bias_add_forward(as<T>(dgu), as<T>(db), 2 * Tn, I, s0) == cudaSuccess);
    CHECK(worst(to_float(dgu.down(), dt), wb, 1e-2, rtol_of(dt)) <= 1.0);
  }
}

TEST_CASE("linear_forward (nn.Linear layout, bias or none) and lm_head_forward, bf16 and fp16") {
  gpu::cublaslt_handle lt;
  REQUIRE(lt.create());
  gpu::device_buffer ws;
  REQUIRE(ws.allocate(size_t(32) << 20));
  cuda::matmul_runner mm;
  mm.bind(lt.get(), ws.get(), ws.bytes());
  for (dtype dt : {dtype::bf16, dtype::f16}) {
    for (auto [Tn, IN, OUT] : {std::tuple{1, 896, 1152}, {7, 2048, 3072}, {64, 896, 9728},
                               {3, 4864, 896}, {200, 1024, 1024}, {5, 136, 40}}) {
      for (bool bias : {false, true}) {
        CAPTURE(dtype_name(dt));
        CAPTURE(Tn);
        CAPTURE(IN);
        CAPTURE(OUT);
        CAPTURE(bias);
        auto in = rand16(size_t(Tn) * IN, dt);
        auto w = rand16(size_t(OUT) * IN, dt, 1.f / std::sqrt(float(IN)));
        auto b = rand16(OUT, dt, 0.5f);
        std::vector<float> want(size_t(Tn) * OUT);
        cpu::matmul_nt_forward(want.data(), in.f.data(), w.f.data(), bias ? b.f.data() : nullptr,
                               Tn, IN, OUT);
        dbuf<uint16_t> din(in.h), dw(w.h), db(b.h), out(size_t(Tn) * OUT);
        REQUIRE(mm.linear_forward(out.p, din.p, dw.p, bias ? db.p : nullptr, Tn, IN, OUT, dt,
                                  s0) == CUBLAS_STATUS_SUCCESS);
        CHECK(worst(to_float(out.down(), dt), want, 1e-2, rtol_of(dt)) <= 1.0);
      }
    }
    for (auto [N, C, V] : {std::tuple{1, 896, 151936}, {5, 2048, 1000}}) {
      const int ld = (V + 63) / 64 * 64;
      auto x = rand16(size_t(N) * C, dt);
      auto w = rand16(size_t(ld) * C, dt, 0.05f);
      std::vector<float> want(size_t(N) * V);
      cpu::lm_head_forward(want.data(), x.f.data(), w.f.data(), N, C, V);
      dbuf<uint16_t> dx(x.h), dw(w.h);
      dbuf<float> out(size_t(N) * ld);
      REQUIRE(mm.lm_head_forward(out.p, ld, dx.p, dw.p, N, C, ld, dt, s0) == CUBLAS_STATUS_SUCCESS);
      auto got = out.down();
      std::vector<float> g(size_t(N) * V);
      for (int r = 0; r < N; ++r)
        std::copy(got.begin() + size_t(r) * ld, got.begin() + size_t(r) * ld + V,
                  g.begin() + size_t(r) * V);
      CHECK(worst(g, want, 1e-3, 1e-3) <= 1.0);
    }
  }
}

namespace {
struct attn_case {
  int NH, NKV, hd, window, bs;
  std::vector<int> past, len;
};

// The CPU twin: out [T, NH*hd] over the paged cache, keys max(0, pos-window+1) .. pos.
std::vector<float> ref_attention(const std::vector<float>& qkv, const std::vector<float>& kc,
                                 const std::vector<float>& vc, const std::vector<int32_t>& seq,
                                 const std::vector<int32_t>& pos,
                                 const std::vector<int32_t>& tables, int MB, const attn_case& a) {
  const int T = int(seq.size());
  int max_pos = 0;
  for (int p : pos) max_pos = std::max(max_pos, p);
  std::vector<float> out(size_t(T) * a.NH * a.hd), scratch(size_t(max_pos) + 1);
  cpu::paged_attention_gqa_forward(out.data(), qkv.data(), kc.data(), vc.data(), seq.data(),
                                   pos.data(), tables.data(), MB, a.bs, T, a.NH, a.NKV, a.hd,
                                   a.window, float(1.0 / std::sqrt(double(a.hd))), scratch.data());
  return out;
}
}  // namespace

TEST_CASE_TEMPLATE("paged_attention_forward: grouped-query heads, sliding window, prefill and decode",
                   T, cuda::half, cuda::bf16) {
  const dtype dt = std::is_same_v<T, cuda::bf16> ? dtype::bf16 : dtype::f16;
  const std::vector<attn_case> cases = {
      {32, 8, 64, 0, 16, {0, 0, 0}, {1, 9, 40}},                 // Llama-3.2-1B prefill
      {14, 2, 64, 0, 16, {0, 30, 300}, {50, 1, 1}},              // Qwen2.5: mixed
      {16, 8, 128, 0, 16, {700, 1000, 5, 63}, {1, 1, 1, 1}},     // Qwen3: decode, long
      {32, 2, 128, 0, 8, {200, 0}, {3, 70}},                     // GLM-4: group 16, bs 8
      {8, 2, 128, 64, 16, {0, 300, 40}, {100, 1, 30}},           // sliding window < prompt
      {4, 4, 64, 17, 16, {500, 0}, {1, 40}},                     // window, no grouping
      {8, 1, 32, 0, 16, {0}, {33}},                              // multi-query, head 32
      {8, 2, 64, 0, 12, {0, 100}, {30, 1}},                      // block size 12: no shift / mask
      {4, 4, 64, 0, 10, {0, 50}, {20, 1}},                       // ungrouped, block size 10
      {4, 4, 64, 0, 16, {0, 300}, {40, 1}},                      // ungrouped, no window (GPT-2's path)
  };
  for (const auto& a : cases) {
    const int S = int(a.past.size()), bs = a.bs;
    const int ld = (a.NH + 2 * a.NKV) * a.hd, kvw = a.NKV * a.hd;
    int Tn = 0, max_ctx = 0;
    for (int s = 0; s < S; ++s) {
      Tn += a.len[s];
      max_ctx = std::max(max_ctx, a.past[s] + a.len[s]);
    }
    const int MB = (max_ctx + bs - 1) / bs, NB = S * MB + 3;
    std::vector<int32_t> perm(NB);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<int32_t> tables(size_t(S) * MB, -1), seq, pos;
    for (int s = 0, k = 0; s < S; ++s) {
      const int nb = (a.past[s] + a.len[s] + bs - 1) / bs;
      for (int i = 0; i < nb; ++i) tables[size_t(s) * MB + i] = perm[k++];
      for (int i = 0; i < a.len[s]; ++i) {
        seq.push_back(s);
        pos.push_back(a.past[s] + i);
      }
    }
    auto qkv = rand16(size_t(Tn) * ld, dt, 1.5f);
    auto kc = rand16(size_t(NB) * bs * kvw, dt), vc = rand16(size_t(NB) * bs * kvw, dt);
    const auto want = ref_attention(qkv.f, kc.f, vc.f, seq, pos, tables, MB, a);
    dbuf<uint16_t> dq(qkv.h), dk(kc.h), dv(vc.h);
    dbuf<int32_t> dseq(seq), dpos(pos), dt_(tables);
    const cuda::attention_shape sh{a.NH, a.NKV, a.hd, a.window};
    for (int split_len : {64, 256}) {
      for (bool split : {false, true}) {
        const int n_splits = split ? (max_ctx + split_len - 1) / split_len : 1;
        if (!split && max_ctx > cuda::attention_max_split_len) continue;
        const int sl = split ? split_len : cuda::attention_max_split_len;
        CAPTURE(a.NH);
        CAPTURE(a.NKV);
        CAPTURE(a.hd);
        CAPTURE(a.window);
        CAPTURE(n_splits);
        CAPTURE(sl);
        dbuf<float> scr(std::max<size_t>(1, cuda::attention_scratch_floats(Tn, a.NH, n_splits, a.hd)));
        dbuf<uint16_t> out(size_t(Tn) * a.NH * a.hd);
        REQUIRE(cuda::paged_attention_forward<T>(as<T>(out), as<T>(dq), as<T>(dk), as<T>(dv),
                                                 dseq.p, dpos.p, dt_.p, MB, bs, Tn, sh, n_splits,
                                                 sl, scr.p, nullptr, s0) == cudaSuccess);
        CHECK(worst(to_float(out.down(), dt), want, 5e-3, rtol_of(dt)) <= 1.0);
      }
    }
  }
  // A head count that does not divide is refused, not run.
  dbuf<uint16_t> o(64);
  CHECK(cuda::paged_attention_forward<T>(as<T>(o), as<T>(o), as<T>(o), as<T>(o), nullptr, nullptr,
                                         nullptr, 1, 16, 1, cuda::attention_shape{6, 4, 64, 0}, 1,
                                         64, nullptr, nullptr, s0) == cudaErrorInvalidValue);
}

TEST_CASE("paged_attention_forward: bf16 decode with the fused KV store and grouped heads") {
  using T = cuda::bf16;
  const dtype dt = dtype::bf16;
  const attn_case a{16, 4, 128, 0, 16, {}, {}};
  const int S = 4, bs = 16, MB = 24, NB = S * MB;
  const int ld = (a.NH + 2 * a.NKV) * a.hd, kvw = a.NKV * a.hd;
  const std::vector<int32_t> pos = {0, 15, 300, 77};
  std::vector<int32_t> tables(size_t(S) * MB), seq(S), slot(S), perm(NB);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  for (int i = 0; i < NB; ++i) tables[i] = perm[i];
  for (int s = 0; s < S; ++s) {
    seq[s] = s;
    slot[s] = tables[size_t(s) * MB + pos[s] / bs] * bs + pos[s] % bs;
  }
  auto qkv = rand16(size_t(S) * ld, dt);
  auto kc = rand16(size_t(NB) * bs * kvw, dt), vc = rand16(size_t(NB) * bs * kvw, dt);
  std::vector<float> kref = kc.f, vref = vc.f;
  std::vector<uint16_t> kbits = kc.h, vbits = vc.h;
  for (int s = 0; s < S; ++s)
    for (int c = 0; c < kvw; ++c) {
      const size_t src = size_t(s) * ld + size_t(a.NH) * a.hd + c;
      kref[size_t(slot[s]) * kvw + c] = qkv.f[src];
      vref[size_t(slot[s]) * kvw + c] = qkv.f[src + kvw];
      kbits[size_t(slot[s]) * kvw + c] = qkv.h[src];
      vbits[size_t(slot[s]) * kvw + c] = qkv.h[src + kvw];
    }
  const auto want = ref_attention(qkv.f, kref, vref, seq, pos, tables, MB, a);
  for (int n_splits : {1, 5}) {
    const int sl = n_splits == 1 ? 256 : 64;
    if (n_splits == 1) continue;  // 301 keys do not fit one split of 256
    dbuf<uint16_t> dq(qkv.h), dk(kc.h), dv(vc.h), out(size_t(S) * a.NH * a.hd);
    dbuf<int32_t> ds(seq), dp(pos), dtb(tables), dslot(slot);
    dbuf<float> scr(cuda::attention_scratch_floats(S, a.NH, n_splits, a.hd));
    REQUIRE(cuda::paged_attention_forward<T>(as<T>(out), as<T>(dq), as<T>(dk), as<T>(dv), ds.p,
                                             dp.p, dtb.p, MB, bs, S,
                                             cuda::attention_shape{a.NH, a.NKV, a.hd, 0},
                                             n_splits, sl, scr.p, dslot.p, s0) == cudaSuccess);
    CHECK(worst(to_float(out.down(), dt), want, 5e-3, rtol_of(dt)) <= 1.0);
    CHECK(dk.down() == kbits);
    CHECK(dv.down() == vbits);
  }
}

int main(int argc, char** argv) { return infer::test::cuda_test_main("test-cuda-llama-kernels", argc, argv); }
