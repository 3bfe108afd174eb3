// infer-bench-net: inferd's network layer and actors over the sim backend (bench/sim-backend.hpp),
// for driving with infer-bench on any machine: what the host costs a GPU-speed engine.
//
//   infer-bench-net [--listen 127.0.0.1:0] [--port-file PATH] [--workers N] [--max-running N]
//                   [--io-threads N] [--caf-policy sharing|stealing]
//                   [--sim-fixed-us 430] [--sim-seq-us 1.45] [--sim-token-us 0.7]
// Runs until SIGINT / SIGTERM; then prints the sim engines' host gaps between steps.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include <caf/all.hpp>
#include <fmt/format.h>

#include "actors/messages.hpp"
#include "bench/sim-backend.hpp"
#include "net/server.hpp"

using namespace infer;

namespace {
std::string arg_str(int argc, char** argv, const char* name, const char* def) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) return argv[i + 1];
  return def;
}
int arg_int(int argc, char** argv, const char* name, int def) { return std::atoi(arg_str(argc, argv, name, std::to_string(def).c_str()).c_str()); }
double arg_f(int argc, char** argv, const char* name, const char* def) { return std::atof(arg_str(argc, argv, name, def).c_str()); }
}  // namespace

int main(int argc, char** argv) {
  service_config cfg;
  cfg.listen = arg_str(argc, argv, "--listen", "127.0.0.1:0");
  cfg.workers = arg_int(argc, argv, "--workers", 1);
  cfg.max_running = arg_int(argc, argv, "--max-running", 256);
  cfg.max_batch_tokens = arg_int(argc, argv, "--max-batch-tokens", 4096);
  cfg.queue_capacity = arg_int(argc, argv, "--queue-capacity", 2048);
  cfg.io_threads = arg_int(argc, argv, "--io-threads", 0);
  cfg.io_threads = resolved_io_threads(cfg);
  cfg.actor_scheduler = arg_str(argc, argv, "--caf-policy", "stealing");
  const std::string port_file = arg_str(argc, argv, "--port-file", "");

  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  auto hooks = bench::sim_hooks(cfg, arg_f(argc, argv, "--sim-fixed-us", "430"), arg_f(argc, argv, "--sim-seq-us", "1.45"),
                                arg_f(argc, argv, "--sim-token-us", "0.7"));
  if (!hooks) {
    std::fprintf(stderr, "infer-bench-net: %s\n", hooks.error().message.c_str());
    return 1;
  }
  auto srv = net::server::start(cfg);
  if (!srv) {
    std::fprintf(stderr, "infer-bench-net: %s\n", srv.error().message.c_str());
    return 1;
  }
  caf::actor_system_config caf_cfg;
  register_message_types(caf_cfg);
  caf_cfg.set("scheduler.policy", caf::atom_from_string(cfg.actor_scheduler));
  {
    caf::actor_system sys{caf_cfg};
    auto svc = service::start(sys, cfg, hooks.value());
    if (!svc) {
      std::fprintf(stderr, "infer-bench-net: %s\n", svc.error().message.c_str());
      (*srv)->stop();
      return 1;
    }
    (*srv)->attach(**svc);
    if (!port_file.empty()) std::ofstream(port_file) << (*srv)->port() << "\n";
    fmt::print("infer-bench-net: listening on port {}, {} io threads, {} worker(s), CAF {}\n", (*srv)->port(),
               cfg.io_threads, cfg.workers, cfg.actor_scheduler);
    std::fflush(stdout);
    int sig = 0;
    sigwait(&sigs, &sig);
    (*svc)->shutdown(std::chrono::milliseconds(1000));
    (*srv)->stop();
    svc->reset();
  }
  std::lock_guard<std::mutex> g(bench::sim_backend::gaps_mu);
  auto v = bench::sim_backend::gaps_us;
  std::sort(v.begin(), v.end());
  auto q = [&](double f) { return v.empty() ? 0.0 : v[std::min(v.size() - 1, size_t(f * double(v.size())))]; };
  fmt::print("sim: host gap between steps p50 {:.0f} us, p90 {:.0f} us, p99 {:.0f} us over {} gaps\n", q(0.5), q(0.9),
             q(0.99), v.size());
  return 0;
}
