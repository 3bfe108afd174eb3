// template-render: renders chat templates with the project's Jinja interpreter for
// tests/template-oracle.mjs, which compares the results with @huggingface/jinja.
// stdin: [{"template": "...", "variables": {...}}, ...]
// stdout: [{"ok": true, "text": "..."} | {"ok": false, "error": "..."}, ...]
#include <iostream>
#include <iterator>
#include <string>

#include <nlohmann/json.hpp>

#include "template/jinja.hpp"

int main() {
  using json = nlohmann::ordered_json;
  std::string in((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  json cases = json::parse(in, nullptr, false);
  if (!cases.is_array()) {
    std::cerr << "template-render: stdin must be a JSON array\n";
    return 2;
  }
  json out = json::array();
  for (const auto& c : cases) {
    auto t = infer::jinja::jinja_template::parse(c.value("template", ""), "template");
    if (!t) {
      out.push_back({{"ok", false}, {"error", t.error().message}});
      continue;
    }
    auto r = t->render(c.value("variables", json::object()));
    if (r) out.push_back({{"ok", true}, {"text", r.value()}});
    else out.push_back({{"ok", false}, {"error", r.error().message}});
  }
  std::cout << out.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
  return 0;
}
