#include "net/chat.hpp"

#include <fmt/format.h>

#include "tokenizer/tokenizer.hpp"

namespace infer::net {

result<std::shared_ptr<const chat_formatter>> chat_formatter::from_tokenizer(const tokenizer& tok) {
  const auto& info = tok.info();
  if (info.chat_templates.empty()) return std::shared_ptr<const chat_formatter>();
  auto f = std::make_shared<chat_formatter>();
  for (const auto& e : info.chat_templates) {
    auto t = jinja::jinja_template::parse(e.source, fmt::format("chat template \"{}\"", e.name));
    if (!t) return t.error();
    f->templates_.push_back({e.name, std::move(t.value())});
  }
  f->bos_ = info.bos_token;
  f->eos_ = info.eos_token;
  return std::shared_ptr<const chat_formatter>(std::move(f));
}

result<std::string> chat_formatter::render(const chat_input& in) const {
  const bool tools = in.vars.contains("tools") && !in.vars["tools"].is_null();
  const named* pick = nullptr;
  for (const auto& t : templates_)
    if (tools && t.name == "tool_use") pick = &t;
  if (!pick)
    for (const auto& t : templates_)
      if (t.name == "default") pick = &t;
  if (!pick) pick = &templates_.front();
  nlohmann::ordered_json vars = in.vars;
  if (!vars.contains("bos_token")) vars["bos_token"] = bos_;
  if (!vars.contains("eos_token")) vars["eos_token"] = eos_;
  auto r = pick->tpl.render(vars);
  if (!r || !in.continue_final_message) return r;
  // As transformers does: cut the prompt right after the final message's content, so
  // that the model continues that message instead of closing it.
  const auto& last = in.vars["messages"].back();
  std::string content = last.contains("content") && last["content"].is_string() ? last["content"].get<std::string>() : "";
  while (!content.empty() && (content.back() == ' ' || content.back() == '\n' || content.back() == '\t'))
    content.pop_back();
  size_t b = 0;
  while (b < content.size() && (content[b] == ' ' || content[b] == '\n' || content[b] == '\t')) ++b;
  content.erase(0, b);
  if (content.empty())
    return make_status(errc::invalid_argument, "continue_final_message: the final message has no text to continue");
  const size_t at = r.value().rfind(content);
  if (at == std::string::npos)
    return make_status(errc::invalid_argument,
                       "continue_final_message: the final message's content is not in the rendered prompt");
  return r.value().substr(0, at + content.size());
}

result<std::vector<int32_t>> chat_formatter::render_tokens(const chat_input& in, const tokenizer& tok,
                                                           bool add_special_tokens) const {
  auto text = render(in);
  if (!text) return text.error();
  encode_options o;
  o.add_special_tokens = add_special_tokens;
  return tok.encode(text.value(), o);
}

std::string no_chat_template_message() {
  return "this model has no chat template (none in its tokenizer_config.json or chat_template.jinja): "
         "start inferd with --chat-template FILE, or use /v1/completions";
}

}  // namespace infer::net
