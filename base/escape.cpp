#include "base/escape.hpp"

#include "base/utf8.hpp"

namespace infer {

namespace {

void append_u(std::string& out, uint32_t u, const char* hex) {
  out += "\\u";
  for (int sh = 12; sh >= 0; sh -= 4) out.push_back(hex[(u >> sh) & 15]);
}

// The code point of the well-formed sequence p[0..len).
uint32_t decode(const unsigned char* p, size_t len) {
  uint32_t cp = p[0] & (0xFF >> (len + 1));
  for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (p[k] & 0x3F);
  return cp;
}

}  // namespace

void append_escaped(std::string& out, std::string_view s, const escape_rules& r) {
  const char* hex = r.upper_hex ? "0123456789ABCDEF" : "0123456789abcdef";
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  for (size_t i = 0; i < n;) {
    const unsigned char c = p[i];
    if (c < 0x80) {
      switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        case '\b': out += "\\b"; break;
        case '\f': out += "\\f"; break;
        default:
          if (c < 0x20 || (c == 0x7F && r.escape_del)) append_u(out, c, hex);
          else out.push_back(char(c));
      }
      ++i;
      continue;
    }
    const size_t len = utf8_sequence_at(p, i, n);
    if (len == 0) {  // ill-formed: one U+FFFD per byte
      if (r.ensure_ascii || r.escaped_replacement) append_u(out, 0xFFFD, hex);
      else out += utf8_replacement;
      ++i;
      continue;
    }
    if (!r.ensure_ascii) {
      out.append(s.data() + i, len);
    } else if (uint32_t cp = decode(p + i, len); cp >= 0x10000) {
      cp -= 0x10000;
      append_u(out, 0xD800 + (cp >> 10), hex);
      append_u(out, 0xDC00 + (cp & 0x3FF), hex);
    } else {
      append_u(out, cp, hex);
    }
    i += len;
  }
}

}  // namespace infer
