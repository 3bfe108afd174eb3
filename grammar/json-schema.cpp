#include "grammar/json-schema.hpp"

#include <algorithm>
#include <map>
#include <set>
#include <string>

#include "grammar/regex.hpp"

namespace infer::grammar {
namespace {

using json = nlohmann::ordered_json;
using P = byte_pattern;

struct schema_error {
  std::string message;
};

constexpr int32_t max_length_bound = 1000;

byte_set chars(std::string_view s) {
  byte_set b;
  for (unsigned char c : s) b.set(c);
  return b;
}
byte_set range(int lo, int hi) {
  byte_set b;
  for (int c = lo; c <= hi; ++c) b.set(size_t(c));
  return b;
}

class builder {
 public:
  builder(const json& root, const json_options& opt) : root_(root), opt_(opt) {
    ws_ = P::make_repeat(P::make_set(chars(" \n\t")), 0, std::max(opt_.max_whitespace, 0));
    sep_ = P::make_seq({ws_, P::make_byte(','), ws_});
    byte_set plain = range(0x20, 0x7F);
    plain.reset('"');
    plain.reset('\\');
    const auto hex = P::make_set(range('0', '9') | range('a', 'f') | range('A', 'F'));
    auto esc = P::make_seq({P::make_byte('\\'),
                            P::make_alt({P::make_set(chars("\"\\/bfnrt")), P::make_seq({P::make_byte('u'), hex, hex, hex, hex})})});
    str_char_ = P::make_alt({P::make_utf8_char(plain), esc});
    quote_ = P::make_byte('"');
    any_string_ = P::make_seq({quote_, P::make_repeat(str_char_, 0, -1), quote_});
    const auto digit = P::make_set(range('0', '9'));
    // Digits are bounded (json_options::max_*_digits): every number a double can hold, and no
    // overflow to infinity in a client's parser (1e999 is valid JSON that JavaScript reads as
    // Infinity), nor a model stuck appending digits.
    auto int_part = P::make_seq({P::make_repeat(P::make_byte('-'), 0, 1),
                                 P::make_alt({P::make_byte('0'), P::make_seq({P::make_set(range('1', '9')),
                                                                             P::make_repeat(digit, 0, opt_.max_int_digits - 1)})})});
    integer_ = int_part;
    number_ = P::make_seq({int_part,
                           P::make_repeat(P::make_seq({P::make_byte('.'), P::make_repeat(digit, 1, opt_.max_frac_digits)}), 0, 1),
                           P::make_repeat(P::make_seq({P::make_set(chars("eE")), P::make_repeat(P::make_set(chars("+-")), 0, 1),
                                                       P::make_repeat(digit, 1, opt_.max_exp_digits)}),
                                          0, 1)});
    boolean_ = P::make_alt({P::make_literal("true"), P::make_literal("false")});
    null_ = P::make_literal("null");
  }

  pattern_ptr root() { return of(root_, "schema", 0); }

  pattern_ptr any_object(int32_t levels) { return any_container(levels, true); }

 private:
  [[noreturn]] static void fail(const std::string& path, const std::string& m) { throw schema_error{path + ": " + m}; }

  pattern_ptr nothing() { return P::make_alt({}); }

  pattern_ptr scalars() { return P::make_alt({any_string_, number_, boolean_, null_}); }

  // Any JSON value with containers nested at most `levels` deep.
  pattern_ptr any_value(int32_t levels) {
    levels = std::max(levels, 0);
    if (auto it = any_memo_.find(levels); it != any_memo_.end()) return it->second;
    pattern_ptr p = levels == 0 ? scalars()
                                : P::make_alt({any_container(levels, true), any_container(levels, false), any_string_,
                                               number_, boolean_, null_});
    any_memo_[levels] = p;
    return p;
  }
  pattern_ptr any_container(int32_t levels, bool object) {
    auto inner = any_value(levels - 1);
    pattern_ptr elem = object ? P::make_seq({any_string_, ws_, P::make_byte(':'), ws_, inner}) : inner;
    auto elems = P::make_seq({elem, P::make_repeat(P::make_seq({sep_, elem}), 0, -1)});
    return P::make_seq({P::make_byte(object ? '{' : '['), ws_, P::make_repeat(elems, 0, 1), ws_,
                        P::make_byte(object ? '}' : ']')});
  }

  static std::string literal_of(const json& v) { return v.dump(); }

  static bool is_annotation(const std::string& k) {
    static const std::set<std::string> a = {"title",   "description", "default",  "examples", "$schema",
                                            "$id",     "$comment",    "deprecated", "readOnly", "writeOnly",
                                            "$defs",   "definitions"};
    return a.count(k) != 0;
  }

  static bool type_fits(const json& v, const std::string& t) {
    if (t == "string") return v.is_string();
    if (t == "integer") return v.is_number_integer() || (v.is_number_float() && v.get<double>() == double(int64_t(v.get<double>())));
    if (t == "number") return v.is_number();
    if (t == "boolean") return v.is_boolean();
    if (t == "null") return v.is_null();
    if (t == "object") return v.is_object();
    if (t == "array") return v.is_array();
    return false;
  }

  std::vector<std::string> types_of(const json& s, const std::string& path) {
    std::vector<std::string> ts;
    auto it = s.find("type");
    if (it == s.end()) return ts;
    auto add = [&](const json& t) {
      if (!t.is_string()) fail(path + ".type", "must be a type name or a list of them");
      const auto& n = t.get_ref<const std::string&>();
      static const std::set<std::string> known = {"string", "number", "integer", "boolean", "null", "object", "array"};
      if (!known.count(n)) fail(path + ".type", "unknown type \"" + n + "\"");
      ts.push_back(n);
    };
    if (it->is_array()) {
      if (it->empty()) fail(path + ".type", "an empty list of types");
      for (const auto& t : *it) add(t);
    } else {
      add(*it);
    }
    return ts;
  }

  pattern_ptr of(const json& s, const std::string& path, int32_t depth) {
    // $refs are expanded in place: mutually recursive ones could multiply without end (and
    // this walk also runs on the network threads as the request's check).
    if (++n_schemas_ > max_schemas) fail(path, "the schema is too large (more than " + std::to_string(max_schemas) +
                                                   " subschemas once $ref is expanded)");
    if (s.is_boolean()) return s.get<bool>() ? any_value(opt_.max_depth - depth) : nothing();
    if (!s.is_object()) fail(path, "a schema must be an object or a boolean");
    static const std::set<std::string> keywords = {
        "type",     "properties", "required", "additionalProperties", "items",     "minItems",  "maxItems",
        "enum",     "const",      "anyOf",    "allOf",                "$ref",      "minLength", "maxLength",
        "pattern",  "format"};
    bool constraining = false;
    for (auto it = s.begin(); it != s.end(); ++it) {
      if (is_annotation(it.key())) continue;
      if (!keywords.count(it.key())) fail(path, "unsupported keyword \"" + it.key() + "\"");
      constraining = true;
    }
    auto only = [&](const char* key, std::initializer_list<const char*> also) {
      for (auto it = s.begin(); it != s.end(); ++it) {
        if (is_annotation(it.key()) || it.key() == key) continue;
        bool ok = false;
        for (const char* a : also) ok = ok || it.key() == a;
        if (!ok) fail(path, std::string("\"") + key + "\" together with \"" + it.key() + "\" is not supported");
      }
    };
    if (!constraining) return any_value(opt_.max_depth - depth);
    if (s.contains("$ref")) {
      only("$ref", {});
      const json& r = s.at("$ref");
      if (!r.is_string()) fail(path + ".$ref", "must be a string");
      const std::string& ref = r.get_ref<const std::string&>();
      if (ref.empty() || ref[0] != '#') fail(path + ".$ref", "only local references (\"#...\") are supported");
      const json* target = nullptr;
      try {
        const std::string ptr = ref.substr(1);
        target = ptr.empty() ? &root_ : &root_.at(json::json_pointer(ptr));
      } catch (const std::exception&) {
        fail(path + ".$ref", "\"" + ref + "\" does not resolve");
      }
      int32_t& active = ref_active_[ref];
      if (active >= opt_.max_depth) return nothing();  // recursion bound: this branch cannot be taken
      ++active;
      pattern_ptr p = of(*target, ref, depth + 1);
      --active;
      return p;
    }
    if (s.contains("anyOf") || s.contains("allOf")) {
      const char* key = s.contains("anyOf") ? "anyOf" : "allOf";
      only(key, {});
      const json& list = s.at(key);
      if (!list.is_array() || list.empty()) fail(path + "." + key, "must be a non-empty array of schemas");
      if (std::string(key) == "allOf") {
        if (list.size() != 1) fail(path + ".allOf", "only a list of one schema is supported");
        return of(list[0], path + ".allOf[0]", depth);
      }
      std::vector<pattern_ptr> alts;
      for (size_t i = 0; i < list.size(); ++i) alts.push_back(of(list[i], path + ".anyOf[" + std::to_string(i) + "]", depth));
      return P::make_alt(std::move(alts));
    }
    const std::vector<std::string> types = types_of(s, path);
    if (s.contains("const") || s.contains("enum")) {
      const bool is_const = s.contains("const");
      only(is_const ? "const" : "enum", {"type"});
      std::vector<json> values;
      if (is_const) {
        values.push_back(s.at("const"));
      } else {
        const json& e = s.at("enum");
        if (!e.is_array() || e.empty()) fail(path + ".enum", "must be a non-empty array");
        for (const auto& v : e) values.push_back(v);
      }
      std::vector<pattern_ptr> alts;
      for (const auto& v : values) {
        bool fits = types.empty();
        for (const auto& t : types) fits = fits || type_fits(v, t);
        if (fits) alts.push_back(P::make_literal(literal_of(v)));
      }
      if (alts.empty()) fail(path, "no value of \"" + std::string(is_const ? "const" : "enum") + "\" has the schema's type");
      return P::make_alt(std::move(alts));
    }
    std::vector<std::string> ts = types;
    if (ts.empty()) {  // implied by the keywords
      if (s.contains("properties") || s.contains("required") || s.contains("additionalProperties")) ts.push_back("object");
      if (s.contains("items") || s.contains("minItems") || s.contains("maxItems")) ts.push_back("array");
      if (s.contains("minLength") || s.contains("maxLength") || s.contains("pattern") || s.contains("format"))
        ts.push_back("string");
    }
    std::vector<pattern_ptr> alts;
    for (const auto& t : ts) alts.push_back(of_type(s, t, path, depth));
    return P::make_alt(std::move(alts));
  }

  int32_t bound(const json& s, const char* key, const std::string& path, int32_t limit, int32_t dflt) {
    if (!s.contains(key)) return dflt;
    const json& v = s.at(key);
    if (!v.is_number_integer() || v.get<int64_t>() < 0)
      fail(path + "." + key, "must be a non-negative integer");
    if (v.get<int64_t>() > limit) fail(path + "." + key, "at most " + std::to_string(limit) + " is supported");
    return int32_t(v.get<int64_t>());
  }

  pattern_ptr of_type(const json& s, const std::string& t, const std::string& path, int32_t depth) {
    if (t == "string") return string_of(s, path);
    if (t == "number") return number_;
    if (t == "integer") return integer_;
    if (t == "boolean") return boolean_;
    if (t == "null") return null_;
    if (t == "array") return array_of(s, path, depth);
    return object_of(s, path, depth);
  }

  pattern_ptr string_of(const json& s, const std::string& path) {
    const bool lengths = s.contains("minLength") || s.contains("maxLength");
    if (s.contains("format")) {
      if (lengths || s.contains("pattern")) fail(path, "\"format\" together with a length or a pattern is not supported");
      const json& f = s.at("format");
      if (!f.is_string()) fail(path + ".format", "must be a string");
      const std::string& name = f.get_ref<const std::string&>();
      const std::string date = "[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])";
      const std::string time = "([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])";
      std::string re;
      if (name == "date") re = date;
      else if (name == "time") re = time;
      else if (name == "date-time") re = date + "T" + time;
      else if (name == "uuid") re = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}";
      else fail(path + ".format", "unsupported format \"" + name + "\" (date, time, date-time and uuid are)");
      auto p = regex_pattern(re, {true});
      return P::make_seq({quote_, p.value(), quote_});
    }
    if (s.contains("pattern")) {
      if (lengths) fail(path, "\"pattern\" together with minLength / maxLength is not supported");
      const json& re = s.at("pattern");
      if (!re.is_string()) fail(path + ".pattern", "must be a string");
      auto p = regex_pattern(re.get_ref<const std::string&>(), {true});
      if (!p) fail(path + ".pattern", p.error().message);
      return P::make_seq({quote_, p.value(), quote_});
    }
    if (!lengths) return any_string_;
    const int32_t lo = bound(s, "minLength", path, max_length_bound, 0);
    const int32_t hi = bound(s, "maxLength", path, max_length_bound, -1);
    if (hi >= 0 && hi < lo) fail(path, "maxLength is below minLength");
    return P::make_seq({quote_, P::make_repeat(str_char_, lo, hi), quote_});
  }

  pattern_ptr array_of(const json& s, const std::string& path, int32_t depth) {
    pattern_ptr item;
    if (s.contains("items")) {
      if (s.at("items").is_array()) fail(path + ".items", "a list of schemas (tuple form) is not supported");
      item = of(s.at("items"), path + ".items", depth + 1);
    } else {
      item = any_value(opt_.max_depth - depth - 1);
    }
    const int32_t lo = bound(s, "minItems", path, opt_.max_items_bound, 0);
    const int32_t hi = bound(s, "maxItems", path, opt_.max_items_bound, -1);
    if (hi >= 0 && hi < lo) fail(path, "maxItems is below minItems");
    pattern_ptr elems;
    if (hi == 0) {
      elems = P::make_empty();
    } else {
      auto rest = P::make_repeat(P::make_seq({sep_, item}), std::max(lo - 1, 0), hi < 0 ? -1 : hi - 1);
      elems = P::make_seq({item, rest});
      if (lo == 0) elems = P::make_repeat(elems, 0, 1);
    }
    return P::make_seq({P::make_byte('['), ws_, elems, ws_, P::make_byte(']')});
  }

  pattern_ptr object_of(const json& s, const std::string& path, int32_t depth) {
    bool extra_allowed = true;
    if (s.contains("additionalProperties")) {
      const json& a = s.at("additionalProperties");
      if (a.is_boolean()) extra_allowed = a.get<bool>();
      else if (!a.is_object()) fail(path + ".additionalProperties", "must be a boolean or a schema");
    }
    std::vector<std::pair<std::string, const json*>> props;
    if (s.contains("properties")) {
      const json& ps = s.at("properties");
      if (!ps.is_object()) fail(path + ".properties", "must be an object");
      for (auto it = ps.begin(); it != ps.end(); ++it) props.emplace_back(it.key(), &it.value());
    }
    std::set<std::string> required;
    if (s.contains("required")) {
      const json& r = s.at("required");
      if (!r.is_array()) fail(path + ".required", "must be an array of property names");
      for (const auto& k : r) {
        if (!k.is_string()) fail(path + ".required", "must be an array of property names");
        const std::string& name = k.get_ref<const std::string&>();
        bool known = false;
        for (const auto& [n, _] : props) known = known || n == name;
        if (!known) fail(path + ".required", "\"" + name + "\" is not among the properties");
        required.insert(name);
      }
    }
    // No properties named: any object (or only {} when nothing else is allowed).
    if (props.empty() && extra_allowed) return any_container(std::max(opt_.max_depth - depth, 1), true);
    const size_t n = props.size();
    // tail[i][e]: the members from i on, e: a member was written before (a comma comes first).
    std::vector<std::array<pattern_ptr, 2>> tail(n + 1);
    tail[n] = {P::make_empty(), P::make_empty()};
    for (size_t i = n; i-- > 0;) {
      const auto& [name, sub] = props[i];
      auto value = of(*sub, path + ".properties." + name, depth + 1);
      auto member = P::make_seq({P::make_literal(json(name).dump()), ws_, P::make_byte(':'), ws_, value});
      for (int e = 0; e < 2; ++e) {
        auto with = P::make_seq({e ? sep_ : P::make_empty(), member, tail[i + 1][1]});
        tail[i][size_t(e)] = required.count(name) ? with : P::make_alt({with, tail[i + 1][size_t(e)]});
      }
    }
    return P::make_seq({P::make_byte('{'), ws_, tail[0][0], ws_, P::make_byte('}')});
  }

  const json& root_;
  json_options opt_;
  pattern_ptr ws_, sep_, str_char_, quote_, any_string_, number_, integer_, boolean_, null_;
  std::map<int32_t, pattern_ptr> any_memo_;
  std::map<std::string, int32_t> ref_active_;
  static constexpr int64_t max_schemas = 20000;
  int64_t n_schemas_ = 0;
};

}  // namespace

result<pattern_ptr> json_schema_pattern(const nlohmann::ordered_json& schema, const json_options& opt) {
  try {
    builder b(schema, opt);
    return b.root();
  } catch (const schema_error& e) {
    return make_status(errc::invalid_argument, e.message);
  } catch (const std::exception& e) {
    return make_status(errc::invalid_argument, std::string("schema: ") + e.what());
  }
}

pattern_ptr json_object_pattern(const json_options& opt) {
  static const nlohmann::ordered_json empty = nlohmann::ordered_json::object();
  builder b(empty, opt);
  return b.any_object(std::max(opt.max_depth, 1));
}

}  // namespace infer::grammar
