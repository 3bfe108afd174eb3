#include "grammar/grammar.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <numeric>

#include <nlohmann/json.hpp>

#include "grammar/json-schema.hpp"
#include "grammar/regex.hpp"
#include "tokenizer/tokenizer.hpp"

namespace infer::grammar {

const char* to_string(grammar_kind k) {
  switch (k) {
    case grammar_kind::json_schema: return "json_schema";
    case grammar_kind::json_object: return "json_object";
    case grammar_kind::regex: return "regex";
    case grammar_kind::choice: return "choice";
  }
  return "json_object";
}

// "<kind letter><whitespace>:<text>", e.g. "s2:{...}".
std::string grammar_spec::key() const {
  const char letter[] = {'s', 'o', 'r', 'c'};
  return std::string(1, letter[int(kind)]) + std::to_string(max_whitespace) + ":" + text;
}

result<grammar_spec> grammar_spec::from_key(std::string_view key) {
  auto bad = [] { return make_status(errc::invalid_argument, "grammar: a malformed constraint key"); };
  const size_t colon = key.find(':');
  if (key.size() < 3 || colon == std::string_view::npos || colon < 2 || colon > 4) return bad();
  grammar_spec s;
  switch (key[0]) {
    case 's': s.kind = grammar_kind::json_schema; break;
    case 'o': s.kind = grammar_kind::json_object; break;
    case 'r': s.kind = grammar_kind::regex; break;
    case 'c': s.kind = grammar_kind::choice; break;
    default: return bad();
  }
  int32_t ws = 0;
  for (size_t i = 1; i < colon; ++i) {
    if (key[i] < '0' || key[i] > '9') return bad();
    ws = ws * 10 + (key[i] - '0');
  }
  s.max_whitespace = ws;
  s.text = std::string(key.substr(colon + 1));
  return s;
}

namespace {

result<pattern_ptr> pattern_of(const grammar_spec& spec) {
  json_options jo;
  jo.max_whitespace = spec.max_whitespace;
  switch (spec.kind) {
    case grammar_kind::json_object: return json_object_pattern(jo);
    case grammar_kind::json_schema: {
      nlohmann::ordered_json schema;
      try {
        schema = nlohmann::ordered_json::parse(spec.text);
      } catch (const std::exception&) {
        return make_status(errc::invalid_argument, "schema: not valid JSON");
      }
      return json_schema_pattern(schema, jo);
    }
    case grammar_kind::regex: return regex_pattern(spec.text);
    case grammar_kind::choice: {
      nlohmann::json list;
      try {
        list = nlohmann::json::parse(spec.text);
      } catch (const std::exception&) {
        return make_status(errc::invalid_argument, "choice: not valid JSON");
      }
      if (!list.is_array() || list.empty()) return make_status(errc::invalid_argument, "choice: must be a non-empty array of strings");
      std::vector<pattern_ptr> alts;
      for (size_t i = 0; i < list.size(); ++i) {
        if (!list[i].is_string() || list[i].get_ref<const std::string&>().empty())
          return make_status(errc::invalid_argument, "choice[" + std::to_string(i) + "]: must be a non-empty string");
        alts.push_back(byte_pattern::make_literal(list[i].get_ref<const std::string&>()));
      }
      return byte_pattern::make_alt(std::move(alts));
    }
  }
  return make_status(errc::invalid_argument, "grammar: unknown kind");
}

}  // namespace

status grammar_spec::check() const {
  auto p = pattern_of(*this);
  return p ? status::ok() : p.error();
}

// ---- token_vocab ---------------------------------------------------------------------

std::shared_ptr<const token_vocab> token_vocab::build(const std::vector<std::string>& bytes) {
  auto v = std::shared_ptr<token_vocab>(new token_vocab());
  v->n_vocab_ = int32_t(bytes.size());
  v->bytes_ = bytes;
  std::vector<int32_t> order;
  for (int32_t i = 0; i < v->n_vocab_; ++i)
    if (!bytes[size_t(i)].empty()) order.push_back(i);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return bytes[size_t(a)] != bytes[size_t(b)] ? bytes[size_t(a)] < bytes[size_t(b)] : a < b;
  });
  // Sorted insertion: each token shares its longest common prefix with the one before it.
  std::vector<int32_t> parent{-1}, node_of_id;
  std::vector<uint8_t> byte_in{0};
  std::vector<int32_t> path{0};  // path[k]: the node after k bytes of the previous token
  std::vector<int32_t> end_node(order.size());
  std::string_view prev;
  for (size_t k = 0; k < order.size(); ++k) {
    std::string_view b = bytes[size_t(order[k])];
    size_t lcp = 0;
    while (lcp < b.size() && lcp < prev.size() && b[lcp] == prev[lcp]) ++lcp;
    path.resize(lcp + 1);
    for (size_t j = lcp; j < b.size(); ++j) {
      parent.push_back(path.back());
      byte_in.push_back(uint8_t(b[j]));
      path.push_back(int32_t(parent.size()) - 1);
    }
    end_node[k] = path.back();
    prev = b;
  }
  const size_t N = parent.size();
  v->child_begin_.assign(N + 1, 0);
  for (size_t i = 1; i < N; ++i) ++v->child_begin_[size_t(parent[i]) + 1];
  for (size_t i = 0; i < N; ++i) v->child_begin_[i + 1] += v->child_begin_[i];
  v->edge_node_.resize(N > 0 ? N - 1 : 0);
  v->edge_byte_.resize(v->edge_node_.size());
  std::vector<int32_t> fill(v->child_begin_.begin(), v->child_begin_.end() - 1);
  for (size_t i = 1; i < N; ++i) {  // nodes were made in byte order under each parent
    const int32_t e = fill[size_t(parent[i])]++;
    v->edge_node_[size_t(e)] = int32_t(i);
    v->edge_byte_[size_t(e)] = byte_in[i];
  }
  v->id_begin_.assign(N + 1, 0);
  for (size_t k = 0; k < order.size(); ++k) ++v->id_begin_[size_t(end_node[k]) + 1];
  for (size_t i = 0; i < N; ++i) v->id_begin_[i + 1] += v->id_begin_[i];
  v->ids_.resize(order.size());
  std::vector<int32_t> fill_ids(v->id_begin_.begin(), v->id_begin_.end() - 1);
  for (size_t k = 0; k < order.size(); ++k) v->ids_[size_t(fill_ids[size_t(end_node[k])]++)] = order[k];
  return v;
}

std::shared_ptr<const token_vocab> token_vocab::from_tokenizer(const tokenizer& tok, int32_t n_vocab) {
  std::vector<std::string> bytes(size_t(std::max(n_vocab, 0)));
  const int32_t n = std::min(n_vocab, tok.n_vocab());
  for (int32_t id = 0; id < n; ++id)
    if (!tok.is_special(id)) bytes[size_t(id)] = std::string(tok.token_bytes(id));
  return build(bytes);
}

void token_vocab::walk(const byte_dfa& dfa, int32_t node, int32_t state, uint32_t* mask) const {
  for (int32_t e = child_begin_[size_t(node)]; e < child_begin_[size_t(node) + 1]; ++e) {
    const int32_t t = dfa.next(state, edge_byte_[size_t(e)]);
    if (t < 0) continue;
    const int32_t c = edge_node_[size_t(e)];
    for (int32_t k = id_begin_[size_t(c)]; k < id_begin_[size_t(c) + 1]; ++k) {
      const int32_t id = ids_[size_t(k)];
      mask[id >> 5] |= 1u << (id & 31);
    }
    if (child_begin_[size_t(c)] != child_begin_[size_t(c) + 1]) walk(dfa, c, t, mask);
  }
}

void token_vocab::fill_mask(const byte_dfa& dfa, int32_t state, uint32_t* mask) const {
  std::memset(mask, 0, size_t(n_words()) * sizeof(uint32_t));
  if (state >= 0 && !child_begin_.empty()) walk(dfa, 0, state, mask);
}

// ---- compiled_grammar ----------------------------------------------------------------

result<std::shared_ptr<const compiled_grammar>> compiled_grammar::compile(const grammar_spec& spec,
                                                                          std::shared_ptr<const token_vocab> vocab) {
  const auto t0 = std::chrono::steady_clock::now();
  auto p = pattern_of(spec);
  if (!p) return p.error();
  auto d = compile_byte_dfa(p.value());
  if (!d) return d.error();
  auto g = std::shared_ptr<compiled_grammar>(new compiled_grammar());
  g->spec_ = spec;
  g->dfa_ = std::move(d.value());
  g->vocab_ = std::move(vocab);
  g->masks_.reset(new std::atomic<uint32_t*>[size_t(g->dfa_.n_states())]);
  for (int32_t s = 0; s < g->dfa_.n_states(); ++s) g->masks_[size_t(s)].store(nullptr, std::memory_order_relaxed);
  g->compile_ms_ = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return std::shared_ptr<const compiled_grammar>(std::move(g));
}

compiled_grammar::~compiled_grammar() {
  if (!masks_) return;
  for (int32_t s = 0; s < dfa_.n_states(); ++s) delete[] masks_[size_t(s)].load();
}

const uint32_t* compiled_grammar::mask(int32_t state, std::vector<uint32_t>& scratch) const {
  const size_t W = size_t(vocab_->n_words());
  if (uint32_t* m = masks_[size_t(state)].load(std::memory_order_acquire)) return m;
  if ((n_cached_.load(std::memory_order_relaxed) + 1) * W * sizeof(uint32_t) > mask_budget_bytes) {
    scratch.resize(W);
    vocab_->fill_mask(dfa_, state, scratch.data());
    return scratch.data();
  }
  auto fresh = std::make_unique<uint32_t[]>(W);
  vocab_->fill_mask(dfa_, state, fresh.get());
  uint32_t* expected = nullptr;
  if (masks_[size_t(state)].compare_exchange_strong(expected, fresh.get(), std::memory_order_acq_rel)) {
    n_cached_.fetch_add(1, std::memory_order_relaxed);
    return fresh.release();
  }
  return expected;  // another thread published the same mask first
}

// ---- grammar_cache -------------------------------------------------------------------

std::shared_ptr<const token_vocab> grammar_cache::vocab() {
  std::lock_guard<std::mutex> lk(mu_);
  if (!vocab_ && vocab_fn_) vocab_ = vocab_fn_();
  return vocab_;
}

grammar_ptr grammar_cache::find(const std::string& key) {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = at_.find(key);
  if (it == at_.end()) return nullptr;
  lru_.splice(lru_.begin(), lru_, it->second);
  return it->second->second;
}

result<grammar_ptr> grammar_cache::get(const grammar_spec& spec) {
  const std::string key = spec.key();
  if (grammar_ptr g = find(key)) {
    hits_.fetch_add(1);
    return g;
  }
  misses_.fetch_add(1);
  auto v = vocab();
  if (!v) return make_status(errc::internal, "grammar: no vocabulary");
  auto made = compiled_grammar::compile(spec, v);
  if (!made) return made.error();
  std::lock_guard<std::mutex> lk(mu_);
  if (auto it = at_.find(key); it != at_.end()) {
    lru_.splice(lru_.begin(), lru_, it->second);
    return it->second->second;
  }
  lru_.emplace_front(key, made.value());
  at_[key] = lru_.begin();
  while (lru_.size() > std::max<size_t>(capacity_, 1)) {
    at_.erase(lru_.back().first);
    lru_.pop_back();
  }
  return made.value();
}

size_t grammar_cache::size() {
  std::lock_guard<std::mutex> lk(mu_);
  return lru_.size();
}

}  // namespace infer::grammar
