// chat: a model's chat template(s) turning a chat_input (net/protocol.hpp) into the prompt.
//
// The templates come from the tokenizer (tokenizer_config.json's chat_template, a string
// or a list of named ones, or chat_template.jinja; --chat-template FILE replaces them, see
// actors/service.cpp) and are parsed once, when the server is attached to the service (the
// service has already refused to start with a template that does not parse). As in
// transformers, the "tool_use" template is taken when the request has tools and the model
// names one, else "default"; the variables are the request's plus bos_token and eos_token
// (the request's chat_template_kwargs may override those).
//
// Rendering is CPU work proportional to the conversation: the server runs it on its render
// pool, never on an io thread.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "base/result.hpp"
#include "net/protocol.hpp"
#include "template/jinja.hpp"

namespace infer {
class tokenizer;
}

namespace infer::net {

class chat_formatter {
 public:
  // nullptr when the tokenizer has no chat template; an error when one does not parse.
  static result<std::shared_ptr<const chat_formatter>> from_tokenizer(const tokenizer& tok);

  // The prompt text. Errors (400 for the client): raise_exception's message (e.g. roles
  // that do not alternate), a template type error, continue_final_message whose last
  // message is not found in the output.
  result<std::string> render(const chat_input& in) const;
  // render() then encode (add_special_tokens: the tokenizer's BOS etc. on top of the
  // template's; chat requests leave it off, as vLLM does).
  result<std::vector<int32_t>> render_tokens(const chat_input& in, const tokenizer& tok,
                                             bool add_special_tokens) const;

 private:
  struct named {
    std::string name;
    jinja::jinja_template tpl;
  };
  std::vector<named> templates_;
  std::string bos_, eos_;
};

// The message for a chat request to a model without a template.
std::string no_chat_template_message();

}  // namespace infer::net
