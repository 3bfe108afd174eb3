// consumer: the embedded service from an installed package. Two tasks at once through
// handles; the second is cancelled; both end with their terminal event.
//
//   consumer [MODEL]   (default synthetic:tiny)
#include <cstdio>
#include <string>

#include <caf/all.hpp>

#include "actors/service.hpp"
#include "config/service-config.hpp"

int main(int argc, char** argv) {
  caf::actor_system_config caf_cfg;
  caf::actor_system sys{caf_cfg};
  infer::service_config cfg;
  cfg.model = argc > 1 ? argv[1] : "synthetic:tiny";
  cfg.backend = "cpu";
  auto svc = infer::service::start(sys, cfg);
  if (!svc) {
    std::fprintf(stderr, "consumer: %s\n", svc.error().message.c_str());
    return 1;
  }
  std::vector<infer::generate_request> tasks(2);
  tasks[0].prompt = "Hello";
  tasks[0].max_tokens = 4;
  tasks[1].prompt = "a long one";
  tasks[1].max_tokens = 4000;
  auto handles = (*svc)->submit(std::move(tasks));
  handles[1].cancel();
  infer::completion a = handles[0].get(), b = handles[1].get();
  // The cancel lands long before the second task could reach the end of the context; either
  // way it ends with exactly one done event.
  const bool ok = a.ok && a.tokens.size() == 4 && b.ok;
  std::printf("consumer: task 0 %zu tokens, task 1 %s: %s\n", a.tokens.size(), infer::to_string(b.terminal.reason),
              ok ? "ok" : "FAILED");
  (*svc)->shutdown();
  return ok ? 0 : 1;
}
