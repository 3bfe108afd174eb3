// http_session: one HTTP/1.1 connection: reads requests with the bounds of docs/limits.md
// (head within header_timeout_ms, bounded buffers, 100-continue), routes each through the
// route table (http-routes.hpp), runs at most one completion at a time (openai-handlers.hpp;
// no pipelining meanwhile) while watching for the client hanging up, streams SSE through a
// bounded queue, and upgrades /v1/stream to a ws_session.
// A template over the byte stream (plain TCP or TLS); internal to net/.
#pragma once
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "net/auth.hpp"
#include "net/request-log.hpp"
#include "net/request-parser.hpp"
#include "net/server-state.hpp"
#include "net/sse-writer.hpp"
#include "net/ws-session.hpp"

namespace infer::net::detail {

template <class Stream>
class http_session : public std::enable_shared_from_this<http_session<Stream>> {
 public:
  http_session(Stream&& s, server_state& st, connection_slot slot, uint64_t conn, std::string client)
      : stream_(std::move(s)), buffer_(st.max_buffered_bytes()), st_(st), slot_(std::move(slot)), conn_(conn),
        client_(std::move(client)) {}

  auto executor() { return stream_.get_executor(); }

  void run() {
    if constexpr (is_tls<Stream>) {
      beast::get_lowest_layer(stream_).expires_after(std::chrono::seconds(30));
      stream_.async_handshake(ssl::stream_base::server,
                              beast::bind_front_handler(&http_session::on_handshake, this->shared_from_this()));
    } else {
      asio::dispatch(stream_.get_executor(),
                     beast::bind_front_handler(&http_session::do_read, this->shared_from_this()));
    }
  }

  // One OpenAI completion in progress on this connection (no pipelining meanwhile).
  struct completion_state {
    uint64_t rid = 0;
    bool chat = false;  // /v1/chat/completions: chat.completion objects
    bool stream = false, include_usage = false, keep_alive = true, chunked = true;
    bool headers_sent = false, finished = false, client_gone = false;
    std::string cmpl_id, model, request_id;
    int64_t created = 0;
    std::string echo;                   // completions' echo: the prompt text, sent first (each choice)
    bool echo_lp = false;               // echo with logprobs: the echo waits for the prompt's logprobs
    const tokenizer* tok = nullptr;     // the tokens' bytes for logprobs
    // Per choice (n of them): its text, and its logprobs, of the whole choice (non-streamed)
    // or of one chunk.
    std::vector<std::string> texts;
    std::vector<logprobs_builder> lps;

    void set_choices(int32_t n, bool chat_lp) {
      texts.assign(size_t(std::max(n, 1)), {});
      lps.assign(size_t(std::max(n, 1)), logprobs_builder{});
      for (auto& l : lps) {
        l.chat = chat_lp;
        l.offset = echo_lp ? 0 : echo.size();
      }
    }
    logprobs_builder::bytes_fn bytes() const {
      return [t = tok](int32_t id) { return t ? t->token_bytes(id) : std::string_view(); };
    }
    logprobs_builder& lp_of(const event& e) { return lps[size_t(e.choice) < lps.size() ? size_t(e.choice) : 0]; }
    // The chunk's logprobs: this token's only (the builder keeps the running text offset).
    std::string chunk_logprobs(const event& e) {
      if (e.n_top < 0) return {};
      auto& lp = lp_of(e);
      lp.clear_tokens();
      lp.add(e, bytes());
      return lp.json();
    }
    void add_token(const event& e) {
      texts[size_t(e.choice) < texts.size() ? size_t(e.choice) : 0] += e.text;
      lp_of(e).add(e, bytes());
    }
    // The prompt's logprobs came (with the first token): every choice's start with them; the
    // completion's offsets then count from the end of the echoed text.
    void add_prompt(const event& e) {
      for (auto& l : lps) {
        l.add_prompt(e, bytes());
        l.offset = echo.size();
      }
    }
    std::vector<std::string> choice_logprobs() const {
      std::vector<std::string> out;
      for (const auto& l : lps) out.push_back(l.empty() ? std::string() : l.json());
      return out;
    }
  };

  // The service's events of the current completion (post_to): streamed as SSE chunks or
  // gathered into one response (openai-handlers.hpp).
  void on_event(const std::shared_ptr<completion_state>& c, const event& e);
  // The chat flavour of on_event: the role in the first delta, no empty content deltas.
  void on_chat_event(completion_state& c, const event& e);

 private:
  // ---- endpoints: the route table and the small ones in http-routes.hpp, the OpenAI
  // completions in openai-handlers.hpp. Each answers the request parser_ holds.
  struct route;
  static const std::vector<route>& routes();
  void handle_request();  // routes the request: 401, 404, 405 decided here
  void unavailable(bool keep);  // 503: no model loaded yet
  void on_healthz();
  void on_ready();  // /readyz, /health, /ping
  void on_version();
  void on_metrics();
  void on_status();
  void on_models();
  void on_model();  // /v1/models/{id}
  void on_tokenize();
  void on_detokenize();
  void on_stream_only();  // /v1/stream without an upgrade
  void start_completion();
  void start_chat();
  bool refused_by_rate_limit(std::string_view api, service* svc, bool keep);
  void on_chat_rendered(const std::shared_ptr<completion_state>& c, generate_request r,
                        result<std::vector<int32_t>> ids);
  // One entry of /v1/models, as vLLM's (max_model_len: the context served; root: the model
  // as loaded).
  std::string model_json(std::string_view id, service* svc) const;
  void on_handshake(beast::error_code ec) {
    if (ec) {
      spdlog::debug("conn={} TLS handshake failed: {}", conn_, ec.message());
      return;
    }
    do_read();
  }

  void do_read() {
    parser_.emplace(uint64_t(std::max<int64_t>(st_.cfg.max_header_bytes, 1)), uint64_t(st_.cfg.max_frame_bytes));
    if (heads_read_ > 0 && buffer_.size() == 0) {
      // A keep-alive connection may wait idle_timeout_ms for its next request; the head's own
      // clock (header_timeout_ms) starts with that request's first byte.
      beast::get_lowest_layer(stream_).expires_after(st_.idle());
      stream_.async_read_some(buffer_.prepare(4096),
                              beast::bind_front_handler(&http_session::on_first_byte, this->shared_from_this()));
      return;
    }
    read_head();
  }

  void on_first_byte(beast::error_code ec, size_t n) {
    if (ec) return on_read(ec == asio::error::eof ? beast::error_code(http::error::end_of_stream) : ec, 0);
    buffer_.commit(n);
    read_head();
  }

  // The whole head within header_timeout_ms, however slowly it trickles in (slowloris).
  void read_head() {
    beast::get_lowest_layer(stream_).expires_after(st_.header_timeout());
    http::async_read_header(stream_, buffer_, *parser_,
                            beast::bind_front_handler(&http_session::on_header, this->shared_from_this()));
  }

  // Header first, so that a client waiting for "100 Continue" (curl, for bodies over
  // 1 KiB) gets it at once instead of sending its body after a pause.
  void on_header(beast::error_code ec, size_t n) {
    if (ec == beast::error::timeout)
      spdlog::info("conn={} client={} request head incomplete after server.header_timeout_ms ({} ms): closing", conn_,
                   client_, st_.cfg.header_timeout_ms);
    if (ec) return on_read(ec, n);
    ++heads_read_;
    beast::get_lowest_layer(stream_).expires_after(st_.idle());  // the body: the idle time again
    auto& req = parser_->get();
    auto expect = req.find(http::field::expect);
    if (!parser_->is_done() && expect != req.end() && beast::iequals(expect->value(), "100-continue")) {
      static const std::string cont = "HTTP/1.1 100 Continue\r\n\r\n";
      return asio::async_write(stream_, asio::buffer(cont),
                               [self = this->shared_from_this()](beast::error_code ec, size_t n) {
                                 if (ec) return self->on_read(ec, n);
                                 self->read_body();
                               });
    }
    if (parser_->is_done()) return on_read(ec, n);
    read_body();
  }

  void read_body() {
    http::async_read(stream_, buffer_, *parser_,
                     beast::bind_front_handler(&http_session::on_read, this->shared_from_this()));
  }

  void on_read(beast::error_code ec, size_t) {
    if (ec == http::error::end_of_stream) return do_close();
    // buffer_overflow: a request head or a trailer section longer than the connection buffers.
    if (ec == http::error::header_limit || ec == http::error::buffer_overflow)
      return respond(http::status::request_header_fields_too_large,
                     plain_error(fmt::format("request header fields too large: the request head, and the header and "
                                             "trailer fields together, may take {} bytes (server.max_header_bytes), "
                                             "one field at most 65533",
                                             st_.cfg.max_header_bytes)),
                     "application/json", false);
    if (ec == http::error::body_limit)
      return respond(http::status::payload_too_large,
                     plain_error(fmt::format("request body too large: at most {} bytes (server.max_frame_bytes; "
                                             "chunked: chunk data and extensions together)",
                                             st_.cfg.max_frame_bytes)),
                     "application/json", false);
    if (ec) {
      if (ec != beast::error::timeout && ec != asio::error::connection_reset)
        spdlog::debug("conn={} http read: {}", conn_, ec.message());
      // A parse error (bad method, target, header...) gets a 400; I/O errors just end.
      if (ec.category() == http::make_error_code(http::error::bad_target).category() &&
          ec != http::error::partial_message)
        return respond(http::status::bad_request, plain_error("malformed HTTP request"), "application/json", false);
      return;
    }
    auto& req = parser_->get();
    if (websocket::is_upgrade(req)) return upgrade();
    handle_request();
  }

  static std::string plain_error(std::string_view msg) { return openai_error_json(error_code::invalid_request, msg); }

  void upgrade() {
    auto& req = parser_->get();
    if (path_of(req.target()) != "/v1/stream")
      return respond(http::status::not_found, plain_error("no WebSocket endpoint here; use /v1/stream"),
                     "application/json", false);
    ws_offer offer = read_ws_offer(st_.cfg.api_key, req);
    if (!offer.key_ok && !authorized(st_.cfg.api_key, req)) return unauthorized(false);
    // The WebSocket stream applies its own handshake and idle timeouts.
    beast::get_lowest_layer(stream_).expires_never();
    std::make_shared<ws_session<Stream>>(std::move(stream_), st_, std::move(slot_), conn_, std::move(client_))
        ->run(parser_->release(), std::move(offer.selected));
  }

  void unauthorized(bool keep_alive) {
    respond(http::status::unauthorized,
            R"({"error":{"message":"missing or invalid bearer token","type":"authentication_error","param":null,"code":"unauthorized"}})",
            "application/json", keep_alive);
  }

  // Reads while a completion runs, so a client that hangs up cancels its request.
  // Plain TCP only: a TLS read cannot be abandoned midway without breaking the stream.
  void start_watch() {
    // A client that sent that much ahead is not watched (prepare would throw): TCP holds the rest.
    const size_t room = std::min<size_t>(4096, buffer_.max_size() - buffer_.size());
    if (room == 0 || peer_half_closed_) return;
    watching_ = true;
    stream_.async_read_some(buffer_.prepare(room),
                            beast::bind_front_handler(&http_session::on_watch, this->shared_from_this()));
  }

  void on_watch(beast::error_code ec, size_t n) {
    watching_ = false;
    if (!ec) buffer_.commit(n);  // the client's next request: parsed later
    if (ec == asio::error::eof && cur_ && !resume_after_watch_ && probe_after_eof()) return;
    if (ec == asio::error::eof && cur_ && resume_after_watch_) {
      // The answer is out and the client has nothing more to send: done.
      cur_->keep_alive = false;
      peer_half_closed_ = true;
      resume_after_watch_ = false;
      return do_read();
    }
    if (ec && ec != asio::error::operation_aborted) {
      if (cur_ && !cur_->client_gone) {
        spdlog::info("request id={} conn={} rid={} client disconnected: cancelling", cur_->cmpl_id, conn_, cur_->rid);
        cur_->client_gone = true;
        if (service* svc = st_.current()) svc->cancel(cur_->rid);
      }
      resume_after_watch_ = false;
      return;
    }
    if (resume_after_watch_) {
      resume_after_watch_ = false;
      return do_read();
    }
    // The completion still runs (its end resumes reading): the client sent bytes ahead (its
    // next request, kept in buffer_), and may hang up after them, so watch on.
    if (!ec && cur_ && !cur_->client_gone) start_watch();
  }

  // End of file while a completion runs: the client either hung up (close) or only ended its
  // side (shutdown(SHUT_WR) after the request, which HTTP allows: it still wants the answer).
  // Only a write tells them apart: to a closed socket the peer answers with a reset. So send
  // what the client ignores (an interim 100 response before the answer, an SSE comment inside
  // the stream), then look again shortly: a reset (a pending socket error: reads keep
  // saying end of file once it came) cancels; none means a half-close, and the answer is
  // sent, the connection closed after it. False: cannot probe (HTTP/1.0 takes no interim
  // responses): taken as a hang-up.
  bool probe_after_eof() {
    auto c = cur_;
    std::string probe;
    if (c->headers_sent) probe = sse_writer{c->chunked}.comment();
    else if (c->chunked) probe = "HTTP/1.1 100 Continue\r\n\r\n";  // chunked: an HTTP/1.1 request
    else return false;
    peer_half_closed_ = true;
    c->keep_alive = false;
    if (!writing_ && !res_) {
      // Nothing of ours in flight, so the probe cannot interleave with another write; never
      // blocking: a full send buffer skips it (the writes that filled it will tell).
      beast::error_code ec;
      auto& sock = beast::get_lowest_layer(stream_).socket();
      sock.non_blocking(true, ec);
      if (!ec) sock.send(asio::buffer(probe), 0, ec);
      if (ec) return ec != asio::error::would_block ? false : true;
    }
    probe_timer_.expires_after(std::chrono::milliseconds(100));
    probe_timer_.async_wait([self = this->shared_from_this(), c](beast::error_code ec) {
      if (ec || self->cur_ != c || c->client_gone) return;
      int err = 0;
      socklen_t len = sizeof err;
      ::getsockopt(beast::get_lowest_layer(self->stream_).socket().native_handle(), SOL_SOCKET, SO_ERROR, &err, &len);
      if (err == 0) return;  // half-closed, still reading: it gets its answer
      self->on_watch(beast::error_code(err, boost::system::system_category()), 0);
    });
    return true;
  }

  void send_sse_headers(completion_state& c) {
    c.headers_sent = true;
    queue_raw(sse_writer{c.chunked}.head(c.request_id, c.keep_alive));
    if (!c.chunked) c.keep_alive = false;
  }

  void send_sse(completion_state& c, std::string_view payload) {
    if (!c.headers_sent) send_sse_headers(c);
    queue_raw(sse_writer{c.chunked}.event(payload));
  }

  void end_sse(completion_state& c) {
    if (!c.headers_sent) send_sse_headers(c);
    queue_raw(sse_writer{c.chunked}.done());
    c.finished = true;
    if (!writing_) finish_exchange();
  }

  void queue_raw(std::string s) {
    if (pending_bytes_ + s.size() > st_.max_pending_bytes()) {
      // The client does not read its stream: cancel the request (its KV blocks go back
      // now) and close; an SSE stream has no way to say why that the client would read.
      spdlog::warn("conn={} client={} too slow ({} bytes pending, limit {}): cancelling, closing", conn_, client_,
                   pending_bytes_ + s.size(), st_.max_pending_bytes());
      st_.slow_clients.fetch_add(1, std::memory_order_relaxed);
      if (cur_ && !cur_->client_gone) {
        cur_->client_gone = true;
        if (service* svc = st_.current()) svc->cancel(cur_->rid);
      }
      // The chunks being written stay alive until their handler runs (with the error of the close).
      out_.erase(out_.begin() + std::ptrdiff_t(writing_ ? in_flight_ : 0), out_.end());
      pending_bytes_ = 0;
      for (const auto& o : out_) pending_bytes_ += o.size();
      beast::error_code ignored;
      beast::get_lowest_layer(stream_).socket().close(ignored);
      return;
    }
    pending_bytes_ += s.size();
    out_.push_back(std::move(s));
    if (!writing_) do_write_raw();
  }

  // Everything queued goes in one gathered write: the events that came while the last write
  // was out leave together (one send, not one per event).
  void do_write_raw() {
    writing_ = true;
    in_flight_ = out_.size();
    wbufs_.clear();
    for (const auto& o : out_) wbufs_.push_back(asio::buffer(o));
    asio::async_write(stream_, wbufs_,
                      beast::bind_front_handler(&http_session::on_write_raw, this->shared_from_this()));
  }

  void on_write_raw(beast::error_code ec, size_t) {
    writing_ = false;
    if (ec) {
      spdlog::debug("conn={} write failed: {}", conn_, ec.message());
      out_.clear();
      in_flight_ = 0;
      pending_bytes_ = 0;
      if (cur_ && !cur_->client_gone) {
        cur_->client_gone = true;
        if (service* svc = st_.current()) svc->cancel(cur_->rid);
      }
      return;
    }
    for (; in_flight_ > 0; --in_flight_) {
      pending_bytes_ -= out_.front().size();
      out_.pop_front();
    }
    if (!out_.empty()) return do_write_raw();
    if (cur_ && cur_->finished) finish_exchange();
  }

  // The completion's response is out: back to reading requests.
  void finish_exchange() {
    bool keep = cur_ && cur_->keep_alive;
    cur_.reset();
    if (!keep) return do_close();
    beast::get_lowest_layer(stream_).expires_after(st_.idle());
    if (watching_) {
      resume_after_watch_ = true;
      beast::get_lowest_layer(stream_).socket().cancel();
      return;
    }
    do_read();
  }

  void respond(http::status status, std::string body, const char* content_type, bool keep_alive,
               bool ends_completion = false, int64_t retry_after_ms = 0) {
    auto res = std::make_shared<http::response<http::string_body>>(status, 11);
    res->set(http::field::server, server_name);
    res->set(http::field::content_type, content_type);
    if (status == http::status::unauthorized) res->set(http::field::www_authenticate, "Bearer");
    if (retry_after_ms > 0) res->set(http::field::retry_after, std::to_string((retry_after_ms + 999) / 1000));
    // Every response carries its request's id; one refused before its head was read gets a
    // fresh one.
    res->set("X-Request-Id", req_id_.empty() ? random_id() : std::exchange(req_id_, std::string()));
    res->keep_alive(keep_alive);
    res->body() = std::move(body);
    res->prepare_payload();
    res_ = res;
    http::async_write(stream_, *res,
                      beast::bind_front_handler(&http_session::on_respond, this->shared_from_this(),
                                                res->need_eof(), ends_completion));
  }

  void on_respond(bool close, bool ends_completion, beast::error_code ec, size_t) {
    res_.reset();
    if (ec) {
      spdlog::debug("conn={} write failed: {}", conn_, ec.message());
      return;
    }
    if (ends_completion) {
      if (close && cur_) cur_->keep_alive = false;
      return finish_exchange();
    }
    if (close && parser_ && !parser_->is_done()) return linger_close();
    if (close) return do_close();
    do_read();
  }

  // Refused before the request was read to its end (431, 413, 400): the client may still be
  // sending. Closing with unread bytes would reset the connection, and a reset can destroy
  // the response before the client reads it; so read and drop for up to 2 s first (bounded in
  // time, and in memory: the same 4 KiB again and again).
  void linger_close() {
    do_close();
    if constexpr (!is_tls<Stream>) {
      beast::get_lowest_layer(stream_).expires_after(std::chrono::seconds(2));
      buffer_.clear();
      do_linger_read();
    }
  }

  void do_linger_read() {
    stream_.async_read_some(buffer_.prepare(4096), [self = this->shared_from_this()](beast::error_code ec, size_t n) {
      (void)n;  // dropped: prepare() reuses the same bytes
      if (ec) return;  // the client closed, or the 2 s are up
      self->do_linger_read();
    });
  }

  void do_close() {
    beast::error_code ec;
    if constexpr (is_tls<Stream>) {
      beast::get_lowest_layer(stream_).expires_after(std::chrono::seconds(5));
      stream_.async_shutdown([self = this->shared_from_this()](beast::error_code) {});
    } else {
      stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    }
  }

  Stream stream_;
  beast::flat_buffer buffer_;  // bounded: max_buffered_bytes()
  std::optional<request_parser> parser_;
  uint64_t heads_read_ = 0;
  bool peer_half_closed_ = false;
  asio::steady_timer probe_timer_{stream_.get_executor()};
  server_state& st_;
  connection_slot slot_;
  uint64_t conn_;
  std::string client_;
  std::shared_ptr<http::response<http::string_body>> res_;
  std::string req_id_;  // X-Request-Id of the request being answered
  std::shared_ptr<completion_state> cur_;
  std::deque<std::string> out_;  // queued raw bytes; the first in_flight_ are being written
  std::vector<asio::const_buffer> wbufs_;
  size_t in_flight_ = 0;
  size_t pending_bytes_ = 0;
  bool writing_ = false;
  bool watching_ = false;
  bool resume_after_watch_ = false;
};

}  // namespace infer::net::detail
