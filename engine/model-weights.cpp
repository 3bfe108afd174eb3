// model_weights: seeded synthetic GPT-2 models and the Hugging Face directory loader.
#include "engine/model-weights.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <new>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "engine/safetensors.hpp"

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

// Values come in chunks of k_chunk, each from its own stream keyed by (seed,
// tensor, chunk): a tensor does not depend on which tensors were generated
// before it, and chunks can be filled by any number of threads with the same bytes.
constexpr size_t k_chunk = size_t(1) << 16;  // even: Box-Muller pairs never straddle chunks

void fill_normal_chunk(float* out, size_t n, uint64_t seed, uint64_t tensor, uint64_t chunk,
                       float mean, float stddev) {
  synth_rng r{mix_seed(mix_seed(seed, tensor), chunk)};
  constexpr double two_pi = 6.283185307179586476925286766559;
  size_t i = 0;
  while (i < n) {
    const double u1 = r.next_unit(), u2 = r.next_unit();
    const double rad = std::sqrt(-2.0 * std::log(u1));
    out[i++] = float(mean + stddev * rad * std::cos(two_pi * u2));
    if (i < n) out[i++] = float(mean + stddev * rad * std::sin(two_pi * u2));
  }
}

struct fill_job {
  float* data;
  size_t n;
  uint64_t tensor;
  float mean, stddev;
};

void run_fill_jobs(const std::vector<fill_job>& jobs, uint64_t seed) {
  struct piece { size_t job; uint64_t chunk; };
  std::vector<piece> pieces;
  for (size_t j = 0; j < jobs.size(); ++j)
    for (uint64_t c = 0; c * k_chunk < jobs[j].n; ++c) pieces.push_back({j, c});
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < pieces.size();) {
      const fill_job& j = jobs[pieces[i].job];
      const size_t off = size_t(pieces[i].chunk) * k_chunk;
      fill_normal_chunk(j.data + off, std::min(k_chunk, j.n - off), seed, j.tensor, pieces[i].chunk,
                        j.mean, j.stddev);
    }
  };
  // Threads pay off from a few chunks on (gpt2-small: ~124M values, seconds on one core).
  size_t n_threads = pieces.size() >= 16 ? std::min<size_t>(8, std::thread::hardware_concurrency()) : 1;
  std::vector<std::thread> threads;
  for (size_t t = 1; t < n_threads; ++t) threads.emplace_back(worker);
  worker();
  for (auto& t : threads) t.join();
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
  std::vector<fill_job> jobs;
  auto make = [&](size_t n, float mean, float stddev) -> const float* {
    auto& v = w->owned.emplace_back(n);
    jobs.push_back({v.data(), n, uint64_t(jobs.size()), mean, stddev});
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
  run_fill_jobs(jobs, seed);
  return w;
}

namespace {

result<nlohmann::json> read_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return make_status(errc::io_error, fmt::format("{}: cannot open: {}", path, std::strerror(errno)));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return make_status(errc::io_error, fmt::format("{}: read failed", path));
  auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return make_status(errc::format_error, fmt::format("{}: not valid JSON", path));
  if (!j.is_object()) return make_status(errc::format_error, fmt::format("{}: not a JSON object", path));
  return j;
}

// A config.json value for an error message: scalars as JSON, arrays and objects by their type
// (dump() recurses once per nesting level: a hostile [[[[...]]]] would overflow the stack).
std::string json_value_brief(const nlohmann::json& j) {
  return j.is_structured() ? std::string(j.type_name()) : j.dump();
}

// Hugging Face GPT2Config keys -> model_config, validated.
result<model_config> parse_hf_config(const nlohmann::json& j, const std::string& path) {
  model_config cfg;
  auto get_int = [&](std::initializer_list<const char*> keys, int32_t& out) -> status {
    for (const char* k : keys) {
      auto it = j.find(k);
      if (it == j.end()) continue;
      if (!it->is_number_integer() || it->get<int64_t>() <= 0 || it->get<int64_t>() > INT32_MAX)
        return make_status(errc::format_error,
                           fmt::format("{}: key '{}' must be a positive integer, got {}", path, k, json_value_brief(*it)));
      out = int32_t(it->get<int64_t>());
      return status::ok();
    }
    std::string alt;
    for (auto k = keys.begin() + 1; k != keys.end(); ++k) alt += fmt::format(" (or '{}')", *k);
    return make_status(errc::format_error,
                       fmt::format("{}: missing key '{}'{}", path, *keys.begin(), alt));
  };
  for (auto s : {get_int({"n_embd"}, cfg.n_embd), get_int({"n_layer"}, cfg.n_layer),
                 get_int({"n_head"}, cfg.n_head), get_int({"n_positions", "n_ctx"}, cfg.n_ctx),
                 get_int({"vocab_size"}, cfg.n_vocab)}) {
    if (!s) return s;
  }
  if (auto it = j.find("layer_norm_epsilon"); it != j.end()) {
    if (!it->is_number() || !(it->get<double>() > 0.0) || !(it->get<double>() < 1.0))
      return make_status(errc::format_error,
                         fmt::format("{}: key 'layer_norm_epsilon' must be a number in (0, 1), got {}",
                                     path, json_value_brief(*it)));
    cfg.ln_eps = float(it->get<double>());
  }  // absent: GPT2Config's default, 1e-5
  // GPT2Config options that change the math the backends implement: refuse rather
  // than serve a silently different model.
  auto unsupported = [&](const char* key, const nlohmann::json& v) {
    return make_status(errc::format_error,
                       fmt::format("{}: key '{}' = {} is not supported (GPT-2 defaults only)", path, key, json_value_brief(v)));
  };
  if (auto it = j.find("model_type"); it != j.end() && *it != "gpt2") return unsupported("model_type", *it);
  if (auto it = j.find("activation_function");
      it != j.end() && *it != "gelu_new" && *it != "gelu_pytorch_tanh" && *it != "gelu_fast")
    return unsupported("activation_function", *it);
  if (auto it = j.find("n_inner"); it != j.end() && !it->is_null() &&
                                   !(it->is_number_integer() && it->get<int64_t>() == 4 * int64_t(cfg.n_embd)))
    return unsupported("n_inner", *it);
  for (const char* key : {"scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"})
    if (auto it = j.find(key); it != j.end() && *it != false) return unsupported(key, *it);
  for (const char* key : {"scale_attn_weights", "tie_word_embeddings"})
    if (auto it = j.find(key); it != j.end() && *it != true) return unsupported(key, *it);
  if (cfg.n_embd % cfg.n_head != 0)
    return make_status(errc::format_error,
                       fmt::format("{}: n_embd {} is not a multiple of n_head {}", path, cfg.n_embd, cfg.n_head));
  return cfg;
}

bool is_directory(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool exists(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0;
}

result<std::shared_ptr<const model_weights>> load_hf_dir(const std::string& dir) {
  const std::string config_path = dir + "/config.json";
  const std::string st_path = dir + "/model.safetensors";

  auto cj = read_json_file(config_path);
  if (!cj) return cj.error();
  auto cfg = parse_hf_config(*cj, config_path);
  if (!cfg) return cfg.error();

  if (!exists(st_path) && exists(dir + "/pytorch_model.bin"))
    return make_status(errc::io_error,
                       fmt::format("{}: missing (only pytorch_model.bin is present; re-save the model with "
                                   "safe_serialization=True)", st_path));
  auto file = safetensors_file::open(st_path);
  if (!file) return file.error();

  auto w = std::make_shared<model_weights>();
  w->cfg = *cfg;
  w->source = dir;
  // GPT2LMHeadModel.save_pretrained prefixes the body with "transformer."; GPT2Model does not.
  const std::string prefix = file->find("transformer.wte.weight") ? "transformer." : "";
  const int64_t V = cfg->n_vocab, P = cfg->n_ctx, C = cfg->n_embd;
  bool uses_mapping = false;

  status err;
  auto get = [&](const std::string& short_name, std::vector<int64_t> shape) -> const float* {
    if (!err) return nullptr;
    const std::string name = prefix + short_name;
    const st_tensor_view* t = file->find(name);
    if (!t) {
      err = make_status(errc::format_error, fmt::format("{}: missing tensor '{}'", st_path, name));
      return nullptr;
    }
    if (t->shape != shape) {
      err = make_status(errc::format_error,
                        fmt::format("{}: tensor '{}': shape {} does not match the config, expected {}",
                                    st_path, name, st_shape_str(t->shape), st_shape_str(shape)));
      return nullptr;
    }
    if (t->dtype == st_dtype::f32 && reinterpret_cast<uintptr_t>(t->data) % alignof(float) == 0) {
      uses_mapping = true;
      return static_cast<const float*>(t->data);
    }
    auto& v = w->owned.emplace_back(size_t(t->numel()));
    if (auto s = st_to_f32(*t, v.data(), st_path); !s) {
      err = s;
      return nullptr;
    }
    return v.data();
  };

  w->wte = get("wte.weight", {V, C});
  w->wpe = get("wpe.weight", {P, C});
  // Grown layer by layer: a config claiming absurdly many layers ends at the first
  // missing tensor instead of allocating for all of them.
  for (int32_t i = 0; i < cfg->n_layer && err.is_ok(); ++i) {
    auto& L = w->layers.emplace_back();
    const std::string h = fmt::format("h.{}.", i);
    L.ln1_w = get(h + "ln_1.weight", {C});
    L.ln1_b = get(h + "ln_1.bias", {C});
    L.qkv_w = get(h + "attn.c_attn.weight", {C, 3 * C});
    L.qkv_b = get(h + "attn.c_attn.bias", {3 * C});
    L.proj_w = get(h + "attn.c_proj.weight", {C, C});
    L.proj_b = get(h + "attn.c_proj.bias", {C});
    L.ln2_w = get(h + "ln_2.weight", {C});
    L.ln2_b = get(h + "ln_2.bias", {C});
    L.fc_w = get(h + "mlp.c_fc.weight", {C, 4 * C});
    L.fc_b = get(h + "mlp.c_fc.bias", {4 * C});
    L.fcproj_w = get(h + "mlp.c_proj.weight", {4 * C, C});
    L.fcproj_b = get(h + "mlp.c_proj.bias", {C});
  }
  w->lnf_w = get("ln_f.weight", {C});
  w->lnf_b = get("ln_f.bias", {C});
  if (!err) return err;
  // All-converted checkpoints (F16/BF16) drop the mapping: no need to keep the file mapped.
  if (uses_mapping) w->mapping = file->mapping();
  return std::shared_ptr<const model_weights>(std::move(w));
}

}  // namespace

result<std::shared_ptr<const model_weights>> load_model_weights(const std::string& spec,
                                                                uint64_t seed) {
  static constexpr std::string_view k_prefix = "synthetic:";
  if (spec.rfind(k_prefix, 0) == 0) {
    auto cfg = synthetic_config(spec.substr(k_prefix.size()));
    if (!cfg) return cfg.error();
    try {
      return std::shared_ptr<const model_weights>(make_synthetic_weights(*cfg, seed, spec));
    } catch (const std::bad_alloc&) {
      return make_status(errc::out_of_memory,
                         fmt::format("{}: not enough host memory for {} parameters", spec, cfg->n_params()));
    }
  }
  if (spec.empty())
    return make_status(errc::invalid_argument, "empty model spec (want synthetic:NAME or a directory)");
  std::string dir = spec;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  if (!is_directory(dir))
    return make_status(errc::io_error,
                       fmt::format("{}: not a directory (want a Hugging Face GPT-2 directory with config.json "
                                   "and model.safetensors, or synthetic:NAME)", spec));
  try {
    return load_hf_dir(dir);
  } catch (const std::bad_alloc&) {
    return make_status(errc::out_of_memory,
                       fmt::format("{}: not enough host memory to convert the weights to fp32", dir));
  }
}

}  // namespace infer
