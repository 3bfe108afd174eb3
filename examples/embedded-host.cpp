// embedded-host: a host program that runs its own caf::actor_system and embeds the
// inference service in it (no server, no network).
//
//   1. one request with a streaming callback (tokens printed as they come);
//   2. a list of tasks submitted at once, one handle per task to wait on or cancel
//      ("parallel engine" style);
//   3. a cancel from the host thread.
//
//   ./build/bin/embedded-host [MODEL]      (default synthetic:tiny)
#include <condition_variable>
#include <future>
#include <cstdio>
#include <mutex>
#include <string>

#include <caf/all.hpp>

#include "actors/messages.hpp"
#include "actors/metrics.hpp"
#include "actors/service.hpp"
#include "config/service-config.hpp"

int main(int argc, char** argv) {
  // The host's own actor system. register_message_types is needed only if this node
  // will also talk to remote workers; it is harmless otherwise.
  caf::actor_system_config caf_cfg;
  infer::register_message_types(caf_cfg);
  caf::actor_system sys{caf_cfg};

  infer::service_config cfg;  // or infer::load_service_config("config/inferd.toml")
  cfg.model = argc > 1 ? argv[1] : "synthetic:tiny";
  cfg.backend = "cpu";
  auto started = infer::service::start(sys, cfg);
  if (!started) {
    std::fprintf(stderr, "cannot start the service: %s\n", started.error().message.c_str());
    return 1;
  }
  std::unique_ptr<infer::service> svc = std::move(started.value());

  // 1. Streaming. The callback runs on a CAF thread: keep it short, never block in it.
  std::mutex mu;
  std::condition_variable cv;
  bool finished = false;
  infer::generate_request req;
  req.prompt = "Hello, actors";
  req.max_tokens = 12;
  svc->submit(req, [&](const infer::event& e) {
    switch (e.type) {
      case infer::event::kind::accepted: std::printf("[accepted %llu]\n", (unsigned long long)e.request_id); break;
      case infer::event::kind::token: std::printf("token %d: id %d\n", e.index, e.token); break;
      case infer::event::kind::done:
        std::printf("[done: %s, %d tokens, first token after %.1f ms, total %.1f ms]\n", infer::to_string(e.reason),
                    e.completion_tokens, e.first_token_ms, e.total_ms);
        break;
      case infer::event::kind::error:
        std::printf("[error %s: %s]\n", infer::to_string(e.code), e.message.c_str());
        break;
    }
    if (e.terminal()) {
      std::lock_guard<std::mutex> lk(mu);
      finished = true;
      cv.notify_one();
    }
  });
  {
    std::unique_lock<std::mutex> lk(mu);
    cv.wait(lk, [&] { return finished; });
  }

  // 2. Many tasks at once: they are batched together by the workers.
  std::vector<infer::generate_request> tasks;
  for (int i = 0; i < 8; ++i) {
    infer::generate_request t;
    t.prompt = "task number " + std::to_string(i);
    t.max_tokens = 16;
    t.prio = i == 7 ? infer::priority::high : infer::priority::normal;
    tasks.push_back(std::move(t));
  }
  auto handles = svc->submit(std::move(tasks));
  handles.back().cancel();  // a handle also cancels its task: this one ends done(cancelled)
  for (size_t i = 0; i < handles.size(); ++i) {
    infer::completion c = handles[i].get();  // blocks this (non-actor) thread only
    std::printf("task %zu: %s, %zu tokens, %.1f ms\n", i, c.ok ? infer::to_string(c.terminal.reason) : infer::to_string(c.terminal.code),
                c.tokens.size(), c.terminal.total_ms);
  }

  // 3. Cancel from the host thread: the request ends with done(cancelled), and by
  //    then its KV blocks are free again.
  infer::generate_request long_req;
  long_req.prompt = "a long one";
  long_req.max_tokens = 500;
  std::promise<infer::event> ended;
  uint64_t id = svc->submit(long_req, [&](const infer::event& e) {
    if (e.terminal()) ended.set_value(e);
  });
  svc->cancel(id);
  infer::event last = ended.get_future().get();
  std::printf("long request %llu: %s\n", (unsigned long long)id,
              last.type == infer::event::kind::done ? infer::to_string(last.reason) : infer::to_string(last.code));

  std::printf("\n%s", svc->stats().render_prometheus().substr(0, 400).c_str());
  // Stop the service before the actor system goes away (it waits for its actors).
  svc->shutdown();
  svc.reset();
  return 0;
}
