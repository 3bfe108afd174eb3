// jinja: the subset of Jinja2 that chat templates use, parsed once and rendered per request.
//
// A template is parsed completely when it is loaded: syntax, every filter, test,
// function and method name is checked then, so a template that uses something this
// interpreter lacks fails at start-up with its line, not at the first request.
// Rendering only fails on what depends on the data: raise_exception(), a type error
// (adding a string to a list), a macro called with too many arguments.
//
// Lexing follows what transformers' apply_chat_template configures: trim_blocks and
// lstrip_blocks on, the template's single trailing newline dropped (Jinja's default
// keep_trailing_newline=False), autoescape off. Undefined values are lenient
// (an attribute of an undefined value is undefined), like @huggingface/jinja.
//
// Supported: {{ }}, {% if/elif/else %}, {% for x in xs [if c] %} with loop.index0,
// index, revindex, revindex0, first, last, length, previtem, nextitem, {% else %} and
// {% break %} / {% continue %}; {% set x = e %}, {% set ns.attr = e %}, block set;
// {% macro %}; {% generation %} (transformers' marker, rendered as its body); comments;
// whitespace control ({%- -%}, {{- -}}, {%+ %}). Expressions: literals, lists,
// dicts, tuples, attribute and item access, slices, calls with keyword arguments,
// filters, tests, `a if c else b`, and / or / not, in / not in, comparisons,
// + - * / // % **, ~. The filter, test, function and method lists are in jinja.cpp.
// Strings are UTF-8; length, slicing and iteration count code points; upper, lower,
// title and capitalize change ASCII letters only.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/result.hpp"

namespace infer::jinja {

struct node;

class jinja_template {
 public:
  // Parses `source`. The error names `name` and the line: "chat template line 3: ...".
  static result<jinja_template> parse(std::string_view source, std::string name = "template");
  // Renders with the object's members as the template's variables. Thread-safe (a
  // parsed template is immutable). Errors: raise_exception's message, type errors.
  result<std::string> render(const nlohmann::ordered_json& variables) const;
  const std::string& name() const { return name_; }

 private:
  std::shared_ptr<const node> root_;
  std::string name_;
};

}  // namespace infer::jinja
