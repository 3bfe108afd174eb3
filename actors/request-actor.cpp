#include "actors/request-actor.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "actors/messages.hpp"
#include "base/prompt-limit.hpp"
#include "tokenizer/tokenizer.hpp"

namespace infer {

namespace {

using clock_type = std::chrono::steady_clock;

double ms_between(clock_type::time_point a, clock_type::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// How long a request waits for the confirmation that its sequence is gone before it
// ends anyway (a worker that hangs must not hang its clients).
constexpr auto close_grace = std::chrono::seconds(5);

struct request_state {
  static inline const char* name = "infer.request";

  service_core_ptr core;
  uint64_t id = 0;
  generate_request req;
  event_callback cb;

  std::vector<int32_t> prompt;
  // One per choice (n of them; one unless n > 1): its stream, decoded and matched on its own.
  struct choice {
    std::vector<int32_t> tokens;
    utf8_stream_decoder dec;
    std::string held;  // decoded text not yet streamed: it may be the start of a stop string
    bool ended = false;
    finish_reason reason = finish_reason::cancelled;
  };
  std::vector<choice> choices;
  int32_t live = 0;           // choices not ended
  bool fork_cancelled = false;  // a choice was cancelled alone: the worker may still hold it
  std::vector<int32_t> stop_ids;  // the worker ends the sequence on these (EOS unless ignored, stop_token_ids)
  uint32_t attempt = 0;  // of the latest enqueue_msg; tokens must carry it
  int32_t cached_tokens = -1;  // from the first token of the first admission that produced one
  int32_t n_tokens = 0;        // of all choices
  bool have_prompt_lp = false;  // the prompt logprobs came (a resumed request does not ask again)
  std::string piece;
  bool accepted = false;
  bool compiling = false;  // its constraint is being compiled (not queued yet)
  bool closing = false;  // waiting for the batcher to confirm removal
  bool ended = false;
  event terminal;        // what to emit once closing completes

  clock_type::time_point t_submit, t_dispatch, t_first, t_last;
  bool dispatched = false;
  // Degradation, reported on the terminal event.
  bool cpu_fallback = false;         // dispatched to a CPU fallback worker at least once
  int32_t max_tokens_capped_to = 0;  // max_tokens was capped (sustained overload): apply_overload_cap
};

using request_actor = caf::stateful_actor<request_state>;

void emit(request_actor* self, event& e) {
  auto& st = self->state;
  e.request_id = st.id;
  if (st.cb) st.cb(e);
}

// Emits the terminal event (once) and stops the actor.
void finish(request_actor* self, event e) {
  auto& st = self->state;
  if (st.ended) return;
  st.ended = true;
  auto now = clock_type::now();
  if (e.type == event::kind::done) {
    e.prompt_tokens = int32_t(st.prompt.size());  // once for all choices, as OpenAI counts
    e.completion_tokens = st.n_tokens;
    e.cached_tokens = std::max(st.cached_tokens, 0);
    e.total_ms = ms_between(st.t_submit, now);
    e.queue_ms = st.dispatched ? ms_between(st.t_submit, st.t_dispatch) : e.total_ms;
    e.first_token_ms = st.n_tokens == 0 ? 0.0 : ms_between(st.t_submit, st.t_first);
    if (st.choices.size() > 1) {
      for (const auto& c : st.choices) {
        // A choice still going when the request ended (cancel): the request's reason.
        e.choice_reasons.push_back(c.ended ? c.reason : e.reason);
        e.choice_tokens.push_back(int32_t(c.tokens.size()));
      }
    }
  }
  e.cpu_fallback = st.cpu_fallback;
  e.max_tokens_capped_to = st.max_tokens_capped_to;
  auto& m = st.core->stats;
  m.count_outcome(outcome_of(e));
  if (e.type == event::kind::done) m.observe_finished(e.prompt_tokens, e.completion_tokens, e.queue_ms, e.first_token_ms, e.total_ms);
  if (e.cpu_fallback) m.degraded_cpu_fallback.fetch_add(1, std::memory_order_relaxed);
  if (e.max_tokens_capped_to > 0) m.degraded_max_tokens_capped.fetch_add(1, std::memory_order_relaxed);
  emit(self, e);
  st.core->request_ended(st.id);
  st.cb = nullptr;
  self->quit();
}

event make_error(error_code c, std::string msg, int64_t retry_after_ms = 0) {
  event e;
  e.type = event::kind::error;
  e.code = c;
  e.message = std::move(msg);
  e.retry_after_ms = retry_after_ms;
  return e;
}

event make_done(finish_reason r) {
  event e;
  e.type = event::kind::done;
  e.reason = r;
  return e;
}

// Asks the batcher to drop the sequence; `terminal` is emitted when it confirms.
void close_with(request_actor* self, event terminal) {
  auto& st = self->state;
  if (st.ended || st.closing) return;
  if (st.compiling) {  // nothing queued yet: nobody to tell
    finish(self, std::move(terminal));
    return;
  }
  st.closing = true;
  st.terminal = std::move(terminal);
  self->send(st.core->batcher, cancel_msg{st.id});
  self->delayed_send(self, close_grace, closeto_atom::value);
}

void send_enqueue(request_actor* self, bool resume) {
  auto& st = self->state;
  enqueue_msg m;
  m.id = st.id;
  m.request = caf::actor_cast<caf::actor>(self);
  m.prio = uint8_t(st.req.prio);
  m.prompt = st.prompt;
  m.max_tokens = st.req.max_tokens;
  if (st.choices.size() == 1) {
    m.generated = st.choices[0].tokens;
  } else {
    m.n = int32_t(st.choices.size());
    // Resumed after tokens came: each choice still going goes on from its own tokens.
    if (st.n_tokens > 0 || st.live < m.n)
      for (size_t i = 0; i < st.choices.size(); ++i)
        if (!st.choices[i].ended) m.forks.add(int32_t(i), st.choices[i].tokens);
  }
  m.sampling = wire_sampling::from(st.req.sampling, st.req.logit_bias);
  m.stop_ids = st.stop_ids;
  m.prompt_logprobs = st.req.prompt_logprobs && !st.have_prompt_lp;
  m.resume = resume;
  m.attempt = ++st.attempt;
  if (st.req.grammar) m.grammar = st.req.grammar->key();
  const int64_t limit = st.req.timeout_ms > 0 ? st.req.timeout_ms : st.core->cfg.default_timeout_ms;
  if (limit > 0) {  // what is left of the deadline: admission rejects what cannot make it
    const auto spent = std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - st.t_submit).count();
    m.timeout_ms = std::max<int64_t>(1, limit - spent);
  }
  self->send(st.core->batcher, std::move(m));
}

// Position of the first stop string in `text`, npos if none; `len` gets its length.
size_t find_stop(const std::vector<std::string>& stops, const std::string& text, size_t& len) {
  size_t best = std::string::npos;
  for (const auto& s : stops) {
    if (s.empty()) continue;
    size_t p = text.find(s);
    if (p != std::string::npos && (best == std::string::npos || p < best)) {
      best = p;
      len = s.size();
    }
  }
  return best;
}

// Length of the longest suffix of `text` that is a proper prefix of a stop string.
size_t stop_prefix_tail(const std::vector<std::string>& stops, const std::string& text) {
  size_t keep = 0;
  for (const auto& s : stops) {
    size_t max_k = std::min(s.size() - (s.empty() ? 0 : 1), text.size());
    for (size_t k = max_k; k > keep; --k)
      if (text.compare(text.size() - k, k, s, 0, k) == 0) {
        keep = k;
        break;
      }
  }
  return keep;
}

status validate(request_state& st) {
  const auto& cfg = st.core->cfg;
  auto bad = [](std::string m) { return make_status(errc::invalid_argument, std::move(m)); };
  const auto& r = st.req;
  if (!r.prompt_tokens.empty()) {
    for (int32_t t : r.prompt_tokens)
      if (t < 0 || t >= st.core->n_vocab)
        return bad("prompt_tokens: id " + std::to_string(t) + " outside the vocabulary [0, " +
                   std::to_string(st.core->n_vocab) + ")");
    st.prompt = r.prompt_tokens;
  } else {
    st.prompt = st.core->tok.encode(r.prompt);
  }
  if (st.prompt.empty()) return bad("prompt: empty");
  if (!prompt_fits(int64_t(st.prompt.size()), st.core->n_ctx))
    return bad(prompt_too_long_message("prompt", int64_t(st.prompt.size()), st.core->n_ctx));
  if (r.max_tokens < 0) return bad("max_tokens: must be >= 0, got " + std::to_string(r.max_tokens));
  if (r.max_tokens > cfg.max_tokens_limit)
    return bad("max_tokens: at most " + std::to_string(cfg.max_tokens_limit) + ", got " +
               std::to_string(r.max_tokens));
  if (!(r.sampling.temperature >= 0.0f) || !std::isfinite(r.sampling.temperature))
    return bad("temperature: must be a finite number >= 0");
  if (!(r.sampling.top_p > 0.0f && r.sampling.top_p <= 1.0f)) return bad("top_p: must be in (0, 1]");
  if (r.sampling.top_k < 0) return bad("top_k: must be >= 0");
  const auto& sp = r.sampling;
  if (!(sp.min_p >= 0.0f && sp.min_p <= 1.0f)) return bad("min_p: must be in [0, 1]");
  if (!(sp.presence_penalty >= -2.0f && sp.presence_penalty <= 2.0f))
    return bad("presence_penalty: must be in [-2, 2]");
  if (!(sp.frequency_penalty >= -2.0f && sp.frequency_penalty <= 2.0f))
    return bad("frequency_penalty: must be in [-2, 2]");
  if (!(sp.repetition_penalty > 0.0f && sp.repetition_penalty <= 100.0f))
    return bad("repetition_penalty: must be in (0, 100]");
  if (sp.min_tokens < 0) return bad("min_tokens: must be >= 0");
  if (sp.min_tokens > r.max_tokens)
    return bad("min_tokens: " + std::to_string(sp.min_tokens) + " is more than max_tokens (" +
               std::to_string(r.max_tokens) + ")");
  if (sp.logprobs < -1 || sp.logprobs > sampling_params::max_logprobs)
    return bad("logprobs: at most " + std::to_string(sampling_params::max_logprobs));
  if (r.logit_bias.size() > 300) return bad("logit_bias: at most 300 entries");
  for (const auto& [t, b] : r.logit_bias) {
    if (t < 0 || t >= st.core->n_vocab)
      return bad("logit_bias: id " + std::to_string(t) + " outside the vocabulary [0, " +
                 std::to_string(st.core->n_vocab) + ")");
    if (!(b >= -100.0f && b <= 100.0f)) return bad("logit_bias: values must be in [-100, 100]");
  }
  for (size_t i = 0; i < r.logit_bias.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (r.logit_bias[i].first == r.logit_bias[j].first)
        return bad("logit_bias: id " + std::to_string(r.logit_bias[i].first) + " given twice");
  if (r.timeout_ms < 0) return bad("timeout_ms: must be >= 0");
  if (r.prompt_logprobs && sp.logprobs < 0) return bad("prompt_logprobs: needs logprobs");
  if (r.n < 1 || r.n > generate_request::max_n)
    return bad("n: must be in [1, " + std::to_string(generate_request::max_n) + "], got " + std::to_string(r.n));
  st.stop_ids.clear();
  if (!r.ignore_eos) st.stop_ids = st.core->eos_ids;
  for (int32_t t : r.stop_token_ids) {
    if (t < 0 || t >= st.core->n_vocab)
      return bad("stop_token_ids: id " + std::to_string(t) + " outside the vocabulary [0, " +
                 std::to_string(st.core->n_vocab) + ")");
    if (std::find(st.stop_ids.begin(), st.stop_ids.end(), t) == st.stop_ids.end()) st.stop_ids.push_back(t);
  }
  return status::ok();
}

// Choice `i` has ended (`worker_done`: the worker let it go with its last token). The
// request ends with its last choice; a choice that ends early (a stop string) while others
// go on is dropped alone on the worker.
void end_choice(request_actor* self, size_t i, finish_reason why, bool worker_done) {
  auto& st = self->state;
  auto& c = st.choices[i];
  c.ended = true;
  c.reason = why;
  --st.live;
  if (st.live > 0) {
    if (!worker_done) {
      st.fork_cancelled = true;
      self->send(st.core->batcher, cancel_msg{st.id, int32_t(i)});
    }
    return;
  }
  // Another choice was dropped alone: confirm that nothing is left before the terminal event.
  if (worker_done && !st.fork_cancelled) finish(self, make_done(why));
  else close_with(self, make_done(why));
}

void on_token(request_actor* self, const token_msg& m) {
  auto& st = self->state;
  if (st.ended || st.closing) return;  // late tokens of a sequence being removed
  if (m.attempt != st.attempt) return;  // from a worker the sequence has since left (resumed elsewhere)
  if (m.fork < 0 || size_t(m.fork) >= st.choices.size()) return;
  auto& c = st.choices[size_t(m.fork)];
  if (c.ended) return;  // a choice ended here (stop string) while its tokens were on the way
  if (m.index != int32_t(c.tokens.size())) return;  // a duplicate after a resume: already streamed
  if (m.cached_tokens >= 0 && st.cached_tokens < 0) st.cached_tokens = m.cached_tokens;
  auto now = clock_type::now();
  if (st.n_tokens == 0) {
    st.t_first = now;
    st.core->stats.time_to_first_token.observe(std::chrono::duration<double>(now - st.t_submit).count());
  } else {
    st.core->stats.inter_token_latency.observe(std::chrono::duration<double>(now - st.t_last).count());
  }
  st.t_last = now;
  c.tokens.push_back(m.token);
  ++st.n_tokens;

  st.piece.clear();
  // A stop id's own text (an EOS's "<|endoftext|>") is never returned; other special tokens
  // only when the request asks (skip_special_tokens: false).
  if (!m.stop && !(st.req.skip_special_tokens && st.core->tok.is_special(m.token))) {
    c.dec.push(st.core->tok.token_bytes(m.token), st.piece);
    c.held += st.piece;
  }
  if (m.last) c.dec.flush(c.held);

  event e;
  e.type = event::kind::token;
  e.n_choices = int32_t(st.choices.size());
  e.choice = m.fork;
  e.index = m.index;
  e.token = m.token;
  if (st.req.prompt_logprobs && !st.have_prompt_lp && (!m.prompt_bits.empty() || st.prompt.size() == 1)) {
    st.have_prompt_lp = true;
    e.prompt_ids = st.prompt;
    for (uint32_t b : m.prompt_bits) e.prompt_logprobs.push_back(std::bit_cast<float>(b));
    for (size_t j = 0; j < m.prompt_top_ids.size() && j < m.prompt_top_bits.size(); ++j)
      e.prompt_top.emplace_back(m.prompt_top_ids[j], std::bit_cast<float>(m.prompt_top_bits[j]));
  }
  if (m.n_top >= 0) {
    e.n_top = m.n_top;
    e.logprob = std::bit_cast<float>(m.logprob_bits);
    for (size_t j = 0; j < m.top_ids.size() && j < m.top_bits.size(); ++j)
      e.top_logprobs.emplace_back(m.top_ids[j], std::bit_cast<float>(m.top_bits[j]));
  }
  const auto& stops = st.req.stop;
  size_t stop_len = 0;
  size_t at = stops.empty() ? std::string::npos : find_stop(stops, c.held, stop_len);
  if (at != std::string::npos) {
    e.text = c.held.substr(0, at);
    c.held.clear();
    e.choice_done = true;
    e.reason = finish_reason::stop;
    emit(self, e);
    end_choice(self, size_t(m.fork), finish_reason::stop, m.last);  // m.last: the worker already let it go
    return;
  }
  size_t keep = m.last || stops.empty() ? 0 : stop_prefix_tail(stops, c.held);
  e.text = c.held.substr(0, c.held.size() - keep);
  c.held.erase(0, c.held.size() - keep);
  const finish_reason why = m.stop || m.complete ? finish_reason::stop : finish_reason::length;
  if (m.last) {
    e.choice_done = true;
    e.reason = why;
  }
  emit(self, e);
  if (m.last) end_choice(self, size_t(m.fork), why, true);
}

// Sustained overload (degradation.overload_max_tokens): a new request gets a smaller
// max_tokens, never below its own min_tokens. The request owns its max_tokens (every
// enqueue, the first and a resumed one, sends it); the batcher only publishes whether the
// overload is sustained (metrics::max_tokens_cap_active).
void apply_overload_cap(request_state& st) {
  const int32_t limit = st.core->cfg.overload_max_tokens;
  if (limit <= 0 || st.core->stats.max_tokens_cap_active.load() == 0) return;
  const int32_t cap = std::max(limit, st.req.sampling.min_tokens);
  if (st.req.max_tokens <= cap) return;
  st.req.max_tokens = cap;
  st.max_tokens_capped_to = cap;
}

caf::behavior request_fun(request_actor* self, service_core_ptr core, uint64_t id, generate_request req,
                          event_callback cb) {
  auto& st = self->state;
  st.core = std::move(core);
  st.id = id;
  st.req = std::move(req);
  st.cb = std::move(cb);
  st.t_submit = clock_type::now();

  // Registered before the service closed (submit checks under the lock): a graceful drain
  // lets it run; a hard shutdown cancels it like any other request in flight. (So the
  // batcher is always there: core->batcher is never cleared.)
  if (status s = validate(st); !s) {
    finish(self, make_error(error_code::invalid_request, s.message));
    return {};
  }
  apply_overload_cap(st);
  st.choices.resize(size_t(st.req.n));
  st.live = st.req.n;
  // A constraint not in the service's cache is compiled by a detached helper (milliseconds for
  // a tool schema, more for a large one: not on a scheduler thread, nor an io thread), on the
  // request's clock: the deadline timer below runs meanwhile. The workers of this node then
  // find it in the cache.
  if (st.req.grammar && st.req.max_tokens > 0 && !st.core->grammars->find(st.req.grammar->key())) {
    st.compiling = true;
    // The requester goes in as a spawn argument, not a capture: CAF 0.17 dereferences the
    // null argument tuple of an actor spawned with none (UBSan: reference bound to null).
    self->spawn<caf::detached>(
        [core = st.core, spec = *st.req.grammar](caf::event_based_actor* h, const caf::actor& req) {
          std::string err;
          try {
            auto g = core->grammars->get(spec);
            if (!g) err = g.error().message;
          } catch (const std::exception& e) {  // bad_alloc: the request must still get its answer
            err = std::string("compilation failed: ") + e.what();
          }
          h->send(req, grammar_atom::value, err);
          h->quit();
        },
        caf::actor_cast<caf::actor>(self));
  }
  if (st.req.max_tokens == 0) {  // nothing to generate: no need to queue
    st.accepted = true;
    event a;
    a.type = event::kind::accepted;
    emit(self, a);
    finish(self, make_done(finish_reason::length));
    return {};
  }
  if (!st.compiling) send_enqueue(self, false);
  int64_t timeout_ms = st.req.timeout_ms > 0 ? st.req.timeout_ms : st.core->cfg.default_timeout_ms;
  if (timeout_ms > 0) self->delayed_send(self, std::chrono::milliseconds(timeout_ms), deadline_atom::value);

  return {
      [=](const admission_msg& m) {
        auto& st = self->state;
        if (st.ended) return;
        if (!m.ok) {
          finish(self, make_error(error_code(m.code), m.message, m.retry_after_ms));
          return;
        }
        if (!st.accepted) {
          st.accepted = true;
          event a;
          a.type = event::kind::accepted;
          emit(self, a);
        }
      },
      [=](const dispatched_msg& m) {
        auto& st = self->state;
        if (m.fallback) st.cpu_fallback = true;
        if (!st.dispatched) {
          st.dispatched = true;
          st.t_dispatch = clock_type::now();
        }
      },
      [=](grammar_atom, const std::string& err) {
        auto& st = self->state;
        if (st.ended || !st.compiling) return;
        st.compiling = false;
        if (!err.empty()) {
          finish(self, make_error(error_code::invalid_request,
                                  std::string(grammar::to_string(st.req.grammar->kind)) + " constraint: " + err));
          return;
        }
        send_enqueue(self, false);  // the first submission: what is left of the deadline goes with it
      },
      [=](const token_msg& m) { on_token(self, m); },
      [=](const seq_closed_msg& m) {
        auto& st = self->state;
        if (st.ended) return;
        if (st.closing) {
          finish(self, st.terminal);
          return;
        }
        switch (closed_why(m.why)) {
          case closed_why::lost:
            send_enqueue(self, true);  // resume: recompute prompt + tokens so far elsewhere
            break;
          case closed_why::failed:
            finish(self, make_error(error_code::internal, m.message));
            break;
          case closed_why::rejected:
            finish(self, make_error(error_code::invalid_request, m.message));
            break;
          case closed_why::cancelled:
            finish(self, make_done(finish_reason::cancelled));
            break;
        }
      },
      [=](cancel_atom) { close_with(self, make_done(finish_reason::cancelled)); },
      [=](deadline_atom) {
        close_with(self, make_error(error_code::timeout, "deadline of the request passed"));
      },
      [=](closeto_atom) {
        auto& st = self->state;
        if (st.closing && !st.ended) finish(self, st.terminal);
      },
  };
}

}  // namespace

caf::actor spawn_request_actor(caf::actor_system& sys, service_core_ptr core, uint64_t id, generate_request req,
                               event_callback cb) {
  return sys.spawn(request_fun, std::move(core), id, std::move(req), std::move(cb));
}

}  // namespace infer
