// The CPU backend on every Llama-family architecture against an independent, straightforward
// float64 implementation written here from the Hugging Face modeling files' semantics (no KV
// cache, no paging, no BLAS, no fusing, none of model/'s tables or RoPE code).
//
// Each case writes a tiny random checkpoint in Hugging Face form (config.json + safetensors,
// q/k/v and gate/up as separate tensors, GLM-4's fused gate_up_proj) and loads it through
// the real loader, so config parsing, the tensor table and load-time fusing are under test
// too. The reference reads the same HF tensors by name.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "engine/cpu-backend.hpp"
#include "base/safetensors.hpp"
#include "model/weights.hpp"

using namespace infer;
namespace fs = std::filesystem;

namespace {

struct temp_dir {
  fs::path path;
  temp_dir() {
    std::string tmpl = (fs::temp_directory_path() / "infer-test-model-XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// A tiny model described the way its config.json would, plus what the reference needs.
struct spec {
  std::string name;
  std::string hf_class;
  int V = 61, C = 32, L = 2, NH = 4, NKV = 2, hd = 8, F = 48, max_pos = 128;
  double eps = 1e-5, theta = 10000.0;
  std::string rope = "default";  // default | linear | llama3
  double factor = 1, low = 1, high = 4;
  int orig_max = 16;
  bool rope_parameters = false;  // newer layout: rope_parameters instead of rope_theta + rope_scaling
  double partial = 1.0;
  bool interleaved = false;
  int window = 0;
  bool tied = false, qkv_bias = false, o_bias = false, mlp_bias = false, qk_norm = false, post_norms = false;
  bool fused_gate_up = false;
  bool fused_qkv = false;  // Phi-3: one qkv_proj [q_dim + 2 kv_dim, C] on disk
  bool explicit_head_dim = false;
  std::string extra_json;  // more config.json keys
};

std::string config_json(const spec& s) {
  std::string j = fmt::format(
      R"({{"architectures": ["{}"], "vocab_size": {}, "hidden_size": {}, "num_hidden_layers": {},
          "num_attention_heads": {}, "num_key_value_heads": {}, "intermediate_size": {},
          "max_position_embeddings": {}, "rms_norm_eps": {}, "tie_word_embeddings": {}, "hidden_act": "silu")",
      s.hf_class, s.V, s.C, s.L, s.NH, s.NKV, s.F, s.max_pos, s.eps, s.tied ? "true" : "false");
  if (s.explicit_head_dim) j += fmt::format(R"(, "head_dim": {})", s.hd);
  std::string scaling;
  if (s.rope == "linear") scaling = fmt::format(R"("rope_type": "linear", "factor": {})", s.factor);
  if (s.rope == "llama3")
    scaling = fmt::format(R"("rope_type": "llama3", "factor": {}, "low_freq_factor": {}, "high_freq_factor": {},
                             "original_max_position_embeddings": {})",
                          s.factor, s.low, s.high, s.orig_max);
  if (s.rope_parameters) {
    j += fmt::format(R"(, "rope_parameters": {{"rope_theta": {}, {}}})", s.theta,
                     scaling.empty() ? std::string(R"("rope_type": "default")") : scaling);
  } else {
    j += fmt::format(R"(, "rope_theta": {})", s.theta);
    if (!scaling.empty()) j += fmt::format(R"(, "rope_scaling": {{{}}})", scaling);
  }
  if (s.partial != 1.0) j += fmt::format(R"(, "partial_rotary_factor": {})", s.partial);
  if (s.hf_class == "MistralForCausalLM" || s.hf_class == "Phi3ForCausalLM") {
    j += s.window > 0 ? fmt::format(R"(, "sliding_window": {})", s.window) : std::string(R"(, "sliding_window": null)");
  }
  if (s.hf_class == "LlamaForCausalLM" || s.hf_class == "Qwen3ForCausalLM" || s.hf_class == "Glm4ForCausalLM")
    j += fmt::format(R"(, "attention_bias": {})", s.qkv_bias ? "true" : "false");
  if (s.hf_class == "LlamaForCausalLM") j += fmt::format(R"(, "mlp_bias": {})", s.mlp_bias ? "true" : "false");
  return j + s.extra_json + "}";
}

using tensors = std::map<std::string, std::vector<float>>;

struct hf_model {
  spec s;
  tensors t;
  std::map<std::string, std::vector<int64_t>> shapes;
  const float* get(const std::string& n) const {
    auto it = t.find(n);
    REQUIRE_MESSAGE(it != t.end(), n);
    return it->second.data();
  }
};

hf_model random_hf(const spec& s, uint64_t seed) {
  hf_model m{s, {}, {}};
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.f, 1.f);
  auto add = [&](const std::string& n, std::vector<int64_t> shape, float scale, float offset = 0.f) {
    size_t k = 1;
    for (auto x : shape) k *= size_t(x);
    std::vector<float> v(k);
    for (auto& x : v) x = offset + scale * d(rng);
    m.t[n] = std::move(v);
    m.shapes[n] = shape;
  };
  const int64_t C = s.C, Q = int64_t(s.NH) * s.hd, KV = int64_t(s.NKV) * s.hd, F = s.F;
  add("model.embed_tokens.weight", {s.V, C}, 0.5f);
  for (int l = 0; l < s.L; ++l) {
    const std::string h = fmt::format("model.layers.{}.", l);
    add(h + "input_layernorm.weight", {C}, 0.1f, 1.f);
    if (s.fused_qkv) {
      add(h + "self_attn.qkv_proj.weight", {Q + 2 * KV, C}, 0.25f);
    } else {
      add(h + "self_attn.q_proj.weight", {Q, C}, 0.25f);
      add(h + "self_attn.k_proj.weight", {KV, C}, 0.25f);
      add(h + "self_attn.v_proj.weight", {KV, C}, 0.25f);
    }
    if (s.qkv_bias) {
      add(h + "self_attn.q_proj.bias", {Q}, 0.1f);
      add(h + "self_attn.k_proj.bias", {KV}, 0.1f);
      add(h + "self_attn.v_proj.bias", {KV}, 0.1f);
    }
    if (s.qk_norm) {
      add(h + "self_attn.q_norm.weight", {s.hd}, 0.1f, 1.f);
      add(h + "self_attn.k_norm.weight", {s.hd}, 0.1f, 1.f);
    }
    add(h + "self_attn.o_proj.weight", {C, Q}, 0.15f);
    if (s.o_bias) add(h + "self_attn.o_proj.bias", {C}, 0.1f);
    if (s.post_norms) {
      add(h + "post_self_attn_layernorm.weight", {C}, 0.1f, 1.f);
      add(h + "post_mlp_layernorm.weight", {C}, 0.1f, 1.f);
    }
    add(h + "post_attention_layernorm.weight", {C}, 0.1f, 1.f);
    if (s.fused_gate_up) {
      add(h + "mlp.gate_up_proj.weight", {2 * F, C}, 0.2f);
    } else {
      add(h + "mlp.gate_proj.weight", {F, C}, 0.2f);
      add(h + "mlp.up_proj.weight", {F, C}, 0.2f);
      if (s.mlp_bias) {
        add(h + "mlp.gate_proj.bias", {F}, 0.1f);
        add(h + "mlp.up_proj.bias", {F}, 0.1f);
      }
    }
    add(h + "mlp.down_proj.weight", {C, F}, 0.15f);
    if (s.mlp_bias) add(h + "mlp.down_proj.bias", {C}, 0.1f);
  }
  add("model.norm.weight", {C}, 0.1f, 1.f);
  if (!s.tied) add("lm_head.weight", {s.V, C}, 0.3f);
  return m;
}

void write_dir(const hf_model& m, const std::string& dir, st_dtype dtype = st_dtype::f32) {
  fs::create_directories(dir);
  std::ofstream(dir + "/config.json") << config_json(m.s);
  std::vector<st_tensor_desc> out;
  for (auto& [n, v] : m.t) out.push_back({n, dtype, m.shapes.at(n), v});
  auto st = write_safetensors(dir + "/model.safetensors", out);
  REQUIRE_MESSAGE(st.is_ok(), st.message);
}

// ---- the float64 reference ----------------------------------------------------------------

using vec = std::vector<double>;

vec rms(const vec& x, const float* w, double eps) {
  double ss = 0;
  for (double e : x) ss += e * e;
  const double r = 1.0 / std::sqrt(ss / double(x.size()) + eps);
  vec o(x.size());
  for (size_t i = 0; i < x.size(); ++i) o[i] = x[i] * r * w[i];
  return o;
}

// y = W x (+ b), W [out, in] as nn.Linear stores it.
vec lin(const vec& x, const float* W, const float* b, int out, size_t row0 = 0) {
  const size_t in = x.size();
  vec o(static_cast<size_t>(out));
  for (int j = 0; j < out; ++j) {
    double s = b ? double(b[j]) : 0.0;
    for (size_t i = 0; i < in; ++i) s += double(W[(row0 + size_t(j)) * in + i]) * x[i];
    o[size_t(j)] = s;
  }
  return o;
}

// Inverse frequencies as transformers' _compute_default/_linear/_llama3_parameters give them.
std::vector<double> inv_freq(const spec& s) {
  const int dim = int(std::lround(s.hd * s.partial));
  std::vector<double> f;
  for (int i = 0; i < dim; i += 2) f.push_back(1.0 / std::pow(s.theta, double(i) / dim));
  if (s.rope == "linear")
    for (auto& x : f) x /= s.factor;
  if (s.rope == "llama3") {
    const double lo_wl = s.orig_max / s.low, hi_wl = s.orig_max / s.high;
    for (auto& x : f) {
      const double wl = 2 * M_PI / x;
      const double scaled = wl > lo_wl ? x / s.factor : x;
      const double sm = (s.orig_max / wl - s.low) / (s.high - s.low);
      const bool medium = !(wl < hi_wl) && !(wl > lo_wl);
      x = medium ? (1 - sm) * scaled / s.factor + sm * scaled : scaled;
    }
  }
  return f;
}

// One head vector rotated at position p: HF rotate_half (neox) or GLM-4's interleaved form,
// on the first `dim` dims.
void rotate(double* v, int p, const spec& s, const std::vector<double>& f) {
  const int dim = int(f.size()) * 2;
  std::vector<double> o(v, v + s.hd);
  for (int i = 0; i < dim; ++i) {
    const int fi = s.interleaved ? i / 2 : i % (dim / 2);
    const double c = std::cos(p * f[size_t(fi)]), sn = std::sin(p * f[size_t(fi)]);
    double rot;  // rotate_half(x)[i]
    if (s.interleaved) rot = (i % 2 == 0) ? -v[i + 1] : v[i - 1];
    else rot = i < dim / 2 ? -v[i + dim / 2] : v[i - dim / 2];
    o[size_t(i)] = v[i] * c + rot * sn;
  }
  std::copy(o.begin(), o.end(), v);
}

std::vector<vec> reference(const hf_model& m, const std::vector<int32_t>& toks) {
  const spec& s = m.s;
  const int T = int(toks.size()), C = s.C, hd = s.hd, Q = s.NH * hd, KV = s.NKV * hd;
  const auto f = inv_freq(s);
  auto opt = [&](const std::string& n) -> const float* { return m.t.count(n) ? m.t.at(n).data() : nullptr; };
  std::vector<vec> x(static_cast<size_t>(T), vec(static_cast<size_t>(C)));
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < C; ++i) x[t][i] = m.get("model.embed_tokens.weight")[size_t(toks[t]) * C + i];
  for (int l = 0; l < s.L; ++l) {
    const std::string h = fmt::format("model.layers.{}.", l);
    std::vector<vec> q(T), k(T), v(T);
    for (int t = 0; t < T; ++t) {
      vec in = rms(x[t], m.get(h + "input_layernorm.weight"), s.eps);
      if (s.fused_qkv) {  // Phi3Attention: qkv[..., :Q], qkv[..., Q:Q+KV], qkv[..., Q+KV:]
        const float* w = m.get(h + "self_attn.qkv_proj.weight");
        q[t] = lin(in, w, nullptr, Q, 0);
        k[t] = lin(in, w, nullptr, KV, size_t(Q));
        v[t] = lin(in, w, nullptr, KV, size_t(Q + KV));
      } else {
        q[t] = lin(in, m.get(h + "self_attn.q_proj.weight"), opt(h + "self_attn.q_proj.bias"), Q);
        k[t] = lin(in, m.get(h + "self_attn.k_proj.weight"), opt(h + "self_attn.k_proj.bias"), KV);
        v[t] = lin(in, m.get(h + "self_attn.v_proj.weight"), opt(h + "self_attn.v_proj.bias"), KV);
      }
      for (int hh = 0; hh < s.NH; ++hh) {
        if (s.qk_norm) {
          vec qh(q[t].begin() + hh * hd, q[t].begin() + (hh + 1) * hd);
          qh = rms(qh, m.get(h + "self_attn.q_norm.weight"), s.eps);
          std::copy(qh.begin(), qh.end(), q[t].begin() + hh * hd);
        }
        rotate(q[t].data() + hh * hd, t, s, f);
      }
      for (int hh = 0; hh < s.NKV; ++hh) {
        if (s.qk_norm) {
          vec kh(k[t].begin() + hh * hd, k[t].begin() + (hh + 1) * hd);
          kh = rms(kh, m.get(h + "self_attn.k_norm.weight"), s.eps);
          std::copy(kh.begin(), kh.end(), k[t].begin() + hh * hd);
        }
        rotate(k[t].data() + hh * hd, t, s, f);
      }
    }
    for (int t = 0; t < T; ++t) {
      vec att(size_t(Q), 0.0);
      const int first = s.window > 0 ? std::max(0, t - s.window + 1) : 0;
      for (int hh = 0; hh < s.NH; ++hh) {
        const int kvh = hh / (s.NH / s.NKV);
        vec a;
        double mx = -1e300;
        for (int p = first; p <= t; ++p) {
          double dsum = 0;
          for (int i = 0; i < hd; ++i) dsum += q[t][hh * hd + i] * k[p][kvh * hd + i];
          a.push_back(dsum / std::sqrt(double(hd)));
          mx = std::max(mx, a.back());
        }
        double z = 0;
        for (auto& e : a) z += (e = std::exp(e - mx));
        for (int p = first; p <= t; ++p)
          for (int i = 0; i < hd; ++i) att[hh * hd + i] += a[p - first] / z * v[p][kvh * hd + i];
      }
      vec o = lin(att, m.get(h + "self_attn.o_proj.weight"), opt(h + "self_attn.o_proj.bias"), C);
      if (s.post_norms) o = rms(o, m.get(h + "post_self_attn_layernorm.weight"), s.eps);
      for (int i = 0; i < C; ++i) x[t][i] += o[i];
    }
    for (int t = 0; t < T; ++t) {
      vec in = rms(x[t], m.get(h + "post_attention_layernorm.weight"), s.eps);
      vec g, u;
      if (s.fused_gate_up) {  // GLM-4, Phi-3: gate, up = gate_up_proj(x).chunk(2)
        g = lin(in, m.get(h + "mlp.gate_up_proj.weight"), nullptr, s.F, 0);
        u = lin(in, m.get(h + "mlp.gate_up_proj.weight"), nullptr, s.F, size_t(s.F));
      } else {
        g = lin(in, m.get(h + "mlp.gate_proj.weight"), opt(h + "mlp.gate_proj.bias"), s.F);
        u = lin(in, m.get(h + "mlp.up_proj.weight"), opt(h + "mlp.up_proj.bias"), s.F);
      }
      vec a(size_t(s.F));
      for (int i = 0; i < s.F; ++i) a[i] = g[i] / (1 + std::exp(-g[i])) * u[i];
      vec o = lin(a, m.get(h + "mlp.down_proj.weight"), opt(h + "mlp.down_proj.bias"), C);
      if (s.post_norms) o = rms(o, m.get(h + "post_mlp_layernorm.weight"), s.eps);
      for (int i = 0; i < C; ++i) x[t][i] += o[i];
    }
  }
  const float* head = s.tied ? m.get("model.embed_tokens.weight") : m.get("lm_head.weight");
  std::vector<vec> logits;
  for (int t = 0; t < T; ++t) logits.push_back(lin(rms(x[t], m.get("model.norm.weight"), s.eps), head, nullptr, s.V));
  return logits;
}

// ---- driving the backend ----------------------------------------------------------------

double rel_err(const float* got, const vec& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num += (got[i] - ref[i]) * (got[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

std::vector<int32_t> random_tokens(std::mt19937_64& rng, int n, int V) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& e : t) e = int32_t(rng() % uint64_t(V));
  return t;
}

// Scrambled block order so paging bugs show.
std::vector<int32_t> blocks_for(int& next, int n, int n_blocks) {
  std::vector<int32_t> v;
  for (int i = 0; i < n; ++i) v.push_back(int32_t((next++ * 7 + 3) % n_blocks));
  return v;
}

std::unique_ptr<backend> make(std::shared_ptr<const model_weights> w) {
  backend_options o;
  o.kv_block_size = 4;
  o.kv_blocks = 256;
  auto b = make_cpu_backend(std::move(w), o);
  REQUIRE_MESSAGE(b.has_value(), b.error().message);
  return std::move(b).value();
}

std::vector<spec> specs() {
  std::vector<spec> v;
  {  // Llama 3.x: GQA, untied, llama3 rope scaling with every frequency band in play
    spec s;
    s.name = "llama3 GQA untied llama3-rope";
    s.hf_class = "LlamaForCausalLM";
    s.rope = "llama3";
    s.factor = 8;
    s.low = 1;
    s.high = 4;
    s.orig_max = 16;
    s.theta = 500000;
    v.push_back(s);
  }
  {  // Llama 2 style: tied head, attention and MLP biases, linear rope scaling, MHA
    spec s;
    s.name = "llama tied bias linear-rope";
    s.hf_class = "LlamaForCausalLM";
    s.NKV = 4;
    s.tied = true;
    s.qkv_bias = s.o_bias = s.mlp_bias = true;
    s.rope = "linear";
    s.factor = 2;
    v.push_back(s);
  }
  {  // Mistral: sliding window shorter than the prompts
    spec s;
    s.name = "mistral sliding window 5";
    s.hf_class = "MistralForCausalLM";
    s.window = 5;
    v.push_back(s);
  }
  {  // Qwen2: QKV bias (no o_proj bias), tied, 4:1 GQA
    spec s;
    s.name = "qwen2 qkv-bias tied";
    s.hf_class = "Qwen2ForCausalLM";
    s.NH = 8;
    s.NKV = 2;
    s.hd = 4;
    s.qkv_bias = true;
    s.tied = true;
    s.theta = 1000000;
    s.extra_json = R"(, "sliding_window": 64, "use_sliding_window": false)";
    v.push_back(s);
  }
  {  // Qwen3: q/k norm, head_dim explicit and != hidden / heads, rope_parameters layout
    spec s;
    s.name = "qwen3 qk-norm head_dim 16";
    s.hf_class = "Qwen3ForCausalLM";
    s.hd = 16;
    s.explicit_head_dim = true;
    s.qk_norm = true;
    s.rope_parameters = true;
    v.push_back(s);
  }
  {  // GLM-4: post-norms, fused gate_up, partial rotary 0.5 interleaved, QKV bias
    spec s;
    s.name = "glm4 post-norms partial interleaved";
    s.hf_class = "Glm4ForCausalLM";
    s.hd = 16;
    s.explicit_head_dim = true;
    s.partial = 0.5;
    s.interleaved = true;
    s.qkv_bias = true;
    s.post_norms = true;
    s.fused_gate_up = true;
    s.eps = 1e-5;
    v.push_back(s);
  }
  {  // Phi-3: fused qkv_proj and gate_up_proj on disk, sliding window, partial neox rotary
    spec s;
    s.name = "phi3 fused qkv sliding window partial neox";
    s.hf_class = "Phi3ForCausalLM";
    s.NKV = 4;
    s.window = 7;
    s.partial = 0.75;
    s.fused_qkv = true;
    s.fused_gate_up = true;
    v.push_back(s);
  }
  return v;
}

}  // namespace

TEST_CASE("every architecture: CPU backend logits match the float64 reference") {
  temp_dir tmp;
  uint64_t seed = 100;
  for (const spec& s : specs()) {
    CAPTURE(s.name);
    const hf_model m = random_hf(s, seed++);
    const std::string dir = (tmp.path / fmt::format("m{}", seed)).string();
    write_dir(m, dir);
    auto w = load_model_weights(dir);
    REQUIRE_MESSAGE(w.has_value(), w.error().message);
    const model_config& c = (*w)->cfg;
    CHECK(c.kv_heads() == s.NKV);
    CHECK(c.head_dim() == s.hd);
    CHECK(c.sliding_window == s.window);
    CHECK(c.tied_head == s.tied);
    std::mt19937_64 rng(seed);
    const int V = s.V;

    SUBCASE("prefill at every position") {
      auto be = make(*w);
      int next = 0;
      for (int len : {1, 6, 23}) {
        auto toks = random_tokens(rng, len, V);
        step_batch b;
        b.reset(16);
        b.add(0, toks, blocks_for(next, (len + 3) / 4, 256), false, {}, 0);
        step_output out;
        REQUIRE(be->step(b, out, logits_mode::all).is_ok());
        auto ref = reference(m, toks);
        REQUIRE(out.logits.size() == size_t(len) * V);
        for (int t = 0; t < len; ++t) {
          CAPTURE(t);
          CHECK(rel_err(out.logits.data() + size_t(t) * V, ref[t]) < 1e-4);
        }
      }
    }
    SUBCASE("prefill then decode with the paged cache equals full recomputation") {
      auto be = make(*w);
      int next = 0;
      auto toks = random_tokens(rng, 26, V);
      const int prompt = 7;
      auto blocks = blocks_for(next, 7, 256);
      auto ref = reference(m, toks);
      step_batch b;
      step_output out;
      b.reset(7);
      b.add(0, std::span(toks).first(prompt), blocks, true, {}, 0);
      REQUIRE(be->step(b, out, logits_mode::last).is_ok());
      CHECK(rel_err(out.logits.data(), ref[prompt - 1]) < 1e-4);
      for (int p = prompt; p < 26; ++p) {
        CAPTURE(p);
        b.reset(7);
        b.add(p, std::span(toks).subspan(size_t(p), 1), blocks, true, {}, 0);
        REQUIRE(be->step(b, out, logits_mode::last).is_ok());
        CHECK(rel_err(out.logits.data(), ref[size_t(p)]) < 1e-4);
        int best = 0;
        for (int k = 1; k < V; ++k)
          if (ref[size_t(p)][size_t(k)] > ref[size_t(p)][size_t(best)]) best = k;
        CHECK(out.tokens[0] == best);
      }
    }
    SUBCASE("a ragged batch gives each sequence what it gets alone") {
      struct seq { std::vector<int32_t> toks; int past; std::vector<int32_t> blocks; };
      std::vector<seq> seqs;
      int next = 0;
      for (int len : {12, 1, 19, 6}) {
        seq q;
        q.toks = random_tokens(rng, len, V);
        q.past = len > 10 ? len - 1 : 0;
        q.blocks = blocks_for(next, (len + 3) / 4, 256);
        seqs.push_back(q);
      }
      std::vector<std::vector<float>> alone;
      for (auto& q : seqs) {
        auto be = make(*w);
        step_batch b;
        step_output out;
        if (q.past > 0) {
          b.reset(8);
          b.add(0, std::span(q.toks).first(size_t(q.past)), q.blocks, false, {}, 0);
          REQUIRE(be->step(b, out).is_ok());
        }
        b.reset(8);
        b.add(q.past, std::span(q.toks).subspan(size_t(q.past)), q.blocks, true, {}, 0);
        REQUIRE(be->step(b, out, logits_mode::last).is_ok());
        alone.push_back(out.logits);
        CHECK(rel_err(out.logits.data(), reference(m, q.toks).back()) < 1e-4);
      }
      auto be = make(*w);
      step_batch b;
      step_output out;
      for (auto& q : seqs)
        if (q.past > 0) {
          b.reset(8);
          b.add(0, std::span(q.toks).first(size_t(q.past)), q.blocks, false, {}, 0);
          REQUIRE(be->step(b, out).is_ok());
        }
      b.reset(8);
      for (auto& q : seqs) b.add(q.past, std::span(q.toks).subspan(size_t(q.past)), q.blocks, true, {}, 0);
      REQUIRE(be->step(b, out, logits_mode::last).is_ok());
      REQUIRE(out.logits.size() == seqs.size() * size_t(V));
      for (size_t i = 0; i < seqs.size(); ++i) {
        double md = 0;
        for (int k = 0; k < V; ++k) md = std::max(md, double(std::abs(out.logits[i * V + k] - alone[i][size_t(k)])));
        CHECK(md < 1e-4);
      }
    }
  }
}

TEST_CASE("the reference is sensitive to every trait (a test that cannot fail would not be one)") {
  // Turning a trait off in the reference while the checkpoint keeps it must move the logits:
  // otherwise the comparison above would not be checking that trait.
  std::mt19937_64 rng(9);
  for (const spec& s : specs()) {
    CAPTURE(s.name);
    const hf_model m = random_hf(s, 7);
    auto toks = random_tokens(rng, 12, s.V);
    const auto base = reference(m, toks);
    auto differs = [&](spec changed) {
      hf_model m2 = m;
      m2.s = changed;
      const auto other = reference(m2, toks);
      double md = 0;
      for (size_t t = 0; t < base.size(); ++t)
        for (size_t k = 0; k < base[t].size(); ++k) md = std::max(md, std::abs(base[t][k] - other[t][k]));
      return md > 1e-3;
    };
    if (s.window > 0) { spec x = s; x.window = 0; CHECK(differs(x)); }
    if (s.interleaved) { spec x = s; x.interleaved = false; CHECK(differs(x)); }
    if (s.partial != 1.0) { spec x = s; x.partial = 1.0; CHECK(differs(x)); }
    if (s.rope != "default") { spec x = s; x.rope = "default"; CHECK(differs(x)); }
    if (s.post_norms) { spec x = s; x.post_norms = false; CHECK(differs(x)); }
    if (s.qk_norm) { spec x = s; x.qk_norm = false; CHECK(differs(x)); }
  }
}

TEST_CASE("the same checkpoint in bf16 on disk loads to the bf16-rounded weights") {
  temp_dir tmp;
  spec s = specs()[0];
  const hf_model m = random_hf(s, 3);
  write_dir(m, (tmp.path / "f32").string());
  write_dir(m, (tmp.path / "bf16").string(), st_dtype::bf16);
  auto a = load_model_weights((tmp.path / "f32").string());
  auto b = load_model_weights((tmp.path / "bf16").string());
  REQUIRE(a.has_value());
  REQUIRE(b.has_value());
  // Same logits up to bf16 weight rounding (~3 significant digits), and not identical.
  auto ba = make(*a), bb = make(*b);
  std::mt19937_64 rng(1);
  auto toks = random_tokens(rng, 9, s.V);
  step_batch st;
  st.reset(4);
  std::vector<int32_t> blocks{0, 1, 2};
  st.add(0, toks, blocks, false, {}, 0);
  step_output oa, ob;
  REQUIRE(ba->step(st, oa, logits_mode::all).is_ok());
  REQUIRE(bb->step(st, ob, logits_mode::all).is_ok());
  vec ref(oa.logits.begin(), oa.logits.end());
  const double e = rel_err(ob.logits.data(), ref);
  CHECK(e > 0);
  CHECK(e < 3e-2);
}

TEST_CASE("KV cache sized from n_layer * n_kv_head * head_dim; the context served is capped") {
  load_options lo;
  lo.max_model_len = 100;
  auto w = load_model_weights("synthetic:llama-tiny", lo);
  REQUIRE(w.has_value());
  const model_config& c = (*w)->cfg;
  CHECK(c.n_ctx == 100);
  CHECK(c.n_positions() == 2048);
  // 4 layers x (K, V) x 2 KV heads x 64 dims x 4 bytes = 4 KiB a token, 64 KiB a block of 16.
  CHECK(c.kv_bytes_per_token(4) == 4096);
  backend_options o;
  o.kv_block_size = 16;
  o.kv_memory_mb = 2;
  auto be = make_cpu_backend(*w, o);
  REQUIRE(be.has_value());
  CHECK((*be)->kv().n_blocks == 32);
  // Position 99 is served, 100 is past the capped context.
  std::vector<int32_t> blocks{0, 1, 2, 3, 4, 5, 6};
  std::vector<int32_t> one{65};
  step_batch b;
  step_output out;
  b.reset(7);
  b.add(99, one, blocks, true, {}, 0);
  CHECK((*be)->step(b, out).is_ok());
  b.reset(7);
  b.add(100, one, blocks, true, {}, 0);
  CHECK((*be)->step(b, out).code == errc::invalid_argument);
  // GPT-2: capping n_ctx leaves the learned position table whole.
  auto g = load_model_weights("synthetic:tiny", lo);
  REQUIRE(g.has_value());
  CHECK((*g)->cfg.n_ctx == 100);
  CHECK((*g)->cfg.n_positions() == 1024);
  CHECK((*g)->owned[1].size() == size_t(1024) * 128);
}
