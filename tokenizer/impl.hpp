// Internal to infer_tokenizer: the state behind a tokenizer handle, shared by
// tokenizer.cpp (BPE, GPT-2 files, public API) and hf-json.cpp (tokenizer.json).
#pragma once
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "base/utf8.hpp"
#include "tokenizer/tokenizer.hpp"

namespace infer::tok_detail {

// UTF-8 (scan_utf8, u8_scan): base/utf8.hpp.
constexpr std::string_view k_replacement = utf8_replacement;
// GPT-2's pre-tokenizer pattern (gpt2-pattern.cpp).
extern const char* const gpt2_pattern;

// GPT-2's bytes_to_unicode table.
struct byte_unicode_map {
  static constexpr uint32_t k_cps = 256 + 68;
  std::array<uint32_t, 256> to_cp{};
  std::array<int16_t, k_cps> to_byte{};
  byte_unicode_map();
};
const byte_unicode_map& byte_unicode();
// A byte-level vocabulary key to its bytes; a key with a code point outside the table
// (an added token such as "<|endoftext|>" is inside it) is kept as its UTF-8.
std::string key_to_bytes(const std::string& key);
std::string read_file(const std::string& path, status& st, const char* what);

// Code point at s[i] of valid UTF-8; i advances past it.
inline uint32_t next_cp(std::string_view s, size_t& i) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  uint32_t c = p[i];
  if (c < 0x80) { ++i; return c; }
  if (c < 0xE0) { c = ((c & 0x1Fu) << 6) | (p[i + 1] & 0x3Fu); i += 2; return c; }
  if (c < 0xF0) { c = ((c & 0x0Fu) << 12) | ((p[i + 1] & 0x3Fu) << 6) | (p[i + 2] & 0x3Fu); i += 3; return c; }
  c = ((c & 0x07u) << 18) | ((p[i + 1] & 0x3Fu) << 12) | ((p[i + 2] & 0x3Fu) << 6) | (p[i + 3] & 0x3Fu);
  i += 4;
  return c;
}
inline void append_cp(std::string& out, uint32_t cp) {
  if (cp < 0x80) out.push_back(char(cp));
  else if (cp < 0x800) { out.push_back(char(0xC0 | (cp >> 6))); out.push_back(char(0x80 | (cp & 0x3F))); }
  else if (cp < 0x10000) {
    out.push_back(char(0xE0 | (cp >> 12))); out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(char(0xF0 | (cp >> 18))); out.push_back(char(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F))); out.push_back(char(0x80 | (cp & 0x3F)));
  }
}

struct sv_hash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using id_map = std::unordered_map<std::string, int32_t, sv_hash, std::equal_to<>>;

// A compiled PCRE2 pattern (UTF + UCP, JIT where available).
struct regex {
  std::shared_ptr<pcre2_code> code;
  bool jit = false;
  // Appends [start, end) of every non-empty match in s (valid UTF-8) to out.
  void find_all(std::string_view s, std::vector<std::pair<uint32_t, uint32_t>>& out) const;
};
// Compiles pattern; err gets PCRE2's message with the offset on failure.
bool compile_regex(const std::string& pattern, regex& out, std::string& err);

// A piece of text moving through the normalizer and pre-tokenizers.
struct piece_list {
  std::string buf;                                 // the pieces' bytes, back to back
  std::vector<std::pair<uint32_t, uint32_t>> at;   // [start, end) of each piece in buf
  std::vector<uint8_t> first;                      // 1: starts at offset 0 of the input section 0
  void clear() { buf.clear(); at.clear(); first.clear(); }
  void add(std::string_view s, bool f) {
    if (s.empty()) return;
    at.emplace_back(uint32_t(buf.size()), uint32_t(buf.size() + s.size()));
    buf.append(s);
    first.push_back(f);
  }
  std::string_view get(size_t i) const { return std::string_view(buf).substr(at[i].first, at[i].second - at[i].first); }
  size_t size() const { return at.size(); }
};

// Normalizers, pre-tokenizers and the rest are compiled from tokenizer.json into these.
struct normalizer_op {
  enum kind_t { nfc, nfd, nfkc, nfkd, lowercase, prepend, replace_str, replace_re, strip, strip_accents } kind;
  std::string a, b;  // prepend: a; replace: pattern a -> b
  regex re;
  bool left = false, right = false;  // strip
};

struct pretok_op {
  enum kind_t { split_str, split_re, byte_level, metaspace, digits, whitespace, whitespace_split } kind;
  enum behavior_t { removed, isolated, merged_prev, merged_next, contiguous } behavior = isolated;
  bool invert = false;
  std::string str;   // split_str pattern; metaspace replacement
  regex re;          // split_re; byte_level with use_regex (GPT-2's pattern)
  bool add_prefix_space = false, use_regex = false;
  enum prepend_t { always, first, never } prepend = always;
  bool split = true;        // metaspace
  bool individual = false;  // digits
};

struct added_token {
  std::string content;
  int32_t id = -1;
  bool special = false, lstrip = false, rstrip = false, single_word = false, normalized = false;
};

// Byte trie over added tokens' contents: longest match at a position.
struct added_trie {
  struct node {
    std::vector<std::pair<uint8_t, int32_t>> next;  // sorted by byte
    int32_t token = -1;                              // index into added tokens
  };
  std::vector<node> nodes{1};
  void insert(std::string_view s, int32_t token);
  // Longest token starting at s[pos]: its index and length, or -1.
  int32_t longest(std::string_view s, size_t pos, size_t& len) const;
  bool empty() const { return nodes.size() == 1; }
};

// The tokenizers library's AddedVocabulary::find_matches over s: gap(text, offset) for the
// text between matches, match(id) for each added token found (hf-json.cpp).
void split_added_tokens(std::string_view s, const added_trie& trie, const std::vector<added_token>& added,
                        bool split_special, const std::function<void(std::string_view, size_t)>& gap,
                        const std::function<void(int32_t)>& match);

}  // namespace infer::tok_detail

namespace infer {

struct tokenizer::impl {
  enum class kind_t { bytes, gpt2, hf } kind = kind_t::bytes;
  std::string format;  // for describe(): "tokenizer.json", "vocab.json + merges.txt", "byte-level"

  // Per id: bytes as decoded inside a sequence, and the vocabulary's spelling.
  std::string bytes;
  std::vector<uint32_t> offs;  // [n_vocab + 1]
  std::string strs;
  std::vector<uint32_t> soffs;  // [n_vocab + 1]
  std::vector<uint8_t> special;  // [n_vocab]
  tok_detail::id_map str_to_id;  // vocabulary spelling and added tokens -> id

  // BPE model. Symbols are bytes (byte-level: ByteLevel pre-tokenizer or GPT-2 files)
  // or UTF-8 characters (SentencePiece-style vocabularies such as Llama 2's).
  struct merge {
    uint32_t rank;
    int32_t id;
  };
  bool byte_symbols = true;
  tok_detail::id_map model_id;                // model token (bytes, or UTF-8 text) -> id
  std::array<int32_t, 256> byte_id{};         // byte-level: the id of each single byte
  std::unordered_map<uint64_t, merge> ranks;  // key: (left id << 32) | right id
  bool ignore_merges = false, byte_fallback = false, fuse_unk = false;
  int32_t unk_id = -1;
  std::array<int32_t, 256> fallback_id{};     // <0xNN>, -1 where missing

  // tokenizer.json pipeline.
  std::vector<tok_detail::added_token> added;
  tok_detail::added_trie raw_trie, norm_trie;  // added tokens with normalized false / true
  std::vector<tok_detail::normalizer_op> normalizers;
  std::vector<tok_detail::pretok_op> pretoks;
  std::vector<int32_t> template_before, template_after;  // post-processor around the text
  // Decoder, compiled: per-id bytes above, then the start-of-sequence strip.
  char strip_char = ' ';
  size_t strip_start = 0;
  bool strip_first_token_only = false;  // Metaspace: only the first token's; Fuse + Strip: the text's
  bool join_with_space = false;         // no decoder: tokens joined by " "

  // GPT-2 files: the pattern, with the hand-written ASCII path.
  tok_detail::regex gpt2_re;

  int32_t eot = -1;

  // Word -> ids cache.
  static constexpr size_t k_cache_shards = 16;
  static constexpr size_t k_cache_max_chunk = 64;
  static constexpr size_t k_cache_max_entries = 8192;
  struct cache_shard {
    std::mutex mu;
    std::unordered_map<std::string, std::vector<int32_t>, tok_detail::sv_hash, std::equal_to<>> map;
  };
  mutable std::array<cache_shard, k_cache_shards> cache;

  struct node {
    int32_t id, prev, next;
  };
  struct cand {
    uint32_t rank;
    int32_t left, a, b, merged;
    bool operator>(const cand& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  struct scratch {
    std::vector<node> nodes;
    std::vector<cand> heap;
    std::vector<int32_t> ids;
    std::vector<int32_t> syms;
    tok_detail::piece_list a, b;
    std::string norm;
    std::vector<std::pair<uint32_t, uint32_t>> spans;
  };

  int32_t n_vocab() const { return int32_t(offs.size()) - 1; }
  static uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

  void push_cand(scratch& sc, int32_t left) const;
  // Merges sc.syms (initial symbol ids) into sc.ids.
  void bpe(scratch& sc) const;
  // One pre-tokenized word (model-space bytes) -> ids appended to out, through the cache.
  void encode_word(std::string_view word, std::vector<int32_t>& out, scratch& sc) const;
  void word_symbols(std::string_view word, scratch& sc) const;

  // tokenizer.json encode (hf-json.cpp).
  void hf_encode(std::string_view text, std::vector<int32_t>& out, const encode_options& o) const;
  void normalize(std::string_view in, std::string& out, scratch& sc) const;
  void pre_tokenize_hf(tok_detail::piece_list& pl, scratch& sc) const;

  void finish_tables(std::vector<std::string>& tok_bytes, std::vector<std::string>& tok_strs);
};

}  // namespace infer
