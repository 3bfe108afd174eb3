// Every CUDA kernel against the CPU reference function of the same name
// (kernels/cpu-kernels.hpp), on random data of several shapes. Inputs are rounded to
// fp16 first so that both sides see the same numbers; tolerances are those of an fp16
// result with fp32 accumulation. Exits 77 (skipped) where there is no CUDA device.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iterator>
#include <numeric>
#include <random>
#include <vector>

#include "cuda-test-util.hpp"
#include "base/half.hpp"
#include "gpu/cuda-resources.hpp"
#include "kernels/cpu-kernels.hpp"
#include "kernels/cuda-kernels.hpp"

using namespace infer;

namespace {

template <class T>
struct dbuf {
  T* p = nullptr;
  size_t n = 0;
  explicit dbuf(size_t count) : n(count) {
    REQUIRE(cudaMalloc(reinterpret_cast<void**>(&p), std::max<size_t>(count, 1) * sizeof(T)) == cudaSuccess);
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
  cuda::half* h() const { return reinterpret_cast<cuda::half*>(p); }
};

std::mt19937 rng(12345);

// Random values already rounded to fp16, as floats (the CPU side) and halves (the GPU side).
struct f16vec {
  std::vector<float> f;
  std::vector<uint16_t> h;
};
f16vec rand_f16(size_t n, float scale = 1.f, float mean = 0.f) {
  std::normal_distribution<float> d(mean, scale);
  f16vec v;
  v.f.resize(n);
  v.h.resize(n);
  for (size_t i = 0; i < n; ++i) {
    v.h[i] = float_to_half(d(rng));
    v.f[i] = half_to_float(v.h[i]);
  }
  return v;
}
std::vector<float> rand_f32(size_t n, float scale = 1.f, float mean = 0.f) {
  std::normal_distribution<float> d(mean, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}
std::vector<float> to_float(const std::vector<uint16_t>& h) {
  std::vector<float> f(h.size());
  for (size_t i = 0; i < h.size(); ++i) f[i] = half_to_float(h[i]);
  return f;
}

// Largest |got - want| / (atol + rtol * |want|); <= 1 passes.
double worst(const std::vector<float>& got, const std::vector<float>& want, double atol,
             double rtol, size_t n = 0) {
  if (n == 0) n = want.size();
  double w = 0;
  for (size_t i = 0; i < n; ++i) {
    const double e = std::fabs(double(got[i]) - want[i]) / (atol + rtol * std::fabs(want[i]));
    if (!(e <= w)) w = e;  // NaN propagates as failure
  }
  return w;
}

cudaStream_t s0 = nullptr;

}  // namespace

TEST_CASE("embed_forward") {
  for (auto [T, C, V, P] : {std::tuple{1, 128, 256, 64}, {7, 768, 1000, 1024}, {33, 64, 50, 40}}) {
    auto wte = rand_f16(size_t(V) * C), wpe = rand_f16(size_t(P) * C);
    std::vector<int32_t> tok(T), pos(T);
    for (int t = 0; t < T; ++t) {
      tok[t] = int(rng() % V);
      pos[t] = int(rng() % P);
    }
    std::vector<float> want(size_t(T) * C);
    cpu::embed_forward(want.data(), tok.data(), pos.data(), wte.f.data(), wpe.f.data(), T, C);
    dbuf<uint16_t> dwte(wte.h), dwpe(wpe.h);
    dbuf<int32_t> dtok(tok), dpos(pos);
    dbuf<float> out(size_t(T) * C);
    REQUIRE(cuda::embed_forward(out.p, dtok.p, dpos.p, dwte.h(), dwpe.h(), T, C, s0) == cudaSuccess);
    CHECK(worst(out.down(), want, 1e-6, 1e-6) <= 1.0);
  }
}

TEST_CASE("layernorm_forward and residual_layernorm_forward") {
  for (auto [T, C] : {std::pair{1, 128}, {9, 768}, {130, 1024}}) {
    auto in = rand_f32(size_t(T) * C, 2.f, 0.5f);
    auto w = rand_f32(C, 0.2f, 1.f), b = rand_f32(C, 0.1f);
    auto x = rand_f16(size_t(T) * C, 1.f);
    const float eps = 1e-5f;
    {
      std::vector<float> want(size_t(T) * C);
      cpu::layernorm_forward(want.data(), in.data(), w.data(), b.data(), T, C, eps);
      dbuf<float> din(in), dw(w), db(b);
      dbuf<uint16_t> out(size_t(T) * C);
      REQUIRE(cuda::layernorm_forward(out.h(), din.p, dw.p, db.p, T, C, eps, s0) == cudaSuccess);
      CHECK(worst(to_float(out.down()), want, 2e-3, 2e-3) <= 1.0);
    }
    {
      std::vector<float> res = in, want(size_t(T) * C);
      cpu::residual_layernorm_forward(res.data(), want.data(), x.f.data(), w.data(), b.data(), T,
                                      C, eps);
      dbuf<float> dres(in), dw(w), db(b);
      dbuf<uint16_t> dx(x.h), out(size_t(T) * C);
      REQUIRE(cuda::residual_layernorm_forward(dres.p, out.h(), dx.h(), dw.p, db.p, T, C, eps,
                                               s0) == cudaSuccess);
      CHECK(worst(dres.down(), res, 1e-5, 1e-5) <= 1.0);
      CHECK(worst(to_float(out.down()), want, 2e-3, 2e-3) <= 1.0);
    }
  }
}

TEST_CASE("gelu_forward and residual_forward") {
  for (int64_t n : {1, 1000, 65537}) {
    auto x = rand_f16(size_t(n), 2.f);
    std::vector<float> want = x.f;
    cpu::gelu_forward(want.data(), n);
    dbuf<uint16_t> dx(x.h);
    REQUIRE(cuda::gelu_forward(dx.h(), n, s0) == cudaSuccess);
    CHECK(worst(to_float(dx.down()), want, 1e-3, 2e-3) <= 1.0);

    auto r = rand_f32(size_t(n));
    std::vector<float> rw = r;
    cpu::residual_forward(rw.data(), x.f.data(), n);
    dbuf<float> dr(r);
    dbuf<uint16_t> dx2(x.h);
    REQUIRE(cuda::residual_forward(dr.p, dx2.h(), n, s0) == cudaSuccess);
    CHECK(worst(dr.down(), rw, 1e-6, 1e-6) <= 1.0);
  }
}

TEST_CASE("matmul_forward (cuBLASLt, bias and GELU epilogues)") {
  gpu::cublaslt_handle lt;
  REQUIRE(lt.create());
  gpu::device_buffer ws;
  REQUIRE(ws.allocate(size_t(32) << 20));
  cuda::matmul_runner mm;
  mm.bind(lt.get(), ws.get(), ws.bytes());
  for (auto [T, IN, OUT] : {std::tuple{1, 128, 384}, {5, 768, 2304}, {8, 3072, 768}, {3, 200, 136},
                            {64, 3072, 768}, {200, 768, 3072}}) {
    for (bool gelu : {false, true}) {
      CAPTURE(T);
      CAPTURE(IN);
      CAPTURE(OUT);
      CAPTURE(gelu);
      auto in = rand_f16(size_t(T) * IN, 1.f);
      auto w = rand_f16(size_t(IN) * OUT, 1.f / std::sqrt(float(IN)));
      auto b = rand_f16(OUT, 0.5f);
      std::vector<float> want(size_t(T) * OUT);
      cpu::matmul_forward(want.data(), in.f.data(), w.f.data(), b.f.data(), T, IN, OUT);
      if (gelu) cpu::gelu_forward(want.data(), int64_t(want.size()));
      dbuf<uint16_t> din(in.h), dw(w.h), db(b.h), out(size_t(T) * OUT);
      REQUIRE(mm.matmul_forward(out.h(), din.h(), dw.h(), db.h(), T, IN, OUT, gelu, s0) ==
              CUBLAS_STATUS_SUCCESS);
      CHECK(worst(to_float(out.down()), want, 4e-3, 4e-3) <= 1.0);
    }
  }
  for (auto [N, C, V] : {std::tuple{1, 128, 256}, {3, 768, 1000}, {17, 64, 50257}}) {
    const int ld = (V + 63) / 64 * 64;
    auto x = rand_f16(size_t(N) * C, 1.f);
    auto wte = rand_f16(size_t(ld) * C, 0.1f);  // padded rows exist on the device
    std::vector<float> want(size_t(N) * V);
    cpu::lm_head_forward(want.data(), x.f.data(), wte.f.data(), N, C, V);
    dbuf<uint16_t> dx(x.h), dw(wte.h);
    dbuf<float> out(size_t(N) * ld);
    REQUIRE(mm.lm_head_forward(out.p, ld, dx.h(), dw.h(), N, C, ld, s0) == CUBLAS_STATUS_SUCCESS);
    auto got = out.down();
    std::vector<float> g(size_t(N) * V);
    for (int r = 0; r < N; ++r)
      std::copy(got.begin() + size_t(r) * ld, got.begin() + size_t(r) * ld + V, g.begin() + size_t(r) * V);
    CHECK(worst(g, want, 1e-3, 1e-3) <= 1.0);
  }
}

TEST_CASE("gather_rows_forward and kv_store_forward") {
  const int T = 37, C = 256, NB = 20, BS = 16;
  auto qkv = rand_f16(size_t(T) * 3 * C);
  std::vector<int32_t> slot(T);
  std::vector<int32_t> perm(NB * BS);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  for (int t = 0; t < T; ++t) slot[t] = t == 5 ? -1 : perm[t];
  std::vector<float> kc(size_t(NB) * BS * C, 0.f), vc = kc;
  std::vector<int32_t> slot_cpu;
  // The CPU reference has no "skip" slot: store all but token 5 there.
  std::vector<float> qkv_cpu;
  for (int t = 0; t < T; ++t) {
    if (slot[t] < 0) continue;
    slot_cpu.push_back(slot[t]);
    qkv_cpu.insert(qkv_cpu.end(), qkv.f.begin() + size_t(t) * 3 * C,
                   qkv.f.begin() + size_t(t + 1) * 3 * C);
  }
  cpu::kv_store_forward(kc.data(), vc.data(), qkv_cpu.data(), slot_cpu.data(),
                        int(slot_cpu.size()), C);
  dbuf<uint16_t> dq(qkv.h), dk(size_t(NB) * BS * C), dv(size_t(NB) * BS * C);
  REQUIRE(cudaMemset(dk.p, 0, dk.n * 2) == cudaSuccess);
  REQUIRE(cudaMemset(dv.p, 0, dv.n * 2) == cudaSuccess);
  dbuf<int32_t> ds(slot);
  REQUIRE(cuda::kv_store_forward(dk.h(), dv.h(), dq.h(), ds.p, T, C, s0) == cudaSuccess);
  CHECK(to_float(dk.down()) == kc);  // a copy: bit-exact
  CHECK(to_float(dv.down()) == vc);

  std::vector<int32_t> rows = {36, 0, 5, 5, 17};
  dbuf<int32_t> dr(rows);
  const size_t W = size_t(3) * C;  // whole qkv rows
  dbuf<uint16_t> out(rows.size() * W);
  REQUIRE(cuda::gather_rows_forward(out.h(), dq.h(), dr.p, int(rows.size()), int(W), s0) == cudaSuccess);
  auto got = out.down();
  for (size_t i = 0; i < rows.size(); ++i)
    CHECK(std::equal(got.begin() + i * W, got.begin() + (i + 1) * W,
                     qkv.h.begin() + size_t(rows[i]) * W));
}

TEST_CASE("paged_attention_forward (prefill and decode, split and unsplit)") {
  struct shape {
    int C, NH, bs;
    std::vector<int> past, len;  // per sequence
  };
  const std::vector<shape> shapes = {
      {128, 4, 16, {0, 0, 0}, {1, 5, 33}},            // prefill, head 32
      {768, 12, 16, {0, 10, 100}, {32, 1, 1}},        // mixed, head 64
      {768, 12, 16, {500, 1000, 7, 63}, {1, 1, 1, 1}},  // decode, long contexts
      {256, 2, 8, {300, 0}, {4, 64}},                 // head 128, block size 8
      {768, 12, 12, {0, 40, 200}, {20, 1, 1}},        // block size 12: no shift / mask
  };
  for (const auto& sh : shapes) {
    const int S = int(sh.past.size()), C = sh.C, NH = sh.NH, bs = sh.bs;
    int T = 0, max_ctx = 0;
    for (int s = 0; s < S; ++s) {
      T += sh.len[s];
      max_ctx = std::max(max_ctx, sh.past[s] + sh.len[s]);
    }
    const int MB = (max_ctx + bs - 1) / bs;
    const int NB = S * MB + 3;
    std::vector<int32_t> perm(NB);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<int32_t> tables(size_t(S) * MB, -1), tok_seq, tok_pos;
    for (int s = 0, k = 0; s < S; ++s) {
      const int nb = (sh.past[s] + sh.len[s] + bs - 1) / bs;
      for (int i = 0; i < nb; ++i) tables[size_t(s) * MB + i] = perm[k++];
      for (int i = 0; i < sh.len[s]; ++i) {
        tok_seq.push_back(s);
        tok_pos.push_back(sh.past[s] + i);
      }
    }
    auto qkv = rand_f16(size_t(T) * 3 * C, 1.f);
    auto kc = rand_f16(size_t(NB) * bs * C, 1.f), vc = rand_f16(size_t(NB) * bs * C, 1.f);
    std::vector<float> want(size_t(T) * C), scratch(max_ctx + 1);
    cpu::paged_attention_forward(want.data(), qkv.f.data(), kc.f.data(), vc.f.data(),
                                 tok_seq.data(), tok_pos.data(), tables.data(), MB, bs, T, C, NH,
                                 scratch.data());
    dbuf<uint16_t> dq(qkv.h), dk(kc.h), dv(vc.h);
    dbuf<int32_t> dseq(tok_seq), dpos(tok_pos), dt(tables);
    for (int split_len : {64, 256}) {
      for (bool split : {false, true}) {
        const int n_splits = split ? (max_ctx + split_len - 1) / split_len : 1;
        if (!split && max_ctx > cuda::attention_max_split_len) continue;
        const int sl = split ? split_len : cuda::attention_max_split_len;
        CAPTURE(C);
        CAPTURE(n_splits);
        CAPTURE(sl);
        dbuf<float> scr(std::max<size_t>(1, cuda::attention_scratch_floats(T, NH, n_splits, C / NH)));
        dbuf<uint16_t> out(size_t(T) * C);
        REQUIRE(cuda::paged_attention_forward(out.h(), dq.h(), dk.h(), dv.h(), dseq.p, dpos.p,
                                              dt.p, MB, bs, T, C, NH, n_splits, sl, scr.p,
                                              nullptr, s0) == cudaSuccess);
        CHECK(worst(to_float(out.down()), want, 3e-3, 1e-2) <= 1.0);
      }
    }
  }
}

TEST_CASE("paged_attention_forward with the decode-step fused KV store") {
  // One new token per sequence; the cache holds garbage at the new positions, which the
  // fused kernel must not read (it takes K/V from qkv) and must overwrite.
  for (auto [C, NH] : {std::pair{768, 12}, std::pair{128, 4}}) {
    const int bs = 16, S = 5;
    const std::vector<int> pos = {0, 15, 16, 300, 77};
    const int MB = 20, NB = S * MB;
    std::vector<int32_t> tables(size_t(S) * MB), seq(S), p(pos.begin(), pos.end()), slot(S);
    std::vector<int32_t> perm(NB);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    for (int i = 0; i < S * MB; ++i) tables[i] = perm[i];
    for (int s = 0; s < S; ++s) {
      seq[s] = s;
      slot[s] = tables[size_t(s) * MB + pos[s] / bs] * bs + pos[s] % bs;
    }
    auto qkv = rand_f16(size_t(S) * 3 * C);
    auto kc = rand_f16(size_t(NB) * bs * C), vc = rand_f16(size_t(NB) * bs * C);
    // Reference: store first, then attend.
    std::vector<float> kref = kc.f, vref = vc.f, want(size_t(S) * C), scratch(400);
    cpu::kv_store_forward(kref.data(), vref.data(), qkv.f.data(), slot.data(), S, C);
    cpu::paged_attention_forward(want.data(), qkv.f.data(), kref.data(), vref.data(), seq.data(),
                                 p.data(), tables.data(), MB, bs, S, C, NH, scratch.data());
    for (int n_splits : {1, 5}) {
      const int sl = n_splits == 1 ? 256 : 64;
      if (n_splits == 1 && 301 > sl) continue;
      dbuf<uint16_t> dq(qkv.h), dk(kc.h), dv(vc.h), out(size_t(S) * C);
      dbuf<int32_t> ds(seq), dp(p), dt(tables), dslot(slot);
      dbuf<float> scr(std::max<size_t>(1, cuda::attention_scratch_floats(S, NH, n_splits, C / NH)));
      REQUIRE(cuda::paged_attention_forward(out.h(), dq.h(), dk.h(), dv.h(), ds.p, dp.p, dt.p, MB,
                                            bs, S, C, NH, n_splits, sl, scr.p, dslot.p,
                                            s0) == cudaSuccess);
      CHECK(worst(to_float(out.down()), want, 3e-3, 1e-2) <= 1.0);
      CHECK(to_float(dk.down()) == kref);
      CHECK(to_float(dv.down()) == vref);
    }
  }
}

TEST_CASE("paged_attention_forward: padding tokens write zeros") {
  const int C = 128, NH = 2, bs = 16, T = 2;
  auto qkv = rand_f16(size_t(T) * 3 * C);
  auto kc = rand_f16(size_t(4) * bs * C), vc = rand_f16(size_t(4) * bs * C);
  std::vector<int32_t> seq = {0, 1}, pos = {3, -1}, tables = {2, -1, 1, -1};
  dbuf<uint16_t> dq(qkv.h), dk(kc.h), dv(vc.h), out(size_t(T) * C);
  dbuf<int32_t> ds(seq), dp(pos), dt(tables);
  dbuf<float> scr(cuda::attention_scratch_floats(T, NH, 4, C / NH));
  REQUIRE(cuda::paged_attention_forward(out.h(), dq.h(), dk.h(), dv.h(), ds.p, dp.p, dt.p, 2, bs,
                                        T, C, NH, 4, 64, scr.p, nullptr, s0) == cudaSuccess);
  auto got = to_float(out.down());
  for (int c = 0; c < C; ++c) CHECK(got[size_t(C) + c] == 0.f);
}

TEST_CASE("sample_token: greedy, temperature, top-k, top-p on the device") {
  for (int V : {1000, 50257}) {
    std::vector<sampling_params> sp;
    auto P = [](float t, int k, float p, uint64_t seed) {
      sampling_params x;
      x.temperature = t;
      x.top_k = k;
      x.top_p = p;
      x.seed = seed;
      return x;
    };
    sp = {P(0, 0, 1, 1),    P(0.8f, 0, 1, 2),   P(1.f, 40, 1, 3),  P(0.7f, 0, 0.9f, 4),
          P(1.2f, 50, 0.8f, 5), P(0.5f, 1, 1, 6), P(0, 0, 1, 7),     P(2.f, 0, 0.5f, 8),
          P(1.f, 0, 1, 9),  P(1.f, 5, 1, 10)};
    const int N = int(sp.size());
    const int ld = V + 24;
    std::vector<float> logits(size_t(N) * ld, 0.f);
    for (int r = 0; r < N; ++r)
      for (int i = 0; i < V; ++i) logits[size_t(r) * ld + i] = rand_f32(1, 3.f)[0];
    // Row 6: a tie for the maximum, the lower id must win.
    logits[size_t(6) * ld + 700 % V] = 50.f;
    logits[size_t(6) * ld + 300 % V] = 50.f;
    std::vector<uint8_t> do_sample(N, 1);
    do_sample[2] = 0;
    std::vector<uint64_t> counters(N);
    for (int r = 0; r < N; ++r) counters[r] = uint64_t(r * 7 + 1);
    std::vector<int32_t> rows(N);
    std::iota(rows.begin(), rows.end(), 0);
    std::reverse(rows.begin(), rows.end());  // sequence i reads row N-1-i

    std::vector<float> scratch(size_t(2) * V);
    std::vector<int32_t> want(N);
    for (int i = 0; i < N; ++i)
      want[i] = do_sample[i] ? cpu::sample_token(logits.data() + size_t(rows[i]) * ld, V, sp[i],
                                                 counters[i], scratch.data())
                             : -1;

    dbuf<float> dl(logits);
    dbuf<sampling_params> dsp(sp);
    dbuf<uint8_t> dds(do_sample);
    dbuf<uint64_t> dc(counters);
    dbuf<int32_t> dr(rows), tok(N);
    REQUIRE(cuda::sample_greedy_forward(tok.p, dl.p, ld, dr.p, N, V, dsp.p, dds.p, s0) == cudaSuccess);
    size_t temp = 0;
    REQUIRE(cuda::sort_rows_forward(nullptr, temp, nullptr, nullptr, nullptr, ld, nullptr, N, V,
                                    nullptr, nullptr, s0) == cudaSuccess);
    dbuf<uint8_t> dtemp(temp);
    dbuf<float> sl(size_t(N) * V), cmp(size_t(N) * V), prob(size_t(N) * V);
    dbuf<int32_t> sid(size_t(N) * V), ids(size_t(N) * V);
    REQUIRE(cuda::sort_rows_forward(dtemp.p, temp, sl.p, sid.p, dl.p, ld, dr.p, N, V, cmp.p, ids.p,
                                    s0) == cudaSuccess);
    REQUIRE(cuda::sample_sorted_forward(tok.p, sl.p, sid.p, N, V, dsp.p, dc.p, dds.p, prob.p, s0) ==
            cudaSuccess);
    auto got = tok.down();
    for (int i = 0; i < N; ++i) {
      CAPTURE(V);
      CAPTURE(i);
      CHECK(got[i] == want[i]);
    }
  }
}

// Issue 13.9: temperatures under sampling_params::greedy_below (1e-5) pick the argmax on the
// device too. Before, T = 1e-40 made 1/T infinite, the softmax mass NaN, and the sorted sampler
// returned the last kept id.
TEST_CASE("sample_token: temperatures below 1e-5 are greedy on the device") {
  const int V = 50257;
  const float temps[] = {1e-40f, 1e-30f, 1e-7f, 9.99e-6f, 0.f};
  const int N = int(std::size(temps));
  std::vector<sampling_params> sp(N);
  for (int r = 0; r < N; ++r) {
    sp[r].temperature = temps[r];
    sp[r].top_p = r % 2 ? 0.9f : 1.0f;
    sp[r].seed = uint64_t(r + 1);
  }
  const int ld = V;
  std::vector<float> logits = rand_f32(size_t(N) * ld, 3.f);
  std::vector<int32_t> argmax(N);
  for (int r = 0; r < N; ++r) {
    argmax[r] = 1234 + 97 * r;
    logits[size_t(r) * ld + argmax[r]] = 40.f;  // clearly the largest
  }
  std::vector<uint8_t> do_sample(N, 1);
  std::vector<uint64_t> counters(N, 3);
  std::vector<int32_t> rows(N);
  std::iota(rows.begin(), rows.end(), 0);
  dbuf<float> dl(logits);
  dbuf<sampling_params> dsp(sp);
  dbuf<uint8_t> dds(do_sample);
  dbuf<uint64_t> dc(counters);
  dbuf<int32_t> dr(rows), tok(N);
  REQUIRE(cuda::sample_greedy_forward(tok.p, dl.p, ld, dr.p, N, V, dsp.p, dds.p, s0) == cudaSuccess);
  size_t temp = 0;
  REQUIRE(cuda::sort_rows_forward(nullptr, temp, nullptr, nullptr, nullptr, ld, nullptr, N, V, nullptr, nullptr,
                                  s0) == cudaSuccess);
  dbuf<uint8_t> dtemp(temp);
  dbuf<float> sl(size_t(N) * V), cmp(size_t(N) * V), prob(size_t(N) * V);
  dbuf<int32_t> sid(size_t(N) * V), ids(size_t(N) * V);
  REQUIRE(cuda::sort_rows_forward(dtemp.p, temp, sl.p, sid.p, dl.p, ld, dr.p, N, V, cmp.p, ids.p, s0) ==
          cudaSuccess);
  REQUIRE(cuda::sample_sorted_forward(tok.p, sl.p, sid.p, N, V, dsp.p, dc.p, dds.p, prob.p, s0) == cudaSuccess);
  auto got = tok.down();
  for (int r = 0; r < N; ++r) {
    CAPTURE(temps[r]);
    CHECK(got[r] == argmax[r]);
  }
}

int main(int argc, char** argv) { return infer::test::cuda_test_main("test-cuda-kernels", argc, argv); }
