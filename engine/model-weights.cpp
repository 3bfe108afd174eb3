// model_weights: seeded synthetic GPT-2 models and the Hugging Face directory loader.
#include "engine/model-weights.hpp"

#include <cmath>
#include <cstring>

#include <fmt/format.h>

namespace infer {

namespace {

// splitmix64 + Box-Muller: the same bytes for a seed on every standard library
// (std::normal_distribution's algorithm is implementation-defined).
struct synth_rng {
  uint64_t state;
  uint64_t next_u64() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in (0, 1]: never 0, so log() is finite.
  double next_unit() { return double((next_u64() >> 11) + 1) * 0x1.0p-53; }
};

uint64_t mix_seed(uint64_t seed, uint64_t stream) {
  synth_rng r{seed ^ (stream * 0xd1b54a32d192ed03ull)};
  return r.next_u64();
}

// Fills v with mean + stddev * N(0,1). Each tensor has its own stream, so a
// tensor's values do not depend on which tensors were generated before it.
void fill_normal(std::vector<float>& v, uint64_t seed, uint64_t stream, float mean, float stddev) {
  synth_rng r{mix_seed(seed, stream)};
  constexpr double two_pi = 6.283185307179586476925286766559;
  size_t i = 0;
  const size_t n = v.size();
  while (i < n) {
    const double u1 = r.next_unit(), u2 = r.next_unit();
    const double rad = std::sqrt(-2.0 * std::log(u1));
    v[i++] = float(mean + stddev * rad * std::cos(two_pi * u2));
    if (i < n) v[i++] = float(mean + stddev * rad * std::sin(two_pi * u2));
  }
}

struct known_synthetic {
  const char* name;
  model_config cfg;
};

const known_synthetic k_synthetic[] = {
    {"tiny", model_config{256, 1024, 128, 4, 4, 1e-5f}},
    {"gpt2-small", model_config{50257, 1024, 768, 12, 12, 1e-5f}},
};

}  // namespace

result<model_config> synthetic_config(const std::string& name) {
  std::string known;
  for (const auto& k : k_synthetic) {
    if (name == k.name) return k.cfg;
    if (!known.empty()) known += ", ";
    known += k.name;
  }
  return make_status(errc::invalid_argument,
                     fmt::format("unknown synthetic model '{}' (known: {})", name, known));
}

std::shared_ptr<model_weights> make_synthetic_weights(const model_config& cfg, uint64_t seed,
                                                      const std::string& source) {
  auto w = std::make_shared<model_weights>();
  w->cfg = cfg;
  w->source = source;
  const size_t V = size_t(cfg.n_vocab), P = size_t(cfg.n_ctx), C = size_t(cfg.n_embd);
  const float proj_std = 0.02f / std::sqrt(2.0f * float(cfg.n_layer > 0 ? cfg.n_layer : 1));
  w->owned.reserve(4 + 12 * size_t(cfg.n_layer));
  uint64_t stream = 0;
  auto make = [&](size_t n, float mean, float stddev) -> const float* {
    auto& v = w->owned.emplace_back(n);
    fill_normal(v, seed, stream++, mean, stddev);
    return v.data();
  };
  w->wte = make(V * C, 0.0f, 0.02f);
  w->wpe = make(P * C, 0.0f, 0.01f);
  w->layers.resize(size_t(cfg.n_layer));
  for (auto& L : w->layers) {
    L.ln1_w = make(C, 1.0f, 0.02f);
    L.ln1_b = make(C, 0.0f, 0.02f);
    L.qkv_w = make(C * 3 * C, 0.0f, 0.02f);
    L.qkv_b = make(3 * C, 0.0f, 0.02f);
    L.proj_w = make(C * C, 0.0f, proj_std);
    L.proj_b = make(C, 0.0f, 0.02f);
    L.ln2_w = make(C, 1.0f, 0.02f);
    L.ln2_b = make(C, 0.0f, 0.02f);
    L.fc_w = make(C * 4 * C, 0.0f, 0.02f);
    L.fc_b = make(4 * C, 0.0f, 0.02f);
    L.fcproj_w = make(4 * C * C, 0.0f, proj_std);
    L.fcproj_b = make(C, 0.0f, 0.02f);
  }
  w->lnf_w = make(C, 1.0f, 0.02f);
  w->lnf_b = make(C, 0.0f, 0.02f);
  return w;
}

result<std::shared_ptr<const model_weights>> load_model_weights(const std::string& spec,
                                                                uint64_t seed) {
  static constexpr std::string_view k_prefix = "synthetic:";
  if (spec.rfind(k_prefix, 0) == 0) {
    auto cfg = synthetic_config(spec.substr(k_prefix.size()));
    if (!cfg) return cfg.error();
    return std::shared_ptr<const model_weights>(make_synthetic_weights(*cfg, seed, spec));
  }
  // Directory loading (config.json + model.safetensors) lands with the safetensors reader.
  return make_status(errc::invalid_argument,
                     fmt::format("model '{}': only synthetic:NAME is supported so far", spec));
}

}  // namespace infer
