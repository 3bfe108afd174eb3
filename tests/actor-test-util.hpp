// Helpers of the actor tests: a gate around a backend (hold steps, fail one), an
// event collector, solo reference generation, and a service running in its own
// actor_system on the CPU backend with synthetic:tiny.
#pragma once
#include <doctest/doctest.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include <caf/all.hpp>

#include "actors/messages.hpp"
#include "actors/metrics.hpp"
#include "actors/service-core.hpp"
#include "actors/service.hpp"
#include "config/service-config.hpp"
#include "engine/cpu-backend.hpp"
#include "engine/kv-block-pool.hpp"
#include "model/weights.hpp"
#include "tokenizer/tokenizer.hpp"
#include "fake-backend.hpp"

namespace infer::test {

// Shared by all backends of one service: closing it holds every step before it runs;
// fail_at makes the step with that number (counted over all workers) fail once.
struct step_gate {
  std::mutex mu;
  std::condition_variable cv;
  bool open = true;
  int64_t fail_at = -1;
  int64_t steps = 0;
  int64_t held = 0;  // steps waiting at the closed gate

  void close() {
    std::lock_guard<std::mutex> lk(mu);
    open = false;
  }
  void release() {
    std::lock_guard<std::mutex> lk(mu);
    open = true;
    cv.notify_all();
  }
  // Blocks until a step is waiting at the closed gate (the worker is then surely busy).
  void wait_held() {
    std::unique_lock<std::mutex> lk(mu);
    cv.wait(lk, [&] { return held > 0; });
  }
};

class gated_backend : public backend {
 public:
  gated_backend(std::unique_ptr<backend> inner, std::shared_ptr<step_gate> g) : inner_(std::move(inner)), g_(std::move(g)) {}
  const char* name() const override { return inner_->name(); }
  const model_config& config() const override { return inner_->config(); }
  kv_geometry kv() const override { return inner_->kv(); }
  status step(const step_batch& b, step_output& out, logits_mode mode = logits_mode::none) override {
    {
      std::unique_lock<std::mutex> lk(g_->mu);
      int64_t n = g_->steps++;
      if (n == g_->fail_at) return make_status(errc::device_error, "injected fault at step " + std::to_string(n));
      ++g_->held;
      g_->cv.notify_all();
      g_->cv.wait(lk, [&] { return g_->open; });
      --g_->held;
    }
    return inner_->step(b, out, mode);
  }

 private:
  std::unique_ptr<backend> inner_;
  std::shared_ptr<step_gate> g_;
};

// Records every event; checks that nothing follows a terminal event.
struct collector {
  struct record {
    std::vector<event> events;
    int terminals = 0;
    bool after_terminal = false;
  };
  std::mutex mu;
  std::condition_variable cv;
  std::map<uint64_t, record> recs;
  std::vector<uint64_t> first_token_order;

  event_callback cb() {
    return [this](const event& e) {
      std::lock_guard<std::mutex> lk(mu);
      auto& r = recs[e.request_id];
      if (r.terminals > 0) r.after_terminal = true;
      if (e.type == event::kind::token && e.index == 0) first_token_order.push_back(e.request_id);
      r.events.push_back(e);
      if (e.terminal()) ++r.terminals;
      cv.notify_all();
    };
  }
  template <class Pred>
  bool wait(Pred p, std::chrono::seconds limit = std::chrono::seconds(300)) {
    std::unique_lock<std::mutex> lk(mu);
    return cv.wait_for(lk, limit, [&] { return p(); });
  }
  bool wait_terminal(uint64_t id) {
    return wait([&] { return recs.count(id) && recs[id].terminals > 0; });
  }
  bool wait_tokens(uint64_t id, size_t n) {
    return wait([&] { return recs.count(id) && tokens_locked(id).size() >= n; });
  }
  bool wait_accepted(uint64_t id) {
    return wait([&] {
      if (!recs.count(id)) return false;
      for (auto& e : recs[id].events)
        if (e.type == event::kind::accepted || e.terminal()) return true;
      return false;
    });
  }
  std::vector<int32_t> tokens_locked(uint64_t id) {
    std::vector<int32_t> t;
    for (auto& e : recs[id].events)
      if (e.type == event::kind::token) t.push_back(e.token);
    return t;
  }
  std::vector<int32_t> tokens(uint64_t id) {
    std::lock_guard<std::mutex> lk(mu);
    return tokens_locked(id);
  }
  event terminal(uint64_t id) {
    std::lock_guard<std::mutex> lk(mu);
    for (auto& e : recs[id].events)
      if (e.terminal()) return e;
    return {};
  }
  // Exactly one terminal event, last; token indices 0, 1, 2, ...
  bool well_formed(uint64_t id) {
    std::lock_guard<std::mutex> lk(mu);
    auto& r = recs[id];
    if (r.terminals != 1 || r.after_terminal || r.events.empty() || !r.events.back().terminal()) return false;
    int32_t next = 0;
    for (auto& e : r.events)
      if (e.type == event::kind::token && e.index != next++) return false;
    return true;
  }
};

// Polls pred until it holds (for state that changes without an event, such as gauges
// updated just after a terminal event). The limit only stops a broken test from hanging.
template <class Pred>
bool eventually(Pred pred) {
  for (int i = 0; i < 6000; ++i) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return pred();
}

inline std::shared_ptr<const model_weights> tiny_weights() {
  static std::shared_ptr<const model_weights> w = [] {
    auto r = load_model_weights("synthetic:tiny", 1234);
    REQUIRE_MESSAGE(r.has_value(), (r ? "" : r.error().message));
    return r.value();
  }();
  return w;
}

inline backend_options tiny_options() {
  backend_options o;
  o.kind = "cpu";
  o.kv_block_size = 16;
  o.kv_blocks = 2048;
  o.threads = 1;
  return o;
}

// Greedy tokens of one prompt run alone, straight on a CPU backend (no scheduler).
inline std::vector<int32_t> solo_greedy(const std::vector<int32_t>& prompt, int32_t n) {
  static std::unique_ptr<backend> be;
  if (!be) {
    auto r = make_cpu_backend(tiny_weights(), tiny_options());
    REQUIRE(r.has_value());
    be = std::move(r.value());
  }
  const int32_t n_ctx = be->config().n_ctx;
  const int32_t bs = be->kv().block_size;
  std::vector<int32_t> blocks;
  for (int32_t i = 0; i < (n_ctx + bs - 1) / bs + 1; ++i) blocks.push_back(i);
  std::vector<int32_t> out;
  std::vector<int32_t> ctx = prompt;
  step_batch b;
  step_output o;
  int32_t past = 0;
  while (int32_t(out.size()) < n) {
    b.reset(int32_t(blocks.size()));
    b.add(past, std::span<const int32_t>(ctx.data() + past, ctx.size() - size_t(past)), blocks, true, {},
          out.size());
    REQUIRE(be->step(b, o).is_ok());
    past = int32_t(ctx.size());
    out.push_back(o.tokens[0]);
    ctx.push_back(o.tokens[0]);
    if (int32_t(ctx.size()) >= n_ctx) break;
  }
  return out;
}

// A service on synthetic:tiny (CPU backend, gated) in an actor_system of its own.
struct service_env {
  caf::actor_system_config caf_cfg;
  std::unique_ptr<caf::actor_system> sys;
  std::shared_ptr<step_gate> gate = std::make_shared<step_gate>();
  std::unique_ptr<service> svc;

  // fake: fake_backend with a 128-token (ASCII) vocabulary instead of the CPU backend.
  // kv_blocks: KV blocks of 16 tokens per worker.
  explicit service_env(service_config cfg, bool fake = false, int32_t kv_blocks = 2048) {
    register_message_types(caf_cfg);
    sys = std::make_unique<caf::actor_system>(caf_cfg);
    auto w = tiny_weights();
    service_hooks hooks;
    hooks.tok = tokenizer::byte_level();
    hooks.n_ctx = w->cfg.n_ctx;
    hooks.n_vocab = w->cfg.n_vocab;
    auto g = gate;
    if (fake) hooks.n_vocab = 128;
    hooks.make_backend = [w, g, fake, kv_blocks](int32_t) -> result<std::unique_ptr<backend>> {
      if (fake)
        return std::unique_ptr<backend>(new gated_backend(
            std::make_unique<fake_backend>(fake_config(w->cfg.n_ctx, 128), kv_geometry{16, kv_blocks}), g));
      backend_options o = tiny_options();
      o.kv_blocks = kv_blocks;
      auto r = make_cpu_backend(w, o);
      if (!r) return r.error();
      return std::unique_ptr<backend>(new gated_backend(std::move(r.value()), g));
    };
    auto s = service::start(*sys, cfg, hooks);
    REQUIRE_MESSAGE(s.has_value(), (s ? "" : s.error().message));
    svc = std::move(s.value());
  }
  ~service_env() {
    gate->release();
    svc.reset();  // shuts down: every request ends, engines stop
    sys.reset();
  }
};

inline std::vector<int32_t> test_prompt(uint64_t salt, int32_t len) {
  std::vector<int32_t> p;
  uint64_t x = salt * 0x9E3779B97F4A7C15ull + 1;
  for (int32_t i = 0; i < len; ++i) {
    x = splitmix64(x);
    p.push_back(int32_t(x % 256));
  }
  return p;
}

inline generate_request greedy_request(std::vector<int32_t> prompt, int32_t max_tokens) {
  generate_request r;
  r.prompt_tokens = std::move(prompt);
  r.max_tokens = max_tokens;
  return r;
}

}  // namespace infer::test
