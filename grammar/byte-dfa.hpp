// byte_dfa: the automaton every constraint compiles to, and byte_pattern, the language
// description it is built from.
//
//   regex text ──grammar/regex──┐
//   JSON schema ─grammar/json-schema─> byte_pattern (a DAG) ──compile_byte_dfa──> byte_dfa
//   choice list ────────────────┘
//
// A byte_pattern is a regular expression over bytes as a tree whose subtrees may be shared
// (a JSON value schema referenced from many places is one node). compile_byte_dfa builds a
// Thompson NFA right to left, memoising each (node, continuation) pair so that a shared
// subtree followed by the same continuation is built once, then determinises it (subset
// construction over byte equivalence classes) and drops the states from which no accepting
// state can be reached: every transition left in the DFA leads somewhere that can still
// finish, which is what makes a token mask "can this token be part of a valid output".
//
// JSON's nesting is bounded (grammar/json-schema: max_depth) so that JSON, too, is regular:
// the DFA is a pushdown automaton with its stack depth bounded and folded into the states.
// Limits (nfa_limit, dfa_limit) turn a pathological pattern into an error, never a hang.
#pragma once
#include <array>
#include <bitset>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.hpp"

namespace infer::grammar {

using byte_set = std::bitset<256>;

struct byte_pattern;
using pattern_ptr = std::shared_ptr<const byte_pattern>;

struct byte_pattern {
  enum class kind : uint8_t { empty, set, seq, alt, repeat };
  kind type = kind::empty;
  byte_set bytes;                  // set
  std::vector<pattern_ptr> parts;  // seq, alt; repeat: one
  int32_t min = 0, max = 0;        // repeat: max -1 = unbounded

  static pattern_ptr make_empty();
  static pattern_ptr make_set(const byte_set& s);
  static pattern_ptr make_byte(uint8_t b);
  static pattern_ptr make_literal(std::string_view bytes);
  static pattern_ptr make_seq(std::vector<pattern_ptr> parts);
  static pattern_ptr make_alt(std::vector<pattern_ptr> parts);
  static pattern_ptr make_repeat(pattern_ptr p, int32_t min, int32_t max);
  // Any one well-formed UTF-8 character (no surrogates, no overlongs) whose first byte, when
  // ASCII, is in `ascii` (bytes >= 0x80 of `ascii` are ignored).
  static pattern_ptr make_utf8_char(const byte_set& ascii);
};

struct dfa_limits {
  int32_t nfa_states = 1'000'000;
  int32_t dfa_states = 60'000;
};

class byte_dfa {
 public:
  static constexpr int32_t dead = -1;

  int32_t n_states() const { return n_states_; }
  int32_t start() const { return 0; }
  int32_t n_classes() const { return n_classes_; }
  uint8_t byte_class(uint8_t b) const { return cls_[b]; }
  // -1: the byte leaves the language.
  int32_t next(int32_t s, uint8_t b) const { return trans_[size_t(s) * size_t(n_classes_) + cls_[b]]; }
  int32_t next_class(int32_t s, int32_t c) const { return trans_[size_t(s) * size_t(n_classes_) + size_t(c)]; }
  bool accepting(int32_t s) const { return accept_[size_t(s)] != 0; }
  // Whether any byte continues from s (false: an accepting end).
  bool has_next(int32_t s) const { return live_out_[size_t(s)] != 0; }
  // The state after `bytes` from s; -1 when they leave the language.
  int32_t walk(int32_t s, std::string_view bytes) const {
    for (unsigned char c : bytes) {
      if (s < 0) return dead;
      s = next(s, c);
    }
    return s;
  }
  bool matches(std::string_view bytes) const {
    int32_t s = walk(start(), bytes);
    return s >= 0 && accepting(s);
  }
  size_t memory_bytes() const { return trans_.size() * sizeof(int32_t) + accept_.size() * 2; }

 private:
  friend result<byte_dfa> compile_byte_dfa(const pattern_ptr& p, const dfa_limits& lim);
  int32_t n_states_ = 0;
  int32_t n_classes_ = 0;
  std::array<uint8_t, 256> cls_{};
  std::vector<int32_t> trans_;  // [state][class]
  std::vector<uint8_t> accept_, live_out_;
};

// invalid_argument: the pattern matches nothing, or it is too large (names the limit).
result<byte_dfa> compile_byte_dfa(const pattern_ptr& p, const dfa_limits& lim = {});

}  // namespace infer::grammar
