// Loader tests: safetensors reader/writer, fp16/bf16 conversions, synthetic models,
// Hugging Face GPT-2 directories, and every malformed-input path we know of.
// Fixtures are written here with write_safetensors (no torch, no checked-in binaries).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "base/half.hpp"
#include "model/weights.hpp"
#include "base/safetensors.hpp"

using namespace infer;
namespace fs = std::filesystem;

namespace {

struct temp_dir {
  fs::path path;
  temp_dir() {
    std::string tmpl = (fs::temp_directory_path() / "infer-test-loader-XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string str(const std::string& rel = "") const { return rel.empty() ? path.string() : (path / rel).string(); }
};

std::string read_all(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_all(const std::string& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  REQUIRE(out.good());
}

// A safetensors file from a raw header string: lets tests say things the writer refuses to.
std::string raw_safetensors(const std::string& header, const std::string& data, uint64_t hlen_override = 0) {
  const uint64_t hlen = hlen_override ? hlen_override : header.size();
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char((hlen >> (8 * i)) & 0xff);
  return out + header + data;
}

model_config tiny_cfg() {
  model_config c;
  c.n_vocab = 16;
  c.n_ctx = 8;
  c.n_embd = 8;
  c.n_layer = 2;
  c.n_head = 2;
  c.ln_eps = 1e-5f;
  return c;
}

std::string config_json(const model_config& c, const std::string& drop = "") {
  std::vector<std::pair<std::string, std::string>> kv = {
      {"model_type", "\"gpt2\""},
      {"n_embd", std::to_string(c.n_embd)},
      {"n_layer", std::to_string(c.n_layer)},
      {"n_head", std::to_string(c.n_head)},
      {"n_positions", std::to_string(c.n_ctx)},
      {"n_ctx", std::to_string(c.n_ctx)},
      {"vocab_size", std::to_string(c.n_vocab)},
      {"layer_norm_epsilon", "1e-05"},
  };
  std::string s = "{";
  bool first = true;
  for (auto& [k, v] : kv) {
    if (k == drop) continue;
    if (drop == "n_positions" && k == "n_ctx") continue;  // both spellings gone
    s += fmt::format("{}\"{}\": {}", first ? "" : ", ", k, v);
    first = false;
  }
  return s + "}";
}

// The HF tensor list of a model, values taken from `w`, in `dtype`.
struct fixture_opts {
  st_dtype dtype = st_dtype::f32;
  std::string prefix;
  std::string skip;         // tensor (short name) to leave out
  std::string transpose;    // tensor (short name) to store with its shape reversed
  bool extras = true;       // attn.bias buffers and a tied lm_head.weight, which the loader ignores
};

std::vector<st_tensor_desc> hf_tensors(const model_weights& w, const fixture_opts& o) {
  const auto& c = w.cfg;
  const int64_t V = c.n_vocab, P = c.n_ctx, C = c.n_embd;
  std::vector<st_tensor_desc> out;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, const float* p) {
    if (name == o.skip) return;
    size_t n = 1;
    for (auto d : shape) n *= size_t(d);
    if (name == o.transpose) std::reverse(shape.begin(), shape.end());
    out.push_back({o.prefix + name, o.dtype, shape, std::vector<float>(p, p + n)});
  };
  add("wte.weight", {V, C}, w.wte);
  add("wpe.weight", {P, C}, w.wpe);
  std::vector<float> mask(size_t(P * P), 1.0f);
  for (int32_t i = 0; i < c.n_layer; ++i) {
    const auto& L = w.layers[size_t(i)];
    const std::string h = fmt::format("h.{}.", i);
    add(h + "ln_1.weight", {C}, L.ln1_w);
    add(h + "ln_1.bias", {C}, L.ln1_b);
    add(h + "attn.c_attn.weight", {C, 3 * C}, L.qkv_w);
    add(h + "attn.c_attn.bias", {3 * C}, L.qkv_b);
    add(h + "attn.c_proj.weight", {C, C}, L.proj_w);
    add(h + "attn.c_proj.bias", {C}, L.proj_b);
    add(h + "ln_2.weight", {C}, L.ln2_w);
    add(h + "ln_2.bias", {C}, L.ln2_b);
    add(h + "mlp.c_fc.weight", {C, 4 * C}, L.fc_w);
    add(h + "mlp.c_fc.bias", {4 * C}, L.fc_b);
    add(h + "mlp.c_proj.weight", {4 * C, C}, L.fcproj_w);
    add(h + "mlp.c_proj.bias", {C}, L.fcproj_b);
    if (o.extras) add(h + "attn.bias", {1, 1, P, P}, mask.data());
  }
  add("ln_f.weight", {C}, w.lnf_w);
  add("ln_f.bias", {C}, w.lnf_b);
  if (o.extras) out.push_back({"lm_head.weight", o.dtype, {V, C}, std::vector<float>(w.wte, w.wte + V * C)});
  return out;
}

std::shared_ptr<model_weights> reference_model(uint64_t seed = 7) {
  return make_synthetic_weights(tiny_cfg(), seed, "synthetic:test");
}

// Writes dir/config.json and dir/model.safetensors.
void write_model_dir(const std::string& dir, const model_weights& w, const fixture_opts& o,
                     const std::string& drop_key = "") {
  fs::create_directories(dir);
  write_all(dir + "/config.json", config_json(w.cfg, drop_key));
  auto s = write_safetensors(dir + "/model.safetensors", hf_tensors(w, o));
  REQUIRE_MESSAGE(s.is_ok(), s.message);
}

float round_trip(float x, st_dtype d) {
  if (d == st_dtype::f16) return half_to_float(float_to_half(x));
  if (d == st_dtype::bf16) return bf16_to_float(float_to_bf16(x));
  return x;
}

// Every tensor of `got` equals `want` after rounding through dtype.
void check_same(const model_weights& want, const model_weights& got, st_dtype d) {
  const auto& c = want.cfg;
  const size_t V = size_t(c.n_vocab), P = size_t(c.n_ctx), C = size_t(c.n_embd);
  auto cmp = [&](const char* what, const float* a, const float* b, size_t n) {
    REQUIRE_MESSAGE(b != nullptr, what);
    size_t bad = 0;
    for (size_t i = 0; i < n; ++i)
      if (f32_bits(round_trip(a[i], d)) != f32_bits(b[i])) ++bad;
    CHECK_MESSAGE(bad == 0, what << ": " << bad << " of " << n << " values differ");
  };
  CHECK(got.cfg.n_vocab == c.n_vocab);
  CHECK(got.cfg.n_ctx == c.n_ctx);
  CHECK(got.cfg.n_embd == c.n_embd);
  CHECK(got.cfg.n_layer == c.n_layer);
  CHECK(got.cfg.n_head == c.n_head);
  CHECK(got.cfg.ln_eps == doctest::Approx(1e-5));
  cmp("wte", want.wte, got.wte, V * C);
  cmp("wpe", want.wpe, got.wpe, P * C);
  REQUIRE(got.layers.size() == want.layers.size());
  for (size_t i = 0; i < want.layers.size(); ++i) {
    const auto &a = want.layers[i], &b = got.layers[i];
    cmp("ln1_w", a.ln1_w, b.ln1_w, C);
    cmp("ln1_b", a.ln1_b, b.ln1_b, C);
    cmp("qkv_w", a.qkv_w, b.qkv_w, C * 3 * C);
    cmp("qkv_b", a.qkv_b, b.qkv_b, 3 * C);
    cmp("proj_w", a.proj_w, b.proj_w, C * C);
    cmp("proj_b", a.proj_b, b.proj_b, C);
    cmp("ln2_w", a.ln2_w, b.ln2_w, C);
    cmp("ln2_b", a.ln2_b, b.ln2_b, C);
    cmp("fc_w", a.fc_w, b.fc_w, C * 4 * C);
    cmp("fc_b", a.fc_b, b.fc_b, 4 * C);
    cmp("fcproj_w", a.fcproj_w, b.fcproj_w, 4 * C * C);
    cmp("fcproj_b", a.fcproj_b, b.fcproj_b, C);
  }
  cmp("lnf_w", want.lnf_w, got.lnf_w, C);
  cmp("lnf_b", want.lnf_b, got.lnf_b, C);
}

bool contains(const std::string& hay, const std::string& needle) { return hay.find(needle) != std::string::npos; }

// The error of a failed load, with its code and message checked against the file and tensor it names.
void expect_error(const status& s, errc code, const std::string& file, const std::string& tensor = "") {
  INFO("message: " << s.message);
  CHECK(errc_name(s.code) == std::string(errc_name(code)));
  CHECK(contains(s.message, file));
  if (!tensor.empty()) CHECK(contains(s.message, "'" + tensor + "'"));
}

status load_error(const std::string& spec) {
  auto r = load_model_weights(spec);
  REQUIRE_FALSE(r.has_value());
  return r.error();
}

// Replaces the dtype of `tensor` in a writer-made file's header (same byte count).
void patch_dtype(const std::string& file, const std::string& tensor, const std::string& from, const std::string& to) {
  REQUIRE(from.size() == to.size());
  std::string bytes = read_all(file);
  size_t at = bytes.find("\"" + tensor + "\":");
  REQUIRE(at != std::string::npos);
  size_t dt = bytes.find("\"dtype\":\"" + from + "\"", at);
  REQUIRE(dt != std::string::npos);
  bytes.replace(dt + 9, from.size(), to);
  write_all(file, bytes);
}

}  // namespace

TEST_CASE("errc_name names every code") {
  CHECK(std::string(errc_name(errc::ok)) == "ok");
  CHECK(std::string(errc_name(errc::invalid_argument)) == "invalid_argument");
  CHECK(std::string(errc_name(errc::io_error)) == "io_error");
  CHECK(std::string(errc_name(errc::format_error)) == "format_error");
  CHECK(std::string(errc_name(errc::out_of_memory)) == "out_of_memory");
  CHECK(std::string(errc_name(errc::device_error)) == "device_error");
  CHECK(std::string(errc_name(errc::internal)) == "internal");
}

TEST_CASE("fp16 conversions round to nearest even and round-trip every half") {
  CHECK(float_to_half(0.0f) == 0x0000);
  CHECK(float_to_half(-0.0f) == 0x8000);
  CHECK(float_to_half(1.0f) == 0x3c00);
  CHECK(float_to_half(-2.0f) == 0xc000);
  CHECK(float_to_half(65504.0f) == 0x7bff);
  CHECK(float_to_half(65519.0f) == 0x7bff);
  CHECK(float_to_half(65520.0f) == 0x7c00);  // halfway to 2^16 ties up to inf
  CHECK(float_to_half(1e10f) == 0x7c00);
  CHECK(float_to_half(-std::numeric_limits<float>::infinity()) == 0xfc00);
  CHECK(std::isnan(half_to_float(float_to_half(std::numeric_limits<float>::quiet_NaN()))));
  CHECK(float_to_half(1.0f + 0x1p-11f) == 0x3c00);        // tie, even stays
  CHECK(float_to_half(1.0f + 3 * 0x1p-11f) == 0x3c02);    // tie, odd rounds up
  CHECK(float_to_half(1.0f + 0x1p-11f + 0x1p-20f) == 0x3c01);
  CHECK(float_to_half(0x1p-14f) == 0x0400);   // smallest normal
  CHECK(float_to_half(0x1p-24f) == 0x0001);   // smallest subnormal
  CHECK(float_to_half(0x1p-25f) == 0x0000);   // tie to even: zero
  CHECK(float_to_half(0x1.8p-25f) == 0x0001);
  CHECK(float_to_half(3 * 0x1p-25f) == 0x0002);  // 1.5 ulp ties to even 2
  CHECK(half_to_float(0x0001) == 0x1p-24f);
  CHECK(half_to_float(0x03ff) == 1023 * 0x1p-24f);
  CHECK(half_to_float(0x7bff) == 65504.0f);
  CHECK(std::isinf(half_to_float(0x7c00)));
  int mismatches = 0;
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const bool nan = (h & 0x7c00) == 0x7c00 && (h & 0x3ff);
    if (nan) {
      if (!std::isnan(half_to_float(uint16_t(h)))) ++mismatches;
      continue;
    }
    if (float_to_half(half_to_float(uint16_t(h))) != h) ++mismatches;
  }
  CHECK(mismatches == 0);
}

TEST_CASE("bf16 conversions round to nearest even") {
  CHECK(float_to_bf16(1.0f) == 0x3f80);
  CHECK(float_to_bf16(-1.0f) == 0xbf80);
  CHECK(float_to_bf16(f32_from_bits(0x3f808000u)) == 0x3f80);  // tie, even stays
  CHECK(float_to_bf16(f32_from_bits(0x3f818000u)) == 0x3f82);  // tie, odd rounds up
  CHECK(float_to_bf16(f32_from_bits(0x3f808001u)) == 0x3f81);
  CHECK(bf16_to_float(0x3f80) == 1.0f);
  CHECK(std::isnan(bf16_to_float(float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  CHECK(std::isinf(bf16_to_float(float_to_bf16(std::numeric_limits<float>::infinity()))));
  int mismatches = 0;
  for (uint32_t b = 0; b < 0x10000; ++b) {
    if ((b & 0x7f80) == 0x7f80 && (b & 0x7f)) continue;  // nan payloads
    if (float_to_bf16(bf16_to_float(uint16_t(b))) != b) ++mismatches;
  }
  CHECK(mismatches == 0);
}

TEST_CASE("safetensors writer and reader round-trip, with metadata and dtypes") {
  temp_dir tmp;
  const std::string p = tmp.str("a.safetensors");
  std::vector<st_tensor_desc> ts = {
      {"b", st_dtype::f16, {2, 3}, {0.5f, -1.25f, 3.0f, 1e-3f, 100.0f, -0.0f}},
      {"a", st_dtype::f32, {3}, {1.0f, 2.0f, 3.5f}},
      {"c", st_dtype::bf16, {1}, {3.14159f}},
      {"empty", st_dtype::f32, {0, 4}, {}},
  };
  REQUIRE(write_safetensors(p, ts, {{"format", "pt"}}).is_ok());
  auto f = safetensors_file::open(p);
  REQUIRE_MESSAGE(f.has_value(), f.error().message);
  CHECK(f->names() == std::vector<std::string>{"b", "a", "c", "empty"});  // data order
  CHECK(f->metadata().at("format") == "pt");
  CHECK(f->find("missing") == nullptr);
  for (const auto& d : ts) {
    const st_tensor_view* t = f->find(d.name);
    REQUIRE(t != nullptr);
    CHECK(t->dtype == d.dtype);
    CHECK(t->shape == d.shape);
    CHECK(t->nbytes == d.values.size() * st_dtype_size(d.dtype));
    std::vector<float> v(d.values.size());
    REQUIRE(st_to_f32(*t, v.data(), p).is_ok());
    for (size_t i = 0; i < v.size(); ++i) CHECK(v[i] == round_trip(d.values[i], d.dtype));
  }
  // Data starts 8-byte aligned in writer output, so F32 views can be used in place.
  CHECK(reinterpret_cast<uintptr_t>(f->find("a")->data) % 4 == 0);

  // The writer refuses what it cannot write faithfully.
  CHECK(write_safetensors(tmp.str("x.safetensors"), {{"i", st_dtype::i32, {1}, {1.0f}}}).code ==
        errc::invalid_argument);
  CHECK(write_safetensors(tmp.str("x.safetensors"), {{"n", st_dtype::f32, {2, 2}, {1.0f}}}).code ==
        errc::invalid_argument);
  CHECK(write_safetensors(tmp.str("x.safetensors"), {{"d", st_dtype::f32, {1}, {1.0f}},
                                                     {"d", st_dtype::f32, {1}, {1.0f}}})
            .code == errc::invalid_argument);
  CHECK(write_safetensors(tmp.str("no/such/dir/x.safetensors"), ts).code == errc::io_error);
}

TEST_CASE("synthetic configs") {
  auto tiny = synthetic_config("tiny");
  REQUIRE(tiny.has_value());
  CHECK(tiny->n_vocab == 256);
  CHECK(tiny->n_ctx == 1024);
  CHECK(tiny->n_embd == 128);
  CHECK(tiny->n_layer == 4);
  CHECK(tiny->n_head == 4);
  auto small = synthetic_config("gpt2-small");
  REQUIRE(small.has_value());
  CHECK(small->n_vocab == 50257);
  CHECK(small->n_ctx == 1024);
  CHECK(small->n_embd == 768);
  CHECK(small->n_layer == 12);
  CHECK(small->n_head == 12);
  CHECK(small->n_params() == 124439808);  // GPT-2 124M, tied head counted once
  auto bad = synthetic_config("huge");
  REQUIRE_FALSE(bad.has_value());
  CHECK(bad.error().code == errc::invalid_argument);
  CHECK(contains(bad.error().message, "huge"));
  CHECK(contains(bad.error().message, "tiny"));
  CHECK(contains(bad.error().message, "gpt2-small"));
  auto r = load_model_weights("synthetic:nope");
  REQUIRE_FALSE(r.has_value());
  CHECK(contains(r.error().message, "tiny"));
}

TEST_CASE("synthetic weights are deterministic, shaped, and GPT-2-like") {
  auto a = load_model_weights("synthetic:tiny", 42);
  auto b = load_model_weights("synthetic:tiny", 42);
  auto c = load_model_weights("synthetic:tiny", 43);
  REQUIRE(a.has_value());
  REQUIRE(b.has_value());
  REQUIRE(c.has_value());
  const model_weights& wa = **a;
  const model_weights& wb = **b;
  const model_weights& wc = **c;
  CHECK(wa.source == "synthetic:tiny");
  const size_t V = 256, P = 1024, C = 128;
  REQUIRE(wa.layers.size() == 4);
  // Every parameter lives in `owned`, exactly n_params() floats.
  size_t total = 0;
  for (const auto& v : wa.owned) total += v.size();
  CHECK(total == size_t(wa.cfg.n_params()));
  REQUIRE(wa.owned.size() == wb.owned.size());
  bool same = true, differs_everywhere = true;
  for (size_t i = 0; i < wa.owned.size(); ++i) {
    same = same && wa.owned[i].size() == wb.owned[i].size() &&
           std::memcmp(wa.owned[i].data(), wb.owned[i].data(), wa.owned[i].size() * 4) == 0;
    differs_everywhere = differs_everywhere &&
                         std::memcmp(wa.owned[i].data(), wc.owned[i].data(), wa.owned[i].size() * 4) != 0;
  }
  CHECK(same);
  CHECK(differs_everywhere);

  auto stats = [](const float* p, size_t n) {
    double s = 0, s2 = 0;
    for (size_t i = 0; i < n; ++i) {
      s += p[i];
      s2 += double(p[i]) * p[i];
    }
    const double mean = s / double(n);
    return std::pair<double, double>{mean, std::sqrt(s2 / double(n) - mean * mean)};
  };
  auto [wte_m, wte_s] = stats(wa.wte, V * C);
  CHECK(std::abs(wte_m) < 0.001);
  CHECK(wte_s == doctest::Approx(0.02).epsilon(0.03));
  CHECK(stats(wa.wpe, P * C).second == doctest::Approx(0.01).epsilon(0.03));
  CHECK(stats(wa.layers[0].qkv_w, C * 3 * C).second == doctest::Approx(0.02).epsilon(0.03));
  CHECK(stats(wa.layers[1].fc_w, C * 4 * C).second == doctest::Approx(0.02).epsilon(0.03));
  const double proj_std = 0.02 / std::sqrt(8.0);
  CHECK(stats(wa.layers[2].proj_w, C * C).second == doctest::Approx(proj_std).epsilon(0.05));
  CHECK(stats(wa.layers[3].fcproj_w, 4 * C * C).second == doctest::Approx(proj_std).epsilon(0.05));
  auto [ln_m, ln_s] = stats(wa.layers[0].ln1_w, C);
  CHECK(ln_m == doctest::Approx(1.0).epsilon(0.01));
  CHECK(ln_s > 0.005);
  CHECK(stats(wa.lnf_w, C).first == doctest::Approx(1.0).epsilon(0.01));
  // Biases are non-zero so that tests exercise them.
  for (const auto& L : wa.layers) {
    CHECK(stats(L.qkv_b, 3 * C).second > 0.005);
    CHECK(stats(L.fcproj_b, C).second > 0.005);
    CHECK(stats(L.ln2_b, C).second > 0.005);
  }
  // Distinct tensors get distinct streams.
  CHECK(std::memcmp(wa.layers[0].qkv_w, wa.layers[1].qkv_w, C * 3 * C * 4) != 0);
  CHECK(std::memcmp(wa.layers[0].ln1_b, wa.layers[0].ln2_b, C * 4) != 0);
}

TEST_CASE("synthetic weights are pinned: same values on every platform and thread count") {
  // splitmix64 + Box-Muller, no std distributions: these values are part of the
  // contract (cross-backend tests and benchmarks rebuild models from a seed).
  // The tolerance only admits last-ulp differences between libm implementations.
  auto t = load_model_weights("synthetic:tiny", 1234);
  REQUIRE(t.has_value());
  const model_weights& w = **t;
  auto near = [](float got, double want) { return std::abs(double(got) - want) <= 1e-7 * std::max(1.0, std::abs(want)); };
  CHECK(near(w.wte[0], -0.00523218233));
  CHECK(near(w.wte[1], 0.0296049602));
  CHECK(near(w.wte[2], -0.02900788));
  CHECK(near(w.wte[3], -0.0113213779));
  CHECK(near(w.wte[32767], -0.00100260251));
  CHECK(near(w.wpe[65535], 0.0135147925));  // last of the first 64Ki chunk
  CHECK(near(w.wpe[65536], 0.00653743232)); // first of the second
  CHECK(near(w.layers[3].fc_b[5], -0.016953405));
  CHECK(near(w.lnf_w[127], 0.999468386));
  // A tensor's values depend on its place in the model, not on the model's size:
  // the 2-layer test model and synthetic:tiny share wte's stream.
  auto small = make_synthetic_weights(tiny_cfg(), 1234, "synthetic:pin");
  CHECK(std::memcmp(small->wte, w.wte, 8 * 4) == 0);
}

TEST_CASE("Hugging Face GPT-2 directories load in F32, F16 and BF16, with and without prefix") {
  temp_dir tmp;
  auto ref = reference_model();
  for (st_dtype d : {st_dtype::f32, st_dtype::f16, st_dtype::bf16}) {
    for (std::string prefix : {"", "transformer."}) {
      CAPTURE(st_dtype_name(d));
      CAPTURE(prefix);
      fixture_opts o;
      o.dtype = d;
      o.prefix = prefix;
      const std::string dir = tmp.str(fmt::format("m-{}-{}", st_dtype_name(d), prefix.empty() ? "bare" : "pfx"));
      write_model_dir(dir, *ref, o);
      auto r = load_model_weights(dir + "/");
      REQUIRE_MESSAGE(r.has_value(), r.error().message);
      const model_weights& w = **r;
      CHECK(w.source == dir);
      check_same(*ref, w, d);
      if (d == st_dtype::f32) {
        CHECK(w.mapping != nullptr);  // zero-copy: pointers into the mapping
        CHECK(w.owned.empty());
      } else {
        CHECK(w.mapping == nullptr);  // everything converted; file unmapped
        CHECK(w.owned.size() == 4 + 12 * 2);
      }
    }
  }
}

TEST_CASE("F32 tensors at unaligned offsets are copied, not read misaligned") {
  temp_dir tmp;
  auto ref = reference_model();
  const std::string dir = tmp.str("unaligned");
  write_model_dir(dir, *ref, {});
  // Rebuild the file with a header one byte longer: every tensor moves off 4-byte alignment.
  const std::string p = dir + "/model.safetensors";
  std::string bytes = read_all(p);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | uint8_t(bytes[size_t(i)]);
  std::string header = bytes.substr(8, hlen);
  while (!header.empty() && header.back() == ' ') header.pop_back();
  if (header.size() % 4 == 0) header += ' ';
  write_all(p, raw_safetensors(header, bytes.substr(8 + hlen)));
  auto r = load_model_weights(dir);
  REQUIRE_MESSAGE(r.has_value(), r.error().message);
  check_same(*ref, **r, st_dtype::f32);
  CHECK(reinterpret_cast<uintptr_t>((*r)->wte) % 4 == 0);
  CHECK_FALSE((*r)->owned.empty());
}

TEST_CASE("model directory errors name the file and the tensor") {
  temp_dir tmp;
  auto ref = reference_model();

  SUBCASE("not synthetic and not a directory") {
    const auto s = load_error(tmp.str("nope"));
    expect_error(s, errc::io_error, tmp.str("nope"));
  }
  SUBCASE("missing config.json") {
    const std::string dir = tmp.str("noconfig");
    fs::create_directories(dir);
    expect_error(load_error(dir), errc::io_error, dir + "/config.json");
  }
  SUBCASE("missing model.safetensors") {
    const std::string dir = tmp.str("noweights");
    write_model_dir(dir, *ref, {});
    fs::remove(dir + "/model.safetensors");
    expect_error(load_error(dir), errc::io_error, dir + "/model.safetensors");
    write_all(dir + "/pytorch_model.bin", "x");
    const auto s = load_error(dir);
    expect_error(s, errc::io_error, dir + "/model.safetensors");
    CHECK(contains(s.message, "pytorch_model.bin"));
  }
  SUBCASE("config.json errors") {
    const std::string dir = tmp.str("cfg");
    write_model_dir(dir, *ref, {});
    const std::string cj = dir + "/config.json";
    for (const char* key : {"n_embd", "n_layer", "n_head", "vocab_size"}) {
      CAPTURE(key);
      write_all(cj, config_json(ref->cfg, key));
      expect_error(load_error(dir), errc::format_error, cj, key);
    }
    write_all(cj, config_json(ref->cfg, "n_positions"));
    expect_error(load_error(dir), errc::format_error, cj, "n_positions");
    // n_ctx alone is accepted (older configs).
    write_all(cj, R"({"n_embd": 8, "n_layer": 2, "n_head": 2, "n_ctx": 8, "vocab_size": 16})");
    CHECK(load_model_weights(dir).has_value());
    write_all(cj, R"({"n_embd": 8, "n_layer": 2, "n_head": 3, "n_positions": 8, "vocab_size": 16})");
    expect_error(load_error(dir), errc::format_error, cj);
    CHECK(contains(load_error(dir).message, "multiple of n_head"));
    write_all(cj, R"({"n_embd": 8, "n_layer": 0, "n_head": 2, "n_positions": 8, "vocab_size": 16})");
    expect_error(load_error(dir), errc::format_error, cj, "n_layer");
    write_all(cj, R"({"n_embd": "8", "n_layer": 2, "n_head": 2, "n_positions": 8, "vocab_size": 16})");
    expect_error(load_error(dir), errc::format_error, cj, "n_embd");
    write_all(cj, R"({"n_embd": 8, "n_layer": 2, "n_head": 2, "n_positions": 8, "vocab_size": 16,
                      "layer_norm_epsilon": -1})");
    expect_error(load_error(dir), errc::format_error, cj, "layer_norm_epsilon");
    // Options that change the math are refused, defaults accepted.
    const std::string base = R"({"n_embd": 8, "n_layer": 2, "n_head": 2, "n_positions": 8, "vocab_size": 16, )";
    for (const char* bad : {R"("model_type": "gptj")", R"("activation_function": "relu")", R"("n_inner": 64)",
                            R"("scale_attn_by_inverse_layer_idx": true)", R"("reorder_and_upcast_attn": true)",
                            R"("scale_attn_weights": false)", R"("tie_word_embeddings": false)"}) {
      CAPTURE(bad);
      write_all(cj, base + bad + "}");
      const auto s = load_error(dir);
      expect_error(s, errc::format_error, cj);
      CHECK(contains(s.message, "not supported"));
    }
    write_all(cj, base + R"("model_type": "gpt2", "activation_function": "gelu_new", "n_inner": null,
                             "scale_attn_by_inverse_layer_idx": false, "reorder_and_upcast_attn": false,
                             "scale_attn_weights": true, "tie_word_embeddings": true})");
    CHECK(load_model_weights(dir).has_value());
    write_all(cj, base + R"("n_inner": 32})");
    CHECK(load_model_weights(dir).has_value());
    write_all(cj, "{\"n_embd\": 8,");
    expect_error(load_error(dir), errc::format_error, cj);
    // A deeply nested value is named by its type: printing it whole would recurse per level.
    {
      const std::string deep = std::string(100000, '[') + std::string(100000, ']');
      write_all(cj, R"({"n_embd": 8, "n_layer": 2, "n_head": 2, "n_positions": 8, "vocab_size": 16, "n_inner": )" +
                        deep + "}");
      const auto d = load_error(dir);
      expect_error(d, errc::format_error, cj, "n_inner");
      CHECK(contains(d.message, "= array is not supported"));
      write_all(cj, R"({"n_embd": )" + deep + R"(, "n_layer": 2, "n_head": 2, "n_positions": 8, "vocab_size": 16})");
      const auto e = load_error(dir);
      expect_error(e, errc::format_error, cj, "n_embd");
      CHECK(contains(e.message, "got array"));
    }
    // A config that disagrees with the tensors is a shape error, not a crash.
    write_all(cj, R"({"n_embd": 8, "n_layer": 3, "n_head": 2, "n_positions": 8, "vocab_size": 16})");
    expect_error(load_error(dir), errc::format_error, dir + "/model.safetensors", "h.2.ln_1.weight");
    write_all(cj, R"({"n_embd": 8, "n_layer": 2147483647, "n_head": 2, "n_positions": 8, "vocab_size": 16})");
    expect_error(load_error(dir), errc::format_error, dir + "/model.safetensors", "h.2.ln_1.weight");
    write_all(cj, R"({"n_embd": 8, "n_layer": 2, "n_head": 2, "n_positions": 8, "vocab_size": 17})");
    const auto s = load_error(dir);
    expect_error(s, errc::format_error, dir + "/model.safetensors", "wte.weight");
    CHECK(contains(s.message, "[16, 8]"));
    CHECK(contains(s.message, "[17, 8]"));
  }
  SUBCASE("missing tensor") {
    for (std::string prefix : {"", "transformer."}) {
      const std::string dir = tmp.str("missing" + prefix);
      fixture_opts o;
      o.prefix = prefix;
      o.skip = "h.1.mlp.c_fc.bias";
      write_model_dir(dir, *ref, o);
      expect_error(load_error(dir), errc::format_error, dir + "/model.safetensors",
                   prefix + "h.1.mlp.c_fc.bias");
    }
  }
  SUBCASE("wrong shape: expected vs actual") {
    const std::string dir = tmp.str("shape");
    fixture_opts o;
    o.transpose = "h.0.attn.c_attn.weight";
    write_model_dir(dir, *ref, o);
    const auto s = load_error(dir);
    expect_error(s, errc::format_error, dir + "/model.safetensors", "h.0.attn.c_attn.weight");
    CHECK(contains(s.message, "[24, 8]"));  // actual
    CHECK(contains(s.message, "[8, 24]"));  // expected
  }
  SUBCASE("truncated data") {
    const std::string dir = tmp.str("trunc");
    fixture_opts o;
    o.extras = false;  // ln_f.bias is the last tensor in the file
    write_model_dir(dir, *ref, o);
    const std::string p = dir + "/model.safetensors";
    const std::string bytes = read_all(p);
    write_all(p, bytes.substr(0, bytes.size() - 5));
    const auto s = load_error(dir);
    expect_error(s, errc::format_error, p, "ln_f.bias");
    CHECK(contains(s.message, "truncated"));
  }
  SUBCASE("header length larger than the file") {
    const std::string dir = tmp.str("hlen");
    write_model_dir(dir, *ref, {});
    const std::string p = dir + "/model.safetensors";
    std::string bytes = read_all(p);
    const uint64_t big = bytes.size() + 1;
    for (int i = 0; i < 8; ++i) bytes[size_t(i)] = char((big >> (8 * i)) & 0xff);
    write_all(p, bytes);
    const auto s = load_error(dir);
    expect_error(s, errc::format_error, p);
    CHECK(contains(s.message, "header length"));
    write_all(p, "\x05\x00\x00");  // shorter than the length field itself
    expect_error(load_error(dir), errc::format_error, p);
  }
  SUBCASE("non-JSON header") {
    const std::string dir = tmp.str("json");
    write_model_dir(dir, *ref, {});
    const std::string p = dir + "/model.safetensors";
    std::string bytes = read_all(p);
    bytes[8] = 'x';  // '{' -> 'x'
    write_all(p, bytes);
    const auto s = load_error(dir);
    expect_error(s, errc::format_error, p);
    CHECK(contains(s.message, "JSON"));
  }
  SUBCASE("unsupported dtype") {
    const std::string dir = tmp.str("dtype");
    fixture_opts o;
    o.prefix = "transformer.";
    write_model_dir(dir, *ref, o);
    const std::string p = dir + "/model.safetensors";
    patch_dtype(p, "transformer.h.1.ln_2.weight", "F32", "I32");  // same element size: offsets stay valid
    const auto s = load_error(dir);
    expect_error(s, errc::format_error, p, "transformer.h.1.ln_2.weight");
    CHECK(contains(s.message, "unsupported dtype I32"));
    // An unsupported dtype on a tensor the loader ignores is fine.
    write_model_dir(dir, *ref, o);
    patch_dtype(p, "transformer.h.0.attn.bias", "F32", "I32");
    auto r = load_model_weights(dir);
    CHECK_MESSAGE(r.has_value(), r.error().message);
  }
}

TEST_CASE("safetensors_file rejects malformed files with the file and tensor named") {
  temp_dir tmp;
  const std::string p = tmp.str("bad.safetensors");
  const std::string data16(16, '\0');
  auto open_err = [&](const std::string& header, const std::string& data) {
    write_all(p, raw_safetensors(header, data));
    auto f = safetensors_file::open(p);
    REQUIRE_FALSE(f.has_value());
    return f.error();
  };

  SUBCASE("missing file") {
    auto f = safetensors_file::open(tmp.str("absent.safetensors"));
    REQUIRE_FALSE(f.has_value());
    expect_error(f.error(), errc::io_error, tmp.str("absent.safetensors"));
  }
  SUBCASE("offsets out of range") {
    const auto s = open_err(R"({"w":{"dtype":"F32","shape":[250],"data_offsets":[0,1000]}})", data16);
    expect_error(s, errc::format_error, p, "w");
    CHECK(contains(s.message, "[0, 1000]"));
  }
  SUBCASE("offsets that disagree with shape * dtype size") {
    const auto s = open_err(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}})", data16);
    expect_error(s, errc::format_error, p, "w");
    CHECK(contains(s.message, "needs 16"));
    expect_error(open_err(R"({"w":{"dtype":"F16","shape":[4],"data_offsets":[8,4]}})", data16),
                 errc::format_error, p, "w");
    expect_error(open_err(R"({"w":{"dtype":"F16","shape":[-4],"data_offsets":[0,8]}})", data16),
                 errc::format_error, p, "w");
    expect_error(open_err(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
                          data16),
                 errc::format_error, p, "w");
    expect_error(open_err(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", data16),
                 errc::format_error, p, "w");
    expect_error(open_err(R"({"w":{"dtype":"F32","data_offsets":[0,8]}})", data16), errc::format_error, p, "w");
    expect_error(open_err(R"({"w":[1,2]})", data16), errc::format_error, p, "w");
  }
  SUBCASE("overlapping tensors") {
    const auto s = open_err(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
                            R"("z":{"dtype":"F32","shape":[1],"data_offsets":[12,16]},)"
                            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                            data16);
    expect_error(s, errc::format_error, p);
    CHECK(contains(s.message, "overlap"));
    CHECK(contains(s.message, "'b'"));
    // An empty tensor between them does not hide an overlap.
    const auto s2 = open_err(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                             R"("e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},)"
                             R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                             data16);
    CHECK(contains(s2.message, "overlap"));
  }
  SUBCASE("unknown dtype") {
    const auto s = open_err(R"({"w":{"dtype":"Q4_K","shape":[4],"data_offsets":[0,16]}})", data16);
    expect_error(s, errc::format_error, p, "w");
    CHECK(contains(s.message, "Q4_K"));
  }
  SUBCASE("unsupported but known dtype: indexed, refused on read") {
    write_all(p, raw_safetensors(R"({"ids":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}})", data16));
    auto f = safetensors_file::open(p);
    REQUIRE_MESSAGE(f.has_value(), f.error().message);
    const st_tensor_view* t = f->find("ids");
    REQUIRE(t != nullptr);
    float out[2];
    const auto s = st_to_f32(*t, out, p);
    expect_error(s, errc::format_error, p, "ids");
    CHECK(contains(s.message, "unsupported dtype I64"));
  }
  SUBCASE("bad header shapes") {
    expect_error(open_err("[1, 2, 3]", data16), errc::format_error, p);
    expect_error(open_err(R"({"__metadata__": 3})", data16), errc::format_error, p);
    expect_error(open_err("{", data16), errc::format_error, p);
    write_all(p, raw_safetensors("{}", "", /*hlen_override=*/uint64_t(1) << 62));
    expect_error(safetensors_file::open(p).error(), errc::format_error, p);
  }
  SUBCASE("files laid out like the reference (Rust) writer's") {
    // Compact JSON, __metadata__ anywhere, tensors ordered by alignment then name,
    // header padded with spaces: the reader must not rely on our writer's choices.
    std::string header =
        R"({"__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
        R"("a":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]},"c":{"dtype":"F16","shape":[1,1],"data_offsets":[12,14]}})";
    header.append((8 - header.size() % 8) % 8, ' ');
    std::string data(14, '\0');
    const float b[2] = {1.5f, -2.0f};
    std::memcpy(data.data(), b, 8);
    const uint16_t a[2] = {0x3f80, 0xc040}, c = 0x3c00;  // 1, -3 (bf16); 1 (fp16)
    std::memcpy(data.data() + 8, a, 4);
    std::memcpy(data.data() + 12, &c, 2);
    write_all(p, raw_safetensors(header, data));
    auto f = safetensors_file::open(p);
    REQUIRE_MESSAGE(f.has_value(), f.error().message);
    CHECK(f->names() == std::vector<std::string>{"b", "a", "c"});
    CHECK(f->metadata().at("format") == "pt");
    float out[2];
    REQUIRE(st_to_f32(*f->find("a"), out, p).is_ok());
    CHECK(out[0] == 1.0f);
    CHECK(out[1] == -3.0f);
    REQUIRE(st_to_f32(*f->find("b"), out, p).is_ok());
    CHECK(out[1] == -2.0f);
    REQUIRE(st_to_f32(*f->find("c"), out, p).is_ok());
    CHECK(out[0] == 1.0f);
    CHECK(f->find("c")->shape == std::vector<int64_t>{1, 1});
  }
  SUBCASE("an empty header is a valid, empty file") {
    write_all(p, raw_safetensors("{}      ", ""));
    auto f = safetensors_file::open(p);
    REQUIRE_MESSAGE(f.has_value(), f.error().message);
    CHECK(f->names().empty());
  }
}

TEST_CASE("corrupted and truncated files give errors, never crashes") {
  // Every prefix of a valid model file, and files with header bytes overwritten
  // at deterministic pseudo-random places, either load or fail with a status;
  // whatever opens has every tensor readable within the mapping.
  temp_dir tmp;
  auto ref = reference_model();
  const std::string dir = tmp.str("fuzz");
  fixture_opts o;
  o.dtype = st_dtype::f16;
  write_model_dir(dir, *ref, o);
  const std::string p = dir + "/model.safetensors";
  const std::string good = read_all(p);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | uint8_t(good[size_t(i)]);

  int loaded = 0, failed = 0;
  auto try_load = [&](const std::string& bytes) {
    write_all(p, bytes);
    auto f = safetensors_file::open(p);
    if (f) {
      for (const auto& t : f->tensors()) {
        if (!st_dtype_supported(t.dtype)) continue;
        std::vector<float> v(size_t(t.numel()));
        CHECK(st_to_f32(t, v.data(), p).is_ok());
      }
    }
    auto r = load_model_weights(dir);
    if (r) {
      ++loaded;
    } else {
      ++failed;
      CHECK(r.error().code != errc::ok);
      CHECK(contains(r.error().message, p));
    }
  };
  for (size_t n = 0; n < good.size(); n += 41) try_load(good.substr(0, n));
  CHECK(loaded == 0);  // every strict prefix is missing data

  uint64_t x = 99;
  auto next = [&x] {
    x += 0x9e3779b97f4a7c15ull;
    uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  };
  const char alphabet[] = "0123456789[]{},:\" -eE.FBI";
  for (int iter = 0; iter < 200; ++iter) {
    std::string bytes = good;
    const int edits = 1 + int(next() % 3);
    for (int e = 0; e < edits; ++e) {
      const size_t at = 8 + size_t(next() % hlen);
      bytes[at] = alphabet[next() % (sizeof(alphabet) - 1)];
    }
    try_load(bytes);
  }
  CHECK(failed > 0);
  try_load(good);
  CHECK(loaded > 0);
}
