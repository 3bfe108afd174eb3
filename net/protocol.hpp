// protocol: the wire formats of the network layer as pure functions, so they can be
// unit-tested and fuzzed without sockets or a service.
//
//   WebSocket v1 (/v1/stream, docs/protocol.md):
//     client frame --parse_command--> generate_command | cancel_command | invalid_request
//     service event --event_frame--> {"type":"accepted"|"token"|"done"|"error",...}
//   OpenAI completions (POST /v1/completions):
//     body --parse_completion_request--> completion_command | invalid_request
//     events --openai_*_json--> response body / SSE chunks
//   OpenAI chat completions (POST /v1/chat/completions):
//     body --parse_chat_request--> chat_command (template variables) | invalid_request
//     the chat template (net/chat.hpp) turns the variables into the prompt, off the io threads
//   vLLM tokenize / detokenize bodies.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "actors/service.hpp"

namespace infer::net {

// What the parser checks values against. Filled from the service and its config.
struct protocol_limits {
  int32_t n_ctx = 1024;
  int32_t n_vocab = 50257;
  int32_t max_tokens_default = 16;
  int32_t max_tokens_limit = 4096;
  size_t max_id_bytes = 128;
  size_t max_stop = 16;         // stop sequences per request
  size_t max_stop_bytes = 256;  // bytes per stop sequence
  size_t max_stop_token_ids = 64;
  // Turns a text prompt into ids so that its length is checked here and the service
  // receives ids. Empty: text prompts are passed on as text, unchecked.
  std::function<std::vector<int32_t>(std::string_view)> encode;
  // Without `encode` (the server: tokenizing a long prompt would stall an io thread; the
  // service tokenizes it on its own threads): a text prompt longer than n_ctx tokens of
  // max_token_bytes each cannot fit, and is refused without tokenizing. 0: not checked.
  size_t max_token_bytes = 0;
  // The model's generation_config.json sampling defaults: the OpenAI endpoints use them for
  // a field the request leaves out (vLLM's --generation-config auto), instead of OpenAI's
  // temperature 1 / top_p 1 / top_k off. The WebSocket protocol keeps its own defaults.
  std::optional<float> default_temperature, default_top_p;
  std::optional<int32_t> default_top_k;
};

// The conversation of a chat request, as the chat template receives it (net/chat.hpp):
// `vars` holds messages (each with a role; content a string: a list of text parts is
// joined with "\n", as vLLM does for string-content templates), tools and documents (null
// when not given, as transformers passes them),
// add_generation_prompt, and chat_template_kwargs' members at the top level (as
// transformers passes them, e.g. Qwen3's enable_thinking). Key order is the client's
// (tojson in templates keeps it).
struct chat_input {
  nlohmann::ordered_json vars = nlohmann::ordered_json::object();
  bool continue_final_message = false;  // vLLM: the prompt ends inside the last (assistant) message
};

struct generate_command {
  std::string id;
  std::string model;  // empty: the default model; else one of the served names
  generate_request request;
  std::optional<chat_input> chat;  // "messages" instead of a prompt: rendered before submission
};
struct cancel_command {
  std::string id;
};
// Always answered with an `invalid_request` error; `id` is empty when the frame had
// no usable id (the error then carries "id":null).
struct invalid_request {
  std::optional<std::string> id;
  std::string message;
};

using command = std::variant<generate_command, cancel_command, invalid_request>;

// One WebSocket text frame to a command. Never throws.
command parse_command(std::string_view frame, const protocol_limits& lim);

// Enum names on the wire are the service's to_string (actors/service.hpp).

// Server-to-client frames.
std::string accepted_frame(std::string_view id);
// Appends to `out` (cleared first) so a caller can reuse one buffer per token.
// With `lp` carrying logprobs (n_top >= 0): ,"logprob":x,"top_logprobs":[{"token":id,"logprob":x},...].
void token_frame(std::string& out, std::string_view id, int32_t index, int32_t token, std::string_view text,
                 const event* lp = nullptr);
std::string done_frame(std::string_view id, const event& e);
std::string error_frame(const std::optional<std::string>& id, error_code c, std::string_view message,
                        int64_t retry_after_ms = 0);
// Any service event, dispatched on its kind.
std::string event_frame(std::string_view id, const event& e);

// A request naming a model this server does not serve (OpenAI's 404 model_not_found):
// the message names the model asked for and those served.
std::string model_not_found_message(std::string_view asked, const std::vector<std::string>& served);
std::string model_not_found_json(std::string_view message);                // HTTP body
std::string model_not_found_frame(std::string_view id, std::string_view message);  // WebSocket error

// Appends `s` as a JSON string literal (with quotes). Invalid UTF-8 becomes U+FFFD, so
// the output is always valid JSON whatever the bytes.
void append_json_string(std::string& out, std::string_view s);

// ---- OpenAI completions -------------------------------------------------------------
struct completion_command {
  generate_request request;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  std::string model;           // echoed back; empty: the server's model name
  bool seeded = false;         // false: the caller picks a fresh seed (OpenAI: unseeded is random)
  bool echo = false;           // the prompt's text comes before the completion
};
// The `logprobs` value of one choice, grown token by token from token events that carry
// logprobs (event::n_top >= 0). Completions: OpenAI's {tokens, token_logprobs, top_logprobs,
// text_offset}, top_logprobs holding the sampled token and the top k; chat: {content: [{token,
// logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}. Token strings are the
// tokens' bytes as text (a byte-level piece of a character becomes U+FFFD; `bytes` has them
// exactly). `offset`: text_offset of the next token (the echoed prompt's length first).
struct logprobs_builder {
  using bytes_fn = std::function<std::string_view(int32_t)>;
  bool chat = false;
  size_t offset = 0;
  size_t n = 0;
  std::string tokens, token_logprobs, top_logprobs, text_offset, content;

  void add(const event& e, const bytes_fn& token_bytes);
  // Completions with echo and logprobs: the prompt's tokens first (e.prompt_ids, the first
  // with null logprobs, the others from e.prompt_logprobs / e.prompt_top).
  void add_prompt(const event& e, const bytes_fn& token_bytes);
  bool empty() const { return n == 0; }
  std::string json() const;
  void clear_tokens();  // for the next streamed chunk (offset stays)
};

std::variant<completion_command, invalid_request> parse_completion_request(std::string_view body,
                                                                           const protocol_limits& lim);

// HTTP status of an error code (400 / 429 / 503 / 504 / 500).
int http_status(error_code c);
// {"error":{"message":...,"type":...,"param":null,"code":...}}, with "retry_after_ms":N in
// the error object when retry_after_ms > 0 (overloaded, rate_limited).
std::string openai_error_json(error_code c, std::string_view message, int64_t retry_after_ms = 0);
// Whole non-streaming response. OpenAI clients know only "length" and "stop": a
// cancelled request (server shutdown) is reported as "stop".
std::string openai_completion_json(std::string_view cmpl_id, int64_t created, std::string_view model,
                                   std::string_view text, const event& done, std::string_view logprobs = {});
// n choices (texts[i], logprobs[i] empty: null), each finish reason from done.choice_reasons
// (else done.reason); usage counts the prompt once and the choices' tokens summed.
std::string openai_completion_json(std::string_view cmpl_id, int64_t created, std::string_view model,
                                   std::span<const std::string> texts, const event& done,
                                   std::span<const std::string> logprobs);
// One SSE `data:` payload; finish is nullptr for a token chunk; index: the choice.
std::string openai_chunk_json(std::string_view cmpl_id, int64_t created, std::string_view model,
                              std::string_view text, const char* finish, std::string_view logprobs = {},
                              int32_t index = 0);
// The SSE chunk that ends choice `index`: its finish_reason from `done`, plus (top level) the
// degradation fields when it was served degraded ("degraded", "max_tokens_capped_to").
std::string openai_final_chunk_json(std::string_view cmpl_id, int64_t created, std::string_view model,
                                    const event& done, int32_t index = 0);
std::string openai_usage_chunk_json(std::string_view cmpl_id, int64_t created, std::string_view model,
                                    const event& done);

// ---- OpenAI chat completions --------------------------------------------------------
struct chat_command {
  generate_request request;  // prompt left empty: the chat template makes it
  chat_input chat;
  bool stream = false;
  bool include_usage = false;
  std::string model;
  bool seeded = false;
};
// messages, stream, stream_options, the sampling fields of completions, max_completion_tokens
// (taking precedence over max_tokens), tools, tool_choice (none / auto: tool calls come back
// as text), chat_template_kwargs, add_generation_prompt, continue_final_message.
std::variant<chat_command, invalid_request> parse_chat_request(std::string_view body, const protocol_limits& lim);
std::string openai_chat_json(std::string_view id, int64_t created, std::string_view model, std::string_view text,
                             const event& done, std::string_view logprobs = {});
std::string openai_chat_json(std::string_view id, int64_t created, std::string_view model,
                             std::span<const std::string> texts, const event& done,
                             std::span<const std::string> logprobs);
// One chat.completion.chunk of choice `index`: `role` true puts the role in the delta (the
// choice's first chunk); finish is nullptr except on its last chunk (whose delta is empty).
std::string openai_chat_chunk_json(std::string_view id, int64_t created, std::string_view model, bool role,
                                   std::string_view text, const char* finish, std::string_view logprobs = {},
                                   int32_t index = 0);
std::string openai_chat_final_chunk_json(std::string_view id, int64_t created, std::string_view model,
                                         const event& done, int32_t index = 0);
std::string openai_chat_usage_chunk_json(std::string_view id, int64_t created, std::string_view model,
                                         const event& done);

// ---- vLLM tokenize / detokenize -----------------------------------------------------
// {"prompt":"..."} (also "text") -> the prompt text.
std::variant<std::string, invalid_request> parse_tokenize_request(std::string_view body);
// vLLM's two forms: {"prompt", "add_special_tokens": true} or {"messages",
// "add_generation_prompt": true, "add_special_tokens": false, "tools", "chat_template_kwargs",
// "continue_final_message"} (those defaults).
struct tokenize_command {
  std::string prompt;
  bool add_special_tokens = true;
  std::optional<chat_input> chat;
};
std::variant<tokenize_command, invalid_request> parse_tokenize_command(std::string_view body);
std::string tokenize_response_json(std::span<const int32_t> tokens, int32_t n_ctx);
// {"tokens":[...]} -> ids, each checked against n_vocab.
std::variant<std::vector<int32_t>, invalid_request> parse_detokenize_request(std::string_view body,
                                                                             int32_t n_vocab);
std::string detokenize_response_json(std::string_view text);

}  // namespace infer::net
