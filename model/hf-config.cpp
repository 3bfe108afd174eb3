#include "model/hf-config.hpp"

#include <cerrno>
#include <climits>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "model/arch.hpp"

namespace infer {
namespace {

using json = nlohmann::json;

// A config.json value for an error message: scalars as JSON, arrays and objects by their type
// (dump() recurses once per nesting level: a hostile [[[[...]]]] would overflow the stack).
std::string brief(const json& j) { return j.is_structured() ? std::string(j.type_name()) : j.dump(); }

struct ctx {
  const json& j;
  const std::string& path;
  const arch_traits& t;
  model_config& c;
  double partial_rotary = 1.0;
  bool head_dim_set = false, kv_set = false, ff_set = false, max_pos_set = false;

  status bad(const char* key, const json& v, const char* want) const {
    return make_status(errc::format_error, fmt::format("{}: key '{}' must be {}, got {}", path, key, want, brief(v)));
  }
  status unsupported(const char* key, const json& v, const std::string& why = "") const {
    return make_status(errc::format_error,
                       fmt::format("{}: key '{}' = {} is not supported{}", path, key, brief(v),
                                   why.empty() ? fmt::format(" for {}", t.hf_class) : " (" + why + ")"));
  }
  status pos_int(const char* key, const json& v, int32_t& out) const {
    if (!v.is_number_integer() || v.get<int64_t>() <= 0 || v.get<int64_t>() > INT32_MAX)
      return bad(key, v, "a positive integer");
    out = int32_t(v.get<int64_t>());
    return status::ok();
  }
  status boolean(const char* key, const json& v, bool& out) const {
    if (!v.is_boolean()) return bad(key, v, "true or false");
    out = v.get<bool>();
    return status::ok();
  }
};

enum family : uint8_t { gpt2 = 1, rope = 2, all = 3 };

// One row per config.json key: the names it goes by (first: the one errors use), which
// families read it, whether it must be present, and what it sets. Rows run in order.
struct key_row {
  const char* names[3];
  uint8_t families;
  bool required;
  status (*set)(ctx&, const char* key, const json& v);
};

status set_vocab(ctx& x, const char* k, const json& v) { return x.pos_int(k, v, x.c.n_vocab); }
status set_hidden(ctx& x, const char* k, const json& v) { return x.pos_int(k, v, x.c.n_embd); }
status set_layers(ctx& x, const char* k, const json& v) { return x.pos_int(k, v, x.c.n_layer); }
status set_heads(ctx& x, const char* k, const json& v) { return x.pos_int(k, v, x.c.n_head); }
status set_max_pos(ctx& x, const char* k, const json& v) {
  x.max_pos_set = true;
  return x.pos_int(k, v, x.c.max_position_embeddings);
}
status set_ff(ctx& x, const char* k, const json& v) {
  if (v.is_null()) return status::ok();
  x.ff_set = true;
  return x.pos_int(k, v, x.c.n_ff);
}
status set_gpt2_inner(ctx& x, const char* k, const json& v) {
  // The GPT-2 kernels are written for the 4C MLP; any other width is refused.
  if (v.is_null()) return status::ok();
  if (!(v.is_number_integer() && v.get<int64_t>() == 4 * int64_t(x.c.n_embd)))
    return x.unsupported(k, v, "GPT-2 defaults only");
  return status::ok();
}
status set_kv_heads(ctx& x, const char* k, const json& v) {
  if (v.is_null()) return status::ok();
  x.kv_set = true;
  return x.pos_int(k, v, x.c.n_kv_head);
}
status set_head_dim(ctx& x, const char* k, const json& v) {
  if (v.is_null()) return status::ok();
  x.head_dim_set = true;
  return x.pos_int(k, v, x.c.n_head_dim);
}
status set_eps(ctx& x, const char* k, const json& v) {
  if (!v.is_number() || !(v.get<double>() > 0.0) || !(v.get<double>() < 1.0))
    return x.bad(k, v, "a number in (0, 1)");
  x.c.ln_eps = float(v.get<double>());
  return status::ok();
}
status set_act(ctx& x, const char* k, const json& v) {
  if (!v.is_string()) return x.bad(k, v, "a string");
  const std::string s = v.get<std::string>();
  if (x.t.act == act_kind::gelu_tanh && (s == "gelu_new" || s == "gelu_pytorch_tanh" || s == "gelu_fast")) return status::ok();
  if (x.t.act == act_kind::silu && (s == "silu" || s == "swish")) return status::ok();
  return x.unsupported(k, v);
}
status set_tie(ctx& x, const char* k, const json& v) {
  if (auto s = x.boolean(k, v, x.c.tied_head); !s) return s;
  if (x.t.id == arch_id::gpt2 && !x.c.tied_head) return x.unsupported(k, v, "GPT-2 defaults only");
  return status::ok();
}
status set_attention_bias(ctx& x, const char* k, const json& v) {
  bool b = false;
  if (auto s = x.boolean(k, v, b); !s) return s;
  if (!x.t.attention_bias_qkv) {
    if (b != x.t.qkv_bias) return x.unsupported(k, v);
    return status::ok();
  }
  x.c.qkv_bias = b;
  if (x.t.attention_bias_out) x.c.out_bias = b;
  return status::ok();
}
status set_mlp_bias(ctx& x, const char* k, const json& v) {
  bool b = false;
  if (auto s = x.boolean(k, v, b); !s) return s;
  if (x.t.id != arch_id::llama && b != x.t.mlp_bias) return x.unsupported(k, v);
  x.c.mlp_bias = b;
  return status::ok();
}
status set_partial_rotary(ctx& x, const char* k, const json& v) {
  if (!v.is_number() || !(v.get<double>() > 0.0) || !(v.get<double>() <= 1.0))
    return x.bad(k, v, "a number in (0, 1]");
  x.partial_rotary = v.get<double>();
  return status::ok();
}
status set_sliding_window(ctx& x, const char* k, const json& v) {
  if (v.is_null()) return status::ok();
  int32_t w = 0;
  if (auto s = x.pos_int(k, v, w); !s) return s;
  if (x.t.sliding_window) {
    x.c.sliding_window = w;
    return status::ok();
  }
  // Qwen2/Qwen3 configs carry a sliding_window that applies only with use_sliding_window.
  if (x.t.id == arch_id::qwen2 || x.t.id == arch_id::qwen3) return status::ok();
  return x.unsupported(k, v);
}
status set_use_sliding_window(ctx& x, const char* k, const json& v) {
  bool b = false;
  if (auto s = x.boolean(k, v, b); !s) return s;
  if (b) return x.unsupported(k, v, "per-layer sliding windows (max_window_layers) are not implemented");
  return status::ok();
}
status token_ids(ctx& x, const char* k, const json& v, std::vector<int32_t>& out) {
  out.clear();
  auto one = [&](const json& e) -> status {
    if (!e.is_number_integer() || e.get<int64_t>() < 0 || e.get<int64_t>() > INT32_MAX)
      return x.bad(k, v, "a token id, a list of them, or null");
    out.push_back(int32_t(e.get<int64_t>()));
    return status::ok();
  };
  if (v.is_null()) return status::ok();
  if (v.is_array()) {
    for (const auto& e : v)
      if (auto s = one(e); !s) return s;
    return status::ok();
  }
  return one(v);
}
status set_bos(ctx& x, const char* k, const json& v) { return token_ids(x, k, v, x.c.bos_token_ids); }
status set_eos(ctx& x, const char* k, const json& v) { return token_ids(x, k, v, x.c.eos_token_ids); }
status set_dtype(ctx& x, const char* k, const json& v) {
  if (v.is_null()) return status::ok();
  if (!v.is_string()) return x.bad(k, v, "a dtype name");
  const std::string s = v.get<std::string>();
  if (s != "bfloat16" && s != "float16" && s != "float32")
    return x.unsupported(k, v, "bfloat16, float16 and float32 checkpoints are served");
  x.c.torch_dtype = s;
  return status::ok();
}
status set_theta(ctx& x, const char* k, const json& v) {
  if (!v.is_number() || !(v.get<double>() > 1.0)) return x.bad(k, v, "a number > 1");
  x.c.rope.theta = v.get<double>();
  return status::ok();
}
// rope_scaling (legacy) and rope_parameters (transformers >= 4.56 / v5) share one shape:
// {"rope_type" (or "type"): ..., "factor": ..., ...}; rope_parameters may also carry rope_theta.
status set_rope(ctx& x, const char* k, const json& v) {
  if (v.is_null()) return status::ok();
  if (!v.is_object()) return x.bad(k, v, "an object or null");
  auto num = [&](const char* field, double& out, bool required) -> status {
    auto it = v.find(field);
    if (it == v.end() || it->is_null()) {
      if (!required) return status::ok();
      return make_status(errc::format_error, fmt::format("{}: key '{}': missing '{}'", x.path, k, field));
    }
    if (!it->is_number() || !(it->get<double>() > 0.0))
      return make_status(errc::format_error, fmt::format("{}: key '{}.{}' must be a positive number, got {}",
                                                         x.path, k, field, brief(*it)));
    out = it->get<double>();
    return status::ok();
  };
  if (auto it = v.find("rope_theta"); it != v.end())
    if (auto s = set_theta(x, "rope_theta", *it); !s) return s;
  std::string type = "default";
  for (const char* tk : {"rope_type", "type"})
    if (auto it = v.find(tk); it != v.end()) {
      if (!it->is_string()) return x.bad(k, *it, "an object with a string rope_type");
      type = it->get<std::string>();
      break;
    }
  rope_config& r = x.c.rope;
  if (type == "default") {
    r.type = rope_type::default_;
  } else if (type == "linear") {
    r.type = rope_type::linear;
    if (auto s = num("factor", r.factor, true); !s) return s;
  } else if (type == "llama3") {
    r.type = rope_type::llama3;
    double orig = 0;
    for (auto s : {num("factor", r.factor, true), num("low_freq_factor", r.low_freq_factor, true),
                   num("high_freq_factor", r.high_freq_factor, true),
                   num("original_max_position_embeddings", orig, true)})
      if (!s) return s;
    if (!(r.high_freq_factor > r.low_freq_factor))
      return make_status(errc::format_error, fmt::format("{}: key '{}': high_freq_factor must exceed low_freq_factor",
                                                         x.path, k));
    r.original_max_position = int32_t(orig);
  } else {
    return make_status(errc::format_error,
                       fmt::format("{}: key '{}': rope type '{}' is not supported (default, linear, llama3 are)",
                                   x.path, k, type));
  }
  if (auto it = v.find("partial_rotary_factor"); it != v.end())
    if (auto s = set_partial_rotary(x, "partial_rotary_factor", *it); !s) return s;
  return status::ok();
}
status must_be(ctx& x, const char* k, const json& v, bool want) {
  if (v != want) return x.unsupported(k, v, "GPT-2 defaults only");
  return status::ok();
}
status set_scale_inv_layer(ctx& x, const char* k, const json& v) { return must_be(x, k, v, false); }
status set_scale_weights(ctx& x, const char* k, const json& v) { return must_be(x, k, v, true); }
status set_quant(ctx& x, const char* k, const json& v) {
  if (v.is_null()) return status::ok();
  std::string method = "?";
  if (v.is_object())
    if (auto it = v.find("quant_method"); it != v.end() && it->is_string()) method = it->get<std::string>();
  return make_status(errc::format_error,
                     fmt::format("{}: quantization_config (quant_method '{}') is not supported: infer serves "
                                 "unquantized bfloat16, float16 and float32 checkpoints",
                                 x.path, method));
}

// clang-format off
const key_row k_keys[] = {
  {{"quantization_config"},                      all,  false, set_quant},
  {{"vocab_size"},                               all,  true,  set_vocab},
  {{"n_embd"},                                   gpt2, true,  set_hidden},
  {{"hidden_size"},                              rope, true,  set_hidden},
  {{"n_layer"},                                  gpt2, true,  set_layers},
  {{"num_hidden_layers"},                        rope, true,  set_layers},
  {{"n_head"},                                   gpt2, true,  set_heads},
  {{"num_attention_heads"},                      rope, true,  set_heads},
  {{"n_positions", "n_ctx"},                     gpt2, true,  set_max_pos},
  {{"max_position_embeddings"},                  rope, false, set_max_pos},
  {{"n_inner"},                                  gpt2, false, set_gpt2_inner},
  {{"intermediate_size"},                        rope, true,  set_ff},
  {{"num_key_value_heads"},                      rope, false, set_kv_heads},
  {{"head_dim"},                                 rope, false, set_head_dim},
  {{"layer_norm_epsilon"},                       gpt2, false, set_eps},
  {{"rms_norm_eps"},                             rope, false, set_eps},
  {{"activation_function"},                      gpt2, false, set_act},
  {{"hidden_act"},                               rope, false, set_act},
  {{"tie_word_embeddings"},                      all,  false, set_tie},
  {{"attention_bias"},                           rope, false, set_attention_bias},
  {{"mlp_bias"},                                 rope, false, set_mlp_bias},
  {{"partial_rotary_factor"},                    rope, false, set_partial_rotary},
  {{"sliding_window"},                           rope, false, set_sliding_window},
  {{"use_sliding_window"},                       rope, false, set_use_sliding_window},
  {{"bos_token_id"},                             all,  false, set_bos},
  {{"eos_token_id"},                             all,  false, set_eos},
  {{"torch_dtype", "dtype"},                     all,  false, set_dtype},
  {{"rope_theta"},                               rope, false, set_theta},
  {{"rope_scaling"},                             rope, false, set_rope},
  {{"rope_parameters"},                          rope, false, set_rope},
  {{"scale_attn_by_inverse_layer_idx"},          gpt2, false, set_scale_inv_layer},
  {{"reorder_and_upcast_attn"},                  gpt2, false, set_scale_inv_layer},
  {{"scale_attn_weights"},                       gpt2, false, set_scale_weights},
};
// clang-format on

// architectures[] first (the class decides the weights' names), then model_type; a
// GPT-2 config without either (old exports) is GPT-2.
result<const arch_traits*> pick_arch(const json& j, const std::string& path) {
  auto ar = j.find("architectures");
  auto mt = j.find("model_type");
  std::string named;  // what the config says it is, for the error
  if (ar != j.end() && ar->is_array()) {
    for (const auto& a : *ar) {
      if (!a.is_string()) continue;
      if (const arch_traits* t = find_arch(a.get<std::string>())) return t;
      named += fmt::format("{}{}", named.empty() ? "" : ", ", a.get<std::string>());
    }
  }
  if (mt != j.end() && mt->is_string()) {
    if (const arch_traits* t = find_arch(mt->get<std::string>())) return t;
    named += fmt::format("{}model_type \"{}\"", named.empty() ? "" : ", ", mt->get<std::string>());
  }
  if (named.empty() && (ar == j.end() || ar->is_null()) && mt == j.end()) {
    if (j.contains("n_embd")) return &arch_row(arch_id::gpt2);  // old GPT-2 exports name neither
    return make_status(errc::format_error,
                       fmt::format("{}: no 'architectures' or 'model_type' (supported architectures: {})", path,
                                   supported_architectures()));
  }
  if (named.empty()) {
    const json& v = (ar != j.end() && !ar->is_null()) ? *ar : *mt;
    named = brief(v);
  }
  return make_status(errc::format_error,
                     fmt::format("{}: architecture {} is not supported (supported architectures: {})", path, named,
                                 supported_architectures()));
}

}  // namespace

result<model_config> parse_hf_config(const json& j, const std::string& path) {
  if (!j.is_object()) return make_status(errc::format_error, fmt::format("{}: not a JSON object", path));
  auto t = pick_arch(j, path);
  if (!t) return t.error();
  model_config c;
  apply_traits(**t, c);
  c.ln_eps = c.arch == arch_id::gpt2 ? 1e-5f : float((*t)->rms_eps_default);
  c.n_ctx = 0;
  c.max_position_embeddings = (*t)->max_pos_default;
  c.n_ff = 0;
  c.sliding_window = (*t)->sliding_window_default;
  ctx x{j, path, **t, c};
  x.partial_rotary = (*t)->partial_rotary_default;
  const uint8_t fam = c.arch == arch_id::gpt2 ? gpt2 : rope;
  for (const auto& row : k_keys) {
    if (!(row.families & fam)) continue;
    bool found = false;
    for (const char* name : row.names) {
      if (!name) break;
      auto it = j.find(name);
      if (it == j.end()) continue;
      found = true;
      if (auto s = row.set(x, name, *it); !s) return s;
      break;  // aliases: the first present wins
    }
    if (!found && row.required) {
      std::string alt;
      for (int i = 1; i < 3 && row.names[i]; ++i) alt += fmt::format(" (or '{}')", row.names[i]);
      return make_status(errc::format_error, fmt::format("{}: missing key '{}'{}", path, row.names[0], alt));
    }
  }
  // Derived values, then the relations between them.
  auto err = [&](std::string m) { return make_status(errc::format_error, fmt::format("{}: {}", path, m)); };
  if (!x.head_dim_set) {
    if (c.n_embd % c.n_head != 0)
      return err(fmt::format("n_embd {} is not a multiple of n_head {}", c.n_embd, c.n_head));
    c.n_head_dim = c.n_embd / c.n_head;
  }
  if (!x.kv_set) c.n_kv_head = c.n_head;
  if (c.n_head % c.n_kv_head != 0)
    return err(fmt::format("num_attention_heads {} is not a multiple of num_key_value_heads {}", c.n_head, c.n_kv_head));
  if (c.arch == arch_id::gpt2) {
    c.n_ff = 4 * c.n_embd;
  }
  if (c.uses_rope()) {
    // int(head_dim * partial_rotary_factor), as transformers' rope init truncates it.
    c.rotary_dim = int32_t(double(c.n_head_dim) * x.partial_rotary + 1e-9);
    if (c.rotary_dim < 2 || c.rotary_dim % 2 != 0)
      return err(fmt::format("head_dim {} * partial_rotary_factor {} is not a positive even number of dims",
                             c.n_head_dim, x.partial_rotary));
  }
  // A window as long as the model's context never cuts anything: no window.
  if (c.sliding_window >= c.max_position_embeddings) c.sliding_window = 0;
  c.n_ctx = c.max_position_embeddings;
  return c;
}

result<model_config> read_hf_config(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return make_status(errc::io_error, fmt::format("{}: cannot open: {}", path, std::strerror(errno)));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return make_status(errc::io_error, fmt::format("{}: read failed", path));
  auto j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return make_status(errc::format_error, fmt::format("{}: not valid JSON", path));
  return parse_hf_config(j, path);
}

void serve_context(model_config& cfg, int32_t max_model_len) {
  cfg.n_ctx = cfg.n_positions();
  if (max_model_len > 0 && max_model_len < cfg.n_ctx) cfg.n_ctx = max_model_len;
}

}  // namespace infer
