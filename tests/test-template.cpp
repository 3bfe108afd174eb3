// template: the Jinja interpreter's parse-time checks and semantics that the oracle
// comparison (tests/template-oracle.mjs) cannot show: load-time errors with lines,
// lstrip/trim_blocks, scoping, Python-style results.
#include <doctest/doctest.h>

#include "template/jinja.hpp"

using infer::jinja::jinja_template;
using json = nlohmann::ordered_json;

namespace {
std::string render(const std::string& src, const json& vars = json::object()) {
  auto t = jinja_template::parse(src, "t");
  REQUIRE_MESSAGE(t.has_value(), (t ? "" : t.error().message));
  auto r = t->render(vars);
  REQUIRE_MESSAGE(r.has_value(), (r ? "" : r.error().message));
  return r.value();
}
std::string render_error(const std::string& src, const json& vars = json::object());
std::string parse_error(const std::string& src) {
  auto t = jinja_template::parse(src, "chat template");
  REQUIRE_FALSE(t.has_value());
  return t.error().message;
}
std::string render_error(const std::string& src, const json& vars) {
  auto t = jinja_template::parse(src, "t");
  REQUIRE(t.has_value());
  auto r = t->render(vars);
  REQUIRE_FALSE(r.has_value());
  return r.error().message;
}
}  // namespace

TEST_CASE("unsupported constructs fail at load with the template line") {
  CHECK(parse_error("a\nb\n{{ x | frobnicate }}") == "chat template line 3: unknown filter 'frobnicate'");
  CHECK(parse_error("{% if x %}\n{{ x is wobbly }}{% endif %}") == "chat template line 2: unknown test 'wobbly'");
  CHECK(parse_error("\n\n\n{{ x.zap() }}") == "chat template line 4: unknown method 'zap'");
  CHECK(parse_error("{{ nosuch(1) }}") == "chat template line 1: unknown function 'nosuch'");
  CHECK(parse_error("{% include 'x' %}") == "chat template line 1: unsupported statement 'include'");
  CHECK(parse_error("{% for x in y %}") == "chat template line 1: missing '{% endfor %}'");
  CHECK(parse_error("{{ 'abc }}").find("unterminated string") != std::string::npos);
  CHECK(parse_error("{% break %}").find("outside a loop") != std::string::npos);
  // As in Jinja, a macro exists from its definition on.
  CHECK(render("{% macro m() %}x{% endmacro %}{{ m() }}") == "x");
  CHECK(render_error("{{ m() }}{% macro m() %}x{% endmacro %}") == "t line 1: 'm' is not callable");
}

TEST_CASE("whitespace: trim_blocks, lstrip_blocks, explicit control, trailing newline") {
  CHECK(render("{% if true %}\n  a\n{% endif %}\n") == "  a\n");
  CHECK(render("x\n    {% if true %}y{% endif %}") == "x\ny");
  CHECK(render("x   {%- if true -%}   y   {%- endif %}") == "xy");
  CHECK(render("  {{ 'v' }}\n") == "  v");  // lstrip applies to blocks, not to {{ }}
  CHECK(render("  {%+ if true %}y{% endif %}") == "  y");
  CHECK(render("a {# note #}\nb") == "a b");
}

TEST_CASE("scoping: loops do not leak, namespaces do, if does") {
  CHECK(render("{% set x = 1 %}{% for i in [1,2] %}{% set x = i %}{% endfor %}{{ x }}") == "1");
  CHECK(render("{% set ns = namespace(x=1) %}{% for i in [1,2] %}{% set ns.x = i %}{% endfor %}{{ ns.x }}") == "2");
  CHECK(render("{% if true %}{% set x = 5 %}{% endif %}{{ x }}") == "5");
  CHECK(render("{% set y %}a{{ 1 + 1 }}{% endset %}[{{ y }}]") == "[a2]");
  CHECK(render_error("{% set x = 1 %}{% set x.a = 2 %}").find("not a namespace") != std::string::npos);
}

// Where @huggingface/jinja differs from Python's Jinja (which transformers runs), we follow
// Python; the oracle's feature templates avoid these spots.
TEST_CASE("Python semantics of values") {
  CHECK(render("{{ 'xxhixx'.lstrip('x') }} {{ 'ab' * 2 }} {{ x }} {{ 1 == 1 }}", {{"x", nullptr}}) == "hixx abab None True");
  CHECK(render("{% for i in [1,2,3] %}{{ i }}{% if i == 2 %}{% break %}{% endif %}{% endfor %}") == "12");
  CHECK(render("{% for i in [1,2,3] %}{{ i }}{% if i == 2 %}{% continue %}{% endif %}-{% endfor %}") == "1-23-");
  CHECK(render("{{ true }} {{ none }} {{ 1.0 }} {{ [1, 'a'] }} {{ {'k': none} }}") == "True None 1.0 [1, 'a'] {'k': None}");
  CHECK(render("{{ -7 % 3 }} {{ 7 / 2 }} {{ 'é東' | length }} {{ 'é東x'[1] }} {{ 'é東x'[::-1] }}") == "2 3.5 2 東 x東é");
  CHECK(render("{{ ' a  b '.split() }} {{ 'a-b-c'.split('-', 1) }}") == "['a', 'b'] ['a', 'b-c']");
  CHECK(render("{{ x | tojson }}", {{"x", {{"b", 1}, {"a", {true, nullptr, "é\n"}}}}}) ==
        "{\"b\": 1, \"a\": [true, null, \"é\\n\"]}");
  CHECK(render("{{ x | tojson(indent=2) }}", {{"x", {{"a", {1}}}}}) == "{\n  \"a\": [\n    1\n  ]\n}");
  CHECK(render("{{ x | tojson(ensure_ascii=true, separators=(',', ':')) }}", {{"x", {{"k", "é🙂"}}}}) ==
        "{\"k\":\"\\u00e9\\ud83d\\ude42\"}");
  CHECK(render("{{ x | tojson(sort_keys=true) }}", {{"x", {{"b", 1}, {"a", 2}}}}) == "{\"a\": 2, \"b\": 1}");
  CHECK(render("{{ strftime_now('%Y') | length }}") == "4");
  CHECK(render("{% for k, v in d | items %}{{ k }}{{ v }}{% endfor %}", {{"d", {{"z", 1}, {"a", 2}}}}) == "z1a2");
}

TEST_CASE("render errors carry the message and line") {
  CHECK(render_error("ok\n{{ raise_exception('no system role') }}") == "t line 2: no system role");
  CHECK(render_error("{{ 'a' + 1 }}").find("unsupported operand types for +: string and integer") != std::string::npos);
  CHECK(render_error("{% for x in 3 %}{% endfor %}").find("not iterable") != std::string::npos);
}
