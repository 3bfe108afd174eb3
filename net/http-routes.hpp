// http-routes: the route table of http_session and the small endpoints (health, readiness,
// version, metrics, status, models, tokenize). The OpenAI completions are in
// openai-handlers.hpp. Adding an endpoint: a row in routes() and a handler declared in
// http_session (docs/architecture.md). Internal to net/.
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include "net/http-session.hpp"
#include "net/metrics-text.hpp"
#include "net/status-json.hpp"
#include "web/static-files.hpp"

namespace infer::net::detail {

// Who may call a route: anyone (probes, the version), anyone unless
// server.metrics_require_key (/metrics, open by default as in vLLM: Prometheus scrapes
// without a key and no request content is in it), or only with the API key.
enum class route_access : uint8_t { open, metrics, key };

// "%2F" and the like decoded (a model id in a path); anything else kept as it is.
inline std::string percent_decode(std::string_view s) {
  std::string out;
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    const char l = char(c | 32);
    return l >= 'a' && l <= 'f' ? l - 'a' + 10 : -1;
  };
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && hex(s[i + 1]) >= 0 && hex(s[i + 2]) >= 0) {
      out.push_back(char(hex(s[i + 1]) * 16 + hex(s[i + 2])));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

inline constexpr uint8_t route_get = 1, route_post = 2, route_any = 0xff;

template <class Stream>
struct http_session<Stream>::route {
  uint8_t methods;        // route_get | route_post, or route_any
  std::string_view path;  // exact, or with `prefix` the start of a longer path
  bool prefix;
  route_access access;
  void (http_session::*handler)();

  bool matches(std::string_view p) const {
    return prefix ? p.size() > path.size() && p.substr(0, path.size()) == path : p == path;
  }
};

template <class Stream>
const std::vector<typename http_session<Stream>::route>& http_session<Stream>::routes() {
  using S = http_session;
  using A = route_access;
  static const std::vector<route> table = {
      {route_get, "/healthz", false, A::open, &S::on_healthz},
      // /readyz, and /health (vLLM, TGI) and /ping (SageMaker; GET or POST) for probes written
      // for those: one truth, whether a request could be served now.
      {route_get, "/readyz", false, A::open, &S::on_ready},
      {route_get, "/health", false, A::open, &S::on_ready},
      {route_get | route_post, "/ping", false, A::open, &S::on_ready},
      {route_get, "/version", false, A::open, &S::on_version},
      {route_get, "/metrics", false, A::metrics, &S::on_metrics},
      {route_get, "/v1/status", false, A::key, &S::on_status},  // the supervision tree
      {route_get, "/v1/models", false, A::key, &S::on_models},
      {route_get, "/v1/models/", true, A::key, &S::on_model},
      {route_post, "/v1/completions", false, A::key, &S::start_completion},
      {route_post, "/v1/chat/completions", false, A::key, &S::start_chat},
      {route_post, "/tokenize", false, A::key, &S::on_tokenize},
      {route_post, "/detokenize", false, A::key, &S::on_detokenize},
      {route_any, "/v1/stream", false, A::key, &S::on_stream_only},
  };
  return table;
}

// Open routes answer first; then the page of web/ (public like the probes: it holds no data,
// and a browser navigating to it cannot send a bearer token; what it then fetches is checked
// as usual); then the key; then a keyed route, 405 for a path of the table asked with
// another method, 404 for any other path.
template <class Stream>
void http_session<Stream>::handle_request() {
  auto& req = parser_->get();
  std::string_view path = path_of(req.target());
  bool keep = req.keep_alive();
  req_id_ = request_id_of(req.find("X-Request-Id") != req.end() ? sv(req.find("X-Request-Id")->value()) : "");
  const uint8_t method = req.method() == http::verb::get ? route_get : req.method() == http::verb::post ? route_post : 0;

  const route* hit = nullptr;
  bool known_path = false;
  for (const route& r : routes()) {
    if (!r.matches(path)) continue;
    known_path = true;
    if (r.methods & method) {
      hit = &r;
      break;
    }
  }
  const bool open = hit && (hit->access == route_access::open ||
                            (hit->access == route_access::metrics && !st_.cfg.metrics_require_key));
  if (open) return (this->*hit->handler)();
  if (method == route_get)
    if (const static_file* f = find_static_file(path))
      return respond(http::status::ok, std::string(f->body), std::string(f->content_type).c_str(), keep);
  if (!authorized(st_.cfg.api_key, req)) return unauthorized(keep);
  if (hit) return (this->*hit->handler)();
  if (known_path)
    return respond(http::status::method_not_allowed, plain_error("method not allowed"), "application/json", keep);
  return respond(http::status::not_found, plain_error(fmt::format("no route for {}", path)), "application/json", keep);
}

template <class Stream>
void http_session<Stream>::unavailable(bool keep) {
  respond(http::status::service_unavailable, openai_error_json(error_code::unavailable, "the model is not loaded yet"),
          "application/json", keep);
}

template <class Stream>
void http_session<Stream>::on_healthz() {
  respond(http::status::ok, R"({"status":"ok"})", "application/json", parser_->get().keep_alive());
}

template <class Stream>
void http_session<Stream>::on_ready() {
  const bool keep = parser_->get().keep_alive();
  service* svc = st_.current();
  const std::string why = svc ? svc->not_ready_reason() : std::string("loading");
  if (why.empty()) return respond(http::status::ok, R"({"status":"ready"})", "application/json", keep);
  std::string body = R"({"status":)";
  append_json_string(body, why);
  body += "}";
  respond(http::status::service_unavailable, std::move(body), "application/json", keep);
}

template <class Stream>
void http_session<Stream>::on_version() {
  respond(http::status::ok, fmt::format(R"({{"version":"{}"}})", INFER_VERSION), "application/json",
          parser_->get().keep_alive());
}

template <class Stream>
void http_session<Stream>::on_metrics() {
  respond(http::status::ok, metrics_text(st_, st_.current()), "text/plain; version=0.0.4",
          parser_->get().keep_alive());
}

template <class Stream>
void http_session<Stream>::on_status() {
  const bool keep = parser_->get().keep_alive();
  service* svc = st_.current();
  if (!svc) return respond(http::status::service_unavailable, R"({"status":"loading"})", "application/json", keep);
  respond(http::status::ok, status_json(svc->status()), "application/json", keep);
}

template <class Stream>
void http_session<Stream>::on_models() {
  respond(http::status::ok, R"({"object":"list","data":[)" + model_json(st_.model_name, st_.current()) + "]}",
          "application/json", parser_->get().keep_alive());
}

template <class Stream>
void http_session<Stream>::on_model() {
  const bool keep = parser_->get().keep_alive();
  // Names with a slash (a path as given, org/name) arrive percent-encoded or not: both work.
  std::string id = percent_decode(path_of(parser_->get().target()).substr(11));
  if (id.empty() || !st_.serves(id))
    return respond(http::status::not_found, model_not_found_json(model_not_found_message(id, st_.model_names)),
                   "application/json", keep);
  respond(http::status::ok, model_json(id, st_.current()), "application/json", keep);
}

template <class Stream>
void http_session<Stream>::on_stream_only() {
  respond(http::status::upgrade_required, plain_error("/v1/stream speaks WebSocket only"), "application/json",
          parser_->get().keep_alive());
}

template <class Stream>
std::string http_session<Stream>::model_json(std::string_view id, service* svc) const {
  std::string body = R"({"id":)";
  append_json_string(body, id);
  body += R"(,"object":"model","created":0,"owned_by":"infer","root":)";
  append_json_string(body, st_.cfg.model);
  body += R"(,"parent":null,"max_model_len":)";
  const int64_t n_ctx = svc ? svc->n_ctx() : st_.cfg.max_model_len;
  body += n_ctx > 0 ? std::to_string(n_ctx) : std::string("null");
  body += "}";
  return body;
}

template <class Stream>
void http_session<Stream>::on_tokenize() {
  bool keep = parser_->get().keep_alive();
  service* svc_p = st_.current();
  if (!svc_p) return unavailable(keep);
  service& svc = *svc_p;
  auto r = parse_tokenize_command(parser_->get().body());
  if (auto* bad = std::get_if<invalid_request>(&r))
    return respond(http::status::bad_request, openai_error_json(error_code::invalid_request, bad->message),
                   "application/json", keep);
  auto& cmd = std::get<tokenize_command>(r);
  if (!cmd.chat) {
    encode_options o;
    o.add_special_tokens = cmd.add_special_tokens;
    // Off the io thread: a megabyte of text takes a while to encode.
    asio::post(*st_.blocking, [self = this->shared_from_this(), &svc, keep, o, text = std::move(cmd.prompt)] {
      std::string body = tokenize_response_json(svc.tok().encode(text, o), svc.n_ctx());
      asio::post(self->executor(), [self, keep, body = std::move(body)]() mutable {
        self->respond(http::status::ok, std::move(body), "application/json", keep);
      });
    });
    return;
  }
  // The exact prompt a chat request would get: rendered on the blocking pool.
  auto tpl = st_.chat;
  if (!tpl)
    return respond(http::status::bad_request, openai_error_json(error_code::invalid_request, no_chat_template_message()),
                   "application/json", keep);
  beast::get_lowest_layer(stream_).expires_never();
  auto job = std::make_shared<tokenize_command>(std::move(cmd));
  const tokenizer* tok = &svc.tok();
  const int32_t n_ctx = svc.n_ctx();
  asio::post(*st_.blocking, [self = this->shared_from_this(), job, tpl, tok, keep, n_ctx]() {
    auto ids = tpl->render_tokens(*job->chat, *tok, job->add_special_tokens);
    std::string body = ids ? tokenize_response_json(ids.value(), n_ctx)
                           : openai_error_json(error_code::invalid_request, ids.error().message);
    const bool ok = ids.has_value();
    asio::post(self->executor(), [self, body = std::move(body), ok, keep]() mutable {
      self->respond(ok ? http::status::ok : http::status::bad_request, std::move(body), "application/json", keep);
    });
  });
}

template <class Stream>
void http_session<Stream>::on_detokenize() {
  bool keep = parser_->get().keep_alive();
  service* svc_p = st_.current();
  if (!svc_p) return unavailable(keep);
  service& svc = *svc_p;
  auto r = parse_detokenize_request(parser_->get().body(), svc.tok().n_vocab());
  if (auto* bad = std::get_if<invalid_request>(&r))
    return respond(http::status::bad_request, openai_error_json(error_code::invalid_request, bad->message),
                   "application/json", keep);
  const auto& ids = std::get<std::vector<int32_t>>(r);
  respond(http::status::ok, detokenize_response_json(svc.tok().decode(std::span<const int32_t>(ids))),
          "application/json", keep);
}


}  // namespace infer::net::detail
