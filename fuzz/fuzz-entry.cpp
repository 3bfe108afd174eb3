#include "fuzz/fuzz-entry.hpp"

#include <cmath>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "config/service-config.hpp"
#include "base/safetensors.hpp"
#include "net/protocol.hpp"

namespace infer {
namespace {

using json = nlohmann::json;

bool fail(const char* what, const std::string& detail = {}) {
  std::fprintf(stderr, "fuzz: broken promise: %s%s%s\n", what, detail.empty() ? "" : ": ",
               detail.substr(0, 400).c_str());
  return false;
}

// A frame the server sends must be one JSON object, whatever bytes went into it.
bool json_object(const std::string& text, json* out = nullptr) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return false;
  if (out) *out = std::move(j);
  return true;
}

// ---- protocol ------------------------------------------------------------------------

// Two sets of limits: the defaults with text prompts passed on unencoded, and tight ones
// with a byte-per-token encoder so that the length, stop and id bounds are reachable by
// short inputs.
const net::protocol_limits& limits(bool tight) {
  static const net::protocol_limits loose{};
  static const net::protocol_limits small = [] {
    net::protocol_limits l;
    l.n_ctx = 8;
    l.n_vocab = 300;
    l.max_tokens_default = 4;
    l.max_tokens_limit = 64;
    l.max_id_bytes = 8;
    l.max_stop = 2;
    l.max_stop_bytes = 8;
    l.encode = [](std::string_view s) {
      std::vector<int32_t> ids;
      for (unsigned char c : s) ids.push_back(int32_t(c));
      return ids;
    };
    return l;
  }();
  return tight ? small : loose;
}

// chat: the prompt comes later, from the chat template (messages were checked instead).
bool check_request(const generate_request& r, const net::protocol_limits& lim, bool chat = false) {
  if (!chat && r.prompt.empty() && r.prompt_tokens.empty()) return fail("accepted an empty prompt");
  if (!chat && lim.encode && r.prompt_tokens.empty()) return fail("text prompt left unencoded");
  for (int32_t t : r.stop_token_ids)
    if (t < 0 || t >= lim.n_vocab) return fail("stop token id outside the vocabulary", std::to_string(t));
  if (r.grammar) {  // an accepted constraint passed its check and its key reads back the same
    if (status s = r.grammar->check(); !s) return fail("accepted a constraint that fails its check", s.message);
    auto k = grammar::grammar_spec::from_key(r.grammar->key());
    if (!k || k.value().key() != r.grammar->key()) return fail("constraint key does not read back");
  }
  for (int32_t t : r.prompt_tokens)
    if (t < 0 || t >= lim.n_vocab) return fail("token id outside the vocabulary", std::to_string(t));
  if (int64_t(r.prompt_tokens.size()) >= lim.n_ctx) return fail("prompt leaves no room in the context");
  if (r.max_tokens < 1 || r.max_tokens > lim.max_tokens_limit)
    return fail("max_tokens out of range", std::to_string(r.max_tokens));
  if (!std::isfinite(r.sampling.temperature) || r.sampling.temperature < 0)
    return fail("temperature not finite and >= 0", std::to_string(r.sampling.temperature));
  if (!(r.sampling.top_p > 0 && r.sampling.top_p <= 1)) return fail("top_p outside (0, 1]");
  if (r.sampling.top_k < 0) return fail("negative top_k");
  if (r.stop.size() > lim.max_stop) return fail("too many stop sequences");
  for (const auto& s : r.stop)
    if (s.empty() || s.size() > lim.max_stop_bytes) return fail("stop sequence length out of range");
  if (r.timeout_ms < 0 || r.timeout_ms > 24LL * 3600 * 1000) return fail("timeout_ms out of range");
  return true;
}

bool check_invalid(const net::invalid_request& bad, const net::protocol_limits& lim) {
  if (bad.message.empty()) return fail("invalid_request without a message");
  if (bad.id && (bad.id->empty() || bad.id->size() > lim.max_id_bytes)) return fail("unusable id echoed");
  if (!json_object(net::error_frame(bad.id, error_code::invalid_request, bad.message)))
    return fail("error frame is not a JSON object", bad.message);
  if (!json_object(net::openai_error_json(error_code::invalid_request, bad.message)))
    return fail("OpenAI error body is not a JSON object", bad.message);
  return true;
}

bool protocol_command(std::string_view text, const net::protocol_limits& lim) {
  auto cmd = net::parse_command(text, lim);
  if (auto* bad = std::get_if<net::invalid_request>(&cmd)) return check_invalid(*bad, lim);
  const std::string& id = std::holds_alternative<net::generate_command>(cmd)
                              ? std::get<net::generate_command>(cmd).id
                              : std::get<net::cancel_command>(cmd).id;
  if (id.empty() || id.size() > lim.max_id_bytes) return fail("command id length out of range");
  json frame;
  if (!json_object(net::accepted_frame(id), &frame)) return fail("accepted frame is not a JSON object");
  // The id came out of a JSON string, so it is valid UTF-8 and must come back unchanged.
  if (!frame["id"].is_string() || frame["id"].get<std::string>() != id) return fail("id not echoed verbatim");
  if (auto* gen = std::get_if<net::generate_command>(&cmd)) {
    if (!check_request(gen->request, lim, gen->chat.has_value())) return false;
    if (gen->chat) {
      const auto& msgs = gen->chat->vars["messages"];
      if (!msgs.is_array() || msgs.empty()) return fail("chat accepted without messages");
      for (const auto& m : msgs)
        if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) return fail("chat message without a role");
    }
    std::string out;
    net::token_frame(out, id, 0, 0, gen->request.prompt);
    if (!json_object(out)) return fail("token frame is not a JSON object");
  }
  return true;
}

bool protocol_completion(std::string_view text, const net::protocol_limits& lim) {
  auto cmd = net::parse_completion_request(text, lim);
  if (auto* bad = std::get_if<net::invalid_request>(&cmd)) {
    if (bad->id) return fail("completion error with an id");
    return check_invalid(*bad, lim);
  }
  const auto& c = std::get<net::completion_command>(cmd);
  if (!check_request(c.request, lim)) return false;
  event done;
  done.type = event::kind::done;
  json body;
  if (!json_object(net::openai_completion_json("cmpl-1", 1, c.model, c.request.prompt, done), &body))
    return fail("completion body is not a JSON object");
  if (body["model"] != c.model) return fail("model not echoed verbatim");
  if (!json_object(net::openai_chunk_json("cmpl-1", 1, c.model, c.request.prompt, nullptr)))
    return fail("SSE chunk is not a JSON object");
  return true;
}

bool protocol_tokenize(std::string_view text) {
  auto r = net::parse_tokenize_request(text);
  if (auto* bad = std::get_if<net::invalid_request>(&r)) return check_invalid(*bad, limits(false));
  const auto& prompt = std::get<std::string>(r);
  json body;
  if (!json_object(net::detokenize_response_json(prompt), &body) || body["prompt"] != prompt)
    return fail("prompt does not round-trip through a response body");
  return true;
}

bool protocol_detokenize(std::string_view text, const net::protocol_limits& lim) {
  auto r = net::parse_detokenize_request(text, lim.n_vocab);
  if (auto* bad = std::get_if<net::invalid_request>(&r)) return check_invalid(*bad, lim);
  const auto& ids = std::get<std::vector<int32_t>>(r);
  for (int32_t t : ids)
    if (t < 0 || t >= lim.n_vocab) return fail("token id outside the vocabulary", std::to_string(t));
  json body;
  if (!json_object(net::tokenize_response_json(ids, lim.n_ctx), &body) || body["count"] != ids.size() ||
      body["tokens"] != json(ids))
    return fail("ids do not round-trip through a response body");
  return true;
}

// append_json_string: always one JSON string; valid UTF-8 comes back byte for byte and
// invalid UTF-8 (which nlohmann refuses to serialize) does not.
bool protocol_json_string(std::string_view text) {
  std::string out;
  net::append_json_string(out, text);
  json j = json::parse(out, nullptr, false);
  if (j.is_discarded() || !j.is_string()) return fail("append_json_string output is not a JSON string");
  bool valid_utf8 = true;
  try {
    (void)json(std::string(text)).dump();
  } catch (const json::type_error&) {
    valid_utf8 = false;
  }
  if (valid_utf8 != (j.get<std::string>() == text))
    return fail(valid_utf8 ? "valid UTF-8 was altered" : "invalid UTF-8 passed through");
  return true;
}

// ---- safetensors ---------------------------------------------------------------------

bool safetensors_value(const safetensors_file& f) {
  const auto* base = static_cast<const unsigned char*>(f.mapping().get());
  if (!base) return fail("no mapping");
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | base[i];
  const unsigned char* data_begin = base + 8 + hlen;
  const unsigned char* end = base + f.file_size();
  const auto& ts = f.tensors();
  if (f.names().size() != ts.size()) return fail("names() and tensors() disagree");
  const unsigned char* prev = nullptr;
  std::vector<float> buf;
  for (const auto& t : ts) {
    const auto* p = static_cast<const unsigned char*>(t.data);
    if (p < data_begin || p > end || t.nbytes > size_t(end - p)) return fail("tensor outside the data section", t.name);
    if (t.nbytes != size_t(t.numel()) * st_dtype_size(t.dtype)) return fail("nbytes != numel * dtype size", t.name);
    if (prev && p < prev) return fail("tensors not in data-offset order", t.name);
    prev = p;
    if (f.find(t.name) != &t) return fail("find() does not return the tensor", t.name);
    buf.assign(size_t(t.numel()), 0.0f);
    status st = st_to_f32(t, buf.data(), f.path());
    if (bool(st) != st_dtype_supported(t.dtype)) return fail("st_to_f32 and st_dtype_supported disagree", t.name);
    if (!st && st.message.empty()) return fail("st_to_f32 error without a message");
  }
  if (f.find("__metadata__")) return fail("__metadata__ indexed as a tensor");
  return true;
}

}  // namespace

bool fuzz_protocol(const uint8_t* data, size_t size) {
  if (size == 0) return true;
  const uint8_t sel = data[0];
  std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  const auto& lim = limits((sel / 5) % 2 == 1);
  switch (sel % 5) {
    case 0: return protocol_command(text, lim);
    case 1: return protocol_completion(text, lim);
    case 2: return protocol_tokenize(text);
    case 3: return protocol_detokenize(text, lim);
    default: return protocol_json_string(text);
  }
}

bool fuzz_config(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto cfg = parse_service_config(text, "fuzz.toml");
  if (!cfg) {
    if (cfg.error().message.empty()) return fail("config error without a message");
    return true;
  }
  status st = validate(*cfg);
  if (!st && st.message.empty()) return fail("validation error without a message");
  if (st && !parse_listen_address(cfg->listen)) return fail("validated a listen address that does not parse");
  // format_service_config promises text that reads back to an equal config. NaN is the
  // one value that cannot compare equal to itself (validate rejects it).
  const std::string formatted = format_service_config(*cfg);
  auto again = parse_service_config(formatted, "formatted");
  if (!again) return fail("formatted config does not parse", again.error().message);
  service_config a = *cfg, b = *again;
  if (std::isnan(a.fault_rate) && std::isnan(b.fault_rate)) a.fault_rate = b.fault_rate = 0;
  if (!(a == b)) return fail("formatted config reads back different", formatted);
  return true;
}

bool fuzz_safetensors(const uint8_t* data, size_t size) {
  auto f = safetensors_file::from_memory(data, size, "fuzz.safetensors");
  if (!f) {
    if (f.error().message.empty()) return fail("safetensors error without a message");
    return true;
  }
  return safetensors_value(*f);
}

}  // namespace infer
