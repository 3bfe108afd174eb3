// Seeded synthetic models, the Hugging Face directory loader (single file or sharded), and
// the host memory check, all walking the tensor table of model/tensors.cpp.
#include "model/weights.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <new>
#include <optional>
#include <thread>
#include <unordered_map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "model/hf-config.hpp"

namespace infer {

// ---- roles <-> fields --------------------------------------------------------------------

namespace {

using layer_field = const float* layer_weights::*;
layer_field layer_member(tensor_role r) {
  using R = tensor_role;
  switch (r) {
    case R::attn_norm_w: return &layer_weights::ln1_w;
    case R::attn_norm_b: return &layer_weights::ln1_b;
    case R::qkv_w: return &layer_weights::qkv_w;
    case R::qkv_b: return &layer_weights::qkv_b;
    case R::q_norm_w: return &layer_weights::q_norm_w;
    case R::k_norm_w: return &layer_weights::k_norm_w;
    case R::attn_out_w: return &layer_weights::proj_w;
    case R::attn_out_b: return &layer_weights::proj_b;
    case R::post_attn_norm_w: return &layer_weights::post_attn_norm_w;
    case R::ffn_norm_w: return &layer_weights::ln2_w;
    case R::ffn_norm_b: return &layer_weights::ln2_b;
    case R::ffn_up_w: return &layer_weights::fc_w;
    case R::ffn_up_b: return &layer_weights::fc_b;
    case R::ffn_down_w: return &layer_weights::fcproj_w;
    case R::ffn_down_b: return &layer_weights::fcproj_b;
    case R::post_ffn_norm_w: return &layer_weights::post_ffn_norm_w;
    default: return nullptr;
  }
}

using model_field = const float* model_weights::*;
model_field model_member(tensor_role r) {
  using R = tensor_role;
  switch (r) {
    case R::tok_embd: return &model_weights::wte;
    case R::pos_embd: return &model_weights::wpe;
    case R::out_norm_w: return &model_weights::lnf_w;
    case R::out_norm_b: return &model_weights::lnf_b;
    case R::lm_head: return &model_weights::lm_head;
    default: return nullptr;
  }
}

int64_t numel(const std::vector<int64_t>& s) {
  if (s.empty()) return 0;
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

// Elements per row of a role array (1 for vectors).
int64_t row_elems(const std::vector<int64_t>& s) {
  int64_t n = 1;
  for (size_t i = 1; i < s.size(); ++i) n *= s[i];
  return n;
}

}  // namespace

const float* model_weights::get(tensor_role r, int layer) const {
  if (role_is_layer(r)) {
    if (layer < 0 || size_t(layer) >= layers.size()) return nullptr;
    auto m = layer_member(r);
    return m ? layers[size_t(layer)].*m : nullptr;
  }
  auto m = model_member(r);
  return m ? this->*m : nullptr;
}

void model_weights::set(tensor_role r, int layer, const float* p) {
  if (role_is_layer(r)) {
    if (auto m = layer_member(r); m && layer >= 0 && size_t(layer) < layers.size()) layers[size_t(layer)].*m = p;
    return;
  }
  if (auto m = model_member(r)) this->*m = p;
}

// ---- synthetic ----------------------------------------------------------------------------

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

// Values come in chunks of k_chunk, each from its own stream keyed by (seed, tensor index
// in the table, chunk): a tensor does not depend on which tensors were generated before it,
// and chunks can be filled by any number of threads with the same bytes.
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

// The config.json each synthetic model stands for: parse_hf_config makes the config, so a
// synthetic model is exactly what its real checkpoint's config gives.
struct known_synthetic {
  const char* name;
  const char* config_json;
};

const known_synthetic k_synthetic[] = {
    {"tiny", R"({"model_type": "gpt2", "vocab_size": 256, "n_positions": 1024, "n_embd": 128, "n_layer": 4,
                 "n_head": 4})"},
    {"gpt2-small", R"({"model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024, "n_embd": 768,
                       "n_layer": 12, "n_head": 12})"},
    // CI's Llama: GQA (4 query heads per KV head pair), untied head, head_dim 64 (the CUDA
    // kernels' size), byte vocabulary padded to 320 ids.
    {"llama-tiny", R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 320, "hidden_size": 256,
                       "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 4,
                       "num_key_value_heads": 2, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
                       "rope_theta": 10000.0, "tie_word_embeddings": false, "hidden_act": "silu",
                       "torch_dtype": "bfloat16"})"},
    {"llama3.2-1b", R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "hidden_size": 2048,
                        "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
                        "num_key_value_heads": 8, "head_dim": 64, "max_position_embeddings": 131072,
                        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": true,
                        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
                        "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu",
                        "torch_dtype": "bfloat16"})"},
    {"llama3.1-8b", R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "hidden_size": 4096,
                        "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                        "num_key_value_heads": 8, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
                        "rope_theta": 500000.0, "tie_word_embeddings": false,
                        "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
                        "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
                        "torch_dtype": "bfloat16"})"},
    {"qwen2.5-0.5b", R"({"architectures": ["Qwen2ForCausalLM"], "vocab_size": 151936, "hidden_size": 896,
                         "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
                         "num_key_value_heads": 2, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
                         "rope_theta": 1000000.0, "tie_word_embeddings": true, "sliding_window": 32768,
                         "use_sliding_window": false, "bos_token_id": 151643, "eos_token_id": 151643,
                         "hidden_act": "silu", "torch_dtype": "bfloat16"})"},
    {"qwen3-0.6b", R"({"architectures": ["Qwen3ForCausalLM"], "vocab_size": 151936, "hidden_size": 1024,
                       "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16,
                       "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 40960,
                       "rms_norm_eps": 1e-6, "rope_theta": 1000000, "tie_word_embeddings": true,
                       "attention_bias": false, "sliding_window": null, "use_sliding_window": false,
                       "bos_token_id": 151643, "eos_token_id": 151645, "hidden_act": "silu",
                       "torch_dtype": "bfloat16"})"},
    {"glm4-9b", R"({"architectures": ["Glm4ForCausalLM"], "vocab_size": 151552, "hidden_size": 4096,
                    "intermediate_size": 13696, "num_hidden_layers": 40, "num_attention_heads": 32,
                    "num_key_value_heads": 2, "head_dim": 128, "max_position_embeddings": 32768,
                    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                    "attention_bias": true, "tie_word_embeddings": false, "hidden_act": "silu",
                    "eos_token_id": [151329, 151336, 151338], "torch_dtype": "bfloat16"})"},
    {"phi3-mini", R"({"architectures": ["Phi3ForCausalLM"], "vocab_size": 32064, "hidden_size": 3072,
                      "intermediate_size": 8192, "num_hidden_layers": 32, "num_attention_heads": 32,
                      "num_key_value_heads": 32, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
                      "rope_theta": 10000.0, "rope_scaling": null, "sliding_window": 2047,
                      "tie_word_embeddings": false, "bos_token_id": 1, "eos_token_id": 32000, "hidden_act": "silu",
                      "torch_dtype": "bfloat16"})"},
};

}  // namespace

std::string synthetic_names() {
  std::string s;
  for (const auto& k : k_synthetic) s += fmt::format("{}{}", s.empty() ? "" : ", ", k.name);
  return s;
}

result<model_config> synthetic_config(const std::string& name) {
  for (const auto& k : k_synthetic)
    if (name == k.name)
      return parse_hf_config(nlohmann::json::parse(k.config_json), fmt::format("synthetic:{}", name));
  return make_status(errc::invalid_argument,
                     fmt::format("unknown synthetic model '{}' (known: {})", name, synthetic_names()));
}

std::shared_ptr<model_weights> make_synthetic_weights(const model_config& cfg, uint64_t seed,
                                                      const std::string& source) {
  auto w = std::make_shared<model_weights>();
  w->cfg = cfg;
  w->source = source;
  w->layers.resize(size_t(cfg.n_layer));
  const auto table = tensor_table(cfg);
  std::vector<fill_job> jobs;
  jobs.reserve(table.size());
  // One owned array per role and layer, allocated when the first of its tensors comes.
  std::vector<float*> base(size_t(k_n_roles) * (size_t(cfg.n_layer) + 1), nullptr);
  for (size_t i = 0; i < table.size(); ++i) {
    const tensor_spec& s = table[i];
    const auto shape = role_shape(cfg, s.role);
    float*& b = base[size_t(int(s.role)) * (size_t(cfg.n_layer) + 1) + size_t(s.layer + 1)];
    if (!b) {
      b = w->owned.emplace_back(size_t(numel(shape))).data();
      w->set(s.role, s.layer, b);
    }
    jobs.push_back({b + s.row_offset * row_elems(shape), size_t(numel(s.shape)), uint64_t(i), s.init_mean,
                    s.init_std});
  }
  run_fill_jobs(jobs, seed);
  return w;
}

status visit_synthetic(const model_config& cfg, uint64_t seed,
                       const std::function<status(const tensor_spec&, std::span<const float>)>& fn) {
  const auto table = tensor_table(cfg);
  std::vector<float> buf;
  for (size_t i = 0; i < table.size(); ++i) {
    const tensor_spec& s = table[i];
    buf.resize(size_t(numel(s.shape)));
    run_fill_jobs({{buf.data(), buf.size(), uint64_t(i), s.init_mean, s.init_std}}, seed);
    if (auto st = fn(s, std::span<const float>(buf)); !st) return st;
  }
  return status::ok();
}

// ---- Hugging Face directories ---------------------------------------------------------------

namespace {

bool is_directory(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool exists(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0;
}

result<nlohmann::json> read_json(const std::string& path) {
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

}  // namespace

result<checkpoint> open_checkpoint(const std::string& dir_in, int32_t max_model_len) {
  std::string dir = dir_in;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  checkpoint ck;
  ck.dir = dir;
  auto cfg = read_hf_config(dir + "/config.json");
  if (!cfg) return cfg.error();
  ck.cfg = *cfg;
  serve_context(ck.cfg, max_model_len);

  const std::string single = dir + "/model.safetensors";
  const std::string index_path = dir + "/model.safetensors.index.json";
  // name -> shard index; for a single file, every name lives in shard 0.
  std::unordered_map<std::string, int32_t> where;
  std::optional<safetensors_file> single_file;
  if (exists(index_path)) {
    auto ij = read_json(index_path);
    if (!ij) return ij.error();
    auto wm = ij->find("weight_map");
    if (wm == ij->end() || !wm->is_object())
      return make_status(errc::format_error, fmt::format("{}: missing object 'weight_map'", index_path));
    // Shards are visited in file-name order (model-00001-of-N first), as they were written.
    std::map<std::string, int32_t> shard_ids;
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      if (!it.value().is_string())
        return make_status(errc::format_error,
                           fmt::format("{}: weight_map['{}'] must be a file name", index_path, it.key()));
      const std::string file = it.value().get<std::string>();
      if (file.empty() || file.find('/') != std::string::npos || file == "." || file == "..")
        return make_status(errc::format_error,
                           fmt::format("{}: weight_map['{}'] = \"{}\" is not a file in the directory", index_path,
                                       it.key(), file));
      shard_ids.emplace(file, 0);
    }
    for (auto& [file, id] : shard_ids) {
      id = int32_t(ck.shards.size());
      ck.shards.push_back(dir + "/" + file);
    }
    for (auto it = wm->begin(); it != wm->end(); ++it) where[it.key()] = shard_ids.at(it.value().get<std::string>());
  } else if (exists(single)) {
    auto f = safetensors_file::open(single);
    if (!f) return f.error();
    ck.shards.push_back(single);
    for (const auto& t : f->tensors()) where[t.name] = 0;
    single_file.emplace(std::move(*f));
  } else if (exists(dir + "/pytorch_model.bin") || exists(dir + "/pytorch_model.bin.index.json")) {
    return make_status(errc::io_error,
                       fmt::format("{}: missing (only pytorch_model.bin is present; re-save the model with "
                                   "safe_serialization=True)", single));
  } else {
    return make_status(errc::io_error,
                       fmt::format("{}: missing (and no model.safetensors.index.json for a sharded checkpoint)",
                                   single));
  }
  // GPT2LMHeadModel.save_pretrained prefixes the body with "transformer."; GPT2Model does not.
  if (ck.cfg.arch == arch_id::gpt2 && where.count("transformer.wte.weight")) ck.prefix = "transformer.";
  const std::string& listed_in = single_file ? single : index_path;
  // Walked part by part: a config claiming absurdly many layers ends at the first missing
  // tensor instead of building a table for all of them.
  for (int64_t k = -1; k <= int64_t(ck.cfg.n_layer); ++k) {
    const int32_t part = k == ck.cfg.n_layer ? -2 : int32_t(k);
    const size_t from = ck.table.size();
    tensor_table_part(ck.cfg, ck.prefix, part, ck.table);
    for (size_t i = from; i < ck.table.size(); ++i) {
      const tensor_spec& s = ck.table[i];
      auto it = where.find(s.hf_name);
      if (it == where.end())
        return make_status(errc::format_error, fmt::format("{}: missing tensor '{}'", listed_in, s.hf_name));
      ck.shard_of.push_back(it->second);
      if (single_file) {  // shapes are known now: report a mismatch before anything is read
        const st_tensor_view* t = single_file->find(s.hf_name);
        if (t->shape != s.shape)
          return make_status(errc::format_error,
                             fmt::format("{}: tensor '{}': shape {} does not match the config, expected {}", single,
                                         s.hf_name, st_shape_str(t->shape), st_shape_str(s.shape)));
      }
    }
  }
  for (size_t s = 0; s < ck.shards.size(); ++s) {
    if (exists(ck.shards[s])) continue;
    for (size_t i = 0; i < ck.table.size(); ++i)
      if (ck.shard_of[i] == int32_t(s))
        return make_status(errc::io_error, fmt::format("{}: missing shard (listed in {} for tensor '{}')",
                                                       ck.shards[s], index_path, ck.table[i].hf_name));
  }
  return ck;
}

status checkpoint::visit(const std::function<status(const tensor_spec&, const st_tensor_view&,
                                                    const safetensors_file& shard)>& fn) const {
  for (size_t s = 0; s < shards.size(); ++s) {
    bool used = false;
    for (int32_t x : shard_of) used = used || x == int32_t(s);
    if (!used) continue;
    auto f = safetensors_file::open(shards[s]);
    if (!f) return f.error();
    for (size_t i = 0; i < table.size(); ++i) {
      if (shard_of[i] != int32_t(s)) continue;
      const tensor_spec& spec = table[i];
      const st_tensor_view* t = f->find(spec.hf_name);
      if (!t)
        return make_status(errc::format_error, fmt::format("{}: missing tensor '{}'", shards[s], spec.hf_name));
      if (t->shape != spec.shape)
        return make_status(errc::format_error,
                           fmt::format("{}: tensor '{}': shape {} does not match the config, expected {}", shards[s],
                                       spec.hf_name, st_shape_str(t->shape), st_shape_str(spec.shape)));
      if (!st_dtype_supported(t->dtype))
        return make_status(errc::format_error, fmt::format("{}: tensor '{}': unsupported dtype {}", shards[s],
                                                           spec.hf_name, st_dtype_name(t->dtype)));
      if (auto st = fn(spec, *t, *f); !st) return st;
    }
  }
  return status::ok();
}

// ---- host memory ----------------------------------------------------------------------------

int64_t host_memory_available() {
  int64_t avail = -1;
  if (std::ifstream in("/proc/meminfo"); in) {
    std::string key;
    int64_t kb = 0;
    std::string unit;
    while (in >> key >> kb >> unit)
      if (key == "MemAvailable:") {
        avail = kb * 1024;
        break;
      }
  }
  // A cgroup v2 limit (containers) binds before the machine's memory does.
  std::ifstream mx("/sys/fs/cgroup/memory.max"), cur("/sys/fs/cgroup/memory.current");
  std::string m;
  int64_t used = 0;
  if (mx >> m && m != "max" && cur >> used) {
    const int64_t left = std::max<int64_t>(0, std::stoll(m) - used);
    avail = avail < 0 ? left : std::min(avail, left);
  }
  return avail < 0 ? INT64_MAX : avail;
}

namespace {

status check_host_memory(const std::string& what, int64_t need, int64_t limit) {
  const int64_t have = limit > 0 ? limit : host_memory_available();
  if (need <= have) return status::ok();
  return make_status(errc::out_of_memory,
                     fmt::format("{}: the weights, held in host memory as fp32, need {} bytes ({:.1f} GiB); "
                                 "{} bytes ({:.1f} GiB) are available",
                                 what, need, double(need) / double(1 << 30), have, double(have) / double(1 << 30)));
}

result<std::shared_ptr<const model_weights>> load_hf_dir(const std::string& dir, const load_options& o) {
  auto ck = open_checkpoint(dir, o.max_model_len);
  if (!ck) return ck.error();
  const model_config& cfg = ck->cfg;
  if (auto s = check_host_memory(ck->dir, cfg.n_params() * int64_t(sizeof(float)), o.host_memory_limit); !s)
    return s;
  auto w = std::make_shared<model_weights>();
  w->cfg = cfg;
  w->source = ck->dir;
  w->layers.resize(size_t(cfg.n_layer));
  std::vector<float*> owned_base(size_t(k_n_roles) * (size_t(cfg.n_layer) + 1), nullptr);
  auto st = ck->visit([&](const tensor_spec& s, const st_tensor_view& t, const safetensors_file& f) -> status {
    const auto shape = role_shape(cfg, s.role);
    const bool whole = s.row_offset == 0 && numel(s.shape) == numel(shape);
    // fp32 tensors that fill their role alone are used in place (zero copy, page cache):
    // their shard stays mapped.
    if (whole && t.dtype == st_dtype::f32 && reinterpret_cast<uintptr_t>(t.data) % alignof(float) == 0) {
      w->set(s.role, s.layer, static_cast<const float*>(t.data));
      if (w->mappings.empty() || w->mappings.back() != f.mapping()) w->mappings.push_back(f.mapping());
      return status::ok();
    }
    float*& b = owned_base[size_t(int(s.role)) * (size_t(cfg.n_layer) + 1) + size_t(s.layer + 1)];
    if (!b) {
      b = w->owned.emplace_back(size_t(numel(shape))).data();
      w->set(s.role, s.layer, b);
    }
    return st_to_f32(t, b + s.row_offset * row_elems(shape), f.path());
  });
  if (!st) return st;
  if (!w->mappings.empty()) w->mapping = w->mappings.front();
  return std::shared_ptr<const model_weights>(std::move(w));
}

}  // namespace

result<model_config> load_model_config(const std::string& spec, int32_t max_model_len) {
  static constexpr std::string_view k_prefix = "synthetic:";
  if (spec.rfind(k_prefix, 0) == 0) {
    auto c = synthetic_config(spec.substr(k_prefix.size()));
    if (c) serve_context(*c, max_model_len);
    return c;
  }
  std::string dir = spec;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  auto c = read_hf_config(dir + "/config.json");
  if (c) serve_context(*c, max_model_len);
  return c;
}

result<std::shared_ptr<const model_weights>> load_model_weights(const std::string& spec,
                                                                const load_options& o) {
  static constexpr std::string_view k_prefix = "synthetic:";
  if (spec.rfind(k_prefix, 0) == 0) {
    auto cfg = synthetic_config(spec.substr(k_prefix.size()));
    if (!cfg) return cfg.error();
    serve_context(*cfg, o.max_model_len);
    if (auto s = check_host_memory(spec, cfg->n_params() * int64_t(sizeof(float)), o.host_memory_limit); !s)
      return s;
    try {
      return std::shared_ptr<const model_weights>(make_synthetic_weights(*cfg, o.seed, spec));
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
                       fmt::format("{}: not a directory (want a Hugging Face model directory with config.json "
                                   "and model.safetensors, or synthetic:NAME)", spec));
  try {
    return load_hf_dir(dir, o);
  } catch (const std::bad_alloc&) {
    return make_status(errc::out_of_memory,
                       fmt::format("{}: not enough host memory to convert the weights to fp32", dir));
  }
}

result<std::shared_ptr<const model_weights>> load_model_weights(const std::string& spec, uint64_t seed) {
  load_options o;
  o.seed = seed;
  return load_model_weights(spec, o);
}

}  // namespace infer
