#include "base/utf8.hpp"

#include <algorithm>

namespace infer {


// Classifies the sequence starting at p[0] (n >= 1 bytes available) by Unicode's
// table 3-7 of well-formed byte sequences. len: bytes of the character (ok), of the
// maximal ill-formed subpart (bad), or available so far (partial: might complete).
u8_scan scan_utf8(const unsigned char* p, size_t n, size_t& len) {
  const unsigned char c = p[0];
  if (c < 0x80) { len = 1; return u8_scan::ok; }
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) need = 1;
  else if (c == 0xE0) { need = 2; lo = 0xA0; }                  // no overlongs
  else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) need = 2;
  else if (c == 0xED) { need = 2; hi = 0x9F; }                  // no surrogates
  else if (c == 0xF0) { need = 3; lo = 0x90; }                  // no overlongs
  else if (c >= 0xF1 && c <= 0xF3) need = 3;
  else if (c == 0xF4) { need = 3; hi = 0x8F; }                  // <= U+10FFFF
  else { len = 1; return u8_scan::bad; }                       // 80-C1, F5-FF
  for (size_t i = 1; i <= need; ++i) {
    if (i >= n) { len = i; return u8_scan::partial; }
    if (p[i] < lo || p[i] > hi) { len = i; return u8_scan::bad; }
    lo = 0x80; hi = 0xBF;
  }
  len = need + 1;
  return u8_scan::ok;
}



bool utf8_is_valid(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t i = 0, n = s.size();
  while (i < n) {
    if (p[i] < 0x80) { ++i; continue; }
    size_t len;
    if (scan_utf8(p + i, n - i, len) != u8_scan::ok) return false;
    i += len;
  }
  return true;
}

std::string utf8_sanitize(std::string_view s) {
  if (utf8_is_valid(s)) return std::string(s);
  utf8_stream_decoder d;
  std::string out;
  out.reserve(s.size() + 8);
  d.push(s, out);
  d.flush(out);
  return out;
}

void utf8_stream_decoder::push(std::string_view bytes, std::string& out) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  size_t n = bytes.size(), i = 0;
  // First finish (or reject) the character held back from earlier bytes.
  while (n_pending_ > 0 && i < n) {
    pending_[n_pending_++] = p[i++];
    size_t len;
    u8_scan r = scan_utf8(pending_, n_pending_, len);
    if (r == u8_scan::partial) continue;
    if (r == u8_scan::ok) {
      out.append(reinterpret_cast<const char*>(pending_), len);
      n_pending_ = 0;
    } else {
      // The subpart ends before the byte that broke it; that byte (and any after
      // it in pending_) starts afresh. len < n_pending_ always holds here.
      out.append(utf8_replacement);
      size_t rest = n_pending_ - len;
      unsigned char tmp[4];
      std::copy(pending_ + len, pending_ + n_pending_, tmp);
      n_pending_ = 0;
      // Re-feed the leftover (at most 3 bytes, all but the last already seen).
      push(std::string_view(reinterpret_cast<const char*>(tmp), rest), out);
    }
  }
  while (i < n) {
    if (p[i] < 0x80) { out.push_back(char(p[i++])); continue; }
    size_t len;
    u8_scan r = scan_utf8(p + i, n - i, len);
    if (r == u8_scan::ok) out.append(bytes.substr(i, len));
    else if (r == u8_scan::bad) out.append(utf8_replacement);
    else {
      std::copy(p + i, p + n, pending_);
      n_pending_ = n - i;
      len = n - i;
    }
    i += len;
  }
}

std::string utf8_stream_decoder::push(std::string_view bytes) {
  std::string out;
  push(bytes, out);
  return out;
}

void utf8_stream_decoder::flush(std::string& out) {
  // What is pending is a valid prefix, i.e. one maximal ill-formed subpart.
  if (n_pending_ > 0) out.append(utf8_replacement);
  n_pending_ = 0;
}

std::string utf8_stream_decoder::flush() {
  std::string out;
  flush(out);
  return out;
}

}  // namespace infer
