// tokenizer.json (the Hugging Face tokenizers format): loading, the encode pipeline,
// and the model folder's tokenizer_config.json / generation_config.json.
#include <utf8proc.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "tokenizer/impl.hpp"

namespace infer {

using json = nlohmann::json;
using namespace tok_detail;

namespace tok_detail {

void added_trie::insert(std::string_view s, int32_t token) {
  int32_t n = 0;
  for (char ch : s) {
    const uint8_t c = uint8_t(ch);
    auto& nx = nodes[size_t(n)].next;
    auto it = std::lower_bound(nx.begin(), nx.end(), c, [](const auto& a, uint8_t b) { return a.first < b; });
    if (it != nx.end() && it->first == c) {
      n = it->second;
      continue;
    }
    const int32_t fresh = int32_t(nodes.size());
    nx.insert(it, {c, fresh});  // invalidates nothing we hold: nx is re-read next round
    nodes.emplace_back();
    n = fresh;
  }
  // The first token given a content keeps it, as the tokenizers library's map does.
  if (nodes[size_t(n)].token < 0) nodes[size_t(n)].token = token;
}

int32_t added_trie::longest(std::string_view s, size_t pos, size_t& len) const {
  int32_t n = 0, best = -1;
  for (size_t i = pos; i < s.size(); ++i) {
    const auto& nx = nodes[size_t(n)].next;
    const uint8_t c = uint8_t(s[i]);
    auto it = std::lower_bound(nx.begin(), nx.end(), c, [](const auto& a, uint8_t b) { return a.first < b; });
    if (it == nx.end() || it->first != c) break;
    n = it->second;
    if (nodes[size_t(n)].token >= 0) {
      best = nodes[size_t(n)].token;
      len = i + 1 - pos;
    }
  }
  return best;
}

}  // namespace tok_detail

namespace {

// Thrown inside the loader only and turned into a status at its boundary.
struct load_error {
  std::string msg;
};
[[noreturn]] void fail(std::string m) { throw load_error{std::move(m)}; }

const json* field(const json& o, const char* k) {
  if (!o.is_object()) return nullptr;
  auto it = o.find(k);
  return it == o.end() || it->is_null() ? nullptr : &*it;
}
std::string str_field(const json& o, const char* k, const std::string& def, const std::string& where) {
  const json* v = field(o, k);
  if (!v) return def;
  if (!v->is_string()) fail(where + "." + k + " is not a string");
  return v->get<std::string>();
}
bool bool_field(const json& o, const char* k, bool def, const std::string& where) {
  const json* v = field(o, k);
  if (!v) return def;
  if (!v->is_boolean()) fail(where + "." + k + " is not true or false");
  return v->get<bool>();
}
std::string type_of(const json& o, const std::string& where) {
  if (!o.is_object()) fail(where + " is not an object");
  const json* t = field(o, "type");
  if (!t || !t->is_string()) fail(where + " has no \"type\"");
  return t->get<std::string>();
}

// ------------------------------------------------------------- Unicode --------

// Unicode White_Space, what Oniguruma's \s is (the tokenizers library compiles
// tokenizer.json patterns with Oniguruma, and @huggingface/tokenizers translates \s to
// \p{White_Space} for the same reason). PCRE2's \s under UCP differs (U+180E, no U+0085
// in some versions), so \s / \S are spelled out.
#define INFER_WS "\\t\\n\\x0B\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"

bool is_white_space(uint32_t c) {
  return (c >= 9 && c <= 13) || c == ' ' || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
         c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}
bool is_numeric(uint32_t c) {
  auto k = utf8proc_category(utf8proc_int32_t(c));
  return k == UTF8PROC_CATEGORY_ND || k == UTF8PROC_CATEGORY_NL || k == UTF8PROC_CATEGORY_NO;
}
// Rust's char::is_alphanumeric (Alphabetic or Numeric) as the added-token word test uses
// it; letters and numbers by general category.
bool is_word_char(uint32_t c) {
  if (c == '_') return true;
  auto k = utf8proc_category(utf8proc_int32_t(c));
  return (k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO) || is_numeric(c);
}

uint32_t last_cp(std::string_view s) {
  size_t i = s.size();
  while (i > 0 && (uint8_t(s[i - 1]) & 0xC0) == 0x80) --i;
  if (i > 0) --i;
  size_t j = i;
  return next_cp(s, j);
}

// Oniguruma pattern (as tokenizer.json writes it) -> PCRE2: \s and \S become White_Space.
std::string translate_pattern(const std::string& p, const std::string& where) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char n = p[i + 1];
      ++i;
      if (n == 's') out += in_class ? INFER_WS : "[" INFER_WS "]";
      else if (n == 'S') {
        if (in_class) fail(where + ": \\S inside a character class is not supported");
        out += "[^" INFER_WS "]";
      } else {
        out += c;
        out += n;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];  // a leading ] is literal
      continue;
    }
    if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {  // [:alpha:]
      size_t e = p.find(":]", i + 2);
      if (e == std::string::npos) fail(where + ": unterminated POSIX class");
      out.append(p, i, e + 2 - i);
      i = e + 1;
      continue;
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

// The GPT-2 pattern of the ByteLevel pre-tokenizer's use_regex, in Oniguruma's terms.
const char* k_byte_level_pattern = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

regex compile(const std::string& onig, const std::string& where) {
  regex r;
  std::string err;
  if (!compile_regex(translate_pattern(onig, where), r, err)) fail(where + ": " + err);
  return r;
}

// A Split / Replace "pattern": {"String": s} or {"Regex": r}.
struct pattern_spec {
  bool is_regex = false;
  std::string text;
};
pattern_spec pattern_of(const json& o, const std::string& where) {
  const json* p = field(o, "pattern");
  if (!p || !p->is_object()) fail(where + ".pattern is missing");
  if (const json* s = field(*p, "String"); s && s->is_string()) return {false, s->get<std::string>()};
  if (const json* r = field(*p, "Regex"); r && r->is_string()) return {true, r->get<std::string>()};
  fail(where + ".pattern is neither {\"String\": ...} nor {\"Regex\": ...}");
}

void find_str(std::string_view s, std::string_view pat, std::vector<std::pair<uint32_t, uint32_t>>& out) {
  if (pat.empty()) return;
  size_t pos = 0;
  while ((pos = s.find(pat, pos)) != std::string_view::npos) {
    out.emplace_back(uint32_t(pos), uint32_t(pos + pat.size()));
    pos += pat.size();
  }
}

// ------------------------------------------------------------- components ----

void add_normalizers(const json& n, const std::string& where, std::vector<normalizer_op>& ops) {
  const std::string t = type_of(n, where);
  normalizer_op op{};
  if (t == "Sequence") {
    const json* list = field(n, "normalizers");
    if (!list || !list->is_array()) fail(where + ".normalizers is not a list");
    for (size_t i = 0; i < list->size(); ++i)
      add_normalizers((*list)[i], where + ".normalizers[" + std::to_string(i) + "]", ops);
    return;
  }
  if (t == "NFC") op.kind = normalizer_op::nfc;
  else if (t == "NFD") op.kind = normalizer_op::nfd;
  else if (t == "NFKC") op.kind = normalizer_op::nfkc;
  else if (t == "NFKD") op.kind = normalizer_op::nfkd;
  else if (t == "Lowercase") op.kind = normalizer_op::lowercase;
  else if (t == "StripAccents") op.kind = normalizer_op::strip_accents;
  else if (t == "Prepend") {
    op.kind = normalizer_op::prepend;
    op.a = str_field(n, "prepend", "", where);
  } else if (t == "Replace") {
    pattern_spec p = pattern_of(n, where);
    op.kind = p.is_regex ? normalizer_op::replace_re : normalizer_op::replace_str;
    op.a = p.text;
    op.b = str_field(n, "content", "", where);
    if (p.is_regex) op.re = compile(p.text, where + ".pattern");
  } else if (t == "Strip") {
    op.kind = normalizer_op::strip;
    op.left = bool_field(n, "strip_left", true, where);
    op.right = bool_field(n, "strip_right", true, where);
  } else {
    fail(where + ": normalizer type \"" + t +
         "\" is not supported (supported: NFC, NFD, NFKC, NFKD, Lowercase, StripAccents, Prepend, Replace, Strip, "
         "Sequence)");
  }
  ops.push_back(std::move(op));
}

pretok_op::behavior_t behavior_of(const json& o, const std::string& where) {
  const std::string b = str_field(o, "behavior", "Isolated", where);
  if (b == "Removed") return pretok_op::removed;
  if (b == "Isolated") return pretok_op::isolated;
  if (b == "MergedWithPrevious") return pretok_op::merged_prev;
  if (b == "MergedWithNext") return pretok_op::merged_next;
  if (b == "Contiguous") return pretok_op::contiguous;
  fail(where + ".behavior \"" + b + "\" is not one of Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous");
}

pretok_op::prepend_t prepend_of(const json& o, const std::string& where) {
  if (const json* s = field(o, "prepend_scheme")) {
    const std::string v = s->is_string() ? s->get<std::string>() : "";
    if (v == "always") return pretok_op::always;
    if (v == "first") return pretok_op::first;
    if (v == "never") return pretok_op::never;
    fail(where + ".prepend_scheme is not always, first or never");
  }
  // Files written before prepend_scheme existed say add_prefix_space.
  return bool_field(o, "add_prefix_space", true, where) ? pretok_op::always : pretok_op::never;
}

void add_pretoks(const json& n, const std::string& where, std::vector<pretok_op>& ops, bool& byte_level) {
  const std::string t = type_of(n, where);
  pretok_op op{};
  if (t == "Sequence") {
    const json* list = field(n, "pretokenizers");
    if (!list || !list->is_array()) fail(where + ".pretokenizers is not a list");
    for (size_t i = 0; i < list->size(); ++i)
      add_pretoks((*list)[i], where + ".pretokenizers[" + std::to_string(i) + "]", ops, byte_level);
    return;
  }
  if (t == "Split") {
    pattern_spec p = pattern_of(n, where);
    op.kind = p.is_regex ? pretok_op::split_re : pretok_op::split_str;
    op.str = p.text;
    if (p.is_regex) op.re = compile(p.text, where + ".pattern");
    op.behavior = behavior_of(n, where);
    op.invert = bool_field(n, "invert", false, where);
  } else if (t == "ByteLevel") {
    op.kind = pretok_op::byte_level;
    op.add_prefix_space = bool_field(n, "add_prefix_space", true, where);
    op.use_regex = bool_field(n, "use_regex", true, where);
    if (op.use_regex) op.re = compile(k_byte_level_pattern, where + " (GPT-2 pattern)");
    byte_level = true;
  } else if (t == "Metaspace") {
    op.kind = pretok_op::metaspace;
    op.str = str_field(n, "replacement", "\xE2\x96\x81", where);
    op.prepend = prepend_of(n, where);
    op.split = bool_field(n, "split", true, where);
  } else if (t == "Digits") {
    op.kind = pretok_op::digits;
    op.individual = bool_field(n, "individual_digits", false, where);
  } else if (t == "Whitespace") {
    op.kind = pretok_op::whitespace;
    op.re = compile("\\w+|[^\\w\\s]+", where);
  } else if (t == "WhitespaceSplit") {
    op.kind = pretok_op::whitespace_split;
  } else {
    fail(where + ": pre-tokenizer type \"" + t +
         "\" is not supported (supported: Split, ByteLevel, Metaspace, Digits, Whitespace, WhitespaceSplit, Sequence)");
  }
  ops.push_back(std::move(op));
}

// The decoder chain compiled for streaming: a per-token rewrite of each token's string
// (computed once per id at load time) and a start-of-sequence strip.
struct decoder_op {
  enum kind_t { replace, byte_fallback, byte_level, strip, metaspace } kind;
  std::string a, b;
  size_t start = 0, stop = 0;
};
struct decoder_plan {
  std::vector<decoder_op> ops;
  bool fused = false;
  bool none = false;
  char strip_char = ' ';
  size_t strip_start = 0;
  bool first_only = false;
};

void add_decoders(const json& n, const std::string& where, decoder_plan& plan) {
  const std::string t = type_of(n, where);
  decoder_op op{};
  if (t == "Sequence") {
    const json* list = field(n, "decoders");
    if (!list || !list->is_array()) fail(where + ".decoders is not a list");
    for (size_t i = 0; i < list->size(); ++i)
      add_decoders((*list)[i], where + ".decoders[" + std::to_string(i) + "]", plan);
    return;
  }
  if (t == "Fuse") {
    plan.fused = true;
    return;
  }
  if (t == "Replace") {
    pattern_spec p = pattern_of(n, where);
    if (p.is_regex) fail(where + ": a Replace decoder with a regex pattern is not supported");
    op.kind = decoder_op::replace;
    op.a = p.text;
    op.b = str_field(n, "content", "", where);
    size_t i = 0, chars = 0;
    while (i < op.a.size()) next_cp(op.a, i), ++chars;
    // Per token equals on the fused text only when the pattern cannot span two tokens.
    if (plan.fused && chars > 1) fail(where + ": a multi-character Replace after Fuse cannot be streamed");
  } else if (t == "ByteFallback") {
    op.kind = decoder_op::byte_fallback;
  } else if (t == "ByteLevel") {
    op.kind = decoder_op::byte_level;
    plan.fused = true;  // the library joins all tokens before mapping them to bytes
  } else if (t == "Strip") {
    const std::string c = str_field(n, "content", " ", where);
    const json* s = field(n, "start");
    const json* e = field(n, "stop");
    op.start = s && s->is_number_unsigned() ? s->get<size_t>() : 0;
    op.stop = e && e->is_number_unsigned() ? e->get<size_t>() : 0;
    if (plan.fused) {
      if (op.stop > 0) fail(where + ": a Strip decoder with stop > 0 after Fuse cannot be streamed");
      if (c.size() != 1) fail(where + ": Strip content must be one ASCII character");
      plan.strip_char = c[0];
      plan.strip_start = op.start;
      plan.first_only = false;
      return;
    }
    op.kind = decoder_op::strip;
    op.a = c;
  } else if (t == "Metaspace") {
    op.kind = decoder_op::metaspace;
    op.a = str_field(n, "replacement", "\xE2\x96\x81", where);
    if (prepend_of(n, where) != pretok_op::never) {
      plan.strip_char = ' ';
      plan.strip_start = 1;
      plan.first_only = !plan.fused;
    }
  } else {
    fail(where + ": decoder type \"" + t +
         "\" is not supported (supported: ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence)");
  }
  plan.ops.push_back(std::move(op));
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}
// "<0xNN>" -> NN, else -1.
int fallback_byte(std::string_view s) {
  if (s.size() != 6 || s.substr(0, 3) != "<0x" || s[5] != '>') return -1;
  int h = hex_digit(s[3]), l = hex_digit(s[4]);
  return h < 0 || l < 0 ? -1 : h * 16 + l;
}

std::string replace_all(std::string_view s, std::string_view a, std::string_view b) {
  if (a.empty()) return std::string(s);
  std::string out;
  size_t pos = 0;
  for (size_t f; (f = s.find(a, pos)) != std::string_view::npos; pos = f + a.size()) out.append(s, pos, f - pos).append(b);
  out.append(s.substr(pos));
  return out;
}

std::string decode_token(const decoder_plan& plan, std::string s) {
  for (const auto& op : plan.ops) {
    switch (op.kind) {
      case decoder_op::replace:
        s = replace_all(s, op.a, op.b);
        break;
      case decoder_op::byte_fallback:
        if (int b = fallback_byte(s); b >= 0) s = std::string(1, char(b));
        break;
      case decoder_op::byte_level:
        s = key_to_bytes(s);
        break;
      case decoder_op::metaspace:
        s = replace_all(s, op.a, " ");
        break;
      case decoder_op::strip: {
        size_t a = 0, b = s.size();
        for (size_t i = 0; i < op.start && a < b && s.compare(a, op.a.size(), op.a) == 0; ++i) a += op.a.size();
        for (size_t i = 0; i < op.stop && b >= a + op.a.size() && s.compare(b - op.a.size(), op.a.size(), op.a) == 0; ++i)
          b -= op.a.size();
        s = s.substr(a, b - a);
        break;
      }
    }
  }
  return s;
}

void add_post(const json& n, const std::string& where, std::vector<int32_t>& before, std::vector<int32_t>& after) {
  const std::string t = type_of(n, where);
  if (t == "Sequence") {
    const json* list = field(n, "processors");
    if (!list || !list->is_array()) fail(where + ".processors is not a list");
    for (size_t i = 0; i < list->size(); ++i)
      add_post((*list)[i], where + ".processors[" + std::to_string(i) + "]", before, after);
    return;
  }
  if (t == "ByteLevel") return;  // it only adjusts offsets, never ids
  if (t == "TemplateProcessing") {
    const json* single = field(n, "single");
    const json* specials = field(n, "special_tokens");
    if (!single || !single->is_array()) fail(where + ".single is not a list");
    before.clear();
    after.clear();
    bool seen_seq = false;
    for (const auto& item : *single) {
      if (field(item, "Sequence")) {
        if (seen_seq) fail(where + ".single holds more than one sequence");
        seen_seq = true;
        continue;
      }
      const json* sp = field(item, "SpecialToken");
      if (!sp) fail(where + ".single: an item is neither Sequence nor SpecialToken");
      const std::string name = str_field(*sp, "id", "", where + ".single");
      const json* def = specials ? field(*specials, name.c_str()) : nullptr;
      const json* ids = def ? field(*def, "ids") : nullptr;
      if (!ids || !ids->is_array()) fail(where + ": special token \"" + name + "\" is not in special_tokens");
      for (const auto& id : *ids) {
        if (!id.is_number_integer()) fail(where + ": special token \"" + name + "\" has a non-integer id");
        (seen_seq ? after : before).push_back(id.get<int32_t>());
      }
    }
    return;
  }
  if (t == "RobertaProcessing" || t == "BertProcessing") {
    auto id_of = [&](const char* k) {
      const json* v = field(n, k);
      if (!v || !v->is_array() || v->size() != 2 || !(*v)[1].is_number_integer())
        fail(where + "." + k + " is not [token, id]");
      return (*v)[1].get<int32_t>();
    };
    before = {id_of("cls")};
    after = {id_of("sep")};
    return;
  }
  fail(where + ": post-processor type \"" + t +
       "\" is not supported (supported: TemplateProcessing, ByteLevel, RobertaProcessing, BertProcessing, Sequence)");
}

}  // namespace

// ------------------------------------------------------------- loading --------

result<tokenizer> tokenizer::from_tokenizer_json_text(std::string_view text, const std::string& origin) {
  auto p = std::make_shared<impl>();
  try {
    json j = json::parse(text.begin(), text.end());
    const std::string w = "tokenizer.json";
    if (!j.is_object()) fail("not a JSON object");
    p->kind = impl::kind_t::hf;
    const json* model = field(j, "model");
    if (!model) fail("has no \"model\"");
    const std::string mtype = model->is_object() && field(*model, "type") ? type_of(*model, "model") : "BPE";
    if (mtype != "BPE") fail("model type \"" + mtype + "\" is not supported (supported: BPE)");
    if (const json* d = field(*model, "dropout"); d && !(d->is_number() && d->get<double>() == 0.0))
      fail("model.dropout is set: BPE dropout (a training aid) is not supported");
    for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
      if (!str_field(*model, k, "", "model").empty()) fail(std::string("model.") + k + " is not supported");

    if (const json* n = field(j, "normalizer")) add_normalizers(*n, "normalizer", p->normalizers);
    bool byte_level = false;
    if (const json* n = field(j, "pre_tokenizer")) add_pretoks(*n, "pre_tokenizer", p->pretoks, byte_level);
    p->byte_symbols = byte_level;
    if (const json* n = field(j, "post_processor")) add_post(*n, "post_processor", p->template_before, p->template_after);
    decoder_plan plan;
    if (const json* n = field(j, "decoder")) add_decoders(*n, "decoder", plan);
    else plan.none = true;

    // Vocabulary.
    const json* vocab = field(*model, "vocab");
    if (!vocab || !vocab->is_object()) fail("model.vocab is not an object of token -> id");
    id_map key_id;  // the vocabulary's own spelling -> id
    key_id.reserve(vocab->size());
    int64_t max_id = -1;
    for (auto it = vocab->begin(); it != vocab->end(); ++it) {
      if (!it.value().is_number_integer()) fail("model.vocab: id of " + json(it.key()).dump() + " is not an integer");
      const int64_t id = it.value().get<int64_t>();
      if (id < 0 || id > 10'000'000) fail("model.vocab: id " + std::to_string(id) + " is out of range");
      key_id[it.key()] = int32_t(id);
      max_id = std::max(max_id, id);
    }
    // Added tokens.
    if (const json* at = field(j, "added_tokens")) {
      if (!at->is_array()) fail("added_tokens is not a list");
      for (const auto& a : *at) {
        added_token t;
        t.content = str_field(a, "content", "", "added_tokens");
        const json* id = field(a, "id");
        if (!id || !id->is_number_integer() || id->get<int64_t>() < 0 || id->get<int64_t>() > 10'000'000)
          fail("added_tokens: token " + json(t.content).dump() + " has no valid id");
        t.id = id->get<int32_t>();
        t.special = bool_field(a, "special", false, "added_tokens");
        t.lstrip = bool_field(a, "lstrip", false, "added_tokens");
        t.rstrip = bool_field(a, "rstrip", false, "added_tokens");
        t.single_word = bool_field(a, "single_word", false, "added_tokens");
        // The tokenizers library's default: special tokens are matched on the raw text.
        t.normalized = bool_field(a, "normalized", !t.special, "added_tokens");
        if (t.content.empty()) continue;
        max_id = std::max<int64_t>(max_id, t.id);
        p->added.push_back(std::move(t));
      }
    }
    if (max_id < 0) fail("the vocabulary is empty");
    const size_t n = size_t(max_id + 1);
    std::vector<std::string> tok_str(n), tok_bytes(n);
    std::vector<uint8_t> have(n, 0);
    for (auto& [k, id] : key_id) {
      tok_str[size_t(id)] = k;
      have[size_t(id)] = 1;
      p->model_id[byte_level ? key_to_bytes(k) : k] = id;
    }
    for (auto& t : p->added) {
      tok_str[size_t(t.id)] = t.content;
      have[size_t(t.id)] = 1;
    }
    for (size_t id = 0; id < n; ++id) {
      tok_bytes[id] = plan.none ? tok_str[id] : decode_token(plan, tok_str[id]);
      if (have[id]) p->str_to_id.emplace(tok_str[id], int32_t(id));
    }
    for (auto& t : p->added) p->str_to_id[t.content] = t.id;  // an added token wins its spelling
    p->strip_char = plan.strip_char;
    p->strip_start = plan.strip_start;
    p->strip_first_token_only = plan.first_only;
    p->join_with_space = plan.none;

    // Model details.
    p->ignore_merges = bool_field(*model, "ignore_merges", false, "model");
    p->byte_fallback = bool_field(*model, "byte_fallback", false, "model");
    p->fuse_unk = bool_field(*model, "fuse_unk", false, "model");
    if (std::string unk = str_field(*model, "unk_token", "", "model"); !unk.empty()) {
      auto it = key_id.find(unk);
      if (it == key_id.end()) fail("model.unk_token " + json(unk).dump() + " is not in the vocabulary");
      p->unk_id = it->second;
    }
    p->fallback_id.fill(-1);
    if (p->byte_fallback) {
      static const char* hex = "0123456789ABCDEF";
      for (int b = 0; b < 256; ++b) {
        const std::string k = std::string("<0x") + hex[b >> 4] + hex[b & 15] + ">";
        if (auto it = key_id.find(k); it != key_id.end()) p->fallback_id[size_t(b)] = it->second;
      }
    }
    p->byte_id.fill(p->unk_id);
    if (byte_level) {
      const auto& bu = byte_unicode();
      for (int b = 0; b < 256; ++b) {
        std::string k;
        append_cp(k, bu.to_cp[size_t(b)]);
        if (auto it = key_id.find(k); it != key_id.end()) p->byte_id[size_t(b)] = it->second;
      }
    }
    // Merges: "a b" strings (older files) or ["a", "b"] pairs; rank = position.
    if (const json* merges = field(*model, "merges")) {
      if (!merges->is_array()) fail("model.merges is not a list");
      p->ranks.reserve(merges->size());
      uint32_t rank = 0;
      std::string a, b;
      for (const auto& m : *merges) {
        if (m.is_string()) {
          const std::string& s = m.get_ref<const std::string&>();
          size_t sp = s.find(' ', 1);
          if (sp == std::string::npos) fail("model.merges[" + std::to_string(rank) + "] is not \"a b\"");
          a = s.substr(0, sp);
          b = s.substr(sp + 1);
        } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
          a = m[0].get<std::string>();
          b = m[1].get<std::string>();
        } else {
          fail("model.merges[" + std::to_string(rank) + "] is neither \"a b\" nor [a, b]");
        }
        auto ia = key_id.find(a), ib = key_id.find(b), iab = key_id.find(a + b);
        if (ia == key_id.end() || ib == key_id.end() || iab == key_id.end())
          fail("model.merges[" + std::to_string(rank) + "]: " + json(ia == key_id.end() ? a : ib == key_id.end() ? b : a + b).dump() +
               " is not in the vocabulary");
        p->ranks.try_emplace(impl::pair_key(ia->second, ib->second), impl::merge{rank, iab->second});
        ++rank;
      }
    }
    p->finish_tables(tok_bytes, tok_str);
    // Added tokens: the tries that find them, and which ids are special. The ones
    // matched after normalization are matched in their normalized spelling.
    for (size_t i = 0; i < p->added.size(); ++i) {
      const auto& t = p->added[i];
      if (t.special) p->special[size_t(t.id)] = 1;
      if (t.normalized && !p->normalizers.empty()) {
        impl::scratch sc;
        std::string norm;
        p->normalize(t.content, norm, sc);
        p->norm_trie.insert(norm, int32_t(i));
      } else {
        p->raw_trie.insert(t.content, int32_t(i));
      }
    }
    if (auto it = p->str_to_id.find("<|endoftext|>"); it != p->str_to_id.end()) p->eot = it->second;
    p->format = std::string("tokenizer.json (BPE") + (byte_level ? ", byte-level" : "") +
                (p->byte_fallback ? ", byte fallback" : "") + ")";
  } catch (const load_error& e) {
    return make_status(errc::format_error, "tokenizer: '" + origin + "': " + e.msg);
  } catch (const json::exception& e) {
    return make_status(errc::format_error, "tokenizer: '" + origin + "' is not valid JSON: " + e.what());
  }
  return tokenizer(std::shared_ptr<const impl>(std::move(p)));
}

// ------------------------------------------------------------- encoding -------

void tokenizer::impl::normalize(std::string_view in, std::string& out, scratch& sc) const {
  out.assign(in);
  for (const auto& op : normalizers) {
    switch (op.kind) {
      case normalizer_op::nfc:
      case normalizer_op::nfd:
      case normalizer_op::nfkc:
      case normalizer_op::nfkd: {
        if (out.empty()) break;
        int opt = UTF8PROC_STABLE;
        if (op.kind == normalizer_op::nfc || op.kind == normalizer_op::nfkc) opt |= UTF8PROC_COMPOSE;
        else opt |= UTF8PROC_DECOMPOSE;
        if (op.kind == normalizer_op::nfkc || op.kind == normalizer_op::nfkd) opt |= UTF8PROC_COMPAT;
        utf8proc_uint8_t* res = nullptr;
        auto len = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(out.data()), utf8proc_ssize_t(out.size()), &res,
                                utf8proc_option_t(opt));
        if (len >= 0 && res) out.assign(reinterpret_cast<const char*>(res), size_t(len));
        std::free(res);
        break;
      }
      case normalizer_op::lowercase: {
        // Rust's str::to_lowercase: simple case mapping plus its two special cases, U+0130
        // -> "i\u0307" and a final capital sigma -> U+03C2 (after a letter, before none).
        sc.norm.clear();
        bool prev_letter = false;
        for (size_t i = 0; i < out.size();) {
          const uint32_t c = next_cp(out, i);
          const auto cat = utf8proc_category(utf8proc_int32_t(c));
          if (c == 0x130) {
            sc.norm.append("i\xCC\x87");
          } else if (c == 0x3A3 && prev_letter) {
            size_t k = i;
            const bool next_letter = k < out.size() && [&] {
              auto nc = utf8proc_category(utf8proc_int32_t(next_cp(out, k)));
              return nc >= UTF8PROC_CATEGORY_LU && nc <= UTF8PROC_CATEGORY_LO;
            }();
            append_cp(sc.norm, next_letter ? 0x3C3 : 0x3C2);
          } else {
            append_cp(sc.norm, uint32_t(utf8proc_tolower(utf8proc_int32_t(c))));
          }
          prev_letter = cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO;
        }
        out.swap(sc.norm);
        break;
      }
      case normalizer_op::strip_accents: {
        sc.norm.clear();
        for (size_t i = 0; i < out.size();) {
          size_t s = i;
          uint32_t c = next_cp(out, i);
          // The library drops every General_Category=Mark (Mn, Mc, Me), not only Mn.
          const auto k = utf8proc_category(utf8proc_int32_t(c));
          if (k != UTF8PROC_CATEGORY_MN && k != UTF8PROC_CATEGORY_MC && k != UTF8PROC_CATEGORY_ME)
            sc.norm.append(out, s, i - s);
        }
        out.swap(sc.norm);
        break;
      }
      case normalizer_op::prepend:
        if (!out.empty()) out.insert(0, op.a);
        break;
      case normalizer_op::replace_str:
        if (out.find(op.a) != std::string::npos) out = replace_all(out, op.a, op.b);
        break;
      case normalizer_op::replace_re: {
        sc.spans.clear();
        op.re.find_all(out, sc.spans);
        if (sc.spans.empty()) break;
        sc.norm.clear();
        size_t pos = 0;
        for (auto [s, e] : sc.spans) sc.norm.append(out, pos, s - pos).append(op.b), pos = e;
        sc.norm.append(out, pos);
        out.swap(sc.norm);
        break;
      }
      case normalizer_op::strip: {
        size_t a = 0, b = out.size();
        if (op.left)
          while (a < b) {
            size_t i = a;
            if (!is_white_space(next_cp(out, i))) break;
            a = i;
          }
        if (op.right)
          while (b > a) {
            uint32_t c = last_cp(std::string_view(out).substr(a, b - a));
            if (!is_white_space(c)) break;
            size_t l = 1;
            while ((uint8_t(out[b - l]) & 0xC0) == 0x80) ++l;
            b -= l;
          }
        out = out.substr(a, b - a);
        break;
      }
    }
  }
}

namespace {

// A Split's spans over t (matches flagged), laid out by behavior into out.
void lay_out(std::string_view t, bool first, const std::vector<std::pair<uint32_t, uint32_t>>& m, bool invert,
             pretok_op::behavior_t behavior, piece_list& out) {
  struct span {
    uint32_t s, e;
    bool match;
  };
  std::vector<span> spans;  // per piece of text, not per token of the model
  spans.reserve(m.size() * 2 + 1);
  uint32_t off = 0;
  for (auto [s, e] : m) {
    if (s > off) spans.push_back({off, s, invert});
    spans.push_back({s, e, !invert});
    off = e;
  }
  if (off < t.size()) spans.push_back({off, uint32_t(t.size()), invert});
  std::vector<std::pair<uint32_t, uint32_t>> res;
  res.reserve(spans.size());
  switch (behavior) {
    case pretok_op::removed:
      for (auto& s : spans)
        if (!s.match) res.emplace_back(s.s, s.e);
      break;
    case pretok_op::isolated:
      for (auto& s : spans) res.emplace_back(s.s, s.e);
      break;
    case pretok_op::merged_prev: {
      bool prev_match = false;
      for (auto& s : spans) {
        if (s.match && !prev_match && !res.empty()) res.back().second = s.e;
        else res.emplace_back(s.s, s.e);
        prev_match = s.match;
      }
      break;
    }
    case pretok_op::merged_next: {
      bool prev_match = false;
      for (size_t i = spans.size(); i-- > 0;) {
        const auto& s = spans[i];
        if (s.match && !prev_match && !res.empty()) res.back().first = s.s;
        else res.emplace_back(s.s, s.e);
        prev_match = s.match;
      }
      std::reverse(res.begin(), res.end());
      break;
    }
    case pretok_op::contiguous: {
      bool prev_match = false;
      for (size_t i = 0; i < spans.size(); ++i) {
        const auto& s = spans[i];
        if (i > 0 && s.match && prev_match) res.back().second = s.e;
        else res.emplace_back(s.s, s.e);
        prev_match = s.match;
      }
      break;
    }
  }
  for (auto [s, e] : res) out.add(t.substr(s, e - s), first && s == 0);
}

}  // namespace

void tokenizer::impl::pre_tokenize_hf(piece_list& pl, scratch& sc) const {
  piece_list* in = &pl;
  piece_list* out = &sc.b;
  std::string tmp;
  for (const auto& op : pretoks) {
    out->clear();
    for (size_t i = 0; i < in->size(); ++i) {
      std::string_view t = in->get(i);
      const bool first = in->first[i] != 0;
      sc.spans.clear();
      switch (op.kind) {
        case pretok_op::split_str:
          find_str(t, op.str, sc.spans);
          lay_out(t, first, sc.spans, op.invert, op.behavior, *out);
          break;
        case pretok_op::split_re:
          op.re.find_all(t, sc.spans);
          lay_out(t, first, sc.spans, op.invert, op.behavior, *out);
          break;
        case pretok_op::byte_level: {
          if (op.add_prefix_space && t[0] != ' ') {
            tmp.assign(" ").append(t);
            t = tmp;
          }
          if (op.use_regex) {
            op.re.find_all(t, sc.spans);
            lay_out(t, first, sc.spans, false, pretok_op::isolated, *out);
          } else {
            out->add(t, first);
          }
          break;
        }
        case pretok_op::metaspace: {
          tmp = replace_all(t, " ", op.str);
          if (!std::string_view(tmp).starts_with(op.str) &&
              (op.prepend == pretok_op::always || (op.prepend == pretok_op::first && first)))
            tmp.insert(0, op.str);
          if (op.split) {
            find_str(tmp, op.str, sc.spans);
            lay_out(tmp, first, sc.spans, false, pretok_op::merged_next, *out);
          } else {
            out->add(tmp, first);
          }
          break;
        }
        case pretok_op::digits: {
          for (size_t k = 0; k < t.size();) {
            size_t s = k;
            if (is_numeric(next_cp(t, k))) sc.spans.emplace_back(uint32_t(s), uint32_t(k));
          }
          lay_out(t, first, sc.spans, false, op.individual ? pretok_op::isolated : pretok_op::contiguous, *out);
          break;
        }
        case pretok_op::whitespace:
          op.re.find_all(t, sc.spans);
          lay_out(t, first, sc.spans, true, pretok_op::removed, *out);
          break;
        case pretok_op::whitespace_split:
          for (size_t k = 0; k < t.size();) {
            size_t s = k;
            if (is_white_space(next_cp(t, k))) sc.spans.emplace_back(uint32_t(s), uint32_t(k));
          }
          lay_out(t, first, sc.spans, false, pretok_op::removed, *out);
          break;
      }
    }
    std::swap(in, out);
  }
  if (in != &pl) std::swap(pl, *in);
}

namespace {

// The tokenizers library's AddedVocabulary::find_matches: leftmost-longest matches,
// single_word ones only between non-word characters, lstrip / rstrip widening the
// match over white space; special tokens skipped when split_special_tokens is set.
template <class Gap, class Match>
void split_added(std::string_view s, const added_trie& trie, const std::vector<added_token>& added, bool split_special,
                 Gap&& gap, Match&& match) {
  if (trie.empty()) {
    gap(s, size_t(0));
    return;
  }
  size_t start_offset = 0, pos = 0;
  while (pos < s.size()) {
    size_t len = 0;
    int32_t ti = trie.longest(s, pos, len);
    if (ti < 0) {
      ++pos;
      continue;
    }
    const added_token& t = added[size_t(ti)];
    size_t start = pos, stop = pos + len;
    pos = stop;
    if (split_special && t.special) continue;
    if (t.single_word) {
      bool start_ok = start == 0 || !is_word_char(last_cp(s.substr(0, start)));
      size_t k = stop;
      bool stop_ok = stop == s.size() || !is_word_char(next_cp(s, k));
      if (!start_ok || !stop_ok) continue;
    }
    if (t.lstrip) {
      size_t ns = start;
      while (ns > start_offset) {
        size_t b = ns - 1;
        while (b > 0 && (uint8_t(s[b]) & 0xC0) == 0x80) --b;
        size_t k = b;
        if (!is_white_space(next_cp(s, k))) break;
        ns = b;
      }
      start = ns;
    }
    if (t.rstrip) {
      while (stop < s.size()) {
        size_t k = stop;
        if (!is_white_space(next_cp(s, k))) break;
        stop = k;
      }
      pos = stop;
    }
    if (start > start_offset) gap(s.substr(start_offset, start - start_offset), start_offset);
    match(t.id);
    start_offset = stop;
  }
  if (start_offset < s.size()) gap(s.substr(start_offset), start_offset);
}

}  // namespace

void tok_detail::split_added_tokens(std::string_view s, const added_trie& trie, const std::vector<added_token>& added,
                                    bool split_special, const std::function<void(std::string_view, size_t)>& gap,
                                    const std::function<void(int32_t)>& match) {
  split_added(s, trie, added, split_special, gap, match);
}

void tokenizer::impl::hf_encode(std::string_view text, std::vector<int32_t>& out, const encode_options& o) const {
  std::string fixed;
  if (!utf8_is_valid(text)) {
    fixed = utf8_sanitize(text);
    text = fixed;
  }
  if (o.add_special_tokens) out.insert(out.end(), template_before.begin(), template_before.end());
  scratch sc;
  std::string norm;
  auto push_id = [&](int32_t id) { out.push_back(id); };
  split_added(
      text, raw_trie, added, o.split_special_tokens,
      [&](std::string_view sec, size_t off) {
        normalize(sec, norm, sc);
        split_added(
            norm, norm_trie, added, o.split_special_tokens,
            [&](std::string_view piece, size_t noff) {
              sc.a.clear();
              sc.a.add(piece, off == 0 && noff == 0);
              pre_tokenize_hf(sc.a, sc);
              for (size_t i = 0; i < sc.a.size(); ++i) encode_word(sc.a.get(i), out, sc);
            },
            push_id);
      },
      push_id);
  if (o.add_special_tokens) out.insert(out.end(), template_after.begin(), template_after.end());
}

// ------------------------------------------------------------- model folder ---

namespace {

// bos_token / eos_token: a string, {"content": ...} (an AddedToken), or null.
std::string token_text(const json& cfg, const char* k, const std::string& where) {
  const json* v = field(cfg, k);
  if (!v) return {};
  if (v->is_string()) return v->get<std::string>();
  if (v->is_object()) return str_field(*v, "content", "", where + "." + k);
  fail(where + "." + k + " is neither a string nor {\"content\": ...}");
}

void read_json_file(const std::filesystem::path& f, json& out) {
  status st;
  std::string text = read_file(f.string(), st, f.filename().string().c_str());
  if (!st) fail(st.message);
  try {
    out = json::parse(text);
  } catch (const json::exception& e) {
    fail("'" + f.string() + "' is not valid JSON: " + e.what());
  }
  if (!out.is_object()) fail("'" + f.string() + "' is not a JSON object");
}

}  // namespace

result<tokenizer> tokenizer::from_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path d(dir);
  std::optional<result<tokenizer>> base;
  std::string base_file;
  if (fs::exists(d / "tokenizer.json", ec)) {
    base_file = (d / "tokenizer.json").string();
    base = from_tokenizer_json(base_file);
  } else if (fs::exists(d / "vocab.json", ec) && fs::exists(d / "merges.txt", ec)) {
    base_file = (d / "vocab.json").string() + " + merges.txt";
    base = from_files((d / "vocab.json").string(), (d / "merges.txt").string());
  } else if (fs::exists(d / "encoder.json", ec) && fs::exists(d / "vocab.bpe", ec)) {
    base_file = (d / "encoder.json").string() + " + vocab.bpe";
    base = from_files((d / "encoder.json").string(), (d / "vocab.bpe").string());
  } else {
    return make_status(errc::io_error, "tokenizer: '" + dir +
                                           "' has none of tokenizer.json, vocab.json + merges.txt, encoder.json + vocab.bpe");
  }
  if (!*base) return base->error();
  tokenizer tok = base->value();
  tokenizer_info info = tok.info();
  info.files = {base_file};
  std::string where;
  try {
    json cfg = json::object();
    if (fs::path f = d / "tokenizer_config.json"; fs::exists(f, ec)) {
      where = f.string();
      read_json_file(f, cfg);
      info.files.push_back(where);
      info.bos_token = token_text(cfg, "bos_token", "tokenizer_config");
      if (std::string eos = token_text(cfg, "eos_token", "tokenizer_config"); !eos.empty()) {
        int32_t id = tok.token_id(eos);
        if (id < 0) fail("eos_token " + json(eos).dump() + " is not a token of the vocabulary");
        info.eos_token = eos;
        info.eos_ids = {id};
      }
      if (!info.bos_token.empty()) {
        info.bos_id = tok.token_id(info.bos_token);
        if (info.bos_id < 0) fail("bos_token " + json(info.bos_token).dump() + " is not a token of the vocabulary");
      }
      if (const json* v = field(cfg, "add_bos_token")) {
        if (!v->is_boolean()) fail("add_bos_token is not true or false");
        info.add_bos_token = v->get<bool>();
      }
      if (const json* v = field(cfg, "add_eos_token")) {
        if (!v->is_boolean()) fail("add_eos_token is not true or false");
        info.add_eos_token = v->get<bool>();
      }
      if (const json* v = field(cfg, "model_max_length"); v && v->is_number()) {
        double m = v->get<double>();
        // transformers writes 1e30 for "no limit".
        info.model_max_length = m > 0 && m < 1e15 ? int64_t(m) : 0;
      }
      if (const json* v = field(cfg, "chat_template")) {
        if (v->is_string()) {
          info.chat_templates.push_back({"default", v->get<std::string>()});
        } else if (v->is_array()) {
          for (const auto& e : *v) {
            std::string name = str_field(e, "name", "", "chat_template[]");
            std::string src = str_field(e, "template", "", "chat_template[]");
            if (name.empty()) fail("chat_template: an entry has no \"name\"");
            info.chat_templates.push_back({name, src});
          }
        } else {
          fail("chat_template is neither a string nor a list of {\"name\", \"template\"}");
        }
      }
    }
    if (fs::path f = d / "chat_template.jinja"; fs::exists(f, ec)) {
      status st;
      std::string src = read_file(f.string(), st, "chat template");
      if (!st) fail(st.message);
      info.files.push_back(f.string());
      auto it = std::find_if(info.chat_templates.begin(), info.chat_templates.end(),
                             [](const chat_template_entry& e) { return e.name == "default"; });
      if (it != info.chat_templates.end()) it->source = std::move(src);
      else info.chat_templates.insert(info.chat_templates.begin(), {"default", std::move(src)});
    }
    if (fs::path f = d / "generation_config.json"; fs::exists(f, ec)) {
      where = f.string();
      json g;
      read_json_file(f, g);
      info.files.push_back(where);
      auto check_id = [&](const json& v) {
        if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= tok.n_vocab())
          fail("eos_token_id " + v.dump() + " is not an id of the vocabulary");
        return v.get<int32_t>();
      };
      if (const json* v = field(g, "eos_token_id")) {
        if (v->is_array())
          for (const auto& e : *v) info.eos_ids.push_back(check_id(e));
        else
          info.eos_ids.push_back(check_id(*v));
      }
      if (const json* v = field(g, "bos_token_id"); v && info.bos_id < 0) {
        info.bos_id = check_id(*v);
        info.bos_token = std::string(tok.token_string(info.bos_id));
      }
      auto num = [&](const char* k) -> std::optional<double> {
        const json* v = field(g, k);
        if (!v) return std::nullopt;
        if (!v->is_number()) fail(std::string(k) + " is not a number");
        return v->get<double>();
      };
      if (auto t = num("temperature")) {
        if (*t < 0) fail("temperature is negative");
        info.generation.temperature = float(*t);
      }
      if (auto t = num("top_p")) {
        if (!(*t > 0 && *t <= 1)) fail("top_p is not in (0, 1]");
        info.generation.top_p = float(*t);
      }
      if (auto t = num("top_k")) {
        if (*t < 0 || *t != double(int64_t(*t))) fail("top_k is not a non-negative integer");
        info.generation.top_k = int32_t(*t);
      }
    }
    // transformers' Llama and Gemma fast tokenizers rebuild the post-processor from
    // add_bos_token / add_eos_token (so DeepSeek V3, whose tokenizer.json adds nothing,
    // gets its BOS there, as vLLM shows): the same here where the config says so.
    const std::string cls = str_field(cfg, "tokenizer_class", "", "tokenizer_config");
    const bool rebuilds = cls.starts_with("LlamaTokenizer") || cls.starts_with("GemmaTokenizer") ||
                          cls.starts_with("CodeLlamaTokenizer");
    if (rebuilds && tok.p_->kind == impl::kind_t::hf && (info.add_bos_token || info.add_eos_token)) {
      auto p = std::make_shared<impl>();
      // The pipeline is immutable once built; a copy differs only in the template. The
      // cache starts empty (mutexes are not copied).
      const impl& src = *tok.p_;
      p->kind = src.kind;
      p->format = src.format;
      p->bytes = src.bytes; p->offs = src.offs; p->strs = src.strs; p->soffs = src.soffs;
      p->special = src.special; p->str_to_id = src.str_to_id;
      p->byte_symbols = src.byte_symbols; p->model_id = src.model_id; p->byte_id = src.byte_id;
      p->ranks = src.ranks; p->ignore_merges = src.ignore_merges; p->byte_fallback = src.byte_fallback;
      p->fuse_unk = src.fuse_unk; p->unk_id = src.unk_id; p->fallback_id = src.fallback_id;
      p->added = src.added; p->raw_trie = src.raw_trie; p->norm_trie = src.norm_trie;
      p->normalizers = src.normalizers; p->pretoks = src.pretoks;
      p->strip_char = src.strip_char; p->strip_start = src.strip_start;
      p->strip_first_token_only = src.strip_first_token_only; p->join_with_space = src.join_with_space;
      p->eot = src.eot;
      p->template_before.clear();
      p->template_after.clear();
      if (info.add_bos_token.value_or(true) && info.bos_id >= 0) p->template_before.push_back(info.bos_id);
      const int32_t eos = info.eos_token.empty() ? -1 : tok.token_id(info.eos_token);
      if (info.add_eos_token.value_or(false) && eos >= 0) p->template_after.push_back(eos);
      tok = tokenizer(std::shared_ptr<const impl>(std::move(p)));
    }
  } catch (const load_error& e) {
    return make_status(errc::format_error, "tokenizer: '" + (where.empty() ? dir : where) + "': " + e.msg);
  }
  return tok.with_info(std::move(info));
}

}  // namespace infer
