// Supervision and reliability through the whole actor pipeline (CPU backend, synthetic:tiny):
// the supervision tree's strategies and escalation, fault injection, circuit breakers and
// fail-fast, the hung-step watchdog, resumption without loss, poison quarantine, admission
// by deadline, graceful drain, several CPU "devices", the status (net::status_json) and the metrics.
#include <doctest/doctest.h>

#include <algorithm>
#include <set>

#include "actor-test-util.hpp"
#include "config/cli.hpp"
#include "supervision/device-plan.hpp"
#include "net/status-json.hpp"
#include "supervision/fault-injection.hpp"

using namespace infer;
using namespace infer::test;

namespace {

bool contains(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

// Supervision settings that make a test quick: restarts after about 1 ms, breakers open
// briefly, many restarts allowed (tests that want escalation lower them).
service_config sup_config(int32_t workers) {
  service_config c;
  c.workers = workers;
  c.max_running = 64;
  c.max_batch_tokens = 512;
  c.prefill_chunk = 64;
  c.queue_capacity = 4096;
  c.default_timeout_ms = 0;
  c.backoff_initial_ms = 1;
  c.backoff_max_ms = 5;
  c.max_restarts = 1000;
  c.breaker_failures = 3;
  c.breaker_open_ms = 5;
  c.step_timeout_ms = 0;
  return c;
}

result<std::unique_ptr<backend>> tiny_cpu_backend() {
  auto r = make_cpu_backend(tiny_weights(), tiny_options());
  if (!r) return r.error();
  return std::move(r.value());
}

// A service whose backends come from `make` (index = worker number).
struct sup_env {
  caf::actor_system_config caf_cfg;
  std::unique_ptr<caf::actor_system> sys;
  std::unique_ptr<service> svc;

  // make_fallback: the CPU fallback workers' engines (empty: `make` builds them too).
  // n_vocab > 0: validate prompts against that vocabulary (fake backends).
  sup_env(const service_config& cfg, backend_factory make, backend_factory make_fallback = {}, int32_t n_vocab = 0) {
    register_message_types(caf_cfg);
    sys = std::make_unique<caf::actor_system>(caf_cfg);
    auto w = tiny_weights();
    service_hooks hooks;
    hooks.tok = tokenizer::byte_level();
    hooks.n_ctx = w->cfg.n_ctx;
    hooks.n_vocab = n_vocab > 0 ? n_vocab : w->cfg.n_vocab;
    hooks.make_backend = std::move(make);
    hooks.make_fallback_backend = std::move(make_fallback);
    auto s = service::start(*sys, cfg, hooks);
    REQUIRE_MESSAGE(s.has_value(), (s ? "" : s.error().message));
    svc = std::move(s.value());
  }
  ~sup_env() {
    svc.reset();
    sys.reset();
  }
};

// Fails (throw or cuda) on the listed step numbers of this one backend; counts steps.
class scripted_backend : public backend {
 public:
  scripted_backend(std::unique_ptr<backend> inner, std::set<int64_t> fail, fault_kind k)
      : inner_(std::move(inner)), fail_(std::move(fail)), kind_(k) {}
  const char* name() const override { return inner_->name(); }
  const model_config& config() const override { return inner_->config(); }
  kv_geometry kv() const override { return inner_->kv(); }
  status step(const step_batch& b, step_output& out, logits_mode mode) override {
    if (fail_.count(n_++)) {
      if (kind_ == fault_kind::throw_exception) throw std::runtime_error("scripted fault");
      return make_status(errc::device_error, "scripted CUDA fault");
    }
    return inner_->step(b, out, mode);
  }

 private:
  std::unique_ptr<backend> inner_;
  std::set<int64_t> fail_;
  fault_kind kind_;
  int64_t n_ = 0;
};

struct workload {
  std::vector<uint64_t> ids;
  std::map<uint64_t, std::vector<int32_t>> want;
  std::map<uint64_t, std::vector<int32_t>> prompts;
};

workload submit_many(service& svc, collector& col, int n, uint64_t salt, int32_t max_tokens) {
  // References first: the requests go in together, so they spread over the workers.
  std::vector<std::vector<int32_t>> prompts, refs;
  for (int i = 0; i < n; ++i) {
    prompts.push_back(test_prompt(salt + uint64_t(i), 6 + (i * 7) % 30));
    refs.push_back(solo_greedy(prompts.back(), max_tokens));
  }
  workload w;
  for (int i = 0; i < n; ++i) {
    uint64_t id = svc.submit(greedy_request(prompts[size_t(i)], max_tokens), col.cb());
    w.ids.push_back(id);
    w.want[id] = refs[size_t(i)];
    w.prompts[id] = prompts[size_t(i)];
  }
  return w;
}

// Every request ended once with done(length) and exactly the fault-free tokens.
void check_all_done(collector& col, const workload& w) {
  for (uint64_t id : w.ids) REQUIRE(col.wait_terminal(id));
  for (uint64_t id : w.ids) {
    CHECK(col.well_formed(id));
    auto t = col.terminal(id);
    CHECK_MESSAGE(t.type == event::kind::done, t.message);
    CHECK(t.reason == finish_reason::length);
    CHECK(col.tokens(id) == w.want.at(id));  // no gap, no duplicate, the same greedy tokens
  }
}

worker_gauge gauge_of(service& svc, int32_t id) {
  for (auto& g : svc.stats().workers_snapshot())
    if (g.id == id) return g;
  return {};
}

// Waits until workers 0..n-1 have said hello, so that work spreads over all of them.
void wait_running(service& svc, int32_t n) {
  REQUIRE(eventually([&] {
    for (int32_t i = 0; i < n; ++i)
      if (gauge_of(svc, i).state != worker_gauge::run_state::running) return false;
    return true;
  }));
}

// A seed whose draws fail a step within the first 16 steps of every stream the first two
// backends of two workers can get (instance 0 or 1, worker 0 or 1): a fault surely happens.
uint64_t early_fault_seed(double rate) {
  for (uint64_t seed = 1;; ++seed) {
    bool all = true;
    for (uint64_t stream : {0ull, 1ull, 1024ull, 1025ull}) {
      fault_options o;
      o.rate = rate;
      o.seed = seed;
      o.kind = fault_kind::cuda_error;
      auto b = make_faulty_backend(std::make_unique<fake_backend>(fake_config(64, 256), kv_geometry{16, 8}), o,
                                   nullptr, stream);
      step_batch sb;
      sb.reset(2);
      std::vector<int32_t> blocks{0, 1}, toks{1};
      sb.add(0, toks, blocks, true, {}, 0);
      step_output out;
      bool failed = false;
      for (int i = 0; i < 16 && !failed; ++i) failed = !b->step(sb, out).is_ok();
      all &= failed;
    }
    if (all) return seed;
  }
}

}  // namespace

TEST_CASE("supervision: device plan groups workers by device") {
  auto p = make_device_plan(4, {0, 1});
  REQUIRE(p.n_groups() == 2);
  CHECK(p.workers[0] == std::vector<int32_t>{0, 2});
  CHECK(p.workers[1] == std::vector<int32_t>{1, 3});
  CHECK(p.device_of(3) == 1);
  auto cpu = make_device_plan(3, {});
  CHECK(cpu.n_groups() == 1);
  CHECK(cpu.device_of(2) == -1);
  CHECK(cpu.n_workers() == 3);
  auto more = make_device_plan(1, {2, 5, 7});  // every device gets a worker
  CHECK(more.n_workers() == 3);
  CHECK(more.device_of(2) == 7);
}

TEST_CASE("fault injection: seeded draws, kinds and the poison token") {
  auto make = [](fault_options o, uint64_t stream, std::shared_ptr<fault_switch> sw) {
    return make_faulty_backend(std::make_unique<fake_backend>(fake_config(1024, 256), kv_geometry{16, 64}), o, sw,
                               stream);
  };
  step_batch b;
  b.reset(4);
  std::vector<int32_t> blocks{0, 1, 2, 3};
  std::vector<int32_t> toks{1, 2, 3};
  b.add(0, toks, blocks, true, {}, 0);
  step_output out;

  fault_options o;
  o.rate = 0.3;
  o.seed = 99;
  o.kind = fault_kind::cuda_error;
  auto sw = std::make_shared<fault_switch>();
  auto a = make(o, 5, sw), a2 = make(o, 5, sw), c = make(o, 6, sw);
  std::vector<bool> pa, pa2, pc;
  for (int i = 0; i < 200; ++i) {
    pa.push_back(a->step(b, out).is_ok());
    pa2.push_back(a2->step(b, out).is_ok());
    pc.push_back(c->step(b, out).is_ok());
  }
  CHECK(pa == pa2);  // same seed and stream: the same faults
  CHECK(pa != pc);   // another stream: other faults
  const auto fails = std::count(pa.begin(), pa.end(), false);
  CHECK(fails > 20);
  CHECK(fails < 120);
  CHECK(sw->injected.load() == uint64_t(std::count(pa.begin(), pa.end(), false) * 2 +
                                        std::count(pc.begin(), pc.end(), false)));

  o.rate = 1.0;
  o.kind = fault_kind::throw_exception;
  auto t = make(o, 1, sw);
  CHECK_THROWS_AS(t->step(b, out), std::runtime_error);
  o.kind = fault_kind::cuda_error;
  auto cu = make(o, 1, sw);
  CHECK(cu->step(b, out).code == errc::device_error);
  o.kind = fault_kind::hang;
  o.hang = std::chrono::milliseconds(600000);
  auto released = std::make_shared<fault_switch>();
  released->release();  // a released switch lets a hang return at once
  auto h = make(o, 1, released);
  CHECK(h->step(b, out).code == errc::device_error);

  fault_options p;
  p.poison_token = 2;
  auto pb = make(p, 0, sw);
  auto st = pb->step(b, out);
  CHECK(!st.is_ok());
  CHECK(contains(st.message, "poison token 2"));
  step_batch clean;
  clean.reset(4);
  std::vector<int32_t> ok_toks{5, 6};
  clean.add(0, ok_toks, blocks, true, {}, 0);
  CHECK(pb->step(clean, out).is_ok());

  CHECK(parse_fault_kind("hang").value() == fault_kind::hang);
  CHECK(!parse_fault_kind("explode").has_value());
}

TEST_CASE("fault injection: config keys and command-line flags, validated") {
  auto r = parse_service_config("[fault]\nfault_rate = 0.25\nfault_seed = 7\nfault_kind = \"cuda\"\n"
                                "fault_poison_token = 42\n[supervision]\nrestart_strategy = \"one_for_all\"\n",
                                "t.toml");
  REQUIRE(r.has_value());
  CHECK(r.value().fault_rate == 0.25);
  CHECK(r.value().fault_seed == 7);
  CHECK(r.value().fault_kind == "cuda");
  CHECK(r.value().fault_poison_token == 42);
  CHECK(r.value().restart_strategy == "one_for_all");
  CHECK(validate(r.value()).is_ok());
  // Round trip through the formatter.
  auto back = parse_service_config(format_service_config(r.value()), "fmt");
  REQUIRE(back.has_value());
  CHECK(back.value() == r.value());

  auto cli = parse_command_line(std::vector<std::string>{"--fault-rate", "0.01", "--fault-seed", "3", "--fault-kind",
                                                         "hang", "--fault-poison-token", "9"});
  REQUIRE_MESSAGE(cli.run, cli.message);
  CHECK(cli.config.fault_rate == 0.01);
  CHECK(cli.config.fault_seed == 3);
  CHECK(cli.config.fault_kind == "hang");
  CHECK(cli.config.fault_poison_token == 9);
  auto bad_cli = parse_command_line(std::vector<std::string>{"--fault-kind", "melt"});
  CHECK(!bad_cli.run);
  CHECK(contains(bad_cli.message, "fault.fault_kind"));

  service_config bad;
  bad.fault_rate = 1.5;
  bad.fault_kind = "explode";
  bad.restart_strategy = "rest_for_one";
  auto v = validate(bad);
  CHECK(!v.is_ok());
  CHECK(contains(v.message, "fault.fault_rate"));
  CHECK(contains(v.message, "fault.fault_kind"));
  CHECK(contains(v.message, "supervision.restart_strategy"));
}

TEST_CASE("supervision: one_for_one restarts only the failed worker, one_for_all the whole device") {
  for (const char* strategy : {"one_for_one", "one_for_all"}) {
    CAPTURE(strategy);
    collector col;
    auto cfg = sup_config(2);
    cfg.restart_strategy = strategy;
    auto built = std::make_shared<std::atomic<int>>(0);
    // Worker 0's first backend throws at its 4th step; every other backend is healthy.
    sup_env env(cfg, [built](int32_t index) -> result<std::unique_ptr<backend>> {
      auto r = tiny_cpu_backend();
      if (!r) return r;
      if (index == 0 && built->fetch_add(1) == 0)
        return std::unique_ptr<backend>(
            new scripted_backend(std::move(r.value()), {1}, fault_kind::throw_exception));
      return r;
    });
    wait_running(*env.svc, 2);
    auto w = submit_many(*env.svc, col, 16, 100, 24);
    check_all_done(col, w);
    auto& m = env.svc->stats();
    CHECK(m.step_failures.load() == 1);
    wait_running(*env.svc, 2);  // restarts done
    CHECK(gauge_of(*env.svc, 0).restarts == 1);
    if (std::string(strategy) == "one_for_one") {
      CHECK(gauge_of(*env.svc, 1).restarts == 0);
      CHECK(m.worker_restarts.load() == 1);
    } else {
      CHECK(gauge_of(*env.svc, 1).restarts == 1);
      CHECK(m.worker_restarts.load() == 2);
    }
  }
}

TEST_CASE("supervision: a CUDA-like device fault restarts every worker of that device only") {
  collector col;
  auto cfg = sup_config(4);
  cfg.devices = {0, 1};  // two CPU "devices": workers 0, 2 on device 0; 1, 3 on device 1
  auto built1 = std::make_shared<std::atomic<int>>(0);
  sup_env env(cfg, [built1](int32_t index) -> result<std::unique_ptr<backend>> {
    auto r = tiny_cpu_backend();
    if (!r) return r;
    if (index == 1 && built1->fetch_add(1) == 0)
      return std::unique_ptr<backend>(new scripted_backend(std::move(r.value()), {1}, fault_kind::cuda_error));
    return r;
  });
  wait_running(*env.svc, 4);
  auto w = submit_many(*env.svc, col, 24, 300, 20);
  check_all_done(col, w);
  wait_running(*env.svc, 4);
  INFO(infer::net::status_json(env.svc->status()));
  INFO("step failures " << env.svc->stats().step_failures.load());
  CHECK(gauge_of(*env.svc, 1).restarts == 1);
  CHECK(gauge_of(*env.svc, 3).restarts == 1);  // same device: restarted with it
  CHECK(gauge_of(*env.svc, 0).restarts == 0);  // the other device kept serving
  CHECK(gauge_of(*env.svc, 2).restarts == 0);
  CHECK(gauge_of(*env.svc, 0).device == 0);
  CHECK(gauge_of(*env.svc, 3).device == 1);
  auto text = env.svc->stats().render_prometheus();
  CHECK(contains(text, "infer_device_restarts_total{device=\"1\"} 2"));
  CHECK(contains(text, "infer_device_restarts_total{device=\"0\"} 0"));
  CHECK(contains(text, "infer_device_kv_blocks_free{device=\"0\"}"));
  CHECK(contains(text, "infer_worker_breaker_state{worker=\"1\",device=\"1\"}"));
}

TEST_CASE("supervision: intensity exceeded escalates; the root gives the device up, the other serves") {
  collector col;
  auto cfg = sup_config(2);
  cfg.devices = {0, 1};
  cfg.max_restarts = 1;  // device supervisor and root alike
  // Device 1's worker can never build its engine.
  sup_env env(cfg, [](int32_t index) -> result<std::unique_ptr<backend>> {
    if (index == 1) return make_status(errc::device_error, "device 1 is broken");
    return tiny_cpu_backend();
  });
  CHECK(eventually([&] { return gauge_of(*env.svc, 1).state == worker_gauge::run_state::failed; }));
  CHECK(env.svc->stats().escalations.load() >= 2);  // escalated, restarted by the root, escalated again
  auto w = submit_many(*env.svc, col, 8, 500, 16);
  check_all_done(col, w);
  CHECK(gauge_of(*env.svc, 0).restarts == 0);
  auto js = infer::net::status_json(env.svc->status());
  CHECK(contains(js, "\"id\":1,\"backend\":\"cpu\",\"device\":1,\"state\":\"failed\""));
  CHECK(contains(js, "\"id\":0,\"backend\":\"cpu\",\"device\":0,\"state\":\"running\""));
}

TEST_CASE("chaos: seeded fault injection, every request ends done with the fault-free tokens") {
  for (const char* kind : {"throw", "cuda"}) {
    CAPTURE(kind);
    collector col;
    auto cfg = sup_config(2);
    cfg.fault_rate = 0.03;
    cfg.fault_seed = early_fault_seed(cfg.fault_rate);
    cfg.fault_kind = kind;
    cfg.quarantine_after = 1000;  // random faults must not condemn anyone (quarantine is tested below)
    sup_env env(cfg, [](int32_t) { return tiny_cpu_backend(); });
    wait_running(*env.svc, 2);
    auto w = submit_many(*env.svc, col, 40, 700, 32);
    check_all_done(col, w);
    wait_running(*env.svc, 2);  // no restart pending
    auto& m = env.svc->stats();
    CHECK(m.step_failures.load() > 0);
    CHECK(m.worker_restarts.load() > 0);
    CHECK(m.outcome_count("done_length") == 40);
    CHECK(contains(m.render_prometheus(), "infer_worker_restarts_total " + std::to_string(m.worker_restarts.load())));
  }
}

TEST_CASE("chaos: mixed faults (throw, cuda, hang with the watchdog), nothing lost") {
  collector col;
  auto cfg = sup_config(2);
  cfg.fault_rate = 0.03;
  cfg.fault_seed = early_fault_seed(cfg.fault_rate);
  cfg.fault_kind = "mixed";
  cfg.step_timeout_ms = 200;  // a hung step is abandoned after 200 ms
  cfg.quarantine_after = 1000;
  sup_env env(cfg, [](int32_t) { return tiny_cpu_backend(); });
  wait_running(*env.svc, 2);
  auto w = submit_many(*env.svc, col, 30, 1500, 32);
  check_all_done(col, w);
  wait_running(*env.svc, 2);
  auto& m = env.svc->stats();
  CHECK(m.step_failures.load() > 0);
  CHECK(m.worker_restarts.load() >= m.step_failures.load());  // cuda faults restart the whole device
  CHECK(m.outcome_count("done_length") == 30);
}

TEST_CASE("poison: a planted poison request is quarantined, the others complete with their tokens") {
  // The poison token: one that no other request's prompt or output contains.
  collector col;
  auto cfg = sup_config(2);
  std::vector<std::vector<int32_t>> prompts;
  std::set<int32_t> used;
  for (int i = 0; i < 30; ++i) {
    prompts.push_back(test_prompt(900 + uint64_t(i), 6 + (i * 5) % 20));
    for (int32_t t : prompts.back()) used.insert(t);
    for (int32_t t : solo_greedy(prompts.back(), 16)) used.insert(t);
  }
  int32_t poison = -1;
  for (int32_t t = 0; t < 256 && poison < 0; ++t)
    if (!used.count(t)) poison = t;
  REQUIRE(poison >= 0);
  cfg.fault_poison_token = poison;
  sup_env env(cfg, [](int32_t) { return tiny_cpu_backend(); });
  workload w;
  uint64_t bad = 0;
  std::vector<std::vector<int32_t>> refs;
  for (int i = 0; i < 30; ++i) refs.push_back(solo_greedy(prompts[size_t(i)], 16));
  wait_running(*env.svc, 2);
  for (int i = 0; i < 30; ++i) {
    auto prompt = prompts[size_t(i)];
    if (i == 11) prompt[prompt.size() / 2] = poison;
    uint64_t id = env.svc->submit(greedy_request(prompt, 16), col.cb());
    if (i == 11) {
      bad = id;
      continue;
    }
    w.ids.push_back(id);
    w.want[id] = refs[size_t(i)];
  }
  REQUIRE(col.wait_terminal(bad));
  auto t = col.terminal(bad);
  CHECK(col.well_formed(bad));
  CHECK(t.type == event::kind::error);
  CHECK(t.code == error_code::internal);
  CHECK(contains(t.message, "quarantined"));
  CHECK(contains(t.message, "poison token"));
  check_all_done(col, w);
  CHECK(env.svc->stats().quarantined.load() == 1);
  CHECK(env.svc->stats().outcome_count("internal") == 1);
}

TEST_CASE("watchdog: a hung step marks its worker failed; it is replaced and nothing is lost") {
  collector col;
  auto cfg = sup_config(1);
  cfg.step_timeout_ms = 300;
  auto sw = std::make_shared<fault_switch>();
  auto built = std::make_shared<std::atomic<int>>(0);
  auto env = std::make_unique<sup_env>(cfg, [sw, built](int32_t) -> result<std::unique_ptr<backend>> {
    auto r = tiny_cpu_backend();
    if (!r || built->fetch_add(1) != 0) return r;
    fault_options o;  // the first engine hangs on its first step (until the test ends)
    o.rate = 1.0;
    o.kind = fault_kind::hang;
    o.hang = std::chrono::milliseconds(600000);
    return make_faulty_backend(std::move(r.value()), o, sw, 0);
  });
  auto w = submit_many(*env->svc, col, 6, 1100, 12);
  check_all_done(col, w);
  auto& m = env->svc->stats();
  CHECK(m.step_timeouts.load() == 1);
  CHECK(m.worker_restarts.load() == 1);
  sw->release();  // lets the abandoned engine thread end (its backend was never reused)
  env.reset();
}

TEST_CASE("breakers: when every worker's breaker is open, new requests fail fast with unavailable") {
  collector col;
  auto cfg = sup_config(1);
  cfg.breaker_failures = 2;
  cfg.breaker_open_ms = 600000;  // stays open for the whole test
  sup_env env(cfg, [](int32_t) -> result<std::unique_ptr<backend>> {
    auto r = tiny_cpu_backend();
    if (!r) return r;
    fault_options o;
    o.rate = 1.0;
    o.kind = fault_kind::cuda_error;
    return make_faulty_backend(std::move(r.value()), o, nullptr, 0);
  });
  uint64_t first = env.svc->submit(greedy_request(test_prompt(1, 8), 8), col.cb());
  REQUIRE(col.wait_accepted(first));
  REQUIRE(eventually([&] { return contains(infer::net::status_json(env.svc->status()), "\"breaker\":\"open\""); }));
  uint64_t second = env.svc->submit(greedy_request(test_prompt(2, 8), 8), col.cb());
  REQUIRE(col.wait_terminal(second));
  auto t = col.terminal(second);
  CHECK(t.type == event::kind::error);
  CHECK(t.code == error_code::unavailable);
  CHECK(t.retry_after_ms > 0);
  CHECK(col.well_formed(second));
  // The first was accepted before: it waits (resumed) and can still be cancelled.
  env.svc->cancel(first);
  REQUIRE(col.wait_terminal(first));
  CHECK(col.terminal(first).reason == finish_reason::cancelled);
  CHECK(env.svc->stats().step_failures.load() >= 2);
  auto js = infer::net::status_json(env.svc->status());
  CHECK(contains(js, "{\"workers\":[{\"id\":0,\"backend\":"));
  CHECK(contains(js, "\"queue_depth\":"));
}

TEST_CASE("deadlines: admission rejects with timeout what the measured step times cannot meet") {
  collector col;
  sup_env env(sup_config(1), [](int32_t) { return tiny_cpu_backend(); });
  // A long prompt leaves 124 of the 1,024 positions: max_tokens 4000 means 124 decode steps.
  const auto prompt = test_prompt(4, 900);
  auto warm = env.svc->generate(greedy_request(prompt, 4000));  // measures prefill and decode steps
  REQUIRE(warm.ok);
  CHECK(warm.terminal.reason == finish_reason::length);
  CHECK(warm.tokens.size() == 124);
  const double took = warm.terminal.total_ms;
  // An eighth of what the same request took cannot be met: refused before it starts.
  auto req = greedy_request(prompt, 4000);
  req.timeout_ms = std::max<int64_t>(1, int64_t(took / 8));
  uint64_t id = env.svc->submit(req, col.cb());
  REQUIRE(col.wait_terminal(id));
  CHECK(col.well_formed(id));
  auto t = col.terminal(id);
  CHECK(t.code == error_code::timeout);
  CHECK(contains(t.message, "cannot be met"));
  std::lock_guard<std::mutex> lk(col.mu);
  CHECK(col.recs[id].events.size() == 1);  // no accepted: rejected at admission
}

// Issue 13.8: the estimate multiplied one average of all steps (prefill ones included) by an
// unclamped max_tokens, and refused what an idle server finishes well inside the deadline.
TEST_CASE("deadlines: max_tokens past the context and prefill steps do not inflate the estimate") {
  collector col;
  sup_env env(sup_config(1), [](int32_t) { return tiny_cpu_backend(); });
  // 24 positions left: 4096 asked, 24 possible. The old estimate (4096 times one average of
  // every step) came to far more than four times what the request takes.
  const auto prompt = test_prompt(5, 1000);
  auto warm = env.svc->generate(greedy_request(prompt, 4096));
  REQUIRE(warm.ok);
  CHECK(warm.tokens.size() == 24);
  const double took = warm.terminal.total_ms;
  // Four times what it took: the same request again must be served.
  auto again = greedy_request(prompt, 4096);
  again.timeout_ms = std::max<int64_t>(50, int64_t(took * 4));
  auto r = env.svc->generate(again);
  INFO(r.terminal.message);
  CHECK(r.ok);
  CHECK(r.terminal.reason == finish_reason::length);
  CHECK(r.tokens.size() == 24);
}

// Issue 13.7: readiness said 200 while every running worker's breaker was open.
TEST_CASE("readiness: not ready while every breaker is open, and the reason says why; draining says draining") {
  collector col;
  auto cfg = sup_config(1);
  cfg.breaker_failures = 2;
  cfg.breaker_open_ms = 600000;  // stays open for the whole test
  sup_env env(cfg, [](int32_t) -> result<std::unique_ptr<backend>> {
    auto r = tiny_cpu_backend();
    if (!r) return r;
    fault_options o;
    o.rate = 1.0;
    o.kind = fault_kind::throw_exception;
    return make_faulty_backend(std::move(r.value()), o, nullptr, 0);
  });
  REQUIRE(eventually([&] { return env.svc->ready(); }));  // a worker up, its breaker closed
  CHECK(env.svc->not_ready_reason().empty());
  uint64_t first = env.svc->submit(greedy_request(test_prompt(1, 8), 8), col.cb());
  REQUIRE(eventually([&] { return contains(infer::net::status_json(env.svc->status()), "\"breaker\":\"open\""); }));
  // The worker is running again (restarted), but its breaker is open for ten minutes.
  REQUIRE(eventually([&] { return contains(infer::net::status_json(env.svc->status()), "\"state\":\"running\""); }));
  CHECK_FALSE(env.svc->ready());
  CHECK(contains(env.svc->not_ready_reason(), "circuit breaker is open"));
  env.svc->cancel(first);
  REQUIRE(col.wait_terminal(first));
  env.svc->shutdown(std::chrono::milliseconds(1));
  CHECK_FALSE(env.svc->ready());
  CHECK(contains(env.svc->not_ready_reason(), "draining"));
}

TEST_CASE("shutdown: drain lets requests in flight finish, then refuses new ones") {
  collector col;
  sup_env env(sup_config(2), [](int32_t) { return tiny_cpu_backend(); });
  auto w = submit_many(*env.svc, col, 12, 1300, 24);
  CHECK(env.svc->shutdown(std::chrono::milliseconds(600000)) == 0);  // none needed cancelling
  check_all_done(col, w);
  uint64_t late = env.svc->submit(greedy_request(test_prompt(5, 8), 8), col.cb());
  REQUIRE(col.wait_terminal(late));
  CHECK(col.terminal(late).code == error_code::unavailable);
}

// ---- degradation -------------------------------------------------------------------------

namespace {

// A primary engine that fails every step with a CUDA-like device error (a dead GPU).
result<std::unique_ptr<backend>> dead_gpu_backend() {
  auto r = tiny_cpu_backend();
  if (!r) return r;
  fault_options o;
  o.rate = 1.0;
  o.kind = fault_kind::cuda_error;
  return make_faulty_backend(std::move(r.value()), o, nullptr, 0);
}

bool is_fallback_done(collector& col, uint64_t id) {
  auto t = col.terminal(id);
  return t.type == event::kind::done && t.cpu_fallback && t.max_tokens_capped_to == 0 && t.degraded();
}

}  // namespace

TEST_CASE("device plan: CPU fallback workers come last, in a group of their own") {
  auto p = make_device_plan(3, {0, 1}, 2);
  REQUIRE(p.n_groups() == 3);
  CHECK(p.n_primary == 3);
  CHECK(p.n_workers() == 5);
  CHECK(p.workers[0] == std::vector<int32_t>{0, 2});
  CHECK(p.workers[1] == std::vector<int32_t>{1});
  CHECK(p.workers[2] == std::vector<int32_t>{3, 4});
  CHECK(p.labels[2] == k_fallback_device);
  CHECK(p.group_of(2) == 0);  // primaries still round-robin over the devices
  CHECK(p.group_of(4) == 2);
  CHECK(p.device_of(3) == k_fallback_device);
  CHECK(!p.is_fallback(2));
  CHECK(p.is_fallback(3));
  CHECK(!p.is_fallback(5));
  auto none = make_device_plan(2, {});
  CHECK(none.fallback_group == -1);
  CHECK(!none.is_fallback(1));
  CHECK(!none.is_fallback(2));
  // A front node with only remote workers: no primary group; its fallback workers are 0..n-1.
  auto front = make_device_plan(0, {}, 1);
  REQUIRE(front.n_groups() == 1);
  CHECK(front.n_primary == 0);
  CHECK(front.n_workers() == 1);
  CHECK(front.fallback_group == 0);
  CHECK(front.is_fallback(0));
  CHECK(!front.is_fallback(1));  // the first remote worker's index
  CHECK(make_device_plan(0, {0, 1}).n_groups() == 0);
}

TEST_CASE("degradation: config keys, validation, command line") {
  auto r = parse_service_config("[degradation]\nfallback_cpu_workers = 2\nfallback_after_ms = 250\n"
                                "fallback_kv_memory_mb = 64\noverload_queue_fraction = 0.5\n"
                                "overload_after_ms = 3000\noverload_max_tokens = 32\n",
                                "d.toml");
  REQUIRE_MESSAGE(r.has_value(), (r ? "" : r.error().message));
  CHECK(r.value().fallback_cpu_workers == 2);
  CHECK(r.value().fallback_after_ms == 250);
  CHECK(r.value().fallback_kv_memory_mb == 64);
  CHECK(r.value().overload_queue_fraction == 0.5);
  CHECK(r.value().overload_after_ms == 3000);
  CHECK(r.value().overload_max_tokens == 32);
  CHECK(validate(r.value()).is_ok());
  auto back = parse_service_config(format_service_config(r.value()), "fmt");
  REQUIRE(back.has_value());
  CHECK(back.value() == r.value());

  auto cli = parse_command_line(std::vector<std::string>{"--set", "degradation.overload_max_tokens=8"});
  REQUIRE_MESSAGE(cli.run, cli.message);
  CHECK(cli.config.overload_max_tokens == 8);

  service_config bad;
  bad.fallback_cpu_workers = -1;
  bad.fallback_after_ms = -5;
  bad.fallback_kv_memory_mb = 0;
  bad.overload_queue_fraction = 0.0;
  bad.overload_after_ms = -1;
  bad.overload_max_tokens = bad.max_tokens_limit + 1;
  auto v = validate(bad);
  CHECK(!v.is_ok());
  for (const char* key : {"degradation.fallback_cpu_workers", "degradation.fallback_after_ms",
                          "degradation.fallback_kv_memory_mb", "degradation.overload_queue_fraction",
                          "degradation.overload_after_ms", "degradation.overload_max_tokens"})
    CHECK_MESSAGE(contains(v.message, key), key);
  auto typo = parse_service_config("[degradation]\nfallback_cpu_worker = 1\n", "t.toml");
  REQUIRE(!typo.has_value());
  CHECK(contains(typo.error().message, "did you mean degradation.fallback_cpu_workers?"));
}

TEST_CASE("degradation: CPU fallback workers serve while every primary's breaker is open, and say so") {
  collector col;
  auto cfg = sup_config(1);
  cfg.fallback_cpu_workers = 1;
  cfg.breaker_failures = 1;
  cfg.breaker_open_ms = 600000;  // the dead GPU's breaker stays open for the whole test
  auto primaries = std::make_shared<std::atomic<int>>(0);
  auto fallbacks = std::make_shared<std::atomic<int>>(0);
  sup_env env(
      cfg,
      [primaries](int32_t index) -> result<std::unique_ptr<backend>> {
        if (index != 0) return make_status(errc::internal, "primary factory asked for worker " + std::to_string(index));
        primaries->fetch_add(1);
        return dead_gpu_backend();
      },
      [fallbacks](int32_t index) -> result<std::unique_ptr<backend>> {
        if (index != 1) return make_status(errc::internal, "fallback factory asked for worker " + std::to_string(index));
        fallbacks->fetch_add(1);
        return tiny_cpu_backend();
      });
  wait_running(*env.svc, 2);
  CHECK(gauge_of(*env.svc, 1).device == k_fallback_device);
  // The first requests go to the primary (healthy until proven otherwise); its step fails,
  // its breaker opens, and they resume on the fallback worker.
  auto w1 = submit_many(*env.svc, col, 8, 2100, 12);
  check_all_done(col, w1);
  REQUIRE(eventually([&] { return contains(infer::net::status_json(env.svc->status()), "\"breaker\":\"open\""); }));
  // With the primary's breaker open, new requests are not failed fast: the fallback serves them.
  auto w2 = submit_many(*env.svc, col, 8, 2200, 12);
  check_all_done(col, w2);
  for (auto* w : {&w1, &w2})
    for (uint64_t id : w->ids) CHECK(is_fallback_done(col, id));
  auto& m = env.svc->stats();
  CHECK(m.degraded_cpu_fallback.load() == 16);
  CHECK(m.degraded_max_tokens_capped.load() == 0);
  CHECK(m.outcome_count("done_length") == 16);
  CHECK(m.step_failures.load() >= 1);
  CHECK(fallbacks->load() == 1);  // the fallback engine never failed
  auto text = m.render_prometheus();
  CHECK(contains(text, "infer_degraded_requests_total{kind=\"cpu_fallback\"} 16"));
  CHECK(contains(text, "infer_degradation_active{kind=\"cpu_fallback\"} 1"));
  CHECK(contains(text, "infer_degradation_active{kind=\"max_tokens_capped\"} 0"));
}

TEST_CASE("degradation: with a healthy primary the fallback workers take nothing") {
  collector col;
  auto cfg = sup_config(1);
  cfg.fallback_cpu_workers = 1;
  sup_env env(cfg, [](int32_t) { return tiny_cpu_backend(); }, [](int32_t) { return tiny_cpu_backend(); });
  wait_running(*env.svc, 2);
  auto w = submit_many(*env.svc, col, 12, 2300, 12);
  check_all_done(col, w);
  for (uint64_t id : w.ids) CHECK(!col.terminal(id).degraded());
  CHECK(env.svc->stats().degraded_cpu_fallback.load() == 0);
  CHECK(contains(env.svc->stats().render_prometheus(), "infer_degradation_active{kind=\"cpu_fallback\"} 0"));
}

TEST_CASE("degradation: a primary that stays down past fallback_after_ms hands over to the fallback") {
  collector col;
  auto cfg = sup_config(2);
  cfg.devices = {0, 1};  // two primary devices, both broken: their engines never build
  cfg.fallback_cpu_workers = 1;
  cfg.fallback_after_ms = 20;
  cfg.backoff_initial_ms = 50;
  cfg.backoff_max_ms = 200;
  // No fallback factory: make_backend builds the fallback worker too (index 2, after the primaries).
  sup_env env(cfg, [](int32_t index) -> result<std::unique_ptr<backend>> {
    if (index < 2) return make_status(errc::device_error, "GPU " + std::to_string(index) + " is gone");
    return tiny_cpu_backend();
  });
  REQUIRE(eventually([&] { return gauge_of(*env.svc, 2).state == worker_gauge::run_state::running; }));
  auto w = submit_many(*env.svc, col, 6, 2400, 10);
  check_all_done(col, w);
  for (uint64_t id : w.ids) CHECK(is_fallback_done(col, id));
  CHECK(env.svc->stats().degraded_cpu_fallback.load() == 6);
  CHECK(contains(infer::net::status_json(env.svc->status()), "\"id\":2,\"backend\":\"cpu\",\"device\":-2,\"state\":\"running\""));
}

TEST_CASE("degradation: under sustained overload max_tokens of new requests is capped, and said so") {
  for (int64_t after_ms : {int64_t(0), int64_t(600000)}) {
    CAPTURE(after_ms);
    collector col;
    service_config cfg;
    cfg.workers = 1;
    cfg.max_running = 1;
    cfg.queue_capacity = 10;
    cfg.default_timeout_ms = 0;
    cfg.overload_queue_fraction = 0.5;  // 5 queued requests
    cfg.overload_after_ms = after_ms;   // 600 s: overloaded, but never for long enough
    cfg.overload_max_tokens = 4;
    service_env env(cfg);
    env.gate->close();
    std::vector<std::vector<int32_t>> prompts;
    for (int i = 0; i < 9; ++i) prompts.push_back(test_prompt(2500 + uint64_t(i), 6 + i));
    std::vector<uint64_t> ids;
    ids.push_back(env.svc->submit(greedy_request(prompts[0], 20), col.cb()));
    env.gate->wait_held();  // the first runs (held at the gate), the next ones queue
    for (int i = 1; i <= 5; ++i) ids.push_back(env.svc->submit(greedy_request(prompts[size_t(i)], 20), col.cb()));
    REQUIRE(eventually([&] { return env.svc->stats().queue_depth.load() == 5; }));
    const uint64_t big = env.svc->submit(greedy_request(prompts[6], 20), col.cb());
    const uint64_t small = env.svc->submit(greedy_request(prompts[7], 3), col.cb());  // under the cap
    // min_tokens above the cap: capped to its min_tokens, never below (it was capped to 4,
    // fewer tokens than the request said it needs, while the batcher owned the cap).
    auto with_min = greedy_request(prompts[8], 20);
    with_min.sampling.min_tokens = 6;
    const uint64_t needs6 = env.svc->submit(with_min, col.cb());
    REQUIRE(col.wait_accepted(big));
    REQUIRE(col.wait_accepted(small));
    REQUIRE(col.wait_accepted(needs6));
    const bool capping = after_ms == 0;
    CHECK(env.svc->stats().max_tokens_cap_active.load() == (capping ? 1 : 0));
    env.gate->release();
    for (uint64_t id : ids) {
      REQUIRE(col.wait_terminal(id));
      auto t = col.terminal(id);
      CHECK(t.type == event::kind::done);
      CHECK(t.completion_tokens == 20);  // admitted before the overload: untouched
      CHECK(!t.degraded());
    }
    REQUIRE(col.wait_terminal(big));
    REQUIRE(col.wait_terminal(small));
    auto tb = col.terminal(big);
    CHECK(col.well_formed(big));
    CHECK(tb.type == event::kind::done);
    CHECK(tb.reason == finish_reason::length);
    CHECK(tb.max_tokens_capped_to == (capping ? 4 : 0));
    CHECK(!tb.cpu_fallback);
    CHECK(col.tokens(big) == solo_greedy(prompts[6], capping ? 4 : 20));
    auto ts = col.terminal(small);
    CHECK(ts.max_tokens_capped_to == 0);
    CHECK(col.tokens(small) == solo_greedy(prompts[7], 3));
    REQUIRE(col.wait_terminal(needs6));
    auto t6 = col.terminal(needs6);
    CHECK(col.well_formed(needs6));
    CHECK(t6.type == event::kind::done);
    CHECK(t6.max_tokens_capped_to == (capping ? 6 : 0));
    CHECK(t6.completion_tokens == (capping ? 6 : 20));
    auto& m = env.svc->stats();
    CHECK(m.degraded_max_tokens_capped.load() == (capping ? 2u : 0u));
    CHECK(contains(m.render_prometheus(), std::string("infer_degraded_requests_total{kind=\"max_tokens_capped\"} ") +
                                              (capping ? "2" : "0")));
    CHECK(eventually([&] { return m.max_tokens_cap_active.load() == 0; }));  // the queue drained
  }
}

// ---- suspects: retried together first, then alone ---------------------------------------

namespace {

// Every step the engines ran: the requests in it (by tag) and whether it failed.
struct step_log {
  std::mutex mu;
  std::vector<std::pair<std::set<int32_t>, bool>> steps;
  bool failed_once = false;
};

// fake_backend that knows which request each sequence belongs to: its tag is the first
// prompt token, read at its first prefill chunk and remembered by its first KV block. It
// fails every step holding the poison tag, and (fail_wide) once the first step holding at
// least three sequences; it logs every step.
class tagging_backend : public backend {
 public:
  tagging_backend(int32_t poison, bool fail_wide, std::shared_ptr<step_log> log)
      : inner_(fake_config(256, 128), kv_geometry{16, 512}), poison_(poison), fail_wide_(fail_wide),
        log_(std::move(log)) {}
  const char* name() const override { return "fake"; }
  const model_config& config() const override { return inner_.config(); }
  kv_geometry kv() const override { return inner_.kv(); }
  status step(const step_batch& b, step_output& out, logits_mode mode) override {
    std::set<int32_t> tags;
    for (int32_t i = 0; i < b.n_seqs(); ++i) {
      const int32_t first_block = b.block_tables[size_t(i) * size_t(b.max_blocks_per_seq)];
      if (b.n_past[size_t(i)] == 0) tag_of_block_[first_block] = b.tokens[size_t(b.seq_start[size_t(i)])];
      auto it = tag_of_block_.find(first_block);
      tags.insert(it == tag_of_block_.end() ? -1 : it->second);
    }
    bool fail = tags.count(poison_) > 0;
    {
      std::lock_guard<std::mutex> lk(log_->mu);
      if (fail_wide_ && !log_->failed_once && tags.size() >= 3) fail = log_->failed_once = true;
      log_->steps.emplace_back(tags, fail);
    }
    if (fail) return make_status(errc::internal, "tagged fault");
    return inner_.step(b, out, mode);
  }

 private:
  fake_backend inner_;
  std::map<int32_t, int32_t> tag_of_block_;
  int32_t poison_;
  bool fail_wide_;
  std::shared_ptr<step_log> log_;
};

std::vector<int32_t> tagged_prompt(int32_t tag, uint64_t salt) {
  auto p = test_prompt(salt, 5 + int32_t(salt % 7));
  for (auto& t : p) t %= 128;
  p.insert(p.begin(), tag);
  return p;
}

}  // namespace

TEST_CASE("suspects: a failed step's sequences are retried together, without others, and cleared") {
  auto log = std::make_shared<step_log>();
  collector col;
  auto cfg = sup_config(2);
  // Small steps (a few prefill chunks each), so that a failed step holds only some of its
  // worker's sequences: retried anyhow, the suspects would mix with the others.
  cfg.max_running = 8;
  cfg.max_batch_tokens = 24;
  cfg.prefill_chunk = 8;
  cfg.breaker_failures = 1000;
  sup_env env(cfg, [log](int32_t) -> result<std::unique_ptr<backend>> {
    return std::unique_ptr<backend>(new tagging_backend(-1, true, log));
  }, {}, 128);
  wait_running(*env.svc, 2);
  std::map<uint64_t, std::vector<int32_t>> want;
  for (int32_t tag = 1; tag <= 60; ++tag) {
    auto p = tagged_prompt(tag, 3000 + uint64_t(tag));
    uint64_t id = env.svc->submit(greedy_request(p, 12), col.cb());
    want[id] = fake_reference(p, 12, 128, 256);
  }
  for (auto& [id, tokens] : want) {
    REQUIRE(col.wait_terminal(id));
    CHECK(col.well_formed(id));
    CHECK(col.terminal(id).type == event::kind::done);
    CHECK(col.tokens(id) == tokens);
  }
  auto& m = env.svc->stats();
  CHECK(m.step_failures.load() == 1);
  CHECK(m.quarantined.load() == 0);
  std::lock_guard<std::mutex> lk(log->mu);
  size_t f = 0;
  while (f < log->steps.size() && !log->steps[f].second) ++f;
  REQUIRE(f < log->steps.size());
  const auto suspects = log->steps[f].first;
  REQUIRE(suspects.size() >= 3);
  // Until one step holds all of them, every step that holds any of them holds nothing else.
  bool together = false;
  for (size_t k = f + 1; k < log->steps.size() && !together; ++k) {
    const auto& tags = log->steps[k].first;
    bool any = false, only = true;
    for (int32_t t : tags) {
      if (suspects.count(t)) any = true;
      else only = false;
    }
    if (!any) continue;
    INFO("step " << k << " after the failure at step " << f);
    CHECK(only);
    together = tags == suspects;
  }
  CHECK(together);
}

TEST_CASE("suspects: a poison request fails with its group, then alone, and only it is quarantined") {
  auto log = std::make_shared<step_log>();
  collector col;
  auto cfg = sup_config(2);
  cfg.max_running = 8;
  cfg.max_batch_tokens = 24;
  cfg.prefill_chunk = 8;
  cfg.breaker_failures = 1000;
  cfg.quarantine_after = 2;
  const int32_t poison = 100;
  sup_env env(cfg, [log, poison](int32_t) -> result<std::unique_ptr<backend>> {
    return std::unique_ptr<backend>(new tagging_backend(poison, false, log));
  }, {}, 128);
  wait_running(*env.svc, 2);
  std::map<uint64_t, std::vector<int32_t>> want;
  uint64_t bad = 0;
  for (int32_t tag = 1; tag <= 60; ++tag) {
    if (tag == 3) bad = env.svc->submit(greedy_request(tagged_prompt(poison, 77), 12), col.cb());
    auto p = tagged_prompt(tag, 4000 + uint64_t(tag));
    uint64_t id = env.svc->submit(greedy_request(p, 12), col.cb());
    want[id] = fake_reference(p, 12, 128, 256);
  }
  REQUIRE(col.wait_terminal(bad));
  auto t = col.terminal(bad);
  CHECK(t.type == event::kind::error);
  CHECK(t.code == error_code::internal);
  CHECK(contains(t.message, "quarantined"));
  for (auto& [id, tokens] : want) {
    REQUIRE(col.wait_terminal(id));
    CHECK(col.terminal(id).type == event::kind::done);
    CHECK(col.tokens(id) == tokens);
  }
  auto& m = env.svc->stats();
  CHECK(m.quarantined.load() == 1);
  std::lock_guard<std::mutex> lk(log->mu);
  std::vector<std::set<int32_t>> failed;
  for (auto& [tags, f] : log->steps)
    if (f) failed.push_back(tags);
  // 1: the poison among others; 2: its group retried together (a subset of the first);
  // 3, 4: alone, quarantine_after times. No request outside the first failed step ever
  // shares a failed step with the poison.
  REQUIRE(failed.size() == 4);
  CHECK(m.step_failures.load() == 4);
  for (int32_t tg : failed[1]) CHECK(failed[0].count(tg) == 1);
  CHECK(failed[2] == std::set<int32_t>{poison});
  CHECK(failed[3] == std::set<int32_t>{poison});
}
