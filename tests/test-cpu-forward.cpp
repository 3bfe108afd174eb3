// The CPU backend against an independent, straightforward float64 GPT-2 written here
// (no KV cache, no paging, no BLAS): the reference for every other check.
#include <doctest/doctest.h>

#include <cmath>
#include <algorithm>
#include <map>
#include <numeric>
#include <random>
#include <set>

#include "engine/cpu-backend.hpp"
#include "engine/scheduler.hpp"
#include "kernels/cpu-kernels.hpp"

using namespace infer;

namespace {

struct random_model {
  std::shared_ptr<model_weights> w = std::make_shared<model_weights>();
  std::mt19937_64 rng;
  explicit random_model(model_config c, uint64_t seed) : rng(seed) {
    w->cfg = c;
    const int C = c.n_embd;
    auto t = [&](size_t n, float scale, float offset = 0.f) {
      std::normal_distribution<float> d(0.f, 1.f);
      auto& v = w->owned.emplace_back(n);
      for (auto& x : v) x = offset + scale * d(rng);
      return v.data();
    };
    w->wte = t(size_t(c.n_vocab) * C, 0.1f);
    w->wpe = t(size_t(c.n_ctx) * C, 0.05f);
    for (int l = 0; l < c.n_layer; ++l) {
      layer_weights L;
      L.ln1_w = t(C, 0.1f, 1.f); L.ln1_b = t(C, 0.1f);
      L.qkv_w = t(size_t(C) * 3 * C, 0.1f); L.qkv_b = t(3 * C, 0.1f);
      L.proj_w = t(size_t(C) * C, 0.1f); L.proj_b = t(C, 0.1f);
      L.ln2_w = t(C, 0.1f, 1.f); L.ln2_b = t(C, 0.1f);
      L.fc_w = t(size_t(C) * 4 * C, 0.1f); L.fc_b = t(4 * C, 0.1f);
      L.fcproj_w = t(size_t(4) * C * C, 0.05f); L.fcproj_b = t(C, 0.1f);
      w->layers.push_back(L);
    }
    w->lnf_w = t(C, 0.1f, 1.f);
    w->lnf_b = t(C, 0.1f);
  }
};

// float64 GPT-2: logits of every position of one sequence, recomputed from scratch.
std::vector<std::vector<double>> reference_forward(const model_weights& w,
                                                   const std::vector<int32_t>& toks) {
  const auto& c = w.cfg;
  const int C = c.n_embd, T = int(toks.size()), NH = c.n_head, hd = C / NH;
  using mat = std::vector<std::vector<double>>;
  auto layernorm = [&](const std::vector<double>& x, const float* g, const float* b) {
    double m = 0, v = 0;
    for (double e : x) m += e;
    m /= C;
    for (double e : x) v += (e - m) * (e - m);
    v /= C;
    std::vector<double> o(C);
    for (int i = 0; i < C; ++i) o[i] = (x[i] - m) / std::sqrt(v + c.ln_eps) * g[i] + b[i];
    return o;
  };
  auto linear = [&](const std::vector<double>& x, const float* W, const float* b, int in, int out) {
    std::vector<double> o(out);
    for (int j = 0; j < out; ++j) {
      double s = b[j];
      for (int i = 0; i < in; ++i) s += x[i] * double(W[size_t(i) * out + j]);
      o[j] = s;
    }
    return o;
  };
  mat x(T, std::vector<double>(C));
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < C; ++i)
      x[t][i] = double(w.wte[size_t(toks[t]) * C + i]) + double(w.wpe[size_t(t) * C + i]);
  for (const auto& L : w.layers) {
    mat qkv(T);
    for (int t = 0; t < T; ++t) qkv[t] = linear(layernorm(x[t], L.ln1_w, L.ln1_b), L.qkv_w, L.qkv_b, C, 3 * C);
    for (int t = 0; t < T; ++t) {
      std::vector<double> att(C, 0.0);
      for (int h = 0; h < NH; ++h) {
        std::vector<double> a(t + 1);
        double mx = -1e300;
        for (int p = 0; p <= t; ++p) {
          double d = 0;
          for (int i = 0; i < hd; ++i) d += qkv[t][h * hd + i] * qkv[p][C + h * hd + i];
          a[p] = d / std::sqrt(double(hd));
          mx = std::max(mx, a[p]);
        }
        double s = 0;
        for (auto& e : a) s += (e = std::exp(e - mx));
        for (int p = 0; p <= t; ++p)
          for (int i = 0; i < hd; ++i) att[h * hd + i] += a[p] / s * qkv[p][2 * C + h * hd + i];
      }
      auto pr = linear(att, L.proj_w, L.proj_b, C, C);
      for (int i = 0; i < C; ++i) x[t][i] += pr[i];
    }
    for (int t = 0; t < T; ++t) {
      auto h = linear(layernorm(x[t], L.ln2_w, L.ln2_b), L.fc_w, L.fc_b, C, 4 * C);
      for (auto& e : h) e = 0.5 * e * (1 + std::tanh(std::sqrt(2 / M_PI) * (e + 0.044715 * e * e * e)));
      auto o = linear(h, L.fcproj_w, L.fcproj_b, 4 * C, C);
      for (int i = 0; i < C; ++i) x[t][i] += o[i];
    }
  }
  mat logits(T, std::vector<double>(c.n_vocab));
  for (int t = 0; t < T; ++t) {
    auto f = layernorm(x[t], w.lnf_w, w.lnf_b);
    for (int v = 0; v < c.n_vocab; ++v) {
      double s = 0;
      for (int i = 0; i < C; ++i) s += f[i] * double(w.wte[size_t(v) * C + i]);
      logits[t][v] = s;
    }
  }
  return logits;
}

model_config tiny_cfg() {
  model_config c;
  c.n_vocab = 97; c.n_ctx = 64; c.n_embd = 32; c.n_layer = 2; c.n_head = 4;
  return c;
}

std::vector<int32_t> random_tokens(std::mt19937_64& rng, int n, int V) {
  std::vector<int32_t> t(n);
  for (auto& e : t) e = int32_t(rng() % V);
  return t;
}

double rel_err(const float* got, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num += (got[i] - ref[i]) * (got[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

// Hands out blocks in a scrambled order so paging bugs show.
struct block_alloc {
  int next = 0, n_blocks;
  explicit block_alloc(int n) : n_blocks(n) {}
  std::vector<int32_t> take(int n) {
    std::vector<int32_t> v;
    for (int i = 0; i < n; ++i) v.push_back(int32_t((next++ * 7 + 3) % n_blocks));
    return v;
  }
};

std::unique_ptr<backend> make(const random_model& m, int block_size = 4, int blocks = 256) {
  backend_options o;
  o.kv_block_size = block_size;
  o.kv_blocks = blocks;
  auto b = make_cpu_backend(m.w, o);
  REQUIRE(b.has_value());
  return std::move(b).value();
}

}  // namespace

TEST_CASE("prefill logits match the float64 reference at every position") {
  random_model m(tiny_cfg(), 1);
  auto be = make(m);
  std::mt19937_64 rng(2);
  for (int len : {1, 5, 17, 40}) {
    auto toks = random_tokens(rng, len, m.w->cfg.n_vocab);
    block_alloc ba(256);
    step_batch b;
    b.reset(16);
    auto blocks = ba.take((len + 3) / 4);
    b.add(0, toks, blocks, false, {}, 0);
    step_output out;
    REQUIRE(be->step(b, out, logits_mode::all).is_ok());
    auto ref = reference_forward(*m.w, toks);
    const int V = m.w->cfg.n_vocab;
    REQUIRE(out.logits.size() == size_t(len) * V);
    for (int t = 0; t < len; ++t) CHECK(rel_err(out.logits.data() + size_t(t) * V, ref[t]) < 1e-4);
  }
}

TEST_CASE("prefill then decode with the KV cache equals full recomputation") {
  random_model m(tiny_cfg(), 3);
  auto be = make(m);
  std::mt19937_64 rng(4);
  auto toks = random_tokens(rng, 30, m.w->cfg.n_vocab);
  const int V = m.w->cfg.n_vocab, prompt = 9;
  block_alloc ba(256);
  auto blocks = ba.take(8);
  step_batch b;
  step_output out;
  b.reset(8);
  b.add(0, std::span(toks).first(prompt), blocks, true, {}, 0);
  REQUIRE(be->step(b, out, logits_mode::last).is_ok());
  auto ref = reference_forward(*m.w, toks);
  CHECK(rel_err(out.logits.data(), ref[prompt - 1]) < 1e-4);
  for (int p = prompt; p < 30; ++p) {
    b.reset(8);
    b.add(p, std::span(toks).subspan(p, 1), blocks, true, {}, 0);
    REQUIRE(be->step(b, out, logits_mode::last).is_ok());
    CHECK(rel_err(out.logits.data(), ref[p]) < 1e-4);
    // Greedy sampling picks the reference argmax.
    int best = 0;
    for (int v = 1; v < V; ++v)
      if (ref[p][v] > ref[p][best]) best = v;
    CHECK(out.tokens[0] == best);
  }
}

TEST_CASE("chunked prefill equals one prefill") {
  random_model m(tiny_cfg(), 5);
  auto be = make(m);
  std::mt19937_64 rng(6);
  auto toks = random_tokens(rng, 37, m.w->cfg.n_vocab);
  block_alloc ba(256);
  auto blocks = ba.take(10);
  step_output out;
  step_batch b;
  int done = 0;
  for (int chunk : {5, 11, 1, 20}) {
    b.reset(10);
    b.add(done, std::span(toks).subspan(done, chunk), blocks, false, {}, 0);
    REQUIRE(be->step(b, out, logits_mode::last).is_ok());
    done += chunk;
  }
  auto ref = reference_forward(*m.w, toks);
  CHECK(rel_err(out.logits.data(), ref[36]) < 1e-4);
}

TEST_CASE("a ragged batch gives each sequence the logits it gets alone") {
  random_model m(tiny_cfg(), 7);
  const int V = m.w->cfg.n_vocab;
  std::mt19937_64 rng(8);
  // Five sequences: some decode one token over a cached prefix, some prefill.
  struct seq { std::vector<int32_t> toks; int past; std::vector<int32_t> blocks; };
  std::vector<seq> seqs;
  block_alloc ba(256);
  for (int len : {12, 1, 30, 7, 20}) {
    seq s;
    s.toks = random_tokens(rng, len, V);
    s.past = (len > 10) ? len - 1 : 0;  // long ones: prefix cached, decode the last token
    s.blocks = ba.take((len + 3) / 4);
    seqs.push_back(s);
  }
  // Alone: one backend per sequence.
  std::vector<std::vector<float>> alone;
  for (auto& s : seqs) {
    auto be = make(m);
    step_batch b;
    step_output out;
    if (s.past > 0) {
      b.reset(16);
      b.add(0, std::span(s.toks).first(s.past), s.blocks, false, {}, 0);
      REQUIRE(be->step(b, out).is_ok());
    }
    b.reset(16);
    b.add(s.past, std::span(s.toks).subspan(s.past), s.blocks, true, {}, 0);
    REQUIRE(be->step(b, out, logits_mode::last).is_ok());
    alone.push_back(out.logits);
  }
  // Together: prefixes cached one by one, then one ragged step.
  auto be = make(m);
  step_batch b;
  step_output out;
  for (auto& s : seqs)
    if (s.past > 0) {
      b.reset(16);
      b.add(0, std::span(s.toks).first(s.past), s.blocks, false, {}, 0);
      REQUIRE(be->step(b, out).is_ok());
    }
  b.reset(16);
  for (auto& s : seqs) b.add(s.past, std::span(s.toks).subspan(s.past), s.blocks, true, {}, 0);
  REQUIRE(be->step(b, out, logits_mode::last).is_ok());
  REQUIRE(out.logits.size() == seqs.size() * size_t(V));
  for (size_t i = 0; i < seqs.size(); ++i) {
    double md = 0;
    for (int v = 0; v < V; ++v) md = std::max(md, double(std::abs(out.logits[i * V + v] - alone[i][v])));
    CHECK(md < 1e-4);
  }
}

TEST_CASE("misuse is an invalid_argument error, not a crash") {
  random_model m(tiny_cfg(), 9);
  auto be = make(m, 4, 8);
  step_batch b;
  step_output out;
  std::vector<int32_t> toks{1, 2, 3};
  std::vector<int32_t> blocks{0};
  b.reset(1);
  b.add(0, toks, blocks, true, {}, 0);
  CHECK(be->step(b, out).is_ok());
  b.reset(1);
  b.add(3, toks, blocks, true, {}, 0);  // 6 positions need 2 blocks
  CHECK(be->step(b, out).code == errc::invalid_argument);
  b.reset(1);
  std::vector<int32_t> bad_block{99};
  b.add(0, toks, bad_block, true, {}, 0);
  CHECK(be->step(b, out).code == errc::invalid_argument);
  b.reset(1);
  std::vector<int32_t> bad_tok{1000};
  b.add(0, bad_tok, blocks, true, {}, 0);
  auto s = be->step(b, out);
  CHECK(s.code == errc::invalid_argument);
  CHECK(s.message.find("1000") != std::string::npos);
  b.reset(20);
  std::vector<int32_t> many(20, 0);
  b.add(60, std::span(toks).first(1), many, true, {}, 0);
  b.tokens.resize(1);
  std::vector<int32_t> long_toks(8, 1);
  b.reset(20);
  b.add(60, long_toks, many, true, {}, 0);  // 68 > n_ctx 64
  CHECK(be->step(b, out).code == errc::invalid_argument);
  b.reset(1);
  CHECK(be->step(b, out).code == errc::invalid_argument);  // empty
}

TEST_CASE("sampling: greedy, top-k, top-p and seeds") {
  const int V = 50;
  std::vector<float> logits(V), scratch(2 * V);
  std::mt19937_64 rng(10);
  std::normal_distribution<float> d(0, 2);
  for (auto& x : logits) x = d(rng);
  int argmax = int(std::max_element(logits.begin(), logits.end()) - logits.begin());
  sampling_params g;
  CHECK(cpu::sample_token(logits.data(), V, g, 0, scratch.data()) == argmax);

  sampling_params k1{1.0f, 1, 1.0f, 42};
  for (uint64_t c = 0; c < 20; ++c) CHECK(cpu::sample_token(logits.data(), V, k1, c, scratch.data()) == argmax);

  sampling_params p0{1.0f, 0, 1e-6f, 42};  // nucleus of one token
  for (uint64_t c = 0; c < 20; ++c) CHECK(cpu::sample_token(logits.data(), V, p0, c, scratch.data()) == argmax);

  // top-k = 5: every draw is one of the five largest, and several of them appear.
  std::vector<int> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return logits[a] > logits[b]; });
  std::set<int> top5(order.begin(), order.begin() + 5), seen;
  sampling_params k5{2.0f, 5, 1.0f, 7};
  for (uint64_t c = 0; c < 200; ++c) {
    int t = cpu::sample_token(logits.data(), V, k5, c, scratch.data());
    CHECK(top5.count(t) == 1);
    seen.insert(t);
  }
  CHECK(seen.size() >= 3);

  // Same seed and counter: same token; the draw depends on (seed, counter) only.
  sampling_params s1{1.0f, 0, 0.9f, 123}, s2{1.0f, 0, 0.9f, 124};
  int differ = 0;
  for (uint64_t c = 0; c < 50; ++c) {
    int a = cpu::sample_token(logits.data(), V, s1, c, scratch.data());
    CHECK(a == cpu::sample_token(logits.data(), V, s1, c, scratch.data()));
    differ += a != cpu::sample_token(logits.data(), V, s2, c, scratch.data());
  }
  CHECK(differ > 0);

  // Issue 13.9: tiny temperatures are greedy. 1e-40 (a float denormal) made 1/T infinite and
  // the softmax NaN, and the sampler returned the lowest-ranked id.
  for (float t : {1e-40f, 1e-30f, 1e-7f, 9.99e-6f}) {
    for (float top_p : {1.0f, 0.9f}) {
      sampling_params tiny{t, 0, top_p, 5};
      CAPTURE(t);
      for (uint64_t c = 0; c < 20; ++c) CHECK(cpu::sample_token(logits.data(), V, tiny, c, scratch.data()) == argmax);
    }
  }
  CHECK(sampling_params{1e-5f, 0, 1.0f, 0}.greedy() == false);  // from 1e-5 on: sampled
  CHECK(sampling_params{std::nanf(""), 0, 1.0f, 0}.greedy());

  // Frequencies follow the softmax: with temperature 1 over 3 candidates.
  std::vector<float> three{2.0f, 1.0f, 0.0f};
  std::vector<float> sc3(6);
  sampling_params t1{1.0f, 0, 1.0f, 99};
  std::map<int, int> hist;
  const int N = 20000;
  for (uint64_t c = 0; c < N; ++c) hist[cpu::sample_token(three.data(), 3, t1, c, sc3.data())]++;
  double z = std::exp(2.0) + std::exp(1.0) + 1.0;
  CHECK(std::abs(hist[0] / double(N) - std::exp(2.0) / z) < 0.02);
  CHECK(std::abs(hist[2] / double(N) - 1.0 / z) < 0.02);
}

// --- issue 16: penalties, logit_bias, min_p, min_tokens, stop ids, logprobs ---

namespace {

std::vector<double> softmax(const std::vector<float>& l) {
  double m = *std::max_element(l.begin(), l.end()), z = 0;
  std::vector<double> p(l.size());
  for (size_t i = 0; i < l.size(); ++i) z += p[i] = std::exp(double(l[i]) - m);
  for (auto& x : p) x /= z;
  return p;
}

// Drives a scheduler over a backend until every sequence has finished.
std::vector<seq_result> run_all(backend& be, scheduler& s, int* steps = nullptr) {
  step_batch b;
  step_output out;
  std::vector<seq_result> res;
  while (s.has_work()) {
    if (s.schedule(b) == 0) break;
    REQUIRE(be.step(b, out).is_ok());
    s.on_step_done(out, res);
    if (steps) ++*steps;
  }
  return res;
}

std::vector<int32_t> tokens_of(const std::vector<seq_result>& rs, uint64_t id) {
  std::vector<int32_t> t;
  for (const auto& r : rs)
    if (r.id == id) t.push_back(r.token);
  return t;
}

scheduler make_sched(const backend& be) {
  scheduler_config sc;
  sc.n_ctx = be.config().n_ctx;
  return scheduler(sc, be.kv());
}

}  // namespace

TEST_CASE("penalties: the scheduler's adjustments equal a straightforward reference") {
  const int V = 50;
  std::mt19937_64 rng(31);
  std::normal_distribution<float> d(0, 2);
  std::vector<float> logits(V);
  for (auto& x : logits) x = d(rng);
  // Tokens of both signs, repeated in prompt and output.
  std::vector<int32_t> pos, neg;
  for (int i = 0; i < V; ++i) (logits[i] > 0 ? pos : neg).push_back(i);
  REQUIRE(pos.size() >= 3);
  REQUIRE(neg.size() >= 3);
  const std::vector<int32_t> prompt{pos[0], neg[0], neg[0], pos[1]};
  const std::vector<int32_t> gen{neg[0], pos[2], pos[2], pos[2], neg[1]};

  for (auto [rep, freq, pres] : {std::tuple{1.3f, 0.5f, 0.7f}, std::tuple{0.8f, -1.0f, 2.0f},
                                 std::tuple{1.0f, 2.0f, 0.0f}, std::tuple{2.0f, 0.0f, -2.0f}}) {
    CAPTURE(rep);
    CAPTURE(freq);
    CAPTURE(pres);
    scheduler s(scheduler_config{}, kv_geometry{4, 64});
    seq_spec sp;
    sp.id = 1;
    sp.prompt = prompt;
    sp.generated = gen;
    sp.max_tokens = 10;
    sp.sampling.repetition_penalty = rep;
    sp.sampling.frequency_penalty = freq;
    sp.sampling.presence_penalty = pres;
    REQUIRE(s.add(sp).is_ok());
    step_batch b;
    REQUIRE(s.schedule(b) == 1);
    REQUIRE(b.sample[0] == 1);

    auto reference = [&](const std::vector<int32_t>& g) {
      std::vector<float> ref = logits;
      std::set<int32_t> seen(prompt.begin(), prompt.end());
      seen.insert(g.begin(), g.end());
      for (int32_t t : seen) {
        float l = ref[t];
        l = l > 0 ? l / rep : l * rep;
        const int c = int(std::count(g.begin(), g.end(), t));
        l -= freq * float(c) + (c > 0 ? pres : 0.0f);
        ref[t] = l;
      }
      return ref;
    };
    auto check_against = [&](const step_batch& bb, const std::vector<int32_t>& g) {
      std::vector<float> got = logits;
      cpu::apply_logit_adjust(got.data(), bb.adjustments(0), bb.sampling[0]);
      auto ref = reference(g);
      auto pg = softmax(got), pr = softmax(ref);
      for (int i = 0; i < V; ++i) {
        CHECK(std::abs(got[i] - ref[i]) < 1e-5);
        CHECK(std::abs(pg[i] - pr[i]) < 1e-5);
      }
    };
    check_against(b, gen);
    // The sampled token is counted for the next step.
    step_output out;
    out.tokens = {pos[2]};
    std::vector<seq_result> res;
    s.on_step_done(out, res);
    REQUIRE(s.schedule(b) == 1);
    auto gen2 = gen;
    gen2.push_back(pos[2]);
    check_against(b, gen2);
  }
}

TEST_CASE("logit_bias +100 forces its token, -100 bans it; min_p keeps what it should") {
  const int V = 50;
  std::mt19937_64 rng(32);
  std::normal_distribution<float> d(0, 2);
  std::vector<float> logits(V), scratch(2 * V);
  for (auto& x : logits) x = d(rng);
  const int lo = int(std::min_element(logits.begin(), logits.end()) - logits.begin());
  const int hi = int(std::max_element(logits.begin(), logits.end()) - logits.begin());
  sampling_params t1{1.0f, 0, 1.0f, 5};
  std::vector<float> forced = logits, banned = logits;
  const logit_adjust up{lo, 0, 100.0f, 0}, down{hi, 0, -100.0f, 0};
  cpu::apply_logit_adjust(forced.data(), std::span(&up, 1), t1);
  cpu::apply_logit_adjust(banned.data(), std::span(&down, 1), t1);
  for (uint64_t c = 0; c < 200; ++c) {
    CHECK(cpu::sample_token(forced.data(), V, t1, c, scratch.data()) == lo);
    CHECK(cpu::sample_token(banned.data(), V, t1, c, scratch.data()) != hi);
  }
  CHECK(cpu::sample_token(banned.data(), V, sampling_params{}, 0, scratch.data()) != hi);

  // min_p 0.5 at temperature 1: exp(-0.5) = 0.61 stays, exp(-1) = 0.37 goes.
  std::vector<float> l4{3.0f, 2.5f, 2.0f, 1.5f}, sc4(8);
  sampling_params mp{1.0f, 0, 1.0f, 9};
  mp.min_p = 0.5f;
  std::set<int> with, without;
  for (uint64_t c = 0; c < 400; ++c) {
    with.insert(cpu::sample_token(l4.data(), 4, mp, c, sc4.data()));
    without.insert(cpu::sample_token(l4.data(), 4, t1, c, sc4.data()));
  }
  CHECK(with == std::set<int>{0, 1});
  CHECK(without.size() == 4);
  // A higher temperature flattens the distribution: min_p then keeps more.
  mp.temperature = 4.0f;  // exp(-1.5 / 4) = 0.69 >= 0.5: all four stay
  with.clear();
  for (uint64_t c = 0; c < 400; ++c) with.insert(cpu::sample_token(l4.data(), 4, mp, c, sc4.data()));
  CHECK(with.size() == 4);
}

TEST_CASE("stop ids, min_tokens and logit_bias through scheduler and CPU backend") {
  random_model m(tiny_cfg(), 33);
  auto be = make(m);
  std::mt19937_64 rng(34);
  const auto prompt = random_tokens(rng, 7, m.w->cfg.n_vocab);
  auto spec = [&](uint64_t id) {
    seq_spec s;
    s.id = id;
    s.prompt = prompt;
    s.max_tokens = 8;
    return s;
  };
  auto sched = make_sched(*be);
  REQUIRE(sched.add(spec(1)).is_ok());
  const auto base = tokens_of(run_all(*be, sched), 1);
  REQUIRE(base.size() == 8);

  // The first greedy token as a stop id ends the sequence at once.
  auto s2 = spec(2);
  s2.stop_ids = {base[0]};
  REQUIRE(sched.add(s2).is_ok());
  auto r2 = run_all(*be, sched);
  REQUIRE(r2.size() == 1);
  CHECK(r2[0].token == base[0]);
  CHECK(r2[0].stopped);
  CHECK(r2[0].finished);

  // min_tokens 3 bans it for the first three tokens only.
  auto s3 = spec(3);
  s3.stop_ids = {base[0]};
  s3.sampling.min_tokens = 3;
  REQUIRE(sched.add(s3).is_ok());
  auto t3 = tokens_of(run_all(*be, sched), 3);
  REQUIRE(t3.size() >= 3);
  for (int i = 0; i < 3; ++i) CHECK(t3[size_t(i)] != base[0]);

  // +100 on one id: greedy emits only it. -100 on the first greedy token: something else first.
  const int32_t x = (base[0] + 11) % m.w->cfg.n_vocab;
  auto s4 = spec(4);
  s4.logit_bias = {{x, 100.0f}};
  REQUIRE(sched.add(s4).is_ok());
  for (int32_t t : tokens_of(run_all(*be, sched), 4)) CHECK(t == x);
  auto s5 = spec(5);
  s5.logit_bias = {{base[0], -100.0f}};
  REQUIRE(sched.add(s5).is_ok());
  auto t5 = tokens_of(run_all(*be, sched), 5);
  REQUIRE(!t5.empty());
  CHECK(t5[0] != base[0]);
}

TEST_CASE("logprobs are the log-softmax of the raw logits, sorted, the sampled one present") {
  random_model m(tiny_cfg(), 35);
  auto be = make(m);
  const int V = m.w->cfg.n_vocab;
  std::mt19937_64 rng(36);
  const auto prompt = random_tokens(rng, 6, V);
  // The reference: this prompt's last logits.
  block_alloc ba(256);
  step_batch b;
  b.reset(16);
  b.add(0, prompt, ba.take(2), false, {}, 0);
  step_output out;
  REQUIRE(be->step(b, out, logits_mode::last).is_ok());
  std::vector<float> raw(out.logits.begin(), out.logits.begin() + V);
  auto p = softmax(raw);

  auto sched = make_sched(*be);
  seq_spec s;
  s.id = 1;
  s.prompt = prompt;
  s.max_tokens = 4;
  s.sampling.temperature = 1.0f;
  s.sampling.seed = 3;
  s.sampling.logprobs = 5;
  // Adjustments and temperature change what is sampled, never the reported distribution.
  s.sampling.repetition_penalty = 1.5f;
  s.logit_bias = {{7, 3.0f}};
  REQUIRE(sched.add(s).is_ok());
  auto rs = run_all(*be, sched);
  REQUIRE(rs.size() == 4);
  const auto& r = rs[0];
  REQUIRE(r.n_top == 5);
  CHECK(std::abs(r.logprob - std::log(p[size_t(r.token)])) < 1e-4);
  std::vector<int> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int c) { return raw[a] > raw[c]; });
  for (int j = 0; j < 5; ++j) {
    CHECK(r.top_ids[size_t(j)] == order[size_t(j)]);
    CHECK(std::abs(r.top_logprobs[size_t(j)] - std::log(p[size_t(order[size_t(j)])])) < 1e-4);
    if (j > 0) CHECK(r.top_logprobs[size_t(j)] <= r.top_logprobs[size_t(j - 1)]);
    if (r.top_ids[size_t(j)] == r.token) CHECK(std::abs(r.top_logprobs[size_t(j)] - r.logprob) < 1e-6);
  }
  for (const auto& q : rs) CHECK(q.n_top == 5);

  // logprobs 0: only the sampled token's.
  seq_spec s0 = s;
  s0.id = 2;
  s0.sampling.logprobs = 0;
  REQUIRE(sched.add(s0).is_ok());
  auto r0 = run_all(*be, sched);
  REQUIRE(!r0.empty());
  CHECK(r0[0].n_top == 0);
  CHECK(r0[0].logprob <= 0.0f);
  // No logprobs asked: none reported.
  seq_spec sn = s;
  sn.id = 3;
  sn.sampling.logprobs = -1;
  REQUIRE(sched.add(sn).is_ok());
  for (const auto& q : run_all(*be, sched)) CHECK(q.n_top == -1);
}

TEST_CASE("prompt logprobs (echo with logprobs): the log-softmax of the float64 reference at every prompt token") {
  random_model m(tiny_cfg(), 41);
  auto be = make(m);
  const int V = m.w->cfg.n_vocab;
  constexpr size_t K = size_t(sampling_params::max_logprobs);
  std::mt19937_64 rng(42);
  const auto prompt = random_tokens(rng, 23, V);
  const auto ref = reference_forward(*m.w, prompt);
  auto ref_lp = [&](int pos, int tok) {  // log-softmax of the reference logits at pos
    double mx = *std::max_element(ref[size_t(pos)].begin(), ref[size_t(pos)].end()), sum = 0;
    for (double x : ref[size_t(pos)]) sum += std::exp(x - mx);
    return ref[size_t(pos)][size_t(tok)] - mx - std::log(sum);
  };
  for (bool caching : {false, true}) {
    CAPTURE(caching);
    scheduler_config sc;
    sc.n_ctx = be->config().n_ctx;
    sc.prefill_chunk = 7;  // chunks end inside the prompt: the entry after a chunk's last token
    sc.prefix_caching = caching;
    scheduler sched(sc, be->kv());
    if (caching) {  // the prompt's blocks cached first: a prompt-logprobs request must not skip them
      seq_spec warm;
      warm.id = 9;
      warm.prompt = prompt;
      warm.max_tokens = 1;
      REQUIRE(sched.add(warm).is_ok());
      run_all(*be, sched);
    }
    seq_spec s;
    s.id = 1;
    s.prompt = prompt;
    s.max_tokens = 3;
    s.sampling.logprobs = 4;
    s.prompt_logprobs = true;
    seq_spec plain = s;  // in the same batches, asking nothing: pays nothing, gets nothing
    plain.id = 2;
    plain.prompt_logprobs = false;
    REQUIRE(sched.add(s).is_ok());
    REQUIRE(sched.add(plain).is_ok());
    auto rs = run_all(*be, sched);
    std::map<uint64_t, std::vector<seq_result>> by;
    for (auto& r : rs) by[r.id].push_back(r);
    REQUIRE(by[1].size() == 3);
    const seq_result& first = by[1][0];
    CHECK(first.cached_tokens == 0);
    REQUIRE(first.prompt_logprob.size() == prompt.size() - 1);
    REQUIRE(first.prompt_top_ids.size() == (prompt.size() - 1) * K);
    for (size_t j = 0; j + 1 < prompt.size(); ++j) {
      CAPTURE(j);
      CHECK(std::abs(first.prompt_logprob[j] - ref_lp(int(j), prompt[j + 1])) < 1e-4);
      std::vector<int> order(V);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int a, int c) { return ref[j][size_t(a)] > ref[j][size_t(c)]; });
      for (size_t i = 0; i < 4; ++i) {
        CHECK(first.prompt_top_ids[j * K + i] == order[i]);
        CHECK(std::abs(first.prompt_top_logprobs[j * K + i] - ref_lp(int(j), order[i])) < 1e-4);
      }
    }
    for (size_t i = 1; i < by[1].size(); ++i) CHECK(by[1][i].prompt_logprob.empty());
    for (auto& r : by[2]) CHECK(r.prompt_logprob.empty());
    // The same tokens as without prompt logprobs (the request beside it, greedy).
    for (size_t i = 0; i < 3; ++i) CHECK(by[1][i].token == by[2][i].token);
    CHECK(sched.pool().n_used() == 0);
  }

  // The backend alone: a sequence that asks beside one that does not; entries only for it.
  block_alloc ba(256);
  step_batch b;
  b.reset(16);
  b.add(0, std::span<const int32_t>(prompt.data(), 10), ba.take(3), false, sampling_params{}, 0);
  b.want_prompt_logprobs(prompt[10]);  // the token after this chunk
  b.add(0, std::span<const int32_t>(prompt.data(), 5), ba.take(2), true, sampling_params{}, 0);
  step_output out;
  REQUIRE(be->step(b, out, logits_mode::last).is_ok());
  REQUIRE(out.prompt_start.size() == 3);
  CHECK(out.prompt_start[1] == 10);  // tokens 1..10
  CHECK(out.prompt_start[2] == 10);
  CHECK(std::abs(out.prompt_logprob[9] - ref_lp(9, prompt[10])) < 1e-4);
  CHECK(out.logits.size() == size_t(2) * V);  // mode last: still one row per sequence
  CHECK(rel_err(out.logits.data(), ref[9]) < 1e-4);
}

// Prefix caching end to end on the CPU backend: the scheduler hands a second request the
// KV blocks the first one left, and the real forward pass must give the same greedy tokens
// as recomputing everything.
#include "model/weights.hpp"
#include "engine/scheduler.hpp"

namespace {

struct served {
  std::map<uint64_t, std::vector<int32_t>> tokens;
  std::map<uint64_t, int32_t> cached;
  std::map<uint64_t, int32_t> computed;  // tokens run through the model, per sequence
};

// Runs `prompts` one after another (each to completion) through one scheduler and backend.
served serve_in_turn(bool caching, const std::vector<std::vector<int32_t>>& prompts, int32_t max_tokens) {
  auto w = load_model_weights("synthetic:tiny", 7);
  REQUIRE(w.has_value());
  backend_options o;
  o.kv_block_size = 16;
  o.kv_blocks = 64;
  auto be = make_cpu_backend(w.value(), o);
  REQUIRE(be.has_value());
  scheduler_config sc{.max_batch_tokens = 128, .max_running = 4, .prefill_chunk = 64, .n_ctx = 512};
  sc.prefix_caching = caching;
  scheduler sched(sc, be.value()->kv());
  served out;
  step_batch batch;
  step_output so;
  std::vector<seq_result> results;
  std::vector<uint64_t> ids;
  for (size_t i = 0; i < prompts.size(); ++i) {
    seq_spec s;
    s.id = i + 1;
    s.prompt = prompts[i];
    s.max_tokens = max_tokens;
    s.sampling.temperature = 0;
    REQUIRE(sched.add(s).is_ok());
    while (sched.schedule(batch) > 0) {
      sched.scheduled_ids(ids);
      for (int32_t k = 0; k < batch.n_seqs(); ++k) out.computed[ids[size_t(k)]] += batch.seq_len(k);
      REQUIRE(be.value()->step(batch, so).is_ok());
      results.clear();
      sched.on_step_done(so, results);
      for (auto& r : results) {
        out.tokens[r.id].push_back(r.token);
        if (r.cached_tokens >= 0) out.cached[r.id] = r.cached_tokens;
      }
    }
  }
  CHECK(sched.pool().n_used() == 0);
  return out;
}

}  // namespace

TEST_CASE("prefix caching on the CPU backend: same greedy tokens, fewer tokens prefilled") {
  std::vector<int32_t> system;
  for (int i = 0; i < 100; ++i) system.push_back((i * 37 + 5) % 256);
  auto with_tail = [&](std::vector<int32_t> tail) {
    auto p = system;
    p.insert(p.end(), tail.begin(), tail.end());
    return p;
  };
  const std::vector<std::vector<int32_t>> prompts = {
      with_tail({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}),  // 111 tokens
      with_tail({20, 21, 22}),                         // shares 96 tokens (6 blocks) with it
      {9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20},  // shares nothing
      with_tail({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}),  // the first again
  };
  const int32_t max_tokens = 8;
  served off = serve_in_turn(false, prompts, max_tokens);
  served on = serve_in_turn(true, prompts, max_tokens);
  for (uint64_t id = 1; id <= prompts.size(); ++id) {
    CAPTURE(id);
    REQUIRE(on.tokens[id].size() == size_t(max_tokens));
    CHECK(on.tokens[id] == off.tokens[id]);
    CHECK(off.cached[id] == 0);
    CHECK(off.computed[id] == int32_t(prompts[id - 1].size()) + max_tokens - 1);
  }
  CHECK(on.cached[1] == 0);
  CHECK(on.cached[2] == 96);
  CHECK(on.cached[3] == 0);
  CHECK(on.cached[4] == 96);  // of 111 + 8 generated: the prompt's full blocks before its last token
  CHECK(on.computed[2] == 103 - 96 + max_tokens - 1);
  CHECK(on.computed[4] == 111 - 96 + max_tokens - 1);
  int32_t total_on = 0, total_off = 0;
  for (auto& [id, n] : on.computed) total_on += n;
  for (auto& [id, n] : off.computed) total_off += n;
  CHECK(total_on == total_off - 2 * 96);
}
