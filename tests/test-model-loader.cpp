// The model layer's config.json parser, tensor tables, synthetic models and the Hugging Face
// loader for the Llama family: sharded checkpoints, dtypes on disk, and every error naming
// its file and tensor. (GPT-2 directories: tests/test-loader.cpp.)
#include <doctest/doctest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/half.hpp"
#include "base/safetensors.hpp"
#include "model/arch.hpp"
#include "model/hf-config.hpp"
#include "model/rope.hpp"
#include "model/weights.hpp"

using namespace infer;
namespace fs = std::filesystem;

namespace {

struct temp_dir {
  fs::path path;
  temp_dir() {
    std::string tmpl = (fs::temp_directory_path() / "infer-test-mloader-XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string str(const std::string& rel) const { return (path / rel).string(); }
};

bool contains(const std::string& hay, const std::string& needle) { return hay.find(needle) != std::string::npos; }

result<model_config> parse(const std::string& text) {
  return parse_hf_config(nlohmann::json::parse(text), "/m/config.json");
}

const char* k_llama_cfg = R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 40, "hidden_size": 16,
  "intermediate_size": 24, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
  "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false,
  "torch_dtype": "bfloat16"})";

// Writes `cfg_json` and the synthetic tensors of its model (visit_synthetic) into dir, split
// into `n_shards` files with an index when n_shards > 1.
void write_checkpoint(const std::string& dir, const std::string& cfg_json, uint64_t seed, int n_shards,
                      st_dtype dtype = st_dtype::f32, const std::string& skip = "") {
  fs::create_directories(dir);
  std::ofstream(dir + "/config.json") << cfg_json;
  auto cfg = read_hf_config(dir + "/config.json");
  REQUIRE_MESSAGE(cfg.has_value(), cfg.error().message);
  std::vector<std::vector<st_tensor_desc>> shards(static_cast<size_t>(n_shards));
  size_t i = 0;
  const auto table = tensor_table(*cfg);
  REQUIRE(visit_synthetic(*cfg, seed, [&](const tensor_spec& s, std::span<const float> v) {
            if (s.hf_name != skip)
              shards[i * size_t(n_shards) / table.size()].push_back(
                  {s.hf_name, dtype, s.shape, std::vector<float>(v.begin(), v.end())});
            ++i;
            return status::ok();
          }).is_ok());
  if (n_shards == 1) {
    REQUIRE(write_safetensors(dir + "/model.safetensors", shards[0]).is_ok());
    return;
  }
  nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", nlohmann::json::object()}};
  for (int s = 0; s < n_shards; ++s) {
    const std::string name = fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, n_shards);
    REQUIRE(write_safetensors(dir + "/" + name, shards[size_t(s)]).is_ok());
    for (const auto& t : shards[size_t(s)]) index["weight_map"][t.name] = name;
  }
  if (!skip.empty()) index["weight_map"][skip] = fmt::format("model-{:05d}-of-{:05d}.safetensors", 1, n_shards);
  std::ofstream(dir + "/model.safetensors.index.json") << index.dump(1);
}

// Every role array of a equals b's (after rounding through dtype).
void check_same(const model_weights& want, const model_weights& got, st_dtype d = st_dtype::f32) {
  const auto& c = want.cfg;
  for (int r = 0; r < k_n_roles; ++r) {
    const auto role = tensor_role(r);
    const auto shape = role_shape(c, role);
    size_t n = shape.empty() ? 0 : 1;
    for (auto x : shape) n *= size_t(x);
    for (int l = role_is_layer(role) ? 0 : -1; l < (role_is_layer(role) ? c.n_layer : 0); ++l) {
      CAPTURE(role_name(role));
      CAPTURE(l);
      const float* a = want.get(role, l);
      const float* b = got.get(role, l);
      REQUIRE((a == nullptr) == (n == 0));
      REQUIRE((b == nullptr) == (n == 0));
      size_t bad = 0;
      for (size_t i = 0; i < n; ++i) {
        float x = a[i];
        if (d == st_dtype::bf16) x = bf16_to_float(float_to_bf16(x));
        if (d == st_dtype::f16) x = half_to_float(float_to_half(x));
        bad += f32_bits(x) != f32_bits(b[i]);
      }
      CHECK(bad == 0);
    }
  }
}

}  // namespace

TEST_CASE("config.json: the Llama family's keys, defaults and both RoPE layouts") {
  auto c = parse(k_llama_cfg);
  REQUIRE_MESSAGE(c.has_value(), c.error().message);
  CHECK(c->arch == arch_id::llama);
  CHECK(c->norm == norm_kind::rmsnorm);
  CHECK(c->pos == pos_kind::rope_neox);
  CHECK(c->glu);
  CHECK(c->linear_out_in);
  CHECK(c->n_vocab == 40);
  CHECK(c->n_embd == 16);
  CHECK(c->n_ff == 24);
  CHECK(c->n_layer == 3);
  CHECK(c->n_head == 4);
  CHECK(c->kv_heads() == 2);
  CHECK(c->head_dim() == 4);
  CHECK(c->rot_dim() == 4);
  CHECK(c->n_ctx == 64);
  CHECK(c->n_positions() == 64);
  CHECK_FALSE(c->tied_head);
  CHECK_FALSE(c->qkv_bias);
  CHECK(c->torch_dtype == "bfloat16");
  CHECK(c->rope.type == rope_type::default_);
  CHECK(c->kv_bytes_per_token(2) == 3 * 2 * 8 * 2);

  // null num_key_value_heads / head_dim: the defaults; eos as a list; model_type alone.
  auto d = parse(R"({"model_type": "mistral", "vocab_size": 8, "hidden_size": 16, "intermediate_size": 8,
    "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": null, "head_dim": null,
    "eos_token_id": [3, 5], "bos_token_id": 1, "sliding_window": 4})");
  REQUIRE_MESSAGE(d.has_value(), d.error().message);
  CHECK(d->arch == arch_id::mistral);
  CHECK(d->kv_heads() == 2);
  CHECK(d->head_dim() == 8);
  CHECK(d->eos_token_ids == std::vector<int32_t>{3, 5});
  CHECK(d->bos_token_ids == std::vector<int32_t>{1});
  CHECK(d->sliding_window == 4);
  CHECK(d->n_ctx == 4096 * 32);  // MistralConfig's default max_position_embeddings

  // llama3 scaling in the legacy layout and in rope_parameters give the same frequencies.
  const std::string base = R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 8, "hidden_size": 64,
    "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1, )";
  auto legacy = parse(base + R"("rope_theta": 500000, "rope_scaling": {"rope_type": "llama3", "factor": 32,
    "low_freq_factor": 1, "high_freq_factor": 4, "original_max_position_embeddings": 8192}})");
  auto fresh = parse(base + R"("rope_parameters": {"rope_theta": 500000, "rope_type": "llama3", "factor": 32,
    "low_freq_factor": 1, "high_freq_factor": 4, "original_max_position_embeddings": 8192}})");
  REQUIRE_MESSAGE(legacy.has_value(), legacy.error().message);
  REQUIRE_MESSAGE(fresh.has_value(), fresh.error().message);
  CHECK(legacy->rope.type == rope_type::llama3);
  CHECK(fresh->rope.theta == 500000.0);
  const auto fl = rope_inv_freq(*legacy), ff = rope_inv_freq(*fresh);
  CHECK(fl == ff);
  // Meta's reference values at head_dim 64: the highest frequency is kept, the lowest divided by 32.
  REQUIRE(fl.size() == 32);
  CHECK(fl[0] == doctest::Approx(1.0));
  CHECK(fl[31] == doctest::Approx(std::pow(500000.0, -62.0 / 64) / 32).epsilon(1e-12));
  auto lin = parse(base + R"("rope_scaling": {"type": "linear", "factor": 4}})");
  REQUIRE(lin.has_value());
  CHECK(rope_inv_freq(*lin)[1] == doctest::Approx(std::pow(10000.0, -2.0 / 64) / 4));

  // GLM-4: partial rotary 0.5 by default, interleaved, four norms, attention_bias default true.
  auto g = parse(R"({"architectures": ["Glm4ForCausalLM"], "vocab_size": 8, "hidden_size": 32,
    "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
    "head_dim": 16})");
  REQUIRE_MESSAGE(g.has_value(), g.error().message);
  CHECK(g->pos == pos_kind::rope_interleaved);
  CHECK(g->rot_dim() == 8);
  CHECK(g->post_norms);
  CHECK(g->qkv_bias);
  CHECK_FALSE(g->out_bias);
  CHECK(g->ln_eps == doctest::Approx(1.5625e-7));

  // --max-model-len caps the context served, never raises it.
  model_config m = *c;
  serve_context(m, 16);
  CHECK(m.n_ctx == 16);
  serve_context(m, 1000);
  CHECK(m.n_ctx == 64);
  serve_context(m, 0);
  CHECK(m.n_ctx == 64);
}

TEST_CASE("config.json errors name the file and the key") {
  auto err = [](const std::string& text) {
    auto r = parse(text);
    REQUIRE_FALSE(r.has_value());
    CHECK(contains(r.error().message, "/m/config.json"));
    return r.error().message;
  };
  // Unknown architecture: named, with the supported ones listed.
  auto u = err(R"({"architectures": ["FalconForCausalLM"], "model_type": "falcon", "vocab_size": 8})");
  CHECK(contains(u, "falcon"));
  for (const char* a : {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                        "Glm4ForCausalLM", "Phi3ForCausalLM", "GPT2LMHeadModel"})
    CHECK(contains(u, a));
  CHECK(contains(err(R"({"architectures": ["MambaForCausalLM"]})"), "MambaForCausalLM"));
  // A quantized checkpoint.
  std::string q = k_llama_cfg;
  q.insert(1, R"("quantization_config": {"quant_method": "awq", "bits": 4}, )");
  auto qe = err(q);
  CHECK(contains(qe, "quantization_config"));
  CHECK(contains(qe, "awq"));
  // Rope types we do not implement, missing fields of those we do.
  const std::string base = R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 8, "hidden_size": 16,
    "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, )";
  CHECK(contains(err(base + R"("rope_scaling": {"rope_type": "yarn", "factor": 4}})"), "'yarn' is not supported"));
  CHECK(contains(err(base + R"("rope_scaling": {"rope_type": "dynamic", "factor": 4}})"), "dynamic"));
  CHECK(contains(err(R"({"architectures": ["Phi3ForCausalLM"], "vocab_size": 8, "hidden_size": 16,
    "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
    "rope_scaling": {"type": "longrope", "long_factor": [1], "short_factor": [1]}})"), "'longrope' is not supported"));
  CHECK(contains(err(base + R"("rope_scaling": {"rope_type": "llama3", "factor": 4}})"), "low_freq_factor"));
  CHECK(contains(err(base + R"("rope_scaling": {"rope_type": "linear"}})"), "factor"));
  // Missing and malformed keys.
  CHECK(contains(err(R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 8})"), "'hidden_size'"));
  CHECK(contains(err(base + R"("num_key_value_heads": 3})"), "num_key_value_heads"));
  CHECK(contains(err(base + R"("num_key_value_heads": "2"})"), "'num_key_value_heads'"));
  CHECK(contains(err(base + R"("hidden_act": "gelu"})"), "'hidden_act'"));
  CHECK(contains(err(base + R"("torch_dtype": "int8"})"), "'torch_dtype'"));
  CHECK(contains(err(base + R"("eos_token_id": "x"})"), "'eos_token_id'"));
  CHECK(contains(err(base + R"("rms_norm_eps": 0})"), "'rms_norm_eps'"));
  CHECK(contains(err(base + R"("partial_rotary_factor": 0.1})"), "partial_rotary_factor"));
  // Options that change the math are refused rather than ignored.
  CHECK(contains(err(R"({"architectures": ["Qwen2ForCausalLM"], "vocab_size": 8, "hidden_size": 16,
    "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "use_sliding_window": true})"),
                 "use_sliding_window"));
  CHECK(contains(err(R"({"architectures": ["MistralForCausalLM"], "vocab_size": 8, "hidden_size": 16,
    "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "attention_bias": true})"),
                 "attention_bias"));
}

TEST_CASE("synthetic models: real shapes from their config.json, deterministic weights") {
  struct want { const char* name; int64_t params; };
  // Parameter counts of the real checkpoints (tied heads counted once).
  for (auto [name, params] : {want{"llama3.2-1b", 1235814400}, want{"llama3.1-8b", 8030261248},
                              want{"qwen2.5-0.5b", 494032768}, want{"qwen3-0.6b", 596049920}}) {
    CAPTURE(name);
    auto c = synthetic_config(name);
    REQUIRE_MESSAGE(c.has_value(), c.error().message);
    CHECK(c->n_params() == params);
  }
  auto phi = synthetic_config("phi3-mini");
  REQUIRE(phi.has_value());
  CHECK(phi->n_params() == 3821079552);  // Phi-3-mini-4k-instruct
  CHECK(phi->sliding_window == 2047);
  auto glm = synthetic_config("glm4-9b");
  REQUIRE(glm.has_value());
  CHECK(glm->arch == arch_id::glm4);
  CHECK(glm->kv_heads() == 2);
  CHECK(glm->rot_dim() == 64);
  CHECK(glm->n_params() > 9000000000);
  auto l = synthetic_config("llama3.1-8b");
  CHECK(l->n_ctx == 131072);
  CHECK(l->rope.type == rope_type::llama3);
  CHECK(l->eos_token_ids.size() == 3);
  auto tiny = synthetic_config("llama-tiny");
  REQUIRE(tiny.has_value());
  CHECK(tiny->kv_heads() < tiny->n_head);
  CHECK_FALSE(tiny->tied_head);
  CHECK(tiny->n_vocab > 256);
  auto bad = synthetic_config("llama-huge");
  REQUIRE_FALSE(bad.has_value());
  CHECK(contains(bad.error().message, "llama-tiny"));
  CHECK(contains(bad.error().message, "glm4-9b"));

  // visit_synthetic and make_synthetic_weights give the same values, seed-determined.
  auto w = make_synthetic_weights(*tiny, 5, "synthetic:llama-tiny");
  auto w2 = make_synthetic_weights(*tiny, 5, "synthetic:llama-tiny");
  check_same(*w, *w2);
  size_t total = 0;
  for (const auto& v : w->owned) total += v.size();
  CHECK(total == size_t(tiny->n_params()));
  const float* q = w->get(tensor_role::qkv_w, 1);
  size_t visited = 0;
  REQUIRE(visit_synthetic(*tiny, 5, [&](const tensor_spec& s, std::span<const float> v) {
            if (s.role == tensor_role::qkv_w && s.layer == 1) {
              const size_t off = size_t(s.row_offset) * size_t(tiny->n_embd);
              CHECK(std::memcmp(q + off, v.data(), v.size() * 4) == 0);
              ++visited;
            }
            return status::ok();
          }).is_ok());
  CHECK(visited == 3);  // q_proj, k_proj, v_proj fused into one array
}

TEST_CASE("the memory check refuses what does not fit, with bytes needed and available") {
  load_options o;
  o.host_memory_limit = int64_t(1) << 30;
  auto r = load_model_weights("synthetic:llama3.1-8b", o);
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code == errc::out_of_memory);
  CHECK(contains(r.error().message, std::to_string(int64_t(8030261248) * 4)));
  CHECK(contains(r.error().message, std::to_string(int64_t(1) << 30)));
  o.host_memory_limit = int64_t(64) << 20;
  CHECK(load_model_weights("synthetic:llama-tiny", o).has_value());
}

TEST_CASE("Hugging Face directories: single file and sharded, F32/BF16/F16, fused at load time") {
  temp_dir tmp;
  auto cfg = parse(k_llama_cfg);
  REQUIRE(cfg.has_value());
  auto ref = make_synthetic_weights(*cfg, 11, "ref");
  for (int shards : {1, 3}) {
    for (st_dtype d : {st_dtype::f32, st_dtype::bf16, st_dtype::f16}) {
      CAPTURE(shards);
      CAPTURE(st_dtype_name(d));
      const std::string dir = tmp.str(fmt::format("m{}{}", shards, st_dtype_name(d)));
      write_checkpoint(dir, k_llama_cfg, 11, shards, d);
      auto ck = open_checkpoint(dir);
      REQUIRE_MESSAGE(ck.has_value(), ck.error().message);
      CHECK(ck->shards.size() == size_t(shards));
      auto w = load_model_weights(dir);
      REQUIRE_MESSAGE(w.has_value(), w.error().message);
      check_same(*ref, **w, d);
      // fp32 tensors that fill a role alone stay in the mapped shards; fused ones are copies.
      if (d == st_dtype::f32) CHECK((*w)->mappings.size() == size_t(shards));
      else CHECK((*w)->mappings.empty());
    }
  }
  // Qwen3 (q/k norm) and GLM-4 (post-norms, gate_up_proj on disk) walk their own tables.
  for (const char* c : {R"({"architectures": ["Qwen3ForCausalLM"], "vocab_size": 40, "hidden_size": 16,
      "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
      "head_dim": 8, "tie_word_embeddings": true})",
                        R"({"architectures": ["Glm4ForCausalLM"], "vocab_size": 40, "hidden_size": 16,
      "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
      "head_dim": 8})",
                        R"({"architectures": ["Phi3ForCausalLM"], "vocab_size": 40, "hidden_size": 16,
      "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4, "sliding_window": 5})"}) {
    const std::string dir = tmp.str(fmt::format("arch{}", std::strlen(c)));
    write_checkpoint(dir, c, 3, 2);
    auto w = load_model_weights(dir);
    REQUIRE_MESSAGE(w.has_value(), w.error().message);
    check_same(*make_synthetic_weights((*w)->cfg, 3, "ref"), **w);
  }
}

TEST_CASE("loader errors name the file and the tensor") {
  temp_dir tmp;
  SUBCASE("a tensor missing from the index") {
    const std::string dir = tmp.str("noidx");
    write_checkpoint(dir, k_llama_cfg, 1, 3);
    auto idx = nlohmann::json::parse(std::ifstream(dir + "/model.safetensors.index.json"));
    idx["weight_map"].erase("model.layers.1.mlp.up_proj.weight");
    std::ofstream(dir + "/model.safetensors.index.json") << idx.dump();
    auto r = load_model_weights(dir);
    REQUIRE_FALSE(r.has_value());
    CHECK(contains(r.error().message, dir + "/model.safetensors.index.json"));
    CHECK(contains(r.error().message, "'model.layers.1.mlp.up_proj.weight'"));
  }
  SUBCASE("a missing shard") {
    const std::string dir = tmp.str("noshard");
    write_checkpoint(dir, k_llama_cfg, 1, 3);
    fs::remove(dir + "/model-00002-of-00003.safetensors");
    auto r = load_model_weights(dir);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == errc::io_error);
    CHECK(contains(r.error().message, dir + "/model-00002-of-00003.safetensors"));
    CHECK(contains(r.error().message, "missing shard"));
    CHECK(contains(r.error().message, "model.layers."));
  }
  SUBCASE("a tensor the index places in a shard that lacks it") {
    const std::string dir = tmp.str("lying");
    write_checkpoint(dir, k_llama_cfg, 1, 3, st_dtype::f32, "model.layers.2.self_attn.k_proj.weight");
    auto r = load_model_weights(dir);
    REQUIRE_FALSE(r.has_value());
    CHECK(contains(r.error().message, dir + "/model-00001-of-00003.safetensors"));
    CHECK(contains(r.error().message, "'model.layers.2.self_attn.k_proj.weight'"));
  }
  SUBCASE("a tensor of the wrong shape, in a shard and in a single file") {
    for (int shards : {1, 2}) {
      const std::string dir = tmp.str(fmt::format("shape{}", shards));
      write_checkpoint(dir, k_llama_cfg, 1, shards);
      // The config now claims more KV heads than the checkpoint has.
      std::string c = k_llama_cfg;
      c.replace(c.find("\"num_key_value_heads\": 2"), 24, "\"num_key_value_heads\": 4");
      std::ofstream(dir + "/config.json") << c;
      auto r = load_model_weights(dir);
      REQUIRE_FALSE(r.has_value());
      CAPTURE(r.error().message);
      CHECK(contains(r.error().message, "'model.layers.0.self_attn.k_proj.weight'"));
      CHECK(contains(r.error().message, "[8, 16]"));   // on disk
      CHECK(contains(r.error().message, "[16, 16]"));  // expected
      CHECK(contains(r.error().message, shards == 1 ? dir + "/model.safetensors" : dir + "/model-00001-of-00002.safetensors"));
    }
  }
  SUBCASE("an unknown architecture") {
    const std::string dir = tmp.str("arch");
    write_checkpoint(dir, k_llama_cfg, 1, 1);
    std::ofstream(dir + "/config.json") << R"({"architectures": ["PhiForCausalLM"], "model_type": "phi"})";
    auto r = load_model_weights(dir);
    REQUIRE_FALSE(r.has_value());
    CHECK(contains(r.error().message, dir + "/config.json"));
    CHECK(contains(r.error().message, "PhiForCausalLM"));
    CHECK(contains(r.error().message, "LlamaForCausalLM (llama)"));
  }
  SUBCASE("an index that is not one") {
    const std::string dir = tmp.str("badidx");
    write_checkpoint(dir, k_llama_cfg, 1, 2);
    std::ofstream(dir + "/model.safetensors.index.json") << R"({"weight_map": {"a": "../../etc/passwd"}})";
    auto r = load_model_weights(dir);
    REQUIRE_FALSE(r.has_value());
    CHECK(contains(r.error().message, "model.safetensors.index.json"));
  }
  SUBCASE("a tensor stored in a dtype we cannot read") {
    const std::string dir = tmp.str("dtype");
    write_checkpoint(dir, k_llama_cfg, 1, 1);
    auto f = safetensors_file::open(dir + "/model.safetensors");
    REQUIRE(f.has_value());
    // Rewrite one tensor's dtype in the header in place: F32 -> I32 (same size).
    std::string bytes;
    {
      std::ifstream in(dir + "/model.safetensors", std::ios::binary);
      bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    const size_t at = bytes.find("\"model.norm.weight\"");
    REQUIRE(at != std::string::npos);
    const size_t dt = bytes.find("\"F32\"", at);
    bytes.replace(dt, 5, "\"I32\"");
    std::ofstream(dir + "/model.safetensors", std::ios::binary | std::ios::trunc) << bytes;
    auto r = load_model_weights(dir);
    REQUIRE_FALSE(r.has_value());
    CHECK(contains(r.error().message, "'model.norm.weight'"));
    CHECK(contains(r.error().message, "I32"));
  }
}
