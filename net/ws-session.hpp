// ws_session: one WebSocket connection speaking protocol v1 (docs/protocol.md): many
// generate / cancel requests multiplexed, their events framed as they come, a bounded
// outgoing queue (a client that does not read is cancelled and closed with 1008).
// A template over the byte stream (plain TCP or TLS); internal to net/.
#pragma once
#include <netinet/tcp.h>
#include <spdlog/spdlog.h>

#include <deque>
#include <memory>
#include <string>
#include <unordered_map>

#include "net/request-log.hpp"
#include "net/server-state.hpp"
#include "tokenizer/tokenizer.hpp"

namespace infer::net::detail {

template <class Stream>
class ws_session : public std::enable_shared_from_this<ws_session<Stream>> {
 public:
  ws_session(Stream&& s, server_state& st, connection_slot slot, uint64_t conn, std::string client)
      : ws_(std::move(s)), st_(st), slot_(std::move(slot)), conn_(conn), client_(std::move(client)),
        close_timer_(ws_.get_executor()) {}

  auto executor() { return ws_.get_executor(); }

  void run(http::request<http::string_body> req, std::string subprotocol) {
    websocket::stream_base::timeout t = websocket::stream_base::timeout::suggested(beast::role_type::server);
    t.idle_timeout = st_.idle();
    t.keep_alive_pings = true;  // a quiet but alive client answers pings; a dead one times out
    ws_.set_option(t);
    // The handshake's answer carries X-Request-Id like every HTTP response (the requests on
    // the socket then have their own ids).
    auto given = req.find("X-Request-Id");
    std::string rid = request_id_of(given != req.end() ? sv(given->value()) : std::string_view());
    ws_.set_option(websocket::stream_base::decorator([subprotocol, rid](websocket::response_type& res) {
      res.set(http::field::server, server_name);
      res.set("X-Request-Id", rid);
      if (!subprotocol.empty()) res.set(http::field::sec_websocket_protocol, subprotocol);
    }));
    ws_.read_message_max(size_t(st_.cfg.max_frame_bytes));
    ws_.async_accept(req, beast::bind_front_handler(&ws_session::on_accept, this->shared_from_this()));
  }

  struct live {
    std::string id;
    uint64_t rid = 0;
    int32_t next_index = 0;
    bool first_sent = false;  // its accepted (or the error ending it) is out
    int32_t duplicates = 0;   // generate frames with its id refused before that: answered after it
    bool rendering = false;  // a chat request whose template runs on the render pool: not submitted yet
    bool cancel_pending = false;
  };

  static std::string duplicate_frame(const std::string& id) {
    return error_frame(id, error_code::invalid_request,
                       fmt::format("id: \"{}\" is already in flight on this connection: this generate is refused, "
                                   "the request in flight with that id goes on",
                                   id));
  }

  void on_event(const std::shared_ptr<live>& lr, const event& e) {
    auto it = live_.find(lr->id);
    if (it == live_.end() || it->second != lr) return;  // not ours any more: drop
    switch (e.type) {
      case event::kind::accepted: send(accepted_frame(lr->id)); break;
      case event::kind::token: {
        if (e.index != lr->next_index)
          spdlog::warn("request id={} conn={} rid={} token index {} where {} was due", q(lr->id), conn_, lr->rid,
                       e.index, lr->next_index);
        lr->next_index = e.index + 1;
        std::string frame;
        token_frame(frame, lr->id, e.index, e.token, e.text, &e);
        send(std::move(frame));
        break;
      }
      case event::kind::done: send(done_frame(lr->id, e)); break;
      case event::kind::error: send(error_frame(lr->id, e.code, e.message, e.retry_after_ms)); break;
    }
    if (!lr->first_sent) {
      // A duplicate's refusal never precedes the first frame of the request it duplicates,
      // so a client cannot take it for that request's end before it even began.
      lr->first_sent = true;
      for (; lr->duplicates > 0; --lr->duplicates) send(duplicate_frame(lr->id));
    }
    if (e.terminal()) {
      log_outcome(conn_, "ws", lr->id, lr->rid, e);
      live_.erase(it);
    }
  }

 private:
  void on_accept(beast::error_code ec) {
    if (ec) {
      spdlog::debug("conn={} websocket handshake failed: {}", conn_, ec.message());
      return;
    }
    spdlog::debug("conn={} websocket open", conn_);
    do_read();
  }

  void do_read() {
    ws_.async_read(buffer_, beast::bind_front_handler(&ws_session::on_read, this->shared_from_this()));
  }

  void on_read(beast::error_code ec, size_t) {
    if (ec) {
      // Closed by the peer, timed out, or a protocol violation such as an oversize
      // message (Beast has then already sent the close frame with the right code).
      if (ec != websocket::error::closed && !slow_)
        spdlog::info("conn={} websocket ended: {} ({} live requests cancelled)", conn_, ec.message(), live_.size());
      closed_ = true;
      cancel_all();
      return;
    }
    if (!ws_.got_text()) {
      buffer_.consume(buffer_.size());
      spdlog::info("conn={} binary frame: closing with 1003 ({} live requests cancelled)", conn_, live_.size());
      closed_ = true;
      cancel_all();
      ws_.async_close(websocket::close_reason(websocket::close_code::unknown_data, "binary frames are not supported"),
                      beast::bind_front_handler(&ws_session::on_close, this->shared_from_this()));
      return;
    }
    auto data = buffer_.cdata();
    handle_frame(std::string_view(static_cast<const char*>(data.data()), data.size()));
    buffer_.consume(buffer_.size());
    do_read();
  }

  void on_close(beast::error_code ec) {
    close_timer_.cancel();
    if (ec) spdlog::debug("conn={} close: {}", conn_, ec.message());
  }

  void handle_frame(std::string_view frame) {
    service* svc = st_.current();
    command cmd = parse_command(frame, svc ? st_.limits : protocol_limits{});
    if (auto* bad = std::get_if<invalid_request>(&cmd)) {
      spdlog::info("request id={} conn={} api=ws outcome=invalid_request message=\"{}\"",
                   bad->id ? q(*bad->id) : "null", conn_, q(bad->message));
      count_rejection(svc, error_code::invalid_request);
      send(error_frame(bad->id, error_code::invalid_request, bad->message));
      return;
    }
    if (auto* c = std::get_if<cancel_command>(&cmd)) {
      // Idempotent: a request that already ended (or never existed) has nothing to cancel.
      auto it = live_.find(c->id);
      if (it != live_.end() && it->second->rendering) it->second->cancel_pending = true;
      else if (it != live_.end() && svc) svc->cancel(it->second->rid);
      return;
    }
    auto& g = std::get<generate_command>(cmd);
    if (!svc) {
      spdlog::info("request id={} conn={} api=ws outcome=unavailable message=\"model loading\"", q(g.id), conn_);
      send(error_frame(g.id, error_code::unavailable, "the model is not loaded yet"));
      return;
    }
    if (!st_.serves(g.model)) {
      std::string msg = model_not_found_message(g.model, st_.model_names);
      spdlog::info("request id={} conn={} api=ws outcome=invalid_request message=\"{}\"", q(g.id), conn_, q(msg));
      count_rejection(svc, error_code::invalid_request);
      send(model_not_found_frame(g.id, msg));
      return;
    }
    if (auto dup = live_.find(g.id); dup != live_.end()) {
      spdlog::info("request id={} conn={} api=ws outcome=invalid_request message=\"duplicate id\"", q(g.id), conn_);
      count_rejection(svc, error_code::invalid_request);
      if (dup->second->first_sent) send(duplicate_frame(g.id));
      else ++dup->second->duplicates;
      return;
    }
    if (int64_t(live_.size()) >= st_.cfg.max_inflight_per_connection) {
      spdlog::info("request id={} conn={} api=ws outcome=rate_limited message=\"connection in-flight limit\"", q(g.id),
                   conn_);
      count_rejection(svc, error_code::rate_limited);
      send(error_frame(g.id, error_code::rate_limited,
                       fmt::format("at most {} requests in flight per connection",
                                   st_.cfg.max_inflight_per_connection),
                       100));
      return;
    }
    if (int64_t wait = st_.rate_limit(client_)) {
      spdlog::info("request id={} conn={} client={} api=ws outcome=rate_limited message=\"client rate limit\" "
                   "retry_after_ms={}",
                   q(g.id), conn_, client_, wait);
      count_rejection(svc, error_code::rate_limited);
      send(error_frame(g.id, error_code::rate_limited, st_.rate_limit_message(wait), wait));
      return;
    }
    auto lr = std::make_shared<live>();
    lr->id = g.id;
    live_.emplace(g.id, lr);
    if (g.chat) return render_chat(lr, std::move(g));
    // Events are posted to this strand, so none is handled before rid is set.
    lr->rid = svc->submit(std::move(g.request), post_to(this->shared_from_this(), lr));
  }

  // `messages` instead of a prompt: the template runs on the render pool, the request is
  // submitted back on this strand (it holds the live entry, so its id stays taken and it
  // counts in flight meanwhile).
  void render_chat(std::shared_ptr<live> lr, generate_command g) {
    service* svc = st_.current();
    auto tpl = st_.chat;
    if (!tpl) {
      live_.erase(lr->id);
      count_rejection(svc, error_code::invalid_request);
      send(error_frame(lr->id, error_code::invalid_request, no_chat_template_message()));
      return;
    }
    lr->rendering = true;
    auto job = std::make_shared<generate_command>(std::move(g));
    const tokenizer* tok = &svc->tok();
    asio::post(*st_.blocking, [self = this->shared_from_this(), lr, job, tpl, tok]() {
      auto ids = tpl->render_tokens(*job->chat, *tok, false);
      asio::post(self->executor(), [self, lr, job, ids = std::move(ids)]() mutable {
        self->on_chat_rendered(lr, std::move(*job), std::move(ids));
      });
    });
  }

  void on_chat_rendered(const std::shared_ptr<live>& lr, generate_command g, result<std::vector<int32_t>> ids) {
    lr->rendering = false;
    auto it = live_.find(lr->id);
    if (it == live_.end() || it->second != lr) return;
    service* svc = st_.current();
    std::string why;
    if (!ids) why = ids.error().message;
    else if (ids.value().empty()) why = "messages: the chat template made an empty prompt";
    else if (!prompt_fits(int64_t(ids.value().size()), st_.limits.n_ctx))
      why = prompt_too_long_message("messages", int64_t(ids.value().size()), st_.limits.n_ctx);
    if (closed_ || !svc) {  // the connection went away meanwhile: nothing was submitted
      live_.erase(it);
      return;
    }
    if (!why.empty()) {
      spdlog::info("request id={} conn={} api=ws outcome=invalid_request message=\"{}\"", q(lr->id), conn_, q(why));
      count_rejection(svc, error_code::invalid_request);
      live_.erase(it);
      send(error_frame(lr->id, error_code::invalid_request, why));
      return;
    }
    g.request.prompt_tokens = std::move(ids.value());
    lr->rid = svc->submit(std::move(g.request), post_to(this->shared_from_this(), lr));
    if (lr->cancel_pending) svc->cancel(lr->rid);
  }

  void cancel_all() {
    service* svc = st_.current();
    if (!svc) return;
    for (auto& [id, lr] : live_) svc->cancel(lr->rid);
  }

  void send(std::string frame) {
    if (closed_) return;
    if (pending_bytes_ + frame.size() > st_.max_pending_bytes()) return too_slow(pending_bytes_ + frame.size());
    pending_bytes_ += frame.size();
    out_.push_back(std::move(frame));
    if (!writing_) do_write();
  }

  // The client does not read its frames: rather than buffer without bound, cancel its
  // requests (their KV blocks go back to the pool now, not when they would have ended)
  // and close with 1008. The close frame goes out after the frame being written, if the
  // client ever reads again; if not, the grace timer closes the socket.
  void too_slow(size_t would_be_pending) {
    spdlog::warn("conn={} client={} too slow ({} bytes pending, limit {}): {} live requests cancelled, closing with 1008",
                 conn_, client_, would_be_pending, st_.max_pending_bytes(), live_.size());
    st_.slow_clients.fetch_add(1, std::memory_order_relaxed);
    closed_ = true;
    slow_ = true;
    cancel_all();
    // Frames not started are dropped; the one being written must stay alive until its handler.
    if (writing_) {
      out_.erase(std::next(out_.begin()), out_.end());
      pending_bytes_ = out_.front().size();
    } else {
      out_.clear();
      pending_bytes_ = 0;
    }
    close_timer_.expires_after(slow_close_grace);
    close_timer_.async_wait([self = this->shared_from_this()](beast::error_code ec) {
      if (ec) return;  // cancelled: the close handshake finished
      beast::error_code ignored;
      beast::get_lowest_layer(self->ws_).socket().close(ignored);
    });
    ws_.async_close(websocket::close_reason(websocket::close_code::policy_error,
                                            fmt::format("client too slow: more than {} bytes unread",
                                                        st_.max_pending_bytes())),
                    beast::bind_front_handler(&ws_session::on_close, this->shared_from_this()));
  }

  void do_write() {
    writing_ = true;
    // More frames behind this one (a step's tokens of many requests): the socket is corked
    // until the queue drains, so that the burst leaves in full segments with one transmit
    // instead of one per frame (on loopback each transmit also runs the receiver's side).
    set_cork(out_.size() > 1);
    ws_.text(true);
    ws_.async_write(asio::buffer(out_.front()),
                    beast::bind_front_handler(&ws_session::on_write, this->shared_from_this()));
  }

  void on_write(beast::error_code ec, size_t) {
    writing_ = false;
    if (ec) {
      spdlog::debug("conn={} write failed: {}", conn_, ec.message());
      closed_ = true;
      cancel_all();
      out_.clear();
      return;
    }
    pending_bytes_ -= out_.front().size();
    out_.pop_front();
    if (!out_.empty() && !closed_) return do_write();
    set_cork(false);  // pushes out what the cork held
  }

  void set_cork(bool on) {
    if (on == corked_) return;
    corked_ = on;
    int v = on ? 1 : 0;
    ::setsockopt(beast::get_lowest_layer(ws_).socket().native_handle(), IPPROTO_TCP, TCP_CORK, &v, sizeof v);
  }

  websocket::stream<Stream> ws_;
  beast::flat_buffer buffer_;
  server_state& st_;
  connection_slot slot_;
  uint64_t conn_;
  std::string client_;  // the peer's IP address: the rate limit's key
  asio::steady_timer close_timer_;
  std::deque<std::string> out_;
  size_t pending_bytes_ = 0;
  bool writing_ = false;
  bool corked_ = false;  // TCP_CORK set while a burst of frames is written
  bool closed_ = false;  // no more frames go out
  bool slow_ = false;    // closing for a slow client
  std::unordered_map<std::string, std::shared_ptr<live>> live_;
};

}  // namespace infer::net::detail
