// grammar: constrained decoding. A request's constraint (grammar_spec: a JSON schema, any
// JSON object, a regex or a choice list) compiles into a byte_dfa (grammar/byte-dfa.hpp);
// joined with the model's vocabulary (token_vocab, a byte trie of every token's bytes) it
// gives, per automaton state, the bitmask of the tokens that keep the output inside the
// language. A sequence tracks its state in a grammar_matcher (two words: copy it to fork).
//
// Cost: compiling is the DFA construction (milliseconds for a tool schema, see bench/).
// A state's mask is computed the first time a sequence reaches that state, by one walk of the
// vocabulary trie in step with the DFA (branches die at the first byte that leaves the
// language), and is cached in the compiled grammar for every later sequence: the steady
// per-step cost is a lookup and a copy of n_vocab / 8 bytes. Masks are shared between the
// workers' threads: a slot is published once with an atomic pointer, readers take no lock.
//
// Special tokens (BOS, EOS, <|im_end|> ...) and tokens without bytes are never in a mask:
// the scheduler adds the sequence's stop ids where the automaton accepts.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "base/result.hpp"
#include "grammar/byte-dfa.hpp"

namespace infer {
class tokenizer;
}

namespace infer::grammar {

enum class grammar_kind : uint8_t { json_schema, json_object, regex, choice };
const char* to_string(grammar_kind k);

// What a request asks for, as text. key() is both the cache key and what crosses nodes.
struct grammar_spec {
  grammar_kind kind = grammar_kind::json_object;
  std::string text;            // json_schema: the schema; regex: the pattern; choice: a JSON array of strings
  int32_t max_whitespace = 2;  // JSON kinds: whitespace bytes allowed at each place JSON allows them

  std::string key() const;
  static result<grammar_spec> from_key(std::string_view key);
  // Parses and checks the constraint without building the automaton (cheap: for the network
  // layer's 400s). The message names the offending keyword or construct.
  status check() const;
};

// The vocabulary's byte strings as a trie.
class token_vocab {
 public:
  // bytes[id]; an empty string is never allowed.
  static std::shared_ptr<const token_vocab> build(const std::vector<std::string>& bytes);
  // token_bytes of every id below n_vocab (ids past the tokenizer's and special ones: none).
  static std::shared_ptr<const token_vocab> from_tokenizer(const tokenizer& tok, int32_t n_vocab);

  int32_t n_vocab() const { return n_vocab_; }
  int32_t n_words() const { return (n_vocab_ + 31) / 32; }
  std::string_view bytes(int32_t id) const {
    return id >= 0 && id < n_vocab_ ? std::string_view(bytes_[size_t(id)]) : std::string_view();
  }
  size_t n_nodes() const { return child_begin_.size() - 1; }

  // Sets in `mask` (n_words, cleared first) the tokens whose bytes all stay inside `dfa` from `state`.
  void fill_mask(const byte_dfa& dfa, int32_t state, uint32_t* mask) const;

 private:
  void walk(const byte_dfa& dfa, int32_t node, int32_t state, uint32_t* mask) const;
  int32_t n_vocab_ = 0;
  std::vector<std::string> bytes_;
  // CSR trie: node i's children are edges [child_begin_[i], child_begin_[i + 1]); the ids
  // whose bytes end at node i are ids_[id_begin_[i] .. id_begin_[i + 1]).
  std::vector<int32_t> child_begin_, id_begin_, ids_, edge_node_;
  std::vector<uint8_t> edge_byte_;
};

class compiled_grammar {
 public:
  static result<std::shared_ptr<const compiled_grammar>> compile(const grammar_spec& spec,
                                                                 std::shared_ptr<const token_vocab> vocab);
  ~compiled_grammar();

  const grammar_spec& spec() const { return spec_; }
  const byte_dfa& dfa() const { return dfa_; }
  const token_vocab& vocab() const { return *vocab_; }
  double compile_ms() const { return compile_ms_; }
  // The allowed tokens in `state` (n_words words). Cached; beyond the cache budget it is
  // computed into `scratch` and not kept.
  const uint32_t* mask(int32_t state, std::vector<uint32_t>& scratch) const;
  size_t cached_masks() const { return n_cached_.load(std::memory_order_relaxed); }

  static constexpr size_t mask_budget_bytes = size_t(256) << 20;

 private:
  compiled_grammar() = default;
  grammar_spec spec_;
  byte_dfa dfa_;
  std::shared_ptr<const token_vocab> vocab_;
  double compile_ms_ = 0;
  std::unique_ptr<std::atomic<uint32_t*>[]> masks_;  // [n_states]
  mutable std::atomic<size_t> n_cached_{0};
};

using grammar_ptr = std::shared_ptr<const compiled_grammar>;

// One sequence's position in its constraint.
struct grammar_matcher {
  grammar_ptr g;
  int32_t state = 0;

  explicit operator bool() const { return g != nullptr; }
  // False (state unchanged): the token's bytes leave the language (or it has none).
  bool advance(int32_t token) {
    int32_t t = g->dfa().walk(state, g->vocab().bytes(token));
    if (t < 0 || g->vocab().bytes(token).empty()) return false;
    state = t;
    return true;
  }
  bool accepting() const { return g->dfa().accepting(state); }
  // Accepting and nothing can follow: the output is complete.
  bool complete() const { return accepting() && !g->dfa().has_next(state); }
};

// Compiled grammars by spec key, least recently used evicted past `capacity`. Thread-safe;
// a miss compiles outside the lock (two threads missing the same key both compile once).
class grammar_cache {
 public:
  using vocab_source = std::function<std::shared_ptr<const token_vocab>()>;
  grammar_cache(size_t capacity, vocab_source vocab) : capacity_(capacity), vocab_fn_(std::move(vocab)) {}

  result<grammar_ptr> get(const grammar_spec& spec);
  grammar_ptr find(const std::string& key);  // no compile; null on a miss
  std::shared_ptr<const token_vocab> vocab();
  size_t size();
  uint64_t hits() const { return hits_.load(); }
  uint64_t misses() const { return misses_.load(); }

 private:
  size_t capacity_;
  vocab_source vocab_fn_;
  std::mutex mu_;
  std::shared_ptr<const token_vocab> vocab_;
  std::list<std::pair<std::string, grammar_ptr>> lru_;  // front: most recent
  std::unordered_map<std::string, std::list<std::pair<std::string, grammar_ptr>>::iterator> at_;
  std::atomic<uint64_t> hits_{0}, misses_{0};
};

}  // namespace infer::grammar
