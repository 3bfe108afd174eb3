// inferd: the inference server. Binds the listen address first (so /healthz and
// /readyz answer while the model loads), then starts the service inside a CAF actor
// system and attaches it to the server; SIGINT / SIGTERM shut down in order:
// service first (every request gets its terminal event), then the network.
//
//   inferd --config config/inferd.toml [--listen HOST:PORT] [--model SPEC] [--backend cpu]
//          [--port-file PATH]   (writes the bound port, for --listen HOST:0)
#include <caf/all.hpp>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <pthread.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "actors/messages.hpp"
#include "actors/service.hpp"
#include "config/cli.hpp"
#include "config/service-config.hpp"
#include "net/server.hpp"

namespace {

bool write_port_file(const std::string& path, uint16_t port) {
  // Written whole, then renamed: a reader never sees a half-written number.
  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp);
    if (!(f << port << "\n")) return false;
  }
  return std::rename(tmp.c_str(), path.c_str()) == 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args;
  std::string port_file;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--port-file" && i + 1 < argc) port_file = argv[++i];
    else if (a.rfind("--port-file=", 0) == 0) port_file = a.substr(12);
    else args.push_back(std::move(a));
  }
  auto cli = infer::parse_command_line(args, "inferd");
  if (!cli.run) {
    if (cli.exit_code == 0 && cli.message.find("--help") != std::string::npos)
      cli.message += "\n  --port-file PATH            write the bound port to PATH (with --listen HOST:0)";
    return infer::print_cli_outcome(cli);
  }
  const infer::service_config& cfg = cli.config;

  spdlog::set_default_logger(spdlog::stderr_color_mt("inferd"));
  spdlog::set_level(spdlog::level::from_str(cfg.log_level));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %l %v");

  // Every thread started from here on inherits the mask: only sigwait sees the signals.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  auto srv = infer::net::server::start(cfg);
  if (!srv) {
    spdlog::error("{}", srv.error().message);
    return 1;
  }
  if (!port_file.empty() && !write_port_file(port_file, (*srv)->port())) {
    spdlog::error("--port-file: cannot write {}", port_file);
    return 1;
  }

  caf::actor_system_config caf_cfg;
  infer::register_message_types(caf_cfg);
  int rc = 0;
  {
    caf::actor_system sys{caf_cfg};
    spdlog::info("loading model {} (backend {}, {} workers)", cfg.model, cfg.backend, cfg.workers);
    auto svc = infer::service::start(sys, cfg);
    if (!svc) {
      spdlog::error("service: {}", svc.error().message);
      (*srv)->stop();
      rc = 1;
    } else {
      (*srv)->attach(**svc);
      spdlog::info("ready: model {} n_ctx {}", cfg.model, (*svc)->n_ctx());
      int sig = 0;
      sigwait(&sigs, &sig);
      spdlog::info("signal {}: draining for up to {} ms", sig, cfg.drain_timeout_ms);
      // Graceful: no new requests, those in flight finish (or are cancelled at the
      // drain timeout), each with its terminal event.
      int64_t cancelled = (*svc)->shutdown(std::chrono::milliseconds(cfg.drain_timeout_ms));
      spdlog::info("drained ({} cancelled at the timeout)", cancelled);
      (*srv)->stop();
      svc->reset();
    }
  }
  spdlog::info("bye");
  return rc;
}
