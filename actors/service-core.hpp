// service_core: what the service's actors share on one node. Read-mostly: the
// configuration, the tokenizer, the metrics (atomics), the registry of live
// requests (for cancel by id and for shutdown), and the backend factory.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <unordered_map>

#include <caf/all.hpp>

#include "actors/metrics.hpp"
#include "actors/service.hpp"
#include "config/service-config.hpp"
#include "engine/backend.hpp"
#include "tokenizer/tokenizer.hpp"
#include "grammar/grammar.hpp"
#include "supervision/device-plan.hpp"
#include "supervision/fault-injection.hpp"

namespace infer {

// Builds worker `index`'s engine. Called on that worker's engine thread (it may block).
using backend_factory = std::function<result<std::unique_ptr<backend>>(int32_t index)>;

// Test and embedding hooks for service::start: replace the engine (a fake backend, a
// pre-built one, fault injection) and the tokenizer without loading a model.
struct service_hooks {
  backend_factory make_backend;  // required
  // The CPU fallback workers' engines (degradation.fallback_cpu_workers; their indices follow
  // the primary workers'). Empty: make_backend builds them too. Fault injection wraps only
  // the primary workers' engines.
  backend_factory make_fallback_backend;
  tokenizer tok;                 // default: byte level
  // End-of-sequence ids. Empty: the tokenizer's end-of-text id, if it has one.
  std::vector<int32_t> eos_ids;
  int32_t n_ctx = 0;             // the engine's context and vocabulary, for validation
  int32_t n_vocab = 0;
  std::string model_id;          // what a front and a worker node compare before working together
};

struct live_request {
  caf::actor handle;  // null while being spawned
  bool cancel_pending = false;
};

struct service_core {
  service_config cfg;
  tokenizer tok;
  std::vector<int32_t> eos_ids;  // every sequence stops at these unless its request ignores them
  int32_t n_ctx = 0;
  int32_t n_vocab = 0;
  metrics stats;
  backend_factory make_backend;
  backend_factory make_fallback_backend;  // may be empty: make_backend builds the fallback's too
  // Set once at start and never changed (request actors read it without a lock); after
  // shutdown it names an exited actor. No request starts then: submit refuses once closed.
  caf::actor batcher;
  caf::actor supervisor;  // the root of the supervision tree
  std::vector<caf::actor> node_links;  // front node: one per worker node
  std::string model_id;   // model shape (and synthetic seed): a worker node must serve the same
  device_plan plan;       // which workers belong to which device supervisor
  std::shared_ptr<fault_switch> faults = std::make_shared<fault_switch>();  // releases injected hangs
  // Compiled constraints by their text (request actors compile, workers look up), over the
  // vocabulary of `tok` (built on first use). Set by make_core.
  std::shared_ptr<grammar::grammar_cache> grammars;
  static constexpr size_t grammar_cache_size = 64;

  std::atomic<int32_t> workers_ready{0};
  // steady_clock ticks from when a request sent then can be served: the earliest time an up
  // worker's breaker lets steps through (now, unless all are open); max: no worker up.
  std::atomic<int64_t> serving_at{std::numeric_limits<int64_t>::max()};
  std::atomic<int32_t> next_worker_index{0};  // the next free worker index (remote workers get theirs here)
  std::atomic<uint64_t> next_id{1};
  std::atomic<bool> closed{false};

  // Live requests: id -> request actor. Guarded by mu; cv signals changes (and engine exits).
  std::mutex mu;
  std::condition_variable cv;
  std::unordered_map<uint64_t, live_request> live;
  int32_t live_engines = 0;

  void engine_started() {
    std::lock_guard<std::mutex> lk(mu);
    ++live_engines;
  }
  void engine_stopped() {
    std::lock_guard<std::mutex> lk(mu);
    --live_engines;
    cv.notify_all();
  }
  void request_ended(uint64_t id) {
    std::lock_guard<std::mutex> lk(mu);
    live.erase(id);
    cv.notify_all();
  }
};

using service_core_ptr = std::shared_ptr<service_core>;

// Loads the model named by cfg (cfg.model, cfg.backend) and returns the hooks that build its
// engines; fills cfg.devices with every visible GPU when CUDA is used and none are listed.
result<service_hooks> model_hooks(service_config& cfg);
// The tokenizer model_hooks uses for cfg and a model of model_n_vocab ids: model.tokenizer_dir
// (a folder or builtin:NAME), else the real tokenizer of a synthetic model, else the model
// directory's. A tokenizer with more ids than the model is an error.
result<tokenizer> model_tokenizer(const service_config& cfg, int32_t model_n_vocab);
// Validates core.cfg, lays out the devices (core.plan) and wraps the backend factory with
// fault injection: what a front node and a worker node both do before spawning actors.
status prepare_core(service_core& core);
// A prepared core from a configuration and hooks.
result<service_core_ptr> make_core(const service_config& cfg, const service_hooks& hooks);

}  // namespace infer
