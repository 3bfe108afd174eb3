// Supervision and reliability through the whole actor pipeline (CPU backend, synthetic:tiny):
// the supervision tree's strategies and escalation, fault injection, circuit breakers and
// fail-fast, the hung-step watchdog, resumption without loss, poison quarantine, admission
// by deadline, graceful drain, several CPU "devices", status_json and the metrics.
#include <doctest/doctest.h>

#include <algorithm>
#include <set>

#include "actor-test-util.hpp"
#include "config/cli.hpp"
#include "supervision/device-plan.hpp"
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

  sup_env(const service_config& cfg, backend_factory make) {
    register_message_types(caf_cfg);
    sys = std::make_unique<caf::actor_system>(caf_cfg);
    auto w = tiny_weights();
    service_hooks hooks;
    hooks.tok = tokenizer::byte_level();
    hooks.n_ctx = w->cfg.n_ctx;
    hooks.n_vocab = w->cfg.n_vocab;
    hooks.make_backend = std::move(make);
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
  INFO(env.svc->status_json());
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
  auto js = env.svc->status_json();
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
  REQUIRE(eventually([&] { return contains(env.svc->status_json(), "\"breaker\":\"open\""); }));
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
  auto js = env.svc->status_json();
  CHECK(contains(js, "{\"workers\":[{\"id\":0,\"backend\":"));
  CHECK(contains(js, "\"queue_depth\":"));
}

TEST_CASE("deadlines: admission rejects with timeout what the measured step times cannot meet") {
  collector col;
  sup_env env(sup_config(1), [](int32_t) { return tiny_cpu_backend(); });
  auto warm = env.svc->generate(greedy_request(test_prompt(3, 8), 16));  // measures step times
  REQUIRE(warm.ok);
  auto req = greedy_request(test_prompt(4, 8), 4000);
  req.timeout_ms = 100;
  uint64_t id = env.svc->submit(req, col.cb());
  REQUIRE(col.wait_terminal(id));
  CHECK(col.well_formed(id));
  auto t = col.terminal(id);
  CHECK(t.code == error_code::timeout);
  CHECK(contains(t.message, "cannot be met"));
  std::lock_guard<std::mutex> lk(col.mu);
  CHECK(col.recs[id].events.size() == 1);  // no accepted: rejected at admission
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
