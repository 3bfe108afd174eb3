// tokenizer-dump: the project's tokenizer and chat templates, for an outside oracle
// (scripts/gpu-tokenizer-check.py compares them with Python `tokenizers` and
// transformers' apply_chat_template on the GPU machine, which has both).
//   tokenizer-dump DIR < cases.json > results.json
// DIR: a tokenizer folder as inferd's --tokenizer-dir takes it (tokenizer.json and
// tokenizer_config.json ...). stdin: a JSON array of cases, each one of
//   {"text": "...", "add_special_tokens": true}          -> {"ids": [...], "decoded": "..."}
//   {"messages": [...], "add_generation_prompt": true}   -> {"text": "...", "ids": [...]}
// (a chat case renders every other member as a template variable, like a request's
// chat_template_kwargs). A failing case gives {"error": "..."}; the tool itself exits 2
// on unusable input or a folder that does not load.
#include <iostream>
#include <iterator>
#include <string>

#include <nlohmann/json.hpp>

#include "net/chat.hpp"
#include "tokenizer/tokenizer.hpp"

int main(int argc, char** argv) {
  using json = nlohmann::ordered_json;
  if (argc != 2) {
    std::cerr << "usage: tokenizer-dump DIR < cases.json\n";
    return 2;
  }
  auto tok = infer::tokenizer::from_dir(argv[1]);
  if (!tok) {
    std::cerr << "tokenizer-dump: " << tok.error().message << "\n";
    return 2;
  }
  auto chat = infer::net::chat_formatter::from_tokenizer(tok.value());
  if (!chat) {
    std::cerr << "tokenizer-dump: " << chat.error().message << "\n";
    return 2;
  }
  std::string in((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  json cases = json::parse(in, nullptr, false);
  if (!cases.is_array()) {
    std::cerr << "tokenizer-dump: stdin must be a JSON array\n";
    return 2;
  }
  json out = json::array();
  for (const auto& c : cases) {
    if (c.contains("text")) {
      infer::encode_options o;
      o.add_special_tokens = c.value("add_special_tokens", true);
      auto ids = tok.value().encode(c["text"].get<std::string>(), o);
      out.push_back({{"ids", ids}, {"decoded", tok.value().decode_text(ids)}});
      continue;
    }
    if (!chat.value()) {
      out.push_back({{"error", infer::net::no_chat_template_message()}});
      continue;
    }
    infer::net::chat_input ci;
    ci.vars = c;
    auto text = chat.value()->render(ci);
    if (!text) {
      out.push_back({{"error", text.error().message}});
      continue;
    }
    infer::encode_options o;
    o.add_special_tokens = false;  // as chat requests (vLLM): the template writes BOS
    out.push_back({{"text", text.value()}, {"ids", tok.value().encode(text.value(), o)}});
  }
  std::cout << out.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
  return 0;
}
