// utf8: the one check of a multi-byte UTF-8 sequence that the string writers share (JSON
// frames in net/protocol, TOML strings in config): header-only, so pure libraries can use it.
#pragma once
#include <cstddef>
#include <cstdint>

namespace infer {

// Length of the well-formed multi-byte sequence starting at p[i] (2..4; no overlong form,
// surrogate or code point past U+10FFFF), or 0 where there is none. ASCII is the caller's.
inline size_t utf8_sequence_at(const unsigned char* p, size_t i, size_t n) {
  const unsigned char c = p[i];
  size_t len = 0;
  uint32_t cp = 0, min = 0;
  if ((c & 0xE0) == 0xC0) len = 2, cp = c & 0x1F, min = 0x80;
  else if ((c & 0xF0) == 0xE0) len = 3, cp = c & 0x0F, min = 0x800;
  else if ((c & 0xF8) == 0xF0) len = 4, cp = c & 0x07, min = 0x10000;
  if (len == 0 || i + len > n) return 0;
  for (size_t k = 1; k < len; ++k) {
    if ((p[i + k] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (p[i + k] & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

}  // namespace infer
