#include "grammar/regex.hpp"

#include <string>
#include <vector>

namespace infer::grammar {
namespace {

struct regex_error {
  std::string message;
};

constexpr int32_t max_count = 1000;
constexpr uint32_t max_range_chars = 4096;  // a non-ASCII class range becomes one literal per character

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

// A set of characters: ASCII bytes, plus either every non-ASCII character or a list of them.
struct char_class {
  byte_set ascii;
  bool all_multibyte = false;
  std::vector<uint32_t> multibyte;  // code points >= 0x80
};

byte_set ascii_range(int lo, int hi) {
  byte_set s;
  for (int b = lo; b <= hi; ++b) s.set(size_t(b));
  return s;
}

class parser {
 public:
  parser(std::string_view re, const regex_options& opt) : s_(re), opt_(opt) {
    for (int b = 0; b < 0x80; ++b) allowed_.set(size_t(b));
    if (opt_.json_string) {
      for (int b = 0; b < 0x20; ++b) allowed_.reset(size_t(b));
      allowed_.reset('"');
      allowed_.reset('\\');
    }
  }

  pattern_ptr parse() {
    if (peek('^')) ++i_;
    pattern_ptr p = alternation();
    if (i_ < s_.size()) {
      if (s_[i_] == ')') fail("unbalanced ')'");
      fail("unexpected '" + std::string(1, s_[i_]) + "'");
    }
    return p;
  }

 private:
  [[noreturn]] void fail(const std::string& m) const {
    throw regex_error{m + " at offset " + std::to_string(i_)};
  }
  bool peek(char c) const { return i_ < s_.size() && s_[i_] == c; }
  bool at_end_anchor() const { return i_ + 1 == s_.size() && s_[i_] == '$'; }

  pattern_ptr alternation() {
    std::vector<pattern_ptr> alts{sequence()};
    while (peek('|')) {
      ++i_;
      alts.push_back(sequence());
    }
    return byte_pattern::make_alt(std::move(alts));
  }

  pattern_ptr sequence() {
    std::vector<pattern_ptr> parts;
    while (i_ < s_.size() && s_[i_] != '|' && s_[i_] != ')') {
      if (at_end_anchor()) {
        ++i_;
        break;
      }
      pattern_ptr a = atom();
      parts.push_back(quantified(std::move(a)));
    }
    return byte_pattern::make_seq(std::move(parts));
  }

  int32_t number() {
    size_t start = i_;
    int64_t v = 0;
    while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') {
      v = v * 10 + (s_[i_] - '0');
      if (v > max_count) fail("a repetition count above " + std::to_string(max_count));
      ++i_;
    }
    if (i_ == start) fail("a number expected in {m,n}");
    return int32_t(v);
  }

  pattern_ptr quantified(pattern_ptr a) {
    for (;;) {
      int32_t lo = 1, hi = 1;
      if (peek('*')) lo = 0, hi = -1, ++i_;
      else if (peek('+')) lo = 1, hi = -1, ++i_;
      else if (peek('?')) lo = 0, hi = 1, ++i_;
      else if (peek('{') && i_ + 1 < s_.size() && s_[i_ + 1] >= '0' && s_[i_ + 1] <= '9') {
        ++i_;
        lo = hi = number();
        if (peek(',')) {
          ++i_;
          hi = peek('}') ? -1 : number();
        }
        if (!peek('}')) fail("'}' expected");
        ++i_;
        if (hi >= 0 && hi < lo) fail("{m,n} with n < m");
      } else {
        return a;
      }
      if (peek('?')) ++i_;  // lazy: the same language
      if (peek('*') || peek('+') || (peek('?'))) fail("a quantifier after a quantifier");
      a = byte_pattern::make_repeat(std::move(a), lo, hi);
    }
  }

  uint32_t hex(size_t n) {
    uint32_t v = 0;
    for (size_t k = 0; k < n; ++k, ++i_) {
      if (i_ >= s_.size()) fail("a hex digit expected");
      char c = s_[i_];
      int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (d < 0) fail("a hex digit expected");
      v = v * 16 + uint32_t(d);
    }
    return v;
  }

  // One UTF-8 character of the pattern itself.
  uint32_t utf8_char() {
    unsigned char c = uint8_t(s_[i_]);
    int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i_ + size_t(n) > s_.size()) fail("invalid UTF-8 in the pattern");
    uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
    for (int k = 1; k < n; ++k) {
      unsigned char d = uint8_t(s_[i_ + size_t(k)]);
      if ((d & 0xC0) != 0x80) fail("invalid UTF-8 in the pattern");
      cp = (cp << 6) | (d & 0x3F);
    }
    i_ += size_t(n);
    return cp;
  }

  // After a backslash: a class escape fills `cls` and returns true; else `cp` is the character.
  bool escape(char_class& cls, uint32_t& cp, bool in_class) {
    if (i_ >= s_.size()) fail("a pattern ending in '\\'");
    char c = s_[i_++];
    auto shorthand = [&](const byte_set& s, bool negate) {
      if (negate) {
        cls.ascii |= ascii_range(0, 0x7F) & ~s;
        cls.all_multibyte = true;
      } else {
        cls.ascii |= s;
      }
      return true;
    };
    const byte_set digit = ascii_range('0', '9');
    const byte_set word = ascii_range('0', '9') | ascii_range('a', 'z') | ascii_range('A', 'Z') | ascii_range('_', '_');
    byte_set space;
    for (char w : {' ', '\t', '\n', '\r', '\f', '\v'}) space.set(uint8_t(w));
    switch (c) {
      case 'd': return shorthand(digit, false);
      case 'D': return shorthand(digit, true);
      case 'w': return shorthand(word, false);
      case 'W': return shorthand(word, true);
      case 's': return shorthand(space, false);
      case 'S': return shorthand(space, true);
      case 'n': cp = '\n'; return false;
      case 't': cp = '\t'; return false;
      case 'r': cp = '\r'; return false;
      case 'f': cp = '\f'; return false;
      case 'v': cp = '\v'; return false;
      case '0': cp = 0; return false;
      case 'x': cp = hex(2); return false;
      case 'u':
        if (peek('{')) {
          ++i_;
          cp = 0;
          size_t n = 0;
          while (i_ < s_.size() && s_[i_] != '}' && n < 6) cp = cp * 16 + hex(1), ++n;
          if (!peek('}') || n == 0 || cp > 0x10FFFF) fail("a bad \\u{...} escape");
          ++i_;
        } else {
          cp = hex(4);
        }
        if (cp >= 0xD800 && cp <= 0xDFFF) fail("a surrogate \\u escape");
        return false;
      case 'b':
        if (in_class) { cp = '\b'; return false; }
        fail("\\b (word boundary) is not supported");
      case 'B': fail("\\B is not supported");
      default:
        if (c >= '1' && c <= '9') fail("backreferences are not supported");
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) fail(std::string("unknown escape \\") + c);
        --i_;
        cp = utf8_char();
        return false;
    }
  }

  void add_char(char_class& cls, uint32_t cp) {
    if (cp < 0x80) cls.ascii.set(size_t(cp));
    else cls.multibyte.push_back(cp);
  }

  char_class bracket() {  // after '['
    char_class cls;
    bool negate = false;
    if (peek('^')) negate = true, ++i_;
    bool first = true;
    while (i_ < s_.size() && (s_[i_] != ']' || first)) {
      first = false;
      uint32_t lo = 0;
      char_class sub;
      bool is_class = false;
      if (s_[i_] == '\\') {
        ++i_;
        is_class = escape(sub, lo, true);
      } else {
        lo = utf8_char();
      }
      if (is_class) {
        cls.ascii |= sub.ascii;
        cls.all_multibyte = cls.all_multibyte || sub.all_multibyte;
        continue;
      }
      if (peek('-') && i_ + 1 < s_.size() && s_[i_ + 1] != ']') {
        ++i_;
        uint32_t hi = 0;
        if (s_[i_] == '\\') {
          ++i_;
          if (escape(sub, hi, true)) fail("a class escape as a range end");
        } else {
          hi = utf8_char();
        }
        if (hi < lo) fail("a range out of order");
        for (uint32_t cp = lo; cp <= hi && cp < 0x80; ++cp) cls.ascii.set(size_t(cp));
        if (hi >= 0x80) {
          const uint32_t from = std::max<uint32_t>(lo, 0x80);
          if (hi - from + 1 > max_range_chars) {
            if (from <= 0x80 && hi >= 0x10FFFF) cls.all_multibyte = true;
            else fail("a non-ASCII range of more than " + std::to_string(max_range_chars) + " characters");
          } else {
            for (uint32_t cp = from; cp <= hi; ++cp)
              if (cp < 0xD800 || cp > 0xDFFF) cls.multibyte.push_back(cp);
          }
        }
      } else {
        add_char(cls, lo);
      }
    }
    if (!peek(']')) fail("an unterminated [...] class");
    ++i_;
    if (negate) {
      if (!cls.multibyte.empty()) fail("a negated class with non-ASCII members is not supported");
      cls.ascii = ascii_range(0, 0x7F) & ~cls.ascii;
      cls.all_multibyte = !cls.all_multibyte;
    }
    return cls;
  }

  pattern_ptr of_class(const char_class& cls) {
    const byte_set ascii = cls.ascii & allowed_;
    if (cls.all_multibyte) return byte_pattern::make_utf8_char(ascii);
    std::vector<pattern_ptr> alts;
    if (ascii.any()) alts.push_back(byte_pattern::make_set(ascii));
    for (uint32_t cp : cls.multibyte) {
      std::string u;
      append_utf8(u, cp);
      alts.push_back(byte_pattern::make_literal(u));
    }
    return byte_pattern::make_alt(std::move(alts));  // empty: matches nothing
  }

  pattern_ptr of_char(uint32_t cp) {
    char_class cls;
    add_char(cls, cp);
    return of_class(cls);
  }

  pattern_ptr atom() {
    char c = s_[i_];
    switch (c) {
      case '(': {
        ++i_;
        if (peek('?')) {
          ++i_;
          if (peek(':')) {
            ++i_;
          } else if (peek('<') && i_ + 1 < s_.size() && s_[i_ + 1] != '=' && s_[i_ + 1] != '!') {
            while (i_ < s_.size() && s_[i_] != '>') ++i_;  // a named group
            if (!peek('>')) fail("an unterminated group name");
            ++i_;
          } else {
            fail("lookaround and inline flags are not supported");
          }
        }
        pattern_ptr p = alternation();
        if (!peek(')')) fail("')' expected");
        ++i_;
        return p;
      }
      case '[': ++i_; return of_class(bracket());
      case '.': {
        ++i_;
        char_class cls;
        cls.ascii = ascii_range(0, 0x7F);
        cls.ascii.reset('\n');
        cls.ascii.reset('\r');
        cls.all_multibyte = true;
        return of_class(cls);
      }
      case '\\': {
        ++i_;
        char_class cls;
        uint32_t cp = 0;
        if (escape(cls, cp, false)) return of_class(cls);
        return of_char(cp);
      }
      case '^': fail("'^' inside the pattern is not supported (the whole output is matched)");
      case '$': fail("'$' inside the pattern is not supported (the whole output is matched)");
      case '*': case '+': case '?': fail("a quantifier with nothing to repeat");
      case '{':
        if (i_ + 1 < s_.size() && s_[i_ + 1] >= '0' && s_[i_ + 1] <= '9') fail("a quantifier with nothing to repeat");
        ++i_;
        return of_char('{');
      default: return of_char(utf8_char());
    }
  }

  std::string_view s_;
  regex_options opt_;
  byte_set allowed_;  // ASCII bytes a match may contain
  size_t i_ = 0;
};

}  // namespace

result<pattern_ptr> regex_pattern(std::string_view re, const regex_options& opt) {
  try {
    return parser(re, opt).parse();
  } catch (const regex_error& e) {
    return make_status(errc::invalid_argument, e.message);
  }
}

}  // namespace infer::grammar
