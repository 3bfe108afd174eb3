#include "template/jinja.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <functional>
#include <map>
#include <set>
#include <stdexcept>
#include <unordered_map>

#include "base/escape.hpp"

namespace infer::jinja {

namespace detail {

// ---- values ----------------------------------------------------------------------------

struct value;
struct object_t;
struct macro_def;
using array_t = std::vector<value>;

struct value {
  enum class kind : uint8_t { undefined, none, boolean, integer, floating, string, array, object, macro };
  kind k = kind::undefined;
  bool b = false;
  int64_t i = 0;
  double d = 0;
  std::string s;
  std::shared_ptr<array_t> a;
  std::shared_ptr<object_t> o;
  const macro_def* m = nullptr;
  bool ns = false;  // a namespace(): the one object a template may change

  static value none() { value v; v.k = kind::none; return v; }
  static value boolean(bool x) { value v; v.k = kind::boolean; v.b = x; return v; }
  static value integer(int64_t x) { value v; v.k = kind::integer; v.i = x; return v; }
  static value floating(double x) { value v; v.k = kind::floating; v.d = x; return v; }
  static value string(std::string x) { value v; v.k = kind::string; v.s = std::move(x); return v; }
  static value array(array_t x = {}) { value v; v.k = kind::array; v.a = std::make_shared<array_t>(std::move(x)); return v; }
  static value object();

  bool is_undefined() const { return k == kind::undefined; }
  bool is_none() const { return k == kind::none; }
  bool is_string() const { return k == kind::string; }
  bool is_array() const { return k == kind::array; }
  bool is_object() const { return k == kind::object; }
  bool is_number() const { return k == kind::integer || k == kind::floating; }
  double num() const { return k == kind::integer ? double(i) : k == kind::boolean ? (b ? 1.0 : 0.0) : d; }
};

// Insertion-ordered, as Python's dict (tojson and iteration keep the client's key order).
struct object_t {
  std::vector<std::pair<std::string, value>> items;
  const value* find(std::string_view key) const {
    for (const auto& [k, v] : items)
      if (k == key) return &v;
    return nullptr;
  }
  void set(const std::string& key, value v) {
    for (auto& [k, x] : items)
      if (k == key) { x = std::move(v); return; }
    items.emplace_back(key, std::move(v));
  }
};

value value::object() {
  value v;
  v.k = kind::object;
  v.o = std::make_shared<object_t>();
  return v;
}

struct render_error : std::runtime_error {
  int line;
  render_error(int l, const std::string& m) : std::runtime_error(m), line(l) {}
};

value from_json(const nlohmann::ordered_json& j) {
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null: return value::none();
    case nlohmann::ordered_json::value_t::boolean: return value::boolean(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer: return value::integer(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: {
      uint64_t u = j.get<uint64_t>();
      return u > uint64_t(INT64_MAX) ? value::floating(double(u)) : value::integer(int64_t(u));
    }
    case nlohmann::ordered_json::value_t::number_float: return value::floating(j.get<double>());
    case nlohmann::ordered_json::value_t::string: return value::string(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      array_t a;
      a.reserve(j.size());
      for (const auto& x : j) a.push_back(from_json(x));
      return value::array(std::move(a));
    }
    case nlohmann::ordered_json::value_t::object: {
      value v = value::object();
      for (auto it = j.begin(); it != j.end(); ++it) v.o->items.emplace_back(it.key(), from_json(it.value()));
      return v;
    }
    default: return value();
  }
}

// UTF-8 code point boundaries (byte offsets, with s.size() last).
std::vector<size_t> code_points(const std::string& s) {
  std::vector<size_t> at;
  at.reserve(s.size() + 1);
  for (size_t i = 0; i < s.size(); ++i)
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) at.push_back(i);
  at.push_back(s.size());
  return at;
}
size_t n_code_points(const std::string& s) { return code_points(s).size() - 1; }

bool truthy(const value& v) {
  switch (v.k) {
    case value::kind::undefined:
    case value::kind::none: return false;
    case value::kind::boolean: return v.b;
    case value::kind::integer: return v.i != 0;
    case value::kind::floating: return v.d != 0;
    case value::kind::string: return !v.s.empty();
    case value::kind::array: return !v.a->empty();
    case value::kind::object: return !v.o->items.empty();
    case value::kind::macro: return true;
  }
  return false;
}

std::string float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  std::string s = fmt::format("{}", d);
  if (s.find_first_of(".e") == std::string::npos) s += ".0";
  return s;
}

std::string to_str(const value& v);

// Python's repr() of a string, as Jinja prints a string inside a list or dict.
std::string py_repr_string(const std::string& s) {
  const bool dq = s.find('\'') != std::string::npos && s.find('"') == std::string::npos;
  const char q = dq ? '"' : '\'';
  std::string out(1, q);
  for (char c : s) {
    if (c == q || c == '\\') { out.push_back('\\'); out.push_back(c); }
    else if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else out.push_back(c);
  }
  out.push_back(q);
  return out;
}

std::string repr(const value& v) { return v.is_string() ? py_repr_string(v.s) : to_str(v); }

std::string to_str(const value& v) {
  switch (v.k) {
    case value::kind::undefined: return "";
    case value::kind::none: return "None";
    case value::kind::boolean: return v.b ? "True" : "False";
    case value::kind::integer: return std::to_string(v.i);
    case value::kind::floating: return float_repr(v.d);
    case value::kind::string: return v.s;
    case value::kind::array: {
      std::string out = "[";
      for (size_t n = 0; n < v.a->size(); ++n) {
        if (n) out += ", ";
        out += repr((*v.a)[n]);
      }
      return out + "]";
    }
    case value::kind::object: {
      std::string out = v.ns ? "<Namespace {" : "{";
      bool first = true;
      for (const auto& [k, x] : v.o->items) {
        if (!first) out += ", ";
        first = false;
        out += py_repr_string(k) + ": " + repr(x);
      }
      return out + (v.ns ? "}>" : "}");
    }
    case value::kind::macro: return "<macro>";
  }
  return "";
}

const char* type_name(const value& v) {
  switch (v.k) {
    case value::kind::undefined: return "undefined";
    case value::kind::none: return "none";
    case value::kind::boolean: return "boolean";
    case value::kind::integer: return "integer";
    case value::kind::floating: return "float";
    case value::kind::string: return "string";
    case value::kind::array: return "list";
    case value::kind::object: return "dict";
    case value::kind::macro: return "macro";
  }
  return "?";
}

// JSON text as Python's json.dumps writes it, which is what transformers' tojson filter
// calls (ensure_ascii=False unless asked): ", " and ": " separators unless indented.
struct json_opts {
  int indent = 0;
  bool sort_keys = false;
  bool ensure_ascii = false;
  std::string item_sep = ", ", key_sep = ": ";
  bool custom_seps = false;
};

// Python's json.dumps string form (base/escape.hpp: the JSON rules, ensure_ascii as asked).
void append_json_string(std::string& out, const std::string& s, bool ensure_ascii = false) {
  escape_rules r = json_escape_rules;
  r.ensure_ascii = ensure_ascii;
  out.push_back('"');
  append_escaped(out, s, r);
  out.push_back('"');
}

void to_json(std::string& out, const value& v, const json_opts& o, int depth) {
  const int indent = o.indent;
  const bool sort_keys = o.sort_keys;
  const std::string item_sep = o.custom_seps ? o.item_sep : indent > 0 ? "," : ", ";
  const std::string& key_sep = o.key_sep;
  auto newline = [&](int d) {
    out.push_back('\n');
    out.append(size_t(indent * d), ' ');
  };
  switch (v.k) {
    case value::kind::undefined:
    case value::kind::none: out += "null"; return;
    case value::kind::boolean: out += v.b ? "true" : "false"; return;
    case value::kind::integer: out += std::to_string(v.i); return;
    case value::kind::floating:
      out += std::isfinite(v.d) ? float_repr(v.d) : (std::isnan(v.d) ? "NaN" : v.d > 0 ? "Infinity" : "-Infinity");
      return;
    case value::kind::string: append_json_string(out, v.s, o.ensure_ascii); return;
    case value::kind::array: {
      out.push_back('[');
      for (size_t n = 0; n < v.a->size(); ++n) {
        if (n) out += item_sep;
        if (indent > 0) newline(depth + 1);
        to_json(out, (*v.a)[n], o, depth + 1);
      }
      if (indent > 0 && !v.a->empty()) newline(depth);
      out.push_back(']');
      return;
    }
    case value::kind::object: {
      std::vector<const std::pair<std::string, value>*> items;
      for (const auto& kv : v.o->items) items.push_back(&kv);
      if (sort_keys)
        std::stable_sort(items.begin(), items.end(), [](auto* x, auto* y) { return x->first < y->first; });
      out.push_back('{');
      for (size_t n = 0; n < items.size(); ++n) {
        if (n) out += item_sep;
        if (indent > 0) newline(depth + 1);
        append_json_string(out, items[n]->first, o.ensure_ascii);
        out += key_sep;
        to_json(out, items[n]->second, o, depth + 1);
      }
      if (indent > 0 && !items.empty()) newline(depth);
      out.push_back('}');
      return;
    }
    case value::kind::macro: out += "null"; return;
  }
}

bool equal(const value& x, const value& y) {
  if (x.is_number() && y.is_number()) return x.num() == y.num();
  if ((x.k == value::kind::boolean || x.is_number()) && (y.k == value::kind::boolean || y.is_number()))
    return x.num() == y.num();
  if (x.k != y.k) return false;
  switch (x.k) {
    case value::kind::undefined:
    case value::kind::none: return true;
    case value::kind::string: return x.s == y.s;
    case value::kind::array:
      if (x.a->size() != y.a->size()) return false;
      for (size_t n = 0; n < x.a->size(); ++n)
        if (!equal((*x.a)[n], (*y.a)[n])) return false;
      return true;
    case value::kind::object:
      if (x.o->items.size() != y.o->items.size()) return false;
      for (const auto& [k, v] : x.o->items) {
        const value* w = y.o->find(k);
        if (!w || !equal(v, *w)) return false;
      }
      return true;
    case value::kind::macro: return x.m == y.m;
    default: return false;
  }
}

// ---- lexer -------------------------------------------------------------------------------

enum class tk : uint8_t { text, var_begin, var_end, block_begin, block_end, name, str, integer, floating, op, eof };

struct token {
  tk type;
  std::string text;  // text, name, string value, operator, number spelling
  int line;
};

[[noreturn]] void fail(int line, const std::string& msg) { throw render_error(line, msg); }

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

int line_at(std::string_view src, size_t pos) {
  return 1 + int(std::count(src.begin(), src.begin() + std::min(pos, src.size()), '\n'));
}

std::vector<token> lex(std::string_view src) {
  if (!src.empty() && src.back() == '\n') {  // keep_trailing_newline=False
    src.remove_suffix(1);
    if (!src.empty() && src.back() == '\r') src.remove_suffix(1);
  }
  std::vector<token> out;
  size_t pos = 0;
  bool strip_next = false;  // the previous tag ended with '-'
  bool trim_next = false;   // the previous tag was a block or comment (trim_blocks)
  const size_t n = src.size();
  while (pos <= n) {
    size_t tag = src.find('{', pos);
    while (tag != std::string_view::npos && tag + 1 < n && src[tag + 1] != '{' && src[tag + 1] != '%' &&
           src[tag + 1] != '#')
      tag = src.find('{', tag + 1);
    if (tag != std::string_view::npos && tag + 1 >= n) tag = std::string_view::npos;
    std::string text(src.substr(pos, tag == std::string_view::npos ? n - pos : tag - pos));
    if (strip_next) {
      size_t k = 0;
      while (k < text.size() && is_space(text[k])) ++k;
      text.erase(0, k);
    } else if (trim_next) {
      if (!text.empty() && text[0] == '\n') text.erase(0, 1);
      else if (text.size() >= 2 && text[0] == '\r' && text[1] == '\n') text.erase(0, 2);
    }
    strip_next = trim_next = false;
    if (tag == std::string_view::npos) {
      if (!text.empty()) out.push_back({tk::text, std::move(text), line_at(src, pos)});
      break;
    }
    const char kind = src[tag + 1];
    size_t p = tag + 2;
    const bool minus = p < n && src[p] == '-';
    const bool plus = p < n && src[p] == '+';
    if (minus || plus) ++p;
    if (minus) {
      while (!text.empty() && is_space(text.back())) text.pop_back();
    } else if (!plus && (kind == '%' || kind == '#')) {  // lstrip_blocks
      size_t k = text.size();
      while (k > 0 && (text[k - 1] == ' ' || text[k - 1] == '\t')) --k;
      const size_t text_start = tag - text.size();  // where the (left-trimmed) text begins in src
      const bool line_start = k > 0 ? text[k - 1] == '\n' : (text_start == 0 || src[text_start - 1] == '\n');
      if (line_start) text.erase(k);
    }
    if (!text.empty()) out.push_back({tk::text, std::move(text), line_at(src, pos)});
    const int line = line_at(src, tag);
    if (kind == '#') {
      size_t end = src.find("#}", p);
      if (end == std::string_view::npos) fail(line, "unclosed comment");
      strip_next = end > 0 && src[end - 1] == '-' && end - 1 >= p;
      trim_next = !strip_next;
      pos = end + 2;
      continue;
    }
    // {% raw %} ... {% endraw %}: the text between is output as is.
    if (kind == '%') {
      size_t q = p;
      while (q < n && is_space(src[q])) ++q;
      if (src.substr(q, 3) == "raw") {
        size_t r = q + 3;
        while (r < n && is_space(src[r])) ++r;
        if (r < n && (src[r] == '%' || src[r] == '-')) {
          size_t close = src.find("%}", r);
          if (close == std::string_view::npos) fail(line, "unclosed raw tag");
          size_t body = close + 2;
          size_t endtag = body;
          for (;;) {
            endtag = src.find("{%", endtag);
            if (endtag == std::string_view::npos) fail(line, "raw without endraw");
            size_t e = endtag + 2;
            if (e < n && (src[e] == '-' || src[e] == '+')) ++e;
            while (e < n && is_space(src[e])) ++e;
            if (src.substr(e, 6) == "endraw") break;
            endtag += 2;
          }
          std::string raw(src.substr(body, endtag - body));
          if (src[r] != '-' && !raw.empty() && raw[0] == '\n') raw.erase(0, 1);
          if (endtag + 2 < n && src[endtag + 2] == '-')
            while (!raw.empty() && is_space(raw.back())) raw.pop_back();
          if (!raw.empty()) out.push_back({tk::text, std::move(raw), line});
          size_t fin = src.find("%}", endtag);
          if (fin == std::string_view::npos) fail(line, "unclosed endraw tag");
          strip_next = src[fin - 1] == '-';
          trim_next = !strip_next;
          pos = fin + 2;
          continue;
        }
      }
    }
    out.push_back({kind == '{' ? tk::var_begin : tk::block_begin, "", line});
    const char close = kind == '{' ? '}' : '%';
    int braces = 0;  // a dict literal's '}' is not the closing '}}'
    // Expression tokens up to the closing delimiter.
    for (;;) {
      while (p < n && is_space(src[p])) ++p;
      if (p >= n) fail(line, kind == '{' ? "unclosed {{" : "unclosed {%");
      const int tl = line_at(src, p);
      auto closes_at = [&](size_t q) { return braces == 0 && q + 1 < n && src[q] == close && src[q + 1] == '}'; };
      if ((src[p] == '-' || src[p] == '+') && closes_at(p + 1)) {
        if (src[p] == '-') strip_next = true;
        p += 3;
        break;
      }
      if (closes_at(p)) {
        p += 2;
        if (kind == '%') trim_next = true;
        break;
      }
      const char c = src[p];
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t q = p;
        while (q < n && (std::isalnum(static_cast<unsigned char>(src[q])) || src[q] == '_')) ++q;
        out.push_back({tk::name, std::string(src.substr(p, q - p)), tl});
        p = q;
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        size_t q = p;
        bool is_float = false;
        while (q < n && (std::isdigit(static_cast<unsigned char>(src[q])) || src[q] == '_')) ++q;
        if (q + 1 < n && src[q] == '.' && std::isdigit(static_cast<unsigned char>(src[q + 1]))) {
          is_float = true;
          ++q;
          while (q < n && std::isdigit(static_cast<unsigned char>(src[q]))) ++q;
        }
        if (q < n && (src[q] == 'e' || src[q] == 'E')) {
          size_t r = q + 1;
          if (r < n && (src[r] == '+' || src[r] == '-')) ++r;
          if (r < n && std::isdigit(static_cast<unsigned char>(src[r]))) {
            is_float = true;
            q = r;
            while (q < n && std::isdigit(static_cast<unsigned char>(src[q]))) ++q;
          }
        }
        std::string num(src.substr(p, q - p));
        num.erase(std::remove(num.begin(), num.end(), '_'), num.end());
        out.push_back({is_float ? tk::floating : tk::integer, num, tl});
        p = q;
      } else if (c == '\'' || c == '"') {
        std::string s;
        size_t q = p + 1;
        for (;;) {
          if (q >= n) fail(tl, "unterminated string literal");
          char d = src[q];
          if (d == c) break;
          if (d == '\\' && q + 1 < n) {
            char e = src[q + 1];
            q += 2;
            switch (e) {
              case 'n': s.push_back('\n'); break;
              case 't': s.push_back('\t'); break;
              case 'r': s.push_back('\r'); break;
              case 'b': s.push_back('\b'); break;
              case 'f': s.push_back('\f'); break;
              case 'v': s.push_back('\v'); break;
              case '0': s.push_back('\0'); break;
              case '\\': s.push_back('\\'); break;
              case '\'': s.push_back('\''); break;
              case '"': s.push_back('"'); break;
              case '\n': break;
              case 'x':
              case 'u':
              case 'U': {
                const size_t len = e == 'x' ? 2 : e == 'u' ? 4 : 8;
                if (q + len > n) fail(tl, "bad escape in string literal");
                uint32_t cp = 0;
                for (size_t k = 0; k < len; ++k) {
                  char h = src[q + k];
                  int dv = std::isdigit(static_cast<unsigned char>(h)) ? h - '0'
                           : (h >= 'a' && h <= 'f')                    ? h - 'a' + 10
                           : (h >= 'A' && h <= 'F')                    ? h - 'A' + 10
                                                                       : -1;
                  if (dv < 0) fail(tl, "bad escape in string literal");
                  cp = cp * 16 + uint32_t(dv);
                }
                q += len;
                if (cp < 0x80) s.push_back(char(cp));
                else if (cp < 0x800) { s.push_back(char(0xC0 | (cp >> 6))); s.push_back(char(0x80 | (cp & 63))); }
                else if (cp < 0x10000) {
                  s.push_back(char(0xE0 | (cp >> 12)));
                  s.push_back(char(0x80 | ((cp >> 6) & 63)));
                  s.push_back(char(0x80 | (cp & 63)));
                } else {
                  s.push_back(char(0xF0 | (cp >> 18)));
                  s.push_back(char(0x80 | ((cp >> 12) & 63)));
                  s.push_back(char(0x80 | ((cp >> 6) & 63)));
                  s.push_back(char(0x80 | (cp & 63)));
                }
                break;
              }
              default: s.push_back('\\'); s.push_back(e);  // Python keeps unknown escapes
            }
            continue;
          }
          s.push_back(d);
          ++q;
        }
        out.push_back({tk::str, std::move(s), tl});
        p = q + 1;
      } else {
        static const char* ops[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "<", ">", "(",
                                    ")", "[", "]", "{", "}", ",", ".", ":", "|", "~", "="};
        bool found = false;
        for (const char* op : ops) {
          size_t len = std::char_traits<char>::length(op);
          if (src.substr(p, len) == op) {
            out.push_back({tk::op, op, tl});
            if (op[0] == '{' && len == 1) ++braces;
            if (op[0] == '}' && len == 1) --braces;
            p += len;
            found = true;
            break;
          }
        }
        if (!found) fail(tl, fmt::format("unexpected character '{}'", c));
      }
    }
    out.push_back({kind == '{' ? tk::var_end : tk::block_end, "", line_at(src, p - 1)});
    pos = p;
  }
  out.push_back({tk::eof, "", line_at(src, n)});
  return out;
}

}  // namespace detail
using namespace detail;

// ---- AST ---------------------------------------------------------------------------------

enum class nk : uint8_t {
  // expressions
  literal, name, getattr, getitem, slice, call, filter, test, unary, binary, cond, list, dict,
  // statements
  body, text, output, if_, for_, set, set_block, macro, break_, continue_,
};

struct node {
  nk kind;
  int line = 0;
  std::string str;                           // name, attribute, operator, filter/test name, text
  value lit;                                 // literal
  std::vector<std::shared_ptr<node>> kids;   // operands, arguments, statements
  std::vector<std::string> kw;               // keyword names for the trailing kids (calls, filters)
  std::vector<std::string> targets;          // for-loop targets, macro parameters, set target
  bool negated = false;                      // `is not`
  bool has_else = false;
};
using node_ptr = std::shared_ptr<node>;

struct detail::macro_def {
  const node* n;
};

namespace {

const std::set<std::string>& known_filters() {
  static const std::set<std::string> s = {
      "abs",    "attr",  "batch",   "capitalize", "count",    "d",       "default", "dictsort", "e",     "escape",
      "first",  "float", "indent",  "int",        "items",    "join",    "last",    "length",   "list",  "lower",
      "map",    "max",   "min",     "reject",     "rejectattr", "replace", "reverse", "round",  "safe",  "select",
      "selectattr", "sort", "string", "sum",      "title",    "tojson",  "trim",    "unique",   "upper", "wordcount"};
  return s;
}
const std::set<std::string>& known_tests() {
  static const std::set<std::string> s = {
      "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "escaped", "even", "false", "float",
      "ge", "gt", "in", "integer", "iterable", "le", "lower", "lt", "mapping", "ne", "none", "number", "odd",
      "sameas", "sequence", "string", "true", "undefined", "upper", "==", "!=", "<", ">", "<=", ">="};
  return s;
}
const std::set<std::string>& known_functions() {
  static const std::set<std::string> s = {"raise_exception", "strftime_now", "namespace", "range", "dict"};
  return s;
}
const std::set<std::string>& known_methods() {
  static const std::set<std::string> s = {
      // str
      "startswith", "endswith", "split", "rsplit", "strip", "lstrip", "rstrip", "replace", "title", "upper",
      "lower", "capitalize", "find", "rfind", "count", "join", "splitlines", "isdigit", "isalpha", "isspace",
      "islower", "isupper", "format",
      // dict
      "items", "keys", "values", "get"};
  return s;
}

class parser {
 public:
  explicit parser(std::vector<token> toks) : t_(std::move(toks)) {}

  node_ptr parse_template() {
    auto root = make(nk::body, 1);
    std::string end = parse_body(*root, {});
    if (!end.empty()) fail(cur().line, fmt::format("unexpected '{}'", end));
    for (const auto& [name, line] : called_)
      if (!macros_.count(name) && !known_functions().count(name))
        fail(line, fmt::format("unknown function '{}'", name));
    return root;
  }

 private:
  const token& cur() const { return t_[i_]; }
  const token& peek(size_t k = 1) const { return t_[std::min(i_ + k, t_.size() - 1)]; }
  bool is_op(const char* op) const { return cur().type == tk::op && cur().text == op; }
  bool is_name(const char* n) const { return cur().type == tk::name && cur().text == n; }
  void expect_op(const char* op) {
    if (!is_op(op)) fail(cur().line, fmt::format("expected '{}', got {}", op, describe(cur())));
    ++i_;
  }
  std::string expect_name() {
    if (cur().type != tk::name) fail(cur().line, fmt::format("expected a name, got {}", describe(cur())));
    return t_[i_++].text;
  }
  static std::string describe(const token& t) {
    switch (t.type) {
      case tk::eof: return "the end of the template";
      case tk::var_end: return "'}}'";
      case tk::block_end: return "'%}'";
      case tk::str: return "a string";
      case tk::integer:
      case tk::floating: return "a number";
      default: return "'" + t.text + "'";
    }
  }
  static node_ptr make(nk k, int line) {
    auto n = std::make_shared<node>();
    n->kind = k;
    n->line = line;
    return n;
  }
  void expect_block_end() {
    if (cur().type != tk::block_end) fail(cur().line, fmt::format("expected '%}}', got {}", describe(cur())));
    ++i_;
  }

  // Parses statements into `body` until a block tag named in `ends`; returns that tag's
  // name (its block_begin and name consumed), or "" at the end of input.
  std::string parse_body(node& body, const std::vector<std::string>& ends) {
    for (;;) {
      const token& t = cur();
      if (t.type == tk::eof) {
        if (!ends.empty()) fail(t.line, fmt::format("missing '{{% {} %}}'", ends.back()));
        return "";
      }
      if (t.type == tk::text) {
        auto n = make(nk::text, t.line);
        n->str = t.text;
        body.kids.push_back(n);
        ++i_;
      } else if (t.type == tk::var_begin) {
        ++i_;
        auto n = make(nk::output, t.line);
        n->kids.push_back(parse_expr());
        if (cur().type != tk::var_end) fail(cur().line, fmt::format("expected '}}}}', got {}", describe(cur())));
        ++i_;
        body.kids.push_back(n);
      } else if (t.type == tk::block_begin) {
        ++i_;
        const token& kw = cur();
        if (kw.type != tk::name) fail(kw.line, "expected a statement name after '{%'");
        for (const auto& e : ends)
          if (kw.text == e) {
            ++i_;
            return e;
          }
        parse_statement(body);
      } else {
        fail(t.line, fmt::format("unexpected {}", describe(t)));
      }
    }
  }

  void parse_statement(node& body) {
    const token& kw = cur();
    const int line = kw.line;
    const std::string name = kw.text;
    ++i_;
    if (name == "if") {
      auto n = make(nk::if_, line);
      auto cond = parse_expr();
      expect_block_end();
      for (;;) {
        auto branch = make(nk::body, line);
        std::string end = parse_body(*branch, {"elif", "else", "endif"});
        n->kids.push_back(cond);
        n->kids.push_back(branch);
        if (end == "elif") {
          cond = parse_expr();
          expect_block_end();
          continue;
        }
        if (end == "else") {
          expect_block_end();
          auto els = make(nk::body, line);
          parse_body(*els, {"endif"});
          expect_block_end();
          n->has_else = true;
          n->kids.push_back(els);
        } else {
          expect_block_end();
        }
        break;
      }
      body.kids.push_back(n);
    } else if (name == "for") {
      auto n = make(nk::for_, line);
      n->targets.push_back(expect_name());
      while (is_op(",")) {
        ++i_;
        n->targets.push_back(expect_name());
      }
      if (!is_name("in")) fail(cur().line, "expected 'in' in for loop");
      ++i_;
      n->kids.push_back(parse_cond_free_expr());
      node_ptr filter;
      if (is_name("if")) {
        ++i_;
        filter = parse_expr();
      }
      if (is_name("recursive")) fail(cur().line, "recursive loops are not supported");
      n->kids.push_back(filter);
      expect_block_end();
      ++loop_depth_;
      auto loop_body = make(nk::body, line);
      std::string end = parse_body(*loop_body, {"else", "endfor"});
      --loop_depth_;
      n->kids.push_back(loop_body);
      expect_block_end();
      if (end == "else") {
        auto els = make(nk::body, line);
        parse_body(*els, {"endfor"});
        expect_block_end();
        n->has_else = true;
        n->kids.push_back(els);
      }
      body.kids.push_back(n);
    } else if (name == "set") {
      std::string target = expect_name();
      std::string attr;
      if (is_op(".")) {
        ++i_;
        attr = expect_name();
      }
      if (is_op(",")) fail(cur().line, "tuple assignment in set is not supported");
      if (is_op("=")) {
        ++i_;
        auto n = make(nk::set, line);
        n->targets = {target, attr};
        n->kids.push_back(parse_expr());
        expect_block_end();
        body.kids.push_back(n);
      } else {
        if (!attr.empty()) fail(cur().line, "a block set assigns a plain name");
        auto n = make(nk::set_block, line);
        n->targets = {target};
        if (is_op("|")) fail(cur().line, "filters on a block set are not supported");
        expect_block_end();
        auto b = make(nk::body, line);
        parse_body(*b, {"endset"});
        expect_block_end();
        n->kids.push_back(b);
        body.kids.push_back(n);
      }
    } else if (name == "macro") {
      auto n = make(nk::macro, line);
      n->str = expect_name();
      expect_op("(");
      while (!is_op(")")) {
        n->targets.push_back(expect_name());
        if (is_op("=")) {
          ++i_;
          n->kids.push_back(parse_expr());
        } else {
          if (!n->kids.empty()) fail(cur().line, "a parameter without default follows one with a default");
        }
        if (!is_op(",")) break;
        ++i_;
      }
      expect_op(")");
      expect_block_end();
      // Defaults are kids[0..k); the body is last. Remember how many defaults.
      n->lit = value::integer(int64_t(n->kids.size()));
      auto b = make(nk::body, line);
      const int saved = loop_depth_;
      loop_depth_ = 0;
      parse_body(*b, {"endmacro"});
      loop_depth_ = saved;
      if (cur().type == tk::name) ++i_;  // {% endmacro name %}
      expect_block_end();
      n->kids.push_back(b);
      macros_.insert(n->str);
      body.kids.push_back(n);
    } else if (name == "break" || name == "continue") {
      if (loop_depth_ == 0) fail(line, fmt::format("'{}' outside a loop", name));
      expect_block_end();
      body.kids.push_back(make(name == "break" ? nk::break_ : nk::continue_, line));
    } else if (name == "generation") {
      // transformers marks the assistant's tokens with it (return_assistant_tokens_mask);
      // for rendering it is its body.
      expect_block_end();
      auto b = make(nk::body, line);
      parse_body(*b, {"endgeneration"});
      expect_block_end();
      body.kids.push_back(b);
    } else {
      fail(line, fmt::format("unsupported statement '{}'", name));
    }
  }

  // ---- expressions (Jinja's precedence) ----
  node_ptr parse_expr() {
    auto e = parse_or();
    while (is_name("if")) {
      const int line = cur().line;
      ++i_;
      auto n = make(nk::cond, line);
      auto test = parse_or();
      node_ptr other;
      if (is_name("else")) {
        ++i_;
        other = parse_expr();
      }
      n->kids = {test, e, other};
      e = n;
    }
    return e;
  }
  // A for loop's iterable: its `if` is the loop filter, not a conditional expression.
  node_ptr parse_cond_free_expr() { return parse_or(); }

  node_ptr binary(const std::string& op, node_ptr l, node_ptr r, int line) {
    auto n = make(nk::binary, line);
    n->str = op;
    n->kids = {std::move(l), std::move(r)};
    return n;
  }

  node_ptr parse_or() {
    auto l = parse_and();
    while (is_name("or")) {
      int line = cur().line;
      ++i_;
      l = binary("or", l, parse_and(), line);
    }
    return l;
  }
  node_ptr parse_and() {
    auto l = parse_not();
    while (is_name("and")) {
      int line = cur().line;
      ++i_;
      l = binary("and", l, parse_not(), line);
    }
    return l;
  }
  node_ptr parse_not() {
    if (is_name("not")) {
      auto n = make(nk::unary, cur().line);
      ++i_;
      n->str = "not";
      n->kids.push_back(parse_not());
      return n;
    }
    return parse_compare();
  }
  node_ptr parse_compare() {
    auto l = parse_concat();
    for (;;) {
      int line = cur().line;
      if (cur().type == tk::op && (cur().text == "==" || cur().text == "!=" || cur().text == "<" ||
                                   cur().text == ">" || cur().text == "<=" || cur().text == ">=")) {
        std::string op = cur().text;
        ++i_;
        l = binary(op, l, parse_concat(), line);
      } else if (is_name("in")) {
        ++i_;
        l = binary("in", l, parse_concat(), line);
      } else if (is_name("not") && peek().type == tk::name && peek().text == "in") {
        i_ += 2;
        l = binary("not in", l, parse_concat(), line);
      } else {
        return l;
      }
    }
  }
  node_ptr parse_concat() {
    auto l = parse_math1();
    while (is_op("~")) {
      int line = cur().line;
      ++i_;
      l = binary("~", l, parse_math1(), line);
    }
    return l;
  }
  node_ptr parse_math1() {
    auto l = parse_math2();
    while (is_op("+") || is_op("-")) {
      std::string op = cur().text;
      int line = cur().line;
      ++i_;
      l = binary(op, l, parse_math2(), line);
    }
    return l;
  }
  node_ptr parse_math2() {
    auto l = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      std::string op = cur().text;
      int line = cur().line;
      ++i_;
      l = binary(op, l, parse_pow(), line);
    }
    return l;
  }
  node_ptr parse_pow() {
    auto l = parse_unary(true);
    while (is_op("**")) {
      int line = cur().line;
      ++i_;
      l = binary("**", l, parse_unary(true), line);
    }
    return l;
  }
  node_ptr parse_unary(bool with_filter) {
    if (is_op("-") || is_op("+")) {
      auto n = make(nk::unary, cur().line);
      n->str = cur().text;
      ++i_;
      n->kids.push_back(parse_unary(false));
      return with_filter ? parse_filter_expr(n) : n;
    }
    auto n = parse_postfix(parse_primary());
    return with_filter ? parse_filter_expr(n) : n;
  }

  void parse_call_args(node& n) {
    expect_op("(");
    while (!is_op(")")) {
      if (cur().type == tk::name && peek().type == tk::op && peek().text == "=") {
        n.kw.push_back(cur().text);
        i_ += 2;
        n.kids.push_back(parse_expr());
      } else {
        if (!n.kw.empty()) fail(cur().line, "a positional argument follows a keyword argument");
        n.kids.push_back(parse_expr());
      }
      if (!is_op(",")) break;
      ++i_;
    }
    expect_op(")");
  }

  node_ptr parse_primary() {
    const token& t = cur();
    const int line = t.line;
    if (t.type == tk::name) {
      ++i_;
      if (t.text == "true" || t.text == "True") return lit(value::boolean(true), line);
      if (t.text == "false" || t.text == "False") return lit(value::boolean(false), line);
      if (t.text == "none" || t.text == "None") return lit(value::none(), line);
      auto n = make(nk::name, line);
      n->str = t.text;
      return n;
    }
    if (t.type == tk::str) {
      std::string s;
      while (cur().type == tk::str) s += t_[i_++].text;  // adjacent literals concatenate
      return lit(value::string(std::move(s)), line);
    }
    if (t.type == tk::integer) {
      ++i_;
      try {
        return lit(value::integer(std::stoll(t.text)), line);
      } catch (const std::exception&) {
        fail(line, "integer literal out of range");
      }
    }
    if (t.type == tk::floating) {
      ++i_;
      return lit(value::floating(std::strtod(t.text.c_str(), nullptr)), line);
    }
    if (t.type == tk::op && t.text == "(") {
      ++i_;
      if (is_op(")")) {
        ++i_;
        auto n = make(nk::list, line);  // the empty tuple
        return n;
      }
      auto e = parse_expr();
      if (is_op(",")) {  // a tuple: a list here
        auto n = make(nk::list, line);
        n->kids.push_back(e);
        while (is_op(",")) {
          ++i_;
          if (is_op(")")) break;
          n->kids.push_back(parse_expr());
        }
        expect_op(")");
        return n;
      }
      expect_op(")");
      return e;
    }
    if (t.type == tk::op && t.text == "[") {
      ++i_;
      auto n = make(nk::list, line);
      while (!is_op("]")) {
        n->kids.push_back(parse_expr());
        if (!is_op(",")) break;
        ++i_;
      }
      expect_op("]");
      return n;
    }
    if (t.type == tk::op && t.text == "{") {
      ++i_;
      auto n = make(nk::dict, line);
      while (!is_op("}")) {
        n->kids.push_back(parse_expr());
        expect_op(":");
        n->kids.push_back(parse_expr());
        if (!is_op(",")) break;
        ++i_;
      }
      expect_op("}");
      return n;
    }
    fail(line, fmt::format("unexpected {} in an expression", describe(t)));
  }

  node_ptr lit(value v, int line) {
    auto n = make(nk::literal, line);
    n->lit = std::move(v);
    return n;
  }

  node_ptr parse_postfix(node_ptr e) {
    for (;;) {
      const int line = cur().line;
      if (is_op(".")) {
        ++i_;
        auto n = make(nk::getattr, line);
        if (cur().type == tk::integer) n->str = t_[i_++].text;
        else n->str = expect_name();
        n->kids.push_back(e);
        e = n;
      } else if (is_op("[")) {
        ++i_;
        node_ptr a, b, c;
        bool is_slice = false;
        if (!is_op(":")) a = parse_expr();
        if (is_op(":")) {
          is_slice = true;
          ++i_;
          if (!is_op("]") && !is_op(":")) b = parse_expr();
          if (is_op(":")) {
            ++i_;
            if (!is_op("]")) c = parse_expr();
          }
        }
        expect_op("]");
        auto n = make(is_slice ? nk::slice : nk::getitem, line);
        n->kids = {e, a, b, c};
        e = n;
      } else if (is_op("(")) {
        auto n = make(nk::call, line);
        n->kids.push_back(e);
        if (e->kind == nk::name) {
          called_.emplace_back(e->str, line);
        } else if (e->kind == nk::getattr) {
          if (!known_methods().count(e->str)) fail(line, fmt::format("unknown method '{}'", e->str));
        } else {
          fail(line, "only functions, macros and methods can be called");
        }
        parse_call_args(*n);
        e = n;
      } else {
        return e;
      }
    }
  }

  node_ptr parse_filter_expr(node_ptr e) {
    for (;;) {
      const int line = cur().line;
      if (is_op("|")) {
        ++i_;
        auto n = make(nk::filter, line);
        n->str = expect_name();
        if (!known_filters().count(n->str)) fail(line, fmt::format("unknown filter '{}'", n->str));
        n->kids.push_back(e);
        if (is_op("(")) parse_call_args(*n);
        e = n;
      } else if (is_name("is")) {
        ++i_;
        auto n = make(nk::test, line);
        if (is_name("not")) {
          n->negated = true;
          ++i_;
        }
        if (cur().type == tk::name) n->str = t_[i_++].text;
        else if (cur().type == tk::op) n->str = t_[i_++].text;
        else fail(line, "expected a test name after 'is'");
        if (!known_tests().count(n->str)) fail(line, fmt::format("unknown test '{}'", n->str));
        n->kids.push_back(e);
        if (is_op("(")) {
          parse_call_args(*n);
        } else if (cur().type == tk::str || cur().type == tk::integer || cur().type == tk::floating ||
                   (cur().type == tk::name && cur().text != "and" && cur().text != "or" && cur().text != "if" &&
                    cur().text != "else" && cur().text != "is" && cur().text != "not" && cur().text != "in")) {
          n->kids.push_back(parse_postfix(parse_primary()));  // `is sameas false`, `is divisibleby 3`
        }
        e = n;
      } else {
        return e;
      }
    }
  }

  std::vector<token> t_;
  size_t i_ = 0;
  int loop_depth_ = 0;
  std::set<std::string> macros_;
  std::vector<std::pair<std::string, int>> called_;
};

// ---- evaluation --------------------------------------------------------------------------

enum class flow : uint8_t { normal, brk, cont };

class renderer {
 public:
  explicit renderer(std::vector<std::unordered_map<std::string, value>> scopes) : scopes_(std::move(scopes)) {}

  void run(const node& body, std::string& out) {
    if (exec_body(body, out) != flow::normal) fail(body.line, "break or continue outside a loop");
  }

 private:
  std::vector<std::unordered_map<std::string, value>> scopes_;
  std::vector<std::unique_ptr<macro_def>> macro_defs_;
  int depth_ = 0;

  value lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      auto f = it->find(name);
      if (f != it->end()) return f->second;
    }
    return value();
  }

  flow exec_body(const node& body, std::string& out) {
    for (const auto& k : body.kids) {
      flow f = exec(*k, out);
      if (f != flow::normal) return f;
    }
    return flow::normal;
  }

  flow exec(const node& n, std::string& out) {
    switch (n.kind) {
      case nk::text: out += n.str; return flow::normal;
      case nk::output: out += to_str(eval(*n.kids[0])); return flow::normal;
      case nk::body: return exec_body(n, out);
      case nk::if_: {
        for (size_t k = 0; k + 1 < n.kids.size(); k += 2)
          if (truthy(eval(*n.kids[k]))) return exec_body(*n.kids[k + 1], out);
        if (n.has_else) return exec_body(*n.kids.back(), out);
        return flow::normal;
      }
      case nk::for_: return exec_for(n, out);
      case nk::set: {
        value v = eval(*n.kids[0]);
        if (n.targets[1].empty()) {
          scopes_.back()[n.targets[0]] = std::move(v);
        } else {
          value ns = lookup(n.targets[0]);
          if (!ns.is_object() || !ns.ns)
            fail(n.line, fmt::format("cannot set '{}.{}': '{}' is not a namespace", n.targets[0], n.targets[1],
                                     n.targets[0]));
          ns.o->set(n.targets[1], std::move(v));
        }
        return flow::normal;
      }
      case nk::set_block: {
        std::string s;
        scopes_.emplace_back();
        exec_body(*n.kids[0], s);
        scopes_.pop_back();
        scopes_.back()[n.targets[0]] = value::string(std::move(s));
        return flow::normal;
      }
      case nk::macro: {
        macro_defs_.push_back(std::make_unique<macro_def>(macro_def{&n}));
        value v;
        v.k = value::kind::macro;
        v.m = macro_defs_.back().get();
        scopes_.back()[n.str] = v;
        return flow::normal;
      }
      case nk::break_: return flow::brk;
      case nk::continue_: return flow::cont;
      default: fail(n.line, "not a statement");
    }
  }

  flow exec_for(const node& n, std::string& out) {
    value seq = eval(*n.kids[0]);
    array_t items;
    if (seq.is_array()) items = *seq.a;
    else if (seq.is_object())
      for (const auto& [k, v] : seq.o->items) items.push_back(value::string(k));
    else if (seq.is_string()) {
      auto cps = code_points(seq.s);
      for (size_t k = 0; k + 1 < cps.size(); ++k) items.push_back(value::string(seq.s.substr(cps[k], cps[k + 1] - cps[k])));
    } else if (seq.is_undefined() || seq.is_none()) {
      // Jinja iterates an undefined as empty; None is an error there, but templates test first.
      if (seq.is_none()) fail(n.line, "'None' is not iterable");
    } else {
      fail(n.line, fmt::format("a {} is not iterable", type_name(seq)));
    }
    const node* filter = n.kids[1].get();
    const node& body = *n.kids[2];
    auto bind = [&](std::unordered_map<std::string, value>& scope, const value& item) {
      if (n.targets.size() == 1) {
        scope[n.targets[0]] = item;
        return;
      }
      if (!item.is_array() || item.a->size() != n.targets.size())
        fail(n.line, fmt::format("cannot unpack a {} into {} names", type_name(item), n.targets.size()));
      for (size_t k = 0; k < n.targets.size(); ++k) scope[n.targets[k]] = (*item.a)[k];
    };
    if (filter) {  // loop.* counts the items that pass the filter, as in Jinja
      array_t kept;
      for (const auto& item : items) {
        scopes_.emplace_back();
        bind(scopes_.back(), item);
        bool keep = truthy(eval(*filter));
        scopes_.pop_back();
        if (keep) kept.push_back(item);
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      if (n.has_else) return exec_body(*n.kids[3], out);
      return flow::normal;
    }
    const int64_t len = int64_t(items.size());
    for (int64_t k = 0; k < len; ++k) {
      scopes_.emplace_back();
      auto& scope = scopes_.back();
      bind(scope, items[size_t(k)]);
      value loop = value::object();
      loop.o->items = {{"index0", value::integer(k)},
                       {"index", value::integer(k + 1)},
                       {"revindex0", value::integer(len - k - 1)},
                       {"revindex", value::integer(len - k)},
                       {"first", value::boolean(k == 0)},
                       {"last", value::boolean(k == len - 1)},
                       {"length", value::integer(len)},
                       {"previtem", k > 0 ? items[size_t(k - 1)] : value()},
                       {"nextitem", k + 1 < len ? items[size_t(k + 1)] : value()}};
      scope["loop"] = loop;
      flow f = exec_body(body, out);
      scopes_.pop_back();
      if (f == flow::brk) break;
    }
    return flow::normal;
  }

  // ---- expressions ----
  value eval(const node& n) {
    switch (n.kind) {
      case nk::literal: return n.lit;
      case nk::name: return lookup(n.str);
      case nk::getattr: return get_member(eval(*n.kids[0]), n.str);
      case nk::getitem: {
        value obj = eval(*n.kids[0]);
        value key = eval(*n.kids[1]);
        return get_item(obj, key, n.line);
      }
      case nk::slice: return slice(n);
      case nk::call: return call(n);
      case nk::filter: return apply_filter(n);
      case nk::test: {
        bool r = apply_test(n);
        return value::boolean(n.negated ? !r : r);
      }
      case nk::unary: {
        value v = eval(*n.kids[0]);
        if (n.str == "not") return value::boolean(!truthy(v));
        if (v.k == value::kind::integer) return value::integer(n.str == "-" ? -v.i : v.i);
        if (v.k == value::kind::floating) return value::floating(n.str == "-" ? -v.d : v.d);
        if (v.k == value::kind::boolean) return value::integer(n.str == "-" ? -int64_t(v.b) : int64_t(v.b));
        fail(n.line, fmt::format("bad operand for unary {}: {}", n.str, type_name(v)));
      }
      case nk::binary: return binary_op(n);
      case nk::cond: {
        if (truthy(eval(*n.kids[0]))) return eval(*n.kids[1]);
        return n.kids[2] ? eval(*n.kids[2]) : value();
      }
      case nk::list: {
        array_t a;
        for (const auto& k : n.kids) a.push_back(eval(*k));
        return value::array(std::move(a));
      }
      case nk::dict: {
        value d = value::object();
        for (size_t k = 0; k + 1 < n.kids.size(); k += 2) {
          value key = eval(*n.kids[k]);
          d.o->set(key.is_string() ? key.s : to_str(key), eval(*n.kids[k + 1]));
        }
        return d;
      }
      default: fail(n.line, "not an expression");
    }
  }

  static value get_member(const value& obj, const std::string& name) {
    if (obj.is_object()) {
      if (const value* v = obj.o->find(name)) return *v;
      return value();
    }
    if (obj.is_array() && !name.empty() && std::isdigit(static_cast<unsigned char>(name[0]))) {
      size_t k = size_t(std::stoull(name));
      return k < obj.a->size() ? (*obj.a)[k] : value();
    }
    return value();
  }

  static value get_item(const value& obj, const value& key, int line) {
    if (obj.is_object()) {
      if (const value* v = obj.o->find(key.is_string() ? key.s : to_str(key))) return *v;
      return value();
    }
    if (obj.is_array() || obj.is_string()) {
      if (key.k != value::kind::integer) {
        if (key.is_string() && obj.is_array()) return value();
        fail(line, fmt::format("a {} index must be an integer, got {}", type_name(obj), type_name(key)));
      }
      if (obj.is_array()) {
        int64_t k = key.i < 0 ? key.i + int64_t(obj.a->size()) : key.i;
        if (k < 0 || k >= int64_t(obj.a->size())) return value();
        return (*obj.a)[size_t(k)];
      }
      auto cps = code_points(obj.s);
      int64_t len = int64_t(cps.size()) - 1;
      int64_t k = key.i < 0 ? key.i + len : key.i;
      if (k < 0 || k >= len) return value();
      return value::string(obj.s.substr(cps[size_t(k)], cps[size_t(k) + 1] - cps[size_t(k)]));
    }
    return value();
  }

  value slice(const node& n) {
    value obj = eval(*n.kids[0]);
    auto opt_int = [&](const node_ptr& p, bool& set) -> int64_t {
      set = false;
      if (!p) return 0;
      value v = eval(*p);
      if (v.is_none() || v.is_undefined()) return 0;
      if (v.k != value::kind::integer) fail(n.line, "slice indices must be integers");
      set = true;
      return v.i;
    };
    bool has_a, has_b, has_c;
    int64_t a = opt_int(n.kids[1], has_a), b = opt_int(n.kids[2], has_b), c = opt_int(n.kids[3], has_c);
    if (!has_c) c = 1;
    if (c == 0) fail(n.line, "slice step cannot be zero");
    std::vector<size_t> cps;
    int64_t len;
    if (obj.is_array()) len = int64_t(obj.a->size());
    else if (obj.is_string()) {
      cps = code_points(obj.s);
      len = int64_t(cps.size()) - 1;
    } else {
      fail(n.line, fmt::format("a {} cannot be sliced", type_name(obj)));
    }
    // Python's slice.indices().
    auto norm = [&](int64_t v, bool has, int64_t dflt_pos, int64_t dflt_neg) {
      if (!has) return c > 0 ? dflt_pos : dflt_neg;
      if (v < 0) v += len;
      if (c > 0) return std::clamp<int64_t>(v, 0, len);
      return std::clamp<int64_t>(v, -1, len - 1);
    };
    int64_t start = norm(a, has_a, 0, len - 1), stop = norm(b, has_b, len, -1);
    std::vector<int64_t> idx;
    if (c > 0)
      for (int64_t k = start; k < stop; k += c) idx.push_back(k);
    else
      for (int64_t k = start; k > stop; k += c) idx.push_back(k);
    if (obj.is_array()) {
      array_t r;
      for (int64_t k : idx) r.push_back((*obj.a)[size_t(k)]);
      return value::array(std::move(r));
    }
    std::string r;
    for (int64_t k : idx) r += obj.s.substr(cps[size_t(k)], cps[size_t(k) + 1] - cps[size_t(k)]);
    return value::string(std::move(r));
  }

  struct args {
    std::vector<value> pos;
    std::vector<std::pair<std::string, value>> kw;
    const value* get(size_t i, const char* name) const {
      if (i < pos.size()) return &pos[i];
      for (const auto& [k, v] : kw)
        if (k == name) return &v;
      return nullptr;
    }
  };

  args eval_args(const node& n, size_t first) {
    args a;
    const size_t n_pos = n.kids.size() - first - n.kw.size();
    for (size_t k = 0; k < n_pos; ++k) a.pos.push_back(eval(*n.kids[first + k]));
    for (size_t k = 0; k < n.kw.size(); ++k) a.kw.emplace_back(n.kw[k], eval(*n.kids[first + n_pos + k]));
    return a;
  }

  value call(const node& n) {
    const node& callee = *n.kids[0];
    if (callee.kind == nk::getattr) {
      value obj = eval(*callee.kids[0]);
      args a = eval_args(n, 1);
      return call_method(obj, callee.str, a, n.line);
    }
    // A bare name: a macro in scope, else a builtin.
    value f = lookup(callee.str);
    args a = eval_args(n, 1);
    if (f.k == value::kind::macro) return call_macro(*f.m->n, a, n.line);
    const std::string& name = callee.str;
    if (name == "raise_exception") {
      const value* m = a.get(0, "message");
      fail(n.line, m ? to_str(*m) : "raise_exception called");
    }
    if (name == "strftime_now") {
      const value* fmtv = a.get(0, "format");
      if (!fmtv || !fmtv->is_string()) fail(n.line, "strftime_now: a format string is required");
      std::time_t t = std::time(nullptr);
      std::tm tm{};
      localtime_r(&t, &tm);
      char buf[256];
      size_t len = std::strftime(buf, sizeof buf, fmtv->s.c_str(), &tm);
      return value::string(std::string(buf, len));
    }
    if (name == "namespace" || name == "dict") {
      value v = value::object();
      v.ns = name == "namespace";
      if (!a.pos.empty()) {
        if (!a.pos[0].is_object()) fail(n.line, name + ": the positional argument must be a dict");
        for (const auto& [k, x] : a.pos[0].o->items) v.o->set(k, x);
      }
      for (auto& [k, x] : a.kw) v.o->set(k, x);
      return v;
    }
    if (name == "range") {
      std::vector<int64_t> p;
      for (const auto& x : a.pos) {
        if (x.k != value::kind::integer) fail(n.line, "range: integer arguments");
        p.push_back(x.i);
      }
      int64_t start = 0, stop = 0, step = 1;
      if (p.size() == 1) stop = p[0];
      else if (p.size() >= 2) { start = p[0]; stop = p[1]; if (p.size() > 2) step = p[2]; }
      else fail(n.line, "range: expected 1 to 3 arguments");
      if (step == 0) fail(n.line, "range: step must not be zero");
      array_t r;
      for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) {
        r.push_back(value::integer(k));
        if (r.size() > 100000) fail(n.line, "range: too long");
      }
      return value::array(std::move(r));
    }
    fail(n.line, fmt::format("'{}' is not callable", name));
  }

  value call_macro(const node& m, const args& a, int line) {
    if (++depth_ > 64) fail(line, "macros nested too deeply");
    const size_t n_defaults = size_t(m.lit.i);
    const size_t n_params = m.targets.size();
    if (a.pos.size() > n_params) fail(line, fmt::format("macro '{}' takes {} arguments", m.str, n_params));
    std::unordered_map<std::string, value> scope;
    for (size_t k = 0; k < n_params; ++k) {
      const value* v = a.get(k, m.targets[k].c_str());
      if (v) scope[m.targets[k]] = *v;
      else if (k + n_defaults >= n_params) scope[m.targets[k]] = eval(*m.kids[k - (n_params - n_defaults)]);
      else scope[m.targets[k]] = value();
    }
    for (const auto& [k, v] : a.kw)
      if (std::find(m.targets.begin(), m.targets.end(), k) == m.targets.end())
        fail(line, fmt::format("macro '{}' has no parameter '{}'", m.str, k));
    // A macro sees the template's top level and its parameters, not the caller's locals.
    std::vector<std::unordered_map<std::string, value>> saved;
    saved.assign(scopes_.begin() + 1, scopes_.end());
    scopes_.resize(1);
    scopes_.push_back(std::move(scope));
    std::string out;
    exec_body(*m.kids.back(), out);
    scopes_.resize(1);
    for (auto& s : saved) scopes_.push_back(std::move(s));
    --depth_;
    return value::string(std::move(out));
  }

  static bool is_ws(char c) { return is_space(c); }
  static std::string strip(const std::string& s, const value* chars, bool left, bool right) {
    auto in_set = [&](char c) {
      if (chars && chars->is_string()) return chars->s.find(c) != std::string::npos;
      return is_ws(c);
    };
    size_t b = 0, e = s.size();
    if (left)
      while (b < e && in_set(s[b])) ++b;
    if (right)
      while (e > b && in_set(s[e - 1])) --e;
    return s.substr(b, e - b);
  }
  static std::string ascii_map(std::string s, int (*f)(int)) {
    for (char& c : s)
      if (static_cast<unsigned char>(c) < 0x80) c = char(f(static_cast<unsigned char>(c)));
    return s;
  }
  static std::string title(const std::string& s) {
    std::string out = s;
    bool prev_alpha = false;
    for (char& c : out) {
      unsigned char u = static_cast<unsigned char>(c);
      bool alpha = std::isalpha(u) || u >= 0x80;
      if (u < 0x80 && std::isalpha(u)) c = char(prev_alpha ? std::tolower(u) : std::toupper(u));
      prev_alpha = alpha;
    }
    return out;
  }
  static std::string capitalize(const std::string& s) {
    std::string out = ascii_map(s, [](int c) { return std::tolower(c); });
    if (!out.empty() && static_cast<unsigned char>(out[0]) < 0x80)
      out[0] = char(std::toupper(static_cast<unsigned char>(out[0])));
    return out;
  }
  static array_t split(const std::string& s, const value* sep, int64_t maxsplit) {
    array_t r;
    if (!sep || sep->is_none() || sep->is_undefined()) {
      size_t k = 0;
      while (k < s.size()) {
        while (k < s.size() && is_ws(s[k])) ++k;
        if (k >= s.size()) break;
        if (maxsplit >= 0 && int64_t(r.size()) == maxsplit) {
          size_t e = s.size();
          while (e > k && is_ws(s[e - 1])) --e;
          r.push_back(value::string(s.substr(k, e - k)));
          break;
        }
        size_t e = k;
        while (e < s.size() && !is_ws(s[e])) ++e;
        r.push_back(value::string(s.substr(k, e - k)));
        k = e;
      }
      return r;
    }
    const std::string& d = sep->s;
    size_t k = 0;
    for (;;) {
      size_t p = (maxsplit >= 0 && int64_t(r.size()) >= maxsplit) ? std::string::npos : s.find(d, k);
      if (p == std::string::npos) {
        r.push_back(value::string(s.substr(k)));
        break;
      }
      r.push_back(value::string(s.substr(k, p - k)));
      k = p + d.size();
    }
    return r;
  }
  static std::string replace(const std::string& s, const std::string& from, const std::string& to, int64_t count) {
    if (from.empty()) {
      // Python inserts `to` between every character (and at both ends).
      std::string out;
      auto cps = code_points(s);
      int64_t done = 0;
      for (size_t k = 0; k + 1 < cps.size(); ++k) {
        if (count < 0 || done < count) { out += to; ++done; }
        out += s.substr(cps[k], cps[k + 1] - cps[k]);
      }
      if (count < 0 || done < count) out += to;
      return out;
    }
    std::string out;
    size_t k = 0;
    int64_t done = 0;
    for (;;) {
      size_t p = (count >= 0 && done >= count) ? std::string::npos : s.find(from, k);
      if (p == std::string::npos) break;
      out.append(s, k, p - k);
      out += to;
      k = p + from.size();
      ++done;
    }
    out.append(s, k, std::string::npos);
    return out;
  }

  static bool starts_or_ends(const std::string& s, const value& pre, bool start, int line) {
    auto one = [&](const value& p) {
      if (!p.is_string()) fail(line, "startswith/endswith: expected a string or a tuple of strings");
      if (p.s.size() > s.size()) return false;
      return start ? s.compare(0, p.s.size(), p.s) == 0 : s.compare(s.size() - p.s.size(), p.s.size(), p.s) == 0;
    };
    if (pre.is_array()) {
      for (const auto& p : *pre.a)
        if (one(p)) return true;
      return false;
    }
    return one(pre);
  }

  value call_method(const value& obj, const std::string& name, const args& a, int line) {
    if (obj.is_string()) {
      const std::string& s = obj.s;
      auto str_arg = [&](size_t i, const char* an) -> const std::string& {
        const value* v = a.get(i, an);
        if (!v || !v->is_string()) fail(line, fmt::format("{}(): argument {} must be a string", name, an));
        return v->s;
      };
      if (name == "startswith" || name == "endswith") {
        const value* p = a.get(0, "prefix");
        if (!p) fail(line, name + "(): one argument expected");
        return value::boolean(starts_or_ends(s, *p, name == "startswith", line));
      }
      if (name == "strip") return value::string(strip(s, a.get(0, "chars"), true, true));
      if (name == "lstrip") return value::string(strip(s, a.get(0, "chars"), true, false));
      if (name == "rstrip") return value::string(strip(s, a.get(0, "chars"), false, true));
      if (name == "split") {
        const value* m = a.get(1, "maxsplit");
        return value::array(split(s, a.get(0, "sep"), m && m->k == value::kind::integer ? m->i : -1));
      }
      if (name == "replace") {
        const value* c = a.get(2, "count");
        return value::string(replace(s, str_arg(0, "old"), str_arg(1, "new"),
                                     c && c->k == value::kind::integer ? c->i : -1));
      }
      if (name == "title") return value::string(title(s));
      if (name == "upper") return value::string(ascii_map(s, [](int c) { return std::toupper(c); }));
      if (name == "lower") return value::string(ascii_map(s, [](int c) { return std::tolower(c); }));
      if (name == "capitalize") return value::string(capitalize(s));
      if (name == "find" || name == "rfind") {
        const std::string& sub = str_arg(0, "sub");
        size_t p = name == "find" ? s.find(sub) : s.rfind(sub);
        if (p == std::string::npos) return value::integer(-1);
        return value::integer(int64_t(n_code_points(s.substr(0, p))));
      }
      if (name == "count") {
        const std::string& sub = str_arg(0, "sub");
        if (sub.empty()) return value::integer(int64_t(n_code_points(s)) + 1);
        int64_t c = 0;
        for (size_t p = s.find(sub); p != std::string::npos; p = s.find(sub, p + sub.size())) ++c;
        return value::integer(c);
      }
      if (name == "join") {
        const value* it = a.get(0, "iterable");
        if (!it || !it->is_array()) fail(line, "join(): expected a list");
        std::string out;
        for (size_t k = 0; k < it->a->size(); ++k) {
          if (k) out += s;
          out += to_str((*it->a)[k]);
        }
        return value::string(out);
      }
      if (name == "splitlines") {
        array_t r;
        size_t k = 0;
        while (k < s.size()) {
          size_t e = s.find_first_of("\r\n", k);
          if (e == std::string::npos) { r.push_back(value::string(s.substr(k))); break; }
          r.push_back(value::string(s.substr(k, e - k)));
          k = e + (s[e] == '\r' && e + 1 < s.size() && s[e + 1] == '\n' ? 2 : 1);
        }
        return value::array(std::move(r));
      }
      auto all = [&](auto pred) {
        if (s.empty()) return value::boolean(false);
        for (char c : s)
          if (!pred(static_cast<unsigned char>(c))) return value::boolean(false);
        return value::boolean(true);
      };
      if (name == "isdigit") return all([](unsigned char c) { return std::isdigit(c) != 0; });
      if (name == "isalpha") return all([](unsigned char c) { return std::isalpha(c) != 0; });
      if (name == "isspace") return all([](unsigned char c) { return is_space(char(c)); });
      if (name == "islower") return value::boolean(s == ascii_map(s, [](int c) { return std::tolower(c); }) &&
                                                   s != ascii_map(s, [](int c) { return std::toupper(c); }));
      if (name == "isupper") return value::boolean(s == ascii_map(s, [](int c) { return std::toupper(c); }) &&
                                                   s != ascii_map(s, [](int c) { return std::tolower(c); }));
      if (name == "format") {
        std::string out;
        size_t next = 0;
        for (size_t k = 0; k < s.size(); ++k) {
          if (s[k] == '{' && k + 1 < s.size() && s[k + 1] == '}') {
            if (next >= a.pos.size()) fail(line, "format(): not enough arguments");
            out += to_str(a.pos[next++]);
            ++k;
          } else {
            out.push_back(s[k]);
          }
        }
        return value::string(out);
      }
    }
    if (obj.is_object()) {
      if (name == "items") {
        array_t r;
        for (const auto& [k, v] : obj.o->items) r.push_back(value::array({value::string(k), v}));
        return value::array(std::move(r));
      }
      if (name == "keys") {
        array_t r;
        for (const auto& kv : obj.o->items) r.push_back(value::string(kv.first));
        return value::array(std::move(r));
      }
      if (name == "values") {
        array_t r;
        for (const auto& kv : obj.o->items) r.push_back(kv.second);
        return value::array(std::move(r));
      }
      if (name == "get") {
        const value* k = a.get(0, "key");
        if (!k) fail(line, "get(): a key is required");
        if (const value* v = obj.o->find(k->is_string() ? k->s : to_str(*k))) return *v;
        const value* d = a.get(1, "default");
        return d ? *d : value::none();
      }
    }
    if (obj.is_undefined()) fail(line, fmt::format("'{}' called on an undefined value", name));
    fail(line, fmt::format("a {} has no method '{}'", type_name(obj), name));
  }

  static array_t as_list(const value& v, int line) {
    if (v.is_array()) return *v.a;
    if (v.is_object()) {
      array_t r;
      for (const auto& kv : v.o->items) r.push_back(value::string(kv.first));
      return r;
    }
    if (v.is_string()) {
      array_t r;
      auto cps = code_points(v.s);
      for (size_t k = 0; k + 1 < cps.size(); ++k) r.push_back(value::string(v.s.substr(cps[k], cps[k + 1] - cps[k])));
      return r;
    }
    if (v.is_undefined()) return {};
    fail(line, fmt::format("a {} is not iterable", type_name(v)));
  }

  // The attribute of `item` named by a dotted path ("function.name"), as filters take it.
  static value attr_path(const value& item, const std::string& path) {
    value cur = item;
    size_t k = 0;
    for (;;) {
      size_t dot = path.find('.', k);
      cur = get_member(cur, path.substr(k, dot == std::string::npos ? std::string::npos : dot - k));
      if (dot == std::string::npos) return cur;
      k = dot + 1;
    }
  }

  static int compare(const value& x, const value& y, int line) {
    if ((x.is_number() || x.k == value::kind::boolean) && (y.is_number() || y.k == value::kind::boolean))
      return x.num() < y.num() ? -1 : x.num() > y.num() ? 1 : 0;
    if (x.is_string() && y.is_string()) return x.s < y.s ? -1 : x.s > y.s ? 1 : 0;
    fail(line, fmt::format("cannot compare a {} with a {}", type_name(x), type_name(y)));
  }

  bool run_test(const std::string& name, const value& v, const std::vector<value>& targs, int line) {
    auto arg = [&](size_t k) -> const value& {
      if (k >= targs.size()) fail(line, fmt::format("test '{}' needs an argument", name));
      return targs[k];
    };
    if (name == "defined") return !v.is_undefined();
    if (name == "undefined") return v.is_undefined();
    if (name == "none") return v.is_none();
    if (name == "boolean") return v.k == value::kind::boolean;
    if (name == "true") return v.k == value::kind::boolean && v.b;
    if (name == "false") return v.k == value::kind::boolean && !v.b;
    if (name == "number") return v.is_number();
    if (name == "integer") return v.k == value::kind::integer;
    if (name == "float") return v.k == value::kind::floating;
    if (name == "string") return v.is_string();
    if (name == "mapping") return v.is_object();
    if (name == "iterable") return v.is_array() || v.is_object() || v.is_string();
    if (name == "sequence") return v.is_array() || v.is_object() || v.is_string();
    if (name == "callable") return v.k == value::kind::macro;
    if (name == "escaped") return false;
    if (name == "odd" || name == "even") {
      if (v.k != value::kind::integer) fail(line, fmt::format("test '{}' needs an integer", name));
      return (((v.i % 2) + 2) % 2 == 1) == (name == "odd");
    }
    if (name == "divisibleby") {
      const value& d = arg(0);
      if (v.k != value::kind::integer || d.k != value::kind::integer || d.i == 0)
        fail(line, "divisibleby: integers, divisor not zero");
      return v.i % d.i == 0;
    }
    if (name == "eq" || name == "equalto" || name == "==" || name == "sameas") return equal(v, arg(0));
    if (name == "ne" || name == "!=") return !equal(v, arg(0));
    if (name == "lt" || name == "<") return compare(v, arg(0), line) < 0;
    if (name == "gt" || name == ">") return compare(v, arg(0), line) > 0;
    if (name == "le" || name == "<=") return compare(v, arg(0), line) <= 0;
    if (name == "ge" || name == ">=") return compare(v, arg(0), line) >= 0;
    if (name == "in") return contains(arg(0), v, line);
    if (name == "lower") return v.is_string() && v.s == ascii_map(v.s, [](int c) { return std::tolower(c); });
    if (name == "upper") return v.is_string() && v.s == ascii_map(v.s, [](int c) { return std::toupper(c); });
    fail(line, fmt::format("unknown test '{}'", name));
  }

  bool apply_test(const node& n) {
    value v = eval(*n.kids[0]);
    std::vector<value> targs;
    for (size_t k = 1; k < n.kids.size(); ++k) targs.push_back(eval(*n.kids[k]));
    return run_test(n.str, v, targs, n.line);
  }

  static bool contains(const value& hay, const value& needle, int line) {
    if (hay.is_string()) {
      if (!needle.is_string()) fail(line, "'in <string>' needs a string on the left");
      return hay.s.find(needle.s) != std::string::npos;
    }
    if (hay.is_array()) {
      for (const auto& x : *hay.a)
        if (equal(x, needle)) return true;
      return false;
    }
    if (hay.is_object()) return needle.is_string() && hay.o->find(needle.s) != nullptr;
    if (hay.is_undefined()) return false;
    fail(line, fmt::format("'in' needs a string, list or dict on the right, got a {}", type_name(hay)));
  }

  value filter_by_name(const std::string& name, const value& v, const args& a, int line) {
    auto pos_or_kw = [&](size_t i, const char* k) { return a.get(i, k); };
    if (name == "trim") return value::string(strip(to_str(v), pos_or_kw(0, "chars"), true, true));
    if (name == "upper") return value::string(ascii_map(to_str(v), [](int c) { return std::toupper(c); }));
    if (name == "lower") return value::string(ascii_map(to_str(v), [](int c) { return std::tolower(c); }));
    if (name == "title") return value::string(title(to_str(v)));
    if (name == "capitalize") return value::string(capitalize(to_str(v)));
    if (name == "string") return value::string(to_str(v));
    if (name == "safe" || name == "e" || name == "escape") {
      if (name == "safe") return v;
      std::string out;
      for (char c : to_str(v)) {
        switch (c) {
          case '&': out += "&amp;"; break;
          case '<': out += "&lt;"; break;
          case '>': out += "&gt;"; break;
          case '"': out += "&#34;"; break;
          case '\'': out += "&#39;"; break;
          default: out.push_back(c);
        }
      }
      return value::string(out);
    }
    if (name == "length" || name == "count") {
      if (v.is_string()) return value::integer(int64_t(n_code_points(v.s)));
      if (v.is_array()) return value::integer(int64_t(v.a->size()));
      if (v.is_object()) return value::integer(int64_t(v.o->items.size()));
      if (v.is_undefined()) return value::integer(0);
      fail(line, fmt::format("a {} has no length", type_name(v)));
    }
    if (name == "default" || name == "d") {
      const value* dflt = pos_or_kw(0, "default_value");
      const value* boolean = pos_or_kw(1, "boolean");
      bool use = boolean && truthy(*boolean) ? !truthy(v) : v.is_undefined();
      if (use) return dflt ? *dflt : value::string("");
      return v;
    }
    if (name == "tojson") {
      json_opts o;
      const value* ind = pos_or_kw(0, "indent");
      if (ind && ind->k == value::kind::integer) o.indent = int(ind->i);
      if (const value* sk = a.get(99, "sort_keys")) o.sort_keys = truthy(*sk);
      if (const value* ea = a.get(99, "ensure_ascii")) o.ensure_ascii = truthy(*ea);
      if (const value* sep = a.get(99, "separators"); sep && !sep->is_none()) {
        if (!sep->is_array() || sep->a->size() != 2 || !(*sep->a)[0].is_string() || !(*sep->a)[1].is_string())
          fail(line, "tojson: separators must be a pair of strings");
        o.custom_seps = true;
        o.item_sep = (*sep->a)[0].s;
        o.key_sep = (*sep->a)[1].s;
      }
      for (const auto& [k, x] : a.kw)
        if (k != "indent" && k != "sort_keys" && k != "ensure_ascii" && k != "separators")
          fail(line, fmt::format("tojson: unknown argument '{}'", k));
      std::string out;
      to_json(out, v, o, 0);
      return value::string(out);
    }
    if (name == "join") {
      const value* sep = pos_or_kw(0, "d");
      const value* attr = pos_or_kw(1, "attribute");
      std::string s = sep ? to_str(*sep) : "";
      std::string out;
      array_t items = as_list(v, line);
      for (size_t k = 0; k < items.size(); ++k) {
        if (k) out += s;
        out += to_str(attr ? attr_path(items[k], to_str(*attr)) : items[k]);
      }
      return value::string(out);
    }
    if (name == "first" || name == "last") {
      array_t items = as_list(v, line);
      if (items.empty()) return value();
      return name == "first" ? items.front() : items.back();
    }
    if (name == "items") {
      if (v.is_undefined()) return value::array();
      if (!v.is_object()) fail(line, "items: expected a dict");
      return call_method(v, "items", {}, line);
    }
    if (name == "list") return value::array(as_list(v, line));
    if (name == "reverse") {
      if (v.is_string()) {
        auto cps = code_points(v.s);
        std::string out;
        for (size_t k = cps.size() - 1; k > 0; --k) out += v.s.substr(cps[k - 1], cps[k] - cps[k - 1]);
        return value::string(out);
      }
      array_t items = as_list(v, line);
      std::reverse(items.begin(), items.end());
      return value::array(std::move(items));
    }
    if (name == "unique") {
      array_t out;
      for (const auto& x : as_list(v, line))
        if (std::none_of(out.begin(), out.end(), [&](const value& y) { return equal(x, y); })) out.push_back(x);
      return value::array(std::move(out));
    }
    if (name == "sort") {
      array_t items = as_list(v, line);
      const value* rev = pos_or_kw(0, "reverse");
      const value* attr = a.get(99, "attribute");
      std::stable_sort(items.begin(), items.end(), [&](const value& x, const value& y) {
        const value xa = attr ? attr_path(x, to_str(*attr)) : x;
        const value ya = attr ? attr_path(y, to_str(*attr)) : y;
        return compare(xa, ya, line) < 0;
      });
      if (rev && truthy(*rev)) std::reverse(items.begin(), items.end());
      return value::array(std::move(items));
    }
    if (name == "dictsort") {
      if (!v.is_object()) fail(line, "dictsort: expected a dict");
      value items = call_method(v, "items", {}, line);
      std::stable_sort(items.a->begin(), items.a->end(),
                       [](const value& x, const value& y) { return (*x.a)[0].s < (*y.a)[0].s; });
      return items;
    }
    if (name == "min" || name == "max") {
      array_t items = as_list(v, line);
      if (items.empty()) return value();
      value best = items[0];
      for (const auto& x : items)
        if ((name == "min" ? compare(x, best, line) < 0 : compare(x, best, line) > 0)) best = x;
      return best;
    }
    if (name == "sum") {
      value total = value::integer(0);
      for (const auto& x : as_list(v, line)) total = arith("+", total, x, line);
      return total;
    }
    if (name == "int") {
      if (v.k == value::kind::integer) return v;
      if (v.k == value::kind::floating) return value::integer(int64_t(v.d));
      if (v.k == value::kind::boolean) return value::integer(v.b);
      if (v.is_string()) {
        try { return value::integer(std::stoll(v.s)); } catch (const std::exception&) {}
      }
      const value* d = pos_or_kw(0, "default");
      return d ? *d : value::integer(0);
    }
    if (name == "float") {
      if (v.is_number()) return value::floating(v.num());
      if (v.is_string()) {
        try { return value::floating(std::stod(v.s)); } catch (const std::exception&) {}
      }
      return value::floating(0);
    }
    if (name == "abs") {
      if (v.k == value::kind::integer) return value::integer(v.i < 0 ? -v.i : v.i);
      if (v.k == value::kind::floating) return value::floating(std::fabs(v.d));
      fail(line, "abs: expected a number");
    }
    if (name == "round") {
      const value* prec = pos_or_kw(0, "precision");
      double p = std::pow(10.0, prec && prec->k == value::kind::integer ? double(prec->i) : 0.0);
      return value::floating(std::round(v.num() * p) / p);
    }
    if (name == "replace") {
      const value* from = pos_or_kw(0, "old");
      const value* to = pos_or_kw(1, "new");
      const value* cnt = pos_or_kw(2, "count");
      if (!from || !to) fail(line, "replace: two strings expected");
      return value::string(replace(to_str(v), to_str(*from), to_str(*to),
                                   cnt && cnt->k == value::kind::integer ? cnt->i : -1));
    }
    if (name == "indent") {
      const value* w = pos_or_kw(0, "width");
      const value* first = pos_or_kw(1, "first");
      const value* blank = pos_or_kw(2, "blank");
      std::string pad = w && w->is_string() ? w->s : std::string(size_t(w && w->k == value::kind::integer ? w->i : 4), ' ');
      std::string s = to_str(v), out;
      size_t k = 0;
      bool first_line = true;
      for (;;) {
        size_t e = s.find('\n', k);
        std::string ln = s.substr(k, e == std::string::npos ? std::string::npos : e - k);
        bool do_pad = first_line ? (first && truthy(*first)) : true;
        if (do_pad && (!ln.empty() || (blank && truthy(*blank)))) out += pad;
        out += ln;
        if (e == std::string::npos) break;
        out.push_back('\n');
        k = e + 1;
        first_line = false;
      }
      return value::string(out);
    }
    if (name == "wordcount") return value::integer(int64_t(split(to_str(v), nullptr, -1).size()));
    if (name == "attr") {
      const value* nm = pos_or_kw(0, "name");
      return nm ? get_member(v, to_str(*nm)) : value();
    }
    if (name == "batch") {
      const value* sz = pos_or_kw(0, "linecount");
      if (!sz || sz->k != value::kind::integer || sz->i <= 0) fail(line, "batch: a positive size expected");
      array_t out, cur;
      for (const auto& x : as_list(v, line)) {
        cur.push_back(x);
        if (int64_t(cur.size()) == sz->i) { out.push_back(value::array(std::move(cur))); cur.clear(); }
      }
      if (!cur.empty()) out.push_back(value::array(std::move(cur)));
      return value::array(std::move(out));
    }
    if (name == "map") {
      array_t items = as_list(v, line);
      array_t out;
      const value* attr = a.get(99, "attribute");
      if (attr) {
        const value* dflt = a.get(99, "default");
        for (const auto& x : items) {
          value r = attr_path(x, to_str(*attr));
          out.push_back(r.is_undefined() && dflt ? *dflt : r);
        }
        return value::array(std::move(out));
      }
      if (a.pos.empty() || !a.pos[0].is_string()) fail(line, "map: a filter name or attribute= expected");
      const std::string fname = a.pos[0].s;
      if (!known_filters().count(fname) || fname == "map") fail(line, fmt::format("map: unknown filter '{}'", fname));
      args rest;
      rest.pos.assign(a.pos.begin() + 1, a.pos.end());
      rest.kw = a.kw;
      for (const auto& x : items) out.push_back(filter_by_name(fname, x, rest, line));
      return value::array(std::move(out));
    }
    if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr") {
      const bool by_attr = name == "selectattr" || name == "rejectattr";
      const bool keep_if = name == "select" || name == "selectattr";
      array_t items = as_list(v, line);
      size_t k = 0;
      std::string attr;
      if (by_attr) {
        if (a.pos.empty()) fail(line, name + ": an attribute name expected");
        attr = to_str(a.pos[0]);
        k = 1;
      }
      std::string test;
      std::vector<value> targs;
      if (k < a.pos.size()) {
        test = to_str(a.pos[k]);
        if (!known_tests().count(test)) fail(line, fmt::format("{}: unknown test '{}'", name, test));
        targs.assign(a.pos.begin() + long(k) + 1, a.pos.end());
      }
      array_t out;
      for (const auto& x : items) {
        value subject = by_attr ? attr_path(x, attr) : x;
        bool r = test.empty() ? truthy(subject) : run_test(test, subject, targs, line);
        if (r == keep_if) out.push_back(x);
      }
      return value::array(std::move(out));
    }
    fail(line, fmt::format("unknown filter '{}'", name));
  }

  value apply_filter(const node& n) {
    value v = eval(*n.kids[0]);
    args a = eval_args(n, 1);
    return filter_by_name(n.str, v, a, n.line);
  }

  static value arith(const std::string& op, const value& x, const value& y, int line) {
    auto numeric = [](const value& v) { return v.is_number() || v.k == value::kind::boolean; };
    if (op == "+") {
      if (x.is_string() && y.is_string()) return value::string(x.s + y.s);
      if (x.is_array() && y.is_array()) {
        array_t r = *x.a;
        r.insert(r.end(), y.a->begin(), y.a->end());
        return value::array(std::move(r));
      }
    }
    if (op == "*" && ((x.is_string() && y.k == value::kind::integer) || (y.is_string() && x.k == value::kind::integer))) {
      const std::string& s = x.is_string() ? x.s : y.s;
      int64_t times = x.is_string() ? y.i : x.i;
      if (times * int64_t(s.size()) > (1 << 24)) fail(line, "string repetition too long");
      std::string out;
      for (int64_t k = 0; k < times; ++k) out += s;
      return value::string(out);
    }
    if (!numeric(x) || !numeric(y))
      fail(line, fmt::format("unsupported operand types for {}: {} and {}", op, type_name(x), type_name(y)));
    const bool ints = x.k != value::kind::floating && y.k != value::kind::floating;
    const int64_t xi = x.k == value::kind::boolean ? int64_t(x.b) : x.i;
    const int64_t yi = y.k == value::kind::boolean ? int64_t(y.b) : y.i;
    if (op == "/") {
      if (y.num() == 0) fail(line, "division by zero");
      return value::floating(x.num() / y.num());
    }
    if (ints) {
      if (op == "+") return value::integer(xi + yi);
      if (op == "-") return value::integer(xi - yi);
      if (op == "*") return value::integer(xi * yi);
      if (op == "//" || op == "%") {
        if (yi == 0) fail(line, "division by zero");
        int64_t q = xi / yi, r = xi % yi;
        if (r != 0 && ((r < 0) != (yi < 0))) { --q; r += yi; }  // Python floors
        return value::integer(op == "//" ? q : r);
      }
      if (op == "**") {
        if (yi < 0) return value::floating(std::pow(double(xi), double(yi)));
        int64_t r = 1;
        for (int64_t k = 0; k < yi && k < 64; ++k) r *= xi;
        return value::integer(r);
      }
    }
    const double a = x.num(), b = y.num();
    if (op == "+") return value::floating(a + b);
    if (op == "-") return value::floating(a - b);
    if (op == "*") return value::floating(a * b);
    if (op == "//" || op == "%") {
      if (b == 0) fail(line, "division by zero");
      double q = std::floor(a / b);
      return value::floating(op == "//" ? q : a - q * b);
    }
    if (op == "**") return value::floating(std::pow(a, b));
    fail(line, "unknown operator " + op);
  }

  value binary_op(const node& n) {
    const std::string& op = n.str;
    if (op == "and") {
      value l = eval(*n.kids[0]);
      return truthy(l) ? eval(*n.kids[1]) : l;
    }
    if (op == "or") {
      value l = eval(*n.kids[0]);
      return truthy(l) ? l : eval(*n.kids[1]);
    }
    value l = eval(*n.kids[0]);
    value r = eval(*n.kids[1]);
    if (op == "==") return value::boolean(equal(l, r));
    if (op == "!=") return value::boolean(!equal(l, r));
    if (op == "<") return value::boolean(compare(l, r, n.line) < 0);
    if (op == ">") return value::boolean(compare(l, r, n.line) > 0);
    if (op == "<=") return value::boolean(compare(l, r, n.line) <= 0);
    if (op == ">=") return value::boolean(compare(l, r, n.line) >= 0);
    if (op == "in") return value::boolean(contains(r, l, n.line));
    if (op == "not in") return value::boolean(!contains(r, l, n.line));
    if (op == "~") return value::string(to_str(l) + to_str(r));
    return arith(op, l, r, n.line);
  }
};

}  // namespace

result<jinja_template> jinja_template::parse(std::string_view source, std::string name) {
  try {
    parser p(lex(source));
    jinja_template t;
    t.root_ = p.parse_template();
    t.name_ = std::move(name);
    return t;
  } catch (const render_error& e) {
    return make_status(errc::invalid_argument, fmt::format("{} line {}: {}", name, e.line, e.what()));
  }
}

result<std::string> jinja_template::render(const nlohmann::ordered_json& variables) const {
  if (!root_) return make_status(errc::invalid_argument, name_ + ": no template");
  try {
    std::vector<std::unordered_map<std::string, value>> scopes(1);
    if (variables.is_object())
      for (auto it = variables.begin(); it != variables.end(); ++it) scopes[0][it.key()] = from_json(it.value());
    renderer r(std::move(scopes));
    std::string out;
    r.run(*root_, out);
    return out;
  } catch (const render_error& e) {
    return make_status(errc::invalid_argument, fmt::format("{} line {}: {}", name_, e.line, e.what()));
  } catch (const std::exception& e) {
    return make_status(errc::invalid_argument, fmt::format("{}: {}", name_, e.what()));
  }
}

}  // namespace infer::jinja
