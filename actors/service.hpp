// service: the embedded API. A host application that runs a caf::actor_system starts
// the inference service inside it and uses it from any thread. The network layer
// (net/) is a client of exactly this API.
//
// Threading contract: submit / cancel / metrics never block on the engine. Event
// callbacks run on CAF scheduler threads: they must be quick and must not block
// (post to your own executor, e.g. an asio strand).
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include <optional>

#include "base/result.hpp"
#include "base/sampling-params.hpp"
#include "grammar/grammar.hpp"

namespace caf { class actor_system; }

namespace infer {

class tokenizer;
class metrics;
struct service_status;  // actors/metrics.hpp
struct service_config;  // config/service-config.hpp
struct service_hooks;   // actors/service-core.hpp

enum class priority : uint8_t { high = 0, normal = 1, low = 2 };
enum class finish_reason : uint8_t { length, stop, cancelled };
enum class error_code : uint8_t { invalid_request, overloaded, rate_limited, timeout, unavailable, internal };

// The names used on the wire, in logs and in metrics.
inline const char* to_string(priority p) {
  switch (p) {
    case priority::high: return "high";
    case priority::normal: return "normal";
    case priority::low: return "low";
  }
  return "normal";
}

inline const char* to_string(finish_reason r) {
  switch (r) {
    case finish_reason::length: return "length";
    case finish_reason::stop: return "stop";
    case finish_reason::cancelled: return "cancelled";
  }
  return "length";
}

inline const char* to_string(error_code c) {
  switch (c) {
    case error_code::invalid_request: return "invalid_request";
    case error_code::overloaded: return "overloaded";
    case error_code::rate_limited: return "rate_limited";
    case error_code::timeout: return "timeout";
    case error_code::unavailable: return "unavailable";
    case error_code::internal: return "internal";
  }
  return "internal";
}

struct generate_request {
  std::string prompt;                  // text, or
  std::vector<int32_t> prompt_tokens;  // token ids (used when non-empty)
  int32_t max_tokens = 16;
  sampling_params sampling;
  std::vector<std::string> stop;       // stop sequences, matched on generated text
  // Token ids that end the sequence where it is generated (finish reason stop; the id is
  // counted in completion_tokens, as vLLM does, but its text is not returned): the
  // model's end-of-sequence ids unless ignore_eos, and stop_token_ids.
  bool ignore_eos = false;
  std::vector<int32_t> stop_token_ids;
  // vLLM's skip_special_tokens (default true there too): a special token the model generates
  // (other than the stop id that ends it) adds no text; false streams its text.
  bool skip_special_tokens = true;
  // token id -> added to its logit before sampling (-100..100, at most 300 distinct ids).
  std::vector<std::pair<int32_t, float>> logit_bias;
  // Constrained decoding (grammar/grammar.hpp, docs/structured-output.md): the output is
  // generated inside this language. Compiled (or found in the service's cache) before the
  // request is queued, on a thread of its own; the time counts against timeout_ms. A
  // constraint that cannot be compiled (too large) ends the request with invalid_request.
  std::optional<grammar::grammar_spec> grammar;
  priority prio = priority::normal;
  int64_t timeout_ms = 0;              // 0: the service default
  // OpenAI's n: this many choices of the one prompt, prefilled once and forked in the KV
  // cache, each sampled with its own seed (choice 0 with `seed`, choice i with fork_seed(seed, i)).
  // Token events say their `choice`; the done event has each choice's finish reason.
  int32_t n = 1;
  static constexpr int32_t max_n = 16;
  // vLLM's prompt_logprobs (OpenAI's echo with logprobs; needs sampling.logprobs >= 0): the
  // first token event carries the logprob of every prompt token after the first, with the
  // top sampling.logprobs ids at each. Its prompt is computed in full (no prefix cache).
  bool prompt_logprobs = false;
};

struct event {
  enum class kind : uint8_t { accepted, token, done, error };
  kind type = kind::accepted;
  uint64_t request_id = 0;
  // token
  int32_t n_choices = 1;     // the request's n
  int32_t choice = 0;        // n > 1: the choice it belongs to
  bool choice_done = false;  // n > 1: the last token of its choice (`reason` says why)
  int32_t index = 0;
  int32_t token = -1;
  std::string text;  // newly completed UTF-8 (possibly empty)
  // When sampling.logprobs >= 0: the token's logprob and the best sampling.logprobs ids with
  // theirs (the raw distribution: before penalties, bias and temperature). n_top -1: none.
  int32_t n_top = -1;
  float logprob = 0.0f;
  std::vector<std::pair<int32_t, float>> top_logprobs;
  // The request's first token event, when it asked for prompt logprobs: entry j is prompt
  // token j + 1's logprob, prompt_top[j * n_top, + n_top) its best ids with theirs.
  std::vector<int32_t> prompt_ids;  // the prompt's tokens (set with them, even for a one-token prompt)
  std::vector<float> prompt_logprobs;
  std::vector<std::pair<int32_t, float>> prompt_top;
  // done
  finish_reason reason = finish_reason::length;
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  int32_t cached_tokens = 0;  // prompt tokens whose K/V came from the prefix cache
  // n > 1: each choice's finish reason and tokens (completion_tokens is their sum).
  std::vector<finish_reason> choice_reasons;
  std::vector<int32_t> choice_tokens;
  double queue_ms = 0, first_token_ms = 0, total_ms = 0;
  // error
  error_code code = error_code::internal;
  std::string message;
  int64_t retry_after_ms = 0;
  // degradation, on the terminal event (done or error): never silent
  bool cpu_fallback = false;         // (part of) it ran on a CPU fallback worker
  int32_t max_tokens_capped_to = 0;  // > 0: max_tokens was capped to this under sustained overload

  bool degraded() const { return cpu_fallback || max_tokens_capped_to > 0; }

  bool terminal() const { return type == kind::done || type == kind::error; }
};

// The outcome of a terminal event as /metrics (infer_requests_total{outcome}) and the request
// log name it: done_length, done_stop, cancelled, or the error code.
inline const char* outcome_of(const event& e) {
  if (e.type == event::kind::done) {
    switch (e.reason) {
      case finish_reason::length: return "done_length";
      case finish_reason::stop: return "done_stop";
      case finish_reason::cancelled: return "cancelled";
    }
  }
  return to_string(e.code);
}

using event_callback = std::function<void(const event&)>;

// The whole outcome of one request (for the future-based API).
struct completion {
  uint64_t request_id = 0;
  bool ok = false;                // done (any finish reason) vs error
  std::vector<int32_t> tokens;    // choice 0's (the only one unless n > 1)
  std::string text;
  std::vector<std::vector<int32_t>> choice_tokens;  // every choice's, by index (n of them)
  std::vector<std::string> choice_texts;
  event terminal;                 // the done or error event
};

class service;

// One task of service::submit(tasks): its outcome to wait for, and the means to cancel it.
// Movable, not copyable; must not outlive the service that made it.
class completion_handle {
 public:
  completion_handle() = default;
  completion_handle(service* svc, uint64_t id, std::future<completion> f)
      : svc_(svc), id_(id), f_(std::move(f)) {}

  uint64_t request_id() const { return id_; }
  bool valid() const { return f_.valid(); }
  // Ends the request with done(cancelled) unless it already ended; get() still returns its
  // completion (with the tokens made so far). Any thread, any time; idempotent.
  inline void cancel();
  // Blocks the calling (non-actor) thread until the request ends; once only.
  completion get() { return f_.get(); }
  template <class Rep, class Period>
  std::future_status wait_for(std::chrono::duration<Rep, Period> d) const {
    return f_.wait_for(d);
  }

 private:
  service* svc_ = nullptr;
  uint64_t id_ = 0;
  std::future<completion> f_;
};

class service {
 public:
  virtual ~service() = default;

  // Starts batcher, supervisor and workers inside `sys`, loading the model named by cfg.
  static result<std::unique_ptr<service>> start(caf::actor_system& sys, const service_config& cfg);
  // The same with the engine and tokenizer supplied by the caller (tests, fault injection,
  // a host that builds its own backends); cfg.model and cfg.backend are not used.
  static result<std::unique_ptr<service>> start(caf::actor_system& sys, const service_config& cfg,
                                                const service_hooks& hooks);

  // Non-blocking. Returns the request id; every submitted request receives exactly one
  // terminal event through `cb` (a rejected one gets only that error event).
  virtual uint64_t submit(generate_request req, event_callback cb) = 0;
  // Cancel at any moment; the request ends with done(cancelled) unless already ended.
  virtual void cancel(uint64_t request_id) = 0;

  // The "parallel engine" shape: submit a list, get a handle per task (in order) to wait on
  // or cancel.
  virtual std::vector<completion_handle> submit(std::vector<generate_request> tasks) = 0;
  // Convenience: blocks the calling (non-actor) thread until the request ends.
  virtual completion generate(generate_request req) = 0;

  virtual const tokenizer& tok() const = 0;
  // The model's end-of-sequence ids: generation stops at any of them (unless ignore_eos).
  virtual std::vector<int32_t> eos_ids() const { return {}; }
  virtual int32_t n_ctx() const = 0;
  virtual bool ready() const = 0;  // a request sent now can be served: a worker up, its breaker not open
  // Why not ready(), for GET /readyz: "draining", "no worker running", "no healthy worker: ...";
  // empty when ready.
  virtual std::string not_ready_reason() const { return ready() ? std::string() : "no healthy worker"; }
  virtual metrics& stats() = 0;

  // Cancels everything in flight (each request gets its terminal event) and stops the
  // actors. Idempotent; called by the destructor.
  virtual void shutdown() = 0;
  // Graceful: stops accepting (new submissions end with error(unavailable)), lets the
  // requests in flight finish for up to `drain_timeout`, then cancels the rest (each gets
  // its terminal event) and stops the actors. Returns how many were cancelled.
  // (Not pure, so that test doubles of this interface need not implement it.)
  virtual int64_t shutdown(std::chrono::milliseconds drain_timeout) {
    (void)drain_timeout;
    shutdown();
    return 0;
  }

  // The supervision tree at run time (workers, nodes, prefix cache, queue depth), which
  // GET /v1/status renders (net/status-json.hpp). The default (a service without a
  // supervision tree) lists no workers.
  virtual service_status status() const;
};

inline void completion_handle::cancel() {
  if (svc_) svc_->cancel(id_);
}

}  // namespace infer
