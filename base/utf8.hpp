// utf8: the one UTF-8 module. Well-formedness by Unicode's table 3-7 (no overlong form,
// surrogate or code point past U+10FFFF), the U+FFFD repair of ill-formed bytes (the
// WHATWG decoder's rule), and a streaming decoder that holds back a character cut between
// tokens. Used by the tokenizer, the request actor's text stream, and the string writers of
// net/protocol (JSON) and config (TOML).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace infer {

enum class u8_scan { ok, bad, partial };
// Classifies the sequence at p[0] (n >= 1 bytes) by Unicode's table 3-7. len: bytes of
// the character (ok), of the maximal ill-formed subpart (bad), or available (partial).
u8_scan scan_utf8(const unsigned char* p, size_t n, size_t& len);

inline constexpr std::string_view utf8_replacement = "\xEF\xBF\xBD";  // U+FFFD

// Length of the well-formed multi-byte sequence starting at p[i] (2..4), or 0 where there
// is none. ASCII is the caller's (0 too).
inline size_t utf8_sequence_at(const unsigned char* p, size_t i, size_t n) {
  size_t len = 0;
  if (i >= n || p[i] < 0x80) return 0;
  return scan_utf8(p + i, n - i, len) == u8_scan::ok ? len : 0;
}

bool utf8_is_valid(std::string_view s);
// The U+FFFD repair described below applied to a whole string (what a UTF-8 decoder
// that never fails shows). Returns s unchanged when it is valid.
std::string utf8_sanitize(std::string_view s);

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

}  // namespace infer
