// The actor pipeline end to end on the CPU backend with synthetic:tiny: continuous
// batching, priorities, overload, cancel, deadlines, worker restart, the embedded API.
// No timing assertion: where a test needs the engine busy, it holds steps at a gate.
#include <doctest/doctest.h>

#include <set>
#include <thread>

#include "actor-test-util.hpp"
#include "base/prompt-limit.hpp"

using namespace infer;
using namespace infer::test;

namespace {

service_config base_config() {
  service_config c;
  c.model = "synthetic:tiny";
  c.workers = 1;
  c.max_batch_tokens = 256;
  c.max_running = 64;
  c.prefill_chunk = 64;
  c.queue_capacity = 256;
  c.default_timeout_ms = 0;  // no deadline unless a test sets one
  return c;
}

}  // namespace

TEST_CASE("actors: 64 concurrent greedy requests produce exactly their solo tokens") {
  collector col;
  service_env env(base_config());
  std::map<uint64_t, std::vector<int32_t>> want;
  std::vector<uint64_t> ids;
  std::vector<generate_request> reqs;
  std::vector<std::vector<int32_t>> refs;
  for (int i = 0; i < 64; ++i) {  // references first, so that the submissions come together
    auto prompt = test_prompt(uint64_t(i), 1 + (i * 37) % 200);  // 1 .. 200 tokens: chunked prefill too
    int32_t n = 6 + i % 11;
    refs.push_back(solo_greedy(prompt, n));
    reqs.push_back(greedy_request(prompt, n));
  }
  for (int i = 0; i < 64; ++i) {
    uint64_t id = env.svc->submit(reqs[size_t(i)], col.cb());
    want[id] = refs[size_t(i)];
    ids.push_back(id);
  }
  for (uint64_t id : ids) REQUIRE(col.wait_terminal(id));
  for (uint64_t id : ids) {
    CHECK(col.well_formed(id));
    event t = col.terminal(id);
    CHECK(t.type == event::kind::done);
    CHECK(t.reason == finish_reason::length);
    CHECK_MESSAGE(col.tokens(id) == want[id], "request " << id);
    CHECK(t.completion_tokens == int32_t(want[id].size()));
  }
  auto& m = env.svc->stats();
  CHECK(m.outcome_count("done_length") == 64);
  CHECK(m.batch_size.quantile(1.0) > 16);  // they really ran together
}

TEST_CASE("actors: sequences join and leave a running batch mid-generation") {
  collector col;
  service_env env(base_config());
  auto pa = test_prompt(100, 20);
  auto pb = test_prompt(101, 30);
  auto pc = test_prompt(102, 5);
  uint64_t a = env.svc->submit(greedy_request(pa, 300), col.cb());
  REQUIRE(col.wait_tokens(a, 5));
  uint64_t b = env.svc->submit(greedy_request(pb, 10), col.cb());  // joins while a decodes
  REQUIRE(col.wait_terminal(b));
  // b left at its 10th token while a kept going.
  CHECK(col.recs.at(a).terminals == 0);
  size_t a_at_b_done = col.tokens(a).size();
  CHECK(a_at_b_done < 300);
  uint64_t c = env.svc->submit(greedy_request(pc, 7), col.cb());  // joins after b left
  REQUIRE(col.wait_terminal(c));
  REQUIRE(col.wait_terminal(a));
  CHECK(col.tokens(a) == solo_greedy(pa, 300));
  CHECK(col.tokens(b) == solo_greedy(pb, 10));
  CHECK(col.tokens(c) == solo_greedy(pc, 7));
  for (auto id : {a, b, c}) CHECK(col.well_formed(id));
  CHECK(env.svc->stats().batch_size.quantile(1.0) >= 2);
}

TEST_CASE("actors: priority order under a full queue, and overloaded at once when full") {
  auto cfg = base_config();
  cfg.max_running = 1;
  cfg.queue_capacity = 8;
  collector col;
  service_env env(cfg);
  uint64_t blocker = env.svc->submit(greedy_request(test_prompt(1, 8), 1000), col.cb());
  REQUIRE(col.wait_tokens(blocker, 1));
  env.gate->close();  // the worker holds blocker and is stuck: the queue fills
  env.gate->wait_held();
  const priority order[8] = {priority::low,  priority::normal, priority::high, priority::low,
                             priority::normal, priority::high, priority::low,  priority::high};
  std::vector<uint64_t> high, normal, low;
  for (int i = 0; i < 8; ++i) {
    auto r = greedy_request(test_prompt(10 + uint64_t(i), 4 + i), 3);
    r.prio = order[i];
    uint64_t id = env.svc->submit(r, col.cb());
    REQUIRE(col.wait_accepted(id));  // one by one, so arrival order is submission order
    CHECK(col.terminal(id).type == event::kind::accepted);  // no terminal yet: terminal() gives a default
    (order[i] == priority::high ? high : order[i] == priority::normal ? normal : low).push_back(id);
  }
  CHECK(env.svc->stats().queue_depth.load() == 8);
  // Full: the next one is refused at once, while the engine is still held.
  uint64_t extra = env.svc->submit(greedy_request(test_prompt(99, 4), 3), col.cb());
  REQUIRE(col.wait_terminal(extra));
  event t = col.terminal(extra);
  CHECK(t.type == event::kind::error);
  CHECK(t.code == error_code::overloaded);
  CHECK(t.retry_after_ms > 0);
  CHECK(col.well_formed(extra));
  CHECK(col.recs.at(blocker).terminals == 0);

  env.svc->cancel(blocker);
  env.gate->release();
  std::vector<uint64_t> all;
  for (auto* v : {&high, &normal, &low}) all.insert(all.end(), v->begin(), v->end());
  for (uint64_t id : all) REQUIRE(col.wait_terminal(id));
  std::vector<uint64_t> started;
  {
    std::lock_guard<std::mutex> lk(col.mu);
    for (uint64_t id : col.first_token_order)
      if (id != blocker) started.push_back(id);
  }
  CHECK(started == all);  // high (FIFO), then normal, then low
  for (uint64_t id : all) {
    CHECK(col.well_formed(id));
    CHECK(col.terminal(id).type == event::kind::done);
    CHECK(col.terminal(id).completion_tokens == 3);
  }
  CHECK(col.terminal(blocker).reason == finish_reason::cancelled);
  CHECK(env.svc->stats().outcome_count("overloaded") == 1);
}

TEST_CASE("actors: cancel in the queue and mid-generation frees KV blocks at once") {
  auto cfg = base_config();
  cfg.max_running = 1;
  collector col;
  service_env env(cfg);
  auto& m = env.svc->stats();
  uint64_t running = env.svc->submit(greedy_request(test_prompt(7, 40), 1000), col.cb());
  REQUIRE(col.wait_tokens(running, 2));
  env.gate->close();
  env.gate->wait_held();
  uint64_t queued = env.svc->submit(greedy_request(test_prompt(8, 10), 5), col.cb());
  REQUIRE(col.wait_accepted(queued));
  CHECK(m.queue_depth.load() == 1);
  CHECK(m.kv_blocks_used.load() > 0);

  env.svc->cancel(queued);
  REQUIRE(col.wait_terminal(queued));
  CHECK(col.terminal(queued).type == event::kind::done);
  CHECK(col.terminal(queued).reason == finish_reason::cancelled);
  CHECK(col.terminal(queued).completion_tokens == 0);
  CHECK(m.queue_depth.load() == 0);

  // Mid-generation, while its step is stuck in the engine: the blocks are freed
  // before the terminal event is emitted.
  env.svc->cancel(running);
  REQUIRE(col.wait_terminal(running));
  CHECK(col.terminal(running).reason == finish_reason::cancelled);
  CHECK(col.terminal(running).completion_tokens >= 2);
  CHECK(m.kv_blocks_used.load() == 0);
  CHECK(m.running_sequences.load() == 0);
  env.gate->release();
  CHECK(col.well_formed(queued));
  CHECK(col.well_formed(running));
  CHECK(m.outcome_count("cancelled") == 2);
  env.svc->cancel(running);  // a second cancel after the end changes nothing
  // The service still works afterwards.
  auto c = env.svc->generate(greedy_request(test_prompt(9, 12), 4));
  CHECK(c.ok);
  CHECK(c.tokens == solo_greedy(test_prompt(9, 12), 4));
}

TEST_CASE("actors: submit(tasks) gives handles that wait and cancel") {
  service_env env(base_config());
  // Steps are held at the gate, so the cancel surely lands while the second task runs.
  env.gate->close();
  std::vector<generate_request> tasks{greedy_request(test_prompt(3, 8), 5), greedy_request(test_prompt(4, 8), 1000)};
  auto handles = env.svc->submit(std::move(tasks));
  REQUIRE(handles.size() == 2);
  CHECK(handles[0].request_id() != handles[1].request_id());
  env.gate->wait_held();
  handles[1].cancel();
  handles[1].cancel();  // idempotent
  env.gate->release();
  completion a = handles[0].get(), b = handles[1].get();
  CHECK(a.ok);
  CHECK(a.request_id == handles[0].request_id());
  CHECK(a.tokens == solo_greedy(test_prompt(3, 8), 5));
  CHECK(b.ok);
  CHECK(b.terminal.reason == finish_reason::cancelled);
  CHECK(b.tokens.size() < 1000);
}

TEST_CASE("actors: deadlines expire in the queue and mid-generation") {
  auto cfg = base_config();
  cfg.max_running = 1;
  collector col;
  service_env env(cfg);
  auto& m = env.svc->stats();
  auto r = greedy_request(test_prompt(20, 16), 1000);
  r.timeout_ms = 3000;  // ample for its first token; the gate then holds it past the deadline
  uint64_t mid = env.svc->submit(r, col.cb());
  REQUIRE(col.wait_tokens(mid, 1));
  env.gate->close();  // mid cannot finish its 1000 tokens: its deadline passes while it runs
  auto q = greedy_request(test_prompt(21, 16), 4);
  q.timeout_ms = 50;  // stuck behind mid (max_running 1): expires in the queue
  uint64_t queued = env.svc->submit(q, col.cb());
  REQUIRE(col.wait_terminal(queued));
  event tq = col.terminal(queued);
  CHECK(tq.type == event::kind::error);
  CHECK(tq.code == error_code::timeout);
  CHECK(col.tokens(queued).empty());
  REQUIRE(col.wait_terminal(mid));
  event tm = col.terminal(mid);
  CHECK(tm.type == event::kind::error);
  CHECK(tm.code == error_code::timeout);
  CHECK(!col.tokens(mid).empty());
  CHECK(col.tokens(mid).size() < 1000);
  CHECK(m.kv_blocks_used.load() == 0);
  CHECK(m.queue_depth.load() == 0);
  env.gate->release();
  CHECK(col.well_formed(queued));
  CHECK(col.well_formed(mid));
  CHECK(m.outcome_count("timeout") == 2);
}

TEST_CASE("actors: a small KV cache preempts and recomputes; a sequence that can never fit is refused") {
  collector col;
  service_env env(base_config(), false, /*kv_blocks=*/8);  // 128 tokens of cache
  std::vector<uint64_t> ids;
  std::map<uint64_t, std::vector<int32_t>> want;
  std::vector<std::vector<int32_t>> refs;
  for (int i = 0; i < 6; ++i) refs.push_back(solo_greedy(test_prompt(500 + uint64_t(i), 20), 30));
  for (int i = 0; i < 6; ++i) {  // 6 x (20 + 30) tokens: they cannot all hold their KV at once
    uint64_t id = env.svc->submit(greedy_request(test_prompt(500 + uint64_t(i), 20), 30), col.cb());
    want[id] = refs[size_t(i)];
    ids.push_back(id);
  }
  uint64_t huge = env.svc->submit(greedy_request(test_prompt(600, 100), 40), col.cb());  // 140 > 128
  for (uint64_t id : ids) REQUIRE(col.wait_terminal(id));
  REQUIRE(col.wait_terminal(huge));
  for (uint64_t id : ids) {
    CHECK(col.well_formed(id));
    CHECK(col.tokens(id) == want[id]);
  }
  CHECK(col.well_formed(huge));
  CHECK(col.terminal(huge).type == event::kind::error);
  CHECK(col.terminal(huge).code == error_code::invalid_request);
  CHECK(env.svc->stats().preemptions.load() > 0);
  CHECK(eventually([&] { return env.svc->stats().kv_blocks_used.load() == 0; }));
}

TEST_CASE("actors: invalid requests get invalid_request and nothing else") {
  collector col;
  service_env env(base_config());
  std::vector<generate_request> bad(6);
  bad[0].prompt = "";                                   // empty
  bad[1].prompt_tokens.assign(1025, 1);                 // longer than n_ctx (1024)
  bad[2].prompt = "x"; bad[2].max_tokens = -1;
  bad[3].prompt = "x"; bad[3].sampling.top_p = 0.0f;
  bad[4].prompt = "x"; bad[4].sampling.temperature = -1.0f;
  bad[5].prompt_tokens = {1, 2, 300};                   // outside the vocabulary
  for (auto& r : bad) {
    uint64_t id = env.svc->submit(r, col.cb());
    REQUIRE(col.wait_terminal(id));
    CHECK(col.well_formed(id));
    CHECK(col.terminal(id).type == event::kind::error);
    CHECK(col.terminal(id).code == error_code::invalid_request);
    CHECK_FALSE(col.terminal(id).message.empty());
  }
  CHECK(env.svc->stats().outcome_count("invalid_request") == 6);
}

// The embedded API's side of the one prompt-length rule (base/prompt-limit.hpp; the server's
// entry points are in test-net-server): n_ctx - 1 prompt tokens run, n_ctx are refused in the
// same words.
TEST_CASE("actors: a prompt of n_ctx - 1 tokens runs, one of n_ctx is refused by the prompt-length rule") {
  collector col;
  service_env env(base_config());
  const int32_t n_ctx = env.svc->n_ctx();
  REQUIRE(n_ctx > 1);
  const uint64_t fits = env.svc->submit(greedy_request(std::vector<int32_t>(size_t(n_ctx - 1), 1), 1), col.cb());
  const uint64_t over = env.svc->submit(greedy_request(std::vector<int32_t>(size_t(n_ctx), 1), 1), col.cb());
  REQUIRE(col.wait_terminal(fits));
  REQUIRE(col.wait_terminal(over));
  CHECK(col.terminal(fits).type == event::kind::done);
  CHECK(col.terminal(over).type == event::kind::error);
  CHECK(col.terminal(over).code == error_code::invalid_request);
  CHECK(col.terminal(over).message == prompt_too_long_message("prompt", n_ctx, n_ctx));
}

TEST_CASE("actors: stop strings end the stream before the match") {
  collector col;
  service_env env(base_config(), /*fake=*/true);  // ASCII output, so the text is meaningful
  std::vector<int32_t> prompt = {72, 105, 33};
  // Reference run without stop; pick the text of a later token as the stop string.
  uint64_t ref = env.svc->submit(greedy_request(prompt, 40), col.cb());
  REQUIRE(col.wait_terminal(ref));
  std::string full, stop;
  {
    std::lock_guard<std::mutex> lk(col.mu);
    for (auto& e : col.recs[ref].events) {
      if (e.type != event::kind::token) continue;
      if (e.index >= 6 && e.index <= 8) stop += e.text;  // whole characters: token texts are
      full += e.text;
    }
  }
  const size_t stop_at = full.find(stop);  // the first match anywhere in the text counts
  REQUIRE_FALSE(stop.empty());
  auto r = greedy_request(prompt, 40);
  r.stop = {stop};
  uint64_t id = env.svc->submit(r, col.cb());
  REQUIRE(col.wait_terminal(id));
  CHECK(col.well_formed(id));
  event t = col.terminal(id);
  CHECK(t.type == event::kind::done);
  CHECK(t.reason == finish_reason::stop);
  std::string text;
  {
    std::lock_guard<std::mutex> lk(col.mu);
    for (auto& e : col.recs[id].events) text += e.text;
  }
  CHECK(text == full.substr(0, stop_at));
  CHECK(t.completion_tokens < 40);
  CHECK(stop_at >= 1);  // something was streamed before the stop string
  CHECK(text.size() == stop_at);
  CHECK(env.svc->stats().outcome_count("done_stop") == 1);
}

TEST_CASE("actors: a failed worker is restarted and its sequences resume with the same tokens") {
  collector col;
  service_env env(base_config());
  env.gate->fail_at = 12;  // some step in the middle of generation fails once
  std::vector<uint64_t> ids;
  std::map<uint64_t, std::vector<int32_t>> want;
  std::vector<std::vector<int32_t>> refs;
  for (int i = 0; i < 6; ++i) refs.push_back(solo_greedy(test_prompt(40 + uint64_t(i), 10 + i * 5), 20));
  for (int i = 0; i < 6; ++i) {
    uint64_t id = env.svc->submit(greedy_request(test_prompt(40 + uint64_t(i), 10 + i * 5), 20), col.cb());
    want[id] = refs[size_t(i)];
    ids.push_back(id);
  }
  for (uint64_t id : ids) REQUIRE(col.wait_terminal(id));
  for (uint64_t id : ids) {
    CHECK(col.well_formed(id));
    CHECK(col.terminal(id).type == event::kind::done);
    CHECK(col.tokens(id) == want[id]);  // no gap, no duplicate, same greedy tokens
  }
  CHECK(env.svc->stats().worker_restarts.load() == 1);
  CHECK(env.svc->ready());
}

TEST_CASE("actors: the embedded API from plain threads, submit(tasks) with 100 tasks") {
  service_env env(base_config());
  // 100 tasks at once: a future per task.
  std::vector<generate_request> tasks;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 100; ++i) {
    prompts.push_back(test_prompt(200 + uint64_t(i), 8 + i % 24));
    tasks.push_back(greedy_request(prompts.back(), 8));
  }
  auto futures = env.svc->submit(tasks);
  REQUIRE(futures.size() == 100);
  std::set<uint64_t> ids;
  for (size_t i = 0; i < futures.size(); ++i) {
    completion c = futures[i].get();
    CHECK(c.ok);
    CHECK(c.terminal.type == event::kind::done);
    CHECK(c.tokens == solo_greedy(prompts[i], 8));
    ids.insert(c.request_id);
  }
  CHECK(ids.size() == 100);

  // Several plain threads at once, with generate() and streaming callbacks.
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int k = 0; k < 5; ++k) {
        generate_request r;
        r.prompt = "thread " + std::to_string(t) + " request " + std::to_string(k);
        r.max_tokens = 6;
        completion c = env.svc->generate(r);
        if (c.ok && c.tokens.size() == 6 && c.terminal.prompt_tokens == int32_t(r.prompt.size())) ++ok;
      }
    });
  for (auto& th : threads) th.join();
  CHECK(ok.load() == 20);
  CHECK(env.svc->stats().outcome_count("done_length") == 120);
}

TEST_CASE("actors: shutdown ends every request in flight with exactly one terminal event") {
  collector col;
  std::vector<uint64_t> ids;
  {
    service_env env(base_config());
    for (int i = 0; i < 20; ++i) ids.push_back(env.svc->submit(greedy_request(test_prompt(300 + uint64_t(i), 20), 500), col.cb()));
    REQUIRE(col.wait_tokens(ids[0], 1));
    env.svc->shutdown();
    uint64_t late = env.svc->submit(greedy_request(test_prompt(1, 4), 4), col.cb());
    ids.push_back(late);
    CHECK(col.terminal(late).code == error_code::unavailable);
    CHECK_FALSE(env.svc->ready());
  }
  for (uint64_t id : ids) CHECK(col.well_formed(id));
}

TEST_CASE("actors: service::start from a config loads synthetic:tiny on the CPU backend") {
  caf::actor_system_config caf_cfg;
  register_message_types(caf_cfg);
  caf::actor_system sys{caf_cfg};
  service_config cfg;
  cfg.model = "synthetic:tiny";
  cfg.backend = "auto";  // no CUDA device here: cpu
  cfg.workers = 2;
  cfg.kv_memory_mb = 16;
  {
    service_config bad = cfg;
    bad.max_batch_tokens = 0;
    auto r = service::start(sys, bad);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().message.find("batching.max_batch_tokens") != std::string::npos);
  }
  auto started = service::start(sys, cfg);
  REQUIRE_MESSAGE(started.has_value(), (started ? "" : started.error().message));
  auto svc = std::move(started.value());
  CHECK(svc->n_ctx() == 1024);
  CHECK(svc->tok().n_vocab() == 256);
  generate_request r;
  r.prompt = "Hello, world";
  r.max_tokens = 5;
  completion c = svc->generate(r);
  CHECK(c.ok);
  CHECK(c.tokens.size() == 5);
  CHECK(c.terminal.prompt_tokens == 12);  // byte-level: one token per byte
  CHECK(c.tokens == solo_greedy(svc->tok().encode("Hello, world"), 5));
  CHECK(eventually([&] { return svc->ready(); }));
  CHECK(eventually([&] { return svc->stats().kv_blocks_total.load() > 0; }));  // both workers reported
  std::string text = svc->stats().render_prometheus();
  for (const char* name :
       {"infer_requests_total{outcome=\"done_length\"} 1", "infer_queue_depth 0", "infer_running_sequences",
        "infer_tokens_generated_total", "infer_worker_restarts_total 0", "infer_kv_blocks_used",
        "infer_kv_blocks_capacity", "infer_time_to_first_token_seconds_bucket{le=\"+Inf\"} 1",
        "infer_inter_token_latency_seconds_count 4", "infer_batch_size_bucket", "infer_step_time_seconds_sum"})
    CHECK_MESSAGE(text.find(name) != std::string::npos, name);
  svc->shutdown();
  CHECK_FALSE(svc->ready());
}

TEST_CASE("actors: cancels racing with completion: every request ends once, all blocks come back") {
  collector col;
  auto cfg = base_config();
  cfg.max_running = 16;
  service_env env(cfg);
  std::vector<uint64_t> ids;
  std::set<uint64_t> cancel_sent;
  std::vector<uint64_t> sentinels;
  for (int i = 0; i < 200; ++i) {
    ids.push_back(env.svc->submit(greedy_request(test_prompt(700 + uint64_t(i), 4 + i % 13), 1 + i % 7), col.cb()));
    if (i % 3 == 0) {  // some queued, some running, some finished
      env.svc->cancel(ids[size_t(i / 2)]);
      cancel_sent.insert(ids[size_t(i / 2)]);
    }
    if (i % 50 == 25) {
      // A sentinel: submitted and cancelled while every step is held at the gate, so it
      // cannot have produced a token, let alone finished. A cancel that does nothing fails
      // here, whatever the race around it did; the racing requests pause meanwhile.
      env.gate->close();
      const uint64_t s = env.svc->submit(greedy_request(test_prompt(900 + uint64_t(i), 6), 1000), col.cb());
      env.gate->wait_held();
      env.svc->cancel(s);
      REQUIRE(col.wait_terminal(s));
      env.gate->release();
      sentinels.push_back(s);
    }
  }
  for (uint64_t id : ids) REQUIRE(col.wait_terminal(id));
  int cancelled = 0;
  for (uint64_t id : ids) {
    CHECK(col.well_formed(id));
    event t = col.terminal(id);
    CHECK(t.type == event::kind::done);
    if (t.reason == finish_reason::cancelled) {
      ++cancelled;
      CHECK_MESSAGE(cancel_sent.count(id) == 1, "request " << id << " ended cancelled without a cancel");
    } else {
      CHECK(t.completion_tokens == int32_t(col.tokens(id).size()));
    }
  }
  MESSAGE(cancelled << " of 200 racing requests ended cancelled");
  REQUIRE(sentinels.size() == 4);
  for (uint64_t s : sentinels) {
    CHECK(col.well_formed(s));
    CHECK(col.terminal(s).reason == finish_reason::cancelled);
    CHECK(col.terminal(s).completion_tokens == 0);
  }
  CHECK(env.svc->stats().outcome_count("cancelled") == uint64_t(cancelled) + sentinels.size());
  CHECK(eventually([&] { return env.svc->stats().kv_blocks_used.load() == 0; }));
  CHECK(eventually([&] { return env.svc->stats().running_sequences.load() == 0; }));
  CHECK(env.svc->stats().queue_depth.load() == 0);
}

namespace {

// The CPU backend under the name "cuda", counting its steps: the worker warms up CUDA
// engines only, and the warm-up must leave no trace.
class cuda_named_backend : public backend {
 public:
  cuda_named_backend(std::unique_ptr<backend> inner, std::shared_ptr<std::atomic<int64_t>> steps)
      : inner_(std::move(inner)), steps_(std::move(steps)) {}
  const char* name() const override { return "cuda"; }
  const model_config& config() const override { return inner_->config(); }
  kv_geometry kv() const override { return inner_->kv(); }
  status step(const step_batch& b, step_output& out, logits_mode mode = logits_mode::none) override {
    steps_->fetch_add(1);
    return inner_->step(b, out, mode);
  }

 private:
  std::unique_ptr<backend> inner_;
  std::shared_ptr<std::atomic<int64_t>> steps_;
};

}  // namespace

TEST_CASE("actors: a CUDA worker warms up before its hello; the warm-up leaves no trace") {
  caf::actor_system_config caf_cfg;
  register_message_types(caf_cfg);
  caf::actor_system sys{caf_cfg};
  auto w = tiny_weights();
  auto steps = std::make_shared<std::atomic<int64_t>>(0);
  service_hooks hooks;
  hooks.tok = tokenizer::byte_level();
  hooks.n_ctx = w->cfg.n_ctx;
  hooks.n_vocab = w->cfg.n_vocab;
  hooks.make_backend = [w, steps](int32_t) -> result<std::unique_ptr<backend>> {
    auto r = make_cpu_backend(w, tiny_options());
    if (!r) return r.error();
    return std::unique_ptr<backend>(new cuda_named_backend(std::move(r.value()), steps));
  };
  auto cfg = base_config();
  cfg.max_running = 16;
  auto svc = service::start(sys, cfg, hooks);
  REQUIRE_MESSAGE(svc, svc.error().message);
  for (int i = 0; i < 500 && !(*svc)->ready(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  REQUIRE((*svc)->ready());
  // 16 sequences finishing one per step: at least 16 steps ran before the hello...
  CHECK(steps->load() >= 16);
  // ...and none of them shows: no step counted, no KV block held, no token generated.
  auto& m = (*svc)->stats();
  CHECK(m.steps.load() == 0);
  CHECK(m.tokens_generated.load() == 0);
  CHECK(m.kv_blocks_used.load() == 0);
  CHECK(m.prefix_cache_queries.load() == 0);
  CHECK(m.prefix_cache_blocks.load() == 0);
  const auto prompt = test_prompt(7, 20);
  generate_request req;
  req.prompt_tokens = prompt;
  req.max_tokens = 12;
  req.sampling.temperature = 0;
  auto c = (*svc)->generate(req);
  REQUIRE_MESSAGE(c.ok, c.terminal.message);
  CHECK(c.tokens == solo_greedy(prompt, 12));
  // The warm-up's blocks were dropped and its lookups are not counted: only this request shows.
  CHECK(eventually([&] { return m.prefix_cache_queries.load() == 20; }));
  CHECK(m.prefix_cache_hits.load() == 0);
  CHECK(eventually([&] { return m.prefix_cache_blocks.load() == 1; }));  // 31 tokens cached: one full block
  (*svc)->shutdown();
}

// A model whose EOS (id 10, "\n" in the byte vocabulary) is the greedy choice after exactly
// 7 tokens: the sequence ends there with finish_reason stop, the EOS counted but its text not
// returned; ignore_eos runs on to max_tokens; stop_token_ids end it at any other id.
TEST_CASE("actors: generation stops at EOS; ignore_eos and stop_token_ids") {
  caf::actor_system_config caf_cfg;
  register_message_types(caf_cfg);
  caf::actor_system sys{caf_cfg};
  constexpr int32_t eos = 10, n_before = 7, max_tokens = 40;
  service_hooks hooks;
  hooks.tok = tokenizer::byte_level();
  hooks.eos_ids = {eos};
  hooks.n_ctx = 256;
  hooks.n_vocab = 128;
  hooks.make_backend = [](int32_t) -> result<std::unique_ptr<backend>> {
    auto b = std::make_unique<fake_backend>(fake_config(256, 128), kv_geometry{16, 64});
    b->forced_eos = eos;
    b->forced_eos_at = n_before;
    return std::unique_ptr<backend>(std::move(b));
  };
  service_config cfg = base_config();
  auto started = service::start(sys, cfg, hooks);
  REQUIRE_MESSAGE(started, started.error().message);
  auto& svc = *started.value();
  collector col;
  auto run = [&](generate_request r) {
    uint64_t id = svc.submit(std::move(r), col.cb());
    REQUIRE(col.wait_terminal(id));
    CHECK(col.well_formed(id));
    return id;
  };
  auto text_of = [&](uint64_t id) {
    std::lock_guard<std::mutex> lk(col.mu);
    std::string t;
    for (auto& e : col.recs[id].events) t += e.text;
    return t;
  };
  const std::vector<int32_t> prompt = {72, 105, 33};

  uint64_t a = run(greedy_request(prompt, max_tokens));
  event ta = col.terminal(a);
  CHECK(ta.type == event::kind::done);
  CHECK(ta.reason == finish_reason::stop);
  auto toks = col.tokens(a);
  REQUIRE(toks.size() == size_t(n_before + 1));  // 7 tokens, then the EOS itself
  CHECK(toks.back() == eos);
  CHECK(ta.completion_tokens == n_before + 1);   // vLLM counts the EOS in usage
  std::string want;
  for (int i = 0; i < n_before; ++i) {
    CHECK(toks[size_t(i)] != eos);
    want.push_back(char(toks[size_t(i)]));
  }
  CHECK(text_of(a) == want);  // no "\n": the EOS is not part of the text
  CHECK(eventually([&] { return svc.stats().kv_blocks_used.load() == 0; }));

  auto r = greedy_request(prompt, max_tokens);
  r.ignore_eos = true;
  uint64_t b = run(r);
  CHECK(col.terminal(b).reason == finish_reason::length);
  auto tb = col.tokens(b);
  REQUIRE(tb.size() == size_t(max_tokens));
  CHECK(tb[size_t(n_before)] == eos);
  CHECK(std::equal(toks.begin(), toks.end(), tb.begin()));
  CHECK(text_of(b).find('\n') == size_t(n_before));

  // stop_token_ids: the id at index 3 ends it there (also with ignore_eos).
  r.stop_token_ids = {tb[3]};
  uint64_t c = run(r);
  CHECK(col.terminal(c).reason == finish_reason::stop);
  auto tc = col.tokens(c);
  const size_t first = size_t(std::find(tb.begin(), tb.end(), tb[3]) - tb.begin());
  CHECK(tc.size() == first + 1);
  CHECK(text_of(c) == text_of(b).substr(0, first));

  r.stop_token_ids = {500};
  uint64_t d = run(r);
  CHECK(col.terminal(d).type == event::kind::error);
  CHECK(col.terminal(d).code == error_code::invalid_request);
  svc.shutdown();
}

namespace {

// Records, per worker, the first tokens of every sequence it prefills from position 0
// (a prefix it did not take from its cache).
struct prefill_log {
  std::mutex mu;
  std::map<int32_t, std::vector<std::vector<int32_t>>> from_scratch;
  // marker_at >= 0: per worker, the token at that position of every sequence whose prefill
  // covers it (a request's own marker says where it ran, cached prefix or not).
  int32_t marker_at = -1;
  std::map<int32_t, std::vector<int32_t>> markers;
  int count(int32_t worker, const std::vector<int32_t>& head) {
    std::lock_guard<std::mutex> lk(mu);
    int n = 0;
    for (auto& h : from_scratch[worker]) n += h == head ? 1 : 0;
    return n;
  }
};

class logging_backend : public backend {
 public:
  logging_backend(std::unique_ptr<backend> inner, std::shared_ptr<prefill_log> log, int32_t worker)
      : inner_(std::move(inner)), log_(std::move(log)), worker_(worker) {}
  const char* name() const override { return inner_->name(); }
  const model_config& config() const override { return inner_->config(); }
  kv_geometry kv() const override { return inner_->kv(); }
  status step(const step_batch& b, step_output& out, logits_mode mode = logits_mode::none) override {
    {
      std::lock_guard<std::mutex> lk(log_->mu);
      for (int32_t i = 0; i < b.n_seqs(); ++i) {
        if (b.n_past[i] == 0 && b.seq_len(i) >= 8)
          log_->from_scratch[worker_].emplace_back(b.tokens.begin() + b.seq_start[i],
                                                   b.tokens.begin() + b.seq_start[i] + 8);
        const int32_t at = log_->marker_at - b.n_past[i];
        if (log_->marker_at >= 0 && b.seq_len(i) >= 2 && at >= 0 && at < b.seq_len(i))
          log_->markers[worker_].push_back(b.tokens[size_t(b.seq_start[i] + at)]);
      }
    }
    return inner_->step(b, out, mode);
  }

 private:
  std::unique_ptr<backend> inner_;
  std::shared_ptr<prefill_log> log_;
  int32_t worker_;
};

}  // namespace

TEST_CASE("actors: under load, cache-aware routing keeps each system prompt on its worker, both busy") {
  // Two workers of 2 running sequences each, 24 requests submitted at once, alternating two
  // 320-token system prompts, each with its own question (whose first token marks the
  // request). Room then appears one slot at a time on whichever worker finishes first; a
  // request whose prefix is on the other (full) worker waits for it, since 320 tokens
  // outweigh prefix_affinity_tokens (64) per extra sequence there, while the request
  // behind it (the other prompt) takes the room. Routing by load alone (the batcher
  // before this rule) mixed both prompts on both workers.
  service_config cfg = base_config();
  cfg.workers = 2;
  cfg.max_running = 2;
  caf::actor_system_config caf_cfg;
  register_message_types(caf_cfg);
  caf::actor_system sys(caf_cfg);
  auto log = std::make_shared<prefill_log>();
  log->marker_at = 320;
  service_hooks hooks;
  hooks.tok = tokenizer::byte_level();
  hooks.n_ctx = 1024;
  hooks.n_vocab = 128;
  hooks.make_backend = [log](int32_t index) -> result<std::unique_ptr<backend>> {
    return std::unique_ptr<backend>(new logging_backend(
        std::make_unique<fake_backend>(fake_config(1024, 128), kv_geometry{16, 512}), log, index));
  };
  auto started = service::start(sys, cfg, hooks);
  REQUIRE(started.has_value());
  auto svc = std::move(started.value());
  REQUIRE(eventually([&] {
    int up = 0;
    for (auto& g : svc->stats().workers_snapshot()) up += g.state == worker_gauge::run_state::running ? 1 : 0;
    return up == 2;
  }));
  std::vector<int32_t> sys_a, sys_b;
  for (int i = 0; i < 320; ++i) {
    sys_a.push_back((i * 7 + 1) % 128);
    sys_b.push_back((i * 11 + 5) % 128);
  }
  const int n = 24;
  collector col;
  std::vector<uint64_t> ids;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < n; ++i) {
    auto prompt = i % 2 ? sys_b : sys_a;
    prompt.push_back(i);  // the marker
    for (int j = 0; j < 6; ++j) prompt.push_back((i * 13 + j * 5 + 40) % 128);
    prompts.push_back(prompt);
    ids.push_back(svc->submit(greedy_request(prompt, 6), col.cb()));
  }
  for (uint64_t id : ids) REQUIRE(col.wait_terminal(id));
  // Where each request ran: the workers that prefilled its marker.
  std::map<int32_t, std::set<int32_t>> ran_on;
  {
    std::lock_guard<std::mutex> lk(log->mu);
    for (auto& [w, ms] : log->markers)
      for (int32_t mk : ms) ran_on[mk].insert(w);
  }
  std::set<int32_t> workers_a, workers_b;
  std::map<int32_t, int> per_worker;
  for (int i = 0; i < n; ++i) {
    CAPTURE(i);
    REQUIRE(ran_on[i].size() == 1);
    const int32_t w = *ran_on[i].begin();
    (i % 2 ? workers_b : workers_a).insert(w);
    ++per_worker[w];
    CHECK(col.well_formed(ids[size_t(i)]));
    CHECK(col.tokens(ids[size_t(i)]) == fake_reference(prompts[size_t(i)], 6, 128, 1024));
  }
  // Every request of a prompt landed on one worker, the two prompts on different workers,
  // so both workers served half the requests.
  CHECK(workers_a.size() == 1);
  CHECK(workers_b.size() == 1);
  CHECK(workers_a != workers_b);
  CHECK(per_worker[0] == n / 2);
  CHECK(per_worker[1] == n / 2);
  // Each prompt prefilled from scratch at most twice (the two first requests of a worker
  // start together, before either has cached it), every later request hit its 320 tokens.
  const std::vector<int32_t> head_a(sys_a.begin(), sys_a.begin() + 8), head_b(sys_b.begin(), sys_b.begin() + 8);
  CHECK(log->count(0, head_a) + log->count(1, head_a) <= 2);
  CHECK(log->count(0, head_b) + log->count(1, head_b) <= 2);
  int hits = 0;
  for (uint64_t id : ids) hits += col.terminal(id).cached_tokens == 320 ? 1 : 0;
  CHECK(hits >= n - 4);
  auto& m = svc->stats();
  CHECK(m.prefix_cache_hits.load() >= uint64_t(n - 4) * 320);
  CHECK(m.prefix_routed.load() > 0);  // some request waited for its worker
  svc.reset();
}

TEST_CASE("actors: cache-aware routing sends each system prompt to the worker that holds it") {
  // Two workers, two 320-token system prompts (20 blocks) with private questions, in waves
  // of four requests (two of each prompt). The first of each prompt lands somewhere; every
  // later one should find its prefix on that worker, while both workers keep working.
  service_config cfg = base_config();
  cfg.workers = 2;
  cfg.max_running = 8;
  caf::actor_system_config caf_cfg;
  register_message_types(caf_cfg);
  caf::actor_system sys(caf_cfg);
  auto log = std::make_shared<prefill_log>();
  service_hooks hooks;
  hooks.tok = tokenizer::byte_level();
  hooks.n_ctx = 1024;
  hooks.n_vocab = 128;
  hooks.make_backend = [log](int32_t index) -> result<std::unique_ptr<backend>> {
    return std::unique_ptr<backend>(new logging_backend(
        std::make_unique<fake_backend>(fake_config(1024, 128), kv_geometry{16, 512}), log, index));
  };
  auto started = service::start(sys, cfg, hooks);
  REQUIRE(started.has_value());
  auto svc = std::move(started.value());
  // Both workers up first: a lone early worker would rightly take (and then keep) both prompts.
  REQUIRE(eventually([&] {
    int up = 0;
    for (auto& g : svc->stats().workers_snapshot()) up += g.state == worker_gauge::run_state::running ? 1 : 0;
    return up == 2;
  }));
  std::vector<int32_t> sys_a, sys_b;
  for (int i = 0; i < 320; ++i) {
    sys_a.push_back((i * 7 + 1) % 128);
    sys_b.push_back((i * 11 + 5) % 128);
  }
  collector col;
  const int waves = 8;
  std::vector<uint64_t> all;
  for (int wave = 0; wave < waves; ++wave) {
    std::vector<uint64_t> ids;
    for (int k = 0; k < 4; ++k) {
      auto prompt = k % 2 ? sys_b : sys_a;
      for (int j = 0; j < 5 + k; ++j) prompt.push_back((wave * 13 + k * 3 + j) % 128);
      ids.push_back(svc->submit(greedy_request(prompt, 4), col.cb()));
    }
    for (uint64_t id : ids) REQUIRE(col.wait_terminal(id));
    all.insert(all.end(), ids.begin(), ids.end());
  }
  const std::vector<int32_t> head_a(sys_a.begin(), sys_a.begin() + 8), head_b(sys_b.begin(), sys_b.begin() + 8);
  // Each system prompt was prefilled from scratch on one worker only ...
  CHECK(log->count(0, head_a) * log->count(1, head_a) == 0);
  CHECK(log->count(0, head_b) * log->count(1, head_b) == 0);
  // ... at most twice (both requests of the first wave may start before either is cached) ...
  CHECK(log->count(0, head_a) + log->count(1, head_a) <= 2);
  CHECK(log->count(0, head_b) + log->count(1, head_b) <= 2);
  // ... and the two prompts went to different workers: both stayed busy.
  CHECK(log->count(0, head_a) + log->count(0, head_b) > 0);
  CHECK(log->count(1, head_a) + log->count(1, head_b) > 0);
  auto& m = svc->stats();
  const uint64_t min_hits = uint64_t(4 * waves - 4) * 320;
  CHECK(m.prefix_cache_hits.load() >= min_hits);
  CHECK(m.prefix_cache_hit_rate() > 0.8);  // 320 of about 326 tokens, in all but the first requests
  for (uint64_t id : all) {
    CHECK(col.well_formed(id));
    CHECK(col.terminal(id).cached_tokens % 16 == 0);
  }
  CHECK(col.terminal(all.back()).cached_tokens == 320);
  svc.reset();
}

namespace {

// Counts what the engine computed: prefill steps and tokens, block copies.
struct compute_log {
  std::mutex mu;
  int64_t prefill_steps = 0, prefill_tokens = 0, copies = 0;
};

class counting_backend : public backend {
 public:
  counting_backend(std::unique_ptr<backend> inner, std::shared_ptr<compute_log> log)
      : inner_(std::move(inner)), log_(std::move(log)) {}
  const char* name() const override { return inner_->name(); }
  const model_config& config() const override { return inner_->config(); }
  kv_geometry kv() const override { return inner_->kv(); }
  status step(const step_batch& b, step_output& out, logits_mode mode = logits_mode::none) override {
    {
      std::lock_guard<std::mutex> lk(log_->mu);
      int64_t prefill = 0;
      for (int32_t i = 0; i < b.n_seqs(); ++i)
        if (b.seq_len(i) > 1) prefill += b.seq_len(i);
      log_->prefill_steps += prefill > 0 ? 1 : 0;
      log_->prefill_tokens += prefill;
      log_->copies += int64_t(b.copy_src.size());
    }
    return inner_->step(b, out, mode);
  }

 private:
  std::unique_ptr<backend> inner_;
  std::shared_ptr<compute_log> log_;
};

generate_request choices_request(std::vector<int32_t> prompt, int32_t max_tokens, int32_t n, uint64_t seed) {
  generate_request r = greedy_request(std::move(prompt), max_tokens);
  r.n = n;
  r.sampling.temperature = 1.0f;
  r.sampling.seed = seed;
  return r;
}

}  // namespace

TEST_CASE("actors: n = 4 choices prefill once and stream four distinct, seeded, reproducible choices") {
  caf::actor_system_config caf_cfg;
  register_message_types(caf_cfg);
  caf::actor_system sys(caf_cfg);
  auto log = std::make_shared<compute_log>();
  auto w = tiny_weights();
  service_hooks hooks;
  hooks.tok = tokenizer::byte_level();
  hooks.n_ctx = w->cfg.n_ctx;
  hooks.n_vocab = w->cfg.n_vocab;
  hooks.make_backend = [w, log](int32_t) -> result<std::unique_ptr<backend>> {
    auto r = make_cpu_backend(w, tiny_options());
    if (!r) return r.error();
    return std::unique_ptr<backend>(new counting_backend(std::move(r.value()), log));
  };
  auto started = service::start(sys, base_config(), hooks);
  REQUIRE(started.has_value());
  auto svc = std::move(started.value());

  const auto prompt = test_prompt(77, 40);
  completion c = svc->generate(choices_request(prompt, 12, 4, 7));
  REQUIRE(c.ok);
  {
    std::lock_guard<std::mutex> lk(log->mu);
    CHECK(log->prefill_steps == 1);   // the prompt but its last token, once for the four
    CHECK(log->prefill_tokens == 39);
    CHECK(log->copies == 3);          // the block holding tokens 32..38, for forks 1..3
  }
  REQUIRE(c.choice_tokens.size() == 4);
  std::set<std::vector<int32_t>> distinct(c.choice_tokens.begin(), c.choice_tokens.end());
  CHECK(distinct.size() == 4);
  CHECK(c.tokens == c.choice_tokens[0]);
  const event& done = c.terminal;
  CHECK(done.prompt_tokens == 40);      // once, as OpenAI counts
  CHECK(done.completion_tokens == 48);  // summed over the choices
  REQUIRE(done.choice_reasons.size() == 4);
  for (int i = 0; i < 4; ++i) {
    CHECK(done.choice_reasons[size_t(i)] == finish_reason::length);
    CHECK(done.choice_tokens[size_t(i)] == 12);
  }

  // The same seed gives the same choices; choice 0 is what n = 1 gives with that seed.
  completion again = svc->generate(choices_request(prompt, 12, 4, 7));
  REQUIRE(again.ok);
  CHECK(again.choice_tokens == c.choice_tokens);
  completion one = svc->generate(choices_request(prompt, 12, 1, 7));
  REQUIRE(one.ok);
  CHECK(one.tokens == c.choice_tokens[0]);
  completion other = svc->generate(choices_request(prompt, 12, 4, 8));
  REQUIRE(other.ok);
  CHECK(other.choice_tokens != c.choice_tokens);
  svc.reset();
}

TEST_CASE("actors: cancelling n choices frees every fork; a worker failure resumes each from its own tokens") {
  collector col;
  service_env env(base_config());
  auto& m = env.svc->stats();
  uint64_t id = env.svc->submit(choices_request(test_prompt(5, 37), 1000, 4, 3), col.cb());
  REQUIRE(col.wait_tokens(id, 12));  // every choice under way
  env.gate->close();
  env.gate->wait_held();
  CHECK(m.kv_blocks_used.load() > 0);
  env.svc->cancel(id);
  REQUIRE(col.wait_terminal(id));
  CHECK(col.terminal(id).reason == finish_reason::cancelled);
  CHECK(col.terminal(id).choice_reasons.size() == 4);
  CHECK(m.kv_blocks_used.load() == 0);  // all four forks' blocks, before the terminal event
  CHECK(m.running_sequences.load() == 0);
  env.gate->release();
  {  // one terminal event, last; each choice's indices 0, 1, 2, ...
    std::lock_guard<std::mutex> lk(col.mu);
    auto& r = col.recs[id];
    CHECK(r.terminals == 1);
    CHECK_FALSE(r.after_terminal);
    std::map<int32_t, int32_t> next;
    for (auto& e : r.events)
      if (e.type == event::kind::token) CHECK(e.index == next[e.choice]++);
    CHECK(next.size() == 4);
  }

  // Uninterrupted, then with a step failing after the fork: the same tokens per choice.
  completion clean = env.svc->generate(choices_request(test_prompt(6, 30), 16, 3, 11));
  REQUIRE(clean.ok);
  env.gate->fail_at = env.gate->steps + 4;
  completion resumed = env.svc->generate(choices_request(test_prompt(6, 30), 16, 3, 11));
  REQUIRE(resumed.ok);
  CHECK(resumed.choice_tokens == clean.choice_tokens);
  CHECK(m.worker_restarts.load() == 1);
  CHECK(resumed.terminal.completion_tokens == 48);
}

TEST_CASE("actors: n is validated; a group that cannot run together is refused") {
  service_env env(base_config());
  for (int32_t n : {0, -1, generate_request::max_n + 1}) {
    completion c = env.svc->generate(choices_request(test_prompt(1, 10), 4, n, 1));
    CHECK_FALSE(c.ok);
    CHECK(c.terminal.code == error_code::invalid_request);
    CHECK(c.terminal.message.rfind("n: ", 0) == 0);
  }
  auto cfg = base_config();
  cfg.max_running = 2;
  service_env small(cfg);
  completion c = small.svc->generate(choices_request(test_prompt(1, 10), 4, 3, 1));
  CHECK_FALSE(c.ok);
  CHECK(c.terminal.code == error_code::invalid_request);
  CHECK(c.terminal.message.find("max_running") != std::string::npos);
}
