#include "net/protocol.hpp"
#include "base/escape.hpp"
#include "base/prompt-limit.hpp"

#include <fmt/format.h>

#include <cctype>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

namespace infer::net {

using json = nlohmann::json;

namespace {

// ---- field checks shared by the WebSocket and OpenAI parsers ------------------------
// Each returns an error message, or nothing. `null` counts as absent everywhere:
// OpenAI clients send explicit nulls for unset fields.

bool absent(const json& o, const char* key) {
  auto it = o.find(key);
  return it == o.end() || it->is_null();
}

std::optional<std::string> get_int(const json& o, const char* key, int64_t lo, int64_t hi, int64_t& out) {
  if (absent(o, key)) return std::nullopt;
  const json& v = o.at(key);
  if (v.is_number_unsigned()) {
    uint64_t u = v.get<uint64_t>();
    if (u > uint64_t(std::numeric_limits<int64_t>::max()) || int64_t(u) > hi)
      return fmt::format("{}: must be <= {}, got {}", key, hi, u);
    out = int64_t(u);
  } else if (v.is_number_integer()) {
    out = v.get<int64_t>();
  } else {
    return fmt::format("{}: must be an integer", key);
  }
  if (out < lo) return fmt::format("{}: must be >= {}, got {}", key, lo, out);
  if (out > hi) return fmt::format("{}: must be <= {}, got {}", key, hi, out);
  return std::nullopt;
}

std::optional<std::string> get_u64(const json& o, const char* key, uint64_t& out) {
  if (absent(o, key)) return std::nullopt;
  const json& v = o.at(key);
  if (v.is_number_unsigned()) {
    out = v.get<uint64_t>();
  } else if (v.is_number_integer()) {
    int64_t i = v.get<int64_t>();
    if (i < 0) return fmt::format("{}: must be >= 0, got {}", key, i);
    out = uint64_t(i);
  } else {
    return fmt::format("{}: must be a non-negative integer", key);
  }
  return std::nullopt;
}

std::optional<std::string> get_number(const json& o, const char* key, double& out) {
  if (absent(o, key)) return std::nullopt;
  const json& v = o.at(key);
  if (!v.is_number()) return fmt::format("{}: must be a number", key);
  out = v.get<double>();
  if (!std::isfinite(out)) return fmt::format("{}: must be finite", key);
  return std::nullopt;
}

std::optional<std::string> get_bool(const json& o, const char* key, bool& out) {
  if (absent(o, key)) return std::nullopt;
  const json& v = o.at(key);
  if (!v.is_boolean()) return fmt::format("{}: must be true or false", key);
  out = v.get<bool>();
  return std::nullopt;
}

std::optional<std::string> check_token_ids(const json& arr, const char* key, int32_t n_vocab,
                                           std::vector<int32_t>& out) {
  if (!arr.is_array()) return fmt::format("{}: must be an array of token ids", key);
  out.clear();
  out.reserve(arr.size());
  for (size_t i = 0; i < arr.size(); ++i) {
    const json& t = arr[i];
    if (!t.is_number_integer()) return fmt::format("{}[{}]: must be an integer token id", key, i);
    int64_t id = t.is_number_unsigned() ? int64_t(std::min<uint64_t>(t.get<uint64_t>(), uint64_t(1) << 40))
                                        : t.get<int64_t>();
    if (id < 0 || id >= n_vocab)
      return fmt::format("{}[{}]: token id {} outside the vocabulary [0, {})", key, i, id, n_vocab);
    out.push_back(int32_t(id));
  }
  return std::nullopt;
}

std::optional<std::string> get_stop(const json& o, const protocol_limits& lim, std::vector<std::string>& out) {
  if (absent(o, "stop")) return std::nullopt;
  const json& v = o.at("stop");
  auto add = [&](const json& s, size_t i) -> std::optional<std::string> {
    if (!s.is_string()) return fmt::format("stop[{}]: must be a string", i);
    const auto& str = s.get_ref<const std::string&>();
    if (str.empty()) return fmt::format("stop[{}]: must not be empty", i);
    if (str.size() > lim.max_stop_bytes)
      return fmt::format("stop[{}]: longer than {} bytes", i, lim.max_stop_bytes);
    out.push_back(str);
    return std::nullopt;
  };
  if (v.is_string()) return add(v, 0);
  if (!v.is_array()) return "stop: must be a string or an array of strings";
  if (v.size() > lim.max_stop) return fmt::format("stop: at most {} sequences, got {}", lim.max_stop, v.size());
  for (size_t i = 0; i < v.size(); ++i)
    if (auto e = add(v[i], i)) return e;
  return std::nullopt;
}

// Sampling fields common to both APIs. `temperature` keeps its caller's default.
// Constrained decoding (docs/structured-output.md): OpenAI's response_format, vLLM's
// structured_outputs and its older guided_json / guided_regex / guided_choice. The constraint
// is checked here (a walk of the schema or the pattern, no automaton: that is compiled by the
// request actor, off the io threads); an unsupported keyword is a 400 naming it. A schema
// keeps the client's key order (properties are generated in it), so it is read again from
// the ordered body.
using ojson = nlohmann::ordered_json;
std::optional<ojson> parse_ordered(std::string_view text, std::string& err);

std::optional<std::string> get_structured(const json& o, std::string_view body, generate_request& r) {
  using grammar::grammar_kind;
  std::vector<std::string> given;
  bool text_format = false;
  if (!absent(o, "response_format")) {
    const json& rf = o.at("response_format");
    if (!rf.is_object() || !rf.contains("type") || !rf.at("type").is_string())
      return std::string("response_format: must be an object with a type (text, json_object, json_schema)");
    text_format = rf.at("type") == "text";
    if (!text_format) given.push_back("response_format");
  }
  for (const char* k : {"structured_outputs", "guided_json", "guided_regex", "guided_choice"})
    if (!absent(o, k)) given.push_back(k);
  for (const char* k : {"guided_grammar", "guided_whitespace_pattern", "guided_decoding_backend"})
    if (!absent(o, k))
      return fmt::format("{}: not supported (JSON schema, regex and choice constraints are: guided_json, "
                         "guided_regex, guided_choice)", k);
  if (given.empty()) return std::nullopt;
  if (given.size() > 1) return fmt::format("{}: only one of response_format, structured_outputs and guided_* may be given", given[1]);
  const std::string field = given[0];
  std::optional<ojson> ordered;
  // The schema at `path` of the body (a JSON string holding a schema is accepted too, as vLLM does).
  auto schema_at = [&](std::initializer_list<const char*> path, std::string& text) -> std::optional<std::string> {
    std::string where;
    if (!ordered) {
      std::string err;
      ordered = parse_ordered(body, err);
      if (!ordered) return "body is " + err;
    }
    const ojson* v = &*ordered;
    for (const char* k : path) {
      where += (where.empty() ? "" : ".") + std::string(k);
      if (!v->is_object() || !v->contains(k) || v->at(k).is_null()) return fmt::format("{}: missing", where);
      v = &v->at(k);
    }
    ojson schema = *v;
    if (v->is_string()) {
      try {
        schema = ojson::parse(v->get_ref<const std::string&>());
      } catch (const std::exception&) {
        return fmt::format("{}: a string that is not a JSON schema", where);
      }
    }
    if (!schema.is_object() && !schema.is_boolean()) return fmt::format("{}: must be a JSON schema (an object)", where);
    text = schema.dump();
    return std::nullopt;
  };
  grammar::grammar_spec spec;
  std::string where;  // the field path the constraint's own messages are relative to
  auto choice_of = [&](const json& c, const std::string& name) -> std::optional<std::string> {
    if (!c.is_array() || c.empty()) return fmt::format("{}: must be a non-empty array of strings", name);
    for (size_t i = 0; i < c.size(); ++i)
      if (!c[i].is_string() || c[i].get_ref<const std::string&>().empty())
        return fmt::format("{}[{}]: must be a non-empty string", name, i);
    spec.kind = grammar_kind::choice;
    spec.text = c.dump();
    return std::nullopt;
  };
  auto regex_of = [&](const json& re, const std::string& name) -> std::optional<std::string> {
    if (!re.is_string() || re.get_ref<const std::string&>().empty()) return fmt::format("{}: must be a non-empty string", name);
    spec.kind = grammar_kind::regex;
    spec.text = re.get<std::string>();
    return std::nullopt;
  };
  if (field == "response_format") {
    const json& rf = o.at("response_format");
    const std::string& type = rf.at("type").get_ref<const std::string&>();
    for (auto it = rf.begin(); it != rf.end(); ++it)
      if (it.key() != "type" && it.key() != "json_schema")
        return fmt::format("response_format.{}: unknown field", it.key());
    if (type == "json_object") {
      spec.kind = grammar_kind::json_object;
    } else if (type == "json_schema") {
      if (!rf.contains("json_schema") || !rf.at("json_schema").is_object())
        return std::string("response_format.json_schema: must be an object with a schema");
      const json& js = rf.at("json_schema");
      for (auto it = js.begin(); it != js.end(); ++it) {
        const std::string& k = it.key();
        if (k == "name" || k == "description") {
          if (!it->is_string()) return fmt::format("response_format.json_schema.{}: must be a string", k);
        } else if (k == "strict") {
          if (!it->is_boolean() && !it->is_null()) return std::string("response_format.json_schema.strict: must be true or false");
        } else if (k != "schema") {
          return fmt::format("response_format.json_schema.{}: unknown field", k);
        }
      }
      spec.kind = grammar_kind::json_schema;
      if (auto e = schema_at({"response_format", "json_schema", "schema"}, spec.text)) return e;
      where = "response_format.json_schema.schema";
    } else {
      return fmt::format("response_format.type: must be text, json_object or json_schema, got \"{}\"", type);
    }
  } else if (field == "structured_outputs") {
    const json& so = o.at("structured_outputs");
    if (!so.is_object()) return std::string("structured_outputs: must be an object");
    int kinds = 0;
    for (auto it = so.begin(); it != so.end(); ++it) {
      const std::string& k = it.key();
      if (it->is_null()) continue;
      const std::string name = "structured_outputs." + k;
      if (k == "json") {
        ++kinds;
        spec.kind = grammar_kind::json_schema;
        if (auto e = schema_at({"structured_outputs", "json"}, spec.text)) return e;
        where = name;
      } else if (k == "regex") {
        ++kinds;
        if (auto e = regex_of(*it, name)) return e;
        where = name;
      } else if (k == "choice") {
        ++kinds;
        if (auto e = choice_of(*it, name)) return e;
      } else if (k == "json_object") {
        if (!it->is_boolean()) return fmt::format("{}: must be true or false", name);
        if (it->get<bool>()) ++kinds, spec.kind = grammar_kind::json_object;
      } else if (k == "disable_any_whitespace") {
        if (!it->is_boolean()) return fmt::format("{}: must be true or false", name);
        if (it->get<bool>()) spec.max_whitespace = 0;
      } else if (k == "disable_fallback" || k == "disable_additional_properties") {
        // There is no fallback backend, and additional properties are never generated:
        // both hold whatever the value.
        if (!it->is_boolean()) return fmt::format("{}: must be true or false", name);
      } else if (k == "grammar" || k == "structural_tag" || k == "whitespace_pattern") {
        return fmt::format("{}: not supported (json, regex, choice and json_object are)", name);
      } else {
        return fmt::format("{}: unknown field", name);
      }
    }
    if (kinds != 1) return std::string("structured_outputs: give exactly one of json, regex, choice and json_object");
  } else if (field == "guided_json") {
    spec.kind = grammar_kind::json_schema;
    if (auto e = schema_at({"guided_json"}, spec.text)) return e;
    where = "guided_json";
  } else if (field == "guided_regex") {
    if (auto e = regex_of(o.at("guided_regex"), "guided_regex")) return e;
    where = "guided_regex";
  } else {
    if (auto e = choice_of(o.at("guided_choice"), "guided_choice")) return e;
  }
  if (status s = spec.check(); !s) {
    std::string m = s.message;
    // The schema walk names places from "schema"; the request's field path replaces it.
    if (spec.kind == grammar_kind::json_schema && m.rfind("schema", 0) == 0) return where + m.substr(6);
    return (where.empty() ? field : where) + ": " + m;
  }
  r.grammar = std::move(spec);
  return std::nullopt;
}

std::optional<std::string> get_sampling(const json& o, const protocol_limits& lim, generate_request& r,
                                        std::string_view body) {
  int64_t i = 0;
  double d = 0;
  i = lim.max_tokens_default;
  if (auto e = get_int(o, "max_tokens", 1, lim.max_tokens_limit, i)) return e;
  r.max_tokens = int32_t(i);
  // The sampler works in float: a double that float cannot hold (1e300 -> inf, 1e-300 -> 0)
  // would slip past a check made on the double (found by fuzz/fuzz-protocol's checks).
  d = r.sampling.temperature;
  if (auto e = get_number(o, "temperature", d)) return e;
  if (d < 0) return fmt::format("temperature: must be >= 0, got {}", d);
  if (d > double(std::numeric_limits<float>::max()))
    return fmt::format("temperature: must be at most {}, got {}", std::numeric_limits<float>::max(), d);
  r.sampling.temperature = float(d);
  i = r.sampling.top_k;
  if (auto e = get_int(o, "top_k", 0, std::numeric_limits<int32_t>::max(), i)) return e;
  r.sampling.top_k = int32_t(i);
  d = r.sampling.top_p;
  if (auto e = get_number(o, "top_p", d)) return e;
  if (!(d > 0 && d <= 1) || !(float(d) > 0)) return fmt::format("top_p: must be in (0, 1], got {}", d);
  r.sampling.top_p = float(d);
  if (auto e = get_u64(o, "seed", r.sampling.seed)) return e;
  if (auto e = get_stop(o, lim, r.stop)) return e;
  if (auto e = get_bool(o, "ignore_eos", r.ignore_eos)) return e;
  if (auto e = get_bool(o, "skip_special_tokens", r.skip_special_tokens)) return e;
  if (auto e = get_structured(o, body, r)) return e;
  if (!absent(o, "stop_token_ids")) {
    if (auto e = check_token_ids(o.at("stop_token_ids"), "stop_token_ids", lim.n_vocab, r.stop_token_ids)) return e;
    if (r.stop_token_ids.size() > lim.max_stop_token_ids)
      return fmt::format("stop_token_ids: at most {} ids, got {}", lim.max_stop_token_ids, r.stop_token_ids.size());
  }
  // A float field in [lo, hi] (checked on the float the sampler will use).
  auto get_float = [&](const char* key, double lo, double hi, bool lo_open, float& out) -> std::optional<std::string> {
    double v = out;
    if (auto e = get_number(o, key, v)) return e;
    const float f = float(v);
    if (!(lo_open ? f > lo : f >= lo) || !(f <= hi))
      return fmt::format("{}: must be in {}{}, {}], got {}", key, lo_open ? "(" : "[", lo, hi, v);
    out = f;
    return std::nullopt;
  };
  if (auto e = get_float("presence_penalty", -2, 2, false, r.sampling.presence_penalty)) return e;
  if (auto e = get_float("frequency_penalty", -2, 2, false, r.sampling.frequency_penalty)) return e;
  // vLLM accepts any positive value; beyond 100 a seen token's logit is all but erased anyway.
  if (auto e = get_float("repetition_penalty", 0, 100, true, r.sampling.repetition_penalty)) return e;
  if (auto e = get_float("min_p", 0, 1, false, r.sampling.min_p)) return e;
  i = 0;
  if (auto e = get_int(o, "min_tokens", 0, lim.max_tokens_limit, i)) return e;
  r.sampling.min_tokens = int32_t(i);
  if (!absent(o, "logit_bias")) {
    const json& lb = o.at("logit_bias");
    if (!lb.is_object()) return "logit_bias: must be an object mapping token ids to -100..100";
    if (lb.size() > 300) return fmt::format("logit_bias: at most 300 entries, got {}", lb.size());
    for (auto it = lb.begin(); it != lb.end(); ++it) {
      const std::string& k = it.key();
      int64_t id = -1;
      bool digits = !k.empty() && k.size() <= 10;
      for (char ch : k) digits = digits && ch >= '0' && ch <= '9';
      if (digits) id = std::stoll(k);
      if (!digits || id >= lim.n_vocab)
        return fmt::format("logit_bias: key \"{}\" is not a token id in [0, {})", k.substr(0, 32), lim.n_vocab);
      if (!it.value().is_number() || !std::isfinite(it.value().get<double>()))
        return fmt::format("logit_bias: the value of {} must be a number", id);
      const double b = it.value().get<double>();
      if (b < -100 || b > 100) return fmt::format("logit_bias: the value of {} must be in [-100, 100], got {}", id, b);
      for (const auto& [t, _] : r.logit_bias)  // "7" and "07" name the same id
        if (t == id) return fmt::format("logit_bias: token id {} given twice", id);
      r.logit_bias.emplace_back(int32_t(id), float(b));
    }
  }
  if (!absent(o, "user") && !o.at("user").is_string()) return "user: must be a string";
  return std::nullopt;
}

// After max_tokens is final (chat: max_completion_tokens wins).
std::optional<std::string> check_min_tokens(const generate_request& r) {
  if (r.sampling.min_tokens > r.max_tokens)
    return fmt::format("min_tokens: must be at most max_tokens ({}), got {}", r.max_tokens, r.sampling.min_tokens);
  return std::nullopt;
}

// vLLM's extra sampling fields this server does not implement: a 400 naming the field, never
// an output that silently ignores it (those it implements are parsed in get_sampling).
std::optional<std::string> check_unimplemented_vllm(const json& o) {
  for (const char* k : {"use_beam_search", "length_penalty", "include_stop_str_in_output", "truncate_prompt_tokens",
                        "allowed_token_ids", "bad_words", "prompt_logprobs", "logits_processors",
                        "return_tokens_as_token_ids", "return_token_ids", "prompt_embeds", "kv_transfer_params",
                        "vllm_xargs", "spaces_between_special_tokens"})
    if (!absent(o, k)) {
      if (std::string_view(k) == "prompt_logprobs")
        return std::string("prompt_logprobs: not supported; on /v1/completions, echo with logprobs gives the prompt's");
      return fmt::format("{}: not supported", k);
    }
  return std::nullopt;
}

// best_of is gone from vLLM V1 (and legacy in OpenAI): n is the only way to ask for choices.
std::optional<std::string> check_best_of(const json& o) {
  if (absent(o, "best_of")) return std::nullopt;
  const json& b = o.at("best_of");
  if (b.is_number_integer() && b.get<int64_t>() == 1) return std::nullopt;
  return "best_of: not supported (as in vLLM V1); ask for n choices instead";
}

// Encodes a text prompt when the limits can, then checks the length against the context.
std::optional<std::string> finish_prompt(const protocol_limits& lim, generate_request& r) {
  if (r.prompt_tokens.empty() && lim.encode) {
    r.prompt_tokens = lim.encode(r.prompt);
    if (r.prompt_tokens.empty()) return "prompt: encodes to no tokens";
  } else if (r.prompt_tokens.empty() && lim.max_token_bytes > 0 &&
             !prompt_fits(int64_t(r.prompt.size() / lim.max_token_bytes), lim.n_ctx)) {
    // At least bytes / longest-token tokens, whatever the tokenization: refused untokenized.
    return fmt::format("prompt: {} bytes, more than the context holds ({} tokens of at most {} bytes, at most {} "
                       "for the prompt)",
                       r.prompt.size(), lim.n_ctx, lim.max_token_bytes, lim.n_ctx - 1);
  }
  if (!r.prompt_tokens.empty() && !prompt_fits(int64_t(r.prompt_tokens.size()), lim.n_ctx))
    return prompt_too_long_message("prompt", int64_t(r.prompt_tokens.size()), lim.n_ctx);
  return std::nullopt;
}

std::optional<json> parse_json(std::string_view text, std::string& err) {
  try {
    return json::parse(text.begin(), text.end());
  } catch (const json::parse_error& e) {
    err = fmt::format("not valid JSON (byte {})", e.byte);
  } catch (const std::exception& e) {
    err = "not valid JSON";
  }
  return std::nullopt;
}

std::string fmt_ms(double v) { return fmt::format("{:.3f}", v); }

using ojson = nlohmann::ordered_json;

// The body again with its keys in the client's order, for the chat template (a
// template's tojson prints tools and arguments in that order, as Python's would).
std::optional<ojson> parse_ordered(std::string_view text, std::string& err) {
  try {
    return ojson::parse(text.begin(), text.end());
  } catch (const std::exception&) {
    err = "not valid JSON";
  }
  return std::nullopt;
}

bool o_absent(const ojson& o, const char* key) {
  auto it = o.find(key);
  return it == o.end() || it->is_null();
}

std::optional<std::string> o_get_bool(const ojson& o, const char* key, bool& out) {
  if (o_absent(o, key)) return std::nullopt;
  if (!o.at(key).is_boolean()) return fmt::format("{}: must be true or false", key);
  out = o.at(key).get<bool>();
  return std::nullopt;
}

// messages (+ tools, chat_template_kwargs, add_generation_prompt, continue_final_message)
// into the chat template's variables. agp_default: add_generation_prompt when absent.
std::optional<std::string> get_chat_input(const ojson& o, bool agp_default, chat_input& in) {
  if (o_absent(o, "messages")) return "messages: missing";
  const ojson& msgs = o.at("messages");
  if (!msgs.is_array() || msgs.empty()) return "messages: must be a non-empty array";
  ojson out = ojson::array();
  for (size_t i = 0; i < msgs.size(); ++i) {
    const ojson& m = msgs[i];
    if (!m.is_object()) return fmt::format("messages[{}]: must be an object", i);
    auto role = m.find("role");
    if (role == m.end() || !role->is_string() || role->get_ref<const std::string&>().empty())
      return fmt::format("messages[{}].role: missing (a string such as \"user\")", i);
    ojson msg = m;
    auto c = m.find("content");
    if (c != m.end() && c->is_array()) {
      std::string text;
      for (size_t k = 0; k < c->size(); ++k) {
        const ojson& part = (*c)[k];
        if (!part.is_object() || !part.contains("type") || !part["type"].is_string())
          return fmt::format("messages[{}].content[{}]: must be a {{\"type\": ...}} part", i, k);
        const auto& type = part["type"].get_ref<const std::string&>();
        if (type != "text")
          return fmt::format("messages[{}].content[{}].type: only \"text\" parts are supported, got \"{}\"", i, k, type);
        if (!part.contains("text") || !part["text"].is_string())
          return fmt::format("messages[{}].content[{}].text: must be a string", i, k);
        if (k) text += "\n";
        text += part["text"].get_ref<const std::string&>();
      }
      msg["content"] = text;
    } else if (c != m.end() && !c->is_string() && !c->is_null()) {
      return fmt::format("messages[{}].content: must be a string, null or an array of text parts", i);
    }
    out.push_back(std::move(msg));
  }
  ojson vars = ojson::object();
  vars["messages"] = std::move(out);
  // As transformers and vLLM call templates: tools (and documents) are None when not given,
  // so `tools is not none` and `tools is defined` read the same as there.
  vars["tools"] = nullptr;
  vars["documents"] = nullptr;
  if (!o_absent(o, "tools")) {
    if (!o.at("tools").is_array()) return "tools: must be an array";
    if (!o.at("tools").empty()) vars["tools"] = o.at("tools");
  }
  bool agp = agp_default;
  if (auto e = o_get_bool(o, "add_generation_prompt", agp)) return e;
  if (auto e = o_get_bool(o, "continue_final_message", in.continue_final_message)) return e;
  if (in.continue_final_message) {
    if (!o_absent(o, "add_generation_prompt") && agp)
      return "continue_final_message and add_generation_prompt: at most one of them can be true";
    agp = false;
  }
  vars["add_generation_prompt"] = agp;
  if (!o_absent(o, "chat_template_kwargs")) {
    const ojson& kw = o.at("chat_template_kwargs");
    if (!kw.is_object()) return "chat_template_kwargs: must be an object";
    for (auto it = kw.begin(); it != kw.end(); ++it) {
      if (it.key() == "messages" || it.key() == "tools")
        return fmt::format("chat_template_kwargs.{}: give it at the top level", it.key());
      vars[it.key()] = it.value();
    }
  }
  in.vars = std::move(vars);
  return std::nullopt;
}

}  // namespace

// ---- WebSocket v1 ---------------------------------------------------------------------

command parse_command(std::string_view frame, const protocol_limits& lim) {
  std::string err;
  auto doc = parse_json(frame, err);
  if (!doc) return invalid_request{std::nullopt, "frame is " + err};
  const json& o = *doc;
  if (!o.is_object()) return invalid_request{std::nullopt, "frame must be a JSON object"};

  std::optional<std::string> id;
  auto idit = o.find("id");
  if (idit != o.end() && idit->is_string()) {
    const auto& s = idit->get_ref<const std::string&>();
    if (!s.empty() && s.size() <= lim.max_id_bytes) id = s;
  }
  auto tit = o.find("type");
  if (tit == o.end()) return invalid_request{id, "type: missing"};
  if (!tit->is_string()) return invalid_request{id, "type: must be a string"};
  const auto& type = tit->get_ref<const std::string&>();
  if (type != "generate" && type != "cancel")
    return invalid_request{id, fmt::format("type: unknown type \"{}\" (generate, cancel)", type)};
  if (!id) {
    if (idit == o.end() || idit->is_null()) return invalid_request{std::nullopt, "id: missing"};
    if (!idit->is_string()) return invalid_request{std::nullopt, "id: must be a string"};
    return invalid_request{std::nullopt, fmt::format("id: must be 1 to {} bytes", lim.max_id_bytes)};
  }
  if (type == "cancel") return cancel_command{*id};

  generate_command cmd;
  cmd.id = *id;
  generate_request& r = cmd.request;
  r.sampling = sampling_params{};  // temperature 0: greedy unless asked
  bool has_text = !absent(o, "prompt"), has_ids = !absent(o, "prompt_tokens"), has_msgs = !absent(o, "messages");
  if (int(has_text) + int(has_ids) + int(has_msgs) > 1)
    return invalid_request{id, "prompt, prompt_tokens and messages: give one of them"};
  if (!has_text && !has_ids && !has_msgs) return invalid_request{id, "prompt: missing (or prompt_tokens, or messages)"};
  if (has_msgs) {
    std::string err2;
    auto od = parse_ordered(frame, err2);
    if (!od) return invalid_request{id, "frame is " + err2};
    chat_input in;
    if (auto e = get_chat_input(*od, true, in)) return invalid_request{id, *e};
    cmd.chat = std::move(in);
  } else if (has_text) {
    const json& p = o.at("prompt");
    if (!p.is_string()) return invalid_request{id, "prompt: must be a string"};
    r.prompt = p.get<std::string>();
    if (r.prompt.empty()) return invalid_request{id, "prompt: must not be empty"};
  } else {
    if (auto e = check_token_ids(o.at("prompt_tokens"), "prompt_tokens", lim.n_vocab, r.prompt_tokens))
      return invalid_request{id, *e};
    if (r.prompt_tokens.empty()) return invalid_request{id, "prompt_tokens: must not be empty"};
  }
  if (auto e = get_sampling(o, lim, r, frame)) return invalid_request{id, *e};
  if (!absent(o, "model")) {
    if (!o.at("model").is_string()) return invalid_request{id, "model: must be a string"};
    cmd.model = o.at("model").get<std::string>();
  }
  if (!absent(o, "priority")) {
    const json& p = o.at("priority");
    if (!p.is_string()) return invalid_request{id, "priority: must be a string"};
    const auto& s = p.get_ref<const std::string&>();
    if (s == "high") r.prio = priority::high;
    else if (s == "normal") r.prio = priority::normal;
    else if (s == "low") r.prio = priority::low;
    else return invalid_request{id, fmt::format("priority: must be high, normal or low, got \"{}\"", s)};
  }
  int64_t t = 0;
  if (auto e = get_int(o, "timeout_ms", 0, 24LL * 3600 * 1000, t)) return invalid_request{id, *e};
  r.timeout_ms = t;
  int64_t lp = -1;
  if (auto e = get_int(o, "logprobs", 0, sampling_params::max_logprobs, lp)) return invalid_request{id, *e};
  r.sampling.logprobs = int32_t(lp);
  int64_t n = 1;
  if (auto e = get_int(o, "n", 1, generate_request::max_n, n)) return invalid_request{id, *e};
  r.n = int32_t(n);
  if (auto e = check_min_tokens(r)) return invalid_request{id, *e};
  if (!cmd.chat)
    if (auto e = finish_prompt(lim, r)) return invalid_request{id, *e};
  return cmd;
}

void append_json_string(std::string& out, std::string_view s) {
  out.push_back('"');
  append_escaped(out, s, json_escape_rules);
  out.push_back('"');
}

std::string accepted_frame(std::string_view id) {
  std::string out = R"({"type":"accepted","id":)";
  append_json_string(out, id);
  out.push_back('}');
  return out;
}

namespace {
// A logprob as JSON: finite always (-inf, a token the model gives no mass, becomes -9999.0
// as in vLLM's JSON).
void append_logprob(std::string& out, float lp) {
  if (!std::isfinite(lp)) lp = -9999.0f;
  fmt::format_to(std::back_inserter(out), "{}", lp);
}
}  // namespace

void token_frame(std::string& out, std::string_view id, int32_t index, int32_t token, std::string_view text,
                 const event* lp) {
  out.clear();
  out += R"({"type":"token","id":)";
  append_json_string(out, id);
  if (lp && lp->n_choices > 1) fmt::format_to(std::back_inserter(out), R"(,"choice":{})", lp->choice);
  fmt::format_to(std::back_inserter(out), R"(,"index":{},"token":{},"text":)", index, token);
  append_json_string(out, text);
  if (lp && lp->n_choices > 1 && lp->choice_done)
    fmt::format_to(std::back_inserter(out), R"(,"finish_reason":"{}")", to_string(lp->reason));
  if (lp && lp->n_top >= 0) {
    out += R"(,"logprob":)";
    append_logprob(out, lp->logprob);
    out += R"(,"top_logprobs":[)";
    for (size_t j = 0; j < lp->top_logprobs.size(); ++j) {
      if (j) out.push_back(',');
      fmt::format_to(std::back_inserter(out), R"({{"token":{},"logprob":)", lp->top_logprobs[j].first);
      append_logprob(out, lp->top_logprobs[j].second);
      out.push_back('}');
    }
    out.push_back(']');
  }
  out.push_back('}');
}

void logprobs_builder::add(const event& e, const bytes_fn& token_bytes) {
  if (e.n_top < 0) return;
  const std::string_view tb = token_bytes(e.token);
  auto bytes_array = [](std::string& out, std::string_view b) {
    out.push_back('[');
    for (size_t i = 0; i < b.size(); ++i) {
      if (i) out.push_back(',');
      fmt::format_to(std::back_inserter(out), "{}", unsigned(static_cast<unsigned char>(b[i])));
    }
    out.push_back(']');
  };
  if (chat) {
    if (n) content.push_back(',');
    content += R"({"token":)";
    append_json_string(content, tb);
    content += R"(,"logprob":)";
    append_logprob(content, e.logprob);
    content += R"(,"bytes":)";
    bytes_array(content, tb);
    content += R"(,"top_logprobs":[)";
    for (size_t j = 0; j < e.top_logprobs.size(); ++j) {
      const std::string_view b = token_bytes(e.top_logprobs[j].first);
      if (j) content.push_back(',');
      content += R"({"token":)";
      append_json_string(content, b);
      content += R"(,"logprob":)";
      append_logprob(content, e.top_logprobs[j].second);
      content += R"(,"bytes":)";
      bytes_array(content, b);
      content.push_back('}');
    }
    content += "]}";
  } else {
    const char* sep = n ? "," : "";
    tokens += sep;
    append_json_string(tokens, tb);
    token_logprobs += sep;
    append_logprob(token_logprobs, e.logprob);
    text_offset += sep;
    fmt::format_to(std::back_inserter(text_offset), "{}", offset);
    // A dict keyed by token text: the sampled token, then the top k (a repeated string
    // keeps its first, higher, logprob).
    top_logprobs += sep;
    top_logprobs.push_back('{');
    std::vector<std::string> keys;
    auto put = [&](int32_t id, float lp) {
      std::string k;
      append_json_string(k, token_bytes(id));
      for (const auto& seen : keys)
        if (seen == k) return;
      if (!keys.empty()) top_logprobs.push_back(',');
      top_logprobs += k;
      top_logprobs.push_back(':');
      append_logprob(top_logprobs, lp);
      keys.push_back(std::move(k));
    };
    for (const auto& [id, lp] : e.top_logprobs) put(id, lp);
    put(e.token, e.logprob);
    top_logprobs.push_back('}');
  }
  offset += tb.size();
  ++n;
}

void logprobs_builder::add_prompt(const event& e, const bytes_fn& token_bytes) {
  const auto& ids = e.prompt_ids;
  if (ids.empty()) return;
  // The first prompt token has nothing before it: null, as OpenAI.
  const std::string_view tb = token_bytes(ids[0]);
  const char* sep = n ? "," : "";
  tokens += sep;
  append_json_string(tokens, tb);
  token_logprobs += sep;
  token_logprobs += "null";
  top_logprobs += sep;
  top_logprobs += "null";
  text_offset += sep;
  fmt::format_to(std::back_inserter(text_offset), "{}", offset);
  offset += tb.size();
  ++n;
  const size_t m = e.prompt_logprobs.size();
  const size_t k = m ? e.prompt_top.size() / m : 0;
  for (size_t j = 0; j < m && j + 1 < ids.size(); ++j) {
    event t;
    t.n_top = int32_t(k);
    t.token = ids[j + 1];
    t.logprob = e.prompt_logprobs[j];
    t.top_logprobs.assign(e.prompt_top.begin() + std::ptrdiff_t(j * k), e.prompt_top.begin() + std::ptrdiff_t((j + 1) * k));
    add(t, token_bytes);
  }
}

std::string logprobs_builder::json() const {
  if (chat) return R"({"content":[)" + content + R"(],"refusal":null})";
  return R"({"tokens":[)" + tokens + R"(],"token_logprobs":[)" + token_logprobs + R"(],"top_logprobs":[)" +
         top_logprobs + R"(],"text_offset":[)" + text_offset + "]}";
}

void logprobs_builder::clear_tokens() {
  n = 0;
  tokens.clear();
  token_logprobs.clear();
  top_logprobs.clear();
  text_offset.clear();
  content.clear();
}

// Degraded service is never silent: `,"degraded":["cpu_fallback","max_tokens_capped"]` and
// `,"max_tokens_capped_to":N` on a terminal message that was served degraded (nothing otherwise).
static void append_degradation(std::string& out, const event& e) {
  if (!e.degraded()) return;
  out += R"(,"degraded":[)";
  if (e.cpu_fallback) out += R"("cpu_fallback")";
  if (e.max_tokens_capped_to > 0) {
    if (e.cpu_fallback) out.push_back(',');
    out += R"("max_tokens_capped")";
  }
  out.push_back(']');
  if (e.max_tokens_capped_to > 0)
    fmt::format_to(std::back_inserter(out), R"(,"max_tokens_capped_to":{})", e.max_tokens_capped_to);
}

std::string done_frame(std::string_view id, const event& e) {
  std::string out = R"({"type":"done","id":)";
  append_json_string(out, id);
  fmt::format_to(std::back_inserter(out),
                 R"(,"finish_reason":"{}","usage":{{"prompt_tokens":{},"completion_tokens":{},)"
                 R"("prompt_tokens_details":{{"cached_tokens":{}}}}},)"
                 R"("timing_ms":{{"queue":{},"first_token":{},"total":{}}})",
                 to_string(e.reason), e.prompt_tokens, e.completion_tokens, e.cached_tokens, fmt_ms(e.queue_ms),
                 fmt_ms(e.first_token_ms), fmt_ms(e.total_ms));
  if (!e.choice_reasons.empty()) {  // n > 1
    out += R"(,"choices":[)";
    for (size_t i = 0; i < e.choice_reasons.size(); ++i)
      fmt::format_to(std::back_inserter(out), R"({}{{"index":{},"finish_reason":"{}","completion_tokens":{}}})",
                     i ? "," : "", i, to_string(e.choice_reasons[i]),
                     i < e.choice_tokens.size() ? e.choice_tokens[i] : 0);
    out.push_back(']');
  }
  append_degradation(out, e);
  out.push_back('}');
  return out;
}

std::string error_frame(const std::optional<std::string>& id, error_code c, std::string_view message,
                        int64_t retry_after_ms) {
  std::string out = R"({"type":"error","id":)";
  if (id) append_json_string(out, *id);
  else out += "null";
  fmt::format_to(std::back_inserter(out), R"(,"code":"{}","message":)", to_string(c));
  append_json_string(out, message);
  if (c == error_code::rate_limited || c == error_code::overloaded)
    fmt::format_to(std::back_inserter(out), R"(,"retry_after_ms":{})", std::max<int64_t>(retry_after_ms, 0));
  out.push_back('}');
  return out;
}

std::string model_not_found_message(std::string_view asked, const std::vector<std::string>& served) {
  std::string names;
  for (const auto& n : served) names += (names.empty() ? "" : ", ") + n;
  return fmt::format("The model `{}` does not exist (served: {})", asked, names);
}

std::string model_not_found_json(std::string_view message) {
  std::string out = R"({"error":{"message":)";
  append_json_string(out, message);
  out += R"(,"type":"invalid_request_error","param":"model","code":"model_not_found"}})";
  return out;
}

std::string model_not_found_frame(std::string_view id, std::string_view message) {
  std::string out = R"({"type":"error","id":)";
  append_json_string(out, id);
  out += R"(,"code":"model_not_found","message":)";
  append_json_string(out, message);
  out.push_back('}');
  return out;
}

std::string event_frame(std::string_view id, const event& e) {
  switch (e.type) {
    case event::kind::accepted: return accepted_frame(id);
    case event::kind::token: {
      std::string out;
      token_frame(out, id, e.index, e.token, e.text, &e);
      return out;
    }
    case event::kind::done: return done_frame(id, e);
    case event::kind::error: return error_frame(std::string(id), e.code, e.message, e.retry_after_ms);
  }
  return {};
}

// ---- OpenAI completions -----------------------------------------------------------------

std::variant<completion_command, invalid_request> parse_completion_request(std::string_view body,
                                                                           const protocol_limits& lim) {
  std::string err;
  auto doc = parse_json(body, err);
  if (!doc) return invalid_request{std::nullopt, "body is " + err};
  const json& o = *doc;
  if (!o.is_object()) return invalid_request{std::nullopt, "body must be a JSON object"};
  completion_command cmd;
  generate_request& r = cmd.request;
  r.sampling = sampling_params{};
  r.sampling.temperature = lim.default_temperature.value_or(1.0f);  // OpenAI's default
  r.sampling.top_p = lim.default_top_p.value_or(1.0f);
  r.sampling.top_k = lim.default_top_k.value_or(0);

  if (absent(o, "prompt")) return invalid_request{std::nullopt, "prompt: missing"};
  const json& p = o.at("prompt");
  if (p.is_string()) {
    r.prompt = p.get<std::string>();
  } else if (p.is_array() && p.size() == 1 && p[0].is_string()) {
    r.prompt = p[0].get<std::string>();
  } else if (p.is_array() && p.size() == 1 && p[0].is_array()) {
    if (auto e = check_token_ids(p[0], "prompt[0]", lim.n_vocab, r.prompt_tokens)) return invalid_request{{}, *e};
  } else if (p.is_array() && !p.empty() && p[0].is_number()) {
    if (auto e = check_token_ids(p, "prompt", lim.n_vocab, r.prompt_tokens)) return invalid_request{{}, *e};
  } else if (p.is_array() && p.size() > 1) {
    return invalid_request{std::nullopt, "prompt: batches of prompts are not supported; send one per request"};
  } else {
    return invalid_request{std::nullopt, "prompt: must be a string or an array of token ids"};
  }
  if (r.prompt.empty() && r.prompt_tokens.empty()) return invalid_request{std::nullopt, "prompt: must not be empty"};

  if (auto e = get_sampling(o, lim, r, body)) return invalid_request{std::nullopt, *e};
  if (auto e = check_unimplemented_vllm(o)) return invalid_request{std::nullopt, *e};
  // As on the WebSocket (an extension: OpenAI has no such field); 0: the server's default.
  int64_t timeout = 0;
  if (auto e = get_int(o, "timeout_ms", 0, 24LL * 3600 * 1000, timeout)) return invalid_request{std::nullopt, *e};
  r.timeout_ms = timeout;
  int64_t n = 1;
  if (auto e = get_int(o, "n", 1, generate_request::max_n, n)) return invalid_request{std::nullopt, *e};
  r.n = int32_t(n);
  if (auto e = check_best_of(o)) return invalid_request{std::nullopt, *e};
  if (auto e = check_min_tokens(r)) return invalid_request{std::nullopt, *e};
  if (auto e = get_bool(o, "echo", cmd.echo)) return invalid_request{std::nullopt, *e};
  if (!absent(o, "logprobs")) {
    const json& l = o.at("logprobs");
    if (l.is_boolean() && !l.get<bool>()) {
      // false: none, as an absent field (some clients send it)
    } else {
      int64_t k = 0;
      if (auto e = get_int(o, "logprobs", 0, sampling_params::max_logprobs, k)) return invalid_request{std::nullopt, *e};
      r.sampling.logprobs = int32_t(k);
    }
  }
  // echo with logprobs: the prompt's tokens get theirs too (vLLM's prompt_logprobs).
  r.prompt_logprobs = cmd.echo && r.sampling.logprobs >= 0;
  if (!absent(o, "suffix")) {
    const json& sf = o.at("suffix");
    if (!sf.is_string()) return invalid_request{std::nullopt, "suffix: must be a string"};
    if (!sf.get_ref<const std::string&>().empty())
      return invalid_request{std::nullopt, "suffix: not supported (no insertion / fill-in-the-middle)"};
  }
  if (auto e = get_bool(o, "stream", cmd.stream)) return invalid_request{std::nullopt, *e};
  if (!absent(o, "stream_options")) {
    const json& so = o.at("stream_options");
    if (!so.is_object()) return invalid_request{std::nullopt, "stream_options: must be an object"};
    if (auto e = get_bool(so, "include_usage", cmd.include_usage)) return invalid_request{std::nullopt, *e};
  }
  if (!absent(o, "model")) {
    if (!o.at("model").is_string()) return invalid_request{std::nullopt, "model: must be a string"};
    cmd.model = o.at("model").get<std::string>();
  }
  cmd.seeded = !absent(o, "seed");
  if (auto e = finish_prompt(lim, r)) return invalid_request{std::nullopt, *e};
  return cmd;
}

int http_status(error_code c) {
  switch (c) {
    case error_code::invalid_request: return 400;
    case error_code::overloaded:
    case error_code::rate_limited: return 429;
    case error_code::unavailable: return 503;
    case error_code::timeout: return 504;
    case error_code::internal: return 500;
  }
  return 500;
}

std::string openai_error_json(error_code c, std::string_view message, int64_t retry_after_ms) {
  const char* type = "server_error";
  switch (c) {
    case error_code::invalid_request: type = "invalid_request_error"; break;
    case error_code::overloaded:
    case error_code::rate_limited: type = "rate_limit_error"; break;
    case error_code::unavailable: type = "service_unavailable"; break;
    case error_code::timeout: type = "timeout"; break;
    case error_code::internal: type = "server_error"; break;
  }
  std::string out = R"({"error":{"message":)";
  append_json_string(out, message);
  // The field a validation message names ("top_p: must be ...", "logit_bias: ...",
  // "messages[2].role: ..."): OpenAI clients read it from `param`.
  std::string_view param;
  if (c == error_code::invalid_request) {
    size_t k = 0;
    while (k < message.size() && (std::isalnum(static_cast<unsigned char>(message[k])) || message[k] == '_')) ++k;
    size_t j = k;
    while (j < message.size() && (std::isalnum(static_cast<unsigned char>(message[j])) || message[j] == '_' ||
                                  message[j] == '[' || message[j] == ']' || message[j] == '.'))
      ++j;
    if (k > 0 && j < message.size() && message[j] == ':' && !std::isdigit(static_cast<unsigned char>(message[0])))
      param = message.substr(0, k);
  }
  fmt::format_to(std::back_inserter(out), R"(,"type":"{}","param":)", type);
  if (param.empty()) out += "null";
  else append_json_string(out, param);
  fmt::format_to(std::back_inserter(out), R"(,"code":"{}")", to_string(c));
  if (retry_after_ms > 0) fmt::format_to(std::back_inserter(out), R"(,"retry_after_ms":{})", retry_after_ms);
  out += "}}";
  return out;
}

namespace {
const char* openai_finish(finish_reason r) { return r == finish_reason::length ? "length" : "stop"; }

void append_head(std::string& out, std::string_view cmpl_id, int64_t created, std::string_view model) {
  out += R"({"id":)";
  append_json_string(out, cmpl_id);
  fmt::format_to(std::back_inserter(out), R"(,"object":"text_completion","created":{},"model":)", created);
  append_json_string(out, model);
}
}  // namespace

namespace {
// Choice i's finish reason: its own (n > 1) or the request's.
finish_reason choice_reason(const event& done, size_t i) {
  return i < done.choice_reasons.size() ? done.choice_reasons[i] : done.reason;
}
}  // namespace

std::string openai_completion_json(std::string_view cmpl_id, int64_t created, std::string_view model,
                                   std::span<const std::string> texts, const event& done,
                                   std::span<const std::string> logprobs) {
  std::string out;
  append_head(out, cmpl_id, created, model);
  out += R"(,"choices":[)";
  for (size_t i = 0; i < texts.size(); ++i) {
    if (i) out.push_back(',');
    out += R"({"text":)";
    append_json_string(out, texts[i]);
    fmt::format_to(std::back_inserter(out), R"(,"index":{},"logprobs":)", i);
    out += i < logprobs.size() && !logprobs[i].empty() ? std::string_view(logprobs[i]) : std::string_view("null");
    fmt::format_to(std::back_inserter(out), R"(,"finish_reason":"{}"}})", openai_finish(choice_reason(done, i)));
  }
  fmt::format_to(std::back_inserter(out),
                 R"(],"usage":{{"prompt_tokens":{},"completion_tokens":{},"total_tokens":{},)"
                 R"("prompt_tokens_details":{{"cached_tokens":{}}}}})",
                 done.prompt_tokens, done.completion_tokens, done.prompt_tokens + done.completion_tokens,
                 done.cached_tokens);
  append_degradation(out, done);
  out.push_back('}');
  return out;
}

std::string openai_completion_json(std::string_view cmpl_id, int64_t created, std::string_view model,
                                   std::string_view text, const event& done, std::string_view logprobs) {
  const std::string t(text), l(logprobs);
  return openai_completion_json(cmpl_id, created, model, std::span<const std::string>(&t, 1), done,
                                std::span<const std::string>(&l, 1));
}

std::string openai_chunk_json(std::string_view cmpl_id, int64_t created, std::string_view model,
                              std::string_view text, const char* finish, std::string_view logprobs, int32_t index) {
  std::string out;
  append_head(out, cmpl_id, created, model);
  out += R"(,"choices":[{"text":)";
  append_json_string(out, text);
  fmt::format_to(std::back_inserter(out), R"(,"index":{},"logprobs":)", index);
  out += logprobs.empty() ? std::string_view("null") : logprobs;
  out += R"(,"finish_reason":)";
  if (finish) fmt::format_to(std::back_inserter(out), R"("{}")", finish);
  else out += "null";
  out += "}]}";
  return out;
}

std::string openai_final_chunk_json(std::string_view cmpl_id, int64_t created, std::string_view model,
                                    const event& done, int32_t index) {
  std::string out =
      openai_chunk_json(cmpl_id, created, model, "", openai_finish(choice_reason(done, size_t(index))), {}, index);
  out.pop_back();  // the closing brace: the degradation fields go at the top level
  append_degradation(out, done);
  out.push_back('}');
  return out;
}

std::string openai_usage_chunk_json(std::string_view cmpl_id, int64_t created, std::string_view model,
                                    const event& done) {
  std::string out;
  append_head(out, cmpl_id, created, model);
  fmt::format_to(std::back_inserter(out),
                 R"(,"choices":[],"usage":{{"prompt_tokens":{},"completion_tokens":{},"total_tokens":{},)"
                 R"("prompt_tokens_details":{{"cached_tokens":{}}}}}}})",
                 done.prompt_tokens, done.completion_tokens, done.prompt_tokens + done.completion_tokens,
                 done.cached_tokens);
  return out;
}

// ---- OpenAI chat completions ------------------------------------------------------------

std::variant<chat_command, invalid_request> parse_chat_request(std::string_view body, const protocol_limits& lim) {
  std::string err;
  auto doc = parse_json(body, err);
  if (!doc) return invalid_request{std::nullopt, "body is " + err};
  const json& o = *doc;
  if (!o.is_object()) return invalid_request{std::nullopt, "body must be a JSON object"};
  chat_command cmd;
  generate_request& r = cmd.request;
  r.sampling = sampling_params{};
  r.sampling.temperature = lim.default_temperature.value_or(1.0f);  // OpenAI's default
  r.sampling.top_p = lim.default_top_p.value_or(1.0f);
  r.sampling.top_k = lim.default_top_k.value_or(0);
  if (absent(o, "messages")) return invalid_request{std::nullopt, "messages: missing"};
  if (!absent(o, "prompt")) return invalid_request{std::nullopt, "prompt: not a chat field (use messages, or /v1/completions)"};
  // Fields of OpenAI's chat API this server has no part for: refused, never dropped.
  for (const char* key : {"audio", "prediction", "functions", "function_call", "web_search_options", "reasoning_effort",
                          "verbosity"})
    if (!absent(o, key)) return invalid_request{std::nullopt, fmt::format("{}: not supported", key)};
  bool store = false;
  if (auto e = get_bool(o, "store", store)) return invalid_request{std::nullopt, *e};
  if (store) return invalid_request{std::nullopt, "store: completions are not stored here"};
  if (!absent(o, "modalities")) {
    const json& m = o.at("modalities");
    if (!(m.is_array() && m.size() == 1 && m[0] == "text"))
      return invalid_request{std::nullopt, "modalities: only [\"text\"] is supported"};
  }
  if (auto e = get_sampling(o, lim, r, body)) return invalid_request{std::nullopt, *e};
  if (auto e = check_unimplemented_vllm(o)) return invalid_request{std::nullopt, *e};
  int64_t i = 0;
  if (!absent(o, "max_completion_tokens")) {  // OpenAI's newer name wins over max_tokens
    if (auto e = get_int(o, "max_completion_tokens", 1, lim.max_tokens_limit, i)) return invalid_request{std::nullopt, *e};
    r.max_tokens = int32_t(i);
  }
  if (auto e = check_min_tokens(r)) return invalid_request{std::nullopt, *e};
  int64_t n = 1;
  if (auto e = get_int(o, "n", 1, generate_request::max_n, n)) return invalid_request{std::nullopt, *e};
  r.n = int32_t(n);
  if (auto e = check_best_of(o)) return invalid_request{std::nullopt, *e};
  bool lp = false;
  if (auto e = get_bool(o, "logprobs", lp)) return invalid_request{std::nullopt, *e};
  int64_t top = 0;
  if (auto e = get_int(o, "top_logprobs", 0, sampling_params::max_logprobs, top)) return invalid_request{std::nullopt, *e};
  if (!absent(o, "top_logprobs") && !lp)
    return invalid_request{std::nullopt, "top_logprobs: needs logprobs: true"};
  if (lp) r.sampling.logprobs = int32_t(top);
  if (!absent(o, "tool_choice")) {
    const json& tc = o.at("tool_choice");
    if (!(tc.is_string() && (tc.get<std::string>() == "none" || tc.get<std::string>() == "auto")))
      return invalid_request{std::nullopt,
                             "tool_choice: only \"none\" and \"auto\" are supported (tool calls come back as text)"};
  }
  if (auto e = get_bool(o, "stream", cmd.stream)) return invalid_request{std::nullopt, *e};
  if (!absent(o, "stream_options")) {
    const json& so = o.at("stream_options");
    if (!so.is_object()) return invalid_request{std::nullopt, "stream_options: must be an object"};
    if (auto e = get_bool(so, "include_usage", cmd.include_usage)) return invalid_request{std::nullopt, *e};
  }
  if (!absent(o, "model")) {
    if (!o.at("model").is_string()) return invalid_request{std::nullopt, "model: must be a string"};
    cmd.model = o.at("model").get<std::string>();
  }
  cmd.seeded = !absent(o, "seed");
  auto od = parse_ordered(body, err);
  if (!od) return invalid_request{std::nullopt, "body is " + err};
  if (auto e = get_chat_input(*od, true, cmd.chat)) return invalid_request{std::nullopt, *e};
  return cmd;
}

namespace {
void append_chat_head(std::string& out, std::string_view id, int64_t created, std::string_view model, bool chunk) {
  out += R"({"id":)";
  append_json_string(out, id);
  fmt::format_to(std::back_inserter(out), R"(,"object":"{}","created":{},"model":)",
                 chunk ? "chat.completion.chunk" : "chat.completion", created);
  append_json_string(out, model);
}
void append_usage(std::string& out, const event& done) {
  fmt::format_to(std::back_inserter(out), R"("usage":{{"prompt_tokens":{},"completion_tokens":{},"total_tokens":{}}})",
                 done.prompt_tokens, done.completion_tokens, done.prompt_tokens + done.completion_tokens);
}
}  // namespace

std::string openai_chat_json(std::string_view id, int64_t created, std::string_view model,
                             std::span<const std::string> texts, const event& done,
                             std::span<const std::string> logprobs) {
  std::string out;
  append_chat_head(out, id, created, model, false);
  out += R"(,"choices":[)";
  for (size_t i = 0; i < texts.size(); ++i) {
    if (i) out.push_back(',');
    fmt::format_to(std::back_inserter(out), R"({{"index":{},"message":{{"role":"assistant","content":)", i);
    append_json_string(out, texts[i]);
    out += R"(},"logprobs":)";
    out += i < logprobs.size() && !logprobs[i].empty() ? std::string_view(logprobs[i]) : std::string_view("null");
    fmt::format_to(std::back_inserter(out), R"(,"finish_reason":"{}"}})", openai_finish(choice_reason(done, i)));
  }
  out += "],";
  append_usage(out, done);
  append_degradation(out, done);
  out.push_back('}');
  return out;
}

std::string openai_chat_json(std::string_view id, int64_t created, std::string_view model, std::string_view text,
                             const event& done, std::string_view logprobs) {
  const std::string t(text), l(logprobs);
  return openai_chat_json(id, created, model, std::span<const std::string>(&t, 1), done,
                          std::span<const std::string>(&l, 1));
}

std::string openai_chat_chunk_json(std::string_view id, int64_t created, std::string_view model, bool role,
                                   std::string_view text, const char* finish, std::string_view logprobs,
                                   int32_t index) {
  std::string out;
  append_chat_head(out, id, created, model, true);
  fmt::format_to(std::back_inserter(out), R"(,"choices":[{{"index":{},"delta":{{)", index);
  if (role) out += R"("role":"assistant",)";
  if (!finish) {
    out += R"("content":)";
    append_json_string(out, text);
  } else if (role) {
    out.pop_back();
  }
  out += R"(},"logprobs":)";
  out += logprobs.empty() ? std::string_view("null") : logprobs;
  out += R"(,"finish_reason":)";
  if (finish) fmt::format_to(std::back_inserter(out), R"("{}")", finish);
  else out += "null";
  out += "}]}";
  return out;
}

std::string openai_chat_final_chunk_json(std::string_view id, int64_t created, std::string_view model,
                                         const event& done, int32_t index) {
  std::string out = openai_chat_chunk_json(id, created, model, false, "",
                                           openai_finish(choice_reason(done, size_t(index))), {}, index);
  out.pop_back();
  append_degradation(out, done);
  out.push_back('}');
  return out;
}

std::string openai_chat_usage_chunk_json(std::string_view id, int64_t created, std::string_view model,
                                         const event& done) {
  std::string out;
  append_chat_head(out, id, created, model, true);
  out += R"(,"choices":[],)";
  append_usage(out, done);
  out.push_back('}');
  return out;
}

// ---- vLLM tokenize / detokenize -----------------------------------------------------------

std::variant<tokenize_command, invalid_request> parse_tokenize_command(std::string_view body) {
  std::string err;
  auto doc = parse_ordered(body, err);
  if (!doc) return invalid_request{std::nullopt, "body is " + err};
  const ojson& o = *doc;
  if (!o.is_object()) return invalid_request{std::nullopt, "body must be a JSON object"};
  tokenize_command cmd;
  const bool has_msgs = !o_absent(o, "messages");
  const char* key = !o_absent(o, "prompt") ? "prompt" : !o_absent(o, "text") ? "text" : nullptr;
  if (has_msgs && key) return invalid_request{std::nullopt, fmt::format("{} and messages: give one, not both", key)};
  if (!has_msgs && !key) return invalid_request{std::nullopt, "prompt: missing (or messages)"};
  cmd.add_special_tokens = !has_msgs;  // vLLM: a chat template writes its own BOS
  if (auto e = o_get_bool(o, "add_special_tokens", cmd.add_special_tokens)) return invalid_request{std::nullopt, *e};
  if (has_msgs) {
    chat_input in;
    if (auto e = get_chat_input(o, true, in)) return invalid_request{std::nullopt, *e};
    cmd.chat = std::move(in);
    return cmd;
  }
  if (!o.at(key).is_string()) return invalid_request{std::nullopt, fmt::format("{}: must be a string", key)};
  cmd.prompt = o.at(key).get<std::string>();
  return cmd;
}

std::variant<std::string, invalid_request> parse_tokenize_request(std::string_view body) {
  std::string err;
  auto doc = parse_json(body, err);
  if (!doc) return invalid_request{std::nullopt, "body is " + err};
  const json& o = *doc;
  if (!o.is_object()) return invalid_request{std::nullopt, "body must be a JSON object"};
  const char* key = !absent(o, "prompt") ? "prompt" : !absent(o, "text") ? "text" : nullptr;
  if (!key) return invalid_request{std::nullopt, "prompt: missing"};
  if (!o.at(key).is_string()) return invalid_request{std::nullopt, fmt::format("{}: must be a string", key)};
  return o.at(key).get<std::string>();
}

std::string tokenize_response_json(std::span<const int32_t> tokens, int32_t n_ctx) {
  std::string out = R"({"tokens":[)";
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (i) out.push_back(',');
    fmt::format_to(std::back_inserter(out), "{}", tokens[i]);
  }
  fmt::format_to(std::back_inserter(out), R"(],"count":{},"max_model_len":{}}})", tokens.size(), n_ctx);
  return out;
}

std::variant<std::vector<int32_t>, invalid_request> parse_detokenize_request(std::string_view body,
                                                                             int32_t n_vocab) {
  std::string err;
  auto doc = parse_json(body, err);
  if (!doc) return invalid_request{std::nullopt, "body is " + err};
  const json& o = *doc;
  if (!o.is_object()) return invalid_request{std::nullopt, "body must be a JSON object"};
  if (absent(o, "tokens")) return invalid_request{std::nullopt, "tokens: missing"};
  std::vector<int32_t> ids;
  if (auto e = check_token_ids(o.at("tokens"), "tokens", n_vocab, ids)) return invalid_request{std::nullopt, *e};
  return ids;
}

std::string detokenize_response_json(std::string_view text) {
  std::string out = R"({"prompt":)";
  append_json_string(out, text);
  out.push_back('}');
  return out;
}

}  // namespace infer::net
