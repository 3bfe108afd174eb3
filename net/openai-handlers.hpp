// openai-handlers: POST /v1/completions and /v1/chat/completions on an http_session: the
// request parsed and checked, submitted to the service (chat: the template rendered on the
// blocking pool first), and its events turned into one JSON response or an SSE stream of
// OpenAI chunks. Internal to net/.
#pragma once
#include <chrono>
#include <random>

#include "net/http-session.hpp"

namespace infer::net::detail {

template <class Stream>
void http_session<Stream>::on_event(const std::shared_ptr<completion_state>& c, const event& e) {
  if (c != cur_) return;
  if (e.terminal()) log_outcome(conn_, c->chat ? "chat" : "openai", c->cmpl_id, c->rid, e, c->request_id);
  if (c->client_gone) {
    if (e.terminal()) cur_.reset();
    return;
  }
  if (c->chat) return on_chat_event(*c, e);
  switch (e.type) {
    case event::kind::accepted:
      if (c->stream) {
        send_sse_headers(*c);
        if (!c->echo.empty() && !c->echo_lp)
          for (size_t i = 0; i < c->texts.size(); ++i)
            send_sse(*c, openai_chunk_json(c->cmpl_id, c->created, c->model, c->echo, nullptr, {}, int32_t(i)));
      }
      break;
    case event::kind::token:
      if (c->echo_lp && !e.prompt_ids.empty()) {
        if (c->stream) {  // each choice's echo chunk, with the prompt's logprobs
          for (size_t i = 0; i < c->lps.size(); ++i) {
            auto& l = c->lps[i];
            l.clear_tokens();
            l.offset = 0;
            l.add_prompt(e, c->bytes());
            send_sse(*c, openai_chunk_json(c->cmpl_id, c->created, c->model, c->echo, nullptr, l.json(), int32_t(i)));
            l.offset = c->echo.size();
          }
        } else {
          c->add_prompt(e);
        }
      }
      if (c->stream) {
        send_sse(*c, openai_chunk_json(c->cmpl_id, c->created, c->model, e.text, nullptr, c->chunk_logprobs(e),
                                       e.choice));
      } else {
        c->add_token(e);
      }
      break;
    case event::kind::done:
      if (c->stream) {
        for (size_t i = 0; i < c->texts.size(); ++i)
          send_sse(*c, openai_final_chunk_json(c->cmpl_id, c->created, c->model, e, int32_t(i)));
        if (c->include_usage) send_sse(*c, openai_usage_chunk_json(c->cmpl_id, c->created, c->model, e));
        end_sse(*c);
      } else {
        c->finished = true;
        for (auto& t : c->texts) t.insert(0, c->echo);
        respond(http::status::ok,
                openai_completion_json(c->cmpl_id, c->created, c->model, c->texts, e, c->choice_logprobs()),
                "application/json", c->keep_alive, true);
      }
      break;
    case event::kind::error:
      if (c->stream && c->headers_sent) {
        send_sse(*c, openai_error_json(e.code, e.message));
        end_sse(*c);
      } else {
        c->finished = true;
        respond(http::status(http_status(e.code)), openai_error_json(e.code, e.message, e.retry_after_ms),
                "application/json", c->keep_alive, true, e.retry_after_ms);
      }
      break;
  }
}

// The chat flavour of on_event: the role in the first delta, no empty content deltas.
template <class Stream>
void http_session<Stream>::on_chat_event(completion_state& c, const event& e) {
  switch (e.type) {
    case event::kind::accepted:
      if (c.stream)
        for (size_t i = 0; i < c.texts.size(); ++i)
          send_sse(c, openai_chat_chunk_json(c.cmpl_id, c.created, c.model, true, "", nullptr, {}, int32_t(i)));
      break;
    case event::kind::token:
      if (!c.stream) {
        c.add_token(e);
      } else if (!e.text.empty() || e.n_top >= 0) {  // every token's logprobs go out
        send_sse(c, openai_chat_chunk_json(c.cmpl_id, c.created, c.model, false, e.text, nullptr,
                                           c.chunk_logprobs(e), e.choice));
      }
      break;
    case event::kind::done:
      if (c.stream) {
        for (size_t i = 0; i < c.texts.size(); ++i)
          send_sse(c, openai_chat_final_chunk_json(c.cmpl_id, c.created, c.model, e, int32_t(i)));
        if (c.include_usage) send_sse(c, openai_chat_usage_chunk_json(c.cmpl_id, c.created, c.model, e));
        end_sse(c);
      } else {
        c.finished = true;
        respond(http::status::ok, openai_chat_json(c.cmpl_id, c.created, c.model, c.texts, e, c.choice_logprobs()),
                "application/json", c.keep_alive, true);
      }
      break;
    case event::kind::error:
      if (c.stream && c.headers_sent) {
        send_sse(c, openai_error_json(e.code, e.message));
        end_sse(c);
      } else {
        c.finished = true;
        respond(http::status(http_status(e.code)), openai_error_json(e.code, e.message, e.retry_after_ms),
                "application/json", c.keep_alive, true, e.retry_after_ms);
      }
      break;
  }
}

// The client's rate limit (server.rate_limit_*) for one generation request: when it is
// over, answers 429 with Retry-After and retry_after_ms, and says so.
template <class Stream>
bool http_session<Stream>::refused_by_rate_limit(std::string_view api, service* svc, bool keep) {
  const int64_t wait = st_.rate_limit(client_);
  if (wait == 0) return false;
  spdlog::info("request id=null conn={} client={} api={} outcome=rate_limited message=\"client rate limit\" "
               "retry_after_ms={}",
               conn_, client_, api, wait);
  count_rejection(svc, error_code::rate_limited);
  respond(http::status::too_many_requests,
          openai_error_json(error_code::rate_limited, st_.rate_limit_message(wait), wait), "application/json", keep,
          false, wait);
  return true;
}

template <class Stream>
void http_session<Stream>::start_completion() {
  auto& req = parser_->get();
  bool keep = req.keep_alive();
  service* svc = st_.current();
  if (!svc) return unavailable(keep);
  auto parsed = parse_completion_request(req.body(), st_.limits);
  if (auto* bad = std::get_if<invalid_request>(&parsed)) {
    spdlog::info("request id=null conn={} api=openai outcome=invalid_request message=\"{}\"", conn_, q(bad->message));
    count_rejection(svc, error_code::invalid_request);
    return respond(http::status::bad_request, openai_error_json(error_code::invalid_request, bad->message),
                   "application/json", keep);
  }
  if (refused_by_rate_limit("openai", svc, keep)) return;
  auto& cmd = std::get<completion_command>(parsed);
  if (!st_.serves(cmd.model)) {
    std::string msg = model_not_found_message(cmd.model, st_.model_names);
    spdlog::info("request id=null request_id={} conn={} api=openai outcome=invalid_request message=\"{}\"", req_id_,
                 conn_, q(msg));
    count_rejection(svc, error_code::invalid_request);
    return respond(http::status::not_found, model_not_found_json(msg), "application/json", keep);
  }
  // The deadline: the body's timeout_ms, else the X-Request-Timeout header (milliseconds),
  // else queue.default_timeout_ms.
  if (auto h = req.find("X-Request-Timeout"); h != req.end() && cmd.request.timeout_ms == 0) {
    std::string_view v = sv(h->value());
    int64_t ms = 0;
    bool ok = !v.empty() && v.size() <= 9;
    for (char ch : v) ok = ok && ch >= '0' && ch <= '9', ms = ms * 10 + (ch - '0');
    if (!ok || ms > 24LL * 3600 * 1000) {
      count_rejection(svc, error_code::invalid_request);
      return respond(http::status::bad_request,
                     openai_error_json(error_code::invalid_request,
                                       "X-Request-Timeout: must be milliseconds, 0..86400000"),
                     "application/json", keep);
    }
    cmd.request.timeout_ms = ms;
  }
  if (!cmd.seeded) cmd.request.sampling.seed = std::random_device{}() | (uint64_t(std::random_device{}()) << 32);
  auto c = std::make_shared<completion_state>();
  c->tok = &svc->tok();
  if (cmd.echo)
    c->echo = cmd.request.prompt_tokens.empty() ? cmd.request.prompt : svc->tok().decode(cmd.request.prompt_tokens);
  c->echo_lp = cmd.request.prompt_logprobs;
  c->set_choices(cmd.request.n, false);
  c->stream = cmd.stream;
  c->include_usage = cmd.include_usage;
  c->keep_alive = keep;
  c->chunked = req.version() >= 11;
  c->cmpl_id = "cmpl-" + random_id();
  c->request_id = req_id_;
  c->model = cmd.model.empty() ? st_.model_name : cmd.model;
  c->created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
                   .count();
  cur_ = c;
  // A generation may take long: no read timeout until it ends. A disconnect is
  // noticed by the watch read below (plain TCP) or by a failing write.
  beast::get_lowest_layer(stream_).expires_never();
  c->rid = svc->submit(std::move(cmd.request), post_to(this->shared_from_this(), c));
  if constexpr (!is_tls<Stream>) start_watch();
}

// POST /v1/chat/completions: parsed here, the template rendered and tokenized on the
// render pool, then submitted back on this strand (on_chat_rendered). The connection
// reads nothing meanwhile, as during any completion.
template <class Stream>
void http_session<Stream>::start_chat() {
  auto& req = parser_->get();
  bool keep = req.keep_alive();
  service* svc = st_.current();
  if (!svc) return unavailable(keep);
  auto parsed = parse_chat_request(req.body(), st_.limits);
  if (auto* cc = std::get_if<chat_command>(&parsed); cc && !st_.serves(cc->model)) {
    std::string msg = model_not_found_message(cc->model, st_.model_names);
    spdlog::info("request id=null request_id={} conn={} api=chat outcome=invalid_request message=\"{}\"", req_id_,
                 conn_, q(msg));
    count_rejection(svc, error_code::invalid_request);
    return respond(http::status::not_found, model_not_found_json(msg), "application/json", keep);
  }
  std::string bad_msg;
  if (auto* bad = std::get_if<invalid_request>(&parsed)) bad_msg = bad->message;
  else if (!st_.chat) bad_msg = no_chat_template_message();
  if (!bad_msg.empty()) {
    spdlog::info("request id=null conn={} api=chat outcome=invalid_request message=\"{}\"", conn_, q(bad_msg));
    count_rejection(svc, error_code::invalid_request);
    return respond(http::status::bad_request, openai_error_json(error_code::invalid_request, bad_msg),
                   "application/json", keep);
  }
  if (refused_by_rate_limit("chat", svc, keep)) return;
  auto cmd = std::make_shared<chat_command>(std::move(std::get<chat_command>(parsed)));
  if (!cmd->seeded) cmd->request.sampling.seed = std::random_device{}() | (uint64_t(std::random_device{}()) << 32);
  auto c = std::make_shared<completion_state>();
  c->chat = true;
  c->set_choices(cmd->request.n, true);
  c->tok = &svc->tok();
  c->stream = cmd->stream;
  c->include_usage = cmd->include_usage;
  c->keep_alive = keep;
  c->chunked = req.version() >= 11;
  c->cmpl_id = "chatcmpl-" + random_id();
  c->request_id = req_id_;
  c->model = cmd->model.empty() ? st_.model_name : cmd->model;
  c->created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
                   .count();
  cur_ = c;
  beast::get_lowest_layer(stream_).expires_never();
  auto tpl = st_.chat;
  const tokenizer* tok = &svc->tok();
  asio::post(*st_.blocking, [self = this->shared_from_this(), c, cmd, tpl, tok]() {
    auto ids = tpl->render_tokens(cmd->chat, *tok, false);
    asio::post(self->executor(), [self, c, cmd, ids = std::move(ids)]() mutable {
      self->on_chat_rendered(c, std::move(cmd->request), std::move(ids));
    });
  });
}

template <class Stream>
void http_session<Stream>::on_chat_rendered(const std::shared_ptr<completion_state>& c, generate_request r,
                      result<std::vector<int32_t>> ids) {
  if (c != cur_) return;
  service* svc = st_.current();
  std::string why;
  if (!ids) why = ids.error().message;
  else if (ids.value().empty()) why = "messages: the chat template made an empty prompt";
  else if (!prompt_fits(int64_t(ids.value().size()), st_.limits.n_ctx))
    why = prompt_too_long_message("messages", int64_t(ids.value().size()), st_.limits.n_ctx);
  if (!svc) why = "the service is shutting down";
  if (!why.empty()) {
    spdlog::info("request id={} conn={} api=chat outcome=invalid_request message=\"{}\"", c->cmpl_id, conn_, q(why));
    count_rejection(svc, error_code::invalid_request);
    c->finished = true;
    return respond(http::status::bad_request, openai_error_json(error_code::invalid_request, why),
                   "application/json", c->keep_alive, true);
  }
  r.prompt_tokens = std::move(ids.value());
  c->rid = svc->submit(std::move(r), post_to(this->shared_from_this(), c));
  if constexpr (!is_tls<Stream>) start_watch();
}

}  // namespace infer::net::detail
