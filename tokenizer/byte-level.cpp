// GPT-2's bytes_to_unicode: how byte-level vocabularies spell bytes as printable text.
#include "tokenizer/impl.hpp"

namespace infer::tok_detail {

// GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the
// other 68 bytes map to U+0100.. in byte order, so every token is printable text.
byte_unicode_map::byte_unicode_map() {
    to_byte.fill(-1);
    uint32_t n = 0;
    for (uint32_t b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_cp[b] = printable ? b : 256 + n++;
      to_byte[to_cp[b]] = int16_t(b);
    }
}

const byte_unicode_map& byte_unicode() {
  static const byte_unicode_map m;
  return m;
}

// Decodes a vocab key (valid UTF-8, checked by the JSON parser) to raw bytes. A key
// with a code point outside the map is an added/special token: kept as its UTF-8.
std::string key_to_bytes(const std::string& key) {
  const auto& m = byte_unicode();
  std::string out;
  out.reserve(key.size());
  const auto* p = reinterpret_cast<const unsigned char*>(key.data());
  size_t i = 0;
  while (i < key.size()) {
    size_t len;
    if (scan_utf8(p + i, key.size() - i, len) != u8_scan::ok) return key;
    uint32_t cp = p[i];
    if (len == 2) cp = ((p[i] & 0x1Fu) << 6) | (p[i + 1] & 0x3Fu);
    else if (len == 3) cp = ((p[i] & 0x0Fu) << 12) | ((p[i + 1] & 0x3Fu) << 6) | (p[i + 2] & 0x3Fu);
    else if (len == 4)
      cp = ((p[i] & 0x07u) << 18) | ((p[i + 1] & 0x3Fu) << 12) | ((p[i + 2] & 0x3Fu) << 6) | (p[i + 3] & 0x3Fu);
    if (cp >= byte_unicode_map::k_cps || m.to_byte[cp] < 0) return key;
    out.push_back(char(m.to_byte[cp]));
    i += len;
  }
  return out;
}


}  // namespace infer::tok_detail
