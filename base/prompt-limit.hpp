// prompt-limit: the one prompt-length rule of every entry point (HTTP and WebSocket requests,
// chat templates, /tokenize's count, the embedded API's request actor): a prompt may take at
// most n_ctx - 1 positions of the context, so that one is left to generate into (vLLM refuses
// a prompt of max_model_len tokens too).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace infer {

inline bool prompt_fits(int64_t prompt_tokens, int64_t n_ctx) { return prompt_tokens < n_ctx; }

// The error of a prompt that does not fit, naming the field it came from ("prompt",
// "messages"): "prompt: 9 tokens, longer than the context allows (8 tokens, at most 7 for the prompt)".
inline std::string prompt_too_long_message(std::string_view field, int64_t prompt_tokens, int64_t n_ctx) {
  std::string out(field);
  out += ": ";
  out += std::to_string(prompt_tokens);
  out += " tokens, longer than the context allows (";
  out += std::to_string(n_ctx);
  out += " tokens, at most ";
  out += std::to_string(n_ctx > 0 ? n_ctx - 1 : 0);
  out += " for the prompt)";
  return out;
}

}  // namespace infer
